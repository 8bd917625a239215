//! The `process_*` series every Prometheus client library exports (the
//! names and meanings of client_golang's process collector), read from
//! `/proc/self` at each scrape: CPU time, memory, start time, file
//! descriptors and threads. A file that cannot be read leaves its series
//! out of that scrape rather than failing it.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc/<pid>/stat`: `USER_HZ`, which Linux
/// fixes at 100 in its user-space ABI on every architecture it supports
/// (reading `sysconf(_SC_CLK_TCK)` would need `unsafe` for the same 100).
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads `/proc/self` on every scrape.
#[derive(Debug, Default)]
pub struct Collector {
    _private: (),
}

impl Collector {
    /// A collector of this process's series.
    pub fn new() -> Self {
        Self::default()
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = Snapshot::read();
        if let Some(stat) = &snapshot.stat {
            let cpu = ConstCounter::new(stat.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.virtual_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process",
                stat.threads,
            )?;
            if let Some(boot) = snapshot.boot_time {
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    boot + stat.start_ticks / TICKS_PER_SECOND,
                )?;
            }
        }
        if let Some(resident) = snapshot.resident_bytes {
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                resident,
            )?;
        }
        if let Some(open) = snapshot.open_fds {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                open,
            )?;
        }
        if let Some(max) = snapshot.max_fds {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                max,
            )?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// What `/proc` said at one scrape.
#[derive(Debug, Default)]
struct Snapshot {
    stat: Option<Stat>,
    boot_time: Option<f64>,
    resident_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    start_ticks: f64,
    virtual_bytes: f64,
    threads: f64,
}

impl Snapshot {
    fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        Self {
            stat: read("/proc/self/stat").as_deref().and_then(parse_stat),
            boot_time: read("/proc/stat").as_deref().and_then(parse_boot_time),
            resident_bytes: read("/proc/self/status")
                .as_deref()
                .and_then(parse_resident_bytes),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as f64),
            max_fds: read("/proc/self/limits").as_deref().and_then(parse_max_fds),
        }
    }
}

/// `/proc/<pid>/stat`: the command name (field 2) is in parentheses and may
/// hold spaces, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // `rest` starts at field 3 (state): field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) / TICKS_PER_SECOND,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
    })
}

/// `btime` in `/proc/stat`: boot time, seconds since the epoch.
fn parse_boot_time(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// `VmRSS` in `/proc/<pid>/status`, given in kB (KiB).
fn parse_resident_bytes(text: &str) -> Option<f64> {
    let kib: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024.0)
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`.
fn parse_max_fds(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    // "unlimited" does not parse: the series is left out then.
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (tokio (worker) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 7 0 123456 104857600 2048 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                cpu_seconds: 3.0,
                threads: 7.0,
                start_ticks: 123_456.0,
                virtual_bytes: 104_857_600.0,
            })
        );
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        assert_eq!(
            parse_resident_bytes("Name:\tx\nVmRSS:\t    2048 kB\n"),
            Some(2_097_152.0)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024.0));
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1764979200\n"),
            Some(1_764_979_200.0)
        );
    }

    #[test]
    fn this_process_has_every_series() {
        let snapshot = Snapshot::read();
        assert!(snapshot.stat.is_some_and(|s| s.threads >= 1.0));
        assert!(snapshot.boot_time.is_some());
        assert!(snapshot.resident_bytes.is_some_and(|r| r > 0.0));
        assert!(snapshot.open_fds.is_some_and(|n| n >= 3.0));
        assert!(snapshot.max_fds.is_some());
    }
}
