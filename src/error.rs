//! The error a socket operation returns.
//!
//! ```
//! use tower_websocket::Error;
//!
//! let err = Error::Closed;
//! assert!(err.to_string().contains("closed"));
//! ```

use std::fmt;

/// What went wrong with a socket operation.
///
/// Refused handshakes are not errors of this kind: they are HTTP responses, described by
/// [`HandshakeRejection`](crate::HandshakeRejection).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The WebSocket is closed: the peer closed it, this side closed it, or the connection was
    /// lost. Every `send` after that fails with this error (Python's "broken pipe").
    Closed,
    /// A close code that may not be sent on the wire (1005, 1006, 1015, or outside 1000-4999).
    InvalidCloseCode(u16),
    /// A close reason longer than 123 bytes, the most a close frame can carry.
    CloseReasonTooLong(usize),
    /// The socket's outgoing queue is full and the send did not wait (under
    /// [`QueuePolicy::Fail`](crate::socket::QueuePolicy::Fail), from `try_send`, or from a
    /// hub's publish): the message was not queued. The connection stays open.
    QueueFull,
    /// A binary message sent to a peer that speaks a legacy draft (hixie-76 or hixie-75, see
    /// `WebSocketLayer::legacy_drafts`): those drafts have text frames only. The message was
    /// not queued; the connection stays open.
    BinaryOnLegacyDraft,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Closed => f.write_str(
                "the WebSocket is closed (the peer closed it, it was closed here, or the connection was lost)",
            ),
            Error::InvalidCloseCode(code) => write!(
                f,
                "close code {code} may not be sent: use 1000-1003, 1007-1014 or 3000-4999"
            ),
            Error::CloseReasonTooLong(len) => write!(
                f,
                "close reason is {len} bytes long; a close frame carries at most 123"
            ),
            Error::QueueFull => f.write_str(
                "the WebSocket's send queue is full (the peer reads more slowly than messages are sent); the message was not queued",
            ),
            Error::BinaryOnLegacyDraft => f.write_str(
                "binary messages cannot be sent on this WebSocket: the peer speaks a legacy draft (hixie-76 or hixie-75), which has text frames only; send text instead (the message was not queued)",
            ),
        }
    }
}

impl std::error::Error for Error {}
