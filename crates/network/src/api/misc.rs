//! Tags on resources, `network-ip-availabilities`, and `auto-allocated-topology` (Nova's `networks: auto`).

use super::subnets::{self, Addressing};
use super::{networks, owns, ports, query_pairs, render_list, render_one, routers, with_retries, writer, S};
use crate::error::{NetError, Result};
use crate::ipam::{self, Cidr};
use crate::store::{self, Doc};
use crate::NetworkService;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Map, Value};
use sqlx::Row;
use tessera_http::auth::Caller;
use tessera_types::RequestContext;

// ---------------------------------------------------------------- tags

/// The table behind a taggable collection, and the 404 of its resource.
fn taggable(resource: &str, id: &str) -> Result<(&'static str, NetError)> {
    Ok(match resource {
        "networks" => ("networks", NetError::network_not_found(id)),
        "subnets" => ("subnets", NetError::subnet_not_found(id)),
        "ports" => ("ports", NetError::port_not_found(id)),
        "routers" => (
            "routers",
            NetError::not_found("RouterNotFound", format!("Router {id} could not be found")),
        ),
        "security-groups" => ("security_groups", NetError::sg_not_found(id)),
        "floatingips" => (
            "floatingips",
            NetError::not_found(
                "FloatingIPNotFound",
                format!("Floating IP {id} could not be found"),
            ),
        ),
        _ => {
            return Err(NetError::not_found(
                "HTTPNotFound",
                "The resource could not be found.",
            ))
        }
    })
}

fn valid_tag(t: &str) -> Result<()> {
    if t.is_empty() || t.chars().count() > 255 || t.contains(',') {
        return Err(NetError::invalid_input(format!(
            "'{t}' is not a valid tag: 1 to 255 characters, no comma"
        )));
    }
    Ok(())
}

/// Read-modify-write a resource's tags.
async fn with_tags(
    svc: &NetworkService,
    ctx: &RequestContext,
    resource: &str,
    id: &str,
    change: impl Fn(&mut Vec<String>) -> Result<bool>,
) -> Result<Vec<String>> {
    let (table, missing) = taggable(resource, id)?;
    let mut tx = svc.db.begin_write().await?;
    let Some(mut d) = store::get(&svc.db, &mut *tx, table, id)
        .await?
        .filter(|d| owns(ctx, d))
    else {
        return Err(missing);
    };
    let mut tags: Vec<String> = d
        .get("tags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if change(&mut tags)? {
        d.insert("tags".into(), json!(tags));
        store::touch(&mut d);
        store::put_body(&svc.db, &mut tx, table, id, &d).await?;
        tx.commit().await?;
    }
    Ok(tags)
}

pub(crate) async fn get_tags(
    State(svc): S,
    Caller(ctx): Caller,
    Path((res, id)): Path<(String, String)>,
) -> Result<Response> {
    let tags = with_tags(&svc, &ctx, &res, &id, |_| Ok(false)).await?;
    Ok(axum::Json(json!({"tags": tags})).into_response())
}

