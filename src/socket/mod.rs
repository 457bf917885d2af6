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

pub mod close;
pub mod error;
pub mod handler;
pub mod message;
pub(crate) mod queue;

use std::fmt;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use futures_util::{Sink, Stream};
use http::header::{self, HeaderMap};
use http::request::Parts;
use http::HeaderValue;

use crate::hub::batch::Batch;
use crate::socket::close::{CloseCode, CloseFrame, MAX_REASON_LEN};
use crate::socket::error::{Error, SendError};
use crate::socket::message::Message;
use queue::PushError;
use queue::Weight;

/// The connection task's fast path to a receiver it polls: a message handed over for the
/// length of one poll of the handler, without the inbound queue.
///
/// The handler runs inside its connection task, and in the common case it waits in `recv`
/// when a message is read. The task then puts the message here, keyed by the inbound queue's
/// [`id`](queue::Receiver::id), polls the handler in the same pass (no other code runs on the
/// thread in between), and takes back what the handler did not take (its receiver was
/// elsewhere: not in `recv`, or in another task), which then goes into the queue; so does a
/// message the pass could not hand over before it ended. No message stays here between
/// passes. The task does so only while the queue is empty, and it is the queue's only
/// sender, so the message handed over is the next one in order either way; the queue's
/// capacity (`INBOUND_CAPACITY`) is untouched. A thread-local slot, because the handler is
/// polled on the task's thread, and a thread-local costs less than the queue's lock.
pub(crate) mod handoff {
    use std::cell::Cell;

    use super::Message;

    thread_local! {
        /// The id of the inbound queue whose receiver `OFFERED` is for, 0 when none. A
        /// plain number, so that a look that finds nothing is one load.
        static OFFERED_TO: Cell<usize> = const { Cell::new(0) };
        /// The message offered.
        static OFFERED: Cell<Option<Message>> = const { Cell::new(None) };
        /// The id of the outbound queue whose connection task polls its handler now, 0 when
        /// none (see [`collect`]), with its lowest bit set while `SENT` holds a message (an
        /// id is the address of an `Arc`'s block, so that bit is free).
        static OUTBOX: Cell<usize> = const { Cell::new(0) };
        /// The message a send put in the open outbox.
        static SENT: Cell<Option<Message>> = const { Cell::new(None) };
    }

    /// [`OUTBOX`]'s bit for "`SENT` holds a message".
    const FULL: usize = 1;

    /// Runs `poll` (a poll of the handler) with an outbox open for the outbound queue `id`:
    /// the first message a send of that socket makes while the queue is empty goes there
    /// rather than into the queue ([`send`]), and comes back with `poll`'s output, to be
    /// written before what is queued. The outbox of an outer call is put back after.
    #[inline]
    pub(crate) fn collect<R>(id: usize, poll: impl FnOnce() -> R) -> (R, Option<Message>) {
        debug_assert_eq!(id & FULL, 0);
        let outer = OUTBOX.with(|outbox| outbox.replace(id));
        let outer_sent = if outer & FULL != 0 {
            SENT.with(Cell::take)
        } else {
            None
        };
        let output = poll();
        let now = OUTBOX.with(|outbox| outbox.replace(outer));
        let sent = if now & FULL != 0 {
            SENT.with(Cell::take)
        } else {
            None
        };
        if outer_sent.is_some() {
            SENT.with(|sent| sent.set(outer_sent));
        }
        (output, sent)
    }

    /// Puts `message` in the outbox of the outbound queue `id`, if one is open and empty;
    /// gives it back otherwise. The caller has seen the queue empty.
    #[inline]
    pub(crate) fn send(id: usize, message: Message) -> Result<(), Message> {
        if OUTBOX.with(Cell::get) != id {
            return Err(message);
        }
        SENT.with(|sent| sent.set(Some(message)));
        OUTBOX.with(|outbox| outbox.set(id | FULL));
        Ok(())
    }

    /// Whether the outbox of the outbound queue `id` is open and holds a message.
    #[inline(always)]
    pub(crate) fn holds_sent(id: usize) -> bool {
        OUTBOX.with(Cell::get) == id | FULL
    }

    /// Takes the message in the outbox of the outbound queue `id` back out, so that a send
    /// that goes through the queue puts it there first, in order, and the queue's capacity
    /// counts it.
    #[inline]
    pub(crate) fn take_sent(id: usize) -> Option<Message> {
        if OUTBOX.with(Cell::get) != id | FULL {
            return None;
        }
        OUTBOX.with(|outbox| outbox.set(id));
        SENT.with(Cell::take)
    }

    /// Offers `message` to the receiver of queue `id`, until [`reclaim`]ed; gives it back
    /// when another message is offered already (then it goes the queue's way).
    #[inline]
    pub(crate) fn offer(id: usize, message: Message) -> Result<(), Message> {
        if OFFERED_TO.with(Cell::get) != 0 {
            return Err(message);
        }
        OFFERED.with(|offered| offered.set(Some(message)));
        OFFERED_TO.with(|to| to.set(id));
        Ok(())
    }

