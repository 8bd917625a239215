//! `ProviderService`. A new API key is encrypted by crypto-service before
//! the transaction starts, so a crypto outage writes nothing; reads never
//! call crypto-service. A retry answered from its request id that sends a
//! key has it compared with the key its first call stored (decrypted for
//! the comparison, never answered): the request's fingerprint holds only
//! that a key was sent (`retries`).

use proto::v1 as pb;
use proto::v1::provider_service_server::ProviderService;
use tonic::{Request, Response, Status};

use subtle::ConstantTimeEq;

use super::messages::{self, check_provider_counts};
use super::retries::{self, Intent, Mutation};
use super::{
    Registry, Resource, UpdateParts, creation, describe_as, message, parts, require_id,
    require_version, required,
};
use crate::caller::Caller;
use crate::error::Error;
use crate::model::Snapshot;
use crate::model::provider::{self, ProviderInput, ProviderSpec};
use crate::model::version::Action;
use crate::store::providers::{self as store, Providers};
use crate::store::request_ids::Answer;
use crate::store::versioned::{self, Record, Write};

impl Resource for Providers {
    super::resource_messages!(
        pb::Provider, pb::ProviderVersion, field "provider",
        counts check_provider_counts, mask paths provider::is_mask_path,
        output only &["api_key_set", "api_key_revision"]
    );

    /// A snapshot whose `base_url` is outside the allowed destinations is
    /// not restored.
    async fn restorable(
        registry: &Registry,
        tenant: &str,
        id: &str,
        number: i64,
    ) -> Result<(), Error> {
        if !registry.destinations.is_restricted() {
            return Ok(());
        }
        let target = versioned::get_version::<Providers>(&registry.db, tenant, id, number).await?;
        match ProviderSpec::from_json(&target.configuration)?.base_url {
            Some(url) if !registry.destinations.allows(&url) => Err(destination_not_allowed(&url)),
            _ => Ok(()),
        }
    }
}

impl Registry {
    /// Refuses a provider whose `base_url` names a host outside the
    /// deployment's allowed destinations (`PROVIDER_ALLOWED_HOSTS`).
    fn check_destination(&self, spec: &ProviderSpec) -> Result<(), Error> {
        match &spec.base_url {
            Some(url) if !self.destinations.allows(url) => Err(Error::bad_field(
                "provider.base_url",
                "names a host this deployment does not send keys to (PROVIDER_ALLOWED_HOSTS), \
                 or carries user information",
            )),
            _ => Ok(()),
        }
    }

    /// The spec to store: `input.spec` with the new key encrypted (bound to
    /// tenant and provider id), or the current key kept.
    async fn seal_key(
        &self,
        caller: &Caller,
        provider_id: &str,
        input: ProviderInput,
        (current_key, validate_only): (Option<String>, bool),
    ) -> Result<ProviderSpec, Error> {
        let mut spec = input.spec;
        spec.api_key = match input.new_api_key {
            None => current_key,
            Some(key) => {
                self.sealed(caller, provider_id, &key, validate_only)
                    .await?
            }
        };
        Ok(spec)
    }

    /// A new key as stored: encrypted by crypto-service (bound to tenant
    /// and provider id), `None` for an empty key (removing it). A dry run
    /// asks crypto-service nothing: the key was validated for shape, and
    /// the written-then-rolled-back row holds [`NOT_ENCRYPTED`] instead.
    async fn sealed(
        &self,
        caller: &Caller,
        provider_id: &str,
        key: &str,
        validate_only: bool,
    ) -> Result<Option<String>, Error> {
        if key.is_empty() {
            return Ok(None);
        }
        if validate_only {
            return Ok(Some(NOT_ENCRYPTED.to_owned()));
        }
        let sealed = self
            .crypto
            .encrypt_api_key(&caller.tenant, provider_id, key);
        Ok(Some(sealed.await?))
    }

    /// The provider as `answer`'s version holds it, for a retry of a
    /// `method` call that sends key `sent`: that version's key must be
    /// `sent`, else the request id is refused as used for another request.
    /// The stored key is decrypted for the comparison only; a retry that
    /// sends no key asks crypto-service nothing.
    async fn answered_with_key(
        &self,
        caller: &Caller,
        answer: Answer,
        sent: Option<&str>,
        method: &str,
    ) -> Result<Record<ProviderSpec>, Error> {
        let (tenant, id) = (&caller.tenant, &answer.resource_id);
        let answered =
            versioned::record_at::<Providers>(&self.db, tenant, id, answer.version_number);
        let answered = answered.await?;
        let Some(sent) = sent else {
            return Ok(answered);
        };
        let same = match &answered.spec.api_key {
            Some(ciphertext) => {
                let stored = self.crypto.decrypt_api_key(tenant, id, ciphertext).await?;
                bool::from(stored.as_bytes().ct_eq(sent.as_bytes()))
            }
            None => false,
        };
        if same {
            Ok(answered)
        } else {
            Err(retries::used_for_another_request(method))
        }
    }
}

