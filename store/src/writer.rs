//! [`Store`]: the [`Backend`] of one machine, a group-commit writer over an [`Engine`].
//!
//! One task takes every queued operation in arrival order and turns them into one group:
//! writes of calls that are not held go in as they are; a hold enters the set of held calls; a
//! decision or a close is applied (by `tollgate_policy::approval`) to the held call as it
//! stands in that set, so of two decisions on one call the first to arrive wins and the
//! second is refused with who won. The group's audit entries are chained, the group is
//! committed to the engine (one sync), and only then is anyone answered. A group that cannot
//! be committed is taken back: its holds and decisions never happened, and their callers are
//! told. Its other writes (records and audit entries of calls already forwarded or refused,
//! closes, which stand, as an expiry or cancellation is not undone by a full disk) are kept and
//! go first into every later group, retried every [`RETRY_EVERY`] until one commits, so no
//! audit entry is lost while the broker runs; meanwhile [`Backend::health`] says the store is
//! failing, and the broker refuses to forward calls it could not record.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tollgate_shared::signing::Signed;

use tokio::sync::{mpsc, oneshot, watch};
use tollgate_policy::approval::{self, ClosedCall, Refused};
use tollgate_policy::identity::Identity;
use tollgate_shared::audit::{AuditEntry, AuditFilter};
use tollgate_shared::clock::now_ms;
use tollgate_shared::console::StoreFailing;
use tollgate_shared::sync::Mutex;
use tollgate_shared::{CallRecord, Name, Outcome, Verdict};

use crate::chain::{audit_entry, chain_hash};
use crate::{Backend, BoxFuture, DecideError, Decided, Engine, Mutation, StoreError, Writes};

/// The most operations one group carries.
const GROUP_MAX: usize = 16_384;

/// While writes fail, how often the writes kept are tried again without new ones arriving.
pub const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes kept for retrying past which the broker stops forwarding calls even when configured
/// to forward them while the store fails (so memory stays bounded and nothing is dropped).
pub const RETRY_MAX: usize = 50_000;

/// How many recently closed calls are remembered, so a late decision is told who decided and
/// when without a read of the engine (whose reads trail its commits by a moment). Only what
/// that answer needs is kept, not the record.
const CLOSED_KEPT: usize = 65_536;

type Ack<T> = oneshot::Sender<Result<T, StoreError>>;
type DecideAck<T> = oneshot::Sender<Result<T, DecideError>>;

enum Op {
    Write {
        record: Arc<CallRecord>,
        writes: Writes,
        ack: Option<Ack<()>>,
    },
    Hold {
        record: Arc<CallRecord>,
        ack: Ack<()>,
    },
    Decide {
        id: Name,
        who: Arc<Identity>,
        verdict: Verdict,
        reason: Option<String>,
        signed: Option<Signed>,
        ack: DecideAck<Decided>,
    },
    Close {
        id: Name,
        outcome: Outcome,
        why: Option<String>,
        ack: DecideAck<Arc<CallRecord>>,
    },
    Flush(oneshot::Sender<()>),
}

impl Op {
    /// Somebody waits for this operation's commit: it ends a linger.
    fn awaited(&self) -> bool {
        !matches!(self, Op::Write { ack: None, .. })
    }
}

/// Who to answer once a group is committed, and with what.
enum Answer {
    Written(Ack<()>),
    Decided(DecideAck<Decided>, Decided),
    Closed(DecideAck<Arc<CallRecord>>, Arc<CallRecord>),
    Refused(DecideAck<Decided>, DecideError),
    NotClosed(DecideAck<Arc<CallRecord>>, DecideError),
}

/// Calls that left the held set recently (see [`CLOSED_KEPT`]).
#[derive(Default)]
struct Closed {
    map: HashMap<Name, ClosedCall>,
    order: VecDeque<Name>,
}

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

/// The held calls as the store knows them: the state every transition is applied to.
#[derive(Default)]
struct Held {
    pending: HashMap<Name, Arc<CallRecord>>,
    closed: Closed,
}

impl Held {
    /// The call as it stands, if it is held; else how it ended (when remembered).
    fn current(&self, id: &Name) -> Result<&Arc<CallRecord>, DecideError> {
        self.pending
            .get(id)
            .ok_or_else(|| match self.closed.map.get(id) {
                Some(c) => Refused::Closed(c.clone()).into(),
                None => DecideError::NotFound,
            })
    }
}

