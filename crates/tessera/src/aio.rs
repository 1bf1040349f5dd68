//! `tessera all-in-one`: every available role in one process, all state in one directory, bootstrapped on
//! first start, with `clouds.yaml` and `openrc` written for the `openstack` CLI.

use crate::roles::{self, ComputeApiRole, IdentityRole, ImageRole, NetworkRole, PlacementRole};
use crate::{io_err, Shutdown, StartError};
use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tessera_config::Config;
use tessera_identity::{BootstrapParams, CatalogService};

/// A running all-in-one cloud.
pub struct AllInOne {
    pub state_dir: PathBuf,
    /// cell0 and the cells, in id order.
    pub cells: Vec<tessera_compute::cells::CellMapping>,
    /// The fake-driver compute hosts, `cellN-computeM`.
    pub computes: Vec<Arc<tessera_compute::agent::ComputeAgent>>,
    /// What the network agent found this machine lets it do.
    pub network_agent: tessera_network::agent::Capabilities,
    /// This process's buses (one per cell transport URL).
    pub buses: Arc<tessera_bus::Buses>,
    /// The placement client compute hosts and the Compute API use.
    pub placement_client: Arc<tessera_compute::placement_client::PlacementClient>,
    pub identity: IdentityRole,
    pub image: ImageRole,
    pub placement: PlacementRole,
    pub network: NetworkRole,
    pub compute: ComputeApiRole,
    pub admin_username: String,
    pub admin_password: String,
    pub project_name: String,
    pub region: String,
    pub config: Config,
}

impl AllInOne {
    pub fn auth_url(&self) -> String {
        format!("{}/v3", self.identity.base_url)
    }
}

/// Absolute form of a path, without requiring it to exist.
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Work out the config all-in-one runs with: the file given, else `DIR/tessera.conf` if present, else
/// defaults; `state_path` always points at DIR.
pub fn prepare_config(config_file: Option<&Path>, state_dir: Option<&Path>) -> Result<Config, StartError> {
    let mut cfg = match config_file {
        Some(f) => Config::load(f)?,
        None => Config::defaults(),
    };
    let dir = match state_dir {
        Some(d) => absolute(d),
        None => absolute(Path::new(&cfg.get_str("DEFAULT", "state_path"))),
    };
    if config_file.is_none() {
        let saved = dir.join("tessera.conf");
        if saved.exists() {
            cfg = Config::load(&saved)?;
        }
    }
    cfg.set("DEFAULT", "state_path", dir.display().to_string())
        .map_err(StartError::Usage)?;
    Ok(cfg)
}

fn admin_password(cfg: &Config, dir: &Path) -> Result<String, StartError> {
    let configured = cfg.get_str("bootstrap", "admin_password");
    if !configured.is_empty() {
        return Ok(configured);
    }
    let file = dir.join("admin-password");
    if let Ok(p) = std::fs::read_to_string(&file) {
        if !p.trim().is_empty() {
            return Ok(p.trim().to_string());
        }
    }
    let bytes: [u8; 18] = rand::random();
    let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    roles::write_private(&file, &format!("{p}\n"))?;
    Ok(p)
}

