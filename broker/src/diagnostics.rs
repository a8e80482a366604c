//! Checks of the machine a broker is about to run on: how fast its disk holds calls durably
//! (`tollgate-broker check-disk`) and how fast audit searches are with many entries
//! (`check-audit`). Both run the real queue and store in a scratch directory on that disk, no
//! network. The benchmarks call them too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_policy::identity::Identity;
use tollgate_shared::audit::AuditFilter;
use tollgate_shared::console::{Role, Target};
use tollgate_shared::{Outcome, Verdict};
use tollgate_store::sled_engine::SledEngine;
use tollgate_store::{Backend, Engine, Store, StoreError, Writes};

use crate::queue::{HoldError, Queue, sample_call};

/// Why a check could not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The scratch directory (or a file in it) could not be made or written.
    #[error("cannot use {}: {cause}", dir.display())]
    Scratch {
        /// The directory.
        dir: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A call could not be held.
    #[error("cannot hold a call: {0}")]
    Hold(#[from] HoldError),
    /// The bulk rejection did not decide every call.
    #[error("the bulk rejection failed: {0}")]
    Rejection(String),
}

/// What `check-disk` measured.
#[derive(Debug, Clone)]
pub struct DiskCheck {
    /// Single-record `fdatasync`s per second: what each hold would cost without group commit.
    pub fdatasyncs_per_s: f64,
    /// Calls held at once.
    pub holds: usize,
    /// Durable holds per second through the queue, store and journal.
    pub holds_per_s: f64,
    /// One decision rejecting them all, until every waiter has its answer.
    pub reject_all: Duration,
}

/// One timed audit search.
#[derive(Debug, Clone)]
pub struct Search {
    /// What it searched for.
    pub query: &'static str,
    /// Entries it returned.
    pub found: usize,
    /// Median time of 11 runs.
    pub median: Duration,
}

/// What `check-audit` measured.
#[derive(Debug, Clone)]
pub struct AuditCheck {
    /// Entries written first.
    pub records: usize,
    /// How long writing them took.
    pub fill: Duration,
    /// The searches.
    pub searches: Vec<Search>,
}

/// A scratch directory inside `dir` (created if needed), removed when dropped.
fn scratch_dir(dir: &Path, prefix: &str) -> Result<tempfile::TempDir, CheckError> {
    let failed = |cause| CheckError::Scratch {
        dir: dir.to_path_buf(),
        cause,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(dir)
        .map_err(failed)
}

fn runtime() -> Result<tokio::runtime::Runtime, CheckError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CheckError::Runtime)
}

/// How fast can this disk hold calls durably?
///
/// Measures, in a scratch directory on the disk of `dir`: single-record `fdatasync`s per
/// second, then `records` calls held at once through the real queue, store and journal,
/// and one decision rejecting them all until every waiter has its answer.
pub fn check_disk(dir: &Path, records: usize) -> Result<DiskCheck, CheckError> {
    let scratch = scratch_dir(dir, "tollgate-check-disk-")?;
    let fdatasyncs_per_s = {
        let path = scratch.path().join("probe");
        let failed = |cause| CheckError::Scratch {
            dir: path.clone(),
            cause,
        };
        let mut f = std::fs::File::create(&path).map_err(failed)?;
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(1) {
            f.write_all(b"0123456789abcdef {\"probe\":true}\n")
                .and_then(|()| f.sync_data())
                .map_err(failed)?;
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    let (elapsed, reject_all) = runtime()?.block_on(async {
        let engine = Arc::new(SledEngine::open(&scratch.path().join("store"))?);
        let queue = Queue::new(Store::open(engine).await?, Duration::from_secs(60));
        let start = Instant::now();
        let holds: Vec<_> = (0..records)
            .map(|i| {
                let q = queue.clone();
                tokio::spawn(async move { q.hold(sample_call(i)).await })
            })
            .collect();
        let mut waiting = Vec::with_capacity(records);
        for h in holds {
            let held = h
                .await
                .map_err(|e| CheckError::Rejection(format!("a hold task failed: {e}")))?;
            waiting.push(held?);
        }
        let elapsed = start.elapsed();
        let start = Instant::now();
        let ids = waiting.iter().map(|w| w.record.id.to_string()).collect();
        let who = Identity {
            name: "check-disk".into(),
            role: Role::Admin,
            servers: None,
            signing: Default::default(),
        };
        let results = queue
            .decide(&who, &Target::Ids { ids }, Verdict::Reject, None)
            .await;
        if let Some(failed) = results.iter().find(|r| !r.ok) {
            return Err(CheckError::Rejection(format!("{failed:?}")));
        }
        for w in waiting {
            let _ = w.done.await;
        }
        Ok::<_, CheckError>((elapsed, start.elapsed()))
    })?;
    Ok(DiskCheck {
        fdatasyncs_per_s,
        holds: records,
        holds_per_s: records as f64 / elapsed.as_secs_f64(),
        reject_all,
    })
}

/// Fill a scratch store with `records` audit entries (mixed statuses, 20 tools, 50 clients)
/// through the real store, then time searches like an operator's: two filters, one filter,
/// none, with the default limit of 100 and with 10000.
pub fn check_audit(dir: &Path, records: usize) -> Result<AuditCheck, CheckError> {
    let scratch = scratch_dir(dir, "tollgate-check-audit-")?;
    let statuses = [
        Outcome::Allowed,
        Outcome::Allowed,
        Outcome::Allowed,
        Outcome::Allowed,
        Outcome::Blocked,
        Outcome::Approved,
        Outcome::Rejected,
        Outcome::RateLimited,
    ];
    let engine = Arc::new(SledEngine::open(&scratch.path().join("store"))?);
    let fill = Instant::now();
    runtime()?.block_on(async {
        let store = Store::open(engine.clone()).await?;
        for i in 0..records {
            let mut call = sample_call(i);
            call.outcome = statuses[i % statuses.len()];
            call.tool = format!("tool_{}", (i / 8) % 20).into();
            call.client = format!("agent-{}", (i / 3) % 50).into();
            call.hold = None;
            store.write(Arc::new(call), Writes::Audit).await;
        }
        store.flush().await;
        Ok::<_, CheckError>(())
    })?;
    engine.checkpoint()?;
    let fill = fill.elapsed();
    let queries: Vec<(&'static str, AuditFilter)> = vec![
        (
            "status + tool, newest 100",
            AuditFilter {
                status: Some(Outcome::Rejected),
                tool: Some("tool_7".into()),
                ..AuditFilter::default()
            },
        ),
        (
            "status + client, newest 100",
            AuditFilter {
                status: Some(Outcome::Blocked),
                client: Some("agent-17".into()),
                ..AuditFilter::default()
            },
        ),
        (
            "status + tool, newest 10000",
            AuditFilter {
                status: Some(Outcome::Rejected),
                tool: Some("tool_7".into()),
                limit: Some(10_000),
                ..AuditFilter::default()
            },
        ),
        (
            "status only, newest 100",
            AuditFilter {
                status: Some(Outcome::Approved),
                ..AuditFilter::default()
            },
        ),
        ("no filter, newest 100", AuditFilter::default()),
    ];
    let mut searches = Vec::new();
    for (query, filter) in &queries {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..11 {
            let t = Instant::now();
            found = engine.audit_query(filter)?.len();
            times.push(t.elapsed());
        }
        times.sort_unstable();
        searches.push(Search {
            query,
            found,
            median: times[times.len() / 2],
        });
    }
    Ok(AuditCheck {
        records,
        fill,
        searches,
    })
}
