//! `/v2.0/networks`.

use super::{
    body_object, only, opt_bool, opt_string, owner_of_new, owns, query_pairs, quotas, read_only, render_list,
    render_one, with_retries, writer, S,
};
use crate::error::{NetError, Result};
use crate::store::{self, Doc, Tx};
use crate::NetworkService;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::response::Response;
use http::StatusCode;
use serde_json::{json, Value};
use tessera_http::auth::Caller;
use tessera_types::RequestContext;

const CREATE: &[&str] = &[
    "name",
    "admin_state_up",
    "shared",
    "router:external",
    "mtu",
    "port_security_enabled",
    "description",
    "tenant_id",
    "project_id",
    "availability_zone_hints",
    "provider:network_type",
    "provider:physical_network",
    "provider:segmentation_id",
    "is_default",
    "dns_domain",
    "qos_policy_id",
];
const UPDATE: &[&str] = &[
    "name",
    "admin_state_up",
    "shared",
    "router:external",
    "mtu",
    "port_security_enabled",
    "description",
    "is_default",
    "dns_domain",
    "qos_policy_id",
    "provider:network_type",
    "provider:physical_network",
    "provider:segmentation_id",
];
const PROVIDER: &[&str] = &[
    "provider:network_type",
    "provider:physical_network",
    "provider:segmentation_id",
];

/// SQL visibility of networks for the caller, with its binds.
pub(crate) fn visible_sql(ctx: &RequestContext) -> (String, Vec<String>) {
    if ctx.is_admin() {
        ("1 = 1".into(), Vec::new())
    } else {
        (
            "(project_id = ? OR shared = 1 OR external = 1)".into(),
            vec![ctx.project_id().unwrap_or("").to_string()],
        )
    }
}

pub(crate) fn visible(ctx: &RequestContext, n: &Doc) -> bool {
    owns(ctx, n)
        || n.get("shared") == Some(&Value::Bool(true))
        || n.get("router:external") == Some(&Value::Bool(true))
}

/// A network the caller may see, or 404.
pub(crate) async fn get_visible<'c, E>(
    svc: &NetworkService,
    e: E,
    ctx: &RequestContext,
    id: &str,
) -> Result<Doc>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    match store::get(&svc.db, e, "networks", id).await? {
        Some(n) if visible(ctx, &n) => Ok(n),
        _ => Err(NetError::network_not_found(id)),
    }
}

/// The API view: subnets filled in, provider attributes for admins only.
fn view(ctx: &RequestContext, mut n: Doc, subnets: Vec<String>) -> Doc {
    n.insert("subnets".into(), json!(subnets));
    if !ctx.is_admin() {
        for k in PROVIDER {
            n.remove(*k);
        }
    }
    n
}

async fn subnet_ids(svc: &NetworkService, network_ids: Option<&str>) -> Result<Vec<(String, String)>> {
    let (q, bind) = match network_ids {
        Some(id) => (
            "SELECT id, network_id FROM subnets WHERE network_id = ? ORDER BY created_at, id",
            Some(id),
        ),
        None => ("SELECT id, network_id FROM subnets ORDER BY created_at, id", None),
    };
    let sql = svc.db.sql(q);
    let mut query = sqlx::query(&sql);
    if let Some(b) = bind {
        query = query.bind(b);
    }
    use sqlx::Row;
    query
        .fetch_all(svc.db.pool())
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<String, _>("network_id")?,
                r.try_get::<String, _>("id")?,
            ))
        })
        .collect()
}

pub(crate) async fn list(State(svc): S, Caller(ctx): Caller, RawQuery(raw): RawQuery) -> Result<Response> {
    let pairs = query_pairs(&raw);
    let (w, b) = visible_sql(&ctx);
    let docs = store::select(&svc.db, svc.db.pool(), "networks", &w, &b).await?;
    let mut subnets: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for (net, id) in subnet_ids(&svc, None).await? {
        subnets.entry(net).or_default().push(id);
    }
    let docs = docs
        .into_iter()
        .map(|n| {
            let s = subnets.remove(store::text(&n, "id")).unwrap_or_default();
            view(&ctx, n, s)
        })
        .collect();
    render_list(&svc, "/v2.0/networks", "networks", docs, &pairs)
}

