//! The echo servers, one kind per process (`bench server <kind>`), each on a tokio runtime
//! pinned to one CPU, with `TCP_NODELAY` on every accepted socket. The runtime is either
//! current-thread or, as `#[tokio::main]` builds it on a 2-core machine, multi-thread with two
//! workers (see [`Flavour`]); both workers share the one CPU.
//!
//! - `layer`: this crate's `WebSocketLayer` around an axum `Router`, with its defaults,
//!   echoing every message, served by `axum::serve`.
//! - `fastwebsockets`: raw fastwebsockets + hyper, as fastwebsockets' `echo_server` example
//!   does it (hyper `http1` with upgrades, `upgrade::upgrade`, a `FragmentCollector`, the
//!   connection task `unconstrained`), minus its `eprintln!` per connection error.
//! - `fastwebsockets-aa`: the same server, started as a kind of its own so that a run can
//!   measure the reference against itself (A/A) and say how far two runs of one server differ.
//! - `axum-ws`: axum's built-in `extract::ws::WebSocketUpgrade` (tungstenite), served by
//!   `axum::serve`.
//! - `tcp`: the ceiling. It answers the opening handshake by hand (reads the head, computes
//!   the accept key, writes a fixed 101), then echoes bytes unchanged: the client's masked
//!   frames come back masked, which the load generator accepts (see [`crate::wire`]).

use std::io;
use std::net::SocketAddr;

use axum::extract::ws::{Message as AxumMessage, WebSocket as AxumSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use fastwebsockets::{upgrade, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_websocket::{WebSocket, WebSocketLayer};

use crate::wire;

/// A server implementation under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// This crate's layer inside an axum `Router`.
    Layer,
    /// Raw fastwebsockets with hyper: the reference for every ratio.
    Fastwebsockets,
    /// The same server as `Fastwebsockets`, run separately: its ratio to the reference is the
    /// run's noise.
    FastwebsocketsAa,
    /// axum's built-in WebSocket support.
    AxumWs,
    /// Raw TCP echo: the ceiling.
    Tcp,
}

impl Kind {
    /// Every kind, in the order the first round runs them.
    pub const ALL: [Kind; 5] = [
        Kind::Layer,
        Kind::Fastwebsockets,
        Kind::AxumWs,
        Kind::Tcp,
        Kind::FastwebsocketsAa,
    ];
}

crate::process::named_enum!(Kind, "server kind", {
    Layer => "layer",
    Fastwebsockets => "fastwebsockets",
    FastwebsocketsAa => "fastwebsockets-aa",
    AxumWs => "axum-ws",
    Tcp => "tcp",
});

/// The server's tokio runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// A current-thread runtime: every task on the thread that runs the server.
    Current,
    /// A multi-thread runtime with two workers: what `#[tokio::main]` builds on a 2-core
    /// machine. Pinned like the rest of the process, both workers share one CPU, so the
    /// server still has one core; what this adds is work stealing and wake-ups across threads.
    Multi,
}

impl Flavour {
    /// Both flavours, in the order a round runs them.
    pub const ALL: [Flavour; 2] = [Flavour::Current, Flavour::Multi];

    /// Worker threads of the multi-thread flavour.
    pub const MULTI_WORKERS: usize = 2;

    /// What the name means, for headings.
    pub fn describe(self) -> String {
        match self {
            Flavour::Current => "current-thread runtime".to_string(),
            Flavour::Multi => format!(
                "multi-thread runtime, {} workers on one CPU",
                Flavour::MULTI_WORKERS
            ),
        }
    }

    /// Builds the runtime.
    pub fn runtime(self) -> io::Result<tokio::runtime::Runtime> {
        match self {
            Flavour::Current => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Flavour::Multi => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(Flavour::MULTI_WORKERS)
                .enable_all()
                .build(),
        }
    }
}

crate::process::named_enum!(Flavour, "runtime", {
    Current => "current",
    Multi => "multi",
});

/// Runs one server until killed: pins it (before the runtime starts, so that every thread the
/// runtime creates inherits the pinning), binds, prints `READY pid=<pid> addr=<addr>`.
pub fn serve(kind: Kind, addr: SocketAddr, cpu: Option<usize>, flavour: Flavour) -> io::Result<()> {
    if let Some(cpu) = cpu {
        crate::sys::pin_to_cpu(cpu)?;
    }
    let runtime = flavour.runtime()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(addr).await?;
        println!(
            "READY pid={} addr={}",
            std::process::id(),
            listener.local_addr()?
        );
        match kind {
            Kind::Layer => serve_axum(listener, layer_router()).await,
            Kind::AxumWs => serve_axum(listener, axum_ws_router()).await,
            Kind::Fastwebsockets | Kind::FastwebsocketsAa => serve_fastwebsockets(listener).await,
            Kind::Tcp => serve_tcp(listener).await,
        }
    })
}

