//! A live plot: the server pushes a data point every 100 ms and every open page draws the same
//! series, a scrolling line chart on a `<canvas>` with no library.
//!
//! One producer task makes the series (a sine plus noise from a small deterministic
//! generator) and publishes each point to a [`Hub`] topic that keeps the last 30 seconds of
//! points as history. Each page's WebSocket (`/data`) reads the topic through a
//! [`Feed`](tower_websocket::hub::Feed): a new page gets the recent points first, so that its
//! chart starts full; a page that lost its socket reconnects with `/data?since=POSITION`, the
//! position of the last point it drew, and gets exactly the points it missed, then the live
//! ones. When the history no longer reaches back that far (or the server restarted), the page
//! is told `{"resync":...}`, forgets its points and is sent the recent ones afresh. `GET /`
//! serves the page.
//!
//! ```text
//! cargo run --example live_plot       # then open http://127.0.0.1:3000
//! ADDR=127.0.0.1:9003 cargo run --example live_plot
//! ```
//!
//! A point is the JSON text `{"pos":"8123-13","seq":12,"t":1.2,"y":0.93}`: `pos` is its
//! position in the topic's history (to resume from), `t` in seconds since the server started.

use std::f64::consts::TAU;
use std::time::Duration;

use axum::{response::Html, routing::get, Router};
use serde_json::{json, Value};
use tower_websocket::hub::{Feed, FeedEvent, HistoryConfig, Hub, Position};
use tower_websocket::{CloseCode, Message, WebSocket, WebSocketLayer};

#[path = "common/serve.rs"]
mod serve;

/// The hub topic the producer publishes to.
const TOPIC: &str = "series";
/// Time between two points.
const PERIOD: Duration = Duration::from_millis(100);
/// Points the topic's history keeps: 30 seconds' worth.
const HISTORY: u64 = 300;
/// Points a new page is sent first: a little less than the history, so that a point published
/// while the page subscribes does not push its first one out.
const FIRST_POINTS: u64 = HISTORY - 10;

/// xorshift64*: a tiny deterministic generator, enough for plot noise.
struct XorShift(u64);

impl XorShift {
    /// A number in [-1, 1).
    fn next_signed(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let bits = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11; // 53 random bits
        (bits as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// Makes a point every [`PERIOD`] and publishes it to [`TOPIC`], forever.
async fn produce(hub: Hub) {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0u64.. {
        tick.tick().await;
        let t = seq as f64 * PERIOD.as_secs_f64();
        // A slow sine, a faster small one, and noise.
        let y = (TAU * t / 8.0).sin() + 0.25 * (TAU * t / 1.3).sin() + 0.15 * rng.next_signed();
        let point = json!({"seq": seq, "t": round3(t), "y": round3(y)});
        hub.publish(TOPIC, Message::text(point.to_string()));
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A feed of the recent points, for a page that has none.
fn recent(hub: &Hub) -> Option<Feed> {
    let head = hub.head(TOPIC)?;
    let since = Position::new(head.epoch(), head.offset().saturating_sub(FIRST_POINTS));
    hub.subscribe_from(TOPIC, Some(since)).ok()
}

/// One page: the points after `?since=` (or the recent ones), then every new point until the
/// page goes away.
async fn plot(mut ws: WebSocket, hub: Hub) {
    let since = ws
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("since=")))
        .map(str::parse::<Position>)
        .transpose();
    let feed = match since {
        Ok(None) => recent(&hub),
        Ok(Some(since)) => hub.subscribe_from(TOPIC, Some(since)).ok(),
        // A position that does not parse is the page's bug: say so, in the close frame.
        Err(e) => {
            let _ = ws
                .close_with(CloseCode::POLICY_VIOLATION, &e.to_string())
                .await;
            return;
        }
    };
    let Some(mut feed) = feed else {
        return; // the topic keeps a history from the start: not reached
    };
    let (mut rx, tx) = ws.split();
    tracing::info!(
        peer = ?rx.peer_addr(),
        since = ?since.ok().flatten().map(|p| p.to_string()),
        resync = ?feed.resync().map(|r| r.reason),
        "page connected"
    );
    loop {
        let text = tokio::select! {
            event = feed.recv() => match event {
                FeedEvent::Message { position, message } => with_position(position, &message),
                FeedEvent::Resync(resync) => {
                    // The page cannot be filled in: it forgets its points, and gets the
                    // recent ones like a new page.
                    if let Some(fresh) = recent(&hub) {
                        feed = fresh;
                    }
                    json!({"resync": resync.reason.to_string()}).to_string()
                }
                _ => continue,
            },
            incoming = rx.recv() => match incoming {
                Some(_) => continue, // the page sends nothing that matters
                None => break,
            },
        };
        if tx.send(Message::text(text)).await.is_err() {
            break;
        }
    }
}

/// A published point with its position added: `{"pos":"EPOCH-OFFSET", ...the point}`.
fn with_position(position: Position, message: &Message) -> String {
    let mut point: Value = message
        .as_text()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut point {
        fields.insert("pos".into(), Value::String(position.to_string()));
    }
    point.to_string()
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let hub = Hub::new();
    hub.history(TOPIC, HistoryConfig::new().max_messages(HISTORY as usize));
    tokio::spawn(produce(hub.clone()));

    let socket = WebSocketLayer::new(move |ws: WebSocket| plot(ws, hub.clone()))
        // The page sends nothing: a small limit is plenty.
        .max_message_size(4 << 10);
    // `/data` only speaks WebSocket (426 to anything else); every other path is the router's.
    let app = Router::new()
        .route(
            "/",
            get(|| async { Html(include_str!("pages/live_plot.html")) }),
        )
        .route_service("/data", socket.into_service());

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_string());
    let listener = serve::bind(&addr).await;
    tracing::info!(
        "live plot server on http://{}",
        listener.local_addr().expect("bound address")
    );
    serve::serve(listener, app, std::future::pending()).await;
}
