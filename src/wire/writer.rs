//! Outgoing frames, coalesced: the connection task queues every frame here and writes the
//! whole batch with one vectored write when it would otherwise go idle (nothing more to read,
//! nothing more queued) or when the batch reaches [`FLUSH_AT`] bytes.
//!
//! Frame headers come from fastwebsockets' public `Frame::fmt_head`. A small payload is copied
//! next to its header, so a run of small frames is one contiguous slice; a large payload stays
//! where the sender put it (a `Bytes` shared with the message) and goes out as a slice of its
//! own. fastwebsockets' own writer makes one write syscall per frame; under pipelined load
//! this makes one per batch.
//!
//! Flushing is cancel safe: progress is recorded as soon as the IO accepts bytes, so the
//! connection task may drop a pending flush (to read, say) and resume it later.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::AsyncWrite;

use crate::socket::message::Message;
#[cfg(feature = "deflate")]
use crate::wire::deflate::{Compressor, SharedSettings};
#[cfg(feature = "deflate")]
use std::sync::{Mutex, PoisonError};

/// Payloads up to this size are copied next to their header; larger ones are written from
/// where they are.
const INLINE_MAX: usize = 1024;
/// Frames of a prepared message (a hub's publish) up to this size, header included, are copied
/// into the arena; larger ones are written from the one shared buffer every subscriber uses.
const PREPARED_INLINE_MAX: usize = 256;
/// A batch this large is written at once, without waiting for the task to go idle.
pub(crate) const FLUSH_AT: usize = 64 * 1024;
/// The most slices handed to one vectored write.
const MAX_SLICES: usize = 64;
/// After a flush, an arena larger than one inline frame is given back, so that a connection
/// keeps no room for a past burst; one request and its reply (any inline size) reuse it.
const KEEP_CAPACITY: usize = INLINE_MAX + MAX_HEAD;
/// After a flush, a segment list longer than this is given back.
const KEEP_SEGMENTS: usize = 8;

#[derive(Debug)]
enum Segment {
    /// `arena[start..end]`: headers and small payloads, back to back.
    Inline { start: usize, end: usize },
    /// A large payload, shared with the message it belongs to.
    Shared(Bytes),
}

impl Segment {
    fn len(&self) -> usize {
        match self {
            Segment::Inline { start, end } => end - start,
            Segment::Shared(bytes) => bytes.len(),
        }
    }
}

/// The longest header of a server frame: 2 bytes, 8 of extended length, no mask.
const MAX_HEAD: usize = 14;

/// Formats the header of a whole, unmasked frame (FIN set, RSV1 as given) into `head`;
/// returns its length.
fn format_head(head: &mut [u8; MAX_HEAD], opcode: OpCode, payload: &[u8], rsv1: bool) -> usize {
    let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
    let head_len = frame.fmt_head(head);
    if rsv1 {
        // fastwebsockets' `Frame` has no RSV bits: set RSV1 on the header it formatted.
        head[0] |= 0x40;
    }
    head_len
}

/// A frame formatted once, to be queued on many sockets.
#[derive(Debug, Clone)]
enum Framed {
    /// Header and a small payload in one buffer: one copy into each batch's arena.
    Whole(Bytes),
    /// The header, and a large payload shared as it is (never copied).
    Split {
        head: [u8; MAX_HEAD],
        head_len: u8,
        payload: Bytes,
    },
}

impl Framed {
    fn new(opcode: OpCode, payload: &Bytes, rsv1: bool) -> Framed {
        let mut head = [0u8; MAX_HEAD];
        let head_len = format_head(&mut head, opcode, payload, rsv1);
        if payload.len() <= INLINE_MAX {
            let mut frame = Vec::with_capacity(head_len + payload.len());
            frame.extend_from_slice(&head[..head_len]);
            frame.extend_from_slice(payload);
            Framed::Whole(Bytes::from(frame))
        } else {
            Framed::Split {
                head,
                // At most `MAX_HEAD`.
                head_len: head_len as u8,
                payload: payload.clone(),
            }
        }
    }
}

