//! A client nobody here wrote, speaking the legacy drafts: Perl's `Protocol::WebSocket`
//! (Debian's libprotocol-websocket-perl, which `scripts/perl-client.sh` installs when
//! missing) with hixie-76 and hixie-75 against `examples/echo.rs` with `WS_LEGACY=1`.

#[path = "common/external.rs"]
#[allow(dead_code)] // only `run_script_with` is used here
mod external;

#[test]
fn perl_protocol_websocket_speaks_hixie76_and_hixie75_with_echo() {
    let out = external::run_script_with(
        "scripts/perl-client.sh",
        &[],
        "PERL_CLIENT_SERVER_CMD",
        &[("WS_LEGACY", "1")],
    );
    for check in [
        "hixie-76 handshake",
        "hixie-76 close",
        "hixie-75 handshake",
        "hixie-75 close",
    ] {
        assert!(out.contains(&format!("ok   {check}")), "{check}:\n{out}");
    }
    let verdict = out
        .lines()
        .find(|l| l.starts_with("perl-client: ") && l.contains(" passed, "))
        .expect("the script's closing line");
    assert!(verdict.ends_with(", 0 failed"), "{verdict}");
}
