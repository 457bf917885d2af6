//! Graceful shutdown and live metrics through the layer's handle.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use common::{serve, within, RawClient};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as T;
use tower_websocket::{QueuePolicy, WebSocket, WebSocketLayer};

async fn server(layer: WebSocketLayer) -> SocketAddr {
    serve(Router::new().layer(layer)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_100_sockets_with_1001_after_what_they_had_accepted() {
    const SOCKETS: usize = 100;
    const BURST: usize = 50;
    let returned = Arc::new(AtomicUsize::new(0));
    let layer = {
        let returned = returned.clone();
        WebSocketLayer::new(move |mut ws: WebSocket| {
            let returned = returned.clone();
            async move {
                while let Some(msg) = ws.recv().await {
                    if msg.as_text() == Some("burst") {
                        for i in 0..BURST {
                            if ws.send(format!("m{i}")).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                returned.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let handle = layer.handle();
    let addr = server(layer).await;

    let mut clients = Vec::new();
    for _ in 0..SOCKETS {
        let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .unwrap();
        client.send(T::text("burst")).await.unwrap();
        clients.push(client);
    }
    // Every burst has been accepted by the server (queued or written).
    within("the bursts", async {
        while handle.metrics().messages_in < SOCKETS as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(handle.live(), SOCKETS);

    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut data = 0;
                loop {
                    match client.next().await {
                        Some(Ok(T::Text(_))) => data += 1,
                        Some(Ok(T::Close(frame))) => {
                            // Reading on sends tungstenite's answer to the close frame and
                            // waits for the server to end TCP.
                            while let Some(Ok(_)) = client.next().await {}
                            return (data, frame.map(|f| u16::from(f.code)));
                        }
                        Some(Ok(_)) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    let report = within("the shutdown", handle.shutdown(Duration::from_secs(5))).await;
    assert_eq!(
        (
            report.live_at_start,
            report.closed,
            report.unanswered,
            report.lost,
            report.aborted,
            report.handlers_dropped
        ),
        (SOCKETS, SOCKETS, 0, 0, 0, 0)
    );
    for reader in readers {
        let (data, code) = within("a client", reader).await.unwrap();
        assert_eq!(
            data, BURST,
            "messages accepted before the shutdown were lost"
        );
        assert_eq!(code, Some(1001));
    }
    assert_eq!(
        returned.load(Ordering::SeqCst),
        SOCKETS,
        "a handler did not return"
    );
    assert_eq!(handle.live(), 0);

    // New upgrades are refused while (and after) shutting down.
    let (status, _, body) = RawClient::refused(addr, "/", "").await;
    assert_eq!(status, 503);
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(handle.metrics().rejected.unavailable, 1);
}

#[tokio::test]
async fn handlers_that_do_not_finish_are_dropped_after_the_grace_period() {
    let layer = WebSocketLayer::new(|mut ws: WebSocket| async move {
        while ws.recv().await.is_some() {}
        // Ignores the end and keeps going.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .close_timeout(Duration::from_millis(100));
    let handle = layer.handle();
    let addr = server(layer).await;
    let mut raw = RawClient::connect(addr, "/").await;
    within("the connection", async {
        while handle.live() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let report = within("the shutdown", handle.shutdown(Duration::from_millis(300))).await;
    // The 1001 went out (the client never answers it): the socket is counted as unanswered,
    // not as aborted, and its handler as dropped.
    assert_eq!(
        (
            report.live_at_start,
            report.closed,
            report.unanswered,
            report.aborted,
            report.handlers_dropped
        ),
        (1, 0, 1, 0, 1)
    );
    assert_eq!(raw.expect_close().await.close_code(), 1001);
    within("the abort to take effect", async {
        while handle.live() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// The close timeout of the timing tests: long enough that scheduling noise is small beside it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How far past the close timeout a shutdown may end: room for scheduling on a loaded
/// machine, and still far below twice the close timeout that a second wait would take.
const OVERSHOOT: Duration = Duration::from_millis(500);

async fn wait_live(handle: &tower_websocket::handle::WebSocketHandle, live: usize) {
    within("the sockets to be live", async {
        while handle.live() != live {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn shutdown_report_tells_a_1001_the_peer_never_answered_from_one_it_answered() {
    let layer =
        WebSocketLayer::new(|mut ws: WebSocket| async move { while ws.recv().await.is_some() {} })
            .ping_interval(None)
            .close_timeout(CLOSE_TIMEOUT);
    let handle = layer.handle();
    let addr = server(layer).await;
    // This client answers the close frame (tungstenite does, as it reads it)...
    let (mut polite, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    let polite = tokio::spawn(async move { while let Some(Ok(_)) = polite.next().await {} });
    // ...this one never does, and never ends TCP either.
    let mut silent = RawClient::connect(addr, "/").await;
    wait_live(&handle, 2).await;

    let started = Instant::now();
    let report = within("the shutdown", handle.shutdown(Duration::from_secs(5))).await;
    let took = started.elapsed();
    eprintln!("close timeout {CLOSE_TIMEOUT:?}: the shutdown took {took:?}");
    assert_eq!(
        (
            report.live_at_start,
            report.closed,
            report.unanswered,
            report.lost,
            report.aborted,
            report.handlers_dropped
        ),
        (2, 1, 1, 0, 0, 0),
        "{report:?}"
    );
    // The silent client held the shutdown for one close timeout, FIN included: no more.
    assert!(
        took < CLOSE_TIMEOUT + OVERSHOOT,
        "the shutdown took {took:?}"
    );
    assert_eq!(silent.expect_close().await.close_code(), 1001);
    silent.expect_eof().await;
    within("the polite client", polite).await.unwrap();
}

/// A server whose handler fills the send queue of a peer that never reads (so the task is
/// stuck writing), says so, then waits for the end.
async fn stuck_writer(
    configure: impl FnOnce(WebSocketLayer) -> WebSocketLayer,
) -> (
    SocketAddr,
    tower_websocket::handle::WebSocketHandle,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let chunk = tower_websocket::Message::binary(vec![0u8; 256 * 1024]);
            let sender = ws.sender();
            // From a task of its own: the handler runs in the connection's task, which is
            // the one stuck writing. A full queue says it is.
            tokio::spawn(async move {
                while sender.try_send(chunk.clone()).is_ok() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let _ = tx.send(());
            });
            while ws.recv().await.is_some() {}
        }
    })
    .ping_interval(None)
    .send_queue(4, QueuePolicy::Wait);
    let layer = configure(layer);
    let handle = layer.handle();
    (server(layer).await, handle, rx)
}

#[tokio::test]
async fn shutdown_report_counts_a_socket_whose_1001_could_not_be_written_as_aborted() {
    let (addr, handle, mut stuck) = stuck_writer(|l| l).await;
    let _reads_nothing = RawClient::connect_small_window(addr, "/").await;
    within("the writes to stall", stuck.recv()).await.unwrap();
    let report = within("the shutdown", handle.shutdown(Duration::from_millis(300))).await;
    assert_eq!(
        (
            report.live_at_start,
            report.closed,
            report.unanswered,
            report.lost,
            report.aborted,
            report.handlers_dropped
        ),
        (1, 0, 0, 0, 1, 1),
        "{report:?}"
    );
    wait_live(&handle, 0).await;
}

#[tokio::test]
async fn shutdown_report_counts_a_socket_dropped_by_its_write_timeout_as_lost() {
    let (addr, handle, mut stuck) =
        stuck_writer(|l| l.write_timeout(Some(Duration::from_millis(300)))).await;
    let _reads_nothing = RawClient::connect_small_window(addr, "/").await;
    within("the writes to stall", stuck.recv()).await.unwrap();
    let report = within("the shutdown", handle.shutdown(Duration::from_secs(5))).await;
    assert_eq!(
        (
            report.live_at_start,
            report.closed,
            report.unanswered,
            report.lost,
            report.aborted,
            report.handlers_dropped
        ),
        (1, 0, 0, 1, 0, 0),
        "{report:?}"
    );
}

#[tokio::test]
async fn shutdown_on_runs_the_shutdown_when_the_signal_fires_and_hands_over_its_report() {
    let layer =
        WebSocketLayer::new(|mut ws: WebSocket| async move { while ws.recv().await.is_some() {} });
    let handle = layer.handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (signal, mut report) = handle.shutdown_on(stopped, Duration::from_secs(5));
    let server = tokio::spawn(async move {
        axum::serve(listener, Router::new().layer(layer))
            .with_graceful_shutdown(signal)
            .await
    });
    let mut raw = RawClient::connect(addr, "/").await;
    assert_eq!(report.try_report(), None, "no shutdown before the signal");
    stop.send(()).unwrap();
    assert_eq!(raw.expect_close().await.close_code(), 1001);
    raw.send_frame(true, 0x8, &common::close_payload(1001, b""))
        .await;
    raw.expect_eof().await;
    within("the server to stop", server).await.unwrap().unwrap();
    let report = within("the report", report).await.expect("a report");
    assert_eq!((report.live_at_start, report.closed), (1, 1));
    assert!(handle.is_shutting_down());
}

#[tokio::test]
async fn shutdown_on_reports_none_when_the_server_ends_before_the_signal() {
    let handle = WebSocketLayer::new(|_ws: WebSocket| async {}).handle();
    let (signal, report) = handle.shutdown_on(std::future::pending::<()>(), Duration::ZERO);
    // The server ended for another reason: its shutdown future is dropped unfinished.
    drop(signal);
    assert_eq!(within("the report", report).await, None);
    assert!(!handle.is_shutting_down());
}

#[tokio::test]
async fn metrics_count_upgrades_refusals_messages_and_bytes() {
    let layer = WebSocketLayer::new(|mut ws: WebSocket| async move {
        while let Some(msg) = ws.recv().await {
            let _ = ws.send(msg).await;
        }
    });
    let handle = layer.handle();
    let addr = server(layer).await;
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
    let (mut raw, _) = RawClient::handshake(addr, "/", "").await;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut raw.stream).await;
    let m = handle.metrics();
    assert_eq!(m.accepted, 2);
    assert_eq!(m.rejected.forbidden, 1);
    assert_eq!((m.messages_in, m.bytes_in), (2, 1005));
    assert_eq!((m.messages_out, m.bytes_out), (2, 1005));
    client.close(None).await.unwrap();
}
