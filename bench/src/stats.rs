//! Percentiles, process CPU time from /proc, and result rows.

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
