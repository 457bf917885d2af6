use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use flate2::{Decompress, FlushDecompress};
use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, ReadBuf};

use super::inflater::*;
use super::negotiation::*;
use super::*;
use crate::socket::close::CloseCode;
use crate::wire::frame::header_len;
use crate::wire::violation::Violation;

use tokio::io::AsyncReadExt;

// --- negotiation ---------------------------------------------------------------------

fn offer(lines: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines {
        headers.append(
            http::header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_str(line).unwrap(),
        );
    }
    headers
}

fn answer(lines: &[&str], config: &DeflateConfig) -> Option<(Agreed, String)> {
    negotiate(&offer(lines), config)
        .map(|(agreed, value)| (agreed, value.to_str().unwrap().to_owned()))
}

fn default_answer(lines: &[&str]) -> Option<String> {
    answer(lines, &DeflateConfig::new()).map(|(_, value)| value)
}

const DEFAULT_AGREED: Agreed = Agreed {
    server_no_context_takeover: false,
    client_no_context_takeover: false,
    server_max_window_bits: 15,
    client_max_window_bits: 15,
};

#[test]
fn no_offer_means_no_compression() {
    assert_eq!(answer(&[], &DeflateConfig::new()), None);
}

#[test]
fn a_plain_offer_is_accepted_with_the_defaults() {
    assert_eq!(
        answer(&["permessage-deflate"], &DeflateConfig::new()),
        Some((DEFAULT_AGREED, "permessage-deflate".to_owned()))
    );
}

#[test]
fn other_extension_names_are_ignored() {
    assert_eq!(default_answer(&["x-webkit-deflate-frame"]), None);
    assert_eq!(
        default_answer(&["foo; bar=1, permessage-deflate"]).as_deref(),
        Some("permessage-deflate")
    );
}

#[test]
fn offers_are_tried_in_order() {
    assert_eq!(
        default_answer(&["permessage-deflate; server_max_window_bits=10, permessage-deflate"])
            .as_deref(),
        Some("permessage-deflate; server_max_window_bits=10")
    );
}

#[test]
fn every_header_line_is_read() {
    assert_eq!(
        default_answer(&[
            "foo",
            "permessage-deflate; bogus",
            "permessage-deflate; client_no_context_takeover"
        ])
        .as_deref(),
        Some("permessage-deflate; client_no_context_takeover")
    );
}

#[test]
fn an_unknown_parameter_declines_the_offer() {
    assert_eq!(default_answer(&["permessage-deflate; foo"]), None);
    assert_eq!(
        default_answer(&["permessage-deflate; foo=1, permessage-deflate"]).as_deref(),
        Some("permessage-deflate")
    );
}

#[test]
fn a_duplicate_parameter_declines_the_offer() {
    for dup in [
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
    ] {
        assert_eq!(default_answer(&[dup]), None, "{dup}");
    }
}

#[test]
fn a_malformed_offer_is_declined_and_the_next_one_tried() {
    for bad in [
        "permessage-deflate;",
        "permessage-deflate; ;server_no_context_takeover",
        "permessage-deflate; =10",
        "permessage-deflate; server_max_window_bits=",
        "permessage-deflate; client_max_window_bits=\"10",
        "permessage deflate",
        "permessage-deflate; server max_window_bits=10",
    ] {
        assert_eq!(default_answer(&[bad]), None, "{bad}");
        let line = format!("{bad}, permessage-deflate; client_no_context_takeover");
        assert_eq!(
            default_answer(&[&line]).as_deref(),
            // An unterminated quote swallows the rest of the line.
            if bad.contains('"') {
                None
            } else {
                Some("permessage-deflate; client_no_context_takeover")
            },
            "{line}"
        );
    }
}

#[test]
fn an_invalid_window_value_declines_the_offer() {
    for value in ["7", "16", "010", "0", "x", "9.5", "+9", "\"\"", "\"1 0\""] {
        for param in ["server_max_window_bits", "client_max_window_bits"] {
            let line = format!("permessage-deflate; {param}={value}");
            assert_eq!(default_answer(&[&line]), None, "{line}");
        }
    }
}

#[test]
fn server_max_window_bits_needs_a_value() {
    assert_eq!(
        default_answer(&["permessage-deflate; server_max_window_bits"]),
        None
    );
}

#[test]
fn a_server_window_of_8_bits_is_declined() {
    assert_eq!(
        default_answer(&["permessage-deflate; server_max_window_bits=8"]),
        None
    );
    assert_eq!(
        default_answer(&[
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9"
        ])
        .as_deref(),
        Some("permessage-deflate; server_max_window_bits=9")
    );
}