    /// Takes back the message offered to the receiver of queue `id`, if it was not taken.
    #[inline]
    pub(crate) fn reclaim(id: usize) -> Option<Message> {
        take(id)
    }

    /// The message offered to the receiver of queue `id`, if any.
    #[inline]
    pub(crate) fn take(id: usize) -> Option<Message> {
        if OFFERED_TO.with(Cell::get) != id {
            return None;
        }
        OFFERED_TO.with(|to| to.set(0));
        OFFERED.with(Cell::take)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn an_offer_is_taken_by_its_own_receiver_only_and_reclaimed_if_not() {
            let message = || Message::text("m");
            assert_eq!(offer(1, message()), Ok(()));
            // Another message while one is offered goes the queue's way.
            assert_eq!(offer(2, message()), Err(message()));
            // Another queue's receiver does not see it; its own takes it once.
            assert_eq!(take(2), None);
            assert_eq!(take(1), Some(message()));
            assert_eq!(take(1), None);
            assert_eq!(reclaim(1), None);
            // Not taken: the connection gets it back, and the slot is free again.
            assert_eq!(offer(1, message()), Ok(()));
            assert_eq!(reclaim(2), None);
            assert_eq!(reclaim(1), Some(message()));
            assert_eq!(take(1), None);
        }

        #[test]
        fn the_outbox_takes_one_message_of_its_own_queue_while_open() {
            let message = |text: &str| Message::text(text.to_owned());
            // Closed: nothing goes in.
            assert_eq!(send(64, message("x")), Err(message("x")));
            let ((), sent) = collect(64, || {
                assert_eq!(send(128, message("other")), Err(message("other")));
                assert_eq!(send(64, message("a")), Ok(()));
                // Full: the next send goes the queue's way, after taking "a" out first.
                assert_eq!(send(64, message("b")), Err(message("b")));
                assert_eq!(take_sent(128), None);
                assert_eq!(take_sent(64), Some(message("a")));
                assert_eq!(send(64, message("c")), Ok(()));
                // A nested outbox (another connection's) does not see or lose this one.
                let ((), inner) = collect(192, || {
                    assert_eq!(take_sent(64), None);
                    assert_eq!(send(192, message("i")), Ok(()));
                });
                assert_eq!(inner, Some(message("i")));
            });
            assert_eq!(sent, Some(message("c")));
            // Closed again once the poll is over.
            assert_eq!(send(64, message("y")), Err(message("y")));
            assert_eq!(take_sent(64), None);
        }
    }
}

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
    /// Messages framed once for every subscriber of a hub's topic, with the room this queue
    /// reserved for them.
    Published(Arc<Batch>, Weight),
    Close(CloseFrame),
}

impl Outbound {
    /// What the item counts against the send queue's capacity and byte budget: one item of
    /// its payload's length, or what a batch reserved.
    pub(crate) fn weight(&self) -> Weight {
        match self {
            Outbound::Message(message) => Weight::one(message.len()),
            Outbound::Published(_, reserved) => *reserved,
            Outbound::Close(_) => Weight::one(0),
        }
    }

    /// Settles a queued item's weight to what it holds (`queue::bounded_settling`): a batch
    /// stops taking messages and gives back the room it reserved and did not fill. A socket
    /// subscribed to many topics holds a batch of each, and their reservations alone could
    /// otherwise fill its queue with few messages in it.
    pub(crate) fn settle(&mut self) -> Weight {
        if let Outbound::Published(batch, reserved) = self {
            *reserved = batch.settle(*reserved);
        }
        self.weight()
    }

    /// The message of an item a send pushed, given back when the push failed.
    fn into_message(self) -> Message {
        match self {
            Outbound::Message(message) => message,
            Outbound::Published(..) | Outbound::Close(_) => {
                unreachable!("a send pushes a message, never a batch or a close frame")
            }
        }
    }
}

/// What [`WebSocketSender::try_send_batch`] reserved for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reserved {
    /// This room of the queue: the batch may take messages within it.
    Room(Weight),
    /// The socket got the message alone (a legacy draft, which frames its own): the batch
    /// must take no more.
    #[cfg(feature = "hixie76")]
    Alone,
}

/// Why [`WebSocketSender::try_send_batch`] did not queue a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Undelivered {
    /// The queue is full (under [`QueuePolicy::Wait`] or [`QueuePolicy::Fail`]).
    Full,
    /// The socket is closed, or was closed now for the overflow ([`QueuePolicy::Close`]),
    /// or it cannot carry the message (binary, on a legacy draft).
    Closed,
}

/// One connection's control block: the state its task, its socket's handles and the registry
/// share.
#[derive(Debug, Default)]
pub(crate) struct ControlBlock {
    /// The last keepalive round trip in microseconds, 0 before the first.
    rtt_micros: AtomicU64,
    /// Some handle has sent a close frame: later sends fail.
    close_sent: AtomicBool,
    /// A send found the queue full under [`QueuePolicy::Close`]: the close code to fail the
    /// connection with, 0 when none.
    overflow: AtomicU16,
    /// The layer's handle asked for a graceful close (1001).
    shutdown: AtomicBool,
    /// Wakes the connection task when `overflow` or `shutdown` is set.
    pub(crate) waker: AtomicWaker,
    /// How far the closing handshake got, for the shutdown report.
    pub(crate) progress: CloseProgress,
    /// The peer speaks a legacy draft, which has no binary frames.
    #[cfg(feature = "hixie76")]
    legacy: bool,
}

