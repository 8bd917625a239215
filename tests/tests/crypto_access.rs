//! Who may call crypto-service, and what a key holder outside it can do,
//! against the real binaries: callers named by client certificate or unix
//! socket uid, each role held to its methods (PERMISSION_DENIED otherwise),
//! plaintext loopback refused outside development mode, the key-use audit
//! line, the key derivation that the old platform's Fernet key does not
//! open (checked from Python with `cryptography`), keyrings that overlap
//! the legacy key refused, old keyrings still decrypting through a marked
//! legacy version, and a missing key version answered as
//! FAILED_PRECONDITION by crypto-service and by the registry.

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use proto::crypto::crypto_service_client::CryptoServiceClient;
use proto::crypto::{
    DecryptBatchRequest, DecryptRequest, EncryptBatchRequest, EncryptRequest, GetKeyInfoRequest,
    ImportFernetItem, ImportFernetRequest, KeyDerivation, RetireKeyVersionRequest, RewrapRequest,
};
use proto::v1 as pb;
use tests::stack::{TestDatabase, start_registry_on_crypto_socket};
use tests::{
    Launch, Process, binary, current_uid, pki, start_crypto, start_crypto_as_given, unix_channel,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

const KEY_ONE: [u8; 32] = [0x41; 32];
const KEY_TWO: [u8; 32] = [0x42; 32];

/// Associated data as the registry builds it (`crypto::api_key_aad`).
const AAD: &[u8] = b"agentregistry.v1|tenant=acme|provider=prov-7f3a|field=api_key";

/// Every CryptoService method.
const METHODS: [&str; 8] = [
    "Encrypt",
    "Decrypt",
    "EncryptBatch",
    "DecryptBatch",
    "Rewrap",
    "GetKeyInfo",
    "RetireKeyVersion",
    "ImportFernet",
];

fn keys(versions: &[(u32, [u8; 32])]) -> Launch {
    let list: Vec<String> = versions
        .iter()
        .map(|(version, key)| format!("{version}={}", STANDARD.encode(key)))
        .collect();
    Launch::default().env("ENCRYPTION_KEYS", list.join(","))
}

fn decrypt_item(ciphertext: &str) -> DecryptRequest {
    DecryptRequest {
        ciphertext: ciphertext.to_owned(),
        associated_data: AAD.to_vec(),
    }
}

/// Calls `method` with a well-formed request and returns the status code
/// (OK on success). `ciphertext` is a value the service sealed.
async fn call(channel: &Channel, method: &str, ciphertext: &str) -> Code {
    let mut client = CryptoServiceClient::new(channel.clone());
    let encrypt = || EncryptRequest {
        plaintext: b"probe".to_vec(),
        associated_data: AAD.to_vec(),
    };
    let result = match method {
        "Encrypt" => client.encrypt(encrypt()).await.map(|_| ()),
        "Decrypt" => client.decrypt(decrypt_item(ciphertext)).await.map(|_| ()),
        "EncryptBatch" => client
            .encrypt_batch(EncryptBatchRequest {
                items: vec![encrypt()],
            })
            .await
            .map(|_| ()),
        "DecryptBatch" => client
            .decrypt_batch(DecryptBatchRequest {
                items: vec![decrypt_item(ciphertext)],
            })
            .await
            .map(|_| ()),
        "Rewrap" => client
            .rewrap(RewrapRequest {
                items: vec![decrypt_item(ciphertext)],
            })
            .await
            .map(|_| ()),
        "GetKeyInfo" => client.get_key_info(GetKeyInfoRequest {}).await.map(|_| ()),
        "RetireKeyVersion" => client
            // A version no keyring here holds: an allowed caller gets
            // FAILED_PRECONDITION and nothing is retired.
            .retire_key_version(RetireKeyVersionRequest { version: 3 })
            .await
            .map(|_| ()),
        "ImportFernet" => client
            .import_fernet(ImportFernetRequest {
                items: vec![ImportFernetItem {
                    token: "gAAAAAnot-a-real-token".to_owned(),
                    associated_data: AAD.to_vec(),
                }],
            })
            .await
            .map(|_| ()),
        other => panic!("no such method {other}"),
    };
    match result {
        Ok(()) => Code::Ok,
        Err(status) => {
            if status.code() == Code::PermissionDenied {
                assert!(
                    status.message().contains(&format!("may not call {method}")),
                    "the refusal names the method: {status:?}"
                );
                let reason = status.get_details_error_info().map(|info| info.reason);
                assert_eq!(reason.as_deref(), Some("CALLER_NOT_ALLOWED"), "{status:?}");
            }
            status.code()
        }
    }
}

/// The methods (of `methods`) that answer PERMISSION_DENIED on `channel`.
async fn denied(channel: &Channel, methods: &[&str], ciphertext: &str) -> Vec<String> {
    let mut refused = Vec::new();
    for method in methods {
        if call(channel, method, ciphertext).await == Code::PermissionDenied {
            refused.push((*method).to_owned());
        }
    }
    refused
}

/// A value sealed by a crypto-service with [`KEY_ONE`] as version 1 (any
/// instance with that key opens it).
async fn sealed_by_key_one() -> String {
    let sealer = start_crypto(keys(&[(1, KEY_ONE)])).await;
    let sealed = CryptoServiceClient::new(sealer.channel().await)
        .encrypt(EncryptRequest {
            plaintext: b"sk-sealed-for-probes".to_vec(),
            associated_data: AAD.to_vec(),
        })
        .await
        .expect("encrypt")
        .into_inner();
    sealer.terminate().await;
    sealed.ciphertext
}

struct Tls {
    dir: tempfile::TempDir,
    ca: pki::Authority,
}

impl Tls {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            ca: pki::Authority::new("crypto access test CA"),
        }
    }

    fn server_args(&self, launch: Launch) -> Launch {
        let server = self.ca.server("crypto.test");
        let path =
            |name: &str, pem: &str| pki::write(self.dir.path(), name, pem).display().to_string();
        launch
            .arg("--tls-cert-file")
            .arg(path("server.pem", &server.cert_pem))
            .arg("--tls-key-file")
            .arg(path("server.key", &server.key_pem))
            .arg("--tls-client-ca-file")
            .arg(path("ca.pem", &self.ca.cert_pem()))
    }

    async fn channel_as(&self, service: &Process, name: &str) -> Channel {
        let client = self.ca.client(name);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
            .domain_name("crypto.test")
            .identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
        Endpoint::from_shared(format!("https://{}", service.address))
            .expect("url")
            .tls_config(tls)
            .expect("tls config")
            .connect()
            .await
            .expect("a CA-signed client completes the handshake")
    }
}

