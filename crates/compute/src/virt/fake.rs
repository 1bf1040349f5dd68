//! The `fake` driver: no guests, but real per-instance state kept in this host's memory, host resources
//! from configuration, an optional spawn delay, and spawn failures on demand (for reschedule tests).

use super::{HostResources, InstanceInfo, PowerState, SpawnSpec, VirtDriver, VirtError};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The compute node's name (the host name).
    pub hostname: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub disk_gb: i64,
    pub spawn_delay: Duration,
    /// Every spawn fails while this is set (with this reason).
    pub fail_spawns: Option<String>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            hostname: "fake-host".into(),
            vcpus: 16,
            memory_mb: 32768,
            disk_gb: 1024,
            spawn_delay: Duration::ZERO,
            fail_spawns: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Guest {
    spec: SpawnSpec,
    state: PowerState,
    console: Vec<String>,
}

pub struct FakeDriver {
    cfg: FakeConfig,
    guests: Mutex<BTreeMap<String, Guest>>,
    /// Instances whose next spawn fails (consumed by the attempt).
    fail_once: Mutex<BTreeSet<String>>,
    /// Every spawn fails while set (starts as `fail_spawns`).
    failing: Mutex<Option<String>>,
}

impl FakeDriver {
    pub fn new(cfg: FakeConfig) -> Self {
        FakeDriver {
            failing: Mutex::new(cfg.fail_spawns.clone()),
            cfg,
            guests: Mutex::new(BTreeMap::new()),
            fail_once: Mutex::new(BTreeSet::new()),
        }
    }

    /// Make every spawn on this host fail with `reason` (None: spawns work again).
    pub fn set_failing(&self, reason: Option<&str>) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = reason.map(str::to_string);
    }

    /// Make the next spawn of `uuid` on this host fail.
    pub fn fail_next_spawn_of(&self, uuid: &str) {
        if let Ok(mut f) = self.fail_once.lock() {
            f.insert(uuid.to_string());
        }
    }

    fn with_guest<T>(
        &self,
        uuid: &str,
        f: impl FnOnce(&mut Guest) -> Result<T, VirtError>,
    ) -> Result<T, VirtError> {
        let mut g = self.guests.lock().unwrap_or_else(|p| p.into_inner());
        let guest = g
            .get_mut(uuid)
            .ok_or_else(|| VirtError::NotFound(uuid.to_string()))?;
        f(guest)
    }

    /// Move from one of `from` to `to`, logging the transition on the console.
    fn transition(
        &self,
        uuid: &str,
        op: &'static str,
        from: &[PowerState],
        to: PowerState,
    ) -> Result<(), VirtError> {
        self.with_guest(uuid, |g| {
            if !from.contains(&g.state) {
                return Err(VirtError::InvalidState {
                    uuid: uuid.to_string(),
                    op,
                    state: g.state.name(),
                });
            }
            g.state = to;
            g.console.push(format!("fake: {op}: now {}", to.name()));
            Ok(())
        })
    }
}