impl ControlBlock {
    /// The shared state of a connection that speaks a legacy draft.
    #[cfg(feature = "hixie76")]
    pub(crate) fn legacy() -> Self {
        ControlBlock {
            legacy: true,
            ..ControlBlock::default()
        }
    }

    /// Refuses a binary message on a legacy draft, before it is queued.
    #[cfg(feature = "hixie76")]
    fn check_legacy(&self, message: Message) -> Result<Message, SendError> {
        if matches!(message, Message::Binary(_)) && self.legacy {
            return Err(SendError::BinaryOnLegacyDraft(message));
        }
        Ok(message)
    }

    pub(crate) fn set_rtt(&self, rtt: Duration) {
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        self.rtt_micros.store(micros, Ordering::Relaxed);
    }

    /// Asks the connection task to close with 1001.
    pub(crate) fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready when an overflow or a shutdown asks the connection task to act.
    pub(crate) fn poll_signal(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.waker.register(cx.waker());
        if self.overflow().is_some() || self.shutdown_requested() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    pub(crate) fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// The close code a queue overflow asked for, if any.
    pub(crate) fn overflow(&self) -> Option<CloseCode> {
        match self.overflow.load(Ordering::Acquire) {
            0 => None,
            code => Some(CloseCode::from(code)),
        }
    }
}

/// What a send does when the socket's outgoing queue is full (see
/// [`WebSocketLayer::send_queue`](crate::WebSocketLayer::send_queue)).
///
/// Publishing through a [`Hub`](crate::hub::Hub) and [`WebSocketSender::try_send`] never
/// wait, whatever the policy: under `Wait` and `Fail` a full queue makes them fail with
/// [`SendError::QueueFull`] (the message is not queued for that socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueuePolicy {
    /// `send` waits until the queue has room: the sender slows down to the peer's pace,
    /// the way TCP itself pushes back. The default.
    Wait,
    /// `send` fails at once with [`SendError::QueueFull`]; the connection stays open.
    Fail,
    /// The slow peer is closed with this code (1008 policy violation or 1013 try again
    /// later) and the send fails with [`SendError::Closed`]. If even the close frame cannot be
    /// written, TCP is dropped.
    Close(CloseCode),
}

/// The request a socket was opened with, and what the handshake agreed: shared by the
/// socket's receiving half and the connection's close log.
#[derive(Debug)]
pub(crate) struct Environ {
    pub(crate) parts: Parts,
    pub(crate) protocol: Option<HeaderValue>,
    /// The protocol version: 13 (RFC 6455), or 76 and 75 for the legacy drafts.
    pub(crate) version: u8,
}

