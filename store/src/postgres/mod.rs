//! [`PgStore`]: the [`Backend`] several brokers share, on PostgreSQL.
//!
//! Every transition of a held call is one transaction: the call's row is locked
//! (`SELECT … FOR UPDATE`), `tollgate_policy::approval` applies the decision to the call as
//! stored, the row is updated and the audit entry appended, and a notification names the call.
//! So of two decisions on one call, from consoles on any brokers, the first to lock the row wins
//! and the second is refused with who won, exactly as on one machine.
//!
//! The audit chain is one chain for all brokers: every append locks the one row holding the
//! chain's head (`tollgate_chain_head`) in the same transaction as the entries it adds, so
//! entries are numbered and hashed in one order, and a broker that dies mid-transaction leaves
//! nothing half written.
//!
//! Writes of calls that are not held (allowed, refused, finished) are grouped by one writer
//! task into one transaction per group, as [`crate::Store`] groups them on one machine, and kept
//! and retried while PostgreSQL cannot be reached.
//!
//! Brokers hear of each other's changes through `LISTEN`/`NOTIFY`; a broker that
//! lost its connection reads the held calls again when it is back rather than trusting that it
//! missed nothing.
//!
//! Each broker has a `node` name. A held call belongs to the broker holding its client (its
//! stream, task or session): that broker forwards it once it is approved, and takes it back
//! after a restart.

pub mod identities;
mod listen;
mod nodes;
pub mod pool;
pub mod rules;
pub mod schema;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;
use tollgate_policy::approval::{self, Change};
use tollgate_policy::identity::Identity;
use tollgate_shared::audit::{AuditEntry, AuditFilter};
use tollgate_shared::clock::now_ms;
use tollgate_shared::console::{StoreFailing, TempRule};
use tollgate_shared::signing::Signed;
use tollgate_shared::sync::Mutex;
use tollgate_shared::{CallRecord, Name, Outcome, Verdict};

use crate::chain::{Verified, Verifier, audit_entry, chain_hash};
use crate::{
    Adopted, Backend, BoxFuture, DecideError, Decided, Observer, RETRY_EVERY, Remote, RuleStore,
    StoreError, Writes,
};
pub use pool::{Pool, Settings};
pub use tokio_postgres::config::SslMode;

/// The channel brokers notify each other on.
const CHANNEL: &str = "tollgate";

/// How long an approved call's claim is retried while PostgreSQL cannot be reached, before its
/// client is told it was not forwarded.
const CLAIM_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// The most writes one group carries.
const GROUP_MAX: usize = 4096;

/// Remote changes buffered for the queue before the listener waits for it.
const REMOTE_BUFFER: usize = 65_536;

type Ack = oneshot::Sender<Result<(), StoreError>>;

enum Op {
    /// Hold a call: written with the next group, answered once it commits (a hold is never
    /// kept for a retry: its client is refused instead).
    Hold {
        record: Arc<CallRecord>,
        ack: Ack,
    },
    Write {
        record: Arc<CallRecord>,
        writes: Writes,
        ack: Option<Ack>,
    },
    Flush(oneshot::Sender<()>),
}

impl Op {
    /// Somebody waits for this operation's commit: it ends a linger.
    fn awaited(&self) -> bool {
        !matches!(self, Op::Write { ack: None, .. })
    }
}

/// The store on PostgreSQL.
pub struct PgStore {
    pool: Arc<Pool>,
    node: Arc<str>,
    tx: mpsc::Sender<Op>,
    health: watch::Receiver<Option<StoreFailing>>,
    /// This broker's calls that were held when it started.
    pending: Vec<Arc<CallRecord>>,
    /// This broker's calls that were claimed for forwarding and had not finished when it
    /// started (outcome unknown).
    unfinished: Vec<Arc<CallRecord>>,
    /// This broker's calls approved while it was not running, never claimed.
    unsent: Vec<Arc<CallRecord>>,
    remote: Mutex<Option<mpsc::Receiver<Remote>>>,
    adopted: Mutex<Option<mpsc::Receiver<Adopted>>>,
    observer: Option<Arc<dyn Observer>>,
}

