//! What an application writes against the public API: imports, sends that fail, streams and
//! sinks, handler errors, auth order, extractors and state. Through the in-process harness.

#![cfg(all(feature = "testing", feature = "axum"))]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use tokio::sync::mpsc;
use tower_websocket::testing::TestClient;
use tower_websocket::{
    CloseCode, Error, Message, QueuePolicy, SendError, WebSocket, WebSocketLayer,
};

fn app(layer: WebSocketLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "page" }))
        .layer(layer)
}

async fn connect(app: Router, path: &str) -> TestClient {
    TestClient::connect(app, Request::get(path).body(()).unwrap())
        .await
        .unwrap()
}

/// What a handler reports through a channel, bounded in time.
async fn reported<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("timed out waiting for the handler's report")
        .expect("the handler ended without reporting")
}

/// Everything logged on this thread while the guard lives (the tests run on a current-thread
/// runtime, so the connection tasks log here too).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Waits until a line with `needle` was logged.
    async fn wait_for(&self, needle: &str) -> String {
        for _ in 0..200 {
            if let Some(line) = self.lines_with(needle).pop() {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("nothing logged with {needle:?}");
    }
}

// ----- sending -----

#[tokio::test]
async fn send_takes_a_borrowed_string() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        let greeting = String::from("hello");
        let _ = ws.send(&greeting).await;
        let _ = ws.send(greeting).await;
    });
    let mut client = connect(app(layer), "/").await;
    assert_eq!(client.recv_text().await, "hello");
    assert_eq!(client.recv_text().await, "hello");
}

#[tokio::test]
async fn a_failed_send_hands_the_message_back() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            while ws.recv().await.is_some() {}
            let failed = ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap_err();
            tx.send(failed).unwrap();
        }
    });
    let mut client = connect(app(layer), "/").await;
    client.close(1000, "").await;
    let failed = reported(&mut rx).await;
    assert!(failed.is_closed());
    assert_eq!(failed.into_message(), Message::binary(vec![1u8, 2, 3]));
}

#[tokio::test]
async fn a_full_queue_hands_the_message_back_and_stays_open() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let sender = ws.sender();
            // Without yielding, the connection task cannot drain the queue of one.
            let first = sender.try_send("first");
            let second = sender.try_send("second");
            tx.send((first, second)).unwrap();
            while ws.recv().await.is_some() {}
        }
    })
    .send_queue(1, QueuePolicy::Fail);
    let mut client = connect(app(layer), "/").await;
    let (first, second) = reported(&mut rx).await;
    assert_eq!(first, Ok(()));
    assert_eq!(second, Err(SendError::QueueFull(Message::text("second"))));
    assert_eq!(client.recv_text().await, "first");
}

#[tokio::test]
async fn send_errors_convert_into_error_for_the_question_mark() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            while ws.recv().await.is_some() {}
            let result: Result<(), Error> = async { Ok(ws.send("late").await?) }.await;
            tx.send(result).unwrap();
        }
    });
    let mut client = connect(app(layer), "/").await;
    client.close(1000, "").await;
    assert_eq!(reported(&mut rx).await, Err(Error::Closed));
}

// ----- Stream and Sink -----

#[tokio::test]
async fn the_socket_is_a_stream_of_messages_that_ends_with_the_peers_close() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let mut received = Vec::new();
            while let Some(msg) = ws.next().await {
                received.push(msg);
            }
            // The stream ended with the peer's close, which is known now.
            tx.send((received, ws.peer_close().map(|f| u16::from(f.code))))
                .unwrap();
        }
    });
    let mut client = connect(app(layer), "/").await;
    client.send_text("a").await;
    client.send_binary(vec![0u8]).await;
    client.close(4000, "").await;
    let (received, code) = reported(&mut rx).await;
    assert_eq!(received, [Message::text("a"), Message::binary(vec![0u8])]);
    assert_eq!(code, Some(4000));
}

