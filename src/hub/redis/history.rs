//! Topic histories in Redis: one stream per topic, appended to by a Lua script that assigns
//! the epoch and the offset atomically with the `XADD` and the `PUBLISH`, so that every node
//! sees the same positions; feeds read it with another script around `XRANGE`.
//!
//! Keys, per topic `t`: `{prefix}!history:{t}:meta`, a hash with the `epoch` (a decimal
//! `u64`, drawn by whoever finds none) and the last `offset`; `{prefix}!history:{t}:stream`,
//! the stream, whose entry ids are `OFFSET-0`, whose field `m` holds the envelope that was
//! published and `t` the time of the append (milliseconds, Redis's clock).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};

use super::envelope;
use crate::hub::history::{RemoteFuture, RemoteHistories, RemoteHistory, RemoteRead};
use crate::hub::{HistoryConfig, Position};

/// Lua shared by both scripts: the time in milliseconds by Redis's clock (one clock for every
/// node), and the trimming by age, which drops the oldest entries whose `t` is older than
/// `age` milliseconds (none when `age` is 0).
macro_rules! lua_common {
    () => {
        r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function trim_by_age(stream, age, now)
  if age <= 0 then return end
  local cutoff = now - age
  while true do
    local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 64)
    if #oldest == 0 then return end
    for _, entry in ipairs(oldest) do
      local at = 0
      local fields = entry[2]
      for j = 1, #fields - 1, 2 do
        if fields[j] == 't' then at = tonumber(fields[j + 1]) or 0 end
      end
      if at >= cutoff then
        redis.call('XTRIM', stream, 'MINID', entry[1])
        return
      end
    end
    local offset = tonumber(string.match(oldest[#oldest][1], '^(%d+)-'))
    if not offset then return end
    redis.call('XTRIM', stream, 'MINID', string.format('%d-0', offset + 1))
  end
end
local function epoch_of(meta, stream, candidate)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = candidate
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  end
  return epoch
end
"#
    };
}

/// KEYS: meta, stream. ARGV: an epoch for a topic that has none, MAXLEN, channel, the age
/// limit in milliseconds (0 for none), then the envelopes, oldest first. Returns
/// `{epoch, last offset}`. One call per topic per pipeline: the script's own cost is paid once
/// for a batch, not once per message.
pub(super) const APPEND: &str = concat!(
    lua_common!(),
    r#"
local epoch = epoch_of(KEYS[1], KEYS[2], ARGV[1])
local now = now_ms()
local n = #ARGV - 4
local last = redis.call('HINCRBY', KEYS[1], 'offset', n)
for i = 1, n do
  local id = string.format('%d-0', last - n + i)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], id, 'm', ARGV[4 + i], 't', now)
  redis.call('PUBLISH', ARGV[3], ARGV[4 + i])
end
trim_by_age(KEYS[2], tonumber(ARGV[4]), now)
return {epoch, last}
"#
);

/// KEYS: meta, stream. ARGV: an epoch for a topic that has none, the epoch read from (empty
/// for none), the first id wanted, COUNT, the age limit in milliseconds (0 for none). Returns
/// `{epoch, head, entries}`; the entries only when the epochs agree.
const READ: &str = concat!(
    lua_common!(),
    r#"
local epoch = epoch_of(KEYS[1], KEYS[2], ARGV[1])
trim_by_age(KEYS[2], tonumber(ARGV[5]), now_ms())
local head = redis.call('HGET', KEYS[1], 'offset')
local entries = {}
if ARGV[2] == epoch then
  entries = redis.call('XRANGE', KEYS[2], ARGV[3], '+', 'COUNT', ARGV[4])
end
return {epoch, head, entries}
"#
);

/// The keys of `topic`'s history.
pub(super) fn keys(prefix: &str, topic: &str) -> (String, String) {
    (
        format!("{prefix}!history:{topic}:meta"),
        format!("{prefix}!history:{topic}:stream"),
    )
}

/// A fresh epoch candidate. Drawn per call: a topic wiped and re-created must not get back
/// the epoch it had, or old positions would read the new history.
pub(super) fn candidate_epoch() -> u64 {
    super::random_node_id()
}

/// Loads `script`, returning its SHA1 for `EVALSHA`.
pub(super) async fn load(
    conn: &mut MultiplexedConnection,
    script: &str,
) -> redis::RedisResult<String> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(conn)
        .await
}

/// The backend's histories: per topic, its keys and limit, for the writer and the feeds.
pub(super) struct Histories {
    prefix: String,
    topics: RwLock<HashMap<String, Arc<TopicHistory>>>,
    reader: Arc<Reader>,
    poll: Duration,
}

