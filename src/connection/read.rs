//! The read stack: the upgraded IO under the frame guard (and the inflater), under
//! fastwebsockets' reader, and the one read future the loop keeps alive.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead};
use tokio::io::AsyncRead;

use crate::wire::guard::FrameGuard;

use super::*;

pin_project_lite::pin_project! {
    /// The one read future the loop keeps alive: reading a frame with fastwebsockets' reader
    /// or, until the peer's first bytes arrive, waiting for them with no reader yet.
    /// fastwebsockets gives its reader an 8 KiB buffer when it is made, so a connection whose
    /// peer never sends (a subscriber that only listens) holds none.
    #[project = ReadFutureProj]
    pub(super) enum ReadFuture<R, F> {
        Unread {
            unread: Option<Unread<R>>,
            // Makes the frame's read future from the reader, once there is one.
            read: fn(Box<WebSocketRead<Stack<R>>>) -> F,
        },
        Reading {
            #[pin]
            frame: F,
        },
    }
}

impl<R, F> Future for ReadFuture<R, F>
where
    R: AsyncRead + Unpin,
    F: Future<
        Output = (
            Box<WebSocketRead<Stack<R>>>,
            Result<RawFrame, WebSocketError>,
        ),
    >,
{
    type Output = F::Output;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let ReadFutureProj::Unread { unread, read } = self.as_mut().project() {
            let Some(pending) = unread else {
                return Poll::Pending;
            };
            let error = ready!(pending.poll_first(cx));
            let read = *read;
            let reader = unread.take().map(Unread::into_reader);
            let Some(reader) = reader else {
                return Poll::Pending;
            };
            if let Some(error) = error {
                return Poll::Ready((reader, Err(WebSocketError::IoError(error))));
            }
            self.set(ReadFuture::Reading {
                frame: read(reader),
            });
        }
        match self.project() {
            ReadFutureProj::Reading { frame } => frame.poll(cx),
            ReadFutureProj::Unread { .. } => Poll::Pending,
        }
    }
}

/// What a reader is made of, before the peer has sent anything.
pub(super) struct Unread<R> {
    io: Replay<R>,
    extensions: Extensions,
    max_message_size: usize,
    max_frame_size: usize,
}

/// The stream under fastwebsockets' reader.
pub(super) type Stack<R> = ReadStack<FrameGuard<Replay<R>>>;

impl<R: AsyncRead + Unpin> Unread<R> {
    pub(super) fn new(io: R, extensions: Extensions, settings: &Settings) -> Self {
        Unread {
            io: Replay {
                inner: io,
                head: [0; REPLAY_LEN],
                start: 0,
                end: 0,
            },
            extensions,
            max_message_size: settings.max_message_size,
            max_frame_size: settings.max_frame_size,
        }
    }

    /// Ready when the peer's first bytes (or the end, or an error) have arrived; they are
    /// kept for the reader to read first.
    fn poll_first(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Error>> {
        let replay = &mut self.io;
        let mut buf = tokio::io::ReadBuf::new(&mut replay.head);
        let result = ready!(Pin::new(&mut replay.inner).poll_read(cx, &mut buf));
        replay.end = buf.filled().len();
        Poll::Ready(result.err())
    }

    // Without the `deflate` feature `Extensions` is `()`, passed on all the same.
    #[cfg_attr(not(feature = "deflate"), allow(clippy::unit_arg))]
    fn into_reader(self) -> Box<WebSocketRead<Stack<R>>> {
        frame_reader(
            self.io,
            self.extensions,
            self.max_message_size,
            self.max_frame_size,
        )
    }
}

/// fastwebsockets' reader over the frame guard (and the inflater, when permessage-deflate was
/// agreed). Frames are written by our own coalescing `Writer`.
fn frame_reader<R: AsyncRead + Unpin>(
    read_io: Replay<R>,
    extensions: Extensions,
    max_message_size: usize,
    max_frame_size: usize,
) -> Box<WebSocketRead<Stack<R>>> {
    let guarded = FrameGuard::new(read_io);
    #[cfg(feature = "deflate")]
    let stack = match &extensions {
        Some(agreed) => ReadStack::Inflate(Box::new(
            crate::wire::deflate::InflateRead::new(guarded, agreed, max_message_size)
                .max_frame_size(max_frame_size),
        )),
        None => ReadStack::Plain(guarded),
    };
    #[cfg(not(feature = "deflate"))]
    let stack = {
        let () = extensions;
        let _ = max_message_size;
        ReadStack::Plain(guarded)
    };
    let (mut reader, _) =
        fastwebsockets::after_handshake_split(stack, tokio::io::sink(), Role::Server);
    reader.set_auto_close(false);
    reader.set_auto_pong(false);
    // fastwebsockets refuses frames of `max` bytes or more; ours is inclusive.
    reader.set_max_message_size(max_frame_size.saturating_add(1));
    // Boxed: the reader moves in and out of the read future with every frame.
    Box::new(reader)
}

/// The first read of a connection is a small one, made before fastwebsockets' reader exists;
/// this hands its bytes on before reading more.
const REPLAY_LEN: usize = 16;

/// The upgraded IO's read side, with the bytes of the first read still to hand on.
pub(super) struct Replay<R> {
    inner: R,
    head: [u8; REPLAY_LEN],
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> AsyncRead for Replay<R> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.start < this.end {
            let n = (this.end - this.start).min(buf.remaining());
            buf.put_slice(&this.head[this.start..this.start + n]);
            this.start += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// A frame as the task needs it: owned, unmasked.
pub(super) struct RawFrame {
    pub(super) fin: bool,
    pub(super) opcode: OpCode,
    pub(super) payload: Bytes,
}

/// Reads one frame and gives the reader back: what the read future does once there is a
/// reader.
pub(super) async fn next_frame<S>(
    mut reader: Box<WebSocketRead<S>>,
) -> (Box<WebSocketRead<S>>, Result<RawFrame, WebSocketError>)
where
    S: AsyncRead + Unpin,
{
    // Automatic pongs and close replies are off: the task answers them itself.
    let result = reader
        .read_frame(&mut |_: Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) })
        .await
        .map(|frame| RawFrame {
            fin: frame.fin,
            opcode: frame.opcode,
            payload: match frame.payload {
                Payload::Bytes(bytes) => bytes.freeze(),
                other => Bytes::from(Vec::from(other)),
            },
        });
    (reader, result)
}

/// The read side under fastwebsockets: the frame guard, and permessage-deflate's inflater
/// on top of it when the extension was agreed.
pub(super) enum ReadStack<R> {
    Plain(R),
    /// Boxed: only connections that agreed on compression pay for its state.
    #[cfg(feature = "deflate")]
    Inflate(Box<crate::wire::deflate::InflateRead<R>>),
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadStack<R> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadStack::Plain(inner) => Pin::new(inner).poll_read(cx, buf),
            #[cfg(feature = "deflate")]
            ReadStack::Inflate(inner) => Pin::new(&mut **inner).poll_read(cx, buf),
        }
    }
}
