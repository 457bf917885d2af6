//! The socket against a real server on 127.0.0.1 and a client nobody here wrote
//! (tokio-tungstenite), plus a raw-frame client for what a library client will not send.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{close_payload, serve, within, RawClient};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as TCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as TClose;
use tokio_tungstenite::tungstenite::Message as T;
use tower_websocket::{
    CloseCode, Error, KeepHeaders, Message, SendError, WebSocket, WebSocketLayer,
};

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn echo(mut ws: WebSocket) {
    while let Some(msg) = ws.recv().await {
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}

async fn echo_server(layer: WebSocketLayer) -> SocketAddr {
    serve(
        Router::new()
            .route("/", get(|| async { "page" }))
            .layer(layer),
    )
    .await
}

async fn connect(addr: SocketAddr, path: &str) -> Client {
    let (client, res) = within(
        "the handshake",
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 101);
    client
}

async fn next(client: &mut Client) -> T {
    within("a message", client.next()).await.unwrap().unwrap()
}

/// Reads until the close frame and returns its code and reason.
async fn close_of(client: &mut Client) -> (u16, String) {
    loop {
        match within("the close frame", client.next()).await {
            Some(Ok(T::Close(Some(frame)))) => {
                return (frame.code.into(), frame.reason.to_string())
            }
            Some(Ok(T::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn text_round_trip() {
    let addr = echo_server(WebSocketLayer::new(echo)).await;
    let mut client = connect(addr, "/any/path").await;
    client.send(T::text("héllo wörld ✓")).await.unwrap();
    assert_eq!(next(&mut client).await, T::text("héllo wörld ✓"));
}

#[tokio::test]
async fn binary_round_trip() {
    let addr = echo_server(WebSocketLayer::new(echo)).await;
    let mut client = connect(addr, "/").await;
    let data: Vec<u8> = (0..=255).collect();
    client.send(T::binary(data.clone())).await.unwrap();
    assert_eq!(next(&mut client).await, T::binary(data));
}

#[tokio::test]
async fn empty_text_message_is_delivered() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = echo_server(WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let msg = ws.recv().await;
            tx.send(msg.clone()).unwrap();
            if let Some(msg) = msg {
                let _ = ws.send(msg).await;
            }
        }
    }))
    .await;
    let mut client = connect(addr, "/").await;
    client.send(T::text("")).await.unwrap();
    assert_eq!(
        within("the handler", rx.recv()).await.unwrap(),
        Some(Message::from(""))
    );
    assert_eq!(next(&mut client).await, T::text(""));
}

#[tokio::test]
async fn fragmented_message_is_reassembled() {
    let addr = echo_server(WebSocketLayer::new(echo)).await;
    let mut raw = RawClient::connect(addr, "/").await;
    raw.send_frame(false, 0x1, "frag".as_bytes()).await;
    raw.send_frame(true, 0x9, b"ping in the middle").await;
    raw.send_frame(false, 0x0, &"€".as_bytes()[..2]).await;
    raw.send_frame(true, 0x0, &"€".as_bytes()[2..]).await;
    let pong = raw.read_frame().await.unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (0xA, &b"ping in the middle"[..])
    );
    let echo = raw.read_frame().await.unwrap();
    assert!(echo.fin && !echo.masked);
    assert_eq!(
        (echo.opcode, echo.payload),
        (0x1, "frag€".as_bytes().to_vec())
    );
}

#[tokio::test]
async fn large_messages_round_trip() {
    let addr = echo_server(WebSocketLayer::new(echo)).await;
    let mut client = connect(addr, "/").await;
    let big: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
    let (mut sink, mut stream) = client.split();
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        sink.send(T::binary(sent)).await.unwrap();
        sink
    });
    let got = within("the echo", stream.next()).await.unwrap().unwrap();
    assert_eq!(got.into_data().len(), big.len());
    client = writer.await.unwrap().reunite(stream).unwrap();
    client.send(T::text("after the big one")).await.unwrap();
    assert_eq!(next(&mut client).await, T::text("after the big one"));
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let addr = echo_server(WebSocketLayer::new(echo)).await;
    let mut client = connect(addr, "/").await;
    client
        .send(T::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut client).await,
        T::Pong(b"are you there".to_vec().into())
    );
}