/// A held call's state before a transition in the group, to restore if the group fails.
struct Undo {
    id: Name,
    before: Option<Arc<CallRecord>>,
    closed: bool,
}

/// The store of one machine: group commit over a local [`Engine`].
pub struct Store {
    tx: mpsc::Sender<Op>,
    engine: Arc<dyn Engine>,
    held: Arc<Mutex<Held>>,
    health: watch::Receiver<Option<StoreFailing>>,
    /// Approved calls that had not finished when the store was opened.
    unfinished: Vec<Arc<CallRecord>>,
}

impl Store {
    /// Open the store over `engine`: read back the calls still held and the audit chain's
    /// head, and start the writer task.
    pub async fn open(engine: Arc<dyn Engine>) -> Result<Arc<Store>, StoreError> {
        Store::open_observed(engine, None, crate::DEFAULT_LINGER).await
    }

    /// [`Store::open`], telling `observer` of every committed group and write; writes nobody
    /// waits for wait up to `linger` to share a sync (see `gather`).
    pub async fn open_observed(
        engine: Arc<dyn Engine>,
        observer: Option<Arc<dyn crate::Observer>>,
        linger: std::time::Duration,
    ) -> Result<Arc<Store>, StoreError> {
        let reader = engine.clone();
        let (open, (seq, head)) = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((reader.open()?, reader.audit_head()?))
        })
        .await
        .map_err(|_| StoreError::WriterStopped)??;
        let (pending, unfinished): (Vec<_>, Vec<_>) = open
            .into_iter()
            .map(Arc::new)
            .partition(|r| r.outcome == Outcome::Pending);
        let held = Held {
            pending: pending.into_iter().map(|r| (r.id.clone(), r)).collect(),
            closed: Closed::default(),
        };
        let held = Arc::new(Mutex::new(held));
        let (tx, rx) = mpsc::channel::<Op>(GROUP_MAX * 4);
        let (health_tx, health) = watch::channel(None);
        let writer = Writer {
            engine: engine.clone(),
            held: held.clone(),
            seq,
            head,
            retry: Vec::new(),
            health: health_tx,
            observer,
            linger,
        };
        tokio::spawn(writer.run(rx));
        Ok(Arc::new(Store {
            tx,
            engine,
            held,
            health,
            unfinished,
        }))
    }

    /// The engine, for reads outside a runtime and for its own maintenance.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    async fn send(&self, op: Op) -> bool {
        let sent = self.tx.send(op).await.is_ok();
        if !sent {
            tracing::error!("the store writer has stopped; a write was not made");
        }
        sent
    }

    async fn ask<T>(&self, op: impl FnOnce(Ack<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        if !self.send(op(tx)).await {
            return Err(StoreError::WriterStopped);
        }
        rx.await.unwrap_or(Err(StoreError::WriterStopped))
    }

    async fn ask_decided<T>(&self, op: impl FnOnce(DecideAck<T>) -> Op) -> Result<T, DecideError> {
        let (tx, rx) = oneshot::channel();
        if !self.send(op(tx)).await {
            return Err(DecideError::Store(StoreError::WriterStopped));
        }
        rx.await
            .unwrap_or(Err(DecideError::Store(StoreError::WriterStopped)))
    }
}