/// Start everything. `shutdown` stops it.
pub async fn start(cfg: Config, shutdown: &Shutdown) -> Result<AllInOne, StartError> {
    let dir = PathBuf::from(cfg.get_str("DEFAULT", "state_path"));
    std::fs::create_dir_all(&dir).map_err(io_err("cannot create state directory", &dir))?;
    roles::write_private(&dir.join("tessera.conf"), &cfg.to_ini())?;
    let password = admin_password(&cfg, &dir)?;
    let db = roles::open_identity_db(&cfg, true).await?;
    tessera_identity::fernet::setup(&roles::key_repository(&cfg))?;
    let identity = roles::start_identity(&cfg, db, shutdown).await?;
    let auth_url = format!("{}/v3", identity.base_url);
    let image_db = roles::open_image_db(&cfg, true).await?;
    let image = roles::start_image(&cfg, image_db, &identity.identity, &auth_url, shutdown).await?;
    let placement_db = roles::open_placement_db(&cfg, true).await?;
    let placement =
        roles::start_placement(&cfg, placement_db, &identity.identity, &auth_url, shutdown).await?;
    let network_db = roles::open_network_db(&cfg, true).await?;
    let network = roles::start_network(&cfg, network_db, &identity.identity, &auth_url, shutdown).await?;
    let cells = ensure_cells(&cfg).await?;
    let creds = tessera_compute::placement_client::Credentials {
        auth_url: auth_url.clone(),
        username: cfg.get_str("bootstrap", "admin_username"),
        password: password.clone(),
        project_name: cfg.get_str("bootstrap", "project_name"),
        user_domain_name: "Default".into(),
        project_domain_name: "Default".into(),
        region_name: cfg.get_str("bootstrap", "region_id"),
        valid_interfaces: vec!["internal".into(), "public".into()],
    };
    let placement_client = Arc::new(tessera_compute::placement_client::PlacementClient::new(creds));
    let api_db = tessera_db::Db::connect(&cfg.get_str("api_database", "connection"), 8).await?;
    tessera_compute::flavors::ensure_defaults(&api_db).await?;
    let compute = roles::start_compute_api(
        &cfg,
        api_db,
        &identity.identity,
        &auth_url,
        Some(placement_client.clone()),
        shutdown,
    )
    .await?;
    let compute_url = format!("{}/v2.1", compute.base_url);
    let params = BootstrapParams {
        admin_username: cfg.get_str("bootstrap", "admin_username"),
        admin_password: password.clone(),
        project_name: cfg.get_str("bootstrap", "project_name"),
        region_id: cfg.get_str("bootstrap", "region_id"),
        identity_endpoints: ["public", "internal", "admin"]
            .iter()
            .map(|i| (i.to_string(), auth_url.clone()))
            .collect(),
        services: [
            ("image", "glance", &image.base_url),
            ("placement", "placement", &placement.base_url),
            ("network", "neutron", &network.base_url),
            ("compute", "nova", &compute_url),
        ]
        .into_iter()
        .map(|(t, n, url)| CatalogService {
            service_type: t.into(),
            name: n.into(),
            endpoints: ["public", "internal", "admin"]
                .iter()
                .map(|i| (i.to_string(), url.clone()))
                .collect(),
        })
        .collect(),
    };
    identity.identity.bootstrap(&params).await?;
    ensure_public_network(&cfg, &placement_client).await?;
    network.service.set_notifier(Arc::new(roles::ComputeEvents {
        session: placement_client.clone(),
    }));
    let network_client = Arc::new(tessera_compute::network::NetworkClient::new(
        placement_client.clone(),
    ));
    let buses = Arc::new(tessera_bus::Buses::new());
    let started = tessera_types::now_epoch_micros();
    let computes = start_cells(&cfg, &cells, &buses, placement_client.clone(), shutdown).await?;
    spawn_periodic_discovery(&cfg, shutdown);
    // The network agent plugs the ports of every compute host this machine plays, and hosts DHCP and routers.
    let mut agent_hosts = vec![host_name(&cfg)];
    agent_hosts.extend(computes.iter().map(|c| c.cfg.host.clone()));
    let network_agent =
        roles::start_network_agent(&cfg, agent_hosts, placement_client.clone(), shutdown).await;
    let super_conductor = start_super_conductor(&cfg, &buses, placement_client.clone(), shutdown).await?;
    compute.api.wire_boot(tessera_compute::api::servers::BootWiring {
        api_bus: buses
            .get(&cfg.get_str("DEFAULT", "transport_url"))
            .map_err(|e| StartError::Failed(format!("API bus: {e}")))?,
        buses: buses.clone(),
        network: Some(network_client.clone()),
    });
    recover_boots(&super_conductor, started).await;
    let aio = AllInOne {
        state_dir: dir.clone(),
        cells,
        computes,
        buses,
        placement_client,
        identity,
        image,
        placement,
        network,
        network_agent,
        compute,
        admin_username: params.admin_username,
        admin_password: password,
        project_name: params.project_name,
        region: params.region_id,
        config: cfg,
    };
    write_client_files(&aio)?;
    Ok(aio)
}

