//! Connections kept warm in front of the pool for the hot one-call paths (inbox inserts,
//! claims, session reads).
//!
//! sqlx's pool pings every connection given back to it: a round trip to the server, with
//! its system calls and wake-ups on both sides, after every call. Under the load bench that
//! was one round trip in three. A connection whose call went through is kept here instead,
//! for the next caller; one whose call failed, or whose caller stopped waiting mid-call (a
//! dropped future can leave a reply unread), goes back to the pool, which tests it.
//!
//! At most `keep` callers hold one at a time, queued in order: a caller waiting in the pool
//! would otherwise wait for ever while the others hand kept connections to each other.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, PgPool, Postgres};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::StoreResult;

/// Idle connections, newest last, each with the time it was put back.
#[derive(Debug)]
pub(super) struct WarmConnections {
    pool: PgPool,
    idle: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    /// One per connection out of here, kept or not.
    holders: Semaphore,
    ping_after: Duration,
}

impl WarmConnections {
    /// Keeps up to `keep` idle connections of `pool`; one idle for `ping_after` or longer is
    /// pinged before it is handed out again (a restarted server is noticed before use).
    pub(super) fn new(pool: PgPool, keep: usize, ping_after: Duration) -> WarmConnections {
        let keep = keep.max(1);
        WarmConnections { pool, idle: Mutex::new(Vec::with_capacity(keep)), holders: Semaphore::new(keep), ping_after }
    }

    /// A kept connection, else one of the pool.
    pub(super) async fn get(&self) -> StoreResult<Warm<'_>> {
        let permit = self.holders.acquire().await.map_err(|_| crate::StoreError::Closed)?;
        while let Some((mut connection, since)) = self.pop() {
            if since.elapsed() < self.ping_after || connection.ping().await.is_ok() {
                return Ok(Warm { owner: self, connection, _permit: permit });
            }
            // Dropped: back to the pool, which tests it again and closes it.
        }
        Ok(Warm { owner: self, connection: self.pool.acquire().await?, _permit: permit })
    }

    /// Gives every kept connection back to the pool (whose close waits for them); later
    /// callers get none.
    pub(super) fn release(&self) {
        self.holders.close();
        self.lock().clear();
    }

    fn pop(&self) -> Option<(PoolConnection<Postgres>, Instant)> {
        self.lock().pop()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PoolConnection<Postgres>, Instant)>> {
        // A panic while holding this lock cannot leave the list half-changed.
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A connection out of [`WarmConnections`]: back to the pool when dropped, unless
/// [`Warm::keep_if_ok`] keeps it.
pub(super) struct Warm<'a> {
    owner: &'a WarmConnections,
    connection: PoolConnection<Postgres>,
    _permit: SemaphorePermit<'a>,
}

impl Warm<'_> {
    /// Keeps the connection warm when `result` is a success (the call went through and its
    /// answer was read), and hands `result` on.
    pub(super) fn keep_if_ok<T>(self, result: StoreResult<T>) -> StoreResult<T> {
        let Warm { owner, connection, _permit } = self;
        if result.is_ok() && !owner.holders.is_closed() {
            owner.lock().push((connection, Instant::now()));
        }
        result
    }
}

impl Deref for Warm<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.connection
    }
}

impl DerefMut for Warm<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.connection
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StoreError;
    use crate::unit_fixtures::FreshPostgres;

    async fn backend_pid(warm: &WarmConnections) -> i32 {
        let mut connection = warm.get().await.unwrap();
        let pid = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *connection).await;
        connection.keep_if_ok(pid.map_err(StoreError::from)).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_kept_only_after_a_call_that_went_through() {
        let Some(fresh) = FreshPostgres::open().await else { return };
        let warm = WarmConnections::new(fresh.store.pool().clone(), 1, Duration::from_secs(60));
        let pid = backend_pid(&warm).await;
        assert_eq!(backend_pid(&warm).await, pid, "the same connection, kept");
        assert_eq!(warm.lock().len(), 1);

        let mut connection = warm.get().await.unwrap();
        assert!(warm.lock().is_empty(), "handed out");
        let failed = sqlx::query_scalar::<_, i32>("SELECT 1 / 0").fetch_one(&mut *connection).await;
        assert!(connection.keep_if_ok(failed.map_err(StoreError::from)).is_err());
        assert!(warm.lock().is_empty(), "a failed call's connection goes back to the pool");

        // A caller that stops waiting mid-call drops its connection: not kept either.
        let connection = warm.get().await.unwrap();
        drop(connection);
        assert!(warm.lock().is_empty());

        // Never more than `keep` out at once: the next caller waits its turn.
        let held = warm.get().await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), warm.get()).await;
        assert!(waiting.is_err(), "a second caller waits while `keep` (1) are out");
        held.keep_if_ok(Ok(())).unwrap();
        let next = warm.get().await.unwrap();
        next.keep_if_ok(Ok(())).unwrap();
        assert_eq!(warm.lock().len(), 1);
        warm.release();
        assert!(warm.lock().is_empty());
        assert!(matches!(warm.get().await, Err(StoreError::Closed)), "closed: nothing handed out");
        fresh.drop_schema().await;
    }
}
