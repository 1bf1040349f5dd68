//! Storage layer shared by every service: one [`Db`] handle over SQLite, PostgreSQL or MySQL/MariaDB chosen by
//! URL at run time (sqlx's `Any` driver, so every query runs through the same code path on all three),
//! placeholder rewriting for PostgreSQL, per-database versioned migrations, and SQLite tuning (WAL, busy
//! timeout, foreign keys).
//!
//! Conventions that keep one SQL text portable: integers (booleans included, as 0/1) are `BIGINT` and read as
//! `i64`; timestamps are epoch microseconds in `BIGINT`; ids and names are `VARCHAR(n)`; long text is `TEXT`;
//! placeholders are written `?`.

mod batch;
mod combine;
mod lease;
pub use batch::{bind_vals, BatchJob, BulkPart, JobFuture, Statements, Tail, TailFuture, Val, BULK_KEY};
pub use lease::Lease;
pub mod compute;
pub mod identity;
pub mod image;
mod migrate;
pub mod network;
pub mod placement;
mod url;

pub use migrate::{Migration, MigrationSet};
pub use sqlx::any::AnyRow;
pub use sqlx::{Any, Row, Transaction};
pub use url::{normalize_url, Dialect};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Connection, Executor};
use std::borrow::Cow;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL '{0}': use sqlite:///PATH, postgresql://… or mysql://…")]
    BadUrl(String),
    #[error("cannot open database {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migration {version} ({name}) of the {set} database failed")]
    Migration {
        set: &'static str,
        version: i64,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the {set} database is at schema version {found}, newer than this binary knows ({known})")]
    SchemaTooNew {
        set: &'static str,
        found: i64,
        known: i64,
    },
    #[error("database error")]
    Sqlx(#[from] sqlx::Error),
    /// A batched write transaction could not be committed (the reason as text: it is shared by its jobs).
    #[error("write transaction failed: {0}")]
    Batch(String),
}

impl DbError {
    /// Whether the error is a unique-constraint violation (a duplicate).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlx(e) => is_unique_violation(e),
            _ => false,
        }
    }
}

/// Whether a sqlx error is a unique-constraint violation, on any of the three engines.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            if d.is_unique_violation() {
                return true;
            }
            // The Any driver does not always carry the kind through; fall back on the engines' codes.
            let code = d.code().map(|c| c.to_string()).unwrap_or_default();
            code == "23505" || code == "1062" || code == "2067" || code == "1555" || code == "23000"
        }
        _ => false,
    }
}

/// How a pool's connections are set up beyond the defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectOptions {
    /// PostgreSQL: plan each prepared statement once per connection (`plan_cache_mode =
    /// force_generic_plan`, PostgreSQL 12 and later) rather than again for each execution's values — wasted
    /// work where statements are keyed lookups and writes (placement: ~5% more provider creations a second).
    pub pg_generic_plans: bool,
}

/// A pool on one database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    /// SQLite files only: one connection that every write transaction goes through. SQLite admits one
    /// writer at a time anyway; queueing writers here (instead of letting them meet the file lock and sleep
    /// in SQLite's busy handler) keeps the writer's page cache warm and makes writes fair and prompt.
    writer: Option<AnyPool>,
    dialect: Dialect,
    url_masked: String,
    /// The group-commit queue ([`Db::write_batched`]), started on first use.
    batch: std::sync::Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<batch::Queued>>>,
    /// Idle connections for [`Db::lease`].
    leases: lease::FreeList,
    /// Calls waiting for [`Db::call_combined`].
    combiner: std::sync::Arc<combine::Combiner>,
}

