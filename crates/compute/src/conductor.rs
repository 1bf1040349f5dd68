//! The cell conductor: the only way compute hosts reach their cell's database. It listens on the cell's bus
//! (topic `conductor`) and writes what compute hosts report — service heartbeats, compute node records —
//! and heartbeats its own `nova-conductor` service record.

use crate::celldb::{self, NodeReport};
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

async fn handle(db: Db, msg: Envelope) -> Reply {
    let a = &msg.args;
    match msg.method.as_str() {
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

/// Serve the cell conductor for `db` on `bus` as `host` until `shutdown` turns true.
pub async fn spawn(
    bus: Arc<dyn Bus>,
    db: Db,
    host: String,
    report_interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, tessera_bus::BusError> {
    let listener = bus.listen(TOPIC, &host).await?;
    let handler_db = db.clone();
    let handler: tessera_bus::Handler = Arc::new(move |msg| {
        let db = handler_db.clone();
        Box::pin(handle(db, msg))
    });
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