#[test]
fn no_context_takeover_takes_no_value() {
    assert_eq!(
        default_answer(&["permessage-deflate; server_no_context_takeover=1"]),
        None
    );
    assert_eq!(
        default_answer(&["permessage-deflate; client_no_context_takeover=\"\""]),
        None
    );
}

#[test]
fn quoted_values_are_unquoted() {
    let (agreed, value) = answer(
        &["permessage-deflate; server_max_window_bits=\"10\"; client_max_window_bits=\"1\\2\""],
        &DeflateConfig::new(),
    )
    .unwrap();
    assert_eq!(agreed.server_max_window_bits, 10);
    assert_eq!(agreed.client_max_window_bits, 12);
    assert_eq!(
        value,
        "permessage-deflate; server_max_window_bits=10; client_max_window_bits=12"
    );
}

#[test]
fn a_comma_inside_quotes_does_not_split_offers() {
    // The quoted value is invalid, so the first offer is declined, as one offer.
    assert_eq!(
        default_answer(&["permessage-deflate; client_max_window_bits=\"10, permessage-deflate\""]),
        None
    );
}

#[test]
fn names_are_case_insensitive_and_whitespace_is_allowed() {
    assert_eq!(
        default_answer(&[
            "  Permessage-Deflate ;\tServer_No_Context_Takeover ; server_max_window_bits = 12 ,"
        ])
        .as_deref(),
        Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=12")
    );
}

#[test]
fn server_no_context_takeover_offered_is_agreed_and_answered() {
    let (agreed, value) = answer(
        &["permessage-deflate; server_no_context_takeover"],
        &DeflateConfig::new(),
    )
    .unwrap();
    assert!(agreed.server_no_context_takeover);
    assert!(!agreed.client_no_context_takeover);
    assert_eq!(value, "permessage-deflate; server_no_context_takeover");
}

#[test]
fn client_no_context_takeover_offered_is_agreed_and_answered() {
    let (agreed, value) = answer(
        &["permessage-deflate; client_no_context_takeover"],
        &DeflateConfig::new(),
    )
    .unwrap();
    assert!(agreed.client_no_context_takeover);
    assert_eq!(value, "permessage-deflate; client_no_context_takeover");
}

