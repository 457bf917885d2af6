//! Subprotocol selection (`Sec-WebSocket-Protocol`).
//!
//! The client offers subprotocols; the server agrees to at most one of them, which the handler
//! reads with [`WebSocket::protocol`](crate::WebSocket::protocol). By default the server speaks
//! none and agrees to none.
//!
//! ```
//! use tower_websocket::{protocol::Subprotocols, WebSocket, WebSocketLayer};
//!
//! async fn handler(_ws: WebSocket) {}
//!
//! // The server's order of preference; the first one the client also offers wins.
//! let layer = WebSocketLayer::new(handler).protocols(["graphql-transport-ws", "graphql-ws"]);
//!
//! // The same, but refuse (400) a client that offers none of them.
//! let layer = WebSocketLayer::new(handler)
//!     .subprotocols(Subprotocols::list(["mqtt"]).required());
//!
//! // Anything else: choose from the offer and the request.
//! let layer = WebSocketLayer::new(handler).subprotocols(Subprotocols::select(
//!     |offered, request| {
//!         let v2 = request.uri.path().starts_with("/v2");
//!         offered.iter().find(|p| p.ends_with(if v2 { ".v2" } else { ".v1" })).map(|p| p.to_string())
//!     },
//! ));
//! # let _ = layer;
//! ```

use std::fmt;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;

use crate::handshake::HandshakeRejection;

type Selector = Arc<dyn Fn(&[&str], &Parts) -> Option<String> + Send + Sync>;

/// How the server chooses a subprotocol. Default: [`none`](Self::none).
#[derive(Clone)]
pub struct Subprotocols {
    kind: Kind,
    required: bool,
}

#[derive(Clone)]
enum Kind {
    None,
    List(Vec<HeaderValue>),
    Select(Selector),
}

impl Subprotocols {
    /// The server speaks no subprotocol: none is ever agreed.
    pub fn none() -> Self {
        Subprotocols {
            kind: Kind::None,
            required: false,
        }
    }

    /// These subprotocols, in the server's order of preference: the first one the client also
    /// offers is agreed.
    ///
    /// # Panics
    ///
    /// When a name is not a valid header value (a programmer error, caught when the layer is
    /// built).
    pub fn list<I, P>(protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        Subprotocols {
            kind: Kind::List(
                protocols
                    .into_iter()
                    .map(|p| {
                        let p = p.as_ref();
                        HeaderValue::from_str(p).unwrap_or_else(|_| {
                            panic!("subprotocol {p:?} is not a valid Sec-WebSocket-Protocol value")
                        })
                    })
                    .collect(),
            ),
            required: false,
        }
    }

    /// `choose(offered, request)` picks one of the offered subprotocols (in the client's
    /// order), or none. A name that the client did not offer is ignored: the RFC lets the
    /// server agree only to what was offered.
    pub fn select<F>(choose: F) -> Self
    where
        F: Fn(&[&str], &Parts) -> Option<String> + Send + Sync + 'static,
    {
        Subprotocols {
            kind: Kind::Select(Arc::new(choose)),
            required: false,
        }
    }

    /// Refuse the handshake with `400 Bad Request` when no subprotocol is agreed, instead of
    /// accepting the connection without one.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// The subprotocol agreed for this request, or the refusal.
    pub(crate) fn choose(
        &self,
        request: &Parts,
    ) -> Result<Option<HeaderValue>, HandshakeRejection> {
        let chosen = match &self.kind {
            Kind::None => None,
            Kind::List(ours) => ours
                .iter()
                .find(|ours| offered(request).any(|p| p.as_bytes() == ours.as_bytes()))
                .cloned(),
            Kind::Select(choose) => {
                let offer: Vec<&str> = offered(request).collect();
                choose(&offer, request)
                    .filter(|name| offer.contains(&name.as_str()))
                    .and_then(|name| HeaderValue::from_str(&name).ok())
            }
        };
        if chosen.is_none() && self.required {
            let offer: Vec<&str> = offered(request).collect();
            return Err(HandshakeRejection::NoCommonProtocol {
                offered: offer.join(", "),
                supported: self.supported(),
            });
        }
        Ok(chosen)
    }

    fn supported(&self) -> String {
        match &self.kind {
            Kind::List(ours) => ours
                .iter()
                .filter_map(|p| p.to_str().ok())
                .collect::<Vec<_>>()
                .join(", "),
            Kind::None | Kind::Select(_) => String::new(),
        }
    }
}

impl Default for Subprotocols {
    fn default() -> Self {
        Self::none()
    }
}

impl fmt::Debug for Subprotocols {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::None => "none".to_string(),
            Kind::List(list) => format!("list({list:?})"),
            Kind::Select(_) => "select(..)".to_string(),
        };
        f.debug_struct("Subprotocols")
            .field("kind", &kind)
            .field("required", &self.required)
            .finish()
    }
}

/// The subprotocols the client offered, in its order, across every header line.
fn offered(request: &Parts) -> impl Iterator<Item = &str> {
    crate::handshake::list::str_elements(&request.headers, header::SEC_WEBSOCKET_PROTOCOL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(offers: &[&str]) -> Parts {
        let mut builder = http::Request::get("/v2/ws");
        for offer in offers {
            builder = builder.header("sec-websocket-protocol", *offer);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn list_follows_the_servers_preference() {
        let ours = Subprotocols::list(["b", "a"]);
        assert_eq!(ours.choose(&request(&["a, b"])).unwrap().unwrap(), "b");
        assert_eq!(ours.choose(&request(&["a", "c"])).unwrap().unwrap(), "a");
        assert_eq!(ours.choose(&request(&["c"])).unwrap(), None);
    }

    #[test]
    fn required_refuses_when_nothing_is_common() {
        let ours = Subprotocols::list(["mqtt"]).required();
        let err = ours.choose(&request(&["stomp, wamp"])).unwrap_err();
        assert_eq!(
            err,
            HandshakeRejection::NoCommonProtocol {
                offered: "stomp, wamp".into(),
                supported: "mqtt".into()
            }
        );
        assert!(ours.choose(&request(&[])).is_err());
        assert!(ours.choose(&request(&["mqtt"])).is_ok());
    }

    #[test]
    fn selector_sees_offer_and_request_and_must_pick_from_the_offer() {
        let select = Subprotocols::select(|offered, req| {
            if req.uri.path().starts_with("/v2") {
                offered
                    .iter()
                    .find(|p| p.ends_with("v2"))
                    .map(|p| p.to_string())
            } else {
                Some("not-offered".to_string())
            }
        });
        assert_eq!(
            select
                .choose(&request(&["chat.v1, chat.v2"]))
                .unwrap()
                .unwrap(),
            "chat.v2"
        );
        let other = http::Request::get("/v1")
            .header("sec-websocket-protocol", "chat.v1")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(select.choose(&other).unwrap(), None);
    }
}
