//! `GET /os-services`: the service records of every cell, with up/down from their heartbeats.

use super::{admin, naive_time, ApiSettings, Mv, S};
use crate::celldb::ServiceRecord;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};
use std::collections::HashMap;
use tessera_http::auth::Caller;
use tessera_http::ApiError;

/// Whether a service counts as up: not forced down, and heard from within `service_down_time`.
pub(crate) fn is_up(s: &ServiceRecord, settings: &ApiSettings) -> bool {
    is_up_at(s, settings.service_down_time, tessera_types::now_epoch_micros())
}

/// [`is_up`] at time `now` (epoch microseconds).
pub fn is_up_at(s: &ServiceRecord, down_time: std::time::Duration, now: i64) -> bool {
    if s.forced_down {
        return false;
    }
    let last = s.last_seen_up.unwrap_or(s.updated_at);
    now - last <= down_time.as_micros() as i64
}

/// The zone a service is shown in: a compute in its aggregates' zone (else the default one), the rest in
/// the internal zone.
pub(crate) fn zone_of(s: &ServiceRecord, settings: &ApiSettings, zones: &HashMap<String, String>) -> String {
    if s.binary == "nova-compute" {
        zones
            .get(&s.host)
            .cloned()
            .unwrap_or_else(|| settings.default_availability_zone.clone())
    } else {
        settings.internal_service_availability_zone.clone()
    }
}

pub(crate) fn service_view(
    s: &ServiceRecord,
    settings: &ApiSettings,
    zones: &HashMap<String, String>,
    mv: Mv,
) -> Value {
    let mut v = json!({
        "id": if mv.at_least(53) { json!(s.uuid) } else { json!(s.id) },
        "binary": s.binary,
        "host": s.host,
        "zone": zone_of(s, settings, zones),
        "status": if s.disabled { "disabled" } else { "enabled" },
        "state": if is_up(s, settings) { "up" } else { "down" },
        "updated_at": naive_time(s.updated_at),
        "disabled_reason": s.disabled_reason,
    });
    if mv.at_least(11) {
        v["forced_down"] = json!(s.forced_down);
    }
    v
}

pub(crate) async fn list(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-services:list")?;
    let per_cell = api
        .each_cell(|_, db| async move { crate::celldb::services(&db).await })
        .await?;
    let zones = crate::aggregates::host_zones(&api.api_db).await?;
    let mut out = Vec::new();
    for (_, svcs) in per_cell {
        for s in svcs {
            if q.get("binary").is_some_and(|b| *b != s.binary) || q.get("host").is_some_and(|h| *h != s.host)
            {
                continue;
            }
            out.push(service_view(&s, &api.settings, &zones, mv));
        }
    }
    Ok(axum::Json(json!({ "services": out })).into_response())
}

use super::bad;

/// Find a service record (and its cell database) by a predicate, across cells.
async fn find_service(
    api: &std::sync::Arc<super::ComputeApi>,
    pred: impl Fn(&ServiceRecord) -> bool + Copy,
) -> Result<Option<(tessera_db::Db, ServiceRecord)>, ApiError> {
    for c in api.cells().await? {
        let db = api.cell_db(&c).await?;
        if let Some(s) = crate::celldb::services(&db).await?.into_iter().find(|s| pred(s)) {
            return Ok(Some((db, s)));
        }
    }
    Ok(None)
}

/// `PUT /os-services/{uuid}` (2.53+): a flat body with `status`, `disabled_reason`, `forced_down`; only
/// `nova-compute` services may be changed.
pub(crate) async fn update(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: http::HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    b: axum::body::Bytes,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-services:update")?;
    let v = tessera_http::body::parse_json::<Value>(tessera_http::Family::Nova, &headers, &b)?;
    if !mv.at_least(53) {
        return legacy_action(api, mv, &id, v).await;
    }
    let m = v
        .as_object()
        .ok_or_else(|| bad("Invalid input: the body must be an object"))?;
    if m.is_empty() {
        return Err(bad(
            "No updates were requested. Fields 'status' or 'forced_down' should be specified.",
        ));
    }
    if let Some(k) = m
        .keys()
        .find(|k| !["status", "disabled_reason", "forced_down"].contains(&k.as_str()))
    {
        return Err(bad(format!("Invalid input for field/attribute request body. Additional properties are not allowed ('{k}' was unexpected)")));
    }
    let status = match m.get("status") {
        None => None,
        Some(Value::String(s)) if s == "enabled" || s == "disabled" => Some(s.as_str()),
        Some(other) => return Err(bad(format!("Invalid input for field/attribute status. Value: {other}. It is not one of ['enabled', 'disabled']"))),
    };
    let reason = match m.get("disabled_reason") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => Some(s.clone()),
        Some(other) => {
            return Err(bad(format!(
                "Invalid input for field/attribute disabled_reason. Value: {other}."
            )))
        }
    };
    if reason.is_some() && status != Some("disabled") {
        return Err(bad(
            "Specifying 'disabled_reason' with status 'enabled' is invalid.",
        ));
    }
    let forced = match m.get("forced_down") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err(bad(format!(
                "Invalid input for field/attribute forced_down. Value: {other}."
            )))
        }
    };
    let (db, s) = find_service(&api, |s| s.uuid == id)
        .await?
        .ok_or_else(|| super::nova(http::StatusCode::NOT_FOUND, format!("Service {id} not found.")))?;
    if s.binary != "nova-compute" {
        return Err(bad(format!(
            "Updating a {} service is not supported. Only nova-compute services can be updated.",
            s.binary
        )));
    }
    let disabled = status.map(|st| st == "disabled").unwrap_or(s.disabled);
    let reason = if disabled {
        reason.or(s.disabled_reason.clone())
    } else {
        None
    };
    let forced = forced.unwrap_or(s.forced_down);
    crate::celldb::service_update(&db, s.id, disabled, reason.as_deref(), forced).await?;
    sync_disabled_trait(&api, &s.host, disabled).await;
    let s = crate::celldb::service_by_uuid(&db, &id)
        .await?
        .ok_or_else(|| super::nova(http::StatusCode::NOT_FOUND, format!("Service {id} not found.")))?;
    let zones = crate::aggregates::host_zones(&api.api_db).await?;
    Ok(axum::Json(json!({ "service": service_view(&s, &api.settings, &zones, mv) })).into_response())
}

