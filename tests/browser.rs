//! The examples as a person uses them: headless Chromium opens the chat, live plot and echo
//! pages and drives them (`scripts/browser.sh` installs Debian's chromium and playwright-core on
//! first use, and runs `scripts/browser/run.mjs`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The examples the browser checks run, and the variables that hand them to the script.
const EXAMPLES: [(&str, &str); 3] = [
    ("echo", "BROWSER_ECHO_BIN"),
    ("chat", "BROWSER_CHAT_BIN"),
    ("live_plot", "BROWSER_LIVE_PLOT_BIN"),
];

/// An example as `cargo test` built it, next to this test binary (`target/debug/examples`).
fn built_example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.is_file().then_some(path)
}

#[test]
fn examples_work_in_a_browser() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new("bash");
    cmd.arg(format!("{root}/scripts/browser.sh"))
        .current_dir(root)
        .stdin(Stdio::null());
    // Hand over all three or none: with none, the script builds them itself.
    let built: Vec<_> = EXAMPLES
        .iter()
        .filter_map(|(name, var)| built_example(name).map(|path| (var, path)))
        .collect();
    if built.len() == EXAMPLES.len() {
        for (var, path) in built {
            cmd.env(var, path);
        }
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