/// A data message framed once for many sockets: what a hub's publish hands each subscriber.
///
/// Every subscriber's connection writes the same bytes: the uncompressed frame, or, for the
/// sockets that compress without context takeover, one compressed frame per set of
/// compression settings, made by the first such socket to write it and shared with the
/// others. A socket that compresses with context takeover still compresses the message
/// itself, since its output depends on what it sent before.
#[derive(Debug)]
pub(crate) struct Prepared {
    message: Message,
    /// FIN set, RSV1 clear.
    frame: Framed,
    /// The compressed frames made so far; `None` for settings whose threshold the message
    /// is under.
    #[cfg(feature = "deflate")]
    compressed: Mutex<Vec<(SharedSettings, Option<Framed>)>>,
}

impl Prepared {
    /// Frames `message`.
    pub(crate) fn new(message: Message) -> Self {
        let (opcode, payload) = opcode_and_payload(&message);
        Prepared {
            frame: Framed::new(opcode, payload, false),
            message,
            #[cfg(feature = "deflate")]
            compressed: Mutex::new(Vec::new()),
        }
    }

    /// The message framed.
    pub(crate) fn message(&self) -> &Message {
        &self.message
    }

    /// Queues the frame on a socket without compression.
    #[cfg(not(feature = "deflate"))]
    pub(crate) fn push_to(&self, out: &mut FrameWriter) {
        out.push_prepared(&self.frame);
    }

    /// Queues the frame on a socket, compressed as the socket's `compressor` (if any)
    /// compresses it.
    #[cfg(feature = "deflate")]
    pub(crate) fn push_to(&self, out: &mut FrameWriter, compressor: Option<&mut Compressor>) {
        let Some(compressor) = compressor else {
            return out.push_prepared(&self.frame);
        };
        let frame = match compressor.shared_settings() {
            Some(settings) => self.compressed(settings, compressor),
            None => {
                let (opcode, payload) = opcode_and_payload(&self.message);
                if let Some(compressed) = compressor.compress(payload) {
                    return out.push_compressed(opcode, &compressed);
                }
                None
            }
        };
        out.push_prepared(frame.as_ref().unwrap_or(&self.frame));
    }

    /// The compressed frame for `settings`, made with `compressor` (which has them) unless
    /// another socket made it first; `None` when the message stays uncompressed.
    #[cfg(feature = "deflate")]
    fn compressed(&self, settings: SharedSettings, compressor: &mut Compressor) -> Option<Framed> {
        let lock = || {
            self.compressed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if let Some((_, frame)) = lock().iter().find(|(s, _)| *s == settings) {
            return frame.clone();
        }
        // Compressed outside the lock, so that sockets with other settings do not wait; two
        // sockets racing here both compress, to the same bytes, and the first one is kept.
        let (opcode, payload) = opcode_and_payload(&self.message);
        let frame = compressor
            .compress(payload)
            .map(|compressed| Framed::new(opcode, &compressed, true));
        let mut made = lock();
        match made.iter().find(|(s, _)| *s == settings) {
            Some((_, first)) => first.clone(),
            None => {
                made.push((settings, frame.clone()));
                frame
            }
        }
    }
}

fn opcode_and_payload(message: &Message) -> (OpCode, &Bytes) {
    match message {
        Message::Text(text) => (OpCode::Text, text.as_bytes()),
        Message::Binary(data) => (OpCode::Binary, data),
    }
}

/// The batch of frames not yet written.
#[derive(Debug, Default)]
pub(crate) struct FrameWriter {
    arena: Vec<u8>,
    segments: Vec<Segment>,
    /// Segments fully written, from the front.
    done: usize,
    /// Bytes of `segments[done]` already written.
    offset: usize,
    /// Bytes queued and not yet written.
    pending: usize,
}

impl FrameWriter {
    /// Queues one whole frame (FIN set, unmasked: the server's frames are never masked).
    pub(crate) fn push(&mut self, opcode: OpCode, payload: &Bytes) {
        self.push_frame(opcode, payload, false);
    }

