//! `/v2.0/ports`, with IPAM: each address is recorded in `ip_allocations`, whose key (subnet, address) makes
//! a second allocation of the same address fail; a request that loses such a race runs again and chooses
//! another.

use super::subnets::Addressing;
use super::{
    body_object, networks, only, opt_bool, opt_string, owner_of_new, owns, query_pairs, render_list,
    render_one, security_groups, with_retries, writer, S,
};
use crate::error::{NetError, Result};
use crate::ipam;
use crate::store::{self, Doc, Tx};
use crate::NetworkService;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Map, Value};
use sqlx::Row;
use tessera_http::auth::Caller;
use tessera_types::RequestContext;

const CREATE: &[&str] = &[
    "network_id",
    "name",
    "description",
    "admin_state_up",
    "mac_address",
    "fixed_ips",
    "device_id",
    "device_owner",
    "security_groups",
    "port_security_enabled",
    "allowed_address_pairs",
    "binding:host_id",
    "binding:profile",
    "binding:vnic_type",
    "extra_dhcp_opts",
    "tenant_id",
    "project_id",
    "dns_name",
    "qos_policy_id",
    "propagate_uplink_status",
];
const UPDATE: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "mac_address",
    "fixed_ips",
    "device_id",
    "device_owner",
    "security_groups",
    "port_security_enabled",
    "allowed_address_pairs",
    "binding:host_id",
    "binding:profile",
    "binding:vnic_type",
    "extra_dhcp_opts",
    "dns_name",
    "qos_policy_id",
    "propagate_uplink_status",
];
const BINDING_ADMIN: &[&str] = &["binding:host_id", "binding:profile"];
const VNIC_TYPES: &[&str] = &[
    "normal",
    "direct",
    "macvtap",
    "baremetal",
    "direct-physical",
    "virtio-forwarder",
    "smart-nic",
    "vdpa",
    "remote-managed",
];

/// Ports the caller may see: its own, and (as network owner) every port on its networks.
fn visible_sql(ctx: &RequestContext) -> (String, Vec<String>) {
    if ctx.is_admin() {
        ("1 = 1".into(), Vec::new())
    } else {
        let p = ctx.project_id().unwrap_or("").to_string();
        (
            "(project_id = ? OR network_id IN (SELECT id FROM networks WHERE project_id = ?))".into(),
            vec![p.clone(), p],
        )
    }
}

/// The API view: binding details are for admins.
fn view(ctx: &RequestContext, mut d: Doc) -> Doc {
    if !ctx.is_admin() {
        for k in [
            "binding:host_id",
            "binding:profile",
            "binding:vif_type",
            "binding:vif_details",
        ] {
            d.remove(k);
        }
    }
    d
}

pub(crate) async fn list(State(svc): S, Caller(ctx): Caller, RawQuery(raw): RawQuery) -> Result<Response> {
    let pairs = query_pairs(&raw);
    let (mut w, mut b) = visible_sql(&ctx);
    // The common filters go to the database (Nova lists a server's ports by device_id).
    for col in ["device_id", "network_id"] {
        let vals: Vec<&String> = pairs.iter().filter(|(k, _)| k == col).map(|(_, v)| v).collect();
        if !vals.is_empty() {
            w = format!("{w} AND {col} IN ({})", vec!["?"; vals.len()].join(", "));
            b.extend(vals.into_iter().cloned());
        }
    }
    let docs = store::select(&svc.db, svc.db.pool(), "ports", &w, &b)
        .await?
        .into_iter()
        .map(|d| view(&ctx, d))
        .collect();
    render_list(&svc, "/v2.0/ports", "ports", docs, &pairs)
}

async fn get_visible<'c, E>(svc: &NetworkService, e: E, ctx: &RequestContext, id: &str) -> Result<Doc>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let d = store::get(&svc.db, e, "ports", id)
        .await?
        .ok_or_else(|| NetError::port_not_found(id))?;
    if owns(ctx, &d) {
        return Ok(d);
    }
    let net_owner: Option<String> = sqlx::query(&svc.db.sql("SELECT project_id FROM networks WHERE id = ?"))
        .bind(store::text(&d, "network_id"))
        .fetch_optional(svc.db.pool())
        .await?
        .map(|r| r.try_get("project_id"))
        .transpose()?;
    if net_owner.is_some() && net_owner.as_deref() == ctx.project_id() {
        Ok(d)
    } else {
        Err(NetError::port_not_found(id))
    }
}

pub(crate) async fn show(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let d = get_visible(&svc, svc.db.pool(), &ctx, &id).await?;
    Ok(render_one(
        "port",
        view(&ctx, d),
        &query_pairs(&raw),
        StatusCode::OK,
    ))
}

/// One requested fixed IP: a subnet, an address, or both.
#[derive(Debug, Clone)]
struct Wanted {
    subnet_id: Option<String>,
    ip: Option<(u8, u128)>,
}

