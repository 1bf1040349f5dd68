//! Neutron v2.0 routes (one table), request bodies, policy, and the list machinery every collection shares:
//! filters on any attribute, tags filters, `fields=`, `sort_key`/`sort_dir`, `limit`/`marker`/`page_reverse`
//! with `<collection>_links`.

pub mod agents;
pub mod floatingips;
pub mod misc;
pub mod networks;
pub mod ports;
pub mod quotas;
pub mod routers;
pub mod security_groups;
pub mod subnets;

use crate::error::{NetError, Result};
use crate::store::{self, Doc};
use crate::NetworkService;
use axum::body::Bytes;
use axum::extract::State;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use http::StatusCode;
use serde_json::{json, Map, Value};
use std::cmp::Ordering;
use std::sync::Arc;
use tessera_http::auth::{require_token, AuthLayer, TokenValidator};
use tessera_http::observe::{metrics_handler, observe, Metrics};
use tessera_http::Family;
use tessera_types::RequestContext;

pub(crate) type S = State<Arc<NetworkService>>;

/// The extensions this service implements, as Neutron names them (clients probe these aliases).
const EXTENSIONS: &[(&str, &str, &str)] = &[
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    ("binding-extended", "Port Bindings Extended", "Expose port bindings of a virtual port to external application"),
    ("external-net", "Neutron external network", "Adds external network attribute to network resource."),
    ("provider", "Provider Network", "Expose mapping of virtual networks to physical networks"),
    ("security-group", "security-group", "The security groups extension."),
    ("port-security", "Port Security", "Provides port security"),
    ("allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs"),
    ("extra_dhcp_opt", "Neutron Extra DHCP options", "Extra options configuration for DHCP. For example PXE boot options to DHCP clients can be specified (e.g. tftp-server, server-ip-address, bootfile-name)"),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("net-mtu-writable", "Network MTU (writable)", "Provides a writable MTU attribute for a network resource."),
    ("standard-attr-description", "standard-attr-description", "Extension to add descriptions to standard attributes"),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes."),
    ("standard-attr-revisions", "Resource revision numbers", "This extension will display the revision number of neutron resources."),
    ("standard-attr-tag", "Tag support for resources with standard attribute: subnet, trunk, network_segment_range, router, network, policy, subnetpool, port, security_group, floatingip", "Enables to set tag on resources with standard attribute."),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    ("pagination", "Pagination support", "Extension that indicates that pagination is enabled."),
    ("sorting", "Sorting support", "Extension that indicates that sorting is enabled."),
    ("fip-port-details", "Floating IP Port Details Extension", "Add port_details attribute to Floating IP resource"),
    ("availability_zone", "Availability Zone", "The availability zone extension."),
    ("network_availability_zone", "Network Availability Zone", "Availability zone support for network."),
    ("ip-substring-filtering", "IP address substring filtering", "Provides IP address substring filtering when listing ports"),
    ("stateful-security-group", "Stateful security group", "Indicates if the security group is stateful or not"),
    ("router", "Neutron L3 Router", "Router abstraction for basic L3 forwarding between L2 Neutron networks and access to external networks via a NAT gateway."),
    ("ext-gw-mode", "Neutron L3 Configurable external gateway mode", "Extension of the router abstraction for specifying whether SNAT should occur on the external gateway"),
    ("extraroute", "Neutron Extra Route", "Extra routes configuration for L3 router"),
    ("router_availability_zone", "Router Availability Zone", "Availability zone support for router."),
    ("quotas", "Quota management support", "Expose functions for quotas management per tenant"),
    ("quota_details", "Quota details management support", "Expose functions for quotas usage statistics per project"),
    ("network-ip-availability", "Network IP Availability", "Provides IP availability data for each network and subnet."),
    ("auto-allocated-topology", "Auto Allocated Topology Services", "Auto Allocated Topology Services."),
    ("agent", "agent", "The agent management extension."),
    ("dhcp_agent_scheduler", "DHCP Agent Scheduler", "Schedule networks among dhcp agents"),
    ("l3_agent_scheduler", "L3 Agent Scheduler", "Schedule routers among l3 agents"),
];

