//! The backend's counters through the [`metrics`] facade (features `redis` and `metrics`):
//! [`RedisBackend::publish_metrics`].

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};

use super::RedisBackend;

const PUBLISHED: &str = "websocket_hub_redis_published_total";
const DROPPED: &str = "websocket_hub_redis_dropped_total";
const RECEIVED: &str = "websocket_hub_redis_received_total";
const INVALID: &str = "websocket_hub_redis_invalid_total";
const MISSED: &str = "websocket_hub_redis_missed_total";
const DISCONNECTS: &str = "websocket_hub_redis_disconnects_total";
const CONNECTED: &str = "websocket_hub_redis_connected";

impl RedisBackend {
    /// Records the backend's counters ([`stats`](Self::stats)) in the `metrics` recorder
    /// installed now, with their descriptions; call it where the recorder is read, as
    /// [`WebSocketHandle::publish_metrics`](crate::WebSocketHandle::publish_metrics).
    ///
    /// | metric | kind | what |
    /// |---|---|---|
    /// | `websocket_hub_redis_published_total` | counter | messages sent to Redis |
    /// | `websocket_hub_redis_dropped_total{reason}` | counter | messages lost: `queue_full` (the queue to Redis), `disconnected` (Redis unreachable), `subscriber_queue_full` (a local socket's send queue, for messages from other nodes) |
    /// | `websocket_hub_redis_received_total` | counter | messages from other nodes handed to local subscribers |
    /// | `websocket_hub_redis_invalid_total` | counter | messages on a topic channel that were not a valid envelope |
    /// | `websocket_hub_redis_missed_total` | counter | messages of other nodes known lost from gaps in their sequence numbers |
    /// | `websocket_hub_redis_disconnects_total` | counter | connections lost after being up |
    /// | `websocket_hub_redis_connected` | gauge | 1 while both connections are up, else 0 |
    ///
    /// ```
    /// use metrics_exporter_prometheus::PrometheusBuilder;
    /// use tower_websocket::hub::redis::RedisBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // Nothing listens there: the backend keeps trying in the background.
    /// let backend = RedisBackend::new("redis://127.0.0.1:1/").unwrap();
    /// let recorder = PrometheusBuilder::new().build_recorder();
    /// let prometheus = recorder.handle();
    /// metrics::with_local_recorder(&recorder, || backend.publish_metrics());
    /// let page = prometheus.render();
    /// assert!(page.contains("websocket_hub_redis_connected 0"), "{page}");
    /// # }
    /// ```
    pub fn publish_metrics(&self) {
        let s = self.stats();
        describe_counter!(PUBLISHED, Unit::Count, "Messages sent to Redis.");
        describe_counter!(DROPPED, Unit::Count, "Messages lost, by reason.");
        describe_counter!(
            RECEIVED,
            Unit::Count,
            "Messages from other nodes handed to local subscribers."
        );
        describe_counter!(
            INVALID,
            Unit::Count,
            "Messages on a topic channel that were not a valid envelope."
        );
        describe_counter!(
            MISSED,
            Unit::Count,
            "Messages of other nodes known lost from sequence gaps."
        );
        describe_counter!(
            DISCONNECTS,
            Unit::Count,
            "Redis connections lost after being up."
        );
        describe_gauge!(CONNECTED, "1 while both Redis connections are up, else 0.");
        counter!(PUBLISHED).absolute(s.published);
        counter!(DROPPED, "reason" => "queue_full").absolute(s.dropped_queue_full);
        counter!(DROPPED, "reason" => "disconnected").absolute(s.dropped_disconnected);
        counter!(DROPPED, "reason" => "subscriber_queue_full").absolute(s.local_dropped);
        counter!(RECEIVED).absolute(s.received);
        counter!(INVALID).absolute(s.invalid);
        counter!(MISSED).absolute(s.missed);
        counter!(DISCONNECTS).absolute(s.disconnects);
        gauge!(CONNECTED).set(if self.is_connected() { 1.0 } else { 0.0 });
    }
}
