//! A client nobody here wrote, in another language: Python `websockets` against
//! `examples/echo.rs` (`scripts/python-client.sh` installs it in a virtualenv on first use).

#[path = "common/external.rs"]
mod external;

#[test]
fn python_websockets_client_passes_against_echo() {
    let out = external::run_script("scripts/python-client.sh", &[], "PY_CLIENT_SERVER_CMD");
    let verdict = out
        .lines()
        .find(|l| l.starts_with("python-client: ") && l.contains(" passed, "))
        .expect("the script's closing line");
    assert!(verdict.ends_with(", 0 failed"), "{verdict}");
}

#[test]
fn python_websockets_client_with_permessage_deflate() {
    // The echo example with WS_DEFLATE=1; websockets keeps its compression context both ways.
    let out = external::run_script_with(
        "scripts/python-client.sh",
        &[],
        "PY_CLIENT_SERVER_CMD",
        &[("WS_DEFLATE", "1")],
    );
    assert!(out.contains("(permessage-deflate)"), "{out}");
    assert!(out.contains("ok   deflate_fragmented_messages"), "{out}");
    let verdict = out
        .lines()
        .find(|l| l.starts_with("python-client: ") && l.contains(" passed, "))
        .expect("the script's closing line");
    assert!(verdict.ends_with(", 0 failed"), "{verdict}");
}
