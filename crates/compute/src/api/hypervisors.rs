//! `GET /os-hypervisors[/detail|/{id}]`: the compute nodes of every cell. Ids are the node's integer id
//! before 2.53 and its uuid from 2.53; the statistics fields exist only up to 2.87.

use super::services::is_up;
use super::{admin, nova, ComputeApi, Mv, S};
use crate::celldb::{NodeRow, ServiceRecord};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tessera_http::auth::Caller;
use tessera_http::ApiError;

/// Every node with its compute service record.
async fn nodes(api: &Arc<ComputeApi>) -> Result<Vec<(NodeRow, Option<ServiceRecord>)>, ApiError> {
    let per_cell = api
        .each_cell(|c, db| async move {
            if c.is_cell0() {
                return Ok((Vec::new(), Vec::new()));
            }
            Ok((
                crate::celldb::compute_nodes_full(&db).await?,
                crate::celldb::services(&db).await?,
            ))
        })
        .await?;
    let mut out = Vec::new();
    for (_, (nodes, svcs)) in per_cell {
        for n in nodes {
            let svc = svcs
                .iter()
                .find(|s| Some(s.id) == n.service_id)
                .or_else(|| {
                    svcs.iter()
                        .find(|s| s.binary == "nova-compute" && s.host == n.host)
                })
                .cloned();
            out.push((n, svc));
        }
    }
    Ok(out)
}

fn view(n: &NodeRow, s: Option<&ServiceRecord>, api: &ComputeApi, mv: Mv, detail: bool) -> Value {
    let mut v = json!({
        "id": if mv.at_least(53) { json!(n.uuid) } else { json!(n.id) },
        "hypervisor_hostname": n.hypervisor_hostname,
        "state": if s.is_some_and(|s| is_up(s, &api.settings)) { "up" } else { "down" },
        "status": if s.is_some_and(|s| s.disabled) { "disabled" } else { "enabled" },
    });
    if !detail {
        return v;
    }
    v["hypervisor_type"] = json!(n.hypervisor_type);
    v["hypervisor_version"] = json!(n.hypervisor_version);
    v["host_ip"] = json!(n.host_ip.clone().unwrap_or_else(|| "127.0.0.1".into()));
    v["service"] = json!({
        "host": n.host,
        "id": match s {
            Some(s) if mv.at_least(53) => json!(s.uuid),
            Some(s) => json!(s.id),
            None => Value::Null,
        },
        "disabled_reason": s.and_then(|s| s.disabled_reason.clone()),
    });
    if mv.at_least(88) {
        v["uptime"] = Value::Null;
    } else {
        v["vcpus"] = json!(n.vcpus);
        v["vcpus_used"] = json!(n.vcpus_used);
        v["memory_mb"] = json!(n.memory_mb);
        v["memory_mb_used"] = json!(n.memory_mb_used);
        v["local_gb"] = json!(n.local_gb);
        v["local_gb_used"] = json!(n.local_gb_used);
        v["free_ram_mb"] = json!(n.memory_mb - n.memory_mb_used);
        v["free_disk_gb"] = json!(n.local_gb - n.local_gb_used);
        v["disk_available_least"] = json!(n.local_gb - n.local_gb_used);
        v["running_vms"] = json!(n.running_vms);
        v["current_workload"] = json!(0);
        v["cpu_info"] = if mv.at_least(28) { json!({}) } else { json!("{}") };
    }
    v
}

fn id_of(n: &NodeRow, mv: Mv) -> String {
    if mv.at_least(53) {
        n.uuid.clone()
    } else {
        n.id.to_string()
    }
}

async fn listing(
    api: Arc<ComputeApi>,
    mv: Mv,
    q: HashMap<String, String>,
    detail: bool,
) -> Result<Response, ApiError> {
    let mut all = nodes(&api).await?;
    if mv.at_least(53) {
        if let Some(p) = q.get("hypervisor_hostname_pattern") {
            all.retain(|(n, _)| n.hypervisor_hostname.contains(p.as_str()));
            if all.is_empty() {
                return Err(nova(
                    StatusCode::NOT_FOUND,
                    format!("No hypervisor matching '{p}' could be found."),
                ));
            }
        }
    }
    let limit = if mv.at_least(33) {
        match q.get("limit") {
            Some(l) => Some(l.parse::<usize>().map_err(|_| {
                nova(
                    StatusCode::BAD_REQUEST,
                    format!("Invalid input for query parameters limit. Value: {l}."),
                )
            })?),
            None => None,
        }
    } else {
        None
    };
    if mv.at_least(33) {
        if let Some(m) = q.get("marker") {
            let pos = all
                .iter()
                .position(|(n, _)| id_of(n, mv) == *m)
                .ok_or_else(|| nova(StatusCode::BAD_REQUEST, format!("marker [{m}] not found")))?;
            all.drain(..=pos);
        }
    }
    let more = limit.is_some_and(|l| all.len() > l);
    if let Some(l) = limit {
        all.truncate(l);
    }
    let items: Vec<Value> = all
        .iter()
        .map(|(n, s)| view(n, s.as_ref(), &api, mv, detail))
        .collect();
    let mut body = json!({ "hypervisors": items });
    if more {
        if let Some((n, _)) = all.last() {
            let path = if detail {
                "os-hypervisors/detail"
            } else {
                "os-hypervisors"
            };
            body["hypervisors_links"] = json!([{"rel": "next",
                "href": format!("/v2.1/{path}?limit={}&marker={}", limit.unwrap_or(0), id_of(n, mv))}]);
        }
    }
    Ok(axum::Json(body).into_response())
}

pub(crate) async fn list(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-hypervisors:list")?;
    listing(api, mv, q, false).await
}

pub(crate) async fn detail(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-hypervisors:list-detail")?;
    listing(api, mv, q, true).await
}

pub(crate) async fn show(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin(&ctx, "os_compute_api:os-hypervisors:show")?;
    let valid = if mv.at_least(53) {
        uuid_like(&id)
    } else {
        id.parse::<i64>().is_ok()
    };
    if !valid {
        return Err(nova(StatusCode::BAD_REQUEST, format!("Invalid uuid {id}")));
    }
    let all = nodes(&api).await?;
    let (n, s) = all.iter().find(|(n, _)| id_of(n, mv) == id).ok_or_else(|| {
        nova(
            StatusCode::NOT_FOUND,
            format!("Hypervisor with ID {id} could not be found."),
        )
    })?;
    Ok(axum::Json(json!({ "hypervisor": view(n, s.as_ref(), &api, mv, true) })).into_response())
}

pub(crate) fn uuid_like(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}
