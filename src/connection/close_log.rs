//! The close log: the one INFO event a connection emits when it ends.

use std::sync::Arc;

use crate::socket::{self, Environ};

use super::*;

/// What the close log reports about one connection.
#[derive(Debug)]
pub(super) struct Record {
    /// The request, shared with the socket.
    pub(super) environ: Arc<Environ>,
    pub(super) started: std::time::Instant,
    pub(super) messages_in: u64,
    pub(super) bytes_in: u64,
    pub(super) messages_out: u64,
    pub(super) bytes_out: u64,
}

impl Record {
    pub(super) fn new(environ: Arc<Environ>) -> Self {
        Record {
            environ,
            started: std::time::Instant::now(),
            messages_in: 0,
            bytes_in: 0,
            messages_out: 0,
            bytes_out: 0,
        }
    }

    /// The one INFO event per connection, emitted in the request's span when it ends.
    pub(super) fn log(&self, ending: &Ending) {
        let (closed_by, close_code, close_reason) = ending.summary();
        let Environ {
            parts, protocol, ..
        } = &*self.environ;
        let peer = socket::peer_addr(parts).map(|p| p.to_string());
        let protocol = protocol.as_ref().and_then(|p| p.to_str().ok());
        // HTTP/2 (RFC 8441) answers `200`, not `101`.
        let status = if parts.version == http::Version::HTTP_2 {
            200u16
        } else {
            101
        };
        tracing::info!(
            method = %parts.method,
            path = %socket::original_path(parts),
            peer = peer.as_deref().unwrap_or("-"),
            status,
            protocol = protocol.unwrap_or("-"),
            duration_ms = self.started.elapsed().as_millis() as u64,
            messages_in = self.messages_in,
            bytes_in = self.bytes_in,
            messages_out = self.messages_out,
            bytes_out = self.bytes_out,
            close_code,
            close_reason,
            closed_by,
            "WebSocket connection closed"
        );
    }
}
