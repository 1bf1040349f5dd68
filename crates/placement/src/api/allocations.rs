//! Allocations per consumer (`/allocations`), and usages per project (`/usages`).

use super::{admin, int_in, need, object_body, only_keys, require, uuid_value, Params, S, V};
use crate::error::{bad, PlacementError, Result};
use crate::microversion::Mv;
use crate::store::{self, Amounts, ConsumerWrite};
use crate::PlacementService;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use tessera_http::auth::Caller;

fn resources_of(v: &Value, rp: &str) -> Result<BTreeMap<String, i64>> {
    let m = v.as_object().filter(|m| !m.is_empty()).ok_or_else(|| {
        bad(format!(
            "JSON does not validate: resources of {rp} must be a non-empty object"
        ))
    })?;
    m.iter()
        .map(|(rc, n)| Ok((rc.clone(), int_in(n, "resource amount", 1, i64::MAX)?)))
        .collect()
}

fn project_user(m: &Map<String, Value>, k: &str) -> Result<String> {
    match require(m, k)?.as_str() {
        Some(s) if !s.is_empty() && s.len() <= 255 => Ok(s.to_string()),
        _ => Err(bad(format!(
            "JSON does not validate: '{k}' must be a string of 1 to 255 characters"
        ))),
    }
}

/// One consumer's allocation document (PUT body, or one entry of a POST body) → what to write.
fn consumer_write(
    svc: &PlacementService,
    consumer: &str,
    m: &Map<String, Value>,
    mv: Mv,
    in_post: bool,
) -> Result<ConsumerWrite> {
    let mut allowed = vec!["allocations"];
    if mv.at_least(8) {
        allowed.extend(["project_id", "user_id"]);
    }
    if mv.at_least(28) {
        allowed.push("consumer_generation");
    }
    if mv.at_least(34) {
        allowed.push("mappings");
    }
    if mv.at_least(38) {
        allowed.push("consumer_type");
    }
    only_keys(m, &allowed)?;
    let mut amounts: Amounts = BTreeMap::new();
    let allocs = require(m, "allocations")?;
    if mv.at_least(12) || in_post {
        let a = allocs
            .as_object()
            .ok_or_else(|| bad("JSON does not validate: 'allocations' must be an object"))?;
        if a.is_empty() && !mv.at_least(28) && !in_post {
            return Err(bad(
                "JSON does not validate: 'allocations' does not have enough properties",
            ));
        }
        for (rp, v) in a {
            let rp = uuid_value(&json!(rp), "allocations")?;
            let o = v
                .as_object()
                .ok_or_else(|| bad("JSON does not validate: each allocation must be an object"))?;
            only_keys(o, &["resources", "generation"])?;
            for (rc, n) in resources_of(require(o, "resources")?, &rp)? {
                amounts.insert((rp.clone(), rc), n);
            }
        }
    } else {
        let a = allocs
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad("JSON does not validate: 'allocations' must be a non-empty array"))?;
        for item in a {
            let o = item
                .as_object()
                .ok_or_else(|| bad("JSON does not validate: each allocation must be an object"))?;
            only_keys(o, &["resource_provider", "resources"])?;
            let rp = require(o, "resource_provider")?
                .as_object()
                .and_then(|p| p.get("uuid"))
                .ok_or_else(|| bad("JSON does not validate: 'resource_provider' needs a 'uuid'"))?;
            let rp = uuid_value(rp, "resource_provider")?;
            for (rc, n) in resources_of(require(o, "resources")?, &rp)? {
                amounts.insert((rp.clone(), rc), n);
            }
        }
    }
    let (project_id, user_id) = if mv.at_least(8) {
        (project_user(m, "project_id")?, project_user(m, "user_id")?)
    } else {
        (
            svc.settings.incomplete_project.clone(),
            svc.settings.incomplete_user.clone(),
        )
    };
    let expected_generation = if mv.at_least(28) {
        match require(m, "consumer_generation")? {
            Value::Null => Some(None),
            v => Some(Some(int_in(v, "consumer_generation", 0, i64::MAX)?)),
        }
    } else {
        None
    };
    let consumer_type = if mv.at_least(38) {
        match require(m, "consumer_type")?.as_str() {
            Some(t)
                if !t.is_empty()
                    && t.len() <= 255
                    && t.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') =>
            {
                Some(t.to_string())
            }
            _ => {
                return Err(bad(
                    "JSON does not validate: 'consumer_type' must match '^[A-Z0-9_]+$'",
                ))
            }
        }
    } else {
        None
    };
    Ok(ConsumerWrite {
        consumer: consumer.to_string(),
        project_id,
        user_id,
        expected_generation,
        consumer_type,
        amounts,
    })
}

