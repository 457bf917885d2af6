//! The connection task: one per accepted WebSocket, spawned by the service after the `101`.
//!
//! It owns the upgraded IO, split into fastwebsockets' read and write halves, and polls in one
//! task, in one pass over its arms, in this order:
//! - the handler's future (so a handler costs no task of its own),
//! - the socket's outgoing queue, written in batches with one flush,
//! - delivery of a message the handler's incoming queue had no room for,
//! - the next frame from the peer: one read future that lives across loop turns, because
//!   fastwebsockets' `read_frame` is not cancel safe and must never be dropped mid-frame,
//! - an overflow or shutdown signal,
//! - one timer: keepalive, idle, the reader's rest, and the close timeout once closing,
//! - the batch's flush, when nothing else is ready.
//!
//! It enforces what fastwebsockets leaves out (control frames over 125 bytes, close codes and
//! reasons, fragment order, UTF-8 across fragments, the whole-message size limit), runs the
//! closing handshake, shuts TCP down cleanly, and logs the connection when it ends.
//!
//! Its parts: [`settings`] (what the layer gives it), [`read`] (the read stack and the one
//! read future), [`arms`] (which futures need polling, and the one scheduling rule),
//! [`write`](mod@write) (the frame batch and the timed writes), [`close_log`] (the event it ends with);
//! this file holds the start and the teardown (`run`), the loop (`Conn::drive` and its named
//! steps) and the protocol state (frames, closing, keepalive, idle). The parts' small
//! functions that the loop calls for every message are `#[inline]`: in modules of their own,
//! they land in other codegen units, where the optimizer would not otherwise inline them.

mod arms;
mod close_log;
mod read;
mod settings;
mod write;

use arms::Arms;
use close_log::Record;
use read::{next_frame, Half, RawFrame, ReadFuture, ReaderRest, SharedIo};
use write::{lost_io, queue_close, TimedWrite, Writer};

pub(crate) use settings::Settings;

use std::any::Any;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fastwebsockets::{OpCode, WebSocketError, WebSocketRead};
use futures_util::FutureExt;
use http::request::Parts;
use http::HeaderValue;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use crate::handle::ConnectionSlot;
use crate::socket::close::{CloseCode, CloseFrame};
use crate::socket::handler::{BoxHandler, HandlerError};
use crate::socket::message::Message;
use crate::socket::queue::{self, PushError};
use crate::socket::{ControlBlock, Environ, Inbound, Outbound, WebSocket};
use crate::wire::frame::parse_close_payload;
use crate::wire::reassembly::Reassembly;
use crate::wire::violation::Violation;
use crate::wire::writer::{FrameWriter, FLUSH_AT};

/// Messages read but not yet taken by the handler. When full, the task stops reading (TCP
/// pushes back on the peer) but keeps writing.
pub(crate) const INBOUND_CAPACITY: usize = 32;
/// The most queued messages written before one flush.
const WRITE_BATCH: usize = 64;

/// The extensions agreed in the handshake: permessage-deflate's parameters, or none.
#[cfg(feature = "deflate")]
pub(crate) type Extensions = Option<crate::wire::deflate::Agreed>;
/// The extensions agreed in the handshake: none without the `deflate` feature.
#[cfg(not(feature = "deflate"))]
pub(crate) type Extensions = ();

/// What the handshake agreed: the request the handler sees as its environ, the subprotocol,
/// and the extensions.
pub(crate) struct Accepted {
    pub(crate) parts: Parts,
    pub(crate) protocol: Option<HeaderValue>,
    pub(crate) extensions: Extensions,
}

/// Waits for hyper to hand over the upgraded connection, then serves it.
///
/// Everything that does not need the IO (the socket, the handler's future, the queues, the
/// connection's state) is made here, before the future is: the future then holds each of
/// them once.
///
/// This is the crate's one rule for long-lived futures: the state of an `async fn` or block
/// keeps its arguments, and a value moved into a local or awaited inside it, in slots of
/// their own for as long as it lives, so a value built inside is stored twice. The futures
/// that live as long as a connection are built by plain functions, `poll_fn` and
/// combinators instead.
pub(crate) fn run(
    on_upgrade: OnUpgrade,
    accepted: Accepted,
    handler: &BoxHandler,
    settings: Arc<Settings>,
    shared: Arc<ControlBlock>,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send + 'static {
    let io = async move {
        match on_upgrade.await {
            Ok(upgraded) => Some(TokioIo::new(upgraded)),
            Err(error) => {
                tracing::debug!(%error, "WebSocket upgrade did not complete");
                None
            }
        }
    };
    serve_when(io, accepted, handler, settings, shared, slot)
}

/// Serves one WebSocket over an IO whose handshake is done.
#[cfg(test)]
pub(crate) fn serve<T>(
    io: T,
    accepted: Accepted,
    handler: &BoxHandler,
    settings: Arc<Settings>,
    shared: Arc<ControlBlock>,
) -> impl Future<Output = ()> + Send
where
    T: AsyncRead + AsyncWrite + Send + Unpin,
{
    let io = std::future::ready(Some(io));
    let slot = settings
        .registry
        .take_slot(None)
        .expect("no connection limit");
    serve_when(io, accepted, handler, settings, shared, slot)
}

