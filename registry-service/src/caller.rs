//! Who is calling: the tenant whose data a call may touch and the subject
//! recorded as `changed_by`. The authentication layer ([`crate::auth`])
//! puts a verified `Caller` into each request's extensions, and a
//! [`PlatformOperator`] mark when the caller is one.

use crate::error::Error;

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Tenant id; every query is scoped by it.
    pub tenant: String,
    /// Subject (`sub`), recorded on every version it writes.
    pub subject: String,
}

impl Caller {
    /// The authenticated caller of `request`. Without one (a server built
    /// without the authentication layer) the call is refused: fail closed.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, Error> {
        request
            .extensions()
            .get::<Self>()
            .cloned()
            .ok_or_else(|| Error::Unauthenticated("no authenticated caller".to_owned()))
    }
}

/// In a request's extensions when its caller holds the `platform-operator`
/// role: not scoped to a tenant, for key operations over every tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformOperator;

impl PlatformOperator {
    /// Whether the caller of `request` is a platform operator.
    pub fn is_caller_of<T>(request: &tonic::Request<T>) -> bool {
        request.extensions().get::<Self>().is_some()
    }
}

/// In a request's extensions when its caller holds the tenant `admin`
/// role: it may set, move and delete the tenant's protected labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantAdmin;

impl TenantAdmin {
    /// Whether the caller of `request` is an admin of its tenant.
    pub fn is_caller_of<T>(request: &tonic::Request<T>) -> bool {
        request.extensions().get::<Self>().is_some()
    }
}
