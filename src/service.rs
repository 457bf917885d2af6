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

use crate::body::PlainBody;
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use hyper::upgrade::OnUpgrade;
use pin_project_lite::pin_project;
use tower_service::Service;
use tracing::Instrument;

use crate::body::ResponseBody;
use crate::config::Config;
use crate::connection;
use crate::handle::Registry;
use crate::handshake::{self, HandshakeRejection, Refusal};
use crate::socket::ControlBlock;

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
        let upgrades = handshake::upgrades_to_websocket(req.headers());
        let attempt = upgrades || handshake::carries_websocket_headers(req.headers());
        #[cfg(feature = "http2")]
        let attempt = attempt || handshake::is_extended_connect(req.method(), req.extensions());
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
        let checked = match check(&mut parts, upgrades, &self.config) {
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
fn refused(refusal: Refusal, registry: &Registry) -> Response<PlainBody> {
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
/// `upgrades` is what [`handshake::upgrades_to_websocket`] said of the request.
fn check(parts: &mut Parts, upgrades: bool, config: &Config) -> Result<Checked, Refusal> {
    let accept_key = handshake::validate_given(parts, upgrades)?;
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
    let extensions = config.connection.deflate.as_ref().and_then(|deflate| {
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
    let slot = config.take_slot()?;
    handshake::detach_from_read_buffer(&mut parts, &config.keep_headers);
    let response = handshake::accepted(accept_key, protocol.as_ref(), headers);
    let shared = Arc::new(ControlBlock::default());
    config.registry.spawn(Arc::clone(&shared), slot, |slot| {
        // The connection runs in the span of the request (a `TraceLayer` span, say), so its
        // close log is attributed to the request that opened it.
        let accepted = connection::Accepted {
            parts,
            protocol,
            extensions,
        };
        let task = connection::run(
            on_upgrade,
            accepted,
            &config.handler,
            Arc::clone(&config.connection),
            shared,
            slot,
        );
        // Boxed first: the future is a few KiB, and tokio moves what it is given through
        // several calls before it lands in the task; a box is moved instead, and copied once.
        let task = Box::pin(task);
        let span = tracing::Span::current();
        // Outside any span (or with no subscriber), spawned bare: `Instrumented` enters and
        // leaves even a disabled span on every poll.
        if span.is_disabled() {
            tokio::spawn(task).abort_handle()
        } else {
            tokio::spawn(task.instrument(span)).abort_handle()
        }
    });
    Ok(response)
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
    Pin<Box<dyn Future<Output = Result<Response<()>, Response<PlainBody>>> + Send>>;

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
    type Response = Response<PlainBody>;
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
