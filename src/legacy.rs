//! The legacy drafts hixie-76 and hixie-75 (feature `hixie76`, turned on per layer with
//! [`WebSocketLayer::legacy_drafts`](crate::WebSocketLayer::legacy_drafts)).
//!
//! Old embedded clients, kiosks and set-top boxes still speak the drafts that came before RFC
//! 6455. With the setting on, the layer answers them on the same routes and with the same
//! handler; [`WebSocket::version`](crate::WebSocket::version) is 76 or 75 for them.
//!
//! ```
//! use tower_websocket::{WebSocket, WebSocketLayer};
//!
//! async fn echo(mut ws: WebSocket) {
//!     while let Some(msg) = ws.recv().await {
//!         // Drafts carry text only: a binary send would fail with `BinaryOnLegacyDraft`.
//!         if ws.send(msg).await.is_err() {
//!             break;
//!         }
//!     }
//! }
//!
//! let layer = WebSocketLayer::new(echo).legacy_drafts(true);
//! # let _ = layer;
//! ```
//!
//! # The handshake, and how it fits hyper
//!
//! A hixie-76 client sends its request head and then 8 key bytes that no header announces.
//! Hyper parses the head as a `GET` without a body, so the 8 bytes stay in its read buffer,
//! and it hands them over only with the upgraded connection, which it gives out after it has
//! written the response head the service returned. The handshake is therefore split in two:
//!
//! 1. In the service, before anything is written: the request is checked (both keys, each
//!    with at least one space and a number divisible by its spaces; no RFC 6455 header mixed
//!    in; a `Host`), then the origin policy, the subprotocol, the `before_upgrade` hook, the
//!    shutdown state and the connection limit, exactly as for RFC 6455. A refusal is an HTTP
//!    response (400 with a body that says what is wrong, 403, 503). Otherwise the service
//!    returns the draft's head, which hyper writes: `101 WebSocket Protocol Handshake` (the
//!    reason phrase is set with hyper's `ReasonPhrase` extension), `Upgrade: WebSocket`,
//!    `Connection: Upgrade`, `Sec-WebSocket-Origin`, `Sec-WebSocket-Location` and the agreed
//!    `Sec-WebSocket-Protocol`. hixie-75 gets `101 Web Socket Protocol Handshake` with
//!    `WebSocket-Origin`, `WebSocket-Location` and `WebSocket-Protocol`, and no challenge.
//! 2. In the connection task: the 8 key bytes are read, first from the request body (a
//!    client that announces them with `Content-Length: 8` has them parsed as a body by hyper,
//!    which is why the service needs a readable body with this feature), then from the
//!    upgraded connection (where they are usually already in hyper's buffer), waiting at most
//!    the layer's
//!    [`close_timeout`](crate::WebSocketLayer::close_timeout), and the 16-byte MD5 answer is
//!    written; only then does the handler start. Key bytes that do not come in time cannot get
//!    a 400, since the `101` head is already on the wire: the connection is closed without the
//!    answer, which the draft's client treats as a failed handshake, and the close log says
//!    why. The handler never runs for it.
//!
//! Hyper writes header names in lower case (HTTP names are case-insensitive, and hixie-76
//! clients compare them so); a hixie-75 client that compares the head byte for byte is not
//! served.
//!
//! `Sec-WebSocket-Location` is `wss://` when the layer is told its connections are TLS
//! ([`legacy_tls`](crate::WebSocketLayer::legacy_tls)), when the request URI says `https` or
//! `wss`, or when `X-Forwarded-Proto` says `https`; `ws://` otherwise. A header that lies only
//! spoils the liar's own handshake: the client checks the location against the URL it opened.
//!
//! # Framing
//!
//! A text frame is `0x00`, UTF-8, `0xFF`. A frame whose type byte has its high bit set carries
//! a length (base 128, high bit for "more") and is skipped without being buffered, as the
//! draft says, except `0xFF 0x00`, the closing frame. A sentinel frame of another type than
//! `0x00` is read to its `0xFF` and dropped. A text frame longer than
//! [`max_message_size`](crate::WebSocketLayer::max_message_size) (or one whose `0xFF` never
//! comes) fails the connection once that many bytes are buffered, and invalid UTF-8 fails it
//! too: the server sends the closing frame and ends TCP.
//!
//! The connection is its own small task, apart from the RFC 6455 engine, that talks to the
//! handler through the same queues: `recv` gives text messages and `None` after the peer's
//! closing frame; `close`, returning from the handler, a shutdown and a full queue under
//! [`QueuePolicy::Close`](crate::QueuePolicy::Close) send `0xFF 0x00` (the drafts have no
//! close codes) and wait at most the close timeout for the peer's. Keepalive pings, the idle
//! timeout and compression do not exist in the drafts. The close log has a `version` field.

