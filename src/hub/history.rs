//! Topic history: positions, the per-topic log, and the feeds that resume from a position.
//!
//! A topic with history (see [`Hub::history`](super::Hub::history)) keeps its recent messages
//! in a log. Every message appended gets a [`Position`]: an offset that grows by one per
//! message, and the epoch of the log, a random number drawn when the log is created, so that
//! a position from before a restart (or from another process) is recognised as foreign.
//!
//! A [`Feed`] is a cursor over that log: it reads the messages after its position, and waits
//! when it has read them all. Resuming is therefore one mechanism for catch-up and for live
//! delivery, and "no gap, no duplicate" follows from the offsets being consecutive: the feed
//! never has to merge a replay with a live stream.
//!
//! ```
//! use tower_websocket::hub::{FeedEvent, HistoryConfig, Hub, Position};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let hub = Hub::new();
//! hub.history("prices/*", HistoryConfig::new().max_messages(100));
//!
//! hub.publish("prices/eur", "1.08");
//! let seen = hub.head("prices/eur").unwrap(); // a client saw up to here...
//! hub.publish("prices/eur", "1.09"); // ...and missed this one
//!
//! // The client comes back with the position it saw, from a query string say.
//! let since: Position = seen.to_string().parse().unwrap();
//! let mut feed = hub.subscribe_from("prices/eur", Some(since)).unwrap();
//! assert!(feed.resync().is_none());
//! match feed.recv().await {
//!     FeedEvent::Message { position, message } => {
//!         assert_eq!(position.offset(), seen.offset() + 1);
//!         assert_eq!(message.as_text(), Some("1.09"));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::message::Message;

/// Default of [`HistoryConfig::max_messages`]: 1000 messages per topic.
pub const DEFAULT_MAX_MESSAGES: usize = 1000;

/// Messages a feed copies out of the log per lock, so that a long catch-up does not hold up
/// the publishers of the topic.
const READ_BATCH: usize = 64;

/// The same for a remote history, where each batch is a round trip: larger, and still bounded
/// so that one read does not hold the store up for long.
const REMOTE_READ_BATCH: usize = 512;

/// Where a message sits in its topic's history: the epoch of the history and the message's
/// offset in it.
///
/// Offsets start at 1 and grow by one per message published to the topic; offset 0 is "before
/// the first message". A position is written `EPOCH-OFFSET`, two decimal numbers (its
/// [`Display`](fmt::Display)), and read back with [`str::parse`]. Put it on the wire as a
/// string: an epoch may exceed the integers a JavaScript number holds exactly.
///
/// ```
/// use tower_websocket::hub::Position;
///
/// let p: Position = "8123-42".parse().unwrap();
/// assert_eq!((p.epoch(), p.offset()), (8123, 42));
/// assert_eq!(p.to_string(), "8123-42");
/// let err = "42".parse::<Position>().unwrap_err();
/// assert!(err.to_string().contains("EPOCH-OFFSET"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    epoch: u64,
    offset: u64,
}

impl Position {
    /// A position in the history whose epoch is `epoch`.
    pub fn new(epoch: u64, offset: u64) -> Self {
        Position { epoch, offset }
    }

    /// The epoch: which incarnation of the topic's history the offset belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The offset: the message's number in its topic, from 1.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.offset)
    }
}

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ParsePositionError::Empty);
        }
        let (epoch, offset) = s
            .split_once('-')
            .ok_or(ParsePositionError::MissingSeparator)?;
        // `u64::from_str` accepts a leading `+`; a position is digits only.
        let number = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                part.parse::<u64>().ok()
            }
        };
        let epoch = number(epoch).ok_or(ParsePositionError::BadEpoch)?;
        let offset = number(offset).ok_or(ParsePositionError::BadOffset)?;
        Ok(Position { epoch, offset })
    }
}

/// Why a string is not a [`Position`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParsePositionError {
    /// The string is empty.
    Empty,
    /// There is no `-` between the epoch and the offset.
    MissingSeparator,
    /// The part before the `-` is not a decimal number that fits 64 bits.
    BadEpoch,
    /// The part after the `-` is not a decimal number that fits 64 bits.
    BadOffset,
}

