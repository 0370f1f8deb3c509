//! The QUIC ingest server: accepts agent connections, enrolls new agents (`enroll.rs`),
//! authenticates known ones by their client certificate, and turns batch streams into durable
//! rows and fresh values, inventory streams into CMDB reconciliations.
//!
//! This is the tokio shell: it moves bytes and acts on the decisions of the I/O-free session
//! core (`session.rs`), which validates and clamps every number, length and count an agent
//! sends. One task per connection and per stream, all owned by a [`TaskTracker`] and stopped by
//! a [`CancellationToken`]. A misbehaving peer costs at most its own stream or connection:
//! decode errors close that stream with an error code and are counted; nothing here panics on
//! peer input, and the accept loop never ends because of one peer. A batch is acknowledged only
//! once the store has committed it, and counted (`vigil_ingest_batches_total`) only then.
//!
//! Liveness goes through [`Presence`]: a connection's end changes the agent's state only when it
//! is still the agent's newest connection (a generation), so a reconnect is never undone by the
//! old connection's end.

pub mod budget;
mod enroll;
pub mod session;
mod streams;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, ConnectionError, Incoming, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};
use vigil_runtime::clock::now_ms;
use vigil_shared::codec::{self, DecodeError, FrameDecoder, RawFrame};
use vigil_shared::identity;
use vigil_shared::proto::{self, codes, Message, Welcome};

use crate::ca::ServerIdentity;
use crate::cmdb;
use crate::incidents::engine::{EngineHandle, Input};
use crate::latest::LatestTable;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::store::{Db, Writer};
use session::Limits;

/// How long a fresh connection may take to open its control stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server re-reads the revocation list (admin commands write it from another
/// process), so a revoked agent is cut off within this period.
const REVOCATION_POLL: Duration = Duration::from_secs(1);
/// Acknowledgements not yet sent on one stream; the reader waits when this many are queued.
const MAX_UNACKED: usize = 1024;
/// Validity of agent certificates.
const AGENT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the ingest server needs besides its own store connections.
pub struct IngestParts {
    pub data_dir: PathBuf,
    pub writer: Writer,
    pub table: Arc<LatestTable>,
    pub presence: Arc<Presence>,
    pub metrics: Arc<Metrics>,
    pub identity: Arc<ServerIdentity>,
    pub max_frame: usize,
    /// Settings pushed to every agent in its welcome.
    pub settings: proto::Settings,
    /// The incident engine: evaluates rules on what agents send.
    pub engine: Option<EngineHandle>,
    /// Bounds on what agents send (`[agents] max_cis` among them).
    pub limits: Limits,
    /// Memory for frames in flight (`[quic] max_frame_memory*`).
    pub budget: budget::FrameBudget,
}

/// Everything the ingest tasks share.
pub struct Ingest {
    pub parts: IngestParts,
    pub db: Arc<Mutex<Db>>,
    /// A connection of its own for CMDB reconciliation, so a large snapshot does not hold up
    /// authentication of other agents.
    pub cmdb: Arc<cmdb::GroupCommit>,
    pub limits: Limits,
    /// Live connections by agent id, to close them on revocation.
    conns: Mutex<HashMap<String, Connection>>,
    /// Recent failed enrollments by address (rate limit).
    enroll_failures: enroll::FailedEnrollments,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("unexpected message kind {0} here")]
    Unexpected(u8),
    #[error(transparent)]
    NoRoom(#[from] budget::NoRoom),
    #[error("a frame's body did not arrive within {:?}", budget::FRAME_TIMEOUT)]
    FrameTimeout,
}

impl StreamError {
    /// The reason counted and the code the stream is stopped with, for a refusal of ours
    /// (`None`: the stream just ended or failed).
    fn refusal(&self) -> Option<(&'static str, u32)> {
        match self {
            StreamError::Decode(e) => Some((e.reason(), e.code())),
            StreamError::NoRoom(budget::NoRoom::TooLarge { .. }) => {
                Some((session::reason::MEMORY_BUDGET, codes::OVERSIZED))
            }
            StreamError::NoRoom(budget::NoRoom::Busy { .. }) => {
                Some((session::reason::MEMORY_BUDGET, codes::BUSY))
            }
            StreamError::FrameTimeout => Some((session::reason::FRAME_TIMEOUT, codes::BUSY)),
            _ => None,
        }
    }
}

