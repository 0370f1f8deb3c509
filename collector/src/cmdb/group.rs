//! Group commit for inventory messages arriving on many threads at once (each agent's stream
//! reconciles on a blocking thread): a thread that finds the CMDB connection free applies every
//! message queued so far, up to [`MAX_MESSAGES_PER_TX`], in one transaction ([`apply_batch`]),
//! and wakes the other threads with their results. A burst of 1,000 deltas then costs a few dozen
//! WAL fsyncs instead of 1,000, while a lone message is applied at once, alone, as before.
//!
//! Every message is still durable before [`GroupCommit::apply`] returns (its transaction has
//! committed with `synchronous=FULL`), and messages are applied in the order they were queued,
//! so an agent's snapshot and the delta after it keep their order.
//!
//! This must never: return before the transaction holding the message committed, lose a queued
//! message (its thread sleeps until its result is in, or applies it itself when the connection
//! is free), leave the connection marked busy (a guard frees it, even on a panic), or panic on
//! a poisoned lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use vigil_shared::proto::{InventoryDeltaMsg, InventorySnapshot};

use super::{apply_batch_capped, InventoryMsg, InventoryOutcome, MAX_MESSAGES_PER_TX};
use crate::store::{Db, StoreError};

/// One inventory message of an agent, owned (it may be applied by another thread).
#[derive(Debug, Clone)]
pub enum InventoryMessage {
    Snapshot(InventorySnapshot),
    Delta(InventoryDeltaMsg),
}

impl InventoryMessage {
    fn as_msg(&self) -> InventoryMsg<'_> {
        match self {
            InventoryMessage::Snapshot(s) => InventoryMsg::Snapshot(s),
            InventoryMessage::Delta(d) => InventoryMsg::Delta(d),
        }
    }
}

struct Job {
    ticket: u64,
    agent: String,
    msg: InventoryMessage,
    now_ms: i64,
}

#[derive(Default)]
struct Queue {
    next_ticket: u64,
    pending: VecDeque<Job>,
    /// Results waiting for the thread that queued the message.
    done: HashMap<u64, Result<InventoryOutcome, StoreError>>,
    /// A thread is applying a batch (only one at a time: it alone uses the connection).
    busy: bool,
}

/// The CMDB's connection with a queue in front of it; share it (`Arc`) among the threads that
/// reconcile inventory messages.
///
/// A thread queues its message, then either finds the connection free and applies everything
/// queued (it is the "combiner" for that batch), or sleeps until its result is in; it never
/// waits for the connection itself, so a finished message is returned as soon as its batch
/// committed, however many other threads come and go.
pub struct GroupCommit {
    db: Mutex<Db>,
    /// A delta that would leave its agent more CIs than this is kept out.
    max_cis: usize,
    queue: Mutex<Queue>,
    changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Frees the connection when the combiner is done, even if it panicked.
struct Combining<'a>(&'a GroupCommit);

impl Drop for Combining<'_> {
    fn drop(&mut self) {
        lock(&self.0.queue).busy = false;
        self.0.changed.notify_all();
    }
}

impl GroupCommit {
    pub fn new(db: Db) -> GroupCommit {
        GroupCommit {
            db: Mutex::new(db),
            max_cis: usize::MAX,
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        }
    }

    /// The same, keeping out a delta that would leave its agent more than `max` CIs.
    pub fn with_max_cis(mut self, max: usize) -> GroupCommit {
        self.max_cis = max;
        self
    }

    /// Applies `msg` of `agent` (blocking: call it from a blocking thread) together with
    /// whatever other threads queued meanwhile; returns once its transaction has committed.
    pub fn apply(
        &self,
        agent: &str,
        msg: InventoryMessage,
        now_ms: i64,
    ) -> Result<InventoryOutcome, StoreError> {
        let mut q = lock(&self.queue);
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push_back(Job {
            ticket,
            agent: agent.to_owned(),
            msg,
            now_ms,
        });
        loop {
            if let Some(result) = q.done.remove(&ticket) {
                return result;
            }
            if q.busy {
                q = self.changed.wait(q).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // The connection is free: apply what is queued (ours is among it, or done).
            q.busy = true;
            let n = q.pending.len().min(MAX_MESSAGES_PER_TX);
            let jobs: Vec<Job> = q.pending.drain(..n).collect();
            drop(q);
            let combining = Combining(self);
            let results = self.apply_jobs(&jobs);
            q = lock(&self.queue);
            for (job, result) in jobs.iter().zip(results) {
                q.done.insert(job.ticket, result);
            }
            drop(q);
            drop(combining);
            q = lock(&self.queue);
        }
    }

    /// One transaction for `jobs`; every job gets a result.
    fn apply_jobs(&self, jobs: &[Job]) -> Vec<Result<InventoryOutcome, StoreError>> {
        let db = lock(&self.db);
        let msgs: Vec<(&str, InventoryMsg<'_>, i64)> = jobs
            .iter()
            .map(|j| (j.agent.as_str(), j.msg.as_msg(), j.now_ms))
            .collect();
        match apply_batch_capped(&db, &msgs, self.max_cis) {
            Ok(results) if results.len() == jobs.len() => results,
            Ok(_) => jobs
                .iter()
                .map(|_| Err(StoreError::Task("inventory batch lost results".into())))
                .collect(),
            Err(e) => {
                let why = e.to_string();
                jobs.iter()
                    .map(|_| Err(StoreError::Task(format!("inventory batch failed: {why}"))))
                    .collect()
            }
        }
    }
}