use axum::extract::State;

pub(crate) async fn show(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let n = get_visible(&svc, svc.db.pool(), &ctx, &id).await?;
    let s = subnet_ids(&svc, Some(&id))
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    Ok(render_one(
        "network",
        view(&ctx, n, s),
        &query_pairs(&raw),
        StatusCode::OK,
    ))
}

fn admin_only(ctx: &RequestContext, m: &serde_json::Map<String, Value>, action: &str) -> Result<()> {
    if ctx.is_admin() {
        return Ok(());
    }
    for k in ["shared", "router:external", "is_default"]
        .iter()
        .chain(PROVIDER.iter())
    {
        if m.contains_key(*k) {
            return Err(NetError::policy(&format!("rule:{action}_network:{k}")));
        }
    }
    Ok(())
}

fn mtu_value(svc: &NetworkService, m: &serde_json::Map<String, Value>) -> Result<Option<i64>> {
    match m.get("mtu") {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (68..=svc.settings.global_physnet_mtu).contains(&n) => Ok(Some(n)),
            Some(n) if n > svc.settings.global_physnet_mtu => Err(NetError::invalid_input(format!(
                "Requested MTU is too big, maximum is {}",
                svc.settings.global_physnet_mtu
            ))),
            _ => Err(NetError::invalid_input(format!(
                "'{v}' is not a valid MTU (68 or more)"
            ))),
        },
    }
}

/// The segment backing a network: what the provider attributes ask for (admin), else the next free VXLAN id.
async fn segment(
    svc: &NetworkService,
    tx: &mut Tx,
    m: &serde_json::Map<String, Value>,
) -> Result<(Option<String>, Value, Value, Value)> {
    let ty = opt_string(m, "provider:network_type", 64)?;
    let phys = match m.get("provider:physical_network") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => Some(s.clone()),
        Some(v) => {
            return Err(NetError::invalid_input(format!(
                "'{v}' is not a valid physical network"
            )))
        }
    };
    let seg = match m.get("provider:segmentation_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| NetError::invalid_input(format!("'{v}' is not an integer")))?,
        ),
    };
    let ty = ty.unwrap_or_else(|| {
        if phys.is_some() {
            "flat".into()
        } else {
            "vxlan".into()
        }
    });
    let key = match ty.as_str() {
        "local" => {
            if phys.is_some() || seg.is_some() {
                return Err(NetError::invalid_input(
                    "local networks take no physical network or segmentation id",
                ));
            }
            None
        }
        "flat" => {
            let p = phys.clone().ok_or_else(|| {
                NetError::invalid_input("physical_network required for flat provider network")
            })?;
            if seg.is_some() {
                return Err(NetError::invalid_input(
                    "segmentation_id prohibited for flat provider network",
                ));
            }
            let key = format!("flat:{p}");
            if taken(svc, tx, &key).await? {
                return Err(NetError::conflict(
                    "FlatNetworkInUse",
                    format!("Unable to create the flat network. Physical network {p} is in use."),
                ));
            }
            Some(key)
        }
        "vlan" => {
            let p = phys.clone().ok_or_else(|| {
                NetError::invalid_input("physical_network required for VLAN provider network")
            })?;
            let s = seg.ok_or_else(|| {
                NetError::invalid_input("segmentation_id required for VLAN provider network")
            })?;
            if !(1..=4094).contains(&s) {
                return Err(NetError::invalid_input(
                    "segmentation_id out of range (1 through 4094)",
                ));
            }
            let key = format!("vlan:{p}:{s}");
            if taken(svc, tx, &key).await? {
                return Err(NetError::conflict(
                    "VlanIdInUse",
                    format!("Unable to create the network. The VLAN {s} on physical network {p} is in use."),
                ));
            }
            Some(key)
        }
        "vxlan" | "geneve" => {
            if phys.is_some() {
                return Err(NetError::invalid_input(format!(
                    "provider:physical_network specified for {ty} network"
                )));
            }
            let s = match seg {
                Some(s) if (1..=16_777_215).contains(&s) => {
                    let key = format!("{ty}:{s}");
                    if taken(svc, tx, &key).await? {
                        return Err(NetError::conflict(
                            "TunnelIdInUse",
                            format!("Unable to create the network. The tunnel ID {s} is in use."),
                        ));
                    }
                    s
                }
                Some(_) => {
                    return Err(NetError::invalid_input(
                        "segmentation_id out of range (1 through 16777215)",
                    ))
                }
                None => next_tunnel_id(svc, tx, &ty).await?,
            };
            Some(format!("{ty}:{s}"))
        }
        other => {
            return Err(NetError::invalid_input(format!(
                "network_type value '{other}' not supported"
            )))
        }
    };
    let seg_value = match key
        .as_deref()
        .and_then(|k| k.rsplit(':').next())
        .and_then(|s| s.parse::<i64>().ok())
    {
        Some(s) if ty != "flat" => json!(s),
        _ => Value::Null,
    };
    Ok((key, json!(ty), json!(phys), seg_value))
}