#[tokio::test]
async fn many_messages_keep_their_order() {
    let addr = echo_server(WebSocketLayer::new(echo)).await;
    let (mut sink, mut stream) = connect(addr, "/").await.split();
    let writer = tokio::spawn(async move {
        for i in 0..500 {
            sink.send(T::text(i.to_string())).await.unwrap();
        }
        sink
    });
    for i in 0..500 {
        let msg = within("an echo", stream.next()).await.unwrap().unwrap();
        assert_eq!(msg, T::text(i.to_string()));
    }
    let _sink = writer.await.unwrap();
}

#[tokio::test]
async fn client_close_code_reaches_handler_and_is_echoed() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = echo_server(WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            while ws.recv().await.is_some() {}
            // `recv` returned `None`: the peer's close is known, and sending fails.
            let code = ws
                .peer_close()
                .map(|f| (u16::from(f.code), f.reason.to_string()));
            let send_after_close = ws.send("too late").await;
            tx.send((code, send_after_close)).unwrap();
        }
    }))
    .await;
    let mut client = connect(addr, "/").await;
    client
        .close(Some(TClose {
            code: TCode::from(4001),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    assert_eq!(close_of(&mut client).await.0, 4001);
    let (code, send_after_close) = within("the handler", rx.recv()).await.unwrap();
    assert_eq!(code, Some((4001, "bye".to_string())));
    assert_eq!(
        send_after_close,
        Err(SendError::Closed(Message::text("too late")))
    );
}

#[tokio::test]
async fn returning_from_the_handler_closes_with_1000() {
    let addr = echo_server(WebSocketLayer::new(|ws: WebSocket| async move {
        let _ = ws.send("hello world").await;
    }))
    .await;
    let mut client = connect(addr, "/").await;
    assert_eq!(next(&mut client).await, T::text("hello world"));
    assert_eq!(close_of(&mut client).await, (1000, String::new()));
}

#[tokio::test]
async fn handler_close_with_code_and_reason_reaches_client() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = echo_server(WebSocketLayer::new(move |mut ws: WebSocket| {
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
    }))
    .await;
    let mut client = connect(addr, "/").await;
    assert_eq!(close_of(&mut client).await, (4002, "done here".to_string()));
    // tungstenite answers the close; the server then ends TCP.
    assert!(within("the end", client.next()).await.is_none());
    let (after, end, reply) = within("the handler", rx.recv()).await.unwrap();
    assert_eq!(after, Err(SendError::Closed(Message::text("after close"))));
    assert_eq!(end, None);
    assert_eq!(reply, Some(4002));
}

#[tokio::test]
async fn invalid_close_codes_are_refused_by_close_with() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = echo_server(WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let a = ws.close_with(CloseCode::NO_STATUS, "").await;
            let b = ws.close_with(CloseCode::NORMAL, &"x".repeat(124)).await;
            tx.send((a, b)).unwrap();
        }
    }))
    .await;
    let mut client = connect(addr, "/").await;
    let (a, b) = within("the handler", rx.recv()).await.unwrap();
    assert_eq!(a, Err(Error::InvalidCloseCode(1005)));
    assert_eq!(b, Err(Error::CloseReasonTooLong(124)));
    // Neither call closed anything: returning does, with 1000.
    assert_eq!(close_of(&mut client).await.0, 1000);
}

#[tokio::test]
async fn handler_error_closes_with_1011() {
    let addr = echo_server(WebSocketLayer::new(|_ws: WebSocket| async {
        Err::<(), _>("database unreachable")
    }))
    .await;
    let mut client = connect(addr, "/").await;
    let (code, reason) = close_of(&mut client).await;
    assert_eq!(code, 1011);
    // The error's text stays in the server's log; the peer learns nothing internal.
    assert!(!reason.contains("database"), "{reason}");
}

