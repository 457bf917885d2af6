//! `bench upgrade-cost <kind> --count N`: N WebSocket upgrades in one process, one after the
//! other, with no TCP: each over a `tokio::io::duplex` pipe, with hyper's `http1` server
//! connection (with upgrades) serving an axum `Router`, and a minimal client that sends the
//! handshake, reads the 101, sends a close frame, reads the close reply and waits for
//! the server to end the stream.
//!
//! With `--messages M`, each connection echoes M binary messages of 20 bytes, one at a time,
//! before it closes: run with one upgrade and two values of M, the same difference gives the
//! instructions per echoed message.
//!
//! Run under `valgrind --tool=callgrind` twice with different counts (see `bench/callgrind.sh`),
//! the difference of the total instruction counts divided by the difference of the counts is
//! the instructions per upgrade, with the process's start-up and tear-down cancelled out.
//!
//! - `layer`: this crate's layer around the Router (as `bench server layer`).
//! - `fastwebsockets`: a Router whose `GET /` handler calls `fastwebsockets::upgrade::upgrade`
//!   and spawns fastwebsockets' example echo loop: what the layer replaces.
//! - `axum-ws`: axum's `WebSocketUpgrade` (as `bench server axum-ws`).

use std::io;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;

use crate::client;
use crate::servers::{self, Kind};
use crate::wire;

/// The router each kind serves.
fn router(kind: Kind) -> Result<Router, String> {
    match kind {
        Kind::Layer => Ok(servers::layer_router()),
        Kind::Fastwebsockets | Kind::FastwebsocketsAa => {
            Ok(Router::new().route("/", get(fastwebsockets_handler)))
        }
        Kind::AxumWs => Ok(servers::axum_ws_router()),
        Kind::Tcp => {
            Err("upgrade-cost needs a WebSocket kind: layer, fastwebsockets or axum-ws".into())
        }
    }
}

async fn fastwebsockets_handler(mut req: Request) -> Response {
    match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok((response, fut)) => {
            tokio::spawn(async move {
                let _ = tokio::task::unconstrained(servers::fastwebsockets_echo(fut)).await;
            });
            response.map(axum::body::Body::new)
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// Runs `count` upgrades of `kind` on a current-thread runtime.
pub fn run(kind: Kind, count: usize, messages: usize) -> Result<(), String> {
    let router = router(kind)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let request = wire::upgrade_request("localhost");
    let message = wire::client_frame(wire::OP_BINARY, &[7u8; 20]);
    runtime
        .block_on(async {
            for _ in 0..count {
                one_upgrade(&router, &request, &message, messages).await?;
            }
            // Let the connection tasks of the last upgrade finish.
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
            Ok::<(), io::Error>(())
        })
        .map_err(|e| e.to_string())?;
    println!("{count} upgrades of {kind}, {messages} messages each");
    Ok(())
}

async fn one_upgrade(
    router: &Router,
    request: &[u8],
    message: &[u8],
    messages: usize,
) -> io::Result<()> {
    let (mut client_io, server_io) = tokio::io::duplex(16 * 1024);
    let service = TowerToHyperService::new(router.clone());
    let conn = tokio::spawn(
        http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .with_upgrades(),
    );
    let mut rest = client::handshake(&mut client_io, request).await?;
    if messages > 0 {
        if !rest.is_empty() {
            return Err(io::Error::other("data before the first message"));
        }
        echo(&mut client_io, message, messages).await?;
        rest.clear();
    }
    client::close(&mut client_io, &rest).await?;
    drop(client_io);
    conn.await
        .map_err(io::Error::other)?
        .map_err(io::Error::other)
}

/// Sends `message` and waits for its echo (a 20-byte binary frame), `count` times.
async fn echo<S>(stream: &mut S, message: &[u8], count: usize) -> io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut counter = wire::FrameCounter::default();
    let mut buf = [0u8; 256];
    for _ in 0..count {
        stream.write_all(message).await?;
        let mut done = 0;
        while done == 0 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::other("EOF before the echo"));
            }
            done = counter
                .feed(&buf[..n], wire::OP_BINARY, Some(20))
                .map_err(io::Error::other)?;
        }
    }
    Ok(())
}