impl Histories {
    /// `timeout` bounds each read, `poll` is the feeds' poll interval, and `retry_after` the
    /// wait after a failed attempt to connect.
    pub(super) fn new(
        client: Client,
        prefix: &str,
        timeout: Duration,
        poll: Duration,
        retry_after: Duration,
    ) -> Self {
        Histories {
            prefix: prefix.to_string(),
            topics: RwLock::new(HashMap::new()),
            reader: Arc::new(Reader {
                client,
                timeout,
                retry_after,
                conn: tokio::sync::Mutex::new(None),
                failed: Mutex::new(None),
            }),
            poll,
        }
    }

    /// The history of `topic`, if the hub made one.
    pub(super) fn get(&self, topic: &str) -> Option<Arc<TopicHistory>> {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        if topics.is_empty() {
            return None;
        }
        topics.get(topic).cloned()
    }

    /// Redis answers again (the subscribe connection is back): the next read connects at once.
    pub(super) fn reachable(&self) {
        *self
            .reader
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    pub(super) fn contains(&self, topic: &str) -> bool {
        self.get(topic).is_some()
    }
}

/// What the hub holds to make its histories in Redis.
pub(super) struct Maker {
    pub(super) histories: Arc<Histories>,
    /// Called with each new history's topic: its channel stays subscribed, for the wake-ups.
    pub(super) subscribe: Box<dyn Fn(&str) + Send + Sync>,
}

impl RemoteHistories for Maker {
    fn history(&self, topic: &str, config: HistoryConfig) -> Arc<dyn RemoteHistory> {
        let (meta, stream) = keys(&self.histories.prefix, topic);
        let history = Arc::new(TopicHistory {
            meta,
            stream,
            max_len: config.message_limit(),
            max_age_ms: config.age_limit().map_or(0, |age| {
                u64::try_from(age.as_millis()).unwrap_or(u64::MAX).max(1)
            }),
            last_seen: Mutex::new(None),
            reader: Arc::clone(&self.histories.reader),
            poll: self.histories.poll,
        });
        self.histories
            .topics
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_string(), Arc::clone(&history));
        (self.subscribe)(topic);
        history
    }
}

/// One topic's history in Redis.
pub(super) struct TopicHistory {
    pub(super) meta: String,
    pub(super) stream: String,
    pub(super) max_len: usize,
    /// The age limit in milliseconds, 0 for none.
    pub(super) max_age_ms: u64,
    last_seen: Mutex<Option<Position>>,
    reader: Arc<Reader>,
    poll: Duration,
}

impl TopicHistory {
    /// Notes a position appended or read, for [`RemoteHistory::last_seen`].
    pub(super) fn saw(&self, position: Position) {
        let mut last = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let newer = match *last {
            Some(last) => last.epoch() != position.epoch() || last.offset() < position.offset(),
            None => true,
        };
        if newer {
            *last = Some(position);
        }
    }

    async fn read_now(&self, since: Option<Position>, max: usize) -> Result<RemoteRead, String> {
        let (mut conn, sha) = self.reader.connection().await?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&sha)
            .arg(2)
            .arg(&self.meta)
            .arg(&self.stream)
            .arg(candidate_epoch().to_string());
        match since {
            Some(since) => cmd
                .arg(since.epoch().to_string())
                .arg(format!("{}-0", since.offset().saturating_add(1))),
            None => cmd.arg("").arg("-"),
        };
        cmd.arg(max).arg(self.max_age_ms);
        let value =
            match tokio::time::timeout(self.reader.timeout, cmd.query_async(&mut conn)).await {
                Ok(Ok(value)) => value,
                Ok(Err(e)) => {
                    self.reader.forget().await;
                    return Err(format!("history read failed: {e}"));
                }
                Err(_) => {
                    self.reader.forget().await;
                    return Err(format!("no answer within {:?}", self.reader.timeout));
                }
            };
        let read = parse_read(value)?;
        self.saw(Position::new(read.epoch, read.head));
        Ok(read)
    }
}

impl RemoteHistory for TopicHistory {
    fn read(&self, since: Option<Position>, max: usize) -> RemoteFuture<'_> {
        Box::pin(self.read_now(since, max))
    }

    fn last_seen(&self) -> Option<Position> {
        *self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn poll(&self) -> Duration {
        self.poll
    }
}

/// The connection the feeds read on, made on first use and again after a failure.
struct Reader {
    client: Client,
    timeout: Duration,
    /// After a failed attempt to connect, how long reads fail at once instead of trying again:
    /// many feeds waiting on an unreachable Redis make one attempt, not one each.
    retry_after: Duration,
    conn: tokio::sync::Mutex<Option<(MultiplexedConnection, String)>>,
    failed: Mutex<Option<std::time::Instant>>,
}