/// Generates the environ accessors shared by [`WebSocket`] and [`WebSocketReceiver`].
macro_rules! environ_accessors {
    ($($environ:ident).+) => {
        /// The path of the upgrade request, such as `/chat`.
        pub fn path(&self) -> &str {
            self.$($environ).+.parts.uri.path()
        }

        /// The query string of the upgrade request, without the `?`.
        pub fn query(&self) -> Option<&str> {
            self.$($environ).+.parts.uri.query()
        }

        /// The subprotocol agreed in the handshake, `None` if none was (see
        /// [`WebSocketLayer::protocols`](crate::WebSocketLayer::protocols)).
        pub fn protocol(&self) -> Option<&str> {
            self.$($environ).+.protocol.as_ref().and_then(|p| p.to_str().ok())
        }

        /// The `Origin` header of the upgrade request: browsers send it, other clients
        /// seldom do (and `None` when [`WebSocketLayer::keep_headers`](crate::WebSocketLayer::keep_headers)
        /// did not keep it).
        pub fn origin(&self) -> Option<&str> {
            self.$($environ).+
                .parts
                .headers
                .get(header::ORIGIN)
                .and_then(|o| o.to_str().ok())
        }

        /// The protocol version the peer speaks: 13 (RFC 6455), or 76 and 75 for the legacy
        /// drafts hixie-76 and hixie-75, which the `hixie76` feature and
        /// `WebSocketLayer::legacy_drafts` accept (eventlet's `version` attribute).
        pub fn version(&self) -> u8 {
            self.$($environ).+.version
        }

        /// The headers of the upgrade request: all of them, unless
        /// [`WebSocketLayer::keep_headers`](crate::WebSocketLayer::keep_headers) kept fewer.
        pub fn headers(&self) -> &HeaderMap {
            &self.$($environ).+.parts.headers
        }

        /// The whole upgrade request but its body: method, URI, version, headers (those
        /// [`WebSocketLayer::keep_headers`](crate::WebSocketLayer::keep_headers) kept: all by
        /// default) and every extension earlier middleware put there (auth claims,
        /// `ConnectInfo`, ...).
        pub fn environ(&self) -> &Parts {
            &self.$($environ).+.parts
        }

        /// An extension of the upgrade request, put there by earlier middleware.
        pub fn extension<T: Send + Sync + 'static>(&self) -> Option<&T> {
            self.$($environ).+.parts.extensions.get::<T>()
        }

        /// Runs an axum extractor on the upgrade request, as a handler's argument would be:
        /// `Path`, `Query`, `MatchedPath`, `OriginalUri`, `TypedHeader`, your own. The request
        /// is cloned for it (once per call, not per message), with the headers the socket kept.
        ///
        /// ```
        /// use axum::extract::{MatchedPath, Path};
        /// use axum::{routing::get, Router};
        /// use tower_websocket::{WebSocket, WebSocketLayer};
        ///
        /// async fn room(ws: WebSocket) {
        ///     let Ok(Path(room)) = ws.extract::<Path<String>>().await else {
        ///         return; // not under /rooms/{room}: closes with 1000
        ///     };
        ///     let route = ws.extract::<MatchedPath>().await.ok();
        ///     let route = route.as_ref().map_or("-", |m| m.as_str());
        ///     let _ = ws.send(format!("welcome to {room} ({route})")).await;
        /// }
        ///
        /// let app: Router = Router::new()
        ///     .route("/rooms/{room}", get(|| async { "the room's page" }))
        ///     .layer(WebSocketLayer::new(room));
        /// ```
        ///
        /// # Errors
        ///
        /// The extractor's rejection (after the `101`, it can only be logged, or told to the
        /// peer in a message or a close reason).
        #[cfg(feature = "axum")]
        pub async fn extract<E>(&self) -> Result<E, E::Rejection>
        where
            E: axum::extract::FromRequestParts<()>,
        {
            self.extract_with_state(&()).await
        }

        /// [`extract`](Self::extract) with an application state, for extractors that read it
        /// (`State<T>` with `T: FromRef<S>`, say).
        ///
        /// # Errors
        ///
        /// The extractor's rejection.
        #[cfg(feature = "axum")]
        pub async fn extract_with_state<E, S>(&self, state: &S) -> Result<E, E::Rejection>
        where
            E: axum::extract::FromRequestParts<S>,
            S: Send + Sync,
        {
            let mut parts = self.$($environ).+.parts.clone();
            E::from_request_parts(&mut parts, state).await
        }

        /// The peer's address, when the server recorded it: axum's `ConnectInfo<SocketAddr>`
        /// (serve with `into_make_service_with_connect_info::<SocketAddr>()`), or a plain
        /// `SocketAddr` extension.
        pub fn peer_addr(&self) -> Option<SocketAddr> {
            peer_addr(&self.$($environ).+.parts)
        }
    };
}

/// One WebSocket connection, as its handler sees it.
///
/// Returning from the handler closes the connection with 1000. For reading and writing from
/// different tasks, [`split`](Self::split) it, or take extra [`sender`](Self::sender)s.
pub struct WebSocket {
    rx: WebSocketReceiver,
    tx: WebSocketSender,
}

impl WebSocket {
    pub(crate) fn new(
        environ: Arc<Environ>,
        inbound: queue::Receiver<Inbound>,
        outbound: queue::Sender<Outbound>,
        shared: Arc<ControlBlock>,
        policy: QueuePolicy,
    ) -> Self {
        WebSocket {
            rx: WebSocketReceiver {
                environ,
                inbound,
                peer_close: None,
            },
            tx: WebSocketSender {
                outbound,
                shared,
                policy,
            },
        }
    }

    environ_accessors!(rx.environ);

