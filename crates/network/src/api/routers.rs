//! `/v2.0/routers`: routers with an external gateway (SNAT) and interfaces on subnets, as ports the service
//! owns (`network:router_gateway`, `network:router_interface`).

use super::subnets::Addressing;
use super::{
    body_object, networks, only, opt_bool, opt_string, owner_of_new, owns, ports, query_pairs, quotas,
    render_list, render_one, with_retries, writer, S,
};
use crate::error::{NetError, Result};
use crate::ipam::{self, Cidr};
use crate::store::{self, Doc, Tx};
use crate::NetworkService;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Map, Value};
use tessera_http::auth::Caller;
use tessera_types::RequestContext;

const CREATE: &[&str] = &[
    "name",
    "admin_state_up",
    "external_gateway_info",
    "description",
    "distributed",
    "ha",
    "availability_zone_hints",
    "tenant_id",
    "project_id",
    "flavor_id",
    "enable_ndp_proxy",
];
const UPDATE: &[&str] = &[
    "name",
    "admin_state_up",
    "external_gateway_info",
    "description",
    "routes",
    "distributed",
    "ha",
];
pub(crate) const INTERFACE: &str = "network:router_interface";
pub(crate) const GATEWAY: &str = "network:router_gateway";

fn view(ctx: &RequestContext, mut d: Doc) -> Doc {
    if !ctx.is_admin() {
        d.remove("distributed");
        d.remove("ha");
        // Who may not set SNAT does see it; the external fixed IPs are shown to the owner as upstream does.
    }
    d
}

pub(crate) async fn list(State(svc): S, Caller(ctx): Caller, RawQuery(raw): RawQuery) -> Result<Response> {
    let (w, b) = super::own_rows(&ctx);
    let docs = store::select(&svc.db, svc.db.pool(), "routers", &w, &b)
        .await?
        .into_iter()
        .map(|d| view(&ctx, d))
        .collect();
    render_list(&svc, "/v2.0/routers", "routers", docs, &query_pairs(&raw))
}

pub(crate) async fn get_visible<'c, E>(
    svc: &NetworkService,
    e: E,
    ctx: &RequestContext,
    id: &str,
) -> Result<Doc>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    match store::get(&svc.db, e, "routers", id).await? {
        Some(r) if owns(ctx, &r) => Ok(r),
        _ => Err(NetError::not_found(
            "RouterNotFound",
            format!("Router {id} could not be found"),
        )),
    }
}

pub(crate) async fn show(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let r = get_visible(&svc, svc.db.pool(), &ctx, &id).await?;
    Ok(render_one(
        "router",
        view(&ctx, r),
        &query_pairs(&raw),
        StatusCode::OK,
    ))
}

