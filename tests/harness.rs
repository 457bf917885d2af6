//! The socket's behaviour through the in-process harness (`tower_websocket::testing`): the same
//! router a server would run, reached over an in-memory HTTP/1.1 connection instead of TCP.
//!
//! What needs bytes no library client sends (fragments, reserved bits, broken frames) stays in
//! `tests/socket.rs`, on a real socket.

#![cfg(feature = "testing")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_websocket::testing::{RefusedHandshake, TestClient};
use tower_websocket::{CloseCode, Error, Message, SendError, WebSocket, WebSocketLayer};

async fn echo(mut ws: WebSocket) {
    while let Some(msg) = ws.recv().await {
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}

fn app(layer: WebSocketLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "page" }))
        .layer(layer)
}

fn get_ws(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

async fn connect(app: Router, path: &str) -> TestClient {
    TestClient::connect(app, get_ws(path)).await.unwrap()
}

async fn refusal(app: Router, req: Request<()>) -> RefusedHandshake {
    match TestClient::connect(app, req).await {
        Ok(client) => panic!("expected a refusal, got 101: {client:?}"),
        Err(refused) => refused,
    }
}

/// What a handler reports through a channel, bounded in time.
async fn reported<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("timed out waiting for the handler's report")
        .expect("the handler ended without reporting")
}

// ----- messages -----

#[tokio::test]
async fn text_round_trip() {
    let mut client = connect(app(WebSocketLayer::new(echo)), "/any/path").await;
    client.send_text("héllo wörld ✓").await;
    assert_eq!(client.recv().await, Message::from("héllo wörld ✓"));
}

#[tokio::test]
async fn binary_round_trip() {
    let mut client = connect(app(WebSocketLayer::new(echo)), "/").await;
    let data: Vec<u8> = (0..=255).collect();
    client.send_binary(data.clone()).await;
    assert_eq!(client.recv_binary().await, data);
}

#[tokio::test]
async fn empty_messages_are_delivered() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            while let Some(msg) = ws.recv().await {
                tx.send(msg.clone()).unwrap();
                let _ = ws.send(msg).await;
            }
        }
    });
    let mut client = connect(app(layer), "/").await;
    client.send_text("").await;
    assert_eq!(reported(&mut rx).await, Message::from(""));
    assert_eq!(client.recv().await, Message::from(""));
    client.send_binary(Bytes::new()).await;
    assert_eq!(reported(&mut rx).await, Message::binary(Bytes::new()));
    assert_eq!(client.recv().await, Message::binary(Bytes::new()));
}

#[tokio::test]
async fn large_messages_round_trip() {
    let mut client = connect(app(WebSocketLayer::new(echo)), "/").await;
    let big: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
    client.send_binary(big.clone()).await;
    assert_eq!(client.recv_binary().await, big);
    client.send_text("after the big one").await;
    assert_eq!(client.recv_text().await, "after the big one");
}

#[tokio::test]
async fn many_messages_keep_their_order() {
    let mut client = connect(app(WebSocketLayer::new(echo)), "/").await;
    // All sent before any is read: the client keeps reading behind the scenes.
    for i in 0..500 {
        client.send_text(i.to_string()).await;
    }
    for i in 0..500 {
        assert_eq!(client.recv_text().await, i.to_string());
    }
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let mut client = connect(app(WebSocketLayer::new(echo)), "/").await;
    client.send_text("before").await;
    client.ping("are you there").await;
    // The echo that came while waiting for the pong is kept, in order.
    assert_eq!(client.recv_text().await, "before");
    client.ping(Bytes::new()).await;
}

#[tokio::test]
async fn a_silent_handler_sends_nothing() {
    let layer = WebSocketLayer::new(|mut ws: WebSocket| async move {
        // Speaks only when spoken to.
        if ws.recv().await.is_some() {
            let _ = ws.send("spoken to").await;
        }
    });
    let mut client = connect(app(layer), "/").await;
    client.expect_no_message(Duration::from_millis(50)).await;
    client.send_text("hi").await;
    assert_eq!(client.recv_text().await, "spoken to");
}