impl fmt::Display for ParsePositionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            ParsePositionError::Empty => "it is empty",
            ParsePositionError::MissingSeparator => "there is no `-` in it",
            ParsePositionError::BadEpoch => "its epoch (before the `-`) is not a decimal number",
            ParsePositionError::BadOffset => "its offset (after the `-`) is not a decimal number",
        };
        write!(
            f,
            "not a position: {what}; a position is `EPOCH-OFFSET`, such as `8123-42`"
        )
    }
}

impl std::error::Error for ParsePositionError {}

/// How much history a topic keeps: at most [`max_messages`](Self::max_messages) messages, none
/// older than [`max_age`](Self::max_age).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    max_messages: NonZeroUsize,
    max_age: Option<Duration>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_messages: NonZeroUsize::new(DEFAULT_MAX_MESSAGES).unwrap_or(NonZeroUsize::MIN),
            max_age: None,
        }
    }
}

impl HistoryConfig {
    /// The defaults: the last 1000 messages ([`DEFAULT_MAX_MESSAGES`]), whatever their age.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps at most `count` messages per topic (default 1000); a `count` of 0 is taken as 1.
    pub fn max_messages(mut self, count: usize) -> Self {
        self.max_messages = NonZeroUsize::new(count).unwrap_or(NonZeroUsize::MIN);
        self
    }

    /// Forgets messages older than `age` (default: none is forgotten for its age).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// The count limit.
    pub fn message_limit(&self) -> usize {
        self.max_messages.get()
    }

    /// The age limit, if any.
    pub fn age_limit(&self) -> Option<Duration> {
        self.max_age
    }
}

/// Why a feed cannot replay what its client missed. The client should be sent its state in
/// full; the feed goes on from [`Resync::head`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResyncReason {
    /// The position is older than the oldest message the history still keeps (it was trimmed
    /// by count or age, or the feed fell that far behind).
    Expired,
    /// The position is from another epoch: the history was lost since (a restart, a wiped
    /// store), or the position came from another hub.
    OtherEpoch,
    /// The position is ahead of the newest message of this epoch: it was not issued here.
    Unknown,
}

impl fmt::Display for ResyncReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResyncReason::Expired => "the position is older than the history kept",
            ResyncReason::OtherEpoch => "the position is from another epoch of the history",
            ResyncReason::Unknown => "the position is ahead of the history",
        })
    }
}

/// The history cannot fill in what a client missed: send it the full state instead. Nothing
/// was replayed; the feed goes on with the messages after [`head`](Self::head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resync {
    /// Why.
    pub reason: ResyncReason,
    /// The newest message of the topic when the resync was decided: the feed delivers the
    /// messages after it. A full state taken now covers at least up to here.
    pub head: Position,
}

/// What [`Feed::recv`] gives.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FeedEvent {
    /// The next message of the topic.
    Message {
        /// Its position: the one to send to the client, for it to resume from.
        position: Position,
        /// The message, as published.
        message: Message,
    },
    /// The feed could not go on from where it was (see [`Resync`]); it continues after the
    /// topic's head.
    Resync(Resync),
}

/// [`Hub::subscribe_from`](super::Hub::subscribe_from) on a topic that keeps no history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NoHistory {
    /// The topic.
    pub topic: String,
}

impl fmt::Display for NoHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topic {:?} keeps no history: call Hub::history with a pattern that matches it \
             before subscribing from a position",
            self.topic
        )
    }
}

impl std::error::Error for NoHistory {}

/// The storage seam under a topic's log: the in-memory store here, a Redis stream later.
///
/// The store assigns the position atomically with the append, so that every reader agrees on
/// the offsets. Object safe, so the hub holds a `Box<dyn HistoryStore>` per topic.
pub(crate) trait HistoryStore: Send {
    /// Appends `message` and returns its position.
    fn append(&mut self, message: &Message, now: Instant) -> Position;

    /// The newest position (offset 0 before the first message).
    fn head(&self) -> Position;

    /// Copies up to `max` messages after `since` into `out`, oldest first. Fails when the
    /// store no longer holds the message after `since`, or `since` is not one of its
    /// positions.
    fn read_after(
        &mut self,
        since: Position,
        max: usize,
        now: Instant,
        out: &mut VecDeque<(Position, Message)>,
    ) -> Result<(), ResyncReason>;
}