impl Backend for Store {
    fn hold(&self, record: Arc<CallRecord>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.ask(|ack| Op::Hold { record, ack }))
    }

    fn decide(
        &self,
        id: Name,
        who: Arc<Identity>,
        verdict: Verdict,
        reason: Option<String>,
        signed: Option<Signed>,
    ) -> BoxFuture<'_, Result<Decided, DecideError>> {
        Box::pin(async move {
            let asked = id.clone();
            match self
                .ask_decided(|ack| Op::Decide {
                    id,
                    who,
                    verdict,
                    reason,
                    signed,
                    ack,
                })
                .await
            {
                // Closed too long ago to be remembered: the engine has it, or nobody does.
                Err(DecideError::NotFound) => match self.engine.call(&asked) {
                    Ok(Some(rec)) => Err(Refused::Closed(ClosedCall::of(&rec)).into()),
                    _ => Err(DecideError::NotFound),
                },
                other => other,
            }
        })
    }

    fn close(
        &self,
        id: Name,
        outcome: Outcome,
        why: Option<String>,
    ) -> BoxFuture<'_, Result<Arc<CallRecord>, DecideError>> {
        Box::pin(self.ask_decided(move |ack| Op::Close {
            id,
            outcome,
            why,
            ack,
        }))
    }

    fn write(&self, record: Arc<CallRecord>, writes: Writes) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.send(Op::Write {
                record,
                writes,
                ack: None,
            })
            .await;
        })
    }

    fn write_durably(
        &self,
        record: Arc<CallRecord>,
        writes: Writes,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.ask(move |ack| Op::Write {
            record,
            writes,
            ack: Some(ack),
        }))
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.send(Op::Flush(tx)).await {
                let _ = rx.await;
            }
        })
    }

    fn pending(&self) -> Vec<Arc<CallRecord>> {
        let mut out: Vec<_> = self.held.lock().pending.values().cloned().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn unfinished(&self) -> Vec<Arc<CallRecord>> {
        self.unfinished.clone()
    }

    fn health(&self) -> watch::Receiver<Option<StoreFailing>> {
        self.health.clone()
    }

    fn call(&self, id: &str) -> BoxFuture<'_, Result<Option<CallRecord>, StoreError>> {
        let (engine, id) = (self.engine.clone(), id.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || engine.call(&id))
                .await
                .map_err(|_| StoreError::WriterStopped)?
        })
    }

    fn audit_query(
        &self,
        filter: AuditFilter,
    ) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        let engine = self.engine.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || engine.audit_query(&filter))
                .await
                .map_err(|_| StoreError::WriterStopped)?
        })
    }

    fn audit_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        let engine = self.engine.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || engine.audit_after(after, limit))
                .await
                .map_err(|_| StoreError::WriterStopped)?
        })
    }
}

/// The writer task's own state.
struct Writer {
    engine: Arc<dyn Engine>,
    held: Arc<Mutex<Held>>,
    /// Sequence number and hash of the last audit entry committed.
    seq: u64,
    head: String,
    /// Writes of groups that could not be committed, oldest first, with when they were made.
    retry: Vec<Kept>,
    health: watch::Sender<Option<StoreFailing>>,
    observer: Option<Arc<dyn crate::Observer>>,
    /// How long writes nobody waits for wait for more before they are committed.
    linger: std::time::Duration,
}

/// A write kept for the next group: the record, what to write of it, and when it was made.
type Kept = (Arc<CallRecord>, Writes, u64);