fn encode(record: &CallRecord) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(record)?)
}

fn decode(bytes: &[u8]) -> Result<CallRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt("a call record in PostgreSQL", e))
}

fn decode_entry(bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::corrupt("an audit entry in PostgreSQL", e))
}

/// Insert or replace call rows (the last write of an id in `records` wins).
async fn upsert(
    tx: &Transaction<'_>,
    node: &str,
    records: &[&CallRecord],
) -> Result<(), StoreError> {
    let mut at: HashMap<&str, usize> = HashMap::new();
    let (mut ids, mut outcomes, mut open, mut bodies) = (vec![], vec![], vec![], vec![]);
    for r in records {
        let body = encode(r)?;
        match at.get(&*r.id) {
            Some(i) => {
                outcomes[*i] = r.outcome.as_str();
                open[*i] = r.is_open();
                bodies[*i] = body;
            }
            None => {
                at.insert(&r.id, ids.len());
                ids.push(&*r.id);
                outcomes.push(r.outcome.as_str());
                open.push(r.is_open());
                bodies.push(body);
            }
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    // Rows are locked in id order by every statement that locks several, so two never wait
    // for each other.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|i| ids[*i]);
    let ids: Vec<&str> = order.iter().map(|i| ids[*i]).collect();
    let outcomes: Vec<&str> = order.iter().map(|i| outcomes[*i]).collect();
    let open: Vec<bool> = order.iter().map(|i| open[*i]).collect();
    let bodies: Vec<&[u8]> = order.iter().map(|i| bodies[*i].as_slice()).collect();
    tx.execute(
        "INSERT INTO tollgate_calls (id, outcome, node, open, record)
         SELECT id, outcome, $2, open, record
         FROM UNNEST($1::text[], $3::text[], $4::bool[], $5::bytea[]) AS t(id, outcome, open, record)
         ON CONFLICT (id) DO UPDATE SET outcome = EXCLUDED.outcome, open = EXCLUDED.open, record = EXCLUDED.record",
        &[&ids, &node, &outcomes, &open, &bodies],
    )
    .await
    .map_err(|e| StoreError::pg("write call records", e))?;
    Ok(())
}

/// Append the audit entries of `records` (each with when its outcome was reached) to the one
/// chain, holding the chain head's lock until the transaction ends.
async fn append(
    tx: &Transaction<'_>,
    records: &[(&CallRecord, u64)],
) -> Result<Vec<AuditEntry>, StoreError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let head = tx
        .query_one("SELECT seq, hash FROM tollgate_chain_head FOR UPDATE", &[])
        .await
        .map_err(|e| StoreError::pg("lock the audit chain's head", e))?;
    let (mut seq, mut hash): (i64, String) = (head.get(0), head.get(1));
    let mut entries = Vec::with_capacity(records.len());
    for (record, at_ms) in records {
        let mut e = audit_entry(record, *at_ms);
        seq += 1;
        e.seq = seq as u64;
        e.prev_hash = std::mem::take(&mut hash);
        e.hash = chain_hash(&e);
        hash = e.hash.clone();
        entries.push(e);
    }
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq as i64).collect();
    let ats: Vec<i64> = entries.iter().map(|e| e.at_ms as i64).collect();
    let calls: Vec<&str> = entries.iter().map(|e| e.call_id.as_str()).collect();
    let outcomes: Vec<&str> = entries.iter().map(|e| e.outcome.as_str()).collect();
    let servers: Vec<&str> = entries.iter().map(|e| e.server.as_str()).collect();
    let tools: Vec<&str> = entries.iter().map(|e| e.tool.as_str()).collect();
    let clients: Vec<&str> = entries.iter().map(|e| e.client.as_str()).collect();
    let approvers = entries
        .iter()
        .map(|e| serde_json::to_string(&e.approvers))
        .collect::<Result<Vec<_>, _>>()?;
    let bodies = entries
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()?;
    let params: [&(dyn ToSql + Sync); 9] = [
        &seqs, &ats, &calls, &outcomes, &servers, &tools, &clients, &approvers, &bodies,
    ];
    tx.execute(
        "INSERT INTO tollgate_audit (seq, at_ms, call_id, outcome, server, tool, client, approvers, entry)
         SELECT seq, at_ms, call_id, outcome, server, tool, client, approvers::jsonb, entry
         FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bytea[])
           AS t(seq, at_ms, call_id, outcome, server, tool, client, approvers, entry)",
        &params,
    )
    .await
    .map_err(|e| StoreError::pg("append to the audit chain", e))?;
    tx.execute(
        "UPDATE tollgate_chain_head SET seq = $1, hash = $2",
        &[&seq, &hash],
    )
    .await
    .map_err(|e| StoreError::pg("move the audit chain's head", e))?;
    Ok(entries)
}

