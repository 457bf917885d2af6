//! The hub across processes on a real Redis: `examples/chat.rs` run as two processes on one
//! redis-server (started by `scripts/redis.sh`, which installs it when missing), with real
//! WebSocket clients on each.
#![cfg(feature = "redis")]

#[path = "common/external.rs"]
#[allow(dead_code)]
mod external;
#[path = "common/redis.rs"]
#[allow(dead_code)]
mod redis_env;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis_env::{eventually, ChatNode, Participant, Redis};
use serde_json::Value;

/// The Redis channel of the chat example's room, under the default prefix.
const ROOM_CHANNEL: &str = "tower-websocket:lobby";

/// Two chat processes on `redis`, both subscribed to the room once `participants` have joined.
struct TwoNodes {
    a: ChatNode,
    b: ChatNode,
}

fn two_nodes(redis: &Redis) -> TwoNodes {
    let binary = external::example_binary("chat");
    TwoNodes {
        a: ChatNode::start(&binary, &redis.url()),
        b: ChatNode::start(&binary, &redis.url()),
    }
}

async fn both_subscribed(redis: &Redis, limit: Duration) -> Duration {
    eventually("both nodes subscribed to the room", limit, || {
        redis.subscribers(ROOM_CHANNEL) == 2
    })
    .await
}