#[tokio::test]
async fn over_mutual_tls_each_certificate_name_gets_only_its_roles_methods() {
    let ciphertext = sealed_by_key_one().await;
    let tls = Tls::new();
    let service = start_crypto_as_given(
        tls.server_args(keys(&[(1, KEY_ONE), (2, KEY_TWO)]))
            .env("CRYPTO_REGISTRY_CLIENTS", "dns:registry.test")
            .env("CRYPTO_OPERATOR_CLIENTS", "dns:operator.test"),
    )
    .await;

    let stranger = tls.channel_as(&service, "someone-else.test").await;
    assert_eq!(
        denied(&stranger, &METHODS, &ciphertext).await,
        METHODS,
        "a certificate the CA issued to another name may call nothing"
    );

    let operator = tls.channel_as(&service, "operator.test").await;
    assert_eq!(
        denied(&operator, &METHODS, &ciphertext).await,
        [
            "Encrypt",
            "Decrypt",
            "EncryptBatch",
            "DecryptBatch",
            "Rewrap",
            "RetireKeyVersion"
        ],
    );
    assert_eq!(call(&operator, "GetKeyInfo", &ciphertext).await, Code::Ok);
    assert_eq!(
        call(&operator, "ImportFernet", &ciphertext).await,
        Code::FailedPrecondition,
        "the operator reaches ImportFernet (no legacy key is configured here)"
    );

    let registry = tls.channel_as(&service, "registry.test").await;
    assert_eq!(
        denied(&registry, &METHODS, &ciphertext).await,
        ["ImportFernet"]
    );
    for method in ["Encrypt", "Decrypt", "DecryptBatch", "Rewrap", "GetKeyInfo"] {
        assert_eq!(
            call(&registry, method, &ciphertext).await,
            Code::Ok,
            "{method}"
        );
    }
    let (_, output) = service.terminate().await;
    assert!(
        output.contains("refused a caller without the role for this method"),
        "{output}"
    );
}

