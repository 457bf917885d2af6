//! The write side: the frame batch with its compressor, and `TimedWrite`, which bounds every
//! write by the write timeout and, once closing, by the close deadline.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::OpCode;
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use crate::socket::close::{CloseFrame, MAX_REASON_LEN};
use crate::socket::ControlBlock;
use crate::wire::writer::FrameWriter;

use super::*;

/// Queues a close frame with its code and reason.
pub(super) fn queue_close<W: AsyncWrite + Unpin>(writer: &mut Writer<W>, frame: &CloseFrame) {
    let mut payload = [0u8; 2 + MAX_REASON_LEN];
    let len = close_payload(frame, &mut payload);
    writer.queue_control(OpCode::Close, &payload[..len]);
}

/// Writes a close frame's payload, the code and at most [`MAX_REASON_LEN`] bytes of reason,
/// into `payload`, and returns its length. `close_with` refuses longer reasons and the crate's
/// own are short, but a longer one is cut at a character boundary rather than make a frame
/// the peer must refuse.
fn close_payload(frame: &CloseFrame, payload: &mut [u8; 2 + MAX_REASON_LEN]) -> usize {
    let reason = frame.reason.as_str();
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload[..2].copy_from_slice(&u16::from(frame.code).to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    2 + end
}

/// The write side: frames are batched in a [`FrameWriter`] and written through the IO under
/// its progress timeout.
pub(super) struct Writer<W> {
    pub(super) io: TimedWrite<W>,
    pub(super) out: FrameWriter,
    /// permessage-deflate's compressor, when the extension was agreed. Boxed: only
    /// connections that agreed on compression pay for it.
    #[cfg(feature = "deflate")]
    pub(super) compressor: Option<Box<crate::wire::deflate::Compressor>>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Queues a control frame (at most 125 bytes of payload), copied into the batch.
    #[inline]
    pub(super) fn queue_control(&mut self, opcode: OpCode, payload: &[u8]) {
        self.out.push_control(opcode, payload);
    }

    /// Queues a data message: compressed (RSV1) when the extension is agreed and the message
    /// is over the threshold, as it is otherwise.
    #[inline]
    pub(super) fn queue_message(&mut self, opcode: OpCode, payload: &Bytes) {
        #[cfg(feature = "deflate")]
        if let Some(compressed) = self.compressor.as_mut().and_then(|c| c.compress(payload)) {
            self.out.push_compressed(opcode, &compressed);
            return;
        }
        self.out.push(opcode, payload);
    }

    #[inline]
    pub(super) async fn flush(&mut self) -> Result<(), Ending> {
        self.out.flush(&mut self.io).await.map_err(lost_io)
    }
}

pub(super) fn lost_io(error: io::Error) -> Ending {
    Ending::Lost {
        reason: error.to_string(),
    }
}

/// The write half with a progress timeout: a write that makes no progress for `timeout`
/// (the peer stopped reading and its buffers are full) fails with `TimedOut`. The timer is
/// touched only when a write would block, never on the ordinary path.
///
/// Once the closing handshake has begun, a blocked write also fails at `close_by`, the end of
/// the handshake's budget: writing the close frame is part of the handshake. And a blocked
/// write gives up at once when a send overflowed the queue under `QueuePolicy::Close`: the
/// slow peer is being dropped anyway.
pub(super) struct TimedWrite<W> {
    pub(super) inner: W,
    pub(super) timeout: Option<Duration>,
    /// Made when a write first blocks, and boxed: most connections never need it, and an
    /// idle connection should not carry its room.
    pub(super) sleep: Option<Pin<Box<Sleep>>>,
    pub(super) armed: bool,
    /// When the closing handshake, TCP's end included, must be over: set once, when it
    /// begins. The connection loop's close timer and the teardown read it too.
    pub(super) close_by: Option<Instant>,
    pub(super) shared: Arc<ControlBlock>,
}

impl<W> TimedWrite<W> {
    /// The closing handshake begins: it has `budget` from now, unless it began already.
    #[inline]
    pub(super) fn start_closing(&mut self, budget: Duration) {
        if self.close_by.is_none() {
            self.close_by = Some(Instant::now() + budget);
            // A write blocked now is bounded by the new deadline from its next poll on.
            self.armed = false;
        }
    }

    #[inline]
    pub(super) fn bound<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.armed = false;
            return poll;
        }
        self.shared.waker.register(cx.waker());
        if self.shared.overflow().is_some() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "send queue full and the peer is not reading: connection dropped",
            )));
        }
        if !self.armed {
            let stalled = self.timeout.map(|timeout| Instant::now() + timeout);
            let at = match (stalled, self.close_by) {
                (Some(stalled), Some(close_by)) => stalled.min(close_by),
                (Some(at), None) | (None, Some(at)) => at,
                (None, None) => return Poll::Pending,
            };
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        match self.sleep.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(self.timed_out())),
            _ => Poll::Pending,
        }
    }

    pub(super) fn timed_out(&self) -> io::Error {
        let message = match (self.timeout, self.close_by) {
            (Some(timeout), close_by)
                if close_by.is_none_or(|close_by| {
                    self.sleep
                        .as_ref()
                        .is_none_or(|sleep| sleep.deadline() < close_by)
                }) =>
            {
                format!("write timed out: the peer read nothing for {timeout:?}")
            }
            _ => "close timed out: the peer read nothing until the close timeout".to_string(),
        };
        io::Error::new(io::ErrorKind::TimedOut, message)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for TimedWrite<W> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound(cx, poll)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound(cx, poll)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.bound(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.bound(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::close::CloseCode;

    #[test]
    fn a_close_payload_is_the_code_and_the_reason_cut_at_a_character_boundary() {
        let mut buf = [0u8; 2 + MAX_REASON_LEN];
        let short = CloseFrame::new(CloseCode::NORMAL, "bye");
        let len = close_payload(&short, &mut buf);
        assert_eq!(&buf[..len], b"\x03\xe8bye");

        // 62 two-byte characters are 124 bytes, one over: the cut at 123 falls inside the
        // 62nd character, so that character goes whole.
        let long = "\u{e9}".repeat(62);
        let frame = CloseFrame::new(CloseCode::from(4000), long.as_str());
        let len = close_payload(&frame, &mut buf);
        assert_eq!(len, 2 + 122);
        assert_eq!(&buf[..2], &4000u16.to_be_bytes());
        assert_eq!(std::str::from_utf8(&buf[2..len]), Ok(&long[..122]));
    }
}