/// Check and apply `external_gateway_info` to router `r` in `tx`: the old gateway port goes, a new one is
/// made on the external network.
async fn set_gateway(
    svc: &NetworkService,
    tx: &mut Tx,
    ctx: &RequestContext,
    r: &mut Doc,
    info: &Value,
) -> Result<()> {
    let id = store::text(r, "id").to_string();
    let old = r.get("external_gateway_info").cloned().unwrap_or(Value::Null);
    let new_net = match info {
        Value::Null => None,
        Value::Object(m) if m.is_empty() => None,
        Value::Object(m) => {
            if let Some(k) = m.keys().find(|k| {
                !["network_id", "enable_snat", "external_fixed_ips", "qos_policy_id"].contains(&k.as_str())
            }) {
                return Err(NetError::bad_request(format!("Unrecognized attribute(s) '{k}'")));
            }
            Some(
                m.get("network_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| NetError::invalid_input("external_gateway_info needs a network_id"))?
                    .to_string(),
            )
        }
        v => return Err(NetError::invalid_input(format!("'{v}' is not a dictionary"))),
    };
    if !ctx.is_admin() {
        if info.get("enable_snat").is_some_and(|v| v != &json!(true)) {
            return Err(NetError::policy(
                "rule:create_router:external_gateway_info:enable_snat",
            ));
        }
        if info.get("external_fixed_ips").is_some() {
            return Err(NetError::policy(
                "rule:create_router:external_gateway_info:external_fixed_ips",
            ));
        }
    }
    let old_net = old.get("network_id").and_then(Value::as_str).map(str::to_string);
    // Same network, no new addresses asked: only SNAT may change.
    if old_net.is_some() && old_net == new_net && info.get("external_fixed_ips").is_none() {
        let mut g = old.as_object().cloned().unwrap_or_default();
        if let Some(s) = info.get("enable_snat") {
            g.insert("enable_snat".into(), json!(super::to_bool(s).unwrap_or(true)));
        }
        r.insert("external_gateway_info".into(), Value::Object(g));
        return Ok(());
    }
    if old_net.is_some() {
        let fips = store::count(&svc.db, &mut **tx, "floatingips", "router_id = ?", &[&id]).await?;
        if fips > 0 {
            return Err(NetError::conflict(
                "RouterExternalGatewayInUseByFloatingIp",
                format!("Gateway cannot be updated for router {id}, since a gateway to external network {} is required by one or more floating IPs.", old_net.unwrap_or_default()),
            ));
        }
        let gw_ports = store::select(
            &svc.db,
            &mut **tx,
            "ports",
            "device_id = ? AND device_owner = ?",
            &[id.clone(), GATEWAY.into()],
        )
        .await?;
        for p in gw_ports {
            ports::remove_port(svc, tx, store::text(&p, "id")).await?;
        }
    }
    let Some(net_id) = new_net else {
        r.insert("external_gateway_info".into(), Value::Null);
        return Ok(());
    };
    let net = networks::get_visible(svc, &mut **tx, ctx, &net_id).await?;
    if net.get("router:external") != Some(&Value::Bool(true)) {
        return Err(NetError::bad(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("Bad router request: Network {net_id} is not an external network."),
        ));
    }
    let wanted = match info.get("external_fixed_ips") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|f| {
                    (
                        f.get("subnet_id").and_then(Value::as_str).map(str::to_string),
                        f.get("ip_address").and_then(Value::as_str).map(str::to_string),
                    )
                })
                .collect(),
        ),
        Some(v) => return Err(NetError::invalid_input(format!("'{v}' is not a list"))),
    };
    // The gateway port belongs to no project, as in Neutron.
    let port = ports::insert_service_port(svc, tx, &net_id, "", &id, GATEWAY, wanted).await?;
    let snat = info.get("enable_snat").and_then(super::to_bool).unwrap_or(true);
    r.insert(
        "external_gateway_info".into(),
        json!({"network_id": net_id, "enable_snat": snat, "external_fixed_ips": port["fixed_ips"].clone()}),
    );
    Ok(())
}

pub(crate) async fn create(State(svc): S, Caller(ctx): Caller, body: Bytes) -> Result<Response> {
    writer(&ctx, "rule:create_router")?;
    let m = body_object(&body, "router")?;
    only(&m, CREATE)?;
    if !ctx.is_admin() {
        for k in ["distributed", "ha"] {
            if m.get(k).is_some_and(|v| v != &json!(false)) {
                return Err(NetError::policy(&format!("rule:create_router:{k}")));
            }
        }
    }
    let owner = owner_of_new(&ctx, &m, "create_router:tenant_id")?;
    let name = opt_string(&m, "name", 255)?.unwrap_or_default();
    let description = opt_string(&m, "description", 255)?.unwrap_or_default();
    let admin_state_up = opt_bool(&m, "admin_state_up")?.unwrap_or(true);
    let id = tessera_types::new_uuid();
    let doc = with_retries(|| {
        let (svc, ctx, m, id, owner, name, description) = (
            svc.clone(),
            ctx.clone(),
            m.clone(),
            id.clone(),
            owner.clone(),
            name.clone(),
            description.clone(),
        );
        async move {
            let mut tx = svc.db.begin_write().await?;
            quotas::check(&svc, &mut tx, &owner, "router", 1).await?;
            let d = insert(
                &svc,
                &mut tx,
                &ctx,
                &id,
                &owner,
                &name,
                &description,
                admin_state_up,
                &m,
            )
            .await?;
            tx.commit().await?;
            Ok(d)
        }
    })
    .await?;
    Ok(render_one("router", view(&ctx, doc), &[], StatusCode::CREATED))
}

