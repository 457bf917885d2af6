//! The fan-out scenarios `fanout-N-S` and `fanout-N-S-slow`: N subscribers on one topic, one
//! publisher, and the highest publish rate each server sustains with every subscriber
//! receiving every message. See "Fan-out" in `docs/performance.md`.
//!
//! Per (round, scenario, kind) a fresh server process runs on CPU 0 (`bench fanout-server`);
//! the load generator runs here, on CPU 1, on one current-thread runtime. It opens N
//! subscriber sockets (`GET /sub`) and one publisher (`GET /pub`), weighs the server's RSS per
//! subscriber, then searches the rate: each step publishes at a fixed rate for
//! [`STEP_WINDOW`], waits for the deliveries, and passes when at least [`MIN_DELIVERED`] of
//! them arrived and their p99 from publish to receipt is under the scenario's bar. Each
//! payload carries its send time and its step, so a late message of an earlier step is never
//! counted in a later one.
//!
//! The slow variant leaves 1 % of the subscribers unread (they never call `read`), starts its
//! search at the rate the fast variant found for the same kind in the same round, and counts
//! only the other subscribers' deliveries.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{ready, Poll};

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::LocalSet;

use crate::client;
use crate::fanout_servers::{FanoutKind, PUB_PATH, SUB_PATH};
use crate::process::ServerProcess;
use crate::report::median;
use crate::run::Options;
use crate::sys;
use crate::wire;

/// The CPU the servers run on.
const SERVER_CPU: usize = 0;
/// The CPU the load generator runs on.
const CLIENT_CPU: usize = 1;
/// How long each step of the rate search publishes.
const STEP_WINDOW: Duration = Duration::from_millis(500);
/// A step passes when at least this share of the expected deliveries arrived.
const MIN_DELIVERED: f64 = 0.99;
/// After the window, how long past the p99 bar deliveries are still awaited.
const DRAIN_SLACK: Duration = Duration::from_millis(250);
/// The search stops when the passing and failing rates are closer than this factor.
const SEARCH_PRECISION: f64 = 1.2;
/// At most this many measured steps per run.
const MAX_STEPS: usize = 12;
/// Without a hint, the search starts at this many deliveries per second.
const START_DELIVERIES: f64 = 200_000.0;
/// How many subscribers connect at once.
const CONNECT_CONCURRENCY: usize = 64;
/// One in this many subscribers never reads, in the slow variant.
const SLOW_ONE_IN: usize = 100;
/// Bytes of each payload that carry its send time (8) and step (4) and sequence number (4).
const STAMP_LEN: usize = 16;

/// One fan-out scenario.
#[derive(Debug, Clone)]
pub struct Fanout {
    /// `fanout-N-S` or `fanout-N-S-slow`.
    pub name: String,
    /// Subscribers.
    pub subscribers: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Whether 1 % of the subscribers never read.
    pub slow: bool,
}

impl Fanout {
    /// The p99 publish-to-receipt bar a step must stay under: 1 s at 10 000 subscribers and
    /// more, 100 ms below.
    pub fn bar(&self) -> Duration {
        if self.subscribers >= 10_000 {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(100)
        }
    }

    /// Subscribers that never read.
    fn slow_count(&self) -> usize {
        if self.slow {
            self.subscribers / SLOW_ONE_IN
        } else {
            0
        }
    }

    /// One line saying what the scenario is.
    pub fn describe(&self) -> String {
        let slow = if self.slow {
            format!("; {} of them never read (counted out)", self.slow_count())
        } else {
            String::new()
        };
        format!(
            "{} subscribers x {} messages{slow}; max publish rate with >= {:.0}% delivered and p99 < {} ms, {} ms steps",
            self.subscribers,
            size_name(self.size),
            MIN_DELIVERED * 100.0,
            self.bar().as_millis(),
            STEP_WINDOW.as_millis()
        )
    }
}

fn size_name(size: usize) -> String {
    if size >= 1024 && size % 1024 == 0 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// The fan-out scenarios that `only` selects, in run order. They run only when named (a
/// prefix such as `fanout` or `fanout-10000`): a bare `bench run` leaves them out.
pub fn scenarios(only: &[String]) -> Vec<Fanout> {
    let mut all = Vec::new();
    for subscribers in [1000, 10_000] {
        for size in [20, 1024] {
            for slow in [false, true] {
                let tag = size_name(size).replace(' ', "");
                let suffix = if slow { "-slow" } else { "" };
                all.push(Fanout {
                    name: format!("fanout-{subscribers}-{tag}{suffix}"),
                    subscribers,
                    size,
                    slow,
                });
            }
        }
    }
    all.retain(|s| {
        only.iter().any(|p| {
            !p.is_empty()
                && s.name
                    .to_ascii_lowercase()
                    .starts_with(&p.to_ascii_lowercase())
        })
    });
    all
}

/// Starts `bench fanout-server <kind>` on [`SERVER_CPU`]; `bun` is Bun's binary, for the
/// `bun` kind.
fn spawn_server(exe: &Path, kind: FanoutKind, bun: Option<&Path>) -> Result<ServerProcess, String> {
    let mut command = Command::new(exe);
    command
        .args(["fanout-server", kind.name(), "--addr", "127.0.0.1:0"])
        .args(["--cpu", &SERVER_CPU.to_string(), "--die-with-parent"]);
    if let Some(bun) = bun {
        command.arg("--bun").arg(bun);
    }
    ServerProcess::spawn(command, &format!("{kind} server"), Duration::from_secs(20))
}

/// Installs Bun with `scripts/bun.sh` (or finds it installed) and returns its path.
fn find_bun() -> Result<PathBuf, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bun.sh");
    let output = Command::new("bash")
        .arg(script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{script} failed ({})", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout
        .lines()
        .last()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("{script} printed no path"))?;
    Ok(PathBuf::from(path))
}

