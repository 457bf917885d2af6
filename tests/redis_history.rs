//! Topic history in Redis: hubs on one redis-server (started by `scripts/redis.sh`, which
//! installs it when missing) share each topic's positions; feeds resume from them.
#![cfg(feature = "redis")]

mod common;

#[path = "common/redis.rs"]
#[allow(dead_code)]
mod redis_env;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_env::Redis;
use tokio::net::{TcpListener, TcpStream};
use tower_websocket::hub::redis::{Link, RedisBackend, RedisEvent};
use tower_websocket::hub::{Feed, FeedEvent, HistoryConfig, Hub, Position, ResyncReason};
use tower_websocket::Message;

use common::Rng;

const TOPIC: &str = "ticks";

/// A hub on its own Redis backend (a node), keeping the history of [`TOPIC`].
async fn node(url: &str, heartbeat: Duration, max: usize) -> (Hub, RedisBackend) {
    let backend = RedisBackend::builder(url)
        .heartbeat(heartbeat)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .expect("Redis answers");
    let hub = Hub::with_backend(backend.clone());
    hub.history(TOPIC, HistoryConfig::new().max_messages(max));
    (hub, backend)
}

/// The feed's next event, within a bound far above what it takes.
async fn next(feed: &mut Feed, limit: Duration) -> FeedEvent {
    tokio::time::timeout(limit, feed.recv())
        .await
        .unwrap_or_else(|_| panic!("the feed gave nothing within {limit:?} after {feed:?}"))
}

