//! Tollgate's durable store: call records, the pending calls, the audit chain and identities.
//!
//! Two seams, one above the other:
//!
//! - [`Backend`] is what the rest of the broker talks to. Holding a call, deciding it and
//!   closing it are *store operations*: [`Backend::decide`] applies a decision to the call as
//!   stored and answers with a typed result (won, already decided by someone, not allowed), so
//!   "the first decision wins" is the store's promise, not a lock in the caller. A store shared by
//!   several brokers (PostgreSQL) implements this trait with one conditional update per decision.
//! - [`Engine`] is a local storage engine under [`Store`], the [`Backend`] for one machine:
//!   [`Store`] runs one writer task that takes whatever operations have queued up, applies the
//!   decisions among them in arrival order, chains their audit entries and hands them to the
//!   engine as one group, so a burst of thousands of held calls costs one disk sync rather than
//!   thousands. [`sled_engine`] is the engine in use (a journal in front of sled);
//!   [`memory`] keeps everything in memory, for tests.
//!
//! [`postgres`] is the [`Backend`] several brokers share: each transition of a held call is
//! one PostgreSQL transaction on the call's row, the audit chain is one chain for all of them,
//! and [`Backend::remote`] carries the other brokers' changes to the queue.
//!
//! [`chain`] hashes and verifies the audit chain; [`tokens`] is the file of identities that may
//! use the console API.

pub mod chain;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod gather;
mod journal;
pub mod memory;
pub mod postgres;
pub mod signatures;
pub mod sled_engine;
pub mod tokens;
mod writer;

#[cfg(test)]
mod testing;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tollgate_policy::approval::{Change, Refused};
use tollgate_policy::identity::Identity;
use tollgate_shared::audit::{AuditEntry, AuditFilter};
use tollgate_shared::console::{Refusal, StoreFailing, TempRule};
use tollgate_shared::signing::Signed;
use tollgate_shared::{CallRecord, Name, Outcome, Verdict};

pub use error::StoreError;
pub use gather::{DEFAULT_LINGER, MAX_LINGER};
pub use writer::{RETRY_EVERY, RETRY_MAX, Store};

/// Default page cache of the store. sled's own default (1 GiB) would let a busy broker's memory
/// grow far beyond what it needs; `docs/performance.md` has the measurements behind this size.
pub const DEFAULT_CACHE: usize = 16 << 20;

/// A boxed future, so [`Backend`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which parts of a call's current state a write stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// The call record only (a later write of the same id replaces it).
    Record,
    /// Only an audit entry for the record's outcome: an allowed call being forwarded, whose
    /// record is written once when it completes.
    Audit,
    /// The record and an audit entry for its outcome.
    Both,
}

/// A decision the store applied.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The call as it is now stored.
    pub record: Arc<CallRecord>,
    /// Whether it is now final, or an approval was counted toward a quorum.
    pub change: Change,
}

/// Why a decision (or a close) did not change a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecideError {
    /// No call has that id.
    #[error("no such call")]
    NotFound,
    /// The call is closed, or this identity may not decide it.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The store could not save the decision; nothing was applied.
    #[error("the decision could not be saved, so it was not applied: {0}")]
    Store(StoreError),
}

impl DecideError {
    /// The refusal the console protocol reports for this error.
    pub fn refusal(&self) -> Refusal {
        match self {
            DecideError::NotFound => Refusal::NotFound,
            DecideError::Refused(Refused::Closed(_)) => Refusal::AlreadyClosed,
            DecideError::Refused(_) => Refusal::NotAllowed,
            DecideError::Store(_) => Refusal::StoreFailed,
        }
    }
}

