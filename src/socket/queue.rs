//! The two queues between a connection task and its socket: messages in (read from the peer,
//! taken by the handler) and messages out (sent by any handle, written by the task).
//!
//! A bounded queue of `T` under one uncontended lock, made for this crate's traffic rather
//! than for every use, as tokio's `mpsc` is:
//! - nothing is allocated until the first item: an idle connection holds two empty
//!   `VecDeque`s, where each of tokio's channels holds a block of 32 slots;
//! - one lock per push or pop, no semaphore; the connection task's receiver of the outbound
//!   queue ([`BatchReceiver`]) takes everything queued under one lock and hands it out
//!   without it, so a burst of sends (a hub's publishes) costs one lock on its side;
//! - a waker is cloned only when a side starts waiting, and a push wakes the receiver only
//!   when it is waiting, and not when the pusher runs in the receiver's own task (the
//!   connection task polls the handler inline). What that asks of the connection task is
//!   stated once, where it is kept: the connection's `Arms`.
//!
//! Every waiting sender is woken when room appears or the queue closes; each re-checks.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// A bounded queue; see the [module docs](self).
#[derive(Debug)]
struct Queue<T> {
    state: Mutex<State<T>>,
    /// `state.items.len()`, written under the lock: lets the receiver see an empty queue
    /// without taking the lock.
    len: AtomicUsize,
    /// `state.receiver.is_some()`, written under the lock.
    receiver_waiting: AtomicBool,
    /// `state.closed`, written under the lock: lets a sender see a closed queue without
    /// taking it (every `send` asks first).
    closed: AtomicBool,
    /// What an item counts against `State::capacity` (one, or the room a batch reserved) and
    /// weighs against `State::max_bytes` (its payload's length).
    weigh: fn(&T) -> Weight,
    /// Settles a queued item's weight, for good, to what it holds (a batch that reserved
    /// room it did not fill stops taking messages and gives that room back); its new weight.
    /// Run over the items not settled yet when a push finds the queue full.
    settle: Option<fn(&mut T) -> Weight>,
    /// The data and vtable pointers of the waker a [`Receiver`] last registered, as numbers
    /// (written and read by the receiver alone): with `receiver_waiting`, they let it see
    /// that it still waits with the waker it is polled with, without taking the lock.
    receiver_data: AtomicUsize,
    receiver_vtable: AtomicUsize,
}

/// What an item counts against a queue's two bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Weight {
    /// Against the capacity: 1 for a message; what a batch reserved for a batch.
    pub(crate) items: usize,
    /// Against the byte budget.
    pub(crate) bytes: usize,
}

impl Weight {
    /// One item of `bytes`.
    #[inline]
    pub(crate) fn one(bytes: usize) -> Self {
        Weight { items: 1, bytes }
    }
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    /// What `items` count against the capacity.
    count: usize,
    /// What the items a [`BatchReceiver`] took and has not come back after count: they still
    /// count against the capacity.
    in_hand: usize,
    capacity: usize,
    /// The weight of `items`.
    bytes: usize,
    /// The weight of what a [`BatchReceiver`] took and has not come back after.
    in_hand_bytes: usize,
    /// The most weight held (queued and in hand): a push that would go past it finds the
    /// queue full, unless nothing is held (an item heavier than this still goes, alone).
    max_bytes: usize,
    /// No more pushes: the receiver closed the queue or is gone.
    closed: bool,
    /// Live sending handles; at 0 the receiver sees the end after the last item.
    senders: usize,
    /// The receiver's waker, while it waits for an item.
    receiver: Option<Waker>,
    /// Senders waiting for room, each once (by `Waker::will_wake`).
    waiting_senders: Vec<Waker>,
    /// How many of the last items were pushed since the queue was last settled: a settle
    /// looks at these alone, so each item is settled at most once.
    unsettled: usize,
}

impl<T> State<T> {
    /// Whether an item weighing `weight` finds no room.
    #[inline]
    fn is_full(&self, weight: Weight) -> bool {
        let held = self.bytes + self.in_hand_bytes;
        self.count + self.in_hand + weight.items > self.capacity
            || (held > 0 && held.saturating_add(weight.bytes) > self.max_bytes)
    }

    /// The room left: items under the capacity, bytes under the budget.
    #[inline]
    fn room(&self) -> Weight {
        Weight {
            items: self.capacity.saturating_sub(self.count + self.in_hand),
            bytes: self
                .max_bytes
                .saturating_sub(self.bytes + self.in_hand_bytes),
        }
    }