/// Serves one WebSocket over the IO that `io` resolves to (none: the upgrade failed, and the
/// handler is dropped unpolled). `slot` is released when the future ends.
fn serve_when<T, F>(
    io: F,
    accepted: Accepted,
    handler: &BoxHandler,
    settings: Arc<Settings>,
    shared: Arc<ControlBlock>,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send
where
    T: AsyncRead + AsyncWrite + Send + Unpin,
    F: Future<Output = Option<T>> + Send,
{
    let Accepted {
        parts,
        protocol,
        extensions,
    } = accepted;
    let environ = Arc::new(Environ {
        parts,
        protocol,
        version: 13,
    });
    let record = Record::new(Arc::clone(&environ));
    let (in_tx, in_rx) = queue::bounded(INBOUND_CAPACITY);
    let (out_tx, out_rx) = queue::bounded_settling(
        settings.send_queue_capacity,
        settings.send_queue_bytes,
        Outbound::weight,
        Some(Outbound::settle),
    );
    let socket = WebSocket::new(
        environ,
        in_rx,
        out_tx,
        Arc::clone(&shared),
        settings.send_queue_policy,
    );
    let mut handler = AssertUnwindSafe(handler(socket)).catch_unwind();
    let mut conn = Conn {
        in_tx,
        out_rx: out_rx.in_batches(),
        parked: None,
        offered: false,
        reassembly: Reassembly::new(settings.max_message_size),
        closing: None,
        handler_done: false,
        record,
        shared,
        keepalive: None,
        last_activity: Instant::now(),
        idle_deadline: None,
        settings,
    };
    // Captured and used in place, for the reason in `run`'s docs.
    async move {
        let Some(io) = io.await else {
            conn.shared.progress.lost();
            drop(slot);
            return;
        };
        conn.start_timers();
        let io = SharedIo::new(io);
        let (mut read_io, mut write_io) = (Half(&io), Half(&io));
        let ending = {
            let settings = &*conn.settings;
            let mut writer = Writer {
                io: TimedWrite {
                    inner: &mut write_io,
                    timeout: settings.write_timeout,
                    sleep: None,
                    armed: false,
                    close_by: None,
                    shared: Arc::clone(&conn.shared),
                },
                out: FrameWriter::default(),
                #[cfg(feature = "deflate")]
                compressor: extensions.as_ref().map(|agreed| {
                    let deflate = settings.deflate.clone().unwrap_or_default();
                    Box::new(crate::wire::deflate::Compressor::new(agreed, &deflate))
                }),
            };
            let read = pin!(ReadFuture::new(read_io, extensions, settings, next_frame));
            let ending = conn
                .drive(read, ReadFuture::rearm, &mut writer, &mut handler)
                .await;
            let ending = conn.finish(ending, &mut writer).await;
            (ending, writer.io.close_by)
        };
        let (ending, close_by) = ending;

        // The connection is over for senders: every later `send` fails.
        conn.out_rx.close();
        let Conn {
            in_tx,
            parked,
            handler_done,
            record,
            shared,
            ..
        } = conn;

        // Boxed: the teardown runs once, at the end, and its state (the close timeout's timer,
        // the drain buffer, the handler's last wake-ups) is larger than the loop's; unboxed, every
        // live connection would carry its room.
        Box::pin(async {
            let teardown = async {
                if let (true, Some(close_by)) = (ending.needs_shutdown(), close_by) {
                    let drain = ending.may_leave_unread_data();
                    // What is left of the closing handshake's one budget, which began when this
                    // side sent its close frame or answered the peer's: a peer that never answered
                    // has none left, and its connection ends now.
                    let _ = tokio::time::timeout_at(close_by, async {
                        // Flush what is written and send FIN: the server ends TCP first (RFC 6455
                        // 7.1.1).
                        write_io.flush().await?;
                        write_io.shutdown().await?;
                        // After a failure the peer may still be sending: read until its FIN, so
                        // that unread data does not turn our close frame into a reset it never
                        // sees.
                        if drain {
                            let mut sink = [0u8; 512];
                            while read_io.read(&mut sink).await? > 0 {}
                        }
                        Ok::<(), std::io::Error>(())
                    })
                    .await;
                }
                record.log(&ending);
            };
            let finish_handler = async {
                if handler_done {
                    return;
                }
                let notify = async {
                    if let Some(message) = parked {
                        let _ = in_tx.push_waking(Inbound::Message(*message)).await;
                    }
                    let _ = in_tx
                        .push_waking(Inbound::Closed(ending.peer_frame()))
                        .await;
                    drop(in_tx);
                };
                // In order: no random start, which would cost a draw from the thread's RNG.
                let outcome = tokio::select! {
                    biased;
                    outcome = &mut handler => Some(outcome),
                    () = notify => None,
                };
                let outcome = match outcome {
                    Some(outcome) => outcome,
                    None => handler.await,
                };
                shared.progress.handler_done();
                if let Err(error) = flatten(outcome) {
                    tracing::error!(%error, "WebSocket handler failed after the connection closed");
                }
            };
            tokio::join!(teardown, finish_handler);
        })
        .await;
        drop(slot);
    }
}

/// The earlier of two deadlines, either of which may be unset.
#[inline]
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A frame of a data message, which the pass may act on inline.
#[inline]
fn is_data(opcode: OpCode) -> bool {
    matches!(opcode, OpCode::Text | OpCode::Binary | OpCode::Continuation)
}

pub(crate) type HandlerOutcome = Result<Result<(), HandlerError>, Box<dyn Any + Send>>;

pub(crate) fn flatten(outcome: HandlerOutcome) -> Result<(), HandlerError> {
    outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        Err(HandlerError::panicked(&message))
    })
}

/// The futures one connection's loop polls, apart from the handler's and the queues: they
/// live as long as the loop, in its state.
struct Pass<'p, F, R> {
    /// The handler's queue, for the room of a parked message.
    in_tx: queue::Sender<Inbound>,
    /// Which of the loop's futures were woken.
    arms: Arms,
    /// The one read future, kept across turns: fastwebsockets' `read_frame` is not cancel
    /// safe.
    read: Pin<&'p mut F>,
    /// Makes the next read future, in place, from the reader the last one gave back.
    next: fn(Pin<&mut F>, Box<WebSocketRead<R>>),
    /// One timer for every deadline: keepalive, idle, the look at the reader for giving it
    /// back ([`ReaderRest`]), and the close timeout once closing.
    timer: Pin<&'p mut Sleep>,
    /// The deadline the timer is set to, if any.
    armed: Option<Instant>,
}

/// What an overflow or a shutdown request did to the loop's turn.
enum Signal {
    None,
    /// The closing handshake began: the next turn writes what is queued.
    Closing,
    /// The connection was failed.
    Failed(Ending),
}

/// What one pass of the connection loop found to act on.
enum Step {
    HandlerReturned(HandlerOutcome),
    Queued(Option<Outbound>),
    /// The handler's queue has room (or is closed) for the parked message.
    Room(Result<(), queue::Closed>),
    Frame(Result<RawFrame, WebSocketError>),
    /// An overflow or a shutdown request: acted on at the top of the loop.
    Signal,
    /// The pass acted on what it found, and the top of the loop has work: a batch to write
    /// now, or the closing handshake to start.
    Continue,
    /// The pass acted on a frame, and it ended the connection.
    Ended(Ending),
    Timer,
    FlushFailed(io::Error),
}

