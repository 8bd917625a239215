//! The registry's client of crypto-service. Plaintext keys pass through
//! here only on their way to be encrypted, or back out to `ResolveAgent`;
//! they are never logged.

use std::time::{Duration, Instant};

use ops::telemetry::PropagateTrace;
use tonic::service::interceptor::InterceptedService;

use proto::crypto::crypto_service_client::CryptoServiceClient;
use proto::crypto::{DecryptRequest, EncryptRequest, GetKeyInfoRequest, GetKeyInfoResponse};
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

    /// The keyring description (no key material).
    pub async fn key_info(&self) -> Result<GetKeyInfoResponse, Error> {
        let started = Instant::now();
        let response = self.client.clone().get_key_info(GetKeyInfoRequest {}).await;
        self.observe("GetKeyInfo", started, &response);
        Ok(response.map_err(from_status)?.into_inner())
    }

    fn observe<T>(&self, method: &str, started: Instant, result: &Result<T, tonic::Status>) {
        let code = result
            .as_ref()
            .map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
        self.metrics
            .crypto_call(method, code, started.elapsed().as_secs_f64());
    }
}

/// Associated data binding a key's ciphertext to its place: a ciphertext
/// copied to another provider or tenant does not decrypt.
pub fn api_key_aad(tenant: &str, provider_id: &str) -> Vec<u8> {
    format!("agentregistry.v1|tenant={tenant}|provider={provider_id}|field=api_key").into_bytes()
}

fn from_status(status: tonic::Status) -> Error {
    use tonic::Code;
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
