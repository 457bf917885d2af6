//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_corpus.rs`, which replays
//! their seed corpora on stable (feature `fuzzing`; not part of the public API).
//!
//! Each function takes arbitrary bytes, drives one path that parses bytes from the network,
//! and panics only when an invariant breaks, so that a fuzzer reports the input:
//!
//! ```
//! tower_websocket::fuzzing::close_payload(&[0x03, 0xe8, b'b', b'y', b'e']);
//! tower_websocket::fuzzing::connection(&[0x00, 0x81, 0x80, 0, 0, 0, 0]);
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_service::Service;

use crate::close::CloseCode;
use crate::hub::{Delivery, Hub, Subscription};
use crate::message::Message;
use crate::socket::queue;
use crate::socket::{ControlBlock, Environ, Inbound, Outbound, WebSocket};
use crate::wire::frame::parse_close_payload;
use crate::{QueuePolicy, WebSocketLayer};

/// The message size limit of the connection target: small, so that inputs of a few KiB reach
/// it (and an inflated message passes it with a few hundred bytes).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024;
/// The frame size limit of the connection target.
pub const MAX_FRAME_SIZE: usize = 1024;

/// A current-thread runtime on virtual time: timers fire as soon as every task waits, so the
/// keepalive and close timeouts cost no wall time.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

/// The read side of a connection as a whole: the handshake is done by the layer over hyper,
/// then `data[1..]` arrives from the peer as it is.
///
/// `data[0]` picks the settings: bit 0 offers permessage-deflate, bit 1 with
/// `client_no_context_takeover`, bit 2 writes the input one byte at a time, bit 3 keeps the
/// peer's side open after it (so keepalive and the close timeout end the connection; without
/// it the peer shuts its side down).
///
/// Checks: no panic; every message the handler gets is within the message size limit; the
/// server's frames are well formed, unmasked, and its close frame (at most one, and the last
/// frame) carries a code valid on the wire and a UTF-8 reason; the connection ends; the
/// handler sees the end (`recv` gives `None`).
pub fn connection(data: &[u8]) {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    runtime().block_on(async move {
        let received = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (r, e) = (Arc::clone(&received), Arc::clone(&ended));
        let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
            let (received, ended) = (Arc::clone(&r), Arc::clone(&e));
            async move {
                while let Some(message) = ws.recv().await {
                    assert!(
                        message.len() <= MAX_MESSAGE_SIZE,
                        "a message of {} bytes passed the limit",
                        message.len()
                    );
                    received.fetch_add(1, Ordering::Relaxed);
                    if ws.send(message).await.is_err() {
                        break;
                    }
                }
                ended.fetch_add(1, Ordering::Relaxed);
            }
        })
        .max_message_size(MAX_MESSAGE_SIZE)
        .max_frame_size(MAX_FRAME_SIZE)
        .ping_interval(Some(Duration::from_secs(20)))
        .ping_timeout(Duration::from_secs(10))
        .close_timeout(Duration::from_secs(5));
        #[cfg(feature = "deflate")]
        let layer = layer.deflate(crate::DeflateConfig::new().threshold(0));
        let service = layer.into_service();

        let (server_io, mut client) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let mut service = service.clone();
                async move { service.call(req).await }
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server_io), service)
                .with_upgrades()
                .await
        });

        let mut head = String::from(
            "GET /fuzz HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
        if flags & 1 != 0 {
            head.push_str("Sec-WebSocket-Extensions: permessage-deflate");
            if flags & 2 != 0 {
                head.push_str("; client_no_context_takeover");
            }
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        client.write_all(head.as_bytes()).await.expect("write head");
        let response = read_head(&mut client).await;
        assert!(
            response.starts_with(b"HTTP/1.1 101 "),
            "the handshake failed: {}",
            String::from_utf8_lossy(&response)
        );
        let deflate = response
            .windows(b"permessage-deflate".len())
            .any(|w| w.eq_ignore_ascii_case(b"permessage-deflate"));
        assert_eq!(deflate, cfg!(feature = "deflate") && flags & 1 != 0);

        let (mut read, mut write) = tokio::io::split(client);
        let bytewise = flags & 4 != 0;
        let keep_open = flags & 8 != 0;
        let input = input.to_vec();
        let writer = async move {
            // A write fails once the server has closed: the rest of the input is moot.
            if bytewise {
                for byte in input.chunks(1) {
                    if write.write_all(byte).await.is_err() {
                        return write;
                    }
                    tokio::task::yield_now().await;
                }
            } else {
                let _ = write.write_all(&input).await;
            }
            if !keep_open {
                let _ = write.shutdown().await;
            }
            write
        };
        let reader = async move {
            let mut output = Vec::new();
            let _ = read.read_to_end(&mut output).await;
            output
        };
        // Virtual time: a connection that outlives every timeout of its settings is stuck.
        let outcome = tokio::time::timeout(Duration::from_secs(600), async {
            let (write, output) = tokio::join!(writer, reader);
            drop(write);
            let served = server.await;
            (output, served)
        })
        .await;
        let Ok((output, served)) = outcome else {
            panic!("the connection did not end within 600 s of virtual time");
        };
        assert!(served.is_ok(), "the server's connection task panicked");
        check_server_frames(&output);
        // The handler's future ends with the connection, or soon after (virtual time).
        for _ in 0..100 {
            if ended.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            ended.load(Ordering::Relaxed),
            1,
            "the handler never saw the end"
        );
    });
}

