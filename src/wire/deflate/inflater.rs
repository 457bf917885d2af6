//! The read side: compressed frames inflated and re-framed for fastwebsockets (RFC 7692
//! section 7.2.2).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, ReadBuf};

use super::*;
use crate::socket::close::CloseCode;
use crate::wire::frame::{header_len, unmask, Header, MAX_HEADER_LEN};
use crate::wire::violation::Violation;

/// The largest payload of a frame made from inflated data: an inflated message reaches the
/// reader as frames of at most this size.
pub(crate) const INFLATED_FRAME_MAX: usize = u16::MAX as usize;
/// An inflated frame is built behind room for its longest header (4 bytes, since
/// [`INFLATED_FRAME_MAX`] fits a 16-bit length).
pub(super) const HEAD_ROOM: usize = 4;
/// How much an inflated frame's buffer grows at first.
pub(super) const FRAME_START: usize = 4 * 1024;
/// Size of the buffer compressed input is read into.
pub(super) const STASH_SIZE: usize = 16 * 1024;

pub(super) const TOO_BIG: Violation = Violation::new(CloseCode::MESSAGE_TOO_BIG, "message too big");
pub(super) const CORRUPT: Violation = Violation::new(
    CloseCode::INVALID_PAYLOAD,
    "compressed message is not valid deflate data",
);
pub(super) const RSV1_CONTINUATION: Violation = Violation::new(
    CloseCode::PROTOCOL_ERROR,
    "RSV1 set on a continuation frame",
);
pub(super) const RSV1_CONTROL: Violation =
    Violation::new(CloseCode::PROTOCOL_ERROR, "RSV1 set on a control frame");
pub(super) const FRAME_TOO_BIG: Violation =
    Violation::new(CloseCode::MESSAGE_TOO_BIG, "frame too big");
pub(super) const NEW_MESSAGE_INSIDE: Violation = Violation::new(
    CloseCode::PROTOCOL_ERROR,
    "new message started inside a fragmented message",
);

/// Where the adapter is in the incoming byte stream.
#[derive(Debug)]
pub(super) enum Wire {
    /// Gathering a frame header: the bytes seen so far.
    Header {
        bytes: [u8; MAX_HEADER_LEN],
        len: usize,
    },
    /// Inside the payload of a frame passed through untouched.
    Raw { remaining: u64 },
    /// Inside the payload of a frame of a compressed message.
    Deflated {
        remaining: u64,
        mask: [u8; 4],
        /// Payload bytes already consumed (the mask's phase).
        offset: u64,
        fin: bool,
        /// Bytes at the front of the stash already unmasked in place.
        unmasked: usize,
    },
    /// The compressed message's frames are all read: feeding the inflater `00 00 ff ff`.
    Trailer { fed: usize },
}

pub(super) const NEW_HEADER: Wire = Wire::Header {
    bytes: [0; MAX_HEADER_LEN],
    len: 0,
};

