//! Handlers: the async functions that run once per accepted WebSocket.
//!
//! A handler is any `Fn(WebSocket) -> impl Future` that is `Send + Sync + 'static`, closures
//! capturing shared state included. Its future may return `()` or `Result<(), E>` with any
//! error that converts into a [`BoxError`] (a `std::error::Error`, a `String`, an
//! `anyhow::Error`); an error is logged with its whole `source` chain and the socket closed
//! with 1011 (internal error).
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
//! // `?` on any error type; the log shows its sources too ("... : No such file").
//! async fn config(ws: WebSocket) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let text = std::fs::read_to_string("/etc/app.toml")?;
//!     ws.send(text).await?;
//!     Ok(())
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
//! # let _ = WebSocketLayer::new(config);
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::socket::WebSocket;

/// The error a handler may fail with, boxed: its [`source`](StdError::source) chain is kept
/// and logged whole.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// What a handler's future may return: `()`, or `Result<(), E>` with any `E` that converts
/// into a [`BoxError`] (every `std::error::Error + Send + Sync`, `String`, `&str`,
/// `anyhow::Error`, ...).
pub trait HandlerResult: Send + 'static {
    /// `Ok(())`, or the error.
    fn into_result(self) -> Result<(), BoxError>;
}

impl HandlerResult for () {
    fn into_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError> + Send + 'static> HandlerResult for Result<(), E> {
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// A handler's failure as the connection logs it: the error and each of its sources, `: `
/// between them.
pub(crate) struct HandlerError(BoxError);

impl HandlerError {
    pub(crate) fn panicked(message: &str) -> Self {
        HandlerError(format!("handler panicked: {message}").into())
    }
}

impl From<BoxError> for HandlerError {
    fn from(error: BoxError) -> Self {
        HandlerError(error)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

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
    Arc::new(move |ws| Box::pin(handler(ws).map(into_handler_result)))
}

fn into_handler_result<R: HandlerResult>(result: R) -> Result<(), HandlerError> {
    result.into_result().map_err(HandlerError)
}
