//! The load generator: echo load with messages in flight, idle connections, and upgrade
//! churn, against one server at a time.
//!
//! It runs on the orchestrator's current-thread runtime, pinned to the CPU the server does not
//! use: one core is all a client on a 2-core machine can have, and a single thread spends no
//! cycles on work stealing or cross-thread wake-ups. Frames are built once and masked with a
//! fixed key, so sending `k` messages is one `write` of `k` pre-built frames; echoes are
//! counted by a parser that skips payloads. A connection with `depth` messages in flight sends
//! as many new ones as came back in each read, so it keeps exactly `depth` in flight.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::sys;
use crate::wire::{self, FrameCounter};

/// How long one connect plus handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many connections are opened at once when opening many.
const CONNECT_CONCURRENCY: usize = 64;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// The phase every connection task looks at after each read: warm-up, measured, stop.
#[derive(Clone)]
struct Phase(Arc<AtomicU8>);

impl Phase {
    fn new() -> Self {
        Phase(Arc::new(AtomicU8::new(WARMUP)))
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Relaxed);
    }
}

/// An echo load: `conns` connections, each keeping `depth` binary messages of `size` bytes
/// in flight (1 is request/response).
#[derive(Clone, Copy, Debug)]
pub struct EchoLoad {
    /// Connections.
    pub conns: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages in flight per connection.
    pub depth: usize,
}

/// What one timed run measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Operations (echoed messages or upgrade cycles) completed in the window.
    pub ops: u64,
    /// The measured window.
    pub window: Duration,
    /// The server's CPU time (user + system) in the window.
    pub server_cpu: Duration,
    /// The load generator's own CPU time in the window.
    pub client_cpu: Duration,
    /// CPU time the rest of the machine used in the window: other work that disturbed it.
    pub other_cpu: Duration,
    /// Round trips of the measured operations, in nanoseconds.
    pub latencies: Vec<u32>,
    /// Operations that failed (churn only: a failed cycle is counted and skipped).
    pub errors: u64,
}

impl Measured {
    /// Operations per second of wall time.
    pub fn per_second(&self) -> f64 {
        self.ops as f64 / self.window.as_secs_f64()
    }

    /// Operations per second of server CPU time.
    pub fn per_cpu_second(&self) -> f64 {
        self.ops as f64 / self.server_cpu.as_secs_f64().max(1e-3)
    }

    /// The server's CPU use in the window, in percent of one core.
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.server_cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    /// The load generator's CPU use in the window, in percent of one core.
    pub fn client_cpu_percent(&self) -> f64 {
        100.0 * self.client_cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    /// Other processes' CPU use in the window, in percent of one core.
    pub fn other_cpu_percent(&self) -> f64 {
        100.0 * self.other_cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    /// A latency percentile (0 to 100) in microseconds.
    pub fn latency_us(&mut self, percentile: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((percentile / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        let (_, value, _) = self.latencies.select_nth_unstable(rank);
        f64::from(*value) / 1000.0
    }
}

/// Connects and completes the opening handshake; returns the stream and any bytes read past
/// the 101's head.
pub async fn connect(addr: SocketAddr) -> io::Result<(TcpStream, Vec<u8>)> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let rest = handshake(&mut stream, &wire::upgrade_request(&addr.to_string())).await?;
        Ok((stream, rest))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// The client's opening handshake over any stream: sends `request` (from
/// [`wire::upgrade_request`]) and returns the bytes read past the 101's head.
pub async fn handshake<S>(stream: &mut S, request: &[u8]) -> io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(request).await?;
    let mut buf = Vec::with_capacity(512);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::other("connection closed during the handshake"));
        }
        if let Some(end) = wire::head_end(&buf) {
            wire::check_upgrade_response(&buf[..end]).map_err(io::Error::other)?;
            return Ok(buf.split_off(end));
        }
        if buf.len() > 8192 {
            return Err(io::Error::other("handshake response head too long"));
        }
    }
}

/// The client's closing handshake: sends a close frame (code 1000), reads the server's close
/// frame, then waits for the server to end TCP first (RFC 6455, 7.1.1), so that the
/// server, not the client, keeps the TIME_WAIT. `rest` is what was read past the 101.
pub async fn close<S>(stream: &mut S, rest: &[u8]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&wire::CLOSE_FRAME).await?;
    let mut counter = FrameCounter::default();
    let mut done = counter
        .feed(rest, wire::OP_CLOSE, None)
        .map_err(io::Error::other)?;
    let mut buf = [0u8; 256];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return if done > 0 {
                Ok(())
            } else {
                Err(io::Error::other("EOF before the close reply"))
            };
        }
        if done == 0 {
            done = counter
                .feed(&buf[..n], wire::OP_CLOSE, None)
                .map_err(io::Error::other)?;
        }
    }
}