#[async_trait]
impl VirtDriver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn spawn(&self, spec: &SpawnSpec) -> Result<(), VirtError> {
        if !self.cfg.spawn_delay.is_zero() {
            tokio::time::sleep(self.cfg.spawn_delay).await;
        }
        let once = self
            .fail_once
            .lock()
            .map(|mut f| f.remove(&spec.uuid))
            .unwrap_or(false);
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(reason) = failing.or(once.then(|| "injected failure".to_string())) {
            return Err(VirtError::SpawnFailed {
                uuid: spec.uuid.clone(),
                reason,
            });
        }
        let mut g = self.guests.lock().unwrap_or_else(|p| p.into_inner());
        if g.contains_key(&spec.uuid) {
            return Err(VirtError::Exists(spec.uuid.clone()));
        }
        g.insert(
            spec.uuid.clone(),
            Guest {
                spec: spec.clone(),
                state: PowerState::Running,
                console: vec![format!("fake: {} booted on {}", spec.name, self.cfg.hostname)],
            },
        );
        Ok(())
    }

    async fn attach_interface(&self, uuid: &str, _vif: &crate::network::Vif) -> Result<(), VirtError> {
        // The fake guest has no devices: attaching needs only the guest.
        self.get_info(uuid).await.map(|_| ())
    }

    async fn detach_interface(&self, uuid: &str, _vif: &crate::network::Vif) -> Result<(), VirtError> {
        self.get_info(uuid).await.map(|_| ())
    }

    async fn destroy(&self, uuid: &str) -> Result<(), VirtError> {
        self.guests.lock().unwrap_or_else(|p| p.into_inner()).remove(uuid);
        Ok(())
    }

    async fn reboot(&self, uuid: &str, hard: bool) -> Result<(), VirtError> {
        use PowerState::*;
        let from: &[PowerState] = if hard {
            &[Running, Paused, Shutdown, Crashed, Suspended]
        } else {
            &[Running]
        };
        self.transition(uuid, if hard { "reboot (hard)" } else { "reboot" }, from, Running)
    }

    async fn power_off(&self, uuid: &str) -> Result<(), VirtError> {
        use PowerState::*;
        self.transition(
            uuid,
            "power off",
            &[Running, Paused, Suspended, Crashed],
            Shutdown,
        )
    }

    async fn power_on(&self, uuid: &str) -> Result<(), VirtError> {
        use PowerState::*;
        self.transition(uuid, "power on", &[Shutdown, Crashed], Running)
    }

    async fn pause(&self, uuid: &str) -> Result<(), VirtError> {
        self.transition(uuid, "pause", &[PowerState::Running], PowerState::Paused)
    }

    async fn unpause(&self, uuid: &str) -> Result<(), VirtError> {
        self.transition(uuid, "unpause", &[PowerState::Paused], PowerState::Running)
    }

    async fn suspend(&self, uuid: &str) -> Result<(), VirtError> {
        self.transition(uuid, "suspend", &[PowerState::Running], PowerState::Suspended)
    }

    async fn resume(&self, uuid: &str) -> Result<(), VirtError> {
        self.transition(uuid, "resume", &[PowerState::Suspended], PowerState::Running)
    }

    async fn get_info(&self, uuid: &str) -> Result<InstanceInfo, VirtError> {
        self.with_guest(uuid, |g| {
            Ok(InstanceInfo {
                state: g.state,
                vcpus: g.spec.vcpus,
                memory_mb: g.spec.memory_mb,
            })
        })
    }

    async fn console_output(&self, uuid: &str) -> Result<String, VirtError> {
        self.with_guest(uuid, |g| Ok(g.console.join("\n") + "\n"))
    }

    async fn available_resources(&self) -> HostResources {
        let g = self.guests.lock().unwrap_or_else(|p| p.into_inner());
        let (mut vcpus, mut mem, mut disk) = (0, 0, 0);
        for guest in g.values() {
            vcpus += guest.spec.vcpus;
            mem += guest.spec.memory_mb;
            disk += guest.spec.root_gb + guest.spec.ephemeral_gb;
        }
        HostResources {
            hypervisor_hostname: self.cfg.hostname.clone(),
            hypervisor_type: "fake".into(),
            hypervisor_version: 1000,
            vcpus: self.cfg.vcpus,
            memory_mb: self.cfg.memory_mb,
            local_gb: self.cfg.disk_gb,
            vcpus_used: vcpus,
            memory_mb_used: mem,
            local_gb_used: disk,
            running_vms: g.len() as i64,
        }
    }

    fn as_fake(&self) -> Option<&FakeDriver> {
        Some(self)
    }

    async fn list_instances(&self) -> Vec<String> {
        self.guests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(uuid: &str) -> SpawnSpec {
        SpawnSpec {
            uuid: uuid.into(),
            name: "instance-00000001".into(),
            vcpus: 2,
            memory_mb: 512,
            root_gb: 1,
            ephemeral_gb: 0,
            image_id: None,
            network: Default::default(),
        }
    }

    #[tokio::test]
    async fn power_actions_follow_the_state_machine() {
        let d = FakeDriver::new(FakeConfig::default());
        d.spawn(&spec("a")).await.unwrap();
        assert_eq!(d.spawn(&spec("a")).await, Err(VirtError::Exists("a".into())));
        assert_eq!(d.get_info("a").await.unwrap().state, PowerState::Running);
        assert!(matches!(
            d.power_on("a").await,
            Err(VirtError::InvalidState { .. })
        ));
        d.pause("a").await.unwrap();
        assert!(matches!(
            d.suspend("a").await,
            Err(VirtError::InvalidState { .. })
        ));
        d.unpause("a").await.unwrap();
        d.suspend("a").await.unwrap();
        d.resume("a").await.unwrap();
        d.power_off("a").await.unwrap();
        assert!(matches!(
            d.reboot("a", false).await,
            Err(VirtError::InvalidState { .. })
        ));
        d.reboot("a", true).await.unwrap();
        assert_eq!(d.get_info("a").await.unwrap().state, PowerState::Running);
        assert!(d
            .console_output("a")
            .await
            .unwrap()
            .contains("power off: now shutdown"));
        let r = d.available_resources().await;
        assert_eq!(
            (r.vcpus_used, r.memory_mb_used, r.local_gb_used, r.running_vms),
            (2, 512, 1, 1)
        );
        d.destroy("a").await.unwrap();
        d.destroy("a").await.unwrap();
        assert_eq!(d.get_info("a").await, Err(VirtError::NotFound("a".into())));
        assert!(d.list_instances().await.is_empty());
    }

    #[tokio::test]
    async fn spawns_fail_on_demand() {
        let d = FakeDriver::new(FakeConfig::default());
        d.fail_next_spawn_of("b");
        assert!(matches!(
            d.spawn(&spec("b")).await,
            Err(VirtError::SpawnFailed { .. })
        ));
        d.spawn(&spec("b")).await.unwrap();
        let broken = FakeDriver::new(FakeConfig {
            fail_spawns: Some("no luck".into()),
            ..Default::default()
        });
        assert_eq!(
            broken.spawn(&spec("c")).await,
            Err(VirtError::SpawnFailed {
                uuid: "c".into(),
                reason: "no luck".into()
            })
        );
        assert!(broken.list_instances().await.is_empty());
    }
}
