//! The main example: an echo server a person can open in a browser.
//!
//! `GET /` serves a page that opens a WebSocket and shows what comes back; a WebSocket upgrade
//! on any path echoes every text and binary message unchanged; any other request reaches the
//! router, so an unknown path gets its 404.
//!
//! ```text
//! cargo run --example echo            # then open http://127.0.0.1:3000
//! ADDR=127.0.0.1:9001 cargo run --example echo
//! WS_DEFLATE=1 cargo run --example echo   # with permessage-deflate
//! WS_LEGACY=1 cargo run --features hixie76 --example echo   # hixie-76/75 clients too
//! ```

use std::time::Duration;

use axum::{response::Html, routing::get, Router};
use tower_websocket::layer::DEFAULT_CLOSE_TIMEOUT;
use tower_websocket::{WebSocket, WebSocketLayer};

#[path = "common/serve.rs"]
mod serve;
#[path = "common/shutdown.rs"]
mod shutdown;

async fn echo(mut ws: WebSocket) {
    while let Some(msg) = ws.recv().await {
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    // Every default is kept (origin policy included): its 16 MiB message limit is what the
    // Autobahn limits cases need. WS_DEFLATE=1 turns permessage-deflate on, and nothing else.
    let mut layer = WebSocketLayer::new(echo);
    if std::env::var("WS_DEFLATE").is_ok_and(|v| v == "1") {
        layer = layer.deflate(tower_websocket::deflate::DeflateConfig::new());
        tracing::info!("permessage-deflate on");
    }
    // WS_LEGACY=1 also answers the pre-RFC drafts hixie-76 and hixie-75 (the page keeps
    // speaking RFC 6455).
    if std::env::var("WS_LEGACY").is_ok_and(|v| v == "1") {
        #[cfg(feature = "hixie76")]
        {
            layer = layer.legacy_drafts(true);
            tracing::info!("legacy drafts hixie-76 and hixie-75 on");
        }
        #[cfg(not(feature = "hixie76"))]
        tracing::warn!("WS_LEGACY=1 needs the hixie76 feature: legacy drafts stay off");
    }
    let sockets = layer.handle();
    let app = Router::new()
        .route("/", get(|| async { Html(include_str!("pages/echo.html")) }))
        .layer(layer);

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_string());
    let listener = serve::bind(&addr).await;
    tracing::info!(
        "echo server on http://{}",
        listener.local_addr().expect("bound address")
    );
    let signal = async {
        shutdown::signal().await;
        tracing::info!("shutting down: closing WebSockets");
    };
    let grace = DEFAULT_CLOSE_TIMEOUT + Duration::from_secs(1);
    let (signal, report) = sockets.shutdown_on(signal, grace);
    // On Ctrl-C or SIGTERM: the server stops accepting once this future completes, but it
    // does not know about upgraded sockets, so they are closed (1001) and waited for first.
    // Each closing handshake takes at most the close timeout; a second more is for the
    // handlers.
    serve::serve(listener, app, signal).await;
    if let Some(report) = report.await {
        tracing::info!(?report, "WebSockets closed");
    }
}