/// Opens `n` upgraded connections, `CONNECT_CONCURRENCY` at a time.
pub async fn connect_many(addr: SocketAddr, n: usize) -> io::Result<Vec<(TcpStream, Vec<u8>)>> {
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let permits = Arc::clone(&permits);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            connect(addr).await
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        conns.push(joined.map_err(io::Error::other)??);
    }
    Ok(conns)
}

/// Warm-up, then a measured window of the echo load against the server `pid` at `addr`.
pub async fn echo(
    addr: SocketAddr,
    pid: u32,
    load: EchoLoad,
    warmup: Duration,
    duration: Duration,
) -> io::Result<Measured> {
    let conns = connect_many(addr, load.conns).await?;
    let (frames, frame_len) = wire::binary_frames(load.size, load.depth);
    let frames: Arc<[u8]> = frames.into();
    let phase = Phase::new();
    let mut set = JoinSet::new();
    for (stream, rest) in conns {
        set.spawn(echo_connection(
            stream,
            rest,
            Arc::clone(&frames),
            frame_len,
            load,
            phase.clone(),
        ));
    }
    let measured = timed_window(pid, &phase, warmup, duration).await?;
    collect(set, measured).await
}

/// Waits out the warm-up, then measures the window: wall time and the server's CPU time.
async fn timed_window(
    pid: u32,
    phase: &Phase,
    warmup: Duration,
    duration: Duration,
) -> io::Result<Measured> {
    let me = std::process::id();
    tokio::time::sleep(warmup).await;
    let cpu_start = sys::cpu_time(pid)?;
    let own_start = sys::cpu_time(me)?;
    let busy_start = sys::machine_busy()?;
    let start = Instant::now();
    phase.set(MEASURE);
    tokio::time::sleep(duration).await;
    phase.set(STOP);
    let window = start.elapsed();
    let server_cpu = sys::cpu_time(pid)?.saturating_sub(cpu_start);
    let client_cpu = sys::cpu_time(me)?.saturating_sub(own_start);
    let busy = sys::machine_busy()?.saturating_sub(busy_start);
    Ok(Measured {
        window,
        server_cpu,
        client_cpu,
        other_cpu: busy.saturating_sub(server_cpu + client_cpu),
        ..Measured::default()
    })
}

/// Gathers what every connection task counted.
async fn collect(
    mut set: JoinSet<io::Result<(u64, Vec<u32>, u64)>>,
    mut measured: Measured,
) -> io::Result<Measured> {
    while let Some(joined) = set.join_next().await {
        let (ops, latencies, errors) = joined.map_err(io::Error::other)??;
        measured.ops += ops;
        measured.errors += errors;
        measured.latencies.extend_from_slice(&latencies);
    }
    Ok(measured)
}

fn nanos(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_nanos()).unwrap_or(u32::MAX)
}

/// One connection of the echo load: keeps `depth` messages in flight until told to stop.
async fn echo_connection(
    mut stream: TcpStream,
    rest: Vec<u8>,
    frames: Arc<[u8]>,
    frame_len: usize,
    load: EchoLoad,
    phase: Phase,
) -> io::Result<(u64, Vec<u32>, u64)> {
    let expected = Some(load.size as u64);
    let mut counter = FrameCounter::default();
    let mut sent_at = VecDeque::with_capacity(load.depth);
    let mut latencies = Vec::new();
    let mut ops = 0u64;
    let mut buf = vec![0u8; (64 * 1024).max(frame_len * load.depth).min(1 << 20)];

    stream.write_all(&frames[..frame_len * load.depth]).await?;
    let now = Instant::now();
    sent_at.extend(std::iter::repeat_n(now, load.depth));
    let mut done = counter
        .feed(&rest, wire::OP_BINARY, expected)
        .map_err(io::Error::other)?;
    loop {
        if done == 0 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::other("server closed the connection"));
            }
            done = counter
                .feed(&buf[..n], wire::OP_BINARY, expected)
                .map_err(io::Error::other)?;
            if done == 0 {
                continue;
            }
        }
        let now = Instant::now();
        let phase_now = phase.get();
        for _ in 0..done {
            let sent = sent_at.pop_front().expect("an echo for a message sent");
            if phase_now == MEASURE {
                ops += 1;
                latencies.push(nanos(now - sent));
            }
        }
        if phase_now == STOP {
            return Ok((ops, latencies, 0));
        }
        stream.write_all(&frames[..frame_len * done]).await?;
        let now = Instant::now();
        sent_at.extend(std::iter::repeat_n(now, done));
        done = 0;
    }
}