/// Tell the other brokers (when the transaction commits) that call `id` changed.
async fn notify(tx: &Transaction<'_>, node: &str, kind: &str, id: &str) -> Result<(), StoreError> {
    notify_many(tx, node, kind, &[id]).await
}

/// Ids per notification: a payload must stay under PostgreSQL's 8000 bytes.
const IDS_PER_NOTE: usize = 150;

/// Tell the other brokers that calls `ids` changed, a few notifications for many calls.
async fn notify_many(
    tx: &Transaction<'_>,
    node: &str,
    kind: &str,
    ids: &[&str],
) -> Result<(), StoreError> {
    let payloads: Vec<String> = ids
        .chunks(IDS_PER_NOTE)
        .map(|c| format!("{node}\t{kind}\t{}", c.join(",")))
        .collect();
    if payloads.is_empty() {
        return Ok(());
    }
    tx.execute(
        "SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS t(p)",
        &[&CHANNEL, &payloads],
    )
    .await
    .map_err(|e| StoreError::pg("notify the other brokers", e))?;
    Ok(())
}

impl PgStore {
    /// Connect, check the schema, read back this broker's open calls and start the writer and
    /// the listener.
    pub async fn open(
        settings: Settings,
        observer: Option<Arc<dyn Observer>>,
    ) -> Result<Arc<PgStore>, StoreError> {
        let node: Arc<str> = settings.node.clone().into();
        let linger = settings.linger;
        let pool = Arc::new(Pool::new(settings));
        let (mut pending, mut unfinished, mut unsent) = (Vec::new(), Vec::new(), Vec::new());
        {
            let conn = pool.get().await?;
            schema::check(&conn).await?;
            let rows = conn
                .query(
                    "SELECT record, claimed FROM tollgate_calls WHERE open AND node = $1 ORDER BY id",
                    &[&&*node],
                )
                .await
                .map_err(|e| StoreError::pg("read this broker's open calls", e))?;
            for row in rows {
                let record = Arc::new(decode(row.get(0))?);
                match (record.outcome, row.get::<_, bool>(1)) {
                    (Outcome::Pending, _) => pending.push(record),
                    (_, true) => unfinished.push(record),
                    (_, false) => unsent.push(record),
                }
            }
        }
        let (tx, rx) = mpsc::channel(GROUP_MAX * 4);
        let (health_tx, health) = watch::channel(None);
        tokio::spawn(
            Writer {
                pool: pool.clone(),
                node: node.clone(),
                retry: Vec::new(),
                health: health_tx,
                observer: observer.clone(),
                linger,
            }
            .run(rx),
        );
        let (remote_tx, remote_rx) = mpsc::channel(REMOTE_BUFFER);
        tokio::spawn(listen::run(pool.clone(), node.clone(), remote_tx));
        let (adopted_tx, adopted_rx) = mpsc::channel(64);
        let timeout = pool.settings().node_timeout;
        tokio::spawn(nodes::run(pool.clone(), node.clone(), timeout, adopted_tx));
        Ok(Arc::new(PgStore {
            pool,
            node,
            tx,
            health,
            pending,
            unfinished,
            unsent,
            remote: Mutex::new(Some(remote_rx)),
            adopted: Mutex::new(Some(adopted_rx)),
            observer,
        }))
    }

