//! The messages agents and collectors exchange, and the compatibility rule that keeps an agent
//! one minor version apart talking.
//!
//! Every message is one frame (see [`crate::codec`]): a kind byte naming the message type, then the
//! message encoded as a MessagePack *map* (field names included), so the encoding describes itself.
//!
//! Compatibility rule (ALPN `vigil/1`, i.e. major version 1):
//! - a minor version may add fields; every added field has `#[serde(default)]` and receivers
//!   ignore fields they do not know (no `deny_unknown_fields` on the wire);
//! - fields are never removed, renamed or retyped, and kind numbers are never reused;
//! - a minor version may add message kinds, but sends them only to a peer that advertised the
//!   matching capability in [`Hello`] / [`Welcome`]; a receiver rejects an unknown kind as
//!   [`crate::codec::DecodeError::UnknownKind`] (counted, the stream is closed, the connection lives);
//! - anything else is a new major version and a new ALPN (`vigil/2`).
//!
//! This module never does I/O.

use serde::{Deserialize, Serialize};

/// ALPN protocol id of the current major version.
pub const ALPN: &[u8] = b"vigil/1";

/// The server name agents put in SNI and verify in the collector's certificate. Agents trust the
/// collector through the pinned CA, not through DNS, so one fixed name works for every address.
pub const SERVER_NAME: &str = "vigil-collector";

/// Capabilities this build understands (sent in [`Hello`] and [`Welcome`]).
pub const CAPABILITIES: &[&str] = &["metrics.v1", "settings.v1", "inventory.v1"];

/// One metric sample. Names are host metric names without the `vigil_host_` prefix
/// (`cpu_usage_ratio`, `filesystem_used_ratio`, ...) or `check_up` / `check_latency_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Sampling time, milliseconds since the Unix epoch. Replayed samples keep it.
    #[serde(rename = "t")]
    pub ts_ms: i64,
    #[serde(rename = "n")]
    pub name: String,
    /// Label pairs (`mountpoint`, `interface`, `device`, `check`, ...), sorted by name.
    #[serde(rename = "l", default)]
    pub labels: Vec<(String, String)>,
    #[serde(rename = "v")]
    pub value: f64,
}

/// First message on the control stream of a connection made *without* a client certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enroll {
    /// The enrollment token as the administrator gave it (`v1.<id>.<secret>.<ca-pin>`).
    pub token: String,
    /// PKCS#10 certificate signing request, PEM. The key never leaves the agent.
    pub csr_pem: String,
    pub hostname: String,
    pub version: String,
}

/// Collector's answer to a successful [`Enroll`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrolled {
    pub agent_id: String,
    /// The agent's client certificate, PEM, signed by the collector CA.
    pub cert_pem: String,
    /// The collector CA certificate, PEM.
    pub ca_pem: String,
}

/// First message on the control stream of a mutually authenticated connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal the id in the client certificate; the certificate wins.
    pub agent_id: String,
    pub hostname: String,
    pub version: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The agent's sampling interval in milliseconds.
    #[serde(default)]
    pub interval_ms: u64,
}

/// Collector's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub version: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Highest sequence number the collector holds durably for this agent; the agent may drop
    /// spooled batches at or below it.
    #[serde(default)]
    pub last_seq: Option<u64>,
    #[serde(default)]
    pub settings: Settings,
}

/// Settings the collector pushes to an agent (in [`Welcome`] and later on the control stream).
/// Absent fields mean "keep your own".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub interval_ms: Option<u64>,
}

/// A batch of samples on a batch stream. `seq` is the agent's sequence number: strictly
/// increasing per agent, never reused, surviving restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub seq: u64,
    pub samples: Vec<Sample>,
}

/// Collector -> agent on a batch stream: every batch with a sequence number `<= seq` sent on
/// this stream is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub seq: u64,
}

/// Agent -> collector on the control stream before a clean shutdown: the host is going away on
/// purpose, so its silence is not an outage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    #[serde(default)]
    pub reason: String,
}

/// Either side: the request was refused. `code` is one of the `codes::*` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: String,
    pub message: String,
}

/// Agent -> collector on an inventory stream: everything the host has, as of `version`.
/// Sent on connect (and whenever the collector asks for a resync).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventorySnapshot {
    /// The agent's inventory version: increases with every change it reports.
    pub version: u64,
    /// When discovery ran, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub inventory: crate::inventory::Inventory,
}

