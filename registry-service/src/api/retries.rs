//! Idempotent retries (AIP-155 `request_id`) and dry runs (AIP-163
//! `validate_only`) of every mutation, once: a request type declares its
//! method name ([`mutations!`]); a handler reads its [`Intent`] first, puts
//! it on its write ([`Intent::stamp`]) and runs that write through
//! [`Registry::once`], saying how a remembered answer is rebuilt.
//!
//! A call with a request id:
//! 1. waits for any call of the same (tenant, request id) in this process
//!    to finish (so concurrent duplicates through one replica queue rather
//!    than race);
//! 2. is answered from its row of `request_ids` when one is there (the
//!    same method and fingerprint; else INVALID_ARGUMENT on `request_id`);
//! 3. else runs, its write remembering the id in the same statement or
//!    transaction ([`crate::store::request_ids`]); when the write fails,
//!    the row is read once more — a concurrent call through another
//!    replica may have won the id, and its answer is the answer — and
//!    otherwise the failure is (a failure is never remembered).
//!
//! A mutation whose only effect is its transaction (an agent's create and
//! update, a rollback) takes steps 2 and 3 the other way round
//! ([`Registry::once_write_first`]): its write goes first, and a used id
//! makes it fail on the primary key of `request_ids` and roll back whole,
//! so the lookup is paid only by a retry or a failure. A mutation that
//! calls crypto-service before its transaction looks first, so a retry
//! never calls it again.
//!
//! The fingerprint is SHA-256 over the request's protobuf encoding with
//! `request_id` and `validate_only` cleared; maps are generated as
//! `BTreeMap`s (proto/build.rs), so equal requests encode equally. A
//! provider's `api_key` is not in it, only whether one was sent
//! ([`KEY_SENT`]): an unkeyed digest of a key would let anyone who reads
//! the table test guesses of a weak key offline. A retry that sends a key
//! is compared by the key's value instead, against the key its remembered
//! version stores (`api::providers`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::v1 as pb;
use sha2::{Digest, Sha256};

use super::Registry;
use crate::caller::Caller;
use crate::error::Error;
use crate::store::request_ids::{self, Answer, Claim};
use crate::store::versioned::{How, Write};

/// How long a request id is remembered unless configured
/// (`REGISTRY_REQUEST_ID_RETENTION_SECONDS`): AIP-155's "at least 24 hours"
/// hint is what clients expect.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// A call's (tenant, request id).
type CallKey = (String, String);

/// What this process knows of request ids: how long they are remembered,
/// the calls in progress, and the test hook.
#[derive(Debug)]
pub struct Retries {
    retention: Duration,
    /// One lock per (tenant, request id) of a call in progress here.
    in_progress: Mutex<HashMap<CallKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Test only (refused outside development mode, see SECURITY.md): the
    /// process aborts right after the write of a call with this request id
    /// committed, before it answers.
    abort_after_commit: Option<String>,
}

impl Retries {
    /// Request ids remembered for `retention`; `abort_after_commit` is the
    /// test hook (`None` in production).
    pub fn new(retention: Duration, abort_after_commit: Option<String>) -> Self {
        Self {
            retention,
            in_progress: Mutex::default(),
            abort_after_commit,
        }
    }

    /// How long a request id is remembered.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Waits for this process's other calls with `request_id` in `tenant`
    /// and holds the turn until the answer is dropped.
    async fn turn(&self, tenant: &str, request_id: &str) -> Turn<'_> {
        let key = (tenant.to_owned(), request_id.to_owned());
        let lock = {
            // A poisoned map only means a panic elsewhere held it: the map
            // itself is still whole.
            let mut calls = self.in_progress.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(calls.entry(key.clone()).or_default())
        };
        let guard = Arc::clone(&lock).lock_owned().await;
        Turn {
            retries: self,
            key,
            lock,
            guard: Some(guard),
        }
    }
}

/// A call's turn on its request id; the entry goes when the last waiter
/// leaves.
struct Turn<'r> {
    retries: &'r Retries,
    key: CallKey,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.guard = None;
        let mut calls = self
            .retries
            .in_progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Two references: the map's and this one; nobody waits.
        if Arc::strong_count(&self.lock) == 2 {
            calls.remove(&self.key);
        }
    }
}

/// A mutation request: it carries `request_id` and `validate_only`.
pub trait Mutation: prost::Message + Clone {
    /// The method, as remembered with the request id.
    const METHOD: &'static str;
    /// The request id sent (empty: none).
    fn request_id(&self) -> &str;
    /// Whether only the checks are to run.
    fn validate_only(&self) -> bool;
    /// The request as fingerprinted: without the two fields, and with a
    /// sent key replaced by [`KEY_SENT`].
    fn fingerprinted(&self) -> Self;
}

/// What a fingerprinted request holds in place of a non-empty `api_key`.
pub const KEY_SENT: &str = "(a key: compared by value on a retry)";

