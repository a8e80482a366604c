//! When held calls expire: one timer task for the whole queue walks a sorted set of deadlines,
//! since a sleeping task per call made every held call several KiB larger
//! (`docs/performance.md`).

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tollgate_shared::clock::now_ms;
use tollgate_shared::sync::Mutex;
use tollgate_shared::{CallRecord, Name, Outcome};

use super::Queue;

/// The queue's deadlines.
#[derive(Default)]
pub(super) struct Expiry {
    due: Mutex<Due>,
    /// Wakes the timer task when a call that expires sooner than all others arrives.
    changed: Arc<Notify>,
}

#[derive(Default)]
struct Due {
    /// (expiry in ms since the epoch, call id), soonest first.
    at: BTreeSet<(u64, Name)>,
    /// The timer task has been started.
    running: bool,
}

impl Expiry {
    /// Calls waiting for their deadline.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.due.lock().at.len()
    }

    /// A call left the queue: it no longer expires.
    pub(super) fn forget(&self, record: &CallRecord) {
        if let Some(h) = &record.hold {
            self.due
                .lock()
                .at
                .remove(&(h.expires_ms, record.id.clone()));
        }
    }
}

impl Queue {
    /// Expire call `id` at `at` (ms since the epoch) unless it is resolved first.
    pub(super) fn expire_at(self: &Arc<Self>, at: u64, id: Name) {
        let (start, sooner) = {
            let mut due = self.expiry.due.lock();
            let sooner = due.at.first().is_none_or(|(first, _)| at < *first);
            due.at.insert((at, id));
            (!std::mem::replace(&mut due.running, true), sooner)
        };
        if start {
            tokio::spawn(expire_loop(
                Arc::downgrade(self),
                self.expiry.changed.clone(),
            ));
        } else if sooner {
            self.expiry.changed.notify_one();
        }
    }
}

/// The queue's timer: expires held calls when their time comes. Holds the queue weakly, so it
/// ends with it.
async fn expire_loop(queue: Weak<Queue>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = now_ms();
        let due = {
            let Some(q) = queue.upgrade() else { return };
            let mut due = q.expiry.due.lock();
            let mut out = Vec::new();
            while due.at.first().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, id)) = due.at.pop_first() {
                    out.push(id);
                }
            }
            out
        };
        if !due.is_empty() {
            let Some(q) = queue.upgrade() else { return };
            // Closed concurrently, so calls that expire together share group commits.
            futures_util::stream::iter(due)
                .for_each_concurrent(256, |id| {
                    let q = &q;
                    async move {
                        // A decision being saved wins; if saving it fails the call is pending
                        // again and expires on a later look.
                        if !q.close(&id, Outcome::Expired, None).await && q.get(&id).is_some() {
                            q.expiry.due.lock().at.insert((now_ms() + 1000, id));
                        }
                    }
                })
                .await;
        }
        let next = {
            let Some(q) = queue.upgrade() else { return };
            q.expiry.due.lock().at.first().map(|(at, _)| *at)
        };
        match next {
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}
