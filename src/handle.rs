//! [`WebSocketHandle`]: reach the layer's live sockets from outside, for graceful shutdown
//! and live metrics.
//!
//! `axum::serve(...).with_graceful_shutdown(...)` stops waiting at the `101`: upgraded sockets
//! are neither told nor waited for. The handle does that part. Its
//! [`shutdown`](WebSocketHandle::shutdown) refuses new upgrades with `503`, sends close 1001
//! ("going away") to every live socket, lets their handlers see `None`, waits up to a grace
//! period for them to finish, then drops the rest, and reports how each socket ended
//! ([`ShutdownReport`]). Each socket's closing handshake, TCP's end included, takes at most the
//! [close timeout](crate::WebSocketLayer::close_timeout) (5 s by default): a grace a little
//! longer than that leaves only handlers that do not return to be dropped.
//!
//! [`shutdown_on`](WebSocketHandle::shutdown_on) makes the future `with_graceful_shutdown`
//! takes, and hands the report over once the server has stopped:
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::Router;
//! use tower_websocket::layer::DEFAULT_CLOSE_TIMEOUT;
//! use tower_websocket::{WebSocket, WebSocketLayer};
//!
//! # async fn echo(_ws: WebSocket) {}
//! #[tokio::main]
//! async fn main() {
//!     let layer = WebSocketLayer::new(echo);
//!     let sockets = layer.handle();
//!     let app = Router::new().layer(layer);
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//!     // On Ctrl-C the sockets are told and waited for, then HTTP stops accepting.
//!     let grace = DEFAULT_CLOSE_TIMEOUT + Duration::from_secs(1);
//!     let (signal, report) = sockets.shutdown_on(tokio::signal::ctrl_c(), grace);
//!     axum::serve(listener, app)
//!         .with_graceful_shutdown(signal)
//!         .await
//!         .unwrap();
//!     if let Some(report) = report.await {
//!         tracing::info!(?report, "WebSockets closed");
//!     }
//! }
//! ```

#[cfg(feature = "metrics")]
mod metrics;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::{oneshot, Notify};
use tokio::task::AbortHandle;

use crate::socket::Shared;

/// What every connection of a layer (and of its clones) reports to, and what the handle reads.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) live: AtomicUsize,
    accepted: AtomicU64,
    rejected: [AtomicU64; 5],
    pub(crate) messages_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    shutting_down: AtomicBool,
    connections: Mutex<Connections>,
    /// Notified when the last live connection ends.
    idle: Notify,
}

struct Entry {
    shared: Arc<Shared>,
    abort: AbortHandle,
}

