//! Replays the fuzz targets' checked-in corpora (`fuzz/corpus/TARGET/*`) through the same entry
//! points as `fuzz/fuzz_targets/`, on stable: an input that once crashed a target, added to
//! its corpus, stays fixed.
#![cfg(feature = "fuzzing")]

use std::path::PathBuf;

use tower_websocket::fuzzing;

/// Every file of one target's corpus, by name; at least one.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, data)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    for (name, data) in corpus(target) {
        eprintln!("{target}/{name}: {} bytes", data.len());
        run(&data);
    }
}

#[test]
fn connection_corpus() {
    replay("connection", fuzzing::connection);
}

#[test]
fn handshake_corpus() {
    replay("handshake", fuzzing::handshake);
}

#[test]
fn close_payload_corpus() {
    replay("close_payload", fuzzing::close_payload);
}

#[test]
fn hub_corpus() {
    replay("hub", fuzzing::hub);
}

#[cfg(feature = "hixie76")]
#[test]
fn legacy_reader_corpus() {
    replay("legacy_reader", fuzzing::legacy_reader);
}

/// The hub target on a few thousand generated sequences as well (a fixed seed, so a failure
/// reproduces): its model of batches, reservations and seals against the hub, beyond the
/// corpus's seeds.
#[test]
fn hub_generated_sequences() {
    // xorshift64*: no dependency, the same bytes on every machine.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for round in 0..3000 {
        let len = 2 * (1 + next() % 120) as usize;
        // Every other sequence stays on one topic with publishes most of the time, so that
        // batches fill, grow with the traffic and queues fill; the others mix everything,
        // with publishes about half the time.
        let focused = round % 2 == 1;
        let data: Vec<u8> = (0..len)
            .map(|i| {
                let r = next();
                match (i % 2, focused) {
                    (0, true) if r % 10 < 8 => 2 + (r >> 8) as u8 % 2,
                    (0, false) if r % 2 == 0 => 2 + (r >> 8) as u8 % 2,
                    // Topic 0: `arg / 4 % 3 == 0`.
                    (1, true) => ((r >> 16) as u8 % 21) * 12 + (r >> 24) as u8 % 4,
                    _ => (r >> 16) as u8,
                }
            })
            .collect();
        fuzzing::hub(&data);
    }
}
