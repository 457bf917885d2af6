//! Many sockets on one server process: 10 000 idle WebSockets held for 30 s with keepalive on,
//! then each echoes; and the idle memory of a socket at `/` and at a long path.
//!
//! The server runs in a child process (this test binary again, running the ignored test
//! `server_process`), so that its RSS is the server's alone and each process stays within its
//! file limit. Figures are printed (`--nocapture`) and recorded in docs/performance.md.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tower_websocket::WebSocketLayer;

#[path = "../examples/common/serve.rs"]
mod example_serve;

/// The variable that makes `server_process` serve instead of returning at once.
const SERVER_ENV: &str = "TOWER_WEBSOCKET_LOAD_SERVER";

/// Raises this process's soft file limit to its hard limit (with util-linux `prlimit`, which
/// needs no unsafe code here); returns the limit now in force.
fn raise_file_limit() -> u64 {
    let pid = std::process::id().to_string();
    let hard = Command::new("prlimit")
        .args([
            "--pid",
            &pid,
            "--nofile",
            "--raw",
            "--noheadings",
            "--output",
            "HARD",
        ])
        .output()
        .expect("prlimit (util-linux)");
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    let status = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit --nofile={hard}");
    hard.parse().unwrap_or(u64::MAX)
}

/// The server side, in the child process: the echo layer with keepalive every
/// `TOWER_WEBSOCKET_LOAD_PING` seconds, served as the examples serve. Prints `addr ADDR`, then
/// answers each line on stdin (`live`: the live socket count) until stdin closes.
#[test]
#[ignore = "the server half of the load tests, started by them in a child process"]
fn server_process() {
    if std::env::var_os(SERVER_ENV).is_none() {
        return;
    }
    raise_file_limit();
    let ping: u64 = std::env::var("TOWER_WEBSOCKET_LOAD_PING")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let layer = WebSocketLayer::new(common::echo)
            .ping_interval(Some(Duration::from_secs(ping)))
            .ping_timeout(Duration::from_secs(ping));
        let handle = layer.handle();
        let app = Router::new().layer(layer);
        let listener = example_serve::bind("127.0.0.1:0").await;
        println!("addr {}", listener.local_addr().unwrap());
        tokio::spawn(example_serve::serve(listener, app, std::future::pending()));
        let mut lines = BufReader::new(std::io::stdin()).lines();
        loop {
            let line = tokio::task::block_in_place(|| lines.next());
            match line {
                Some(Ok(line)) if line == "live" => println!("{}", handle.metrics().live),
                Some(Ok(_)) => println!("?"),
                _ => break,
            }
        }
    });
}

/// A server in a child process.
struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl Server {
    fn start(ping_secs: u64) -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "server_process",
                "--ignored",
                "--nocapture",
                "--quiet",
            ])
            .env(SERVER_ENV, "1")
            .env("TOWER_WEBSOCKET_LOAD_PING", ping_secs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let addr = loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "the server exited"
            );
            if let Some(addr) = line.trim().strip_prefix("addr ") {
                break addr.parse().unwrap();
            }
        };
        Server {
            child,
            stdin,
            stdout,
            addr,
        }
    }

    fn rss_kib(&self) -> u64 {
        common::rss_kib_of(&self.child.id().to_string())
    }

    fn live(&mut self) -> usize {
        writeln!(self.stdin, "live").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects from 127.0.0.`source` and completes the handshake for `path`.
async fn connect(addr: SocketAddr, source: u8, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, source), 0)))
        .unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
        common::KEY
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "EOF in the head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// Opens `count` sockets to `path`, `parallel` handshakes at a time, spread over four source
/// addresses; returns them and how long it took.
async fn open_many(
    addr: SocketAddr,
    path: &'static str,
    count: usize,
    parallel: usize,
) -> (Vec<TcpStream>, Duration) {
    let started = Instant::now();
    let mut streams = Vec::with_capacity(count);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..count {
        if pending.len() >= parallel {
            streams.push(pending.join_next().await.unwrap().unwrap());
        }
        pending.spawn(connect(addr, 1 + (i % 4) as u8, path));
    }
    while let Some(stream) = pending.join_next().await {
        streams.push(stream.unwrap());
    }
    (streams, started.elapsed())
}

