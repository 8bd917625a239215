//! The `CryptoService` gRPC handlers: validate the request, call the
//! keyring, convert back, and write the key-use audit line of every value
//! opened. Who may call which handler is decided before, by the gate in
//! `identity`. No key material or plaintext is ever logged.

use proto::crypto::crypto_service_server::CryptoService;
use proto::crypto::{
    DecryptBatchRequest, DecryptBatchResponse, DecryptRequest, DecryptResponse,
    EncryptBatchRequest, EncryptBatchResponse, EncryptRequest, EncryptResponse, GetKeyInfoRequest,
    GetKeyInfoResponse, ImportFernetItem, ImportFernetRequest, ImportFernetResponse,
    ImportFernetResult, KeyDerivation, KeyVersionInfo, RetireKeyVersionRequest, RewrapRequest,
    RewrapResponse, RewrappedCiphertext, import_fernet_result,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

use crate::audit::{KeyUse, Outcome};
use crate::ciphertext::{self, FORMAT_TAG};
use crate::config::Limits;
use crate::error::{Error, FieldViolation};
use crate::fernet::FernetKey;
use crate::identity::Caller;
use crate::keyring::{Derivation, Keyring, Opened, Rewrapped, Sealed, SharedKeyring};

/// The handlers, sharing one live keyring.
#[derive(Debug, Clone)]
pub struct Crypto {
    keyring: SharedKeyring,
    limits: Limits,
    legacy_key: Option<Arc<FernetKey>>,
}

impl Crypto {
    /// Handlers over `keyring`, enforcing `limits`.
    pub fn new(keyring: SharedKeyring, limits: Limits) -> Self {
        Self {
            keyring,
            limits,
            legacy_key: None,
        }
    }

    /// The same handlers, with the Python platform's Fernet key for
    /// `ImportFernet` (`None` refuses imports).
    pub fn with_legacy_key(mut self, legacy_key: Option<Arc<FernetKey>>) -> Self {
        self.legacy_key = legacy_key;
        self
    }

    /// Decrypts one legacy token and seals its plaintext under the active
    /// key. The error is the item's report: it names what is wrong and
    /// never holds the token, the plaintext or key material.
    fn import_one(
        &self,
        legacy: &FernetKey,
        keyring: &Keyring,
        item: &ImportFernetItem,
    ) -> Result<Sealed, String> {
        // Two base64 layers grow a value by at most 16/9; Fernet adds 73
        // bytes of header, padding and tag.
        let max_token_chars = self.limits.max_plaintext_bytes.saturating_mul(2) + 256;
        if item.token.len() > max_token_chars {
            return Err(format!("token is longer than {max_token_chars} characters"));
        }
        if item.associated_data.len() > self.limits.max_aad_bytes {
            return Err(format!(
                "associated_data must be at most {} bytes",
                self.limits.max_aad_bytes
            ));
        }
        let plaintext = legacy.decrypt(&item.token).map_err(|e| e.to_string())?;
        if plaintext.is_empty() {
            return Err("the token holds an empty value".to_owned());
        }
        if plaintext.len() > self.limits.max_plaintext_bytes {
            return Err(format!(
                "the token's value is larger than {} bytes",
                self.limits.max_plaintext_bytes
            ));
        }
        keyring
            .encrypt(&plaintext, &item.associated_data)
            .map_err(|e| e.to_string())
    }

    fn encrypt_one(&self, item: &EncryptRequest) -> Result<Sealed, Error> {
        let mut violations = Vec::new();
        if item.plaintext.is_empty() {
            violations.push(FieldViolation::new("plaintext", "must not be empty"));
        } else if item.plaintext.len() > self.limits.max_plaintext_bytes {
            violations.push(FieldViolation::new(
                "plaintext",
                format!("must be at most {} bytes", self.limits.max_plaintext_bytes),
            ));
        }
        self.check_aad(&item.associated_data, &mut violations);
        if !violations.is_empty() {
            return Err(Error::BadRequest(violations));
        }
        self.keyring
            .current()
            .encrypt(&item.plaintext, &item.associated_data)
    }

    fn decrypt_one(
        &self,
        item: &DecryptRequest,
        caller: &Caller,
        method: &'static str,
    ) -> Result<Opened, Error> {
        self.check_ciphertext_request(item)?;
        let opened =
            self.keyring
                .current()
                .decrypt(&item.ciphertext, &item.associated_data, "ciphertext");
        KeyUse {
            caller,
            method,
            key_version: ciphertext::key_version_of(&item.ciphertext).ok(),
            new_key_version: None,
            associated_data: &item.associated_data,
            outcome: if opened.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Refused
            },
        }
        .log();
        opened
    }

    fn rewrap_one(&self, item: &DecryptRequest, caller: &Caller) -> Result<Rewrapped, Error> {
        self.check_ciphertext_request(item)?;
        let rewrapped =
            self.keyring
                .current()
                .rewrap(&item.ciphertext, &item.associated_data, "ciphertext");
        KeyUse {
            caller,
            method: "Rewrap",
            key_version: ciphertext::key_version_of(&item.ciphertext).ok(),
            new_key_version: rewrapped.as_ref().ok().map(|r| r.sealed.key_version),
            associated_data: &item.associated_data,
            outcome: if rewrapped.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Refused
            },
        }
        .log();
        rewrapped
    }

    fn check_ciphertext_request(&self, item: &DecryptRequest) -> Result<(), Error> {
        let mut violations = Vec::new();
        if item.ciphertext.is_empty() {
            violations.push(FieldViolation::new("ciphertext", "must not be empty"));
        }
        self.check_aad(&item.associated_data, &mut violations);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::BadRequest(violations))
        }
    }

    fn check_aad(&self, aad: &[u8], violations: &mut Vec<FieldViolation>) {
        if aad.len() > self.limits.max_aad_bytes {
            violations.push(FieldViolation::new(
                "associated_data",
                format!("must be at most {} bytes", self.limits.max_aad_bytes),
            ));
        }
    }

    fn check_batch_size(&self, len: usize) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::bad_field("items", "must hold at least one item"));
        }
        if len > self.limits.max_batch_items {
            return Err(Error::bad_field(
                "items",
                format!("must hold at most {} items", self.limits.max_batch_items),
            ));
        }
        Ok(())
    }

    /// Applies `one` to every item; the first failure fails the batch and
    /// names the item.
    fn each<I, O>(
        &self,
        items: &[I],
        one: impl Fn(&Self, &I) -> Result<O, Error>,
    ) -> Result<Vec<O>, Error> {
        self.check_batch_size(items.len())?;
        items
            .iter()
            .enumerate()
            .map(|(index, item)| one(self, item).map_err(|e| e.within(&format!("items[{index}]"))))
            .collect()
    }
}

