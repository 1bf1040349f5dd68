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

use crate::{Any, Db, DbError, Transaction};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

/// Most jobs one shared transaction takes.
const MAX_BATCH: usize = 32;

pub type JobFuture<'t> = Pin<Box<dyn Future<Output = bool> + Send + 't>>;

/// One writer's work inside a (possibly shared) write transaction.
pub trait BatchJob: Send + Sync {
    /// Do the writes in `tx`, adding marks for the tail to `marks`; false when the job failed and nothing of
    /// it may be kept.
    fn run<'t>(&'t self, tx: &'t mut Transaction<'static, Any>, marks: &'t mut Vec<String>) -> JobFuture<'t>;
}

pub type TailFuture<'t> = Pin<Box<dyn Future<Output = Result<(), DbError>> + Send + 't>>;

/// The last step of every batched write transaction, given the marks its jobs left.
pub type Tail = for<'t> fn(&'t Db, &'t mut Transaction<'static, Any>, &'t [String]) -> TailFuture<'t>;

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
    loop {
        // A free slot first, then whatever queued meanwhile: a batch takes every job waiting when it starts.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
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
        // A panicking batch drops its slot with its task.
        let batch_task = tokio::spawn(async move { run(&db, batch, tail, &mut slot).await });
        tokio::spawn(async move {
            if let Err(e) = batch_task.await {
                tracing::error!(error = %e, "a batched write transaction panicked");
            }
        });
    }
}

/// Run one batch. Its slot is given back as soon as its statements have run, before `COMMIT`: the next batch
/// starts while this one waits for its WAL flush (on SQLite, for the writer connection this one holds).
async fn run(db: &Db, batch: Vec<Queued>, tail: Tail, slot: &mut Option<OwnedSemaphorePermit>) {
    if batch.len() > 1 {
        if let Ok(true) = together(db, &batch, tail, slot).await {
            for (_, done) in batch {
                let _ = done.send(Ok(true));
            }
            return;
        }
    }
    for (job, done) in batch {
        let _ = done.send(alone(db, job.as_ref(), tail).await.map_err(|e| format!("{e:#}")));
    }
    slot.take();
}

/// All jobs in one transaction; Ok(false) (rolled back) as soon as one fails. An error (of the tail, of the
/// commit) sends the jobs to run alone too.
async fn together(
    db: &Db,
    batch: &[Queued],
    tail: Tail,
    slot: &mut Option<OwnedSemaphorePermit>,
) -> Result<bool, DbError> {
    let mut tx = db.begin_write().await?;
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

async fn alone(db: &Db, job: &dyn BatchJob, tail: Tail) -> Result<bool, DbError> {
    let mut tx = db.begin_write().await?;
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
        fn run<'t>(
            &'t self,
            tx: &'t mut Transaction<'static, Any>,
            marks: &'t mut Vec<String>,
        ) -> JobFuture<'t> {
            Box::pin(async move {
                marks.push(self.0.to_string());
                // Odd values fail after writing: their row must not survive.
                let ok = sqlx::query("INSERT INTO t (v) VALUES (?)")
                    .bind(self.0)
                    .execute(&mut **tx)
                    .await
                    .is_ok();
                ok && self.0 % 2 == 0
            })
        }
    }

    /// The test tail: one row in `m` per transaction, holding its jobs' marks.
    fn tail<'t>(_db: &'t Db, tx: &'t mut Transaction<'static, Any>, marks: &'t [String]) -> TailFuture<'t> {
        Box::pin(async move {
            sqlx::query("INSERT INTO m (marks) VALUES (?)")
                .bind(marks.join(","))
                .execute(&mut **tx)
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
        fn run<'t>(
            &'t self,
            _tx: &'t mut Transaction<'static, Any>,
            _marks: &'t mut Vec<String>,
        ) -> JobFuture<'t> {
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
