//! `bench publish-cost --subscribers S --publishes N`: S sockets served by the layer in one
//! process, each over a `tokio::io::duplex` pipe (hyper's `http1` server connection, no TCP),
//! every one subscribed to one topic of a `Hub`; then N publishes of one message each, and
//! after each the tasks run until every subscriber's client has read it (a client that reads
//! and discards, counting whole frames).
//!
//! Run under `valgrind --tool=callgrind` with two values of N (see `bench/callgrind.sh`): the
//! difference of the instruction totals divided by S x (difference of N) is the cost of one
//! delivered message, publish, connection task and the client's read included, with the
//! start-up, the S upgrades and the tear-down cancelled out.
//!
//! - `--burst K`: the publishes go out K at a time, back to back, before the tasks run
//!   (default 1): under load publishes arrive in bursts, and a subscriber's connection then
//!   writes every message of the burst in one go. N is rounded up to a multiple of K.
//! - `--size B`: the message's size (default 20 bytes, binary).
//! - `--laggards L`: L more subscribers whose clients read slowly: after each burst has reached
//!   every other subscriber, each reads once, at most half a burst's frames (in bytes), so
//!   that its send queue fills and then stays at the edge of full, as a slow reader's does.
//!   Only the other subscribers' frames are counted (default 0).
//! - `--deflate off|shared|takeover`: whether the subscribers agree on permessage-deflate,
//!   with `server_no_context_takeover` (`shared`) or with context takeover (`takeover`). The
//!   message is then compressible text-like bytes, and the server compresses from 128 bytes.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use tower_websocket::deflate::DeflateConfig;
use tower_websocket::hub::Hub;
use tower_websocket::{Message, WebSocket, WebSocketLayer};

use crate::client;
use crate::wire;

const TOPIC: &str = "room";

/// Whether and how the subscribers compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deflate {
    Off,
    Shared,
    Takeover,
}

impl std::str::FromStr for Deflate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Deflate::Off),
            "shared" => Ok(Deflate::Shared),
            "takeover" => Ok(Deflate::Takeover),
            other => Err(format!(
                "--deflate takes off, shared or takeover, not {other:?}"
            )),
        }
    }
}

pub struct Options {
    pub subscribers: usize,
    pub publishes: usize,
    pub burst: usize,
    pub size: usize,
    pub deflate: Deflate,
    pub laggards: usize,
}

/// Frames counted by every client, and a wake-up when they reach the target.
#[derive(Default)]
struct Received {
    frames: AtomicUsize,
    target: AtomicUsize,
    reached: Notify,
}

fn router(hub: &Hub, deflate: Deflate) -> Router {
    let hub = hub.clone();
    let handler = move |ws: WebSocket| {
        let hub = hub.clone();
        async move {
            let (mut rx, tx) = ws.split();
            let _subscription = hub.subscribe(TOPIC, &tx);
            while rx.recv().await.is_some() {}
        }
    };
    // No timers: under callgrind a slow run would see keepalive pings or idle closes.
    let mut layer = WebSocketLayer::new(handler)
        .ping_interval(None)
        .idle_timeout(None)
        .write_timeout(None);
    if deflate != Deflate::Off {
        layer = layer
            .deflate(DeflateConfig::new().server_no_context_takeover(deflate == Deflate::Shared));
    }
    Router::new()
        .route("/", get(|| async { "not a WebSocket" }))
        .layer(layer)
}

fn request(deflate: Deflate) -> Vec<u8> {
    let extension = match deflate {
        Deflate::Off => "",
        Deflate::Shared => {
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"
        }
        Deflate::Takeover => "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    };
    format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n",
        wire::KEY
    )
    .into_bytes()
}

/// The published message: zeros, or for deflate a repetitive JSON-like text that compresses.
fn message(size: usize, deflate: Deflate) -> Message {
    if deflate == Deflate::Off {
        return Message::binary(Bytes::from(vec![7u8; size]));
    }
    let pattern = b"{\"user\":\"ada\",\"text\":\"hello, room\",\"seq\":12345}";
    let bytes: Vec<u8> = pattern.iter().copied().cycle().take(size).collect();
    Message::binary(Bytes::from(bytes))
}

