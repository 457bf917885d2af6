//! The read stack: the upgraded IO under the frame guard (and the inflater), under
//! fastwebsockets' reader, and the one read future the loop keeps alive, which makes the
//! reader at the peer's first bytes and gives it back when the peer goes quiet.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::wire::guard::FrameGuard;

use super::*;

/// How long a reader whose buffer is empty may wait for a frame before it is given back:
/// the connection then waits for the peer's next bytes as it waited for the first, holding no
/// read buffer. Checked lazily, so a reader goes between one and two of these after the last
/// frame; a connection that speaks more often than this keeps its reader.
const READER_REST: Duration = Duration::from_secs(1);

pin_project_lite::pin_project! {
    /// The one read future the loop keeps alive: reading a frame with fastwebsockets' reader
    /// or, while the peer sends nothing, waiting for its next bytes with no reader.
    /// fastwebsockets gives its reader an 8 KiB buffer when it is made, so a connection whose
    /// peer never sends (a subscriber that only listens) holds none, and one that went quiet
    /// gives its reader back after [`READER_REST`].
    pub(super) struct ReadFuture<'a, T, F> {
        #[pin]
        state: ReadState<Half<'a, T>, F>,
        // Makes the frame's read future from the reader.
        make: fn(Reader<'a, T>) -> F,
        io: Half<'a, T>,
        max_message_size: usize,
        max_frame_size: usize,
        rest: Rest,
    }
}

pin_project_lite::pin_project! {
    #[project = ReadStateProj]
    enum ReadState<R, F> {
        Unread {
            unread: Option<Unread<R>>,
        },
        Reading {
            #[pin]
            frame: F,
        },
    }
}

/// What the read future knows of the frames it has handed out, to tell when the reader may be
/// given back without losing a byte or the state of a message.
#[derive(Debug, Default)]
struct Rest {
    /// Whether the reader may be given back at all: not with permessage-deflate, whose
    /// inflater keeps its window across messages.
    plain: bool,
    /// Wire bytes of the frames handed out, headers counted in their shortest form: never
    /// more than the bytes fastwebsockets has consumed, so equal to the bytes read from the
    /// IO only when its buffer is empty.
    consumed: u64,
    /// A data message's last frame has not come yet.
    in_message: bool,
    /// Frames handed out, and how many there were when `due` was set.
    frames: u64,
    frames_at_arm: u64,
    /// When the reader is next looked at for giving back: set while there is one and it
    /// waits. The connection's one timer covers it ([`ReaderRest`]).
    due: Option<Instant>,
}

impl Rest {
    #[inline]
    fn note(&mut self, frame: &RawFrame) {
        self.frames += 1;
        if !self.plain {
            return;
        }
        let len = frame.payload.len();
        let extended = match len {
            0..=125 => 0,
            126..=0xffff => 2,
            _ => 8,
        };
        // Every client frame is masked: the frame guard refuses the others.
        self.consumed += (2 + extended + 4 + len) as u64;
        if is_data(frame.opcode) {
            self.in_message = !frame.fin;
        }
    }
}