use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::Instrument;

use crate::body::ResponseBody;
use crate::config::Config;
use crate::connection::{flatten, INBOUND_CAPACITY};
use crate::handle::ConnectionSlot;
use crate::handshake::{header_has_token, HandshakeRejection, Refusal};
use crate::socket::message::{Message, Utf8Bytes};
use crate::socket::queue;
use crate::socket::{ControlBlock, Environ, Inbound, Outbound, WebSocket};

const KEY1: &str = "Sec-WebSocket-Key1";
const KEY2: &str = "Sec-WebSocket-Key2";
/// The closing frame of both drafts.
const CLOSING_FRAME: &[u8] = &[0xFF, 0x00];

/// Which draft a handshake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Draft {
    /// hixie-76: two keys in headers, 8 key bytes after the head, an MD5 answer.
    Hixie76 { key1: u32, key2: u32 },
    /// hixie-75: no keys.
    Hixie75,
}

impl Draft {
    fn version(self) -> u8 {
        match self {
            Draft::Hixie76 { .. } => 76,
            Draft::Hixie75 => 75,
        }
    }
}

/// Whether a request carries hixie-76's keys.
pub(crate) fn has_draft_keys(headers: &HeaderMap) -> bool {
    headers.contains_key("sec-websocket-key1") || headers.contains_key("sec-websocket-key2")
}

/// Takes over a WebSocket attempt that the RFC 6455 checks refused with `rejection`: a
/// legacy handshake is checked and accepted, anything else keeps its refusal.
pub(crate) fn accept<B, ReqBody>(
    mut parts: Parts,
    config: &Arc<Config>,
    rejection: HandshakeRejection,
    body: ReqBody,
) -> Result<Response<ResponseBody<B>>, Refusal>
where
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Data: Send,
{
    let draft = draft(&parts, rejection)?;
    let location = location(&parts, config)?;
    config.origin.check(&parts)?;
    if draft == Draft::Hixie75 && !parts.headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL) {
        // hixie-75 names its subprotocol `WebSocket-Protocol`: offered to the same selection.
        if let Some(offer) = parts.headers.get("websocket-protocol").cloned() {
            parts.headers.insert(header::SEC_WEBSOCKET_PROTOCOL, offer);
        }
    }
    let protocol = config.subprotocols.choose(&parts)?;
    let mut headers = HeaderMap::new();
    if let Some(hook) = &config.before_upgrade {
        hook(&mut parts, &mut headers)?;
    }
    let on_upgrade = parts
        .extensions
        .remove::<OnUpgrade>()
        .ok_or(HandshakeRejection::ConnectionNotUpgradable)?;
    if config.registry.is_shutting_down() {
        return Err(HandshakeRejection::ShuttingDown.into());
    }
    let slot = config.take_slot()?;
    let origin = parts.headers.get(header::ORIGIN).cloned();
    crate::handshake::detach_from_read_buffer(&mut parts, &config.keep_headers);
    let response = answer(draft, headers, origin, location, protocol.as_ref());
    let shared = Arc::new(ControlBlock::legacy());
    config.registry.spawn(Arc::clone(&shared), slot, |slot| {
        let task = run(
            on_upgrade,
            body,
            Agreed {
                parts,
                protocol,
                draft,
            },
            Arc::clone(config),
            shared,
            slot,
        );
        tokio::spawn(Box::pin(task).instrument(tracing::Span::current())).abort_handle()
    });
    Ok(response)
}

