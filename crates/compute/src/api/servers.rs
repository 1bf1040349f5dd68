//! `/servers`: create (the Cells v2 boot: validation, quota, build requests, a cast to the super conductor),
//! list and detail merged across every cell and the build requests in one sort order with markers that
//! work across cells (a cell that does not answer gives partial records from 2.69), show, delete in every
//! state, and the start / stop / reboot actions, cast to the instance's host on its cell's bus.

use super::{base_url, nova, ComputeApi, Mv, S};
use crate::boot::{self, BootInstance};
use crate::celldb::{self, InstanceRow, ListFilter, SortCol};
use crate::cells::{self, CellMapping};
use crate::scheduler::RequestSpec;
use crate::ComputeError;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine as _;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};
use sha2::Digest as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tessera_db::Db;
use tessera_http::auth::Caller;
use tessera_http::{ApiError, Family};
use tessera_types::RequestContext;

/// How the Compute API reaches the rest of the boot pipeline.
pub struct BootWiring {
    /// The API-level bus, where the super conductor listens.
    pub api_bus: Arc<dyn tessera_bus::Bus>,
    /// The cells' buses (actions and deletes go straight to the instance's host).
    pub buses: Arc<tessera_bus::Buses>,
    /// The Networking service (None: only `networks: "none"` boots).
    pub network: Option<Arc<crate::network::NetworkClient>>,
}

/// Limits of the `[quota]` options (-1: unlimited) and the instance-password choice.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub instances: i64,
    pub cores: i64,
    pub ram: i64,
    pub metadata_items: i64,
    pub server_groups: i64,
    pub server_group_members: i64,
    pub max_limit: i64,
    pub enable_instance_password: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            instances: 10,
            cores: 20,
            ram: 51200,
            metadata_items: 128,
            server_groups: 10,
            server_group_members: 10,
            max_limit: 1000,
            enable_instance_password: true,
        }
    }
}

use super::bad;

fn not_found(id: &str) -> ApiError {
    nova(
        StatusCode::NOT_FOUND,
        format!("Instance {id} could not be found."),
    )
}

fn invalid_field(field: &str, value: &Value, why: &str) -> ApiError {
    bad(format!(
        "Invalid input for field/attribute {field}. Value: {value}. {why}"
    ))
}

/// Nova's `isotime`: seconds, `Z`.
pub(crate) fn iso(micros: i64) -> String {
    let mut out = String::with_capacity(20);
    super::push_time(&mut out, micros, false);
    out.push('Z');
    out
}

/// The API status of a vm_state / task_state pair (Nova's state map).
pub fn status(vm_state: &str, task: Option<&str>) -> &'static str {
    match (vm_state, task) {
        ("building", _) => "BUILD",
        ("active", Some("rebooting" | "reboot_pending" | "reboot_started")) => "REBOOT",
        ("active", Some("rebooting_hard" | "reboot_pending_hard" | "reboot_started_hard")) => "HARD_REBOOT",
        ("active", Some("rebuilding" | "rebuild_block_device_mapping" | "rebuild_spawning")) => "REBUILD",
        ("active", Some("migrating")) => "MIGRATING",
        ("active" | "stopped", Some(t)) if t.starts_with("resize") => "RESIZE",
        ("active", _) => "ACTIVE",
        ("stopped", _) => "SHUTOFF",
        ("paused", _) => "PAUSED",
        ("suspended", _) => "SUSPENDED",
        ("rescued", _) => "RESCUE",
        ("resized", _) => "VERIFY_RESIZE",
        ("soft-delete", _) => "SOFT_DELETED",
        ("shelved", _) => "SHELVED",
        ("shelved_offloaded", _) => "SHELVED_OFFLOADED",
        ("deleted", _) => "DELETED",
        ("error", _) => "ERROR",
        _ => "UNKNOWN",
    }
}

/// The vm_states a `status` filter selects (empty: a status no server can have).
fn vm_states_of(status: &str) -> Vec<String> {
    let s = match status.to_ascii_uppercase().as_str() {
        "BUILD" => "building",
        "ACTIVE" | "REBOOT" | "HARD_REBOOT" | "REBUILD" | "MIGRATING" | "RESIZE" => "active",
        "SHUTOFF" => "stopped",
        "PAUSED" => "paused",
        "SUSPENDED" => "suspended",
        "RESCUE" => "rescued",
        "VERIFY_RESIZE" => "resized",
        "SOFT_DELETED" => "soft-delete",
        "SHELVED" => "shelved",
        "SHELVED_OFFLOADED" => "shelved_offloaded",
        "DELETED" => "deleted",
        "ERROR" => "error",
        _ => return Vec::new(),
    };
    vec![s.to_string()]
}

fn links(base: &str, project: &str, id: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{base}/v2.1/{project}/servers/{id}")},
        {"rel": "bookmark", "href": format!("{base}/{project}/servers/{id}")}
    ])
}

/// Nova's hostId: sha224 of the project id and the host, empty without a host.
fn host_id(project: &str, host: Option<&str>) -> String {
    match host {
        Some(h) if !h.is_empty() => hex(&sha2::Sha224::digest(format!("{project}{h}").as_bytes())),
        _ => String::new(),
    }
}

/// Concatenate without the formatting machinery (hrefs of listings).
fn cat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(b.len() * 2);
    for x in b {
        out.push(DIGITS[(x >> 4) as usize] as char);
        out.push(DIGITS[(x & 15) as usize] as char);
    }
    out
}

/// Everything a server view needs besides the row.
#[derive(Clone)]
struct ViewCtx {
    base: String,
    mv: Mv,
    admin: bool,
    /// host → UP/DOWN/MAINTENANCE (admins, 2.16).
    host_status: Option<Arc<HashMap<String, &'static str>>>,
}

/// The flavor member of a server view from the instance's embedded flavor (JSON text).
fn flavor_view(flavor_json: &str, v: &ViewCtx) -> Value {
    let f: Value = serde_json::from_str(flavor_json).unwrap_or(Value::Null);
    if v.mv.at_least(47) {
        json!({
            "vcpus": f["vcpus"], "ram": f["memory_mb"], "disk": f["root_gb"], "ephemeral": f["ephemeral_gb"],
            "swap": f["swap"], "original_name": f["name"],
            "extra_specs": if f["extra_specs"].is_object() { f["extra_specs"].clone() } else { json!({}) },
        })
    } else {
        let id = f["flavorid"].as_str().unwrap_or_default().to_string();
        json!({"id": id, "links": [{"rel": "bookmark", "href": format!("{}/flavors/{id}", v.base)}]})
    }
}

/// The server's addresses by network name, from the VIFs its ports gave it.
fn addresses(row: &InstanceRow) -> Value {
    let mut out = Map::new();
    let info = crate::network::NetworkRequest::from_info(row.network_info.as_deref());
    for vif in &info.vifs {
        let entries = out
            .entry(vif.network_name.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = entries {
            for ip in &vif.ips {
                list.push(
                    json!({"version": ip.version, "addr": ip.address, "OS-EXT-IPS:type": "fixed",
                                 "OS-EXT-IPS-MAC:mac_addr": vif.mac}),
                );
            }
            for f in &vif.floating_ips {
                list.push(json!({"version": if f.contains(':') { 6 } else { 4 }, "addr": f,
                                 "OS-EXT-IPS:type": "floating", "OS-EXT-IPS-MAC:mac_addr": vif.mac}));
            }
        }
    }
    Value::Object(out)
}

type Fault = (i64, String, String, i64);

#[derive(serde::Serialize)]
struct Link {
    rel: &'static str,
    href: String,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum ImageView<'a> {
    None(&'static str),
    Ref {
        id: &'a str,
        links: [Link; 1],
        #[serde(skip_serializing_if = "Option::is_none")]
        properties: Option<Map<String, Value>>,
    },
}

type Opt<T> = Option<Option<T>>;

#[derive(serde::Serialize)]
struct GroupName {
    name: &'static str,
}

/// The full (detail/show) view of a server, serialized straight from the row: a listing of a thousand
/// servers builds no JSON tree. Microversion-dependent members are `Option`s left out when absent.
#[derive(serde::Serialize)]
struct DetailView<'a> {
    id: &'a str,
    name: &'a str,
    status: &'static str,
    tenant_id: &'a str,
    user_id: &'a str,
    metadata: &'a BTreeMap<String, String>,
    #[serde(rename = "hostId")]
    host_id: String,
    image: ImageView<'a>,
    flavor: &'a Value,
    created: String,
    updated: String,
    addresses: Value,
    #[serde(rename = "accessIPv4")]
    access_ipv4: &'a str,
    #[serde(rename = "accessIPv6")]
    access_ipv6: &'a str,
    links: [Link; 2],
    #[serde(rename = "OS-DCF:diskConfig")]
    disk_config: &'static str,
    #[serde(rename = "OS-EXT-AZ:availability_zone")]
    zone: &'a str,
    config_drive: &'a str,
    key_name: Option<&'a str>,
    #[serde(rename = "OS-SRV-USG:launched_at")]
    launched_at: Option<String>,
    #[serde(rename = "OS-SRV-USG:terminated_at")]
    terminated_at: Option<String>,
    #[serde(rename = "OS-EXT-STS:task_state")]
    task_state: Option<&'a str>,
    #[serde(rename = "OS-EXT-STS:vm_state")]
    vm_state: &'a str,
    #[serde(rename = "OS-EXT-STS:power_state")]
    power_state: i64,
    #[serde(rename = "os-extended-volumes:volumes_attached")]
    volumes_attached: [(); 0],
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    security_groups: Option<[GroupName; 1]>,
    #[serde(rename = "OS-EXT-SRV-ATTR:host", skip_serializing_if = "Option::is_none")]
    host: Opt<&'a str>,
    #[serde(
        rename = "OS-EXT-SRV-ATTR:hypervisor_hostname",
        skip_serializing_if = "Option::is_none"
    )]
    node: Opt<&'a str>,
    #[serde(
        rename = "OS-EXT-SRV-ATTR:instance_name",
        skip_serializing_if = "Option::is_none"
    )]
    instance_name: Option<String>,
    #[serde(rename = "OS-EXT-SRV-ATTR:hostname", skip_serializing_if = "Option::is_none")]
    hostname: Opt<&'a str>,
    #[serde(rename = "OS-EXT-SRV-ATTR:kernel_id", skip_serializing_if = "Option::is_none")]
    kernel_id: Option<&'static str>,
    #[serde(
        rename = "OS-EXT-SRV-ATTR:ramdisk_id",
        skip_serializing_if = "Option::is_none"
    )]
    ramdisk_id: Option<&'static str>,
    #[serde(
        rename = "OS-EXT-SRV-ATTR:launch_index",
        skip_serializing_if = "Option::is_none"
    )]
    launch_index: Option<i64>,
    #[serde(
        rename = "OS-EXT-SRV-ATTR:reservation_id",
        skip_serializing_if = "Option::is_none"
    )]
    reservation_id: Opt<&'a str>,
    #[serde(
        rename = "OS-EXT-SRV-ATTR:root_device_name",
        skip_serializing_if = "Option::is_none"
    )]
    root_device_name: Opt<&'static str>,
    #[serde(rename = "OS-EXT-SRV-ATTR:user_data", skip_serializing_if = "Option::is_none")]
    user_data: Opt<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    locked: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Opt<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<[(); 0]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trusted_image_certificates: Opt<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    locked_reason: Opt<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned_availability_zone: Opt<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduler_hints: Option<Map<String, Value>>,
}