/// Reads an HTTP response head, up to and including its blank line.
async fn read_head(io: &mut tokio::io::DuplexStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match io.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => panic!(
                "the response head ended early: {}",
                String::from_utf8_lossy(&head)
            ),
        }
        assert!(head.len() < 4096, "a response head of over 4 KiB");
    }
    head
}

/// Parses what the server wrote after its `101` and checks every frame.
fn check_server_frames(mut out: &[u8]) {
    let mut closed = false;
    while !out.is_empty() {
        assert!(!closed, "the server sent a frame after its close frame");
        assert!(out.len() >= 2, "a truncated frame header");
        let (b0, b1) = (out[0], out[1]);
        assert_eq!(b1 & 0x80, 0, "a server frame is masked");
        assert_eq!(b0 & 0x30, 0, "a server frame sets RSV2 or RSV3");
        let opcode = b0 & 0x0f;
        let (len, at) = match b1 & 0x7f {
            126 => {
                assert!(out.len() >= 4, "a truncated frame header");
                (u64::from(u16::from_be_bytes([out[2], out[3]])), 4)
            }
            127 => {
                assert!(out.len() >= 10, "a truncated frame header");
                let mut len = [0u8; 8];
                len.copy_from_slice(&out[2..10]);
                (u64::from_be_bytes(len), 10)
            }
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len).expect("a frame length over usize");
        assert!(out.len() - at >= len, "a truncated frame payload");
        let payload = &out[at..at + len];
        match opcode {
            0x0..=0x2 => {}
            0x8 => {
                assert!(b0 & 0x80 != 0 && len <= 125, "a malformed close frame");
                match parse_close_payload(Bytes::copy_from_slice(payload)) {
                    Ok(_) => {}
                    Err(e) => panic!("the server's close frame is invalid: {e}"),
                }
                closed = true;
            }
            0x9 | 0xA => assert!(b0 & 0x80 != 0 && len <= 125, "a malformed control frame"),
            other => panic!("the server sent opcode {other:#x}"),
        }
        out = &out[at + len..];
    }
}

