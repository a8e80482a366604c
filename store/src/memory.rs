//! An [`Engine`] that keeps everything in memory: for tests of the layers above the store, and
//! the reference a new engine's behaviour is compared with. Nothing survives the process.

use std::collections::{BTreeMap, BTreeSet};

use tollgate_shared::CallRecord;
use tollgate_shared::audit::{AuditEntry, AuditFilter};
use tollgate_shared::sync::Mutex;

use crate::chain::GENESIS;
use crate::{Engine, Mutation, StoreError};

#[derive(Default)]
struct Data {
    calls: BTreeMap<String, CallRecord>,
    pending: BTreeSet<String>,
    audit: Vec<AuditEntry>,
}

/// Calls, pending set and audit chain in memory.
#[derive(Default)]
pub struct MemoryEngine {
    data: Mutex<Data>,
    /// While set, every commit fails as a full disk would (to test what callers do then).
    failing: Mutex<bool>,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    /// Make commits fail (`true`) or succeed again.
    pub fn fail_commits(&self, fail: bool) {
        *self.failing.lock() = fail;
    }
}

/// Whether an entry passes a filter's field tests (not its time and limit).
fn matches(e: &AuditEntry, f: &AuditFilter) -> bool {
    let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    f.status.is_none_or(|s| s == e.outcome)
        && eq(&f.server, &e.server)
        && eq(&f.tool, &e.tool)
        && eq(&f.client, &e.client)
        && eq(&f.call_id, &e.call_id)
        && f.approver
            .as_deref()
            .is_none_or(|a| e.approvers.iter().any(|x| x == a))
}

impl Engine for MemoryEngine {
    fn commit(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        if *self.failing.lock() {
            return Err(StoreError::io(
                "cannot sync the journal to disk",
                std::io::Error::from_raw_os_error(28),
            ));
        }
        let mut d = self.data.lock();
        for m in batch {
            match m {
                Mutation::Call(r) => {
                    let id = r.id.to_string();
                    if r.is_open() {
                        d.pending.insert(id.clone());
                    } else {
                        d.pending.remove(&id);
                    }
                    d.calls.insert(id, (*r).clone());
                }
                Mutation::Audit(e) => d.audit.push(*e),
            }
        }
        Ok(())
    }

    fn call(&self, id: &str) -> Result<Option<CallRecord>, StoreError> {
        Ok(self.data.lock().calls.get(id).cloned())
    }

    fn open(&self) -> Result<Vec<CallRecord>, StoreError> {
        let d = self.data.lock();
        Ok(d.pending
            .iter()
            .filter_map(|id| d.calls.get(id).cloned())
            .collect())
    }

    fn audit_head(&self) -> Result<(u64, String), StoreError> {
        Ok(self
            .data
            .lock()
            .audit
            .last()
            .map_or((0, GENESIS.to_string()), |e| (e.seq, e.hash.clone())))
    }

    fn audit_query(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = f.limit.unwrap_or(100);
        let since = f.since_ms.unwrap_or(0);
        let d = self.data.lock();
        let mut out: Vec<AuditEntry> = d
            .audit
            .iter()
            .rev()
            .take_while(|e| e.at_ms >= since)
            .filter(|e| matches(e, f))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        Ok(out)
    }

    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let d = self.data.lock();
        Ok(d.audit
            .iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect())
    }

    fn audit_scan(&self, visit: &mut dyn FnMut(AuditEntry) -> bool) -> Result<(), StoreError> {
        let entries = self.data.lock().audit.clone();
        for e in entries {
            if !visit(e) {
                break;
            }
        }
        Ok(())
    }
}