fn render_detail<'a>(
    row: &'a InstanceRow,
    fault: Option<&Fault>,
    v: &'a ViewCtx,
    flavor: &'a Value,
    host_id: String,
) -> DetailView<'a> {
    let project = row.project_id.as_str();
    let st = if row.deleted != 0 {
        "DELETED"
    } else {
        status(&row.vm_state, row.task_state.as_deref())
    };
    let image = match row.image_ref.as_deref() {
        Some(id) if !id.is_empty() => ImageView::Ref {
            id,
            links: [Link {
                rel: "bookmark",
                href: cat(&[&v.base, "/", project, "/images/", id]),
            }],
            properties: v.mv.at_least(98).then(Map::new),
        },
        _ => ImageView::None(""),
    };
    let admin = v.admin;
    let mv = v.mv;
    let fault = match fault {
        Some((code, message, details, created)) if matches!(st, "ERROR" | "DELETED") => {
            let mut f = json!({"code": code, "created": iso(*created), "message": message});
            if !details.is_empty() && (admin || *code != 500) {
                f["details"] = json!(details);
            }
            Some(f)
        }
        _ => None,
    };
    let ext = admin && mv.at_least(3);
    DetailView {
        id: &row.uuid,
        name: row.display_name.as_deref().unwrap_or_default(),
        status: st,
        tenant_id: project,
        user_id: &row.user_id,
        metadata: &row.metadata,
        host_id,
        image,
        flavor,
        created: iso(row.created_at),
        updated: iso(row.updated_at),
        addresses: addresses(row),
        access_ipv4: row.access_ip_v4.as_deref().unwrap_or_default(),
        access_ipv6: row.access_ip_v6.as_deref().unwrap_or_default(),
        links: [
            Link {
                rel: "self",
                href: cat(&[&v.base, "/v2.1/", project, "/servers/", &row.uuid]),
            },
            Link {
                rel: "bookmark",
                href: cat(&[&v.base, "/", project, "/servers/", &row.uuid]),
            },
        ],
        disk_config: "MANUAL",
        zone: row.availability_zone.as_deref().unwrap_or_default(),
        config_drive: row.config_drive.as_deref().unwrap_or_default(),
        key_name: row.key_name.as_deref(),
        launched_at: row.launched_at.map(super::naive_time),
        terminated_at: row.terminated_at.map(super::naive_time),
        task_state: row.task_state.as_deref(),
        vm_state: &row.vm_state,
        power_state: row.power_state,
        volumes_attached: [],
        fault,
        progress: matches!(
            st,
            "ACTIVE" | "BUILD" | "REBUILD" | "RESIZE" | "VERIFY_RESIZE" | "MIGRATING"
        )
        .then_some(0),
        security_groups: (!crate::network::NetworkRequest::from_info(row.network_info.as_deref())
            .requested
            .is_empty())
        .then_some([GroupName { name: "default" }]),
        host: admin.then_some(row.host.as_deref()),
        node: admin.then_some(row.node.as_deref()),
        instance_name: admin.then(|| {
            if row.id > 0 {
                boot::instance_name(row.id)
            } else {
                String::new()
            }
        }),
        hostname: (ext || (mv.at_least(90) && !admin)).then_some(row.hostname.as_deref()),
        kernel_id: ext.then_some(""),
        ramdisk_id: ext.then_some(""),
        launch_index: ext.then_some(row.launch_index),
        reservation_id: ext.then_some(row.reservation_id.as_deref()),
        root_device_name: ext.then_some(None),
        user_data: ext.then_some(row.user_data.as_deref()),
        locked: mv.at_least(9).then_some(row.locked_by.is_some()),
        host_status: match v.host_status.as_deref() {
            Some(hs) if mv.at_least(16) => Some(match row.host.as_deref() {
                Some(h) => hs.get(h).copied().unwrap_or("UNKNOWN"),
                None => "",
            }),
            _ => None,
        },
        description: mv.at_least(19).then_some(row.display_description.as_deref()),
        tags: mv.at_least(26).then_some([]),
        trusted_image_certificates: mv.at_least(63).then_some(None),
        locked_reason: mv.at_least(73).then_some(None),
        pinned_availability_zone: mv.at_least(96).then_some(None),
        scheduler_hints: mv.at_least(100).then(Map::new),
    }
}

/// The full view of one server as a JSON value.
fn detail_view(row: &InstanceRow, fault: Option<&Fault>, v: &ViewCtx) -> Value {
    let flavor = flavor_view(&row.flavor, v);
    let hid = host_id(&row.project_id, row.host.as_deref());
    serde_json::to_value(render_detail(row, fault, v, &flavor, hid)).unwrap_or(Value::Null)
}

/// What a listing or show knows of a server in a cell that does not answer (2.69).
fn down_cell_view(m: &cells::InstanceMapping, v: &ViewCtx, detail: bool) -> Value {
    let mut s = json!({"id": m.instance_uuid, "status": "UNKNOWN", "links": links(&v.base, &m.project_id, &m.instance_uuid)});
    if detail {
        s["tenant_id"] = json!(m.project_id);
        s["created"] = json!(iso(m.created_at));
    }
    s
}

/// The project a non-admin acts in.
fn caller_project(ctx: &RequestContext) -> Result<String, ApiError> {
    ctx.project_id().map(str::to_string).ok_or_else(|| {
        nova(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow os_compute_api:servers to be performed.",
        )
    })
}

/// Where a server is now.
pub(crate) enum Found {
    Building(Box<BootInstance>),
    Cell {
        cell: CellMapping,
        db: Db,
        row: Box<InstanceRow>,
    },
    /// Its cell does not answer.
    Down(cells::InstanceMapping),
}