#[tokio::test]
async fn on_a_unix_socket_callers_are_named_by_uid() {
    let ciphertext = sealed_by_key_one().await;
    let me = current_uid();
    let dir = tempfile::tempdir().expect("tempdir");
    let on_socket = |name: &str, registry: String, operator: String| {
        let socket = dir.path().join(name);
        let launch = keys(&[(1, KEY_ONE), (2, KEY_TWO)])
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .env("CRYPTO_REGISTRY_CLIENTS", registry)
            .env("CRYPTO_OPERATOR_CLIENTS", operator);
        (socket, launch)
    };

    // Lists that leave this process out: nothing is callable.
    let (socket, launch) = on_socket(
        "others.sock",
        format!("uid:{}", me + 1),
        format!("uid:{}", me + 2),
    );
    let others = start_crypto_as_given(launch).await;
    let channel = unix_channel(&socket).await;
    assert_eq!(denied(&channel, &METHODS, &ciphertext).await, METHODS);
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health stays open to anyone who can connect")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
    let status = CryptoServiceClient::new(channel)
        .get_key_info(GetKeyInfoRequest {})
        .await
        .expect_err("not listed");
    assert!(
        status
            .message()
            .starts_with(&format!("caller uid:{me} may not call GetKeyInfo")),
        "the refusal names the uid it saw: {status:?}"
    );
    others.terminate().await;

    // This process as the registry.
    let (socket, launch) = on_socket(
        "registry.sock",
        format!("uid:{me}"),
        format!("uid:{}", me + 2),
    );
    let _registry = start_crypto_as_given(launch).await;
    let channel = unix_channel(&socket).await;
    assert_eq!(
        denied(&channel, &METHODS, &ciphertext).await,
        ["ImportFernet"]
    );
    assert_eq!(call(&channel, "Decrypt", &ciphertext).await, Code::Ok);

    // This process as the operator only.
    let (socket, launch) = on_socket(
        "operator.sock",
        format!("uid:{}", me + 1),
        format!("uid:{me}"),
    );
    let _operator = start_crypto_as_given(launch).await;
    let channel = unix_channel(&socket).await;
    assert_eq!(
        denied(&channel, &METHODS, &ciphertext).await,
        [
            "Encrypt",
            "Decrypt",
            "EncryptBatch",
            "DecryptBatch",
            "Rewrap",
            "RetireKeyVersion"
        ]
    );
}

#[tokio::test]
async fn behind_a_mesh_callers_are_named_by_the_proxys_forwarded_certificate() {
    const REGISTRY: &str = "spiffe://cluster.test/ns/ar/sa/registry-service";
    let service = start_crypto_as_given(
        keys(&[(1, KEY_ONE)])
            .arg("--mesh-mtls")
            .env("CRYPTO_REGISTRY_CLIENTS", format!("uri:{REGISTRY}")),
    )
    .await;
    let mut client = CryptoServiceClient::new(service.channel().await);
    let encrypt = |forwarded: Option<&str>| {
        let mut request = tonic::Request::new(EncryptRequest {
            plaintext: b"x".to_vec(),
            associated_data: AAD.to_vec(),
        });
        if let Some(value) = forwarded {
            request.metadata_mut().insert(
                "x-forwarded-client-cert",
                value.parse().expect("ascii header"),
            );
        }
        request
    };
    let code = |result: Result<tonic::Response<_>, tonic::Status>| {
        result.map_or_else(|status| status.code(), |_| Code::Ok)
    };
    // The element the nearest proxy appended (the last) names the caller.
    let proxy = format!("By=spiffe://cluster.test/ns/ar/sa/crypto;Hash=00;URI={REGISTRY}");
    assert_eq!(code(client.encrypt(encrypt(Some(&proxy))).await), Code::Ok);
    // No forwarded identity, another workload's, or the registry's only in
    // an element a client wrote before the proxy's own: refused.
    let other = "By=spiffe://cluster.test/ns/ar/sa/crypto;URI=spiffe://cluster.test/ns/ar/sa/job";
    let smuggled = format!("URI={REGISTRY},{other}");
    for forwarded in [None, Some(other), Some(smuggled.as_str())] {
        assert_eq!(
            code(client.encrypt(encrypt(forwarded)).await),
            Code::PermissionDenied,
            "{forwarded:?}"
        );
    }
}

