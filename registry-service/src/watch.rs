//! The watch feed: what `WatchChanges` streams are made of.
//!
//! One task per process ([`Feed::run`]) reads each watched tenant's new
//! changes from the change log (`store::changes`) once, and hands them to
//! every stream of that tenant through one broadcast channel: a change is
//! read once and held once whatever the number of watchers. It looks when
//! a write through this process commits (the store's [`ChangeSignal`]),
//! when PostgreSQL notifies a change committed through any replica, and
//! every poll interval while any tenant is watched (the bound if a
//! notification is lost).
//!
//! A stream ([`Feed::watch`]) subscribes first, then replays the log from
//! its revision, then follows the broadcast, skipping what the replay
//! already sent: a change committed at any moment is sent once. Revisions
//! of a tenant are contiguous, so a gap in what a stream receives means a
//! compaction (OUT_OF_RANGE) during a replay, or a missed broadcast, which
//! a stream repairs by replaying again. A stream that falls more than the
//! channel's capacity behind is ended with RESOURCE_EXHAUSTED; every stream
//! ends with UNAVAILABLE at shutdown, without waiting for the drain.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

use crate::error::Error;
use crate::store::Store;
use crate::store::changes::{self, ChangeRecord, ChangeSignal, ResourceKind};

/// The largest per-tenant buffer a setting may ask for.
pub const MAX_BUFFER: usize = 1 << 16;

/// Rows read from the change log at a time.
const PAGE: u64 = 256;

/// The feed's settings.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Changes a stream may fall behind by (each tenant's channel holds
    /// this many).
    pub buffer: usize,
    /// Most streams open at once.
    pub max_streams: usize,
    /// Most streams one tenant may hold open at once, so that one tenant
    /// cannot take every stream of the server.
    pub max_streams_per_tenant: usize,
    /// Revisions kept per tenant.
    pub history: i64,
    /// Between compactions.
    pub compaction_interval: Duration,
    /// Between looks at every watched tenant.
    pub poll_interval: Duration,
}

/// The feed; cheap to clone.
#[derive(Debug, Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    settings: WatchSettings,
    tenants: Mutex<HashMap<String, Tenant>>,
    /// Notified when a tenant gets its first watcher: the poll applies
    /// again.
    watched: tokio::sync::Notify,
    streams: Arc<Semaphore>,
    /// Streams open per tenant (tenants with none have no entry).
    open_by_tenant: Mutex<HashMap<String, usize>>,
    stopping: watch::Sender<bool>,
    signal: Arc<ChangeSignal>,
}

/// A watched tenant: its channel and the last revision sent on it.
#[derive(Debug)]
struct Tenant {
    sender: broadcast::Sender<Arc<ChangeRecord>>,
    last: i64,
}

/// What ends a stream, besides an error of the store.
#[derive(Debug)]
pub enum Ended {
    /// It fell behind by more than the buffer; resume after `resume`.
    TooSlow { resume: i64 },
    /// The server is shutting down; resume after `resume`.
    ShuttingDown { resume: i64 },
}

impl From<Ended> for Error {
    fn from(ended: Ended) -> Self {
        match ended {
            Ended::TooSlow { resume } => Error::ResourceExhausted(format!(
                "this watch fell too far behind the changes (read faster); resume with \
                 after_revision = {resume}"
            )),
            Ended::ShuttingDown { resume } => Error::ShuttingDown(format!(
                "the server is shutting down; resume with after_revision = {resume}"
            )),
        }
    }
}

/// What a stream sends next.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A change.
    Change(Arc<ChangeRecord>),
    /// Caught up to this revision.
    Synced(i64),
}