/// Bytes read from the inner stream and not yet handled: the compressed frames (and what
/// follows them in the same read).
#[derive(Debug, Default)]
pub(super) struct Stash {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Stash {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Gives the buffer back when it is empty and no compressed message needs it.
    fn settle(&mut self, keep: bool) {
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
            if !keep {
                self.buf = Vec::new();
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.make_room();
        let take = bytes.len().min(self.buf.len() - self.end);
        self.buf[self.end..self.end + take].copy_from_slice(&bytes[..take]);
        self.end += take;
        if take < bytes.len() {
            // More than the buffer holds (a caller's read buffer larger than ours).
            self.buf.truncate(self.end);
            self.buf.extend_from_slice(&bytes[take..]);
            self.end = self.buf.len();
        }
    }

    /// Room at the end, for a read or a push.
    fn make_room(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0; STASH_SIZE];
        }
        if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

/// The compressed message in progress.
#[derive(Debug)]
pub(super) struct Current {
    /// Text or binary: the opcode of its first inflated frame.
    opcode: u8,
    /// Its first frame has been handed on: the next ones are continuations.
    started: bool,
    /// Inflated bytes so far.
    total: usize,
}

/// The inflater and the frames it makes.
pub(super) struct Inflation {
    window_bits: u8,
    no_context_takeover: bool,
    max_message_size: usize,
    /// The largest payload of an inflated frame.
    frame_max: usize,
    /// Made at the first compressed frame; without context takeover, dropped after each
    /// message.
    pub(super) inflater: Option<Decompress>,
    current: Option<Current>,
    /// The frame being filled: `HEAD_ROOM` bytes for its header, then `pending_len -
    /// HEAD_ROOM` bytes of inflated payload. Grows up to `HEAD_ROOM + INFLATED_FRAME_MAX`.
    pending: Vec<u8>,
    pending_len: usize,
    /// A finished frame, `ready[ready_pos..ready_end]`, for the reader.
    ready: Vec<u8>,
    ready_pos: usize,
    ready_end: usize,
}

impl std::fmt::Debug for Inflation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflation")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("max_message_size", &self.max_message_size)
            .field("allocated", &self.inflater.is_some())
            .field("current", &self.current)
            .field("pending", &(self.pending_len - HEAD_ROOM))
            .field("ready", &(self.ready_end - self.ready_pos))
            .finish()
    }
}

impl Inflation {
    fn has_ready(&self) -> bool {
        self.ready_pos < self.ready_end
    }

    /// Starts a compressed message.
    fn begin(&mut self, opcode: u8) {
        self.current = Some(Current {
            opcode,
            started: false,
            total: 0,
        });
        self.pending_len = HEAD_ROOM;
    }

    /// Feeds `input` (unmasked deflate data) to the inflater, framing what comes out.
    /// Returns how much of `input` was consumed: all of it, unless a full frame was made
    /// first (then it is ready, and the rest waits until it has been taken).
    fn feed(&mut self, input: &[u8]) -> Result<usize, Violation> {
        let Some(Current { total, .. }) = &mut self.current else {
            return Ok(input.len());
        };
        let window_bits = self.window_bits;
        let inflater = self
            .inflater
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, window_bits));
        let mut consumed = 0;
        loop {
            if self.pending_len >= self.pending.len() {
                let size = self.pending.len();
                let full = HEAD_ROOM + self.frame_max;
                if size >= full {
                    break;
                }
                let grown = (size * 2).max(HEAD_ROOM + FRAME_START).min(full);
                self.pending.resize(grown, 0);
            }
            let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
            let status = inflater
                .decompress(
                    &input[consumed..],
                    &mut self.pending[self.pending_len..],
                    FlushDecompress::Sync,
                )
                .map_err(|_| CORRUPT)?;
            let read = (inflater.total_in() - in_before) as usize;
            let wrote = (inflater.total_out() - out_before) as usize;
            consumed += read;
            self.pending_len += wrote;
            *total += wrote;
            if *total > self.max_message_size {
                return Err(TOO_BIG);
            }
            if status == Status::StreamEnd {
                // A final block (BFINAL): what follows is a new deflate stream.
                inflater.reset(false);
            } else if consumed == input.len() && self.pending_len < self.pending.len() {
                return Ok(consumed);
            } else if read == 0 && wrote == 0 {
                // No progress with input and room: zlib cannot make sense of it.
                return Err(CORRUPT);
            }
        }
        self.finish_frame(false);
        Ok(consumed)
    }

    /// Makes the pending payload a frame, ready for the reader.
    fn finish_frame(&mut self, fin: bool) {
        let Some(current) = &mut self.current else {
            return;
        };
        let opcode = if current.started { 0 } else { current.opcode };
        current.started = true;
        let first = (fin as u8) << 7 | opcode;
        let len = self.pending_len - HEAD_ROOM;
        if self.pending.len() < HEAD_ROOM {
            self.pending.resize(HEAD_ROOM, 0);
        }
        let start = if len < 126 {
            self.pending[2] = first;
            self.pending[3] = len as u8;
            2
        } else {
            // len <= frame_max <= INFLATED_FRAME_MAX: a 16-bit length.
            self.pending[0] = first;
            self.pending[1] = 126;
            self.pending[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            0
        };
        self.ready = std::mem::take(&mut self.pending);
        self.ready_pos = start;
        self.ready_end = self.pending_len;
        self.pending_len = HEAD_ROOM;
    }

    /// The whole message is inflated: the last frame is made, and the state is dropped
    /// without context takeover.
    fn finish_message(&mut self) {
        self.finish_frame(true);
        self.current = None;
        self.pending = Vec::new();
        if self.no_context_takeover {
            self.inflater = None;
        }
    }

    /// Copies ready bytes into `buf`.
    fn take_ready(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.ready_end - self.ready_pos).min(buf.remaining());
        buf.put_slice(&self.ready[self.ready_pos..self.ready_pos + n]);
        self.ready_pos += n;
        if self.ready_pos == self.ready_end {
            self.ready_pos = 0;
            self.ready_end = 0;
            let ready = std::mem::take(&mut self.ready);
            // Reuse the buffer for the rest of the message.
            if self.current.is_some() && self.pending.is_empty() {
                self.pending = ready;
            }
        }
    }
}

