//! WebSockets as a tower [`Layer`](tower_layer::Layer).
//!
//! [`WebSocketLayer`] intercepts WebSocket upgrade requests anywhere in a tower or axum stack
//! (`Router::layer`, `route_layer`, `ServiceBuilder`), runs the handshake, does the framing
//! with [fastwebsockets](https://docs.rs/fastwebsockets), and runs your async handler with the
//! whole upgrade request as its environ. Every other request goes to the inner service
//! untouched.
//!
//! ```no_run
//! use axum::{response::Html, routing::get, Router};
//! use tower_websocket::{WebSocket, WebSocketLayer};
//!
//! async fn echo(mut ws: WebSocket) {
//!     while let Some(msg) = ws.recv().await {
//!         if ws.send(msg).await.is_err() {
//!             break;
//!         }
//!     }
//! } // returning closes the socket with 1000
//!
//! #[tokio::main]
//! async fn main() {
//!     let app = Router::new()
//!         .route("/", get(|| async { Html("<h1>hi</h1>") }))
//!         .layer(WebSocketLayer::new(echo));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//!     axum::serve(listener, app).await.unwrap();
//! }
//! ```
//!
//! # Modules
//! - [`layer`]: [`WebSocketLayer`], its settings and their defaults.
//! - [`service`]: [`WebSocketService`], upgrade or pass-through, and its response future.
//! - [`handshake`]: the RFC 6455 opening handshake and [`HandshakeRejection`].
//! - [`socket`]: [`WebSocket`], the handle a handler gets.
//! - [`message`], [`close`]: [`Message`], [`Utf8Bytes`], [`CloseCode`], [`CloseFrame`].
//! - [`origin`], [`protocol`]: the origin policy and subprotocol selection.
//! - `deflate`: permessage-deflate (feature `deflate`, on by default).
//! - `legacy`: the pre-RFC drafts hixie-76 and hixie-75 (feature `hixie76`, off by default).
//! - [`hub`]: topics and broadcast to many sockets; topic history and resume
//!   ([`docs::history`]).
//! - [`handle`]: graceful shutdown and live metrics of a layer's sockets (exported through the
//!   `metrics` facade with the `metrics` feature: the chapter `docs::metrics`).
//! - [`handler`]: what a handler may be and return, extractor handlers included.
//! - [`body`]: the response body type.
//! - [`error`]: [`Error`], what a socket operation can fail with, and [`SendError`], a failed
//!   send with its message.
//!
//! The guide is in [`docs::guide`]; the mapping from Python's `eventlet.websocket` in
//! [`docs::eventlet`].

#![cfg_attr(docsrs, feature(doc_cfg))]

// The HTTP edge: the layer, its service, the handshake and the response body.
pub mod body;
mod config;
pub mod handshake;
pub mod layer;
pub mod service;

// The socket API a handler holds.
pub mod socket;

// The engine: one task per connection.
mod connection;

// The wire format: what fastwebsockets leaves out, added once.
mod wire;

// Extras: the handle on a layer's sockets, topics, legacy drafts, the test client.
pub mod handle;
pub mod hub;
#[cfg(feature = "hixie76")]
pub mod legacy;
#[cfg(feature = "testing")]
pub mod testing;

// The entry points of the fuzz targets in fuzz/ and their corpus replay (tests/fuzz_corpus.rs).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

// The public paths of the modules that live in a folder.
pub use handshake::{origin, protocol};
pub use socket::{close, error, handler, message};
#[cfg(feature = "deflate")]
pub use wire::deflate;

pub use close::{CloseCode, CloseFrame};
#[cfg(feature = "deflate")]
pub use deflate::DeflateConfig;
pub use error::{Error, SendError};
pub use handle::{Metrics, ShutdownReport, WebSocketHandle};
pub use handshake::{keep::KeepHeaders, HandshakeRejection, Refusal};
pub use hub::{Hub, HubBackend, Subscription};
pub use layer::WebSocketLayer;
pub use message::{Message, Utf8Bytes};
pub use origin::OriginPolicy;
pub use protocol::Subprotocols;
pub use service::WebSocketService;
pub use socket::{QueuePolicy, WebSocket, WebSocketReceiver, WebSocketSender};

/// Long-form documentation, compiled and tested with the crate.
pub mod docs {
    #[doc = include_str!("../docs/guide.md")]
    pub mod guide {}
    #[doc = include_str!("../docs/eventlet.md")]
    pub mod eventlet {}
    #[doc = include_str!("../docs/limits.md")]
    pub mod limits {}
    #[doc = include_str!("../docs/concurrency.md")]
    pub mod concurrency {}
    #[doc = include_str!("../docs/history.md")]
    #[cfg_attr(feature = "redis", doc = include_str!("../docs/history-redis.md"))]
    pub mod history {}
    #[doc = include_str!("../docs/serving.md")]
    pub mod serving {}
    #[doc = include_str!("../docs/security.md")]
    pub mod security {}
    #[cfg(feature = "deflate")]
    #[doc = include_str!("../docs/compression.md")]
    pub mod compression {}
    #[cfg(feature = "hixie76")]
    #[doc = include_str!("../docs/legacy.md")]
    pub mod legacy {}
    #[cfg(feature = "testing")]
    #[doc = include_str!("../docs/testing.md")]
    pub mod testing {}
    #[cfg(feature = "metrics")]
    #[doc = include_str!("../docs/metrics.md")]
    pub mod metrics {}
    #[cfg(feature = "redis")]
    #[doc = include_str!("../docs/scale-out.md")]
    pub mod scale_out {}
}
