//! `/v2.0/subnets`.

use super::{
    body_object, networks, only, opt_bool, opt_string, owner_of_new, owns, query_pairs, quotas, read_only,
    render_list, render_one, writer, S,
};
use crate::error::{NetError, Result};
use crate::ipam::{self, Cidr};
use crate::store::{self, Doc};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Map, Value};
use tessera_http::auth::Caller;
use tessera_types::RequestContext;

const CREATE: &[&str] = &[
    "name",
    "network_id",
    "tenant_id",
    "project_id",
    "ip_version",
    "cidr",
    "gateway_ip",
    "allocation_pools",
    "enable_dhcp",
    "dns_nameservers",
    "host_routes",
    "ipv6_ra_mode",
    "ipv6_address_mode",
    "description",
    "subnetpool_id",
    "prefixlen",
    "use_default_subnetpool",
    "segment_id",
    "service_types",
    "dns_publish_fixed_ip",
];
const UPDATE: &[&str] = &[
    "name",
    "gateway_ip",
    "allocation_pools",
    "enable_dhcp",
    "dns_nameservers",
    "host_routes",
    "description",
    "service_types",
    "segment_id",
];
const IPV6_MODES: &[&str] = &["slaac", "dhcpv6-stateful", "dhcpv6-stateless"];

pub(crate) fn visible_sql(ctx: &RequestContext) -> (String, Vec<String>) {
    if ctx.is_admin() {
        ("1 = 1".into(), Vec::new())
    } else {
        (
            "(project_id = ? OR network_id IN (SELECT id FROM networks WHERE shared = 1))".into(),
            vec![ctx.project_id().unwrap_or("").to_string()],
        )
    }
}

/// A subnet's parsed addressing.
#[derive(Debug, Clone)]
pub struct Addressing {
    pub id: String,
    pub network_id: String,
    pub cidr: Cidr,
    pub gateway: Option<u128>,
    pub pools: Vec<(u128, u128)>,
    /// IPv6 addresses come from the port's MAC (SLAAC and DHCPv6-stateless subnets).
    pub slaac: bool,
}

impl Addressing {
    pub fn of(d: &Doc) -> Result<Self> {
        let cidr = Cidr::parse(store::text(d, "cidr")).map_err(NetError::invalid_input)?;
        let gateway = d
            .get("gateway_ip")
            .and_then(Value::as_str)
            .and_then(ipam::parse_ip)
            .map(|(_, a)| a);
        let pools = d
            .get("allocation_pools")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        let s = ipam::parse_ip(p["start"].as_str()?)?.1;
                        let e = ipam::parse_ip(p["end"].as_str()?)?.1;
                        Some((s, e))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let slaac = matches!(
            d.get("ipv6_address_mode").and_then(Value::as_str),
            Some("slaac") | Some("dhcpv6-stateless")
        );
        Ok(Self {
            slaac,
            id: store::text(d, "id").to_string(),
            network_id: store::text(d, "network_id").to_string(),
            cidr,
            gateway,
            pools,
        })
    }
}

pub(crate) async fn list(State(svc): S, Caller(ctx): Caller, RawQuery(raw): RawQuery) -> Result<Response> {
    let pairs = query_pairs(&raw);
    let (w, b) = visible_sql(&ctx);
    let docs = store::select(&svc.db, svc.db.pool(), "subnets", &w, &b).await?;
    render_list(&svc, "/v2.0/subnets", "subnets", docs, &pairs)
}

async fn get_visible(svc: &crate::NetworkService, ctx: &RequestContext, id: &str) -> Result<Doc> {
    let s = store::get(&svc.db, svc.db.pool(), "subnets", id)
        .await?
        .ok_or_else(|| NetError::subnet_not_found(id))?;
    if owns(ctx, &s) {
        return Ok(s);
    }
    // Others' subnets show through a shared network (an external network's subnets stay its owner's).
    match store::get(&svc.db, svc.db.pool(), "networks", store::text(&s, "network_id")).await? {
        Some(n) if owns(ctx, &n) || n.get("shared") == Some(&Value::Bool(true)) => Ok(s),
        _ => Err(NetError::subnet_not_found(id)),
    }
}

pub(crate) async fn show(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let s = get_visible(&svc, &ctx, &id).await?;
    Ok(render_one("subnet", s, &query_pairs(&raw), StatusCode::OK))
}

