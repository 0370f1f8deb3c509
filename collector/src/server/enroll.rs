//! Enrollment: a connection without a client certificate may do one thing, send one
//! enrollment request (token + CSR) and receive a certificate. A token that is malformed,
//! expired, spent, revoked or pinned to another CA is refused with a reason (an unknown token
//! id and a wrong secret get the same words); the token is checked before anything is signed;
//! a refusal stores nothing (the token is spent and the agent recorded in one transaction).
//! An address with [`MAX_FAILURES`] failed enrollments in [`FAILURE_WINDOW`] is refused
//! unread until the window has passed (`vigil_enrollments_total{result="rate_limited"}`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use quinn::{Connection, SendStream, VarInt};
use tracing::{info, warn};
use vigil_runtime::clock::now_ms;
use vigil_shared::codec::FrameDecoder;
use vigil_shared::identity::{self, EnrollToken};
use vigil_shared::proto::{self, codes, ErrorMsg, Message};

use super::{read_frame, write_msg, Ingest, StreamError, AGENT_CERT_VALIDITY, HELLO_TIMEOUT};
use crate::store::NewAgent;

/// Failed enrollments an address may make in [`FAILURE_WINDOW`] before it is refused unread.
pub const MAX_FAILURES: u32 = 10;
/// The window of [`MAX_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (the oldest windows are forgotten first).
const MAX_ADDRESSES: usize = 10_000;