#[tokio::test]
async fn messages_queued_before_returning_are_all_written() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        for i in 0..100 {
            ws.send(i.to_string()).await.unwrap();
        }
    });
    let mut client = connect(app(layer), "/").await;
    for i in 0..100 {
        assert_eq!(client.recv_text().await, i.to_string());
    }
    client.expect_close(1000).await;
}

// ----- closing -----

#[tokio::test]
async fn client_close_code_reaches_handler_and_send_after_fails() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            while ws.recv().await.is_some() {}
            // `recv` returned `None`: the peer's close is known, and sending fails.
            let code = ws
                .peer_close()
                .map(|f| (u16::from(f.code), f.reason.to_string()));
            let send_after_close = ws.send("too late").await;
            let recv_after_close = ws.recv().await;
            tx.send((code, send_after_close, recv_after_close)).unwrap();
        }
    });
    let mut client = connect(app(layer), "/").await;
    let answer = client.close(4001, "bye").await;
    // The server answers with the client's code.
    assert_eq!(answer.code, CloseCode::from(4001));
    let (code, send_after_close, recv_after_close) = reported(&mut rx).await;
    assert_eq!(code, Some((4001, "bye".to_string())));
    assert_eq!(
        send_after_close,
        Err(SendError::Closed(Message::text("too late")))
    );
    assert_eq!(recv_after_close, None);
}

#[tokio::test]
async fn returning_from_the_handler_closes_with_1000() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        let _ = ws.send("hello world").await;
    });
    let mut client = connect(app(layer), "/").await;
    assert_eq!(client.recv_text().await, "hello world");
    let frame = client.expect_close(CloseCode::NORMAL).await;
    assert_eq!(frame.reason, "");
}

#[tokio::test]
async fn handler_close_with_code_and_reason_reaches_client() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            ws.close_with(CloseCode::from(4002), "done here")
                .await
                .unwrap();
            let after = ws.send("after close").await;
            // recv keeps going until the peer answers the close.
            let end = ws.recv().await;
            tx.send((after, end, ws.peer_close().map(|f| u16::from(f.code))))
                .unwrap();
        }
    });
    let mut client = connect(app(layer), "/").await;
    let frame = client.expect_close(4002).await;
    assert_eq!(frame.reason, "done here");
    let (after, end, reply) = reported(&mut rx).await;
    assert_eq!(after, Err(SendError::Closed(Message::text("after close"))));
    assert_eq!(end, None);
    // `expect_close` answered with the server's code.
    assert_eq!(reply, Some(4002));
}

#[tokio::test]
async fn invalid_close_codes_are_refused_by_close_with() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let a = ws.close_with(CloseCode::NO_STATUS, "").await;
            let b = ws.close_with(CloseCode::NORMAL, &"x".repeat(124)).await;
            tx.send((a, b)).unwrap();
        }
    });
    let mut client = connect(app(layer), "/").await;
    let (a, b) = reported(&mut rx).await;
    assert_eq!(a, Err(Error::InvalidCloseCode(1005)));
    assert_eq!(b, Err(Error::CloseReasonTooLong(124)));
    // Neither call closed anything: returning does, with 1000.
    client.expect_close(1000).await;
}

#[tokio::test]
async fn client_close_with_a_forbidden_code_is_answered_with_1002() {
    let mut client = connect(app(WebSocketLayer::new(echo)), "/").await;
    // The harness sends what it is told, so the server's answer can be checked.
    let answer = client.close(1005, "").await;
    assert_eq!(answer.code, CloseCode::PROTOCOL_ERROR);
}

#[tokio::test]
async fn client_close_reason_over_123_bytes_is_answered_with_1002() {
    let mut client = connect(app(WebSocketLayer::new(echo)), "/").await;
    let answer = client.close(1000, &"a".repeat(124)).await;
    assert_eq!(answer.code, CloseCode::PROTOCOL_ERROR);
}