#[tonic::async_trait]
impl CryptoService for Crypto {
    #[tracing::instrument(skip_all, fields(key_version))]
    async fn encrypt(
        &self,
        request: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        let sealed = self.encrypt_one(request.get_ref())?;
        tracing::Span::current().record("key_version", sealed.key_version);
        Ok(Response::new(sealed_response(sealed)))
    }

    #[tracing::instrument(skip_all, fields(key_version))]
    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let caller = caller_of(&request);
        let opened = self.decrypt_one(request.get_ref(), &caller, "Decrypt")?;
        tracing::Span::current().record("key_version", opened.key_version);
        let mut response = Response::new(opened_response(opened));
        // The registry's readiness check, every few seconds: its access log
        // line goes to DEBUG too (see `audit`).
        if request.get_ref().associated_data == crate::audit::KEY_CANARY_AAD {
            response.extensions_mut().insert(ops::rpc::Quiet);
        }
        Ok(response)
    }

    #[tracing::instrument(skip_all, fields(items = request.get_ref().items.len()))]
    async fn encrypt_batch(
        &self,
        request: Request<EncryptBatchRequest>,
    ) -> Result<Response<EncryptBatchResponse>, Status> {
        let sealed = self.each(&request.get_ref().items, |this, item| {
            this.encrypt_one(item)
        })?;
        Ok(Response::new(EncryptBatchResponse {
            items: sealed.into_iter().map(sealed_response).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(items = request.get_ref().items.len()))]
    async fn decrypt_batch(
        &self,
        request: Request<DecryptBatchRequest>,
    ) -> Result<Response<DecryptBatchResponse>, Status> {
        let caller = caller_of(&request);
        let opened = self.each(&request.get_ref().items, |this, item| {
            this.decrypt_one(item, &caller, "DecryptBatch")
        })?;
        Ok(Response::new(DecryptBatchResponse {
            items: opened.into_iter().map(opened_response).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(items = request.get_ref().items.len(), rewrapped))]
    async fn rewrap(
        &self,
        request: Request<RewrapRequest>,
    ) -> Result<Response<RewrapResponse>, Status> {
        let caller = caller_of(&request);
        let results = self.each(&request.get_ref().items, |this, item| {
            this.rewrap_one(item, &caller)
        })?;
        let items: Vec<RewrappedCiphertext> = results
            .into_iter()
            .map(|result| RewrappedCiphertext {
                rewrapped: result.previous_key_version != result.sealed.key_version,
                ciphertext: result.sealed.ciphertext,
                key_version: result.sealed.key_version,
                previous_key_version: result.previous_key_version,
            })
            .collect();
        let rewrapped = items.iter().filter(|item| item.rewrapped).count();
        tracing::Span::current().record("rewrapped", rewrapped);
        Ok(Response::new(RewrapResponse { items }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_key_info(
        &self,
        _request: Request<GetKeyInfoRequest>,
    ) -> Result<Response<GetKeyInfoResponse>, Status> {
        Ok(Response::new(key_info(&self.keyring.current())))
    }

    #[tracing::instrument(skip_all, fields(version = request.get_ref().version))]
    async fn retire_key_version(
        &self,
        request: Request<RetireKeyVersionRequest>,
    ) -> Result<Response<GetKeyInfoResponse>, Status> {
        let current = self.keyring.current();
        let retired = current.without(request.get_ref().version)?;
        self.keyring.replace(retired);
        tracing::warn!("key version retired from the running keyring");
        Ok(Response::new(key_info(&self.keyring.current())))
    }

    #[tracing::instrument(
        skip_all,
        fields(items = request.get_ref().items.len(), imported, failed)
    )]
    async fn import_fernet(
        &self,
        request: Request<ImportFernetRequest>,
    ) -> Result<Response<ImportFernetResponse>, Status> {
        let caller = caller_of(&request);
        let items = &request.get_ref().items;
        self.check_batch_size(items.len())?;
        let legacy = self
            .legacy_key
            .as_deref()
            .ok_or(Error::LegacyKeyNotConfigured)?;
        // One keyring snapshot for the whole batch.
        let keyring = self.keyring.current();
        let results: Vec<ImportFernetResult> = items
            .iter()
            .map(|item| {
                let imported = self.import_one(legacy, &keyring, item);
                KeyUse {
                    caller: &caller,
                    method: "ImportFernet",
                    key_version: None,
                    new_key_version: imported.as_ref().ok().map(|s| s.key_version),
                    associated_data: &item.associated_data,
                    outcome: if imported.is_ok() {
                        Outcome::Ok
                    } else {
                        Outcome::Refused
                    },
                }
                .log();
                let outcome = match imported {
                    Ok(sealed) => import_fernet_result::Outcome::Encrypted(sealed_response(sealed)),
                    Err(error) => import_fernet_result::Outcome::Error(error),
                };
                ImportFernetResult {
                    outcome: Some(outcome),
                }
            })
            .collect();
        let failed = results
            .iter()
            .filter(|r| matches!(r.outcome, Some(import_fernet_result::Outcome::Error(_))))
            .count();
        let span = tracing::Span::current();
        span.record("imported", results.len() - failed);
        span.record("failed", failed);
        Ok(Response::new(ImportFernetResponse { results }))
    }
}

/// The caller the gate admitted (every call passes the gate; a handler
/// called without it, as in unit tests, audits an unknown caller).
fn caller_of<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::unknown)
}

/// The keyring description a `GetKeyInfo` returns.
fn key_info(keyring: &Keyring) -> GetKeyInfoResponse {
    {
        let versions = keyring
            .versions()
            .into_iter()
            .map(|info| KeyVersionInfo {
                version: info.version,
                active: info.active,
                check_value: info.check_value,
                derivation: match info.derivation {
                    Derivation::Direct => KeyDerivation::Direct,
                    Derivation::Pbkdf2 => KeyDerivation::Pbkdf2V2,
                    Derivation::LegacyPbkdf2 => KeyDerivation::LegacyPbkdf2,
                }
                .into(),
                encryptions_since_start: info.encryptions,
            })
            .collect();
        GetKeyInfoResponse {
            active_version: keyring.active_version(),
            versions,
            ciphertext_format: FORMAT_TAG.to_owned(),
        }
    }
}

fn sealed_response(sealed: Sealed) -> EncryptResponse {
    EncryptResponse {
        ciphertext: sealed.ciphertext,
        key_version: sealed.key_version,
    }
}

fn opened_response(opened: Opened) -> DecryptResponse {
    DecryptResponse {
        // The response buffer leaves our hands here; prost does not zeroize.
        plaintext: opened.plaintext.to_vec(),
        key_version: opened.key_version,
    }
}
