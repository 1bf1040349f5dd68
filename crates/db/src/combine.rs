//! Combined calls (PostgreSQL): one-statement writes that wait at the same time go to the server together, as
//! one call of a set-returning function over a JSON array of them. They share a round trip and a commit (one
//! WAL flush), where each alone would pay both: `pgbench -c 8` on two cores made ~17,000 one-statement
//! commits a second, and ~41,000 statements a second when four went in one function call.
//!
//! A call joins a queue and, when no batch is running, starts a runner; the runner takes the whole queue as
//! one batch and, once it is answered, takes what queued meanwhile as the next, until the queue is empty. One batch at a time made bigger
//! batches and fewer commits than two: placement's provider creation with 8 clients made 1,988–2,228 a
//! second with one and 1,639–1,885 with two (4,000 providers, four alternated pairs). The calls of a batch run
//! in the order of their keys (a provider uuid), so the rows they lock are locked in one order. When the
//! server refuses a batch (one call broke a constraint the function does not catch, or a deadlock with
//! another transaction), every call of it is run again alone, so the refusal reaches only its own caller. A
//! call runs even if its caller has gone away (a client that hung up), as a statement already sent would.

use crate::{Db, DbError};
use sqlx::Row;
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, Semaphore};

/// Batches in flight at once.
const SLOTS: usize = 1;

struct Call {
    function: &'static str,
    key: String,
    arg: String,
    answer: oneshot::Sender<Result<String, DbError>>,
}

pub(crate) struct Combiner {
    queue: Mutex<Vec<Call>>,
    slots: Arc<Semaphore>,
}

impl Default for Combiner {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(SLOTS)),
        }
    }
}

impl std::fmt::Debug for Combiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combiner").finish_non_exhaustive()
    }
}

impl Db {
    /// Run `function` (a PostgreSQL function taking a JSON array and returning one JSON value per element,
    /// in order) on `arg` (one element, JSON text), combined with the calls waiting at the same time; returns
    /// this call's answer (JSON text) once the batch is committed. `key` orders the calls of a batch.
    pub async fn call_combined(
        &self,
        function: &'static str,
        key: &str,
        arg: String,
    ) -> Result<String, DbError> {
        let (answer, rx) = oneshot::channel();
        self.combiner.lock().push(Call {
            function,
            key: key.to_string(),
            arg,
            answer,
        });
        self.kick();
        rx.await
            .map_err(|_| DbError::Batch("the combined call was dropped".into()))?
    }

    /// Start a runner if the slot is free; otherwise the runner holding it will take the queue.
    fn kick(&self) {
        if let Ok(slot) = self.combiner.slots.clone().try_acquire_owned() {
            let db = self.clone();
            tokio::spawn(async move { db.drain(slot).await });
        }
    }

    /// Run batches while calls keep coming (the next batch starts as soon as the last one is answered), then
    /// give the slot back.
    async fn drain(&self, slot: tokio::sync::OwnedSemaphorePermit) {
        loop {
            let calls = std::mem::take(&mut *self.combiner.lock());
            if calls.is_empty() {
                break;
            }
            run(self, calls).await;
        }
        drop(slot);
        // A call queued after the last look found the slot still taken: start it now.
        if !self.combiner.lock().is_empty() {
            self.kick();
        }
    }
}

impl Combiner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Call>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn run(db: &Db, mut calls: Vec<Call>) {
    calls.sort_by(|a, b| (a.function, &a.key).cmp(&(b.function, &b.key)));
    while let Some(first) = calls.first() {
        let function = first.function;
        let n = calls.iter().take_while(|c| c.function == function).count();
        let group: Vec<Call> = calls.drain(..n).collect();
        let args: Vec<&str> = group.iter().map(|c| c.arg.as_str()).collect();
        match exec(db, function, &args).await {
            Ok(answers) if answers.len() == group.len() => {
                for (c, a) in group.into_iter().zip(answers) {
                    let _ = c.answer.send(Ok(a));
                }
            }
            Ok(answers) => {
                let why = format!("{function} answered {} of {} calls", answers.len(), group.len());
                for c in group {
                    let _ = c.answer.send(Err(DbError::Batch(why.clone())));
                }
            }
            Err(sqlx::Error::Database(e)) if group.len() > 1 => {
                tracing::debug!(error = %e, calls = group.len(), "combined call refused; each call alone");
                for c in group {
                    let r = exec(db, function, &[c.arg.as_str()]).await.map_err(DbError::from);
                    let r = r.and_then(|mut a| {
                        a.pop()
                            .ok_or_else(|| DbError::Batch(format!("{function} gave no answer")))
                    });
                    let _ = c.answer.send(r);
                }
            }
            Err(e) if group.len() == 1 => {
                if let Some(c) = group.into_iter().next() {
                    let _ = c.answer.send(Err(e.into()));
                }
            }
            Err(e) => {
                // The connection failed: whether the batch committed is unknown, as for a lost statement.
                let why = e.to_string();
                for c in group {
                    let _ = c.answer.send(Err(DbError::Batch(why.clone())));
                }
            }
        }
    }
}

async fn exec(db: &Db, function: &str, args: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    let arg = format!("[{}]", args.join(","));
    let sql = format!(
        "SELECT CAST(r AS TEXT) AS r FROM {function}(CAST(? AS jsonb)) WITH ORDINALITY AS t(r, n) ORDER BY n"
    );
    let sql = db.sql(&sql);
    let mut lease = match db.lease().await {
        Ok(l) => l,
        Err(DbError::Sqlx(e)) => return Err(e),
        Err(e) => return Err(sqlx::Error::Protocol(e.to_string())),
    };
    let rows = sqlx::query(&sql).bind(arg).fetch_all(lease.conn()).await;
    lease.settle(&rows);
    rows?.iter().map(|r| r.try_get::<String, _>("r")).collect()
}
