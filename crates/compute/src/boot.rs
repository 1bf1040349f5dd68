//! The boot pipeline's records and the super conductor's part of it (Nova's
//! `schedule_and_build_instances`): the API writes, per instance, a build request, a request spec and an
//! instance mapping without a cell in one API-database transaction; the super conductor schedules, creates
//! each instance in its host's cell, points the mapping at the cell, deletes the build request and casts
//! the build to the host — or, when nothing fits, buries the instances in cell0 in ERROR with a
//! `NoValidHost` fault, their claims released.

use crate::celldb::{self, InstanceRow};
use crate::cells::{self, CellMapping, CELL0_UUID};
use crate::scheduler::{RequestSpec, Scheduler, SchedulerError};
use crate::virt::SpawnSpec;
use crate::{ComputeError, Result};
use serde_json::json;
use sqlx::Row;
use std::sync::Arc;
use tessera_db::{get_text, Db};

/// What the API records about one server before it has a cell (stored in `build_requests.instance`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BootInstance {
    pub uuid: String,
    pub project_id: String,
    pub user_id: String,
    pub display_name: String,
    pub image_ref: Option<String>,
    /// The flavor as the instance embeds it (JSON).
    pub flavor: serde_json::Value,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub root_gb: i64,
    pub ephemeral_gb: i64,
    pub availability_zone: Option<String>,
    pub created_at: i64,
    #[serde(default)]
    pub description: Option<String>,
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
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub access_ip_v4: Option<String>,
    #[serde(default)]
    pub access_ip_v6: Option<String>,
    /// The networks it asked for, then its VIFs (a [`crate::network::NetworkRequest`] as JSON).
    #[serde(default)]
    pub network_info: Option<String>,
}

/// Write the build requests, request specs and cell-less instance mappings of one boot atomically.
pub async fn record(
    api: &Db,
    spec: &RequestSpec,
    instances: &mut [BootInstance],
    group: Option<GroupJoin>,
) -> Result<()> {
    record_once(api, spec, instances, group).await
}

/// The server group a boot joins: its id and the most members it may have (-1: no limit).
#[derive(Debug, Clone, Copy)]
pub struct GroupJoin {
    pub group_id: i64,
    pub member_limit: i64,
}

