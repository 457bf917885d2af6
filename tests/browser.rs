//! The examples as a person uses them: headless Chromium opens the chat, live plot and echo
//! pages and drives them (`scripts/browser.sh` installs Debian's chromium and playwright-core on
//! first use, and runs `scripts/browser/run.mjs`).

use std::process::{Command, Stdio};

#[path = "common/external.rs"]
#[allow(dead_code)]
mod external;

/// The examples the browser checks run, and the variables that hand them to the script.
const EXAMPLES: [(&str, &str); 3] = [
    ("echo", "BROWSER_ECHO_BIN"),
    ("chat", "BROWSER_CHAT_BIN"),
    ("live_plot", "BROWSER_LIVE_PLOT_BIN"),
];

#[test]
fn examples_work_in_a_browser() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new("bash");
    cmd.arg(format!("{root}/scripts/browser.sh"))
        .current_dir(root)
        .stdin(Stdio::null());
    // Freshly built binaries, so that the script need not build them itself.
    for (name, var) in EXAMPLES {
        cmd.env(var, external::example_binary(name));
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/browser.sh: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(
        output.status.success(),
        "scripts/browser.sh failed:\n{text}"
    );
    let verdict = text
        .lines()
        .rev()
        .find(|l| l.starts_with("browser: ") && l.contains(" passed, "))
        .unwrap_or_else(|| panic!("no closing line in:\n{text}"));
    assert_eq!(verdict, "browser: 3 passed, 0 failed", "{text}");
}
