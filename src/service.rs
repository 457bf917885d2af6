//! [`WebSocketService`]: answers WebSocket upgrades itself and hands every other request to the
//! inner service, unchanged.
//!
//! Built by [`WebSocketLayer`](crate::WebSocketLayer) (as a layer, or standalone with
//! [`WebSocketLayer::into_service`](crate::WebSocketLayer::into_service)). Its error type is
//! the inner service's, so it fits under `Router::layer`; its response body is
//! [`ResponseBody`], which is the inner body untouched for every request it passes through.
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceExt};
//! use tower_layer::Layer;
//! use tower_websocket::{WebSocket, WebSocketLayer};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let inner = service_fn(|_req: Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("from the inner service")))
//! });
//! let svc = WebSocketLayer::new(|_ws: WebSocket| async {}).layer(inner);
//!
//! // A plain request passes through.
//! let res = svc.oneshot(Request::get("/").body(String::new()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! # });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::upgrade::OnUpgrade;
use pin_project_lite::pin_project;
use tower_service::Service;
use tracing::Instrument;

use crate::body::ResponseBody;
use crate::connection;
use crate::handle::Registry;
use crate::handshake::{self, HandshakeRejection, Refusal};
use crate::layer::Config;
use crate::socket::Shared;

/// A service that answers WebSocket upgrades and forwards everything else to `S`.
///
/// `poll_ready` is the inner service's; an upgrade is answered without calling the inner
/// service.
pub struct WebSocketService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> WebSocketService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        WebSocketService { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, by value.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for WebSocketService<S> {
    fn clone(&self) -> Self {
        WebSocketService {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S> std::fmt::Debug for WebSocketService<S>
where
    S: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

/// The service, written once for both sets of bounds on the request body: with the `hixie76`
/// feature the body must be readable, because a hixie-76 client may send its 8 key bytes as a
/// body (with `Content-Length: 8`).
macro_rules! service_impl {
    ($($body_bounds:tt)*) => {
impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for WebSocketService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    $($body_bounds)*
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        #[cfg(feature = "http2")]
        let attempt = handshake::is_websocket_attempt(req.headers())
            || handshake::is_extended_connect(req.method(), req.extensions());
        #[cfg(not(feature = "http2"))]
        let attempt = handshake::is_websocket_attempt(req.headers());
        if !attempt {
            return ResponseFuture::inner(self.inner.call(req));
        }
        let (parts, body) = req.into_parts();
        match accept(parts, &self.config, body) {
            Ok(response) => ResponseFuture::ready(response),
            Err(refusal) => {
                let response = refusal.into_response();
                self.config.registry.count_rejection(response.status());
                tracing::debug!(status = %response.status(), "WebSocket handshake refused");
                ResponseFuture::ready(response.map(ResponseBody::from))
            }
        }
    }
}
    };
}

#[cfg(not(feature = "hixie76"))]
service_impl!();
#[cfg(feature = "hixie76")]
service_impl!(ReqBody: http_body::Body + Send + 'static, ReqBody::Data: Send,);

/// Runs every check on a WebSocket attempt, in order: the RFC's rules (400/426), the origin
/// policy (403), the subprotocol (400 when required), the `before_upgrade` hook (its own
/// answer), an upgradable connection (426), shutdown and the connection limit (503). Then
/// spawns the connection and answers `101` (or `200` on HTTP/2).
#[cfg(not(feature = "hixie76"))]
fn accept<B, ReqBody>(
    parts: Parts,
    config: &Arc<Config>,
    _body: ReqBody,
) -> Result<Response<ResponseBody<B>>, Refusal> {
    let accept_key = handshake::validate(&parts)?;
    accept_rfc(accept_key, parts, config)
}

/// [`accept`], and with legacy drafts accepted, a refused RFC 6455 attempt is looked at again
/// as a legacy one (the RFC path pays nothing for it).
#[cfg(feature = "hixie76")]
fn accept<B, ReqBody>(
    parts: Parts,
    config: &Arc<Config>,
    body: ReqBody,
) -> Result<Response<ResponseBody<B>>, Refusal>
where
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Data: Send,
{
    match handshake::validate(&parts) {
        Ok(_) if config.legacy_drafts && crate::legacy::has_draft_keys(&parts.headers) => {
            Err(HandshakeRejection::MixedDrafts.into())
        }
        Ok(accept_key) => accept_rfc(accept_key, parts, config),
        Err(rejection) if config.legacy_drafts => {
            crate::legacy::accept(parts, config, rejection, body)
        }
        Err(rejection) => Err(rejection.into()),
    }
}

/// The RFC 6455 (and RFC 8441) handshake.
fn accept_rfc<B>(
    accept_key: Option<http::HeaderValue>,
    mut parts: Parts,
    config: &Arc<Config>,
) -> Result<Response<ResponseBody<B>>, Refusal> {
    config.origin.check(&parts)?;
    let protocol = config.subprotocols.choose(&parts)?;
    let mut headers = HeaderMap::new();
    if let Some(hook) = &config.before_upgrade {
        hook(&mut parts, &mut headers)?;
    }
    // After the hook, so that its headers cannot speak for the extension.
    #[cfg(feature = "deflate")]
    let extensions = config.deflate.as_ref().and_then(|deflate| {
        let (agreed, answer) = crate::deflate::negotiate(&parts.headers, deflate)?;
        headers.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, answer);
        Some(agreed)
    });
    #[cfg(not(feature = "deflate"))]
    let extensions = ();
    // Checked after the policies, so that `oneshot` tests (which have no upgrade handle)
    // can still see every policy's refusal.
    let on_upgrade = parts
        .extensions
        .remove::<OnUpgrade>()
        .ok_or(HandshakeRejection::ConnectionNotUpgradable)?;
    if config.registry.is_shutting_down() {
        return Err(HandshakeRejection::ShuttingDown.into());
    }
    let mut slot = ConnectionSlot::take(config)?;
    detach_from_read_buffer(&mut parts);
    let response = handshake::accepted(accept_key, protocol.as_ref(), headers);
    let shared = Arc::new(Shared::default());
    config.registry.spawn(Arc::clone(&shared), |id| {
        slot.id = id;
        // The connection runs in the span of the request (a `TraceLayer` span, say), so its
        // closure log is attributed to the request that opened it.
        let task = connection::run(
            on_upgrade,
            parts,
            protocol,
            extensions,
            Arc::clone(config),
            shared,
            slot,
        );
        // Boxed first: the future is a few KiB, and tokio moves what it is given through
        // several calls before it lands in the task; a box is moved instead, and copied once.
        tokio::spawn(Box::pin(task).instrument(tracing::Span::current())).abort_handle()
    });
    Ok(response)
}

/// Copies the request's header values and URI, which hyper hands out as slices of its
/// connection read buffer (8 to 16 KiB), into one allocation of their own size, so that the
/// `Parts` a socket keeps for its whole life do not keep that buffer alive; an extensions map
/// left empty is replaced by one that holds no allocation.
pub(crate) fn detach_from_read_buffer(parts: &mut Parts) {
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
    let original = parts.uri.clone();
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
    // Hyper's upgrade handle, taken out already, is often the only extension: an empty map
    // still holds its table (about 280 bytes), a new one holds nothing.
    if parts.extensions.is_empty() {
        parts.extensions = http::Extensions::new();
    }
}

/// One place under [`WebSocketLayer::max_connections`](crate::WebSocketLayer::max_connections),
/// held from the `101` until the connection and its handler have both ended.
pub(crate) struct ConnectionSlot {
    registry: Arc<Registry>,
    /// The connection's index in the registry, once registered.
    pub(crate) id: usize,
}

impl ConnectionSlot {
    pub(crate) fn take(config: &Config) -> Result<Self, HandshakeRejection> {
        let live = &config.registry.live;
        match config.max_connections {
            None => {
                live.fetch_add(1, Ordering::AcqRel);
            }
            Some(limit) => {
                live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < limit).then_some(n + 1)
                })
                .map_err(|_| HandshakeRejection::TooManyConnections { limit })?;
            }
        }
        Ok(ConnectionSlot {
            registry: Arc::clone(&config.registry),
            id: usize::MAX,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.registry.unregister(self.id);
    }
}

pin_project! {
    /// The response future of [`WebSocketService`]: the inner service's future, or an answer
    /// ready at once (a refusal or the `101`).
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: FutureKind<F, B>,
    }
}

