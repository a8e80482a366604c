//! The approval queue: held calls, their decisions, and the events consoles see.
//!
//! A held call is committed to the store (durably) before anyone hears of it, then broadcast as
//! `call_pending`. Every transition after that (approval counted, approved, rejected, expired,
//! cancelled, abandoned) is a store operation first (the store decides which of two racing
//! decisions wins); then the waiting client is woken and consoles get the event.
//! Consoles receive events through a bounded broadcast channel: one that falls behind misses
//! events and is sent a fresh snapshot instead, so a slow console never holds the broker up.
//!
//! With a store shared by several brokers, the queue also holds the calls whose clients wait on
//! other brokers ([`Queue::follow`]): consoles here see them and may decide them, the broker
//! holding the client forwards them.
//!
//! [`decide`] takes decisions from consoles, [`expiry`] ends calls nobody decided in time,
//! [`grants`] lets approved retry-mode calls through once, and [`temp_rules`] keeps the
//! temporary rules decisions install.

mod decide;
mod expiry;
mod grants;
mod sample;
pub mod signed;
pub mod temp_rules;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tollgate_policy::approval::Change;
use tollgate_policy::guards::budget::{Budgets, OverBudget};
use tollgate_shared::clock::now_ms;
use tollgate_shared::console::ServerMsg;
use tollgate_shared::sync::Mutex;
use tollgate_shared::{CallRecord, Name, Outcome};
use tollgate_store::{Backend, Remote, StoreError};

pub use decide::{BadDecision, Follow};
pub use grants::Taken;
pub use sample::sample_call;
use temp_rules::TempRules;

/// How a held call ended (what its waiting client should be told).
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Forward it.
    Approved,
    /// Refuse it, telling the client who rejected it and why.
    Rejected {
        /// Who rejected it.
        by: String,
        /// Their reason.
        reason: Option<String>,
    },
    /// Nobody decided in time.
    Expired,
    /// The client withdrew it.
    Cancelled,
    /// The client can no longer be answered (broker restart).
    Abandoned,
    /// The call was approved and the broker stopped before it finished forwarding it: it may
    /// or may not have run upstream, and it is never forwarded again.
    OutcomeUnknown,
}

/// A pending call. Its record is shared (with the driver that waits on it, its feed and the
/// store) rather than copied: a queue of many pending calls holds each once.
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
    /// Nobody here: the call's client waits on another broker sharing the store, which
    /// forwards or refuses it. This broker shows it to its consoles and may decide it.
    Elsewhere,
}

impl Done {
    fn send(self, resolved: Resolved) {
        match self {
            Done::Wait(tx) => {
                let _ = tx.send(resolved);
            }
            Done::Then(f) => f(resolved),
            Done::Elsewhere => {}
        }
    }
}

impl Entry {
    /// Whether this broker holds the call's client (and so counts it against its budgets,
    /// forwards it and grants its retry).
    fn local(&self) -> bool {
        !matches!(self.done, Done::Elsewhere)
    }
}

/// The held calls of this broker: who waits for each, the store they are decided in, the
/// budgets they count against, and the events consoles follow.
pub struct Queue {
    entries: Mutex<HashMap<Name, Entry>>,
    expiry: expiry::Expiry,
    grants: grants::Grants,
    store: Arc<dyn Backend>,
    events: broadcast::Sender<Arc<ServerMsg>>,
    budgets: Budgets,
    /// Temporary rules installed by decisions.
    pub temp: TempRules,
}

/// Why a call could not be held.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// A budget is exhausted: the call is refused, not queued.
    #[error("budget \"{}\": {}", .0.budget, .0.why)]
    OverBudget(OverBudget),
    /// The store could not write it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Events buffered per console before it counts as fallen behind.
pub const EVENT_BUFFER: usize = 4096;

