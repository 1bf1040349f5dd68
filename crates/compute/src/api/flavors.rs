//! `/flavors`: list (public, plus private ones shared with the caller's project; admins choose with
//! `is_public`), detail, show, create (admin, 200), description update (2.55), delete (202), extra specs
//! and flavor access. Bodies are checked field by field with Nova's messages before anything is written.

use super::{admin, base_url, nova, Mv, S};
use crate::flavors::{self, Flavor};
use crate::ComputeError;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use tessera_http::auth::Caller;
use tessera_http::{ApiError, Family};
use tessera_types::RequestContext;

use super::bad;

fn not_found(id: &str) -> ApiError {
    nova(StatusCode::NOT_FOUND, format!("Flavor {id} could not be found."))
}

fn body(headers: &HeaderMap, b: &Bytes) -> Result<Value, ApiError> {
    tessera_http::body::parse_json::<Value>(Family::Nova, headers, b)
}

fn links(base: &str, id: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{base}/v2.1/flavors/{id}")},
        {"rel": "bookmark", "href": format!("{base}/flavors/{id}")}
    ])
}

fn view(f: &Flavor, base: &str, mv: Mv, detail: bool) -> Value {
    let mut v = json!({"id": f.flavorid, "name": f.name, "links": links(base, &f.flavorid)});
    if mv.at_least(55) {
        v["description"] = json!(f.description);
    }
    if !detail {
        return v;
    }
    v["ram"] = json!(f.memory_mb);
    v["disk"] = json!(f.root_gb);
    v["vcpus"] = json!(f.vcpus);
    v["swap"] = if f.swap == 0 && !mv.at_least(75) {
        json!("")
    } else {
        json!(f.swap)
    };
    v["OS-FLV-EXT-DATA:ephemeral"] = json!(f.ephemeral_gb);
    v["os-flavor-access:is_public"] = json!(f.is_public);
    v["OS-FLV-DISABLED:disabled"] = json!(f.disabled);
    v["rxtx_factor"] = json!(f.rxtx_factor);
    if mv.at_least(61) {
        v["extra_specs"] = json!(f.extra_specs);
    }
    v
}

/// The flavors a caller may see, with the `is_public` choice for admins.
async fn visible(
    api: &super::ComputeApi,
    ctx: &RequestContext,
    q: &HashMap<String, String>,
) -> Result<Vec<Flavor>, ApiError> {
    let all = flavors::list(&api.api_db).await?;
    if ctx.is_admin() {
        let want = match q.get("is_public").map(|s| s.to_ascii_lowercase()) {
            None => Some(true),
            Some(s) if s == "none" => None,
            Some(s) if ["true", "t", "1", "yes", "y", "on"].contains(&s.as_str()) => Some(true),
            Some(s) if ["false", "f", "0", "no", "n", "off"].contains(&s.as_str()) => Some(false),
            Some(s) => return Err(bad(format!("Invalid is_public filter [{s}]"))),
        };
        return Ok(all
            .into_iter()
            .filter(|f| want.is_none_or(|w| f.is_public == w))
            .collect());
    }
    let shared = match ctx.project_id() {
        Some(p) => flavors::shared_with(&api.api_db, p).await?,
        None => Vec::new(),
    };
    Ok(all
        .into_iter()
        .filter(|f| f.is_public || shared.contains(&f.id))
        .collect())
}

