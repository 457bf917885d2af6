//! permessage-deflate (RFC 7692): compressed messages, negotiated in the handshake.
//!
//! When a client offers `Sec-WebSocket-Extensions: permessage-deflate` and the layer has a
//! [`DeflateConfig`], the server accepts the first offer it can honour and from then on:
//!
//! - a message the client sent compressed (RSV1 set on its first frame) is inflated before
//!   the handler sees it, with every RFC 6455 check (UTF-8, fragmentation, the size limit)
//!   done on the inflated data;
//! - a message the handler sends is compressed when it is at least
//!   [`threshold`](DeflateConfig::threshold) bytes long, and sent as it is otherwise.
//!
//! An inflated message is held to the layer's `max_message_size` while it is being inflated:
//! inflating stops, and the connection is closed with 1009, as soon as the output passes the
//! limit, so a small "deflate bomb" costs no more memory than an honest message of that size.
//!
//! ```
//! use tower_websocket::{deflate::DeflateConfig, WebSocket, WebSocketLayer};
//!
//! async fn handler(_ws: WebSocket) {}
//!
//! // Many mostly idle sockets: no compression state is kept between messages.
//! let layer = WebSocketLayer::new(handler).deflate(
//!     DeflateConfig::new()
//!         .level(1)
//!         .threshold(256)
//!         .server_no_context_takeover(true)
//!         .client_no_context_takeover(true),
//! );
//! # let _ = layer;
//! ```
//!
//! # Memory
//!
//! Compression state is kept per connection, and "context takeover" (the default) keeps it
//! between messages, so that each message can refer back to the ones before it: repeated
//! JSON keys, say, cost almost nothing after the first message. The compressor is the larger
//! part of that state; with both `no_context_takeover` settings an idle socket holds none,
//! at the price of a worse ratio on small messages and of making the state again for every
//! message. Choose context takeover for a few busy connections that send many similar
//! messages, and both `no_context_takeover` settings for many mostly idle connections
//! (notifications, dashboards). The sizes and costs, measured, are in the chapter
//! [`docs::compression`](crate::docs::compression).

/// Default for [`DeflateConfig::level`]: 1, the fastest zlib level.
pub const DEFAULT_LEVEL: u32 = 1;
/// Default for [`DeflateConfig::threshold`]: messages under 128 bytes are sent uncompressed.
pub const DEFAULT_THRESHOLD: usize = 128;
/// Default for [`DeflateConfig::server_max_window_bits`] and
/// [`DeflateConfig::client_max_window_bits`]: 15, a 32 KiB window, the most RFC 7692 allows.
pub const DEFAULT_MAX_WINDOW_BITS: u8 = 15;

/// The bytes a sender removes from the end of each compressed message and a receiver puts
/// back (the end of an empty stored block, as a sync flush makes it).
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Settings of permessage-deflate (RFC 7692), for `WebSocketLayer::deflate`.
///
/// Every setting has a default (see each method); [`DeflateConfig::new`] is ready to use.
/// The window and context-takeover settings are what the server asks for: the client's
/// offer can only make them stricter (a client may ask for no context takeover, or for a
/// smaller window, and gets it).
#[derive(Clone, Debug)]
#[must_use]
pub struct DeflateConfig {
    pub(crate) level: u32,
    pub(crate) threshold: usize,
    pub(crate) server_max_window_bits: u8,
    pub(crate) client_max_window_bits: u8,
    pub(crate) server_no_context_takeover: bool,
    pub(crate) client_no_context_takeover: bool,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig::new()
    }
}

impl DeflateConfig {
    /// The defaults: level [`DEFAULT_LEVEL`], threshold [`DEFAULT_THRESHOLD`], 15-bit windows
    /// both ways, context takeover both ways.
    pub fn new() -> Self {
        DeflateConfig {
            level: DEFAULT_LEVEL,
            threshold: DEFAULT_THRESHOLD,
            server_max_window_bits: DEFAULT_MAX_WINDOW_BITS,
            client_max_window_bits: DEFAULT_MAX_WINDOW_BITS,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
        }
    }

