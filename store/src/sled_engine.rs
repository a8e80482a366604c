//! The sled engine: trees for calls, the pending index, the audit chain and its indexes.
//!
//! Trees: `calls` (record id → record JSON; UUID v7 keys sort by time), `pending` (id → empty:
//! the open calls, held or approved and not finished, to recover after a restart), `audit` (sequence number, big-endian → entry JSON)
//! and `audit_idx` (one key per filterable field of an entry: `field byte, value, 0, seq`), so a
//! filtered search walks only the matching keys and intersects them without decoding entries.
//! Durability comes from the [`Journal`] in front of sled (see there for why): a commit returns
//! once its group is in the journal and synced, and an applier thread copies groups into sled
//! in order behind it, so the sled work (its copy-on-write tree updates and the audit indexes)
//! is off the path of the caller waiting for durability. Reads see a group a moment after its
//! commit returns. A checkpoint runs on the applier under the journal's lock: it first applies
//! every group still queued, then flushes and syncs sled, and only then empties the journal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, sync_channel};
use std::sync::{Arc, Condvar};
use std::time::Duration;

use tollgate_shared::CallRecord;
use tollgate_shared::audit::{AuditEntry, AuditFilter};
use tollgate_shared::sync::Mutex;

use crate::chain::GENESIS;
use crate::journal::{Journal, sync_tree};
use crate::{Engine, Mutation, StoreError};

/// Checkpoint (sync sled, empty the journal) once the journal is this large.
const CHECKPOINT_BYTES: u64 = 64 << 20;

/// The sled trees.
pub struct Trees {
    dir: PathBuf,
    db: sled::Db,
    calls: sled::Tree,
    pending: sled::Tree,
    audit: sled::Tree,
    audit_idx: sled::Tree,
}

enum Job {
    Apply(Vec<Mutation>),
    Checkpoint(Option<SyncSender<Result<(), StoreError>>>),
}

/// The most mutations committed but not yet applied to sled (a held call's hold is two: its
/// record and its audit entry). When sled falls behind, commits wait for it (and through the
/// recorder's bounded channel, so do callers) instead of the backlog growing in memory.
const BACKLOG_MAX: usize = 65_536;

/// Mutations handed to the applier and not yet in sled.
#[derive(Default)]
struct Backlog {
    queued: Mutex<usize>,
    room: Condvar,
    /// The applier thread has ended: nobody will make room.
    stopped: AtomicBool,
}

