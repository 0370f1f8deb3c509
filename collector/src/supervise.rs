//! Every long-lived thread and task of the collector (the incident engine, the store writer,
//! the WAL checkpointer, the notifier, the HTTP and QUIC servers, housekeeping) is watched: one
//! that ends while the collector is not stopping has failed. A failure is never silent:
//! - it is logged as an error naming the component;
//! - `/readyz` answers 503 naming it (and every other one that failed);
//! - [`Supervisor::failed`] resolves, on which `serve` and `quickstart` stop and exit non-zero,
//!   so that a supervisor (systemd, Kubernetes) restarts the collector.
//!
//! Each component holds a [`Sentinel`] in its thread or task; dropping it (the thread or task
//! ending, by return or by panic) reports the failure unless the collector is stopping.
//!
//! A component that is alive but cannot do its work for now (the store cannot be written: the
//! disk is full; it cannot be read: the file is damaged) reports a *condition*
//! ([`Supervisor::degraded`], cleared by [`Supervisor::recovered`]): `/readyz` answers 503
//! naming it while it lasts, and the collector keeps running, so that it resumes by itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// One failed component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub component: &'static str,
    pub why: String,
}

struct Inner {
    ready: AtomicBool,
    stopping: AtomicBool,
    failures: Mutex<Vec<Failure>>,
    failed: Notify,
    /// Conditions in force, by what they concern.
    conditions: Mutex<BTreeMap<&'static str, String>>,
}

/// Watches the collector's components. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor {
            inner: Arc::new(Inner {
                ready: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                failures: Mutex::new(Vec::new()),
                failed: Notify::new(),
                conditions: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// A sentinel for `component`, to move into its thread or task.
    pub fn sentinel(&self, component: &'static str) -> Sentinel {
        Sentinel {
            supervisor: self.clone(),
            component,
            armed: true,
        }
    }

    /// Records that `component` failed: logged as an error, `/readyz` fails, [`failed`] wakes.
    ///
    /// [`failed`]: Supervisor::failed
    pub fn report(&self, component: &'static str, why: impl Into<String>) {
        let why = why.into();
        tracing::error!(component, why = %why, "a collector component died: the collector is not working");
        self.inner
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Failure { component, why });
        self.inner.failed.notify_waiters();
        self.inner.failed.notify_one();
    }

    /// `what` cannot do its work for now (`/readyz` fails naming it until [`recovered`]);
    /// logged when it starts or its reason changes, not on every repeat.
    ///
    /// [`recovered`]: Supervisor::recovered
    pub fn degraded(&self, what: &'static str, why: impl Into<String>) {
        let why = why.into();
        let mut c = self
            .inner
            .conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if c.get(what) != Some(&why) {
            tracing::error!(component = what, why = %why, "not ready until this clears");
            c.insert(what, why);
        }
    }

    /// The condition of `what` has cleared (logged if there was one).
    pub fn recovered(&self, what: &'static str) {
        let mut c = self
            .inner
            .conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if c.remove(what).is_some() {
            tracing::info!(component = what, "recovered");
        }
    }

    /// Everything that failed so far.
    pub fn failures(&self) -> Vec<Failure> {
        self.inner
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every component started: ready unless one failed.
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::Release);
    }

    /// The collector is stopping on purpose: components ending from now on have not failed.
    pub fn stopping(&self) {
        self.inner.stopping.store(true, Ordering::Release);
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// `Ok` when started and nothing failed, else what `/readyz` says.
    pub fn readiness(&self) -> Result<(), String> {
        let failures = self.failures();
        if !failures.is_empty() {
            let names: Vec<String> = failures
                .iter()
                .map(|f| format!("{} ({})", f.component, f.why))
                .collect();
            return Err(format!("not ready: failed: {}", names.join(", ")));
        }
        if self.is_stopping() {
            return Err("not ready: stopping".into());
        }
        let conditions: Vec<String> = self
            .inner
            .conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(what, why)| format!("{what} ({why})"))
            .collect();
        if !conditions.is_empty() {
            return Err(format!("not ready: {}", conditions.join(", ")));
        }
        if !self.inner.ready.load(Ordering::Acquire) {
            return Err("not ready: starting".into());
        }
        Ok(())
    }

    /// Resolves once a component has failed (at once when one already has).
    pub async fn failed(&self) -> Failure {
        loop {
            let notified = self.inner.failed.notified();
            if let Some(f) = self.failures().into_iter().next() {
                return f;
            }
            notified.await;
        }
    }
}

/// Reports its component's failure when dropped, unless the collector is stopping.
pub struct Sentinel {
    supervisor: Supervisor,
    component: &'static str,
    armed: bool,
}

impl Sentinel {
    /// A hook for a thread that reports its own end (`true` when it panicked).
    pub fn into_exit_hook(self) -> Box<dyn FnOnce(bool) + Send> {
        let mut sentinel = self;
        Box::new(move |panicked| {
            sentinel.armed = false;
            if !sentinel.supervisor.is_stopping() {
                let why = if panicked { "panicked" } else { "stopped" };
                sentinel.supervisor.report(sentinel.component, why);
            }
        })
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if self.armed && !self.supervisor.is_stopping() {
            let why = if std::thread::panicking() {
                "panicked"
            } else {
                "stopped"
            };
            self.supervisor.report(self.component, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn readiness_says_what_failed() {
        let s = Supervisor::new();
        assert_eq!(s.readiness(), Err("not ready: starting".into()));
        s.set_ready();
        assert_eq!(s.readiness(), Ok(()));
        let thread = {
            let sentinel = s.sentinel("incident engine");
            std::thread::spawn(move || {
                let _sentinel = sentinel;
                panic!("boom");
            })
        };
        assert!(thread.join().is_err());
        assert_eq!(
            s.readiness(),
            Err("not ready: failed: incident engine (panicked)".into())
        );
        assert_eq!(s.failures()[0].component, "incident engine");
    }

    #[test]
    fn a_condition_fails_readiness_only_while_it_lasts() {
        let s = Supervisor::new();
        s.set_ready();
        s.degraded("store", "cannot write: database or disk is full");
        s.degraded("store", "cannot write: database or disk is full");
        assert_eq!(
            s.readiness(),
            Err("not ready: store (cannot write: database or disk is full)".into())
        );
        s.recovered("store");
        assert_eq!(s.readiness(), Ok(()));
        assert!(s.failures().is_empty(), "a condition is not a failure");
    }

    #[test]
    fn components_ending_while_stopping_have_not_failed() {
        let s = Supervisor::new();
        s.set_ready();
        s.stopping();
        drop(s.sentinel("HTTP server"));
        s.sentinel("store writer").into_exit_hook()(false);
        assert!(s.failures().is_empty());
        assert_eq!(s.readiness(), Err("not ready: stopping".into()));
    }

    #[tokio::test]
    async fn a_task_that_returns_early_wakes_the_waiter() {
        let s = Supervisor::new();
        s.set_ready();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.failed().await })
        };
        let sentinel = s.sentinel("notifier");
        tokio::spawn(async move {
            let _sentinel = sentinel;
        });
        let f = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(
            f,
            Failure {
                component: "notifier",
                why: "stopped".into()
            }
        );
        // A thread hook reports a panic as one.
        s.sentinel("store writer").into_exit_hook()(true);
        assert_eq!(s.failures()[1].why, "panicked");
    }
}
