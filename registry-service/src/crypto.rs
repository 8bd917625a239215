//! The registry's client of crypto-service. Plaintext keys pass through
//! here only on their way to be encrypted, or back out to `ResolveAgent`;
//! they are never logged.

use std::time::{Duration, Instant};

use ops::telemetry::PropagateTrace;
use tonic::service::interceptor::InterceptedService;

use proto::crypto::crypto_service_client::CryptoServiceClient;
use proto::crypto::{
    DecryptRequest, EncryptRequest, GetKeyInfoRequest, GetKeyInfoResponse,
    RetireKeyVersionRequest as CryptoRetireRequest, RewrapRequest,
};
use proto::crypto::{ImportFernetItem, ImportFernetRequest, import_fernet_result};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::telemetry::RegistryMetrics;

/// TLS material for calling crypto-service over mutual TLS.
#[derive(Clone)]
pub struct ClientTls {
    /// CA that signed crypto-service's certificate, PEM.
    pub ca_pem: Vec<u8>,
    /// This registry's client certificate, PEM.
    pub cert_pem: Vec<u8>,
    /// Its private key, PEM.
    pub key_pem: Zeroizing<Vec<u8>>,
    /// The DNS name crypto-service's certificate must be valid for.
    pub server_name: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A cheap-to-clone handle on crypto-service. Every call carries the
/// caller's trace context and is counted in the registry's metrics.
#[derive(Debug, Clone)]
pub struct Crypto {
    client: CryptoServiceClient<InterceptedService<Channel, PropagateTrace>>,
    metrics: RegistryMetrics,
}

impl Crypto {
    /// A client for `endpoint` (`http://host:port`, `https://…` with `tls`,
    /// or `unix:/path`). Connects lazily: the registry starts while
    /// crypto-service is still down, and reconnects when it returns.
    pub fn connect_lazy(
        endpoint: &str,
        tls: Option<ClientTls>,
        timeout: Duration,
        metrics: RegistryMetrics,
    ) -> Result<Self, Error> {
        let setting = "CRYPTO_ENDPOINT";
        let channel = if let Some(path) = endpoint.strip_prefix("unix:") {
            let path = path.to_owned();
            Endpoint::from_static("http://crypto.invalid")
                .timeout(timeout)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
        } else {
            let mut builder = Endpoint::from_shared(endpoint.to_owned())
                .map_err(|_| Error::config(setting, "is not a URL"))?
                .timeout(timeout)
                .connect_timeout(timeout)
                .tcp_nodelay(true);
            if let Some(tls) = tls {
                let config = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                    .identity(Identity::from_pem(&tls.cert_pem, tls.key_pem.as_slice()))
                    .domain_name(tls.server_name);
                builder = builder
                    .tls_config(config)
                    .map_err(|e| Error::config("CRYPTO_TLS_CA_FILE", e.to_string()))?;
            }
            builder.connect_lazy()
        };
        Ok(Self {
            client: CryptoServiceClient::with_interceptor(channel, PropagateTrace),
            metrics,
        })
    }

    /// Encrypts a provider's API key, bound to its tenant and id.
    pub async fn encrypt_api_key(
        &self,
        tenant: &str,
        provider_id: &str,
        key: &str,
    ) -> Result<String, Error> {
        let request = EncryptRequest {
            plaintext: key.as_bytes().to_vec(),
            associated_data: api_key_aad(tenant, provider_id),
        };
        let started = Instant::now();
        let response = self.client.clone().encrypt(request).await;
        self.observe("Encrypt", started, &response);
        Ok(response.map_err(from_status)?.into_inner().ciphertext)
    }

    /// Decrypts a provider's API key.
    pub async fn decrypt_api_key(
        &self,
        tenant: &str,
        provider_id: &str,
        ciphertext: &str,
    ) -> Result<Zeroizing<String>, Error> {
        let request = DecryptRequest {
            ciphertext: ciphertext.to_owned(),
            associated_data: api_key_aad(tenant, provider_id),
        };
        let started = Instant::now();
        let response = self.client.clone().decrypt(request).await;
        self.observe("Decrypt", started, &response);
        let response = response.map_err(from_status)?;
        let plaintext = Zeroizing::new(response.into_inner().plaintext);
        String::from_utf8(plaintext.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| Error::Internal("stored API key is not UTF-8".to_owned()))
    }

