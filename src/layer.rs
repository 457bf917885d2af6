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

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tower_layer::Layer;

use crate::handler::{self, BoxHandler, HandlerResult};
use crate::service::{UpgradeRequired, WebSocketService};
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
/// Default for [`WebSocketLayer::write_timeout`]: 30 seconds without the peer reading.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The settings shared by every connection of one layer, behind one `Arc`.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) handler: BoxHandler,
    pub(crate) protocols: Vec<HeaderValue>,
    pub(crate) max_message_size: usize,
    pub(crate) max_frame_size: usize,
    pub(crate) close_timeout: Duration,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) ping_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("protocols", &self.protocols)
            .field("max_message_size", &self.max_message_size)
            .field("max_frame_size", &self.max_frame_size)
            .field("close_timeout", &self.close_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
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
    /// The handler is boxed once, here. See [the `handler` module](crate::handler) for what it
    /// may return.
    pub fn new<H, Fut>(handler: H) -> Self
    where
        H: Fn(WebSocket) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        WebSocketLayer {
            config: Arc::new(Config {
                handler: handler::boxed(handler),
                protocols: Vec::new(),
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
                max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                close_timeout: DEFAULT_CLOSE_TIMEOUT,
                ping_interval: Some(DEFAULT_PING_INTERVAL),
                ping_timeout: DEFAULT_PING_TIMEOUT,
                idle_timeout: None,
                write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The subprotocols this server speaks, in its order of preference. The first one the
    /// client also offers is agreed and readable with [`WebSocket::protocol`]; when none is
    /// common, the connection is accepted without a subprotocol.
    ///
    /// Default: none (no `Sec-WebSocket-Protocol` in the answer).
    ///
    /// # Panics
    ///
    /// When a name is not a valid HTTP header value (a programmer error, caught when the
    /// layer is built).
    pub fn protocols<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        self.config_mut().protocols = protocols
            .into_iter()
            .map(|p| {
                let p = p.as_ref();
                HeaderValue::from_str(p).unwrap_or_else(|_| {
                    panic!("subprotocol {p:?} is not a valid Sec-WebSocket-Protocol value")
                })
            })
            .collect();
        self
    }

    /// The largest message accepted, in bytes, counted across all its fragments. A larger
    /// message closes the connection with 1009 (message too big).
    ///
    /// Default: [`DEFAULT_MAX_MESSAGE_SIZE`] (16 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config_mut().max_message_size = bytes;
        self
    }

    /// The largest single frame accepted, in bytes. A larger frame closes the connection with
    /// 1009 as soon as its header is read, before its payload is buffered.
    ///
    /// Default: [`DEFAULT_MAX_FRAME_SIZE`] (16 MiB).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config_mut().max_frame_size = bytes;
        self
    }

    /// How long to wait for the peer's close frame after this side sent one, and for the
    /// peer to end TCP after the close handshake, before dropping the connection.
    ///
    /// Default: [`DEFAULT_CLOSE_TIMEOUT`] (5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().close_timeout = timeout;
        self
    }

    /// How often to ping the peer to find out that it is still there, or `None` for no
    /// keepalive. A peer that does not answer within [`ping_timeout`](Self::ping_timeout) is
    /// closed with 1011 ("keepalive ping timeout") and its handler's `recv` returns `None`.
    /// The last round trip is [`WebSocket::rtt`].
    ///
    /// Default: [`DEFAULT_PING_INTERVAL`] (30 s).
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.config_mut().ping_interval = interval;
        self
    }

    /// How long a keepalive ping may wait for its pong.
    ///
    /// Default: [`DEFAULT_PING_TIMEOUT`] (30 s).
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().ping_timeout = timeout;
        self
    }

    /// Close a connection on which no message has gone either way for this long, with 1001
    /// ("idle timeout"). Pings and pongs do not count as messages.
    ///
    /// Default: `None` (no idle timeout: keepalive pings already find dead peers).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config_mut().idle_timeout = timeout;
        self
    }

    /// Drop a connection whose writes make no progress for this long: the peer stopped
    /// reading, so no close frame can reach it either. Its handler's `recv` returns `None`
    /// and its sends fail; the closure log says `closed_by="lost"` with the reason.
    ///
    /// Default: [`DEFAULT_WRITE_TIMEOUT`] (30 s).
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config_mut().write_timeout = timeout;
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
    (*WebSocketLayer::new(|_ws: WebSocket| async {}).config).clone()
}