impl Reader {
    async fn connection(&self) -> Result<(MultiplexedConnection, String), String> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let recent = *self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.is_some_and(|at| at.elapsed() < self.retry_after) {
            return Err("Redis was unreachable a moment ago".to_string());
        }
        let made = self.connect().await;
        *self.failed.lock().unwrap_or_else(PoisonError::into_inner) =
            made.is_err().then(std::time::Instant::now);
        let (conn, sha) = made?;
        *slot = Some((conn.clone(), sha.clone()));
        Ok((conn, sha))
    }

    async fn connect(&self) -> Result<(MultiplexedConnection, String), String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("cannot reach Redis: {e}"))?;
        let sha = load(&mut conn, READ)
            .await
            .map_err(|e| format!("SCRIPT LOAD failed: {e}"))?;
        Ok((conn, sha))
    }

    /// Drops the connection after a failure (a restarted Redis has also lost the script).
    async fn forget(&self) {
        *self.conn.lock().await = None;
    }
}

/// A decimal number in a bulk string or an integer.
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// Reads the `{epoch, offset}` the append script returns.
pub(super) fn parse_append(value: &Value) -> Option<Position> {
    match value {
        Value::Array(items) if items.len() == 2 => {
            Some(Position::new(number(&items[0])?, number(&items[1])?))
        }
        _ => None,
    }
}

/// Reads `{epoch, head, entries}`; entries are `[id, [field, value, ...]]`.
fn parse_read(value: Value) -> Result<RemoteRead, String> {
    let bad = |what: &str| format!("unexpected reply to the history read: {what}");
    let Value::Array(mut items) = value else {
        return Err(bad("not an array"));
    };
    if items.len() != 3 {
        return Err(bad("not three items"));
    }
    let entries = items.pop().unwrap_or_default();
    let head = number(&items[1]).ok_or_else(|| bad("head"))?;
    let epoch = number(&items[0]).ok_or_else(|| bad("epoch"))?;
    let mut read = RemoteRead {
        epoch,
        head,
        entries: Vec::new(),
    };
    let Value::Array(entries) = entries else {
        return Err(bad("entries"));
    };
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            return Err(bad("entry"));
        };
        let fields = parts.pop();
        let id = parts.pop();
        let offset = match &id {
            Some(Value::BulkString(id)) => std::str::from_utf8(id)
                .ok()
                .and_then(|id| id.strip_suffix("-0"))
                .and_then(|offset| offset.parse::<u64>().ok()),
            _ => None,
        }
        .ok_or_else(|| bad("entry id"))?;
        let Some(Value::Array(fields)) = fields else {
            return Err(bad("entry fields"));
        };
        let payload = fields.chunks(2).find_map(|pair| match pair {
            [Value::BulkString(name), Value::BulkString(payload)] if name == b"m" => {
                Some(payload.clone())
            }
            _ => None,
        });
        // Anything in Redis may have been written by someone else: checked like the channel,
        // and an entry that is not a message is skipped rather than blocking every feed.
        let message = payload.and_then(|p| envelope::decode(Bytes::from(p)).ok());
        if message.is_none() {
            tracing::debug!(
                offset,
                "redis history: skipped an entry that is not a message"
            );
        }
        read.entries.push((offset, message.map(|e| e.message)));
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_read_reply_is_parsed_and_a_bad_one_is_an_error() {
        let m = envelope::encode(1, 1, &Message::text("hi")).to_vec();
        let entry = Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![bulk("m"), Value::BulkString(m)]),
        ]);
        let reply = Value::Array(vec![bulk("99"), bulk("7"), Value::Array(vec![entry])]);
        let read = parse_read(reply).expect("a good reply");
        assert_eq!((read.epoch, read.head), (99, 7));
        assert_eq!(read.entries.len(), 1);
        assert_eq!(read.entries[0].0, 7);
        assert_eq!(
            read.entries[0].1.as_ref().and_then(Message::as_text),
            Some("hi")
        );

        let garbage = Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![bulk("m"), bulk("not an envelope")]),
        ]);
        let reply = Value::Array(vec![bulk("99"), bulk("7"), Value::Array(vec![garbage])]);
        let read = parse_read(reply).expect("a garbage entry is skipped, not an error");
        assert_eq!(read.entries.len(), 1);
        assert!(read.entries[0].1.is_none());
        assert!(parse_read(Value::Nil).is_err());
        assert!(parse_read(Value::Array(vec![
            bulk("x"),
            bulk("1"),
            Value::Array(vec![])
        ]))
        .is_err());
    }

    #[test]
    fn an_append_reply_is_a_position() {
        let reply = Value::Array(vec![bulk("18446744073709551615"), Value::Int(3)]);
        assert_eq!(parse_append(&reply), Some(Position::new(u64::MAX, 3)));
        assert_eq!(parse_append(&Value::Int(3)), None);
    }
}
