//! The seed's hello world: every WebSocket gets "hello world", then the socket closes.
//!
//! ```text
//! cargo run --example hello   # ws://127.0.0.1:3000/ on any path
//! ```

use axum::{response::Html, routing::get, Router};
use tower_websocket::{WebSocket, WebSocketLayer};

#[path = "common/serve.rs"]
mod serve;

async fn hello(ws: WebSocket) {
    let _ = ws.send("hello world").await;
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                Html(concat!(
                    "<!doctype html><meta charset=utf-8><title>hello</title><p id=out>…</p><script>",
                    "const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/hello');",
                    "ws.onmessage = (e) => document.getElementById('out').textContent = e.data;",
                    "</script>"
                ))
            }),
        )
        .layer(WebSocketLayer::new(hello));
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_string());
    let listener = serve::bind(&addr).await;
    tracing::info!("hello server on http://{addr}");
    serve::serve(listener, app, std::future::pending()).await;
}
