//! An in-process test client: connect to any tower service, an axum `Router` with the layer
//! inside included, with no TCP port.
//!
//! [`TestClient::connect`] serves one HTTP/1.1 connection of your service with hyper over an
//! in-memory pipe ([`tokio::io::duplex`]), sends your upgrade request from a hyper client on the
//! other end, and on `101 Switching Protocols` speaks WebSocket from the client side (masking its
//! frames, as a client must). Anything else comes back as a [`RefusedHandshake`] with the status,
//! headers and body of the answer.
//!
//! The request crosses a real HTTP/1.1 codec and the frames a real WebSocket codec, so what your
//! handler sees is what it would see behind `axum::serve`, but no port is bound, nothing can
//! collide with another test, and a test runs in a few milliseconds.
//!
//! ```
//! use axum::{routing::get, Router};
//! use http::Request;
//! use tower_websocket::testing::TestClient;
//! use tower_websocket::{Message, WebSocket, WebSocketLayer};
//!
//! async fn echo(mut ws: WebSocket) {
//!     while let Some(msg) = ws.recv().await {
//!         if ws.send(msg).await.is_err() {
//!             break;
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let app = Router::new()
//!     .route("/", get(|| async { "a page" }))
//!     .layer(WebSocketLayer::new(echo));
//!
//! // Only the path is needed: the harness fills in the handshake headers.
//! let mut client = TestClient::connect(app.clone(), Request::get("/ws").body(()).unwrap())
//!     .await
//!     .unwrap();
//! client.send_text("hello").await;
//! assert_eq!(client.recv_text().await, "hello");
//! client.send_binary(vec![1u8, 2, 3]).await;
//! assert_eq!(client.recv().await, Message::binary(vec![1u8, 2, 3]));
//! client.ping("are you there").await;
//! assert_eq!(client.close(1000, "done").await.code, 1000.into());
//!
//! // A refused handshake is an error that holds the answer.
//! let bad = Request::get("/ws").header("sec-websocket-version", "8").body(()).unwrap();
//! let refused = TestClient::connect(app, bad).await.unwrap_err();
//! assert_eq!(refused.status, http::StatusCode::UPGRADE_REQUIRED);
//! assert_eq!(refused.headers["sec-websocket-version"], "13");
//! # }
//! ```
//!
//! # Request extensions
//!
//! Extensions cannot travel over HTTP/1.1: the server side builds a new request from the bytes
//! it reads. The harness carries them across for you: the extensions of the request you pass to
//! `connect`, and those given to [`TestClientBuilder::extension`], are inserted into the request
//! the service receives (by a small wrapper around the service), next to hyper's own. This is
//! how a test stands in for `into_make_service_with_connect_info` or an authentication layer:
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::extract::ConnectInfo;
//! use axum::Router;
//! use http::Request;
//! use tower_websocket::testing::TestClient;
//! use tower_websocket::{WebSocket, WebSocketLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let app = Router::new().layer(WebSocketLayer::new(|ws: WebSocket| async move {
//!     let _ = ws.send(format!("{:?}", ws.peer_addr())).await;
//! }));
//! let addr: SocketAddr = "203.0.113.7:50000".parse().unwrap();
//!
//! // On the request...
//! let req = Request::get("/").extension(ConnectInfo(addr)).body(()).unwrap();
//! let mut client = TestClient::connect(app.clone(), req).await.unwrap();
//! assert_eq!(client.recv_text().await, "Some(203.0.113.7:50000)");
//!
//! // ...or on a builder, for every client it connects.
//! let builder = TestClient::builder().extension(ConnectInfo(addr));
//! let mut client = builder.connect(app, Request::get("/").body(()).unwrap()).await.unwrap();
//! assert_eq!(client.recv_text().await, "Some(203.0.113.7:50000)");
//! # }
//! ```
//!
//! # Timeouts and failures
//!
//! Every wait is bounded by the client's timeout ([`DEFAULT_TIMEOUT`], 5 s, unless set with
//! [`TestClientBuilder::timeout`] or [`TestClient::set_timeout`]), so a handler that hangs fails
//! the test instead of hanging it. The assertion methods ([`recv`](TestClient::recv),
//! [`expect_close`](TestClient::expect_close), ...) panic with a message that says what was
//! expected and what happened instead: the server closed, the connection ended, the time ran
//! out, or the server broke the protocol.
//!
//! Like a browser, the client answers the server's pings and close frame as soon as they
//! arrive, whether or not the test is reading; [`TestClientBuilder::auto_answer`] turns that off
//! to test the server's keepalive and close timeouts.
//!
//! The harness needs a Tokio runtime (it spawns the two ends of the connection); `#[tokio::test]`
//! is enough, the current-thread flavor included.
//!
//! The chapter [`docs::testing`](crate::docs::testing) walks through a whole test suite.

#![cfg_attr(docsrs, doc(cfg(feature = "testing")))]

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead, WebSocketWrite};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Extensions, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use sha1::{Digest, Sha1};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_service::Service;

use crate::handshake::{header_has_token, list};
use crate::socket::close::{CloseCode, CloseFrame};
use crate::socket::message::{Message, Utf8Bytes};

