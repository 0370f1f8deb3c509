//! Which agents exist and whether each one's host is up: the one liveness decision, read by
//! `/metrics` (`vigil_host_up`), the incident engine (the derived `up` metric behind
//! `host-unreachable`) and the API (`state` of `GET /api/v1/agents`).
//!
//! The decision is [`health`], a pure function of what was observed of an agent ([`Observed`]),
//! the policy ([`Policy`]) and the time:
//! - **connected**: up while something (the hello, a batch) arrived within
//!   `down_after_intervals` × its interval, else down (a silent agent);
//! - **lost** (the connection ended without a goodbye): down at once;
//! - **stopped** (the agent said goodbye: a deliberate stop): [`Health::Stopped`] for
//!   `shutdown_grace`, down after it;
//! - **awaiting** (known from the store at collector start, not heard from since, and not down
//!   when the collector stopped): up for `down_after_intervals` of its intervals from the start,
//!   so that a restart gives every agent time to reconnect without reading as an outage, down
//!   after. An agent whose `host-unreachable` incident was open at the restart is restored as
//!   *lost*: a host is up again only once its agent is heard from.
//!
//! Connections carry a generation: a connection that ended after a newer one of the same agent
//! arrived changes nothing ([`Presence::disconnected`] answers false), so a reconnect is never
//! undone by the old connection's end.
//!
//! This module never reads the clock (callers pass `now_ms`), never does I/O and never panics on
//! what an agent sent: intervals are clamped where they are decoded (the session core), and
//! every product here saturates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

/// The liveness policy (`[agents]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A connected agent silent for this many of its intervals is down.
    pub down_after_intervals: u32,
    /// A cleanly stopped agent counts as down only this long after its goodbye.
    pub shutdown_grace_ms: i64,
}

/// How the agent's link to this collector stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Connected; `generation` names the connection.
    Connected { generation: u64 },
    /// The last connection ended without a goodbye.
    Lost,
    /// The agent said goodbye at `at_ms`.
    Stopped { at_ms: i64 },
    /// Restored from the store at start and not heard from since.
    Awaiting,
}

/// What is known of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub link: Link,
    /// Last hello or batch (for an awaiting agent: the collector's start).
    pub last_seen_ms: i64,
    /// Its sampling interval, milliseconds (1 s .. 1 h once decoded).
    pub interval_ms: u64,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Stopped on purpose at `at_ms`, within the shutdown grace: not up, not unreachable.
    Stopped {
        at_ms: i64,
    },
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Stopped { .. } => "stopped",
            Health::Down => "down",
        }
    }

    /// `vigil_host_up`: 1 only when up.
    pub fn metric(self) -> f64 {
        if self == Health::Up {
            1.0
        } else {
            0.0
        }
    }

    /// Whether `host-unreachable` holds (its `up` input is 0): only when down.
    pub fn unreachable(self) -> bool {
        self == Health::Down
    }
}

/// How long `down_after` intervals of `interval_ms` last, saturating.
fn window_ms(interval_ms: u64, down_after: u32) -> i64 {
    let w = interval_ms.max(1).saturating_mul(u64::from(down_after));
    i64::try_from(w).unwrap_or(i64::MAX)
}

/// The one liveness decision (see the module docs).
pub fn health(o: &Observed, p: &Policy, now_ms: i64) -> Health {
    let fresh =
        now_ms.saturating_sub(o.last_seen_ms) <= window_ms(o.interval_ms, p.down_after_intervals);
    match o.link {
        Link::Connected { .. } | Link::Awaiting if fresh => Health::Up,
        Link::Connected { .. } | Link::Awaiting | Link::Lost => Health::Down,
        Link::Stopped { at_ms } if now_ms.saturating_sub(at_ms) <= p.shutdown_grace_ms => {
            Health::Stopped { at_ms }
        }
        Link::Stopped { .. } => Health::Down,
    }
}

/// One agent as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub agent_id: Arc<str>,
    pub hostname: Arc<str>,
    pub observed: Observed,
    pub health: Health,
}

