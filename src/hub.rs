//! Topics and broadcast: an in-process hub that fans a message out to every socket subscribed
//! to a topic (a room).
//!
//! Publishing never waits: each subscriber gets the message as
//! [`WebSocketSender::try_send`] would queue it, so a slow subscriber is handled by its socket's
//! [`QueuePolicy`](crate::QueuePolicy) (it misses the message, or is closed), never by holding
//! up the publisher or the other subscribers. The message is framed once per publish, and
//! compressed once per set of permessage-deflate settings for the subscribers that agreed on
//! `server_no_context_takeover`; every subscriber's connection writes those same bytes. No
//! lock is held while a publish fans out: subscribing, leaving and other topics do not wait
//! for it.
//!
//! Publishes that come faster than the subscribers' connections write (a busy topic) are
//! batched: the first queues a batch on every subscriber, reserving part of the room its
//! send queue has left (half of it, and no more than twice what the topic's previous batch
//! took: 8 to 256 messages, at most 64 KiB), and the next ones join
//! that batch without touching any subscriber again, until a connection writes it. So a
//! publish to 10 000 subscribers costs 10 000 queue pushes once per turn of their
//! connections, not once per message. The queue's bounds still hold, counted in messages as
//! before: a batch counts what it reserved. A socket that subscribes, or leaves, ends the
//! batch: it gets exactly what is published after it joined, and nothing after it left. A [`Hub`] is a cheap `Clone`: put it in your state and publish from anywhere, a
//! handler or a plain HTTP route.
//!
//! ```
//! use axum::{routing::post, Router};
//! use tower_websocket::{hub::Hub, Message, WebSocket, WebSocketLayer};
//!
//! let hub = Hub::new();
//!
//! let chat = {
//!     let hub = hub.clone();
//!     move |ws: WebSocket| {
//!         let hub = hub.clone();
//!         async move {
//!             let (mut rx, tx) = ws.split();
//!             let _subscription = hub.subscribe("lobby", &tx); // left when dropped
//!             while let Some(msg) = rx.recv().await {
//!                 hub.publish("lobby", msg);
//!             }
//!         }
//!     }
//! };
//!
//! // An HTTP route that publishes too.
//! let announce = {
//!     let hub = hub.clone();
//!     move |body: String| {
//!         let hub = hub.clone();
//!         async move { format!("{:?}", hub.publish("lobby", Message::text(body))) }
//!     }
//! };
//!
//! let app: Router = Router::new()
//!     .route("/announce", post(announce))
//!     .layer(WebSocketLayer::new(chat));
//! ```
//!
//! # Across processes
//!
//! The hub keeps its subscribers in this process. A [`HubBackend`] carries what is published
//! to other processes (a Redis channel, a message bus); what they publish comes back through
//! [`Hub::deliver_local`]. Without a backend the hub is purely local. The feature `redis`
//! brings one: [`RedisBackend`](redis::RedisBackend), whose guarantees (at-most-once across
//! processes) are described in its module.
//!
//! # History and resume
//!
//! A topic can keep its recent messages ([`Hub::history`]): each message then gets a
//! [`Position`], and a client that reconnects resumes with [`Hub::subscribe_from`], getting
//! exactly what it missed and then the live messages, or a [`Resync`] when the history no
//! longer reaches back. See [`history`] and the chapter [`docs::history`](crate::docs::history).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use crate::message::Message;
use crate::socket::queue::Weight;
use crate::socket::{Reserved, Undelivered, WebSocketSender};
use crate::wire::writer::Prepared;
use batch::Batch;

pub(crate) mod batch;
pub mod history;
#[cfg(feature = "redis")]
pub mod redis;

pub use history::{
    Feed, FeedEvent, HistoryConfig, NoHistory, ParsePositionError, Position, Resync, ResyncReason,
};