    /// Queues `item` (which has room), and takes the receiver's waker if it must be woken:
    /// not when it waits in the task `cx` runs (that task polls it again).
    #[inline]
    fn push_back(
        &mut self,
        queue: &Queue<T>,
        item: T,
        weight: Weight,
        cx: Option<&Context<'_>>,
    ) -> Option<Waker> {
        self.count += weight.items;
        self.bytes += weight.bytes;
        self.items.push_back(item);
        self.unsettled += 1;
        queue.len.store(self.items.len(), Ordering::Release);
        match self.receiver.take() {
            Some(waker) if cx.is_some_and(|cx| waker.will_wake(cx.waker())) => {
                // The receiver runs in this task, which polls it again: keep the waker.
                self.receiver = Some(waker);
                None
            }
            other => {
                queue.receiver_waiting.store(false, Ordering::Release);
                other
            }
        }
    }

    /// Settles the items pushed since the last settle (see [`Queue::settle`]); whether that
    /// gave any room back.
    fn settle(&mut self, queue: &Queue<T>) -> bool {
        let Some(settle) = queue.settle else {
            return false;
        };
        let fresh = self.unsettled.min(self.items.len());
        self.unsettled = 0;
        let first = self.items.len() - fresh;
        let mut freed = false;
        for item in self.items.range_mut(first..) {
            let before = (queue.weigh)(item);
            let after = settle(item);
            if after != before {
                self.count = self.count - before.items + after.items;
                self.bytes = self.bytes - before.bytes + after.bytes;
                freed = true;
            }
        }
        freed
    }

    /// Takes `weight` (of an item leaving the queue) off what the queued items count.
    #[inline]
    fn took(&mut self, weight: Weight) {
        self.count -= weight.items;
        self.bytes -= weight.bytes;
    }
}

impl<T> Queue<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No code under the lock can panic with the state half changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a push did not happen; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError<T> {
    /// The queue holds `capacity` items.
    Full(T),
    /// The receiver is gone or closed the queue.
    Closed(T),
}

/// A bounded queue of `capacity` items (at least 1): its sending and receiving ends.
pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    bounded_by_weight(capacity, usize::MAX, |_| Weight::one(0))
}

/// A queue bounded by `capacity` items (at least 1) and by `max_bytes` of their weight, as
/// `weigh` tells it: full when the next item would take what the items count past
/// `capacity`, or the weight held past `max_bytes` (an item alone always fits, whatever its
/// bytes weigh).
pub(crate) fn bounded_by_weight<T>(
    capacity: usize,
    max_bytes: usize,
    weigh: fn(&T) -> Weight,
) -> (Sender<T>, Receiver<T>) {
    bounded_settling(capacity, max_bytes, weigh, None)
}

/// [`bounded_by_weight`], whose items may weigh less once settled: a push that finds the
/// queue full first settles the items queued since the last settle with `settle`, which
/// returns an item's new weight (never more than before), and pushes if that made room.
pub(crate) fn bounded_settling<T>(
    capacity: usize,
    max_bytes: usize,
    weigh: fn(&T) -> Weight,
    settle: Option<fn(&mut T) -> Weight>,
) -> (Sender<T>, Receiver<T>) {
    let queue = Arc::new(Queue {
        state: Mutex::new(State {
            items: VecDeque::new(),
            count: 0,
            in_hand: 0,
            bytes: 0,
            in_hand_bytes: 0,
            max_bytes,
            capacity: capacity.max(1),
            closed: false,
            senders: 1,
            receiver: None,
            waiting_senders: Vec::new(),
            unsettled: 0,
        }),
        len: AtomicUsize::new(0),
        receiver_waiting: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        weigh,
        settle,
        receiver_data: AtomicUsize::new(0),
        receiver_vtable: AtomicUsize::new(0),
    });
    (
        Sender {
            queue: Arc::clone(&queue),
        },
        Receiver { queue },
    )
}

