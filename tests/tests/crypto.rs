//! crypto-service end to end: the real binary on an ephemeral loopback port
//! (or a unix socket, or mutual TLS), driven over gRPC.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use prost::Message;
use proto::crypto::crypto_service_client::CryptoServiceClient;
use proto::crypto::{
    DecryptBatchRequest, DecryptRequest, EncryptBatchRequest, EncryptRequest, GetKeyInfoRequest,
    KeyDerivation, RewrapRequest,
};
use tests::{Launch, Process, pki, start_crypto, unix_channel};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

const KEY_ONE: [u8; 32] = [0x11; 32];
const KEY_TWO: [u8; 32] = [0x22; 32];

fn key(bytes: [u8; 32]) -> String {
    STANDARD.encode(bytes)
}

fn with_key(bytes: [u8; 32]) -> Launch {
    Launch::default().env("ENCRYPTION_KEY", key(bytes))
}

fn with_keys(versions: &[(u32, [u8; 32])]) -> Launch {
    let list: Vec<String> = versions
        .iter()
        .map(|(version, bytes)| format!("{version}={}", key(*bytes)))
        .collect();
    Launch::default().env("ENCRYPTION_KEYS", list.join(","))
}

async fn client(process: &Process) -> CryptoServiceClient<Channel> {
    CryptoServiceClient::new(process.channel().await)
}

fn encrypt_request(plaintext: &[u8], aad: &[u8]) -> EncryptRequest {
    EncryptRequest {
        plaintext: plaintext.to_vec(),
        associated_data: aad.to_vec(),
    }
}

fn decrypt_request(ciphertext: &str, aad: &[u8]) -> DecryptRequest {
    DecryptRequest {
        ciphertext: ciphertext.to_owned(),
        associated_data: aad.to_vec(),
    }
}

async fn encrypt(
    client: &mut CryptoServiceClient<Channel>,
    plaintext: &[u8],
    aad: &[u8],
) -> String {
    client
        .encrypt(encrypt_request(plaintext, aad))
        .await
        .expect("encrypt")
        .into_inner()
        .ciphertext
}

fn violation_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

fn error_reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

#[tokio::test]
async fn round_trip_returns_the_plaintext_and_the_key_version() {
    let service = start_crypto(with_key(KEY_ONE)).await;
    let mut client = client(&service).await;
    let sealed = client
        .encrypt(encrypt_request(
            b"sk-live-round-trip",
            b"tenant/provider/api_key",
        ))
        .await
        .expect("encrypt")
        .into_inner();
    assert_eq!(sealed.key_version, 1);
    assert!(sealed.ciphertext.starts_with("arc1.1."));
    assert!(!sealed.ciphertext.contains("sk-live"));

    let opened = client
        .decrypt(decrypt_request(
            &sealed.ciphertext,
            b"tenant/provider/api_key",
        ))
        .await
        .expect("decrypt")
        .into_inner();
    assert_eq!(opened.plaintext, b"sk-live-round-trip");
    assert_eq!(opened.key_version, 1);
}

#[tokio::test]
async fn the_same_plaintext_encrypts_to_different_ciphertexts() {
    let service = start_crypto(with_key(KEY_ONE)).await;
    let mut client = client(&service).await;
    let first = encrypt(&mut client, b"same secret", b"aad").await;
    let second = encrypt(&mut client, b"same secret", b"aad").await;
    assert_ne!(first, second);
}

#[tokio::test]
async fn wrong_associated_data_fails_authentication() {
    let service = start_crypto(with_key(KEY_ONE)).await;
    let mut client = client(&service).await;
    let ciphertext = encrypt(&mut client, b"bound secret", b"tenant-a/p1/api_key").await;
    for wrong in [&b"tenant-b/p1/api_key"[..], b"", b"tenant-a/p1/api_key\0"] {
        let status = client
            .decrypt(decrypt_request(&ciphertext, wrong))
            .await
            .expect_err("wrong AAD must not decrypt");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(error_reason(&status), "CIPHERTEXT_NOT_AUTHENTIC");
        assert_eq!(violation_fields(&status), ["ciphertext"]);
    }
}

