//! A [`HubBackend`] on Redis pub/sub: one [`Hub`] spanning every process that points at the
//! same Redis (feature `redis`).
//!
//! ```no_run
//! use tower_websocket::hub::{redis::RedisBackend, Hub};
//!
//! # async fn run() -> Result<(), tower_websocket::hub::redis::RedisBackendError> {
//! let backend = RedisBackend::connect("redis://127.0.0.1:6379/").await?;
//! // Keep a clone to watch its events and counters; the hub owns the other.
//! let hub = Hub::with_backend(backend.clone());
//! hub.publish("lobby", "hello, every process");
//! let mut events = backend.events();
//! while let Ok(event) = events.recv().await {
//!     println!("{event:?}, {:?}", backend.stats());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Delivery guarantee: at most once across processes
//!
//! Local subscribers are served first, by the hub itself, whatever Redis is doing. What goes to
//! the other processes is delivered **at most once**: a message is lost, never repeated, when
//! the publish queue is full, when Redis is unreachable, or when a receiving process is
//! disconnected from Redis at the moment it is published (Redis pub/sub keeps nothing). Every
//! such loss is counted ([`RedisStats`]), and a receiver that notices a hole in a sender's
//! sequence numbers reports it as [`RedisEvent::Gap`].
//!
//! # How it works
//!
//! - Each topic is one Redis channel, `{prefix}:{topic}`; the process subscribes to a
//!   channel while the topic has local subscribers, and only then.
//! - Every message travels in an envelope with the sending node's id and a per-topic sequence
//!   number. A node drops what it sent itself (its local subscribers already have it), and
//!   the gaps in others' sequence numbers are reported.
//! - [`Hub::publish`] only puts the message in a bounded queue ([`RedisBackendBuilder::queue_capacity`]);
//!   a writer task sends what has gathered as one pipeline of `PUBLISH` commands per round
//!   trip.
//! - Publishing and subscribing use separate connections. The subscribing one is pinged
//!   ([`RedisBackendBuilder::heartbeat`]) so that a connection that died silently is noticed.
//!   Both reconnect with exponential backoff and no retry limit; after a reconnection every
//!   topic with local subscribers is subscribed again. [`RedisEvent`]s tell the application.
//! - Every node announces itself with a presence key that expires
//!   ([`RedisBackend::nodes`]); [`RedisBackend::subscriber_count`] asks the other nodes
//!   through their inbox channels.
//! - On a Redis Cluster, [`RedisBackend::cluster_builder`] uses sharded pub/sub.
//! - Topics with history ([`Hub::history`]) keep it in a Redis Stream per topic, appended to
//!   by a Lua script that numbers each message and publishes it in one step, so every node
//!   sees the same positions and a client can resume on any node (not in cluster mode). See
//!   [`docs::history`](crate::docs::history).
//!
//! The guide, with the failures and the figures: [`docs::scale_out`](crate::docs::scale_out).

mod envelope;
mod history;
#[cfg(feature = "metrics")]
mod metrics;
mod presence;
mod publisher;
mod sharded;
mod subscriber;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch, Notify};

use super::{Hub, HubBackend, WeakHub};
use crate::message::Message;

/// The default channel prefix.
const DEFAULT_PREFIX: &str = "tower-websocket";

