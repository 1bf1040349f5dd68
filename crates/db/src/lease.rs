//! Connections lent for a few reads without sqlx's on-release ping. sqlx tests every connection it takes back
//! into its pool with a ping — a round trip to the server, as costly as the read itself on a busy service.
//! A lease takes a connection out of the pool for good (`detach`) and, when dropped after its reads
//! succeeded, keeps it on a short free list for the next lease; a lease dropped mid-read (its request
//! cancelled) or after an error closes its connection instead, so no connection in an unknown state is
//! reused. A connection idle for over a second is pinged before it is lent again.

use crate::{Db, DbError};
use sqlx::{AnyConnection, Connection};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most idle connections kept for leases.
const KEEP: usize = 8;

pub(crate) type FreeList = Arc<Mutex<Vec<(AnyConnection, Instant)>>>;

/// A connection lent by [`Db::lease`]; call [`Lease::done`] after the reads succeeded.
pub struct Lease {
    conn: Option<AnyConnection>,
    /// SQLite: a pooled connection (its ping is a call to its worker thread, not a round trip over the
    /// network, and every detached connection would keep a thread and a page cache of its own).
    pooled: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    clean: bool,
    home: FreeList,
}

impl Lease {
    /// The connection, for one read or more; the lease counts as in use until [`Lease::done`].
    pub fn conn(&mut self) -> &mut AnyConnection {
        self.clean = false;
        match (&mut self.pooled, &mut self.conn) {
            (Some(p), _) => p,
            (None, Some(c)) => c,
            (None, None) => unreachable!("a lease holds its connection until dropped"),
        }
    }

    /// The reads went through: the connection may be lent again.
    pub fn done(&mut self) {
        self.clean = true;
    }

    /// After a statement: the connection may be lent again if it succeeded or the database refused it (a
    /// constraint, a bad value: the connection is fine); not after an I/O or protocol error.
    pub fn settle<T>(&mut self, r: &Result<T, sqlx::Error>) {
        if matches!(r, Ok(_) | Err(sqlx::Error::Database(_))) {
            self.clean = true;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !self.clean {
            return;
        }
        if let Ok(mut free) = self.home.lock() {
            if free.len() < KEEP {
                free.push((conn, Instant::now()));
            }
        }
    }
}

impl Db {
    /// A connection for reads outside any transaction, without the pool's on-release ping (see the module).
    pub async fn lease(&self) -> Result<Lease, DbError> {
        if self.dialect() == crate::Dialect::Sqlite {
            return Ok(Lease {
                conn: None,
                pooled: Some(self.pool().acquire().await?),
                clean: true,
                home: self.leases.clone(),
            });
        }
        loop {
            let idle = self.leases.lock().ok().and_then(|mut f| f.pop());
            let Some((mut conn, since)) = idle else { break };
            if since.elapsed() < Duration::from_secs(1) || conn.ping().await.is_ok() {
                return Ok(self.lend(conn));
            }
        }
        let conn = self.pool().acquire().await?.detach();
        Ok(self.lend(conn))
    }

    fn lend(&self, conn: AnyConnection) -> Lease {
        Lease {
            conn: Some(conn),
            pooled: None,
            clean: true,
            home: self.leases.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    #[tokio::test]
    async fn a_lease_is_reused_only_after_its_reads_went_through() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:///{}/l.sqlite", dir.path().display()), 2)
            .await
            .unwrap();
        let free = || db.leases.lock().unwrap().len();
        // SQLite lends pooled connections; the free list is for the network engines.
        let mut l = db.lease().await.unwrap();
        assert!(l.pooled.is_some());
        sqlx::query("SELECT 1").execute(l.conn()).await.unwrap();
        l.done();
        drop(l);
        assert_eq!(free(), 0);
        // The free list's rules, on detached connections.
        let conn = db.pool().acquire().await.unwrap().detach();
        let mut l = db.lend(conn);
        let r = sqlx::query("SELECT 1 AS one").fetch_one(l.conn()).await.unwrap();
        assert_eq!(r.try_get::<i64, _>("one").unwrap(), 1);
        l.done();
        drop(l);
        assert_eq!(free(), 1);
        // Taken again, then dropped while "in use" (a cancelled read): closed, not kept.
        let conn = db.leases.lock().unwrap().pop().unwrap().0;
        let mut l = db.lend(conn);
        assert_eq!(free(), 0);
        let _ = l.conn();
        drop(l);
        assert_eq!(free(), 0);
        // A failed read leaves it unclean too.
        let conn = db.pool().acquire().await.unwrap().detach();
        let mut l = db.lend(conn);
        assert!(sqlx::query("SELECT nope FROM nowhere")
            .fetch_one(l.conn())
            .await
            .is_err());
        drop(l);
        assert_eq!(free(), 0);
    }
}
