//! The virt driver interface a compute agent drives, narrow on purpose: what the boot, delete and power
//! actions need and what the resource tracker reports. Drivers: [`fake`] (state in memory, for tests,
//! demos and benchmarks) and, later, `qemu`. An operation a driver cannot do is [`VirtError::Unsupported`],
//! which the API turns into a clear error — never a pretended success.

pub mod fake;

use async_trait::async_trait;

/// Nova's power states (the integers the API shows as `OS-EXT-STS:power_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    NoState = 0,
    Running = 1,
    Paused = 3,
    Shutdown = 4,
    Crashed = 6,
    Suspended = 7,
}

impl PowerState {
    pub fn code(self) -> i64 {
        self as i64
    }
    pub fn name(self) -> &'static str {
        match self {
            PowerState::NoState => "pending",
            PowerState::Running => "running",
            PowerState::Paused => "paused",
            PowerState::Shutdown => "shutdown",
            PowerState::Crashed => "crashed",
            PowerState::Suspended => "suspended",
        }
    }
}

/// What to build (the parts of an instance a driver needs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpawnSpec {
    pub uuid: String,
    /// `instance-%08x`.
    pub name: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub root_gb: i64,
    pub ephemeral_gb: i64,
    pub image_id: Option<String>,
    /// The networks asked for (and, once allocated, the VIFs to plug).
    #[serde(default)]
    pub network: crate::network::NetworkRequest,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceInfo {
    pub state: PowerState,
    pub vcpus: i64,
    pub memory_mb: i64,
}

/// The host as the resource tracker reports it (totals, and what instances use).
#[derive(Debug, Clone, PartialEq)]
pub struct HostResources {
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
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VirtError {
    #[error("Instance {0} could not be found.")]
    NotFound(String),
    #[error("Instance {uuid} in power state {state} cannot {op}.")]
    InvalidState {
        uuid: String,
        op: &'static str,
        state: &'static str,
    },
    #[error("Instance {0} already exists on this host.")]
    Exists(String),
    #[error("Build of instance {uuid} failed: {reason}")]
    SpawnFailed { uuid: String, reason: String },
    #[error("The {driver} driver does not support {op}.")]
    Unsupported { driver: &'static str, op: &'static str },
}

#[async_trait]
pub trait VirtDriver: Send + Sync + 'static {
    /// `fake`, `qemu`… (also the hypervisor type shown by the API).
    fn name(&self) -> &'static str;
    async fn spawn(&self, spec: &SpawnSpec) -> Result<(), VirtError>;
    /// Remove the instance; destroying one the host does not have is not an error (delete is idempotent).
    async fn destroy(&self, uuid: &str) -> Result<(), VirtError>;
    async fn reboot(&self, uuid: &str, hard: bool) -> Result<(), VirtError>;
    async fn power_off(&self, uuid: &str) -> Result<(), VirtError>;
    async fn power_on(&self, uuid: &str) -> Result<(), VirtError>;
    async fn pause(&self, uuid: &str) -> Result<(), VirtError>;
    async fn unpause(&self, uuid: &str) -> Result<(), VirtError>;
    async fn suspend(&self, uuid: &str) -> Result<(), VirtError>;
    async fn resume(&self, uuid: &str) -> Result<(), VirtError>;
    async fn get_info(&self, uuid: &str) -> Result<InstanceInfo, VirtError>;
    async fn console_output(&self, uuid: &str) -> Result<String, VirtError>;
    async fn available_resources(&self) -> HostResources;
    /// Uuids of the instances on this host.
    async fn list_instances(&self) -> Vec<String>;
    /// Plug one more VIF into a guest (os-interface attach).
    async fn attach_interface(&self, _uuid: &str, _vif: &crate::network::Vif) -> Result<(), VirtError> {
        Err(VirtError::Unsupported {
            driver: self.name(),
            op: "attach an interface",
        })
    }
    /// Unplug a VIF from a guest.
    async fn detach_interface(&self, _uuid: &str, _vif: &crate::network::Vif) -> Result<(), VirtError> {
        Err(VirtError::Unsupported {
            driver: self.name(),
            op: "detach an interface",
        })
    }
    /// The fake driver behind this one, for tests that inject failures.
    fn as_fake(&self) -> Option<&fake::FakeDriver> {
        None
    }
}
