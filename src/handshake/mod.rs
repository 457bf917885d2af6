//! The opening handshake (RFC 6455 section 4.2) and the answers to a bad one.
//!
//! A request is a *WebSocket attempt* when it carries `Upgrade: websocket`, a
//! `Sec-WebSocket-Key`, a `Sec-WebSocket-Version` or a `Sec-WebSocket-Key1` (a legacy hixie-76
//! client) header, or, with the `http2` feature, when it is an extended `CONNECT` with
//! `:protocol` `websocket` (RFC 8441). Anything else passes through the layer untouched, other
//! `Sec-WebSocket-*` headers and other upgrades (`h2c`) included. An attempt is checked in the
//! order of this table; the first rule it breaks refuses it with an HTTP response whose status
//! and plain-text body say what is wrong (a [`HandshakeRejection`], or the hook's
//! [`Refusal`]).
//!
//! | rule | refusal |
//! |---|---|
//! | method `GET`, HTTP/1.1 or newer | 400 |
//! | `Upgrade: websocket`, `Connection` lists `upgrade` | 400 |
//! | `Sec-WebSocket-Version: 13` | 400 when missing, 426 (with `Sec-WebSocket-Version: 13`) when another or for hixie-76 |
//! | `Sec-WebSocket-Key`: base64 of 16 bytes, once | 400 |
//! | the [origin policy](crate::handshake::origin) allows the page | 403 |
//! | a subprotocol is agreed, when one is [required](crate::handshake::protocol::Subprotocols::required) | 400 |
//! | the [`before_upgrade`](crate::WebSocketLayer::before_upgrade) hook accepts | the hook's [`Refusal`] |
//! | every [required extension](crate::WebSocketLayer::require_extension) is in the request | 500 (logged at ERROR with the type) |
//! | the extractors of a [`with_state`](crate::WebSocketLayer::with_state) handler accept | the extractor's rejection |
//! | the connection can be upgraded (hyper's `OnUpgrade` is present) | 426 |
//! | the layer is not [shutting down](crate::WebSocketHandle::shutdown) | 503 |
//! | fewer live sockets than [`max_connections`](crate::WebSocketLayer::max_connections) | 503 |
//!
//! On HTTP/2 the first four rows are RFC 8441's instead: the extended `CONNECT` and
//! `Sec-WebSocket-Version: 13`, with no key. Of the `Sec-WebSocket-Extensions` offers, only
//! permessage-deflate is ever accepted, and only when the layer has
//! [`deflate`](crate::WebSocketLayer::deflate) on (feature `deflate`); otherwise the answer names
//! no extension.
//!
//! ```
//! use http::{Request, StatusCode};
//! use tower::{ServiceExt, service_fn};
//! use tower_websocket::{WebSocket, WebSocketLayer};
//! use tower_layer::Layer;
//!
//! # tokio_test_block_on(async {
//! let inner = service_fn(|_req: Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("inner")))
//! });
//! let svc = WebSocketLayer::new(|_ws: WebSocket| async {}).layer(inner);
//!
//! let req = Request::get("/ws")
//!     .header("upgrade", "websocket")
//!     .header("connection", "upgrade")
//!     .header("sec-websocket-version", "8")
//!     .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
//!     .body(String::new())
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
//! assert_eq!(res.headers()["sec-websocket-version"], "13");
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

pub mod keep;
pub(crate) mod list;
pub mod origin;
pub mod protocol;

use std::fmt;

