//! The Networking service: Neutron's v2.0 core API (networks, subnets, ports, security groups) over its own
//! database, with IPAM that hands out each address once per subnet even under concurrent requests.

pub mod agent;
pub mod api;
pub mod error;
pub mod ipam;
pub mod store;

use std::sync::Arc;
use tessera_config::Config;
use tessera_db::Db;

#[derive(Debug, Clone)]
pub struct Settings {
    pub global_physnet_mtu: i64,
    /// The MAC prefix bytes kept from `base_mac` (those not 00), e.g. `fa:16:3e`.
    pub base_mac: [u8; 6],
    pub max_fixed_ips_per_port: usize,
    /// 0: no cap.
    pub pagination_max_limit: usize,
    /// Default quotas: (resource, limit; -1 unlimited).
    pub quotas: Vec<(&'static str, i64)>,
    pub auto_allocate_cidr: String,
    pub auto_allocate_prefixlen: u8,
    /// Seconds without a heartbeat after which an agent is down (`[network] agent_down_time`).
    pub agent_down_time: i64,
}

/// The quota resources, as Neutron names them, with their `[quotas]` options.
pub const QUOTA_RESOURCES: &[(&str, &str)] = &[
    ("network", "quota_network"),
    ("subnet", "quota_subnet"),
    ("port", "quota_port"),
    ("router", "quota_router"),
    ("floatingip", "quota_floatingip"),
    ("security_group", "quota_security_group"),
    ("security_group_rule", "quota_security_group_rule"),
];

impl Settings {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            global_physnet_mtu: cfg.get_int("network", "global_physnet_mtu"),
            base_mac: parse_mac(&cfg.get_str("network", "base_mac")).unwrap_or([0xfa, 0x16, 0x3e, 0, 0, 0]),
            max_fixed_ips_per_port: cfg.get_int("network", "max_fixed_ips_per_port").max(1) as usize,
            pagination_max_limit: cfg.get_int("network", "pagination_max_limit").max(0) as usize,
            quotas: QUOTA_RESOURCES
                .iter()
                .map(|(r, opt)| (*r, cfg.get_int("quotas", opt)))
                .collect(),
            auto_allocate_cidr: cfg.get_str("network", "auto_allocate_cidr"),
            auto_allocate_prefixlen: cfg.get_int("network", "auto_allocate_prefixlen").clamp(8, 30) as u8,
            agent_down_time: cfg.get_int("network", "agent_down_time").max(1),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            global_physnet_mtu: 1500,
            base_mac: [0xfa, 0x16, 0x3e, 0, 0, 0],
            max_fixed_ips_per_port: 5,
            pagination_max_limit: 0,
            quotas: QUOTA_RESOURCES
                .iter()
                .zip([100, 100, 500, 10, 50, 10, 100])
                .map(|((r, _), v)| (*r, v))
                .collect(),
            auto_allocate_cidr: "10.128.0.0/12".into(),
            auto_allocate_prefixlen: 26,
            agent_down_time: 75,
        }
    }
}

/// Parse `aa:bb:cc:dd:ee:ff` (also with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        out[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Tells the Compute service about changes to its servers' ports (Neutron's Nova notifier: events for
/// `os-server-external-events`).
#[async_trait::async_trait]
pub trait ComputeNotifier: Send + Sync {
    async fn notify(&self, events: Vec<serde_json::Value>);
}

pub struct NetworkService {
    pub db: Db,
    pub settings: Settings,
    notifier: std::sync::OnceLock<Arc<dyn ComputeNotifier>>,
    /// Counts committed changes; agents long-poll on it for the next thing to wire up.
    changes: tokio::sync::watch::Sender<u64>,
}

impl NetworkService {
    pub fn new(db: Db, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            db,
            settings,
            notifier: std::sync::OnceLock::new(),
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Where events about servers' ports go (none: nobody is told).
    pub fn set_notifier(&self, n: Arc<dyn ComputeNotifier>) {
        let _ = self.notifier.set(n);
    }

    /// Tell the Compute service that `port` changed (`network-changed`) or went (`network-vif-deleted`), if
    /// it belongs to a server; sent after the change is committed, without waiting for the answer.
    pub(crate) fn notify_port(&self, port: &store::Doc, name: &str) {
        let (owner, device) = (store::text(port, "device_owner"), store::text(port, "device_id"));
        if !owner.starts_with("compute:") || device.is_empty() {
            return;
        }
        let Some(n) = self.notifier.get().cloned() else {
            return;
        };
        let event = serde_json::json!({"name": name, "server_uuid": device, "tag": store::text(port, "id"),
                                       "status": "completed"});
        tokio::spawn(async move { n.notify(vec![event]).await });
    }

    /// Something changed: agents waiting for work look again.
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    pub(crate) fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A random MAC under `base_mac` (its non-zero leading bytes kept).
    pub fn new_mac(&self) -> String {
        let mut m: [u8; 6] = rand::random();
        let base = self.settings.base_mac;
        for i in 0..6 {
            if base[i..].iter().all(|b| *b == 0) {
                break;
            }
            m[i] = base[i];
        }
        // Unicast, locally administered as the base says.
        m[0] &= 0xfe;
        format_mac(&m)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn macs_keep_the_base() {
        assert_eq!(
            parse_mac("FA:16:3E:00:00:01").unwrap(),
            [0xfa, 0x16, 0x3e, 0, 0, 1]
        );
        assert!(parse_mac("fa:16:3e:00:00").is_none());
        let settings = Settings::default();
        let m = settings.base_mac;
        assert_eq!(format_mac(&m), "fa:16:3e:00:00:00");
    }
}
