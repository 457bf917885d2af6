//! The tower-websocket benchmark: echo servers of several kinds, a load generator, and an
//! orchestrator that runs them side by side. See `docs/performance.md`.
//!
//! ```text
//! bench run [--quick] [--scenario NAME[,NAME...]] [--rounds R] [--duration S] [--warmup S]
//!           [--idle N] [--churn-workers N] [--kinds K[,K...]] [--runtime current|multi|both]
//!           [--max-quiet-wait S] [--retries N]
//! bench server <kind> [--addr 127.0.0.1:0] [--cpu N] [--runtime current|multi] [--die-with-parent]
//! bench fanout-server <fanout-kind> [--addr 127.0.0.1:0] [--cpu N] [--die-with-parent] [--bun PATH]
//! bench upgrade-cost <kind> --count N [--messages M]
//! bench redis-hub (--redis URL | --cluster URL,URL,...) [--messages N] [--rate R] [--seconds S] [--size B]
//! bench history [--messages N] [--size BYTES] [--redis URL]
//! bench fanout-client-cost [--subscribers N] [--rounds R] [--per-read K] [--size B]
//! ```
//!
//! Kinds: `layer`, `fastwebsockets`, `axum-ws`, `tcp`, and `fastwebsockets-aa` (the reference
//! again, for the run's A/A noise).
//! Fan-out kinds: `layer`, `bun`, `axum-broadcast`, `fastwebsockets-broadcast`, and `stub` (the
//! load generator's yardstick) when named.

mod client;
mod fanout;
mod fanout_servers;
mod history;
mod process;
mod publish_cost;
mod redis_hub;
mod report;
mod run;
mod servers;
mod sys;
mod upgrade_cost;
mod wire;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use servers::{Flavour, Kind};

const USAGE: &str = "\
usage:
  bench run [--quick] [--scenario NAME[,NAME...]] [--rounds R] [--duration S] [--warmup S]
            [--idle N] [--churn-workers N] [--kinds K[,K...]] [--runtime current|multi|both]
            [--max-quiet-wait S] [--retries N]
            [--fanout-kinds K[,K...]]
  bench server <kind> [--addr 127.0.0.1:0] [--cpu N] [--runtime current|multi] [--die-with-parent]
  bench fanout-server <fanout-kind> [--addr 127.0.0.1:0] [--cpu N] [--die-with-parent] [--bun PATH]
  bench upgrade-cost <kind> --count N [--messages M]
  bench redis-hub (--redis URL | --cluster URL,URL,...) [--messages N] [--rate R] [--seconds S] [--size B]
  bench history [--messages N] [--size BYTES] [--redis URL]
  bench publish-cost [--subscribers S] [--publishes N] [--burst K] [--size B] [--deflate off|shared|takeover] [--laggards L]
  bench fanout-client-cost [--subscribers N] [--rounds R] [--per-read K] [--size B]

