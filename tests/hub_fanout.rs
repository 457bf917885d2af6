//! A publish framed once for subscribers that agreed on different things: no compression,
//! permessage-deflate without context takeover (two sets of settings, shared frames), and
//! with context takeover (compressed per socket). Each must get exactly its own bytes.
#![cfg(all(feature = "deflate", feature = "testing"))]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use common::{serve, within, RawClient, ServerFrame};
use flate2::{Decompress, FlushDecompress};
use tower_websocket::hub::Hub;
use tower_websocket::testing::TestClient;
use tower_websocket::{DeflateConfig, Message, QueuePolicy, WebSocket, WebSocketLayer};

const TOPIC: &str = "room";

fn layer(hub: &Hub) -> WebSocketLayer {
    let hub = hub.clone();
    WebSocketLayer::new(move |ws: WebSocket| {
        let hub = hub.clone();
        async move {
            let (mut rx, tx) = ws.split();
            let _subscription = hub.subscribe(TOPIC, &tx);
            while rx.recv().await.is_some() {}
        }
    })
    .deflate(DeflateConfig::new())
}

/// Inflates one message; `inflater` carries the context of earlier ones.
fn inflate(inflater: &mut Decompress, payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(64 * 1024);
    let before = inflater.total_in();
    inflater
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(
        inflater.total_in() - before,
        input.len() as u64,
        "all input taken"
    );
    out
}

async fn deflate_client(addr: SocketAddr, offer: &str) -> RawClient {
    let extra = format!("Sec-WebSocket-Extensions: {offer}\r\n");
    let (client, head) = RawClient::handshake(addr, "/", &extra).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        "{head}"
    );
    client
}

async fn frames(client: &mut RawClient, n: usize) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    for _ in 0..n {
        let frame = client.read_frame().await.expect("a published frame");
        assert_eq!(frame.opcode, 0x1, "{frame:?}");
        frames.push(frame);
    }
    frames
}