/// How long each wait of a [`TestClient`] lasts before it fails the test, unless set otherwise:
/// 5 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The size of each direction of the in-memory pipe, like a socket buffer.
const PIPE_CAPACITY: usize = 256 * 1024;

/// The GUID of RFC 6455 section 1.3, appended to the key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

type BoxError = Box<dyn StdError + Send + Sync>;
type Io = TokioIo<Upgraded>;

/// The answer to an upgrade request that was not `101 Switching Protocols`.
///
/// [`TestClient::connect`] returns it as its error, so a test can assert on a refusal:
///
/// ```
/// # use axum::Router;
/// # use http::{Request, StatusCode};
/// # use tower_websocket::{testing::TestClient, WebSocket, WebSocketLayer};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let app = Router::new().layer(WebSocketLayer::new(|_ws: WebSocket| async {}));
/// let req = Request::get("/ws").header("sec-websocket-key", "too short").body(()).unwrap();
/// let refused = TestClient::connect(app, req).await.unwrap_err();
/// assert_eq!(refused.status, StatusCode::BAD_REQUEST);
/// assert!(refused.body.contains("Sec-WebSocket-Key"), "{}", refused.body);
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RefusedHandshake {
    /// The status of the answer (400, 426, a route's 404 or 200, ...).
    pub status: StatusCode,
    /// The headers of the answer.
    pub headers: HeaderMap,
    /// The body of the answer, as text (invalid UTF-8 replaced with `U+FFFD`).
    pub body: String,
}

impl fmt::Display for RefusedHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the service answered the WebSocket handshake with {} instead of 101 Switching Protocols",
            self.status
        )?;
        let body = self.body.trim_end();
        if !body.is_empty() {
            write!(f, ": {body}")?;
        }
        Ok(())
    }
}

impl StdError for RefusedHandshake {}