/// How the connection ended.
#[derive(Debug)]
enum Ending {
    /// The peer sent a valid close frame first, and was answered.
    ClosedByPeer(Option<CloseFrame>),
    /// This side closed and the peer answered.
    ClosedByServer {
        sent: CloseFrame,
        reply: Option<CloseFrame>,
    },
    /// This side closed and the peer did not answer in time.
    CloseTimeout { sent: CloseFrame },
    /// The peer broke the protocol: the connection was failed with this close frame.
    Failed { sent: CloseFrame },
    /// The transport ended without a closing handshake.
    Lost { reason: String },
}

impl Ending {
    fn needs_shutdown(&self) -> bool {
        !matches!(self, Ending::Lost { .. })
    }

    /// After a completed closing handshake nothing more may arrive; after a failure or a
    /// timeout the peer may still be writing.
    fn may_leave_unread_data(&self) -> bool {
        matches!(self, Ending::Failed { .. } | Ending::CloseTimeout { .. })
    }

    /// The close frame the handler is shown with `peer_close`.
    fn peer_frame(&self) -> Option<CloseFrame> {
        match self {
            Ending::ClosedByPeer(frame) => frame.clone(),
            Ending::ClosedByServer { reply, .. } => reply.clone(),
            _ => None,
        }
    }

    /// Who closed, the close code and the reason, for the log.
    fn summary(&self) -> (&'static str, u16, &str) {
        match self {
            Ending::ClosedByPeer(Some(frame)) => ("client", frame.code.into(), &frame.reason),
            Ending::ClosedByPeer(None) => ("client", CloseCode::NO_STATUS.into(), ""),
            Ending::ClosedByServer { sent, .. } | Ending::Failed { sent } => {
                ("server", sent.code.into(), &sent.reason)
            }
            Ending::CloseTimeout { sent } => ("server", sent.code.into(), &sent.reason),
            Ending::Lost { reason } => ("lost", CloseCode::ABNORMAL.into(), reason),
        }
    }
}

/// The state of one connection, apart from the futures the loop polls.
struct Conn {
    settings: Arc<Settings>,
    in_tx: queue::Sender<Inbound>,
    out_rx: queue::BatchReceiver<Outbound>,
    /// A message read while the handler's queue was full; reading waits until it is taken.
    /// Boxed: rare (a handler that falls behind), and every connection would carry its room.
    parked: Option<Box<Message>>,
    /// A message read in this pass, while the handler's queue was empty, is offered to the
    /// handler (`socket::handoff`): taken when the pass polls the handler next
    /// (`Arms::poll_socket`), or queued when the pass ends first (`Conn::drive`). No message
    /// stays offered after a pass.
    offered: bool,
    reassembly: Reassembly,
    /// The close frame this side sent, once it has.
    closing: Option<CloseFrame>,
    handler_done: bool,
    record: Record,
    shared: Arc<ControlBlock>,
    keepalive: Option<Keepalive>,
    /// When the last message went either way (kept only when an idle timeout is set).
    last_activity: Instant,
    /// When the idle timer next looks at `last_activity`.
    idle_deadline: Option<Instant>,
}

/// The keepalive pings' state (the interval and the pong's timeout are the settings').
#[derive(Debug)]
struct Keepalive {
    next_ping: Instant,
    /// When the ping whose pong has not come yet was sent. Its payload, which the pong
    /// echoes, is `sent`; without its pong the connection fails at `sent_at + ping_timeout`.
    awaiting: Option<Instant>,
    /// Pings sent.
    sent: u64,
}

impl Keepalive {
    fn deadline(&self, ping_timeout: Duration) -> Instant {
        match self.awaiting {
            Some(sent_at) => sent_at + ping_timeout,
            None => self.next_ping,
        }
    }
}

impl Conn {
    /// The keepalive and idle timers start when the IO is handed over.
    fn start_timers(&mut self) {
        let now = Instant::now();
        self.keepalive = self.settings.ping_interval.map(|interval| Keepalive {
            next_ping: now + interval,
            awaiting: None,
            sent: 0,
        });
        self.last_activity = now;
        self.idle_deadline = self.settings.idle_timeout.map(|idle| now + idle);
    }