    /// Keep `registry` in step with the identities in the database: read now (so the broker
    /// starts with them), then every second.
    pub async fn identities(
        &self,
        registry: &Arc<crate::tokens::Registry>,
    ) -> Result<(), StoreError> {
        registry.set(identities::list(&self.pool).await?);
        tokio::spawn(identities::follow(
            self.pool.clone(),
            Arc::downgrade(registry),
            std::time::Duration::from_secs(1),
        ));
        Ok(())
    }

    /// This broker's name among the brokers sharing the database.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn observe(&self, records: &[(&CallRecord, u64)], took: std::time::Duration) {
        if let Some(o) = &self.observer {
            o.committed(records.len() * 2, took);
            for (r, at) in records {
                o.written(r, Some(r.outcome), *at);
            }
        }
    }

    /// One transition of a held call, in one transaction: lock its row, apply `step` to it
    /// as stored, write it and its audit entry, notify the other brokers.
    async fn transition<T>(
        &self,
        id: &str,
        kind: impl Fn(&T) -> &'static str,
        step: impl FnOnce(&CallRecord, u64) -> Result<(CallRecord, T), DecideError>,
    ) -> Result<(Arc<CallRecord>, T), DecideError> {
        let store = |e| DecideError::Store(e);
        let started = Instant::now();
        let mut conn = self.pool.get().await.map_err(store)?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| store(StoreError::pg("begin a decision", e)))?;
        let row = tx
            .query_opt(
                "SELECT record FROM tollgate_calls WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(|e| store(StoreError::pg("lock the call", e)))?
            .ok_or(DecideError::NotFound)?;
        let current = decode(row.get(0)).map_err(store)?;
        let at_ms = now_ms();
        let (next, extra) = step(&current, at_ms)?;
        // The row exists, so its node (the broker holding the client) stays as it is.
        upsert(&tx, &self.node, &[&next]).await.map_err(store)?;
        append(&tx, &[(&next, at_ms)]).await.map_err(store)?;
        notify(&tx, &self.node, kind(&extra), id)
            .await
            .map_err(store)?;
        tx.commit()
            .await
            .map_err(|e| store(StoreError::pg("commit a decision", e)))?;
        self.observe(&[(&next, at_ms)], started.elapsed());
        Ok((Arc::new(next), extra))
    }

    /// A bulk decision in one transaction: lock every call's row (in id order), apply the
    /// verdict to each as stored, write them and their audit entries, notify.
    async fn decide_together(
        &self,
        ids: &[Name],
        who: &Identity,
        verdict: Verdict,
        reason: Option<&str>,
        signed: Option<&Signed>,
    ) -> Result<Vec<Result<Decided, DecideError>>, StoreError> {
        let started = Instant::now();
        let mut conn = self.pool.get().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| StoreError::pg("begin a decision", e))?;
        let wanted: Vec<&str> = ids.iter().map(|id| &**id).collect();
        let rows = tx
            .query(
                "SELECT id, record FROM tollgate_calls WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&wanted],
            )
            .await
            .map_err(|e| StoreError::pg("lock the calls", e))?;
        let mut stored = HashMap::with_capacity(rows.len());
        for row in &rows {
            stored.insert(row.get::<_, &str>(0), decode(row.get(1))?);
        }
        let at_ms = now_ms();
        let mut results = Vec::with_capacity(ids.len());
        let mut changed = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let Some(current) = stored.get(&**id) else {
                results.push(Err(DecideError::NotFound));
                continue;
            };
            let signed = crate::signed_for(signed, i);
            match approval::decide(current, who, verdict, reason, signed, at_ms) {
                Ok((next, change)) => {
                    let next = Arc::new(next);
                    changed.push(next.clone());
                    results.push(Ok(Decided {
                        record: next,
                        change,
                    }));
                }
                Err(refused) => results.push(Err(refused.into())),
            }
        }
        if changed.is_empty() {
            return Ok(results);
        }
        let records: Vec<&CallRecord> = changed.iter().map(|r| &**r).collect();
        upsert(&tx, &self.node, &records).await?;
        let audited: Vec<(&CallRecord, u64)> = records.iter().map(|r| (*r, at_ms)).collect();
        append(&tx, &audited).await?;
        let ids: Vec<&str> = records.iter().map(|r| &*r.id).collect();
        notify_many(&tx, &self.node, "decided", &ids).await?;
        tx.commit()
            .await
            .map_err(|e| StoreError::pg("commit a decision", e))?;
        self.observe(&audited, started.elapsed());
        Ok(results)
    }

    /// Check the whole audit chain.
    pub async fn verify(
        &self,
        anchor: Option<(u64, &str)>,
        signers: Option<HashMap<String, tollgate_shared::signing::Signing>>,
    ) -> Result<Verified, crate::chain::ChainError> {
        verify(&self.pool, anchor, signers).await
    }
}

