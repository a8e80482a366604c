//! The approval queue: held calls, their decisions, and the events consoles see.
//!
//! A held call is committed to the store (durably) before anyone hears of it, then broadcast as
//! `call_pending`. Every transition after that (approval counted, approved, rejected, expired,
//! cancelled, abandoned) follows the same path: the pure [`rules`] decide under the queue's
//! lock, so the first valid decision wins; the new record is committed with its audit entry;
//! then the waiting client is woken through a `watch` channel and consoles get the event.
//! Consoles receive events through a bounded broadcast channel: one that falls behind misses
//! events and is sent a fresh snapshot instead, so a slow console never holds the broker up.

pub mod temp;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, broadcast, oneshot};
use tollgate_shared::console::{
    AllowNext, DecideResult, Refusal, Role, RuleKind, ServerMsg, Target, TempRule,
};
use tollgate_shared::sync::Mutex;
use tollgate_shared::{CallRecord, Fingerprint, HoldMode, Name, Outcome, Verdict};

use crate::store::Recorder;
use temp::TempRules;
use tollgate_policy::approval::{self, Change, ClosedCall, Refused};
use tollgate_policy::guards::budget::{Budgets, OverBudget};
use tollgate_policy::identity::Identity;
use tollgate_shared::clock::now_ms;

/// How a held call ended (what its waiting client should be told).
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Forward it.
    Approved,
    /// Refuse it: `by` and their reason.
    Rejected {
        /// Who.
        by: String,
        /// Why, if they said.
        reason: Option<String>,
    },
    /// Nobody decided in time.
    Expired,
    /// The client withdrew it.
    Cancelled,
    /// The client can no longer be answered (broker restart).
    Abandoned,
}

/// A pending call. Its record is shared (with the driver that waits on it, its feed and the
/// store's writer) rather than copied: a queue of 100 000 pending calls holds each once.
struct Entry {
    record: Arc<CallRecord>,
    done: Done,
}

/// How a held call ended, with its final record.
pub type Resolved = (Resolution, Arc<CallRecord>);

/// Who hears how a pending call ended.
enum Done {
    /// A task waiting on its [`Waiting`] handle.
    Wait(oneshot::Sender<Resolved>),
    /// A continuation run when it is resolved (see [`Queue::then`]).
    Then(Box<dyn FnOnce(Resolved) + Send>),
}

impl Done {
    fn send(self, resolved: Resolved) {
        match self {
            Done::Wait(tx) => {
                let _ = tx.send(resolved);
            }
            Done::Then(f) => f(resolved),
        }
    }
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct GrantKey {
    client: Name,
    server: Name,
    tool: Name,
    args_hash: tollgate_shared::ArgsHash,
}

/// Calls that left the queue recently, kept so a late decision is told who decided and when
/// without a store read (the store's reads trail its commits by a moment). Only what that
/// answer needs is kept, not the record.
#[derive(Default)]
struct Closed {
    map: HashMap<Name, ClosedCall>,
    order: std::collections::VecDeque<Name>,
}

/// How many recently closed calls are remembered.
const CLOSED_KEPT: usize = 65_536;

impl Closed {
    fn insert(&mut self, record: &CallRecord) {
        if self
            .map
            .insert(record.id.clone(), ClosedCall::of(record))
            .is_none()
        {
            self.order.push_back(record.id.clone());
        }
        while self.order.len() > CLOSED_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// When held calls expire, walked by one timer task for the whole queue (a sleeping task per
/// call cost about 4 KiB each).
#[derive(Default)]
struct Expiries {
    /// (expiry in ms since the epoch, call id), soonest first.
    due: BTreeSet<(u64, Name)>,
    /// The timer task has been started.
    running: bool,
}

/// The queue.
pub struct Queue {
    entries: Mutex<HashMap<Name, Entry>>,
    expiries: Mutex<Expiries>,
    /// Wakes the timer task when a call that expires sooner than all others arrives.
    expiry_changed: Arc<Notify>,
    closed: Mutex<Closed>,
    grants: Mutex<HashMap<GrantKey, (Arc<CallRecord>, u64)>>,
    recorder: Recorder,
    events: broadcast::Sender<Arc<ServerMsg>>,
    retry_ttl: Duration,
    budgets: Budgets,
    /// Temporary rules installed by decisions.
    pub temp: TempRules,
}

/// Why a call could not be held.
#[derive(Debug)]
pub enum HoldError {
    /// A budget is exhausted: the call is refused, not queued.
    OverBudget(OverBudget),
    /// The store could not write it.
    Store(String),
}

impl std::fmt::Display for HoldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HoldError::OverBudget(o) => write!(f, "budget \"{}\": {}", o.budget, o.why),
            HoldError::Store(e) => f.write_str(e),
        }
    }
}

