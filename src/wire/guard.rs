//! A read-side adapter between the upgraded connection and fastwebsockets that watches the
//! bytes as they arrive, for the rules fastwebsockets cannot check from its `Frame` API:
//!
//! - a client frame must be masked (fastwebsockets' `Frame` keeps its mask private);
//! - a control frame carries at most 125 bytes (fastwebsockets checks pings only);
//! - text must be UTF-8 *as it arrives*: invalid text fails at the chunk where it becomes
//!   invalid, even when the frame's payload is still on its way (Autobahn 6.4.3, 6.4.4).
//!
//! Bytes pass through untouched; a violation becomes an `io::Error` carrying a
//! [`Violation`], which the connection answers with its close code.
//!
//! Cost: headers are parsed once more (a few bytes per frame). Text payload is unmasked into a
//! stack buffer and checked only when it cannot be checked whole later: when a text frame's
//! payload does not arrive in one read, or the message is fragmented. A text message that
//! arrives whole in one read is left to the later check, so the common case costs nothing.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::socket::close::CloseCode;
use crate::wire::frame::{header_len, unmask, Header, MAX_HEADER_LEN};
use crate::wire::violation::Violation;

const UNMASKED: Violation = Violation::new(CloseCode::PROTOCOL_ERROR, "client frame is not masked");
const LONG_CONTROL: Violation = Violation::new(
    CloseCode::PROTOCOL_ERROR,
    "control frame longer than 125 bytes",
);
const BAD_UTF8: Violation = Violation::INVALID_UTF8;

/// Where the scanner is in the byte stream.
#[derive(Debug)]
enum Position {
    /// Gathering a frame header: the bytes seen so far.
    Header {
        bytes: [u8; MAX_HEADER_LEN],
        len: usize,
    },
    /// Inside a payload.
    Payload {
        remaining: u64,
        mask: [u8; 4],
        /// Bytes of this payload already seen (the mask's phase).
        offset: u64,
        /// Whether this payload is text to check as it comes.
        check: bool,
        /// Whether this frame ends its message.
        fin: bool,
    },
}

/// The scanner's memory of the message across frames.
#[derive(Debug, Default)]
struct MessageState {
    /// A fragmented text message is in progress.
    text_fragmented: bool,
    /// The check of the current text message has started (it spans reads or frames).
    checking: bool,
    utf8: Utf8Stream,
}

/// Wraps the read half of a connection; see the module docs.
#[derive(Debug)]
pub(crate) struct FrameGuard<R> {
    inner: R,
    position: Position,
    message: MessageState,
}

impl<R> FrameGuard<R> {
    pub(crate) fn new(inner: R) -> Self {
        FrameGuard {
            inner,
            position: Position::Header {
                bytes: [0; MAX_HEADER_LEN],
                len: 0,
            },
            message: MessageState::default(),
        }
    }