#[tokio::test]
async fn each_subscriber_gets_the_publish_as_it_agreed_to_receive_it() {
    let hub = Hub::new();
    let app = Router::new().layer(layer(&hub));
    let addr = serve(app.clone()).await;

    let mut plain = Vec::new();
    for _ in 0..2 {
        plain.push(
            TestClient::connect(app.clone(), http::Request::get("/").body(()).unwrap())
                .await
                .unwrap(),
        );
    }
    let shared_offer = "permessage-deflate; server_no_context_takeover";
    let small_window = "permessage-deflate; server_no_context_takeover; server_max_window_bits=10";
    let mut shared = [
        deflate_client(addr, shared_offer).await,
        deflate_client(addr, shared_offer).await,
    ];
    let mut windowed = deflate_client(addr, small_window).await;
    let mut takeover = [
        deflate_client(addr, "permessage-deflate").await,
        deflate_client(addr, "permessage-deflate").await,
    ];
    within("every handler to subscribe", async {
        while hub.subscriber_count(TOPIC) < 7 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let large = format!(
        "{{\"news\":\"{}\"}}",
        "the same words again and again, ".repeat(60)
    );
    let published = [large.clone(), "hi".to_string(), large.clone()];
    for text in &published {
        let delivery = hub.publish(TOPIC, Message::text(text.clone()));
        assert_eq!(
            (delivery.delivered, delivery.dropped, delivery.closed),
            (7, 0, 0)
        );
    }

    for client in &mut plain {
        for text in &published {
            assert_eq!(&client.recv_text().await, text);
        }
    }

    // Without context takeover: each compressed message inflates on its own, and the
    // subscribers with the same settings got the same bytes.
    let mut shared_frames = Vec::new();
    for client in shared.iter_mut().chain([&mut windowed]) {
        let got = frames(client, 3).await;
        for (frame, text) in got.iter().zip(&published) {
            if text.len() < tower_websocket::deflate::DEFAULT_THRESHOLD {
                assert_eq!((frame.rsv, frame.payload.as_slice()), (0, text.as_bytes()));
            } else {
                assert_eq!(frame.rsv, 0b100, "compressed");
                let mut fresh = Decompress::new(false);
                assert_eq!(inflate(&mut fresh, &frame.payload), text.as_bytes());
            }
        }
        shared_frames.push(got);
    }
    assert_eq!(shared_frames[0], shared_frames[1]);
    assert_eq!(
        shared_frames[0][0], shared_frames[0][2],
        "compressed alike, alone"
    );

    // With context takeover: one inflater per socket, and the repeated message refers back to
    // the first, so it is much smaller than the one compressed alone.
    for client in &mut takeover {
        let got = frames(client, 3).await;
        let mut inflater = Decompress::new(false);
        for (frame, text) in got.iter().zip(&published) {
            if text.len() < tower_websocket::deflate::DEFAULT_THRESHOLD {
                assert_eq!((frame.rsv, frame.payload.as_slice()), (0, text.as_bytes()));
            } else {
                assert_eq!(frame.rsv, 0b100, "compressed");
                assert_eq!(inflate(&mut inflater, &frame.payload), text.as_bytes());
            }
        }
        assert!(
            got[2].payload.len() * 2 < shared_frames[0][2].payload.len(),
            "{} bytes with context takeover, {} without",
            got[2].payload.len(),
            shared_frames[0][2].payload.len()
        );
    }
}

/// Publishes back to back, before any connection task runs: each subscriber's connection
/// takes the burst at once and writes it in order, the send queue's capacity holds for the
/// burst, and the room of what was written is back for the next one.
#[tokio::test]
async fn a_burst_of_publishes_arrives_in_order_and_the_queue_bound_holds() {
    const CAPACITY: usize = 4;
    const SUBSCRIBERS: usize = 3;
    let hub = Hub::new();
    let layer = {
        let hub = hub.clone();
        WebSocketLayer::new(move |ws: WebSocket| {
            let hub = hub.clone();
            async move {
                let (mut rx, tx) = ws.split();
                let _subscription = hub.subscribe(TOPIC, &tx);
                while rx.recv().await.is_some() {}
            }
        })
        .send_queue(CAPACITY, QueuePolicy::Fail)
    };
    let app = Router::new().layer(layer);
    let mut clients = Vec::new();
    for _ in 0..SUBSCRIBERS {
        clients.push(
            TestClient::connect(app.clone(), http::Request::get("/").body(()).unwrap())
                .await
                .unwrap(),
        );
    }
    within("every handler to subscribe", async {
        while hub.subscriber_count(TOPIC) < SUBSCRIBERS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // No await between the publishes: the queues fill, and the last two are dropped.
    let first: Vec<_> = (0..CAPACITY + 2)
        .map(|i| hub.publish(TOPIC, Message::text(format!("m{i}"))))
        .map(|d| (d.delivered, d.dropped, d.closed))
        .collect();
    let mut expected = vec![(SUBSCRIBERS, 0, 0); CAPACITY];
    expected.extend([(0, SUBSCRIBERS, 0); 2]);
    assert_eq!(first, expected);
    for client in &mut clients {
        for i in 0..CAPACITY {
            assert_eq!(client.recv_text().await, format!("m{i}"));
        }
    }

    // Written: the whole capacity is free again for the next burst.
    for i in CAPACITY + 2..2 * CAPACITY + 2 {
        let delivery = hub.publish(TOPIC, Message::text(format!("m{i}")));
        assert_eq!((delivery.delivered, delivery.dropped), (SUBSCRIBERS, 0));
    }
    for client in &mut clients {
        // The dropped messages never come: the next one is the first of this burst.
        for i in CAPACITY + 2..2 * CAPACITY + 2 {
            assert_eq!(client.recv_text().await, format!("m{i}"));
        }
    }
}
