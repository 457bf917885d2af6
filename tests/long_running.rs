//! The suite's long-running tests, in one binary: `cargo test` runs test binaries one after
//! another but the tests of one binary side by side, so the five-minute soak runs while the
//! Autobahn TestSuite's compression run (minutes, spent mostly in wstest's own processes) does,
//! instead of adding its five minutes to the suite.
//!
//! - [`autobahn`]: the Autobahn TestSuite against `examples/echo.rs`.
//! - [`soak`]: five minutes of connection churn, then no socket, task or memory left over.

#[path = "common/mod.rs"]
mod common;

#[path = "common/external.rs"]
mod external;

#[path = "../examples/common/serve.rs"]
mod example_serve;

#[path = "long_running/autobahn.rs"]
mod autobahn;

#[path = "long_running/soak.rs"]
mod soak;
