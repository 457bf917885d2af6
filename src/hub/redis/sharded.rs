//! Redis Cluster with sharded pub/sub: the same two jobs as publisher.rs and subscriber.rs,
//! on the `redis` crate's cluster client, with `SPUBLISH` and `SSUBSCRIBE` so that each
//! topic's traffic stays on the shard that owns its channel's slot. The cluster client follows
//! slot moves, reconnects, and subscribes its shard channels again by itself.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::future::join_all;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, MissedTickBehavior};

use super::subscriber::{receive, Seen};
use super::{add, envelope, Backoff, Link, Out, RedisEvent, Shared};

/// The cluster client, with the channel its pushes (shard messages) arrive on.
pub(super) fn client(
    urls: &[String],
    shared_settings: &super::RedisBackendBuilder,
) -> redis::RedisResult<(ClusterClient, mpsc::UnboundedReceiver<PushInfo>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(tx)
        .connection_timeout(shared_settings.connect_timeout)
        .response_timeout(shared_settings.connect_timeout)
        .build()?;
    Ok((client, rx))
}

async fn connect(client: &ClusterClient, shared: &Shared) -> Result<ClusterConnection, String> {
    let limit = shared.settings.connect_timeout;
    match timeout(limit, client.get_async_connection()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {limit:?}")),
    }
}

/// The writer: `SPUBLISH` for every queued message, a batch at a time, sent together.
pub(super) async fn publish(
    client: ClusterClient,
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<Out>,
) {
    let mut backoff = Backoff::new(&shared.settings);
    let mut seqs: HashMap<String, u64> = HashMap::new();
    let mut batch = Vec::with_capacity(shared.settings.max_batch);
    let mut reported_down = false;
    loop {
        let mut conn = match connect(&client, &shared).await {
            Ok(conn) => conn,
            Err(reason) => {
                down(&shared, &mut reported_down, reason);
                let wait = tokio::time::sleep(backoff.next());
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        () = &mut wait => break,
                        out = queue.recv() => match out {
                            Some(out) => {
                                if let Out::Topic(topic, _) = out {
                                    super::publisher::next_seq(&mut seqs, &topic);
                                }
                                add(&shared.stats.dropped_disconnected, 1);
                            }
                            None => return,
                        },
                    }
                }
                continue;
            }
        };
        backoff.reset();
        reported_down = false;
        shared.publish_connected.store(true, Ordering::Relaxed);
        shared.emit(RedisEvent::Connected(Link::Publish));
        loop {
            if queue.recv_many(&mut batch, shared.settings.max_batch).await == 0 {
                return;
            }
            // One pipeline per channel: its commands share a slot, so the cluster client can
            // send it to one shard in one round trip, and a channel's messages stay in order
            // (separate commands sent together are not kept in order). The channels'
            // pipelines go out together.
            let mut pipes: Vec<(redis::Pipeline, u64)> = Vec::new();
            let mut by_channel: HashMap<String, usize> = HashMap::new();
            for out in batch.drain(..) {
                let (channel, payload) = match out {
                    Out::Topic(topic, message) => {
                        let seq = super::publisher::next_seq(&mut seqs, &topic);
                        (
                            shared.channel(&topic),
                            envelope::encode(shared.node, seq, &message),
                        )
                    }
                    Out::Raw(channel, payload) => (channel, payload),
                };
                let at = *by_channel.entry(channel.clone()).or_insert_with(|| {
                    pipes.push((redis::pipe(), 0));
                    pipes.len() - 1
                });
                let (pipe, count) = &mut pipes[at];
                pipe.cmd("SPUBLISH")
                    .arg(channel)
                    .arg(payload.as_ref())
                    .ignore();
                *count += 1;
            }
            let results = join_all(pipes.iter().map(|(pipe, count)| {
                let mut conn = conn.clone();
                async move { (pipe.query_async::<()>(&mut conn).await, *count) }
            }))
            .await;
            let mut failure = None;
            for (result, count) in results {
                match result {
                    Ok(()) => add(&shared.stats.published, count),
                    Err(e) => {
                        add(&shared.stats.dropped_disconnected, count);
                        failure = Some(e.to_string());
                    }
                }
            }
            if let Some(reason) = failure {
                down(&shared, &mut reported_down, reason);
                // The cluster client repairs its connections; a fresh one is cheap to ask for.
                conn = match connect(&client, &shared).await {
                    Ok(conn) => conn,
                    Err(_) => break,
                };
                reported_down = false;
                shared.publish_connected.store(true, Ordering::Relaxed);
                shared.emit(RedisEvent::Connected(Link::Publish));
            }
        }
    }
}