async fn listing(
    api: &super::ComputeApi,
    ctx: &RequestContext,
    headers: &HeaderMap,
    mv: Mv,
    q: HashMap<String, String>,
    detail: bool,
) -> Result<Response, ApiError> {
    let mut fs = visible(api, ctx, &q).await?;
    let int_param = |k: &str| -> Result<Option<i64>, ApiError> {
        match q.get(k) {
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| bad(format!("Invalid {k} filter [{v}]"))),
            None => Ok(None),
        }
    };
    if let Some(m) = int_param("minRam")? {
        fs.retain(|f| f.memory_mb >= m);
    }
    if let Some(m) = int_param("minDisk")? {
        fs.retain(|f| f.root_gb >= m);
    }
    let key = q.get("sort_key").map(String::as_str).unwrap_or("flavorid");
    let dir = q.get("sort_dir").map(String::as_str).unwrap_or("asc");
    if dir != "asc" && dir != "desc" {
        return Err(bad(format!("Invalid sort_dir {dir}: use asc or desc")));
    }
    let cmp = |a: &Flavor, b: &Flavor| -> std::cmp::Ordering {
        match key {
            "name" => a.name.cmp(&b.name),
            "memory_mb" => a.memory_mb.cmp(&b.memory_mb),
            "vcpus" => a.vcpus.cmp(&b.vcpus),
            "root_gb" => a.root_gb.cmp(&b.root_gb),
            "swap" => a.swap.cmp(&b.swap),
            "ephemeral_gb" => a.ephemeral_gb.cmp(&b.ephemeral_gb),
            "id" => a.id.cmp(&b.id),
            _ => a.flavorid.cmp(&b.flavorid),
        }
        .then(a.flavorid.cmp(&b.flavorid))
    };
    const KEYS: [&str; 12] = [
        "created_at",
        "description",
        "disabled",
        "ephemeral_gb",
        "flavorid",
        "id",
        "is_public",
        "memory_mb",
        "name",
        "root_gb",
        "rxtx_factor",
        "swap",
    ];
    if !KEYS.contains(&key) && key != "vcpus" {
        return Err(bad(format!("Invalid sort_key {key}")));
    }
    fs.sort_by(cmp);
    if dir == "desc" {
        fs.reverse();
    }
    if let Some(m) = q.get("marker") {
        let pos = fs
            .iter()
            .position(|f| f.flavorid == *m)
            .ok_or_else(|| bad(format!("marker [{m}] not found")))?;
        fs.drain(..=pos);
    }
    let limit = match q.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| bad(format!("Invalid input for query parameters limit. Value: {l}.")))?,
        ),
        None => None,
    };
    let more = limit.is_some_and(|l| fs.len() > l);
    if let Some(l) = limit {
        fs.truncate(l);
    }
    let base = base_url(headers);
    let items: Vec<Value> = fs.iter().map(|f| view(f, &base, mv, detail)).collect();
    let mut out = json!({ "flavors": items });
    if more {
        if let Some(f) = fs.last() {
            let path = if detail { "flavors/detail" } else { "flavors" };
            out["flavors_links"] = json!([{"rel": "next",
                "href": format!("{base}/v2.1/{path}?limit={}&marker={}", limit.unwrap_or(0), f.flavorid)}]);
        }
    }
    Ok(axum::Json(out).into_response())
}

pub(crate) async fn list(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    listing(&api, &ctx, &headers, mv, q, false).await
}

pub(crate) async fn detail(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    listing(&api, &ctx, &headers, mv, q, true).await
}

/// A flavor the caller may see (private ones only through access, for non-admins).
pub(crate) async fn find(
    api: &super::ComputeApi,
    ctx: &RequestContext,
    id: &str,
) -> Result<Flavor, ApiError> {
    let f = flavors::get(&api.api_db, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    if f.is_public || ctx.is_admin() {
        return Ok(f);
    }
    let shared = match ctx.project_id() {
        Some(p) => flavors::shared_with(&api.api_db, p).await?,
        None => Vec::new(),
    };
    if shared.contains(&f.id) {
        Ok(f)
    } else {
        Err(not_found(id))
    }
}

pub(crate) async fn show(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let f = find(&api, &ctx, &id).await?;
    Ok(axum::Json(json!({"flavor": view(&f, &base_url(&headers), mv, true)})).into_response())
}

/// An integer field: a JSON integer, or a string of digits; within [min, max].
fn int_field(
    m: &Map<String, Value>,
    key: &str,
    min: i64,
    required: bool,
    default: i64,
) -> Result<i64, ApiError> {
    let v = match m.get(key) {
        None if required => {
            return Err(bad(format!(
                "Invalid input for field/attribute flavor. Value: {}. '{key}' is a required property",
                Value::Object(m.clone())
            )))
        }
        None => return Ok(default),
        Some(v) => v,
    };
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) => s.parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n >= min && n <= i32::MAX as i64 => Ok(n),
        Some(_) => Err(bad(format!(
            "Invalid input for field/attribute {key}. Value: {v}. {v} is less than the minimum of {min}"
        ))),
        None => Err(bad(format!(
            "Invalid input for field/attribute {key}. Value: {v}. {v} is not of type 'integer', 'string'"
        ))),
    }
}