    /// The connection's loop, until it ends. `read` is the read future the loop keeps alive,
    /// `next` makes the next one, in place, from the reader it returns.
    ///
    /// Each turn: write a batch that must go out now, set the timer, act on a signal, then
    /// one pass over the arms ([`poll_pass`](Self::poll_pass)) and act on what it found
    /// ([`act`](Self::act)). Branches do not wait: what they write is queued in the writer,
    /// which is flushed when the task would go idle, when the batch grows past [`FLUSH_AT`],
    /// once this side's close frame is in it, and when the loop ends. So the loop's state
    /// holds no branch's future, only the one pass over the arms.
    async fn drive<R, F, W, H>(
        &mut self,
        read: Pin<&mut F>,
        next: fn(Pin<&mut F>, Box<WebSocketRead<R>>),
        writer: &mut Writer<W>,
        handler: &mut H,
    ) -> Ending
    where
        R: AsyncRead + Unpin,
        F: Future<Output = (Box<WebSocketRead<R>>, Result<RawFrame, WebSocketError>)> + ReaderRest,
        W: AsyncWrite + Unpin,
        H: Future<Output = HandlerOutcome> + Unpin,
    {
        let mut pass = Pass {
            // A second handle on the handler's queue, so that a reserved slot borrows this
            // local rather than `self`.
            in_tx: self.in_tx.clone(),
            arms: Arms::new(),
            read,
            next,
            timer: pin!(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        };
        loop {
            if self.must_flush(writer) {
                // A large batch goes out before anything more is queued or read, and so does
                // this side's close frame (the peer answers it; nothing is queued after it).
                if let Err(ending) = writer.flush().await {
                    break ending;
                }
                if self.closing.is_some() {
                    self.shared.progress.close_sent();
                }
            }
            self.set_timer(&mut pass, writer.io.close_by);
            let open = self.closing.is_none();
            match self.on_signal(open, writer) {
                Signal::None => {}
                Signal::Closing => continue,
                Signal::Failed(ending) => break ending,
            }
            let step =
                std::future::poll_fn(|cx| self.poll_pass(cx, &mut pass, open, writer, handler))
                    .await;
            if self.offered {
                // The pass ended before it polled the handler again: the queue takes it.
                self.offered = false;
                if let Some(message) = crate::socket::handoff::reclaim(self.in_tx.id()) {
                    self.queue_for_handler(message, &pass.arms);
                }
            }
            if let Err(ending) = self.act(step, &mut pass, writer) {
                break ending;
            }
            if open && self.closing.is_some() {
                // This turn started the closing handshake: its budget starts now.
                writer.io.start_closing(self.settings.close_timeout);
            }
        }
    }

    /// After the loop: what is batched (a close frame, say) goes out before the connection is
    /// torn down; a connection that cannot take it is lost, whatever the closing handshake
    /// said. Apart from [`drive`](Self::drive), so that the loop's state does not keep room for
    /// this last write's.
    async fn finish<W: AsyncWrite + Unpin>(
        &mut self,
        ending: Ending,
        writer: &mut Writer<W>,
    ) -> Ending {
        let progress = &self.shared.progress;
        if matches!(ending, Ending::Lost { .. }) {
            progress.lost();
            return ending;
        }
        // A closing handshake the peer began, or a failure, starts its budget here: the
        // last flush and the TCP teardown share it.
        writer.io.start_closing(self.settings.close_timeout);
        match writer.flush().await {
            Ok(()) => {
                match ending {
                    Ending::ClosedByPeer(_) | Ending::ClosedByServer { .. } => {
                        progress.handshake_done()
                    }
                    _ => progress.close_sent(),
                }
                ending
            }
            Err(lost) => {
                progress.lost();
                lost
            }
        }
    }

    /// Whether the batch goes out before this turn's pass: it is large, or holds this side's
    /// close frame.
    fn must_flush<W>(&self, writer: &Writer<W>) -> bool {
        let pending = writer.out.pending();
        pending >= FLUSH_AT || (pending > 0 && self.closing.is_some())
    }

    /// Whether a pass that acted inline must hand over to the top of the loop: the batch is
    /// to be written now, or the closing handshake began.
    #[inline]
    fn must_return<W>(&self, writer: &Writer<W>) -> bool {
        self.closing.is_some() || writer.out.pending() >= FLUSH_AT
    }

    /// Sets the one timer to the earliest deadline: the close deadline once closing, else
    /// keepalive and idle. It is reset only when that deadline changes, never per message.
    fn set_timer<F: ReaderRest, R>(&self, pass: &mut Pass<'_, F, R>, close_by: Option<Instant>) {
        let next_deadline = match close_by {
            Some(deadline) => Some(deadline),
            None => earliest(
                self.next_deadline(),
                pass.read.as_ref().get_ref().rest_due(),
            ),
        };
        if next_deadline != pass.armed {
            if let Some(at) = next_deadline {
                pass.timer.as_mut().reset(at);
                // A reset timer must be polled to be registered.
                pass.arms.force(Arms::CLOCK);
            }
            pass.armed = next_deadline;
        }
    }

    /// Acts on an overflow or a shutdown request, while open.
    fn on_signal<W: AsyncWrite + Unpin>(&mut self, open: bool, writer: &mut Writer<W>) -> Signal {
        if !open {
            return Signal::None;
        }
        if let Some(code) = self.shared.overflow() {
            // A send found the queue full under `QueuePolicy::Close`.
            let frame = CloseFrame::new(code, "send queue full: the peer reads too slowly");
            return Signal::Failed(self.fail(frame, writer));
        }
        if self.shared.shutdown_requested() {
            // The layer's handle is shutting down: write what was accepted, then 1001.
            let frame = CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down");
            self.close_after_queue(frame, writer);
            writer.io.start_closing(self.settings.close_timeout);
            return Signal::Closing;
        }
        Signal::None
    }

    /// One pass over the arms, in order; the first with something to act on wins. A plain
    /// `poll_fn`, not `select!`: no future is built per branch and per turn.
    ///
    /// The two steps of every echoed message, a reply taken from the send queue and a data
    /// frame read, are acted on inside the pass when they neither end nor start anything
    /// (closing, a batch that must be written now): the pass then goes on from the handler,
    /// so a request and its reply cost one turn of the loop, not three. At most
    /// [`WRITE_BATCH`] of them per pass, so that the top of the turn (signals, the timer's
    /// deadline) is not put off for long under a stream of pipelined messages.
    fn poll_pass<F, R, W, H>(
        &mut self,
        cx: &mut Context<'_>,
        pass: &mut Pass<'_, F, R>,
        open: bool,
        writer: &mut Writer<W>,
        handler: &mut H,
    ) -> Poll<Step>
    where
        R: AsyncRead + Unpin,
        F: Future<Output = (Box<WebSocketRead<R>>, Result<RawFrame, WebSocketError>)> + ReaderRest,
        W: AsyncWrite + Unpin,
        H: Future<Output = HandlerOutcome> + Unpin,
    {
        let arms = &pass.arms;
        // Wakes of every arm go to this task. A wake hands the task's waker over, so it is
        // given again on every poll.
        arms.register(cx);
        let mut inline = 0;
        loop {
            let handler = (!self.handler_done).then_some(&mut *handler);
            let outbound = open.then_some(&mut self.out_rx);
            match arms.poll_socket(handler, &mut self.offered, &self.in_tx, outbound) {
                Poll::Ready(Step::Queued(Some(item))) if inline < WRITE_BATCH => {
                    inline += 1;
                    self.write_queued(Some(item), writer);
                    if self.must_return(writer) {
                        return Poll::Ready(Step::Continue);
                    }
                    // More may be queued: the queue is polled until it is pending, which
                    // registers the wake-up of the next send.
                    continue;
                }
                Poll::Ready(step) => return Poll::Ready(step),
                Poll::Pending => {}
            }
            if self.parked.is_some() {
                if let Poll::Ready(room) = pass.in_tx.poll_ready(&mut arms.socket_cx()) {
                    return Poll::Ready(Step::Room(room));
                }
            } else if let Poll::Ready((reader, result)) =
                arms.poll_arm(Arms::READ, |cx| pass.read.as_mut().poll(cx))
            {
                (pass.next)(pass.read.as_mut(), reader);
                arms.force(Arms::READ);
                match result {
                    Ok(frame) if is_data(frame.opcode) && inline < WRITE_BATCH => {
                        inline += 1;
                        if let Err(ending) = self.on_frame(frame, writer, arms, true) {
                            return Poll::Ready(Step::Ended(ending));
                        }
                        if self.must_return(writer) {
                            return Poll::Ready(Step::Continue);
                        }
                        // Delivered: the handler is polled again at once.
                        continue;
                    }
                    result => return Poll::Ready(Step::Frame(result)),
                }
            }
            break;
        }
        if writer.io.close_by.is_none() {
            // The read future looks at its reader for giving back when the timer says, and
            // sets when in its poll: the timer is brought forward to it in the same pass.
            if let Some(due) = pass.read.as_ref().get_ref().rest_due() {
                if pass.armed.is_none_or(|armed| due < armed) {
                    pass.timer.as_mut().reset(due);
                    pass.armed = Some(due);
                    arms.force(Arms::CLOCK);
                }
            }
        }
        let timer = pass.armed.is_some().then_some(&mut pass.timer);
        if open || timer.is_some() {
            // One arm for both: a wake of either polls the two.
            if let Poll::Ready(step) = arms.poll_arm(Arms::CLOCK, |cx| {
                if open && self.shared.poll_signal(cx).is_ready() {
                    // Acted on at the top of the turn.
                    return Poll::Ready(Step::Signal);
                }
                match timer.map(|timer| timer.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Step::Timer),
                    _ => Poll::Pending,
                }
            }) {
                return Poll::Ready(step);
            }
        }
        // Last, so that it runs only when nothing else is ready: the read side would block
        // and nothing more is queued. Everything batched so far goes out in one write. Cancel
        // safe: a flush left pending may lose to an arm on the next pass.
        if writer.out.pending() > 0 {
            if let Poll::Ready(Err(error)) = writer.out.poll_flush(cx, &mut writer.io) {
                return Poll::Ready(Step::FlushFailed(error));
            }
        }
        // Every arm above was polled in this pass and registered its wake-up (and a finished
        // flush has nothing left): sleep until one comes.
        Poll::Pending
    }

