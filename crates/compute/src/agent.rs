//! The compute agent of one host: registers its `nova-compute` service and heartbeats through the cell
//! conductor (it has no database credentials), and runs the resource tracker — the compute node record (via
//! the conductor) and the node's resource provider with VCPU / MEMORY_MB / DISK_GB inventories in placement.

use crate::celldb::NodeReport;
use crate::conductor;
use crate::placement_client::{NodeInventory, PlacementClient};
use crate::virt::{SpawnSpec, VirtDriver};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tessera_bus::Bus;

pub const BINARY: &str = "nova-compute";
pub const TOPIC: &str = "compute";

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub host: String,
    pub report_interval: Duration,
    pub resource_interval: Duration,
    pub cpu_allocation_ratio: f64,
    pub ram_allocation_ratio: f64,
    pub disk_allocation_ratio: f64,
    pub reserved_host_cpus: i64,
    pub reserved_host_memory_mb: i64,
    pub reserved_host_disk_mb: i64,
    /// How long one conductor call may take.
    pub rpc_timeout: Duration,
}

pub struct ComputeAgent {
    pub cfg: AgentConfig,
    bus: Arc<dyn Bus>,
    pub driver: Arc<dyn VirtDriver>,
    placement: Arc<PlacementClient>,
}

/// What the first resource report produced (the host is then ready to be discovered).
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub service_id: i64,
    pub node_uuid: String,
}

impl ComputeAgent {
    pub fn new(
        cfg: AgentConfig,
        bus: Arc<dyn Bus>,
        driver: Arc<dyn VirtDriver>,
        placement: Arc<PlacementClient>,
    ) -> Self {
        ComputeAgent {
            cfg,
            bus,
            driver,
            placement,
        }
    }

    async fn heartbeat(&self) -> Result<i64, String> {
        let v = conductor::call(
            &*self.bus,
            "service_report",
            json!({"host": self.cfg.host, "binary": BINARY, "topic": TOPIC}),
            &tessera_types::new_request_id(),
            self.cfg.rpc_timeout,
        )
        .await
        .map_err(|e| format!("heartbeat: {e}"))?;
        v["id"]
            .as_i64()
            .ok_or_else(|| format!("heartbeat: no service id in {v}"))
    }

    /// One resource report: the compute node record, then its provider and inventories in placement.
    pub async fn update_resources(&self, service_id: i64) -> Result<String, String> {
        let r = self.driver.available_resources().await;
        let node = NodeReport {
            host: self.cfg.host.clone(),
            service_id: Some(service_id),
            hypervisor_hostname: r.hypervisor_hostname.clone(),
            hypervisor_type: r.hypervisor_type.clone(),
            hypervisor_version: r.hypervisor_version,
            vcpus: r.vcpus,
            memory_mb: r.memory_mb,
            local_gb: r.local_gb,
            vcpus_used: r.vcpus_used,
            memory_mb_used: r.memory_mb_used,
            local_gb_used: r.local_gb_used,
            running_vms: r.running_vms,
            cpu_allocation_ratio: self.cfg.cpu_allocation_ratio,
            ram_allocation_ratio: self.cfg.ram_allocation_ratio,
            disk_allocation_ratio: self.cfg.disk_allocation_ratio,
        };
        let v = conductor::call(
            &*self.bus,
            "compute_node_update",
            json!({ "node": node }),
            &tessera_types::new_request_id(),
            self.cfg.rpc_timeout,
        )
        .await
        .map_err(|e| format!("compute node update: {e}"))?;
        let uuid = v["uuid"]
            .as_str()
            .ok_or_else(|| format!("compute node update: no uuid in {v}"))?
            .to_string();
        self.placement
            .ensure_provider(&uuid, &r.hypervisor_hostname)
            .await
            .map_err(|e| e.to_string())?;
        let inv = NodeInventory {
            vcpus: r.vcpus,
            reserved_cpus: self.cfg.reserved_host_cpus,
            cpu_ratio: self.cfg.cpu_allocation_ratio,
            memory_mb: r.memory_mb,
            reserved_memory_mb: self.cfg.reserved_host_memory_mb,
            ram_ratio: self.cfg.ram_allocation_ratio,
            disk_gb: r.local_gb,
            reserved_disk_gb: (self.cfg.reserved_host_disk_mb + 1023) / 1024,
            disk_ratio: self.cfg.disk_allocation_ratio,
        };
        self.placement
            .set_inventory(&uuid, &inv)
            .await
            .map_err(|e| e.to_string())?;
        Ok(uuid)
    }

    async fn conductor(
        &self,
        method: &str,
        args: serde_json::Value,
        request_id: &str,
    ) -> Result<serde_json::Value, String> {
        conductor::call(&*self.bus, method, args, request_id, self.cfg.rpc_timeout)
            .await
            .map_err(|e| format!("{method}: {e}"))
    }