#[tokio::test]
async fn handler_error_closes_with_1011() {
    let layer =
        WebSocketLayer::new(|_ws: WebSocket| async { Err::<(), _>("database unreachable") });
    let mut client = connect(app(layer), "/").await;
    let frame = client.expect_close(CloseCode::INTERNAL_ERROR).await;
    // The error's text stays in the server's log; the peer learns nothing internal.
    assert!(!frame.reason.contains("database"), "{}", frame.reason);
}

#[tokio::test]
async fn handler_panic_closes_with_1011() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        if !ws.path().is_empty() {
            panic!("handler bug");
        }
    });
    let mut client = connect(app(layer), "/").await;
    client.expect_close(1011).await;
}

#[tokio::test]
async fn client_that_vanishes_ends_recv_with_none() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let got = ws.recv().await;
            tx.send((got, ws.peer_close().cloned())).unwrap();
        }
    });
    let client = connect(app(layer), "/").await;
    drop(client);
    let (got, frame) = reported(&mut rx).await;
    assert_eq!(got, None);
    assert_eq!(frame, None);
}

#[tokio::test]
async fn the_server_ends_the_connection_after_the_closing_handshake() {
    let mut client = connect(app(WebSocketLayer::new(echo)), "/").await;
    client.close(1000, "").await;
    let reason = client.expect_disconnect().await;
    assert!(reason.contains("ended the connection"), "{reason}");
}

#[tokio::test]
async fn a_client_that_does_not_answer_close_is_dropped_after_the_close_timeout() {
    let layer = WebSocketLayer::new(|mut ws: WebSocket| async move {
        let _ = ws.close().await;
        while ws.recv().await.is_some() {}
    })
    .close_timeout(Duration::from_millis(200));
    let mut client = TestClient::builder()
        .auto_answer(false)
        .connect(app(layer), get_ws("/"))
        .await
        .unwrap();
    client.expect_close(1000).await;
    // Never answered: the server gives up after its close timeout, not at once.
    let started = std::time::Instant::now();
    client.expect_disconnect().await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
}

// ----- keepalive and idle timeout -----

#[tokio::test]
async fn keepalive_pings_are_answered_while_the_test_is_not_reading() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            while let Some(msg) = ws.recv().await {
                tx.send(ws.rtt()).unwrap();
                let _ = ws.send(msg).await;
            }
        }
    })
    .ping_interval(Some(Duration::from_millis(20)))
    .ping_timeout(Duration::from_millis(200));
    let mut client = connect(app(layer), "/").await;
    client.expect_ping().await;
    // Longer than the ping timeout, without reading: the pongs go out in the background.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.send_text("still here").await;
    assert_eq!(client.recv_text().await, "still here");
    let rtt = reported(&mut rx).await;
    assert!(rtt.is_some(), "the server never got a pong");
}

