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

/// `bench history --redis URL`: the same questions with the history in Redis (whose keys it
/// deletes afterwards). Publishing is
/// asynchronous there (a writer task pipelines what gathered), so the cost that matters is
/// the writer's throughput: N messages published, timed until Redis has acknowledged all of
/// them, with `PUBLISH` (no history) and with the append script (history). Then a feed from
/// offset 0 drains N messages from the stream.
pub fn run_redis(url: &str, messages: usize, size: usize) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let payload = Message::binary(vec![b'x'; size]);
    println!("history on Redis {url}: {messages} messages of {size} B, median of {ROUNDS} rounds");
    let mut round = 0;
    let mut plain = Vec::new();
    let mut kept = Vec::new();
    let mut catch_up = Vec::new();
    for _ in 0..ROUNDS {
        round += 1;
        plain.push(rt.block_on(redis_publish(url, None, round, messages, &payload))?);
        round += 1;
        let topic_round = round;
        kept.push(rt.block_on(redis_publish(
            url,
            Some(messages),
            topic_round,
            messages,
            &payload,
        ))?);
        catch_up.push(rt.block_on(redis_catch_up(url, topic_round, messages))?);
    }
    let (plain, kept) = (middle(plain), middle(kept));
    println!(
        "publish through Redis, without history:      {:8.0} messages/s ({:.2} µs each)",
        plain,
        1e6 / plain
    );
    println!(
        "publish through Redis, history of {messages}: {:8.0} messages/s ({:.2} µs each)",
        kept,
        1e6 / kept
    );
    println!(
        "catch-up from Redis (Feed::recv):            {:8.0} messages/s",
        middle(catch_up)
    );
    Ok(())
}

async fn redis_hub(url: &str, prefix: String, capacity: usize) -> Result<Hub, String> {
    use tower_websocket::hub::redis::RedisBackend;
    let backend = RedisBackend::builder(url)
        .prefix(prefix)
        .queue_capacity(capacity)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(Hub::with_backend(backend))
}

/// Messages per second from the first publish to the last one acknowledged by Redis.
async fn redis_publish(
    url: &str,
    history: Option<usize>,
    round: usize,
    n: usize,
    payload: &Message,
) -> Result<f64, String> {
    use tower_websocket::hub::redis::RedisBackend;
    let backend = RedisBackend::builder(url)
        .prefix(format!("bench-history-{}-{round}", std::process::id()))
        .queue_capacity(n)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let hub = Hub::with_backend(backend.clone());
    if let Some(max) = history {
        hub.history(TOPIC, HistoryConfig::new().max_messages(max));
    }
    // Until the writer is connected, publishes would be dropped.
    while !backend.is_connected() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let began = Instant::now();
    for _ in 0..n {
        hub.publish(TOPIC, payload.clone());
    }
    loop {
        let stats = backend.stats();
        let done = stats.published + stats.dropped_queue_full + stats.dropped_disconnected;
        if done >= n as u64 {
            if stats.published < n as u64 {
                return Err(format!("messages dropped: {stats:?}"));
            }
            break;
        }
        if began.elapsed() > Duration::from_secs(120) {
            return Err(format!("not acknowledged within 120 s: {stats:?}"));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(n as f64 / began.elapsed().as_secs_f64())
}

/// Messages per second a feed from offset 0 reads of the history `redis_publish` left.
async fn redis_catch_up(url: &str, round: usize, n: usize) -> Result<f64, String> {
    let hub = redis_hub(
        url,
        format!("bench-history-{}-{round}", std::process::id()),
        16,
    )
    .await?;
    hub.history(TOPIC, HistoryConfig::new().max_messages(n));
    let mut feed = hub.subscribe_from(TOPIC, None).map_err(|e| e.to_string())?;
    feed.ready().await;
    let head = feed.position();
    let mut feed = hub
        .subscribe_from(TOPIC, Some(Position::new(head.epoch(), 0)))
        .map_err(|e| e.to_string())?;
    let began = Instant::now();
    let mut got = 0;
    while got < head.offset() {
        match tokio::time::timeout(Duration::from_secs(30), feed.recv()).await {
            Ok(FeedEvent::Message { message, .. }) => {
                std::hint::black_box(message);
                got += 1;
            }
            other => return Err(format!("after {got} messages: {other:?}")),
        }
    }
    let rate = got as f64 / began.elapsed().as_secs_f64();
    // The history's keys (see docs/history-redis.md): not left behind in the user's Redis.
    let prefix = format!("bench-history-{}-{round}", std::process::id());
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    redis::cmd("DEL")
        .arg(format!("{prefix}!history:{TOPIC}:meta"))
        .arg(format!("{prefix}!history:{TOPIC}:stream"))
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(rate)
}