/// Reads the next frame within `budget`: once the frame's header is in, room for the whole
/// frame is reserved before its body is read, and the body must arrive within
/// [`budget::FRAME_TIMEOUT`]. Reads never go past the frame, so the decoder holds nothing
/// unreserved but a header. `Ok(None)` at a clean end of stream.
async fn read_frame_within(
    recv: &mut RecvStream,
    dec: &mut FrameDecoder,
    budget: &budget::ConnectionBudget,
) -> Result<Option<(RawFrame, budget::Reservation)>, StreamError> {
    loop {
        if let Some(total) = dec.announced()? {
            let reservation = budget.reserve(total).await?;
            let body = async {
                loop {
                    if let Some(frame) = dec.next_frame()? {
                        return Ok(Some(frame));
                    }
                    if !read_some(recv, dec).await? {
                        dec.finish()?;
                        return Ok(None);
                    }
                }
            };
            return match tokio::time::timeout(budget::FRAME_TIMEOUT, body).await {
                Ok(Ok(Some(frame))) => Ok(Some((frame, reservation))),
                Ok(Ok(None)) => Ok(None),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(StreamError::FrameTimeout),
            };
        }
        if !read_some(recv, dec).await? {
            dec.finish()?;
            return Ok(None);
        }
    }
}

/// Reads what the decoder wants next, at most 64 KiB; false at the end of the stream.
async fn read_some(recv: &mut RecvStream, dec: &mut FrameDecoder) -> Result<bool, StreamError> {
    match recv.read_chunk(dec.wanted().min(64 * 1024), true).await? {
        Some(chunk) => {
            dec.push(&chunk.bytes);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Reads the next frame, `Ok(None)` at a clean end of stream.
async fn read_frame(
    recv: &mut RecvStream,
    dec: &mut FrameDecoder,
) -> Result<Option<RawFrame>, StreamError> {
    loop {
        if let Some(frame) = dec.next_frame()? {
            return Ok(Some(frame));
        }
        if !read_some(recv, dec).await? {
            dec.finish()?;
            return Ok(None);
        }
    }
}

async fn write_msg(send: &mut SendStream, msg: &Message) -> Result<(), StreamError> {
    let bytes = codec::encode(msg).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    send.write_all(&bytes).await?;
    Ok(())
}

impl Ingest {
    /// Opens its own store connections in `parts.data_dir`.
    pub fn new(parts: IngestParts) -> Result<Self, crate::store::StoreError> {
        let cmdb = {
            let mut db = Db::open(&parts.data_dir)?;
            db.attach_checkpoints(parts.writer.checkpoints());
            db
        };
        Ok(Ingest {
            db: Arc::new(Mutex::new(Db::open(&parts.data_dir)?)),
            cmdb: Arc::new(cmdb::GroupCommit::new(cmdb).with_max_cis(parts.limits.max_cis)),
            limits: parts.limits,
            parts,
            conns: Mutex::new(HashMap::new()),
            enroll_failures: Default::default(),
        })
    }

    /// Tells the engine, if there is one.
    async fn tell_engine(&self, input: Input) {
        if let Some(engine) = &self.parts.engine {
            // A dead engine is reported by the supervisor; the send only logs.
            let _ = engine.send(input).await;
        }
    }

    /// Runs a closure on the store connection off the async runtime.
    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = db
                .lock()
                .map_err(|_| anyhow::anyhow!("store connection poisoned"))?;
            Ok(f(&mut guard))
        })
        .await?
    }

    /// Accepts connections until `shutdown`, then waits for every connection task to finish.
    pub async fn run(self: Arc<Self>, endpoint: quinn::Endpoint, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        tracker.spawn(self.clone().watch_revocations(shutdown.clone()));
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let remote = incoming.remote_address();
            let span = tracing::info_span!("peer", %remote);
            tracker.spawn(
                self.clone()
                    .handle(incoming, shutdown.clone())
                    .instrument(span),
            );
        }
        tracker.close();
        tracker.wait().await;
    }

    async fn handle(self: Arc<Self>, incoming: Incoming, shutdown: CancellationToken) {
        let remote = incoming.remote_address();
        let conn = match incoming.await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "connection refused during TLS handshake");
                self.parts.metrics.reject("unauthenticated");
                return;
            }
        };
        let certs = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .filter(|certs| !certs.is_empty());
        match certs {
            Some(certs) => self.serve_agent(conn, &certs, remote, shutdown).await,
            None => self.serve_enrollment(conn).await,
        }
    }

    fn refuse(&self, conn: &Connection, code: u32, reason: &'static str, message: &str) {
        self.parts.metrics.reject(reason);
        conn.close(VarInt::from_u32(code), message.as_bytes());
    }

    /// A mutually authenticated agent: control stream first, then any number of batch streams.
    async fn serve_agent(
        self: Arc<Self>,
        conn: Connection,
        certs: &[CertificateDer<'static>],
        remote: SocketAddr,
        shutdown: CancellationToken,
    ) {
        let agent_id = match identity::peer_agent_id(certs) {
            Ok(id) => id,
            Err(e) => {
                warn!(error = %e, "refused: client certificate names no agent");
                return self.refuse(
                    &conn,
                    codes::REVOKED,
                    "unauthenticated",
                    "certificate names no agent",
                );
            }
        };
        let pin = identity::pin_to_hex(&identity::pin_of_der(certs[0].as_ref()));
        let id = agent_id.clone();
        let row = match self.with_db(move |db| db.agent(&id)).await {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => {
                warn!(agent = %agent_id, error = %e, "store error while authenticating");
                return self.refuse(&conn, codes::INTERNAL, "store_error", "internal error");
            }
            Err(e) => {
                warn!(agent = %agent_id, error = %e, "store error while authenticating");
                return self.refuse(&conn, codes::INTERNAL, "store_error", "internal error");
            }
        };
        let Some(row) = row else {
            warn!(
                agent = %agent_id,
                "refused: unknown agent certificate (signed by this CA, but the store has no \
                 such agent: was the store replaced or restored from an older backup?)"
            );
            return self.refuse(
                &conn,
                codes::UNKNOWN_AGENT,
                "unauthenticated",
                "unknown agent: this collector's store has no record of it",
            );
        };
        if row.revoked_at_ms.is_some() {
            warn!(agent = %agent_id, "refused: agent certificate revoked");
            return self.refuse(&conn, codes::REVOKED, "revoked", "certificate revoked");
        }
        if row.cert_pin != pin {
            warn!(agent = %agent_id, "refused: certificate is not the one issued to this agent");
            return self.refuse(
                &conn,
                codes::REVOKED,
                "unauthenticated",
                "certificate superseded",
            );
        }
        let span = tracing::info_span!("agent", id = %agent_id, host = %row.hostname);
        self.clone()
            .serve_authenticated(conn, agent_id, row.last_seq, remote, shutdown)
            .instrument(span)
            .await;
    }

    async fn serve_authenticated(
        self: Arc<Self>,
        conn: Connection,
        agent_id: String,
        last_seq: Option<u64>,
        remote: SocketAddr,
        shutdown: CancellationToken,
    ) {
        // Control stream: hello, then welcome.
        let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
            let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
            let mut dec = FrameDecoder::new(64 * 1024);
            let frame = read_frame(&mut recv, &mut dec).await.map_err(|e| {
                if let StreamError::Decode(d) = &e {
                    self.parts.metrics.reject(d.reason());
                }
                e.to_string()
            })?;
            let hello = match frame.map(|f| f.decode()) {
                Some(Ok(Message::Hello(h))) => h,
                Some(Ok(other)) => {
                    self.parts.metrics.reject("unexpected");
                    recv.stop(VarInt::from_u32(codes::UNEXPECTED)).ok();
                    return Err(format!("expected hello, got kind {}", other.kind()));
                }
                Some(Err(e)) => {
                    self.parts.metrics.reject(e.reason());
                    recv.stop(VarInt::from_u32(e.code())).ok();
                    return Err(format!("bad hello: {e}"));
                }
                None => return Err("control stream ended before hello".to_string()),
            };
            let welcome = Welcome {
                version: env!("CARGO_PKG_VERSION").into(),
                capabilities: proto::CAPABILITIES.iter().map(|c| c.to_string()).collect(),
                last_seq,
                settings: self.parts.settings.clone(),
            };
            write_msg(&mut send, &Message::Welcome(welcome))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((hello, send, recv, dec))
        })
        .await;
        let (hello, _control_send, mut control_recv, mut control_dec) = match hello {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                warn!(error = %e, "closing connection: no valid hello");
                conn.close(VarInt::from_u32(codes::UNEXPECTED), b"expected hello");
                return;
            }
            Err(_) => {
                warn!("closing connection: no hello within {HELLO_TIMEOUT:?}");
                conn.close(VarInt::from_u32(codes::UNEXPECTED), b"hello timeout");
                return;
            }
        };
        let given_interval = hello.interval_ms;
        let hello = session::accept_hello(hello, self.parts.settings.interval_ms, &self.limits);
        for problem in &hello.problems {
            self.parts.metrics.reject(problem);
        }
        if hello.problems.contains(&session::reason::BAD_INTERVAL) {
            warn!(
                given = given_interval,
                used = hello.interval_ms,
                "hello interval out of range: clamped"
            );
        }
        let now = now_ms();
        let mut hello = hello;
        if let Some(renamed) = self
            .parts
            .presence
            .claim_hostname(&agent_id, &hello.hostname, now)
        {
            warn!(
                claimed = %hello.hostname,
                using = %renamed,
                "another enrolled agent already goes by this host name: this one is renamed \
                 (a host name is only what an agent claims; its certificate is its identity)"
            );
            self.parts.metrics.reject(session::reason::HOSTNAME_CLASH);
            hello.hostname = renamed;
        }
        info!(%remote, version = %hello.version, interval_ms = hello.interval_ms, host = %hello.hostname, "agent connected");
        // The new generation first, then the old connection's close: the old task, woken by
        // the close, must find itself replaced (else it would mark the agent disconnected).
        let generation =
            self.parts
                .presence
                .connected(&agent_id, &hello.hostname, hello.interval_ms, now);
        if let Some(old) = self.lock_conns().insert(agent_id.clone(), conn.clone()) {
            old.close(
                VarInt::from_u32(codes::OK),
                b"replaced by a newer connection",
            );
        }
        self.parts.table.attach(&agent_id);
        let (id, addr) = (agent_id.clone(), remote.to_string());
        let (host, version, interval) = (
            hello.hostname.clone(),
            hello.version.clone(),
            hello.interval_ms,
        );
        if let Err(e) = self
            .with_db(move |db| db.agent_connected(&id, &addr, &host, &version, interval, now))
            .await
        {
            warn!(error = %e, "cannot record connection");
        }

        let agent: Arc<str> = Arc::from(agent_id.as_str());
        self.tell_engine(Input::Connected {
            agent: agent.clone(),
            hostname: hello.hostname.clone(),
            at_ms: now,
        })
        .await;
        let streams = TaskTracker::new();
        let budget = self.parts.budget.connection();
        let mut goodbye = false;
        // `goodbye` also ends reading a broken control stream; this is only the agent's word.
        let mut said_goodbye = false;
        loop {
            tokio::select! {
                stream = conn.accept_bi() => match stream {
                    Ok((send, recv)) => {
                        streams.spawn(self.clone().agent_stream(agent.clone(), send, recv, budget.clone(), shutdown.clone()));
                    }
                    Err(e) => {
                        log_conn_end(&e);
                        // The agent's own close says goodbye too: under load its goodbye
                        // frame can still be unread when the close arrives, and QUIC drops
                        // what the collector has not read.
                        if is_goodbye_close(&e) {
                            info!("agent closed the connection with a goodbye");
                            said_goodbye = true;
                        }
                        break;
                    }
                },
                frame = read_frame(&mut control_recv, &mut control_dec), if !goodbye => match frame {
                    Ok(Some(f)) => match f.decode() {
                        Ok(Message::Goodbye(g)) => {
                            let reason: String = g.reason.chars().take(200).collect();
                            info!(reason = %reason, "agent said goodbye");
                            said_goodbye = true;
                            // The collector closes the connection (below), once its streams
                            // are done: the agent waits for that, so its goodbye is never lost
                            // to its own close arriving first.
                            break;
                        }
                        Ok(other) => debug!(kind = other.kind(), "ignoring control message"),
                        Err(e) => {
                            self.parts.metrics.reject(e.reason());
                            warn!(error = %e, "bad control frame");
                            control_recv.stop(VarInt::from_u32(e.code())).ok();
                            goodbye = true;
                        }
                    },
                    Ok(None) | Err(_) => goodbye = true,
                },
                _ = shutdown.cancelled() => break,
            }
        }
        streams.close();
        // Batch streams finish acknowledging what they read before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(5), streams.wait()).await;
        if shutdown.is_cancelled() {
            conn.close(
                VarInt::from_u32(codes::SHUTDOWN),
                b"collector shutting down",
            );
        } else if said_goodbye {
            conn.close(VarInt::from_u32(codes::OK), b"goodbye");
        }
        {
            let mut conns = self.lock_conns();
            if conns
                .get(&agent_id)
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                conns.remove(&agent_id);
            }
        }
        let now = now_ms();
        // Only the agent's newest connection speaks for it: the end of one that a reconnect
        // replaced changes nothing.
        if !self
            .parts
            .presence
            .disconnected(&agent_id, generation, said_goodbye, now)
        {
            info!("replaced connection ended");
            return;
        }
        self.tell_engine(Input::Disconnected {
            agent: agent.clone(),
            at_ms: now,
        })
        .await;
        let id = agent_id.clone();
        let _ = self
            .with_db(move |db| db.agent_disconnected(&id, said_goodbye, now))
            .await;
        info!(clean = said_goodbye, "agent disconnected");
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<String, Connection>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connections of agents revoked by an admin command (possibly another process).
    async fn watch_revocations(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REVOCATION_POLL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let live: Vec<String> = self.lock_conns().keys().cloned().collect();
            if live.is_empty() {
                continue;
            }
            let revoked = match self.with_db(|db| db.revoked_agent_ids()).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot read revocations");
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "cannot read revocations");
                    continue;
                }
            };
            for id in live.iter().filter(|id| revoked.contains(id.as_str())) {
                let conn = self.lock_conns().remove(id);
                if let Some(conn) = conn {
                    warn!(agent = %id, "agent revoked: closing its connection");
                    // First, so the engine does not take the closed connection for an outage.
                    self.parts.presence.remove(id);
                    self.parts.table.remove(id);
                    self.tell_engine(Input::Revoked {
                        agent: Arc::from(id.as_str()),
                    })
                    .await;
                    self.parts.metrics.reject("revoked");
                    conn.close(VarInt::from_u32(codes::REVOKED), b"certificate revoked");
                }
            }
        }
    }
}

/// The close an agent sends after its goodbye: `OK`, reason `goodbye`
/// (`vigil_agent::client::Session::goodbye`).
fn is_goodbye_close(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::ApplicationClosed(c)
        if c.error_code == VarInt::from_u32(codes::OK) && c.reason.as_ref() == b"goodbye")
}

fn log_conn_end(e: &ConnectionError) {
    match e {
        ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed => {
            debug!("connection closed: {e}")
        }
        _ => info!("connection lost: {e}"),
    }
}
