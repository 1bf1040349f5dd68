//! Group commit: write transactions queued at the same moment share one database transaction — one
//! `BEGIN`/`COMMIT` (one WAL flush on PostgreSQL and MySQL) for several writers. A job runs inside the shared
//! transaction and says whether it succeeded; a batch in which any job fails is rolled back whole and its
//! jobs run again one by one in their own transactions, so no job's outcome depends on another's. Jobs must
//! therefore be re-runnable (what they read before the transaction they check inside it, as placement's
//! writes do with the provider generation).
//!
//! Jobs leave marks (strings: for placement, the providers they touched) that a tail step, given with the
//! job, writes once per transaction just before `COMMIT` (placement's change records: one write per
//! transaction, not one per job).
//!
//! A batch runs its jobs and its tail holding a slot, and gives the slot back before its `COMMIT`: the next
//! batch runs its statements while this one waits for its WAL flush, and the engine flushes concurrent
//! commits together (placement's change records on PostgreSQL take no shared lock; on MySQL the next batch
//! waits at the revision row, on SQLite for the single writer connection). How many slots there are is the
//! first caller's choice ([`Db::write_batched`]'s `parallel`).
//!
//! On an SQLite file the queue keeps the one writer connection between batches while writes keep coming, and
//! gives it back to its pool when the queue runs empty (or after [`WRITER_HELD`], so that other writers get
//! their turn): sqlx pings every connection its pool takes back — a call to the connection's thread, two
//! context switches — and on the single writer that call would sit between every two batches.
//!
//! On SQLite a call to the connection's thread costs ~40 µs of wake-ups on a small virtual machine, more than
//! most statements. A batch whose jobs are all [`Statements`] (and whose tail has a statement form) therefore
//! runs in one call per job and one for the tail and `COMMIT`, `BEGIN IMMEDIATE` going with the first job's
//! statements — two calls fewer than `BEGIN`, the jobs, the tail and `COMMIT` each on its own. Each job judges
//! its rows before the next runs. The statements stay apart, not one string for the whole batch: each job's
//! SQL (alone or after `BEGIN`) and the tail's recur and stay in the connection's statement cache, where a
//! whole batch's would be prepared afresh every time — which measured slower than the calls it saves. (The
//! tail goes with `COMMIT`, not with the last job, so that the cache holds two forms of each job's SQL, not
//! four: each form is several prepared statements, and memory counts.)
//!
//! Better still, when the queue's tail has a bulk form ([`Tail::bulk`]) and a batch's jobs each offer a
//! [`BulkPart`] with a key of their own, the batch is one set of statements that is the same for every batch
//! (each kind of write over a JSON array of the jobs of that kind): one call, `BEGIN IMMEDIATE`, those
//! statements and `COMMIT`, and the statements stay prepared. The statements themselves fail when a job would
//! refuse (a refusal is an SQL error there, which rolls the batch back and sends its jobs to run alone), so
//! that `COMMIT` can go in the same call; each job then judges the rows its key names, for its outcome.

use crate::{Any, Db, DbError, Transaction};
use sqlx::any::AnyRow;
use sqlx::pool::PoolConnection;
use sqlx::{AnyConnection, Connection, Row};
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

/// Longest the queue keeps SQLite's writer connection from its pool while writes keep coming.
const WRITER_HELD: Duration = Duration::from_millis(50);

/// SQLite's writer connection as the queue keeps it between batches, with when it was taken from its pool.
type Held = Arc<tokio::sync::Mutex<Option<(PoolConnection<Any>, Instant)>>>;

/// Most jobs one shared transaction takes.
const MAX_BATCH: usize = 32;

pub type JobFuture<'t> = Pin<Box<dyn Future<Output = bool> + Send + 't>>;

/// A value bound to a `?` placeholder.
#[derive(Clone, Debug)]
pub enum Val {
    I(i64),
    F(f64),
    S(String),
    Null,
}