/// Build the Networking API behind the auth layer.
pub fn router(
    svc: Arc<NetworkService>,
    validator: Arc<dyn TokenValidator>,
    identity_uri: &str,
    base: &str,
) -> Router {
    let layer = AuthLayer {
        validator,
        family: Family::Neutron,
        identity_uri: identity_uri.to_string(),
    };
    let metrics = Metrics::new("network");
    let base = base.trim_end_matches('/').to_string();
    let (b1, b2) = (base.clone(), base.clone());
    let protected = Router::new()
        .route("/v2.0/extensions", get(list_extensions))
        .route("/v2.0/extensions/{alias}", get(show_extension))
        .route("/v2.0/networks", get(networks::list).post(networks::create))
        .route(
            "/v2.0/networks/{id}",
            get(networks::show).put(networks::update).delete(networks::delete),
        )
        .route("/v2.0/subnets", get(subnets::list).post(subnets::create))
        .route(
            "/v2.0/subnets/{id}",
            get(subnets::show).put(subnets::update).delete(subnets::delete),
        )
        .route("/v2.0/ports", get(ports::list).post(ports::create))
        .route(
            "/v2.0/ports/{id}",
            get(ports::show).put(ports::update).delete(ports::delete),
        )
        .route(
            "/v2.0/security-groups",
            get(security_groups::list).post(security_groups::create),
        )
        .route(
            "/v2.0/security-groups/{id}",
            get(security_groups::show)
                .put(security_groups::update)
                .delete(security_groups::delete),
        )
        .route(
            "/v2.0/security-group-rules",
            get(security_groups::list_rules).post(security_groups::create_rule),
        )
        .route(
            "/v2.0/security-group-rules/{id}",
            get(security_groups::show_rule).delete(security_groups::delete_rule),
        )
        .route("/v2.0/routers", get(routers::list).post(routers::create))
        .route(
            "/v2.0/routers/{id}",
            get(routers::show).put(routers::update).delete(routers::delete),
        )
        .route(
            "/v2.0/routers/{id}/add_router_interface",
            put(routers::add_interface),
        )
        .route(
            "/v2.0/routers/{id}/remove_router_interface",
            put(routers::remove_interface),
        )
        .route(
            "/v2.0/floatingips",
            get(floatingips::list).post(floatingips::create),
        )
        .route(
            "/v2.0/floatingips/{id}",
            get(floatingips::show)
                .put(floatingips::update)
                .delete(floatingips::delete),
        )
        .route("/v2.0/quotas", get(quotas::list))
        .route(
            "/v2.0/quotas/{project_id}",
            get(quotas::show).put(quotas::update).delete(quotas::delete),
        )
        .route("/v2.0/quotas/{project_id}/default", get(quotas::defaults))
        .route("/v2.0/quotas/{project_id}/details", get(quotas::details))
        .route("/v2.0/network-ip-availabilities", get(misc::list_availabilities))
        .route(
            "/v2.0/network-ip-availabilities/{id}",
            get(misc::show_availability),
        )
        .route(
            "/v2.0/auto-allocated-topology/{project_id}",
            get(misc::get_topology).delete(misc::delete_topology),
        )
        .route("/v2.0/agents", get(agents::list))
        .route(
            "/v2.0/agents/{id}",
            get(agents::show).put(agents::update).delete(agents::delete),
        )
        .route("/v2.0/agent-rpc/report_state", post(agents::report_state))
        .route("/v2.0/agent-rpc/sync", post(agents::sync))
        .route("/v2.0/agent-rpc/port_status", post(agents::port_status))
        .route(
            "/v2.0/{resource}/{id}/tags",
            get(misc::get_tags).put(misc::put_tags).delete(misc::delete_tags),
        )
        .route(
            "/v2.0/{resource}/{id}/tags/{tag}",
            get(misc::get_tag).put(misc::put_tag).delete(misc::delete_tag),
        )
        .route_layer(from_fn_with_state(svc.clone(), wake_agents))
        .route_layer(from_fn_with_state(layer, require_token))
        .with_state(svc);
    Router::new()
        .route("/", get(move || versions(b1.clone())))
        .route("/v2.0", get(move || resources(base.clone())))
        .route("/v2.0/", get(move || resources(b2.clone())))
        .merge(protected)
        .route_service("/metrics", get(metrics_handler).with_state(metrics.clone()))
        .fallback(|| async {
            NetError::not_found("HTTPNotFound", "The resource could not be found.").into_response()
        })
        .layer(from_fn_with_state(metrics, observe))
}