/// Carries published messages to the hubs of other processes.
///
/// [`Hub::publish`] hands every message to the backend after delivering it locally; the
/// backend sends it on, and each other process calls [`Hub::deliver_local`] with what it
/// receives. No method may block: they are called on the publisher's path and under the hub's
/// lock, so queue the work and do it from a task of your own.
///
/// The trait is object safe; a hub holds its backend as `Box<dyn HubBackend>`.
pub trait HubBackend: Send + Sync + 'static {
    /// A message was published in this process to `topic`.
    fn publish(&self, topic: &str, message: &Message);

    /// The hub that owns this backend, given once by [`Hub::with_backend`]; keep the
    /// [`WeakHub`] to deliver what other processes publish with [`Hub::deliver_local`]. A
    /// strong [`Hub`] kept here would keep the hub alive forever. Does nothing by default.
    fn attach(&self, hub: WeakHub) {
        let _ = hub;
    }

    /// `topic` got its first local subscriber: start receiving what other processes publish
    /// to it. Called in the order subscriptions change, so a backend that queues these calls
    /// sees a topic's subscribe and unsubscribe in the order they happened. Does nothing by
    /// default (a backend that receives every topic).
    fn subscribe(&self, topic: &str) {
        let _ = topic;
    }

    /// `topic`'s last local subscriber left: stop receiving it. Does nothing by default.
    fn unsubscribe(&self, topic: &str) {
        let _ = topic;
    }
}

/// What one publish did. A publish that joined a batch (see the [module docs](self)) did
/// what the batch's first publish did: the same `delivered` and `dropped`, and `closed` 0.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Subscribers that got the message queued.
    pub delivered: usize,
    /// Subscribers whose send queue was full: they miss this message.
    pub dropped: usize,
    /// Subscribers whose socket is closed (or was closed now, under
    /// [`QueuePolicy::Close`](crate::QueuePolicy::Close)): they are unsubscribed.
    pub closed: usize,
    /// The message's position in the topic's history; `None` when the topic keeps none, and
    /// when its history is kept in Redis (numbered there, after `publish` returned).
    pub position: Option<Position>,
}

/// An in-process publish/subscribe hub for WebSockets. See the [module docs](self).
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Held only to find a topic's subscribers or to change them, never during a fan-out.
    topics: RwLock<HashMap<String, Subscribers>>,
    next_id: AtomicU64,
    backend: Option<Box<dyn HubBackend>>,
    histories: history::Histories,
}

#[derive(Clone)]
struct Subscriber {
    id: u64,
    sender: WebSocketSender,
}

/// Subscribers per chunk: a change copies at most one chunk (and the list of chunks) when a
/// fan-out holds the list.
const CHUNK: usize = 256;

/// A topic's subscribers, copy-on-write: a publish takes the list (an `Arc` clone) under the
/// topics' lock and fans out after releasing it, so subscribing, leaving and other topics
/// never wait for a fan-out. A change made while a fan-out holds the list copies the part it
/// changes; with no fan-out running, it changes the list in place.
#[derive(Default)]
struct Subscribers {
    chunks: Arc<Vec<Arc<Vec<Subscriber>>>>,
    len: usize,
    /// The batch the last fan-out queued on every subscriber, which the next publishes join
    /// until a connection writes it ([`batch`]).
    open: Mutex<Option<OpenBatch>>,
}

/// A topic's last batch, held weakly (its subscribers' queues hold it: once they wrote it, a
/// quiet topic keeps none of its messages), and how many messages it took.
struct OpenBatch {
    batch: Weak<Batch>,
    len: usize,
}

impl Subscribers {
    /// The open batch takes no more messages: the subscribers change.
    fn seal(&mut self) {
        let open = self.open.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(batch) = open.take().and_then(|open| open.batch.upgrade()) {
            batch.seal();
        }
    }

