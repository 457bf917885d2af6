//! The bytes on the wire, done by hand: the client's opening handshake, pre-built masked
//! frames, and a streaming parser that counts echoed frames without copying their payloads.
//!
//! The parser accepts frames with or without the mask bit: the `tcp` server echoes the
//! client's masked frames back unchanged, and the client never looks at payload bytes (it
//! checks opcode and length), so a masked echo is as good as an unmasked one.

use base64::Engine;
use sha1::{Digest, Sha1};

/// The key every benchmark client sends; the answer is checked against [`ACCEPT`].
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// RFC 6455's example answer to [`KEY`].
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// The client's masking key. A fixed key lets frames be built once; it weakens nothing here.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Binary frame opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 0xa;

/// The opening handshake request for `host` (an `ip:port`).
pub fn upgrade_request(host: &str) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// `Sec-WebSocket-Accept` for a key (what the `tcp` server answers).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The end of an HTTP head (the index just past `\r\n\r\n`), if it is all there.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Checks a handshake response head: status 101 and the right accept key. It works on bytes
/// and does little, because `bench upgrade-cost` counts the client's instructions too.
pub fn check_upgrade_response(head: &[u8]) -> Result<(), String> {
    if !head.starts_with(b"HTTP/1.1 101") {
        let text = String::from_utf8_lossy(head);
        let first = text.lines().next().unwrap_or_default();
        return Err(format!("upgrade refused: {first}"));
    }
    if head.windows(ACCEPT.len()).any(|w| w == ACCEPT.as_bytes()) {
        Ok(())
    } else {
        Err("101 without the right Sec-WebSocket-Accept".to_string())
    }
}

/// One masked client frame with a FIN bit, `opcode` and `payload`.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// One unmasked server frame with a FIN bit, `opcode` and `payload`.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// A binary message of `size` bytes as a masked frame, repeated `copies` times back to back,
/// so that sending `k` messages is one write of the first `k` copies.
pub fn binary_frames(size: usize, copies: usize) -> (Vec<u8>, usize) {
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let frame = client_frame(OP_BINARY, &payload);
    let len = frame.len();
    (frame.repeat(copies), len)
}

/// The client's close frame: code 1000 (normal closure), masked.
pub const CLOSE_FRAME: [u8; 8] = [
    0x80 | OP_CLOSE,
    0x80 | 2,
    MASK[0],
    MASK[1],
    MASK[2],
    MASK[3],
    0x03 ^ MASK[0],
    0xe8 ^ MASK[1],
];

/// A frame header, read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub opcode: u8,
    pub masked: bool,
    /// Payload length.
    pub len: u64,
}

impl Header {
    /// Parses a whole header at the start of `data`: the header and its length in bytes
    /// (mask key included), or `None` when `data` is shorter than the header.
    #[inline]
    pub fn parse(data: &[u8]) -> Option<(Header, usize)> {
        let second = *data.get(1)?;
        let header_len = header_len(second);
        let bytes = data.get(..header_len)?;
        let len = match second & 0x7f {
            126 => u64::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            127 => u64::from_be_bytes([
                bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7], bytes[8], bytes[9],
            ]),
            n => u64::from(n),
        };
        let header = Header {
            opcode: bytes[0] & 0x0f,
            masked: second & 0x80 != 0,
            len,
        };
        Some((header, header_len))
    }
}

/// Gathers frame headers from a byte stream fed in arbitrary pieces.
#[derive(Debug, Default)]
pub struct HeaderReader {
    header: [u8; 14],
    have: usize,
}

impl HeaderReader {
    /// Takes header bytes from the front of `data`: the header once it is whole, `None` when
    /// `data` ran out first (the bytes taken are kept for the next call).
    pub fn gather(&mut self, data: &mut &[u8]) -> Option<Header> {
        // 2 bytes, then the extended length and the mask key.
        loop {
            let need = if self.have < 2 {
                2
            } else {
                header_len(self.header[1])
            };
            if self.have == need {
                break;
            }
            if data.is_empty() {
                return None;
            }
            let k = (need - self.have).min(data.len());
            self.header[self.have..self.have + k].copy_from_slice(&data[..k]);
            self.have += k;
            *data = &data[k..];
        }
        let have = std::mem::take(&mut self.have);
        Header::parse(&self.header[..have]).map(|(header, _)| header)
    }

