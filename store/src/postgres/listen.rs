//! Hearing of the other brokers' changes: one connection that `LISTEN`s on the brokers'
//! channel, turning each notification into a [`Remote`] change for the queue.
//!
//! Notifications are not kept by PostgreSQL for a listener that is not connected, so after
//! every (re)connection the listener first reads every held call again and sends it as
//! [`Remote::Resync`]; the queue settles whatever it missed from that.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tollgate_policy::approval::Change;
use tollgate_shared::{CallRecord, Outcome};

use super::{CHANNEL, Pool, decode};
use crate::{Decided, Remote, StoreError};

/// The longest wait between two attempts to reconnect.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Listen until the queue goes away, reconnecting whenever the connection is lost.
pub(super) async fn run(pool: Arc<Pool>, node: Arc<str>, to: mpsc::Sender<Remote>) {
    let mut backoff = Duration::from_millis(100);
    let mut lost = false;
    loop {
        match session(&pool, &node, &to).await {
            Ok(()) => return,
            Err(e) => {
                if !lost {
                    tracing::warn!(error = %e, "lost the PostgreSQL connection that hears other brokers' changes; reconnecting, then reading the held calls again");
                }
                lost = true;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if to.is_closed() {
            return;
        }
    }
}

/// One connection's life: `LISTEN`, read the held calls, then follow notifications until the
/// connection ends (an error) or the queue goes away (`Ok`).
async fn session(pool: &Pool, node: &str, to: &mpsc::Sender<Remote>) -> Result<(), StoreError> {
    let mut config = pool.settings().config.clone();
    config.application_name("tollgate-broker listener");
    let (note_tx, mut notes) = mpsc::unbounded_channel();
    let (client, driver) = pool.settings().open(config, Some(note_tx)).await?;
    let _stop = AbortOnDrop(driver.abort_handle());
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| StoreError::pg("listen for other brokers' changes", e))?;
    // Listening already, so nothing committed from now on is missed; read what came before.
    let rows = client
        .query(
            "SELECT record, node FROM tollgate_calls WHERE open AND outcome = 'pending' ORDER BY id",
            &[],
        )
        .await
        .map_err(|e| StoreError::pg("read the held calls", e))?;
    let mut others = Vec::new();
    let mut pending = HashSet::with_capacity(rows.len());
    for row in rows {
        let record = Arc::new(decode(row.get(0))?);
        pending.insert(record.id.clone());
        if row.get::<_, &str>(1) != node {
            others.push(record);
        }
    }
    if to.send(Remote::Resync { others, pending }).await.is_err() {
        return Ok(());
    }
    tracing::info!("following the other brokers' changes in PostgreSQL");
    while let Some(payload) = notes.recv().await {
        let mut parts = payload.splitn(3, '\t');
        let (Some(origin), Some(kind), Some(ids)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if origin == node {
            continue;
        }
        if kind == "rules" {
            if to.send(Remote::Rules).await.is_err() {
                return Ok(());
            }
            continue;
        }
        let ids: Vec<&str> = ids.split(',').collect();
        let rows = client
            .query(
                "SELECT record FROM tollgate_calls WHERE id = ANY($1) ORDER BY id",
                &[&ids],
            )
            .await
            .map_err(|e| StoreError::pg("read calls another broker changed", e))?;
        for row in rows {
            let record: Arc<CallRecord> = Arc::new(decode(row.get(0))?);
            // The call as it is now, which may be past what the notification says (its next
            // notification follows): what is read decides what the queue is told.
            let pending = record.outcome == Outcome::Pending;
            let change = match kind {
                "held" if pending => Remote::Held(record),
                "held" => continue,
                "counted" | "decided" => Remote::Decided(Decided {
                    record,
                    change: if pending {
                        Change::Counted
                    } else {
                        Change::Final
                    },
                }),
                "closed" => Remote::Closed(record),
                _ => continue,
            };
            if to.send(change).await.is_err() {
                return Ok(());
            }
        }
    }
    match driver.await {
        Ok(Err(e)) => Err(StoreError::pg("follow other brokers' changes", e)),
        _ => Err(StoreError::Closed),
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