fn down(shared: &Shared, reported: &mut bool, reason: String) {
    if shared.publish_connected.swap(false, Ordering::Relaxed) {
        add(&shared.stats.disconnects, 1);
    }
    if !std::mem::replace(reported, true) {
        tracing::warn!(%reason, "redis hub backend: cluster publish failed");
        shared.emit(RedisEvent::Disconnected {
            link: Link::Publish,
            reason,
        });
    }
}

/// The subscriber: `SSUBSCRIBE` one channel at a time (channels of different slots cannot
/// share a command), shard messages from the push channel, and a ping as heartbeat.
pub(super) async fn subscribe(
    client: ClusterClient,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    shared: Arc<Shared>,
    mut alive: watch::Receiver<()>,
) {
    let mut backoff = Backoff::new(&shared.settings);
    let mut seen = Seen::new();
    let inbox = shared.inbox(shared.node);
    loop {
        let lost = tokio::select! {
            _ = alive.changed() => return,
            lost = session(&client, &mut pushes, &shared, &mut seen, &inbox) => lost,
        };
        let Some(lost) = lost else { return };
        if shared.subscribe_connected.swap(false, Ordering::Relaxed) {
            add(&shared.stats.disconnects, 1);
            tracing::warn!(reason = %lost, "redis hub backend: cluster subscription down");
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

async fn session(
    client: &ClusterClient,
    pushes: &mut mpsc::UnboundedReceiver<PushInfo>,
    shared: &Shared,
    seen: &mut Seen,
    inbox: &str,
) -> Option<String> {
    let limit = shared.settings.connect_timeout;
    let mut conn = match connect(client, shared).await {
        Ok(conn) => conn,
        Err(reason) => return Some(reason),
    };
    let mut subscribed = HashSet::new();
    if let Err(e) = ssubscribe(&mut conn, inbox, limit).await {
        return Some(e);
    }
    if let Err(e) = reconcile(shared, &mut conn, &mut subscribed, seen).await {
        return Some(e);
    }
    shared.subscribe_connected.store(true, Ordering::Relaxed);
    shared.emit(RedisEvent::Connected(Link::Subscribe));
    let mut heartbeat = tokio::time::interval(shared.settings.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let push = push?;
                if push.kind == PushKind::SMessage {
                    if let [Value::BulkString(channel), Value::BulkString(payload), ..] = push.data.as_slice() {
                        let channel = String::from_utf8_lossy(channel);
                        if channel == inbox {
                            super::presence::receive(shared, payload);
                        } else if !receive(shared, seen, &channel, payload) {
                            return None;
                        }
                    } else {
                        add(&shared.stats.invalid, 1);
                    }
                }
            }
            () = shared.wanted_changed.notified() => {
                if let Err(e) = reconcile(shared, &mut conn, &mut subscribed, seen).await {
                    return Some(e);
                }
            }
            _ = heartbeat.tick() => {
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<Value>(&mut conn);
                match timeout(shared.settings.heartbeat, ping).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Some(format!("ping failed: {e}")),
                    Err(_) => return Some(format!("no answer to a ping within {:?}", shared.settings.heartbeat)),
                }
            }
        }
    }
}

async fn ssubscribe(
    conn: &mut ClusterConnection,
    channel: &str,
    limit: std::time::Duration,
) -> Result<(), String> {
    match timeout(limit, conn.ssubscribe(channel)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("SSUBSCRIBE failed: {e}")),
        Err(_) => Err(format!("no answer to SSUBSCRIBE within {limit:?}")),
    }
}

async fn reconcile(
    shared: &Shared,
    conn: &mut ClusterConnection,
    subscribed: &mut HashSet<String>,
    seen: &mut Seen,
) -> Result<(), String> {
    let wanted = shared
        .wanted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let limit = shared.settings.connect_timeout;
    for topic in wanted.difference(&subscribed.clone()) {
        ssubscribe(conn, &shared.channel(topic), limit).await?;
        subscribed.insert(topic.clone());
    }
    let gone: Vec<String> = subscribed.difference(&wanted).cloned().collect();
    for topic in gone {
        match timeout(limit, conn.sunsubscribe(shared.channel(&topic))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("SUNSUBSCRIBE failed: {e}")),
            Err(_) => return Err(format!("no answer to SUNSUBSCRIBE within {limit:?}")),
        }
        subscribed.remove(&topic);
        seen.retain(|(t, _), _| *t != topic);
    }
    Ok(())
}