#[tokio::test]
async fn stream_combinators_work_on_the_receiver() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        let (rx, tx) = ws.split();
        let lengths: Vec<usize> = rx
            .filter(|m| std::future::ready(m.is_text()))
            .map(|m| m.len())
            .take(2)
            .collect()
            .await;
        let _ = tx.send(format!("{lengths:?}")).await;
    });
    let mut client = connect(app(layer), "/").await;
    client.send_text("abc").await;
    client.send_binary(vec![0u8; 10]).await;
    client.send_text("de").await;
    assert_eq!(client.recv_text().await, "[3, 2]");
}

#[tokio::test]
async fn forward_echoes_from_the_receiver_into_the_sender() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        let (rx, tx) = ws.split();
        let _ = rx.map(Ok).forward(tx).await;
    });
    let mut client = connect(app(layer), "/").await;
    client.send_text("one").await;
    client.send_binary(vec![2u8]).await;
    assert_eq!(client.recv_text().await, "one");
    assert_eq!(client.recv_binary().await, vec![2u8]);
}

#[tokio::test]
async fn sink_send_queues_and_sink_close_closes_with_1000() {
    let layer = WebSocketLayer::new(|mut ws: WebSocket| async move {
        SinkExt::send(&mut ws, Message::text("via the sink"))
            .await
            .unwrap();
        SinkExt::close(&mut ws).await.unwrap();
        // Once closed, the sink refuses more.
        let after = SinkExt::send(&mut ws, Message::text("late")).await;
        assert_eq!(after, Err(Error::Closed));
        while ws.recv().await.is_some() {}
    });
    let mut client = connect(app(layer), "/").await;
    assert_eq!(client.recv_text().await, "via the sink");
    client.expect_close(CloseCode::NORMAL).await;
}

#[tokio::test]
async fn sink_waits_for_room_under_the_wait_policy() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        let (_rx, mut tx) = ws.split();
        let messages = (0..20).map(|i| Ok(Message::text(i.to_string())));
        tx.send_all(&mut futures_util::stream::iter(messages))
            .await
            .unwrap();
    })
    .send_queue(2, QueuePolicy::Wait);
    let mut client = connect(app(layer), "/").await;
    for i in 0..20 {
        assert_eq!(client.recv_text().await, i.to_string());
    }
    client.expect_close(CloseCode::NORMAL).await;
}

// ----- handler errors -----

#[derive(Debug)]
struct StorageError(std::io::Error);

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("could not load the room's history")
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test]
async fn a_handler_error_is_logged_with_its_source_chain_and_closes_with_1011() {
    let (logs, _guard) = Captured::install();
    let layer = WebSocketLayer::new(|_ws: WebSocket| async move {
        let disk = std::io::Error::new(std::io::ErrorKind::NotFound, "history.db is missing");
        Err::<(), _>(StorageError(disk))
    });
    let mut client = connect(app(layer), "/").await;
    client.expect_close(CloseCode::INTERNAL_ERROR).await;
    let line = logs.wait_for("WebSocket handler failed").await;
    assert!(
        line.contains("could not load the room's history: history.db is missing"),
        "{line}"
    );
}

// ----- auth and the order of layers -----

#[derive(Clone, Debug)]
struct User(String);