/// The range of local ports the kernel gives to outgoing connections.
fn local_port_count() -> Option<usize> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = range.split_whitespace().map(|v| v.parse::<usize>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    Some(hi.saturating_sub(lo) + 1)
}

/// What one run (one kind, one scenario) measured: the figures of the highest passing step.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Publishes per second of the highest passing step.
    pub publish_rate: f64,
    /// Messages received per second in that step (by the subscribers that read).
    pub delivered_per_s: f64,
    /// Share of the expected deliveries that arrived in that step.
    pub delivered_share: f64,
    /// Publish to receipt, median and 99th percentile, in ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// Server CPU time per delivered message in that step, in ns.
    pub cpu_ns_per_msg: f64,
    /// Server RSS growth per subscriber while connecting, in kB (1000 bytes).
    pub kb_per_subscriber: f64,
    /// The server's largest RSS growth during the search over its RSS before it, in MB.
    pub rss_growth_mb: f64,
    /// Server, load generator and other processes' CPU use in that step, in % of one core.
    pub server_cpu: f64,
    /// See `server_cpu`.
    pub client_cpu: f64,
    /// See `server_cpu`.
    pub other_cpu: f64,
    /// The load generator's CPU time per delivered message in that step, in ns: publishing,
    /// reading and counting.
    pub client_ns_per_msg: f64,
    /// Messages per subscriber read in that step: how much the server's writes coalesced by
    /// the time the load generator read them.
    pub per_read: f64,
    /// Measured steps.
    pub steps: usize,
    /// The load generator used over 90 % of its core in the first failing step above the
    /// result: the rate found may be the load generator's limit, not the server's.
    pub client_bound: bool,
    /// Deliveries the load generator counts per second of its CPU in the first failing step
    /// above the result (one second over its CPU time per message there): what it can count
    /// on its one core at that step's messages per read. More per read cost it less.
    pub client_ceiling: f64,
}

/// One step's figures.
#[derive(Debug, Clone, Default)]
struct Step {
    rate: f64,
    pass: bool,
    sample: Sample,
}

/// Publish-to-receipt times: a log-linear histogram (64 buckets per power of two, so within
/// 1.6 %) of microseconds.
struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const SUB_BUCKETS: u64 = 64;

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; 64 * SUB_BUCKETS as usize],
            total: 0,
        }
    }

    fn index(us: u64) -> usize {
        if us < SUB_BUCKETS {
            return us as usize;
        }
        let msb = 63 - u64::from(us.leading_zeros());
        let shift = msb - 6;
        ((shift + 1) * SUB_BUCKETS + ((us >> shift) - SUB_BUCKETS)) as usize
    }

    /// The upper edge of a bucket, in microseconds.
    fn value(index: usize) -> u64 {
        let index = index as u64;
        if index < SUB_BUCKETS {
            return index;
        }
        let shift = index / SUB_BUCKETS - 1;
        ((index % SUB_BUCKETS + SUB_BUCKETS + 1) << shift) - 1
    }

    fn record(&mut self, us: u64) {
        let i = Self::index(us).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
    }

    fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
    }

    /// A percentile (0 to 100) in milliseconds; NaN when empty.
    fn percentile_ms(&self, percentile: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        let rank = ((percentile / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i) as f64 / 1000.0;
            }
        }
        f64::NAN
    }
}

/// What the subscriber tasks count, shared on the load generator's one thread.
struct Stats {
    epoch: Instant,
    /// The step being measured; deliveries of other steps are not counted.
    step: Cell<u32>,
    received: Cell<u64>,
    /// Subscriber reads that returned bytes, since the step began.
    reads: Cell<u64>,
    latencies: RefCell<Histogram>,
    last_arrival: Cell<Instant>,
    /// `bench fanout-client-cost` waits on this for `received` to reach `awaited`.
    awaited: Cell<u64>,
    all_arrived: tokio::sync::Notify,
}

impl Stats {
    fn new(epoch: Instant) -> Self {
        Stats {
            epoch,
            step: Cell::new(0),
            received: Cell::new(0),
            reads: Cell::new(0),
            latencies: RefCell::new(Histogram::new()),
            last_arrival: Cell::new(epoch),
            awaited: Cell::new(u64::MAX),
            all_arrived: tokio::sync::Notify::new(),
        }
    }

