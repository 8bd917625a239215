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
    match registry_service::commands::run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "registry-service failed");
            eprintln!("registry-service: {error}");
            ExitCode::FAILURE
        }
    }
}