    /// Carries API keys over from the Python platform: crypto-service
    /// decrypts each Fernet token (`token`, as the platform stored it) with
    /// its legacy key and re-encrypts the value bound to `tenant` and
    /// `provider_id`, so no plaintext reaches this process. One result per
    /// `(provider_id, token)` item, in order: the new ciphertext, or why that
    /// token could not be imported. FAILED_PRECONDITION
    /// (`LEGACY_KEY_NOT_CONFIGURED`) when crypto-service has no legacy key.
    pub async fn import_fernet(
        &self,
        tenant: &str,
        items: &[(&str, &str)],
    ) -> Result<Vec<Result<String, String>>, Error> {
        let request = ImportFernetRequest {
            items: items
                .iter()
                .map(|(provider_id, token)| ImportFernetItem {
                    token: (*token).to_owned(),
                    associated_data: api_key_aad(tenant, provider_id),
                })
                .collect(),
        };
        let started = Instant::now();
        let response = self.client.clone().import_fernet(request).await;
        self.observe("ImportFernet", started, &response);
        let results = match response {
            Ok(response) => response.into_inner().results,
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(Error::precondition(
                    "LEGACY_KEY_NOT_CONFIGURED",
                    format!(
                        "crypto-service answered FAILED_PRECONDITION: {}",
                        status.message()
                    ),
                ));
            }
            Err(status) => return Err(from_status(status)),
        };
        if results.len() != items.len() {
            return Err(Error::Internal(format!(
                "crypto-service answered {} ImportFernet results for {} items",
                results.len(),
                items.len()
            )));
        }
        Ok(results
            .into_iter()
            .map(|result| match result.outcome {
                Some(import_fernet_result::Outcome::Encrypted(sealed)) => Ok(sealed.ciphertext),
                Some(import_fernet_result::Outcome::Error(reason)) => Err(reason),
                None => Err("crypto-service gave no outcome".to_owned()),
            })
            .collect())
    }

    /// The keyring description (no key material).
    pub async fn key_info(&self) -> Result<GetKeyInfoResponse, Error> {
        let started = Instant::now();
        let response = self.client.clone().get_key_info(GetKeyInfoRequest {}).await;
        self.observe("GetKeyInfo", started, &response);
        Ok(response.map_err(from_status)?.into_inner())
    }

    /// Moves ciphertexts (each with its associated data) to the active key
    /// version; answers `(ciphertext, key_version, rewrapped)` per item.
    pub async fn rewrap(&self, items: Vec<(String, Vec<u8>)>) -> Result<Vec<Rewrapped>, Error> {
        let request = RewrapRequest {
            items: items
                .into_iter()
                .map(|(ciphertext, associated_data)| DecryptRequest {
                    ciphertext,
                    associated_data,
                })
                .collect(),
        };
        let started = Instant::now();
        let response = self.client.clone().rewrap(request).await;
        self.observe("Rewrap", started, &response);
        Ok(response
            .map_err(from_status)?
            .into_inner()
            .items
            .into_iter()
            .map(|item| Rewrapped {
                ciphertext: item.ciphertext,
                key_version: item.key_version,
            })
            .collect())
    }

    /// Retires a key version in crypto-service's running keyring.
    pub async fn retire(&self, version: u32) -> Result<GetKeyInfoResponse, Error> {
        let started = Instant::now();
        let response = self
            .client
            .clone()
            .retire_key_version(CryptoRetireRequest { version })
            .await;
        self.observe("RetireKeyVersion", started, &response);
        response
            .map(tonic::Response::into_inner)
            .map_err(|status| match status.code() {
                tonic::Code::FailedPrecondition => Error::precondition(
                    "KEY_VERSION_ACTIVE",
                    format!("crypto-service refused: {}", status.message()),
                ),
                _ => from_status(status),
            })
    }

