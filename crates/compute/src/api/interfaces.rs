//! `/servers/{id}/os-interface`: the server's ports (from the Networking service), and attaching or detaching
//! one — a call to the server's compute host, which makes or binds the port, has the driver plug it and
//! records the VIF (Nova's `attach_interface` / `detach_interface`).

use super::servers::{find, Found};
use super::{bad, nova, S};
use crate::network::{NetworkCheck, NetworkRequest, RequestedNetwork};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use tessera_http::auth::Caller;
use tessera_http::ApiError;

fn attachment(port: &Value) -> Value {
    json!({
        "port_state": port["status"],
        "fixed_ips": port["fixed_ips"].as_array().map(|a| a.iter().map(|f| json!({"subnet_id": f["subnet_id"], "ip_address": f["ip_address"]})).collect::<Vec<_>>()).unwrap_or_default(),
        "port_id": port["id"],
        "net_id": port["network_id"],
        "mac_addr": port["mac_address"],
    })
}

fn unavailable(e: String) -> ApiError {
    tracing::error!(error = %e, "networking service unavailable");
    nova(
        StatusCode::SERVICE_UNAVAILABLE,
        "The networking service is not available.",
    )
}

/// The server (in a cell, with a host) and the Networking client, or the API error.
async fn server_and_client(
    api: &super::ComputeApi,
    ctx: &tessera_types::RequestContext,
    id: &str,
) -> Result<
    (
        crate::cells::CellMapping,
        crate::celldb::InstanceRow,
        std::sync::Arc<crate::network::NetworkClient>,
    ),
    ApiError,
> {
    let (cell, row) = match find(api, ctx, id).await? {
        Found::Cell { cell, row, .. } => (cell, *row),
        Found::Building(_) => {
            return Err(nova(
                StatusCode::CONFLICT,
                format!("Cannot 'attach_interface' instance {id} while it is in vm_state building"),
            ))
        }
        Found::Down(_) => {
            return Err(nova(
                StatusCode::SERVICE_UNAVAILABLE,
                "The cell of this server is not responding; try again later.",
            ))
        }
    };
    let client = api.boot.get().and_then(|w| w.network.clone()).ok_or_else(|| {
        nova(
            StatusCode::NOT_IMPLEMENTED,
            "No networking service is configured.",
        )
    })?;
    Ok((cell, row, client))
}

pub(crate) async fn list(
    State(api): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, row, client) = server_and_client(&api, &ctx, &id).await?;
    let ports = client.ports_of(&row.uuid).await.map_err(unavailable)?;
    Ok(
        axum::Json(json!({"interfaceAttachments": ports.iter().map(attachment).collect::<Vec<_>>()}))
            .into_response(),
    )
}