async fn taken(svc: &NetworkService, tx: &mut Tx, key: &str) -> Result<bool> {
    Ok(store::count(&svc.db, &mut **tx, "networks", "segment = ?", &[key]).await? > 0)
}

/// The lowest tunnel id of `ty` no network holds (a concurrent winner makes the insert fail and retry).
async fn next_tunnel_id(svc: &NetworkService, tx: &mut Tx, ty: &str) -> Result<i64> {
    use sqlx::Row;
    let rows = sqlx::query(&svc.db.sql("SELECT segment FROM networks WHERE segment LIKE ?"))
        .bind(format!("{ty}:%"))
        .fetch_all(&mut **tx)
        .await?;
    let mut used: Vec<i64> = rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>("segment").ok())
        .filter_map(|s| s.rsplit(':').next().and_then(|n| n.parse().ok()))
        .collect();
    used.sort_unstable();
    let mut next = 1;
    for u in used {
        if u == next {
            next += 1;
        } else if u > next {
            break;
        }
    }
    Ok(next)
}

pub(crate) async fn create(State(svc): S, Caller(ctx): Caller, body: Bytes) -> Result<Response> {
    let (s, c) = (svc.clone(), ctx.clone());
    super::bulk_create(
        &body,
        "network",
        "networks",
        move |m| create_one(s.clone(), c.clone(), m),
        |id| {
            let svc = svc.clone();
            async move { super::undo(&svc, "DELETE FROM networks WHERE id = ?", &id).await }
        },
    )
    .await
}

async fn create_one(
    svc: std::sync::Arc<NetworkService>,
    ctx: std::sync::Arc<RequestContext>,
    m: serde_json::Map<String, Value>,
) -> Result<Doc> {
    writer(&ctx, "rule:create_network")?;
    only(&m, CREATE)?;
    admin_only(&ctx, &m, "create")?;
    let owner = owner_of_new(&ctx, &m, "create_network:tenant_id")?;
    let name = opt_string(&m, "name", 255)?.unwrap_or_default();
    let description = opt_string(&m, "description", 255)?.unwrap_or_default();
    let admin_state_up = opt_bool(&m, "admin_state_up")?.unwrap_or(true);
    let shared = opt_bool(&m, "shared")?.unwrap_or(false);
    let external = opt_bool(&m, "router:external")?.unwrap_or(false);
    let port_security = opt_bool(&m, "port_security_enabled")?.unwrap_or(true);
    let is_default = opt_bool(&m, "is_default")?.unwrap_or(false);
    if is_default && !external {
        return Err(NetError::invalid_input(
            "is_default can only be set on an external network",
        ));
    }
    let mtu = mtu_value(&svc, &m)?.unwrap_or(svc.settings.global_physnet_mtu);
    let az_hints = match m.get("availability_zone_hints") {
        None => json!([]),
        Some(Value::Array(a)) if a.iter().all(|z| z.as_str() == Some("nova")) => json!(a),
        Some(v) => {
            return Err(NetError::conflict(
                "AvailabilityZoneNotFound",
                format!("AvailabilityZone {v} could not be found."),
            ))
        }
    };
    let id = tessera_types::new_uuid();
    let fields = NewNetwork {
        name,
        description,
        admin_state_up,
        shared,
        external,
        port_security,
        is_default,
        mtu,
        az_hints,
    };
    let doc = with_retries(|| {
        let (svc, m, id, owner, fields) = (svc.clone(), m.clone(), id.clone(), owner.clone(), fields.clone());
        async move {
            let mut tx = svc.db.begin_write().await?;
            quotas::check(&svc, &mut tx, &owner, "network", 1).await?;
            let d = insert(&svc, &mut tx, &id, &owner, &m, &fields).await?;
            tx.commit().await?;
            Ok(d)
        }
    })
    .await?;
    tracing::info!(network_id = %id, project_id = %owner, "network created");
    Ok(view(&ctx, doc, Vec::new()))
}

