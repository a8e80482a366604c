//! Brokers that stop for good: every broker marks itself alive in `tollgate_nodes` every few
//! seconds, and one that finds another silent for longer than `node_timeout` adopts its open
//! calls, each by one conditional update of its row, so exactly one survivor takes each call.
//!
//! The adopter sees them through as after a restart of its own: pending calls wait for their
//! decision (a task's client polls the adopter, a stream's client resumes there with
//! `Last-Event-ID`), a call approved but never claimed is forwarded, a claimed one is closed as
//! outcome unknown. A broker wrongly thought dead (paused longer than the timeout) keeps its
//! clients, but the claim lets only one of the two forward an approved call.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tollgate_shared::clock::now_ms;
use tollgate_shared::{CallRecord, Outcome};

use super::{Pool, decode};
use crate::{Adopted, StoreError};

/// Mark this broker alive and adopt the calls of silent ones, until the receiver goes away.
pub(super) async fn run(
    pool: Arc<Pool>,
    node: Arc<str>,
    timeout: Duration,
    to: mpsc::Sender<Adopted>,
) {
    let mut tick = tokio::time::interval((timeout / 5).max(Duration::from_millis(200)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        if to.is_closed() {
            return;
        }
        match round(&pool, &node, timeout).await {
            Ok(adopted) => {
                failing = false;
                for a in adopted {
                    if to.send(a).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot mark this broker alive in PostgreSQL (or adopt silent brokers' calls); trying again");
                }
                failing = true;
            }
        }
    }
}

/// One heartbeat, and the calls of every node silent for longer than `timeout`.
async fn round(pool: &Pool, node: &str, timeout: Duration) -> Result<Vec<Adopted>, StoreError> {
    let now = now_ms() as i64;
    let mut conn = pool.get().await?;
    conn.execute(
        "INSERT INTO tollgate_nodes (node, seen_ms) VALUES ($1, $2)
         ON CONFLICT (node) DO UPDATE SET seen_ms = EXCLUDED.seen_ms",
        &[&node, &now],
    )
    .await
    .map_err(|e| StoreError::pg("mark this broker alive", e))?;
    let cutoff = now - timeout.as_millis() as i64;
    let silent = conn
        .query(
            "SELECT node FROM tollgate_nodes WHERE seen_ms < $1 AND node <> $2",
            &[&cutoff, &node],
        )
        .await
        .map_err(|e| StoreError::pg("look for silent brokers", e))?;
    let mut out = Vec::new();
    for row in silent {
        let dead: String = row.get(0);
        let tx = conn
            .transaction()
            .await
            .map_err(|e| StoreError::pg("begin adopting calls", e))?;
        // Still silent (it may have come back since the query), and gone from the list, so
        // no other survivor adopts the same calls.
        let gone = tx
            .execute(
                "DELETE FROM tollgate_nodes WHERE node = $1 AND seen_ms < $2",
                &[&dead, &cutoff],
            )
            .await
            .map_err(|e| StoreError::pg("take a silent broker's place", e))?;
        if gone == 0 {
            continue;
        }
        let rows = tx
            .query(
                "UPDATE tollgate_calls SET node = $1 WHERE open AND node = $2 RETURNING record, claimed",
                &[&node, &dead],
            )
            .await
            .map_err(|e| StoreError::pg("adopt a silent broker's calls", e))?;
        tx.commit()
            .await
            .map_err(|e| StoreError::pg("commit adopting calls", e))?;
        let mut adopted = Adopted {
            from: dead,
            ..Adopted::default()
        };
        let mut records: Vec<(Arc<CallRecord>, bool)> = Vec::with_capacity(rows.len());
        for r in rows {
            records.push((Arc::new(decode(r.get(0))?), r.get(1)));
        }
        records.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        for (record, claimed) in records {
            match (record.outcome, claimed) {
                (Outcome::Pending, _) => adopted.pending.push(record),
                (_, true) => adopted.unfinished.push(record),
                (_, false) => adopted.unsent.push(record),
            }
        }
        tracing::warn!(
            from = %adopted.from,
            pending = adopted.pending.len(),
            approved = adopted.unsent.len() + adopted.unfinished.len(),
            "a broker has been silent for longer than node_timeout: this broker adopts its open calls"
        );
        out.push(adopted);
    }
    Ok(out)
}