#[tokio::test]
async fn a_flipped_byte_anywhere_in_the_ciphertext_fails() {
    let service = start_crypto(with_key(KEY_ONE)).await;
    let mut client = client(&service).await;
    let ciphertext = encrypt(&mut client, b"tamper target", b"aad").await;

    // Every character of the string, replaced by another base64url character.
    for index in 0..ciphertext.len() {
        let mut bytes = ciphertext.clone().into_bytes();
        bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        let status = client
            .decrypt(decrypt_request(&tampered, b"aad"))
            .await
            .expect_err("tampered string must not decrypt");
        assert!(
            matches!(
                status.code(),
                Code::InvalidArgument | Code::FailedPrecondition
            ),
            "index {index}: {status:?}"
        );
    }

    // Every byte of the binary payload (nonce, ciphertext, tag), one bit
    // flipped, re-encoded canonically.
    let payload = URL_SAFE_NO_PAD
        .decode(ciphertext.trim_start_matches("arc1.1."))
        .expect("payload");
    for index in 0..payload.len() {
        let mut flipped = payload.clone();
        flipped[index] ^= 0x01;
        let tampered = format!("arc1.1.{}", URL_SAFE_NO_PAD.encode(&flipped));
        let status = client
            .decrypt(decrypt_request(&tampered, b"aad"))
            .await
            .expect_err("flipped payload must not decrypt");
        assert_eq!(status.code(), Code::InvalidArgument, "byte {index}");
        assert_eq!(
            error_reason(&status),
            "CIPHERTEXT_NOT_AUTHENTIC",
            "byte {index}"
        );
    }

    // Truncated at every length.
    for length in 0..ciphertext.len() {
        let status = client
            .decrypt(decrypt_request(&ciphertext[..length], b"aad"))
            .await
            .expect_err("truncated ciphertext must not decrypt");
        assert_eq!(status.code(), Code::InvalidArgument, "length {length}");
    }
}

#[tokio::test]
async fn old_ciphertext_decrypts_after_rotation_and_rewrap_moves_it_to_the_new_version() {
    let before = start_crypto(with_keys(&[(1, KEY_ONE)])).await;
    let mut v1_client = client(&before).await;
    let old = encrypt(&mut v1_client, b"rotate me", b"aad").await;
    assert!(old.starts_with("arc1.1."));
    drop(v1_client);
    before.terminate().await;

    let after = start_crypto(with_keys(&[(1, KEY_ONE), (2, KEY_TWO)])).await;
    let mut client = client(&after).await;
    let info = client
        .get_key_info(GetKeyInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.active_version, 2);
    assert_eq!(
        info.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );

    let opened = client
        .decrypt(decrypt_request(&old, b"aad"))
        .await
        .expect("decrypt")
        .into_inner();
    assert_eq!(opened.plaintext, b"rotate me");
    assert_eq!(opened.key_version, 1);

    let fresh = encrypt(&mut client, b"new value", b"aad").await;
    assert!(
        fresh.starts_with("arc1.2."),
        "newest version encrypts: {fresh}"
    );

    let response = client
        .rewrap(RewrapRequest {
            items: vec![
                decrypt_request(&old, b"aad"),
                decrypt_request(&fresh, b"aad"),
            ],
        })
        .await
        .expect("rewrap")
        .into_inner();
    let encoded = response.encode_to_vec();
    for plaintext in [&b"rotate me"[..], b"new value"] {
        assert!(
            !encoded
                .windows(plaintext.len())
                .any(|window| window == plaintext),
            "rewrap response carries no plaintext"
        );
    }
    let [moved, kept] = response.items.as_slice() else {
        panic!("two results expected");
    };
    assert!(moved.rewrapped);
    assert_eq!((moved.previous_key_version, moved.key_version), (1, 2));
    assert!(moved.ciphertext.starts_with("arc1.2."));
    assert!(!kept.rewrapped);
    assert_eq!(
        kept.ciphertext, fresh,
        "already-current values come back unchanged"
    );

    let reopened = client
        .decrypt(decrypt_request(&moved.ciphertext, b"aad"))
        .await
        .expect("decrypt rewrapped")
        .into_inner();
    assert_eq!(reopened.plaintext, b"rotate me");
    assert_eq!(reopened.key_version, 2);

    let status = client
        .rewrap(RewrapRequest {
            items: vec![decrypt_request(&old, b"other aad")],
        })
        .await
        .expect_err("rewrap authenticates first");
    assert_eq!(violation_fields(&status), ["items[0].ciphertext"]);
}