fn parse_fixed_ips(v: &Value, max: usize) -> Result<Vec<Wanted>> {
    let arr = v
        .as_array()
        .ok_or_else(|| NetError::invalid_input(format!("Invalid data format for fixed IP: '{v}'")))?;
    if arr.len() > max {
        return Err(NetError::invalid_input(
            "Exceeded maximum amount of fixed ips per port.",
        ));
    }
    let mut out = Vec::new();
    for f in arr {
        let Some(o) = f.as_object() else {
            return Err(NetError::invalid_input(format!(
                "Invalid data format for fixed IP: '{f}'"
            )));
        };
        if let Some(k) = o.keys().find(|k| *k != "subnet_id" && *k != "ip_address") {
            return Err(NetError::invalid_input(format!(
                "Unrecognized attribute in fixed_ips: '{k}'"
            )));
        }
        let subnet_id = match o.get("subnet_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => return Err(NetError::invalid_input(format!("'{v}' is not a valid UUID"))),
        };
        let ip = match o.get("ip_address") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                ipam::parse_ip(s)
                    .ok_or_else(|| NetError::invalid_input(format!("'{s}' is not a valid IP address")))?,
            ),
            Some(v) => {
                return Err(NetError::invalid_input(format!(
                    "'{v}' is not a valid IP address"
                )))
            }
        };
        if subnet_id.is_none() && ip.is_none() {
            return Err(NetError::invalid_input(
                "Each fixed IP needs a subnet_id or an ip_address",
            ));
        }
        if out.iter().any(|w: &Wanted| w.ip.is_some() && w.ip == ip) {
            return Err(NetError::invalid_input("Duplicate IP address in fixed_ips"));
        }
        out.push(Wanted { subnet_id, ip });
    }
    Ok(out)
}

async fn allocated(svc: &NetworkService, tx: &mut Tx, subnet: &str, ip: &str) -> Result<bool> {
    Ok(store::count(
        &svc.db,
        &mut **tx,
        "ip_allocations",
        "subnet_id = ? AND ip_address = ?",
        &[subnet, ip],
    )
    .await?
        > 0)
}

/// A free address of `a`: random probes in a large pool, else (or when they miss) one of the lowest few free
/// ones, at random, so concurrent requests rarely collide.
async fn free_address(svc: &NetworkService, tx: &mut Tx, a: &Addressing) -> Result<Option<u128>> {
    let size = ipam::pools_size(&a.pools);
    if size == 0 {
        return Ok(None);
    }
    // Large pools: a few random probes (one indexed lookup each) find a free address at once while the pool
    // is not nearly full; only when they all hit taken addresses is the subnet's list read.
    if size > 1024 {
        for _ in 0..8 {
            let mut off = rand::random::<u128>() % size;
            for &(lo, hi) in &a.pools {
                let n = hi - lo + 1;
                if off < n {
                    let ip = lo + off;
                    if !allocated(svc, tx, &a.id, &ipam::format_ip(a.cidr.version, ip)).await? {
                        return Ok(Some(ip));
                    }
                    break;
                }
                off -= n;
            }
        }
    }
    let rows = sqlx::query(
        &svc.db
            .sql("SELECT ip_address FROM ip_allocations WHERE subnet_id = ?"),
    )
    .bind(&a.id)
    .fetch_all(&mut **tx)
    .await?;
    let mut taken: Vec<u128> = rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>("ip_address").ok())
        .filter_map(|s| ipam::parse_ip(&s).map(|(_, v)| v))
        .collect();
    taken.sort_unstable();
    let free = ipam::free_in_pools(&a.pools, &taken, 8);
    if free.is_empty() {
        return Ok(None);
    }
    Ok(Some(free[rand::random::<usize>() % free.len()]))
}

