//! Network agents: Neutron's `agent` extension (`/v2.0/agents`, admin only) and the calls the agents on the
//! hosts make (Neutron's agent RPC, here as admin/service-only REST calls under `/v2.0/agent-rpc/`): report
//! their state, fetch what their host must wire up (long-polled: the answer comes when something changed),
//! and report ports plugged or gone.
//!
//! A network's DHCP server and a router each live on one agent's host (`agent_bindings`), given to the first
//! agent of the right kind that asks for work, as Neutron's schedulers do with one agent per network/router.

use super::{body_object, only, opt_bool, opt_string, query_pairs, render_list, render_one, with_retries, S};
use crate::error::{NetError, Result};
use crate::store::{self, Doc, Tx};
use crate::NetworkService;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Map, Value};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tessera_http::auth::Caller;
use tessera_types::RequestContext;

pub const L2_AGENT: &str = "Linux bridge agent";
pub const DHCP_AGENT: &str = "DHCP agent";
pub const L3_AGENT: &str = "L3 agent";
const KINDS: &[(&str, &str)] = &[
    (L2_AGENT, "q-agent-notifier"),
    (DHCP_AGENT, "dhcp_agent"),
    (L3_AGENT, "l3_agent"),
];
/// The longest an agent's sync waits for a change.
const MAX_WAIT: Duration = Duration::from_secs(30);

fn admin_only(ctx: &RequestContext, rule: &str) -> Result<()> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(NetError::policy(rule))
    }
}

fn agent_caller(ctx: &RequestContext) -> Result<()> {
    if ctx.is_admin() || ctx.has_role("service") {
        Ok(())
    } else {
        Err(NetError::policy("rule:agent_rpc"))
    }
}

/// Neutron's agent timestamps: `YYYY-MM-DD HH:MM:SS`.
fn agent_time(micros: i64) -> String {
    let s = tessera_types::iso_micros(micros);
    s[..19].replace('T', " ")
}

fn not_found(id: &str) -> NetError {
    NetError::not_found("AgentNotFound", format!("Agent {id} could not be found."))
}

/// Agents with `alive` worked out from their last heartbeat.
async fn load(svc: &NetworkService, where_sql: &str, binds: &[&str]) -> Result<Vec<Doc>> {
    let q = format!("SELECT body, heartbeat_at FROM agents WHERE {where_sql} ORDER BY created_at, id");
    let sql = svc.db.sql(&q);
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(*b);
    }
    let now = tessera_types::now_epoch_micros();
    let mut out = Vec::new();
    for r in query.fetch_all(svc.db.pool()).await? {
        let body = tessera_db::get_text(&r, "body")?;
        let beat: i64 = r.try_get("heartbeat_at")?;
        if let Value::Object(mut d) = serde_json::from_str::<Value>(&body)? {
            d.insert(
                "alive".into(),
                json!(now - beat <= svc.settings.agent_down_time * 1_000_000),
            );
            out.push(d);
        }
    }
    Ok(out)
}

pub(crate) async fn list(State(svc): S, Caller(ctx): Caller, RawQuery(raw): RawQuery) -> Result<Response> {
    admin_only(&ctx, "rule:get_agent")?;
    let docs = load(&svc, "1 = 1", &[]).await?;
    render_list(&svc, "/v2.0/agents", "agents", docs, &query_pairs(&raw))
}

pub(crate) async fn show(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    admin_only(&ctx, "rule:get_agent")?;
    let d = load(&svc, "id = ?", &[&id])
        .await?
        .pop()
        .ok_or_else(|| not_found(&id))?;
    Ok(render_one("agent", d, &query_pairs(&raw), StatusCode::OK))
}