/// The sending end; clones share the queue.
#[derive(Debug)]
pub(crate) struct Sender<T> {
    queue: Arc<Queue<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.queue.lock().senders += 1;
        Sender {
            queue: Arc::clone(&self.queue),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.queue.lock();
            state.senders -= 1;
            if state.senders == 0 {
                self.queue.receiver_waiting.store(false, Ordering::Release);
                state.receiver.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The queue is closed: nothing more can be pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

impl<T> Sender<T> {
    /// Pushes `item` if there is room. `cx`, when given, is the context of the task running
    /// this push: a receiver waiting in that same task is not woken.
    pub(crate) fn try_push_from(
        &self,
        item: T,
        cx: Option<&Context<'_>>,
    ) -> Result<(), PushError<T>> {
        let waker = {
            let mut state = self.queue.lock();
            if state.closed {
                return Err(PushError::Closed(item));
            }
            let weight = (self.queue.weigh)(&item);
            // Full: settling the items queued since the last settle may make room.
            if state.is_full(weight) && (!state.settle(&self.queue) || state.is_full(weight)) {
                return Err(PushError::Full(item));
            }
            state.push_back(&self.queue, item, weight, cx)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Pushes the item `make` builds from the room left (which is not empty), if it fits:
    /// for an item that reserves part of that room (a hub's batch, which takes more
    /// messages after it is queued). Fails without calling `make` when there is no room.
    pub(crate) fn try_push_reserving(
        &self,
        mut make: impl FnMut(Weight) -> T,
    ) -> Result<(), PushError<()>> {
        let waker = {
            let mut state = self.queue.lock();
            if state.closed {
                return Err(PushError::Closed(()));
            }
            let mut room = state.room();
            if room.items == 0 {
                if !state.settle(&self.queue) {
                    return Err(PushError::Full(()));
                }
                room = state.room();
                if room.items == 0 {
                    return Err(PushError::Full(()));
                }
            }
            let mut item = make(room);
            let mut weight = (self.queue.weigh)(&item);
            if state.is_full(weight) {
                // Room reserved and not used may make room: settled, the item is made again
                // from the room left then.
                if !state.settle(&self.queue) {
                    drop(state);
                    drop(item);
                    return Err(PushError::Full(()));
                }
                drop(item);
                item = make(state.room());
                weight = (self.queue.weigh)(&item);
                if state.is_full(weight) {
                    drop(state);
                    drop(item);
                    return Err(PushError::Full(()));
                }
            }
            state.push_back(&self.queue, item, weight, None)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Pushes `item` if there is room.
    pub(crate) fn try_push(&self, item: T) -> Result<(), PushError<T>> {
        self.try_push_from(item, None)
    }

    /// Pushes `item` even when the queue is full; fails with the item when the queue is
    /// closed. For a `Sink` whose `poll_ready` saw room that another handle took before its
    /// `start_send`, which may not fail for that reason: the queue holds one more item than
    /// its capacity until the receiver catches up.
    pub(crate) fn push_over_capacity(&self, item: T) -> Result<(), T> {
        let waker = {
            let mut state = self.queue.lock();
            if state.closed {
                return Err(item);
            }
            let weight = (self.queue.weigh)(&item);
            state.count += weight.items;
            state.bytes += weight.bytes;
            state.items.push_back(item);
            state.unsettled += 1;
            self.queue.len.store(state.items.len(), Ordering::Release);
            self.queue.receiver_waiting.store(false, Ordering::Release);
            state.receiver.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Pushes `item`, waiting for room. Fails with the item when the queue closes. A receiver
    /// waiting in the task that runs this push is not woken (see the module docs).
    ///
    /// Cancel safe in that a dropped future has pushed nothing.
    pub(crate) fn push(&self, item: T) -> impl Future<Output = Result<(), T>> + '_ {
        self.push_inner(item, true)
    }

    /// Pushes `item`, waiting for room, and always wakes a waiting receiver. Fails with the
    /// item when the queue closes.
    pub(crate) fn push_waking(&self, item: T) -> impl Future<Output = Result<(), T>> + '_ {
        self.push_inner(item, false)
    }

    /// A plain `poll_fn`, not an `async fn`, for the reason in `connection::run`'s docs.
    fn push_inner(
        &self,
        item: T,
        same_task_skips_wake: bool,
    ) -> impl Future<Output = Result<(), T>> + '_ {
        let mut item = Some(item);
        poll_fn(move |cx| self.poll_push(&mut item, cx, same_task_skips_wake))
    }

    /// One poll of a push of the item in `item`: `Ready(Ok)` once pushed (or when `item` is
    /// empty), `Ready(Err)` with the item when the queue is closed, `Pending` with the item
    /// back in `item` when the queue is full (`cx` is woken when room appears). With
    /// `same_task_skips_wake`, a receiver waiting in the task that runs this push is not
    /// woken (see the module docs).
    #[inline]
    pub(crate) fn poll_push(
        &self,
        item: &mut Option<T>,
        cx: &Context<'_>,
        same_task_skips_wake: bool,
    ) -> Poll<Result<(), T>> {
        let Some(next) = item.take() else {
            return Poll::Ready(Ok(()));
        };
        let own = same_task_skips_wake.then_some(cx);
        match self.try_push_from(next, own) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(PushError::Closed(back)) => Poll::Ready(Err(back)),
            Err(PushError::Full(back)) => {
                let weight = (self.queue.weigh)(&back);
                *item = Some(back);
                if !self.register_sender(cx, weight) {
                    // Room appeared (or the queue closed) in between: try again at once.
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }

    /// Ready when the queue has room (`Ok`) or is closed (`Err`); registers to be woken.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        let mut state = self.queue.lock();
        if state.closed {
            return Poll::Ready(Err(Closed));
        }
        // Room for a message of at least one byte: the next item's weight is not known yet.
        if !state.is_full(Weight::one(1)) {
            return Poll::Ready(Ok(()));
        }
        add_waker(&mut state.waiting_senders, cx.waker());
        Poll::Pending
    }

    /// Registers `cx` to be woken when room appears for an item weighing `weight`; false if
    /// there is room already.
    fn register_sender(&self, cx: &Context<'_>, weight: Weight) -> bool {
        let mut state = self.queue.lock();
        if state.closed || !state.is_full(weight) {
            return false;
        }
        add_waker(&mut state.waiting_senders, cx.waker());
        true
    }

    /// Whether pushes fail: the receiver closed the queue or is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.queue.closed.load(Ordering::Acquire)
    }

    /// Whether nothing is queued (seen without the lock).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.len.load(Ordering::Acquire) == 0
    }

    /// Names the queue: the same number as its receiver's [`Receiver::id`].
    #[inline]
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.queue) as usize
    }
}

fn add_waker(wakers: &mut Vec<Waker>, waker: &Waker) {
    if !wakers.iter().any(|w| w.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

/// The receiving end. Dropping it closes the queue.
#[derive(Debug)]
pub(crate) struct Receiver<T> {
    queue: Arc<Queue<T>>,
}

impl<T> Receiver<T> {
    /// Names the queue: the same number as its senders' [`Sender::id`].
    #[inline]
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.queue) as usize
    }

    /// The next item; `None` once every sender is gone and the queue is empty.
    ///
    /// An empty queue this receiver already waits on, with the waker it is polled with now
    /// (the handler's, polled again by its connection task after each message), answers
    /// `Pending` without taking the lock. A push stores the length before it takes the
    /// waker, and the end of the senders clears the waiting flag before it wakes, so neither
    /// is missed; while the flag is set, the registered waker (whose pointers are compared)
    /// is alive, so its pointers name no other waker.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let queue = &*self.queue;
        if queue.len.load(Ordering::Acquire) == 0
            && queue.receiver_waiting.load(Ordering::Acquire)
            && queue.receiver_data.load(Ordering::Relaxed) == cx.waker().data() as usize
            && queue.receiver_vtable.load(Ordering::Relaxed)
                == std::ptr::from_ref(cx.waker().vtable()) as usize
        {
            return Poll::Pending;
        }
        let (item, senders) = {
            let mut state = self.queue.lock();
            match state.items.pop_front() {
                Some(item) => {
                    state.took((self.queue.weigh)(&item));
                    self.queue.len.store(state.items.len(), Ordering::Release);
                    let senders = room_made(&mut state);
                    (item, senders)
                }
                None if state.senders == 0 => return Poll::Ready(None),
                None => {
                    let waker = cx.waker();
                    match &state.receiver {
                        Some(waiting) if waiting.will_wake(waker) => {}
                        _ => state.receiver = Some(waker.clone()),
                    }
                    let queue = &*self.queue;
                    queue
                        .receiver_data
                        .store(waker.data() as usize, Ordering::Relaxed);
                    queue.receiver_vtable.store(
                        std::ptr::from_ref(waker.vtable()) as usize,
                        Ordering::Relaxed,
                    );
                    queue.receiver_waiting.store(true, Ordering::Release);
                    give_back(&mut state.items);
                    return Poll::Pending;
                }
            }
        };
        wake_all(senders);
        Poll::Ready(Some(item))
    }

    /// The next item; `None` once every sender is gone and the queue is empty.
    ///
    /// Cancel safe: a dropped future has taken nothing.
    #[cfg(any(test, feature = "hixie76"))]
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item if one is queued (an empty queue is seen without taking the lock).
    /// The connection takes its outbound queue in batches ([`BatchReceiver`]); this is for
    /// the legacy connection and the fuzzing driver.
    #[cfg(any(test, feature = "hixie76", feature = "fuzzing"))]
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        if self.queue.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let (item, senders) = {
            let mut state = self.queue.lock();
            let item = state.items.pop_front()?;
            state.took((self.queue.weigh)(&item));
            self.queue.len.store(state.items.len(), Ordering::Release);
            (item, room_made(&mut state))
        };
        wake_all(senders);
        Some(item)
    }

    /// No more pushes; what is queued can still be received.
    pub(crate) fn close(&mut self) {
        let senders = {
            let mut state = self.queue.lock();
            state.closed = true;
            self.queue.closed.store(true, Ordering::Release);
            std::mem::take(&mut state.waiting_senders)
        };
        wake_all(senders);
    }
}

/// The outbound queue's receiver in the connection task: takes everything queued under one
/// lock (the queue's buffer swaps with its own) and hands it out without the lock. What it
/// took counts against the capacity until it comes back for more, which it does within the
/// same pass unless its writes must flush first. A separate type, so that the handler's
/// receiver (held in every `WebSocket`) stays one pointer.
#[derive(Debug)]
pub(crate) struct BatchReceiver<T> {
    inner: Receiver<T>,
    /// What the last take moved out of the queue, handed out from here.
    taken: VecDeque<T>,
    /// `State::in_hand` is not 0: the next take, even of nothing, gives the room back (so
    /// the lock-free empty check may not skip it).
    holds_room: bool,
}

impl<T> Receiver<T> {
    /// This receiver, taking what is queued in batches.
    pub(crate) fn in_batches(self) -> BatchReceiver<T> {
        BatchReceiver {
            inner: self,
            taken: VecDeque::new(),
            holds_room: false,
        }
    }
}

impl<T> BatchReceiver<T> {
    /// [`Receiver::poll_recv`] for a receiver that is always polled with the same waker (the
    /// connection task's): an empty queue it already waits on answers `Pending` without
    /// taking the lock. A push stores the length before it takes the waker, and the end of
    /// the senders clears the waiting flag before it wakes, so neither is missed.
    pub(crate) fn poll_recv_same_waker(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(item) = self.taken.pop_front() {
            return Poll::Ready(Some(item));
        }
        let queue = &self.inner.queue;
        if !self.holds_room
            && queue.len.load(Ordering::Acquire) == 0
            && queue.receiver_waiting.load(Ordering::Acquire)
        {
            return Poll::Pending;
        }
        match self.take(Some(cx.waker())) {
            Taken::Item(item) => Poll::Ready(Some(item)),
            Taken::End => Poll::Ready(None),
            Taken::Nothing => Poll::Pending,
        }
    }