#[test]
fn configured_no_context_takeover_is_imposed() {
    let config = DeflateConfig::new()
        .server_no_context_takeover(true)
        .client_no_context_takeover(true);
    let (agreed, value) = answer(&["permessage-deflate"], &config).unwrap();
    assert!(agreed.server_no_context_takeover && agreed.client_no_context_takeover);
    assert_eq!(
        value,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
}

#[test]
fn the_server_may_use_a_smaller_window_than_offered() {
    let config = DeflateConfig::new().server_max_window_bits(10);
    let (agreed, value) =
        answer(&["permessage-deflate; server_max_window_bits=12"], &config).unwrap();
    assert_eq!(agreed.server_max_window_bits, 10);
    assert_eq!(value, "permessage-deflate; server_max_window_bits=10");
    // And never a larger one.
    let (agreed, value) = answer(
        &["permessage-deflate; server_max_window_bits=9"],
        &DeflateConfig::new(),
    )
    .unwrap();
    assert_eq!(agreed.server_max_window_bits, 9);
    assert_eq!(value, "permessage-deflate; server_max_window_bits=9");
}

#[test]
fn an_offered_server_window_is_always_answered() {
    assert_eq!(
        default_answer(&["permessage-deflate; server_max_window_bits=15"]).as_deref(),
        Some("permessage-deflate; server_max_window_bits=15")
    );
}

#[test]
fn a_smaller_server_window_is_announced_unasked() {
    let config = DeflateConfig::new().server_max_window_bits(11);
    let (agreed, value) = answer(&["permessage-deflate"], &config).unwrap();
    assert_eq!(agreed.server_max_window_bits, 11);
    assert_eq!(value, "permessage-deflate; server_max_window_bits=11");
}

#[test]
fn client_max_window_bits_is_never_answered_unless_offered() {
    let config = DeflateConfig::new().client_max_window_bits(10);
    let (agreed, value) = answer(&["permessage-deflate"], &config).unwrap();
    // The client was not asked: it may use 15, and the inflater must take that.
    assert_eq!(agreed.client_max_window_bits, 15);
    assert_eq!(value, "permessage-deflate");
}

#[test]
fn client_max_window_bits_without_value_takes_the_configured_window() {
    let offer = ["permessage-deflate; client_max_window_bits"];
    assert_eq!(
        answer(&offer, &DeflateConfig::new()),
        Some((DEFAULT_AGREED, "permessage-deflate".to_owned()))
    );
    let config = DeflateConfig::new().client_max_window_bits(10);
    let (agreed, value) = answer(&offer, &config).unwrap();
    assert_eq!(agreed.client_max_window_bits, 10);
    assert_eq!(value, "permessage-deflate; client_max_window_bits=10");
}

#[test]
fn client_max_window_bits_with_value_is_honoured() {
    let (agreed, value) = answer(
        &["permessage-deflate; client_max_window_bits=10"],
        &DeflateConfig::new(),
    )
    .unwrap();
    assert_eq!(agreed.client_max_window_bits, 10);
    assert_eq!(value, "permessage-deflate; client_max_window_bits=10");
    let config = DeflateConfig::new().client_max_window_bits(9);
    let (agreed, _) = answer(&["permessage-deflate; client_max_window_bits=10"], &config).unwrap();
    assert_eq!(agreed.client_max_window_bits, 9);
}

#[test]
fn a_client_window_of_8_bits_is_accepted() {
    // The client compresses with 8; an inflater with 9 reads that.
    let (agreed, value) = answer(
        &["permessage-deflate; client_max_window_bits=8"],
        &DeflateConfig::new(),
    )
    .unwrap();
    assert_eq!(agreed.client_max_window_bits, 8);
    assert_eq!(value, "permessage-deflate; client_max_window_bits=8");
}

#[test]
fn a_header_that_is_not_ascii_is_skipped() {
    let mut headers = offer(&[]);
    headers.append(
        http::header::SEC_WEBSOCKET_EXTENSIONS,
        HeaderValue::from_bytes(b"permessage-deflate; x=\xe9").unwrap(),
    );
    headers.append(
        http::header::SEC_WEBSOCKET_EXTENSIONS,
        HeaderValue::from_static("permessage-deflate"),
    );
    assert!(negotiate(&headers, &DeflateConfig::new()).is_some());
}

// --- config --------------------------------------------------------------------------

#[test]
fn config_defaults() {
    let config = DeflateConfig::default();
    assert_eq!(config.level, 1);
    assert_eq!(config.threshold, DEFAULT_THRESHOLD);
    assert_eq!(config.server_max_window_bits, 15);
    assert_eq!(config.client_max_window_bits, 15);
    assert!(!config.server_no_context_takeover);
    assert!(!config.client_no_context_takeover);
}

#[test]
#[should_panic(expected = "server_max_window_bits must be 9..=15")]
fn a_server_window_of_8_bits_cannot_be_configured() {
    let _ = DeflateConfig::new().server_max_window_bits(8);
}

#[test]
#[should_panic(expected = "client_max_window_bits must be 9..=15")]
fn a_client_window_of_16_bits_cannot_be_configured() {
    let _ = DeflateConfig::new().client_max_window_bits(16);
}

#[test]
#[should_panic(expected = "deflate level must be 0..=9")]
fn a_level_over_9_cannot_be_configured() {
    let _ = DeflateConfig::new().level(10);
}

// --- frames --------------------------------------------------------------------------

/// A client frame: masked, with the given RSV bits (0x40 = RSV1).
fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    crate::wire::frame::client_frame(fin, rsv, opcode, payload)
}

#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
}

/// Parses the adapter's output (frames as fastwebsockets will read them).
fn parse(mut bytes: &[u8]) -> Vec<Parsed> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let len = header_len(bytes).unwrap();
        let (mut n, at) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let masked = bytes[1] & 0x80 != 0;
        let mut payload = bytes[len..len + n].to_vec();
        if masked {
            let mask = &bytes[at..at + 4];
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b ^= mask[i % 4]);
        }
        frames.push(Parsed {
            fin: bytes[0] & 0x80 != 0,
            rsv: bytes[0] & 0x70,
            opcode: bytes[0] & 0x0f,
            masked,
            payload,
        });
        n += len;
        bytes = &bytes[n..];
    }
    frames
}

/// Data messages (opcode, payload) from frames, checking that no inflated frame is masked,
/// has RSV bits or is over the bound; control frames are returned in line.
fn messages(frames: &[Parsed]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut current: Option<(u8, Vec<u8>)> = None;
    for frame in frames {
        assert_eq!(frame.rsv, 0, "{frame:?}");
        assert!(frame.payload.len() <= INFLATED_FRAME_MAX);
        match frame.opcode {
            0x0 => current
                .as_mut()
                .unwrap()
                .1
                .extend_from_slice(&frame.payload),
            0x1 | 0x2 => {
                assert!(current.is_none());
                current = Some((frame.opcode, frame.payload.clone()));
            }
            op => out.push((op, frame.payload.clone())),
        }
        if frame.fin && frame.opcode < 0x8 {
            out.push(current.take().unwrap());
        }
    }
    assert!(current.is_none(), "unfinished message");
    out
}