fn ip_of(version: u8, v: &Value, what: &str) -> Result<u128> {
    let s = v
        .as_str()
        .ok_or_else(|| NetError::invalid_input(format!("'{v}' is not a valid IP address")))?;
    match ipam::parse_ip(s) {
        Some((ver, a)) if ver == version => Ok(a),
        Some(_) => Err(NetError::invalid_input(format!(
            "{what} '{s}' is not an IPv{version} address"
        ))),
        None => Err(NetError::invalid_input(format!(
            "'{s}' is not a valid IP address"
        ))),
    }
}

fn pools_value(pools: &[(u128, u128)], version: u8) -> Value {
    json!(pools
        .iter()
        .map(|(s, e)| json!({"start": ipam::format_ip(version, *s), "end": ipam::format_ip(version, *e)}))
        .collect::<Vec<_>>())
}

fn parse_pools(cidr: &Cidr, v: &Value) -> Result<Vec<(u128, u128)>> {
    let arr = v
        .as_array()
        .ok_or_else(|| NetError::invalid_input(format!("Invalid data format for IP pool: '{v}'")))?;
    let mut pools = Vec::new();
    for p in arr {
        let (Some(s), Some(e)) = (p.get("start"), p.get("end")) else {
            return Err(NetError::invalid_input(format!(
                "Invalid data format for IP pool: '{p}'"
            )));
        };
        let (s, e) = (ip_of(cidr.version, s, "start")?, ip_of(cidr.version, e, "end")?);
        if s > e {
            return Err(NetError::bad(
                StatusCode::BAD_REQUEST,
                "InvalidAllocationPool",
                format!(
                    "The allocation pool {}-{} is not valid.",
                    ipam::format_ip(cidr.version, s),
                    ipam::format_ip(cidr.version, e)
                ),
            ));
        }
        let usable = cidr.usable().unwrap_or((cidr.first(), cidr.last()));
        if s < usable.0 || e > usable.1 {
            return Err(NetError::bad(
                StatusCode::BAD_REQUEST,
                "OutOfBoundsAllocationPool",
                format!(
                    "The allocation pool {}-{} spans beyond the subnet cidr {cidr}.",
                    ipam::format_ip(cidr.version, s),
                    ipam::format_ip(cidr.version, e)
                ),
            ));
        }
        pools.push((s, e));
    }
    pools.sort_unstable();
    for w in pools.windows(2) {
        if w[1].0 <= w[0].1 {
            return Err(NetError::bad(
                StatusCode::BAD_REQUEST,
                "OverlappingAllocationPools",
                format!(
                    "Found overlapping allocation pools: {}-{} and {}-{} for subnet {cidr}.",
                    ipam::format_ip(cidr.version, w[0].0),
                    ipam::format_ip(cidr.version, w[0].1),
                    ipam::format_ip(cidr.version, w[1].0),
                    ipam::format_ip(cidr.version, w[1].1)
                ),
            ));
        }
    }
    Ok(pools)
}

fn check_gateway(cidr: &Cidr, gateway: Option<u128>, pools: &[(u128, u128)]) -> Result<()> {
    let Some(g) = gateway else { return Ok(()) };
    if cidr.contains(cidr.version, g)
        && cidr.size() > 2
        && (g == cidr.first() || (cidr.version == 4 && g == cidr.last()))
    {
        return Err(NetError::invalid_input(format!(
            "Gateway is not valid on subnet: {} is the {} address of {cidr}",
            ipam::format_ip(cidr.version, g),
            if g == cidr.first() { "network" } else { "broadcast" }
        )));
    }
    if let Some((s, e)) = pools.iter().find(|(s, e)| g >= *s && g <= *e) {
        return Err(NetError::conflict(
            "GatewayConflictWithAllocationPools",
            format!(
                "Gateway ip {} conflicts with allocation pool {}-{}.",
                ipam::format_ip(cidr.version, g),
                ipam::format_ip(cidr.version, *s),
                ipam::format_ip(cidr.version, *e)
            ),
        ));
    }
    Ok(())
}

fn nameservers(v: &Value) -> Result<Value> {
    let arr = v
        .as_array()
        .ok_or_else(|| NetError::invalid_input(format!("'{v}' is not a list")))?;
    let mut out: Vec<String> = Vec::new();
    for s in arr {
        let n = s
            .as_str()
            .and_then(ipam::normalize_ip)
            .ok_or_else(|| NetError::invalid_input(format!("'{s}' is not a valid nameserver")))?;
        if out.contains(&n) {
            return Err(NetError::invalid_input(format!("Duplicate nameserver '{n}'")));
        }
        out.push(n);
    }
    Ok(json!(out))
}

