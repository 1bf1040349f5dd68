//! `tessera manage …`: database sync, Keystone's bootstrap and Fernet key management.

use crate::{roles, StartError};
use tessera_config::Config;
use tessera_identity::{fernet, BootstrapParams, Identity, Settings};

/// Every database this build owns: (config group, migrations).
const DATABASES: &[(&str, &tessera_db::MigrationSet)] = &[
    ("identity_database", &tessera_db::identity::MIGRATIONS),
    ("image_database", &tessera_db::image::MIGRATIONS),
    ("placement_database", &tessera_db::placement::MIGRATIONS),
];

/// `manage db sync`: bring every database this build owns to the latest schema.
pub async fn db_sync(cfg: &Config) -> Result<(), StartError> {
    for (group, set) in DATABASES {
        let db = tessera_db::Db::connect(&cfg.get_str(group, "connection"), 1).await?;
        let applied = db.migrate(set).await?;
        println!(
            "{} database {}: schema version {} ({} migration(s) applied)",
            set.name,
            db.url_masked(),
            db.schema_version(set).await?,
            applied.len()
        );
        db.close().await;
    }
    Ok(())
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
