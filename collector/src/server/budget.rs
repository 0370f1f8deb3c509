//! Memory budgets for frames in flight: what agents' streams may make the collector buffer.
//!
//! A frame announces its length in its header; before the collector reads its body it reserves
//! that many bytes from its connection's budget (`[quic] max_frame_memory_per_connection`) and
//! then from the global one (`[quic] max_frame_memory`), and holds the reservation until the
//! frame has been dealt with (a batch handed to the store writer, an inventory reconciled). A
//! stream that cannot get its reservation within [`RESERVE_WAIT`] is refused with
//! `codes::BUSY` and counted (`memory_budget`); an agent retries later (batches stay in its
//! spool, an inventory is sent again). A frame larger than a whole connection budget is refused
//! at once. A body must then arrive within [`FRAME_TIMEOUT`]: a peer cannot hold a reservation by
//! trickling bytes (`frame_timeout`).
//!
//! Budgets count bytes of frames, not every allocation a decoded message makes; a decoded
//! inventory takes a few times its frame. They bound what one agent, and all agents together,
//! can make the collector hold, whatever they send.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The gauge of bytes reserved now, over all connections.
pub const FRAME_MEMORY_BYTES: &str = "vigil_ingest_frame_memory_bytes";

/// How long a stream waits for room in the budgets before it is refused.
pub const RESERVE_WAIT: Duration = Duration::from_secs(5);
/// How long the body of a frame may take to arrive once its room is reserved (16 MiB at
/// ~1 Mbit/s).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(150);

/// Default of `[quic] max_frame_memory`.
pub const DEFAULT_GLOBAL: u64 = 512 << 20;
/// Default of `[quic] max_frame_memory_per_connection`: a full inventory snapshot and a batch.
pub const DEFAULT_PER_CONNECTION: u64 = 32 << 20;

/// The collector's budgets (one per process).
#[derive(Debug, Clone)]
pub struct FrameBudget {
    global: Arc<Semaphore>,
    global_bytes: usize,
    per_connection: usize,
    wait: Duration,
    gauge: IntGauge,
}

/// One connection's share, taken from [`FrameBudget::connection`].
#[derive(Debug, Clone)]
pub struct ConnectionBudget {
    conn: Arc<Semaphore>,
    per_connection: usize,
    global: Arc<Semaphore>,
    wait: Duration,
    gauge: IntGauge,
}

/// Room for one frame, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _conn: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
    gauge: IntGauge,
    len: i64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.gauge.sub(self.len);
    }
}

/// Why no room was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoRoom {
    #[error("a frame of {len} bytes is larger than a connection's budget of {budget} bytes")]
    TooLarge { len: usize, budget: usize },
    #[error("no room for a frame of {len} bytes within {wait:?}")]
    Busy { len: usize, wait: Duration },
}

impl FrameBudget {
    /// Budgets of `global` bytes in all and `per_connection` bytes per connection (each at
    /// least 1; `per_connection` at most `global`).
    pub fn new(global: u64, per_connection: u64) -> FrameBudget {
        let cap = |n: u64| {
            usize::try_from(n)
                .unwrap_or(usize::MAX)
                .clamp(1, Semaphore::MAX_PERMITS)
        };
        let global_bytes = cap(global);
        FrameBudget {
            global: Arc::new(Semaphore::new(global_bytes)),
            global_bytes,
            per_connection: cap(per_connection).min(global_bytes),
            wait: RESERVE_WAIT,
            // The name and help are constants: this cannot fail.
            gauge: IntGauge::new(
                FRAME_MEMORY_BYTES,
                "Bytes reserved for agents' frames being read or waiting for the store.",
            )
            .unwrap_or_else(|_| unreachable!("a valid metric name")),
        }
    }

