//! Percentiles, process CPU time from /proc, rounding, and result rows.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// One measured phase.
#[derive(Debug)]
pub struct Phase {
    pub name: &'static str,
    pub concurrency: usize,
    pub calls: usize,
    pub ops_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub server_cpu_us_per_call: f64,
}

impl Phase {
    /// The table header matching [`Phase::row`].
    pub fn header() -> String {
        "| call | concurrency | calls | ops/s | p50 ms | p99 ms | server CPU µs/call |\n|---|---|---|---|---|---|---|".to_owned()
    }

    /// One markdown table row.
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.1} |",
            self.name,
            self.concurrency,
            self.calls,
            self.ops_per_second,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.server_cpu_us_per_call
        )
    }
}

/// `x` to one decimal, for figures in JSON.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `x` to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// `x` to four decimals.
pub fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// A figure of a JSON summary as a table cell: `–` when there is none,
/// strings without quotes.
pub fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "–".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The cells of `keys` in the JSON object `object`.
pub fn cells(object: &serde_json::Value, keys: &[&str]) -> Vec<String> {
    keys.iter().map(|key| cell(&object[*key])).collect()
}

/// One markdown table row.
pub fn table_row(cells: impl IntoIterator<Item = String>) -> String {
    format!("| {} |", cells.into_iter().collect::<Vec<_>>().join(" | "))
}

/// The `q` quantile of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// User + system CPU seconds of a process (all its threads), from
/// /proc/<pid>/stat; clock ticks are 1/100 s on Linux.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| -> f64 {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After ')': state is index 0, utime is 11, stime is 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// VmRSS of `pid` in KiB, from /proc/<pid>/status (0 when unreadable).
pub fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Clock ticks per second of the /proc CPU counters (`USER_HZ`, 100 on
/// every Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of /proc/<pid>/stat after the command name (index 0 is
/// the state, 1 the parent pid, 11..=14 utime, stime, cutime, cstime).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // The state is a letter: keep its slot so indexes match proc(5).
    Some(
        rest.split_whitespace()
            .map(|field| field.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

/// CPU time of every process in the trees under some root pids, read two
/// ways:
///
/// * clock ticks, the way the Python peer's measure.py counts them: per
///   process, user = utime + cutime and system = stime + cstime (the `c`
///   fields hold reaped children, e.g. PostgreSQL backends that exited);
///   10 ms resolution;
/// * nanoseconds on CPU of every live thread, from
///   /proc/<pid>/task/<tid>/schedstat (user + system together). Threads
///   that exit between two readings are not counted, but this resolves the
///   short phases, where a few ticks would be ±100 %.
#[derive(Debug, Clone, Default)]
pub struct TreeCpu {
    ticks: HashMap<u32, (u64, u64)>,
    runtime_ns: HashMap<(u32, u32), u64>,
}

/// CPU seconds one tree used between two readings.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUsed {
    /// User seconds (ticks).
    pub user: f64,
    /// System seconds (ticks).
    pub system: f64,
    /// Seconds on CPU (schedstat, ns resolution).
    pub runtime: f64,
}

impl CpuUsed {
    /// User + system seconds from ticks.
    pub fn ticks_total(&self) -> f64 {
        self.user + self.system
    }
}

impl TreeCpu {
    /// Reads the trees under `roots` now.
    pub fn read(roots: &[u32]) -> Self {
        if roots.is_empty() {
            return Self::default();
        }
        let mut processes = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(fields) = stat_fields(pid) {
                    let parent = fields.get(1).copied().unwrap_or(0);
                    processes.push((pid, u32::try_from(parent).unwrap_or(0), fields));
                }
            }
        }
        let mut in_tree: HashSet<u32> = roots.iter().copied().collect();
        // Parents need not precede their children: iterate to a fixed point.
        loop {
            let before = in_tree.len();
            for (pid, parent, _) in &processes {
                if in_tree.contains(parent) {
                    in_tree.insert(*pid);
                }
            }
            if in_tree.len() == before {
                break;
            }
        }
        let field = |fields: &[u64], index: usize| fields.get(index).copied().unwrap_or(0);
        let mut cpu = Self::default();
        for (pid, _, f) in processes
            .into_iter()
            .filter(|(pid, _, _)| in_tree.contains(pid))
        {
            cpu.ticks.insert(
                pid,
                (field(&f, 11) + field(&f, 13), field(&f, 12) + field(&f, 14)),
            );
            for (tid, ns) in thread_runtimes(pid) {
                cpu.runtime_ns.insert((pid, tid), ns);
            }
        }
        cpu
    }

    /// CPU used between `earlier` and `self`; processes and threads that
    /// appeared in between count from zero.
    pub fn since(&self, earlier: &Self) -> CpuUsed {
        let (mut user, mut system) = (0i64, 0i64);
        for (pid, (u, s)) in &self.ticks {
            let (u0, s0) = earlier.ticks.get(pid).copied().unwrap_or((0, 0));
            user += i64::try_from(*u).unwrap_or(0) - i64::try_from(u0).unwrap_or(0);
            system += i64::try_from(*s).unwrap_or(0) - i64::try_from(s0).unwrap_or(0);
        }
        let mut runtime = 0i128;
        for (task, ns) in &self.runtime_ns {
            let ns0 = earlier.runtime_ns.get(task).copied().unwrap_or(0);
            runtime += i128::from(*ns) - i128::from(ns0);
        }
        CpuUsed {
            user: user as f64 / TICKS_PER_SECOND,
            system: system as f64 / TICKS_PER_SECOND,
            runtime: runtime as f64 / 1e9,
        }
    }

    /// The pids read.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.ticks.keys().copied().collect();
        pids.sort_unstable();
        pids
    }
}

/// Nanoseconds on CPU of each thread of `pid` (first field of
/// /proc/<pid>/task/<tid>/schedstat).
fn thread_runtimes(pid: u32) -> Vec<(u32, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let ns = stat.split_whitespace().next()?.parse::<u64>().ok()?;
            Some((tid, ns))
        })
        .collect()
}
