//! The seed's hello world: every WebSocket gets "hello world", then the socket closes.
//!
//! ```text
//! cargo run --example hello   # ws://127.0.0.1:3000/ on any path
//! ```

use axum::{response::Html, routing::get, Router};
use tower_websocket::{WebSocket, WebSocketLayer};

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
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    tracing::info!("hello server on http://{addr}");
    axum::serve(listener, app).await.expect("server error");
}