/// Bind `vals` to `q`'s placeholders, in order.
pub fn bind_vals<'q>(
    q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    vals: impl IntoIterator<Item = &'q Val>,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    vals.into_iter().fold(q, |q, v| match v {
        Val::I(i) => q.bind(*i),
        Val::F(f) => q.bind(*f),
        Val::S(s) => q.bind(s.as_str()),
        Val::Null => q.bind(None::<String>),
    })
}

/// SQL of one or more statements (`?` placeholders, SQLite's syntax), with its binds in order.
#[derive(Clone, Debug, Default)]
pub struct Statements {
    pub sql: String,
    pub binds: Vec<Val>,
}

/// The column that names, in each row of a bulk batch's answer (see [`Tail::bulk`]), the job it belongs to.
pub const BULK_KEY: &str = "bulk_key";

/// A SQLite job's part in a bulk batch (see [`Tail::bulk`]): its kind of write, its key (distinct among the
/// batch's jobs, else the batch is not run in bulk) and its arguments as a JSON object.
pub struct BulkPart<'a> {
    pub kind: &'static str,
    pub key: &'a str,
    pub args: &'a str,
}

/// One writer's work inside a (possibly shared) write transaction.
pub trait BatchJob: Send + Sync {
    /// Do the writes in `tx`, adding marks for the tail to `marks`; false when the job failed and nothing of
    /// it may be kept.
    fn run<'t>(&'t self, conn: &'t mut AnyConnection, marks: &'t mut Vec<String>) -> JobFuture<'t>;

    /// On SQLite, the job as statements (and the mark it leaves up front), which a batch runs in one call to the
    /// writer (the first job's with `BEGIN`): [`BatchJob::judge`] then gets the rows they returned. None: the
    /// job only [`BatchJob::run`]s.
    fn statements(&self) -> Option<(&Statements, &str)> {
        None
    }

    /// On SQLite, the job as a part of a bulk batch (see [`Tail::bulk`]). None: it never is.
    fn bulk(&self) -> Option<BulkPart<'_>> {
        None
    }

    /// Given the rows its [`BatchJob::statements`] returned (or, in a bulk batch, the rows its key names),
    /// whether the job succeeded (false: the batch is rolled back and its other jobs run again alone).
    fn judge(&self, _rows: &[&AnyRow]) -> bool {
        false
    }
}

pub type TailFuture<'t> = Pin<Box<dyn Future<Output = Result<(), DbError>> + Send + 't>>;

/// The last step of every batched write transaction, given the marks its jobs left.
#[derive(Clone, Copy)]
pub struct Tail {
    pub run: for<'t> fn(&'t Db, &'t mut AnyConnection, &'t [String]) -> TailFuture<'t>,
    /// The same step as statements, sent with a SQLite batch's `COMMIT` (none: SQLite batches run their jobs
    /// and tail each in a call of its own, between `BEGIN` and `COMMIT`). It must return no rows.
    pub statements: Option<fn(&[String]) -> Statements>,
    /// On SQLite, a batch whose jobs all have [`BatchJob::bulk`] parts with distinct keys as statements:
    /// every job's writes and the tail, one statement per kind of write over all the jobs of that kind (the
    /// SQL the same whatever the batch holds, so it stays prepared). Each row it returns names its job in
    /// [`BULK_KEY`]. The statements must fail (an SQL error) whenever a job would judge its rows a failure:
    /// the batch is one call, `BEGIN IMMEDIATE`, these and `COMMIT`, and its jobs judge their rows after it.
    pub bulk: Option<fn(&[BulkPart<'_>]) -> Statements>,
}

pub(crate) type Queued = (Arc<dyn BatchJob>, oneshot::Sender<Result<bool, String>>);

impl Db {
    /// Run `job` in a write transaction, shared with the other jobs queued meanwhile, which `tail` ends.
    /// Ok(true): committed; Ok(false): the job failed and its writes were discarded; Err: the commit itself
    /// failed. One database has one queue: the first caller's `tail` is the one every transaction ends with,
    /// and its `parallel` the most batches in flight at once.
    pub async fn write_batched(
        &self,
        job: Arc<dyn BatchJob>,
        tail: Tail,
        parallel: usize,
    ) -> Result<bool, DbError> {
        let queue = self
            .batch
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel::<Queued>(1024);
                // The committer's handle has no queue of its own, so it does not keep itself alive.
                let db = Db {
                    batch: Arc::new(std::sync::OnceLock::new()),
                    ..self.clone()
                };
                tokio::spawn(committer(db, rx, tail, parallel.max(1)));
                tx
            })
            .clone();
        let (done, wait) = oneshot::channel();
        queue
            .send((job, done))
            .await
            .map_err(|_| DbError::Batch("the write queue is closed".into()))?;
        wait.await
            .map_err(|_| DbError::Batch("the write queue dropped a job".into()))?
            .map_err(DbError::Batch)
    }
}

