//! Handlers: the async functions that run once per accepted WebSocket.
//!
//! A handler is any `Fn(WebSocket) -> impl Future` that is `Send + Sync + 'static`, closures
//! capturing shared state included. Its future may return `()` or `Result<(), E>` with
//! `E: Display`; an error is logged and the socket closed with 1011 (internal error).
//!
//! ```
//! use std::sync::Arc;
//! use tower_websocket::{WebSocket, WebSocketLayer};
//!
//! // Returning `()`: the socket closes with 1000 when the handler returns.
//! async fn hello(ws: WebSocket) {
//!     let _ = ws.send("hello world").await;
//! }
//!
//! // Returning a `Result`: an `Err` closes with 1011 and is logged.
//! async fn strict(mut ws: WebSocket) -> Result<(), String> {
//!     match ws.recv().await {
//!         Some(msg) if msg.is_text() => Ok(()),
//!         _ => Err("expected a text message".to_string()),
//!     }
//! }
//!
//! // A closure capturing state.
//! let greeting = Arc::new(String::from("hi"));
//! let with_state = WebSocketLayer::new(move |ws: WebSocket| {
//!     let greeting = greeting.clone();
//!     async move {
//!         let _ = ws.send(greeting.as_str()).await;
//!     }
//! });
//! # let _ = (WebSocketLayer::new(hello), WebSocketLayer::new(strict), with_state);
//! ```

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::socket::WebSocket;

/// What a handler's future may return: `()` or `Result<(), E>` with `E: Display`.
pub trait HandlerResult: Send + 'static {
    /// `Ok(())`, or the error's message.
    fn into_result(self) -> Result<(), String>;
}

impl HandlerResult for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display + Send + 'static> HandlerResult for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A handler boxed once, when the layer is built; shared by every connection.
pub(crate) type BoxHandler = Arc<dyn Fn(WebSocket) -> HandlerFuture + Send + Sync>;

pub(crate) fn boxed<H, Fut>(handler: H) -> BoxHandler
where
    H: Fn(WebSocket) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerResult,
{
    // `map`, not an `async` block: a future moved into an async block and awaited there is
    // stored twice in the block's state, which doubled every connection's handler box.
    Arc::new(move |ws| Box::pin(handler(ws).map(HandlerResult::into_result)))
}