/// How often a broker sharing its store reads the temporary rules again without being told.
const RULES_REREAD: Duration = Duration::from_secs(5);

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
    /// A queue over `store`, without budgets or saved temporary rules.
    pub fn new(store: Arc<dyn Backend>, retry_ttl: Duration) -> Arc<Queue> {
        Queue::with_guards(
            store,
            retry_ttl,
            Budgets::new(Vec::new()),
            TempRules::in_memory(),
        )
    }

    /// A queue over `store`, enforcing `budgets` and keeping `temp` rules.
    pub fn with_guards(
        store: Arc<dyn Backend>,
        retry_ttl: Duration,
        budgets: Budgets,
        temp: TempRules,
    ) -> Arc<Queue> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Arc::new(Queue {
            entries: Mutex::new(HashMap::new()),
            expiry: expiry::Expiry::default(),
            grants: grants::Grants::new(retry_ttl),
            store,
            events,
            budgets,
            temp,
        })
    }

    /// The budgets held calls count against (allowed calls are charged by the gateway).
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Where records go.
    pub fn store(&self) -> &Arc<dyn Backend> {
        &self.store
    }

    /// Listen to queue events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ServerMsg>> {
        self.events.subscribe()
    }

    /// Tell every console something that is not about one call (a configuration reload).
    pub fn announce(&self, msg: ServerMsg) {
        self.publish(msg);
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

    /// Whether `id` is pending with its client waiting on another broker sharing the store.
    pub fn held_elsewhere(&self, id: &str) -> bool {
        self.entries.lock().get(id).is_some_and(|e| !e.local())
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
        if let Err(e) = self.store.hold(record.clone()).await {
            self.budgets.release(&record, false, now_ms());
            return Err(HoldError::Store(e));
        }
        Ok(self.enter(record))
    }

    /// Put a call the store still holds into the queue (at start-up, the calls held when the
    /// broker last stopped, which count against budgets again without a check).
    pub fn admit(self: &Arc<Self>, record: Arc<CallRecord>) -> Waiting {
        self.budgets.adopt(&record, now_ms());
        self.enter(record)
    }

    /// Take over a call held on a broker that stopped for good (its entry here showed it as
    /// held elsewhere): this broker now holds its client and counts it against its budgets.
    /// Consoles already know it, so they are not told again.
    pub fn adopt(self: &Arc<Self>, record: Arc<CallRecord>) -> Waiting {
        let (tx, rx) = oneshot::channel();
        {
            let mut entries = self.entries.lock();
            if let Some(e) = entries.get_mut(&record.id)
                && !e.local()
            {
                e.record = record.clone();
                e.done = Done::Wait(tx);
                drop(entries);
                self.budgets.adopt(&record, now_ms());
                return Waiting { record, done: rx };
            }
        }
        self.admit(record)
    }

    fn enter(self: &Arc<Self>, record: Arc<CallRecord>) -> Waiting {
        let (tx, rx) = oneshot::channel();
        self.enter_with(record.clone(), Done::Wait(tx));
        Waiting { record, done: rx }
    }

    /// Add a pending call, tell consoles and start its expiry.
    fn enter_with(self: &Arc<Self>, record: Arc<CallRecord>, done: Done) {
        let id = record.id.clone();
        let expires = record.hold.as_ref().map(|h| h.expires_ms);
        self.entries.lock().insert(
            id.clone(),
            Entry {
                record: record.clone(),
                done,
            },
        );
        tracing::info!(call = %id, server = %record.server, tool = %record.tool, client = %record.client, "held for approval");
        self.publish(ServerMsg::CallPending {
            call: record.clone(),
        });
        // `expiry = "never"` is u64::MAX: such a call waits for a decision.
        if let Some(at) = expires.filter(|at| *at != u64::MAX) {
            self.expire_at(at, id);
        }
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

    /// Tell consoles the rules changed.
    pub fn rules_changed(&self) {
        self.publish(ServerMsg::Rules {
            req: None,
            rules: self.temp.list(now_ms()),
        });
    }

    /// Tell the world about a decision the store committed.
    fn settle(&self, record: Arc<CallRecord>, change: Change) {
        if change == Change::Counted {
            if let Some(e) = self.entries.lock().get_mut(&record.id) {
                e.record = record.clone();
            }
            self.publish(ServerMsg::CallApproval { call: record });
            return;
        }
        let entry = self.entries.lock().remove(&record.id);
        self.expiry.forget(&record);
        if entry.as_ref().is_some_and(Entry::local) {
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
        // The decision is part of the call's trace: agent, broker, approver, upstream.
        let trace = record.trace.as_deref().unwrap_or_default();
        let by = record
            .decisions
            .last()
            .map(|d| d.by.as_str())
            .unwrap_or_default();
        tracing::info!(call = %record.id, server = %record.server, tool = %record.tool, client = %record.client, outcome = %record.outcome, by, trace, "decided");
        // Every broker sharing the store keeps the grant: the client may repeat the call on
        // any of them, and the store's claim lets it through once.
        self.grants.decided(&record);
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
        let Ok(record) = self.store.close(Name::from(id), outcome, why).await else {
            return false;
        };
        self.closed(record);
        true
    }

    /// Tell the world about a close the store committed.
    fn closed(&self, record: Arc<CallRecord>) {
        let entry = self.entries.lock().remove(&record.id);
        self.expiry.forget(&record);
        if entry.as_ref().is_some_and(Entry::local) {
            self.budgets.release(&record, false, now_ms());
        }
        let outcome = record.outcome;
        tracing::info!(call = %record.id, outcome = %outcome, "held call closed");
        let resolution = match outcome {
            Outcome::Expired => Resolution::Expired,
            Outcome::Abandoned => Resolution::Abandoned,
            _ => Resolution::Cancelled,
        };
        let call = record.clone();
        if let Some(e) = entry {
            e.done.send((resolution, record));
        }
        self.publish(match outcome {
            Outcome::Expired => ServerMsg::CallExpired { call },
            Outcome::Abandoned => ServerMsg::CallAbandoned { call },
            _ => ServerMsg::CallCancelled { call },
        });
    }

    /// Follow the changes other brokers sharing the store make (when it is shared): their
    /// held calls join this queue (shown to consoles, decidable here, forwarded there), and
    /// their decisions on calls held here wake the waiting clients.
    pub fn follow(self: &Arc<Self>) {
        let Some(mut changes) = self.store.remote() else {
            return;
        };
        let queue = Arc::downgrade(self);
        if self.temp.is_shared() {
            // Notifications tell of every change; reading now and then also brings block
            // rules' hit counts, which change without one.
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RULES_REREAD);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(queue) = queue.upgrade() else { return };
                    queue.reread_rules().await;
                }
            });
        }
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let Some(queue) = queue.upgrade() else { return };
                queue.apply(change).await;
            }
        });
    }

    /// Read the shared temporary rules again, telling consoles if they changed.
    async fn reread_rules(&self) {
        match self.temp.refresh(now_ms()).await {
            Ok(true) => self.rules_changed(),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the temporary rules again; keeping those read before")
            }
        }
    }

    async fn apply(self: &Arc<Self>, change: Remote) {
        let known = |id: &Name| self.entries.lock().contains_key(id);
        match change {
            Remote::Held(record) => {
                if !known(&record.id) {
                    self.enter_with(record, Done::Elsewhere);
                }
            }
            // A change to a call this queue never showed is nobody's business here.
            Remote::Decided(d) if known(&d.record.id) => self.settle(d.record, d.change),
            Remote::Closed(record) if known(&record.id) => self.closed(record),
            Remote::Decided(_) | Remote::Closed(_) => {}
            Remote::Rules => self.reread_rules().await,
            Remote::Resync { others, pending } => {
                // Rules may have changed unheard too.
                self.reread_rules().await;
                let gone: Vec<Name> = self
                    .entries
                    .lock()
                    .keys()
                    .filter(|id| !pending.contains(*id))
                    .cloned()
                    .collect();
                for id in gone {
                    // Held but not pending when the store was read: ended while nobody heard,
                    // unless it was held after the read.
                    match self.store.call(&id).await {
                        Ok(Some(r)) if r.outcome != Outcome::Pending && known(&id) => {
                            let r = Arc::new(r);
                            match r.outcome {
                                Outcome::Approved | Outcome::Rejected => {
                                    self.settle(r, Change::Final)
                                }
                                _ => self.closed(r),
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(call = %id, error = %e, "cannot read a held call again after reconnecting to the store")
                        }
                    }
                }
                for record in others {
                    if !known(&record.id) {
                        self.enter_with(record, Done::Elsewhere);
                    }
                }
            }
        }
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
                e.local()
                    && *e.record.client == *client
                    && e.record.session.as_deref() == session
                    && &e.record.request_id == request_id
            })
            .map(|e| e.record.id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_policy::identity::Identity;
    use tollgate_shared::Verdict;
    use tollgate_shared::console::{Role, Target};
    use tollgate_store::memory::MemoryEngine;

    fn who(name: &str) -> Identity {
        Identity {
            name: name.into(),
            role: Role::Approver,
            servers: None,
            signing: Default::default(),
        }
    }

    async fn queue() -> Arc<Queue> {
        let store = tollgate_store::Store::open(Arc::new(MemoryEngine::new()))
            .await
            .expect("store");
        Queue::new(store, Duration::from_secs(60))
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_decision_wins_over_expiry_and_later_decisions() {
        let q = queue().await;
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
        let q = queue().await;
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
        assert_eq!(q.expiry.len(), 2, "a decided call no longer expires");
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
        assert_eq!(q.expiry.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_continuation_runs_once_when_its_call_is_resolved_whenever_it_was_registered() {
        let q = queue().await;
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