/// A temporary rule asked for with a decision.
#[derive(Debug, Clone, Copy)]
pub enum Follow {
    /// Refuse the pattern's new calls for this long.
    BlockFor(u64),
    /// Let the next identical calls through.
    AllowNext(AllowNext),
}

/// How many decided calls are written (and answered) together.
const DECIDE_CHUNK: usize = 4096;

/// A decision resolving this many calls at once asks for free memory to be returned to the
/// system soon after (see [`crate::trim`]).
const TRIM_AFTER: usize = 1024;

/// Events buffered per console before it counts as fallen behind.
pub const EVENT_BUFFER: usize = 4096;

/// A held call's handle for the code that waits on it.
pub struct Waiting {
    /// The call as it was held.
    pub record: Arc<CallRecord>,
    /// Answered when the call is resolved, with its final record; closed without an answer
    /// when the queue is gone.
    pub done: oneshot::Receiver<Resolved>,
}

impl Waiting {
    /// A handle that is already approved (a call policy allowed, run as a task).
    pub fn approved(record: CallRecord) -> Waiting {
        let record = Arc::new(record);
        let (tx, done) = oneshot::channel();
        let _ = tx.send((Resolution::Approved, record.clone()));
        Waiting { record, done }
    }
}

impl Queue {
    /// A queue writing to `recorder`, without budgets or saved temporary rules.
    pub fn new(recorder: Recorder, retry_ttl: Duration) -> Arc<Queue> {
        Queue::with_guards(
            recorder,
            retry_ttl,
            Budgets::new(Vec::new()),
            TempRules::in_memory(),
        )
    }

