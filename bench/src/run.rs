//! `bench run`: the orchestrator. For each round, each scenario, each server runtime flavour
//! and each server kind (in an order rotated by one every round), it starts a fresh server
//! process pinned to CPU 0, runs the load generator in-process pinned to CPU 1, kills the
//! server, and keeps the figures. At the end it prints, per scenario and flavour, each kind's
//! median over the rounds and the median of the per-round ratios to raw fastwebsockets, with
//! the A/A ratio (fastwebsockets-aa to fastwebsockets) as the noise those ratios are read
//! against; then a summary of the ratios in one place.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{self, EchoLoad};
use crate::process::ServerProcess;
use crate::report::{self, Column, Sample, ScenarioResults};
use crate::servers::{Flavour, Kind};
use crate::sys;

/// The CPU the servers run on.
const SERVER_CPU: usize = 0;
/// The CPU the load generator runs on.
const CLIENT_CPU: usize = 1;

/// `bench run`'s options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds: every scenario runs once per kind per round.
    pub rounds: usize,
    /// Warm-up before each measured window.
    pub warmup: Duration,
    /// Each measured window.
    pub duration: Duration,
    /// Connections of the idle scenario.
    pub idle_conns: usize,
    /// Parallel workers of the upgrade churn.
    pub churn_workers: usize,
    /// Scenario name prefixes to run (all when empty).
    pub only: Vec<String>,
    /// Server kinds to run; fastwebsockets is always added, as the reference, and
    /// fastwebsockets-aa, as the reference's A/A copy.
    pub kinds: Vec<Kind>,
    /// The server runtimes to run every scenario on, each with tables of its own.
    pub flavours: Vec<Flavour>,
    /// How long to wait, before each run, for other processes to leave the CPUs alone.
    pub max_quiet_wait: Duration,
    /// Server kinds of the fan-out scenarios (`crate::fanout`).
    pub fanout_kinds: Vec<crate::fanout_servers::FanoutKind>,
    /// How many times a run disturbed by other processes is done again.
    pub retries: usize,
}

impl Options {
    /// The full run's defaults.
    pub fn full() -> Self {
        Options {
            rounds: 5,
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs(1),
            idle_conns: 5000,
            churn_workers: 16,
            only: Vec::new(),
            kinds: Kind::ALL.to_vec(),
            flavours: Flavour::ALL.to_vec(),
            max_quiet_wait: Duration::from_secs(120),
            fanout_kinds: crate::fanout_servers::FanoutKind::ALL.to_vec(),
            retries: 2,
        }
    }

    /// `--quick`: a smoke run.
    pub fn quick() -> Self {
        Options {
            rounds: 1,
            warmup: Duration::from_millis(300),
            duration: Duration::from_secs(1),
            idle_conns: 500,
            max_quiet_wait: Duration::from_secs(5),
            ..Options::full()
        }
    }
}

/// What one scenario does.
#[derive(Debug, Clone)]
pub enum Scenario {
    /// Echo load: request/response when `depth` is 1, pipelined otherwise.
    Echo { name: String, load: EchoLoad },
    /// Idle connections held open, to weigh the server's memory per connection; `spoken`:
    /// each has had one message echoed first.
    Idle {
        name: String,
        conns: usize,
        spoken: bool,
    },
    /// Connect, upgrade, close, over parallel workers.
    Churn { name: String, workers: usize },
}

impl Scenario {
    /// The scenario's name, as `--scenario` matches it.
    pub fn name(&self) -> &str {
        match self {
            Scenario::Echo { name, .. }
            | Scenario::Idle { name, .. }
            | Scenario::Churn { name, .. } => name,
        }
    }