impl Backlog {
    /// Wait until `n` more mutations fit (a group larger than the bound goes alone), then count
    /// them. False when the applier has stopped.
    fn reserve(&self, n: usize) -> bool {
        let mut queued = self.queued.lock();
        while *queued > 0 && *queued + n > BACKLOG_MAX {
            if self.stopped.load(Ordering::Acquire) {
                return false;
            }
            queued = self
                .room
                .wait_timeout(queued, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *queued += n;
        true
    }

    /// `n` mutations are in sled (or will never be).
    fn applied(&self, n: usize) {
        let mut queued = self.queued.lock();
        *queued = queued.saturating_sub(n);
        self.room.notify_all();
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.room.notify_all();
    }
}

/// The sled store: trees, the journal in front of them and the applier thread behind it.
pub struct SledEngine {
    t: Arc<Trees>,
    journal: Arc<Mutex<Journal>>,
    backlog: Arc<Backlog>,
    applier: Mutex<Option<(Sender<Job>, std::thread::JoinHandle<()>)>>,
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

/// A failed sled read.
fn read(e: sled::Error) -> StoreError {
    StoreError::sled("cannot read the store", e)
}

fn decode_record(v: &[u8]) -> Result<CallRecord, StoreError> {
    serde_json::from_slice(v)
        .map_err(|e| StoreError::corrupt("a stored record is not valid JSON", e))
}

fn seq_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

impl SledEngine {
    /// Open (or create) the store in `dir` with the default page cache, replaying any journal
    /// left by a crash.
    pub fn open(dir: &Path) -> Result<SledEngine, StoreError> {
        SledEngine::open_with(dir, crate::DEFAULT_CACHE)
    }

    /// Open (or create) the store in `dir`, caching at most `cache_bytes` of pages in memory.
    pub fn open_with(dir: &Path, cache_bytes: usize) -> Result<SledEngine, StoreError> {
        // sled creates its files with the process's umask; inside a private directory of its
        // own they are out of others' reach.
        tollgate_shared::fs::private_dir(&dir.join("sled")).map_err(|e| {
            StoreError::io(format!("cannot create data directory {}", dir.display()), e)
        })?;
        // sled's own periodic flush is off: durability comes from the journal, and checkpoints
        // flush and sync sled explicitly.
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .cache_capacity(cache_bytes as u64)
            .open()
            .map_err(|e| {
                let in_use = matches!(&e, sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock"));
                let (dir, cause) = (dir.to_path_buf(), Arc::new(e));
                if in_use {
                    StoreError::InUse { dir, cause }
                } else {
                    StoreError::Open { dir, cause }
                }
            })?;
        let mut journal = Journal::open(&dir.join("journal"))?;
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| StoreError::sled("cannot open the store's trees", e))
        };
        let t = Arc::new(Trees {
            dir: dir.to_path_buf(),
            calls: tree("calls")?,
            pending: tree("pending")?,
            audit: tree("audit")?,
            audit_idx: tree("audit_idx")?,
            db,
        });
        let entries = journal.entries()?;
        // A journal holding only a torn line is emptied too: an append behind it would be
        // lost at the next replay.
        if !entries.is_empty() || journal.len() > 0 {
            tracing::info!(
                groups = entries.len(),
                "replaying the journal after an unclean stop"
            );
            for json in entries {
                let batch: Vec<Mutation> = serde_json::from_slice(&json).map_err(|e| {
                    StoreError::corrupt("a journal entry is not a valid group of writes", e)
                })?;
                t.apply(&batch)?;
            }
            t.sync()?;
            journal.clear()?;
        }
        let journal = Arc::new(Mutex::new(journal));
        let (tx, rx) = std::sync::mpsc::channel();
        let backlog = Arc::new(Backlog::default());
        let (at, aj, ab) = (t.clone(), journal.clone(), backlog.clone());
        let handle = std::thread::Builder::new()
            .name("store-applier".into())
            .spawn(move || {
                apply_loop(&at, &aj, &ab, &rx);
                ab.stop();
            })
            .map_err(|e| StoreError::io("cannot start the store's applier thread", e))?;
        Ok(SledEngine {
            t,
            journal,
            backlog,
            applier: Mutex::new(Some((tx, handle))),
        })
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        match &*self.applier.lock() {
            Some((tx, _)) => tx.send(job).map_err(|_| StoreError::ApplierStopped),
            None => Err(StoreError::Closed),
        }
    }

    /// Bytes in the journal now (emptied at each checkpoint).
    pub fn journal_bytes(&self) -> u64 {
        self.journal.lock().len()
    }

    /// Apply everything committed so far, make sled's own files durable and empty the journal.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let (tx, rx) = sync_channel(1);
        self.send(Job::Checkpoint(Some(tx)))?;
        rx.recv().map_err(|_| StoreError::ApplierStopped)?
    }
}

/// The applier thread: copy committed groups into sled, in commit order.
fn apply_loop(t: &Trees, journal: &Mutex<Journal>, backlog: &Backlog, rx: &Receiver<Job>) {
    // After a failed apply the journal is kept until the next start replays it.
    let mut failed = false;
    let apply = |batch: &[Mutation], failed: &mut bool| {
        if let Err(e) = t.apply(batch) {
            tracing::error!(error = %e, "cannot apply a committed group to sled; it stays in the journal and is replayed at the next start");
            *failed = true;
        }
        backlog.applied(batch.len());
    };
    while let Ok(job) = rx.recv() {
        match job {
            Job::Apply(batch) => apply(&batch, &mut failed),
            Job::Checkpoint(reply) => {
                // Every journaled group was queued under this lock, so once it is held the
                // rest of the queue holds all groups not yet applied.
                let mut j = journal.lock();
                let mut waiting = reply.into_iter().collect::<Vec<_>>();
                while let Ok(job) = rx.try_recv() {
                    match job {
                        Job::Apply(batch) => apply(&batch, &mut failed),
                        Job::Checkpoint(r) => waiting.extend(r),
                    }
                }
                let result = if failed {
                    Err(StoreError::Unapplied)
                } else {
                    t.sync().and_then(|()| j.clear())
                };
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "checkpoint failed");
                }
                for w in waiting {
                    let _ = w.send(result.clone());
                }
            }
        }
    }
}

/// A failed write into sled.
fn write(e: sled::Error) -> StoreError {
    StoreError::sled("cannot apply a group to sled", e)
}

