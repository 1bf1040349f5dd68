//! The roles one binary can play, and starting the ones this build has.

use crate::{io_err, Shutdown, StartError};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tessera_config::Config;
use tessera_db::Db;
use tessera_identity::{fernet, Identity, Settings};

/// Every role name `serve` accepts, in start order.
pub const ALL_ROLES: &[&str] = &[
    "identity",
    "placement",
    "image",
    "network",
    "network-agent",
    "api",
    "conductor",
    "scheduler",
    "compute",
    "novncproxy",
];

/// Roles implemented in this build.
pub const AVAILABLE: &[&str] = &[
    "identity",
    "image",
    "placement",
    "network",
    "network-agent",
    "api",
    "conductor",
    "compute",
];

pub fn check_roles(roles: &[String]) -> Result<(), StartError> {
    for r in roles {
        if !ALL_ROLES.contains(&r.as_str()) {
            return Err(StartError::Usage(format!(
                "unknown role '{r}'; roles are: {}",
                ALL_ROLES.join(", ")
            )));
        }
        if r == "scheduler" {
            return Err(StartError::Usage(
                "the scheduler runs inside the super conductor: serve role 'conductor' with [api_database] connection set".into(),
            ));
        }
        if !AVAILABLE.contains(&r.as_str()) {
            return Err(StartError::Usage(format!(
                "role '{r}' is not available in this build of tessera yet (available: {})",
                AVAILABLE.join(", ")
            )));
        }
    }
    if roles.is_empty() {
        return Err(StartError::Usage("name at least one role to serve".into()));
    }
    Ok(())
}

/// Open a service database, migrating it (all-in-one) or checking it is current (`serve`).
pub async fn open_db(
    cfg: &Config,
    group: &str,
    set: &tessera_db::MigrationSet,
    migrate: bool,
) -> Result<Db, StartError> {
    open_db_with(cfg, group, set, migrate, tessera_db::ConnectOptions::default()).await
}

/// [`open_db`], its connections set up as `opts` says.
pub async fn open_db_with(
    cfg: &Config,
    group: &str,
    set: &tessera_db::MigrationSet,
    migrate: bool,
    opts: tessera_db::ConnectOptions,
) -> Result<Db, StartError> {
    let url = cfg.get_str(group, "connection");
    let db = Db::connect_with(&url, cfg.get_int(group, "max_pool_size") as u32, opts).await?;
    if migrate {
        db.migrate(set).await?;
    } else {
        let v = db.schema_version(set).await?;
        if v < set.latest() {
            let sync = if group == "api_database" {
                "api_db sync"
            } else {
                "db sync"
            };
            return Err(StartError::Usage(format!(
                "the {} database ({}) is at schema version {v}, this binary needs {}; run `tessera manage {sync}`",
                set.name,
                db.url_masked(),
                set.latest()
            )));
        }
    }
    Ok(db)
}

/// Open (and, when `migrate`, bring up to date) the identity database.
pub async fn open_identity_db(cfg: &Config, migrate: bool) -> Result<Db, StartError> {
    open_db(
        cfg,
        "identity_database",
        &tessera_db::identity::MIGRATIONS,
        migrate,
    )
    .await
}

/// Open (and, when `migrate`, bring up to date) the image database.
pub async fn open_image_db(cfg: &Config, migrate: bool) -> Result<Db, StartError> {
    open_db(cfg, "image_database", &tessera_db::image::MIGRATIONS, migrate).await
}

pub fn key_repository(cfg: &Config) -> std::path::PathBuf {
    std::path::PathBuf::from(cfg.get_str("fernet_tokens", "key_repository"))
}