/// Recent failed enrollments by address.
#[derive(Debug, Default)]
pub struct FailedEnrollments {
    by_address: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailedEnrollments {
    /// Whether `ip` has used up its failures for now.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let map = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&ip).is_some_and(|(since, n)| {
            *n >= MAX_FAILURES && now.duration_since(*since) < FAILURE_WINDOW
        })
    }

    /// Records a failed enrollment from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
            if map.len() >= MAX_ADDRESSES {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (since, _))| *since)
                    .map(|(k, _)| *k)
                {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

impl Ingest {
    /// A connection without a client certificate may do one thing: enroll.
    pub(super) async fn serve_enrollment(self: Arc<Self>, conn: Connection) {
        let ip = conn.remote_address().ip();
        if self.enroll_failures.blocked(ip, Instant::now()) {
            warn!(%ip, "enrollment refused unread: too many failed enrollments from this address");
            self.parts.metrics.enrollment_rate_limited();
            self.refuse(
                &conn,
                codes::ENROLL_REFUSED,
                "enroll_refused",
                "too many failed enrollments from this address; retry in a minute",
            );
            return;
        }
        let result = tokio::time::timeout(HELLO_TIMEOUT, self.enroll(&conn)).await;
        let (mut send, outcome) = match result {
            Ok(Ok(v)) => v,
            Ok(Err((send, e))) => (send, Err(e)),
            Err(_) => {
                warn!("enrollment refused: no request within {HELLO_TIMEOUT:?}");
                self.enroll_failures.failed(ip, Instant::now());
                self.refuse(
                    &conn,
                    codes::ENROLL_REFUSED,
                    "enroll_refused",
                    "enrollment timed out",
                );
                return;
            }
        };
        match outcome {
            Ok((enrolled, token_id)) => {
                let agent_id = enrolled.agent_id.clone();
                let delivered = match send.as_mut() {
                    Some(send) => {
                        write_msg(send, &Message::Enrolled(enrolled)).await.is_ok()
                            && send.finish().is_ok()
                            && delivered(send, &conn).await
                    }
                    None => false,
                };
                if delivered {
                    info!(agent = %agent_id, "agent enrolled");
                    self.parts.metrics.enrollment(true);
                    // Let the agent read the certificate and close; don't wait forever.
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
                    return;
                }
                // The client gave up before its certificate reached it: the enrollment is
                // undone, so a single-use token is not spent on a certificate nobody holds.
                self.parts.metrics.enrollment_abandoned();
                let id = agent_id.clone();
                match self
                    .with_db(move |db| db.undo_enrollment(&token_id, &id))
                    .await
                {
                    Ok(Ok(())) => warn!(
                        agent = %agent_id,
                        "enrollment abandoned: the client left before its certificate reached it; \
                         undone, the token is not spent"
                    ),
                    Ok(Err(e)) => {
                        warn!(agent = %agent_id, error = %e, "cannot undo an abandoned enrollment")
                    }
                    Err(e) => {
                        warn!(agent = %agent_id, error = %e, "cannot undo an abandoned enrollment")
                    }
                }
                conn.close(VarInt::from_u32(codes::OK), b"enrollment abandoned");
            }
            Err(refusal) => {
                warn!(reason = %refusal.message, "enrollment refused");
                self.parts.metrics.enrollment(false);
                self.enroll_failures.failed(ip, Instant::now());
                if let Some(send) = send.as_mut() {
                    let _ = write_msg(send, &Message::Error(refusal.clone())).await;
                    let _ = send.finish();
                    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                }
                self.refuse(
                    &conn,
                    codes::ENROLL_REFUSED,
                    "enroll_refused",
                    &refusal.message,
                );
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn enroll(
        &self,
        conn: &Connection,
    ) -> Result<
        (
            Option<SendStream>,
            Result<(proto::Enrolled, String), ErrorMsg>,
        ),
        (Option<SendStream>, ErrorMsg),
    > {
        let refused = |msg: String| ErrorMsg {
            code: "enroll_refused".into(),
            message: msg,
        };
        let (send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => return Err((None, refused(format!("no enrollment stream: {e}")))),
        };
        let mut dec = FrameDecoder::new(64 * 1024);
        let req = match read_frame(&mut recv, &mut dec).await {
            Ok(Some(frame)) => match frame.decode() {
                Ok(Message::Enroll(req)) => req,
                Ok(other) => {
                    self.parts.metrics.reject("unexpected");
                    return Err((
                        Some(send),
                        refused(format!(
                            "expected an enrollment request, got kind {}",
                            other.kind()
                        )),
                    ));
                }
                Err(e) => {
                    self.parts.metrics.reject(e.reason());
                    return Err((Some(send), refused(format!("bad enrollment request: {e}"))));
                }
            },
            Ok(None) => {
                return Err((
                    Some(send),
                    refused("stream ended before the request".into()),
                ))
            }
            Err(e) => {
                if let StreamError::Decode(d) = &e {
                    self.parts.metrics.reject(d.reason());
                }
                return Err((Some(send), refused(format!("bad enrollment request: {e}"))));
            }
        };
        let token = match EnrollToken::from_str(req.token.trim()) {
            Ok(t) => t,
            Err(e) => return Ok((Some(send), Err(refused(format!("malformed token: {e}"))))),
        };
        if token.ca_pin != self.parts.identity.pin {
            return Ok((
                Some(send),
                Err(refused("token pins another collector's CA".into())),
            ));
        }
        // The token before anything is signed: a caller without a valid one gets no work done.
        let (check_id, check_secret) = (token.id.clone(), token.secret.clone());
        match self
            .with_db(move |db| {
                db.check_enroll_token(&check_id, &check_secret, now_ms())
                    .map_err(|r| r.to_string())
            })
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Ok((Some(send), Err(refused(reason)))),
            Err(e) => return Ok((Some(send), Err(refused(format!("internal error: {e}"))))),
        }
        let agent_id = identity::new_agent_id();
        let cert_pem = match identity::sign_agent_csr(
            &self.parts.identity.ca,
            &req.csr_pem,
            &agent_id,
            AGENT_CERT_VALIDITY,
            SystemTime::now(),
        ) {
            Ok(c) => c,
            Err(e) => {
                return Ok((
                    Some(send),
                    Err(refused(format!("bad certificate request: {e}"))),
                ))
            }
        };
        let cert_pin = match identity::pin_of_pem(&cert_pem) {
            Ok(p) => identity::pin_to_hex(&p),
            Err(e) => return Ok((Some(send), Err(refused(format!("internal error: {e}"))))),
        };
        let hostname: String = req.hostname.chars().take(255).collect();
        let version: String = req.version.chars().take(64).collect();
        let id = agent_id.clone();
        let token_id = token.id.clone();
        let stored = self
            .with_db(move |db| {
                let agent = NewAgent {
                    id,
                    hostname,
                    version,
                    cert_pin,
                    token_id: token.id.clone(),
                };
                // Token spent and agent recorded in one transaction: a refusal stores nothing.
                db.enroll_agent(&token.id, &token.secret, &agent, now_ms())
                    .map_err(|r| r.to_string())
            })
            .await;
        // Holds the window between storing and answering open (tests of an abandoned one).
        if vigil_runtime::failpoint::hit("enroll-slow") {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        match stored {
            Ok(Ok(_)) => Ok((
                Some(send),
                Ok((
                    proto::Enrolled {
                        agent_id,
                        cert_pem,
                        ca_pem: self.parts.identity.ca.cert_pem.clone(),
                    },
                    token_id,
                )),
            )),
            Ok(Err(reason)) => Ok((Some(send), Err(refused(reason)))),
            Err(e) => Ok((Some(send), Err(refused(format!("internal error: {e}"))))),
        }
    }
}

/// How long the collector waits for an agent to receive its certificate.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);

/// Whether the finished answer on `send` reached the agent: all of it acknowledged, or the
/// agent closed the connection saying it is enrolled (its close may overtake the
/// acknowledgement).
async fn delivered(send: &mut SendStream, conn: &Connection) -> bool {
    match tokio::time::timeout(DELIVERY_WAIT, send.stopped()).await {
        Ok(Ok(None)) => true,
        Ok(Err(_)) => matches!(
            conn.close_reason(),
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == VarInt::from_u32(codes::OK) && c.reason.as_ref() == b"enrolled"
        ),
        // Stopped unread, or no acknowledgement in time.
        Ok(Ok(Some(_))) | Err(_) => false,
    }
}
