//! [`WebSocket`]: the handle a handler gets, with the upgrade request as its environ.
//!
//! The handle reads whole messages with [`recv`](WebSocket::recv) and queues messages with
//! [`send`](WebSocket::send); a connection task owned by the layer does the framing, answers
//! pings and the peer's close, and enforces the limits. Returning from the handler closes the
//! socket with 1000.
//!
//! ```
//! use tower_websocket::{CloseCode, Message, WebSocket, WebSocketLayer};
//!
//! #[derive(Clone)]
//! struct User(String);
//!
//! async fn handler(mut ws: WebSocket) {
//!     // The whole upgrade request is the environ: path, headers, extensions.
//!     let who = ws.extension::<User>().map(|u| u.0.clone()).unwrap_or_default();
//!     let _ = ws.send(format!("hello {who} on {}", ws.path())).await;
//!     while let Some(msg) = ws.recv().await {
//!         if msg.as_text() == Some("bye") {
//!             let _ = ws.close_with(CloseCode::from(4000), "see you").await;
//!         }
//!     }
//!     // `recv` returned `None`: the peer closed, or the connection is gone.
//!     if let Some(frame) = ws.peer_close() {
//!         tracing::info!(code = %frame.code, "peer said goodbye");
//!     }
//! }
//! # let _ = WebSocketLayer::new(handler);
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::HeaderValue;
use tokio::sync::mpsc;

use crate::close::{CloseCode, CloseFrame, MAX_REASON_LEN};
use crate::error::Error;
use crate::message::Message;

/// What the connection task hands the socket.
#[derive(Debug)]
pub(crate) enum Inbound {
    Message(Message),
    /// The connection is over; the peer's close frame if it sent a valid one.
    Closed(Option<CloseFrame>),
}

/// What the socket hands the connection task.
#[derive(Debug)]
pub(crate) enum Outbound {
    Message(Message),
    Close(CloseFrame),
}

/// What the connection task publishes for the socket to read.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The last keepalive round trip in microseconds, 0 before the first.
    rtt_micros: AtomicU64,
}

impl Shared {
    pub(crate) fn set_rtt(&self, rtt: Duration) {
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        self.rtt_micros.store(micros, Ordering::Relaxed);
    }
}

/// One WebSocket connection, as its handler sees it.
///
/// Dropping the last handle, or returning from the handler, closes the connection with 1000.
pub struct WebSocket {
    parts: Parts,
    protocol: Option<HeaderValue>,
    inbound: mpsc::Receiver<Inbound>,
    outbound: mpsc::Sender<Outbound>,
    peer_close: Option<CloseFrame>,
    close_sent: bool,
    shared: Arc<Shared>,
}

impl WebSocket {
    pub(crate) fn new(
        parts: Parts,
        protocol: Option<HeaderValue>,
        inbound: mpsc::Receiver<Inbound>,
        outbound: mpsc::Sender<Outbound>,
        shared: Arc<Shared>,
    ) -> Self {
        WebSocket {
            parts,
            protocol,
            inbound,
            outbound,
            peer_close: None,
            close_sent: false,
            shared,
        }
    }

    /// The round-trip time of the last keepalive ping (see
    /// [`WebSocketLayer::ping_interval`](crate::WebSocketLayer::ping_interval)), `None` before
    /// the first pong.
    pub fn rtt(&self) -> Option<Duration> {
        match self.shared.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// The path of the upgrade request, such as `/chat`.
    pub fn path(&self) -> &str {
        self.parts.uri.path()
    }

    /// The query string of the upgrade request, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.parts.uri.query()
    }

    /// The subprotocol agreed in the handshake, `None` if none was (see
    /// [`WebSocketLayer::protocols`](crate::WebSocketLayer::protocols)).
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_ref().and_then(|p| p.to_str().ok())
    }

    /// The `Origin` header of the upgrade request: browsers send it, other clients seldom do.
    pub fn origin(&self) -> Option<&str> {
        self.parts
            .headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
    }

    /// The headers of the upgrade request.
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// The whole upgrade request but its body: method, URI, version, headers and every
    /// extension earlier middleware put there (auth claims, `ConnectInfo`, ...).
    pub fn environ(&self) -> &Parts {
        &self.parts
    }

    /// An extension of the upgrade request, put there by earlier middleware.
    pub fn extension<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.parts.extensions.get::<T>()
    }

    /// The peer's address, when the server recorded it: axum's `ConnectInfo<SocketAddr>`
    /// (serve with `into_make_service_with_connect_info::<SocketAddr>()`), or a plain
    /// `SocketAddr` extension.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        peer_addr(&self.parts)
    }

    /// The next whole message, or `None` once the peer has closed or the connection is gone.
    ///
    /// Fragmented messages arrive reassembled; an empty message is `Some`. After `None`,
    /// [`peer_close`](Self::peer_close) tells the peer's close code, if it sent one.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes (in a `tokio::select!` arm
    /// that lost, say), no message is lost; the next call returns it.
    pub async fn recv(&mut self) -> Option<Message> {
        match self.inbound.recv().await? {
            Inbound::Message(message) => Some(message),
            Inbound::Closed(frame) => {
                self.peer_close = frame;
                None
            }
        }
    }

    /// Queues a message to the peer.
    ///
    /// `Ok` means the connection accepted the message; it is written in order with every
    /// other message from this socket. Waits while the socket's outgoing queue is full.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the peer has closed, this side has closed, or the connection is
    /// gone.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before it completes, the message was not queued.
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), Error> {
        if self.close_sent {
            return Err(Error::Closed);
        }
        self.outbound
            .send(Outbound::Message(message.into()))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Closes the connection with 1000 (normal closure). See [`close_with`](Self::close_with).
    pub async fn close(&mut self) -> Result<(), Error> {
        self.close_with(CloseCode::NORMAL, "").await
    }

    /// Starts the closing handshake with a code and a reason.
    ///
    /// Messages queued before are written first. [`recv`](Self::recv) keeps returning what the
    /// peer sends until its close frame arrives, then `None`; the connection is dropped if the
    /// peer does not answer within the close timeout. Closing twice, or after the peer closed,
    /// does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCloseCode`] for a code that may not be sent (see
    /// [`CloseCode::is_sendable`]), [`Error::CloseReasonTooLong`] for a reason over 123 bytes.
    pub async fn close_with(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        if !code.is_sendable() {
            return Err(Error::InvalidCloseCode(code.into()));
        }
        if reason.len() > MAX_REASON_LEN {
            return Err(Error::CloseReasonTooLong(reason.len()));
        }
        if self.close_sent {
            return Ok(());
        }
        self.close_sent = true;
        // A closed channel means the connection is already over: nothing left to close.
        let _ = self
            .outbound
            .send(Outbound::Close(CloseFrame::new(code, reason)))
            .await;
        Ok(())
    }

    /// The close frame the peer sent, once [`recv`](Self::recv) has returned `None`; `None`
    /// before that, or when the peer closed without a code or the connection was lost.
    pub fn peer_close(&self) -> Option<&CloseFrame> {
        self.peer_close.as_ref()
    }
}

impl fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("path", &self.path())
            .field("protocol", &self.protocol())
            .field("origin", &self.origin())
            .field("peer_close", &self.peer_close)
            .finish_non_exhaustive()
    }
}

/// The peer address recorded in the request's extensions, if any.
pub(crate) fn peer_addr(parts: &Parts) -> Option<SocketAddr> {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*addr);
    }
    parts.extensions.get::<SocketAddr>().copied()
}
