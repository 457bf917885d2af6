//! Which browser origins may open a WebSocket: the defence against cross-site WebSocket
//! hijacking.
//!
//! A browser attaches its cookies to a WebSocket handshake whatever page started it, and the
//! same-origin policy does not apply to WebSockets; only the server's check of `Origin` stops
//! a hostile page from talking to your endpoint as your logged-in user. The default,
//! [`OriginPolicy::same_site`], refuses cross-site browser requests with `403 Forbidden`.
//!
//! A request without `Origin` is always accepted: only browsers are bound to send it, and any
//! other client can write whatever `Origin` it likes, so this is a browser defence, not
//! authentication.
//!
//! ```
//! use tower_websocket::{OriginPolicy, WebSocket, WebSocketLayer};
//!
//! async fn handler(_ws: WebSocket) {}
//!
//! // Only these pages may connect.
//! let layer = WebSocketLayer::new(handler).origin_policy(OriginPolicy::list([
//!     "https://app.example.com",
//!     "https://admin.example.com",
//! ]));
//!
//! // Any origin under example.com, decided per request.
//! let layer = WebSocketLayer::new(handler).origin_policy(OriginPolicy::predicate(
//!     |origin, _request| origin.as_bytes().ends_with(b".example.com"),
//! ));
//! # let _ = layer;
//! ```

use std::fmt;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;

use crate::handshake::HandshakeRejection;

type Predicate = Arc<dyn Fn(&HeaderValue, &Parts) -> bool + Send + Sync>;

/// Which origins may open a WebSocket. Default: [`same_site`](Self::same_site).
#[derive(Clone)]
pub struct OriginPolicy(Kind);

#[derive(Clone)]
enum Kind {
    Any,
    SameSite,
    SameOrigin,
    List(Vec<HeaderValue>),
    Predicate(Predicate),
    Or(Box<(OriginPolicy, OriginPolicy)>),
}

impl OriginPolicy {
    /// Every origin. Only for endpoints that use no ambient credentials (cookies, HTTP auth,
    /// client certificates): anything else is open to cross-site WebSocket hijacking.
    pub fn any() -> Self {
        OriginPolicy(Kind::Any)
    }

    /// The default: refuse browser requests that come from another site.
    ///
    /// Where the browser says it (`Sec-Fetch-Site`, sent by current browsers), a request is
    /// refused when it is `cross-site`, and accepted otherwise (same origin or same site).
    /// Without that header, `Origin` must name the host the request was sent to (its `Host`
    /// header or URI authority), as in [`same_origin`](Self::same_origin).
    pub fn same_site() -> Self {
        OriginPolicy(Kind::SameSite)
    }

    /// `Origin`'s host and port must be the ones the request was sent to (its `Host` header or
    /// URI authority). An origin without a port matches a `Host` without one; the scheme is not
    /// compared, because TLS is often ended by a proxy in front.
    pub fn same_origin() -> Self {
        OriginPolicy(Kind::SameOrigin)
    }

    /// Exactly this origin, such as `https://app.example.com`.
    ///
    /// # Panics
    ///
    /// When `origin` is not a valid header value (a programmer error, caught when the layer is
    /// built).
    pub fn exact(origin: &str) -> Self {
        Self::list([origin])
    }

    /// Exactly these origins, compared byte for byte with the `Origin` header (browsers send
    /// `scheme://host[:port]`, lower case, without a path).
    ///
    /// The list replaces the default, [`same_site`](Self::same_site): a page of the server's
    /// own site is refused unless its origin is listed too. For "same site, or these
    /// origins", combine the two with [`or`](Self::or).
    ///
    /// # Panics
    ///
    /// When an origin is not a valid header value (a programmer error).
    pub fn list<I, O>(origins: I) -> Self
    where
        I: IntoIterator<Item = O>,
        O: AsRef<str>,
    {
        OriginPolicy(Kind::List(
            origins
                .into_iter()
                .map(|o| {
                    let o = o.as_ref();
                    HeaderValue::from_str(o)
                        .unwrap_or_else(|_| panic!("origin {o:?} is not a valid header value"))
                })
                .collect(),
        ))
    }

