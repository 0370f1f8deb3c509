//! The agent's side of the wire: enrollment, the mutually authenticated connection, the control
//! stream and the batch stream that replays the spool oldest first and trims it on every ack.
//!
//! Never trusts the collector blindly: before enrollment the server must chain to the CA pinned
//! in the token; afterwards to the CA stored at enrollment. The private key is generated here and
//! never sent. Reads are size-capped by the frame decoder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream, VarInt};
use tracing::{debug, info, warn};
use vigil_runtime::fs::{PRIVATE, PUBLIC};
use vigil_shared::codec::{self, DecodeError, FrameDecoder, DEFAULT_MAX_FRAME};
use vigil_shared::identity::{self, EnrollToken};
use vigil_shared::proto::{self, codes, Enroll, Goodbye, Hello, Message, Welcome};

/// Files of an enrolled agent, in its data dir.
const KEY_FILE: &str = "agent.key";
const CERT_FILE: &str = "agent.pem";
const CA_FILE: &str = "ca.pem";
const ID_FILE: &str = "agent-id";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the collector at {addr}: {source}")]
    Connect {
        addr: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("connection to the collector lost: {0}")]
    Connection(#[from] ConnectionError),
    #[error("the collector refused enrollment: {0}")]
    EnrollRefused(String),
    #[error(
        "the server at {addr} does not hold the CA pinned by the enrollment token ({reason}): \
         the token belongs to another collector or was altered; create one with \
         `vigil-collector token create` on the collector at this address"
    )]
    NotPinned { addr: String, reason: String },
    #[error(
        "the server at {addr} presented a certificate not signed by the CA this agent enrolled \
         with ({reason})"
    )]
    Untrusted { addr: String, reason: String },
    #[error("the collector refused this agent (code {code}): {reason}")]
    Refused { code: u64, reason: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("identity error: {0}")]
    Identity(#[from] identity::IdentityError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How long an agent that said goodbye waits for the collector to close the connection.
const GOODBYE_WAIT: Duration = Duration::from_secs(2);

/// How long an agent that the collector does not know waits before it tries again.
pub const UNKNOWN_AGENT_RETRY: Duration = Duration::from_secs(300);

impl ClientError {
    /// The collector has no record of this agent ([`codes::UNKNOWN_AGENT`]): retry, rarely.
    pub fn is_unknown_agent(&self) -> bool {
        matches!(self, ClientError::Refused { code, .. } if *code == u64::from(codes::UNKNOWN_AGENT))
    }

    /// The delay before the next attempt: the backoff's, or [`UNKNOWN_AGENT_RETRY`] (with the
    /// same jitter) for an agent the collector does not know.
    pub fn retry_delay(&self, backoff: Duration, jitter: f64) -> Duration {
        if self.is_unknown_agent() {
            UNKNOWN_AGENT_RETRY.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
        } else {
            backoff
        }
    }

    /// Errors that retrying cannot fix.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ClientError::EnrollRefused(_) | ClientError::NotPinned { .. }
        ) || matches!(self, ClientError::Refused { code, .. } if *code == u64::from(codes::REVOKED))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Maps the ways a refused connection shows up on the client (QUIC lets `connect` succeed before
/// the server has checked the certificate; the refusal arrives on the first stream operation).
fn classify(e: ConnectionError) -> ClientError {
    match e {
        ConnectionError::ApplicationClosed(close)
            if close.error_code != VarInt::from_u32(codes::OK) =>
        {
            let code = close.error_code.into_inner();
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            if code == u64::from(codes::ENROLL_REFUSED) {
                ClientError::EnrollRefused(reason)
            } else {
                ClientError::Refused { code, reason }
            }
        }
        other => ClientError::Connection(other),
    }
}

/// The agent's enrolled identity.
#[derive(Clone)]
pub struct Identity {
    pub agent_id: String,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl Identity {
    /// Loads the identity from `dir`, `Ok(None)` if this agent never enrolled.
    pub fn load(dir: &Path) -> Result<Option<Identity>, ClientError> {
        let id_path = dir.join(ID_FILE);
        if !id_path.exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(io_err(&p))
        };
        Ok(Some(Identity {
            agent_id: read(ID_FILE)?.trim().to_string(),
            key_pem: read(KEY_FILE)?,
            cert_pem: read(CERT_FILE)?,
            ca_pem: read(CA_FILE)?,
        }))
    }

    /// Saves the identity; the key file is 0600. The id file is written last: its presence
    /// means the rest is complete.
    pub fn save(&self, dir: &Path) -> Result<(), ClientError> {
        create_private_dir(dir)?;
        write_file(&dir.join(KEY_FILE), &self.key_pem, PRIVATE)?;
        write_file(&dir.join(CERT_FILE), &self.cert_pem, PUBLIC)?;
        write_file(&dir.join(CA_FILE), &self.ca_pem, PUBLIC)?;
        write_file(&dir.join(ID_FILE), &self.agent_id, PUBLIC)
    }

    pub fn client_config(&self) -> Result<quinn::ClientConfig, ClientError> {
        let tls = identity::mtls_client_config(&self.ca_pem, &self.cert_pem, &self.key_pem)?;
        quic_client_config(tls)
    }
}

pub fn create_private_dir(dir: &Path) -> Result<(), ClientError> {
    vigil_runtime::fs::create_private_dir(dir).map_err(io_err(dir))
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), ClientError> {
    vigil_runtime::fs::write_atomic(path, contents.as_bytes(), mode).map_err(io_err(path))
}

pub fn quic_client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Protocol(format!("TLS configuration: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    if let Ok(idle) = Duration::from_secs(30).try_into() {
        transport.max_idle_timeout(Some(idle));
    }
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A client endpoint on an ephemeral port of the collector address's family.
pub fn client_endpoint(collector: SocketAddr) -> Result<Endpoint, ClientError> {
    let bind: SocketAddr = if collector.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|e| ClientError::Protocol(format!("{e}")))?;
    Endpoint::client(bind).map_err(|e| ClientError::Connect {
        addr: collector.to_string(),
        source: Box::new(e),
    })
}

/// Resolves `host:port` to the first address.
pub async fn resolve(collector: &str) -> Result<SocketAddr, ClientError> {
    let mut addrs = tokio::net::lookup_host(collector)
        .await
        .map_err(|e| ClientError::Connect {
            addr: collector.to_string(),
            source: Box::new(e),
        })?;
    addrs.next().ok_or_else(|| ClientError::Connect {
        addr: collector.to_string(),
        source: "name resolved to no address".into(),
    })
}

pub async fn connect(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<Connection, ClientError> {
    let connecting = endpoint
        .connect_with(config, addr, proto::SERVER_NAME)
        .map_err(|e| ClientError::Connect {
            addr: addr.to_string(),
            source: Box::new(e),
        })?;
    connecting.await.map_err(|e| match e {
        // A TLS alert raised here: this side refused the server's certificate.
        ConnectionError::TransportError(te) if (0x100..0x200).contains(&u64::from(te.code)) => {
            ClientError::Untrusted {
                addr: addr.to_string(),
                reason: te.reason,
            }
        }
        ConnectionError::TransportError(_) | ConnectionError::TimedOut => ClientError::Connect {
            addr: addr.to_string(),
            source: Box::new(e),
        },
        other => classify(other),
    })
}

/// Reads the next message from a stream; `Ok(None)` at its clean end.
pub async fn read_message(
    recv: &mut RecvStream,
    dec: &mut FrameDecoder,
) -> Result<Option<Message>, ClientError> {
    loop {
        match dec.next_message() {
            Ok(Some(m)) => return Ok(Some(m)),
            Ok(None) => {}
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => dec.push(&chunk.bytes),
            Ok(None) => {
                dec.finish()
                    .map_err(|e: DecodeError| ClientError::Protocol(e.to_string()))?;
                return Ok(None);
            }
            Err(quinn::ReadError::ConnectionLost(e)) => return Err(classify(e)),
            Err(e) => return Err(ClientError::Protocol(format!("read: {e}"))),
        }
    }
}

pub async fn write_message(send: &mut SendStream, msg: &Message) -> Result<(), ClientError> {
    let bytes = codec::encode(msg).map_err(|e| ClientError::Protocol(e.to_string()))?;
    write_bytes(send, &bytes).await
}

pub async fn write_bytes(send: &mut SendStream, bytes: &[u8]) -> Result<(), ClientError> {
    send.write_all(bytes).await.map_err(|e| match e {
        quinn::WriteError::ConnectionLost(e) => classify(e),
        other => ClientError::Protocol(format!("write: {other}")),
    })
}

/// Enrolls with `token`: makes a key pair, sends a CSR to the collector whose CA the token pins,
/// returns the identity (not yet saved).
pub async fn enroll(
    endpoint: &Endpoint,
    addr: SocketAddr,
    token: &EnrollToken,
    hostname: &str,
) -> Result<Identity, ClientError> {
    let (key_pem, csr_pem) = identity::new_key_and_csr(hostname)?;
    let tls = identity::enroll_client_config(token.ca_pin)?;
    let conn = connect(endpoint, quic_client_config(tls)?, addr)
        .await
        .map_err(|e| match e {
            // Retrying with the same token cannot help.
            ClientError::Untrusted { addr, reason } => ClientError::NotPinned { addr, reason },
            other => other,
        })?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(classify)?;
    let req = Message::Enroll(Enroll {
        token: token.to_string(),
        csr_pem,
        hostname: hostname.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    });
    write_message(&mut send, &req).await?;
    let _ = send.finish();
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let reply = read_message(&mut recv, &mut dec).await;
    conn.close(VarInt::from_u32(codes::OK), b"enrolled");
    match reply? {
        Some(Message::Enrolled(e)) => {
            if identity::pin_of_pem(&e.ca_pem)? != token.ca_pin {
                return Err(ClientError::EnrollRefused(
                    "collector sent a CA that the token does not pin".into(),
                ));
            }
            if !identity::valid_agent_id(&e.agent_id) {
                return Err(ClientError::Protocol(
                    "collector sent an invalid agent id".into(),
                ));
            }
            Ok(Identity {
                agent_id: e.agent_id,
                key_pem,
                cert_pem: e.cert_pem,
                ca_pem: e.ca_pem,
            })
        }
        Some(Message::Error(e)) => Err(ClientError::EnrollRefused(e.message)),
        Some(other) => Err(ClientError::Protocol(format!(
            "unexpected reply kind {}",
            other.kind()
        ))),
        None => Err(ClientError::Protocol(
            "collector closed the enrollment stream without an answer".into(),
        )),
    }
}

/// An open, authenticated session: the control stream after hello/welcome.
pub struct Session {
    pub conn: Connection,
    pub welcome: Welcome,
    control_send: SendStream,
}

/// Connects with mutual TLS and says hello.
pub async fn open_session(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    hello: Hello,
) -> Result<Session, ClientError> {
    let conn = connect(endpoint, config, addr).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(classify)?;
    write_message(&mut send, &Message::Hello(hello)).await?;
    let mut dec = FrameDecoder::new(64 * 1024);
    let welcome = match read_message(&mut recv, &mut dec).await? {
        Some(Message::Welcome(w)) => w,
        Some(Message::Error(e)) => {
            return Err(ClientError::Refused {
                code: 0,
                reason: e.message,
            })
        }
        Some(other) => {
            return Err(ClientError::Protocol(format!(
                "expected welcome, got kind {}",
                other.kind()
            )))
        }
        None => {
            return Err(ClientError::Protocol(
                "control stream closed before welcome".into(),
            ))
        }
    };
    debug!(collector_version = %welcome.version, last_seq = ?welcome.last_seq, "welcome");
    Ok(Session {
        conn,
        welcome,
        control_send: send,
    })
}

impl Session {
    /// Tells the collector this agent is going away on purpose, then closes.
    pub async fn goodbye(mut self, reason: &str) {
        let msg = Message::Goodbye(Goodbye {
            reason: reason.to_string(),
        });
        if write_message(&mut self.control_send, &msg).await.is_ok() {
            let _ = self.control_send.finish();
            // The collector closes the connection once it has read the goodbye: closing first
            // could discard the goodbye unread. A collector before that change never closes;
            // after the wait the agent does.
            let _ = tokio::time::timeout(GOODBYE_WAIT, self.conn.closed()).await;
        }
        self.conn.close(VarInt::from_u32(codes::OK), b"goodbye");
        info!("disconnected from collector");
    }
}

/// Logs a connection failure at the right level.
pub fn log_failure(e: &ClientError, retry_in: Duration) {
    if e.is_fatal() {
        tracing::error!(error = %e, "collector refused this agent");
    } else if e.is_unknown_agent() {
        warn!(
            error = %e,
            "the collector does not know this agent (was its store lost or restored from an \
             older backup? restore the right one, or re-enroll this agent with a new token: \
             remove its identity files and run it with `--token`); retrying in {:.0}s",
            retry_in.as_secs_f64()
        );
    } else if matches!(e, ClientError::Untrusted { .. }) {
        warn!(error = %e, "collector not trusted; retrying in {:.1}s", retry_in.as_secs_f64());
    } else {
        warn!(error = %e, "collector unreachable; retrying in {:.1}s", retry_in.as_secs_f64());
    }
}
