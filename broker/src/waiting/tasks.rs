//! The broker as task receiver: a held call that the client waits for by polling a task.
//!
//! Two protocol generations define tasks. On 2025-11-25 a client asks for a task by putting
//! `task` in the `tools/call` params (after the server advertised `tasks.requests.tools.call`)
//! and polls `tasks/get`, then fetches `tasks/result`. On 2026-07-28 the tasks extension
//! (`io.modelcontextprotocol/tasks`) is server-directed: a client that declares the extension
//! in its per-request capabilities may get `resultType: "task"` back from any call, and
//! `tasks/get` carries the result once the task completes. The broker answers for every task
//! whose id is one of its held calls, whatever the upstream supports, and follows the shape
//! of SEP-2848 (asynchronous approval): a refusal is a `completed` task whose result has
//! `isError: true`, and every completed result carries
//! `io.modelcontextprotocol/tool-approval-disposition`.

use std::sync::Arc;

use serde_json::{Value, json};
use tollgate_shared::clock::rfc3339_millis;
use tollgate_shared::{CallRecord, Outcome};

pub use super::feed::Flavor;
use super::feed::{Feed, Feeds};
use crate::jsonrpc;
use crate::queue::{Queue, Resolution};

/// The extension identifier of 2026-07-28 tasks.
pub const EXTENSION: &str = "io.modelcontextprotocol/tasks";
/// SEP-2848's extension identifier.
pub const APPROVAL_EXTENSION: &str = "io.modelcontextprotocol/tool-approval";
const DISPOSITION: &str = "io.modelcontextprotocol/tool-approval-disposition";
const RELATED: &str = "io.modelcontextprotocol/related-task";
/// Suggested polling interval.
const POLL_MS: u64 = 1000;

/// Did this `tools/call` ask for (or allow) a task?
pub fn requested(request: &Value, modern: bool) -> Option<Flavor> {
    if modern {
        request
            .pointer("/params/_meta/io.modelcontextprotocol~1clientCapabilities/extensions")
            .and_then(|e| e.get(EXTENSION))
            .map(|_| Flavor::Extension)
    } else {
        request
            .pointer("/params/task")
            .filter(|t| t.is_object())
            .map(|_| Flavor::Legacy)
    }
}

/// The flavor a stored call used.
pub fn flavor_of(record: &CallRecord) -> Flavor {
    if record
        .protocol_version
        .as_deref()
        .is_some_and(jsonrpc::is_modern)
    {
        Flavor::Extension
    } else {
        Flavor::Legacy
    }
}

fn waiting_message(record: &CallRecord) -> String {
    let who = match record.hold.as_ref().map(|h| h.approvers.as_slice()) {
        Some(names) if !names.is_empty() => names.join(" or "),
        _ => "an approver".into(),
    };
    let quorum = record.hold.as_ref().map_or(1, |h| h.quorum);
    let how_many = if quorum > 1 {
        format!(" ({quorum} approvals needed)")
    } else {
        String::new()
    };
    let expires = record
        .hold
        .as_ref()
        .map(|h| {
            if h.expires_ms == u64::MAX {
                "; it does not expire".to_string()
            } else {
                format!("; expires {}", rfc3339_millis(h.expires_ms))
            }
        })
        .unwrap_or_default();
    format!(
        "Waiting for approval by {who}{how_many}: rule \"{}\" holds {}/{}{expires}",
        record.rule.name, record.server, record.tool
    )
}

struct View {
    status: &'static str,
    message: String,
    result: Option<Value>,
    error: Option<Value>,
    updated_ms: u64,
}

fn disposition(end: Option<&Resolution>, result: &Value) -> &'static str {
    match end {
        Some(Resolution::Approved) => {
            if result.get("isError") == Some(&Value::Bool(true)) {
                "execution-error"
            } else {
                "approved-executed"
            }
        }
        Some(Resolution::OutcomeUnknown) => "outcome-unknown",
        _ => "denied-not-executed",
    }
}

fn view(feed: &Feed, queue: &Queue) -> View {
    let st = feed.status();
    let last = st
        .last
        .as_ref()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok());
    match last {
        None => {
            let message = match queue.get(&feed.id) {
                Some(rec) => waiting_message(&rec),
                None => format!(
                    "Approved; running {}/{} on the upstream",
                    feed.server, feed.tool
                ),
            };
            View {
                status: "working",
                message,
                result: None,
                error: None,
                updated_ms: st.updated_ms,
            }
        }
        Some(msg) => {
            if st.end == Some(Resolution::Cancelled) {
                return View {
                    status: "cancelled",
                    message: "Cancelled while it waited for approval; the call was not run".into(),
                    result: None,
                    error: None,
                    updated_ms: st.updated_ms,
                };
            }
            if let Some(err) = msg.get("error") {
                return View {
                    status: "failed",
                    message: err
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("the upstream failed")
                        .to_string(),
                    result: None,
                    error: Some(err.clone()),
                    updated_ms: st.updated_ms,
                };
            }
            let mut result = msg.get("result").cloned().unwrap_or_else(|| json!({}));
            let d = disposition(st.end.as_ref(), &result);
            if let Some(obj) = result.as_object_mut() {
                let meta = obj.entry("_meta").or_insert_with(|| json!({}));
                if let Some(m) = meta.as_object_mut() {
                    m.insert(DISPOSITION.into(), json!(d));
                    m.insert(RELATED.into(), json!({"taskId": feed.id}));
                }
            }
            let message = match d {
                "approved-executed" => "Approved and run",
                "execution-error" => "Approved and run; the tool reported an error",
                "outcome-unknown" => {
                    "Approved, but the broker stopped while running it: it may or may not have run"
                }
                _ => "Not run: the call was refused",
            };
            View {
                status: "completed",
                message: message.into(),
                result: Some(result),
                error: None,
                updated_ms: st.updated_ms,
            }
        }
    }
}