/// Before 2.53: `PUT /os-services/{enable|disable|disable-log-reason|force-down}` with `{host, binary}`.
async fn legacy_action(
    api: std::sync::Arc<super::ComputeApi>,
    mv: Mv,
    action: &str,
    v: Value,
) -> Result<Response, ApiError> {
    let host = v
        .get("host")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("Missing 'host' in the request body"))?
        .to_string();
    let binary = v
        .get("binary")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("Missing 'binary' in the request body"))?
        .to_string();
    let (db, s) = find_service(&api, |s| s.host == host && s.binary == binary)
        .await?
        .ok_or_else(|| {
            super::nova(
                http::StatusCode::NOT_FOUND,
                format!("Service {binary} on host {host} not found."),
            )
        })?;
    let mut out = json!({"host": host, "binary": binary});
    match action {
        "enable" => {
            crate::celldb::service_update(&db, s.id, false, None, s.forced_down).await?;
            sync_disabled_trait(&api, &host, false).await;
            out["status"] = json!("enabled");
        }
        "disable" => {
            crate::celldb::service_update(&db, s.id, true, s.disabled_reason.as_deref(), s.forced_down)
                .await?;
            out["status"] = json!("disabled");
        }
        "disable-log-reason" => {
            let reason = v
                .get("disabled_reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty() && r.len() <= 255)
                .ok_or_else(|| bad("Missing disabled reason field"))?;
            crate::celldb::service_update(&db, s.id, true, Some(reason), s.forced_down).await?;
            sync_disabled_trait(&api, &host, true).await;
            out["status"] = json!("disabled");
            out["disabled_reason"] = json!(reason);
        }
        "force-down" if mv.at_least(11) => {
            let f = v
                .get("forced_down")
                .and_then(Value::as_bool)
                .ok_or_else(|| bad("Missing forced_down field"))?;
            crate::celldb::service_update(&db, s.id, s.disabled, s.disabled_reason.as_deref(), f).await?;
            out["forced_down"] = json!(f);
        }
        other => {
            return Err(super::nova(
                http::StatusCode::NOT_FOUND,
                format!("Unknown action {other}"),
            ))
        }
    }
    Ok(axum::Json(json!({ "service": out })).into_response())
}

/// Mirror a compute's enabled state into placement (`COMPUTE_STATUS_DISABLED` on its provider), so the
/// scheduler's placement query leaves disabled hosts out; best effort, as upstream.
async fn sync_disabled_trait(api: &super::ComputeApi, host: &str, disabled: bool) {
    if let Some(p) = &api.placement {
        if let Err(e) = p.host_trait(host, "COMPUTE_STATUS_DISABLED", disabled).await {
            tracing::warn!(%host, error = %e, "cannot update COMPUTE_STATUS_DISABLED in placement");
        }
    }
}

/// `DELETE /os-services/{id}` (integer id before 2.53, uuid from it): a compute hosting instances is refused
/// with 409; otherwise the record goes, and with a compute its nodes, host mapping, aggregate memberships
/// and placement providers.
pub(crate) async fn delete(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-services:delete")?;
    if !mv.at_least(53) && id.parse::<i64>().is_err() {
        return Err(bad(format!("Invalid ID {id}")));
    }
    let by_uuid = mv.at_least(53);
    let (db, s) = find_service(&api, |s| {
        if by_uuid {
            s.uuid == id
        } else {
            s.id.to_string() == id
        }
    })
    .await?
    .ok_or_else(|| {
        super::nova(
            http::StatusCode::NOT_FOUND,
            format!("Service {id} could not be found."),
        )
    })?;
    if s.binary == "nova-compute" && crate::celldb::live_instances(&db, Some(&s.host)).await? > 0 {
        return Err(super::nova(
            http::StatusCode::CONFLICT,
            "Unable to delete compute service that is hosting instances. Migrate or delete the instances first.",
        ));
    }
    let nodes = crate::celldb::service_delete(&db, &s).await?;
    if s.binary == "nova-compute" {
        crate::cells::host_mapping_delete(&api.api_db, &s.host).await?;
        for a in crate::aggregates::list(&api.api_db).await? {
            if a.hosts.contains(&s.host) {
                crate::aggregates::remove_host(&api.api_db, a.id, &s.host).await?;
            }
        }
        if let Some(p) = &api.placement {
            for n in nodes {
                if let Err(e) = p.delete_provider(&n).await {
                    tracing::warn!(node = %n, error = %e, "cannot delete the compute node's resource provider");
                }
            }
        }
    }
    Ok(http::StatusCode::NO_CONTENT.into_response())
}