fn host_routes(cidr: &Cidr, v: &Value) -> Result<Value> {
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
        let hop = ip_of(cidr.version, &json!(n), "nexthop")?;
        if dest.version != cidr.version {
            return Err(NetError::invalid_input(format!(
                "Invalid route {r}: version mismatch"
            )));
        }
        let route = json!({"destination": dest.to_string(), "nexthop": ipam::format_ip(cidr.version, hop)});
        if out.contains(&route) {
            return Err(NetError::invalid_input(format!("Duplicate hostroute '{d}'")));
        }
        out.push(route);
    }
    Ok(json!(out))
}

fn ipv6_mode(m: &Map<String, Value>, key: &str, version: u8) -> Result<Value> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::String(s)) if IPV6_MODES.contains(&s.as_str()) => {
            if version != 6 {
                return Err(NetError::invalid_input(format!(
                    "{key} is not valid when ip_version is 4"
                )));
            }
            Ok(json!(s))
        }
        Some(v) => Err(NetError::invalid_input(format!("'{v}' is not in {IPV6_MODES:?}"))),
    }
}

pub(crate) async fn create(State(svc): S, Caller(ctx): Caller, body: Bytes) -> Result<Response> {
    let (s, c) = (svc.clone(), ctx.clone());
    super::bulk_create(
        &body,
        "subnet",
        "subnets",
        move |m| create_one(s.clone(), c.clone(), m),
        |id| {
            let svc = svc.clone();
            async move { super::undo(&svc, "DELETE FROM subnets WHERE id = ?", &id).await }
        },
    )
    .await
}

async fn create_one(
    svc: std::sync::Arc<crate::NetworkService>,
    ctx: std::sync::Arc<RequestContext>,
    m: Map<String, Value>,
) -> Result<Doc> {
    writer(&ctx, "rule:create_subnet")?;
    only(&m, CREATE)?;
    for k in ["subnetpool_id", "prefixlen", "use_default_subnetpool"] {
        if m.get(k).is_some_and(|v| !v.is_null() && v != &json!(false)) {
            return Err(NetError::bad(
                StatusCode::BAD_REQUEST,
                "InvalidInput",
                format!("Invalid input for operation: {k} is not supported (no subnet pools)."),
            ));
        }
    }
    let network_id = match m.get("network_id").and_then(Value::as_str) {
        Some(n) => n.to_string(),
        None => {
            return Err(NetError::bad_request(
                "Failed to parse request. Required attribute 'network_id' not specified",
            ))
        }
    };
    let version = match m
        .get("ip_version")
        .and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
    {
        Some(4) => 4u8,
        Some(6) => 6u8,
        Some(v) => return Err(NetError::invalid_input(format!("{v} is not in [4, 6]"))),
        None => {
            return Err(NetError::bad_request(
                "Failed to parse request. Required attribute 'ip_version' not specified",
            ))
        }
    };
    let cidr_s = match m.get("cidr").and_then(Value::as_str) {
        Some(c) => c,
        None => {
            return Err(NetError::bad_request(
                "Failed to parse request. Required attribute 'cidr' not specified",
            ))
        }
    };
    let cidr = Cidr::parse(cidr_s).map_err(NetError::invalid_input)?;
    if cidr.version != version {
        return Err(NetError::invalid_input("Cidr and IP version mismatch"));
    }
    if (version == 4 && cidr.prefix == 32 || version == 6 && cidr.prefix == 128) || cidr.prefix == 0 {
        return Err(NetError::invalid_input(format!(
            "{cidr} is not a usable subnet CIDR"
        )));
    }
    let gateway = match m.get("gateway_ip") {
        None => cidr.default_gateway(),
        Some(Value::Null) => None,
        Some(v) => Some(ip_of(version, v, "gateway_ip")?),
    };
    let pools = match m.get("allocation_pools") {
        None | Some(Value::Null) => cidr.default_pools(gateway),
        Some(v) => parse_pools(&cidr, v)?,
    };
    check_gateway(&cidr, gateway, &pools)?;
    let dns = match m.get("dns_nameservers") {
        None | Some(Value::Null) => json!([]),
        Some(v) => nameservers(v)?,
    };
    let routes = match m.get("host_routes") {
        None | Some(Value::Null) => json!([]),
        Some(v) => host_routes(&cidr, v)?,
    };
    let ra = ipv6_mode(&m, "ipv6_ra_mode", version)?;
    let addr = ipv6_mode(&m, "ipv6_address_mode", version)?;
    if !ra.is_null() && !addr.is_null() && ra != addr {
        return Err(NetError::invalid_input(format!(
            "ipv6_ra_mode set to '{}' with ipv6_address_mode set to '{}' is not valid. If both attributes are set, they must be the same value",
            ra.as_str().unwrap_or(""), addr.as_str().unwrap_or("")
        )));
    }
    let name = opt_string(&m, "name", 255)?.unwrap_or_default();
    let description = opt_string(&m, "description", 255)?.unwrap_or_default();
    let enable_dhcp = opt_bool(&m, "enable_dhcp")?.unwrap_or(true);
    let mut tx = svc.db.begin_write().await?;
    let net = networks::get_visible(&svc, &mut *tx, &ctx, &network_id).await?;
    if !owns(&ctx, &net) {
        return Err(NetError::policy("rule:create_subnet"));
    }
    let owner = owner_of_new(&ctx, &m, "create_subnet:tenant_id")?;
    // No two subnets of one network may overlap.
    let others = store::select(
        &svc.db,
        &mut *tx,
        "subnets",
        "network_id = ?",
        std::slice::from_ref(&network_id),
    )
    .await?;
    for o in &others {
        if let Ok(oc) = Cidr::parse(store::text(o, "cidr")) {
            if oc.overlaps(&cidr) {
                return Err(NetError::invalid_input(format!(
                    "Requested subnet with cidr: {cidr} for network: {network_id} overlaps with another subnet"
                )));
            }
        }
    }
    quotas::check(&svc, &mut tx, &owner, "subnet", 1).await?;
    let id = tessera_types::new_uuid();
    let mut d = doc(
        &id,
        &owner,
        &name,
        &network_id,
        &cidr,
        gateway,
        &pools,
        enable_dhcp,
    );
    for (k, v) in [
        ("description", json!(description)),
        ("dns_nameservers", dns),
        ("host_routes", routes),
        ("ipv6_ra_mode", ra),
        ("ipv6_address_mode", addr),
    ] {
        d.insert(k.into(), v);
    }
    insert(&svc, &mut tx, &d).await?;
    tx.commit().await?;
    tracing::info!(subnet_id = %id, network_id = %network_id, cidr = %cidr, "subnet created");
    Ok(d)
}

