//! The legacy drafts hixie-76 and hixie-75 end to end, over real TCP with a raw client that
//! writes exactly the bytes each test wants.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use common::{serve, within, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tower_websocket::{KeepHeaders, WebSocket, WebSocketLayer};

const KEY1: &str = "4 @1  46546xW%0l 1 5";
const KEY2: &str = "12998 5 Y3 1  .P00";
const KEY3: &[u8] = b"^n:ds[4U";
const ANSWER: &[u8] = b"8jKS'y:G*Co,Wxa-";

/// Says its version, then echoes; "close" closes, "binary" tries a binary send and reports
/// the error, "headers" names the request headers the socket kept. Tells the test when `recv` returned `None`.
fn layer(ended: mpsc::UnboundedSender<&'static str>) -> WebSocketLayer {
    WebSocketLayer::new(move |mut ws: WebSocket| {
        let ended = ended.clone();
        async move {
            let _ = ws.send(format!("version {}", ws.version())).await;
            while let Some(msg) = ws.recv().await {
                match msg.as_text() {
                    Some("close") => {
                        let _ = ws.close().await;
                    }
                    Some("binary") => {
                        let error = ws.send(vec![1u8, 2, 3]).await.unwrap_err();
                        let _ = ws.send(error.to_string()).await;
                    }
                    Some("headers") => {
                        let mut names: Vec<&str> =
                            ws.headers().keys().map(|n| n.as_str()).collect();
                        names.sort_unstable();
                        let _ = ws.send(names.join(",")).await;
                    }
                    _ => {
                        let _ = ws.send(msg).await;
                    }
                }
            }
            let _ = ended.send("recv returned None");
        }
    })
    .legacy_drafts(true)
    .close_timeout(Duration::from_secs(2))
}

async fn server(layer: WebSocketLayer) -> SocketAddr {
    serve(Router::new().layer(layer)).await
}

fn hixie76_head(addr: SocketAddr, extra: &str) -> String {
    format!(
        "GET /demo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\
         Origin: http://{addr}\r\nSec-WebSocket-Key1: {KEY1}\r\nSec-WebSocket-Key2: {KEY2}\r\n\
         {extra}\r\n"
    )
}

/// Reads up to the end of the response head; the head as text.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        let n = within("the response head", stream.read(&mut byte))
            .await
            .unwrap();
        assert_eq!(
            n,
            1,
            "EOF in the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A hixie-76 connection past its handshake (the challenge answer checked).
async fn connect76(addr: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = hixie76_head(addr, "").into_bytes();
    request.extend_from_slice(KEY3);
    stream.write_all(&request).await.unwrap();
    let head = read_head(&mut stream).await;
    let mut answer = [0u8; 16];
    within("the challenge answer", stream.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(&answer, ANSWER);
    (stream, head)
}

async fn expect_text(stream: &mut TcpStream, text: &str) {
    let mut want = vec![0x00];
    want.extend_from_slice(text.as_bytes());
    want.push(0xFF);
    let mut got = vec![0u8; want.len()];
    within("a text frame", stream.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

async fn expect_closing_frame_then_eof(stream: &mut TcpStream) {
    let mut got = [0u8; 2];
    within("the closing frame", stream.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, [0xFF, 0x00]);
    let mut rest = Vec::new();
    within("EOF", stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "after the closing frame: {rest:?}");
}

fn text_frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0x00];
    frame.extend_from_slice(text.as_bytes());
    frame.push(0xFF);
    frame
}

#[tokio::test]
async fn the_drafts_example_handshake_is_answered_end_to_end() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx)).await;
    let (mut stream, head) = connect76(addr).await;
    assert!(
        head.starts_with("HTTP/1.1 101 WebSocket Protocol Handshake\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("connection: upgrade\r\n"), "{head}");
    assert!(
        head.contains(&format!("sec-websocket-location: ws://{addr}/demo\r\n")),
        "{head}"
    );
    assert!(
        head.contains(&format!("sec-websocket-origin: http://{addr}\r\n")),
        "{head}"
    );
    expect_text(&mut stream, "version 76").await;
}

#[tokio::test]
async fn text_messages_are_echoed_and_several_in_one_segment_all_arrive() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx)).await;
    let (mut stream, _) = connect76(addr).await;
    expect_text(&mut stream, "version 76").await;
    let mut segment = text_frame("one");
    segment.extend(text_frame(""));
    segment.extend(text_frame("three ✓"));
    stream.write_all(&segment).await.unwrap();
    expect_text(&mut stream, "one").await;
    expect_text(&mut stream, "").await;
    expect_text(&mut stream, "three ✓").await;
}