/// What to do with a frame, from its header.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Pass it through untouched.
    Raw,
    /// Inflate it; `Some(opcode)` when it starts a message.
    Deflated(Option<u8>),
}

/// The read-side adapter: between the byte stream (after `FrameGuard`) and fastwebsockets'
/// reader. Frames of compressed messages come out inflated, as frames with RSV1 clear and no
/// mask, of at most [`INFLATED_FRAME_MAX`] bytes each (the first with the message's opcode,
/// the last with FIN); every other frame passes through byte for byte.
///
/// Uncompressed traffic is read straight into the reader's buffer and only scanned; only
/// compressed frames go through a buffer of this adapter, which is given back when no
/// compressed message is in progress.
pub(crate) struct InflateRead<R> {
    inner: R,
    wire: Wire,
    stash: Stash,
    pub(super) inflation: Inflation,
    /// A passed-through header gathered across reads, owed to the reader before its payload:
    /// `head[head_pos..head_end]`.
    head: [u8; MAX_HEADER_LEN],
    head_pos: usize,
    head_end: usize,
    /// An uncompressed message is fragmented and not finished.
    raw_fragmented: bool,
    /// The longest compressed frame accepted.
    wire_frame_max: u64,
}

impl<R> std::fmt::Debug for InflateRead<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflateRead")
            .field("wire", &self.wire)
            .field("stash", &(self.stash.end - self.stash.start))
            .field("inflation", &self.inflation)
            .finish_non_exhaustive()
    }
}

impl<R> InflateRead<R> {
    pub(crate) fn new(inner: R, agreed: &Agreed, max_message_size: usize) -> Self {
        InflateRead {
            inner,
            wire: NEW_HEADER,
            stash: Stash::default(),
            inflation: Inflation {
                window_bits: agreed.client_max_window_bits.clamp(9, 15),
                no_context_takeover: agreed.client_no_context_takeover,
                max_message_size,
                frame_max: INFLATED_FRAME_MAX,
                inflater: None,
                current: None,
                pending: Vec::new(),
                pending_len: HEAD_ROOM,
                ready: Vec::new(),
                ready_pos: 0,
                ready_end: 0,
            },
            head: [0; MAX_HEADER_LEN],
            head_pos: 0,
            head_end: 0,
            raw_fragmented: false,
            wire_frame_max: u64::MAX,
        }
    }

