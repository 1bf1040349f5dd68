//! `POST /os-server-external-events`: what other services tell Nova about its servers (the Networking
//! service: a port's addresses or floating IPs changed, a port went away, a VIF was plugged). Each event goes
//! to the compute host of its server, in one cast per server; the answer says, per event, whether it was
//! delivered (200), its server is unknown (404) or has no host yet (422).

use super::{admin, bad, nova, Mv, S};
use crate::celldb;
use crate::cells;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::StatusCode;
use serde_json::{json, Value};
use tessera_http::auth::Caller;
use tessera_http::ApiError;

/// Event names and the microversion that brought each.
const NAMES: &[(&str, u32)] = &[
    ("network-changed", 0),
    ("network-vif-plugged", 0),
    ("network-vif-unplugged", 0),
    ("network-vif-deleted", 0),
    ("volume-extended", 51),
    ("power-update", 76),
    ("accelerator-request-bound", 82),
    ("volume-reimaged", 93),
];
const STATUSES: &[&str] = &["failed", "completed", "in-progress"];

fn invalid(detail: &str) -> ApiError {
    bad(format!("Invalid input for field/attribute events. {detail}"))
}

pub(crate) async fn create(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Services call this with the service role; admins may too.
    if !ctx.has_role("service") {
        admin(&ctx, "os_compute_api:os-server-external-events:create")?;
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| bad(format!("Malformed request body: {e}")))?;
    let events = v
        .get("events")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| invalid("'events' is a required non-empty list"))?;
    let mut checked = Vec::new();
    for e in events {
        let o = e
            .as_object()
            .ok_or_else(|| invalid(&format!("{e} is not of type 'object'")))?;
        if let Some(k) = o
            .keys()
            .find(|k| !["name", "server_uuid", "status", "tag"].contains(&k.as_str()))
        {
            return Err(invalid(&format!(
                "Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
        let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
        if !NAMES.iter().any(|(n, since)| *n == name && mv.at_least(*since)) {
            return Err(invalid(&format!("'{name}' is not one of the event names")));
        }
        let uuid = o
            .get("server_uuid")
            .and_then(Value::as_str)
            .filter(|u| super::hypervisors::uuid_like(u))
            .ok_or_else(|| invalid("'server_uuid' must be a server's uuid"))?;
        let status = o.get("status").and_then(Value::as_str).unwrap_or("completed");
        if !STATUSES.contains(&status) {
            return Err(invalid(&format!("'{status}' is not one of {STATUSES:?}")));
        }
        let mut ev = json!({"name": name, "server_uuid": uuid, "status": status});
        if let Some(t) = o.get("tag") {
            let t = t
                .as_str()
                .filter(|t| t.len() <= 255)
                .ok_or_else(|| invalid("'tag' must be a string"))?;
            ev["tag"] = json!(t);
        }
        checked.push(ev);
    }
    let wiring = api.boot.get().ok_or_else(|| {
        nova(
            StatusCode::SERVICE_UNAVAILABLE,
            "The compute hosts are not reachable.",
        )
    })?;
    // One cast per server, with its events in order.
    let mut servers: Vec<String> = Vec::new();
    for e in &checked {
        let u = e["server_uuid"].as_str().unwrap_or_default().to_string();
        if !servers.contains(&u) {
            servers.push(u);
        }
    }
    let mut codes: std::collections::HashMap<String, u16> = std::collections::HashMap::new();
    for uuid in servers {
        let code = deliver(&api, wiring, &uuid, &checked, &ctx.request_id).await?;
        codes.insert(uuid, code);
    }
    let out: Vec<Value> = checked
        .into_iter()
        .map(|mut e| {
            let code = codes
                .get(e["server_uuid"].as_str().unwrap_or_default())
                .copied()
                .unwrap_or(404);
            e["code"] = json!(code);
            e
        })
        .collect();
    let accepted = out.iter().filter(|e| e["code"] == json!(200)).count();
    let status = if accepted == out.len() {
        StatusCode::OK
    } else if accepted == 0 && out.iter().all(|e| e["code"] == json!(404)) {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((status, axum::Json(json!({ "events": out }))).into_response())
}

/// Cast one server's events to its host; the code every one of them gets.
async fn deliver(
    api: &super::ComputeApi,
    wiring: &super::servers::BootWiring,
    uuid: &str,
    events: &[Value],
    request_id: &str,
) -> Result<u16, ApiError> {
    let Some(m) = cells::instance_mapping_get(&api.api_db, uuid).await? else {
        return Ok(404);
    };
    let Some(cell_id) = m.cell_id else {
        return Ok(422);
    };
    let Some(cell) = cells::cell_get_by_id(&api.api_db, cell_id).await? else {
        return Ok(404);
    };
    let db = api.cell_db(&cell).await.map_err(super::internal)?;
    let Some(row) = celldb::instance_get(&db, uuid).await?.filter(|r| r.deleted == 0) else {
        return Ok(404);
    };
    let Some(host) = row.host.clone() else {
        return Ok(422);
    };
    let mine: Vec<&Value> = events
        .iter()
        .filter(|e| e["server_uuid"] == json!(uuid))
        .collect();
    let bus = wiring.buses.get(&cell.transport_url).map_err(super::internal)?;
    let msg = tessera_bus::Envelope::new(
        "external_instance_event",
        json!({"uuid": uuid, "events": mine, "project_id": row.project_id,
               "network_info": crate::network::NetworkRequest::from_info(row.network_info.as_deref())}),
        request_id.to_string(),
    );
    match bus
        .cast(&tessera_bus::Target::server(crate::agent::TOPIC, &host), msg)
        .await
    {
        Ok(()) => Ok(200),
        Err(e) => {
            tracing::warn!(instance = %uuid, %host, error = %e, "cannot deliver external events");
            Ok(422)
        }
    }
}
