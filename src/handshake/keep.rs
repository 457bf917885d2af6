//! Which headers of the upgrade request a socket keeps in its environ for its whole life.
//!
//! Every check of the handshake (the RFC's rules, the origin policy, the subprotocol, the
//! `before_upgrade` hook, a handler's extractors) sees the whole request. What the socket keeps
//! afterwards, as [`WebSocket::headers`](crate::WebSocket::headers),
//! [`origin`](crate::WebSocket::origin) and [`environ`](crate::WebSocket::environ), is
//! [`KeepHeaders::all`] by default: eventlet's `environ`, the whole request.
//!
//! That costs memory for as long as the socket is open: hyper's `HeaderMap` takes 104 bytes
//! per slot and has three quarters of a power of two of them (6 for five headers, 24 for 13),
//! and the values are copied out of the connection's read buffer. Five headers (a bare
//! client's handshake) hold about 700 bytes; a browser's dozen or so 2.6 KB, and more with
//! its cookies. With many idle sockets, keep only what the handler reads:
//!
//! ```
//! use http::header;
//! use tower_websocket::{KeepHeaders, WebSocket, WebSocketLayer};
//!
//! async fn handler(ws: WebSocket) {
//!     // The user agent was kept; every other header is gone by now.
//!     let agent = ws.headers().get(header::USER_AGENT).cloned();
//!     let _ = ws.send(format!("{agent:?}")).await;
//! }
//!
//! // Keep only these two (and `origin()` still answers, as `Origin` is one of them).
//! let layer = WebSocketLayer::new(handler)
//!     .keep_headers(KeepHeaders::only([header::USER_AGENT, header::ORIGIN]));
//!
//! // Keep none: the path, the query, the extensions and the subprotocol stay.
//! let layer = WebSocketLayer::new(|_ws: WebSocket| async {}).keep_headers(KeepHeaders::none());
//! # let _ = layer;
//! ```
//!
//! Put what a handler needs from a dropped header into an extension instead, from the
//! `before_upgrade` hook or a middleware before the layer: an extension holds only what it
//! is.

use std::fmt;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName};

/// Which headers of the upgrade request a socket keeps; see the [module docs](self).
///
/// Default: [`KeepHeaders::all`].
#[derive(Clone, Default)]
pub struct KeepHeaders(Keep);

#[derive(Clone, Default)]
enum Keep {
    #[default]
    All,
    /// These names, every value of each; none when empty.
    Only(Arc<[HeaderName]>),
}

impl KeepHeaders {
    /// Every header, as the request came (the default).
    pub fn all() -> Self {
        KeepHeaders(Keep::All)
    }

    /// No header: the socket's `headers()` is empty and `origin()` is `None`.
    pub fn none() -> Self {
        KeepHeaders(Keep::Only(Arc::from([])))
    }

    /// Only the headers of these names, with every value each had.
    pub fn only<I>(names: I) -> Self
    where
        I: IntoIterator<Item = HeaderName>,
    {
        let mut unique: Vec<HeaderName> = Vec::new();
        for name in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        KeepHeaders(Keep::Only(unique.into()))
    }

    /// Leaves in `headers` only what is kept, in a map no larger than that needs.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        let Keep::Only(names) = &self.0 else {
            return;
        };
        let kept: usize = names
            .iter()
            .map(|n| headers.get_all(n).iter().count())
            .sum();
        if kept == headers.len() {
            return;
        }
        // An empty map holds no allocation; one with room for `kept` holds no more.
        let mut map = if kept == 0 {
            HeaderMap::new()
        } else {
            HeaderMap::with_capacity(kept)
        };
        for name in names.iter() {
            for value in headers.get_all(name) {
                map.append(name.clone(), value.clone());
            }
        }
        *headers = map;
    }
}

impl fmt::Debug for KeepHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Keep::All => f.write_str("KeepHeaders::all()"),
            Keep::Only(names) => f
                .debug_tuple("KeepHeaders::only")
                .field(&names.iter().map(HeaderName::as_str).collect::<Vec<_>>())
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{self, HeaderValue};

    fn request_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.com"));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://a.example"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static("test"));
        headers
    }

    #[test]
    fn all_keeps_the_map_as_it_is() {
        let mut headers = request_headers();
        KeepHeaders::all().apply(&mut headers);
        assert_eq!(headers, request_headers());
    }

    #[test]
    fn none_leaves_an_empty_map_without_an_allocation() {
        let mut headers = request_headers();
        KeepHeaders::none().apply(&mut headers);
        assert!(headers.is_empty());
        assert_eq!(headers.capacity(), 0);
    }

    #[test]
    fn only_keeps_every_value_of_the_named_headers_and_nothing_else() {
        let mut headers = request_headers();
        KeepHeaders::only([header::COOKIE, header::ORIGIN, header::ACCEPT]).apply(&mut headers);
        assert_eq!(headers.len(), 3);
        assert_eq!(
            headers
                .get_all(header::COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>(),
            ["a=1", "b=2"]
        );
        assert_eq!(headers[header::ORIGIN], "https://a.example");
        assert!(!headers.contains_key(header::HOST));
        assert!(!headers.contains_key(header::USER_AGENT));
        // Sized to what it keeps.
        assert_eq!(
            headers.capacity(),
            HeaderMap::<HeaderValue>::with_capacity(3).capacity()
        );
    }

    #[test]
    fn a_name_listed_twice_keeps_its_values_once() {
        let mut headers = request_headers();
        KeepHeaders::only([header::COOKIE, header::HOST, header::COOKIE]).apply(&mut headers);
        assert_eq!(headers.get_all(header::COOKIE).iter().count(), 2);
        assert_eq!(headers.len(), 3);
    }
}
