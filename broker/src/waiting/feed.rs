//! A held call's feed: the ordered events its client should see, and every feed by call id.
//!
//! Progress while the call waits, then whatever the upstream sends once it is approved, or the
//! refusal, end with the final response. Clients are listeners on the feed (see
//! [`super::stream`]); a finished feed stays a while for a client that resumes late.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Notify;
use tollgate_shared::clock::now_ms;
use tollgate_shared::sync::Mutex;
use tollgate_shared::{CallRecord, Name};

use crate::queue::Resolution;

/// Which tasks protocol a client polls a held call with (see [`super::tasks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// 2025-11-25: `params.task`, `tasks/get` + `tasks/result`.
    Legacy,
    /// 2026-07-28 tasks extension: `resultType: "task"`, results in `tasks/get`.
    Extension,
}

/// How long a finished feed stays available for a client that resumes late.
const RETAIN: Duration = Duration::from_secs(300);

#[derive(Default)]
pub(super) struct FeedState {
    pub(super) events: Vec<Bytes>,
    pub(super) done: bool,
    pub(super) listeners: usize,
    pub(super) end: Option<Resolution>,
    pub(super) updated_ms: u64,
}

/// The events of one held call.
pub struct Feed {
    /// The call id (and task id).
    pub id: Name,
    /// The client that made the call (only it may resume).
    pub client: Name,
    /// The call's server.
    pub server: Name,
    /// The call's tool.
    pub tool: Name,
    /// When the call arrived (ms since the epoch).
    pub received_ms: u64,
    /// When it expires unless decided (ms since the epoch; 0 for a call never held). A
    /// finished feed is kept a while for late clients, so it keeps these few fields, not the
    /// record.
    pub expires_ms: u64,
    /// Set when the client waits by polling a task rather than on its request.
    pub task: Option<Flavor>,
    /// The client speaks a revision where a closed stream is a cancel.
    pub(super) modern: bool,
    pub(super) st: Mutex<FeedState>,
    pub(super) changed: Notify,
    pub(super) deserted: Notify,
}

/// Where a feed stands, for `tasks/get`.
pub struct FeedStatus {
    /// The final response, once there is one.
    pub last: Option<Bytes>,
    /// How the call was resolved, once it was.
    pub end: Option<Resolution>,
    /// When anything last changed (ms since the epoch).
    pub updated_ms: u64,
}

impl Feed {
    /// The feed of a held call; `modern` when its client speaks a revision where closing the
    /// stream cancels the call.
    pub fn new(record: &CallRecord, task: Option<Flavor>, modern: bool) -> Arc<Feed> {
        Arc::new(Feed {
            id: record.id.clone(),
            client: record.client.clone(),
            server: record.server.clone(),
            tool: record.tool.clone(),
            received_ms: record.timings.received_ms,
            expires_ms: record.hold.as_ref().map_or(0, |h| h.expires_ms),
            task,
            modern,
            st: Mutex::new(FeedState::default()),
            changed: Notify::new(),
            deserted: Notify::new(),
        })
    }

    pub(super) fn push(&self, data: Bytes, last: bool) {
        {
            let mut st = self.st.lock();
            if st.done {
                return;
            }
            st.events.push(data);
            st.done |= last;
            st.updated_ms = now_ms();
        }
        self.changed.notify_waiters();
    }

    pub(super) fn resolved(&self, end: Resolution) {
        let mut st = self.st.lock();
        st.end = Some(end);
        st.updated_ms = now_ms();
    }

    /// A consistent view of the feed's progress.
    pub fn status(&self) -> FeedStatus {
        let st = self.st.lock();
        FeedStatus {
            last: st.done.then(|| st.events.last().cloned()).flatten(),
            end: st.end.clone(),
            updated_ms: st.updated_ms.max(self.received_ms),
        }
    }

    pub(super) fn finish_with(&self, message: &Value) {
        self.push(Bytes::from(message.to_string()), true);
    }

    pub(super) fn listeners(&self) -> usize {
        self.st.lock().listeners
    }

    pub(super) fn attach(self: &Arc<Self>) -> Listener {
        self.st.lock().listeners += 1;
        Listener { feed: self.clone() }
    }

    /// Wait until the feed holds its final response, and return it.
    pub async fn last(self: &Arc<Self>) -> Bytes {
        loop {
            let notified = self.changed.notified();
            {
                let st = self.st.lock();
                if st.done
                    && let Some(last) = st.events.last()
                {
                    return last.clone();
                }
            }
            notified.await;
        }
    }
}

/// A client attached to a feed; dropping it may cancel the call (2026-07-28).
pub(super) struct Listener {
    pub(super) feed: Arc<Feed>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let gone = {
            let mut st = self.feed.st.lock();
            st.listeners -= 1;
            st.listeners == 0 && !st.done
        };
        if gone {
            self.feed.deserted.notify_one();
        }
    }
}

/// Every live feed by call id.
#[derive(Default)]
pub struct Feeds {
    map: Mutex<HashMap<Name, Arc<Feed>>>,
    ending: Mutex<Ending>,
}

/// Finished feeds waiting out [`RETAIN`], oldest first (one sweeper task for all of them, not a
/// sleeping task per feed).
#[derive(Default)]
struct Ending {
    due: std::collections::VecDeque<(tokio::time::Instant, Name)>,
    sweeping: bool,
}

