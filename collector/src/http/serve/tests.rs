//! The listener against real loopback sockets: caps, timeouts, panics and shutdown.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::*;

struct Listener {
    addr: SocketAddr,
    metrics: HttpMetrics,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/panic",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("a handler bug");
                }
                "unreachable"
            }),
        )
        .route(
            "/big",
            // Far more than loopback socket buffers hold: a client that does not read stalls it.
            get(|| async {
                let chunk = Bytes::from(vec![b'x'; 1 << 20]);
                let stream = tokio_stream_of(chunk, 256);
                Body::new(stream)
            }),
        )
}

/// A body of `n` copies of `chunk`, produced as the connection takes them.
fn tokio_stream_of(
    chunk: Bytes,
    n: usize,
) -> impl axum::body::HttpBody<Data = Bytes, Error = io::Error> {
    struct Repeat(Bytes, usize);
    impl axum::body::HttpBody for Repeat {
        type Data = Bytes;
        type Error = io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, io::Error>>> {
            if self.1 == 0 {
                return Poll::Ready(None);
            }
            self.1 -= 1;
            Poll::Ready(Some(Ok(hyper::body::Frame::data(self.0.clone()))))
        }
    }
    Repeat(chunk, n)
}

async fn start(limits: HttpLimits) -> Listener {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics = HttpMetrics::unregistered();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, app(), limits, metrics.clone(), async {
        let _ = stopped.await;
    }));
    Listener {
        addr,
        metrics,
        stop: Some(stop),
        task,
    }
}

fn limits() -> HttpLimits {
    HttpLimits {
        max_connections: 1000,
        max_connections_per_address: 1000,
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_exports: 4,
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

/// Sends one keep-alive request and reads its whole answer (the `hello` route).
async fn hello(s: &mut TcpStream) -> String {
    s.write_all(GET).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"hello") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Waits (at most `within`) until the server closes `s`: EOF or a reset.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = vec![0u8; 1 << 16];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Waits (at most 15 s) until `cond` holds; the caller asserts it after.
async fn eventually(cond: impl Fn() -> bool) {
    for _ in 0..1500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count(v: &IntCounterVec, label: &str) -> u64 {
    v.with_label_values(&[label]).get()
}

#[tokio::test]
async fn connections_past_the_per_address_cap_are_closed_at_once() {
    let l = start(HttpLimits {
        max_connections_per_address: 3,
        ..limits()
    })
    .await;
    let mut kept = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(l.addr).await.expect("connect");
        hello(&mut s).await;
        kept.push(s);
    }
    assert_eq!(l.metrics.open.get(), 3);
    let mut fourth = TcpStream::connect(l.addr).await.expect("connect");
    let _ = fourth.write_all(GET).await;
    assert!(closed_within(&mut fourth, Duration::from_secs(10)).await);
    assert_eq!(count(&l.metrics.refused, refused::PER_ADDRESS), 1);
    // The three keep working, and a slot freed is a slot for the next one.
    for s in &mut kept {
        hello(s).await;
    }
    drop(kept.pop());
    eventually(|| l.metrics.open.get() == 2).await;
    assert_eq!(l.metrics.open.get(), 2);
    let mut next = TcpStream::connect(l.addr).await.expect("connect");
    assert!(hello(&mut next).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_past_the_global_cap_are_closed_and_counted() {
    let l = start(HttpLimits {
        max_connections: 2,
        ..limits()
    })
    .await;
    let mut a = TcpStream::connect(l.addr).await.expect("connect");
    let mut b = TcpStream::connect(l.addr).await.expect("connect");
    hello(&mut a).await;
    hello(&mut b).await;
    let mut c = TcpStream::connect(l.addr).await.expect("connect");
    assert!(closed_within(&mut c, Duration::from_secs(10)).await);
    assert_eq!(count(&l.metrics.refused, refused::GLOBAL), 1);
    assert_eq!(l.metrics.open.get(), 2);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let l = start(HttpLimits {
        idle_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let mut s = TcpStream::connect(l.addr).await.expect("connect");
    hello(&mut s).await;
    assert!(closed_within(&mut s, Duration::from_secs(15)).await);
    // The gauge follows once the connection's task has ended.
    eventually(|| l.metrics.open.get() == 0).await;
    assert_eq!(l.metrics.open.get(), 0);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_counted() {
    let l = start(HttpLimits {
        idle_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let mut s = TcpStream::connect(l.addr).await.expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    // Read nothing until the server has given up on the write.
    eventually(|| count(&l.metrics.timeouts, "idle") == 1).await;
    assert_eq!(count(&l.metrics.timeouts, "idle"), 1);
    assert!(closed_within(&mut s, Duration::from_secs(15)).await);
}

#[tokio::test]
async fn a_header_that_does_not_finish_in_time_closes_the_connection() {
    let l = start(HttpLimits {
        header_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let mut s = TcpStream::connect(l.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .expect("write");
    assert!(closed_within(&mut s, Duration::from_secs(15)).await);
    eventually(|| count(&l.metrics.timeouts, "header") == 1).await;
    assert_eq!(count(&l.metrics.timeouts, "header"), 1);
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_connection_goes_on() {
    let l = start(limits()).await;
    let mut s = TcpStream::connect(l.addr).await.expect("connect");
    s.write_all(b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(9).any(|w| w == b"\"internal") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answer")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 500"), "{text}");
    assert_eq!(l.metrics.panics.get(), 1);
    // Same connection, next request: answered.
    assert!(hello(&mut s).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once() {
    let mut l = start(limits()).await;
    let mut idle = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(l.addr).await.expect("connect");
        if i % 2 == 0 {
            hello(&mut s).await; // idle between requests
        } // else idle before its first request
        idle.push(s);
    }
    let stopping = std::time::Instant::now();
    let _ = l.stop.take().expect("stop").send(());
    for s in &mut idle {
        assert!(closed_within(s, Duration::from_secs(10)).await);
    }
    tokio::time::timeout(Duration::from_secs(10), l.task)
        .await
        .expect("serve returns")
        .expect("join")
        .expect("serve");
    // Nothing was in flight: no wait for the grace.
    assert!(
        stopping.elapsed() < SHUTDOWN_GRACE,
        "stopping took {:?}",
        stopping.elapsed()
    );
}