    /// Scans bytes just read.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), Violation> {
        while !data.is_empty() {
            if let Position::Header { len: 0, .. } = self.position {
                // A frame whose whole header is in this read, the usual case: parsed in place,
                // not gathered first.
                if let Some(header) = Header::parse(data) {
                    data = &data[header.len..];
                    self.start_payload(header, data.len() as u64)?;
                    // A payload that is all here and not checked as it comes is skipped whole.
                    if let Position::Payload {
                        remaining,
                        check: false,
                        ..
                    } = self.position
                    {
                        if remaining <= data.len() as u64 {
                            data = &data[remaining as usize..];
                            self.position = Position::Header {
                                bytes: [0; MAX_HEADER_LEN],
                                len: 0,
                            };
                        }
                    }
                    continue;
                }
            }
            match &mut self.position {
                Position::Header { bytes, len } => {
                    // The first two bytes tell the header's length; then take the rest.
                    let need = header_len(&bytes[..*len]).unwrap_or(2);
                    let take = (need - *len).min(data.len());
                    bytes[*len..*len + take].copy_from_slice(&data[..take]);
                    *len += take;
                    data = &data[take..];
                    // Parsed once, when complete: the first two bytes alone tell its length.
                    if header_len(&bytes[..*len]) == Some(*len) {
                        if let Some(header) = Header::parse(&bytes[..*len]) {
                            self.start_payload(header, data.len() as u64)?;
                        }
                    }
                }
                Position::Payload {
                    remaining,
                    mask,
                    offset,
                    check,
                    ..
                } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    if *check {
                        let (mask, phase) = (*mask, *offset);
                        check_masked_text(&mut self.message.utf8, &data[..take], mask, phase)?;
                    }
                    *remaining -= take as u64;
                    *offset += take as u64;
                    data = &data[take..];
                    if *remaining == 0 {
                        self.end_payload()?;
                    }
                }
            }
        }
        // A header with a zero-length payload ends its frame at once.
        if let Position::Payload { remaining: 0, .. } = self.position {
            self.end_payload()?;
        }
        Ok(())
    }

    /// A header is complete; `available` bytes of payload follow in this read.
    fn start_payload(&mut self, header: Header, available: u64) -> Result<(), Violation> {
        let Header {
            fin,
            rsv1: compressed,
            opcode,
            mask,
            payload_len: len,
            ..
        } = header;
        let Some(mask) = mask else {
            return Err(UNMASKED);
        };
        if header.is_control() && len > 125 {
            return Err(LONG_CONTROL);
        }
        // Everything else about the header (RSV bits, opcodes, fragmentation, sizes) is
        // fastwebsockets' and the reassembly's to judge; here only what decides the text check.
        // A compressed message (RSV1, permessage-deflate) is not text on the wire: its UTF-8
        // is checked after inflating, by fastwebsockets and the reassembly.
        let check = match opcode {
            0x1 if compressed => {
                self.message = MessageState::default();
                false
            }
            0x1 => {
                self.message = MessageState::default();
                self.message.text_fragmented = !fin;
                // Checked as it comes when it does not arrive whole, or when it is fragmented.
                self.message.checking = !fin || len > available;
                self.message.checking
            }
            0x0 if self.message.text_fragmented => {
                self.message.checking = true;
                true
            }
            _ => false,
        };
        self.position = Position::Payload {
            remaining: len,
            mask,
            offset: 0,
            check,
            fin,
        };
        Ok(())
    }

    fn end_payload(&mut self) -> Result<(), Violation> {
        let Position::Payload { check, fin, .. } = self.position else {
            return Ok(());
        };
        self.position = Position::Header {
            bytes: [0; MAX_HEADER_LEN],
            len: 0,
        };
        if check && fin {
            let complete = self.message.utf8.is_complete();
            self.message = MessageState::default();
            if !complete {
                return Err(BAD_UTF8);
            }
        }
        Ok(())
    }
}

/// Unmasks `data` (payload bytes from `phase` on) into a stack buffer and checks it.
fn check_masked_text(
    utf8: &mut Utf8Stream,
    data: &[u8],
    mask: [u8; 4],
    phase: u64,
) -> Result<(), Violation> {
    let mut scratch = [0u8; 512];
    let mut offset = phase;
    for chunk in data.chunks(scratch.len()) {
        let scratch = &mut scratch[..chunk.len()];
        scratch.copy_from_slice(chunk);
        unmask(scratch, mask, offset);
        offset += chunk.len() as u64;
        utf8.feed(scratch).map_err(|()| BAD_UTF8)?;
    }
    Ok(())
}

/// UTF-8 checked in pieces: a character may be split between pieces.
#[derive(Debug, Default)]
struct Utf8Stream {
    pending: [u8; 4],
    pending_len: usize,
}