/// An auth middleware: a user from the `x-user` header, or 401.
async fn auth(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, http::StatusCode> {
    let user = request
        .headers()
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .ok_or(http::StatusCode::UNAUTHORIZED)?
        .to_owned();
    request.extensions_mut().insert(User(user));
    Ok(next.run(request).await)
}

fn greeter() -> WebSocketLayer {
    WebSocketLayer::new(|ws: WebSocket| async move {
        let user = ws.extension::<User>().map(|u| u.0.clone());
        let _ = ws.send(format!("hello {user:?}")).await;
    })
    .require_extension::<User>()
}

fn as_user(path: &str, user: &str) -> Request<()> {
    Request::get(path).header("x-user", user).body(()).unwrap()
}

#[tokio::test]
async fn auth_outside_the_layer_gives_the_handler_its_user() {
    let app = Router::new()
        .route("/", get(|| async { "page" }))
        .layer(greeter())
        .layer(axum::middleware::from_fn(auth));
    let mut client = TestClient::connect(app, as_user("/", "ada")).await.unwrap();
    assert_eq!(client.recv_text().await, "hello Some(\"ada\")");
}

#[tokio::test]
async fn auth_inside_the_layer_makes_a_required_extension_refuse_upgrades_with_500() {
    // The one-line mistake: the auth layer is added first, so it is inside and never sees an
    // upgrade.
    let app = Router::new()
        .route("/", get(|| async { "page" }))
        .layer(axum::middleware::from_fn(auth))
        .layer(greeter());
    let refused = TestClient::connect(app, as_user("/", "ada"))
        .await
        .unwrap_err();
    assert_eq!(refused.status, http::StatusCode::INTERNAL_SERVER_ERROR);
    // The client is not told about the server's types.
    assert!(!refused.body.contains("User"), "{}", refused.body);
}

#[tokio::test]
async fn a_missing_required_extension_is_logged_with_its_type_name() {
    let (logs, _guard) = Captured::install();
    let app = Router::new()
        .layer(axum::middleware::from_fn(auth))
        .layer(greeter());
    let _ = TestClient::connect(app, as_user("/", "ada")).await;
    let line = logs.wait_for("ERROR").await;
    assert!(line.contains("app::User"), "{line}");
    assert!(line.contains("must run before the layer"), "{line}");
}

#[tokio::test]
async fn a_before_upgrade_hook_may_provide_the_required_extension() {
    let layer = greeter().before_upgrade(|request, _| {
        request.extensions.insert(User("from the hook".into()));
        Ok(())
    });
    let mut client = connect(app(layer), "/").await;
    assert_eq!(client.recv_text().await, "hello Some(\"from the hook\")");
}

// ----- path parameters and the original path -----

fn rooms(layer: WebSocketLayer) -> Router {
    Router::new()
        .route("/rooms/{room}", get(|| async { "the room's page" }))
        .layer(layer)
}

#[tokio::test]
async fn extract_reads_path_parameters() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        let axum::extract::Path(room) = ws.extract::<axum::extract::Path<String>>().await.unwrap();
        let _ = ws.send(room).await;
    });
    let mut client = connect(rooms(layer), "/rooms/lobby").await;
    assert_eq!(client.recv_text().await, "lobby");
}

#[tokio::test]
async fn extract_hands_back_the_extractors_rejection() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        let id = ws.extract::<axum::extract::Path<u32>>().await;
        let _ = ws.send(format!("{}", id.is_err())).await;
    });
    let mut client = connect(rooms(layer), "/rooms/lobby").await;
    assert_eq!(client.recv_text().await, "true");
}

#[tokio::test]
async fn in_a_nested_router_path_loses_the_prefix_and_original_uri_keeps_it() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        let matched = ws.extract::<axum::extract::MatchedPath>().await.unwrap();
        let original = ws.extract::<axum::extract::OriginalUri>().await.unwrap();
        let _ = ws
            .send(format!(
                "{} {} {}",
                ws.path(),
                matched.as_str(),
                original.path()
            ))
            .await;
    });
    let app = Router::new().nest("/api", rooms(layer));
    let mut client = connect(app, "/api/rooms/lobby").await;
    assert_eq!(
        client.recv_text().await,
        "/rooms/lobby /api/rooms/{room} /api/rooms/lobby"
    );
}

#[tokio::test]
async fn the_close_log_has_the_full_path_in_a_nested_router() {
    let (logs, _guard) = Captured::install();
    let layer = WebSocketLayer::new(|_ws: WebSocket| async {});
    let app = Router::new().nest("/api", rooms(layer));
    let mut client = connect(app, "/api/rooms/lobby").await;
    client.expect_close(CloseCode::NORMAL).await;
    let line = logs.wait_for("WebSocket connection closed").await;
    assert!(line.contains("path=/api/rooms/lobby"), "{line}");
}