#[tokio::test]
async fn a_client_that_does_not_answer_pings_is_closed_with_1011() {
    let layer = WebSocketLayer::new(echo)
        .ping_interval(Some(Duration::from_millis(20)))
        .ping_timeout(Duration::from_millis(50));
    let mut client = TestClient::builder()
        .auto_answer(false)
        .connect(app(layer), get_ws("/"))
        .await
        .unwrap();
    client.expect_ping().await;
    let frame = client.expect_close(CloseCode::INTERNAL_ERROR).await;
    assert_eq!(frame.reason, "keepalive ping timeout");
    // Answers are off: the client answers the close itself, late.
    assert_eq!(client.close(1000, "").await.code, CloseCode::INTERNAL_ERROR);
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_1001() {
    let layer = WebSocketLayer::new(echo)
        .ping_interval(None)
        .idle_timeout(Some(Duration::from_millis(100)));
    let mut client = connect(app(layer), "/").await;
    client.send_text("one").await;
    assert_eq!(client.recv_text().await, "one");
    let started = std::time::Instant::now();
    let frame = client.expect_close(CloseCode::GOING_AWAY).await;
    assert_eq!(frame.reason, "idle timeout");
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn message_over_the_limit_closes_with_1009() {
    let mut client = connect(app(WebSocketLayer::new(echo).max_message_size(1024)), "/").await;
    client.send_binary(vec![0u8; 1024]).await;
    assert_eq!(client.recv_binary().await.len(), 1024);
    client.send_binary(vec![0u8; 1025]).await;
    client.expect_close(CloseCode::MESSAGE_TOO_BIG).await;
}

#[tokio::test]
async fn frame_over_the_frame_limit_closes_with_1009() {
    let mut client = connect(app(WebSocketLayer::new(echo).max_frame_size(100)), "/").await;
    client.send_text("x".repeat(101)).await;
    client.expect_close(1009).await;
}

// ----- the environ -----

#[derive(Clone)]
struct Claims(&'static str);

#[tokio::test]
async fn environ_shows_path_protocol_origin_and_extensions() {
    let handler = |ws: WebSocket| async move {
        let seen = format!(
            "path={} query={:?} protocol={:?} origin={:?} user={:?} peer={:?} method={}",
            ws.path(),
            ws.query(),
            ws.protocol(),
            ws.origin(),
            ws.extension::<Claims>().map(|c| c.0),
            ws.peer_addr(),
            ws.environ().method,
        );
        let _ = ws.send(seen).await;
    };
    let app = Router::new()
        .layer(WebSocketLayer::new(handler).protocols(["chat.v2", "chat.v1"]))
        .layer(axum::middleware::from_fn(
            |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
                req.extensions_mut().insert(Claims("alice"));
                next.run(req).await
            },
        ));
    let peer: SocketAddr = "192.0.2.1:4321".parse().unwrap();
    let req = Request::get("/room/7?x=1")
        .header("sec-websocket-protocol", "chat.v1, chat.v2")
        // A page of the same site: the harness's `Host` is `localhost` unless the request says
        // otherwise (the default origin policy refuses other sites).
        .header("origin", "http://localhost")
        .body(())
        .unwrap();
    let mut client = TestClient::builder()
        .extension(ConnectInfo(peer))
        .connect(app, req)
        .await
        .unwrap();
    // The server's preference wins among the offered protocols.
    assert_eq!(client.protocol(), Some("chat.v2"));
    assert_eq!(
        client.response_headers()["sec-websocket-protocol"],
        "chat.v2"
    );
    assert_eq!(
        client.recv_text().await,
        "path=/room/7 query=Some(\"x=1\") protocol=Some(\"chat.v2\") \
         origin=Some(\"http://localhost\") user=Some(\"alice\") peer=Some(192.0.2.1:4321) \
         method=GET"
    );
}

#[tokio::test]
async fn request_extensions_reach_the_handler() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        let claims = ws.extension::<Claims>().map(|c| c.0);
        let _ = ws.send(format!("{claims:?} {:?}", ws.peer_addr())).await;
    });
    let peer: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    let builder = TestClient::builder().extension(Claims("from the builder"));
    // Extensions set on the request are carried over too, and win over the builder's.
    let req = Request::get("/")
        .extension(Claims("from the request"))
        .extension(ConnectInfo(peer))
        .body(())
        .unwrap();
    let mut client = builder.connect(app(layer.clone()), req).await.unwrap();
    assert_eq!(
        client.recv_text().await,
        "Some(\"from the request\") Some([2001:db8::1]:443)"
    );
    let mut client = builder.connect(app(layer), get_ws("/")).await.unwrap();
    assert_eq!(client.recv_text().await, "Some(\"from the builder\") None");
}

#[tokio::test]
async fn no_protocol_agreed_when_none_configured() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        let _ = ws.send(format!("{:?}", ws.protocol())).await;
    });
    let req = Request::get("/")
        .header("sec-websocket-protocol", "chat")
        .body(())
        .unwrap();
    let mut client = TestClient::connect(app(layer), req).await.unwrap();
    assert_eq!(client.protocol(), None);
    assert!(!client
        .response_headers()
        .contains_key("sec-websocket-protocol"));
    assert_eq!(client.recv_text().await, "None");
}

// ----- refusals -----