/// An inner stream that gives at most `piece` bytes per read, and says Pending every
/// other call.
struct Trickle<'a> {
    data: &'a [u8],
    piece: usize,
    calls: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.calls += 1;
        if self.calls % 2 == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self.piece.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fn agreed(client_no_context_takeover: bool, client_bits: u8) -> Agreed {
    Agreed {
        client_no_context_takeover,
        client_max_window_bits: client_bits,
        ..DEFAULT_AGREED
    }
}

/// Reads everything through an `InflateRead` over `input`, given `piece` bytes per
/// inner read and asking with a buffer of `ask` bytes; checks the bound on what it holds.
async fn inflate_all(
    input: &[u8],
    agreed: &Agreed,
    max: usize,
    piece: usize,
    ask: usize,
) -> Result<Vec<u8>, Violation> {
    let inner = Trickle {
        data: input,
        piece,
        calls: 0,
    };
    let mut reader = InflateRead::new(inner, agreed, max);
    let mut out = Vec::new();
    let mut buf = vec![0; ask];
    loop {
        let result = reader.read(&mut buf).await;
        assert!(
            reader.held() <= 2 * (HEAD_ROOM + INFLATED_FRAME_MAX) + STASH_SIZE + ask,
            "holds {} bytes",
            reader.held()
        );
        match result {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => {
                let violation = e
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<Violation>())
                    .copied()
                    .unwrap_or_else(|| panic!("{e}"));
                return Err(violation);
            }
        }
    }
}

async fn inflate_messages(input: &[u8], agreed: &Agreed) -> Vec<(u8, Vec<u8>)> {
    messages(&parse(
        &inflate_all(input, agreed, 16 << 20, 1 << 20, 8192)
            .await
            .unwrap(),
    ))
}

/// The server's compressor, used here as a client's would be (same algorithm).
fn compressor(no_context_takeover: bool, bits: u8) -> Compressor {
    let agreed = Agreed {
        server_no_context_takeover: no_context_takeover,
        server_max_window_bits: bits,
        ..DEFAULT_AGREED
    };
    Compressor::new(&agreed, &DeflateConfig::new().threshold(0))
}

fn text(i: usize) -> Vec<u8> {
    format!(
        "{{\"id\":{i},\"user\":\"someone\",\"text\":\"message number {i}, much like the others\"}}"
    )
    .into_bytes()
}

/// Pseudo-random bytes: incompressible.
fn noise(len: usize, mut seed: u32) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as u8
        })
        .collect()
}

#[test]
fn rfc_7692_examples_inflate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let hello = |payload: &[u8]| frame(true, 0x40, 0x1, payload);
    let mut wire = Vec::new();
    // 7.2.3.1: one compressed "Hello", then the same split in two frames.
    wire.extend(hello(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]));
    // 7.2.3.2: with context takeover, the second "Hello" refers to the first.
    wire.extend(hello(&[0xf2, 0x00, 0x11, 0x00, 0x00]));
    // 7.2.3.3: a stored block.
    wire.extend(hello(&[
        0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
    ]));
    // 7.2.3.5: two blocks in one message.
    wire.extend(hello(&[
        0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
    ]));
    // 7.2.3.4: a final block (BFINAL): the next message starts a new stream.
    wire.extend(hello(&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00]));
    wire.extend(hello(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]));
    // 7.2.3.1, fragmented.
    wire.extend(frame(false, 0x40, 0x1, &[0xf2, 0x48, 0xcd]));
    wire.extend(frame(true, 0x00, 0x0, &[0xc9, 0xc9, 0x07, 0x00]));
    // 7.2.3.6: an empty message.
    wire.extend(frame(true, 0x40, 0x2, &[0x00]));
    let got = rt.block_on(inflate_messages(&wire, &DEFAULT_AGREED));
    let hello = (1, b"Hello".to_vec());
    assert_eq!(
        got,
        vec![hello.clone(); 7]
            .into_iter()
            .chain([(2, vec![])])
            .collect::<Vec<_>>()
    );
}

