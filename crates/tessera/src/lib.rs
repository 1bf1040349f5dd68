//! Assembly of Tessera's roles: what `tessera serve <role>…` and `tessera all-in-one` start, shared with the
//! test harness so tests run exactly what operators run. No domain logic lives here.

pub mod aio;
pub mod manage;
pub mod roles;
pub mod serve;
pub mod testimage;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] tessera_config::ConfigError),
    #[error(transparent)]
    Db(#[from] tessera_db::DbError),
    #[error(transparent)]
    Keys(#[from] tessera_identity::fernet::KeyError),
    #[error("identity: {0}")]
    Identity(#[from] tessera_identity::error::IdentityError),
    #[error("image: {0}")]
    Image(#[from] tessera_image::error::ImageError),
    #[error("placement: {0}")]
    Placement(#[from] tessera_placement::error::PlacementError),
    #[error("compute: {0}")]
    Compute(#[from] tessera_compute::ComputeError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    /// A command that could not do its job (exit status 1).
    #[error("{0}")]
    Failed(String),
    /// A command that has said what it had to and ends with this exit status (nova-manage's codes).
    #[error("exit status {0}")]
    Exit(u8),
}

pub fn io_err(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StartError {
    let path = path.into();
    move |source| StartError::Io { what, path, source }
}

/// A shutdown signal shared by every task of a process.
#[derive(Clone)]
pub struct Shutdown {
    tx: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            tx: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.tx.subscribe()
    }
    /// Resolves when shutdown is triggered.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.subscribe();
        async move {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}