/// The opening handshake through the layer's `call`: `data` is read as a request head (a
/// request line, then `name: value` lines; lines that do not parse are skipped). `HTTP/2` in
/// the request line makes an HTTP/2 request, and a `:protocol` line sets RFC 8441's
/// extended-CONNECT protocol.
///
/// Checks: no panic, and the answer is `101` (HTTP/1.1) or `200` (HTTP/2) with an empty body,
/// or a 4xx/5xx with a body that says why.
pub fn handshake(data: &[u8]) {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let request_line = lines.next().unwrap_or_default();
    let mut words = request_line.split(|&b| b == b' ');
    let method = Method::from_bytes(words.next().unwrap_or_default()).unwrap_or(Method::GET);
    let uri = words.next().unwrap_or(b"/");
    let version = match words.next() {
        Some(b"HTTP/2") | Some(b"HTTP/2.0") => Version::HTTP_2,
        Some(b"HTTP/1.0") => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut builder = Request::builder().method(method).version(version);
    if let Ok(uri) = http::Uri::try_from(uri) {
        builder = builder.uri(uri);
    }
    let Ok(mut request) = builder.body(Empty::<Bytes>::new()) else {
        return;
    };
    for line in lines {
        let Some(colon) = line.iter().skip(1).position(|&b| b == b':').map(|i| i + 1) else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if name == b":protocol" {
            #[cfg(feature = "http2")]
            if let Ok(protocol) = std::str::from_utf8(value) {
                request
                    .extensions_mut()
                    .insert(hyper::ext::Protocol::from(protocol));
            }
            continue;
        }
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            request.headers_mut().append(name, value);
        }
    }

    let layer = WebSocketLayer::new(|_ws: WebSocket| async {})
        .protocols(["chat", "superchat"])
        .max_connections(8);
    #[cfg(feature = "deflate")]
    let layer = layer.deflate(crate::DeflateConfig::new());
    #[cfg(feature = "hixie76")]
    let layer = layer.legacy_drafts(true);
    let mut service = layer.into_service();
    runtime().block_on(async move {
        let (status, body) = if request.version() == Version::HTTP_2 {
            // Without hyper's upgrade handle: every check runs, and a request that passes
            // them all is answered 426 (not upgradable) instead of 200.
            let response = match service.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let status = response.status();
            let body = match response.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(never) => match never {},
            };
            (status, body)
        } else {
            match over_http1(service, &request).await {
                Some(answer) => answer,
                // Hyper refused the head itself: the layer never saw it.
                None => return,
            }
        };
        match status {
            StatusCode::SWITCHING_PROTOCOLS | StatusCode::OK => {
                assert!(body.is_empty(), "a {status} with a body")
            }
            s if s.is_client_error() || s.is_server_error() => {
                assert!(!body.is_empty(), "a {status} without a body")
            }
            s => panic!("the handshake answered {s}"),
        }
    });
}

/// Sends `request` (its head, as a client would write it) to `service` through hyper's HTTP/1
/// server over an in-memory pipe, and reads the answer: its status and body. `None` when
/// hyper refused the request before the service saw it.
async fn over_http1<S, B>(service: S, request: &Request<B>) -> Option<(StatusCode, Bytes)>
where
    S: Service<
            Request<hyper::body::Incoming>,
            Response = http::Response<crate::body::ResponseBody<crate::body::PlainBody>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let mut head = Vec::new();
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(request.uri().to_string().as_bytes());
    head.extend_from_slice(if request.version() == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in request.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");

    let (server_io, mut client) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let mut service = service.clone();
            async move { service.call(req).await }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server_io), service)
            .with_upgrades()
            .await
    });
    client.write_all(&head).await.ok()?;
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte).await {
            Ok(1) => response.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok());
    let length = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    if status != Some(StatusCode::SWITCHING_PROTOCOLS) {
        client.read_exact(&mut body).await.ok()?;
    }
    drop(client);
    let served = server.await.expect("the HTTP/1 connection task panicked");
    let status = status?;
    // hyper answers a head it cannot parse with a bare 400, and the service never runs.
    if served.is_err() && status == StatusCode::BAD_REQUEST && body.is_empty() {
        return None;
    }
    Some((status, Bytes::from(body)))
}

/// The payload of a close frame from the peer: `data` as the payload (at most 125 bytes reach
/// this parser; longer ones must be refused all the same).
///
/// Checks: a close without a code is accepted only when empty; an accepted code is valid on
/// the wire and its reason is the rest of the payload, as UTF-8; a refusal answers with 1002
/// (length, code) or 1007 (reason).
pub fn close_payload(data: &[u8]) {
    let result = parse_close_payload(Bytes::copy_from_slice(data));
    match result {
        Ok(None) => assert!(data.is_empty(), "a non-empty close read as empty"),
        Ok(Some(frame)) => {
            assert!(
                data.len() >= 2 && data.len() <= 125,
                "a close of {} bytes",
                data.len()
            );
            let code = u16::from_be_bytes([data[0], data[1]]);
            assert_eq!(frame.code, CloseCode::from(code));
            assert!(frame.code.is_sendable(), "close code {code} accepted");
            assert_eq!(frame.reason.as_str().as_bytes(), &data[2..]);
        }
        Err(e) => {
            let code = e.code;
            assert!(
                code == CloseCode::PROTOCOL_ERROR || code == CloseCode::INVALID_PAYLOAD,
                "a refused close answered with {code}"
            );
            if code == CloseCode::INVALID_PAYLOAD {
                assert!(std::str::from_utf8(&data[2..]).is_err());
            }
            assert!(!e.reason.is_empty());
        }
    }
}

/// One socket of the hub target: the connection's end of its send queue is held here.
struct HubSocket {
    sender: crate::WebSocketSender,
    out: Option<queue::Receiver<Outbound>>,
    /// The receiving half, kept so that the socket stays whole.
    _socket: WebSocket,
}