use crate::body::PlainBody;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 section 1.3, appended to the key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a WebSocket handshake was refused.
///
/// Each refusal becomes an HTTP response with [`status`](Self::status) and a plain-text body
/// that is this value's `Display`, but for [`MissingExtension`](Self::MissingExtension),
/// whose body does not name the server's types.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeRejection {
    /// The method is not `GET` (400).
    MethodNotGet(Method),
    /// HTTP/1.0 or older: the upgrade mechanism needs HTTP/1.1 (400).
    HttpVersionTooOld,
    /// A WebSocket over HTTP/2 (RFC 8441 extended `CONNECT`) reached a layer built without the
    /// crate's `http2` feature (501).
    Http2NotEnabled,
    /// `Upgrade` is missing or does not name `websocket` (400).
    InvalidUpgradeHeader,
    /// `Connection` does not list the `upgrade` token (400).
    InvalidConnectionHeader,
    /// `Sec-WebSocket-Version` is missing (400).
    MissingVersion,
    /// A version other than 13 was asked for (426, with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion(String),
    /// The legacy hixie-76 handshake (`Sec-WebSocket-Key1`/`Key2`), which no browser has sent
    /// since 2012 (426, with `Sec-WebSocket-Version: 13`).
    LegacyHixie76,
    /// `Sec-WebSocket-Key` is missing or appears twice (400).
    MissingKey,
    /// `Sec-WebSocket-Key` is not base64 of 16 bytes (400).
    InvalidKey,
    /// The connection cannot be upgraded: the server did not give hyper's upgrade handle with
    /// the request (426). Serve with `axum::serve`, or hyper with `serve_connection_with_upgrades`.
    ConnectionNotUpgradable,
    /// A plain HTTP request reached a WebSocket-only service (426, with `Upgrade: websocket`).
    UpgradeRequired,
    /// The origin policy refused the browser page that asked (403). See
    /// [`OriginPolicy`](crate::handshake::origin::OriginPolicy).
    OriginNotAllowed(String),
    /// A subprotocol is required and none of the client's is spoken here (400). See
    /// [`Subprotocols::required`](crate::handshake::protocol::Subprotocols::required).
    NoCommonProtocol {
        /// What the client offered, comma-separated.
        offered: String,
        /// What the server speaks, comma-separated (empty for a selector function).
        supported: String,
    },
    /// The live-connection limit is reached (503). See
    /// [`WebSocketLayer::max_connections`](crate::WebSocketLayer::max_connections).
    TooManyConnections {
        /// The limit.
        limit: usize,
    },
    /// A hixie-76 `Sec-WebSocket-Key1` or `Key2` that is missing or not a key (400): a key
    /// is digits mixed with other characters and at least one space, and its number must be
    /// divisible by its count of spaces. Only with the `hixie76` feature and
    /// `WebSocketLayer::legacy_drafts`.
    InvalidLegacyKey {
        /// Which header: `Sec-WebSocket-Key1` or `Sec-WebSocket-Key2`.
        header: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The request mixes the RFC 6455 headers (`Sec-WebSocket-Key`, `Sec-WebSocket-Version`)
    /// with hixie-76's (`Sec-WebSocket-Key1`/`Key2`) (400). Only with legacy drafts accepted.
    MixedDrafts,
    /// A legacy-draft handshake without a `Host` header, which the answer's
    /// `Sec-WebSocket-Location` is made from (400).
    MissingHost,
    /// The server is shutting down (503). See
    /// [`WebSocketHandle::shutdown`](crate::handle::WebSocketHandle::shutdown).
    ShuttingDown,
    /// The request lacks an extension the layer requires (500): a middleware that should add
    /// it runs inside the layer instead of outside. See
    /// [`WebSocketLayer::require_extension`](crate::WebSocketLayer::require_extension). The
    /// client's body does not name the type; the server's log does.
    MissingExtension {
        /// The type's name, as `std::any::type_name` spells it.
        type_name: &'static str,
    },
}