    /// Adds `prepared` to the open batch if it can take it: then no subscriber is touched.
    /// If not, gives it back with how many messages that batch took (if there is one).
    // The message goes back by value, as `Batch::append` gives it: no copy of its frame.
    #[allow(clippy::result_large_err, clippy::type_complexity)]
    fn join_open(
        &self,
        prepared: Prepared,
        except: Option<usize>,
    ) -> Result<(usize, usize), (Prepared, Option<usize>)> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(last) = open.as_mut() else {
            return Err((prepared, None));
        };
        let Some(batch) = last.batch.upgrade() else {
            return Err((prepared, Some(last.len)));
        };
        match batch.append(prepared, except) {
            Ok(delivery) => {
                last.len += 1;
                Ok(delivery)
            }
            Err(prepared) => Err((prepared, Some(last.len))),
        }
    }

    /// Makes `batch` the one later publishes join (once its fan-out opens it).
    fn set_open(&self, batch: &Arc<Batch>) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        *open = Some(OpenBatch {
            batch: Arc::downgrade(batch),
            len: 1,
        });
    }

    fn push(&mut self, subscriber: Subscriber) {
        let chunks = Arc::make_mut(&mut self.chunks);
        match chunks.last_mut() {
            Some(last) if last.len() < CHUNK => Arc::make_mut(last).push(subscriber),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(subscriber);
                chunks.push(Arc::new(chunk));
            }
        }
        self.len += 1;
    }

    fn remove(&mut self, doomed: impl Fn(u64) -> bool) {
        let hit = |chunk: &Arc<Vec<Subscriber>>| chunk.iter().any(|s| doomed(s.id));
        if !self.chunks.iter().any(hit) {
            return;
        }
        let chunks = Arc::make_mut(&mut self.chunks);
        for chunk in chunks.iter_mut().filter(|chunk| hit(chunk)) {
            Arc::make_mut(chunk).retain(|s| !doomed(s.id));
        }
        chunks.retain(|chunk| !chunk.is_empty());
        self.len = chunks.iter().map(|chunk| chunk.len()).sum();
    }
}

impl Hub {
    /// A hub with no subscribers, local to this process.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hub that also hands every published message to `backend` (see [`HubBackend`]), and
    /// tells it which topics have local subscribers.
    pub fn with_backend(backend: impl HubBackend) -> Self {
        let hub = Hub {
            inner: Arc::new(Inner {
                backend: Some(Box::new(backend)),
                ..Inner::default()
            }),
        };
        if let Some(backend) = &hub.inner.backend {
            backend.attach(hub.downgrade());
        }
        hub
    }

