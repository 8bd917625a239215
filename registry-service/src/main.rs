//! The `registry-service` binary: parses its configuration, starts
//! telemetry and runs the subcommand asked for ([`registry_service::commands`]).

use std::process::ExitCode;

use clap::Parser;
use registry_service::config::{Args, Command};

/// mimalloc: the services allocate small, short-lived buffers on every
/// call from several threads, where it spends less CPU than the system
/// allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // A probe run every few seconds: no logs, no trace exporter, one line
    // on failure.
    if let Some(Command::Healthcheck(check)) = &args.command {
        return match registry_service::commands::healthcheck(&args, check).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(unhealthy) => {
                eprintln!("registry-service healthcheck: {unhealthy}");
                ExitCode::FAILURE
            }
        };
    }
    let _telemetry = match args.common.telemetry.init("registry-service") {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("registry-service: {error}");
            return ExitCode::FAILURE;
        }
    };
    // No transparent huge pages. A registry holds thousands of idle
    // WatchChanges streams, each a few small allocations spread over the
    // heap; mimalloc asks for huge pages on its regions, and a huge page
    // is 2 MiB of memory however little of it is touched. 1,000 idle
    // watchers measured 14–16 KiB each with them, 9 KiB without, for no
    // measured CPU difference per call (BENCHMARKS.md, Watch).
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(%error, "cannot disable transparent huge pages");
    }
    match registry_service::commands::run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "registry-service failed");
            eprintln!("registry-service: {error}");
            ExitCode::FAILURE
        }
    }
}