#[tokio::test]
async fn handler_panic_closes_with_1011() {
    let addr = echo_server(WebSocketLayer::new(|ws: WebSocket| async move {
        if !ws.path().is_empty() {
            panic!("handler bug");
        }
    }))
    .await;
    let mut client = connect(addr, "/").await;
    assert_eq!(close_of(&mut client).await.0, 1011);
}

#[derive(Clone)]
struct Claims(&'static str);

#[tokio::test]
async fn environ_shows_path_protocol_origin_and_upstream_extensions() {
    let handler = |ws: WebSocket| async move {
        let seen = format!(
            "path={} query={:?} protocol={:?} origin={:?} user={:?} peer_known={} method={}",
            ws.path(),
            ws.query(),
            ws.protocol(),
            ws.origin(),
            ws.extension::<Claims>().map(|c| c.0),
            ws.peer_addr().is_some_and(|a| a.ip().is_loopback()),
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
    let addr = serve(app).await;
    let mut req = format!("ws://{addr}/room/7?x=1")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "chat.v1, chat.v2".parse().unwrap(),
    );
    // A page of this very server (the default origin policy refuses other sites).
    req.headers_mut()
        .insert("origin", format!("http://{addr}").parse().unwrap());
    let (mut client, res) = within("the handshake", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    // The server's preference wins among the offered protocols.
    assert_eq!(res.headers()["sec-websocket-protocol"], "chat.v2");
    assert_eq!(
        next(&mut client).await,
        T::text(format!(
            "path=/room/7 query=Some(\"x=1\") protocol=Some(\"chat.v2\") \
             origin=Some(\"http://{addr}\") user=Some(\"alice\") peer_known=true method=GET"
        ))
    );
}

#[tokio::test]
async fn keep_headers_leaves_the_socket_only_what_it_keeps_while_the_checks_see_everything() {
    #[derive(Clone)]
    struct Token(String);
    let handler = |ws: WebSocket| async move {
        let mut names: Vec<&str> = ws.headers().keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        let seen = format!(
            "headers={names:?} agent={:?} origin={:?} token={:?} path={}",
            ws.headers().get("user-agent"),
            ws.origin(),
            ws.extension::<Token>().map(|t| t.0.as_str()),
            ws.path(),
        );
        let _ = ws.send(seen).await;
    };
    let layer = WebSocketLayer::new(handler)
        .keep_headers(KeepHeaders::only([http::header::USER_AGENT]))
        .before_upgrade(|request, _| {
            // The hook sees a header the socket will not keep.
            let token = request
                .headers
                .get("x-token")
                .map(|v| v.to_str().unwrap_or("?"));
            let token = Token(token.unwrap_or("none").to_string());
            request.extensions.insert(token);
            Ok(())
        });
    let addr = serve(Router::new().layer(layer)).await;

    let mut req = format!("ws://{addr}/k").into_client_request().unwrap();
    req.headers_mut()
        .insert("user-agent", "kept/1".parse().unwrap());
    req.headers_mut().insert("x-token", "t-42".parse().unwrap());
    req.headers_mut()
        .insert("origin", format!("http://{addr}").parse().unwrap());
    let (mut client, _) = within("the handshake", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    assert_eq!(
        next(&mut client).await,
        T::text("headers=[\"user-agent\"] agent=Some(\"kept/1\") origin=None token=Some(\"t-42\") path=/k")
    );

    // The origin policy still sees `Origin`, which the socket would not keep: refused.
    let mut req = format!("ws://{addr}/k").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://elsewhere.example".parse().unwrap());
    match within("the refusal", tokio_tungstenite::connect_async(req)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
}

#[tokio::test]
async fn no_protocol_agreed_when_none_configured() {
    let addr = echo_server(WebSocketLayer::new(|ws: WebSocket| async move {
        let _ = ws.send(format!("{:?}", ws.protocol())).await;
    }))
    .await;
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat".parse().unwrap());
    let result = tokio_tungstenite::connect_async(req).await;
    // tungstenite refuses a server that ignores its offer; the raw answer shows none was sent.
    assert!(result.is_err());
    let (_raw, head) = RawClient::handshake(addr, "/", "Sec-WebSocket-Protocol: chat\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );
}

#[tokio::test]
async fn message_over_the_limit_closes_with_1009() {
    let addr = echo_server(WebSocketLayer::new(echo).max_message_size(1024)).await;
    let mut client = connect(addr, "/").await;
    client.send(T::binary(vec![0u8; 1024])).await.unwrap();
    assert_eq!(next(&mut client).await.into_data().len(), 1024);
    client.send(T::binary(vec![0u8; 1025])).await.unwrap();
    assert_eq!(close_of(&mut client).await.0, 1009);
}

#[tokio::test]
async fn limit_counts_all_fragments() {
    let addr = echo_server(WebSocketLayer::new(echo).max_message_size(1000)).await;
    let mut raw = RawClient::connect(addr, "/").await;
    raw.send_frame(false, 0x2, &[1; 600]).await;
    raw.send_frame(true, 0x0, &[2; 600]).await;
    assert_eq!(raw.expect_close().await.close_code(), 1009);
    raw.expect_eof().await;
}

#[tokio::test]
async fn frame_over_the_frame_limit_closes_with_1009() {
    let addr = echo_server(WebSocketLayer::new(echo).max_frame_size(100)).await;
    let mut raw = RawClient::connect(addr, "/").await;
    raw.send_frame(true, 0x2, &[1; 101]).await;
    assert_eq!(raw.expect_close().await.close_code(), 1009);
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let addr = echo_server(WebSocketLayer::new(echo)).await;
    let mut raw = RawClient::connect(addr, "/").await;
    raw.send_frame(true, 0x1, &[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xff])
        .await;
    assert_eq!(raw.expect_close().await.close_code(), 1007);
    raw.expect_eof().await;
}

#[tokio::test]
async fn invalid_utf8_fails_at_the_fragment_not_at_the_end() {
    let addr = echo_server(WebSocketLayer::new(echo)).await;
    let mut raw = RawClient::connect(addr, "/").await;
    raw.send_frame(false, 0x1, b"valid ").await;
    raw.send_frame(false, 0x0, &[0xf4, 0x90, 0x80, 0x80]).await;
    // The message is not finished, yet the server has already closed.
    assert_eq!(raw.expect_close().await.close_code(), 1007);
}

#[tokio::test]
async fn oversized_control_frames_close_with_1002() {
    for opcode in [0x8u8, 0x9, 0xA] {
        let addr = echo_server(WebSocketLayer::new(echo)).await;
        let mut raw = RawClient::connect(addr, "/").await;
        let payload = if opcode == 0x8 {
            close_payload(1000, &[b'a'; 124])
        } else {
            vec![b'a'; 126]
        };
        raw.send_frame(true, opcode, &payload).await;
        assert_eq!(
            raw.expect_close().await.close_code(),
            1002,
            "opcode {opcode:#x}"
        );
        raw.expect_eof().await;
    }
}

#[tokio::test]
async fn invalid_close_frames_are_answered_with_1002_or_1007() {
    let cases: [(&[u8], u16); 5] = [
        (&[0x03], 1002),             // one byte
        (&[0x03, 0xed], 1002),       // 1005 on the wire
        (&[0x03, 0xee], 1002),       // 1006 on the wire
        (&[0x0b, 0x00], 1002),       // 2816: unassigned
        (&[0x03, 0xe8, 0xff], 1007), // reason not UTF-8
    ];
    for (payload, expected) in cases {
        let addr = echo_server(WebSocketLayer::new(echo)).await;
        let mut raw = RawClient::connect(addr, "/").await;
        raw.send_frame(true, 0x8, payload).await;
        assert_eq!(
            raw.expect_close().await.close_code(),
            expected,
            "{payload:?}"
        );
        raw.expect_eof().await;
    }
}

#[tokio::test]
async fn fragment_order_violations_close_with_1002() {
    // A continuation with nothing to continue.
    let addr = echo_server(WebSocketLayer::new(echo)).await;
    let mut raw = RawClient::connect(addr, "/").await;
    raw.send_frame(true, 0x0, b"orphan").await;
    assert_eq!(raw.expect_close().await.close_code(), 1002);
    // A new message inside a fragmented one.
    let mut raw = RawClient::connect(addr, "/").await;
    raw.send_frame(false, 0x1, b"start").await;
    raw.send_frame(true, 0x1, b"another").await;
    assert_eq!(raw.expect_close().await.close_code(), 1002);
    // A fragmented ping.
    let mut raw = RawClient::connect(addr, "/").await;
    raw.send_frame(false, 0x9, b"").await;
    assert_eq!(raw.expect_close().await.close_code(), 1002);
}

#[tokio::test]
async fn reserved_opcodes_and_bits_close_with_1002() {
    let addr = echo_server(WebSocketLayer::new(echo)).await;
    for opcode in [0x3u8, 0x7, 0xB, 0xF] {
        let mut raw = RawClient::connect(addr, "/").await;
        raw.send_frame(true, opcode, b"").await;
        assert_eq!(
            raw.expect_close().await.close_code(),
            1002,
            "opcode {opcode:#x}"
        );
    }
    let mut raw = RawClient::connect(addr, "/").await;
    raw.send_raw(&common::encode_frame(
        true,
        0b100,
        0x1,
        Some([1, 2, 3, 4]),
        b"rsv1",
    ))
    .await;
    assert_eq!(raw.expect_close().await.close_code(), 1002);
}

#[tokio::test]
async fn violation_ends_handler_recv_with_none() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = echo_server(WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let first = ws.recv().await;
            let second = ws.recv().await;
            tx.send((first, second)).unwrap();
        }
    }))
    .await;
    let mut raw = RawClient::connect(addr, "/").await;
    raw.send_frame(true, 0x1, b"ok").await;
    raw.send_frame(true, 0x1, &[0xff]).await;
    assert_eq!(raw.expect_close().await.close_code(), 1007);
    let (first, second) = within("the handler", rx.recv()).await.unwrap();
    assert_eq!(first, Some(Message::from("ok")));
    assert_eq!(second, None);
}

#[tokio::test]
async fn peer_that_vanishes_ends_recv_with_none() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = echo_server(WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let got = ws.recv().await;
            tx.send((got, ws.peer_close().cloned())).unwrap();
        }
    }))
    .await;
    let raw = RawClient::connect(addr, "/").await;
    drop(raw);
    let (got, frame) = within("the handler", rx.recv()).await.unwrap();
    assert_eq!(got, None);
    assert_eq!(frame, None);
}

#[tokio::test]
async fn peer_that_never_answers_close_is_dropped_after_close_timeout() {
    let addr = echo_server(
        WebSocketLayer::new(|mut ws: WebSocket| async move {
            let _ = ws.close().await;
            while ws.recv().await.is_some() {}
        })
        .close_timeout(Duration::from_millis(300)),
    )
    .await;
    let mut raw = RawClient::connect(addr, "/").await;
    assert_eq!(raw.expect_close().await.close_code(), 1000);
    // We never answer; the server gives up and ends TCP.
    let started = std::time::Instant::now();
    raw.expect_eof().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn messages_queued_before_returning_are_all_written() {
    let addr = echo_server(WebSocketLayer::new(|ws: WebSocket| async move {
        for i in 0..100 {
            ws.send(i.to_string()).await.unwrap();
        }
    }))
    .await;
    let mut client = connect(addr, "/").await;
    for i in 0..100 {
        assert_eq!(next(&mut client).await, T::text(i.to_string()));
    }
    assert_eq!(close_of(&mut client).await.0, 1000);
}
