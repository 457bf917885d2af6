//! `bench upgrade-cost <kind> --count N`: N WebSocket upgrades in one process, one after the
//! other, with no TCP: each over a `tokio::io::duplex` pipe, with hyper's `http1` server
//! connection (with upgrades) serving an axum `Router`, and a minimal client that sends the
//! handshake, reads the 101, sends a close frame, reads the close reply and waits for
//! the server to end the stream.
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
        Kind::Fastwebsockets => Ok(Router::new().route("/", get(fastwebsockets_handler))),
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
pub fn run(kind: Kind, count: usize) -> Result<(), String> {
    let router = router(kind)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let request = wire::upgrade_request("localhost");
    runtime
        .block_on(async {
            for _ in 0..count {
                one_upgrade(&router, &request).await?;
            }
            // Let the connection tasks of the last upgrade finish.
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
            Ok::<(), io::Error>(())
        })
        .map_err(|e| e.to_string())?;
    println!("{count} upgrades of {kind}");
    Ok(())
}

async fn one_upgrade(router: &Router, request: &[u8]) -> io::Result<()> {
    let (mut client_io, server_io) = tokio::io::duplex(16 * 1024);
    let service = TowerToHyperService::new(router.clone());
    let conn = tokio::spawn(
        http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .with_upgrades(),
    );
    let rest = client::handshake(&mut client_io, request).await?;
    client::close(&mut client_io, &rest).await?;
    drop(client_io);
    conn.await
        .map_err(io::Error::other)?
        .map_err(io::Error::other)
}
