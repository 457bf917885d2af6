//! Protocol hardening against real sockets: raw-frame probes that Autobahn does not cover, and
//! one test for each limit, timeout and policy and for each default.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use common::{close_payload, encode_frame, serve, within, RawClient};
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, StatusCode};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as T;
use tower_websocket::handshake::Refusal;
use tower_websocket::origin::OriginPolicy;
use tower_websocket::protocol::Subprotocols;
use tower_websocket::{Error, Message, WebSocket, WebSocketLayer};

async fn echo(mut ws: WebSocket) {
    while let Some(msg) = ws.recv().await {
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}

async fn server(layer: WebSocketLayer) -> SocketAddr {
    serve(Router::new().layer(layer)).await
}

/// A server whose handler reports what `recv` returned until `None`.
async fn reporting_server(
    configure: impl FnOnce(WebSocketLayer) -> WebSocketLayer,
) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<Option<Message>>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let mut seen = Vec::new();
            loop {
                let msg = ws.recv().await;
                let end = msg.is_none();
                seen.push(msg);
                if end {
                    break;
                }
            }
            let _ = tx.send(seen);
        }
    });
    (server(configure(layer)).await, rx)
}

const MASK: Option<[u8; 4]> = Some([9, 8, 7, 6]);

#[tokio::test]
async fn raw_probes_get_the_right_close_code_then_tcp_ends_and_recv_is_none() {
    let mut too_long_close = close_payload(1000, b"");
    too_long_close.resize(126, b'a');
    let probes: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "unmasked frame",
            encode_frame(true, 0, 0x1, None, b"hi"),
            1002,
        ),
        (
            "RSV1 without extension",
            encode_frame(true, 0b100, 0x1, MASK, b"hi"),
            1002,
        ),
        ("RSV2", encode_frame(true, 0b010, 0x2, MASK, b"hi"), 1002),
        (
            "RSV3 on a ping",
            encode_frame(true, 0b001, 0x9, MASK, b""),
            1002,
        ),
        (
            "close of 126 bytes",
            encode_frame(true, 0, 0x8, MASK, &too_long_close),
            1002,
        ),
        (
            "pong of 126 bytes",
            encode_frame(true, 0, 0xA, MASK, &[0; 126]),
            1002,
        ),
        (
            "ping of 126 bytes",
            encode_frame(true, 0, 0x9, MASK, &[0; 126]),
            1002,
        ),
        (
            "close code 1005",
            encode_frame(true, 0, 0x8, MASK, &close_payload(1005, b"")),
            1002,
        ),
        (
            "close code 1006",
            encode_frame(true, 0, 0x8, MASK, &close_payload(1006, b"")),
            1002,
        ),
        (
            "close code 1015",
            encode_frame(true, 0, 0x8, MASK, &close_payload(1015, b"")),
            1002,
        ),
        (
            "close code 999",
            encode_frame(true, 0, 0x8, MASK, &close_payload(999, b"")),
            1002,
        ),
        (
            "close code 5000",
            encode_frame(true, 0, 0x8, MASK, &close_payload(5000, b"")),
            1002,
        ),
        (
            "one-byte close",
            encode_frame(true, 0, 0x8, MASK, &[3]),
            1002,
        ),
        (
            "close reason not UTF-8",
            encode_frame(true, 0, 0x8, MASK, &close_payload(1000, &[0xc3, 0x28])),
            1007,
        ),
        (
            "continuation without a start",
            encode_frame(true, 0, 0x0, MASK, b"x"),
            1002,
        ),
        (
            "fragmented ping",
            encode_frame(false, 0, 0x9, MASK, b""),
            1002,
        ),
        (
            "reserved data opcode 3",
            encode_frame(true, 0, 0x3, MASK, b""),
            1002,
        ),
        (
            "reserved control opcode 0xB",
            encode_frame(true, 0, 0xB, MASK, b""),
            1002,
        ),
        (
            "text not UTF-8",
            encode_frame(true, 0, 0x1, MASK, &[0xed, 0xa0, 0x80]),
            1007,
        ),
        (
            "new message inside a fragmented one",
            {
                let mut b = encode_frame(false, 0, 0x1, MASK, b"a");
                b.extend(encode_frame(true, 0, 0x2, MASK, b"b"));
                b
            },
            1002,
        ),
    ];
    let (addr, mut reports) = reporting_server(|l| l).await;
    for (name, bytes, expected) in probes {
        let mut raw = RawClient::connect(addr, "/").await;
        raw.send_raw(&bytes).await;
        let close = raw.expect_close().await;
        assert_eq!(close.close_code(), expected, "{name}");
        raw.expect_eof().await;
        let seen = within("the handler's report", reports.recv())
            .await
            .unwrap();
        assert_eq!(seen, vec![None], "{name}: the handler saw {seen:?}");
    }
}