/// Which draft the request speaks, or the refusal it gets.
fn draft(parts: &Parts, rejection: HandshakeRejection) -> Result<Draft, HandshakeRejection> {
    let headers = &parts.headers;
    let keys = has_draft_keys(headers);
    let rfc = headers.contains_key(header::SEC_WEBSOCKET_KEY)
        || headers.contains_key(header::SEC_WEBSOCKET_VERSION);
    if keys && rfc {
        return Err(HandshakeRejection::MixedDrafts);
    }
    match rejection {
        HandshakeRejection::LegacyHixie76 | HandshakeRejection::MissingVersion if !rfc => {}
        other => return Err(other),
    }
    // The RFC checks that came before the version held already (GET, HTTP/1.1, Upgrade,
    // Connection); checked again so that this function stands on its own.
    if parts.method != Method::GET {
        return Err(HandshakeRejection::MethodNotGet(parts.method.clone()));
    }
    if parts.version != Version::HTTP_11 {
        return Err(HandshakeRejection::HttpVersionTooOld);
    }
    if !header_has_token(headers, &header::UPGRADE, "websocket") {
        return Err(HandshakeRejection::InvalidUpgradeHeader);
    }
    if !header_has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(HandshakeRejection::InvalidConnectionHeader);
    }
    if !keys {
        return Ok(Draft::Hixie75);
    }
    Ok(Draft::Hixie76 {
        key1: key_number(headers, KEY1)?,
        key2: key_number(headers, KEY2)?,
    })
}

/// The number a hixie-76 key stands for: its digits as one number, divided by its spaces.
fn key_number(headers: &HeaderMap, name: &'static str) -> Result<u32, HandshakeRejection> {
    let invalid = |problem| HandshakeRejection::InvalidLegacyKey {
        header: name,
        problem,
    };
    let mut values = headers.get_all(name).iter();
    let key = match (values.next(), values.next()) {
        (Some(key), None) => key.as_bytes(),
        (None, _) => return Err(invalid("is missing")),
        _ => return Err(invalid("appears more than once")),
    };
    parse_key(key).map_err(invalid)
}

/// The number a key stands for, or what is wrong with it.
fn parse_key(key: &[u8]) -> Result<u32, &'static str> {
    let mut number: u64 = 0;
    let mut digits = 0;
    let mut spaces: u64 = 0;
    for &byte in key {
        match byte {
            b'0'..=b'9' => {
                digits += 1;
                number = number
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(byte - b'0')))
                    .filter(|&n| n <= u64::from(u32::MAX))
                    .ok_or("has a number larger than 4294967295")?;
            }
            b' ' => spaces += 1,
            _ => {}
        }
    }
    if digits == 0 {
        return Err("has no digits");
    }
    if spaces == 0 {
        return Err("has no spaces");
    }
    if number % spaces != 0 {
        return Err("has a number that is not a multiple of its count of spaces");
    }
    u32::try_from(number / spaces).map_err(|_| "has a number larger than 4294967295")
}

/// The 16-byte answer to a hixie-76 challenge: the MD5 of both key numbers (big-endian) and
/// the 8 key bytes.
fn challenge_answer(key1: u32, key2: u32, key3: &[u8; 8]) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(key1.to_be_bytes());
    md5.update(key2.to_be_bytes());
    md5.update(key3);
    md5.finalize().into()
}

/// `ws://` or `wss://`, the host and the path of the request, as the answer's location.
fn location(parts: &Parts, config: &Config) -> Result<HeaderValue, HandshakeRejection> {
    let host = parts
        .headers
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().as_bytes()))
        .ok_or(HandshakeRejection::MissingHost)?;
    let forwarded_https = parts
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.as_bytes().split(|&b| b == b',').next())
        .is_some_and(|proto| proto.trim_ascii().eq_ignore_ascii_case(b"https"));
    let tls = config.legacy_tls
        || forwarded_https
        || matches!(parts.uri.scheme_str(), Some("https" | "wss"));
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut location = Vec::with_capacity(6 + host.len() + path.len());
    location.extend_from_slice(if tls { b"wss://" } else { b"ws://" });
    location.extend_from_slice(host);
    location.extend_from_slice(path.as_bytes());
    HeaderValue::from_bytes(&location).map_err(|_| HandshakeRejection::MissingHost)
}

/// The response head hyper writes for an accepted legacy handshake.
fn answer<B>(
    draft: Draft,
    extra: HeaderMap,
    origin: Option<HeaderValue>,
    location: HeaderValue,
    protocol: Option<&HeaderValue>,
) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let (reason, origin_name, location_name, protocol_name) = match draft {
        Draft::Hixie76 { .. } => (
            "WebSocket Protocol Handshake",
            "sec-websocket-origin",
            "sec-websocket-location",
            "sec-websocket-protocol",
        ),
        Draft::Hixie75 => (
            "Web Socket Protocol Handshake",
            "websocket-origin",
            "websocket-location",
            "websocket-protocol",
        ),
    };
    if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason.as_bytes()) {
        res.extensions_mut().insert(reason);
    }
    let headers = res.headers_mut();
    // The draft's headers first and in its order; the hook's after, unable to replace them.
    headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Some(origin) = origin {
        headers.insert(origin_name, origin);
    }
    headers.insert(location_name, location);
    if let Some(protocol) = protocol {
        headers.insert(protocol_name, protocol.clone());
    }
    let mut name = None;
    for (key, value) in extra {
        name = key.or(name);
        if let Some(name) = &name {
            if !headers.contains_key(name) {
                headers.append(name.clone(), value);
            }
        }
    }
    res
}

