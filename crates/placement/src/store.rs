//! Placement datastore. Every write runs in one transaction that also bumps `placement_revision`; provider
//! and consumer generations are compare-and-swap updates inside those transactions, which is what keeps two
//! concurrent claims from both succeeding against the same capacity.

use crate::error::{concurrent, PlacementError, Result};
use sqlx::AnyConnection;
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use tessera_db::{bind_vals, get_opt_text, get_text, Any, AnyRow, Db, Transaction, Val};

pub type Tx = Transaction<'static, Any>;

#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub uuid: String,
    pub name: String,
    pub generation: i64,
    pub parent_uuid: Option<String>,
    pub root_uuid: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inventory {
    pub total: i64,
    pub reserved: i64,
    pub min_unit: i64,
    pub max_unit: i64,
    pub step_size: i64,
    pub allocation_ratio: f64,
}

impl Inventory {
    /// What may be allocated in all: (total − reserved) × allocation_ratio, rounded down.
    pub fn capacity(&self) -> i64 {
        ((self.total - self.reserved) as f64 * self.allocation_ratio).floor() as i64
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    pub uuid: String,
    pub project_id: String,
    pub user_id: String,
    pub generation: i64,
    pub consumer_type: Option<String>,
}

pub const RP_COLS: &str = "uuid, name, generation, parent_uuid, root_uuid, created_at, updated_at";

pub fn provider_from(r: &AnyRow) -> Result<Provider> {
    Ok(Provider {
        uuid: get_text(r, "uuid")?,
        name: get_text(r, "name")?,
        generation: r.try_get("generation")?,
        parent_uuid: get_opt_text(r, "parent_uuid")?,
        root_uuid: get_text(r, "root_uuid")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Count a write: record which providers it touched (see `crate::index`). Called last in every write
/// transaction. On PostgreSQL a row per provider in `placement_change_log` tagged with the transaction's id,
/// which readers match against their snapshots, so writers share no lock and their commits (and WAL
/// flushes) overlap. Elsewhere the revision row is bumped: its lock, taken after the providers', is held
/// until `COMMIT`, so commits happen in revision order (SQLite has one writer anyway).
pub async fn bump_revision(db: &Db, tx: &mut AnyConnection, touched: &[&str]) -> Result<()> {
    if db.dialect() == tessera_db::Dialect::Postgres {
        return log_change(db, tx, touched).await;
    }
    let touched: Vec<&str> = touched
        .iter()
        .copied()
        .collect::<BTreeSet<&str>>()
        .into_iter()
        .collect();
    if db.dialect() == tessera_db::Dialect::Sqlite {
        // The bump, the change records and the occasional prune in one call to the writer connection's thread.
        let st = sqlite_revision(&touched);
        bind_vals(sqlx::query(&st.sql), &st.binds)
            .execute(&mut *tx)
            .await?;
        return Ok(());
    }
    // MySQL has no UPDATE … RETURNING.
    sqlx::query("UPDATE placement_revision SET revision = revision + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    let rev: i64 = sqlx::query("SELECT revision FROM placement_revision WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?
        .try_get("revision")?;
    // In multi-row INSERTs of up to 200.
    for chunk in touched.chunks(200) {
        let sql = format!(
            "INSERT INTO placement_changes (revision, rp_uuid) VALUES {}",
            vec!["(?, ?)"; chunk.len()].join(", ")
        );
        let q = chunk
            .iter()
            .fold(sqlx::query(&sql), |q, rp| q.bind(rev).bind(*rp));
        q.execute(&mut *tx).await?;
    }
    if rev % PRUNE_CHANGES_EVERY == 0 {
        sqlx::query(&db.sql("DELETE FROM placement_changes WHERE revision < ?"))
            .bind(rev - CHANGES_KEPT)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Every how many revisions the change records older than [`CHANGES_KEPT`] are pruned (SQLite, MySQL).
const PRUNE_CHANGES_EVERY: i64 = 1000;

/// SQLite's revision bump as statements: the bump, a change record for each of `touched` (distinct) under the
/// new revision, and, every [`PRUNE_CHANGES_EVERY`] revisions, the prune. The providers go in one JSON array,
/// so that the SQL is the same for any number of them (and stays in the connection's statement cache).
fn sqlite_revision(touched: &[&str]) -> tessera_db::Statements {
    const REV: &str = "(SELECT revision FROM placement_revision WHERE id = 1)";
    tessera_db::Statements {
        sql: format!(
            "UPDATE placement_revision SET revision = revision + 1 WHERE id = 1; \
             INSERT INTO placement_changes (revision, rp_uuid) SELECT {REV}, value FROM json_each(?); \
             DELETE FROM placement_changes WHERE {REV} % {PRUNE_CHANGES_EVERY} = 0 AND revision < {REV} - {CHANGES_KEPT}"
        ),
        binds: vec![Val::S(serde_json::json!(touched).to_string())],
    }
}

/// [`sqlite_revision`] as a batch's tail (see `tessera_db::batch`): its jobs' marks, deduplicated.
fn sqlite_revision_tail(marks: &[String]) -> tessera_db::Statements {
    let touched: BTreeSet<&str> = marks.iter().map(String::as_str).collect();
    sqlite_revision(&touched.into_iter().collect::<Vec<_>>())
}

/// A SQLite batch of provider writes as one set of statements (see `tessera_db::Tail::bulk`): each kind of
/// write (`create`, `inv`, `traits`, `aggregates`) is a few statements over a JSON array of that kind's jobs,
/// doing for all of them what each one's own SQL does ([`inventories_write_sqlite`], [`links_set_sqlite`],
/// [`provider_create`]), with the same result columns, each row keyed by its provider; then every provider's
/// generation read back, and the revision tail. The SQL is the same for every batch (empty arrays write
/// nothing), so the writer keeps it prepared. The keys are distinct, so no two jobs touch one provider.
fn sqlite_bulk(parts: &[tessera_db::BulkPart<'_>]) -> tessera_db::Statements {
    let array = |kind: &str| {
        let items: Vec<&str> = parts.iter().filter(|p| p.kind == kind).map(|p| p.args).collect();
        Val::S(format!("[{}]", items.join(",")))
    };
    let (create, inv, traits, aggregates) = (
        array("create"),
        array("inv"),
        array("traits"),
        array("aggregates"),
    );
    // Every write to an existing provider names its expected generation.
    let checked: Vec<&str> = parts
        .iter()
        .filter(|p| p.kind != "create")
        .map(|p| p.args)
        .collect();
    let checked = Val::S(format!("[{}]", checked.join(",")));
    let keys: Vec<&str> = parts.iter().map(|p| p.key).collect();
    let tail = sqlite_revision(&keys);
    let mut binds = vec![checked, inv.clone(), create];
    binds.extend(std::iter::repeat_n(inv, 5));
    for links in [traits, aggregates] {
        binds.extend([links.clone(), links.clone(), links.clone(), links]);
    }
    binds.extend(tail.binds.iter().cloned());
    binds.extend(tail.binds);
    tessera_db::Statements {
        sql: SQLITE_BULK.get_or_init(sqlite_bulk_sql).clone(),
        binds,
    }
}

static SQLITE_BULK: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The statements of [`sqlite_bulk`] (binds: the inventories, traits and aggregates jobs in one array; the
/// inventories array; the create array; the inventories array 5 times; the traits array 4 times; the
/// aggregates array 4 times; every provider, twice). They fail first (a row into `temp.bulk_refusals`, which
/// takes none) when a job would refuse — its provider missing or at another generation, or a class it removes
/// still allocated — so that the batch's `COMMIT` can go with them (see `tessera_db::Tail::bulk`). A batch that
/// commits has no class in use, so its rows carry no `inuse` column (the judge reads it as none).
fn sqlite_bulk_sql() -> String {
    let key = tessera_db::BULK_KEY;
    // A job's classes to remove: named in `remove`, or, replacing all, left out of `set`.
    let removed = |rc: &str| {
        format!(
            "({rc} IN (SELECT value FROM json_each(j.value, '$.remove')) OR (j.value->>'replace_all' \
             AND {rc} NOT IN (SELECT value->>'rc' FROM json_each(j.value, '$.set'))))"
        )
    };
    let bump = |cond: &str| {
        format!(
            "UPDATE resource_providers SET generation = generation + 1, updated_at = j.value->>'now' \
             FROM json_each(?) j WHERE resource_providers.uuid = j.value->>'uuid' \
             AND resource_providers.generation = j.value->>'expected'{cond} RETURNING uuid AS {key}, generation AS bumped"
        )
    };
    // A job's removed classes that are still allocated.
    let in_use = format!(
        "SELECT a.resource_class FROM allocations a WHERE a.rp_uuid = j.value->>'uuid' AND a.used > 0 AND \
         a.resource_class IN (SELECT i.resource_class FROM inventories i WHERE i.rp_uuid = j.value->>'uuid' AND {})",
        removed("i.resource_class")
    );
    let mut sql = vec![
        "CREATE TEMP TABLE IF NOT EXISTS bulk_refusals (rp_uuid TEXT, CONSTRAINT refused CHECK (0))".to_string(),
        format!(
            "INSERT INTO temp.bulk_refusals (rp_uuid) SELECT c.value->>'uuid' FROM json_each(?) c WHERE \
             (SELECT generation FROM resource_providers WHERE uuid = c.value->>'uuid') IS NOT c.value->>'expected' \
             UNION ALL SELECT j.value->>'uuid' FROM json_each(?) j WHERE EXISTS ({in_use})"
        ),
        format!(
            "INSERT INTO resource_providers ({RP_COLS}) SELECT j.value->>'uuid', j.value->>'name', \
             j.value->>'generation', j.value->>'parent', j.value->>'root', j.value->>'created', j.value->>'updated' \
             FROM json_each(?) j"
        ),
        format!(
            "SELECT j.value->>'uuid' AS {key}, (SELECT group_concat(u.resource_class || '=' || u.s, ',') FROM (SELECT a.resource_class, SUM(a.used) AS s \
             FROM allocations a WHERE a.rp_uuid = j.value->>'uuid' AND a.resource_class IN \
             (SELECT value->>'rc' FROM json_each(j.value, '$.set')) GROUP BY a.resource_class) u) AS used \
             FROM json_each(?) j"
        ),
        format!(
            "DELETE FROM inventories WHERE rp_uuid IN (SELECT value->>'uuid' FROM json_each(?)) AND EXISTS \
             (SELECT 1 FROM json_each(?) j WHERE j.value->>'uuid' = inventories.rp_uuid AND {})",
            removed("inventories.resource_class")
        ),
        format!(
            "INSERT INTO inventories (rp_uuid, resource_class, {}) SELECT j.value->>'uuid', s.value->>'rc', {} \
             FROM json_each(?) j, json_each(j.value, '$.set') s WHERE true ON CONFLICT (rp_uuid, resource_class) \
             DO UPDATE SET {} WHERE ({}) IS NOT ({})",
            inventory_fields(str::to_string),
            inventory_fields(|f| format!("s.value->>'{f}'")),
            inventory_fields(|f| format!("{f} = excluded.{f}")),
            inventory_fields(|f| format!("inventories.{f}")),
            inventory_fields(|f| format!("excluded.{f}")),
        ),
        bump(""),
    ];
    for (table, col) in [("rp_traits", "trait"), ("rp_aggregates", "aggregate_uuid")] {
        sql.push(bump(&format!(
            " AND (NOT j.value->>'keep' OR (SELECT COUNT(*) FROM {table} t WHERE t.rp_uuid = j.value->>'uuid') \
             <> json_array_length(j.value, '$.values') OR EXISTS (SELECT 1 FROM {table} t WHERE \
             t.rp_uuid = j.value->>'uuid' AND t.{col} NOT IN (SELECT value FROM json_each(j.value, '$.values'))))"
        )));
        sql.push(format!(
            "DELETE FROM {table} WHERE rp_uuid IN (SELECT value->>'uuid' FROM json_each(?)) AND EXISTS \
             (SELECT 1 FROM json_each(?) j WHERE j.value->>'uuid' = {table}.rp_uuid \
             AND {table}.{col} NOT IN (SELECT value FROM json_each(j.value, '$.values')))"
        ));
        sql.push(format!(
            "INSERT OR IGNORE INTO {table} (rp_uuid, {col}) SELECT j.value->>'uuid', v.value \
             FROM json_each(?) j, json_each(j.value, '$.values') v"
        ));
    }
    sql.push(format!(
        "SELECT uuid AS {key}, generation AS current FROM resource_providers WHERE uuid IN (SELECT value FROM json_each(?))"
    ));
    sql.push(sqlite_revision(&[]).sql);
    sql.join("; ")
}

/// The writing transaction's id as a BIGINT (PostgreSQL).
const PG_XID: &str = "CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT)";
/// The start of an insert into PostgreSQL's change log (xid, then provider).
const PG_LOG_CHANGE: &str = "INSERT INTO placement_change_log (xid, rp_uuid)";

/// PostgreSQL's change record: the touched providers under the writing transaction's id (assigned already:
/// the transaction has written). Every [`PRUNE_EVERY`] records a process writes, it prunes the log once.
async fn log_change(db: &Db, tx: &mut AnyConnection, touched: &[&str]) -> Result<()> {
    let touched: BTreeSet<&str> = touched.iter().copied().collect();
    let touched: Vec<&str> = touched.into_iter().collect();
    for chunk in touched.chunks(200) {
        let q = format!(
            "{PG_LOG_CHANGE} VALUES {}",
            vec![format!("({PG_XID}, ?)"); chunk.len()].join(", ")
        );
        let sql = db.sql(&q);
        let query = chunk.iter().fold(sqlx::query(&sql), |q, rp| q.bind(*rp));
        query.execute(&mut *tx).await?;
    }
    logged(db, touched.len() as u64);
    Ok(())
}

/// Count change records this process wrote to PostgreSQL's log, pruning it every [`PRUNE_EVERY`].
fn logged(db: &Db, n: u64) {
    static WRITTEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let before = WRITTEN.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    if n > 0 && (before + n) / PRUNE_EVERY != before / PRUNE_EVERY {
        let db = db.clone();
        tokio::spawn(async move {
            if let Err(e) = prune_change_log(&db, CHANGES_KEPT).await {
                tracing::warn!(error = %e, "pruning placement_change_log failed");
            }
        });
    }
}

/// Records a process writes between two prunings of PostgreSQL's change log.
const PRUNE_EVERY: u64 = 1000;

/// Drop all but the newest `keep` change records of PostgreSQL's log, and note below which transaction id
/// records may be missing: a reader whose snapshot is older than that reloads everything (see `crate::index`).
pub async fn prune_change_log(db: &Db, keep: i64) -> Result<()> {
    let mut tx = db.pool().begin().await?;
    let cut: Option<i64> =
        sqlx::query(&db.sql("SELECT xid FROM placement_change_log ORDER BY xid DESC LIMIT 1 OFFSET ?"))
            .bind(keep)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get("xid"))
            .transpose()?;
    if let Some(cut) = cut {
        sqlx::query(&db.sql("DELETE FROM placement_change_log WHERE xid < ?"))
            .bind(cut)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&db.sql("UPDATE placement_revision SET pruned_xid = ? WHERE id = 1 AND pruned_xid < ?"))
            .bind(cut)
            .bind(cut)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A store write as a group-commit job (see [`tessera_db::BatchJob`]): `f` runs in the shared write
/// transaction (again, alone, if its batch had to be rolled back); `keep` says whether its outcome may be
/// committed.
struct StoreJob<T, F> {
    db: Db,
    f: F,
    keep: fn(&Result<T>) -> bool,
    out: std::sync::Mutex<Option<Result<T>>>,
}

type StoreFuture<'t, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 't>>;

impl<T, F> tessera_db::BatchJob for StoreJob<T, F>
where
    T: Send + 'static,
    F: for<'t> Fn(&'t Db, &'t mut AnyConnection, &'t mut Vec<String>) -> StoreFuture<'t, T> + Send + Sync,
{
    fn run<'t>(
        &'t self,
        tx: &'t mut AnyConnection,
        touched: &'t mut Vec<String>,
    ) -> tessera_db::JobFuture<'t> {
        Box::pin(async move {
            let r = (self.f)(&self.db, tx, touched).await;
            let keep = (self.keep)(&r);
            put(&self.out, r);
            keep
        })
    }
}

/// Keep a job's outcome for its caller (see [`submit`]).
fn put<T>(out: &std::sync::Mutex<Option<Result<T>>>, r: Result<T>) {
    *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
}

/// A store write on SQLite as statements (see [`sqlite_one_call`]), in one call to the writer whether it runs
/// alone or among its batch's jobs (the first with `BEGIN` folded in: see `tessera_db::batch`). It
/// gives its rows to `judge`, which answers the outcome and whether the job wrote.
struct SqliteJob<T, J> {
    stmts: tessera_db::Statements,
    uuid: String,
    /// Its kind and arguments (a JSON object) for a bulk batch (see [`sqlite_bulk`]).
    bulk: Option<(&'static str, String)>,
    judge: J,
    out: std::sync::Mutex<Option<Result<T>>>,
}

impl<T, J> SqliteJob<T, J>
where
    J: Fn(&[&AnyRow]) -> Result<(T, bool)>,
{
    /// Judge the statements' rows and keep the outcome: whether the job succeeded, and whether it wrote.
    fn judged(&self, rows: &[&AnyRow]) -> (bool, bool) {
        let (r, wrote) = match (self.judge)(rows) {
            Ok((t, wrote)) => (Ok(t), wrote),
            Err(e) => (Err(e), false),
        };
        let ok = r.is_ok();
        put(&self.out, r);
        (ok, wrote)
    }
}

impl<T, J> tessera_db::BatchJob for SqliteJob<T, J>
where
    T: Send + 'static,
    J: Fn(&[&AnyRow]) -> Result<(T, bool)> + Send + Sync,
{
    fn run<'t>(
        &'t self,
        tx: &'t mut AnyConnection,
        touched: &'t mut Vec<String>,
    ) -> tessera_db::JobFuture<'t> {
        Box::pin(async move {
            let ran = bind_vals(sqlx::query(&self.stmts.sql), &self.stmts.binds)
                .fetch_all(&mut *tx)
                .await;
            match ran {
                Ok(rows) => {
                    let (ok, wrote) = self.judged(&rows.iter().collect::<Vec<_>>());
                    if ok && wrote {
                        touched.push(self.uuid.clone());
                    }
                    ok
                }
                Err(e) => {
                    put(&self.out, Err(e.into()));
                    false
                }
            }
        })
    }

    fn statements(&self) -> Option<(&tessera_db::Statements, &str)> {
        Some((&self.stmts, &self.uuid))
    }

    fn bulk(&self) -> Option<tessera_db::BulkPart<'_>> {
        let (kind, args) = self.bulk.as_ref()?;
        Some(tessera_db::BulkPart {
            kind,
            key: &self.uuid,
            args,
        })
    }

    fn judge(&self, rows: &[&AnyRow]) -> bool {
        self.judged(rows).0
    }
}

/// The end of every group-commit transaction: one revision bump for all its jobs, recording the providers
/// they touched (on SQLite, as statements sent with `COMMIT`: see `tessera_db::batch`).
const REVISION_TAIL: tessera_db::Tail = tessera_db::Tail {
    run: revision_tail,
    statements: Some(sqlite_revision_tail),
    bulk: Some(sqlite_bulk),
};

fn revision_tail<'t>(
    db: &'t Db,
    tx: &'t mut AnyConnection,
    touched: &'t [String],
) -> tessera_db::TailFuture<'t> {
    Box::pin(async move {
        let touched: Vec<&str> = touched.iter().map(String::as_str).collect();
        bump_revision(db, tx, &touched).await.map_err(|e| match e {
            PlacementError::Db(e) => e,
            e => tessera_db::DbError::Batch(e.to_string()),
        })
    })
}

/// Run a write through the database's group commit and return its outcome once it is committed (or
/// discarded). `f` adds the providers it touches to its third argument instead of bumping the revision.
async fn batched<T, F>(db: &Db, keep: fn(&Result<T>) -> bool, f: F) -> Result<T>
where
    T: Send + 'static,
    F: for<'t> Fn(&'t Db, &'t mut AnyConnection, &'t mut Vec<String>) -> StoreFuture<'t, T>
        + Send
        + Sync
        + 'static,
{
    let job = std::sync::Arc::new(StoreJob {
        db: db.clone(),
        f,
        keep,
        out: std::sync::Mutex::new(None),
    });
    submit(db, job, |j| &j.out, keep).await
}

/// Queue `job` in the database's group commit and return its outcome (kept in `out`) once it is committed
/// (or discarded, when `keep` refuses it).
async fn submit<T, J>(
    db: &Db,
    job: std::sync::Arc<J>,
    out: fn(&J) -> &std::sync::Mutex<Option<Result<T>>>,
    keep: fn(&Result<T>) -> bool,
) -> Result<T>
where
    J: tessera_db::BatchJob + 'static,
{
    // A batch's COMMIT overlaps the next batch's statements (see tessera_db::batch). On PostgreSQL, where
    // change records take no shared lock, two batches run their statements at once (`bench/placement.sh`:
    // allocation writes 673–742 → 752–785 a second; provider creation, then still queued here, ~420 → ~480).
    // Elsewhere the revision row (MySQL) or the one writer (SQLite) would only make the second wait, with a
    // smaller batch.
    let parallel = if db.dialect() == tessera_db::Dialect::Postgres {
        2
    } else {
        1
    };
    let committed = db.write_batched(job.clone(), REVISION_TAIL, parallel).await?;
    let out = out(&job).lock().unwrap_or_else(|p| p.into_inner()).take();
    match out {
        Some(r) if committed || !keep(&r) => r,
        _ => Err(PlacementError::Db(tessera_db::DbError::Batch(
            "the write was neither committed nor refused".into(),
        ))),
    }
}

/// Revisions of change records kept; a process further behind reloads everything.
pub const CHANGES_KEPT: i64 = 20_000;

/// Providers touched after `since` (None when the records no longer reach back that far).
pub async fn changes_since(db: &Db, since: i64) -> Result<Option<BTreeSet<String>>> {
    let oldest: Option<i64> = sqlx::query("SELECT MIN(revision) AS r FROM placement_changes")
        .fetch_one(db.pool())
        .await?
        .try_get("r")?;
    // The records must reach back to the first revision after `since`; with none at all (pruned, or the
    // revision was bumped by hand) nobody can say what changed.
    if oldest.is_none_or(|o| o > since + 1) {
        return Ok(None);
    }
    let rows = sqlx::query(&db.sql("SELECT DISTINCT rp_uuid FROM placement_changes WHERE revision > ?"))
        .bind(since)
        .fetch_all(db.pool())
        .await?;
    Ok(Some(
        rows.iter()
            .map(|r| get_text(r, "rp_uuid"))
            .collect::<Result<_, _>>()?,
    ))
}

pub async fn revision(db: &Db) -> Result<i64> {
    let r = sqlx::query("SELECT revision FROM placement_revision WHERE id = 1")
        .fetch_one(db.pool())
        .await?;
    Ok(r.try_get("revision")?)
}

// ---------------------------------------------------------------- resource classes and traits

/// Insert the names that are missing (standard classes or traits at start-up).
pub async fn ensure_names(db: &Db, table: &str, names: &[&str], standard: bool) -> Result<usize> {
    let existing: BTreeSet<String> = sqlx::query(&format!("SELECT name FROM {table}"))
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| get_text(r, "name"))
        .collect::<Result<_, _>>()?;
    let now = tessera_types::now_epoch_micros();
    let mut tx = db.begin_write().await?;
    let mut n = 0;
    for name in names.iter().filter(|n| !existing.contains(**n)) {
        sqlx::query(&db.sql(&format!(
            "INSERT INTO {table} (name, standard, created_at, updated_at) VALUES (?, ?, ?, ?)"
        )))
        .bind(*name)
        .bind(standard as i64)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        n += 1;
    }
    tx.commit().await?;
    Ok(n)
}

