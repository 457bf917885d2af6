//! The server processes a benchmark run starts: `bench server` and `bench fanout-server`, each
//! announcing itself with one `READY pid=<pid> addr=<addr>` line on stdout.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A server process, killed when dropped (also on panic); the kernel kills it too if this
/// process dies first (`--die-with-parent`, `PR_SET_PDEATHSIG` in the server).
pub struct ServerProcess {
    child: Child,
    /// The process id it announced (Bun's, for the `bun` kind, which `exec`s).
    pub pid: u32,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `command` and waits up to `wait` for its `READY` line; `what` names it in errors.
    /// Lines before `READY` are skipped (Bun may print other things first), and stdout is
    /// read to its end afterwards, so that a server writing more never gets `EPIPE`.
    pub fn spawn(mut command: Command, what: &str, wait: Duration) -> Result<Self, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut sent = false;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if !sent && line.starts_with("READY") {
                        let _ = tx.send(line);
                        sent = true;
                    }
                }
            });
        }
        // From here the child is killed on every way out.
        let mut server = ServerProcess {
            child,
            pid: 0,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = rx
            .recv_timeout(wait)
            .map_err(|_| format!("{what} did not say READY in {} s", wait.as_secs()))?;
        let (mut pid, mut addr) = (None, None);
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("pid=") {
                pid = v.parse().ok();
            } else if let Some(v) = field.strip_prefix("addr=") {
                addr = v.parse().ok();
            }
        }
        match (pid, addr) {
            (Some(pid), Some(addr)) if pid != 0 => {
                server.pid = pid;
                server.addr = addr;
                Ok(server)
            }
            _ => Err(format!("{what} said {line:?} instead of READY")),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name`, `Display` and `FromStr` for a fieldless enum whose values have names on the
/// command line and in tables: one list of names per enum.
macro_rules! named_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The name used on the command line and in tables.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(format!(
                        "unknown {} {s:?} (one of {})",
                        $what,
                        [$($name),+].join(", ")
                    )),
                }
            }
        }
    };
}
pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Colour {
        Red,
        DarkBlue,
    }

    super::named_enum!(Colour, "colour", { Red => "red", DarkBlue => "dark-blue" });

    #[test]
    fn names_parse_back_and_unknown_names_say_the_known_ones() {
        for c in [Colour::Red, Colour::DarkBlue] {
            assert_eq!(c.name().parse::<Colour>(), Ok(c));
            assert_eq!(c.to_string(), c.name());
        }
        assert_eq!(Colour::DarkBlue.name(), "dark-blue");
        assert_eq!(
            "blue".parse::<Colour>(),
            Err("unknown colour \"blue\" (one of red, dark-blue)".to_string())
        );
    }

    #[test]
    fn the_stub_is_named_but_not_run_by_default() {
        use crate::fanout_servers::FanoutKind;
        assert_eq!("stub".parse::<FanoutKind>(), Ok(FanoutKind::Stub));
        assert!(!FanoutKind::ALL.contains(&FanoutKind::Stub));
    }
}