/// What a new network is made of (besides its segment, which `insert` works out from the request).
#[derive(Debug, Clone)]
pub(crate) struct NewNetwork {
    pub name: String,
    pub description: String,
    pub admin_state_up: bool,
    pub shared: bool,
    pub external: bool,
    pub port_security: bool,
    pub is_default: bool,
    pub mtu: i64,
    pub az_hints: Value,
}

/// Insert a network in `tx`; `m` is the request (for the provider attributes).
pub(crate) async fn insert(
    svc: &NetworkService,
    tx: &mut Tx,
    id: &str,
    owner: &str,
    m: &serde_json::Map<String, Value>,
    f: &NewNetwork,
) -> Result<Doc> {
    let (segment_key, ty, phys, seg) = segment(svc, tx, m).await?;
    // Tunnel networks carry the encapsulation overhead (VXLAN 50 bytes, Geneve 58 in Neutron's ML2).
    let overhead = match ty.as_str() {
        Some("vxlan") => 50,
        Some("geneve") => 58,
        _ => 0,
    };
    let mtu = if m.contains_key("mtu") {
        f.mtu
    } else {
        f.mtu - overhead
    };
    let mut d = store::new_doc(id, owner);
    for (k, v) in [
        ("name", json!(f.name)),
        ("description", json!(f.description)),
        ("admin_state_up", json!(f.admin_state_up)),
        ("status", json!("ACTIVE")),
        ("shared", json!(f.shared)),
        ("router:external", json!(f.external)),
        ("mtu", json!(mtu)),
        ("port_security_enabled", json!(f.port_security)),
        ("availability_zone_hints", f.az_hints.clone()),
        ("availability_zones", json!(["nova"])),
        ("ipv4_address_scope", Value::Null),
        ("ipv6_address_scope", Value::Null),
        ("l2_adjacency", json!(true)),
        ("is_default", json!(f.is_default)),
        ("provider:network_type", ty),
        ("provider:physical_network", phys),
        ("provider:segmentation_id", seg),
    ] {
        d.insert(k.into(), v);
    }
    sqlx::query(&svc.db.sql(
        "INSERT INTO networks (id, project_id, name, shared, external, segment, body, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(id)
    .bind(owner)
    .bind(&f.name)
    .bind(f.shared as i64)
    .bind(f.external as i64)
    .bind(segment_key)
    .bind(serde_json::to_string(&d)?)
    .bind(tessera_types::now_epoch_micros())
    .execute(&mut **tx)
    .await?;
    Ok(d)
}

/// Remove a network with everything left on it (its subnets, and the ports and floating IPs the service
/// made), in the caller's transaction; callers check first that nobody else's port is on it.
pub(crate) async fn purge(svc: &NetworkService, tx: &mut Tx, id: &str) -> Result<()> {
    for q in [
        "DELETE FROM floatingips WHERE floating_network_id = ?",
        "DELETE FROM port_security_groups WHERE port_id IN (SELECT id FROM ports WHERE network_id = ?)",
        "DELETE FROM ip_allocations WHERE network_id = ?",
        "DELETE FROM ports WHERE network_id = ?",
        "DELETE FROM subnets WHERE network_id = ?",
        "DELETE FROM networks WHERE id = ?",
    ] {
        sqlx::query(&svc.db.sql(q)).bind(id).execute(&mut **tx).await?;
    }
    Ok(())
}

pub(crate) async fn update(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let m = body_object(&body, "network")?;
    only(&m, UPDATE)?;
    read_only(&m, PROVIDER)?;
    let mut tx = svc.db.begin_write().await?;
    let mut n = get_visible(&svc, &mut *tx, &ctx, &id).await?;
    if !owns(&ctx, &n) {
        return Err(NetError::policy("rule:update_network"));
    }
    writer(&ctx, "rule:update_network")?;
    admin_only(&ctx, &m, "update")?;
    if let Some(v) = opt_string(&m, "name", 255)? {
        n.insert("name".into(), json!(v));
    }
    if let Some(v) = opt_string(&m, "description", 255)? {
        n.insert("description".into(), json!(v));
    }
    for k in [
        "admin_state_up",
        "port_security_enabled",
        "router:external",
        "is_default",
    ] {
        if let Some(v) = opt_bool(&m, k)? {
            n.insert(k.into(), json!(v));
        }
    }
    if let Some(v) = mtu_value(&svc, &m)? {
        n.insert("mtu".into(), json!(v));
    }
    if let Some(shared) = opt_bool(&m, "shared")? {
        if !shared && n.get("shared") == Some(&Value::Bool(true)) {
            let others = store::count(
                &svc.db,
                &mut *tx,
                "ports",
                "network_id = ? AND project_id <> ? AND device_owner NOT LIKE 'network:%'",
                &[&id, store::text(&n, "project_id")],
            )
            .await?;
            if others > 0 {
                return Err(NetError::conflict(
                    "InvalidSharedSetting",
                    format!("Unable to reconfigure sharing settings for network {id}. Multiple tenants are using it."),
                ));
            }
        }
        n.insert("shared".into(), json!(shared));
    }
    if n.get("is_default") == Some(&Value::Bool(true)) && n.get("router:external") != Some(&Value::Bool(true))
    {
        return Err(NetError::invalid_input(
            "is_default can only be set on an external network",
        ));
    }
    store::touch(&mut n);
    sqlx::query(
        &svc.db
            .sql("UPDATE networks SET name = ?, shared = ?, external = ?, body = ? WHERE id = ?"),
    )
    .bind(store::text(&n, "name"))
    .bind((n.get("shared") == Some(&Value::Bool(true))) as i64)
    .bind((n.get("router:external") == Some(&Value::Bool(true))) as i64)
    .bind(serde_json::to_string(&n)?)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let s = subnet_ids(&svc, Some(&id))
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    Ok(render_one("network", view(&ctx, n, s), &[], StatusCode::OK))
}

pub(crate) async fn delete(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    let mut tx = svc.db.begin_write().await?;
    let n = get_visible(&svc, &mut *tx, &ctx, &id).await?;
    if !owns(&ctx, &n) {
        return Err(NetError::policy("rule:delete_network"));
    }
    writer(&ctx, "rule:delete_network")?;
    // Ports the service made for itself (DHCP, floating IPs) go with the network; anybody else's keep it alive.
    let in_use = store::count(
        &svc.db,
        &mut *tx,
        "ports",
        "network_id = ? AND device_owner <> 'network:dhcp' AND device_owner <> 'network:floatingip'",
        &[&id],
    )
    .await?;
    if in_use > 0 {
        return Err(NetError::conflict(
            "NetworkInUse",
            format!("Unable to complete operation on network {id}. There are one or more ports still in use on the network."),
        ));
    }
    purge(&svc, &mut tx, &id).await?;
    tx.commit().await?;
    tracing::info!(network_id = %id, "network deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

use axum::response::IntoResponse;
