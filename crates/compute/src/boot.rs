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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
}

/// Write the build requests, request specs and cell-less instance mappings of one boot, atomically.
pub async fn record(api: &Db, spec: &RequestSpec, instances: &[BootInstance]) -> Result<()> {
    let now = tessera_types::now_epoch_micros();
    let spec_json = serde_json::to_string(spec).map_err(|e| ComputeError::NotFound(e.to_string()))?;
    let mut tx = api.begin().await?;
    for i in instances {
        let inst = serde_json::to_string(i).map_err(|e| ComputeError::NotFound(e.to_string()))?;
        sqlx::query(&api.sql(
            "INSERT INTO build_requests (instance_uuid, project_id, instance, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        ))
        .bind(&i.uuid)
        .bind(&i.project_id)
        .bind(inst)
        .bind(now)
        .bind(now)
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
    }
}

/// The super conductor: the API database, the scheduler, and the way into every cell.
pub struct SuperConductor {
    pub api: Db,
    pub scheduler: Arc<Scheduler>,
    pub buses: Arc<tessera_bus::Buses>,
    cell_dbs: celldb::CellDbs,
}

impl SuperConductor {
    pub fn new(api: Db, scheduler: Arc<Scheduler>, buses: Arc<tessera_bus::Buses>) -> Self {
        SuperConductor {
            api,
            scheduler,
            buses,
            cell_dbs: celldb::CellDbs::new(),
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
        for (i, sel) in instances.iter().zip(selections) {
            let Some(chosen) = sel.first() else { continue };
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
            let zone = crate::aggregates::host_zones(&self.api)
                .await?
                .get(&chosen.host)
                .cloned();
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
            map_to_cell(&self.api, &i.uuid, cell.id).await?;
            if !build_request_delete(&self.api, &i.uuid).await? {
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
            let spawn = SpawnSpec {
                uuid: i.uuid.clone(),
                name: instance_name(row.id),
                vcpus: i.vcpus,
                memory_mb: i.memory_mb,
                root_gb: i.root_gb,
                ephemeral_gb: i.ephemeral_gb,
                image_id: i.image_ref.clone(),
            };
            let msg = tessera_bus::Envelope::new(
                "build_and_run_instance",
                json!({ "instance": spawn }),
                request_id,
            );
            if let Err(e) = bus
                .cast(
                    &tessera_bus::Target::server(crate::agent::TOPIC, &chosen.host),
                    msg,
                )
                .await
            {
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

/// Count of build requests left (for tests and recovery).
pub async fn build_requests_count(api: &Db) -> Result<i64> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM build_requests")
        .fetch_one(api.pool())
        .await?;
    Ok(r.try_get("n")?)
}
