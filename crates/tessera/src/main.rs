//! The `tessera` command.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tessera::{aio, manage, roles, Shutdown, StartError};
use tessera_config::Config;
use tessera_identity::BootstrapParams;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "An OpenStack-compatible compute cloud in one binary"
)]
struct Cli {
    /// Configuration file (INI, oslo.config option names).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole cloud in one process, with all state in one directory.
    #[command(name = "all-in-one")]
    AllInOne {
        /// Where state lives (databases, keys, clouds.yaml, openrc). Default: [DEFAULT] state_path.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Run this many cells (besides cell0), each with its own database and bus ([all_in_one] cells).
        #[arg(long, value_name = "N")]
        cells: Option<u32>,
        /// Run this many fake-driver compute hosts in each cell ([all_in_one] hosts_per_cell).
        #[arg(long = "hosts-per-cell", value_name = "M")]
        hosts_per_cell: Option<u32>,
    },
    /// Run the named roles in this process.
    Serve {
        #[arg(required = true, value_name = "ROLE")]
        roles: Vec<String>,
    },
    /// Operator commands (like keystone-manage and nova-manage).
    Manage {
        #[command(subcommand)]
        cmd: ManageCmd,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum ManageCmd {
    /// Database schema commands.
    Db {
        #[command(subcommand)]
        cmd: DbCmd,
    },
    /// Create the default domain, roles, admin user and project, region and identity endpoints.
    Bootstrap {
        #[arg(long = "bootstrap-username", default_value = "admin")]
        username: String,
        #[arg(
            long = "bootstrap-password",
            env = "OS_BOOTSTRAP_PASSWORD",
            hide_env_values = true
        )]
        password: String,
        #[arg(long = "bootstrap-project-name", default_value = "admin")]
        project: String,
        #[arg(long = "bootstrap-region-id", default_value = "RegionOne")]
        region: String,
        #[arg(long = "bootstrap-public-url")]
        public_url: Option<String>,
        #[arg(long = "bootstrap-internal-url")]
        internal_url: Option<String>,
        #[arg(long = "bootstrap-admin-url")]
        admin_url: Option<String>,
    },
    /// Create the Fernet key repository (keys 0 and 1).
    #[command(name = "fernet_setup")]
    FernetSetup,
    /// Rotate Fernet keys: staged becomes primary, a new staged key, oldest pruned.
    #[command(name = "fernet_rotate")]
    FernetRotate,
    /// Image commands.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Cells v2 commands (as `nova-manage cell_v2`: same names, options, output and exit codes).
    #[command(name = "cell_v2")]
    CellV2 {
        #[command(subcommand)]
        cmd: manage::CellV2Cmd,
    },
    /// The Compute API database (as `nova-manage api_db`).
    #[command(name = "api_db")]
    ApiDb {
        #[command(subcommand)]
        cmd: ApiDbCmd,
    },
}

#[derive(Subcommand)]
enum ApiDbCmd {
    /// Apply pending migrations to the API database.
    Sync,
    /// Print the API database's schema version.
    Version,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build a tiny bootable Linux disk from this machine's kernel and busybox, upload it, print its id.
    ///
    /// Credentials come from the OS_* environment, or from the openrc in the state directory.
    CreateTestImage {
        #[arg(long, default_value = "tessera-test-image")]
        name: String,
        #[arg(long, value_parser = ["raw", "qcow2"], default_value = "raw")]
        disk_format: String,
        /// Visible to the uploading project only (default: public).
        #[arg(long)]
        private: bool,
        /// Where to look for vmlinuz-* (the newest is used).
        #[arg(long, default_value = "/boot", value_name = "DIR")]
        boot_dir: PathBuf,
        /// Use this kernel instead.
        #[arg(long, value_name = "FILE")]
        kernel: Option<PathBuf>,
        /// A statically linked busybox (default /bin/busybox).
        #[arg(long, value_name = "FILE")]
        busybox: Option<PathBuf>,
        /// Also write the disk to this file.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Only build (with --output).
        #[arg(long)]
        no_upload: bool,
    },
}

#[derive(Subcommand)]
enum DbCmd {
    /// Apply pending schema migrations (service databases, API database, this host's cell and every mapped
    /// cell).
    Sync {
        /// Only this host's cell database ([database] connection).
        #[arg(long = "local_cell")]
        local_cell: bool,
    },
    /// Print the schema version.
    Version,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the sample configuration (every option, its type, default and help).
    Sample,
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let level = if cfg.get_bool("DEFAULT", "debug") {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    let filter = Targets::new()
        .with_default(level)
        .with_target("sqlx", LevelFilter::WARN);
    let json = cfg.get_str("DEFAULT", "log_format") == "json";
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        tracing_subscriber::registry()
            .with(fmt.json().with_filter(filter))
            .init();
    } else {
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .init();
    }
}

