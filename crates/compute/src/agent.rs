//! The compute agent of one host: registers its `nova-compute` service and heartbeats through the cell
//! conductor (it has no database credentials), and runs the resource tracker — the compute node record (via
//! the conductor) and the node's resource provider with VCPU / MEMORY_MB / DISK_GB inventories in placement.

use crate::boot::BuildRequest;
use crate::celldb::NodeReport;
use crate::conductor;
use crate::placement_client::{NodeInventory, PlacementClient};
use crate::virt::{SpawnSpec, VirtDriver};
use serde_json::json;
use std::collections::HashMap;
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
    /// How long a build waits for `network-vif-plugged` of its ports (zero: it does not wait).
    pub vif_plugging_timeout: Duration,
    /// Whether a port not plugged in time (or reported failed) fails the build.
    pub vif_plugging_is_fatal: bool,
}

pub struct ComputeAgent {
    pub cfg: AgentConfig,
    bus: Arc<dyn Bus>,
    pub driver: Arc<dyn VirtDriver>,
    placement: Arc<PlacementClient>,
    network: Arc<crate::network::NetworkClient>,
    /// Builds waiting for events (`network-vif-plugged`) by (instance, event name and tag).
    waiting: std::sync::Mutex<HashMap<(String, String), tokio::sync::oneshot::Sender<String>>>,
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
        network: Arc<crate::network::NetworkClient>,
    ) -> Self {
        ComputeAgent {
            cfg,
            bus,
            driver,
            placement,
            network,
            waiting: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Wait for `name` with `tag` about `uuid` (register before causing it); the receiver gets its status.
    fn expect_event(&self, uuid: &str, name: &str, tag: &str) -> tokio::sync::oneshot::Receiver<String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert((uuid.to_string(), format!("{name}-{tag}")), tx);
        }
        rx
    }

    fn forget_events(&self, uuid: &str) {
        if let Ok(mut w) = self.waiting.lock() {
            w.retain(|(u, _), _| u != uuid);
        }
    }

    /// Plug the instance's taps (when this host's network agent wires ports) and return the waits for
    /// `network-vif-plugged` of the ports not ACTIVE yet (Nova's libvirt driver waits for exactly those).
    async fn plug_vifs(
        &self,
        spec: &crate::virt::SpawnSpec,
    ) -> Result<Vec<(String, tokio::sync::oneshot::Receiver<String>)>, String> {
        let taps: Vec<&crate::network::Vif> = spec
            .network
            .vifs
            .iter()
            .filter(|v| crate::vif::wants_tap(v))
            .collect();
        if taps.is_empty() || !self.network.host_wires_ports(&self.cfg.host).await {
            return Ok(Vec::new());
        }
        let mut waits = Vec::new();
        for v in taps {
            if !v.active && !self.cfg.vif_plugging_timeout.is_zero() {
                waits.push((
                    v.port_id.clone(),
                    self.expect_event(&spec.uuid, "network-vif-plugged", &v.port_id),
                ));
            }
            crate::vif::plug(v).await?;
        }
        Ok(waits)
    }

    async fn wait_plugged(
        &self,
        uuid: &str,
        waits: Vec<(String, tokio::sync::oneshot::Receiver<String>)>,
    ) -> Result<(), String> {
        let r = wait_for_plugs(
            uuid,
            waits,
            self.cfg.vif_plugging_timeout,
            self.cfg.vif_plugging_is_fatal,
        )
        .await;
        self.forget_events(uuid);
        r
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

    /// Build an instance the conductor sent here: spawn it with the driver and report the outcome through
    /// the cell conductor — ACTIVE; or, when the spawn fails and alternates are left, the claim here released
    /// and the build handed back to the conductor for the next alternate; or ERROR with a fault, its
    /// allocations released.
    pub async fn build_and_run(&self, build: BuildRequest, request_id: &str) -> Result<(), String> {
        let mut spec = build.instance.clone();
        // Ports first (Nova's _build_networks_for_instance): made or bound for this host, recorded with
        // the instance, then plugged by the driver.
        let networked = match self.allocate_network(&build, &mut spec, request_id).await {
            Ok(()) => Ok(()),
            Err(e) => Err(crate::virt::VirtError::SpawnFailed {
                uuid: spec.uuid.clone(),
                reason: format!("network allocation failed: {e}"),
            }),
        };
        let spec = &spec;
        let spawned = match networked {
            Ok(()) => match self.plug_vifs(spec).await {
                Ok(waits) => match self.driver.spawn(spec).await {
                    Ok(()) => self.wait_plugged(&spec.uuid, waits).await.map_err(|reason| {
                        crate::virt::VirtError::SpawnFailed {
                            uuid: spec.uuid.clone(),
                            reason,
                        }
                    }),
                    Err(e) => Err(e),
                },
                Err(e) => Err(crate::virt::VirtError::SpawnFailed {
                    uuid: spec.uuid.clone(),
                    reason: format!("plugging VIFs failed: {e}"),
                }),
            },
            Err(e) => Err(e),
        };
        self.forget_events(&spec.uuid);
        match spawned {
            Ok(()) => {
                let power = self
                    .driver
                    .get_info(&spec.uuid)
                    .await
                    .map(|i| i.state.code())
                    .unwrap_or(1);
                let v = self
                    .conductor(
                        "instance_update",
                        json!({"uuid": spec.uuid, "vm_state": "active", "task_state": null, "power_state": power, "launched": true}),
                        request_id,
                    )
                    .await?;
                if v["updated"] == json!(false) {
                    // Deleted while it spawned: do not leave a guest nobody owns.
                    tracing::info!(instance = %spec.uuid, %request_id, "deleted during its build; cleaning up");
                    let _ = self.driver.destroy(&spec.uuid).await;
                    self.deallocate_network(&spec.uuid, &spec.network).await;
                    self.release(&spec.uuid).await;
                    return Ok(());
                }
                tracing::info!(instance = %spec.uuid, host = %self.cfg.host, %request_id, "instance spawned");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(instance = %spec.uuid, host = %self.cfg.host, error = %e, %request_id, "spawn failed");
                let _ = self.driver.destroy(&spec.uuid).await;
                // The next host makes its own ports; this one's go (pre-existing ones are unbound).
                self.deallocate_network(&spec.uuid, &spec.network).await;
                self.release(&spec.uuid).await;
                if !build.alternates.is_empty() {
                    self.conductor(
                        "build_instances",
                        json!({"build": build, "reason": e.to_string()}),
                        request_id,
                    )
                    .await?;
                    return Err(format!("{e}; rescheduled"));
                }
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

    /// Create or bind the build's ports and record them as the instance's VIFs in `spec`.
    async fn allocate_network(
        &self,
        build: &BuildRequest,
        spec: &mut crate::virt::SpawnSpec,
        request_id: &str,
    ) -> Result<(), String> {
        if spec.network.requested.is_empty() {
            return Ok(());
        }
        let vifs = self
            .network
            .allocate_for_instance(&spec.uuid, &build.project_id, &self.cfg.host, &spec.network)
            .await?;
        spec.network.vifs = vifs;
        let v = self
            .conductor(
                "instance_network_info",
                json!({"uuid": spec.uuid, "network_info": spec.network}),
                request_id,
            )
            .await?;
        if v["updated"] == json!(false) {
            // Deleted meanwhile: the ports go with it.
            self.deallocate_network(&spec.uuid, &spec.network).await;
            return Err("the instance was deleted during its build".into());
        }
        tracing::info!(instance = %spec.uuid, ports = spec.network.vifs.len(), %request_id, "network allocated");
        Ok(())
    }

    /// Attach one more network or port to an instance (os-interface): the port is made or bound here, the
    /// driver plugs it, and the instance's VIFs are recorded. Returns the new VIF.
    pub async fn attach_interface(
        &self,
        uuid: &str,
        project_id: &str,
        mut current: crate::network::NetworkRequest,
        requested: crate::network::RequestedNetwork,
        request_id: &str,
    ) -> Result<crate::network::Vif, String> {
        let one = crate::network::NetworkRequest {
            requested: vec![requested.clone()],
            security_groups: current.security_groups.clone(),
            vifs: Vec::new(),
        };
        let vif = self
            .network
            .allocate_for_instance(uuid, project_id, &self.cfg.host, &one)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| "no port was allocated".to_string())?;
        let plugged = match crate::vif::wants_tap(&vif) && self.network.host_wires_ports(&self.cfg.host).await
        {
            true => crate::vif::plug(&vif).await,
            false => Ok(()),
        };
        if let Err(e) = plugged {
            crate::vif::unplug(&vif).await;
            let _ = self
                .network
                .release_port(&vif.port_id, vif.preserve_on_delete)
                .await;
            return Err(format!("plugging the VIF failed: {e}"));
        }
        if let Err(e) = self.driver.attach_interface(uuid, &vif).await {
            crate::vif::unplug(&vif).await;
            let _ = self
                .network
                .release_port(&vif.port_id, vif.preserve_on_delete)
                .await;
            return Err(e.to_string());
        }
        current.requested.push(crate::network::RequestedNetwork {
            network_id: Some(vif.network_id.clone()),
            port_id: vif.preserve_on_delete.then(|| vif.port_id.clone()),
            ..requested
        });
        current.vifs.push(vif.clone());
        self.conductor(
            "instance_network_info",
            json!({"uuid": uuid, "network_info": current}),
            request_id,
        )
        .await?;
        tracing::info!(instance = %uuid, port = %vif.port_id, %request_id, "interface attached");
        Ok(vif)
    }

    /// Detach a port from an instance (os-interface): unplugged, released, and dropped from its VIFs.
    pub async fn detach_interface(
        &self,
        uuid: &str,
        mut current: crate::network::NetworkRequest,
        port_id: &str,
        request_id: &str,
    ) -> Result<(), String> {
        let Some(vif) = current.vifs.iter().find(|v| v.port_id == port_id).cloned() else {
            return Err(format!("port {port_id} is not attached to instance {uuid}"));
        };
        self.driver
            .detach_interface(uuid, &vif)
            .await
            .map_err(|e| e.to_string())?;
        crate::vif::unplug(&vif).await;
        self.network.release_port(port_id, vif.preserve_on_delete).await?;
        current.vifs.retain(|v| v.port_id != port_id);
        current
            .requested
            .retain(|r| r.port_id.as_deref() != Some(port_id));
        // A network entry that made this port goes too (the first one of its network without a VIF left).
        let left: Vec<String> = current.vifs.iter().map(|v| v.network_id.clone()).collect();
        if let Some(pos) = current.requested.iter().position(|r| {
            r.port_id.is_none()
                && r.network_id.as_deref() == Some(vif.network_id.as_str())
                && left.iter().filter(|n| **n == vif.network_id).count()
                    < current
                        .requested
                        .iter()
                        .filter(|q| q.network_id == r.network_id)
                        .count()
        }) {
            current.requested.remove(pos);
        }
        self.conductor(
            "instance_network_info",
            json!({"uuid": uuid, "network_info": current}),
            request_id,
        )
        .await?;
        tracing::info!(instance = %uuid, port = %port_id, %request_id, "interface detached");
        Ok(())
    }

    /// Events other services sent about an instance here (`os-server-external-events`): on `network-changed`
    /// and `network-vif-deleted` the instance's VIFs are read again from its ports and recorded.
    pub async fn external_events(
        &self,
        uuid: &str,
        mut current: crate::network::NetworkRequest,
        events: &[serde_json::Value],
        request_id: &str,
    ) -> Result<(), String> {
        let mut refresh = false;
        for e in events {
            let name = e["name"].as_str().unwrap_or_default();
            tracing::info!(instance = %uuid, event = %name, tag = ?e["tag"].as_str(), status = ?e["status"].as_str(), %request_id, "external event");
            let key = (
                uuid.to_string(),
                format!("{name}-{}", e["tag"].as_str().unwrap_or_default()),
            );
            let waiter = self.waiting.lock().ok().and_then(|mut w| w.remove(&key));
            if let Some(tx) = waiter {
                let _ = tx.send(e["status"].as_str().unwrap_or("completed").to_string());
            }
            refresh |= matches!(name, "network-changed" | "network-vif-deleted");
        }
        if refresh {
            current.vifs = self.network.refresh(uuid, &current).await?;
            let live: Vec<String> = current.vifs.iter().map(|v| v.port_id.clone()).collect();
            current
                .requested
                .retain(|r| r.port_id.as_ref().is_none_or(|p| live.contains(p)));
            self.conductor(
                "instance_network_info",
                json!({"uuid": uuid, "network_info": current}),
                request_id,
            )
            .await?;
        }
        Ok(())
    }

    /// Release an instance's ports (logged, not fatal).
    async fn deallocate_network(&self, uuid: &str, req: &crate::network::NetworkRequest) {
        if req.requested.is_empty() && req.vifs.is_empty() {
            return;
        }
        for v in &req.vifs {
            crate::vif::unplug(v).await;
        }
        if let Err(e) = self.network.deallocate_for_instance(uuid, req).await {
            tracing::warn!(instance = %uuid, error = %e, "cannot release the instance's ports");
        }
    }

    /// Release an instance's allocations (logged, not fatal: the heal at start-up catches up).
    async fn release(&self, uuid: &str) {
        if let Err(e) = self.placement.release(uuid).await {
            tracing::warn!(instance = %uuid, error = %e, "cannot release allocations");
        }
    }

    /// Remove an instance from this host, release its allocations and mark it deleted in the cell.
    pub async fn terminate(
        &self,
        uuid: &str,
        network: &crate::network::NetworkRequest,
        request_id: &str,
    ) -> Result<(), String> {
        self.driver.destroy(uuid).await.map_err(|e| e.to_string())?;
        self.deallocate_network(uuid, network).await;
        self.release(uuid).await;
        self.conductor("instance_destroy", json!({ "uuid": uuid }), request_id)
            .await?;
        Ok(())
    }

    /// A power action (`start`, `stop`, `reboot`/`reboot_hard`): the driver acts, then the instance's states
    /// follow what the driver reports; a failure clears the task and records a fault.
    pub async fn power_action(&self, uuid: &str, action: &str, request_id: &str) -> Result<(), String> {
        let r = match action {
            "start" => self.driver.power_on(uuid).await,
            // A guest the hypervisor no longer has is already off: the stop holds (as in Nova).
            "stop" => match self.driver.power_off(uuid).await {
                Err(crate::virt::VirtError::NotFound(_)) => Ok(()),
                other => other,
            },
            "reboot" => self.driver.reboot(uuid, false).await,
            _ => self.driver.reboot(uuid, true).await,
        };
        let info = self.driver.get_info(uuid).await.ok();
        let power = info.as_ref().map(|i| i.state.code()).unwrap_or(0);
        let vm_state = match info.map(|i| i.state) {
            Some(crate::virt::PowerState::Running) => "active",
            Some(crate::virt::PowerState::Shutdown) => "stopped",
            Some(crate::virt::PowerState::Paused) => "paused",
            Some(crate::virt::PowerState::Suspended) => "suspended",
            None if action == "stop" && r.is_ok() => "stopped",
            _ => "error",
        };
        if let Err(e) = &r {
            self.conductor(
                "instance_fault",
                json!({"uuid": uuid, "code": 500, "message": e.to_string(), "details": "", "host": self.cfg.host}),
                request_id,
            )
            .await?;
        }
        self.conductor(
            "instance_update",
            json!({"uuid": uuid, "vm_state": vm_state, "task_state": null, "power_state": power}),
            request_id,
        )
        .await?;
        r.map_err(|e| e.to_string())
    }

    /// Start-up reconciliation (Nova's `init_host`): what the cell says is on this host against what the
    /// driver has. A delete that was under way finishes; a build that never reached the driver ends in
    /// ERROR with a fault and its allocations released; a power action interrupted midway has its task
    /// cleared with the state the driver reports; a guest the driver no longer has is shown stopped.
    pub async fn init_host(&self, node: Option<&str>) -> Result<usize, String> {
        let request_id = tessera_types::new_request_id();
        let v = self
            .conductor("host_instances", json!({"host": self.cfg.host}), &request_id)
            .await?;
        let known: std::collections::HashSet<String> =
            self.driver.list_instances().await.into_iter().collect();
        let mut n = 0;
        for i in v.as_array().cloned().unwrap_or_default() {
            let uuid = i["uuid"].as_str().unwrap_or_default().to_string();
            let vm_state = i["vm_state"].as_str().unwrap_or_default();
            let task = i["task_state"].as_str();
            let has = known.contains(&uuid);
            if task == Some("deleting") {
                let spawn: Option<SpawnSpec> = serde_json::from_value(i["spawn"].clone()).ok();
                let net = spawn.map(|s| s.network).unwrap_or_default();
                self.terminate(&uuid, &net, &request_id).await?;
            } else if vm_state == "building" && !has {
                let spawn: Option<SpawnSpec> = serde_json::from_value(i["spawn"].clone()).ok();
                tracing::warn!(instance = %uuid, "build interrupted by a restart of its host");
                self.conductor(
                    "instance_fault",
                    json!({"uuid": uuid, "code": 500, "host": self.cfg.host, "details": "",
                           "message": "Build of the instance was interrupted by a restart of its compute host."}),
                    &request_id,
                )
                .await?;
                self.conductor(
                    "instance_update",
                    json!({"uuid": uuid, "vm_state": "error", "task_state": null, "power_state": 0}),
                    &request_id,
                )
                .await?;
                if let Some(s) = &spawn {
                    self.deallocate_network(&uuid, &s.network).await;
                    self.release(&uuid).await;
                }
            } else if task.is_some() || (vm_state == "active" && !has) {
                let info = self.driver.get_info(&uuid).await.ok();
                let (state, power) = match info.map(|i| i.state) {
                    Some(crate::virt::PowerState::Running) => ("active", 1),
                    Some(crate::virt::PowerState::Paused) => ("paused", 3),
                    Some(crate::virt::PowerState::Suspended) => ("suspended", 7),
                    Some(_) => ("stopped", 4),
                    None if vm_state == "error" => ("error", 0),
                    None => ("stopped", 0),
                };
                self.conductor(
                    "instance_update",
                    json!({"uuid": uuid, "vm_state": state, "task_state": null, "power_state": power}),
                    &request_id,
                )
                .await?;
            } else {
                continue;
            }
            n += 1;
        }
        if let Some(node) = node {
            n += self.heal_allocations(node, &v, &request_id).await?;
        }
        Ok(n)
    }

    /// Start-up heal of this node's allocations against what the cell says is on the host (Nova's
    /// resource tracker at start): a live instance whose claim is missing gets it again (flavor resources,
    /// its project and user), and allocations of instances the cell knows as deleted are released.
    /// Consumers the cell does not know are left alone: they may be boots the scheduler has just claimed
    /// this host for, whose instance rows are not written yet.
    async fn heal_allocations(
        &self,
        node: &str,
        instances: &serde_json::Value,
        request_id: &str,
    ) -> Result<usize, String> {
        let held: std::collections::HashSet<String> = self
            .placement
            .provider_consumers(node)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let mut n = 0;
        let mut here = std::collections::HashSet::new();
        for i in instances.as_array().into_iter().flatten() {
            let uuid = i["uuid"].as_str().unwrap_or_default();
            here.insert(uuid.to_string());
            let settled = !matches!(i["vm_state"].as_str(), Some("building") | Some("error"))
                && i["task_state"].as_str() != Some("deleting");
            if !settled || held.contains(uuid) || !i["resources"].is_object() {
                continue;
            }
            let allocations = json!({ node: {"resources": i["resources"]} });
            let project = i["project_id"].as_str().unwrap_or_default();
            let user = i["user_id"].as_str().unwrap_or_default();
            match self.placement.claim(uuid, &allocations, project, user).await {
                Ok(true) => {
                    tracing::warn!(instance = %uuid, "healed a missing allocation");
                    n += 1;
                }
                Ok(false) => tracing::warn!(instance = %uuid, "cannot heal its allocation: no room left"),
                Err(e) => tracing::warn!(instance = %uuid, error = %e, "cannot heal its allocation"),
            }
        }
        let strangers: Vec<String> = held.into_iter().filter(|c| !here.contains(c)).collect();
        if strangers.is_empty() {
            return Ok(n);
        }
        let gone = self
            .conductor("instances_deleted", json!({ "uuids": strangers }), request_id)
            .await?;
        for u in gone
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
        {
            tracing::warn!(instance = %u, "released the allocation of a deleted instance");
            self.release(u).await;
            n += 1;
        }
        Ok(n)
    }

    async fn handle(self: Arc<Self>, msg: tessera_bus::Envelope) -> tessera_bus::Reply {
        let err = |kind: &str, m: String| tessera_bus::RemoteError {
            kind: kind.into(),
            message: m,
        };
        let uuid_arg = || {
            msg.args["uuid"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| err("BadArguments", "uuid".into()))
        };
        match msg.method.as_str() {
            "build_and_run_instance" => {
                let build: BuildRequest = serde_json::from_value(msg.args.clone())
                    .map_err(|e| err("BadArguments", e.to_string()))?;
                self.build_and_run(build, &msg.request_id).await.map_err(|e| {
                    tracing::warn!(request_id = %msg.request_id, error = %e, "build failed");
                    err("BuildFailed", e)
                })?;
                Ok(json!({}))
            }
            "terminate_instance" => {
                let uuid = uuid_arg()?;
                let net: crate::network::NetworkRequest =
                    serde_json::from_value(msg.args["network_info"].clone()).unwrap_or_default();
                self.terminate(&uuid, &net, &msg.request_id).await.map_err(|e| {
                    tracing::warn!(request_id = %msg.request_id, error = %e, "terminate failed");
                    err("TerminateFailed", e)
                })?;
                Ok(json!({}))
            }
            "attach_interface" => {
                let uuid = uuid_arg()?;
                let arg = |k: &str| msg.args[k].clone();
                let current = serde_json::from_value(arg("network_info")).unwrap_or_default();
                let requested = serde_json::from_value(arg("requested"))
                    .map_err(|e| err("BadArguments", e.to_string()))?;
                let project = arg("project_id").as_str().unwrap_or_default().to_string();
                let vif = self
                    .attach_interface(&uuid, &project, current, requested, &msg.request_id)
                    .await
                    .map_err(|e| err("InterfaceAttachFailed", e))?;
                Ok(json!({ "vif": vif }))
            }
            "external_instance_event" => {
                let uuid = uuid_arg()?;
                let current = serde_json::from_value(msg.args["network_info"].clone()).unwrap_or_default();
                let events = msg.args["events"].as_array().cloned().unwrap_or_default();
                self.external_events(&uuid, current, &events, &msg.request_id)
                    .await
                    .map_err(|e| err("ExternalEventFailed", e))?;
                Ok(json!({}))
            }
            "detach_interface" => {
                let uuid = uuid_arg()?;
                let current = serde_json::from_value(msg.args["network_info"].clone()).unwrap_or_default();
                let port = msg.args["port_id"].as_str().unwrap_or_default().to_string();
                self.detach_interface(&uuid, current, &port, &msg.request_id)
                    .await
                    .map_err(|e| err("InterfaceDetachFailed", e))?;
                Ok(json!({}))
            }
            "start_instance" | "stop_instance" | "reboot_instance" => {
                let uuid = uuid_arg()?;
                let action = match msg.method.as_str() {
                    "start_instance" => "start",
                    "stop_instance" => "stop",
                    _ if msg.args["hard"] == json!(true) => "reboot_hard",
                    _ => "reboot",
                };
                self.power_action(&uuid, action, &msg.request_id).await.map_err(|e| {
                    tracing::warn!(request_id = %msg.request_id, %action, error = %e, "power action failed");
                    err("InstanceFault", e)
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
            match self.init_host(Some(&node_uuid)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(%host, instances = n, "reconciled instances left mid-operation"),
                Err(e) => tracing::warn!(%host, error = %e, "start-up reconciliation failed"),
            }
            // Work for this host (builds, deletes, power actions) arrives on the cell bus, addressed to the
            // host — taken only after the reconciliation, which must not mistake a new build for an old one.
            match self.bus.listen(TOPIC, &host).await {
                Ok(listener) => {
                    let me = self.clone();
                    let handler: tessera_bus::Handler = Arc::new(move |msg| Box::pin(me.clone().handle(msg)));
                    tokio::spawn(tessera_bus::serve(listener, handler));
                }
                Err(e) => tracing::error!(%host, error = %e, "compute host cannot listen on its bus"),
            }
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

/// Wait (up to `timeout` in all) for the ports' `network-vif-plugged`; a port reported failed, or not in time,
/// fails the build when `fatal` (Nova's `vif_plugging_is_fatal`), else is logged.
pub async fn wait_for_plugs(
    uuid: &str,
    waits: Vec<(String, tokio::sync::oneshot::Receiver<String>)>,
    timeout: Duration,
    fatal: bool,
) -> Result<(), String> {
    if waits.is_empty() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut problem = None;
    for (port, rx) in waits {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(status)) if status == "completed" => {}
            Ok(Ok(status)) => problem = Some(format!("port {port} was reported {status}")),
            Ok(Err(_)) | Err(_) => {
                problem = Some(format!(
                    "timeout waiting for network-vif-plugged of port {port} ({} s)",
                    timeout.as_secs()
                ))
            }
        }
        if problem.is_some() {
            break;
        }
    }
    match problem {
        None => {
            tracing::info!(instance = %uuid, "VIFs plugged");
            Ok(())
        }
        Some(p) if fatal => Err(format!("Virtual Interface creation failed: {p}")),
        Some(p) => {
            tracing::warn!(instance = %uuid, problem = %p, "VIFs not plugged; going on ([DEFAULT] vif_plugging_is_fatal = false)");
            Ok(())
        }
    }
}

#[cfg(test)]
mod vif_wait_tests {
    use super::*;

    type Waits = Vec<(String, tokio::sync::oneshot::Receiver<String>)>;

    fn waits(n: usize) -> (Vec<tokio::sync::oneshot::Sender<String>>, Waits) {
        (0..n)
            .map(|i| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (tx, (format!("port{i}"), rx))
            })
            .unzip()
    }

    #[tokio::test]
    async fn plugged_ports_let_the_build_go_on() {
        let (txs, w) = waits(2);
        for tx in txs {
            tx.send("completed".into()).unwrap();
        }
        assert_eq!(wait_for_plugs("i", w, Duration::from_secs(5), true).await, Ok(()));
    }

    #[tokio::test]
    async fn a_late_port_fails_the_build_only_when_fatal() {
        let (txs, w) = waits(2);
        txs.into_iter().next().unwrap().send("completed".into()).unwrap();
        let e = wait_for_plugs("i", w, Duration::from_millis(50), true)
            .await
            .unwrap_err();
        assert!(
            e.starts_with(
                "Virtual Interface creation failed: timeout waiting for network-vif-plugged of port port1"
            ),
            "{e}"
        );
        let (_txs, w) = waits(1);
        assert_eq!(
            wait_for_plugs("i", w, Duration::from_millis(50), false).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn a_failed_port_fails_the_build_when_fatal() {
        let (txs, w) = waits(1);
        for tx in txs {
            tx.send("failed".into()).unwrap();
        }
        let e = wait_for_plugs("i", w, Duration::from_secs(5), true)
            .await
            .unwrap_err();
        assert!(e.contains("port port0 was reported failed"), "{e}");
    }
}
