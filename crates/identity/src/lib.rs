//! The Identity service: a Keystone v3 subset that the unmodified `openstack` CLI, openstacksdk and
//! keystoneauth accept. Tokens are Fernet tokens over a key repository shared by every process; the
//! database holds users, projects, roles, assignments, the catalog, application credentials and revocation
//! events. [`Identity::validator`] is what other services' auth layers use in the same process.

pub mod api;
pub mod error;
pub mod fernet;
pub mod hash;
pub mod policy;
pub mod store;
pub mod token;
mod validate;

use crate::error::{IdentityError, Result};
use crate::store::RevocationEvent;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tessera_config::Config;
use tessera_db::Db;
use tessera_http::auth::{TokenError, TokenValidator};
use tessera_types::RequestContext;

/// Settings read from the config once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub expiration: Duration,
    pub allow_expired_window: Duration,
    pub cache_time: Duration,
    pub allow_rescope: bool,
    pub methods: Vec<String>,
    pub default_domain_id: String,
    pub public_endpoint: Option<String>,
    pub list_limit: usize,
    pub hash: hash::HashParams,
    pub poll_interval: Duration,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Self {
        let pe = cfg.get_str("identity", "public_endpoint");
        Self {
            expiration: Duration::from_secs(cfg.get_int("token", "expiration") as u64),
            allow_expired_window: Duration::from_secs(cfg.get_int("token", "allow_expired_window") as u64),
            cache_time: Duration::from_secs(cfg.get_int("token", "cache_time") as u64),
            allow_rescope: cfg.get_bool("token", "allow_rescope_scoped_token"),
            methods: cfg.get_list("auth", "methods"),
            default_domain_id: cfg.get_str("identity", "default_domain_id"),
            public_endpoint: if pe.is_empty() {
                None
            } else {
                Some(pe.trim_end_matches('/').to_string())
            },
            list_limit: cfg.get_int("identity", "list_limit") as usize,
            hash: hash::HashParams {
                memory_kib: cfg.get_int("identity", "password_hash_memory_kib") as u32,
                iterations: cfg.get_int("identity", "password_hash_iterations") as u32,
            },
            poll_interval: Duration::from_secs(cfg.get_int("token", "revocation_poll_interval").max(1) as u64),
        }
    }
}

/// One Identity service instance.
pub struct Identity {
    pub db: Db,
    pub keys: fernet::KeyRing,
    pub settings: Settings,
    /// Bumped on every identity change seen by this process; cached validations of older generations are
    /// void.
    generation: AtomicU64,
    /// Last `identity_revision` read from the database.
    seen_revision: AtomicI64,
    pub(crate) cache: RwLock<token::TokenCache>,
    pub(crate) revocations: RwLock<(u64, Arc<Vec<RevocationEvent>>)>,
}

impl Identity {
    /// Open the service over an already migrated database and an existing key repository.
    pub async fn new(db: Db, keys: fernet::KeyRing, settings: Settings) -> Result<Arc<Self>> {
        let rev = store::revision(&db).await?;
        Ok(Arc::new(Self {
            db,
            keys,
            settings,
            generation: AtomicU64::new(1),
            seen_revision: AtomicI64::new(rev),
            cache: RwLock::new(Default::default()),
            revocations: RwLock::new((0, Arc::new(Vec::new()))),
        }))
    }

    pub fn current_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Something changed: cached validations and revocation lists are stale.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Notice changes made by other processes sharing the database (one cheap query per interval).
    pub async fn poll_revision(&self) -> Result<()> {
        let rev = store::revision(&self.db).await?;
        if self.seen_revision.swap(rev, Ordering::AcqRel) != rev {
            self.changed();
        }
        Ok(())
    }

    /// Run [`poll_revision`](Self::poll_revision) every `poll_interval` until `shutdown` fires.
    pub fn spawn_poller(
        self: &Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.settings.poll_interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = me.poll_revision().await {
                            tracing::warn!(error = ?e, "cannot read the identity revision");
                        }
                    }
                    _ = shutdown.changed() => return,
                }
            }
        })
    }

    /// The validator other services' auth layers use.
    pub fn validator(self: &Arc<Self>) -> Arc<dyn TokenValidator> {
        Arc::new(LocalValidator(self.clone()))
    }

    /// Hash a password with the configured parameters.
    pub async fn hash_password(&self, password: &str) -> Result<String> {
        hash::hash(self.settings.hash, password.to_string()).await
    }
}

/// Validates tokens in-process: keys from the shared repository, revocations and roles from the database,
/// with the validation cache in front.
pub struct LocalValidator(pub Arc<Identity>);

#[async_trait::async_trait]
impl TokenValidator for LocalValidator {
    async fn validate(
        &self,
        token: &str,
        allow_expired: bool,
    ) -> std::result::Result<RequestContext, TokenError> {
        match self.0.validate_token(token, allow_expired).await {
            Ok(m) => Ok(m.context()),
            Err(IdentityError::Db(e)) => Err(TokenError::Backend(e.to_string())),
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// A service and its endpoints, as bootstrap registers it.
#[derive(Debug, Clone)]
pub struct CatalogService {
    pub service_type: String,
    pub name: String,
    /// (interface, url)
    pub endpoints: Vec<(String, String)>,
}

/// What `tessera manage bootstrap` creates.
#[derive(Debug, Clone)]
pub struct BootstrapParams {
    pub admin_username: String,
    pub admin_password: String,
    pub project_name: String,
    pub region_id: String,
    /// (interface, url) of the identity endpoints.
    pub identity_endpoints: Vec<(String, String)>,
    /// Other services to register.
    pub services: Vec<CatalogService>,
}

pub mod bootstrap;
