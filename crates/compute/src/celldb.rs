//! Reads and writes on a cell database that host discovery and the `cell_v2` commands need. Cell databases
//! are opened from their cell mapping's URL; compute agents never come here (they go through the cell
//! conductor).

use crate::Result;
use sqlx::Row;
use tessera_db::{get_text, Db};

/// One connection pool per cell database, opened on first use and shared afterwards (the API, the
/// scheduler and the super conductor each keep one set).
#[derive(Default)]
pub struct CellDbs {
    open: tokio::sync::Mutex<std::collections::HashMap<String, Db>>,
}

impl CellDbs {
    pub fn new() -> Self {
        Self::default()
    }

    /// The pool of `cell`'s database.
    pub async fn get(&self, cell: &crate::cells::CellMapping) -> Result<Db> {
        // Keyed by the URL too: `update_cell` pointing a cell elsewhere takes effect without a restart.
        let key = format!("{}|{}", cell.uuid, cell.database_connection);
        let mut open = self.open.lock().await;
        if let Some(db) = open.get(&key) {
            return Ok(db.clone());
        }
        let db = self::open(&cell.database_connection, 4, false).await?;
        open.insert(key, db.clone());
        Ok(db)
    }
}

/// Open a cell's database (pool of `max` connections) and bring its schema up to date when `sync`.
pub async fn open(url: &str, max: u32, sync: bool) -> Result<Db> {
    let db = Db::connect(url, max).await?;
    if sync {
        db.migrate(&tessera_db::compute::CELL_MIGRATIONS).await?;
    }
    Ok(db)
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeRef {
    pub id: i64,
    pub uuid: String,
    pub host: String,
}

/// Live compute nodes, all or only those not yet mapped to a cell.
pub async fn compute_nodes(db: &Db, unmapped_only: bool) -> Result<Vec<NodeRef>> {
    let q = if unmapped_only {
        "SELECT id, uuid, host FROM compute_nodes WHERE deleted = 0 AND mapped = 0 ORDER BY id"
    } else {
        "SELECT id, uuid, host FROM compute_nodes WHERE deleted = 0 ORDER BY id"
    };
    sqlx::query(q)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| {
            Ok(NodeRef {
                id: r.try_get("id")?,
                uuid: get_text(r, "uuid")?,
                host: get_text(r, "host")?,
            })
        })
        .collect()
}

/// Mark one compute node mapped (host discovery).
pub async fn set_node_mapped(db: &Db, id: i64) -> Result<()> {
    sqlx::query(&db.sql("UPDATE compute_nodes SET mapped = 1, updated_at = ? WHERE id = ?"))
        .bind(tessera_types::now_epoch_micros())
        .bind(id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Mark the compute nodes of `host` (all of the cell's when None) unmapped, so a later discovery finds them.
pub async fn unmap_nodes(db: &Db, host: Option<&str>) -> Result<()> {
    let now = tessera_types::now_epoch_micros();
    match host {
        Some(h) => {
            sqlx::query(
                &db.sql("UPDATE compute_nodes SET mapped = 0, updated_at = ? WHERE host = ? AND deleted = 0"),
            )
            .bind(now)
            .bind(h)
            .execute(db.pool())
            .await?
        }
        None => {
            sqlx::query(&db.sql("UPDATE compute_nodes SET mapped = 0, updated_at = ? WHERE deleted = 0"))
                .bind(now)
                .execute(db.pool())
                .await?
        }
    };
    Ok(())
}

/// Hosts with a live `nova-compute` service record (disabled ones included).
pub async fn compute_service_hosts(db: &Db) -> Result<Vec<String>> {
    sqlx::query(&db.sql("SELECT host FROM services WHERE service_binary = ? AND deleted = 0 ORDER BY id"))
        .bind("nova-compute")
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| Ok(get_text(r, "host")?))
        .collect()
}

/// How many live (not deleted) instances the cell holds, optionally only on `host`.
pub async fn live_instances(db: &Db, host: Option<&str>) -> Result<i64> {
    let n: i64 = match host {
        Some(h) => {
            sqlx::query_scalar(&db.sql("SELECT COUNT(*) FROM instances WHERE deleted = 0 AND host = ?"))
                .bind(h)
                .fetch_one(db.pool())
                .await?
        }
        None => {
            sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE deleted = 0")
                .fetch_one(db.pool())
                .await?
        }
    };
    Ok(n)
}

/// An instance's row state: None when no row exists (archived or never there), else whether it is deleted.
pub async fn instance_deleted(db: &Db, uuid: &str) -> Result<Option<bool>> {
    let r = sqlx::query(&db.sql("SELECT deleted FROM instances WHERE uuid = ?"))
        .bind(uuid)
        .fetch_optional(db.pool())
        .await?;
    Ok(match r {
        Some(r) => Some(r.try_get::<i64, _>("deleted")? != 0),
        None => None,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRef {
    pub uuid: String,
    pub project_id: String,
    pub user_id: String,
}

/// Instances (deleted ones too), oldest first, after the instance `marker`, at most `limit`.
pub async fn instances_page(db: &Db, marker: Option<&str>, limit: i64) -> Result<Vec<InstanceRef>> {
    let after = match marker {
        Some(m) => sqlx::query(&db.sql("SELECT created_at, id FROM instances WHERE uuid = ?"))
            .bind(m)
            .fetch_optional(db.pool())
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get::<i64, _>("created_at")?, r.try_get::<i64, _>("id")?)))
            .transpose()?,
        None => None,
    };
    let rows = match after {
        Some((t, id)) => sqlx::query(&db.sql(
            "SELECT uuid, project_id, user_id FROM instances WHERE created_at > ? OR (created_at = ? AND id > ?) \
             ORDER BY created_at, id LIMIT ?",
        ))
        .bind(t)
        .bind(t)
        .bind(id)
        .bind(limit)
        .fetch_all(db.pool())
        .await?,
        None => sqlx::query(&db.sql(
            "SELECT uuid, project_id, user_id FROM instances ORDER BY created_at, id LIMIT ?",
        ))
        .bind(limit)
        .fetch_all(db.pool())
        .await?,
    };
    rows.iter()
        .map(|r| {
            Ok(InstanceRef {
                uuid: get_text(r, "uuid")?,
                project_id: get_text(r, "project_id")?,
                user_id: get_text(r, "user_id")?,
            })
        })
        .collect()
}

/// Rows of `SELECT {cols} FROM {rest}` decoded positionally into `T` from JSON arrays: one text value for
/// the whole result on SQLite and PostgreSQL (the `Any` driver's cost is per value, and host lists are read
/// on every scheduling request), one per row on MariaDB (whose JSON aggregate is capped by
/// group_concat_max_len). `order` orders the rows.
async fn json_rows<T: serde::de::DeserializeOwned>(
    db: &Db,
    cols: &str,
    rest: &str,
    order: &str,
) -> Result<Vec<T>> {
    let sql = match db.dialect() {
        tessera_db::Dialect::Sqlite => {
            format!("SELECT json_group_array(json_array({cols})) AS j FROM (SELECT {cols} FROM {rest} ORDER BY {order})")
        }
        tessera_db::Dialect::Postgres => format!(
            "SELECT COALESCE(json_agg(json_build_array({cols}) ORDER BY {order}), '[]'::json)::text AS j FROM {rest}"
        ),
        tessera_db::Dialect::MySql => format!("SELECT CAST(JSON_ARRAY({cols}) AS CHAR) AS j FROM {rest} ORDER BY {order}"),
    };
    let bad = |e: serde_json::Error| crate::ComputeError::NotFound(format!("rows of {rest}: {e}"));
    let mut out = Vec::new();
    for r in sqlx::query(&sql).fetch_all(db.pool()).await? {
        let j = get_text(&r, "j")?;
        if db.dialect() == tessera_db::Dialect::MySql {
            out.push(serde_json::from_str(&j).map_err(bad)?);
        } else {
            out.extend(serde_json::from_str::<Vec<T>>(&j).map_err(bad)?);
        }
    }
    Ok(out)
}

/// A 0/1 flag column (or a boolean) as a bool.
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    use serde::Deserialize as _;
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => b,
        serde_json::Value::Number(n) => n.as_i64().unwrap_or(0) != 0,
        _ => false,
    })
}