/// A history kept outside the process (a Redis stream), shared by every node: positions are
/// assigned there, by whoever appends, and feeds read it asynchronously.
pub(crate) trait RemoteHistory: Send + Sync + 'static {
    /// Up to `max` messages after `since` (none when `since` is `None`), with the epoch and
    /// the newest offset at the time of the read, all read atomically. Gives the topic an
    /// epoch when it has none. Fails with a message for the logs when the store is away.
    fn read(&self, since: Option<Position>, max: usize) -> RemoteFuture<'_>;

    /// The newest position this process has seen, `None` before the first.
    fn last_seen(&self) -> Option<Position>;

    /// How long a feed that has read everything waits for a wake-up before reading again:
    /// the bound on how late it notices messages whose wake-up was lost.
    fn poll(&self) -> Duration;
}

/// What [`RemoteHistory::read`] returns.
pub(crate) type RemoteFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<RemoteRead, String>> + Send + 'a>>;

/// One atomic read of a remote history.
#[derive(Debug, Default)]
pub(crate) struct RemoteRead {
    pub(crate) epoch: u64,
    /// The newest offset (0 before the first message).
    pub(crate) head: u64,
    /// Offsets and messages, oldest first; `None` for an entry that is not a message (written
    /// by something else), which feeds skip.
    pub(crate) entries: Vec<(u64, Option<Message>)>,
}

impl RemoteRead {
    /// Whether the messages after `since` are exactly what this read holds (or would come
    /// next), as [`MemoryStore::read_after`] decides it.
    fn verdict(&self, since: Position) -> Result<(), ResyncReason> {
        if since.epoch != self.epoch {
            return Err(ResyncReason::OtherEpoch);
        }
        if since.offset > self.head {
            return Err(ResyncReason::Unknown);
        }
        match self.entries.first() {
            Some(&(first, _)) if first != since.offset + 1 => Err(ResyncReason::Expired),
            None if since.offset < self.head => Err(ResyncReason::Expired),
            _ => Ok(()),
        }
    }
}

/// Makes the remote histories of a hub: a backend that keeps histories gives one to its hub
/// when attached ([`Histories::set_remote`]).
pub(crate) trait RemoteHistories: Send + Sync + 'static {
    /// The history of `topic`, kept with `config`'s limits.
    fn history(&self, topic: &str, config: HistoryConfig) -> Arc<dyn RemoteHistory>;
}

/// The in-memory store: a ring of the recent messages, trimmed by count and by age.
struct MemoryStore {
    epoch: u64,
    config: HistoryConfig,
    /// The offset of `messages[0]`.
    first: u64,
    /// Each message with the time it was appended, oldest first.
    messages: VecDeque<(Instant, Message)>,
}

impl MemoryStore {
    fn new(config: HistoryConfig) -> Self {
        MemoryStore {
            epoch: new_epoch(),
            config,
            first: 1,
            messages: VecDeque::new(),
        }
    }

    fn trim(&mut self, now: Instant) {
        while self.messages.len() > self.config.max_messages.get() {
            self.messages.pop_front();
            self.first += 1;
        }
        if let Some(age) = self.config.max_age {
            while self
                .messages
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > age)
            {
                self.messages.pop_front();
                self.first += 1;
            }
        }
    }
}

impl HistoryStore for MemoryStore {
    fn append(&mut self, message: &Message, now: Instant) -> Position {
        self.messages.push_back((now, message.clone()));
        self.trim(now);
        self.head()
    }

    fn head(&self) -> Position {
        Position::new(self.epoch, self.first + self.messages.len() as u64 - 1)
    }

    fn read_after(
        &mut self,
        since: Position,
        max: usize,
        now: Instant,
        out: &mut VecDeque<(Position, Message)>,
    ) -> Result<(), ResyncReason> {
        self.trim(now);
        if since.epoch != self.epoch {
            return Err(ResyncReason::OtherEpoch);
        }
        let head = self.head().offset;
        if since.offset > head {
            return Err(ResyncReason::Unknown);
        }
        // The message after `since` must still be here, or be the next one to come.
        if since.offset + 1 < self.first {
            return Err(ResyncReason::Expired);
        }
        let skip = (since.offset + 1 - self.first) as usize;
        for (i, (_, message)) in self.messages.iter().skip(skip).take(max).enumerate() {
            let offset = since.offset + 1 + i as u64;
            out.push_back((Position::new(self.epoch, offset), message.clone()));
        }
        Ok(())
    }
}

