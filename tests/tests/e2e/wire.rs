//! A hand-driven agent over real QUIC with mutual TLS, for tests that must say on the wire what
//! the real agent never would (a hostile hello, batches with chosen sequence numbers and
//! timestamps): enrollment through the real protocol, a session with a hello of the test's
//! choosing, one batch per stream.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use quinn::{Connection, Endpoint};
use vigil_agent::client::{self, Identity, Session};
use vigil_shared::codec::{self, FrameDecoder};
use vigil_shared::identity::EnrollToken;
use vigil_shared::proto::{Ack, Batch, Hello, Message, Sample};

use crate::harness::now_ms;

/// Bound of every single network wait (a loaded 2-core CI machine).
pub const WAIT: Duration = Duration::from_secs(30);

/// A runtime that keeps QUIC connections driven between `block_on` calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A client endpoint for the collector at `addr`, driven by `rt`.
pub fn endpoint(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> Endpoint {
    let _in_runtime = rt.enter();
    client::client_endpoint(addr).expect("client endpoint")
}

/// `fut`, or a panic naming `what` after [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}

/// A hello as the real agent sends it, for `hostname`, sampling every `interval_ms`.
pub fn hello(identity: &Identity, hostname: &str, interval_ms: u64) -> Hello {
    Hello {
        agent_id: identity.agent_id.clone(),
        hostname: hostname.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        capabilities: vec![],
        interval_ms,
    }
}

/// Enrolls a new identity through the real protocol.
pub async fn enroll(
    endpoint: &Endpoint,
    addr: SocketAddr,
    token: &str,
    hostname: &str,
) -> Identity {
    let token = EnrollToken::from_str(token.trim()).expect("token");
    within(
        "enrollment",
        client::enroll(endpoint, addr, &token, hostname),
    )
    .await
    .expect("enrollment of the test identity")
}

/// An authenticated session that opened with `hello`.
pub async fn session(
    endpoint: &Endpoint,
    addr: SocketAddr,
    identity: &Identity,
    hello: Hello,
) -> Session {
    let config = identity.client_config().expect("client config");
    within(
        "hello/welcome",
        client::open_session(endpoint, config, addr, hello),
    )
    .await
    .expect("authenticated session")
}

/// One sample of `name` now.
pub fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
    Sample {
        ts_ms: now_ms(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        value,
    }
}

/// A batch holding one `load1` sample of now.
pub fn batch(seq: u64) -> Message {
    Message::Batch(Batch {
        seq,
        samples: vec![sample("load1", &[], 0.25)],
    })
}

/// Sends `msg` (a batch) on a fresh stream of `conn`; returns the sequence number the
/// collector acknowledged, or `None` when it closed the stream without an ack.
pub async fn send_batch(conn: &Connection, msg: &Message) -> Option<u64> {
    within("batch answered", async {
        let (mut send, mut recv) = conn.open_bi().await.expect("a new stream");
        client::write_message(&mut send, msg)
            .await
            .expect("write batch");
        send.finish().expect("finish");
        let mut dec = FrameDecoder::new(codec::DEFAULT_MAX_FRAME);
        match client::read_message(&mut recv, &mut dec).await {
            Ok(Some(Message::Ack(Ack { seq }))) => Some(seq),
            _ => None,
        }
    })
    .await
}

/// Sends one valid batch with sequence number `seq` and returns the acknowledged sequence.
pub async fn valid_batch(conn: &Connection, seq: u64) -> u64 {
    send_batch(conn, &batch(seq))
        .await
        .unwrap_or_else(|| panic!("expected an ack for batch {seq}"))
}