/// The store as the broker uses it: writes, the held calls' transitions, and reads.
///
/// Every transition of a held call goes through [`hold`](Backend::hold),
/// [`decide`](Backend::decide) and [`close`](Backend::close), which are atomic against each
/// other for one call: whatever order they arrive in, exactly one of them ends a call, and the
/// others are told how it ended.
pub trait Backend: Send + Sync + 'static {
    /// Store a call that waits for a decision (record and audit entry), durably, before
    /// anyone hears of it.
    fn hold(&self, record: Arc<CallRecord>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Apply `who`'s verdict to the held call `id`, durably. An approval short of its quorum
    /// is counted and the call stays pending.
    fn decide(
        &self,
        id: Name,
        who: Arc<Identity>,
        verdict: Verdict,
        reason: Option<String>,
        signed: Option<Signed>,
    ) -> BoxFuture<'_, Result<Decided, DecideError>>;

    /// Apply one verdict to many held calls (a bulk decision): each call's result, in the
    /// order of `ids`. Each call is decided on its own (one refused does not stop the others);
    /// a store may save them together. A signature covering them all is kept whole with the
    /// first call and by reference with the others ([`Signed::reference`]).
    fn decide_many(
        &self,
        ids: Vec<Name>,
        who: Arc<Identity>,
        verdict: Verdict,
        reason: Option<String>,
        signed: Option<Signed>,
    ) -> BoxFuture<'_, Vec<Result<Decided, DecideError>>> {
        Box::pin(futures_util::future::join_all(
            ids.into_iter().enumerate().map(|(i, id)| {
                let signed = signed_for(signed.as_ref(), i);
                self.decide(id, who.clone(), verdict, reason.clone(), signed)
            }),
        ))
    }

    /// End the held call `id` without a decision (`Expired`, `Cancelled`, `Abandoned`), with
    /// `why` as its reason when given. The call is closed even when the write fails (it is
    /// logged): an expiry or a cancellation is not taken back.
    fn close(
        &self,
        id: Name,
        outcome: Outcome,
        why: Option<String>,
    ) -> BoxFuture<'_, Result<Arc<CallRecord>, DecideError>>;

    /// Queue a write of a call that is not held (an allowed, refused or finished call);
    /// durable with the next group.
    fn write(&self, record: Arc<CallRecord>, writes: Writes) -> BoxFuture<'_, ()>;

    /// Write a call that is not held, and wait until it is durable.
    fn write_durably(
        &self,
        record: Arc<CallRecord>,
        writes: Writes,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Wait until everything queued so far is durable.
    fn flush(&self) -> BoxFuture<'_, ()>;

    /// The calls held now, oldest first (after a restart: those the broker must take back).
    /// A shared store answers with this broker's calls as they were when it was opened; the
    /// other brokers' calls reach the queue through [`Backend::remote`].
    fn pending(&self) -> Vec<Arc<CallRecord>>;

    /// Calls that were approved to be forwarded by a waiting client but had not finished when
    /// the store was opened: the broker stopped while forwarding them (or just before), so
    /// whether they ran is unknown. The broker closes each as `abandoned` at start; until one
    /// is closed it is listed here again after every restart.
    fn unfinished(&self) -> Vec<Arc<CallRecord>>;

    /// Calls approved while the broker holding their client was not running (another broker's
    /// console decided them), and so never forwarded: the broker forwards them at start, for its
    /// clients to collect. Only a shared store has them.
    fn approved_unsent(&self) -> Vec<Arc<CallRecord>> {
        Vec::new()
    }

    /// Claim an approved call for forwarding, durably, just before it is sent upstream: a
    /// call is claimed once, so a broker that restarts after the claim reports its outcome
    /// unknown instead of sending it again. A store only one broker uses needs no claim (an
    /// approved, unfinished call at start is one it was forwarding).
    fn claim(&self, id: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = id;
        Box::pin(async { Ok(()) })
    }

    /// Whether the store can write: `Some` while it cannot (the broker then refuses calls it
    /// could not record); watch it for changes.
    fn health(&self) -> tokio::sync::watch::Receiver<Option<StoreFailing>>;

    /// One call record as stored (reads may trail a write by a moment).
    fn call(&self, id: &str) -> BoxFuture<'_, Result<Option<CallRecord>, StoreError>>;

    /// Audit entries matching a filter, oldest first (the newest `limit` of them).
    fn audit_query(
        &self,
        filter: AuditFilter,
    ) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>>;

    /// The first `limit` audit entries after sequence number `after`, oldest first: for
    /// following the trail as it grows.
    fn audit_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>>;

    /// The changes other brokers sharing this store make, for the queue to follow (taken once;
    /// `None` for a store only this broker uses).
    fn remote(&self) -> Option<tokio::sync::mpsc::Receiver<Remote>> {
        None
    }

    /// Calls adopted from brokers that stopped for good, as they are adopted (taken once;
    /// `None` for a store only this broker uses).
    fn adopted(&self) -> Option<tokio::sync::mpsc::Receiver<Adopted>> {
        None
    }

    /// This broker's name among those sharing the store (`None` when it is not shared).
    fn node(&self) -> Option<&str> {
        None
    }
}

/// Say on `health` how the last group went: a commit clears a failure (logging that the writes
/// kept are written), a failure is recorded with its error and how many writes wait for a retry.
pub(crate) fn report_health(
    health: &tokio::sync::watch::Sender<Option<StoreFailing>>,
    result: &Result<(), StoreError>,
    waiting: usize,
) {
    match result {
        Ok(()) => {
            if let Some(was) = health.borrow().as_ref() {
                tracing::warn!(
                    since = %tollgate_shared::clock::rfc3339_seconds(was.since_ms),
                    delayed = was.waiting,
                    "the store can write again; the writes it kept are written"
                );
            }
            health.send_if_modified(|h| h.take().is_some());
        }
        Err(e) => {
            let error = e.to_string();
            health.send_modify(|h| match h {
                Some(f) => {
                    f.error = error;
                    f.waiting = waiting;
                }
                None => {
                    tracing::error!(error = %error, waiting, "the store cannot write: calls it cannot record are refused, and the writes are kept and retried every second");
                    *h = Some(StoreFailing {
                        since_ms: tollgate_shared::clock::now_ms(),
                        error,
                        waiting,
                    });
                }
            });
        }
    }
}