super::versioned_service! {
    ProviderService for Providers = Providers::default();
    versions of provider_id; delete by provider_id;
    get_provider(GetProviderRequest);
    list_providers(ListProvidersRequest, "ListProviders") -> ListProvidersResponse { providers };
    delete_provider(DeleteProviderRequest);
    undelete_provider(UndeleteProviderRequest);
    purge_provider(PurgeProviderRequest);
    list_provider_versions(ListProviderVersionsRequest, "ListProviderVersions")
        -> ListProviderVersionsResponse;
    get_provider_version(GetProviderVersionRequest);
    diff_provider_versions(DiffProviderVersionsRequest) -> DiffProviderVersionsResponse;
    rollback_provider(RollbackProviderRequest);
    labels set_provider_label(SetProviderLabelRequest),
        delete_provider_label(DeleteProviderLabelRequest),
        list_provider_labels(ListProviderLabelsRequest),
        list_provider_label_history(ListProviderLabelHistoryRequest, "ListProviderLabelHistory");

    #[tracing::instrument(skip_all, fields(provider_id))]
    async fn create_provider(
        &self,
        request: Request<pb::CreateProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let (caller, request) = parts(request)?;
        let intent = Intent::of(&request)?;
        let input = required("provider", request.provider.as_ref())?;
        check_provider_counts(input)?;
        let input = ProviderSpec::from_proto(input)?;
        self.check_destination(&input.spec)?;
        let (write, id) = creation::<Providers>(&caller, &request.change_description)?;
        let write = intent.stamp(write);
        tracing::Span::current().record("provider_id", &id);
        let kind = Providers::default();
        if intent.validate_only {
            let spec = self.seal_key(&caller, &id, input, (None, true)).await?;
            let validated = versioned::validate_create(&self.db, &kind, &write, &id, spec);
            let validated = self.validated::<Providers>(&caller.tenant, validated.await?);
            return Ok(Response::new(validated.await?));
        }
        // The key is encrypted inside the turn: a retry that is answered
        // from its request id encrypts nothing (one that sends a key has
        // the stored key decrypted once, to compare them).
        let sent_key = input.new_api_key.clone();
        let create = || async {
            let spec = self.seal_key(&caller, &id, input, (None, false)).await?;
            let record = versioned::create(&self.db, &kind, write, id, spec).await?;
            Ok(message::<Providers>(&record))
        };
        let rebuild = |answer: Answer| async {
            let sent = sent_key.as_ref().map(|key| key.as_str());
            let method = pb::CreateProviderRequest::METHOD;
            let answered = self.answered_with_key(&caller, answer, sent, method);
            Ok(message::<Providers>(&answered.await?))
        };
        Ok(Response::new(self.once(&caller, &intent, create, rebuild).await?))
    }

    #[tracing::instrument(skip_all, fields(provider_id = %request.get_ref().provider.as_ref().map_or("", |p| &p.id)))]
    async fn update_provider(
        &self,
        request: Request<pb::UpdateProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let (caller, request) = parts(request)?;
        let intent = Intent::of(&request)?;
        let (mask, description) = (request.update_mask.as_ref(), &request.change_description);
        let (input, parts) =
            UpdateParts::of::<Providers>(&caller, request.provider, mask, description)?;
        let UpdateParts {
            write,
            expected,
            paths,
        } = parts;

        let write = intent.stamp(write);
        let kind = Providers {
            revoke_replaced: request.revoke_replaced_key,
        };
        // Validate against the current row first, so a bad request never
        // reaches crypto-service; encrypt a new key once, outside the
        // transaction; then write (re-applying the mask if a writer raced).
        let update = || async {
            let current = store::get(&self.db, &caller.tenant, &input.id).await?;
            let validated = apply(&current.spec, &input, paths.as_deref())?;
            self.check_destination(&validated.spec)?;
            let sealed_key = match &validated.new_api_key {
                Some(key) => Some(
                    self.sealed(&caller, &input.id, key, intent.validate_only)
                        .await?,
                ),
                None => None,
            };
            let change = |current: &Record<ProviderSpec>| {
                let mut spec = apply(&current.spec, &input, paths.as_deref())?.spec;
                // A new key is numbered by the store as it is written.
                (spec.api_key, spec.api_key_revision) = match &sealed_key {
                    Some(key) => (key.clone(), None),
                    None => (current.spec.api_key.clone(), current.spec.api_key_revision),
                };
                Ok(spec)
            };
            let id = &input.id;
            if intent.validate_only {
                let validated =
                    versioned::validate_update(&self.db, &kind, &write, id, expected, change);
                return self
                    .validated::<Providers>(&caller.tenant, validated.await?)
                    .await;
            }
            let written = versioned::update(&self.db, &kind, write, id, expected, change).await?;
            self.written::<Providers>(&caller.tenant, written).await
        };
        let rebuild = |answer: Answer| async {
            let sent = ProviderSpec::key_set_by(&input, paths.as_deref());
            let method = pb::UpdateProviderRequest::METHOD;
            let answered = self.answered_with_key(&caller, answer, sent, method);
            self.labelled::<Providers>(&caller.tenant, &answered.await?)
                .await
        };
        Ok(Response::new(self.once(&caller, &intent, update, rebuild).await?))
    }

    #[tracing::instrument(skip_all, fields(provider_id, revision))]
    async fn revoke_provider_key(
        &self,
        request: Request<pb::RevokeProviderKeyRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let (caller, request) = parts(request)?;
        let intent = Intent::of(&request)?;
        require_id("provider_id", &request.provider_id)?;
        require_version("revision", request.revision)?;
        let span = tracing::Span::current();
        span.record("provider_id", &request.provider_id);
        span.record("revision", request.revision);
        let revision = request.revision;
        let description = describe_as("reason", &request.reason, || {
            format!("Key revision {revision} revoked")
        })?;
        let write = intent.stamp(Write::new(&caller, Action::Update, description));
        let id = &request.provider_id;
        let revoke = || async {
            let validate_only = intent.validate_only;
            let revoked = store::revoke_key(&self.db, write, id, revision, validate_only).await?;
            let message = self.labelled::<Providers>(&caller.tenant, &revoked.record);
            let mut message = message.await?;
            if validate_only {
                message.validated_diff = revoked.diff.iter().map(messages::change).collect();
            }
            Ok(message)
        };
        let rebuild = |answer| self.labelled_at::<Providers>(&caller, answer);
        Ok(Response::new(self.once(&caller, &intent, revoke, rebuild).await?))
    }
}

