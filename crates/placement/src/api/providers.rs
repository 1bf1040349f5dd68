//! Resource providers and what hangs off them: inventories, usages, traits, aggregates, allocations.

use super::{admin, int_in, need, object_body, only_keys, require, uuid_value, Params, S, V};
use crate::error::{bad, conflict, PlacementError, Result};
use crate::microversion::Mv;
use crate::store::{self, Inventory, Provider, INVENTORY_FIELDS};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use tessera_http::auth::Caller;

/// Largest integer in inventory fields (upstream's `MAX_INT`).
pub const MAX_INT: i64 = 2_147_483_647;

pub(crate) fn provider_json(p: &Provider, mv: Mv) -> Value {
    let base = format!("/resource_providers/{}", p.uuid);
    let mut links = vec![
        json!({"rel": "self", "href": base}),
        json!({"rel": "inventories", "href": format!("{base}/inventories")}),
        json!({"rel": "usages", "href": format!("{base}/usages")}),
    ];
    if mv.at_least(1) {
        links.push(json!({"rel": "aggregates", "href": format!("{base}/aggregates")}));
    }
    if mv.at_least(6) {
        links.push(json!({"rel": "traits", "href": format!("{base}/traits")}));
    }
    if mv.at_least(11) {
        links.push(json!({"rel": "allocations", "href": format!("{base}/allocations")}));
    }
    let mut v = json!({"uuid": p.uuid, "name": p.name, "generation": p.generation, "links": links});
    if mv.at_least(14) {
        v["parent_provider_uuid"] = json!(p.parent_uuid);
        v["root_provider_uuid"] = json!(p.root_uuid);
    }
    v
}

/// Upstream looks the provider up before reading the request, so an error in the request is reported only
/// when the provider exists (a 404 otherwise). Handlers that write look it up only on that error path: the
/// write itself reports a missing provider, which saves a query per request.
pub(crate) async fn provider_first<T>(
    svc: &crate::PlacementService,
    uuid: &str,
    checked: Result<T>,
) -> Result<T> {
    match checked {
        Err(e) if !matches!(e, PlacementError::NotFound(_)) => {
            get_provider(svc, uuid).await?;
            Err(e)
        }
        r => r,
    }
}

pub(crate) async fn get_provider(svc: &crate::PlacementService, uuid: &str) -> Result<Provider> {
    store::provider_get(&svc.db, uuid)
        .await?
        .ok_or_else(|| PlacementError::NotFound(format!("No resource provider with uuid {uuid} found")))
}

/// Split `a,b,!c` trait lists; `!` needs 1.22.
fn trait_terms(v: &str, mv: Mv, param: &str) -> Result<(Vec<String>, Vec<String>)> {
    let mut req = Vec::new();
    let mut forb = Vec::new();
    for t in v.split(',').map(str::trim) {
        if t.is_empty() {
            return Err(bad(format!("Invalid query string parameters: Expected '{param}' parameter value of the form: HW_CPU_X86_VMX,!CUSTOM_MAGIC. Got: {v}")));
        }
        match t.strip_prefix('!') {
            Some(f) if mv.at_least(22) => forb.push(f.to_string()),
            Some(_) => {
                return Err(bad(format!(
                    "Invalid query string parameters: Expected '{param}' parameter value of the form: HW_CPU_X86_VMX,CUSTOM_MAGIC. Got: {v}"
                )))
            }
            None => req.push(t.to_string()),
        }
    }
    Ok((req, forb))
}

/// A `required` value: plain traits (all needed), forbidden ones, or (1.39) `in:` any-of groups.
pub(crate) struct TraitFilter {
    pub all: Vec<String>,
    pub none: Vec<String>,
    pub any_of: Vec<Vec<String>>,
}