/// (name, standard) of every class or trait.
pub async fn names(db: &Db, table: &str) -> Result<Vec<(String, bool)>> {
    sqlx::query(&format!("SELECT name, standard FROM {table} ORDER BY name"))
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| Ok((get_text(r, "name")?, r.try_get::<i64, _>("standard")? != 0)))
        .collect()
}

pub async fn name_get(db: &Db, table: &str, name: &str) -> Result<Option<bool>> {
    let r = sqlx::query(&db.sql(&format!("SELECT standard FROM {table} WHERE name = ?")))
        .bind(name)
        .fetch_optional(db.pool())
        .await?;
    Ok(r.map(|r| r.try_get::<i64, _>("standard").map(|s| s != 0))
        .transpose()?)
}

/// Insert one custom name; false if it exists.
pub async fn name_create(db: &Db, table: &str, name: &str) -> Result<bool> {
    let now = tessera_types::now_epoch_micros();
    let mut tx = db.begin_write().await?;
    let r = sqlx::query(&db.sql(&format!(
        "INSERT INTO {table} (name, standard, created_at, updated_at) VALUES (?, 0, ?, ?)"
    )))
    .bind(name)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await;
    match r {
        Ok(_) => {
            bump_revision(db, &mut tx, &[]).await?;
            tx.commit().await?;
            Ok(true)
        }
        Err(e) if tessera_db::is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What deleting a custom class or trait found.
#[derive(Debug, PartialEq, Eq)]
pub enum NameDelete {
    Deleted,
    Missing,
    Standard,
    InUse,
}

/// Delete a custom resource class or trait unless it is standard or still used (`used_sql` counts its uses,
/// one `?` for the name); check and delete in one transaction.
pub async fn name_delete(db: &Db, table: &str, name: &str, used_sql: &str) -> Result<NameDelete> {
    let mut tx = db.begin_write().await?;
    let standard = sqlx::query(&db.sql(&format!("SELECT standard FROM {table} WHERE name = ?")))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get::<i64, _>("standard").map(|s| s != 0))
        .transpose()?;
    match standard {
        None => return Ok(NameDelete::Missing),
        Some(true) => return Ok(NameDelete::Standard),
        Some(false) => {}
    }
    let used: i64 = sqlx::query(&db.sql(used_sql))
        .bind(name)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    if used > 0 {
        return Ok(NameDelete::InUse);
    }
    sqlx::query(&db.sql(&format!("DELETE FROM {table} WHERE name = ?")))
        .bind(name)
        .execute(&mut *tx)
        .await?;
    bump_revision(db, &mut tx, &[]).await?;
    tx.commit().await?;
    Ok(NameDelete::Deleted)
}

/// Which of `names` are unknown in `table` (standard names are known without asking the database).
pub async fn unknown_names(db: &Db, table: &str, names: &BTreeSet<String>) -> Result<Vec<String>> {
    let names: BTreeSet<&String> = names.iter().filter(|n| !crate::is_standard(table, n)).collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let q = format!(
        "SELECT name FROM {table} WHERE name IN {}",
        tessera_db::in_list(names.len())
    );
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    for n in &names {
        query = query.bind(n);
    }
    let found: BTreeSet<String> = query
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| get_text(r, "name"))
        .collect::<Result<_, _>>()?;
    Ok(names
        .into_iter()
        .filter(|n| !found.contains(*n))
        .cloned()
        .collect())
}

