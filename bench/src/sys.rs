//! The operating system's side: CPU pinning, file limits, dying with the parent, and the
//! server's CPU time and memory read from `/proc`.

use std::io;
use std::time::Duration;

/// Pins the calling thread (and every thread it creates later) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: `set` is a plain bit set on the stack, initialised by CPU_ZERO before use.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How many CPUs this process may run on.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// How many CPUs the machine has online.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Asks the kernel to kill this process when the thread that spawned it exits, so that a
/// server never outlives an orchestrator that was killed or interrupted.
pub fn die_with_parent() {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
}

/// Raises the soft limit on open files to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    // SAFETY: getrlimit and setrlimit read and write the one struct given.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(limit.rlim_cur)
    }
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// User plus system CPU time of a whole process (all its threads, those that ended too), read
/// from its CPU-time clock (`clock_getcpuclockid`) to the nanosecond; from `/proc/<pid>/stat`,
/// to the clock tick, where that clock cannot be read.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    process_clock(pid).or_else(|_| cpu_time_ticks(pid))
}

/// A process's CPU time from its CPU-time clock: the kernel's exact runtime sum, where
/// `/proc/<pid>/stat` rounds it down to a clock tick, which is 1 % of a one-second window.
fn process_clock(pid: u32) -> io::Result<Duration> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: clock_getcpuclockid writes the one clockid_t given; clock_gettime the one
    // timespec given.
    unsafe {
        let mut clock: libc::clockid_t = 0;
        let err = libc::clock_getcpuclockid(pid, &mut clock);
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
        let mut ts: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(clock, &mut ts) != 0 {
            return Err(io::Error::last_os_error());
        }
        let secs = u64::try_from(ts.tv_sec).map_err(io::Error::other)?;
        let nanos = u32::try_from(ts.tv_nsec).map_err(io::Error::other)?;
        Ok(Duration::new(secs, nanos))
    }
}

/// User plus system CPU time of a whole process from `/proc/<pid>/stat`, to the clock tick
/// (10 ms here).
fn cpu_time_ticks(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: count fields after its end.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime is 14 and stime 15.
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))
    };
    let ticks = field(14)? + field(15)?;
    Ok(Duration::from_nanos(
        ticks * 1_000_000_000 / clock_ticks_per_second(),
    ))
}

/// CPU time the whole machine spent busy (every CPU, user + system + interrupts + steal),
/// from the first line of `/proc/stat`.
pub fn machine_busy() -> io::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .ok_or_else(|| io::Error::other("no cpu line in /proc/stat"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Ok(Duration::from_nanos(
        busy * 1_000_000_000 / clock_ticks_per_second(),
    ))
}

/// The resident set size of a process in bytes, from `VmRSS` in `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/<pid>/status"))
}

/// The 1-minute load average, to warn when other work shares the machine.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User plus system CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> io::Result<Duration> {
    // SAFETY: clock_gettime writes the one timespec given.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) != 0 {
            return Err(io::Error::last_os_error());
        }
        let secs = u64::try_from(ts.tv_sec).map_err(io::Error::other)?;
        let nanos = u32::try_from(ts.tv_nsec).map_err(io::Error::other)?;
        Ok(Duration::new(secs, nanos))
    }
}
