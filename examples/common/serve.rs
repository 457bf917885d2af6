//! How the examples listen and serve: what `axum::serve` does, plus the two settings a server
//! on the internet needs and `axum::serve` leaves out (docs/limits.md, "Serving").
//!
//! - A listen backlog of [`BACKLOG`]: tokio's `TcpListener::bind` asks for 128, and a burst of
//!   more connects than that waits for the peers' SYN retransmits (1 s, then 3 s).
//! - A header read timeout ([`HEADER_READ_TIMEOUT`]): hyper times out a request head only when
//!   it has a timer, and `axum::serve` gives it none, so a client that sends its head one byte
//!   at a time (slowloris) holds its socket forever. The layer only ever sees complete
//!   requests: this is the server's job.
//!
//! HTTP/1.1 and h2c (with RFC 8441 extended CONNECT) are served, every request carries axum's
//! `ConnectInfo<SocketAddr>`, and on `signal` the server stops accepting and lets open HTTP
//! requests finish (upgraded WebSockets are no longer HTTP connections: the layer's
//! `WebSocketHandle` closes those).

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tower::ServiceExt;

/// The listen backlog: connects the kernel holds before the server accepts them.
pub(crate) const BACKLOG: u32 = 1024;

/// How long a client may take to send a whole request head (the WebSocket handshake's).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens on `addr` (`host:port`) with a backlog of [`BACKLOG`].
pub(crate) async fn bind(addr: &str) -> TcpListener {
    let resolved = tokio::net::lookup_host(addr)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {addr}"));
    let socket = if resolved.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .expect("a TCP socket");
    // A restarted server can listen again at once, while its old connections wait out
    // TIME_WAIT.
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(resolved)
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    socket
        .listen(BACKLOG)
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"))
}

/// Serves `app` on `listener` until `signal` completes, with [`HEADER_READ_TIMEOUT`].
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    signal: impl Future<Output = ()> + Send + 'static,
) {
    serve_with(listener, app, signal, HEADER_READ_TIMEOUT).await;
}

/// [`serve`] with another header read timeout.
pub(crate) async fn serve_with(
    listener: TcpListener,
    app: Router,
    signal: impl Future<Output = ()> + Send + 'static,
    header_read_timeout: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    let mut signal = std::pin::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener itself is fine; wait a moment instead of spinning.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = signal.as_mut() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app
            .clone()
            .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(app))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection from {peer} ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
