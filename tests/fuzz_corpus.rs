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
