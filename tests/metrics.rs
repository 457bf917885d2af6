//! The handle's counters through the `metrics` facade (feature `metrics`), read back from a
//! Prometheus recorder.
#![cfg(feature = "metrics")]

mod common;

use axum::Router;
use common::{serve, within, RawClient};
use futures_util::{SinkExt, StreamExt};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tokio_tungstenite::tungstenite::Message as T;
use tower_websocket::handle::WebSocketHandle;
use tower_websocket::{WebSocket, WebSocketLayer};

async fn echo(mut ws: WebSocket) {
    while let Some(msg) = ws.recv().await {
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The lines of the Prometheus page, without comments.
fn samples(recorder: &PrometheusRecorder) -> Vec<String> {
    recorder
        .handle()
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A server with one live echo socket that has echoed "hello" and 1000 bytes, and one
/// handshake refused with 403.
async fn traffic() -> (WebSocketHandle, Client) {
    let layer = WebSocketLayer::new(echo);
    let handle = layer.handle();
    let addr = serve(Router::new().layer(layer)).await;
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    client.send(T::text("hello")).await.unwrap();
    client.send(T::binary(vec![0u8; 1000])).await.unwrap();
    for _ in 0..2 {
        within("an echo", client.next()).await.unwrap().unwrap();
    }
    let (status, _, _) = RawClient::refused(addr, "/", "Origin: http://evil.example\r\n").await;
    assert_eq!(status, 403);
    (handle, client)
}

#[tokio::test]
async fn publish_metrics_records_every_counter_with_its_value() {
    let (handle, _client) = traffic().await;
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || handle.publish_metrics());
    let mut samples = samples(&recorder);
    samples.sort();
    assert_eq!(
        samples,
        [
            "websocket_connections_accepted_total 1",
            "websocket_connections_live 1",
            "websocket_handshakes_rejected_total{status=\"400\"} 0",
            "websocket_handshakes_rejected_total{status=\"403\"} 1",
            "websocket_handshakes_rejected_total{status=\"426\"} 0",
            "websocket_handshakes_rejected_total{status=\"503\"} 0",
            "websocket_handshakes_rejected_total{status=\"other\"} 0",
            "websocket_messages_received_total 2",
            "websocket_messages_sent_total 2",
            "websocket_received_bytes_total 1005",
            "websocket_sent_bytes_total 1005",
        ]
    );
}

#[tokio::test]
async fn publish_metrics_describes_every_metric_with_its_type_and_help() {
    let (handle, _client) = traffic().await;
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || handle.publish_metrics());
    let page = recorder.handle().render();
    for (name, kind) in [
        ("websocket_connections_live", "gauge"),
        ("websocket_connections_accepted_total", "counter"),
        ("websocket_handshakes_rejected_total", "counter"),
        ("websocket_messages_received_total", "counter"),
        ("websocket_received_bytes_total", "counter"),
        ("websocket_messages_sent_total", "counter"),
        ("websocket_sent_bytes_total", "counter"),
    ] {
        assert!(
            page.contains(&format!("# TYPE {name} {kind}\n")),
            "no {kind} {name} in {page}"
        );
        assert!(
            page.contains(&format!("# HELP {name} ")),
            "no help for {name} in {page}"
        );
    }
}

#[tokio::test]
async fn publishing_again_follows_the_counters_without_adding_them_up() {
    let (handle, client) = traffic().await;
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || handle.publish_metrics());
    metrics::with_local_recorder(&recorder, || handle.publish_metrics());
    // The socket closes: the gauge goes down, the counters stay.
    drop(client);
    within("the socket to end", async {
        while handle.live() != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    metrics::with_local_recorder(&recorder, || handle.publish_metrics());
    let samples = samples(&recorder);
    for expected in [
        "websocket_connections_live 0",
        "websocket_connections_accepted_total 1",
        "websocket_messages_received_total 2",
    ] {
        assert!(
            samples.iter().any(|s| s == expected),
            "{expected}: {samples:?}"
        );
    }
}

#[tokio::test]
async fn publish_metrics_labeled_puts_the_labels_on_every_metric() {
    let (handle, _client) = traffic().await;
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        handle.publish_metrics_labeled(&[("layer", "chat")])
    });
    let samples = samples(&recorder);
    assert_eq!(samples.len(), 11, "{samples:?}");
    for sample in &samples {
        assert!(sample.contains("layer=\"chat\""), "{sample}");
    }
    assert!(
        samples.contains(
            &"websocket_handshakes_rejected_total{layer=\"chat\",status=\"403\"} 1".to_string()
        ),
        "{samples:?}"
    );
}