    /// The next whole message, or `None` once the peer has closed or the connection is gone.
    ///
    /// Fragmented messages arrive reassembled; an empty message is `Some`. After `None`,
    /// [`peer_close`](Self::peer_close) tells the peer's close code, if it sent one.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes (in a `tokio::select!` arm
    /// that lost, say), no message is lost; the next call returns it.
    pub fn recv(&mut self) -> impl Future<Output = Option<Message>> + Send + '_ {
        // Not an `async fn`: one future, the receiver's, with no layer around it.
        self.rx.recv()
    }

    /// Queues a message to the peer; see [`WebSocketSender::send`].
    ///
    /// # Errors
    ///
    /// A [`SendError`] that gives the message back: [`SendError::Closed`] once the peer has
    /// closed, this side has closed, or the connection is gone; [`SendError::QueueFull`] under
    /// [`QueuePolicy::Fail`]. It converts into [`Error`] for `?`.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before it completes, the message was not queued.
    pub fn send(
        &self,
        message: impl Into<Message>,
    ) -> impl Future<Output = Result<(), SendError>> + Send + '_ {
        // Not an `async fn`: each layer of those would store the message once more in the
        // handler's future, for every connection.
        self.tx.send(message)
    }

    /// Closes the connection with 1000 (normal closure). See [`close_with`](Self::close_with).
    pub async fn close(&mut self) -> Result<(), Error> {
        self.tx.close().await
    }

    /// Starts the closing handshake with a code and a reason; see
    /// [`WebSocketSender::close_with`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCloseCode`] for a code that may not be sent (see
    /// [`CloseCode::is_sendable`]), [`Error::CloseReasonTooLong`] for a reason over 123 bytes.
    pub async fn close_with(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.tx.close_with(code, reason).await
    }

    /// The close frame the peer sent, once [`recv`](Self::recv) has returned `None`; `None`
    /// before that, or when the peer closed without a code or the connection was lost.
    pub fn peer_close(&self) -> Option<&CloseFrame> {
        self.rx.peer_close()
    }

    /// The round-trip time of the last keepalive ping (see
    /// [`WebSocketLayer::ping_interval`](crate::WebSocketLayer::ping_interval)), `None` before
    /// the first pong.
    pub fn rtt(&self) -> Option<Duration> {
        self.tx.rtt()
    }

    /// Another handle for sending, for another task (a broadcaster, a timer). The socket
    /// still closes when the handler returns; the handle's sends then fail with
    /// [`Error::Closed`].
    pub fn sender(&self) -> WebSocketSender {
        self.tx.clone()
    }

    /// Splits the socket into its receiving half and a sending half that can be cloned and
    /// shared between tasks.
    ///
    /// ```
    /// use tower_websocket::{WebSocket, WebSocketLayer};
    ///
    /// async fn handler(ws: WebSocket) {
    ///     let (mut rx, tx) = ws.split();
    ///     // A task that sends while the handler reads.
    ///     let ticker = tokio::spawn({
    ///         let tx = tx.clone();
    ///         async move {
    ///             let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    ///             loop {
    ///                 tick.tick().await;
    ///                 if tx.send("tick").await.is_err() {
    ///                     break;
    ///                 }
    ///             }
    ///         }
    ///     });
    ///     while let Some(msg) = rx.recv().await {
    ///         if tx.send(msg).await.is_err() {
    ///             break;
    ///         }
    ///     }
    ///     ticker.abort();
    /// }
    /// # let _ = WebSocketLayer::new(handler);
    /// ```
    pub fn split(self) -> (WebSocketReceiver, WebSocketSender) {
        (self.rx, self.tx)
    }
}

impl fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("path", &self.path())
            .field("protocol", &self.protocol())
            .field("origin", &self.origin())
            .field("peer_close", &self.rx.peer_close)
            .finish_non_exhaustive()
    }
}

/// The receiving half of a [`WebSocket`], with its environ.
pub struct WebSocketReceiver {
    /// Behind a pointer: the request would be most of the socket's size, and the socket is
    /// moved into the handler's future.
    environ: Arc<Environ>,
    inbound: queue::Receiver<Inbound>,
    peer_close: Option<CloseFrame>,
}

impl WebSocketReceiver {
    environ_accessors!(environ);

    /// The next whole message, or `None` once the peer has closed or the connection is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes, no message is lost.
    pub fn recv(&mut self) -> impl Future<Output = Option<Message>> + Send + '_ {
        poll_fn(move |cx| self.poll_recv(cx))
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        // A message the connection task hands over while it polls this handler: the queue
        // is empty then, so it is the next one (see `handoff`).
        if let Some(message) = handoff::take(self.inbound.id()) {
            return Poll::Ready(Some(message));
        }
        match ready!(self.inbound.poll_recv(cx)) {
            Some(Inbound::Message(message)) => Poll::Ready(Some(message)),
            Some(Inbound::Closed(frame)) => {
                self.peer_close = frame;
                Poll::Ready(None)
            }
            None => Poll::Ready(None),
        }
    }

    /// The close frame the peer sent, once [`recv`](Self::recv) has returned `None`.
    pub fn peer_close(&self) -> Option<&CloseFrame> {
        self.peer_close.as_ref()
    }
}

impl fmt::Debug for WebSocketReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketReceiver")
            .field("path", &self.path())
            .field("peer_close", &self.peer_close)
            .finish_non_exhaustive()
    }
}

/// The sending half of a [`WebSocket`]: `Clone + Send + Sync`, so any number of tasks can
/// send. Messages from one handle are written in the order they were sent; a frame is never
/// interleaved with another.
#[derive(Clone)]
pub struct WebSocketSender {
    outbound: queue::Sender<Outbound>,
    shared: Arc<ControlBlock>,
    policy: QueuePolicy,
}