/// Compresses `messages` as a client would and frames them (split into frames of
/// `fragment` bytes of compressed payload), with a ping between fragments.
fn client_wire(messages: &[Vec<u8>], compressor: &mut Compressor, fragment: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let opcode = if i % 2 == 0 { 0x1 } else { 0x2 };
        let compressed = compressor.compress(message).unwrap();
        let chunks: Vec<&[u8]> = if compressed.is_empty() {
            vec![&[]]
        } else {
            compressed.chunks(fragment).collect()
        };
        for (j, chunk) in chunks.iter().enumerate() {
            let first = j == 0;
            let last = j == chunks.len() - 1;
            let rsv = if first { 0x40 } else { 0 };
            wire.extend(frame(last, rsv, if first { opcode } else { 0 }, chunk));
            if j == 0 && !last {
                wire.extend(frame(true, 0, 0x9, b"ping"));
            }
        }
    }
    wire
}

fn expected(messages: &[Vec<u8>]) -> Vec<(u8, Vec<u8>)> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| (if i % 2 == 0 { 1 } else { 2 }, m.clone()))
        .collect()
}

fn pings(frames: &[Parsed]) -> usize {
    frames.iter().filter(|f| f.opcode == 0x9).count()
}

fn without_pings(messages: Vec<(u8, Vec<u8>)>) -> Vec<(u8, Vec<u8>)> {
    messages.into_iter().filter(|(op, _)| *op != 0x9).collect()
}

#[tokio::test]
async fn round_trip_with_context_takeover() {
    // Empty messages too: after the first, one is the single byte 0x00.
    let msgs: Vec<_> = (0..20)
        .map(|i| if i % 7 == 3 { Vec::new() } else { text(i) })
        .collect();
    let mut comp = compressor(false, 15);
    let wire = client_wire(&msgs, &mut comp, usize::MAX);
    let got = inflate_messages(&wire, &agreed(false, 15)).await;
    assert_eq!(got, expected(&msgs));
}

#[tokio::test]
async fn round_trip_without_context_takeover() {
    let msgs: Vec<_> = (0..20)
        .map(|i| if i % 7 == 3 { Vec::new() } else { text(i) })
        .collect();
    let mut comp = compressor(true, 15);
    let wire = client_wire(&msgs, &mut comp, usize::MAX);
    let got = inflate_messages(&wire, &agreed(true, 15)).await;
    assert_eq!(got, expected(&msgs));
}

#[tokio::test]
async fn context_takeover_is_kept_between_messages() {
    let message = text(7);
    let mut keep = compressor(false, 15);
    let first = keep.compress(&message).unwrap();
    let second = keep.compress(&message).unwrap();
    assert!(
        second.len() < first.len() / 2,
        "{} then {}",
        first.len(),
        second.len()
    );
    let mut fresh = compressor(true, 15);
    let first = fresh.compress(&message).unwrap();
    let second = fresh.compress(&message).unwrap();
    assert_eq!(first, second);
    assert!(fresh.deflater.is_none(), "dropped after each message");
}

#[tokio::test]
async fn large_messages_round_trip() {
    let mut big_text = Vec::new();
    while big_text.len() < 1 << 20 {
        big_text.extend_from_slice(&text(big_text.len()));
    }
    big_text.truncate(1 << 20);
    let msgs = vec![big_text, noise(1 << 20, 7), vec![b'a'; 3 << 20]];
    for no_context_takeover in [false, true] {
        let mut comp = compressor(no_context_takeover, 15);
        let wire = client_wire(&msgs, &mut comp, usize::MAX);
        let output = inflate_all(
            &wire,
            &agreed(no_context_takeover, 15),
            16 << 20,
            1 << 16,
            1 << 16,
        )
        .await
        .unwrap();
        let frames = parse(&output);
        assert!(frames.iter().all(|f| !f.masked && f.rsv == 0));
        assert!(frames.len() > 3 * 16, "split into bounded frames");
        assert_eq!(messages(&frames), expected(&msgs));
    }
}

#[tokio::test]
async fn fragmented_compressed_messages_round_trip_with_pings_between() {
    let mut msgs: Vec<_> = (0..10).map(|i| text(i).repeat(50)).collect();
    msgs.push(noise(200_000, 3));
    for no_context_takeover in [false, true] {
        let mut comp = compressor(no_context_takeover, 15);
        let wire = client_wire(&msgs, &mut comp, 16);
        let sent_pings = pings(&parse(&wire));
        assert!(sent_pings > 5);
        let got = inflate_messages(&wire, &agreed(no_context_takeover, 15)).await;
        let got_pings = got
            .iter()
            .filter(|(op, m)| *op == 0x9 && m == b"ping")
            .count();
        assert_eq!(got_pings, sent_pings);
        assert_eq!(without_pings(got), expected(&msgs));
    }
}