/// Settings for [`TestClient`]s: the timeout, extensions for the server side, and whether to
/// fill in the handshake headers. One builder can connect any number of clients.
///
/// ```
/// # use std::time::Duration;
/// # use axum::Router;
/// # use http::Request;
/// # use tower_websocket::{testing::TestClient, WebSocket, WebSocketLayer};
/// #[derive(Clone)]
/// struct User(&'static str);
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let app = Router::new().layer(WebSocketLayer::new(|ws: WebSocket| async move {
///     let user = ws.extension::<User>().map(|u| u.0).unwrap_or("nobody");
///     let _ = ws.send(format!("hello {user}")).await;
/// }));
/// let alice = TestClient::builder()
///     .timeout(Duration::from_secs(1))
///     .extension(User("alice"));
/// let mut client = alice.connect(app, Request::get("/").body(()).unwrap()).await.unwrap();
/// assert_eq!(client.recv_text().await, "hello alice");
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct TestClientBuilder {
    timeout: Duration,
    extensions: Extensions,
    default_headers: bool,
    auto_answer: bool,
}

impl Default for TestClientBuilder {
    fn default() -> Self {
        TestClientBuilder {
            timeout: DEFAULT_TIMEOUT,
            extensions: Extensions::new(),
            default_headers: true,
            auto_answer: true,
        }
    }
}

impl TestClientBuilder {
    /// How long each wait lasts (the handshake, each `recv`, `ping`, `close`, ..., a send the
    /// server does not read) before it fails.
    ///
    /// Default: [`DEFAULT_TIMEOUT`] (5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// An extension to insert into the request the service receives, as an earlier layer or
    /// the server would have (axum's `ConnectInfo<SocketAddr>`, authentication claims, ...).
    ///
    /// Extensions set on the request passed to [`connect`](Self::connect) are carried over too,
    /// and win over these.
    pub fn extension<T>(mut self, value: T) -> Self
    where
        T: Clone + Send + Sync + 'static,
    {
        self.extensions.insert(value);
        self
    }

    /// Whether to fill in the handshake headers the request leaves out (`Host`, `Upgrade`,
    /// `Connection`, `Sec-WebSocket-Version`, `Sec-WebSocket-Key`). Turn it off to send a
    /// handshake with a header missing on purpose.
    ///
    /// Default: `true`. Headers the request sets are never changed either way.
    pub fn default_headers(mut self, fill_in: bool) -> Self {
        self.default_headers = fill_in;
        self
    }

    /// Whether the client answers the server's pings and close frame by itself, the moment
    /// they arrive, as a browser does (whether or not the test is reading).
    ///
    /// Turn it off to test what the server does with a client that does not answer: its
    /// keepalive ping timeout, its close timeout. The client then never sends a pong, and
    /// answers a close frame only when the test calls [`TestClient::close`].
    ///
    /// Default: `true`.
    pub fn auto_answer(mut self, answer: bool) -> Self {
        self.auto_answer = answer;
        self
    }

    /// Connects a client to `service` with `request`, over one in-process HTTP/1.1 connection.
    ///
    /// The request needs only a URI: the handshake headers it leaves out are filled in (see
    /// [`default_headers`](Self::default_headers)); the ones it sets are sent as they are, so a
    /// test can send a bad handshake on purpose. A URI with an authority
    /// (`ws://example.com/chat`) is sent in origin form (`/chat`) with that authority as `Host`,
    /// as a client would; otherwise `Host` is `localhost`. No `Origin` is added. The request's
    /// extensions are handed to the service (see the [module docs](self#request-extensions)).
    ///
    /// # Errors
    ///
    /// A [`RefusedHandshake`] when the service answers anything but `101`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime; when the service does not answer within the timeout, fails
    /// (returns an error) or drops the connection; and when its `101` is not a valid WebSocket
    /// answer (a wrong `Sec-WebSocket-Accept`, a subprotocol or extension that was not offered).
    pub async fn connect<S, B>(
        &self,
        service: S,
        request: Request<()>,
    ) -> Result<TestClient, RefusedHandshake>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (request, mut extensions) = self.prepare(request);
        let offer = Offer::of(&request);

        let (client_io, server_io) = tokio::io::duplex(PIPE_CAPACITY);
        let mut all_extensions = self.extensions.clone();
        all_extensions.extend(std::mem::take(&mut extensions));
        let service = TowerToHyperService::new(WithExtensions {
            inner: service,
            extensions: all_extensions,
        });
        let server = tokio::spawn(async move {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server_io), service)
                .with_upgrades()
                .await
        });

        let timeout = self.timeout;
        let response = tokio::time::timeout(timeout, async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(client_io)).await?;
            tokio::spawn(connection.with_upgrades());
            sender.send_request(request).await
        })
        .await;
        let mut response = match response {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                let server_error = server_outcome(server).await;
                panic!(
                    "the WebSocket handshake failed: {}{server_error}",
                    chain(&error)
                )
            }
            Err(_) => panic!(
                "timed out after {timeout:?} waiting for the service to answer the WebSocket handshake"
            ),
        };

        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let headers = std::mem::take(response.headers_mut());
            let body = match tokio::time::timeout(timeout, response.into_body().collect()).await {
                Ok(Ok(body)) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                Ok(Err(error)) => panic!(
                    "the service answered the WebSocket handshake with {status}, and reading its body failed: {}",
                    chain(&error)
                ),
                Err(_) => panic!(
                    "the service answered the WebSocket handshake with {status}, and its body did not end within {timeout:?}"
                ),
            };
            return Err(RefusedHandshake {
                status,
                headers,
                body,
            });
        }

        offer.check(response.headers());
        let headers = response.headers().clone();
        let upgraded = match tokio::time::timeout(timeout, hyper::upgrade::on(&mut response)).await
        {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(error)) => panic!(
                "the service answered 101, but the connection could not be taken over: {}",
                chain(&error)
            ),
            Err(_) => panic!(
                "the service answered 101, but the connection was not handed over within {timeout:?}"
            ),
        };
        Ok(TestClient::new(
            upgraded,
            headers,
            timeout,
            self.auto_answer,
        ))
    }

    /// Fills in the handshake and takes the extensions off the request.
    fn prepare(&self, request: Request<()>) -> (Request<Empty<Bytes>>, Extensions) {
        let (mut parts, ()) = request.into_parts();
        let extensions = std::mem::take(&mut parts.extensions);

        // A client sends the origin form and names the authority in `Host`.
        if let Some(authority) = parts.uri.authority().cloned() {
            if !parts.headers.contains_key(header::HOST) {
                if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(header::HOST, host);
                }
            }
            let origin_form = parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned();
            if let Ok(uri) = Uri::try_from(origin_form) {
                parts.uri = uri;
            }
        }

        if self.default_headers {
            let headers = &mut parts.headers;
            let mut fill = |name: HeaderName, value: HeaderValue| {
                if !headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            };
            fill(header::HOST, HeaderValue::from_static("localhost"));
            fill(header::UPGRADE, HeaderValue::from_static("websocket"));
            fill(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            fill(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            fill(header::SEC_WEBSOCKET_KEY, random_key());
        }
        (Request::from_parts(parts, Empty::new()), extensions)
    }
}

/// The client end of one WebSocket connection to a service, made by [`TestClient::connect`].
///
/// Its methods are assertions: each waits at most the client's timeout and panics with a clear
/// message when the server does not do what it expects. Like a browser, the client answers the
/// server's pings and close frame as soon as they arrive, whether or not the test is reading
/// (see [`TestClientBuilder::auto_answer`]). Dropping the client ends the connection without a
/// close frame (the server sees the transport end, as when a browser tab dies).
pub struct TestClient {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    frames: mpsc::UnboundedReceiver<FromReader>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    response_headers: HeaderMap,
    timeout: Duration,
    /// Messages read while waiting for something else (a pong, a ping, the answer to a close).
    pending: VecDeque<Message>,
    /// A fragmented message being reassembled.
    partial: Option<(OpCode, BytesMut)>,
    /// Whether this side has sent a close frame (its own, or the answer to the server's).
    close_sent: bool,
    /// The server's close frame, once read (1005 when it had no code).
    server_close: Option<CloseFrame>,
    /// Why the connection ended, once it has.
    ended: Option<String>,
    /// Whether the reader task answers pings and the server's close frame.
    auto_answer: bool,
}

