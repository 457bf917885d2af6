//! permessage-deflate on the wire, with a raw client that compresses by hand (flate2): the
//! negotiation, round trips, and what a hostile or broken peer gets.
#![cfg(feature = "deflate")]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use common::{encode_frame, serve, within, RawClient};
use flate2::{Decompress, FlushDecompress};
use tower_websocket::{DeflateConfig, WebSocket, WebSocketLayer};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const MASK: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

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

/// Raw deflate with a sync flush and the trailing `00 00 ff ff` removed, as RFC 7692 sends it.
fn compress(data: &[u8]) -> Vec<u8> {
    compress_at(data, flate2::Compression::fast())
}

fn compress_at(data: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), level);
    encoder.write_all(data).unwrap();
    encoder.flush().unwrap();
    let mut out = encoder.finish().unwrap();
    // `finish` adds a final empty block after the sync flush's marker: cut back to the marker.
    let marker = out
        .windows(4)
        .rposition(|w| w == [0, 0, 0xff, 0xff])
        .expect("a sync flush marker");
    out.truncate(marker);
    out
}

/// The client's inflater, keeping its context between messages as the server's compressor does.
struct Inflater(Decompress);

impl Inflater {
    fn new() -> Self {
        Inflater(Decompress::new(false))
    }

    fn inflate(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut input = payload.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut consumed = 0;
        while consumed < input.len() {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let before = self.0.total_in();
            self.0
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .unwrap();
            consumed += (self.0.total_in() - before) as usize;
        }
        out
    }
}

async fn compressed_client(addr: SocketAddr) -> RawClient {
    let (client, head) = RawClient::handshake(addr, "/", OFFER).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        "{head}"
    );
    client
}

#[tokio::test]
async fn offer_is_declined_unless_the_layer_turns_compression_on() {
    let addr = server(WebSocketLayer::new(echo)).await;
    let (_raw, head) = RawClient::handshake(addr, "/", OFFER).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
}

#[tokio::test]
async fn compressed_messages_round_trip() {
    let addr = server(WebSocketLayer::new(echo).deflate(DeflateConfig::new())).await;
    let mut raw = compressed_client(addr).await;
    let mut inflater = Inflater::new();
    for i in 0..20 {
        let text = format!(
            "message {i}: {}",
            "repetitive json-ish content, ".repeat(40)
        );
        raw.send_raw(&encode_frame(
            true,
            0b100,
            0x1,
            MASK,
            &compress(text.as_bytes()),
        ))
        .await;
        let reply = raw.read_frame().await.unwrap();
        assert_eq!(
            (reply.opcode, reply.rsv),
            (0x1, 0b100),
            "over the threshold: compressed"
        );
        assert!(
            reply.payload.len() < text.len() / 4,
            "{} bytes",
            reply.payload.len()
        );
        assert_eq!(inflater.inflate(&reply.payload), text.as_bytes());
    }
    // Below the threshold (128 bytes) the answer is not compressed.
    raw.send_raw(&encode_frame(true, 0b100, 0x1, MASK, &compress(b"tiny")))
        .await;
    let reply = raw.read_frame().await.unwrap();
    assert_eq!((reply.rsv, reply.payload.as_slice()), (0, &b"tiny"[..]));
}

#[tokio::test]
async fn deflate_bomb_closes_with_1009_without_being_inflated() {
    let addr = server(
        WebSocketLayer::new(echo)
            .deflate(DeflateConfig::new())
            .max_message_size(1 << 20),
    )
    .await;
    let bomb = compress_at(&vec![0u8; 64 << 20], flate2::Compression::best()); // 64 MiB of zeros
    assert!(bomb.len() < 128 * 1024, "{} bytes", bomb.len());
    let rss_before = rss_kib();
    let mut raw = compressed_client(addr).await;
    raw.send_raw(&encode_frame(true, 0b100, 0x2, MASK, &bomb))
        .await;
    let close = raw.expect_close().await;
    assert_eq!(close.close_code(), 1009);
    let grown = rss_kib().saturating_sub(rss_before);
    // Inflating it would take 64 MiB; the limit is 1 MiB.
    assert!(grown < 24 * 1024, "the server grew by {grown} KiB");
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn corrupt_compressed_data_closes_with_1007() {
    let addr = server(WebSocketLayer::new(echo).deflate(DeflateConfig::new())).await;
    let mut raw = compressed_client(addr).await;
    raw.send_raw(&encode_frame(true, 0b100, 0x2, MASK, &[0xff; 32]))
        .await;
    assert_eq!(raw.expect_close().await.close_code(), 1007);
    raw.expect_eof().await;
}

#[tokio::test]
async fn rsv1_on_a_continuation_or_a_ping_closes_with_1002() {
    let addr = server(WebSocketLayer::new(echo).deflate(DeflateConfig::new())).await;
    let payload = compress(b"first part of a message");
    let mut raw = compressed_client(addr).await;
    raw.send_raw(&encode_frame(
        false,
        0b100,
        0x1,
        MASK,
        &payload[..payload.len() / 2],
    ))
    .await;
    raw.send_raw(&encode_frame(
        true,
        0b100,
        0x0,
        MASK,
        &payload[payload.len() / 2..],
    ))
    .await;
    assert_eq!(raw.expect_close().await.close_code(), 1002);

    let mut raw = compressed_client(addr).await;
    raw.send_raw(&encode_frame(true, 0b100, 0x9, MASK, b""))
        .await;
    assert_eq!(raw.expect_close().await.close_code(), 1002);
}

#[tokio::test]
async fn rsv1_when_not_negotiated_closes_with_1002() {
    let addr = server(WebSocketLayer::new(echo).deflate(DeflateConfig::new())).await;
    let mut raw = RawClient::connect(addr, "/").await; // no offer: nothing agreed
    raw.send_raw(&encode_frame(true, 0b100, 0x1, MASK, &compress(b"hello")))
        .await;
    assert_eq!(raw.expect_close().await.close_code(), 1002);
}

#[tokio::test]
async fn a_slow_reader_still_gets_every_echo_and_the_pong() {
    let addr = server(WebSocketLayer::new(echo).deflate(DeflateConfig::new())).await;
    let mut raw = compressed_client(addr).await;
    let messages: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "{i:04} {}",
                "a fairly compressible line of text; ".repeat(100)
            )
        })
        .collect();
    for text in &messages {
        raw.send_raw(&encode_frame(
            true,
            0b100,
            0x1,
            MASK,
            &compress(text.as_bytes()),
        ))
        .await;
    }
    raw.send_frame(true, 0x9, b"are you there").await;
    let mut inflater = Inflater::new();
    let mut pong = false;
    let mut got = 0;
    while got < messages.len() || !pong {
        tokio::time::sleep(Duration::from_millis(1)).await; // a slow reader
        let frame = raw.read_frame().await.expect("a frame");
        match frame.opcode {
            0xA => {
                assert_eq!(frame.payload, b"are you there");
                pong = true;
            }
            0x1 => {
                let text = if frame.rsv == 0b100 {
                    inflater.inflate(&frame.payload)
                } else {
                    frame.payload
                };
                assert_eq!(text, messages[got].as_bytes(), "echo {got}");
                got += 1;
            }
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
    within("nothing more", async {
        raw.send_frame(true, 0x8, &common::close_payload(1000, b""))
            .await;
        raw.expect_close().await
    })
    .await;
}
