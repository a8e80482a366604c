//! How a client waits for a held call on its open request, and how the answer reaches it.
//!
//! Each held stream-mode call gets a [`Feed`]: the ordered events its client should see (progress
//! while waiting, then whatever the upstream sends once the call is approved, or the refusal).
//! A driver task ([`drive`]) owns the call: it waits for the queue's resolution, emits
//! `notifications/progress` every keep-alive interval when the client sent a `progressToken`,
//! forwards the call upstream on approval (renumbering the upstream's progress so the client's
//! values keep increasing) and ends the feed with the final response.
//!
//! Clients are listeners on the feed. The POST that made the call is the first one; on the
//! handshake revisions a client whose stream dropped comes back with `GET` and
//! `Last-Event-ID: tg-<call id>-<n>` and gets every event after `n`, and a dropped stream is not
//! a cancel. On 2026-07-28 a closed stream is a cancel: when the last listener goes, the call is
//! cancelled (or, if already forwarded, the upstream request is dropped, which cancels it there).
//! Idle listeners get an SSE comment every keep-alive interval so proxies keep the stream open.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tollgate_shared::sync::Mutex;
use tollgate_shared::{CallRecord, JsonText, Name, Outcome};

use crate::frontend::{self, Upstream};
use crate::jsonrpc::{self, Kind};
use crate::queue::{Queue, Resolution, Waiting};
use crate::sse;
use crate::upstream::{Inbound, Parked};
use tollgate_shared::clock::now_ms;
use tollgate_store::Writes;

/// How long a finished feed stays available for a client that resumes late.
const RETAIN: Duration = Duration::from_secs(300);