impl<'a, T, F> ReadFuture<'a, T, F>
where
    T: AsyncRead + Unpin,
{
    /// The read future of a new connection: it waits for the peer's first bytes.
    // Without the `deflate` feature `Extensions` is `()`, passed on all the same.
    #[cfg_attr(not(feature = "deflate"), allow(clippy::unit_arg))]
    pub(super) fn new(
        io: Half<'a, T>,
        extensions: Extensions,
        settings: &Settings,
        make: fn(Reader<'a, T>) -> F,
    ) -> Self {
        #[cfg(feature = "deflate")]
        let plain = extensions.is_none();
        #[cfg(not(feature = "deflate"))]
        let plain = true;
        ReadFuture {
            state: ReadState::Unread {
                unread: Some(Unread::new(io, extensions, settings)),
            },
            make,
            io,
            max_message_size: settings.max_message_size,
            max_frame_size: settings.max_frame_size,
            rest: Rest {
                plain,
                ..Rest::default()
            },
        }
    }

    /// Makes the next frame's read future from the reader the last one gave back.
    pub(super) fn rearm(self: Pin<&mut Self>, reader: Reader<'a, T>) {
        let mut this = self.project();
        let frame = (this.make)(reader);
        this.state.set(ReadState::Reading { frame });
    }
}

impl<'a, T, F> Future for ReadFuture<'a, T, F>
where
    T: AsyncRead + Unpin,
    F: Future<Output = (Reader<'a, T>, Result<RawFrame, WebSocketError>)>,
{
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let ReadStateProj::Unread { unread } = this.state.as_mut().project() {
            let Some(pending) = unread else {
                return Poll::Pending;
            };
            let error = ready!(pending.poll_first(cx));
            let reader = unread.take().map(Unread::into_reader);
            let Some(reader) = reader else {
                return Poll::Pending;
            };
            if let Some(error) = error {
                return Poll::Ready((reader, Err(WebSocketError::IoError(error))));
            }
            let frame = (this.make)(reader);
            this.state.set(ReadState::Reading { frame });
        }
        let ReadStateProj::Reading { frame } = this.state.as_mut().project() else {
            return Poll::Pending;
        };
        if let Poll::Ready((reader, result)) = frame.poll(cx) {
            if let Ok(frame) = &result {
                this.rest.note(frame);
            }
            return Poll::Ready((reader, result));
        }
        let rest = &mut *this.rest;
        if rest.plain && rest.due.is_none() {
            // Looked at one period from now, when the connection's timer fires.
            rest.due = Some(Instant::now() + READER_REST);
            rest.frames_at_arm = rest.frames;
        }
        Poll::Pending
    }
}

/// The read future's rest, which the connection's one timer keeps: when the reader is next
/// looked at for giving back, and the look.
pub(super) trait ReaderRest {
    /// When [`look_at_rest`](Self::look_at_rest) is next due, if ever.
    fn rest_due(&self) -> Option<Instant>;

    /// At or after [`rest_due`](Self::rest_due): gives the reader back if it has handed out
    /// no frame since the last look, holds no part of a message and has no byte left in its
    /// buffer; else looks again one period from `now`. True when it gave the reader back: the
    /// read future must then be polled, to wait for the peer's next bytes.
    fn look_at_rest(self: Pin<&mut Self>, now: Instant) -> bool;
}

impl<T, F> ReaderRest for ReadFuture<'_, T, F>
where
    T: AsyncRead + Unpin,
{
    #[inline]
    fn rest_due(&self) -> Option<Instant> {
        self.rest.due
    }

    fn look_at_rest(self: Pin<&mut Self>, now: Instant) -> bool {
        let mut this = self.project();
        let rest = &mut *this.rest;
        if rest.due.is_none_or(|due| due > now) {
            return false;
        }
        rest.due = None;
        if !matches!(this.state.as_mut().project(), ReadStateProj::Reading { .. }) {
            return false;
        }
        let quiet = rest.frames == rest.frames_at_arm;
        if !quiet || rest.in_message || this.io.bytes_read() != rest.consumed {
            rest.due = Some(now + READER_REST);
            rest.frames_at_arm = rest.frames;
            return false;
        }
        // fastwebsockets' buffer is empty and it waits for a frame's first bytes: its read
        // future may be dropped, reader and buffer with it, without losing anything. The
        // frame guard made for the next reader starts, as this one is, between messages.
        this.state.set(ReadState::Unread {
            unread: Some(Unread {
                io: Replay::new(*this.io),
                extensions: Default::default(),
                max_message_size: *this.max_message_size,
                max_frame_size: *this.max_frame_size,
            }),
        });
        true
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

/// fastwebsockets' reader over the shared IO, as the read future holds and hands it out.
pub(super) type Reader<'a, T> = Box<WebSocketRead<Stack<Half<'a, T>>>>;

impl<R: AsyncRead + Unpin> Unread<R> {
    fn new(io: R, extensions: Extensions, settings: &Settings) -> Self {
        Unread {
            io: Replay::new(io),
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
        #[cfg(test)]
        tests::READERS_MADE.with(|made| made.set(made.get() + 1));
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

impl<R> Replay<R> {
    fn new(inner: R) -> Self {
        Replay {
            inner,
            head: [0; REPLAY_LEN],
            start: 0,
            end: 0,
        }
    }
}

/// The upgraded IO, shared by the read and the write side of the one task that serves it
/// (each through a [`Half`]): unlike a split into owned halves, the read side can be handed
/// to a reader again after the last one was dropped. One lock per read or write, as
/// `tokio::io::split` takes; it is never contended.
pub(super) struct SharedIo<T> {
    state: Mutex<IoState<T>>,
}

struct IoState<T> {
    io: T,
    /// Bytes read so far.
    read: u64,
}

impl<T> SharedIo<T> {
    pub(super) fn new(io: T) -> Self {
        SharedIo {
            state: Mutex::new(IoState { io, read: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IoState<T>> {
        // Nothing in the state can be left half-updated by a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle on a [`SharedIo`], for reading or writing.
pub(super) struct Half<'a, T>(pub(super) &'a SharedIo<T>);

impl<T> Clone for Half<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Half<'_, T> {}

impl<T> Half<'_, T> {
    fn bytes_read(&self) -> u64 {
        self.0.lock().read
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Half<'_, T> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.0.lock();
        let before = buf.filled().len();
        let poll = Pin::new(&mut state.io).poll_read(cx, buf);
        state.read += (buf.filled().len() - before) as u64;
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Half<'_, T> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0.lock().io).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0.lock().io).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.0.lock().io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.lock().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.lock().io).poll_shutdown(cx)
    }
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

#[cfg(test)]
// Without the `deflate` feature the agreed extensions are `()`, passed like any other argument.
#[cfg_attr(not(feature = "deflate"), allow(clippy::unit_arg))]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use crate::wire::frame::client_frame;

    /// An echo connection with no keepalive and no idle timeout, over a pipe; the client's end.
    fn echo_connection() -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (io, client) = tokio::io::duplex(4096);
        let mut config = crate::layer::tests_config_with(|mut ws: crate::WebSocket| async move {
            while let Some(msg) = ws.recv().await {
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let settings = Arc::make_mut(&mut config.connection);
        settings.ping_interval = None;
        settings.idle_timeout = None;
        let accepted = super::Accepted {
            parts: http::Request::new(()).into_parts().0,
            protocol: None,
            extensions: Default::default(),
        };
        let shared = Arc::new(crate::socket::ControlBlock::default());
        let server = tokio::spawn(super::super::serve(
            io,
            accepted,
            &config.handler,
            config.connection,
            shared,
        ));
        (client, server)
    }

    /// Reads one unmasked text frame with a 7-bit length and returns its payload.
    async fn read_text(client: &mut DuplexStream) -> String {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x81, "a whole text frame");
        let mut payload = vec![0u8; usize::from(head[1])];
        client.read_exact(&mut payload).await.unwrap();
        String::from_utf8(payload).unwrap()
    }

    /// Long enough for the reader to be given back: two rest periods and a margin.
    const QUIET: Duration = Duration::from_secs(5);

    thread_local! {
        /// Readers made on this thread (a paused-time test's runtime runs its tasks on it).
        pub(super) static READERS_MADE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn readers_made() -> usize {
        READERS_MADE.with(std::cell::Cell::get)
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_reader_is_given_back_on_the_connection_timer_alone() {
        // No keepalive and no idle timeout: the reader's rest is the timer's one deadline.
        let before = readers_made();
        let (mut client, server) = echo_connection();
        for text in ["one", "two"] {
            client
                .write_all(&client_frame(true, 0, 0x1, text.as_bytes()))
                .await
                .unwrap();
            assert_eq!(read_text(&mut client).await, text);
        }
        assert_eq!(
            readers_made() - before,
            1,
            "one reader while the peer speaks"
        );
        // Less than one rest period of quiet keeps the reader.
        tokio::time::sleep(Duration::from_millis(500)).await;
        client
            .write_all(&client_frame(true, 0, 0x1, b"three"))
            .await
            .unwrap();
        assert_eq!(read_text(&mut client).await, "three");
        assert_eq!(readers_made() - before, 1, "kept across a short pause");
        tokio::time::sleep(QUIET).await;
        client
            .write_all(&client_frame(true, 0, 0x1, b"four"))
            .await
            .unwrap();
        assert_eq!(read_text(&mut client).await, "four");
        assert_eq!(
            readers_made() - before,
            2,
            "given back in the quiet spell, a new one for the next frame"
        );
        server.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_quiet_spell_frames_are_read_whole_by_the_next_reader() {
        let (mut client, server) = echo_connection();
        client
            .write_all(&client_frame(true, 0, 0x1, b"before"))
            .await
            .unwrap();
        assert_eq!(read_text(&mut client).await, "before");
        // Virtual time: the reader is given back while the client sleeps.
        tokio::time::sleep(QUIET).await;
        // The next reader's first read is a small one: a frame cut anywhere still comes
        // out whole, and so do two frames in one write.
        let text = "a message longer than the first read of the next reader";
        for byte in client_frame(true, 0, 0x1, text.as_bytes()) {
            client.write_all(&[byte]).await.unwrap();
            tokio::task::yield_now().await;
        }
        assert_eq!(read_text(&mut client).await, text);
        tokio::time::sleep(QUIET).await;
        let mut two = client_frame(true, 0, 0x1, b"one");
        two.extend(client_frame(true, 0, 0x1, b"two"));
        client.write_all(&two).await.unwrap();
        assert_eq!(read_text(&mut client).await, "one");
        assert_eq!(read_text(&mut client).await, "two");
        server.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_fragmented_message_spanning_a_quiet_spell_is_delivered_whole() {
        let (mut client, server) = echo_connection();
        client
            .write_all(&client_frame(false, 0, 0x1, "h\u{e9}llo, ".as_bytes()))
            .await
            .unwrap();
        tokio::time::sleep(QUIET).await;
        // A control frame between the fragments, then the rest.
        client
            .write_all(&client_frame(true, 0, 0x9, b"ping"))
            .await
            .unwrap();
        let mut pong = [0u8; 6];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"\x8a\x04ping");
        tokio::time::sleep(QUIET).await;
        client
            .write_all(&client_frame(true, 0, 0x0, b"world"))
            .await
            .unwrap();
        assert_eq!(read_text(&mut client).await, "h\u{e9}llo, world");
        server.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_text_after_a_quiet_spell_still_fails_the_connection() {
        let (mut client, server) = echo_connection();
        client
            .write_all(&client_frame(true, 0, 0x1, b"fine"))
            .await
            .unwrap();
        assert_eq!(read_text(&mut client).await, "fine");
        tokio::time::sleep(QUIET).await;
        client
            .write_all(&client_frame(true, 0, 0x1, &[0xff, 0xfe]))
            .await
            .unwrap();
        let mut close = [0u8; 4];
        client.read_exact(&mut close).await.unwrap();
        assert_eq!(close[0], 0x88, "a close frame");
        assert_eq!(
            u16::from_be_bytes([close[2], close[3]]),
            1007,
            "invalid UTF-8"
        );
        server.abort();
    }
}
