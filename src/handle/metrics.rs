//! The handle's counters through the [`metrics`] facade (feature `metrics`), for Prometheus or
//! any other `metrics` exporter: [`WebSocketHandle::publish_metrics`].
//!
//! The connections count in the layer's own atomics, as they do without the feature; a publish
//! copies a snapshot of them into the installed recorder. Nothing is added to the message path,
//! and the totals are exact whenever the recorder is read. The chapter
//! [`docs::metrics`](crate::docs::metrics) lists the metrics and shows a Prometheus endpoint.

use metrics::{counter, describe_counter, describe_gauge, gauge, IntoLabels, Label, Unit};

use crate::handle::{Metrics, WebSocketHandle};

/// Sockets live now: a gauge.
const CONNECTIONS_LIVE: &str = "websocket_connections_live";
/// Upgrades accepted: a counter.
const CONNECTIONS_ACCEPTED: &str = "websocket_connections_accepted_total";
/// Handshakes refused, with a `status` label: a counter.
const HANDSHAKES_REJECTED: &str = "websocket_handshakes_rejected_total";
/// Whole messages received from peers: a counter.
const MESSAGES_RECEIVED: &str = "websocket_messages_received_total";
/// Payload bytes of the messages received: a counter.
const RECEIVED_BYTES: &str = "websocket_received_bytes_total";
/// Messages written to peers: a counter.
const MESSAGES_SENT: &str = "websocket_messages_sent_total";
/// Payload bytes of the messages written: a counter.
const SENT_BYTES: &str = "websocket_sent_bytes_total";

impl WebSocketHandle {
    /// Records the layer's counters (see [`metrics`](Self::metrics)) in the `metrics`
    /// recorder installed now, with their descriptions.
    ///
    /// Call it where the recorder is read: in the handler of a Prometheus `/metrics` route,
    /// just before rendering, or from a periodic task for a push-based exporter. Counters are
    /// set to the layer's totals since it was built (`Counter::absolute`), the live sockets
    /// gauge to the count now.
    ///
    /// | metric | kind | what |
    /// |---|---|---|
    /// | `websocket_connections_live` | gauge | sockets live now, from the `101` until the connection and its handler have ended |
    /// | `websocket_connections_accepted_total` | counter | upgrades accepted |
    /// | `websocket_handshakes_rejected_total{status}` | counter | handshakes refused, by `status`: `400`, `403`, `426`, `503`, `other` |
    /// | `websocket_messages_received_total` | counter | whole messages received (after reassembly) |
    /// | `websocket_received_bytes_total` | counter | their payload bytes (inflated, with permessage-deflate) |
    /// | `websocket_messages_sent_total` | counter | messages written to peers |
    /// | `websocket_sent_bytes_total` | counter | their payload bytes (before compression) |
    ///
    /// With several layers in one process, give each its own labels with
    /// [`publish_metrics_labeled`](Self::publish_metrics_labeled).
    ///
    /// ```
    /// use metrics_exporter_prometheus::PrometheusBuilder;
    /// use tower_websocket::{WebSocket, WebSocketLayer};
    ///
    /// # async fn echo(_ws: WebSocket) {}
    /// let recorder = PrometheusBuilder::new().build_recorder();
    /// let prometheus = recorder.handle();
    /// let sockets = WebSocketLayer::new(echo).handle();
    /// metrics::with_local_recorder(&recorder, || sockets.publish_metrics());
    /// let page = prometheus.render();
    /// assert!(page.contains("websocket_connections_live 0"), "{page}");
    /// assert!(page.contains(r#"websocket_handshakes_rejected_total{status="403"} 0"#), "{page}");
    /// ```
    pub fn publish_metrics(&self) {
        publish(&self.metrics(), Vec::new());
    }

    /// As [`publish_metrics`](Self::publish_metrics), with `labels` on every metric (a
    /// `layer` name, say, when a process has several layers).
    ///
    /// ```
    /// # use tower_websocket::{WebSocket, WebSocketLayer};
    /// # async fn chat(_ws: WebSocket) {}
    /// let sockets = WebSocketLayer::new(chat).handle();
    /// sockets.publish_metrics_labeled(&[("layer", "chat")]);
    /// ```
    pub fn publish_metrics_labeled<L: IntoLabels>(&self, labels: L) {
        publish(&self.metrics(), labels.into_labels());
    }
}

fn publish(m: &Metrics, labels: Vec<Label>) {
    describe();
    gauge!(CONNECTIONS_LIVE, labels.clone()).set(m.live as f64);
    counter!(CONNECTIONS_ACCEPTED, labels.clone()).absolute(m.accepted);
    let rejected = &m.rejected;
    for (status, count) in [
        ("400", rejected.bad_request),
        ("403", rejected.forbidden),
        ("426", rejected.upgrade_required),
        ("503", rejected.unavailable),
        ("other", rejected.other),
    ] {
        let mut labels = labels.clone();
        labels.push(Label::new("status", status));
        counter!(HANDSHAKES_REJECTED, labels).absolute(count);
    }
    counter!(MESSAGES_RECEIVED, labels.clone()).absolute(m.messages_in);
    counter!(RECEIVED_BYTES, labels.clone()).absolute(m.bytes_in);
    counter!(MESSAGES_SENT, labels.clone()).absolute(m.messages_out);
    counter!(SENT_BYTES, labels).absolute(m.bytes_out);
}

/// The descriptions and units, given to the recorder with every publish: the recorder may have
/// been installed (or swapped, in tests) since the last one, and describing again is cheap.
fn describe() {
    describe_gauge!(
        CONNECTIONS_LIVE,
        Unit::Count,
        "WebSocket connections live now, from the 101 until the connection and its handler have ended"
    );
    describe_counter!(
        CONNECTIONS_ACCEPTED,
        Unit::Count,
        "WebSocket upgrades accepted"
    );
    describe_counter!(
        HANDSHAKES_REJECTED,
        Unit::Count,
        "WebSocket handshakes refused, by the status they were answered with"
    );
    describe_counter!(
        MESSAGES_RECEIVED,
        Unit::Count,
        "Whole WebSocket messages received from peers"
    );
    describe_counter!(
        RECEIVED_BYTES,
        Unit::Bytes,
        "Payload bytes of the WebSocket messages received"
    );
    describe_counter!(
        MESSAGES_SENT,
        Unit::Count,
        "WebSocket messages written to peers"
    );
    describe_counter!(
        SENT_BYTES,
        Unit::Bytes,
        "Payload bytes of the WebSocket messages written"
    );
}