/// A write that went through may change what the agents wire up: wake the ones waiting (their own calls
/// say for themselves when they change something).
async fn wake_agents(State(svc): S, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let write = !matches!(*req.method(), http::Method::GET | http::Method::HEAD)
        && !req.uri().path().contains("/agent-rpc/");
    let resp = next.run(req).await;
    if write && resp.status().is_success() {
        svc.changed();
    }
    resp
}

async fn versions(base: String) -> Response {
    axum::Json(json!({"versions": [{
        "id": "v2.0", "status": "CURRENT",
        "links": [{"rel": "self", "href": format!("{base}/v2.0/")}],
    }]}))
    .into_response()
}

async fn resources(base: String) -> Response {
    let r: Vec<Value> = [
        "network",
        "subnet",
        "port",
        "security_group",
        "security_group_rule",
        "router",
        "floatingip",
    ]
    .iter()
    .map(|n| {
        let coll = format!("{}s", n.replace('_', "-"));
        json!({"name": n, "collection": coll.replace('-', "_"),
                   "links": [{"rel": "self", "href": format!("{base}/v2.0/{coll}")}]})
    })
    .collect();
    axum::Json(json!({"resources": r})).into_response()
}

fn extension_json(e: &(&str, &str, &str)) -> Value {
    json!({"alias": e.0, "name": e.1, "description": e.2, "updated": "2013-01-01T10:00:00-00:00", "links": []})
}

async fn list_extensions() -> Response {
    axum::Json(json!({"extensions": EXTENSIONS.iter().map(extension_json).collect::<Vec<_>>()}))
        .into_response()
}

async fn show_extension(axum::extract::Path(alias): axum::extract::Path<String>) -> Response {
    match EXTENSIONS.iter().find(|e| e.0 == alias) {
        Some(e) => axum::Json(json!({"extension": extension_json(e)})).into_response(),
        None => NetError::not_found(
            "ExtensionNotFound",
            format!("Extension with alias {alias} does not exist"),
        )
        .into_response(),
    }
}

// ---------------------------------------------------------------- requests

/// `{"<key>": {...}}` → the inner object.
pub(crate) fn body_object(body: &Bytes, key: &str) -> Result<Map<String, Value>> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| NetError::bad_request(format!("Malformed request body: {e}")))?;
    match v {
        Value::Object(mut m) => match m.remove(key) {
            Some(Value::Object(inner)) => Ok(inner),
            Some(_) => Err(NetError::bad_request(format!(
                "Invalid input for operation: '{key}' must be an object."
            ))),
            None => Err(NetError::bad_request("Resource body required")),
        },
        _ => Err(NetError::bad_request("Malformed request body")),
    }
}

/// `POST` of one resource (`{"<one>": {...}}`) or of several (`{"<many>": [...]}`, Neutron's bulk create:
/// all or nothing — the ones made before a failure are removed again with `undo`).
pub(crate) async fn bulk_create<C, CF, U, UF>(
    body: &Bytes,
    one: &str,
    many: &str,
    create: C,
    undo: U,
) -> Result<Response>
where
    C: Fn(Map<String, Value>) -> CF,
    CF: std::future::Future<Output = Result<Doc>>,
    U: Fn(String) -> UF,
    UF: std::future::Future<Output = Result<()>>,
{
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| NetError::bad_request(format!("Malformed request body: {e}")))?;
    let Some(items) = v.get(many) else {
        let m = body_object(body, one)?;
        let d = create(m).await?;
        return Ok(render_one(one, d, &[], StatusCode::CREATED));
    };
    let Some(items) = items.as_array() else {
        return Err(NetError::bad_request(format!(
            "Invalid input for operation: '{many}' must be a list."
        )));
    };
    let mut made: Vec<Doc> = Vec::new();
    for item in items {
        let r = match item {
            Value::Object(m) => create(m.clone()).await,
            _ => Err(NetError::bad_request(format!(
                "Invalid input for operation: each of '{many}' must be an object."
            ))),
        };
        match r {
            Ok(d) => made.push(d),
            Err(e) => {
                for d in made.iter().rev() {
                    if let Err(u) = undo(store::text(d, "id").to_string()).await {
                        tracing::error!(error = ?u, "cannot undo part of a failed bulk create");
                    }
                }
                return Err(e);
            }
        }
    }
    let mut out = Map::new();
    out.insert(
        many.to_string(),
        Value::Array(made.into_iter().map(Value::Object).collect()),
    );
    Ok((StatusCode::CREATED, axum::Json(Value::Object(out))).into_response())
}