#[tokio::test]
async fn tiny_reads_and_tiny_buffers() {
    let mut msgs: Vec<_> = (0..6).map(|i| text(i).repeat(i * 30 + 1)).collect();
    msgs.push(Vec::new());
    msgs.push(noise(70_000, 11));
    let mut comp = compressor(false, 15);
    let mut wire = frame(true, 0, 0x1, b"plain before");
    wire.extend(client_wire(&msgs, &mut comp, 37));
    wire.extend(frame(false, 0, 0x2, b"plain "));
    wire.extend(frame(true, 0, 0x9, b""));
    wire.extend(frame(true, 0, 0x0, b"after"));
    let mut want = vec![(1, b"plain before".to_vec())];
    want.extend(expected(&msgs));
    want.push((2, b"plain after".to_vec()));
    for piece in [1, 3, 7, 1000] {
        for ask in [1, 3, 7, 8192] {
            let output = inflate_all(&wire, &agreed(false, 15), 16 << 20, piece, ask)
                .await
                .unwrap_or_else(|e| panic!("piece {piece} ask {ask}: {e:?}"));
            let frames = parse(&output);
            assert_eq!(pings(&frames), pings(&parse(&wire)));
            let got = messages(&frames);
            assert_eq!(without_pings(got), want, "piece {piece} ask {ask}");
        }
    }
}

#[tokio::test]
async fn window_bits_are_honoured() {
    let mut msgs: Vec<_> = (0..5).map(|i| text(i).repeat(40)).collect();
    msgs.push(noise(5000, 5).repeat(3));
    for bits in 9..=15 {
        let mut comp = compressor(false, bits);
        let wire = client_wire(&msgs, &mut comp, usize::MAX);
        let got = inflate_messages(&wire, &agreed(false, bits)).await;
        assert_eq!(got, expected(&msgs), "{bits} bits");
    }
}

#[tokio::test]
async fn a_deflate_bomb_fails_with_1009_without_being_inflated() {
    let zeros = vec![0u8; 50 << 20];
    let mut best = Compressor::new(&DEFAULT_AGREED, &DeflateConfig::new().level(9));
    let compressed = best.compress(&zeros).unwrap();
    drop(zeros);
    assert!(compressed.len() < 100 << 10, "{}", compressed.len());
    let wire = frame(true, 0x40, 0x2, &compressed);
    let started = std::time::Instant::now();
    // `inflate_all` checks the adapter's bound at every read.
    let result = inflate_all(&wire, &agreed(false, 15), 16 << 20, 1 << 16, 1 << 16).await;
    assert_eq!(result.unwrap_err().code, CloseCode::MESSAGE_TOO_BIG);
    // Also when the limit is passed inside one inflater call.
    let result = inflate_all(&wire, &agreed(false, 15), 1000, 1 << 16, 1 << 16).await;
    assert_eq!(result, Err(TOO_BIG));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn exactly_max_message_size_is_allowed() {
    let message = vec![b'x'; 100_000];
    let compressed = compressor(true, 15).compress(&message).unwrap();
    let wire = frame(true, 0x40, 0x2, &compressed);
    assert!(
        inflate_all(&wire, &agreed(false, 15), 100_000, 1 << 16, 1 << 16)
            .await
            .is_ok()
    );
    assert_eq!(
        inflate_all(&wire, &agreed(false, 15), 99_999, 1 << 16, 1 << 16).await,
        Err(TOO_BIG)
    );
}

#[tokio::test]
async fn corrupt_deflate_data_fails_with_1007() {
    // Block type 3 does not exist.
    let wire = frame(true, 0x40, 0x1, &[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, 100, 100).await,
        Err(CORRUPT)
    );
    // A distance before the start of the stream.
    let wire = frame(true, 0x40, 0x1, &[0xf2, 0x00, 0x11, 0x00, 0x00]);
    assert_eq!(
        inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, 100, 100).await,
        Err(CORRUPT)
    );
}

#[tokio::test]
async fn rsv1_on_a_continuation_fails_with_1002() {
    let mut wire = frame(false, 0x40, 0x1, &[0xf2, 0x48, 0xcd]);
    wire.extend(frame(true, 0x40, 0x0, &[0xc9, 0xc9, 0x07, 0x00]));
    assert_eq!(
        inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, 100, 100).await,
        Err(RSV1_CONTINUATION)
    );
    // Also on an uncompressed message's continuation.
    let mut wire = frame(false, 0, 0x1, b"a");
    wire.extend(frame(true, 0x40, 0x0, b"b"));
    assert_eq!(
        inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, 100, 100).await,
        Err(RSV1_CONTINUATION)
    );
}