/// Check the whole audit chain in the database, in pages.
pub async fn verify(
    pool: &Pool,
    anchor: Option<(u64, &str)>,
    signers: Option<HashMap<String, tollgate_shared::signing::Signing>>,
) -> Result<Verified, crate::chain::ChainError> {
    let mut verifier = Verifier::new(anchor).with_signers(signers);
    let mut problem = None;
    scan(pool, &mut |e| match verifier.push(e) {
        Ok(()) => true,
        Err(broken) => {
            problem = Some(broken);
            false
        }
    })
    .await?;
    if let Some(broken) = problem {
        return Err(broken);
    }
    verifier.finish()
}

/// Every audit entry, oldest first, to `visit` until it returns false: read in pages, as
/// `Engine::audit_scan` does for a local store.
pub async fn scan(
    pool: &Pool,
    visit: &mut dyn FnMut(AuditEntry) -> bool,
) -> Result<(), StoreError> {
    let mut after = 0;
    loop {
        let page = read_after(pool, after, 2000).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.seq;
        for e in page {
            if !visit(e) {
                return Ok(());
            }
        }
    }
}

/// The first `limit` audit entries after `after`.
pub async fn read_after(
    pool: &Pool,
    after: u64,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let conn = pool.get().await?;
    let rows = conn
        .query(
            "SELECT entry FROM tollgate_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[
                &(after.min(i64::MAX as u64) as i64),
                &(limit.min(i64::MAX as usize) as i64),
            ],
        )
        .await
        .map_err(|e| StoreError::pg("read the audit chain", e))?;
    rows.iter().map(|r| decode_entry(r.get(0))).collect()
}

/// Audit entries matching a filter, oldest first (the newest `limit` of them).
pub async fn query(pool: &Pool, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
    let status = filter.status.map(|s| s.as_str().to_string());
    let approver = filter
        .approver
        .as_ref()
        .map(|a| serde_json::to_string(&[a]))
        .transpose()?;
    let since = filter.since_ms.unwrap_or(0).min(i64::MAX as u64) as i64;
    let limit = filter.limit.unwrap_or(100).min(i64::MAX as usize) as i64;
    let mut sql = String::from("SELECT entry FROM tollgate_audit WHERE at_ms >= $1");
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&since];
    for (column, value) in [
        ("outcome", &status),
        ("server", &filter.server),
        ("tool", &filter.tool),
        ("client", &filter.client),
        ("call_id", &filter.call_id),
    ] {
        if let Some(v) = value {
            params.push(v);
            sql.push_str(&format!(" AND {column} = ${}", params.len()));
        }
    }
    if let Some(a) = &approver {
        params.push(a);
        sql.push_str(&format!(" AND approvers @> ${}::jsonb", params.len()));
    }
    params.push(&limit);
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", params.len()));
    let conn = pool.get().await?;
    let rows = conn
        .query(&sql, &params)
        .await
        .map_err(|e| StoreError::pg("search the audit trail", e))?;
    let mut out = rows
        .iter()
        .map(|r| decode_entry(r.get(0)))
        .collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}