/// A group being built.
#[derive(Default)]
struct Group {
    batch: Vec<Mutation>,
    answers: Vec<Answer>,
    flushes: Vec<oneshot::Sender<()>>,
    undo: Vec<Undo>,
    /// The writes to keep if the group cannot be committed.
    keep: Vec<Kept>,
    /// What to tell the observer once the group is committed: each record written, with its
    /// audit entry's outcome and time.
    seen: Vec<(Arc<CallRecord>, Option<Outcome>, u64)>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut ops = Vec::new();
        loop {
            if self.retry.is_empty() {
                if crate::gather::gather(&mut rx, &mut ops, GROUP_MAX, self.linger, Op::awaited)
                    .await
                    == 0
                {
                    break;
                }
            } else if let Ok(0) =
                tokio::time::timeout(RETRY_EVERY, rx.recv_many(&mut ops, GROUP_MAX)).await
            {
                // Stopping: one last try for what is kept.
                if self.commit(&mut ops).await {
                    break;
                }
                tracing::error!(
                    writes = self.retry.len(),
                    "the store writer stops with writes it could not make; they are lost"
                );
                break;
            }
            self.commit(&mut ops).await;
        }
    }

    /// Build a group of `ops` (after the writes kept from failed groups), commit it and answer
    /// everyone; returns whether it was committed.
    async fn commit(&mut self, ops: &mut Vec<Op>) -> bool {
        let (seq0, head0) = (self.seq, self.head.clone());
        let group = self.build(ops);
        let Group {
            batch,
            answers,
            flushes,
            undo,
            keep,
            seen,
        } = group;
        let writes = batch.len();
        let started = std::time::Instant::now();
        let result = if batch.is_empty() {
            Ok(())
        } else {
            let engine = self.engine.clone();
            tokio::task::spawn_blocking(move || engine.commit(batch))
                .await
                .unwrap_or(Err(StoreError::WriterStopped))
        };
        if let (Ok(()), Some(o)) = (&result, &self.observer)
            && writes > 0
        {
            o.committed(writes, started.elapsed());
            for (record, audited, at_ms) in &seen {
                o.written(record, *audited, *at_ms);
            }
        }
        self.health_after(&result, keep);
        if result.is_err() {
            (self.seq, self.head) = (seq0, head0);
            let mut held = self.held.lock();
            for u in undo.into_iter().rev() {
                if u.closed {
                    held.closed.map.remove(&u.id);
                }
                match u.before {
                    Some(r) => held.pending.insert(u.id, r),
                    None => held.pending.remove(&u.id),
                };
            }
        }
        for a in answers {
            answer(a, &result);
        }
        for f in flushes {
            let _ = f.send(());
        }
        result.is_ok()
    }

    /// Keep the writes of a failed group for the next one, and say whether the store fails.
    fn health_after(&mut self, result: &Result<(), StoreError>, keep: Vec<Kept>) {
        if result.is_err() {
            self.retry = keep;
        }
        crate::report_health(&self.health, result, self.retry.len());
    }

    /// Apply a run of operations to the held set and turn them into one group of mutations.
    fn build(&mut self, ops: &mut Vec<Op>) -> Group {
        let at_ms = now_ms();
        let mut g = Group {
            batch: Vec::with_capacity(ops.len() * 2),
            ..Group::default()
        };
        for (record, writes, made) in std::mem::take(&mut self.retry) {
            self.keep(&mut g, record, writes, made);
        }
        let held = self.held.clone();
        let mut held = held.lock();
        for op in ops.drain(..) {
            match op {
                Op::Write {
                    record,
                    writes,
                    ack,
                } => {
                    self.keep(&mut g, record, writes, at_ms);
                    g.answers.extend(ack.map(Answer::Written));
                }
                Op::Hold { record, ack } => {
                    let before = held.pending.insert(record.id.clone(), record.clone());
                    g.undo.push(Undo {
                        id: record.id.clone(),
                        before,
                        closed: false,
                    });
                    self.push(&mut g, record, Writes::Both, at_ms);
                    g.answers.push(Answer::Written(ack));
                }
                Op::Decide {
                    id,
                    who,
                    verdict,
                    reason,
                    signed,
                    ack,
                } => {
                    let current = match held.current(&id) {
                        Ok(c) => c,
                        Err(gone) => {
                            g.answers.push(Answer::Refused(ack, gone));
                            continue;
                        }
                    };
                    match approval::decide(current, &who, verdict, reason.as_deref(), signed, at_ms)
                    {
                        Ok((next, change)) => {
                            let next = Arc::new(next);
                            let closes = next.outcome != Outcome::Pending;
                            let before = if closes {
                                held.closed.insert(&next);
                                held.pending.remove(&id)
                            } else {
                                held.pending.insert(id.clone(), next.clone())
                            };
                            g.undo.push(Undo {
                                id,
                                before,
                                closed: closes,
                            });
                            self.push(&mut g, next.clone(), Writes::Both, at_ms);
                            g.answers.push(Answer::Decided(
                                ack,
                                Decided {
                                    record: next,
                                    change,
                                },
                            ));
                        }
                        Err(refused) => g.answers.push(Answer::Refused(ack, refused.into())),
                    }
                }
                Op::Close {
                    id,
                    outcome,
                    why,
                    ack,
                } => {
                    let current = match held.current(&id) {
                        Ok(c) => c,
                        Err(gone) => {
                            g.answers.push(Answer::NotClosed(ack, gone));
                            continue;
                        }
                    };
                    match approval::close(current, outcome, why, at_ms) {
                        Ok(next) => {
                            let next = Arc::new(next);
                            held.closed.insert(&next);
                            held.pending.remove(&id);
                            self.keep(&mut g, next.clone(), Writes::Both, at_ms);
                            g.answers.push(Answer::Closed(ack, next));
                        }
                        Err(refused) => g.answers.push(Answer::NotClosed(ack, refused.into())),
                    }
                }
                Op::Flush(f) => g.flushes.push(f),
            }
        }
        g
    }

    /// Add a write that stands whether or not this group commits: kept for the next group if
    /// it does not. Its audit entry says when it was made, not when it was written.
    fn keep(&mut self, g: &mut Group, record: Arc<CallRecord>, writes: Writes, made: u64) {
        self.push(g, record.clone(), writes, made);
        g.keep.push((record, writes, made));
    }

    /// Add a record's writes to the group, chaining its audit entry.
    fn push(&mut self, g: &mut Group, record: Arc<CallRecord>, writes: Writes, at_ms: u64) {
        let entry = matches!(writes, Writes::Audit | Writes::Both).then(|| {
            let mut e = audit_entry(&record, at_ms);
            self.seq += 1;
            e.seq = self.seq;
            e.prev_hash = std::mem::take(&mut self.head);
            e.hash = chain_hash(&e);
            self.head = e.hash.clone();
            e
        });
        if self.observer.is_some() {
            g.seen
                .push((record.clone(), entry.as_ref().map(|e| e.outcome), at_ms));
        }
        if matches!(writes, Writes::Record | Writes::Both) {
            g.batch.push(Mutation::Call(record));
        }
        if let Some(e) = entry {
            g.batch.push(Mutation::Audit(Box::new(e)));
        }
    }
}