    /// Whether no partial header is held.
    pub fn is_empty(&self) -> bool {
        self.have == 0
    }
}

/// Counts whole frames in a byte stream fed in arbitrary pieces, skipping payloads.
#[derive(Debug, Default)]
pub struct FrameCounter {
    header: HeaderReader,
    /// Payload bytes of the current frame still to skip, once its header is read.
    skip: Option<u64>,
    /// The opcode of the last frame whose header was read.
    pub last_opcode: u8,
}

impl FrameCounter {
    /// Feeds bytes; returns how many frames they completed. Every frame's opcode must be
    /// `opcode` and its payload `len` bytes long (when given).
    pub fn feed(&mut self, mut data: &[u8], opcode: u8, len: Option<u64>) -> Result<usize, String> {
        let mut frames = 0;
        loop {
            if let Some(skip) = self.skip {
                let k = skip.min(data.len() as u64);
                data = &data[k as usize..];
                if skip > k {
                    self.skip = Some(skip - k);
                    return Ok(frames);
                }
                self.skip = None;
                frames += 1;
            }
            let Some(header) = self.header.gather(&mut data) else {
                return Ok(frames);
            };
            let payload = header.len;
            self.last_opcode = header.opcode;
            if self.last_opcode != opcode {
                return Err(format!(
                    "expected opcode {opcode:#x}, got {:#x}",
                    self.last_opcode
                ));
            }
            if len.is_some_and(|len| len != payload) {
                return Err(format!("expected {len:?} payload bytes, got {payload}"));
            }
            self.skip = Some(payload);
        }
    }
}

/// The whole header length given its second byte: base, extended length, mask key.
fn header_len(second: u8) -> usize {
    let extra = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extra + if second & 0x80 != 0 { 4 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frame_is_built_right() {
        assert_eq!(client_frame(OP_CLOSE, &1000u16.to_be_bytes()), CLOSE_FRAME);
    }

    #[test]
    fn accept_matches_rfc() {
        assert_eq!(accept_key(KEY.as_bytes()), ACCEPT);
    }

    #[test]
    fn counts_frames_fed_byte_by_byte() {
        for size in [0, 20, 125, 126, 1024, 65535, 65536, 70000] {
            let (frames, _) = binary_frames(size, 3);
            let mut counter = FrameCounter::default();
            let mut total = 0;
            for byte in &frames {
                total += counter
                    .feed(std::slice::from_ref(byte), OP_BINARY, Some(size as u64))
                    .unwrap();
            }
            assert_eq!(total, 3, "size {size}");
            let mut counter = FrameCounter::default();
            assert_eq!(
                counter.feed(&frames, OP_BINARY, Some(size as u64)).unwrap(),
                3
            );
        }
    }

    #[test]
    fn unmasked_frames_count_too() {
        let frame = [0x82, 3, 1, 2, 3, 0x82, 126, 0, 200];
        let mut counter = FrameCounter::default();
        assert_eq!(counter.feed(&frame, OP_BINARY, None).unwrap(), 1);
        assert_eq!(counter.feed(&[0; 200], OP_BINARY, None).unwrap(), 1);
    }

    #[test]
    fn whole_headers_parse_like_gathered_ones() {
        for size in [0, 20, 125, 126, 1024, 65535, 65536, 70000] {
            for frame in [
                client_frame(OP_BINARY, &vec![7; size]),
                server_frame(OP_BINARY, &vec![7; size]),
            ] {
                let (header, len) = Header::parse(&frame).unwrap();
                assert_eq!(header.len, size as u64);
                assert_eq!(len, frame.len() - size);
                assert!(Header::parse(&frame[..len - 1]).is_none());
                let mut data = &frame[..];
                assert_eq!(HeaderReader::default().gather(&mut data), Some(header));
                assert_eq!(data.len(), size);
            }
        }
    }

    #[test]
    fn wrong_length_is_an_error() {
        let (frames, _) = binary_frames(20, 1);
        assert!(FrameCounter::default()
            .feed(&frames, OP_BINARY, Some(21))
            .is_err());
    }
}