impl Trees {
    /// Copy one group into sled, key by key. Not as a `sled::Batch`: sled makes a batch
    /// atomic by sealing and writing its in-memory log buffer before and after it (two writes
    /// and syncs by its I/O threads per batch, most of the store's CPU per allowed call), and
    /// holds one epoch guard over the whole batch, so nothing it replaces is freed until the end
    /// (gigabytes for a group of thousands of calls). Atomicity is the journal's job: a group
    /// stays in the journal until a checkpoint has synced sled, and applying one again after a
    /// crash writes the same keys with the same values.
    fn apply(&self, batch: &[Mutation]) -> Result<(), StoreError> {
        for m in batch {
            match m {
                Mutation::Call(r) => {
                    let key = uuid::Uuid::parse_str(&r.id)
                        .map_err(|_| StoreError::BadId(r.id.to_string()))?;
                    let key = key.as_bytes().as_slice();
                    self.calls
                        .insert(key, serde_json::to_vec(r)?)
                        .map_err(write)?;
                    if r.is_open() {
                        self.pending.insert(key, &[][..]).map_err(write)?;
                    } else if r.hold.is_some() {
                        // Only a held call was ever in the open index.
                        self.pending.remove(key).map_err(write)?;
                    }
                }
                Mutation::Audit(e) => {
                    let seq = e.seq.to_be_bytes();
                    self.audit
                        .insert(seq, serde_json::to_vec(e)?)
                        .map_err(write)?;
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
                        self.audit_idx.insert(k, &[][..]).map_err(write)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Flush sled and `fsync` every one of its files.
    fn sync(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map_err(|e| StoreError::sled("cannot flush the store", e))?;
        sync_tree(&self.dir.join("sled"))
    }

    fn decode(&self, v: &[u8]) -> Result<AuditEntry, StoreError> {
        serde_json::from_slice(v)
            .map_err(|e| StoreError::corrupt("a stored audit entry is not valid JSON", e))
    }

    fn entry(&self, seq: u64) -> Result<Option<AuditEntry>, StoreError> {
        self.audit
            .get(seq.to_be_bytes())
            .map_err(read)?
            .map(|v| self.decode(&v))
            .transpose()
    }

    /// Sequence numbers matching every index filter, newest first, at most `limit`; `None`
    /// when the filter uses no index.
    fn indexed(&self, f: &AuditFilter, limit: usize) -> Result<Option<Vec<u64>>, StoreError> {
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
            match c.next().transpose().map_err(read)? {
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
                    match c.next().transpose().map_err(read)? {
                        Some(k) => *h = seq_of(&k),
                        None => break 'merge,
                    }
                }
                continue;
            }
            for ((c, h), p) in cursors.iter_mut().zip(heads.iter_mut()).zip(&prefixes) {
                if *h <= low {
                    continue;
                }
                // Behind: step (cheap), and after 16 steps jump straight to `low` (a sparse filter would
                // otherwise walk a dense one key by key).
                let mut steps = 0;
                while *h > low {
                    if steps == 16 {
                        let mut end = p.clone();
                        end.extend_from_slice(&low.to_be_bytes());
                        *c = self.audit_idx.range(p.clone()..=end).keys().rev();
                    }
                    steps += 1;
                    match c.next().transpose().map_err(read)? {
                        Some(k) => *h = seq_of(&k),
                        None => break 'merge,
                    }
                }
            }
        }
        Ok(Some(out))
    }
}

impl Engine for SledEngine {
    fn commit(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        let json = serde_json::to_vec(&batch)?;
        // Outside the journal's lock: a checkpoint on the applier takes it.
        if !self.backlog.reserve(batch.len()) {
            return Err(StoreError::ApplierStopped);
        }
        let n = batch.len();
        let mut journal = self.journal.lock();
        // Queued under the journal's lock, so a checkpoint sees every journaled group.
        let queued = journal
            .append(&[json])
            .and_then(|()| self.send(Job::Apply(batch)));
        if let Err(e) = queued {
            self.backlog.applied(n);
            return Err(e);
        }
        if journal.len() > CHECKPOINT_BYTES {
            self.send(Job::Checkpoint(None))?;
        }
        Ok(())
    }

    fn call(&self, id: &str) -> Result<Option<CallRecord>, StoreError> {
        let Ok(key) = uuid::Uuid::parse_str(id) else {
            return Ok(None);
        };
        self.t
            .calls
            .get(key.as_bytes())
            .map_err(read)?
            .map(|v| decode_record(&v))
            .transpose()
    }

    fn open(&self) -> Result<Vec<CallRecord>, StoreError> {
        let mut out = Vec::new();
        for key in self.t.pending.iter().keys() {
            let key = key.map_err(read)?;
            if let Some(v) = self.t.calls.get(&key).map_err(read)? {
                out.push(decode_record(&v)?);
            }
        }
        Ok(out)
    }

    fn audit_head(&self) -> Result<(u64, String), StoreError> {
        match self.t.audit.last().map_err(read)? {
            Some((_, v)) => {
                let e = self.t.decode(&v)?;
                Ok((e.seq, e.hash))
            }
            None => Ok((0, GENESIS.to_string())),
        }
    }

    fn audit_query(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = f.limit.unwrap_or(100);
        let since = f.since_ms.unwrap_or(0);
        let mut out = Vec::new();
        match self.t.indexed(f, limit)? {
            Some(seqs) => {
                for seq in seqs {
                    let Some(e) = self.t.entry(seq)? else {
                        continue;
                    };
                    if e.at_ms < since {
                        break;
                    }
                    out.push(e);
                }
            }
            None => {
                for item in self.t.audit.iter().values().rev() {
                    let e = self.t.decode(&item.map_err(read)?)?;
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

    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        let Some(from) = after.checked_add(1) else {
            return Ok(out);
        };
        for item in self.t.audit.range(from.to_be_bytes()..).values() {
            if out.len() >= limit {
                break;
            }
            out.push(self.t.decode(&item.map_err(read)?)?);
        }
        Ok(out)
    }

    fn audit_scan(&self, visit: &mut dyn FnMut(AuditEntry) -> bool) -> Result<(), StoreError> {
        for item in self.t.audit.iter().values() {
            if !visit(self.t.decode(&item.map_err(read)?)?) {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for SledEngine {
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "cannot checkpoint the store on close; the journal is replayed at the next start");
        }
        if let Some((tx, handle)) = self.applier.lock().take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_shared::Outcome;

    #[test]
    fn commits_wait_while_the_applier_is_a_full_backlog_behind() {
        let b = Arc::new(Backlog::default());
        assert!(b.reserve(BACKLOG_MAX));
        let waiter = |n: usize| {
            let (b, (tx, rx)) = (b.clone(), std::sync::mpsc::channel());
            std::thread::spawn(move || tx.send(b.reserve(n)));
            rx
        };
        let next = waiter(10);
        assert!(
            next.recv_timeout(Duration::from_millis(300)).is_err(),
            "waits while the backlog is full"
        );
        b.applied(100);
        assert_eq!(next.recv_timeout(Duration::from_secs(5)), Ok(true));
        // A group larger than the bound is let through alone once the backlog is empty.
        b.applied(BACKLOG_MAX);
        assert!(b.reserve(BACKLOG_MAX * 2));
        // Nobody makes room once the applier has stopped: the commit fails instead of hanging.
        let stuck = waiter(1);
        assert!(stuck.recv_timeout(Duration::from_millis(300)).is_err());
        b.stop();
        assert_eq!(stuck.recv_timeout(Duration::from_secs(5)), Ok(false));
    }
    use crate::chain::verify;
    use crate::testing::record;
    use crate::{Backend, Store, Writes};

    async fn filled(dir: &Path, n: u64) -> Arc<SledEngine> {
        let backend = Arc::new(SledEngine::open(dir).expect("open"));
        let store = Store::open(backend.clone()).await.expect("store");
        for i in 0..n {
            let o = if i % 4 == 0 {
                Outcome::Pending
            } else {
                Outcome::Allowed
            };
            store.write(Arc::new(record(i, o)), Writes::Both).await;
        }
        store.flush().await;
        // Reads trail commits by the applier; a checkpoint waits for it.
        backend.checkpoint().expect("checkpoint");
        backend
    }

    async fn reopen(dir: &Path) -> SledEngine {
        // The writer task's handle is dropped asynchronously; sled's lock goes with it.
        for _ in 0..100 {
            if let Ok(b) = SledEngine::open(dir) {
                return b;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        SledEngine::open(dir).expect("reopen")
    }

    #[tokio::test]
    async fn the_chain_verifies_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = filled(dir.path(), 20).await;
        assert_eq!(verify(&*b, None, None).expect("verify").entries, 20);
        assert_eq!(b.open().expect("open").len(), 5);
        drop(b);
        let b = reopen(dir.path()).await;
        assert_eq!(verify(&b, None, None).expect("verify").entries, 20);
    }

    #[tokio::test]
    async fn an_edited_entry_breaks_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = filled(dir.path(), 10).await;
        let key = 4u64.to_be_bytes();
        let mut e = b.t.entry(4).expect("read").expect("entry");
        e.outcome = Outcome::Approved;
        b.t.audit
            .insert(key, serde_json::to_vec(&e).expect("json"))
            .expect("tamper");
        let err = verify(&*b, None, None).expect_err("tampered").to_string();
        assert!(err.contains("entry 4") && err.contains("edited"), "{err}");
    }

    #[tokio::test]
    async fn removed_and_reordered_entries_break_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = filled(dir.path(), 10).await;
        b.t.audit.remove(6u64.to_be_bytes()).expect("remove");
        let err = verify(&*b, None, None).expect_err("removed").to_string();
        assert!(err.contains("entry 7 follows entry 5"), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        let b = filled(dir.path(), 10).await;
        let (e2, e3) = (
            b.t.entry(2).expect("r").expect("e"),
            b.t.entry(3).expect("r").expect("e"),
        );
        let mut s2 = e3.clone();
        s2.seq = 2;
        let mut s3 = e2.clone();
        s3.seq = 3;
        b.t.audit
            .insert(2u64.to_be_bytes(), serde_json::to_vec(&s2).expect("j"))
            .expect("w");
        b.t.audit
            .insert(3u64.to_be_bytes(), serde_json::to_vec(&s3).expect("j"))
            .expect("w");
        assert!(verify(&*b, None, None).is_err());

        let dir = tempfile::tempdir().expect("tempdir");
        let b = filled(dir.path(), 10).await;
        // A cut tail leaves a valid, shorter chain; an anchor kept elsewhere catches it.
        let anchor = verify(&*b, None, None).expect("verify");
        b.t.audit.remove(10u64.to_be_bytes()).expect("remove");
        assert_eq!(verify(&*b, None, None).expect("shorter chain").entries, 9);
        let err = verify(&*b, Some((10, &anchor.head)), None)
            .expect_err("anchored")
            .to_string();
        assert!(err.contains("anchored entry 10 is gone"), "{err}");
    }

    #[tokio::test]
    async fn filtered_queries_intersect_indexes_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = filled(dir.path(), 60).await;
        let f = AuditFilter {
            client: Some("c1".into()),
            tool: Some("t0".into()),
            limit: Some(5),
            ..AuditFilter::default()
        };
        let got = b.audit_query(&f).expect("query");
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|e| e.client == "c1" && e.tool == "t0"));
        assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
        // n ≡ 1 (mod 3) and n ≡ 0 (mod 2): n ≡ 4 (mod 6); the newest is n = 58, seq 59.
        assert_eq!(got.last().map(|e| e.seq), Some(59));
        let pending = b
            .audit_query(&AuditFilter {
                status: Some(Outcome::Pending),
                limit: Some(1000),
                ..AuditFilter::default()
            })
            .expect("query");
        assert_eq!(pending.len(), 15);
        let none = b
            .audit_query(&AuditFilter {
                client: Some("nobody".into()),
                ..AuditFilter::default()
            })
            .expect("query");
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn a_journal_left_by_a_crash_is_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let b = SledEngine::open(dir.path()).expect("open");
            // Commit only to the journal, as if the process died before sled got the group.
            let r = record(1, Outcome::Pending);
            let json = serde_json::to_vec(&vec![Mutation::Call(Arc::new(r))]).expect("json");
            b.journal.lock().append(&[json]).expect("append");
            std::mem::forget(b);
        }
        // sled's lock is held by the forgotten handle's file, so open a copy of the directory.
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(dir.path(), copy.path());
        let b = SledEngine::open(copy.path()).expect("reopen");
        assert_eq!(b.open().expect("open").len(), 1);
        assert_eq!(b.journal.lock().len(), 0, "the replayed journal is emptied");
    }

    fn copy_dir(from: &Path, to: &Path) {
        for e in std::fs::read_dir(from).expect("read_dir") {
            let e = e.expect("entry");
            let dest = to.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                std::fs::create_dir_all(&dest).expect("mkdir");
                copy_dir(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), dest).expect("copy");
            }
        }
    }
}
