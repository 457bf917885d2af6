//! Running the repository's scripts that drive the echo example with clients in other
//! languages (the Autobahn TestSuite, Python `websockets`).

use std::path::PathBuf;
use std::process::Command;

/// The echo example as `cargo test` built it, next to this test binary (`target/debug/examples`).
pub(crate) fn built_echo_example() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let echo = profile_dir.join("examples").join("echo");
    echo.is_file().then_some(echo)
}

/// Runs `script` from the repository root with `server_env` pointing at the built example
/// (the script builds it itself when it is missing), and panics with its output unless it
/// exits 0. Returns the output.
pub(crate) fn run_script(script: &str, args: &[&str], server_env: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new("bash");
    cmd.arg(format!("{root}/{script}"))
        .args(args)
        .current_dir(root);
    if let Some(echo) = built_echo_example() {
        cmd.env(server_env, echo);
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(output.status.success(), "{script} failed:\n{text}");
    text
}