// ---------------------------------------------------------------- providers

pub async fn provider_get(db: &Db, uuid: &str) -> Result<Option<Provider>> {
    provider_get_on(db, &mut *db.pool().acquire().await?, uuid).await
}

pub async fn provider_get_tx(db: &Db, tx: &mut AnyConnection, uuid: &str) -> Result<Option<Provider>> {
    provider_get_on(db, tx, uuid).await
}

async fn provider_get_on(db: &Db, c: &mut AnyConnection, uuid: &str) -> Result<Option<Provider>> {
    let q = format!("SELECT {RP_COLS} FROM resource_providers WHERE uuid = ?");
    sqlx::query(&db.sql(&q))
        .bind(uuid)
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(provider_from)
        .transpose()
}

pub async fn provider_query(db: &Db, q: &str, binds: &[String]) -> Result<Vec<Provider>> {
    let sql = db.sql(q);
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(b);
    }
    query
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(provider_from)
        .collect()
}

fn duplicate(what: &str) -> PlacementError {
    PlacementError::Conflict(
        format!("Conflicting resource provider {what} already exists."),
        Some(crate::error::DUPLICATE_NAME),
    )
}

/// PostgreSQL: one provider write through the server-side `placement_write` (see
/// `tessera_db::placement`), sent together with the other writes waiting at the same time
/// ([`Db::call_combined`]): they share a round trip and a commit. Returns its JSON answer.
async fn pg_write(db: &Db, uuid: &str, job: serde_json::Value) -> Result<serde_json::Value> {
    let answer = db.call_combined("placement_write", uuid, job.to_string()).await?;
    serde_json::from_str(&answer).map_err(|e| {
        PlacementError::Db(tessera_db::DbError::Batch(format!(
            "placement_write answered {answer}: {e}"
        )))
    })
}

/// Inventory rows as the server-side writes take them (PostgreSQL's `placement_write`, SQLite's bulk batches).
fn inventory_args(set: &BTreeMap<String, Inventory>) -> Vec<serde_json::Value> {
    set.iter()
        .map(|(rc, inv)| {
            serde_json::json!({
                "rc": rc,
                "total": inv.total,
                "reserved": inv.reserved,
                "min_unit": inv.min_unit,
                "max_unit": inv.max_unit,
                "step_size": inv.step_size,
                "allocation_ratio": inv.allocation_ratio,
            })
        })
        .collect()
}

/// A new provider as the server-side writes take it (PostgreSQL's `placement_write`, SQLite's bulk batches).
fn provider_args(p: &Provider) -> serde_json::Value {
    serde_json::json!({
        "uuid": p.uuid,
        "name": p.name,
        "generation": p.generation,
        "parent": p.parent_uuid,
        "root": p.root_uuid,
        "created": p.created_at,
        "updated": p.updated_at,
    })
}