/// Settings of a [`RedisBackend`], from [`RedisBackend::builder`].
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` or `connect`"]
pub struct RedisBackendBuilder {
    url: String,
    prefix: String,
    queue_capacity: usize,
    max_batch: usize,
    heartbeat: Duration,
    connect_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    presence_ttl: Duration,
    /// The nodes of a Redis Cluster, for sharded pub/sub.
    cluster: Option<Vec<String>>,
}

impl RedisBackendBuilder {
    /// The channel of topic `t` is `{prefix}:{t}`. Processes share topics only when they share
    /// the prefix, so several applications can use one Redis. Default: `"tower-websocket"`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How many published messages may wait for the writer task; a publish when it is full is
    /// dropped and counted ([`RedisStats::dropped_queue_full`]). Default: 65 536. At least 1.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// The most `PUBLISH` commands sent in one pipeline. Default: 1024. At least 1.
    pub fn max_batch(mut self, max: usize) -> Self {
        self.max_batch = max.max(1);
        self
    }

    /// How often the subscribing connection is pinged; a ping unanswered within the same time
    /// closes it and starts a reconnection, so a silently dead connection is noticed within
    /// twice this. Default: 1 s.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(10));
        self
    }

    /// How long a connection attempt, or a command on the publishing connection, may take.
    /// Default: 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(10));
        self
    }

    /// The wait before reconnecting: `min` after the first failure, doubled at each further
    /// failure up to `max`, and `min` again once connected. Retries never stop.
    /// Default: 50 ms to 1 s.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min.max(Duration::from_millis(1));
        self.backoff_max = max.max(self.backoff_min);
        self
    }

    /// How long this node stays listed by [`RedisBackend::nodes`] after its last heartbeat
    /// (the TTL of its presence key, refreshed every [`heartbeat`](Self::heartbeat)): a node
    /// that dies without a word disappears within this. Default: 3 s; at least twice the
    /// heartbeat.
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl;
        self
    }

    /// Starts the backend without waiting for Redis: its tasks connect in the background, and
    /// reconnect for ever. Fails only on a URL the `redis` crate cannot read, or outside a
    /// Tokio runtime.
    pub fn build(self) -> Result<RedisBackend, RedisBackendError> {
        let client = self.client()?;
        let cluster = match &self.cluster {
            Some(urls) => Some(sharded::client(urls, &self).map_err(RedisBackendError::Url)?),
            None => None,
        };
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RedisBackendError::NoRuntime)?;
        let (queue_tx, queue_rx) = mpsc::channel(self.queue_capacity);
        let mut settings = self.clone();
        settings.presence_ttl = settings.presence_ttl.max(settings.heartbeat * 2);
        let (events, _) = broadcast::channel(256);
        let (alive, alive_rx) = watch::channel(());
        let shared = Arc::new(Shared {
            node: random_node_id(),
            prefix: self.prefix.clone(),
            settings,
            client: client.clone(),
            queue: queue_tx.downgrade(),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            events,
            stats: Counters::default(),
            wanted: Mutex::new(HashSet::new()),
            wanted_changed: Notify::new(),
            hub: OnceLock::new(),
            publish_connected: AtomicBool::new(false),
            subscribe_connected: AtomicBool::new(false),
            histories: Arc::new(history::Histories::new(
                client.clone(),
                &self.prefix,
                self.connect_timeout,
                self.heartbeat,
                self.backoff_min,
            )),
        });
        if let Some((cluster, pushes)) = cluster {
            runtime.spawn(sharded::publish(
                cluster.clone(),
                Arc::clone(&shared),
                queue_rx,
            ));
            runtime.spawn(sharded::subscribe(
                cluster,
                pushes,
                Arc::clone(&shared),
                alive_rx,
            ));
        } else {
            runtime.spawn(publisher::run(
                client.clone(),
                Arc::clone(&shared),
                queue_rx,
            ));
            runtime.spawn(subscriber::run(
                client.clone(),
                Arc::clone(&shared),
                alive_rx.clone(),
            ));
            runtime.spawn(presence::run(client, Arc::clone(&shared), alive_rx));
        }
        Ok(RedisBackend {
            shared,
            queue: queue_tx,
            _alive: Arc::new(alive),
        })
    }

    /// As [`build`](Self::build), after checking that Redis answers a `PING` within the
    /// connect timeout: a wrong address or password fails here rather than in the logs.
    pub async fn connect(self) -> Result<RedisBackend, RedisBackendError> {
        let client = self.client()?;
        let check = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            ::redis::cmd("PING")
                .query_async::<::redis::Value>(&mut conn)
                .await
        };
        match tokio::time::timeout(self.connect_timeout, check).await {
            Ok(Ok(_)) => self.build(),
            Ok(Err(e)) => Err(RedisBackendError::Connect(e)),
            Err(_) => Err(RedisBackendError::Timeout(self.connect_timeout)),
        }
    }
}

impl RedisBackendBuilder {
    fn client(&self) -> Result<::redis::Client, RedisBackendError> {
        use ::redis::IntoConnectionInfo;
        let info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(RedisBackendError::Url)?;
        // Small commands one after another: without it, one can wait for the ACK of the one
        // before (Nagle's algorithm).
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        ::redis::Client::open(info.set_tcp_settings(tcp)).map_err(RedisBackendError::Url)
    }
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: not printed.
        f.debug_struct("RedisBackendBuilder")
            .field("prefix", &self.prefix)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_batch", &self.max_batch)
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff", &(self.backoff_min, self.backoff_max))
            .field("presence_ttl", &self.presence_ttl)
            .finish_non_exhaustive()
    }
}

/// Why a [`RedisBackend`] could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum RedisBackendError {
    /// The URL is not one the `redis` crate accepts (`redis://[user:password@]host[:port][/db]`).
    Url(::redis::RedisError),
    /// Redis refused the connection or the `PING` (wrong address, password, ...).
    Connect(::redis::RedisError),
    /// Redis did not answer within the connect timeout.
    Timeout(Duration),
    /// A command failed (for [`RedisBackend::nodes`] and
    /// [`RedisBackend::subscriber_count`]).
    Command(::redis::RedisError),
    /// Presence ([`RedisBackend::nodes`], [`RedisBackend::subscriber_count`]) is not available
    /// on a backend built with [`RedisBackend::cluster_builder`].
    NoPresenceInCluster,
    /// Not called from within a Tokio runtime, which the backend's tasks need.
    NoRuntime,
}

