//! The short form of the soak (issue 7): `bench soak` for 20 seconds at
//! concurrency 32 against the debug binaries, over SQLite or — when
//! TEST_POSTGRES_URL is set — PostgreSQL. Passes only if every call of the
//! mix ran, nothing failed but stale-etag ABORTEDs, and neither service's
//! memory grew past a loose bound. The full form (5 minutes at 64, release
//! binaries) is measured by hand; see BENCHMARKS.md.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tests::binary;
use tests::stack::TestDatabase;

/// How much VmRSS may grow between the start and the end of the measured
/// run. Loose on purpose: 20 seconds of debug binaries are too short to
/// tell a slow leak from allocator pools, connection buffers and SQLite's
/// page cache filling up, so this only catches a gross leak (tens of MiB
/// in seconds). The full form's 5 minutes at concurrency 64 is where
/// "memory flat" is judged, on the start/end/max figures it reports.
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

/// The run takes about 25 s (seeding, a 2 s warm-up, 20 s of load); this
/// only stops a hung bench.
const DEADLINE: Duration = Duration::from_secs(180);

/// Every call kind of the mix, as the summary names them.
const CALLS: [&str; 11] = [
    "GetAgent",
    "ResolveAgent",
    "UpdateAgent",
    "UpdateAgent+etag",
    "ListAgents (page)",
    "ListAgentVersions",
    "DiffAgentVersions",
    "RollbackAgent",
    "CreateAgent",
    "DeleteAgent",
    "UpdateProvider (new key)",
];

#[tokio::test]
async fn a_short_soak_runs_every_call_without_unexpected_errors_and_memory_stays_bounded() {
    // The backend this run tests. The bench makes its own fresh database
    // from it: a SQLite file in its own temporary directory, or on
    // PostgreSQL a `bench_<hex>` database created through this one's URL
    // and dropped at the end.
    let database = TestDatabase::fresh().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = dir.path().join("soak.json");

    let mut command = tokio::process::Command::new(binary("bench"));
    command
        .args(["soak", "--duration", "20", "--concurrency", "32", "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if database.is_postgres() {
        command
            .args(["--db", "postgres", "--postgres-url"])
            .arg(database.url());
    }
    let finished = tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("bench soak finishes within the deadline")
        .expect("bench soak runs");
    database.drop_database().await;
    let mut printed = String::from_utf8_lossy(&finished.stdout).into_owned();
    printed.push_str(&String::from_utf8_lossy(&finished.stderr));
    assert!(finished.status.success(), "bench soak failed:\n{printed}");

    let text = std::fs::read_to_string(&out).expect("bench soak wrote --out");
    let summary: Value = serde_json::from_str(&text).expect("--out is JSON");
    assert_eq!(summary["unexpected_errors"], 0, "{printed}");
    assert_eq!(summary["total"]["errors"], 0, "{printed}");
    assert_eq!(summary["warmup"]["errors"], 0, "{printed}");

    let ops = summary["ops"].as_object().expect("ops per call");
    assert_eq!(ops.len(), CALLS.len(), "{printed}");
    for call in CALLS {
        let op = &summary["ops"][call];
        let count = op["count"].as_u64().unwrap_or(0);
        assert!(count > 0, "{call} never ran:\n{printed}");
        assert_eq!(op["errors"], 0, "{call}:\n{printed}");
        if call != "UpdateAgent+etag" {
            // Only an update that sent an etag may be turned away.
            assert_eq!(op["aborted"], 0, "{call}:\n{printed}");
        }
        let p99 = op["p99_ms"].as_f64().unwrap_or(0.0);
        assert!(p99 > 0.0, "{call} has no p99:\n{printed}");
    }

    for process in ["registry", "crypto"] {
        let rss = &summary["rss_kib"][process];
        let kib = |field: &str| rss[field].as_u64().unwrap_or(0);
        let (start, end, max) = (kib("start"), kib("end"), kib("max"));
        assert!(start > 0 && end > 0, "{process}: no RSS read: {rss}");
        assert!(
            max >= start && max >= end,
            "{process}: max below a reading: {rss}"
        );
        assert!(
            end < start + RSS_GROWTH_BOUND_KIB,
            "{process} grew from {start} KiB to {end} KiB in 20 s:\n{printed}"
        );
    }
}
