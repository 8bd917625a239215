//! Verification keys published by an identity provider, kept current while
//! the registry serves.
//!
//! At start-up the registry finds the JWKS — through OIDC discovery
//! (`<issuer>/.well-known/openid-configuration`, whose `issuer` must equal
//! the configured one exactly and whose `jwks_uri` must be https) or at a
//! configured URL — and fetches it; without keys it does not start. Then
//! the set is fetched again:
//! - on a schedule: the response's `Cache-Control: max-age`, held between
//!   the minimum and maximum refresh intervals (the maximum when the
//!   provider sends none), so a rotation is seen within the maximum;
//! - when a token names a `kid` the set lacks (the provider may have
//!   rotated), at most once per minimum interval however many such tokens
//!   arrive: a flood of random kids costs the provider one request per
//!   interval and the registry no memory (no kid is remembered).
//!
//! A failed fetch keeps the last good keys (logged as a warning); a
//! successful one replaces the set whole, so a key the provider removed
//! stops verifying.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;

use super::Keys;
use super::fetch::{Fetcher, Url};
use crate::error::Error;
use crate::telemetry::RegistryMetrics;

/// Where the JWKS is found.
#[derive(Debug, Clone)]
pub enum Location {
    /// OIDC discovery from this issuer.
    Issuer(String),
    /// The JWKS itself.
    JwksUrl(Url),
}

/// How often the set is fetched.
#[derive(Debug, Clone, Copy)]
pub struct Refresh {
    /// The shortest time between two fetches, and so the most often an
    /// unknown kid can cause one.
    pub min_interval: Duration,
    /// The longest time a set is kept without asking again.
    pub max_interval: Duration,
}