    /// A queue writing to `recorder`, enforcing `budgets` and keeping `temp` rules.
    pub fn with_guards(
        recorder: Recorder,
        retry_ttl: Duration,
        budgets: Budgets,
        temp: TempRules,
    ) -> Arc<Queue> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Arc::new(Queue {
            entries: Mutex::new(HashMap::new()),
            expiries: Mutex::new(Expiries::default()),
            expiry_changed: Arc::new(Notify::new()),
            closed: Mutex::new(Closed::default()),
            grants: Mutex::new(HashMap::new()),
            recorder,
            events,
            retry_ttl,
            budgets,
            temp,
        })
    }

    /// The budgets held calls count against (allowed calls are charged by the gateway).
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Where records go.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Listen to queue events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ServerMsg>> {
        self.events.subscribe()
    }

    fn publish(&self, msg: ServerMsg) {
        let _ = self.events.send(Arc::new(msg));
    }

    /// Every pending call, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<CallRecord>> {
        let mut out: Vec<_> = self
            .entries
            .lock()
            .values()
            .map(|e| e.record.clone())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// A pending call's record.
    pub fn get(&self, id: &str) -> Option<Arc<CallRecord>> {
        self.entries.lock().get(id).map(|e| e.record.clone())
    }

    /// Hold a call: reserve its place in the budgets, commit it durably, then tell consoles.
    /// Fails (and nothing is held or reserved) when a budget is full or the store cannot
    /// write it.
    pub async fn hold(self: &Arc<Self>, record: CallRecord) -> Result<Waiting, HoldError> {
        self.budgets
            .reserve_hold(&record, now_ms())
            .map_err(HoldError::OverBudget)?;
        let record = Arc::new(record);
        if let Err(e) = self.recorder.commit(record.clone()).await {
            self.budgets.release(&record, false, now_ms());
            return Err(HoldError::Store(e));
        }
        Ok(self.enter(record))
    }

    /// Put an already-stored pending call into the queue (used at start-up for recovered
    /// calls, which count against budgets again without a check).
    pub fn admit(self: &Arc<Self>, record: CallRecord) -> Waiting {
        self.budgets.adopt(&record, now_ms());
        self.enter(Arc::new(record))
    }

    fn enter(self: &Arc<Self>, record: Arc<CallRecord>) -> Waiting {
        let (tx, rx) = oneshot::channel();
        let id = record.id.clone();
        let expires = record.hold.as_ref().map(|h| h.expires_ms);
        self.entries.lock().insert(
            id.clone(),
            Entry {
                record: record.clone(),
                done: Done::Wait(tx),
            },
        );
        tracing::info!(call = %id, server = %record.server, tool = %record.tool, client = %record.client, "held for approval");
        self.publish(ServerMsg::CallPending {
            call: record.clone(),
        });
        if let Some(at) = expires {
            self.expire_at(at, id);
        }
        Waiting { record, done: rx }
    }

    /// Run `f` when the call resolves instead of waiting on `waiting` (at once if it already
    /// has). Nothing runs if the queue goes away first.
    pub fn then(&self, waiting: Waiting, f: impl FnOnce(Resolved) + Send + 'static) {
        let Waiting { record, mut done } = waiting;
        if let Some(entry) = self.entries.lock().get_mut(&record.id)
            && matches!(entry.done, Done::Wait(_))
        {
            entry.done = Done::Then(Box::new(f));
            return;
        }
        match done.try_recv() {
            Ok(resolved) => f(resolved),
            // Out of the queue but not yet answered: it is being settled right now.
            Err(oneshot::error::TryRecvError::Empty) => {
                tokio::spawn(async move {
                    if let Ok(resolved) = done.await {
                        f(resolved);
                    }
                });
            }
            Err(oneshot::error::TryRecvError::Closed) => {}
        }
    }

    /// Expire call `id` at `at` (ms since the epoch) unless it is resolved first.
    fn expire_at(self: &Arc<Self>, at: u64, id: Name) {
        let (start, sooner) = {
            let mut ex = self.expiries.lock();
            let sooner = ex.due.first().is_none_or(|(first, _)| at < *first);
            ex.due.insert((at, id));
            (!std::mem::replace(&mut ex.running, true), sooner)
        };
        if start {
            tokio::spawn(expire_loop(
                Arc::downgrade(self),
                self.expiry_changed.clone(),
            ));
        } else if sooner {
            self.expiry_changed.notify_one();
        }
    }

    /// A call left the queue: it no longer expires.
    fn forget_expiry(&self, record: &CallRecord) {
        if let Some(h) = &record.hold {
            self.expiries
                .lock()
                .due
                .remove(&(h.expires_ms, record.id.clone()));
        }
    }

    /// Decide calls. Every call named (or matching the fingerprint) gets a result.
    pub async fn decide(
        &self,
        who: &Identity,
        target: &Target,
        verdict: Verdict,
        reason: Option<&str>,
    ) -> Vec<DecideResult> {
        let ids: Vec<Name> = match target {
            Target::Ids { ids } => ids.iter().map(|id| Name::from(id.as_str())).collect(),
            Target::Fingerprint { fingerprint } => {
                let want = Fingerprint::from(fingerprint.as_str());
                let mut v: Vec<_> = self
                    .entries
                    .lock()
                    .values()
                    .filter(|e| e.record.fingerprint == want || e.record.shape == want)
                    .map(|e| e.record.id.clone())
                    .collect();
                v.sort();
                v
            }
        };
        let now = now_ms();
        let mut changed = Vec::new();
        let mut results = Vec::with_capacity(ids.len());
        {
            let mut entries = self.entries.lock();
            for id in &ids {
                let Some(entry) = entries.get_mut(id) else {
                    results.push((id.clone(), Err(None)));
                    continue;
                };
                match approval::decide(&entry.record, who, verdict, reason, now) {
                    Ok((next, change)) => {
                        // The answer needs only this much of the new record; holding the
                        // records themselves until every chunk is written would keep a bulk
                        // decision's records alive twice over.
                        let summary = (
                            next.outcome,
                            change,
                            next.hold.as_ref().map_or(1, |h| h.quorum),
                            next.decisions
                                .iter()
                                .filter(|d| d.verdict == Verdict::Approve)
                                .count(),
                        );
                        let next = Arc::new(next);
                        let before = std::mem::replace(&mut entry.record, next.clone());
                        changed.push((before, next, change));
                        results.push((id.clone(), Ok(summary)));
                    }
                    Err(why) => {
                        let refusal = match why {
                            Refused::Closed(_) => Refusal::AlreadyClosed,
                            _ => Refusal::NotAllowed,
                        };
                        results.push((id.clone(), Err(Some((refusal, why.to_string())))))
                    }
                }
            }
        }
        // Written in group commits of up to DECIDE_CHUNK calls (100 000 commits in flight at
        // once cost a few KiB each), each chunk's clients woken as soon as it is durable.
        let mut failed = HashMap::new();
        if changed.len() >= TRIM_AFTER {
            crate::trim::soon();
        }
        let mut changed = changed.into_iter().peekable();
        while changed.peek().is_some() {
            let chunk: Vec<_> = changed.by_ref().take(DECIDE_CHUNK).collect();
            let commits = chunk
                .iter()
                .map(|(_, next, _)| self.recorder.commit(next.clone()));
            let written = futures_util::future::join_all(commits).await;
            for ((before, next, change), w) in chunk.into_iter().zip(written) {
                match w {
                    Ok(()) => self.settle(next, change),
                    Err(e) => {
                        if let Some(entry) = self.entries.lock().get_mut(&before.id) {
                            entry.record = before.clone();
                        }
                        failed.insert(before.id.clone(), e);
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(results.len());
        for (id, r) in results {
            out.push(match r {
                Ok((outcome, change, quorum, approvals)) => match failed.remove(&id) {
                    Some(e) => DecideResult {
                        id: id.to_string(),
                        ok: false,
                        refusal: Some(Refusal::StoreFailed),
                        outcome: Some(Outcome::Pending),
                        message: format!(
                            "the decision could not be saved, so it was not applied: {e}"
                        ),
                    },
                    None => DecideResult {
                        id: id.to_string(),
                        ok: true,
                        refusal: None,
                        outcome: Some(outcome),
                        message: match change {
                            Change::Final => format!("{outcome} by {}", who.name),
                            Change::Counted => {
                                format!("approval {approvals} of {quorum} counted; still pending")
                            }
                        },
                    },
                },
                Err(Some((refusal, why))) => DecideResult {
                    id: id.to_string(),
                    ok: false,
                    refusal: Some(refusal),
                    outcome: None,
                    message: why,
                },
                Err(None) => {
                    let recent = self.closed.lock().map.get(&id).cloned();
                    let stored = recent.or_else(|| {
                        let rec = self.recorder.backend().call(&id).ok().flatten()?;
                        Some(ClosedCall::of(&rec))
                    });
                    match stored {
                        Some(gone) => DecideResult {
                            id: id.to_string(),
                            ok: false,
                            refusal: Some(Refusal::AlreadyClosed),
                            outcome: Some(gone.outcome),
                            message: gone.message(),
                        },
                        None => DecideResult {
                            id: id.to_string(),
                            ok: false,
                            refusal: Some(Refusal::NotFound),
                            outcome: None,
                            message: "no such call".into(),
                        },
                    }
                }
            });
        }
        out
    }

    /// Decide calls and, when asked, install a temporary rule for the pattern decided. Bad
    /// requests are refused before anything is decided; when the decision went through but no
    /// rule can follow from it, the second part of the answer says why.
    pub async fn decide_and_follow(
        &self,
        who: &Identity,
        target: &Target,
        verdict: Verdict,
        reason: Option<&str>,
        follow: Option<Follow>,
    ) -> Result<(Vec<DecideResult>, Result<Option<TempRule>, String>), String> {
        // A shape groups calls whose numbers, ids and timestamps differ: rejecting them together
        // is safe, approving them together would approve arguments nobody looked at.
        if verdict == Verdict::Approve
            && let Target::Fingerprint { fingerprint } = target
            && self
                .entries
                .lock()
                .values()
                .any(|e| e.record.shape.is(fingerprint) && !e.record.fingerprint.is(fingerprint))
        {
            return Err(format!(
                "{fingerprint} is a shape fingerprint: its calls differ in numbers, ids or timestamps, so they are approved by exact fingerprint or by id, not together (rejecting by shape is fine)"
            ));
        }
        let Some(follow) = follow else {
            return Ok((self.decide(who, target, verdict, reason).await, Ok(None)));
        };
        let Target::Fingerprint { fingerprint } = target else {
            return Err(
                "a temporary rule follows a decision by fingerprint: use target {\"by\": \"fingerprint\"}"
                    .into(),
            );
        };
        if who.role == Role::Viewer {
            return Err(format!(
                "{} is a viewer; deciding calls and installing rules needs the approver or admin role",
                who.name
            ));
        }
        let (kind, for_ms, remaining) = match follow {
            Follow::BlockFor(ms) if verdict == Verdict::Reject => (RuleKind::Block, ms, None),
            Follow::BlockFor(_) => return Err("block_for_ms goes with a rejection".into()),
            Follow::AllowNext(a) if verdict == Verdict::Approve => {
                if a.count == 0 || a.count > temp::MAX_ALLOW_COUNT {
                    return Err(format!(
                        "allow_next.count must be between 1 and {}",
                        temp::MAX_ALLOW_COUNT
                    ));
                }
                (RuleKind::Allow, a.for_ms, Some(a.count))
            }
            Follow::AllowNext(_) => return Err("allow_next goes with an approval".into()),
        };
        if for_ms == 0 || for_ms > temp::MAX_RULE_MS {
            return Err("a temporary rule lasts between 1 ms and 24 h".into());
        }
        let results = self.decide(who, target, verdict, reason).await;
        let decided: Vec<ClosedCall> = {
            let closed = self.closed.lock();
            let entries = self.entries.lock();
            results
                .iter()
                .filter(|r| r.ok)
                .filter_map(|r| {
                    closed.map.get(r.id.as_str()).cloned().or_else(|| {
                        entries
                            .get(r.id.as_str())
                            .map(|e| ClosedCall::of(&e.record))
                    })
                })
                .collect()
        };
        let Some(first) = decided.first() else {
            return Ok((
                results,
                Err(format!(
                    "no temporary rule was installed: no pending call with fingerprint {fingerprint} was decided by {}",
                    who.name
                )),
            ));
        };
        if kind == RuleKind::Allow && decided.iter().any(|c| c.outcome != Outcome::Approved) {
            return Ok((
                results,
                Err("no allow rule was installed: the calls need more approvals than yours (quorum), so future ones must too".into()),
            ));
        }
        let now = now_ms();
        let rule = TempRule {
            id: temp::new_id(),
            kind,
            fingerprint: fingerprint.clone(),
            server: first.server.to_string(),
            tool: first.tool.to_string(),
            by: who.name.clone(),
            created_ms: now,
            until_ms: now + for_ms,
            reason: reason.map(str::to_string),
            remaining,
            hits: 0,
        };
        if let Err(e) = self.temp.add(rule.clone(), now) {
            return Ok((
                results,
                Err(format!("no temporary rule was installed: {e}")),
            ));
        }
        tracing::info!(rule = %rule.id, kind = ?rule.kind, fingerprint = %rule.fingerprint, by = %rule.by, until_ms = rule.until_ms, "temporary rule installed");
        self.rules_changed();
        Ok((results, Ok(Some(rule))))
    }

    /// Revoke a temporary rule: admins any, approvers their own or those for servers they
    /// decide for.
    pub fn revoke_rule(&self, who: &Identity, id: &str) -> Result<TempRule, String> {
        let gone = self.temp.revoke(id, now_ms(), |r| match who.role {
            Role::Admin => Ok(()),
            Role::Approver
                if r.by == who.name
                    || who.servers.as_ref().is_none_or(|s| s.contains(&r.server)) =>
            {
                Ok(())
            }
            Role::Approver => Err(format!(
                "{} may not revoke rule {} (made by {} for server {}, outside their servers)",
                who.name, r.id, r.by, r.server
            )),
            Role::Viewer => Err(format!(
                "{} is a viewer; revoking rules needs the approver or admin role",
                who.name
            )),
        })?;
        tracing::info!(rule = %gone.id, by = %who.name, "temporary rule revoked");
        self.rules_changed();
        Ok(gone)
    }

    /// Tell consoles the rules changed.
    pub fn rules_changed(&self) {
        self.publish(ServerMsg::Rules {
            req: None,
            rules: self.temp.list(now_ms()),
        });
    }

    /// Tell the world about a committed decision.
    fn settle(&self, record: Arc<CallRecord>, change: Change) {
        if change == Change::Counted {
            self.publish(ServerMsg::CallApproval {
                call: record.clone(),
            });
            return;
        }
        // Into `closed` before out of `entries` (under its lock), so a decision racing this one
        // always finds the call in one of them.
        let entry = {
            let mut entries = self.entries.lock();
            self.closed.lock().insert(&record);
            entries.remove(&record.id)
        };
        self.forget_expiry(&record);
        if entry.is_some() {
            self.budgets
                .release(&record, record.outcome == Outcome::Approved, now_ms());
        }
        let resolution = match record.outcome {
            Outcome::Approved => Resolution::Approved,
            _ => Resolution::Rejected {
                by: record
                    .decisions
                    .last()
                    .map(|d| d.by.clone())
                    .unwrap_or_default(),
                reason: record.reason.clone(),
            },
        };
        tracing::info!(call = %record.id, outcome = %record.outcome, "decided");
        if resolution == Resolution::Approved
            && record
                .hold
                .as_ref()
                .is_some_and(|h| h.mode == HoldMode::Retry)
        {
            let until = now_ms() + self.retry_ttl.as_millis() as u64;
            self.grants
                .lock()
                .insert(grant_key(&record), (record.clone(), until));
        }
        self.publish(ServerMsg::CallDecided {
            call: record.clone(),
        });
        if let Some(e) = entry {
            e.done.send((resolution, record));
        }
    }

    /// End a pending call without a decision (expired, cancelled, abandoned). Returns false when
    /// it was no longer pending (someone decided first, even if that decision is still being
    /// saved).
    pub async fn close(&self, id: &str, outcome: Outcome, why: Option<String>) -> bool {
        let (entry, record) = {
            let mut entries = self.entries.lock();
            // A decision being saved right now has already won.
            if entries
                .get(id)
                .is_none_or(|e| e.record.outcome != Outcome::Pending)
            {
                return false;
            }
            let Some(entry) = entries.remove(id) else {
                return false;
            };
            let mut record = (*entry.record).clone();
            record.outcome = outcome;
            record.timings.completed_ms = Some(now_ms());
            if why.is_some() {
                record.reason = why;
            }
            self.closed.lock().insert(&record);
            (entry, Arc::new(record))
        };
        self.forget_expiry(&record);
        self.budgets.release(&record, false, now_ms());
        if let Err(e) = self.recorder.commit(record.clone()).await {
            tracing::error!(call = %id, error = %e, "cannot record the end of a held call");
        }
        tracing::info!(call = %id, outcome = %outcome, "held call closed");
        let resolution = match outcome {
            Outcome::Expired => Resolution::Expired,
            Outcome::Abandoned => Resolution::Abandoned,
            _ => Resolution::Cancelled,
        };
        let call = record.clone();
        entry.done.send((resolution, record));
        self.publish(match outcome {
            Outcome::Expired => ServerMsg::CallExpired { call },
            Outcome::Abandoned => ServerMsg::CallAbandoned { call },
            _ => ServerMsg::CallCancelled { call },
        });
        true
    }

    /// The pending call a client's `notifications/cancelled` refers to.
    pub fn find_request(
        &self,
        client: &str,
        session: Option<&str>,
        request_id: &serde_json::Value,
    ) -> Option<Name> {
        self.entries
            .lock()
            .values()
            .find(|e| {
                *e.record.client == *client
                    && e.record.session.as_deref() == session
                    && &e.record.request_id == request_id
            })
            .map(|e| e.record.id.clone())
    }

    /// Consume an approved retry-mode call matching this one, if any is still valid, and
    /// record on it that it was used, so it is not let through again after a restart.
    pub async fn take_grant(&self, record: &CallRecord) -> Option<Name> {
        let mut original = {
            let mut grants = self.grants.lock();
            let now = now_ms();
            grants.retain(|_, (_, until)| *until > now);
            grants.remove(&grant_key(record)).map(|(r, _)| r)
        }
        .map(Arc::unwrap_or_clone)?;
        let id = original.id.clone();
        if let Some(h) = original.hold.as_mut() {
            h.retried_ms = Some(now_ms());
        }
        if let Err(e) = self.recorder.commit_quiet(original).await {
            tracing::error!(call = %id, error = %e, "cannot record that an approved retry was used");
        }
        Some(id)
    }

    /// After a restart: approved retry-mode calls not yet repeated are let through again,
    /// until `retry_ttl` after their approval.
    pub fn restore_grants(&self) -> anyhow::Result<usize> {
        let ttl = self.retry_ttl.as_millis() as u64;
        let backend = self.recorder.backend();
        let filter = tollgate_shared::audit::AuditFilter {
            status: Some(Outcome::Approved),
            since_ms: Some(now_ms().saturating_sub(ttl)),
            limit: Some(usize::MAX),
            ..Default::default()
        };
        let mut n = 0;
        for e in backend.audit_query(&filter)? {
            let Some(rec) = backend.call(&e.call_id)? else {
                continue;
            };
            let unused = rec
                .hold
                .as_ref()
                .is_some_and(|h| h.mode == HoldMode::Retry && h.retried_ms.is_none());
            if unused && rec.outcome == Outcome::Approved {
                let approved = rec.decisions.last().map_or(e.at_ms, |d| d.at_ms);
                self.grants
                    .lock()
                    .insert(grant_key(&rec), (Arc::new(rec), approved + ttl));
                n += 1;
            }
        }
        Ok(n)
    }

    /// A retry-mode call from this client with these arguments that is still pending.
    pub fn pending_retry(&self, record: &CallRecord) -> Option<Name> {
        let key = grant_key(record);
        self.entries
            .lock()
            .values()
            .find(|e| {
                e.record
                    .hold
                    .as_ref()
                    .is_some_and(|h| h.mode == HoldMode::Retry)
                    && grant_key(&e.record) == key
            })
            .map(|e| e.record.id.clone())
    }
}

fn grant_key(r: &CallRecord) -> GrantKey {
    GrantKey {
        client: r.client.clone(),
        server: r.server.clone(),
        tool: r.tool.clone(),
        args_hash: r.args_hash.clone(),
    }
}

/// A pending call for measurements (`tollgate-broker check-disk`) and tests.
pub fn sample_call(n: usize) -> CallRecord {
    let arguments = serde_json::json!({"query": "DELETE FROM orders WHERE id = 1", "n": n});
    let args_hash = tollgate_policy::fingerprint::args_hash(&arguments);
    CallRecord {
        id: uuid::Uuid::now_v7().to_string().into(),
        outcome: Outcome::Pending,
        rule: tollgate_shared::RuleRef {
            index: 1,
            name: "sample".into(),
        },
        reason: None,
        client: "agent".into(),
        server: "db".into(),
        tool: "execute_sql".into(),
        request_id: serde_json::json!(n),
        session: None,
        protocol_version: Some("2025-11-25".into()),
        fingerprint: tollgate_policy::fingerprint::exact("db", "execute_sql", &args_hash).into(),
        args_hash: args_hash.into(),
        arguments: arguments.into(),
        timings: tollgate_shared::Timings {
            received_ms: now_ms(),
            decided_ms: now_ms(),
            completed_ms: None,
        },
        error: None,
        policy_version: Name::default(),
        hold: Some(tollgate_shared::Hold {
            mode: HoldMode::Stream,
            expires_ms: now_ms() + 3_600_000,
            quorum: 1,
            approvers: Vec::new(),
            progress_token: None,
            meta: None,
            retried_ms: None,
            secrets_withheld: false,
        }),
        decisions: Vec::new(),
        findings: Vec::new(),
        shape: Default::default(),
        signals: Default::default(),
    }
}

/// The queue's timer: expires held calls when their time comes. Holds the queue weakly, so it
/// ends with it.
async fn expire_loop(queue: Weak<Queue>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = now_ms();
        let due = {
            let Some(q) = queue.upgrade() else { return };
            let mut ex = q.expiries.lock();
            let mut due = Vec::new();
            while ex.due.first().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, id)) = ex.due.pop_first() {
                    due.push(id);
                }
            }
            due
        };
        if !due.is_empty() {
            let Some(q) = queue.upgrade() else { return };
            // Closed concurrently, so calls that expire together share group commits.
            futures_util::stream::iter(due)
                .for_each_concurrent(256, |id| {
                    let q = &q;
                    async move {
                        // A decision being saved wins; if saving it fails the call is pending
                        // again and expires on a later look.
                        if !q.close(&id, Outcome::Expired, None).await && q.get(&id).is_some() {
                            q.expiries.lock().due.insert((now_ms() + 1000, id));
                        }
                    }
                })
                .await;
        }
        let next = {
            let Some(q) = queue.upgrade() else { return };
            q.expiries.lock().due.first().map(|(at, _)| *at)
        };
        match next {
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled_backend::SledBackend;
    use tollgate_shared::console::Role;

    fn who(name: &str) -> Identity {
        Identity {
            name: name.into(),
            role: Role::Approver,
            servers: None,
        }
    }

    async fn queue(dir: &std::path::Path) -> Arc<Queue> {
        let backend = Arc::new(SledBackend::open(dir).expect("open"));
        Queue::new(
            Recorder::start(backend).expect("recorder"),
            Duration::from_secs(60),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_decision_wins_over_expiry_and_later_decisions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path()).await;
        for round in 0..50 {
            let call = sample_call(round);
            let id = call.id.clone();
            let mut waiting = q.hold(call).await.expect("held");
            let target = Target::Ids {
                ids: vec![id.to_string()],
            };
            // Three racers on two worker threads, started in a different order each round.
            let (qa, qb, qc) = (q.clone(), q.clone(), q.clone());
            let (ta, tb, tc) = (target.clone(), target.clone(), id.clone());
            let approve =
                async move { qa.decide(&who("alice"), &ta, Verdict::Approve, None).await };
            let reject = async move { qb.decide(&who("bob"), &tb, Verdict::Reject, None).await };
            let expire = async move { qc.close(&tc, Outcome::Expired, None).await };
            let (decided, late, expired) = match round % 3 {
                0 => {
                    let (a, b, c) = (
                        tokio::spawn(approve),
                        tokio::spawn(reject),
                        tokio::spawn(expire),
                    );
                    (a.await, b.await, c.await)
                }
                1 => {
                    let (c, b, a) = (
                        tokio::spawn(expire),
                        tokio::spawn(reject),
                        tokio::spawn(approve),
                    );
                    (a.await, b.await, c.await)
                }
                _ => {
                    let (b, c, a) = (
                        tokio::spawn(reject),
                        tokio::spawn(expire),
                        tokio::spawn(approve),
                    );
                    (a.await, b.await, c.await)
                }
            };
            let (decided, late, expired) = (
                decided.expect("task"),
                late.expect("task"),
                expired.expect("task"),
            );
            let final_outcome = (&mut waiting.done).await.ok().map(|(_, r)| r.outcome);
            let winners =
                usize::from(decided[0].ok) + usize::from(expired) + usize::from(late[0].ok);
            assert_eq!(winners, 1, "round {round}: {decided:?} {expired} {late:?}");
            match final_outcome {
                Some(Outcome::Approved) => assert!(decided[0].ok),
                Some(Outcome::Expired) => assert!(expired),
                Some(Outcome::Rejected) => assert!(late[0].ok),
                other => panic!("round {round}: unexpected {other:?}"),
            }
            let carol = who("carol");
            let after = q.decide(&carol, &target, Verdict::Approve, None).await;
            assert!(after[0].message.starts_with("already "), "{after:?}");
            assert!(
                !after[0].message.starts_with("already pending"),
                "{after:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_timer_expires_calls_in_order_and_forgets_decided_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path()).await;
        let held = |after_ms: u64, n: usize| {
            let mut call = sample_call(n);
            if let Some(h) = call.hold.as_mut() {
                h.expires_ms = now_ms() + after_ms;
            }
            call
        };
        // The late one enters first; the timer must wake for the sooner ones that follow.
        let mut late = q.hold(held(60_000, 0)).await.expect("held");
        let mut soon = q.hold(held(300, 1)).await.expect("held");
        let decided = held(200, 2);
        let decided_id = decided.id.clone();
        q.hold(decided).await.expect("held");
        let out = q
            .decide(
                &who("alice"),
                &Target::Ids {
                    ids: vec![decided_id.to_string()],
                },
                Verdict::Approve,
                None,
            )
            .await;
        assert!(out[0].ok, "{out:?}");
        assert_eq!(
            q.expiries.lock().due.len(),
            2,
            "a decided call no longer expires"
        );
        let (expired, _) = tokio::time::timeout(Duration::from_secs(5), &mut soon.done)
            .await
            .expect("expired in time")
            .expect("resolved");
        assert_eq!(expired, Resolution::Expired);
        assert!(
            matches!(
                late.done.try_recv(),
                Err(oneshot::error::TryRecvError::Empty)
            ),
            "the later call is still pending"
        );
        assert_eq!(q.expiries.lock().due.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_continuation_runs_once_when_its_call_is_resolved_whenever_it_was_registered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = queue(dir.path()).await;
        let ran = Arc::new(Mutex::new(Vec::new()));
        let note = |ran: &Arc<Mutex<Vec<(Name, Resolution)>>>| {
            let ran = ran.clone();
            move |(r, rec): Resolved| ran.lock().push((rec.id.clone(), r))
        };
        let ids = |calls: &[&Waiting]| -> Vec<String> {
            calls.iter().map(|w| w.record.id.to_string()).collect()
        };
        let before = q.hold(sample_call(1)).await.expect("held");
        let after = q.hold(sample_call(2)).await.expect("held");
        let (before_id, after_id) = (before.record.id.clone(), after.record.id.clone());
        let target = Target::Ids {
            ids: ids(&[&before, &after]),
        };
        // Registered while pending: runs at the decision, not before.
        q.then(before, note(&ran));
        assert!(ran.lock().is_empty());
        let out = q
            .decide(&who("alice"), &target, Verdict::Reject, Some("no"))
            .await;
        assert!(out.iter().all(|r| r.ok), "{out:?}");
        // Registered after the decision: runs at once with the answer that was waiting.
        q.then(after, note(&ran));
        // Already approved (a call policy allowed, run as a task): at once too.
        let allowed = sample_call(3);
        let allowed_id = allowed.id.clone();
        q.then(Waiting::approved(allowed), note(&ran));
        let rejected = || Resolution::Rejected {
            by: "alice".into(),
            reason: Some("no".into()),
        };
        assert_eq!(
            *ran.lock(),
            vec![
                (before_id, rejected()),
                (after_id, rejected()),
                (allowed_id, Resolution::Approved)
            ]
        );
    }
}
