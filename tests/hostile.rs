//! Hostile peers against a real server on 127.0.0.1: slow handshakes (slowloris), a peer that
//! vanishes without a FIN (a child process stopped with SIGSTOP), a peer that never reads, and
//! floods of empty continuation frames and pings. Each checks that the one peer is dealt with
//! and that the others are still served while it is. Figures are printed (`--nocapture`) and
//! recorded in docs/security.md.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use common::{echo, rss_kib, serve, within, RawClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tower_websocket::{WebSocket, WebSocketLayer};

#[path = "../examples/common/serve.rs"]
mod example_serve;

/// The tests run one at a time: one test's sockets and allocations would show up in another's
/// RSS and latencies.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One echo round trip on a fresh connection: how long it took.
async fn echo_round_trip(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut client = RawClient::connect(addr, "/").await;
    client.send_frame(true, 0x1, b"still here?").await;
    let frame = client.read_frame().await.expect("an echo");
    assert_eq!(frame.payload, b"still here?");
    started.elapsed()
}

/// One echo round trip on an open connection.
async fn echo_on(client: &mut RawClient) -> Duration {
    let started = Instant::now();
    client.send_frame(true, 0x2, b"ping-pong").await;
    let frame = client.read_frame().await.expect("an echo");
    assert_eq!(frame.payload, b"ping-pong");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handshakes_are_closed_by_the_header_read_timeout_while_others_connect() {
    let _serial = SERIAL.lock().await;
    const SLOW: usize = 1000;
    const TIMEOUT: Duration = Duration::from_secs(2);
    let listener = example_serve::bind("127.0.0.1:0").await;
    let addr = listener.local_addr().unwrap();
    let app = Router::new().layer(WebSocketLayer::new(echo));
    tokio::spawn(example_serve::serve_with(
        listener,
        app,
        std::future::pending(),
        TIMEOUT,
    ));

    // Each slow client sends its request head one byte a second and notes when the server
    // ended the connection.
    let head = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
        common::KEY
    );
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let head = head.clone().into_bytes();
        slow.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let connected = Instant::now();
            let (mut read, mut write) = stream.into_split();
            let dribble = async move {
                for byte in head.chunks(1) {
                    if write.write_all(byte).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                std::future::pending::<()>().await;
            };
            let mut sink = [0u8; 64];
            let answered = tokio::select! {
                n = read.read(&mut sink) => matches!(n, Ok(n) if n > 0),
                () = dribble => unreachable!(),
            };
            (answered, connected.elapsed())
        }));
    }
    // While they dribble, others connect and are served at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        worst = worst.max(within("an echo during the slowloris", echo_round_trip(addr)).await);
    }
    let mut closed_after = Vec::new();
    for client in slow {
        let (answered, after) = within("the slow clients' end", client).await.unwrap();
        assert!(!answered, "a slow client got an answer to half a head");
        closed_after.push(after);
    }
    closed_after.sort();
    let last = *closed_after.last().unwrap();
    eprintln!(
        "slowloris: {SLOW} slow clients closed after {:?} (first) to {last:?} (last) with a \
         {TIMEOUT:?} header read timeout; others' echo took at most {worst:?}; all in {:?}",
        closed_after[0],
        started.elapsed()
    );
    assert!(closed_after[0] >= TIMEOUT - Duration::from_millis(100));
    assert!(last < 2 * TIMEOUT + Duration::from_secs(1), "{last:?}");
    assert!(worst < Duration::from_secs(1), "{worst:?}");
}