    /// Build an instance the conductor sent here: spawn it with the driver and report the outcome (ACTIVE,
    /// or ERROR with a fault) through the cell conductor.
    pub async fn build_and_run(&self, spec: SpawnSpec, request_id: &str) -> Result<(), String> {
        match self.driver.spawn(&spec).await {
            Ok(()) => {
                let power = self
                    .driver
                    .get_info(&spec.uuid)
                    .await
                    .map(|i| i.state.code())
                    .unwrap_or(1);
                self.conductor(
                    "instance_update",
                    json!({"uuid": spec.uuid, "vm_state": "active", "task_state": null, "power_state": power, "launched": true}),
                    request_id,
                )
                .await?;
                tracing::info!(instance = %spec.uuid, host = %self.cfg.host, %request_id, "instance spawned");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(instance = %spec.uuid, host = %self.cfg.host, error = %e, %request_id, "spawn failed");
                self.conductor(
                    "instance_fault",
                    json!({"uuid": spec.uuid, "code": 500, "message": e.to_string(), "details": "", "host": self.cfg.host}),
                    request_id,
                )
                .await?;
                self.conductor(
                    "instance_update",
                    json!({"uuid": spec.uuid, "vm_state": "error", "task_state": null, "power_state": 0}),
                    request_id,
                )
                .await?;
                Err(e.to_string())
            }
        }
    }

    /// Remove an instance from this host and mark it deleted in the cell.
    pub async fn terminate(&self, uuid: &str, request_id: &str) -> Result<(), String> {
        self.driver.destroy(uuid).await.map_err(|e| e.to_string())?;
        self.conductor("instance_destroy", json!({ "uuid": uuid }), request_id)
            .await?;
        Ok(())
    }

    async fn handle(self: Arc<Self>, msg: tessera_bus::Envelope) -> tessera_bus::Reply {
        let err = |kind: &str, m: String| tessera_bus::RemoteError {
            kind: kind.into(),
            message: m,
        };
        match msg.method.as_str() {
            "build_and_run_instance" => {
                let spec: SpawnSpec = serde_json::from_value(msg.args["instance"].clone())
                    .map_err(|e| err("BadArguments", e.to_string()))?;
                self.build_and_run(spec, &msg.request_id).await.map_err(|e| {
                    tracing::warn!(request_id = %msg.request_id, error = %e, "build failed");
                    err("BuildFailed", e)
                })?;
                Ok(json!({}))
            }
            "terminate_instance" => {
                let uuid = msg.args["uuid"]
                    .as_str()
                    .ok_or_else(|| err("BadArguments", "uuid".into()))?
                    .to_string();
                self.terminate(&uuid, &msg.request_id).await.map_err(|e| {
                    tracing::warn!(request_id = %msg.request_id, error = %e, "terminate failed");
                    err("TerminateFailed", e)
                })?;
                Ok(json!({}))
            }
            other => Err(err("UnsupportedMethod", format!("compute has no method {other}"))),
        }
    }

    /// Register (retrying until the conductor and placement answer), then heartbeat and report resources
    /// periodically until `shutdown`. `ready` gets the registration once the first report is through.
    pub fn spawn(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        ready: tokio::sync::oneshot::Sender<Registered>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let host = self.cfg.host.clone();
            // Work for this host (builds, deletes) arrives on the cell bus, addressed to the host.
            match self.bus.listen(TOPIC, &host).await {
                Ok(listener) => {
                    let me = self.clone();
                    let handler: tessera_bus::Handler = Arc::new(move |msg| Box::pin(me.clone().handle(msg)));
                    tokio::spawn(tessera_bus::serve(listener, handler));
                }
                Err(e) => tracing::error!(%host, error = %e, "compute host cannot listen on its bus"),
            }
            let mut backoff = Duration::from_millis(100);
            let (service_id, node_uuid) = loop {
                let attempt = async {
                    let id = self.heartbeat().await?;
                    let uuid = self.update_resources(id).await?;
                    Ok::<_, String>((id, uuid))
                };
                match attempt.await {
                    Ok(x) => break x,
                    Err(e) => {
                        tracing::warn!(%host, error = %e, "compute host cannot register yet; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            };
            tracing::info!(%host, node = %node_uuid, "compute host registered");
            let _ = ready.send(Registered {
                service_id,
                node_uuid,
            });
            let mut beat = tokio::time::interval(self.cfg.report_interval);
            let mut res = tokio::time::interval(self.cfg.resource_interval);
            beat.tick().await;
            res.tick().await;
            loop {
                tokio::select! {
                    _ = beat.tick() => {
                        if let Err(e) = self.heartbeat().await {
                            tracing::warn!(%host, error = %e, "heartbeat failed");
                        }
                    }
                    _ = res.tick() => {
                        if let Err(e) = self.update_resources(service_id).await {
                            tracing::warn!(%host, error = %e, "resource report failed");
                        }
                    }
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}