    /// Exposes [`FRAME_MEMORY_BYTES`] on `registry`.
    pub fn register(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.gauge.clone()))
    }

    /// The same budgets with another wait (tests).
    pub fn with_wait(mut self, wait: Duration) -> FrameBudget {
        self.wait = wait;
        self
    }

    pub fn connection(&self) -> ConnectionBudget {
        ConnectionBudget {
            conn: Arc::new(Semaphore::new(self.per_connection)),
            per_connection: self.per_connection,
            global: Arc::clone(&self.global),
            wait: self.wait,
            gauge: self.gauge.clone(),
        }
    }

    /// Bytes reserved now, over all connections (`vigil_ingest_frame_memory_bytes`).
    pub fn in_use(&self) -> usize {
        self.global_bytes - self.global.available_permits()
    }
}

impl Default for FrameBudget {
    fn default() -> Self {
        FrameBudget::new(DEFAULT_GLOBAL, DEFAULT_PER_CONNECTION)
    }
}

impl ConnectionBudget {
    /// Room for a frame of `len` bytes: the connection's share first, then the global one, each
    /// waited for at most the budget's wait in all.
    pub async fn reserve(&self, len: usize) -> Result<Reservation, NoRoom> {
        let len = len.max(1);
        if len > self.per_connection {
            return Err(NoRoom::TooLarge {
                len,
                budget: self.per_connection,
            });
        }
        // `len` <= per_connection <= Semaphore::MAX_PERMITS; frames are far below u32::MAX.
        let n = u32::try_from(len).map_err(|_| NoRoom::TooLarge {
            len,
            budget: self.per_connection,
        })?;
        let busy = NoRoom::Busy {
            len,
            wait: self.wait,
        };
        let both = async {
            let conn = Arc::clone(&self.conn).acquire_many_owned(n).await.ok()?;
            let global = Arc::clone(&self.global).acquire_many_owned(n).await.ok()?;
            self.gauge.add(i64::from(n));
            Some(Reservation {
                _conn: conn,
                _global: global,
                gauge: self.gauge.clone(),
                len: i64::from(n),
            })
        };
        match tokio::time::timeout(self.wait, both).await {
            Ok(Some(r)) => Ok(r),
            _ => Err(busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(global: u64, per_connection: u64) -> FrameBudget {
        FrameBudget::new(global, per_connection).with_wait(Duration::from_millis(50))
    }

    #[tokio::test]
    async fn a_connection_cannot_take_more_than_its_share() {
        let b = budget(1000, 100);
        let c = b.connection();
        let first = c.reserve(60).await.expect("room");
        assert_eq!(b.in_use(), 60);
        assert_eq!(b.gauge.get(), 60);
        assert!(matches!(c.reserve(60).await, Err(NoRoom::Busy { .. })));
        // Another connection still has its own share.
        let other = b.connection().reserve(60).await.expect("room");
        assert_eq!(b.in_use(), 120);
        drop(first);
        let again = c.reserve(60).await.expect("room once freed");
        drop((other, again));
        assert_eq!(b.in_use(), 0);
        assert_eq!(b.gauge.get(), 0);
        assert_eq!(
            c.reserve(101).await.map(|_| ()),
            Err(NoRoom::TooLarge {
                len: 101,
                budget: 100
            })
        );
    }

    #[tokio::test]
    async fn all_connections_together_cannot_take_more_than_the_global_budget() {
        let b = budget(150, 100);
        let (c1, c2, c3) = (b.connection(), b.connection(), b.connection());
        let r1 = c1.reserve(70).await.expect("room");
        let r2 = c2.reserve(70).await.expect("room");
        assert!(matches!(c3.reserve(70).await, Err(NoRoom::Busy { .. })));
        // A waiting reservation gets its room when another is given back.
        let waiting = tokio::spawn(async move { c3.reserve(70).await.map(|_| ()) });
        tokio::task::yield_now().await;
        drop(r1);
        assert_eq!(waiting.await.expect("task"), Ok(()));
        drop(r2);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn budgets_are_at_least_one_byte_and_a_share_is_at_most_the_whole() {
        let b = FrameBudget::new(0, 0);
        assert_eq!(b.per_connection, 1);
        let b = FrameBudget::new(10, 1 << 40);
        assert_eq!(b.per_connection, 10);
        let b = FrameBudget::new(u64::MAX, u64::MAX);
        assert_eq!(b.global_bytes, Semaphore::MAX_PERMITS);
    }
}