    /// One line saying what the scenario is.
    pub fn describe(&self, opts: &Options) -> String {
        let timing = format!(
            "; {:.1} s warm-up, {:.1} s measured",
            opts.warmup.as_secs_f64(),
            opts.duration.as_secs_f64()
        );
        match self {
            Scenario::Echo { load, .. } if load.depth == 1 => format!(
                "request/response: {} connections x {}, 1 in flight each{timing}",
                load.conns,
                size_name(load.size)
            ),
            Scenario::Echo { load, .. } => format!(
                "pipelined: {} connections x {}, {} in flight each{timing}",
                load.conns,
                size_name(load.size),
                load.depth
            ),
            Scenario::Idle {
                conns,
                spoken: false,
                ..
            } => format!(
                "{conns} idle connections: server RSS growth per connection, (VmRSS after - before) / {conns}"
            ),
            Scenario::Idle {
                conns,
                spoken: true,
                ..
            } => format!(
                "{conns} connections idle after one 20 B message each way: server RSS growth per connection, (VmRSS after - before) / {conns}"
            ),
            Scenario::Churn { workers, .. } => format!(
                "upgrade churn: {workers} workers, each looping connect + upgrade + close frame + close reply + server FIN{timing}"
            ),
        }
    }

    /// The figures this scenario reports.
    pub fn columns(&self) -> &'static [Column] {
        match self {
            Scenario::Echo { .. } => report::ECHO_COLUMNS,
            Scenario::Idle { .. } => report::IDLE_COLUMNS,
            Scenario::Churn { .. } => report::CHURN_COLUMNS,
        }
    }
}