impl Db {
    /// Open a database by URL (any accepted form), creating the SQLite file if needed.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        Self::connect_with(url, max_connections, ConnectOptions::default()).await
    }

    /// [`Db::connect`], with the connections set up as `opts` says.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        opts: ConnectOptions,
    ) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let (dialect, sqlx_url) = normalize_url(url)?;
        if dialect == Dialect::Sqlite {
            if let Some(parent) =
                url::sqlite_path(&sqlx_url).and_then(|p| p.parent().map(|p| p.to_path_buf()))
            {
                if !parent.as_os_str().is_empty() {
                    let _ = std::fs::create_dir_all(parent);
                }
            }
        }
        let masked = tessera_types::mask_url(url);
        // A SQLite connection is a thread of its own running queries in-process, on a CPU: more of them than
        // the CPUs add threads, malloc arenas and page caches, not throughput (placement at 10,000 providers on
        // 2 CPUs, 2 readers against 4: the same write rates, ~2 MB less RSS).
        let max_connections = if dialect == Dialect::Sqlite {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
            max_connections.min(cpus.max(2))
        } else {
            max_connections
        };
        let generic_plans = opts.pg_generic_plans;
        let options = |n: u32| {
            let mut opts = AnyPoolOptions::new()
                .max_connections(n.max(1))
                .acquire_timeout(Duration::from_secs(30))
                // Pinged before use only after a second idle (a server restart or a dropped socket shows there),
                // not before every use: a ping is a round trip, and a busy service acquires a connection for
                // every statement outside a transaction. A SQLite connection is a file handle: never pinged.
                .test_before_acquire(false);
            if dialect != Dialect::Sqlite {
                opts = opts.before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for < Duration::from_secs(1) {
                            return Ok(true);
                        }
                        // A dead connection is dropped and another one tried.
                        Ok(conn.ping().await.is_ok())
                    })
                });
            }
            if dialect == Dialect::Postgres && generic_plans {
                opts = opts.after_connect(|conn, _meta| {
                    Box::pin(async move {
                        // A setting PostgreSQL 12 brought; older servers keep their default.
                        conn.execute(
                            "SELECT set_config('plan_cache_mode', 'force_generic_plan', false) \
                             WHERE current_setting('server_version_num')::int >= 120000",
                        )
                        .await?;
                        Ok(())
                    })
                });
            }
            if dialect == Dialect::Sqlite {
                opts = opts.after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        // 128 KiB of page cache per connection (SQLite's default is 2 MiB): a database has up to
                        // CPUs + 1 connections (at least 3), each filling its own cache, and misses are served from the
                        // kernel's page cache (placement at 10,000 providers: 1.7 MB less RSS than with 512 KiB,
                        // the same write rate).
                        conn.execute("PRAGMA cache_size = -128").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        Ok(())
                    })
                });
            }
            opts
        };
        let connect_err = |source| DbError::Connect {
            url: masked.clone(),
            source,
        };
        let pool = options(max_connections)
            .connect(&sqlx_url)
            .await
            .map_err(connect_err)?;
        // An in-memory database is private to its connection: no separate writer there. The writer connects
        // at its first write (the pool above has opened the file already): a process that only reads a
        // database (the identity database behind another role's token checks) keeps no writer thread.
        let writer = if dialect == Dialect::Sqlite && !sqlx_url.contains(":memory:") {
            Some(options(1).connect_lazy(&sqlx_url).map_err(connect_err)?)
        } else {
            None
        };
        Ok(Self {
            pool,
            writer,
            dialect,
            url_masked: masked,
            batch: Default::default(),
            leases: Default::default(),
            combiner: Default::default(),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool of SQLite's one writer connection (a file database only).
    pub(crate) fn sqlite_writer(&self) -> Option<&AnyPool> {
        self.writer.as_ref()
    }

    /// The URL with its password masked, for logs.
    pub fn url_masked(&self) -> &str {
        &self.url_masked
    }

    /// Rewrite `?` placeholders for the engine (PostgreSQL wants `$1, $2…`).
    pub fn sql<'a>(&self, q: &'a str) -> Cow<'a, str> {
        rewrite_placeholders(self.dialect, q)
    }

    /// `expr` cast to a 64-bit integer (aggregates like SUM return NUMERIC/DECIMAL on PostgreSQL and MySQL,
    /// which the `Any` driver cannot decode).
    pub fn bigint(&self, expr: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("CAST({expr} AS BIGINT)"),
            Dialect::MySql => format!("CAST({expr} AS SIGNED)"),
            Dialect::Sqlite => format!("CAST({expr} AS INTEGER)"),
        }
    }

    pub async fn begin(&self) -> Result<Transaction<'static, Any>, DbError> {
        Ok(self.pool.begin().await?)
    }

    /// A transaction that will write: on SQLite it takes the write lock up front (`BEGIN IMMEDIATE`, waiting
    /// up to the busy timeout), so a transaction that has read can never fail to upgrade to a writer because
    /// another one committed in between; elsewhere a plain `BEGIN` (row locks do that job).
    ///
    /// On an SQLite file, write transactions queue for the single writer connection (see `writer`); a write
    /// transaction must not wait for another one while it is open.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, DbError> {
        if self.dialect() == Dialect::Sqlite {
            Ok(self
                .writer
                .as_ref()
                .unwrap_or(&self.pool)
                .begin_with("BEGIN IMMEDIATE")
                .await?)
        } else {
            Ok(self.pool.begin().await?)
        }
    }

    pub async fn close(&self) {
        if let Ok(mut free) = self.leases.lock() {
            free.clear();
        }
        if let Some(w) = &self.writer {
            w.close().await;
        }
        self.pool.close().await;
    }
}

/// `?` → `$n` for PostgreSQL; unchanged otherwise. Our SQL never has `?` inside string literals.
pub fn rewrite_placeholders(dialect: Dialect, q: &str) -> Cow<'_, str> {
    if dialect != Dialect::Postgres || !q.contains('?') {
        return Cow::Borrowed(q);
    }
    let mut out = String::with_capacity(q.len() + 16);
    let mut n = 0;
    for ch in q.chars() {
        if ch == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(ch);
        }
    }
    Cow::Owned(out)
}

/// `IN (?, ?, …)` with `n` placeholders (at least one, so the SQL stays valid for an empty list when the
/// caller binds a value that matches nothing).
pub fn in_list(n: usize) -> String {
    let n = n.max(1);
    let mut s = String::with_capacity(n * 3 + 2);
    s.push('(');
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s.push(')');
    s
}

/// Read a text column. MySQL reports `TEXT` columns as blobs through the `Any` driver, so fall back on bytes.
pub fn get_text(row: &AnyRow, col: &str) -> Result<String, sqlx::Error> {
    match row.try_get::<String, _>(col) {
        Ok(s) => Ok(s),
        Err(sqlx::Error::ColumnDecode { .. }) => row
            .try_get::<Vec<u8>, _>(col)
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        Err(e) => Err(e),
    }
}

/// Read a nullable text column (see [`get_text`]).
pub fn get_opt_text(row: &AnyRow, col: &str) -> Result<Option<String>, sqlx::Error> {
    match row.try_get::<Option<String>, _>(col) {
        Ok(s) => Ok(s),
        Err(sqlx::Error::ColumnDecode { .. }) => row
            .try_get::<Option<Vec<u8>>, _>(col)
            .map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned())),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        assert_eq!(
            rewrite_placeholders(Dialect::Postgres, "a = ? AND b = ?"),
            "a = $1 AND b = $2"
        );
        assert_eq!(rewrite_placeholders(Dialect::MySql, "a = ?"), "a = ?");
        assert_eq!(in_list(3), "(?, ?, ?)");
        assert_eq!(in_list(0), "(?)");
    }
}