/// Open calls this broker took over from a broker that stopped for good (see
/// [`Backend::adopted`]); sorted as [`Backend::pending`], [`Backend::unfinished`] and
/// [`Backend::approved_unsent`] sort a broker's own calls at start.
#[derive(Debug, Clone, Default)]
pub struct Adopted {
    /// The broker they were held on.
    pub from: String,
    /// Calls still waiting for a decision.
    pub pending: Vec<Arc<CallRecord>>,
    /// Approved calls it had claimed and not finished: outcome unknown.
    pub unfinished: Vec<Arc<CallRecord>>,
    /// Approved calls it never claimed: to forward.
    pub unsent: Vec<Arc<CallRecord>>,
}

/// A change another broker sharing the store made, for the queue to follow.
#[derive(Debug, Clone)]
pub enum Remote {
    /// A call was held on another broker.
    Held(Arc<CallRecord>),
    /// A decision on a held call (on whichever broker holds it) from another broker's console.
    Decided(Decided),
    /// Another broker closed a held call (expired, cancelled, abandoned).
    Closed(Arc<CallRecord>),
    /// The store was (re)connected: these are the calls held on other brokers now, and `pending`
    /// names every call held anywhere; a call the queue holds that is not in it was decided or
    /// closed while the notifications were not heard.
    Resync {
        /// Calls held on other brokers.
        others: Vec<Arc<CallRecord>>,
        /// Every call held, on any broker.
        pending: std::collections::HashSet<Name>,
    },
    /// Another broker changed the temporary rules (added, revoked, used an allowance): read
    /// them again.
    Rules,
}

/// Temporary rules kept where every broker sharing a store finds them (the broker keeps its
/// own otherwise): a rule added, revoked or used on one broker holds on all of them.
pub trait RuleStore: Send + Sync + 'static {
    /// The rules in force at `now_ms`, oldest first.
    fn list(&self, now_ms: u64) -> BoxFuture<'_, Result<Vec<TempRule>, StoreError>>;
    /// Install a rule.
    fn add<'a>(&'a self, rule: &'a TempRule) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Revoke a rule in force: the rule as it was, `None` if none by that id was in force.
    fn remove<'a>(
        &'a self,
        id: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<TempRule>, StoreError>>;
    /// Use one allowance of allow rule `id`, once across every broker: the rule counted down,
    /// or `None` if it has none left (a rule whose last allowance this is goes).
    fn take<'a>(
        &'a self,
        id: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<TempRule>, StoreError>>;
    /// Count a call a block rule refused.
    fn hit<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// What call `index` of a bulk decision keeps of its signature: the first the whole of it.
pub fn signed_for(signed: Option<&Signed>, index: usize) -> Option<Signed> {
    signed.map(|s| if index == 0 { s.clone() } else { s.reference() })
}

/// Told of what the store committed, after each group is durable: for metrics. Called on the
/// writer's task, so it must be quick (counters, histograms) and never block.
pub trait Observer: Send + Sync + 'static {
    /// A group of `writes` mutations was committed in `took`.
    fn committed(&self, writes: usize, took: std::time::Duration);
    /// A record's write was committed; `audited` is the outcome of its audit entry if it had
    /// one, made at `at_ms`. Every audit entry is reported exactly once.
    fn written(&self, record: &CallRecord, audited: Option<Outcome>, at_ms: u64);
}

/// One change to a local engine: what the journal records and the engine applies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "m", rename_all = "snake_case")]
pub enum Mutation {
    /// Insert or replace a call record (and keep the index of open calls in step).
    Call(Arc<CallRecord>),
    /// Append an audit entry (already chained).
    Audit(Box<AuditEntry>),
}

/// A local storage engine: where [`Store`]'s groups of writes become durable, and are read
/// back. Implementations must make [`commit`](Engine::commit) survive power loss.
pub trait Engine: Send + Sync + 'static {
    /// Apply a group of mutations durably, in order, all or nothing.
    fn commit(&self, batch: Vec<Mutation>) -> Result<(), StoreError>;
    /// One call record.
    fn call(&self, id: &str) -> Result<Option<CallRecord>, StoreError>;
    /// Every open call (see [`CallRecord::is_open`]), oldest first.
    fn open(&self) -> Result<Vec<CallRecord>, StoreError>;
    /// Sequence number and hash of the last audit entry (0 and the genesis hash when empty).
    fn audit_head(&self) -> Result<(u64, String), StoreError>;
    /// Audit entries matching a filter, oldest first (the newest `limit` of them).
    fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;
    /// The first `limit` audit entries after sequence number `after`, oldest first.
    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Visit every audit entry in chain order, as stored; stop when `visit` returns false.
    fn audit_scan(&self, visit: &mut dyn FnMut(AuditEntry) -> bool) -> Result<(), StoreError>;
}
