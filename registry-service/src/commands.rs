//! The subcommands of the `registry-service` binary: `serve` (the default:
//! connect to the database, migrating it unless told not to, bind, serve
//! until SIGTERM or SIGINT), `migrate`, `token`, `rewrap-credentials`,
//! `key-status`, `verify`, `import-fernet`, and `healthcheck` (which
//! `main` runs without telemetry: [`healthcheck`]).

use std::net::SocketAddr;
use std::sync::Arc;

use ops::metrics::Metrics;
use sea_orm_migration::MigratorTrait;

use crate::api::{self, Registry};
use crate::auth::fetch::Fetcher;
use crate::auth::jwks::RemoteKeys;
use crate::auth::{Authenticator, KeySource};
use crate::config::{
    Args, Command, Common, MigrateAction, RemoteKeySettings, TokenArgs, VerifyArgs,
};
use crate::crypto::Crypto;
use crate::telemetry::RegistryMetrics;
use crate::{Error, server, store};

/// Runs the subcommand `args` names.
pub async fn run(args: &Args) -> Result<(), Error> {
    match args.command {
        Some(Command::Migrate { action }) => migrate(&args.common, action).await,
        Some(Command::Token(ref token)) => mint_token(args, token),
        Some(Command::RewrapCredentials { batch_size }) => {
            rewrap_credentials(args, batch_size).await
        }
        Some(Command::KeyStatus) => key_status(args).await,
        Some(Command::Verify(ref options)) => verify(&args.common, options).await,
        Some(Command::ImportFernet(ref import)) => crate::import::run(args, import).await,
        Some(Command::Healthcheck(ref check)) => {
            healthcheck(args, check).await.map_err(|unhealthy| {
                Error::precondition("NOT_SERVING", format!("healthcheck: {unhealthy}"))
            })
        }
        Some(Command::Serve) | None => serve(args).await,
    }
}

async fn serve(args: &Args) -> Result<(), Error> {
    let settings = args.serve.settings(&args.common)?;
    if settings.dev {
        tracing::warn!(
            "DEVELOPMENT MODE (REGISTRY_DEV): tokens need no audience or issuer; never run this in production"
        );
    }
    let transport = args.serve.transport()?;
    let (source, setting) = args.jwt.key_source(|name| std::env::var(name).ok())?;
    let expectations = args.jwt.serving_expectations(settings.dev)?;
    let claims = args.jwt.claim_mapping()?;
    let registry_metrics = RegistryMetrics::default();
    let authenticator = match args.jwt.remote_keys(settings.dev)? {
        Some(remote) => Authenticator::remote(
            fetch_keys(remote, registry_metrics.clone()).await?,
            expectations,
        ),
        None => Authenticator::new(&source, expectations, setting)?,
    };
    let authenticator = Arc::new(
        authenticator
            .with_claims(claims)
            .with_platform_operators(settings.platform_operator_subjects.clone()),
    );
    if let Some(tls) = &transport.tls {
        // From here on SIGHUP reloads the certificate instead of ending
        // the process.
        ops::tls::watch(Arc::clone(tls), transport.tls_reload).map_err(|e| {
            Error::config(
                "REGISTRY_TLS_CERT_FILE",
                format!("cannot listen for SIGHUP: {}", e.kind()),
            )
        })?;
    }
    let db = store::connect(&settings.database).await?;
    if settings.migrate {
        store::migrate_up(&db).await?;
        tracing::info!("database migrations applied");
    }
    let metrics = Metrics::new("registry-service", |registry| {
        registry_metrics.register(registry)
    });
    let crypto = Crypto::connect_lazy(
        &settings.crypto_endpoint,
        settings.crypto_tls.clone(),
        settings.crypto_timeout,
        registry_metrics.clone(),
    )?;
    if let Some(address) = settings.metrics_listen {
        serve_metrics(address, metrics.clone()).await?;
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| {
            Error::config(
                "REGISTRY_LISTEN",
                format!("cannot bind {}: {}", settings.listen, e.kind()),
            )
        })?;
    let health = match transport.health_listen {
        Some(address) => Some(tokio::net::TcpListener::bind(address).await.map_err(|e| {
            Error::config(
                "REGISTRY_HEALTH_LISTEN",
                format!("cannot bind {address}: {}", e.kind()),
            )
        })?),
        None => None,
    };
    let db = store::Store::new(
        db,
        &registry_metrics,
        (settings.recent_agents, settings.recent_agents_bytes),
    )
    .with_list_scan(settings.list_scan);
    let registry = Registry {
        feed: crate::watch::Feed::new(db.clone(), settings.watch.clone()),
        resolutions: Arc::new(crate::api::runtime::Resolutions::new(
            settings.resolve_cache,
            Arc::clone(db.changes()),
        )),
        retries: Arc::new(crate::api::retries::Retries::new(
            settings.request_id_retention,
            settings.abort_after_commit.clone(),
        )),
        db,
        crypto,
        destinations: Arc::new(settings.destinations.clone()),
        purge_after: chrono::TimeDelta::from_std(settings.retention.purge_after)
            .map_err(|e| Error::config("REGISTRY_PURGE_DELETED_AFTER_SECONDS", e.to_string()))?,
    };
    server::serve(
        server::Listeners {
            grpc: listener,
            tls: transport.tls,
            health,
        },
        &settings,
        registry,
        authenticator,
        &metrics,
        registry_metrics,
        ops::shutdown::signal(),
    )
    .await
}