#[tokio::test]
async fn unsupported_version_is_refused_with_426() {
    let req = Request::get("/ws")
        .header("sec-websocket-version", "8")
        .body(())
        .unwrap();
    let refused = refusal(app(WebSocketLayer::new(echo)), req).await;
    assert_eq!(refused.status, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(refused.headers["sec-websocket-version"], "13");
    assert!(refused.body.contains("\"8\""), "{}", refused.body);
    assert!(refused.to_string().contains("426"), "{refused}");
}

#[tokio::test]
async fn bad_key_is_refused_with_400() {
    let req = Request::get("/ws")
        .header("sec-websocket-key", "c2hvcnQ=")
        .body(())
        .unwrap();
    let refused = refusal(app(WebSocketLayer::new(echo)), req).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.body.contains("Sec-WebSocket-Key"),
        "{}",
        refused.body
    );
}

#[tokio::test]
async fn post_and_http10_are_refused_with_400() {
    let post = Request::post("/ws").body(()).unwrap();
    let refused = refusal(app(WebSocketLayer::new(echo)), post).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.body.contains("POST"), "{}", refused.body);

    let http10 = Request::get("/ws")
        .version(Version::HTTP_10)
        .body(())
        .unwrap();
    let refused = refusal(app(WebSocketLayer::new(echo)), http10).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.body.contains("HTTP/1.1"), "{}", refused.body);
}

#[tokio::test]
async fn missing_version_is_refused_with_400() {
    // Without the defaults, the request carries exactly the headers set here.
    let req = Request::get("/ws")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .unwrap();
    let refused = TestClient::builder()
        .default_headers(false)
        .connect(app(WebSocketLayer::new(echo)), req)
        .await
        .unwrap_err();
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.headers["sec-websocket-version"], "13");
}

#[tokio::test]
async fn cross_site_origin_is_refused_with_403() {
    let req = Request::get("wss://app.example.com/ws")
        .header("origin", "https://evil.example.net")
        .body(())
        .unwrap();
    let refused = refusal(app(WebSocketLayer::new(echo)), req).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.body.contains("evil.example.net"),
        "{}",
        refused.body
    );
    // The same page on the same host is fine: the URI's authority became `Host`.
    let req = Request::get("wss://app.example.com/ws")
        .header("origin", "https://app.example.com")
        .body(())
        .unwrap();
    let mut client = TestClient::connect(app(WebSocketLayer::new(echo)), req)
        .await
        .unwrap();
    client.send_text("same site").await;
    assert_eq!(client.recv_text().await, "same site");
}

#[tokio::test]
async fn route_layer_upgrades_only_its_routes() {
    let app = Router::new()
        .route("/ws", get(|| async { "use a WebSocket client" }))
        .route_layer(WebSocketLayer::new(echo))
        .route("/", get(|| async { "page" }));
    let refused = refusal(app.clone(), get_ws("/elsewhere")).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    // A route below the layer answers as a plain route, whatever the headers.
    let refused = refusal(app.clone(), get_ws("/")).await;
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (StatusCode::OK, "page")
    );
    let mut client = connect(app, "/ws").await;
    client.send_text("routed").await;
    assert_eq!(client.recv_text().await, "routed");
}

#[tokio::test]
async fn refusals_also_work_with_oneshot_alone() {
    // Without the harness: one request through the service, no connection at all.
    let req = Request::get("/ws")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Body::empty())
        .unwrap();
    let res = app(WebSocketLayer::new(echo)).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
}

// ----- the inner service, with tower-test's mock -----

type MockReq = Request<Body>;
type MockRes = Response<Body>;

#[tokio::test]
async fn poll_ready_and_plain_requests_reach_the_inner_service() {
    let (mut svc, mut handle) =
        tower_test::mock::spawn_layer::<MockReq, MockRes, _>(WebSocketLayer::new(echo));

    // Readiness is the inner service's.
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());

    // A plain request goes to the inner service, unchanged; so does its answer.
    let answer = svc.call(
        Request::get("/plain?x=1")
            .header("x-test", "yes")
            .body(Body::from("request body"))
            .unwrap(),
    );
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.uri(), "/plain?x=1");
    assert_eq!(req.headers()["x-test"], "yes");
    let body = req.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "request body");
    let mut res = Response::new(Body::from("from the mock"));
    *res.status_mut() = StatusCode::IM_A_TEAPOT;
    send.send_response(res);
    let res = answer.await.unwrap();
    assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "from the mock");

    // An upgrade (not upgradable here: no connection) is answered by the layer alone.
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
    let upgrade = Request::get("/ws")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Body::empty())
        .unwrap();
    let res = svc.call(upgrade).await.unwrap();
    assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
    assert!(handle.poll_request().is_pending());
}

