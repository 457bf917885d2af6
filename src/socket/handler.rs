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
    // `map`, not an `async` block, for the reason in `connection::run`'s docs.
    Arc::new(move |ws| Box::pin(handler(ws).map(into_handler_result)))
}

fn into_handler_result<R: HandlerResult>(result: R) -> Result<(), HandlerError> {
    result.into_result().map_err(HandlerError)
}

/// What a handler with extractors starts its connection with, once they have run.
#[cfg(feature = "axum")]
type Start = Box<dyn FnOnce(WebSocket) -> HandlerFuture + Send>;

/// Runs the extractors of a handler on the upgrade request before the `101`: the request
/// comes back (extractors may change it), with the handler ready to start or the response
/// of the extractor that refused.
#[cfg(feature = "axum")]
pub(crate) type Prepare = Pin<
    Box<
        dyn Future<
                Output = (
                    http::request::Parts,
                    Result<Start, axum::response::Response>,
                ),
            > + Send,
    >,
>;

/// A handler with extractors, boxed once with its state when the layer is built.
#[cfg(feature = "axum")]
pub(crate) type BoxPrepare = Arc<dyn Fn(http::request::Parts) -> Prepare + Send + Sync>;

/// A handler that takes axum extractors after the socket, as an axum handler does:
/// `async fn(WebSocket, E1, ..., En)` for up to 12 extractors, each
/// [`FromRequestParts<S>`](axum::extract::FromRequestParts) (`State<T>` with `T: FromRef<S>`,
/// `Path`, `Query`, `Extension`, `TypedHeader`, your own). See
/// [`WebSocketLayer::with_state`](crate::WebSocketLayer::with_state).
///
/// The extractors run on the upgrade request before the `101`: one that refuses answers the
/// handshake with its rejection (a `400` for a `Path` that does not parse, say), as it would
/// for an axum handler, and no socket is opened.
#[cfg(feature = "axum")]
pub trait ExtractHandler<T, S>: Clone + Send + Sync + 'static {
    /// Runs the extractors on `parts`, then readies the handler.
    #[doc(hidden)]
    fn prepare(self, parts: http::request::Parts, state: Arc<S>) -> sealed::Preparing;
}

/// Names a user cannot spell, so that only this crate implements [`ExtractHandler`].
#[cfg(feature = "axum")]
mod sealed {
    /// The future of [`ExtractHandler::prepare`](super::ExtractHandler::prepare).
    #[allow(unreachable_pub)]
    pub struct Preparing(pub(crate) super::Prepare);
}

#[cfg(feature = "axum")]
macro_rules! impl_extract_handler {
    ($($extractor:ident),*) => {
        #[allow(non_snake_case, unused_mut, unused_variables)]
        impl<F, Fut, S, $($extractor,)*> ExtractHandler<($($extractor,)*), S> for F
        where
            F: Fn(WebSocket, $($extractor,)*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future + Send + 'static,
            Fut::Output: HandlerResult,
            S: Send + Sync + 'static,
            $($extractor: axum::extract::FromRequestParts<S> + Send + 'static,)*
        {
            fn prepare(self, mut parts: http::request::Parts, state: Arc<S>) -> sealed::Preparing {
                sealed::Preparing(Box::pin(async move {
                    $(
                        let $extractor = match <$extractor as axum::extract::FromRequestParts<S>>::from_request_parts(&mut parts, &state).await {
                            Ok(value) => value,
                            Err(rejection) => {
                                let response = axum::response::IntoResponse::into_response(rejection);
                                return (parts, Err(response));
                            }
                        };
                    )*
                    let start: Start = Box::new(move |ws| {
                        Box::pin(self(ws, $($extractor,)*).map(into_handler_result))
                    });
                    (parts, Ok(start))
                }))
            }
        }
    };
}

#[cfg(feature = "axum")]
mod extract_impls {
    use super::*;

    impl_extract_handler!();
    impl_extract_handler!(E1);
    impl_extract_handler!(E1, E2);
    impl_extract_handler!(E1, E2, E3);
    impl_extract_handler!(E1, E2, E3, E4);
    impl_extract_handler!(E1, E2, E3, E4, E5);
    impl_extract_handler!(E1, E2, E3, E4, E5, E6);
    impl_extract_handler!(E1, E2, E3, E4, E5, E6, E7);
    impl_extract_handler!(E1, E2, E3, E4, E5, E6, E7, E8);
    impl_extract_handler!(E1, E2, E3, E4, E5, E6, E7, E8, E9);
    impl_extract_handler!(E1, E2, E3, E4, E5, E6, E7, E8, E9, E10);
    impl_extract_handler!(E1, E2, E3, E4, E5, E6, E7, E8, E9, E10, E11);
    impl_extract_handler!(E1, E2, E3, E4, E5, E6, E7, E8, E9, E10, E11, E12);
}

/// The handler an extractor handler starts with, carried from the handshake to the
/// connection in the request's extensions: the connection task starts every handler the same
/// way, from the socket alone.
#[cfg(feature = "axum")]
#[derive(Clone)]
pub(crate) struct Prepared(Arc<std::sync::Mutex<Option<Start>>>);

#[cfg(feature = "axum")]
impl Prepared {
    pub(crate) fn new(start: Start) -> Self {
        Prepared(Arc::new(std::sync::Mutex::new(Some(start))))
    }
}

/// The layer's handler for extractor handlers: starts what the handshake prepared.
#[cfg(feature = "axum")]
pub(crate) fn prepared() -> BoxHandler {
    Arc::new(|ws: WebSocket| {
        let start = ws.extension::<Prepared>().and_then(|prepared| {
            prepared
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        });
        match start {
            Some(start) => start(ws),
            None => Box::pin(std::future::ready(Err(HandlerError(
                "the handler was not prepared by the handshake".into(),
            )))),
        }
    })
}

/// Boxes an extractor handler with its state, once, when the layer is built.
#[cfg(feature = "axum")]
pub(crate) fn boxed_prepare<H, T, S>(state: S, handler: H) -> BoxPrepare
where
    H: ExtractHandler<T, S>,
    S: Send + Sync + 'static,
{
    let state = Arc::new(state);
    Arc::new(move |parts| handler.clone().prepare(parts, Arc::clone(&state)).0)
}
