//! A batch of published messages, queued once on each subscriber's socket and then grown by
//! the publishes that follow, until the first subscriber's connection writes it.
//!
//! A publish to N subscribers pushes one item into N send queues: a lock and a cache miss or
//! three per subscriber, the largest part of a fan-out's own work at 10 000 subscribers. When
//! the publisher is faster than one turn over the subscribers (what a busy topic is), the
//! publishes between two turns go into the batch the first of them queued: no subscriber is
//! touched again until a connection writes the batch and seals it, and the next publish
//! starts a new one.
//!
//! What keeps the bounds and the order:
//! - a batch is queued with a reservation: part of the room each subscriber's queue has
//!   left, which counts against that queue's capacity and byte budget from the start; the
//!   batch takes messages until the smallest reservation is used, so no queue holds more than
//!   its bounds allow;
//! - the reservation is half the room left, and no more than twice the messages the topic's
//!   previous batch took (at least [`MIN_MESSAGES`], at most [`MAX_MESSAGES`] and
//!   [`MAX_BYTES`]): room reserved and not filled still counts until the subscriber's
//!   connection takes the batch, so a reservation sized to the traffic keeps a lagging
//!   subscriber's queue from filling with room nobody used;
//! - a subscriber's queue that a push finds full settles what it holds: each batch queued
//!   since its last settle is sealed and counted at the messages it took, not the room it
//!   reserved (`Batch::settle`), so a socket subscribed to many topics, with a batch of
//!   each queued, misses a message only when its queue holds as many messages as its
//!   capacity (before, 128 topics' reservations of 8 filled a queue of 1 024);
//! - the batch is sealed when a connection writes it (under its lock, so an append either
//!   lands before that write or goes into a new batch), and when the topic's subscribers
//!   change (so a new subscriber misses nothing published after it joined, and one that
//!   left gets nothing published after it left);
//! - a publish joins a batch only if it skips the same socket (`publish_except`) as the
//!   batch's first;
//! - until its fan-out has queued it everywhere, a batch takes nothing: a publish from
//!   another thread in the meantime starts its own.

use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use crate::socket::queue::Weight;
use crate::wire::writer::Prepared;

/// The most messages one batch reserves room for in a subscriber's queue.
pub(crate) const MAX_MESSAGES: usize = 256;
/// The messages a batch reserves room for when the topic's previous batch is unknown (the
/// first of a topic, or after its subscribers changed), and at least.
pub(crate) const MIN_MESSAGES: usize = 8;
/// The most payload bytes one batch reserves in a subscriber's queue (a first message
/// heavier than this still goes, alone).
pub(crate) const MAX_BYTES: usize = 64 * 1024;

/// Published messages for every subscriber of a topic; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Batch {
    state: Mutex<State>,
    /// The first message's payload length.
    first: usize,
    /// The most messages a subscriber reserves room for.
    wanted: usize,
    /// The messages once sealed, which no longer change: read without the lock by every
    /// connection but the first to write the batch.
    sealed: OnceLock<Vec<Prepared>>,
}

#[derive(Debug)]
struct State {
    messages: Vec<Prepared>,
    bytes: usize,
    /// The room every subscriber that has the batch reserved for it; zero while the fan-out
    /// runs, so that nothing joins before every subscriber has it.
    room: Weight,
    /// A connection wrote it, or the subscribers changed: it takes no more messages.
    sealed: bool,
    /// The socket the first publish skipped.
    except: Option<usize>,
    /// What the first publish did, which each message that joins does too.
    delivered: usize,
    dropped: usize,
}

impl Batch {
    /// A batch holding `first`, which skips the socket `except` names; `previous` is how many
    /// messages the topic's previous batch took, if known.
    pub(crate) fn new(first: Prepared, except: Option<usize>, previous: Option<usize>) -> Self {
        let bytes = first.message().len();
        Batch {
            first: bytes,
            wanted: wanted(previous),
            state: Mutex::new(State {
                messages: vec![first],
                bytes,
                room: Weight::default(),
                sealed: false,
                except,
                delivered: 0,
                dropped: 0,
            }),
            sealed: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code under the lock can panic with the state half changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What a subscriber's queue with `room` left reserves for this batch: see the
    /// [module docs](self).
    pub(crate) fn reserve(&self, room: Weight) -> Weight {
        reservation(room, self.first, self.wanted)
    }

    /// How many messages it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self.sealed.get() {
            Some(messages) => messages.len(),
            None => self.lock().messages.len(),
        }
    }

    /// The fan-out queued the batch on every subscriber: from now on it takes messages up to
    /// `room` (the least any subscriber reserved), each counted as `delivered` and `dropped`.
    /// A batch sealed in the meantime stays sealed.
    pub(crate) fn open(&self, room: Weight, delivered: usize, dropped: usize) {
        let mut state = self.lock();
        state.room = room;
        state.delivered = delivered;
        state.dropped = dropped;
    }

    /// Adds `message` if the batch is open, skips the same socket, and has room for it;
    /// returns how many subscribers got it and how many missed it, or the message back.
    pub(crate) fn append(
        &self,
        message: Prepared,
        except: Option<usize>,
    ) -> Result<(usize, usize), Prepared> {
        let mut state = self.lock();
        let bytes = state.bytes + message.message().len();
        if state.sealed
            || state.except != except
            || state.messages.len() >= state.room.items
            || bytes > state.room.bytes
        {
            return Err(message);
        }
        state.messages.push(message);
        state.bytes = bytes;
        Ok((state.delivered, state.dropped))
    }