    /// A handle that does not keep the hub alive, for a backend to hold.
    pub fn downgrade(&self) -> WeakHub {
        WeakHub {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Subscribes a socket to `topic`, until the returned [`Subscription`] is dropped (or the
    /// socket closes: closed subscribers are removed at the next publish). The socket gets
    /// what is published from then on; a publish already being fanned out is not.
    pub fn subscribe(&self, topic: &str, sender: &WebSocketSender) -> Subscription {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut topics = self
            .inner
            .topics
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let subscribers = topics.entry(topic.to_string()).or_default();
        if subscribers.len == 0 {
            if let Some(backend) = &self.inner.backend {
                // Under the lock, so the backend sees subscribe/unsubscribe in their order.
                backend.subscribe(topic);
            }
        }
        // It gets nothing of a batch queued before it joined: later publishes start a new one.
        subscribers.seal();
        subscribers.push(Subscriber {
            id,
            sender: sender.clone(),
        });
        drop(topics);
        Subscription {
            hub: Arc::clone(&self.inner),
            topic: topic.to_string(),
            id,
        }
    }

    /// Sends `message` to every subscriber of `topic` (and to the backend, if any), without
    /// waiting for any of them.
    pub fn publish(&self, topic: &str, message: impl Into<Message>) -> Delivery {
        let message = message.into();
        let delivery = self.fan_out(topic, &message, None);
        if let Some(backend) = &self.inner.backend {
            backend.publish(topic, &message);
        }
        delivery
    }

    /// As [`publish`](Self::publish), to every subscriber but `except` (the sender of the
    /// message, say).
    pub fn publish_except(
        &self,
        topic: &str,
        message: impl Into<Message>,
        except: &WebSocketSender,
    ) -> Delivery {
        let message = message.into();
        let delivery = self.fan_out(topic, &message, Some(except));
        if let Some(backend) = &self.inner.backend {
            backend.publish(topic, &message);
        }
        delivery
    }

    /// Delivers a message that another process published, to this process's subscribers only
    /// (it is not handed to the backend again).
    pub fn deliver_local(&self, topic: &str, message: impl Into<Message>) -> Delivery {
        let delivery = self.fan_out(topic, &message.into(), None);
        // A history kept by the backend (Redis) has the message already: its feeds read it.
        self.inner.histories.wake(topic);
        delivery
    }

    /// Keeps a history for the topics that `pattern` names: `"*"` for every topic,
    /// `"prefix*"` for the topics that start with `prefix`, any other string for that one
    /// topic. When several calls match a topic, the last one wins. Call it before publishing:
    /// a topic's history is created, with the settings that match then, on first use.
    ///
    /// A topic with history numbers its messages ([`Position`]); clients resume with
    /// [`subscribe_from`](Self::subscribe_from). Each topic with history holds up to
    /// `config`'s limit of messages in memory for as long as the hub lives.
    ///
    /// On a hub with the Redis backend (feature `redis`, not in cluster mode), the
    /// histories are kept in Redis instead, one stream per topic, numbered there and shared
    /// by every node: a client can resume on any of them. See
    /// [`docs::history`](crate::docs::history) for what changes.
    pub fn history(&self, pattern: &str, config: HistoryConfig) {
        self.inner.histories.configure(pattern, config);
    }

    /// The messages of `topic` after `since`, from its history, then every message published
    /// after, each with its [`Position`]: no gap and no duplicate, however publishes race with
    /// the catch-up. With `since` `None`, only the messages published from now on.
    ///
    /// When the history no longer holds the message after `since`, or `since` is from another
    /// epoch, nothing is replayed: [`Feed::resync`] says so (and so does the feed's first
    /// event), and the feed goes on from the topic's newest message. Fails only when the topic
    /// keeps no history (see [`history`](Self::history)).
    ///
    /// The handler forwards what the feed gives to its socket, in its own format: the position
    /// goes on the wire as the application likes. See [`Feed`] for an example.
    pub fn subscribe_from(&self, topic: &str, since: Option<Position>) -> Result<Feed, NoHistory> {
        self.inner.histories.feed(topic, since)
    }

    /// The position of the newest message of `topic` (offset 0 before the first), `None` when
    /// the topic keeps no history. For a history kept in Redis: the newest position this node
    /// has seen (its own appends, its feeds' reads), `None` before the first.
    pub fn head(&self, topic: &str) -> Option<Position> {
        self.inner.histories.head(topic)
    }

    /// How many sockets are subscribed to `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.inner
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .map_or(0, |subscribers| subscribers.len)
    }

    /// How many topics have at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.inner
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn fan_out(
        &self,
        topic: &str,
        message: &Message,
        except: Option<&WebSocketSender>,
    ) -> Delivery {
        // Into the history first: a feed that reads it as soon as this returns finds it.
        let mut delivery = Delivery {
            position: self.inner.histories.record(topic, message),
            ..Delivery::default()
        };
        // Framed once; every subscriber's connection writes these same bytes.
        let prepared = Prepared::new(message.clone());
        let except_id = except.map(WebSocketSender::socket_id);
        let (chunks, batch) = {
            let topics = self
                .inner
                .topics
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(subscribers) = topics.get(topic) else {
                return delivery;
            };
            // A publish between two turns of the subscribers' connections: it joins the
            // batch queued on each of them, and none is touched.
            let (prepared, previous) = match subscribers.join_open(prepared, except_id) {
                Ok((delivered, dropped)) => {
                    delivery.delivered = delivered;
                    delivery.dropped = dropped;
                    return delivery;
                }
                Err(back) => back,
            };
            let batch = Arc::new(Batch::new(prepared, except_id, previous));
            // Open to later publishes once queued everywhere (under this lock, so that a
            // change of the subscribers seals it).
            subscribers.set_open(&batch);
            (Arc::clone(&subscribers.chunks), batch)
        };
        let mut room = Weight {
            items: usize::MAX,
            bytes: usize::MAX,
        };
        let mut gone = Vec::new();
        for subscriber in chunks.iter().flat_map(|chunk| chunk.iter()) {
            if except.is_some_and(|e| e.same_socket(&subscriber.sender)) {
                continue;
            }
            match subscriber.sender.try_send_batch(&batch, message) {
                Ok(Reserved::Room(reserved)) => {
                    delivery.delivered += 1;
                    room.items = room.items.min(reserved.items);
                    room.bytes = room.bytes.min(reserved.bytes);
                }
                #[cfg(feature = "hixie76")]
                Ok(Reserved::Alone) => {
                    delivery.delivered += 1;
                    room = Weight::default();
                }
                Err(Undelivered::Full) => delivery.dropped += 1,
                Err(Undelivered::Closed) => {
                    delivery.closed += 1;
                    gone.push(subscriber.id);
                }
            }
        }
        if delivery.delivered == 0 {
            room = Weight::default();
        }
        batch.open(room, delivery.delivered, delivery.dropped);
        // Released first, so that the removal changes the list in place.
        drop(chunks);
        if !gone.is_empty() {
            self.inner.remove(topic, |id| gone.contains(&id));
        }
        delivery
    }
}

impl Inner {
    fn remove(&self, topic: &str, doomed: impl Fn(u64) -> bool) {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(subscribers) = topics.get_mut(topic) {
            // Nothing published from now on goes to a subscriber that left.
            subscribers.seal();
            subscribers.remove(doomed);
            if subscribers.len == 0 {
                topics.remove(topic);
                if let Some(backend) = &self.backend {
                    backend.unsubscribe(topic);
                }
            }
        }
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("topics", &self.topic_count())
            .field("backend", &self.inner.backend.is_some())
            .finish()
    }
}

/// A [`Hub`] that does not keep it alive; see [`Hub::downgrade`].
#[derive(Clone)]
pub struct WeakHub {
    inner: std::sync::Weak<Inner>,
}

impl WeakHub {
    /// The hub, unless every [`Hub`] clone was dropped.
    pub fn upgrade(&self) -> Option<Hub> {
        self.inner.upgrade().map(|inner| Hub { inner })
    }
}

impl fmt::Debug for WeakHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakHub").finish_non_exhaustive()
    }
}