#[tokio::test]
async fn a_ciphertext_of_a_version_the_keyring_lacks_is_a_failed_precondition() {
    let v2_only = start_crypto(with_keys(&[(2, KEY_TWO)])).await;
    let one = start_crypto(with_keys(&[(1, KEY_ONE)])).await;
    let old = encrypt(&mut client(&one).await, b"v1 secret", b"aad").await;

    let status = client(&v2_only)
        .await
        .decrypt(decrypt_request(&old, b"aad"))
        .await
        .expect_err("unknown version");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&status), "KEY_VERSION_UNKNOWN");
}

#[tokio::test]
async fn a_different_key_under_the_same_version_shows_in_the_check_value_and_fails_to_decrypt() {
    let right = start_crypto(with_key(KEY_ONE)).await;
    let wrong = start_crypto(with_key(KEY_TWO)).await;
    let mut right_client = client(&right).await;
    let mut wrong_client = client(&wrong).await;
    let right_info = right_client
        .get_key_info(GetKeyInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    let wrong_info = wrong_client
        .get_key_info(GetKeyInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    let check = |info: &proto::crypto::GetKeyInfoResponse| info.versions[0].check_value.clone();
    assert_eq!(check(&right_info).len(), 16);
    assert_ne!(check(&right_info), check(&wrong_info));

    let ciphertext = encrypt(&mut right_client, b"keyed", b"aad").await;
    let status = wrong_client
        .decrypt(decrypt_request(&ciphertext, b"aad"))
        .await
        .expect_err("another key must not decrypt");
    assert_eq!(error_reason(&status), "CIPHERTEXT_NOT_AUTHENTIC");

    let encoded = right_info.encode_to_vec();
    assert!(
        !encoded.windows(32).any(|window| window == KEY_ONE),
        "no key material in GetKeyInfo"
    );
}

/// PBKDF2-HMAC-SHA256("dev-master-secret",
/// "agentregistry/root-key/pbkdf2-v2:" + "dev-salt", 100,000 iterations, 32
/// bytes): the documented `pbkdf2-v2` root, computed independently with
/// Python's `hashlib.pbkdf2_hmac`.
const PBKDF2_VECTOR_HEX: &str = "dc09b028e00aa9a5bf55bbb1647d2c1c636cc83614fd952eea2a4442f49ba698";

#[tokio::test]
async fn the_pbkdf2_path_and_the_direct_key_path_give_the_same_working_keyring() {
    let derived = start_crypto(
        Launch::default()
            .env("MASTER_SECRET", "dev-master-secret")
            .env("ENCRYPTION_SALT", "dev-salt"),
    )
    .await;
    let root: [u8; 32] = hex::decode(PBKDF2_VECTOR_HEX)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let direct = start_crypto(with_key(root)).await;

    let mut derived_client = client(&derived).await;
    let mut direct_client = client(&direct).await;
    let derived_info = derived_client
        .get_key_info(GetKeyInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    let direct_info = direct_client
        .get_key_info(GetKeyInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(
        derived_info.versions[0].derivation(),
        KeyDerivation::Pbkdf2V2
    );
    assert_eq!(direct_info.versions[0].derivation(), KeyDerivation::Direct);
    assert_eq!(
        derived_info.versions[0].check_value, direct_info.versions[0].check_value,
        "PBKDF2 output equals the independent vector"
    );

    let ciphertext = encrypt(&mut derived_client, b"cross-check", b"aad").await;
    let opened = direct_client
        .decrypt(decrypt_request(&ciphertext, b"aad"))
        .await
        .expect("the direct keyring decrypts what the derived one sealed")
        .into_inner();
    assert_eq!(opened.plaintext, b"cross-check");
}

#[tokio::test]
async fn batches_keep_order_and_name_the_bad_item() {
    let service = start_crypto(with_key(KEY_ONE).arg("--max-batch-items").arg("8")).await;
    let mut client = client(&service).await;
    let plaintexts: Vec<Vec<u8>> = (0..8).map(|i| format!("secret-{i}").into_bytes()).collect();
    let sealed = client
        .encrypt_batch(EncryptBatchRequest {
            items: plaintexts
                .iter()
                .map(|p| encrypt_request(p, b"aad"))
                .collect(),
        })
        .await
        .expect("encrypt batch")
        .into_inner();
    let opened = client
        .decrypt_batch(DecryptBatchRequest {
            items: sealed
                .items
                .iter()
                .map(|s| decrypt_request(&s.ciphertext, b"aad"))
                .collect(),
        })
        .await
        .expect("decrypt batch")
        .into_inner();
    let round_tripped: Vec<Vec<u8>> = opened.items.into_iter().map(|o| o.plaintext).collect();
    assert_eq!(round_tripped, plaintexts);

    let status = client
        .encrypt_batch(EncryptBatchRequest {
            items: vec![encrypt_request(b"ok", b""), encrypt_request(b"", b"")],
        })
        .await
        .expect_err("empty plaintext");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violation_fields(&status), ["items[1].plaintext"]);

    let status = client
        .encrypt_batch(EncryptBatchRequest {
            items: vec![encrypt_request(b"x", b""); 9],
        })
        .await
        .expect_err("too many items");
    assert_eq!(violation_fields(&status), ["items"]);

    let status = client
        .decrypt_batch(DecryptBatchRequest { items: vec![] })
        .await
        .expect_err("empty batch");
    assert_eq!(violation_fields(&status), ["items"]);
}

/// The process's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[tokio::test]
async fn a_batch_past_its_limit_is_refused_before_its_items_are_decoded() {
    // The default limits: 1,000 items, 4 MiB messages. Just under 4 MiB of
    // empty items is two million of them; decoded, about 240 MB.
    let service = start_crypto(with_key(KEY_ONE)).await;
    let channel = service.channel().await;
    let hostile = [0x0a, 0x00].repeat((4 * 1024 * 1024 - 64) / 2);
    let peak_before = peak_rss_kib(service.pid());
    for method in ["EncryptBatch", "DecryptBatch", "Rewrap", "ImportFernet"] {
        let path = format!("/agentregistry.crypto.v1.CryptoService/{method}");
        let status =
            tests::raw::unary(channel.clone(), &path, tonic::Request::new(hostile.clone()))
                .await
                .expect_err("two million items");
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
        assert_eq!(violation_fields(&status), ["items"], "{method}");
        assert!(
            status.message().contains("at most 1000 items"),
            "{method}: {status:?}"
        );
    }
    let grown_kib = peak_rss_kib(service.pid()).saturating_sub(peak_before);
    assert!(
        grown_kib < 64 * 1024,
        "the peak memory grew by {grown_kib} KiB: the items were decoded"
    );

    // A batch at the limit is served.
    let sealed = client(&service)
        .await
        .encrypt_batch(EncryptBatchRequest {
            items: vec![encrypt_request(b"x", b""); 1000],
        })
        .await
        .expect("1,000 items")
        .into_inner();
    assert_eq!(sealed.items.len(), 1000);
}

#[tokio::test]
async fn bad_input_gets_a_field_violation_per_bad_field() {
    let service = start_crypto(
        with_key(KEY_ONE)
            .arg("--max-plaintext-bytes")
            .arg("16")
            .arg("--max-aad-bytes")
            .arg("8")
            .arg("--max-message-bytes")
            .arg("1024"),
    )
    .await;
    let mut client = client(&service).await;

    let status = client
        .encrypt(encrypt_request(&[7u8; 17], &[1u8; 9]))
        .await
        .expect_err("oversized fields");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violation_fields(&status), ["plaintext", "associated_data"]);

    let status = client
        .decrypt(decrypt_request("", b""))
        .await
        .expect_err("empty ciphertext");
    assert_eq!(violation_fields(&status), ["ciphertext"]);

    for garbage in [
        "not a ciphertext",
        "arc1.x.AAAA",
        "arc1.1.%%%%",
        "arc9.1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let status = client
            .decrypt(decrypt_request(garbage, b""))
            .await
            .expect_err("garbage");
        assert_eq!(status.code(), Code::InvalidArgument, "{garbage}");
        assert_eq!(violation_fields(&status), ["ciphertext"], "{garbage}");
    }

    let status = client
        .decrypt(decrypt_request(&"A".repeat(4096), b""))
        .await
        .expect_err("message over the size limit");
    assert_eq!(status.code(), Code::OutOfRange);

    // The server still answers after all of that.
    let ciphertext = encrypt(&mut client, b"still fine", b"").await;
    assert!(ciphertext.starts_with("arc1.1."));
}

#[tokio::test]
async fn serves_over_a_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("crypto.sock");
    let service = start_crypto(
        with_key(KEY_ONE)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display())),
    )
    .await;
    assert_eq!(service.address, format!("unix:{}", socket.display()));
    let mut client = CryptoServiceClient::new(unix_channel(&socket).await);
    let ciphertext = encrypt(&mut client, b"over uds", b"aad").await;
    let opened = client
        .decrypt(decrypt_request(&ciphertext, b"aad"))
        .await
        .expect("decrypt")
        .into_inner();
    assert_eq!(opened.plaintext, b"over uds");
}