    /// Queues a control frame (ping, pong, close) whose payload is at most 125 bytes, copied
    /// into the batch from where it is: the caller needs no `Bytes` of its own for it.
    pub(crate) fn push_control(&mut self, opcode: OpCode, payload: &[u8]) {
        debug_assert!(
            payload.len() <= 125,
            "a control frame's payload is at most 125 bytes"
        );
        let mut head = [0u8; MAX_HEAD];
        let head_len = format_head(&mut head, opcode, payload, false);
        self.push_inline(&head[..head_len]);
        self.push_inline(payload);
        self.pending += head_len + payload.len();
    }

    /// Queues one whole frame whose payload is compressed (RSV1 set, permessage-deflate).
    #[cfg(feature = "deflate")]
    pub(crate) fn push_compressed(&mut self, opcode: OpCode, payload: &Bytes) {
        self.push_frame(opcode, payload, true);
    }

    fn push_frame(&mut self, opcode: OpCode, payload: &Bytes, rsv1: bool) {
        let mut head = [0u8; MAX_HEAD];
        let head_len = format_head(&mut head, opcode, payload, rsv1);
        self.push_inline(&head[..head_len]);
        if payload.len() <= INLINE_MAX {
            self.push_inline(payload);
        } else {
            self.segments.push(Segment::Shared(payload.clone()));
        }
        self.pending += head_len + payload.len();
    }

    /// Queues a frame formatted once for many sockets ([`Prepared`]): a small one is
    /// copied into the batch like any small frame, a large one's payload is written from
    /// where it is.
    fn push_prepared(&mut self, frame: &Framed) {
        match frame {
            Framed::Whole(bytes) if bytes.len() <= PREPARED_INLINE_MAX => {
                self.push_inline(bytes);
                self.pending += bytes.len();
            }
            Framed::Whole(bytes) => {
                // Shared, not copied: a burst of larger publishes would otherwise be copied
                // into (and grow) every subscriber's arena.
                self.segments.push(Segment::Shared(bytes.clone()));
                self.pending += bytes.len();
            }
            Framed::Split {
                head,
                head_len,
                payload,
            } => {
                let head = &head[..usize::from(*head_len)];
                self.push_inline(head);
                self.segments.push(Segment::Shared(payload.clone()));
                self.pending += head.len() + payload.len();
            }
        }
    }

    fn push_inline(&mut self, bytes: &[u8]) {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        let end = self.arena.len();
        let unwritten = self.segments.len() > self.done;
        match self.segments.last_mut() {
            // Still unwritten and right before these bytes: grow it.
            Some(Segment::Inline { end: last_end, .. }) if unwritten && *last_end == start => {
                *last_end = end;
            }
            _ => self.segments.push(Segment::Inline { start, end }),
        }
    }