#[tokio::test]
async fn peer_that_stops_answering_pings_is_closed_with_1011() {
    let (addr, mut reports) = reporting_server(|l| {
        l.ping_interval(Some(Duration::from_millis(100)))
            .ping_timeout(Duration::from_millis(200))
    })
    .await;
    let mut raw = RawClient::connect(addr, "/").await;
    // The raw client reads but never answers.
    let ping = raw.read_frame().await.unwrap();
    assert_eq!(ping.opcode, 0x9);
    let close = raw.expect_close().await;
    assert_eq!(close.close_code(), 1011);
    assert_eq!(&close.payload[2..], b"keepalive ping timeout");
    raw.expect_eof().await;
    assert_eq!(
        within("the handler", reports.recv()).await.unwrap(),
        vec![None]
    );
}

#[tokio::test]
async fn peer_that_answers_pings_stays_and_rtt_is_known() {
    let addr = server(
        WebSocketLayer::new(|ws: WebSocket| async move {
            let started = Instant::now();
            while ws.rtt().is_none() && started.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = ws
                .send(format!(
                    "{:?}",
                    ws.rtt().map(|r| r < Duration::from_secs(1))
                ))
                .await;
        })
        .ping_interval(Some(Duration::from_millis(50)))
        .ping_timeout(Duration::from_millis(500)),
    )
    .await;
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    // tungstenite answers pings while it reads (and shows them to its reader).
    let mut pings = 0;
    let msg = loop {
        match within("the rtt report", client.next())
            .await
            .unwrap()
            .unwrap()
        {
            T::Ping(_) => pings += 1,
            other => break other,
        }
    };
    assert_eq!(msg, T::text("Some(true)"));
    assert!(pings >= 1);
}

