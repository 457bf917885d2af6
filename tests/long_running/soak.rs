//! Soak: connections churn at a fixed rate for five minutes (connect, echo, close; one in ten
//! drops TCP in the middle of a message), then nothing may be left: no live socket, no extra
//! tokio task on the server's runtime, and RSS within 10 % of what it was after warm-up. The
//! live heap (bytes allocated and not yet freed, counted by a global allocator) is held to the
//! same bound: when RSS grows and the live heap does not, the growth is memory the allocator
//! keeps, not a leak.
//!
//! It shares its test binary with the Autobahn runs, so that `cargo test` runs it beside them
//! rather than after them. By hand, for any length (an hour, say):
//!
//! ```text
//! SOAK_SECS=3600 cargo test --release --all-features --test long_running soak -- --nocapture
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_websocket::WebSocketLayer;

use super::common::{echo, encode_frame, rss_kib};
use super::example_serve;

#[global_allocator]
static HEAP: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed, in KiB.
fn live_heap_kib() -> i64 {
    let stats = HEAP.stats();
    // A reallocation is counted in these two already, by its difference.
    let live = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64;
    live / 1024
}

/// New connections per second.
const RATE: u64 = 100;

/// One client: handshake, one echo, then a clean close (or, when `drop_mid_message`, half a
/// frame and TCP dropped).
async fn one_client(addr: std::net::SocketAddr, drop_mid_message: bool) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET /soak HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let message = encode_frame(
        true,
        0,
        0x1,
        Some([0x11, 0x22, 0x33, 0x44]),
        b"soak message",
    );
    if drop_mid_message {
        stream.write_all(&message[..message.len() / 2]).await?;
        // Dropped with unread data in neither direction: the server sees a FIN mid-frame.
        return Ok(());
    }
    stream.write_all(&message).await?;
    let mut reply = [0u8; 14];
    stream.read_exact(&mut reply).await?;
    if &reply[2..] != b"soak message" {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    stream
        .write_all(&encode_frame(
            true,
            0,
            0x8,
            Some([0x11, 0x22, 0x33, 0x44]),
            &1000u16.to_be_bytes(),
        ))
        .await?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await?;
    if rest.len() < 4 || rest[0] != 0x88 {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    Ok(())
}

#[test]
fn churn_leaves_no_socket_no_task_and_no_growth() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let warm_up = Duration::from_secs((secs / 10).max(10));
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let layer = WebSocketLayer::new(echo).close_timeout(Duration::from_secs(2));
    let handle = layer.handle();
    let app = Router::new().layer(layer);
    let listener = server.block_on(example_serve::bind("127.0.0.1:0"));
    let addr = listener.local_addr().unwrap();
    server.spawn(example_serve::serve(listener, app, std::future::pending()));
    let tasks_at_start = server.metrics().num_alive_tasks();

    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let failures = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let (total, (rss_warm, heap_warm), samples) = clients.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
        // A stall (a loaded CI machine) delays the next connections; it does not burst them.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut running = tokio::task::JoinSet::new();
        let mut total = 0usize;
        let mut warm = None;
        let mut samples = Vec::new();
        let mut next_sample = started + warm_up;
        while started.elapsed() < Duration::from_secs(secs) {
            tick.tick().await;
            let failures = Arc::clone(&failures);
            let drop_mid_message = total % 10 == 9;
            running.spawn(async move {
                let result = tokio::time::timeout(
                    Duration::from_secs(10),
                    one_client(addr, drop_mid_message),
                )
                .await;
                if !matches!(result, Ok(Ok(()))) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            });
            total += 1;
            while running.try_join_next().is_some() {}
            if Instant::now() >= next_sample {
                let (rss, heap) = (rss_kib(), live_heap_kib());
                warm.get_or_insert((rss, heap));
                samples.push((
                    started.elapsed().as_secs(),
                    rss,
                    heap,
                    handle.metrics().live,
                ));
                next_sample += Duration::from_secs(10);
            }
        }
        while running.join_next().await.is_some() {}
        (
            total,
            warm.unwrap_or_else(|| (rss_kib(), live_heap_kib())),
            samples,
        )
    });
    drop(clients);

    // Dropped peers are noticed at once (FIN); give closing handshakes their timeout.
    let settle = Instant::now();
    while (handle.metrics().live > 0 || server.metrics().num_alive_tasks() > tasks_at_start)
        && settle.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let live = handle.metrics().live;
    let tasks = server.metrics().num_alive_tasks();
    let rss_end = rss_kib();
    let growth = (rss_end as f64 / rss_warm as f64 - 1.0) * 100.0;
    let heap_end = live_heap_kib();
    let heap_growth = (heap_end as f64 / heap_warm as f64 - 1.0) * 100.0;
    eprintln!(
        "soak: {total} connections in {:?} at {RATE}/s (1 in 10 dropped mid-message), {} \
         failed; live at the end {live}; server tasks {tasks_at_start} at the start, {tasks} at \
         the end; RSS {rss_warm} KiB after {warm_up:?} of warm-up, {rss_end} KiB at the end \
         ({growth:+.1} %); live heap {heap_warm} KiB, then {heap_end} KiB ({heap_growth:+.1} %)",
        started.elapsed(),
        failures.load(Ordering::Relaxed)
    );
    eprintln!("soak samples (s, RSS KiB, live heap KiB, live sockets): {samples:?}");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "clients failed");
    assert_eq!(live, 0, "sockets still live");
    assert_eq!(tasks, tasks_at_start, "tasks left on the server's runtime");
    assert!(
        heap_growth <= 10.0,
        "the live heap grew {heap_growth:.1} %: a leak"
    );
    assert!(growth <= 10.0, "RSS grew {growth:.1} % after warm-up");
}