/// A running Identity service.
pub struct IdentityRole {
    pub identity: Arc<Identity>,
    pub addr: SocketAddr,
    pub base_url: String,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The host name put in URLs for a bind address.
pub fn public_host(cfg: &Config) -> String {
    let ph = cfg.get_str("DEFAULT", "public_host");
    if !ph.is_empty() {
        return ph;
    }
    let bh = cfg.get_str("DEFAULT", "bind_host");
    if bh == "0.0.0.0" || bh == "::" || bh.is_empty() {
        "127.0.0.1".into()
    } else {
        bh
    }
}

/// Bind `[DEFAULT] bind_host` : `[group] bind_port`; returns the listener, its address and the public base URL.
async fn listen(
    cfg: &Config,
    group: &str,
) -> Result<(tokio::net::TcpListener, SocketAddr, String), StartError> {
    listen_on(cfg, cfg.get_port(group, "bind_port")).await
}

async fn listen_on(
    cfg: &Config,
    port: u16,
) -> Result<(tokio::net::TcpListener, SocketAddr, String), StartError> {
    let bind = format!("{}:{}", cfg.get_str("DEFAULT", "bind_host"), port);
    let (listener, addr) = tessera_http::bind(&bind)
        .await
        .map_err(io_err("cannot listen on", bind.clone()))?;
    let base_url = format!("http://{}:{}", public_host(cfg), addr.port());
    Ok((listener, addr, base_url))
}

/// Start the identity role: open its database and key repository, bind, serve until shutdown.
pub async fn start_identity(cfg: &Config, db: Db, shutdown: &Shutdown) -> Result<IdentityRole, StartError> {
    let keys = fernet::KeyRing::open(&key_repository(cfg))?;
    let settings = Settings::from_config(cfg);
    let identity = Identity::new(db, keys, settings).await?;
    let (listener, addr, base_url) = listen(cfg, "identity").await?;
    let router = tessera_identity::api::router(identity.clone(), &base_url);
    identity.spawn_poller(shutdown.subscribe());
    let task = tokio::spawn(tessera_http::serve(listener, router, shutdown.wait()));
    tracing::info!(%addr, "identity listening");
    Ok(IdentityRole {
        identity,
        addr,
        base_url,
        task,
    })
}

/// A running Image service.
pub struct ImageRole {
    pub service: Arc<tessera_image::ImageService>,
    pub addr: SocketAddr,
    pub base_url: String,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Start the image role behind the auth layer of `identity` (same process: validation reads the shared key
/// repository and the identity database).
pub async fn start_image(
    cfg: &Config,
    db: Db,
    identity: &Arc<Identity>,
    identity_uri: &str,
    shutdown: &Shutdown,
) -> Result<ImageRole, StartError> {
    let dir = std::path::PathBuf::from(cfg.get_str("image", "filesystem_store_datadir"));
    let service =
        tessera_image::ImageService::new(db, dir, tessera_image::Settings::from_config(cfg)).await?;
    let (listener, addr, base_url) = listen(cfg, "image").await?;
    let router = tessera_image::api::router(service.clone(), identity.validator(), identity_uri, &base_url);
    let task = tokio::spawn(tessera_http::serve(listener, router, shutdown.wait()));
    tracing::info!(%addr, "image listening");
    Ok(ImageRole {
        service,
        addr,
        base_url,
        task,
    })
}

pub async fn open_placement_db(cfg: &Config, migrate: bool) -> Result<Db, StartError> {
    // Placement's statements are lookups by uuid and generation-checked writes: one plan each serves all.
    let opts = tessera_db::ConnectOptions {
        pg_generic_plans: true,
    };
    open_db_with(
        cfg,
        "placement_database",
        &tessera_db::placement::MIGRATIONS,
        migrate,
        opts,
    )
    .await
}

pub async fn open_network_db(cfg: &Config, migrate: bool) -> Result<Db, StartError> {
    open_db(cfg, "network_database", &tessera_db::network::MIGRATIONS, migrate).await
}

/// A running Networking service.
pub struct NetworkRole {
    pub service: Arc<tessera_network::NetworkService>,
    pub addr: SocketAddr,
    pub base_url: String,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Start the network role (the Neutron API) behind the auth layer of `identity`.
pub async fn start_network(
    cfg: &Config,
    db: Db,
    identity: &Arc<Identity>,
    identity_uri: &str,
    shutdown: &Shutdown,
) -> Result<NetworkRole, StartError> {
    let service = tessera_network::NetworkService::new(db, tessera_network::Settings::from_config(cfg));
    let (listener, addr, base_url) = listen(cfg, "network").await?;
    let router = tessera_network::api::router(service.clone(), identity.validator(), identity_uri, &base_url);
    let task = tokio::spawn(tessera_http::serve(listener, router, shutdown.wait()));
    tracing::info!(%addr, "network listening");
    Ok(NetworkRole {
        service,
        addr,
        base_url,
        task,
    })
}

/// The Networking service's messenger to the Compute API (`os-server-external-events`), over a Keystone
/// session whose token may send them (admin or service role).
pub struct ComputeEvents {
    pub session: Arc<tessera_compute::placement_client::PlacementClient>,
}

#[async_trait::async_trait]
impl tessera_network::ComputeNotifier for ComputeEvents {
    async fn notify(&self, events: Vec<serde_json::Value>) {
        let body = serde_json::json!({ "events": events });
        match self
            .session
            .service_call(
                "compute",
                reqwest::Method::POST,
                "/os-server-external-events",
                Some(&body),
            )
            .await
        {
            Ok((s, _)) if s.is_success() || s.as_u16() == 207 || s.as_u16() == 404 => {}
            Ok((s, v)) => tracing::warn!(status = %s, answer = %v, "the Compute API refused server events"),
            Err(e) => tracing::warn!(error = %e, "cannot send server events to the Compute API"),
        }
    }
}

/// A running Placement service.
pub struct PlacementRole {
    pub service: Arc<tessera_placement::PlacementService>,
    pub addr: SocketAddr,
    pub base_url: String,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Start the placement role behind the auth layer of `identity`.
pub async fn start_placement(
    cfg: &Config,
    db: Db,
    identity: &Arc<Identity>,
    identity_uri: &str,
    shutdown: &Shutdown,
) -> Result<PlacementRole, StartError> {
    let service =
        tessera_placement::PlacementService::new(db, tessera_placement::Settings::from_config(cfg)).await?;
    let (listener, addr, base_url) = listen(cfg, "placement").await?;
    let router = tessera_placement::api::router(service.clone(), identity.validator(), identity_uri);
    let task = tokio::spawn(tessera_http::serve(listener, router, shutdown.wait()));
    tracing::info!(%addr, "placement listening");
    Ok(PlacementRole {
        service,
        addr,
        base_url,
        task,
    })
}

pub struct ComputeApiRole {
    pub api: Arc<tessera_compute::api::ComputeApi>,
    pub addr: SocketAddr,
    /// `http://host:port` (the catalog endpoint is this plus `/v2.1`).
    pub base_url: String,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Start the Compute API (`api` role) over the API database, behind the auth layer of `identity`.
pub async fn start_compute_api(
    cfg: &Config,
    api_db: Db,
    identity: &Arc<Identity>,
    identity_uri: &str,
    placement: Option<Arc<tessera_compute::placement_client::PlacementClient>>,
    shutdown: &Shutdown,
) -> Result<ComputeApiRole, StartError> {
    let settings = tessera_compute::api::ApiSettings {
        service_down_time: std::time::Duration::from_secs(
            cfg.get_int("DEFAULT", "service_down_time").max(1) as u64
        ),
        cell_timeout: std::time::Duration::from_secs(60),
        default_availability_zone: cfg.get_str("DEFAULT", "default_availability_zone"),
        internal_service_availability_zone: cfg.get_str("DEFAULT", "internal_service_availability_zone"),
    };
    let servers = tessera_compute::api::servers::ServerSettings {
        instances: cfg.get_int("quota", "instances"),
        cores: cfg.get_int("quota", "cores"),
        ram: cfg.get_int("quota", "ram"),
        metadata_items: cfg.get_int("quota", "metadata_items"),
        server_groups: cfg.get_int("quota", "server_groups"),
        server_group_members: cfg.get_int("quota", "server_group_members"),
        max_limit: cfg.get_int("api", "max_limit"),
        enable_instance_password: cfg.get_bool("api", "enable_instance_password"),
    };
    let api = tessera_compute::api::ComputeApi::with_servers(api_db, settings, placement, servers);
    let (listener, addr, base_url) =
        listen_on(cfg, cfg.get_port("DEFAULT", "osapi_compute_listen_port")).await?;
    let router = tessera_compute::api::router(api.clone(), identity.validator(), identity_uri);
    let task = tokio::spawn(tessera_http::serve(listener, router, shutdown.wait()));
    tracing::info!(%addr, "compute API listening");
    Ok(ComputeApiRole {
        api,
        addr,
        base_url,
        task,
    })
}

/// Write a file readable only by its owner, atomically.
pub fn write_private(path: &Path, contents: &str) -> Result<(), StartError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("cannot write", &tmp))?;
    f.write_all(contents.as_bytes())
        .map_err(io_err("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("cannot write", path))
}

/// The network agent's link to the Networking service: the agent RPC calls over a Keystone session whose
/// token has the admin or service role.
pub struct AgentLink {
    pub session: Arc<tessera_compute::placement_client::PlacementClient>,
}

#[async_trait::async_trait]
impl tessera_network::agent::AgentRpc for AgentLink {
    async fn call(&self, method: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
        let path = format!("/v2.0/agent-rpc/{method}");
        match self
            .session
            .service_call("network", reqwest::Method::POST, &path, Some(&body))
            .await
        {
            Ok((s, v)) if s.is_success() => Ok(v),
            Ok((s, v)) => Err(format!("{path}: {s}: {v}")),
            Err(e) => Err(format!("{path}: {e}")),
        }
    }
}

/// Start the network agent for `hosts` (the first is the machine's own host name): probe what the machine
/// can do, then report and wire until shutdown. Returns what it found it can do.
pub async fn start_network_agent(
    cfg: &Config,
    hosts: Vec<String>,
    session: Arc<tessera_compute::placement_client::PlacementClient>,
    shutdown: &Shutdown,
) -> tessera_network::agent::Capabilities {
    let host = hosts
        .first()
        .cloned()
        .unwrap_or_else(|| crate::aio::host_name(cfg));
    let mut settings = tessera_network::agent::AgentSettings::from_config(cfg, &host);
    if !hosts.is_empty() {
        settings.hosts = hosts;
    }
    let caps = tessera_network::agent::probe(&settings).await;
    let agent = tessera_network::agent::Agent::new(settings, caps.clone(), Arc::new(AgentLink { session }));
    agent.spawn(shutdown.subscribe());
    caps
}
