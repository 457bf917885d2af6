//! [`Violation`]: a protocol rule the peer broke, with the close frame that answers it. Every
//! part that checks the wire (the guard, the inflater, the reassembly, the close payload, and
//! the mapping of fastwebsockets' read errors) reports in this one type, and
//! [`Violation::close_frame`] is the one way it becomes a close frame.

use std::fmt;
use std::io;

use fastwebsockets::WebSocketError;

use crate::socket::close::{CloseCode, CloseFrame};
use crate::socket::message::Utf8Bytes;

/// A rule broken on the wire, with the close code that answers it and a reason for the peer
/// and the close log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) code: CloseCode,
    pub(crate) reason: &'static str,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

// The guard and the inflater run under fastwebsockets' reader, which sees their violations as
// `io::Error`s; the connection finds them again with `from_read_error`.
impl std::error::Error for Violation {}

impl Violation {
    /// Text that is not UTF-8: 1007.
    pub(crate) const INVALID_UTF8: Violation = Violation::new(
        CloseCode::INVALID_PAYLOAD,
        "text message is not valid UTF-8",
    );
    /// A message over the size limit: 1009.
    pub(crate) const TOO_BIG: Violation =
        Violation::new(CloseCode::MESSAGE_TOO_BIG, "message too big");
    /// A close payload of one byte, or of more than 125: 1002.
    pub(crate) const CLOSE_LENGTH: Violation =
        Violation::new(CloseCode::PROTOCOL_ERROR, "invalid close frame length");
    /// A close code that may not be sent: 1002.
    pub(crate) const CLOSE_CODE: Violation =
        Violation::new(CloseCode::PROTOCOL_ERROR, "invalid close code");
    /// A close reason that is not UTF-8: 1007.
    pub(crate) const CLOSE_REASON: Violation = Violation::new(
        CloseCode::INVALID_PAYLOAD,
        "close reason is not valid UTF-8",
    );

    pub(crate) const fn new(code: CloseCode, reason: &'static str) -> Self {
        Violation { code, reason }
    }

    /// A framing rule broken: 1002.
    pub(crate) const fn protocol(reason: &'static str) -> Self {
        Violation::new(CloseCode::PROTOCOL_ERROR, reason)
    }

    /// The close frame that fails the connection.
    pub(crate) fn close_frame(self) -> CloseFrame {
        CloseFrame::new(self.code, Utf8Bytes::from_static(self.reason))
    }

    /// What one of fastwebsockets' read errors means: a violation, or (`Err`) the transport
    /// ended, with the reason for the close log.
    pub(crate) fn from_read_error(error: WebSocketError) -> Result<Violation, String> {
        Ok(match error {
            WebSocketError::UnexpectedEOF => {
                return Err("the peer closed TCP without a close frame".to_string())
            }
            WebSocketError::IoError(e) => return Self::from_io(&e).ok_or_else(|| e.to_string()),
            WebSocketError::FrameTooLarge => {
                Violation::new(CloseCode::MESSAGE_TOO_BIG, "frame too big")
            }
            WebSocketError::InvalidUTF8 => Violation::INVALID_UTF8,
            WebSocketError::ReservedBitsNotZero => {
                Violation::protocol("reserved bits set without a negotiated extension")
            }
            WebSocketError::InvalidValue => Violation::protocol("reserved opcode"),
            WebSocketError::ControlFrameFragmented => {
                Violation::protocol("fragmented control frame")
            }
            WebSocketError::PingFrameTooLarge => {
                Violation::protocol("control frame longer than 125 bytes")
            }
            _ => Violation::protocol("protocol error"),
        })
    }

    /// The violation an IO error carries, when the guard or the inflater made it.
    fn from_io(error: &io::Error) -> Option<Violation> {
        error.get_ref()?.downcast_ref::<Violation>().copied()
    }
}

impl From<Violation> for io::Error {
    fn from(violation: Violation) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, violation)
    }
}