pub(crate) async fn update(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    admin_only(&ctx, "rule:update_agent")?;
    let m = body_object(&body, "agent")?;
    only(&m, &["admin_state_up", "description"])?;
    let admin_state = opt_bool(&m, "admin_state_up")?;
    let description = match m.get("description") {
        Some(Value::Null) => Some(Value::Null),
        Some(_) => opt_string(&m, "description", 255)?.map(Value::from),
        None => None,
    };
    let mut tx = svc.db.begin_write().await?;
    let mut d = store::get(&svc.db, &mut *tx, "agents", &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if let Some(v) = admin_state {
        d.insert("admin_state_up".into(), json!(v));
    }
    if let Some(v) = description {
        d.insert("description".into(), v);
    }
    store::put_body(&svc.db, &mut tx, "agents", &id, &d).await?;
    tx.commit().await?;
    svc.changed();
    let d = load(&svc, "id = ?", &[&id])
        .await?
        .pop()
        .ok_or_else(|| not_found(&id))?;
    Ok(render_one("agent", d, &[], StatusCode::OK))
}

pub(crate) async fn delete(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    admin_only(&ctx, "rule:delete_agent")?;
    let mut tx = svc.db.begin_write().await?;
    if store::delete(&svc.db, &mut tx, "agents", &id).await? == 0 {
        return Err(not_found(&id));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- agent RPC

/// `POST /v2.0/agent-rpc/report_state`: `{"host", "agents": [{"agent_type", "binary", "configurations",
/// "availability_zone", "start_flag"}]}` — each agent's record made or refreshed (its heartbeat).
pub(crate) async fn report_state(State(svc): S, Caller(ctx): Caller, body: Bytes) -> Result<Response> {
    agent_caller(&ctx)?;
    let m = body_object(&body, "report")?;
    let host = m
        .get("host")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| NetError::bad_request("report: host required"))?
        .to_string();
    let agents = m
        .get("agents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ids = Vec::new();
    let mut new_agents = false;
    for a in agents {
        let kind = a["agent_type"].as_str().unwrap_or_default().to_string();
        let Some((_, topic)) = KINDS.iter().find(|(k, _)| *k == kind) else {
            return Err(NetError::bad_request(format!(
                "report: unknown agent_type '{kind}'"
            )));
        };
        // An agent answering for several compute hosts reports an L2 agent for each.
        let host = a["host"]
            .as_str()
            .filter(|h| !h.is_empty())
            .unwrap_or(&host)
            .to_string();
        let (id, made) = with_retries(|| {
            let (svc, host, kind, a) = (svc.clone(), host.clone(), kind.clone(), a.clone());
            async move { upsert(&svc, &host, &kind, topic, &a).await }
        })
        .await?;
        new_agents |= made;
        ids.push(json!({"agent_type": kind, "id": id}));
    }
    // A new agent is a new tunnel peer, or a new home for networks and routers; heartbeats change nothing.
    if new_agents {
        svc.changed();
    }
    Ok(axum::Json(json!({ "agents": ids })).into_response())
}

/// Make or refresh an agent's record; its id, and whether it is new.
async fn upsert(
    svc: &NetworkService,
    host: &str,
    kind: &str,
    topic: &str,
    a: &Value,
) -> Result<(String, bool)> {
    let now = tessera_types::now_epoch_micros();
    let mut tx = svc.db.begin_write().await?;
    let row = sqlx::query(
        &svc.db
            .sql("SELECT id, body FROM agents WHERE agent_type = ? AND host = ?"),
    )
    .bind(kind)
    .bind(host)
    .fetch_optional(&mut *tx)
    .await?;
    let configurations = if a["configurations"].is_object() {
        a["configurations"].clone()
    } else {
        json!({})
    };
    let id = match row {
        Some(r) => {
            let id = tessera_db::get_text(&r, "id")?;
            let mut d: Doc = serde_json::from_str(&tessera_db::get_text(&r, "body")?)?;
            d.insert("configurations".into(), configurations);
            d.insert("heartbeat_timestamp".into(), json!(agent_time(now)));
            if a["start_flag"] == json!(true) {
                d.insert("started_at".into(), json!(agent_time(now)));
            }
            sqlx::query(
                &svc.db
                    .sql("UPDATE agents SET body = ?, heartbeat_at = ? WHERE id = ?"),
            )
            .bind(serde_json::to_string(&d)?)
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            (id, false)
        }
        None => {
            let id = tessera_types::new_uuid();
            let t = agent_time(now);
            let d = json!({
                "id": id, "agent_type": kind, "host": host, "topic": topic,
                "binary": a["binary"].as_str().unwrap_or("tessera-network-agent"),
                "admin_state_up": true, "availability_zone": a["availability_zone"].as_str().map(|_| a["availability_zone"].clone()).unwrap_or(Value::Null),
                "configurations": configurations, "created_at": t, "started_at": t, "heartbeat_timestamp": t,
                "description": null, "resources_synced": null,
            });
            sqlx::query(&svc.db.sql(
                "INSERT INTO agents (id, agent_type, host, body, heartbeat_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            ))
            .bind(&id)
            .bind(kind)
            .bind(host)
            .bind(d.to_string())
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tracing::info!(%host, agent_type = %kind, "network agent registered");
            (id, true)
        }
    };
    tx.commit().await?;
    Ok(id)
}

/// `POST /v2.0/agent-rpc/port_status`: `{"host", "ports": {"<id>": "ACTIVE" | "DOWN"}}`. A server's port
/// turning ACTIVE tells the Compute service `network-vif-plugged`; one going DOWN, `network-vif-unplugged`.
pub(crate) async fn port_status(State(svc): S, Caller(ctx): Caller, body: Bytes) -> Result<Response> {
    agent_caller(&ctx)?;
    let m = body_object(&body, "status")?;
    let ports: Map<String, Value> = m
        .get("ports")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut changed = Vec::new();
    for (id, st) in &ports {
        let st = match st.as_str() {
            Some(s @ ("ACTIVE" | "DOWN" | "BUILD" | "ERROR")) => s.to_string(),
            _ => return Err(NetError::bad_request(format!("port {id}: invalid status {st}"))),
        };
        let mut tx = svc.db.begin_write().await?;
        let Some(mut d) = store::get(&svc.db, &mut *tx, "ports", id).await? else {
            continue;
        };
        if store::text(&d, "status") == st {
            continue;
        }
        let was = store::text(&d, "status").to_string();
        d.insert("status".into(), json!(st));
        store::touch(&mut d);
        store::put_body(&svc.db, &mut tx, "ports", id, &d).await?;
        tx.commit().await?;
        tracing::info!(port_id = %id, from = %was, to = %st, "port status");
        changed.push((d, was, st));
    }
    if !changed.is_empty() {
        svc.changed();
    }
    for (d, was, st) in &changed {
        if st == "ACTIVE" {
            svc.notify_port(d, "network-vif-plugged");
        } else if was == "ACTIVE" {
            svc.notify_port(d, "network-vif-unplugged");
        }
    }
    Ok(axum::Json(json!({"changed": changed.len()})).into_response())
}

/// `POST /v2.0/agent-rpc/sync`: `{"host", "since", "wait", "l2", "dhcp", "l3"}` — once the change counter
/// passes `since` (or `wait` seconds went by), everything the host's agents wire up: the ports bound to it
/// with their networks and security groups, the networks it serves DHCP for, the routers it hosts, and the
/// other hosts' tunnel endpoints.
pub(crate) async fn sync(State(svc): S, Caller(ctx): Caller, body: Bytes) -> Result<Response> {
    agent_caller(&ctx)?;
    let m = body_object(&body, "sync")?;
    let host = m
        .get("host")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| NetError::bad_request("sync: host required"))?
        .to_string();
    let since = m.get("since").and_then(Value::as_u64);
    let wait = Duration::from_secs(m.get("wait").and_then(Value::as_u64).unwrap_or(0)).min(MAX_WAIT);
    let flag = |k: &str| m.get(k).and_then(Value::as_bool).unwrap_or(false);
    let mut rx = svc.watch_changes();
    if let Some(since) = since {
        let _ = tokio::time::timeout(wait, rx.wait_for(|n| *n > since)).await;
    }
    let revision = *rx.borrow();
    // A host may answer for several compute hosts' ports (all-in-one runs several on one machine).
    let mut l2_hosts: Vec<String> = m
        .get("hosts")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    if l2_hosts.is_empty() {
        l2_hosts.push(host.clone());
    }
    let l2 = if flag("l2") { l2_hosts } else { Vec::new() };
    let state = host_state(&svc, &host, &l2, flag("dhcp"), flag("l3")).await?;
    let mut out = state;
    out.insert("revision".into(), json!(revision));
    Ok(axum::Json(Value::Object(out)).into_response())
}

/// The hosts with a live, enabled agent of a kind.
async fn live_hosts(svc: &NetworkService, agent_type: &str) -> Result<BTreeSet<String>> {
    Ok(load(svc, "agent_type = ?", &[agent_type])
        .await?
        .into_iter()
        .filter(|a| a["alive"] == json!(true) && a["admin_state_up"] != json!(false))
        .filter_map(|a| a["host"].as_str().map(str::to_string))
        .collect())
}

/// The host a network's DHCP server or a router lives on: the first live agent that asked, kept while it
/// lives; a dead agent's networks and routers move to the next one that asks.
async fn bind_to(
    svc: &NetworkService,
    kind: &str,
    live: &BTreeSet<String>,
    id: &str,
    host: &str,
) -> Result<bool> {
    let current: Option<String> = sqlx::query(
        &svc.db
            .sql("SELECT host FROM agent_bindings WHERE resource_type = ? AND resource_id = ?"),
    )
    .bind(kind)
    .bind(id)
    .fetch_optional(svc.db.pool())
    .await?
    .map(|r| tessera_db::get_text(&r, "host"))
    .transpose()?;
    match current {
        Some(h) if h == host => Ok(true),
        Some(h) => {
            if live.contains(&h) {
                return Ok(false);
            }
            let mut tx = svc.db.begin_write().await?;
            let n = sqlx::query(&svc.db.sql(
                "UPDATE agent_bindings SET host = ? WHERE resource_type = ? AND resource_id = ? AND host = ?",
            ))
            .bind(host)
            .bind(kind)
            .bind(id)
            .bind(&h)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            if n == 1 {
                tracing::warn!(resource = %kind, %id, from = %h, to = %host, "agent down: moved to another host");
            }
            Ok(n == 1)
        }
        None => {
            let mut tx = svc.db.begin_write().await?;
            let r = sqlx::query(
                &svc.db
                    .sql("INSERT INTO agent_bindings (resource_type, resource_id, host) VALUES (?, ?, ?)"),
            )
            .bind(kind)
            .bind(id)
            .bind(host)
            .execute(&mut *tx)
            .await;
            match r {
                Ok(_) => {
                    tx.commit().await?;
                    Ok(true)
                }
                // Another agent took it first.
                Err(_) => Ok(false),
            }
        }
    }
}

/// The documents of `table` whose `column` is one of `values`, in one query.
async fn select_in(
    svc: &NetworkService,
    table: &str,
    column: &str,
    values: &BTreeSet<String>,
) -> Result<Vec<Doc>> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let w = format!("{column} IN ({})", vec!["?"; values.len()].join(", "));
    let binds: Vec<String> = values.iter().cloned().collect();
    store::select(&svc.db, svc.db.pool(), table, &w, &binds).await
}

async fn ports_where(svc: &NetworkService, where_sql: &str, binds: &[String]) -> Result<Vec<Doc>> {
    store::select(&svc.db, svc.db.pool(), "ports", where_sql, binds).await
}

/// What one host wires up (see [`sync`]).
async fn host_state(
    svc: &NetworkService,
    host: &str,
    l2: &[String],
    dhcp: bool,
    l3: bool,
) -> Result<Map<String, Value>> {
    let db = &svc.db;
    let mut net_ids: BTreeSet<String> = BTreeSet::new();
    let mut subnet_ids: BTreeSet<String> = BTreeSet::new();
    let ports = if l2.is_empty() {
        Vec::new()
    } else {
        let w = format!(
            "binding_host IN ({}) AND device_owner <> 'network:dhcp'",
            vec!["?"; l2.len()].join(", ")
        );
        ports_where(svc, &w, l2).await?
    };
    for p in &ports {
        net_ids.insert(store::text(p, "network_id").to_string());
        for f in p["fixed_ips"].as_array().into_iter().flatten() {
            subnet_ids.insert(f["subnet_id"].as_str().unwrap_or("").to_string());
        }
    }
    // DHCP: every network with a DHCP-enabled subnet, one agent each.
    let mut dhcp_nets = Vec::new();
    if dhcp {
        sqlx::query(&db.sql(
            "DELETE FROM agent_bindings WHERE resource_type = 'network' AND resource_id NOT IN (SELECT id FROM networks)",
        ))
        .execute(db.pool())
        .await?;
        let subnets = store::select(db, db.pool(), "subnets", "1 = 1", &[]).await?;
        let mut by_net: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in &subnets {
            if s["enable_dhcp"] == json!(true) {
                by_net
                    .entry(store::text(s, "network_id").to_string())
                    .or_default()
                    .push(store::text(s, "id").to_string());
            }
        }
        let live = live_hosts(svc, DHCP_AGENT).await?;
        for (net, sids) in by_net {
            if !bind_to(svc, "network", &live, &net, host).await? {
                continue;
            }
            let dhcp_port = with_retries(|| {
                let (svc2, net, sids, host) = (svc, net.clone(), sids.clone(), host.to_string());
                async move { dhcp_port(svc2, &net, &sids, &host).await }
            })
            .await?;
            let Some(dhcp_port) = dhcp_port else { continue };
            let all = ports_where(svc, "network_id = ?", std::slice::from_ref(&net)).await?;
            let hosts: Vec<Value> = all
                .iter()
                .filter(|p| store::text(p, "device_owner") != "network:dhcp")
                .map(|p| {
                    json!({"id": p["id"], "mac_address": p["mac_address"], "fixed_ips": p["fixed_ips"],
                           "extra_dhcp_opts": p["extra_dhcp_opts"], "device_owner": p["device_owner"]})
                })
                .collect();
            for s in &sids {
                subnet_ids.insert(s.clone());
            }
            net_ids.insert(net.clone());
            dhcp_nets.push(json!({"network_id": net, "port": Value::Object(dhcp_port), "hosts": hosts}));
        }
    }
    let mut routers = Vec::new();
    if l3 {
        sqlx::query(&db.sql(
            "DELETE FROM agent_bindings WHERE resource_type = 'router' AND resource_id NOT IN (SELECT id FROM routers)",
        ))
        .execute(db.pool())
        .await?;
        let live = live_hosts(svc, L3_AGENT).await?;
        for r in store::select(db, db.pool(), "routers", "1 = 1", &[]).await? {
            let id = store::text(&r, "id").to_string();
            if !bind_to(svc, "router", &live, &id, host).await? {
                continue;
            }
            let rports = ports_where(svc, "device_id = ?", std::slice::from_ref(&id)).await?;
            for p in &rports {
                net_ids.insert(store::text(p, "network_id").to_string());
                for f in p["fixed_ips"].as_array().into_iter().flatten() {
                    subnet_ids.insert(f["subnet_id"].as_str().unwrap_or("").to_string());
                }
            }
            let fips = store::select(
                db,
                db.pool(),
                "floatingips",
                "router_id = ?",
                std::slice::from_ref(&id),
            )
            .await?;
            routers.push(json!({"router": Value::Object(r), "ports": rports, "floatingips": fips}));
        }
    }
    // The networks and subnets all of that sits on.
    let keyed = |docs: Vec<Doc>, key: &str| -> Map<String, Value> {
        docs.into_iter()
            .map(|d| (store::text(&d, key).to_string(), Value::Object(d)))
            .collect()
    };
    let networks = keyed(select_in(svc, "networks", "id", &net_ids).await?, "id");
    let subnets = keyed(select_in(svc, "subnets", "id", &subnet_ids).await?, "id");
    // Security groups of the bound ports (their rules), and the addresses of the groups the rules name as
    // remotes.
    let groups: BTreeSet<String> = ports
        .iter()
        .flat_map(|p| p["security_groups"].as_array().cloned().unwrap_or_default())
        .filter_map(|g| g.as_str().map(str::to_string))
        .collect();
    let mut security_groups = Map::new();
    for g in &groups {
        security_groups.insert(g.clone(), json!({"rules": []}));
    }
    let mut remotes: BTreeSet<String> = BTreeSet::new();
    for r in select_in(svc, "security_group_rules", "security_group_id", &groups).await? {
        if let Some(rg) = r["remote_group_id"].as_str() {
            remotes.insert(rg.to_string());
        }
        let g = store::text(&r, "security_group_id").to_string();
        if let Some(Value::Array(rules)) = security_groups.get_mut(&g).map(|v| &mut v["rules"]) {
            rules.push(Value::Object(r));
        }
    }
    let mut members = Map::new();
    for g in &remotes {
        let rows = sqlx::query(&db.sql(
            "SELECT ip_address FROM ip_allocations WHERE port_id IN \
             (SELECT port_id FROM port_security_groups WHERE security_group_id = ?) ORDER BY ip_address",
        ))
        .bind(g)
        .fetch_all(db.pool())
        .await?;
        let ips: Vec<String> = rows
            .iter()
            .filter_map(|r| tessera_db::get_text(r, "ip_address").ok())
            .collect();
        members.insert(g.clone(), json!(ips));
    }
    // Other hosts' tunnel endpoints (VXLAN between the hosts' bridges).
    let peers: Vec<Value> = load(svc, "agent_type = ?", &[L2_AGENT])
        .await?
        .into_iter()
        .filter(|a| a["alive"] == json!(true) && a["host"].as_str() != Some(host))
        .filter(|a| !l2.iter().any(|h| a["host"].as_str() == Some(h.as_str())))
        .filter_map(|a| {
            a["configurations"]["tunnel_ip"]
                .as_str()
                .map(|ip| json!({"host": a["host"], "tunnel_ip": ip}))
        })
        .collect();
    let mut out = Map::new();
    out.insert("ports".into(), json!(ports));
    out.insert("dhcp".into(), json!(dhcp_nets));
    out.insert("routers".into(), json!(routers));
    out.insert("networks".into(), Value::Object(networks));
    out.insert("subnets".into(), Value::Object(subnets));
    out.insert("security_groups".into(), Value::Object(security_groups));
    out.insert("remote_groups".into(), Value::Object(members));
    out.insert("peers".into(), json!(peers));
    Ok(out)
}

/// The network's DHCP port (made when missing), holding an address in each DHCP subnet and bound to `host`.
async fn dhcp_port(svc: &NetworkService, net: &str, subnets: &[String], host: &str) -> Result<Option<Doc>> {
    let mut tx: Tx = svc.db.begin_write().await?;
    let Some(n) = store::get(&svc.db, &mut *tx, "networks", net).await? else {
        return Ok(None);
    };
    let existing = store::select(
        &svc.db,
        &mut *tx,
        "ports",
        "network_id = ? AND device_owner = 'network:dhcp'",
        &[net.to_string()],
    )
    .await?;
    let mut d = match existing.into_iter().next() {
        Some(d) => d,
        None => {
            let device = format!("dhcp-{host}-{net}");
            let device = &device[..device.len().min(255)];
            let wanted = subnets.iter().map(|s| (Some(s.clone()), None)).collect();
            let d = super::ports::insert_service_port(
                svc,
                &mut tx,
                net,
                store::text(&n, "project_id"),
                device,
                "network:dhcp",
                Some(wanted),
            )
            .await?;
            tracing::info!(network_id = %net, port_id = %store::text(&d, "id"), %host, "DHCP port created");
            d
        }
    };
    let changed = super::ports::reshape_service_port(svc, &mut tx, &mut d, subnets, host).await?;
    tx.commit().await?;
    if changed {
        svc.changed();
    }
    Ok(Some(d))
}