/// A socket's subscription to a topic; dropping it unsubscribes. A publish that was already
/// being fanned out when it was dropped may still deliver its message.
#[must_use = "the subscription ends when this is dropped"]
pub struct Subscription {
    hub: Arc<Inner>,
    topic: String,
    id: u64,
}

impl Subscription {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let id = self.id;
        self.hub.remove(&self.topic, |other| other == id);
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use std::task::{Context, Poll, Wake, Waker};

    use crate::socket::queue::{self, Receiver};
    use crate::socket::{ControlBlock, Environ, Inbound, Outbound, WebSocket};
    use crate::QueuePolicy;

    /// A socket with a send queue of 4 that does not settle its batches (the hub's fuzz
    /// model's kind of queue).
    fn socket() -> (WebSocket, Receiver<Outbound>) {
        socket_with_queue(4, None)
    }

    /// A socket whose send queue settles batches as a connection's does.
    fn settling_socket(capacity: usize) -> (WebSocket, Receiver<Outbound>) {
        socket_with_queue(capacity, Some(Outbound::settle))
    }

    fn socket_with_queue(
        capacity: usize,
        settle: Option<fn(&mut Outbound) -> queue::Weight>,
    ) -> (WebSocket, Receiver<Outbound>) {
        let environ = Arc::new(Environ {
            parts: http::Request::new(()).into_parts().0,
            protocol: None,
            version: 13,
        });
        let (_in_tx, in_rx) = queue::bounded::<Inbound>(1);
        let (out_tx, out_rx) =
            queue::bounded_settling(capacity, usize::MAX, Outbound::weight, settle);
        let socket = WebSocket::new(
            environ,
            in_rx,
            out_tx,
            Arc::new(ControlBlock::default()),
            QueuePolicy::Fail,
        );
        (socket, out_rx)
    }