/// A random epoch, different for every log this process creates and, with overwhelming
/// likelihood, from every log of another run.
fn new_epoch() -> u64 {
    // `RandomState` is seeded from the operating system's randomness; no extra dependency.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    RandomState::new().hash_one(nanos)
}

/// One topic's log and the signal its feeds wait on.
pub(crate) struct Log {
    topic: String,
    store: Store,
    /// Bumped after every append; feeds wait for the bump when they have read everything.
    appended: watch::Sender<()>,
}

/// Where a log's messages are.
enum Store {
    /// In this process: appended by `publish`, read under the lock.
    Local(Mutex<Box<dyn HistoryStore>>),
    /// Outside (Redis): appended by the backend, read asynchronously.
    Remote(Arc<dyn RemoteHistory>),
}

impl Log {
    fn new(topic: &str, store: Store) -> Self {
        Log {
            topic: topic.to_string(),
            store,
            appended: watch::Sender::new(()),
        }
    }

    fn local(&self) -> Option<std::sync::MutexGuard<'_, Box<dyn HistoryStore>>> {
        match &self.store {
            Store::Local(store) => Some(store.lock().unwrap_or_else(PoisonError::into_inner)),
            Store::Remote(_) => None,
        }
    }

    fn append(&self, message: &Message) -> Option<Position> {
        let position = self.local()?.append(message, Instant::now());
        self.appended.send_replace(());
        Some(position)
    }

    fn head(&self) -> Option<Position> {
        match &self.store {
            Store::Local(_) => self.local().map(|store| store.head()),
            Store::Remote(remote) => remote.last_seen(),
        }
    }

    /// Wakes the feeds waiting for a message, so that they read the log again.
    fn wake(&self) {
        self.appended.send_replace(());
    }
}

/// A topic name pattern: every topic, a prefix, or one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    All,
    Prefix(String),
    Exact(String),
}

impl Pattern {
    fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some("") => Pattern::All,
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None => Pattern::Exact(pattern.to_string()),
        }
    }

    fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
            Pattern::Exact(name) => topic == name,
        }
    }
}

/// The hub's histories: which topics keep one, and their logs.
#[derive(Default)]
pub(crate) struct Histories {
    /// False until the first [`Histories::configure`]: publishing on a hub without history
    /// costs one atomic load.
    enabled: AtomicBool,
    /// Patterns and their settings; the last one that matches a topic wins.
    rules: RwLock<Vec<(Pattern, HistoryConfig)>>,
    logs: RwLock<HashMap<String, Arc<Log>>>,
    /// Set by a backend that keeps the histories itself (Redis): every log is made there.
    remote: std::sync::OnceLock<Arc<dyn RemoteHistories>>,
}

impl Histories {
    pub(crate) fn configure(&self, pattern: &str, config: HistoryConfig) {
        self.rules
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push((Pattern::parse(pattern), config));
        self.enabled.store(true, Ordering::Release);
    }

    /// The log of `topic`, created on first use when a rule matches it.
    fn log(&self, topic: &str) -> Option<Arc<Log>> {
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        if let Some(log) = self
            .logs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
        {
            return Some(Arc::clone(log));
        }
        let config = self
            .rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .find(|(pattern, _)| pattern.matches(topic))
            .map(|(_, config)| *config)?;
        let mut logs = self.logs.write().unwrap_or_else(PoisonError::into_inner);
        let log = logs.entry(topic.to_string()).or_insert_with(|| {
            let store = match self.remote.get() {
                Some(remote) => Store::Remote(remote.history(topic, config)),
                None => Store::Local(Mutex::new(Box::new(MemoryStore::new(config)))),
            };
            Arc::new(Log::new(topic, store))
        });
        Some(Arc::clone(log))
    }

    /// Makes every history of this hub in `remote` from now on. Returns `false` if another
    /// backend already did.
    #[cfg(feature = "redis")]
    pub(crate) fn set_remote(&self, remote: Arc<dyn RemoteHistories>) -> bool {
        self.remote.set(remote).is_ok()
    }