/// What the service agreed on for one legacy connection.
struct Agreed {
    parts: Parts,
    protocol: Option<HeaderValue>,
    draft: Draft,
}

/// Waits for the upgraded connection, finishes the handshake, then serves it.
async fn run<ReqBody>(
    on_upgrade: OnUpgrade,
    body: ReqBody,
    agreed: Agreed,
    config: Arc<Config>,
    shared: Arc<ControlBlock>,
    slot: ConnectionSlot,
) where
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Data: Send,
{
    let Agreed {
        parts,
        protocol,
        draft,
    } = agreed;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    if let Draft::Hixie76 { .. } = draft {
        // Some clients announce the 8 key bytes with `Content-Length: 8`: hyper then
        // reads them as the body, and they never reach the upgraded connection.
        let _ =
            tokio::time::timeout(config.connection.close_timeout, read_body(body, &mut buf)).await;
    } else {
        drop(body);
    }
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%error, "WebSocket upgrade did not complete");
            return;
        }
    };
    let environ = Arc::new(Environ {
        parts,
        protocol,
        version: draft.version(),
    });
    let log = CloseLog::new(Arc::clone(&environ));
    let mut io = TokioIo::new(upgraded);
    if let Draft::Hixie76 { key1, key2 } = draft {
        if let Err(ending) = finish_handshake(&mut io, &mut buf, key1, key2, &config).await {
            let _ = tokio::time::timeout(config.connection.close_timeout, io.shutdown()).await;
            log.write(&ending);
            drop(slot);
            return;
        }
    }
    let (in_tx, in_rx) = queue::bounded(INBOUND_CAPACITY);
    let (out_tx, out_rx) = queue::bounded_by_weight(
        config.connection.send_queue_capacity,
        config.connection.send_queue_bytes,
        Outbound::weight,
    );
    let socket = WebSocket::new(
        environ,
        in_rx,
        out_tx,
        Arc::clone(&shared),
        config.connection.send_queue_policy,
    );
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let handler = AssertUnwindSafe((config.handler)(socket)).catch_unwind();
    // The handler runs in a task of its own, so that its sends wake this one (the queue
    // does not wake a receiver in the task that pushes). Aborting this task (a shutdown
    // past its grace) aborts the handler too.
    let handler = tokio::spawn(
        async move {
            let _ = done_tx.send(flatten(handler.await));
        }
        .in_current_span(),
    );
    let _handler = AbortOnDrop(handler.abort_handle());
    let driver = Driver {
        io,
        buf,
        decoder: Decoder::new(config.connection.max_message_size),
        in_tx,
        out_rx,
        shared,
        config: Arc::clone(&config),
        log,
        close_sent: false,
    };
    driver.run(done_rx).await;
    drop(slot);
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Appends the request body to `buf`, up to the 8 key bytes (an empty body is the usual case).
async fn read_body<ReqBody>(body: ReqBody, buf: &mut BytesMut)
where
    ReqBody: http_body::Body,
{
    let mut body = std::pin::pin!(body);
    while buf.len() < 8 {
        match http_body_util::BodyExt::frame(&mut body).await {
            Some(Ok(frame)) => {
                if let Ok(mut data) = frame.into_data() {
                    while data.has_remaining() {
                        let chunk = data.chunk();
                        buf.extend_from_slice(chunk);
                        let n = chunk.len();
                        data.advance(n);
                    }
                }
            }
            Some(Err(_)) | None => return,
        }
    }
}

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 4096;