async fn serve_axum(listener: TcpListener, app: Router) -> io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

/// The echo handler of this crate's README.
pub async fn layer_echo(mut ws: WebSocket) {
    while let Some(msg) = ws.recv().await {
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// `layer`: a Router with a plain `GET /`, wrapped in the layer with its defaults: the layer
/// takes the upgrade requests to `/`.
pub fn layer_router() -> Router {
    Router::new()
        .route("/", get(|| async { "not a WebSocket" }))
        .layer(WebSocketLayer::new(layer_echo))
}

/// `axum-ws`: axum's own upgrade extractor at `/`.
pub fn axum_ws_router() -> Router {
    Router::new().route("/", get(axum_ws_handler))
}

async fn axum_ws_handler(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(axum_ws_echo)
}

async fn axum_ws_echo(mut socket: AxumSocket) {
    // Keep reading after a Close: the next read flushes tungstenite's close reply, then ends.
    while let Some(Ok(msg)) = socket.recv().await {
        if matches!(msg, AxumMessage::Binary(_) | AxumMessage::Text(_))
            && socket.send(msg).await.is_err()
        {
            break;
        }
    }
}

/// fastwebsockets' example connection handler.
pub async fn fastwebsockets_echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fastwebsockets::FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => {
                ws.write_frame(frame).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

async fn fastwebsockets_upgrade(
    mut req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::task::spawn(async move {
        let _ = tokio::task::unconstrained(fastwebsockets_echo(fut)).await;
    });
    Ok(response)
}

async fn serve_fastwebsockets(listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = http1::Builder::new()
                .serve_connection(io, service_fn(fastwebsockets_upgrade))
                .with_upgrades();
            let _ = conn.await;
        });
    }
}

async fn serve_tcp(listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = tcp_echo(stream).await;
        });
    }
}

/// The tcp server's echo buffer: room for a whole 64 KiB message frame in one read.
const TCP_BUFFER: usize = 128 * 1024;

/// Answers the opening handshake with the least work, then echoes bytes. The echo buffer is
/// allocated when the first bytes after the handshake arrive, so that an idle connection
/// holds only its socket and its task. A chunk that is exactly the client's close frame is
/// echoed and then the server ends TCP, first, as a WebSocket server does.
async fn tcp_echo(mut stream: TcpStream) -> io::Result<()> {
    let mut head = vec![0u8; 2048];
    let mut filled = 0;
    let end = loop {
        let n = stream.read(&mut head[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        if let Some(end) = wire::head_end(&head[..filled]) {
            break end;
        }
        if filled == head.len() {
            return Err(io::Error::other("request head too long"));
        }
    };
    let key = std::str::from_utf8(&head[..end])
        .ok()
        .and_then(|head| {
            head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_string())
            })
        })
        .ok_or_else(|| io::Error::other("no Sec-WebSocket-Key"))?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        wire::accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    if filled > end {
        stream.write_all(&head[end..filled]).await?;
    }
    drop(head);
    stream.readable().await?;
    let mut buf = vec![0u8; TCP_BUFFER];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
        if buf[..n] == wire::CLOSE_FRAME {
            return stream.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs the calling thread may run on.
    fn affinity() -> Vec<usize> {
        // SAFETY: `set` is a plain bit set on the stack that sched_getaffinity fills.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .collect()
        }
    }

    #[test]
    fn multi_flavour_runs_two_workers_on_the_pinned_cpu() {
        // A thread of its own, so that pinning it leaves the test harness alone.
        let cpus = std::thread::spawn(|| {
            crate::sys::pin_to_cpu(0).expect("pin to CPU 0");
            let runtime = Flavour::Multi.runtime().expect("a multi-thread runtime");
            runtime.block_on(async {
                assert_eq!(tokio::runtime::Handle::current().metrics().num_workers(), 2);
                let mut tasks = Vec::new();
                for _ in 0..8 {
                    tasks.push(tokio::spawn(async { affinity() }));
                }
                let mut cpus = Vec::new();
                for task in tasks {
                    cpus.push(task.await.expect("the task ran"));
                }
                cpus
            })
        })
        .join()
        .expect("the test thread");
        assert!(cpus.iter().all(|c| c == &[0]), "{cpus:?}");
    }

    #[test]
    fn runtime_names_parse_back() {
        for flavour in Flavour::ALL {
            assert_eq!(flavour.name().parse::<Flavour>(), Ok(flavour));
        }
        assert!("both".parse::<Flavour>().is_err());
        assert_eq!(
            "fastwebsockets-aa".parse::<Kind>(),
            Ok(Kind::FastwebsocketsAa)
        );
    }
}