impl HandshakeRejection {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeRejection::UnsupportedVersion(_)
            | HandshakeRejection::LegacyHixie76
            | HandshakeRejection::ConnectionNotUpgradable
            | HandshakeRejection::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            HandshakeRejection::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            HandshakeRejection::Http2NotEnabled => StatusCode::NOT_IMPLEMENTED,
            HandshakeRejection::TooManyConnections { .. } | HandshakeRejection::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HandshakeRejection::MissingExtension { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The refusal as an HTTP response: status, headers the RFC asks for, plain-text body.
    pub fn into_response(self) -> Response<PlainBody> {
        self.to_response().map(PlainBody::new)
    }

    fn to_response(&self) -> Response<Bytes> {
        let body = match self {
            // A server's configuration is not the client's business.
            HandshakeRejection::MissingExtension { .. } => {
                Bytes::from_static(b"WebSocket handshake refused: internal server error\n")
            }
            _ => Bytes::from(format!("{self}\n")),
        };
        let mut res = Response::new(body);
        *res.status_mut() = self.status();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.status() == StatusCode::UPGRADE_REQUIRED {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        } else if *self == HandshakeRejection::MissingVersion {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        res
    }
}

impl fmt::Display for HandshakeRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeRejection::MethodNotGet(method) => write!(
                f,
                "WebSocket handshake refused: the method must be GET, not {method}"
            ),
            HandshakeRejection::Http2NotEnabled => f.write_str(
                "WebSocket handshake refused: WebSockets over HTTP/2 (extended CONNECT) need \
                 tower-websocket's `http2` cargo feature, which this server was built without",
            ),
            HandshakeRejection::HttpVersionTooOld => f.write_str(
                "WebSocket handshake refused: the upgrade needs HTTP/1.1 or newer",
            ),
            HandshakeRejection::InvalidUpgradeHeader => f.write_str(
                "WebSocket handshake refused: the Upgrade header must be \"websocket\"",
            ),
            HandshakeRejection::InvalidConnectionHeader => f.write_str(
                "WebSocket handshake refused: the Connection header must contain the token \"upgrade\"",
            ),
            HandshakeRejection::MissingVersion => f.write_str(
                "WebSocket handshake refused: the Sec-WebSocket-Version header is missing (this server speaks version 13)",
            ),
            HandshakeRejection::UnsupportedVersion(version) => write!(
                f,
                "WebSocket handshake refused: Sec-WebSocket-Version {version:?} is not supported; this server speaks version 13"
            ),
            HandshakeRejection::LegacyHixie76 => f.write_str(
                "WebSocket handshake refused: the legacy hixie-76 protocol is not supported; this server speaks version 13 (RFC 6455)",
            ),
            HandshakeRejection::MissingKey => f.write_str(
                "WebSocket handshake refused: exactly one Sec-WebSocket-Key header is required",
            ),
            HandshakeRejection::InvalidKey => f.write_str(
                "WebSocket handshake refused: Sec-WebSocket-Key must be the base64 encoding of 16 bytes",
            ),
            HandshakeRejection::ConnectionNotUpgradable => f.write_str(
                "WebSocket handshake refused: this connection cannot be upgraded (the server gave no upgrade handle with the request)",
            ),
            HandshakeRejection::UpgradeRequired => f.write_str(
                "this endpoint only speaks WebSocket: send a GET with Upgrade: websocket",
            ),
            HandshakeRejection::OriginNotAllowed(origin) => write!(
                f,
                "WebSocket handshake refused: origin {origin:?} may not open WebSockets here \
                 (a page from another site; the server's origin policy allows it or not)"
            ),
            HandshakeRejection::NoCommonProtocol { offered, supported } if offered.is_empty() => write!(
                f,
                "WebSocket handshake refused: a subprotocol is required; offer one of: {supported}"
            ),
            HandshakeRejection::NoCommonProtocol { offered, supported } => write!(
                f,
                "WebSocket handshake refused: none of the offered subprotocols ({offered}) is spoken here; \
                 offer one of: {supported}"
            ),
            HandshakeRejection::InvalidLegacyKey { header, problem } => write!(
                f,
                "WebSocket handshake refused: {header} {problem} (hixie-76)"
            ),
            HandshakeRejection::MixedDrafts => f.write_str(
                "WebSocket handshake refused: the request mixes RFC 6455 headers (Sec-WebSocket-Key, Sec-WebSocket-Version) with hixie-76 headers (Sec-WebSocket-Key1, Sec-WebSocket-Key2); send one protocol's",
            ),
            HandshakeRejection::MissingHost => f.write_str(
                "WebSocket handshake refused: the Host header is missing (the legacy drafts answer with a Location made from it)",
            ),
            HandshakeRejection::ShuttingDown => f.write_str(
                "WebSocket handshake refused: the server is shutting down; try again later",
            ),
            HandshakeRejection::MissingExtension { type_name } => write!(
                f,
                "WebSocket upgrade refused: the request has no `{type_name}` extension, which the \
                 WebSocketLayer requires; the middleware that adds it must run before the layer \
                 (add it after the layer with `Router::layer`, before it in a `ServiceBuilder`)"
            ),
            HandshakeRejection::TooManyConnections { limit } => write!(
                f,
                "WebSocket handshake refused: the server is at its limit of {limit} live WebSocket connections; try again later"
            ),
        }
    }
}