kinds: layer, fastwebsockets, axum-ws, tcp, fastwebsockets-aa; `run` always adds
  fastwebsockets (the reference of every ratio) and fastwebsockets-aa (the same server again:
  the A/A ratio, the run's noise)
runtimes: current (current-thread) and multi (multi-thread, 2 workers); servers are pinned
  to CPU 0 with either; `run` runs both unless told otherwise
fan-out kinds: layer, bun, axum-broadcast, fastwebsockets-broadcast, bun-aa (Bun again: its
  ratio to bun is the A/A, the run's noise); and only when named: stub (the least a server
  can do: the load generator's own limit)
scenarios (--scenario takes name prefixes): rr-10x20B ... rr-500x64KiB, pipe-10x1KiBx16,
  pipe-100x20Bx8, idle-5000, idle-spoken-5000, churn; and only when named: fanout-{1000,10000}-{20B,1KiB}[-slow]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => parse_run(&args[1..]).and_then(|opts| run::run(&opts)),
        Some("server") => server(&args[1..]),
        Some("fanout-server") => fanout_server(&args[1..]),
        Some("upgrade-cost") => upgrade_cost(&args[1..]),
        Some("redis-hub") => redis_hub(&args[1..]),
        Some("history") => history(&args[1..]),
        Some("publish-cost") => publish_cost::main(&args[1..]),
        Some("fanout-client-cost") => fanout::client_cost(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Options as `--name value` pairs and bare flags.
struct Args<'a> {
    rest: &'a [String],
}

impl<'a> Args<'a> {
    fn next(&mut self) -> Option<&'a str> {
        let (first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    fn value(&mut self, flag: &str) -> Result<&'a str, String> {
        self.next().ok_or_else(|| format!("{flag} needs a value"))
    }

    fn parse<T: std::str::FromStr>(&mut self, flag: &str) -> Result<T, String> {
        let value = self.value(flag)?;
        value
            .parse()
            .map_err(|_| format!("{flag}: cannot read {value:?}"))
    }

    fn seconds(&mut self, flag: &str) -> Result<Duration, String> {
        let secs: f64 = self.parse(flag)?;
        if secs.is_finite() && secs >= 0.0 {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(format!("{flag}: seconds must be positive"))
        }
    }
}

fn parse_run(args: &[String]) -> Result<run::Options, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut opts = if quick {
        run::Options::quick()
    } else {
        run::Options::full()
    };
    let mut args = Args { rest: args };
    while let Some(arg) = args.next() {
        match arg {
            "--quick" => {}
            "--rounds" => opts.rounds = args.parse::<usize>(arg)?.max(1),
            "--duration" => opts.duration = args.seconds(arg)?,
            "--warmup" => opts.warmup = args.seconds(arg)?,
            "--idle" => opts.idle_conns = args.parse::<usize>(arg)?.max(1),
            "--churn-workers" => opts.churn_workers = args.parse::<usize>(arg)?.max(1),
            "--max-quiet-wait" => opts.max_quiet_wait = args.seconds(arg)?,
            "--retries" => opts.retries = args.parse(arg)?,
            "--runtime" => {
                opts.flavours = match args.value(arg)? {
                    "both" => Flavour::ALL.to_vec(),
                    one => vec![one
                        .parse::<Flavour>()
                        .map_err(|e| format!("--runtime: {e}, or both"))?],
                }
            }
            "--scenario" => opts
                .only
                .extend(args.value(arg)?.split(',').map(str::to_string)),
            "--kinds" => {
                opts.kinds = args
                    .value(arg)?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--fanout-kinds" => {
                opts.fanout_kinds = args
                    .value(arg)?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    if opts.duration.is_zero() {
        return Err("--duration must be more than 0".to_string());
    }
    Ok(opts)
}

fn server(args: &[String]) -> Result<(), String> {
    let mut args = Args { rest: args };
    let kind: Kind = args.value("server")?.parse()?;
    let mut addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut cpu = None;
    let mut flavour = Flavour::Current;
    while let Some(arg) = args.next() {
        match arg {
            "--addr" => addr = args.parse(arg)?,
            "--cpu" => cpu = Some(args.parse(arg)?),
            "--runtime" => flavour = args.parse(arg)?,
            "--die-with-parent" => sys::die_with_parent(),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    servers::serve(kind, addr, cpu, flavour).map_err(|e| format!("{kind} server: {e}"))
}

fn fanout_server(args: &[String]) -> Result<(), String> {
    let mut args = Args { rest: args };
    let kind: fanout_servers::FanoutKind = args.value("fanout-server")?.parse()?;
    let mut addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut cpu = None;
    let mut bun = None;
    while let Some(arg) = args.next() {
        match arg {
            "--addr" => addr = args.parse(arg)?,
            "--cpu" => cpu = Some(args.parse(arg)?),
            "--bun" => bun = Some(std::path::PathBuf::from(args.value(arg)?)),
            "--die-with-parent" => sys::die_with_parent(),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    fanout_servers::serve(kind, addr, cpu, bun.as_deref())
        .map_err(|e| format!("{kind} server: {e}"))
}

fn upgrade_cost(args: &[String]) -> Result<(), String> {
    let mut args = Args { rest: args };
    let kind: Kind = args.value("upgrade-cost")?.parse()?;
    let mut count = 1000;
    let mut messages = 0;
    while let Some(arg) = args.next() {
        match arg {
            "--count" => count = args.parse(arg)?,
            "--messages" => messages = args.parse(arg)?,
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    upgrade_cost::run(kind, count, messages)
}

fn redis_hub(args: &[String]) -> Result<(), String> {
    let mut args = Args { rest: args };
    let mut opts = redis_hub::Options {
        url: String::new(),
        cluster: Vec::new(),
        messages: 200_000,
        rate: 10_000,
        seconds: 5,
        size: 64,
    };
    while let Some(arg) = args.next() {
        match arg {
            "--redis" => opts.url = args.value(arg)?.to_string(),
            "--cluster" => opts.cluster = args.value(arg)?.split(',').map(str::to_string).collect(),
            "--messages" => opts.messages = args.parse::<usize>(arg)?.max(1),
            "--rate" => opts.rate = args.parse::<u64>(arg)?.max(1),
            "--seconds" => opts.seconds = args.parse::<u64>(arg)?.max(1),
            "--size" => opts.size = args.parse::<usize>(arg)?.max(8),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    if opts.url.is_empty() && opts.cluster.is_empty() {
        return Err(format!(
            "redis-hub needs --redis URL or --cluster URL,URL,...\n{USAGE}"
        ));
    }
    redis_hub::run(&opts)
}

fn history(args: &[String]) -> Result<(), String> {
    let mut args = Args { rest: args };
    let mut messages = 100_000;
    let mut size = 64;
    let mut redis = None;
    while let Some(arg) = args.next() {
        match arg {
            "--messages" => messages = args.parse(arg)?,
            "--size" => size = args.parse(arg)?,
            "--redis" => redis = Some(args.value(arg)?.to_string()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    if messages == 0 {
        return Err("--messages must be at least 1".into());
    }
    match redis {
        Some(url) => history::run_redis(&url, messages, size),
        None => history::run(messages, size),
    }
}
