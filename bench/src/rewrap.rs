//! `bench rewrap`: rewrap throughput — stored values moved to a new key
//! version per second — for a database holding N stored credentials.
//!
//! The values are written straight into the registry's tables (encrypted by
//! the real crypto-service in batches, so they are genuine ciphertexts bound
//! to their rows); then a second key version is added to crypto-service's
//! keyring file, SIGHUP reloads it, and the registry's own rewrap job
//! (`store::keys::rewrap_all`, what `rewrap-credentials` and the
//! `RewrapCredentials` RPC run) moves every value, timed.

use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use migrations::entity::{provider, provider_version};
use proto::crypto::crypto_service_client::CryptoServiceClient;
use proto::crypto::{EncryptBatchRequest, EncryptRequest, GetKeyInfoRequest};
use registry_service::crypto::{Crypto, api_key_aad};
use registry_service::store::{self, DatabaseSettings, keys};
use registry_service::telemetry::RegistryMetrics;
use sea_orm::{EntityTrait, Set};
use tests::{Launch, start_crypto};

use crate::stats::cpu_seconds;

/// Runs the measurement with `values` stored values (half current provider
/// keys, half version snapshots) and `batch` values per Rewrap call.
pub async fn run(values: u64, batch: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let keyring = dir.path().join("keyring.json");
    write_keyring(&keyring, 1);
    let crypto = start_crypto(
        Launch::default()
            .env("ENCRYPTION_KEYRING_FILE", keyring.display().to_string())
            .arg("--log-level")
            .arg("warn,crypto_service=info")
            .arg("--max-batch-items")
            .arg("1000"),
    )
    .await;
    let settings = DatabaseSettings {
        url: format!("sqlite://{}", dir.path().join("registry.db").display()),
        max_connections: 4,
        acquire_timeout: std::time::Duration::from_secs(30),
        sqlite_cache_mib: store::SQLITE_DEFAULT_CACHE_MIB,
    };
    let db = store::connect(&settings).await.expect("database");
    store::migrate_up(&db).await.expect("migrations");

    let started = Instant::now();
    populate(&db, &crypto.url(), values / 2).await;
    println!(
        "stored {} values in {:.1} s (SQLite, synchronous=FULL)",
        values,
        started.elapsed().as_secs_f64()
    );

    write_keyring(&keyring, 2);
    crypto.signal("HUP");
    let mut raw = CryptoServiceClient::new(crypto.channel().await);
    while raw
        .get_key_info(GetKeyInfoRequest {})
        .await
        .expect("key info")
        .into_inner()
        .active_version
        != 2
    {
        tokio::task::yield_now().await;
    }

    let client = Crypto::connect_lazy(
        &crypto.url(),
        None,
        std::time::Duration::from_secs(30),
        RegistryMetrics::default(),
    )
    .expect("crypto client");
    let cpu_before = cpu_seconds(crypto.pid());
    let own_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    let report = keys::rewrap_all(&db, &client, 2, batch, 0, |_| {})
        .await
        .expect("rewrap");
    let elapsed = started.elapsed().as_secs_f64();
    let crypto_cpu = cpu_seconds(crypto.pid()) - cpu_before;
    let own_cpu = cpu_seconds(std::process::id()) - own_before;
    assert_eq!(report.rewrapped, values, "{report:?}");
    println!(
        "| stored values | batch | wall s | values/s | crypto-service CPU µs/value | registry job + SQLite CPU µs/value |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.2} | {:.0} | {:.1} | {:.1} |",
        values,
        batch,
        elapsed,
        values as f64 / elapsed,
        crypto_cpu * 1e6 / values as f64,
        own_cpu * 1e6 / values as f64
    );
    crypto.terminate().await;
}

fn write_keyring(path: &std::path::Path, versions: u32) {
    let keys: Vec<serde_json::Value> = (1..=versions)
        .map(|v| {
            let key = [u8::try_from(v).unwrap_or(0); 32];
            serde_json::json!({"version": v, "key": STANDARD.encode(key)})
        })
        .collect();
    std::fs::write(path, serde_json::json!({ "keys": keys }).to_string()).expect("keyring");
}

/// Writes `providers` providers, each with its key in the row and in one
/// version snapshot, 1,000 at a time.
async fn populate(db: &sea_orm::DatabaseConnection, crypto_url: &str, providers: u64) {
    let mut raw = CryptoServiceClient::new(
        tonic::transport::Endpoint::from_shared(crypto_url.to_owned())
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    )
    .max_decoding_message_size(64 * 1024 * 1024);
    let now = store::now();
    let mut made = 0;
    while made < providers {
        let count = (providers - made).min(1000);
        let ids: Vec<String> = (0..count)
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        let items = ids
            .iter()
            .map(|id| EncryptRequest {
                plaintext: format!("sk-bench-{id}").into_bytes(),
                associated_data: api_key_aad("bench", id),
            })
            .collect();
        let sealed = raw
            .encrypt_batch(EncryptBatchRequest { items })
            .await
            .expect("encrypt batch")
            .into_inner()
            .items;
        let rows = ids.iter().zip(&sealed).map(|(id, s)| provider::ActiveModel {
            id: Set(id.clone()),
            tenant_id: Set("bench".into()),
            name: Set(format!("p-{id}")),
            provider_type: Set(provider::ProviderType::OpenAi),
            config: Set(serde_json::json!({"name": format!("p-{id}"), "provider_type": "OPENAI", "model_name": "gpt-4", "is_default": false, "default_parameters": {}})),
            api_key_ciphertext: Set(Some(s.ciphertext.clone())),
            is_default: Set(false),
            version: Set(1),
            create_time: Set(now),
            update_time: Set(now),
            created_by: Set("bench".into()),
            updated_by: Set("bench".into()),
            delete_time: Set(None),
            version_hash: Set(None),
        });
        provider::Entity::insert_many(rows)
            .exec(db)
            .await
            .expect("insert providers");
        let versions = ids.iter().zip(&sealed).map(|(id, s)| provider_version::ActiveModel {
            provider_id: Set(id.clone()),
            tenant_id: Set("bench".into()),
            version_number: Set(1),
            action: Set(migrations::entity::VersionAction::Create),
            configuration: Set(serde_json::json!({"name": format!("p-{id}"), "provider_type": "OPENAI", "model_name": "gpt-4", "is_default": false, "default_parameters": {}, "api_key": s.ciphertext})),
            diff: Set(serde_json::json!([])),
            change_description: Set("bench".into()),
            changed_by: Set("bench".into()),
            create_time: Set(now),
            ..Default::default()
        });
        provider_version::Entity::insert_many(versions)
            .exec(db)
            .await
            .expect("insert versions");
        made += count;
    }
}