#[tokio::test]
async fn rsv1_on_a_control_frame_fails_with_1002_after_what_came_before() {
    for opcode in [0x8, 0x9, 0xa] {
        let mut wire = frame(true, 0, 0x1, b"before");
        wire.extend(frame(true, 0x40, opcode, b""));
        let inner = &wire[..];
        let mut reader = InflateRead::new(inner, &DEFAULT_AGREED, 1 << 20);
        let mut buf = vec![0; 1024];
        // The frame before the bad one is delivered first.
        let n = reader.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &frame(true, 0, 0x1, b"before")[..]);
        let e = reader.read(&mut buf).await.unwrap_err();
        let violation = e.get_ref().unwrap().downcast_ref::<Violation>().unwrap();
        assert_eq!(*violation, RSV1_CONTROL);
        assert_eq!(violation.code, CloseCode::PROTOCOL_ERROR);
    }
}

#[tokio::test]
async fn a_new_message_inside_a_compressed_one_fails_with_1002() {
    for (rsv, opcode) in [(0x40, 0x1), (0, 0x1), (0, 0x2)] {
        let mut wire = frame(false, 0x40, 0x1, &[0xf2, 0x48, 0xcd]);
        wire.extend(frame(true, rsv, opcode, b"x"));
        assert_eq!(
            inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, 100, 100).await,
            Err(NEW_MESSAGE_INSIDE)
        );
    }
    // A compressed message inside an uncompressed one.
    let mut wire = frame(false, 0, 0x1, b"x");
    wire.extend(frame(
        true,
        0x40,
        0x1,
        &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
    ));
    assert_eq!(
        inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, 100, 100).await,
        Err(NEW_MESSAGE_INSIDE)
    );
}

#[tokio::test]
async fn uncompressed_frames_pass_byte_for_byte() {
    let mut wire = frame(true, 0, 0x1, b"hello");
    wire.extend(frame(false, 0, 0x2, &noise(70_000, 1)));
    wire.extend(frame(true, 0, 0x9, b"ping"));
    wire.extend(frame(true, 0, 0x0, &noise(300, 2)));
    wire.extend(frame(true, 0, 0x1, &[0xff, 0xfe])); // invalid UTF-8: not ours to judge
    wire.extend(frame(true, 0x20, 0x1, b"rsv2")); // fastwebsockets refuses it
    wire.extend(frame(true, 0x50, 0x1, b"rsv1+rsv3"));
    wire.extend(frame(true, 0x40, 0x3, b"reserved opcode"));
    wire.extend(frame(true, 0, 0x8, &[0x03, 0xe8]));
    wire.extend(frame(false, 0, 0x1, b"unfinished"));
    for piece in [1, 3, 7, 100, 1 << 20] {
        for ask in [1, 5, 8192] {
            let output = inflate_all(&wire, &DEFAULT_AGREED, 1 << 20, piece, ask)
                .await
                .unwrap();
            assert!(output == wire, "piece {piece} ask {ask}");
        }
    }
}

#[tokio::test]
async fn max_frame_size_bounds_compressed_and_inflated_frames() {
    let message = text(3).repeat(100);
    let mut comp = compressor(false, 15);
    let wire = client_wire(std::slice::from_ref(&message), &mut comp, usize::MAX);
    let compressed_len = parse(&wire)[0].payload.len();
    let mut reader = InflateRead::new(&wire[..], &DEFAULT_AGREED, 1 << 20).max_frame_size(1000);
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    let frames = parse(&out);
    assert!(frames.len() > 5);
    assert!(frames.iter().all(|f| f.payload.len() <= 1000));
    assert_eq!(messages(&frames), vec![(1, message)]);
    // A compressed frame over the limit.
    let mut reader =
        InflateRead::new(&wire[..], &DEFAULT_AGREED, 1 << 20).max_frame_size(compressed_len - 1);
    let e = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
    let violation = e.get_ref().unwrap().downcast_ref::<Violation>().unwrap();
    assert_eq!(*violation, FRAME_TOO_BIG);
}

#[tokio::test]
async fn uncompressed_reads_need_no_buffer_of_ours() {
    let mut wire = Vec::new();
    for i in 0..100 {
        wire.extend(frame(true, 0, 0x1, &text(i)));
    }
    let mut reader = InflateRead::new(&wire[..], &DEFAULT_AGREED, 1 << 20);
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, wire);
    assert_eq!(reader.held(), 0);
}

