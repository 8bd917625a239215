//! `KeyService`: key status, rewrapping stored credentials to the newest
//! key version, and retiring versions nothing uses. Rewrap and retire act
//! on every tenant's values and belong to platform operators; a tenant
//! admin sees only how many of its own tenant's values each version
//! protects, without check values.

use proto::v1 as pb;
use proto::v1::key_service_server::KeyService;
use tonic::{Request, Response, Status};

use super::Registry;
use crate::caller::{Caller, PlatformOperator};
use crate::crypto::Crypto;
use crate::error::Error;
use crate::store::audit::{self, Action, Entry};
use crate::store::keys::{self, RewrapReport, Scope};
use sea_orm::DatabaseConnection;

/// Rewrap batch size when the request gives none.
const DEFAULT_BATCH: u32 = 500;

#[tonic::async_trait]
impl KeyService for Registry {
    #[tracing::instrument(skip_all)]
    async fn get_key_status(
        &self,
        request: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::KeyStatus>, Status> {
        let caller = Caller::of(&request)?;
        let scope = if PlatformOperator::is_caller_of(&request) {
            Scope::Everything
        } else {
            Scope::Tenant(&caller.tenant)
        };
        Ok(Response::new(
            key_status(self.db.pool(), &self.crypto, scope).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(rewrapped))]
    async fn rewrap_credentials(
        &self,
        request: Request<pb::RewrapCredentialsRequest>,
    ) -> Result<Response<pb::RewrapCredentialsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let batch = match request.batch_size {
            0 => DEFAULT_BATCH,
            n @ 1..=1000 => n,
            _ => return Err(Error::bad_field("batch_size", "must be between 1 and 1000").into()),
        };
        let response = rewrap(
            self.db.pool(),
            &self.crypto,
            batch,
            request.max_values,
            |_| {},
        )
        .await?;
        tracing::Span::current().record("rewrapped", response.rewrapped);
        let details = serde_json::json!({
            "active_version": response.active_version,
            "scanned": response.scanned,
            "rewrapped": response.rewrapped,
        });
        let entry = Entry::platform(&caller.subject, Action::CredentialsRewrap, details);
        audit::append(&self.db, entry).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(version = request.get_ref().version))]
    async fn retire_key_version(
        &self,
        request: Request<pb::RetireKeyVersionRequest>,
    ) -> Result<Response<pb::KeyStatus>, Status> {
        let caller = Caller::of(&request)?;
        let version = request.get_ref().version;
        if version == 0 {
            // Key versions are numbered from 1.
            return Err(Error::bad_field("version", "must be 1 or more").into());
        }
        let details = serde_json::json!({ "version": version });
        let event = Entry::platform(&caller.subject, Action::KeyVersionRetire, details);
        let retire = || self.crypto.retire(version);
        keys::retire_unused(self.db.pool(), version, event, retire).await?;
        self.db.audit_recorded();
        tracing::warn!(version, "key version retired");
        Ok(Response::new(
            key_status(self.db.pool(), &self.crypto, Scope::Everything).await?,
        ))
    }
}

/// The keyring next to the stored values in `scope` each version protects.
/// Key check values identify the platform's keys, so only the whole
/// platform's view ([`Scope::Everything`]) shows them.
pub async fn key_status(
    db: &DatabaseConnection,
    crypto: &Crypto,
    scope: Scope<'_>,
) -> Result<pb::KeyStatus, Error> {
    let info = crypto.key_info().await?;
    let mut counts = keys::count_by_version(db, scope).await?;
    let show_check_values = scope == Scope::Everything;
    let total_values = counts.values().sum();
    let mut versions: Vec<pb::KeyVersionStatus> = info
        .versions
        .iter()
        .map(|v| pb::KeyVersionStatus {
            version: v.version,
            in_keyring: true,
            active: v.active,
            check_value: if show_check_values {
                v.check_value.clone()
            } else {
                String::new()
            },
            stored_values: counts.remove(&Some(v.version)).unwrap_or(0),
        })
        .collect();
    for (version, stored_values) in counts {
        versions.push(pb::KeyVersionStatus {
            version: version.unwrap_or(0),
            in_keyring: false,
            active: false,
            check_value: String::new(),
            stored_values,
        });
    }
    versions.sort_by_key(|v| v.version);
    Ok(pb::KeyStatus {
        active_version: info.active_version,
        versions,
        total_values,
    })
}

/// Rewraps to crypto-service's active version and reports what is left.
pub async fn rewrap(
    db: &DatabaseConnection,
    crypto: &Crypto,
    batch: u32,
    max_values: u64,
    progress: impl FnMut(&RewrapReport),
) -> Result<pb::RewrapCredentialsResponse, Error> {
    let active = crypto.key_info().await?.active_version;
    let report =
        keys::rewrap_all(db, crypto, active, u64::from(batch), max_values, progress).await?;
    let counts = keys::count_by_version(db, Scope::Everything).await?;
    let remaining = counts
        .iter()
        .filter(|(version, _)| **version != Some(active))
        .map(|(_, n)| n)
        .sum();
    Ok(pb::RewrapCredentialsResponse {
        active_version: active,
        scanned: report.scanned,
        rewrapped: report.rewrapped,
        already_current: report.already_current,
        changed_concurrently: report.changed_concurrently,
        remaining,
    })
}