impl fmt::Display for RedisBackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisBackendError::Url(e) => write!(f, "invalid Redis URL: {e}"),
            RedisBackendError::Connect(e) => write!(f, "cannot reach Redis: {e}"),
            RedisBackendError::Timeout(t) => write!(f, "Redis did not answer within {t:?}"),
            RedisBackendError::Command(e) => write!(f, "a Redis command failed: {e}"),
            RedisBackendError::NoPresenceInCluster => f.write_str(
                "node presence and cluster-wide counts are not available with Redis Cluster yet",
            ),
            RedisBackendError::NoRuntime => {
                f.write_str("the Redis backend must be started from within a Tokio runtime")
            }
        }
    }
}

impl std::error::Error for RedisBackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RedisBackendError::Url(e)
            | RedisBackendError::Connect(e)
            | RedisBackendError::Command(e) => Some(e),
            _ => None,
        }
    }
}

/// Which of the backend's two connections an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Link {
    /// The connection the writer task publishes on.
    Publish,
    /// The connection that receives the subscribed topics.
    Subscribe,
}

/// What happened to a [`RedisBackend`], from [`RedisBackend::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisEvent {
    /// A connection is up; for [`Link::Subscribe`], every topic with local subscribers is
    /// subscribed again.
    Connected(Link),
    /// A connection was lost or could not be made; it is retried with backoff.
    Disconnected {
        /// Which connection.
        link: Link,
        /// What went wrong, for the logs.
        reason: String,
    },
    /// Messages of another node on a topic were lost on the way (their sequence numbers
    /// jumped): this process's subscribers of `topic` missed them.
    Gap {
        /// The topic.
        topic: String,
        /// The id of the node that published them.
        node: u64,
        /// How many messages were missed.
        missed: u64,
    },
}

/// Counters of a [`RedisBackend`] since it started, from [`RedisBackend::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Messages sent to Redis (`PUBLISH` answered).
    pub published: u64,
    /// Publishes dropped because the queue to the writer task was full.
    pub dropped_queue_full: u64,
    /// Publishes dropped because Redis was unreachable (or failed the pipeline they were in).
    pub dropped_disconnected: u64,
    /// Messages from other nodes handed to this process's subscribers.
    pub received: u64,
    /// Times a local subscriber missed a message from another node because its send queue
    /// was full (see [`QueuePolicy`](crate::QueuePolicy)): the hub never waits on a socket.
    pub local_dropped: u64,
    /// Messages of this node that came back from Redis, and were dropped.
    pub own_skipped: u64,
    /// Messages on a topic channel that are not a valid envelope, ignored.
    pub invalid: u64,
    /// Messages from other nodes that arrived with an old sequence number, ignored.
    pub stale: u64,
    /// Messages of other nodes known lost from the gaps in their sequence numbers.
    pub missed: u64,
    /// Times a connection (either) was lost after being up.
    pub disconnects: u64,
}

/// A topic's subscribers over every live node, from [`RedisBackend::subscriber_count`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterCount {
    /// Subscribers on the nodes that answered, this one included.
    pub total: u64,
    /// The nodes that answered (this one first).
    pub answered: Vec<u64>,
    /// Live nodes that did not answer in time: their subscribers are not in `total`.
    pub missing: Vec<u64>,
}

