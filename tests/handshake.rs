//! The layer as a tower service, driven with `ServiceExt::oneshot`: what passes through, and
//! every handshake refusal with its status and body.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_layer::Layer;
use tower_websocket::{OriginPolicy, Refusal, WebSocket, WebSocketLayer};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn layer() -> WebSocketLayer {
    WebSocketLayer::new(|_ws: WebSocket| async {})
}

fn upgrade() -> http::request::Builder {
    Request::get("/ws")
        .header("host", "example.com")
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", KEY)
}

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "plain page" }))
        .layer(layer())
}

async fn body_text<B>(res: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// Sends `req` through the router and returns status, headers and body.
async fn refusal(req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let res = app().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    (status, headers, body_text(res).await)
}

#[tokio::test]
async fn plain_request_passes_through_untouched() {
    let inner = service_fn(|req: Request<Body>| async move {
        let mut res = Response::new(Body::from(format!("inner saw {}", req.uri())));
        res.headers_mut().insert("x-inner", "yes".parse().unwrap());
        *res.status_mut() = StatusCode::IM_A_TEAPOT;
        Ok::<_, Infallible>(res)
    });
    let svc = layer().layer(inner);
    let res = svc
        .oneshot(Request::get("/tea?cup=1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(res.headers()["x-inner"], "yes");
    assert_eq!(body_text(res).await, "inner saw /tea?cup=1");
}

#[tokio::test]
async fn router_404_passes_through() {
    let res = app()
        .oneshot(Request::get("/nowhere").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn inner_errors_pass_through() {
    let inner =
        service_fn(|_req: Request<Body>| async { Err::<Response<Body>, _>("inner failed") });
    let err = layer()
        .layer(inner)
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err, "inner failed");
}

/// An inner service that counts `poll_ready` calls and is not ready until its second one.
#[derive(Clone, Default)]
struct CountingReady(Arc<AtomicUsize>);

impl Service<Request<Body>> for CountingReady {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _req: Request<Body>) -> Self::Future {
        std::future::ready(Ok(Response::new(Body::from("ready"))))
    }
}

#[tokio::test]
async fn poll_ready_is_the_inner_services() {
    let inner = CountingReady::default();
    let count = inner.0.clone();
    let mut svc = layer().layer(inner);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_pending());
    assert!(svc.poll_ready(&mut cx).is_ready());
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn works_under_service_builder_and_route_layer() {
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::from("sb")))
        });
    let res = svc
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(body_text(res).await, "sb");

    let app = Router::new()
        .route("/ws", get(|| async { "GET /ws without upgrade" }))
        .route_layer(layer());
    let res = app
        .clone()
        .oneshot(Request::get("/ws").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(body_text(res).await, "GET /ws without upgrade");
    // The layer only sees matched routes under route_layer: an upgrade to /ws is handled...
    let res = app
        .clone()
        .oneshot(
            upgrade()
                .header("sec-websocket-version", "7")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
    assert!(body_text(res).await.contains("\"13, 7\" is not supported"));
    // ...and one to an unknown path is the router's 404.
    let res = app
        .oneshot(
            Request::get("/elsewhere")
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn valid_handshake_without_upgrade_support_is_refused_with_426() {
    // `oneshot` gives no hyper upgrade handle: the layer says so instead of a 101 that could
    // never be honoured.
    let (status, _, body) = refusal(upgrade().body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
    assert!(body.contains("cannot be upgraded"), "{body}");
}

#[tokio::test]
async fn rejects_post_with_400() {
    let (status, _, body) =
        refusal(upgrade().method(Method::POST).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("must be GET, not POST"), "{body}");
}

#[tokio::test]
async fn rejects_http10_with_400() {
    let (status, _, body) = refusal(
        upgrade()
            .version(Version::HTTP_10)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("HTTP/1.1"), "{body}");
}

#[tokio::test]
async fn rejects_missing_connection_upgrade_with_400() {
    let req = Request::get("/ws")
        .header("upgrade", "websocket")
        .header("connection", "keep-alive")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", KEY)
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = refusal(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("Connection header must contain the token \"upgrade\""),
        "{body}"
    );
}

#[tokio::test]
async fn rejects_wrong_upgrade_header_with_400() {
    let req = Request::get("/ws")
        .header("upgrade", "h2c")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", KEY)
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = refusal(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("Upgrade header must be \"websocket\""),
        "{body}"
    );
}

#[tokio::test]
async fn rejects_other_version_with_426_and_version_13() {
    let req = Request::get("/ws")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", KEY)
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = refusal(req).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(headers["sec-websocket-version"], "13");
    assert!(body.contains("\"8\" is not supported"), "{body}");
}

#[tokio::test]
async fn rejects_missing_version_with_400() {
    let req = Request::get("/ws")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", KEY)
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = refusal(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers["sec-websocket-version"], "13");
    assert!(
        body.contains("Sec-WebSocket-Version header is missing"),
        "{body}"
    );
}

#[tokio::test]
async fn rejects_missing_key_with_400() {
    let req = Request::get("/ws")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = refusal(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("Sec-WebSocket-Key"), "{body}");
}

#[tokio::test]
async fn rejects_duplicate_key_with_400() {
    let req = upgrade()
        .header("sec-websocket-key", KEY)
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = refusal(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("exactly one Sec-WebSocket-Key"), "{body}");
}

#[tokio::test]
async fn rejects_key_that_is_not_16_bytes_with_400() {
    let req = Request::get("/ws")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "not base64!")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = refusal(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("base64 encoding of 16 bytes"), "{body}");
}

#[tokio::test]
async fn rejects_hixie76_with_426() {
    let req = Request::get("/ws")
        .header("upgrade", "WebSocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key1", "4 @1  46546xW%0l 1 5")
        .header("sec-websocket-key2", "12998 5 Y3 1  .P00")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = refusal(req).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(headers["sec-websocket-version"], "13");
    assert!(body.contains("hixie-76"), "{body}");
}

#[tokio::test]
async fn refusal_bodies_are_plain_text() {
    let (_, headers, _) = refusal(upgrade().method(Method::PUT).body(Body::empty()).unwrap()).await;
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn standalone_service_answers_plain_requests_with_426() {
    let app = Router::new().route_service("/ws", layer().into_service());
    let res = app
        .oneshot(Request::get("/ws").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(res.headers()["upgrade"], "websocket");
    let body = body_text(res).await;
    assert!(body.contains("only speaks WebSocket"), "{body}");
}

#[tokio::test]
async fn policy_refusals_are_visible_to_oneshot() {
    // No upgrade handle under oneshot, yet the origin policy answers first.
    let req = upgrade()
        .header("origin", "http://evil.example")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = refusal(req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("evil.example"), "{body}");
}

#[tokio::test]
async fn same_site_or_listed_origins_accepts_both_and_refuses_the_rest() {
    let policy = OriginPolicy::same_site().or(OriginPolicy::list(["https://partner.example"]));
    let app = || {
        Router::new()
            .layer(WebSocketLayer::new(|_ws: WebSocket| async {}).origin_policy(policy.clone()))
    };
    let status = |origin: &'static str| {
        let req = upgrade()
            .header("origin", origin)
            .body(Body::empty())
            .unwrap();
        async move { app().oneshot(req).await.unwrap().status() }
    };
    // Past the origin policy, oneshot's missing upgrade handle answers 426.
    assert_eq!(
        status("http://example.com").await,
        StatusCode::UPGRADE_REQUIRED
    );
    assert_eq!(
        status("https://partner.example").await,
        StatusCode::UPGRADE_REQUIRED
    );
    assert_eq!(status("https://evil.example").await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn refusal_headers_may_be_computed_at_run_time() {
    let layer = WebSocketLayer::new(|_ws: WebSocket| async {}).before_upgrade(|request, _| {
        let realm = format!("Bearer realm=\"{}\"", request.uri.path());
        Err(Refusal::new(StatusCode::UNAUTHORIZED, "log in first")
            .header(http::header::WWW_AUTHENTICATE, realm)
            .header(String::from("x-hint"), "token"))
    });
    let res = Router::new()
        .layer(layer)
        .oneshot(upgrade().body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"/ws\"");
    assert_eq!(res.headers()["x-hint"], "token");
}