/// `healthcheck`: one grpc.health.v1 Check of the server these settings
/// describe, on its plaintext health port (the gRPC port may be TLS).
pub async fn healthcheck(
    args: &Args,
    check: &ops::healthcheck::HealthcheckArgs,
) -> Result<(), ops::healthcheck::Unhealthy> {
    let address = match (args.serve.health_listen, &args.serve.tls_cert_file) {
        (Some(health), _) => health,
        (None, None) => args.serve.listen,
        (None, Some(_)) => {
            return Err(ops::healthcheck::Unhealthy {
                target: "REGISTRY_HEALTH_LISTEN".to_owned(),
                problem: "not set, and REGISTRY_LISTEN serves TLS: set a plaintext health port"
                    .to_owned(),
            });
        }
    };
    ops::healthcheck::check(
        &ops::healthcheck::Target::Tcp(address),
        None,
        &check.service,
        std::time::Duration::from_secs(check.timeout_seconds.max(1)),
    )
    .await
}

/// The database (migrated) and crypto-service client for the key
/// subcommands.
async fn key_tools(args: &Args) -> Result<(sea_orm::DatabaseConnection, Crypto), Error> {
    let settings = args.serve.settings(&args.common)?;
    let db = store::connect(&settings.database).await?;
    store::migrate_up(&db).await?;
    let crypto = Crypto::connect_lazy(
        &settings.crypto_endpoint,
        settings.crypto_tls.clone(),
        settings.crypto_timeout,
        RegistryMetrics::default(),
    )?;
    Ok((db, crypto))
}

/// `rewrap-credentials`: prints progress after every batch.
async fn rewrap_credentials(args: &Args, batch_size: u32) -> Result<(), Error> {
    let (db, crypto) = key_tools(args).await?;
    if !(1..=1000).contains(&batch_size) {
        return Err(Error::config("--batch-size", "must be from 1 to 1000"));
    }
    let batch = batch_size;
    let done = api::keys::rewrap(&db, &crypto, batch, 0, |report| {
        println!(
            "progress: scanned {} rewrapped {} already-current {} changed-concurrently {}",
            report.scanned, report.rewrapped, report.already_current, report.changed_concurrently
        );
    })
    .await?;
    println!(
        "rewrap-credentials: active version {}; scanned {}, rewrapped {}, already current {}, changed concurrently {}, remaining {}",
        done.active_version,
        done.scanned,
        done.rewrapped,
        done.already_current,
        done.changed_concurrently,
        done.remaining
    );
    let details = serde_json::json!({
        "active_version": done.active_version,
        "scanned": done.scanned,
        "rewrapped": done.rewrapped,
    });
    let entry = store::audit::Entry::platform(
        REWRAP_ACTOR,
        store::audit::Action::CredentialsRewrap,
        details,
    );
    store::audit::record(&db, entry).await
}

/// The actor the `rewrap-credentials` command records in the audit trail
/// (it runs with database and crypto-service credentials, not a token).
const REWRAP_ACTOR: &str = "registry-service rewrap-credentials";