    /// Holds compressed messages to the layer's frame size limit: a compressed frame on the
    /// wire over `max` bytes fails with 1009, and inflated frames are cut at `max` bytes (at
    /// most [`INFLATED_FRAME_MAX`]), so that the reader's own frame limit never refuses them.
    ///
    /// Without it, compressed frames may have any length (they are inflated as they arrive,
    /// never held whole) and inflated frames are up to [`INFLATED_FRAME_MAX`] bytes.
    pub(crate) fn max_frame_size(mut self, max: usize) -> Self {
        self.wire_frame_max = u64::try_from(max).unwrap_or(u64::MAX);
        self.inflation.frame_max = max.clamp(1, INFLATED_FRAME_MAX);
        self
    }

    /// Decides what to do with the frame of a complete `header`.
    fn classify(&self, header: &Header) -> Result<Kind, Violation> {
        let (rsv1, opcode) = (header.rsv1, header.opcode);
        let in_message = self.inflation.current.is_some();
        if header.rsv23 {
            // RSV2 or RSV3: fastwebsockets refuses the frame.
            return Ok(Kind::Raw);
        }
        let kind = match opcode {
            0x1 | 0x2 if in_message || (rsv1 && self.raw_fragmented) => {
                return Err(NEW_MESSAGE_INSIDE)
            }
            0x1 | 0x2 if rsv1 => Kind::Deflated(Some(opcode)),
            0x0 if rsv1 => return Err(RSV1_CONTINUATION),
            0x0 if in_message => Kind::Deflated(None),
            _ if rsv1 && header.is_control() => return Err(RSV1_CONTROL),
            // Uncompressed, or RSV1 on a reserved opcode, which fastwebsockets refuses.
            _ => Kind::Raw,
        };
        if kind != Kind::Raw && header.payload_len > self.wire_frame_max {
            return Err(FRAME_TOO_BIG);
        }
        Ok(kind)
    }

    /// Acts on a complete, classified `header`.
    fn commit(&mut self, header: &Header, kind: &Kind) {
        let (fin, opcode, len) = (header.fin, header.opcode, header.payload_len);
        match kind {
            Kind::Raw => {
                match opcode {
                    0x1 | 0x2 => self.raw_fragmented = !fin,
                    0x0 if fin => self.raw_fragmented = false,
                    _ => {}
                }
                self.wire = if len == 0 {
                    NEW_HEADER
                } else {
                    Wire::Raw { remaining: len }
                };
            }
            Kind::Deflated(start) => {
                if let Some(opcode) = start {
                    self.inflation.begin(*opcode);
                }
                let mask = header.mask.unwrap_or([0; 4]);
                self.wire = match (len, fin) {
                    (0, true) => Wire::Trailer { fed: 0 },
                    (0, false) => NEW_HEADER,
                    _ => Wire::Deflated {
                        remaining: len,
                        mask,
                        offset: 0,
                        fin,
                        unmasked: 0,
                    },
                };
            }
        }
    }

