//! The one INFO event a connection emits when it ends, inside the request's span.
//! Its own test binary: it installs a global subscriber to capture what spawned tasks log.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use common::{close_payload, serve, within, RawClient};
use tower_http::trace::TraceLayer;
use tower_websocket::{WebSocket, WebSocketLayer};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

async fn echo(mut ws: WebSocket) {
    while let Some(msg) = ws.recv().await {
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}

#[tokio::test]
async fn close_is_logged_once_in_the_request_span() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .init();

    let app = Router::new()
        .layer(WebSocketLayer::new(echo).protocols(["chat"]))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &http::Request<_>| {
            tracing::info_span!("ws_request", request_id = %req.headers()["x-request-id"].to_str().unwrap())
        }));
    let addr = serve(app).await;

    let mut raw = RawClient::handshake(
        addr,
        "/chat/room?x=1",
        "Sec-WebSocket-Protocol: chat\r\nX-Request-Id: req-42\r\n",
    )
    .await
    .0;
    raw.send_frame(true, 0x1, b"hello").await;
    raw.send_frame(true, 0x2, &[1, 2, 3]).await;
    assert_eq!(raw.read_frame().await.unwrap().payload, b"hello");
    assert_eq!(raw.read_frame().await.unwrap().payload, [1, 2, 3]);
    raw.send_frame(true, 0x8, &close_payload(4001, b"bye"))
        .await;
    assert_eq!(raw.expect_close().await.close_code(), 4001);
    raw.expect_eof().await;

    let lines = within("the close log", async {
        loop {
            let lines = captured.lines_with("WebSocket connection closed");
            if !lines.is_empty() {
                return lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(line.contains(" INFO "), "{line}");
    for field in [
        "ws_request{request_id=req-42}",
        "method=GET",
        "path=/chat/room",
        "peer=\"127.0.0.1:",
        "status=101",
        "protocol=\"chat\"",
        "duration_ms=",
        "messages_in=2",
        "bytes_in=8",
        "messages_out=2",
        "bytes_out=8",
        "close_code=4001",
        "close_reason=\"bye\"",
        "closed_by=\"client\"",
    ] {
        assert!(line.contains(field), "missing {field} in {line}");
    }
}