#[tokio::test]
async fn vanished_peer_is_closed_by_keepalive_and_its_handler_sees_none() {
    let _serial = SERIAL.lock().await;
    const PING_INTERVAL: Duration = Duration::from_secs(1);
    const PING_TIMEOUT: Duration = Duration::from_secs(1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let opened = Instant::now();
            while ws.recv().await.is_some() {}
            let _ = tx.send(opened.elapsed());
        }
    })
    .ping_interval(Some(PING_INTERVAL))
    .ping_timeout(PING_TIMEOUT);
    let addr = serve(Router::new().layer(layer)).await;

    // A real peer in another process: it completes the handshake, then is stopped, so its
    // kernel still holds the connection (no FIN, no reset) but nothing answers a ping.
    let script = format!(
        "import socket, sys, time\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n'\n\
         b'Sec-WebSocket-Version: 13\\r\\nSec-WebSocket-Key: {key}\\r\\n\\r\\n')\n\
         head = b''\n\
         while b'\\r\\n\\r\\n' not in head:\n    head += s.recv(1)\n\
         print(head.split(b' ')[1].decode(), flush=True)\n\
         time.sleep(60)\n",
        port = addr.port(),
        key = common::KEY
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (the vanished peer)");
    // Read off the runtime's thread, which serves the handshake meanwhile.
    let stdout = child.stdout.take().unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let mut status = String::new();
        BufReader::new(stdout)
            .read_line(&mut status)
            .map(|_| status)
    });
    let status = within("the peer's handshake", status)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.trim(), "101");
    let stopped = Command::new("kill")
        .args(["-STOP", &child.id().to_string()])
        .status()
        .expect("kill(1)");
    assert!(stopped.success());
    let lived = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    let _ = child.kill();
    let _ = child.wait();
    let lived = lived.expect("the handler never saw the end").unwrap();
    eprintln!(
        "vanished peer: the handler saw None {lived:?} after the handshake \
         (ping interval {PING_INTERVAL:?} + ping timeout {PING_TIMEOUT:?})"
    );
    assert!(lived >= PING_TIMEOUT, "{lived:?}");
    assert!(
        lived < 2 * (PING_INTERVAL + PING_TIMEOUT),
        "closed only after {lived:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_bounded_by_its_send_queue_and_closed_by_the_write_timeout() {
    const QUEUE: usize = 8;
    const MESSAGE: usize = 64 * 1024;
    const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
    let _serial = SERIAL.lock().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let layer = WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            if ws.path() != "/flood" {
                return echo(ws).await;
            }
            let started = Instant::now();
            let mut sent = 0usize;
            // A fresh buffer each time: a leak would show as RSS.
            while ws.send(vec![7u8; MESSAGE]).await.is_ok() {
                sent += 1;
            }
            let end = ws.recv().await;
            let _ = tx.send((sent, end.is_none(), started.elapsed()));
        }
    })
    .send_queue(QUEUE, tower_websocket::QueuePolicy::Wait)
    .write_timeout(Some(WRITE_TIMEOUT))
    .ping_interval(None);
    let addr = serve(Router::new().layer(layer)).await;
    let mut other = RawClient::connect(addr, "/").await;
    echo_on(&mut other).await;

    let before = rss_kib();
    let _never_reads = RawClient::connect_small_window(addr, "/flood").await;
    let mut peak = before;
    let mut worst = Duration::ZERO;
    let outcome = loop {
        tokio::select! {
            outcome = rx.recv() => break outcome.unwrap(),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                peak = peak.max(rss_kib());
                worst = worst.max(echo_on(&mut other).await);
            }
        }
    };
    let (sent, saw_none, lived) = outcome;
    let grown = peak.saturating_sub(before);
    eprintln!(
        "slow reader: {sent} messages of {MESSAGE} B sent before the write timeout closed it \
         after {lived:?}; RSS grew {grown} KiB at most (queue {QUEUE} x {MESSAGE} B); the other \
         socket's echo took at most {worst:?}"
    );
    assert!(saw_none, "the handler's recv gave a message after the end");
    assert!(lived >= WRITE_TIMEOUT, "{lived:?}");
    assert!(
        lived < 4 * WRITE_TIMEOUT + Duration::from_secs(2),
        "{lived:?}"
    );
    // The queue, the kernel's socket buffers and one frame in the writer: a few MiB at most.
    assert!(grown < 16 * 1024, "RSS grew {grown} KiB");
    assert!(worst < Duration::from_secs(1), "{worst:?}");
}