impl std::error::Error for HandshakeRejection {}

/// Whether a request is a WebSocket attempt at all: `Upgrade: websocket`, or a
/// `Sec-WebSocket-Key`, `Sec-WebSocket-Version` or `Sec-WebSocket-Key1` header. Anything else
/// passes through the layer.
#[cfg(test)]
pub(crate) fn is_websocket_attempt(headers: &HeaderMap) -> bool {
    upgrades_to_websocket(headers) || carries_websocket_headers(headers)
}

/// Whether the `Upgrade` list names `websocket`. The layer looks once and hands the answer to
/// [`validate_given`], which needs it again.
#[inline]
pub(crate) fn upgrades_to_websocket(headers: &HeaderMap) -> bool {
    header_has_token(headers, &header::UPGRADE, "websocket")
}

/// Whether a request carries a WebSocket key or version header (or hixie-76's first key): a
/// WebSocket attempt even without `Upgrade: websocket`.
pub(crate) fn carries_websocket_headers(headers: &HeaderMap) -> bool {
    headers.contains_key(header::SEC_WEBSOCKET_KEY)
        || headers.contains_key(header::SEC_WEBSOCKET_VERSION)
        || headers.contains_key("sec-websocket-key1")
}

/// Whether `name`'s list holds `token`, in any letter case. `token` is lowercase ASCII
/// letters.
pub(crate) fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    // A single line that is the token alone, the usual case, needs no splitting.
    let mut lines = headers.get_all(name).iter();
    if let (Some(line), None) = (lines.next(), lines.next()) {
        if is_letters_token(line.as_bytes(), token.as_bytes()) {
            return true;
        }
    }
    list::elements(headers, name).any(|element| is_letters_token(element, token.as_bytes()))
}

/// `text` is `token` in any letter case, where `token` is lowercase ASCII letters: then
/// `byte | 0x20` equals the token's byte exactly for its lower and upper case and nothing
/// else, which is cheaper than `eq_ignore_ascii_case`'s conversion of both sides.
#[inline]
fn is_letters_token(text: &[u8], token: &[u8]) -> bool {
    debug_assert!(token.iter().all(u8::is_ascii_lowercase));
    text.len() == token.len()
        && text.iter().zip(token).fold(0, |diff, (&byte, &expected)| {
            diff | ((byte | 0x20) ^ expected)
        }) == 0
}

/// Whether a request is an HTTP/2 WebSocket attempt (RFC 8441): an extended `CONNECT` with
/// `:protocol` `websocket`.
#[cfg(feature = "http2")]
pub(crate) fn is_extended_connect(method: &Method, extensions: &http::Extensions) -> bool {
    method == Method::CONNECT
        && extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Checks a WebSocket attempt: RFC 6455 section 4.2.1 on HTTP/1.1, RFC 8441 on HTTP/2.
/// Returns the `Sec-WebSocket-Accept` value, which HTTP/2 does not use (`None`).
#[cfg(any(test, feature = "hixie76"))]
pub(crate) fn validate(request: &Parts) -> Result<Option<HeaderValue>, HandshakeRejection> {
    validate_given(request, upgrades_to_websocket(&request.headers))
}

/// [`validate`], given what [`upgrades_to_websocket`] said of the request.
pub(crate) fn validate_given(
    request: &Parts,
    upgrades_to_websocket: bool,
) -> Result<Option<HeaderValue>, HandshakeRejection> {
    #[cfg(feature = "http2")]
    if is_extended_connect(&request.method, &request.extensions) {
        check_version(&request.headers)?;
        return Ok(None);
    }
    validate_http1(request, upgrades_to_websocket).map(Some)
}

/// `Sec-WebSocket-Version` must be exactly `13`.
fn check_version(headers: &HeaderMap) -> Result<(), HandshakeRejection> {
    let versions = headers.get_all(header::SEC_WEBSOCKET_VERSION);
    let mut iter = versions.iter();
    match (iter.next(), iter.next()) {
        (None, _) if headers.contains_key("sec-websocket-key1") => {
            Err(HandshakeRejection::LegacyHixie76)
        }
        (None, _) => Err(HandshakeRejection::MissingVersion),
        (Some(v), None) if v.as_bytes().trim_ascii() == b"13" => Ok(()),
        _ => {
            let asked: Vec<_> = versions
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            Err(HandshakeRejection::UnsupportedVersion(asked.join(", ")))
        }
    }
}

fn validate_http1(
    request: &Parts,
    upgrades_to_websocket: bool,
) -> Result<HeaderValue, HandshakeRejection> {
    let headers = &request.headers;
    // Without the feature an extended CONNECT cannot be told apart by its `:protocol` (hyper
    // keeps that behind its own `http2` feature), but a CONNECT on HTTP/2 that carries
    // WebSocket headers is one, and deserves an answer that names what is missing.
    #[cfg(not(feature = "http2"))]
    if request.method == Method::CONNECT && request.version == Version::HTTP_2 {
        return Err(HandshakeRejection::Http2NotEnabled);
    }
    if request.method != Method::GET {
        return Err(HandshakeRejection::MethodNotGet(request.method.clone()));
    }
    if request.version < Version::HTTP_11 {
        return Err(HandshakeRejection::HttpVersionTooOld);
    }
    if !upgrades_to_websocket {
        return Err(HandshakeRejection::InvalidUpgradeHeader);
    }
    if !header_has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(HandshakeRejection::InvalidConnectionHeader);
    }
    check_version(headers)?;
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key,
        _ => return Err(HandshakeRejection::MissingKey),
    };
    let key = key.as_bytes().trim_ascii();
    // On the stack: a key that decodes to more than fits is no 16-byte nonce either.
    let mut raw = [0u8; 18];
    match STANDARD.decode_slice(key, &mut raw) {
        Ok(16) => Ok(accept_key(key)),
        _ => Err(HandshakeRejection::InvalidKey),
    }
}