#[tokio::test]
async fn a_message_split_over_many_segments_with_utf8_across_them_arrives_whole() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx)).await;
    let (mut stream, _) = connect76(addr).await;
    stream.set_nodelay(true).unwrap();
    expect_text(&mut stream, "version 76").await;
    let text = "é€😀 split ü";
    for byte in text_frame(text) {
        stream.write_all(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    expect_text(&mut stream, text).await;
}

#[tokio::test]
async fn the_peers_closing_frame_is_answered_and_recv_returns_none() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx)).await;
    let (mut stream, _) = connect76(addr).await;
    expect_text(&mut stream, "version 76").await;
    stream.write_all(&[0xFF, 0x00]).await.unwrap();
    expect_closing_frame_then_eof(&mut stream).await;
    assert_eq!(
        within("the handler", rx.recv()).await,
        Some("recv returned None")
    );
}

#[tokio::test]
async fn close_from_the_handler_sends_the_closing_frame() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx)).await;
    let (mut stream, _) = connect76(addr).await;
    expect_text(&mut stream, "version 76").await;
    stream.write_all(&text_frame("close")).await.unwrap();
    let mut got = [0u8; 2];
    within("the closing frame", stream.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, [0xFF, 0x00]);
    stream.write_all(&[0xFF, 0x00]).await.unwrap();
    let mut rest = Vec::new();
    within("EOF", stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(
        within("the handler", rx.recv()).await,
        Some("recv returned None")
    );
}

#[tokio::test]
async fn a_binary_send_fails_with_a_message_that_says_why() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx)).await;
    let (mut stream, _) = connect76(addr).await;
    expect_text(&mut stream, "version 76").await;
    stream.write_all(&text_frame("binary")).await.unwrap();
    expect_text(
        &mut stream,
        &tower_websocket::Error::BinaryOnLegacyDraft.to_string(),
    )
    .await;
    // The connection stays open.
    stream.write_all(&text_frame("still here")).await.unwrap();
    expect_text(&mut stream, "still here").await;
}

#[tokio::test]
async fn an_over_long_frame_closes_the_connection() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx).max_message_size(16)).await;
    let (mut stream, _) = connect76(addr).await;
    expect_text(&mut stream, "version 76").await;
    stream
        .write_all(&text_frame("seventeen bytes!!"))
        .await
        .unwrap();
    expect_closing_frame_then_eof(&mut stream).await;
}

#[tokio::test]
async fn a_frame_without_terminator_cannot_grow_past_the_limit() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx).max_message_size(1024)).await;
    let (mut stream, _) = connect76(addr).await;
    expect_text(&mut stream, "version 76").await;
    stream.write_all(&[0x00]).await.unwrap();
    // More than the limit, never a 0xFF: the server gives up once it holds the limit.
    let chunk = [b'a'; 512];
    for _ in 0..4 {
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    expect_closing_frame_then_eof(&mut stream).await;
}

#[tokio::test]
async fn a_length_prefixed_frame_is_skipped() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx)).await;
    let (mut stream, _) = connect76(addr).await;
    expect_text(&mut stream, "version 76").await;
    // Type 0x80, length 130 (0x81 0x02), payload bytes that look like frames.
    let mut wire = vec![0x80, 0x81, 0x02];
    wire.extend(std::iter::repeat_n(0xFFu8, 130));
    wire.extend(text_frame("after the skipped frame"));
    stream.write_all(&wire).await.unwrap();
    expect_text(&mut stream, "after the skipped frame").await;
}

#[tokio::test]
async fn a_socket_keeping_only_some_headers_still_answers_the_challenge_and_the_origin() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let keep = KeepHeaders::only([http::header::HOST]);
    let addr = server(layer(tx).keep_headers(keep)).await;
    // The keys and `Origin`, which the socket does not keep, still make the answer.
    let (mut stream, head) = connect76(addr).await;
    assert!(
        head.contains(&format!("sec-websocket-origin: http://{addr}\r\n")),
        "{head}"
    );
    expect_text(&mut stream, "version 76").await;
    stream.write_all(&text_frame("headers")).await.unwrap();
    expect_text(&mut stream, "host").await;
}

#[tokio::test]
async fn hixie75_is_served_without_keys() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx).protocols(["chat"])).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /old HTTP/1.1\r\nHost: {addr}\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\
         Origin: http://{addr}\r\nWebSocket-Protocol: chat\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(
        head.starts_with("HTTP/1.1 101 Web Socket Protocol Handshake\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("websocket-location: ws://{addr}/old\r\n")),
        "{head}"
    );
    assert!(head.contains("websocket-protocol: chat\r\n"), "{head}");
    expect_text(&mut stream, "version 75").await;
    stream.write_all(&text_frame("hello 75")).await.unwrap();
    expect_text(&mut stream, "hello 75").await;
}

#[tokio::test]
async fn the_subprotocol_is_echoed_as_the_draft_says() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx).protocols(["chat"])).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = hixie76_head(addr, "Sec-WebSocket-Protocol: chat\r\n").into_bytes();
    request.extend_from_slice(KEY3);
    stream.write_all(&request).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.contains("sec-websocket-protocol: chat\r\n"), "{head}");
}