    /// Acts on what a pass found; `Err` ends the loop.
    fn act<F: ReaderRest, R, W: AsyncWrite + Unpin>(
        &mut self,
        step: Step,
        pass: &mut Pass<'_, F, R>,
        writer: &mut Writer<W>,
    ) -> Result<(), Ending> {
        match step {
            Step::HandlerReturned(outcome) => {
                self.handler_done = true;
                self.shared.progress.handler_done();
                self.handler_returned(flatten(outcome), writer);
                Ok(())
            }
            Step::Queued(item) => {
                self.write_queued(item, writer);
                Ok(())
            }
            Step::Room(room) => {
                if let (Ok(()), Some(message)) = (room, self.parked.take()) {
                    // The task is the only sender: the room is still there.
                    let _ = pass.in_tx.try_push(Inbound::Message(*message));
                }
                self.parked = None;
                Ok(())
            }
            Step::Frame(Ok(frame)) => self.on_frame(frame, writer, &pass.arms, false),
            Step::Frame(Err(error)) => match Violation::from_read_error(error) {
                Ok(violation) => Err(self.fail(violation.close_frame(), writer)),
                Err(reason) => Err(Ending::Lost { reason }),
            },
            Step::Signal | Step::Continue => Ok(()),
            Step::Ended(ending) => Err(ending),
            Step::Timer => {
                pass.armed = None;
                match self.closing.take() {
                    Some(sent) => Err(Ending::CloseTimeout { sent }),
                    None => {
                        if pass.read.as_mut().look_at_rest(Instant::now()) {
                            pass.arms.force(Arms::READ);
                        }
                        self.on_timer(writer)
                    }
                }
            }
            Step::FlushFailed(error) => Err(lost_io(error)),
        }
    }

    /// The earliest keepalive or idle deadline, if any.
    fn next_deadline(&self) -> Option<Instant> {
        let ping_timeout = self.settings.ping_timeout;
        let keepalive = self.keepalive.as_ref().map(|k| k.deadline(ping_timeout));
        earliest(keepalive, self.idle_deadline)
    }

