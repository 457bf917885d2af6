//! The suite's long-running tests, in one binary: `cargo test` runs test binaries one after
//! another but the tests of one binary side by side, so the five-minute soak runs while the
//! Autobahn TestSuite's compression run (minutes, spent mostly in wstest's own processes) does,
//! instead of adding its five minutes to the suite.
//!
//! - [`soak`]: five minutes of connection churn, then no socket, task or memory left over.
//! - [`wstest`]: the Autobahn TestSuite against `examples/echo.rs`, its two runs one at a time.
//!
//! The order matters on a 2-core machine, where libtest runs two tests at once and starts them
//! in the order of their names: the soak's name sorts first, so it starts at once beside the
//! first Autobahn run, and the second Autobahn run takes the first one's thread when it ends.
//! Were both Autobahn runs started first, the one waiting for the other (they take turns)
//! would hold the second thread, and the soak would start only after the first Autobahn run:
//! 680 s for the binary instead of 410 s (CI on `d24672d`, where the compression run won the race).

#[path = "common/mod.rs"]
mod common;

#[path = "common/external.rs"]
mod external;

#[path = "../examples/common/serve.rs"]
mod example_serve;

// Named for the Autobahn client it runs, and so that its tests sort after the soak's.
#[path = "long_running/autobahn.rs"]
mod wstest;

#[path = "long_running/soak.rs"]
mod soak;