/// What the reader task hands the client: every frame, pings and close included.
enum FromReader {
    Frame {
        fin: bool,
        opcode: OpCode,
        payload: Bytes,
    },
    /// The connection ended: why.
    End(String),
}

/// A frame for the writer task, masked when written.
struct Outgoing {
    opcode: OpCode,
    payload: Vec<u8>,
    /// Told once the frame is written (or could not be): the test's sends wait for it.
    written: Option<oneshot::Sender<()>>,
}

/// What a wait does with one event (see `TestClient::wait_for`).
enum Seen<T> {
    /// The wait is over, with this.
    Done(T),
    /// Skip it and go on waiting.
    Wait,
    /// Leave it to the default.
    Default(Event),
}

/// What the client makes of what it reads.
enum Event {
    Message(Message),
    Ping(Bytes),
    Pong(Bytes),
    Close(CloseFrame),
    End(String),
    TimedOut,
}

impl TestClient {
    /// A builder, to set the timeout or extensions for the server side.
    pub fn builder() -> TestClientBuilder {
        TestClientBuilder::default()
    }

    /// Connects a client to `service` with `request`, with the default settings. See
    /// [`TestClientBuilder::connect`].
    ///
    /// # Errors
    ///
    /// A [`RefusedHandshake`] when the service answers anything but `101`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, and when the service does not answer properly within the
    /// default timeout (see [`TestClientBuilder::connect`]).
    pub async fn connect<S, B>(
        service: S,
        request: Request<()>,
    ) -> Result<TestClient, RefusedHandshake>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        TestClient::builder().connect(service, request).await
    }

    fn new(
        upgraded: Upgraded,
        response_headers: HeaderMap,
        timeout: Duration,
        auto_answer: bool,
    ) -> Self {
        let (read_io, write_io) = tokio::io::split(TokioIo::new(upgraded));
        let (mut reader, writer) =
            fastwebsockets::after_handshake_split(read_io, write_io, Role::Client);
        // The reader task answers pings and closes itself (or not at all).
        reader.set_auto_pong(false);
        reader.set_auto_close(false);
        let (outgoing, queue) = mpsc::unbounded_channel();
        let (tx, frames) = mpsc::unbounded_channel();
        // Reading and writing happen in tasks of their own: a timeout never drops a half-read
        // or half-written frame (fastwebsockets is not cancel safe), and answers to pings go
        // out while the test is busy elsewhere, without the reader ever waiting on a write.
        let answers = auto_answer.then(|| outgoing.clone());
        let reader = tokio::spawn(read_frames(reader, tx, answers));
        let writer = tokio::spawn(write_frames(writer, queue));
        TestClient {
            outgoing,
            frames,
            reader,
            writer,
            response_headers,
            timeout,
            pending: VecDeque::new(),
            partial: None,
            close_sent: false,
            server_close: None,
            ended: None,
            auto_answer,
        }
    }

    /// The headers of the server's `101 Switching Protocols`.
    pub fn response_headers(&self) -> &HeaderMap {
        &self.response_headers
    }

    /// The subprotocol the server agreed to (its `Sec-WebSocket-Protocol`), if any.
    pub fn protocol(&self) -> Option<&str> {
        self.response_headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|p| p.to_str().ok())
    }

    /// How long each wait lasts before it fails.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets how long each later wait lasts before it fails.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends a message, in one frame, and waits until it is written.
    ///
    /// A write that fails because the server has already gone is not an error here: the test
    /// notices at its next read, as a real client would.
    ///
    /// # Panics
    ///
    /// After this client closed or read the server's close frame (a client may not send data
    /// then), and when the server does not read it within the timeout.
    pub async fn send(&mut self, message: impl Into<Message>) {
        let message = message.into();
        self.check_can_send("send a message");
        let opcode = match &message {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        };
        self.write(opcode, message.as_bytes().to_vec(), "a message")
            .await;
    }

    /// Sends a text message. See [`send`](Self::send).
    pub async fn send_text(&mut self, text: impl Into<Utf8Bytes>) {
        self.send(Message::Text(text.into())).await;
    }

    /// Sends a binary message. See [`send`](Self::send).
    pub async fn send_binary(&mut self, data: impl Into<Bytes>) {
        self.send(Message::Binary(data.into())).await;
    }

    /// The next message from the server, within the client's timeout.
    ///
    /// Pings and unsolicited pongs read meanwhile are skipped.
    ///
    /// # Panics
    ///
    /// When the server closes, the connection ends or the server breaks the protocol before a
    /// message arrives, and when none arrives within the timeout.
    pub async fn recv(&mut self) -> Message {
        self.recv_timeout(self.timeout).await
    }

    /// The next message from the server, within `timeout`. See [`recv`](Self::recv).
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Message {
        if let Some(message) = self.pending.pop_front() {
            return message;
        }
        if let Some(frame) = &self.server_close {
            panic!(
                "expected a message, but the server had already closed the connection ({})",
                describe(frame)
            );
        }
        let timed_out =
            || format!("expected a message from the server within {timeout:?}, but none came");
        self.wait_for("a message", timeout, timed_out, |event| match event {
            Event::Message(message) => Seen::Done(message),
            other => Seen::Default(other),
        })
        .await
    }

    /// The next message, which must be text. See [`recv`](Self::recv).
    ///
    /// # Panics
    ///
    /// As [`recv`](Self::recv), and when the message is binary.
    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Message::Text(text) => text.as_str().to_owned(),
            Message::Binary(data) => {
                panic!("expected a text message, got a binary one: {data:?}")
            }
        }
    }

    /// The next message, which must be binary. See [`recv`](Self::recv).
    ///
    /// # Panics
    ///
    /// As [`recv`](Self::recv), and when the message is text.
    pub async fn recv_binary(&mut self) -> Bytes {
        match self.recv().await {
            Message::Binary(data) => data,
            Message::Text(text) => panic!("expected a binary message, got a text one: {text:?}"),
        }
    }

    /// Waits `duration` and checks that no message arrived meanwhile.
    ///
    /// If the server closes or the connection ends, there is no message to come: this returns
    /// at once, and [`expect_close`](Self::expect_close) tells the code.
    ///
    /// # Panics
    ///
    /// When a message arrives (or had arrived, unread, before the call).
    pub async fn expect_no_message(&mut self, duration: Duration) {
        if let Some(message) = self.pending.pop_front() {
            panic!("expected no message, but one had arrived: {message:?}");
        }
        if self.server_close.is_some() || self.ended.is_some() {
            return;
        }
        self.wait_for("no message", duration, String::new, |event| match event {
            Event::Message(message) => {
                panic!("expected no message for {duration:?}, but the server sent {message:?}")
            }
            Event::Close(_) | Event::End(_) | Event::TimedOut => Seen::Done(()),
            other => Seen::Default(other),
        })
        .await
    }

    /// Sends a ping and waits for the server's pong with the same payload.
    ///
    /// The payload is sent as it is, unchecked (a ping over 125 bytes breaks the protocol).
    /// Messages that arrive meanwhile are kept for [`recv`](Self::recv), in order.
    ///
    /// # Panics
    ///
    /// When the server closes or the connection ends first, and when no pong comes within the
    /// timeout.
    pub async fn ping(&mut self, payload: impl Into<Bytes>) {
        let payload = payload.into();
        self.check_can_send("ping");
        self.write(OpCode::Ping, payload.to_vec(), "a ping").await;
        let timeout = self.timeout;
        let timed_out =
            || format!("expected a pong for {payload:?} within {timeout:?}, but none came");
        self.wait_for("a pong", timeout, timed_out, |event| match event {
            Event::Pong(pong) if pong == payload => Seen::Done(()),
            other => Seen::Default(other),
        })
        .await
    }

    /// Waits for the server's next ping and returns its payload (a keepalive ping, say).
    ///
    /// Unless [`auto_answer`](TestClientBuilder::auto_answer) is off, it has been answered
    /// already. Messages that arrive meanwhile are kept for [`recv`](Self::recv), in order.
    ///
    /// # Panics
    ///
    /// When the server closes or the connection ends first, and when no ping comes within the
    /// timeout.
    pub async fn expect_ping(&mut self) -> Bytes {
        let timeout = self.timeout;
        let timed_out =
            || format!("expected a ping from the server within {timeout:?}, but none came");
        self.wait_for("a ping", timeout, timed_out, |event| match event {
            Event::Ping(payload) => Seen::Done(payload),
            other => Seen::Default(other),
        })
        .await
    }

    /// Starts the closing handshake with `code` and `reason`, and returns the server's answer.
    ///
    /// The code and reason are sent as they are, unchecked, so a test can send one that may not
    /// be sent (`1005`, a reason over 123 bytes) and see the server's answer. Messages the
    /// server sent before its close frame are kept for [`recv`](Self::recv). An answer without
    /// a code is returned as 1005 ([`CloseCode::NO_STATUS`]).
    ///
    /// When the server's close frame was read already and not answered (with
    /// [`auto_answer`](TestClientBuilder::auto_answer) off), this answers it, late, and
    /// returns it at once.
    ///
    /// # Panics
    ///
    /// When this client already sent a close frame (its own, or the automatic answer to the
    /// server's), and when the server does not answer within the timeout.
    pub async fn close(&mut self, code: impl Into<CloseCode>, reason: &str) -> CloseFrame {
        let code = code.into();
        if self.close_sent {
            match &self.server_close {
                Some(frame) => panic!(
                    "close(): the server had already closed the connection ({}), and was answered",
                    describe(frame)
                ),
                None => panic!("close() was already called on this client"),
            }
        }
        self.close_sent = true;
        self.write(OpCode::Close, close_payload(code, reason), "a close frame")
            .await;
        if let Some(frame) = &self.server_close {
            return frame.clone();
        }
        let timeout = self.timeout;
        let timed_out = || {
            format!(
                "expected the server to answer the close frame within {timeout:?}, but it did not"
            )
        };
        let want = "the server to answer the close frame";
        self.wait_for(want, timeout, timed_out, |event| match event {
            Event::Close(frame) => Seen::Done(frame),
            other => Seen::Default(other),
        })
        .await
    }

    /// Reads until the server's close frame, checks its code, and returns it (an empty close
    /// frame counts as 1005, [`CloseCode::NO_STATUS`]).
    ///
    /// Messages before the close frame, read or unread, are skipped.
    ///
    /// # Panics
    ///
    /// When the code is another, when the connection ends without a close frame, and when none
    /// comes within the timeout.
    pub async fn expect_close(&mut self, code: impl Into<CloseCode>) -> CloseFrame {
        let code = code.into();
        self.pending.clear();
        let frame = match self.server_close.clone() {
            Some(frame) => frame,
            None => {
                let timeout = self.timeout;
                let timed_out = || {
                    format!(
                        "expected a close frame with code {code} within {timeout:?}, but none came"
                    )
                };
                let want = format!("a close frame with code {code}");
                self.wait_for(&want, timeout, timed_out, |event| match event {
                    // Skipped, not kept: what came before the close frame is dropped.
                    Event::Message(_) => Seen::Wait,
                    Event::Close(frame) => Seen::Done(frame),
                    other => Seen::Default(other),
                })
                .await
            }
        };
        assert!(
            frame.code == code,
            "expected the server to close with code {code}, but it closed with {}",
            describe(&frame)
        );
        frame
    }

    /// Waits until the server ends the connection (the end of the stream, as TCP's FIN), and
    /// returns why it ended. Messages and frames before the end are skipped; a close frame is
    /// kept for [`expect_close`](Self::expect_close).
    ///
    /// After a closing handshake the server ends the connection at once; a server that gives
    /// up on a client that does not answer its close frame ends it after its close timeout.
    ///
    /// # Panics
    ///
    /// When the connection is still there after the timeout.
    pub async fn expect_disconnect(&mut self) -> String {
        self.pending.clear();
        let timeout = self.timeout;
        let timed_out = || {
            format!("expected the server to end the connection within {timeout:?}, but it did not")
        };
        let want = "the server to end the connection";
        self.wait_for(want, timeout, timed_out, |event| match event {
            Event::End(reason) => Seen::Done(reason),
            Event::TimedOut => Seen::Default(Event::TimedOut),
            _ => Seen::Wait,
        })
        .await
    }

    fn check_can_send(&self, what: &str) {
        if let Some(frame) = &self.server_close {
            panic!(
                "cannot {what}: the server closed the connection ({})",
                describe(frame)
            );
        }
        if self.close_sent {
            panic!("cannot {what}: this client already sent its close frame");
        }
    }

    /// Queues one frame and waits until the writer task has written it (or failed to: a broken
    /// pipe is left for the next read to report).
    async fn write(&mut self, opcode: OpCode, payload: Vec<u8>, what: &str) {
        let (written, done) = oneshot::channel();
        let frame = Outgoing {
            opcode,
            payload,
            written: Some(written),
        };
        if self.outgoing.send(frame).is_err() {
            return;
        }
        let timeout = self.timeout;
        if tokio::time::timeout(timeout, done).await.is_err() {
            panic!(
                "timed out after {timeout:?} writing {what}: the server is not reading (its buffers are full)"
            );
        }
    }

    /// Reads until something a test can see happens, or the deadline passes. Reassembles
    /// fragmented messages, and notes the server's close frame.
    /// Waits up to `timeout` for the event `on` is done with. What `on` leaves to the default
    /// (`Seen::Default`): a message is kept for [`recv`](Self::recv), pings and pongs are
    /// skipped, and the server's close, the connection's end and the timeout fail the test
    /// with "expected {want}, but ..." (the timeout with `timed_out`'s message).
    async fn wait_for<T>(
        &mut self,
        want: &str,
        timeout: Duration,
        timed_out: impl Fn() -> String,
        mut on: impl FnMut(Event) -> Seen<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let event = self.next_event(deadline).await;
            match on(event) {
                Seen::Done(value) => return value,
                Seen::Wait => {}
                Seen::Default(Event::Message(message)) => self.pending.push_back(message),
                Seen::Default(Event::Ping(_) | Event::Pong(_)) => {}
                Seen::Default(Event::Close(frame)) => panic!(
                    "expected {want}, but the server closed the connection ({})",
                    describe(&frame)
                ),
                Seen::Default(Event::End(reason)) => panic!("expected {want}, but {reason}"),
                Seen::Default(Event::TimedOut) => panic!("{}", timed_out()),
            }
        }
    }

    async fn next_event(&mut self, deadline: Instant) -> Event {
        loop {
            if let Some(reason) = &self.ended {
                return Event::End(reason.clone());
            }
            let incoming = match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                Err(_) => return Event::TimedOut,
                Ok(None) => FromReader::End("the connection ended".to_owned()),
                Ok(Some(incoming)) => incoming,
            };
            let (fin, opcode, payload) = match incoming {
                FromReader::End(reason) => {
                    let reason = match &self.server_close {
                        Some(frame) => {
                            format!("{reason}, after it closed it ({})", describe(frame))
                        }
                        None => reason,
                    };
                    self.ended = Some(reason.clone());
                    return Event::End(reason);
                }
                FromReader::Frame {
                    fin,
                    opcode,
                    payload,
                } => (fin, opcode, payload),
            };
            match opcode {
                OpCode::Ping => return Event::Ping(payload),
                OpCode::Pong => return Event::Pong(payload),
                OpCode::Close => {
                    let frame = parse_close(&payload);
                    // The reader task has answered it already, unless answers are off.
                    if self.auto_answer {
                        self.close_sent = true;
                    }
                    self.server_close = Some(frame.clone());
                    return Event::Close(frame);
                }
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    if let Some(message) = self.reassemble(fin, opcode, payload) {
                        return Event::Message(message);
                    }
                }
            }
        }
    }

    fn reassemble(&mut self, fin: bool, opcode: OpCode, payload: Bytes) -> Option<Message> {
        let (opcode, payload) = match (self.partial.take(), opcode) {
            (None, OpCode::Continuation) => {
                panic!("the server sent a continuation frame with no message to continue")
            }
            (Some(_), OpCode::Text | OpCode::Binary) => {
                panic!("the server started a new message inside a fragmented one (RFC 6455 5.4)")
            }
            (None, opcode) if fin => (opcode, payload),
            (None, opcode) => {
                self.partial = Some((opcode, BytesMut::from(&payload[..])));
                return None;
            }
            (Some((first, mut buffer)), _) => {
                buffer.extend_from_slice(&payload);
                if !fin {
                    self.partial = Some((first, buffer));
                    return None;
                }
                (first, buffer.freeze())
            }
        };
        Some(match opcode {
            OpCode::Text => match Utf8Bytes::try_from(payload) {
                Ok(text) => Message::Text(text),
                Err(_) => panic!("the server sent a text message that is not valid UTF-8"),
            },
            _ => Message::Binary(payload),
        })
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        // Each task holds half of the pipe: stop both, so the server sees the connection end.
        self.reader.abort();
        self.writer.abort();
    }
}