/// Insert a provider; a uuid or name already taken is a 409 naming which (looked up only then).
pub async fn provider_create(db: &Db, p: &Provider) -> Result<()> {
    if db.dialect() == tessera_db::Dialect::Postgres {
        // With its change record, combined with the other provider writes waiting (see `pg_write`).
        let mut job = provider_args(p);
        job["k"] = serde_json::json!("create");
        let r = pg_write(db, &p.uuid, job).await?;
        if r["ok"].as_bool() == Some(true) {
            logged(db, 1);
            return Ok(());
        }
        return Err(duplicate(&taken(db, p).await?));
    }
    if db.dialect() == tessera_db::Dialect::Sqlite {
        // One call to the writer (see `sqlite_one_call`); a taken uuid or name is named after the refusal.
        let sql = format!("INSERT INTO resource_providers ({RP_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)");
        let binds = vec![
            Val::S(p.uuid.clone()),
            Val::S(p.name.clone()),
            Val::I(p.generation),
            p.parent_uuid.clone().map_or(Val::Null, Val::S),
            Val::S(p.root_uuid.clone()),
            Val::I(p.created_at),
            Val::I(p.updated_at),
        ];
        // A name with NUL in it stays out of bulk batches: it would pass through SQLite's JSON functions.
        let bulk = (!p.name.contains('\0')).then(|| ("create", provider_args(p)));
        return match sqlite_one_call(db, &p.uuid, sql, binds, bulk, |_| Ok(((), true))).await {
            Err(PlacementError::Db(e)) if e.is_unique_violation() => Err(duplicate(&taken(db, p).await?)),
            r => r,
        };
    }
    let p = p.clone();
    batched(db, Result::is_ok, move |db, tx, touched| {
        let p = p.clone();
        Box::pin(async move { provider_create_in(db, tx, &p, touched).await })
    })
    .await
}

/// What a provider refused as a duplicate collided on (looked up only then).
async fn taken(db: &Db, p: &Provider) -> Result<String> {
    Ok(if provider_get(db, &p.uuid).await?.is_some() {
        format!("uuid: {}", p.uuid)
    } else {
        format!("name: {}", p.name)
    })
}

async fn provider_create_in(
    db: &Db,
    tx: &mut AnyConnection,
    p: &Provider,
    touched: &mut Vec<String>,
) -> Result<()> {
    let q = format!("INSERT INTO resource_providers ({RP_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)");
    let inserted = sqlx::query(&db.sql(&q))
        .bind(&p.uuid)
        .bind(&p.name)
        .bind(p.generation)
        .bind(p.parent_uuid.clone())
        .bind(&p.root_uuid)
        .bind(p.created_at)
        .bind(p.updated_at)
        .execute(&mut *tx)
        .await;
    match inserted {
        Err(e) if tessera_db::is_unique_violation(&e) => return Err(duplicate(&taken(db, p).await?)),
        r => r?,
    };
    touched.push(p.uuid.clone());
    Ok(())
}

/// Rename and/or re-parent; when the root changes, the whole subtree moves with it.
pub async fn provider_update(db: &Db, old: &Provider, new: &Provider) -> Result<()> {
    let mut tx = db.begin_write().await?;
    let n = sqlx::query(&db.sql(
        "UPDATE resource_providers SET name = ?, parent_uuid = ?, root_uuid = ?, generation = generation + 1, \
         updated_at = ? WHERE uuid = ? AND generation = ?",
    ))
    .bind(&new.name)
    .bind(new.parent_uuid.clone())
    .bind(&new.root_uuid)
    .bind(new.updated_at)
    .bind(&old.uuid)
    .bind(old.generation)
    .execute(&mut *tx)
    .await
    .map_err(|e| {
        if tessera_db::is_unique_violation(&e) {
            duplicate(&format!("name: {}", new.name))
        } else {
            e.into()
        }
    })?
    .rows_affected();
    if n != 1 {
        return Err(concurrent(format!(
            "resource provider {} was updated by another request",
            old.uuid
        )));
    }
    let mut moved = vec![old.uuid.clone()];
    if new.root_uuid != old.root_uuid {
        // Descendants follow: walk the subtree breadth-first.
        let mut frontier = vec![old.uuid.clone()];
        while let Some(parent) = frontier.pop() {
            let kids: Vec<String> =
                sqlx::query(&db.sql("SELECT uuid FROM resource_providers WHERE parent_uuid = ?"))
                    .bind(&parent)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| get_text(r, "uuid"))
                    .collect::<Result<_, _>>()?;
            for k in kids {
                sqlx::query(&db.sql("UPDATE resource_providers SET root_uuid = ? WHERE uuid = ?"))
                    .bind(&new.root_uuid)
                    .bind(&k)
                    .execute(&mut *tx)
                    .await?;
                moved.push(k.clone());
                frontier.push(k);
            }
        }
    }
    let moved: Vec<&str> = moved.iter().map(String::as_str).collect();
    bump_revision(db, &mut tx, &moved).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn provider_delete(db: &Db, p: &Provider) -> Result<()> {
    let mut tx = db.begin_write().await?;
    let kids = sqlx::query(&db.sql("SELECT COUNT(*) AS n FROM resource_providers WHERE parent_uuid = ?"))
        .bind(&p.uuid)
        .fetch_one(&mut *tx)
        .await?
        .try_get::<i64, _>("n")?;
    if kids > 0 {
        return Err(PlacementError::Conflict(
            format!(
                "Unable to delete parent resource provider {}: It has child resource providers.",
                p.uuid
            ),
            Some(crate::error::CANNOT_DELETE_PARENT),
        ));
    }
    let allocs = sqlx::query(&db.sql("SELECT COUNT(*) AS n FROM allocations WHERE rp_uuid = ?"))
        .bind(&p.uuid)
        .fetch_one(&mut *tx)
        .await?
        .try_get::<i64, _>("n")?;
    if allocs > 0 {
        return Err(PlacementError::Conflict(
            format!(
                "Unable to delete resource provider {}: Resource provider has allocations.",
                p.uuid
            ),
            Some(crate::error::PROVIDER_INUSE),
        ));
    }
    for t in ["inventories", "rp_traits", "rp_aggregates"] {
        sqlx::query(&db.sql(&format!("DELETE FROM {t} WHERE rp_uuid = ?")))
            .bind(&p.uuid)
            .execute(&mut *tx)
            .await?;
    }
    let n = sqlx::query(&db.sql("DELETE FROM resource_providers WHERE uuid = ? AND generation = ?"))
        .bind(&p.uuid)
        .bind(p.generation)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n != 1 {
        return Err(concurrent(format!(
            "resource provider {} was updated by another request",
            p.uuid
        )));
    }
    bump_revision(db, &mut tx, &[&p.uuid]).await?;
    tx.commit().await?;
    Ok(())
}

/// Bump a provider's generation, checking it still is `expected`; a concurrent-update 409 otherwise.
pub async fn bump_generation(db: &Db, tx: &mut AnyConnection, uuid: &str, expected: i64) -> Result<i64> {
    let n = sqlx::query(&db.sql(
        "UPDATE resource_providers SET generation = generation + 1, updated_at = ? WHERE uuid = ? AND generation = ?",
    ))
    .bind(tessera_types::now_epoch_micros())
    .bind(uuid)
    .bind(expected)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n != 1 {
        // Handlers do not look the provider up before writing; a missing one is a 404, not a conflict.
        return Err(missing_or_moved(db, tx, uuid).await);
    }
    Ok(expected + 1)
}

/// One write statement (`?` placeholders) with its binds.
#[derive(Clone)]
struct Stmt {
    sql: String,
    binds: Vec<Val>,
}

