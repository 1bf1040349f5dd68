//! `GET /os-availability-zone[/detail]`: the zones hosts are in (aggregates with zones come later: every
//! compute host is in the default zone, other services in the internal one).

use super::services::{is_up, zone_of};
use super::{admin, naive_time, S};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tessera_http::auth::Caller;
use tessera_http::ApiError;

pub(crate) async fn list(State(api): S, Caller(_ctx): Caller) -> Result<Response, ApiError> {
    let per_cell = api
        .each_cell(|_, db| async move { crate::celldb::services(&db).await })
        .await?;
    // Compute zones only; a zone is available when one of its enabled computes is up.
    let host_zones = crate::aggregates::host_zones(&api.api_db).await?;
    let mut zones: BTreeMap<String, bool> = BTreeMap::new();
    for (_, svcs) in per_cell {
        for s in svcs.iter().filter(|s| s.binary == "nova-compute") {
            let avail = !s.disabled && is_up(s, &api.settings);
            let e = zones
                .entry(zone_of(s, &api.settings, &host_zones))
                .or_insert(false);
            *e |= avail;
        }
    }
    let info: Vec<Value> = zones
        .into_iter()
        .map(|(z, a)| json!({"zoneName": z, "zoneState": {"available": a}, "hosts": null}))
        .collect();
    Ok(axum::Json(json!({ "availabilityZoneInfo": info })).into_response())
}

pub(crate) async fn detail(State(api): S, Caller(ctx): Caller) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-availability-zone:detail")?;
    let per_cell = api
        .each_cell(|_, db| async move { crate::celldb::services(&db).await })
        .await?;
    let host_zones = crate::aggregates::host_zones(&api.api_db).await?;
    let mut zones: BTreeMap<String, (bool, Map<String, Value>)> = BTreeMap::new();
    for (_, svcs) in per_cell {
        for s in svcs {
            let up = is_up(&s, &api.settings);
            let z = zones
                .entry(zone_of(&s, &api.settings, &host_zones))
                .or_insert((false, Map::new()));
            z.0 |= up && !s.disabled;
            let host = z.1.entry(s.host.clone()).or_insert_with(|| json!({}));
            host[&s.binary] =
                json!({"available": up, "active": !s.disabled, "updated_at": naive_time(s.updated_at)});
        }
    }
    let info: Vec<Value> = zones
        .into_iter()
        .map(|(z, (a, hosts))| json!({"zoneName": z, "zoneState": {"available": a}, "hosts": hosts}))
        .collect();
    Ok(axum::Json(json!({ "availabilityZoneInfo": info })).into_response())
}
