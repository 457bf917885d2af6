//! The write side: whole messages compressed, the trailer removed (RFC 7692 section 7.2.1).

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};

use super::*;

/// Compresses the server's outgoing messages, one whole message at a time.
pub(crate) struct Compressor {
    level: Compression,
    window_bits: u8,
    threshold: usize,
    no_context_takeover: bool,
    /// Made at the first compressed message; without context takeover, dropped after each.
    pub(super) deflater: Option<Compress>,
    /// Messages compressed, for tests that check a shared frame was compressed once.
    #[cfg(test)]
    pub(crate) compressions: usize,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("level", &self.level.level())
            .field("window_bits", &self.window_bits)
            .field("threshold", &self.threshold)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("allocated", &self.deflater.is_some())
            .finish()
    }
}

impl Compressor {
    pub(crate) fn new(agreed: &Agreed, config: &DeflateConfig) -> Self {
        Compressor {
            level: Compression::new(config.level),
            window_bits: agreed.server_max_window_bits.clamp(9, 15),
            threshold: config.threshold,
            no_context_takeover: agreed.server_no_context_takeover,
            deflater: None,
            #[cfg(test)]
            compressions: 0,
        }
    }

    /// For a compressor without context takeover, the settings that decide its output (with
    /// the message): sockets whose settings are equal can share one compressed copy of a
    /// message. `None` with context takeover, where the output depends on earlier messages.
    pub(crate) fn shared_settings(&self) -> Option<SharedSettings> {
        self.no_context_takeover.then_some(SharedSettings {
            level: self.level.level(),
            window_bits: self.window_bits,
            threshold: self.threshold,
        })
    }

    /// The compressed payload of a whole message (deflate output with the trailing
    /// `00 00 ff ff` removed), or `None` when the message is below the threshold (send it
    /// uncompressed, RSV1 clear).
    ///
    /// Every message this returns `Some` for must be sent, in order: with context takeover,
    /// later messages refer back to it.
    pub(crate) fn compress(&mut self, payload: &[u8]) -> Option<Bytes> {
        if payload.len() < self.threshold {
            return None;
        }
        #[cfg(test)]
        {
            self.compressions += 1;
        }
        let (level, bits) = (self.level, self.window_bits);
        let deflater = self
            .deflater
            .get_or_insert_with(|| Compress::new_with_window_bits(level, false, bits));
        let out = sync_flush(deflater, payload);
        if self.no_context_takeover {
            self.deflater = None;
        }
        match out {
            Some(mut out) if out.ends_with(&TRAILER) => {
                out.truncate(out.len() - TRAILER.len());
                Some(Bytes::from(out))
            }
            // No new input since the last flush: zlib has nothing to write. The message is
            // then an empty stored block, whose first byte the receiver cannot put back
            // (RFC 7692 section 7.2.3.6).
            Some(out) if out.is_empty() => Some(Bytes::from_static(&[0x00])),
            _ => {
                // Cannot happen with zlib; should it, start a fresh stream (the peer's
                // inflater takes it as a continuation) and send this one uncompressed.
                self.deflater = None;
                None
            }
        }
    }
}

/// What decides a compressor's output when it keeps no context between messages: see
/// [`Compressor::shared_settings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedSettings {
    level: u32,
    window_bits: u8,
    threshold: usize,
}

/// Compresses all of `input` and sync-flushes: the output ends at a byte boundary, with an
/// empty stored block (`00 00 ff ff`).
pub(super) fn sync_flush(deflater: &mut Compress, input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let mut consumed = 0;
    loop {
        // zlib asks for more than 6 bytes of room when flushing.
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let before = deflater.total_in();
        deflater
            .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        consumed += (deflater.total_in() - before) as usize;
        // The flush is complete when zlib stops with room to spare.
        if consumed == input.len() && out.len() < out.capacity() {
            return Some(out);
        }
    }
}
