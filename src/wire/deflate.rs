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

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, ReadBuf};

use crate::socket::close::CloseCode;
use crate::wire::guard::{header_len, WireViolation};

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

/// The largest payload of a frame made from inflated data: an inflated message reaches the
/// reader as frames of at most this size.
pub(crate) const INFLATED_FRAME_MAX: usize = u16::MAX as usize;
/// An inflated frame is built behind room for its longest header (4 bytes, since
/// [`INFLATED_FRAME_MAX`] fits a 16-bit length).
const HEAD_ROOM: usize = 4;
/// How much an inflated frame's buffer grows at first.
const FRAME_START: usize = 4 * 1024;
/// Size of the buffer compressed input is read into.
const STASH_SIZE: usize = 16 * 1024;

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

// ---------------------------------------------------------------------------------------------
// Negotiation (RFC 7692 section 7.1)
// ---------------------------------------------------------------------------------------------

/// The parameters in force on one connection, both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// The server resets its compressor after each message.
    pub(crate) server_no_context_takeover: bool,
    /// The client resets its compressor after each message: the server may drop its inflater.
    pub(crate) client_no_context_takeover: bool,
    /// The server's compression window, 9..=15.
    pub(crate) server_max_window_bits: u8,
    /// The client's compression window, 8..=15 (the inflater uses at least 9: a larger window
    /// inflates anything a smaller one made).
    pub(crate) client_max_window_bits: u8,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the response.
    fn response(&self, server_bits_offered: bool, client_bits_offered: bool) -> String {
        let mut out = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if server_bits_offered || self.server_max_window_bits < 15 {
            out.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        if client_bits_offered && self.client_max_window_bits < 15 {
            out.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        out
    }
}

/// Chooses the first `permessage-deflate` offer of the request that can be honoured under
/// `config`: what both sides will use, and the `Sec-WebSocket-Extensions` value to answer
/// with. `None` when there is no such offer: the connection goes on uncompressed.
pub(crate) fn negotiate(
    headers: &HeaderMap,
    config: &DeflateConfig,
) -> Option<(Agreed, HeaderValue)> {
    for line in headers.get_all(http::header::SEC_WEBSOCKET_EXTENSIONS) {
        // A line that is not visible ASCII cannot hold a valid offer.
        let Ok(line) = line.to_str() else { continue };
        for offer in split_unquoted(line, b',') {
            let Some((name, params)) = parse_offer(offer) else {
                continue;
            };
            if !name.eq_ignore_ascii_case("permessage-deflate") {
                continue;
            }
            if let Some(answer) = accept(&params, config) {
                return Some(answer);
            }
        }
    }
    None
}

/// The answer to one `permessage-deflate` offer, or `None` to decline it.
fn accept(
    params: &[(&str, Option<String>)],
    config: &DeflateConfig,
) -> Option<(Agreed, HeaderValue)> {
    let mut server_no_context_takeover = false;
    let mut client_no_context_takeover = false;
    let mut server_bits: Option<u8> = None;
    // `Some(None)`: offered without a value.
    let mut client_bits: Option<Option<u8>> = None;
    let mut seen = [false; PARAMS.len()];
    for (name, value) in params {
        // An unknown parameter declines the offer, and so does a duplicate.
        let index = PARAMS
            .iter()
            .position(|known| name.eq_ignore_ascii_case(known))?;
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
        match (PARAMS[index], value.as_deref()) {
            ("server_no_context_takeover", None) => server_no_context_takeover = true,
            ("client_no_context_takeover", None) => client_no_context_takeover = true,
            ("server_max_window_bits", Some(value)) => server_bits = Some(window_bits(value)?),
            ("client_max_window_bits", None) => client_bits = Some(None),
            ("client_max_window_bits", Some(value)) => {
                client_bits = Some(Some(window_bits(value)?));
            }
            // A value where none is allowed, or none where one is needed.
            _ => return None,
        }
    }
    // zlib cannot compress raw deflate with an 8-bit window.
    if server_bits == Some(8) {
        return None;
    }
    let agreed = Agreed {
        server_no_context_takeover: server_no_context_takeover || config.server_no_context_takeover,
        client_no_context_takeover: client_no_context_takeover || config.client_no_context_takeover,
        server_max_window_bits: server_bits.unwrap_or(15).min(config.server_max_window_bits),
        client_max_window_bits: match client_bits {
            // The client cannot be limited: it may use the largest window.
            None => 15,
            Some(None) => config.client_max_window_bits,
            Some(Some(offered)) => offered.min(config.client_max_window_bits),
        },
    };
    let value = agreed.response(server_bits.is_some(), client_bits.is_some());
    Some((agreed, HeaderValue::try_from(value).ok()?))
}

/// The parameters RFC 7692 defines, in the order `accept` indexes them.
const PARAMS: [&str; 4] = [
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
];

/// A window size parameter: a decimal 8..=15 without leading zeros.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

/// Splits `text` at every `separator` outside a quoted string.
fn split_unquoted(text: &str, separator: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, byte) in text.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && byte == b'\\' {
            escaped = true;
        } else if byte == b'"' {
            quoted = !quoted;
        } else if !quoted && byte == separator {
            parts.push(&text[start..i]);
            start = i + 1;
        }
    }
    parts.push(&text[start..]);
    parts
}

/// An offer's parameters: names, and values with quotes removed.
type Params<'a> = Vec<(&'a str, Option<String>)>;

/// One offer: its extension name and its parameters. `None` when it is malformed or empty.
fn parse_offer(offer: &str) -> Option<(&str, Params<'_>)> {
    let mut parts = split_unquoted(offer, b';').into_iter();
    let name = trim_ows(parts.next()?);
    if !is_token(name) {
        return None;
    }
    let mut params = Vec::new();
    for part in parts {
        let (key, value) = match part.split_once('=') {
            Some((key, value)) => (trim_ows(key), Some(parse_value(trim_ows(value))?)),
            None => (trim_ows(part), None),
        };
        if !is_token(key) {
            return None;
        }
        params.push((key, value));
    }
    Some((name, params))
}

/// A parameter's value: a token, or a quoted string (unescaped).
fn parse_value(value: &str) -> Option<String> {
    if is_token(value) {
        return Some(value.to_owned());
    }
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// An RFC 9110 token: one or more `tchar`.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

// ---------------------------------------------------------------------------------------------
// Write side
// ---------------------------------------------------------------------------------------------

/// Compresses the server's outgoing messages, one whole message at a time.
pub(crate) struct Compressor {
    level: Compression,
    window_bits: u8,
    threshold: usize,
    no_context_takeover: bool,
    /// Made at the first compressed message; without context takeover, dropped after each.
    deflater: Option<Compress>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("level", &self.level.level())
            .field("window_bits", &self.window_bits)
            .field("threshold", &self.threshold)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("allocated", &self.deflater.is_some())
            .finish()
    }
}

impl Compressor {
    pub(crate) fn new(agreed: &Agreed, config: &DeflateConfig) -> Self {
        Compressor {
            level: Compression::new(config.level),
            window_bits: agreed.server_max_window_bits.clamp(9, 15),
            threshold: config.threshold,
            no_context_takeover: agreed.server_no_context_takeover,
            deflater: None,
        }
    }

    /// The compressed payload of a whole message (deflate output with the trailing
    /// `00 00 ff ff` removed), or `None` when the message is below the threshold (send it
    /// uncompressed, RSV1 clear).
    ///
    /// Every message this returns `Some` for must be sent, in order: with context takeover,
    /// later messages refer back to it.
    pub(crate) fn compress(&mut self, payload: &[u8]) -> Option<Bytes> {
        if payload.len() < self.threshold {
            return None;
        }
        let (level, bits) = (self.level, self.window_bits);
        let deflater = self
            .deflater
            .get_or_insert_with(|| Compress::new_with_window_bits(level, false, bits));
        let out = sync_flush(deflater, payload);
        if self.no_context_takeover {
            self.deflater = None;
        }
        match out {
            Some(mut out) if out.ends_with(&TRAILER) => {
                out.truncate(out.len() - TRAILER.len());
                Some(Bytes::from(out))
            }
            // No new input since the last flush: zlib has nothing to write. The message is
            // then an empty stored block, whose first byte the receiver cannot put back
            // (RFC 7692 section 7.2.3.6).
            Some(out) if out.is_empty() => Some(Bytes::from_static(&[0x00])),
            _ => {
                // Cannot happen with zlib; should it, start a fresh stream (the peer's
                // inflater takes it as a continuation) and send this one uncompressed.
                self.deflater = None;
                None
            }
        }
    }
}

