//! The embedded store: call records, the pending queue and the audit chain.
//!
//! The rest of the broker talks to a [`Backend`] through a [`Recorder`]: one writer task that
//! takes whatever writes have queued up, chains the audit entries among them, and commits them
//! as one group, so a burst of thousands of held calls costs one disk sync rather than
//! thousands. A caller that must not go on before its write is durable (holding a call,
//! deciding one) awaits [`Recorder::commit`]; one that only records (an allowed call) uses
//! [`Recorder::put`] and lets the next group carry it. [`sled_backend`] is the backend in use;
//! the trait is what a shared backend (PostgreSQL) would implement.

pub mod journal;
pub mod sled_backend;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tollgate_shared::audit::{AuditEntry, AuditFilter};
use tollgate_shared::{CallRecord, Outcome, Verdict};

use tollgate_policy::fingerprint;

/// One change to the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "m", rename_all = "snake_case")]
pub enum Mutation {
    /// Insert or replace a call record (and keep the pending index in step).
    Call(Arc<CallRecord>),
    /// Append an audit entry (already chained).
    Audit(Box<AuditEntry>),
}

/// What the audit chain looks like when verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub entries: u64,
    /// Hash of the last entry.
    pub head: String,
}

/// A durable home for records; implementations must make `commit` survive power loss.
pub trait Backend: Send + Sync + 'static {
    /// Apply a group of mutations durably, in order, all or nothing.
    fn commit(&self, batch: Vec<Mutation>) -> anyhow::Result<()>;
    /// One call record.
    fn call(&self, id: &str) -> anyhow::Result<Option<CallRecord>>;
    /// Every call still pending, oldest first.
    fn pending(&self) -> anyhow::Result<Vec<CallRecord>>;
    /// Sequence number and hash of the last audit entry (0 and the genesis hash when empty).
    fn audit_head(&self) -> anyhow::Result<(u64, String)>;
    /// Audit entries matching a filter, oldest first (the newest `limit` of them).
    fn audit_query(&self, filter: &AuditFilter) -> anyhow::Result<Vec<AuditEntry>>;
    /// Visit every audit entry in chain order, as stored; stop when `visit` returns false.
    fn audit_scan(&self, visit: &mut dyn FnMut(AuditEntry) -> bool) -> anyhow::Result<()>;
}

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of an entry: SHA-256 over the previous hash, a newline and the entry's JSON with
/// `hash` empty.
pub fn chain_hash(entry: &AuditEntry) -> String {
    // The writer hashes entries before their hash is set; only a verifier reading stored
    // entries needs a copy with it blanked.
    let json = if entry.hash.is_empty() {
        serde_json::to_vec(entry)
    } else {
        let mut e = entry.clone();
        e.hash = String::new();
        serde_json::to_vec(&e)
    }
    .unwrap_or_default();
    let mut bytes = Vec::with_capacity(json.len() + 65);
    bytes.extend_from_slice(entry.prev_hash.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(&json);
    fingerprint::sha256_hex(&bytes)
}

/// Check the whole chain: sequence without gaps, each `prev_hash` the hash before it, each
/// `hash` recomputed. The error names the first entry that fails and why.
///
/// A chain cut short at its end is still a valid chain; to catch that, pass an `anchor` (a
/// sequence number and hash printed by an earlier verify, kept somewhere else) and the chain
/// must still contain that entry with that hash.
pub fn verify(backend: &dyn Backend, anchor: Option<(u64, &str)>) -> anyhow::Result<Verified> {
    let mut expected_seq = 1;
    let mut prev = GENESIS.to_string();
    let mut problem = None;
    backend.audit_scan(&mut |e| {
        let why = if e.seq != expected_seq {
            Some(format!(
                "entry {} follows entry {}: an entry was removed or reordered",
                e.seq,
                expected_seq - 1
            ))
        } else if e.prev_hash != prev {
            Some(format!(
                "entry {} does not chain to the entry before it: an entry was removed, reordered or edited",
                e.seq
            ))
        } else if chain_hash(&e) != e.hash {
            Some(format!(
                "entry {} (call {}) was edited after it was written: its hash does not match its content",
                e.seq, e.call_id
            ))
        } else {
            None
        };
        if why.is_some() {
            problem = why;
            return false;
        }
        prev = e.hash.clone();
        expected_seq += 1;
        true
    })?;
    if let Some(why) = problem {
        anyhow::bail!("audit chain broken: {why}");
    }
    if let Some((seq, hash)) = anchor {
        let mut found = None;
        backend.audit_scan(&mut |e| {
            if e.seq == seq {
                found = Some(e.hash);
                return false;
            }
            true
        })?;
        match found {
            Some(h) if h == hash => {}
            Some(_) => {
                anyhow::bail!("audit chain broken: entry {seq} no longer has the anchored hash")
            }
            None => anyhow::bail!(
                "audit chain broken: the anchored entry {seq} is gone; the chain ends at entry {}: entries were removed from the end",
                expected_seq - 1
            ),
        }
    }
    Ok(Verified {
        entries: expected_seq - 1,
        head: prev,
    })
}

/// Build the audit entry for a record's current outcome (hashes filled in by the writer).
pub fn audit_entry(record: &CallRecord, at_ms: u64) -> AuditEntry {
    // Allowed and blocked calls carry a decision when a temporary rule someone installed
    // answered them.
    let deciding = match record.outcome {
        Outcome::Approved | Outcome::Allowed => Some(Verdict::Approve),
        Outcome::Rejected | Outcome::Blocked => Some(Verdict::Reject),
        _ => None,
    };
    let approvers = record
        .decisions
        .iter()
        .filter(|d| Some(d.verdict) == deciding)
        .map(|d| d.by.clone())
        .collect();
    AuditEntry {
        seq: 0,
        at_ms,
        call_id: record.id.to_string(),
        outcome: record.outcome,
        client: record.client.to_string(),
        server: record.server.to_string(),
        tool: record.tool.to_string(),
        request_id: record.request_id.clone(),
        rule: record.rule.clone(),
        reason: record.reason.clone(),
        args_hash: record.args_hash.to_string(),
        approvers,
        error: record.error.clone(),
        prev_hash: String::new(),
        hash: String::new(),
    }
}

enum Op {
    Put {
        record: Arc<CallRecord>,
        /// Write the call record.
        call: bool,
        /// Append an audit entry for its outcome.
        audit: bool,
        ack: Option<oneshot::Sender<Result<(), String>>>,
    },
    Flush(oneshot::Sender<()>),
}

/// Handle for queueing writes; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Op>,
    backend: Arc<dyn Backend>,
}

