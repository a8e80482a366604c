//! The embedded store: every intercepted call, in sled.
//!
//! Records are keyed by their UUID v7, so keys sort by time and a listing is a range scan.
//! Writes go through a [`Recorder`]: a bounded channel to one writer task that batches whatever
//! has queued up into a single sled batch and one flush, so a burst of calls costs one disk
//! sync rather than one each. On shutdown the recorder drains its queue before the store closes.

use std::path::Path;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use tollgate_shared::CallRecord;

/// The store: a sled database with a `calls` tree.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    calls: sled::Tree,
}

impl Store {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let db = sled::Config::new().path(dir).open().map_err(|e| match e {
            sled::Error::Io(ref io)
                if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock") =>
            {
                anyhow::anyhow!(
                    "the store at {} is in use by another process (is a broker running with this data_dir?): {e}",
                    dir.display()
                )
            }
            e => anyhow::anyhow!("cannot open the store at {}: {e}", dir.display()),
        })?;
        let calls = db
            .open_tree("calls")
            .context("cannot open the calls tree")?;
        Ok(Store { db, calls })
    }

    /// Write records and make them durable.
    pub fn put_batch(&self, records: &[CallRecord]) -> anyhow::Result<()> {
        let mut batch = sled::Batch::default();
        for r in records {
            let key = uuid::Uuid::parse_str(&r.id).context("record id is not a UUID")?;
            batch.insert(key.as_bytes().as_slice(), serde_json::to_vec(r)?);
        }
        self.calls.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// The newest `limit` records, oldest first.
    pub fn recent(&self, limit: usize) -> anyhow::Result<Vec<CallRecord>> {
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.calls.iter().rev().take(limit) {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v).context("a stored record is not valid JSON")?);
        }
        out.reverse();
        Ok(out)
    }
}

enum Op {
    Put(Box<CallRecord>),
    Flush(oneshot::Sender<()>),
}

/// Handle for queueing record writes; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Op>,
}

impl Recorder {
    /// Start the writer task for `store`.
    pub fn start(store: Store) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Op>(65_536);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            let mut waiters = Vec::new();
            while let Some(op) = rx.recv().await {
                let mut next = Some(op);
                while let Some(op) = next.take() {
                    match op {
                        Op::Put(r) => batch.push(*r),
                        Op::Flush(w) => waiters.push(w),
                    }
                    if batch.len() < 4096 {
                        next = rx.try_recv().ok();
                    }
                }
                let records = std::mem::take(&mut batch);
                let store = store.clone();
                let written = tokio::task::spawn_blocking(move || store.put_batch(&records)).await;
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot write call records to the store")
                    }
                    Err(e) => tracing::error!(error = %e, "store writer task failed"),
                }
                for w in waiters.drain(..) {
                    let _ = w.send(());
                }
            }
        });
        Recorder { tx }
    }

    /// Queue a record (a later record with the same id replaces it).
    pub async fn put(&self, record: CallRecord) {
        if self.tx.send(Op::Put(Box::new(record))).await.is_err() {
            tracing::error!("the store writer has stopped; a call record was not written");
        }
    }

    /// Wait until everything queued so far is on disk.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_shared::{Outcome, RuleRef, Timings};

    fn record(n: u64) -> CallRecord {
        CallRecord {
            id: uuid::Uuid::now_v7().to_string(),
            outcome: Outcome::Allowed,
            rule: RuleRef {
                index: 0,
                name: "default".into(),
            },
            reason: None,
            client: "c".into(),
            server: "s".into(),
            tool: format!("t{n}"),
            request_id: serde_json::json!(n),
            session: None,
            protocol_version: None,
            arguments: serde_json::json!({}),
            timings: Timings::default(),
            error: None,
        }
    }

    #[tokio::test]
    async fn recorded_calls_survive_reopening_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            let rec = Recorder::start(store);
            for n in 0..10 {
                rec.put(record(n)).await;
            }
            rec.flush().await;
        }
        // sled releases its lock when the last handle drops; give the writer task a moment.
        let store = loop {
            match Store::open(dir.path()) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        let got = store.recent(5).expect("recent");
        let tools: Vec<_> = got.iter().map(|r| r.tool.as_str()).collect();
        assert_eq!(tools, ["t5", "t6", "t7", "t8", "t9"]);
    }
}