async fn committer(db: Db, mut rx: mpsc::Receiver<Queued>, tail: Tail, parallel: usize) {
    let slots = Arc::new(tokio::sync::Semaphore::new(parallel));
    let held: Option<Held> = db.sqlite_writer().map(|_| Default::default());
    loop {
        // A free slot first, then whatever queued meanwhile: a batch takes every job waiting when it starts.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match rx.try_recv() {
            Ok(j) => j,
            Err(_) => {
                // Nothing queued: SQLite's writer goes back to its pool while the queue waits.
                if let Some(h) = &held {
                    h.lock().await.take();
                }
                let Some(j) = rx.recv().await else {
                    return;
                };
                j
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        // In a task of its own: a job that panics fails its batch's writers (their answers are dropped),
        // not the queue.
        let db = db.clone();
        let mut slot = Some(slot);
        let held = held.clone();
        // A panicking batch drops its slot with its task.
        let batch_task = tokio::spawn(async move { run(&db, batch, tail, &mut slot, held.as_ref()).await });
        tokio::spawn(async move {
            if let Err(e) = batch_task.await {
                tracing::error!(error = %e, "a batched write transaction panicked");
            }
        });
    }
}

/// Run one batch. Its slot is given back as soon as its statements have run, before `COMMIT`: the next batch
/// starts while this one waits for its WAL flush (on SQLite, for the writer connection this one holds).
async fn run(
    db: &Db,
    batch: Vec<Queued>,
    tail: Tail,
    slot: &mut Option<OwnedSemaphorePermit>,
    held: Option<&Held>,
) {
    // A SQLite batch of several jobs, each with a bulk part of its own.
    let bulk = match (held, tail.bulk) {
        (Some(held), Some(bulk)) if batch.len() > 1 => bulk_parts(&batch).map(|parts| (held, bulk, parts)),
        _ => None,
    };
    // Some(committed) when the batch's outcome is settled; None: its jobs run again, each alone.
    let settled = match (held, tail.statements, bulk) {
        (_, _, Some((held, bulk, parts))) => match in_bulk(db, held, bulk, &batch, parts, slot).await {
            Ok(true) => Some(true),
            _ => None,
        },
        (Some(held), Some(tail), _) if batch.iter().all(|(j, _)| j.statements().is_some()) => {
            match in_few_calls(db, held, tail, &batch, slot).await {
                Ok(true) => Some(true),
                // A lone job that judged its rows a failure has its outcome already.
                Ok(false) if batch.len() == 1 => Some(false),
                _ => None,
            }
        }
        _ if batch.len() > 1 => match in_transaction(db, held, tail, Work::Together(&batch, slot)).await {
            Ok(true) => Some(true),
            _ => None,
        },
        _ => None,
    };
    if let Some(committed) = settled {
        for (_, done) in batch {
            let _ = done.send(Ok(committed));
        }
        slot.take();
        return;
    }
    for (job, done) in batch {
        let r = in_transaction(db, held, tail, Work::Alone(job.as_ref())).await;
        let _ = done.send(r.map_err(|e| format!("{e:#}")));
    }
    slot.take();
}

/// What one write transaction of the queue does.
enum Work<'a> {
    Together(&'a [Queued], &'a mut Option<OwnedSemaphorePermit>),
    Alone(&'a dyn BatchJob),
}

impl Work<'_> {
    async fn run(self, db: &Db, tail: Tail, tx: Transaction<'_, Any>) -> Result<bool, DbError> {
        match self {
            Work::Together(batch, slot) => together(db, batch, tail, slot, tx).await,
            Work::Alone(job) => alone(db, job, tail, tx).await,
        }
    }
}