/// The live connections: a slab, so that registering and unregistering are an index, not a
/// hash (both happen once per upgrade).
struct Connections<T = Entry> {
    entries: Vec<Option<T>>,
    /// Indices of empty entries, reused first.
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Connections<T> {
    fn default() -> Self {
        Connections {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Connections<T> {
    fn insert(&mut self, entry: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(index) => {
                self.entries[index] = Some(entry);
                index
            }
            None => {
                self.entries.push(Some(entry));
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, index: usize) {
        if let Some(slot) = self.entries.get_mut(index) {
            if slot.take().is_some() {
                self.len -= 1;
                self.free.push(index);
            }
        }
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().flatten()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

impl Registry {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn count_rejection(&self, status: StatusCode) {
        let slot = match status.as_u16() {
            400 => 0,
            403 => 1,
            426 => 2,
            503 => 3,
            _ => 4,
        };
        self.rejected[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Registers a connection task, spawned by `spawn` while the registry is locked so that
    /// the task cannot end (and unregister) before it is registered. `spawn` is given the
    /// connection's index in the registry.
    pub(crate) fn spawn(&self, shared: Arc<Shared>, spawn: impl FnOnce(usize) -> AbortHandle) {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let index = connections
            .free
            .last()
            .copied()
            .unwrap_or(connections.entries.len());
        let abort = spawn(index);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if self.is_shutting_down() {
            // Accepted as the shutdown began: tell it too.
            shared.request_shutdown();
        }
        let inserted = connections.insert(Entry { shared, abort });
        debug_assert_eq!(inserted, index);
    }

    /// A connection ended (called when its slot is released).
    pub(crate) fn unregister(&self, index: usize) {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(index);
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// How far one connection's closing handshake got: what the shutdown report counts. It only
/// moves forward (open, lost, close sent, handshake done), so that a connection lost after
/// its close frame went out still counts as a close sent and not answered.
#[derive(Debug, Default)]
pub(crate) struct CloseProgress {
    state: AtomicU8,
    handler_done: AtomicBool,
}

impl CloseProgress {
    const OPEN: u8 = 0;
    pub(crate) const LOST: u8 = 1;
    const SENT: u8 = 2;
    const DONE: u8 = 3;

    /// The connection ended before a close frame of ours was written.
    pub(crate) fn lost(&self) {
        self.state.fetch_max(Self::LOST, Ordering::AcqRel);
    }

    /// Our close frame was written (flushed to the transport).
    pub(crate) fn close_sent(&self) {
        self.state.fetch_max(Self::SENT, Ordering::AcqRel);
    }

    /// Close frames went both ways: the closing handshake is complete.
    pub(crate) fn handshake_done(&self) {
        self.state.fetch_max(Self::DONE, Ordering::AcqRel);
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// The handler's future completed (returned or panicked).
    pub(crate) fn handler_done(&self) {
        self.handler_done.store(true, Ordering::Release);
    }
}

/// A handle on a layer's sockets: live metrics and graceful shutdown. Made by
/// [`WebSocketLayer::handle`](crate::WebSocketLayer::handle); cheap to clone.
#[derive(Clone)]
pub struct WebSocketHandle {
    registry: Arc<Registry>,
}

impl WebSocketHandle {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        WebSocketHandle { registry }
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> Metrics {
        let r = &self.registry;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Metrics {
            live: r.live.load(Ordering::Relaxed),
            accepted: load(&r.accepted),
            rejected: Rejected {
                bad_request: load(&r.rejected[0]),
                forbidden: load(&r.rejected[1]),
                upgrade_required: load(&r.rejected[2]),
                unavailable: load(&r.rejected[3]),
                other: load(&r.rejected[4]),
            },
            messages_in: load(&r.messages_in),
            bytes_in: load(&r.bytes_in),
            messages_out: load(&r.messages_out),
            bytes_out: load(&r.bytes_out),
        }
    }

    /// How many sockets are live now.
    pub fn live(&self) -> usize {
        self.registry.live.load(Ordering::Relaxed)
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.registry.is_shutting_down()
    }

    /// Closes every live socket gracefully and waits for them.
    ///
    /// From the call on, new upgrades get `503 Service Unavailable`. Each live socket first
    /// writes the messages it had accepted, then sends close 1001 ("server shutting down");
    /// its handler's `recv` returns `None` once the peer answers (or after the close timeout).
    /// The closing handshake of each socket, TCP's end included, takes at most the
    /// [close timeout](crate::WebSocketLayer::close_timeout), so a `grace` a little longer
    /// than that lets every socket whose handler returns finish on its own.
    ///
    /// The future completes when every socket and its handler have finished, or after
    /// `grace`, when the rest are dropped. The [`ShutdownReport`] tells how each socket
    /// ended. Calling it again waits again.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let registry = &self.registry;
        registry.shutting_down.store(true, Ordering::Release);
        // The sockets live now, kept to read how each one ended once the wait is over.
        let at_start: Vec<Arc<Shared>> = {
            let connections = registry
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            connections
                .values()
                .map(|entry| {
                    entry.shared.request_shutdown();
                    Arc::clone(&entry.shared)
                })
                .collect()
        };
        let drained = tokio::time::timeout(grace, async {
            loop {
                let idle = registry.idle.notified();
                let mut idle = std::pin::pin!(idle);
                idle.as_mut().enable();
                if registry.live.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await
        .is_ok();
        let mut report = ShutdownReport {
            live_at_start: at_start.len(),
            closed: 0,
            unanswered: 0,
            lost: 0,
            aborted: 0,
            handlers_dropped: 0,
        };
        if !drained {
            let connections = registry
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for entry in connections.values() {
                entry.abort.abort();
                if !entry.shared.progress.handler_done.load(Ordering::Acquire) {
                    report.handlers_dropped += 1;
                }
            }
        }
        for shared in &at_start {
            match shared.progress.state.load(Ordering::Acquire) {
                CloseProgress::DONE => report.closed += 1,
                CloseProgress::SENT => report.unanswered += 1,
                CloseProgress::LOST => report.lost += 1,
                // Still open when the grace ran out: dropped with no close frame sent.
                state => {
                    debug_assert_eq!(state, CloseProgress::OPEN);
                    report.aborted += 1;
                }
            }
        }
        report
    }
}

impl WebSocketHandle {
    /// The shutdown as `axum::serve(...).with_graceful_shutdown(...)` takes it: a future that
    /// waits for `signal` (Ctrl-C, say), then runs [`shutdown(grace)`](Self::shutdown) and
    /// completes, and the [`ReportReceiver`] that the report is sent to.
    ///
    /// axum stops accepting connections once the future completes, so the sockets are closed
    /// before the listener; plain HTTP is still served meanwhile, and upgrades get `503`.
    /// After the server returns, awaiting the receiver gives the report: `None` if the server
    /// ended before `signal` did (the future was dropped with no shutdown run).
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::Router;
    /// use futures_util::StreamExt;
    /// use tokio_tungstenite::tungstenite::Message as Frame;
    /// use tower_websocket::{WebSocket, WebSocketLayer};
    ///
    /// async fn echo(mut ws: WebSocket) {
    ///     while let Some(msg) = ws.recv().await {
    ///         if ws.send(msg).await.is_err() {
    ///             break;
    ///         }
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = WebSocketLayer::new(echo);
    /// let sockets = layer.handle();
    /// let app = Router::new().layer(layer);
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    /// let addr = listener.local_addr().unwrap();
    ///
    /// // A server would pass `tokio::signal::ctrl_c()`; this example says when itself.
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let (signal, report) = sockets.shutdown_on(stopped, Duration::from_secs(6));
    /// let server = tokio::spawn(async move {
    ///     axum::serve(listener, app).with_graceful_shutdown(signal).await
    /// });
    ///
    /// let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
    ///     .await
    ///     .unwrap();
    /// stop.send(()).unwrap();
    /// // The client is told 1001 "going away"; reading on answers it.
    /// match client.next().await {
    ///     Some(Ok(Frame::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
    ///     other => panic!("{other:?}"),
    /// }
    /// while let Some(Ok(_)) = client.next().await {}
    ///
    /// server.await.unwrap().unwrap();
    /// let report = report.await.expect("the signal fired");
    /// assert_eq!((report.live_at_start, report.closed), (1, 1));
    /// # }
    /// ```
    pub fn shutdown_on<F>(
        &self,
        signal: F,
        grace: Duration,
    ) -> (impl Future<Output = ()> + Send + 'static, ReportReceiver)
    where
        F: Future + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let handle = self.clone();
        let shutdown = async move {
            let _ = signal.await;
            // Nobody may be waiting for the report: it is theirs to drop.
            let _ = tx.send(handle.shutdown(grace).await);
        };
        (shutdown, ReportReceiver { rx })
    }
}

/// Where the future of [`WebSocketHandle::shutdown_on`] sends its [`ShutdownReport`]; await
/// it for the report.
///
/// It resolves to `Some(report)` once the shutdown has run, or to `None` if the future was
/// dropped first (the server ended for another reason before the signal). Not `Clone`: there
/// is one report, for one receiver.
#[derive(Debug)]
#[must_use = "the report is only seen by awaiting the receiver"]
pub struct ReportReceiver {
    rx: oneshot::Receiver<ShutdownReport>,
}

impl ReportReceiver {
    /// The report if the shutdown is over, without waiting.
    pub fn try_report(&mut self) -> Option<ShutdownReport> {
        self.rx.try_recv().ok()
    }
}

impl Future for ReportReceiver {
    type Output = Option<ShutdownReport>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(Result::ok)
    }
}

impl fmt::Debug for WebSocketHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketHandle")
            .field("metrics", &self.metrics())
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

/// A snapshot of a layer's counters (see [`WebSocketHandle::metrics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Sockets live now.
    pub live: usize,
    /// Upgrades accepted since the layer was built.
    pub accepted: u64,
    /// Handshakes refused, by reason.
    pub rejected: Rejected,
    /// Messages received from peers (whole messages, after reassembly).
    pub messages_in: u64,
    /// Payload bytes of those messages.
    pub bytes_in: u64,
    /// Messages written to peers.
    pub messages_out: u64,
    /// Payload bytes of those messages.
    pub bytes_out: u64,
}

/// Refused handshakes, by the status they were answered with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejected {
    /// 400: malformed handshakes, or no common subprotocol when one is required.
    pub bad_request: u64,
    /// 403: refused by the origin policy.
    pub forbidden: u64,
    /// 426: another protocol version, or a connection that cannot be upgraded.
    pub upgrade_required: u64,
    /// 503: the connection limit, or a shutdown in progress.
    pub unavailable: u64,
    /// Any other status: refusals of the `before_upgrade` hook (a 401, say), and the 500 of a
    /// missing required extension.
    pub other: u64,
}

/// What a [`shutdown`](WebSocketHandle::shutdown) did: how each socket live when it began
/// ended, from its peer's point of view, and how many handlers had to be dropped.
///
/// `closed + unanswered + lost + aborted == live_at_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Sockets live when the shutdown began.
    pub live_at_start: usize,
    /// Closed with a complete closing handshake: the peer answered the 1001 (or had sent its
    /// own close frame first).
    pub closed: usize,
    /// The close frame went out but the peer did not answer it within the close timeout (or
    /// before the grace period ran out): the peer was told, TCP was then ended without its
    /// answer.
    pub unanswered: usize,
    /// The connection ended without a close frame getting out: the peer went away, or stopped
    /// reading (the write or close timeout ran out on the bytes queued before the 1001).
    pub lost: usize,
    /// Dropped when the grace period ran out before any close frame could be sent (the peer
    /// was not reading what was queued before the 1001).
    pub aborted: usize,
    /// Handlers still running when the grace period ran out, dropped with their task
    /// (counted apart: their socket is also counted in one of the fields above).
    pub handlers_dropped: usize,
}

#[cfg(test)]
mod tests {
    use super::Connections;

    #[test]
    fn connections_reuse_freed_indices_and_count_what_is_live() {
        let mut slab = Connections::<&str>::default();
        assert_eq!(slab.insert("a"), 0);
        assert_eq!(slab.insert("b"), 1);
        assert_eq!(slab.insert("c"), 2);
        slab.remove(1);
        // Removing twice, or an index never handed out, changes nothing.
        slab.remove(1);
        slab.remove(17);
        assert_eq!(slab.len(), 2);
        assert_eq!(slab.values().copied().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(slab.insert("d"), 1, "the freed index is reused first");
        assert_eq!(slab.insert("e"), 3);
        assert_eq!(slab.len(), 4);
        assert_eq!(
            slab.values().copied().collect::<Vec<_>>(),
            ["a", "d", "c", "e"]
        );
    }
}
