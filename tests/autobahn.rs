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