impl Utf8Stream {
    fn feed(&mut self, mut data: &[u8]) -> Result<(), ()> {
        if self.pending_len > 0 {
            // Complete the character begun in the last piece, one byte at a time.
            while self.pending_len < 4 && !data.is_empty() {
                self.pending[self.pending_len] = data[0];
                self.pending_len += 1;
                data = &data[1..];
                match std::str::from_utf8(&self.pending[..self.pending_len]) {
                    Ok(_) => {
                        self.pending_len = 0;
                        break;
                    }
                    Err(e) if e.error_len().is_some() => return Err(()),
                    Err(_) => {}
                }
            }
            if self.pending_len > 0 {
                return Ok(());
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(()),
            Err(e) => {
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len();
                Ok(())
            }
        }
    }

    fn is_complete(&self) -> bool {
        self.pending_len == 0
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameGuard<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        match this.scan(&buf.filled()[before..]) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(violation) => Poll::Ready(Err(violation.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        crate::wire::frame::client_frame(fin, 0, opcode, payload)
    }

    /// Feeds `bytes` in pieces of `piece` bytes; returns the first violation.
    fn feed(bytes: &[u8], piece: usize) -> Result<(), Violation> {
        let mut guard = FrameGuard::new(());
        bytes.chunks(piece).try_for_each(|chunk| guard.scan(chunk))
    }

    #[test]
    fn valid_traffic_passes_in_any_pieces() {
        let mut bytes = frame(true, 0x1, "héllo €".as_bytes());
        bytes.extend(frame(false, 0x1, &"κόσμε".as_bytes()[..3]));
        bytes.extend(frame(true, 0x9, b"ping"));
        bytes.extend(frame(true, 0x0, &"κόσμε".as_bytes()[3..]));
        bytes.extend(frame(true, 0x2, &[0xff; 300]));
        for piece in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(feed(&bytes, piece), Ok(()), "pieces of {piece}");
        }
    }

    #[test]
    fn unmasked_frame_is_refused() {
        let mut bytes = frame(true, 0x1, b"hi");
        bytes[1] &= 0x7f;
        assert_eq!(feed(&bytes, 100), Err(UNMASKED));
    }

    #[test]
    fn long_close_and_pong_are_refused_at_their_header() {
        for opcode in [0x8, 0xA] {
            let bytes = frame(true, opcode, &[b'a'; 126]);
            // The header alone is enough.
            assert_eq!(feed(&bytes[..8], 100), Err(LONG_CONTROL));
        }
    }

    #[test]
    fn invalid_text_fails_before_the_frame_is_complete() {
        let mut payload = b"valid start ".to_vec();
        payload.extend_from_slice(&[0xce, 0xba, 0xff]);
        payload.extend_from_slice(&[b'x'; 100]);
        let bytes = frame(true, 0x1, &payload);
        let mut guard = FrameGuard::new(());
        // The invalid byte arrives in the second piece; the frame is far from complete.
        assert_eq!(guard.scan(&bytes[..12]), Ok(()));
        assert_eq!(guard.scan(&bytes[12..24]), Err(BAD_UTF8));
    }

    #[test]
    fn invalid_text_in_a_fragment_fails_at_that_fragment() {
        let mut bytes = frame(false, 0x1, b"ok");
        bytes.extend(frame(false, 0x0, &[0xf4, 0x90]));
        assert_eq!(feed(&bytes, 4096), Err(BAD_UTF8));
    }

    #[test]
    fn fragmented_text_ending_mid_character_fails() {
        let mut bytes = frame(false, 0x1, &[0xe2, 0x82]);
        bytes.extend(frame(true, 0x0, b""));
        assert_eq!(feed(&bytes, 4096), Err(BAD_UTF8));
    }

    #[test]
    fn compressed_text_is_left_to_the_check_after_inflating() {
        let mut bytes = frame(false, 0x1, &[0xff, 0x00, 0x12]);
        bytes[0] |= 0x40; // RSV1: deflated, not UTF-8 on the wire
        bytes.extend(frame(true, 0x0, &[0xfe]));
        assert_eq!(feed(&bytes, 1), Ok(()));
    }

    #[test]
    fn binary_is_never_checked() {
        let mut bytes = frame(false, 0x2, &[0xff, 0xfe]);
        bytes.extend(frame(true, 0x0, &[0xc0]));
        assert_eq!(feed(&bytes, 1), Ok(()));
    }

    #[test]
    fn character_split_across_reads_is_fine() {
        let bytes = frame(true, 0x1, "aaaa€€€€".as_bytes());
        for piece in 1..bytes.len() {
            assert_eq!(feed(&bytes, piece), Ok(()), "pieces of {piece}");
        }
    }
}