pin_project! {
    #[project = FutureKindProj]
    enum FutureKind<F, B> {
        Inner { #[pin] future: F },
        Ready { response: Option<Response<ResponseBody<B>>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn inner(future: F) -> Self {
        ResponseFuture {
            kind: FutureKind::Inner { future },
        }
    }

    fn ready(response: Response<ResponseBody<B>>) -> Self {
        ResponseFuture {
            kind: FutureKind::Ready {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutureKindProj::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(ResponseBody::inner)))
            }
            FutureKindProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

/// The inner service of a standalone [`WebSocketService`]: answers every request that is not a
/// WebSocket attempt with `426 Upgrade Required`.
///
/// Made by [`WebSocketLayer::into_service`](crate::WebSocketLayer::into_service).
#[derive(Debug, Clone, Copy, Default)]
pub struct UpgradeRequired;

impl<B> Service<Request<B>> for UpgradeRequired {
    type Response = Response<Full<bytes::Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        std::future::ready(Ok(HandshakeRejection::UpgradeRequired.into_response()))
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            FutureKind::Inner { .. } => "Inner",
            FutureKind::Ready { .. } => "Ready",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_parts_keep_every_value_and_share_no_byte_of_the_read_buffer() {
        // A read buffer, as hyper hands header values out: slices of one `Bytes`.
        let read_buffer = bytes::Bytes::from_static(b"/chat?room=1 example.com secret-token");
        let mut request = Request::builder()
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

        detach_from_read_buffer(&mut parts);

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