/// Insert a router in `tx` (with its gateway when `m` asks for one).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert(
    svc: &NetworkService,
    tx: &mut Tx,
    ctx: &RequestContext,
    id: &str,
    owner: &str,
    name: &str,
    description: &str,
    admin_state_up: bool,
    m: &Map<String, Value>,
) -> Result<Doc> {
    let mut d = store::new_doc(id, owner);
    for (k, v) in [
        ("name", json!(name)),
        ("description", json!(description)),
        ("admin_state_up", json!(admin_state_up)),
        ("status", json!("ACTIVE")),
        ("external_gateway_info", Value::Null),
        ("routes", json!([])),
        ("distributed", json!(false)),
        ("ha", json!(false)),
        (
            "availability_zone_hints",
            m.get("availability_zone_hints").cloned().unwrap_or(json!([])),
        ),
        ("availability_zones", json!(["nova"])),
        ("flavor_id", Value::Null),
        ("enable_ndp_proxy", json!(false)),
    ] {
        d.insert(k.into(), v);
    }
    if let Some(info) = m.get("external_gateway_info") {
        set_gateway(svc, tx, ctx, &mut d, info).await?;
    }
    sqlx::query(&svc.db.sql(
        "INSERT INTO routers (id, project_id, name, gateway_network_id, body, created_at) VALUES (?, ?, ?, ?, ?, ?)",
    ))
    .bind(id)
    .bind(owner)
    .bind(name)
    .bind(d["external_gateway_info"]["network_id"].as_str().map(str::to_string))
    .bind(serde_json::to_string(&d)?)
    .bind(tessera_types::now_epoch_micros())
    .execute(&mut **tx)
    .await?;
    Ok(d)
}

/// Subnets the router has interfaces on: (port id, subnet addressing).
async fn interfaces(svc: &NetworkService, tx: &mut Tx, router: &str) -> Result<Vec<(String, Addressing)>> {
    let ports = store::select(
        &svc.db,
        &mut **tx,
        "ports",
        "device_id = ? AND device_owner = ?",
        &[router.to_string(), INTERFACE.into()],
    )
    .await?;
    let mut out = Vec::new();
    for p in ports {
        for f in p["fixed_ips"].as_array().cloned().unwrap_or_default() {
            if let Some(s) = store::get(
                &svc.db,
                &mut **tx,
                "subnets",
                f["subnet_id"].as_str().unwrap_or(""),
            )
            .await?
            {
                out.push((store::text(&p, "id").to_string(), Addressing::of(&s)?));
            }
        }
    }
    Ok(out)
}

fn parse_routes(v: &Value, connected: &[Addressing]) -> Result<Value> {
    let arr = v
        .as_array()
        .ok_or_else(|| NetError::invalid_input(format!("'{v}' is not a list")))?;
    let mut out = Vec::new();
    for r in arr {
        let (Some(d), Some(n)) = (
            r.get("destination").and_then(Value::as_str),
            r.get("nexthop").and_then(Value::as_str),
        ) else {
            return Err(NetError::invalid_input(format!(
                "Invalid data format for hostroute: '{r}'"
            )));
        };
        let dest = Cidr::parse(d).map_err(NetError::invalid_input)?;
        let (v, hop) = ipam::parse_ip(n)
            .ok_or_else(|| NetError::invalid_input(format!("'{n}' is not a valid IP address")))?;
        if !connected.iter().any(|a| a.cidr.contains(v, hop)) {
            return Err(NetError::bad(
                StatusCode::BAD_REQUEST,
                "InvalidRoutes",
                format!("Invalid format for routes: [{r}], the nexthop is not connected with router"),
            ));
        }
        let route = json!({"destination": dest.to_string(), "nexthop": ipam::format_ip(v, hop)});
        if !out.contains(&route) {
            out.push(route);
        }
    }
    Ok(json!(out))
}

