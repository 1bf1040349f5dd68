//! Versioned schema migrations, one ordered set per database. Applied versions are recorded in
//! `migrate_version`; each migration's statements run in one transaction (engines with transactional DDL
//! roll a failed migration back whole).

use crate::{Db, DbError, Dialect};
use sqlx::Row;

/// One schema change. Statements are portable SQL; `{engine}` at the end of a CREATE TABLE expands to the
/// MySQL table options and to nothing elsewhere; `{autoid}` is an engine-numbered integer primary key. A
/// statement starting with `{postgresql}` runs on PostgreSQL only.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub statements: &'static [&'static str],
}

/// All migrations of one database.
#[derive(Debug, Clone, Copy)]
pub struct MigrationSet {
    pub name: &'static str,
    pub migrations: &'static [Migration],
}

impl MigrationSet {
    pub fn latest(&self) -> i64 {
        self.migrations.iter().map(|m| m.version).max().unwrap_or(0)
    }
}

fn expand(dialect: Dialect, stmt: &str) -> String {
    let engine = match dialect {
        Dialect::MySql => " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        _ => "",
    };
    // `{autoid}`: an integer primary key the engine numbers (for the integer ids the APIs show).
    let autoid = match dialect {
        Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
        Dialect::MySql => "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
    };
    let mut out = stmt.replace("{engine}", engine).replace("{autoid}", autoid);
    // `{on:TABLE}`: MySQL's DROP INDEX names the table, the others' do not.
    while let Some(a) = out.find("{on:") {
        let Some(len) = out[a..].find('}') else { break };
        let table = out[a + 4..a + len].to_string();
        let with = if dialect == Dialect::MySql {
            format!(" ON {table}")
        } else {
            String::new()
        };
        out.replace_range(a..=a + len, &with);
    }
    out
}

impl Db {
    /// The schema version of one migration set recorded in the database (0 when none). Several sets may share
    /// a database (each service's tables are distinct), so versions are kept per set.
    pub async fn schema_version(&self, set: &MigrationSet) -> Result<i64, DbError> {
        self.ensure_version_table().await?;
        let row = sqlx::query(
            &self.sql("SELECT COALESCE(MAX(version), 0) AS v FROM migrate_version WHERE set_name = ?"),
        )
        .bind(set.name)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get::<i64, _>("v")?)
    }

    async fn ensure_version_table(&self) -> Result<(), DbError> {
        let stmt = expand(
            self.dialect(),
            "CREATE TABLE IF NOT EXISTS migrate_version (set_name VARCHAR(64) NOT NULL, version BIGINT NOT NULL, name VARCHAR(255) NOT NULL, \
             applied_at BIGINT NOT NULL, PRIMARY KEY (set_name, version)){engine}",
        );
        sqlx::query(&stmt).execute(self.pool()).await?;
        Ok(())
    }

    /// Apply every migration of `set` not yet applied. Returns the versions applied now.
    pub async fn migrate(&self, set: &MigrationSet) -> Result<Vec<i64>, DbError> {
        let current = self.schema_version(set).await?;
        if current > set.latest() {
            return Err(DbError::SchemaTooNew {
                set: set.name,
                found: current,
                known: set.latest(),
            });
        }
        let mut applied = Vec::new();
        for m in set.migrations.iter().filter(|m| m.version > current) {
            let wrap = |source| DbError::Migration {
                set: set.name,
                version: m.version,
                name: m.name,
                source,
            };
            let mut tx = self.pool().begin().await.map_err(wrap)?;
            for stmt in m.statements {
                // `{postgresql}` first: a statement for PostgreSQL only (a server-side function).
                let stmt = match stmt.strip_prefix("{postgresql}") {
                    Some(_) if self.dialect() != Dialect::Postgres => continue,
                    Some(s) => s,
                    None => stmt,
                };
                let sql = expand(self.dialect(), stmt);
                sqlx::query(&sql).execute(&mut *tx).await.map_err(wrap)?;
            }
            let ins = self
                .sql("INSERT INTO migrate_version (set_name, version, name, applied_at) VALUES (?, ?, ?, ?)");
            sqlx::query(&ins)
                .bind(set.name)
                .bind(m.version)
                .bind(m.name)
                .bind(tessera_types::now_epoch_micros())
                .execute(&mut *tx)
                .await
                .map_err(wrap)?;
            tx.commit().await.map_err(wrap)?;
            tracing::info!(
                database = set.name,
                version = m.version,
                name = m.name,
                "applied migration"
            );
            applied.push(m.version);
        }
        Ok(applied)
    }
}
