//! `/os-aggregates` (admin): host aggregates with their hosts and metadata; an `availability_zone` key puts
//! the hosts in that zone. Membership is mirrored into placement (the host's provider joins the placement
//! aggregate named by the aggregate's uuid), best effort as upstream: a placement failure is logged.

use super::{admin, naive_time, nova, Mv, S};
use crate::aggregates::{self, Aggregate};
use crate::{cells, ComputeError};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tessera_http::auth::Caller;
use tessera_http::{ApiError, Family};

use super::bad;

fn view(a: &Aggregate, mv: Mv) -> Value {
    let mut v = json!({
        "id": a.id,
        "name": a.name,
        "availability_zone": a.availability_zone(),
        "hosts": a.hosts,
        "metadata": a.metadata,
        "created_at": naive_time(a.created_at),
        "updated_at": if a.updated_at == a.created_at { Value::Null } else { json!(naive_time(a.updated_at)) },
        "deleted": false,
        "deleted_at": null,
    });
    if mv.at_least(41) {
        v["uuid"] = json!(a.uuid);
    }
    v
}

fn name_of(v: &serde_json::Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match v.get(field) {
        None | Some(Value::Null) if field == "availability_zone" => Ok(None),
        None => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 255 && s.trim() == s => {
            Ok(Some(s.clone()))
        }
        Some(other) => Err(bad(format!(
            "Invalid input for field/attribute {field}. Value: {other}."
        ))),
    }
}

async fn load(api: &super::ComputeApi, id: &str) -> Result<Aggregate, ApiError> {
    let n: i64 = id
        .parse()
        .map_err(|_| bad(format!("Invalid aggregate id {id}")))?;
    aggregates::get(&api.api_db, n).await?.ok_or_else(|| {
        nova(
            StatusCode::NOT_FOUND,
            format!("Aggregate {id} could not be found."),
        )
    })
}

fn body(headers: &HeaderMap, b: &Bytes) -> Result<Value, ApiError> {
    tessera_http::body::parse_json::<Value>(Family::Nova, headers, b)
}

pub(crate) async fn list(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-aggregates:index")?;
    let all = aggregates::list(&api.api_db).await?;
    Ok(
        axum::Json(json!({ "aggregates": all.iter().map(|a| view(a, mv)).collect::<Vec<_>>() }))
            .into_response(),
    )
}

