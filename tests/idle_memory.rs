//! What an idle connection keeps on the heap: a counting global allocator, a server of the
//! layer behind `axum::serve` on 127.0.0.1, and blocking clients that allocate nothing, so
//! every live byte counted is the server's.
//!
//! Each case opens a first batch of connections (so that the runtime's slabs, the timer
//! wheel and the allocator's arenas have grown), counts the live heap, opens a second batch,
//! counts again: the difference over the second batch is what one more connection costs.
//! What holds those bytes, part by part, is in docs/performance.md.
//!
//! Run with `--nocapture` to see the figures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use tower_websocket::hub::Hub;
use tower_websocket::{KeepHeaders, Message, WebSocket, WebSocketLayer};

#[global_allocator]
static HEAP: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// The heap as counted at one moment.
struct Snapshot {
    bytes: isize,
    blocks: isize,
}

fn snapshot() -> Snapshot {
    let stats = HEAP.stats();
    Snapshot {
        // A reallocation is counted in these already, by its difference.
        bytes: stats.bytes_allocated as isize - stats.bytes_deallocated as isize,
        blocks: stats.allocations as isize - stats.deallocations as isize,
    }
}

/// Connections per batch: enough to average out the runtime's growth in steps, few enough
/// for the open-files limit and a quick test.
const BATCH: usize = 200;
/// How long the server gets to bring every new connection to rest.
const SETTLE: Duration = Duration::from_secs(1);
/// How long a connection that has spoken gets: its reader is given back between one and two
/// seconds after its last frame.
const SPOKEN_SETTLE: Duration = Duration::from_secs(4);

/// The tests share the one allocator's counters: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

async fn echo(mut ws: WebSocket) {
    while let Some(msg) = ws.recv().await {
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// The layer with its defaults, echoing, behind `axum::serve` on a current-thread runtime of
/// its own thread.
fn start_server() -> SocketAddr {
    serve(Router::new().layer(WebSocketLayer::new(echo)))
}

/// As [`start_server`], with a socket that keeps no header of its upgrade request.
fn start_server_keeping_no_headers() -> SocketAddr {
    serve(Router::new().layer(WebSocketLayer::new(echo).keep_headers(KeepHeaders::none())))
}

/// The topic every subscriber of [`start_hub_server`] joins.
const TOPIC: &str = "t";

/// The layer with its defaults, each socket subscribed to [`TOPIC`] on `hub` until its peer
/// goes, served like [`start_server`].
fn start_hub_server(hub: Hub) -> SocketAddr {
    serve(
        Router::new().layer(WebSocketLayer::new(move |ws: WebSocket| {
            let hub = hub.clone();
            async move {
                let (mut rx, tx) = ws.split();
                let _subscription = hub.subscribe(TOPIC, &tx);
                while rx.recv().await.is_some() {}
            }
        })),
    )
}

/// Serves `app` behind `axum::serve` on a current-thread runtime of its own thread.
fn serve(app: Router) -> SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let addr = listener.local_addr().expect("local address");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let _ = axum::serve(listener, app).await;
        });
    });
    addr
}

const HANDSHAKE: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// A masked binary frame of 20 bytes, as a client sends it.
fn client_frame() -> [u8; 26] {
    let mask = [1u8, 2, 3, 4];
    let mut frame = [0u8; 26];
    frame[0] = 0x82;
    frame[1] = 0x80 | 20;
    frame[2..6].copy_from_slice(&mask);
    for i in 0..20 {
        frame[6 + i] = (i as u8) ^ mask[i % 4];
    }
    frame
}

/// Reads until `buf[..n]` ends with `end`; returns `n`.
fn read_until(stream: &mut TcpStream, buf: &mut [u8], end: &[u8]) -> usize {
    let mut n = 0;
    while !buf[..n].ends_with(end) {
        assert!(
            n < buf.len(),
            "the answer did not fit in {} bytes",
            buf.len()
        );
        let read = stream.read(&mut buf[n..]).expect("read from the server");
        assert!(read > 0, "the server closed the connection");
        n += read;
    }
    n
}

/// Opens a connection and, when `spoken`, has one message echoed on it. Nothing here
/// allocates: the buffers are on the stack, and std's `TcpStream` is a file descriptor.
fn open(addr: SocketAddr, spoken: bool) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream.write_all(HANDSHAKE).expect("send the handshake");
    let mut buf = [0u8; 512];
    let n = read_until(&mut stream, &mut buf, b"\r\n\r\n");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 101"),
        "the upgrade was refused"
    );
    if spoken {
        stream.write_all(&client_frame()).expect("send a message");
        let mut echo = [0u8; 22];
        stream.read_exact(&mut echo).expect("read the echo");
        assert_eq!(&echo[..2], &[0x82, 20], "the echo's header");
    }
    stream
}

/// What one more connection costs.
struct PerConnection {
    bytes: f64,
    blocks: f64,
}

fn measure(spoken: bool) -> PerConnection {
    measure_on(start_server(), spoken)
}