    /// Encrypts a non-secret value (the key canary).
    pub async fn encrypt_raw(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, RawFailure> {
        let request = EncryptRequest {
            plaintext: plaintext.to_vec(),
            associated_data: aad.to_vec(),
        };
        let started = Instant::now();
        let response = self.client.clone().encrypt(request).await;
        self.observe("Encrypt", started, &response);
        response
            .map(|r| r.into_inner().ciphertext)
            .map_err(RawFailure::of)
    }

    /// Decrypts a non-secret value (the key canary), telling a wrong key
    /// from an outage.
    pub async fn decrypt_raw(&self, ciphertext: &str, aad: &[u8]) -> Result<Vec<u8>, RawFailure> {
        let request = DecryptRequest {
            ciphertext: ciphertext.to_owned(),
            associated_data: aad.to_vec(),
        };
        let started = Instant::now();
        let response = self.client.clone().decrypt(request).await;
        self.observe("Decrypt", started, &response);
        response
            .map(|r| r.into_inner().plaintext)
            .map_err(RawFailure::of)
    }

    fn observe<T>(
        &self,
        method: &'static str,
        started: Instant,
        result: &Result<T, tonic::Status>,
    ) {
        let code = result
            .as_ref()
            .map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
        self.metrics
            .crypto_call(method, code, started.elapsed().as_secs_f64());
    }
}

/// Why a call on a non-secret value failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFailure {
    /// crypto-service answered and refused the value: it holds another key.
    Refused(String),
    /// crypto-service did not answer, or failed.
    Unreachable(String),
}

impl RawFailure {
    fn of(status: tonic::Status) -> Self {
        use tonic::Code;
        match status.code() {
            Code::InvalidArgument | Code::FailedPrecondition => {
                Self::Refused(status.message().to_owned())
            }
            code => Self::Unreachable(format!("{code:?}: {}", status.message())),
        }
    }
}

/// A ciphertext after Rewrap.
#[derive(Debug, Clone)]
pub struct Rewrapped {
    /// The ciphertext under the active version.
    pub ciphertext: String,
    /// That version.
    pub key_version: u32,
}

/// The key version a ciphertext names (`arc1.<version>.…`), read without
/// decrypting; `None` for anything else.
pub fn key_version_of(ciphertext: &str) -> Option<u32> {
    let mut parts = ciphertext.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("arc1"), Some(version), Some(_)) => version.parse().ok(),
        _ => None,
    }
}

/// Associated data binding a key's ciphertext to its place: a ciphertext
/// copied to another provider or tenant does not decrypt.
pub fn api_key_aad(tenant: &str, provider_id: &str) -> Vec<u8> {
    format!("agentregistry.v1|tenant={tenant}|provider={provider_id}|field=api_key").into_bytes()
}

fn from_status(status: tonic::Status) -> Error {
    use tonic::Code;
    use tonic_types::StatusExt;
    if status.code() == Code::FailedPrecondition {
        // crypto-service's ErrorInfo names the missing version.
        if let Some(info) = status
            .get_details_error_info()
            .filter(|info| info.reason == "KEY_VERSION_UNKNOWN")
        {
            let version = info
                .metadata
                .get("key_version")
                .map_or("(unknown)", String::as_str);
            return Error::precondition(
                "KEY_VERSION_UNKNOWN",
                format!(
                    "a stored credential is sealed under key version {version}, which \
                     crypto-service's keyring does not hold (retired, or never configured): add \
                     key version {version} back to crypto-service's keyring, or store a new \
                     api_key for the provider"
                ),
            );
        }
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            Error::Unavailable {
                dependency: "crypto-service",
                detail: format!("{:?}: {}", status.code(), status.message()),
            }
        }
        code => Error::Internal(format!(
            "crypto-service answered {code:?}: {}",
            status.message()
        )),
    }
}