    /// The next item if one is queued (an empty queue is seen without taking the lock once
    /// the room of the last take is given back).
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        if let Some(item) = self.taken.pop_front() {
            return Some(item);
        }
        if !self.holds_room && self.inner.queue.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        match self.take(None) {
            Taken::Item(item) => Some(item),
            Taken::End | Taken::Nothing => None,
        }
    }

    /// No more pushes; what is queued or in hand can still be received.
    pub(crate) fn close(&mut self) {
        self.inner.close();
    }

    /// Nothing taken is in hand or counts against the capacity: a message written now,
    /// from outside the queue, goes out after everything taken before it.
    #[inline]
    pub(crate) fn is_settled(&self) -> bool {
        !self.holds_room && self.taken.is_empty()
    }

    /// An item to hand out before anything queued: one sent from outside the queue while
    /// it was empty (see `socket::handoff::collect`), which the task did not write at once.
    pub(crate) fn requeue(&mut self, item: T) {
        self.taken.push_front(item);
    }

    /// Names the queue, as [`Sender::id`].
    #[inline]
    pub(crate) fn id(&self) -> usize {
        self.inner.id()
    }

    /// With nothing left in hand (`taken` empty), takes the lock and moves what is queued
    /// into `taken` (swapping the two buffers, so neither allocates again) and returns the
    /// first item. The items handed out since the last take leave the capacity now, so the
    /// waiting senders are woken. With nothing queued, `waker` (if any) waits for the next
    /// push.
    #[inline]
    fn take(&mut self, waker: Option<&Waker>) -> Taken<T> {
        debug_assert!(self.taken.is_empty());
        let (taken, senders) = {
            let mut state = self.inner.queue.lock();
            let gives_room = self.holds_room;
            let item = if state.items.len() > 1 {
                std::mem::swap(&mut state.items, &mut self.taken);
                self.inner.queue.len.store(0, Ordering::Release);
                let first = self.taken.pop_front();
                let weight = first
                    .as_ref()
                    .map_or(Weight::default(), self.inner.queue.weigh);
                state.in_hand = state.count - weight.items;
                state.in_hand_bytes = state.bytes - weight.bytes;
                state.count = 0;
                state.bytes = 0;
                self.holds_room = true;
                first
            } else {
                // Nothing or one item (one publish at a time): no buffers to swap.
                if gives_room {
                    state.in_hand = 0;
                    state.in_hand_bytes = 0;
                    self.holds_room = false;
                }
                let item = state.items.pop_front();
                if let Some(item) = &item {
                    state.took((self.inner.queue.weigh)(item));
                    self.inner.queue.len.store(0, Ordering::Release);
                }
                item
            };
            let senders = if gives_room || item.is_some() {
                room_made(&mut state)
            } else {
                Vec::new()
            };
            let taken = match item {
                Some(item) => Taken::Item(item),
                None if state.senders == 0 => Taken::End,
                None => {
                    // The batch is drained and nothing is queued: the buffers a burst grew
                    // go back, so a quiet connection keeps no room for the next burst.
                    give_back(&mut state.items);
                    give_back(&mut self.taken);
                    if let Some(waker) = waker {
                        match &state.receiver {
                            Some(waiting) if waiting.will_wake(waker) => {}
                            _ => state.receiver = Some(waker.clone()),
                        }
                        self.inner
                            .queue
                            .receiver_waiting
                            .store(true, Ordering::Release);
                    }
                    Taken::Nothing
                }
            };
            (taken, senders)
        };
        wake_all(senders);
        taken
    }
}

