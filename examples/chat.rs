//! A chat room in the browser, eventlet's `websocket_chat` rebuilt on the crate's [`Hub`].
//!
//! `GET /` serves a page where a person picks a name and chats; the page's WebSocket is on
//! `/chat`. Every participant sees every message, their own included: the server publishes
//! each message to the room and the page shows what comes back. Joins and departures are
//! announced with the number of people online.
//!
//! ```text
//! cargo run --example chat            # then open http://127.0.0.1:3000 in two windows
//! ADDR=127.0.0.1:9002 cargo run --example chat
//! ```
//!
//! With the feature `redis` and `REDIS_URL` set, the room spans every process that uses the
//! same Redis: people on either port hear each other. `GET /redis` then answers the backend's
//! state and counters as JSON, and its events are logged.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ ADDR=127.0.0.1:3000 cargo run --features redis --example chat
//! REDIS_URL=redis://127.0.0.1:6379/ ADDR=127.0.0.1:3001 cargo run --features redis --example chat
//! ```
//!
//! The messages are JSON text. The page sends `{"type":"join","name":"alice"}` first, then
//! `{"type":"say","text":"hi"}`; the server sends `{"type":"welcome","name":..,"online":..}`
//! to the one who joined, and publishes `{"type":"message","name":..,"text":..}` and
//! `{"type":"joined"|"left","name":..,"online":..}` to the room. Anything else gets
//! `{"type":"error","text":..}` back.

use axum::{extract::State, response::Html, routing::get, Router};
use serde_json::{json, Value};
use tower_websocket::{CloseCode, Hub, Message, WebSocket, WebSocketLayer};

#[path = "common/serve.rs"]
mod serve;

/// The one room everybody is in.
const ROOM: &str = "lobby";
/// Longest name, in characters.
const MAX_NAME: usize = 24;
/// Longest message, in characters.
const MAX_TEXT: usize = 2000;

/// What a page may send.
enum Request {
    Join(String),
    Say(String),
}

/// Reads a page's message; `Err` says what is wrong with it.
fn parse(msg: &Message) -> Result<Request, &'static str> {
    let text = msg.as_text().ok_or("send JSON text, not binary")?;
    let value: Value = serde_json::from_str(text).map_err(|_| "not JSON")?;
    let field = |name| value.get(name).and_then(Value::as_str).map(str::trim);
    match value.get("type").and_then(Value::as_str) {
        Some("join") => match field("name") {
            Some(name) if !name.is_empty() && name.chars().count() <= MAX_NAME => {
                Ok(Request::Join(name.to_string()))
            }
            _ => Err("a name is 1 to 24 characters"),
        },
        Some("say") => match field("text") {
            Some(text) if !text.is_empty() && text.chars().count() <= MAX_TEXT => {
                Ok(Request::Say(text.to_string()))
            }
            _ => Err("a message is 1 to 2000 characters"),
        },
        _ => Err("unknown message type"),
    }
}

fn json_message(value: Value) -> Message {
    Message::text(value.to_string())
}