/// Run `work` in a write transaction: on SQLite's writer connection as the queue keeps it (taken from its
/// pool first when the queue has none, or has held it for [`WRITER_HELD`]), elsewhere from
/// [`Db::begin_write`].
async fn in_transaction(db: &Db, held: Option<&Held>, tail: Tail, work: Work<'_>) -> Result<bool, DbError> {
    let (Some(held), Some(writer)) = (held, db.sqlite_writer()) else {
        return work.run(db, tail, db.begin_write().await?).await;
    };
    let mut held = held.lock().await;
    let conn = writer_conn(&mut held, writer).await?;
    let failed = match conn.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => return work.run(db, tail, tx).await,
        Err(e) => e,
    };
    // A connection that cannot begin is not kept.
    held.take();
    Err(failed.into())
}

/// SQLite's writer connection as the queue keeps it: taken from its pool first when the queue has none, or
/// has held it for [`WRITER_HELD`].
async fn writer_conn<'h>(
    held: &'h mut Option<(PoolConnection<Any>, Instant)>,
    writer: &sqlx::AnyPool,
) -> Result<&'h mut PoolConnection<Any>, DbError> {
    if held
        .as_ref()
        .is_some_and(|(_, since)| since.elapsed() > WRITER_HELD)
    {
        // Back to the pool, behind whoever waits for it there.
        held.take();
    }
    Ok(match held {
        Some((conn, _)) => conn,
        empty => &mut empty.insert((writer.acquire().await?, Instant::now())).0,
    })
}

/// A batch on SQLite's writer in one call per job and one for the tail and `COMMIT` (see the module's notes):
/// `BEGIN IMMEDIATE` goes with the first job's statements. Each job judges its rows as they come; the first
/// that fails rolls the batch back (Ok(false)), as does any error (Err); either way the jobs then run again
/// alone.
async fn in_few_calls(
    db: &Db,
    held: &Held,
    tail: fn(&[String]) -> Statements,
    batch: &[Queued],
    slot: &mut Option<OwnedSemaphorePermit>,
) -> Result<bool, DbError> {
    let (Some(writer), Some(jobs)) = (
        db.sqlite_writer(),
        batch
            .iter()
            .map(|(job, _)| Some((job, job.statements()?)))
            .collect::<Option<Vec<_>>>(),
    ) else {
        return Ok(false);
    };
    let tail = tail(
        &jobs
            .iter()
            .map(|(_, (_, mark))| mark.to_string())
            .collect::<Vec<_>>(),
    );
    let mut held = held.lock().await;
    let conn = writer_conn(&mut held, writer).await?;
    for (i, (job, (stmts, _))) in jobs.iter().enumerate() {
        let sql = match i {
            0 => Cow::Owned(format!("BEGIN IMMEDIATE; {}", stmts.sql)),
            _ => Cow::Borrowed(stmts.sql.as_str()),
        };
        let judged = match bind_vals(sqlx::query(&sql), &stmts.binds)
            .fetch_all(&mut **conn)
            .await
        {
            Ok(rows) => Ok(job.judge(&rows.iter().collect::<Vec<_>>())),
            Err(e) => Err(e),
        };
        if !matches!(judged, Ok(true)) {
            roll_back(&mut held, i > 0).await;
            return judged.map_err(DbError::from);
        }
    }
    slot.take();
    let end = format!("{}; COMMIT", tail.sql.trim_end().trim_end_matches(';'));
    if let Err(e) = bind_vals(sqlx::query(&end), &tail.binds)
        .execute(&mut **conn)
        .await
    {
        roll_back(&mut held, true).await;
        return Err(e.into());
    }
    Ok(true)
}

