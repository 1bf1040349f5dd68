//! The Compute service. Today: the Cells v2 records — cell, host and instance mappings in the API database
//! ([`cells`]) and the few cell-database reads and writes that `manage cell_v2` needs ([`celldb`]).

pub mod agent;
pub mod aggregates;
pub mod api;
pub mod boot;
pub mod celldb;
pub mod cells;
pub mod cellv2;
pub mod conductor;
pub mod flavors;
pub mod groups;
pub mod keypairs;
pub mod network;
pub mod placement_client;
pub mod scheduler;
pub mod vif;
pub mod virt;

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error(transparent)]
    Db(#[from] tessera_db::DbError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// A unique key was already taken (a host mapped twice, a cell uuid reused).
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("{0}")]
    NotFound(String),
    /// A request that cannot be honoured as asked (the API answers 400 with the message).
    #[error("{0}")]
    Invalid(String),
    /// A quota would be exceeded (the API answers 403 with the message).
    #[error("{0}")]
    OverQuota(String),
}

pub type Result<T, E = ComputeError> = std::result::Result<T, E>;

pub(crate) fn dup_or(e: sqlx::Error, what: impl FnOnce() -> String) -> ComputeError {
    if tessera_db::is_unique_violation(&e) {
        ComputeError::Duplicate(what())
    } else {
        e.into()
    }
}