#[tokio::test]
async fn the_operator_cannot_retire_a_key_version() {
    let me = current_uid();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("crypto.sock");
    let service = start_crypto_as_given(
        keys(&[(1, KEY_ONE), (2, KEY_TWO)])
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .env("CRYPTO_REGISTRY_CLIENTS", format!("uid:{}", me + 1))
            .env("CRYPTO_OPERATOR_CLIENTS", format!("uid:{me}")),
    )
    .await;
    let mut client = CryptoServiceClient::new(unix_channel(&socket).await);
    let status = client
        .retire_key_version(RetireKeyVersionRequest { version: 1 })
        .await
        .expect_err("an operator may not retire");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("the registry role"),
        "the refusal says who may: {status:?}"
    );
    let info = client
        .get_key_info(GetKeyInfoRequest {})
        .await
        .expect("the operator may read key info")
        .into_inner();
    let versions: Vec<u32> = info.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, [1, 2], "version 1 is still in the keyring");
    let (status, _) = service.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn plaintext_loopback_without_development_mode_is_refused_at_start() {
    let (status, output) = Process::run_to_exit(
        &binary("crypto-service"),
        keys(&[(1, KEY_ONE)]).arg("--listen").arg("127.0.0.1:0"),
    )
    .await;
    assert!(!status.success(), "{output}");
    let line = output
        .lines()
        .find(|line| line.starts_with("crypto-service: "))
        .unwrap_or_else(|| panic!("no error line:\n{output}"));
    assert!(
        line.starts_with(
            "crypto-service: CRYPTO_LISTEN: plaintext TCP gives no way to tell callers apart"
        ),
        "{line}"
    );
    assert!(line.contains("--insecure-dev-callers"), "{line}");

    // With the flag it serves, and says loudly that it is insecure.
    let dev = start_crypto_as_given(
        keys(&[(1, KEY_ONE)])
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--insecure-dev-callers"),
    )
    .await;
    assert!(dev.output().contains("INSECURE DEVELOPMENT MODE"));
    let channel = dev.channel().await;
    assert_eq!(call(&channel, "GetKeyInfo", "").await, Code::Ok);
}

#[tokio::test]
async fn every_decrypt_rewrap_and_import_leaves_one_audit_line_without_the_secret() {
    const PLAINTEXT: &str = "sk-audited-5d1c9e77";
    let legacy_key = URL_SAFE.encode([0x77u8; 32]);
    let service =
        start_crypto(keys(&[(1, KEY_ONE), (2, KEY_TWO)]).env("LEGACY_FERNET_KEY", legacy_key))
            .await;
    // Sealed under version 1 by another instance, so Rewrap has work.
    let old = sealed_by_key_one().await;
    let mut client = CryptoServiceClient::new(service.channel().await);
    let sealed = client
        .encrypt(EncryptRequest {
            plaintext: PLAINTEXT.as_bytes().to_vec(),
            associated_data: AAD.to_vec(),
        })
        .await
        .expect("encrypt")
        .into_inner();
    let opened = client
        .decrypt(decrypt_item(&sealed.ciphertext))
        .await
        .expect("decrypt")
        .into_inner();
    assert_eq!(opened.plaintext, PLAINTEXT.as_bytes());
    client
        .rewrap(RewrapRequest {
            items: vec![decrypt_item(&old)],
        })
        .await
        .expect("rewrap");
    let status = client
        .decrypt(DecryptRequest {
            ciphertext: sealed.ciphertext.clone(),
            associated_data: b"agentregistry.v1|tenant=globex|provider=prov-7f3a|field=api_key"
                .to_vec(),
        })
        .await
        .expect_err("another tenant's associated data");
    assert_eq!(status.code(), Code::InvalidArgument);
    client
        .import_fernet(ImportFernetRequest {
            items: vec![ImportFernetItem {
                token: "gAAAAAnot-a-real-token".to_owned(),
                associated_data: AAD.to_vec(),
            }],
        })
        .await
        .expect("import answers per item");
    let (_, output) = service.terminate().await;

    let audit: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "audit")
        .collect();
    let field = |line: &serde_json::Value, name: &str| {
        line["fields"][name]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| line["fields"][name].to_string())
    };
    let summary: Vec<[String; 6]> = audit
        .iter()
        .map(|line| {
            [
                field(line, "method"),
                field(line, "key_version"),
                field(line, "new_key_version"),
                field(line, "tenant"),
                field(line, "provider"),
                field(line, "outcome"),
            ]
        })
        .collect();
    let row = |m: &str, v: &str, n: &str, t: &str, o: &str| {
        [m, v, n, t, "prov-7f3a", o].map(str::to_owned)
    };
    assert_eq!(
        summary,
        [
            row("Decrypt", "2", "-", "acme", "ok"),
            row("Rewrap", "1", "2", "acme", "ok"),
            row("Decrypt", "2", "-", "globex", "refused"),
            row("ImportFernet", "-", "-", "acme", "refused"),
        ],
        "one line per value opened, Encrypt none:\n{output}"
    );
    for line in &audit {
        assert!(
            field(line, "caller").starts_with("dev:127.0.0.1:"),
            "the caller is named: {line}"
        );
        assert_eq!(line["level"], "INFO", "{line}");
    }
    for secret in [PLAINTEXT, &sealed.ciphertext, &old] {
        assert!(!output.contains(secret), "the logs hold {secret:?}");
    }
    let payload = sealed.ciphertext.rsplit('.').next().unwrap_or_default();
    assert!(!output.contains(payload), "the logs hold a ciphertext");
}