    #[test]
    fn a_socket_on_many_topics_gets_every_message_its_queue_has_room_for() {
        // Each topic's batch reserves room for several messages in the socket's queue; with
        // 200 topics and no connection writing in between, those reservations alone would
        // fill a queue of 1 024 with 128 messages in it.
        const TOPICS: usize = 200;
        const ROUNDS: usize = 4;
        let hub = Hub::new();
        let (socket, mut out_rx) = settling_socket(1024);
        let _subscriptions: Vec<_> = (0..TOPICS)
            .map(|t| hub.subscribe(&format!("t{t}"), &socket.sender()))
            .collect();
        for k in 0..ROUNDS {
            for t in 0..TOPICS {
                let delivery = hub.publish(&format!("t{t}"), Message::text(format!("{t}#{k}")));
                assert_eq!(
                    (delivery.delivered, delivery.dropped),
                    (1, 0),
                    "message {k} of topic {t}"
                );
            }
        }
        // A queue that is really full still refuses: of 1 024 more messages, it takes at
        // most the 224 it has room for.
        let more: Vec<Delivery> = (0..1024)
            .map(|i| hub.publish("t0", Message::text(format!("0#{}", ROUNDS + i))))
            .collect();
        let taken = more.iter().filter(|d| d.delivered == 1).count();
        assert!(more.iter().any(|d| d.dropped == 1), "a full queue drops");
        assert!(taken <= 1024 - TOPICS * ROUNDS, "took {taken} more");
        let mut next = vec![0; TOPICS];
        let mut seen = 0;
        while let Some(item) = out_rx.try_recv() {
            let Outbound::Published(batch, _) = item else {
                panic!("only published messages were queued");
            };
            for message in batch.messages() {
                let text = message.as_text().expect("text").to_string();
                let (t, k) = text.split_once('#').expect("numbered");
                let (t, k): (usize, usize) = (t.parse().unwrap(), k.parse().unwrap());
                assert_eq!(k, next[t], "topic {t} in order");
                next[t] += 1;
                seen += 1;
            }
        }
        assert_eq!(seen, TOPICS * ROUNDS + taken);
    }

    /// The waker of a subscriber's connection task, woken by the publish in the middle of its
    /// fan-out: there it joins and leaves the topic, and publishes to another.
    struct MidFanOut {
        hub: Hub,
        joiner: WebSocketSender,
        first: Mutex<Receiver<Outbound>>,
        last: Mutex<Receiver<Outbound>>,
        /// Whether the first subscriber had the message and the last not yet, when woken.
        seen: Mutex<Option<(bool, bool)>>,
        other_topic: Mutex<Option<Delivery>>,
        woken: AtomicUsize,
    }

    impl Wake for MidFanOut {
        fn wake(self: Arc<Self>) {
            self.woken.fetch_add(1, Ordering::SeqCst);
            let first = self.first.lock().unwrap().try_recv().is_some();
            let last = self.last.lock().unwrap().try_recv().is_some();
            *self.seen.lock().unwrap() = Some((first, last));
            let joined = self.hub.subscribe("room", &self.joiner);
            drop(joined);
            let other = self.hub.publish("other", Message::text("meanwhile"));
            *self.other_topic.lock().unwrap() = Some(other);
        }
    }

