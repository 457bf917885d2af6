//! `bench history`: what topic history costs a publish, and how fast a resuming client is
//! caught up. See "Topic history" in `docs/performance.md`.
//!
//! 1. Publish: `Hub::publish` to a topic with no subscriber, on a hub without history and on
//!    one whose topic keeps the last 1000 messages; the difference is the history's own cost.
//! 2. Catch-up in process: a `Feed` drains a history of N messages (no socket).
//! 3. Catch-up over a socket: a client on 127.0.0.1 resumes from offset 0 and reads the N
//!    messages the handler forwards from its feed (`WebSocketLayer` + axum, tokio-tungstenite
//!    as the client).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tower_websocket::hub::{FeedEvent, HistoryConfig, Hub, Position};
use tower_websocket::{Message, WebSocket, WebSocketLayer};

const TOPIC: &str = "t";
const ROUNDS: usize = 5;

pub fn run(messages: usize, size: usize) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let payload = Message::binary(vec![b'x'; size]);
    println!("history: {messages} messages of {size} B, median of {ROUNDS} rounds");

    let plain = median(|| publish_ns(None, messages, &payload));
    let kept = median(|| publish_ns(Some(HistoryConfig::new()), messages, &payload));
    println!("publish, no subscriber, without history:      {plain:8.0} ns");
    println!(
        "publish, no subscriber, history of 1000:      {kept:8.0} ns  (+{:.0} ns)",
        kept - plain
    );

    let in_process = median(|| rt.block_on(catch_up_in_process(messages, &payload)));
    println!(
        "catch-up, in process (Feed::recv):            {:8.0} messages/s",
        in_process
    );

    let mut socket = Vec::new();
    for _ in 0..ROUNDS {
        socket.push(rt.block_on(catch_up_over_socket(messages, &payload))?);
    }
    let socket = middle(socket);
    println!(
        "catch-up, over a 127.0.0.1 socket:            {:8.0} messages/s",
        socket
    );
    Ok(())
}

fn median(mut f: impl FnMut() -> f64) -> f64 {
    middle((0..ROUNDS).map(|_| f()).collect())
}

fn middle(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn publish_ns(history: Option<HistoryConfig>, n: usize, payload: &Message) -> f64 {
    let hub = Hub::new();
    if let Some(config) = history {
        hub.history(TOPIC, config);
    }
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(hub.publish(TOPIC, payload.clone()));
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn filled_hub(n: usize, payload: &Message) -> (Hub, Position) {
    let hub = Hub::new();
    hub.history(TOPIC, HistoryConfig::new().max_messages(n));
    let start = hub.head(TOPIC).expect("history");
    for _ in 0..n {
        hub.publish(TOPIC, payload.clone());
    }
    (hub, start)
}

async fn catch_up_in_process(n: usize, payload: &Message) -> f64 {
    let (hub, start) = filled_hub(n, payload);
    let mut feed = hub.subscribe_from(TOPIC, Some(start)).expect("history");
    let began = Instant::now();
    for _ in 0..n {
        match feed.recv().await {
            FeedEvent::Message { message, .. } => {
                std::hint::black_box(message);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    n as f64 / began.elapsed().as_secs_f64()
}

async fn catch_up_over_socket(n: usize, payload: &Message) -> Result<f64, String> {
    let (hub, start) = filled_hub(n, payload);
    let handler = {
        let hub = hub.clone();
        move |ws: WebSocket| {
            let hub = hub.clone();
            async move {
                let Ok(mut feed) = hub.subscribe_from(TOPIC, Some(start)) else {
                    return;
                };
                let (_rx, tx) = ws.split();
                loop {
                    if let FeedEvent::Message { message, .. } = feed.recv().await {
                        if tx.send(message).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    let app = axum::Router::new().layer(WebSocketLayer::new(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let began = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .map_err(|e| e.to_string())?;
    let mut got = 0;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(m))) if m.is_binary() => got += 1,
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("after {got} messages: {other:?}")),
        }
    }
    let rate = n as f64 / began.elapsed().as_secs_f64();
    drop(ws);
    server.abort();
    Ok(rate)
}