/// `verify`: one line per broken invariant, non-zero exit when any; the
/// chains' heads exported, or checked against exported ones, when asked.
async fn verify(common: &Common, options: &VerifyArgs) -> Result<(), Error> {
    let exported = match &options.heads {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::config("--heads", format!("cannot read {}: {e}", path.display()))
            })?;
            let heads: crate::verify::Heads = serde_json::from_str(&text).map_err(|e| {
                Error::config(
                    "--heads",
                    format!("{} is not exported heads: {e}", path.display()),
                )
            })?;
            Some(heads)
        }
        None => None,
    };
    let db = store::connect(&common.database()?).await?;
    let (checked, findings, heads) = crate::verify::verify(&db, 1000, exported.as_ref()).await?;
    let to_stdout = options
        .export_heads
        .as_ref()
        .is_some_and(|path| path.as_os_str() == "-");
    let report = |line: String| {
        if to_stdout {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    for finding in &findings {
        report(format!("{}: {}", finding.resource, finding.problem));
    }
    report(format!(
        "verify: {} chains and the audit trail up to position {} checked",
        heads.chains.len(),
        heads.audit.seq
    ));
    report(format!(
        "verify: {checked} resources checked, {} problems",
        findings.len()
    ));
    if findings.is_empty() {
        if let Some(path) = &options.export_heads {
            let json = serde_json::to_string_pretty(&heads)
                .map_err(|e| Error::Internal(format!("heads: {e}")))?;
            if to_stdout {
                println!("{json}");
            } else {
                std::fs::write(path, json).map_err(|e| {
                    Error::config(
                        "--export-heads",
                        format!("cannot write {}: {e}", path.display()),
                    )
                })?;
            }
        }
        Ok(())
    } else {
        Err(Error::precondition(
            "INCONSISTENT",
            format!("{} problems found", findings.len()),
        ))
    }
}

/// `key-status`: one line per key version.
async fn key_status(args: &Args) -> Result<(), Error> {
    let (db, crypto) = key_tools(args).await?;
    let status = api::keys::key_status(&db, &crypto, store::keys::Scope::Everything).await?;
    println!(
        "active version {}; {} stored values",
        status.active_version, status.total_values
    );
    for v in status.versions {
        println!(
            "version {}{}{}: {} stored values{}",
            v.version,
            if v.active { " (active)" } else { "" },
            if v.in_keyring {
                ""
            } else {
                " (NOT in crypto-service's keyring)"
            },
            v.stored_values,
            if v.check_value.is_empty() {
                String::new()
            } else {
                format!(", check value {}", v.check_value)
            }
        );
    }
    Ok(())
}

/// Binds the metrics endpoint and serves it in the background.
async fn serve_metrics(address: SocketAddr, metrics: ops::metrics::Metrics) -> Result<(), Error> {
    ops::metrics::spawn(address, metrics).await.map_err(|e| {
        Error::config(
            "REGISTRY_METRICS_LISTEN",
            format!("cannot bind {address}: {}", e.kind()),
        )
    })
}

async fn migrate(common: &Common, action: MigrateAction) -> Result<(), Error> {
    let db = store::connect(&common.database()?).await?;
    match action {
        MigrateAction::Up => migrations::Migrator::up(&db, None).await,
        MigrateAction::Down => migrations::Migrator::down(&db, Some(1)).await,
        MigrateAction::Status => migrations::status(&db).await.map(|rows| {
            for (name, applied) in rows {
                println!("{} {name}", if applied { "applied" } else { "pending" });
            }
        }),
    }
    .map_err(store::db_error)?;
    if action != MigrateAction::Status {
        println!("migrate {}: done", format!("{action:?}").to_lowercase());
    }
    Ok(())
}

/// Loads the identity provider's keys, or refuses to start (a wrong
/// issuer, CA or URL shows at deploy time, and an orchestrator retries the
/// start with back-off); then keeps them current in the background.
async fn fetch_keys(
    remote: RemoteKeySettings,
    metrics: RegistryMetrics,
) -> Result<Arc<RemoteKeys>, Error> {
    let fetcher = Fetcher::new(
        remote.ca_file.as_deref(),
        "REGISTRY_OIDC_CA_FILE",
        remote.timeout,
    )?;
    let keys = RemoteKeys::start(
        remote.location,
        fetcher,
        remote.refresh,
        remote.allow_loopback_http,
        remote.setting,
        metrics,
    )
    .await?;
    // Lives as long as the process: nothing to stop at shutdown.
    tokio::spawn(Arc::clone(&keys).refresh_periodically());
    Ok(keys)
}

/// `token`: an HS256 token for development and operations.
fn mint_token(args: &Args, token: &TokenArgs) -> Result<(), Error> {
    let (source, _) = args.jwt.key_source(|name| std::env::var(name).ok())?;
    let KeySource::Hs256(secret) = source else {
        return Err(Error::config(
            "JWT_HS256_SECRET",
            "`token` signs with the HS256 secret; with public keys, tokens come from your identity provider",
        ));
    };
    let minted = crate::auth::mint_hs256(&secret, &args.jwt.expectations(), token)?;
    println!("{minted}");
    Ok(())
}