/// How long the task is kept: until its call's expiry and five minutes more; `None` (`null`
/// on the wire: unlimited) for a call that never expires.
fn ttl_ms(feed: &Feed) -> Option<u64> {
    (feed.expires_ms != u64::MAX).then(|| {
        feed.expires_ms
            .saturating_sub(feed.received_ms)
            .saturating_add(300_000)
    })
}

fn task_object(feed: &Feed, v: &View, flavor: Flavor) -> Value {
    let mut t = json!({
        "taskId": feed.id,
        "status": v.status,
        "statusMessage": v.message,
        "createdAt": rfc3339_millis(feed.received_ms),
        "lastUpdatedAt": rfc3339_millis(v.updated_ms),
    });
    match flavor {
        Flavor::Legacy => {
            t["ttl"] = json!(ttl_ms(feed));
            t["pollInterval"] = json!(POLL_MS);
        }
        Flavor::Extension => {
            t["ttlMs"] = json!(ttl_ms(feed));
            t["pollIntervalMs"] = json!(POLL_MS);
        }
    }
    t
}

/// The immediate answer to a `tools/call` that became a task.
pub fn created(feed: &Feed, queue: &Queue, request_id: Value) -> Value {
    let flavor = feed.task.unwrap_or(Flavor::Legacy);
    let v = view(feed, queue);
    let immediate = match queue.get(&feed.id) {
        Some(_) => format!(
            "This call to {}/{} is waiting for human approval (task {}). Continue with other work and check the task later.",
            feed.server, feed.tool, feed.id
        ),
        None => format!(
            "This call to {}/{} is running as task {}.",
            feed.server, feed.tool, feed.id
        ),
    };
    let result = match flavor {
        Flavor::Legacy => json!({
            "task": task_object(feed, &v, flavor),
            "_meta": {"io.modelcontextprotocol/model-immediate-response": immediate},
        }),
        Flavor::Extension => {
            let mut t = task_object(feed, &v, flavor);
            t["resultType"] = json!("task");
            t["_meta"] = json!({"io.modelcontextprotocol/model-immediate-response": immediate});
            t
        }
    };
    json!({"jsonrpc": "2.0", "id": request_id, "result": result})
}

/// What a `tasks/*` request resolved to.
pub enum Answer {
    /// Reply with this message now.
    Now(Value),
    /// `tasks/result` on a task still working: wait for this feed, then answer.
    Wait(Arc<Feed>),
}

/// Handle a `tasks/*` request if it is about one of the broker's tasks; `None` means "not
/// ours, forward it".
pub async fn handle(feeds: &Feeds, queue: &Queue, client: &str, request: &Value) -> Option<Answer> {
    let method = jsonrpc::method(request)?;
    let id = jsonrpc::id(request);
    if method == "tasks/list" {
        let tasks: Vec<Value> = feeds
            .tasks_of(client)
            .iter()
            .map(|f| task_object(f, &view(f, queue), Flavor::Legacy))
            .collect();
        return Some(Answer::Now(
            json!({"jsonrpc": "2.0", "id": id, "result": {"tasks": tasks}}),
        ));
    }
    if !matches!(method, "tasks/get" | "tasks/result" | "tasks/cancel") {
        return None;
    }
    let task_id = request.pointer("/params/taskId").and_then(Value::as_str)?;
    let feed = feeds.get(task_id)?;
    if *feed.client != *client {
        return Some(Answer::Now(jsonrpc::error(
            id,
            jsonrpc::INVALID_PARAMS,
            "this task belongs to another client",
        )));
    }
    let flavor = feed.task.unwrap_or(Flavor::Legacy);
    // A 2026-07-28 request declares its capabilities each time: polling a task needs the tasks
    // extension among them.
    if flavor == Flavor::Extension
        && jsonrpc::meta_protocol_version(request).is_some()
        && requested(request, true).is_none()
    {
        return Some(Answer::Now(jsonrpc::missing_capability(
            id,
            &format!(
                "{method} needs the {EXTENSION} extension in the request's client capabilities"
            ),
            json!({"extensions": {EXTENSION: {}}}),
        )));
    }
    match method {
        "tasks/get" => Some(Answer::Now(
            json!({"jsonrpc": "2.0", "id": id, "result": get_result(&feed, queue, flavor)}),
        )),
        "tasks/cancel" => {
            queue
                .close(
                    &feed.id,
                    Outcome::Cancelled,
                    Some("the client cancelled the task".into()),
                )
                .await;
            // Let the driver record the end before answering with the new state.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), feed.last()).await;
            let result = match flavor {
                Flavor::Legacy => task_object(&feed, &view(&feed, queue), flavor),
                Flavor::Extension => json!({}),
            };
            Some(Answer::Now(
                json!({"jsonrpc": "2.0", "id": id, "result": result}),
            ))
        }
        _ => {
            if feed.status().last.is_some() {
                Some(Answer::Now(result_answer(&feed, queue, id)))
            } else {
                Some(Answer::Wait(feed))
            }
        }
    }
}

