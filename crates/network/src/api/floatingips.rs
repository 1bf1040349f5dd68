//! `/v2.0/floatingips`: addresses of an external network (held by a `network:floatingip` port, as in
//! Neutron) that a router translates to a port's fixed address.

use super::{
    body_object, networks, only, opt_string, owner_of_new, owns, ports, query_pairs, quotas, render_list,
    render_one, routers, with_retries, writer, S,
};
use crate::error::{NetError, Result};
use crate::ipam;
use crate::store::{self, Doc, Tx};
use crate::NetworkService;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Value};
use tessera_http::auth::Caller;
use tessera_types::RequestContext;

const CREATE: &[&str] = &[
    "floating_network_id",
    "floating_ip_address",
    "subnet_id",
    "port_id",
    "fixed_ip_address",
    "description",
    "tenant_id",
    "project_id",
    "qos_policy_id",
    "dns_name",
    "dns_domain",
];
const UPDATE: &[&str] = &["port_id", "fixed_ip_address", "description", "qos_policy_id"];

pub(crate) async fn list(State(svc): S, Caller(ctx): Caller, RawQuery(raw): RawQuery) -> Result<Response> {
    let (w, b) = super::own_rows(&ctx);
    let docs = store::select(&svc.db, svc.db.pool(), "floatingips", &w, &b).await?;
    render_list(&svc, "/v2.0/floatingips", "floatingips", docs, &query_pairs(&raw))
}

async fn get_visible<'c, E>(svc: &NetworkService, e: E, ctx: &RequestContext, id: &str) -> Result<Doc>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    match store::get(&svc.db, e, "floatingips", id).await? {
        Some(f) if owns(ctx, &f) => Ok(f),
        _ => Err(NetError::not_found(
            "FloatingIPNotFound",
            format!("Floating IP {id} could not be found"),
        )),
    }
}

pub(crate) async fn show(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let f = get_visible(&svc, svc.db.pool(), &ctx, &id).await?;
    Ok(render_one("floatingip", f, &query_pairs(&raw), StatusCode::OK))
}

/// Point floating IP `f` at `port_id` (and one of its fixed IPv4 addresses), or at nothing.
async fn associate(
    svc: &NetworkService,
    tx: &mut Tx,
    ctx: &RequestContext,
    f: &mut Doc,
    port_id: Option<&str>,
    fixed: Option<&str>,
) -> Result<()> {
    let Some(pid) = port_id else {
        for k in ["port_id", "fixed_ip_address", "router_id"] {
            f.insert(k.into(), Value::Null);
        }
        f.insert("port_details".into(), Value::Null);
        f.insert("status".into(), json!("DOWN"));
        return Ok(());
    };
    let port = store::get(&svc.db, &mut **tx, "ports", pid)
        .await?
        .filter(|p| owns(ctx, p))
        .ok_or_else(|| NetError::port_not_found(pid))?;
    let v4: Vec<(String, String)> = port["fixed_ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| {
                    Some((
                        x["subnet_id"].as_str()?.to_string(),
                        x["ip_address"].as_str()?.to_string(),
                    ))
                })
                .filter(|(_, ip)| ipam::parse_ip(ip).is_some_and(|(v, _)| v == 4))
                .collect()
        })
        .unwrap_or_default();
    let (subnet, ip) = match fixed {
        Some(want) => v4.iter().find(|(_, ip)| ip == want).cloned().ok_or_else(|| {
            NetError::bad(StatusCode::BAD_REQUEST, "BadRequest", format!("Bad floatingip request: Port {pid} does not have fixed ip {want}."))
        })?,
        None => match v4.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(NetError::bad(StatusCode::BAD_REQUEST, "BadRequest", format!("Bad floatingip request: Port {pid} does not have any IPv4 address.")))
            }
            _ => {
                return Err(NetError::bad(StatusCode::BAD_REQUEST, "BadRequest", format!("Bad floatingip request: Port {pid} has multiple fixed IPv4 addresses. Must provide a specific IPv4 address when assigning a floating IP.")))
            }
        },
    };
    let ext = store::text(f, "floating_network_id").to_string();
    let Some(router) = routers::router_between(svc, tx, &subnet, &ext).await? else {
        return Err(NetError::not_found(
            "ExternalGatewayForFloatingIPNotFound",
            format!("External network {ext} is not reachable from subnet {subnet}.  Therefore, cannot associate Port {pid} with a Floating IP."),
        ));
    };
    let fid = store::text(f, "id").to_string();
    let taken = store::select(
        &svc.db,
        &mut **tx,
        "floatingips",
        "port_id = ? AND fixed_ip_address = ? AND id <> ?",
        &[pid.to_string(), ip.clone(), fid],
    )
    .await?;
    if let Some(other) = taken.first() {
        return Err(NetError::conflict(
            "FloatingIPPortAlreadyAssociated",
            format!(
                "Cannot associate floating IP {} ({}) with port {pid} using fixed IP {ip}, as that fixed IP already has a floating IP on external network {ext}.",
                store::text(f, "floating_ip_address"), store::text(other, "id")
            ),
        ));
    }
    f.insert("port_id".into(), json!(pid));
    f.insert("fixed_ip_address".into(), json!(ip));
    f.insert("router_id".into(), json!(router));
    f.insert("status".into(), json!("ACTIVE"));
    f.insert(
        "port_details".into(),
        json!({
            "name": port["name"], "network_id": port["network_id"], "mac_address": port["mac_address"],
            "admin_state_up": port["admin_state_up"], "status": port["status"], "device_id": port["device_id"],
            "device_owner": port["device_owner"],
        }),
    );
    Ok(())
}