pub(crate) fn parse_required(values: &[String], mv: Mv, param: &str) -> Result<TraitFilter> {
    let mut f = TraitFilter {
        all: Vec::new(),
        none: Vec::new(),
        any_of: Vec::new(),
    };
    for v in values {
        if let Some(list) = v.strip_prefix("in:") {
            if !mv.at_least(39) {
                return Err(bad(format!(
                    "Invalid query string parameters: The format 'in:' in '{param}' needs microversion 1.39"
                )));
            }
            let group: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
            if group.iter().any(|t| t.is_empty() || t.starts_with('!')) {
                return Err(bad(format!(
                    "Invalid query string parameters: bad any-of trait list in '{param}': {v}"
                )));
            }
            f.any_of.push(group);
        } else {
            let (a, n) = trait_terms(v, mv, param)?;
            f.all.extend(a);
            f.none.extend(n);
        }
    }
    Ok(f)
}

impl TraitFilter {
    pub fn names(&self) -> BTreeSet<String> {
        self.all
            .iter()
            .chain(&self.none)
            .chain(self.any_of.iter().flatten())
            .cloned()
            .collect()
    }
}

/// A `member_of` value: `agg`, `in:a,b`, and from 1.32 `!agg` / `!in:a,b`.
pub(crate) struct AggFilter {
    pub any_of: Vec<Vec<String>>,
    pub none: Vec<String>,
}

pub(crate) fn parse_member_of(values: &[String], mv: Mv) -> Result<AggFilter> {
    let mut f = AggFilter {
        any_of: Vec::new(),
        none: Vec::new(),
    };
    for v in values {
        let (neg, rest) = match v.strip_prefix('!') {
            Some(r) if mv.at_least(32) => (true, r),
            Some(_) => {
                return Err(bad(format!(
                "Invalid query string parameters: Forbidden member_of '!' needs microversion 1.32. Got: {v}"
            )))
            }
            None => (false, v.as_str()),
        };
        let list: Vec<String> = match rest.strip_prefix("in:") {
            Some(l) => l.split(',').map(|s| s.trim().to_string()).collect(),
            None => vec![rest.trim().to_string()],
        };
        if list.iter().any(|a| !super::is_uuid(a)) || (neg && rest.contains('!')) {
            return Err(bad(format!(
                "Invalid query string parameters: Expected 'member_of' parameter to contain valid UUID(s). Got: {v}"
            )));
        }
        if neg {
            f.none.extend(list);
        } else {
            f.any_of.push(list);
        }
    }
    Ok(f)
}

/// `RC:N,RC:N`.
pub(crate) fn parse_resources(v: &str, param: &str) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for part in v.split(',') {
        let (rc, n) = part.split_once(':').ok_or_else(|| {
            bad(format!(
                "Badly formed {param} parameter. Expected {param} query string parameter in form: ?{param}=VCPU:2,MEMORY_MB:1024. Got: {v}."
            ))
        })?;
        let n: i64 = n.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            bad(format!(
                "Requested resource {rc} expected positive integer amount. Got: {n}."
            ))
        })?;
        if out.insert(rc.trim().to_string(), n).is_some() {
            return Err(bad(format!(
                "Badly formed {param} parameter: resource class {rc} appears twice."
            )));
        }
    }
    Ok(out)
}

pub(crate) async fn check_known(
    svc: &crate::PlacementService,
    table: &str,
    names: &BTreeSet<String>,
) -> Result<()> {
    let unknown = store::unknown_names(&svc.db, table, names).await?;
    if unknown.is_empty() {
        return Ok(());
    }
    Err(bad(if table == "traits" {
        format!("No such trait(s): {}", unknown.join(", "))
    } else {
        format!(
            "Invalid resource class in resources parameter: {}",
            unknown.join(", ")
        )
    }))
}