/// Compresses all of `input` and sync-flushes: the output ends at a byte boundary, with an
/// empty stored block (`00 00 ff ff`).
fn sync_flush(deflater: &mut Compress, input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let mut consumed = 0;
    loop {
        // zlib asks for more than 6 bytes of room when flushing.
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let before = deflater.total_in();
        deflater
            .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        consumed += (deflater.total_in() - before) as usize;
        // The flush is complete when zlib stops with room to spare.
        if consumed == input.len() && out.len() < out.capacity() {
            return Some(out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Read side
// ---------------------------------------------------------------------------------------------

const TOO_BIG: WireViolation = WireViolation::new(CloseCode::MESSAGE_TOO_BIG, "message too big");
const CORRUPT: WireViolation = WireViolation::new(
    CloseCode::INVALID_PAYLOAD,
    "compressed message is not valid deflate data",
);
const RSV1_CONTINUATION: WireViolation = WireViolation::new(
    CloseCode::PROTOCOL_ERROR,
    "RSV1 set on a continuation frame",
);
const RSV1_CONTROL: WireViolation =
    WireViolation::new(CloseCode::PROTOCOL_ERROR, "RSV1 set on a control frame");
const FRAME_TOO_BIG: WireViolation =
    WireViolation::new(CloseCode::MESSAGE_TOO_BIG, "frame too big");
const NEW_MESSAGE_INSIDE: WireViolation = WireViolation::new(
    CloseCode::PROTOCOL_ERROR,
    "new message started inside a fragmented message",
);

/// Where the adapter is in the incoming byte stream.
#[derive(Debug)]
enum Wire {
    /// Gathering a frame header: the bytes seen so far.
    Header { bytes: [u8; 14], len: usize },
    /// Inside the payload of a frame passed through untouched.
    Raw { remaining: u64 },
    /// Inside the payload of a frame of a compressed message.
    Deflated {
        remaining: u64,
        mask: [u8; 4],
        /// Payload bytes already consumed (the mask's phase).
        offset: u64,
        fin: bool,
        /// Bytes at the front of the stash already unmasked in place.
        unmasked: usize,
    },
    /// The compressed message's frames are all read: feeding the inflater `00 00 ff ff`.
    Trailer { fed: usize },
}

const NEW_HEADER: Wire = Wire::Header {
    bytes: [0; 14],
    len: 0,
};

/// Bytes read from the inner stream and not yet handled: the compressed frames (and what
/// follows them in the same read).
#[derive(Debug, Default)]
struct Stash {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Stash {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Gives the buffer back when it is empty and no compressed message needs it.
    fn settle(&mut self, keep: bool) {
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
            if !keep {
                self.buf = Vec::new();
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.make_room();
        let take = bytes.len().min(self.buf.len() - self.end);
        self.buf[self.end..self.end + take].copy_from_slice(&bytes[..take]);
        self.end += take;
        if take < bytes.len() {
            // More than the buffer holds (a caller's read buffer larger than ours).
            self.buf.truncate(self.end);
            self.buf.extend_from_slice(&bytes[take..]);
            self.end = self.buf.len();
        }
    }

    /// Room at the end, for a read or a push.
    fn make_room(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0; STASH_SIZE];
        }
        if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

/// The compressed message in progress.
#[derive(Debug)]
struct Current {
    /// Text or binary: the opcode of its first inflated frame.
    opcode: u8,
    /// Its first frame has been handed on: the next ones are continuations.
    started: bool,
    /// Inflated bytes so far.
    total: usize,
}

/// The inflater and the frames it makes.
struct Inflation {
    window_bits: u8,
    no_context_takeover: bool,
    max_message_size: usize,
    /// The largest payload of an inflated frame.
    frame_max: usize,
    /// Made at the first compressed frame; without context takeover, dropped after each
    /// message.
    inflater: Option<Decompress>,
    current: Option<Current>,
    /// The frame being filled: `HEAD_ROOM` bytes for its header, then `pending_len -
    /// HEAD_ROOM` bytes of inflated payload. Grows up to `HEAD_ROOM + INFLATED_FRAME_MAX`.
    pending: Vec<u8>,
    pending_len: usize,
    /// A finished frame, `ready[ready_pos..ready_end]`, for the reader.
    ready: Vec<u8>,
    ready_pos: usize,
    ready_end: usize,
}

impl std::fmt::Debug for Inflation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflation")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("max_message_size", &self.max_message_size)
            .field("allocated", &self.inflater.is_some())
            .field("current", &self.current)
            .field("pending", &(self.pending_len - HEAD_ROOM))
            .field("ready", &(self.ready_end - self.ready_pos))
            .finish()
    }
}

impl Inflation {
    fn has_ready(&self) -> bool {
        self.ready_pos < self.ready_end
    }

    /// Starts a compressed message.
    fn begin(&mut self, opcode: u8) {
        self.current = Some(Current {
            opcode,
            started: false,
            total: 0,
        });
        self.pending_len = HEAD_ROOM;
    }

    /// Feeds `input` (unmasked deflate data) to the inflater, framing what comes out.
    /// Returns how much of `input` was consumed: all of it, unless a full frame was made
    /// first (then it is ready, and the rest waits until it has been taken).
    fn feed(&mut self, input: &[u8]) -> Result<usize, WireViolation> {
        let Some(Current { total, .. }) = &mut self.current else {
            return Ok(input.len());
        };
        let window_bits = self.window_bits;
        let inflater = self
            .inflater
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, window_bits));
        let mut consumed = 0;
        loop {
            if self.pending_len >= self.pending.len() {
                let size = self.pending.len();
                let full = HEAD_ROOM + self.frame_max;
                if size >= full {
                    break;
                }
                let grown = (size * 2).max(HEAD_ROOM + FRAME_START).min(full);
                self.pending.resize(grown, 0);
            }
            let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
            let status = inflater
                .decompress(
                    &input[consumed..],
                    &mut self.pending[self.pending_len..],
                    FlushDecompress::Sync,
                )
                .map_err(|_| CORRUPT)?;
            let read = (inflater.total_in() - in_before) as usize;
            let wrote = (inflater.total_out() - out_before) as usize;
            consumed += read;
            self.pending_len += wrote;
            *total += wrote;
            if *total > self.max_message_size {
                return Err(TOO_BIG);
            }
            if status == Status::StreamEnd {
                // A final block (BFINAL): what follows is a new deflate stream.
                inflater.reset(false);
            } else if consumed == input.len() && self.pending_len < self.pending.len() {
                return Ok(consumed);
            } else if read == 0 && wrote == 0 {
                // No progress with input and room: zlib cannot make sense of it.
                return Err(CORRUPT);
            }
        }
        self.finish_frame(false);
        Ok(consumed)
    }

    /// Makes the pending payload a frame, ready for the reader.
    fn finish_frame(&mut self, fin: bool) {
        let Some(current) = &mut self.current else {
            return;
        };
        let opcode = if current.started { 0 } else { current.opcode };
        current.started = true;
        let first = (fin as u8) << 7 | opcode;
        let len = self.pending_len - HEAD_ROOM;
        if self.pending.len() < HEAD_ROOM {
            self.pending.resize(HEAD_ROOM, 0);
        }
        let start = if len < 126 {
            self.pending[2] = first;
            self.pending[3] = len as u8;
            2
        } else {
            // len <= frame_max <= INFLATED_FRAME_MAX: a 16-bit length.
            self.pending[0] = first;
            self.pending[1] = 126;
            self.pending[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            0
        };
        self.ready = std::mem::take(&mut self.pending);
        self.ready_pos = start;
        self.ready_end = self.pending_len;
        self.pending_len = HEAD_ROOM;
    }

    /// The whole message is inflated: the last frame is made, and the state is dropped
    /// without context takeover.
    fn finish_message(&mut self) {
        self.finish_frame(true);
        self.current = None;
        self.pending = Vec::new();
        if self.no_context_takeover {
            self.inflater = None;
        }
    }

    /// Copies ready bytes into `buf`.
    fn take_ready(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.ready_end - self.ready_pos).min(buf.remaining());
        buf.put_slice(&self.ready[self.ready_pos..self.ready_pos + n]);
        self.ready_pos += n;
        if self.ready_pos == self.ready_end {
            self.ready_pos = 0;
            self.ready_end = 0;
            let ready = std::mem::take(&mut self.ready);
            // Reuse the buffer for the rest of the message.
            if self.current.is_some() && self.pending.is_empty() {
                self.pending = ready;
            }
        }
    }
}

/// What to do with a frame, from its header.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// Pass it through untouched.
    Raw,
    /// Inflate it; `Some(opcode)` when it starts a message.
    Deflated(Option<u8>),
}

/// The read-side adapter: between the byte stream (after `FrameGuard`) and fastwebsockets'
/// reader. Frames of compressed messages come out inflated, as frames with RSV1 clear and no
/// mask, of at most [`INFLATED_FRAME_MAX`] bytes each (the first with the message's opcode,
/// the last with FIN); every other frame passes through byte for byte.
///
/// Uncompressed traffic is read straight into the reader's buffer and only scanned; only
/// compressed frames go through a buffer of this adapter, which is given back when no
/// compressed message is in progress.
pub(crate) struct InflateRead<R> {
    inner: R,
    wire: Wire,
    stash: Stash,
    inflation: Inflation,
    /// A passed-through header gathered across reads, owed to the reader before its payload:
    /// `head[head_pos..head_end]`.
    head: [u8; 14],
    head_pos: usize,
    head_end: usize,
    /// An uncompressed message is fragmented and not finished.
    raw_fragmented: bool,
    /// The longest compressed frame accepted.
    wire_frame_max: u64,
}

impl<R> std::fmt::Debug for InflateRead<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflateRead")
            .field("wire", &self.wire)
            .field("stash", &(self.stash.end - self.stash.start))
            .field("inflation", &self.inflation)
            .finish_non_exhaustive()
    }
}