    /// Bytes arrived now: the time every message in them is stamped with, in ns since the
    /// epoch. One clock reading per read, not per message.
    fn read_now(&self) -> u64 {
        let now = Instant::now();
        self.last_arrival.set(now);
        u64::try_from(now.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn arrived(&self, now_ns: u64, stamp: &[u8; STAMP_LEN]) {
        let step = u32::from_le_bytes([stamp[8], stamp[9], stamp[10], stamp[11]]);
        if step != self.step.get() || step == 0 {
            return;
        }
        let sent = u64::from_le_bytes([
            stamp[0], stamp[1], stamp[2], stamp[3], stamp[4], stamp[5], stamp[6], stamp[7],
        ]);
        let received = self.received.get() + 1;
        self.received.set(received);
        if received == self.awaited.get() {
            self.all_arrived.notify_one();
        }
        self.latencies
            .borrow_mut()
            .record(now_ns.saturating_sub(sent) / 1000);
    }
}

/// A streaming parser of the server's frames: it takes the first [`STAMP_LEN`] bytes of each
/// binary message and skips the rest, and queues a pong for every ping.
#[derive(Default)]
struct Parser {
    header: wire::HeaderReader,
    /// Payload bytes of the current frame still to read, once its header is complete.
    left: Option<u64>,
    opcode: u8,
    stamp: [u8; STAMP_LEN],
    stamp_have: usize,
    control: Vec<u8>,
}

impl Parser {
    /// Feeds bytes that arrived at `now_ns` ([`Stats::read_now`]); pongs to send go to
    /// `pongs`. Fails on a close frame, which no server sends in the middle of a run.
    fn feed(
        &mut self,
        mut data: &[u8],
        now_ns: u64,
        stats: &Stats,
        pongs: &mut Vec<u8>,
    ) -> io::Result<()> {
        loop {
            if self.left.is_none() && self.header.is_empty() {
                self.whole_messages(&mut data, now_ns, stats)?;
            }
            if let Some(left) = self.left {
                let k = left.min(data.len() as u64) as usize;
                let chunk = &data[..k];
                if self.opcode == wire::OP_BINARY && self.stamp_have < STAMP_LEN {
                    let take = (STAMP_LEN - self.stamp_have).min(chunk.len());
                    self.stamp[self.stamp_have..self.stamp_have + take]
                        .copy_from_slice(&chunk[..take]);
                    self.stamp_have += take;
                } else if self.opcode & 0x08 != 0 {
                    self.control.extend_from_slice(chunk);
                }
                data = &data[k..];
                if left > k as u64 {
                    self.left = Some(left - k as u64);
                    return Ok(());
                }
                self.left = None;
                self.frame_done(now_ns, stats, pongs)?;
            }
            let Some(header) = self.header.gather(&mut data) else {
                return Ok(());
            };
            self.opcode = header.opcode;
            if header.masked {
                return Err(io::Error::other("the server sent a masked frame"));
            }
            self.stamp_have = 0;
            self.control.clear();
            self.left = Some(header.len);
        }
    }

    /// The common case, taken between frames: binary messages that lie whole in `data` are
    /// read in place, with no copy of their header or stamp. Stops before anything else (a
    /// control frame, a frame cut by the end of `data`), which [`Parser::feed`] takes a byte
    /// stream at a time.
    #[inline]
    fn whole_messages(&mut self, data: &mut &[u8], now_ns: u64, stats: &Stats) -> io::Result<()> {
        while let Some((header, len)) = wire::Header::parse(data) {
            if header.opcode != wire::OP_BINARY || header.masked {
                break;
            }
            let rest = &data[len..];
            let Some(payload) = usize::try_from(header.len)
                .ok()
                .and_then(|size| rest.get(..size))
            else {
                break;
            };
            let Some(stamp) = payload.first_chunk::<STAMP_LEN>() else {
                return Err(io::Error::other("a message shorter than its stamp"));
            };
            stats.arrived(now_ns, stamp);
            *data = &rest[payload.len()..];
        }
        Ok(())
    }

    fn frame_done(&mut self, now_ns: u64, stats: &Stats, pongs: &mut Vec<u8>) -> io::Result<()> {
        match self.opcode {
            wire::OP_BINARY if self.stamp_have == STAMP_LEN => stats.arrived(now_ns, &self.stamp),
            wire::OP_BINARY => return Err(io::Error::other("a message shorter than its stamp")),
            wire::OP_CLOSE => return Err(io::Error::other("the server closed a subscriber")),
            wire::OP_PING => {
                pongs.extend_from_slice(&wire::client_frame(wire::OP_PONG, &self.control))
            }
            _ => {}
        }
        Ok(())
    }
}

thread_local! {
    /// The read buffer every subscriber shares: reads happen one at a time on this thread,
    /// and no read holds it across an await.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 256 * 1024]);
}

/// A subscriber that reads: counts every message until the connection ends.
///
/// It reads through `poll_read`, which takes a read that did not fill the buffer as the
/// socket drained: one `recv` per wake-up, where `readable` + `try_read` needs a second one
/// that says `EAGAIN`.
async fn subscriber(mut stream: TcpStream, rest: Vec<u8>, stats: Rc<Stats>) -> io::Result<()> {
    let mut parser = Parser::default();
    let mut pongs = Vec::new();
    parser.feed(&rest, stats.read_now(), &stats, &mut pongs)?;
    loop {
        if !pongs.is_empty() {
            stream.write_all(&pongs).await?;
            pongs.clear();
        }
        std::future::poll_fn(|cx| {
            READ_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                let mut buf = ReadBuf::new(&mut buf);
                ready!(Pin::new(&mut stream).poll_read(cx, &mut buf))?;
                if buf.filled().is_empty() {
                    return Poll::Ready(Err(io::Error::other("the server closed a subscriber")));
                }
                stats.reads.set(stats.reads.get() + 1);
                Poll::Ready(parser.feed(buf.filled(), stats.read_now(), &stats, &mut pongs))
            })
        })
        .await?;
    }
}