/// A new subnet's document, optional attributes at their defaults.
#[allow(clippy::too_many_arguments)]
pub(crate) fn doc(
    id: &str,
    owner: &str,
    name: &str,
    network_id: &str,
    cidr: &Cidr,
    gateway: Option<u128>,
    pools: &[(u128, u128)],
    enable_dhcp: bool,
) -> Doc {
    let version = cidr.version;
    let mut d = store::new_doc(id, owner);
    for (k, v) in [
        ("name", json!(name)),
        ("description", json!("")),
        ("network_id", json!(network_id)),
        ("ip_version", json!(version)),
        ("cidr", json!(cidr.to_string())),
        ("gateway_ip", json!(gateway.map(|g| ipam::format_ip(version, g)))),
        ("allocation_pools", pools_value(pools, version)),
        ("enable_dhcp", json!(enable_dhcp)),
        ("dns_nameservers", json!([])),
        ("host_routes", json!([])),
        ("ipv6_ra_mode", Value::Null),
        ("ipv6_address_mode", Value::Null),
        ("subnetpool_id", Value::Null),
        ("segment_id", Value::Null),
        ("service_types", json!([])),
    ] {
        d.insert(k.into(), v);
    }
    d
}

/// Insert a subnet document in `tx`.
pub(crate) async fn insert(svc: &crate::NetworkService, tx: &mut store::Tx, d: &Doc) -> Result<()> {
    sqlx::query(&svc.db.sql(
        "INSERT INTO subnets (id, project_id, network_id, ip_version, cidr, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(store::text(d, "id"))
    .bind(store::text(d, "project_id"))
    .bind(store::text(d, "network_id"))
    .bind(d["ip_version"].as_i64().unwrap_or(4))
    .bind(store::text(d, "cidr"))
    .bind(serde_json::to_string(d)?)
    .bind(tessera_types::now_epoch_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn update(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let m = body_object(&body, "subnet")?;
    read_only(
        &m,
        &[
            "cidr",
            "ip_version",
            "network_id",
            "tenant_id",
            "project_id",
            "ipv6_ra_mode",
            "ipv6_address_mode",
        ],
    )?;
    only(&m, UPDATE)?;
    let mut s = get_visible(&svc, &ctx, &id).await?;
    if !owns(&ctx, &s) {
        return Err(NetError::policy("rule:update_subnet"));
    }
    writer(&ctx, "rule:update_subnet")?;
    let a = Addressing::of(&s)?;
    let version = a.cidr.version;
    let gateway = match m.get("gateway_ip") {
        None => a.gateway,
        Some(Value::Null) => None,
        Some(v) => Some(ip_of(version, v, "gateway_ip")?),
    };
    let pools = match m.get("allocation_pools") {
        None => a.pools.clone(),
        Some(Value::Null) => a.cidr.default_pools(gateway),
        Some(v) => parse_pools(&a.cidr, v)?,
    };
    check_gateway(&a.cidr, gateway, &pools)?;
    s.insert(
        "gateway_ip".into(),
        json!(gateway.map(|g| ipam::format_ip(version, g))),
    );
    s.insert("allocation_pools".into(), pools_value(&pools, version));
    if let Some(v) = m.get("dns_nameservers") {
        s.insert(
            "dns_nameservers".into(),
            if v.is_null() { json!([]) } else { nameservers(v)? },
        );
    }
    if let Some(v) = m.get("host_routes") {
        s.insert(
            "host_routes".into(),
            if v.is_null() {
                json!([])
            } else {
                host_routes(&a.cidr, v)?
            },
        );
    }
    if let Some(v) = opt_string(&m, "name", 255)? {
        s.insert("name".into(), json!(v));
    }
    if let Some(v) = opt_string(&m, "description", 255)? {
        s.insert("description".into(), json!(v));
    }
    if let Some(v) = opt_bool(&m, "enable_dhcp")? {
        s.insert("enable_dhcp".into(), json!(v));
    }
    store::touch(&mut s);
    let mut tx = svc.db.begin_write().await?;
    if store::get(&svc.db, &mut *tx, "subnets", &id).await?.is_none() {
        return Err(NetError::subnet_not_found(&id));
    }
    store::put_body(&svc.db, &mut tx, "subnets", &id, &s).await?;
    tx.commit().await?;
    Ok(render_one("subnet", s, &[], StatusCode::OK))
}

pub(crate) async fn delete(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    let s = get_visible(&svc, &ctx, &id).await?;
    if !owns(&ctx, &s) {
        return Err(NetError::policy("rule:delete_subnet"));
    }
    writer(&ctx, "rule:delete_subnet")?;
    // Addresses a SLAAC subnet gave ports by itself go with it (a router's interface still holds it).
    let slaac = Addressing::of(&s)?.slaac;
    let mut tx = svc.db.begin_write().await?;
    let in_use = store::count(
        &svc.db,
        &mut *tx,
        "ip_allocations",
        if slaac {
            "subnet_id = ? AND port_id IN (SELECT id FROM ports WHERE device_owner LIKE 'network:router%')"
        } else {
            "subnet_id = ? AND port_id IN (SELECT id FROM ports WHERE device_owner <> 'network:dhcp')"
        },
        &[&id],
    )
    .await?;
    if in_use > 0 {
        return Err(NetError::conflict(
            "SubnetInUse",
            format!("Unable to complete operation on subnet {id}: One or more ports have an IP allocation from this subnet."),
        ));
    }
    let holders = store::select(
        &svc.db,
        &mut *tx,
        "ports",
        "id IN (SELECT port_id FROM ip_allocations WHERE subnet_id = ?)",
        std::slice::from_ref(&id),
    )
    .await?;
    for mut p in holders {
        if let Some(Value::Array(ips)) = p.get_mut("fixed_ips") {
            ips.retain(|f| f["subnet_id"].as_str() != Some(id.as_str()));
        }
        store::touch(&mut p);
        let pid = store::text(&p, "id").to_string();
        store::put_body(&svc.db, &mut tx, "ports", &pid, &p).await?;
    }
    sqlx::query(&svc.db.sql("DELETE FROM ip_allocations WHERE subnet_id = ?"))
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    store::delete(&svc.db, &mut tx, "subnets", &id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
