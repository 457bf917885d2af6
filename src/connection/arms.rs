//! [`Arms`]: which of the loop's futures need polling, and the one scheduling rule.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use crate::socket::queue::{self, PushError};
use crate::socket::{self, Inbound, Outbound};

use super::*;

/// Which of the connection loop's futures need polling.
///
/// Each future the loop waits on is polled with a waker of its own ("arm"), except the timer
/// and the signal, which are rare and share one; waking it sets the arm's bit and wakes the
/// task. A pass polls only the arms whose bit is set, so a message
/// costs one poll of the read side and of the handler, not one per pass of the loop. The
/// bits start set; the loop also sets one itself when it knows a future has work (a new read
/// future, a reset timer).
///
/// # The one scheduling rule
///
/// The handler runs inline in this task and shares one arm, [`Arms::SOCKET`], with the
/// socket's two queues; a push into a queue whose receiver waits with the pusher's own waker
/// skips the wake (`socket::queue`). So nothing wakes the task for a send the handler makes,
/// nor the handler for a message the task delivers. This type makes up for both, and is the
/// only code that polls the handler or the outbound queue or delivers to the handler:
/// - [`poll_socket`](Self::poll_socket) polls the outbound queue after the handler, in the
///   same pass and on every pass, so a send the handler just made is seen at once;
/// - [`deliver`](Self::deliver) pushes and marks the socket arm in one call, so the handler
///   is polled on the next pass.
///
/// The test `a_send_the_handler_makes_is_written_without_another_wake` fails if the order
/// changes.
pub(super) struct Arms {
    pub(super) wakeups: Arc<Wakeups>,
    pub(super) socket: Waker,
    pub(super) read: Waker,
    pub(super) clock: Waker,
}

/// The woken arms and the task to wake. Itself the socket arm's waker, so that the arms cost
/// three allocations, not one more per arm.
#[derive(Default)]
pub(super) struct Wakeups {
    pub(super) task: AtomicWaker,
    pub(super) woken: AtomicU8,
}

impl Wakeups {
    #[inline]
    fn wake_arm(&self, arm: u8) {
        self.woken.fetch_or(arm, Ordering::AcqRel);
        self.task.wake();
    }
}

impl Wake for Wakeups {
    #[inline]
    fn wake(self: Arc<Self>) {
        self.wake_arm(Arms::SOCKET);
    }

    #[inline]
    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_arm(Arms::SOCKET);
    }
}

pub(super) struct ArmWaker {
    pub(super) wakeups: Arc<Wakeups>,
    pub(super) arm: u8,
}

impl Wake for ArmWaker {
    #[inline]
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    #[inline]
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakeups.wake_arm(self.arm);
    }
}

impl Arms {
    pub(super) const SOCKET: u8 = 1;
    pub(super) const READ: u8 = 2;
    /// The timer and the overflow or shutdown signal: both rare, so one arm polls both.
    pub(super) const CLOCK: u8 = 4;

    pub(super) fn new() -> Self {
        let wakeups = Arc::new(Wakeups {
            task: AtomicWaker::new(),
            woken: AtomicU8::new(Self::SOCKET | Self::READ | Self::CLOCK),
        });
        let waker = |arm| {
            Waker::from(Arc::new(ArmWaker {
                wakeups: Arc::clone(&wakeups),
                arm,
            }))
        };
        Arms {
            socket: Waker::from(Arc::clone(&wakeups)),
            read: waker(Self::READ),
            clock: waker(Self::CLOCK),
            wakeups,
        }
    }

    /// Wakes go to the task polling with `cx` from now on.
    #[inline]
    pub(super) fn register(&self, cx: &Context<'_>) {
        self.wakeups.task.register(cx.waker());
    }

    /// Marks an arm for polling on the next pass, without waking the task.
    #[inline]
    pub(super) fn force(&self, arm: u8) {
        self.wakeups.woken.fetch_or(arm, Ordering::AcqRel);
    }