fn measure_on(addr: SocketAddr, spoken: bool) -> PerConnection {
    let settle = if spoken { SPOKEN_SETTLE } else { SETTLE };
    let first: Vec<TcpStream> = (0..BATCH).map(|_| open(addr, spoken)).collect();
    std::thread::sleep(settle);
    let before = snapshot();
    let second: Vec<TcpStream> = (0..BATCH).map(|_| open(addr, spoken)).collect();
    std::thread::sleep(settle);
    let after = snapshot();
    drop(second);
    drop(first);
    let n = BATCH as f64;
    PerConnection {
        bytes: (after.bytes - before.bytes) as f64 / n,
        blocks: (after.blocks - before.blocks) as f64 / n,
    }
}

/// Publishes per burst: within the default send queue's capacity, so that none is dropped
/// however the server's tasks and this thread interleave.
const BURST: usize = 64;
/// The size of each published message.
const PUBLISHED: usize = 20;

/// Waits until `count` sockets have joined [`TOPIC`].
fn await_subscribers(hub: &Hub, count: usize) {
    for _ in 0..1000 {
        if hub.subscriber_count(TOPIC) == count {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "{} of {count} sockets joined the topic in 10 s",
        hub.subscriber_count(TOPIC)
    );
}

/// Publishes [`BURST`] messages back to back, then reads every one of them on every client.
fn burst(hub: &Hub, clients: &mut [TcpStream]) {
    for i in 0..BURST {
        let delivery = hub.publish(TOPIC, Message::binary(vec![i as u8; PUBLISHED]));
        assert_eq!(
            delivery.delivered,
            clients.len(),
            "publish {i} did not reach every subscriber"
        );
    }
    for client in clients.iter_mut() {
        for i in 0..BURST {
            let mut frame = [0u8; 2 + PUBLISHED];
            client
                .read_exact(&mut frame)
                .expect("read a published message");
            assert_eq!(frame[..2], [0x82, PUBLISHED as u8], "the frame's header");
            assert!(
                frame[2..].iter().all(|&b| b == i as u8),
                "message {i} out of order"
            );
        }
    }
}

/// What one more subscriber costs once it has written bursts of published messages and gone
/// quiet.
fn measure_subscribers_after_bursts() -> PerConnection {
    let hub = Hub::new();
    let addr = start_hub_server(hub.clone());
    let mut clients: Vec<TcpStream> = (0..BATCH).map(|_| open(addr, false)).collect();
    await_subscribers(&hub, BATCH);
    burst(&hub, &mut clients);
    burst(&hub, &mut clients);
    std::thread::sleep(SETTLE);
    let before = snapshot();
    clients.extend((0..BATCH).map(|_| open(addr, false)));
    await_subscribers(&hub, 2 * BATCH);
    burst(&hub, &mut clients);
    burst(&hub, &mut clients);
    std::thread::sleep(SETTLE);
    let after = snapshot();
    drop(clients);
    let n = BATCH as f64;
    PerConnection {
        bytes: (after.bytes - before.bytes) as f64 / n,
        blocks: (after.blocks - before.blocks) as f64 / n,
    }
}

fn report(case: &str, measured: &PerConnection) {
    eprintln!(
        "{case}: {:.0} live bytes in {:.1} allocations per connection ({BATCH} connections)",
        measured.bytes, measured.blocks
    );
}

/// The most live heap a connection whose peer has sent nothing may keep (measured in
/// docs/performance.md, with a margin).
const IDLE_BOUND: f64 = 4400.0;
/// The most live heap a connection idle after one message each way may keep.
const SPOKEN_BOUND: f64 = 4600.0;

#[test]
fn an_idle_connection_keeps_little_heap() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let measured = measure(false);
    report("idle, never spoken", &measured);
    assert!(
        measured.bytes <= IDLE_BOUND,
        "an idle connection keeps {:.0} bytes of heap",
        measured.bytes
    );
}

#[test]
fn a_connection_idle_after_one_message_keeps_little_heap() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let measured = measure(true);
    report("idle after one message each way", &measured);
    assert!(
        measured.bytes <= SPOKEN_BOUND,
        "a connection idle after one message keeps {:.0} bytes of heap",
        measured.bytes
    );
}

/// The most live heap an idle connection whose socket keeps no header may keep.
const NO_HEADERS_BOUND: f64 = 3700.0;

#[test]
fn an_idle_connection_that_keeps_no_headers_keeps_less_heap() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let all = measure(false);
    report("idle, never spoken, every header kept", &all);
    let none = measure_on(start_server_keeping_no_headers(), false);
    report("idle, never spoken, no header kept", &none);
    // This handshake's five headers: their map (six slots of about 100 bytes and the index)
    // and their copied values.
    assert!(
        all.bytes - none.bytes >= 500.0,
        "keeping no header saved only {:.0} bytes",
        all.bytes - none.bytes
    );
    assert!(
        none.bytes <= NO_HEADERS_BOUND,
        "an idle connection that keeps no header keeps {:.0} bytes of heap",
        none.bytes
    );
}

/// The most live heap a hub subscriber may keep once it has written bursts of published
/// messages and gone quiet: what a silent connection keeps, its subscription, and no batch
/// buffers.
const SUBSCRIBER_BOUND: f64 = 5600.0;

#[test]
fn a_subscriber_quiet_after_bursts_gives_its_buffers_back() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let measured = measure_subscribers_after_bursts();
    report("hub subscriber quiet after bursts", &measured);
    assert!(
        measured.bytes <= SUBSCRIBER_BOUND,
        "a subscriber quiet after bursts keeps {:.0} bytes of heap",
        measured.bytes
    );
}
