//! The seam between the hub and a backend that spans processes: which calls a backend gets,
//! and when.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use common::{serve, within};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as T;
use tower_websocket::hub::{Hub, HubBackend, WeakHub};
use tower_websocket::{Message, WebSocket, WebSocketLayer};

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Records what the hub tells it, and keeps the hub it is attached to.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<String>>>,
    hub: Arc<Mutex<Option<WeakHub>>>,
}

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl HubBackend for Recorder {
    fn publish(&self, topic: &str, message: &Message) {
        let text = message.as_text().unwrap_or("?");
        self.calls
            .lock()
            .unwrap()
            .push(format!("publish {topic} {text}"));
    }

    fn attach(&self, hub: WeakHub) {
        self.calls.lock().unwrap().push("attach".to_string());
        *self.hub.lock().unwrap() = Some(hub);
    }

    fn subscribe(&self, topic: &str) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("subscribe {topic}"));
    }

    fn unsubscribe(&self, topic: &str) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("unsubscribe {topic}"));
    }
}

/// A server whose sockets subscribe to the topic they send as their first message, and leave
/// when they send a second one.
async fn server(hub: Hub, done: mpsc::UnboundedSender<()>) -> SocketAddr {
    let layer = WebSocketLayer::new(move |ws: WebSocket| {
        let (hub, done) = (hub.clone(), done.clone());
        async move {
            let (mut rx, tx) = ws.split();
            let Some(topic) = rx.recv().await else { return };
            let subscription = hub.subscribe(topic.as_text().unwrap_or("?"), &tx);
            let _ = done.send(());
            let _ = rx.recv().await;
            drop(subscription);
            let _ = done.send(());
            while rx.recv().await.is_some() {}
        }
    });
    serve(Router::new().layer(layer)).await
}

async fn connect(addr: SocketAddr) -> Client {
    tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn the_backend_hears_of_a_topics_first_and_last_local_subscriber_only() {
    let backend = Recorder::default();
    let hub = Hub::with_backend(backend.clone());
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let addr = server(hub.clone(), done_tx).await;
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    for client in [&mut a, &mut b] {
        client.send(T::text("room")).await.unwrap();
        within("subscribed", done.recv()).await.unwrap();
    }
    hub.publish("room", "hello");
    for client in [&mut a, &mut b] {
        client.send(T::text("leave")).await.unwrap();
        within("left", done.recv()).await.unwrap();
    }
    assert_eq!(
        backend.calls(),
        [
            "attach",
            "subscribe room",
            "publish room hello",
            "unsubscribe room"
        ]
    );
    // A topic that comes back is subscribed again.
    let mut c = connect(addr).await;
    c.send(T::text("room")).await.unwrap();
    within("subscribed", done.recv()).await.unwrap();
    assert_eq!(backend.calls().last().unwrap(), "subscribe room");
}

#[tokio::test]
async fn the_attached_hub_delivers_locally_and_does_not_keep_itself_alive() {
    let backend = Recorder::default();
    let hub = Hub::with_backend(backend.clone());
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let addr = server(hub.clone(), done_tx).await;
    let mut a = connect(addr).await;
    a.send(T::text("news")).await.unwrap();
    within("subscribed", done.recv()).await.unwrap();

    // What a backend receives from elsewhere goes to local subscribers, and not back out.
    let weak = backend.hub.lock().unwrap().clone().expect("attached");
    let d = weak
        .upgrade()
        .expect("the hub is alive")
        .deliver_local("news", "from afar");
    assert_eq!(d.delivered, 1);
    assert_eq!(
        within("delivery", a.next()).await.unwrap().unwrap(),
        T::text("from afar")
    );
    assert!(!backend.calls().iter().any(|c| c.starts_with("publish")));

    // The backend's handle does not keep a hub alive: the backend lives inside the hub, a
    // strong handle there would be a cycle.
    let other = Recorder::default();
    let hub = Hub::with_backend(other.clone());
    let weak = other.hub.lock().unwrap().clone().expect("attached");
    assert!(weak.upgrade().is_some());
    drop(hub);
    assert!(weak.upgrade().is_none());
}