impl RuleStore for PgStore {
    fn list(&self, now_ms: u64) -> BoxFuture<'_, Result<Vec<TempRule>, StoreError>> {
        Box::pin(rules::list(&self.pool, now_ms))
    }

    fn add<'a>(&'a self, rule: &'a TempRule) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(rules::add(&self.pool, &self.node, rule))
    }

    fn remove<'a>(
        &'a self,
        id: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<TempRule>, StoreError>> {
        Box::pin(rules::remove(&self.pool, &self.node, id, now_ms))
    }

    fn take<'a>(
        &'a self,
        id: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<TempRule>, StoreError>> {
        Box::pin(rules::take(&self.pool, &self.node, id, now_ms))
    }

    fn hit<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(rules::hit(&self.pool, id))
    }
}

impl Backend for PgStore {
    fn hold(&self, record: Arc<CallRecord>) -> BoxFuture<'_, Result<(), StoreError>> {
        // Holds go through the writer, so a burst of them is one transaction: every append
        // takes the chain head's lock until its commit is durable, so one transaction per hold
        // would cap holds at one disk sync each.
        Box::pin(async move {
            let (ack, rx) = oneshot::channel();
            self.tx
                .send(Op::Hold { record, ack })
                .await
                .map_err(|_| StoreError::WriterStopped)?;
            rx.await.unwrap_or(Err(StoreError::WriterStopped))
        })
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
            let (record, change) = self
                .transition(
                    &id,
                    |c| match c {
                        Change::Counted => "counted",
                        Change::Final => "decided",
                    },
                    |current, at_ms| {
                        approval::decide(current, &who, verdict, reason.as_deref(), signed, at_ms)
                            .map_err(DecideError::from)
                    },
                )
                .await?;
            Ok(Decided { record, change })
        })
    }

    fn decide_many(
        &self,
        ids: Vec<Name>,
        who: Arc<Identity>,
        verdict: Verdict,
        reason: Option<String>,
        signed: Option<Signed>,
    ) -> BoxFuture<'_, Vec<Result<Decided, DecideError>>> {
        Box::pin(async move {
            match self
                .decide_together(&ids, &who, verdict, reason.as_deref(), signed.as_ref())
                .await
            {
                Ok(results) => results,
                Err(e) => ids
                    .iter()
                    .map(|_| Err(DecideError::Store(e.clone())))
                    .collect(),
            }
        })
    }

    fn close(
        &self,
        id: Name,
        outcome: Outcome,
        why: Option<String>,
    ) -> BoxFuture<'_, Result<Arc<CallRecord>, DecideError>> {
        Box::pin(async move {
            let (record, ()) = self
                .transition(
                    &id,
                    |_| "closed",
                    |current, at_ms| {
                        approval::close(current, outcome, why, at_ms)
                            .map(|r| (r, ()))
                            .map_err(DecideError::from)
                    },
                )
                .await?;
            Ok(record)
        })
    }

    fn write(&self, record: Arc<CallRecord>, writes: Writes) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self
                .tx
                .send(Op::Write {
                    record,
                    writes,
                    ack: None,
                })
                .await
                .is_err()
            {
                tracing::error!("the store writer has stopped; a write was not made");
            }
        })
    }

    fn write_durably(
        &self,
        record: Arc<CallRecord>,
        writes: Writes,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (ack, rx) = oneshot::channel();
            self.tx
                .send(Op::Write {
                    record,
                    writes,
                    ack: Some(ack),
                })
                .await
                .map_err(|_| StoreError::WriterStopped)?;
            rx.await.unwrap_or(Err(StoreError::WriterStopped))
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.tx.send(Op::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        })
    }

    fn pending(&self) -> Vec<Arc<CallRecord>> {
        self.pending.clone()
    }

    fn unfinished(&self) -> Vec<Arc<CallRecord>> {
        self.unfinished.clone()
    }

    fn approved_unsent(&self) -> Vec<Arc<CallRecord>> {
        self.unsent.clone()
    }

    fn claim(&self, id: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_string();
        Box::pin(async move {
            // The call is decided and its client waits: while PostgreSQL cannot be reached (a
            // restart, a network cut), keep trying for a while rather than give the approval
            // up. Safe: a try that did claim the call unbeknown to us makes the next one find
            // it claimed, and the call is not sent.
            let started = Instant::now();
            let mut pause = std::time::Duration::from_millis(100);
            let claimed = loop {
                let tried = match self.pool.get().await {
                    Ok(conn) => conn
                        .execute(
                            "UPDATE tollgate_calls SET claimed = true WHERE id = $1 AND NOT claimed",
                            &[&id],
                        )
                        .await
                        .map_err(|e| StoreError::pg("claim the call for forwarding", e)),
                    Err(e) => Err(e),
                };
                match tried {
                    Ok(n) => break n,
                    Err(e) if started.elapsed() + pause > CLAIM_PATIENCE => return Err(e),
                    Err(e) => {
                        tracing::warn!(call = %id, error = %e, "cannot claim an approved call for forwarding yet; trying again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_secs(2));
                    }
                }
            };
            if claimed == 1 {
                Ok(())
            } else {
                Err(StoreError::AlreadyClaimed(id))
            }
        })
    }

    fn health(&self) -> watch::Receiver<Option<StoreFailing>> {
        self.health.clone()
    }

    fn call(&self, id: &str) -> BoxFuture<'_, Result<Option<CallRecord>, StoreError>> {
        let id = id.to_string();
        Box::pin(async move {
            let conn = self.pool.get().await?;
            let row = conn
                .query_opt("SELECT record FROM tollgate_calls WHERE id = $1", &[&id])
                .await
                .map_err(|e| StoreError::pg("read a call", e))?;
            row.map(|r| decode(r.get(0))).transpose()
        })
    }

    fn audit_query(
        &self,
        filter: AuditFilter,
    ) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        Box::pin(async move { query(&self.pool, &filter).await })
    }

    fn audit_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        Box::pin(read_after(&self.pool, after, limit))
    }

    fn remote(&self) -> Option<mpsc::Receiver<Remote>> {
        self.remote.lock().take()
    }

    fn adopted(&self) -> Option<mpsc::Receiver<Adopted>> {
        self.adopted.lock().take()
    }

    fn node(&self) -> Option<&str> {
        Some(&self.node)
    }
}