    /// Origins for which `allow(origin, request)` returns `true`. The checks this module
    /// makes are public, [`is_same_site`] and [`is_same_origin`], to build on.
    ///
    /// ```
    /// use tower_websocket::origin::{is_same_site, OriginPolicy};
    ///
    /// // The same site, or any subdomain of example.com.
    /// let policy = OriginPolicy::predicate(|origin, request| {
    ///     is_same_site(origin, request) || origin.as_bytes().ends_with(b".example.com")
    /// });
    /// # let _ = policy;
    /// ```
    pub fn predicate<F>(allow: F) -> Self
    where
        F: Fn(&HeaderValue, &Parts) -> bool + Send + Sync + 'static,
    {
        OriginPolicy(Kind::Predicate(Arc::new(allow)))
    }

    /// An origin this policy or `other` allows.
    ///
    /// ```
    /// use tower_websocket::{OriginPolicy, WebSocket, WebSocketLayer};
    ///
    /// # async fn handler(_ws: WebSocket) {}
    /// // The server's own site, and the mobile app's web view.
    /// let layer = WebSocketLayer::new(handler).origin_policy(
    ///     OriginPolicy::same_site().or(OriginPolicy::exact("capacitor://localhost")),
    /// );
    /// # let _ = layer;
    /// ```
    pub fn or(self, other: OriginPolicy) -> Self {
        OriginPolicy(Kind::Or(Box::new((self, other))))
    }

    /// Whether this policy lets a request with this `Origin` through (a request without one
    /// always passes; see the [module docs](self)).
    pub fn allows(&self, origin: &HeaderValue, request: &Parts) -> bool {
        match &self.0 {
            Kind::Any => true,
            Kind::SameSite => is_same_site(origin, request),
            Kind::SameOrigin => is_same_origin(origin, request),
            Kind::List(origins) => origins.iter().any(|o| o == origin),
            Kind::Predicate(allow) => allow(origin, request),
            Kind::Or(both) => both.0.allows(origin, request) || both.1.allows(origin, request),
        }
    }

    /// Accepts or refuses a handshake.
    pub(crate) fn check(&self, request: &Parts) -> Result<(), HandshakeRejection> {
        let Some(origin) = request.headers.get(header::ORIGIN) else {
            return Ok(());
        };
        if self.allows(origin, request) {
            Ok(())
        } else {
            Err(HandshakeRejection::OriginNotAllowed(
                String::from_utf8_lossy(origin.as_bytes()).into_owned(),
            ))
        }
    }
}

impl Default for OriginPolicy {
    fn default() -> Self {
        Self::same_site()
    }
}

impl fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Any => f.write_str("OriginPolicy::any()"),
            Kind::SameSite => f.write_str("OriginPolicy::same_site()"),
            Kind::SameOrigin => f.write_str("OriginPolicy::same_origin()"),
            Kind::List(list) => f.debug_tuple("OriginPolicy::list").field(list).finish(),
            Kind::Predicate(_) => f.write_str("OriginPolicy::predicate(..)"),
            Kind::Or(both) => write!(f, "{:?}.or({:?})", both.0, both.1),
        }
    }
}

/// The check of [`OriginPolicy::same_site`]: the browser's `Sec-Fetch-Site` is not
/// `cross-site` or, without that header, [`is_same_origin`].
///
/// ```
/// use tower_websocket::origin::is_same_site;
///
/// let request = http::Request::get("/ws")
///     .header("host", "ws.example.com")
///     .header("sec-fetch-site", "same-site")
///     .body(())
///     .unwrap()
///     .into_parts()
///     .0;
/// let origin = http::HeaderValue::from_static("https://app.example.com");
/// assert!(is_same_site(&origin, &request));
/// ```
pub fn is_same_site(origin: &HeaderValue, request: &Parts) -> bool {
    match request.headers.get("sec-fetch-site") {
        Some(site) => site.as_bytes() != b"cross-site",
        None => is_same_origin(origin, request),
    }
}

/// The check of [`OriginPolicy::same_origin`]: `origin` (`scheme://host[:port]`) names the
/// host and port the request was sent to (its `Host` header or URI authority).
pub fn is_same_origin(origin: &HeaderValue, request: &Parts) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        // "null" (sandboxed frames, file: pages) and anything malformed.
        return false;
    };
    let target = request
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri.authority().map(|a| a.as_str()));
    let Some(target) = target else {
        return false;
    };
    let (origin_host, origin_port) = split_authority(authority);
    let (target_host, target_port) = split_authority(target);
    if !origin_host.eq_ignore_ascii_case(target_host) {
        return false;
    }
    let default_port = match scheme {
        "https" | "wss" => Some("443"),
        "http" | "ws" => Some("80"),
        _ => None,
    };
    match (origin_port.or(default_port), target_port) {
        (origin_port, Some(target_port)) => origin_port == Some(target_port),
        // A Host without a port is on its scheme's default port: 80 or 443.
        (Some(p), None) => p == "80" || p == "443",
        (None, None) => true,
    }
}

