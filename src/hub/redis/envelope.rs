//! The envelope around every message on a topic channel: who sent it, its place in that
//! sender's sequence for the topic, and whether it is text or binary.
//!
//! Layout (big-endian): `b"TW"`, a version byte, a kind byte (0 text, 1 binary), the node id
//! (8 bytes), the sequence number (8 bytes), then the payload as is.

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{Message, Utf8Bytes};

const MAGIC: &[u8; 2] = b"TW";
const VERSION: u8 = 1;
const TEXT: u8 = 0;
const BINARY: u8 = 1;
/// Bytes before the payload.
pub(super) const HEADER_LEN: usize = 2 + 1 + 1 + 8 + 8;

/// A message as received from another node.
#[derive(Debug, PartialEq)]
pub(super) struct Envelope {
    pub(super) node: u64,
    pub(super) seq: u64,
    pub(super) message: Message,
}

/// Wraps `message` for the channel; the payload is copied once, into the envelope.
pub(super) fn encode(node: u64, seq: u64, message: &Message) -> Bytes {
    let payload = message.as_bytes();
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(if message.is_text() { TEXT } else { BINARY });
    out.put_u64(node);
    out.put_u64(seq);
    out.put_slice(payload);
    out.freeze()
}

/// Why bytes on a topic channel are not an envelope.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Invalid {
    /// Shorter than the header, or without the magic bytes.
    NotAnEnvelope,
    /// A version this node does not speak.
    Version(u8),
    /// A kind byte that is neither text nor binary.
    Kind(u8),
    /// A text message whose payload is not UTF-8.
    NotUtf8,
}

/// Reads an envelope; anything a peer (or a person with `redis-cli`) wrote is checked.
pub(super) fn decode(bytes: Bytes) -> Result<Envelope, Invalid> {
    if bytes.len() < HEADER_LEN || &bytes[..2] != MAGIC {
        return Err(Invalid::NotAnEnvelope);
    }
    if bytes[2] != VERSION {
        return Err(Invalid::Version(bytes[2]));
    }
    let kind = bytes[3];
    let mut node = [0; 8];
    node.copy_from_slice(&bytes[4..12]);
    let mut seq = [0; 8];
    seq.copy_from_slice(&bytes[12..20]);
    let payload = bytes.slice(HEADER_LEN..);
    let message = match kind {
        TEXT => Message::text(Utf8Bytes::try_from(payload).map_err(|_| Invalid::NotUtf8)?),
        BINARY => Message::binary(payload),
        other => return Err(Invalid::Kind(other)),
    };
    Ok(Envelope {
        node: u64::from_be_bytes(node),
        seq: u64::from_be_bytes(seq),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_round_trip() {
        for message in [
            Message::text("héllo"),
            Message::binary(vec![0u8, 255, 7]),
            Message::text(""),
        ] {
            let bytes = encode(7, 42, &message);
            assert_eq!(
                decode(bytes),
                Ok(Envelope {
                    node: 7,
                    seq: 42,
                    message
                })
            );
        }
    }

    #[test]
    fn rejects_what_is_not_an_envelope() {
        assert_eq!(
            decode(Bytes::from_static(b"hello")),
            Err(Invalid::NotAnEnvelope)
        );
        assert_eq!(decode(Bytes::new()), Err(Invalid::NotAnEnvelope));
        let mut bytes = encode(1, 1, &Message::text("x")).to_vec();
        bytes[2] = 9;
        assert_eq!(decode(bytes.clone().into()), Err(Invalid::Version(9)));
        bytes[2] = VERSION;
        bytes[3] = 5;
        assert_eq!(decode(bytes.into()), Err(Invalid::Kind(5)));
    }

    #[test]
    fn rejects_text_that_is_not_utf8() {
        let mut bytes = encode(1, 1, &Message::binary(vec![0xff, 0xfe])).to_vec();
        bytes[3] = TEXT;
        assert_eq!(decode(bytes.into()), Err(Invalid::NotUtf8));
    }
}