/// The batch's bulk parts, if every job has one and their keys are distinct.
fn bulk_parts(batch: &[Queued]) -> Option<Vec<BulkPart<'_>>> {
    let parts = batch
        .iter()
        .map(|(job, _)| job.bulk())
        .collect::<Option<Vec<_>>>()?;
    let keys: std::collections::BTreeSet<&str> = parts.iter().map(|p| p.key).collect();
    (keys.len() == parts.len()).then_some(parts)
}

/// A batch on SQLite's writer in one call (see [`Tail::bulk`]; `parts`: its jobs', in order): `BEGIN
/// IMMEDIATE`, the bulk statements and `COMMIT`. The statements fail when a job would refuse, so a batch that
/// ran has committed; its jobs then judge the rows their keys name, for their outcomes. An error (a refusal
/// among them) rolls the batch back and answers Err; its jobs then run again alone.
async fn in_bulk(
    db: &Db,
    held: &Held,
    bulk: fn(&[BulkPart<'_>]) -> Statements,
    batch: &[Queued],
    parts: Vec<BulkPart<'_>>,
    slot: &mut Option<OwnedSemaphorePermit>,
) -> Result<bool, DbError> {
    let Some(writer) = db.sqlite_writer() else {
        return Ok(false);
    };
    let stmts = bulk(&parts);
    let sql = format!(
        "BEGIN IMMEDIATE; {}; COMMIT",
        stmts.sql.trim_end().trim_end_matches(';')
    );
    let mut held = held.lock().await;
    let conn = writer_conn(&mut held, writer).await?;
    let rows = match bind_vals(sqlx::query(&sql), &stmts.binds)
        .fetch_all(&mut **conn)
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            // `COMMIT` comes last: whatever failed, nothing was committed.
            roll_back(&mut held, false).await;
            return Err(e.into());
        }
    };
    drop(held);
    slot.take();
    let mut by_key: std::collections::BTreeMap<String, Vec<&AnyRow>> = Default::default();
    for r in &rows {
        if let Ok(k) = r.try_get::<String, _>(BULK_KEY) {
            by_key.entry(k).or_default().push(r);
        }
    }
    for ((job, _), part) in batch.iter().zip(&parts) {
        if !job.judge(by_key.get(part.key).map_or(&[][..], |r| &r[..])) {
            // The bulk statements should have failed instead: what the job wrote is committed, and its caller
            // gets the outcome it judged.
            tracing::error!(
                key = part.key,
                "a job of a committed bulk batch judged its rows a failure"
            );
        }
    }
    Ok(true)
}

/// End a failed batch's transaction; `began`: whether `BEGIN` certainly ran (else it may have failed itself, and
/// then there is no transaction to end). A writer that cannot end it is closed, not kept.
async fn roll_back(held: &mut Option<(PoolConnection<Any>, Instant)>, began: bool) {
    let Some((conn, _)) = held.as_mut() else {
        return;
    };
    let ended = match sqlx::query("ROLLBACK").execute(&mut **conn).await {
        Ok(_) => true,
        Err(e) => !began && e.to_string().contains("no transaction is active"),
    };
    if !ended {
        if let Some((conn, _)) = held.take() {
            let _ = conn.close().await;
        }
    }
}

/// All jobs in one transaction; Ok(false) (rolled back) as soon as one fails. An error (of the tail, of the
/// commit) sends the jobs to run alone too.
async fn together(
    db: &Db,
    batch: &[Queued],
    tail: Tail,
    slot: &mut Option<OwnedSemaphorePermit>,
    mut tx: Transaction<'_, Any>,
) -> Result<bool, DbError> {
    let mut marks = Vec::new();
    for (job, _) in batch {
        if !job.run(&mut tx, &mut marks).await {
            tx.rollback().await?;
            return Ok(false);
        }
    }
    (tail.run)(db, &mut tx, &marks).await?;
    slot.take();
    tx.commit().await?;
    Ok(true)
}