/// Reads the 8 key bytes (within the close timeout) and writes the challenge answer.
async fn finish_handshake<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    key1: u32,
    key2: u32,
    config: &Config,
) -> Result<(), Ending> {
    let read = tokio::time::timeout(config.connection.close_timeout, async {
        while buf.len() < 8 {
            if io.read_buf(buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    match read {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => {
            return Err(Ending::lost(
                "the 8 key bytes of the hixie-76 handshake did not arrive",
            ))
        }
    }
    let mut key3 = [0u8; 8];
    key3.copy_from_slice(&buf[..8]);
    buf.advance(8);
    let answer = challenge_answer(key1, key2, &key3);
    write_bounded(io, &answer, config.connection.write_timeout).await
}

/// Writes and flushes `bytes`, failing when the peer does not read for the write timeout.
async fn write_bounded<T: AsyncWrite + Unpin>(
    io: &mut T,
    bytes: &[u8],
    timeout: Option<Duration>,
) -> Result<(), Ending> {
    let write = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    let result = match timeout {
        Some(timeout) => tokio::time::timeout(timeout, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => write.await,
    };
    result.map_err(|error| match error.kind() {
        std::io::ErrorKind::TimedOut => Ending::lost("the peer stopped reading (write timeout)"),
        _ => Ending::lost("the connection was lost while writing"),
    })
}

/// A frame read from a draft peer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    Text(Utf8Bytes),
    Close,
}

/// The drafts' frame decoder, over one buffer that keeps partial input between reads.
#[derive(Debug)]
pub(crate) struct Decoder {
    max_message_size: usize,
    /// Bytes of a length-prefixed frame still to skip.
    skip: u64,
    /// How far into a sentinel frame the search for `0xFF` has looked already.
    scanned: usize,
}

impl Decoder {
    pub(crate) fn new(max_message_size: usize) -> Self {
        Decoder {
            max_message_size,
            skip: 0,
            scanned: 1,
        }
    }

    /// The next whole frame in `buf`, `None` when more input is needed, or why the peer's
    /// input is refused.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, &'static str> {
        loop {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                buf.advance(n);
                self.skip -= n as u64;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let Some(&kind) = buf.first() else {
                return Ok(None);
            };
            if kind & 0x80 == 0 {
                let Some(at) = buf[self.scanned..].iter().position(|&b| b == 0xFF) else {
                    self.scanned = buf.len();
                    if buf.len() - 1 > self.max_message_size {
                        return Err("a text frame is longer than the message size limit");
                    }
                    return Ok(None);
                };
                let end = self.scanned + at;
                self.scanned = 1;
                if end - 1 > self.max_message_size {
                    return Err("a text frame is longer than the message size limit");
                }
                let frame = buf.split_to(end + 1).freeze();
                if kind != 0x00 {
                    continue;
                }
                let text = Utf8Bytes::try_from(frame.slice(1..end))
                    .map_err(|_| "a text frame is not valid UTF-8")?;
                return Ok(Some(Frame::Text(text)));
            }
            // A length-prefixed frame: the length in base 128, high bit for "more".
            let mut length: u64 = 0;
            let mut header = None;
            for (i, &byte) in buf.iter().enumerate().skip(1) {
                length = length
                    .checked_mul(128)
                    .map(|l| l | u64::from(byte & 0x7F))
                    .filter(|&l| l < 1 << 56)
                    .ok_or("a frame length is too large")?;
                if byte & 0x80 == 0 {
                    header = Some(i + 1);
                    break;
                }
            }
            let Some(header) = header else {
                return Ok(None);
            };
            if kind == 0xFF && length == 0 {
                buf.advance(header);
                return Ok(Some(Frame::Close));
            }
            buf.advance(header);
            self.skip = length;
        }
    }
}

/// How a legacy connection ended, for the close log.
#[derive(Debug)]
struct Ending {
    closed_by: &'static str,
    reason: &'static str,
}

impl Ending {
    fn lost(reason: &'static str) -> Self {
        Ending {
            closed_by: "lost",
            reason,
        }
    }
}

/// The close log of a legacy connection: the RFC connection's fields, and the version.
#[derive(Debug)]
struct CloseLog {
    environ: Arc<Environ>,
    started: std::time::Instant,
    messages_in: u64,
    bytes_in: u64,
    messages_out: u64,
    bytes_out: u64,
}

impl CloseLog {
    fn new(environ: Arc<Environ>) -> Self {
        CloseLog {
            environ,
            started: std::time::Instant::now(),
            messages_in: 0,
            bytes_in: 0,
            messages_out: 0,
            bytes_out: 0,
        }
    }

    fn write(&self, ending: &Ending) {
        let parts = &self.environ.parts;
        let peer = crate::socket::peer_addr(parts).map(|p| p.to_string());
        let protocol = self.environ.protocol.as_ref().and_then(|p| p.to_str().ok());
        tracing::info!(
            method = %parts.method,
            path = %parts.uri.path(),
            peer = peer.as_deref().unwrap_or("-"),
            status = 101u16,
            version = self.environ.version,
            protocol = protocol.unwrap_or("-"),
            duration_ms = self.started.elapsed().as_millis() as u64,
            messages_in = self.messages_in,
            bytes_in = self.bytes_in,
            messages_out = self.messages_out,
            bytes_out = self.bytes_out,
            close_reason = ending.reason,
            closed_by = ending.closed_by,
            "WebSocket connection closed"
        );
    }
}

/// One legacy connection after its handshake: reads frames for the handler, writes what it
/// sends, and runs the closing handshake.
struct Driver<T> {
    io: T,
    buf: BytesMut,
    decoder: Decoder,
    in_tx: queue::Sender<Inbound>,
    out_rx: queue::Receiver<Outbound>,
    shared: Arc<ControlBlock>,
    config: Arc<Config>,
    log: CloseLog,
    /// This side's closing frame is written.
    close_sent: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    async fn run(
        mut self,
        mut done: tokio::sync::oneshot::Receiver<Result<(), crate::socket::handler::HandlerError>>,
    ) {
        let mut handler_done = false;
        // When this side sent its closing frame: the peer has the close timeout to answer.
        let mut close_deadline: Option<Instant> = None;
        let ending = loop {
            match self.read_frames(close_deadline.is_some()).await {
                Ok(None) => {}
                Ok(Some(ending)) => break ending,
                Err(ending) => break ending,
            }
            let closing = close_deadline.is_some();
            let deadline = close_deadline.unwrap_or_else(Instant::now);
            self.buf.reserve(READ_CHUNK);
            tokio::select! {
                read = self.io.read_buf(&mut self.buf) => match read {
                    Ok(0) if closing => break Ending { closed_by: "server", reason: "" },
                    Ok(0) => break Ending::lost("the peer ended TCP without a closing frame"),
                    Ok(_) => {}
                    Err(_) => break Ending::lost("the connection was lost while reading"),
                },
                item = self.out_rx.recv(), if !closing => {
                    let result = match item {
                        Some(Outbound::Message(message)) => self.write_message(message).await,
                        // Not sent to a legacy socket (it gets the message), but as good.
                        Some(Outbound::Published(batch, _)) => {
                            let mut result = Ok(());
                            for message in batch.messages() {
                                result = self.write_message(message).await;
                                if result.is_err() {
                                    break;
                                }
                            }
                            result
                        }
                        // `close`, or every handle is gone.
                        Some(Outbound::Close(_)) | None => self.send_closing_frame().await,
                    };
                    if let Err(ending) = result {
                        break ending;
                    }
                    if self.close_sent {
                        close_deadline = Some(Instant::now() + self.config.connection.close_timeout);
                    }
                },
                outcome = &mut done, if !handler_done => {
                    handler_done = true;
                    self.shared.progress.handler_done();
                    if let Ok(Err(error)) = outcome {
                        tracing::error!(%error, "WebSocket handler failed");
                    }
                    if !closing {
                        // What the handler queued goes out before the closing frame.
                        let mut result = Ok(());
                        'queued: while let Some(item) = self.out_rx.try_recv() {
                            let messages = match item {
                                Outbound::Message(message) => vec![message],
                                Outbound::Published(batch, _) => batch.messages(),
                                Outbound::Close(_) => break,
                            };
                            for message in messages {
                                result = self.write_message(message).await;
                                if result.is_err() {
                                    break 'queued;
                                }
                            }
                        }
                        if let Err(ending) = result.and(self.send_closing_frame().await) {
                            break ending;
                        }
                        close_deadline = Some(Instant::now() + self.config.connection.close_timeout);
                    }
                },
                () = poll_fn(|cx| self.shared.poll_signal(cx)), if !closing => {
                    if let Err(ending) = self.send_closing_frame().await {
                        break ending;
                    }
                    close_deadline = Some(Instant::now() + self.config.connection.close_timeout);
                },
                () = tokio::time::sleep_until(deadline), if closing => {
                    break Ending::lost("the peer did not answer the closing frame within the close timeout");
                },
            }
        };
        // For the shutdown report: a closing frame of ours that got out counts as sent (or as
        // answered, below); a connection that ended before it did, as lost.
        self.shared.progress.lost();
        // Every later send fails; the handler's `recv` returns `None` once it has read what
        // was delivered.
        self.out_rx.close();
        drop(self.in_tx);
        let _ =
            tokio::time::timeout(self.config.connection.close_timeout, self.io.shutdown()).await;
        self.log.write(&ending);
        if !handler_done {
            let _ = done.await;
        }
    }

    /// Hands every whole frame in the buffer to the handler. `Some` when the connection is
    /// over: the peer closed, or its input was refused.
    async fn read_frames(&mut self, closing: bool) -> Result<Option<Ending>, Ending> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(None) => return Ok(None),
                Ok(Some(Frame::Text(text))) => {
                    let len = text.len() as u64;
                    self.log.messages_in += 1;
                    self.log.bytes_in += len;
                    self.config.registry.message_in(text.len());
                    // Waits while the handler's queue is full: TCP pushes back on the peer.
                    let _ = self
                        .in_tx
                        .push_waking(Inbound::Message(Message::Text(text)))
                        .await;
                }
                Ok(Some(Frame::Close)) => {
                    if closing {
                        self.shared.progress.handshake_done();
                        return Ok(Some(Ending {
                            closed_by: "server",
                            reason: "",
                        }));
                    }
                    self.send_closing_frame().await?;
                    self.shared.progress.handshake_done();
                    return Ok(Some(Ending {
                        closed_by: "peer",
                        reason: "",
                    }));
                }
                Err(reason) => {
                    let _ = self.send_closing_frame().await;
                    return Ok(Some(Ending {
                        closed_by: "server",
                        reason,
                    }));
                }
            }
        }
    }

    async fn write_message(&mut self, message: Message) -> Result<(), Ending> {
        // Binary messages are refused before they are queued.
        let Message::Text(text) = message else {
            return Ok(());
        };
        let mut frame = Vec::with_capacity(text.len() + 2);
        frame.push(0x00);
        frame.extend_from_slice(text.as_bytes());
        frame.push(0xFF);
        write_bounded(&mut self.io, &frame, self.config.connection.write_timeout).await?;
        let len = text.len() as u64;
        self.log.messages_out += 1;
        self.log.bytes_out += len;
        self.config.registry.message_out(text.len());
        Ok(())
    }

    /// Writes `0xFF 0x00` once; later sends fail.
    async fn send_closing_frame(&mut self) -> Result<(), Ending> {
        if self.close_sent {
            return Ok(());
        }
        self.close_sent = true;
        self.out_rx.close();
        write_bounded(
            &mut self.io,
            CLOSING_FRAME,
            self.config.connection.write_timeout,
        )
        .await?;
        self.shared.progress.close_sent();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drafts_example_handshake_is_answered() {
        // draft-hixie-thewebsocketprotocol-76, section 1.3.
        let key1 = parse_key(b"4 @1  46546xW%0l 1 5").unwrap();
        let key2 = parse_key(b"12998 5 Y3 1  .P00").unwrap();
        assert_eq!(key1, 829_309_203);
        assert_eq!(key2, 259_970_620);
        assert_eq!(
            &challenge_answer(key1, key2, b"^n:ds[4U"),
            b"8jKS'y:G*Co,Wxa-"
        );
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        assert_eq!(parse_key(b"12345"), Err("has no spaces"));
        assert_eq!(parse_key(b"a b"), Err("has no digits"));
        assert_eq!(
            parse_key(b"1 3 "),
            Err("has a number that is not a multiple of its count of spaces")
        );
        assert_eq!(
            parse_key(b"99999999999 "),
            Err("has a number larger than 4294967295")
        );
        assert_eq!(parse_key(b"4294967295 "), Ok(u32::MAX));
    }

    fn decode_all(decoder: &mut Decoder, buf: &mut BytesMut) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(buf).unwrap() {
            frames.push(frame);
        }
        frames
    }

    #[test]
    fn text_frames_and_the_closing_frame_are_decoded() {
        let mut decoder = Decoder::new(100);
        let mut buf = BytesMut::from(&b"\x00hello\xff\x00\xff\xff\x00"[..]);
        assert_eq!(
            decode_all(&mut decoder, &mut buf),
            [
                Frame::Text("hello".into()),
                Frame::Text("".into()),
                Frame::Close
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_split_anywhere_is_decoded_once_whole() {
        let wire = "\x00héllo wörld\u{1F600}\u{FFFF}".as_bytes().to_vec();
        let mut wire = wire;
        wire.push(0xFF);
        for split in 0..wire.len() {
            let mut decoder = Decoder::new(100);
            let mut buf = BytesMut::from(&wire[..split]);
            assert!(decoder.decode(&mut buf).unwrap().is_none());
            buf.extend_from_slice(&wire[split..]);
            assert_eq!(
                decoder.decode(&mut buf).unwrap(),
                Some(Frame::Text("héllo wörld\u{1F600}\u{FFFF}".into()))
            );
        }
    }

    #[test]
    fn length_prefixed_frames_are_skipped_even_split() {
        // Type 0x80, length 200 (0x81 0x48), then a text frame.
        let mut wire = vec![0x80, 0x81, 0x48];
        wire.extend(std::iter::repeat_n(0xFFu8, 200));
        wire.extend_from_slice(b"\x00after\xff");
        let mut decoder = Decoder::new(10);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in wire.chunks(7) {
            buf.extend_from_slice(chunk);
            frames.extend(decode_all(&mut decoder, &mut buf));
        }
        assert_eq!(frames, [Frame::Text("after".into())]);
    }

    #[test]
    fn limits_hold_without_a_terminator() {
        let mut decoder = Decoder::new(8);
        let mut buf = BytesMut::from(&b"\x00123456789"[..]);
        assert!(decoder.decode(&mut buf).is_err());
        let mut decoder = Decoder::new(8);
        let mut buf = BytesMut::from(&b"\x00123456789\xff"[..]);
        assert!(decoder.decode(&mut buf).is_err());
        let mut decoder = Decoder::new(8);
        let mut buf = BytesMut::from(&b"\x0012345678\xff"[..]);
        assert!(decoder.decode(&mut buf).unwrap().is_some());
        let mut decoder = Decoder::new(8);
        let mut buf = BytesMut::from(&b"\x00\xc3\x28\xff"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err("a text frame is not valid UTF-8")
        );
        let mut decoder = Decoder::new(8);
        let mut buf =
            BytesMut::from(&[0x80u8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        assert_eq!(decoder.decode(&mut buf), Err("a frame length is too large"));
    }

    fn parts(req: http::request::Builder) -> Parts {
        req.body(()).unwrap().into_parts().0
    }

    fn hixie76() -> http::request::Builder {
        http::Request::get("/demo")
            .header("host", "example.com")
            .header("upgrade", "WebSocket")
            .header("connection", "Upgrade")
            .header("origin", "http://example.com")
            .header(KEY1, "4 @1  46546xW%0l 1 5")
            .header(KEY2, "12998 5 Y3 1  .P00")
    }

    #[test]
    fn drafts_are_told_apart_and_mixed_headers_refused() {
        let draft76 = draft(&parts(hixie76()), HandshakeRejection::LegacyHixie76);
        assert_eq!(
            draft76,
            Ok(Draft::Hixie76 {
                key1: 829_309_203,
                key2: 259_970_620
            })
        );
        let req75 = http::Request::get("/demo")
            .header("host", "example.com")
            .header("upgrade", "WebSocket")
            .header("connection", "Upgrade");
        assert_eq!(
            draft(&parts(req75), HandshakeRejection::MissingVersion),
            Ok(Draft::Hixie75)
        );
        let mixed = hixie76().header("sec-websocket-version", "13");
        assert_eq!(
            draft(&parts(mixed), HandshakeRejection::MissingKey),
            Err(HandshakeRejection::MixedDrafts)
        );
        let bad = hixie76().header(KEY2, "12345");
        let refusal = draft(&parts(bad), HandshakeRejection::LegacyHixie76).unwrap_err();
        assert_eq!(refusal.status(), StatusCode::BAD_REQUEST);
        assert!(refusal
            .to_string()
            .contains("Sec-WebSocket-Key2 appears more than once"));
    }

    #[test]
    fn location_is_wss_behind_tls() {
        let config = crate::layer::tests_config();
        let plain = parts(hixie76());
        assert_eq!(location(&plain, &config).unwrap(), "ws://example.com/demo");
        let proxied = parts(hixie76().header("x-forwarded-proto", "https"));
        assert_eq!(
            location(&proxied, &config).unwrap(),
            "wss://example.com/demo"
        );
        let mut tls = config.clone();
        tls.legacy_tls = true;
        assert_eq!(location(&plain, &tls).unwrap(), "wss://example.com/demo");
    }
}