fn size_name(size: usize) -> String {
    if size >= 1024 && size % 1024 == 0 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn size_tag(size: usize) -> String {
    size_name(size).replace(' ', "")
}

/// Every scenario of the issue, in run order.
pub fn scenarios(opts: &Options) -> Vec<Scenario> {
    let mut all = Vec::new();
    for conns in [10, 100, 500] {
        for size in [20, 1024, 64 * 1024] {
            all.push(Scenario::Echo {
                name: format!("rr-{conns}x{}", size_tag(size)),
                load: EchoLoad {
                    conns,
                    size,
                    depth: 1,
                },
            });
        }
    }
    for (conns, size, depth) in [(10, 1024, 16), (100, 20, 8)] {
        all.push(Scenario::Echo {
            name: format!("pipe-{conns}x{}x{depth}", size_tag(size)),
            load: EchoLoad { conns, size, depth },
        });
    }
    all.push(Scenario::Idle {
        name: format!("idle-{}", opts.idle_conns),
        conns: opts.idle_conns,
        spoken: false,
    });
    all.push(Scenario::Idle {
        name: format!("idle-spoken-{}", opts.idle_conns),
        conns: opts.idle_conns,
        spoken: true,
    });
    all.push(Scenario::Churn {
        name: "churn".to_string(),
        workers: opts.churn_workers,
    });
    all.retain(|s| {
        opts.only.is_empty()
            || opts.only.iter().any(|p| {
                s.name()
                    .to_ascii_lowercase()
                    .starts_with(&p.to_ascii_lowercase())
            })
    });
    all
}

/// Starts `bench server <kind>` on [`SERVER_CPU`].
fn spawn_server(exe: &Path, kind: Kind, flavour: Flavour) -> Result<ServerProcess, String> {
    let mut command = Command::new(exe);
    command
        .args(["server", kind.name(), "--addr", "127.0.0.1:0"])
        .args(["--runtime", flavour.name()])
        .args(["--cpu", &SERVER_CPU.to_string(), "--die-with-parent"]);
    ServerProcess::spawn(command, &format!("{kind} server"), Duration::from_secs(10))
}

/// Other processes may use at most this much of one core before a run starts, in percent.
const QUIET_PERCENT: f64 = 10.0;
/// A run during which other processes used more than this much of one core (in percent) is
/// done again, at most `Options::retries` times.
const DISTURBED_PERCENT: f64 = 15.0;

/// Waits until the rest of the machine is quiet (other processes using under
/// `QUIET_PERCENT` of one core over a quarter of a second), for at most `max`. Returns how busy it
/// still was when it gave up.
pub(crate) fn wait_for_quiet(max: Duration) -> Result<(), f64> {
    let deadline = Instant::now() + max;
    loop {
        let window = Duration::from_millis(250);
        let busy = match sys::machine_busy() {
            Ok(before) => {
                std::thread::sleep(window);
                sys::machine_busy().map_or(0.0, |after| {
                    100.0 * after.saturating_sub(before).as_secs_f64() / window.as_secs_f64()
                })
            }
            Err(_) => return Ok(()),
        };
        if busy < QUIET_PERCENT {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(busy);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Runs one scenario against one fresh server.
fn run_one(
    runtime: &tokio::runtime::Runtime,
    exe: &Path,
    scenario: &Scenario,
    kind: Kind,
    flavour: Flavour,
    opts: &Options,
) -> Result<Sample, String> {
    let server = spawn_server(exe, kind, flavour)?;
    let (addr, pid) = (server.addr, server.pid);
    let limit = opts.warmup + opts.duration + Duration::from_secs(60);
    let sample = runtime.block_on(async {
        let work = async {
            match scenario {
                Scenario::Echo { load, .. } => {
                    let mut m = client::echo(addr, pid, *load, opts.warmup, opts.duration).await?;
                    Ok(Sample::measured(&mut m))
                }
                Scenario::Idle { conns, spoken, .. } => {
                    // A connection that has spoken gives its read buffer back one to two
                    // seconds after its last frame.
                    let settle = Duration::from_secs(if *spoken { 3 } else { 1 });
                    let idle = client::idle(addr, pid, *conns, settle, *spoken).await?;
                    Ok(Sample::idle(&idle))
                }
                Scenario::Churn { workers, .. } => {
                    let mut m =
                        client::churn(addr, pid, *workers, opts.warmup, opts.duration).await?;
                    Ok(Sample::measured(&mut m))
                }
            }
        };
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result.map_err(|e: std::io::Error| e.to_string()),
            Err(_) => Err(format!("timed out after {limit:?}")),
        }
    });
    drop(server);
    sample
}

/// `bench run`.
pub fn run(opts: &Options) -> Result<(), String> {
    let fanout = crate::fanout::scenarios(&opts.only);
    let scenarios = scenarios(opts);
    if scenarios.is_empty() && !fanout.is_empty() {
        return crate::fanout::run(opts, &fanout);
    }
    if scenarios.is_empty() {
        return Err(format!("no scenario matches {:?}", opts.only));
    }
    if opts.flavours.is_empty() {
        return Err("no server runtime to run".to_string());
    }
    let mut kinds: Vec<Kind> = Vec::new();
    for &kind in &opts.kinds {
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if !kinds.contains(&Kind::Fastwebsockets) {
        kinds.insert(0, Kind::Fastwebsockets);
    }
    // Last in the list, so that over the rotated rounds it is as often next to the reference
    // as any other kind is, not always.
    if !kinds.contains(&Kind::FastwebsocketsAa) {
        kinds.push(Kind::FastwebsocketsAa);
    }
    let nofile = sys::raise_nofile_limit().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let idle_max = scenarios
        .iter()
        .filter_map(|s| match s {
            Scenario::Idle { conns, .. } => Some(*conns),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    if (idle_max as u64) + 100 > nofile {
        return Err(format!(
            "{idle_max} idle connections need more open files than the limit ({nofile})"
        ));
    }
    let cpus = sys::available_cpus();
    if cpus >= 2 {
        sys::pin_to_cpu(CLIENT_CPU).map_err(|e| format!("pinning to CPU {CLIENT_CPU}: {e}"))?;
    } else {
        eprintln!("warning: one CPU only: server and load generator share it");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;

    println!("tower-websocket benchmark");
    println!(
        "  {} rounds; kinds: {}; server on CPU {SERVER_CPU} ({}), load generator on CPU {CLIENT_CPU} (current-thread runtime)",
        opts.rounds,
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
        opts.flavours
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.describe()))
            .collect::<Vec<_>>()
            .join("; "),
    );
    println!("  {}", machine_summary());
    if let Some(revision) = source_revision() {
        println!("  tower-websocket source: {revision}");
    }
    if let Some(load) = sys::load_average() {
        println!("  load average at start: {load:.2}");
    }
    println!();

    let started = Instant::now();
    let mut noisy = 0;
    let mut retries = 0;
    let mut disturbed = 0;
    let mut quiet_wait = Duration::ZERO;
    // One table per (scenario, flavour), flavours of a scenario next to each other.
    let mut results: Vec<ScenarioResults> = scenarios
        .iter()
        .flat_map(|s| {
            opts.flavours.iter().map(|&flavour| {
                ScenarioResults::new(s.name(), s.describe(opts), s.columns(), &kinds, opts.rounds)
                    .runtime(flavour.name())
                    .noise(Kind::FastwebsocketsAa)
            })
        })
        .collect();
    let runs = scenarios
        .iter()
        .flat_map(|s| opts.flavours.iter().map(move |&f| (s, f)));
    for round in 0..opts.rounds {
        let mut order = kinds.clone();
        order.rotate_left(round % kinds.len());
        for ((scenario, flavour), result) in runs.clone().zip(results.iter_mut()) {
            for &kind in &order {
                // Attempts disturbed by other processes, with how disturbed each was; the
                // least disturbed one is kept.
                let mut attempts: Vec<(f64, Sample)> = Vec::new();
                let outcome = loop {
                    let waited = Instant::now();
                    if let Err(busy) = wait_for_quiet(opts.max_quiet_wait) {
                        noisy += 1;
                        eprintln!(
                            "  (other processes still use {busy:.0}% of a core: running anyway)"
                        );
                    }
                    quiet_wait += waited.elapsed();
                    let outcome = run_one(&runtime, &exe, scenario, kind, flavour, opts);
                    let line = match &outcome {
                        Ok(sample) => sample.brief(scenario.columns()),
                        Err(e) => format!("FAILED: {e}"),
                    };
                    eprintln!(
                        "[{:>6.1}s] round {}/{} {:<16} {:<7} {:<17} {line}",
                        started.elapsed().as_secs_f64(),
                        round + 1,
                        opts.rounds,
                        scenario.name(),
                        flavour.name(),
                        kind.name(),
                    );
                    let sample = match outcome {
                        Ok(sample) => sample,
                        Err(_) => break None,
                    };
                    let other = sample
                        .value(scenario.columns(), report::OTHER_CPU)
                        .unwrap_or(0.0);
                    if other <= DISTURBED_PERCENT {
                        break Some(sample);
                    }
                    attempts.push((other, sample));
                    if attempts.len() > opts.retries {
                        disturbed += 1;
                        if attempts.len() > 1 {
                            eprintln!(
                                "  (kept the least disturbed of {} attempts)",
                                attempts.len()
                            );
                        } else {
                            eprintln!(
                                "  (other processes used {other:.0}% of a core during the window: kept)"
                            );
                        }
                        break attempts
                            .into_iter()
                            .min_by(|a, b| a.0.total_cmp(&b.0))
                            .map(|(_, sample)| sample);
                    }
                    retries += 1;
                    eprintln!(
                        "  (other processes used {other:.0}% of a core during the window: again)"
                    );
                };
                result.record(kind, round, outcome);
            }
        }
    }
    let elapsed = started.elapsed();
    for result in &results {
        println!("{}", result.table(Kind::Fastwebsockets));
    }
    println!(
        "{}",
        report::summary(&results, Kind::Fastwebsockets, Kind::FastwebsocketsAa)
    );
    println!(
        "Whole run: {:.0} s. Each figure is the median over rounds; (x) is the median of the per-round ratios to fastwebsockets \
         in the same round and runtime; ~ marks a ratio inside the A/A band (not told apart from noise).",
        elapsed.as_secs_f64()
    );
    println!(
        "Waited {:.0} s in all for other processes to leave the CPUs; {noisy} runs started with them still busy; \
         {retries} runs done again because other processes used over {DISTURBED_PERCENT:.0}% of a core in the window (see other CPU%); \
         {disturbed} runs kept with them over that after the last attempt.",
        quiet_wait.as_secs_f64()
    );
    if !fanout.is_empty() {
        println!();
        crate::fanout::run(opts, &fanout)?;
    }
    Ok(())
}

/// The git revision of the crate under test, and whether its `src/` has uncommitted changes.
fn source_revision() -> Option<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--", "src"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{head} + uncommitted changes in src/")
    } else {
        head
    })
}

fn machine_summary() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{model}, {} CPUs, Linux {kernel}", sys::online_cpus())
}