#[tokio::test]
async fn idle_connection_is_closed_with_1001_and_traffic_keeps_it_open() {
    let addr = server(
        WebSocketLayer::new(echo)
            .ping_interval(None)
            .idle_timeout(Some(Duration::from_millis(300))),
    )
    .await;
    let mut raw = RawClient::connect(addr, "/").await;
    // Messages every 100 ms for 900 ms: three idle timeouts' worth, and still open.
    for i in 0..9 {
        raw.send_frame(true, 0x1, format!("{i}").as_bytes()).await;
        let echo = raw.read_frame().await.unwrap();
        assert_eq!(echo.opcode, 0x1, "closed while busy: {echo:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quiet = Instant::now();
    let close = raw.expect_close().await;
    assert_eq!(close.close_code(), 1001);
    assert_eq!(&close.payload[2..], b"idle timeout");
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test]
async fn peer_that_never_reads_is_dropped_after_write_timeout() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = server(
        WebSocketLayer::new(move |mut ws: WebSocket| {
            let tx = tx.clone();
            async move {
                let chunk = Message::binary(vec![0u8; 256 * 1024]);
                let started = Instant::now();
                let mut sent = 0usize;
                // Fill the peer's buffers; the writes stall, then time out.
                let error = loop {
                    match ws.send(chunk.clone()).await {
                        Ok(()) => sent += 1,
                        Err(e) => break Error::from(e),
                    }
                    if started.elapsed() > Duration::from_secs(8) {
                        break Error::InvalidCloseCode(0);
                    }
                };
                let end = ws.recv().await;
                let _ = tx.send((error, end, sent, started.elapsed()));
            }
        })
        .ping_interval(None)
        .write_timeout(Some(Duration::from_millis(300))),
    )
    .await;
    let _raw = RawClient::connect(addr, "/").await; // connected, never reads
    let (error, end, sent, elapsed) = within("the handler", rx.recv()).await.unwrap();
    assert_eq!(error, Error::Closed, "after {sent} sends in {elapsed:?}");
    assert_eq!(end, None);
    assert!(
        sent > 4,
        "the peer's buffers should have taken a few MiB first ({sent})"
    );
}

#[tokio::test]
async fn default_frame_limit_is_16_mib() {
    let addr = server(WebSocketLayer::new(echo)).await;
    let mut raw = RawClient::connect(addr, "/").await;
    // Announce 16 MiB + 1 and send nothing more: the header alone gets the 1009.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&((16u64 << 20) + 1).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    raw.send_raw(&header).await;
    assert_eq!(raw.expect_close().await.close_code(), 1009);
}

// ---- the closing handshake's budget ----

/// The close timeout these tests set: long enough that scheduling noise is small beside it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How far past the close timeout a connection may end: room for scheduling on a loaded
/// machine, and still far below twice the close timeout that a second wait would take.
const OVERSHOOT: Duration = Duration::from_millis(500);

#[tokio::test]
async fn close_the_peer_never_answers_ends_tcp_and_frees_the_slot_within_one_close_timeout() {
    // The handler returns at once: the server closes with 1000.
    let layer = WebSocketLayer::new(|_ws: WebSocket| async {})
        .ping_interval(None)
        .close_timeout(CLOSE_TIMEOUT)
        .max_connections(1);
    let counter = layer.clone();
    let addr = server(layer).await;
    let mut raw = RawClient::connect(addr, "/").await;
    // The client reads the close frame and neither answers it nor ends TCP.
    assert_eq!(raw.expect_close().await.close_code(), 1000);
    let closed = Instant::now();
    raw.expect_eof().await;
    let fin = closed.elapsed();
    within("the slot to come back", async {
        while counter.live_connections() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let freed = closed.elapsed();
    eprintln!("close timeout {CLOSE_TIMEOUT:?}: FIN after {fin:?}, slot free after {freed:?}");
    // The server waited for the answer (the budget runs from when it queued the close frame,
    // a moment before the client read it)...
    assert!(fin >= CLOSE_TIMEOUT / 2, "FIN after {fin:?}");
    // ...and then ended everything within the same budget: no second wait for the FIN.
    assert!(
        freed < CLOSE_TIMEOUT + OVERSHOOT,
        "slot freed after {freed:?}"
    );
    let _next = RawClient::connect(addr, "/").await;
}

// ---- subprotocols ----

#[tokio::test]
async fn required_subprotocol_refuses_with_400_and_a_clear_body() {
    let addr = server(
        WebSocketLayer::new(echo).subprotocols(Subprotocols::list(["mqtt", "stomp"]).required()),
    )
    .await;
    let (status, _, body) = RawClient::refused(addr, "/", "Sec-WebSocket-Protocol: wamp\r\n").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("none of the offered subprotocols (wamp)"),
        "{body}"
    );
    assert!(body.contains("mqtt, stomp"), "{body}");
    let (status, _, body) = RawClient::refused(addr, "/", "").await;
    assert_eq!(status, 400);
    assert!(body.contains("a subprotocol is required"), "{body}");
    let (_raw, head) =
        RawClient::handshake(addr, "/", "Sec-WebSocket-Protocol: wamp, stomp\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-protocol: stomp"), "{head}");
}

#[tokio::test]
async fn selector_chooses_from_offer_and_request() {
    let addr = server(
        WebSocketLayer::new(|ws: WebSocket| async move {
            let _ = ws.send(ws.protocol().unwrap_or("none").to_string()).await;
        })
        .subprotocols(Subprotocols::select(|offered, req| {
            let want = if req.uri.path() == "/v2" {
                "chat.v2"
            } else {
                "chat.v1"
            };
            offered.contains(&want).then(|| want.to_string())
        })),
    )
    .await;
    for (path, expected) in [("/v2", "chat.v2"), ("/v1", "chat.v1")] {
        let (mut raw, head) =
            RawClient::handshake(addr, path, "Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n").await;
        assert!(
            head.contains(&format!("sec-websocket-protocol: {expected}")),
            "{head}"
        );
        assert_eq!(raw.read_frame().await.unwrap().payload, expected.as_bytes());
    }
}

// ---- origin policy ----

#[tokio::test]
async fn default_origin_policy_refuses_cross_site_with_403_and_accepts_the_rest() {
    let addr = server(WebSocketLayer::new(echo)).await;
    let (status, _, body) = RawClient::refused(addr, "/", "Origin: http://evil.example\r\n").await;
    assert_eq!(status, 403);
    assert!(
        body.contains("origin \"http://evil.example\" may not open WebSockets here"),
        "{body}"
    );
    // The browser's own word wins where it gives it.
    let (status, _, _) = RawClient::refused(
        addr,
        "/",
        &format!("Origin: http://{addr}\r\nSec-Fetch-Site: cross-site\r\n"),
    )
    .await;
    assert_eq!(status, 403);
    for extra in [
        String::new(),                        // not a browser
        format!("Origin: http://{addr}\r\n"), // same origin
        "Origin: https://app.example\r\nSec-Fetch-Site: same-site\r\n".to_string(),
    ] {
        let (_raw, head) = RawClient::handshake(addr, "/", &extra).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{extra:?}: {head}");
    }
}

#[tokio::test]
async fn origin_list_and_any() {
    let addr = server(
        WebSocketLayer::new(echo).origin_policy(OriginPolicy::list(["https://app.example"])),
    )
    .await;
    let (_raw, head) = RawClient::handshake(addr, "/", "Origin: https://app.example\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (status, _, _) = RawClient::refused(addr, "/", &format!("Origin: http://{addr}\r\n")).await;
    assert_eq!(status, 403);
    let addr = server(WebSocketLayer::new(echo).origin_policy(OriginPolicy::any())).await;
    let (_raw, head) = RawClient::handshake(addr, "/", "Origin: http://evil.example\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

// ---- connection limit ----

#[tokio::test]
async fn connections_over_the_limit_get_503_and_places_come_back() {
    let layer = WebSocketLayer::new(echo).max_connections(2);
    let counter = layer.clone();
    let addr = server(layer).await;
    let mut first = RawClient::connect(addr, "/").await;
    let _second = RawClient::connect(addr, "/").await;
    assert_eq!(counter.live_connections(), 2);
    let (status, _, body) = RawClient::refused(addr, "/", "").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("limit of 2 live WebSocket connections"),
        "{body}"
    );
    // One leaves; its place is free again.
    first.send_frame(true, 0x8, &close_payload(1000, b"")).await;
    first.expect_close().await;
    first.expect_eof().await;
    within("the place to come back", async {
        while counter.live_connections() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let _third = RawClient::connect(addr, "/").await;
    assert_eq!(counter.live_connections(), 2);
}

// ---- the before-upgrade hook ----

#[derive(Clone)]
struct User(String);

#[tokio::test]
async fn before_upgrade_hook_can_refuse_add_headers_and_extensions() {
    let addr = server(
        WebSocketLayer::new(|ws: WebSocket| async move {
            let user = ws
                .extension::<User>()
                .map(|u| u.0.clone())
                .unwrap_or_default();
            let _ = ws.send(format!("hello {user}")).await;
        })
        .before_upgrade(|req, response_headers| {
            let user = req
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Refusal::new(StatusCode::UNAUTHORIZED, "log in first")
                        .header(header::WWW_AUTHENTICATE, "Bearer")
                })?
                .to_string();
            req.extensions.insert(User(user));
            response_headers.insert(header::SET_COOKIE, HeaderValue::from_static("seen=1"));
            Ok(())
        }),
    )
    .await;
    let (status, head, body) = RawClient::refused(addr, "/", "").await;
    assert_eq!(status, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    assert_eq!(body, "log in first");

    let (mut raw, head) = RawClient::handshake(addr, "/", "Authorization: Bearer alice\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("set-cookie: seen=1"), "{head}");
    assert_eq!(raw.read_frame().await.unwrap().payload, b"hello alice");
}

#[tokio::test]
async fn tungstenite_client_passes_every_default() {
    // What a user gets out of the box: a real client with no Origin, echo, close.
    let addr = server(WebSocketLayer::new(echo)).await;
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    client.send(T::text("defaults")).await.unwrap();
    assert_eq!(
        within("echo", client.next()).await.unwrap().unwrap(),
        T::text("defaults")
    );
    client.close(None).await.unwrap();
}