#[tokio::test]
async fn upgrades_through_the_harness_never_reach_the_inner_service() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Incoming>, MockRes>();
    handle.allow(2);
    let svc = WebSocketLayer::new(echo).layer(mock);
    let mut client = TestClient::connect(svc, get_ws("/ws")).await.unwrap();
    client.send_text("through the layer").await;
    assert_eq!(client.recv_text().await, "through the layer");
    // No request reached the mock (its channel may be closed by now: hyper dropped the service
    // once the connection was handed over).
    assert!(
        !matches!(handle.poll_request(), Poll::Ready(Some(_))),
        "the upgrade reached the inner service"
    );
}

// ----- the harness's own checks -----

/// A hand-written service that answers every request with what its function builds.
#[derive(Clone, Copy)]
struct Fake(fn(&Request<Incoming>) -> Response<String>);

impl tower::Service<Request<Incoming>> for Fake {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        std::future::ready(Ok((self.0)(&req)))
    }
}

#[tokio::test]
#[should_panic(expected = "Sec-WebSocket-Accept")]
async fn a_wrong_accept_key_fails_the_test() {
    let svc = Fake(|_req| {
        Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", "d3Jvbmc=")
            .body(String::new())
            .unwrap()
    });
    let _ = TestClient::connect(svc, get_ws("/")).await;
}

#[tokio::test]
#[should_panic(expected = "did not offer")]
async fn a_protocol_not_offered_fails_the_test() {
    let svc = Fake(|req| {
        let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
        Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", accept(&key))
            .header("sec-websocket-protocol", "b")
            .body(String::new())
            .unwrap()
    });
    let req = Request::get("/")
        .header("sec-websocket-protocol", "a")
        .body(())
        .unwrap();
    let _ = TestClient::connect(svc, req).await;
}

#[tokio::test]
#[should_panic(expected = "expected a message from the server within 50ms, but none came")]
async fn a_handler_that_never_answers_fails_the_test_in_time() {
    let layer =
        WebSocketLayer::new(|mut ws: WebSocket| async move { while ws.recv().await.is_some() {} });
    let mut client = connect(app(layer), "/").await;
    client.send_text("anyone?").await;
    client.recv_timeout(Duration::from_millis(50)).await;
}

#[tokio::test]
#[should_panic(
    expected = "expected the server to close with code 1000, but it closed with code 1011"
)]
async fn expect_close_names_both_codes() {
    let layer = WebSocketLayer::new(|_ws: WebSocket| async { Err::<(), _>("failed") });
    let mut client = connect(app(layer), "/").await;
    client.expect_close(1000).await;
}

#[tokio::test]
#[should_panic(expected = "expected a message, but the server closed the connection (code 1000")]
async fn recv_after_the_server_closed_says_so() {
    let layer = WebSocketLayer::new(|_ws: WebSocket| async {});
    let mut client = connect(app(layer), "/").await;
    client.recv().await;
}

#[tokio::test]
#[should_panic(expected = "expected no message for 1s, but the server sent")]
async fn expect_no_message_fails_on_a_message() {
    let layer = WebSocketLayer::new(|ws: WebSocket| async move {
        let _ = ws.send("surprise").await;
        std::future::pending::<()>().await;
    });
    let mut client = connect(app(layer), "/").await;
    client.expect_no_message(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_service_that_is_not_a_websocket_server_is_a_refusal() {
    let plain = Router::new().route("/", get(|| async { "just a page" }));
    let refused = refusal(plain, get_ws("/")).await;
    assert_eq!(refused.status, StatusCode::OK);
    assert_eq!(refused.body, "just a page");
    assert!(refused.to_string().contains("200 OK"), "{refused}");
}

fn accept(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}