impl<R> InflateRead<R> {
    pub(crate) fn new(inner: R, agreed: &Agreed, max_message_size: usize) -> Self {
        InflateRead {
            inner,
            wire: NEW_HEADER,
            stash: Stash::default(),
            inflation: Inflation {
                window_bits: agreed.client_max_window_bits.clamp(9, 15),
                no_context_takeover: agreed.client_no_context_takeover,
                max_message_size,
                frame_max: INFLATED_FRAME_MAX,
                inflater: None,
                current: None,
                pending: Vec::new(),
                pending_len: HEAD_ROOM,
                ready: Vec::new(),
                ready_pos: 0,
                ready_end: 0,
            },
            head: [0; 14],
            head_pos: 0,
            head_end: 0,
            raw_fragmented: false,
            wire_frame_max: u64::MAX,
        }
    }

    /// Holds compressed messages to the layer's frame size limit: a compressed frame on the
    /// wire over `max` bytes fails with 1009, and inflated frames are cut at `max` bytes (at
    /// most [`INFLATED_FRAME_MAX`]), so that the reader's own frame limit never refuses them.
    ///
    /// Without it, compressed frames may have any length (they are inflated as they arrive,
    /// never held whole) and inflated frames are up to [`INFLATED_FRAME_MAX`] bytes.
    pub(crate) fn max_frame_size(mut self, max: usize) -> Self {
        self.wire_frame_max = u64::try_from(max).unwrap_or(u64::MAX);
        self.inflation.frame_max = max.clamp(1, INFLATED_FRAME_MAX);
        self
    }

    /// Decides what to do with the frame of a complete `header`.
    fn classify(&self, header: &[u8]) -> Result<Kind, WireViolation> {
        let rsv1 = header[0] & 0x40 != 0;
        let opcode = header[0] & 0x0f;
        let in_message = self.inflation.current.is_some();
        if header[0] & 0x30 != 0 {
            // RSV2 or RSV3: fastwebsockets refuses the frame.
            return Ok(Kind::Raw);
        }
        let kind = match opcode {
            0x1 | 0x2 if in_message || (rsv1 && self.raw_fragmented) => {
                return Err(NEW_MESSAGE_INSIDE)
            }
            0x1 | 0x2 if rsv1 => Kind::Deflated(Some(opcode)),
            0x0 if rsv1 => return Err(RSV1_CONTINUATION),
            0x0 if in_message => Kind::Deflated(None),
            _ if rsv1 && opcode & 0x08 != 0 => return Err(RSV1_CONTROL),
            // Uncompressed, or RSV1 on a reserved opcode, which fastwebsockets refuses.
            _ => Kind::Raw,
        };
        if kind != Kind::Raw && payload_len(header).0 > self.wire_frame_max {
            return Err(FRAME_TOO_BIG);
        }
        Ok(kind)
    }

    /// Acts on a complete, classified `header`.
    fn commit(&mut self, header: &[u8], kind: &Kind) {
        let fin = header[0] & 0x80 != 0;
        let opcode = header[0] & 0x0f;
        let (len, at) = payload_len(header);
        match kind {
            Kind::Raw => {
                match opcode {
                    0x1 | 0x2 => self.raw_fragmented = !fin,
                    0x0 if fin => self.raw_fragmented = false,
                    _ => {}
                }
                self.wire = if len == 0 {
                    NEW_HEADER
                } else {
                    Wire::Raw { remaining: len }
                };
            }
            Kind::Deflated(start) => {
                if let Some(opcode) = start {
                    self.inflation.begin(*opcode);
                }
                let mask = if header[1] & 0x80 != 0 {
                    [header[at], header[at + 1], header[at + 2], header[at + 3]]
                } else {
                    [0; 4]
                };
                self.wire = match (len, fin) {
                    (0, true) => Wire::Trailer { fed: 0 },
                    (0, false) => NEW_HEADER,
                    _ => Wire::Deflated {
                        remaining: len,
                        mask,
                        offset: 0,
                        fin,
                        unmasked: 0,
                    },
                };
            }
        }
    }