pub(crate) async fn show(
    State(api): S,
    Caller(ctx): Caller,
    Path((id, port_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, row, client) = server_and_client(&api, &ctx, &id).await?;
    let ports = client.ports_of(&row.uuid).await.map_err(unavailable)?;
    match ports.iter().find(|p| p["id"].as_str() == Some(port_id.as_str())) {
        Some(p) => Ok(axum::Json(json!({"interfaceAttachment": attachment(p)})).into_response()),
        None => Err(nova(
            StatusCode::NOT_FOUND,
            format!("Port {port_id} is not attached"),
        )),
    }
}

/// A call to the server's host on its cell's bus.
async fn call_host(
    api: &super::ComputeApi,
    cell: &crate::cells::CellMapping,
    row: &crate::celldb::InstanceRow,
    method: &str,
    args: Value,
    request_id: &str,
) -> Result<Value, ApiError> {
    let host = row
        .host
        .clone()
        .ok_or_else(|| nova(StatusCode::CONFLICT, format!("Instance {} has no host", row.uuid)))?;
    let wiring = api.boot.get().ok_or_else(|| {
        nova(
            StatusCode::SERVICE_UNAVAILABLE,
            "The compute hosts are not reachable.",
        )
    })?;
    let bus = wiring.buses.get(&cell.transport_url).map_err(super::internal)?;
    let msg = tessera_bus::Envelope::new(method, args, request_id.to_string());
    bus.call(
        &tessera_bus::Target::server(crate::agent::TOPIC, &host),
        msg,
        Duration::from_secs(120),
    )
    .await
    .map_err(|e| match e {
        tessera_bus::BusError::Remote(r) => bad(format!(
            "Failed to {method} on instance {}: {}",
            row.uuid, r.message
        )),
        other => nova(
            StatusCode::CONFLICT,
            format!("Compute host {host} did not answer: {other}"),
        ),
    })
}

fn check_state(row: &crate::celldb::InstanceRow, verb: &str) -> Result<(), ApiError> {
    if row.task_state.is_some()
        || !["active", "stopped", "paused", "suspended"].contains(&row.vm_state.as_str())
    {
        return Err(nova(
            StatusCode::CONFLICT,
            format!(
                "Cannot '{verb}' instance {} while it is in {} {}",
                row.uuid,
                if row.task_state.is_some() {
                    "task_state"
                } else {
                    "vm_state"
                },
                row.task_state.clone().unwrap_or_else(|| row.vm_state.clone())
            ),
        ));
    }
    Ok(())
}

pub(crate) async fn create(
    State(api): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v: Value = serde_json::from_slice(&body).map_err(|e| bad(format!("Malformed request body: {e}")))?;
    let a = v.get("interfaceAttachment").cloned().unwrap_or(json!({}));
    let Some(o) = a.as_object() else {
        return Err(bad("Invalid input for field/attribute interfaceAttachment."));
    };
    if let Some(k) = o
        .keys()
        .find(|k| !["net_id", "port_id", "fixed_ips", "tag"].contains(&k.as_str()))
    {
        return Err(bad(format!("Invalid input for field/attribute interfaceAttachment. Additional properties are not allowed ('{k}' was unexpected)")));
    }
    let net_id = o.get("net_id").and_then(Value::as_str).map(str::to_string);
    let port_id = o.get("port_id").and_then(Value::as_str).map(str::to_string);
    if net_id.is_some() && port_id.is_some() {
        return Err(bad("Must not input both network_id and port_id"));
    }
    let fixed_ip = match o.get("fixed_ips").and_then(Value::as_array) {
        Some(ips) if ips.len() == 1 => {
            let ip = ips[0]["ip_address"].as_str().unwrap_or_default().to_string();
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(bad(format!("Invalid fixed IP address ({ip})")));
            }
            if net_id.is_none() {
                return Err(bad("Must input network_id when request IP address"));
            }
            Some(ip)
        }
        Some(_) => return Err(bad("Only one fixed IP address may be requested")),
        None => None,
    };
    let (cell, row, client) = server_and_client(&api, &ctx, &id).await?;
    check_state(&row, "attach_interface")?;
    let project = row.project_id.clone();
    let requested = match (net_id, port_id) {
        (None, None) => None,
        (n, p) => Some(vec![RequestedNetwork {
            network_id: n,
            port_id: p,
            fixed_ip,
            tag: o.get("tag").and_then(Value::as_str).map(str::to_string),
        }]),
    };
    let requested = client
        .validate(&project, ctx.is_admin(), requested, 1)
        .await
        .map_err(|e| match e {
            NetworkCheck::BadRequest(m) => bad(m),
            NetworkCheck::Conflict(m) => nova(StatusCode::CONFLICT, m),
            NetworkCheck::Unavailable(m) => unavailable(m),
        })?;
    let Some(one) = requested.into_iter().next() else {
        return Err(bad("No network to attach"));
    };
    let current = NetworkRequest::from_info(row.network_info.as_deref());
    let r = call_host(
        &api,
        &cell,
        &row,
        "attach_interface",
        json!({"uuid": row.uuid, "project_id": project, "network_info": current, "requested": one}),
        &ctx.request_id,
    )
    .await?;
    let pid = r["vif"]["port_id"].as_str().unwrap_or_default().to_string();
    let port = client.port(&pid).await.map_err(unavailable)?.ok_or_else(|| {
        nova(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Port {pid} vanished after its attach"),
        )
    })?;
    Ok(axum::Json(json!({"interfaceAttachment": attachment(&port)})).into_response())
}

pub(crate) async fn delete(
    State(api): S,
    Caller(ctx): Caller,
    Path((id, port_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (cell, row, _) = server_and_client(&api, &ctx, &id).await?;
    check_state(&row, "detach_interface")?;
    let current = NetworkRequest::from_info(row.network_info.as_deref());
    if !current.vifs.iter().any(|v| v.port_id == port_id) {
        return Err(nova(
            StatusCode::NOT_FOUND,
            format!("Port {port_id} is not attached"),
        ));
    }
    call_host(
        &api,
        &cell,
        &row,
        "detach_interface",
        json!({"uuid": row.uuid, "network_info": current, "port_id": port_id}),
        &ctx.request_id,
    )
    .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}
