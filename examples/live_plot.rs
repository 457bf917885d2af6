//! A live plot: the server pushes a data point every 100 ms and every open page draws the same
//! series, a scrolling line chart on a `<canvas>` with no library.
//!
//! One producer task makes the series (a sine plus noise from a small deterministic
//! generator) and publishes each point to a [`Hub`] topic; each page's WebSocket (`/data`)
//! subscribes to it, after being sent the last 30 seconds of points so that its chart starts
//! full. `GET /` serves the page.
//!
//! ```text
//! cargo run --example live_plot       # then open http://127.0.0.1:3000
//! ADDR=127.0.0.1:9003 cargo run --example live_plot
//! ```
//!
//! A point is the JSON text `{"seq":12,"t":1.2,"y":0.93}` (`t` in seconds since the server
//! started); the history is `{"history":[point, ...]}`.

use std::collections::VecDeque;
use std::f64::consts::TAU;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::{response::Html, routing::get, Router};
use serde_json::{json, Value};
use tower_websocket::hub::Hub;
use tower_websocket::{Message, WebSocket, WebSocketLayer};

#[path = "common/serve.rs"]
mod serve;

/// The hub topic the producer publishes to.
const TOPIC: &str = "series";
/// Time between two points.
const PERIOD: Duration = Duration::from_millis(100);
/// Points a new page is sent first: 30 seconds' worth.
const HISTORY: usize = 300;

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

/// The recent points, shared by the producer and the sockets.
#[derive(Default)]
struct Series {
    recent: VecDeque<Value>,
}

/// Makes a point every [`PERIOD`] and publishes it to [`TOPIC`], forever.
async fn produce(hub: Hub, series: Arc<Mutex<Series>>) {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0u64.. {
        tick.tick().await;
        let t = seq as f64 * PERIOD.as_secs_f64();
        // A slow sine, a faster small one, and noise.
        let y = (TAU * t / 8.0).sin() + 0.25 * (TAU * t / 1.3).sin() + 0.15 * rng.next_signed();
        let point = json!({"seq": seq, "t": round3(t), "y": round3(y)});
        let message = Message::text(point.to_string());
        // Under the lock, so that a socket subscribing at the same time gets each point once:
        // either in its history or published to it.
        let mut series = series.lock().unwrap_or_else(PoisonError::into_inner);
        if series.recent.len() == HISTORY {
            series.recent.pop_front();
        }
        series.recent.push_back(point);
        hub.publish(TOPIC, message);
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One page: the history, then every new point until the page goes away.
async fn plot(ws: WebSocket, hub: Hub, series: Arc<Mutex<Series>>) {
    let (mut rx, tx) = ws.split();
    let subscription = {
        let series = series.lock().unwrap_or_else(PoisonError::into_inner);
        let history = json!({"history": series.recent}).to_string();
        // Queued without waiting (the queue is empty: this is the socket's first message), and
        // before the subscription, so it comes ahead of every published point.
        if tx.try_send(Message::text(history)).is_err() {
            return;
        }
        hub.subscribe(TOPIC, &tx)
    };
    tracing::info!(
        peer = ?rx.peer_addr(),
        watching = hub.subscriber_count(TOPIC),
        "page connected"
    );
    // The page sends nothing that matters; wait for it to close.
    while rx.recv().await.is_some() {}
    drop(subscription);
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let hub = Hub::new();
    let series = Arc::new(Mutex::new(Series::default()));
    tokio::spawn(produce(hub.clone(), series.clone()));

    let socket = WebSocketLayer::new(move |ws: WebSocket| plot(ws, hub.clone(), series.clone()))
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