    /// Handles stashed bytes: one step.
    fn step_stash(&mut self, buf: &mut ReadBuf<'_>) -> Result<(), WireViolation> {
        match &mut self.wire {
            Wire::Header { bytes, len } => {
                let data = self.stash.bytes();
                let need = header_len(&bytes[..*len]).unwrap_or(2);
                let take = (need - *len).min(data.len());
                bytes[*len..*len + take].copy_from_slice(&data[..take]);
                *len += take;
                self.stash.consume(take);
                if header_len(&bytes[..*len]) == Some(*len) {
                    let (header, len) = (*bytes, *len);
                    let kind = self.classify(&header[..len])?;
                    if kind == Kind::Raw {
                        self.head[..len].copy_from_slice(&header[..len]);
                        self.head_pos = 0;
                        self.head_end = len;
                    }
                    self.commit(&header[..len], &kind);
                }
            }
            Wire::Raw { remaining } => {
                let data = self.stash.bytes();
                let n = (*remaining).min(data.len() as u64) as usize;
                let n = n.min(buf.remaining());
                buf.put_slice(&data[..n]);
                self.stash.consume(n);
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.wire = NEW_HEADER;
                }
            }
            Wire::Deflated {
                remaining,
                mask,
                offset,
                fin,
                unmasked,
            } => {
                let available = (*remaining).min((self.stash.end - self.stash.start) as u64);
                let available = available as usize;
                let start = self.stash.start;
                let data = &mut self.stash.buf[start..start + available];
                let mut phase = ((*offset + *unmasked as u64) % 4) as usize;
                for byte in &mut data[*unmasked..] {
                    *byte ^= mask[phase];
                    phase = (phase + 1) & 3;
                }
                *unmasked = available;
                let n = self.inflation.feed(data)?;
                self.stash.consume(n);
                *remaining -= n as u64;
                *offset += n as u64;
                *unmasked -= n;
                if *remaining == 0 {
                    self.wire = if *fin {
                        Wire::Trailer { fed: 0 }
                    } else {
                        NEW_HEADER
                    };
                }
            }
            Wire::Trailer { .. } => {}
        }
        Ok(())
    }

    /// Scans bytes the inner stream put straight into the reader's buffer, from `from` on:
    /// whole pass-through frames stay; from the first header that is not (or not yet
    /// whole), the bytes move to the stash.
    fn scan_direct(&mut self, buf: &mut ReadBuf<'_>, from: usize) {
        let end = buf.filled().len();
        let mut at = from;
        while at < end {
            match &mut self.wire {
                Wire::Raw { remaining } => {
                    let n = (*remaining).min((end - at) as u64);
                    at += n as usize;
                    *remaining -= n;
                    if *remaining == 0 {
                        self.wire = NEW_HEADER;
                    }
                }
                _ => {
                    let data = &buf.filled()[at..end];
                    let header = match header_len(data) {
                        Some(len) if len <= data.len() => &data[..len],
                        _ => break,
                    };
                    match self.classify(header) {
                        Ok(Kind::Raw) => {
                            let mut copy = [0; 14];
                            copy[..header.len()].copy_from_slice(header);
                            let len = header.len();
                            self.commit(&copy[..len], &Kind::Raw);
                            at += len;
                        }
                        // Compressed, or refused: handled from the stash, after the
                        // bytes before it are taken.
                        _ => break,
                    }
                }
            }
        }
        if at < end {
            self.stash.push(&buf.filled()[at..end]);
            buf.set_filled(at);
        }
    }

    /// Bytes held by the adapter's buffers (for the bound tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.stash.buf.capacity()
            + self.inflation.pending.capacity()
            + self.inflation.ready.capacity()
    }
}

