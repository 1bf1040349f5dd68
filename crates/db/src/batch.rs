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

use crate::{Any, Db, DbError, Transaction};
use sqlx::pool::PoolConnection;
use sqlx::{AnyConnection, Connection};
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

/// One writer's work inside a (possibly shared) write transaction.
pub trait BatchJob: Send + Sync {
    /// Do the writes in `tx`, adding marks for the tail to `marks`; false when the job failed and nothing of
    /// it may be kept.
    fn run<'t>(&'t self, conn: &'t mut AnyConnection, marks: &'t mut Vec<String>) -> JobFuture<'t>;
}

pub type TailFuture<'t> = Pin<Box<dyn Future<Output = Result<(), DbError>> + Send + 't>>;

/// The last step of every batched write transaction, given the marks its jobs left.
pub type Tail = for<'t> fn(&'t Db, &'t mut AnyConnection, &'t [String]) -> TailFuture<'t>;

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
    if batch.len() > 1 {
        if let Ok(true) = in_transaction(db, held, tail, Work::Together(&batch, slot)).await {
            for (_, done) in batch {
                let _ = done.send(Ok(true));
            }
            return;
        }
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
    if held
        .as_ref()
        .is_some_and(|(_, since)| since.elapsed() > WRITER_HELD)
    {
        // Back to the pool, behind whoever waits for it there.
        held.take();
    }
    let conn = match &mut *held {
        Some((conn, _)) => conn,
        empty => &mut empty.insert((writer.acquire().await?, Instant::now())).0,
    };
    let failed = match conn.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => return work.run(db, tail, tx).await,
        Err(e) => e,
    };
    // A connection that cannot begin is not kept.
    held.take();
    Err(failed.into())
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
    tail(db, &mut tx, &marks).await?;
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
        tail(db, &mut tx, &marks).await?;
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

    struct Insert(i64);

    impl BatchJob for Insert {
        fn run<'t>(&'t self, conn: &'t mut AnyConnection, marks: &'t mut Vec<String>) -> JobFuture<'t> {
            Box::pin(async move {
                marks.push(self.0.to_string());
                // Odd values fail after writing: their row must not survive.
                let ok = sqlx::query("INSERT INTO t (v) VALUES (?)")
                    .bind(self.0)
                    .execute(&mut *conn)
                    .await
                    .is_ok();
                ok && self.0 % 2 == 0
            })
        }
    }

    /// The test tail: one row in `m` per transaction, holding its jobs' marks.
    fn tail<'t>(_db: &'t Db, conn: &'t mut AnyConnection, marks: &'t [String]) -> TailFuture<'t> {
        Box::pin(async move {
            sqlx::query("INSERT INTO m (marks) VALUES (?)")
                .bind(marks.join(","))
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    /// A SQLite database with tables `t (v)` and `m (marks)`, and the directory that holds it.
    async fn table_t() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:///{}/t.sqlite", dir.path().display()), 4)
            .await
            .unwrap();
        for q in [
            "CREATE TABLE t (v BIGINT NOT NULL)",
            "CREATE TABLE m (marks TEXT NOT NULL)",
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
        assert!(db.write_batched(Arc::new(Panics), tail, 1).await.is_err());
        assert!(db.write_batched(Arc::new(Insert(2)), tail, 1).await.unwrap());
    }

    #[tokio::test]
    async fn concurrent_jobs_share_commits_and_failures_stay_apart() {
        for parallel in [1, 3] {
            concurrent_jobs(parallel).await;
        }
    }

    async fn concurrent_jobs(parallel: usize) {
        let (_dir, db) = table_t().await;
        let mut tasks = Vec::new();
        for i in 0..200i64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                (
                    i,
                    db.write_batched(Arc::new(Insert(i)), tail, parallel)
                        .await
                        .unwrap(),
                )
            }));
        }
        for t in tasks {
            let (i, committed) = t.await.unwrap();
            assert_eq!(committed, i % 2 == 0, "job {i}");
        }
        let rows: Vec<i64> = sqlx::query("SELECT v FROM t ORDER BY v")
            .fetch_all(db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<i64, _>("v").unwrap())
            .collect();
        assert_eq!(rows, (0..200).filter(|i| i % 2 == 0).collect::<Vec<_>>());
        // Every committed job's mark reached a tail exactly once; failed jobs' marks were rolled back.
        let mut marks: Vec<i64> = Vec::new();
        for r in sqlx::query("SELECT marks FROM m")
            .fetch_all(db.pool())
            .await
            .unwrap()
        {
            let m: String = r.try_get("marks").unwrap();
            marks.extend(m.split(',').map(|v| v.parse::<i64>().unwrap()));
        }
        marks.sort();
        assert_eq!(marks, rows);
    }
}