/// The task that groups writes of calls that are not held.
struct Writer {
    pool: Arc<Pool>,
    node: Arc<str>,
    /// Writes of groups that could not be committed, with when they were made.
    retry: Vec<(Arc<CallRecord>, Writes, u64)>,
    health: watch::Sender<Option<StoreFailing>>,
    observer: Option<Arc<dyn Observer>>,
    /// How long writes nobody waits for wait for more before they are committed.
    linger: Duration,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut ops = Vec::new();
        loop {
            // While the store fails, wake every second even without writes, to see whether it
            // is back (a failed hold is not kept, so there may be nothing to retry).
            if self.retry.is_empty() && self.health.borrow().is_none() {
                if crate::gather::gather(&mut rx, &mut ops, GROUP_MAX, self.linger, Op::awaited)
                    .await
                    == 0
                {
                    break;
                }
            } else if let Ok(0) =
                tokio::time::timeout(RETRY_EVERY, rx.recv_many(&mut ops, GROUP_MAX)).await
            {
                if !self.group(&mut ops).await {
                    tracing::error!(
                        writes = self.retry.len(),
                        "the store writer stops with writes it could not make; they are lost"
                    );
                }
                break;
            }
            self.group(&mut ops).await;
        }
    }

    /// Commit the kept writes and `ops` as one transaction; answer everyone.
    async fn group(&mut self, ops: &mut Vec<Op>) -> bool {
        let at_ms = now_ms();
        let mut writes = std::mem::take(&mut self.retry);
        let (mut acks, mut flushes, mut holds) = (Vec::new(), Vec::new(), Vec::new());
        for op in ops.drain(..) {
            match op {
                Op::Hold { record, ack } => {
                    holds.push((record, at_ms));
                    acks.push(ack);
                }
                Op::Write {
                    record,
                    writes: w,
                    ack,
                } => {
                    writes.push((record, w, at_ms));
                    acks.extend(ack);
                }
                Op::Flush(f) => flushes.push(f),
            }
        }
        let started = Instant::now();
        let result = if writes.is_empty() && holds.is_empty() {
            if self.health.borrow().is_some() {
                self.probe().await
            } else {
                Ok(())
            }
        } else {
            self.commit(&writes, &holds).await
        };
        match &result {
            Ok(()) => {
                if let Some(o) = &self.observer
                    && !(writes.is_empty() && holds.is_empty())
                {
                    o.committed(writes.len() + holds.len(), started.elapsed());
                    for (r, w, at) in &writes {
                        let audited =
                            matches!(w, Writes::Audit | Writes::Both).then_some(r.outcome);
                        o.written(r, audited, *at);
                    }
                    for (r, at) in &holds {
                        o.written(r, Some(r.outcome), *at);
                    }
                }
            }
            Err(_) => self.retry = writes,
        }
        crate::report_health(&self.health, &result, self.retry.len());
        for a in acks {
            let _ = a.send(result.clone());
        }
        for f in flushes {
            let _ = f.send(());
        }
        result.is_ok()
    }

    /// Whether PostgreSQL answers again.
    async fn probe(&self) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.simple_query("SELECT 1")
            .await
            .map_err(|e| StoreError::pg("reach the database", e))?;
        Ok(())
    }

    async fn commit(
        &self,
        writes: &[(Arc<CallRecord>, Writes, u64)],
        holds: &[(Arc<CallRecord>, u64)],
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| StoreError::pg("begin a group of writes", e))?;
        let records: Vec<&CallRecord> = writes
            .iter()
            .filter(|(_, w, _)| matches!(w, Writes::Record | Writes::Both))
            .map(|(r, _, _)| &**r)
            .chain(holds.iter().map(|(r, _)| &**r))
            .collect();
        // A write that ends a call still held (a hold refused after its commit failed, which
        // may have committed anyway) tells the other brokers, whose consoles list it.
        let ending: Vec<&str> = records
            .iter()
            .filter(|r| r.hold.is_some() && r.outcome != Outcome::Pending)
            .map(|r| &*r.id)
            .collect();
        let ended: Vec<String> = if ending.is_empty() {
            Vec::new()
        } else {
            tx.query(
                "SELECT id FROM tollgate_calls WHERE open AND outcome = 'pending' AND id = ANY($1)",
                &[&ending],
            )
            .await
            .map_err(|e| StoreError::pg("read which written calls were held", e))?
            .iter()
            .map(|r| r.get(0))
            .collect()
        };
        upsert(&tx, &self.node, &records).await?;
        let audited: Vec<(&CallRecord, u64)> = writes
            .iter()
            .filter(|(_, w, _)| matches!(w, Writes::Audit | Writes::Both))
            .map(|(r, _, at)| (&**r, *at))
            .chain(holds.iter().map(|(r, at)| (&**r, *at)))
            .collect();
        append(&tx, &audited).await?;
        let held: Vec<&str> = holds.iter().map(|(r, _)| &*r.id).collect();
        notify_many(&tx, &self.node, "held", &held).await?;
        let ended: Vec<&str> = ended.iter().map(String::as_str).collect();
        notify_many(&tx, &self.node, "closed", &ended).await?;
        tx.commit()
            .await
            .map_err(|e| StoreError::pg("commit a group of writes", e))
    }
}
