//! What a connection is given by its layer: limits, timeouts, the send queue, compression,
//! and the registry it reports its traffic to.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::handle::Registry;
use crate::socket::QueuePolicy;

/// The settings one connection reads, set by the layer's builder (whose setters document
/// the defaults).
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) max_message_size: usize,
    pub(crate) max_frame_size: usize,
    pub(crate) close_timeout: Duration,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) ping_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) send_queue_capacity: usize,
    /// The most payload bytes the send queue holds.
    pub(crate) send_queue_bytes: usize,
    pub(crate) send_queue_policy: QueuePolicy,
    #[cfg(feature = "deflate")]
    pub(crate) deflate: Option<crate::wire::deflate::DeflateConfig>,
    /// Where messages in and out are counted.
    pub(crate) registry: Arc<Registry>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Settings");
        s.field("max_message_size", &self.max_message_size)
            .field("max_frame_size", &self.max_frame_size)
            .field("close_timeout", &self.close_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("send_queue_capacity", &self.send_queue_capacity)
            .field("send_queue_bytes", &self.send_queue_bytes)
            .field("send_queue_policy", &self.send_queue_policy);
        #[cfg(feature = "deflate")]
        s.field("deflate", &self.deflate);
        s.finish_non_exhaustive()
    }
}