/// Look a server up for the caller (another project's server is not found, except for admins).
pub(crate) async fn find(api: &ComputeApi, ctx: &RequestContext, id: &str) -> Result<Found, ApiError> {
    let m = cells::instance_mapping_get(&api.api_db, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    if !ctx.is_admin() && Some(m.project_id.as_str()) != ctx.project_id() {
        return Err(not_found(id));
    }
    let Some(cell_id) = m.cell_id else {
        return match boot::build_request_get(&api.api_db, id).await? {
            Some(b) => Ok(Found::Building(Box::new(b))),
            None => {
                // Scheduled between the two reads: look again.
                let m = cells::instance_mapping_get(&api.api_db, id)
                    .await?
                    .ok_or_else(|| not_found(id))?;
                if m.cell_id.is_none() {
                    return Err(not_found(id));
                }
                Box::pin(find(api, ctx, id)).await
            }
        };
    };
    let cell = cells::cell_get_by_id(&api.api_db, cell_id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let read = async {
        let db = api.cell_db(&cell).await?;
        let row = celldb::instance_get(&db, id).await?;
        Ok::<_, ComputeError>((db, row))
    };
    match tokio::time::timeout(api.settings.cell_timeout, read).await {
        Ok(Ok((db, Some(row)))) if row.deleted == 0 => Ok(Found::Cell {
            cell,
            db,
            row: Box::new(row),
        }),
        Ok(Ok(_)) => Err(not_found(id)),
        Ok(Err(e)) => {
            tracing::warn!(cell = %cell.uuid, error = %e, "cell did not answer");
            Ok(Found::Down(m))
        }
        Err(_) => {
            tracing::warn!(cell = %cell.uuid, "cell did not answer in time");
            Ok(Found::Down(m))
        }
    }
}

/// host → UP / DOWN / MAINTENANCE across the cells (what admins see as `host_status`).
async fn host_statuses(api: &ComputeApi) -> Result<HashMap<String, &'static str>, ApiError> {
    let down = api.settings.service_down_time;
    let now = tessera_types::now_epoch_micros();
    let per_cell = api
        .each_cell(|_, db| async move { celldb::services(&db).await })
        .await?;
    let mut out = HashMap::new();
    for (_, services) in per_cell {
        for s in services.into_iter().filter(|s| s.binary == "nova-compute") {
            let st = if !crate::api::services::is_up_at(&s, down, now) {
                "DOWN"
            } else if s.disabled {
                "MAINTENANCE"
            } else {
                "UP"
            };
            out.insert(s.host.clone(), st);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// GET /servers/{id}

pub(crate) async fn show(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let found = find(&api, &ctx, &id).await?;
    let hs = if ctx.is_admin() && mv.at_least(16) {
        Some(host_statuses(&api).await?)
    } else {
        None
    };
    let v = ViewCtx {
        base: base_url(&headers),
        mv,
        admin: ctx.is_admin(),
        host_status: hs.map(Arc::new),
    };
    let server = match found {
        Found::Building(b) => detail_view(&b.as_row(), None, &v),
        Found::Cell { db, row, .. } => {
            let fault = if row.vm_state == "error" {
                celldb::fault_latest(&db, &row.uuid).await?
            } else {
                None
            };
            detail_view(&row, fault.as_ref(), &v)
        }
        Found::Down(m) if mv.at_least(69) => {
            let mut s = down_cell_view(&m, &v, true);
            if let Some(spec) = boot::request_spec_get(&api.api_db, &m.instance_uuid).await? {
                s["user_id"] = json!(spec.user_id);
                s["OS-EXT-AZ:availability_zone"] =
                    json!(spec.availability_zone.unwrap_or_else(|| "UNKNOWN".into()));
                s["OS-EXT-STS:power_state"] = json!(0);
            }
            s
        }
        Found::Down(_) => {
            return Err(nova(
                StatusCode::SERVICE_UNAVAILABLE,
                "The cell of this server is not responding; try again later.",
            ))
        }
    };
    let mut server = server;
    // 2.71: the server groups the server is in (at most one), on show only.
    if mv.at_least(71) && server.get("status").is_some_and(|st| st != "UNKNOWN") {
        server["server_groups"] = json!(crate::groups::of_member(&api.api_db, &id).await?);
    }
    Ok(axum::Json(json!({ "server": server })).into_response())
}

// ---------------------------------------------------------------------------------------------------------
// GET /servers, /servers/detail

fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn truthy(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" | "" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

fn parse_time(field: &str, s: &str) -> Result<i64, ApiError> {
    tessera_types::parse_iso(s).ok_or_else(|| {
        bad(format!(
            "Invalid input for query parameters {field}. Value: {s}. '{s}' is not a 'date-time'"
        ))
    })
}

pub(crate) async fn list(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    listing(&api, &ctx, mv, &headers, q, false).await
}

pub(crate) async fn detail(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    listing(&api, &ctx, mv, &headers, q, true).await
}

async fn listing(
    api: &Arc<ComputeApi>,
    ctx: &RequestContext,
    mv: Mv,
    headers: &HeaderMap,
    raw: Option<String>,
    detail: bool,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(&raw);
    let one = |k: &str| pairs.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let admin = ctx.is_admin();
    let mut f = ListFilter::default();
    let all_tenants = match one("all_tenants") {
        Some(v) => {
            let on = truthy(&v).ok_or_else(|| {
                bad(format!(
                    "Invalid input for query parameters all_tenants. Value: {v}."
                ))
            })?;
            if on && !admin {
                return Err(nova(
                    StatusCode::FORBIDDEN,
                    "Policy doesn't allow os_compute_api:servers:index:get_all_tenants to be performed.",
                ));
            }
            on
        }
        None => false,
    };
    let own_project = ctx.project_id().map(str::to_string);
    f.project_id = if all_tenants {
        one("project_id").or_else(|| one("tenant_id"))
    } else if admin {
        one("project_id").or_else(|| one("tenant_id")).or(own_project)
    } else {
        Some(caller_project(ctx)?)
    };
    f.name = one("name");
    if let Some(s) = one("status") {
        f.vm_states = Some(vm_states_of(&s));
    }
    if admin {
        f.host = one("host").or_else(|| one("node"));
    }
    f.user_id = one("user_id");
    f.availability_zone = one("availability_zone");
    f.image_ref = one("image");
    f.key_name = one("key_name");
    f.reservation_id = one("reservation_id");
    if let Some(t) = one("changes-since") {
        f.changes_since = Some(parse_time("changes-since", &t)?);
    }
    if let Some(t) = one("changes-before").filter(|_| mv.at_least(66)) {
        f.changes_before = Some(parse_time("changes-before", &t)?);
    }
    if let (Some(a), Some(b)) = (f.changes_since, f.changes_before) {
        if b < a {
            return Err(bad(
                "The value of changes-since must be less than or equal to changes-before.",
            ));
        }
    }
    if let Some(d) = one("deleted") {
        if admin && truthy(&d) == Some(true) {
            f.deleted_only = true;
        }
    }
    // Sort: the keys asked for (directions pair up with them), then uuid as the tie-break.
    let keys: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "sort_key")
        .map(|(_, v)| v.clone())
        .collect();
    let dirs: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "sort_dir")
        .map(|(_, v)| v.clone())
        .collect();
    for d in &dirs {
        if d != "asc" && d != "desc" {
            return Err(bad(format!("Invalid input for query parameters sort_dir. Value: {d}. '{d}' is not one of ['asc', 'desc']")));
        }
    }
    let mut sort = Vec::new();
    if keys.is_empty() {
        sort.push(SortCol::new("created_at", true).ok_or_else(|| bad("sort"))?);
    }
    for (i, k) in keys.iter().enumerate() {
        let desc = dirs.get(i).or(dirs.last()).is_none_or(|d| d == "desc");
        let c = SortCol::new(k, desc).ok_or_else(|| {
            bad(format!(
                "Invalid input for query parameters sort_key. Value: {k}."
            ))
        })?;
        if (k == "host" || k == "node") && !admin {
            continue;
        }
        sort.push(c);
    }
    let tail_desc = sort.last().is_none_or(|c| c.desc);
    if !sort.iter().any(|c| c.key == "uuid") {
        sort.push(SortCol::new("uuid", tail_desc).ok_or_else(|| bad("sort"))?);
    }
    let max = api.servers.max_limit;
    let limit = match one("limit") {
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                bad(format!(
                    "Invalid input for query parameters limit. Value: {l}. '{l}' does not match '^[0-9]*$'"
                ))
            })?
            .min(max),
        None => max,
    };
    // The marker may be in any cell, or still a build request.
    let after = match one("marker") {
        Some(m) => {
            let row = marker_row(api, &m)
                .await?
                .ok_or_else(|| bad(format!("marker [{m}] not found")))?;
            Some(sort.iter().map(|c| row.sort_value(c)).collect::<Vec<_>>())
        }
        None => None,
    };
    let first_page = after.is_none();
    let hs = if detail && admin && mv.at_least(16) {
        Some(Arc::new(host_statuses(api).await?))
    } else {
        None
    };
    let v = ViewCtx {
        base: base_url(headers),
        mv,
        admin,
        host_status: hs,
    };
    // Build requests (servers not in a cell yet) take part in the same order. Read before the cells: a server
    // that leaves its build request meanwhile is in its cell by then (the row is made before the request is
    // deleted), so it is found in one or both, never in neither.
    let mut building = Vec::new();
    for b in build_requests(&api.api_db, f.project_id.as_deref()).await? {
        let r = b.as_row();
        if !f.matches(&r) {
            continue;
        }
        if let Some(a) = &after {
            let vals: Vec<_> = sort.iter().map(|c| r.sort_value(c)).collect();
            if !after_in_order(&vals, a, &sort) {
                continue;
            }
        }
        building.push(r);
    }
    // Each cell is read and its page rendered in its own task (both cores work on a large listing); the
    // pages are then merged in the sort order and the first `limit` kept.
    let mut tasks = Vec::new();
    for c in api.cells().await? {
        let (api, f, sort, after, v) = (api.clone(), f.clone(), sort.clone(), after.clone(), v.clone());
        tasks.push(tokio::spawn(async move {
            let work = async {
                let db = api.cell_db(&c).await?;
                let rows = celldb::instances_list(&db, &f, &sort, after.as_deref(), limit).await?;
                let mut faults = HashMap::new();
                if detail {
                    for r in rows.iter().filter(|r| r.vm_state == "error" || r.deleted != 0) {
                        if let Some(fl) = celldb::fault_latest(&db, &r.uuid).await? {
                            faults.insert(r.uuid.clone(), fl);
                        }
                    }
                }
                Ok::<_, ComputeError>(render_rows(rows, &faults, &v, detail))
            };
            let r = match tokio::time::timeout(api.settings.cell_timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(ComputeError::NotFound(format!("cell {} timed out", c.uuid))),
            };
            (c, r)
        }));
    }
    let mut pages: Vec<(InstanceRow, Vec<u8>)> = Vec::new();
    let mut down: Vec<CellMapping> = Vec::new();
    for t in tasks {
        let (c, r) = t.await.map_err(super::internal)?;
        match r {
            Ok(Ok(p)) => pages.extend(p),
            Ok(Err(e)) => return Err(super::internal(e)),
            Err(e) => {
                tracing::warn!(cell = %c.uuid, error = %e, "cell did not answer; its servers are left out");
                down.push(c);
            }
        }
    }
    // Found in both: the cell's row is the newer.
    let in_cells: std::collections::HashSet<&str> = pages.iter().map(|(r, _)| r.uuid.as_str()).collect();
    building.retain(|r| !in_cells.contains(r.uuid.as_str()));
    pages.extend(render_rows(building, &HashMap::new(), &v, detail).map_err(super::internal)?);
    pages.sort_by(|a, b| celldb::compare_rows(&a.0, &b.0, &sort));
    pages.truncate(limit as usize);
    let mut out: Vec<u8> = Vec::with_capacity(pages.iter().map(|p| p.1.len() + 2).sum::<usize>() + 256);
    out.extend_from_slice(b"{\"servers\": [");
    for (i, (_, bytes)) in pages.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(bytes);
    }
    let mut rendered = String::from_utf8(out).map_err(super::internal)?;
    let rows: Vec<&InstanceRow> = pages.iter().map(|p| &p.0).collect();
    let mut views: Vec<Value> = Vec::new();
    if mv.at_least(69) && first_page && !down.is_empty() {
        for c in &down {
            for m in cells::live_instance_mappings(&api.api_db, c.id, f.project_id.as_deref()).await? {
                views.push(down_cell_view(&m, &v, detail));
            }
        }
    }
    for (i, view) in views.iter().enumerate() {
        if i > 0 || !rows.is_empty() {
            rendered.push_str(", ");
        }
        rendered.push_str(&view.to_string());
    }
    rendered.push(']');
    let coll = if detail { "servers/detail" } else { "servers" };
    if limit > 0 && rows.len() as i64 == limit {
        if let Some(last) = rows.last() {
            let mut qs = form_urlencoded::Serializer::new(String::new());
            for (k, val) in pairs.iter().filter(|(k, _)| k != "marker") {
                qs.append_pair(k, val);
            }
            qs.append_pair("marker", &last.uuid);
            let project = ctx.project_id().unwrap_or_default();
            let links =
                json!([{"rel": "next", "href": format!("{}/v2.1/{project}/{coll}?{}", v.base, qs.finish())}]);
            rendered.push_str(", \"servers_links\": ");
            rendered.push_str(&links.to_string());
        }
    }
    rendered.push('}');
    Ok(([(http::header::CONTENT_TYPE, "application/json")], rendered).into_response())
}

