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
    if s.forced_down {
        return false;
    }
    let last = s.last_seen_up.unwrap_or(s.updated_at);
    let age = tessera_types::now_epoch_micros() - last;
    age <= settings.service_down_time.as_micros() as i64
}

/// The zone a service is shown in: computes in the default zone (aggregates come later), the rest internal.
pub(crate) fn zone_of(s: &ServiceRecord, settings: &ApiSettings) -> String {
    if s.binary == "nova-compute" {
        settings.default_availability_zone.clone()
    } else {
        settings.internal_service_availability_zone.clone()
    }
}

pub(crate) fn service_view(s: &ServiceRecord, settings: &ApiSettings, mv: Mv) -> Value {
    let mut v = json!({
        "id": if mv.at_least(53) { json!(s.uuid) } else { json!(s.id) },
        "binary": s.binary,
        "host": s.host,
        "zone": zone_of(s, settings),
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
    let mut out = Vec::new();
    for (_, svcs) in per_cell {
        for s in svcs {
            if q.get("binary").is_some_and(|b| *b != s.binary) || q.get("host").is_some_and(|h| *h != s.host)
            {
                continue;
            }
            out.push(service_view(&s, &api.settings, mv));
        }
    }
    Ok(axum::Json(json!({ "services": out })).into_response())
}