pub(crate) async fn list(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response> {
    admin(&ctx, "resource_providers:list")?;
    let mut allowed = vec!["name", "uuid"];
    if mv.at_least(3) {
        allowed.push("member_of");
    }
    if mv.at_least(4) {
        allowed.push("resources");
    }
    if mv.at_least(14) {
        allowed.push("in_tree");
    }
    if mv.at_least(18) {
        allowed.push("required");
    }
    let mut repeatable = Vec::new();
    if mv.at_least(24) {
        repeatable.push("member_of");
    }
    if mv.at_least(39) {
        repeatable.push("required");
    }
    let p = Params::parse(q, &allowed, &repeatable)?;
    let mut where_ = vec!["1 = 1".to_string()];
    let mut binds: Vec<String> = Vec::new();
    if let Some(n) = p.one("name") {
        where_.push("rp.name = ?".into());
        binds.push(n.to_string());
    }
    if let Some(u) = p.one("uuid") {
        where_.push("rp.uuid = ?".into());
        binds.push(u.to_string());
    }
    if let Some(t) = p.one("in_tree") {
        where_.push("rp.root_uuid = (SELECT t.root_uuid FROM resource_providers t WHERE t.uuid = ?)".into());
        binds.push(t.to_string());
    }
    let m = parse_member_of(p.all("member_of"), mv)?;
    for group in &m.any_of {
        let list = tessera_db::in_list(group.len());
        where_.push(format!(
            "(rp.uuid IN (SELECT rp_uuid FROM rp_aggregates WHERE aggregate_uuid IN {list}) OR \
             rp.root_uuid IN (SELECT rp_uuid FROM rp_aggregates WHERE aggregate_uuid IN {list}))"
        ));
        binds.extend(group.iter().cloned());
        binds.extend(group.iter().cloned());
    }
    if !m.none.is_empty() {
        let list = tessera_db::in_list(m.none.len());
        where_.push(format!(
            "rp.uuid NOT IN (SELECT rp_uuid FROM rp_aggregates WHERE aggregate_uuid IN {list}) AND \
             rp.root_uuid NOT IN (SELECT rp_uuid FROM rp_aggregates WHERE aggregate_uuid IN {list})"
        ));
        binds.extend(m.none.iter().cloned());
        binds.extend(m.none.iter().cloned());
    }
    let traits = parse_required(p.all("required"), mv, "required")?;
    check_known(&svc, "traits", &traits.names()).await?;
    for t in &traits.all {
        where_.push("rp.uuid IN (SELECT rp_uuid FROM rp_traits WHERE trait = ?)".into());
        binds.push(t.clone());
    }
    for t in &traits.none {
        where_.push("rp.uuid NOT IN (SELECT rp_uuid FROM rp_traits WHERE trait = ?)".into());
        binds.push(t.clone());
    }
    for g in &traits.any_of {
        where_.push(format!(
            "rp.uuid IN (SELECT rp_uuid FROM rp_traits WHERE trait IN {})",
            tessera_db::in_list(g.len())
        ));
        binds.extend(g.iter().cloned());
    }
    if let Some(r) = p.one("resources") {
        let res = parse_resources(r, "resources")?;
        check_known(&svc, "resource_classes", &res.keys().cloned().collect()).await?;
        for (rc, n) in &res {
            // `n` is a parsed integer, safe to inline.
            where_.push(format!(
                "EXISTS (SELECT 1 FROM inventories i WHERE i.rp_uuid = rp.uuid AND i.resource_class = ? \
                 AND i.min_unit <= {n} AND i.max_unit >= {n} AND {n} % i.step_size = 0 \
                 AND (i.total - i.reserved) * i.allocation_ratio >= {n} + COALESCE((SELECT SUM(a.used) \
                 FROM allocations a WHERE a.rp_uuid = i.rp_uuid AND a.resource_class = i.resource_class), 0))"
            ));
            binds.push(rc.clone());
        }
    }
    let q = format!(
        "SELECT {} FROM resource_providers rp WHERE {} ORDER BY rp.created_at, rp.uuid",
        store::RP_COLS
            .split(", ")
            .map(|c| format!("rp.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
        where_.join(" AND ")
    );
    let rps = store::provider_query(&svc.db, &q, &binds).await?;
    let out: Vec<Value> = rps.iter().map(|p| provider_json(p, mv)).collect();
    Ok(axum::Json(json!({"resource_providers": out})).into_response())
}

fn name_value(m: &Map<String, Value>) -> Result<String> {
    match require(m, "name")?.as_str() {
        Some(n) if !n.is_empty() && n.chars().count() <= 200 => Ok(n.to_string()),
        _ => Err(bad(
            "JSON does not validate: 'name' must be a string of 1 to 200 characters",
        )),
    }
}

pub(crate) async fn create(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    admin(&ctx, "resource_providers:create")?;
    let m = object_body(&headers, &body)?;
    if mv.at_least(14) {
        only_keys(&m, &["name", "uuid", "parent_provider_uuid"])?;
    } else {
        only_keys(&m, &["name", "uuid"])?;
    }
    let name = name_value(&m)?;
    let uuid = match m.get("uuid") {
        Some(v) => uuid_value(v, "uuid")?,
        None => tessera_types::new_uuid(),
    };
    let parent = match m.get("parent_provider_uuid") {
        Some(Value::Null) | None => None,
        Some(v) => Some(uuid_value(v, "parent_provider_uuid")?),
    };
    let root = match &parent {
        Some(pu) => {
            store::provider_get(&svc.db, pu)
                .await?
                .ok_or_else(|| bad(format!("parent provider UUID {pu} does not exist")))?
                .root_uuid
        }
        None => uuid.clone(),
    };
    let now = tessera_types::now_epoch_micros();
    let p = Provider {
        uuid: uuid.clone(),
        name,
        generation: 0,
        parent_uuid: parent,
        root_uuid: root,
        created_at: now,
        updated_at: now,
    };
    store::provider_create(&svc.db, &p).await?;
    let mut r = if mv.at_least(20) {
        axum::Json(provider_json(&p, mv)).into_response()
    } else {
        StatusCode::CREATED.into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&format!("/resource_providers/{uuid}")) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    Ok(r)
}

pub(crate) async fn show(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(uuid): Path<String>,
) -> Result<Response> {
    admin(&ctx, "resource_providers:show")?;
    let p = get_provider(&svc, &uuid).await?;
    Ok(axum::Json(provider_json(&p, mv)).into_response())
}

pub(crate) async fn update(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    admin(&ctx, "resource_providers:update")?;
    let old = get_provider(&svc, &uuid).await?;
    let m = object_body(&headers, &body)?;
    if mv.at_least(14) {
        only_keys(&m, &["name", "parent_provider_uuid"])?;
    } else {
        only_keys(&m, &["name"])?;
    }
    let mut new = old.clone();
    new.name = name_value(&m)?;
    new.updated_at = tessera_types::now_epoch_micros();
    if let Some(v) = m.get("parent_provider_uuid") {
        let parent = match v {
            Value::Null => None,
            v => Some(uuid_value(v, "parent_provider_uuid")?),
        };
        if parent != old.parent_uuid {
            if !mv.at_least(37) && old.parent_uuid.is_some() {
                return Err(bad(if parent.is_none() {
                    "un-parenting a provider is not currently allowed"
                } else {
                    "re-parenting a provider is not currently allowed"
                }));
            }
            match &parent {
                Some(pu) => {
                    let pp = store::provider_get(&svc.db, pu)
                        .await?
                        .ok_or_else(|| bad(format!("parent provider UUID {pu} does not exist")))?;
                    // The new parent must not sit in this provider's own subtree.
                    let mut cur = Some(pp.clone());
                    while let Some(c) = cur {
                        if c.uuid == old.uuid {
                            return Err(bad("creating loop in the provider tree is not allowed"));
                        }
                        cur = match &c.parent_uuid {
                            Some(x) => store::provider_get(&svc.db, x).await?,
                            None => None,
                        };
                    }
                    new.root_uuid = pp.root_uuid;
                }
                None => new.root_uuid = old.uuid.clone(),
            }
            new.parent_uuid = parent;
        }
    }
    store::provider_update(&svc.db, &old, &new).await?;
    new.generation = old.generation + 1;
    Ok(axum::Json(provider_json(&new, mv)).into_response())
}

pub(crate) async fn delete(State(svc): S, Caller(ctx): Caller, Path(uuid): Path<String>) -> Result<Response> {
    admin(&ctx, "resource_providers:delete")?;
    let p = get_provider(&svc, &uuid).await?;
    store::provider_delete(&svc.db, &p).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- inventories

fn inventory_json(i: &Inventory) -> Value {
    json!({"total": i.total, "reserved": i.reserved, "min_unit": i.min_unit, "max_unit": i.max_unit,
        "step_size": i.step_size, "allocation_ratio": i.allocation_ratio})
}

/// An inventory record from a request, with upstream's defaults and bounds.
fn inventory_from(m: &Map<String, Value>, mv: Mv, rc: &str) -> Result<Inventory> {
    let int = |k: &str, min: i64, default: i64| match m.get(k) {
        Some(v) => int_in(v, k, min, MAX_INT),
        None => Ok(default),
    };
    let total = int_in(require(m, "total")?, "total", 1, MAX_INT)?;
    let inv = Inventory {
        total,
        reserved: int("reserved", 0, 0)?,
        min_unit: int("min_unit", 1, 1)?,
        max_unit: int("max_unit", 1, MAX_INT)?,
        step_size: int("step_size", 1, 1)?,
        allocation_ratio: match m.get("allocation_ratio") {
            Some(v) => v.as_f64().filter(|r| *r >= 0.0 && *r <= 3.4e38).ok_or_else(|| {
                bad(format!(
                    "JSON does not validate: {v} is not a valid allocation_ratio"
                ))
            })?,
            None => 1.0,
        },
    };
    let reserved_ok = if mv.at_least(26) {
        inv.reserved <= inv.total
    } else {
        inv.reserved < inv.total || inv.reserved == 0
    };
    if !reserved_ok {
        return Err(bad(format!(
            "Unable to update inventory for resource provider: Invalid inventory for '{rc}': reserved must be {} total",
            if mv.at_least(26) { "at most" } else { "less than" }
        )));
    }
    if inv.min_unit > inv.max_unit {
        return Err(bad(format!(
            "Invalid inventory for '{rc}': min_unit {} is greater than max_unit {}",
            inv.min_unit, inv.max_unit
        )));
    }
    Ok(inv)
}

/// Set one class's inventory (checking the generation); the answer body with the new generation.
async fn write_one(
    svc: &crate::PlacementService,
    uuid: &str,
    gen: i64,
    rc: &str,
    inv: Inventory,
) -> Result<Value> {
    let new_gen = store::inventories_write(
        &svc.db,
        uuid,
        gen,
        &BTreeMap::from([(rc.to_string(), inv)]),
        &BTreeSet::new(),
        false,
    )
    .await?;
    let mut body = inventory_json(&inv);
    body["resource_provider_generation"] = json!(new_gen);
    Ok(body)
}

fn generation_of(m: &Map<String, Value>) -> Result<i64> {
    int_in(
        require(m, "resource_provider_generation")?,
        "resource_provider_generation",
        0,
        i64::MAX,
    )
}

/// Every class must exist (one query at most, none for standard classes).
async fn known_classes<'a>(
    svc: &crate::PlacementService,
    rp: &str,
    classes: impl IntoIterator<Item = &'a String>,
) -> Result<()> {
    let classes: BTreeSet<String> = classes.into_iter().cloned().collect();
    if let Some(rc) = store::unknown_names(&svc.db, "resource_classes", &classes)
        .await?
        .first()
    {
        return Err(bad(format!(
            "Unknown resource class in inventory for resource provider {rp}: {rc}"
        )));
    }
    Ok(())
}

fn inventories_json(inv: &BTreeMap<String, Inventory>, gen: i64) -> Value {
    let m: Map<String, Value> = inv.iter().map(|(k, v)| (k.clone(), inventory_json(v))).collect();
    json!({"inventories": m, "resource_provider_generation": gen})
}

/// `{"resource_provider_generation", "inventories": {RC: {...}}}` (PUT of all inventories, and reshaper).
pub(crate) fn parse_inventories(
    m: &Map<String, Value>,
    mv: Mv,
    rp: &str,
) -> Result<(i64, BTreeMap<String, Inventory>)> {
    only_keys(m, &["resource_provider_generation", "inventories"])?;
    let gen = generation_of(m)?;
    let invs = require(m, "inventories")?
        .as_object()
        .ok_or_else(|| bad("JSON does not validate: 'inventories' must be an object"))?;
    let mut set = BTreeMap::new();
    for (rc, v) in invs {
        let r = v.as_object().ok_or_else(|| {
            bad(format!(
                "JSON does not validate: inventory of {rc} on {rp} must be an object"
            ))
        })?;
        only_keys(r, &INVENTORY_FIELDS)?;
        set.insert(rc.clone(), inventory_from(r, mv, rc)?);
    }
    Ok((gen, set))
}

pub(crate) async fn inventories_get(
    State(svc): S,
    Caller(ctx): Caller,
    Path(uuid): Path<String>,
) -> Result<Response> {
    admin(&ctx, "resource_providers:inventories:list")?;
    let p = get_provider(&svc, &uuid).await?;
    let inv = store::inventories(&svc.db, &uuid).await?;
    Ok(axum::Json(inventories_json(&inv, p.generation)).into_response())
}

pub(crate) async fn inventories_put(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    admin(&ctx, "resource_providers:inventories:update_all")?;
    let checked = async {
        let m = object_body(&headers, &body)?;
        let (gen, set) = parse_inventories(&m, mv, &uuid)?;
        known_classes(&svc, &uuid, set.keys()).await?;
        Ok((gen, set))
    }
    .await;
    let (gen, set) = provider_first(&svc, &uuid, checked).await?;
    let new_gen = store::inventories_write(&svc.db, &uuid, gen, &set, &BTreeSet::new(), true).await?;
    Ok(axum::Json(inventories_json(&set, new_gen)).into_response())
}

pub(crate) async fn inventories_delete(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(uuid): Path<String>,
) -> Result<Response> {
    admin(&ctx, "resource_providers:inventories:delete_all")?;
    if !mv.at_least(5) {
        return Err(PlacementError::MethodNotAllowed(
            "The method DELETE is not allowed for this resource.".into(),
        ));
    }
    let p = get_provider(&svc, &uuid).await?;
    store::inventories_write(
        &svc.db,
        &uuid,
        p.generation,
        &BTreeMap::new(),
        &BTreeSet::new(),
        true,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn inventory_post(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    admin(&ctx, "resource_providers:inventories:create")?;
    let p = get_provider(&svc, &uuid).await?;
    let m = object_body(&headers, &body)?;
    let mut allowed = INVENTORY_FIELDS.to_vec();
    allowed.extend(["resource_class", "resource_provider_generation"]);
    only_keys(&m, &allowed)?;
    let rc = require(&m, "resource_class")?
        .as_str()
        .ok_or_else(|| bad("JSON does not validate: 'resource_class' must be a string"))?
        .to_string();
    known_classes(&svc, &uuid, [&rc]).await?;
    let gen = match m.get("resource_provider_generation") {
        Some(_) => generation_of(&m)?,
        None => p.generation,
    };
    let inv = inventory_from(&m, mv, &rc)?;
    if store::inventories(&svc.db, &uuid).await?.contains_key(&rc) {
        return Err(conflict(format!(
            "Update conflict: Inventory for '{rc}' on resource provider '{uuid}' already exists."
        )));
    }
    let body = write_one(&svc, &uuid, gen, &rc, inv).await?;
    let mut r = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/resource_providers/{uuid}/inventories/{rc}")) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    Ok(r)
}

pub(crate) async fn inventory_get(
    State(svc): S,
    Caller(ctx): Caller,
    Path((uuid, rc)): Path<(String, String)>,
) -> Result<Response> {
    admin(&ctx, "resource_providers:inventories:show")?;
    let p = get_provider(&svc, &uuid).await?;
    let inv = store::inventories(&svc.db, &uuid).await?;
    let i = inv
        .get(&rc)
        .ok_or_else(|| PlacementError::NotFound(format!("No inventory of class {rc} for {uuid}")))?;
    let mut body = inventory_json(i);
    body["resource_provider_generation"] = json!(p.generation);
    Ok(axum::Json(body).into_response())
}

pub(crate) async fn inventory_put(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path((uuid, rc)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    admin(&ctx, "resource_providers:inventories:update")?;
    get_provider(&svc, &uuid).await?;
    let m = object_body(&headers, &body)?;
    let mut allowed = INVENTORY_FIELDS.to_vec();
    allowed.extend(["resource_class", "resource_provider_generation"]);
    only_keys(&m, &allowed)?;
    if let Some(other) = m.get("resource_class").and_then(Value::as_str) {
        if other != rc {
            return Err(bad(format!(
                "resource class in the body ({other}) does not match the URL ({rc})"
            )));
        }
    }
    known_classes(&svc, &uuid, [&rc]).await?;
    let gen = generation_of(&m)?;
    if !store::inventories(&svc.db, &uuid).await?.contains_key(&rc) {
        return Err(bad(format!(
            "No inventory record with resource class for resource provider {uuid}: {rc}"
        )));
    }
    let inv = inventory_from(&m, mv, &rc)?;
    let body = write_one(&svc, &uuid, gen, &rc, inv).await?;
    Ok(axum::Json(body).into_response())
}

pub(crate) async fn inventory_delete(
    State(svc): S,
    Caller(ctx): Caller,
    Path((uuid, rc)): Path<(String, String)>,
) -> Result<Response> {
    admin(&ctx, "resource_providers:inventories:delete")?;
    let p = get_provider(&svc, &uuid).await?;
    if !store::inventories(&svc.db, &uuid).await?.contains_key(&rc) {
        return Err(PlacementError::NotFound(format!(
            "No inventory of class {rc} found for delete"
        )));
    }
    store::inventories_write(
        &svc.db,
        &uuid,
        p.generation,
        &BTreeMap::new(),
        &BTreeSet::from([rc]),
        false,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn usages(State(svc): S, Caller(ctx): Caller, Path(uuid): Path<String>) -> Result<Response> {
    admin(&ctx, "resource_providers:usages")?;
    let p = get_provider(&svc, &uuid).await?;
    let inv = store::inventories(&svc.db, &uuid).await?;
    let used = store::usages(&svc.db, &uuid).await?;
    let u: Map<String, Value> = inv
        .keys()
        .chain(used.keys())
        .map(|rc| (rc.clone(), json!(used.get(rc).copied().unwrap_or(0))))
        .collect();
    Ok(axum::Json(json!({"usages": u, "resource_provider_generation": p.generation})).into_response())
}

// ---------------------------------------------------------------- traits and aggregates

/// Replace a provider's traits as upstream does: the generation must match, and an unchanged set is a no-op
/// (the generation stays).
async fn set_traits(
    svc: &crate::PlacementService,
    uuid: &str,
    gen: i64,
    wanted: &BTreeSet<String>,
) -> Result<i64> {
    Ok(
        store::provider_links_set(&svc.db, "rp_traits", "trait", uuid, Some(gen), wanted, true)
            .await?
            .unwrap_or(gen),
    )
}

pub(crate) async fn traits_get(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(uuid): Path<String>,
) -> Result<Response> {
    need(mv, 6)?;
    admin(&ctx, "resource_providers:traits:list")?;
    let p = get_provider(&svc, &uuid).await?;
    let t = store::provider_links(&svc.db, "rp_traits", "trait", &uuid).await?;
    Ok(axum::Json(json!({"traits": t, "resource_provider_generation": p.generation})).into_response())
}

pub(crate) async fn traits_put(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    need(mv, 6)?;
    admin(&ctx, "resource_providers:traits:update")?;
    let checked = async {
        let m = object_body(&headers, &body)?;
        only_keys(&m, &["traits", "resource_provider_generation"])?;
        let gen = generation_of(&m)?;
        let list = require(&m, "traits")?
            .as_array()
            .ok_or_else(|| bad("JSON does not validate: 'traits' must be an array"))?;
        let mut traits = BTreeSet::new();
        for t in list {
            let t = t
                .as_str()
                .ok_or_else(|| bad("JSON does not validate: traits must be strings"))?;
            if !traits.insert(t.to_string()) {
                return Err(bad(format!("JSON does not validate: trait {t} appears twice")));
            }
        }
        check_known(&svc, "traits", &traits).await?;
        Ok((gen, traits))
    }
    .await;
    // A missing provider shows up as a 404 from the write (or from set_links when nothing changes).
    let (gen, traits) = provider_first(&svc, &uuid, checked).await?;
    let new_gen = set_traits(&svc, &uuid, gen, &traits).await?;
    Ok(axum::Json(json!({"traits": traits, "resource_provider_generation": new_gen})).into_response())
}

pub(crate) async fn traits_delete(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(uuid): Path<String>,
) -> Result<Response> {
    need(mv, 6)?;
    admin(&ctx, "resource_providers:traits:delete")?;
    let p = get_provider(&svc, &uuid).await?;
    set_traits(&svc, &uuid, p.generation, &BTreeSet::new()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn aggregates_get(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(uuid): Path<String>,
) -> Result<Response> {
    need(mv, 1)?;
    admin(&ctx, "resource_providers:aggregates:list")?;
    let p = get_provider(&svc, &uuid).await?;
    let a = store::provider_links(&svc.db, "rp_aggregates", "aggregate_uuid", &uuid).await?;
    let mut body = json!({"aggregates": a});
    if mv.at_least(19) {
        body["resource_provider_generation"] = json!(p.generation);
    }
    Ok(axum::Json(body).into_response())
}

pub(crate) async fn aggregates_put(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    need(mv, 1)?;
    admin(&ctx, "resource_providers:aggregates:update")?;
    let checked = (|| {
        let v = super::json_body(&headers, &body)?;
        let (list, gen) = if mv.at_least(19) {
            let m = v
                .as_object()
                .ok_or_else(|| bad("JSON does not validate: the body must be an object"))?;
            only_keys(m, &["aggregates", "resource_provider_generation"])?;
            (require(m, "aggregates")?.clone(), Some(generation_of(m)?))
        } else {
            // Before 1.19 the body is a bare list and generations are neither checked nor bumped.
            (v, None)
        };
        let list = list
            .as_array()
            .ok_or_else(|| bad("JSON does not validate: aggregates must be an array of uuids"))?;
        let mut aggs = BTreeSet::new();
        for a in list {
            if !aggs.insert(uuid_value(a, "aggregates")?) {
                return Err(bad(format!(
                    "JSON does not validate: {a} has non-unique elements"
                )));
            }
        }
        Ok((aggs, gen))
    })();
    let (aggs, gen) = provider_first(&svc, &uuid, checked).await?;
    // With a generation the write itself finds a missing provider; without (before 1.19) look it up.
    let old_gen = match gen {
        Some(g) => g,
        None => get_provider(&svc, &uuid).await?.generation,
    };
    let new_gen = store::provider_links_set(
        &svc.db,
        "rp_aggregates",
        "aggregate_uuid",
        &uuid,
        gen,
        &aggs,
        false,
    )
    .await?
    .unwrap_or(old_gen);
    let mut body = json!({"aggregates": aggs});
    if mv.at_least(19) {
        body["resource_provider_generation"] = json!(new_gen);
    }
    Ok(axum::Json(body).into_response())
}

pub(crate) async fn allocations(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(uuid): Path<String>,
) -> Result<Response> {
    admin(&ctx, "resource_providers:allocations:list")?;
    let p = get_provider(&svc, &uuid).await?;
    let a = store::provider_allocations(&svc.db, &uuid).await?;
    let m: Map<String, Value> = a
        .into_iter()
        .map(|(c, (res, gen))| {
            let mut v = json!({"resources": res});
            if mv.at_least(28) {
                v["consumer_generation"] = json!(gen);
            }
            (c, v)
        })
        .collect();
    Ok(axum::Json(json!({"allocations": m, "resource_provider_generation": p.generation})).into_response())
}