impl WebSocketSender {
    /// Queues a message to the peer. What happens when the socket's outgoing queue is full
    /// is the layer's [`QueuePolicy`] (default: wait for room).
    ///
    /// # Errors
    ///
    /// A [`SendError`] that gives the message back: [`SendError::Closed`] once the peer has
    /// closed, this side has closed, or the connection is gone (and under
    /// [`QueuePolicy::Close`] when the queue was full); [`SendError::QueueFull`] under
    /// [`QueuePolicy::Fail`].
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before it completes, the message was not queued.
    pub fn send(
        &self,
        message: impl Into<Message>,
    ) -> impl Future<Output = Result<(), SendError>> + Send + '_ {
        SendMessage {
            sender: self,
            item: Some(Outbound::Message(message.into())),
            checked: false,
        }
    }

    /// Queues a message without waiting: when the queue is full it fails with
    /// [`SendError::QueueFull`] (or closes the peer under [`QueuePolicy::Close`]). What a
    /// [`Hub`](crate::hub::Hub) uses to publish.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), and [`SendError::QueueFull`] under every policy but `Close`.
    pub fn try_send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let message = message.into();
        if self.is_closed() {
            return Err(SendError::Closed(message));
        }
        #[cfg(feature = "hixie76")]
        let message = self.shared.check_legacy(message)?;
        self.enqueue_now(message)
    }

    fn enqueue_now(&self, message: Message) -> Result<(), SendError> {
        self.spill(None);
        match self.outbound.try_push(Outbound::Message(message)) {
            Ok(()) => Ok(()),
            Err(PushError::Closed(item)) => Err(SendError::Closed(item.into_message())),
            Err(PushError::Full(item)) => match self.policy {
                QueuePolicy::Close(code) => {
                    self.close_for_overflow(code);
                    Err(SendError::Closed(item.into_message()))
                }
                QueuePolicy::Wait | QueuePolicy::Fail => {
                    Err(SendError::QueueFull(item.into_message()))
                }
            },
        }
    }

    /// Queues a hub's batch of messages framed once for many sockets (holding `first`, its
    /// first message), with a reservation of the room the queue has left, as
    /// [`try_send`](Self::try_send) queues a message: what a hub's publish does for each
    /// subscriber. Returns what it reserved.
    pub(crate) fn try_send_batch(
        &self,
        batch: &Arc<Batch>,
        #[cfg_attr(not(feature = "hixie76"), allow(unused_variables))] first: &Message,
    ) -> Result<Reserved, Undelivered> {
        // The queue's own closed flag is checked by the push, under the lock it takes anyway.
        if self.shared.close_sent.load(Ordering::Acquire) {
            return Err(Undelivered::Closed);
        }
        #[cfg(feature = "hixie76")]
        if self.shared.legacy {
            // A legacy draft has its own framing: it gets the message, and the batch can
            // take no more (this socket would miss them).
            return self
                .try_send(first.clone())
                .map(|()| Reserved::Alone)
                .map_err(|error| match error {
                    SendError::QueueFull(_) => Undelivered::Full,
                    _ => Undelivered::Closed,
                });
        }
        self.spill(None);
        let mut reserved = Weight::default();
        match self.outbound.try_push_reserving(|room| {
            reserved = batch.reserve(room);
            Outbound::Published(Arc::clone(batch), reserved)
        }) {
            Ok(()) => Ok(Reserved::Room(reserved)),
            Err(PushError::Closed(_)) => Err(Undelivered::Closed),
            Err(PushError::Full(_)) => match self.policy {
                QueuePolicy::Close(code) => {
                    self.close_for_overflow(code);
                    Err(Undelivered::Closed)
                }
                QueuePolicy::Wait | QueuePolicy::Fail => Err(Undelivered::Full),
            },
        }
    }

    /// Moves a message this socket's handler sent into the outbox (`handoff::collect`)
    /// into the queue, ahead of a push that goes through the queue: so the order holds and
    /// the capacity counts it. If the queue is full, it stays in the outbox (then the push
    /// finds the queue full too); `cx` is the task running this, as for the push.
    #[inline(always)]
    fn spill(&self, cx: Option<&Context<'_>>) {
        let id = self.outbound.id();
        // One load of a thread-local in the common case: no outbox of this socket is full.
        if handoff::holds_sent(id) {
            self.spill_sent(id, cx);
        }
    }

    #[cold]
    #[inline(never)]
    fn spill_sent(&self, id: usize, cx: Option<&Context<'_>>) {
        if let Some(earlier) = handoff::take_sent(id) {
            match self.outbound.try_push_from(Outbound::Message(earlier), cx) {
                Ok(()) | Err(PushError::Closed(_)) => {}
                Err(PushError::Full(item)) => {
                    let _ = handoff::send(id, item.into_message());
                }
            }
        }
    }

    /// Under [`QueuePolicy::Close`]: asks the connection task to close the slow peer.
    fn close_for_overflow(&self, code: CloseCode) {
        self.shared.overflow.store(code.into(), Ordering::Release);
        self.shared.close_sent.store(true, Ordering::Release);
        self.shared.waker.wake();
    }

    /// Closes the connection with 1000 (normal closure). See [`close_with`](Self::close_with).
    pub async fn close(&self) -> Result<(), Error> {
        self.close_with(CloseCode::NORMAL, "").await
    }

    /// Starts the closing handshake with a code and a reason.
    ///
    /// Messages queued before are written first. The receiver keeps returning what the peer
    /// sends until its close frame arrives, then `None`; the connection is dropped if the
    /// peer does not answer within the close timeout. Closing twice, or after the peer
    /// closed, does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCloseCode`] for a code that may not be sent (see
    /// [`CloseCode::is_sendable`]), [`Error::CloseReasonTooLong`] for a reason over 123 bytes.
    pub async fn close_with(&self, code: CloseCode, reason: &str) -> Result<(), Error> {
        if !code.is_sendable() {
            return Err(Error::InvalidCloseCode(code.into()));
        }
        if reason.len() > MAX_REASON_LEN {
            return Err(Error::CloseReasonTooLong(reason.len()));
        }
        if self.shared.close_sent.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // A closed channel means the connection is already over: nothing left to close.
        let _ = self
            .outbound
            .push(Outbound::Close(CloseFrame::new(code, reason)))
            .await;
        Ok(())
    }

    /// Whether sends will fail: the connection is over, or a close frame was sent.
    pub fn is_closed(&self) -> bool {
        self.outbound.is_closed() || self.shared.close_sent.load(Ordering::Acquire)
    }

    /// Whether two senders are for the same socket.
    pub fn same_socket(&self, other: &WebSocketSender) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Names the socket, as [`same_socket`](Self::same_socket) compares them.
    pub(crate) fn socket_id(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// The round-trip time of the last keepalive ping, `None` before the first pong.
    pub fn rtt(&self) -> Option<Duration> {
        match self.shared.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }
}