pub(crate) async fn update(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let m = body_object(&body, "router")?;
    only(&m, UPDATE)?;
    get_visible(&svc, svc.db.pool(), &ctx, &id).await?;
    writer(&ctx, "rule:update_router")?;
    let doc = with_retries(|| {
        let (svc, ctx, m, id) = (svc.clone(), ctx.clone(), m.clone(), id.clone());
        async move {
            let mut tx = svc.db.begin_write().await?;
            let mut r = get_visible(&svc, &mut *tx, &ctx, &id).await?;
            if let Some(v) = opt_string(&m, "name", 255)? {
                r.insert("name".into(), json!(v));
            }
            if let Some(v) = opt_string(&m, "description", 255)? {
                r.insert("description".into(), json!(v));
            }
            if let Some(v) = opt_bool(&m, "admin_state_up")? {
                r.insert("admin_state_up".into(), json!(v));
            }
            if let Some(info) = m.get("external_gateway_info") {
                set_gateway(&svc, &mut tx, &ctx, &mut r, info).await?;
            }
            if let Some(routes) = m.get("routes") {
                let mut connected: Vec<Addressing> = interfaces(&svc, &mut tx, &id)
                    .await?
                    .into_iter()
                    .map(|(_, a)| a)
                    .collect();
                for f in r["external_gateway_info"]["external_fixed_ips"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    if let Some(s) = store::get(
                        &svc.db,
                        &mut *tx,
                        "subnets",
                        f["subnet_id"].as_str().unwrap_or(""),
                    )
                    .await?
                    {
                        connected.push(Addressing::of(&s)?);
                    }
                }
                let routes = if routes.is_null() {
                    json!([])
                } else {
                    parse_routes(routes, &connected)?
                };
                r.insert("routes".into(), routes);
            }
            store::touch(&mut r);
            sqlx::query(
                &svc.db
                    .sql("UPDATE routers SET name = ?, gateway_network_id = ?, body = ? WHERE id = ?"),
            )
            .bind(store::text(&r, "name"))
            .bind(
                r["external_gateway_info"]["network_id"]
                    .as_str()
                    .map(str::to_string),
            )
            .bind(serde_json::to_string(&r)?)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(r)
        }
    })
    .await?;
    Ok(render_one("router", view(&ctx, doc), &[], StatusCode::OK))
}

pub(crate) async fn delete(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    get_visible(&svc, svc.db.pool(), &ctx, &id).await?;
    writer(&ctx, "rule:delete_router")?;
    let mut tx = svc.db.begin_write().await?;
    if store::count(
        &svc.db,
        &mut *tx,
        "ports",
        "device_id = ? AND device_owner = ?",
        &[&id, INTERFACE],
    )
    .await?
        > 0
    {
        return Err(NetError::conflict(
            "RouterInUse",
            format!("Router {id} still has ports"),
        ));
    }
    if store::count(&svc.db, &mut *tx, "floatingips", "router_id = ?", &[&id]).await? > 0 {
        return Err(NetError::conflict(
            "RouterInUse",
            format!("Router {id} still has floating IPs associated"),
        ));
    }
    for p in store::select(
        &svc.db,
        &mut *tx,
        "ports",
        "device_id = ? AND device_owner = ?",
        &[id.clone(), GATEWAY.into()],
    )
    .await?
    {
        ports::remove_port(&svc, &mut tx, store::text(&p, "id")).await?;
    }
    store::delete(&svc.db, &mut tx, "routers", &id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn interface_body(r: &Doc, port: &Doc) -> Value {
    let subnets: Vec<Value> = port["fixed_ips"]
        .as_array()
        .map(|a| a.iter().map(|f| f["subnet_id"].clone()).collect())
        .unwrap_or_default();
    json!({
        "id": r["id"], "tenant_id": r["project_id"], "project_id": r["project_id"],
        "port_id": port["id"], "network_id": port["network_id"],
        "subnet_id": subnets.first().cloned().unwrap_or(Value::Null), "subnet_ids": subnets,
    })
}

fn interface_request(body: &Bytes) -> Result<(Option<String>, Option<String>)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| NetError::bad_request(format!("Malformed request body: {e}")))?;
    let m: Map<String, Value> = v.as_object().cloned().unwrap_or_default();
    let subnet = m.get("subnet_id").and_then(Value::as_str).map(str::to_string);
    let port = m.get("port_id").and_then(Value::as_str).map(str::to_string);
    match (&subnet, &port) {
        (Some(_), Some(_)) => Err(NetError::bad(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Bad router request: Cannot specify both subnet-id and port-id.",
        )),
        (None, None) => Err(NetError::bad(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Bad router request: Either subnet_id or port_id must be specified.",
        )),
        _ => Ok((subnet, port)),
    }
}