/// Declares request types as [`Mutation`]s with their method names; `key
/// in provider` names the message whose `api_key` a request may carry.
macro_rules! mutations {
    ($($request:ident => $method:literal $(key in $holder:ident)?),* $(,)?) => {
        $(impl Mutation for pb::$request {
            const METHOD: &'static str = $method;
            fn request_id(&self) -> &str {
                &self.request_id
            }
            fn validate_only(&self) -> bool {
                self.validate_only
            }
            fn fingerprinted(&self) -> Self {
                #[allow(unused_mut)]
                let mut request = Self {
                    request_id: String::new(),
                    validate_only: false,
                    ..self.clone()
                };
                $(if let Some(holder) = request.$holder.as_mut()
                    && !holder.api_key.is_empty()
                {
                    // The clone's copy of the key is wiped, not just dropped.
                    zeroize::Zeroize::zeroize(&mut holder.api_key);
                    holder.api_key.push_str(KEY_SENT);
                })?
                request
            }
        })*
    };
}

mutations! {
    CreateAgentRequest => "CreateAgent",
    UpdateAgentRequest => "UpdateAgent",
    DeleteAgentRequest => "DeleteAgent",
    UndeleteAgentRequest => "UndeleteAgent",
    PurgeAgentRequest => "PurgeAgent",
    RollbackAgentRequest => "RollbackAgent",
    SetAgentLabelRequest => "SetAgentLabel",
    DeleteAgentLabelRequest => "DeleteAgentLabel",
    CreateProviderRequest => "CreateProvider" key in provider,
    UpdateProviderRequest => "UpdateProvider" key in provider,
    DeleteProviderRequest => "DeleteProvider",
    UndeleteProviderRequest => "UndeleteProvider",
    PurgeProviderRequest => "PurgeProvider",
    RollbackProviderRequest => "RollbackProvider",
    SetProviderLabelRequest => "SetProviderLabel",
    DeleteProviderLabelRequest => "DeleteProviderLabel",
    RevokeProviderKeyRequest => "RevokeProviderKey",
    UpdateLabelPolicyRequest => "UpdateLabelPolicy",
}

/// What a mutation request asks besides its change: to be remembered under
/// a request id, or only checked.
#[derive(Debug, Clone, Default)]
pub struct Intent {
    /// The request id and fingerprint; `None` without a request id.
    pub claim: Option<Claim>,
    /// Only run the checks.
    pub validate_only: bool,
}

impl Intent {
    /// The intent of `request`: its request id checked (a UUID, or
    /// INVALID_ARGUMENT on `request_id`) and, when there is one, the
    /// request fingerprinted. Checked before anything else of the request;
    /// a request without an id costs nothing here.
    pub fn of<M: Mutation>(request: &M) -> Result<Self, Error> {
        let request_id = request.request_id();
        let claim = if request_id.is_empty() {
            None
        } else {
            let parsed = uuid::Uuid::try_parse(request_id)
                .map_err(|_| Error::bad_field("request_id", "is not a UUID"))?;
            let digest = Sha256::digest(request.fingerprinted().encode_to_vec());
            Some(Claim {
                // Canonical (lowercase, hyphenated): one id, one row.
                request_id: parsed.hyphenated().to_string(),
                method: M::METHOD,
                fingerprint: hex::encode(digest),
            })
        };
        Ok(Self {
            claim,
            validate_only: request.validate_only(),
        })
    }

    /// `write` carrying the request id, and remembered under it unless
    /// this is a dry run.
    pub fn stamp<'a>(&self, mut write: Write<'a>) -> Write<'a> {
        write.request_id = self.claim.as_ref().map(|c| c.request_id.clone());
        write.claim = self.remembered().cloned();
        write
    }

    /// How a write that is not a version (a delete, a label move) runs.
    pub fn how(&self) -> How<'_> {
        How {
            claim: self.remembered(),
            validate_only: self.validate_only,
        }
    }

    /// The claim to remember: none for a dry run (it writes nothing).
    fn remembered(&self) -> Option<&Claim> {
        self.claim.as_ref().filter(|_| !self.validate_only)
    }
}

/// What a request id was found to hold.
enum Remembered {
    /// The answer of the call that used it (the same request).
    Answer(Answer),
    /// A row older than the retention, deleted just now: the id is free.
    Expired,
    /// No row: the id is free.
    Nothing,
}

impl Registry {
    /// Runs a mutation once per request id: the answer of `run`, or, when
    /// `intent`'s request id was already answered, that answer rebuilt by
    /// `rebuild` from what was remembered (see the module documentation).
    /// The id is looked up before `run`: for a mutation with an effect
    /// outside its transaction (a call to crypto-service), which a retry
    /// must not repeat.
    pub async fn once<T, Ran, Rebuilt>(
        &self,
        caller: &Caller,
        intent: &Intent,
        run: impl FnOnce() -> Ran,
        rebuild: impl FnOnce(Answer) -> Rebuilt,
    ) -> Result<T, Error>
    where
        Ran: Future<Output = Result<T, Error>>,
        Rebuilt: Future<Output = Result<T, Error>>,
    {
        let Some(claim) = intent.remembered() else {
            return run().await;
        };
        let _turn = self.retries.turn(&caller.tenant, &claim.request_id).await;
        match self.remembered(caller, claim).await? {
            Remembered::Answer(answer) => rebuild(answer).await,
            Remembered::Expired | Remembered::Nothing => {
                self.run_remembering(caller, claim, run(), rebuild).await
            }
        }
    }

