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
use crate::handle::{ConnectionSlot, Registry};
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
        #[cfg(not(feature = "hixie76"))]
        let (mut parts, _body) = req.into_parts();
        #[cfg(feature = "hixie76")]
        let mut parts = match legacy_or_rfc(req, &self.config) {
            Ok(parts) => parts,
            Err(Ok(response)) => return ResponseFuture::ready(response),
            Err(Err(refusal)) => {
                let response = refused(refusal, &self.config.registry);
                return ResponseFuture::ready(response.map(ResponseBody::from));
            }
        };
        let checked = match check(&mut parts, &self.config) {
            Ok(checked) => checked,
            Err(refusal) => {
                let response = refused(refusal, &self.config.registry);
                return ResponseFuture::ready(response.map(ResponseBody::from));
            }
        };
        #[cfg(feature = "axum")]
        if let Some(prepare) = &self.config.prepare {
            let config = Arc::clone(&self.config);
            return ResponseFuture::preparing(prepare_then_finish(prepare(parts), checked, config));
        }
        match finish(parts, checked, &self.config) {
            Ok(response) => ResponseFuture::ready(response),
            Err(refusal) => {
                let response = refused(refusal, &self.config.registry);
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

/// The response to a refused handshake, counted and logged.
fn refused(refusal: Refusal, registry: &Registry) -> Response<Full<bytes::Bytes>> {
    let response = refusal.into_response();
    registry.count_rejection(response.status());
    tracing::debug!(status = %response.status(), "WebSocket handshake refused");
    response
}

/// With legacy drafts accepted, a request the RFC 6455 rules refuse is looked at again as a
/// legacy one and answered here; an RFC attempt comes back as its parts for the usual checks.
#[cfg(feature = "hixie76")]
#[allow(clippy::type_complexity, clippy::result_large_err)]
fn legacy_or_rfc<B, ReqBody>(
    req: Request<ReqBody>,
    config: &Arc<Config>,
) -> Result<Parts, Result<Response<ResponseBody<B>>, Refusal>>
where
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Data: Send,
{
    let (parts, body) = req.into_parts();
    if !config.legacy_drafts {
        return Ok(parts);
    }
    match handshake::validate(&parts) {
        Ok(_) if crate::legacy::has_draft_keys(&parts.headers) => {
            Err(Err(HandshakeRejection::MixedDrafts.into()))
        }
        Ok(_) => Ok(parts),
        Err(rejection) => Err(crate::legacy::accept(parts, config, rejection, body)),
    }
}

/// What the checks agreed, for the answer.
struct Checked {
    accept_key: Option<http::HeaderValue>,
    protocol: Option<http::HeaderValue>,
    headers: HeaderMap,
}

/// The handshake of a handler with extractors: they run first, then the connection is
/// accepted as any other, or refused with the extractor's rejection.
#[cfg(feature = "axum")]
fn prepare_then_finish(
    preparing: crate::socket::handler::Prepare,
    checked: Checked,
    config: Arc<Config>,
) -> PreparingFuture {
    Box::pin(async move {
        let (mut parts, prepared) = preparing.await;
        let result = match prepared {
            Ok(start) => {
                parts
                    .extensions
                    .insert(crate::socket::handler::Prepared::new(start));
                finish::<()>(parts, checked, &config)
            }
            Err(rejection) => {
                let (head, body) = rejection.into_parts();
                // A rejection's body is a short text; one that fails to read is left empty.
                let body = axum::body::to_bytes(body, 64 * 1024)
                    .await
                    .unwrap_or_default();
                Err(Refusal::from(Response::from_parts(head, body)))
            }
        };
        result.map_err(|refusal| refused(refusal, &config.registry))
    })
}

/// Runs every check on a WebSocket attempt, in order: the RFC's rules (400/426), the origin
/// policy (403), the subprotocol (400 when required), the `before_upgrade` hook (its own
/// answer), the required extensions (500), an upgradable connection (426), shutdown and the
/// connection limit (503). Then
/// spawns the connection and answers `101` (or `200` on HTTP/2).
fn check(parts: &mut Parts, config: &Config) -> Result<Checked, Refusal> {
    let accept_key = handshake::validate(parts)?;
    config.origin.check(parts)?;
    let protocol = config.subprotocols.choose(parts)?;
    let mut headers = HeaderMap::new();
    if let Some(hook) = &config.before_upgrade {
        hook(parts, &mut headers)?;
    }
    if let Some(missing) = config
        .required_extensions
        .iter()
        .find(|required| !(required.present)(&parts.extensions))
    {
        let rejection = HandshakeRejection::MissingExtension {
            type_name: missing.type_name,
        };
        tracing::error!(missing = missing.type_name, "{rejection}");
        return Err(rejection.into());
    }
    Ok(Checked {
        accept_key,
        protocol,
        headers,
    })
}

/// Accepts a checked handshake: the extension, an upgradable connection (426), shutdown and
/// the connection limit (503); then spawns the connection and answers.
fn finish<B: Default>(
    mut parts: Parts,
    checked: Checked,
    config: &Arc<Config>,
) -> Result<Response<B>, Refusal> {
    let Checked {
        accept_key,
        protocol,
        headers,
    } = checked;
    #[cfg_attr(not(feature = "deflate"), allow(unused_mut))]
    let mut headers = headers;
    // After the hook, so that its headers cannot speak for the extension.
    #[cfg(feature = "deflate")]
    let extensions = config.deflate.as_ref().and_then(|deflate| {
        let (agreed, answer) = crate::wire::deflate::negotiate(&parts.headers, deflate)?;
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
    let slot = take_slot(config)?;
    detach_from_read_buffer(&mut parts);
    let response = handshake::accepted(accept_key, protocol.as_ref(), headers);
    let shared = Arc::new(Shared::default());
    config.registry.spawn(Arc::clone(&shared), slot, |slot| {
        // The connection runs in the span of the request (a `TraceLayer` span, say), so its
        // close log is attributed to the request that opened it.
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
    // still holds its table (about 280 bytes), a new one holds nothing.
    if parts.extensions.is_empty() {
        parts.extensions = http::Extensions::new();
    }
}

/// One place among the live sockets, or the refusal when
/// [`max_connections`](crate::WebSocketLayer::max_connections) are live.
pub(crate) fn take_slot(config: &Config) -> Result<ConnectionSlot, HandshakeRejection> {
    config.registry.take_slot(config.max_connections).ok_or(
        HandshakeRejection::TooManyConnections {
            limit: config.max_connections.unwrap_or(usize::MAX),
        },
    )
}

pin_project! {
    /// The response future of [`WebSocketService`]: the inner service's future, an answer
    /// ready at once (a refusal or the `101`), or the extractors of a handler that takes them,
    /// then the answer.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: FutureKind<F, B>,
    }
}

pin_project! {
    #[project = FutureKindProj]
    // `Preparing` is built with the `axum` feature only.
    #[allow(dead_code)]
    enum FutureKind<F, B> {
        Inner { #[pin] future: F },
        Ready { response: Option<Response<ResponseBody<B>>> },
        Preparing { future: PreparingFuture },
    }
}

/// A handler's extractors, then the accepted handshake's answer (its body is the layer's empty
/// one) or a refusal.
type PreparingFuture =
    Pin<Box<dyn Future<Output = Result<Response<()>, Response<Full<bytes::Bytes>>>> + Send>>;

impl<F, B> ResponseFuture<F, B> {
    fn inner(future: F) -> Self {
        ResponseFuture {
            kind: FutureKind::Inner { future },
        }
    }

    #[cfg(feature = "axum")]
    fn preparing(future: PreparingFuture) -> Self {
        ResponseFuture {
            kind: FutureKind::Preparing { future },
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
            FutureKindProj::Preparing { future } => {
                Poll::Ready(Ok(match ready!(future.as_mut().poll(cx)) {
                    Ok(accepted) => accepted.map(|()| ResponseBody::default()),
                    Err(refused) => refused.map(ResponseBody::from),
                }))
            }
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
            FutureKind::Preparing { .. } => "Preparing",
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
    #[cfg(feature = "axum")]
    fn the_original_uri_of_a_nested_router_is_detached_too() {
        let read_buffer = bytes::Bytes::from_static(b"/api/rooms/1 /rooms/1");
        let original = http::Uri::from_maybe_shared(read_buffer.slice(0..12)).unwrap();
        let nested = http::Uri::from_maybe_shared(read_buffer.slice(13..)).unwrap();
        let (mut parts, ()) = Request::builder()
            .uri(nested)
            .extension(axum::extract::OriginalUri(original))
            .body(())
            .unwrap()
            .into_parts();

        detach_from_read_buffer(&mut parts);

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
