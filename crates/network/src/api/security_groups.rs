//! `/v2.0/security-groups` and `/v2.0/security-group-rules`. Every project gets a `default` group the first
//! time it uses security groups or ports, as Neutron does: egress open, ingress from members of the group.

use super::{
    body_object, only, opt_bool, opt_string, owner_of_new, owns, query_pairs, render_list, render_one,
    with_retries, writer, S,
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
use sqlx::Row;
use tessera_http::auth::Caller;
use tessera_types::RequestContext;

const SG_CREATE: &[&str] = &["name", "description", "tenant_id", "project_id", "stateful"];
const SG_UPDATE: &[&str] = &["name", "description", "stateful"];
const RULE_CREATE: &[&str] = &[
    "security_group_id",
    "direction",
    "ethertype",
    "protocol",
    "port_range_min",
    "port_range_max",
    "remote_ip_prefix",
    "remote_group_id",
    "remote_address_group_id",
    "description",
    "tenant_id",
    "project_id",
];

/// IANA numbers of the protocol names Neutron accepts.
const PROTOCOLS: &[(&str, u8)] = &[
    ("ah", 51),
    ("dccp", 33),
    ("egp", 8),
    ("esp", 50),
    ("gre", 47),
    ("hopopt", 0),
    ("icmp", 1),
    ("igmp", 2),
    ("ip", 0),
    ("ipip", 4),
    ("ipv6-encap", 41),
    ("ipv6-frag", 44),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("ipv6-nonxt", 59),
    ("ipv6-opts", 60),
    ("ipv6-route", 43),
    ("ospf", 89),
    ("pgm", 113),
    ("rsvp", 46),
    ("sctp", 132),
    ("tcp", 6),
    ("udp", 17),
    ("udplite", 136),
    ("vrrp", 112),
];

/// Protocols whose rules take port ranges.
const PORT_PROTOCOLS: &[u8] = &[6, 17, 33, 132, 136];

fn sg_not_visible(ctx: &RequestContext, d: &Doc) -> bool {
    !owns(ctx, d)
}

/// The project's `default` group, created (with its four rules) if it does not exist yet.
pub(crate) async fn ensure_default(svc: &NetworkService, project_id: &str) -> Result<String> {
    if let Some(r) = sqlx::query(
        &svc.db
            .sql("SELECT security_group_id FROM default_security_groups WHERE project_id = ?"),
    )
    .bind(project_id)
    .fetch_optional(svc.db.pool())
    .await?
    {
        return Ok(r.try_get("security_group_id")?);
    }
    with_retries(|| async {
        let mut tx = svc.db.begin_write().await?;
        if let Some(r) = sqlx::query(
            &svc.db
                .sql("SELECT security_group_id FROM default_security_groups WHERE project_id = ?"),
        )
        .bind(project_id)
        .fetch_optional(&mut *tx)
        .await?
        {
            return Ok(r.try_get("security_group_id")?);
        }
        let id = tessera_types::new_uuid();
        insert_group(
            svc,
            &mut tx,
            &id,
            project_id,
            "default",
            "Default security group",
            true,
        )
        .await?;
        for ethertype in ["IPv4", "IPv6"] {
            insert_rule(
                svc,
                &mut tx,
                &rule_doc(&id, project_id, "egress", ethertype, None),
                None,
            )
            .await?;
            insert_rule(
                svc,
                &mut tx,
                &rule_doc(&id, project_id, "ingress", ethertype, Some(&id)),
                Some(&id),
            )
            .await?;
        }
        sqlx::query(
            &svc.db
                .sql("INSERT INTO default_security_groups (project_id, security_group_id) VALUES (?, ?)"),
        )
        .bind(project_id)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(project_id, security_group_id = %id, "default security group created");
        Ok(id)
    })
    .await
}

async fn insert_group(
    svc: &NetworkService,
    tx: &mut Tx,
    id: &str,
    project_id: &str,
    name: &str,
    description: &str,
    stateful: bool,
) -> Result<Doc> {
    let mut d = store::new_doc(id, project_id);
    d.insert("name".into(), json!(name));
    d.insert("description".into(), json!(description));
    d.insert("stateful".into(), json!(stateful));
    d.insert("shared".into(), json!(false));
    sqlx::query(
        &svc.db.sql(
            "INSERT INTO security_groups (id, project_id, name, body, created_at) VALUES (?, ?, ?, ?, ?)",
        ),
    )
    .bind(id)
    .bind(project_id)
    .bind(name)
    .bind(serde_json::to_string(&d)?)
    .bind(tessera_types::now_epoch_micros())
    .execute(&mut **tx)
    .await?;
    Ok(d)
}

/// A rule open to everything of one direction and family (optionally from a remote group).
fn rule_doc(sg: &str, project_id: &str, direction: &str, ethertype: &str, remote_group: Option<&str>) -> Doc {
    let mut d = store::new_doc(&tessera_types::new_uuid(), project_id);
    d.remove("tags");
    for (k, v) in [
        ("security_group_id", json!(sg)),
        ("direction", json!(direction)),
        ("ethertype", json!(ethertype)),
        ("protocol", Value::Null),
        ("port_range_min", Value::Null),
        ("port_range_max", Value::Null),
        ("remote_ip_prefix", Value::Null),
        ("normalized_cidr", Value::Null),
        ("remote_group_id", json!(remote_group)),
        ("remote_address_group_id", Value::Null),
        ("description", json!("")),
    ] {
        d.insert(k.into(), v);
    }
    d
}

/// What makes two rules the same rule.
fn fingerprint(d: &Doc) -> String {
    let proto = match d.get("protocol").and_then(Value::as_str) {
        None => "any".to_string(),
        Some(p) => protocol_number(p)
            .map(|n| n.to_string())
            .unwrap_or_else(|| p.to_string()),
    };
    let n = |k: &str| {
        d.get(k)
            .and_then(Value::as_i64)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    format!(
        "{}|{}|{}|{}|{}|{}|{}",
        store::text(d, "direction"),
        store::text(d, "ethertype"),
        proto,
        n("port_range_min"),
        n("port_range_max"),
        store::text(d, "normalized_cidr"),
        store::text(d, "remote_group_id")
    )
}

async fn insert_rule(svc: &NetworkService, tx: &mut Tx, d: &Doc, remote_group: Option<&str>) -> Result<()> {
    sqlx::query(&svc.db.sql(
        "INSERT INTO security_group_rules (id, security_group_id, project_id, remote_group_id, fingerprint, body, \
         created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(store::text(d, "id"))
    .bind(store::text(d, "security_group_id"))
    .bind(store::text(d, "project_id"))
    .bind(remote_group)
    .bind(fingerprint(d))
    .bind(serde_json::to_string(d)?)
    .bind(tessera_types::now_epoch_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn protocol_number(p: &str) -> Option<u8> {
    PROTOCOLS
        .iter()
        .find(|(n, _)| *n == p)
        .map(|(_, v)| *v)
        .or_else(|| p.parse::<u8>().ok())
}

async fn rules_of(
    svc: &NetworkService,
    groups: &[String],
) -> Result<std::collections::HashMap<String, Vec<Value>>> {
    let mut out: std::collections::HashMap<String, Vec<Value>> = std::collections::HashMap::new();
    for chunk in groups.chunks(200) {
        let w = format!("security_group_id IN ({})", vec!["?"; chunk.len()].join(", "));
        for r in store::select(&svc.db, svc.db.pool(), "security_group_rules", &w, chunk).await? {
            out.entry(store::text(&r, "security_group_id").to_string())
                .or_default()
                .push(Value::Object(r));
        }
    }
    Ok(out)
}

pub(crate) async fn list(State(svc): S, Caller(ctx): Caller, RawQuery(raw): RawQuery) -> Result<Response> {
    if let Some(p) = ctx.project_id() {
        ensure_default(&svc, p).await?;
    }
    let pairs = query_pairs(&raw);
    let (w, b) = super::own_rows(&ctx);
    let mut docs = store::select(&svc.db, svc.db.pool(), "security_groups", &w, &b).await?;
    let ids: Vec<String> = docs.iter().map(|d| store::text(d, "id").to_string()).collect();
    let mut rules = rules_of(&svc, &ids).await?;
    for d in docs.iter_mut() {
        let r = rules.remove(store::text(d, "id")).unwrap_or_default();
        d.insert("security_group_rules".into(), Value::Array(r));
    }
    render_list(&svc, "/v2.0/security-groups", "security_groups", docs, &pairs)
}

pub(crate) async fn get_visible(svc: &NetworkService, ctx: &RequestContext, id: &str) -> Result<Doc> {
    match store::get(&svc.db, svc.db.pool(), "security_groups", id).await? {
        Some(d) if !sg_not_visible(ctx, &d) => Ok(d),
        _ => Err(NetError::sg_not_found(id)),
    }
}

async fn with_rules(svc: &NetworkService, mut d: Doc) -> Result<Doc> {
    let id = store::text(&d, "id").to_string();
    let r = rules_of(svc, std::slice::from_ref(&id))
        .await?
        .remove(&id)
        .unwrap_or_default();
    d.insert("security_group_rules".into(), Value::Array(r));
    Ok(d)
}

pub(crate) async fn show(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let d = get_visible(&svc, &ctx, &id).await?;
    Ok(render_one(
        "security_group",
        with_rules(&svc, d).await?,
        &query_pairs(&raw),
        StatusCode::OK,
    ))
}

pub(crate) async fn create(State(svc): S, Caller(ctx): Caller, body: Bytes) -> Result<Response> {
    writer(&ctx, "rule:create_security_group")?;
    let m = body_object(&body, "security_group")?;
    only(&m, SG_CREATE)?;
    let owner = owner_of_new(&ctx, &m, "create_security_group:tenant_id")?;
    let name = opt_string(&m, "name", 255)?.unwrap_or_default();
    if name == "default" {
        return Err(NetError::conflict(
            "SecurityGroupDefaultAlreadyExists",
            "Default security group already exists.",
        ));
    }
    let description = opt_string(&m, "description", 255)?.unwrap_or_default();
    let stateful = opt_bool(&m, "stateful")?.unwrap_or(true);
    ensure_default(&svc, &owner).await?;
    let id = tessera_types::new_uuid();
    let mut tx = svc.db.begin_write().await?;
    super::quotas::check(&svc, &mut tx, &owner, "security_group", 1).await?;
    let d = insert_group(&svc, &mut tx, &id, &owner, &name, &description, stateful).await?;
    // New groups let everything out, nothing in.
    for ethertype in ["IPv4", "IPv6"] {
        insert_rule(
            &svc,
            &mut tx,
            &rule_doc(&id, &owner, "egress", ethertype, None),
            None,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(render_one(
        "security_group",
        with_rules(&svc, d).await?,
        &[],
        StatusCode::CREATED,
    ))
}

async fn is_default(svc: &NetworkService, id: &str) -> Result<bool> {
    Ok(store::count(
        &svc.db,
        svc.db.pool(),
        "default_security_groups",
        "security_group_id = ?",
        &[id],
    )
    .await?
        > 0)
}

pub(crate) async fn update(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let m = body_object(&body, "security_group")?;
    only(&m, SG_UPDATE)?;
    let mut d = get_visible(&svc, &ctx, &id).await?;
    writer(&ctx, "rule:update_security_group")?;
    if let Some(name) = opt_string(&m, "name", 255)? {
        if is_default(&svc, &id).await? && name != "default" {
            return Err(NetError::conflict(
                "SecurityGroupCannotUpdateDefault",
                "Updating default security group not allowed.",
            ));
        }
        if name == "default" && store::text(&d, "name") != "default" {
            return Err(NetError::conflict(
                "SecurityGroupDefaultAlreadyExists",
                "Default security group already exists.",
            ));
        }
        d.insert("name".into(), json!(name));
    }
    if let Some(v) = opt_string(&m, "description", 255)? {
        d.insert("description".into(), json!(v));
    }
    if let Some(v) = opt_bool(&m, "stateful")? {
        d.insert("stateful".into(), json!(v));
    }
    store::touch(&mut d);
    let mut tx = svc.db.begin_write().await?;
    sqlx::query(
        &svc.db
            .sql("UPDATE security_groups SET name = ?, body = ? WHERE id = ?"),
    )
    .bind(store::text(&d, "name"))
    .bind(serde_json::to_string(&d)?)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(render_one(
        "security_group",
        with_rules(&svc, d).await?,
        &[],
        StatusCode::OK,
    ))
}

pub(crate) async fn delete(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    get_visible(&svc, &ctx, &id).await?;
    writer(&ctx, "rule:delete_security_group")?;
    if is_default(&svc, &id).await? && !ctx.is_admin() {
        return Err(NetError::conflict(
            "SecurityGroupCannotRemoveDefault",
            "Insufficient rights for removing default security group.",
        ));
    }
    let mut tx = svc.db.begin_write().await?;
    if store::count(
        &svc.db,
        &mut *tx,
        "port_security_groups",
        "security_group_id = ?",
        &[&id],
    )
    .await?
        > 0
    {
        return Err(NetError::conflict(
            "SecurityGroupInUse",
            format!("Security Group {id} in use."),
        ));
    }
    for q in ["DELETE FROM security_group_rules WHERE security_group_id = ? OR remote_group_id = ?"] {
        sqlx::query(&svc.db.sql(q))
            .bind(&id)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        &svc.db
            .sql("DELETE FROM default_security_groups WHERE security_group_id = ?"),
    )
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    store::delete(&svc.db, &mut tx, "security_groups", &id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- rules

pub(crate) async fn list_rules(
    State(svc): S,
    Caller(ctx): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    if let Some(p) = ctx.project_id() {
        ensure_default(&svc, p).await?;
    }
    let pairs = query_pairs(&raw);
    let (w, b) = if ctx.is_admin() {
        ("1 = 1".to_string(), Vec::new())
    } else {
        let p = ctx.project_id().unwrap_or("").to_string();
        (
            "(project_id = ? OR security_group_id IN (SELECT id FROM security_groups WHERE project_id = ?))"
                .to_string(),
            vec![p.clone(), p],
        )
    };
    let docs = store::select(&svc.db, svc.db.pool(), "security_group_rules", &w, &b).await?;
    render_list(
        &svc,
        "/v2.0/security-group-rules",
        "security_group_rules",
        docs,
        &pairs,
    )
}

async fn get_rule(svc: &NetworkService, ctx: &RequestContext, id: &str) -> Result<Doc> {
    let r = store::get(&svc.db, svc.db.pool(), "security_group_rules", id)
        .await?
        .ok_or_else(|| NetError::sg_rule_not_found(id))?;
    if owns(ctx, &r) {
        return Ok(r);
    }
    match store::get(
        &svc.db,
        svc.db.pool(),
        "security_groups",
        store::text(&r, "security_group_id"),
    )
    .await?
    {
        Some(g) if owns(ctx, &g) => Ok(r),
        _ => Err(NetError::sg_rule_not_found(id)),
    }
}

pub(crate) async fn show_rule(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let r = get_rule(&svc, &ctx, &id).await?;
    Ok(render_one(
        "security_group_rule",
        r,
        &query_pairs(&raw),
        StatusCode::OK,
    ))
}

fn port_value(m: &Map<String, Value>, key: &str) -> Result<Option<i64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .map(Some)
            .ok_or_else(|| NetError::invalid_input(format!("'{v}' is not an integer"))),
    }
}

pub(crate) async fn create_rule(State(svc): S, Caller(ctx): Caller, body: Bytes) -> Result<Response> {
    writer(&ctx, "rule:create_security_group_rule")?;
    let m = body_object(&body, "security_group_rule")?;
    only(&m, RULE_CREATE)?;
    let sg_id = match m.get("security_group_id").and_then(Value::as_str) {
        Some(s) => s.to_string(),
        None => {
            return Err(NetError::bad_request(
                "Failed to parse request. Required attribute 'security_group_id' not specified",
            ))
        }
    };
    let direction = match m.get("direction").and_then(Value::as_str) {
        Some(d @ ("ingress" | "egress")) => d.to_string(),
        Some(d) => {
            return Err(NetError::invalid_input(format!(
                "{d} is not in ['ingress', 'egress']"
            )))
        }
        None => {
            return Err(NetError::bad_request(
                "Failed to parse request. Required attribute 'direction' not specified",
            ))
        }
    };
    let ethertype = match m.get("ethertype") {
        None | Some(Value::Null) => "IPv4".to_string(),
        Some(Value::String(e)) if e.eq_ignore_ascii_case("ipv4") => "IPv4".into(),
        Some(Value::String(e)) if e.eq_ignore_ascii_case("ipv6") => "IPv6".into(),
        Some(v) => {
            return Err(NetError::bad(
                StatusCode::BAD_REQUEST,
                "SecurityGroupRuleInvalidEtherType",
                format!(
                "Security group rule for ethertype '{v}' not supported. Allowed values are ['IPv4', 'IPv6']."
            ),
            ))
        }
    };
    let protocol = match m.get("protocol") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if p.is_empty() || p == "any" => None,
        Some(v) => {
            let p = match v {
                Value::String(s) => s.to_ascii_lowercase(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            if protocol_number(&p).is_none() {
                return Err(NetError::bad(
                    StatusCode::BAD_REQUEST,
                    "SecurityGroupRuleInvalidProtocol",
                    format!(
                        "Security group rule protocol {p} not supported. Only protocol values [{}] and integer representations [0 to 255] are supported.",
                        PROTOCOLS.iter().map(|(n, _)| format!("'{n}'")).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            Some(p)
        }
    };
    let (min, max) = (
        port_value(&m, "port_range_min")?,
        port_value(&m, "port_range_max")?,
    );
    let number = protocol.as_deref().and_then(protocol_number);
    match number {
        _ if min.is_none() && max.is_none() => {}
        None => {
            return Err(NetError::bad(
                StatusCode::BAD_REQUEST,
                "SecurityGroupProtocolRequiredWithPorts",
                "Must also specify protocol if port range is given.",
            ))
        }
        Some(n) if PORT_PROTOCOLS.contains(&n) => {
            if let Some(v) = [min, max]
                .into_iter()
                .flatten()
                .find(|v| !(1..=65535).contains(v))
            {
                return Err(NetError::bad(
                    StatusCode::BAD_REQUEST,
                    "SecurityGroupInvalidPortValue",
                    format!("Invalid value for port {v}"),
                ));
            }
            if !matches!((min, max), (Some(lo), Some(hi)) if lo <= hi) {
                return Err(NetError::bad(
                    StatusCode::BAD_REQUEST,
                    "SecurityGroupInvalidPortRange",
                    "For TCP/UDP protocols, port_range_min must be <= port_range_max",
                ));
            }
        }
        Some(1) | Some(58) => {
            for (v, what) in [(min, "type (port_range_min)"), (max, "code (port_range_max)")] {
                if let Some(v) = v {
                    if !(0..=255).contains(&v) {
                        return Err(NetError::bad(
                            StatusCode::BAD_REQUEST,
                            "SecurityGroupInvalidIcmpValue",
                            format!("Invalid value for ICMP {what}: {v}. It must be 0 to 255."),
                        ));
                    }
                }
            }
            if min.is_none() && max.is_some() {
                return Err(NetError::bad(
                    StatusCode::BAD_REQUEST,
                    "SecurityGroupMissingIcmpType",
                    format!("ICMP code (port-range-max) {} is provided but ICMP type (port-range-min) is missing.", max.unwrap_or(0)),
                ));
            }
        }
        Some(_) => {
            return Err(NetError::invalid_input(
                "Port range is not allowed for this protocol",
            ))
        }
    }
    let remote_group = m
        .get("remote_group_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    let prefix = match m.get("remote_ip_prefix") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(p.clone()),
        Some(v) => return Err(NetError::invalid_input(format!("'{v}' is not a valid IP prefix"))),
    };
    if remote_group.is_some() && prefix.is_some() {
        return Err(NetError::bad(
            StatusCode::BAD_REQUEST,
            "SecurityGroupRemoteGroupAndRemoteIpPrefix",
            "Only remote_ip_prefix or remote_group_id may be provided.",
        ));
    }
    let normalized = match &prefix {
        None => None,
        Some(p) => {
            let with_len = if p.contains('/') {
                p.clone()
            } else {
                let bits = if p.contains(':') { 128 } else { 32 };
                format!("{p}/{bits}")
            };
            let (addr, len) = with_len.split_once('/').unwrap_or((&with_len, ""));
            let (version, a) = ipam::parse_ip(addr)
                .ok_or_else(|| NetError::invalid_input(format!("'{p}' is not a valid IP prefix")))?;
            let len: u8 = len
                .parse()
                .map_err(|_| NetError::invalid_input(format!("'{p}' is not a valid IP prefix")))?;
            let max = if version == 4 { 32 } else { 128 };
            if len > max {
                return Err(NetError::invalid_input(format!("'{p}' is not a valid IP prefix")));
            }
            let host = max - len;
            let masked = if host >= 128 { 0 } else { a >> host << host };
            let c = Cidr::parse(&format!("{}/{len}", ipam::format_ip(version, masked)))
                .map_err(NetError::invalid_input)?;
            if (version == 4) != (ethertype == "IPv4") {
                return Err(NetError::bad(
                    StatusCode::BAD_REQUEST,
                    "SecurityGroupRuleParameterConflict",
                    format!("Conflicting value ethertype {ethertype} for CIDR {p}"),
                ));
            }
            Some(c.to_string())
        }
    };
    let sg = get_visible(&svc, &ctx, &sg_id).await?;
    if let Some(rg) = &remote_group {
        get_visible(&svc, &ctx, rg).await?;
    }
    let owner = store::text(&sg, "project_id").to_string();
    let _ = owner_of_new(&ctx, &m, "create_security_group_rule:tenant_id")?;
    let mut d = rule_doc(&sg_id, &owner, &direction, &ethertype, remote_group.as_deref());
    d.insert("protocol".into(), json!(protocol));
    d.insert("port_range_min".into(), json!(min));
    d.insert("port_range_max".into(), json!(max));
    d.insert("remote_ip_prefix".into(), json!(prefix));
    d.insert("normalized_cidr".into(), json!(normalized));
    d.insert(
        "description".into(),
        json!(opt_string(&m, "description", 255)?.unwrap_or_default()),
    );
    let fp = fingerprint(&d);
    let mut tx = svc.db.begin_write().await?;
    if let Some(r) = sqlx::query(
        &svc.db
            .sql("SELECT id FROM security_group_rules WHERE security_group_id = ? AND fingerprint = ?"),
    )
    .bind(&sg_id)
    .bind(&fp)
    .fetch_optional(&mut *tx)
    .await?
    {
        let existing: String = r.try_get("id")?;
        return Err(NetError::conflict(
            "SecurityGroupRuleExists",
            format!("Security group rule already exists. Rule id is {existing}."),
        ));
    }
    super::quotas::check(&svc, &mut tx, &owner, "security_group_rule", 1).await?;
    insert_rule(&svc, &mut tx, &d, remote_group.as_deref()).await?;
    tx.commit().await?;
    Ok(render_one("security_group_rule", d, &[], StatusCode::CREATED))
}

pub(crate) async fn delete_rule(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    get_rule(&svc, &ctx, &id).await?;
    writer(&ctx, "rule:delete_security_group_rule")?;
    let mut tx = svc.db.begin_write().await?;
    if store::delete(&svc.db, &mut tx, "security_group_rules", &id).await? == 0 {
        return Err(NetError::sg_rule_not_found(&id));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