/// The external network `public` (`[all_in_one] public_network_cidr`), made once through the Networking
/// API: the default for floating IPs and for the auto-allocated topology behind `networks: "auto"`.
async fn ensure_public_network(
    cfg: &Config,
    session: &tessera_compute::placement_client::PlacementClient,
) -> Result<(), StartError> {
    use reqwest::Method;
    let cidr = cfg.get_str("all_in_one", "public_network_cidr");
    if cidr.is_empty() {
        return Ok(());
    }
    let fail = |what: &str, e: String| StartError::Failed(format!("public network: {what}: {e}"));
    let call = |m: Method, path: &'static str, body: Option<serde_json::Value>| async move {
        session
            .service_call("network", m, path, body.as_ref())
            .await
            .map_err(|e| e.to_string())
    };
    let (_, v) = call(
        Method::GET,
        "/v2.0/networks?router:external=True&name=public",
        None,
    )
    .await
    .map_err(|e| fail("list", e))?;
    if v["networks"].as_array().is_some_and(|a| !a.is_empty()) {
        return Ok(());
    }
    let (s, net) = call(
        Method::POST,
        "/v2.0/networks",
        Some(
            serde_json::json!({"network": {"name": "public", "router:external": true, "is_default": true,
            "provider:network_type": "flat", "provider:physical_network": "public"}}),
        ),
    )
    .await
    .map_err(|e| fail("create", e))?;
    if s.as_u16() != 201 {
        return Err(fail("create", net.to_string()));
    }
    let (s, sub) = call(
        Method::POST,
        "/v2.0/subnets",
        Some(
            serde_json::json!({"subnet": {"name": "public-subnet", "network_id": net["network"]["id"],
            "ip_version": 4, "cidr": cidr, "enable_dhcp": false}}),
        ),
    )
    .await
    .map_err(|e| fail("subnet", e))?;
    if s.as_u16() != 201 {
        return Err(fail("subnet", sub.to_string()));
    }
    tracing::info!(%cidr, "external network public created");
    Ok(())
}

/// The super conductor (with its scheduler) serving the API-level bus (`[DEFAULT] transport_url`).
pub async fn start_super_conductor(
    cfg: &Config,
    buses: &Arc<tessera_bus::Buses>,
    placement: Arc<tessera_compute::placement_client::PlacementClient>,
    shutdown: &Shutdown,
) -> Result<Arc<tessera_compute::boot::SuperConductor>, StartError> {
    let api = tessera_db::Db::connect(&cfg.get_str("api_database", "connection"), 8).await?;
    let sched = Arc::new(tessera_compute::scheduler::Scheduler::new(
        api.clone(),
        placement,
        scheduler_config(cfg)?,
    ));
    let sc = Arc::new(tessera_compute::boot::SuperConductor::with_workers(
        api,
        sched,
        buses.clone(),
        cfg.get_int("conductor", "workers").max(0) as usize,
    ));
    let bus = buses
        .get(&cfg.get_str("DEFAULT", "transport_url"))
        .map_err(|e| StartError::Failed(format!("API bus: {e}")))?;
    sc.clone()
        .serve(bus, "super-conductor", shutdown.subscribe())
        .await
        .map_err(|e| StartError::Failed(format!("super conductor: {e}")))?;
    spawn_control_heartbeats(cfg, shutdown).await?;
    Ok(sc)
}

/// Finish (or roll back) the boots a previous run left half-way, logged; a failure does not stop start-up.
pub async fn recover_boots(sc: &tessera_compute::boot::SuperConductor, started: i64) {
    match sc.recover(started).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(boots = n, "recovered interrupted boots"),
        Err(e) => tracing::warn!(error = %e, "boot recovery failed"),
    }
}

/// This host's name for service records: `[DEFAULT] host`, else the machine's hostname.
pub fn host_name(cfg: &Config) -> String {
    let h = cfg.get_str("DEFAULT", "host");
    if !h.is_empty() {
        return h;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The super conductor and the scheduler keep `nova-conductor` and `nova-scheduler` service records with
/// heartbeats in cell0's database (where Nova's top-level services report), so `openstack compute service
/// list` shows them and the API can say when they are down.
async fn spawn_control_heartbeats(cfg: &Config, shutdown: &Shutdown) -> Result<(), StartError> {
    use tessera_compute::{celldb, cells};
    let api = tessera_db::Db::connect(&cfg.get_str("api_database", "connection"), 1).await?;
    let cell0 = cells::cell_get(&api, cells::CELL0_UUID).await?;
    api.close().await;
    let Some(cell0) = cell0 else {
        tracing::warn!("cell0 is not mapped: the scheduler and super conductor keep no service records");
        return Ok(());
    };
    let db = celldb::open(&cell0.database_connection, 2, false).await?;
    let host = host_name(cfg);
    let every = Duration::from_secs(cfg.get_int("DEFAULT", "report_interval").max(1) as u64);
    let mut stop = shutdown.subscribe();
    // The first report before returning: once the cloud says it is ready, both services are listed.
    for (binary, topic) in [("nova-scheduler", "scheduler"), ("nova-conductor", "conductor")] {
        celldb::service_report(&db, &host, binary, topic).await?;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for (binary, topic) in [("nova-scheduler", "scheduler"), ("nova-conductor", "conductor")] {
                        if let Err(e) = celldb::service_report(&db, &host, binary, topic).await {
                            tracing::warn!(%binary, error = %e, "heartbeat failed");
                        }
                    }
                }
                _ = stop.changed() => break,
            }
        }
    });
    Ok(())
}

