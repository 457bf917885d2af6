//! The fan-out servers, one kind per process (`bench fanout-server <kind>`), each on one CPU.
//! Every kind serves WebSocket upgrades on two paths: a socket opened on [`SUB_PATH`] is
//! subscribed to one topic and never sends; every message that arrives on a socket opened on
//! [`PUB_PATH`] is published to that topic, to every subscriber.
//!
//! - `layer`: this crate's `WebSocketLayer` (every default, so a send queue of 64 messages
//!   under `QueuePolicy::Wait`, which the hub's `try_send` turns into "miss the message")
//!   with a [`Hub`]: `hub.subscribe` and `hub.publish`.
//! - `bun`: `Bun.serve` with `ws.subscribe(topic)` and `server.publish(topic, msg)`
//!   (`bench/bun/fanout.js`): this process pins itself and then becomes Bun (`exec`).
//! - `axum-broadcast`: axum's built-in ws and a `tokio::sync::broadcast` channel, the usual
//!   axum answer: each subscriber splits its socket and a task forwards `rx.recv()` to the
//!   sink with `send` (a flush per message).
//! - `fastwebsockets-broadcast`: raw fastwebsockets with hyper and the same broadcast channel;
//!   each subscriber's socket is split and a task writes every received message as a frame.
//!
//! - `stub`: not a server under test but the load generator's yardstick, run only when named
//!   (`--fanout-kinds stub`): it answers the handshake by hand, frames each published message
//!   once into a shared buffer, and one loop writes everything framed since its last pass to
//!   every subscriber in one write each. It does the least a fan-out server can, so its row
//!   shows how many deliveries the load generator itself can count.
//!
//! Both broadcast channels hold [`BROADCAST_CAPACITY`] messages; a subscriber that falls
//! further behind skips what it missed (`RecvError::Lagged`) and goes on.

use std::cell::RefCell;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;

use axum::extract::ws::{Message as AxumMessage, WebSocket as AxumSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use fastwebsockets::{upgrade, Frame, OpCode, Payload, WebSocketError};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Notify};
use tokio::task::LocalSet;
use tower_websocket::hub::Hub;
use tower_websocket::{WebSocket, WebSocketLayer};

/// Subscribers open their socket on this path.
pub const SUB_PATH: &str = "/sub";
/// The publisher opens its socket on this path.
pub const PUB_PATH: &str = "/pub";
/// The one topic.
const TOPIC: &str = "fanout";
/// Messages a `tokio::sync::broadcast` channel keeps for its slowest receiver.
pub const BROADCAST_CAPACITY: usize = 1024;

/// A fan-out server implementation under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanoutKind {
    /// This crate's layer with its hub.
    Layer,
    /// Bun's built-in publish/subscribe: a reference of the ratios.
    Bun,
    /// Bun again, the same server run a second time in each round: its ratio to `bun` is the
    /// run's noise (the A/A of the fan-out ratios).
    BunAa,
    /// axum's ws with a broadcast channel: the other reference.
    AxumBroadcast,
    /// Raw fastwebsockets with a broadcast channel.
    FastwebsocketsBroadcast,
    /// The least a fan-out server can do: the load generator's yardstick.
    Stub,
}

impl FanoutKind {
    /// The kinds `bench run` runs when none is named (every kind but the stub), in the order
    /// the first round runs them.
    pub const ALL: [FanoutKind; 5] = [
        FanoutKind::Layer,
        FanoutKind::Bun,
        FanoutKind::AxumBroadcast,
        FanoutKind::FastwebsocketsBroadcast,
        FanoutKind::BunAa,
    ];

    /// Whether the kind runs Bun's binary.
    pub fn is_bun(self) -> bool {
        matches!(self, FanoutKind::Bun | FanoutKind::BunAa)
    }
}

crate::process::named_enum!(FanoutKind, "fan-out kind", {
    Layer => "layer",
    Bun => "bun",
    BunAa => "bun-aa",
    AxumBroadcast => "axum-broadcast",
    FastwebsocketsBroadcast => "fastwebsockets-broadcast",
    Stub => "stub",
});

/// The script `bun` runs.
pub fn bun_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/bun/fanout.js")
}

