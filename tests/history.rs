//! Topic history and resume, end to end: a handler that resumes a client from the position in
//! its query string, over real WebSocket framing (the in-process test client), while two tasks
//! publish.
#![cfg(feature = "testing")]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::Router;
use http::Request;
use tower_websocket::hub::{FeedEvent, HistoryConfig, Hub, Position, ResyncReason};
use tower_websocket::testing::TestClient;

use common::Rng;
use tower_websocket::{CloseCode, Message, WebSocket, WebSocketLayer};

const TOPIC: &str = "ticks";

/// The handler under test: resumes from `?since=EPOCH-OFFSET` (or starts live without it) and
/// forwards each message as `POSITION PAYLOAD`, a resync as `resync REASON HEAD`. A `since`
/// that does not parse closes the socket with 1008 and the parse error as the reason.
async fn resume(mut ws: WebSocket, hub: Hub) {
    let since = ws
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("since=")))
        .map(str::parse::<Position>);
    let since = match since.transpose() {
        Ok(since) => since,
        Err(e) => {
            let _ = ws
                .close_with(CloseCode::POLICY_VIOLATION, &e.to_string())
                .await;
            return;
        }
    };
    let Ok(mut feed) = hub.subscribe_from(TOPIC, since) else {
        let _ = ws.close_with(CloseCode::INTERNAL_ERROR, "no history").await;
        return;
    };
    let (mut rx, tx) = ws.split();
    loop {
        tokio::select! {
            event = feed.recv() => {
                let text = match event {
                    FeedEvent::Message { position, message } => {
                        format!("{position} {}", message.as_text().unwrap_or("?"))
                    }
                    FeedEvent::Resync(r) => format!("resync {:?} {}", r.reason, r.head),
                    _ => "unknown".to_string(),
                };
                if tx.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
            incoming = rx.recv() => if incoming.is_none() { return },
        }
    }
}

fn app(hub: &Hub) -> Router {
    let hub = hub.clone();
    Router::new().layer(WebSocketLayer::new(move |ws: WebSocket| {
        resume(ws, hub.clone())
    }))
}

