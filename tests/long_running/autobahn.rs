//! The Autobahn TestSuite fuzzingclient against `examples/echo.rs`: categories 1 to 10 without
//! compression, and the compression categories 12 and 13 with `WS_DEFLATE=1`.
//! `scripts/autobahn.sh` installs wstest (Python 2.7 virtualenv) on first use, deals the cases
//! to two wstest processes, and with `--strict` fails on any FAILED or NON-STRICT case, or when
//! the suite overruns its limit. Its per-category summary and duration are printed
//! (`cargo test --all-features --test long_running autobahn -- --nocapture`).
//!
//! Categories 1 to 10 are not repeated with compression on: wstest offers permessage-deflate
//! only in 12 and 13, so against the deflate server they would take the same path as the plain
//! run (a layer with compression on that agreed none is covered by `tests/deflate.rs`).

use super::external;

#[test]
fn autobahn_categories_1_to_10_pass_strictly() {
    let out = external::run_script("scripts/autobahn.sh", &["--strict"], "AUTOBAHN_SERVER_CMD");
    // Guard against a run that silently selected nothing.
    let (passed, verdict) = passed(&out);
    assert!(passed >= 290, "only {passed} cases ran: {verdict}");
}

#[test]
fn autobahn_compression_categories_12_and_13_pass_strictly() {
    // The echo example with WS_DEFLATE=1 (compression on, every other default kept).
    let out = external::run_script_with(
        "scripts/autobahn.sh",
        // 585 s measured on a loaded 2-core machine: the limit sits 2x above it.
        &["--cases", "12.*,13.*", "--strict", "--limit", "1200"],
        "AUTOBAHN_SERVER_CMD",
        &[("WS_DEFLATE", "1")],
    );
    let (passed, verdict) = passed(&out);
    assert!(passed >= 216, "only {passed} cases ran: {verdict}");
}

/// How many cases passed, from the script's closing verdict, and the verdict.
fn passed(out: &str) -> (usize, &str) {
    let verdict = verdict(out);
    let passed = verdict["autobahn: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a passed count");
    (passed, verdict)
}

/// The script's closing verdict, checked for failures; its duration line is printed first.
fn verdict(out: &str) -> &str {
    if let Some(time) = out.lines().find(|l| l.starts_with("autobahn-time: ")) {
        eprintln!("{time}");
    }
    let verdict = out
        .lines()
        .find(|l| l.starts_with("autobahn: "))
        .expect("the script's closing line");
    assert!(verdict.ends_with(", 0 failed"), "{verdict}");
    verdict
}