/// Writes `frames` copies of `frame`, a thousand to a write; reads nothing.
async fn flood(client: &mut RawClient, frame: &[u8], frames: usize) {
    let batch: Vec<u8> = frame.repeat(1000);
    for _ in 0..frames / 1000 {
        client.send_raw(&batch).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_empty_continuations_and_pings_keep_memory_bounded_and_others_served() {
    const FRAMES: usize = 100_000;
    let _serial = SERIAL.lock().await;
    let addr = serve(Router::new().layer(WebSocketLayer::new(echo).ping_interval(None))).await;
    let mut other = RawClient::connect(addr, "/").await;
    echo_on(&mut other).await;
    let before = rss_kib();

    // 100 000 empty continuations inside one text message, then its end: one message.
    let mut flooder = RawClient::connect(addr, "/").await;
    let started = Instant::now();
    flooder.send_frame(false, 0x1, b"a").await;
    let empty = common::encode_frame(false, 0, 0x0, Some([1, 2, 3, 4]), b"");
    let (_, worst_during_continuations) = tokio::join!(
        flood(&mut flooder, &empty, FRAMES),
        watch(&mut other, Duration::from_secs(1))
    );
    flooder.send_frame(true, 0x0, b"b").await;
    let frame = flooder.read_frame().await.expect("the message's echo");
    assert_eq!((frame.opcode, frame.payload.as_slice()), (0x1, &b"ab"[..]));
    let continuations_took = started.elapsed();
    let after_continuations = rss_kib();

    // 100 000 pings, and this peer reads none of the pongs while it sends them.
    let ping = common::encode_frame(true, 0, 0x9, Some([1, 2, 3, 4]), b"12345678");
    let started = Instant::now();
    let (_, worst_during_pings) = tokio::join!(
        flood(&mut flooder, &ping, FRAMES),
        watch(&mut other, Duration::from_secs(1))
    );
    let peak = rss_kib();
    // Then it reads them: every pong it is owed or none lost, and the connection still works.
    let mut pongs = 0usize;
    flooder.send_frame(true, 0x1, b"done").await;
    loop {
        let frame = flooder.read_frame().await.expect("pongs, then the echo");
        match frame.opcode {
            0xA => pongs += 1,
            0x1 => break,
            other => panic!("opcode {other:#x} during the ping flood"),
        }
    }
    let pings_took = started.elapsed();
    let grown = peak.max(after_continuations).saturating_sub(before);
    eprintln!(
        "floods: {FRAMES} empty continuations in {continuations_took:?}, {FRAMES} pings in \
         {pings_took:?} ({pongs} pongs read after); RSS grew {grown} KiB at most; the other \
         socket's echo took at most {:?}",
        worst_during_continuations.max(worst_during_pings)
    );
    assert!(pongs <= FRAMES, "{pongs} pongs for {FRAMES} pings");
    assert!(grown < 16 * 1024, "RSS grew {grown} KiB during the floods");
    assert!(worst_during_continuations < Duration::from_secs(1));
    assert!(worst_during_pings < Duration::from_secs(1));
}

/// Echo round trips on `client` every 50 ms for `period`: the slowest.
async fn watch(client: &mut RawClient, period: Duration) -> Duration {
    let until = Instant::now() + period;
    let mut worst = Duration::ZERO;
    while Instant::now() < until {
        worst = worst.max(echo_on(client).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worst
}

#[tokio::test]
async fn oversized_handshake_heads_are_refused_before_the_layer_sees_them() {
    let _serial = SERIAL.lock().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let layer = WebSocketLayer::new(move |ws: WebSocket| {
        let _ = tx.send(());
        echo(ws)
    });
    let listener = example_serve::bind("127.0.0.1:0").await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(example_serve::serve(
        listener,
        Router::new().layer(layer),
        std::future::pending(),
    ));
    // Too many header lines, then one header of 1 MiB: hyper refuses both (431) and ends the
    // connection; no socket is opened.
    let many: String = (0..200).map(|i| format!("X-Filler-{i}: x\r\n")).collect();
    let huge = format!("X-Huge: {}\r\n", "x".repeat(1 << 20));
    for extra in [many, huge] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n{extra}\r\n",
            common::KEY
        );
        // The server may stop reading (and reset) before the whole head is written.
        let _ = stream.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let read = within("the refusal", stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        eprintln!(
            "oversized head of {} B: {:?}",
            head.len(),
            answer.lines().next().unwrap_or("(reset, no answer)")
        );
        // Our write of a head hyper stopped reading can turn its answer into a reset.
        let reset = answer.is_empty() && read.is_err() && head.len() > 1 << 20;
        assert!(answer.starts_with("HTTP/1.1 431") || reset, "{answer}");
    }
    assert!(rx.try_recv().is_err(), "a socket was opened");
    let echo_took = within("an echo after them", echo_round_trip(addr)).await;
    assert!(echo_took < Duration::from_secs(1), "{echo_took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_from_a_peer_that_never_reads_its_pongs_stays_bounded_until_dropped() {
    const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
    let _serial = SERIAL.lock().await;
    let layer = WebSocketLayer::new(echo)
        .ping_interval(None)
        .write_timeout(Some(WRITE_TIMEOUT));
    let addr = serve(Router::new().layer(layer)).await;
    let mut other = RawClient::connect(addr, "/").await;
    echo_on(&mut other).await;
    let before = rss_kib();

    // Pings of 125 bytes, a thousand to a write, from a peer with a small receive window that
    // reads none of the pongs: once TCP's buffers are full the server's writes stall, it
    // stops reading, and the write timeout drops the peer.
    let mut flooder = RawClient::connect_small_window(addr, "/").await;
    let ping = common::encode_frame(true, 0, 0x9, Some([1, 2, 3, 4]), &[b'p'; 125]);
    let batch = ping.repeat(1000);
    let started = Instant::now();
    let flood = async {
        let mut sent = 0usize;
        while sent < 1_000_000 {
            if flooder.stream.write_all(&batch).await.is_err() {
                return (sent, true, started.elapsed());
            }
            sent += 1000;
        }
        (sent, false, started.elapsed())
    };
    let watch_others = async {
        let mut worst = Duration::ZERO;
        let mut peak = before;
        while started.elapsed() < 4 * WRITE_TIMEOUT {
            worst = worst.max(echo_on(&mut other).await);
            peak = peak.max(rss_kib());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (worst, peak)
    };
    let (flooded, (worst, peak)) =
        tokio::join!(tokio::time::timeout(8 * WRITE_TIMEOUT, flood), watch_others);
    let (sent, dropped, lasted) = flooded.expect("the flood neither ended nor was dropped");
    let grown = peak.saturating_sub(before);
    eprintln!(
        "ping flood, pongs never read: {sent} pings of 125 B written before the server dropped \
         the peer after {lasted:?} (write timeout {WRITE_TIMEOUT:?}); RSS grew {grown} KiB at \
         most; another socket's echo took at most {worst:?}"
    );
    assert!(
        dropped,
        "{sent} pings went through without the peer being dropped"
    );
    assert!(grown < 16 * 1024, "RSS grew {grown} KiB");
    assert!(worst < Duration::from_secs(1), "{worst:?}");
}