fn answer(a: Answer, result: &Result<(), StoreError>) {
    match a {
        Answer::Written(tx) => {
            let _ = tx.send(result.clone());
        }
        Answer::Decided(tx, d) => {
            let _ = tx.send(match result {
                Ok(()) => Ok(d),
                Err(e) => Err(DecideError::Store(e.clone())),
            });
        }
        // A close stands even when its write failed: the write is kept and retried.
        Answer::Closed(tx, record) => {
            let _ = tx.send(Ok(record));
        }
        Answer::Refused(tx, e) => {
            let _ = tx.send(Err(e));
        }
        Answer::NotClosed(tx, e) => {
            let _ = tx.send(Err(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::verify;
    use crate::memory::MemoryEngine;
    use tollgate_policy::approval::Change;
    use tollgate_shared::console::{Refusal, Role};

    fn held(n: u64, quorum: u32) -> Arc<CallRecord> {
        let mut r = crate::testing::record(n, Outcome::Pending);
        if let Some(h) = r.hold.as_mut() {
            h.quorum = quorum;
        }
        r.client = "agent".into();
        r.server = "db".into();
        r.tool = "drop".into();
        Arc::new(r)
    }

    fn who(name: &str) -> Arc<Identity> {
        Arc::new(Identity {
            name: name.into(),
            role: Role::Approver,
            servers: None,
            signing: Default::default(),
        })
    }

    async fn store() -> (Arc<MemoryEngine>, Arc<Store>) {
        let engine = Arc::new(MemoryEngine::new());
        let store = Store::open(engine.clone()).await.expect("open");
        (engine, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_racing_decisions_and_an_expiry_exactly_one_wins_and_the_rest_hear_who() {
        let (engine, store) = store().await;
        for round in 0..50 {
            let call = held(round, 1);
            let id = call.id.clone();
            store.hold(call).await.expect("held");
            let (a, b, c) = (store.clone(), store.clone(), store.clone());
            let (ia, ib, ic) = (id.clone(), id.clone(), id.clone());
            let approve = tokio::spawn(async move {
                a.decide(ia, who("alice"), Verdict::Approve, None, None)
                    .await
            });
            let reject = tokio::spawn(async move {
                b.decide(ib, who("bob"), Verdict::Reject, Some("no".into()), None)
                    .await
            });
            let expire = tokio::spawn(async move { c.close(ic, Outcome::Expired, None).await });
            let (approve, reject, expire) = (
                approve.await.expect("task"),
                reject.await.expect("task"),
                expire.await.expect("task"),
            );
            let won = [approve.is_ok(), reject.is_ok(), expire.is_ok()];
            assert_eq!(won.iter().filter(|w| **w).count(), 1, "round {round}");
            let stored = engine.call(&id).expect("read").expect("stored");
            let losers: Vec<DecideError> = [approve.err(), reject.err(), expire.err()]
                .into_iter()
                .flatten()
                .collect();
            for e in &losers {
                assert_eq!(e.refusal(), Refusal::AlreadyClosed, "{e}");
                assert!(
                    e.to_string()
                        .starts_with(&format!("already {}", stored.outcome)),
                    "{e} vs {}",
                    stored.outcome
                );
            }
            let late = store
                .decide(id, who("carol"), Verdict::Approve, None, None)
                .await
                .expect_err("closed");
            assert_eq!(late.refusal(), Refusal::AlreadyClosed);
        }
        assert!(store.pending().is_empty());
        assert_eq!(verify(&*engine, None, None).expect("chain").entries, 100);
    }

    #[tokio::test]
    async fn a_quorum_counts_distinct_approvers_and_refuses_a_second_vote() {
        let (_, store) = store().await;
        let call = held(1, 2);
        let id = call.id.clone();
        store.hold(call).await.expect("held");
        let first = store
            .decide(id.clone(), who("alice"), Verdict::Approve, None, None)
            .await
            .expect("counted");
        assert_eq!(first.change, Change::Counted);
        assert_eq!(
            store.pending()[0].decisions.len(),
            1,
            "the store keeps the vote"
        );
        let again = store
            .decide(id.clone(), who("alice"), Verdict::Approve, None, None)
            .await
            .expect_err("twice");
        assert_eq!(again.refusal(), Refusal::NotAllowed);
        let own = store
            .decide(id.clone(), who("agent"), Verdict::Approve, None, None)
            .await
            .expect_err("own call");
        assert!(
            own.to_string()
                .contains("nobody may approve their own call")
        );
        let second = store
            .decide(id, who("bob"), Verdict::Approve, None, None)
            .await
            .expect("final");
        assert_eq!(
            (second.change, second.record.outcome),
            (Change::Final, Outcome::Approved)
        );
        assert!(store.pending().is_empty());
    }

    #[tokio::test]
    async fn a_decision_the_store_cannot_save_is_not_applied() {
        let (engine, store) = store().await;
        let call = held(1, 1);
        let id = call.id.clone();
        store.hold(call).await.expect("held");
        engine.fail_commits(true);
        let failed = store
            .decide(id.clone(), who("alice"), Verdict::Approve, None, None)
            .await
            .expect_err("disk full");
        assert_eq!(failed.refusal(), Refusal::StoreFailed);
        assert!(
            failed
                .to_string()
                .starts_with("the decision could not be saved, so it was not applied"),
            "{failed}"
        );
        assert_eq!(store.pending().len(), 1, "still held");
        let not_held = held(2, 1);
        assert!(store.hold(not_held.clone()).await.is_err());
        assert_eq!(store.pending().len(), 1, "a failed hold is not held");
        engine.fail_commits(false);
        store
            .decide(id.clone(), who("bob"), Verdict::Reject, None, None)
            .await
            .expect("decided once the disk has room");
        let stored = engine.call(&id).expect("read").expect("stored");
        assert_eq!(stored.decisions.len(), 1, "only bob's decision was applied");
        assert_eq!(verify(&*engine, None, None).expect("chain").entries, 2);
    }

    #[tokio::test]
    async fn unknown_ids_are_not_found_and_old_ones_are_read_back_from_the_engine() {
        let (engine, store) = store().await;
        let missing = store
            .decide("nope".into(), who("alice"), Verdict::Approve, None, None)
            .await
            .expect_err("missing");
        assert_eq!(missing.refusal(), Refusal::NotFound);
        // Decided by an earlier broker process: only the engine knows it.
        let mut old = (*held(1, 1)).clone();
        old.outcome = Outcome::Rejected;
        old.decisions.push(tollgate_shared::Decision {
            by: "bob".into(),
            verdict: Verdict::Reject,
            reason: None,
            at_ms: 1_000,
            signed: None,
        });
        engine
            .commit(vec![Mutation::Call(Arc::new(old.clone()))])
            .expect("commit");
        let late = store
            .decide(old.id.clone(), who("alice"), Verdict::Approve, None, None)
            .await
            .expect_err("closed");
        assert_eq!(
            late.to_string(),
            "already rejected by bob at 1970-01-01T00:00:01Z"
        );
    }

    #[tokio::test]
    async fn calls_held_before_a_restart_are_held_again() {
        let engine = Arc::new(MemoryEngine::new());
        let store = Store::open(engine.clone()).await.expect("open");
        let (a, b) = (held(1, 1), held(2, 1));
        store.hold(a.clone()).await.expect("held");
        store.hold(b.clone()).await.expect("held");
        store
            .close(a.id.clone(), Outcome::Cancelled, Some("gone".into()))
            .await
            .expect("closed");
        let reopened = Store::open(engine.clone()).await.expect("reopen");
        let pending = reopened.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, b.id);
        reopened
            .decide(b.id.clone(), who("alice"), Verdict::Approve, None, None)
            .await
            .expect("decided after the restart");
    }

    #[tokio::test]
    async fn an_approved_call_that_never_finished_is_reported_after_a_restart() {
        let engine = Arc::new(MemoryEngine::new());
        let store = Store::open(engine.clone()).await.expect("open");
        let (ran, cut) = (held(1, 1), held(2, 1));
        for c in [&ran, &cut] {
            store.hold(c.clone()).await.expect("held");
            store
                .decide(c.id.clone(), who("alice"), Verdict::Approve, None, None)
                .await
                .expect("approved");
        }
        let mut done = store.call(&ran.id).await.expect("read").expect("stored");
        done.timings.completed_ms = Some(5);
        store
            .write_durably(Arc::new(done), Writes::Record)
            .await
            .expect("completed");
        assert!(
            store.unfinished().is_empty(),
            "nothing unfinished at the first open"
        );
        let reopened = Store::open(engine.clone()).await.expect("reopen");
        assert!(reopened.pending().is_empty());
        let unfinished = reopened.unfinished();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].id, cut.id);
        assert_eq!(unfinished[0].outcome, Outcome::Approved);
        let mut closed = (*unfinished[0]).clone();
        closed.outcome = Outcome::Abandoned;
        reopened
            .write_durably(Arc::new(closed), Writes::Both)
            .await
            .expect("closed");
        let again = Store::open(engine).await.expect("reopen");
        assert!(again.unfinished().is_empty(), "closed once, reported once");
    }

    #[tokio::test]
    async fn writes_that_fail_are_kept_and_retried_and_the_failure_is_visible() {
        let (engine, store) = store().await;
        let health = store.health();
        engine.fail_commits(true);
        let mut allowed = (*held(1, 1)).clone();
        allowed.outcome = Outcome::Allowed;
        allowed.hold = None;
        store.write(Arc::new(allowed.clone()), Writes::Audit).await;
        store.flush().await;
        let failing = health.borrow().clone().expect("failing");
        assert_eq!(failing.waiting, 1);
        assert!(
            failing.to_string().contains("cannot write since"),
            "{failing}"
        );
        // The next group that commits carries the kept write first.
        let call = held(2, 1);
        engine.fail_commits(false);
        store.hold(call.clone()).await.expect("held");
        assert!(health.borrow().is_none(), "writing again");
        // A held call closed while the disk is full stays closed; its write waits.
        engine.fail_commits(true);
        store
            .close(call.id.clone(), Outcome::Expired, None)
            .await
            .expect("a close stands");
        store.flush().await;
        assert_eq!(health.borrow().as_ref().map(|f| f.waiting), Some(1));
        assert!(store.pending().is_empty());
        // The disk has room again: the kept writes land on the writer's own retry.
        engine.fail_commits(false);
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut h = store.health();
            while h.borrow_and_update().is_some() {
                h.changed().await.expect("writer runs");
            }
        })
        .await
        .expect("recovered without new writes");
        let trail = engine.audit_query(&AuditFilter::default()).expect("audit");
        let outcomes: Vec<_> = trail
            .iter()
            .map(|e| (e.call_id.clone(), e.outcome))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (allowed.id.to_string(), Outcome::Allowed),
                (call.id.to_string(), Outcome::Pending),
                (call.id.to_string(), Outcome::Expired),
            ]
        );
        assert_eq!(verify(&*engine, None, None).expect("chain").entries, 3);
        let closed = engine.call(&call.id).expect("read").expect("stored");
        assert_eq!(closed.outcome, Outcome::Expired);
    }
}