async fn write(svc: &NetworkService, tx: &mut Tx, f: &Doc) -> Result<()> {
    sqlx::query(&svc.db.sql(
        "UPDATE floatingips SET port_id = ?, fixed_ip_address = ?, router_id = ?, body = ? WHERE id = ?",
    ))
    .bind(f["port_id"].as_str().map(str::to_string))
    .bind(f["fixed_ip_address"].as_str().map(str::to_string))
    .bind(f["router_id"].as_str().map(str::to_string))
    .bind(serde_json::to_string(f)?)
    .bind(store::text(f, "id"))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn create(State(svc): S, Caller(ctx): Caller, body: Bytes) -> Result<Response> {
    writer(&ctx, "rule:create_floatingip")?;
    let m = body_object(&body, "floatingip")?;
    only(&m, CREATE)?;
    let net_id = match m.get("floating_network_id").and_then(Value::as_str) {
        Some(n) => n.to_string(),
        None => {
            return Err(NetError::bad_request(
                "Failed to parse request. Required attribute 'floating_network_id' not specified",
            ))
        }
    };
    if m.contains_key("floating_ip_address") && !ctx.is_admin() {
        return Err(NetError::policy("rule:create_floatingip:floating_ip_address"));
    }
    let owner = owner_of_new(&ctx, &m, "create_floatingip:tenant_id")?;
    let net = networks::get_visible(&svc, svc.db.pool(), &ctx, &net_id).await?;
    if net.get("router:external") != Some(&Value::Bool(true)) {
        return Err(NetError::bad(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("Bad floatingip request: Network {net_id} is not a valid external network."),
        ));
    }
    let description = opt_string(&m, "description", 255)?.unwrap_or_default();
    let id = tessera_types::new_uuid();
    let doc = with_retries(|| {
        let (svc, ctx, m, id, owner, net_id, description) =
            (svc.clone(), ctx.clone(), m.clone(), id.clone(), owner.clone(), net_id.clone(), description.clone());
        async move {
            let mut tx = svc.db.begin_write().await?;
            quotas::check(&svc, &mut tx, &owner, "floatingip", 1).await?;
            let subnet = m.get("subnet_id").and_then(Value::as_str).map(str::to_string);
            let addr = m.get("floating_ip_address").and_then(Value::as_str).map(str::to_string);
            let wanted = if subnet.is_some() || addr.is_some() {
                Some(vec![(subnet, addr)])
            } else {
                // One IPv4 address: the IPv6 subnets of the external network are not for floating IPs.
                let v4 = store::select(&svc.db, &mut *tx, "subnets", "network_id = ? AND ip_version = 4", std::slice::from_ref(&net_id)).await?;
                match v4.first() {
                    Some(s) => Some(vec![(Some(store::text(s, "id").to_string()), None)]),
                    None => {
                        return Err(NetError::bad(
                            StatusCode::BAD_REQUEST,
                            "BadRequest",
                            format!("Bad floatingip request: Network {net_id} does not contain any IPv4 subnet."),
                        ))
                    }
                }
            };
            let port = ports::insert_service_port(&svc, &mut tx, &net_id, "", &id, "network:floatingip", wanted).await?;
            let address = port["fixed_ips"][0]["ip_address"].as_str().unwrap_or_default().to_string();
            let mut f = store::new_doc(&id, &owner);
            for (k, v) in [
                ("floating_ip_address", json!(address)),
                ("floating_network_id", json!(net_id)),
                ("description", json!(description)),
                ("qos_policy_id", Value::Null),
                ("port_forwardings", json!([])),
            ] {
                f.insert(k.into(), v);
            }
            associate(&svc, &mut tx, &ctx, &mut f, None, None).await?;
            if let Some(pid) = m.get("port_id").and_then(Value::as_str) {
                associate(&svc, &mut tx, &ctx, &mut f, Some(pid), m.get("fixed_ip_address").and_then(Value::as_str)).await?;
            }
            sqlx::query(&svc.db.sql(
                "INSERT INTO floatingips (id, project_id, floating_network_id, floating_ip_address, body, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            ))
            .bind(&id)
            .bind(&owner)
            .bind(&net_id)
            .bind(&address)
            .bind(serde_json::to_string(&f)?)
            .bind(tessera_types::now_epoch_micros())
            .execute(&mut *tx)
            .await?;
            write(&svc, &mut tx, &f).await?;
            tx.commit().await?;
            Ok(f)
        }
    })
    .await?;
    tracing::info!(floatingip_id = %id, "floating IP created");
    tell(&svc, &[doc["port_id"].as_str()]).await;
    Ok(render_one("floatingip", doc, &[], StatusCode::CREATED))
}

/// The servers of these ports learn their floating IPs changed (`network-changed`).
async fn tell(svc: &NetworkService, ports: &[Option<&str>]) {
    for pid in ports.iter().flatten() {
        if let Ok(Some(p)) = store::get(&svc.db, svc.db.pool(), "ports", pid).await {
            svc.notify_port(&p, "network-changed");
        }
    }
}

pub(crate) async fn update(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let m = body_object(&body, "floatingip")?;
    only(&m, UPDATE)?;
    let before = get_visible(&svc, svc.db.pool(), &ctx, &id).await?;
    writer(&ctx, "rule:update_floatingip")?;
    let doc = with_retries(|| {
        let (svc, ctx, m, id) = (svc.clone(), ctx.clone(), m.clone(), id.clone());
        async move {
            let mut tx = svc.db.begin_write().await?;
            let mut f = get_visible(&svc, &mut *tx, &ctx, &id).await?;
            if let Some(v) = opt_string(&m, "description", 255)? {
                f.insert("description".into(), json!(v));
            }
            if m.contains_key("port_id") {
                let pid = m.get("port_id").and_then(Value::as_str).map(str::to_string);
                associate(
                    &svc,
                    &mut tx,
                    &ctx,
                    &mut f,
                    pid.as_deref(),
                    m.get("fixed_ip_address").and_then(Value::as_str),
                )
                .await?;
            }
            store::touch(&mut f);
            write(&svc, &mut tx, &f).await?;
            tx.commit().await?;
            Ok(f)
        }
    })
    .await?;
    if before["port_id"] != doc["port_id"] {
        tell(&svc, &[before["port_id"].as_str(), doc["port_id"].as_str()]).await;
    }
    Ok(render_one("floatingip", doc, &[], StatusCode::OK))
}

pub(crate) async fn delete(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    let before = get_visible(&svc, svc.db.pool(), &ctx, &id).await?;
    writer(&ctx, "rule:delete_floatingip")?;
    let mut tx = svc.db.begin_write().await?;
    for p in store::select(
        &svc.db,
        &mut *tx,
        "ports",
        "device_id = ? AND device_owner = 'network:floatingip'",
        std::slice::from_ref(&id),
    )
    .await?
    {
        ports::remove_port(&svc, &mut tx, store::text(&p, "id")).await?;
    }
    store::delete(&svc.db, &mut tx, "floatingips", &id).await?;
    tx.commit().await?;
    tell(&svc, &[before["port_id"].as_str()]).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A port going away leaves its floating IPs unassociated (as Neutron does on port delete).
pub(crate) async fn disassociate_port(svc: &NetworkService, tx: &mut Tx, port_id: &str) -> Result<()> {
    for mut f in store::select(
        &svc.db,
        &mut **tx,
        "floatingips",
        "port_id = ?",
        &[port_id.to_string()],
    )
    .await?
    {
        for k in ["port_id", "fixed_ip_address", "router_id", "port_details"] {
            f.insert(k.into(), Value::Null);
        }
        f.insert("status".into(), json!("DOWN"));
        store::touch(&mut f);
        write(svc, tx, &f).await?;
    }
    Ok(())
}
