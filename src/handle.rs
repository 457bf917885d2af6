//! [`WebSocketHandle`]: reach the layer's live sockets from outside, for graceful shutdown
//! and live metrics.
//!
//! `axum::serve(...).with_graceful_shutdown(...)` stops waiting at the `101`: upgraded sockets
//! are neither told nor waited for. The handle does that part. Its
//! [`shutdown`](WebSocketHandle::shutdown) refuses new upgrades with `503`, sends close 1001
//! ("going away") to every live socket, lets their handlers see `None`, waits up to a grace
//! period for them to finish, then drops the rest.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::Router;
//! use tower_websocket::{WebSocket, WebSocketLayer};
//!
//! # async fn echo(_ws: WebSocket) {}
//! #[tokio::main]
//! async fn main() {
//!     let layer = WebSocketLayer::new(echo);
//!     let handle = layer.handle();
//!     let app = Router::new().layer(layer);
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//!     axum::serve(listener, app)
//!         .with_graceful_shutdown(async move {
//!             let _ = tokio::signal::ctrl_c().await;
//!             // HTTP stops accepting; the sockets are told and waited for.
//!             let report = handle.shutdown(Duration::from_secs(10)).await;
//!             tracing::info!(?report, "WebSockets closed");
//!         })
//!         .await
//!         .unwrap();
//! }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::Notify;
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
    /// The future completes when every socket and its handler have finished, or after
    /// `grace`, when the rest are dropped. Calling it again waits again.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let registry = &self.registry;
        registry.shutting_down.store(true, Ordering::Release);
        let live_at_start = {
            let connections = registry
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for entry in connections.values() {
                entry.shared.request_shutdown();
            }
            connections.len()
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
        let aborted = if drained {
            0
        } else {
            let connections = registry
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            connections.values().for_each(|entry| entry.abort.abort());
            connections.len()
        };
        ShutdownReport {
            live_at_start,
            closed: live_at_start.saturating_sub(aborted),
            aborted,
        }
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

/// What a [`shutdown`](WebSocketHandle::shutdown) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Sockets live when the shutdown began.
    pub live_at_start: usize,
    /// Of those, how many finished within the grace period.
    pub closed: usize,
    /// How many were dropped when the grace period ran out.
    pub aborted: usize,
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