/// The provider's current keys.
pub struct RemoteKeys {
    fetcher: Fetcher,
    jwks_uri: Url,
    refresh: Refresh,
    keys: RwLock<Arc<Keys>>,
    /// When the last fetch started: the rate limit counts from here.
    last_fetch: Mutex<Instant>,
    /// How long the last good set may be kept (from its max-age).
    keep_for: Mutex<Duration>,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    metrics: RegistryMetrics,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("jwks_uri", &self.jwks_uri.as_str())
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl RemoteKeys {
    /// Discovers (when asked to) and fetches the keys once; an error names
    /// `setting` and what failed, for a start-up refusal.
    pub async fn start(
        location: Location,
        fetcher: Fetcher,
        refresh: Refresh,
        allow_loopback_http: bool,
        setting: &str,
        metrics: RegistryMetrics,
    ) -> Result<Arc<Self>, Error> {
        let jwks_uri = match location {
            Location::JwksUrl(url) => url,
            Location::Issuer(issuer) => {
                discover(&fetcher, &issuer, allow_loopback_http, setting).await?
            }
        };
        let started = Instant::now();
        let fetched = fetch_keys(&fetcher, &jwks_uri).await;
        metrics.jwks_fetch("start-up", fetched.is_ok());
        let (keys, max_age) = fetched.map_err(|error| {
            Error::config(
                setting,
                format!("cannot load the signing keys: {}", detail(&error)),
            )
        })?;
        tracing::info!(jwks_uri = %jwks_uri.as_str(), keys = keys.len(), "token signing keys loaded");
        let remote = Self {
            fetcher,
            jwks_uri,
            refresh,
            keys: RwLock::new(Arc::new(keys)),
            last_fetch: Mutex::new(started),
            keep_for: Mutex::new(refresh.keep_for(max_age)),
            fetching: tokio::sync::Mutex::new(()),
            metrics,
        };
        Ok(Arc::new(remote))
    }

    /// The current set.
    pub fn current(&self) -> Arc<Keys> {
        match self.keys.read() {
            Ok(keys) => Arc::clone(&keys),
            // A writer panicked mid-swap; the Arc it held is still whole.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// A token named a kid the set lacks: fetches the set again unless
    /// one was fetched (or begun) within the minimum interval; when a
    /// fetch is running, waits for it. Returns whether the set may have
    /// changed (worth verifying again).
    pub async fn refresh_for_unknown_kid(self: &Arc<Self>) -> bool {
        // Reserved under the lock: of any number of callers, one fetches.
        let reserved = {
            let mut last = match self.last_fetch.lock() {
                Ok(last) => last,
                Err(poisoned) => poisoned.into_inner(),
            };
            let due = last.elapsed() >= self.refresh.min_interval;
            if due {
                *last = Instant::now();
            }
            due
        };
        if !reserved {
            // Within the interval: only a running fetch can bring news.
            return match self.fetching.try_lock() {
                Ok(_) => false,
                Err(_) => {
                    drop(self.fetching.lock().await);
                    true
                }
            };
        }
        let remote = Arc::clone(self);
        // A task of its own: a caller that goes away (a cancelled call)
        // does not cancel the fetch it caused.
        let fetch = tokio::spawn(async move {
            let _fetching = remote.fetching.lock().await;
            remote.fetch_now("unknown-kid").await;
        });
        // An error here is a panic in the fetch, already reported.
        let _ = fetch.await;
        true
    }

    /// Fetches on schedule until the task is aborted.
    pub async fn refresh_periodically(self: Arc<Self>) {
        loop {
            let due = self.keep_for().saturating_sub(self.since_last_fetch());
            tokio::time::sleep(due.max(self.refresh.min_interval)).await;
            let _fetching = self.fetching.lock().await;
            if self.since_last_fetch() >= self.keep_for() {
                self.fetch_now("schedule").await;
            }
        }
    }

    /// One fetch; the caller holds `fetching`.
    async fn fetch_now(&self, trigger: &'static str) {
        self.set(&self.last_fetch, Instant::now());
        let fetched = fetch_keys(&self.fetcher, &self.jwks_uri).await;
        self.metrics.jwks_fetch(trigger, fetched.is_ok());
        match fetched {
            Ok((keys, max_age)) => {
                tracing::debug!(trigger, keys = keys.len(), "token signing keys fetched");
                self.set(&self.keep_for, self.refresh.keep_for(max_age));
                match self.keys.write() {
                    Ok(mut current) => *current = Arc::new(keys),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
                }
            }
            Err(error) => {
                // Retried after the minimum interval; until then the last
                // good keys verify.
                self.set(&self.keep_for, self.refresh.min_interval);
                tracing::warn!(trigger, error = %detail(&error), "cannot fetch the token signing keys; keeping the last good ones");
            }
        }
    }

    fn since_last_fetch(&self) -> Duration {
        self.get(&self.last_fetch).elapsed()
    }

    fn keep_for(&self) -> Duration {
        self.get(&self.keep_for)
    }

    fn get<T: Copy>(&self, cell: &Mutex<T>) -> T {
        match cell.lock() {
            Ok(value) => *value,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn set<T>(&self, cell: &Mutex<T>, value: T) {
        match cell.lock() {
            Ok(mut slot) => *slot = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

impl Refresh {
    /// How long a set fetched with `max_age` is kept: the max-age held
    /// within the two intervals, or the maximum without one.
    fn keep_for(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .unwrap_or(self.max_interval)
            .clamp(self.min_interval, self.max_interval)
    }
}

/// Reads `<issuer>/.well-known/openid-configuration` and returns its
/// `jwks_uri`, after checking that the document names exactly `issuer`
/// (OpenID Connect Discovery 1.0 §4.3).
async fn discover(
    fetcher: &Fetcher,
    issuer: &str,
    allow_loopback_http: bool,
    setting: &str,
) -> Result<Url, Error> {
    let bad = |problem: String| Error::config(setting, problem);
    let address = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let url = Url::parse(&address, allow_loopback_http).map_err(bad)?;
    let document = fetcher
        .get_json(&url)
        .await
        .map_err(|error| bad(format!("OIDC discovery failed: {}", detail(&error))))?
        .json;
    let named = document.get("issuer").and_then(serde_json::Value::as_str);
    if named != Some(issuer) {
        return Err(bad(format!(
            "the discovery document names issuer {named:?}, not exactly {issuer:?}"
        )));
    }
    let jwks_uri = document
        .get("jwks_uri")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| bad("the discovery document has no jwks_uri".to_owned()))?;
    Url::parse(jwks_uri, allow_loopback_http).map_err(|problem| bad(format!("jwks_uri: {problem}")))
}

/// Fetches and parses the JWKS: the usable signing keys, and the max-age.
async fn fetch_keys(fetcher: &Fetcher, url: &Url) -> Result<(Keys, Option<Duration>), Error> {
    let fetched = fetcher.get_json(url).await?;
    let unusable = |detail: String| Error::Unavailable {
        dependency: "identity provider",
        detail: format!("{}: {detail}", url.as_str()),
    };
    let set: JwkSet = serde_json::from_value(fetched.json)
        .map_err(|_| unusable("not a JWKS document".to_owned()))?;
    let keys = super::signing_keys(&set).map_err(unusable)?;
    Ok((keys, fetched.max_age))
}

/// The loggable text of a fetch error (never a token: none is sent).
fn detail(error: &Error) -> String {
    match error {
        Error::Unavailable { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_held_between_the_intervals() {
        let refresh = Refresh {
            min_interval: Duration::from_secs(30),
            max_interval: Duration::from_secs(300),
        };
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(refresh.keep_for(None), Duration::from_secs(300));
        assert_eq!(refresh.keep_for(secs(86_400)), Duration::from_secs(300));
        assert_eq!(refresh.keep_for(secs(120)), Duration::from_secs(120));
        assert_eq!(refresh.keep_for(secs(0)), Duration::from_secs(30));
    }
}