/// What goes to the writer task.
pub(super) enum Out {
    /// A message published to a topic: enveloped and numbered by the writer.
    Topic(String, Message),
    /// Bytes for a channel as they are (a node's inbox).
    Raw(String, bytes::Bytes),
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_disconnected: AtomicU64,
    received: AtomicU64,
    local_dropped: AtomicU64,
    own_skipped: AtomicU64,
    invalid: AtomicU64,
    stale: AtomicU64,
    missed: AtomicU64,
    disconnects: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What the handles and the two tasks share.
struct Shared {
    node: u64,
    prefix: String,
    settings: RedisBackendBuilder,
    client: ::redis::Client,
    /// Weak, so that the writer task ends when the last handle is dropped.
    queue: mpsc::WeakSender<Out>,
    /// Count requests waiting for replies, by request id.
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<(u64, u64)>>>,
    next_request: AtomicU64,
    events: broadcast::Sender<RedisEvent>,
    stats: Counters,
    /// Topics with local subscribers; the subscriber task makes Redis match it.
    wanted: Mutex<HashSet<String>>,
    wanted_changed: Notify,
    hub: OnceLock<WeakHub>,
    publish_connected: AtomicBool,
    subscribe_connected: AtomicBool,
    /// The topic histories kept in Redis.
    histories: Arc<history::Histories>,
}

impl Shared {
    fn channel(&self, topic: &str) -> String {
        format!("{}:{topic}", self.prefix)
    }

    fn topic<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
    }

    /// A node's inbox channel.
    fn inbox(&self, node: u64) -> String {
        format!("{}!inbox:{node}", self.prefix)
    }

    fn node_key_prefix(&self) -> String {
        format!("{}!node:", self.prefix)
    }

    fn node_key(&self, node: u64) -> String {
        format!("{}{node}", self.node_key_prefix())
    }

    /// Queues bytes for a channel; dropped when the queue is full.
    fn send_raw(&self, channel: String, payload: bytes::Bytes) {
        if let Some(queue) = self.queue.upgrade() {
            if queue.try_send(Out::Raw(channel, payload)).is_err() {
                add(&self.stats.dropped_queue_full, 1);
            }
        }
    }

    fn emit(&self, event: RedisEvent) {
        tracing::debug!(?event, node = self.node, "redis hub backend");
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }

    fn hub(&self) -> Option<Hub> {
        self.hub.get().and_then(WeakHub::upgrade)
    }

    /// Whether this node wants `topic`'s channel, and tells the subscriber task. A topic with
    /// a history stays subscribed: its feeds are woken by what arrives.
    fn want(&self, topic: &str, subscribed: bool) {
        {
            let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
            if subscribed {
                wanted.insert(topic.to_string());
            } else if !self.histories.contains(topic) {
                wanted.remove(topic);
            }
        }
        self.wanted_changed.notify_one();
    }
}

/// A [`HubBackend`] on Redis. See the [module docs](self).
///
/// A cheap `Clone`: give one to [`Hub::with_backend`] and keep another for
/// [`events`](Self::events) and [`stats`](Self::stats). Its tasks stop when the last clone
/// is dropped.
#[derive(Clone)]
pub struct RedisBackend {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Out>,
    /// The tasks stop when every clone of this is gone.
    _alive: Arc<watch::Sender<()>>,
}