/// `Sec-WebSocket-Accept` for a key: base64 of the SHA-1 of the key and the GUID.
pub(crate) fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    // The base64 of a 20-byte digest is 28 bytes, written on the stack and copied once.
    let mut encoded = [0u8; 28];
    let written = STANDARD
        .encode_slice(sha1.finalize(), &mut encoded)
        .expect("28 bytes hold the base64 of a SHA-1 digest");
    HeaderValue::from_bytes(&encoded[..written]).expect("base64 is a valid header value")
}

/// A refusal of the [`before_upgrade`](crate::WebSocketLayer::before_upgrade) hook: the
/// response the client gets instead of the `101`.
///
/// ```
/// use http::StatusCode;
/// use tower_websocket::handshake::Refusal;
///
/// let refusal = Refusal::new(StatusCode::UNAUTHORIZED, "log in first")
///     .header(http::header::WWW_AUTHENTICATE, "Bearer");
/// let response = refusal.into_response();
/// assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
/// assert_eq!(response.headers()["www-authenticate"], "Bearer");
/// ```
#[derive(Debug)]
pub struct Refusal {
    response: Box<Response<Bytes>>,
    /// A header did not convert: the response is a 500 that later headers leave alone.
    broken: bool,
}

impl Refusal {
    /// A refusal with this status and a plain-text body.
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        let mut response = Response::new(body.into());
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Refusal::from(response)
    }

    /// Sets a header of the response, replacing any of the same name. The name and the value
    /// may be anything that converts into a [`HeaderName`] and a [`HeaderValue`]: typed
    /// constants, `&str`, `String`, ...
    ///
    /// A name or value that does not convert (a value with a line break, say) is a bug in the
    /// server, as it is for axum's `(name, value)` response parts: the refusal becomes a
    /// `500 Internal Server Error` and the conversion error is logged.
    ///
    /// ```
    /// use http::{header, StatusCode};
    /// use tower_websocket::Refusal;
    ///
    /// let wait = 30;
    /// let response = Refusal::new(StatusCode::TOO_MANY_REQUESTS, "slow down")
    ///     .header(header::RETRY_AFTER, wait.to_string())
    ///     .header("x-request-id", "abc")
    ///     .into_response();
    /// assert_eq!(response.headers()["retry-after"], "30");
    /// assert_eq!(response.headers()["x-request-id"], "abc");
    ///
    /// let broken = Refusal::new(StatusCode::UNAUTHORIZED, "log in first")
    ///     .header("x-note", "line\nbreak")
    ///     .into_response();
    /// assert_eq!(broken.status(), StatusCode::INTERNAL_SERVER_ERROR);
    /// ```
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: fmt::Display,
        V: TryInto<HeaderValue>,
        V::Error: fmt::Display,
    {
        if self.broken {
            return self;
        }
        let name = match name.try_into() {
            Ok(name) => name,
            Err(error) => return Self::broken_header("name", &error),
        };
        match value.try_into() {
            Ok(value) => {
                self.response.headers_mut().insert(name, value);
                self
            }
            Err(error) => Self::broken_header(&format!("value of {name}"), &error),
        }
    }

    fn broken_header(what: &str, error: &dyn fmt::Display) -> Self {
        tracing::error!(%error, "a WebSocket refusal's header {what} is invalid; answering 500");
        let mut response = Response::new(Bytes::from_static(b"internal server error\n"));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        Refusal {
            response: Box::new(response),
            broken: true,
        }
    }

    /// The response.
    pub fn into_response(self) -> Response<PlainBody> {
        (*self.response).map(PlainBody::new)
    }
}

