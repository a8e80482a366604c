//! The sled backend: trees for calls, the pending index, the audit chain and its indexes.
//!
//! Trees: `calls` (record id → record JSON; UUID v7 keys sort by time), `pending` (id → empty,
//! the queue to recover after a restart), `audit` (sequence number, big-endian → entry JSON)
//! and `audit_idx` (one key per filterable field of an entry: `field byte, value, 0, seq`), so a
//! filtered search walks only the matching keys and intersects them without decoding entries.
//! Durability comes from the [`Journal`] in front of sled (see there for why).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use tollgate_shared::audit::{AuditEntry, AuditFilter};
use tollgate_shared::{CallRecord, Outcome};

use super::journal::{Journal, sync_tree};
use super::{Backend, GENESIS, Mutation};

/// Checkpoint (sync sled, empty the journal) once the journal is this large.
const CHECKPOINT_BYTES: u64 = 64 << 20;

/// The sled store.
pub struct SledBackend {
    dir: PathBuf,
    db: sled::Db,
    calls: sled::Tree,
    pending: sled::Tree,
    audit: sled::Tree,
    audit_idx: sled::Tree,
    journal: Mutex<Journal>,
}

const F_STATUS: u8 = b's';
const F_SERVER: u8 = b'v';
const F_TOOL: u8 = b't';
const F_CLIENT: u8 = b'c';
const F_APPROVER: u8 = b'a';
const F_CALL: u8 = b'i';

fn idx_prefix(field: u8, value: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + 10);
    k.push(field);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k
}

fn seq_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SledBackend {
    /// Open (or create) the store in `dir`, replaying any journal left by a crash.
    pub fn open(dir: &Path) -> anyhow::Result<SledBackend> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    anyhow::anyhow!(
                        "the store at {} is in use by another process (is a broker running with this data_dir? stop it, or ask it through the console API): {e}",
                        dir.display()
                    )
                }
                e => anyhow::anyhow!("cannot open the store at {}: {e}", dir.display()),
            })?;
        let journal = Journal::open(&dir.join("journal"))?;
        let backend = SledBackend {
            dir: dir.to_path_buf(),
            calls: db.open_tree("calls")?,
            pending: db.open_tree("pending")?,
            audit: db.open_tree("audit")?,
            audit_idx: db.open_tree("audit_idx")?,
            db,
            journal: Mutex::new(journal),
        };
        let entries = lock(&backend.journal).entries()?;
        if !entries.is_empty() {
            tracing::info!(groups = entries.len(), "replaying the journal after an unclean stop");
            for json in entries {
                let batch: Vec<Mutation> = serde_json::from_slice(&json)
                    .context("a journal entry is not a valid group of writes")?;
                backend.apply(&batch)?;
            }
            backend.checkpoint()?;
        }
        Ok(backend)
    }

    fn apply(&self, batch: &[Mutation]) -> anyhow::Result<()> {
        let mut calls = sled::Batch::default();
        let mut pending = sled::Batch::default();
        let mut audit = sled::Batch::default();
        let mut idx = sled::Batch::default();
        for m in batch {
            match m {
                Mutation::Call(r) => {
                    let key = uuid::Uuid::parse_str(&r.id).context("record id is not a UUID")?;
                    calls.insert(key.as_bytes().as_slice(), serde_json::to_vec(r)?);
                    if r.outcome == Outcome::Pending {
                        pending.insert(key.as_bytes().as_slice(), &[]);
                    } else {
                        pending.remove(key.as_bytes().as_slice());
                    }
                }
                Mutation::Audit(e) => {
                    let seq = e.seq.to_be_bytes();
                    audit.insert(&seq, serde_json::to_vec(e)?);
                    let mut fields = vec![
                        (F_STATUS, e.outcome.as_str()),
                        (F_SERVER, e.server.as_str()),
                        (F_TOOL, e.tool.as_str()),
                        (F_CLIENT, e.client.as_str()),
                        (F_CALL, e.call_id.as_str()),
                    ];
                    fields.extend(e.approvers.iter().map(|a| (F_APPROVER, a.as_str())));
                    for (f, v) in fields {
                        let mut k = idx_prefix(f, v);
                        k.extend_from_slice(&seq);
                        idx.insert(k, &[]);
                    }
                }
            }
        }
        self.calls.apply_batch(calls)?;
        self.pending.apply_batch(pending)?;
        self.audit.apply_batch(audit)?;
        self.audit_idx.apply_batch(idx)?;
        Ok(())
    }

    /// Make sled's own files durable and empty the journal.
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        let mut journal = lock(&self.journal);
        self.db.flush().context("cannot flush the store")?;
        sync_tree(&self.dir.join("sled"))?;
        journal.clear()
    }

    fn decode(&self, v: &[u8]) -> anyhow::Result<AuditEntry> {
        serde_json::from_slice(v).context("a stored audit entry is not valid JSON")
    }

    fn entry(&self, seq: u64) -> anyhow::Result<Option<AuditEntry>> {
        self.audit
            .get(seq.to_be_bytes())?
            .map(|v| self.decode(&v))
            .transpose()
    }

    /// Sequence numbers matching every index filter, newest first, at most `limit`; `None`
    /// when the filter uses no index.
    fn indexed(&self, f: &AuditFilter, limit: usize) -> anyhow::Result<Option<Vec<u64>>> {
        let status = f.status.map(|s| s.as_str().to_string());
        let prefixes: Vec<Vec<u8>> = [
            (F_STATUS, status.as_deref()),
            (F_SERVER, f.server.as_deref()),
            (F_TOOL, f.tool.as_deref()),
            (F_CLIENT, f.client.as_deref()),
            (F_APPROVER, f.approver.as_deref()),
            (F_CALL, f.call_id.as_deref()),
        ]
        .into_iter()
        .filter_map(|(field, v)| v.map(|v| idx_prefix(field, v)))
        .collect();
        if prefixes.is_empty() {
            return Ok(None);
        }
        // Merge-join the index ranges, newest first: advance whichever cursor is ahead until all
        // agree on one sequence number.
        let mut cursors: Vec<_> = prefixes
            .iter()
            .map(|p| self.audit_idx.scan_prefix(p).keys().rev())
            .collect();
        let mut heads = Vec::with_capacity(cursors.len());
        for c in &mut cursors {
            match c.next().transpose()? {
                Some(k) => heads.push(seq_of(&k)),
                None => return Ok(Some(Vec::new())),
            }
        }
        let mut out = Vec::new();
        'merge: while out.len() < limit {
            let low = heads.iter().copied().min().unwrap_or(0);
            if heads.iter().all(|h| *h == low) {
                out.push(low);
                for (c, h) in cursors.iter_mut().zip(heads.iter_mut()) {
                    match c.next().transpose()? {
                        Some(k) => *h = seq_of(&k),
                        None => break 'merge,
                    }
                }
                continue;
            }
            for (c, h) in cursors.iter_mut().zip(heads.iter_mut()) {
                while *h > low {
                    match c.next().transpose()? {
                        Some(k) => *h = seq_of(&k),
                        None => break 'merge,
                    }
                }
            }
        }
        Ok(Some(out))
    }
}