async fn alone(
    db: &Db,
    job: &dyn BatchJob,
    tail: Tail,
    mut tx: Transaction<'_, Any>,
) -> Result<bool, DbError> {
    let mut marks = Vec::new();
    if job.run(&mut tx, &mut marks).await {
        (tail.run)(db, &mut tx, &marks).await?;
        tx.commit().await?;
        Ok(true)
    } else {
        tx.rollback().await?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Whether job `v` succeeds: 13 (mod 64) fails after writing (its row must not survive), 47 (mod 64)
    /// breaks `t`'s CHECK (an error, not a refusal).
    fn fine(v: i64) -> bool {
        v % 64 != 13 && v % 64 != 47
    }

    /// Insert `v` into `t`; it succeeds when [`fine`]. With `stmts`, the job also offers itself as statements,
    /// counting in `judged` the times a batch's one call let it judge its rows.
    struct Insert {
        v: i64,
        stmts: Option<Statements>,
        /// Its key and arguments in a bulk batch (see [`bulk`]).
        bulk: Option<(String, String)>,
        judged: Arc<AtomicUsize>,
    }

    impl Insert {
        fn new(v: i64, as_statements: bool, judged: &Arc<AtomicUsize>) -> Self {
            Insert {
                v,
                stmts: as_statements.then(|| Statements {
                    sql: "INSERT INTO t (v) VALUES (?) RETURNING v".into(),
                    binds: vec![Val::I(v)],
                }),
                bulk: as_statements.then(|| (v.to_string(), format!("{{\"v\": {v}}}"))),
                judged: judged.clone(),
            }
        }
    }

    impl BatchJob for Insert {
        fn run<'t>(&'t self, conn: &'t mut AnyConnection, marks: &'t mut Vec<String>) -> JobFuture<'t> {
            Box::pin(async move {
                marks.push(self.v.to_string());
                let ok = sqlx::query("INSERT INTO t (v) VALUES (?)")
                    .bind(self.v)
                    .execute(&mut *conn)
                    .await
                    .is_ok();
                ok && fine(self.v)
            })
        }

        fn statements(&self) -> Option<(&Statements, &str)> {
            Some((self.stmts.as_ref()?, "mark"))
        }

        fn bulk(&self) -> Option<BulkPart<'_>> {
            let (key, args) = self.bulk.as_ref()?;
            Some(BulkPart {
                kind: "insert",
                key,
                args,
            })
        }

        fn judge(&self, rows: &[&AnyRow]) -> bool {
            self.judged.fetch_add(1, Ordering::Relaxed);
            let v: Option<i64> = rows.first().and_then(|r| r.try_get("v").ok());
            v == Some(self.v) && rows.len() == 1 && fine(self.v)
        }
    }

    /// The test tail: one row in `m` per transaction, holding its jobs' marks (as statements: how many).
    fn tail<'t>(_db: &'t Db, conn: &'t mut AnyConnection, marks: &'t [String]) -> TailFuture<'t> {
        Box::pin(async move {
            sqlx::query("INSERT INTO m (marks) VALUES (?)")
                .bind(marks.join(","))
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    fn tail_statements(marks: &[String]) -> Statements {
        Statements {
            sql: "INSERT INTO m (marks) VALUES (?)".into(),
            binds: vec![Val::S(marks.join(","))],
        }
    }

    const TAIL: Tail = Tail {
        run: tail,
        statements: Some(tail_statements),
        bulk: None,
    };

    /// The test's bulk batch: a job that would refuse fails it (a row into `refused`, which takes none), then
    /// every job's row in one statement, then the tail's row in `m`, a "mark" for each.
    fn bulk(parts: &[BulkPart<'_>]) -> Statements {
        let args: Vec<&str> = parts.iter().map(|p| p.args).collect();
        let array = format!("[{}]", args.join(","));
        Statements {
            sql: format!(
                "INSERT INTO refused (v) SELECT value->>'v' FROM json_each(?) WHERE value->>'v' % 64 = 13; \
                 INSERT INTO t (v) SELECT value->>'v' FROM json_each(?) RETURNING CAST(v AS TEXT) AS {BULK_KEY}, v; \
                 INSERT INTO m (marks) SELECT group_concat('mark') FROM json_each(?)"
            ),
            binds: vec![Val::S(array.clone()), Val::S(array.clone()), Val::S(array)],
        }
    }

    const BULK_TAIL: Tail = Tail {
        run: tail,
        statements: Some(tail_statements),
        bulk: Some(bulk),
    };

    /// A SQLite database with tables `t (v)`, `m (marks)` and `refused (v)` (which takes no row), and the
    /// directory that holds it.
    async fn table_t() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:///{}/t.sqlite", dir.path().display()), 4)
            .await
            .unwrap();
        for q in [
            "CREATE TABLE t (v BIGINT NOT NULL CHECK (v % 64 <> 47))",
            "CREATE TABLE m (marks TEXT NOT NULL)",
            "CREATE TABLE refused (v BIGINT CHECK (0))",
        ] {
            sqlx::query(q).execute(db.pool()).await.unwrap();
        }
        (dir, db)
    }

    struct Panics;

    impl BatchJob for Panics {
        fn run<'t>(&'t self, _conn: &'t mut AnyConnection, _marks: &'t mut Vec<String>) -> JobFuture<'t> {
            Box::pin(async move { panic!("a job that panics") })
        }
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_queue_goes_on() {
        let (_dir, db) = table_t().await;
        let judged = Arc::new(AtomicUsize::new(0));
        assert!(db.write_batched(Arc::new(Panics), TAIL, 1).await.is_err());
        assert!(db
            .write_batched(Arc::new(Insert::new(2, true, &judged)), TAIL, 1)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn concurrent_jobs_share_commits_and_failures_stay_apart() {
        // Jobs that only run, jobs offered as statements (SQLite batches them in one call per job), the same in
        // bulk batches, and a mix (such batches run job by job); one and three batches in flight.
        for (parallel, statements, tail) in [
            (1, Some(false), TAIL),
            (3, Some(false), TAIL),
            (1, Some(true), TAIL),
            (1, Some(true), BULK_TAIL),
            (3, None, BULK_TAIL),
        ] {
            concurrent_jobs(parallel, statements, tail).await;
        }
    }

    /// 200 jobs at once; `statements`: whether they offer statements and bulk parts (None: every third does).
    async fn concurrent_jobs(parallel: usize, statements: Option<bool>, tail: Tail) {
        let (_dir, db) = table_t().await;
        let judged = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..200i64 {
            let db = db.clone();
            let job = Insert::new(i, statements.unwrap_or(i % 3 == 0), &judged);
            tasks.push(tokio::spawn(async move {
                (i, db.write_batched(Arc::new(job), tail, parallel).await.unwrap())
            }));
        }
        for t in tasks {
            let (i, committed) = t.await.unwrap();
            assert_eq!(committed, fine(i), "job {i}");
        }
        let rows: Vec<i64> = sqlx::query("SELECT v FROM t ORDER BY v")
            .fetch_all(db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<i64, _>("v").unwrap())
            .collect();
        assert_eq!(rows, (0..200).filter(|i| fine(*i)).collect::<Vec<_>>());
        // One row of `m` per committed transaction. A job that ran marked its value (failed jobs' marks were
        // rolled back); one batched in one call marked "mark", up front.
        let mut marks: Vec<i64> = Vec::new();
        let mut in_one_call = 0;
        let mut shared = 0;
        for r in sqlx::query("SELECT marks FROM m")
            .fetch_all(db.pool())
            .await
            .unwrap()
        {
            let m: String = r.try_get("marks").unwrap();
            let m: Vec<&str> = m.split(',').collect();
            shared += usize::from(m.len() > 1);
            for v in m {
                match v.parse::<i64>() {
                    Ok(v) => marks.push(v),
                    Err(_) => in_one_call += 1,
                }
            }
        }
        assert!(shared > 0, "no transaction was shared");
        marks.sort();
        if statements == Some(true) {
            // Every committed job, whether in one call or, after a refusal, alone.
            assert_eq!(in_one_call + marks.len(), rows.len());
            assert!(in_one_call > 0 && judged.load(Ordering::Relaxed) > 0);
        } else {
            assert_eq!(marks, rows);
            assert_eq!(in_one_call, 0);
        }
    }
}
