//! The Compute roles of `tessera serve` as separate processes, talking over a shared bus (RabbitMQ), the way
//! Nova's services are deployed:
//!
//! - `api`: the Compute API over the API database; boots are cast to the super conductor on
//!   `[DEFAULT] transport_url`.
//! - `conductor`: with `[api_database] connection` in the configuration file, the **super conductor** (and the
//!   scheduler inside it) on `[DEFAULT] transport_url`, over the API database and every cell's; without it,
//!   a **cell conductor** for the cell database `[database] connection` on that cell's bus
//!   (`[DEFAULT] transport_url`) — Nova's split between a superconductor and cell conductors.
//! - `compute`: a compute host (`[DEFAULT] host`) on its cell's bus (`[DEFAULT] transport_url`); it holds no
//!   database credentials, only the bus and the `[placement]` credentials its resource tracker uses.

use crate::{aio, Shutdown, StartError};
use std::sync::Arc;
use std::time::Duration;
use tessera_compute::placement_client::{Credentials, PlacementClient};
use tessera_config::Config;

/// A Keystone session from a group of keystoneauth options (`auth_url`, `username`, `password`,
/// `project_name`, domains, `region_name`, `valid_interfaces`); None when `auth_url` is empty.
fn session(cfg: &Config, group: &str, role: &str) -> Result<Option<Arc<PlacementClient>>, StartError> {
    if cfg.get_str(group, "auth_url").is_empty() {
        return Ok(None);
    }
    let need = |name: &str| {
        let v = cfg.get_str(group, name);
        if v.is_empty() {
            Err(StartError::Usage(format!(
                "role {role} needs [{group}] {name} (with auth_url, username and password)"
            )))
        } else {
            Ok(v)
        }
    };
    Ok(Some(Arc::new(PlacementClient::new(Credentials {
        auth_url: need("auth_url")?,
        username: need("username")?,
        password: need("password")?,
        project_name: cfg.get_str(group, "project_name"),
        user_domain_name: cfg.get_str(group, "user_domain_name"),
        project_domain_name: cfg.get_str(group, "project_domain_name"),
        region_name: cfg.get_str(group, "region_name"),
        valid_interfaces: cfg.get_list(group, "valid_interfaces"),
    }))))
}

/// Nova's `[placement]` keystoneauth options: how a role outside all-in-one reaches placement (and the
/// catalog).
pub fn placement_client(cfg: &Config, role: &str) -> Result<Arc<PlacementClient>, StartError> {
    session(cfg, "placement", role)?.ok_or_else(|| {
        StartError::Usage(format!(
            "role {role} needs [placement] auth_url (with username and password) to reach placement"
        ))
    })
}

/// Nova's `[neutron]` options: the Networking service's client (the `[placement]` session when `[neutron]
/// auth_url` is empty).
pub fn network_client(
    cfg: &Config,
    role: &str,
) -> Result<Arc<tessera_compute::network::NetworkClient>, StartError> {
    let s = match session(cfg, "neutron", role)? {
        Some(s) => s,
        None => placement_client(cfg, role)?,
    };
    Ok(Arc::new(tessera_compute::network::NetworkClient::new(s)))
}

/// Role `network-agent`: the host's data plane (bridges, taps, DHCP, routers, security groups), driven by the
/// Networking service it reaches with the `[neutron]` credentials (else `[placement]`'s), which must carry
/// the admin or service role. It holds no database credentials.
pub async fn network_agent(cfg: &Config, shutdown: &Shutdown) -> Result<String, StartError> {
    let session = match session(cfg, "neutron", "network-agent")? {
        Some(s) => s,
        None => placement_client(cfg, "network-agent")?,
    };
    let host = aio::host_name(cfg);
    let caps = crate::roles::start_network_agent(cfg, vec![host.clone()], session, shutdown).await;
    Ok(if caps.data_plane {
        format!("network agent of {host} (data plane on)")
    } else {
        format!(
            "network agent of {host} (data plane OFF: {})",
            caps.notes.join("; ")
        )
    })
}

/// neutron.conf's `[nova]` options: the session the Networking service sends server events with (None when
/// `[nova] auth_url` is empty).
pub fn nova_session(cfg: &Config) -> Result<Option<Arc<PlacementClient>>, StartError> {
    session(cfg, "nova", "network")
}

/// Role `conductor`: the super conductor when this configuration names an API database, else a cell
/// conductor. Returns what it started, for the log line.
pub async fn conductor(
    cfg: &Config,
    buses: &Arc<tessera_bus::Buses>,
    shutdown: &Shutdown,
) -> Result<String, StartError> {
    if cfg.is_set("api_database", "connection") {
        let started = tessera_types::now_epoch_micros();
        let sc =
            aio::start_super_conductor(cfg, buses, placement_client(cfg, "conductor")?, shutdown).await?;
        aio::spawn_periodic_discovery(cfg, shutdown);
        aio::recover_boots(&sc, started).await;
        return Ok("super conductor (with the scheduler)".into());
    }
    let bus = buses
        .get(&cfg.get_str("DEFAULT", "transport_url"))
        .map_err(|e| StartError::Failed(format!("[DEFAULT] transport_url: {e}")))?;
    let db = tessera_compute::celldb::open(&cfg.get_str("database", "connection"), 8, false).await?;
    // Reschedules claim alternates in placement when credentials are there; without them a failed build
    // ends in ERROR on its first host.
    let placement = if cfg.get_str("placement", "auth_url").is_empty() {
        tracing::warn!("no [placement] credentials: failed builds are not rescheduled to alternates");
        None
    } else {
        Some(placement_client(cfg, "conductor")?)
    };
    tessera_compute::conductor::spawn(
        bus,
        db,
        placement,
        aio::host_name(cfg),
        Duration::from_secs(cfg.get_int("DEFAULT", "report_interval").max(1) as u64),
        shutdown.subscribe(),
    )
    .await
    .map_err(|e| StartError::Failed(format!("cell conductor: {e}")))?;
    Ok("cell conductor".into())
}

/// Role `compute`: one compute host with the configured virt driver, registered through its cell
/// conductor. Waits (bounded) for the first registration so the caller can say it is ready.
pub async fn compute(
    cfg: &Config,
    buses: &Arc<tessera_bus::Buses>,
    shutdown: &Shutdown,
) -> Result<String, StartError> {
    let bus = buses
        .get(&cfg.get_str("DEFAULT", "transport_url"))
        .map_err(|e| StartError::Failed(format!("[DEFAULT] transport_url: {e}")))?;
    let host = aio::host_name(cfg);
    let placement = placement_client(cfg, "compute")?;
    let network = network_client(cfg, "compute")?;
    let (agent, ready) = aio::compute_host(cfg, &host, bus, placement, network, shutdown);
    match tokio::time::timeout(Duration::from_secs(120), ready).await {
        Ok(Ok(_)) => {}
        _ => {
            return Err(StartError::Failed(format!(
                "compute host {host} could not register within 120 s (is the cell conductor running on the same transport_url, and placement reachable?)"
            )))
        }
    }
    drop(agent);
    Ok(format!("compute host {host}"))
}