// ----- application state and handler extractors -----

/// A state that counts its clones.
#[derive(Debug)]
struct Counted {
    clones: Arc<std::sync::atomic::AtomicUsize>,
    motd: &'static str,
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.clones
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted {
            clones: Arc::clone(&self.clones),
            motd: self.motd,
        }
    }
}

#[derive(Clone)]
struct AppState {
    counted: Counted,
    name: String,
}

// What `#[derive(FromRef)]` (axum's `macros` feature) writes.
impl axum::extract::FromRef<AppState> for Counted {
    fn from_ref(state: &AppState) -> Self {
        state.counted.clone()
    }
}

impl axum::extract::FromRef<AppState> for String {
    fn from_ref(state: &AppState) -> Self {
        state.name.clone()
    }
}

async fn stateful(
    ws: WebSocket,
    axum::extract::Path(room): axum::extract::Path<String>,
    axum::extract::State(counted): axum::extract::State<Counted>,
    axum::extract::State(name): axum::extract::State<String>,
) {
    let _ = ws.send(format!("{} {room} {name}", counted.motd)).await;
    let (mut rx, tx) = ws.split();
    while let Some(msg) = rx.recv().await {
        if tx.send(msg).await.is_err() {
            break;
        }
    }
}

fn app_state(clones: &Arc<std::sync::atomic::AtomicUsize>) -> AppState {
    AppState {
        counted: Counted {
            clones: Arc::clone(clones),
            motd: "welcome to",
        },
        name: "the server".into(),
    }
}

#[tokio::test]
async fn a_handler_takes_extractors_after_the_socket_with_sub_states() {
    let clones = Arc::default();
    let layer = WebSocketLayer::with_state(app_state(&clones), stateful);
    let mut client = connect(rooms(layer), "/rooms/lobby").await;
    assert_eq!(client.recv_text().await, "welcome to lobby the server");
}

#[tokio::test]
async fn state_is_cloned_once_per_connection_and_never_per_message() {
    let clones: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let layer = WebSocketLayer::with_state(app_state(&clones), stateful);
    let app = rooms(layer);
    let before = clones.load(std::sync::atomic::Ordering::Relaxed);
    let mut client = connect(app.clone(), "/rooms/lobby").await;
    client.recv_text().await;
    for i in 0..10 {
        client.send_text(i.to_string()).await;
        assert_eq!(client.recv_text().await, i.to_string());
    }
    // `State<Counted>` clones its part of the state once, for this connection.
    assert_eq!(
        clones.load(std::sync::atomic::Ordering::Relaxed) - before,
        1
    );
}

#[tokio::test]
async fn an_extractor_that_refuses_answers_the_handshake_with_its_rejection() {
    async fn numbered(ws: WebSocket, axum::extract::Path(n): axum::extract::Path<u32>) {
        let _ = ws.send(n.to_string()).await;
    }
    let layer = WebSocketLayer::with_state((), numbered);
    let refused = TestClient::connect(
        rooms(layer.clone()),
        Request::get("/rooms/lobby").body(()).unwrap(),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.status, http::StatusCode::BAD_REQUEST);
    assert!(refused.body.contains("Cannot parse"), "{}", refused.body);
    assert_eq!(layer.handle().metrics().rejected.bad_request, 1);
    // A number parses, and the socket opens.
    let mut client = connect(rooms(layer), "/rooms/7").await;
    assert_eq!(client.recv_text().await, "7");
}

#[tokio::test]
async fn handler_extractors_run_after_the_layers_own_checks() {
    async fn greet(ws: WebSocket, axum::Extension(user): axum::Extension<User>) {
        let _ = ws.send(user.0).await;
    }
    // The hook runs first and provides what the extractor reads.
    let layer = WebSocketLayer::with_state((), greet).before_upgrade(|request, _| {
        request.extensions.insert(User("from the hook".into()));
        Ok(())
    });
    let mut client = connect(app(layer), "/").await;
    assert_eq!(client.recv_text().await, "from the hook");
}
