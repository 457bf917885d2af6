//! `bench redis-hub`: the hub across processes on Redis (docs/scale-out.md).
//!
//! Two nodes, each a [`Hub`] with its own [`RedisBackend`] (its own connections and node id),
//! on one Redis:
//! 1. throughput: node A publishes `--messages` back to back (its queue sized to hold them
//!    all); the figure is messages answered by Redis per second, from the first publish to the
//!    last `PUBLISH` reply;
//! 2. latency: node B serves a WebSocket whose handler subscribes to a topic; a client on it
//!    reads every message; node A publishes at `--rate` for `--seconds`, each message carrying
//!    its index, and the client takes the time from publish to the message read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tower_websocket::hub::redis::RedisBackend;
use tower_websocket::hub::Hub;
use tower_websocket::{Message, WebSocket, WebSocketLayer};

use crate::client;

pub struct Options {
    pub url: String,
    /// Redis Cluster nodes: sharded pub/sub instead of `url`.
    pub cluster: Vec<String>,
    pub messages: usize,
    pub rate: u64,
    pub seconds: u64,
    pub size: usize,
}

pub fn run(opts: &Options) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        throughput(opts).await?;
        latency(opts).await
    })
}

fn prefix(what: &str) -> String {
    format!("bench-{what}-{}", std::process::id())
}

async fn backend(opts: &Options, prefix: &str, queue: usize) -> Result<RedisBackend, String> {
    let builder = if opts.cluster.is_empty() {
        RedisBackend::builder(opts.url.as_str())
    } else {
        RedisBackend::cluster_builder(opts.cluster.iter().cloned())
    };
    builder
        .prefix(prefix)
        .queue_capacity(queue)
        .connect()
        .await
        .map_err(|e| e.to_string())
}