fn overlap_error(new: &Addressing, old: &Addressing) -> NetError {
    NetError::bad(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        format!(
            "Bad router request: Cidr {} of subnet {} overlaps with cidr {} of subnet {}.",
            new.cidr, new.id, old.cidr, old.id
        ),
    )
}

pub(crate) async fn add_interface(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let (subnet_id, port_id) = interface_request(&body)?;
    get_visible(&svc, svc.db.pool(), &ctx, &id).await?;
    writer(&ctx, "rule:add_router_interface")?;
    let out = with_retries(|| {
        let (svc, ctx, id, subnet_id, port_id) = (svc.clone(), ctx.clone(), id.clone(), subnet_id.clone(), port_id.clone());
        async move {
            let mut tx = svc.db.begin_write().await?;
            let r = get_visible(&svc, &mut *tx, &ctx, &id).await?;
            let existing = interfaces(&svc, &mut tx, &id).await?;
            let port = if let Some(sid) = subnet_id {
                let s = store::get(&svc.db, &mut *tx, "subnets", &sid)
                    .await?
                    .ok_or_else(|| NetError::subnet_not_found(&sid))?;
                let net = networks::get_visible(&svc, &mut *tx, &ctx, store::text(&s, "network_id")).await;
                if net.is_err() || !(owns(&ctx, &s) || net.as_ref().is_ok_and(|n| owns(&ctx, n) || n["shared"] == json!(true))) {
                    return Err(NetError::subnet_not_found(&sid));
                }
                let a = Addressing::of(&s)?;
                let Some(gw) = a.gateway else {
                    return Err(NetError::bad(StatusCode::BAD_REQUEST, "BadRequest", format!("Bad router request: Subnet {sid} does not have a gateway IP.")));
                };
                if existing.iter().any(|(_, e)| e.id == a.id) {
                    return Err(NetError::bad(StatusCode::BAD_REQUEST, "BadRequest", format!("Bad router request: Router already has a port on subnet {sid}.")));
                }
                if let Some((_, e)) = existing.iter().find(|(_, e)| e.cidr.overlaps(&a.cidr)) {
                    return Err(overlap_error(&a, e));
                }
                let gw = ipam::format_ip(a.cidr.version, gw);
                ports::insert_service_port(&svc, &mut tx, &a.network_id, store::text(&r, "project_id"), &id, INTERFACE, Some(vec![(Some(sid.clone()), Some(gw))]))
                    .await?
            } else {
                let pid = port_id.unwrap_or_default();
                let mut p = store::get(&svc.db, &mut *tx, "ports", &pid)
                    .await?
                    .filter(|p| owns(&ctx, p))
                    .ok_or_else(|| NetError::port_not_found(&pid))?;
                if !store::text(&p, "device_id").is_empty() || !store::text(&p, "device_owner").is_empty() {
                    return Err(NetError::conflict("PortInUse", format!("Unable to complete operation on port {pid} for network {}. Port already has an attached device {}.", store::text(&p, "network_id"), store::text(&p, "device_id"))));
                }
                let ips = p["fixed_ips"].as_array().cloned().unwrap_or_default();
                if ips.is_empty() {
                    return Err(NetError::bad(StatusCode::BAD_REQUEST, "BadRequest", "Bad router request: Router port must have at least one fixed IP."));
                }
                for f in &ips {
                    if let Some(s) = store::get(&svc.db, &mut *tx, "subnets", f["subnet_id"].as_str().unwrap_or("")).await? {
                        let a = Addressing::of(&s)?;
                        if let Some((_, e)) = existing.iter().find(|(_, e)| e.cidr.overlaps(&a.cidr)) {
                            return Err(overlap_error(&a, e));
                        }
                    }
                }
                p.insert("device_id".into(), json!(id));
                p.insert("device_owner".into(), json!(INTERFACE));
                store::touch(&mut p);
                sqlx::query(&svc.db.sql("UPDATE ports SET device_id = ?, device_owner = ?, body = ? WHERE id = ?"))
                    .bind(&id)
                    .bind(INTERFACE)
                    .bind(serde_json::to_string(&p)?)
                    .bind(&pid)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&svc.db.sql("DELETE FROM port_security_groups WHERE port_id = ?")).bind(&pid).execute(&mut *tx).await?;
                p
            };
            tx.commit().await?;
            Ok(interface_body(&r, &port))
        }
    })
    .await?;
    Ok(axum::Json(out).into_response())
}