impl Backend for SledBackend {
    fn commit(&self, batch: &[Mutation]) -> anyhow::Result<()> {
        let json = serde_json::to_vec(batch)?;
        let mut journal = lock(&self.journal);
        journal.append(&[json])?;
        let big = journal.len() > CHECKPOINT_BYTES;
        drop(journal);
        if let Err(e) = self.apply(batch) {
            // The group is durable in the journal and is replayed at the next start.
            tracing::error!(error = %e, "cannot apply a committed group to sled; it stays in the journal");
            return Ok(());
        }
        if big {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn call(&self, id: &str) -> anyhow::Result<Option<CallRecord>> {
        let Ok(key) = uuid::Uuid::parse_str(id) else {
            return Ok(None);
        };
        self.calls
            .get(key.as_bytes())?
            .map(|v| serde_json::from_slice(&v).context("a stored record is not valid JSON"))
            .transpose()
    }

    fn pending(&self) -> anyhow::Result<Vec<CallRecord>> {
        let mut out = Vec::new();
        for key in self.pending.iter().keys() {
            let key = key?;
            if let Some(v) = self.calls.get(&key)? {
                out.push(serde_json::from_slice(&v).context("a stored record is not valid JSON")?);
            }
        }
        Ok(out)
    }

    fn audit_head(&self) -> anyhow::Result<(u64, String)> {
        match self.audit.last()? {
            Some((_, v)) => {
                let e = self.decode(&v)?;
                Ok((e.seq, e.hash))
            }
            None => Ok((0, GENESIS.to_string())),
        }
    }

    fn audit_query(&self, f: &AuditFilter) -> anyhow::Result<Vec<AuditEntry>> {
        let limit = f.limit.unwrap_or(100);
        let since = f.since_ms.unwrap_or(0);
        let mut out = Vec::new();
        match self.indexed(f, limit)? {
            Some(seqs) => {
                for seq in seqs {
                    let Some(e) = self.entry(seq)? else { continue };
                    if e.at_ms < since {
                        break;
                    }
                    out.push(e);
                }
            }
            None => {
                for item in self.audit.iter().values().rev() {
                    let e = self.decode(&item?)?;
                    if e.at_ms < since || out.len() >= limit {
                        break;
                    }
                    out.push(e);
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    fn audit_scan(&self, visit: &mut dyn FnMut(AuditEntry) -> bool) -> anyhow::Result<()> {
        for item in self.audit.iter().values() {
            if !visit(self.decode(&item?)?) {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for SledBackend {
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "cannot checkpoint the store on close; the journal is replayed at the next start");
        }
    }
}