/// One statement binding `id`, in its own write transaction (undoing part of a bulk create).
pub(crate) async fn undo(svc: &NetworkService, sql: &str, id: &str) -> Result<()> {
    let mut tx = svc.db.begin_write().await?;
    sqlx::query(&svc.db.sql(sql)).bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Refuse attributes outside `allowed` (Neutron: "Unrecognized attribute(s)").
pub(crate) fn only(m: &Map<String, Value>, allowed: &[&str]) -> Result<()> {
    let bad: Vec<&str> = m
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(String::as_str)
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(NetError::bad_request(format!(
            "Unrecognized attribute(s) '{}'",
            bad.join(", ")
        )))
    }
}

/// Refuse attributes that cannot change after creation.
pub(crate) fn read_only(m: &Map<String, Value>, keys: &[&str]) -> Result<()> {
    match keys.iter().find(|k| m.contains_key(**k)) {
        Some(k) => Err(NetError::bad_request(format!(
            "Cannot update read-only attribute {k}"
        ))),
        None => Ok(()),
    }
}

pub(crate) fn opt_string(m: &Map<String, Value>, key: &str, max: usize) -> Result<Option<String>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(NetError::invalid_input(format!(
            "'{}' exceeds maximum length of {max}",
            key
        ))),
        Some(v) => Err(NetError::invalid_input(format!("'{v}' is not a valid string"))),
    }
}

/// A boolean as Neutron accepts it: JSON booleans and the strings/numbers its converter takes.
pub(crate) fn opt_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match m.get(key) {
        None => Ok(None),
        Some(v) => to_bool(v)
            .map(Some)
            .ok_or_else(|| NetError::invalid_input(format!("'{v}' cannot be converted to boolean"))),
    }
}

pub(crate) fn to_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) if n.as_i64() == Some(1) => Some(true),
        Value::Number(n) if n.as_i64() == Some(0) => Some(false),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

// ---------------------------------------------------------------- policy

/// The caller's project (a project-scoped token is needed for everything but admin reads).
pub(crate) fn project(ctx: &RequestContext) -> Result<&str> {
    ctx.project_id()
        .ok_or_else(|| NetError::policy("rule:project_scoped"))
}

/// Writes need the member role (a reader may only look).
pub(crate) fn writer(ctx: &RequestContext, rule: &str) -> Result<()> {
    if ctx.is_admin() || ctx.has_role("member") {
        Ok(())
    } else {
        Err(NetError::policy(rule))
    }
}

/// The project a new resource belongs to: the caller's, or (admin only) the one the body names.
pub(crate) fn owner_of_new(ctx: &RequestContext, m: &Map<String, Value>, rule: &str) -> Result<String> {
    let mine = project(ctx)?.to_string();
    let named = match (m.get("project_id"), m.get("tenant_id")) {
        (Some(a), Some(b)) if a != b => {
            return Err(NetError::bad_request("'project_id' and 'tenant_id' do not match"))
        }
        (Some(Value::String(p)), _) | (None, Some(Value::String(p))) => Some(p.clone()),
        (None, None) => None,
        _ => return Err(NetError::invalid_input("'project_id' must be a string")),
    };
    match named {
        Some(p) if p != mine => {
            if ctx.is_admin() {
                Ok(p)
            } else {
                Err(NetError::policy(&format!("rule:{rule}")))
            }
        }
        _ => Ok(mine),
    }
}

/// SQL visibility of resources only their project sees (and admins): the condition and its binds.
pub(crate) fn own_rows(ctx: &RequestContext) -> (String, Vec<String>) {
    if ctx.is_admin() {
        ("1 = 1".into(), Vec::new())
    } else {
        (
            "project_id = ?".into(),
            vec![ctx.project_id().unwrap_or("").to_string()],
        )
    }
}

/// Whether the caller owns `doc` (or is admin).
pub(crate) fn owns(ctx: &RequestContext, doc: &Doc) -> bool {
    ctx.is_admin() || ctx.project_id() == doc.get("project_id").and_then(Value::as_str)
}

// ---------------------------------------------------------------- lists

/// The query string as decoded pairs (repeated keys kept).
pub(crate) fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

const RESERVED: &[&str] = &[
    "fields",
    "sort_key",
    "sort_dir",
    "limit",
    "marker",
    "page_reverse",
    "tags",
    "tags-any",
    "not-tags",
    "not-tags-any",
];