/// Work out the port's addresses: the ones asked for (checked), else one from an IPv4 and one from an IPv6
/// subnet of the network. `keep` are addresses the port already holds (an update), which stay valid.
async fn resolve_ips(
    svc: &NetworkService,
    tx: &mut Tx,
    network_id: &str,
    wanted: Option<Vec<Wanted>>,
    keep: &[(String, String)],
    device_owner: &str,
    mac: &str,
) -> Result<Vec<(Addressing, u128)>> {
    let mac = crate::parse_mac(mac).unwrap_or_default();
    let slaac = |a: &Addressing| if a.slaac { ipam::eui64(&a.cidr, &mac) } else { None };
    let subnets: Vec<Addressing> = store::select(
        &svc.db,
        &mut **tx,
        "subnets",
        "network_id = ?",
        &[network_id.to_string()],
    )
    .await?
    .iter()
    .map(Addressing::of)
    .collect::<Result<_>>()?;
    let mut out: Vec<(Addressing, u128)> = Vec::new();
    match wanted {
        None => {
            // Every SLAAC subnet gives the port its MAC-derived address.
            for a in subnets.iter() {
                if let Some(ip) = slaac(a) {
                    out.push((a.clone(), ip));
                }
            }
            for version in [4u8, 6] {
                let mut exhausted = false;
                let mut found = false;
                for a in subnets
                    .iter()
                    .filter(|a| a.cidr.version == version && slaac(a).is_none())
                {
                    match free_address(svc, tx, a).await? {
                        Some(ip) => {
                            out.push((a.clone(), ip));
                            found = true;
                            break;
                        }
                        None => exhausted = true,
                    }
                }
                if exhausted && !found {
                    return Err(NetError::conflict(
                        "IpAddressGenerationFailure",
                        format!("No more IP addresses available on network {network_id}."),
                    ));
                }
            }
        }
        Some(ws) => {
            for w in ws {
                let a = match (&w.subnet_id, w.ip) {
                    (Some(sid), _) => match subnets.iter().find(|a| &a.id == sid) {
                        Some(a) => a.clone(),
                        None => {
                            if store::get(&svc.db, &mut **tx, "subnets", sid).await?.is_none() {
                                return Err(NetError::subnet_not_found(sid));
                            }
                            return Err(NetError::invalid_input(format!(
                                "Failed to create port on network {network_id}, because fixed_ips included invalid subnet {sid}"
                            )));
                        }
                    },
                    (None, Some((v, ip))) => match subnets.iter().find(|a| a.cidr.contains(v, ip)) {
                        Some(a) => a.clone(),
                        None => {
                            return Err(NetError::bad(
                                StatusCode::BAD_REQUEST,
                                "InvalidIpForNetwork",
                                format!(
                                    "IP address {} is not a valid IP for any of the subnets on the specified network.",
                                    ipam::format_ip(v, ip)
                                ),
                            ))
                        }
                    },
                    (None, None) => continue,
                };
                let ip = match w.ip {
                    Some((v, ip)) => {
                        let text = ipam::format_ip(v, ip);
                        let edge = a.cidr.size() > 2
                            && (ip == a.cidr.first() || (a.cidr.version == 4 && ip == a.cidr.last()));
                        if !a.cidr.contains(v, ip) || edge {
                            return Err(NetError::bad(
                                StatusCode::BAD_REQUEST,
                                "InvalidIpForSubnet",
                                format!("IP address {text} is not a valid IP for the specified subnet."),
                            ));
                        }
                        let mine = keep.iter().any(|(s, i)| s == &a.id && i == &text);
                        let gateway = a.gateway == Some(ip) && !device_owner.starts_with("network:router");
                        if !mine && (gateway || allocated(svc, tx, &a.id, &text).await?) {
                            return Err(NetError::conflict(
                                "IpAddressAlreadyAllocated",
                                format!("IP address {text} already allocated in subnet {}", a.id),
                            ));
                        }
                        ip
                    }
                    None if slaac(&a).is_some() => slaac(&a).unwrap_or_default(),
                    None => free_address(svc, tx, &a).await?.ok_or_else(|| {
                        NetError::conflict(
                            "IpAddressGenerationFailure",
                            format!("No more IP addresses available on network {network_id}."),
                        )
                    })?,
                };
                if out.iter().any(|(o, i)| o.id == a.id && *i == ip) {
                    return Err(NetError::invalid_input("Duplicate IP address in fixed_ips"));
                }
                out.push((a, ip));
            }
        }
    }
    Ok(out)
}

fn fixed_ips_value(ips: &[(Addressing, u128)]) -> Value {
    json!(ips
        .iter()
        .map(|(a, ip)| json!({"subnet_id": a.id, "ip_address": ipam::format_ip(a.cidr.version, *ip)}))
        .collect::<Vec<_>>())
}

