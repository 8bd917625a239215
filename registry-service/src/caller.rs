//! Who is calling: the tenant whose data a call may touch and the subject
//! recorded as `changed_by`. The authentication layer (issue 4) will put a
//! verified `Caller` into each request's extensions; until then every call
//! acts in one default tenant.

/// The tenant used when no authenticated caller is attached.
pub const DEFAULT_TENANT: &str = "default";
/// The subject recorded when no authenticated caller is attached.
pub const ANONYMOUS: &str = "anonymous";

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Tenant id; every query is scoped by it.
    pub tenant: String,
    /// Subject (`sub`), recorded on every version it writes.
    pub subject: String,
}

impl Caller {
    /// The caller attached to `request`, or the default one.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        request
            .extensions()
            .get::<Self>()
            .cloned()
            .unwrap_or_else(|| Self {
                tenant: DEFAULT_TENANT.to_owned(),
                subject: ANONYMOUS.to_owned(),
            })
    }
}