/// Database URL of all-in-one's cell `i` (0 is cell0) from `[database] connection` (which is cell1's):
/// `cellN.sqlite` beside a `cell1.sqlite`, else the database name with `_cellN` appended.
pub fn cell_url(base: &str, i: i64) -> String {
    if i == 1 {
        return base.to_string();
    }
    if let Some(stem) = base.strip_suffix("cell1.sqlite") {
        return format!("{stem}cell{i}.sqlite");
    }
    let suffixed = tessera_compute::cells::default_cell0_url(base);
    if i == 0 {
        suffixed
    } else {
        suffixed.replacen("_cell0", &format!("_cell{i}"), 1)
    }
}

/// Scheduler settings from the configuration; an unknown filter name is a start-up error.
pub fn scheduler_config(cfg: &Config) -> Result<tessera_compute::scheduler::SchedulerConfig, StartError> {
    let filters = cfg.get_list("filter_scheduler", "enabled_filters");
    if let Some(f) = filters
        .iter()
        .find(|f| !tessera_compute::scheduler::KNOWN_FILTERS.contains(&f.as_str()))
    {
        return Err(StartError::Usage(format!(
            "[filter_scheduler] enabled_filters: unknown filter {f} (known: {})",
            tessera_compute::scheduler::KNOWN_FILTERS.join(", ")
        )));
    }
    Ok(tessera_compute::scheduler::SchedulerConfig {
        enabled_filters: filters,
        ram_weight_multiplier: cfg.get_float("filter_scheduler", "ram_weight_multiplier"),
        cpu_weight_multiplier: cfg.get_float("filter_scheduler", "cpu_weight_multiplier"),
        disk_weight_multiplier: cfg.get_float("filter_scheduler", "disk_weight_multiplier"),
        max_attempts: cfg.get_int("scheduler", "max_attempts").max(1) as usize,
        service_down_time: Duration::from_secs(cfg.get_int("DEFAULT", "service_down_time").max(1) as u64),
        default_availability_zone: cfg.get_str("DEFAULT", "default_availability_zone"),
        max_placement_results: cfg.get_int("scheduler", "max_placement_results").max(1) as usize,
    })
}

/// With `[scheduler] discover_hosts_in_cells_interval` ≥ 0, map new compute hosts to their cells
/// periodically (0 means every 60 s), as nova-scheduler's periodic task does; a collision with a
/// concurrent discovery is logged and retried next time.
pub fn spawn_periodic_discovery(cfg: &Config, shutdown: &Shutdown) {
    let interval = match cfg.get_int("scheduler", "discover_hosts_in_cells_interval") {
        i if i < 0 => return,
        0 => 60,
        i => i,
    };
    let url = cfg.get_str("api_database", "connection");
    let mut stop = shutdown.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(interval as u64));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let r = async {
                let api = tessera_db::Db::connect(&url, 1).await?;
                let r = tessera_compute::cellv2::discover(&api, None, false, &mut |_| {}).await;
                api.close().await;
                Ok::<_, StartError>(r?)
            }
            .await;
            match r {
                Ok(hosts) if !hosts.is_empty() => tracing::info!(?hosts, "periodic discovery mapped hosts"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "periodic host discovery failed"),
            }
        }
    });
}

/// Agent settings from the configuration, for host `host`.
pub fn agent_config(cfg: &Config, host: &str) -> tessera_compute::agent::AgentConfig {
    let interval = match cfg.get_int("DEFAULT", "update_resources_interval") {
        0 => 60,
        n => n,
    };
    tessera_compute::agent::AgentConfig {
        host: host.to_string(),
        report_interval: Duration::from_secs(cfg.get_int("DEFAULT", "report_interval").max(1) as u64),
        resource_interval: Duration::from_secs(interval as u64),
        cpu_allocation_ratio: cfg.get_float("DEFAULT", "cpu_allocation_ratio"),
        ram_allocation_ratio: cfg.get_float("DEFAULT", "ram_allocation_ratio"),
        disk_allocation_ratio: cfg.get_float("DEFAULT", "disk_allocation_ratio"),
        reserved_host_cpus: cfg.get_int("DEFAULT", "reserved_host_cpus"),
        reserved_host_memory_mb: cfg.get_int("DEFAULT", "reserved_host_memory_mb"),
        reserved_host_disk_mb: cfg.get_int("DEFAULT", "reserved_host_disk_mb"),
        rpc_timeout: Duration::from_secs(60),
        vif_plugging_timeout: Duration::from_secs(
            cfg.get_int("DEFAULT", "vif_plugging_timeout").max(0) as u64
        ),
        vif_plugging_is_fatal: cfg.get_bool("DEFAULT", "vif_plugging_is_fatal"),
    }
}

