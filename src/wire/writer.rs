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

/// Payloads up to this size are copied next to their header; larger ones are written from
/// where they are.
const INLINE_MAX: usize = 1024;
/// A batch this large is written at once, without waiting for the task to go idle.
pub(crate) const FLUSH_AT: usize = 64 * 1024;
/// The most slices handed to one vectored write.
const MAX_SLICES: usize = 64;
/// After a flush, a header arena larger than this is given back, so that an idle connection
/// keeps little memory.
const KEEP_CAPACITY: usize = 4 * 1024;

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

    /// Queues one whole frame whose payload is compressed (RSV1 set, permessage-deflate).
    #[cfg(feature = "deflate")]
    pub(crate) fn push_compressed(&mut self, opcode: OpCode, payload: &Bytes) {
        self.push_frame(opcode, payload, true);
    }

    fn push_frame(&mut self, opcode: OpCode, payload: &Bytes, rsv1: bool) {
        let mut head = [0u8; 14];
        let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
        let head_len = frame.fmt_head(&mut head);
        if rsv1 {
            // fastwebsockets' `Frame` has no RSV bits: set RSV1 on the header it formatted.
            head[0] |= 0x40;
        }
        self.push_inline(&head[..head_len]);
        if payload.len() <= INLINE_MAX {
            self.push_inline(payload);
        } else {
            self.segments.push(Segment::Shared(payload.clone()));
        }
        self.pending += head_len + payload.len();
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

    /// Everything is written: empty the batch, keeping a small arena for the next one.
    fn reset(&mut self) {
        self.segments.clear();
        self.done = 0;
        self.offset = 0;
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

    #[tokio::test]
    async fn a_big_arena_is_given_back_after_the_flush() {
        let mut out = FrameWriter::default();
        let payload = Bytes::from(vec![0u8; 1000]);
        for _ in 0..10 {
            out.push(OpCode::Binary, &payload);
        }
        let mut sink = tokio::io::sink();
        out.flush(&mut sink).await.unwrap();
        assert!(out.arena.capacity() <= KEEP_CAPACITY);
    }
}