pub(crate) async fn remove_interface(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let (subnet_id, port_id) = interface_request(&body)?;
    let r = get_visible(&svc, svc.db.pool(), &ctx, &id).await?;
    writer(&ctx, "rule:remove_router_interface")?;
    let mut tx = svc.db.begin_write().await?;
    let existing = interfaces(&svc, &mut tx, &id).await?;
    let found = existing.iter().find(|(p, a)| match (&subnet_id, &port_id) {
        (_, Some(pid)) => p == pid,
        (Some(sid), None) => &a.id == sid,
        _ => false,
    });
    let Some((pid, a)) = found.cloned() else {
        return Err(match (subnet_id, port_id) {
            (_, Some(pid)) => NetError::not_found(
                "RouterInterfaceNotFound",
                format!("Router {id} does not have an interface with id {pid}"),
            ),
            (Some(sid), _) => NetError::not_found(
                "RouterInterfaceNotFoundForSubnet",
                format!("Router {id} has no interface on subnet {sid}"),
            ),
            _ => NetError::bad_request("Either subnet_id or port_id must be specified"),
        });
    };
    // Floating IPs reach their ports through this interface.
    let fips = store::count(
        &svc.db,
        &mut *tx,
        "floatingips",
        "router_id = ? AND port_id IN (SELECT port_id FROM ip_allocations WHERE subnet_id = ?)",
        &[&id, &a.id],
    )
    .await?;
    if fips > 0 {
        return Err(NetError::conflict(
            "RouterInterfaceInUseByFloatingIP",
            format!("Router interface for subnet {} on router {id} cannot be deleted, as it is required by one or more floating IPs.", a.id),
        ));
    }
    let port = store::get(&svc.db, &mut *tx, "ports", &pid)
        .await?
        .unwrap_or_default();
    ports::remove_port(&svc, &mut tx, &pid).await?;
    tx.commit().await?;
    Ok(axum::Json(interface_body(&r, &port)).into_response())
}

/// Routers that connect `subnet_id` to external network `ext_net`: the one a floating IP goes through.
pub(crate) async fn router_between(
    svc: &NetworkService,
    tx: &mut Tx,
    subnet_id: &str,
    ext_net: &str,
) -> Result<Option<String>> {
    use sqlx::Row;
    let row = sqlx::query(&svc.db.sql(
        "SELECT r.id AS id FROM routers r JOIN ports p ON p.device_id = r.id AND p.device_owner = ? \
         JOIN ip_allocations a ON a.port_id = p.id WHERE a.subnet_id = ? AND r.gateway_network_id = ? ORDER BY r.created_at",
    ))
    .bind(INTERFACE)
    .bind(subnet_id)
    .bind(ext_net)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| r.try_get("id")).transpose()?)
}