/// The Python platform's settings, used by the offline-decrypt test.
const PLATFORM_SECRET: &str = "platform-master-secret-0b7d";
const PLATFORM_SALT: &str = "platform-salt-e41a";

/// What `tests/python/legacy_key_offline.py` must print last.
const OFFLINE_CHECKS: u32 = 6;

#[tokio::test]
async fn the_old_platforms_fernet_key_opens_nothing_crypto_service_seals() {
    let python_ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        python_ok,
        "python3 with `cryptography` is needed: `python3 -m pip install cryptography` \
         (scripts/test does)"
    );
    // The same values as the new keyring and as the legacy key ImportFernet
    // uses: start-up is allowed, because the new root is not the old one.
    let service = start_crypto(
        Launch::default()
            .env("MASTER_SECRET", PLATFORM_SECRET)
            .env("ENCRYPTION_SALT", PLATFORM_SALT)
            .env("LEGACY_MASTER_SECRET", PLATFORM_SECRET)
            .env("LEGACY_ENCRYPTION_SALT", PLATFORM_SALT),
    )
    .await;
    let mut client = CryptoServiceClient::new(service.channel().await);
    const PLAINTEXT: &str = "sk-offline-attack-target";
    let sealed = client
        .encrypt(EncryptRequest {
            plaintext: PLAINTEXT.as_bytes().to_vec(),
            associated_data: AAD.to_vec(),
        })
        .await
        .expect("encrypt")
        .into_inner();
    let info = client
        .get_key_info(GetKeyInfoRequest {})
        .await
        .expect("key info")
        .into_inner();
    assert_eq!(info.versions[0].derivation(), KeyDerivation::Pbkdf2V2);

    let script = format!(
        "{}/python/legacy_key_offline.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--master-secret", PLATFORM_SECRET])
        .args(["--salt", PLATFORM_SALT])
        .args(["--ciphertext", &sealed.ciphertext])
        .args([
            "--associated-data",
            std::str::from_utf8(AAD).expect("utf-8"),
        ])
        .args(["--check-value", &info.versions[0].check_value])
        .args(["--plaintext", PLAINTEXT])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the script finishes within a minute")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{script} failed:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert_eq!(
        stdout.lines().last().unwrap_or_default(),
        format!("legacy key offline: all {OFFLINE_CHECKS} checks passed"),
        "{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn a_keyring_version_that_is_the_legacy_key_or_follows_from_it_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The platform's Fernet key: PBKDF2-HMAC-SHA256 of its secret and salt.
    let fernet =
        *crypto_service::keyring::pbkdf2_root(PLATFORM_SECRET.as_bytes(), PLATFORM_SALT.as_bytes());
    let legacy_version = dir.path().join("legacy.json");
    std::fs::write(
        &legacy_version,
        serde_json::json!({"keys": [
            {"version": 1, "master_secret": PLATFORM_SECRET, "salt": PLATFORM_SALT,
             "derivation": "legacy-pbkdf2"},
            {"version": 2, "key": STANDARD.encode(KEY_TWO)},
        ]})
        .to_string(),
    )
    .expect("keyring file");
    let legacy_by_secret = |launch: Launch| {
        launch
            .env("LEGACY_MASTER_SECRET", PLATFORM_SECRET)
            .env("LEGACY_ENCRYPTION_SALT", PLATFORM_SALT)
    };
    let cases = [
        (
            "the Fernet key as the direct key",
            Launch::default()
                .env("ENCRYPTION_KEY", STANDARD.encode(fernet))
                .env("LEGACY_FERNET_KEY", URL_SAFE.encode(fernet)),
            1,
        ),
        (
            "the Fernet key as a direct key version",
            legacy_by_secret(keys(&[(1, KEY_ONE), (2, fernet)])),
            2,
        ),
        (
            "a legacy-pbkdf2 version of the legacy secret",
            legacy_by_secret(Launch::default().env(
                "ENCRYPTION_KEYRING_FILE",
                legacy_version.display().to_string(),
            )),
            1,
        ),
    ];
    for (case, launch, version) in cases {
        let (status, output) = Process::run_to_exit(
            &binary("crypto-service"),
            launch.arg("--insecure-dev-callers"),
        )
        .await;
        assert!(!status.success(), "{case}: started:\n{output}");
        let line = output
            .lines()
            .find(|line| line.starts_with("crypto-service: "))
            .unwrap_or_else(|| panic!("{case}: no error line:\n{output}"));
        assert!(
            line.starts_with(&format!(
                "crypto-service: keyring: key version {version} is the legacy Fernet key"
            )),
            "{case}: {line}"
        );
        assert!(!output.contains(PLATFORM_SECRET), "{case}: secret echoed");
    }
}

