//! Helpers shared by the integration tests: a real server on 127.0.0.1:0, and a raw-frame
//! client that writes exactly the bytes a test wants.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// Serves `app` on a fresh loopback port, with `ConnectInfo<SocketAddr>`.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Bounds a future by [`WAIT`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The close code of a close frame (1005 when it has none).
    pub fn close_code(&self) -> u16 {
        assert_eq!(self.opcode, 0x8, "not a close frame: {self:?}");
        if self.payload.len() >= 2 {
            u16::from_be_bytes([self.payload[0], self.payload[1]])
        } else {
            1005
        }
    }
}

/// A client that speaks WebSocket by hand, byte for byte.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl RawClient {
    /// Connects and completes the handshake; panics unless the answer is 101.
    pub async fn connect(addr: SocketAddr, path: &str) -> RawClient {
        let (client, head) = RawClient::handshake(addr, path, "").await;
        assert!(head.starts_with("HTTP/1.1 101"), "expected 101, got {head}");
        client
    }

    /// Connects with a receive buffer of a few KiB, so that a peer that never reads shows
    /// its backlog in the server's queue instead of in kernel buffers.
    pub async fn connect_small_window(addr: SocketAddr, path: &str) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (client, head) = RawClient::handshake_on(stream, addr, path, "").await;
        assert!(head.starts_with("HTTP/1.1 101"), "expected 101, got {head}");
        client
    }

    /// Sends a handshake with extra header lines (each ending in \r\n); returns the head.
    pub async fn handshake(addr: SocketAddr, path: &str, extra: &str) -> (RawClient, String) {
        let stream = TcpStream::connect(addr).await.unwrap();
        RawClient::handshake_on(stream, addr, path, extra).await
    }

    async fn handshake_on(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        extra: &str,
    ) -> (RawClient, String) {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut client = RawClient {
            stream,
            buf: Vec::new(),
        };
        let head = within("the handshake answer", client.read_head()).await;
        (client, head)
    }

    /// Sends a handshake expected to be refused; returns the status, the head and the body.
    pub async fn refused(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
        let (mut client, head) = RawClient::handshake(addr, path, extra).await;
        let status: u16 = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())
                    .flatten()
            })
            .expect("a content-length on the refusal");
        within("the refusal body", async {
            while client.buf.len() < length {
                client.buf.reserve(4096);
                let n = client.stream.read_buf(&mut client.buf).await.unwrap();
                assert!(n > 0, "connection closed inside the body");
            }
        })
        .await;
        let body = String::from_utf8(client.buf[..length].to_vec()).unwrap();
        (status, head, body)
    }

    async fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end + 4].to_vec()).unwrap();
                self.buf.drain(..end + 4);
                return head;
            }
            self.buf.reserve(4096);
            let n = self.stream.read_buf(&mut self.buf).await.unwrap();
            assert!(n > 0, "connection closed during the handshake");
        }
    }

    /// Writes one frame, masked as a client must.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let bytes = encode_frame(fin, 0, opcode, Some([0x37, 0xfa, 0x21, 0x3d]), payload);
        self.send_raw(&bytes).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // The server may already have closed: a failed write is for the test to notice later.
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next frame, or `None` at EOF (or reset).
    pub async fn read_frame(&mut self) -> Option<ServerFrame> {
        within("a frame from the server", async {
            loop {
                if let Some((frame, used)) = decode_frame(&self.buf) {
                    self.buf.drain(..used);
                    return Some(frame);
                }
                self.buf.reserve(65536);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// Reads frames until a close frame; returns it. Panics at EOF first.
    pub async fn expect_close(&mut self) -> ServerFrame {
        loop {
            match self.read_frame().await {
                Some(frame) if frame.opcode == 0x8 => return frame,
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Waits for the server to end TCP.
    pub async fn expect_eof(&mut self) {
        match self.read_frame().await {
            None => {}
            Some(frame) => panic!("expected EOF, got {frame:?}"),
        }
    }
}

pub fn encode_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![(fin as u8) << 7 | (rsv & 0x7) << 4 | (opcode & 0xf)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len < 65536 {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

pub fn decode_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = (buf[0] >> 4) & 0x7;
    let opcode = buf[0] & 0xf;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let key = if masked {
        if buf.len() < at + 4 {
            return None;
        }
        at += 4;
        Some([buf[at - 4], buf[at - 3], buf[at - 2], buf[at - 1]])
    } else {
        None
    };
    if buf.len() < at + len {
        return None;
    }
    let mut payload = buf[at..at + len].to_vec();
    if let Some(key) = key {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= key[i % 4]);
    }
    Some((
        ServerFrame {
            fin,
            rsv,
            opcode,
            masked,
            payload,
        },
        at + len,
    ))
}

/// A close frame's payload.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// The echo handler the load and hostile-peer tests serve.
pub async fn echo(mut ws: tower_websocket::WebSocket) {
    while let Some(msg) = ws.recv().await {
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// The resident set size of process `pid` (`"self"` for this one), in KiB.
pub fn rss_kib_of(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("a VmRSS line")
}

/// This process's resident set size, in KiB.
pub fn rss_kib() -> u64 {
    rss_kib_of("self")
}

/// xorshift64: random moments, reproducible from a printed seed.
pub struct Rng {
    seed: u64,
    state: u64,
}

impl Rng {
    /// Seeded from the environment variable `var` when it is set (to replay a failed run), from
    /// the clock otherwise; prints `VAR=seed` either way.
    pub fn from_env_or_clock(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        println!("{var}={seed}");
        Rng { seed, state: seed }
    }

    /// The seed it started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % n
    }
}
