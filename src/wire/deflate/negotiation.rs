//! Negotiation of permessage-deflate (RFC 7692 section 7.1): the client's offers, the
//! server's answer, and the parameters agreed.

use http::{HeaderMap, HeaderValue};

use crate::handshake::list::split_unquoted_str;

use super::*;

/// The parameters in force on one connection, both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// The server resets its compressor after each message.
    pub(crate) server_no_context_takeover: bool,
    /// The client resets its compressor after each message: the server may drop its inflater.
    pub(crate) client_no_context_takeover: bool,
    /// The server's compression window, 9..=15.
    pub(crate) server_max_window_bits: u8,
    /// The client's compression window, 8..=15 (the inflater uses at least 9: a larger window
    /// inflates anything a smaller one made).
    pub(crate) client_max_window_bits: u8,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the response.
    fn response(&self, server_bits_offered: bool, client_bits_offered: bool) -> String {
        let mut out = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if server_bits_offered || self.server_max_window_bits < 15 {
            out.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        if client_bits_offered && self.client_max_window_bits < 15 {
            out.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        out
    }
}

/// Chooses the first `permessage-deflate` offer of the request that can be honoured under
/// `config`: what both sides will use, and the `Sec-WebSocket-Extensions` value to answer
/// with. `None` when there is no such offer: the connection goes on uncompressed.
pub(crate) fn negotiate(
    headers: &HeaderMap,
    config: &DeflateConfig,
) -> Option<(Agreed, HeaderValue)> {
    for line in headers.get_all(http::header::SEC_WEBSOCKET_EXTENSIONS) {
        // A line that is not visible ASCII cannot hold a valid offer.
        let Ok(line) = line.to_str() else { continue };
        for offer in split_unquoted_str(line, b',') {
            let Some((name, params)) = parse_offer(offer) else {
                continue;
            };
            if !name.eq_ignore_ascii_case("permessage-deflate") {
                continue;
            }
            if let Some(answer) = accept(&params, config) {
                return Some(answer);
            }
        }
    }
    None
}

/// The answer to one `permessage-deflate` offer, or `None` to decline it.
pub(super) fn accept(
    params: &[(&str, Option<String>)],
    config: &DeflateConfig,
) -> Option<(Agreed, HeaderValue)> {
    let mut server_no_context_takeover = false;
    let mut client_no_context_takeover = false;
    let mut server_bits: Option<u8> = None;
    // `Some(None)`: offered without a value.
    let mut client_bits: Option<Option<u8>> = None;
    let mut seen = [false; PARAMS.len()];
    for (name, value) in params {
        // An unknown parameter declines the offer, and so does a duplicate.
        let index = PARAMS
            .iter()
            .position(|known| name.eq_ignore_ascii_case(known))?;
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
        match (PARAMS[index], value.as_deref()) {
            ("server_no_context_takeover", None) => server_no_context_takeover = true,
            ("client_no_context_takeover", None) => client_no_context_takeover = true,
            ("server_max_window_bits", Some(value)) => server_bits = Some(window_bits(value)?),
            ("client_max_window_bits", None) => client_bits = Some(None),
            ("client_max_window_bits", Some(value)) => {
                client_bits = Some(Some(window_bits(value)?));
            }
            // A value where none is allowed, or none where one is needed.
            _ => return None,
        }
    }
    // zlib cannot compress raw deflate with an 8-bit window.
    if server_bits == Some(8) {
        return None;
    }
    let agreed = Agreed {
        server_no_context_takeover: server_no_context_takeover || config.server_no_context_takeover,
        client_no_context_takeover: client_no_context_takeover || config.client_no_context_takeover,
        server_max_window_bits: server_bits.unwrap_or(15).min(config.server_max_window_bits),
        client_max_window_bits: match client_bits {
            // The client cannot be limited: it may use the largest window.
            None => 15,
            Some(None) => config.client_max_window_bits,
            Some(Some(offered)) => offered.min(config.client_max_window_bits),
        },
    };
    let value = agreed.response(server_bits.is_some(), client_bits.is_some());
    Some((agreed, HeaderValue::try_from(value).ok()?))
}

/// The parameters RFC 7692 defines, in the order `accept` indexes them.
pub(super) const PARAMS: [&str; 4] = [
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
];

/// A window size parameter: a decimal 8..=15 without leading zeros.
pub(super) fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

/// An offer's parameters: names, and values with quotes removed.
pub(super) type Params<'a> = Vec<(&'a str, Option<String>)>;

/// One offer: its extension name and its parameters. `None` when it is malformed or empty.
pub(super) fn parse_offer(offer: &str) -> Option<(&str, Params<'_>)> {
    let mut parts = split_unquoted_str(offer, b';');
    let name = trim_ows(parts.next()?);
    if !is_token(name) {
        return None;
    }
    let mut params = Vec::new();
    for part in parts {
        let (key, value) = match part.split_once('=') {
            Some((key, value)) => (trim_ows(key), Some(parse_value(trim_ows(value))?)),
            None => (trim_ows(part), None),
        };
        if !is_token(key) {
            return None;
        }
        params.push((key, value));
    }
    Some((name, params))
}

/// A parameter's value: a token, or a quoted string (unescaped).
pub(super) fn parse_value(value: &str) -> Option<String> {
    if is_token(value) {
        return Some(value.to_owned());
    }
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

pub(super) fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// An RFC 9110 token: one or more `tchar`.
pub(super) fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
