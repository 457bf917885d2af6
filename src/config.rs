//! The settings of one layer, shared by its service clones behind one `Arc`: what the HTTP
//! edge checks, and the [`connection::Settings`] each connection is given.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use http::HeaderMap;

use crate::connection;
use crate::handle::{ConnectionSlot, Registry};
use crate::handshake::keep::KeepHeaders;
use crate::handshake::origin::OriginPolicy;
use crate::handshake::protocol::Subprotocols;
use crate::handshake::{HandshakeRejection, Refusal};
#[cfg(feature = "axum")]
use crate::socket::handler;
use crate::socket::handler::BoxHandler;

/// A hook run before the `101`: it may refuse, add response headers, or change the request
/// the handler will see.
pub(crate) type BeforeUpgrade =
    Arc<dyn Fn(&mut Parts, &mut HeaderMap) -> Result<(), Refusal> + Send + Sync>;

/// An extension the upgrade request must carry; see
/// [`WebSocketLayer::require_extension`](crate::WebSocketLayer::require_extension).
#[derive(Clone, Copy)]
pub(crate) struct RequiredExtension {
    pub(crate) type_name: &'static str,
    pub(crate) present: fn(&http::Extensions) -> bool,
}

/// The settings shared by every connection of one layer, behind one `Arc`.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) handler: BoxHandler,
    /// A handler's extractors, run before the `101` (see
    /// [`WebSocketLayer::with_state`](crate::WebSocketLayer::with_state)).
    #[cfg(feature = "axum")]
    pub(crate) prepare: Option<handler::BoxPrepare>,
    pub(crate) subprotocols: Subprotocols,
    pub(crate) origin: OriginPolicy,
    /// The headers a socket keeps in its environ.
    pub(crate) keep_headers: KeepHeaders,
    pub(crate) before_upgrade: Option<BeforeUpgrade>,
    pub(crate) required_extensions: Vec<RequiredExtension>,
    pub(crate) max_connections: Option<usize>,
    /// Live connections and counters, shared by every clone of the layer.
    pub(crate) registry: Arc<Registry>,
    /// What each connection is given; the same registry is in it.
    pub(crate) connection: Arc<connection::Settings>,
    #[cfg(feature = "hixie76")]
    pub(crate) legacy_drafts: bool,
    #[cfg(feature = "hixie76")]
    pub(crate) legacy_tls: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("subprotocols", &self.subprotocols)
            .field("origin", &self.origin)
            .field("keep_headers", &self.keep_headers)
            .field("before_upgrade", &self.before_upgrade.is_some())
            .field(
                "required_extensions",
                &self
                    .required_extensions
                    .iter()
                    .map(|r| r.type_name)
                    .collect::<Vec<_>>(),
            )
            .field("max_connections", &self.max_connections)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// One place among the live sockets, or the refusal when
    /// [`max_connections`](crate::WebSocketLayer::max_connections) are live.
    pub(crate) fn take_slot(&self) -> Result<ConnectionSlot, HandshakeRejection> {
        self.registry.take_slot(self.max_connections).ok_or(
            HandshakeRejection::TooManyConnections {
                limit: self.max_connections.unwrap_or(usize::MAX),
            },
        )
    }
}