pub(crate) async fn put_tags(
    State(svc): S,
    Caller(ctx): Caller,
    Path((res, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response> {
    writer(&ctx, "rule:update_tags")?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| NetError::bad_request(format!("Malformed request body: {e}")))?;
    let Some(list) = v.get("tags").and_then(Value::as_array) else {
        return Err(NetError::bad_request(
            "Invalid input for tags: a list is required",
        ));
    };
    let mut new: Vec<String> = Vec::new();
    for t in list {
        let t = t
            .as_str()
            .ok_or_else(|| NetError::invalid_input(format!("'{t}' is not a valid tag")))?;
        valid_tag(t)?;
        if !new.iter().any(|n| n == t) {
            new.push(t.to_string());
        }
    }
    let tags = with_tags(&svc, &ctx, &res, &id, |tags| {
        *tags = new.clone();
        Ok(true)
    })
    .await?;
    Ok(axum::Json(json!({"tags": tags})).into_response())
}

pub(crate) async fn delete_tags(
    State(svc): S,
    Caller(ctx): Caller,
    Path((res, id)): Path<(String, String)>,
) -> Result<Response> {
    writer(&ctx, "rule:delete_tags")?;
    with_tags(&svc, &ctx, &res, &id, |tags| {
        tags.clear();
        Ok(true)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn get_tag(
    State(svc): S,
    Caller(ctx): Caller,
    Path((res, id, tag)): Path<(String, String, String)>,
) -> Result<Response> {
    let tags = with_tags(&svc, &ctx, &res, &id, |_| Ok(false)).await?;
    if tags.contains(&tag) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(NetError::not_found(
            "TagNotFound",
            format!("Tag {tag} could not be found for {res} {id}."),
        ))
    }
}

pub(crate) async fn put_tag(
    State(svc): S,
    Caller(ctx): Caller,
    Path((res, id, tag)): Path<(String, String, String)>,
) -> Result<Response> {
    writer(&ctx, "rule:update_tags")?;
    valid_tag(&tag)?;
    with_tags(&svc, &ctx, &res, &id, |tags| {
        if tags.contains(&tag) {
            return Ok(false);
        }
        tags.push(tag.clone());
        Ok(true)
    })
    .await?;
    Ok(StatusCode::CREATED.into_response())
}

pub(crate) async fn delete_tag(
    State(svc): S,
    Caller(ctx): Caller,
    Path((res, id, tag)): Path<(String, String, String)>,
) -> Result<Response> {
    writer(&ctx, "rule:delete_tags")?;
    with_tags(&svc, &ctx, &res, &id, |tags| {
        let before = tags.len();
        tags.retain(|t| t != &tag);
        if tags.len() == before {
            return Err(NetError::not_found(
                "TagNotFound",
                format!("Tag {tag} could not be found for {res} {id}."),
            ));
        }
        Ok(true)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- IP availability

async fn availability(svc: &NetworkService, n: &Doc) -> Result<Doc> {
    let nid = store::text(n, "id").to_string();
    let subnets = store::select(
        &svc.db,
        svc.db.pool(),
        "subnets",
        "network_id = ?",
        std::slice::from_ref(&nid),
    )
    .await?;
    let (mut total, mut used) = (0u128, 0i64);
    let mut per = Vec::new();
    for s in &subnets {
        let a = Addressing::of(s)?;
        let t = ipam::pools_size(&a.pools);
        let u = store::count(
            &svc.db,
            svc.db.pool(),
            "ip_allocations",
            "subnet_id = ?",
            &[&a.id],
        )
        .await?;
        total = total.saturating_add(t);
        used += u;
        per.push(json!({
            "subnet_id": a.id, "subnet_name": s["name"], "cidr": s["cidr"], "ip_version": s["ip_version"],
            "total_ips": t.min(u64::MAX as u128) as u64, "used_ips": u,
        }));
    }
    let mut d = Map::new();
    for (k, v) in [
        ("network_id", json!(nid)),
        ("network_name", n["name"].clone()),
        ("project_id", n["project_id"].clone()),
        ("tenant_id", n["project_id"].clone()),
        ("total_ips", json!(total.min(u64::MAX as u128) as u64)),
        ("used_ips", json!(used)),
        ("subnet_ip_availability", json!(per)),
    ] {
        d.insert(k.into(), v);
    }
    Ok(d)
}

pub(crate) async fn list_availabilities(
    State(svc): S,
    Caller(ctx): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    if !ctx.is_admin() {
        return Err(NetError::policy("rule:get_network_ip_availability"));
    }
    let mut out = Vec::new();
    for n in store::select(&svc.db, svc.db.pool(), "networks", "1 = 1", &[]).await? {
        out.push(availability(&svc, &n).await?);
    }
    // `id` for the list machinery's ordering and markers.
    for d in out.iter_mut() {
        let id = d["network_id"].clone();
        d.insert("id".into(), id);
    }
    let pairs = query_pairs(&raw);
    let resp = render_list(
        &svc,
        "/v2.0/network-ip-availabilities",
        "network_ip_availabilities",
        out,
        &pairs,
    )?;
    Ok(resp)
}

pub(crate) async fn show_availability(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    if !ctx.is_admin() {
        return Err(NetError::policy("rule:get_network_ip_availability"));
    }
    let n = store::get(&svc.db, svc.db.pool(), "networks", &id)
        .await?
        .ok_or_else(|| NetError::network_not_found(&id))?;
    Ok(render_one(
        "network_ip_availability",
        availability(&svc, &n).await?,
        &[],
        StatusCode::OK,
    ))
}

// ---------------------------------------------------------------- auto-allocated topology

/// The default external network (`is_default`), if there is one.
async fn default_external(svc: &NetworkService) -> Result<Option<Doc>> {
    Ok(
        store::select(&svc.db, svc.db.pool(), "networks", "external = 1", &[])
            .await?
            .into_iter()
            .find(|n| n.get("is_default") == Some(&Value::Bool(true))),
    )
}

fn no_default() -> NetError {
    NetError::conflict(
        "AutoAllocationFailure",
        "Deployment error: No default router:external network.",
    )
}

fn topology(project_id: &str, network_id: &str) -> Response {
    axum::Json(json!({"auto_allocated_topology": {"id": network_id, "tenant_id": project_id, "project_id": project_id}}))
        .into_response()
}

async fn existing_topology(
    svc: &NetworkService,
    project_id: &str,
) -> Result<Option<(String, Option<String>)>> {
    let row = sqlx::query(
        &svc.db
            .sql("SELECT network_id, router_id FROM auto_allocated_topologies WHERE project_id = ?"),
    )
    .bind(project_id)
    .fetch_optional(svc.db.pool())
    .await?;
    row.map(|r| Ok((r.try_get("network_id")?, r.try_get("router_id")?)))
        .transpose()
}

/// The first block of `[network] auto_allocate_cidr` that overlaps no subnet.
fn free_block(svc: &NetworkService, taken: &[Cidr]) -> Result<Cidr> {
    let range = Cidr::parse(&svc.settings.auto_allocate_cidr).map_err(|e| {
        NetError::conflict(
            "AutoAllocationFailure",
            format!("[network] auto_allocate_cidr: {e}"),
        )
    })?;
    if range.version != 4 {
        return Err(NetError::conflict(
            "AutoAllocationFailure",
            format!("[network] auto_allocate_cidr {range} is not an IPv4 range"),
        ));
    }
    let len = svc.settings.auto_allocate_prefixlen.max(range.prefix);
    let step = 1u128 << (32 - len as u32);
    let mut addr = range.first();
    while addr + step - 1 <= range.last() {
        let c = Cidr {
            version: 4,
            addr,
            prefix: len,
        };
        if !taken.iter().any(|t| t.overlaps(&c)) {
            return Ok(c);
        }
        addr += step;
    }
    Err(NetError::conflict(
        "AutoAllocationFailure",
        "Unable to provide tenant private network: the auto-allocation range is used up.",
    ))
}

pub(crate) async fn get_topology(
    State(svc): S,
    Caller(ctx): Caller,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    if !ctx.is_admin() && ctx.project_id() != Some(project_id.as_str()) {
        return Err(NetError::policy("rule:get_auto_allocated_topology"));
    }
    let pairs = query_pairs(&raw);
    let dry_run = pairs.iter().any(|(k, v)| k == "fields" && v == "dry-run");
    if let Some((net, _)) = existing_topology(&svc, &project_id).await? {
        if dry_run {
            return Ok(axum::Json(json!({"auto_allocated_topology": {"dry-run": "pass"}})).into_response());
        }
        return Ok(topology(&project_id, &net));
    }
    let ext = default_external(&svc).await?.ok_or_else(no_default)?;
    if dry_run {
        return Ok(axum::Json(json!({"auto_allocated_topology": {"dry-run": "pass"}})).into_response());
    }
    writer(&ctx, "rule:get_auto_allocated_topology")?;
    let ext_id = store::text(&ext, "id").to_string();
    let net_id = with_retries(|| {
        let (svc, ctx, project_id, ext_id) = (svc.clone(), ctx.clone(), project_id.clone(), ext_id.clone());
        async move {
            let mut tx = svc.db.begin_write().await?;
            if let Some(r) = sqlx::query(
                &svc.db
                    .sql("SELECT network_id FROM auto_allocated_topologies WHERE project_id = ?"),
            )
            .bind(&project_id)
            .fetch_optional(&mut *tx)
            .await?
            {
                return Ok(r.try_get::<String, _>("network_id")?);
            }
            let net_id = tessera_types::new_uuid();
            let fields = networks::NewNetwork {
                name: "auto_allocated_network".into(),
                description: String::new(),
                admin_state_up: true,
                shared: false,
                external: false,
                port_security: true,
                is_default: false,
                mtu: svc.settings.global_physnet_mtu,
                az_hints: json!([]),
            };
            networks::insert(&svc, &mut tx, &net_id, &project_id, &Map::new(), &fields).await?;
            let taken: Vec<Cidr> = sqlx::query("SELECT cidr FROM subnets")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .filter_map(|r| r.try_get::<String, _>("cidr").ok())
                .filter_map(|c| Cidr::parse(&c).ok())
                .collect();
            let cidr = free_block(&svc, &taken)?;
            let gw = cidr.default_gateway();
            let sub_id = tessera_types::new_uuid();
            let sub = subnets::doc(
                &sub_id,
                &project_id,
                "auto_allocated_subnet_v4",
                &net_id,
                &cidr,
                gw,
                &cidr.default_pools(gw),
                true,
            );
            subnets::insert(&svc, &mut tx, &sub).await?;
            let router_id = tessera_types::new_uuid();
            let mut m = Map::new();
            m.insert("external_gateway_info".into(), json!({"network_id": ext_id}));
            // The router's gateway is set up as the service would for an admin (SNAT on).
            let mut admin = (*ctx).clone();
            admin.roles.push("admin".into());
            routers::insert(
                &svc,
                &mut tx,
                &admin,
                &router_id,
                &project_id,
                "auto_allocated_router",
                "",
                true,
                &m,
            )
            .await?;
            let gw_ip = gw.map(|g| ipam::format_ip(4, g));
            ports::insert_service_port(
                &svc,
                &mut tx,
                &net_id,
                &project_id,
                &router_id,
                routers::INTERFACE,
                Some(vec![(Some(sub_id), gw_ip)]),
            )
            .await?;
            sqlx::query(&svc.db.sql(
                "INSERT INTO auto_allocated_topologies (project_id, network_id, router_id) VALUES (?, ?, ?)",
            ))
            .bind(&project_id)
            .bind(&net_id)
            .bind(&router_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(project_id = %project_id, network_id = %net_id, "auto-allocated topology created");
            Ok(net_id)
        }
    })
    .await?;
    Ok(topology(&project_id, &net_id))
}

pub(crate) async fn delete_topology(
    State(svc): S,
    Caller(ctx): Caller,
    Path(project_id): Path<String>,
) -> Result<Response> {
    if !ctx.is_admin() && ctx.project_id() != Some(project_id.as_str()) {
        return Err(NetError::policy("rule:delete_auto_allocated_topology"));
    }
    writer(&ctx, "rule:delete_auto_allocated_topology")?;
    let Some((net_id, router_id)) = existing_topology(&svc, &project_id).await? else {
        return Err(NetError::not_found(
            "AutoAllocatedTopologyNotFound",
            format!("Auto-allocated topology of project {project_id} not found"),
        ));
    };
    let mut tx = svc.db.begin_write().await?;
    let users = store::count(
        &svc.db,
        &mut *tx,
        "ports",
        "network_id = ? AND device_owner NOT LIKE 'network:%'",
        &[&net_id],
    )
    .await?;
    if users > 0 {
        return Err(NetError::conflict(
            "NetworkInUse",
            format!("Unable to complete operation on network {net_id}. There are one or more ports still in use on the network."),
        ));
    }
    if let Some(r) = router_id {
        for p in store::select(
            &svc.db,
            &mut *tx,
            "ports",
            "device_id = ?",
            std::slice::from_ref(&r),
        )
        .await?
        {
            ports::remove_port(&svc, &mut tx, store::text(&p, "id")).await?;
        }
        store::delete(&svc.db, &mut tx, "routers", &r).await?;
    }
    networks::purge(&svc, &mut tx, &net_id).await?;
    sqlx::query(
        &svc.db
            .sql("DELETE FROM auto_allocated_topologies WHERE network_id = ?"),
    )
    .bind(&net_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
