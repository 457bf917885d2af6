//! [`WebSocketLayer`]: the handler and the settings every connection shares.
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_websocket::{WebSocket, WebSocketLayer};
//!
//! async fn echo(mut ws: WebSocket) {
//!     while let Some(msg) = ws.recv().await {
//!         if ws.send(msg).await.is_err() {
//!             break;
//!         }
//!     }
//! }
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "a plain page" }))
//!     .layer(
//!         WebSocketLayer::new(echo)
//!             .protocols(["chat.v2", "chat.v1"])
//!             .max_message_size(1 << 20)
//!             .close_timeout(Duration::from_secs(2)),
//!     );
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::HeaderMap;
use tower_layer::Layer;

use crate::config::{Config, RequiredExtension};
use crate::connection;
use crate::handle::{Registry, WebSocketHandle};
use crate::handshake::keep::KeepHeaders;
use crate::handshake::origin::OriginPolicy;
use crate::handshake::protocol::Subprotocols;
use crate::handshake::Refusal;
use crate::service::{UpgradeRequired, WebSocketService};
use crate::socket::handler::{self, BoxHandler, HandlerResult};
use crate::socket::QueuePolicy;
use crate::socket::WebSocket;

/// Default for [`WebSocketLayer::max_message_size`]: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Default for [`WebSocketLayer::max_frame_size`]: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 << 20;
/// Default for [`WebSocketLayer::close_timeout`]: 5 seconds.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`WebSocketLayer::ping_interval`]: a keepalive ping every 30 seconds.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Default for [`WebSocketLayer::ping_timeout`]: 30 seconds for the pong to come back.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(30);
/// Default capacity of [`WebSocketLayer::send_queue`]: 1024 messages.
pub const DEFAULT_SEND_QUEUE_CAPACITY: usize = 1024;
/// Default for [`WebSocketLayer::send_queue_bytes`]: 1 MiB of payload.
pub const DEFAULT_SEND_QUEUE_BYTES: usize = 1 << 20;
/// Default for [`WebSocketLayer::write_timeout`]: 30 seconds without the peer reading.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

fn has_extension<T: Send + Sync + 'static>(extensions: &http::Extensions) -> bool {
    extensions.get::<T>().is_some()
}

/// A tower [`Layer`] that serves WebSockets with a handler and lets every other request
/// through to the service it wraps.
///
/// Cloning is cheap: the handler and the settings sit behind one `Arc`.
#[derive(Clone, Debug)]
#[must_use]
pub struct WebSocketLayer {
    config: Arc<Config>,
}