/// The most items an empty queue's buffer keeps room for; a larger one, grown by a burst, is
/// given back when its receiver starts waiting.
const KEEP_ITEMS: usize = 16;

/// Frees the buffer of an empty queue that a burst grew past [`KEEP_ITEMS`].
#[inline]
fn give_back<T>(items: &mut VecDeque<T>) {
    debug_assert!(items.is_empty());
    if items.capacity() > KEEP_ITEMS {
        free_buffer(items);
    }
}

/// The rare half of [`give_back`], out of the receive path.
#[cold]
#[inline(never)]
fn free_buffer<T>(items: &mut VecDeque<T>) {
    *items = VecDeque::new();
}

/// What a [`BatchReceiver`]'s take found.
enum Taken<T> {
    Item(T),
    /// The queue is empty and every sender gone.
    End,
    /// The queue is empty.
    Nothing,
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (senders, items) = {
            let mut state = self.queue.lock();
            state.closed = true;
            self.queue.closed.store(true, Ordering::Release);
            self.queue.len.store(0, Ordering::Release);
            (
                std::mem::take(&mut state.waiting_senders),
                std::mem::take(&mut state.items),
            )
        };
        // Dropped outside the lock: an item's drop may run any code.
        drop(items);
        wake_all(senders);
    }
}