pub(crate) async fn create(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    b: Bytes,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-aggregates:create")?;
    let v = body(&headers, &b)?;
    let a = super::wrapped(&v, "aggregate", &["name", "availability_zone"])?;
    let name = name_of(a, "name")?
        .ok_or_else(|| bad("Invalid input for field/attribute aggregate. 'name' is a required property"))?;
    let az = name_of(a, "availability_zone")?;
    match aggregates::create(&api.api_db, &name, az.as_deref()).await {
        Ok(a) => Ok(axum::Json(json!({ "aggregate": view(&a, mv) })).into_response()),
        Err(ComputeError::Duplicate(_)) => Err(nova(
            StatusCode::CONFLICT,
            format!("Aggregate {name} already exists."),
        )),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn show(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-aggregates:show")?;
    let a = load(&api, &id).await?;
    Ok(axum::Json(json!({ "aggregate": view(&a, mv) })).into_response())
}

pub(crate) async fn update(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-aggregates:update")?;
    let v = body(&headers, &b)?;
    let u = v
        .get("aggregate")
        .and_then(Value::as_object)
        .filter(|o| !o.is_empty() && o.keys().all(|k| k == "name" || k == "availability_zone"))
        .ok_or_else(|| {
            bad("Invalid input for field/attribute aggregate. Give 'name' and/or 'availability_zone'")
        })?;
    let a = load(&api, &id).await?;
    if let Some(n) = name_of(u, "name")? {
        match aggregates::rename(&api.api_db, a.id, &n).await {
            Ok(()) => {}
            Err(ComputeError::Duplicate(_)) => {
                return Err(nova(
                    StatusCode::CONFLICT,
                    format!("Aggregate {n} already exists."),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    if u.contains_key("availability_zone") {
        let z = name_of(u, "availability_zone")?;
        aggregates::set_metadata(
            &api.api_db,
            a.id,
            &BTreeMap::from([("availability_zone".to_string(), z)]),
        )
        .await?;
    }
    let a = load(&api, &id).await?;
    Ok(axum::Json(json!({ "aggregate": view(&a, mv) })).into_response())
}

pub(crate) async fn delete(
    State(api): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-aggregates:delete")?;
    let a = load(&api, &id).await?;
    if !a.hosts.is_empty() {
        return Err(bad(format!(
            "Cannot remove aggregate {id}. Reason: Host aggregate is not empty."
        )));
    }
    aggregates::delete(&api.api_db, a.id).await?;
    Ok(StatusCode::OK.into_response())
}

async fn mirror(api: &super::ComputeApi, agg: &str, host: &str, add: bool) {
    if let Some(p) = &api.placement {
        match p.aggregate_host(agg, host, add).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%host, aggregate = %agg, "host has no resource provider; placement aggregate not changed")
            }
            Err(e) => {
                tracing::warn!(%host, aggregate = %agg, error = %e, "cannot mirror the host aggregate into placement")
            }
        }
    }
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
    match name.as_str() {
        "add_host" | "remove_host" => {
            admin(&ctx, &format!("os_compute_api:os-aggregates:{name}"))?;
            let host = arg
                .get("host")
                .and_then(Value::as_str)
                .filter(|h| !h.is_empty() && h.len() <= 255 && arg.as_object().is_some_and(|o| o.len() == 1))
                .ok_or_else(|| {
                    bad(format!(
                        "Invalid input for field/attribute {name}. 'host' is a required property"
                    ))
                })?
                .to_string();
            let a = load(&api, &id).await?;
            if name == "add_host" {
                if cells::host_mapping_get(&api.api_db, &host).await?.is_none() {
                    return Err(nova(
                        StatusCode::NOT_FOUND,
                        format!("Compute host {host} could not be found."),
                    ));
                }
                if let Some(z) = a.availability_zone() {
                    let zones = aggregates::host_zones(&api.api_db).await?;
                    if let Some(other) = zones.get(&host).filter(|o| o.as_str() != z) {
                        return Err(bad(format!(
                            "Cannot add host to aggregate {id}. Reason: One or more hosts already in availability zone(s) ['{other}']."
                        )));
                    }
                }
                match aggregates::add_host(&api.api_db, a.id, &host).await {
                    Ok(()) => {}
                    Err(ComputeError::Duplicate(_)) => {
                        return Err(nova(
                            StatusCode::CONFLICT,
                            format!("Aggregate {id} already has host {host}."),
                        ))
                    }
                    Err(e) => return Err(e.into()),
                }
                mirror(&api, &a.uuid, &host, true).await;
            } else {
                if !aggregates::remove_host(&api.api_db, a.id, &host).await? {
                    return Err(nova(
                        StatusCode::NOT_FOUND,
                        format!("Cannot remove host {host} in aggregate {id}"),
                    ));
                }
                mirror(&api, &a.uuid, &host, false).await;
            }
        }
        "set_metadata" => {
            admin(&ctx, "os_compute_api:os-aggregates:set_metadata")?;
            let md = arg
                .get("metadata")
                .and_then(Value::as_object)
                .filter(|_| arg.as_object().is_some_and(|o| o.len() == 1))
                .ok_or_else(|| {
                    bad("Invalid input for field/attribute set_metadata. 'metadata' is a required property")
                })?;
            let mut changes = BTreeMap::new();
            for (k, v) in md {
                if k.is_empty() || k.len() > 255 {
                    return Err(bad(format!(
                        "Invalid input for field/attribute metadata. Key {k} is invalid"
                    )));
                }
                let val = match v {
                    Value::Null => None,
                    Value::String(s) if s.len() <= 255 => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    other => {
                        return Err(bad(format!(
                            "Invalid input for field/attribute {k}. Value: {other}."
                        )))
                    }
                };
                changes.insert(k.clone(), val);
            }
            let a = load(&api, &id).await?;
            aggregates::set_metadata(&api.api_db, a.id, &changes).await?;
        }
        other => return Err(bad(format!("There is no such action: {other}"))),
    }
    let a = load(&api, &id).await?;
    Ok(axum::Json(json!({ "aggregate": view(&a, mv) })).into_response())
}