    /// [`Registry::once`] for a mutation whose only effect is its
    /// transaction: `run` goes first, and the id is looked up only when it
    /// fails. Its write stores the id in the same transaction, so a
    /// request id already used makes the write fail (the primary key of
    /// `request_ids`) and roll back whole: a retry still writes nothing
    /// again, and a first call saves the lookup. `run` runs a second time
    /// only when the id it met had expired (and is forgotten now).
    pub async fn once_write_first<T, Ran, Rebuilt>(
        &self,
        caller: &Caller,
        intent: &Intent,
        run: impl Fn() -> Ran,
        rebuild: impl FnOnce(Answer) -> Rebuilt,
    ) -> Result<T, Error>
    where
        Ran: Future<Output = Result<T, Error>>,
        Rebuilt: Future<Output = Result<T, Error>>,
    {
        let Some(claim) = intent.remembered() else {
            return run().await;
        };
        let _turn = self.retries.turn(&caller.tenant, &claim.request_id).await;
        let error = match run().await {
            Ok(answer) => return Ok(self.answered(claim, answer)),
            Err(error) => error,
        };
        match self.remembered(caller, claim).await? {
            Remembered::Answer(answer) => rebuild(answer).await,
            Remembered::Expired => self.run_remembering(caller, claim, run(), rebuild).await,
            Remembered::Nothing => Err(error),
        }
    }

    /// The answer of `ran`, a call with `claim`'s request id that was not
    /// answered before; when it fails, the id is looked up once more: a
    /// concurrent call through another replica may have won it, and its
    /// answer is the answer (a failure is never remembered).
    async fn run_remembering<T, Rebuilt>(
        &self,
        caller: &Caller,
        claim: &Claim,
        ran: impl Future<Output = Result<T, Error>>,
        rebuild: impl FnOnce(Answer) -> Rebuilt,
    ) -> Result<T, Error>
    where
        Rebuilt: Future<Output = Result<T, Error>>,
    {
        match ran.await {
            Ok(answer) => Ok(self.answered(claim, answer)),
            Err(error) => match self.remembered(caller, claim).await? {
                Remembered::Answer(answer) => rebuild(answer).await,
                Remembered::Expired | Remembered::Nothing => Err(error),
            },
        }
    }

    /// `answer`, once its write has committed; the test hook aborts here.
    fn answered<T>(&self, claim: &Claim, answer: T) -> T {
        if self.retries.abort_after_commit.as_deref() == Some(&claim.request_id) {
            tracing::error!(
                request_id = %claim.request_id,
                "aborting after the commit as REGISTRY_TEST_ABORT_AFTER_COMMIT asks"
            );
            std::process::abort();
        }
        answer
    }

    /// What `claim`'s request id holds in the caller's tenant (an expired
    /// row is forgotten here); INVALID_ARGUMENT when it was used for
    /// another request.
    async fn remembered(&self, caller: &Caller, claim: &Claim) -> Result<Remembered, Error> {
        let tenant = &caller.tenant;
        let Some(found) = request_ids::find(&self.db, tenant, &claim.request_id).await? else {
            return Ok(Remembered::Nothing);
        };
        let retention = chrono::Duration::from_std(self.retries.retention)
            .map_err(|e| Error::Internal(format!("request id retention: {e}")))?;
        let expired_before = crate::store::now() - retention;
        if found.create_time < expired_before {
            request_ids::forget_expired(&self.db, tenant, &claim.request_id, expired_before)
                .await?;
            return Ok(Remembered::Expired);
        }
        if found.method != claim.method || found.fingerprint != claim.fingerprint {
            return Err(used_for_another_request(&found.method));
        }
        Ok(Remembered::Answer(found.answer()))
    }
}

/// INVALID_ARGUMENT on `request_id`: it answered another request (a
/// `method` call) first.
pub fn used_for_another_request(method: &str) -> Error {
    Error::bad_field(
        "request_id",
        format!(
            "was already used for a different request (a {method} call); send a new \
             request_id for a new request"
        ),
    )
}

/// Deletes request ids older than `retention` every `retention / 24`
/// (at least every second, at most every hour), until the task is dropped.
/// The first round comes one period after start-up, not at once: an
/// expired id is free whether or not its row is still there, so nothing
/// waits for it, and a round at start-up ran whenever the pool's
/// connection came free, among the first calls (an end-to-end test that
/// ages a row by hand saw it vanish).
pub async fn prune_expired(db: crate::store::Store, retention: Duration) {
    let period = (retention / 24).clamp(Duration::from_secs(1), Duration::from_secs(60 * 60));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Ok(retention) = chrono::Duration::from_std(retention) else {
            return;
        };
        let before = crate::store::now() - retention;
        match request_ids::prune(db.pool(), before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "expired request ids deleted"),
            Err(error) => tracing::warn!(%error, "deleting expired request ids failed"),
        }
    }
}