/// The future of [`WebSocketSender::send`]: written by hand rather than as an `async fn`
/// around the queue's push, so that a send that finds room (the common case) is one call
/// with no nested state to build, move and drop.
struct SendMessage<'a> {
    sender: &'a WebSocketSender,
    /// The message, until it is queued or given back.
    item: Option<Outbound>,
    /// The first poll's checks (closed, legacy, policy) are done: the send waits for room.
    checked: bool,
}

impl Future for SendMessage<'_> {
    type Output = Result<(), SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let sender = this.sender;
        if !this.checked {
            let Some(Outbound::Message(message)) = this.item.take() else {
                return Poll::Ready(Ok(()));
            };
            if sender.is_closed() {
                return Poll::Ready(Err(SendError::Closed(message)));
            }
            #[cfg(feature = "hixie76")]
            let message = match sender.shared.check_legacy(message) {
                Ok(message) => message,
                Err(error) => return Poll::Ready(Err(error)),
            };
            let id = sender.outbound.id();
            let message = if sender.outbound.is_empty() {
                // Polled by its connection task, which writes it next: no queue.
                match handoff::send(id, message) {
                    Ok(()) => return Poll::Ready(Ok(())),
                    Err(message) => message,
                }
            } else {
                message
            };
            if sender.policy != QueuePolicy::Wait {
                return Poll::Ready(sender.enqueue_now(message));
            }
            sender.spill(Some(cx));
            this.checked = true;
            this.item = Some(Outbound::Message(message));
        }
        // A receiver waiting in this task (the connection's, which polls the handler) is not
        // woken: see `socket::queue`.
        match sender.outbound.poll_push(&mut this.item, cx, true) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(item)) => Poll::Ready(Err(SendError::Closed(item.into_message()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl fmt::Debug for WebSocketSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketSender")
            .field("closed", &self.is_closed())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The messages of the socket, as [`recv`](WebSocket::recv) returns them: `StreamExt`'s
/// combinators (`next`, `map`, `filter`, `forward`) work on it. The stream ends (`None`) when
/// the peer has closed or the connection is gone; it never yields an error, and
/// [`peer_close`](WebSocket::peer_close) tells why it ended.
///
/// # Cancel safety
///
/// `StreamExt::next` is cancel safe, as `recv` is: a dropped future has taken no message.
impl Stream for WebSocket {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// As for [`WebSocket`]'s `Stream`.
impl Stream for WebSocketReceiver {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().poll_recv(cx)
    }
}

/// Sends through [`WebSocketSender`]'s `Sink`.
impl Sink<Message> for WebSocket {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.get_mut().tx).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Error> {
        Pin::new(&mut self.get_mut().tx).start_send(message)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.get_mut().tx).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.get_mut().tx).poll_close(cx)
    }
}