#[tokio::test]
async fn an_old_keyring_keeps_decrypting_through_a_marked_legacy_version_until_rewrapped() {
    // What this service sealed before derivation v2: MASTER_SECRET's PBKDF2
    // output used as the root, the same as giving that output directly.
    let old_root =
        *crypto_service::keyring::pbkdf2_root(PLATFORM_SECRET.as_bytes(), PLATFORM_SALT.as_bytes());
    let old = start_crypto(keys(&[(1, old_root)])).await;
    let old_value = CryptoServiceClient::new(old.channel().await)
        .encrypt(EncryptRequest {
            plaintext: b"sk-sealed-long-ago".to_vec(),
            associated_data: AAD.to_vec(),
        })
        .await
        .expect("encrypt")
        .into_inner()
        .ciphertext;
    old.terminate().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let keyring = dir.path().join("keyring.json");
    std::fs::write(
        &keyring,
        serde_json::json!({"keys": [
            {"version": 1, "master_secret": PLATFORM_SECRET, "salt": PLATFORM_SALT,
             "derivation": "legacy-pbkdf2"},
            {"version": 2, "master_secret": PLATFORM_SECRET, "salt": PLATFORM_SALT,
             "derivation": "pbkdf2-v2"},
        ]})
        .to_string(),
    )
    .expect("keyring file");
    let service = start_crypto(
        Launch::default().env("ENCRYPTION_KEYRING_FILE", keyring.display().to_string()),
    )
    .await;
    let mut client = CryptoServiceClient::new(service.channel().await);
    let info = client
        .get_key_info(GetKeyInfoRequest {})
        .await
        .expect("key info")
        .into_inner();
    let derivations: Vec<(u32, KeyDerivation, bool)> = info
        .versions
        .iter()
        .map(|v| (v.version, v.derivation(), v.active))
        .collect();
    assert_eq!(
        derivations,
        [
            (1, KeyDerivation::LegacyPbkdf2, false),
            (2, KeyDerivation::Pbkdf2V2, true)
        ]
    );
    let opened = client
        .decrypt(decrypt_item(&old_value))
        .await
        .expect("the legacy version still decrypts")
        .into_inner();
    assert_eq!(opened.plaintext, b"sk-sealed-long-ago");
    let moved = client
        .rewrap(RewrapRequest {
            items: vec![decrypt_item(&old_value)],
        })
        .await
        .expect("rewrap")
        .into_inner()
        .items
        .remove(0);
    assert_eq!((moved.previous_key_version, moved.key_version), (1, 2));
    let sealed_new = client
        .encrypt(EncryptRequest {
            plaintext: b"new".to_vec(),
            associated_data: AAD.to_vec(),
        })
        .await
        .expect("encrypt")
        .into_inner();
    assert_eq!(
        sealed_new.key_version, 2,
        "the legacy version never encrypts"
    );

    // A keyring whose newest version is the legacy one does not start.
    std::fs::write(
        &keyring,
        serde_json::json!({"keys": [
            {"version": 1, "key": STANDARD.encode(KEY_ONE)},
            {"version": 2, "master_secret": PLATFORM_SECRET, "salt": PLATFORM_SALT,
             "derivation": "legacy-pbkdf2"},
        ]})
        .to_string(),
    )
    .expect("keyring file");
    let (status, output) = Process::run_to_exit(
        &binary("crypto-service"),
        Launch::default()
            .env("ENCRYPTION_KEYRING_FILE", keyring.display().to_string())
            .arg("--insecure-dev-callers"),
    )
    .await;
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("key version 2 uses derivation legacy-pbkdf2, which only decrypts"),
        "{output}"
    );
}

