//! The errors a socket operation returns: [`SendError`] from a send, which hands the message
//! back, and [`Error`] from everything else.
//!
//! ```
//! use tower_websocket::{Error, Message, WebSocket, WebSocketLayer};
//!
//! async fn handler(ws: WebSocket) -> Result<(), Error> {
//!     // A failed send gives the message back, as tokio's channels do ...
//!     if let Err(failed) = ws.send("hello").await {
//!         let message: Message = failed.into_message();
//!         tracing::warn!(len = message.len(), "not delivered");
//!     }
//!     // ... and converts into `Error` for `?`.
//!     ws.send("bye").await?;
//!     Ok(())
//! }
//! # let _ = WebSocketLayer::new(handler);
//!
//! let err = Error::Closed;
//! assert!(err.to_string().contains("closed"));
//! ```

use std::fmt;

use crate::socket::message::Message;

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

/// A send that failed, with the message that was not queued, as tokio's
/// `mpsc::error::SendError` gives its value back: retry it, send it elsewhere, or log it.
///
/// Converts into [`Error`] (`Closed` or `QueueFull`) for `?` in a handler that returns
/// `Result<(), Error>`.
///
/// ```
/// use tower_websocket::{error::SendError, Error, Message};
///
/// let failed = SendError::Closed(Message::text("hi"));
/// assert!(failed.is_closed());
/// assert_eq!(Error::from(failed.clone()), Error::Closed);
/// assert_eq!(failed.into_message(), Message::text("hi"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The WebSocket is closed (see [`Error::Closed`]): no send will succeed again.
    Closed(Message),
    /// The socket's outgoing queue is full and the send did not wait (see
    /// [`Error::QueueFull`]): a later send may succeed.
    QueueFull(Message),
    /// A binary message to a peer that speaks a legacy draft, which has no binary frames (see
    /// [`Error::BinaryOnLegacyDraft`]): the socket stays open for text.
    BinaryOnLegacyDraft(Message),
}

impl SendError {
    /// The message that was not queued.
    pub fn into_message(self) -> Message {
        match self {
            SendError::Closed(message)
            | SendError::QueueFull(message)
            | SendError::BinaryOnLegacyDraft(message) => message,
        }
    }

    /// The message that was not queued, by reference.
    pub fn message(&self) -> &Message {
        match self {
            SendError::Closed(message)
            | SendError::QueueFull(message)
            | SendError::BinaryOnLegacyDraft(message) => message,
        }
    }

    /// Whether the socket is closed: every later send fails too.
    pub fn is_closed(&self) -> bool {
        matches!(self, SendError::Closed(_))
    }

    /// Whether the queue was full: the socket is open and a later send may succeed.
    pub fn is_queue_full(&self) -> bool {
        matches!(self, SendError::QueueFull(_))
    }

    /// The error without the message.
    pub fn error(&self) -> Error {
        match self {
            SendError::Closed(_) => Error::Closed,
            SendError::QueueFull(_) => Error::QueueFull,
            SendError::BinaryOnLegacyDraft(_) => Error::BinaryOnLegacyDraft,
        }
    }
}

/// The kind and the message's size, not its payload, which may be large or private.
impl fmt::Debug for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, message) = match self {
            SendError::Closed(message) => ("Closed", message),
            SendError::QueueFull(message) => ("QueueFull", message),
            SendError::BinaryOnLegacyDraft(message) => ("BinaryOnLegacyDraft", message),
        };
        let kind = if message.is_text() { "text" } else { "binary" };
        write!(
            f,
            "SendError::{name}({kind} message, {} bytes)",
            message.len()
        )
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error(), f)
    }
}

impl std::error::Error for SendError {}

impl From<SendError> for Error {
    fn from(error: SendError) -> Self {
        error.error()
    }
}
