//! The records of a kind this process wrote most recently (agents today),
//! kept as an update's first guess of where the record stands, so that the
//! guess can replace the read.
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
//! never look here. Entries are kept per id with their tenant, at most a
//! configured number of them, the least recently used leaving first; a
//! record deleted here, or found gone, is dropped (only from its own
//! tenant's entry: another tenant's NOT_FOUND leaves it). Records are
//! copied before the lock is taken, never under it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashlink::LruCache;
use prometheus_client::metrics::counter::Counter;

use super::versioned::Record;
use crate::error::Error;
use crate::telemetry::RegistryMetrics;

/// The most recently written records of one kind, by id.
#[derive(Debug)]
pub struct Recent<S> {
    /// The kind's name in its NOT_FOUND errors.
    kind: &'static str,
    /// `None` when configured with no room (the cache is off).
    entries: Option<Mutex<LruCache<String, Entry<S>>>>,
    absent: Counter,
    stale: Counter,
    written: Counter,
}

/// One record as this process last wrote it.
#[derive(Debug)]
struct Entry<S> {
    tenant: String,
    record: Arc<Record<S>>,
}

impl<S: Clone> Recent<S> {
    /// Keeps at most `capacity` records of `kind` (none when 0) and counts
    /// guesses in `metrics`.
    pub fn new(kind: &'static str, capacity: usize, metrics: &RegistryMetrics) -> Self {
        let outcome = |name: &str| metrics.agent_write_guess(name);
        Self {
            kind,
            entries: (capacity > 0).then(|| Mutex::new(LruCache::new(capacity))),
            absent: outcome("absent"),
            stale: outcome("stale"),
            written: outcome("written"),
        }
    }

    /// The record `id` of `tenant` as last kept, if it is.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Record<S>>> {
        let mut entries = self.lock()?;
        let recent = entries.get(id).filter(|recent| recent.tenant == tenant)?;
        Some(Arc::clone(&recent.record))
    }

    /// Keeps `record` of `tenant`, unless a newer version of it is kept.
    pub fn remember(&self, tenant: &str, record: &Record<S>) {
        if self.entries.is_none() {
            return;
        }
        // Copied before the lock: other callers never wait on a copy.
        let entry = Entry {
            tenant: tenant.to_owned(),
            record: Arc::new(record.clone()),
        };
        let id = record.id.clone();
        let Some(mut entries) = self.lock() else {
            return;
        };
        let newer_kept = entries
            .get(&id)
            .is_some_and(|kept| kept.tenant == tenant && kept.record.version >= record.version);
        if !newer_kept {
            entries.insert(id, entry);
        }
    }

    /// Drops the record `id` of `tenant` (it was deleted).
    pub fn forget(&self, tenant: &str, id: &str) {
        if let Some(mut entries) = self.lock()
            && entries.get(id).is_some_and(|kept| kept.tenant == tenant)
        {
            entries.remove(id);
        }
    }

    /// Counts an update written from its guess, and keeps what it wrote.
    pub fn written_from_guess(&self, tenant: &str, record: &Record<S>) {
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
        outcome: Result<Record<S>, Error>,
    ) -> Result<Record<S>, Error> {
        match &outcome {
            Ok(record) => self.remember(tenant, record),
            Err(error) => self.forget_if_gone(tenant, id, error),
        }
        outcome
    }

    /// Drops record `id` of `tenant` when `error` says it is gone.
    pub fn forget_if_gone(&self, tenant: &str, id: &str, error: &Error) {
        if matches!(error, Error::NotFound { kind, .. } if *kind == self.kind) {
            self.forget(tenant, id);
        }
    }

    /// The entries, locked; a panic elsewhere while they were locked left
    /// them whole (every change is one call on the map), so a poisoned lock
    /// is taken as it is.
    fn lock(&self) -> Option<MutexGuard<'_, LruCache<String, Entry<S>>>> {
        let entries = self.entries.as_ref()?;
        Some(entries.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