/// The send queue capacity of the hub target's sockets: small, so that queues fill.
pub const HUB_QUEUE: usize = 24;

/// Sequences of hub operations against a model: each byte pair is one operation (subscribe,
/// unsubscribe, publish, publish except, drain a socket's queue, drop a socket, count).
///
/// Checks: every publish's [`Delivery`] and every count match the model, and each socket
/// receives exactly the messages the model says, in order. The model keeps the hub's batches
/// (see `hub::batch`): a publish joins the topic's open batch while it has room and skips the
/// same socket; otherwise it queues a new batch on each subscriber, reserving half the room
/// of its queue, at most twice the messages of the topic's previous batch (at least 8, at
/// least one item), and the batch then takes as many messages as the least reservation; draining a queue seals the batches in it, and a change of a topic's
/// subscribers seals its open batch.
pub fn hub(data: &[u8]) {
    const SOCKETS: usize = 4;
    const TOPICS: [&str; 3] = ["a", "b", "c"];
    /// A batch of the model.
    struct Batch {
        messages: Vec<u32>,
        sealed: bool,
        room: usize,
        except: Option<usize>,
        delivered: usize,
        dropped: usize,
    }
    let hub = Hub::new();
    let mut sockets: Vec<HubSocket> = (0..SOCKETS).map(|_| hub_socket()).collect();
    // The model: live subscriptions (socket, topic), each with its handle; each socket's
    // queue (of batches), what it counts against the capacity, and whether its connection
    // is gone; every batch; each topic's open batch.
    let mut subscriptions: Vec<(usize, usize, Subscription)> = Vec::new();
    let mut queues: Vec<Vec<usize>> = vec![Vec::new(); SOCKETS];
    let mut charged = [0usize; SOCKETS];
    let mut gone = [false; SOCKETS];
    let mut batches: Vec<Batch> = Vec::new();
    let mut open: [Option<usize>; TOPICS.len()] = [None; TOPICS.len()];
    let mut next_message = 0u32;

    for op in data.chunks_exact(2) {
        let (kind, arg) = (op[0] % 7, op[1]);
        let socket = usize::from(arg) % SOCKETS;
        let topic = usize::from(arg / 4) % TOPICS.len();
        match kind {
            0 => {
                let sub = hub.subscribe(TOPICS[topic], &sockets[socket].sender);
                assert_eq!(sub.topic(), TOPICS[topic]);
                subscriptions.push((socket, topic, sub));
                if let Some(b) = open[topic].take() {
                    batches[b].sealed = true;
                }
            }
            1 => {
                if !subscriptions.is_empty() {
                    let at = usize::from(arg) % subscriptions.len();
                    let (_, t, sub) = subscriptions.remove(at);
                    drop(sub);
                    if let Some(b) = open[t].take() {
                        batches[b].sealed = true;
                    }
                }
            }
            2 | 3 => {
                let except = (kind == 3).then_some(socket);
                let id = next_message;
                next_message += 1;
                let message = Message::binary(id.to_be_bytes().to_vec());
                let delivery = match except {
                    Some(s) => hub.publish_except(TOPICS[topic], message, &sockets[s].sender),
                    None => hub.publish(TOPICS[topic], message),
                };
                let mut expected = Delivery::default();
                // The topic holds its open batch weakly: once no queue holds it (every
                // holder's connection ended), it is gone.
                let joins = open[topic].filter(|&b| {
                    let batch = &batches[b];
                    !batch.sealed
                        && batch.except == except
                        && batch.messages.len() < batch.room
                        && queues.iter().any(|q| q.contains(&b))
                });
                let subscribed = subscriptions.iter().any(|(_, t, _)| *t == topic);
                let mut closed_now = Vec::new();
                if let Some(b) = joins {
                    batches[b].messages.push(id);
                    expected.delivered = batches[b].delivered;
                    expected.dropped = batches[b].dropped;
                } else if subscribed {
                    let b = batches.len();
                    let previous = open[topic].map(|p| batches[p].messages.len());
                    let wanted = crate::hub::batch::wanted(previous);
                    let mut room = usize::MAX;
                    for (i, (s, t, _)) in subscriptions.iter().enumerate() {
                        if *t != topic || Some(*s) == except {
                            continue;
                        }
                        let left = HUB_QUEUE - charged[*s];
                        if gone[*s] {
                            expected.closed += 1;
                            closed_now.push(i);
                        } else if left > 0 {
                            let reserved = (left / 2).min(wanted).max(1);
                            expected.delivered += 1;
                            charged[*s] += reserved;
                            queues[*s].push(b);
                            room = room.min(reserved);
                        } else {
                            expected.dropped += 1;
                        }
                    }
                    batches.push(Batch {
                        messages: vec![id],
                        // A removal of closed subscribers seals it at once.
                        sealed: !closed_now.is_empty(),
                        room: if expected.delivered == 0 { 0 } else { room },
                        except,
                        delivered: expected.delivered,
                        dropped: expected.dropped,
                    });
                    open[topic] = (closed_now.is_empty()).then_some(b);
                }
                assert_eq!(
                    (delivery.delivered, delivery.dropped, delivery.closed),
                    (expected.delivered, expected.dropped, expected.closed),
                    "publish {id} to {}",
                    TOPICS[topic]
                );
                // The hub forgets subscribers it found closed; their handles stay inert.
                for i in closed_now.into_iter().rev() {
                    let (_, _, sub) = subscriptions.remove(i);
                    drop(sub);
                }
            }
            4 => {
                let mut got = Vec::new();
                if let Some(out) = sockets[socket].out.as_mut() {
                    while let Some(item) = out.try_recv() {
                        let messages = match item {
                            Outbound::Published(batch, _) => batch.messages(),
                            Outbound::Message(_) => panic!("socket {socket} got a send"),
                            Outbound::Close(_) => panic!("socket {socket} got a close"),
                        };
                        for message in messages {
                            match message {
                                Message::Binary(b) if b.len() == 4 => {
                                    got.push(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                                }
                                _ => panic!("socket {socket} got something never published"),
                            }
                        }
                    }
                }
                let mut expected = Vec::new();
                for b in std::mem::take(&mut queues[socket]) {
                    batches[b].sealed = true;
                    expected.extend_from_slice(&batches[b].messages);
                }
                charged[socket] = 0;
                assert_eq!(got, expected, "socket {socket}");
            }
            5 => {
                // The connection task ends: its end of the queue goes away.
                sockets[socket].out = None;
                gone[socket] = true;
                queues[socket].clear();
            }
            _ => {
                for (t, name) in TOPICS.iter().enumerate() {
                    let model = subscriptions.iter().filter(|(_, st, _)| *st == t).count();
                    assert_eq!(hub.subscriber_count(name), model, "subscribers of {name}");
                }
                let topics: HashMap<usize, ()> =
                    subscriptions.iter().map(|(_, t, _)| (*t, ())).collect();
                assert_eq!(hub.topic_count(), topics.len(), "topics");
            }
        }
    }
    drop(subscriptions);
    assert_eq!(hub.topic_count(), 0, "every subscription was dropped");
}

fn hub_socket() -> HubSocket {
    let environ = Arc::new(Environ {
        parts: Request::new(()).into_parts().0,
        protocol: None,
        version: 13,
    });
    let (_in_tx, in_rx) = queue::bounded::<Inbound>(1);
    let (out_tx, out_rx) = queue::bounded_by_weight(HUB_QUEUE, usize::MAX, Outbound::weight);
    let socket = WebSocket::new(
        environ,
        in_rx,
        out_tx,
        Arc::new(ControlBlock::default()),
        QueuePolicy::Fail,
    );
    HubSocket {
        sender: socket.sender(),
        out: Some(out_rx),
        _socket: socket,
    }
}

/// The legacy drafts' frame decoder (feature `hixie76`): `data[0]` picks the size of the
/// reads, `data[1..]` is the peer's input after the handshake.
///
/// Checks: no panic; every text frame is within the message size limit; while the decoder
/// waits for more input it holds at most one frame's worth of bytes.
#[cfg(feature = "hixie76")]
pub fn legacy_reader(data: &[u8]) {
    const MAX: usize = 1024;
    let Some((&piece, input)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut decoder = crate::legacy::Decoder::new(MAX);
    let mut buf = bytes::BytesMut::new();
    for chunk in input.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(crate::legacy::Frame::Text(text))) => {
                    assert!(text.len() <= MAX, "a text frame of {} bytes", text.len())
                }
                Ok(Some(crate::legacy::Frame::Close)) => return,
                Ok(None) => break,
                Err(reason) => {
                    assert!(!reason.is_empty());
                    return;
                }
            }
        }
        assert!(
            buf.len() <= MAX + 16,
            "the decoder holds {} bytes while it waits",
            buf.len()
        );
    }
}