impl RedisBackend {
    /// Settings for a backend on the Redis at `url` (`redis://[user:password@]host[:port][/db]`).
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_string(),
            queue_capacity: 65_536,
            max_batch: 1024,
            heartbeat: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            presence_ttl: Duration::from_secs(3),
            cluster: None,
        }
    }

    /// Settings for a backend on a Redis Cluster, given some of its nodes' URLs, with sharded
    /// pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7 or later): each topic's messages travel only
    /// through the shard that owns its channel, so topics spread over the shards. The `redis`
    /// crate's cluster client follows slot moves and failovers. Presence
    /// ([`nodes`](Self::nodes), [`subscriber_count`](Self::subscriber_count)) is not
    /// available in this mode yet.
    pub fn cluster_builder<I, S>(urls: I) -> RedisBackendBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let urls: Vec<String> = urls.into_iter().map(Into::into).collect();
        let mut builder = Self::builder(urls.first().cloned().unwrap_or_default());
        builder.cluster = Some(urls);
        builder
    }

    /// A backend with the default settings, once Redis has answered a `PING`
    /// ([`RedisBackendBuilder::connect`]).
    pub async fn connect(url: impl Into<String>) -> Result<Self, RedisBackendError> {
        Self::builder(url).connect().await
    }

    /// A backend with the default settings that connects in the background
    /// ([`RedisBackendBuilder::build`]).
    pub fn new(url: impl Into<String>) -> Result<Self, RedisBackendError> {
        Self::builder(url).build()
    }

    /// This process's id among the nodes, random at each start.
    pub fn node_id(&self) -> u64 {
        self.shared.node
    }

    /// The backend's events from now on. A receiver that falls more than 256 events behind
    /// loses the oldest ones (`RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<RedisEvent> {
        self.shared.events.subscribe()
    }

    /// The counters since the backend started.
    pub fn stats(&self) -> RedisStats {
        let c = &self.shared.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisStats {
            published: get(&c.published),
            dropped_queue_full: get(&c.dropped_queue_full),
            dropped_disconnected: get(&c.dropped_disconnected),
            received: get(&c.received),
            local_dropped: get(&c.local_dropped),
            own_skipped: get(&c.own_skipped),
            invalid: get(&c.invalid),
            stale: get(&c.stale),
            missed: get(&c.missed),
            disconnects: get(&c.disconnects),
        }
    }

    /// Whether the publishing and the subscribing connections are both up now.
    pub fn is_connected(&self) -> bool {
        self.shared.publish_connected.load(Ordering::Relaxed)
            && self.shared.subscribe_connected.load(Ordering::Relaxed)
    }

    /// The ids of the live nodes, this one included once its first heartbeat reached Redis:
    /// those that announced themselves within the presence TTL.
    pub async fn nodes(&self) -> Result<Vec<u64>, RedisBackendError> {
        if self.shared.settings.cluster.is_some() {
            return Err(RedisBackendError::NoPresenceInCluster);
        }
        let limit = self.shared.settings.connect_timeout;
        let work = async {
            let mut conn = self.connection().await?;
            presence::nodes(&mut conn, &self.shared)
                .await
                .map_err(RedisBackendError::Command)
        };
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| RedisBackendError::Timeout(limit))?
    }

    /// How many sockets are subscribed to `topic` on every live node: this node counts its
    /// own, and asks each other node through its inbox. A node that has not answered within
    /// `wait` is left out of the total and listed in [`ClusterCount::missing`].
    pub async fn subscriber_count(
        &self,
        topic: &str,
        wait: Duration,
    ) -> Result<ClusterCount, RedisBackendError> {
        let deadline = tokio::time::Instant::now() + wait;
        let nodes = self.nodes().await?;
        let me = self.shared.node;
        let local = self
            .shared
            .hub()
            .map_or(0, |hub| hub.subscriber_count(topic)) as u64;
        let mut count = ClusterCount {
            total: local,
            answered: vec![me],
            missing: Vec::new(),
        };
        let mut others: HashSet<u64> = nodes.into_iter().filter(|&n| n != me).collect();
        if others.is_empty() {
            return Ok(count);
        }
        let id = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let request = presence::encode(&presence::Inbox::CountRequest {
            id,
            from: me,
            topic: topic.to_string(),
        });
        for &node in &others {
            self.shared
                .send_raw(self.shared.inbox(node), request.clone());
        }
        while !others.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((node, n))) => {
                    if others.remove(&node) {
                        count.total += n;
                        count.answered.push(node);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        count.missing = others.into_iter().collect();
        count.missing.sort_unstable();
        Ok(count)
    }

    async fn connection(&self) -> Result<::redis::aio::MultiplexedConnection, RedisBackendError> {
        let limit = self.shared.settings.connect_timeout;
        let config = ::redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(limit))
            .set_response_timeout(Some(limit));
        self.shared
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(RedisBackendError::Connect)
    }
}

impl HubBackend for RedisBackend {
    fn publish(&self, topic: &str, message: &Message) {
        match self
            .queue
            .try_send(Out::Topic(topic.to_string(), message.clone()))
        {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                add(&self.shared.stats.dropped_queue_full, 1)
            }
            // The writer task is gone only when the runtime is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                add(&self.shared.stats.dropped_disconnected, 1)
            }
        }
    }

    fn attach(&self, hub: WeakHub) {
        let Some(strong) = hub.upgrade() else { return };
        if self.shared.hub.set(hub).is_err() {
            tracing::warn!("a RedisBackend serves one hub: the second Hub::with_backend receives nothing from Redis");
            return;
        }
        // Sharded pub/sub publishes without the scripts: on a cluster, histories stay in
        // each process.
        if self.shared.settings.cluster.is_none() {
            let shared = Arc::clone(&self.shared);
            strong.inner.histories.set_remote(Arc::new(history::Maker {
                histories: Arc::clone(&self.shared.histories),
                subscribe: Box::new(move |topic| shared.want(topic, true)),
            }));
        }
    }

    fn subscribe(&self, topic: &str) {
        self.shared.want(topic, true);
    }

    fn unsubscribe(&self, topic: &str) {
        self.shared.want(topic, false);
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("node", &self.shared.node)
            .field("prefix", &self.shared.prefix)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// A node id unlikely to repeat: std's randomly keyed hasher, over the time and process id.
fn random_node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since.as_nanos());
    }
    hasher.finish()
}

