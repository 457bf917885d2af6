//! The read stack: the upgraded IO under the frame guard (and the inflater), under
//! fastwebsockets' reader, and the one read future the loop keeps alive.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead};
use tokio::io::AsyncRead;

use crate::wire::guard::FrameGuard;

use super::*;

/// fastwebsockets' reader over the frame guard (and the inflater, when permessage-deflate was
/// agreed). Frames are written by our own coalescing `Writer`.
pub(super) fn frame_reader<R: AsyncRead + Unpin>(
    read_io: R,
    extensions: Extensions,
    settings: &Settings,
) -> WebSocketRead<ReadStack<FrameGuard<R>>> {
    let guarded = FrameGuard::new(read_io);
    #[cfg(feature = "deflate")]
    let stack = match &extensions {
        Some(agreed) => ReadStack::Inflate(Box::new(
            crate::wire::deflate::InflateRead::new(guarded, agreed, settings.max_message_size)
                .max_frame_size(settings.max_frame_size),
        )),
        None => ReadStack::Plain(guarded),
    };
    #[cfg(not(feature = "deflate"))]
    let stack = {
        let () = extensions;
        ReadStack::Plain(guarded)
    };
    let (mut reader, _) =
        fastwebsockets::after_handshake_split(stack, tokio::io::sink(), Role::Server);
    reader.set_auto_close(false);
    reader.set_auto_pong(false);
    // fastwebsockets refuses frames of `max` bytes or more; ours is inclusive.
    reader.set_max_message_size(settings.max_frame_size.saturating_add(1));
    reader
}

/// A frame as the task needs it: owned, unmasked.
pub(super) struct RawFrame {
    pub(super) fin: bool,
    pub(super) opcode: OpCode,
    pub(super) payload: Bytes,
}

/// Reads one frame and gives the reader back: the one read future the task keeps alive.
pub(super) async fn next_frame<S>(
    mut reader: WebSocketRead<S>,
) -> (WebSocketRead<S>, Result<RawFrame, WebSocketError>)
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
