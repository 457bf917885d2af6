//! The subscriber task: keeps Redis subscribed to the channels of the topics with local
//! subscribers, pings the connection, reconnects, and hands what other nodes publish to the
//! local hub.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::Client;
use tokio::sync::watch;
use tokio::time::{timeout, MissedTickBehavior};

use super::envelope::{self, Envelope};
use super::{add, Backoff, Link, RedisEvent, Shared};

/// Per (topic, node), the last sequence number seen.
pub(super) type Seen = HashMap<(String, u64), u64>;

/// Why a connection is given up.
type Lost = String;

/// Runs until every handle of the backend is dropped (`alive` closes) or the hub is gone.
pub(super) async fn run(client: Client, shared: Arc<Shared>, mut alive: watch::Receiver<()>) {
    let mut backoff = Backoff::new(&shared.settings);
    // Per (topic, node), the last sequence number seen; kept across reconnections so that an
    // outage shows as a gap, dropped when the topic is unsubscribed.
    let mut seen: HashMap<(String, u64), u64> = HashMap::new();
    let mut reported_down = false;
    loop {
        let lost = tokio::select! {
            _ = alive.changed() => return,
            lost = session(&client, &shared, &mut seen, &mut backoff) => lost,
        };
        let Some(lost) = lost else { return };
        if shared.subscribe_connected.swap(false, Ordering::Relaxed) {
            add(&shared.stats.disconnects, 1);
            reported_down = false;
        }
        // One event per outage, not one per failed attempt.
        if !std::mem::replace(&mut reported_down, true) {
            tracing::warn!(reason = %lost, "redis hub backend: subscribe connection down");
            shared.emit(RedisEvent::Disconnected {
                link: Link::Subscribe,
                reason: lost,
            });
        }
        tokio::select! {
            _ = alive.changed() => return,
            () = tokio::time::sleep(backoff.next()) => {}
        }
    }
}

/// One connection, from connecting to losing it. `None` when the hub is gone.
async fn session(
    client: &Client,
    shared: &Shared,
    seen: &mut HashMap<(String, u64), u64>,
    backoff: &mut Backoff,
) -> Option<Lost> {
    let settings = &shared.settings;
    let pubsub = match timeout(settings.connect_timeout, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => return Some(e.to_string()),
        Err(_) => {
            return Some(format!(
                "no connection within {:?}",
                settings.connect_timeout
            ))
        }
    };
    let (mut sink, mut stream) = pubsub.split();
    let inbox = shared.inbox(shared.node);
    match timeout(settings.connect_timeout, sink.subscribe(&inbox)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Some(format!("SUBSCRIBE failed: {e}")),
        Err(_) => {
            return Some(format!(
                "no answer to SUBSCRIBE within {:?}",
                settings.connect_timeout
            ))
        }
    }
    let mut subscribed = HashSet::new();
    if let Err(lost) = reconcile(shared, &mut sink, &mut subscribed, seen).await {
        return Some(lost);
    }
    backoff.reset();
    shared.subscribe_connected.store(true, Ordering::Relaxed);
    shared.emit(RedisEvent::Connected(Link::Subscribe));
    // What was appended while the wake-ups could not arrive is in the streams: the feeds read it.
    shared.histories.reachable();
    if let Some(hub) = shared.hub() {
        hub.inner.histories.wake_all();
    }

    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) if msg.get_channel_name() == inbox => {
                    super::presence::receive(shared, msg.get_payload_bytes());
                }
                Some(msg) => {
                    if !receive(shared, seen, msg.get_channel_name(), msg.get_payload_bytes()) {
                        return None;
                    }
                }
                None => return Some("connection closed".to_string()),
            },
            () = shared.wanted_changed.notified() => {
                if let Err(lost) = reconcile(shared, &mut sink, &mut subscribed, seen).await {
                    return Some(lost);
                }
            }
            _ = heartbeat.tick() => {
                match timeout(settings.heartbeat, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Some(format!("ping failed: {e}")),
                    Err(_) => return Some(format!("no answer to a ping within {:?}", settings.heartbeat)),
                }
            }
        }
    }
}

/// Subscribes and unsubscribes so that Redis matches the topics with local subscribers.
async fn reconcile(
    shared: &Shared,
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<String>,
    seen: &mut HashMap<(String, u64), u64>,
) -> Result<(), Lost> {
    let wanted = shared
        .wanted
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let add: Vec<String> = wanted.difference(subscribed).cloned().collect();
    let remove: Vec<String> = subscribed.difference(&wanted).cloned().collect();
    let limit = shared.settings.connect_timeout;
    if !add.is_empty() {
        let channels: Vec<String> = add.iter().map(|t| shared.channel(t)).collect();
        match timeout(limit, sink.subscribe(&channels)).await {
            Ok(Ok(())) => subscribed.extend(add),
            Ok(Err(e)) => return Err(format!("SUBSCRIBE failed: {e}")),
            Err(_) => return Err(format!("no answer to SUBSCRIBE within {limit:?}")),
        }
    }
    if !remove.is_empty() {
        let channels: Vec<String> = remove.iter().map(|t| shared.channel(t)).collect();
        match timeout(limit, sink.unsubscribe(&channels)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("UNSUBSCRIBE failed: {e}")),
            Err(_) => return Err(format!("no answer to UNSUBSCRIBE within {limit:?}")),
        }
        for topic in &remove {
            subscribed.remove(topic);
        }
        seen.retain(|(topic, _), _| !remove.contains(topic));
    }
    Ok(())
}

/// Handles one message from Redis. `false` when the hub is gone.
pub(super) fn receive(shared: &Shared, seen: &mut Seen, channel: &str, payload: &[u8]) -> bool {
    let Some(topic) = shared.topic(channel) else {
        add(&shared.stats.invalid, 1);
        return true;
    };
    let Ok(Envelope { node, seq, message }) = envelope::decode(Bytes::copy_from_slice(payload))
    else {
        add(&shared.stats.invalid, 1);
        tracing::debug!(
            topic,
            "redis hub backend: ignored a message that is not an envelope"
        );
        return true;
    };
    if node == shared.node {
        add(&shared.stats.own_skipped, 1);
        return true;
    }
    let last = seen.entry((topic.to_string(), node)).or_insert(0);
    if seq <= *last {
        add(&shared.stats.stale, 1);
        return true;
    }
    // The first message seen from a node on a topic starts its count: what it sent before
    // this process subscribed was never meant for it.
    let missed = if *last == 0 { 0 } else { seq - *last - 1 };
    *last = seq;
    if missed > 0 {
        add(&shared.stats.missed, missed);
        shared.emit(RedisEvent::Gap {
            topic: topic.to_string(),
            node,
            missed,
        });
    }
    let Some(hub) = shared.hub() else {
        // Not attached yet (a backend not given to a hub) keeps running; a dropped hub ends it.
        return shared.hub.get().is_none();
    };
    add(&shared.stats.received, 1);
    let delivery = hub.deliver_local(topic, message);
    if delivery.dropped > 0 {
        add(&shared.stats.local_dropped, delivery.dropped as u64);
    }
    true
}