async fn message(feed: &mut Feed) -> (Position, String) {
    match next(feed, Duration::from_secs(10)).await {
        FeedEvent::Message { position, message } => {
            (position, message.as_text().unwrap_or("?").to_string())
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

/// A feed from `since` whose start is known.
async fn resume(hub: &Hub, since: Option<Position>) -> Feed {
    let mut feed = hub.subscribe_from(TOPIC, since).expect("history");
    tokio::time::timeout(Duration::from_secs(10), feed.ready())
        .await
        .expect("the first read within 10 s");
    feed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_five_times_while_two_nodes_publish_loses_and_repeats_nothing() {
    const PER_PUBLISHER: u64 = 5_000;
    const TOTAL: u64 = 2 * PER_PUBLISHER;
    const RESUMES: usize = 5;

    let mut rng = Rng::from_env_or_clock("HISTORY_SEED");
    let seed = rng.seed();
    let mut cuts: Vec<u64> = (0..RESUMES).map(|_| 1 + rng.below(TOTAL - 1)).collect();
    cuts.sort_unstable();

    let redis = Redis::start("history-resume");
    let limit = TOTAL as usize;
    // The reader's poll is long (5 s): a live message that arrives sooner was woken by pub/sub.
    let (reader, _r) = node(&redis.url(), Duration::from_secs(5), limit).await;
    let (a, backend_a) = node(&redis.url(), Duration::from_secs(1), limit).await;
    let (b, backend_b) = node(&redis.url(), Duration::from_secs(1), limit).await;

    // From offset 0 of the epoch the first read creates.
    let mut feed = resume(&reader, None).await;
    let epoch = feed.position().epoch();
    assert_eq!(feed.position(), Position::new(epoch, 0));

    let started = Instant::now();
    let publishers: Vec<_> = [("a", a.clone()), ("b", b.clone())]
        .into_iter()
        .map(|(name, hub)| {
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    hub.publish(TOPIC, Message::text(format!("{name}{i}")));
                    if i % 16 == 0 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
            })
        })
        .collect();

    let mut seen = HashSet::new();
    let mut expected = [0u64; 2];
    let mut last = Position::new(epoch, 0);
    let mut received = 0u64;
    let mut resumed = 0;
    while received < TOTAL {
        if cuts.first() == Some(&received) {
            cuts.remove(0);
            drop(feed);
            tokio::time::sleep(Duration::from_micros(rng.below(3000))).await;
            feed = resume(&reader, Some(last)).await;
            assert_eq!(feed.resync(), None, "resuming after {last} (seed {seed})");
            resumed += 1;
            continue;
        }
        let (position, payload) = message(&mut feed).await;
        assert_eq!(position.epoch(), epoch, "{payload}");
        assert_eq!(
            position.offset(),
            last.offset() + 1,
            "a gap or a duplicate at {payload} after {last} (seed {seed})"
        );
        assert!(
            seen.insert(payload.clone()),
            "{payload} twice (seed {seed})"
        );
        let (who, seq) = payload.split_at(1);
        let who = usize::from(who == "b");
        assert_eq!(
            seq.parse::<u64>().ok(),
            Some(expected[who]),
            "{payload} out of order"
        );
        expected[who] += 1;
        last = position;
        received += 1;
    }
    let elapsed = started.elapsed();
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    println!("{TOTAL} messages from two nodes, {RESUMES} resumes, in {elapsed:?}");
    assert_eq!(resumed, RESUMES);
    assert_eq!(expected, [PER_PUBLISHER, PER_PUBLISHER]);
    for backend in [&backend_a, &backend_b] {
        let stats = backend.stats();
        assert_eq!(
            stats.dropped_queue_full + stats.dropped_disconnected,
            0,
            "{stats:?}"
        );
    }
    // Both publishing nodes saw their appends numbered in the same epoch.
    for hub in [&a, &b] {
        let head = hub.head(TOPIC).expect("an append acknowledged");
        assert_eq!(head.epoch(), epoch);
        assert!(head.offset() <= TOTAL);
    }

    // A live message reaches the caught-up feed through pub/sub, long before its 5 s poll.
    let start = Instant::now();
    a.publish(TOPIC, "live");
    let (position, payload) = message(&mut feed).await;
    assert_eq!(
        (position, payload.as_str()),
        (Position::new(epoch, TOTAL + 1), "live")
    );
    let woken = start.elapsed();
    println!("live message woke the feed in {woken:?}");
    assert!(
        woken < Duration::from_secs(2),
        "{woken:?}: not woken by pub/sub"
    );
}

/// Publishes `count` messages on `hub` and waits until Redis has numbered them all (a feed
/// could not keep up with a history this short).
async fn publish_and_settle(hub: &Hub, count: usize) -> Position {
    let from = resume(hub, None).await.position();
    for i in 0..count {
        hub.publish(TOPIC, Message::text(format!("m{i}")));
    }
    let want = Position::new(from.epoch(), from.offset() + count as u64);
    let start = Instant::now();
    while hub.head(TOPIC) != Some(want) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}, not {want}",
            hub.head(TOPIC)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    want
}

async fn verdict(hub: &Hub, since: Position) -> Option<ResyncReason> {
    let mut feed = resume(hub, Some(since)).await;
    let resync = feed.resync().copied();
    if let Some(resync) = resync {
        // The first event says it too.
        assert_eq!(
            next(&mut feed, Duration::from_secs(10)).await,
            FeedEvent::Resync(resync)
        );
    }
    resync.map(|r| r.reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_too_old_foreign_or_ahead_resync_and_bad_entries_are_skipped() {
    let redis = Redis::start("history-resync");
    // MAXLEN ~ 10 trims whole stream nodes (100 entries by default): of 300, some hundred
    // are left, and offset 2 is long gone.
    let (hub, _backend) = node(&redis.url(), Duration::from_secs(1), 10).await;
    let head = publish_and_settle(&hub, 300).await;
    let epoch = head.epoch();
    let kept: u64 = redis
        .cli(&["XLEN", "tower-websocket!history:ticks:stream"])
        .trim()
        .parse()
        .expect("XLEN");
    assert!((10..300).contains(&kept), "{kept} entries kept");

    assert_eq!(
        verdict(&hub, Position::new(epoch, 1)).await,
        Some(ResyncReason::Expired)
    );
    assert_eq!(
        verdict(&hub, Position::new(epoch.wrapping_add(1), 299)).await,
        Some(ResyncReason::OtherEpoch)
    );
    assert_eq!(
        verdict(&hub, Position::new(epoch, 301)).await,
        Some(ResyncReason::Unknown)
    );
    assert_eq!(
        verdict(&hub, Position::new(epoch, u64::MAX)).await,
        Some(ResyncReason::Unknown)
    );
    // The newest messages kept can be resumed from.
    let mut feed = resume(&hub, Some(Position::new(epoch, 298))).await;
    assert_eq!(feed.resync(), None);
    assert_eq!(
        message(&mut feed).await,
        (Position::new(epoch, 299), "m298".into())
    );

    // Something else writes an entry that is not a message: feeds skip it.
    assert_eq!(
        redis
            .cli(&[
                "HINCRBY",
                "tower-websocket!history:ticks:meta",
                "offset",
                "1"
            ])
            .trim(),
        "301"
    );
    redis.cli(&[
        "XADD",
        "tower-websocket!history:ticks:stream",
        "301-0",
        "m",
        "garbage",
    ]);
    hub.publish(TOPIC, "after the garbage");
    assert_eq!(message(&mut feed).await.0, Position::new(epoch, 300));
    assert_eq!(
        message(&mut feed).await,
        (Position::new(epoch, 302), "after the garbage".into())
    );
    // A `since` from a query string that is not a position is an error, not a panic.
    let err = "ticks-12".parse::<Position>().expect_err("not a position");
    assert!(err.to_string().contains("EPOCH-OFFSET"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_older_than_max_age_are_forgotten() {
    let redis = Redis::start("history-age");
    let backend = RedisBackend::connect(redis.url())
        .await
        .expect("Redis answers");
    let hub = Hub::with_backend(backend);
    let age = Duration::from_millis(300);
    hub.history(TOPIC, HistoryConfig::new().max_age(age));
    let old = publish_and_settle(&hub, 3).await;
    tokio::time::sleep(age * 2).await;
    hub.publish(TOPIC, "new");
    let start = Instant::now();
    while hub.head(TOPIC).map(|h| h.offset()) != Some(4) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            hub.head(TOPIC)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The three old messages are gone from the stream: resuming before them is too late...
    assert_eq!(
        verdict(&hub, Position::new(old.epoch(), 0)).await,
        Some(ResyncReason::Expired)
    );
    let kept = redis.cli(&["XLEN", "tower-websocket!history:ticks:stream"]);
    assert_eq!(kept.trim(), "1");
    // ...and resuming after them gives the new one.
    let mut feed = resume(&hub, Some(old)).await;
    assert_eq!(feed.resync(), None);
    assert_eq!(
        message(&mut feed).await,
        (Position::new(old.epoch(), 4), "new".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_redis_changes_the_epoch_and_feeds_resync() {
    let mut redis = Redis::start("history-wiped");
    let (hub, backend) = node(&redis.url(), Duration::from_millis(200), 100).await;
    let before = publish_and_settle(&hub, 5).await;
    let mut live = resume(&hub, Some(before)).await;
    assert_eq!(live.resync(), None);

    // Restarted without persistence: every key is gone.
    redis.kill();
    redis.restart();
    let limit = Duration::from_secs(10);
    // The live feed, reading again, finds its epoch gone...
    let resync = match next(&mut live, limit).await {
        FeedEvent::Resync(resync) => resync,
        other => panic!("expected a resync, got {other:?}"),
    };
    assert_eq!(resync.reason, ResyncReason::OtherEpoch);
    assert_ne!(resync.head.epoch(), before.epoch());
    // ...and a client resuming from the old epoch is told to resync.
    assert_eq!(verdict(&hub, before).await, Some(ResyncReason::OtherEpoch));
    // The live feed goes on in the new epoch. A publish the writer tried on its dead
    // connection is lost (publishing is at most once): publish until one lands.
    let start = Instant::now();
    let (position, payload) = loop {
        assert!(
            start.elapsed() < limit,
            "no publish landed within {limit:?}"
        );
        hub.publish(TOPIC, "second");
        match tokio::time::timeout(Duration::from_secs(1), live.recv()).await {
            Ok(FeedEvent::Message { position, message }) => {
                break (position, message.as_text().unwrap_or("?").to_string())
            }
            Ok(other) => panic!("{other:?}"),
            Err(_) => continue,
        }
    };
    assert_eq!(
        position,
        Position::new(resync.head.epoch(), resync.head.offset() + 1)
    );
    assert_eq!(payload, "second");
    println!("after the wipe: {:?}", backend.stats());
}
/// A TCP relay to Redis that the test can cut: every connection through it is closed, and new
/// ones refused, until it is restored.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(Vec::new()));
        let (up2, links2) = (Arc::clone(&up), Arc::clone(&links));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                links2.lock().expect("links").push(task.abort_handle());
            }
        });
        Relay { port, up, links }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_an_outage_recovers_what_its_feeds_missed() {
    const MISSED: usize = 500;
    let redis = Redis::start("history-outage");
    let relay = Relay::start(redis.port).await;
    // The reader reaches Redis through the relay; its poll is long (5 s), so what it recovers
    // quickly comes from the wake-up on reconnection.
    let (reader, reader_backend) = node(&relay.url(), Duration::from_secs(5), 10_000).await;
    let (writer, _w) = node(&redis.url(), Duration::from_secs(1), 10_000).await;
    let from = publish_and_settle(&writer, 3).await;
    let mut feed = resume(&reader, Some(from)).await;
    assert_eq!(feed.resync(), None);

    let mut events = reader_backend.events();
    relay.cut();
    let limit = Duration::from_secs(10);
    loop {
        match tokio::time::timeout(limit, events.recv()).await {
            Ok(Ok(RedisEvent::Disconnected {
                link: Link::Subscribe,
                ..
            })) => break,
            Ok(_) => {}
            Err(_) => panic!("the reader did not notice the cut within {limit:?}"),
        }
    }
    for i in 0..MISSED {
        writer.publish(TOPIC, Message::text(format!("missed{i}")));
    }
    // The feed waits (its reads fail) until the relay is back; then the reconnection wakes it.
    let cut_for = Duration::from_millis(500);
    let restore = async {
        tokio::time::sleep(cut_for).await;
        relay.restore();
        std::future::pending::<()>().await
    };
    let start = Instant::now();
    let first = tokio::select! {
        first = message(&mut feed) => first,
        () = restore => unreachable!(),
    };
    assert!(
        start.elapsed() >= cut_for,
        "the feed read through a cut relay"
    );
    assert_eq!(
        first,
        (
            Position::new(from.epoch(), from.offset() + 1),
            "missed0".into()
        )
    );
    let mut last = first.0;
    for i in 1..MISSED {
        let (position, payload) = message(&mut feed).await;
        assert_eq!(position.offset(), last.offset() + 1, "{payload}");
        assert_eq!(payload, format!("missed{i}"));
        last = position;
    }
    let recovered = start.elapsed() - cut_for;
    println!("{MISSED} missed messages recovered in {recovered:?} after the relay came back");
    assert!(
        recovered < Duration::from_secs(4),
        "{recovered:?}: not woken on reconnection"
    );
}
