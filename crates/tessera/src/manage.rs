//! `tessera manage …`: database sync, Keystone's bootstrap and Fernet key management.

use crate::{roles, StartError};
use tessera_config::Config;
use tessera_identity::{fernet, BootstrapParams, Identity, Settings};

/// Open the identity database without checking its schema (the `db` commands are what fix it).
async fn identity_db(cfg: &Config) -> Result<tessera_db::Db, StartError> {
    Ok(tessera_db::Db::connect(&cfg.get_str("identity_database", "connection"), 1).await?)
}

/// `manage db sync`: bring every database this build owns to the latest schema.
pub async fn db_sync(cfg: &Config) -> Result<(), StartError> {
    let db = identity_db(cfg).await?;
    let applied = db.migrate(&tessera_db::identity::MIGRATIONS).await?;
    println!(
        "identity database {}: schema version {} ({} migration(s) applied)",
        db.url_masked(),
        db.schema_version().await?,
        applied.len()
    );
    Ok(())
}

/// `manage db version`.
pub async fn db_version(cfg: &Config) -> Result<(), StartError> {
    let db = identity_db(cfg).await?;
    println!(
        "identity {} (this binary: {})",
        db.schema_version().await?,
        tessera_db::identity::MIGRATIONS.latest()
    );
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
