//! WebSockets over HTTP/2 (RFC 8441): a hyper HTTP/2 client opens several WebSocket streams on
//! one h2c connection to `axum::serve`, which enables the extended CONNECT protocol.
#![cfg(feature = "http2")]

mod common;

use bytes::Bytes;
use common::{serve, within};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket as Fws};
use http::{Method, Request, StatusCode, Version};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower_websocket::{WebSocket, WebSocketLayer};

type Stream = Fws<TokioIo<hyper::upgrade::Upgraded>>;

async fn echo(mut ws: WebSocket) {
    while let Some(msg) = ws.recv().await {
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}

async fn open(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> (Stream, http::HeaderMap) {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri(format!("http://localhost{path}"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        .body(Empty::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let res = within("the CONNECT answer", sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{res:?}");
    let headers = res.headers().clone();
    let upgraded = within("the stream", hyper::upgrade::on(res)).await.unwrap();
    (
        Fws::after_handshake(TokioIo::new(upgraded), Role::Client),
        headers,
    )
}

async fn round_trip(ws: &mut Stream, text: &str) -> String {
    ws.write_frame(Frame::text(Payload::Borrowed(text.as_bytes())))
        .await
        .unwrap();
    let frame = within("an echo", ws.read_frame()).await.unwrap();
    assert_eq!(frame.opcode, OpCode::Text);
    String::from_utf8(frame.payload.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_websockets_share_one_http2_connection() {
    let layer = WebSocketLayer::new(echo).protocols(["chat"]);
    let handle = layer.handle();
    let addr = serve(axum::Router::new().layer(layer)).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);

    let (mut a, headers) = open(&mut sender, "/a").await;
    assert_eq!(headers["sec-websocket-protocol"], "chat");
    assert!(headers.get("sec-websocket-accept").is_none());
    let (mut b, _) = open(&mut sender, "/b").await;
    let (mut c, _) = open(&mut sender, "/c").await;
    assert_eq!(handle.live(), 3);
    for (ws, name) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        assert_eq!(
            round_trip(ws, &format!("hello {name}")).await,
            format!("hello {name}")
        );
    }

    // Closing one stream leaves the others working.
    b.write_frame(Frame::close(1000, b"")).await.unwrap();
    let reply = within("the close reply", b.read_frame()).await.unwrap();
    assert_eq!(reply.opcode, OpCode::Close);
    assert_eq!(round_trip(&mut a, "still here").await, "still here");
    assert_eq!(round_trip(&mut c, "me too").await, "me too");
    within("b to end", async {
        while handle.live() != 2 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn extended_connect_with_another_version_is_refused() {
    let addr = serve(axum::Router::new().layer(WebSocketLayer::new(echo))).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri("http://localhost/")
        .header("sec-websocket-version", "8")
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let res = within("the answer", sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED);
}