impl AgentStatus {
    pub fn connected(&self) -> bool {
        matches!(self.observed.link, Link::Connected { .. })
    }
}

/// What the store knows of an agent at collector start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub agent_id: String,
    pub hostname: String,
    /// Its interval as last seen (`None`: an agent from before intervals were recorded).
    pub interval_ms: Option<u64>,
    pub last_seen_ms: Option<i64>,
    /// It said goodbye at this time and has not connected since.
    pub stopped_ms: Option<i64>,
    /// Its `host-unreachable` incident is active: it stays down until heard from.
    pub outage_open: bool,
}

/// Interval assumed for an agent restored without one.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;

struct Entry {
    hostname: Arc<str>,
    observed: Observed,
}

/// The registry of agents and their links. Share it as `Arc<Presence>`.
pub struct Presence {
    policy: Policy,
    agents: RwLock<HashMap<Arc<str>, Arc<Mutex<Entry>>>>,
    next_generation: AtomicU64,
    connected: AtomicUsize,
}

fn lock(e: &Mutex<Entry>) -> MutexGuard<'_, Entry> {
    e.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Presence {
    pub fn new(policy: Policy) -> Presence {
        Presence {
            policy,
            agents: RwLock::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    fn entry(&self, agent: &str) -> Option<Arc<Mutex<Entry>>> {
        let agents = self.agents.read().unwrap_or_else(PoisonError::into_inner);
        agents.get(agent).cloned()
    }

    /// The agents the store knows at start (enrolled, not revoked), none of them connected.
    pub fn restore(&self, rows: Vec<Restored>, start_ms: i64) {
        let mut agents = self.agents.write().unwrap_or_else(PoisonError::into_inner);
        for r in rows {
            let interval_ms = r.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS).max(1);
            let observed = match (r.stopped_ms, r.outage_open) {
                (_, true) => Observed {
                    link: Link::Lost,
                    last_seen_ms: r.last_seen_ms.unwrap_or(0),
                    interval_ms,
                },
                (Some(at_ms), false) => Observed {
                    link: Link::Stopped { at_ms },
                    last_seen_ms: r.last_seen_ms.unwrap_or(at_ms),
                    interval_ms,
                },
                (None, false) => Observed {
                    link: Link::Awaiting,
                    last_seen_ms: start_ms,
                    interval_ms,
                },
            };
            agents.insert(
                Arc::from(r.agent_id.as_str()),
                Arc::new(Mutex::new(Entry {
                    hostname: Arc::from(r.hostname.as_str()),
                    observed,
                })),
            );
        }
    }

    /// The host name `agent` may go by when it claims `claimed`: `None` when it may use it, or
    /// the name it gets instead (`<claimed>~<first 8 characters of its id>`) when another
    /// enrolled agent already goes by `claimed` (compared case-insensitively). A host name is
    /// only what an agent says; two agents are never merged under one. The check and the
    /// taking of the name are one step, so two agents claiming a name at once cannot both get it.
    pub fn claim_hostname(&self, agent: &str, claimed: &str, now_ms: i64) -> Option<String> {
        let mut agents = self.agents.write().unwrap_or_else(PoisonError::into_inner);
        let taken = agents
            .iter()
            .any(|(id, e)| &**id != agent && lock(e).hostname.eq_ignore_ascii_case(claimed));
        let granted = if taken {
            let short: String = agent.chars().take(8).collect();
            Some(format!("{claimed}~{short}"))
        } else {
            None
        };
        let name: Arc<str> = Arc::from(granted.as_deref().unwrap_or(claimed));
        let entry = agents.entry(Arc::from(agent)).or_insert_with(|| {
            Arc::new(Mutex::new(Entry {
                hostname: name.clone(),
                observed: Observed {
                    link: Link::Lost,
                    last_seen_ms: now_ms,
                    interval_ms: DEFAULT_INTERVAL_MS,
                },
            }))
        });
        lock(entry).hostname = name;
        granted
    }

    /// A hello was accepted on a new connection; returns the connection's generation, to give
    /// back to [`Presence::disconnected`].
    pub fn connected(&self, agent: &str, hostname: &str, interval_ms: u64, now_ms: i64) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let mut agents = self.agents.write().unwrap_or_else(PoisonError::into_inner);
        let entry = agents.entry(Arc::from(agent)).or_insert_with(|| {
            Arc::new(Mutex::new(Entry {
                hostname: Arc::from(hostname),
                observed: Observed {
                    link: Link::Lost,
                    last_seen_ms: now_ms,
                    interval_ms,
                },
            }))
        });
        let mut e = lock(entry);
        if &*e.hostname != hostname {
            e.hostname = Arc::from(hostname);
        }
        if !matches!(e.observed.link, Link::Connected { .. }) {
            self.connected.fetch_add(1, Ordering::Relaxed);
        }
        e.observed = Observed {
            link: Link::Connected { generation },
            last_seen_ms: e.observed.last_seen_ms.max(now_ms),
            interval_ms: interval_ms.max(1),
        };
        generation
    }

    /// Something arrived from the agent (a batch).
    pub fn heard(&self, agent: &str, now_ms: i64) {
        if let Some(entry) = self.entry(agent) {
            let mut e = lock(&entry);
            e.observed.last_seen_ms = e.observed.last_seen_ms.max(now_ms);
        }
    }

    /// The connection of `generation` ended, after a goodbye or not. False (and nothing changes)
    /// when it was no longer the agent's current connection.
    pub fn disconnected(&self, agent: &str, generation: u64, goodbye: bool, now_ms: i64) -> bool {
        let Some(entry) = self.entry(agent) else {
            return false;
        };
        let mut e = lock(&entry);
        if e.observed.link != (Link::Connected { generation }) {
            return false;
        }
        self.connected.fetch_sub(1, Ordering::Relaxed);
        e.observed.link = if goodbye {
            e.observed.last_seen_ms = e.observed.last_seen_ms.max(now_ms);
            Link::Stopped { at_ms: now_ms }
        } else {
            Link::Lost
        };
        true
    }

    /// The agent is revoked: it is gone.
    pub fn remove(&self, agent: &str) {
        let mut agents = self.agents.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = agents.remove(agent) {
            if matches!(lock(&entry).observed.link, Link::Connected { .. }) {
                self.connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// The agent's status now, `None` for an agent this collector does not know.
    pub fn status(&self, agent: &str, now_ms: i64) -> Option<AgentStatus> {
        let (key, entry) = {
            let agents = self.agents.read().unwrap_or_else(PoisonError::into_inner);
            let (k, v) = agents.get_key_value(agent)?;
            (Arc::clone(k), Arc::clone(v))
        };
        let e = lock(&entry);
        Some(AgentStatus {
            agent_id: key,
            hostname: Arc::clone(&e.hostname),
            observed: e.observed,
            health: health(&e.observed, &self.policy, now_ms),
        })
    }

    /// Every known agent, by agent id.
    pub fn all(&self, now_ms: i64) -> Vec<AgentStatus> {
        let entries: Vec<(Arc<str>, Arc<Mutex<Entry>>)> = {
            let agents = self.agents.read().unwrap_or_else(PoisonError::into_inner);
            agents
                .iter()
                .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
                .collect()
        };
        let mut out: Vec<AgentStatus> = entries
            .into_iter()
            .map(|(agent_id, entry)| {
                let e = lock(&entry);
                AgentStatus {
                    agent_id,
                    hostname: Arc::clone(&e.hostname),
                    observed: e.observed,
                    health: health(&e.observed, &self.policy, now_ms),
                }
            })
            .collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }

    /// Agents with an open connection.
    pub fn connected_count(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// How long a series of this agent may go without a sample before it counts as gone:
    /// twice `down_after_intervals` of its intervals.
    pub fn series_expiry_ms(&self, observed: &Observed) -> i64 {
        window_ms(observed.interval_ms, self.policy.down_after_intervals).saturating_mul(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        down_after_intervals: 3,
        shutdown_grace_ms: 600_000,
    };

    fn obs(link: Link, last_seen_ms: i64, interval_ms: u64) -> Observed {
        Observed {
            link,
            last_seen_ms,
            interval_ms,
        }
    }

    #[test]
    fn the_decision_table() {
        let c = Link::Connected { generation: 1 };
        let cases = [
            // (observed, now, expected)
            (obs(c, 0, 10_000), 30_000, Health::Up),
            (obs(c, 0, 10_000), 30_001, Health::Down),
            (obs(Link::Lost, 0, 10_000), 1, Health::Down),
            (
                obs(Link::Stopped { at_ms: 5 }, 5, 10_000),
                600_005,
                Health::Stopped { at_ms: 5 },
            ),
            (
                obs(Link::Stopped { at_ms: 5 }, 5, 10_000),
                600_006,
                Health::Down,
            ),
            (obs(Link::Awaiting, 100, 1_000), 3_100, Health::Up),
            (obs(Link::Awaiting, 100, 1_000), 3_101, Health::Down),
            // Whatever the numbers, nothing overflows: a huge interval saturates.
            (obs(c, 0, u64::MAX), i64::MAX, Health::Up),
            (obs(c, i64::MAX, 1), i64::MIN, Health::Up),
            (obs(c, i64::MIN, 1), i64::MAX, Health::Down),
            (
                obs(Link::Stopped { at_ms: i64::MIN }, 0, 1),
                i64::MAX,
                Health::Down,
            ),
        ];
        for (o, now, want) in cases {
            assert_eq!(health(&o, &POLICY, now), want, "{o:?} at {now}");
        }
    }

    #[test]
    fn a_replaced_connection_ending_changes_nothing() {
        let p = Presence::new(POLICY);
        let old = p.connected("a1", "web-1", 1_000, 0);
        let new = p.connected("a1", "web-1", 1_000, 10);
        assert_ne!(old, new);
        assert_eq!(p.connected_count(), 1);
        assert!(
            !p.disconnected("a1", old, false, 20),
            "the old one is not current"
        );
        let s = p.status("a1", 30).expect("known");
        assert_eq!((s.connected(), s.health), (true, Health::Up));
        assert!(p.disconnected("a1", new, false, 40));
        assert_eq!(p.connected_count(), 0);
        assert_eq!(p.status("a1", 41).expect("known").health, Health::Down);
    }

    #[test]
    fn a_goodbye_is_a_stop_until_the_grace_ends() {
        let p = Presence::new(POLICY);
        let g = p.connected("a1", "web-1", 1_000, 0);
        assert!(p.disconnected("a1", g, true, 1_000));
        assert_eq!(
            p.status("a1", 2_000).expect("known").health,
            Health::Stopped { at_ms: 1_000 }
        );
        assert_eq!(p.status("a1", 601_001).expect("known").health, Health::Down);
    }

    #[test]
    fn a_restart_restores_outages_stops_and_gives_the_others_time() {
        let p = Presence::new(POLICY);
        let row = |id: &str, stopped: Option<i64>, outage: bool| Restored {
            agent_id: id.into(),
            hostname: format!("{id}.example"),
            interval_ms: Some(1_000),
            last_seen_ms: Some(500),
            stopped_ms: stopped,
            outage_open: outage,
        };
        p.restore(
            vec![
                row("down", None, true),
                row("stopped", Some(400), false),
                row("was-up", None, false),
            ],
            10_000,
        );
        let h = |id: &str, now| p.status(id, now).expect("restored").health;
        assert_eq!(
            h("down", 10_000),
            Health::Down,
            "still down until heard from"
        );
        assert_eq!(h("stopped", 10_000), Health::Stopped { at_ms: 400 });
        assert_eq!(h("was-up", 12_999), Health::Up, "time to reconnect");
        assert_eq!(h("was-up", 13_001), Health::Down);
        assert_eq!(p.connected_count(), 0);
        p.connected("down", "down.example", 1_000, 11_000);
        assert_eq!(h("down", 11_000), Health::Up);
        p.remove("down");
        assert!(p.status("down", 11_000).is_none());
        assert_eq!(p.connected_count(), 0);
        assert_eq!(p.all(11_000).len(), 2);
    }
}