#[derive(Default)]
struct FeedState {
    events: Vec<Bytes>,
    done: bool,
    listeners: usize,
    end: Option<Resolution>,
    updated_ms: u64,
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
    pub task: Option<crate::tasks::Flavor>,
    modern: bool,
    st: Mutex<FeedState>,
    changed: Notify,
    deserted: Notify,
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
    fn push(&self, data: Bytes, last: bool) {
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

    fn resolved(&self, end: Resolution) {
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

    fn finish_with(&self, message: &Value) {
        self.push(Bytes::from(message.to_string()), true);
    }

    fn listeners(&self) -> usize {
        self.st.lock().listeners
    }

    fn attach(self: &Arc<Self>) -> Listener {
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
struct Listener {
    feed: Arc<Feed>,
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

/// Finished feeds waiting out [`RETAIN`], oldest first (one sweeper task for all of them; a
/// sleeping task per feed cost about 1 KiB each).
#[derive(Default)]
struct Ending {
    due: std::collections::VecDeque<(tokio::time::Instant, Name)>,
    sweeping: bool,
}

impl Feeds {
    fn insert(&self, feed: Arc<Feed>) {
        self.map.lock().insert(feed.id.clone(), feed);
    }

    fn remove_later(self: &Arc<Self>, id: Name) {
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

    /// The feed a `Last-Event-ID` of ours points into, and the position after it.
    pub fn for_event_id(&self, last_event_id: &str) -> Option<(Arc<Feed>, usize)> {
        let (id, n) = last_event_id.strip_prefix("tg-")?.rsplit_once('-')?;
        let n = n.parse().ok()?;
        Some((self.map.lock().get(id)?.clone(), n))
    }
}

/// Everything a driver needs to see one held call through.
pub struct Drive {
    /// The queue.
    pub queue: Arc<Queue>,
    /// The feeds registry.
    pub feeds: Arc<Feeds>,
    /// The held call's queue handle (and its record).
    pub waiting: Waiting,
    /// The request to forward on approval.
    pub inbound: Inbound,
    /// Where to forward it.
    pub upstream: Upstream,
    /// Interval of keep-alives.
    pub keepalive: Duration,
    /// Cancel if no client is attached after this long (recovered calls); `None`: only the
    /// revision's rules apply.
    pub grace: Option<Duration>,
    /// The client polls a task instead of waiting on its request.
    pub task: Option<crate::tasks::Flavor>,
}

/// Register a feed for a held call and see it through; returns the feed.
///
/// A call whose client waits on its request gets a driver task (keep-alives, a closed stream,
/// a restart's grace period all need watching). A task-augmented call needs nothing until it
/// is resolved, so it gets no task while it waits: the queue runs its continuation when it is
/// decided (a sleeping task per call was most of what 100 000 pending tasks cost).
pub fn start(d: Drive) -> Arc<Feed> {
    let Drive {
        queue,
        feeds,
        waiting,
        inbound,
        upstream,
        keepalive,
        grace,
        task,
    } = d;
    let inbound = inbound.park(|name| upstream.forwards_header(name));
    let record = &waiting.record;
    let feed = Arc::new(Feed {
        id: record.id.clone(),
        client: record.client.clone(),
        server: record.server.clone(),
        tool: record.tool.clone(),
        received_ms: record.timings.received_ms,
        expires_ms: record.hold.as_ref().map_or(0, |h| h.expires_ms),
        task,
        modern: inbound.modern && task.is_none(),
        st: Mutex::new(FeedState::default()),
        changed: Notify::new(),
        deserted: Notify::new(),
    });
    feeds.insert(feed.clone());
    let rest = After {
        queue,
        feeds,
        inbound,
        upstream,
        task,
        token: None,
        progress: 0,
    };
    if task.is_some() && grace.is_none() {
        // Nobody streams a task's feed (its client polls), so it needs no priming event.
        let (queue, f) = (rest.queue.clone(), feed.clone());
        queue.then(waiting, move |(resolution, done)| {
            tokio::spawn(rest.finish(f, resolution, done));
        });
    } else {
        // A priming event (empty data, with an id) lets a client whose stream drops before
        // anything else arrives resume with Last-Event-ID; SDKs skip empty events.
        feed.push(Bytes::new(), false);
        tokio::spawn(run(rest, waiting, keepalive, grace, feed.clone()));
    }
    feed
}

/// The text a refused held call's client sees.
pub fn refusal_text(record: &CallRecord, r: &Resolution) -> String {
    let call = format!("{}/{}", record.server, record.tool);
    match r {
        Resolution::Rejected { by, reason } => match reason {
            Some(why) => format!("Rejected by {by}: {why}. The call to {call} was not run."),
            None => format!("Rejected by {by}. The call to {call} was not run."),
        },
        Resolution::Expired => format!(
            "Timed out waiting for approval: nobody approved this call to {call} before it expired, so it was not run. Try again later or ask an approver."
        ),
        Resolution::Cancelled => {
            format!("The call to {call} was cancelled while it waited for approval.")
        }
        Resolution::Abandoned => format!(
            "The call to {call} was abandoned: the broker restarted while it waited for approval and could not deliver the answer. It was not run."
        ),
        Resolution::Approved => String::new(),
    }
}

async fn run(
    mut rest: After,
    mut waiting: Waiting,
    keepalive: Duration,
    grace: Option<Duration>,
    feed: Arc<Feed>,
) {
    let record = waiting.record.clone();
    let queue = rest.queue.clone();
    let token = record
        .hold
        .as_ref()
        .and_then(|h| h.progress_token.as_ref())
        .filter(|_| rest.task.is_none())
        .map(JsonText::value);
    let mut progress = 0u64;
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(started + keepalive, keepalive);
    let mut grace_end = grace.map(|g| started + g);
    let (resolution, done) = loop {
        tokio::select! {
            r = &mut waiting.done => {
                break r.unwrap_or_else(|_| (Resolution::Abandoned, record.clone()));
            }
            _ = tick.tick() => {
                if let Some(tok) = &token {
                    progress += 1;
                    let held = started.elapsed().as_secs();
                    let note = json!({
                        "jsonrpc": "2.0",
                        "method": "notifications/progress",
                        "params": {
                            "progressToken": tok,
                            "progress": progress,
                            "message": format!("Waiting for approval (rule \"{}\", held {held} s, call {})", record.rule.name, record.id),
                        }
                    });
                    feed.push(Bytes::from(note.to_string()), false);
                }
            }
            _ = feed.deserted.notified(), if feed.modern => {
                Box::pin(queue.close(&record.id, Outcome::Cancelled, Some("the client closed its request stream".into()))).await;
            }
            _ = tokio::time::sleep_until(grace_end.unwrap_or(started)), if grace_end.is_some() => {
                if feed.listeners() == 0 {
                    Box::pin(queue.close(&record.id, Outcome::Abandoned, Some("no client came back for the answer after the broker restarted".into()))).await;
                } else {
                    // The client came back: from now on the call waits like any other.
                    grace_end = None;
                }
            }
        }
    };
    rest.token = token.map(Box::new);
    rest.progress = progress;
    // Boxed: the waiting state above is what every held call keeps while it waits, and the
    // forwarding futures would otherwise make it several KiB larger.
    Box::pin(rest.finish(feed, resolution, done)).await;
}

/// What a held call needs once it is resolved.
struct After {
    queue: Arc<Queue>,
    feeds: Arc<Feeds>,
    inbound: Parked,
    upstream: Upstream,
    task: Option<crate::tasks::Flavor>,
    /// The client's progress token, when keep-alives were sent on it.
    token: Option<Box<Value>>,
    /// Progress notifications sent so far.
    progress: u64,
}

impl After {
    /// Answer the client: the refusal, or the upstream's answer to the forwarded call.
    async fn finish(self, feed: Arc<Feed>, resolution: Resolution, done: Arc<CallRecord>) {
        let After {
            queue,
            feeds,
            inbound,
            upstream,
            task,
            token,
            progress,
        } = self;
        let id = done.request_id.clone();
        feed.resolved(resolution.clone());
        if resolution != Resolution::Approved {
            let text = refusal_text(&done, &resolution);
            feed.finish_with(&jsonrpc::tool_error(id, &text, inbound.modern));
            feeds.remove_later(feed.id.clone());
            return;
        }
        // Forwarded as an SSE request whatever the client accepts, so upstream progress can be
        // relayed; the feed answers the client in the form it asked for.
        let mut done = Arc::unwrap_or_clone(done);
        let mut inbound = match inbound.unpark() {
            Ok(inbound) => inbound,
            Err(e) => {
                // Cannot happen: the body was parsed when the call arrived.
                let why = format!("the held request could not be read back: {e}");
                feed.finish_with(&jsonrpc::error(id, jsonrpc::UPSTREAM_ERROR, &why));
                done.error = Some(why);
                queue.store().write(Arc::new(done), Writes::Record).await;
                feeds.remove_later(feed.id.clone());
                return;
            }
        };
        if task.is_some() {
            // The broker is the task receiver: the upstream gets a plain call.
            if let Some(params) = inbound
                .value
                .get_mut("params")
                .and_then(Value::as_object_mut)
            {
                params.remove("task");
            }
            inbound.raw = Bytes::from(inbound.value.to_string());
        }
        let forwarded = async {
            let response = upstream.post(inbound).await;
            relay(response, &feed, token.as_deref(), progress + 1, &id).await
        };
        let error = if feed.modern {
            tokio::select! {
                e = forwarded => e,
                _ = feed.deserted.notified() => Some("the client closed its request stream; the upstream request was dropped".into()),
            }
        } else {
            forwarded.await
        };
        done.timings.completed_ms = Some(now_ms());
        done.error = error;
        queue.store().write(Arc::new(done), Writes::Record).await;
        feeds.remove_later(feed.id.clone());
    }
}

/// Copy the upstream's answer into the feed; returns an error description if forwarding failed.
async fn relay(
    response: Response<Body>,
    feed: &Feed,
    token: Option<&Value>,
    base: u64,
    id: &Value,
) -> Option<String> {
    let status = response.status();
    let is_sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let mut body = response.into_body().into_data_stream();
    if !is_sse {
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => bytes.extend_from_slice(&c),
                Err(e) => {
                    let why = format!("upstream answer broke off: {e}");
                    feed.finish_with(&jsonrpc::error(id.clone(), jsonrpc::UPSTREAM_ERROR, &why));
                    return Some(why);
                }
            }
        }
        return match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.get("jsonrpc").is_some() => {
                let err = v.get("error").map(|e| e.to_string());
                feed.finish_with(&v);
                err
            }
            _ => {
                let why = format!(
                    "upstream answered HTTP {status} without a JSON-RPC message: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                );
                feed.finish_with(&jsonrpc::error(id.clone(), jsonrpc::UPSTREAM_ERROR, &why));
                Some(why)
            }
        };
    }
    let mut parser = sse::Parser::default();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let why = format!("upstream stream broke off: {e}");
                feed.finish_with(&jsonrpc::error(id.clone(), jsonrpc::UPSTREAM_ERROR, &why));
                return Some(why);
            }
        };
        for ev in parser.feed(&chunk) {
            let Ok(mut msg) = serde_json::from_str::<Value>(&ev.data) else {
                continue;
            };
            let is_response = msg.get("method").is_none()
                && (msg.get("result").is_some() || msg.get("error").is_some());
            if is_response {
                let err = msg.get("error").map(|e| e.to_string());
                feed.finish_with(&msg);
                return err;
            }
            renumber_progress(&mut msg, token, base);
            feed.push(Bytes::from(msg.to_string()), false);
        }
    }
    let why = "the upstream stream ended without an answer".to_string();
    feed.finish_with(&jsonrpc::error(id.clone(), jsonrpc::UPSTREAM_ERROR, &why));
    Some(why)
}

/// Shift the upstream's progress for our token past the values sent while the call was held.
fn renumber_progress(msg: &mut Value, token: Option<&Value>, base: u64) {
    if jsonrpc::method(msg) != Some("notifications/progress") {
        return;
    }
    let Some(params) = msg.get_mut("params") else {
        return;
    };
    if token.is_none() || params.get("progressToken") != token {
        return;
    }
    for key in ["progress", "total"] {
        if let Some(v) = params.get(key).and_then(Value::as_f64) {
            let shifted = base as f64 + v;
            params[key] = if shifted.fract() == 0.0 {
                json!(shifted as u64)
            } else {
                json!(shifted)
            };
        }
    }
}

fn sse_response(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The events of `feed` after position `after`, as an SSE body with keep-alive comments.
fn listen(feed: Arc<Feed>, after: usize, keepalive: Duration) -> Response<Body> {
    let listener = feed.attach();
    let stream = futures_util::stream::unfold(
        (listener, after, false),
        move |(listener, mut next, ended)| async move {
            if ended {
                return None;
            }
            let feed = listener.feed.clone();
            loop {
                let notified = feed.changed.notified();
                {
                    let st = feed.st.lock();
                    if next < st.events.len() {
                        let data = st.events[next].clone();
                        next += 1;
                        let last = st.done && next == st.events.len();
                        let frame = sse::encode(Some(&format!("tg-{}-{next}", feed.id)), &data);
                        return Some((Ok::<_, std::io::Error>(frame), (listener, next, last)));
                    }
                    if st.done {
                        return None;
                    }
                }
                if tokio::time::timeout(keepalive, notified).await.is_err() {
                    return Some((
                        Ok(Bytes::from_static(b": keep-alive\n\n")),
                        (listener, next, false),
                    ));
                }
            }
        },
    );
    sse_response(Body::from_stream(stream))
}

/// Answer the POST that made a held call: an SSE stream, or (for a client that only accepts
/// JSON) the final response once there is one.
pub fn respond(feed: Arc<Feed>, sse_ok: bool, keepalive: Duration) -> Response<Body> {
    if sse_ok {
        listen(feed, 0, keepalive)
    } else {
        let body = async move {
            let _listener = feed.attach();
            Ok::<_, std::io::Error>(feed.last().await)
        };
        let mut r = Response::new(Body::from_stream(futures_util::stream::once(body)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// Handle a GET whose `Last-Event-ID` points into a held call's feed; `None` when it does not.
pub fn resume(
    feeds: &Feeds,
    client: &str,
    last_event_id: &str,
    keepalive: Duration,
) -> Option<Response<Body>> {
    let (feed, after) = feeds.for_event_id(last_event_id)?;
    if *feed.client != *client {
        return Some(frontend::status_error(
            StatusCode::FORBIDDEN,
            "this stream belongs to a call made by another client",
        ));
    }
    Some(listen(feed, after, keepalive))
}

/// Rebuild the request of a recovered call so it can be forwarded after a restart.
pub fn rebuild(record: &CallRecord) -> Inbound {
    let mut params = json!({"name": record.tool, "arguments": record.arguments});
    let modern = record
        .protocol_version
        .as_deref()
        .is_some_and(jsonrpc::is_modern);
    match record.hold.as_ref().and_then(|h| h.meta.clone()) {
        // The envelope as the client sent it (revision, capabilities, progress token).
        Some(meta) => params["_meta"] = meta.value(),
        // Stored before envelopes were kept: the parts the record has.
        None => {
            if let Some(tok) = record.hold.as_ref().and_then(|h| h.progress_token.clone()) {
                params["_meta"] = json!({"progressToken": tok});
            }
            if modern && let Some(v) = &record.protocol_version {
                params["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!(v);
            }
        }
    }
    let value = json!({"jsonrpc": "2.0", "id": record.request_id, "method": "tools/call", "params": params});
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    for (name, v) in [
        ("mcp-session-id", record.session.as_deref()),
        ("mcp-protocol-version", record.protocol_version.as_deref()),
    ] {
        if let Some(v) = v.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
        }
    }
    if modern {
        headers.insert("mcp-method", HeaderValue::from_static("tools/call"));
        if let Ok(v) = HeaderValue::from_str(&record.tool) {
            headers.insert("mcp-name", v);
        }
    }
    Inbound {
        raw: Bytes::from(value.to_string()),
        value,
        kind: Kind::Request,
        headers,
        session: record.session.as_deref().map(str::to_string),
        sse: true,
        modern,
        ticket: None,
        recovered: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_progress_is_shifted_past_the_held_values() {
        let tok = json!("t1");
        let mut m = json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t1","progress":0,"total":3}});
        renumber_progress(&mut m, Some(&tok), 5);
        assert_eq!(m["params"]["progress"], json!(5));
        assert_eq!(m["params"]["total"], json!(8));
        let mut other = json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"x","progress":1}});
        renumber_progress(&mut other, Some(&tok), 5);
        assert_eq!(other["params"]["progress"], json!(1));
    }

    fn feed(id: &str) -> Arc<Feed> {
        Arc::new(Feed {
            id: id.into(),
            client: "c".into(),
            server: "db".into(),
            tool: "drop".into(),
            received_ms: 0,
            expires_ms: 0,
            task: None,
            modern: false,
            st: Mutex::new(FeedState::default()),
            changed: Notify::new(),
            deserted: Notify::new(),
        })
    }

    #[test]
    fn a_recovered_call_is_rebuilt_with_the_envelope_its_client_sent() {
        let meta = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"extensions": {}},
            "progressToken": 4
        });
        let rec: CallRecord = serde_json::from_value(json!({
            "id": "x", "outcome": "pending", "rule": {"index": 1, "name": "r"}, "client": "c",
            "server": "db", "tool": "drop", "request_id": 9, "arguments": {"t": 1},
            "protocol_version": "2026-07-28",
            "hold": {"mode": "task", "expires_ms": 1, "quorum": 1, "progress_token": 4, "meta": meta},
            "timings": {"received_ms": 0, "decided_ms": 0}
        }))
        .expect("record");
        let inbound = rebuild(&rec);
        assert_eq!(inbound.value["params"]["_meta"], meta);
        assert_eq!(inbound.value["params"]["arguments"], json!({"t": 1}));
        assert_eq!(inbound.value["id"], json!(9));
        assert!(inbound.modern);
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

    #[test]
    fn refusals_say_who_and_why_and_timeouts_differ_from_rejections() {
        let rec: CallRecord = serde_json::from_value(json!({
            "id": "x", "outcome": "pending", "rule": {"index": 1, "name": "r"}, "client": "c",
            "server": "db", "tool": "drop", "request_id": 1, "arguments": {},
            "timings": {"received_ms": 0, "decided_ms": 0}
        }))
        .expect("record");
        let r = refusal_text(
            &rec,
            &Resolution::Rejected {
                by: "alice".into(),
                reason: Some("use staging".into()),
            },
        );
        assert_eq!(
            r,
            "Rejected by alice: use staging. The call to db/drop was not run."
        );
        assert!(
            refusal_text(&rec, &Resolution::Expired).starts_with("Timed out waiting for approval")
        );
    }
}