    /// The zlib compression level of outgoing messages, from 0 (stored, no compression) to 9
    /// (smallest, slowest).
    ///
    /// Default: [`DEFAULT_LEVEL`], 1. On JSON it takes a third to a fifth of level 6's time,
    /// for output a few percent larger.
    ///
    /// # Panics
    ///
    /// When `level` is over 9 (a programmer error, caught when the layer is built).
    pub fn level(mut self, level: u32) -> Self {
        assert!(level <= 9, "deflate level must be 0..=9, not {level}");
        self.level = level;
        self
    }

    /// Outgoing messages shorter than this many bytes are sent uncompressed. The choice is
    /// made per message, before compressing; every message of at least this size is sent
    /// compressed. `0` compresses every message.
    ///
    /// Default: [`DEFAULT_THRESHOLD`], 128 bytes. Below that, compression gains little:
    /// compressed on its own (`server_no_context_takeover`), a short JSON message does not
    /// shrink at all; with context takeover, small messages much like earlier ones do
    /// shrink, but by less than the TCP and TLS overhead of the packet that carries them. Lower it (to 32, say) for chatty small messages with context
    /// takeover when bandwidth is what counts; raise it when CPU is.
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// The largest LZ77 window the server compresses with, as a power of two, from 9
    /// (512 bytes) to 15 (32 KiB). A client may ask for a smaller one and then gets it; this
    /// value is announced to the client when it is under 15. A client that asks for a
    /// window of 8 bits is declined (zlib cannot make raw deflate streams with 8).
    ///
    /// Default: [`DEFAULT_MAX_WINDOW_BITS`], 15.
    ///
    /// # Panics
    ///
    /// When `bits` is outside 9..=15 (a programmer error, caught when the layer is built).
    pub fn server_max_window_bits(mut self, bits: u8) -> Self {
        assert!(
            (9..=15).contains(&bits),
            "server_max_window_bits must be 9..=15, not {bits}"
        );
        self.server_max_window_bits = bits;
        self
    }

    /// The largest LZ77 window the server asks the client to compress with, as a power of
    /// two, from 9 to 15; a smaller window means a smaller inflater per connection. RFC 7692
    /// lets the server ask only when the client's offer says it supports the limit
    /// (`client_max_window_bits`, as browsers send); otherwise the client may use 15 and the
    /// server inflates with 15.
    ///
    /// Default: [`DEFAULT_MAX_WINDOW_BITS`], 15 (nothing asked).
    ///
    /// # Panics
    ///
    /// When `bits` is outside 9..=15 (a programmer error, caught when the layer is built).
    pub fn client_max_window_bits(mut self, bits: u8) -> Self {
        assert!(
            (9..=15).contains(&bits),
            "client_max_window_bits must be 9..=15, not {bits}"
        );
        self.client_max_window_bits = bits;
        self
    }

    /// Whether the server compresses each message on its own, forgetting the earlier ones.
    /// Compression gets worse on small similar messages, but no compressor state is kept
    /// between messages (see the [module docs](self#memory)). A client may also ask for it,
    /// and then gets it whatever this says.
    ///
    /// Default: `false` (context takeover).
    pub fn server_no_context_takeover(mut self, yes: bool) -> Self {
        self.server_no_context_takeover = yes;
        self
    }

    /// Whether the server asks the client to compress each message on its own, so that the
    /// server keeps no inflater state between messages (see the [module docs](self#memory)).
    /// Clients must comply.
    ///
    /// Default: `false` (context takeover).
    pub fn client_no_context_takeover(mut self, yes: bool) -> Self {
        self.client_no_context_takeover = yes;
        self
    }
}

mod compressor;
mod inflater;
mod negotiation;

pub(crate) use compressor::{Compressor, SharedSettings};
pub(crate) use inflater::InflateRead;
pub(crate) use negotiation::{negotiate, Agreed};

#[cfg(test)]
mod tests;