/// A provider's generation, checked against `expected` (a missing provider is a 404, another generation a
/// 409), with its current rows of `links` (columns `cols` of the table linked by `rp_uuid`), in one read
/// outside any transaction: writes computed from it are applied by [`bump_and_write`], whose generation
/// check makes sure nothing changed in between (every change to these rows bumps the generation).
async fn provider_rows(
    db: &Db,
    uuid: &str,
    expected: i64,
    links: &str,
    cols: &[&str],
) -> Result<Vec<AnyRow>> {
    let q = format!(
        "SELECT rp.generation AS generation, {} FROM resource_providers rp LEFT JOIN {links} l \
         ON l.rp_uuid = rp.uuid WHERE rp.uuid = ?",
        cols.iter()
            .map(|c| format!("l.{c} AS {c}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let mut lease = db.lease().await?;
    let rows = sqlx::query(&db.sql(&q))
        .bind(uuid)
        .fetch_all(lease.conn())
        .await?;
    lease.done();
    match rows.first() {
        None => Err(no_provider(uuid)),
        Some(r) if r.try_get::<i64, _>("generation")? != expected => Err(moved(uuid)),
        Some(_) => Ok(rows),
    }
}

/// Statements deleting a provider's rows of `table` whose `col` is one of `values` (200 to a statement).
fn delete_rows(table: &str, col: &str, uuid: &str, values: &[&String]) -> Vec<Stmt> {
    values
        .chunks(200)
        .map(|chunk| Stmt {
            sql: format!(
                "DELETE FROM {table} WHERE rp_uuid = ? AND {col} IN {}",
                tessera_db::in_list(chunk.len())
            ),
            binds: std::iter::once(uuid)
                .chain(chunk.iter().map(|v| v.as_str()))
                .map(|v| Val::S(v.to_string()))
                .collect(),
        })
        .collect()
}

/// Bump a provider's generation from `expected` and run `writes` in the shared write transaction, returning
/// the new generation, the provider left in `touched` for the transaction's revision bump (MySQL; PostgreSQL
/// and SQLite write without reading first: see [`inventories_write_pg`], [`links_set_pg`],
/// [`inventories_write_sqlite`] and [`links_set_sqlite`]).
async fn bump_and_write(
    db: &Db,
    tx: &mut AnyConnection,
    uuid: &str,
    expected: i64,
    writes: &[Stmt],
    touched: &mut Vec<String>,
) -> Result<i64> {
    let gen = bump_generation(db, tx, uuid, expected).await?;
    for w in writes {
        let sql = db.sql(&w.sql);
        bind_vals(sqlx::query(&sql), &w.binds).execute(&mut *tx).await?;
    }
    touched.push(uuid.to_string());
    Ok(gen)
}

/// A 404 for a provider that is not there.
fn no_provider(uuid: &str) -> PlacementError {
    PlacementError::NotFound(format!("No resource provider with uuid {uuid} found"))
}

/// A 409 `placement.concurrent_update` for a provider whose generation is not the one expected.
/// A class to remove that still has allocations: 409 `placement.inventory.inuse`.
fn in_use(rc: &str, uuid: &str) -> PlacementError {
    PlacementError::Conflict(
        format!("Inventory for '{rc}' on resource provider '{uuid}' in use."),
        Some(crate::error::INVENTORY_INUSE),
    )
}

fn moved(uuid: &str) -> PlacementError {
    concurrent(format!(
        "resource provider generation conflict: another request updated {uuid}; get it again and retry"
    ))
}

/// Why a generation check failed: the provider is gone (404) or another request moved it (409).
async fn missing_or_moved(db: &Db, c: &mut AnyConnection, uuid: &str) -> PlacementError {
    match provider_get_on(db, c, uuid).await {
        Ok(None) => no_provider(uuid),
        Ok(Some(_)) => moved(uuid),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------- inventories, usages

fn inventory_from(r: &AnyRow) -> Result<Inventory> {
    Ok(Inventory {
        total: r.try_get("total")?,
        reserved: r.try_get("reserved")?,
        min_unit: r.try_get("min_unit")?,
        max_unit: r.try_get("max_unit")?,
        step_size: r.try_get("step_size")?,
        allocation_ratio: r.try_get("allocation_ratio")?,
    })
}

pub async fn inventories(db: &Db, uuid: &str) -> Result<BTreeMap<String, Inventory>> {
    inventories_on(db, &mut *db.pool().acquire().await?, uuid).await
}

pub async fn inventories_tx(
    db: &Db,
    tx: &mut AnyConnection,
    uuid: &str,
) -> Result<BTreeMap<String, Inventory>> {
    inventories_on(db, tx, uuid).await
}

async fn inventories_on(db: &Db, c: &mut AnyConnection, uuid: &str) -> Result<BTreeMap<String, Inventory>> {
    let q = "SELECT resource_class, total, reserved, min_unit, max_unit, step_size, allocation_ratio \
             FROM inventories WHERE rp_uuid = ?";
    sqlx::query(&db.sql(q))
        .bind(uuid)
        .fetch_all(c)
        .await?
        .iter()
        .map(|r| Ok((get_text(r, "resource_class")?, inventory_from(r)?)))
        .collect()
}

pub async fn usages(db: &Db, uuid: &str) -> Result<BTreeMap<String, i64>> {
    usages_on(db, &mut *db.pool().acquire().await?, uuid).await
}

pub async fn usages_tx(db: &Db, tx: &mut AnyConnection, uuid: &str) -> Result<BTreeMap<String, i64>> {
    usages_on(db, tx, uuid).await
}

/// Usage per class of one provider.
async fn usages_on(db: &Db, c: &mut AnyConnection, uuid: &str) -> Result<BTreeMap<String, i64>> {
    let q = format!(
        "SELECT resource_class, {} AS used FROM allocations WHERE rp_uuid = ? GROUP BY resource_class",
        db.bigint("SUM(used)")
    );
    sqlx::query(&db.sql(&q))
        .bind(uuid)
        .fetch_all(c)
        .await?
        .iter()
        .map(|r| Ok((get_text(r, "resource_class")?, r.try_get("used")?)))
        .collect()
}

/// An inventory's fields, in table order.
pub const INVENTORY_FIELDS: [&str; 6] = [
    "total",
    "reserved",
    "min_unit",
    "max_unit",
    "step_size",
    "allocation_ratio",
];

/// The inventory fields, each written as `each` says, comma-separated.
fn inventory_fields(each: impl Fn(&str) -> String) -> String {
    INVENTORY_FIELDS.map(each).join(", ")
}

/// Replace a provider's inventories (all of them, or only `only` classes), checking its generation. Classes
/// removed while they have allocations are refused; a total below current usage is accepted with a warning.
/// PostgreSQL and SQLite check and write in one server-side call ([`inventories_write_pg`],
/// [`inventories_write_sqlite`]). MySQL reads the current inventories and usages first, outside the write
/// transaction (in parallel with other writers); the write then needs the generation unchanged, so they
/// cannot have changed meanwhile (claims bump the generation too; a release only lowers the usage).
pub async fn inventories_write(
    db: &Db,
    uuid: &str,
    expected_generation: i64,
    set: &BTreeMap<String, Inventory>,
    remove: &BTreeSet<String>,
    replace_all: bool,
) -> Result<i64> {
    if db.dialect() == tessera_db::Dialect::Postgres {
        return inventories_write_pg(db, uuid, expected_generation, set, remove, replace_all).await;
    }
    if db.dialect() == tessera_db::Dialect::Sqlite {
        return inventories_write_sqlite(db, uuid, expected_generation, set, remove, replace_all).await;
    }
    let cols: Vec<&str> = std::iter::once("resource_class")
        .chain(INVENTORY_FIELDS)
        .collect();
    let rows = provider_rows(db, uuid, expected_generation, "inventories", &cols).await?;
    let mut current = BTreeMap::new();
    for r in &rows {
        if let Some(rc) = get_opt_text(r, "resource_class")? {
            current.insert(rc, inventory_from(r)?);
        }
    }
    // Allocations need inventory: a provider without any has no usage to look up.
    let used = if current.is_empty() {
        BTreeMap::new()
    } else {
        let mut lease = db.lease().await?;
        let used = usages_on(db, lease.conn(), uuid).await?;
        lease.done();
        used
    };
    let removed: Vec<&String> = current
        .keys()
        .filter(|rc| remove.contains(*rc) || (replace_all && !set.contains_key(*rc)))
        .collect();
    if let Some(rc) = removed.iter().find(|rc| used.get(**rc).copied().unwrap_or(0) > 0) {
        return Err(in_use(rc, uuid));
    }
    let mut writes = delete_rows("inventories", "resource_class", uuid, &removed);
    let fields = |inv: &Inventory, rc: &str| -> [Val; 8] {
        [
            Val::I(inv.total),
            Val::I(inv.reserved),
            Val::I(inv.min_unit),
            Val::I(inv.max_unit),
            Val::I(inv.step_size),
            Val::F(inv.allocation_ratio),
            Val::S(uuid.to_string()),
            Val::S(rc.to_string()),
        ]
    };
    let mut added = Vec::new();
    for (rc, inv) in set {
        if let Some(u) = used.get(rc).filter(|u| **u > inv.capacity()) {
            tracing::warn!(provider = %uuid, resource_class = %rc, used = u, capacity = inv.capacity(),
                "inventory set below current usage: the provider is over capacity");
        }
        match current.get(rc) {
            Some(old) if old == inv => {}
            Some(_) => writes.push(Stmt {
                sql: "UPDATE inventories SET total = ?, reserved = ?, min_unit = ?, max_unit = ?, step_size = ?, \
                      allocation_ratio = ? WHERE rp_uuid = ? AND resource_class = ?"
                    .into(),
                binds: fields(inv, rc).into(),
            }),
            None => added.push((rc, inv)),
        }
    }
    if !added.is_empty() {
        // New classes in one multi-row INSERT.
        writes.push(Stmt {
            sql: format!(
                "INSERT INTO inventories (total, reserved, min_unit, max_unit, step_size, allocation_ratio, \
                 rp_uuid, resource_class) VALUES {}",
                vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; added.len()].join(", ")
            ),
            binds: added.iter().flat_map(|(rc, inv)| fields(inv, rc)).collect(),
        });
    }
    let uuid = uuid.to_string();
    batched(db, Result::is_ok, move |db, tx, touched| {
        let (uuid, writes) = (uuid.clone(), writes.clone());
        Box::pin(async move { bump_and_write(db, tx, &uuid, expected_generation, &writes, touched).await })
    })
    .await
}

/// [`inventories_write`] on PostgreSQL: one `inv` write of `placement_write` (see [`pg_write`]). It finds the
/// classes to remove, refuses (writes nothing) when one of them has allocations, bumps the generation from
/// `expected`, deletes the removed classes, inserts or updates the set (an unchanged row is not rewritten),
/// records the change, and answers the new generation, the first class found in use, the provider's
/// generation (none: no such provider) and the usage of the set's classes (for the over-capacity warning).
async fn inventories_write_pg(
    db: &Db,
    uuid: &str,
    expected: i64,
    set: &BTreeMap<String, Inventory>,
    remove: &BTreeSet<String>,
    replace_all: bool,
) -> Result<i64> {
    let rows = inventory_args(set);
    let r = pg_write(
        db,
        uuid,
        serde_json::json!({
            "k": "inv",
            "uuid": uuid,
            "expected": expected,
            "now": tessera_types::now_epoch_micros(),
            "set": rows,
            "remove": remove,
            "replace_all": replace_all,
        }),
    )
    .await?;
    let (generation, inuse, current, used) = (
        r["generation"].as_i64(),
        r["inuse"].as_str(),
        r["current"].as_i64(),
        r["used"].as_str(),
    );
    match (generation, current, inuse) {
        (Some(g), _, _) => {
            logged(db, 1);
            warn_over_capacity(uuid, set, used);
            Ok(g)
        }
        (None, None, _) => Err(no_provider(uuid)),
        (None, Some(c), Some(rc)) if c == expected => Err(in_use(rc, uuid)),
        // Another generation, or another request moved it while this one waited for the row.
        (None, Some(_), _) => Err(moved(uuid)),
    }
}

// ---------------------------------------------------------------- traits and aggregates of providers

pub async fn provider_links(db: &Db, table: &str, col: &str, uuid: &str) -> Result<Vec<String>> {
    sqlx::query(&db.sql(&format!(
        "SELECT {col} FROM {table} WHERE rp_uuid = ? ORDER BY {col}"
    )))
    .bind(uuid)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|r| Ok(get_text(r, col)?))
    .collect()
}

/// Replace a provider's traits or aggregates. With `expected`, its generation is checked and bumped (a
/// missing provider is a 404) — unless `keep_unchanged` and the set is the same, which writes nothing and
/// keeps the generation (traits, as upstream); without (aggregates before 1.19), neither. Returns the
/// provider's generation after the write when it was checked. PostgreSQL and SQLite compare and write in one
/// statement or call; MySQL reads the current set first, outside the write transaction, and the write needs
/// the generation unchanged.
pub async fn provider_links_set(
    db: &Db,
    table: &'static str,
    col: &'static str,
    uuid: &str,
    expected: Option<i64>,
    values: &BTreeSet<String>,
    keep_unchanged: bool,
) -> Result<Option<i64>> {
    let insert = |vals: &[&String]| -> Vec<Stmt> {
        vals.chunks(200)
            .map(|chunk| Stmt {
                sql: format!(
                    "INSERT INTO {table} (rp_uuid, {col}) VALUES {}",
                    vec!["(?, ?)"; chunk.len()].join(", ")
                ),
                binds: chunk
                    .iter()
                    .flat_map(|v| [Val::S(uuid.to_string()), Val::S(v.to_string())])
                    .collect(),
            })
            .collect()
    };
    let Some(expected) = expected else {
        // No generation: replace the set whole.
        let mut writes = vec![Stmt {
            sql: format!("DELETE FROM {table} WHERE rp_uuid = ?"),
            binds: vec![Val::S(uuid.to_string())],
        }];
        writes.extend(insert(&values.iter().collect::<Vec<_>>()));
        let uuid = uuid.to_string();
        return batched(db, Result::is_ok, move |db, tx, touched| {
            let (uuid, writes) = (uuid.clone(), writes.clone());
            Box::pin(async move {
                for w in &writes {
                    let sql = db.sql(&w.sql);
                    bind_vals(sqlx::query(&sql), &w.binds).execute(&mut *tx).await?;
                }
                touched.push(uuid);
                Ok(None)
            })
        })
        .await;
    };
    if db.dialect() == tessera_db::Dialect::Postgres {
        return links_set_pg(db, table, uuid, expected, values, keep_unchanged).await;
    }
    if db.dialect() == tessera_db::Dialect::Sqlite {
        return links_set_sqlite(db, table, col, uuid, expected, values, keep_unchanged).await;
    }
    let rows = provider_rows(db, uuid, expected, table, &[col]).await?;
    let current: BTreeSet<String> = rows
        .iter()
        .map(|r| get_opt_text(r, col))
        .filter_map(|v| v.transpose())
        .collect::<Result<_, _>>()?;
    if keep_unchanged && &current == values {
        return Ok(Some(expected));
    }
    let removed: Vec<&String> = current.difference(values).collect();
    let mut writes = delete_rows(table, col, uuid, &removed);
    writes.extend(insert(&values.difference(&current).collect::<Vec<_>>()));
    let uuid = uuid.to_string();
    batched(db, Result::is_ok, move |db, tx, touched| {
        let (uuid, writes) = (uuid.clone(), writes.clone());
        Box::pin(async move {
            Ok(Some(
                bump_and_write(db, tx, &uuid, expected, &writes, touched).await?,
            ))
        })
    })
    .await
}

/// The row of a multi-statement answer that has column `col`, and its value (see [`sqlite_one_call`]).
fn row_value<T>(rows: &[&AnyRow], col: &str) -> Result<Option<T>>
where
    T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    match rows.iter().find(|r| r.try_column(col).is_ok()) {
        Some(r) => Ok(r.try_get::<Option<T>, _>(col)?),
        None => Ok(None),
    }
}

/// Run `sql` (several statements, `?` binds in order) as a job of SQLite's group commit: one call to the
/// writer connection's thread, the read before a write folded into it. What it wrote is kept only if `judge`,
/// given its rows, says the job succeeded: otherwise the batch is rolled back and its other jobs run again
/// alone. The provider `uuid` is recorded as touched (in a batch of several, even when the job wrote nothing:
/// the capacity index then reloads a provider it did not need to). With `bulk` (its kind and arguments),
/// the job can also go into a bulk batch ([`sqlite_bulk`]), where the same rows come from that batch's
/// statements.
async fn sqlite_one_call<T, J>(
    db: &Db,
    uuid: &str,
    sql: String,
    binds: Vec<Val>,
    bulk: Option<(&'static str, serde_json::Value)>,
    judge: J,
) -> Result<T>
where
    T: Send + 'static,
    J: Fn(&[&AnyRow]) -> Result<(T, bool)> + Send + Sync + 'static,
{
    let job = std::sync::Arc::new(SqliteJob {
        stmts: tessera_db::Statements { sql, binds },
        uuid: uuid.to_string(),
        bulk: bulk.map(|(kind, args)| (kind, args.to_string())),
        judge,
        out: std::sync::Mutex::new(None),
    });
    submit(db, job, |j| &j.out, Result::is_ok).await
}

/// Log the classes of `set` whose usage (`used`: `CLASS=amount,…`) exceeds their new capacity.
fn warn_over_capacity(uuid: &str, set: &BTreeMap<String, Inventory>, used: Option<&str>) {
    for (rc, u) in used
        .iter()
        .flat_map(|u| u.split(','))
        .filter_map(|p| p.split_once('='))
    {
        let (Some(inv), Ok(u)) = (set.get(rc), u.parse::<i64>()) else {
            continue;
        };
        if u > inv.capacity() {
            tracing::warn!(provider = %uuid, resource_class = %rc, used = u, capacity = inv.capacity(),
                "inventory set below current usage: the provider is over capacity");
        }
    }
}

/// [`inventories_write`] on SQLite, in one call to the writer (see [`sqlite_one_call`]): the first removed
/// class still allocated and the usage of the set's classes (read before the writes), the removed classes
/// deleted, the set's rows inserted or updated (an unchanged row is not rewritten), the generation bump from
/// `expected`, and the generation read back. A missing provider is a 404, a moved one a 409, a removed class
/// in use a 409 `inventory.inuse` — the job fails, and what it wrote is rolled back.
async fn inventories_write_sqlite(
    db: &Db,
    uuid: &str,
    expected: i64,
    set: &BTreeMap<String, Inventory>,
    remove: &BTreeSet<String>,
    replace_all: bool,
) -> Result<i64> {
    let u = || Val::S(uuid.to_string());
    let classes = || set.keys().map(|rc| Val::S(rc.clone()));
    // The classes removed: named in `remove`, or (replacing all) left out of the set.
    let mut removed = Vec::new();
    let mut removed_binds = Vec::new();
    if !remove.is_empty() {
        removed.push(format!("resource_class IN {}", tessera_db::in_list(remove.len())));
        removed_binds.extend(remove.iter().map(|rc| Val::S(rc.clone())));
    }
    if replace_all {
        if set.is_empty() {
            removed.push("1".to_string());
        } else {
            removed.push(format!(
                "resource_class NOT IN {}",
                tessera_db::in_list(set.len())
            ));
            removed_binds.extend(classes());
        }
    }
    let removed = if removed.is_empty() {
        "0".to_string()
    } else {
        removed.join(" OR ")
    };
    let mut binds = vec![u(), u()];
    binds.extend(removed_binds.iter().cloned());
    let used = if set.is_empty() {
        "NULL".to_string()
    } else {
        binds.push(u());
        binds.extend(classes());
        format!(
            "(SELECT group_concat(resource_class || '=' || s, ',') FROM (SELECT resource_class, SUM(used) AS s \
             FROM allocations WHERE rp_uuid = ? AND resource_class IN {} GROUP BY resource_class))",
            tessera_db::in_list(set.len())
        )
    };
    let mut sql = format!(
        "SELECT (SELECT resource_class FROM allocations WHERE rp_uuid = ? AND used > 0 AND resource_class IN \
         (SELECT resource_class FROM inventories WHERE rp_uuid = ? AND ({removed})) ORDER BY resource_class LIMIT 1) \
         AS inuse, {used} AS used; DELETE FROM inventories WHERE rp_uuid = ? AND ({removed})"
    );
    binds.push(u());
    binds.extend(removed_binds);
    if !set.is_empty() {
        sql.push_str(&format!(
            "; INSERT INTO inventories (rp_uuid, resource_class, {}) VALUES {} ON CONFLICT (rp_uuid, resource_class) \
             DO UPDATE SET {} WHERE ({}) IS NOT ({})",
            inventory_fields(str::to_string),
            vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; set.len()].join(", "),
            inventory_fields(|f| format!("{f} = excluded.{f}")),
            inventory_fields(|f| format!("inventories.{f}")),
            inventory_fields(|f| format!("excluded.{f}")),
        ));
        for (rc, inv) in set {
            binds.extend([
                u(),
                Val::S(rc.clone()),
                Val::I(inv.total),
                Val::I(inv.reserved),
                Val::I(inv.min_unit),
                Val::I(inv.max_unit),
                Val::I(inv.step_size),
                Val::F(inv.allocation_ratio),
            ]);
        }
    }
    sql.push_str(
        "; UPDATE resource_providers SET generation = generation + 1, updated_at = ? WHERE uuid = ? \
         AND generation = ? RETURNING generation AS bumped; SELECT generation AS current FROM resource_providers \
         WHERE uuid = ?",
    );
    let now = tessera_types::now_epoch_micros();
    binds.extend([Val::I(now), u(), Val::I(expected), u()]);
    let bulk = serde_json::json!({
        "uuid": uuid,
        "expected": expected,
        "now": now,
        "set": inventory_args(set),
        "remove": remove,
        "replace_all": replace_all,
    });
    let (id, set) = (uuid.to_string(), set.clone());
    sqlite_one_call(db, uuid, sql, binds, Some(("inv", bulk)), move |rows| {
        let bumped = row_value::<i64>(rows, "bumped")?;
        match (
            bumped,
            row_value::<i64>(rows, "current")?,
            row_value::<String>(rows, "inuse")?,
        ) {
            (None, None, _) => Err(no_provider(&id)),
            (None, Some(_), _) => Err(moved(&id)),
            (Some(_), _, Some(rc)) => Err(in_use(&rc, &id)),
            (Some(g), _, None) => {
                warn_over_capacity(&id, &set, row_value::<String>(rows, "used")?.as_deref());
                Ok((g, true))
            }
        }
    })
    .await
}

/// [`provider_links_set`] with a generation, on SQLite, in one call to the writer (see [`sqlite_one_call`]):
/// the generation bump from `expected` (when `keep_unchanged`, only if the set differs), the rows no longer
/// in the set deleted, the new ones inserted, and the generation read back. Unbumped, the provider is missing
/// (404), or moved on (409: the job fails, and what it wrote is rolled back), or — same generation — its set
/// was already this one (the deletes and inserts found nothing to do).
async fn links_set_sqlite(
    db: &Db,
    table: &'static str,
    col: &'static str,
    uuid: &str,
    expected: i64,
    values: &BTreeSet<String>,
    keep_unchanged: bool,
) -> Result<Option<i64>> {
    let list = tessera_db::in_list(values.len());
    let u = || Val::S(uuid.to_string());
    let vals = || values.iter().map(|v| Val::S(v.clone()));
    let now = tessera_types::now_epoch_micros();
    let mut binds = vec![Val::I(now), u(), Val::I(expected)];
    let changed = match (keep_unchanged, values.is_empty()) {
        (false, _) => "1".to_string(),
        (true, true) => {
            binds.push(u());
            format!("EXISTS (SELECT 1 FROM {table} WHERE rp_uuid = ?)")
        }
        (true, false) => {
            binds.push(u());
            binds.push(Val::I(values.len() as i64));
            binds.push(u());
            binds.extend(vals());
            format!(
                "(SELECT COUNT(*) FROM {table} WHERE rp_uuid = ?) <> ? \
                 OR EXISTS (SELECT 1 FROM {table} WHERE rp_uuid = ? AND {col} NOT IN {list})"
            )
        }
    };
    let mut sql = format!(
        "UPDATE resource_providers SET generation = generation + 1, updated_at = ? \
         WHERE uuid = ? AND generation = ? AND ({changed}) RETURNING generation AS bumped; \
         DELETE FROM {table} WHERE rp_uuid = ?"
    );
    binds.push(u());
    if !values.is_empty() {
        sql.push_str(&format!(
            " AND {col} NOT IN {list}; INSERT OR IGNORE INTO {table} (rp_uuid, {col}) VALUES {}",
            vec!["(?, ?)"; values.len()].join(", ")
        ));
        binds.extend(vals());
        binds.extend(values.iter().flat_map(|v| [u(), Val::S(v.clone())]));
    }
    sql.push_str("; SELECT generation AS current FROM resource_providers WHERE uuid = ?");
    binds.push(u());
    let id = uuid.to_string();
    let kind = match table {
        "rp_traits" => Some("traits"),
        "rp_aggregates" => Some("aggregates"),
        _ => None,
    };
    let bulk = kind.map(|k| {
        (
            k,
            serde_json::json!({
                "uuid": uuid,
                "expected": expected,
                "now": now,
                "values": values,
                "keep": keep_unchanged,
            }),
        )
    });
    sqlite_one_call(db, uuid, sql, binds, bulk, move |rows| {
        match (
            row_value::<i64>(rows, "bumped")?,
            row_value::<i64>(rows, "current")?,
        ) {
            (Some(g), _) => Ok((Some(g), true)),
            (None, None) => Err(no_provider(&id)),
            (None, Some(c)) if c == expected && keep_unchanged => Ok((Some(expected), false)),
            (None, Some(_)) => Err(moved(&id)),
        }
    })
    .await
}

/// [`provider_links_set`] with a generation, on PostgreSQL: one `traits` or `aggregates` write of
/// `placement_write` (see [`pg_write`]), without a read before it. It compares the current set with the new
/// one (when `keep_unchanged`), bumps the generation from `expected` only when they differ, deletes what is no
/// longer in the set, inserts what is new, records the change, and answers the new generation, whether the set
/// differed, and the provider's generation (none: no such provider), which tells a 404 from a 409.
async fn links_set_pg(
    db: &Db,
    table: &'static str,
    uuid: &str,
    expected: i64,
    values: &BTreeSet<String>,
    keep_unchanged: bool,
) -> Result<Option<i64>> {
    let kind = if table == "rp_traits" {
        "traits"
    } else {
        "aggregates"
    };
    let r = pg_write(
        db,
        uuid,
        serde_json::json!({
            "k": kind,
            "uuid": uuid,
            "expected": expected,
            "now": tessera_types::now_epoch_micros(),
            "values": values,
            "keep_unchanged": keep_unchanged,
        }),
    )
    .await?;
    let (generation, changed, current) = (
        r["generation"].as_i64(),
        r["changed"].as_bool() == Some(true),
        r["current"].as_i64(),
    );
    match (generation, current) {
        (Some(g), _) => {
            logged(db, 1);
            Ok(Some(g))
        }
        (None, None) => Err(no_provider(uuid)),
        // The same set: nothing written, the generation kept.
        (None, Some(c)) if c == expected && !changed => Ok(Some(expected)),
        (None, Some(_)) => Err(moved(uuid)),
    }
}

// ---------------------------------------------------------------- consumers and allocations

fn consumer_from(r: &AnyRow) -> Result<Consumer> {
    Ok(Consumer {
        uuid: get_text(r, "uuid")?,
        project_id: get_text(r, "project_id")?,
        user_id: get_text(r, "user_id")?,
        generation: r.try_get("generation")?,
        consumer_type: get_opt_text(r, "consumer_type")?,
    })
}

pub async fn consumer_get(db: &Db, uuid: &str) -> Result<Option<Consumer>> {
    consumer_get_on(db, &mut *db.pool().acquire().await?, uuid).await
}

async fn consumer_get_on(db: &Db, c: &mut AnyConnection, uuid: &str) -> Result<Option<Consumer>> {
    sqlx::query(
        &db.sql("SELECT uuid, project_id, user_id, generation, consumer_type FROM consumers WHERE uuid = ?"),
    )
    .bind(uuid)
    .fetch_optional(c)
    .await?
    .as_ref()
    .map(consumer_from)
    .transpose()
}

/// (provider, class) → amount.
pub type Amounts = BTreeMap<(String, String), i64>;

pub async fn consumer_allocations(db: &Db, uuid: &str) -> Result<Amounts> {
    sqlx::query(&db.sql("SELECT rp_uuid, resource_class, used FROM allocations WHERE consumer_uuid = ?"))
        .bind(uuid)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| {
            Ok((
                (get_text(r, "rp_uuid")?, get_text(r, "resource_class")?),
                r.try_get("used")?,
            ))
        })
        .collect()
}

/// consumer → (class → amount), and each consumer's generation, for one provider.
pub async fn provider_allocations(
    db: &Db,
    uuid: &str,
) -> Result<BTreeMap<String, (BTreeMap<String, i64>, Option<i64>)>> {
    let rows = sqlx::query(&db.sql(
        "SELECT a.consumer_uuid, a.resource_class, a.used, c.generation FROM allocations a \
         LEFT JOIN consumers c ON c.uuid = a.consumer_uuid WHERE a.rp_uuid = ?",
    ))
    .bind(uuid)
    .fetch_all(db.pool())
    .await?;
    let mut out: BTreeMap<String, (BTreeMap<String, i64>, Option<i64>)> = BTreeMap::new();
    for r in rows {
        let e = out.entry(get_text(&r, "consumer_uuid")?).or_default();
        e.0.insert(get_text(&r, "resource_class")?, r.try_get("used")?);
        e.1 = r.try_get("generation")?;
    }
    Ok(out)
}

/// The new allocations of one consumer in a write.
#[derive(Debug, Clone)]
pub struct ConsumerWrite {
    pub consumer: String,
    pub project_id: String,
    pub user_id: String,
    /// `Some(None)`: expected to have no allocations (`consumer_generation: null`); `Some(Some(g))`: expected
    /// generation; `None`: not checked (microversions before 1.28).
    pub expected_generation: Option<Option<i64>>,
    pub consumer_type: Option<String>,
    pub amounts: Amounts,
}

/// Why an allocation write could not be done; `Retry` is a lost race on a provider generation.
enum Attempt {
    Done,
    Retry,
}

/// Replace the allocations of every consumer in `writes`, atomically, checking capacity and unit rules.
/// Lost races on provider generations are retried up to `retries` times.
pub async fn allocations_write(db: &Db, writes: &[ConsumerWrite], retries: u32) -> Result<()> {
    for attempt in 0..=retries {
        match allocations_attempt(db, writes).await {
            Ok(Attempt::Done) => return Ok(()),
            Ok(Attempt::Retry) => {
                tracing::debug!(
                    attempt,
                    "allocation write lost a provider generation race; retrying"
                );
            }
            Err(PlacementError::Db(e)) if is_busy(&e) => {
                tracing::debug!(attempt, "allocation write hit a locked database; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(1 + (attempt as u64 * 3) % 17)).await;
    }
    Err(concurrent(
        "Unable to allocate inventory: another request updated the same resource providers; retry.",
    ))
}

fn is_busy(e: &tessera_db::DbError) -> bool {
    let tessera_db::DbError::Sqlx(sqlx::Error::Database(d)) = e else {
        return false;
    };
    let code = d.code().map(|c| c.to_string()).unwrap_or_default();
    // SQLite BUSY / BUSY_SNAPSHOT / LOCKED, PostgreSQL serialization failure / deadlock, MySQL deadlock /
    // lock wait timeout.
    matches!(
        code.as_str(),
        "5" | "517" | "6" | "40001" | "40P01" | "1213" | "1205"
    ) || d.message().contains("database is locked")
}

async fn allocations_attempt(db: &Db, writes: &[ConsumerWrite]) -> Result<Attempt> {
    let writes = writes.to_vec();
    // A lost race (`Retry`) is not kept: its partial writes roll back.
    batched(
        db,
        |r| matches!(r, Ok(Attempt::Done)),
        move |db, tx, touched| {
            let writes = writes.clone();
            Box::pin(async move {
                let mut mine: BTreeSet<String> = BTreeSet::new();
                if let Attempt::Retry = apply_allocations(db, tx, &writes, &mut mine).await? {
                    return Ok(Attempt::Retry);
                }
                touched.extend(mine);
                Ok(Attempt::Done)
            })
        },
    )
    .await
}

/// The allocation write inside a transaction: consumer generation checks, old allocations out, capacity and
/// unit checks against what the transaction sees, the provider-generation race guard, new allocations in.
/// Providers whose usage changed are added to `touched`.
async fn apply_allocations(
    db: &Db,
    tx: &mut AnyConnection,
    writes: &[ConsumerWrite],
    touched: &mut BTreeSet<String>,
) -> Result<Attempt> {
    let now = tessera_types::now_epoch_micros();
    // Consumers first: generation checks, then their old allocations go.
    for w in writes {
        let existing = consumer_get_on(db, tx, &w.consumer).await?;
        match (&w.expected_generation, &existing) {
            (Some(None), Some(c)) => {
                return Err(concurrent(format!(
                    "consumer generation conflict - expected null but got {}",
                    c.generation
                )))
            }
            (Some(Some(g)), None) => {
                return Err(concurrent(format!(
                    "consumer generation conflict - expected {g} but got None"
                )))
            }
            (Some(Some(g)), Some(c)) if *g != c.generation => {
                return Err(concurrent(format!(
                    "consumer generation conflict - expected {g} but got {}",
                    c.generation
                )))
            }
            _ => {}
        }
        for r in sqlx::query(&db.sql("SELECT DISTINCT rp_uuid FROM allocations WHERE consumer_uuid = ?"))
            .bind(&w.consumer)
            .fetch_all(&mut *tx)
            .await?
        {
            touched.insert(get_text(&r, "rp_uuid")?);
        }
        sqlx::query(&db.sql("DELETE FROM allocations WHERE consumer_uuid = ?"))
            .bind(&w.consumer)
            .execute(&mut *tx)
            .await?;
        match (&existing, w.amounts.is_empty()) {
            (Some(c), true) => {
                let n = sqlx::query(&db.sql("DELETE FROM consumers WHERE uuid = ? AND generation = ?"))
                    .bind(&w.consumer)
                    .bind(c.generation)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n != 1 {
                    return Err(concurrent("consumer was updated by another request"));
                }
            }
            (Some(c), false) => {
                let n = sqlx::query(&db.sql(
                    "UPDATE consumers SET generation = generation + 1, project_id = ?, user_id = ?, \
                     consumer_type = COALESCE(?, consumer_type), updated_at = ? WHERE uuid = ? AND generation = ?",
                ))
                .bind(&w.project_id)
                .bind(&w.user_id)
                .bind(w.consumer_type.clone())
                .bind(now)
                .bind(&w.consumer)
                .bind(c.generation)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n != 1 {
                    return Err(concurrent("consumer was updated by another request"));
                }
            }
            (None, false) => {
                sqlx::query(&db.sql(
                    "INSERT INTO consumers (uuid, project_id, user_id, generation, consumer_type, created_at, \
                     updated_at) VALUES (?, ?, ?, 1, ?, ?, ?)",
                ))
                .bind(&w.consumer)
                .bind(&w.project_id)
                .bind(&w.user_id)
                .bind(w.consumer_type.clone())
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    if tessera_db::is_unique_violation(&e) {
                        concurrent("consumer was created by another request")
                    } else {
                        e.into()
                    }
                })?;
            }
            (None, true) => {}
        }
    }
    // Capacity: per provider, the sum of what this write asks plus what others hold.
    let mut asked: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    for w in writes {
        for ((rp, rc), n) in &w.amounts {
            *asked.entry(rp).or_default().entry(rc).or_default() += n;
        }
    }
    for (rp, classes) in &asked {
        let Some(p) = provider_get_tx(db, tx, rp).await? else {
            return Err(PlacementError::BadRequest(
                format!("Allocation for resource provider '{rp}' that does not exist."),
                None,
            ));
        };
        let inv = inventories_tx(db, tx, rp).await?;
        let used = usages_tx(db, tx, rp).await?;
        for (rc, n) in classes {
            let Some(i) = inv.get(*rc) else {
                return Err(PlacementError::Conflict(
                    format!(
                        "Unable to allocate inventory: Inventory for '{rc}' on resource provider '{rp}' invalid."
                    ),
                    None,
                ));
            };
            let u = used.get(*rc).copied().unwrap_or(0);
            if u + n > i.capacity() {
                return Err(PlacementError::Conflict(
                    format!(
                        "Unable to allocate inventory: Unable to create allocation for '{rc}' on resource \
                         provider '{rp}'. The requested amount would exceed the capacity."
                    ),
                    None,
                ));
            }
        }
        for w in writes {
            for ((wrp, rc), n) in &w.amounts {
                if wrp != rp {
                    continue;
                }
                let Some(i) = inv.get(rc) else { continue };
                if *n < i.min_unit || *n > i.max_unit || (i.step_size > 0 && n % i.step_size != 0) {
                    return Err(PlacementError::Conflict(
                        format!(
                            "Unable to allocate inventory: Unable to create allocation for '{rc}' on resource \
                             provider '{rp}'. The requested amount would violate inventory constraints."
                        ),
                        None,
                    ));
                }
            }
        }
        // The race guard: if another write touched this provider since we read it, start over.
        let n = sqlx::query(&db.sql(
            "UPDATE resource_providers SET generation = generation + 1, updated_at = ? WHERE uuid = ? AND generation = ?",
        ))
        .bind(now)
        .bind(*rp)
        .bind(p.generation)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(Attempt::Retry);
        }
    }
    for w in writes {
        for ((rp, rc), n) in &w.amounts {
            sqlx::query(&db.sql(
                "INSERT INTO allocations (consumer_uuid, rp_uuid, resource_class, used, created_at) VALUES (?, ?, ?, ?, ?)",
            ))
            .bind(&w.consumer)
            .bind(rp)
            .bind(rc)
            .bind(*n)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
    }
    touched.extend(asked.keys().map(|k| k.to_string()));
    Ok(Attempt::Done)
}

/// `DELETE /allocations/{consumer}`: false when it had none.
pub async fn consumer_delete(db: &Db, uuid: &str) -> Result<bool> {
    let mut tx = db.begin_write().await?;
    let rps: Vec<String> =
        sqlx::query(&db.sql("SELECT DISTINCT rp_uuid FROM allocations WHERE consumer_uuid = ?"))
            .bind(uuid)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| get_text(r, "rp_uuid"))
            .collect::<Result<_, _>>()?;
    let n = sqlx::query(&db.sql("DELETE FROM allocations WHERE consumer_uuid = ?"))
        .bind(uuid)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query(&db.sql("DELETE FROM consumers WHERE uuid = ?"))
        .bind(uuid)
        .execute(&mut *tx)
        .await?;
    if n == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    let rps: Vec<&str> = rps.iter().map(String::as_str).collect();
    bump_revision(db, &mut tx, &rps).await?;
    tx.commit().await?;
    Ok(true)
}

/// Usage of a project (optionally one user) as (consumer type or None) → (class → amount, consumer count).
pub async fn project_usages(
    db: &Db,
    project: &str,
    user: Option<&str>,
) -> Result<BTreeMap<Option<String>, (BTreeMap<String, i64>, i64)>> {
    let mut q = format!(
        "SELECT c.consumer_type, a.resource_class, {} AS used, COUNT(DISTINCT a.consumer_uuid) AS consumers \
         FROM allocations a JOIN consumers c ON c.uuid = a.consumer_uuid WHERE c.project_id = ?",
        db.bigint("SUM(a.used)")
    );
    if user.is_some() {
        q.push_str(" AND c.user_id = ?");
    }
    q.push_str(" GROUP BY c.consumer_type, a.resource_class");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql).bind(project);
    if let Some(u) = user {
        query = query.bind(u);
    }
    let mut out: BTreeMap<Option<String>, (BTreeMap<String, i64>, i64)> = BTreeMap::new();
    for r in query.fetch_all(db.pool()).await? {
        let e = out.entry(get_opt_text(&r, "consumer_type")?).or_default();
        e.0.insert(get_text(&r, "resource_class")?, r.try_get("used")?);
        e.1 = e.1.max(r.try_get::<i64, _>("consumers")?);
    }
    // Consumer counts per type must count consumers, not the largest per-class count.
    let mut q = "SELECT consumer_type, COUNT(*) AS n FROM consumers WHERE project_id = ?".to_string();
    if user.is_some() {
        q.push_str(" AND user_id = ?");
    }
    q.push_str(" GROUP BY consumer_type");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql).bind(project);
    if let Some(u) = user {
        query = query.bind(u);
    }
    for r in query.fetch_all(db.pool()).await? {
        if let Some(e) = out.get_mut(&get_opt_text(&r, "consumer_type")?) {
            e.1 = r.try_get("n")?;
        }
    }
    Ok(out)
}