#[tokio::test]
async fn idle_state_is_dropped_without_context_takeover() {
    let mut comp = compressor(true, 15);
    let wire = client_wire(&[text(1).repeat(10)], &mut comp, usize::MAX);
    let mut reader = InflateRead::new(&wire[..], &agreed(true, 15), 1 << 20);
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    assert!(reader.inflation.inflater.is_none());
    assert_eq!(reader.held(), 0);
    // With context takeover, only the inflater stays.
    let mut comp = compressor(false, 15);
    let wire = client_wire(&[text(1).repeat(10)], &mut comp, usize::MAX);
    let mut reader = InflateRead::new(&wire[..], &agreed(false, 15), 1 << 20);
    reader.read_to_end(&mut Vec::new()).await.unwrap();
    assert!(reader.inflation.inflater.is_some());
    assert_eq!(reader.held(), 0);
}

#[test]
fn the_threshold_is_decided_before_compressing() {
    let agreed = DEFAULT_AGREED;
    let mut comp = Compressor::new(&agreed, &DeflateConfig::new().threshold(100));
    assert_eq!(comp.compress(&[b'a'; 99]), None);
    assert!(
        comp.deflater.is_none(),
        "nothing allocated for a small message"
    );
    assert!(comp.compress(&[b'a'; 100]).is_some());
    let mut comp = Compressor::new(&agreed, &DeflateConfig::new());
    assert_eq!(comp.compress(&[b'a'; DEFAULT_THRESHOLD - 1]), None);
    assert!(comp.compress(&[b'a'; DEFAULT_THRESHOLD]).is_some());
}

#[test]
fn compressed_output_has_no_trailer_and_inflates_with_it() {
    // Checked with a plain inflater kept across messages, independently of `InflateRead`.
    let mut comp = compressor(false, 15);
    let mut inflater = Decompress::new(false);
    for message in [text(1), text(2), vec![], vec![], noise(100_000, 9), text(1)] {
        let compressed = comp.compress(&message).unwrap();
        assert!(!compressed.ends_with(&TRAILER));
        let mut input = compressed.to_vec();
        input.extend_from_slice(&TRAILER);
        let mut out = Vec::with_capacity(message.len() + 64);
        inflater
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, message);
    }
}

#[test]
fn the_agreed_server_window_is_used() {
    // A 9-bit window cannot refer 1000 bytes back, a 15-bit one can.
    let block = noise(1000, 4);
    let message = block.repeat(4);
    let small = compressor(false, 9).compress(&message).unwrap();
    let large = compressor(false, 15).compress(&message).unwrap();
    assert!(small.len() > 3000, "{}", small.len());
    assert!(large.len() < 1500, "{}", large.len());
}

/// Memory per connection, by RSS: run with
/// `cargo test --lib deflate::tests::memory_per_connection -- --ignored --nocapture --test-threads=1`.
#[test]
#[ignore]
fn memory_per_connection() {
    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<usize>()
            .unwrap()
            * 4096
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    const N: usize = 500;
    for (server_nct, client_nct, bits) in [
        (false, false, 15),
        (true, false, 15),
        (false, true, 15),
        (true, true, 15),
        (false, false, 10),
    ] {
        let agreed = Agreed {
            server_no_context_takeover: server_nct,
            client_no_context_takeover: client_nct,
            server_max_window_bits: bits,
            client_max_window_bits: bits,
        };
        let message = text(1).repeat(20);
        let mut client = Compressor::new(
            &Agreed {
                server_no_context_takeover: client_nct,
                server_max_window_bits: bits,
                ..agreed
            },
            &DeflateConfig::new(),
        );
        let wire = client_wire(std::slice::from_ref(&message), &mut client, usize::MAX);
        let start = rss();
        let mut held = Vec::with_capacity(N);
        for _ in 0..N {
            let mut comp = Compressor::new(&agreed, &DeflateConfig::new());
            comp.compress(&message).unwrap();
            let mut reader = InflateRead::new(&wire[..], &agreed, 1 << 20);
            rt.block_on(reader.read_to_end(&mut Vec::new())).unwrap();
            held.push((comp, reader));
        }
        let per = (rss() - start) / N;
        println!(
            "server_no_context_takeover={server_nct} client_no_context_takeover={client_nct} \
             window={bits}: {} KiB per connection",
            per / 1024
        );
        drop(held);
    }
}