    /// Bytes queued and not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// Writes everything queued, then flushes the IO (TLS buffers its records).
    pub(crate) async fn flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx, io)).await
    }

    /// [`flush`](Self::flush) as a poll: cancel safe, progress is kept between calls.
    pub(crate) fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut W,
    ) -> Poll<io::Result<()>> {
        while self.pending > 0 {
            if self.segments.len() - self.done == 1 {
                // One segment left (a run of small frames, say): a plain write, with no
                // slice array to fill. `send` also costs the kernel less than `writev`.
                let bytes = match &self.segments[self.done] {
                    Segment::Inline { start, end } => &self.arena[*start..*end],
                    Segment::Shared(bytes) => &bytes[..],
                };
                let written = ready!(Pin::new(&mut *io).poll_write(cx, &bytes[self.offset..]))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.advance(written);
                continue;
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (i, segment) in self.segments[self.done..]
                .iter()
                .take(MAX_SLICES)
                .enumerate()
            {
                let bytes = match segment {
                    Segment::Inline { start, end } => &self.arena[*start..*end],
                    Segment::Shared(bytes) => &bytes[..],
                };
                let skip = if i == 0 { self.offset } else { 0 };
                slices[count] = IoSlice::new(&bytes[skip..]);
                count += 1;
            }
            let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        self.reset();
        Pin::new(&mut *io).poll_flush(cx)
    }

    /// Records that `n` more bytes were written.
    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            let left = self.segments[self.done].len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.done += 1;
            self.offset = 0;
        }
    }

    /// Everything is written: empty the batch, keeping a small arena and segment list for the
    /// next one.
    fn reset(&mut self) {
        self.done = 0;
        self.offset = 0;
        if self.arena.capacity() > KEEP_CAPACITY || self.segments.capacity() > KEEP_SEGMENTS {
            self.give_back();
        } else {
            self.segments.clear();
            self.arena.clear();
        }
    }

    /// The rare half of [`reset`](Self::reset): a batch grew past what is kept.
    #[cold]
    #[inline(never)]
    fn give_back(&mut self) {
        if self.segments.capacity() > KEEP_SEGMENTS {
            self.segments = Vec::new();
        } else {
            self.segments.clear();
        }
        if self.arena.capacity() > KEEP_CAPACITY {
            self.arena = Vec::new();
        } else {
            self.arena.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An IO that accepts at most `chunk` bytes per write, and says Pending every other call.
    struct Trickle {
        written: Arc<Mutex<Vec<u8>>>,
        chunk: usize,
        calls: usize,
        flushed: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            if self.calls % 2 == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut budget = self.chunk;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(budget);
                self.written.lock().unwrap().extend_from_slice(&buf[..take]);
                n += take;
                budget -= take;
                if budget == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushed = true;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn expected(frames: &[(OpCode, &Bytes)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (opcode, payload) in frames {
            let mut frame = Frame::new(true, *opcode, None, Payload::Borrowed(payload));
            let mut buf = Vec::new();
            out.extend_from_slice(frame.write(&mut buf));
        }
        out
    }

    #[tokio::test]
    async fn a_batch_is_written_exactly_in_order_through_partial_writes() {
        let small = Bytes::from_static(b"hello");
        let large = Bytes::from(vec![7u8; 70_000]);
        let empty = Bytes::new();
        let medium = Bytes::from(vec![1u8; 300]);
        let frames = [
            (OpCode::Text, &small),
            (OpCode::Binary, &large),
            (OpCode::Pong, &empty),
            (OpCode::Binary, &medium),
            (OpCode::Text, &small),
        ];
        for chunk in [1, 3, 100, 4096, 1 << 20] {
            let written = Arc::new(Mutex::new(Vec::new()));
            let mut io = Trickle {
                written: written.clone(),
                chunk,
                calls: 0,
                flushed: false,
            };
            let mut out = FrameWriter::default();
            for (opcode, payload) in frames {
                out.push(opcode, payload);
            }
            assert_eq!(out.pending(), expected(&frames).len());
            out.flush(&mut io).await.unwrap();
            assert_eq!(
                *written.lock().unwrap(),
                expected(&frames),
                "chunks of {chunk}"
            );
            assert!(io.flushed);
            assert_eq!(out.pending(), 0);
        }
    }

    #[tokio::test]
    async fn a_control_frame_from_a_slice_is_what_push_writes() {
        let ping = Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 9]);
        let close = Bytes::from(vec![0x03, 0xE8, b'b', b'y', b'e']);
        let empty = Bytes::new();
        let frames = [
            (OpCode::Ping, &ping),
            (OpCode::Close, &close),
            (OpCode::Pong, &empty),
        ];
        let mut out = FrameWriter::default();
        for (opcode, payload) in frames {
            out.push_control(opcode, payload);
        }
        assert_eq!(out.pending(), expected(&frames).len());
        let written = Arc::new(Mutex::new(Vec::new()));
        let mut io = Trickle {
            written: written.clone(),
            chunk: 1 << 20,
            calls: 0,
            flushed: false,
        };
        out.flush(&mut io).await.unwrap();
        assert_eq!(*written.lock().unwrap(), expected(&frames));
    }

    #[test]
    fn small_frames_share_one_slice_and_large_payloads_are_not_copied() {
        let mut out = FrameWriter::default();
        let small = Bytes::from_static(b"abc");
        let large = Bytes::from(vec![0u8; 2000]);
        out.push(OpCode::Text, &small);
        out.push(OpCode::Text, &small);
        out.push(OpCode::Binary, &large);
        out.push(OpCode::Text, &small);
        assert_eq!(out.segments.len(), 3, "{:?}", out.segments);
        match &out.segments[1] {
            Segment::Shared(bytes) => assert_eq!(bytes.as_ptr(), large.as_ptr()),
            other => panic!("{other:?}"),
        }
    }

    /// What a batch holds, in order, as one buffer.
    fn batch_bytes(out: &FrameWriter) -> Vec<u8> {
        let mut bytes = Vec::new();
        for segment in &out.segments[out.done..] {
            match segment {
                Segment::Inline { start, end } => bytes.extend_from_slice(&out.arena[*start..*end]),
                Segment::Shared(shared) => bytes.extend_from_slice(shared),
            }
        }
        assert_eq!(bytes.len(), out.pending());
        bytes
    }

    fn messages() -> Vec<Message> {
        let text: String = "{\"user\":\"ada\",\"text\":\"hello\"} ".repeat(60);
        vec![
            Message::text(""),
            Message::text("hello"),
            Message::binary(vec![5u8; 125]),
            Message::binary(vec![6u8; 126]),
            Message::text(text),
            Message::binary(vec![7u8; 70_000]),
        ]
    }

    #[test]
    fn a_prepared_frame_is_exactly_what_push_writes() {
        for message in messages() {
            let (opcode, payload) = opcode_and_payload(&message);
            let mut pushed = FrameWriter::default();
            pushed.push(opcode, payload);
            let mut prepared = FrameWriter::default();
            let frame = Prepared::new(message.clone());
            #[cfg(feature = "deflate")]
            frame.push_to(&mut prepared, None);
            #[cfg(not(feature = "deflate"))]
            frame.push_to(&mut prepared);
            assert_eq!(
                batch_bytes(&prepared),
                batch_bytes(&pushed),
                "{} bytes",
                message.len()
            );
        }
    }

    #[test]
    fn a_large_prepared_payload_is_shared_not_copied() {
        let payload = Bytes::from(vec![1u8; 4000]);
        let frame = Prepared::new(Message::binary(payload.clone()));
        let mut out = FrameWriter::default();
        out.push(OpCode::Text, &Bytes::from_static(b"a"));
        out.push_prepared(&frame.frame);
        match out.segments.last() {
            Some(Segment::Shared(bytes)) => assert_eq!(bytes.as_ptr(), payload.as_ptr()),
            other => panic!("{other:?}"),
        }
        // A 1 KiB publish: header and payload framed once in one buffer, which every
        // subscriber's batch shares rather than copies; a 20-byte one is copied.
        let kib = Prepared::new(Message::binary(vec![2u8; 1024]));
        let Framed::Whole(framed) = &kib.frame else {
            panic!("a 1 KiB frame is framed whole");
        };
        out.push_prepared(&kib.frame);
        match out.segments.last() {
            Some(Segment::Shared(bytes)) => assert_eq!(bytes.as_ptr(), framed.as_ptr()),
            other => panic!("{other:?}"),
        }
        let segments = out.segments.len();
        let small = Prepared::new(Message::binary(vec![3u8; 20]));
        out.push_prepared(&small.frame);
        assert_eq!(out.segments.len(), segments + 1);
        assert!(matches!(out.segments.last(), Some(Segment::Inline { .. })));
    }

    #[cfg(feature = "deflate")]
    mod compressed {
        use super::*;
        use crate::wire::deflate::{Agreed, DeflateConfig};

        fn compressor(no_context_takeover: bool, level: u32) -> Compressor {
            let agreed = Agreed {
                server_no_context_takeover: no_context_takeover,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            };
            Compressor::new(&agreed, &DeflateConfig::new().level(level))
        }

        /// What a socket's own compressor makes of `messages`, one after the other.
        fn pushed(messages: &[Message], mut compressor: Compressor) -> Vec<u8> {
            let mut out = FrameWriter::default();
            for message in messages {
                let (opcode, payload) = opcode_and_payload(message);
                match compressor.compress(payload) {
                    Some(compressed) => out.push_compressed(opcode, &compressed),
                    None => out.push(opcode, payload),
                }
            }
            batch_bytes(&out)
        }

        #[test]
        fn prepared_frames_are_what_each_socket_would_have_compressed() {
            let messages = messages();
            let frames: Vec<Prepared> = messages.iter().cloned().map(Prepared::new).collect();
            // Sockets with two sets of settings without context takeover, twice each (the
            // second of each writes the shared frame), and two with context takeover.
            for (no_context_takeover, level) in [
                (true, 1),
                (true, 9),
                (true, 1),
                (true, 9),
                (false, 1),
                (false, 1),
            ] {
                let mut mine = compressor(no_context_takeover, level);
                let mut out = FrameWriter::default();
                for frame in &frames {
                    frame.push_to(&mut out, Some(&mut mine));
                }
                assert_eq!(
                    batch_bytes(&out),
                    pushed(&messages, compressor(no_context_takeover, level)),
                    "no_context_takeover {no_context_takeover}, level {level}"
                );
            }
            // One compressed frame per message and set of settings, and none for the short ones.
            for (frame, message) in frames.iter().zip(&messages) {
                let made = frame.compressed.lock().unwrap();
                assert_eq!(made.len(), 2);
                let compressed = message.len() >= crate::wire::deflate::DEFAULT_THRESHOLD;
                assert!(made.iter().all(|(_, f)| f.is_some() == compressed));
            }
        }

        #[test]
        fn a_shared_compressed_frame_is_made_once() {
            let frame = Prepared::new(Message::text("abc ".repeat(100)));
            let (mut a, mut b) = (compressor(true, 1), compressor(true, 1));
            let (mut out_a, mut out_b) = (FrameWriter::default(), FrameWriter::default());
            frame.push_to(&mut out_a, Some(&mut a));
            frame.push_to(&mut out_b, Some(&mut b));
            assert_eq!(batch_bytes(&out_a), batch_bytes(&out_b));
            // The second socket never made a deflate stream of its own.
            assert_eq!((a.compressions, b.compressions), (1, 0));
            assert_eq!(batch_bytes(&out_a)[0], 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
        }
    }

    #[tokio::test]
    async fn a_batch_larger_than_one_inline_frame_is_given_back_after_the_flush() {
        let mut out = FrameWriter::default();
        let payload = Bytes::from(vec![0u8; 1000]);
        for _ in 0..10 {
            out.push(OpCode::Binary, &payload);
        }
        let mut sink = tokio::io::sink();
        out.flush(&mut sink).await.unwrap();
        assert!(out.arena.capacity() <= KEEP_CAPACITY);
        // A burst of small frames (a hub's publishes) is given back as well.
        let small = Bytes::from(vec![0u8; 20]);
        for _ in 0..64 {
            out.push(OpCode::Binary, &small);
        }
        assert!(out.arena.capacity() > KEEP_CAPACITY);
        out.flush(&mut sink).await.unwrap();
        assert_eq!(out.arena.capacity(), 0);
        // So is the segment list of many large payloads.
        let large = Bytes::from(vec![0u8; 2 * INLINE_MAX]);
        for _ in 0..4 * KEEP_SEGMENTS {
            out.push(OpCode::Binary, &large);
        }
        out.flush(&mut sink).await.unwrap();
        assert!(out.segments.capacity() <= KEEP_SEGMENTS);
        // One frame of the largest inline size at a time keeps its room: no allocation per
        // message.
        let inline = Bytes::from(vec![0u8; INLINE_MAX]);
        out.push(OpCode::Binary, &inline);
        out.flush(&mut sink).await.unwrap();
        let kept = out.arena.capacity();
        assert!(kept > 0);
        for _ in 0..3 {
            out.push(OpCode::Binary, &inline);
            out.flush(&mut sink).await.unwrap();
            assert_eq!(out.arena.capacity(), kept);
        }
    }
}
