//! `ProviderService`. A new API key is encrypted by crypto-service before
//! the transaction starts, so a crypto outage writes nothing; reads never
//! call crypto-service.

use proto::v1 as pb;
use proto::v1::provider_service_server::ProviderService;
use tonic::{Request, Response, Status};

use super::agents::clamp_total;
use super::{Registry, mask_paths, require_id, require_version, version_cursor};
use crate::caller::Caller;
use crate::error::Error;
use crate::model::provider::{self, ProviderInput, ProviderSpec};
use crate::model::version::{self, Action};
use crate::page;
use crate::store::agents::Write;
use crate::store::providers::{self as store, ProviderRecord};
use crate::store::{VersionRecord, describe, describe_as, etag, parse_etag, timestamp};

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
        current_key: Option<String>,
    ) -> Result<ProviderSpec, Error> {
        let mut spec = input.spec;
        spec.api_key = match input.new_api_key {
            None => current_key,
            Some(key) if key.is_empty() => None,
            Some(key) => Some(
                self.crypto
                    .encrypt_api_key(&caller.tenant, provider_id, &key)
                    .await?,
            ),
        };
        Ok(spec)
    }
}

#[tonic::async_trait]
impl ProviderService for Registry {
    #[tracing::instrument(skip_all, fields(provider_id))]
    async fn create_provider(
        &self,
        request: Request<pb::CreateProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let input = request
            .provider
            .as_ref()
            .ok_or_else(|| Error::bad_field("provider", "is required"))?;
        provider::check_counts(input)?;
        let input = ProviderSpec::from_proto(input)?;
        self.check_destination(&input.spec)?;
        let description = describe(&request.change_description, || {
            "Provider created".to_owned()
        })?;
        let id = uuid::Uuid::now_v7().to_string();
        tracing::Span::current().record("provider_id", &id);
        let spec = self.seal_key(&caller, &id, input, None).await?;
        let write = Write {
            caller: &caller,
            action: Action::Create,
            description,
        };
        let record = store::create(&self.db, write, id, spec).await?;
        Ok(Response::new(provider_proto(&record)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_provider(
        &self,
        request: Request<pb::GetProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let caller = Caller::of(&request)?;
        let id = &request.get_ref().id;
        require_id("id", id)?;
        let record = store::get(&self.db, &caller.tenant, id).await?;
        Ok(Response::new(provider_proto(&record)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_providers(
        &self,
        request: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let limit = page::size(request.page_size)?;
        let scope = page::Scope::new(&[&caller.tenant, "ListProviders"]);
        let after = scope.resume_after(&request.page_token)?;
        let page = store::list(&self.db, &caller.tenant, after, limit).await?;
        Ok(Response::new(pb::ListProvidersResponse {
            providers: page.items.iter().map(provider_proto).collect(),
            next_page_token: page
                .next_after
                .map(|k| scope.token_after(&k))
                .unwrap_or_default(),
            total_size: clamp_total(page.total),
        }))
    }

    #[tracing::instrument(skip_all, fields(provider_id))]
    async fn update_provider(
        &self,
        request: Request<pb::UpdateProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let input = request
            .provider
            .ok_or_else(|| Error::bad_field("provider", "is required"))?;
        require_id("provider.id", &input.id)?;
        tracing::Span::current().record("provider_id", &input.id);
        let expected = parse_etag(&input.etag, "provider.etag")?;
        let paths = Error::both(
            provider::check_counts(&input),
            mask_paths(
                request.update_mask.as_ref(),
                || ProviderSpec::fields_set(&input),
                provider::is_mask_path,
            ),
        )?;
        let description = describe(&request.change_description, || {
            "Provider updated".to_owned()
        })?;

        // Validate against the current row first, so a bad request never
        // reaches crypto-service; encrypt a new key once, outside the
        // transaction; then write (re-applying the mask if a writer raced).
        let current = store::get(&self.db, &caller.tenant, &input.id).await?;
        let validated = apply(&current.spec, &input, paths.as_deref())?;
        self.check_destination(&validated.spec)?;
        let sealed_key = match &validated.new_api_key {
            Some(key) if !key.is_empty() => Some(Some(
                self.crypto
                    .encrypt_api_key(&caller.tenant, &input.id, key)
                    .await?,
            )),
            Some(_) => Some(None),
            None => None,
        };
        let write = Write {
            caller: &caller,
            action: Action::Update,
            description,
        };
        let revoke_replaced = request.revoke_replaced_key;
        let record = store::update(
            &self.db,
            write,
            &input.id,
            expected,
            revoke_replaced,
            |current| {
                let mut spec = apply(&current.spec, &input, paths.as_deref())?.spec;
                // A new key is numbered by the store as it is written.
                (spec.api_key, spec.api_key_revision) = match &sealed_key {
                    Some(key) => (key.clone(), None),
                    None => (current.spec.api_key.clone(), current.spec.api_key_revision),
                };
                Ok(spec)
            },
        )
        .await?;
        Ok(Response::new(provider_proto(&record)))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_provider(
        &self,
        request: Request<pb::DeleteProviderRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        require_id("provider_id", &request.provider_id)?;
        let expected = parse_etag(&request.etag, "etag")?;
        store::delete(&self.db, &caller.tenant, &request.provider_id, expected).await?;
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all)]
    async fn list_provider_versions(
        &self,
        request: Request<pb::ListProviderVersionsRequest>,
    ) -> Result<Response<pb::ListProviderVersionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        require_id("provider_id", &request.provider_id)?;
        let limit = page::size(request.page_size)?;
        let scope =
            page::Scope::new(&[&caller.tenant, "ListProviderVersions", &request.provider_id]);
        let before = version_cursor(scope.resume_after(&request.page_token)?)?;
        let page = store::list_versions(
            &self.db,
            &caller.tenant,
            &request.provider_id,
            before,
            limit,
        )
        .await?;
        let versions = page
            .items
            .iter()
            .map(|v| version_proto(&request.provider_id, v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(pb::ListProviderVersionsResponse {
            versions,
            next_page_token: page
                .next_after
                .map(|k| scope.token_after(&k))
                .unwrap_or_default(),
            total_size: clamp_total(page.total),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_provider_version(
        &self,
        request: Request<pb::GetProviderVersionRequest>,
    ) -> Result<Response<pb::ProviderVersion>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        require_id("provider_id", &request.provider_id)?;
        require_version("version_number", request.version_number)?;
        let version = store::get_version(
            &self.db,
            &caller.tenant,
            &request.provider_id,
            request.version_number,
        )
        .await?;
        Ok(Response::new(version_proto(
            &request.provider_id,
            &version,
        )?))
    }

    #[tracing::instrument(skip_all)]
    async fn diff_provider_versions(
        &self,
        request: Request<pb::DiffProviderVersionsRequest>,
    ) -> Result<Response<pb::DiffProviderVersionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        require_id("provider_id", &request.provider_id)?;
        super::require_versions(request.from_version, request.to_version)?;
        let from = store::get_version(
            &self.db,
            &caller.tenant,
            &request.provider_id,
            request.from_version,
        )
        .await?;
        let to = store::get_version(
            &self.db,
            &caller.tenant,
            &request.provider_id,
            request.to_version,
        )
        .await?;
        let changes = ProviderSpec::diff(
            &ProviderSpec::from_json(&from.configuration)?,
            &ProviderSpec::from_json(&to.configuration)?,
        );
        Ok(Response::new(pb::DiffProviderVersionsResponse {
            changes: changes.iter().map(version::change_to_proto).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(provider_id))]
    async fn rollback_provider(
        &self,
        request: Request<pb::RollbackProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        require_id("provider_id", &request.provider_id)?;
        require_version("version_number", request.version_number)?;
        tracing::Span::current().record("provider_id", &request.provider_id);
        let expected = parse_etag(&request.etag, "etag")?;
        let target = store::get_version(
            &self.db,
            &caller.tenant,
            &request.provider_id,
            request.version_number,
        )
        .await?;
        let snapshot = ProviderSpec::from_json(&target.configuration)?;
        if let Some(url) = &snapshot.base_url
            && !self.destinations.allows(url)
        {
            return Err(destination_not_allowed(url).into());
        }
        let number = request.version_number;
        let description = describe(&request.change_description, || {
            format!("Rolled back to version {number}")
        })?;
        let write = Write {
            caller: &caller,
            action: Action::Rollback,
            description,
        };
        let record = store::update(
            &self.db,
            write,
            &request.provider_id,
            expected,
            false,
            |_| Ok(snapshot.clone()),
        )
        .await?;
        Ok(Response::new(provider_proto(&record)))
    }

    #[tracing::instrument(skip_all, fields(provider_id, revision))]
    async fn revoke_provider_key(
        &self,
        request: Request<pb::RevokeProviderKeyRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        require_id("provider_id", &request.provider_id)?;
        require_version("revision", request.revision)?;
        let span = tracing::Span::current();
        span.record("provider_id", &request.provider_id);
        span.record("revision", request.revision);
        let revision = request.revision;
        let description = describe_as("reason", &request.reason, || {
            format!("Key revision {revision} revoked")
        })?;
        let write = Write {
            caller: &caller,
            action: Action::Update,
            description,
        };
        let record = store::revoke_key(&self.db, write, &request.provider_id, revision).await?;
        Ok(Response::new(provider_proto(&record)))
    }
}

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

/// The response form of a stored provider; never carries the key.
pub fn provider_proto(record: &ProviderRecord) -> pb::Provider {
    pb::Provider {
        id: record.id.clone(),
        version: record.version,
        etag: etag(record.version),
        create_time: Some(timestamp(record.create_time)),
        update_time: Some(timestamp(record.update_time)),
        created_by: record.created_by.clone(),
        updated_by: record.updated_by.clone(),
        ..record.spec.to_proto()
    }
}

fn version_proto(provider_id: &str, version: &VersionRecord) -> Result<pb::ProviderVersion, Error> {
    let spec = ProviderSpec::from_json(&version.configuration)?;
    let configuration = pb::Provider {
        id: provider_id.to_owned(),
        version: version.version_number,
        etag: etag(version.version_number),
        update_time: Some(timestamp(version.create_time)),
        updated_by: version.changed_by.clone(),
        ..spec.to_proto()
    };
    Ok(pb::ProviderVersion {
        version_number: version.version_number,
        action: version::action_to_proto(version.action).into(),
        configuration: Some(configuration),
        diff: version.diff_proto(),
        change_description: version.change_description.clone(),
        changed_by: version.changed_by.clone(),
        create_time: Some(timestamp(version.create_time)),
    })
}