/// For every cell but cell0: its conductor on the cell's bus, and `[all_in_one] hosts_per_cell` fake
/// compute hosts that register through it; once all have reported, their hosts are discovered (mapped to
/// their cells) with the code of `manage cell_v2 discover_hosts`.
async fn start_cells(
    cfg: &Config,
    cells: &[tessera_compute::cells::CellMapping],
    buses: &tessera_bus::Buses,
    placement: Arc<tessera_compute::placement_client::PlacementClient>,
    shutdown: &Shutdown,
) -> Result<Vec<Arc<tessera_compute::agent::ComputeAgent>>, StartError> {
    let hosts = cfg.get_int("all_in_one", "hosts_per_cell").max(0) as usize;
    let mut agents = Vec::new();
    for cell in cells.iter().filter(|c| !c.is_cell0()) {
        agents.extend(start_cell(cfg, cell, buses, placement.clone(), hosts, shutdown).await?);
    }
    if !agents.is_empty() {
        let api = tessera_db::Db::connect(&cfg.get_str("api_database", "connection"), 2).await?;
        let mapped =
            tessera_compute::cellv2::discover(&api, None, false, &mut |m| tracing::debug!("{m}")).await;
        api.close().await;
        let mapped = mapped?;
        tracing::info!(hosts = mapped.len(), "discovered compute hosts");
    }
    Ok(agents)
}

/// Start compute host `host` (fake driver sized by `[fake]`) on its cell's bus; the receiver fires once it
/// has registered (service record, compute node, placement provider).
pub fn compute_host(
    cfg: &Config,
    host: &str,
    bus: Arc<dyn tessera_bus::Bus>,
    placement: Arc<tessera_compute::placement_client::PlacementClient>,
    network: Arc<tessera_compute::network::NetworkClient>,
    shutdown: &Shutdown,
) -> (
    Arc<tessera_compute::agent::ComputeAgent>,
    tokio::sync::oneshot::Receiver<tessera_compute::agent::Registered>,
) {
    use tessera_compute::{agent, virt};
    let driver = Arc::new(virt::fake::FakeDriver::new(virt::fake::FakeConfig {
        hostname: host.to_string(),
        vcpus: cfg.get_int("fake", "vcpus"),
        memory_mb: cfg.get_int("fake", "memory_mb"),
        disk_gb: cfg.get_int("fake", "disk_gb"),
        spawn_delay: Duration::from_millis(cfg.get_int("fake", "spawn_delay_ms") as u64),
        fail_spawns: None,
    }));
    let a = Arc::new(agent::ComputeAgent::new(
        agent_config(cfg, host),
        bus,
        driver,
        placement,
        network,
    ));
    let (tx, rx) = tokio::sync::oneshot::channel();
    a.clone().spawn(shutdown.subscribe(), tx);
    (a, rx)
}

/// Start one cell's conductor and `hosts` fake compute hosts (`NAME-computeJ`) on the cell's bus, and wait
/// until every host has registered (service record, compute node, placement provider). Mapping the hosts is
/// discovery's job.
pub async fn start_cell(
    cfg: &Config,
    cell: &tessera_compute::cells::CellMapping,
    buses: &tessera_bus::Buses,
    placement: Arc<tessera_compute::placement_client::PlacementClient>,
    hosts: usize,
    shutdown: &Shutdown,
) -> Result<Vec<Arc<tessera_compute::agent::ComputeAgent>>, StartError> {
    use tessera_compute::{celldb, conductor};
    let report = Duration::from_secs(cfg.get_int("DEFAULT", "report_interval").max(1) as u64);
    let name = cell.name.clone().unwrap_or_else(|| cell.uuid.clone());
    let bus = buses
        .get(&cell.transport_url)
        .map_err(|e| StartError::Failed(format!("cell {name}: {e}")))?;
    let db = celldb::open(&cell.database_connection, 8, true).await?;
    conductor::spawn(
        bus.clone(),
        db,
        Some(placement.clone()),
        format!("{name}-conductor"),
        report,
        shutdown.subscribe(),
    )
    .await
    .map_err(|e| StartError::Failed(format!("cell {name}: conductor: {e}")))?;
    let mut agents = Vec::new();
    let mut waits = Vec::new();
    for j in 1..=hosts {
        let host = format!("{name}-compute{j}");
        let network = Arc::new(tessera_compute::network::NetworkClient::new(placement.clone()));
        let (a, rx) = compute_host(cfg, &host, bus.clone(), placement.clone(), network, shutdown);
        waits.push((host, rx));
        agents.push(a);
    }
    for (host, rx) in waits {
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(StartError::Failed(format!(
                    "compute host {host} did not register within 60 s"
                )))
            }
        }
    }
    Ok(agents)
}