#[tokio::test]
async fn a_value_under_a_missing_key_version_is_a_failed_precondition_an_operator_can_act_on() {
    let me = format!("uid:{}", current_uid());
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("crypto.sock");
    let on_socket = |versions: &[(u32, [u8; 32])]| {
        keys(versions)
            .env("CRYPTO_REGISTRY_CLIENTS", &me)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
    };
    let crypto = start_crypto(on_socket(&[(1, KEY_ONE)])).await;
    let database = TestDatabase::fresh().await;
    let registry = start_registry_on_crypto_socket(&database, &socket).await;
    let token = tests::auth::token("operator", "acme", &["admin", "editor", "runtime"]);
    let channel = tests::auth::authed(registry.channel().await, tests::auth::Bearer::new(&token));
    let provider = pb::provider_service_client::ProviderServiceClient::new(channel.clone())
        .create_provider(pb::CreateProviderRequest {
            provider: Some(pb::Provider {
                name: "sealed-under-v1".to_owned(),
                provider_type: pb::ProviderType::Openai.into(),
                model_name: "gpt-4".into(),
                api_key: "sk-under-version-one".into(),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create provider")
        .into_inner();
    let agent = pb::agent_service_client::AgentServiceClient::new(channel.clone())
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: "resolver".to_owned(),
                role: "r".into(),
                goal: "g".into(),
                llm_provider_id: Some(provider.id),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create agent")
        .into_inner();

    // The same ciphertext, straight to a keyring without version 1.
    let mut direct = CryptoServiceClient::new(unix_channel(&socket).await);
    let sealed = direct
        .encrypt(EncryptRequest {
            plaintext: b"sk-direct".to_vec(),
            associated_data: AAD.to_vec(),
        })
        .await
        .expect("encrypt")
        .into_inner();
    crypto.kill().await;
    let crypto = start_crypto(on_socket(&[(2, KEY_TWO)])).await;

    let mut direct = CryptoServiceClient::new(unix_channel(&socket).await);
    let status = direct
        .decrypt(decrypt_item(&sealed.ciphertext))
        .await
        .expect_err("version 1 is gone");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status.get_details_error_info().map(|i| i.reason).as_deref(),
        Some("KEY_VERSION_UNKNOWN")
    );
    assert!(
        status.message().contains(
            "sealed under key version 1, which is not in this keyring (never configured, or retired)"
        ) && status.message().contains("add version 1 back to the keyring"),
        "{status:?}"
    );

    // Through the registry: the first call after the restart may still find
    // the old connection closed; the answer that counts is the first one
    // from the new crypto-service.
    let mut runtime = pb::runtime_service_client::RuntimeServiceClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = runtime
            .resolve_agent(pb::ResolveAgentRequest {
                agent_id: agent.id.clone(),
                ..Default::default()
            })
            .await
            .expect_err("the key's version is gone");
        if status.code() != Code::Unavailable || tokio::time::Instant::now() > deadline {
            break status;
        }
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status.get_details_error_info().map(|i| i.reason).as_deref(),
        Some("KEY_VERSION_UNKNOWN")
    );
    assert!(
        status.message().contains("key version 1")
            && status
                .message()
                .contains("add key version 1 back to crypto-service's keyring"),
        "{status:?}"
    );
    crypto.terminate().await;
    registry.terminate().await;
    database.drop_database().await;
}