    /// Appends a published message to its topic's history, if the topic keeps one here. A
    /// remote history is appended to by the backend: the position is not known yet (`None`).
    pub(crate) fn record(&self, topic: &str, message: &Message) -> Option<Position> {
        self.log(topic).and_then(|log| log.append(message))
    }

    /// Wakes the feeds of `topic`: its remote history has new messages.
    pub(crate) fn wake(&self, topic: &str) {
        if let Some(log) = self.existing(topic) {
            log.wake();
        }
    }

    /// Wakes every feed, after an outage of the remote store's notifications.
    #[cfg(feature = "redis")]
    pub(crate) fn wake_all(&self) {
        let logs = self.logs.read().unwrap_or_else(PoisonError::into_inner);
        for log in logs.values() {
            log.wake();
        }
    }

    /// The log of `topic` if it was made already.
    fn existing(&self, topic: &str) -> Option<Arc<Log>> {
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        self.logs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .cloned()
    }

    pub(crate) fn head(&self, topic: &str) -> Option<Position> {
        self.log(topic).and_then(|log| log.head())
    }

    pub(crate) fn feed(&self, topic: &str, since: Option<Position>) -> Result<Feed, NoHistory> {
        let log = self.log(topic).ok_or_else(|| NoHistory {
            topic: topic.to_string(),
        })?;
        Ok(Feed::new(log, since))
    }
}

/// A topic's messages from a position on: first those the client missed, from the history,
/// then each new one as it is published, each with its [`Position`]. Made by
/// [`Hub::subscribe_from`](super::Hub::subscribe_from).
///
/// The feed reads the topic's log through a cursor: it delivers every message exactly once, in
/// offset order, however publishes race with its catch-up. It holds no queue of its own, so a
/// slow reader holds up nobody; if it falls so far behind that the history no longer holds
/// its next message, [`recv`](Self::recv) says [`FeedEvent::Resync`] and goes on from the
/// head.
pub struct Feed {
    log: Arc<Log>,
    appended: watch::Receiver<()>,
    /// The last position delivered (or resumed from).
    position: Position,
    /// Messages read from the log and not yet delivered.
    batch: VecDeque<(Position, Message)>,
    /// A resync decided when the feed was made, given by the first `recv`.
    pending: Option<Resync>,
    /// The same, kept for [`Feed::resync`].
    resync: Option<Resync>,
    /// On a remote history, the first read is the one that decides a resync: until it is
    /// done, the `since` the feed was made with.
    start: Option<Option<Position>>,
}

impl Feed {
    fn new(log: Arc<Log>, since: Option<Position>) -> Self {
        let appended = log.appended.subscribe();
        let mut feed = Feed {
            position: since.unwrap_or(Position::new(0, 0)),
            appended,
            batch: VecDeque::new(),
            pending: None,
            resync: None,
            start: None,
            log,
        };
        let Some(mut store) = feed.log.local() else {
            feed.start = Some(since);
            return feed;
        };
        let head = store.head();
        match since {
            None => feed.position = head,
            Some(since) => {
                // Reads the first batch now, under the same lock that decides the resync: the
                // verdict and what is replayed agree.
                if let Err(reason) =
                    store.read_after(since, READ_BATCH, Instant::now(), &mut feed.batch)
                {
                    feed.position = head;
                    let resync = Resync { reason, head };
                    feed.pending = Some(resync);
                    feed.resync = Some(resync);
                }
            }
        }
        drop(store);
        feed
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.log.topic
    }

    /// The position of the last message delivered, or where the feed started.
    ///
    /// On a history kept in Redis, a feed made with `since` `None` learns where it starts
    /// from its first read: until the first [`recv`](Self::recv) this is offset 0 of epoch 0.
    pub fn position(&self) -> Position {
        self.position
    }

    /// `Some` when the position the feed was asked to resume from could not be resumed from:
    /// nothing is replayed, and the first [`recv`](Self::recv) gives this resync too.
    ///
    /// On a history kept in Redis, the verdict needs a read: it is known once the first
    /// `recv` has returned (`None` before), and that `recv` gives the resync.
    pub fn resync(&self) -> Option<&Resync> {
        self.resync.as_ref()
    }