/// Runs one fan-out server until killed: pins it, binds, prints `READY pid=<pid> addr=<addr>`.
/// For `bun`, pins this process and replaces it with `bun` (the pin, the open-files limit and
/// the parent-death signal carry over `exec`); `bun` is then the binary to run.
pub fn serve(
    kind: FanoutKind,
    addr: SocketAddr,
    cpu: Option<usize>,
    bun: Option<&Path>,
) -> io::Result<()> {
    if let Some(cpu) = cpu {
        crate::sys::pin_to_cpu(cpu)?;
    }
    if kind.is_bun() {
        use std::os::unix::process::CommandExt;
        let bun = bun.ok_or_else(|| io::Error::other("the bun kind needs --bun PATH"))?;
        let err = std::process::Command::new(bun)
            .args(["run", bun_script()])
            .env("FANOUT_PORT", addr.port().to_string())
            .exec();
        return Err(io::Error::other(format!("exec {}: {err}", bun.display())));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(addr).await?;
        println!(
            "READY pid={} addr={}",
            std::process::id(),
            listener.local_addr()?
        );
        match kind {
            FanoutKind::Layer => serve_axum(listener, layer_router()).await,
            FanoutKind::AxumBroadcast => serve_axum(listener, axum_broadcast_router()).await,
            FanoutKind::FastwebsocketsBroadcast => serve_fastwebsockets(listener).await,
            FanoutKind::Stub => LocalSet::new().run_until(serve_stub(listener)).await,
            FanoutKind::Bun | FanoutKind::BunAa => unreachable!("bun runs as its own binary"),
        }
    })
}

async fn serve_axum(listener: TcpListener, app: Router) -> io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

/// `layer`: the layer around a Router that has the two paths, with a hub.
fn layer_router() -> Router {
    let hub = Hub::new();
    let handler = move |ws: WebSocket| layer_connection(hub.clone(), ws);
    Router::new()
        .route("/", get(|| async { "not a WebSocket" }))
        .route(SUB_PATH, get(|| async { "not a WebSocket" }))
        .route(PUB_PATH, get(|| async { "not a WebSocket" }))
        .layer(WebSocketLayer::new(handler))
}

async fn layer_connection(hub: Hub, mut ws: WebSocket) {
    if ws.path() == PUB_PATH {
        while let Some(msg) = ws.recv().await {
            hub.publish(TOPIC, msg);
        }
    } else {
        let (mut rx, tx) = ws.split();
        let _subscription = hub.subscribe(TOPIC, &tx);
        while rx.recv().await.is_some() {}
    }
}

/// `axum-broadcast`: axum's upgrade extractor on both paths, sharing one broadcast channel.
fn axum_broadcast_router() -> Router {
    let (tx, _) = broadcast::channel::<Bytes>(BROADCAST_CAPACITY);
    Router::new()
        .route(SUB_PATH, get(axum_subscribe))
        .route(PUB_PATH, get(axum_publish))
        .with_state(tx)
}

async fn axum_subscribe(
    ws: WebSocketUpgrade,
    State(tx): State<broadcast::Sender<Bytes>>,
) -> Response {
    let rx = tx.subscribe();
    ws.on_upgrade(move |socket| axum_subscriber(socket, rx))
}

async fn axum_subscriber(socket: AxumSocket, mut rx: broadcast::Receiver<Bytes>) {
    let (mut sink, mut stream) = socket.split();
    let forward = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(bytes) => {
                    if sink.send(AxumMessage::Binary(bytes)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    while let Some(Ok(_)) = stream.next().await {}
    forward.abort();
}

async fn axum_publish(
    ws: WebSocketUpgrade,
    State(tx): State<broadcast::Sender<Bytes>>,
) -> Response {
    ws.on_upgrade(move |mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if let AxumMessage::Binary(bytes) = msg {
                // An error means no subscriber yet: nothing to deliver.
                let _ = tx.send(bytes);
            }
        }
    })
}

async fn serve_fastwebsockets(listener: TcpListener) -> io::Result<()> {
    let (tx, _) = broadcast::channel::<Bytes>(BROADCAST_CAPACITY);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let tx = tx.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = service_fn(move |req| fastwebsockets_upgrade(req, tx.clone()));
            let conn = http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades();
            let _ = conn.await;
        });
    }
}

async fn fastwebsockets_upgrade(
    mut req: hyper::Request<Incoming>,
    tx: broadcast::Sender<Bytes>,
) -> Result<hyper::Response<Empty<Bytes>>, WebSocketError> {
    let publisher = req.uri().path() == PUB_PATH;
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::task::spawn(async move {
        let _ = if publisher {
            fastwebsockets_publisher(fut, tx).await
        } else {
            fastwebsockets_subscriber(fut, tx.subscribe()).await
        };
    });
    Ok(response)
}

async fn fastwebsockets_publisher(
    fut: upgrade::UpgradeFut,
    tx: broadcast::Sender<Bytes>,
) -> Result<(), WebSocketError> {
    let mut ws = fastwebsockets::FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Binary | OpCode::Text => {
                let _ = tx.send(Bytes::copy_from_slice(&frame.payload));
            }
            _ => {}
        }
    }
}

