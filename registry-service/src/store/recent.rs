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
//! never look here. Entries are kept by tenant and id, at most a
//! configured number of them weighing at most a configured number of bytes
//! (an estimate of what each record holds), the least recently used
//! leaving first; a record deleted here, or found gone, is dropped.
//! Records are copied and weighed before the lock is taken, never under it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashlink::LruCache;
use prometheus_client::metrics::counter::Counter;

use super::versioned::{Record, Written};
use crate::error::Error;
use crate::telemetry::RegistryMetrics;

/// What a record holds on the heap, for the cache's byte bound.
pub trait Weigh {
    /// Bytes held on the heap (an estimate: string and list contents).
    fn heap_bytes(&self) -> usize;
}

/// The most recently written records of one kind, by tenant and id.
#[derive(Debug)]
pub struct Recent<S> {
    /// The kind's name in its NOT_FOUND errors.
    kind: &'static str,
    /// `None` when configured with no room (the cache is off).
    entries: Option<Mutex<Entries<S>>>,
    absent: Counter,
    stale: Counter,
    written: Counter,
}

/// The kept records, least recently used first, and their weight.
#[derive(Debug)]
struct Entries<S> {
    map: LruCache<String, Entry<S>>,
    /// The weight of everything in `map`.
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

/// One record as this process last wrote it, and its weight.
#[derive(Debug)]
struct Entry<S> {
    record: Arc<Record<S>>,
    bytes: usize,
}

/// The key of record `id` of `tenant` (length-prefixed: no two pairs share
/// one).
fn key(tenant: &str, id: &str) -> String {
    format!("{}:{tenant}{id}", tenant.len())
}

impl<S: Clone + Weigh> Recent<S> {
    /// Keeps at most `max_entries` records of `kind` weighing at most
    /// `max_bytes` together (none when either is 0), and counts guesses in
    /// `metrics`.
    pub fn new(
        kind: &'static str,
        (max_entries, max_bytes): (usize, usize),
        metrics: &RegistryMetrics,
    ) -> Self {
        let outcome = |name: &str| metrics.agent_write_guess(name);
        let entries = Entries {
            map: LruCache::new_unbounded(),
            bytes: 0,
            max_entries,
            max_bytes,
        };
        Self {
            kind,
            entries: (max_entries > 0 && max_bytes > 0).then(|| Mutex::new(entries)),
            absent: outcome("absent"),
            stale: outcome("stale"),
            written: outcome("written"),
        }
    }

    /// The record `id` of `tenant` as last kept, if it is.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Record<S>>> {
        let key = key(tenant, id);
        let mut entries = self.lock()?;
        Some(Arc::clone(&entries.map.get(&key)?.record))
    }

    /// Keeps `record` of `tenant`, unless a newer version of it is kept.
    pub fn remember(&self, tenant: &str, record: &Record<S>) {
        if self.entries.is_none() {
            return;
        }
        // Copied and weighed before the lock: no caller waits on a copy.
        let key = key(tenant, &record.id);
        let bytes = key.len()
            + std::mem::size_of::<Record<S>>()
            + record.id.len()
            + record.created_by.len()
            + record.updated_by.len()
            + record.spec.heap_bytes();
        let entry = Entry {
            record: Arc::new(record.clone()),
            bytes,
        };
        let Some(mut entries) = self.lock() else {
            return;
        };
        if entries
            .map
            .get(&key)
            .is_some_and(|kept| kept.record.version >= record.version)
        {
            return;
        }
        entries.insert(key, entry);
    }

    /// Drops the record `id` of `tenant` (it was deleted).
    pub fn forget(&self, tenant: &str, id: &str) {
        let key = key(tenant, id);
        if let Some(mut entries) = self.lock() {
            entries.remove(&key);
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
        outcome: Result<Written<S>, Error>,
    ) -> Result<Written<S>, Error> {
        match &outcome {
            Ok(written) => self.remember(tenant, &written.record),
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
    fn lock(&self) -> Option<MutexGuard<'_, Entries<S>>> {
        let entries = self.entries.as_ref()?;
        Some(entries.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<S> Entries<S> {
    /// Keeps `entry`, then drops the least recently used entries while
    /// there are too many or they weigh too much (a record heavier than
    /// the whole budget is not kept).
    fn insert(&mut self, key: String, entry: Entry<S>) {
        if entry.bytes > self.max_bytes {
            // Kept, it would push out everything else: its older version
            // goes, and nothing else.
            self.remove(&key);
            return;
        }
        self.bytes += entry.bytes;
        if let Some(old) = self.map.insert(key, entry) {
            self.bytes -= old.bytes;
        }
        while self.map.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some((_, dropped)) = self.map.remove_lru() else {
                break;
            };
            self.bytes -= dropped.bytes;
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= old.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone)]
    struct Blob(usize);

    impl Weigh for Blob {
        fn heap_bytes(&self) -> usize {
            self.0
        }
    }

    fn record(id: &str, version: i64, bytes: usize) -> Record<Blob> {
        let now = chrono::Utc::now();
        Record {
            id: id.to_owned(),
            spec: Blob(bytes),
            version,
            create_time: now,
            update_time: now,
            created_by: String::new(),
            updated_by: String::new(),
            delete_time: None,
            version_hash: None,
        }
    }

    #[test]
    fn entries_are_kept_by_tenant_and_id_and_bounded_by_bytes() {
        let recent = Recent::new("agent", (100, 10_000), &RegistryMetrics::default());
        recent.remember("t1", &record("a", 1, 1_000));
        recent.remember("t2", &record("a", 1, 1_000));
        assert!(recent.get("t1", "a").is_some() && recent.get("t2", "a").is_some());
        // Another tenant's NOT_FOUND leaves this tenant's entry.
        let gone = Error::NotFound {
            kind: "agent",
            id: "a".to_owned(),
        };
        recent.forget_if_gone("t2", "a", &gone);
        assert!(recent.get("t1", "a").is_some() && recent.get("t2", "a").is_none());
        // An older version never replaces a newer one.
        recent.remember("t1", &record("a", 3, 1_000));
        recent.remember("t1", &record("a", 2, 1_000));
        assert_eq!(recent.get("t1", "a").map(|r| r.version), Some(3));
        // Heavy records push the least recently used out; one heavier than
        // the whole budget is not kept.
        for id in ["b", "c", "d", "e"] {
            recent.remember("t1", &record(id, 1, 3_000));
        }
        assert!(recent.get("t1", "a").is_none() && recent.get("t1", "b").is_none());
        assert!(recent.get("t1", "e").is_some());
        recent.remember("t1", &record("huge", 1, 20_000));
        assert!(recent.get("t1", "huge").is_none() && recent.get("t1", "e").is_some());
    }
}
