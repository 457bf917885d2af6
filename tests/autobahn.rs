//! The Autobahn TestSuite fuzzingclient, categories 1 to 10, against `examples/echo.rs`.
//! `scripts/autobahn.sh` installs wstest (Python 2.7 virtualenv) on first use; run with
//! `--strict`, it fails on any FAILED or NON-STRICT case. Its per-category summary is printed
//! (`cargo test --test autobahn -- --nocapture`).

#[path = "common/external.rs"]
mod external;

#[test]
fn autobahn_categories_1_to_10_pass_strictly() {
    let out = external::run_script("scripts/autobahn.sh", &["--strict"], "AUTOBAHN_SERVER_CMD");
    let verdict = out
        .lines()
        .find(|l| l.starts_with("autobahn: "))
        .expect("the script's closing line");
    assert!(verdict.ends_with(", 0 failed"), "{verdict}");
    // Guard against a run that silently selected nothing.
    let passed: usize = verdict["autobahn: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a passed count");
    assert!(passed >= 290, "only {passed} cases ran: {verdict}");
}

#[test]
fn autobahn_with_permessage_deflate_passes_strictly_1_to_10_and_12_13() {
    // The echo example with WS_DEFLATE=1 (compression on, every other default kept).
    let out = external::run_script_with(
        "scripts/autobahn.sh",
        &[
            "--cases",
            "1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,12.*,13.*",
            "--strict",
        ],
        "AUTOBAHN_SERVER_CMD",
        &[("WS_DEFLATE", "1")],
    );
    let verdict = out
        .lines()
        .find(|l| l.starts_with("autobahn: "))
        .expect("the script's closing line");
    assert!(verdict.ends_with(", 0 failed"), "{verdict}");
    let passed: usize = verdict["autobahn: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a passed count");
    assert!(passed >= 500, "only {passed} cases ran: {verdict}");
}