/// Whether a document's attribute matches one filter value.
fn matches_value(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Bool(b) => to_bool(&Value::String(want.to_string())) == Some(*b),
        Value::Number(n) => n.to_string() == want,
        Value::Null => want.is_empty() || want == "None",
        Value::Array(items) => items.iter().any(|i| matches_value(i, want)),
        Value::Object(_) => false,
    }
}

/// `fixed_ips=ip_address=X` / `subnet_id=Y` / `ip_address_substr=Z` on ports.
fn matches_fixed_ip(doc: &Doc, want: &str) -> bool {
    let Some((k, v)) = want.split_once('=') else {
        return false;
    };
    let ips = doc.get("fixed_ips").and_then(Value::as_array);
    ips.is_some_and(|ips| {
        ips.iter().any(|ip| match k {
            "ip_address_substr" => ip["ip_address"].as_str().is_some_and(|a| a.contains(v)),
            _ => ip[k].as_str() == Some(v),
        })
    })
}

fn tag_set(doc: &Doc) -> Vec<&str> {
    doc.get("tags")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(Ordering::Equal)
        }
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Filter, sort, page and trim `docs` as the query asks, and answer `{"<plural>": [...], "<plural>_links"}`.
/// `path` is the collection's path (for the links).
pub(crate) fn render_list(
    svc: &NetworkService,
    base_path: &str,
    plural: &str,
    mut docs: Vec<Doc>,
    pairs: &[(String, String)],
) -> Result<Response> {
    let all = |k: &str| -> Vec<&str> {
        pairs
            .iter()
            .filter(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    // Attribute filters: values of one key are alternatives; keys must all match.
    let mut keys: Vec<&str> = pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !RESERVED.contains(k))
        .collect();
    keys.dedup();
    for k in keys {
        let wants = all(k);
        docs.retain(|d| {
            if k == "fixed_ips" {
                return wants.iter().all(|w| matches_fixed_ip(d, w));
            }
            match d.get(k) {
                Some(v) => wants.iter().any(|w| matches_value(v, w)),
                // Filters on attributes the resource does not have are ignored, as Neutron does without
                // the filter-validation extension.
                None => true,
            }
        });
    }
    let split = |k: &str| -> Vec<String> {
        all(k)
            .iter()
            .flat_map(|v| v.split(','))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (tags, tags_any, not_tags, not_tags_any) = (
        split("tags"),
        split("tags-any"),
        split("not-tags"),
        split("not-tags-any"),
    );
    docs.retain(|d| {
        let t = tag_set(d);
        let has = |x: &String| t.contains(&x.as_str());
        (tags.is_empty() || tags.iter().all(has))
            && (tags_any.is_empty() || tags_any.iter().any(has))
            && (not_tags.is_empty() || !not_tags.iter().all(has))
            && (not_tags_any.is_empty() || !not_tags_any.iter().any(has))
    });
    // Sorting: the keys given, then id for a stable order markers can rely on.
    let sort_keys = all("sort_key");
    let sort_dirs = all("sort_dir");
    if sort_keys.len() < sort_dirs.len() {
        return Err(NetError::bad_request(
            "The number of sort_keys and sort_dirs must be same",
        ));
    }
    let mut order: Vec<(String, bool)> = Vec::new();
    for (i, k) in sort_keys.iter().enumerate() {
        let dir = sort_dirs.get(i).copied().unwrap_or("asc");
        let asc = match dir {
            "asc" => true,
            "desc" => false,
            _ => {
                return Err(NetError::bad_request(format!(
                    "{dir} is an invalid value for sort_dir, valid values are 'asc' and 'desc'"
                )))
            }
        };
        if let Some(d) = docs.first() {
            if !d.contains_key(*k) {
                return Err(NetError::bad_request(format!(
                    "{k} is an invalid attribute for sort_key"
                )));
            }
        }
        order.push((k.to_string(), asc));
    }
    let id_asc = order.first().map(|(_, a)| *a).unwrap_or(true);
    if !order.iter().any(|(k, _)| k == "id") {
        order.push(("id".into(), id_asc));
    }
    if !sort_keys.is_empty() {
        docs.sort_by(|a, b| {
            for (k, asc) in &order {
                let c = compare(a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null));
                let c = if *asc { c } else { c.reverse() };
                if c != Ordering::Equal {
                    return c;
                }
            }
            Ordering::Equal
        });
    }
    // Paging.
    let limit = match all("limit").last() {
        None => None,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n > 0 => Some(n as usize),
            Ok(0) => None,
            _ => {
                return Err(NetError::bad_request(format!(
                    "Invalid input for operation: '{l}' is not an integer greater than or equal to 0."
                )))
            }
        },
    };
    let max = svc.settings.pagination_max_limit;
    let limit = match (limit, max) {
        (Some(l), m) if m > 0 => Some(l.min(m)),
        (None, m) if m > 0 => Some(m),
        (l, _) => l,
    };
    let reverse = all("page_reverse")
        .last()
        .is_some_and(|v| to_bool(&Value::String(v.to_string())) == Some(true));
    let marker = all("marker").last().map(|m| m.to_string());
    let mut page: Vec<Doc>;
    let mut more = false;
    if let Some(limit) = limit {
        let start_end = match &marker {
            Some(m) => match docs
                .iter()
                .position(|d| d.get("id").and_then(Value::as_str) == Some(m))
            {
                Some(p) => p,
                None => {
                    return Err(NetError::not_found(
                        "HTTPNotFound",
                        format!("Marker {m} could not be found."),
                    ))
                }
            },
            None => {
                if reverse {
                    docs.len()
                } else {
                    usize::MAX
                }
            }
        };
        if reverse {
            let end = start_end.min(docs.len());
            let begin = end.saturating_sub(limit);
            more = begin > 0;
            page = docs.drain(begin..end).collect();
        } else {
            let begin = if start_end == usize::MAX { 0 } else { start_end + 1 };
            let begin = begin.min(docs.len());
            let end = (begin + limit).min(docs.len());
            more = end < docs.len();
            page = docs.drain(begin..end).collect();
        }
    } else {
        page = docs;
    }
    let mut links = Vec::new();
    if let Some(limit) = limit {
        let first = page
            .first()
            .and_then(|d| d.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let last = page
            .last()
            .and_then(|d| d.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let keep: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| k != "marker" && k != "page_reverse" && k != "limit")
            .cloned()
            .collect();
        let link = |marker: &str, rev: bool| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &keep {
                q.append_pair(k, v);
            }
            q.append_pair("limit", &limit.to_string());
            q.append_pair("marker", marker);
            if rev {
                q.append_pair("page_reverse", "True");
            }
            format!("{base_path}?{}", q.finish())
        };
        let (next, prev) = if reverse {
            (marker.is_some(), more)
        } else {
            (more, marker.is_some())
        };
        if let (true, Some(l)) = (next, &last) {
            links.push(json!({"rel": "next", "href": link(l, false)}));
        }
        if let (true, Some(f)) = (prev, &first) {
            links.push(json!({"rel": "previous", "href": link(f, true)}));
        }
    }
    let fields = all("fields");
    if !fields.is_empty() {
        for d in page.iter_mut() {
            d.retain(|k, _| fields.contains(&k.as_str()));
        }
    }
    let mut out = Map::new();
    out.insert(
        plural.to_string(),
        Value::Array(page.into_iter().map(Value::Object).collect()),
    );
    if !links.is_empty() {
        out.insert(format!("{plural}_links"), Value::Array(links));
    }
    Ok(axum::Json(Value::Object(out)).into_response())
}