    /// The timer fired while open: send a ping, give up on a missing pong, or close when idle.
    fn on_timer<W: AsyncWrite + Unpin>(&mut self, writer: &mut Writer<W>) -> Result<(), Ending> {
        let now = Instant::now();
        if let (Some(idle), Some(deadline)) = (self.settings.idle_timeout, self.idle_deadline) {
            if now >= deadline {
                let quiet_until = self.last_activity + idle;
                if now >= quiet_until {
                    self.idle_deadline = None;
                    let frame = CloseFrame::new(CloseCode::GOING_AWAY, "idle timeout");
                    self.start_close(frame, writer);
                    return Ok(());
                }
                self.idle_deadline = Some(quiet_until);
            }
        }
        let (Some(keepalive), Some(interval)) = (&mut self.keepalive, self.settings.ping_interval)
        else {
            return Ok(());
        };
        match keepalive.awaiting {
            Some(sent_at) if now >= sent_at + self.settings.ping_timeout => {
                let frame = CloseFrame::new(CloseCode::INTERNAL_ERROR, "keepalive ping timeout");
                Err(self.fail(frame, writer))
            }
            None if now >= keepalive.next_ping => {
                keepalive.sent += 1;
                let payload = keepalive.sent.to_be_bytes();
                keepalive.awaiting = Some(now);
                keepalive.next_ping = now + interval;
                writer.queue_control(OpCode::Ping, &payload);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A pong arrived: if it answers our ping, note the round trip.
    fn on_pong(&mut self, payload: &[u8]) {
        let Some(keepalive) = &mut self.keepalive else {
            return;
        };
        if let Some(sent_at) = keepalive.awaiting {
            if payload == keepalive.sent.to_be_bytes() {
                self.shared.set_rtt(sent_at.elapsed());
                keepalive.awaiting = None;
            }
        }
    }

    /// A message went either way: the idle timer looks at this lazily.
    fn touch(&mut self) {
        if self.idle_deadline.is_some() {
            self.last_activity = Instant::now();
        }
    }

    /// The handler returned: write what it queued, then close with 1000 (or 1011 on error).
    fn handler_returned<W: AsyncWrite + Unpin>(
        &mut self,
        outcome: Result<(), HandlerError>,
        writer: &mut Writer<W>,
    ) {
        let frame = match outcome {
            Ok(()) => CloseFrame::new(CloseCode::NORMAL, ""),
            Err(error) => {
                tracing::error!(%error, "WebSocket handler failed");
                CloseFrame::new(CloseCode::INTERNAL_ERROR, "internal error")
            }
        };
        if self.closing.is_none() {
            self.close_after_queue(frame, writer);
        }
    }

    /// Queues every message already in the send queue, then starts closing with `frame`
    /// (unless a close queued among them started it first). Other handles may still be
    /// sending: at most one queue's worth is taken.
    fn close_after_queue<W: AsyncWrite + Unpin>(
        &mut self,
        frame: CloseFrame,
        writer: &mut Writer<W>,
    ) {
        for _ in 0..=self.settings.send_queue_capacity {
            let Some(item) = self.out_rx.try_recv() else {
                break;
            };
            self.write_item(item, writer);
            if self.closing.is_some() {
                return;
            }
        }
        self.start_close(frame, writer);
    }

    /// Queues a message from the send queue and as many more as are ready, up to a batch or
    /// until the batch is large enough to be written at once.
    fn write_queued<W: AsyncWrite + Unpin>(
        &mut self,
        item: Option<Outbound>,
        writer: &mut Writer<W>,
    ) {
        let Some(item) = item else {
            // Every handle is gone while the handler still runs: close normally.
            return self.start_close(CloseFrame::new(CloseCode::NORMAL, ""), writer);
        };
        self.write_item(item, writer);
        for _ in 1..WRITE_BATCH {
            if self.closing.is_some() || writer.out.pending() >= FLUSH_AT {
                break;
            }
            match self.out_rx.try_recv() {
                Some(item) => self.write_item(item, writer),
                None => break,
            }
        }
    }

    fn write_item<W: AsyncWrite + Unpin>(&mut self, item: Outbound, writer: &mut Writer<W>) {
        match item {
            Outbound::Message(message) => {
                let (opcode, payload) = match &message {
                    Message::Text(text) => (OpCode::Text, text.as_bytes()),
                    Message::Binary(data) => (OpCode::Binary, data),
                };
                writer.queue_message(opcode, payload);
                self.record.messages_out += 1;
                self.record.bytes_out += payload.len() as u64;
                self.settings.registry.message_out(payload.len());
                self.touch();
            }
            Outbound::Published(batch, _) => {
                batch.write_each(|prepared| {
                    #[cfg(feature = "deflate")]
                    prepared.push_to(&mut writer.out, writer.compressor.as_deref_mut());
                    #[cfg(not(feature = "deflate"))]
                    prepared.push_to(&mut writer.out);
                    let len = prepared.message().len();
                    self.record.messages_out += 1;
                    self.record.bytes_out += len as u64;
                    self.settings.registry.message_out(len);
                });
                self.touch();
            }
            Outbound::Close(frame) => self.start_close(frame, writer),
        }
    }

    /// Queues this side's close frame; the loop then waits for the peer's.
    fn start_close<W: AsyncWrite + Unpin>(&mut self, frame: CloseFrame, writer: &mut Writer<W>) {
        queue_close(writer, &frame);
        self.closing = Some(frame);
        self.out_rx.close();
    }

    /// Fails the connection: queues the close frame, and the loop ends without waiting.
    fn fail<W: AsyncWrite + Unpin>(&mut self, frame: CloseFrame, writer: &mut Writer<W>) -> Ending {
        tracing::debug!(code = %frame.code, reason = %frame.reason, "failing the WebSocket connection");
        if self.closing.is_none() {
            queue_close(writer, &frame);
        }
        Ending::Failed { sent: frame }
    }

    fn on_frame<W: AsyncWrite + Unpin>(
        &mut self,
        frame: RawFrame,
        writer: &mut Writer<W>,
        arms: &Arms,
        in_pass: bool,
    ) -> Result<(), Ending> {
        match frame.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                match self.reassembly.push(frame.fin, frame.opcode, frame.payload) {
                    Ok(Some(message)) => {
                        self.deliver(message, arms, in_pass);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(violation) => Err(self.fail(violation.close_frame(), writer)),
                }
            }
            OpCode::Ping => {
                // fastwebsockets has refused pings over 125 bytes already.
                if self.closing.is_none() {
                    // Batched with the rest; flushed when the task would go idle.
                    writer.queue_control(OpCode::Pong, &frame.payload);
                }
                Ok(())
            }
            OpCode::Pong => {
                // The frame guard has refused pongs over 125 bytes already.
                self.on_pong(&frame.payload);
                Ok(())
            }
            OpCode::Close => {
                let received = match parse_close_payload(frame.payload) {
                    Ok(received) => received,
                    Err(violation) => return Err(self.fail(violation.close_frame(), writer)),
                };
                match self.closing.take() {
                    Some(sent) => Err(Ending::ClosedByServer {
                        sent,
                        reply: received,
                    }),
                    None => {
                        // Answer with the peer's code (an empty close gets an empty close);
                        // the loop's last flush sends it.
                        let code = received.as_ref().map(|frame| u16::from(frame.code));
                        let reply = code.map(u16::to_be_bytes);
                        writer.queue_control(OpCode::Close, reply.as_ref().map_or(&[], |c| c));
                        Err(Ending::ClosedByPeer(received))
                    }
                }
            }
        }
    }

    /// Hands a message to the handler, or parks it when the handler's queue is full.
    ///
    /// `in_pass`: called inside the pass, which polls the handler next (`poll_pass`), or
    /// queues what is still offered when it ends first (`drive`). Then a message that finds
    /// the queue empty skips it: it is offered to the handler directly (`socket::handoff`).
    fn deliver(&mut self, message: Message, arms: &Arms, in_pass: bool) {
        self.touch();
        self.record.messages_in += 1;
        self.record.bytes_in += message.len() as u64;
        self.settings.registry.message_in(message.len());
        let message = if in_pass && !self.handler_done && !self.offered && self.in_tx.is_empty() {
            match crate::socket::handoff::offer(self.in_tx.id(), message) {
                Ok(()) => {
                    self.offered = true;
                    arms.force(Arms::SOCKET);
                    return;
                }
                Err(message) => message,
            }
        } else {
            message
        };
        self.queue_for_handler(message, arms);
    }

    /// Pushes a message into the handler's queue, or parks it when the queue is full.
    fn queue_for_handler(&mut self, message: Message, arms: &Arms) {
        match arms.deliver(&self.in_tx, Inbound::Message(message)) {
            Ok(()) => {}
            Err(PushError::Full(Inbound::Message(message))) => {
                // While closing, a handler that does not read must not stop us from reading
                // the peer's close frame: drop the message instead of waiting.
                if self.closing.is_none() {
                    self.parked = Some(Box::new(message));
                }
            }
            // The handler no longer receives: nobody wants the message.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
// Without the `deflate` feature the agreed extensions are `()`, passed like any other argument.
#[cfg_attr(not(feature = "deflate"), allow(clippy::unit_arg))]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

    /// A handshake that agreed no subprotocol and no extension.
    fn accepted(parts: http::request::Parts) -> super::Accepted {
        super::Accepted {
            parts,
            protocol: None,
            extensions: Default::default(),
        }
    }

    /// The server's end of a pipe, counting the writes that went through.
    struct CountingIo {
        inner: tokio::io::DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for CountingIo {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingIo {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
            if poll.is_ready() {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            poll
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            if poll.is_ready() {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            poll
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    fn masked_text(payload: &[u8]) -> Vec<u8> {
        crate::wire::frame::client_frame(true, 0, 0x1, payload)
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_the_handler_makes_is_written_without_another_wake() {
        // The handler sends once and then waits forever; the peer is silent and no timer is
        // set. Only the order of `Arms::poll_socket` (handler, then outbound queue) gets the
        // message out: the send skips the wake, and nothing else would poll the queue again.
        let (mut client, server) = serve_with(
            |ws: crate::WebSocket| async move {
                let _ = ws.send("hello").await;
                std::future::pending::<()>().await;
            },
            crate::layer::DEFAULT_SEND_QUEUE_CAPACITY,
            crate::QueuePolicy::Wait,
        );
        let mut frame = [0u8; 7];
        // Virtual time: the timeout fires as soon as the runtime has nothing left to run.
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_exact(&mut frame),
        )
        .await
        .expect("the handler's message was written without another wake")
        .unwrap();
        assert_eq!(&frame, b"\x81\x05hello");
        server.abort();
    }

    #[tokio::test]
    async fn messages_reach_a_waiting_recv_directly_and_a_busy_handler_through_its_queue() {
        // The first message finds the handler waiting in `recv` (handed over in the pass);
        // the next two arrive while it waits on something else, so they are offered, not
        // taken, and queued; then a split receiver in another task gets the rest. Every
        // message arrives once and in order, and every reply goes out.
        let gate = Arc::new(tokio::sync::Notify::new());
        let handler_gate = Arc::clone(&gate);
        let handler = move |mut ws: crate::WebSocket| {
            let gate = Arc::clone(&handler_gate);
            async move {
                let first = ws.recv().await.unwrap();
                ws.send(first).await.unwrap();
                gate.notified().await;
                for _ in 0..2 {
                    let next = ws.recv().await.unwrap();
                    ws.send(next).await.unwrap();
                }
                let (mut rx, tx) = ws.split();
                let elsewhere = tokio::spawn(async move {
                    let mut got = Vec::new();
                    for _ in 0..2 {
                        let message = rx.recv().await.unwrap();
                        got.push(message.as_text().unwrap().to_owned());
                        tx.send(message).await.unwrap();
                    }
                    got
                });
                assert_eq!(elsewhere.await.unwrap(), ["d", "e"]);
                std::future::pending::<()>().await;
            }
        };
        let (mut client, server) = serve_with(
            handler,
            crate::layer::DEFAULT_SEND_QUEUE_CAPACITY,
            crate::QueuePolicy::Wait,
        );
        async fn echo(client: &mut tokio::io::DuplexStream) -> [u8; 3] {
            let mut reply = [0u8; 3];
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                client.read_exact(&mut reply),
            )
            .await
            .expect("a reply")
            .unwrap();
            reply
        }
        client.write_all(&masked_text(b"a")).await.unwrap();
        assert_eq!(&echo(&mut client).await, b"\x81\x01a");
        // Read by the connection while the handler waits at the gate.
        let mut two = masked_text(b"b");
        two.extend(masked_text(b"c"));
        client.write_all(&two).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        gate.notify_one();
        assert_eq!(&echo(&mut client).await, b"\x81\x01b");
        assert_eq!(&echo(&mut client).await, b"\x81\x01c");
        client.write_all(&masked_text(b"d")).await.unwrap();
        assert_eq!(&echo(&mut client).await, b"\x81\x01d");
        client.write_all(&masked_text(b"e")).await.unwrap();
        assert_eq!(&echo(&mut client).await, b"\x81\x01e");
        server.abort();
    }

    /// Serves `handler` over a pipe with a send queue of `capacity` under `policy`, no
    /// keepalive and no idle timeout; the client's end and the server task.
    fn serve_with<H, F>(
        handler: H,
        capacity: usize,
        policy: crate::QueuePolicy,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>)
    where
        H: Fn(crate::WebSocket) -> F + Clone + Send + Sync + 'static,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (io, client) = tokio::io::duplex(4096);
        let mut config = crate::layer::tests_config_with(handler);
        let settings = Arc::make_mut(&mut config.connection);
        settings.ping_interval = None;
        settings.idle_timeout = None;
        settings.send_queue_capacity = capacity;
        settings.send_queue_policy = policy;
        let parts = http::Request::new(()).into_parts().0;
        let shared = Arc::new(crate::socket::ControlBlock::default());
        let server = tokio::spawn(super::serve(
            io,
            accepted(parts),
            &config.handler,
            config.connection,
            shared,
        ));
        (client, server)
    }

    async fn read_n(client: &mut tokio::io::DuplexStream, n: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; n];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_exact(&mut bytes),
        )
        .await
        .expect("the frames")
        .unwrap();
        bytes
    }

    #[tokio::test]
    async fn replies_skip_the_queue_only_while_it_is_empty_and_the_capacity_still_holds() {
        // One poll of the handler: the first send goes to the outbox (the queue is empty),
        // the second finds the outbox taken and goes through the queue, which takes the
        // first in first: with a capacity of 1 the second is refused, as before the outbox.
        let (report_tx, mut report) = tokio::sync::mpsc::unbounded_channel();
        let (mut client, server) = serve_with(
            move |ws: crate::WebSocket| {
                let report = report_tx.clone();
                async move {
                    let first = ws.send("a").await;
                    let second = ws.send("b").await;
                    let _ = report.send((first, second));
                    std::future::pending::<()>().await;
                }
            },
            1,
            crate::QueuePolicy::Fail,
        );
        let (first, second) = report.recv().await.unwrap();
        assert_eq!(first, Ok(()));
        assert_eq!(
            second,
            Err(crate::SendError::QueueFull(crate::Message::text("b")))
        );
        assert_eq!(read_n(&mut client, 3).await, b"\x81\x01a");
        server.abort();

        // Waiting for room: every message goes out once and in order, the first from the
        // outbox and the rest through the queue, one poll of the handler after another.
        let (mut client, server) = serve_with(
            |ws: crate::WebSocket| async move {
                for text in ["a", "b", "c", "d"] {
                    ws.send(text).await.unwrap();
                }
                std::future::pending::<()>().await;
            },
            1,
            crate::QueuePolicy::Wait,
        );
        assert_eq!(
            read_n(&mut client, 12).await,
            b"\x81\x01a\x81\x01b\x81\x01c\x81\x01d"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_reply_sent_just_before_the_handler_returns_goes_out_before_the_close() {
        // The send lands in the outbox and the handler returns in the same poll: the reply
        // is put before the queue's items and is written ahead of the 1000 close.
        let (mut client, server) = serve_with(
            |ws: crate::WebSocket| async move {
                ws.send("bye").await.unwrap();
            },
            4,
            crate::QueuePolicy::Wait,
        );
        assert_eq!(read_n(&mut client, 5).await, b"\x81\x03bye");
        assert_eq!(read_n(&mut client, 4).await, b"\x88\x02\x03\xe8");
        server.abort();
    }

    #[tokio::test]
    async fn pipelined_replies_are_coalesced_into_few_writes() {
        const MESSAGES: usize = 200;
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let io = CountingIo {
            inner: server,
            writes: writes.clone(),
        };
        let config = crate::layer::tests_config_with(|mut ws: crate::WebSocket| async move {
            while let Some(msg) = ws.recv().await {
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let parts = http::Request::new(()).into_parts().0;
        let shared = Arc::new(crate::socket::ControlBlock::default());
        let server = tokio::spawn(async move {
            super::serve(
                io,
                accepted(parts),
                &config.handler,
                config.connection,
                shared,
            )
            .await
        });

        // Every request in one write, as a pipelining client sends them.
        let mut requests = Vec::new();
        for i in 0..MESSAGES {
            requests.extend(masked_text(format!("message {i:03}").as_bytes()));
        }
        client.write_all(&requests).await.unwrap();
        let expected_len = MESSAGES * (2 + "message 000".len());
        let mut replies = vec![0u8; expected_len];
        client.read_exact(&mut replies).await.unwrap();
        assert_eq!(&replies[..13], b"\x81\x0bmessage 000");
        assert_eq!(&replies[expected_len - 11..], b"message 199");
        let writes = writes.load(Ordering::SeqCst);
        assert!(
            writes * 10 <= MESSAGES,
            "{MESSAGES} replies took {writes} writes"
        );
        drop(client);
        let _ = server.await;
    }

    #[tokio::test]
    async fn first_frame_arriving_a_byte_at_a_time_is_read_whole() {
        // The first read is made before fastwebsockets' reader exists, into a small buffer
        // that the reader reads first: a frame cut anywhere must still come out whole.
        let (io, mut client) = tokio::io::duplex(1024);
        let config = crate::layer::tests_config_with(|mut ws: crate::WebSocket| async move {
            while let Some(msg) = ws.recv().await {
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let parts = http::Request::new(()).into_parts().0;
        let shared = Arc::new(crate::socket::ControlBlock::default());
        let server = tokio::spawn(super::serve(
            io,
            accepted(parts),
            &config.handler,
            config.connection,
            shared,
        ));
        let text = "a first message longer than the first read";
        let mut requests = masked_text(text.as_bytes());
        requests.extend(masked_text(b"and a second"));
        for byte in &requests {
            client.write_all(std::slice::from_ref(byte)).await.unwrap();
            tokio::task::yield_now().await;
        }
        let mut replies = vec![0u8; 2 + text.len() + 2 + "and a second".len()];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.read_exact(&mut replies),
        )
        .await
        .expect("both replies came")
        .unwrap();
        assert_eq!(&replies[2..2 + text.len()], text.as_bytes());
        assert_eq!(&replies[replies.len() - 12..], b"and a second");
        server.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn close_frame_the_peer_does_not_read_is_given_up_at_the_close_timeout() {
        const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
        // A pipe that holds 1 KiB: the 8 KiB message, and the close frame behind it, stay
        // stuck while the peer reads nothing.
        let (io, _peer) = tokio::io::duplex(1024);
        let mut config = crate::layer::tests_config_with(|ws: crate::WebSocket| async move {
            let _ = ws.send(vec![0u8; 8 * 1024]).await;
        });
        let settings = Arc::make_mut(&mut config.connection);
        settings.close_timeout = CLOSE_TIMEOUT;
        settings.ping_interval = None;
        let parts = http::Request::new(()).into_parts().0;
        let shared = Arc::new(crate::socket::ControlBlock::default());
        let started = tokio::time::Instant::now();
        super::serve(
            io,
            accepted(parts),
            &config.handler,
            config.connection,
            Arc::clone(&shared),
        )
        .await;
        // Virtual time: the close timeout exactly, not the far longer write timeout, which no
        // longer applies once the closing handshake has begun.
        let took = started.elapsed();
        eprintln!("a close frame the peer does not read: given up after {took:?}");
        assert!(
            took >= CLOSE_TIMEOUT && took < 2 * CLOSE_TIMEOUT,
            "the connection ended after {took:?}"
        );
        assert_eq!(
            shared.progress.stage(),
            crate::socket::CloseStage::Lost,
            "the close frame never got out"
        );
    }

    #[test]
    fn connection_future_stays_small() {
        // Every live connection holds one of these: keep it in check (its history is in
        // docs/performance.md).
        let (io, _peer) = tokio::io::duplex(64);
        let parts = http::Request::new(()).into_parts().0;
        let config = crate::layer::tests_config();
        let shared = std::sync::Arc::new(crate::socket::ControlBlock::default());
        let fut = super::serve(
            io,
            accepted(parts),
            &config.handler,
            config.connection,
            shared,
        );
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1300, "the connection future grew to {size} bytes");
    }
}
