//! The cell conductor: the only way compute hosts reach their cell's database. It listens on the cell's bus
//! (topic `conductor`) and writes what compute hosts report — service heartbeats, compute node records —
//! and heartbeats its own `nova-conductor` service record.

use crate::boot::BuildRequest;
use crate::celldb::{self, NodeReport};
use crate::placement_client::PlacementClient;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tessera_bus::{Bus, Envelope, RemoteError, Reply, Target};
use tessera_db::Db;

pub const TOPIC: &str = "conductor";
pub const BINARY: &str = "nova-conductor";

fn remote(kind: &str, e: impl std::fmt::Display) -> RemoteError {
    RemoteError {
        kind: kind.into(),
        message: e.to_string(),
    }
}

fn arg<T: serde::de::DeserializeOwned>(args: &Value, key: &str) -> Result<T, RemoteError> {
    serde_json::from_value(args.get(key).cloned().unwrap_or(Value::Null))
        .map_err(|e| remote("BadArguments", format!("{key}: {e}")))
}

/// What the conductor's handlers share.
struct Cell {
    db: Db,
    bus: Arc<dyn Bus>,
    placement: Option<Arc<PlacementClient>>,
}

/// A build failed on a host: try the alternates in order — claim the alternate's allocation request in
/// placement, move the instance there and cast the build with the alternates left — or, when none is left
/// or none can be claimed, put the instance in ERROR with a fault saying the retries are exhausted.
async fn reschedule(
    cell: &Cell,
    mut build: BuildRequest,
    reason: &str,
    request_id: &str,
) -> Result<(), RemoteError> {
    let uuid = build.instance.uuid.clone();
    let placement = cell.placement.as_ref();
    while !build.alternates.is_empty() {
        let alt = build.alternates.remove(0);
        let claimed = match placement {
            Some(p) => p
                .claim(
                    &uuid,
                    &alt.allocation_request["allocations"],
                    &build.project_id,
                    &build.user_id,
                )
                .await
                .map_err(|e| remote("PlacementError", e))?,
            None => false,
        };
        if !claimed {
            continue;
        }
        if !celldb::instance_set_host(&cell.db, &uuid, &alt.host, &alt.nodename)
            .await
            .map_err(|e| remote("DBError", e))?
        {
            // Deleted meanwhile.
            if let Some(p) = placement {
                p.release(&uuid).await.map_err(|e| remote("PlacementError", e))?;
            }
            return Ok(());
        }
        tracing::info!(instance = %uuid, host = %alt.host, %request_id, "rescheduling to an alternate host");
        match crate::boot::cast_build(&*cell.bus, &alt.host, &build, request_id).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(instance = %uuid, host = %alt.host, error = %e, "alternate unreachable");
                if let Some(p) = placement {
                    p.release(&uuid).await.map_err(|e| remote("PlacementError", e))?;
                }
            }
        }
    }
    let msg = format!(
        "Exceeded maximum number of retries. Exhausted all hosts available for retrying build failures for \
         instance {uuid}."
    );
    celldb::fault_create(&cell.db, &uuid, 500, &msg, reason, None)
        .await
        .map_err(|e| remote("DBError", e))?;
    celldb::instance_set_state(&cell.db, &uuid, "error", None, 0, false)
        .await
        .map_err(|e| remote("DBError", e))?;
    if let Some(p) = placement {
        p.release(&uuid).await.map_err(|e| remote("PlacementError", e))?;
    }
    Ok(())
}