    /// The context of the handler's and the queues' arm.
    #[inline]
    pub(super) fn socket_cx(&self) -> Context<'_> {
        Context::from_waker(&self.socket)
    }

    /// The socket's part of one pass: the handler (unless it returned), then the outbound
    /// queue (unless closing), in this order: see [the rule](Self#the-one-scheduling-rule).
    ///
    /// With `offered`, a message read in this pass was offered to the handler's receiver
    /// (`socket::handoff`) for this poll of the handler; if the handler did not take it, it
    /// goes into `in_tx`, the handler's queue, as [`deliver`](Self::deliver) would have put
    /// it.
    #[inline]
    pub(super) fn poll_socket<H>(
        &self,
        handler: Option<&mut H>,
        offered: &mut bool,
        in_tx: &queue::Sender<Inbound>,
        mut outbound: Option<&mut queue::BatchReceiver<Outbound>>,
    ) -> Poll<Step>
    where
        H: Future<Output = HandlerOutcome> + Unpin,
    {
        // The first message the handler sends while the queue is empty skips it
        // (`socket::handoff::collect`): it is written first, ahead of what is queued, unless
        // something taken from the queue is still in hand.
        let outbox = match &outbound {
            Some(outbound) if outbound.is_settled() => outbound.id(),
            _ => 0,
        };
        if let Some(handler) = handler {
            let mut sent = None;
            let polled = self.poll_arm(Self::SOCKET, |cx| {
                let output = if outbox == 0 {
                    Pin::new(handler).poll(cx)
                } else {
                    let (output, message) =
                        socket::handoff::collect(outbox, || Pin::new(handler).poll(cx));
                    sent = message;
                    output
                };
                if std::mem::take(offered) {
                    if let Some(message) = socket::handoff::reclaim(in_tx.id()) {
                        // Not taken: the queue is still empty (this task is its only
                        // sender), so there is room, and the handler finds it there. A
                        // receiver waiting in another task is woken.
                        let _ = in_tx.try_push_from(Inbound::Message(message), Some(cx));
                    }
                }
                output
            });
            if let Some(message) = sent {
                if polled.is_pending() {
                    return Poll::Ready(Step::Queued(Some(Outbound::Message(message))));
                }
                // The handler returned: what it sent goes out with the rest of the queue,
                // before the close (the queue was empty when it was sent).
                if let Some(outbound) = outbound.as_mut() {
                    outbound.requeue(Outbound::Message(message));
                }
            }
            if let Poll::Ready(outcome) = polled {
                return Poll::Ready(Step::HandlerReturned(outcome));
            }
        }
        if let Some(outbound) = outbound {
            if let Poll::Ready(item) = outbound.poll_recv_same_waker(&mut self.socket_cx()) {
                return Poll::Ready(Step::Queued(item));
            }
        }
        Poll::Pending
    }

    /// Hands `item` to the handler's queue from this task, and marks the handler for polling
    /// on the next pass: see [the rule](Self#the-one-scheduling-rule).
    #[inline]
    pub(super) fn deliver(
        &self,
        in_tx: &queue::Sender<Inbound>,
        item: Inbound,
    ) -> Result<(), PushError<Inbound>> {
        let pushed = in_tx.try_push_from(item, Some(&self.socket_cx()));
        self.force(Self::SOCKET);
        pushed
    }

    #[inline]
    pub(super) fn waker(&self, arm: u8) -> &Waker {
        match arm {
            Self::SOCKET => &self.socket,
            Self::READ => &self.read,
            _ => &self.clock,
        }
    }

    /// Polls with the arm's waker if the arm was woken, else stays pending (its waker,
    /// registered when it was last polled, sets the bit and wakes the task).
    #[inline]
    pub(super) fn poll_arm<T>(
        &self,
        arm: u8,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if self.wakeups.woken.fetch_and(!arm, Ordering::AcqRel) & arm == 0 {
            return Poll::Pending;
        }
        let mut cx = Context::from_waker(self.waker(arm));
        let output = poll(&mut cx);
        if output.is_ready() {
            // Whoever polls it again must not need a wake first.
            self.force(arm);
        }
        output
    }
}
