//! The frame header (RFC 6455 section 5.2), parsed in one place for the parts that read the
//! wire before fastwebsockets does (the guard and the inflater), and the unmasking of a
//! payload.

use crate::socket::close::{CloseCode, CloseFrame};
use crate::socket::message::Utf8Bytes;
use crate::wire::violation::Violation;

/// The longest header: 2 bytes, an 8-byte length and a 4-byte masking key.
pub(crate) const MAX_HEADER_LEN: usize = 14;

/// One frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) fin: bool,
    /// RSV1: a compressed message under permessage-deflate.
    pub(crate) rsv1: bool,
    /// RSV2 or RSV3, which no extension here defines.
    pub(crate) rsv23: bool,
    pub(crate) opcode: u8,
    /// The masking key, when the frame is masked.
    pub(crate) mask: Option<[u8; 4]>,
    pub(crate) payload_len: u64,
    /// The header's own length in bytes.
    pub(crate) len: usize,
}

impl Header {
    /// Parses the header at the start of `bytes`, or `None` until they hold it whole. An
    /// 8-byte length is taken as it is: the size limits judge it.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Header> {
        let len = header_len(bytes)?;
        let bytes = bytes.get(..len)?;
        let (payload_len, at) = match bytes[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => {
                let mut length = [0; 8];
                length.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(length), 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = (bytes[1] & 0x80 != 0)
            .then(|| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        Some(Header {
            fin: bytes[0] & 0x80 != 0,
            rsv1: bytes[0] & 0x40 != 0,
            rsv23: bytes[0] & 0x30 != 0,
            opcode: bytes[0] & 0x0f,
            mask,
            payload_len,
            len,
        })
    }

    /// Whether the opcode is a control frame's (close, ping, pong, or a reserved one).
    pub(crate) fn is_control(&self) -> bool {
        self.opcode & 0x08 != 0
    }
}

/// The length of the header at the start of `bytes`, once its first two bytes tell.
pub(crate) fn header_len(bytes: &[u8]) -> Option<usize> {
    let second = *bytes.get(1)?;
    let length = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    Some(2 + length + mask)
}

/// Unmasks `data` in place: payload bytes from `offset` on, under `mask`.
pub(crate) fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let mut phase = (offset % 4) as usize;
    for byte in data {
        *byte ^= mask[phase];
        phase = (phase + 1) & 3;
    }
}

/// Parses the payload of a close frame from the peer. `Ok(None)` is an empty close (no code).
pub(crate) fn parse_close_payload(payload: bytes::Bytes) -> Result<Option<CloseFrame>, Violation> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(Violation::CLOSE_LENGTH),
        n if n > 125 => Err(Violation::CLOSE_LENGTH),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !CloseCode::from(code).is_sendable() {
                return Err(Violation::CLOSE_CODE);
            }
            let reason =
                Utf8Bytes::try_from(payload.slice(2..)).map_err(|_| Violation::CLOSE_REASON)?;
            Ok(Some(CloseFrame::new(CloseCode::from(code), reason)))
        }
    }
}

/// A client frame, masked, for the crate's unit tests: `rsv` is the RSV bits as they sit in the
/// first byte (`0x40` is RSV1).
#[cfg(test)]
pub(crate) fn client_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![(fin as u8) << 7 | rsv | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = out.len() + 4;
    out.extend_from_slice(&MASK);
    out.extend_from_slice(payload);
    unmask(&mut out[start..], MASK, 0);
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{header_len, parse_close_payload, unmask, Header};
    use crate::socket::close::CloseCode;
    use crate::wire::violation::Violation;

    fn payload(code: u16, reason: &[u8]) -> Bytes {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(reason);
        Bytes::from(v)
    }

    #[test]
    fn header_lengths_come_from_the_first_two_bytes() {
        assert_eq!(header_len(&[0x81]), None);
        assert_eq!(header_len(&[0x81, 0x05]), Some(2));
        assert_eq!(header_len(&[0x81, 0x85]), Some(6));
        assert_eq!(header_len(&[0x82, 0xfe]), Some(8));
        assert_eq!(header_len(&[0x82, 0x7f]), Some(10));
        assert_eq!(header_len(&[0x82, 0xff]), Some(14));
    }

    #[test]
    fn headers_parse_once_whole() {
        let bytes = [0xc1, 0xfe, 0x01, 0x00, 1, 2, 3, 4, 0xaa];
        assert_eq!(Header::parse(&bytes[..7]), None, "the key is not all there");
        let header = Header::parse(&bytes).expect("a whole header");
        assert_eq!(
            header,
            Header {
                fin: true,
                rsv1: true,
                rsv23: false,
                opcode: 0x1,
                mask: Some([1, 2, 3, 4]),
                payload_len: 256,
                len: 8,
            }
        );
        assert!(!header.is_control());
        let long = [0x29, 0x7f, 0, 0, 0, 1, 0, 0, 0, 0];
        let header = Header::parse(&long).expect("a whole header");
        assert_eq!(
            (
                header.fin,
                header.rsv23,
                header.mask,
                header.payload_len,
                header.len
            ),
            (false, true, None, 1 << 32, 10)
        );
        assert!(header.is_control());
    }

    #[test]
    fn unmasking_continues_at_any_offset() {
        let mask = [1, 2, 3, 4];
        let mut masked: Vec<u8> = b"hello world"
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let (head, tail) = masked.split_at_mut(5);
        unmask(head, mask, 0);
        unmask(tail, mask, 5);
        assert_eq!(masked, b"hello world");
    }

    #[test]
    fn empty_close_has_no_code() {
        assert_eq!(parse_close_payload(Bytes::new()), Ok(None));
    }

    #[test]
    fn one_byte_close_is_a_protocol_error() {
        let err = parse_close_payload(Bytes::from_static(&[3])).unwrap_err();
        assert_eq!(err.code, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn close_over_125_bytes_is_a_protocol_error() {
        let err = parse_close_payload(payload(1000, &[b'a'; 124])).unwrap_err();
        assert_eq!(err, Violation::CLOSE_LENGTH);
        assert!(parse_close_payload(payload(1000, &[b'a'; 123])).is_ok());
    }

    #[test]
    fn reserved_code_on_the_wire_is_a_protocol_error() {
        let err = parse_close_payload(payload(1005, b"")).unwrap_err();
        assert_eq!(err, Violation::CLOSE_CODE);
    }

    #[test]
    fn non_utf8_reason_is_invalid_payload() {
        let err = parse_close_payload(payload(1000, &[0xff, 0xfe])).unwrap_err();
        assert_eq!(err.code, CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn valid_close_keeps_code_and_reason() {
        let frame = parse_close_payload(payload(4001, "bye ✓".as_bytes()))
            .unwrap()
            .unwrap();
        assert_eq!(frame.code, CloseCode::from(4001));
        assert_eq!(frame.reason.as_str(), "bye ✓");
    }
}