    #[test]
    fn subscribing_leaving_and_other_topics_proceed_during_a_fan_out() {
        const SUBSCRIBERS: usize = 1000;
        let hub = Hub::new();
        let mut sockets = Vec::new();
        let mut receivers = Vec::new();
        let mut subscriptions = Vec::new();
        for _ in 0..SUBSCRIBERS {
            let (socket, out_rx) = socket();
            subscriptions.push(hub.subscribe("room", &socket.sender()));
            sockets.push(socket);
            receivers.push(out_rx);
        }
        let (joiner, _joiner_rx) = socket();
        let (other, mut other_rx) = socket();
        let _other_subscription = hub.subscribe("other", &other.sender());
        let last = receivers.pop().expect("subscribers");
        let mut middle = receivers.swap_remove(SUBSCRIBERS / 2);
        let first = receivers.swap_remove(0);
        let waker = Arc::new(MidFanOut {
            hub: hub.clone(),
            joiner: joiner.sender(),
            first: Mutex::new(first),
            last: Mutex::new(last),
            seen: Mutex::new(None),
            other_topic: Mutex::new(None),
            woken: AtomicUsize::new(0),
        });
        // The middle subscriber's task waits for a message: the publish wakes it.
        let task = Waker::from(Arc::clone(&waker));
        assert!(middle
            .poll_recv(&mut Context::from_waker(&task))
            .is_pending());

        // Under a lock held for the whole fan-out, the subscribe in the wake would wait
        // forever: the publish runs on a thread of its own, and the test gives up on it.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let publisher = hub.clone();
        std::thread::spawn(move || {
            let delivery = publisher.publish("room", Message::text("hello"));
            let _ = done_tx.send(delivery);
        });
        let delivery = done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the publish finished: subscribing during its fan-out did not wait for it");

        assert_eq!(waker.woken.load(Ordering::SeqCst), 1);
        assert_eq!(
            *waker.seen.lock().unwrap(),
            Some((true, false)),
            "woken in the middle of the fan-out"
        );
        let other_delivery = waker.other_topic.lock().unwrap().take().expect("published");
        assert_eq!(other_delivery.delivered, 1);
        assert!(matches!(other_rx.try_recv(), Some(Outbound::Published(..))));
        // The joiner joined after the list was taken: it did not get the message, and the
        // count is exact.
        assert_eq!(delivery.delivered, SUBSCRIBERS);
        assert_eq!((delivery.dropped, delivery.closed), (0, 0));
        assert_eq!(hub.subscriber_count("room"), SUBSCRIBERS);
        assert!(matches!(
            middle.poll_recv(&mut Context::from_waker(&task)),
            Poll::Ready(Some(Outbound::Published(..)))
        ));
        drop(subscriptions);
        assert_eq!(hub.subscriber_count("room"), 0);
    }

    #[test]
    fn a_quiet_topic_keeps_no_batch_once_its_subscribers_took_it() {
        let hub = Hub::new();
        let (socket, mut out) = socket();
        let _subscription = hub.subscribe("room", &socket.sender());
        for _ in 0..3 {
            hub.publish("room", Message::binary(vec![7u8; 100_000]));
        }
        let last = |hub: &Hub| {
            let topics = hub.inner.topics.read().unwrap();
            let open = topics["room"].open.lock().unwrap();
            open.as_ref()
                .map(|open| (open.batch.upgrade().is_some(), open.len))
        };
        // Each 100 kB message is over a batch's bytes: one batch each, the last one open.
        assert_eq!(last(&hub), Some((true, 1)));
        let mut taken = 0;
        while let Some(item) = out.try_recv() {
            assert!(matches!(item, Outbound::Published(..)));
            taken += 1;
        }
        assert_eq!(taken, 3);
        // Written and dropped by the connection: the topic holds nothing of it, only its size.
        assert_eq!(last(&hub), Some((false, 1)));
    }

    #[test]
    fn chunked_subscriber_lists_add_and_remove_exactly() {
        let hub = Hub::new();
        let sockets: Vec<_> = (0..3 * CHUNK + 7).map(|_| socket()).collect();
        let mut subscriptions: Vec<_> = sockets
            .iter()
            .map(|(socket, _)| Some(hub.subscribe("room", &socket.sender())))
            .collect();
        assert_eq!(hub.subscriber_count("room"), sockets.len());
        // Leave every third, with a publish's snapshot held meanwhile (copy-on-write).
        let snapshot = hub.inner.topics.read().unwrap()["room"].chunks.clone();
        for subscription in subscriptions.iter_mut().step_by(3) {
            subscription.take();
        }
        let left = sockets.len() - sockets.len().div_ceil(3);
        assert_eq!(hub.subscriber_count("room"), left);
        assert_eq!(
            snapshot.iter().map(|c| c.len()).sum::<usize>(),
            sockets.len()
        );
        drop(snapshot);
        let delivery = hub.publish("room", Message::binary(vec![1u8; 3]));
        assert_eq!(delivery.delivered, left);
        for (i, (_, out)) in sockets.into_iter().enumerate() {
            let mut out = out;
            assert_eq!(out.try_recv().is_some(), i % 3 != 0, "socket {i}");
        }
    }
}