/// Render rows (detail or brief views), each paired with its JSON.
fn render_rows(
    rows: Vec<InstanceRow>,
    faults: &HashMap<String, Fault>,
    v: &ViewCtx,
    detail: bool,
) -> Result<Vec<(InstanceRow, Vec<u8>)>, serde_json::Error> {
    // One flavor member per distinct flavor (a short list: servers share a few flavors).
    let mut flavors: Vec<(String, Value)> = Vec::new();
    // hostIds by (project, host): a hash each, and servers share hosts.
    let mut host_ids: HashMap<(String, String), String> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut bytes = Vec::with_capacity(if detail { 1400 } else { 300 });
        if detail {
            if !flavors.iter().any(|(k, _)| *k == r.flavor) {
                flavors.push((r.flavor.clone(), flavor_view(&r.flavor, v)));
            }
            let f = flavors
                .iter()
                .find(|(k, _)| *k == r.flavor)
                .map(|(_, f)| f)
                .unwrap_or(&Value::Null);
            let hid = match r.host.as_deref() {
                Some(h) if !h.is_empty() => host_ids
                    .entry((r.project_id.clone(), h.to_string()))
                    .or_insert_with(|| host_id(&r.project_id, Some(h)))
                    .clone(),
                _ => String::new(),
            };
            serde_json::to_writer(&mut bytes, &render_detail(&r, faults.get(&r.uuid), v, f, hid))?;
        } else {
            serde_json::to_writer(
                &mut bytes,
                &json!({"id": r.uuid, "name": r.display_name.clone().unwrap_or_default(),
                        "links": links(&v.base, &r.project_id, &r.uuid)}),
            )?;
        }
        out.push((r, bytes));
    }
    Ok(out)
}

/// Whether sort values `vals` come strictly after `marker` in `sort` order.
fn after_in_order(vals: &[celldb::SortVal], marker: &[celldb::SortVal], sort: &[SortCol]) -> bool {
    for ((v, m), c) in vals.iter().zip(marker).zip(sort) {
        let o = v.cmp(m);
        let o = if c.desc { o.reverse() } else { o };
        match o {
            std::cmp::Ordering::Greater => return true,
            std::cmp::Ordering::Less => return false,
            std::cmp::Ordering::Equal => {}
        }
    }
    false
}

/// The marker's row wherever it is (a cell, or a build request), deleted servers included.
async fn marker_row(api: &ComputeApi, id: &str) -> Result<Option<InstanceRow>, ApiError> {
    let Some(m) = cells::instance_mapping_get(&api.api_db, id).await? else {
        return Ok(None);
    };
    match m.cell_id {
        None => Ok(boot::build_request_get(&api.api_db, id)
            .await?
            .map(|b| b.as_row())),
        Some(cid) => {
            let Some(cell) = cells::cell_get_by_id(&api.api_db, cid).await? else {
                return Ok(None);
            };
            let db = api.cell_db(&cell).await?;
            Ok(celldb::instance_get(&db, id).await?)
        }
    }
}

async fn build_requests(api: &Db, project: Option<&str>) -> Result<Vec<BootInstance>, ComputeError> {
    let rows = match project {
        Some(p) => {
            sqlx::query(&api.sql("SELECT instance FROM build_requests WHERE project_id = ?"))
                .bind(p)
                .fetch_all(api.pool())
                .await?
        }
        None => {
            sqlx::query("SELECT instance FROM build_requests")
                .fetch_all(api.pool())
                .await?
        }
    };
    let mut out = Vec::new();
    for r in rows {
        let s = tessera_db::get_text(&r, "instance")?;
        if let Ok(b) = serde_json::from_str(&s) {
            out.push(b);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// POST /servers

/// A positive integer given as a number or a string of digits (Nova's schema allows both).
pub(crate) fn positive_int(field: &str, v: &Value) -> Result<i64, ApiError> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    };
    n.filter(|n| *n >= 1)
        .ok_or_else(|| invalid_field(field, v, "must be a positive integer"))
}

fn string_field<'a>(field: &str, v: &'a Value, min: usize, max: usize) -> Result<&'a str, ApiError> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid_field(field, v, &format!("{v} is not of type 'string'")))?;
    let n = s.chars().count();
    if n < min {
        return Err(invalid_field(field, v, &format!("{v} is too short")));
    }
    if n > max {
        return Err(invalid_field(field, v, &format!("{v} is too long")));
    }
    Ok(s)
}

/// Check a boot's networks and security groups with the Networking service and say what the instances
/// ask for.
async fn resolve_networks(
    ctx: &tessera_types::RequestContext,
    project: &str,
    wiring: &BootWiring,
    networks: Networks,
    security_groups: &[String],
    count: i64,
) -> Result<crate::network::NetworkRequest, ApiError> {
    use crate::network::{NetworkCheck, NetworkRequest, RequestedNetwork};
    if networks == Networks::None {
        return Ok(NetworkRequest::default());
    }
    let Some(client) = wiring.network.clone() else {
        return Err(bad(
            "No networking service is configured: boot with networks \"none\".",
        ));
    };
    let to_api = |e: NetworkCheck| match e {
        NetworkCheck::BadRequest(m) => bad(m),
        NetworkCheck::Conflict(m) => nova(StatusCode::CONFLICT, m),
        NetworkCheck::Unavailable(m) => {
            tracing::error!(error = %m, "networking service unavailable");
            nova(
                StatusCode::SERVICE_UNAVAILABLE,
                "The networking service is not available.",
            )
        }
    };
    let requested: Vec<RequestedNetwork> = match networks {
        Networks::List(list) => client
            .validate(project, ctx.is_admin(), Some(list), count)
            .await
            .map_err(to_api)?,
        Networks::Auto => client
            .validate(project, ctx.is_admin(), None, count)
            .await
            .map_err(to_api)?,
        // Before 2.37, no `networks`: the project's network if there is exactly one, else none.
        _ => {
            let nets = client
                .available_networks(project)
                .await
                .map_err(|e| to_api(NetworkCheck::Unavailable(e)))?;
            match nets.as_slice() {
                [one] => vec![RequestedNetwork {
                    network_id: one["id"].as_str().map(str::to_string),
                    ..Default::default()
                }],
                [] => Vec::new(),
                _ => {
                    return Err(nova(
                        StatusCode::CONFLICT,
                        "Multiple possible networks found, use a Network ID to be more specific.",
                    ))
                }
            }
        }
    };
    let security_groups = if security_groups.is_empty() {
        Vec::new()
    } else {
        client
            .security_group_ids(project, security_groups)
            .await
            .map_err(to_api)?
    };
    Ok(NetworkRequest {
        requested,
        security_groups,
        vifs: Vec::new(),
    })
}

/// What `networks` asked for.
#[derive(Debug, Clone, PartialEq)]
enum Networks {
    /// `"auto"`: the project's one network, else its auto-allocated one.
    Auto,
    /// `"none"` (or `[]` before 2.37).
    None,
    /// Not given (before 2.37): the project's one network if it has one.
    Default,
    List(Vec<crate::network::RequestedNetwork>),
}