/// One participant: join with a name, then every message goes to the whole room.
async fn chat(ws: WebSocket, State(hub): State<Hub>) {
    let (mut rx, tx) = ws.split();
    let who = rx
        .peer_addr()
        .map_or_else(|| "?".to_string(), |a| a.to_string());

    // Until the page has sent a valid name, nothing is published and nothing received.
    let name = loop {
        let Some(msg) = rx.recv().await else { return };
        match parse(&msg) {
            Ok(Request::Join(name)) => break name,
            Ok(Request::Say(_)) => {
                let _ = tx
                    .close_with(CloseCode::POLICY_VIOLATION, "join with a name first")
                    .await;
                return;
            }
            Err(problem) => {
                if tx
                    .send(json_message(json!({"type": "error", "text": problem})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    };

    let subscription = hub.subscribe(ROOM, &tx);
    let online = hub.subscriber_count(ROOM);
    tracing::info!(%who, %name, online, "joined");
    // Straight to this socket, ahead of anything the room publishes from now on.
    if tx
        .send(json_message(
            json!({"type": "welcome", "name": name, "online": online}),
        ))
        .await
        .is_err()
    {
        return;
    }
    hub.publish(
        ROOM,
        json_message(json!({"type": "joined", "name": name, "online": online})),
    );

    while let Some(msg) = rx.recv().await {
        let reply = match parse(&msg) {
            Ok(Request::Say(text)) => {
                let delivery = hub.publish(
                    ROOM,
                    json_message(json!({"type": "message", "name": name, "text": text})),
                );
                if delivery.dropped > 0 {
                    tracing::debug!(dropped = delivery.dropped, "slow readers missed a message");
                }
                continue;
            }
            Ok(Request::Join(_)) => "already joined",
            Err(problem) => problem,
        };
        if tx
            .send(json_message(json!({"type": "error", "text": reply})))
            .await
            .is_err()
        {
            break;
        }
    }

    drop(subscription);
    let online = hub.subscriber_count(ROOM);
    tracing::info!(%who, %name, online, "left");
    hub.publish(
        ROOM,
        json_message(json!({"type": "left", "name": name, "online": online})),
    );
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let mut app = Router::new();
    let hub = match std::env::var("REDIS_URL") {
        Ok(url) => {
            let (hub, routes) = redis_hub(&url).await;
            app = app.merge(routes);
            hub
        }
        Err(_) => Hub::new(),
    };

    // The hub is the application's state: the handler takes it as axum handlers do.
    let socket = WebSocketLayer::with_state(hub, chat)
        // Chat lines are small: no need for the 16 MiB default.
        .max_message_size(64 << 10);
    // `/chat` only speaks WebSocket (426 to anything else); every other path is the router's.
    let app = app
        .route("/", get(|| async { Html(include_str!("pages/chat.html")) }))
        .route_service("/chat", socket.into_service());

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_string());
    let listener = serve::bind(&addr).await;
    tracing::info!(
        "chat server on http://{}",
        listener.local_addr().expect("bound address")
    );
    serve::serve(listener, app, std::future::pending()).await;
}

/// A hub shared through the Redis at `url`, and a `GET /redis` route with its state.
#[cfg(feature = "redis")]
async fn redis_hub(url: &str) -> (Hub, Router) {
    use tower_websocket::hub::redis::{RedisBackend, RedisEvent};

    let backend = RedisBackend::connect(url)
        .await
        .unwrap_or_else(|e| panic!("REDIS_URL={url}: {e}"));
    tracing::info!(node = backend.node_id(), "room shared through Redis");
    let mut events = backend.events();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                RedisEvent::Gap { topic, missed, .. } => {
                    tracing::warn!(%topic, missed, "redis event: Gap")
                }
                other => tracing::info!("redis event: {other:?}"),
            }
        }
    });
    let state = {
        let backend = backend.clone();
        move || {
            let backend = backend.clone();
            async move {
                let s = backend.stats();
                axum::Json(json!({
                    "node": backend.node_id(),
                    "connected": backend.is_connected(),
                    "published": s.published,
                    "dropped_queue_full": s.dropped_queue_full,
                    "dropped_disconnected": s.dropped_disconnected,
                    "received": s.received,
                    "local_dropped": s.local_dropped,
                    "own_skipped": s.own_skipped,
                    "invalid": s.invalid,
                    "stale": s.stale,
                    "missed": s.missed,
                    "disconnects": s.disconnects,
                }))
            }
        }
    };
    let hub = Hub::with_backend(backend);
    (hub, Router::new().route("/redis", get(state)))
}

#[cfg(not(feature = "redis"))]
async fn redis_hub(_url: &str) -> (Hub, Router) {
    panic!("REDIS_URL is set, but this example was built without the feature `redis`");
}