/// The most writes one group carries.
const GROUP_MAX: usize = 16_384;

impl Recorder {
    /// Start the writer task for `backend`.
    pub fn start(backend: Arc<dyn Backend>) -> anyhow::Result<Recorder> {
        let (mut seq, mut head) = backend
            .audit_head()
            .context("cannot read the audit chain's head")?;
        let (tx, mut rx) = mpsc::channel::<Op>(GROUP_MAX * 4);
        let writer = backend.clone();
        tokio::spawn(async move {
            let mut ops = Vec::new();
            while rx.recv_many(&mut ops, GROUP_MAX).await > 0 {
                let mut batch = Vec::with_capacity(ops.len() * 2);
                let mut acks = Vec::new();
                let mut flushes = Vec::new();
                let (seq0, head0) = (seq, head.clone());
                let at_ms = tollgate_shared::clock::now_ms();
                for op in ops.drain(..) {
                    match op {
                        Op::Put {
                            record,
                            call,
                            audit,
                            ack,
                        } => {
                            let entry = audit.then(|| {
                                let mut e = audit_entry(&record, at_ms);
                                seq += 1;
                                e.seq = seq;
                                e.prev_hash = std::mem::take(&mut head);
                                e.hash = chain_hash(&e);
                                head = e.hash.clone();
                                e
                            });
                            if call {
                                batch.push(Mutation::Call(record));
                            }
                            if let Some(e) = entry {
                                batch.push(Mutation::Audit(Box::new(e)));
                            }
                            acks.extend(ack);
                        }
                        Op::Flush(w) => flushes.push(w),
                    }
                }
                let result = if batch.is_empty() {
                    Ok(())
                } else {
                    let backend = writer.clone();
                    match tokio::task::spawn_blocking(move || backend.commit(batch)).await {
                        Ok(r) => r.map_err(|e| format!("{e:#}")),
                        Err(e) => Err(format!("store writer failed: {e}")),
                    }
                };
                if let Err(e) = &result {
                    tracing::error!(error = %e, "cannot write call records to the store");
                    (seq, head) = (seq0, head0);
                }
                for a in acks {
                    let _ = a.send(result.clone());
                }
                for w in flushes {
                    let _ = w.send(());
                }
            }
        });
        Ok(Recorder { tx, backend })
    }

    /// The backend, for reads.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    async fn send(
        &self,
        record: impl Into<Arc<CallRecord>>,
        audit: bool,
        ack: Option<oneshot::Sender<Result<(), String>>>,
    ) {
        self.send_op(record, true, audit, ack).await;
    }

    async fn send_op(
        &self,
        record: impl Into<Arc<CallRecord>>,
        call: bool,
        audit: bool,
        ack: Option<oneshot::Sender<Result<(), String>>>,
    ) {
        let op = Op::Put {
            record: record.into(),
            call,
            audit,
            ack,
        };
        if self.tx.send(op).await.is_err() {
            tracing::error!("the store writer has stopped; a call record was not written");
        }
    }

    /// Queue a record update without an audit entry (a later record with the same id replaces it).
    pub async fn put(&self, record: impl Into<Arc<CallRecord>>) {
        self.send(record, false, None).await;
    }

    /// Queue a record and an audit entry for its outcome; durable with the next group.
    pub async fn record(&self, record: impl Into<Arc<CallRecord>>) {
        self.send(record, true, None).await;
    }

    /// Queue only the audit entry for a record's outcome: for an allowed call being forwarded,
    /// whose call record is written once when it completes (one store write fewer per call;
    /// should the broker die mid-call, the audit entry is there and the record is not).
    pub async fn audit_only(&self, record: impl Into<Arc<CallRecord>>) {
        self.send_op(record, false, true, None).await;
    }

    /// Write a record and an audit entry for its outcome, and wait until both are durable.
    pub async fn commit(&self, record: impl Into<Arc<CallRecord>>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(record, true, Some(tx)).await;
        rx.await
            .unwrap_or_else(|_| Err("the store writer has stopped".into()))
    }

    /// Write a record update without an audit entry, and wait until it is durable.
    pub async fn commit_quiet(&self, record: impl Into<Arc<CallRecord>>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(record, false, Some(tx)).await;
        rx.await
            .unwrap_or_else(|_| Err("the store writer has stopped".into()))
    }

    /// Wait until everything queued so far is on disk.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