/// One document, trimmed to `fields=` when asked.
pub(crate) fn render_one(
    key: &str,
    mut doc: Doc,
    pairs: &[(String, String)],
    status: StatusCode,
) -> Response {
    let fields: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "fields")
        .map(|(_, v)| v.as_str())
        .collect();
    if !fields.is_empty() {
        doc.retain(|k, _| fields.contains(&k.as_str()));
    }
    (status, axum::Json(json!({ key: doc }))).into_response()
}

/// Retry `f` (a whole write transaction) when it lost a race on a unique key (two requests choosing the same
/// address or MAC), up to a bound; the loser re-reads and chooses again.
pub(crate) async fn with_retries<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(NetError::Db(tessera_db::DbError::Sqlx(e)))
                if attempt < 20 && (tessera_db::is_unique_violation(&e) || is_retryable(&e)) =>
            {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "network write lost a race; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(
                    rand::random::<u64>() % (2 * attempt),
                ))
                .await;
            }
            r => return r,
        }
    }
}

fn is_retryable(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    let code = d.code().map(|c| c.to_string()).unwrap_or_default();
    // PostgreSQL serialization failure / deadlock, MySQL deadlock / lock wait timeout, SQLite busy.
    matches!(code.as_str(), "40001" | "40P01" | "1213" | "1205" | "5" | "517")
}