impl From<HandshakeRejection> for Refusal {
    fn from(rejection: HandshakeRejection) -> Self {
        Refusal::from(rejection.to_response())
    }
}

impl From<Response<Bytes>> for Refusal {
    fn from(response: Response<Bytes>) -> Self {
        Refusal {
            response: Box::new(response),
            broken: false,
        }
    }
}

/// The answer to an accepted handshake, with the headers a `before_upgrade` hook added:
/// `101 Switching Protocols` on HTTP/1.1 (`accept` is the `Sec-WebSocket-Accept` value), `200`
/// on HTTP/2 (`accept` is `None`; the stream itself becomes the WebSocket).
pub(crate) fn accepted<B: Default>(
    accept: Option<HeaderValue>,
    protocol: Option<&HeaderValue>,
    extra: HeaderMap,
) -> Response<B> {
    let mut res = Response::new(B::default());
    let headers = res.headers_mut();
    *headers = extra;
    match accept {
        Some(accept) => {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        }
        None => *res.status_mut() = StatusCode::OK,
    }
    if let Some(protocol) = protocol {
        res.headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
    }
    res
}

/// Leaves the headers `keep` keeps, and copies their values and the URI, which hyper hands
/// out as slices of its connection read buffer, into one allocation of their own size, so that
/// the `Parts` a socket keeps for its whole life do not keep that buffer alive; an extensions
/// map left empty is replaced by one that holds no allocation.
pub(crate) fn detach_from_read_buffer(parts: &mut Parts, keep: &keep::KeepHeaders) {
    keep.apply(&mut parts.headers);
    let path = parts.uri.path_and_query().map(|pq| pq.as_str());
    let authority = parts.uri.authority().map(|a| a.as_str());
    let values: usize = parts.headers.values().map(|v| v.len()).sum();
    let mut buf =
        Vec::with_capacity(values + path.map_or(0, str::len) + authority.map_or(0, str::len));
    for value in parts.headers.values() {
        buf.extend_from_slice(value.as_bytes());
    }
    let path_at = buf.len();
    buf.extend_from_slice(path.unwrap_or("").as_bytes());
    let authority_at = buf.len();
    buf.extend_from_slice(authority.unwrap_or("").as_bytes());
    let buf = bytes::Bytes::from(buf);

    let mut at = 0;
    for value in parts.headers.values_mut() {
        let end = at + value.len();
        // The bytes were a valid header value a moment ago; on the impossible failure the
        // original value is kept.
        if let Ok(mut copy) = http::HeaderValue::from_maybe_shared(buf.slice(at..end)) {
            copy.set_sensitive(value.is_sensitive());
            *value = copy;
        }
        at = end;
    }
    let (has_path, has_authority) = (path.is_some(), authority.is_some());
    // Taken, not cloned: it is put back only if the copy does not convert.
    let original = std::mem::take(&mut parts.uri);
    let mut uri = original.clone().into_parts();
    if has_path {
        if let Ok(pq) = http::uri::PathAndQuery::from_maybe_shared(buf.slice(path_at..authority_at))
        {
            uri.path_and_query = Some(pq);
        }
    }
    if has_authority {
        if let Ok(a) = http::uri::Authority::from_maybe_shared(buf.slice(authority_at..)) {
            uri.authority = Some(a);
        }
    }
    parts.uri = http::Uri::from_parts(uri).unwrap_or(original);
    // axum's copy of the URI before any nesting: the same bytes, shared, unless a nested
    // router stripped a prefix, then a copy of its own.
    #[cfg(feature = "axum")]
    if let Some(axum::extract::OriginalUri(original)) = parts.extensions.get_mut() {
        if *original == parts.uri {
            *original = parts.uri.clone();
        } else if let Ok(copy) = http::Uri::try_from(original.to_string()) {
            *original = copy;
        }
    }
    // Hyper's upgrade handle, taken out already, is often the only extension: an empty map
    // still holds its table, a new one holds nothing.
    if parts.extensions.is_empty() {
        parts.extensions = http::Extensions::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn request() -> http::request::Builder {
        Request::get("/chat")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    fn refusal(req: Request<()>) -> HandshakeRejection {
        validate(&parts(req)).unwrap_err()
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn browser_connection_header_is_accepted() {
        let accept = validate(&parts(request().body(()).unwrap())).unwrap();
        assert_eq!(accept.unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn plain_and_h2c_requests_are_not_attempts() {
        assert!(!is_websocket_attempt(
            Request::get("/").body(()).unwrap().headers()
        ));
        let h2c = Request::get("/")
            .header("upgrade", "h2c")
            .header("connection", "upgrade")
            .body(())
            .unwrap();
        assert!(!is_websocket_attempt(h2c.headers()));
        assert!(is_websocket_attempt(request().body(()).unwrap().headers()));
    }

    #[test]
    fn post_is_refused() {
        let req = request().method(Method::POST).body(()).unwrap();
        assert_eq!(refusal(req), HandshakeRejection::MethodNotGet(Method::POST));
    }

    #[test]
    fn http10_is_refused() {
        let req = request().version(Version::HTTP_10).body(()).unwrap();
        assert_eq!(refusal(req), HandshakeRejection::HttpVersionTooOld);
    }

    #[test]
    fn missing_connection_token_is_refused() {
        let req = Request::get("/")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        assert_eq!(refusal(req), HandshakeRejection::InvalidConnectionHeader);
    }

    #[test]
    fn key_of_wrong_length_is_refused() {
        let req = Request::get("/")
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "c2hvcnQ=")
            .body(())
            .unwrap();
        assert_eq!(refusal(req), HandshakeRejection::InvalidKey);
    }

    #[test]
    fn keys_that_decode_to_more_than_16_bytes_are_refused() {
        // 17 bytes (one past the nonce), 18 (the decode buffer's size) and 32 (past it).
        for key in [
            "AAAAAAAAAAAAAAAAAAAAAAA=",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            let req = Request::get("/")
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", key)
                .body(())
                .unwrap();
            assert_eq!(refusal(req), HandshakeRejection::InvalidKey, "{key}");
        }
    }

    #[test]
    fn tokens_match_alone_in_any_case_or_inside_a_list() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("UpGrade"));
        assert!(header_has_token(&headers, &header::CONNECTION, "upgrade"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(header_has_token(&headers, &header::CONNECTION, "upgrade"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgraded"));
        assert!(!header_has_token(&headers, &header::CONNECTION, "upgrade"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.append(header::CONNECTION, HeaderValue::from_static("upgrade"));
        assert!(header_has_token(&headers, &header::CONNECTION, "upgrade"));
    }

    #[test]
    fn hixie76_is_refused_with_426() {
        let req = Request::get("/")
            .header("upgrade", "WebSocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-key1", "4 @1  46546xW%0l 1 5")
            .header("sec-websocket-key2", "12998 5 Y3 1  .P00")
            .body(())
            .unwrap();
        let rejection = refusal(req);
        assert_eq!(rejection, HandshakeRejection::LegacyHixie76);
        assert_eq!(rejection.status(), StatusCode::UPGRADE_REQUIRED);
    }

    #[test]
    fn statuses_of_the_policy_refusals() {
        assert_eq!(
            HandshakeRejection::OriginNotAllowed("https://evil.example".into()).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            HandshakeRejection::TooManyConnections { limit: 3 }.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let none = HandshakeRejection::NoCommonProtocol {
            offered: String::new(),
            supported: "mqtt".into(),
        };
        assert_eq!(none.status(), StatusCode::BAD_REQUEST);
        assert!(none.to_string().contains("offer one of: mqtt"));
    }

    #[test]
    #[cfg(not(feature = "http2"))]
    fn extended_connect_without_the_http2_feature_names_the_feature() {
        let req = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri("https://example.com/ws")
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        let rejection = refusal(req);
        assert_eq!(rejection, HandshakeRejection::Http2NotEnabled);
        assert_eq!(rejection.status(), StatusCode::NOT_IMPLEMENTED);
        assert!(rejection.to_string().contains("`http2` cargo feature"));
    }

    #[test]
    #[cfg(feature = "http2")]
    fn extended_connect_is_validated_without_a_key() {
        let mut req = Request::connect("https://example.com/chat")
            .version(Version::HTTP_2)
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let parts = parts(req);
        assert!(is_extended_connect(&parts.method, &parts.extensions));
        assert_eq!(validate(&parts), Ok(None));
        let res: Response<()> = accepted(None, None, HeaderMap::new());
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get(header::UPGRADE).is_none());
    }

    #[test]
    fn hook_headers_cannot_override_the_handshake() {
        let mut extra = HeaderMap::new();
        extra.insert(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        extra.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("forged"),
        );
        let res: Response<()> = accepted(Some(HeaderValue::from_static("real")), None, extra);
        assert_eq!(res.headers()["set-cookie"], "a=1");
        assert_eq!(res.headers()["sec-websocket-accept"], "real");
    }

    #[test]
    #[cfg(feature = "axum")]
    fn the_original_uri_of_a_nested_router_is_detached_too() {
        let read_buffer = bytes::Bytes::from_static(b"/api/rooms/1 /rooms/1");
        let original = http::Uri::from_maybe_shared(read_buffer.slice(0..12)).unwrap();
        let nested = http::Uri::from_maybe_shared(read_buffer.slice(13..)).unwrap();
        let (mut parts, ()) = http::Request::builder()
            .uri(nested)
            .extension(axum::extract::OriginalUri(original))
            .body(())
            .unwrap()
            .into_parts();

        detach_from_read_buffer(&mut parts, &keep::KeepHeaders::all());

        let axum::extract::OriginalUri(original) = parts.extensions.get().unwrap();
        assert_eq!(original, "/api/rooms/1");
        let range = read_buffer.as_ptr_range();
        assert!(!range.contains(&original.path().as_ptr()));
        assert!(!range.contains(&parts.uri.path().as_ptr()));
    }

    #[test]
    fn detached_parts_keep_every_value_and_share_no_byte_of_the_read_buffer() {
        // A read buffer, as hyper hands header values out: slices of one `Bytes`.
        let read_buffer = bytes::Bytes::from_static(b"/chat?room=1 example.com secret-token");
        let mut request = http::Request::builder()
            .uri(http::Uri::from_maybe_shared(read_buffer.slice(0..12)).unwrap())
            .header(
                "host",
                http::HeaderValue::from_maybe_shared(read_buffer.slice(13..24)).unwrap(),
            )
            .body(())
            .unwrap();
        let mut token = http::HeaderValue::from_maybe_shared(read_buffer.slice(25..)).unwrap();
        token.set_sensitive(true);
        request.headers_mut().insert("authorization", token);
        let (mut parts, ()) = request.into_parts();

        detach_from_read_buffer(&mut parts, &keep::KeepHeaders::all());

        assert_eq!(parts.uri, "/chat?room=1");
        assert_eq!(parts.uri.query(), Some("room=1"));
        assert_eq!(parts.headers["host"], "example.com");
        assert_eq!(parts.headers["authorization"], "secret-token");
        assert!(parts.headers["authorization"].is_sensitive());
        let outside = |p: *const u8| {
            let range = read_buffer.as_ptr_range();
            !range.contains(&p)
        };
        assert!(outside(parts.headers["host"].as_bytes().as_ptr()));
        assert!(outside(parts.headers["authorization"].as_bytes().as_ptr()));
        assert!(outside(parts.uri.path().as_ptr()));
    }
}