async fn connect(app: &Router, since: Option<&str>) -> TestClient {
    let uri = match since {
        Some(since) => format!("/feed?since={since}"),
        None => "/feed".to_string(),
    };
    TestClient::connect(app.clone(), Request::get(uri).body(()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("handshake refused: {e:?}"))
}

/// `POSITION PAYLOAD` back into its parts.
fn parse(text: &str) -> (Position, String) {
    let (position, payload) = text
        .split_once(' ')
        .unwrap_or_else(|| panic!("not `POSITION PAYLOAD`: {text:?}"));
    let position = position.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
    (position, payload.to_string())
}

/// The feed's next event, within a bound far above what it takes (it is there already).
async fn next(feed: &mut tower_websocket::hub::Feed) -> FeedEvent {
    tokio::time::timeout(Duration::from_secs(10), feed.recv())
        .await
        .expect("the feed gave nothing within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_five_times_under_concurrent_publishing_loses_and_repeats_nothing() {
    const PER_PUBLISHER: u64 = 5_000;
    const TOTAL: u64 = 2 * PER_PUBLISHER;
    const RESUMES: usize = 5;

    let mut rng = Rng::from_env_or_clock("HISTORY_SEED");
    let seed = rng.seed();
    // The moments (counted in messages received) at which the client drops its connection.
    let mut cuts: Vec<u64> = (0..RESUMES).map(|_| 1 + rng.below(TOTAL - 1)).collect();
    cuts.sort_unstable();

    let hub = Hub::new();
    hub.history(TOPIC, HistoryConfig::new().max_messages(TOTAL as usize));
    let app = app(&hub);

    let started = Instant::now();
    // From offset 0, not from "now": the handler may subscribe after the publishers start.
    let epoch = hub.head(TOPIC).expect("the topic keeps history").epoch();
    let mut client = connect(&app, Some(&Position::new(epoch, 0).to_string())).await;

    let publishers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    let d = hub.publish(TOPIC, Message::text(format!("{name}{i}")));
                    assert!(d.position.is_some(), "no position for {name}{i}");
                    // Spreads the publishing over the run, so that the resumes race with it.
                    if i % 16 == 0 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
            })
        })
        .collect();

    let mut seen = HashSet::new();
    let mut next = [0u64; 2]; // the next sequence number expected of `a` and of `b`
    let mut last = Position::new(epoch, 0);
    let mut received = 0u64;
    let mut resumed = 0;
    while received < TOTAL {
        if cuts.first() == Some(&received) {
            cuts.remove(0);
            // Gone without a closing handshake, like a train entering a tunnel.
            drop(client);
            tokio::time::sleep(Duration::from_micros(rng.below(3000))).await;
            client = connect(&app, Some(&last.to_string())).await;
            let head = hub.head(TOPIC).map_or(0, |h| h.offset());
            println!(
                "resume {resumed} after {last}: {} behind the head, publishing {}",
                head - last.offset(),
                if head < TOTAL { "still" } else { "done" }
            );
            resumed += 1;
            continue;
        }
        let text = client.recv_text().await;
        let (position, payload) = parse(&text);
        assert_eq!(position.epoch(), epoch, "{text}");
        assert_eq!(
            position.offset(),
            last.offset() + 1,
            "a gap or a duplicate at {text:?} after {last} (seed {seed})"
        );
        assert!(
            seen.insert(payload.clone()),
            "{payload} twice (seed {seed})"
        );
        let (who, seq) = payload.split_at(1);
        let who = usize::from(who == "b");
        assert_eq!(
            seq.parse::<u64>().unwrap(),
            next[who],
            "{payload} out of order"
        );
        next[who] += 1;
        last = position;
        received += 1;
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    assert_eq!(resumed, RESUMES);
    assert_eq!(seen.len() as u64, TOTAL);
    assert_eq!(next, [PER_PUBLISHER, PER_PUBLISHER]);
    assert_eq!(hub.head(TOPIC), Some(Position::new(epoch, TOTAL)));
    client.expect_no_message(Duration::from_millis(50)).await;
    println!(
        "{TOTAL} messages, {RESUMES} resumes, in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn since_older_than_the_history_is_a_resync_and_nothing_is_replayed() {
    let hub = Hub::new();
    hub.history(TOPIC, HistoryConfig::new().max_messages(3));
    let mut positions = Vec::new();
    for i in 0..10 {
        positions.push(hub.publish(TOPIC, format!("m{i}")).position.unwrap());
    }
    let app = app(&hub);

    // Offsets 8, 9, 10 are kept: after 7 resumes, after 6 does not.
    let mut client = connect(&app, Some(&positions[6].to_string())).await;
    assert_eq!(client.recv_text().await, format!("{} m7", positions[7]));
    let mut client_too_old = connect(&app, Some(&positions[5].to_string())).await;
    assert_eq!(
        client_too_old.recv_text().await,
        format!("resync Expired {}", positions[9])
    );
    // After a resync the feed goes on live: the next publish, and nothing replayed before it.
    let next = hub.publish(TOPIC, "m10").position.unwrap();
    assert_eq!(client_too_old.recv_text().await, format!("{next} m10"));

    let feed = hub.subscribe_from(TOPIC, Some(positions[5])).unwrap();
    assert_eq!(feed.resync().map(|r| r.reason), Some(ResyncReason::Expired));
}

#[tokio::test]
async fn since_from_another_epoch_is_a_resync() {
    let before_restart = Hub::new();
    before_restart.history(TOPIC, HistoryConfig::new());
    let old = before_restart.publish(TOPIC, "x").position.unwrap();

    // The process restarted: a new hub, a new history, the same offsets again.
    let hub = Hub::new();
    hub.history(TOPIC, HistoryConfig::new());
    let new = hub.publish(TOPIC, "x").position.unwrap();
    assert_eq!(new.offset(), old.offset());
    assert_ne!(new.epoch(), old.epoch());

    let mut client = connect(&app(&hub), Some(&Position::new(old.epoch(), 0).to_string())).await;
    assert_eq!(client.recv_text().await, format!("resync OtherEpoch {new}"));
}

#[tokio::test]
async fn a_feed_that_falls_behind_the_history_is_told_to_resync() {
    let hub = Hub::new();
    hub.history(TOPIC, HistoryConfig::new().max_messages(4));
    let mut feed = hub.subscribe_from(TOPIC, None).unwrap();
    for i in 0..10 {
        hub.publish(TOPIC, format!("m{i}"));
    }
    let head = hub.head(TOPIC).unwrap();
    match next(&mut feed).await {
        FeedEvent::Resync(r) => {
            assert_eq!(r.reason, ResyncReason::Expired);
            assert_eq!(r.head, head);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    hub.publish(TOPIC, "after");
    match next(&mut feed).await {
        FeedEvent::Message { position, message } => {
            assert_eq!(position.offset(), head.offset() + 1);
            assert_eq!(message.as_text(), Some("after"));
        }
        other => panic!("expected the next message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_since_that_does_not_parse_is_a_clear_error_for_the_handler() {
    let hub = Hub::new();
    hub.history(TOPIC, HistoryConfig::new());
    let app = app(&hub);
    for bad in [
        "",
        "12",
        "abc-1",
        "1-",
        "1-99999999999999999999999",
        "%FF-1",
    ] {
        let mut client = connect(&app, Some(bad)).await;
        let frame = client.expect_close(CloseCode::POLICY_VIOLATION).await;
        assert!(
            frame.reason.contains("EPOCH-OFFSET"),
            "{bad:?}: {:?}",
            frame.reason
        );
    }
}

#[tokio::test]
async fn a_topic_without_history_cannot_be_resumed() {
    let hub = Hub::new();
    hub.history("rooms/*", HistoryConfig::new());
    assert_eq!(hub.publish("lobby", "x").position, None);
    assert_eq!(hub.head("lobby"), None);
    let err = hub.subscribe_from("lobby", None).unwrap_err();
    assert!(err.to_string().contains("Hub::history"), "{err}");
    assert!(hub.publish("rooms/1", "x").position.is_some());
}

#[tokio::test]
async fn a_feed_waiting_for_the_next_message_is_cancel_safe() {
    let hub = Hub::new();
    hub.history(TOPIC, HistoryConfig::new());
    let mut feed = hub.subscribe_from(TOPIC, None).unwrap();
    // A recv dropped while it waits loses nothing.
    assert!(tokio::time::timeout(Duration::from_millis(20), feed.recv())
        .await
        .is_err());
    let p = hub.publish(TOPIC, "one").position.unwrap();
    assert_eq!(
        next(&mut feed).await,
        FeedEvent::Message {
            position: p,
            message: Message::text("one")
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_resumed_while_two_tasks_publish_flat_out_see_each_message_once() {
    const PER_PUBLISHER: u64 = 5_000;
    const TOTAL: u64 = 2 * PER_PUBLISHER;
    let hub = Hub::new();
    hub.history(TOPIC, HistoryConfig::new().max_messages(TOTAL as usize));
    let epoch = hub.head(TOPIC).unwrap().epoch();
    let publishers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    hub.publish(TOPIC, format!("{name}{i}"));
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    // A new feed every 997 messages: each resumes from where the one before stopped.
    let mut last = Position::new(epoch, 0);
    let mut feed = hub.subscribe_from(TOPIC, Some(last)).unwrap();
    let mut expected = [0u64; 2];
    while last.offset() < TOTAL {
        if last.offset() % 997 == 0 {
            feed = hub.subscribe_from(TOPIC, Some(last)).unwrap();
            assert!(feed.resync().is_none());
        }
        let FeedEvent::Message { position, message } = next(&mut feed).await else {
            panic!("a resync with the whole history kept");
        };
        assert_eq!(position, Position::new(epoch, last.offset() + 1));
        let (who, seq) = message.as_text().unwrap().split_at(1);
        let who = usize::from(who == "b");
        assert_eq!(seq.parse::<u64>().unwrap(), expected[who]);
        expected[who] += 1;
        last = position;
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    assert_eq!(expected, [PER_PUBLISHER, PER_PUBLISHER]);
}