/// A `Sink` of messages, so that `SinkExt` (`send`, `feed`, `send_all`) and
/// `StreamExt::forward` work: `rx.map(Ok).forward(tx)` echoes, for one.
///
/// - `poll_ready` waits for room in the queue under [`QueuePolicy::Wait`]; under the other
///   policies a full queue is met in `start_send`, as by
///   [`try_send`](WebSocketSender::try_send).
/// - `poll_flush` is ready at once: a message is handed over once it is queued, and the
///   connection writes it (as [`send`](WebSocketSender::send) returns once it is queued).
/// - `poll_close` starts the closing handshake with 1000, as [`close`](WebSocketSender::close)
///   does, for every handle of the socket: `forward` closes its sink when its stream ends.
///
/// The errors are [`Error::Closed`] and [`Error::QueueFull`]; the `Sink` cannot give back a
/// message it failed to queue: use [`send`](WebSocketSender::send) for that.
///
/// # Cancel safety
///
/// A dropped `SinkExt::send` future has queued its message only if it completed.
impl Sink<Message> for WebSocketSender {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.is_closed() {
            return Poll::Ready(Err(Error::Closed));
        }
        match self.policy {
            QueuePolicy::Wait => {
                self.spill(Some(cx));
                self.outbound
                    .poll_ready(cx)
                    .map_err(|queue::Closed| Error::Closed)
            }
            QueuePolicy::Fail | QueuePolicy::Close(_) => Poll::Ready(Ok(())),
        }
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        match self.policy {
            // `poll_ready` saw room; another handle may have taken it since.
            QueuePolicy::Wait => self
                .outbound
                .push_over_capacity(Outbound::Message(message))
                .map_err(|_| Error::Closed),
            QueuePolicy::Fail | QueuePolicy::Close(_) => {
                self.enqueue_now(message).map_err(Error::from)
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if !self.shared.close_sent.swap(true, Ordering::AcqRel) {
            // A closed queue means the connection is already over: nothing left to close.
            let _ = self
                .outbound
                .push_over_capacity(Outbound::Close(CloseFrame::new(CloseCode::NORMAL, "")));
        }
        Poll::Ready(Ok(()))
    }
}

/// The path the client asked for: in a router nested under a prefix (`Router::nest`), the
/// request's own URI has lost the prefix, and axum's `OriginalUri` keeps it.
pub(crate) fn original_path(parts: &Parts) -> &str {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::OriginalUri(uri)) = parts.extensions.get() {
        return uri.path();
    }
    parts.uri.path()
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

/// How far one connection's closing handshake got, in the only order it moves: what the
/// shutdown report counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CloseStage {
    /// No close frame of ours written yet.
    Open = 0,
    /// The connection ended before a close frame of ours was written.
    Lost = 1,
    /// Our close frame was written; the peer's has not come.
    Sent = 2,
    /// Close frames went both ways.
    Done = 3,
}

/// A connection's [`CloseStage`] and whether its handler finished, shared with the registry.
/// The stage only moves forward, so that a connection lost after its close frame went out
/// still counts as a close sent and not answered.
#[derive(Debug, Default)]
pub(crate) struct CloseProgress {
    stage: AtomicU8,
    handler_done: AtomicBool,
}

impl CloseProgress {
    fn advance(&self, stage: CloseStage) {
        self.stage.fetch_max(stage as u8, Ordering::AcqRel);
    }

    /// The connection ended before a close frame of ours was written.
    pub(crate) fn lost(&self) {
        self.advance(CloseStage::Lost);
    }

    /// Our close frame was written (flushed to the transport).
    pub(crate) fn close_sent(&self) {
        self.advance(CloseStage::Sent);
    }

    /// Close frames went both ways: the closing handshake is complete.
    pub(crate) fn handshake_done(&self) {
        self.advance(CloseStage::Done);
    }

    /// The stage reached so far.
    pub(crate) fn stage(&self) -> CloseStage {
        match self.stage.load(Ordering::Acquire) {
            0 => CloseStage::Open,
            1 => CloseStage::Lost,
            2 => CloseStage::Sent,
            _ => CloseStage::Done,
        }
    }

    /// The handler's future completed (returned or panicked).
    pub(crate) fn handler_done(&self) {
        self.handler_done.store(true, Ordering::Release);
    }

    /// Whether [`handler_done`](Self::handler_done) was called.
    pub(crate) fn is_handler_done(&self) -> bool {
        self.handler_done.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::{WebSocket, WebSocketReceiver, WebSocketSender};

    #[test]
    fn socket_handles_stay_small() {
        // A handler's future holds the socket: keep the handles a few words.
        let socket = std::mem::size_of::<WebSocket>();
        let receiver = std::mem::size_of::<WebSocketReceiver>();
        let sender = std::mem::size_of::<WebSocketSender>();
        assert!(socket <= 88, "WebSocket is {socket} bytes");
        assert!(receiver <= 64, "WebSocketReceiver is {receiver} bytes");
        assert!(sender <= 32, "WebSocketSender is {sender} bytes");
    }
}

#[cfg(test)]
mod peer_addr_tests {
    use super::peer_addr;
    use std::net::SocketAddr;

    fn parts() -> http::request::Parts {
        http::Request::new(()).into_parts().0
    }

    #[test]
    fn a_plain_socket_addr_extension_is_the_peer_address() {
        // What a server without axum records (a hyper-util accept loop, say).
        let addr: SocketAddr = "192.0.2.7:4711".parse().unwrap();
        let mut parts = parts();
        assert_eq!(peer_addr(&parts), None);
        parts.extensions.insert(addr);
        assert_eq!(peer_addr(&parts), Some(addr));
    }

    #[cfg(feature = "axum")]
    #[test]
    fn axum_connect_info_is_read_first() {
        let info: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let plain: SocketAddr = "192.0.2.2:2".parse().unwrap();
        let mut parts = parts();
        parts.extensions.insert(plain);
        parts.extensions.insert(axum::extract::ConnectInfo(info));
        assert_eq!(peer_addr(&parts), Some(info));
    }
}