/// The payload length of a complete frame header, and where the length field ends.
fn payload_len(header: &[u8]) -> (u64, usize) {
    match header[1] & 0x7f {
        126 => (u64::from(u16::from_be_bytes([header[2], header[3]])), 4),
        127 => {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&header[2..10]);
            (u64::from_be_bytes(bytes), 10)
        }
        n => (u64::from(n), 2),
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for InflateRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        loop {
            // One piece per call: what came before an error still reaches the reader.
            if buf.filled().len() > before || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // What is owed to the reader first, in the order it was made.
            if this.head_pos < this.head_end {
                let n = (this.head_end - this.head_pos).min(buf.remaining());
                buf.put_slice(&this.head[this.head_pos..this.head_pos + n]);
                this.head_pos += n;
                continue;
            }
            if this.inflation.has_ready() {
                this.inflation.take_ready(buf);
                continue;
            }
            let result = if let Wire::Trailer { fed } = this.wire {
                this.inflation.feed(&TRAILER[fed..]).map(|n| {
                    // Done once the trailer is in and no full frame stopped the output.
                    if fed + n == TRAILER.len() && !this.inflation.has_ready() {
                        this.inflation.finish_message();
                        this.wire = NEW_HEADER;
                    } else {
                        this.wire = Wire::Trailer { fed: fed + n };
                    }
                })
            } else if !this.stash.is_empty() {
                this.step_stash(buf)
            } else if matches!(this.wire, Wire::Raw { .. } | Wire::Header { len: 0, .. }) {
                // Straight into the reader's buffer.
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                if buf.filled().len() == before {
                    return Poll::Ready(Ok(())); // end of stream
                }
                this.scan_direct(buf, before);
                Ok(())
            } else {
                this.stash.make_room();
                let stash = &mut this.stash;
                let mut read = ReadBuf::new(&mut stash.buf[stash.end..]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                let n = read.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok(())); // end of stream, inside a frame
                }
                stash.end += n;
                Ok(())
            };
            this.stash.settle(this.inflation.current.is_some());
            if let Err(violation) = result {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::AsyncReadExt;

    // --- negotiation ---------------------------------------------------------------------

    fn offer(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(
                http::header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(line).unwrap(),
            );
        }
        headers
    }

    fn answer(lines: &[&str], config: &DeflateConfig) -> Option<(Agreed, String)> {
        negotiate(&offer(lines), config)
            .map(|(agreed, value)| (agreed, value.to_str().unwrap().to_owned()))
    }

    fn default_answer(lines: &[&str]) -> Option<String> {
        answer(lines, &DeflateConfig::new()).map(|(_, value)| value)
    }

    const DEFAULT_AGREED: Agreed = Agreed {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };

    #[test]
    fn no_offer_means_no_compression() {
        assert_eq!(answer(&[], &DeflateConfig::new()), None);
    }

    #[test]
    fn a_plain_offer_is_accepted_with_the_defaults() {
        assert_eq!(
            answer(&["permessage-deflate"], &DeflateConfig::new()),
            Some((DEFAULT_AGREED, "permessage-deflate".to_owned()))
        );
    }

    #[test]
    fn other_extension_names_are_ignored() {
        assert_eq!(default_answer(&["x-webkit-deflate-frame"]), None);
        assert_eq!(
            default_answer(&["foo; bar=1, permessage-deflate"]).as_deref(),
            Some("permessage-deflate")
        );
    }

    #[test]
    fn offers_are_tried_in_order() {
        assert_eq!(
            default_answer(&["permessage-deflate; server_max_window_bits=10, permessage-deflate"])
                .as_deref(),
            Some("permessage-deflate; server_max_window_bits=10")
        );
    }

    #[test]
    fn every_header_line_is_read() {
        assert_eq!(
            default_answer(&[
                "foo",
                "permessage-deflate; bogus",
                "permessage-deflate; client_no_context_takeover"
            ])
            .as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
    }

    #[test]
    fn an_unknown_parameter_declines_the_offer() {
        assert_eq!(default_answer(&["permessage-deflate; foo"]), None);
        assert_eq!(
            default_answer(&["permessage-deflate; foo=1, permessage-deflate"]).as_deref(),
            Some("permessage-deflate")
        );
    }

    #[test]
    fn a_duplicate_parameter_declines_the_offer() {
        for dup in [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        ] {
            assert_eq!(default_answer(&[dup]), None, "{dup}");
        }
    }

    #[test]
    fn a_malformed_offer_is_declined_and_the_next_one_tried() {
        for bad in [
            "permessage-deflate;",
            "permessage-deflate; ;server_no_context_takeover",
            "permessage-deflate; =10",
            "permessage-deflate; server_max_window_bits=",
            "permessage-deflate; client_max_window_bits=\"10",
            "permessage deflate",
            "permessage-deflate; server max_window_bits=10",
        ] {
            assert_eq!(default_answer(&[bad]), None, "{bad}");
            let line = format!("{bad}, permessage-deflate; client_no_context_takeover");
            assert_eq!(
                default_answer(&[&line]).as_deref(),
                // An unterminated quote swallows the rest of the line.
                if bad.contains('"') {
                    None
                } else {
                    Some("permessage-deflate; client_no_context_takeover")
                },
                "{line}"
            );
        }
    }

    #[test]
    fn an_invalid_window_value_declines_the_offer() {
        for value in ["7", "16", "010", "0", "x", "9.5", "+9", "\"\"", "\"1 0\""] {
            for param in ["server_max_window_bits", "client_max_window_bits"] {
                let line = format!("permessage-deflate; {param}={value}");
                assert_eq!(default_answer(&[&line]), None, "{line}");
            }
        }
    }

    #[test]
    fn server_max_window_bits_needs_a_value() {
        assert_eq!(
            default_answer(&["permessage-deflate; server_max_window_bits"]),
            None
        );
    }

    #[test]
    fn a_server_window_of_8_bits_is_declined() {
        assert_eq!(
            default_answer(&["permessage-deflate; server_max_window_bits=8"]),
            None
        );
        assert_eq!(
            default_answer(&[
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9"
            ])
            .as_deref(),
            Some("permessage-deflate; server_max_window_bits=9")
        );
    }

    #[test]
    fn no_context_takeover_takes_no_value() {
        assert_eq!(
            default_answer(&["permessage-deflate; server_no_context_takeover=1"]),
            None
        );
        assert_eq!(
            default_answer(&["permessage-deflate; client_no_context_takeover=\"\""]),
            None
        );
    }

    #[test]
    fn quoted_values_are_unquoted() {
        let (agreed, value) = answer(
            &["permessage-deflate; server_max_window_bits=\"10\"; client_max_window_bits=\"1\\2\""],
            &DeflateConfig::new(),
        )
        .unwrap();
        assert_eq!(agreed.server_max_window_bits, 10);
        assert_eq!(agreed.client_max_window_bits, 12);
        assert_eq!(
            value,
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=12"
        );
    }

    #[test]
    fn a_comma_inside_quotes_does_not_split_offers() {
        // The quoted value is invalid, so the first offer is declined, as one offer.
        assert_eq!(
            default_answer(&[
                "permessage-deflate; client_max_window_bits=\"10, permessage-deflate\""
            ]),
            None
        );
    }

    #[test]
    fn names_are_case_insensitive_and_whitespace_is_allowed() {
        assert_eq!(
            default_answer(&["  Permessage-Deflate ;\tServer_No_Context_Takeover ; server_max_window_bits = 12 ,"])
                .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=12")
        );
    }

    #[test]
    fn server_no_context_takeover_offered_is_agreed_and_answered() {
        let (agreed, value) = answer(
            &["permessage-deflate; server_no_context_takeover"],
            &DeflateConfig::new(),
        )
        .unwrap();
        assert!(agreed.server_no_context_takeover);
        assert!(!agreed.client_no_context_takeover);
        assert_eq!(value, "permessage-deflate; server_no_context_takeover");
    }

    #[test]
    fn client_no_context_takeover_offered_is_agreed_and_answered() {
        let (agreed, value) = answer(
            &["permessage-deflate; client_no_context_takeover"],
            &DeflateConfig::new(),
        )
        .unwrap();
        assert!(agreed.client_no_context_takeover);
        assert_eq!(value, "permessage-deflate; client_no_context_takeover");
    }

    #[test]
    fn configured_no_context_takeover_is_imposed() {
        let config = DeflateConfig::new()
            .server_no_context_takeover(true)
            .client_no_context_takeover(true);
        let (agreed, value) = answer(&["permessage-deflate"], &config).unwrap();
        assert!(agreed.server_no_context_takeover && agreed.client_no_context_takeover);
        assert_eq!(
            value,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn the_server_may_use_a_smaller_window_than_offered() {
        let config = DeflateConfig::new().server_max_window_bits(10);
        let (agreed, value) =
            answer(&["permessage-deflate; server_max_window_bits=12"], &config).unwrap();
        assert_eq!(agreed.server_max_window_bits, 10);
        assert_eq!(value, "permessage-deflate; server_max_window_bits=10");
        // And never a larger one.
        let (agreed, value) = answer(
            &["permessage-deflate; server_max_window_bits=9"],
            &DeflateConfig::new(),
        )
        .unwrap();
        assert_eq!(agreed.server_max_window_bits, 9);
        assert_eq!(value, "permessage-deflate; server_max_window_bits=9");
    }

    #[test]
    fn an_offered_server_window_is_always_answered() {
        assert_eq!(
            default_answer(&["permessage-deflate; server_max_window_bits=15"]).as_deref(),
            Some("permessage-deflate; server_max_window_bits=15")
        );
    }

    #[test]
    fn a_smaller_server_window_is_announced_unasked() {
        let config = DeflateConfig::new().server_max_window_bits(11);
        let (agreed, value) = answer(&["permessage-deflate"], &config).unwrap();
        assert_eq!(agreed.server_max_window_bits, 11);
        assert_eq!(value, "permessage-deflate; server_max_window_bits=11");
    }

    #[test]
    fn client_max_window_bits_is_never_answered_unless_offered() {
        let config = DeflateConfig::new().client_max_window_bits(10);
        let (agreed, value) = answer(&["permessage-deflate"], &config).unwrap();
        // The client was not asked: it may use 15, and the inflater must take that.
        assert_eq!(agreed.client_max_window_bits, 15);
        assert_eq!(value, "permessage-deflate");
    }

    #[test]
    fn client_max_window_bits_without_value_takes_the_configured_window() {
        let offer = ["permessage-deflate; client_max_window_bits"];
        assert_eq!(
            answer(&offer, &DeflateConfig::new()),
            Some((DEFAULT_AGREED, "permessage-deflate".to_owned()))
        );
        let config = DeflateConfig::new().client_max_window_bits(10);
        let (agreed, value) = answer(&offer, &config).unwrap();
        assert_eq!(agreed.client_max_window_bits, 10);
        assert_eq!(value, "permessage-deflate; client_max_window_bits=10");
    }

    #[test]
    fn client_max_window_bits_with_value_is_honoured() {
        let (agreed, value) = answer(
            &["permessage-deflate; client_max_window_bits=10"],
            &DeflateConfig::new(),
        )
        .unwrap();
        assert_eq!(agreed.client_max_window_bits, 10);
        assert_eq!(value, "permessage-deflate; client_max_window_bits=10");
        let config = DeflateConfig::new().client_max_window_bits(9);
        let (agreed, _) =
            answer(&["permessage-deflate; client_max_window_bits=10"], &config).unwrap();
        assert_eq!(agreed.client_max_window_bits, 9);
    }

    #[test]
    fn a_client_window_of_8_bits_is_accepted() {
        // The client compresses with 8; an inflater with 9 reads that.
        let (agreed, value) = answer(
            &["permessage-deflate; client_max_window_bits=8"],
            &DeflateConfig::new(),
        )
        .unwrap();
        assert_eq!(agreed.client_max_window_bits, 8);
        assert_eq!(value, "permessage-deflate; client_max_window_bits=8");
    }

    #[test]
    fn a_header_that_is_not_ascii_is_skipped() {
        let mut headers = offer(&[]);
        headers.append(
            http::header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_bytes(b"permessage-deflate; x=\xe9").unwrap(),
        );
        headers.append(
            http::header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate"),
        );
        assert!(negotiate(&headers, &DeflateConfig::new()).is_some());
    }

    // --- config --------------------------------------------------------------------------

    #[test]
    fn config_defaults() {
        let config = DeflateConfig::default();
        assert_eq!(config.level, 1);
        assert_eq!(config.threshold, DEFAULT_THRESHOLD);
        assert_eq!(config.server_max_window_bits, 15);
        assert_eq!(config.client_max_window_bits, 15);
        assert!(!config.server_no_context_takeover);
        assert!(!config.client_no_context_takeover);
    }

    #[test]
    #[should_panic(expected = "server_max_window_bits must be 9..=15")]
    fn a_server_window_of_8_bits_cannot_be_configured() {
        let _ = DeflateConfig::new().server_max_window_bits(8);
    }

    #[test]
    #[should_panic(expected = "client_max_window_bits must be 9..=15")]
    fn a_client_window_of_16_bits_cannot_be_configured() {
        let _ = DeflateConfig::new().client_max_window_bits(16);
    }

    #[test]
    #[should_panic(expected = "deflate level must be 0..=9")]
    fn a_level_over_9_cannot_be_configured() {
        let _ = DeflateConfig::new().level(10);
    }

    // --- frames --------------------------------------------------------------------------

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: masked, with the given RSV bits (0x40 = RSV1).
    fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(fin as u8) << 7 | rsv | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Parsed {
        fin: bool,
        rsv: u8,
        opcode: u8,
        masked: bool,
        payload: Vec<u8>,
    }

    /// Parses the adapter's output (frames as fastwebsockets will read them).
    fn parse(mut bytes: &[u8]) -> Vec<Parsed> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let len = header_len(bytes).unwrap();
            let (mut n, at) = match bytes[1] & 0x7f {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            let masked = bytes[1] & 0x80 != 0;
            let mut payload = bytes[len..len + n].to_vec();
            if masked {
                let mask = &bytes[at..at + 4];
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= mask[i % 4]);
            }
            frames.push(Parsed {
                fin: bytes[0] & 0x80 != 0,
                rsv: bytes[0] & 0x70,
                opcode: bytes[0] & 0x0f,
                masked,
                payload,
            });
            n += len;
            bytes = &bytes[n..];
        }
        frames
    }

    /// Data messages (opcode, payload) from frames, checking that no inflated frame is masked,
    /// has RSV bits or is over the bound; control frames are returned in line.
    fn messages(frames: &[Parsed]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut current: Option<(u8, Vec<u8>)> = None;
        for frame in frames {
            assert_eq!(frame.rsv, 0, "{frame:?}");
            assert!(frame.payload.len() <= INFLATED_FRAME_MAX);
            match frame.opcode {
                0x0 => current
                    .as_mut()
                    .unwrap()
                    .1
                    .extend_from_slice(&frame.payload),
                0x1 | 0x2 => {
                    assert!(current.is_none());
                    current = Some((frame.opcode, frame.payload.clone()));
                }
                op => out.push((op, frame.payload.clone())),
            }
            if frame.fin && frame.opcode < 0x8 {
                out.push(current.take().unwrap());
            }
        }
        assert!(current.is_none(), "unfinished message");
        out
    }

    /// An inner stream that gives at most `piece` bytes per read, and says Pending every
    /// other call.
    struct Trickle<'a> {
        data: &'a [u8],
        piece: usize,
        calls: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.calls += 1;
            if self.calls % 2 == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = self.piece.min(self.data.len()).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(()))
        }
    }

    fn agreed(client_no_context_takeover: bool, client_bits: u8) -> Agreed {
        Agreed {
            client_no_context_takeover,
            client_max_window_bits: client_bits,
            ..DEFAULT_AGREED
        }
    }

    /// Reads everything through an `InflateRead` over `input`, given `piece` bytes per
    /// inner read and asking with a buffer of `ask` bytes; checks the bound on what it holds.
    async fn inflate_all(
        input: &[u8],
        agreed: &Agreed,
        max: usize,
        piece: usize,
        ask: usize,
    ) -> Result<Vec<u8>, WireViolation> {
        let inner = Trickle {
            data: input,
            piece,
            calls: 0,
        };
        let mut reader = InflateRead::new(inner, agreed, max);
        let mut out = Vec::new();
        let mut buf = vec![0; ask];
        loop {
            let result = reader.read(&mut buf).await;
            assert!(
                reader.held() <= 2 * (HEAD_ROOM + INFLATED_FRAME_MAX) + STASH_SIZE + ask,
                "holds {} bytes",
                reader.held()
            );
            match result {
                Ok(0) => return Ok(out),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => {
                    let violation = e
                        .get_ref()
                        .and_then(|e| e.downcast_ref::<WireViolation>())
                        .copied()
                        .unwrap_or_else(|| panic!("{e}"));
                    return Err(violation);
                }
            }
        }
    }

    async fn inflate_messages(input: &[u8], agreed: &Agreed) -> Vec<(u8, Vec<u8>)> {
        messages(&parse(
            &inflate_all(input, agreed, 16 << 20, 1 << 20, 8192)
                .await
                .unwrap(),
        ))
    }

    /// The server's compressor, used here as a client's would be (same algorithm).
    fn compressor(no_context_takeover: bool, bits: u8) -> Compressor {
        let agreed = Agreed {
            server_no_context_takeover: no_context_takeover,
            server_max_window_bits: bits,
            ..DEFAULT_AGREED
        };
        Compressor::new(&agreed, &DeflateConfig::new().threshold(0))
    }

    fn text(i: usize) -> Vec<u8> {
        format!(
            "{{\"id\":{i},\"user\":\"someone\",\"text\":\"message number {i}, much like the others\"}}"
        )
        .into_bytes()
    }

    /// Pseudo-random bytes: incompressible.
    fn noise(len: usize, mut seed: u32) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect()
    }

    #[test]
    fn rfc_7692_examples_inflate() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let hello = |payload: &[u8]| frame(true, 0x40, 0x1, payload);
        let mut wire = Vec::new();
        // 7.2.3.1: one compressed "Hello", then the same split in two frames.
        wire.extend(hello(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]));
        // 7.2.3.2: with context takeover, the second "Hello" refers to the first.
        wire.extend(hello(&[0xf2, 0x00, 0x11, 0x00, 0x00]));
        // 7.2.3.3: a stored block.
        wire.extend(hello(&[
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ]));
        // 7.2.3.5: two blocks in one message.
        wire.extend(hello(&[
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ]));
        // 7.2.3.4: a final block (BFINAL): the next message starts a new stream.
        wire.extend(hello(&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00]));
        wire.extend(hello(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]));
        // 7.2.3.1, fragmented.
        wire.extend(frame(false, 0x40, 0x1, &[0xf2, 0x48, 0xcd]));
        wire.extend(frame(true, 0x00, 0x0, &[0xc9, 0xc9, 0x07, 0x00]));
        // 7.2.3.6: an empty message.
        wire.extend(frame(true, 0x40, 0x2, &[0x00]));
        let got = rt.block_on(inflate_messages(&wire, &DEFAULT_AGREED));
        let hello = (1, b"Hello".to_vec());
        assert_eq!(
            got,
            vec![hello.clone(); 7]
                .into_iter()
                .chain([(2, vec![])])
                .collect::<Vec<_>>()
        );
    }

    /// Compresses `messages` as a client would and frames them (split into frames of
    /// `fragment` bytes of compressed payload), with a ping between fragments.
    fn client_wire(messages: &[Vec<u8>], compressor: &mut Compressor, fragment: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            let opcode = if i % 2 == 0 { 0x1 } else { 0x2 };
            let compressed = compressor.compress(message).unwrap();
            let chunks: Vec<&[u8]> = if compressed.is_empty() {
                vec![&[]]
            } else {
                compressed.chunks(fragment).collect()
            };
            for (j, chunk) in chunks.iter().enumerate() {
                let first = j == 0;
                let last = j == chunks.len() - 1;
                let rsv = if first { 0x40 } else { 0 };
                wire.extend(frame(last, rsv, if first { opcode } else { 0 }, chunk));
                if j == 0 && !last {
                    wire.extend(frame(true, 0, 0x9, b"ping"));
                }
            }
        }
        wire
    }

    fn expected(messages: &[Vec<u8>]) -> Vec<(u8, Vec<u8>)> {
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| (if i % 2 == 0 { 1 } else { 2 }, m.clone()))
            .collect()
    }

    fn pings(frames: &[Parsed]) -> usize {
        frames.iter().filter(|f| f.opcode == 0x9).count()
    }

    fn without_pings(messages: Vec<(u8, Vec<u8>)>) -> Vec<(u8, Vec<u8>)> {
        messages.into_iter().filter(|(op, _)| *op != 0x9).collect()
    }

    #[tokio::test]
    async fn round_trip_with_context_takeover() {
        // Empty messages too: after the first, one is the single byte 0x00.
        let msgs: Vec<_> = (0..20)
            .map(|i| if i % 7 == 3 { Vec::new() } else { text(i) })
            .collect();
        let mut comp = compressor(false, 15);
        let wire = client_wire(&msgs, &mut comp, usize::MAX);
        let got = inflate_messages(&wire, &agreed(false, 15)).await;
        assert_eq!(got, expected(&msgs));
    }

    #[tokio::test]
    async fn round_trip_without_context_takeover() {
        let msgs: Vec<_> = (0..20)
            .map(|i| if i % 7 == 3 { Vec::new() } else { text(i) })
            .collect();
        let mut comp = compressor(true, 15);
        let wire = client_wire(&msgs, &mut comp, usize::MAX);
        let got = inflate_messages(&wire, &agreed(true, 15)).await;
        assert_eq!(got, expected(&msgs));
    }

    #[tokio::test]
    async fn context_takeover_is_kept_between_messages() {
        let message = text(7);
        let mut keep = compressor(false, 15);
        let first = keep.compress(&message).unwrap();
        let second = keep.compress(&message).unwrap();
        assert!(
            second.len() < first.len() / 2,
            "{} then {}",
            first.len(),
            second.len()
        );
        let mut fresh = compressor(true, 15);
        let first = fresh.compress(&message).unwrap();
        let second = fresh.compress(&message).unwrap();
        assert_eq!(first, second);
        assert!(fresh.deflater.is_none(), "dropped after each message");
    }

    #[tokio::test]
    async fn large_messages_round_trip() {
        let mut big_text = Vec::new();
        while big_text.len() < 1 << 20 {
            big_text.extend_from_slice(&text(big_text.len()));
        }
        big_text.truncate(1 << 20);
        let msgs = vec![big_text, noise(1 << 20, 7), vec![b'a'; 3 << 20]];
        for no_context_takeover in [false, true] {
            let mut comp = compressor(no_context_takeover, 15);
            let wire = client_wire(&msgs, &mut comp, usize::MAX);
            let output = inflate_all(
                &wire,
                &agreed(no_context_takeover, 15),
                16 << 20,
                1 << 16,
                1 << 16,
            )
            .await
            .unwrap();
            let frames = parse(&output);
            assert!(frames.iter().all(|f| !f.masked && f.rsv == 0));
            assert!(frames.len() > 3 * 16, "split into bounded frames");
            assert_eq!(messages(&frames), expected(&msgs));
        }
    }

    #[tokio::test]
    async fn fragmented_compressed_messages_round_trip_with_pings_between() {
        let mut msgs: Vec<_> = (0..10).map(|i| text(i).repeat(50)).collect();
        msgs.push(noise(200_000, 3));
        for no_context_takeover in [false, true] {
            let mut comp = compressor(no_context_takeover, 15);
            let wire = client_wire(&msgs, &mut comp, 16);
            let sent_pings = pings(&parse(&wire));
            assert!(sent_pings > 5);
            let got = inflate_messages(&wire, &agreed(no_context_takeover, 15)).await;
            let got_pings = got
                .iter()
                .filter(|(op, m)| *op == 0x9 && m == b"ping")
                .count();
            assert_eq!(got_pings, sent_pings);
            assert_eq!(without_pings(got), expected(&msgs));
        }
    }

    #[tokio::test]
    async fn tiny_reads_and_tiny_buffers() {
        let mut msgs: Vec<_> = (0..6).map(|i| text(i).repeat(i * 30 + 1)).collect();
        msgs.push(Vec::new());
        msgs.push(noise(70_000, 11));
        let mut comp = compressor(false, 15);
        let mut wire = frame(true, 0, 0x1, b"plain before");
        wire.extend(client_wire(&msgs, &mut comp, 37));
        wire.extend(frame(false, 0, 0x2, b"plain "));
        wire.extend(frame(true, 0, 0x9, b""));
        wire.extend(frame(true, 0, 0x0, b"after"));
        let mut want = vec![(1, b"plain before".to_vec())];
        want.extend(expected(&msgs));
        want.push((2, b"plain after".to_vec()));
        for piece in [1, 3, 7, 1000] {
            for ask in [1, 3, 7, 8192] {
                let output = inflate_all(&wire, &agreed(false, 15), 16 << 20, piece, ask)
                    .await
                    .unwrap_or_else(|e| panic!("piece {piece} ask {ask}: {e:?}"));
                let frames = parse(&output);
                assert_eq!(pings(&frames), pings(&parse(&wire)));
                let got = messages(&frames);
                assert_eq!(without_pings(got), want, "piece {piece} ask {ask}");
            }
        }
    }

    #[tokio::test]
    async fn window_bits_are_honoured() {
        let mut msgs: Vec<_> = (0..5).map(|i| text(i).repeat(40)).collect();
        msgs.push(noise(5000, 5).repeat(3));
        for bits in 9..=15 {
            let mut comp = compressor(false, bits);
            let wire = client_wire(&msgs, &mut comp, usize::MAX);
            let got = inflate_messages(&wire, &agreed(false, bits)).await;
            assert_eq!(got, expected(&msgs), "{bits} bits");
        }
    }

    #[tokio::test]
    async fn a_deflate_bomb_fails_with_1009_without_being_inflated() {
        let zeros = vec![0u8; 50 << 20];
        let mut best = Compressor::new(&DEFAULT_AGREED, &DeflateConfig::new().level(9));
        let compressed = best.compress(&zeros).unwrap();
        drop(zeros);
        assert!(compressed.len() < 100 << 10, "{}", compressed.len());
        let wire = frame(true, 0x40, 0x2, &compressed);
        let started = std::time::Instant::now();
        // `inflate_all` checks the adapter's bound at every read.
        let result = inflate_all(&wire, &agreed(false, 15), 16 << 20, 1 << 16, 1 << 16).await;
        assert_eq!(result.unwrap_err().code, CloseCode::MESSAGE_TOO_BIG);
        // Also when the limit is passed inside one inflater call.
        let result = inflate_all(&wire, &agreed(false, 15), 1000, 1 << 16, 1 << 16).await;
        assert_eq!(result, Err(TOO_BIG));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[tokio::test]
    async fn exactly_max_message_size_is_allowed() {
        let message = vec![b'x'; 100_000];
        let compressed = compressor(true, 15).compress(&message).unwrap();
        let wire = frame(true, 0x40, 0x2, &compressed);
        assert!(
            inflate_all(&wire, &agreed(false, 15), 100_000, 1 << 16, 1 << 16)
                .await
                .is_ok()
        );
        assert_eq!(
            inflate_all(&wire, &agreed(false, 15), 99_999, 1 << 16, 1 << 16).await,
            Err(TOO_BIG)
        );
    }

    #[tokio::test]
    async fn corrupt_deflate_data_fails_with_1007() {
        // Block type 3 does not exist.
        let wire = frame(true, 0x40, 0x1, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, 100, 100).await,
            Err(CORRUPT)
        );
        // A distance before the start of the stream.
        let wire = frame(true, 0x40, 0x1, &[0xf2, 0x00, 0x11, 0x00, 0x00]);
        assert_eq!(
            inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, 100, 100).await,
            Err(CORRUPT)
        );
    }

    #[tokio::test]
    async fn rsv1_on_a_continuation_fails_with_1002() {
        let mut wire = frame(false, 0x40, 0x1, &[0xf2, 0x48, 0xcd]);
        wire.extend(frame(true, 0x40, 0x0, &[0xc9, 0xc9, 0x07, 0x00]));
        assert_eq!(
            inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, 100, 100).await,
            Err(RSV1_CONTINUATION)
        );
        // Also on an uncompressed message's continuation.
        let mut wire = frame(false, 0, 0x1, b"a");
        wire.extend(frame(true, 0x40, 0x0, b"b"));
        assert_eq!(
            inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, 100, 100).await,
            Err(RSV1_CONTINUATION)
        );
    }

    #[tokio::test]
    async fn rsv1_on_a_control_frame_fails_with_1002_after_what_came_before() {
        for opcode in [0x8, 0x9, 0xa] {
            let mut wire = frame(true, 0, 0x1, b"before");
            wire.extend(frame(true, 0x40, opcode, b""));
            let inner = &wire[..];
            let mut reader = InflateRead::new(inner, &DEFAULT_AGREED, 1 << 20);
            let mut buf = vec![0; 1024];
            // The frame before the bad one is delivered first.
            let n = reader.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &frame(true, 0, 0x1, b"before")[..]);
            let e = reader.read(&mut buf).await.unwrap_err();
            let violation = e
                .get_ref()
                .unwrap()
                .downcast_ref::<WireViolation>()
                .unwrap();
            assert_eq!(*violation, RSV1_CONTROL);
            assert_eq!(violation.code, CloseCode::PROTOCOL_ERROR);
        }
    }

    #[tokio::test]
    async fn a_new_message_inside_a_compressed_one_fails_with_1002() {
        for (rsv, opcode) in [(0x40, 0x1), (0, 0x1), (0, 0x2)] {
            let mut wire = frame(false, 0x40, 0x1, &[0xf2, 0x48, 0xcd]);
            wire.extend(frame(true, rsv, opcode, b"x"));
            assert_eq!(
                inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, 100, 100).await,
                Err(NEW_MESSAGE_INSIDE)
            );
        }
        // A compressed message inside an uncompressed one.
        let mut wire = frame(false, 0, 0x1, b"x");
        wire.extend(frame(
            true,
            0x40,
            0x1,
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
        ));
        assert_eq!(
            inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, 100, 100).await,
            Err(NEW_MESSAGE_INSIDE)
        );
    }

    #[tokio::test]
    async fn uncompressed_frames_pass_byte_for_byte() {
        let mut wire = frame(true, 0, 0x1, b"hello");
        wire.extend(frame(false, 0, 0x2, &noise(70_000, 1)));
        wire.extend(frame(true, 0, 0x9, b"ping"));
        wire.extend(frame(true, 0, 0x0, &noise(300, 2)));
        wire.extend(frame(true, 0, 0x1, &[0xff, 0xfe])); // invalid UTF-8: not ours to judge
        wire.extend(frame(true, 0x20, 0x1, b"rsv2")); // fastwebsockets refuses it
        wire.extend(frame(true, 0x50, 0x1, b"rsv1+rsv3"));
        wire.extend(frame(true, 0x40, 0x3, b"reserved opcode"));
        wire.extend(frame(true, 0, 0x8, &[0x03, 0xe8]));
        wire.extend(frame(false, 0, 0x1, b"unfinished"));
        for piece in [1, 3, 7, 100, 1 << 20] {
            for ask in [1, 5, 8192] {
                let output = inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, piece, ask)
                    .await
                    .unwrap();
                assert!(output == wire, "piece {piece} ask {ask}");
            }
        }
    }

    #[tokio::test]
    async fn max_frame_size_bounds_compressed_and_inflated_frames() {
        let message = text(3).repeat(100);
        let mut comp = compressor(false, 15);
        let wire = client_wire(std::slice::from_ref(&message), &mut comp, usize::MAX);
        let compressed_len = parse(&wire)[0].payload.len();
        let mut reader = InflateRead::new(&wire[..], &DEFAULT_AGREED, 1 << 20).max_frame_size(1000);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        let frames = parse(&out);
        assert!(frames.len() > 5);
        assert!(frames.iter().all(|f| f.payload.len() <= 1000));
        assert_eq!(messages(&frames), vec![(1, message)]);
        // A compressed frame over the limit.
        let mut reader = InflateRead::new(&wire[..], &DEFAULT_AGREED, 1 << 20)
            .max_frame_size(compressed_len - 1);
        let e = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
        let violation = e
            .get_ref()
            .unwrap()
            .downcast_ref::<WireViolation>()
            .unwrap();
        assert_eq!(*violation, FRAME_TOO_BIG);
    }

    #[tokio::test]
    async fn uncompressed_reads_need_no_buffer_of_ours() {
        let mut wire = Vec::new();
        for i in 0..100 {
            wire.extend(frame(true, 0, 0x1, &text(i)));
        }
        let mut reader = InflateRead::new(&wire[..], &DEFAULT_AGREED, 1 << 20);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, wire);
        assert_eq!(reader.held(), 0);
    }

    #[tokio::test]
    async fn idle_state_is_dropped_without_context_takeover() {
        let mut comp = compressor(true, 15);
        let wire = client_wire(&[text(1).repeat(10)], &mut comp, usize::MAX);
        let mut reader = InflateRead::new(&wire[..], &agreed(true, 15), 1 << 20);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        assert!(reader.inflation.inflater.is_none());
        assert_eq!(reader.held(), 0);
        // With context takeover, only the inflater stays.
        let mut comp = compressor(false, 15);
        let wire = client_wire(&[text(1).repeat(10)], &mut comp, usize::MAX);
        let mut reader = InflateRead::new(&wire[..], &agreed(false, 15), 1 << 20);
        reader.read_to_end(&mut Vec::new()).await.unwrap();
        assert!(reader.inflation.inflater.is_some());
        assert_eq!(reader.held(), 0);
    }

    #[test]
    fn the_threshold_is_decided_before_compressing() {
        let agreed = DEFAULT_AGREED;
        let mut comp = Compressor::new(&agreed, &DeflateConfig::new().threshold(100));
        assert_eq!(comp.compress(&[b'a'; 99]), None);
        assert!(
            comp.deflater.is_none(),
            "nothing allocated for a small message"
        );
        assert!(comp.compress(&[b'a'; 100]).is_some());
        let mut comp = Compressor::new(&agreed, &DeflateConfig::new());
        assert_eq!(comp.compress(&[b'a'; DEFAULT_THRESHOLD - 1]), None);
        assert!(comp.compress(&[b'a'; DEFAULT_THRESHOLD]).is_some());
    }

    #[test]
    fn compressed_output_has_no_trailer_and_inflates_with_it() {
        // Checked with a plain inflater kept across messages, independently of `InflateRead`.
        let mut comp = compressor(false, 15);
        let mut inflater = Decompress::new(false);
        for message in [text(1), text(2), vec![], vec![], noise(100_000, 9), text(1)] {
            let compressed = comp.compress(&message).unwrap();
            assert!(!compressed.ends_with(&TRAILER));
            let mut input = compressed.to_vec();
            input.extend_from_slice(&TRAILER);
            let mut out = Vec::with_capacity(message.len() + 64);
            inflater
                .decompress_vec(&input, &mut out, FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out, message);
        }
    }

    #[test]
    fn the_agreed_server_window_is_used() {
        // A 9-bit window cannot refer 1000 bytes back, a 15-bit one can.
        let block = noise(1000, 4);
        let message = block.repeat(4);
        let small = compressor(false, 9).compress(&message).unwrap();
        let large = compressor(false, 15).compress(&message).unwrap();
        assert!(small.len() > 3000, "{}", small.len());
        assert!(large.len() < 1500, "{}", large.len());
    }

    /// Memory per connection, by RSS: run with
    /// `cargo test --lib deflate::tests::memory_per_connection -- --ignored --nocapture --test-threads=1`.
    #[test]
    #[ignore]
    fn memory_per_connection() {
        fn rss() -> usize {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            statm
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<usize>()
                .unwrap()
                * 4096
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        const N: usize = 500;
        for (server_nct, client_nct, bits) in [
            (false, false, 15),
            (true, false, 15),
            (false, true, 15),
            (true, true, 15),
            (false, false, 10),
        ] {
            let agreed = Agreed {
                server_no_context_takeover: server_nct,
                client_no_context_takeover: client_nct,
                server_max_window_bits: bits,
                client_max_window_bits: bits,
            };
            let message = text(1).repeat(20);
            let mut client = Compressor::new(
                &Agreed {
                    server_no_context_takeover: client_nct,
                    server_max_window_bits: bits,
                    ..agreed
                },
                &DeflateConfig::new(),
            );
            let wire = client_wire(std::slice::from_ref(&message), &mut client, usize::MAX);
            let start = rss();
            let mut held = Vec::with_capacity(N);
            for _ in 0..N {
                let mut comp = Compressor::new(&agreed, &DeflateConfig::new());
                comp.compress(&message).unwrap();
                let mut reader = InflateRead::new(&wire[..], &agreed, 1 << 20);
                rt.block_on(reader.read_to_end(&mut Vec::new())).unwrap();
                held.push((comp, reader));
            }
            let per = (rss() - start) / N;
            println!(
                "server_no_context_takeover={server_nct} client_no_context_takeover={client_nct} \
                 window={bits}: {} KiB per connection",
                per / 1024
            );
            drop(held);
        }
    }
}
