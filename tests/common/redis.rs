//! Real Redis servers and chat example processes for tests/redis.rs: servers come from
//! `scripts/redis.sh` (which installs redis-server when missing) and are stopped by pid.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script(args: &[&str]) -> String {
    let output = Command::new("bash")
        .arg(root().join("scripts/redis.sh"))
        .args(args)
        .output()
        .expect("running scripts/redis.sh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "scripts/redis.sh {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Reads `port=P pid=N` lines.
fn parse_servers(out: &str) -> Vec<(u16, u32)> {
    out.lines()
        .filter_map(|line| {
            let mut port = None;
            let mut pid = None;
            for field in line.split_whitespace() {
                if let Some(v) = field.strip_prefix("port=") {
                    port = v.parse().ok();
                } else if let Some(v) = field.strip_prefix("pid=") {
                    pid = v.parse().ok();
                }
            }
            Some((port?, pid?))
        })
        .collect()
}

fn work_dir(name: &str) -> PathBuf {
    let dir = root()
        .join("target/redis-tests")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the Redis work directory");
    dir
}

/// One redis-server on a free loopback port, stopped when dropped.
pub(crate) struct Redis {
    pub(crate) port: u16,
    pid: Option<u32>,
    dir: PathBuf,
}

impl Redis {
    pub(crate) fn start(name: &str) -> Redis {
        let dir = work_dir(name);
        let out = script(&["start", dir.to_str().expect("UTF-8 path")]);
        let (port, pid) = parse_servers(&out)[0];
        Redis {
            port,
            pid: Some(pid),
            dir,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub(crate) fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            // Until the port is free again.
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                assert!(Instant::now() < deadline, "redis-server still answers");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the server.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.pid.expect("a running server").to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
    }

    /// Starts it again on the same port.
    pub(crate) fn restart(&mut self) {
        assert!(self.pid.is_none(), "kill it first");
        let port = self.port.to_string();
        let out = script(&["start", self.dir.to_str().expect("UTF-8 path"), &port]);
        self.pid = Some(parse_servers(&out)[0].1);
    }

    /// `redis-cli -p PORT args...`, its output.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// How many connections are subscribed to `channel`.
    pub(crate) fn subscribers(&self, channel: &str) -> u64 {
        let out = self.cli(&["PUBSUB", "NUMSUB", channel]);
        out.lines()
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            script(&["stop", &pid.to_string()]);
        }
    }
}

pub(crate) fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("running redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Three redis-servers joined in a cluster, stopped when dropped.
pub(crate) struct Cluster {
    pub(crate) ports: Vec<u16>,
    pids: Vec<u32>,
}

impl Cluster {
    pub(crate) fn start(name: &str) -> Cluster {
        let dir = work_dir(name);
        let out = script(&["cluster", dir.to_str().expect("UTF-8 path")]);
        let servers = parse_servers(&out);
        assert_eq!(servers.len(), 3, "{out}");
        Cluster {
            ports: servers.iter().map(|s| s.0).collect(),
            pids: servers.iter().map(|s| s.1).collect(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pids: Vec<String> = self.pids.iter().map(u32::to_string).collect();
        let mut args = vec!["stop"];
        args.extend(pids.iter().map(String::as_str));
        script(&args);
    }
}

/// The chat example as a process of its own, killed when dropped; its log lines are kept.
pub(crate) struct ChatNode {
    pub(crate) port: u16,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl ChatNode {
    pub(crate) fn start(binary: &Path, redis_url: &str) -> ChatNode {
        let port = free_port();
        let mut child = Command::new(binary)
            .env("ADDR", format!("127.0.0.1:{port}"))
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the chat example");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    log.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            });
        }
        let node = ChatNode { port, child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the chat example did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    /// Log lines that contain `needle`.
    pub(crate) fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// `GET /redis`: the backend's state and counters.
    pub(crate) async fn redis_state(&self) -> Value {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connecting for GET /redis");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /redis HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("writing GET /redis");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("reading /redis");
        let body = response.split("\r\n\r\n").nth(1).expect("a response body");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
    }

    /// A participant that has joined with `name` (its welcome read).
    pub(crate) async fn join(&self, name: &str) -> Participant {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/chat", self.port))
                .await
                .expect("WebSocket connect to the chat example");
        let mut p = Participant { ws };
        p.send(json!({"type": "join", "name": name})).await;
        let welcome = p.next_of(&["welcome"]).await;
        assert_eq!(welcome["name"], name);
        p
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChatNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One chat client over a real WebSocket (tokio-tungstenite).
pub(crate) struct Participant {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Participant {
    pub(crate) async fn send(&mut self, value: Value) {
        self.ws
            .send(WsMessage::text(value.to_string()))
            .await
            .expect("sending to the chat");
    }

    pub(crate) async fn say(&mut self, text: &str) {
        self.send(json!({"type": "say", "text": text})).await;
    }

    /// The next message whose type is one of `types`, others skipped; panics after 10 s.
    pub(crate) async fn next_of(&mut self, types: &[&str]) -> Value {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let msg = self
                    .ws
                    .next()
                    .await
                    .expect("the chat closed")
                    .expect("a WebSocket error");
                if let WsMessage::Text(text) = msg {
                    let value: Value = serde_json::from_str(&text).expect("JSON from the chat");
                    if types.iter().any(|t| value["type"] == *t) {
                        return value;
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {types:?} message within 10 s"))
    }

    /// Every chat line (`type` "message") that arrives within `wait`, as `name: text`.
    pub(crate) async fn lines_for(&mut self, wait: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let WsMessage::Text(text) = msg {
                let value: Value = serde_json::from_str(&text).expect("JSON from the chat");
                if value["type"] == "message" {
                    lines.push(format!(
                        "{}: {}",
                        value["name"].as_str().unwrap_or("?"),
                        value["text"].as_str().unwrap_or("?")
                    ));
                }
            }
        }
        lines
    }

    /// The next chat line, as `name: text`.
    pub(crate) async fn next_line(&mut self) -> String {
        let value = self.next_of(&["message"]).await;
        format!(
            "{}: {}",
            value["name"].as_str().unwrap_or("?"),
            value["text"].as_str().unwrap_or("?")
        )
    }
}

/// Waits up to `limit` for `check`, polling; returns how long it took.
pub(crate) async fn eventually(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}