/// Holds one socket: answers every ping until `go`, then sends one text message and waits for
/// its echo. Returns (pings answered, whether the echo came back).
async fn hold_then_echo(
    stream: TcpStream,
    mut go: tokio::sync::watch::Receiver<bool>,
    echoed: Arc<AtomicUsize>,
) -> usize {
    let (mut read, mut write) = stream.into_split();
    let mut buf = Vec::new();
    let mut pings = 0;
    let mut asked = false;
    loop {
        if let Some((frame, used)) = common::decode_frame(&buf) {
            buf.drain(..used);
            match frame.opcode {
                0x9 => {
                    pings += 1;
                    let pong =
                        common::encode_frame(true, 0, 0xA, Some([1, 2, 3, 4]), &frame.payload);
                    write.write_all(&pong).await.unwrap();
                }
                0x1 if frame.payload == b"still open" => {
                    echoed.fetch_add(1, Ordering::Relaxed);
                    return pings;
                }
                other => panic!("unexpected frame {other:#x}: {frame:?}"),
            }
            continue;
        }
        tokio::select! {
            n = read.read_buf(&mut buf) => {
                let n = n.unwrap();
                assert!(n > 0, "the server closed an idle socket");
            }
            changed = go.changed(), if !asked => {
                changed.unwrap();
                asked = true;
                let text = common::encode_frame(true, 0, 0x1, Some([5, 6, 7, 8]), b"still open");
                write.write_all(&text).await.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_sockets_stay_open_for_30_s_with_keepalive_then_all_echo() {
    const SOCKETS: usize = 10_000;
    const HOLD: Duration = Duration::from_secs(30);
    const PING_SECS: u64 = 10;
    let limit = raise_file_limit();
    assert!(limit > SOCKETS as u64 + 100, "a file limit of {limit}");
    let mut server = Server::start(PING_SECS);
    let addr = server.addr;

    // Warm up: the runtime, the allocator's first arenas.
    let (warm, _) = open_many(addr, "/", 100, 100).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();

    let (streams, took) = open_many(addr, "/", SOCKETS, 256).await;
    let rate = SOCKETS as f64 / took.as_secs_f64();
    let after = server.rss_kib();
    let live = server.live();
    let per_socket = (after.saturating_sub(before) * 1024) as f64 / SOCKETS as f64;
    eprintln!(
        "10 000 sockets: opened in {took:?} ({rate:.0} upgrades/s); server RSS {before} KiB -> \
         {after} KiB, {per_socket:.0} B per socket; live {live}"
    );
    assert_eq!(live, SOCKETS);

    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let echoed = Arc::new(AtomicUsize::new(0));
    let mut holders = tokio::task::JoinSet::new();
    for stream in streams {
        holders.spawn(hold_then_echo(stream, go_rx.clone(), Arc::clone(&echoed)));
    }
    tokio::time::sleep(HOLD).await;
    let held = server.live();
    let rss_held = server.rss_kib();
    go_tx.send(true).unwrap();
    let mut pings = Vec::with_capacity(SOCKETS);
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(result) = holders.join_next().await {
            pings.push(result.expect("a socket failed"));
        }
    })
    .await;
    all.expect("every socket echoes within 60 s");
    pings.sort();
    eprintln!(
        "10 000 sockets: after {HOLD:?} live {held}, server RSS {rss_held} KiB; {} echoed; \
         pings answered per socket {}..={}",
        echoed.load(Ordering::Relaxed),
        pings[0],
        pings[SOCKETS - 1]
    );
    assert_eq!(held, SOCKETS, "sockets closed while idle");
    assert_eq!(echoed.load(Ordering::Relaxed), SOCKETS);
    // Keepalive was on: a 30 s hold sees two or three pings at a 10 s interval.
    assert!(pings[0] >= 2, "a socket saw {} pings", pings[0]);
    // Per-socket memory: ~10 KB measured; a socket that kept hyper's read buffer alive would
    // cost twice that.
    assert!(per_socket < 20_000.0, "{per_socket:.0} B per idle socket");
}

/// Idle RSS per socket when `count` sockets are open at `path`, on a fresh server.
async fn idle_bytes_per_socket(path: &'static str, count: usize) -> f64 {
    let server = Server::start(600);
    let (warm, _) = open_many(server.addr, path, 100, 100).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();
    let (streams, _) = open_many(server.addr, path, count, 256).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = server.rss_kib();
    drop(streams);
    (after.saturating_sub(before) * 1024) as f64 / count as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_costs_the_same_at_the_root_and_at_a_long_path() {
    const SOCKETS: usize = 2000;
    raise_file_limit();
    let root = idle_bytes_per_socket("/", SOCKETS).await;
    let long = idle_bytes_per_socket(
        "/a/rather/long/path/to/a/websocket/endpoint?with=a&query=string",
        SOCKETS,
    )
    .await;
    eprintln!("idle socket: {root:.0} B at /, {long:.0} B at a long path");
    // hyper's read buffer (8-16 KiB) kept alive by a copy of the URI would show here.
    assert!(
        long < root * 1.25 + 1024.0,
        "{long:.0} B per socket at a long path, {root:.0} B at /"
    );
}

/// The slowest of `count` TCP connects made all at once to `listener`'s address, while a
/// server accepts them as axum does.
async fn slowest_connect(listener: tokio::net::TcpListener, count: usize) -> Duration {
    let addr = listener.local_addr().unwrap();
    let app = Router::new().layer(WebSocketLayer::new(common::echo));
    let server = tokio::spawn(example_serve::serve(listener, app, std::future::pending()));
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..count {
        connects.spawn(async move {
            let started = Instant::now();
            let stream = TcpStream::connect(addr).await.unwrap();
            (started.elapsed(), stream)
        });
    }
    let mut slowest = Duration::ZERO;
    let mut streams = Vec::with_capacity(count);
    while let Some(done) = connects.join_next().await {
        let (took, stream) = done.unwrap();
        slowest = slowest.max(took);
        streams.push(stream);
    }
    server.abort();
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connects_waits_for_no_retransmit_with_the_examples_backlog() {
    const BURST: usize = 1000;
    raise_file_limit();
    let with_backlog = slowest_connect(example_serve::bind("127.0.0.1:0").await, BURST).await;
    // For the record: tokio's default backlog of 128, the one `axum::serve` users get.
    let default = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let with_default = slowest_connect(default, BURST).await;
    eprintln!(
        "a burst of {BURST} connects: the slowest took {with_backlog:?} with a backlog of {}, \
         {with_default:?} with tokio's default of 128",
        example_serve::BACKLOG
    );
    // A SYN the listen queue dropped is sent again after 1 s.
    assert!(with_backlog < Duration::from_secs(1), "{with_backlog:?}");
}