    /// Seals the batch and returns what it holds, within `reserved` (what a queue reserved
    /// for it): the weight that queue may count it at from now on.
    pub(crate) fn settle(&self, reserved: Weight) -> Weight {
        let mut state = self.lock();
        state.sealed = true;
        let items = match self.sealed.get() {
            Some(messages) => messages.len(),
            None => state.messages.len(),
        };
        Weight {
            items: items.min(reserved.items),
            bytes: state.bytes.min(reserved.bytes),
        }
    }

    /// Takes no more messages.
    pub(crate) fn seal(&self) {
        self.lock().sealed = true;
    }

    /// The messages, sealed: the first call takes the lock and seals the batch (so a publish
    /// joins before it or not at all), the others read them without it.
    fn sealed(&self) -> &[Prepared] {
        if let Some(messages) = self.sealed.get() {
            return messages;
        }
        let mut state = self.lock();
        state.sealed = true;
        // Set under the lock: only one caller moves the messages out.
        self.sealed
            .get_or_init(|| std::mem::take(&mut state.messages))
    }

    /// Seals the batch and hands each of its messages to `write`, in order: for the
    /// connection that writes it.
    pub(crate) fn write_each(&self, mut write: impl FnMut(&Prepared)) {
        for message in self.sealed() {
            write(message);
        }
    }

    /// Its messages, sealing it: for a writer that frames them itself.
    #[cfg(any(test, feature = "hixie76", feature = "fuzzing"))]
    pub(crate) fn messages(&self) -> Vec<crate::Message> {
        let mut messages = Vec::new();
        self.write_each(|prepared| messages.push(prepared.message().clone()));
        messages
    }
}

/// The most messages a batch reserves room for, after a previous batch of the topic that took
/// `previous` messages: twice that, within [`MIN_MESSAGES`] and [`MAX_MESSAGES`].
pub(crate) fn wanted(previous: Option<usize>) -> usize {
    previous
        .map_or(MIN_MESSAGES, |n| n.saturating_mul(2))
        .clamp(MIN_MESSAGES, MAX_MESSAGES)
}

/// Half of `room`, at most `wanted` messages, and bytes for twice as many payloads of the
/// first's length (of at least 16 bytes) within [`MAX_BYTES`]; at least one message and
/// `first` bytes.
fn reservation(room: Weight, first: usize, wanted: usize) -> Weight {
    let items = (room.items / 2).min(wanted).max(1);
    Weight {
        items,
        bytes: (room.bytes / 2)
            .min(MAX_BYTES)
            .min(items.saturating_mul(first.max(16)).saturating_mul(2))
            .max(first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    fn text(s: &str) -> Prepared {
        Prepared::new(Message::text(s.to_string()))
    }

    #[test]
    fn a_reservation_is_half_the_room_sized_to_the_traffic_and_at_least_the_first_message() {
        let room = |items, bytes| Weight { items, bytes };
        // The previous batch took 200: room for 256 messages, bytes for twice their size.
        assert_eq!(wanted(Some(200)), 256);
        assert_eq!(
            reservation(room(1024, 1 << 20), 20, 256),
            room(256, 256 * 40)
        );
        // 1 KiB messages: the byte cap binds.
        assert_eq!(
            reservation(room(1024, 1 << 20), 1024, 256),
            room(256, 64 * 1024)
        );
        // A topic whose batches take 3 messages reserves 8, not half the queue.
        assert_eq!(wanted(Some(3)), 8);
        assert_eq!(wanted(None), 8);
        assert_eq!(reservation(room(1024, 1 << 20), 20, 8), room(8, 8 * 40));
        assert_eq!(reservation(room(4, 1 << 20), 20, 8), room(2, 80));
        assert_eq!(reservation(room(1, 100), 20, 8), room(1, 40));
        assert_eq!(reservation(room(1, 10), 300, 8), room(1, 300));
    }

    #[test]
    fn a_batch_takes_messages_only_while_open_within_its_room_and_for_the_same_except() {
        let batch = Batch::new(text("a"), None, None);
        // Still being fanned out: nothing joins.
        assert!(batch.append(text("b"), None).is_err());
        batch.open(
            Weight {
                items: 3,
                bytes: 100,
            },
            5,
            1,
        );
        assert_eq!(batch.append(text("b"), None).ok(), Some((5, 1)));
        // Another socket skipped: not the same subscribers.
        assert!(batch.append(text("x"), Some(7)).is_err());
        assert_eq!(batch.append(text("c"), None).ok(), Some((5, 1)));
        // The room is used: three messages.
        assert!(batch.append(text("d"), None).is_err());
        assert_eq!(batch.len(), 3);

        let batch = Batch::new(text("a"), Some(7), None);
        batch.open(
            Weight {
                items: 10,
                bytes: 3,
            },
            1,
            0,
        );
        assert!(batch.append(text("bc"), Some(7)).is_ok());
        // Three bytes reserved: a fourth does not fit.
        assert!(batch.append(text("d"), Some(7)).is_err());
    }

    #[test]
    fn a_written_or_sealed_batch_takes_nothing_more_and_keeps_its_order() {
        let batch = Batch::new(text("a"), None, None);
        batch.open(
            Weight {
                items: 10,
                bytes: 100,
            },
            1,
            0,
        );
        assert!(batch.append(text("b"), None).is_ok());
        let messages = batch.messages();
        assert_eq!(messages, vec![Message::text("a"), Message::text("b")]);
        assert!(batch.append(text("c"), None).is_err());
        // Every holder reads the same messages.
        assert_eq!(batch.messages(), messages);

        let batch = Batch::new(text("a"), None, None);
        batch.seal();
        batch.open(
            Weight {
                items: 10,
                bytes: 100,
            },
            1,
            0,
        );
        assert!(
            batch.append(text("b"), None).is_err(),
            "opened after a seal"
        );
    }
}
