//! `tessera manage …`: database sync, Keystone's bootstrap and Fernet key management.

use crate::{roles, StartError};
use tessera_config::Config;
use tessera_identity::{fernet, BootstrapParams, Identity, Settings};

/// Every database named in the configuration: (config group, migrations).
const DATABASES: &[(&str, &tessera_db::MigrationSet)] = &[
    ("identity_database", &tessera_db::identity::MIGRATIONS),
    ("image_database", &tessera_db::image::MIGRATIONS),
    ("placement_database", &tessera_db::placement::MIGRATIONS),
    ("network_database", &tessera_db::network::MIGRATIONS),
    ("api_database", &tessera_db::compute::API_MIGRATIONS),
    ("database", &tessera_db::compute::CELL_MIGRATIONS),
];

async fn sync_one(url: &str, set: &tessera_db::MigrationSet) -> Result<(), StartError> {
    let db = tessera_db::Db::connect(url, 1).await?;
    let applied = db.migrate(set).await?;
    println!(
        "{} database {}: schema version {} ({} migration(s) applied)",
        set.name,
        db.url_masked(),
        db.schema_version(set).await?,
        applied.len()
    );
    db.close().await;
    Ok(())
}

/// `manage db sync`: bring every database this build owns to the latest schema: the service databases, the
/// API database, this host's cell database (`[database] connection`) and, unless `local_cell`, every cell
/// mapped in the API database (cell0 included), as `nova-manage db sync` also syncs cell0.
pub async fn db_sync(cfg: &Config, local_cell: bool) -> Result<(), StartError> {
    for (group, set) in DATABASES {
        if local_cell && *group != "database" {
            continue;
        }
        sync_one(&cfg.get_str(group, "connection"), set).await?;
    }
    if !local_cell {
        let api = tessera_db::Db::connect(&cfg.get_str("api_database", "connection"), 1).await?;
        let cells = tessera_compute::cells::cell_list(&api).await;
        api.close().await;
        let local = cfg.get_str("database", "connection");
        for c in cells.map_err(|e| StartError::Failed(format!("cannot list the cells: {e}")))? {
            if c.database_connection != local {
                sync_one(&c.database_connection, &tessera_db::compute::CELL_MIGRATIONS).await?;
            }
        }
    }
    Ok(())
}

/// `manage api_db sync`.
pub async fn api_db_sync(cfg: &Config) -> Result<(), StartError> {
    sync_one(
        &cfg.get_str("api_database", "connection"),
        &tessera_db::compute::API_MIGRATIONS,
    )
    .await
}

/// `manage api_db version`.
pub async fn api_db_version(cfg: &Config) -> Result<(), StartError> {
    let db = tessera_db::Db::connect(&cfg.get_str("api_database", "connection"), 1).await?;
    println!(
        "{}",
        db.schema_version(&tessera_db::compute::API_MIGRATIONS).await?
    );
    db.close().await;
    Ok(())
}

