//! The Placement service: resource providers (nested trees), inventories, resource classes, traits,
//! aggregates, consumers and their allocations, usages, allocation candidates; the API of
//! openstack-placement up to microversion 1.39 over its own database.

pub mod api;
pub mod candidates;
pub mod error;
pub mod index;
pub mod microversion;
pub mod store;

use error::Result;
use std::sync::Arc;
use tessera_config::Config;
use tessera_db::Db;

/// The standard resource classes (os-resource-classes), in upstream's order.
pub const STANDARD_CLASSES: &[&str] = &[
    "VCPU",
    "MEMORY_MB",
    "DISK_GB",
    "PCI_DEVICE",
    "SRIOV_NET_VF",
    "NUMA_SOCKET",
    "NUMA_CORE",
    "NUMA_THREAD",
    "NUMA_MEMORY_MB",
    "IPV4_ADDRESS",
    "VGPU",
    "VGPU_DISPLAY_HEAD",
    "NET_BW_EGR_KILOBIT_PER_SEC",
    "NET_BW_IGR_KILOBIT_PER_SEC",
    "PCPU",
    "MEM_ENCRYPTION_CONTEXT",
    "FPGA",
    "PGPU",
    "NET_PACKET_RATE_KILOPACKET_PER_SEC",
    "NET_PACKET_RATE_EGR_KILOPACKET_PER_SEC",
    "NET_PACKET_RATE_IGR_KILOPACKET_PER_SEC",
];

/// The standard traits (the names os-traits defines; `data/os-traits.txt`, one per line).
pub fn standard_traits() -> Vec<&'static str> {
    include_str!("../data/os-traits.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Whether `name` is a standard resource class (table `resource_classes`) or standard trait (`traits`).
/// Standard names exist from start-up on and can never be deleted, so checking them needs no query.
pub fn is_standard(table: &str, name: &str) -> bool {
    static TRAITS: std::sync::OnceLock<std::collections::HashSet<&'static str>> = std::sync::OnceLock::new();
    match table {
        "resource_classes" => STANDARD_CLASSES.contains(&name),
        "traits" => TRAITS
            .get_or_init(|| standard_traits().into_iter().collect())
            .contains(name),
        _ => false,
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_allocation_candidates: i64,
    pub conflict_retries: u32,
    pub incomplete_project: String,
    pub incomplete_user: String,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            max_allocation_candidates: cfg.get_int("placement", "max_allocation_candidates"),
            conflict_retries: cfg.get_int("placement", "allocation_conflict_retry_count") as u32,
            incomplete_project: cfg.get_str("placement", "incomplete_consumer_project_id"),
            incomplete_user: cfg.get_str("placement", "incomplete_consumer_user_id"),
        }
    }
}

pub struct PlacementService {
    pub db: Db,
    pub settings: Settings,
    /// The capacity index allocation candidates are computed from.
    pub index: index::IndexHandle,
}

impl PlacementService {
    /// Open the service over a migrated database, adding standard classes and traits it does not have yet.
    pub async fn new(db: Db, settings: Settings) -> Result<Arc<Self>> {
        let c = store::ensure_names(&db, "resource_classes", STANDARD_CLASSES, true).await?;
        let t = store::ensure_names(&db, "traits", &standard_traits(), true).await?;
        if c + t > 0 {
            tracing::info!(
                classes = c,
                traits = t,
                "standard resource classes and traits synced"
            );
        }
        let svc = Arc::new(Self {
            db,
            settings,
            index: index::IndexHandle::default(),
        });
        svc.index.fresh(&svc.db).await?;
        Ok(svc)
    }
}

/// Custom names: `CUSTOM_` then upper-case letters, digits and underscores.
pub fn is_custom_name(name: &str) -> bool {
    name.len() <= 255
        && name.len() > "CUSTOM_".len()
        && name.starts_with("CUSTOM_")
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}
