//! Decided retry-mode calls: a call held with `hold = "retry"` is answered at once, and once it
//! is approved the identical call from the same client is let through, once, within
//! `retry_ttl`; once it is rejected, the identical call is answered with the rejection (who
//! and why), once, instead of being queued again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tollgate_shared::clock::now_ms;
use tollgate_shared::sync::Mutex;
use tollgate_shared::{CallRecord, HoldMode, Name, Outcome};
use tollgate_store::Writes;

use super::Queue;

/// What makes two calls "the identical call".
#[derive(Hash, PartialEq, Eq, Clone)]
struct GrantKey {
    client: Name,
    server: Name,
    tool: Name,
    args_hash: tollgate_shared::ArgsHash,
}

fn grant_key(r: &CallRecord) -> GrantKey {
    GrantKey {
        client: r.client.clone(),
        server: r.server.clone(),
        tool: r.tool.clone(),
        args_hash: r.args_hash.clone(),
    }
}

/// What a repeated retry-mode call finds.
pub enum Taken {
    /// The call it repeats was approved: forward it (the id of that call).
    Approved(Name),
    /// The call it repeats was rejected: tell the client so.
    Rejected(Arc<CallRecord>),
}

/// Decided retry-mode calls not yet repeated, until when they may be.
pub(super) struct Grants {
    ttl: Duration,
    map: Mutex<HashMap<GrantKey, (Arc<CallRecord>, u64)>>,
}

impl Grants {
    pub(super) fn new(ttl: Duration) -> Grants {
        Grants {
            ttl,
            map: Mutex::default(),
        }
    }

    /// A retry-mode call was approved (its repeat may run once within the ttl) or rejected
    /// (its repeat is told so, once).
    pub(super) fn decided(&self, record: &Arc<CallRecord>) {
        if record
            .hold
            .as_ref()
            .is_some_and(|h| h.mode == HoldMode::Retry)
            && matches!(record.outcome, Outcome::Approved | Outcome::Rejected)
        {
            let until = now_ms() + self.ttl.as_millis() as u64;
            self.map
                .lock()
                .insert(grant_key(record), (record.clone(), until));
        }
    }
}

impl Queue {
    /// Consume a decided retry-mode call matching this one, if any is still valid. An
    /// approval is recorded as used, so it is not let through again after a restart.
    pub async fn take_grant(&self, record: &CallRecord) -> Option<Taken> {
        let original = {
            let mut grants = self.grants.map.lock();
            let now = now_ms();
            grants.retain(|_, (_, until)| *until > now);
            grants.remove(&grant_key(record)).map(|(r, _)| r)
        }?;
        if original.outcome == Outcome::Rejected {
            return Some(Taken::Rejected(original));
        }
        // Once across brokers sharing the store: the first to claim the call runs it (a store
        // of one broker has nothing to claim).
        if let Err(e) = self.store.claim(&original.id).await {
            tracing::info!(call = %original.id, error = %e, "an approved retry was used already (on another broker); this repeat is a new call");
            return None;
        }
        let mut original = Arc::unwrap_or_clone(original);
        let id = original.id.clone();
        if let Some(h) = original.hold.as_mut() {
            h.retried_ms = Some(now_ms());
        }
        if let Err(e) = self
            .store
            .write_durably(Arc::new(original), Writes::Record)
            .await
        {
            tracing::error!(call = %id, error = %e, "cannot record that an approved retry was used");
        }
        Some(Taken::Approved(id))
    }

    /// After a restart: approved retry-mode calls not yet repeated are let through again,
    /// until `retry_ttl` after their approval.
    pub async fn restore_grants(&self) -> Result<usize, tollgate_store::StoreError> {
        let ttl = self.grants.ttl.as_millis() as u64;
        let filter = tollgate_shared::audit::AuditFilter {
            status: Some(Outcome::Approved),
            since_ms: Some(now_ms().saturating_sub(ttl)),
            limit: Some(usize::MAX),
            ..Default::default()
        };
        let mut n = 0;
        for e in self.store.audit_query(filter).await? {
            let Some(rec) = self.store.call(&e.call_id).await? else {
                continue;
            };
            let unused = rec
                .hold
                .as_ref()
                .is_some_and(|h| h.mode == HoldMode::Retry && h.retried_ms.is_none());
            if unused && rec.outcome == Outcome::Approved {
                let approved = rec.decisions.last().map_or(e.at_ms, |d| d.at_ms);
                self.grants
                    .map
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