impl Feeds {
    pub(super) fn insert(&self, feed: Arc<Feed>) {
        self.map.lock().insert(feed.id.clone(), feed);
    }

    pub(super) fn remove_later(self: &Arc<Self>, id: Name) {
        let start = {
            let mut ending = self.ending.lock();
            ending
                .due
                .push_back((tokio::time::Instant::now() + RETAIN, id));
            !std::mem::replace(&mut ending.sweeping, true)
        };
        if start {
            tokio::spawn(Feeds::sweep(Arc::downgrade(self)));
        }
    }

    /// Drop finished feeds as their time comes; ends when none are left (the next
    /// `remove_later` starts another) or the registry is gone.
    async fn sweep(feeds: std::sync::Weak<Feeds>) {
        loop {
            let next = {
                let Some(f) = feeds.upgrade() else { return };
                let mut ending = f.ending.lock();
                let now = tokio::time::Instant::now();
                let mut gone = Vec::new();
                while ending.due.front().is_some_and(|(at, _)| *at <= now) {
                    gone.extend(ending.due.pop_front().map(|(_, id)| id));
                }
                let next = ending.due.front().map(|(at, _)| *at);
                if next.is_none() {
                    ending.sweeping = false;
                }
                drop(ending);
                let mut map = f.map.lock();
                for id in gone {
                    map.remove(&id);
                }
                next
            };
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => return,
            }
        }
    }

    /// The feed of a call id.
    pub fn get(&self, id: &str) -> Option<Arc<Feed>> {
        self.map.lock().get(id).cloned()
    }

    /// Every feed of one client that waits as a task, oldest first.
    pub fn tasks_of(&self, client: &str) -> Vec<Arc<Feed>> {
        let mut v: Vec<_> = self
            .map
            .lock()
            .values()
            .filter(|f| *f.client == *client && f.task.is_some())
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The feed a `Last-Event-ID` of ours points into, and the position after it. An id handed
    /// out before the broker restarted counts positions in a feed that is gone: the client has
    /// seen nothing of this one, so it gets all of it.
    pub fn for_event_id(&self, last_event_id: &str) -> Option<(Arc<Feed>, usize)> {
        let (id, pos) = last_event_id.strip_prefix("tg-")?.rsplit_once('-')?;
        let n = match pos.split_once('.') {
            Some((life, n)) if life == *LIFE => n.parse().ok()?,
            _ => 0,
        };
        Some((self.map.lock().get(id)?.clone(), n))
    }
}

/// This run of the broker, as event ids carry it (`tg-<call>-<life>.<n>`): the start time in
/// hexadecimal milliseconds.
static LIFE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!("{:x}", now_ms()));

/// The event id of the `n`th event of a call's feed.
pub(super) fn event_id(call: &str, n: usize) -> String {
    format!("tg-{call}-{}.{n}", *LIFE)
}

#[cfg(test)]
#[test]
fn event_ids_from_an_earlier_run_resume_from_the_start() {
    let feeds = Feeds::default();
    let rec: CallRecord = serde_json::from_value(serde_json::json!({
        "id": "0190c1a2-0000-7000-8000-000000000000", "outcome": "pending",
        "rule": {"index": 1, "name": "r"}, "client": "c", "server": "db", "tool": "drop",
        "request_id": 1, "arguments": {}, "timings": {"received_ms": 0, "decided_ms": 0}
    }))
    .expect("record");
    feeds.insert(Feed::new(&rec, None, false));
    let at = |id: &str| feeds.for_event_id(id).map(|(_, n)| n);
    assert_eq!(at(&event_id(&rec.id, 3)), Some(3));
    assert_eq!(at(&format!("tg-{}-1.3", rec.id)), Some(0), "another run");
    assert_eq!(
        at(&format!("tg-{}-3", rec.id)),
        Some(0),
        "ids without a run"
    );
    assert_eq!(at(&format!("tg-{}.3", rec.id)), None, "not ours");
    assert_eq!(at("tg-nope-1.3"), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(id: &str) -> Arc<Feed> {
        let rec: CallRecord = serde_json::from_value(serde_json::json!({
            "id": id, "outcome": "pending", "rule": {"index": 1, "name": "r"}, "client": "c",
            "server": "db", "tool": "drop", "request_id": 1, "arguments": {},
            "timings": {"received_ms": 0, "decided_ms": 0}
        }))
        .expect("record");
        Feed::new(&rec, None, false)
    }

    #[tokio::test(start_paused = true)]
    async fn finished_feeds_stay_for_the_retention_time_then_go() {
        let feeds = Arc::new(Feeds::default());
        for id in ["a", "b", "c"] {
            feeds.insert(feed(id));
        }
        feeds.remove_later("a".into());
        tokio::time::sleep(RETAIN / 2).await;
        feeds.remove_later("b".into());
        assert!(
            feeds.get("a").is_some(),
            "kept while a late client may resume"
        );
        tokio::time::sleep(RETAIN / 2 + Duration::from_millis(1)).await;
        assert!(feeds.get("a").is_none());
        assert!(feeds.get("b").is_some());
        tokio::time::sleep(RETAIN / 2).await;
        assert!(feeds.get("b").is_none());
        assert!(
            !feeds.ending.lock().sweeping,
            "the sweeper ends when nothing is left"
        );
        // A later feed starts it again.
        feeds.remove_later("c".into());
        tokio::time::sleep(RETAIN + Duration::from_millis(1)).await;
        assert!(feeds.get("c").is_none());
    }
}