    /// Handles stashed bytes: one step.
    fn step_stash(&mut self, buf: &mut ReadBuf<'_>) -> Result<(), Violation> {
        match &mut self.wire {
            Wire::Header { bytes, len } => {
                let data = self.stash.bytes();
                let need = header_len(&bytes[..*len]).unwrap_or(2);
                let take = (need - *len).min(data.len());
                bytes[*len..*len + take].copy_from_slice(&data[..take]);
                *len += take;
                self.stash.consume(take);
                if let Some(header) = Header::parse(&bytes[..*len]) {
                    let (raw, len) = (*bytes, *len);
                    let kind = self.classify(&header)?;
                    if kind == Kind::Raw {
                        self.head[..len].copy_from_slice(&raw[..len]);
                        self.head_pos = 0;
                        self.head_end = len;
                    }
                    self.commit(&header, &kind);
                }
            }
            Wire::Raw { remaining } => {
                let data = self.stash.bytes();
                let n = (*remaining).min(data.len() as u64) as usize;
                let n = n.min(buf.remaining());
                buf.put_slice(&data[..n]);
                self.stash.consume(n);
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.wire = NEW_HEADER;
                }
            }
            Wire::Deflated {
                remaining,
                mask,
                offset,
                fin,
                unmasked,
            } => {
                let available = (*remaining).min((self.stash.end - self.stash.start) as u64);
                let available = available as usize;
                let start = self.stash.start;
                let data = &mut self.stash.buf[start..start + available];
                unmask(&mut data[*unmasked..], *mask, *offset + *unmasked as u64);
                *unmasked = available;
                let n = self.inflation.feed(data)?;
                self.stash.consume(n);
                *remaining -= n as u64;
                *offset += n as u64;
                *unmasked -= n;
                if *remaining == 0 {
                    self.wire = if *fin {
                        Wire::Trailer { fed: 0 }
                    } else {
                        NEW_HEADER
                    };
                }
            }
            Wire::Trailer { .. } => {}
        }
        Ok(())
    }

    /// Scans bytes the inner stream put straight into the reader's buffer, from `from` on:
    /// whole pass-through frames stay; from the first header that is not (or not yet
    /// whole), the bytes move to the stash.
    fn scan_direct(&mut self, buf: &mut ReadBuf<'_>, from: usize) {
        let end = buf.filled().len();
        let mut at = from;
        while at < end {
            match &mut self.wire {
                Wire::Raw { remaining } => {
                    let n = (*remaining).min((end - at) as u64);
                    at += n as usize;
                    *remaining -= n;
                    if *remaining == 0 {
                        self.wire = NEW_HEADER;
                    }
                }
                _ => {
                    let Some(header) = Header::parse(&buf.filled()[at..end]) else {
                        break;
                    };
                    match self.classify(&header) {
                        Ok(Kind::Raw) => {
                            self.commit(&header, &Kind::Raw);
                            at += header.len;
                        }
                        // Compressed, or refused: handled from the stash, after the
                        // bytes before it are taken.
                        _ => break,
                    }
                }
            }
        }
        if at < end {
            self.stash.push(&buf.filled()[at..end]);
            buf.set_filled(at);
        }
    }

    /// Bytes held by the adapter's buffers (for the bound tests).
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.stash.buf.capacity()
            + self.inflation.pending.capacity()
            + self.inflation.ready.capacity()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for InflateRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        loop {
            // One piece per call: what came before an error still reaches the reader.
            if buf.filled().len() > before || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // What is owed to the reader first, in the order it was made.
            if this.head_pos < this.head_end {
                let n = (this.head_end - this.head_pos).min(buf.remaining());
                buf.put_slice(&this.head[this.head_pos..this.head_pos + n]);
                this.head_pos += n;
                continue;
            }
            if this.inflation.has_ready() {
                this.inflation.take_ready(buf);
                continue;
            }
            let result = if let Wire::Trailer { fed } = this.wire {
                this.inflation.feed(&TRAILER[fed..]).map(|n| {
                    // Done once the trailer is in and no full frame stopped the output.
                    if fed + n == TRAILER.len() && !this.inflation.has_ready() {
                        this.inflation.finish_message();
                        this.wire = NEW_HEADER;
                    } else {
                        this.wire = Wire::Trailer { fed: fed + n };
                    }
                })
            } else if !this.stash.is_empty() {
                this.step_stash(buf)
            } else if matches!(this.wire, Wire::Raw { .. } | Wire::Header { len: 0, .. }) {
                // Straight into the reader's buffer.
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                if buf.filled().len() == before {
                    return Poll::Ready(Ok(())); // end of stream
                }
                this.scan_direct(buf, before);
                Ok(())
            } else {
                this.stash.make_room();
                let stash = &mut this.stash;
                let mut read = ReadBuf::new(&mut stash.buf[stash.end..]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                let n = read.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok(())); // end of stream, inside a frame
                }
                stash.end += n;
                Ok(())
            };
            this.stash.settle(this.inflation.current.is_some());
            if let Err(violation) = result {
                return Poll::Ready(Err(violation.into()));
            }
        }
    }
}