/// Opens `n` idle connections and returns the server's RSS growth per connection, in bytes,
/// measured `settle` after the last one opened. When `spoken`, each connection first has one
/// 20-byte binary message echoed (one message each way), then idles like the others: what a
/// connection keeps once it has read and written something.
pub async fn idle(
    addr: SocketAddr,
    pid: u32,
    n: usize,
    settle: Duration,
    spoken: bool,
) -> io::Result<Idle> {
    tokio::time::sleep(settle / 4).await;
    let before = sys::rss_bytes(pid)?;
    let mut conns = connect_many(addr, n).await?;
    if spoken {
        let (frame, frame_len) = wire::binary_frames(IDLE_MESSAGE, 1);
        for (stream, rest) in &mut conns {
            stream.write_all(&frame[..frame_len]).await?;
            // The echo: a 2-byte header and the payload; nothing else comes before it.
            let echo_len = 2 + IDLE_MESSAGE;
            while rest.len() < echo_len {
                if stream.read_buf(rest).await? == 0 {
                    return Err(io::Error::other("connection closed before the echo"));
                }
            }
            rest.clear();
        }
    }
    tokio::time::sleep(settle).await;
    let after = sys::rss_bytes(pid)?;
    drop(conns);
    Ok(Idle {
        before,
        after,
        conns: n,
    })
}

/// The message a spoken idle connection has echoed, in bytes.
const IDLE_MESSAGE: usize = 20;

/// What the idle scenario measured.
#[derive(Debug)]
pub struct Idle {
    /// Server RSS before opening, in bytes.
    pub before: u64,
    /// Server RSS with every connection open, in bytes.
    pub after: u64,
    /// Connections held open.
    pub conns: usize,
}

impl Idle {
    /// RSS growth per connection, in bytes.
    pub fn per_connection(&self) -> f64 {
        self.after.saturating_sub(self.before) as f64 / self.conns as f64
    }
}

/// Upgrade churn: `workers` loops of connect, handshake, close frame, close reply, FIN.
pub async fn churn(
    addr: SocketAddr,
    pid: u32,
    workers: usize,
    warmup: Duration,
    duration: Duration,
) -> io::Result<Measured> {
    let phase = Phase::new();
    let mut set = JoinSet::new();
    for _ in 0..workers {
        set.spawn(churn_worker(addr, phase.clone()));
    }
    let measured = timed_window(pid, &phase, warmup, duration).await?;
    let measured = collect(set, measured).await?;
    if measured.ops == 0 && measured.errors > 0 {
        return Err(io::Error::other(format!(
            "every upgrade cycle failed ({} errors)",
            measured.errors
        )));
    }
    Ok(measured)
}

/// Failed cycles one churn worker tolerates before giving up.
const CHURN_MAX_ERRORS: u64 = 100;

async fn churn_worker(addr: SocketAddr, phase: Phase) -> io::Result<(u64, Vec<u32>, u64)> {
    let mut latencies = Vec::new();
    let mut ops = 0;
    let mut errors = 0;
    loop {
        let start = Instant::now();
        let cycle = tokio::time::timeout(CONNECT_TIMEOUT, upgrade_cycle(addr)).await;
        let phase_now = phase.get();
        match cycle {
            Ok(Ok(())) => {
                if phase_now == MEASURE {
                    ops += 1;
                    latencies.push(nanos(start.elapsed()));
                }
            }
            Ok(Err(_)) | Err(_) => {
                errors += 1;
                if errors >= CHURN_MAX_ERRORS {
                    return Ok((ops, latencies, errors));
                }
            }
        }
        if phase_now == STOP {
            return Ok((ops, latencies, errors));
        }
    }
}

/// Connect, upgrade, send a close frame, read the close reply, wait for the server's FIN.
async fn upgrade_cycle(addr: SocketAddr) -> io::Result<()> {
    let (mut stream, rest) = connect(addr).await?;
    close(&mut stream, &rest).await
}
