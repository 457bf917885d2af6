//! Messages: whole WebSocket messages, text or binary, built on [`bytes::Bytes`].
//!
//! A [`Message`] is what [`WebSocket::recv`](crate::WebSocket::recv) returns (fragments already
//! reassembled) and what [`WebSocket::send`](crate::WebSocket::send) takes. Text is guaranteed
//! UTF-8 by its type, [`Utf8Bytes`]; both kinds share their bytes by reference counting, so
//! cloning a message to send it to many sockets copies no payload.
//!
//! ```
//! use bytes::Bytes;
//! use tower_websocket::Message;
//!
//! let text = Message::from("héllo");
//! assert_eq!(text.as_text(), Some("héllo"));
//!
//! let binary = Message::from(vec![1u8, 2, 3]);
//! assert_eq!(binary.as_bytes(), &[1, 2, 3]);
//! assert!(!binary.is_text());
//!
//! // A borrowed `String` or `Vec<u8>` is copied into a message of its own.
//! let name = String::from("ada");
//! assert_eq!(Message::from(&name), Message::text("ada"));
//! assert_eq!(Message::from(&vec![1u8]), Message::binary(vec![1u8]));
//!
//! // An empty text message is a message like any other.
//! assert_eq!(Message::from("").len(), 0);
//! assert_eq!(Message::from(Bytes::from_static(b"x")), Message::Binary(Bytes::from_static(b"x")));
//! ```

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

/// Bytes that are guaranteed to be valid UTF-8: the payload of a text message.
///
/// Cheap to clone (reference counted) and dereferences to `&str`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utf8Bytes(ByteString);

impl Utf8Bytes {
    /// Text from a static string, without copying.
    pub const fn from_static(text: &'static str) -> Self {
        Utf8Bytes(ByteString::from_static(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The underlying bytes, without copying.
    pub fn into_bytes(self) -> Bytes {
        self.0.into_bytes()
    }

    /// The underlying bytes, by reference.
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }
}

impl Deref for Utf8Bytes {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<&str> for Utf8Bytes {
    fn from(text: &str) -> Self {
        Utf8Bytes(ByteString::from(text))
    }
}

impl From<String> for Utf8Bytes {
    fn from(text: String) -> Self {
        Utf8Bytes(ByteString::from(text))
    }
}

impl From<&String> for Utf8Bytes {
    fn from(text: &String) -> Self {
        Utf8Bytes(ByteString::from(text.as_str()))
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = std::str::Utf8Error;

    /// Checks that the bytes are UTF-8, without copying them.
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        ByteString::try_from(bytes).map(Utf8Bytes)
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A whole WebSocket message.
///
/// Control frames (ping, pong, close) are not messages: the layer answers pings itself and
/// reports the peer's close through [`WebSocket::peer_close`](crate::WebSocket::peer_close).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message, valid UTF-8.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Message::Text(text.into())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Message::Binary(data.into())
    }

    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }

    /// Whether this is a binary message.
    pub fn is_binary(&self) -> bool {
        matches!(self, Message::Binary(_))
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(text) => Some(text.as_str()),
            Message::Binary(_) => None,
        }
    }

    /// The payload's bytes, whichever the kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(data) => data,
        }
    }

    /// The payload, without copying.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Message::Text(text) => text.into_bytes(),
            Message::Binary(data) => data,
        }
    }

    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty (an empty message is still a message).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Message::Text(text.into())
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::Text(text.into())
    }
}

impl From<&String> for Message {
    fn from(text: &String) -> Self {
        Message::Text(text.into())
    }
}

impl From<Utf8Bytes> for Message {
    fn from(text: Utf8Bytes) -> Self {
        Message::Text(text)
    }
}

impl From<Vec<u8>> for Message {
    fn from(data: Vec<u8>) -> Self {
        Message::Binary(data.into())
    }
}

impl From<&Vec<u8>> for Message {
    fn from(data: &Vec<u8>) -> Self {
        Message::Binary(Bytes::copy_from_slice(data))
    }
}

impl From<&[u8]> for Message {
    fn from(data: &[u8]) -> Self {
        Message::Binary(Bytes::copy_from_slice(data))
    }
}

impl From<Bytes> for Message {
    fn from(data: Bytes) -> Self {
        Message::Binary(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_bytes_rejects_invalid_utf8() {
        assert!(Utf8Bytes::try_from(Bytes::from_static(&[0xce, 0xba, 0xff])).is_err());
        let ok = Utf8Bytes::try_from(Bytes::from_static("κόσμε".as_bytes())).unwrap();
        assert_eq!(ok, "κόσμε");
    }

    #[test]
    fn into_bytes_does_not_copy() {
        let data = Bytes::from(vec![7u8; 64]);
        let ptr = data.as_ptr();
        assert_eq!(Message::from(data).into_bytes().as_ptr(), ptr);
    }
}
