//! The writer task: takes published messages off the queue and sends whatever has gathered as
//! one pipeline of `PUBLISH` commands per round trip; a message to a topic whose history is in
//! Redis goes through the append script instead, which publishes it too.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::mpsc;

use super::history::{self, TopicHistory};
use super::{add, envelope, Backoff, Link, Out, RedisEvent, Shared};

type Queue = mpsc::Receiver<Out>;

/// Runs until every handle of the backend is dropped (the queue closes).
pub(super) async fn run(client: Client, shared: Arc<Shared>, mut queue: Queue) {
    let settings = &shared.settings;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.connect_timeout));
    let mut backoff = Backoff::new(settings);
    // Per topic, the sequence number of the last message this node sent (or dropped).
    let mut seqs: HashMap<String, u64> = HashMap::new();
    let mut batch = Vec::with_capacity(settings.max_batch);
    let mut reported_down = false;
    loop {
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await;
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                down(&shared, &mut reported_down, e.to_string());
                // While Redis is away publishes are dropped (and counted) at once rather than
                // queued: the queue would only fill with messages that are stale later.
                if !drain_for(&shared, &mut queue, &mut seqs, backoff.next()).await {
                    return;
                }
                continue;
            }
        };
        // Loaded on every connection: a restarted Redis has forgotten it.
        let append = match history::load(&mut conn, history::APPEND).await {
            Ok(sha) => sha,
            Err(e) => {
                down(
                    &shared,
                    &mut reported_down,
                    format!("SCRIPT LOAD failed: {e}"),
                );
                if !drain_for(&shared, &mut queue, &mut seqs, backoff.next()).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        reported_down = false;
        shared.publish_connected.store(true, Ordering::Relaxed);
        shared.emit(RedisEvent::Connected(Link::Publish));
        loop {
            if queue.recv_many(&mut batch, settings.max_batch).await == 0 {
                return;
            }
            let sent = batch.len() as u64;
            if let Err(e) = send(&shared, &mut conn, &append, &mut seqs, &mut batch).await {
                add(&shared.stats.dropped_disconnected, sent);
                down(&shared, &mut reported_down, e.to_string());
                break;
            }
            add(&shared.stats.published, sent);
        }
    }
}

/// Sends one batch as a pipeline; the batch is emptied whatever the outcome. The positions
/// the appends got wake this node's feeds.
async fn send(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    append: &str,
    seqs: &mut HashMap<String, u64>,
    batch: &mut Vec<Out>,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    // Per topic with history, its envelopes in order: appended by one script call each.
    let mut appended: Vec<(String, Arc<TopicHistory>, Vec<bytes::Bytes>)> = Vec::new();
    let mut groups: HashMap<String, usize> = HashMap::new();
    for out in batch.drain(..) {
        match out {
            Out::Topic(topic, message) => {
                let seq = next_seq(seqs, &topic);
                let envelope = envelope::encode(shared.node, seq, &message);
                if let Some(&group) = groups.get(&topic) {
                    appended[group].2.push(envelope);
                } else if let Some(log) = shared.histories.get(&topic) {
                    groups.insert(topic.clone(), appended.len());
                    appended.push((topic, log, vec![envelope]));
                } else {
                    pipe.publish(shared.channel(&topic), envelope.as_ref())
                        .ignore();
                }
            }
            Out::Raw(channel, payload) => {
                pipe.publish(channel, payload.as_ref()).ignore();
            }
        }
    }
    for (topic, log, envelopes) in &appended {
        let call = pipe
            .cmd("EVALSHA")
            .arg(append)
            .arg(2)
            .arg(&log.meta)
            .arg(&log.stream)
            .arg(history::candidate_epoch().to_string())
            .arg(log.max_len)
            .arg(shared.channel(topic))
            .arg(log.max_age_ms);
        for envelope in envelopes {
            call.arg(envelope.as_ref());
        }
    }
    if appended.is_empty() {
        return pipe.query_async::<()>(conn).await;
    }
    let positions: Vec<redis::Value> = pipe.query_async(conn).await?;
    let hub = shared.hub();
    for ((topic, log, _), reply) in appended.iter().zip(&positions) {
        if let Some(position) = history::parse_append(reply) {
            log.saw(position);
        }
        if let Some(hub) = &hub {
            hub.inner.histories.wake(topic);
        }
    }
    Ok(())
}

pub(super) fn next_seq(seqs: &mut HashMap<String, u64>, topic: &str) -> u64 {
    let seq = match seqs.get_mut(topic) {
        Some(seq) => seq,
        None => seqs.entry(topic.to_string()).or_insert(0),
    };
    *seq += 1;
    *seq
}

/// Records a failure; `reported` keeps it to one event per outage, not one per attempt.
fn down(shared: &Shared, reported: &mut bool, reason: String) {
    if shared.publish_connected.swap(false, Ordering::Relaxed) {
        add(&shared.stats.disconnects, 1);
    }
    if !std::mem::replace(reported, true) {
        tracing::warn!(%reason, "redis hub backend: publish connection down");
        shared.emit(RedisEvent::Disconnected {
            link: Link::Publish,
            reason,
        });
    }
}

/// Drops (and counts) what is published during `wait`; the dropped messages still take their
/// sequence numbers, so that receivers see the gap. Returns `false` when the queue closed.
async fn drain_for(
    shared: &Shared,
    queue: &mut Queue,
    seqs: &mut HashMap<String, u64>,
    wait: std::time::Duration,
) -> bool {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return true,
            item = queue.recv() => match item {
                Some(out) => {
                    if let Out::Topic(topic, _) = out {
                        next_seq(seqs, &topic);
                    }
                    add(&shared.stats.dropped_disconnected, 1);
                }
                None => return false,
            },
        }
    }
}