impl Feed {
    /// A feed over `store`'s change log; [`Feed::run`] drives it.
    pub fn new(store: Store, settings: WatchSettings) -> Self {
        let signal = Arc::clone(store.changes());
        Self {
            inner: Arc::new(Inner {
                streams: Arc::new(Semaphore::new(settings.max_streams)),
                store,
                settings,
                tenants: Mutex::default(),
                watched: tokio::sync::Notify::new(),
                open_by_tenant: Mutex::default(),
                stopping: watch::Sender::new(false),
                signal,
            }),
        }
    }

    /// Ends every stream (UNAVAILABLE) and stops [`Feed::run`].
    pub fn shut_down(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.inner.settings.max_streams - self.inner.streams.available_permits()
    }

    /// Reads and broadcasts watched tenants' changes, and compacts the log,
    /// until [`Feed::shut_down`].
    pub async fn run(self) {
        let mut stopping = self.inner.stopping.subscribe();
        let mut poll = tokio::time::interval(self.inner.settings.poll_interval);
        let mut compaction = tokio::time::interval(self.inner.settings.compaction_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        compaction.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let listener = self.listen_to_other_replicas();
        loop {
            // With no tenant watched there is nothing to poll: an idle
            // registry does not wake for it.
            let watching = !self.tenants().is_empty();
            let everyone = tokio::select! {
                () = stopped(&mut stopping) => break,
                () = self.inner.signal.raised() => false,
                () = self.inner.watched.notified() => continue,
                _ = poll.tick(), if watching => true,
                _ = compaction.tick() => {
                    self.compact().await;
                    continue;
                }
            };
            let pending = self.inner.signal.take();
            let tenants = self.due(everyone || pending.all, &pending.tenants);
            for (tenant, sender, last) in tenants {
                if let Err(error) = self.forward(&tenant, &sender, last).await {
                    tracing::warn!(%error, "watch feed: reading the change log failed");
                }
            }
        }
        if let Some(listener) = listener {
            listener.abort();
        }
    }

    /// The watched tenants to look at (every one, or those in `named`),
    /// with their channel and last revision; forgets unwatched ones.
    fn due(
        &self,
        everyone: bool,
        named: &std::collections::HashSet<String>,
    ) -> Vec<(String, broadcast::Sender<Arc<ChangeRecord>>, i64)> {
        let mut tenants = self.tenants();
        tenants.retain(|_, tenant| tenant.sender.receiver_count() > 0);
        tenants
            .iter()
            .filter(|(name, _)| everyone || named.contains(*name))
            .map(|(name, tenant)| (name.clone(), tenant.sender.clone(), tenant.last))
            .collect()
    }

    /// Sends `tenant`'s changes after `last` on `sender`, page by page.
    async fn forward(
        &self,
        tenant: &str,
        sender: &broadcast::Sender<Arc<ChangeRecord>>,
        mut last: i64,
    ) -> Result<(), Error> {
        loop {
            let page = changes::after(&self.inner.store, tenant, last, PAGE).await?;
            let full = page.len() as u64 == PAGE;
            for change in page {
                last = change.revision;
                // No receiver left: nothing to do, the entry goes next look.
                let _ = sender.send(Arc::new(change));
            }
            if let Some(entry) = self.tenants().get_mut(tenant)
                && entry.sender.same_channel(sender)
            {
                entry.last = entry.last.max(last);
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn compact(&self) {
        match changes::compact(self.inner.store.pool(), self.inner.settings.history).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "change log compacted"),
            Err(error) => tracing::warn!(%error, "change log compaction failed"),
        }
    }

    fn tenants(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tenant>> {
        self.inner
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// On PostgreSQL: a task that turns the database's change notifications
    /// (from every replica) into looks at their tenants.
    fn listen_to_other_replicas(&self) -> Option<tokio::task::JoinHandle<()>> {
        let pool = self.inner.store.postgres_pool()?.clone();
        let signal = Arc::clone(&self.inner.signal);
        Some(tokio::spawn(async move {
            loop {
                if let Err(error) = listen(&pool, &signal).await {
                    tracing::warn!(%error, "watch feed: change notifications lost; retrying");
                }
                // Whatever was missed meanwhile is found by looking at all.
                signal.raise_all();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }

    /// Opens a stream of `tenant`'s changes after `after` (`None`: from
    /// now), of `kinds` only (empty: all).
    pub async fn watch(
        &self,
        tenant: &str,
        after: Option<i64>,
        kinds: Vec<ResourceKind>,
    ) -> Result<Stream, Error> {
        let share = self.take_tenant_share(tenant)?;
        let permit = Arc::clone(&self.inner.streams)
            .try_acquire_owned()
            .map_err(|_| {
                Error::ResourceExhausted(format!(
                    "this server has {} watch streams open, its most; try another replica or later",
                    self.inner.settings.max_streams
                ))
            })?;
        let store = &self.inner.store;
        let current = changes::current(store, tenant).await?;
        let after = after.unwrap_or(current);
        if after > current {
            return Err(Error::OutOfRange(format!(
                "after_revision {after} is ahead of the tenant's current revision {current}"
            )));
        }
        let receiver = self.subscribe(tenant, current);
        let oldest = changes::oldest(store, tenant).await?;
        check_kept(after, oldest, current)?;
        Ok(Stream {
            feed: self.clone(),
            tenant: tenant.to_owned(),
            kinds,
            receiver,
            stopping: self.inner.stopping.subscribe(),
            read: after,
            queue: VecDeque::new(),
            phase: Phase::Replay,
            synced: false,
            _permit: permit,
            _share: share,
        })
    }

    /// One of `tenant`'s streams, counted until the answer is dropped;
    /// RESOURCE_EXHAUSTED when the tenant holds its most already.
    fn take_tenant_share(&self, tenant: &str) -> Result<TenantShare, Error> {
        let most = self.inner.settings.max_streams_per_tenant;
        let mut open = self.open_by_tenant();
        let count = open.entry(tenant.to_owned()).or_insert(0);
        if *count >= most {
            return Err(Error::ResourceExhausted(format!(
                "this tenant has {most} watch streams open on this server, its most; close one \
                 or try another replica"
            )));
        }
        *count += 1;
        Ok(TenantShare {
            feed: self.clone(),
            tenant: tenant.to_owned(),
        })
    }

    fn open_by_tenant(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.inner
            .open_by_tenant
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver of `tenant`'s channel, made (with `current` as its last
    /// revision) when the tenant had none.
    fn subscribe(&self, tenant: &str, current: i64) -> broadcast::Receiver<Arc<ChangeRecord>> {
        let mut tenants = self.tenants();
        let entry = tenants.entry(tenant.to_owned()).or_insert_with(|| {
            self.inner.watched.notify_one();
            Tenant {
                sender: broadcast::Sender::new(self.inner.settings.buffer),
                last: current,
            }
        });
        entry.sender.subscribe()
    }
}

/// OUT_OF_RANGE when the changes after `after` are no longer all kept.
fn check_kept(after: i64, oldest: Option<i64>, current: i64) -> Result<(), Error> {
    let first_needed = after + 1;
    let first_kept = oldest.unwrap_or(current + 1);
    if first_needed < first_kept && after < current {
        return Err(compacted(first_kept));
    }
    Ok(())
}

fn compacted(oldest: i64) -> Error {
    Error::OutOfRange(format!(
        "the changes after that revision are no longer kept: the oldest available is revision \
         {oldest}; list and resolve again, then watch from the current revision"
    ))
}

/// Receives PostgreSQL's change notifications until the connection fails.
async fn listen(pool: &sea_orm::sqlx::PgPool, signal: &ChangeSignal) -> Result<(), Error> {
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool)
        .await
        .map_err(lost)?;
    listener
        .listen(migrations::NOTIFY_CHANNEL)
        .await
        .map_err(lost)?;
    // Anything committed before LISTEN took effect is found by a look.
    signal.raise_all();
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                // The payload is `<tenant> <revision>`; tenants hold no space.
                let tenant = notification.payload().split(' ').next().unwrap_or("");
                signal.raise(tenant);
            }
            Ok(None) => return Err(lost("the connection closed")),
            Err(error) => return Err(lost(error)),
        }
    }
}

/// Completes once shutdown has begun (or its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // The guard wait_for answers with is dropped before this returns.
    let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
}

/// The database's notifications stopped.
fn lost(detail: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        dependency: "database",
        detail: format!("change notifications: {detail}"),
    }
}

/// Where a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the log after `read`.
    Replay,
    /// The replay is done: SYNCED goes next.
    Synced,
    /// Following the broadcast.
    Live,
    /// Ended.
    Done,
}

/// One open watch: [`Stream::next`] gives its events in order.
#[derive(Debug)]
pub struct Stream {
    feed: Feed,
    tenant: String,
    kinds: Vec<ResourceKind>,
    receiver: broadcast::Receiver<Arc<ChangeRecord>>,
    stopping: watch::Receiver<bool>,
    /// The last revision read (sent, or skipped by the kinds).
    read: i64,
    queue: VecDeque<Arc<ChangeRecord>>,
    phase: Phase,
    /// SYNCED was sent (a later replay, to repair a gap, sends none).
    synced: bool,
    _permit: OwnedSemaphorePermit,
    _share: TenantShare,
}

/// A tenant's count of open streams holds one more while this lives.
#[derive(Debug)]
struct TenantShare {
    feed: Feed,
    tenant: String,
}

impl Drop for TenantShare {
    fn drop(&mut self) {
        let mut open = self.feed.open_by_tenant();
        if let Some(count) = open.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

impl Stream {
    /// The next event; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<Event, Error>> {
        loop {
            if let Some(change) = self.queue.pop_front() {
                return Some(Ok(Event::Change(change)));
            }
            if *self.stopping.borrow() && self.phase != Phase::Done {
                return self.end(Ended::ShuttingDown { resume: self.read }.into());
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Replay => {
                    if let Err(error) = self.replay_page().await {
                        return self.end(error);
                    }
                }
                Phase::Synced => {
                    self.phase = Phase::Live;
                    if !std::mem::replace(&mut self.synced, true) {
                        return Some(Ok(Event::Synced(self.read)));
                    }
                }
                Phase::Live => {
                    let received = tokio::select! {
                        received = self.receiver.recv() => received,
                        () = stopped(&mut self.stopping) => continue,
                    };
                    match received {
                        Ok(change) => self.take(change),
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            return self.end(Ended::TooSlow { resume: self.read }.into());
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            return self.end(Ended::ShuttingDown { resume: self.read }.into());
                        }
                    }
                }
            }
        }
    }

    fn end(&mut self, error: Error) -> Option<Result<Event, Error>> {
        self.phase = Phase::Done;
        Some(Err(error))
    }

    /// Reads the next page of the log into the queue.
    async fn replay_page(&mut self) -> Result<(), Error> {
        let store = &self.feed.inner.store;
        let page = changes::after(store, &self.tenant, self.read, PAGE).await?;
        if let Some(first) = page.first()
            && first.revision != self.read + 1
        {
            return Err(compacted(first.revision));
        }
        if (page.len() as u64) < PAGE {
            self.phase = Phase::Synced;
        }
        for change in page {
            self.take(Arc::new(change));
        }
        Ok(())
    }

    /// Queues `change` unless it was read already or is of another kind; a
    /// gap before it sends the stream back to the log.
    fn take(&mut self, change: Arc<ChangeRecord>) {
        if change.revision <= self.read {
            return;
        }
        if change.revision != self.read + 1 {
            self.phase = Phase::Replay;
            return;
        }
        self.read = change.revision;
        if self.kinds.is_empty() || self.kinds.contains(&change.kind) {
            self.queue.push_back(change);
        }
    }
}
