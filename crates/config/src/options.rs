//! Every option Tessera reads, in one static registry. Names follow the oslo.config names Nova, Keystone
//! and Placement operators already know. The sample config (`etc/tessera.conf.sample`) is generated from
//! this table, so an option exists exactly when it is listed here.

use crate::{OptDef, OptType};

const fn opt(
    group: &'static str,
    name: &'static str,
    ty: OptType,
    default: &'static str,
    help: &'static str,
) -> OptDef {
    OptDef {
        group,
        name,
        ty,
        default,
        help,
        secret: false,
    }
}

const fn secret(
    group: &'static str,
    name: &'static str,
    ty: OptType,
    default: &'static str,
    help: &'static str,
) -> OptDef {
    OptDef {
        group,
        name,
        ty,
        default,
        help,
        secret: true,
    }
}

/// Group order in the sample file.
pub const GROUPS: &[(&str, &str)] = &[
    ("DEFAULT", "Options shared by every role."),
    ("identity", "The Identity (Keystone v3) service."),
    ("identity_database", "The Identity service's database."),
    ("token", "Token issue and validation."),
    ("fernet_tokens", "The Fernet key repository."),
    ("auth", "Authentication methods."),
    (
        "bootstrap",
        "What `tessera manage bootstrap` and `all-in-one` create on first start.",
    ),
    ("image", "The Image (Glance v2) service."),
    ("image_database", "The Image service's database."),
    (
        "image_cache",
        "Compute hosts' cache of base images (Nova's [image_cache] group).",
    ),
    ("placement", "The Placement service."),
    ("placement_database", "The Placement service's database."),
    ("database", "The cell database (Nova's [database] group)."),
    ("api_database", "The API database (Nova's [api_database] group)."),
    (
        "all_in_one",
        "What `tessera all-in-one` runs besides the services.",
    ),
];