/// `manage cell_v2 …` (nova-manage's names, options and exit codes).
#[derive(clap::Subcommand)]
pub enum CellV2Cmd {
    /// Map cell0, create a cell for the configured database and transport with its compute hosts, map its
    /// instances.
    #[command(name = "simple_cell_setup")]
    SimpleCellSetup {
        #[arg(long = "transport-url", value_name = "TRANSPORT_URL")]
        transport_url: Option<String>,
    },
    /// Create the mapping of cell0 (instances that could not be scheduled).
    #[command(name = "map_cell0")]
    MapCell0 {
        /// cell0's database (default: [database] connection with `_cell0` appended to the database name).
        #[arg(long = "database_connection", value_name = "DATABASE_CONNECTION")]
        database_connection: Option<String>,
    },
    /// Create a cell mapping for the configured database and transport and map its compute hosts.
    #[command(name = "map_cell_and_hosts")]
    MapCellAndHosts {
        #[arg(long = "transport-url", value_name = "TRANSPORT_URL")]
        transport_url: Option<String>,
        #[arg(long, value_name = "CELL_NAME")]
        name: Option<String>,
        #[arg(long)]
        verbose: bool,
    },
    /// Map the cell's unmapped instances (oldest first).
    #[command(name = "map_instances")]
    MapInstances {
        #[arg(long = "cell_uuid", value_name = "CELL_UUID", required = true)]
        cell_uuid: String,
        #[arg(long = "max-count", value_name = "MAX_COUNT")]
        max_count: Option<String>,
        /// Start from the beginning, not where the last run stopped.
        #[arg(long)]
        reset: bool,
    },
    /// Check an instance's mapping to a cell.
    #[command(name = "verify_instance")]
    VerifyInstance {
        #[arg(long, value_name = "INSTANCE_UUID", required = true)]
        uuid: String,
        #[arg(long)]
        quiet: bool,
    },
    /// Map the compute hosts of every cell (or one) that are not mapped yet.
    #[command(name = "discover_hosts")]
    DiscoverHosts {
        #[arg(long = "cell_uuid", value_name = "CELL_UUID")]
        cell_uuid: Option<String>,
        #[arg(long)]
        verbose: bool,
        /// Exit 0 only when a new host was mapped.
        #[arg(long)]
        strict: bool,
        /// Discover by nova-compute service records instead of compute nodes.
        #[arg(long = "by-service")]
        by_service: bool,
    },
    /// Add a cell (its database schema is created too); prints its uuid with --verbose.
    #[command(name = "create_cell")]
    CreateCell {
        #[arg(long, value_name = "CELL_NAME")]
        name: Option<String>,
        #[arg(long = "database_connection", value_name = "DATABASE_CONNECTION")]
        database_connection: Option<String>,
        #[arg(long = "transport-url", value_name = "TRANSPORT_URL")]
        transport_url: Option<String>,
        #[arg(long)]
        verbose: bool,
        /// Create the cell disabled (not schedulable).
        #[arg(long)]
        disabled: bool,
    },
    /// List the cells (passwords masked unless --verbose).
    #[command(name = "list_cells")]
    ListCells {
        #[arg(long)]
        verbose: bool,
    },
    /// Delete an empty cell (with --force, also its hosts and deleted instances' mappings).
    #[command(name = "delete_cell")]
    DeleteCell {
        #[arg(long)]
        force: bool,
        #[arg(long = "cell_uuid", value_name = "CELL_UUID", required = true)]
        cell_uuid: String,
    },
    /// Change a cell's name, URLs or enabled state.
    #[command(name = "update_cell")]
    UpdateCell {
        #[arg(long = "cell_uuid", value_name = "CELL_UUID", required = true)]
        cell_uuid: String,
        #[arg(long, value_name = "CELL_NAME")]
        name: Option<String>,
        #[arg(long = "transport-url", value_name = "TRANSPORT_URL")]
        transport_url: Option<String>,
        #[arg(long = "database_connection", value_name = "DATABASE_CONNECTION")]
        database_connection: Option<String>,
        #[arg(long)]
        disable: bool,
        #[arg(long)]
        enable: bool,
    },
    /// List the host mappings of one cell or all.
    #[command(name = "list_hosts")]
    ListHosts {
        #[arg(long = "cell_uuid", value_name = "CELL_UUID")]
        cell_uuid: Option<String>,
    },
    /// Delete a host mapping.
    #[command(name = "delete_host")]
    DeleteHost {
        #[arg(long = "cell_uuid", value_name = "CELL_UUID", required = true)]
        cell_uuid: String,
        #[arg(long, value_name = "HOST", required = true)]
        host: String,
    },
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// Run one `cell_v2` command against the configured API database (its schema brought up to date first).
/// Non-zero exit codes come back as [`StartError::Exit`]; an unexpected failure prints nova-manage's
/// "An error has occurred" and exits 255.
pub async fn cell_v2(cfg: &Config, cmd: CellV2Cmd) -> Result<(), StartError> {
    use tessera_compute::cellv2 as c;
    let code = async {
        let api = tessera_db::Db::connect(&cfg.get_str("api_database", "connection"), 2)
            .await
            .map_err(|e| chain(&e))?;
        api.migrate(&tessera_db::compute::API_MIGRATIONS)
            .await
            .map_err(|e| chain(&e))?;
        let d = c::Defaults {
            transport_url: cfg.get_str("DEFAULT", "transport_url"),
            database_connection: cfg.get_str("database", "connection"),
        };
        let out = &mut c::Stdout;
        let r = match cmd {
            CellV2Cmd::SimpleCellSetup { transport_url } => {
                c::simple_cell_setup(&api, &d, transport_url.as_deref(), out).await
            }
            CellV2Cmd::MapCell0 { database_connection } => {
                c::map_cell0(&api, &d, database_connection.as_deref(), out).await
            }
            CellV2Cmd::MapCellAndHosts {
                transport_url,
                name,
                verbose,
            } => {
                c::map_cell_and_hosts(&api, &d, transport_url.as_deref(), name.as_deref(), verbose, out).await
            }
            CellV2Cmd::MapInstances {
                cell_uuid,
                max_count,
                reset,
            } => c::map_instances(&api, &cell_uuid, max_count.as_deref(), reset, out).await,
            CellV2Cmd::VerifyInstance { uuid, quiet } => c::verify_instance(&api, &uuid, quiet, out).await,
            CellV2Cmd::DiscoverHosts {
                cell_uuid,
                verbose,
                strict,
                by_service,
            } => c::discover_hosts(&api, cell_uuid.as_deref(), verbose, strict, by_service, out).await,
            CellV2Cmd::CreateCell {
                name,
                database_connection,
                transport_url,
                verbose,
                disabled,
            } => {
                c::create_cell(
                    &api,
                    &d,
                    name.as_deref(),
                    database_connection.as_deref(),
                    transport_url.as_deref(),
                    verbose,
                    disabled,
                    out,
                )
                .await
            }
            CellV2Cmd::ListCells { verbose } => c::list_cells(&api, verbose, out).await,
            CellV2Cmd::DeleteCell { force, cell_uuid } => c::delete_cell(&api, &cell_uuid, force, out).await,
            CellV2Cmd::UpdateCell {
                cell_uuid,
                name,
                transport_url,
                database_connection,
                disable,
                enable,
            } => {
                c::update_cell(
                    &api,
                    &d,
                    &cell_uuid,
                    name.as_deref(),
                    transport_url.as_deref(),
                    database_connection.as_deref(),
                    disable,
                    enable,
                    out,
                )
                .await
            }
            CellV2Cmd::ListHosts { cell_uuid } => c::list_hosts(&api, cell_uuid.as_deref(), out).await,
            CellV2Cmd::DeleteHost { cell_uuid, host } => c::delete_host(&api, &cell_uuid, &host, out).await,
        };
        api.close().await;
        r.map_err(|e| chain(&e))
    };
    match code.await {
        Ok(0) => Ok(()),
        Ok(n) => Err(StartError::Exit(n)),
        Err(msg) => {
            println!("An error has occurred:\n{msg}");
            Err(StartError::Exit(255))
        }
    }
}

/// `manage db version`.
pub async fn db_version(cfg: &Config) -> Result<(), StartError> {
    for (group, set) in DATABASES {
        let db = tessera_db::Db::connect(&cfg.get_str(group, "connection"), 1).await?;
        println!(
            "{} {} (this binary: {})",
            set.name,
            db.schema_version(set).await?,
            set.latest()
        );
        db.close().await;
    }
    Ok(())
}

/// `manage bootstrap`, as `keystone-manage bootstrap`.
pub async fn bootstrap(cfg: &Config, p: BootstrapParams) -> Result<(), StartError> {
    let db = roles::open_identity_db(cfg, false).await?;
    let keys = fernet::KeyRing::open(&roles::key_repository(cfg))?;
    let id = Identity::new(db, keys, Settings::from_config(cfg)).await?;
    let r = id.bootstrap(&p).await?;
    println!(
        "bootstrapped: user {} ({}), project {} ({}), role admin ({})",
        p.admin_username, r.user_id, p.project_name, r.project_id, r.admin_role_id
    );
    Ok(())
}

pub fn fernet_setup(cfg: &Config) -> Result<(), StartError> {
    let dir = roles::key_repository(cfg);
    if fernet::setup(&dir)? {
        println!(
            "created fernet keys 0 (staged) and 1 (primary) in {}",
            dir.display()
        );
    } else {
        println!(
            "key repository {} already has keys; nothing to do (use fernet_rotate)",
            dir.display()
        );
    }
    Ok(())
}

pub fn fernet_rotate(cfg: &Config) -> Result<(), StartError> {
    let dir = roles::key_repository(cfg);
    let max = cfg.get_int("fernet_tokens", "max_active_keys") as usize;
    let primary = fernet::rotate(&dir, max)?;
    println!(
        "rotated fernet keys in {}: primary is now key {primary}",
        dir.display()
    );
    Ok(())
}