struct TlsFixture {
    _dir: tempfile::TempDir,
    ca: pki::Authority,
    service: Process,
}

async fn start_with_mtls() -> TlsFixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Authority::new("agentregistry test CA");
    let server = ca.server("crypto.test");
    let launch = with_key(KEY_ONE)
        .arg("--tls-cert-file")
        .arg(
            pki::write(dir.path(), "server.pem", &server.cert_pem)
                .display()
                .to_string(),
        )
        .arg("--tls-key-file")
        .arg(
            pki::write(dir.path(), "server.key", &server.key_pem)
                .display()
                .to_string(),
        )
        .arg("--tls-client-ca-file")
        .arg(
            pki::write(dir.path(), "ca.pem", &ca.cert_pem())
                .display()
                .to_string(),
        )
        .arg("--allowed-clients")
        .arg("registry.test");
    let service = start_crypto(launch).await;
    TlsFixture {
        _dir: dir,
        ca,
        service,
    }
}

async fn tls_channel(
    fixture: &TlsFixture,
    client_cert: Option<&pki::Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(fixture.ca.cert_pem()))
        .domain_name("crypto.test");
    if let Some(issued) = client_cert {
        tls = tls.identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem));
    }
    Endpoint::from_shared(format!("https://{}", fixture.service.address))
        .expect("url")
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn mutual_tls_admits_only_allow_listed_client_certificates() {
    let fixture = start_with_mtls().await;

    let allowed = fixture.ca.client("registry.test");
    let channel = tls_channel(&fixture, Some(&allowed))
        .await
        .expect("allowed client connects");
    let ciphertext = encrypt(&mut CryptoServiceClient::new(channel), b"over mtls", b"aad").await;
    assert!(ciphertext.starts_with("arc1.1."));

    let stranger = fixture.ca.client("someone-else.test");
    let channel = tls_channel(&fixture, Some(&stranger))
        .await
        .expect("handshake succeeds");
    let status = CryptoServiceClient::new(channel)
        .encrypt(encrypt_request(b"x", b""))
        .await
        .expect_err("a CA-signed but unlisted client is refused");
    assert_eq!(status.code(), Code::PermissionDenied);

    let foreign_ca = pki::Authority::new("another CA");
    let foreign = foreign_ca.client("registry.test");
    let refused = match tls_channel(&fixture, Some(&foreign)).await {
        Err(_) => true,
        Ok(channel) => CryptoServiceClient::new(channel)
            .encrypt(encrypt_request(b"x", b""))
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from another CA is refused");

    let refused = match tls_channel(&fixture, None).await {
        Err(_) => true,
        Ok(channel) => CryptoServiceClient::new(channel)
            .encrypt(encrypt_request(b"x", b""))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate is refused");
}