/// The status and body of a refused handshake.
async fn refused(addr: SocketAddr, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    // The body is short: read until the head and the body are in.
    loop {
        let n = within("the refusal", stream.read(&mut buf)).await.unwrap();
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if n == 0 || text.contains("\r\n\r\n") && text.trim_end().ends_with(')') {
            break;
        }
        if text.contains("\r\n\r\n") && text.ends_with('\n') && !text.ends_with("\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[tokio::test]
async fn bad_handshakes_get_400_with_what_is_wrong() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx)).await;
    let cases = [
        (
            hixie76_head(addr, "").replace(KEY1, "12345"),
            "Sec-WebSocket-Key1 has no spaces",
        ),
        (
            hixie76_head(addr, "").replace(KEY2, "1 2 3"),
            "Sec-WebSocket-Key2 has a number that is not a multiple of its count of spaces",
        ),
        (
            hixie76_head(
                addr,
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            ),
            "mixes RFC 6455 headers",
        ),
    ];
    for (request, why) in cases {
        let (status, body) = refused(addr, &request).await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{why}");
        assert!(body.contains(why), "{body:?} should say {why:?}");
    }
}

#[tokio::test]
async fn without_the_setting_hixie76_keeps_its_426() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx).legacy_drafts(false)).await;
    let (status, body) = refused(addr, &hixie76_head(addr, "")).await;
    assert_eq!(status, "HTTP/1.1 426 Upgrade Required");
    assert!(body.contains("hixie-76"), "{body}");
}

#[tokio::test]
async fn missing_key_bytes_close_the_connection_without_an_answer() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx).close_timeout(Duration::from_millis(300))).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The head only: the 8 key bytes never come.
    stream
        .write_all(hixie76_head(addr, "").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut rest = Vec::new();
    within("EOF", stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "no challenge answer: {rest:?}");
}

#[tokio::test]
async fn shutdown_sends_the_closing_frame_and_metrics_count_the_messages() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let layer = layer(tx);
    let handle = layer.handle();
    let addr = server(layer).await;
    let (mut stream, _) = connect76(addr).await;
    expect_text(&mut stream, "version 76").await;
    stream.write_all(&text_frame("counted")).await.unwrap();
    expect_text(&mut stream, "counted").await;
    let metrics = handle.metrics();
    assert_eq!(metrics.live, 1);
    assert_eq!(metrics.messages_in, 1);
    assert_eq!(metrics.messages_out, 2);
    let shutdown = tokio::spawn(async move { handle.shutdown(WAIT).await });
    let mut got = [0u8; 2];
    within("the closing frame", stream.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, [0xFF, 0x00]);
    stream.write_all(&[0xFF, 0x00]).await.unwrap();
    let report = within("the shutdown", shutdown).await.unwrap();
    assert_eq!((report.closed, report.aborted), (1, 0), "{report:?}");
}

#[tokio::test]
async fn key_bytes_sent_as_a_body_with_content_length_are_read() {
    // Some clients (Perl's Protocol::WebSocket) announce the 8 key bytes as a body.
    let (tx, _rx) = mpsc::unbounded_channel();
    let addr = server(layer(tx)).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = hixie76_head(addr, "Content-Length: 8\r\n").into_bytes();
    request.extend_from_slice(KEY3);
    stream.write_all(&request).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(
        head.starts_with("HTTP/1.1 101 WebSocket Protocol Handshake"),
        "{head}"
    );
    let mut answer = [0u8; 16];
    within("the challenge answer", stream.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(&answer, ANSWER);
    expect_text(&mut stream, "version 76").await;
}

#[tokio::test]
async fn a_hub_publish_reaches_a_legacy_subscriber_in_its_own_framing() {
    let hub = tower_websocket::hub::Hub::new();
    let subscriber = {
        let hub = hub.clone();
        move |ws: WebSocket| {
            let hub = hub.clone();
            async move {
                let (mut rx, tx) = ws.split();
                let _subscription = hub.subscribe("room", &tx);
                while rx.recv().await.is_some() {}
            }
        }
    };
    let addr = server(WebSocketLayer::new(subscriber).legacy_drafts(true)).await;
    let (mut legacy, _) = connect76(addr).await;
    let mut rfc = common::RawClient::connect(addr, "/").await;
    within("both to subscribe", async {
        while hub.subscriber_count("room") < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let delivery = hub.publish("room", "to everyone");
    assert_eq!((delivery.delivered, delivery.closed), (2, 0));
    expect_text(&mut legacy, "to everyone").await;
    let frame = rfc.read_frame().await.expect("a frame");
    assert_eq!(
        (frame.opcode, frame.payload.as_slice()),
        (0x1, &b"to everyone"[..])
    );
}
