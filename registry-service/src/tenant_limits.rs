//! A call rate per tenant (`REGISTRY_TENANT_CALLS_PER_MINUTE`, off by
//! default): one token bucket per tenant in this process. The auth layer
//! takes a call from the bucket of each call it admits, and refuses one
//! over its tenant's rate with RESOURCE_EXHAUSTED (`TENANT_RATE_LIMITED`,
//! with the wait in `RetryInfo`) before its body is decoded or any handler
//! runs.
//!
//! Only admitted calls count: a refused token or role costs its tenant
//! nothing, and health and reflection are not a tenant's. The buckets are
//! this replica's: N replicas admit up to N times the rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::Status;

use crate::error::Error;

/// The most tenants tracked before idle buckets (full again, so the same
/// as none) are dropped; more stay only while they are busy.
const TRACKED_TENANTS: usize = 10_000;
/// The shortest time between two sweeps of idle buckets.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The largest rate and burst a setting may name: a million calls a
/// second, far above what one replica serves.
pub const MAX_CALLS_PER_MINUTE: u32 = 60_000_000;

/// What each tenant may call: `per_minute` on average, up to `burst` at
/// once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantRate {
    pub per_minute: u32,
    pub burst: u32,
}

/// One tenant's bucket: calls it may make now, as of `updated`.
#[derive(Debug)]
struct Bucket {
    calls: f64,
    updated: Instant,
}

/// The buckets of every tenant seen lately.
#[derive(Debug)]
struct Buckets {
    by_tenant: HashMap<String, Bucket>,
    next_sweep: Instant,
}

/// Every tenant's calls at `rate`.
#[derive(Debug)]
pub struct TenantLimits {
    rate: TenantRate,
    buckets: Mutex<Buckets>,
}

impl TenantLimits {
    /// Limits at `rate`; a `per_minute` or `burst` of 0 counts as 1 (the
    /// settings refuse a rate of 0 and make a burst of 0 the rate).
    pub fn new(rate: TenantRate) -> Self {
        Self {
            rate: TenantRate {
                per_minute: rate.per_minute.max(1),
                burst: rate.burst.max(1),
            },
            buckets: Mutex::new(Buckets {
                by_tenant: HashMap::new(),
                next_sweep: Instant::now(),
            }),
        }
    }

    /// Takes one call from `tenant`'s bucket now: granted, or the status
    /// that refuses it.
    pub fn take_call(&self, tenant: &str) -> Result<(), Status> {
        self.take(tenant, Instant::now())
            .map_err(|wait| over_rate(self.rate, wait))
    }

    /// Takes one call from `tenant`'s bucket at `now`: granted, or the
    /// time until one will be.
    fn take(&self, tenant: &str, now: Instant) -> Result<(), Duration> {
        let per_second = f64::from(self.rate.per_minute) / 60.0;
        let burst = f64::from(self.rate.burst);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.by_tenant.contains_key(tenant) {
            if buckets.by_tenant.len() >= TRACKED_TENANTS && now >= buckets.next_sweep {
                buckets.next_sweep = now + SWEEP_INTERVAL;
                buckets.by_tenant.retain(|_, bucket| {
                    let idle = now.saturating_duration_since(bucket.updated);
                    bucket.calls + idle.as_secs_f64() * per_second < burst
                });
            }
            let full = Bucket {
                calls: burst,
                updated: now,
            };
            buckets.by_tenant.insert(tenant.to_owned(), full);
        }
        let Some(bucket) = buckets.by_tenant.get_mut(tenant) else {
            return Ok(());
        };
        let idle = now.saturating_duration_since(bucket.updated);
        bucket.calls = (bucket.calls + idle.as_secs_f64() * per_second).min(burst);
        bucket.updated = now;
        if bucket.calls >= 1.0 {
            bucket.calls -= 1.0;
            Ok(())
        } else {
            // At most a minute: the slowest rate is one call a minute.
            let wait = ((1.0 - bucket.calls) / per_second).min(60.0);
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::from_secs(60)))
        }
    }
}

/// RESOURCE_EXHAUSTED for a call over `rate`, to retry after `wait`.
fn over_rate(rate: TenantRate, wait: Duration) -> Status {
    Error::TenantRateLimited {
        per_minute: rate.per_minute,
        burst: rate.burst,
        retry_after: wait,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_tenant_gets_its_burst_then_its_rate_and_another_tenant_its_own() {
        let limits = TenantLimits::new(TenantRate {
            per_minute: 60,
            burst: 3,
        });
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limits.take("acme", start), Ok(()));
        }
        assert_eq!(limits.take("acme", start), Err(SECOND));
        assert_eq!(limits.take("globex", start), Ok(()));
        // One call a second comes back; half a second brings half of one.
        assert_eq!(limits.take("acme", start + SECOND / 2), Err(SECOND / 2));
        assert_eq!(limits.take("acme", start + SECOND), Ok(()));
        assert_eq!(limits.take("acme", start + SECOND), Err(SECOND));
        // Idle for long, a bucket holds its burst, not more.
        let later = start + 100 * SECOND;
        for _ in 0..3 {
            assert_eq!(limits.take("acme", later), Ok(()));
        }
        assert!(limits.take("acme", later).is_err());
    }

    #[test]
    fn idle_tenants_are_forgotten_once_many_are_tracked() {
        let limits = TenantLimits::new(TenantRate {
            per_minute: 60,
            burst: 2,
        });
        let start = Instant::now();
        for tenant in 0..TRACKED_TENANTS {
            assert_eq!(limits.take(&tenant.to_string(), start), Ok(()));
        }
        let busy = "busy";
        assert_eq!(limits.take(busy, start), Ok(()));
        assert_eq!(limits.take(busy, start), Ok(()));
        let tracked =
            |limits: &TenantLimits| limits.buckets.lock().map_or(0, |b| b.by_tenant.len());
        assert_eq!(tracked(&limits), TRACKED_TENANTS + 1);
        // A second on, every other bucket is full again: a new tenant
        // sweeps them away; the busy one, still short of its burst, stays.
        let later = start + SECOND;
        assert_eq!(limits.take("new", later), Ok(()));
        assert_eq!(tracked(&limits), 2);
        assert_eq!(limits.take(busy, later), Ok(()));
        assert!(limits.take(busy, later).is_err(), "its bucket was kept");
    }
}
