//! A deterministic regression guard on the layer's cost: instructions counted by callgrind
//! (`bench/callgrind.sh`), for one upgrade and for one echoed message, as ratios to raw
//! fastwebsockets in the same build. Instruction counts do not depend on the machine's load,
//! unlike timings; the ratios do not depend on the compiler's exact output as much as the
//! absolute counts.
//!
//! The upgrade and message bounds sit about 3 % above what the layer measured when they were
//! set (see `docs/performance.md`): a change that makes either path noticeably more expensive
//! fails here, and one that makes it cheaper should lower them.

use std::process::Command;

/// Instructions per upgrade, layer / fastwebsockets inside an axum Router: 1.238 measured
/// (51 478 / 41 572 at `0f1344f`; 1.241 when the bound was set).
const MAX_UPGRADE_RATIO: f64 = 1.275;
/// Instructions per echoed 20-byte message, layer / fastwebsockets: 1.450 measured (5 373 /
/// 3 706, with the handoff of `socket::handoff`; 1.547 before it).
const MAX_MESSAGE_RATIO: f64 = 1.50;

/// Instructions per message delivered by a hub's publish to 1 000 in-memory subscribers
/// (20 bytes, one publish at a time; the publish, the connection task's write and the
/// client's read): an absolute count, about 10 % above the 2 862 measured (2 736 before the
/// hub's batches, whose one publish at a time makes a batch each), as there is no peer to
/// divide by.
const MAX_PUBLISH_DELIVERY: u64 = 3_150;
/// The same with the publishes 16 at a time, back to back (as they come under load): about
/// 15 % above the 403 measured (602 before the hub's batches, where each publish pushed into
/// every subscriber's queue).
const MAX_PUBLISH_BURST_DELIVERY: u64 = 465;

#[test]
fn upgrade_and_message_instruction_counts_stay_within_their_bounds() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/bench/callgrind.sh"))
        .current_dir(root)
        .env("KINDS", "layer fastwebsockets")
        .output()
        .expect("bash runs bench/callgrind.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench/callgrind.sh failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
    let ratio = |suffix: &str| -> f64 {
        stdout
            .lines()
            .find(|l| l.starts_with("layer ") && l.ends_with(suffix))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no `layer ... {suffix}` line in:\n{stdout}"))
    };
    let upgrade = ratio("x fastwebsockets in an axum Router");
    let message = ratio("x fastwebsockets per echoed message");
    // A run that counted nothing would give 0 or NaN: the ratios must be real.
    assert!(upgrade > 0.5 && message > 0.5, "{stdout}");
    assert!(
        upgrade <= MAX_UPGRADE_RATIO,
        "an upgrade costs {upgrade} x fastwebsockets' instructions, over the bound of \
         {MAX_UPGRADE_RATIO}:\n{stdout}"
    );
    let per_delivery = |row: &str| -> u64 {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(row))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{row}` line in:\n{stdout}"))
    };
    let delivery = per_delivery("publish-20B");
    let burst = per_delivery("publish-20B-burst");
    assert!(delivery > 100 && burst > 100, "{stdout}");
    assert!(
        delivery <= MAX_PUBLISH_DELIVERY,
        "a published message costs {delivery} instructions per delivery, over the bound of \
         {MAX_PUBLISH_DELIVERY}:\n{stdout}"
    );
    assert!(
        burst <= MAX_PUBLISH_BURST_DELIVERY,
        "a message published in a burst costs {burst} instructions per delivery, over the \
         bound of {MAX_PUBLISH_BURST_DELIVERY}:\n{stdout}"
    );
    assert!(
        message <= MAX_MESSAGE_RATIO,
        "an echoed message costs {message} x fastwebsockets' instructions, over the bound of \
         {MAX_MESSAGE_RATIO}:\n{stdout}"
    );
}