pub(crate) async fn create(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    b: Bytes,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-flavor-manage:create")?;
    let v = body(&headers, &b)?;
    let mut allowed = vec![
        "name",
        "ram",
        "vcpus",
        "disk",
        "id",
        "OS-FLV-EXT-DATA:ephemeral",
        "swap",
        "rxtx_factor",
        "os-flavor-access:is_public",
    ];
    if mv.at_least(55) {
        allowed.push("description");
    }
    let m = super::wrapped(&v, "flavor", &allowed)?;
    let name = match m.get("name") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 && s.trim() == s => s.clone(),
        Some(Value::String(s)) => return Err(bad(format!("Invalid input for field/attribute name. Value: {s}. '{s}' does not match the name rules (1-255 characters, no leading or trailing whitespace)"))),
        Some(other) => return Err(bad(format!("Invalid input for field/attribute name. Value: {other}. {other} is not of type 'string'"))),
        None => return Err(bad("Invalid input for field/attribute flavor. 'name' is a required property")),
    };
    let ram = int_field(m, "ram", 1, true, 0)?;
    let vcpus = int_field(m, "vcpus", 1, true, 0)?;
    let disk = int_field(m, "disk", 0, true, 0)?;
    let ephemeral = int_field(m, "OS-FLV-EXT-DATA:ephemeral", 0, false, 0)?;
    let swap = int_field(m, "swap", 0, false, 0)?;
    let rxtx = match m.get("rxtx_factor") {
        None => 1.0,
        Some(v) => match v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
            Some(x) if x > 0.0 && x <= 3.40282e38 => x,
            _ => {
                return Err(bad(format!(
                    "Invalid input for field/attribute rxtx_factor. Value: {v}."
                )))
            }
        },
    };
    let is_public = match m.get("os-flavor-access:is_public") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => match v.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("true" | "t" | "1" | "yes" | "y" | "on") => true,
            Some("false" | "f" | "0" | "no" | "n" | "off") => false,
            _ => {
                return Err(bad(format!(
                    "Invalid input for field/attribute os-flavor-access:is_public. Value: {v}."
                )))
            }
        },
    };
    let flavorid = match m.get("id") {
        None | Some(Value::Null) => uuid_string(),
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= 255
                && s.trim() == s
                && s.chars().all(|c| c.is_alphanumeric() || "-_. ".contains(c)) =>
        {
            s.clone()
        }
        Some(Value::Number(n)) if n.as_i64().is_some() => n.to_string(),
        Some(v) => return Err(bad(format!("Invalid input for field/attribute id. Value: {v}."))),
    };
    let description = match m.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 65535 => Some(s.clone()),
        Some(v) => {
            return Err(bad(format!(
                "Invalid input for field/attribute description. Value: {v}."
            )))
        }
    };
    let f = Flavor {
        id: 0,
        flavorid,
        name,
        memory_mb: ram,
        vcpus,
        root_gb: disk,
        ephemeral_gb: ephemeral,
        swap,
        rxtx_factor: rxtx,
        disabled: false,
        is_public,
        description,
        extra_specs: BTreeMap::new(),
    };
    let created = match flavors::create(&api.api_db, &f).await {
        Ok(c) => c,
        Err(ComputeError::Duplicate(_)) => {
            return Err(nova(
                StatusCode::CONFLICT,
                format!("Flavor with name {} or ID {} already exists.", f.name, f.flavorid),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    // As upstream (launchpad bug 1209101), a private flavor is not shared with the creator's project.
    Ok(axum::Json(json!({"flavor": view(&created, &base_url(&headers), mv, true)})).into_response())
}

fn uuid_string() -> String {
    tessera_types::new_uuid()
}

pub(crate) async fn update(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    if !mv.at_least(55) {
        return Err(nova(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method specified is not allowed for this resource.",
        ));
    }
    admin(&ctx, "os_compute_api:os-flavor-manage:update")?;
    let v = body(&headers, &b)?;
    let desc = v
        .get("flavor")
        .and_then(Value::as_object)
        .filter(|m| m.len() == 1 && m.contains_key("description"))
        .and_then(|m| m.get("description"))
        .ok_or_else(|| bad("Invalid input for field/attribute flavor. Only 'description' may be updated"))?;
    let desc = match desc {
        Value::Null => None,
        Value::String(s) if s.len() <= 65535 => Some(s.clone()),
        other => {
            return Err(bad(format!(
                "Invalid input for field/attribute description. Value: {other}."
            )))
        }
    };
    let f = flavors::get(&api.api_db, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    flavors::set_description(&api.api_db, f.id, desc.as_deref()).await?;
    let f = flavors::get(&api.api_db, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(axum::Json(json!({"flavor": view(&f, &base_url(&headers), mv, true)})).into_response())
}

pub(crate) async fn delete(
    State(api): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-flavor-manage:delete")?;
    let f = flavors::get(&api.api_db, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    flavors::delete(&api.api_db, f.id).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

pub(crate) async fn specs_list(
    State(api): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let f = find(&api, &ctx, &id).await?;
    Ok(axum::Json(json!({"extra_specs": f.extra_specs})).into_response())
}

fn spec_map(v: &Value, wrapper: Option<&str>) -> Result<BTreeMap<String, String>, ApiError> {
    let m = match wrapper {
        Some(w) => v.get(w).and_then(Value::as_object),
        None => v.as_object(),
    }
    .ok_or_else(|| bad("Invalid input for field/attribute extra_specs. Value: must be an object"))?;
    let mut out = BTreeMap::new();
    for (k, val) in m {
        if k.is_empty() || k.len() > 255 || !k.chars().all(|c| c.is_alphanumeric() || "-_:. ".contains(c)) {
            return Err(bad(format!(
                "Invalid input for field/attribute extra_specs. Value: {k}. Key is invalid"
            )));
        }
        let s = match val {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => {
                if *b {
                    "True".into()
                } else {
                    "False".into()
                }
            }
            other => {
                return Err(bad(format!(
                    "Invalid input for field/attribute {k}. Value: {other}."
                )))
            }
        };
        if s.len() > 255 {
            return Err(bad(format!(
                "Invalid input for field/attribute {k}. Value is too long"
            )));
        }
        out.insert(k.clone(), s);
    }
    Ok(out)
}

pub(crate) async fn specs_create(
    State(api): S,
    Caller(ctx): Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-flavor-extra-specs:create")?;
    let v = body(&headers, &b)?;
    let specs = spec_map(&v, Some("extra_specs"))?;
    let f = flavors::get(&api.api_db, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    flavors::set_specs(&api.api_db, f.id, &specs).await?;
    Ok(axum::Json(json!({"extra_specs": specs})).into_response())
}

pub(crate) async fn spec_show(
    State(api): S,
    Caller(ctx): Caller,
    Path((id, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let f = find(&api, &ctx, &id).await?;
    let v = f.extra_specs.get(&key).ok_or_else(|| {
        nova(
            StatusCode::NOT_FOUND,
            format!("Flavor {id} has no extra specs with key {key}."),
        )
    })?;
    Ok(axum::Json(json!({ key: v })).into_response())
}

pub(crate) async fn spec_update(
    State(api): S,
    Caller(ctx): Caller,
    headers: HeaderMap,
    Path((id, key)): Path<(String, String)>,
    b: Bytes,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-flavor-extra-specs:update")?;
    let v = body(&headers, &b)?;
    let specs = spec_map(&v, None)?;
    if specs.len() != 1 || !specs.contains_key(&key) {
        return Err(bad("Request body and URI mismatch"));
    }
    let f = flavors::get(&api.api_db, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    flavors::set_specs(&api.api_db, f.id, &specs).await?;
    Ok(axum::Json(json!(specs)).into_response())
}

pub(crate) async fn spec_delete(
    State(api): S,
    Caller(ctx): Caller,
    Path((id, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-flavor-extra-specs:delete")?;
    let f = flavors::get(&api.api_db, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if !flavors::delete_spec(&api.api_db, f.id, &key).await? {
        return Err(nova(
            StatusCode::NOT_FOUND,
            format!("Flavor {id} has no extra specs with key {key}."),
        ));
    }
    Ok(StatusCode::OK.into_response())
}

fn access_view(flavorid: &str, projects: &[String]) -> Value {
    json!({"flavor_access": projects.iter().map(|p| json!({"flavor_id": flavorid, "tenant_id": p})).collect::<Vec<_>>()})
}

pub(crate) async fn access_list(
    State(api): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-flavor-access")?;
    let f = flavors::get(&api.api_db, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if f.is_public {
        return Err(nova(
            StatusCode::NOT_FOUND,
            "Access list not available for public flavors.",
        ));
    }
    let ps = flavors::projects(&api.api_db, f.id).await?;
    Ok(axum::Json(access_view(&id, &ps)).into_response())
}

pub(crate) async fn action(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let v = body(&headers, &b)?;
    let (name, arg) = super::single_action(&v)?;
    let add = match name.as_str() {
        "addTenantAccess" => true,
        "removeTenantAccess" => false,
        _ => return Err(bad(format!("There is no such action: {name}"))),
    };
    admin(
        &ctx,
        if add {
            "os_compute_api:os-flavor-access:add_tenant_access"
        } else {
            "os_compute_api:os-flavor-access:remove_tenant_access"
        },
    )?;
    let tenant = arg
        .get("tenant")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 255 && arg.as_object().is_some_and(|o| o.len() == 1))
        .ok_or_else(|| {
            bad(format!(
                "Invalid input for field/attribute {name}. 'tenant' is a required property"
            ))
        })?;
    let f = flavors::get(&api.api_db, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if f.is_public && mv.at_least(7) {
        return Err(nova(
            StatusCode::CONFLICT,
            "Can not add access to a public flavor.",
        ));
    }
    if add {
        match flavors::add_project(&api.api_db, f.id, tenant).await {
            Ok(()) => {}
            Err(ComputeError::Duplicate(_)) => {
                return Err(nova(
                    StatusCode::CONFLICT,
                    format!("Flavor access already exists for flavor {id} and project {tenant} combination."),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    } else if !flavors::remove_project(&api.api_db, f.id, tenant).await? {
        return Err(nova(
            StatusCode::NOT_FOUND,
            format!("Flavor access not found for {id} / {tenant} combination."),
        ));
    }
    let ps = flavors::projects(&api.api_db, f.id).await?;
    Ok(axum::Json(access_view(&id, &ps)).into_response())
}
