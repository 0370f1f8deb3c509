//! The HTTP listener: how connections are accepted, bounded and ended, under the axum router.
//!
//! Anyone who reaches the port can open connections, so every one is bounded:
//! - at most [`HttpLimits::max_connections`] open at once, and at most
//!   [`HttpLimits::max_connections_per_address`] from one IP address; past either, a new
//!   connection is closed at once (counted in `vigil_http_connections_refused_total{reason}`);
//! - a request's header must arrive within [`HttpLimits::header_timeout`] of the connection
//!   (or, between requests, of its first byte);
//! - a connection on which no byte moved either way for [`HttpLimits::idle_timeout`] is closed:
//!   an idle keep-alive connection, and a client that stopped reading a response (a stalled
//!   write) alike (`vigil_http_timeouts_total{kind}`);
//! - a handler that panics answers a logged 500 (`vigil_http_panics_total`): the connection
//!   and the route stay up.
//!
//! On shutdown the listener closes, idle connections are closed at once and requests in
//! flight get [`SHUTDOWN_GRACE`] to finish.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use super::ApiError;

/// How long requests in flight may take to finish once the collector stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub const HTTP_CONNECTIONS: &str = "vigil_http_connections";
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "vigil_http_connections_refused_total";
pub const HTTP_TIMEOUTS_TOTAL: &str = "vigil_http_timeouts_total";
pub const HTTP_PANICS_TOTAL: &str = "vigil_http_panics_total";
pub const HTTP_REQUESTS_LIMITED_TOTAL: &str = "vigil_http_requests_limited_total";

/// `[http]` limits (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// CMDB exports streaming at once; past it, 429.
    pub max_exports: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 1024,
            max_connections_per_address: 256,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_exports: 4,
        }
    }
}

/// The listener's metrics (module docs), registered on the collector's registry.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    open: IntGauge,
    refused: IntCounterVec,
    timeouts: IntCounterVec,
    panics: IntCounter,
    limited: IntCounterVec,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> Result<HttpMetrics, prometheus::Error> {
        let open = IntGauge::new(HTTP_CONNECTIONS, "Open HTTP connections.")?;
        let refused = IntCounterVec::new(
            Opts::new(
                HTTP_CONNECTIONS_REFUSED_TOTAL,
                "HTTP connections closed at once because a connection cap was reached, by cap.",
            ),
            &["reason"],
        )?;
        let timeouts = IntCounterVec::new(
            Opts::new(
                HTTP_TIMEOUTS_TOTAL,
                "HTTP connections closed for a timeout: header (a request header too slow) or \
                 idle (no byte either way, including a client that stopped reading).",
            ),
            &["kind"],
        )?;
        let panics = IntCounter::new(
            HTTP_PANICS_TOTAL,
            "HTTP handlers that panicked (each answered 500).",
        )?;
        let limited = IntCounterVec::new(
            Opts::new(
                HTTP_REQUESTS_LIMITED_TOTAL,
                "Requests answered 429 because too many of their kind were running, by endpoint.",
            ),
            &["endpoint"],
        )?;
        for r in [refused::GLOBAL, refused::PER_ADDRESS] {
            refused.with_label_values(&[r]);
        }
        for k in ["header", "idle"] {
            timeouts.with_label_values(&[k]);
        }
        limited.with_label_values(&["cmdb_export"]);
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(timeouts.clone()))?;
        registry.register(Box::new(panics.clone()))?;
        registry.register(Box::new(limited.clone()))?;
        Ok(HttpMetrics {
            open,
            refused,
            timeouts,
            panics,
            limited,
        })
    }

    /// Metrics on a registry of their own (unit tests, tools).
    pub fn unregistered() -> HttpMetrics {
        HttpMetrics::new(&Registry::new()).expect("fresh registry")
    }

    /// Counts a 429 of `endpoint` (a fixed name).
    pub fn limited(&self, endpoint: &'static str) {
        self.limited.with_label_values(&[endpoint]).inc();
    }
}

/// Values of `vigil_http_connections_refused_total{reason}`.
mod refused {
    pub const GLOBAL: &str = "max_connections";
    pub const PER_ADDRESS: &str = "max_connections_per_address";
}

/// Open connections, in all and per address.
#[derive(Debug, Default)]
struct Slots {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// One open connection's place in [`Slots`]; freed on drop.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    ip: IpAddr,
    open: IntGauge,
}