/// Agent -> collector on an inventory stream: what changed from `base_version` to `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryDeltaMsg {
    pub base_version: u64,
    pub version: u64,
    pub ts_ms: i64,
    pub delta: crate::inventory::InventoryDelta,
}

/// Collector -> agent on an inventory stream: `version` is reconciled and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryAck {
    pub version: u64,
}

/// Collector -> agent on an inventory stream: the delta's base is not what the collector holds;
/// send a full snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryResync {
    /// The version the collector holds for this agent, if any.
    #[serde(default)]
    pub have: Option<u64>,
}

/// Every message kind, as decoded from a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Enroll(Enroll),
    Enrolled(Enrolled),
    Hello(Hello),
    Welcome(Welcome),
    Settings(Settings),
    Batch(Batch),
    Ack(Ack),
    Goodbye(Goodbye),
    Error(ErrorMsg),
    InventorySnapshot(InventorySnapshot),
    InventoryDelta(InventoryDeltaMsg),
    InventoryAck(InventoryAck),
    InventoryResync(InventoryResync),
}

/// Frame kind bytes. Never reuse a number.
pub mod kind {
    pub const ENROLL: u8 = 1;
    pub const ENROLLED: u8 = 2;
    pub const HELLO: u8 = 3;
    pub const WELCOME: u8 = 4;
    pub const SETTINGS: u8 = 5;
    pub const BATCH: u8 = 6;
    pub const ACK: u8 = 7;
    pub const GOODBYE: u8 = 8;
    pub const ERROR: u8 = 9;
    pub const INVENTORY_SNAPSHOT: u8 = 10;
    pub const INVENTORY_DELTA: u8 = 11;
    pub const INVENTORY_ACK: u8 = 12;
    pub const INVENTORY_RESYNC: u8 = 13;

    /// Whether this build knows the kind byte.
    pub fn is_known(kind: u8) -> bool {
        (ENROLL..=INVENTORY_RESYNC).contains(&kind)
    }
}

impl Message {
    pub fn kind(&self) -> u8 {
        match self {
            Message::Enroll(_) => kind::ENROLL,
            Message::Enrolled(_) => kind::ENROLLED,
            Message::Hello(_) => kind::HELLO,
            Message::Welcome(_) => kind::WELCOME,
            Message::Settings(_) => kind::SETTINGS,
            Message::Batch(_) => kind::BATCH,
            Message::Ack(_) => kind::ACK,
            Message::Goodbye(_) => kind::GOODBYE,
            Message::Error(_) => kind::ERROR,
            Message::InventorySnapshot(_) => kind::INVENTORY_SNAPSHOT,
            Message::InventoryDelta(_) => kind::INVENTORY_DELTA,
            Message::InventoryAck(_) => kind::INVENTORY_ACK,
            Message::InventoryResync(_) => kind::INVENTORY_RESYNC,
        }
    }
}

/// QUIC application error codes used to close streams (`stop`/`reset`) and connections.
pub mod codes {
    /// Normal close.
    pub const OK: u32 = 0;
    /// Undecodable frame (garbage, truncated, bad field types).
    pub const MALFORMED: u32 = 1;
    /// Frame larger than the limit.
    pub const OVERSIZED: u32 = 2;
    /// Frame kind this build does not know.
    pub const UNKNOWN_KIND: u32 = 3;
    /// A message that is not allowed here (e.g. a batch before hello, a batch without a certificate).
    pub const UNEXPECTED: u32 = 4;
    /// Enrollment refused (bad, expired, used or revoked token; CSR invalid).
    pub const ENROLL_REFUSED: u32 = 5;
    /// The agent's certificate is revoked or unknown.
    pub const REVOKED: u32 = 6;
    /// The collector is shutting down.
    pub const SHUTDOWN: u32 = 7;
    /// The collector failed internally (store error); retry later.
    pub const INTERNAL: u32 = 8;
    /// The collector has no record of this agent's certificate: its store was lost, or restored
    /// from a backup older than the enrollment. Not fatal: the agent retries rarely
    /// (an operator may restore the right store) and says why. Agents before this code took
    /// it as any refusal and retried with the usual backoff.
    pub const UNKNOWN_AGENT: u32 = 9;
    /// The collector has no room for this frame now (its memory budget for frames in flight is
    /// spent, or the frame's body was too slow to arrive): retry later.
    pub const BUSY: u32 = 10;
    /// The message would take the agent past a cap the collector is configured with (its CIs,
    /// `[agents] max_cis`); sending it again changes nothing until the cap or the inventory
    /// does.
    pub const LIMIT: u32 = 11;
}
