//! Running the repository's scripts that drive the echo example with clients in other
//! languages (the Autobahn TestSuite, Python `websockets`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The scripts share their work directories under `target/` (a virtualenv, a report
/// directory): the tests of one binary run them one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `script` from the repository root with `server_env` pointing at the freshly built echo
/// example, and panics with its output unless it exits 0. Returns the output.
pub(crate) fn run_script(script: &str, args: &[&str], server_env: &str) -> String {
    run_script_with(script, args, server_env, &[])
}

/// As [`run_script`], with more environment for the script and the server it starts.
pub(crate) fn run_script_with(
    script: &str,
    args: &[&str],
    server_env: &str,
    env: &[(&str, &str)],
) -> String {
    let _turn = one_at_a_time();
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new("bash");
    cmd.arg(format!("{root}/{script}"))
        .args(args)
        .current_dir(root)
        .envs(env.iter().copied());
    cmd.env(server_env, example_binary("echo"));
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

/// An example's binary, built now with every feature (a no-op when it is up to date), so that
/// a test never drives a stale binary: `cargo test --test X` alone does not rebuild examples.
pub(crate) fn example_binary(name: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--all-features", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("running cargo build");
    assert!(status.success(), "cargo build --example {name} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("debug").join("examples").join(name)
}