impl fmt::Debug for TestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestClient")
            .field("protocol", &self.protocol())
            .field("timeout", &self.timeout)
            .field("pending", &self.pending.len())
            .field("close_sent", &self.close_sent)
            .field("server_close", &self.server_close)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Reads frames into the channel until the connection ends, answering pings and the server's
/// close frame through `answers` when it is given. Never waits on a write.
async fn read_frames(
    mut reader: WebSocketRead<ReadHalf<Io>>,
    tx: mpsc::UnboundedSender<FromReader>,
    answers: Option<mpsc::UnboundedSender<Outgoing>>,
) {
    loop {
        let frame = reader
            .read_frame(&mut |_: Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) })
            .await;
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                let reason = match error {
                    WebSocketError::UnexpectedEOF => "the server ended the connection".to_owned(),
                    WebSocketError::IoError(error) => format!("the connection failed: {error}"),
                    error => format!("the server broke the WebSocket protocol: {error}"),
                };
                let _ = tx.send(FromReader::End(reason));
                return;
            }
        };
        let (fin, opcode) = (frame.fin, frame.opcode);
        let payload = match frame.payload {
            Payload::Bytes(bytes) => bytes.freeze(),
            other => Bytes::from(Vec::from(other)),
        };
        if let Some(answers) = &answers {
            let answer = match opcode {
                OpCode::Ping => Some((OpCode::Pong, payload.to_vec())),
                // Answer with the server's code (an empty close with an empty one).
                OpCode::Close => Some((OpCode::Close, payload.get(..2).unwrap_or(&[]).to_vec())),
                _ => None,
            };
            if let Some((opcode, payload)) = answer {
                let _ = answers.send(Outgoing {
                    opcode,
                    payload,
                    written: None,
                });
            }
        }
        if tx
            .send(FromReader::Frame {
                fin,
                opcode,
                payload,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Writes queued frames in order, each flushed. After a close frame nothing more is written
/// (a second close, a late pong); after a failed write nothing more can be.
async fn write_frames(
    mut writer: WebSocketWrite<WriteHalf<Io>>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut failed = false;
    while let Some(Outgoing {
        opcode,
        payload,
        written,
    }) = queue.recv().await
    {
        if !failed && !writer.is_closed() {
            let frame = Frame::new(true, opcode, None, Payload::Owned(payload));
            let result = match writer.write_frame(frame).await {
                Ok(()) => writer.flush().await,
                Err(error) => Err(error),
            };
            failed = result.is_err();
        }
        if let Some(written) = written {
            let _ = written.send(());
        }
    }
}

/// What the request offered, to check the `101` against.
struct Offer {
    key: Option<HeaderValue>,
    protocols: Vec<String>,
    extensions: bool,
}

impl Offer {
    fn of<B>(request: &Request<B>) -> Offer {
        let headers = request.headers();
        Offer {
            key: headers.get(header::SEC_WEBSOCKET_KEY).cloned(),
            protocols: list::str_elements(headers, header::SEC_WEBSOCKET_PROTOCOL)
                .map(str::to_owned)
                .collect(),
            extensions: headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS),
        }
    }

    /// The client's checks of RFC 6455 section 4.1 on a `101`.
    fn check(&self, headers: &HeaderMap) {
        let value = |name: &HeaderName| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let upgrade = value(&header::UPGRADE);
        assert!(
            upgrade
                .as_deref()
                .is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket")),
            "the service answered 101, but with Upgrade {upgrade:?} instead of \"websocket\""
        );
        let connection = value(&header::CONNECTION);
        assert!(
            header_has_token(headers, &header::CONNECTION, "upgrade"),
            "the service answered 101, but with Connection {connection:?}, which lacks \"upgrade\""
        );
        if let Some(key) = &self.key {
            let expected = accept_key(key.as_bytes());
            let accept = value(&header::SEC_WEBSOCKET_ACCEPT);
            assert!(
                accept.as_deref() == Some(expected.as_str()),
                "the service answered 101, but with Sec-WebSocket-Accept {accept:?}; \
                 the key {key:?} calls for {expected:?}"
            );
        }
        if let Some(protocol) = value(&header::SEC_WEBSOCKET_PROTOCOL) {
            assert!(
                self.protocols.contains(&protocol),
                "the service agreed to subprotocol {protocol:?}, which the request did not offer \
                 (it offered {:?})",
                self.protocols
            );
        }
        if let Some(extensions) = value(&header::SEC_WEBSOCKET_EXTENSIONS) {
            assert!(
                self.extensions,
                "the service agreed to extensions {extensions:?}, but the request offered none"
            );
        }
    }
}

/// `Sec-WebSocket-Accept` for a key, computed here rather than borrowed from the crate, so the
/// harness checks the server independently.
fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.trim_ascii());
    sha1.update(ACCEPT_GUID);
    STANDARD.encode(sha1.finalize())
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes.
fn random_key() -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        // `RandomState` is seeded randomly: enough for a nonce that only has to differ.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        chunk.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    HeaderValue::from_str(&STANDARD.encode(bytes)).expect("base64 is a valid header value")
}

