//! Seeing a held call through: waiting for its resolution while keeping the client's stream
//! alive, then answering it with the refusal or with the upstream's answer.
//!
//! A driver task ([`run`]) owns a call whose client waits on its request: it waits for the
//! queue's resolution, emits `notifications/progress` every keep-alive interval when the client
//! sent a `progressToken`, forwards the call upstream on approval (renumbering the upstream's
//! progress so the client's values keep increasing) and ends the feed with the final response.
//! On 2026-07-28 a closed stream is a cancel: when the last listener goes, the call is
//! cancelled (or, if already forwarded, the upstream request is dropped, which cancels it
//! there). A call whose client polls a task needs no task while it waits.

use std::sync::Arc;

use std::time::Duration;
use tracing::Instrument;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tollgate_policy::guards::Scrub;
use tollgate_shared::clock::now_ms;
use tollgate_shared::{CallRecord, JsonText, Outcome};
use tollgate_store::Writes;

use super::feed::{Feed, Feeds, Flavor};
use crate::jsonrpc;
use crate::queue::{Queue, Resolution, Waiting};
use crate::reply::Reply;
use crate::sse;
use crate::upstream::{Inbound, Parked, Upstream, UpstreamError};

/// Everything a driver needs to see one held call through.
pub struct Drive {
    /// Where the call waits for its decision.
    pub queue: Arc<Queue>,
    /// Every held call's feed, where this one's is registered.
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
    pub task: Option<Flavor>,
    /// Keeps the call's secrets out of its recorded error (`None`: DLP is off).
    pub scrub: Option<Scrub>,
}

/// Register a feed for a held call and see it through; returns the feed.
///
/// A call whose client waits on its request gets a driver task (keep-alives, a closed stream,
/// a restart's grace period all need watching). A task-augmented call needs nothing until it
/// is resolved, so it gets no task while it waits: the queue runs its continuation when it is
/// decided (a sleeping task per call was most of what a pending task cost; see
/// `docs/performance.md`).
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
        scrub,
    } = d;
    let inbound = inbound.park(|name| upstream.forwards_header(name));
    let record = &waiting.record;
    let span = crate::gateway::call_span(record);
    let feed = Feed::new(record, task, inbound.modern && task.is_none());
    feeds.insert(feed.clone());
    let rest = After {
        queue,
        feeds,
        inbound,
        upstream,
        task,
        token: None,
        progress: 0,
        scrub,
    };
    if task.is_some() && grace.is_none() {
        // Nobody streams a task's feed (its client polls), so it needs no priming event.
        let (queue, f) = (rest.queue.clone(), feed.clone());
        queue.then(waiting, move |(resolution, done)| {
            tokio::spawn(rest.finish(f, resolution, done).instrument(span));
        });
    } else {
        // A priming event (empty data, with an id) lets a client whose stream drops before
        // anything else arrives resume with Last-Event-ID; SDKs skip empty events.
        feed.push(Bytes::new(), false);
        tokio::spawn(run(rest, waiting, keepalive, grace, feed.clone()).instrument(span));
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
        Resolution::OutcomeUnknown => format!(
            "Outcome unknown: the call to {call} was approved, but the broker stopped while forwarding it, so it may or may not have run. It was not forwarded again; check {} before retrying.",
            record.server
        ),
        Resolution::Approved => String::new(),
    }
}

/// After a restart: an approved call the broker was forwarding when it stopped may or may not
/// have run, and is never forwarded again. Its client is told so when it resumes its stream
/// (`Last-Event-ID`) or polls its task: a tool error, and for a task the SEP-2848 disposition
/// `outcome-unknown`.
pub fn outcome_unknown(feeds: &Arc<Feeds>, record: &CallRecord) {
    let modern = record
        .protocol_version
        .as_deref()
        .is_some_and(jsonrpc::is_modern);
    let task = record
        .hold
        .as_ref()
        .is_some_and(|h| h.mode == tollgate_shared::HoldMode::Task)
        .then(|| super::tasks::flavor_of(record));
    let feed = Feed::new(record, task, modern && task.is_none());
    feed.resolved(Resolution::OutcomeUnknown);
    let text = refusal_text(record, &Resolution::OutcomeUnknown);
    feed.finish_with(&jsonrpc::tool_error(
        record.request_id.clone(),
        &text,
        modern,
    ));
    feeds.insert(feed.clone());
    feeds.remove_later(feed.id.clone());
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
    task: Option<Flavor>,
    /// The client's progress token, when keep-alives were sent on it.
    token: Option<Box<Value>>,
    /// Progress notifications sent so far.
    progress: u64,
    scrub: Option<Scrub>,
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
            scrub,
        } = self;
        let scrub = |e: Option<String>| match &scrub {
            Some(s) => e.map(|e| s.text(e)),
            None => e,
        };
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
        // Read back, then claimed in the store: whatever happens after the claim, no broker
        // sends the call again.
        let ready = match inbound.unpark() {
            // Cannot happen: the body was parsed when the call arrived.
            Err(e) => Err(format!("the held request could not be read back: {e}")),
            Ok(inbound) => match queue.store().claim(&done.id).await {
                Ok(()) => Ok(inbound),
                Err(e) => {
                    tracing::error!(call = %done.id, error = %e, "an approved call could not be claimed for forwarding; not sent");
                    Err(format!("the approved call was not forwarded: {e}"))
                }
            },
        };
        let mut inbound = match ready {
            Ok(inbound) => inbound,
            Err(why) => {
                feed.finish_with(&jsonrpc::error(id, jsonrpc::UPSTREAM_ERROR, &why));
                done.timings.completed_ms = Some(now_ms());
                done.error = scrub(Some(why));
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
        done.error = scrub(error);
        queue.store().write(Arc::new(done), Writes::Record).await;
        feeds.remove_later(feed.id.clone());
    }
}

/// Copy the upstream's answer into the feed; returns an error description if forwarding failed.
async fn relay(
    answer: Result<Reply, UpstreamError>,
    feed: &Feed,
    token: Option<&Value>,
    base: u64,
    id: &Value,
) -> Option<String> {
    let reply = match answer {
        Ok(reply) => reply,
        Err(e) => {
            let message = e.message(id.clone());
            feed.finish_with(&message);
            return message.get("error").map(|e| e.to_string());
        }
    };
    let status = reply.status();
    let is_sse = reply.is_event_stream();
    let mut body = reply.into_frames();
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
