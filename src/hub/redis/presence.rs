//! Presence: every node keeps a key `{prefix}!node:{id}` alive with a TTL, so the live nodes
//! are the keys that exist; and questions to other nodes through their inbox channel
//! `{prefix}!inbox:{id}` (a `!` where topic channels have `:`, so no topic can clash).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::watch;

use super::{add, Backoff, Shared};

/// Runs until every handle of the backend is dropped; then deletes this node's key.
pub(super) async fn run(client: Client, shared: Arc<Shared>, mut alive: watch::Receiver<()>) {
    let settings = &shared.settings;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.connect_timeout));
    let mut backoff = Backoff::new(settings);
    let key = shared.node_key(shared.node);
    let ttl_ms = u64::try_from(settings.presence_ttl.as_millis()).unwrap_or(u64::MAX);
    loop {
        let mut conn = tokio::select! {
            _ = alive.changed() => return,
            conn = client.get_multiplexed_async_connection_with_config(&config) => match conn {
                Ok(conn) => conn,
                Err(_) => {
                    tokio::select! {
                        _ = alive.changed() => return,
                        () = tokio::time::sleep(backoff.next()) => continue,
                    }
                }
            },
        };
        loop {
            let announced = redis::cmd("SET")
                .arg(&key)
                .arg(shared.node)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut conn)
                .await;
            if announced.is_err() {
                break;
            }
            backoff.reset();
            tokio::select! {
                _ = alive.changed() => {
                    // Leave at once rather than when the key expires.
                    let _ = redis::cmd("DEL").arg(&key).query_async::<()>(&mut conn).await;
                    return;
                }
                () = tokio::time::sleep(settings.heartbeat) => {}
            }
        }
        // A server that refuses the SET (a read-only replica, say) is not asked again at once.
        tokio::select! {
            _ = alive.changed() => return,
            () = tokio::time::sleep(backoff.next()) => {}
        }
    }
}

/// The ids of the nodes whose presence key exists.
pub(super) async fn nodes(
    conn: &mut MultiplexedConnection,
    shared: &Shared,
) -> redis::RedisResult<Vec<u64>> {
    let pattern = format!("{}*", glob_escape(&shared.node_key_prefix()));
    let mut cursor: u64 = 0;
    let mut nodes = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        let prefix = shared.node_key_prefix();
        nodes.extend(
            keys.iter()
                .filter_map(|k| k.strip_prefix(prefix.as_str()))
                .filter_map(|id| id.parse::<u64>().ok()),
        );
        if next == 0 {
            break;
        }
        cursor = next;
    }
    nodes.sort_unstable();
    nodes.dedup();
    Ok(nodes)
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

const REQUEST: &[u8; 2] = b"TQ";
const REPLY: &[u8; 2] = b"TR";
const VERSION: u8 = 1;

/// A message on a node's inbox.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Inbox {
    /// How many local subscribers has `topic`? Answer to `from`'s inbox.
    CountRequest { id: u64, from: u64, topic: String },
    /// The answer from node `from`.
    CountReply { id: u64, from: u64, count: u64 },
}

pub(super) fn encode(message: &Inbox) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    match message {
        Inbox::CountRequest { id, from, topic } => {
            out.put_slice(REQUEST);
            out.put_u8(VERSION);
            out.put_u64(*id);
            out.put_u64(*from);
            out.put_slice(topic.as_bytes());
        }
        Inbox::CountReply { id, from, count } => {
            out.put_slice(REPLY);
            out.put_u8(VERSION);
            out.put_u64(*id);
            out.put_u64(*from);
            out.put_u64(*count);
        }
    }
    out.freeze()
}

/// Reads an inbox message; `None` for anything else.
pub(super) fn decode(bytes: &[u8]) -> Option<Inbox> {
    let u64_at = |at: usize| -> Option<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes.get(at..at + 8)?);
        Some(u64::from_be_bytes(b))
    };
    if bytes.get(2) != Some(&VERSION) {
        return None;
    }
    match bytes.get(..2)? {
        kind if kind == REQUEST => Some(Inbox::CountRequest {
            id: u64_at(3)?,
            from: u64_at(11)?,
            topic: std::str::from_utf8(bytes.get(19..)?).ok()?.to_string(),
        }),
        kind if kind == REPLY && bytes.len() == 27 => Some(Inbox::CountReply {
            id: u64_at(3)?,
            from: u64_at(11)?,
            count: u64_at(19)?,
        }),
        _ => None,
    }
}

/// Handles a message on this node's inbox.
pub(super) fn receive(shared: &Shared, bytes: &[u8]) {
    match decode(bytes) {
        Some(Inbox::CountRequest { id, from, topic }) => {
            let count = shared
                .hub()
                .map_or(0, |hub| hub.subscriber_count(&topic) as u64);
            let reply = encode(&Inbox::CountReply {
                id,
                from: shared.node,
                count,
            });
            shared.send_raw(shared.inbox(from), reply);
        }
        Some(Inbox::CountReply { id, from, count }) => {
            let pending = shared
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(answers) = pending.get(&id) {
                let _ = answers.send((from, count));
            }
        }
        None => add(&shared.stats.invalid, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_messages_round_trip() {
        for message in [
            Inbox::CountRequest {
                id: 1,
                from: 2,
                topic: "room:é".to_string(),
            },
            Inbox::CountRequest {
                id: 1,
                from: 2,
                topic: String::new(),
            },
            Inbox::CountReply {
                id: 3,
                from: 4,
                count: 5,
            },
        ] {
            assert_eq!(decode(&encode(&message)), Some(message));
        }
    }

    #[test]
    fn rejects_what_is_not_an_inbox_message() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"TQ"), None);
        assert_eq!(decode(b"TR\x01short"), None);
        let mut reply = encode(&Inbox::CountReply {
            id: 1,
            from: 2,
            count: 3,
        })
        .to_vec();
        reply[2] = 2;
        assert_eq!(decode(&reply), None);
    }

    #[test]
    fn glob_characters_in_the_prefix_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