/// The publisher's reading side: it only answers pings (through `pongs`, which the publishing
/// side writes with its next batch).
async fn publisher_reader(
    stream: tokio::net::tcp::OwnedReadHalf,
    rest: Vec<u8>,
    pongs: Rc<RefCell<Vec<u8>>>,
    stats: Rc<Stats>,
) -> io::Result<()> {
    let mut parser = Parser::default();
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    parser.feed(&rest, stats.read_now(), &stats, &mut out)?;
    pongs.borrow_mut().append(&mut out);
    loop {
        stream.readable().await?;
        match stream.try_read(&mut buf) {
            Ok(0) => return Err(io::Error::other("the server closed the publisher")),
            Ok(n) => {
                parser.feed(&buf[..n], stats.read_now(), &stats, &mut out)?;
                pongs.borrow_mut().append(&mut out);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Connects on `path` and completes the opening handshake.
async fn connect(addr: SocketAddr, path: &str) -> io::Result<(TcpStream, Vec<u8>)> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        wire::KEY
    );
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let rest = client::handshake(&mut stream, request.as_bytes()).await?;
        Ok((stream, rest))
    };
    tokio::time::timeout(client::CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// The publisher's side of the steps.
struct Publisher {
    write: OwnedWriteHalf,
    pongs: Rc<RefCell<Vec<u8>>>,
    payload: Vec<u8>,
    seq: u32,
    batch: Vec<u8>,
}

impl Publisher {
    /// Publishes at `rate` per second for `window`, each message stamped with its send time
    /// and `step`. Returns how many it sent and over how long: the nominal window (the last
    /// message goes out one interval before it ends), or longer when the writes were held up.
    async fn publish(
        &mut self,
        stats: &Stats,
        step: u32,
        rate: f64,
        window: Duration,
    ) -> io::Result<(u64, Duration)> {
        let total = ((rate * window.as_secs_f64()).round() as u64).max(1);
        let start = Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while sent < total {
            tick.tick().await;
            let due = ((rate * start.elapsed().as_secs_f64()).ceil() as u64).min(total);
            if due <= sent {
                continue;
            }
            self.batch.clear();
            self.batch.append(&mut self.pongs.borrow_mut());
            let now = u64::try_from(stats.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            for _ in sent..due {
                self.seq = self.seq.wrapping_add(1);
                self.payload[..8].copy_from_slice(&now.to_le_bytes());
                self.payload[8..12].copy_from_slice(&step.to_le_bytes());
                self.payload[12..16].copy_from_slice(&self.seq.to_le_bytes());
                self.batch
                    .extend_from_slice(&wire::client_frame(wire::OP_BINARY, &self.payload));
            }
            self.write.write_all(&self.batch).await?;
            sent = due;
        }
        let nominal = Duration::from_secs_f64(total as f64 / rate);
        Ok((sent, start.elapsed().max(nominal)))
    }
}

/// CPU counters at one instant.
struct CpuMark {
    server: Duration,
    own: Duration,
    busy: Duration,
    at: Instant,
}

impl CpuMark {
    fn now(pid: u32) -> io::Result<Self> {
        Ok(CpuMark {
            server: sys::cpu_time(pid)?,
            own: sys::cpu_time(std::process::id())?,
            busy: sys::machine_busy()?,
            at: Instant::now(),
        })
    }

    /// Server, own and other CPU use since `self`, in % of one core, and the server's and
    /// this process's CPU time.
    fn percent_since(&self, pid: u32) -> io::Result<(f64, f64, f64, Duration, Duration)> {
        let end = CpuMark::now(pid)?;
        let wall = end.at.duration_since(self.at).as_secs_f64().max(1e-6);
        let server = end.server.saturating_sub(self.server);
        let own = end.own.saturating_sub(self.own);
        let busy = end.busy.saturating_sub(self.busy);
        let other = busy.saturating_sub(server + own);
        let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall;
        Ok((pct(server), pct(own), pct(other), server, own))
    }
}

/// One run's load: connect, weigh, warm up, search the rate.
async fn measure(
    addr: SocketAddr,
    pid: u32,
    scenario: &Fanout,
    hint: Option<f64>,
    warmup: Duration,
) -> io::Result<Sample> {
    let epoch = Instant::now();
    let stats = Rc::new(Stats::new(epoch));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let rss_before = sys::rss_bytes(pid)?;

    let permits = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut pending = Vec::with_capacity(scenario.subscribers);
    for _ in 0..scenario.subscribers {
        let permits = Rc::clone(&permits);
        pending.push(tokio::task::spawn_local(async move {
            let _permit = permits.acquire().await.map_err(io::Error::other)?;
            connect(addr, SUB_PATH).await
        }));
    }
    let mut unread = Vec::new();
    for (i, handle) in pending.into_iter().enumerate() {
        let (stream, rest) = handle.await.map_err(io::Error::other)??;
        if scenario.slow && i % SLOW_ONE_IN == SLOW_ONE_IN - 1 {
            unread.push(stream);
        } else {
            let stats = Rc::clone(&stats);
            tokio::task::spawn_local(async move {
                if let Err(e) = subscriber(stream, rest, stats).await {
                    eprintln!("  (a subscriber stopped: {e})");
                }
            });
        }
    }
    let readers = (scenario.subscribers - unread.len()) as u64;
    // The unread sockets stay open until the run ends (the LocalSet is dropped).
    tokio::task::spawn_local(async move {
        let _unread = unread;
        std::future::pending::<()>().await;
    });

    let (stream, rest) = connect(addr, PUB_PATH).await?;
    let (read, write) = stream.into_split();
    let pongs = Rc::new(RefCell::new(Vec::new()));
    {
        let pongs = Rc::clone(&pongs);
        let stats = Rc::clone(&stats);
        tokio::task::spawn_local(async move {
            if let Err(e) = publisher_reader(read, rest, pongs, stats).await {
                eprintln!("  (the publisher's reader stopped: {e})");
            }
        });
    }
    let mut payload = vec![0u8; scenario.size.max(STAMP_LEN)];
    for (i, b) in payload.iter_mut().enumerate().skip(STAMP_LEN) {
        *b = (i % 251) as u8;
    }
    let mut publisher = Publisher {
        write,
        pongs,
        payload,
        seq: 0,
        batch: Vec::new(),
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = sys::rss_bytes(pid)?;
    let kb_per_subscriber =
        rss_connected.saturating_sub(rss_before) as f64 / scenario.subscribers as f64 / 1000.0;

    let start_rate = hint.unwrap_or(START_DELIVERIES / readers.max(1) as f64);
    // Warm-up at a quarter of the starting rate, with step 0 (never counted).
    if !warmup.is_zero() {
        publisher
            .publish(&stats, 0, start_rate / 4.0, warmup)
            .await?;
        quiesce(&stats, Duration::from_secs(2)).await;
    }

    let mut rss_max = rss_connected;
    let mut best: Option<Step> = None;
    let mut lowest_fail: Option<Step> = None;
    let mut rate = std::env::var("FANOUT_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(start_rate);
    let mut steps = 0;
    while steps < MAX_STEPS {
        steps += 1;
        let step = run_step(
            &mut publisher,
            &stats,
            pid,
            scenario,
            readers,
            steps as u32,
            rate,
        )
        .await?;
        rss_max = rss_max.max(sys::rss_bytes(pid)?);
        if step.pass {
            if best.as_ref().is_none_or(|b| b.rate < step.rate) {
                best = Some(step);
            }
        } else if lowest_fail.as_ref().is_none_or(|f| f.rate > step.rate) {
            lowest_fail = Some(step);
        }
        // A fixed rate (FANOUT_RATE, publishes per second): every step at it, for profiling.
        if let Some(fixed) = std::env::var("FANOUT_RATE")
            .ok()
            .and_then(|r| r.parse().ok())
        {
            rate = fixed;
            continue;
        }
        rate = match (&best, &lowest_fail) {
            (Some(lo), Some(hi)) if hi.rate / lo.rate <= SEARCH_PRECISION => break,
            (Some(lo), Some(hi)) => (lo.rate * hi.rate).sqrt(),
            (Some(lo), None) => lo.rate * 2.0,
            (None, Some(hi)) if hi.rate <= 1.0 => break,
            (None, Some(hi)) => (hi.rate / 2.0).max(1.0),
            (None, None) => break,
        };
    }
    let mut sample = best.map(|b| b.sample).unwrap_or(Sample {
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        cpu_ns_per_msg: f64::NAN,
        ..Sample::default()
    });
    sample.kb_per_subscriber = kb_per_subscriber;
    sample.rss_growth_mb = rss_max.saturating_sub(rss_connected) as f64 / 1e6;
    sample.steps = steps;
    sample.client_bound = lowest_fail
        .as_ref()
        .is_some_and(|f| f.sample.client_cpu > 90.0);
    sample.client_ceiling = lowest_fail.map_or(f64::NAN, |f| 1e9 / f.sample.client_ns_per_msg);
    Ok(sample)
}

/// Waits until no message has arrived for 50 ms, for at most `max`.
async fn quiesce(stats: &Stats, max: Duration) {
    let deadline = Instant::now() + max;
    while Instant::now() < deadline
        && stats.last_arrival.get().elapsed() < Duration::from_millis(50)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One step of the search: publish at `rate` for the window, wait for the deliveries.
async fn run_step(
    publisher: &mut Publisher,
    stats: &Stats,
    pid: u32,
    scenario: &Fanout,
    readers: u64,
    step: u32,
    rate: f64,
) -> io::Result<Step> {
    stats.received.set(0);
    stats.reads.set(0);
    stats.latencies.borrow_mut().clear();
    stats.step.set(step);
    let mark = CpuMark::now(pid)?;
    let (sent, window) = publisher.publish(stats, step, rate, STEP_WINDOW).await?;
    let expected = sent * readers;
    let drain_until = Instant::now() + scenario.bar() + DRAIN_SLACK;
    while stats.received.get() < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (server_cpu, client_cpu, other_cpu, server_time, client_time) = mark.percent_since(pid)?;
    let received = stats.received.get();
    let reads = stats.reads.get();
    let (p50_ms, p99_ms) = {
        let h = stats.latencies.borrow();
        (h.percentile_ms(50.0), h.percentile_ms(99.0))
    };
    // Later arrivals of this step are not counted.
    stats.step.set(0);
    let share = received as f64 / expected.max(1) as f64;
    let pass = share >= MIN_DELIVERED && p99_ms <= scenario.bar().as_secs_f64() * 1000.0;
    if std::env::var_os("FANOUT_STEPS").is_some() {
        eprintln!("    step {step}: rate {:.0} sent {sent} share {share:.4} p50 {p50_ms:.1} p99 {p99_ms:.1} srv {server_cpu:.0}% cli {client_cpu:.0}% srv/msg {:.0}ns msg/read {:.1} pass {pass}", sent as f64 / window.as_secs_f64(), server_time.as_nanos() as f64 / received.max(1) as f64, received as f64 / reads.max(1) as f64);
    }
    if received < expected {
        quiesce(stats, Duration::from_secs(3)).await;
    }
    Ok(Step {
        rate: sent as f64 / window.as_secs_f64(),
        pass,
        sample: Sample {
            publish_rate: sent as f64 / window.as_secs_f64(),
            delivered_per_s: received as f64 / window.as_secs_f64(),
            delivered_share: share,
            p50_ms,
            p99_ms,
            cpu_ns_per_msg: server_time.as_nanos() as f64 / received.max(1) as f64,
            client_ns_per_msg: client_time.as_nanos() as f64 / received.max(1) as f64,
            per_read: received as f64 / reads.max(1) as f64,
            server_cpu,
            client_cpu,
            other_cpu,
            ..Sample::default()
        },
    })
}

/// Runs one scenario against one fresh server.
fn run_one(
    runtime: &tokio::runtime::Runtime,
    exe: &Path,
    scenario: &Fanout,
    kind: FanoutKind,
    bun: Option<&Path>,
    hint: Option<f64>,
    warmup: Duration,
) -> Result<Sample, String> {
    let server = spawn_server(exe, kind, bun.filter(|_| kind.is_bun()))?;
    let (addr, pid) = (server.addr, server.pid);
    // Connecting, a warm-up and MAX_STEPS steps at their longest, with room to spare.
    let limit = Duration::from_secs(60)
        + warmup
        + (STEP_WINDOW + scenario.bar() + DRAIN_SLACK + Duration::from_secs(3)) * MAX_STEPS as u32;
    let local = LocalSet::new();
    let sample = runtime.block_on(local.run_until(async {
        match tokio::time::timeout(limit, measure(addr, pid, scenario, hint, warmup)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("timed out after {limit:?}")),
        }
    }));
    // The server ends the connections first, so that it, not the load generator, keeps
    // their TIME_WAIT.
    drop(server);
    drop(local);
    sample
}

/// The fan-out part of `bench run`: every selected scenario, every fan-out kind, `rounds`
/// rounds; then one table per scenario.
pub fn run(opts: &Options, scenarios: &[Fanout]) -> Result<(), String> {
    let nofile = sys::raise_nofile_limit().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let most = scenarios.iter().map(|s| s.subscribers).max().unwrap_or(0);
    if most as u64 + 200 > nofile {
        return Err(format!(
            "{most} subscribers need more open files than the limit ({nofile})"
        ));
    }
    if let Some(ports) = local_port_count() {
        if most + 1000 > ports {
            return Err(format!(
                "{most} subscribers need more local ports than net.ipv4.ip_local_port_range has ({ports})"
            ));
        }
    }
    let mut kinds = opts.fanout_kinds.clone();
    let mut bun = None;
    if kinds.iter().any(|k| k.is_bun()) {
        match find_bun() {
            Ok(path) => bun = Some(path),
            Err(e) => {
                println!("bun: not available ({e}): the bun kind is skipped and no ratio to Bun is shown");
                kinds.retain(|k| !k.is_bun());
            }
        }
    }
    if kinds.is_empty() {
        return Err("no fan-out kind to run".to_string());
    }
    if sys::available_cpus() >= 2 {
        sys::pin_to_cpu(CLIENT_CPU).map_err(|e| format!("pinning to CPU {CLIENT_CPU}: {e}"))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;

    println!("fan-out benchmark");
    println!(
        "  {} rounds; kinds: {}; server on CPU {SERVER_CPU}, load generator on CPU {CLIENT_CPU} (current-thread runtime)",
        opts.rounds,
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
    );
    if let Some(bun) = &bun {
        let version = Command::new(bun)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        println!("  bun {version} ({})", bun.display());
    }
    if let Some(load) = sys::load_average() {
        println!("  load average at start: {load:.2}");
    }
    println!();

    let started = Instant::now();
    let mut noisy = 0;
    // `results[scenario][kind][round]`, filled a round at a time from `this_round[scenario][kind]`.
    let mut results: Vec<Vec<Vec<Option<Sample>>>> =
        vec![vec![Vec::with_capacity(opts.rounds); kinds.len()]; scenarios.len()];
    for round in 0..opts.rounds {
        let mut this_round: Vec<Vec<Option<Sample>>> =
            vec![vec![None; kinds.len()]; scenarios.len()];
        let mut order = kinds.clone();
        order.rotate_left(round % kinds.len());
        for (s, scenario) in scenarios.iter().enumerate() {
            for &kind in &order {
                let k = kinds.iter().position(|&x| x == kind).unwrap_or(0);
                // The slow variant starts where the fast one of the same kind ended.
                let hint = scenario.slow.then(|| {
                    scenarios
                        .iter()
                        .position(|f| {
                            !f.slow
                                && f.subscribers == scenario.subscribers
                                && f.size == scenario.size
                        })
                        .and_then(|f| this_round[f][k].as_ref())
                        .map(|fast| fast.publish_rate)
                        .filter(|r| *r > 0.0)
                });
                if crate::run::wait_for_quiet(opts.max_quiet_wait).is_err() {
                    noisy += 1;
                }
                let outcome = run_one(
                    &runtime,
                    &exe,
                    scenario,
                    kind,
                    bun.as_deref(),
                    hint.flatten(),
                    opts.warmup,
                );
                let line = match &outcome {
                    Ok(s) => brief(s),
                    Err(e) => format!("FAILED: {e}"),
                };
                eprintln!(
                    "[{:>6.1}s] round {}/{} {:<22} {:<24} {line}",
                    started.elapsed().as_secs_f64(),
                    round + 1,
                    opts.rounds,
                    scenario.name,
                    kind.name(),
                );
                this_round[s][k] = outcome.ok();
            }
        }
        for (s, by_kind) in this_round.into_iter().enumerate() {
            for (k, sample) in by_kind.into_iter().enumerate() {
                results[s][k].push(sample);
            }
        }
    }
    for (s, scenario) in scenarios.iter().enumerate() {
        let fast = scenarios.iter().position(|f| {
            !f.slow && f.subscribers == scenario.subscribers && f.size == scenario.size
        });
        let fast = fast.filter(|_| scenario.slow).map(|f| &results[f]);
        println!("{}", table(scenario, &kinds, &results[s], fast));
    }
    println!(
        "Fan-out run: {:.0} s; {noisy} runs started with other processes still busy. Each figure is the median over rounds; \
         (x) columns are medians of per-round ratios.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn brief(s: &Sample) -> String {
    format!(
        "pub/s={:.0} deliv/s={} delivered={:.1}% p50={:.1}ms p99={:.1}ms cpu/msg={:.0}ns KB/sub={:.1} rss+={:.1}MB srv={:.0}% cli={:.0}% other={:.0}% cli/msg={:.0}ns msg/read={:.1} steps={}{}",
        s.publish_rate,
        rate(s.delivered_per_s),
        s.delivered_share * 100.0,
        s.p50_ms,
        s.p99_ms,
        s.cpu_ns_per_msg,
        s.kb_per_subscriber,
        s.rss_growth_mb,
        s.server_cpu,
        s.client_cpu,
        s.other_cpu,
        s.client_ns_per_msg,
        s.per_read,
        s.steps,
        if s.client_bound { " CLIENT-BOUND" } else { "" }
    )
}

fn rate(v: f64) -> String {
    if !v.is_finite() {
        "-".to_string()
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// The median over rounds of one figure of one kind.
fn med(samples: &[Option<Sample>], f: fn(&Sample) -> f64) -> f64 {
    median(samples.iter().flatten().map(f).collect())
}

/// The median over rounds of one figure's ratio between two kinds' runs of the same round.
fn ratio(a: &[Option<Sample>], b: &[Option<Sample>], f: fn(&Sample) -> f64) -> String {
    let r = median(
        a.iter()
            .zip(b)
            .filter_map(|(a, b)| Some(f(a.as_ref()?) / f(b.as_ref()?)))
            .collect(),
    );
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        "-".to_string()
    }
}

/// One scenario's table; `fast` is the fast variant's results for a slow scenario.
fn table(
    scenario: &Fanout,
    kinds: &[FanoutKind],
    samples: &[Vec<Option<Sample>>],
    fast: Option<&Vec<Vec<Option<Sample>>>>,
) -> String {
    use std::fmt::Write;
    let bun = kinds.iter().position(|&k| k == FanoutKind::Bun);
    let axum = kinds.iter().position(|&k| k == FanoutKind::AxumBroadcast);
    let mut out = String::new();
    let _ = writeln!(out, "## {}: {}", scenario.name, scenario.describe());
    let mut header = format!(
        "{:<25}{:>8}{:>9}{:>7}{:>7}{:>8}{:>8}{:>7}{:>8}{:>7}{:>7}{:>7}{:>8}{:>5}{:>5}{:>5}",
        "kind",
        "pub/s",
        "deliv/s",
        "xBun",
        "xAxum",
        "p50 ms",
        "p99 ms",
        "xBun",
        "ns/msg",
        "xBun",
        "KB/sub",
        "xBun",
        "RSS+MB",
        "srv%",
        "cli%",
        "oth%"
    );
    if fast.is_some() {
        let _ = write!(header, "{:>12}{:>10}", "deliv/fast", "p99/fast");
    }
    let _ = writeln!(out, "{header}");
    for (k, kind) in kinds.iter().enumerate() {
        let s = &samples[k];
        let vs = |r: Option<usize>, f: fn(&Sample) -> f64| {
            r.map_or("-".to_string(), |r| ratio(s, &samples[r], f))
        };
        let mut row = format!(
            "{:<25}{:>8}{:>9}{:>7}{:>7}{:>8.1}{:>8.1}{:>7}{:>8.0}{:>7}{:>7.1}{:>7}{:>8.1}{:>5.0}{:>5.0}{:>5.0}",
            kind.name(),
            rate(med(s, |x| x.publish_rate)),
            rate(med(s, |x| x.delivered_per_s)),
            vs(bun, |x| x.delivered_per_s),
            vs(axum, |x| x.delivered_per_s),
            med(s, |x| x.p50_ms),
            med(s, |x| x.p99_ms),
            vs(bun, |x| x.p99_ms),
            med(s, |x| x.cpu_ns_per_msg),
            vs(bun, |x| x.cpu_ns_per_msg),
            med(s, |x| x.kb_per_subscriber),
            vs(bun, |x| x.kb_per_subscriber),
            med(s, |x| x.rss_growth_mb),
            med(s, |x| x.server_cpu),
            med(s, |x| x.client_cpu),
            med(s, |x| x.other_cpu),
        );
        if let Some(fast) = fast {
            let _ = write!(
                row,
                "{:>12}{:>10}",
                ratio(s, &fast[k], |x| x.delivered_per_s),
                ratio(s, &fast[k], |x| x.p99_ms)
            );
        }
        let ok = s.iter().flatten().count();
        if ok < s.len() {
            let _ = write!(row, "  [{ok}/{} rounds ok]", s.len());
        }
        let bound = s.iter().flatten().filter(|x| x.client_bound).count();
        if bound > 0 {
            let ceiling = med(s, |x| x.client_ceiling);
            let _ = write!(
                row,
                "  [load generator at its limit in {bound} rounds: {} deliv per CPU second there]",
                rate(ceiling)
            );
        }
        let _ = writeln!(out, "{row}");
    }
    out
}

/// `bench fanout-client-cost [--subscribers N] [--rounds R] [--per-read K] [--size B]`: the
/// load generator's own cost per delivered message, with no server. N subscriber tasks (the
/// ones `bench run` runs) read N sockets on 127.0.0.1 whose other ends a thread of this
/// process writes: each round, K frames of B bytes to every socket in one write each, and
/// the next round once the subscribers counted them all, so a round is one read of K
/// messages per socket. It prints the main thread's CPU time per message (kernel included).
///
/// Under `valgrind --tool=callgrind --separate-threads=yes` at two values of R, the main
/// thread's instructions at R2 minus those at R1, over N x K x (R2 - R1), is the user-space
/// cost of one message at K messages per read, the runtime's wake-up included.
pub fn client_cost(args: &[String]) -> Result<(), String> {
    let (mut subscribers, mut rounds, mut per_read, mut size) = (1000usize, 100u64, 1usize, 20);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse::<usize>()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--subscribers" => subscribers = value.max(1),
            "--rounds" => rounds = value as u64,
            "--per-read" => per_read = value.max(1),
            "--size" => size = value.max(STAMP_LEN),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let nofile = sys::raise_nofile_limit().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    if 2 * subscribers as u64 + 100 > nofile {
        return Err(format!(
            "{subscribers} subscribers need more open files than {nofile}"
        ));
    }
    let mut payload = vec![0u8; size];
    payload[8..12].copy_from_slice(&1u32.to_le_bytes());
    let batch = wire::server_frame(wire::OP_BINARY, &payload).repeat(per_read);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = LocalSet::new();
    let result: io::Result<(Duration, Duration, u64)> = local.block_on(&runtime, async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stats = Rc::new(Stats::new(Instant::now()));
        stats.step.set(1);
        let mut server_ends = Vec::with_capacity(subscribers);
        for _ in 0..subscribers {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (server_end, _) = listener.accept()?;
            server_end.set_nodelay(true)?;
            server_ends.push(server_end);
            let stats = Rc::clone(&stats);
            tokio::task::spawn_local(async move {
                if let Err(e) = subscriber(stream, Vec::new(), stats).await {
                    eprintln!("  (a subscriber stopped: {e})");
                }
            });
        }
        let (go, rounds_rx) = mpsc::channel::<()>();
        let writer = std::thread::spawn(move || -> io::Result<()> {
            use std::io::Write;
            while rounds_rx.recv().is_ok() {
                for end in &mut server_ends {
                    end.write_all(&batch)?;
                }
            }
            Ok(())
        });
        let per_round = (subscribers * per_read) as u64;
        // A first round outside the measure: every task has run once and waits on its socket.
        let mut cpu_start = Duration::ZERO;
        let mut wall_start = Instant::now();
        for round in 0..=rounds {
            if round == 1 {
                cpu_start = sys::thread_cpu_time()?;
                wall_start = Instant::now();
                stats.reads.set(0);
            }
            stats.awaited.set(per_round * (round + 1));
            go.send(()).map_err(io::Error::other)?;
            stats.all_arrived.notified().await;
        }
        let cpu = sys::thread_cpu_time()?.saturating_sub(cpu_start);
        let wall = wall_start.elapsed();
        drop(go);
        writer
            .join()
            .map_err(|_| io::Error::other("the writer thread panicked"))??;
        Ok((cpu, wall, stats.reads.get()))
    });
    let (cpu, wall, reads) = result.map_err(|e| e.to_string())?;
    let messages = rounds * (subscribers * per_read) as u64;
    println!(
        "{subscribers} subscribers, {rounds} rounds of {per_read} messages of {size} B per socket: \
         {messages} messages in {reads} reads ({:.1} per read); main thread CPU {:.0} ns per message \
         ({:.2}M messages per CPU second), {:.2}M messages/s wall",
        messages as f64 / reads.max(1) as f64,
        cpu.as_nanos() as f64 / messages.max(1) as f64,
        messages as f64 / cpu.as_secs_f64().max(1e-9) / 1e6,
        messages as f64 / wall.as_secs_f64().max(1e-9) / 1e6,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_within_two_percent() {
        for us in [0u64, 1, 63, 64, 65, 100, 1000, 12_345, 999_999, 5_000_000] {
            let v = Histogram::value(Histogram::index(us));
            assert!(v >= us, "{us} -> {v}");
            assert!(v as f64 <= us as f64 * 1.02 + 1.0, "{us} -> {v}");
        }
        let mut h = Histogram::new();
        for us in 1..=1000 {
            h.record(us);
        }
        let p50 = h.percentile_ms(50.0);
        let p99 = h.percentile_ms(99.0);
        assert!((0.5..=0.51).contains(&p50), "{p50}");
        assert!((0.99..=1.01).contains(&p99), "{p99}");
    }

    use wire::server_frame;

    #[test]
    fn parser_counts_only_the_current_step_and_answers_pings() {
        let epoch = Instant::now();
        let stats = Stats::new(epoch);
        stats.step.set(7);
        let message = |step: u32, size: usize| {
            let mut p = vec![0u8; size];
            p[8..12].copy_from_slice(&step.to_le_bytes());
            server_frame(wire::OP_BINARY, &p)
        };
        let mut bytes = message(7, 20);
        bytes.extend(message(6, 1024));
        bytes.extend(server_frame(wire::OP_PING, b"hi"));
        bytes.extend(message(7, 1024));
        let mut parser = Parser::default();
        let mut pongs = Vec::new();
        for b in &bytes {
            parser
                .feed(
                    std::slice::from_ref(b),
                    stats.read_now(),
                    &stats,
                    &mut pongs,
                )
                .unwrap();
        }
        assert_eq!(stats.received.get(), 2);
        assert_eq!(pongs, wire::client_frame(wire::OP_PONG, b"hi"));
        assert!(parser
            .feed(
                &server_frame(wire::OP_CLOSE, &[3, 232]),
                stats.read_now(),
                &stats,
                &mut pongs
            )
            .is_err());
    }

    #[test]
    fn parser_counts_the_same_however_the_bytes_are_cut() {
        let stats = Stats::new(Instant::now());
        stats.step.set(3);
        let mut bytes = Vec::new();
        let mut expected = 0;
        for (i, size) in [20usize, 16, 125, 126, 1024, 70_000, 20, 20]
            .into_iter()
            .enumerate()
        {
            let mut p = vec![0u8; size];
            p[8..12].copy_from_slice(&3u32.to_le_bytes());
            bytes.extend(wire::server_frame(wire::OP_BINARY, &p));
            expected += 1;
            if i % 3 == 0 {
                bytes.extend(wire::server_frame(wire::OP_PING, b"p"));
            }
        }
        for cut in (0..bytes.len()).step_by(7) {
            stats.received.set(0);
            let mut parser = Parser::default();
            let mut pongs = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                parser
                    .feed(part, stats.read_now(), &stats, &mut pongs)
                    .unwrap();
            }
            assert_eq!(stats.received.get(), expected, "cut at {cut}");
            assert_eq!(pongs, wire::client_frame(wire::OP_PONG, b"p").repeat(3));
        }
        let mut short = wire::server_frame(wire::OP_BINARY, &[0; 15]);
        short.extend(wire::server_frame(wire::OP_BINARY, &[0; 20]));
        assert!(Parser::default()
            .feed(&short, stats.read_now(), &stats, &mut Vec::new())
            .is_err());
    }

    #[test]
    fn fanout_runs_only_when_named() {
        assert!(scenarios(&[]).is_empty());
        let names: Vec<_> = scenarios(&["fanout-1000-".into()])
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                "fanout-1000-20B",
                "fanout-1000-20B-slow",
                "fanout-1000-1KiB",
                "fanout-1000-1KiB-slow"
            ]
        );
        assert_eq!(scenarios(&["fanout".into()]).len(), 8);
    }
}