async fn throughput(opts: &Options) -> Result<(), String> {
    let backend = backend(opts, &prefix("throughput"), opts.messages).await?;
    let hub = Hub::with_backend(backend.clone());
    let payload = Message::binary(vec![7u8; opts.size]);
    let start = Instant::now();
    for _ in 0..opts.messages {
        hub.publish("throughput", payload.clone());
    }
    let queued = start.elapsed();
    let total = opts.messages as u64;
    loop {
        let s = backend.stats();
        if s.published + s.dropped_queue_full + s.dropped_disconnected >= total {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!("throughput: not done within 120 s: {s:?}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = start.elapsed();
    let s = backend.stats();
    println!(
        "redis-hub throughput: {} messages of {} B: {:.0} publishes/s through Redis ({:?} in all; \
         hub.publish loop {:.0}/s); dropped {} (queue full) + {} (disconnected)",
        opts.messages,
        opts.size,
        s.published as f64 / took.as_secs_f64(),
        took,
        opts.messages as f64 / queued.as_secs_f64(),
        s.dropped_queue_full,
        s.dropped_disconnected
    );
    Ok(())
}

async fn latency(opts: &Options) -> Result<(), String> {
    let prefix = prefix("latency");
    let backend_a = backend(opts, &prefix, 65_536).await?;
    let node_a = Hub::with_backend(backend_a.clone());
    let backend_b = backend(opts, &prefix, 65_536).await?;
    let node_b = Hub::with_backend(backend_b.clone());

    let layer = WebSocketLayer::new({
        let hub = node_b.clone();
        move |ws: WebSocket| {
            let hub = hub.clone();
            async move {
                let (mut rx, tx) = ws.split();
                let _subscription = hub.subscribe("latency", &tx);
                while rx.recv().await.is_some() {}
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        use axum::serve::ListenerExt;
        // Small frames, one at a time: without TCP_NODELAY each waits for the client's ACK.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, axum::Router::new().layer(layer)).await;
    });

    let total = (opts.rate * opts.seconds) as usize;
    let base = Instant::now();
    // Publish times, in nanoseconds after `base`, by message index.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let (stream, rest) = client::connect(addr).await.map_err(|e| e.to_string())?;
    let reader = tokio::spawn(read_indices(stream, rest, Arc::clone(&sent), base, total));

    if !opts.cluster.is_empty() {
        let result =
            cluster_latency(opts, &prefix, node_a, backend_b, sent, reader, base, total).await;
        println!("node A: {:?}", backend_a.stats());
        return result;
    }
    // Until node B's subscription reached Redis.
    let subscribed = Instant::now();
    let probe_client = redis::Client::open(opts.url.as_str()).map_err(|e| e.to_string())?;
    let mut probe = probe_client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("{prefix}:latency"))
            .query_async::<Vec<(String, u64)>>(&mut probe)
            .await
            .map_err(|e| e.to_string())?
            .pop()
            .ok_or("PUBSUB NUMSUB: no answer")?;
        if n == 1 {
            break;
        }
        if subscribed.elapsed() > Duration::from_secs(10) {
            return Err("node B did not subscribe within 10 s".to_string());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A plain Redis subscriber on the same channel: the share of the latency that is Redis
    // and node A's writer, without node B.
    let raw_lat: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let mut raw = probe_client
        .get_async_pubsub()
        .await
        .map_err(|e| e.to_string())?;
    raw.subscribe(format!("{prefix}:latency"))
        .await
        .map_err(|e| e.to_string())?;
    let raw_reader = {
        let (sent, raw_lat) = (Arc::clone(&sent), Arc::clone(&raw_lat));
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut stream = raw.into_on_message();
            let mut n = 0;
            while let Some(msg) = stream.next().await {
                let bytes = msg.get_payload_bytes();
                // The envelope's header is 20 bytes; the index follows.
                if let Some(index) = bytes.get(20..28) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(index);
                    let i = u64::from_be_bytes(b) as usize;
                    if let (Some(t), Some(l)) = (sent.get(i), raw_lat.get(i)) {
                        let now = base.elapsed().as_nanos() as u64;
                        l.store(
                            now.saturating_sub(t.load(Ordering::Relaxed)),
                            Ordering::Relaxed,
                        );
                    }
                }
                n += 1;
                if n == total {
                    break;
                }
            }
        })
    };

    publish_paced(opts, &node_a, &sent, base, total).await;
    let latencies = reader.await.map_err(|e| e.to_string())??;
    let _ = tokio::time::timeout(Duration::from_secs(5), raw_reader).await;
    let mut raw: Vec<u64> = raw_lat
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .filter(|&n| n > 0)
        .collect();
    raw.sort_unstable();
    let raw_pct = |p: f64| {
        let rank = ((p / 100.0) * (raw.len().saturating_sub(1)) as f64).round() as usize;
        raw.get(rank).map_or(f64::NAN, |&n| n as f64 / 1000.0)
    };
    println!(
        "redis-hub latency to a plain Redis subscriber: received {}, p50 {:.0} µs, p99 {:.0} µs",
        raw.len(),
        raw_pct(50.0),
        raw_pct(99.0)
    );
    report(opts, total, latencies, &backend_b, "on one Redis");
    println!("node A: {:?}", backend_a.stats());
    Ok(())
}

/// The latency run on a cluster: node B's subscription is seen by summing `PUBSUB
/// SHARDNUMSUB` over the given nodes (each answers for its own shard).
#[allow(clippy::too_many_arguments)]
async fn cluster_latency(
    opts: &Options,
    prefix: &str,
    node_a: Hub,
    backend_b: RedisBackend,
    sent: Arc<Vec<AtomicU64>>,
    reader: tokio::task::JoinHandle<Result<Vec<u64>, String>>,
    base: Instant,
    total: usize,
) -> Result<(), String> {
    let channel = format!("{prefix}:latency");
    let start = Instant::now();
    loop {
        let mut n = 0;
        for url in &opts.cluster {
            let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let answer: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("SHARDNUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            n += answer.first().map_or(0, |a| a.1);
        }
        if n >= 1 {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err("node B did not subscribe within 10 s".to_string());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish_paced(opts, &node_a, &sent, base, total).await;
    let latencies = reader.await.map_err(|e| e.to_string())??;
    report(
        opts,
        total,
        latencies,
        &backend_b,
        "on a Redis Cluster (sharded pub/sub)",
    );
    Ok(())
}

async fn publish_paced(
    opts: &Options,
    node_a: &Hub,
    sent: &[AtomicU64],
    base: Instant,
    total: usize,
) {
    let mut payload = vec![0u8; opts.size.max(8)];
    let per_tick = (opts.rate / 1000).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut index = 0;
    while index < total {
        tick.tick().await;
        for _ in 0..per_tick.min(total - index) {
            payload[..8].copy_from_slice(&(index as u64).to_be_bytes());
            sent[index].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
            node_a.publish("latency", Message::binary(payload.clone()));
            index += 1;
        }
    }
}

fn report(
    opts: &Options,
    total: usize,
    mut latencies: Vec<u64>,
    backend_b: &RedisBackend,
    how: &str,
) {
    let got = latencies.len();
    latencies.sort_unstable();
    let pct = |p: f64| {
        let rank = ((p / 100.0) * (got.saturating_sub(1)) as f64).round() as usize;
        latencies.get(rank).map_or(f64::NAN, |&n| n as f64 / 1000.0)
    };
    println!(
        "redis-hub latency {how}: {total} messages of {} B at {}/s from node A to a WebSocket \
         client on node B: received {got}, p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs; node B: {:?}",
        opts.size,
        opts.rate,
        pct(50.0),
        pct(99.0),
        pct(100.0),
        backend_b.stats()
    );
}

/// Reads server frames (unmasked, unfragmented binary) until `total` arrived or the stream
/// ends; returns each message's latency in nanoseconds.
async fn read_indices(
    mut stream: tokio::net::TcpStream,
    mut buf: Vec<u8>,
    sent: Arc<Vec<AtomicU64>>,
    base: Instant,
    total: usize,
) -> Result<Vec<u64>, String> {
    let mut latencies = Vec::with_capacity(total);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        // Every whole frame in the buffer.
        let mut at = 0;
        while let Some((payload, next)) = frame(&buf[at..]) {
            if payload.len() >= 8 {
                let mut index = [0u8; 8];
                index.copy_from_slice(&payload[..8]);
                let index = u64::from_be_bytes(index) as usize;
                if let Some(t) = sent.get(index) {
                    let now = base.elapsed().as_nanos() as u64;
                    latencies.push(now.saturating_sub(t.load(Ordering::Relaxed)));
                }
            }
            at += next;
        }
        buf.drain(..at);
        if latencies.len() >= total {
            return Ok(latencies);
        }
        // Messages a slow client misses (its send queue full) never come: stop when quiet.
        let n = match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut chunk)).await {
            Ok(read) => read.map_err(|e| e.to_string())?,
            Err(_) => return Ok(latencies),
        };
        if n == 0 {
            return Ok(latencies);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One server frame at the start of `buf`: its payload and the frame's length.
fn frame(buf: &[u8]) -> Option<(&[u8], usize)> {
    let second = *buf.get(1)?;
    let (len, header) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(buf.get(2..10)?);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (usize::from(n), 2),
    };
    let payload = buf.get(header..header + len)?;
    Some((payload, header + len))
}