async fn record_once(
    api: &Db,
    spec: &RequestSpec,
    instances: &mut [BootInstance],
    group: Option<GroupJoin>,
) -> Result<()> {
    let now = tessera_types::now_epoch_micros();
    let spec_json = serde_json::to_string(spec).map_err(|e| ComputeError::NotFound(e.to_string()))?;
    let mut tx = api.begin_write().await?;
    for i in instances.iter() {
        let inst = serde_json::to_string(i).map_err(|e| ComputeError::NotFound(e.to_string()))?;
        sqlx::query(&api.sql(
            "INSERT INTO build_requests (instance_uuid, project_id, instance, created_at, updated_at, vcpus, \
             memory_mb) VALUES (?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&i.uuid)
        .bind(&i.project_id)
        .bind(inst)
        .bind(now)
        .bind(now)
        .bind(i.vcpus)
        .bind(i.memory_mb)
        .execute(&mut *tx)
        .await
        .map_err(|e| crate::dup_or(e, || format!("build request {}", i.uuid)))?;
        sqlx::query(&api.sql(
            "INSERT INTO request_specs (instance_uuid, spec, created_at, updated_at) VALUES (?, ?, ?, ?)",
        ))
        .bind(&i.uuid)
        .bind(&spec_json)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&api.sql(
            "INSERT INTO instance_mappings (instance_uuid, cell_id, project_id, user_id, queued_for_delete, created_at, \
             updated_at) VALUES (?, NULL, ?, ?, 0, ?, ?)",
        ))
        .bind(&i.uuid)
        .bind(&i.project_id)
        .bind(&i.user_id)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(g) = group {
        let uuids: Vec<&str> = instances.iter().map(|i| i.uuid.as_str()).collect();
        crate::groups::add_members(api, &mut tx, g.group_id, &uuids, g.member_limit, now).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn build_request_get(api: &Db, uuid: &str) -> Result<Option<BootInstance>> {
    let r = sqlx::query(&api.sql("SELECT instance FROM build_requests WHERE instance_uuid = ?"))
        .bind(uuid)
        .fetch_optional(api.pool())
        .await?;
    match r {
        Some(r) => Ok(serde_json::from_str(&get_text(&r, "instance")?).ok()),
        None => Ok(None),
    }
}

/// Delete a build request; false when it was gone already (the user deleted the server meanwhile).
pub async fn build_request_delete(api: &Db, uuid: &str) -> Result<bool> {
    let n = sqlx::query(&api.sql("DELETE FROM build_requests WHERE instance_uuid = ?"))
        .bind(uuid)
        .execute(api.pool())
        .await?
        .rows_affected();
    Ok(n > 0)
}

pub async fn request_spec_get(api: &Db, uuid: &str) -> Result<Option<RequestSpec>> {
    let r = sqlx::query(&api.sql("SELECT spec FROM request_specs WHERE instance_uuid = ?"))
        .bind(uuid)
        .fetch_optional(api.pool())
        .await?;
    match r {
        Some(r) => Ok(serde_json::from_str(&get_text(&r, "spec")?).ok()),
        None => Ok(None),
    }
}

pub async fn map_to_cell(api: &Db, uuid: &str, cell_id: i64) -> Result<()> {
    sqlx::query(&api.sql("UPDATE instance_mappings SET cell_id = ?, updated_at = ? WHERE instance_uuid = ?"))
        .bind(cell_id)
        .bind(tessera_types::now_epoch_micros())
        .bind(uuid)
        .execute(api.pool())
        .await?;
    Ok(())
}

/// Point the instance mapping at its cell and delete the build request, in one transaction; false (and
/// nothing changed) when the build request was gone already — the user deleted the server meanwhile.
pub async fn map_and_forget_build_request(api: &Db, uuid: &str, cell_id: i64) -> Result<bool> {
    let mut tx = api.begin_write().await?;
    let n = sqlx::query(&api.sql("DELETE FROM build_requests WHERE instance_uuid = ?"))
        .bind(uuid)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Ok(false);
    }
    sqlx::query(&api.sql("UPDATE instance_mappings SET cell_id = ?, updated_at = ? WHERE instance_uuid = ?"))
        .bind(cell_id)
        .bind(tessera_types::now_epoch_micros())
        .bind(uuid)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// `instance-%08x` of an instance row id.
pub fn instance_name(id: i64) -> String {
    format!("instance-{id:08x}")
}

fn row_for(
    i: &BootInstance,
    host: Option<&str>,
    vm_state: &str,
    task_state: Option<&str>,
    zone: Option<String>,
) -> InstanceRow {
    InstanceRow {
        id: 0,
        uuid: i.uuid.clone(),
        project_id: i.project_id.clone(),
        user_id: i.user_id.clone(),
        display_name: Some(i.display_name.clone()),
        host: host.map(str::to_string),
        node: host.map(str::to_string),
        availability_zone: zone.or_else(|| i.availability_zone.clone()),
        vm_state: vm_state.into(),
        task_state: task_state.map(str::to_string),
        power_state: 0,
        image_ref: i.image_ref.clone(),
        flavor: i.flavor.to_string(),
        memory_mb: i.memory_mb,
        vcpus: i.vcpus,
        root_gb: i.root_gb,
        ephemeral_gb: i.ephemeral_gb,
        launched_at: None,
        created_at: i.created_at,
        updated_at: i.created_at,
        deleted: 0,
        display_description: i.description.clone(),
        hostname: i.hostname.clone(),
        key_name: i.key_name.clone(),
        key_data: i.key_data.clone(),
        user_data: i.user_data.clone(),
        config_drive: i.config_drive.clone(),
        reservation_id: i.reservation_id.clone(),
        launch_index: i.launch_index,
        network_info: i.network_info.clone(),
        locked_by: None,
        terminated_at: None,
        access_ip_v4: i.access_ip_v4.clone(),
        access_ip_v6: i.access_ip_v6.clone(),
        metadata: i.metadata.clone(),
    }
}

impl BootInstance {
    /// How the API shows a server that is still a build request.
    pub fn as_row(&self) -> InstanceRow {
        row_for(self, None, "building", Some("scheduling"), None)
    }
}

/// The super conductor: the API database, the scheduler, and the way into every cell.
pub struct SuperConductor {
    pub api: Db,
    pub scheduler: Arc<Scheduler>,
    pub buses: Arc<tessera_bus::Buses>,
    cell_dbs: celldb::CellDbs,
    /// How many boot requests are scheduled at once (`[conductor] workers`); the rest wait their turn on
    /// the bus rather than all holding host states at the same time.
    workers: Arc<tokio::sync::Semaphore>,
}

impl SuperConductor {
    pub fn new(api: Db, scheduler: Arc<Scheduler>, buses: Arc<tessera_bus::Buses>) -> Self {
        Self::with_workers(api, scheduler, buses, 0)
    }

    /// `workers` concurrent schedules (0: four per CPU, at least 8 — a schedule mostly waits on placement
    /// and the databases, so more than one per CPU keeps the CPUs busy).
    pub fn with_workers(
        api: Db,
        scheduler: Arc<Scheduler>,
        buses: Arc<tessera_bus::Buses>,
        workers: usize,
    ) -> Self {
        let n = if workers == 0 {
            (4 * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)).max(8)
        } else {
            workers
        };
        SuperConductor {
            api,
            scheduler,
            buses,
            cell_dbs: celldb::CellDbs::new(),
            workers: Arc::new(tokio::sync::Semaphore::new(n)),
        }
    }

    async fn cell_db(&self, c: &CellMapping) -> Result<Db> {
        self.cell_dbs.get(c).await
    }

    /// Put instances that could not be scheduled into cell0, in ERROR with a fault, mapped there, their
    /// build requests gone.
    async fn bury(&self, instances: &[BootInstance], reason: &str) -> Result<()> {
        let cell0 = cells::cell_get(&self.api, CELL0_UUID).await?.ok_or_else(|| {
            ComputeError::NotFound("cell0 is not mapped: run `manage cell_v2 map_cell0`".into())
        })?;
        let db = self.cell_db(&cell0).await?;
        for i in instances {
            match celldb::instance_create(&db, &row_for(i, None, "error", None, None)).await {
                Ok(_) | Err(ComputeError::Duplicate(_)) => {}
                Err(e) => return Err(e),
            }
            celldb::fault_create(&db, &i.uuid, 500, reason, "", None).await?;
            map_to_cell(&self.api, &i.uuid, cell0.id).await?;
            if !build_request_delete(&self.api, &i.uuid).await? {
                // Deleted by the user meanwhile: nothing to keep in cell0 either.
                celldb::instance_destroy(&db, &i.uuid).await?;
            }
        }
        Ok(())
    }

    /// The server group's policy, rule and the hosts its other members are on, read now (members may have
    /// moved or gone since the boot was asked for).
    async fn fill_group(&self, spec: &mut RequestSpec, booting: &[String]) -> Result<()> {
        let Some(uuid) = spec.instance_group.clone() else {
            return Ok(());
        };
        let Some(g) = crate::groups::get(&self.api, &uuid).await? else {
            // Deleted meanwhile: nothing constrains the boot any more.
            return Ok(());
        };
        spec.group_policy = Some(g.policy.clone());
        spec.group_max_per_host = Some(g.max_server_per_host());
        spec.group_hosts.clear();
        for m in g.members.iter().filter(|m| !booting.contains(m)) {
            let Some(im) = crate::cells::instance_mapping_get(&self.api, m).await? else {
                continue;
            };
            let Some(cell_id) = im.cell_id else { continue };
            let Some(cell) = crate::cells::cell_get_by_id(&self.api, cell_id).await? else {
                continue;
            };
            let db = self.cell_dbs.get(&cell).await?;
            if let Some(i) = celldb::instance_get(&db, m).await? {
                if let (0, Some(h)) = (i.deleted, i.host) {
                    spec.group_hosts.push(h);
                }
            }
        }
        Ok(())
    }

    /// Schedule and build the instances of one boot request (they share a request spec).
    pub async fn schedule_and_build(&self, uuids: &[String], request_id: &str) -> Result<()> {
        let Some(first) = uuids.first() else { return Ok(()) };
        let spec = request_spec_get(&self.api, first)
            .await?
            .ok_or_else(|| ComputeError::NotFound(format!("request spec of {first}")))?;
        let mut instances = Vec::new();
        for u in uuids {
            if let Some(i) = build_request_get(&self.api, u).await? {
                instances.push(i);
            }
        }
        let ids: Vec<String> = instances.iter().map(|i| i.uuid.clone()).collect();
        let mut spec = spec;
        self.fill_group(&mut spec, &ids).await?;
        let selections = match self.scheduler.select_destinations(&spec, &ids).await {
            Ok(s) => s,
            Err(SchedulerError::NoValidHost(why)) => {
                tracing::info!(%request_id, reason = %why, "no valid host; burying in cell0");
                return self
                    .bury(&instances, &format!("No valid host was found. {why}"))
                    .await;
            }
            Err(SchedulerError::Compute(e)) => return Err(e),
            Err(SchedulerError::Placement(e)) => return Err(ComputeError::NotFound(e.to_string())),
        };
        let zones = crate::aggregates::host_zones(&self.api).await?;
        for (i, sel) in instances.iter().zip(selections) {
            let Some((chosen, alternates)) = sel.split_first() else {
                continue;
            };
            let Some(hm) = cells::host_mapping_get(&self.api, &chosen.host).await? else {
                if let Err(e) = self.scheduler.placement.release(&i.uuid).await {
                    tracing::warn!(instance = %i.uuid, error = %e, "cannot release the claim");
                }
                self.bury(
                    std::slice::from_ref(i),
                    &format!("Host '{}' is not mapped to any cell", chosen.host),
                )
                .await?;
                continue;
            };
            let cell = cells::cell_get_by_id(&self.api, hm.cell_id)
                .await?
                .ok_or_else(|| ComputeError::NotFound(format!("cell {}", hm.cell_id)))?;
            let db = self.cell_db(&cell).await?;
            // The host's zone (its aggregates', else the default zone) becomes the instance's.
            let zone = zones
                .get(&chosen.host)
                .cloned()
                .or_else(|| Some(self.scheduler.cfg.default_availability_zone.clone()));
            let row = match celldb::instance_create(
                &db,
                &row_for(i, Some(&chosen.host), "building", Some("spawning"), zone),
            )
            .await
            {
                Ok(r) => r,
                Err(ComputeError::Duplicate(_)) => celldb::instance_get(&db, &i.uuid)
                    .await?
                    .ok_or_else(|| ComputeError::NotFound(i.uuid.clone()))?,
                Err(e) => return Err(e),
            };
            if !map_and_forget_build_request(&self.api, &i.uuid, cell.id).await? {
                // The server was deleted while we scheduled it: undo.
                celldb::instance_destroy(&db, &i.uuid).await?;
                if let Err(e) = self.scheduler.placement.release(&i.uuid).await {
                    tracing::warn!(instance = %i.uuid, error = %e, "cannot release the claim");
                }
                continue;
            }
            let bus = self
                .buses
                .get(&cell.transport_url)
                .map_err(|e| ComputeError::NotFound(e.to_string()))?;
            let build = BuildRequest {
                instance: spawn_spec(&row),
                project_id: i.project_id.clone(),
                user_id: i.user_id.clone(),
                alternates: alternates.to_vec(),
            };
            if let Err(e) = cast_build(&*bus, &chosen.host, &build, request_id).await {
                tracing::warn!(instance = %i.uuid, host = %chosen.host, error = %e, "cannot reach the compute host");
                celldb::fault_create(
                    &db,
                    &i.uuid,
                    500,
                    &format!("Build of instance {} aborted: {e}", i.uuid),
                    "",
                    Some(&chosen.host),
                )
                .await?;
                celldb::instance_set_state(&db, &i.uuid, "error", None, 0, false).await?;
            }
        }
        Ok(())
    }
}

/// What a compute host is asked to build: the instance, whose it is (for claims on a reschedule), and the
/// alternate hosts of its cell still to try if the spawn fails.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BuildRequest {
    pub instance: SpawnSpec,
    pub project_id: String,
    pub user_id: String,
    #[serde(default)]
    pub alternates: Vec<crate::scheduler::Selection>,
}

/// What a driver needs of an instance row.
pub fn spawn_spec(row: &InstanceRow) -> SpawnSpec {
    SpawnSpec {
        uuid: row.uuid.clone(),
        name: instance_name(row.id),
        vcpus: row.vcpus,
        memory_mb: row.memory_mb,
        root_gb: row.root_gb,
        ephemeral_gb: row.ephemeral_gb,
        image_id: row.image_ref.clone(),
        network: crate::network::NetworkRequest::from_info(row.network_info.as_deref()),
    }
}

/// Cast a build to a compute host on its cell's bus.
pub async fn cast_build(
    bus: &dyn tessera_bus::Bus,
    host: &str,
    build: &BuildRequest,
    request_id: &str,
) -> std::result::Result<(), tessera_bus::BusError> {
    let args = serde_json::to_value(build).map_err(|e| tessera_bus::BusError::BadMessage(e.to_string()))?;
    bus.cast(
        &tessera_bus::Target::server(crate::agent::TOPIC, host),
        tessera_bus::Envelope::new("build_and_run_instance", args, request_id),
    )
    .await
}

/// The super conductor's topic on the API-level bus (`[DEFAULT] transport_url`): not the cell conductors'
/// `conductor`, so one RabbitMQ virtual host can carry both the API level and a cell's traffic (a
/// single-cell deployment) without the two kinds of conductor taking each other's messages.
pub const SUPER_TOPIC: &str = "superconductor";

impl SuperConductor {
    /// Serve `schedule_and_build_instances` casts from the API on `bus` until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        bus: Arc<dyn tessera_bus::Bus>,
        host: &str,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::result::Result<tokio::task::JoinHandle<()>, tessera_bus::BusError> {
        let listener = bus.listen(SUPER_TOPIC, host).await?;
        let me = self.clone();
        let handler: tessera_bus::Handler = Arc::new(move |msg| {
            let me = me.clone();
            Box::pin(async move {
                match msg.method.as_str() {
                    "schedule_and_build_instances" => {
                        let uuids: Vec<String> =
                            serde_json::from_value(msg.args["uuids"].clone()).map_err(|e| {
                                tessera_bus::RemoteError {
                                    kind: "BadArguments".into(),
                                    message: e.to_string(),
                                }
                            })?;
                        let _turn = me.workers.clone().acquire_owned().await.map_err(|e| {
                            tessera_bus::RemoteError {
                                kind: "ShuttingDown".into(),
                                message: e.to_string(),
                            }
                        })?;
                        if let Err(e) = me.schedule_and_build(&uuids, &msg.request_id).await {
                            tracing::error!(request_id = %msg.request_id, error = %e, "schedule and build failed");
                            return Err(tessera_bus::RemoteError {
                                kind: "BuildFailed".into(),
                                message: e.to_string(),
                            });
                        }
                        Ok(json!({}))
                    }
                    other => Err(tessera_bus::RemoteError {
                        kind: "UnsupportedMethod".into(),
                        message: format!("the super conductor has no method {other}"),
                    }),
                }
            })
        });
        let serving = tokio::spawn(tessera_bus::serve(listener, handler));
        Ok(tokio::spawn(async move {
            let _ = shutdown.changed().await;
            serving.abort();
        }))
    }

    /// Finish the boots a previous run of the process left half-way (crash recovery), for build requests
    /// created before `before`: a build request without a cell is scheduled again (any claim it had is
    /// released first); one already mapped to a cell had its instance created but never cast to its host, so
    /// its build request goes and the build is cast to the host the instance row names.
    pub async fn recover(&self, before: i64) -> Result<usize> {
        let rows = sqlx::query(&self.api.sql(
            "SELECT b.instance_uuid AS uuid, m.cell_id AS cell_id FROM build_requests b \
             LEFT JOIN instance_mappings m ON m.instance_uuid = b.instance_uuid WHERE b.created_at < ?",
        ))
        .bind(before)
        .fetch_all(self.api.pool())
        .await?;
        let mut n = 0;
        for r in rows {
            let uuid = get_text(&r, "uuid")?;
            let cell_id: Option<i64> = r.try_get("cell_id")?;
            let request_id = tessera_types::new_request_id();
            match cell_id {
                None => {
                    self.scheduler.placement.release(&uuid).await.map_err(|e| {
                        ComputeError::NotFound(format!("cannot release the claim of {uuid}: {e}"))
                    })?;
                    // A row created in a cell before the crash, never mapped, must not survive next to the
                    // one the new schedule creates.
                    for cell in cells::cell_list(&self.api).await? {
                        if let Ok(db) = self.cell_db(&cell).await {
                            if celldb::instance_purge(&db, &uuid).await? {
                                tracing::info!(instance = %uuid, cell = %cell.uuid, "removed an unmapped instance row");
                            }
                        }
                    }
                    tracing::info!(instance = %uuid, %request_id, "recovering an unscheduled boot");
                    self.schedule_and_build(std::slice::from_ref(&uuid), &request_id)
                        .await?;
                }
                Some(cell_id) => {
                    let cell = cells::cell_get_by_id(&self.api, cell_id)
                        .await?
                        .ok_or_else(|| ComputeError::NotFound(format!("cell {cell_id}")))?;
                    let db = self.cell_db(&cell).await?;
                    let spec = request_spec_get(&self.api, &uuid).await?.unwrap_or_default();
                    build_request_delete(&self.api, &uuid).await?;
                    let Some(row) = celldb::instance_get(&db, &uuid).await? else {
                        continue;
                    };
                    let Some(host) = row.host.clone().filter(|_| row.deleted == 0) else {
                        continue;
                    };
                    tracing::info!(instance = %uuid, %host, %request_id, "recovering a boot never cast to its host");
                    let bus = self
                        .buses
                        .get(&cell.transport_url)
                        .map_err(|e| ComputeError::NotFound(e.to_string()))?;
                    let build = BuildRequest {
                        instance: spawn_spec(&row),
                        project_id: spec.project_id.clone(),
                        user_id: spec.user_id.clone(),
                        alternates: Vec::new(),
                    };
                    if let Err(e) = cast_build(&*bus, &host, &build, &request_id).await {
                        tracing::warn!(instance = %uuid, error = %e, "cannot reach the compute host");
                    }
                }
            }
            n += 1;
        }
        Ok(n)
    }
}

/// Remove every API-database trace of a server that never reached a cell (its build request, if still
/// there, its request spec, its instance mapping, its group membership), in one transaction.
pub async fn unrecord(api: &Db, uuid: &str) -> Result<()> {
    let mut tx = api.begin_write().await?;
    for sql in [
        "DELETE FROM build_requests WHERE instance_uuid = ?",
        "DELETE FROM request_specs WHERE instance_uuid = ?",
        "DELETE FROM instance_mappings WHERE instance_uuid = ?",
        "DELETE FROM instance_group_member WHERE instance_uuid = ?",
    ] {
        sqlx::query(&api.sql(sql)).bind(uuid).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Count of build requests left (for tests and recovery).
pub async fn build_requests_count(api: &Db) -> Result<i64> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM build_requests")
        .fetch_one(api.pool())
        .await?;
    Ok(r.try_get("n")?)
}
