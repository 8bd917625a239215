//! `bench compare`: reads the JSON of several `bench registry --out` runs
//! and several runs of the Python peer's `measure.py --out`, picks the
//! median run of each side (by total server CPU per op, as the peer's
//! RESULTS.md does), and prints one markdown table per phase with both
//! sides and the peer/ours ratio of server CPU against a target.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::registry::PHASES;
use crate::stats::cell;

/// Flags of `bench compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// `bench registry --out` files (one per run).
    #[arg(long, num_args = 1.., required = true)]
    pub ours: Vec<PathBuf>,
    /// The peer's `measure.py --out` files (one per run).
    #[arg(long, num_args = 1.., required = true)]
    pub peer: Vec<PathBuf>,
    /// Required ratio of the peer's server CPU per op to ours.
    #[arg(long, default_value_t = 30.0)]
    pub target: f64,
}

/// Prints the runs, the chosen medians and the side-by-side table.
pub fn run(args: &CompareArgs) {
    let ours = median_run("ours", &args.ours);
    let peer = median_run("peer", &args.peer);
    let with_db = !ours.1["total"]["db_cpu_us_per_op"].is_null()
        || !peer.1["total"]["db_cpu_us_per_op"].is_null();
    println!(
        "\nmedian runs: ours {}, peer {}\n",
        ours.0.display(),
        peer.0.display()
    );
    let (ours, peer) = (&ours.1, &peer.1);
    print!(
        "| phase | ops/s peer | ops/s ours | p50 ms peer | p50 ms ours | p99 ms peer | p99 ms ours \
         | server CPU µs/op peer | ours: registry + crypto = total | peer / ours | target ≥ {} |",
        args.target
    );
    if with_db {
        print!(" PG CPU µs/op peer | PG CPU µs/op ours | (server+PG) peer / ours |");
    }
    println!();
    println!(
        "|---|---|---|---|---|---|---|---|---|---|---|{}",
        if with_db { "---|---|---|" } else { "" }
    );
    let rows = PHASES
        .iter()
        .map(|phase| (*phase, &ours["ops"][*phase], &peer["ops"][*phase]))
        .chain(std::iter::once(("all", &ours["total"], &peer["total"])));
    for (phase, o, p) in rows {
        let ratio = ratio(&p["server_cpu_us_per_op"], &o["server_cpu_us_per_op"]);
        let met = match ratio {
            Some(r) if r >= args.target => "met",
            Some(_) => "**missed**",
            None => "–",
        };
        print!(
            "| {phase} | {} | {} | {} | {} | {} | {} | {} | {} + {} = {} | {} | {met} |",
            cell(&p["ops_per_s"]),
            cell(&o["ops_per_s"]),
            cell(&p["p50_ms"]),
            cell(&o["p50_ms"]),
            cell(&p["p99_ms"]),
            cell(&o["p99_ms"]),
            cell(&p["server_cpu_us_per_op"]),
            cell(&o["registry_cpu_us_per_op"]),
            cell(&o["crypto_cpu_us_per_op"]),
            cell(&o["server_cpu_us_per_op"]),
            ratio.map_or("–".to_owned(), |r| format!("{r:.1}×")),
        );
        if with_db {
            let sum = |v: &Value| {
                Some(v["server_cpu_us_per_op"].as_f64()? + v["db_cpu_us_per_op"].as_f64()?)
            };
            let both = match (sum(p), sum(o)) {
                (Some(p), Some(o)) if o > 0.0 => format!("{:.1}×", p / o),
                _ => "–".to_owned(),
            };
            print!(
                " {} | {} | {both} |",
                cell(&p["db_cpu_us_per_op"]),
                cell(&o["db_cpu_us_per_op"])
            );
        }
        println!();
    }
    let errors = |v: &Value| v["total"]["errors"].as_u64().unwrap_or(0);
    println!(
        "\nerrors: peer {}, ours {}; ops: peer {}, ours {}",
        errors(peer),
        errors(ours),
        cell(&peer["total"]["ops"]),
        cell(&ours["total"]["ops"])
    );
}

/// Reads every file and returns the one with the median total server CPU
/// per op (the lower middle for an even count), after listing them all.
fn median_run(side: &str, files: &[PathBuf]) -> (PathBuf, Value) {
    let mut runs: Vec<(PathBuf, Value, f64)> = files
        .iter()
        .map(|path| {
            let value = read_json(path);
            let cpu = value["total"]["server_cpu_us_per_op"]
                .as_f64()
                .unwrap_or_else(|| panic!("{}: no total.server_cpu_us_per_op", path.display()));
            (path.clone(), value, cpu)
        })
        .collect();
    runs.sort_by(|a, b| a.2.total_cmp(&b.2));
    println!("{side} runs (total server CPU µs/op, ops/s, DB CPU µs/op):");
    for (path, value, cpu) in &runs {
        println!(
            "  {}: {cpu}, {}, {}",
            path.display(),
            cell(&value["total"]["ops_per_s"]),
            cell(&value["total"]["db_cpu_us_per_op"])
        );
    }
    let (path, value, _) = runs.swap_remove((runs.len() - 1) / 2);
    (path, value)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

fn ratio(peer: &Value, ours: &Value) -> Option<f64> {
    let (peer, ours) = (peer.as_f64()?, ours.as_f64()?);
    (ours > 0.0).then(|| peer / ours)
}