fn parse_networks(v: Option<&Value>, mv: Mv) -> Result<Networks, ApiError> {
    let Some(v) = v else {
        if mv.at_least(37) {
            return Err(bad("Invalid input for field/attribute server. Value: the server. 'networks' is a required property"));
        }
        return Ok(Networks::Default);
    };
    match v {
        Value::String(s) if mv.at_least(37) && s == "auto" => Ok(Networks::Auto),
        Value::String(s) if mv.at_least(37) && s == "none" => Ok(Networks::None),
        Value::Array(items) => {
            if items.is_empty() && mv.at_least(37) {
                return Err(invalid_field("networks", v, "[] is too short"));
            }
            let mut out = Vec::new();
            for n in items {
                let o = n
                    .as_object()
                    .ok_or_else(|| invalid_field("networks", v, &format!("{n} is not of type 'object'")))?;
                let allowed: &[&str] = if mv.at_least(32) {
                    &["uuid", "port", "fixed_ip", "tag"]
                } else {
                    &["uuid", "port", "fixed_ip"]
                };
                if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
                    return Err(invalid_field(
                        "networks",
                        v,
                        &format!("Additional properties are not allowed ('{k}' was unexpected)"),
                    ));
                }
                let text = |k: &str| -> Result<Option<String>, ApiError> {
                    match o.get(k) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::String(s)) => Ok(Some(s.clone())),
                        Some(x) => Err(invalid_field(
                            "networks",
                            v,
                            &format!("{x} is not of type 'string'"),
                        )),
                    }
                };
                let r = crate::network::RequestedNetwork {
                    network_id: text("uuid")?,
                    port_id: text("port")?,
                    fixed_ip: text("fixed_ip")?,
                    tag: text("tag")?,
                };
                if let Some(ip) = &r.fixed_ip {
                    if ip.parse::<std::net::IpAddr>().is_err() {
                        return Err(bad(format!("Invalid fixed IP address ({ip})")));
                    }
                }
                match (&r.network_id, &r.port_id) {
                    (None, None) => {
                        return Err(bad("Bad networks format: network uuid is not in proper format"))
                    }
                    (Some(u), None) if !super::uuid_like(u) => {
                        return Err(bad(format!(
                            "Bad networks format: network uuid is not in proper format ({u})"
                        )))
                    }
                    _ => {}
                }
                if out
                    .iter()
                    .any(|o: &crate::network::RequestedNetwork| o.port_id.is_some() && o.port_id == r.port_id)
                {
                    return Err(bad("Duplicate networks are not allowed"));
                }
                out.push(r);
            }
            if out.is_empty() {
                // Before 2.37 an empty list means no network.
                return Ok(Networks::None);
            }
            Ok(Networks::List(out))
        }
        _ => Err(invalid_field(
            "networks",
            v,
            "is not valid under any of the given schemas",
        )),
    }
}

const NO_VOLUMES: &str =
    "Block Device Mapping is Invalid: volumes need the Block Storage service, which this cloud does not have.";

/// Check `block_device_mapping_v2`: the one mapping this cloud can honour is the image booted onto the local
/// root disk (what clients send alongside `imageRef`); volumes, snapshots and blank disks are refused.
/// The image the mapping names, if any.
fn bdm_image(v: Option<&Value>, image_ref: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let items = v.as_array().ok_or_else(|| {
        invalid_field(
            "block_device_mapping_v2",
            v,
            &format!("{v} is not of type 'array'"),
        )
    })?;
    let mut image = None;
    for b in items {
        let o = b.as_object().ok_or_else(|| {
            invalid_field(
                "block_device_mapping_v2",
                v,
                &format!("{b} is not of type 'object'"),
            )
        })?;
        let source = o.get("source_type").and_then(Value::as_str).unwrap_or("");
        let dest = o
            .get("destination_type")
            .and_then(Value::as_str)
            .unwrap_or("local");
        if !["image", "volume", "snapshot", "blank"].contains(&source) {
            return Err(bad(format!(
                "Block Device Mapping is Invalid: unknown source_type '{source}'."
            )));
        }
        if dest == "volume" || source == "volume" || source == "snapshot" {
            return Err(bad(NO_VOLUMES));
        }
        if source == "blank" {
            return Err(bad("Block Device Mapping is Invalid: extra local disks are not supported; use a flavor with ephemeral or swap space."));
        }
        let boot = o
            .get("boot_index")
            .map(|b| b.as_i64().or_else(|| b.as_str().and_then(|s| s.parse().ok())));
        if boot != Some(Some(0)) {
            return Err(bad(
                "Block Device Mapping is Invalid: an image mapping must be the boot device (boot_index 0).",
            ));
        }
        let uuid = o
            .get("uuid")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("Block Device Mapping is Invalid: the image mapping has no uuid."))?;
        if image_ref.is_some_and(|i| i != uuid) || image.is_some() {
            return Err(bad(
                "Block Device Mapping is Invalid: the boot image and imageRef differ.",
            ));
        }
        image = Some(uuid.to_string());
    }
    Ok(image)
}

/// An image as the Image API shows it to the caller.
async fn image_get(api: &ComputeApi, token: &str, id: &str) -> Result<Value, ApiError> {
    let Some(p) = &api.placement else {
        return Err(nova(
            StatusCode::SERVICE_UNAVAILABLE,
            "The image service is not reachable.",
        ));
    };
    let endpoint = p.service_endpoint("image").await.map_err(|e| {
        tracing::error!(error = %e, "no image endpoint");
        nova(
            StatusCode::SERVICE_UNAVAILABLE,
            "The image service is not reachable.",
        )
    })?;
    let url = format!("{}/v2/images/{id}", endpoint.trim_end_matches('/'));
    let r = api
        .http
        .get(&url)
        .header("X-Auth-Token", token)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "image service request failed");
            nova(
                StatusCode::SERVICE_UNAVAILABLE,
                "The image service is not reachable.",
            )
        })?;
    match r.status().as_u16() {
        200 => r.json().await.map_err(super::internal),
        404 | 400 => Err(bad(format!("Image {id} could not be found."))),
        s => {
            tracing::error!(status = s, "image service answered");
            Err(nova(
                StatusCode::SERVICE_UNAVAILABLE,
                "The image service is not reachable.",
            ))
        }
    }
}

/// Glance's own image fields; everything else is a property the scheduler's image filter may read.
const IMAGE_FIELDS: &[&str] = &[
    "id",
    "name",
    "status",
    "visibility",
    "protected",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "owner",
    "size",
    "virtual_size",
    "min_ram",
    "min_disk",
    "disk_format",
    "container_format",
    "created_at",
    "updated_at",
    "tags",
    "self",
    "file",
    "schema",
    "locations",
    "direct_url",
    "os_hidden",
    "stores",
];

fn random_password() -> String {
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    (0..12)
        .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
        .collect()
}

/// Nova's hostname from a display name: lower case, runs of other characters as one `-`, at most 63.
fn sanitize_hostname(name: &str) -> String {
    let mut out = String::new();
    for ch in name.chars() {
        let c = ch.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if (c == '-' || c == '.' || c == ' ' || c == '_') && !out.ends_with('-') {
            out.push('-');
        }
    }
    let t: String = out
        .trim_matches(|c| c == '-' || c == '.')
        .chars()
        .take(63)
        .collect();
    let t = t.trim_end_matches('-').to_string();
    if t.is_empty() {
        "server".into()
    } else {
        t
    }
}

/// Server keys per microversion (Nova's create schema).
fn allowed_server_keys(mv: Mv) -> Vec<&'static str> {
    let mut k = vec![
        "name",
        "imageRef",
        "flavorRef",
        "adminPass",
        "metadata",
        "networks",
        "OS-DCF:diskConfig",
        "accessIPv4",
        "accessIPv6",
        "availability_zone",
        "block_device_mapping",
        "block_device_mapping_v2",
        "config_drive",
        "key_name",
        "min_count",
        "max_count",
        "return_reservation_id",
        "security_groups",
        "user_data",
    ];
    if !mv.at_least(57) {
        k.push("personality");
    }
    if mv.at_least(19) {
        k.push("description");
    }
    if mv.at_least(52) {
        k.push("tags");
    }
    if mv.at_least(63) {
        k.push("trusted_image_certificates");
    }
    if mv.at_least(74) {
        k.extend(["host", "hypervisor_hostname"]);
    }
    if mv.at_least(90) {
        k.push("hostname");
    }
    k
}