impl Slot {
    fn take(
        slots: &Arc<Mutex<Slots>>,
        ip: IpAddr,
        limits: &HttpLimits,
        metrics: &HttpMetrics,
    ) -> Option<Slot> {
        let mut s = slots.lock().unwrap_or_else(|e| e.into_inner());
        let mine = s.per_address.get(&ip).copied().unwrap_or(0);
        let refused = if s.total >= limits.max_connections {
            refused::GLOBAL
        } else if mine >= limits.max_connections_per_address {
            refused::PER_ADDRESS
        } else {
            s.total += 1;
            *s.per_address.entry(ip).or_insert(0) += 1;
            metrics.open.inc();
            return Some(Slot {
                slots: slots.clone(),
                ip,
                open: metrics.open.clone(),
            });
        };
        metrics.refused.with_label_values(&[refused]).inc();
        None
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_address.remove(&self.ip);
            }
        }
        self.open.dec();
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves; then closes idle
/// connections at once and gives requests in flight [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: HttpMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_tls(listener, router, limits, metrics, None, shutdown).await
}

/// Reads a PEM certificate chain and its private key into a TLS acceptor for the listener
/// (TLS 1.2 and 1.3, ring, HTTP/1.1).
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// [`serve`], over TLS when `tls` is given: the handshake happens on the connection's own task,
/// within `header_timeout` (a client that never finishes it holds only its own slot).
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: HttpMetrics,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = router.layer(axum::middleware::from_fn_with_state(
        metrics.clone(),
        catch_panic,
    ));
    let slots = Arc::new(Mutex::new(Slots::default()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut accept_errors = vigil_runtime::logging::LogEvery::new(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: say so now and then, and let the
                    // connections that exist finish instead of spinning.
                    if let Some(skipped) = accept_errors.ready() {
                        tracing::warn!(error = %e, skipped, "HTTP accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = Slot::take(&slots, peer.ip(), &limits, &metrics) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stream = IdleTimeout::new(stream, limits.idle_timeout);
        let inner = hyper_util::service::TowerToHyperService::new(router.clone());
        // Each request carries the client's address (the audit log's "from where").
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(super::audit::Peer(peer));
                hyper::service::Service::call(&inner, req)
            });
        let metrics = metrics.clone();
        // Counted by the graceful shutdown from here, whenever the task gets to serve.
        let (acceptor, builder, watcher) = (tls.clone(), builder.clone(), graceful.watcher());
        let handshake_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let served = match acceptor {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics.timeouts.with_label_values(&["header"]).inc();
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(tls), service))
                        .await
                }
            };
            if let Err(e) = served {
                note_connection_error(&e, peer, &metrics);
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("HTTP requests still running after {SHUTDOWN_GRACE:?}; stopping anyway");
        }
    }
    Ok(())
}

fn note_connection_error(e: &hyper::Error, peer: SocketAddr, metrics: &HttpMetrics) {
    use std::error::Error as _;
    if e.is_timeout() {
        metrics.timeouts.with_label_values(&["header"]).inc();
        tracing::debug!(%peer, "HTTP request header timed out");
        return;
    }
    let idle = e
        .source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(|io| io.get_ref().is_some_and(|i| i.is::<IdleTimedOut>()));
    if idle {
        metrics.timeouts.with_label_values(&["idle"]).inc();
        tracing::debug!(%peer, "HTTP connection idle too long");
    } else {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// Turns a handler's panic into a logged 500, so that neither the connection nor the route
/// goes down with it.
async fn catch_panic(
    axum::extract::State(metrics): axum::extract::State<HttpMetrics>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match CatchUnwind(Box::pin(next.run(req))).await {
        Ok(response) => response,
        Err(panic) => {
            metrics.panics.inc();
            tracing::error!(%method, path, panic = panic_message(&*panic), "HTTP handler panicked");
            ApiError::Internal("internal error".into()).into_response()
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// A future that returns its panic instead of unwinding through the caller.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// The error an [`IdleTimeout`] stream fails with.
#[derive(Debug, thiserror::Error)]
#[error("no byte moved either way for the idle timeout")]
struct IdleTimedOut;

/// A TCP stream that fails once no byte has moved either way for `idle` while it waits: an
/// idle keep-alive connection and a stalled write (a client that stopped reading) alike.
struct IdleTimeout {
    stream: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleTimeout {
    fn new(stream: TcpStream, idle: Duration) -> IdleTimeout {
        IdleTimeout {
            stream,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn progressed(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// A write's outcome: progress resets the deadline; a `Pending` past it is an error.
    fn written(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.check(cx).map(Err),
        }
    }

    /// After a `Pending`: an error once the deadline has passed (the timer wakes the task).
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, IdleTimedOut)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for IdleTimeout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.written(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.written(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.check(cx).map(Err),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