fn load(path: Option<&PathBuf>) -> Result<Config, StartError> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::defaults()),
    }
}

fn signal_shutdown(shutdown: Shutdown) {
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("stopping");
        shutdown.trigger();
    });
}

async fn run(cli: Cli) -> Result<(), StartError> {
    match cli.command {
        Command::Config {
            cmd: ConfigCmd::Sample,
        } => {
            print!("{}", tessera_config::sample());
            Ok(())
        }
        Command::AllInOne {
            state_dir,
            cells,
            hosts_per_cell,
        } => {
            let started = std::time::Instant::now();
            let mut cfg = aio::prepare_config(cli.config.as_deref(), state_dir.as_deref())?;
            if let Some(n) = cells {
                cfg.set("all_in_one", "cells", n.to_string())
                    .map_err(StartError::Usage)?;
            }
            if let Some(m) = hosts_per_cell {
                cfg.set("all_in_one", "hosts_per_cell", m.to_string())
                    .map_err(StartError::Usage)?;
            }
            init_logging(&cfg);
            let shutdown = Shutdown::new();
            signal_shutdown(shutdown.clone());
            let a = aio::start(cfg, &shutdown).await?;
            let dir = a.state_dir.display();
            let cells: Vec<String> = a.cells.iter().filter_map(|c| c.name.clone()).collect();
            let cells = format!("{} ({} compute hosts)", cells.join(", "), a.computes.len());
            println!(
                "tessera all-in-one ready in {} ms: identity {} | image {} | placement {} | network {} | compute {}/v2.1 | cells {} | admin password in {dir}/admin-password | use: source {dir}/openrc  (or: export OS_CLIENT_CONFIG_FILE={dir}/clouds.yaml OS_CLOUD=tessera)",
                started.elapsed().as_millis(),
                a.auth_url(),
                a.image.base_url,
                a.placement.base_url,
                a.network.base_url,
                a.compute.base_url,
                cells
            );
            if a.network_agent.data_plane {
                println!("network data plane on (bridges, DHCP, routers, security groups)");
            } else {
                println!(
                    "network data plane OFF ({}): the Networking API works, ports stay DOWN",
                    a.network_agent.notes.join("; ")
                );
            }
            let _ = a.identity.task.await;
            Ok(())
        }
        Command::Serve { roles: names } => {
            roles::check_roles(&names)?;
            let cfg = load(cli.config.as_ref())?;
            init_logging(&cfg);
            let shutdown = Shutdown::new();
            signal_shutdown(shutdown.clone());
            let has = |r: &str| names.iter().any(|n| n == r);
            let mut tasks = Vec::new();
            let buses = std::sync::Arc::new(tessera_bus::Buses::new());
            // Conductor and compute roles need no identity: a compute host holds bus and placement
            // credentials only.
            if has("conductor") {
                let what = tessera::serve::conductor(&cfg, &buses, &shutdown).await?;
                println!("tessera: {what}");
            }
            if has("compute") {
                let what = tessera::serve::compute(&cfg, &buses, &shutdown).await?;
                println!("tessera: {what}");
            }
            if has("network-agent") {
                let what = tessera::serve::network_agent(&cfg, &shutdown).await?;
                println!("tessera: {what}");
            }
            if !["identity", "image", "placement", "network", "api"]
                .iter()
                .any(|r| has(r))
            {
                println!("tessera serving {}", names.join(", "));
                shutdown.wait().await;
                return Ok(());
            }
            // The HTTP roles validate tokens with the identity service's validator (shared key repository
            // and identity database); only `identity` serves the Identity API.
            let db = roles::open_identity_db(&cfg, false).await?;
            let id = if has("identity") {
                let r = roles::start_identity(&cfg, db, &shutdown).await?;
                println!("tessera: identity {}/v3", r.base_url);
                tasks.push(r.task);
                r.identity
            } else {
                let keys = tessera_identity::fernet::KeyRing::open(&roles::key_repository(&cfg))?;
                let id =
                    tessera_identity::Identity::new(db, keys, tessera_identity::Settings::from_config(&cfg))
                        .await?;
                id.spawn_poller(shutdown.subscribe());
                id
            };
            let identity_uri = match id.settings.public_endpoint.clone() {
                Some(pe) => format!("{pe}/v3"),
                None => format!(
                    "http://{}:{}/v3",
                    roles::public_host(&cfg),
                    cfg.get_port("identity", "bind_port")
                ),
            };
            if names.iter().any(|n| n == "image") {
                let db = roles::open_image_db(&cfg, false).await?;
                let r = roles::start_image(&cfg, db, &id, &identity_uri, &shutdown).await?;
                println!("tessera: image {}", r.base_url);
                tasks.push(r.task);
            }
            if names.iter().any(|n| n == "placement") {
                let db = roles::open_placement_db(&cfg, false).await?;
                let r = roles::start_placement(&cfg, db, &id, &identity_uri, &shutdown).await?;
                println!("tessera: placement {}", r.base_url);
                tasks.push(r.task);
            }
            if has("network") {
                let db = roles::open_network_db(&cfg, false).await?;
                let r = roles::start_network(&cfg, db, &id, &identity_uri, &shutdown).await?;
                match tessera::serve::nova_session(&cfg)? {
                    Some(session) => r
                        .service
                        .set_notifier(std::sync::Arc::new(roles::ComputeEvents { session })),
                    None => tracing::warn!(
                        "[nova] auth_url is empty: servers are not told when their ports change"
                    ),
                }
                println!("tessera: network {}", r.base_url);
                tasks.push(r.task);
            }
            if has("api") {
                let api_db =
                    roles::open_db(&cfg, "api_database", &tessera_db::compute::API_MIGRATIONS, false).await?;
                let placement = tessera::serve::placement_client(&cfg, "api")?;
                let r =
                    roles::start_compute_api(&cfg, api_db, &id, &identity_uri, Some(placement), &shutdown)
                        .await?;
                r.api.wire_boot(tessera_compute::api::servers::BootWiring {
                    api_bus: buses
                        .get(&cfg.get_str("DEFAULT", "transport_url"))
                        .map_err(|e| StartError::Failed(format!("[DEFAULT] transport_url: {e}")))?,
                    buses: buses.clone(),
                    network: Some(tessera::serve::network_client(&cfg, "api")?),
                });
                println!("tessera: compute {}/v2.1", r.base_url);
                tasks.push(r.task);
            }
            println!("tessera serving {}", names.join(", "));
            for t in tasks {
                let _ = t.await;
            }
            Ok(())
        }
        Command::Manage { cmd } => {
            let cfg = load(cli.config.as_ref())?;
            match cmd {
                ManageCmd::Db {
                    cmd: DbCmd::Sync { local_cell },
                } => manage::db_sync(&cfg, local_cell).await,
                ManageCmd::CellV2 { cmd } => manage::cell_v2(&cfg, cmd).await,
                ManageCmd::ApiDb { cmd: ApiDbCmd::Sync } => manage::api_db_sync(&cfg).await,
                ManageCmd::ApiDb {
                    cmd: ApiDbCmd::Version,
                } => manage::api_db_version(&cfg).await,
                ManageCmd::Db { cmd: DbCmd::Version } => manage::db_version(&cfg).await,
                ManageCmd::Bootstrap {
                    username,
                    password,
                    project,
                    region,
                    public_url,
                    internal_url,
                    admin_url,
                } => {
                    let mut eps = Vec::new();
                    for (i, u) in [
                        ("public", public_url),
                        ("internal", internal_url),
                        ("admin", admin_url),
                    ] {
                        if let Some(u) = u {
                            eps.push((i.to_string(), u));
                        }
                    }
                    let p = BootstrapParams {
                        admin_username: username,
                        admin_password: password,
                        project_name: project,
                        region_id: region,
                        identity_endpoints: eps,
                        services: Vec::new(),
                    };
                    manage::bootstrap(&cfg, p).await
                }
                ManageCmd::FernetSetup => manage::fernet_setup(&cfg),
                ManageCmd::FernetRotate => manage::fernet_rotate(&cfg),
                ManageCmd::Image {
                    cmd:
                        ImageCmd::CreateTestImage {
                            name,
                            disk_format,
                            private,
                            boot_dir,
                            kernel,
                            busybox,
                            output,
                            no_upload,
                        },
                } => {
                    let o = tessera::testimage::Options {
                        name,
                        disk_format,
                        visibility: if private { "private" } else { "public" }.into(),
                        boot_dir,
                        kernel,
                        busybox,
                        output,
                        no_upload,
                        ..Default::default()
                    };
                    tessera::testimage::create_test_image(&cfg, o).await
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::Exit(code)) => ExitCode::from(code),
        Err(StartError::Usage(m)) => {
            eprintln!("tessera: {m}");
            ExitCode::from(2)
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("tessera: {msg}");
            ExitCode::FAILURE
        }
    }
}