/// Record the port's addresses (after releasing the ones it held).
async fn write_allocations(
    svc: &NetworkService,
    tx: &mut Tx,
    port: &str,
    network: &str,
    ips: &[(Addressing, u128)],
) -> Result<()> {
    sqlx::query(&svc.db.sql("DELETE FROM ip_allocations WHERE port_id = ?"))
        .bind(port)
        .execute(&mut **tx)
        .await?;
    for (a, ip) in ips {
        sqlx::query(&svc.db.sql(
            "INSERT INTO ip_allocations (subnet_id, ip_address, network_id, port_id) VALUES (?, ?, ?, ?)",
        ))
        .bind(&a.id)
        .bind(ipam::format_ip(a.cidr.version, *ip))
        .bind(network)
        .bind(port)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn write_groups(svc: &NetworkService, tx: &mut Tx, port: &str, groups: &[String]) -> Result<()> {
    sqlx::query(&svc.db.sql("DELETE FROM port_security_groups WHERE port_id = ?"))
        .bind(port)
        .execute(&mut **tx)
        .await?;
    for g in groups {
        sqlx::query(
            &svc.db
                .sql("INSERT INTO port_security_groups (port_id, security_group_id) VALUES (?, ?)"),
        )
        .bind(port)
        .bind(g)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn mac_value(v: &Value) -> Result<String> {
    let s = v.as_str().unwrap_or_default();
    match crate::parse_mac(s) {
        Some(m) if m[0] & 1 == 0 && m != [0; 6] => Ok(crate::format_mac(&m)),
        _ => Err(NetError::invalid_input(format!(
            "'{s}' is not a valid MAC address"
        ))),
    }
}

/// The security groups a port gets: those named (each visible to the caller), else the owner's default one
/// (ports of the network service itself, `network:*`, get none).
async fn groups_for(
    svc: &NetworkService,
    ctx: &RequestContext,
    m: &Map<String, Value>,
    owner: &str,
    port_security: bool,
    device_owner: &str,
) -> Result<Option<Vec<String>>> {
    match m.get("security_groups") {
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for g in a {
                let id = g
                    .as_str()
                    .ok_or_else(|| NetError::invalid_input(format!("'{g}' is not a valid UUID")))?;
                security_groups::get_visible(svc, ctx, id).await?;
                if !out.iter().any(|o| o == id) {
                    out.push(id.to_string());
                }
            }
            if !out.is_empty() && !port_security {
                return Err(NetError::conflict(
                    "PortSecurityAndIPRequiredForSecurityGroups",
                    "Port security must be enabled and port must have an IP address in order to use security groups.",
                ));
            }
            Ok(Some(out))
        }
        Some(Value::Null) => Ok(Some(Vec::new())),
        Some(v) => Err(NetError::invalid_input(format!("'{v}' is not a list"))),
        None if port_security && !device_owner.starts_with("network:") => {
            Ok(Some(vec![security_groups::ensure_default(svc, owner).await?]))
        }
        None => Ok(None),
    }
}

fn address_pairs(v: &Value, mac: &str) -> Result<Value> {
    let arr = v
        .as_array()
        .ok_or_else(|| NetError::invalid_input(format!("'{v}' is not a list")))?;
    let mut out: Vec<Value> = Vec::new();
    for p in arr {
        let ip = p.get("ip_address").and_then(Value::as_str).ok_or_else(|| {
            NetError::bad(
                StatusCode::BAD_REQUEST,
                "AllowedAddressPairsMissingIP",
                "AllowedAddressPair must contain ip_address",
            )
        })?;
        let valid = ipam::parse_ip(ip).is_some()
            || ip
                .split_once('/')
                .is_some_and(|(a, l)| ipam::parse_ip(a).is_some() && l.parse::<u8>().is_ok());
        if !valid {
            return Err(NetError::invalid_input(format!(
                "'{ip}' is not a valid IP address"
            )));
        }
        let pm = match p.get("mac_address") {
            None | Some(Value::Null) => mac.to_string(),
            Some(m) => mac_value(m)?,
        };
        let pair = json!({"ip_address": ip, "mac_address": pm});
        if out.contains(&pair) {
            return Err(NetError::bad(
                StatusCode::BAD_REQUEST,
                "DuplicateAddressPairInRequest",
                format!("Request contains duplicate address pair: mac_address {pm} ip_address {ip}."),
            ));
        }
        out.push(pair);
    }
    Ok(json!(out))
}

fn binding_fields(d: &mut Doc) {
    let host = store::text(d, "binding:host_id").to_string();
    let vnic = store::text(d, "binding:vnic_type").to_string();
    if host.is_empty() {
        d.insert("binding:vif_type".into(), json!("unbound"));
        d.insert("binding:vif_details".into(), json!({}));
    } else if vnic == "normal" {
        // Bound the way Neutron's linuxbridge mechanism driver binds: a tap on a per-network bridge.
        let net = store::text(d, "network_id").to_string();
        d.insert("binding:vif_type".into(), json!("bridge"));
        d.insert(
            "binding:vif_details".into(),
            json!({"connectivity": "l2", "port_filter": true, "bridge_name": format!("brq{}", &net[..net.len().min(11)])}),
        );
    } else {
        d.insert("binding:vif_type".into(), json!("binding_failed"));
        d.insert("binding:vif_details".into(), json!({}));
    }
}

fn check_bindings(ctx: &RequestContext, m: &Map<String, Value>, action: &str) -> Result<()> {
    if !ctx.is_admin() {
        if let Some(k) = BINDING_ADMIN.iter().find(|k| m.contains_key(**k)) {
            return Err(NetError::policy(&format!("rule:{action}_port:{k}")));
        }
    }
    if let Some(v) = m.get("binding:vnic_type") {
        if !v.as_str().is_some_and(|s| VNIC_TYPES.contains(&s)) {
            return Err(NetError::invalid_input(format!("{v} is not in {VNIC_TYPES:?}")));
        }
    }
    if let Some(v) = m.get("binding:profile") {
        if !v.is_object() && !v.is_null() {
            return Err(NetError::invalid_input(format!("'{v}' is not a dictionary")));
        }
    }
    Ok(())
}

fn dhcp_opts(v: &Value) -> Result<Value> {
    let arr = v
        .as_array()
        .ok_or_else(|| NetError::invalid_input(format!("'{v}' is not a list")))?;
    let mut out = Vec::new();
    for o in arr {
        let name = o.get("opt_name").and_then(Value::as_str);
        let (Some(name), Some(value)) = (name, o.get("opt_value")) else {
            return Err(NetError::invalid_input(format!(
                "Invalid data format for extra-dhcp-opt: {o}"
            )));
        };
        let ver = o.get("ip_version").and_then(Value::as_i64).unwrap_or(4);
        out.push(json!({"opt_name": name, "opt_value": value, "ip_version": ver}));
    }
    Ok(json!(out))
}

pub(crate) async fn create(State(svc): S, Caller(ctx): Caller, body: Bytes) -> Result<Response> {
    let (s, c) = (svc.clone(), ctx.clone());
    super::bulk_create(
        &body,
        "port",
        "ports",
        move |m| create_one(s.clone(), c.clone(), m),
        |id| {
            let svc = svc.clone();
            async move {
                let mut tx = svc.db.begin_write().await?;
                remove_port(&svc, &mut tx, &id).await?;
                tx.commit().await?;
                Ok(())
            }
        },
    )
    .await
}

async fn create_one(
    svc: std::sync::Arc<NetworkService>,
    ctx: std::sync::Arc<RequestContext>,
    m: Map<String, Value>,
) -> Result<Doc> {
    writer(&ctx, "rule:create_port")?;
    only(&m, CREATE)?;
    check_bindings(&ctx, &m, "create")?;
    let network_id = match m.get("network_id").and_then(Value::as_str) {
        Some(n) => n.to_string(),
        None => {
            return Err(NetError::bad_request(
                "Failed to parse request. Required attribute 'network_id' not specified",
            ))
        }
    };
    let net = networks::get_visible(&svc, svc.db.pool(), &ctx, &network_id).await?;
    let owner = owner_of_new(&ctx, &m, "create_port:tenant_id")?;
    let net_owner = owns(&ctx, &net);
    let wanted = match m.get("fixed_ips") {
        None => None,
        Some(v) => Some(parse_fixed_ips(v, svc.settings.max_fixed_ips_per_port)?),
    };
    if !net_owner {
        if wanted.as_ref().is_some_and(|w| w.iter().any(|w| w.ip.is_some())) {
            return Err(NetError::policy("rule:create_port:fixed_ips:ip_address"));
        }
        if m.contains_key("mac_address") {
            return Err(NetError::policy("rule:create_port:mac_address"));
        }
    }
    let device_owner = opt_string(&m, "device_owner", 255)?.unwrap_or_default();
    let device_id = opt_string(&m, "device_id", 255)?.unwrap_or_default();
    let port_security = opt_bool(&m, "port_security_enabled")?
        .unwrap_or(net.get("port_security_enabled") != Some(&Value::Bool(false)));
    let groups = groups_for(&svc, &ctx, &m, &owner, port_security, &device_owner).await?;
    let given_mac = m.get("mac_address").map(mac_value).transpose()?;
    let id = tessera_types::new_uuid();
    let doc = with_retries(|| {
        let (svc, m, id, owner, network_id, wanted, groups, device_owner, device_id, given_mac) = (
            svc.clone(), m.clone(), id.clone(), owner.clone(), network_id.clone(), wanted.clone(), groups.clone(),
            device_owner.clone(), device_id.clone(), given_mac.clone(),
        );
        async move {
            let mut tx = svc.db.begin_write().await?;
            if store::get(&svc.db, &mut *tx, "networks", &network_id).await?.is_none() {
                return Err(NetError::network_not_found(&network_id));
            }
            super::quotas::check(&svc, &mut tx, &owner, "port", 1).await?;
            let mac = match given_mac {
                Some(mac) => {
                    if store::count(&svc.db, &mut *tx, "ports", "network_id = ? AND mac_address = ?", &[&network_id, &mac]).await? > 0 {
                        return Err(NetError::conflict(
                            "MacAddressInUse",
                            format!("Unable to complete operation for network {network_id}. The mac address {mac} is in use."),
                        ));
                    }
                    mac
                }
                None => svc.new_mac(),
            };
            let ips = resolve_ips(&svc, &mut tx, &network_id, wanted, &[], &device_owner, &mac).await?;
            let mut d = store::new_doc(&id, &owner);
            for (k, v) in [
                ("name", json!(opt_string(&m, "name", 255)?.unwrap_or_default())),
                ("description", json!(opt_string(&m, "description", 255)?.unwrap_or_default())),
                ("network_id", json!(network_id)),
                ("admin_state_up", json!(opt_bool(&m, "admin_state_up")?.unwrap_or(true))),
                ("status", json!("DOWN")),
                ("mac_address", json!(mac)),
                ("fixed_ips", fixed_ips_value(&ips)),
                ("device_id", json!(device_id)),
                ("device_owner", json!(device_owner)),
                ("security_groups", json!(groups.clone().unwrap_or_default())),
                ("port_security_enabled", json!(port_security)),
                ("allowed_address_pairs", match m.get("allowed_address_pairs") {
                    None | Some(Value::Null) => json!([]),
                    Some(v) => address_pairs(v, &mac)?,
                }),
                ("extra_dhcp_opts", match m.get("extra_dhcp_opts") {
                    None | Some(Value::Null) => json!([]),
                    Some(v) => dhcp_opts(v)?,
                }),
                ("binding:host_id", json!(opt_string(&m, "binding:host_id", 255)?.unwrap_or_default())),
                ("binding:profile", m.get("binding:profile").filter(|v| v.is_object()).cloned().unwrap_or(json!({}))),
                ("binding:vnic_type", json!(m.get("binding:vnic_type").and_then(Value::as_str).unwrap_or("normal"))),
                ("ip_allocation", json!("immediate")),
                ("propagate_uplink_status", json!(false)),
            ] {
                d.insert(k.into(), v);
            }
            if !port_security && d["allowed_address_pairs"].as_array().is_some_and(|a| !a.is_empty()) {
                return Err(NetError::conflict(
                    "AddressPairAndPortSecurityRequired",
                    "Port Security must be enabled in order to have allowed address pairs on a port.",
                ));
            }
            binding_fields(&mut d);
            insert_row(&svc, &mut tx, &d).await?;
            write_allocations(&svc, &mut tx, &id, &network_id, &ips).await?;
            write_groups(&svc, &mut tx, &id, groups.as_deref().unwrap_or(&[])).await?;
            tx.commit().await?;
            Ok(d)
        }
    })
    .await?;
    tracing::info!(port_id = %id, network_id = %network_id, "port created");
    Ok(view(&ctx, doc))
}

pub(crate) async fn update(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let m = body_object(&body, "port")?;
    super::read_only(&m, &["network_id", "tenant_id", "project_id"])?;
    only(&m, UPDATE)?;
    check_bindings(&ctx, &m, "update")?;
    let current = get_visible(&svc, svc.db.pool(), &ctx, &id).await?;
    writer(&ctx, "rule:update_port")?;
    let network_id = store::text(&current, "network_id").to_string();
    let owner = store::text(&current, "project_id").to_string();
    let net = networks::get_visible(&svc, svc.db.pool(), &ctx, &network_id)
        .await
        .ok();
    let net_owner = ctx.is_admin() || net.as_ref().is_some_and(|n| owns(&ctx, n));
    let wanted = match m.get("fixed_ips") {
        None => None,
        Some(v) => Some(parse_fixed_ips(v, svc.settings.max_fixed_ips_per_port)?),
    };
    if !net_owner && wanted.as_ref().is_some_and(|w| w.iter().any(|w| w.ip.is_some())) {
        return Err(NetError::policy("rule:update_port:fixed_ips:ip_address"));
    }
    if m.contains_key("mac_address") && !ctx.is_admin() {
        return Err(NetError::policy("rule:update_port:mac_address"));
    }
    let port_security = opt_bool(&m, "port_security_enabled")?
        .unwrap_or(current.get("port_security_enabled") != Some(&Value::Bool(false)));
    let device_owner = opt_string(&m, "device_owner", 255)?
        .unwrap_or_else(|| store::text(&current, "device_owner").to_string());
    let groups = if m.contains_key("security_groups") {
        groups_for(&svc, &ctx, &m, &owner, port_security, &device_owner).await?
    } else {
        None
    };
    let doc = with_retries(|| {
        let (svc, m, id, network_id, wanted, groups, device_owner) =
            (svc.clone(), m.clone(), id.clone(), network_id.clone(), wanted.clone(), groups.clone(), device_owner.clone());
        async move {
            let mut tx = svc.db.begin_write().await?;
            let mut d = store::get(&svc.db, &mut *tx, "ports", &id)
                .await?
                .ok_or_else(|| NetError::port_not_found(&id))?;
            if let Some(ws) = wanted {
                let held: Vec<(String, String)> = d["fixed_ips"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|f| (f["subnet_id"].as_str().unwrap_or("").to_string(), f["ip_address"].as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                // An entry naming only a subnet the port already has an address in keeps that address.
                let mut ws = ws;
                for w in ws.iter_mut() {
                    if w.ip.is_none() {
                        if let Some((_, ip)) = held.iter().find(|(s, _)| Some(s) == w.subnet_id.as_ref()) {
                            w.ip = ipam::parse_ip(ip);
                        }
                    }
                }
                let mac = store::text(&d, "mac_address").to_string();
                let ips = resolve_ips(&svc, &mut tx, &network_id, Some(ws), &held, &device_owner, &mac).await?;
                write_allocations(&svc, &mut tx, &id, &network_id, &ips).await?;
                d.insert("fixed_ips".into(), fixed_ips_value(&ips));
            }
            if let Some(mac) = m.get("mac_address") {
                if !store::text(&d, "binding:host_id").is_empty() {
                    return Err(NetError::conflict("PortBound", format!("Unable to complete operation on port {id}, port is already bound.")));
                }
                let mac = mac_value(mac)?;
                if mac != store::text(&d, "mac_address")
                    && store::count(&svc.db, &mut *tx, "ports", "network_id = ? AND mac_address = ?", &[&network_id, &mac]).await? > 0
                {
                    return Err(NetError::conflict(
                        "MacAddressInUse",
                        format!("Unable to complete operation for network {network_id}. The mac address {mac} is in use."),
                    ));
                }
                d.insert("mac_address".into(), json!(mac));
            }
            let bound_to = store::text(&d, "binding:host_id").to_string();
            for k in ["name", "description", "device_id", "device_owner", "binding:host_id"] {
                if let Some(v) = opt_string(&m, k, 255)? {
                    d.insert(k.into(), json!(v));
                }
            }
            if store::text(&d, "binding:host_id") != bound_to {
                // A port bound elsewhere (or unbound) waits for the agent of its new host to plug it again.
                d.insert("status".into(), json!("DOWN"));
            }
            if let Some(v) = opt_bool(&m, "admin_state_up")? {
                d.insert("admin_state_up".into(), json!(v));
            }
            d.insert("port_security_enabled".into(), json!(port_security));
            if let Some(v) = m.get("binding:vnic_type") {
                d.insert("binding:vnic_type".into(), v.clone());
            }
            if let Some(v) = m.get("binding:profile") {
                d.insert("binding:profile".into(), if v.is_null() { json!({}) } else { v.clone() });
            }
            if let Some(v) = m.get("extra_dhcp_opts") {
                d.insert("extra_dhcp_opts".into(), if v.is_null() { json!([]) } else { dhcp_opts(v)? });
            }
            let mac = store::text(&d, "mac_address").to_string();
            if let Some(v) = m.get("allowed_address_pairs") {
                d.insert("allowed_address_pairs".into(), if v.is_null() { json!([]) } else { address_pairs(v, &mac)? });
            }
            if let Some(g) = &groups {
                write_groups(&svc, &mut tx, &id, g).await?;
                d.insert("security_groups".into(), json!(g));
            } else if !port_security && d["security_groups"].as_array().is_some_and(|a| !a.is_empty()) {
                return Err(NetError::conflict(
                    "PortSecurityPortHasSecurityGroup",
                    "Port has security group associated. Cannot disable port security or ip address until security group is removed",
                ));
            }
            if !port_security && d["allowed_address_pairs"].as_array().is_some_and(|a| !a.is_empty()) {
                return Err(NetError::conflict(
                    "AddressPairAndPortSecurityRequired",
                    "Port Security must be enabled in order to have allowed address pairs on a port.",
                ));
            }
            binding_fields(&mut d);
            store::touch(&mut d);
            sqlx::query(&svc.db.sql(
                "UPDATE ports SET mac_address = ?, device_id = ?, device_owner = ?, binding_host = ?, body = ? WHERE id = ?",
            ))
                .bind(store::text(&d, "mac_address"))
                .bind(store::text(&d, "device_id"))
                .bind(store::text(&d, "device_owner"))
                .bind(store::text(&d, "binding:host_id"))
                .bind(serde_json::to_string(&d)?)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(d)
        }
    })
    .await?;
    // Its server learns of new addresses.
    if m.contains_key("fixed_ips") {
        svc.notify_port(&doc, "network-changed");
    }
    Ok(render_one("port", view(&ctx, doc), &[], StatusCode::OK))
}

pub(crate) async fn delete(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    let d = get_visible(&svc, svc.db.pool(), &ctx, &id).await?;
    writer(&ctx, "rule:delete_port")?;
    let owner = store::text(&d, "device_owner");
    if owner == "network:router_interface"
        || owner == "network:router_gateway"
        || owner == "network:floatingip"
    {
        return Err(NetError::conflict(
            "ServicePortInUse",
            format!("Port {id} cannot be deleted directly via the port API: has device owner {owner}."),
        ));
    }
    let mut tx = svc.db.begin_write().await?;
    remove_port(&svc, &mut tx, &id).await?;
    // A floating IP on the port lets go of it.
    super::floatingips::disassociate_port(&svc, &mut tx, &id).await?;
    tx.commit().await?;
    svc.notify_port(&d, "network-vif-deleted");
    tracing::info!(port_id = %id, "port deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A port the service makes for itself (router interfaces and gateways, floating IPs, DHCP), inside the
/// caller's transaction: addresses as `wanted` asks (or automatic), no security groups.
pub(crate) async fn insert_service_port(
    svc: &NetworkService,
    tx: &mut Tx,
    network_id: &str,
    project_id: &str,
    device_id: &str,
    device_owner: &str,
    wanted: Option<Vec<(Option<String>, Option<String>)>>,
) -> Result<Doc> {
    let wanted = wanted.map(|ws| {
        ws.into_iter()
            .map(|(subnet_id, ip)| Wanted {
                subnet_id,
                ip: ip.as_deref().and_then(ipam::parse_ip),
            })
            .collect()
    });
    let id = tessera_types::new_uuid();
    let mac = svc.new_mac();
    let ips = resolve_ips(svc, tx, network_id, wanted, &[], device_owner, &mac).await?;
    let mut d = store::new_doc(&id, project_id);
    for (k, v) in [
        ("name", json!("")),
        ("description", json!("")),
        ("network_id", json!(network_id)),
        ("admin_state_up", json!(true)),
        ("status", json!("DOWN")),
        ("mac_address", json!(mac)),
        ("fixed_ips", fixed_ips_value(&ips)),
        ("device_id", json!(device_id)),
        ("device_owner", json!(device_owner)),
        ("security_groups", json!([])),
        ("port_security_enabled", json!(false)),
        ("allowed_address_pairs", json!([])),
        ("extra_dhcp_opts", json!([])),
        ("binding:host_id", json!("")),
        ("binding:profile", json!({})),
        ("binding:vnic_type", json!("normal")),
        ("ip_allocation", json!("immediate")),
        ("propagate_uplink_status", json!(false)),
    ] {
        d.insert(k.into(), v);
    }
    binding_fields(&mut d);
    insert_row(svc, tx, &d).await?;
    write_allocations(svc, tx, &id, network_id, &ips).await?;
    Ok(d)
}

/// Give a service port (a network's DHCP port) one address in each of `subnets`, keeping the addresses it
/// holds there, and bind it to `host`; returns whether anything changed.
pub(crate) async fn reshape_service_port(
    svc: &NetworkService,
    tx: &mut Tx,
    d: &mut Doc,
    subnets: &[String],
    host: &str,
) -> Result<bool> {
    let held: Vec<(String, String)> = d["fixed_ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["subnet_id"].as_str().unwrap_or("").to_string(),
                        f["ip_address"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut have: Vec<&String> = held.iter().map(|(s, _)| s).collect();
    have.sort();
    let mut want: Vec<&String> = subnets.iter().collect();
    want.sort();
    if have == want && store::text(d, "binding:host_id") == host {
        return Ok(false);
    }
    let id = store::text(d, "id").to_string();
    let network_id = store::text(d, "network_id").to_string();
    if have != want {
        let ws = subnets
            .iter()
            .map(|sid| Wanted {
                subnet_id: Some(sid.clone()),
                ip: held
                    .iter()
                    .find(|(s, _)| s == sid)
                    .and_then(|(_, ip)| ipam::parse_ip(ip)),
            })
            .collect();
        let mac = store::text(d, "mac_address").to_string();
        let owner = store::text(d, "device_owner").to_string();
        let ips = resolve_ips(svc, tx, &network_id, Some(ws), &held, &owner, &mac).await?;
        write_allocations(svc, tx, &id, &network_id, &ips).await?;
        d.insert("fixed_ips".into(), fixed_ips_value(&ips));
    }
    d.insert("binding:host_id".into(), json!(host));
    binding_fields(d);
    store::touch(d);
    sqlx::query(
        &svc.db
            .sql("UPDATE ports SET binding_host = ?, body = ? WHERE id = ?"),
    )
    .bind(host)
    .bind(serde_json::to_string(d)?)
    .bind(&id)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// Insert a port document with the columns queries select on.
async fn insert_row(svc: &NetworkService, tx: &mut Tx, d: &Doc) -> Result<()> {
    sqlx::query(&svc.db.sql(
        "INSERT INTO ports (id, project_id, network_id, mac_address, device_id, device_owner, binding_host, body, \
         created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(store::text(d, "id"))
    .bind(store::text(d, "project_id"))
    .bind(store::text(d, "network_id"))
    .bind(store::text(d, "mac_address"))
    .bind(store::text(d, "device_id"))
    .bind(store::text(d, "device_owner"))
    .bind(store::text(d, "binding:host_id"))
    .bind(serde_json::to_string(d)?)
    .bind(tessera_types::now_epoch_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Remove a port and what it holds, inside the caller's transaction.
pub(crate) async fn remove_port(svc: &NetworkService, tx: &mut Tx, id: &str) -> Result<()> {
    for q in [
        "DELETE FROM ip_allocations WHERE port_id = ?",
        "DELETE FROM port_security_groups WHERE port_id = ?",
        "DELETE FROM ports WHERE id = ?",
    ] {
        sqlx::query(&svc.db.sql(q)).bind(id).execute(&mut **tx).await?;
    }
    Ok(())
}