async fn handle(cell: Arc<Cell>, msg: Envelope) -> Reply {
    let db = cell.db.clone();
    let a = &msg.args;
    match msg.method.as_str() {
        "build_instances" => {
            let build: BuildRequest = arg(a, "build")?;
            let reason: String = arg::<Option<String>>(a, "reason")?.unwrap_or_default();
            reschedule(&cell, build, &reason, &msg.request_id).await?;
            Ok(json!({}))
        }
        "host_instances" => {
            let host: String = arg(a, "host")?;
            let rows = celldb::host_instances(&db, &host)
                .await
                .map_err(|e| remote("DBError", e))?;
            let mut out = Vec::new();
            for (uuid, vm_state, task_state) in rows {
                let row = celldb::instance_get(&db, &uuid)
                    .await
                    .map_err(|e| remote("DBError", e))?;
                let Some(row) = row else { continue };
                // What its claim holds, as the scheduler claims it (swap in MB rounds up to GB).
                let swap = serde_json::from_str::<Value>(&row.flavor)
                    .ok()
                    .and_then(|f| f["swap"].as_i64())
                    .unwrap_or(0);
                let resources = json!({"VCPU": row.vcpus, "MEMORY_MB": row.memory_mb,
                                       "DISK_GB": row.root_gb + row.ephemeral_gb + (swap + 1023) / 1024});
                out.push(
                    json!({"uuid": uuid, "vm_state": vm_state, "task_state": task_state,
                                "project_id": row.project_id, "user_id": row.user_id,
                                "resources": resources, "spawn": crate::boot::spawn_spec(&row)}),
                );
            }
            Ok(Value::Array(out))
        }
        "instances_deleted" => {
            // Which of these instances the cell knows as deleted (unknown ones are not: they may be
            // boots the scheduler just claimed for, not yet written here).
            let uuids: Vec<String> = arg(a, "uuids")?;
            let mut gone = Vec::new();
            for u in uuids {
                let row = celldb::instance_get(&db, &u)
                    .await
                    .map_err(|e| remote("DBError", e))?;
                if row.is_some_and(|r| r.deleted != 0) {
                    gone.push(u);
                }
            }
            Ok(json!(gone))
        }
        "service_report" => {
            let (host, binary, topic): (String, String, String) =
                (arg(a, "host")?, arg(a, "binary")?, arg(a, "topic")?);
            let s = celldb::service_report(&db, &host, &binary, &topic)
                .await
                .map_err(|e| remote("DBError", e))?;
            serde_json::to_value(s).map_err(|e| remote("BadReply", e))
        }
        "compute_node_update" => {
            let node: NodeReport = arg(a, "node")?;
            let (id, uuid) = celldb::compute_node_upsert(&db, &node)
                .await
                .map_err(|e| remote("DBError", e))?;
            Ok(json!({"id": id, "uuid": uuid}))
        }
        "instance_update" => {
            let uuid: String = arg(a, "uuid")?;
            let vm_state: String = arg(a, "vm_state")?;
            let task_state: Option<String> = arg(a, "task_state")?;
            let power_state: i64 = arg(a, "power_state")?;
            let launched: bool = arg::<Option<bool>>(a, "launched")?.unwrap_or(false);
            let found = celldb::instance_set_state(
                &db,
                &uuid,
                &vm_state,
                task_state.as_deref(),
                power_state,
                launched,
            )
            .await
            .map_err(|e| remote("DBError", e))?;
            Ok(json!({ "updated": found }))
        }
        "instance_network_info" => {
            let uuid: String = arg(a, "uuid")?;
            let info: crate::network::NetworkRequest = arg(a, "network_info")?;
            let found = celldb::instance_set_network_info(&db, &uuid, &info.to_info())
                .await
                .map_err(|e| remote("DBError", e))?;
            Ok(json!({ "updated": found }))
        }
        "instance_fault" => {
            let uuid: String = arg(a, "uuid")?;
            let code: i64 = arg(a, "code")?;
            let message: String = arg(a, "message")?;
            let details: String = arg::<Option<String>>(a, "details")?.unwrap_or_default();
            let host: Option<String> = arg(a, "host")?;
            celldb::fault_create(&db, &uuid, code, &message, &details, host.as_deref())
                .await
                .map_err(|e| remote("DBError", e))?;
            Ok(json!({}))
        }
        "instance_destroy" => {
            let uuid: String = arg(a, "uuid")?;
            let found = celldb::instance_destroy(&db, &uuid)
                .await
                .map_err(|e| remote("DBError", e))?;
            Ok(json!({ "destroyed": found }))
        }
        other => Err(remote(
            "UnsupportedMethod",
            format!("conductor has no method {other}"),
        )),
    }
}

/// Serve the cell conductor for `db` on `bus` as `host` until `shutdown` turns true. With `placement`, it
/// also reschedules failed builds to their alternates (claims are placement's).
pub async fn spawn(
    bus: Arc<dyn Bus>,
    db: Db,
    placement: Option<Arc<PlacementClient>>,
    host: String,
    report_interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, tessera_bus::BusError> {
    let listener = bus.listen(TOPIC, &host).await?;
    let cell = Arc::new(Cell {
        db: db.clone(),
        bus: bus.clone(),
        placement,
    });
    let handler: tessera_bus::Handler = Arc::new(move |msg| Box::pin(handle(cell.clone(), msg)));
    let serving = tokio::spawn(tessera_bus::serve(listener, handler));
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(report_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = celldb::service_report(&db, &host, BINARY, TOPIC).await {
                        tracing::warn!(error = %e, "conductor heartbeat failed");
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        serving.abort();
    }))
}

/// Call a conductor method (any conductor of the cell).
pub async fn call(
    bus: &dyn Bus,
    method: &str,
    args: Value,
    request_id: &str,
    timeout: Duration,
) -> Result<Value, tessera_bus::BusError> {
    bus.call(
        &Target::topic(TOPIC),
        Envelope::new(method, args, request_id),
        timeout,
    )
    .await
}