pub const OPTIONS: &[OptDef] = &[
    // [DEFAULT]
    opt("DEFAULT", "state_path", OptType::Str, "./tessera-data",
        "Directory where Tessera keeps its state (SQLite databases, keys, generated files). `$state_path` in other options expands to it."),
    opt("DEFAULT", "host", OptType::Str, "",
        "Name of this host as services report it. Empty means the machine's hostname."),
    opt("DEFAULT", "bind_host", OptType::Str, "127.0.0.1",
        "Address the HTTP APIs listen on."),
    opt("DEFAULT", "public_host", OptType::Str, "",
        "Host name or address put in catalog endpoint URLs. Empty means bind_host (or 127.0.0.1 when bind_host is a wildcard)."),
    opt("DEFAULT", "instances_path", OptType::Str, "$state_path/instances",
        "Directory where a compute host keeps instance disks; the image cache lives in its [image_cache] subdirectory_name."),
    opt("DEFAULT", "debug", OptType::Bool, "false",
        "Log at debug level."),
    opt("DEFAULT", "log_format", OptType::Enum(&["text", "json"]), "text",
        "Log line format: human-readable text or one JSON object per line."),
    opt("DEFAULT", "transport_url", OptType::Str, "inproc://",
        "Message bus of this host's cell: `inproc://` (inside one process) or `rabbit://user:pass@host:5672/vhost`."),
    // [identity]
    opt("identity", "bind_port", OptType::Port, "5000",
        "Port of the Identity API."),
    opt("identity", "public_endpoint", OptType::Str, "",
        "Base URL clients use to reach the Identity API (as Keystone's [DEFAULT] public_endpoint). Empty means derived from the request."),
    opt("identity", "default_domain_id", OptType::Str, "default",
        "Id of the domain used when a request names none."),
    opt("identity", "list_limit", OptType::Int { min: 0, max: i64::MAX }, "0",
        "Maximum number of entities a list returns; 0 means no limit. Truncated lists carry `truncated: true`."),
    opt("identity", "password_hash_memory_kib", OptType::Int { min: 1024, max: 4_194_304 }, "19456",
        "Argon2id memory cost in KiB for password and secret hashes."),
    opt("identity", "password_hash_iterations", OptType::Int { min: 1, max: 100 }, "2",
        "Argon2id time cost (iterations) for password and secret hashes."),
    // [identity_database]
    secret("identity_database", "connection", OptType::Str, "sqlite:///$state_path/identity.sqlite",
        "Database URL of the Identity service: sqlite:///PATH, postgresql://USER:PASS@HOST/DB or mysql://USER:PASS@HOST/DB (SQLAlchemy forms such as mysql+pymysql:// are accepted)."),
    opt("identity_database", "max_pool_size", OptType::Int { min: 1, max: 1000 }, "8",
        "Maximum number of open database connections."),
    // [token]
    opt("token", "expiration", OptType::Int { min: 60, max: 31_536_000 }, "3600",
        "Lifetime of a token, in seconds."),
    opt("token", "allow_expired_window", OptType::Int { min: 0, max: 31_536_000 }, "172800",
        "How long after expiry a token is still accepted by validations that ask for allow_expired, in seconds."),
    opt("token", "allow_rescope_scoped_token", OptType::Bool, "true",
        "Whether a scoped token may be exchanged for a token with another scope."),
    opt("token", "cache_time", OptType::Int { min: 0, max: 86_400 }, "300",
        "Seconds a validated token stays in the in-memory validation cache. Identity writes and revocations empty the cache at once in this process and within revocation_poll_interval in others."),
    opt("token", "revocation_poll_interval", OptType::Int { min: 1, max: 3600 }, "2",
        "Seconds between checks of the database for identity changes made by other processes."),
    // [fernet_tokens]
    opt("fernet_tokens", "key_repository", OptType::Str, "$state_path/fernet-keys",
        "Directory of Fernet keys: 0 is the staged key, the highest number the primary, others secondary."),
    opt("fernet_tokens", "max_active_keys", OptType::Int { min: 1, max: 1000 }, "3",
        "Number of keys kept by fernet_rotate (staged + primary + secondaries)."),
    // [auth]
    opt("auth", "methods", OptType::List, "password,token,application_credential",
        "Authentication methods accepted by POST /v3/auth/tokens."),
    // [bootstrap]
    opt("bootstrap", "admin_username", OptType::Str, "admin", "Name of the bootstrap admin user."),
    secret("bootstrap", "admin_password", OptType::Str, "",
        "Password of the bootstrap admin user. Empty: all-in-one generates one and keeps it in $state_path/admin-password."),
    opt("bootstrap", "project_name", OptType::Str, "admin", "Name of the bootstrap admin project."),
    opt("bootstrap", "region_id", OptType::Str, "RegionOne", "Region created by bootstrap."),
    // [image]
    opt("image", "bind_port", OptType::Port, "9292", "Port of the Image API."),
    opt("image", "filesystem_store_datadir", OptType::Str, "$state_path/images",
        "Directory where image data is stored (Glance's [glance_store] filesystem_store_datadir)."),
    opt("image", "image_size_cap", OptType::Int { min: 0, max: i64::MAX }, "1099511627776",
        "Largest image, in bytes, that may be uploaded."),
    opt("image", "user_storage_quota", OptType::Int { min: 0, max: i64::MAX }, "0",
        "Bytes of image data a project may store; 0 means no limit."),
    opt("image", "image_count_quota", OptType::Int { min: 0, max: i64::MAX }, "0",
        "Number of images a project may have; 0 means no limit."),
    opt("image", "limit_param_default", OptType::Int { min: 1, max: 100_000 }, "25",
        "Page size of image lists when the request names no limit."),
    opt("image", "api_limit_max", OptType::Int { min: 1, max: 100_000 }, "1000",
        "Largest page size of image lists."),
    // [image_cache]
    opt("image_cache", "subdirectory_name", OptType::Str, "_base",
        "Subdirectory of instances_path holding cached base images, one file per image data hash."),
    opt("image_cache", "manager_interval", OptType::Int { min: 0, max: 86_400 * 365 }, "2400",
        "Seconds between passes of the cache cleaner on a compute host; 0 disables it."),
    opt("image_cache", "remove_unused_base_images", OptType::Bool, "true",
        "Whether the cleaner removes cached images that no instance disk on the host uses."),
    opt("image_cache", "remove_unused_original_minimum_age_seconds", OptType::Int { min: 0, max: i64::MAX }, "86400",
        "An unused cached image is removed only when it was last used at least this many seconds ago."),
    // [placement]
    opt("placement", "bind_port", OptType::Port, "8778", "Port of the Placement API."),
    opt("placement", "max_allocation_candidates", OptType::Int { min: -1, max: i64::MAX }, "-1",
        "Most allocation candidates generated per request before `limit` applies; -1 means no cap."),
    opt("placement", "allocation_conflict_retry_count", OptType::Int { min: 0, max: 1000 }, "10",
        "Times a claim is retried when a concurrent write to one of its providers wins the race."),
    opt("placement", "incomplete_consumer_project_id", OptType::Str, "00000000-0000-0000-0000-000000000000",
        "Project recorded for consumers written before microversion 1.8 (which carries none)."),
    opt("placement", "incomplete_consumer_user_id", OptType::Str, "00000000-0000-0000-0000-000000000000",
        "User recorded for consumers written before microversion 1.8 (which carries none)."),
    // [placement_database]
    secret("placement_database", "connection", OptType::Str, "sqlite:///$state_path/placement.sqlite",
        "Database URL of the Placement service."),
    opt("placement_database", "max_pool_size", OptType::Int { min: 1, max: 1000 }, "8",
        "Connections kept to the placement database."),
    // [image_database]
    secret("image_database", "connection", OptType::Str, "sqlite:///$state_path/image.sqlite",
        "Database URL of the Image service."),
    opt("image_database", "max_pool_size", OptType::Int { min: 1, max: 1000 }, "8",
        "Maximum number of open database connections."),
    // [database] / [api_database]: the cell and API databases of the compute service (used from the Cells v2 issue on).
    secret("database", "connection", OptType::Str, "sqlite:///$state_path/cell1.sqlite",
        "Database URL of this host's cell."),
    secret("api_database", "connection", OptType::Str, "sqlite:///$state_path/nova_api.sqlite",
        "Database URL of the API database."),
    // [all_in_one]
    opt("all_in_one", "cells", OptType::Int { min: 1, max: 64 }, "1",
        "Number of cells (besides cell0) all-in-one runs, each with its own database and in-process bus (`inproc://cellN`), created as `manage cell_v2 create_cell` creates cells. Databases: cellN.sqlite beside the [database] connection's cell1.sqlite, or its database name with `_cellN` appended. `--cells` overrides it."),
];