/// An item was taken: the waiting senders, to be woken outside the lock.
fn room_made<T>(state: &mut State<T>) -> Vec<Waker> {
    if state.waiting_senders.is_empty() {
        Vec::new()
    } else {
        std::mem::take(&mut state.waiting_senders)
    }
}

#[inline]
fn wake_all(wakers: Vec<Waker>) {
    // Most calls have none to wake: no iterator to make and drop then.
    if wakers.is_empty() {
        return;
    }
    for waker in wakers {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker::default());
        (Arc::clone(&counter), Waker::from(counter))
    }

    #[test]
    fn items_come_out_in_order_and_the_end_after_the_last() {
        let (tx, mut rx) = bounded(4);
        let (_, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        tx.try_push(1).unwrap();
        tx.try_push(2).unwrap();
        drop(tx);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(2)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn the_lock_free_empty_check_misses_neither_a_push_nor_the_end() {
        let (tx, rx) = bounded(8);
        let mut rx = rx.in_batches();
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        // Not yet waiting: the slow path registers the waker.
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Pending);
        // Waiting on an empty queue: pending again, and still registered.
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Pending);
        assert_eq!(rx.try_recv(), None);
        // A push from another task wakes the receiver and is seen.
        tx.try_push(1).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Ready(Some(1)));
        // A push from the receiver's own task keeps the waker, and is seen all the same.
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Pending);
        tx.try_push_from(2, Some(&cx)).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Ready(Some(2)));
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Pending);
        tx.try_push(3).unwrap();
        assert_eq!(rx.try_recv(), Some(3));
        // The last sender leaving wakes the waiting receiver, which then sees the end.
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Pending);
        let woken = count.0.load(Ordering::SeqCst);
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), woken + 1);
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn the_weight_held_bounds_the_queue_and_a_heavy_item_still_goes_alone() {
        let (tx, rx) = bounded_by_weight(100, 10, |item: &Vec<u8>| Weight::one(item.len()));
        let mut rx = rx.in_batches();
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        tx.try_push(vec![0; 6]).unwrap();
        assert_eq!(tx.try_push(vec![1; 6]), Err(PushError::Full(vec![1; 6])));
        tx.try_push(vec![2; 4]).unwrap();
        assert_eq!(tx.try_push(vec![3; 1]), Err(PushError::Full(vec![3; 1])));
        // A push waiting for room registers, and is woken when the receiver takes.
        assert_eq!(tx.poll_ready(&mut cx), Poll::Pending);
        // Taken in one go: the item handed out leaves the budget, the one still in hand
        // counts until the receiver comes back.
        assert_eq!(
            rx.poll_recv_same_waker(&mut cx),
            Poll::Ready(Some(vec![0; 6]))
        );
        assert_eq!(tx.try_push(vec![4; 7]), Err(PushError::Full(vec![4; 7])));
        tx.try_push(vec![4; 6]).unwrap();
        assert_eq!(tx.poll_ready(&mut cx), Poll::Pending);
        let woken = count.0.load(Ordering::SeqCst);
        assert_eq!(
            rx.poll_recv_same_waker(&mut cx),
            Poll::Ready(Some(vec![2; 4]))
        );
        assert_eq!(
            rx.poll_recv_same_waker(&mut cx),
            Poll::Ready(Some(vec![4; 6]))
        );
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Pending);
        assert!(
            count.0.load(Ordering::SeqCst) > woken,
            "the sender waiting for room was woken when the room came back"
        );
        // Nothing is held now: an item heavier than the budget goes, alone.
        tx.try_push(vec![5; 20]).unwrap();
        assert_eq!(tx.try_push(vec![6; 1]), Err(PushError::Full(vec![6; 1])));
        assert_eq!(
            rx.poll_recv_same_waker(&mut cx),
            Poll::Ready(Some(vec![5; 20]))
        );
        tx.try_push(vec![7; 10]).unwrap();
        assert_eq!(
            rx.poll_recv_same_waker(&mut cx),
            Poll::Ready(Some(vec![7; 10]))
        );
        // The count still bounds light items.
        let (tx, _rx) = bounded_by_weight(2, 10, |item: &Vec<u8>| Weight::one(item.len()));
        tx.try_push(Vec::new()).unwrap();
        tx.try_push(Vec::new()).unwrap();
        assert_eq!(tx.try_push(Vec::new()), Err(PushError::Full(Vec::new())));
    }

    #[test]
    fn buffers_a_burst_grew_are_given_back_once_drained() {
        let burst = 4 * KEEP_ITEMS;
        let (tx, rx) = bounded(burst);
        let mut rx = rx.in_batches();
        let (_, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        for round in 0..2 {
            for i in 0..burst {
                tx.try_push(i).unwrap();
            }
            // Taken in one go (the queue's buffer swapped into the receiver), then handed out.
            for i in 0..burst {
                assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Ready(Some(i)));
            }
            assert!(
                rx.taken.capacity() >= burst || round > 0,
                "the burst was taken in one swap"
            );
            // Drained and waiting: neither buffer keeps room for the burst.
            assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Pending);
            assert!(rx.taken.capacity() <= KEEP_ITEMS);
            assert!(rx.inner.queue.lock().items.capacity() <= KEEP_ITEMS);
        }
        // The handler's receiver gives back its buffer when it starts waiting, too.
        let (tx, mut rx) = bounded(burst);
        for i in 0..burst {
            tx.try_push(i).unwrap();
        }
        for i in 0..burst {
            assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(i)));
        }
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        assert!(rx.queue.lock().items.capacity() <= KEEP_ITEMS);
        // A small queue keeps its buffer: no allocation per message.
        tx.try_push(1).unwrap();
        let kept = rx.queue.lock().items.capacity();
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        assert_eq!(rx.queue.lock().items.capacity(), kept);
    }

    #[test]
    fn a_receiver_waiting_with_the_same_waker_misses_no_push_and_a_new_waker_registers() {
        let (tx, mut rx) = bounded(8);
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        // Waiting with this waker: pending again without the lock, still registered.
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        tx.try_push(1).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(1)));
        // A push from the receiver's own task keeps the waker and the flag: the length
        // check still sees the item.
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        tx.try_push_from(2, Some(&cx)).unwrap();
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(2)));
        // Polled with another waker: that one is registered and woken by the next push.
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        let (other_count, other) = counting();
        let mut other_cx = Context::from_waker(&other);
        assert_eq!(rx.poll_recv(&mut other_cx), Poll::Pending);
        tx.try_push(3).unwrap();
        assert_eq!(other_count.0.load(Ordering::SeqCst), 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(rx.poll_recv(&mut other_cx), Poll::Ready(Some(3)));
        // The end of the senders is seen by a receiver that waits with the same waker.
        assert_eq!(rx.poll_recv(&mut other_cx), Poll::Pending);
        drop(tx);
        assert_eq!(other_count.0.load(Ordering::SeqCst), 2);
        assert_eq!(rx.poll_recv(&mut other_cx), Poll::Ready(None));
    }

    #[test]
    fn a_full_queue_refuses_and_a_closed_one_gives_the_item_back() {
        let (tx, mut rx) = bounded(1);
        tx.try_push("a").unwrap();
        assert_eq!(tx.try_push("b"), Err(PushError::Full("b")));
        rx.close();
        assert!(tx.is_closed());
        assert_eq!(tx.try_push("c"), Err(PushError::Closed("c")));
        // What was queued before the close is still received.
        assert_eq!(rx.try_recv(), Some("a"));
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn a_waiting_receiver_is_woken_once_per_wait_unless_the_pusher_is_its_own_task() {
        let (tx, mut rx) = bounded(8);
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        tx.try_push(1).unwrap();
        tx.try_push(2).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for a wait");
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(2)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        // Pushed from the receiver's own task: no wake, the waker stays registered.
        tx.try_push_from(3, Some(&cx)).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // Pushed from elsewhere: woken.
        tx.try_push(4).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn dropping_the_last_sender_wakes_the_receiver() {
        let (tx, mut rx) = bounded::<u8>(1);
        let tx2 = tx.clone();
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "one sender is left");
        drop(tx2);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn a_sender_waiting_for_room_is_woken_by_a_pop_and_by_the_close() {
        let (tx, mut rx) = bounded(1);
        tx.try_push(1).unwrap();
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(tx.poll_ready(&mut cx), Poll::Pending);
        // Polled again while waiting: still one registration.
        assert_eq!(tx.poll_ready(&mut cx), Poll::Pending);
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Ok(())));
        tx.try_push(2).unwrap();
        assert_eq!(tx.poll_ready(&mut cx), Poll::Pending);
        drop(rx);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Err(Closed)));
    }

    #[test]
    fn a_burst_is_taken_at_once_and_counts_until_handed_out() {
        let (tx, rx) = bounded(3);
        let mut rx = rx.in_batches();
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        for i in 0..3 {
            tx.try_push(i).unwrap();
        }
        // Taken in one go: the queue is empty, and the two items in hand still count.
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Ready(Some(0)));
        assert_eq!(rx.inner.queue.len.load(Ordering::Acquire), 0);
        tx.try_push(3).unwrap();
        assert_eq!(tx.try_push(9), Err(PushError::Full(9)));
        assert_eq!(tx.poll_ready(&mut cx), Poll::Pending);
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Ready(Some(2)));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "no room given back yet");
        // Back for more: the next take gives the room of 1 and 2 back.
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Ready(Some(3)));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        for i in 4..7 {
            tx.try_push(i).unwrap();
        }
        assert_eq!(tx.try_push(9), Err(PushError::Full(9)));
        assert_eq!(rx.try_recv(), Some(4));
        assert_eq!(rx.try_recv(), Some(5));
        assert_eq!(rx.try_recv(), Some(6));
        tx.try_push(7).unwrap();
        tx.try_push(9).unwrap_err();
        assert_eq!(tx.poll_ready(&mut cx), Poll::Pending);
        // Back with empty hands and nothing new: the room is given back and the waiting
        // sender woken, though the lock-free empty check would see an empty queue.
        assert_eq!(rx.try_recv(), Some(7));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        for i in 8..10 {
            tx.try_push(i).unwrap();
        }
        assert_eq!(rx.try_recv(), Some(8));
        assert_eq!(rx.poll_recv_same_waker(&mut cx), Poll::Ready(Some(9)));
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Ok(())));
        tx.try_push(10).unwrap();
        tx.try_push(11).unwrap();
        tx.try_push(12).unwrap_err();
        assert_eq!(tx.poll_ready(&mut cx), Poll::Pending);
        assert_eq!(rx.try_recv(), Some(10));
        // A receiver dropped with an item in hand drops it and wakes the senders.
        drop(rx);
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
        assert_eq!(tx.try_push(9), Err(PushError::Closed(9)));
    }

    #[tokio::test]
    async fn push_waits_for_room_and_a_dropped_push_leaves_nothing() {
        let (tx, mut rx) = bounded(1);
        tx.push(1).await.unwrap();
        // Full: a push that is dropped before room appears has pushed nothing.
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(20), tx.push(2)).await;
        assert!(gave_up.is_err());
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.push(3).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(rx.recv().await, Some(3));
        drop(rx);
        assert_eq!(tx.push(4).await, Err(4));
    }
}