async fn check_classes(svc: &PlacementService, writes: &[ConsumerWrite]) -> Result<()> {
    let classes: BTreeSet<String> = writes
        .iter()
        .flat_map(|w| w.amounts.keys().map(|(_, rc)| rc.clone()))
        .collect();
    let unknown = store::unknown_names(&svc.db, "resource_classes", &classes).await?;
    if let Some(rc) = unknown.first() {
        return Err(bad(format!(
            "Unable to allocate inventory: Unknown resource class in allocation: {rc}"
        )));
    }
    Ok(())
}

pub(crate) async fn put_one(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(consumer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    admin(&ctx, "allocations:update")?;
    let consumer = uuid_value(&json!(consumer), "consumer_uuid")
        .map_err(|_| PlacementError::NotFound(format!("Malformed consumer_uuid: {consumer}")))?;
    let m = object_body(&headers, &body)?;
    let w = consumer_write(&svc, &consumer, &m, mv, false)?;
    let writes = [w];
    check_classes(&svc, &writes).await?;
    store::allocations_write(&svc.db, &writes, svc.settings.conflict_retries).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn post(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    need(mv, 13)?;
    admin(&ctx, "allocations:manage")?;
    let m = object_body(&headers, &body)?;
    if m.is_empty() {
        return Err(bad(
            "JSON does not validate: the body needs at least one consumer",
        ));
    }
    let mut writes = Vec::new();
    for (consumer, v) in &m {
        let c = uuid_value(&json!(consumer), "consumer_uuid")?;
        let o = v
            .as_object()
            .ok_or_else(|| bad("JSON does not validate: each consumer's entry must be an object"))?;
        writes.push(consumer_write(&svc, &c, o, mv, true)?);
    }
    check_classes(&svc, &writes).await?;
    store::allocations_write(&svc.db, &writes, svc.settings.conflict_retries).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn get_one(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Path(consumer): Path<String>,
) -> Result<Response> {
    admin(&ctx, "allocations:list")?;
    let amounts = store::consumer_allocations(&svc.db, &consumer).await?;
    let mut allocs: Map<String, Value> = Map::new();
    for ((rp, rc), n) in &amounts {
        if !allocs.contains_key(rp) {
            let gen = store::provider_get(&svc.db, rp)
                .await?
                .map(|p| p.generation)
                .unwrap_or(0);
            allocs.insert(rp.clone(), json!({"generation": gen, "resources": {}}));
        }
        if let Some(e) = allocs.get_mut(rp) {
            e["resources"][rc] = json!(n);
        }
    }
    let mut body = json!({"allocations": allocs});
    if !amounts.is_empty() && mv.at_least(12) {
        if let Some(c) = store::consumer_get(&svc.db, &consumer).await? {
            body["project_id"] = json!(c.project_id);
            body["user_id"] = json!(c.user_id);
            if mv.at_least(28) {
                body["consumer_generation"] = json!(c.generation);
            }
            if mv.at_least(38) {
                body["consumer_type"] = json!(c.consumer_type.unwrap_or_else(|| "unknown".into()));
            }
        }
    }
    Ok(axum::Json(body).into_response())
}

pub(crate) async fn delete_one(
    State(svc): S,
    Caller(ctx): Caller,
    Path(consumer): Path<String>,
) -> Result<Response> {
    admin(&ctx, "allocations:delete")?;
    if !store::consumer_delete(&svc.db, &consumer).await? {
        return Err(PlacementError::NotFound(format!(
            "No allocations for consumer '{consumer}'"
        )));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn project_usages(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response> {
    need(mv, 9)?;
    let allowed: &[&str] = if mv.at_least(38) {
        &["project_id", "user_id", "consumer_type"]
    } else {
        &["project_id", "user_id"]
    };
    let p = Params::parse(q, allowed, &[])?;
    let project = p
        .one("project_id")
        .ok_or_else(|| bad("Invalid query string parameters: 'project_id' is a required property"))?;
    // Admins, services, and readers of that very project.
    if admin(&ctx, "usages").is_err() && ctx.project_id() != Some(project) {
        return admin(&ctx, "usages").map(|_| StatusCode::OK.into_response());
    }
    let by_type = store::project_usages(&svc.db, project, p.one("user_id")).await?;
    if !mv.at_least(38) {
        let mut total: BTreeMap<String, i64> = BTreeMap::new();
        for (classes, _) in by_type.values() {
            for (rc, n) in classes {
                *total.entry(rc.clone()).or_default() += n;
            }
        }
        return Ok(axum::Json(json!({"usages": total})).into_response());
    }
    let group = |classes: &BTreeMap<String, i64>, count: i64| {
        let mut v = json!({"consumer_count": count});
        for (rc, n) in classes {
            v[rc] = json!(n);
        }
        v
    };
    let mut out = Map::new();
    match p.one("consumer_type") {
        Some("all") => {
            let mut total: BTreeMap<String, i64> = BTreeMap::new();
            let mut count = 0;
            for (classes, c) in by_type.values() {
                count += c;
                for (rc, n) in classes {
                    *total.entry(rc.clone()).or_default() += n;
                }
            }
            out.insert("all".into(), group(&total, count));
        }
        filter => {
            for (t, (classes, c)) in &by_type {
                let name = t.clone().unwrap_or_else(|| "unknown".into());
                if filter.is_none_or(|f| f == name) {
                    out.insert(name, group(classes, *c));
                }
            }
        }
    }
    Ok(axum::Json(json!({"usages": out})).into_response())
}

/// `POST /reshaper` (1.30).
pub(crate) async fn reshaper(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    need(mv, 30)?;
    admin(&ctx, "reshaper:reshape")?;
    let m = object_body(&headers, &body)?;
    only_keys(&m, &["inventories", "allocations"])?;
    let invs = require(&m, "inventories")?
        .as_object()
        .ok_or_else(|| bad("JSON does not validate: 'inventories' must be an object"))?;
    let mut reshape_invs = Vec::new();
    let mut classes = BTreeSet::new();
    for (rp, v) in invs {
        let rp = uuid_value(&json!(rp), "inventories")?;
        if store::provider_get(&svc.db, &rp).await?.is_none() {
            return Err(PlacementError::BadRequest(
                format!("Resource provider {rp} in inventories not found"),
                Some(crate::error::PROVIDER_NOT_FOUND),
            ));
        }
        let o = v
            .as_object()
            .ok_or_else(|| bad("JSON does not validate: each provider's inventories must be an object"))?;
        let (generation, inventories) = super::providers::parse_inventories(o, mv, &rp)?;
        classes.extend(inventories.keys().cloned());
        reshape_invs.push(store::ReshapeInventory {
            rp,
            generation,
            inventories,
        });
    }
    let unknown = store::unknown_names(&svc.db, "resource_classes", &classes).await?;
    if let Some(rc) = unknown.first() {
        return Err(bad(format!("Unknown resource class in inventory: {rc}")));
    }
    let allocs = require(&m, "allocations")?
        .as_object()
        .ok_or_else(|| bad("JSON does not validate: 'allocations' must be an object"))?;
    let mut writes = Vec::new();
    for (consumer, v) in allocs {
        let c = uuid_value(&json!(consumer), "consumer_uuid")?;
        let o = v
            .as_object()
            .ok_or_else(|| bad("JSON does not validate: each consumer's entry must be an object"))?;
        writes.push(consumer_write(&svc, &c, o, mv, true)?);
    }
    check_classes(&svc, &writes).await?;
    store::reshape(&svc.db, &reshape_invs, &writes, svc.settings.conflict_retries).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