impl WebSocketLayer {
    /// A layer that runs `handler` for every accepted WebSocket.
    ///
    /// The handler is boxed once, here. See [the `handler` module](crate::socket::handler) for what it
    /// may return.
    pub fn new<H, Fut>(handler: H) -> Self
    where
        H: Fn(WebSocket) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        Self::with_handler(handler::boxed(handler))
    }

    /// A layer whose handler takes axum extractors after the socket, the way an axum handler
    /// does, with the application's `state` for those that read it: `State<T>` for any `T:
    /// FromRef<S>` (a sub-state), `Path`, `Query`, `Extension`, your own. Without state, pass
    /// `()`.
    ///
    /// The extractors run on the upgrade request **before** the `101`, after the layer's
    /// other checks: one that refuses answers the handshake with its rejection (a `Path` that
    /// does not parse gets `400`), and no socket is opened. `state` is stored once, behind an
    /// `Arc`; a `State<T>` extractor clones its `T` once per connection, never per message.
    /// See [`ExtractHandler`](crate::socket::handler::ExtractHandler).
    ///
    /// ```
    /// use axum::extract::{FromRef, Path, State};
    /// use axum::{routing::get, Router};
    /// use tower_websocket::{Hub, WebSocket, WebSocketLayer};
    ///
    /// #[derive(Clone)] // or `#[derive(Clone, FromRef)]` with axum's `macros` feature
    /// struct AppState {
    ///     hub: Hub,
    ///     motd: &'static str,
    /// }
    ///
    /// impl FromRef<AppState> for Hub {
    ///     fn from_ref(state: &AppState) -> Hub {
    ///         state.hub.clone()
    ///     }
    /// }
    ///
    /// async fn room(
    ///     ws: WebSocket,
    ///     Path(room): Path<String>,
    ///     State(hub): State<Hub>, // a part of the state, through `FromRef`
    ///     State(state): State<AppState>,
    /// ) {
    ///     let (mut rx, tx) = ws.split();
    ///     let _ = tx.send(state.motd).await;
    ///     let _subscription = hub.subscribe(&room, &tx);
    ///     while let Some(msg) = rx.recv().await {
    ///         hub.publish(&room, msg);
    ///     }
    /// }
    ///
    /// let state = AppState { hub: Hub::new(), motd: "welcome" };
    /// let app: Router = Router::new()
    ///     .route("/rooms/{room}", get(|| async { "the room's page" }))
    ///     .layer(WebSocketLayer::with_state(state, room));
    /// ```
    #[cfg(feature = "axum")]
    pub fn with_state<S, H, T>(state: S, handler: H) -> Self
    where
        H: handler::ExtractHandler<T, S>,
        S: Send + Sync + 'static,
    {
        let mut layer = Self::with_handler(handler::prepared());
        layer.config_mut().prepare = Some(handler::boxed_prepare(state, handler));
        layer
    }

    fn with_handler(handler: BoxHandler) -> Self {
        let registry = Arc::new(Registry::default());
        WebSocketLayer {
            config: Arc::new(Config {
                handler,
                #[cfg(feature = "axum")]
                prepare: None,
                subprotocols: Subprotocols::none(),
                origin: OriginPolicy::same_site(),
                keep_headers: KeepHeaders::all(),
                before_upgrade: None,
                required_extensions: Vec::new(),
                max_connections: None,
                registry: Arc::clone(&registry),
                connection: Arc::new(connection::Settings {
                    max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
                    max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                    close_timeout: DEFAULT_CLOSE_TIMEOUT,
                    ping_interval: Some(DEFAULT_PING_INTERVAL),
                    ping_timeout: DEFAULT_PING_TIMEOUT,
                    idle_timeout: None,
                    write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
                    send_queue_capacity: DEFAULT_SEND_QUEUE_CAPACITY,
                    send_queue_bytes: DEFAULT_SEND_QUEUE_BYTES,
                    send_queue_policy: QueuePolicy::Wait,
                    #[cfg(feature = "deflate")]
                    deflate: None,
                    registry,
                }),
                #[cfg(feature = "hixie76")]
                legacy_drafts: false,
                #[cfg(feature = "hixie76")]
                legacy_tls: false,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    fn connection_mut(&mut self) -> &mut connection::Settings {
        Arc::make_mut(&mut self.config_mut().connection)
    }

    /// The subprotocols this server speaks, in its order of preference. The first one the
    /// client also offers is agreed and readable with [`WebSocket::protocol`]; when none is
    /// common, the connection is accepted without a subprotocol (see
    /// [`subprotocols`](Self::subprotocols) to require one, or to choose with a function).
    ///
    /// Default: none (no `Sec-WebSocket-Protocol` in the answer).
    ///
    /// # Panics
    ///
    /// When a name is not a valid HTTP header value (a programmer error, caught when the
    /// layer is built).
    pub fn protocols<I, P>(self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        self.subprotocols(Subprotocols::list(protocols))
    }

    /// How a subprotocol is chosen: a list, a list that is required (400 otherwise), or a
    /// function of the offer and the request. See [`Subprotocols`].
    ///
    /// Default: [`Subprotocols::none`].
    pub fn subprotocols(mut self, subprotocols: Subprotocols) -> Self {
        self.config_mut().subprotocols = subprotocols;
        self
    }

    /// Which browser origins may connect; a refused one gets `403 Forbidden`. Requests without
    /// `Origin` (non-browser clients) are always accepted. See [`OriginPolicy`].
    ///
    /// Default: [`OriginPolicy::same_site`]: cross-site browser requests are refused, which
    /// closes cross-site WebSocket hijacking unless you open it.
    pub fn origin_policy(mut self, policy: OriginPolicy) -> Self {
        self.config_mut().origin = policy;
        self
    }

    /// Which headers of the upgrade request a socket keeps in its environ once the handshake
    /// is done: the checks, the `before_upgrade` hook and a handler's extractors see them all
    /// whatever this says. Keeping fewer saves memory on every open socket (104 bytes or
    /// more per header, and its value); see [`KeepHeaders`].
    ///
    /// Default: [`KeepHeaders::all`], the whole request, as eventlet's `environ`.
    pub fn keep_headers(mut self, keep: KeepHeaders) -> Self {
        self.config_mut().keep_headers = keep;
        self
    }

    /// A hook run for every valid handshake just before the `101`, after the origin and
    /// subprotocol checks. It may refuse with any response (`Err(Refusal)`: a 401 from an
    /// auth check, say), add headers to the `101` (a `Set-Cookie`), or add extensions to the
    /// request the handler will see. It runs on the request's task: keep it quick, and do
    /// slow work (a database lookup) in a middleware before the layer.
    ///
    /// ```
    /// use http::{header, HeaderValue, StatusCode};
    /// use tower_websocket::{handshake::Refusal, WebSocket, WebSocketLayer};
    ///
    /// #[derive(Clone)]
    /// struct User(String);
    ///
    /// let layer = WebSocketLayer::new(|ws: WebSocket| async move {
    ///     let name = ws.extension::<User>().map(|u| u.0.clone());
    ///     let _ = ws.send(format!("hello {}", name.unwrap_or_default())).await;
    /// })
    /// .before_upgrade(|request, response_headers| {
    ///     let token = request.headers.get("authorization").ok_or_else(|| {
    ///         Refusal::new(StatusCode::UNAUTHORIZED, "log in first")
    ///             .header(header::WWW_AUTHENTICATE, "Bearer")
    ///     })?;
    ///     request.extensions.insert(User(format!("{token:?}")));
    ///     response_headers.insert(header::SET_COOKIE, HeaderValue::from_static("seen=1"));
    ///     Ok(())
    /// });
    /// # let _ = layer;
    /// ```
    ///
    /// Default: no hook.
    pub fn before_upgrade<F>(mut self, hook: F) -> Self
    where
        F: Fn(&mut Parts, &mut HeaderMap) -> Result<(), Refusal> + Send + Sync + 'static,
    {
        self.config_mut().before_upgrade = Some(Arc::new(hook));
        self
    }

    /// Refuse an upgrade whose request has no extension of type `T`, with `500 Internal
    /// Server Error` and an ERROR log line that names `T`.
    ///
    /// This makes a misplaced middleware loud. An upgrade is answered by this layer and goes
    /// no further in, so a middleware that authenticates must sit **outside** it (be added
    /// after it with `Router::layer`, before it in a `ServiceBuilder`): one inside never sees
    /// upgrades, and without this guard the handler would run with no user. Checked after the
    /// [`before_upgrade`](Self::before_upgrade) hook, which may insert `T` itself. Call it once
    /// per type to require several.
    ///
    /// ```
    /// use axum::{extract::Request, middleware::{self, Next}, response::Response, Router};
    /// use http::StatusCode;
    /// use tower_websocket::{WebSocket, WebSocketLayer};
    ///
    /// #[derive(Clone)]
    /// struct User(String);
    ///
    /// async fn auth(mut request: Request, next: Next) -> Result<Response, StatusCode> {
    ///     let user = request.headers().get("x-user").ok_or(StatusCode::UNAUTHORIZED)?;
    ///     let user = User(user.to_str().map_err(|_| StatusCode::BAD_REQUEST)?.to_owned());
    ///     request.extensions_mut().insert(user);
    ///     Ok(next.run(request).await)
    /// }
    ///
    /// async fn chat(ws: WebSocket) {
    ///     let user = ws.extension::<User>().expect("required by the layer");
    ///     let _ = ws.send(format!("hello {}", user.0)).await;
    /// }
    ///
    /// let app: Router = Router::new()
    ///     .layer(WebSocketLayer::new(chat).require_extension::<User>())
    ///     .layer(middleware::from_fn(auth)); // added last: outermost, runs first
    /// ```
    ///
    /// Default: no extension is required.
    pub fn require_extension<T: Send + Sync + 'static>(mut self) -> Self {
        self.config_mut()
            .required_extensions
            .push(RequiredExtension {
                type_name: std::any::type_name::<T>(),
                present: has_extension::<T>,
            });
        self
    }

    /// The most live WebSocket connections this layer serves at once; one more handshake is
    /// refused with `503 Service Unavailable` before upgrading. (tower's `ConcurrencyLimit`
    /// cannot do this: it is released when the `101` is sent.) Clones of a layer share the
    /// count.
    ///
    /// Default: `None` (no limit).
    pub fn max_connections(mut self, limit: usize) -> Self {
        self.config_mut().max_connections = Some(limit);
        self
    }

    /// How many WebSocket connections of this layer (and its clones) are live now.
    pub fn live_connections(&self) -> usize {
        self.config.registry.live()
    }

    /// A handle on this layer's sockets (and those of its clones): live
    /// [`metrics`](WebSocketHandle::metrics) and graceful
    /// [`shutdown`](WebSocketHandle::shutdown).
    pub fn handle(&self) -> WebSocketHandle {
        WebSocketHandle::new(Arc::clone(&self.config.registry))
    }

    /// The largest message accepted, in bytes, counted across all its fragments. A larger
    /// message closes the connection with 1009 (message too big).
    ///
    /// Default: [`DEFAULT_MAX_MESSAGE_SIZE`] (16 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.connection_mut().max_message_size = bytes;
        self
    }

    /// The largest single frame accepted, in bytes. A larger frame closes the connection with
    /// 1009 as soon as its header is read, before its payload is buffered.
    ///
    /// Default: [`DEFAULT_MAX_FRAME_SIZE`] (16 MiB).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.connection_mut().max_frame_size = bytes;
        self
    }

    /// The budget of the whole closing handshake, from the moment this side sends its close
    /// frame (or answers the peer's, or fails the connection): writing the close frame,
    /// waiting for the peer's answer and ending TCP all fit in it. A peer that does not answer
    /// is dropped when it runs out, and the connection's place under
    /// [`max_connections`](Self::max_connections) is free again as soon as its handler has
    /// returned too.
    ///
    /// Default: [`DEFAULT_CLOSE_TIMEOUT`] (5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.connection_mut().close_timeout = timeout;
        self
    }

    /// How often to ping the peer to find out that it is still there, or `None` for no
    /// keepalive. A peer that does not answer within [`ping_timeout`](Self::ping_timeout) is
    /// closed with 1011 ("keepalive ping timeout") and its handler's `recv` returns `None`.
    /// The last round trip is [`WebSocket::rtt`].
    ///
    /// Default: [`DEFAULT_PING_INTERVAL`] (30 s).
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.connection_mut().ping_interval = interval;
        self
    }

    /// How long a keepalive ping may wait for its pong.
    ///
    /// Default: [`DEFAULT_PING_TIMEOUT`] (30 s).
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.connection_mut().ping_timeout = timeout;
        self
    }

    /// Close a connection on which no message has gone either way for this long, with 1001
    /// ("idle timeout"). Pings and pongs do not count as messages.
    ///
    /// Default: `None` (no idle timeout: keepalive pings already find dead peers).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connection_mut().idle_timeout = timeout;
        self
    }

    /// Drop a connection whose writes make no progress for this long: the peer stopped
    /// reading, so no close frame can reach it either. Its handler's `recv` returns `None`
    /// and its sends fail; the close log says `closed_by="lost"` with the reason.
    ///
    /// Default: [`DEFAULT_WRITE_TIMEOUT`] (30 s).
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connection_mut().write_timeout = timeout;
        self
    }

    /// Each socket's outgoing queue: how many messages may wait to be written, and what a
    /// send does when the queue is full (see [`QueuePolicy`]). The queue is full when it holds
    /// `capacity` messages, or when the next message would take it past
    /// [`send_queue_bytes`](Self::send_queue_bytes) of payload.
    ///
    /// Default: [`DEFAULT_SEND_QUEUE_CAPACITY`] (1024) messages and [`QueuePolicy::Wait`]: a
    /// handler that replies slows down to its peer's pace instead of losing messages, while a
    /// [`Hub`](crate::hub::Hub) publishing to many sockets never waits for a slow one (that
    /// socket misses the message instead). Choose `QueuePolicy::Close(CloseCode::POLICY_VIOLATION)`
    /// to drop peers that cannot keep up. The room is what lets a hub's burst of publishes
    /// reach a subscriber whose task has not run yet: each waiting message costs the queue
    /// 40 bytes, its payload being shared with every other subscriber.
    ///
    /// # Panics
    ///
    /// When `capacity` is 0 (a programmer error, caught when the layer is built).
    pub fn send_queue(mut self, capacity: usize, policy: QueuePolicy) -> Self {
        assert!(
            capacity > 0,
            "the send queue needs room for at least one message"
        );
        let settings = self.connection_mut();
        settings.send_queue_capacity = capacity;
        settings.send_queue_policy = policy;
        self
    }

    /// The most payload bytes each socket's outgoing queue holds: a send that would take it
    /// past this finds the queue full, as one past [`send_queue`](Self::send_queue)'s
    /// capacity does. A message larger than this still goes when the queue is empty, alone.
    /// This is what bounds the memory a peer that never reads can hold, whatever the size
    /// of the messages sent to it.
    ///
    /// Default: [`DEFAULT_SEND_QUEUE_BYTES`] (1 MiB).
    pub fn send_queue_bytes(mut self, max_bytes: usize) -> Self {
        self.connection_mut().send_queue_bytes = max_bytes;
        self
    }

    /// Compress messages with permessage-deflate (RFC 7692) when the client offers it (every
    /// browser does). The inflated size of a message is held to
    /// [`max_message_size`](Self::max_message_size): a decompression bomb closes with 1009
    /// without being inflated. See [`DeflateConfig`](crate::wire::deflate::DeflateConfig) for the
    /// level, the threshold, the windows and context takeover, and the memory each costs.
    ///
    /// Default: off (no extension is accepted).
    #[cfg(feature = "deflate")]
    pub fn deflate(mut self, config: crate::wire::deflate::DeflateConfig) -> Self {
        self.connection_mut().deflate = Some(config);
        self
    }

    /// Accept the legacy drafts hixie-76 and hixie-75 as well as RFC 6455, for old embedded
    /// clients, kiosks and set-top boxes (eventlet's `WebSocketWSGI` accepts both on one
    /// route). The same handler serves both; [`WebSocket::version`] tells them apart. The
    /// drafts carry text only: a binary send fails with
    /// [`Error::BinaryOnLegacyDraft`](crate::Error::BinaryOnLegacyDraft). See
    /// [the `legacy` module](crate::legacy) for the handshake and the framing, and
    /// [`legacy_tls`](Self::legacy_tls) for servers behind TLS.
    ///
    /// Default: off: a hixie-76 handshake gets `426 Upgrade Required`.
    #[cfg(feature = "hixie76")]
    pub fn legacy_drafts(mut self, accept: bool) -> Self {
        self.config_mut().legacy_drafts = accept;
        self
    }

    /// Whether this layer's connections are TLS, so that a legacy handshake's answer names
    /// `wss://` in its `Sec-WebSocket-Location` (which the client checks against the URL it
    /// opened). The layer cannot see TLS itself; without this setting, `wss://` is named when
    /// the request's URI has the scheme `https` or `wss`, or when `X-Forwarded-Proto` says
    /// `https` (a TLS-terminating proxy). RFC 6455 connections do not use it.
    ///
    /// Default: `false`.
    #[cfg(feature = "hixie76")]
    pub fn legacy_tls(mut self, tls: bool) -> Self {
        self.config_mut().legacy_tls = tls;
        self
    }

    /// This layer as a service of its own, for a route that only speaks WebSocket
    /// (`Router::route_service("/ws", layer.into_service())`): a request that is not a
    /// WebSocket attempt gets `426 Upgrade Required`.
    pub fn into_service(self) -> WebSocketService<UpgradeRequired> {
        WebSocketService::new(UpgradeRequired, self.config)
    }
}

impl<S> Layer<S> for WebSocketLayer {
    type Service = WebSocketService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WebSocketService::new(inner, Arc::clone(&self.config))
    }
}

#[cfg(test)]
pub(crate) fn tests_config() -> Config {
    tests_config_with(|_ws: WebSocket| async {})
}

#[cfg(test)]
pub(crate) fn tests_config_with<H, Fut>(handler: H) -> Config
where
    H: Fn(WebSocket) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    (*WebSocketLayer::new(handler).config).clone()
}