fn get_result(feed: &Feed, queue: &Queue, flavor: Flavor) -> Value {
    let v = view(feed, queue);
    let mut t = task_object(feed, &v, flavor);
    if flavor == Flavor::Extension {
        t["resultType"] = json!("complete");
        if let Some(r) = &v.result {
            t["result"] = r.clone();
        }
        if let Some(e) = &v.error {
            t["error"] = e.clone();
        }
    }
    t
}

/// The answer to `tasks/result` once the task is terminal.
pub fn result_answer(feed: &Feed, queue: &Queue, id: Value) -> Value {
    let v = view(feed, queue);
    match (v.status, v.result, v.error) {
        ("completed", Some(r), _) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
        (_, _, Some(e)) => json!({"jsonrpc": "2.0", "id": id, "error": e}),
        _ => jsonrpc::error(
            id,
            jsonrpc::INVALID_PARAMS,
            "the task was cancelled; it has no result",
        ),
    }
}

/// Add the broker's task support to an `initialize` result (2025-11-25), keeping whatever the
/// upstream declared.
pub fn advertise_legacy(result: &mut Value) {
    let Some(caps) = result
        .get_mut("capabilities")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let tasks = caps.entry("tasks").or_insert_with(|| json!({}));
    if let Some(t) = tasks.as_object_mut() {
        t.entry("list").or_insert_with(|| json!({}));
        t.entry("cancel").or_insert_with(|| json!({}));
        let req = t.entry("requests").or_insert_with(|| json!({}));
        if let Some(r) = req.as_object_mut() {
            let tools = r.entry("tools").or_insert_with(|| json!({}));
            if let Some(tl) = tools.as_object_mut() {
                tl.entry("call").or_insert_with(|| json!({}));
            }
        }
    }
}

/// Mark tools as `optional` for tasks, so task-aware clients may call any of them as a task:
/// the broker is the task receiver and forwards a plain call, so a tool the upstream itself
/// cannot run as a task (absent or `forbidden`) still can be one here. `required` is kept.
pub fn advertise_tools(result: &mut Value) {
    let Some(tools) = result.get_mut("tools").and_then(Value::as_array_mut) else {
        return;
    };
    for t in tools {
        if let Some(obj) = t.as_object_mut() {
            let exec = obj.entry("execution").or_insert_with(|| json!({}));
            if let Some(e) = exec.as_object_mut()
                && e.get("taskSupport").and_then(Value::as_str) != Some("required")
            {
                e.insert("taskSupport".into(), json!("optional"));
            }
        }
    }
}

/// Add the tasks and tool-approval extensions to a `server/discover` result (2026-07-28).
pub fn advertise_extensions(result: &mut Value) {
    let Some(caps) = result
        .get_mut("capabilities")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let ext = caps.entry("extensions").or_insert_with(|| json!({}));
    if let Some(e) = ext.as_object_mut() {
        e.entry(EXTENSION).or_insert_with(|| json!({}));
        e.entry(APPROVAL_EXTENSION).or_insert_with(|| json!({}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_requests_are_recognised_per_revision() {
        let legacy = json!({"params": {"name": "x", "task": {"ttl": 1000}}});
        assert_eq!(requested(&legacy, false), Some(Flavor::Legacy));
        assert_eq!(requested(&json!({"params": {"name": "x"}}), false), None);
        let modern = json!({"params": {"_meta": {"io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}}}}});
        assert_eq!(requested(&modern, true), Some(Flavor::Extension));
        assert_eq!(requested(&legacy, true), None);
    }

    #[test]
    fn advertising_keeps_what_the_upstream_declared() {
        let mut init = json!({"capabilities": {"tools": {}, "tasks": {"list": {"x": 1}}}});
        advertise_legacy(&mut init);
        assert_eq!(init["capabilities"]["tasks"]["list"], json!({"x": 1}));
        assert_eq!(
            init["capabilities"]["tasks"]["requests"]["tools"]["call"],
            json!({})
        );
        let mut tools = json!({"tools": [{"name": "a"}, {"name": "b", "execution": {"taskSupport": "forbidden"}}]});
        advertise_tools(&mut tools);
        assert_eq!(tools["tools"][0]["execution"]["taskSupport"], "optional");
        assert_eq!(tools["tools"][1]["execution"]["taskSupport"], "optional");
    }
}