/// What a dry run's (rolled-back) row holds in place of a new key's
/// ciphertext: never stored, never sent.
const NOT_ENCRYPTED: &str = "(validate_only: not encrypted)";

/// FAILED_PRECONDITION for a stored `base_url` outside the allowed
/// destinations (restored by a rollback, or stored before the list).
pub fn destination_not_allowed(url: &str) -> Error {
    let host = crate::destinations::host_of(url).unwrap_or_else(|| "(unreadable)".to_owned());
    Error::precondition(
        "DESTINATION_NOT_ALLOWED",
        format!(
            "the provider's base_url host {host:?} is not among this deployment's allowed \
             destinations (PROVIDER_ALLOWED_HOSTS): an admin must point it at an allowed host \
             with a new api_key"
        ),
    )
}

/// Applies an update (full replace when `paths` is `None`) to `current`.
/// A stored key is bound to where it is sent: an update that changes the
/// destination (`base_url` or `provider_type`) and keeps the key is
/// FAILED_PRECONDITION (`API_KEY_REQUIRED`), so no admin can redirect a key
/// they never held to a host of their choosing.
fn apply(
    current: &ProviderSpec,
    input: &pb::Provider,
    paths: Option<&[String]>,
) -> Result<ProviderInput, Error> {
    let updated = match paths {
        None => ProviderSpec::from_proto(input),
        Some(paths) => current.updated(input, paths),
    }?;
    let keeps_the_key = current.api_key.is_some() && updated.new_api_key.is_none();
    let moves = updated.spec.base_url != current.base_url
        || updated.spec.provider_type != current.provider_type;
    if keeps_the_key && moves {
        return Err(Error::precondition(
            "API_KEY_REQUIRED",
            "changing base_url or provider_type sends the stored key somewhere else: \
             send the key for the new destination as api_key in the same request \
             (and name api_key in the update mask)",
        ));
    }
    Ok(updated)
}