    /// Waits until the feed knows where it starts: [`position`](Self::position) and
    /// [`resync`](Self::resync) are then final. Returns the resync, if any (the next
    /// [`recv`](Self::recv) gives it too).
    ///
    /// In process this returns at once. On a history kept in Redis it reads Redis, again
    /// every poll interval while Redis cannot be reached. Cancel safe.
    pub async fn ready(&mut self) -> Option<Resync> {
        while self.start.is_some() {
            let Store::Remote(remote) = &self.log.store else {
                break;
            };
            let remote = Arc::clone(remote);
            self.fill_remote(&*remote).await;
            if self.start.is_some() {
                tokio::time::sleep(remote.poll()).await;
            }
        }
        self.resync
    }

    /// The next event: the next message (waiting for it to be published when the feed has
    /// caught up), or a resync.
    ///
    /// On a history kept in Redis, a feed that cannot reach Redis waits and reads again: it
    /// resumes where it was when Redis is back.
    ///
    /// # Cancel safety
    /// Cancel safe: a `recv` dropped before it returns loses nothing, so it can sit in a
    /// `tokio::select!` next to the socket's own `recv`.
    pub async fn recv(&mut self) -> FeedEvent {
        loop {
            if let Some(resync) = self.pending.take() {
                return FeedEvent::Resync(resync);
            }
            if let Some((position, message)) = self.batch.pop_front() {
                self.position = position;
                return FeedEvent::Message { position, message };
            }
            // Marks the current append as seen before reading, so that an append after the
            // read wakes the wait below.
            self.appended.borrow_and_update();
            match &self.log.store {
                Store::Local(_) => {
                    self.fill();
                    if self.batch.is_empty() && self.pending.is_none() {
                        // The sender lives in the log, which this feed holds: this never
                        // fails; if it did, waiting again would spin, so wait forever instead.
                        if self.appended.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                }
                Store::Remote(remote) => {
                    let remote = Arc::clone(remote);
                    self.fill_remote(&*remote).await;
                    if self.batch.is_empty() && self.pending.is_none() {
                        // A wake-up can be lost (the pub/sub connection was down): after
                        // `poll` the feed reads again anyway.
                        let changed = self.appended.changed();
                        if let Ok(Err(_)) = tokio::time::timeout(remote.poll(), changed).await {
                            std::future::pending::<()>().await;
                        }
                    }
                }
            }
        }
    }

    /// Reads the next batch after the feed's position, or decides a resync.
    fn fill(&mut self) {
        let Some(mut store) = self.log.local() else {
            return;
        };
        if let Err(reason) =
            store.read_after(self.position, READ_BATCH, Instant::now(), &mut self.batch)
        {
            let head = store.head();
            self.position = head;
            self.pending = Some(Resync { reason, head });
        }
    }

    /// As [`fill`](Self::fill), from a remote history. Changes nothing until the read is
    /// back, which keeps `recv` cancel safe; a failed read (the store is away) reads nothing.
    async fn fill_remote(&mut self, remote: &dyn RemoteHistory) {
        let since = self.start.unwrap_or(Some(self.position));
        let read = match remote.read(since, REMOTE_READ_BATCH).await {
            Ok(read) => read,
            Err(reason) => {
                tracing::debug!(topic = %self.log.topic, %reason, "feed: history read failed");
                return;
            }
        };
        let first = self.start.take().is_some();
        let head = Position::new(read.epoch, read.head);
        let Some(since) = since else {
            self.position = head;
            return;
        };
        match read.verdict(since) {
            Ok(()) => {
                let epoch = read.epoch;
                let last = read.entries.last().map(|&(offset, _)| offset);
                self.batch
                    .extend(read.entries.into_iter().filter_map(|(offset, message)| {
                        Some((Position::new(epoch, offset), message?))
                    }));
                // Only entries to skip: step over them, or the next read finds them again.
                if let (true, Some(last)) = (self.batch.is_empty(), last) {
                    self.position = Position::new(epoch, last);
                }
            }
            Err(reason) => {
                self.position = head;
                let resync = Resync { reason, head };
                self.pending = Some(resync);
                if first {
                    self.resync = Some(resync);
                }
            }
        }
    }
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("topic", &self.log.topic)
            .field("position", &self.position)
            .field("buffered", &self.batch.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: usize) -> MemoryStore {
        MemoryStore::new(HistoryConfig::new().max_messages(max))
    }

    fn read(s: &mut MemoryStore, since: Position) -> Result<Vec<u64>, ResyncReason> {
        let mut out = VecDeque::new();
        s.read_after(since, 100, Instant::now(), &mut out)?;
        Ok(out.iter().map(|(p, _)| p.offset()).collect())
    }

    #[test]
    fn offsets_are_consecutive_from_one() {
        let mut s = store(10);
        let epoch = s.head().epoch();
        assert_eq!(s.head(), Position::new(epoch, 0));
        for i in 1..=3 {
            assert_eq!(
                s.append(&Message::text("x"), Instant::now()),
                Position::new(epoch, i)
            );
        }
        assert_eq!(read(&mut s, Position::new(epoch, 0)), Ok(vec![1, 2, 3]));
        assert_eq!(read(&mut s, Position::new(epoch, 2)), Ok(vec![3]));
        assert_eq!(read(&mut s, Position::new(epoch, 3)), Ok(vec![]));
    }

    #[test]
    fn position_older_than_the_history_is_expired() {
        let mut s = store(2);
        let epoch = s.head().epoch();
        for _ in 0..5 {
            s.append(&Message::text("x"), Instant::now());
        }
        // Offsets 4 and 5 are kept: resuming after 3 works, after 2 does not.
        assert_eq!(read(&mut s, Position::new(epoch, 3)), Ok(vec![4, 5]));
        assert_eq!(
            read(&mut s, Position::new(epoch, 2)),
            Err(ResyncReason::Expired)
        );
    }

    #[test]
    fn position_of_another_epoch_or_ahead_is_refused() {
        let mut s = store(2);
        let epoch = s.head().epoch();
        s.append(&Message::text("x"), Instant::now());
        assert_eq!(
            read(&mut s, Position::new(epoch.wrapping_add(1), 0)),
            Err(ResyncReason::OtherEpoch)
        );
        assert_eq!(
            read(&mut s, Position::new(epoch, 2)),
            Err(ResyncReason::Unknown)
        );
    }

    #[test]
    fn messages_older_than_max_age_are_forgotten() {
        let mut s = MemoryStore::new(HistoryConfig::new().max_age(Duration::from_secs(10)));
        let epoch = s.head().epoch();
        let start = Instant::now();
        s.append(&Message::text("old"), start);
        s.append(&Message::text("new"), start + Duration::from_secs(8));
        let mut out = VecDeque::new();
        let later = start + Duration::from_secs(12);
        assert_eq!(
            s.read_after(Position::new(epoch, 0), 10, later, &mut out),
            Err(ResyncReason::Expired)
        );
        assert_eq!(
            s.read_after(Position::new(epoch, 1), 10, later, &mut out),
            Ok(())
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.as_text(), Some("new"));
    }

    #[test]
    fn epochs_differ_between_logs() {
        assert_ne!(store(1).head().epoch(), store(1).head().epoch());
    }

    #[test]
    fn bad_positions_are_errors_not_panics() {
        for (input, err) in [
            ("", ParsePositionError::Empty),
            ("12", ParsePositionError::MissingSeparator),
            ("-3", ParsePositionError::BadEpoch),
            ("x-3", ParsePositionError::BadEpoch),
            ("+1-3", ParsePositionError::BadEpoch),
            ("1-", ParsePositionError::BadOffset),
            ("1--3", ParsePositionError::BadOffset),
            ("1-3-4", ParsePositionError::BadOffset),
            ("1-99999999999999999999999", ParsePositionError::BadOffset),
            ("1-٣", ParsePositionError::BadOffset),
        ] {
            assert_eq!(input.parse::<Position>(), Err(err), "{input:?}");
        }
        assert_eq!(
            format!("{}", Position::new(u64::MAX, 0)).parse(),
            Ok(Position::new(u64::MAX, 0))
        );
    }

    #[test]
    fn patterns_match_all_prefix_or_one_topic() {
        assert!(Pattern::parse("*").matches("anything"));
        assert!(Pattern::parse("room/*").matches("room/1"));
        assert!(!Pattern::parse("room/*").matches("rooms"));
        assert!(Pattern::parse("lobby").matches("lobby"));
        assert!(!Pattern::parse("lobby").matches("lobby2"));
    }
}