/// The server's close frame, checked as a client must (RFC 6455 5.5.1, 7.4).
fn parse_close(payload: &Bytes) -> CloseFrame {
    match payload.len() {
        0 => CloseFrame::new(CloseCode::NO_STATUS, ""),
        1 => panic!("the server sent a close frame with a one-byte payload (RFC 6455 5.5.1)"),
        _ => {
            let code = CloseCode::from(u16::from_be_bytes([payload[0], payload[1]]));
            assert!(
                code.is_sendable(),
                "the server sent close code {code}, which may not be sent (RFC 6455 7.4)"
            );
            let Ok(reason) = Utf8Bytes::try_from(payload.slice(2..)) else {
                panic!("the server sent a close frame ({code}) whose reason is not UTF-8");
            };
            CloseFrame::new(code, reason)
        }
    }
}

/// A close frame's payload: the code, then the reason.
fn close_payload(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut payload = u16::from(code).to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// A close frame for a panic message: `1000 "bye"`.
fn describe(frame: &CloseFrame) -> String {
    if frame.code == CloseCode::NO_STATUS {
        "an empty close frame, 1005".to_owned()
    } else {
        format!("code {} reason {:?}", frame.code, frame.reason.as_str())
    }
}

/// An error and its sources, on one line.
fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What the server side reported when the handshake failed, for the panic message.
async fn server_outcome(server: JoinHandle<Result<(), hyper::Error>>) -> String {
    match tokio::time::timeout(Duration::from_secs(1), server).await {
        Ok(Ok(Err(error))) => format!(" (the server side: {})", chain(&error)),
        Ok(Err(join)) if join.is_panic() => " (the service panicked)".to_owned(),
        _ => String::new(),
    }
}

/// Inserts the harness's extensions into each request the service receives.
#[derive(Clone)]
struct WithExtensions<S> {
    inner: S,
    extensions: Extensions,
}

impl<S, B> Service<Request<B>> for WithExtensions<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().extend(self.extensions.clone());
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn random_keys_are_16_bytes_and_differ() {
        let (a, b) = (random_key(), random_key());
        assert_ne!(a, b);
        assert_eq!(STANDARD.decode(a.as_bytes()).unwrap().len(), 16);
    }

    #[test]
    fn missing_headers_are_filled_in_and_set_ones_kept() {
        let request = Request::get("ws://example.com:8080/chat?room=1")
            .header("sec-websocket-version", "8")
            .extension(7u32)
            .body(())
            .unwrap();
        let (request, extensions) = TestClient::builder().prepare(request);
        assert_eq!(request.uri(), "/chat?room=1");
        let headers = request.headers();
        assert_eq!(headers["host"], "example.com:8080");
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "Upgrade");
        assert_eq!(headers["sec-websocket-version"], "8");
        assert!(headers.contains_key("sec-websocket-key"));
        assert_eq!(extensions.get::<u32>(), Some(&7));
        assert!(request.extensions().get::<u32>().is_none());
    }

    #[test]
    fn default_headers_can_be_turned_off() {
        let request = Request::get("/").body(()).unwrap();
        let (request, _) = TestClient::builder()
            .default_headers(false)
            .prepare(request);
        assert!(request.headers().is_empty());
    }
}