async fn state_until(
    node: &ChatNode,
    what: &str,
    limit: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let state = node.redis_state().await;
        if check(&state) {
            return state;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads chat lines until `count` arrived, then a little longer to catch duplicates.
async fn collect(p: &mut Participant, count: usize) -> Vec<String> {
    let mut lines = Vec::with_capacity(count);
    while lines.len() < count {
        lines.push(p.next_line().await);
    }
    lines.extend(p.lines_for(Duration::from_millis(300)).await);
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_every_subscriber_on_both_nodes_once_in_order() {
    let redis = Redis::start("deliver");
    let nodes = two_nodes(&redis);
    let mut alice = nodes.a.join("alice").await;
    let mut anna = nodes.a.join("anna").await;
    let mut bob = nodes.b.join("bob").await;
    both_subscribed(&redis, Duration::from_secs(10)).await;

    const N: usize = 50;
    for i in 0..N {
        alice.say(&format!("a{i}")).await;
        bob.say(&format!("b{i}")).await;
    }
    for (who, p) in [
        ("alice", &mut alice),
        ("anna", &mut anna),
        ("bob", &mut bob),
    ] {
        let lines = collect(p, 2 * N).await;
        assert_eq!(
            lines.len(),
            2 * N,
            "{who} got {} lines: {lines:?}",
            lines.len()
        );
        let mut per_sender: HashMap<&str, Vec<&str>> = HashMap::new();
        for line in &lines {
            let (name, text) = line.split_once(": ").expect("name: text");
            per_sender.entry(name).or_default().push(text);
        }
        let want = |prefix: &str| (0..N).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>();
        assert_eq!(
            per_sender["alice"],
            want("a"),
            "{who}: alice's lines, once each, in order"
        );
        assert_eq!(
            per_sender["bob"],
            want("b"),
            "{who}: bob's lines, once each, in order"
        );
    }
    // Each node drops its own messages when Redis hands them back: none counted as received.
    let a = nodes.a.redis_state().await;
    let b = nodes.b.redis_state().await;
    assert!(a["own_skipped"].as_u64() >= Some(N as u64), "{a}");
    assert_eq!(a["invalid"], 0, "{a}");
    assert_eq!(b["missed"], 0, "{b}");

    // The last local subscriber leaving unsubscribes the node from the channel.
    drop(bob);
    eventually("node B unsubscribed", Duration::from_secs(10), || {
        redis.subscribers(ROOM_CHANNEL) == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_survives_redis_going_away_and_coming_back() {
    let mut redis = Redis::start("outage");
    let nodes = two_nodes(&redis);
    let mut alice = nodes.a.join("alice").await;
    let mut anna = nodes.a.join("anna").await;
    let mut bob = nodes.b.join("bob").await;
    both_subscribed(&redis, Duration::from_secs(10)).await;
    alice.say("before").await;
    assert_eq!(bob.next_line().await, "alice: before");
    assert_eq!(anna.next_line().await, "alice: before");
    assert_eq!(alice.next_line().await, "alice: before");

    redis.kill();
    let killed = Instant::now();
    // The heartbeat notices within about 2 s.
    state_until(
        &nodes.b,
        "node B sees Redis gone",
        Duration::from_secs(5),
        |s| s["connected"] == false,
    )
    .await;
    println!("node B noticed the outage after {:?}", killed.elapsed());

    // Local chat goes on.
    alice.say("during").await;
    assert_eq!(anna.next_line().await, "alice: during");
    assert_eq!(alice.next_line().await, "alice: during");
    bob.say("alone").await;
    assert_eq!(bob.next_line().await, "bob: alone");

    redis.restart();
    let restarted = Instant::now();
    let took = both_subscribed(&redis, Duration::from_secs(3)).await;
    println!("both nodes subscribed again {took:?} after the restart");
    for node in [&nodes.a, &nodes.b] {
        state_until(node, "reconnected", Duration::from_secs(3), |s| {
            s["connected"] == true
        })
        .await;
    }
    println!(
        "both nodes connected {:?} after the restart",
        restarted.elapsed()
    );

    alice.say("after").await;
    // At most once: what was said during the outage never reaches the other node.
    assert_eq!(bob.next_line().await, "alice: after");
    assert_eq!(anna.next_line().await, "alice: after");
    bob.say("back").await;
    assert_eq!(alice.next_line().await, "alice: after");
    assert_eq!(alice.next_line().await, "bob: back");

    let a = nodes.a.redis_state().await;
    assert!(a["dropped_disconnected"].as_u64() >= Some(1), "{a}");
    assert!(a["disconnects"].as_u64() >= Some(1), "{a}");
    for node in [&nodes.a, &nodes.b] {
        // The events in the order the node logged them: the subscribing side went down, then
        // came back.
        let events = node.log_lines("redis event:");
        let down = events
            .iter()
            .position(|l| l.contains("Disconnected") && l.contains("Subscribe"))
            .unwrap_or_else(|| panic!("no Disconnected event: {events:?}"));
        assert!(
            events[down..]
                .iter()
                .any(|l| l.contains("Connected(Subscribe)")),
            "no Connected after Disconnected: {events:?}"
        );
    }
    // Node B sees that it missed alice's "during".
    let b = state_until(&nodes.b, "the gap counted", Duration::from_secs(3), |s| {
        s["missed"].as_u64() >= Some(1)
    })
    .await;
    assert!(!nodes.b.log_lines("redis event: Gap").is_empty(), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_an_envelope_is_counted_and_ignored() {
    let redis = Redis::start("garbage");
    let nodes = two_nodes(&redis);
    let mut alice = nodes.a.join("alice").await;
    let mut bob = nodes.b.join("bob").await;
    both_subscribed(&redis, Duration::from_secs(10)).await;

    let garbage = [
        "hello",
        "",
        "TW",
        // The magic and a length that fits, with an unknown version.
        "TW\u{9}\u{1}0123456789abcdef",
    ];
    for junk in garbage {
        let receivers = redis.cli(&["PUBLISH", ROOM_CHANNEL, junk]);
        assert_eq!(receivers.trim(), "2", "both nodes are subscribed");
    }
    for node in [&nodes.a, &nodes.b] {
        state_until(node, "garbage counted", Duration::from_secs(5), |s| {
            s["invalid"].as_u64() == Some(garbage.len() as u64)
        })
        .await;
    }
    // Nothing reached the clients, and both nodes still serve.
    alice.say("still here").await;
    assert_eq!(bob.next_line().await, "alice: still here");
    assert_eq!(alice.next_line().await, "alice: still here");
    let late = nodes.b.join("bea").await;
    drop(late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_is_noticed_by_the_heartbeat() {
    let redis = Redis::start("silent");
    let nodes = two_nodes(&redis);
    let _bob = nodes.b.join("bob").await;
    eventually("node B subscribed", Duration::from_secs(10), || {
        redis.subscribers(ROOM_CHANNEL) == 1
    })
    .await;

    // A stopped process keeps its sockets open but answers nothing: only the heartbeat can
    // tell.
    redis.signal("STOP");
    let stopped = Instant::now();
    state_until(
        &nodes.b,
        "node B sees Redis silent",
        Duration::from_secs(4),
        |s| s["connected"] == false,
    )
    .await;
    println!("a silent Redis noticed after {:?}", stopped.elapsed());
    redis.signal("CONT");
    eventually("node B subscribed again", Duration::from_secs(5), || {
        redis.subscribers(ROOM_CHANNEL) == 1
    })
    .await;
    state_until(
        &nodes.b,
        "node B reconnected",
        Duration::from_secs(5),
        |s| s["connected"] == true,
    )
    .await;
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_the_node_list_and_the_cluster_wide_count() {
    use tower_websocket::hub::redis::RedisBackend;
    use tower_websocket::hub::Hub;

    let redis = Redis::start("presence");
    let mut nodes = two_nodes(&redis);
    let _alice = nodes.a.join("alice").await;
    let _bob = nodes.b.join("bob").await;
    let _bea = nodes.b.join("bea").await;
    let id = |state: Value| state["node"].as_u64().expect("a node id");
    let (a, b) = (
        id(nodes.a.redis_state().await),
        id(nodes.b.redis_state().await),
    );
    // This test is the third node, with no subscribers of its own.
    let backend = RedisBackend::connect(redis.url()).await.expect("connect");
    let _hub = Hub::with_backend(backend.clone());
    let me = backend.node_id();

    let start = Instant::now();
    loop {
        let mut live = backend.nodes().await.expect("nodes");
        live.sort_unstable();
        let mut want = vec![a, b, me];
        want.sort_unstable();
        if live == want {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "nodes: {live:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let count = backend
        .subscriber_count("lobby", Duration::from_secs(2))
        .await
        .expect("count");
    assert_eq!(count.total, 3, "{count:?}");
    assert!(count.missing.is_empty(), "{count:?}");
    assert_eq!(count.answered.len(), 3, "{count:?}");

    nodes.b.kill(); // SIGKILL: no goodbye
    let killed = Instant::now();
    // Still listed until its key expires, it cannot answer: left out, and said so.
    let count = backend
        .subscriber_count("lobby", Duration::from_millis(500))
        .await
        .expect("count");
    if backend.nodes().await.expect("nodes").contains(&b) {
        assert_eq!(count.missing, vec![b], "{count:?}");
    }
    assert_eq!(count.total, 1, "{count:?}");

    // Gone from the list within the presence TTL (3 s).
    loop {
        let live = backend.nodes().await.expect("nodes");
        if !live.contains(&b) {
            assert!(live.contains(&a) && live.contains(&me), "{live:?}");
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(6),
            "node B still listed: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("the killed node left the list after {:?}", killed.elapsed());
    let count = backend
        .subscriber_count("lobby", Duration::from_secs(2))
        .await
        .expect("count");
    assert_eq!(count.total, 1, "{count:?}");
    assert!(count.missing.is_empty(), "{count:?}");
    assert_eq!(count.answered.len(), 2, "{count:?}");
}

/// A WebSocket server on `hub` whose every socket subscribes to `topics`.
async fn subscribing_server(
    hub: tower_websocket::hub::Hub,
    topics: Vec<String>,
) -> std::net::SocketAddr {
    use tower_websocket::{WebSocket, WebSocketLayer};
    let layer = WebSocketLayer::new(move |ws: WebSocket| {
        let (hub, topics) = (hub.clone(), topics.clone());
        async move {
            let (mut rx, tx) = ws.split();
            let _subscriptions: Vec<_> = topics.iter().map(|t| hub.subscribe(t, &tx)).collect();
            while rx.recv().await.is_some() {}
        }
    })
    // Every topic's message may arrive at once.
    .send_queue(1024, tower_websocket::QueuePolicy::Wait);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().layer(layer))
            .await
            .unwrap();
    });
    addr
}

/// Every text message that arrives within `quiet` of the last one, until `count` arrived.
async fn texts(
    addr: std::net::SocketAddr,
    count: usize,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Vec<String> {
    use futures_util::StreamExt;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    let _ = ready.send(());
    let mut got = Vec::new();
    let wait = Duration::from_secs(10);
    while got.len() < count {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                got.push(t.to_string())
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    // Anything more would be a duplicate.
    if let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) =
        tokio::time::timeout(Duration::from_millis(300), ws.next()).await
    {
        got.push(t.to_string());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pub_sub_on_a_three_node_cluster_delivers_100_topics_across_two_hubs() {
    use tower_websocket::hub::redis::{RedisBackend, RedisBackendError};
    use tower_websocket::hub::Hub;

    let cluster = redis_env::Cluster::start("cluster");
    let urls: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    let topics: Vec<String> = (0..100).map(|i| format!("topic-{i}")).collect();
    let backend_a = RedisBackend::cluster_builder(urls.clone())
        .connect()
        .await
        .expect("node A");
    let backend_b = RedisBackend::cluster_builder(urls)
        .connect()
        .await
        .expect("node B");
    let (a, b) = (
        Hub::with_backend(backend_a.clone()),
        Hub::with_backend(backend_b.clone()),
    );
    assert!(matches!(
        backend_a.nodes().await,
        Err(RedisBackendError::NoPresenceInCluster)
    ));

    let (addr_a, addr_b) = (
        subscribing_server(a.clone(), topics.clone()).await,
        subscribing_server(b.clone(), topics.clone()).await,
    );
    let (ready_a, ready_a_rx) = tokio::sync::oneshot::channel();
    let (ready_b, ready_b_rx) = tokio::sync::oneshot::channel();
    // Five messages per topic from each hub.
    const EACH: usize = 5;
    let reader_a = tokio::spawn(texts(addr_a, 200 * EACH, ready_a));
    let reader_b = tokio::spawn(texts(addr_b, 200 * EACH, ready_b));
    ready_a_rx.await.unwrap();
    ready_b_rx.await.unwrap();
    // Both hubs subscribed to every channel: two subscribers each, wherever its shard is.
    let start = Instant::now();
    let channel = |t: &str| format!("tower-websocket:{t}");
    loop {
        // Each shard answers for its own channels only: the sum over the three.
        let all = topics.iter().all(|t| {
            let subscribers: u64 = cluster
                .ports
                .iter()
                .map(|&p| {
                    redis_env::redis_cli(p, &["PUBSUB", "SHARDNUMSUB", &channel(t)])
                        .lines()
                        .nth(1)
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                })
                .sum();
            subscribers == 2
        });
        if all {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not every channel has two subscribers: {:?}",
            backend_a.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The channels are spread over the three shards.
    let per_shard: Vec<usize> = cluster
        .ports
        .iter()
        .map(|&p| {
            redis_env::redis_cli(p, &["PUBSUB", "SHARDCHANNELS", "tower-websocket:*"])
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
        })
        .collect();
    println!("channels per shard: {per_shard:?}");
    assert_eq!(per_shard.iter().sum::<usize>(), 100, "{per_shard:?}");
    assert!(per_shard.iter().all(|&n| n > 0), "{per_shard:?}");

    for k in 0..EACH {
        for t in &topics {
            a.publish(t, format!("from A on {t} #{k}"));
            b.publish(t, format!("from B on {t} #{k}"));
        }
    }
    for (node, reader) in [("A", reader_a), ("B", reader_b)] {
        let got = reader.await.unwrap();
        assert_eq!(
            got.len(),
            200 * EACH,
            "node {node}'s client got {} messages",
            got.len()
        );
        // In order per hub and topic: the client sees #0..#4 of each in turn.
        let mut next: HashMap<String, usize> = HashMap::new();
        for text in &got {
            let (stream, k) = text.rsplit_once(" #").expect("a numbered message");
            let k: usize = k.parse().expect("a number");
            let want = next.entry(stream.to_string()).or_insert(0);
            assert_eq!(k, *want, "node {node}: {stream} out of order");
            *want += 1;
        }
        assert_eq!(next.len(), 200, "node {node}: every topic from both hubs");
        assert!(next.values().all(|&n| n == EACH), "node {node}: {next:?}");
    }
    for backend in [&backend_a, &backend_b] {
        let stats = backend.stats();
        assert_eq!(stats.received, (100 * EACH) as u64, "{stats:?}");
        assert_eq!((stats.stale, stats.missed), (0, 0), "{stats:?}");
    }
}