/// Exponential backoff between reconnection attempts.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(settings: &RedisBackendBuilder) -> Self {
        Backoff {
            min: settings.backoff_min,
            max: settings.backoff_max,
            next: settings.backoff_min,
        }
    }

    /// The wait before the next attempt.
    fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_limit_and_starts_again_after_a_reset() {
        let settings = RedisBackend::builder("redis://127.0.0.1/")
            .backoff(Duration::from_millis(50), Duration::from_millis(300));
        let mut backoff = Backoff::new(&settings);
        let waits: Vec<u128> = (0..5).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 300, 300]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(50));
    }

    #[test]
    fn a_bad_url_is_refused_with_a_message() {
        let err = RedisBackend::builder("http://example")
            .build()
            .expect_err("not a redis URL");
        assert!(matches!(err, RedisBackendError::Url(_)));
        assert!(err.to_string().starts_with("invalid Redis URL"), "{err}");
    }

    #[test]
    fn outside_a_runtime_build_says_so() {
        let err = RedisBackend::new("redis://127.0.0.1/").expect_err("no runtime here");
        assert!(matches!(err, RedisBackendError::NoRuntime), "{err}");
    }

    /// Nothing listens on port 1 of the loopback: Redis is unreachable.
    const NOWHERE: &str = "redis://127.0.0.1:1/";

    #[tokio::test(flavor = "current_thread")]
    async fn without_redis_publishing_never_waits_and_every_drop_is_counted() {
        let backend = RedisBackend::builder(NOWHERE)
            .queue_capacity(1)
            .build()
            .expect("build does not wait for Redis");
        let mut events = backend.events();
        let hub = Hub::with_backend(backend.clone());
        // On this single-threaded runtime the writer cannot run in between: one message
        // queued, the others refused at once.
        for i in 0..1000 {
            hub.publish("room", format!("m{i}"));
        }
        assert_eq!(backend.stats().dropped_queue_full, 999);
        let mut down = HashSet::new();
        while down.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Ok(RedisEvent::Disconnected { link, .. })) => {
                    down.insert(link);
                }
                Ok(Ok(other)) => panic!("unexpected {other:?}"),
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => panic!("no Disconnected for both links within 10 s: {down:?}"),
            }
        }
        // The queued one is dropped too, once the writer finds Redis away.
        let start = std::time::Instant::now();
        while backend.stats().dropped_disconnected < 1 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{:?}",
                backend.stats()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!backend.is_connected());
        assert_eq!(backend.stats().published, 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connect_fails_at_once_when_redis_is_unreachable() {
        let err = RedisBackend::connect(NOWHERE)
            .await
            .expect_err("nothing there");
        assert!(matches!(err, RedisBackendError::Connect(_)), "{err:?}");
        assert!(err.to_string().starts_with("cannot reach Redis"), "{err}");
    }

    #[test]
    fn channels_and_topics_map_both_ways_and_inboxes_never_clash() {
        let settings = RedisBackend::builder("redis://127.0.0.1/").prefix("app");
        let (events, _) = broadcast::channel(1);
        let (queue, _rx) = mpsc::channel(1);
        let shared = Shared {
            node: 7,
            prefix: "app".to_string(),
            settings,
            client: ::redis::Client::open("redis://127.0.0.1/").expect("a URL"),
            queue: queue.downgrade(),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            events,
            stats: Counters::default(),
            wanted: Mutex::new(HashSet::new()),
            wanted_changed: Notify::new(),
            hub: OnceLock::new(),
            publish_connected: AtomicBool::new(false),
            subscribe_connected: AtomicBool::new(false),
            histories: Arc::new(history::Histories::new(
                ::redis::Client::open("redis://127.0.0.1/").expect("a URL"),
                "app",
                Duration::from_secs(1),
                Duration::from_secs(1),
                Duration::from_millis(50),
            )),
        };
        assert_eq!(shared.channel("room"), "app:room");
        assert_eq!(shared.topic("app:room"), Some("room"));
        assert_eq!(shared.topic("app:node:1"), Some("node:1"));
        assert_eq!(shared.topic(&shared.inbox(7)), None);
        assert_eq!(shared.topic("other:room"), None);
        assert_eq!(shared.node_key(7), "app!node:7");
    }
}