/// The API database, cell0 and `[all_in_one] cells` cells (`cell1`…, bus `inproc://cellN`), each created
/// by the code of `manage cell_v2 map_cell0` / `create_cell` when missing (a restart finds them mapped).
async fn ensure_cells(cfg: &Config) -> Result<Vec<tessera_compute::cells::CellMapping>, StartError> {
    use tessera_compute::{cells, cellv2};
    let api = tessera_db::Db::connect(&cfg.get_str("api_database", "connection"), 4).await?;
    api.migrate(&tessera_db::compute::API_MIGRATIONS).await?;
    let d = cellv2::Defaults {
        transport_url: cfg.get_str("DEFAULT", "transport_url"),
        database_connection: cfg.get_str("database", "connection"),
    };
    let existing = cells::cell_list(&api).await?;
    let mut out = String::new();
    if !existing.iter().any(|c| c.is_cell0()) {
        let url = cell_url(&d.database_connection, 0);
        if cellv2::map_cell0(&api, &d, Some(&url), &mut out).await? != 0 {
            return Err(StartError::Failed(format!("cannot map cell0: {}", out.trim())));
        }
    }
    for i in 1..=cfg.get_int("all_in_one", "cells") {
        let name = format!("cell{i}");
        if existing.iter().any(|c| c.name.as_deref() == Some(name.as_str())) {
            continue;
        }
        let url = cell_url(&d.database_connection, i);
        let bus = format!("inproc://{name}");
        let code = cellv2::create_cell(
            &api,
            &d,
            Some(&name),
            Some(&url),
            Some(&bus),
            false,
            false,
            &mut out,
        )
        .await?;
        if code != 0 {
            return Err(StartError::Failed(format!(
                "cannot create {name}: {}",
                out.trim()
            )));
        }
    }
    let all = cells::cell_list(&api).await?;
    api.close().await;
    Ok(all)
}

fn write_client_files(a: &AllInOne) -> Result<(), StartError> {
    let clouds = format!(
        "# Written by tessera all-in-one.\nclouds:\n  tessera:\n    auth:\n      auth_url: {}\n      username: {}\n      password: \"{}\"\n      project_name: {}\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: {}\n    identity_api_version: 3\n    interface: public\n",
        a.auth_url(),
        a.admin_username,
        a.admin_password,
        a.project_name,
        a.region
    );
    roles::write_private(&a.state_dir.join("clouds.yaml"), &clouds)?;
    let openrc = format!(
        "# Written by tessera all-in-one: `source` this file to use the openstack CLI as the admin user.\nexport OS_AUTH_URL={}\nexport OS_IDENTITY_API_VERSION=3\nexport OS_USERNAME={}\nexport OS_PASSWORD='{}'\nexport OS_PROJECT_NAME={}\nexport OS_USER_DOMAIN_NAME=Default\nexport OS_PROJECT_DOMAIN_NAME=Default\nexport OS_REGION_NAME={}\nexport OS_INTERFACE=public\nunset OS_CLOUD OS_TOKEN\n",
        a.auth_url(),
        a.admin_username,
        a.admin_password,
        a.project_name,
        a.region
    );
    roles::write_private(&a.state_dir.join("openrc"), &openrc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_filters_are_refused_at_start() {
        let mut cfg = Config::defaults();
        assert!(scheduler_config(&cfg).is_ok());
        cfg.set("filter_scheduler", "enabled_filters", "ComputeFilter,RamFilter")
            .expect("set");
        match scheduler_config(&cfg) {
            Err(StartError::Usage(m)) => assert!(m.contains("RamFilter")),
            other => panic!("{other:?}"),
        }
    }
}
