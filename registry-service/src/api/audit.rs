//! `AuditService.ListAuditEvents`: the audit trail a tenant admin (their
//! tenant's) or a platform operator (every tenant's and the platform's)
//! may read, newest first, filtered and paged.

use proto::v1 as pb;
use proto::v1::audit_service_server::AuditService;
use sea_orm::ConnectionTrait;
use tonic::{Request, Response, Status};

use super::messages::json_struct;
use super::{Registry, timestamp};
use crate::caller::{Caller, PlatformOperator};
use crate::error::Error;
use crate::page;
use crate::store::audit::{self, AuditFilter, EventRecord, Visible};

/// Events per page when the request gives none.
const DEFAULT_PAGE_SIZE: u64 = 50;

#[tonic::async_trait]
impl AuditService for Registry {
    #[tracing::instrument(skip_all)]
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = Caller::of(&request)?;
        // The auth layer admits admins and operators only; an operator
        // sees every tenant.
        let operator = PlatformOperator::is_caller_of(&request);
        let request = request.into_inner();
        // Both fields checked, their violations reported together.
        let mut limit = DEFAULT_PAGE_SIZE;
        let size = page::size_or(request.page_size, DEFAULT_PAGE_SIZE).map(|size| limit = size);
        let backend = self.db.get_database_backend();
        let filter = Error::both(size, AuditFilter::new(&request.filter, backend))?;
        let (visible, whose) = if operator {
            (Visible::Everything, "*")
        } else {
            (Visible::Tenant(&caller.tenant), caller.tenant.as_str())
        };
        // Bound to the caller, its view and the filter's canonical form.
        let scope = page::Scope::new(&[
            &caller.tenant,
            &caller.subject,
            "ListAuditEvents",
            whose,
            &filter.canonical,
        ]);
        let before = match scope.resume_after(&request.page_token)? {
            Some(key) => Some(key.parse::<i64>().map_err(|_| {
                Error::bad_field("page_token", "is not a page token of this request")
            })?),
            None => None,
        };
        let found = audit::list(&self.db, visible, &filter, before, limit).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            audit_events: found.items.iter().map(event).collect(),
            next_page_token: found
                .next_after
                .map(|key| scope.token_after(&key))
                .unwrap_or_default(),
        }))
    }
}

/// An event as the contract shows it.
fn event(record: &EventRecord) -> pb::AuditEvent {
    pb::AuditEvent {
        id: record.id.to_string(),
        time: Some(timestamp(record.event_time)),
        tenant: record.tenant_id.clone(),
        actor: record.actor.clone(),
        action: record.action.clone(),
        resource: record.resource.clone(),
        request_id: record.request_id.clone().unwrap_or_default(),
        details: Some(json_struct(&record.details)),
        kind: record.kind.clone(),
    }
}