/// Runs the subscribers and the publishes on a current-thread runtime.
pub fn run(opts: &Options) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(publish_to_all(opts))
        .map_err(|e| e.to_string())?;
    println!(
        "{} publishes of {} bytes to {} subscribers and {} laggards, {} at a time (deflate {:?})",
        opts.publishes.div_ceil(opts.burst.max(1)) * opts.burst.max(1),
        opts.size,
        opts.subscribers,
        opts.laggards,
        opts.burst.max(1),
        opts.deflate
    );
    Ok(())
}

async fn publish_to_all(opts: &Options) -> io::Result<()> {
    let hub = Hub::new();
    let router = router(&hub, opts.deflate);
    let request = request(opts.deflate);
    let received = Arc::new(Received::default());
    // Told once per burst, when the burst has reached every other subscriber.
    let round = Arc::new(Notify::new());
    // A server's frame: the payload after a 2, 4 or 10-byte header.
    let frame_len = opts.size
        + match opts.size {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        };
    for n in 0..opts.subscribers + opts.laggards {
        let (mut client_io, server_io) = tokio::io::duplex(16 * 1024);
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(
            http1::Builder::new()
                .serve_connection(TokioIo::new(server_io), service)
                .with_upgrades(),
        );
        let rest = client::handshake(&mut client_io, &request).await?;
        if !rest.is_empty() {
            return Err(io::Error::other("data before the first message"));
        }
        if n >= opts.subscribers {
            let round = Arc::clone(&round);
            let budget = (opts.burst.max(1) * frame_len / 2).max(1);
            tokio::spawn(async move {
                let mut buf = vec![0u8; budget];
                loop {
                    round.notified().await;
                    if matches!(client_io.read(&mut buf).await, Ok(0) | Err(_)) {
                        return;
                    }
                }
            });
            continue;
        }
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let mut counter = wire::FrameCounter::default();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match client_io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let Ok(frames) = counter.feed(&buf[..n], wire::OP_BINARY, None) else {
                    return;
                };
                let total = received.frames.fetch_add(frames, Ordering::Relaxed) + frames;
                if frames > 0 && total >= received.target.load(Ordering::Relaxed) {
                    received.reached.notify_one();
                }
            }
        });
    }
    // Every handler has subscribed.
    while hub.subscriber_count(TOPIC) < opts.subscribers + opts.laggards {
        tokio::task::yield_now().await;
    }
    let message = message(opts.size, opts.deflate);
    let burst = opts.burst.max(1);
    let mut published = 0;
    while published < opts.publishes {
        let target = (published + burst) * opts.subscribers;
        received.target.store(target, Ordering::Relaxed);
        // No await in between: the subscribers' tasks run only after the whole burst.
        for _ in 0..burst {
            published += 1;
            let delivery = hub.publish(TOPIC, message.clone());
            // Only a laggard may miss a message.
            if delivery.delivered < opts.subscribers
                || delivery.delivered + delivery.dropped != opts.subscribers + opts.laggards
            {
                return Err(io::Error::other(format!(
                    "publish {published}: {delivery:?}, expected at least {} delivered of {}",
                    opts.subscribers,
                    opts.subscribers + opts.laggards
                )));
            }
        }
        while received.frames.load(Ordering::Relaxed) < target {
            received.reached.notified().await;
        }
        round.notify_waiters();
    }
    Ok(())
}

/// `bench publish-cost`'s arguments.
pub fn main(args: &[String]) -> Result<(), String> {
    let mut args = crate::Args { rest: args };
    let mut opts = Options {
        subscribers: 1000,
        publishes: 100,
        burst: 1,
        size: 20,
        deflate: Deflate::Off,
        laggards: 0,
    };
    while let Some(arg) = args.next() {
        match arg {
            "--subscribers" => opts.subscribers = args.parse::<usize>(arg)?.max(1),
            "--publishes" => opts.publishes = args.parse(arg)?,
            "--burst" => opts.burst = args.parse::<usize>(arg)?.max(1),
            "--size" => opts.size = args.parse(arg)?,
            "--deflate" => opts.deflate = args.parse(arg)?,
            "--laggards" => opts.laggards = args.parse(arg)?,
            other => return Err(format!("unknown option {other:?}\n{}", crate::USAGE)),
        }
    }
    run(&opts)
}