pub(crate) async fn create(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    b: Bytes,
) -> Result<Response, ApiError> {
    let body: Value = tessera_http::body::parse_json::<Value>(Family::Nova, &headers, &b)?;
    let top = body
        .as_object()
        .ok_or_else(|| bad("Invalid input for field/attribute body. Value: the body must be an object"))?;
    if let Some(k) = top
        .keys()
        .find(|k| !["server", "os:scheduler_hints", "OS-SCH-HNT:scheduler_hints"].contains(&k.as_str()))
    {
        return Err(bad(format!("Invalid input for field/attribute body. Additional properties are not allowed ('{k}' was unexpected)")));
    }
    let s = top.get("server").and_then(Value::as_object).ok_or_else(|| {
        bad("Invalid input for field/attribute server. Value: None. 'server' is a required property")
    })?;
    let allowed = allowed_server_keys(mv);
    if let Some(k) = s.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(format!("Invalid input for field/attribute server. Additional properties are not allowed ('{k}' was unexpected)")));
    }
    // Scheduler hints: `group` (a server group's uuid, or a list holding one) is honoured; the others are
    // for filters this scheduler does not run, accepted as Nova accepts them when those filters are off.
    let mut group_hint: Option<String> = None;
    for hints in ["os:scheduler_hints", "OS-SCH-HNT:scheduler_hints"] {
        if let Some(h) = top.get(hints) {
            if !h.is_object() {
                return Err(invalid_field(hints, h, &format!("{h} is not of type 'object'")));
            }
            if let Some(g) = h.get("group") {
                let one = match g {
                    Value::String(s) => Some(s.as_str()),
                    Value::Array(a) if a.len() == 1 => a[0].as_str(),
                    _ => None,
                };
                match one {
                    Some(u) if super::uuid_like(u) => group_hint = Some(u.to_string()),
                    _ => {
                        return Err(invalid_field(
                            "group",
                            g,
                            &format!("{g} is not valid under any of the given schemas"),
                        ))
                    }
                }
            }
        }
    }
    let project = caller_project(&ctx)?;
    let wiring = api
        .boot
        .get()
        .ok_or_else(|| nova(StatusCode::SERVICE_UNAVAILABLE, "The conductor is not available."))?;

    // --- the body, member by member
    let name_v = s.get("name").ok_or_else(|| {
        bad("Invalid input for field/attribute server. Value: the server. 'name' is a required property")
    })?;
    let name = string_field("name", name_v, 1, 255)?;
    if name.trim() != name {
        return Err(invalid_field(
            "name",
            name_v,
            "Leading or trailing whitespace is not allowed",
        ));
    }
    let flavor_v = s.get("flavorRef").ok_or_else(|| {
        bad("Invalid input for field/attribute server. Value: the server. 'flavorRef' is a required property")
    })?;
    let flavor_ref = match flavor_v {
        Value::String(x) if !x.is_empty() => x.rsplit('/').next().unwrap_or(x).to_string(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(invalid_field(
                "flavorRef",
                flavor_v,
                "is not valid under any of the given schemas",
            ))
        }
    };
    let mut image_ref = match s.get("imageRef") {
        Some(Value::String(x)) if !x.is_empty() => Some(x.rsplit('/').next().unwrap_or(x).to_string()),
        Some(Value::String(_)) | None => None,
        Some(v) => {
            return Err(invalid_field(
                "imageRef",
                v,
                &format!("{v} is not of type 'string'"),
            ))
        }
    };
    if let Some(img) = bdm_image(s.get("block_device_mapping_v2"), image_ref.as_deref())? {
        image_ref = Some(img);
    }
    match s.get("block_device_mapping") {
        None => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(Value::Array(_)) => return Err(bad(NO_VOLUMES)),
        Some(v) => {
            return Err(invalid_field(
                "block_device_mapping",
                v,
                &format!("{v} is not of type 'array'"),
            ))
        }
    }
    let Some(image_ref) = image_ref else {
        return Err(bad("Missing imageRef attribute"));
    };
    if let Some(p) = s.get("personality") {
        if p.as_array().is_some_and(|a| !a.is_empty()) {
            return Err(bad("Personality file injection is not supported by this cloud; pass the files as user_data or through config_drive metadata."));
        }
    }
    if let Some(d) = s.get("OS-DCF:diskConfig") {
        if d != "AUTO" && d != "MANUAL" {
            return Err(invalid_field(
                "OS-DCF:diskConfig",
                d,
                &format!("{d} is not one of ['AUTO', 'MANUAL']"),
            ));
        }
    }
    let access_v4 = match s.get("accessIPv4") {
        Some(v) => {
            let a = string_field("accessIPv4", v, 0, 39)?;
            if !a.is_empty() && a.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(invalid_field("accessIPv4", v, &format!("{v} is not a 'ipv4'")));
            }
            Some(a.to_string()).filter(|a| !a.is_empty())
        }
        None => None,
    };
    let access_v6 = match s.get("accessIPv6") {
        Some(v) => {
            let a = string_field("accessIPv6", v, 0, 39)?;
            if !a.is_empty() && a.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid_field("accessIPv6", v, &format!("{v} is not a 'ipv6'")));
            }
            Some(a.to_string()).filter(|a| !a.is_empty())
        }
        None => None,
    };
    let mut metadata = BTreeMap::new();
    if let Some(m) = s.get("metadata") {
        let o = m
            .as_object()
            .ok_or_else(|| invalid_field("metadata", m, &format!("{m} is not of type 'object'")))?;
        for (k, v) in o {
            if k.is_empty() || k.chars().count() > 255 {
                return Err(invalid_field(
                    "metadata",
                    m,
                    "metadata keys must be 1 to 255 characters long",
                ));
            }
            let val = string_field("metadata", v, 0, 255)?;
            metadata.insert(k.clone(), val.to_string());
        }
        if metadata.len() as i64 > api.servers.metadata_items && api.servers.metadata_items >= 0 {
            return Err(nova(
                StatusCode::FORBIDDEN,
                format!(
                "Quota exceeded for metadata_items: Requested {}, but already used 0 of {} metadata_items",
                metadata.len(), api.servers.metadata_items
            ),
            ));
        }
    }
    let user_data = match s.get("user_data") {
        Some(Value::Null) | None => None,
        Some(v) => {
            let u = string_field("user_data", v, 0, 65535)?;
            if base64::engine::general_purpose::STANDARD.decode(u).is_err() {
                return Err(bad("User data needs to be valid base 64."));
            }
            Some(u.to_string())
        }
    };
    let config_drive = match s.get("config_drive") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(if *b { "True".to_string() } else { String::new() }),
        Some(Value::String(x)) => match truthy(x) {
            Some(b) => Some(if b { "True".to_string() } else { String::new() }),
            None => return Err(invalid_field("config_drive", &json!(x), "is not a boolean")),
        },
        Some(v) => return Err(invalid_field("config_drive", v, "is not a boolean")),
    };
    let min_count = match s.get("min_count") {
        Some(v) => positive_int("min_count", v)?,
        None => 1,
    };
    let max_count = match s.get("max_count") {
        Some(v) => positive_int("max_count", v)?,
        None => min_count,
    };
    if min_count > max_count {
        return Err(bad("min_count must be <= max_count"));
    }
    let return_reservation_id = match s.get("return_reservation_id") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(x)) => {
            truthy(x).ok_or_else(|| invalid_field("return_reservation_id", &json!(x), "is not a boolean"))?
        }
        Some(v) => return Err(invalid_field("return_reservation_id", v, "is not a boolean")),
    };
    let mut security_groups = Vec::new();
    if let Some(sg) = s.get("security_groups") {
        let a = sg
            .as_array()
            .ok_or_else(|| invalid_field("security_groups", sg, &format!("{sg} is not of type 'array'")))?;
        for g in a {
            let n = g
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| invalid_field("security_groups", sg, "each group needs a 'name'"))?;
            security_groups.push(n.to_string());
        }
    }
    let description = match s.get("description") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string_field("description", v, 0, 255)?.to_string()),
    };
    if let Some(t) = s.get("tags") {
        let a = t
            .as_array()
            .ok_or_else(|| invalid_field("tags", t, "is not of type 'array'"))?;
        if !a.is_empty() {
            return Err(bad("Server tags are not supported by this cloud yet."));
        }
    }
    if s.get("trusted_image_certificates").is_some_and(|v| !v.is_null()) {
        return Err(bad(
            "Image signature certificate validation is not supported by this cloud.",
        ));
    }
    if s.contains_key("host") || s.contains_key("hypervisor_hostname") {
        if !ctx.is_admin() {
            return Err(nova(
                StatusCode::FORBIDDEN,
                "Policy doesn't allow compute:servers:create:requested_destination to be performed.",
            ));
        }
        return Err(bad(
            "Requesting a destination host is not supported by this cloud's scheduler yet.",
        ));
    }
    let hostname = match s.get("hostname") {
        Some(v) => {
            let h = string_field("hostname", v, 2, 255)?;
            if !h
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                || h.starts_with('-')
            {
                return Err(invalid_field("hostname", v, "is not a valid hostname"));
            }
            Some(h.to_string())
        }
        None => None,
    };
    if hostname.is_some() && max_count > 1 {
        return Err(bad("Cannot set the hostname of several servers at once."));
    }
    let networks = parse_networks(s.get("networks"), mv)?;
    let admin_pass = match s.get("adminPass") {
        Some(v) => Some(string_field("adminPass", v, 0, 255)?.to_string()),
        None => None,
    };
    let zone = match s.get("availability_zone") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let z = string_field("availability_zone", v, 1, 255)?;
            if z.contains(':') {
                return Err(bad("Requesting a host through availability_zone is not supported by this cloud's scheduler yet."));
            }
            let zones = crate::aggregates::host_zones(&api.api_db).await?;
            if z != api.settings.default_availability_zone && !zones.values().any(|x| x == z) {
                return Err(bad("The requested availability zone is not available"));
            }
            Some(z.to_string())
        }
    };

    // --- what the body names must exist
    let flavor = super::flavors::find(&api, &ctx, &flavor_ref)
        .await
        .map_err(|_| bad(format!("Flavor {flavor_ref} could not be found.")))?;
    if flavor.disabled {
        return Err(bad("Flavor is disabled."));
    }
    let token = headers
        .get("X-Auth-Token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let image = image_get(&api, &token, &image_ref).await?;
    if image["status"] != "active" {
        return Err(bad(format!("Image {image_ref} is not active.")));
    }
    let min_ram = image["min_ram"].as_i64().unwrap_or(0);
    if min_ram > flavor.memory_mb {
        return Err(bad("Flavor's memory is too small for requested image."));
    }
    let min_disk = image["min_disk"].as_i64().unwrap_or(0);
    let size = image["size"].as_i64().unwrap_or(0);
    if flavor.root_gb > 0 && (min_disk > flavor.root_gb || size > flavor.root_gb * 1024 * 1024 * 1024) {
        return Err(bad("Flavor's disk is too small for requested image."));
    }
    let mut image_properties = BTreeMap::new();
    if let Some(o) = image.as_object() {
        for (k, v) in o.iter().filter(|(k, _)| !IMAGE_FIELDS.contains(&k.as_str())) {
            let val = match v {
                Value::String(x) => x.clone(),
                other => other.to_string(),
            };
            image_properties.insert(k.clone(), val);
        }
    }
    let key = match s.get("key_name") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let k = string_field("key_name", v, 1, 255)?;
            Some(
                crate::keypairs::get(&api.api_db, &ctx.user_id, k)
                    .await?
                    .ok_or_else(|| bad("Invalid key_name provided."))?,
            )
        }
    };

    // --- networks: checked with the Networking service, `auto` resolved (Nova's validate_networks)
    let net_request = resolve_networks(&ctx, &project, wiring, networks, &security_groups, max_count).await?;

    // --- quota: as many as fit between min_count and max_count
    let count = quota_count(&api, &project, &flavor, min_count, max_count).await?;

    // --- the records, then the cast
    let now = tessera_types::now_epoch_micros();
    let reservation_id = format!(
        "r-{}",
        (0..8)
            .map(|_| {
                let a = b"abcdefghijklmnopqrstuvwxyz0123456789";
                a[rand::random::<usize>() % a.len()] as char
            })
            .collect::<String>()
    );
    let flavor_json = json!({
        "flavorid": flavor.flavorid, "name": flavor.name, "vcpus": flavor.vcpus, "memory_mb": flavor.memory_mb,
        "root_gb": flavor.root_gb, "ephemeral_gb": flavor.ephemeral_gb, "swap": flavor.swap,
        "extra_specs": flavor.extra_specs,
    });
    let mut instances = Vec::new();
    for i in 0..count {
        let display = if count > 1 {
            format!("{name}-{}", i + 1)
        } else {
            name.to_string()
        };
        instances.push(BootInstance {
            uuid: tessera_types::new_uuid(),
            project_id: project.clone(),
            user_id: ctx.user_id.clone(),
            display_name: display.clone(),
            image_ref: Some(image_ref.clone()),
            flavor: flavor_json.clone(),
            vcpus: flavor.vcpus,
            memory_mb: flavor.memory_mb,
            root_gb: flavor.root_gb,
            ephemeral_gb: flavor.ephemeral_gb,
            availability_zone: zone.clone(),
            created_at: now,
            description: description.clone(),
            hostname: Some(hostname.clone().unwrap_or_else(|| sanitize_hostname(&display))),
            key_name: key.as_ref().map(|k| k.name.clone()),
            key_data: key.as_ref().map(|k| k.public_key.clone()),
            user_data: user_data.clone(),
            config_drive: config_drive.clone(),
            reservation_id: Some(reservation_id.clone()),
            launch_index: i,
            metadata: metadata.clone(),
            access_ip_v4: access_v4.clone(),
            access_ip_v6: access_v6.clone(),
            network_info: Some(net_request.to_info()),
        });
    }
    // The server group joined: the caller's project's (or any, for admins), with room for these servers.
    let group = match &group_hint {
        Some(u) => {
            let g = crate::groups::get(&api.api_db, u)
                .await?
                .filter(|g| ctx.is_admin() || g.project_id == project)
                .ok_or_else(|| bad(format!("Instance group {u} could not be found.")))?;
            let [(_, member_limit)] = limits_of(
                &api,
                &project,
                [("server_group_members", api.servers.server_group_members)],
            )
            .await?;
            Some(boot::GroupJoin {
                group_id: g.id,
                member_limit,
            })
        }
        None => None,
    };
    let spec = RequestSpec {
        project_id: project.clone(),
        user_id: ctx.user_id.clone(),
        vcpus: flavor.vcpus,
        memory_mb: flavor.memory_mb,
        disk_gb: flavor.root_gb + flavor.ephemeral_gb + (flavor.swap + 1023) / 1024,
        extra_specs: flavor.extra_specs.clone(),
        image_properties,
        availability_zone: zone.clone(),
        instance_group: group_hint.clone(),
        ..Default::default()
    };
    boot::record(&api.api_db, &spec, &mut instances, group)
        .await
        .map_err(|e| match e {
            ComputeError::Invalid(m) => bad(m),
            ComputeError::OverQuota(m) => nova(StatusCode::FORBIDDEN, m),
            other => super::internal(other),
        })?;
    let uuids: Vec<String> = instances.iter().map(|i| i.uuid.clone()).collect();
    let msg = tessera_bus::Envelope::new(
        "schedule_and_build_instances",
        json!({ "uuids": uuids }),
        ctx.request_id.clone(),
    );
    if let Err(e) = wiring
        .api_bus
        .cast(&tessera_bus::Target::topic(boot::SUPER_TOPIC), msg)
        .await
    {
        tracing::error!(error = %e, "cannot reach the super conductor; undoing the boot");
        for u in &uuids {
            boot::unrecord(&api.api_db, u).await?;
        }
        return Err(nova(
            StatusCode::SERVICE_UNAVAILABLE,
            "The conductor is not reachable; nothing was created.",
        ));
    }
    tracing::info!(request_id = %ctx.request_id, count, %reservation_id, "boot recorded and cast");
    if return_reservation_id {
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({ "reservation_id": reservation_id })),
        )
            .into_response());
    }
    let first = &instances[0];
    let base = base_url(&headers);
    let mut server = json!({
        "id": first.uuid,
        "links": links(&base, &project, &first.uuid),
        "OS-DCF:diskConfig": s.get("OS-DCF:diskConfig").cloned().unwrap_or(json!("MANUAL")),
        "security_groups": if security_groups.is_empty() { json!([{"name": "default"}]) }
                           else { json!(security_groups.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()) },
    });
    if api.servers.enable_instance_password {
        server["adminPass"] = json!(admin_pass.unwrap_or_else(random_password));
    }
    let location = format!("{base}/v2.1/{project}/servers/{}", first.uuid);
    Ok((
        StatusCode::ACCEPTED,
        [(http::header::LOCATION, location)],
        axum::Json(json!({ "server": server })),
    )
        .into_response())
}

