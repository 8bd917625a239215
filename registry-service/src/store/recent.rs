//! The agents this process wrote most recently, kept as an update's first
//! guess of where the agent stands, so that the guess can replace the read.
//!
//! An update needs the agent as it is now: its spec (to merge a field mask
//! into, and to diff against) and its version (to take the next number).
//! The write that follows is conditional on that version (`… WHERE version
//! = n`), and every change of an agent row takes a new number, so a guess
//! whose version is still current is the row. A guess that is out of date
//! (another registry process wrote the agent, or another call here did
//! first) writes nothing: the update then reads the row and goes on as if
//! there had been no guess. Neither can a guess decide a call's answer on
//! its own: a stale etag, a no-op or an invalid merge found against it is
//! checked again against the row read from the database.
//!
//! Calls that read an agent for the caller (GetAgent, lists, ResolveAgent)
//! never look here. Entries are kept per agent id with their tenant, at
//! most a configured number of them, the least recently used leaving first;
//! an agent deleted here, or found gone, is dropped.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashlink::LruCache;
use prometheus_client::metrics::counter::Counter;

use super::agents::AgentRecord;
use crate::error::Error;
use crate::telemetry::RegistryMetrics;

/// The most recently written agents, by id.
#[derive(Debug)]
pub struct RecentAgents {
    /// `None` when configured with no room (the cache is off).
    entries: Option<Mutex<LruCache<String, Recent>>>,
    absent: Counter,
    stale: Counter,
    written: Counter,
}

/// One agent as this process last wrote it.
#[derive(Debug)]
struct Recent {
    tenant: String,
    record: Arc<AgentRecord>,
}

impl RecentAgents {
    /// Keeps at most `capacity` agents (none when 0) and counts guesses in
    /// `metrics`.
    pub fn new(capacity: usize, metrics: &RegistryMetrics) -> Self {
        let outcome = |name: &str| metrics.agent_write_guess(name);
        Self {
            entries: (capacity > 0).then(|| Mutex::new(LruCache::new(capacity))),
            absent: outcome("absent"),
            stale: outcome("stale"),
            written: outcome("written"),
        }
    }

    /// The agent `id` of `tenant` as last kept, if it is.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<AgentRecord>> {
        let mut entries = self.lock()?;
        let recent = entries.get(id).filter(|recent| recent.tenant == tenant)?;
        Some(Arc::clone(&recent.record))
    }

    /// Keeps `record` of `tenant`, unless a newer version of it is kept.
    pub fn remember(&self, tenant: &str, record: &AgentRecord) {
        let Some(mut entries) = self.lock() else {
            return;
        };
        let newer_kept = entries
            .get(&record.id)
            .is_some_and(|kept| kept.tenant == tenant && kept.record.version >= record.version);
        if !newer_kept {
            let recent = Recent {
                tenant: tenant.to_owned(),
                record: Arc::new(record.clone()),
            };
            entries.insert(record.id.clone(), recent);
        }
    }

    /// Drops the agent `id` (it was deleted).
    pub fn forget(&self, id: &str) {
        if let Some(mut entries) = self.lock() {
            entries.remove(id);
        }
    }

    /// Counts an update written from its guess, and keeps what it wrote.
    pub fn written_from_guess(&self, tenant: &str, record: &AgentRecord) {
        self.written.inc();
        self.remember(tenant, record);
    }

    /// Counts an update that reads the row instead: its guess (if it had
    /// one) was stale or could not decide the call.
    pub fn reading_the_row(&self, had_guess: bool) {
        if had_guess {
            self.stale.inc();
        } else {
            self.absent.inc();
        }
    }

    /// Keeps what an update from the row left, or drops agent `id` when
    /// the row is gone (deleted by another process: a guess of it could
    /// never be written); passes `outcome` on.
    pub fn settle(
        &self,
        tenant: &str,
        id: &str,
        outcome: Result<AgentRecord, Error>,
    ) -> Result<AgentRecord, Error> {
        match &outcome {
            Ok(record) => self.remember(tenant, record),
            Err(error) => self.forget_if_gone(id, error),
        }
        outcome
    }

    /// Drops agent `id` when `error` says it is gone.
    pub fn forget_if_gone(&self, id: &str, error: &Error) {
        if matches!(error, Error::NotFound { kind: "agent", .. }) {
            self.forget(id);
        }
    }

    /// The entries, locked; a panic elsewhere while they were locked left
    /// them whole (every change is one call on the map), so a poisoned lock
    /// is taken as it is.
    fn lock(&self) -> Option<MutexGuard<'_, LruCache<String, Recent>>> {
        let entries = self.entries.as_ref()?;
        Some(entries.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
