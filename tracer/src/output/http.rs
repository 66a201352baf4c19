//! The agent's HTTP endpoint (`GET /metrics`, `/healthz`, `/history`), served on a thread and
//! runtime of its own: whatever its clients do — hold connections, send huge headers, use up
//! the descriptors — the capture thread keeps draining the kernel's buffers. Connections are
//! capped, headers bounded in size and time, accept errors backed off, and `/healthz` says
//! whether the capture is healthy rather than only that this thread runs.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{metrics::Metrics, web_config::WebConfig};

/// The agent's recent history as JSON (`GET /history`, read by `tracer diagnose --since`),
/// rebuilt by the agent when it changes.
pub type History = Arc<std::sync::Mutex<String>>;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// A request's headers must arrive within this...
const HEADER_TIME: Duration = Duration::from_secs(5);
/// ...and fit in this (hyper's smallest read buffer).
const HEADER_BYTES: usize = 8 * 1024;
/// A connection lives at most this long, requests and keep-alive included.
const CONNECTION_TIME: Duration = Duration::from_secs(30);
/// After a failed accept (descriptors used up), wait this long before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);
/// The capture is stalled when it has not drained the kernel's buffers for this long.
const STALLED_AFTER: Duration = Duration::from_secs(10);

/// What `/healthz` reports: the capture thread's last drain, and whether the arrival hook is
/// attached.
#[derive(Debug)]
pub struct Health {
    /// Milliseconds since the epoch of the capture thread's last drain.
    drained_ms: AtomicU64,
    /// The arrival hook is detached (its interface went away).
    detached: AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Default for Health {
    fn default() -> Self {
        Self {
            drained_ms: AtomicU64::new(now_ms()),
            detached: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// The capture thread drained its buffers just now.
    pub fn drained(&self) {
        self.drained_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn set_hook_attached(&self, attached: bool) {
        self.detached.store(!attached, Ordering::Relaxed);
    }

    /// `Ok` when healthy, else why not (one line).
    fn check(&self, now_ms: u64) -> Result<(), String> {
        let since = now_ms.saturating_sub(self.drained_ms.load(Ordering::Relaxed));
        if since >= STALLED_AFTER.as_millis() as u64 {
            return Err(format!(
                "capture stalled: the kernel's buffers were last drained {:.1} s ago",
                since as f64 / 1000.0
            ));
        }
        if self.detached.load(Ordering::Relaxed) {
            return Err(
                "arrival hook detached: the watched interface is gone (attached again when it comes back)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// What the endpoint serves and to whom.
#[derive(Clone)]
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    pub history: History,
    pub health: Arc<Health>,
    /// TLS and users (`--web.config.file`).
    pub web: Arc<WebConfig>,
    /// `/history` to clients beyond loopback (`--web.enable-history`): it names processes,
    /// containers, firewall chains and routes.
    pub history_beyond_loopback: bool,
}

async fn handle(
    e: Endpoint,
    peer: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    let path = req.uri().path();
    let guarded = matches!(path, "/metrics" | "/history");
    if guarded && req.method() == hyper::Method::GET && e.web.asks_password() {
        let header = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        let web = e.web.clone();
        // bcrypt takes tens of milliseconds: off this thread, which serves the others.
        let ok = tokio::task::spawn_blocking(move || web.authorized(header.as_deref()))
            .await
            .unwrap_or(false);
        if !ok {
            let resp = Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("content-type", text)
                .header("www-authenticate", "Basic realm=\"cf521-tracer\"")
                .body(Full::new(Bytes::from(
                    "a user and password are required (basic_auth_users in --web.config.file)\n",
                )))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
            return Ok(resp);
        }
    }
    let (status, ctype, body) = match (req.method().as_str(), path) {
        ("GET", "/history") if !e.history_beyond_loopback && !peer.ip().to_canonical().is_loopback() => (
            StatusCode::FORBIDDEN,
            text,
            "/history answers this host only: start the agent with --web.enable-history to serve it to others\n".to_string(),
        ),
        ("GET", "/history") => (
            StatusCode::OK,
            "application/json",
            e.history.lock().map(|h| h.clone()).unwrap_or_default(),
        ),
        ("GET", "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            e.metrics.render(),
        ),
        ("GET", "/healthz") => match e.health.check(now_ms()) {
            Ok(()) => (StatusCode::OK, text, "ok\n".to_string()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, text, format!("{why}\n")),
        },
        ("GET", _) => (
            StatusCode::NOT_FOUND,
            text,
            "not found: try /metrics, /healthz or /history\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            "GET only\n".to_string(),
        ),
    };
    let resp = Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(resp)
}

/// Binds now (so a busy port is a start-up error) and serves on a thread of its own.
pub fn serve(addr: SocketAddr, endpoint: Endpoint) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("cannot listen on {addr} for metrics: pick another --metrics-addr")
    })?;
    listener.set_nonblocking(true)?;
    // With port 0 the kernel picks one: say which, or nobody can scrape it.
    let bound = listener.local_addr().unwrap_or(addr);
    let scheme = if endpoint.web.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if addr.port() == 0 {
        tracing::warn!(addr = %bound, "metrics at {scheme}://{bound}/metrics (port 0 asked for: the kernel picked this one)");
    } else {
        tracing::info!(addr = %bound, "metrics at {scheme}://{bound}/metrics");
    }
    if !bound.ip().is_loopback() && endpoint.web.tls.is_none() && !endpoint.web.asks_password() {
        tracing::warn!(addr = %bound, "the metrics endpoint listens beyond this host without TLS or a password: anyone who reaches {bound} reads it (--web.config.file sets both)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for the metrics endpoint")?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || runtime.block_on(accept_loop(listener, endpoint)))
        .context("a thread for the metrics endpoint")?;
    Ok(())
}

async fn accept_loop(listener: std::net::TcpListener, endpoint: Endpoint) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        tracing::warn!("the metrics endpoint cannot run");
        return;
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let tls = endpoint
        .web
        .tls
        .clone()
        .map(tokio_rustls::TlsAcceptor::from);
    let mut warned = false;
    loop {
        // At the cap, stop accepting: further clients wait in the kernel's backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE/ENFILE/ENOMEM: retrying at once would spin.
                if !warned {
                    tracing::warn!(
                        "the metrics endpoint cannot accept connections ({e}): backing off"
                    );
                    warned = true;
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        warned = false;
        let (endpoint, tls) = (endpoint.clone(), tls.clone());
        tokio::spawn(async move {
            let served = async {
                match tls {
                    // The handshake within the time headers get: a client that opens and
                    // says nothing holds a slot no longer than one that sends no headers.
                    Some(acceptor) => {
                        if let Ok(Ok(stream)) =
                            tokio::time::timeout(HEADER_TIME, acceptor.accept(stream)).await
                        {
                            serve_connection(stream, peer, endpoint).await;
                        }
                    }
                    None => serve_connection(stream, peer, endpoint).await,
                }
            };
            let _ = tokio::time::timeout(CONNECTION_TIME, served).await;
            drop(slot);
        });
    }
}

async fn serve_connection<I>(io: I, peer: SocketAddr, endpoint: Endpoint)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(endpoint.clone(), peer, req));
    let _ = http1::Builder::new()
        .header_read_timeout(HEADER_TIME)
        .max_buf_size(HEADER_BYTES)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_the_capture_draining_and_the_hook_attached() {
        let h = Health::default();
        let now = now_ms();
        assert_eq!(h.check(now), Ok(()));
        let stalled = h.check(now + 12_000).unwrap_err();
        assert!(stalled.starts_with("capture stalled"), "{stalled}");
        h.set_hook_attached(false);
        assert!(h
            .check(now)
            .unwrap_err()
            .starts_with("arrival hook detached"));
        h.set_hook_attached(true);
        h.drained();
        assert_eq!(h.check(now_ms()), Ok(()));
    }
}