/// The project's quota limits for `resources` (its `quotas` rows, else the `[quota]` defaults), one query.
/// The project's limits for `resources` (defaults as given; rows of the `quotas` table override them).
pub(crate) async fn limits_of<const N: usize>(
    api: &ComputeApi,
    project: &str,
    resources: [(&'static str, i64); N],
) -> Result<[(&'static str, i64); N], ComputeError> {
    use sqlx::Row as _;
    let rows = sqlx::query(
        &api.api_db
            .sql("SELECT resource, hard_limit FROM quotas WHERE project_id = ?"),
    )
    .bind(project)
    .fetch_all(api.api_db.pool())
    .await?;
    let mut out = resources;
    for r in &rows {
        let name = tessera_db::get_text(r, "resource")?;
        if let Some(slot) = out.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = r.try_get("hard_limit")?;
        }
    }
    Ok(out)
}

/// How many of min..=max servers of `flavor` the project's instances / cores / ram quotas allow (403 when
/// not even `min`). Usage counts the build requests and every cell's live instances.
async fn quota_count(
    api: &ComputeApi,
    project: &str,
    flavor: &crate::flavors::Flavor,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    use sqlx::Row as _;
    let q = &api.servers;
    let [(_, instances), (_, cores), (_, ram)] = limits_of(
        api,
        project,
        [("instances", q.instances), ("cores", q.cores), ("ram", q.ram)],
    )
    .await?;
    let limits = [
        ("instances", instances, 1),
        ("cores", cores, flavor.vcpus),
        ("ram", ram, flavor.memory_mb),
    ];
    if limits.iter().all(|(_, l, _)| *l < 0) {
        return Ok(max);
    }
    let r = sqlx::query(&api.api_db.sql(
        "SELECT COUNT(*) AS n, COALESCE(SUM(vcpus), 0) AS c, COALESCE(SUM(memory_mb), 0) AS m FROM build_requests \
         WHERE project_id = ?",
    ))
    .bind(project)
    .fetch_one(api.api_db.pool())
    .await
    .map_err(ComputeError::from)?;
    let mut used = [
        r.try_get::<i64, _>("n").map_err(ComputeError::from)?,
        r.try_get::<i64, _>("c").map_err(ComputeError::from)?,
        r.try_get::<i64, _>("m").map_err(ComputeError::from)?,
    ];
    let p = project.to_string();
    for (_, (n, c, m)) in api
        .each_cell(|_, db| {
            let p = p.clone();
            async move { celldb::project_usage(&db, &p).await }
        })
        .await?
    {
        used[0] += n;
        used[1] += c;
        used[2] += m;
    }
    let mut allowed = max;
    for (i, (name, limit, per)) in limits.iter().enumerate() {
        if *limit < 0 || *per <= 0 {
            continue;
        }
        let room = (limit - used[i]).max(0) / per;
        if room < min {
            return Err(nova(
                StatusCode::FORBIDDEN,
                format!(
                    "Quota exceeded for {name}: Requested {}, but already used {} of {limit} {name}",
                    min * per,
                    used[i]
                ),
            ));
        }
        allowed = allowed.min(room);
    }
    Ok(allowed.max(min))
}

// ---------------------------------------------------------------------------------------------------------
// DELETE /servers/{id}

pub(crate) async fn delete(
    State(api): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if ctx.has_role("reader") && !ctx.has_role("member") && !ctx.is_admin() {
        return Err(nova(
            StatusCode::FORBIDDEN,
            "Policy doesn't allow os_compute_api:servers:delete to be performed.",
        ));
    }
    let found = find(&api, &ctx, &id).await?;
    if !matches!(found, Found::Down(_)) {
        crate::groups::remove_member(&api.api_db, &id).await?;
    }
    match found {
        Found::Building(_) => {
            if boot::build_request_delete(&api.api_db, &id).await? {
                boot::unrecord(&api.api_db, &id).await?;
                // The super conductor may have claimed already; it undoes its own work when it finds the
                // build request gone, and this release covers a claim it made just before.
                if let Some(p) = &api.placement {
                    if let Err(e) = p.release(&id).await {
                        tracing::warn!(instance = %id, error = %e, "cannot release allocations");
                    }
                }
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            // Scheduled meanwhile: delete it where it is now.
            let Found::Cell { cell, db, row } = find(&api, &ctx, &id).await? else {
                return Err(not_found(&id));
            };
            delete_in_cell(&api, &cell, &db, &row, &ctx.request_id).await?;
        }
        Found::Cell { cell, db, row } => delete_in_cell(&api, &cell, &db, &row, &ctx.request_id).await?,
        Found::Down(_) => {
            return Err(nova(
                StatusCode::SERVICE_UNAVAILABLE,
                "The cell of this server is not responding; try again later.",
            ))
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Delete an instance that has a cell: on its host when the host's compute service is up (the host
/// destroys the guest, releases the allocations and marks the row deleted), here otherwise.
async fn delete_in_cell(
    api: &ComputeApi,
    cell: &CellMapping,
    db: &Db,
    row: &InstanceRow,
    request_id: &str,
) -> Result<(), ApiError> {
    celldb::instance_set_deleting(db, &row.uuid).await?;
    cells::instance_mapping_queue_for_delete(&api.api_db, &row.uuid).await?;
    if let (Some(host), Some(w)) = (row.host.as_deref(), api.boot.get()) {
        let up = match celldb::service_get(db, host, crate::agent::BINARY).await? {
            Some(s) => crate::api::services::is_up_at(
                &s,
                api.settings.service_down_time,
                tessera_types::now_epoch_micros(),
            ),
            None => false,
        };
        if up {
            let bus = w.buses.get(&cell.transport_url).map_err(super::internal)?;
            let msg = tessera_bus::Envelope::new(
                "terminate_instance",
                json!({"uuid": row.uuid, "network_info": crate::network::NetworkRequest::from_info(row.network_info.as_deref())}),
                request_id,
            );
            match bus
                .cast(&tessera_bus::Target::server(crate::agent::TOPIC, host), msg)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(instance = %row.uuid, %host, error = %e, "host unreachable; deleting locally")
                }
            }
        }
    }
    // The host is gone: its ports are released from here (Nova's local delete).
    if let Some(net) = api.boot.get().and_then(|w| w.network.clone()) {
        let req = crate::network::NetworkRequest::from_info(row.network_info.as_deref());
        if let Err(e) = net.deallocate_for_instance(&row.uuid, &req).await {
            tracing::warn!(instance = %row.uuid, error = %e, "cannot release the server's ports");
        }
    }
    celldb::instance_destroy(db, &row.uuid).await?;
    if let Some(p) = &api.placement {
        if let Err(e) = p.release(&row.uuid).await {
            tracing::warn!(instance = %row.uuid, error = %e, "cannot release allocations");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// POST /servers/{id}/action: os-start, os-stop, reboot

pub(crate) async fn action(
    State(api): S,
    Caller(ctx): Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let body: Value = tessera_http::body::parse_json::<Value>(Family::Nova, &headers, &b)?;
    let (name, arg) = super::single_action(&body)?;
    let (verb, method, task, states, hard): (&str, &str, &str, &[&str], bool) = match name.as_str() {
        "os-start" => ("start", "start_instance", "powering-on", &["stopped"], false),
        "os-stop" => (
            "stop",
            "stop_instance",
            "powering-off",
            &["active", "error", "rescued"],
            false,
        ),
        "reboot" => {
            let o = arg
                .as_object()
                .ok_or_else(|| invalid_field("reboot", arg, &format!("{arg} is not of type 'object'")))?;
            if let Some(k) = o.keys().find(|k| *k != "type") {
                return Err(bad(format!("Invalid input for field/attribute reboot. Additional properties are not allowed ('{k}' was unexpected)")));
            }
            let t = o
                .get("type")
                .ok_or_else(|| bad("Invalid input for field/attribute reboot. Value: the reboot. 'type' is a required property"))?;
            match t.as_str().map(str::to_ascii_uppercase).as_deref() {
                Some("SOFT") => ("reboot", "reboot_instance", "rebooting", &["active"], false),
                Some("HARD") => (
                    "reboot",
                    "reboot_instance",
                    "rebooting_hard",
                    &["active", "stopped", "paused", "suspended", "error"],
                    true,
                ),
                _ => {
                    return Err(invalid_field(
                        "type",
                        t,
                        &format!("{t} is not one of ['HARD', 'Hard', 'hard', 'SOFT', 'Soft', 'soft']"),
                    ))
                }
            }
        }
        other => return Err(bad(format!("There is no such action: {other}"))),
    };
    if ctx.has_role("reader") && !ctx.has_role("member") && !ctx.is_admin() {
        return Err(nova(
            StatusCode::FORBIDDEN,
            format!("Policy doesn't allow os_compute_api:servers:{verb} to be performed."),
        ));
    }
    let conflict_state = |what: &str, state: &str| {
        nova(
            StatusCode::CONFLICT,
            format!("Cannot '{verb}' instance {id} while it is in {what} {state}"),
        )
    };
    let (cell, db, row) = match find(&api, &ctx, &id).await? {
        Found::Building(_) => return Err(conflict_state("vm_state", "building")),
        Found::Down(_) => {
            return Err(nova(
                StatusCode::SERVICE_UNAVAILABLE,
                "The cell of this server is not responding; try again later.",
            ))
        }
        Found::Cell { cell, db, row } => (cell, db, row),
    };
    if let Some(t) = &row.task_state {
        return Err(conflict_state("task_state", t));
    }
    if !states.contains(&row.vm_state.as_str()) {
        return Err(conflict_state("vm_state", &row.vm_state));
    }
    let Some(host) = row.host.clone() else {
        return Err(conflict_state("vm_state", &row.vm_state));
    };
    if !celldb::instance_begin_task(&db, &id, states, task).await? {
        // Something else started meanwhile: report the state it is in now.
        let now = celldb::instance_get(&db, &id)
            .await?
            .ok_or_else(|| not_found(&id))?;
        return Err(match now.task_state {
            Some(t) => conflict_state("task_state", &t),
            None => conflict_state("vm_state", &now.vm_state),
        });
    }
    let wiring = api.boot.get().ok_or_else(|| {
        nova(
            StatusCode::SERVICE_UNAVAILABLE,
            "The compute hosts are not reachable.",
        )
    })?;
    let bus = wiring.buses.get(&cell.transport_url).map_err(super::internal)?;
    let msg = tessera_bus::Envelope::new(method, json!({"uuid": id, "hard": hard}), ctx.request_id.clone());
    if let Err(e) = bus
        .cast(&tessera_bus::Target::server(crate::agent::TOPIC, &host), msg)
        .await
    {
        tracing::warn!(instance = %id, %host, error = %e, "compute host unreachable");
        celldb::instance_set_state(&db, &id, &row.vm_state, None, row.power_state, false).await?;
        return Err(nova(
            StatusCode::CONFLICT,
            format!("Compute host {host} could not be found."),
        ));
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_statuses() {
        assert_eq!(status("building", Some("scheduling")), "BUILD");
        assert_eq!(status("active", None), "ACTIVE");
        assert_eq!(status("active", Some("rebooting")), "REBOOT");
        assert_eq!(status("active", Some("rebooting_hard")), "HARD_REBOOT");
        assert_eq!(status("active", Some("deleting")), "ACTIVE");
        assert_eq!(status("stopped", Some("powering-on")), "SHUTOFF");
        assert_eq!(status("error", None), "ERROR");
        assert_eq!(vm_states_of("shutoff"), vec!["stopped".to_string()]);
        assert!(vm_states_of("NOPE").is_empty());
    }

    #[test]
    fn hostnames_are_sanitized_and_host_ids_hashed() {
        assert_eq!(sanitize_hostname("My Server_1"), "my-server-1");
        assert_eq!(sanitize_hostname("--"), "server");
        assert_eq!(host_id("p", None), "");
        assert_eq!(host_id("p", Some("h")).len(), 56);
        assert_ne!(host_id("p", Some("h")), host_id("q", Some("h")));
    }

    #[test]
    fn positive_ints_take_numbers_and_digit_strings() {
        assert_eq!(positive_int("x", &json!(3)).ok(), Some(3));
        assert_eq!(positive_int("x", &json!("4")).ok(), Some(4));
        assert!(positive_int("x", &json!(0)).is_err());
        assert!(positive_int("x", &json!("a")).is_err());
        assert!(positive_int("x", &json!(-1)).is_err());
    }
}
