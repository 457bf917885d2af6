//! Header lists (RFC 9110 section 5.6.1): comma-separated elements, possibly over several
//! header lines, split in one place for the handshake, the subprotocols, permessage-deflate's
//! offers and the test client.

use http::header::AsHeaderName;
use http::HeaderMap;

/// Splits `text` at every `separator` outside a quoted string (RFC 9110 section 5.6.4, with
/// its backslash escapes). Every part is given, empty ones included.
pub(crate) fn split_unquoted(text: &[u8], separator: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, &byte) in text.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                quoted = !quoted;
            } else if !quoted && byte == separator {
                rest = Some(&text[i + 1..]);
                return Some(&text[..i]);
            }
        }
        rest = None;
        Some(text)
    })
}

/// [`split_unquoted`] over text.
pub(crate) fn split_unquoted_str(text: &str, separator: u8) -> impl Iterator<Item = &str> {
    // Cut at an ASCII separator, every part is UTF-8 still.
    split_unquoted(text.as_bytes(), separator).map(|part| std::str::from_utf8(part).unwrap_or(""))
}

/// The elements of the list in every line of `name`, trimmed of spaces and tabs, empty ones
/// skipped.
pub(crate) fn elements<K: AsHeaderName>(
    headers: &HeaderMap,
    name: K,
) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|line| split_unquoted(line.as_bytes(), b','))
        .map(<[u8]>::trim_ascii)
        .filter(|element| !element.is_empty())
}

/// [`elements`] as text, from the lines that are visible ASCII (a line that is not cannot hold
/// a token).
pub(crate) fn str_elements<K: AsHeaderName>(
    headers: &HeaderMap,
    name: K,
) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| split_unquoted_str(line, b','))
        .map(str::trim)
        .filter(|element| !element.is_empty())
}

#[cfg(test)]
mod tests {
    use http::header::SEC_WEBSOCKET_PROTOCOL;
    use http::{HeaderMap, HeaderValue};

    use super::{elements, split_unquoted_str, str_elements};

    #[test]
    fn separators_inside_quotes_do_not_split() {
        let parts: Vec<_> = split_unquoted_str(r#"a; b="x;y"; c="q\"; d";"#, b';').collect();
        assert_eq!(parts, ["a", " b=\"x;y\"", r#" c="q\"; d""#, ""]);
    }

    #[test]
    fn elements_span_lines_and_skip_empty_ones() {
        let mut headers = HeaderMap::new();
        headers.append(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, , v2 "),
        );
        headers.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("\tv1"));
        headers.append(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_bytes(b"caf\xc3\xa9, v3").expect("obs-text is a valid value"),
        );
        let text: Vec<_> = str_elements(&headers, SEC_WEBSOCKET_PROTOCOL).collect();
        assert_eq!(
            text,
            ["chat", "v2", "v1"],
            "the line that is not ASCII is skipped"
        );
        let bytes: Vec<_> = elements(&headers, SEC_WEBSOCKET_PROTOCOL).collect();
        assert_eq!(
            bytes,
            [&b"chat"[..], b"v2", b"v1", b"caf\xc3\xa9", b"v3"],
            "as bytes, every line counts"
        );
    }
}
