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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::{oneshot, Notify};
use tokio::task::AbortHandle;

use slab::Slab;

use crate::socket::{CloseStage, ControlBlock};

/// What every connection of a layer (and of its clones) reports to, and what the handle reads.
/// It alone changes its counters.
#[derive(Default)]
pub(crate) struct Registry {
    live: AtomicUsize,
    accepted: AtomicU64,
    rejected: [AtomicU64; 5],
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    shutting_down: AtomicBool,
    /// The live connections: a slab, so that registering and unregistering are an index, not
    /// a hash (both happen once per upgrade).
    connections: Mutex<Slab<Entry>>,
    /// Notified when the last live connection ends.
    idle: Notify,
}

struct Entry {
    shared: Arc<ControlBlock>,
    abort: AbortHandle,
}

impl Registry {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Sockets live now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
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

    /// A message of `bytes` bytes was read from a peer.
    pub(crate) fn message_in(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A message of `bytes` bytes was queued for a peer.
    pub(crate) fn message_out(&self, bytes: usize) {
        self.messages_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Takes one place among the live sockets, unless `limit` are live already.
    pub(crate) fn take_slot(self: &Arc<Self>, limit: Option<usize>) -> Option<ConnectionSlot> {
        match limit {
            None => {
                self.live.fetch_add(1, Ordering::AcqRel);
            }
            Some(limit) => {
                self.live
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < limit).then_some(n + 1)
                    })
                    .ok()?;
            }
        }
        Some(ConnectionSlot {
            registry: Arc::clone(self),
            id: None,
        })
    }

    /// Registers a connection task, spawned by `spawn` with its slot while the registry is
    /// locked, so that the task cannot end (and unregister) before it is registered.
    pub(crate) fn spawn(
        &self,
        shared: Arc<ControlBlock>,
        mut slot: ConnectionSlot,
        spawn: impl FnOnce(ConnectionSlot) -> AbortHandle,
    ) {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = connections.vacant_entry();
        slot.id = Some(entry.key());
        let abort = spawn(slot);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if self.is_shutting_down() {
            // Accepted as the shutdown began: tell it too.
            shared.request_shutdown();
        }
        entry.insert(Entry { shared, abort });
    }

    /// A connection ended (called when its slot is released).
    fn unregister(&self, id: Option<usize>) {
        if let Some(id) = id {
            self.connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .try_remove(id);
        }
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// One place under [`WebSocketLayer::max_connections`](crate::WebSocketLayer::max_connections),
/// held from the `101` until the connection and its handler have both ended.
pub(crate) struct ConnectionSlot {
    registry: Arc<Registry>,
    /// The connection's index in the registry, once registered.
    id: Option<usize>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.registry.unregister(self.id);
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
        self.registry.live()
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
        let at_start: Vec<Arc<ControlBlock>> = {
            let connections = registry
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            connections
                .iter()
                .map(|(_, entry)| {
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
            for (_, entry) in connections.iter() {
                entry.abort.abort();
                if !entry.shared.progress.is_handler_done() {
                    report.handlers_dropped += 1;
                }
            }
        }
        for shared in &at_start {
            match shared.progress.stage() {
                CloseStage::Done => report.closed += 1,
                CloseStage::Sent => report.unanswered += 1,
                CloseStage::Lost => report.lost += 1,
                // Still open when the grace ran out: dropped with no close frame sent.
                CloseStage::Open => {
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
    use std::sync::Arc;

    use super::Registry;
    use crate::socket::ControlBlock;

    #[tokio::test]
    async fn slots_stop_at_the_limit_and_are_registered_under_slab_keys() {
        let registry = Arc::new(Registry::default());
        let first = registry
            .take_slot(Some(2))
            .expect("a place under the limit");
        let second = registry
            .take_slot(Some(2))
            .expect("a place under the limit");
        assert!(registry.take_slot(Some(2)).is_none(), "the limit is 2");
        assert_eq!(registry.live(), 2);

        let mut held = Vec::new();
        for slot in [first, second] {
            assert_eq!(slot.id, None, "not registered yet");
            registry.spawn(Arc::new(ControlBlock::default()), slot, |slot| {
                held.push(slot);
                tokio::spawn(async {}).abort_handle()
            });
        }
        let ids: Vec<_> = held.iter().map(|slot| slot.id).collect();
        assert_eq!(ids, [Some(0), Some(1)]);
        assert_eq!(registry.connections.lock().expect("not poisoned").len(), 2);
        drop(held);
        assert_eq!(registry.live(), 0);
        assert!(registry.take_slot(Some(2)).is_some(), "places freed");
    }

    #[tokio::test]
    async fn a_released_slot_unregisters_and_its_index_is_reused() {
        let registry = Arc::new(Registry::default());
        let mut held = Vec::new();
        for _ in 0..3 {
            let slot = registry.take_slot(None).expect("no limit");
            registry.spawn(Arc::new(ControlBlock::default()), slot, |slot| {
                held.push(slot);
                tokio::spawn(async {}).abort_handle()
            });
        }
        assert_eq!(registry.live(), 3);
        let middle = held.remove(1);
        assert_eq!(middle.id, Some(1));
        drop(middle);
        assert_eq!(registry.live(), 2);
        assert_eq!(registry.connections.lock().expect("not poisoned").len(), 2);
        let slot = registry.take_slot(None).expect("no limit");
        registry.spawn(Arc::new(ControlBlock::default()), slot, |slot| {
            assert_eq!(slot.id, Some(1), "the freed index is reused");
            held.push(slot);
            tokio::spawn(async {}).abort_handle()
        });
        drop(held);
        assert_eq!(registry.live(), 0);
        assert!(registry
            .connections
            .lock()
            .expect("not poisoned")
            .is_empty());
    }
}