/// `host[:port]`, IPv6 literals in brackets included.
fn split_authority(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        if let Some(end) = authority.find(']') {
            let port = authority[end + 1..].strip_prefix(':');
            return (&authority[..=end], port);
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, Some(port))
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: &str, origin: Option<&str>, fetch_site: Option<&str>) -> Parts {
        let mut builder = http::Request::get("/ws").header("host", host);
        if let Some(origin) = origin {
            builder = builder.header("origin", origin);
        }
        if let Some(site) = fetch_site {
            builder = builder.header("sec-fetch-site", site);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn no_origin_is_always_accepted() {
        for policy in [
            OriginPolicy::same_site(),
            OriginPolicy::same_origin(),
            OriginPolicy::exact("https://a.example"),
        ] {
            assert!(
                policy.check(&request("x", None, None)).is_ok(),
                "{policy:?}"
            );
        }
    }

    #[test]
    fn same_host_and_port_is_same_origin() {
        let policy = OriginPolicy::same_origin();
        assert!(policy
            .check(&request(
                "localhost:3000",
                Some("http://localhost:3000"),
                None
            ))
            .is_ok());
        assert!(policy
            .check(&request("Example.COM", Some("https://example.com"), None))
            .is_ok());
        assert!(policy
            .check(&request("[::1]:8080", Some("http://[::1]:8080"), None))
            .is_ok());
        assert!(policy
            .check(&request(
                "example.com:443",
                Some("https://example.com"),
                None
            ))
            .is_ok());
    }

    #[test]
    fn other_host_or_port_is_refused() {
        let policy = OriginPolicy::same_origin();
        for (host, origin) in [
            ("localhost:3000", "http://evil.example:3000"),
            ("localhost:3000", "http://localhost:3001"),
            ("example.com:8443", "https://example.com"),
            ("example.com", "null"),
        ] {
            let err = policy
                .check(&request(host, Some(origin), None))
                .unwrap_err();
            assert_eq!(
                err,
                HandshakeRejection::OriginNotAllowed(origin.to_string())
            );
        }
    }

    #[test]
    fn same_site_trusts_the_browsers_fetch_metadata() {
        let policy = OriginPolicy::same_site();
        // Another origin of the same site: the browser says so, and it is accepted.
        assert!(policy
            .check(&request(
                "ws.example.com",
                Some("https://app.example.com"),
                Some("same-site")
            ))
            .is_ok());
        assert!(policy
            .check(&request(
                "ws.example.com",
                Some("https://evil.example"),
                Some("cross-site")
            ))
            .is_err());
        // Without fetch metadata it falls back to comparing with Host.
        assert!(policy
            .check(&request(
                "ws.example.com",
                Some("https://evil.example"),
                None
            ))
            .is_err());
        assert!(policy
            .check(&request(
                "ws.example.com",
                Some("https://ws.example.com"),
                None
            ))
            .is_ok());
    }

    #[test]
    fn or_accepts_what_either_policy_accepts() {
        let policy = OriginPolicy::same_site().or(OriginPolicy::exact("https://partner.example"));
        let host = "app.example.com";
        assert!(policy
            .check(&request(host, Some("https://app.example.com"), None))
            .is_ok());
        assert!(policy
            .check(&request(
                host,
                Some("https://partner.example"),
                Some("cross-site")
            ))
            .is_ok());
        assert!(policy
            .check(&request(
                host,
                Some("https://evil.example"),
                Some("cross-site")
            ))
            .is_err());
    }

    #[test]
    fn list_and_predicate() {
        let list = OriginPolicy::list(["https://a.example", "https://b.example"]);
        assert!(list
            .check(&request("x", Some("https://b.example"), None))
            .is_ok());
        assert!(list
            .check(&request("x", Some("https://c.example"), None))
            .is_err());
        let predicate = OriginPolicy::predicate(|origin, req| {
            origin.as_bytes().ends_with(b".example") && req.uri.path() == "/ws"
        });
        assert!(predicate
            .check(&request("x", Some("https://z.example"), None))
            .is_ok());
        assert!(predicate
            .check(&request("x", Some("https://z.other"), None))
            .is_err());
        assert!(OriginPolicy::any()
            .check(&request("x", Some("https://anything"), Some("cross-site")))
            .is_ok());
    }
}