/// New inventories of one provider in a reshape.
#[derive(Debug, Clone)]
pub struct ReshapeInventory {
    pub rp: String,
    pub generation: i64,
    pub inventories: BTreeMap<String, Inventory>,
}

/// `POST /reshaper`: replace the inventories of some providers and the allocations of some consumers in one
/// transaction. The end state must be consistent: every allocation on an inventory that exists and fits.
pub async fn reshape(
    db: &Db,
    invs: &[ReshapeInventory],
    writes: &[ConsumerWrite],
    retries: u32,
) -> Result<()> {
    for attempt in 0..=retries {
        let mut tx = db.begin_write().await?;
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for ri in invs {
            bump_generation(db, &mut tx, &ri.rp, ri.generation).await?;
            sqlx::query(&db.sql("DELETE FROM inventories WHERE rp_uuid = ?"))
                .bind(&ri.rp)
                .execute(&mut *tx)
                .await?;
            for (rc, inv) in &ri.inventories {
                sqlx::query(&db.sql(
                    "INSERT INTO inventories (total, reserved, min_unit, max_unit, step_size, allocation_ratio, rp_uuid, \
                     resource_class) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ))
                .bind(inv.total)
                .bind(inv.reserved)
                .bind(inv.min_unit)
                .bind(inv.max_unit)
                .bind(inv.step_size)
                .bind(inv.allocation_ratio)
                .bind(&ri.rp)
                .bind(rc)
                .execute(&mut *tx)
                .await?;
            }
            touched.insert(ri.rp.clone());
        }
        match apply_allocations(db, &mut tx, writes, &mut touched).await {
            Ok(Attempt::Done) => {}
            Ok(Attempt::Retry) => {
                tx.rollback().await?;
                tracing::debug!(attempt, "reshape lost a provider generation race; retrying");
                continue;
            }
            Err(e) => return Err(e),
        }
        for rp in &touched {
            let inv = inventories_tx(db, &mut tx, rp).await?;
            for (rc, used) in usages_tx(db, &mut tx, rp).await? {
                if used > 0 && !inv.contains_key(&rc) {
                    return Err(in_use(&rc, rp));
                }
            }
        }
        let touched: Vec<&str> = touched.iter().map(String::as_str).collect();
        bump_revision(db, &mut tx, &touched).await?;
        tx.commit().await?;
        return Ok(());
    }
    Err(concurrent(
        "Unable to reshape: another request updated the same resource providers; retry.",
    ))
}