async fn fastwebsockets_subscriber(
    fut: upgrade::UpgradeFut,
    mut rx: broadcast::Receiver<Bytes>,
) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    let (mut read, mut write) = ws.split(tokio::io::split);
    let forward = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(bytes) => {
                    let frame = Frame::binary(Payload::Borrowed(&bytes));
                    if write.write_frame(frame).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    // Subscribers send nothing but their close: the read half only waits for the end, and
    // the frames it would owe (a pong, the close reply) are not sent.
    let mut no_reply = |_: Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) };
    let result = loop {
        match read.read_frame(&mut no_reply).await {
            Ok(frame) if frame.opcode == OpCode::Close => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    forward.abort();
    result
}

/// A stub subscriber that falls this far behind misses what does not fit.
const STUB_BACKLOG: usize = 64 * 1024;

/// What the stub's connections share, on its one thread.
#[derive(Default)]
struct StubHub {
    /// Frames published since the writer's last pass.
    pending: RefCell<Vec<u8>>,
    subscribers: RefCell<Vec<StubSubscriber>>,
    published: Notify,
}

struct StubSubscriber {
    /// Non-blocking, written without the runtime: the writer tries every socket each pass.
    stream: std::net::TcpStream,
    /// Bytes the socket did not take yet.
    backlog: Vec<u8>,
}

impl StubSubscriber {
    /// Writes `chunk` after the backlog; false when the socket failed.
    fn write(&mut self, chunk: &[u8]) -> bool {
        if self.backlog.is_empty() {
            let n = match write_some(&mut self.stream, chunk) {
                Ok(n) => n,
                Err(_) => return false,
            };
            self.backlog.extend_from_slice(&chunk[n..]);
            return true;
        }
        if self.backlog.len() + chunk.len() <= STUB_BACKLOG {
            self.backlog.extend_from_slice(chunk);
        }
        match write_some(&mut self.stream, &self.backlog) {
            Ok(n) => {
                self.backlog.drain(..n);
                true
            }
            Err(_) => false,
        }
    }
}

/// One non-blocking write: the bytes taken, 0 when the socket is full.
fn write_some(stream: &mut std::net::TcpStream, bytes: &[u8]) -> io::Result<usize> {
    if bytes.is_empty() {
        return Ok(0);
    }
    match stream.write(bytes) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

async fn serve_stub(listener: TcpListener) -> io::Result<()> {
    let hub = Rc::new(StubHub::default());
    tokio::task::spawn_local(stub_writer(Rc::clone(&hub)));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let hub = Rc::clone(&hub);
        tokio::task::spawn_local(async move {
            let _ = stub_connection(stream, hub).await;
        });
    }
}

/// Writes what was published to every subscriber, one write per subscriber per pass.
async fn stub_writer(hub: Rc<StubHub>) {
    let mut chunk = Vec::new();
    let mut behind = false;
    loop {
        if hub.pending.borrow().is_empty() {
            if behind {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            } else {
                hub.published.notified().await;
            }
        }
        chunk.clear();
        std::mem::swap(&mut chunk, &mut *hub.pending.borrow_mut());
        {
            let mut subscribers = hub.subscribers.borrow_mut();
            subscribers.retain_mut(|s| s.write(&chunk));
            behind = subscribers.iter().any(|s| !s.backlog.is_empty());
        }
        // The publisher's reader and new connections run between passes.
        tokio::task::yield_now().await;
    }
}

/// Answers the handshake, then either joins the subscribers or publishes what it reads.
async fn stub_connection(mut stream: TcpStream, hub: Rc<StubHub>) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let end = loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        if let Some(end) = crate::wire::head_end(&buf[..filled]) {
            break end;
        }
        if filled == buf.len() {
            return Err(io::Error::other("request head too long"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let key = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .ok_or_else(|| io::Error::other("no Sec-WebSocket-Key"))?;
    let publisher = head.starts_with(&format!("GET {PUB_PATH} "));
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        crate::wire::accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    if !publisher {
        hub.subscribers.borrow_mut().push(StubSubscriber {
            stream: stream.into_std()?,
            backlog: Vec::new(),
        });
        return Ok(());
    }
    buf.copy_within(end..filled, 0);
    filled -= end;
    loop {
        let mut at = 0;
        while let Some((header, len)) = crate::wire::Header::parse(&buf[at..filled]) {
            let size = usize::try_from(header.len).unwrap_or(usize::MAX);
            if size > buf.len() / 2 {
                return Err(io::Error::other(
                    "a published message too large for the stub",
                ));
            }
            if filled - at - len < size {
                break;
            }
            if header.masked {
                let mask = [
                    buf[at + len - 4],
                    buf[at + len - 3],
                    buf[at + len - 2],
                    buf[at + len - 1],
                ];
                let payload = &mut buf[at + len..at + len + size];
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= mask[i % 4]);
            }
            let payload = &buf[at + len..at + len + size];
            match header.opcode {
                crate::wire::OP_CLOSE => return Ok(()),
                crate::wire::OP_BINARY => {
                    let frame = crate::wire::server_frame(crate::wire::OP_BINARY, payload);
                    hub.pending.borrow_mut().extend_from_slice(&frame);
                    hub.published.notify_one();
                }
                _ => {}
            }
            at += len + size;
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
    }
}