/// A service record as heartbeats keep it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServiceRecord {
    pub id: i64,
    pub uuid: String,
    pub host: String,
    pub binary: String,
    #[serde(deserialize_with = "flag")]
    pub disabled: bool,
    #[serde(deserialize_with = "flag")]
    pub forced_down: bool,
    pub report_count: i64,
    pub last_seen_up: Option<i64>,
    pub disabled_reason: Option<String>,
    pub updated_at: i64,
}

fn service_from(r: &tessera_db::AnyRow) -> Result<ServiceRecord> {
    Ok(ServiceRecord {
        id: r.try_get("id")?,
        uuid: get_text(r, "uuid")?,
        host: get_text(r, "host")?,
        binary: get_text(r, "service_binary")?,
        disabled: r.try_get::<i64, _>("disabled")? != 0,
        forced_down: r.try_get::<i64, _>("forced_down")? != 0,
        report_count: r.try_get("report_count")?,
        last_seen_up: r.try_get("last_seen_up")?,
        disabled_reason: tessera_db::get_opt_text(r, "disabled_reason")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const SVC_COLS: &str =
    "id, uuid, host, service_binary, disabled, forced_down, report_count, last_seen_up, disabled_reason, updated_at";

pub async fn service_get(db: &Db, host: &str, binary: &str) -> Result<Option<ServiceRecord>> {
    sqlx::query(&db.sql(&format!(
        "SELECT {SVC_COLS} FROM services WHERE host = ? AND service_binary = ? AND deleted = 0"
    )))
    .bind(host)
    .bind(binary)
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(service_from)
    .transpose()
}

/// A heartbeat: create the service record on first report, else count the report and note the time.
pub async fn service_report(db: &Db, host: &str, binary: &str, topic: &str) -> Result<ServiceRecord> {
    let now = tessera_types::now_epoch_micros();
    for _ in 0..3 {
        if service_get(db, host, binary).await?.is_some() {
            sqlx::query(&db.sql(
                "UPDATE services SET report_count = report_count + 1, last_seen_up = ?, updated_at = ? \
                 WHERE host = ? AND service_binary = ? AND deleted = 0",
            ))
            .bind(now)
            .bind(now)
            .bind(host)
            .bind(binary)
            .execute(db.pool())
            .await?;
        } else {
            let inserted = sqlx::query(&db.sql(
                "INSERT INTO services (uuid, host, service_binary, topic, report_count, disabled, forced_down, \
                 last_seen_up, version, created_at, updated_at, deleted) VALUES (?, ?, ?, ?, 1, 0, 0, ?, 1, ?, ?, 0)",
            ))
            .bind(tessera_types::new_uuid())
            .bind(host)
            .bind(binary)
            .bind(topic)
            .bind(now)
            .bind(now)
            .bind(now)
            .execute(db.pool())
            .await;
            match inserted {
                // Someone registered it in between: count this report on the next round.
                Err(e) if tessera_db::is_unique_violation(&e) => continue,
                r => {
                    r?;
                }
            }
        }
        if let Some(s) = service_get(db, host, binary).await? {
            return Ok(s);
        }
    }
    Err(crate::ComputeError::NotFound(format!(
        "service {binary} on {host}"
    )))
}

/// Every live service record of the cell.
pub async fn services(db: &Db) -> Result<Vec<ServiceRecord>> {
    json_rows(db, SVC_COLS, "services WHERE deleted = 0", "id").await
}

/// What a compute host reports about its node.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    pub host: String,
    pub service_id: Option<i64>,
    pub hypervisor_hostname: String,
    pub hypervisor_type: String,
    pub hypervisor_version: i64,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub local_gb: i64,
    pub vcpus_used: i64,
    pub memory_mb_used: i64,
    pub local_gb_used: i64,
    pub running_vms: i64,
    pub cpu_allocation_ratio: f64,
    pub ram_allocation_ratio: f64,
    pub disk_allocation_ratio: f64,
}

/// Create or update the compute node record of (host, hypervisor_hostname); its (id, uuid). A new node
/// starts unmapped, for host discovery to find.
pub async fn compute_node_upsert(db: &Db, n: &NodeReport) -> Result<(i64, String)> {
    let now = tessera_types::now_epoch_micros();
    let find = || async {
        sqlx::query(&db.sql(
            "SELECT id, uuid FROM compute_nodes WHERE host = ? AND hypervisor_hostname = ? AND deleted = 0",
        ))
        .bind(&n.host)
        .bind(&n.hypervisor_hostname)
        .fetch_optional(db.pool())
        .await
    };
    for _ in 0..3 {
        if let Some(r) = find().await? {
            let (id, uuid): (i64, String) = (r.try_get("id")?, get_text(&r, "uuid")?);
            sqlx::query(&db.sql(
                "UPDATE compute_nodes SET service_id = ?, hypervisor_type = ?, hypervisor_version = ?, vcpus = ?, \
                 memory_mb = ?, local_gb = ?, vcpus_used = ?, memory_mb_used = ?, local_gb_used = ?, running_vms = ?, \
                 cpu_allocation_ratio = ?, ram_allocation_ratio = ?, disk_allocation_ratio = ?, updated_at = ? \
                 WHERE id = ?",
            ))
            .bind(n.service_id)
            .bind(&n.hypervisor_type)
            .bind(n.hypervisor_version)
            .bind(n.vcpus)
            .bind(n.memory_mb)
            .bind(n.local_gb)
            .bind(n.vcpus_used)
            .bind(n.memory_mb_used)
            .bind(n.local_gb_used)
            .bind(n.running_vms)
            .bind(n.cpu_allocation_ratio)
            .bind(n.ram_allocation_ratio)
            .bind(n.disk_allocation_ratio)
            .bind(now)
            .bind(id)
            .execute(db.pool())
            .await?;
            return Ok((id, uuid));
        }
        let inserted = sqlx::query(&db.sql(
            "INSERT INTO compute_nodes (uuid, service_id, host, hypervisor_hostname, hypervisor_type, \
             hypervisor_version, vcpus, memory_mb, local_gb, vcpus_used, memory_mb_used, local_gb_used, running_vms, \
             cpu_allocation_ratio, ram_allocation_ratio, disk_allocation_ratio, mapped, created_at, updated_at, deleted) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, 0)",
        ))
        .bind(tessera_types::new_uuid())
        .bind(n.service_id)
        .bind(&n.host)
        .bind(&n.hypervisor_hostname)
        .bind(&n.hypervisor_type)
        .bind(n.hypervisor_version)
        .bind(n.vcpus)
        .bind(n.memory_mb)
        .bind(n.local_gb)
        .bind(n.vcpus_used)
        .bind(n.memory_mb_used)
        .bind(n.local_gb_used)
        .bind(n.running_vms)
        .bind(n.cpu_allocation_ratio)
        .bind(n.ram_allocation_ratio)
        .bind(n.disk_allocation_ratio)
        .bind(now)
        .bind(now)
        .execute(db.pool())
        .await;
        match inserted {
            Err(e) if tessera_db::is_unique_violation(&e) => continue,
            r => {
                r?;
            }
        }
    }
    Err(crate::ComputeError::NotFound(format!(
        "compute node {}",
        n.hypervisor_hostname
    )))
}

/// A compute node as the hypervisors API shows it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct NodeRow {
    pub id: i64,
    pub uuid: String,
    pub service_id: Option<i64>,
    pub host: String,
    pub hypervisor_hostname: String,
    pub hypervisor_type: String,
    pub hypervisor_version: i64,
    pub host_ip: Option<String>,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub local_gb: i64,
    pub vcpus_used: i64,
    pub memory_mb_used: i64,
    pub local_gb_used: i64,
    pub running_vms: i64,
}

/// Every live compute node of the cell, in id order.
pub async fn compute_nodes_full(db: &Db) -> Result<Vec<NodeRow>> {
    json_rows(
        db,
        "id, uuid, service_id, host, hypervisor_hostname, hypervisor_type, hypervisor_version, host_ip, vcpus, \
         memory_mb, local_gb, vcpus_used, memory_mb_used, local_gb_used, running_vms",
        "compute_nodes WHERE deleted = 0",
        "id",
    )
    .await
}

/// Find a live service record by uuid.
pub async fn service_by_uuid(db: &Db, uuid: &str) -> Result<Option<ServiceRecord>> {
    sqlx::query(&db.sql(&format!(
        "SELECT {SVC_COLS} FROM services WHERE uuid = ? AND deleted = 0"
    )))
    .bind(uuid)
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(service_from)
    .transpose()
}

/// Set a service's disabled flag, reason and forced-down flag.
pub async fn service_update(
    db: &Db,
    id: i64,
    disabled: bool,
    reason: Option<&str>,
    forced_down: bool,
) -> Result<()> {
    sqlx::query(&db.sql(
        "UPDATE services SET disabled = ?, disabled_reason = ?, forced_down = ?, updated_at = ? WHERE id = ?",
    ))
    .bind(disabled as i64)
    .bind(reason)
    .bind(forced_down as i64)
    .bind(tessera_types::now_epoch_micros())
    .bind(id)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// An instance row (the columns the boot and the API views use so far).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InstanceRow {
    pub id: i64,
    pub uuid: String,
    pub project_id: String,
    pub user_id: String,
    pub display_name: Option<String>,
    pub host: Option<String>,
    pub node: Option<String>,
    pub availability_zone: Option<String>,
    pub vm_state: String,
    pub task_state: Option<String>,
    pub power_state: i64,
    pub image_ref: Option<String>,
    #[serde(default)]
    pub flavor: String,
    pub memory_mb: i64,
    pub vcpus: i64,
    pub root_gb: i64,
    pub ephemeral_gb: i64,
    pub launched_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted: i64,
    #[serde(default)]
    pub display_description: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub key_name: Option<String>,
    #[serde(default)]
    pub key_data: Option<String>,
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub config_drive: Option<String>,
    #[serde(default)]
    pub reservation_id: Option<String>,
    #[serde(default)]
    pub launch_index: i64,
    /// The server's addresses as `[{"network", "addr", "mac", "version"}]` (JSON).
    #[serde(default)]
    pub network_info: Option<String>,
    #[serde(default)]
    pub locked_by: Option<String>,
    #[serde(default)]
    pub terminated_at: Option<i64>,
    #[serde(default)]
    pub access_ip_v4: Option<String>,
    #[serde(default)]
    pub access_ip_v6: Option<String>,
    /// User metadata (instance_metadata rows; loaded by the listing, written by create).
    #[serde(default, deserialize_with = "map_or_json_text")]
    pub metadata: std::collections::BTreeMap<String, String>,
}

const INST_COLS: &str = "id, uuid, project_id, user_id, display_name, host, node, availability_zone, vm_state, \
                         task_state, power_state, image_ref, flavor, memory_mb, vcpus, root_gb, ephemeral_gb, \
                         launched_at, created_at, updated_at, deleted, display_description, hostname, key_name, \
                         key_data, user_data, config_drive, reservation_id, launch_index, network_info, locked_by, \
                         terminated_at, access_ip_v4, access_ip_v6";

/// Insert an instance with its metadata (one transaction).
pub async fn instance_create(db: &Db, i: &InstanceRow) -> Result<InstanceRow> {
    let now = tessera_types::now_epoch_micros();
    let mut tx = db.begin().await?;
    sqlx::query(&db.sql(
        "INSERT INTO instances (uuid, project_id, user_id, display_name, host, node, availability_zone, vm_state, \
         task_state, power_state, image_ref, flavor, memory_mb, vcpus, root_gb, ephemeral_gb, locked, progress, \
         launch_index, created_at, updated_at, deleted, display_description, hostname, key_name, key_data, \
         user_data, config_drive, reservation_id, network_info, access_ip_v4, access_ip_v6, launched_on) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(&i.uuid)
    .bind(&i.project_id)
    .bind(&i.user_id)
    .bind(i.display_name.as_deref())
    .bind(i.host.as_deref())
    .bind(i.node.as_deref())
    .bind(i.availability_zone.as_deref())
    .bind(&i.vm_state)
    .bind(i.task_state.as_deref())
    .bind(i.power_state)
    .bind(i.image_ref.as_deref())
    .bind(&i.flavor)
    .bind(i.memory_mb)
    .bind(i.vcpus)
    .bind(i.root_gb)
    .bind(i.ephemeral_gb)
    .bind(i.launch_index)
    .bind(i.created_at)
    .bind(now)
    .bind(i.display_description.as_deref())
    .bind(i.hostname.as_deref())
    .bind(i.key_name.as_deref())
    .bind(i.key_data.as_deref())
    .bind(i.user_data.as_deref())
    .bind(i.config_drive.as_deref())
    .bind(i.reservation_id.as_deref())
    .bind(i.network_info.as_deref())
    .bind(i.access_ip_v4.as_deref())
    .bind(i.access_ip_v6.as_deref())
    .bind(i.host.as_deref())
    .execute(&mut *tx)
    .await
    .map_err(|e| crate::dup_or(e, || format!("instance {}", i.uuid)))?;
    for (k, v) in &i.metadata {
        sqlx::query(
            &db.sql("INSERT INTO instance_metadata (instance_uuid, meta_key, meta_value) VALUES (?, ?, ?)"),
        )
        .bind(&i.uuid)
        .bind(k)
        .bind(v)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    instance_get(db, &i.uuid)
        .await?
        .ok_or_else(|| crate::ComputeError::NotFound(format!("instance {}", i.uuid)))
}

/// An instance by uuid, deleted ones included, with its metadata.
pub async fn instance_get(db: &Db, uuid: &str) -> Result<Option<InstanceRow>> {
    // The same JSON row form as the listing (one decoding of the columns, not two).
    let obj = inst_json(db.dialect(), "i");
    let col = match db.dialect() {
        tessera_db::Dialect::Postgres => format!("{obj}::text"),
        tessera_db::Dialect::MySql => format!("CAST({obj} AS CHAR)"),
        tessera_db::Dialect::Sqlite => obj,
    };
    let raw = format!("SELECT {col} AS j FROM instances i WHERE i.uuid = ?");
    match sqlx::query(&db.sql(&raw))
        .bind(uuid)
        .fetch_optional(db.pool())
        .await?
    {
        Some(r) => Ok(Some(
            serde_json::from_str::<InstanceRow>(&get_text(&r, "j")?)
                .map_err(|e| crate::ComputeError::NotFound(format!("instance row: {e}")))?,
        )),
        None => Ok(None),
    }
}

/// State change from the compute host: vm/task/power state, and when it went active.
pub async fn instance_set_state(
    db: &Db,
    uuid: &str,
    vm_state: &str,
    task_state: Option<&str>,
    power_state: i64,
    launched: bool,
) -> Result<bool> {
    let now = tessera_types::now_epoch_micros();
    let n = sqlx::query(&db.sql(
        "UPDATE instances SET vm_state = ?, task_state = ?, power_state = ?, \
         launched_at = CASE WHEN ? = 1 THEN ? ELSE launched_at END, updated_at = ? WHERE uuid = ? AND deleted = 0",
    ))
    .bind(vm_state)
    .bind(task_state)
    .bind(power_state)
    .bind(launched as i64)
    .bind(now)
    .bind(now)
    .bind(uuid)
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Record an instance's network request and VIFs (`network_info`); false when it is gone.
pub async fn instance_set_network_info(db: &Db, uuid: &str, info: &str) -> Result<bool> {
    let n = sqlx::query(
        &db.sql("UPDATE instances SET network_info = ?, updated_at = ? WHERE uuid = ? AND deleted = 0"),
    )
    .bind(info)
    .bind(tessera_types::now_epoch_micros())
    .bind(uuid)
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Record a fault (the message users see on an ERROR server).
pub async fn fault_create(
    db: &Db,
    uuid: &str,
    code: i64,
    message: &str,
    details: &str,
    host: Option<&str>,
) -> Result<()> {
    let msg: String = message.chars().take(255).collect();
    sqlx::query(&db.sql(
        "INSERT INTO instance_faults (instance_uuid, code, message, details, host, created_at) VALUES (?, ?, ?, ?, ?, ?)",
    ))
    .bind(uuid)
    .bind(code)
    .bind(msg)
    .bind(details)
    .bind(host)
    .bind(tessera_types::now_epoch_micros())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The latest fault of an instance: (code, message, details, created_at).
pub async fn fault_latest(db: &Db, uuid: &str) -> Result<Option<(i64, String, String, i64)>> {
    let r = sqlx::query(&db.sql(
        "SELECT code, message, details, created_at FROM instance_faults WHERE instance_uuid = ? \
         ORDER BY created_at DESC, id DESC LIMIT 1",
    ))
    .bind(uuid)
    .fetch_optional(db.pool())
    .await?;
    Ok(match r {
        Some(r) => Some((
            r.try_get("code")?,
            get_text(&r, "message")?,
            tessera_db::get_opt_text(&r, "details")?.unwrap_or_default(),
            r.try_get("created_at")?,
        )),
        None => None,
    })
}

/// Soft-delete an instance (`deleted = id`, vm_state `deleted`).
pub async fn instance_destroy(db: &Db, uuid: &str) -> Result<bool> {
    let now = tessera_types::now_epoch_micros();
    let n = sqlx::query(&db.sql(
        "UPDATE instances SET deleted = id, vm_state = 'deleted', task_state = NULL, power_state = 0, \
         terminated_at = ?, deleted_at = ?, updated_at = ? WHERE uuid = ? AND deleted = 0",
    ))
    .bind(now)
    .bind(now)
    .bind(now)
    .bind(uuid)
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Remove every trace of an instance row that was never mapped (crash recovery); true when there was one.
pub async fn instance_purge(db: &Db, uuid: &str) -> Result<bool> {
    let mut tx = db.begin().await?;
    let n = sqlx::query(&db.sql("DELETE FROM instances WHERE uuid = ?"))
        .bind(uuid)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    for sql in [
        "DELETE FROM instance_metadata WHERE instance_uuid = ?",
        "DELETE FROM instance_faults WHERE instance_uuid = ?",
    ] {
        sqlx::query(&db.sql(sql)).bind(uuid).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(n > 0)
}

/// Soft-delete a service record, and with a compute service its host's compute nodes; the deleted nodes'
/// uuids.
pub async fn service_delete(db: &Db, s: &ServiceRecord) -> Result<Vec<String>> {
    let now = tessera_types::now_epoch_micros();
    let mut tx = db.begin().await?;
    let mut nodes = Vec::new();
    if s.binary == "nova-compute" {
        for r in sqlx::query(&db.sql("SELECT uuid FROM compute_nodes WHERE host = ? AND deleted = 0"))
            .bind(&s.host)
            .fetch_all(&mut *tx)
            .await?
        {
            nodes.push(get_text(&r, "uuid")?);
        }
        sqlx::query(
            &db.sql("UPDATE compute_nodes SET deleted = id, updated_at = ? WHERE host = ? AND deleted = 0"),
        )
        .bind(now)
        .bind(&s.host)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(&db.sql("UPDATE services SET deleted = id, updated_at = ? WHERE id = ?"))
        .bind(now)
        .bind(s.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(nodes)
}

/// A sort column of the server listing: its SQL expression (NULLs folded so comparisons hold) and kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SortCol {
    pub key: &'static str,
    pub int: bool,
    pub desc: bool,
}

/// The sort keys the listing accepts (Nova's names), text or integer.
pub const SORT_KEYS: &[(&str, bool)] = &[
    ("uuid", false),
    ("display_name", false),
    ("display_description", false),
    ("host", false),
    ("hostname", false),
    ("node", false),
    ("availability_zone", false),
    ("image_ref", false),
    ("key_name", false),
    ("project_id", false),
    ("user_id", false),
    ("vm_state", false),
    ("task_state", false),
    ("created_at", true),
    ("updated_at", true),
    ("launched_at", true),
    ("terminated_at", true),
    ("power_state", true),
    ("launch_index", true),
];

const NOT_NULL: &[&str] = &[
    "uuid",
    "project_id",
    "user_id",
    "vm_state",
    "created_at",
    "updated_at",
    "power_state",
    "launch_index",
];

impl SortCol {
    pub fn new(key: &str, desc: bool) -> Option<SortCol> {
        SORT_KEYS.iter().find(|(k, _)| *k == key).map(|(k, int)| SortCol {
            key: k,
            int: *int,
            desc,
        })
    }
    fn expr(&self) -> String {
        // NOT NULL columns compare as they are (an index on them can serve the order).
        if NOT_NULL.contains(&self.key) {
            self.key.to_string()
        } else if self.int {
            format!("COALESCE({}, 0)", self.key)
        } else {
            format!("COALESCE({}, '')", self.key)
        }
    }
}

/// One value of a sort column, as the merge of several cells compares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SortVal {
    Int(i64),
    Text(String),
}

impl InstanceRow {
    /// The value of a sort column (NULL folded as in SQL: '' or 0).
    pub fn sort_value(&self, c: &SortCol) -> SortVal {
        let t = |s: &Option<String>| SortVal::Text(s.clone().unwrap_or_default());
        match c.key {
            "uuid" => SortVal::Text(self.uuid.clone()),
            "display_name" => t(&self.display_name),
            "display_description" => t(&self.display_description),
            "host" => t(&self.host),
            "hostname" => t(&self.hostname),
            "node" => t(&self.node),
            "availability_zone" => t(&self.availability_zone),
            "image_ref" => t(&self.image_ref),
            "key_name" => t(&self.key_name),
            "project_id" => SortVal::Text(self.project_id.clone()),
            "user_id" => SortVal::Text(self.user_id.clone()),
            "vm_state" => SortVal::Text(self.vm_state.clone()),
            "task_state" => t(&self.task_state),
            "created_at" => SortVal::Int(self.created_at),
            "updated_at" => SortVal::Int(self.updated_at),
            "launched_at" => SortVal::Int(self.launched_at.unwrap_or(0)),
            "terminated_at" => SortVal::Int(self.terminated_at.unwrap_or(0)),
            "power_state" => SortVal::Int(self.power_state),
            _ => SortVal::Int(self.launch_index),
        }
    }
}

/// Compare two rows under a sort order (the last column decides ties; callers end it with uuid).
pub fn compare_rows(a: &InstanceRow, b: &InstanceRow, sort: &[SortCol]) -> std::cmp::Ordering {
    for c in sort {
        let o = a.sort_value(c).cmp(&b.sort_value(c));
        let o = if c.desc { o.reverse() } else { o };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    std::cmp::Ordering::Equal
}

/// What a server listing selects.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub project_id: Option<String>,
    pub user_id: Option<String>,
    /// Substring of the name (Nova matches a regular expression; a plain name matches the same).
    pub name: Option<String>,
    pub vm_states: Option<Vec<String>>,
    pub host: Option<String>,
    pub availability_zone: Option<String>,
    pub image_ref: Option<String>,
    pub key_name: Option<String>,
    pub reservation_id: Option<String>,
    /// updated_at ≥ (deleted servers included, as Nova does with changes-since).
    pub changes_since: Option<i64>,
    pub changes_before: Option<i64>,
    /// Only deleted servers (`deleted=true`, admins).
    pub deleted_only: bool,
}

impl ListFilter {
    /// Whether a row (a build request's, say) passes the filter (the same rules as the SQL).
    pub fn matches(&self, r: &InstanceRow) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
        let deleted = r.deleted != 0;
        let show_deleted = self.changes_since.is_some() || self.changes_before.is_some() || self.deleted_only;
        (show_deleted || !deleted)
            && (!self.deleted_only || deleted)
            && eq(&self.project_id, Some(&r.project_id))
            && eq(&self.user_id, Some(&r.user_id))
            && eq(&self.host, r.host.as_deref())
            && eq(&self.availability_zone, r.availability_zone.as_deref())
            && eq(&self.image_ref, r.image_ref.as_deref())
            && eq(&self.key_name, r.key_name.as_deref())
            && eq(&self.reservation_id, r.reservation_id.as_deref())
            && self
                .name
                .as_deref()
                .is_none_or(|n| r.display_name.as_deref().unwrap_or("").contains(n))
            && self.vm_states.as_ref().is_none_or(|v| v.contains(&r.vm_state))
            && self.changes_since.is_none_or(|t| r.updated_at >= t)
            && self.changes_before.is_none_or(|t| r.updated_at <= t)
    }
}

/// An instance row as one JSON array of its columns in [`INST_COLS`] order (`json_array` /
/// `json_build_array` / `JSON_ARRAY`), which deserializes positionally into [`InstanceRow`]: a listing
/// decodes one text value instead of thirty-odd columns through the `Any` driver.
fn inst_json(dialect: tessera_db::Dialect, t: &str) -> String {
    let mut cols: Vec<String> = INST_COLS
        .split(',')
        .map(str::trim)
        .map(|c| format!("{t}.{c}"))
        .collect();
    // The row's metadata as the last element, an object (NULL or `{}` without any), read through the
    // metadata table's primary key: no second query over the page.
    cols.push(match dialect {
        tessera_db::Dialect::Postgres => format!(
            "(SELECT json_object_agg(m.meta_key, m.meta_value) FROM instance_metadata m WHERE m.instance_uuid = {t}.uuid)"
        ),
        tessera_db::Dialect::MySql => format!(
            "(SELECT JSON_OBJECTAGG(m.meta_key, m.meta_value) FROM instance_metadata m WHERE m.instance_uuid = {t}.uuid)"
        ),
        tessera_db::Dialect::Sqlite => format!(
            "(SELECT json_group_object(m.meta_key, m.meta_value) FROM instance_metadata m WHERE m.instance_uuid = {t}.uuid)"
        ),
    });
    match dialect {
        tessera_db::Dialect::Postgres => format!("json_build_array({})", cols.join(", ")),
        tessera_db::Dialect::MySql => format!("JSON_ARRAY({})", cols.join(", ")),
        tessera_db::Dialect::Sqlite => format!("json_array({})", cols.join(", ")),
    }
}

/// Metadata given as an object, or as JSON text (MariaDB nests a subquery's JSON as a string).
fn map_or_json_text<'de, D>(d: D) -> std::result::Result<std::collections::BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Object(m) => Ok(m
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect()),
        serde_json::Value::String(s) => serde_json::from_str(&s).map_err(serde::de::Error::custom),
        _ => Ok(Default::default()),
    }
}

/// One page of a cell's instances in `sort` order (which ends with uuid), strictly after `after` (the
/// marker's sort values), at most `limit`; metadata loaded.
pub async fn instances_list(
    db: &Db,
    f: &ListFilter,
    sort: &[SortCol],
    after: Option<&[SortVal]>,
    limit: i64,
) -> Result<Vec<InstanceRow>> {
    // The page's ids are chosen first (narrow rows sort fast, and the default order walks an index), then
    // the rows are read by id; callers merge and order pages anyway.
    let mut sql = "SELECT id FROM instances WHERE 1 = 1".to_string();
    enum B<'a> {
        T(&'a str),
        I(i64),
        S(String),
    }
    let mut binds: Vec<B> = Vec::new();
    let show_deleted = f.changes_since.is_some() || f.changes_before.is_some() || f.deleted_only;
    if f.deleted_only {
        sql.push_str(" AND deleted <> 0");
    } else if !show_deleted {
        sql.push_str(" AND deleted = 0");
    }
    for (col, v) in [
        ("project_id", &f.project_id),
        ("user_id", &f.user_id),
        ("host", &f.host),
        ("availability_zone", &f.availability_zone),
        ("image_ref", &f.image_ref),
        ("key_name", &f.key_name),
        ("reservation_id", &f.reservation_id),
    ] {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = ?"));
            binds.push(B::T(v));
        }
    }
    if let Some(n) = &f.name {
        let escaped = n.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        sql.push_str(" AND display_name LIKE ? ESCAPE '\\'");
        binds.push(B::S(format!("%{escaped}%")));
    }
    if let Some(states) = &f.vm_states {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        sql.push_str(&format!(
            " AND vm_state IN ({})",
            vec!["?"; states.len()].join(", ")
        ));
        binds.extend(states.iter().map(|s| B::T(s)));
    }
    if let Some(t) = f.changes_since {
        sql.push_str(" AND updated_at >= ?");
        binds.push(B::I(t));
    }
    if let Some(t) = f.changes_before {
        sql.push_str(" AND updated_at <= ?");
        binds.push(B::I(t));
    }
    if let Some(vals) = after {
        // Keyset: (k0 > v0) OR (k0 = v0 AND k1 > v1) OR …, each comparison in its column's direction.
        let mut ors = Vec::new();
        for i in 0..sort.len().min(vals.len()) {
            let mut ands = Vec::new();
            for c in sort.iter().take(i) {
                ands.push(format!("{} = ?", c.expr()));
            }
            ands.push(format!(
                "{} {} ?",
                sort[i].expr(),
                if sort[i].desc { "<" } else { ">" }
            ));
            ors.push(format!("({})", ands.join(" AND ")));
            for v in vals.iter().take(i + 1) {
                binds.push(match v {
                    SortVal::Int(n) => B::I(*n),
                    SortVal::Text(s) => B::S(s.clone()),
                });
            }
        }
        if !ors.is_empty() {
            sql.push_str(&format!(" AND ({})", ors.join(" OR ")));
        }
    }
    let order: Vec<String> = sort
        .iter()
        .map(|c| format!("{} {}", c.expr(), if c.desc { "DESC" } else { "ASC" }))
        .collect();
    sql.push_str(&format!(" ORDER BY {} LIMIT ?", order.join(", ")));
    binds.push(B::I(limit));
    // The page's ids are chosen first (narrow rows sort fast; the default order walks an index), then the
    // rows are read by id as JSON — aggregated into one value where the engine can (SQLite, PostgreSQL;
    // MariaDB's aggregate is capped by group_concat_max_len, so there one object per row).
    let page = sql;
    let obj = inst_json(db.dialect(), "i");
    let sql = match db.dialect() {
        tessera_db::Dialect::Sqlite => {
            format!("SELECT json_group_array({obj}) AS j FROM ({page}) p JOIN instances i ON i.id = p.id")
        }
        tessera_db::Dialect::Postgres => format!(
            "SELECT COALESCE(json_agg({obj}), '[]'::json)::text AS j FROM ({page}) p JOIN instances i ON i.id = p.id"
        ),
        tessera_db::Dialect::MySql => {
            format!("SELECT CAST({obj} AS CHAR) AS j FROM ({page}) p JOIN instances i ON i.id = p.id")
        }
    };
    let sql = db.sql(&sql);
    macro_rules! bind_all {
        ($q:expr) => {{
            let mut q = $q;
            for b in &binds {
                q = match b {
                    B::T(s) => q.bind(*s),
                    B::I(n) => q.bind(*n),
                    B::S(s) => q.bind(s.as_str()),
                };
            }
            q
        }};
    }
    let q = bind_all!(sqlx::query(&sql));
    let bad = |e: serde_json::Error| crate::ComputeError::NotFound(format!("instance rows: {e}"));
    let mut rows = Vec::new();
    for r in q.fetch_all(db.pool()).await? {
        let j = get_text(&r, "j")?;
        if db.dialect() == tessera_db::Dialect::MySql {
            rows.push(serde_json::from_str::<InstanceRow>(&j).map_err(bad)?);
        } else {
            rows.extend(serde_json::from_str::<Vec<InstanceRow>>(&j).map_err(bad)?);
        }
    }
    Ok(rows)
}

/// Live instances of a project in this cell: (count, vcpus, memory_mb) for quota checks.
pub async fn project_usage(db: &Db, project: &str) -> Result<(i64, i64, i64)> {
    let r = sqlx::query(&db.sql(
        "SELECT COUNT(*) AS n, COALESCE(SUM(vcpus), 0) AS c, COALESCE(SUM(memory_mb), 0) AS m FROM instances \
         WHERE project_id = ? AND deleted = 0",
    ))
    .bind(project)
    .fetch_one(db.pool())
    .await?;
    Ok((r.try_get("n")?, r.try_get("c")?, r.try_get("m")?))
}

/// Set a task state when the instance is in one of `vm_states` with no task running (an action's guard).
/// False when the guard failed (or the instance is gone).
pub async fn instance_begin_task(db: &Db, uuid: &str, vm_states: &[&str], task: &str) -> Result<bool> {
    let raw = format!(
        "UPDATE instances SET task_state = ?, updated_at = ? WHERE uuid = ? AND deleted = 0 AND task_state IS NULL \
         AND vm_state IN ({})",
        vec!["?"; vm_states.len()].join(", ")
    );
    let sql = db.sql(&raw);
    let mut q = sqlx::query(&sql)
        .bind(task)
        .bind(tessera_types::now_epoch_micros())
        .bind(uuid);
    for s in vm_states {
        q = q.bind(*s);
    }
    Ok(q.execute(db.pool()).await?.rows_affected() > 0)
}

/// Mark an instance as being deleted (any task it had is superseded).
pub async fn instance_set_deleting(db: &Db, uuid: &str) -> Result<bool> {
    let n =
        sqlx::query(&db.sql(
            "UPDATE instances SET task_state = 'deleting', updated_at = ? WHERE uuid = ? AND deleted = 0",
        ))
        .bind(tessera_types::now_epoch_micros())
        .bind(uuid)
        .execute(db.pool())
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// Move an instance to another host (a reschedule to an alternate).
pub async fn instance_set_host(db: &Db, uuid: &str, host: &str, node: &str) -> Result<bool> {
    let n = sqlx::query(&db.sql(
        "UPDATE instances SET host = ?, node = ?, launched_on = ?, updated_at = ? WHERE uuid = ? AND deleted = 0",
    ))
    .bind(host)
    .bind(node)
    .bind(host)
    .bind(tessera_types::now_epoch_micros())
    .bind(uuid)
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Instances on a host that are not deleted: (uuid, vm_state, task_state).
pub async fn host_instances(db: &Db, host: &str) -> Result<Vec<(String, String, Option<String>)>> {
    let rows = sqlx::query(
        &db.sql("SELECT uuid, vm_state, task_state FROM instances WHERE host = ? AND deleted = 0"),
    )
    .bind(host)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                get_text(r, "uuid")?,
                get_text(r, "vm_state")?,
                tessera_db::get_opt_text(r, "task_state")?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn cell(dir: &std::path::Path) -> Db {
        open(&format!("sqlite:///{}/cell.sqlite", dir.display()), 4, true)
            .await
            .expect("cell db")
    }

    fn row(i: usize) -> InstanceRow {
        InstanceRow {
            uuid: format!("00000000-0000-0000-0000-{i:012}"),
            project_id: "p".into(),
            user_id: "u".into(),
            display_name: Some(format!("vm-{i:04}")),
            host: Some(format!("h{}", i % 3)),
            vm_state: if i.is_multiple_of(5) {
                "stopped".into()
            } else {
                "active".into()
            },
            flavor: "{}".into(),
            memory_mb: 512,
            vcpus: 1,
            root_gb: 1,
            created_at: 1_000 + (i as i64 % 7),
            metadata: if i.is_multiple_of(2) {
                [("k".to_string(), format!("v{i}"))].into()
            } else {
                Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn keyset_pages_follow_the_sort_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = cell(dir.path()).await;
        for i in 0..40 {
            instance_create(&db, &row(i)).await.expect("create");
        }
        let f = ListFilter::default();
        let sort = [
            SortCol::new("created_at", true).expect("col"),
            SortCol::new("uuid", true).expect("col"),
        ];
        let all = instances_list(&db, &f, &sort, None, 100).await.expect("list");
        assert_eq!(all.len(), 40);
        let mut sorted = all.clone();
        sorted.sort_by(|a, b| compare_rows(a, b, &sort));
        assert_eq!(all, sorted);
        assert_eq!(all.iter().filter(|r| r.metadata.contains_key("k")).count(), 20);
        let mut paged = Vec::new();
        let mut after: Option<Vec<SortVal>> = None;
        loop {
            let page = instances_list(&db, &f, &sort, after.as_deref(), 7)
                .await
                .expect("page");
            if page.is_empty() {
                break;
            }
            after = page
                .last()
                .map(|r| sort.iter().map(|c| r.sort_value(c)).collect());
            paged.extend(page);
        }
        assert_eq!(paged, all);
        let f = ListFilter {
            vm_states: Some(vec!["stopped".into()]),
            name: Some("vm-000".into()),
            ..Default::default()
        };
        let some = instances_list(&db, &f, &sort, None, 100).await.expect("filtered");
        assert_eq!(some.len(), 2, "vm-0000 and vm-0005");
    }

    /// Timing of a 1,000-row page (run with `--ignored --nocapture` in release mode; no assertion on time).
    #[tokio::test]
    #[ignore]
    async fn time_a_thousand_row_page() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = cell(dir.path()).await;
        for i in 0..1000 {
            instance_create(&db, &row(i)).await.expect("create");
        }
        let sort = [
            SortCol::new("created_at", true).expect("col"),
            SortCol::new("uuid", true).expect("col"),
        ];
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let rows = instances_list(&db, &ListFilter::default(), &sort, None, 1000)
                .await
                .expect("list");
            eprintln!("{} rows in {:?}", rows.len(), t.elapsed());
        }
    }
}
