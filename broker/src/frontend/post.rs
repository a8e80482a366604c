//! A POST to `/mcp/<server>`: one JSON-RPC message from a client.
//!
//! The body is checked (content type, size, JSON, JSON-RPC shape, the stateless revision's
//! mirrored headers); a client's `notifications/cancelled` for a held call and its `tasks/*`
//! requests for the broker's own tasks are answered here; a `tools/call` goes through the
//! gateway (forward, refuse, or hold and wait); everything else goes straight upstream. Answers
//! that advertise the broker's task support are edited on their way back.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::Value;
use tollgate_shared::clock::now_ms;
use tollgate_shared::{Name, Outcome};

use super::{Frontend, answered, headers, patch};
use crate::gateway::{CallContext, Intercept};
use crate::jsonrpc::{self, Kind};
use crate::queue::Waiting;
use crate::reply::{self, Reply};
use crate::upstream::{Inbound, Upstream};
use crate::waiting::{self, tasks};
use tollgate_policy::guards::Scrub;

/// Answer a `tools/call` with a task and see the call through in the background.
fn start_task(
    fe: &Frontend,
    waiting: Waiting,
    inbound: Inbound,
    upstream: Upstream,
    (flavor, scrub): (tasks::Flavor, Option<Scrub>),
) -> Reply {
    let id = jsonrpc::id(&inbound.value);
    let feed = waiting::start(waiting::Drive {
        queue: fe.gateway.queue.clone(),
        feeds: fe.feeds.clone(),
        waiting,
        inbound,
        upstream,
        keepalive: fe.keepalive,
        grace: None,
        task: Some(flavor),
        scrub,
    });
    Reply::message(
        StatusCode::OK,
        &tasks::created(&feed, &fe.gateway.queue, id),
    )
}

pub(super) async fn post(
    fe: &Frontend,
    server: &str,
    client: String,
    upstream: Upstream,
    headers: HeaderMap,
    session: Option<String>,
    body: Body,
) -> Reply {
    let received_ms = now_ms();
    if let Some(ct) = headers.get(header::CONTENT_TYPE)
        && !ct.as_bytes().starts_with(b"application/json")
    {
        return reply::status_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send JSON-RPC messages with Content-Type: application/json",
        );
    }
    let raw = match axum::body::to_bytes(body, fe.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return reply::status_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body is larger than the broker's max_body ({} bytes)",
                    fe.max_body
                ),
            );
        }
    };
    let value: Value = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(e) => {
            return reply::error(
                StatusCode::BAD_REQUEST,
                jsonrpc::PARSE_ERROR,
                Value::Null,
                &format!("request body is not valid JSON: {e}"),
            );
        }
    };
    let kind = match jsonrpc::classify(&value) {
        Ok(k) => k,
        Err(why) => {
            let id = value
                .get("id")
                .filter(|i| i.is_string() || i.is_number())
                .cloned()
                .unwrap_or(Value::Null);
            return reply::error(StatusCode::BAD_REQUEST, jsonrpc::INVALID_REQUEST, id, why);
        }
    };
    let header_version = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok());
    let meta_version = jsonrpc::meta_protocol_version(&value);
    if let Some(v) = meta_version.or(header_version)
        && !jsonrpc::KNOWN_VERSIONS.contains(&v)
    {
        return Reply::message(
            StatusCode::BAD_REQUEST,
            &jsonrpc::unsupported_version(jsonrpc::id(&value), v),
        );
    }
    let modern = meta_version
        .or(header_version)
        .is_some_and(jsonrpc::is_modern);
    if modern
        && kind == Kind::Request
        && let Err(why) = headers::check_mirrored(&headers, &value)
    {
        return reply::error(
            StatusCode::BAD_REQUEST,
            jsonrpc::HEADER_MISMATCH,
            jsonrpc::id(&value),
            &format!("Header mismatch: {why}"),
        );
    }
    let protocol_version = meta_version.or(header_version).map(tollgate_shared::intern);
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if kind == Kind::Notification
        && jsonrpc::method(&value) == Some("notifications/cancelled")
        && let Some(request_id) = value.pointer("/params/requestId")
        && let Some(held) = fe
            .gateway
            .queue
            .find_request(&client, session.as_deref(), request_id)
    {
        let why = value
            .pointer("/params/reason")
            .and_then(Value::as_str)
            .map_or_else(
                || "the client cancelled the request".to_string(),
                |r| format!("the client cancelled: {r}"),
            );
        fe.gateway
            .queue
            .close(&held, Outcome::Cancelled, Some(why))
            .await;
        return Reply::Empty(StatusCode::ACCEPTED);
    }
    if kind == Kind::Request
        && let Some(answer) = tasks::handle(&fe.feeds, &fe.gateway.queue, &client, &value).await
    {
        let reply = match answer {
            tasks::Answer::Now(v) => v,
            tasks::Answer::Wait(feed) => {
                feed.last().await;
                tasks::result_answer(&feed, &fe.gateway.queue, jsonrpc::id(&value))
            }
        };
        // The spec's protocol errors go with 400; results and other errors with 200.
        let code = reply.pointer("/error/code").and_then(Value::as_i64);
        let status = if code == Some(jsonrpc::MISSING_REQUIRED_CLIENT_CAPABILITY) {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        return Reply::message(status, &reply);
    }
    let method = jsonrpc::method(&value).unwrap_or_default().to_string();
    if kind == Kind::Notification && method == "tools/call" {
        // Without an id there is nobody to answer: it would run unseen by policy and the audit
        // trail, so it does not run at all.
        tracing::warn!(%client, server, "refused a tools/call sent as a notification");
        return reply::error(
            StatusCode::BAD_REQUEST,
            jsonrpc::INVALID_REQUEST,
            Value::Null,
            "tools/call must be a request with an id: sent as a notification it could not be checked, recorded or answered, so it was not forwarded",
        );
    }
    let id = jsonrpc::id(&value);
    // How the client wants to wait for a held call: by polling a task, if it asked for one.
    let task = (kind == Kind::Request && method == "tools/call")
        .then(|| tasks::requested(&value, modern))
        .flatten();
    let wants_tasks = kind == Kind::Request
        && match method.as_str() {
            "initialize" => value.pointer("/params/capabilities/tasks").is_some(),
            "server/discover" => tasks::requested(&value, true).is_some(),
            "tools/list" => session
                .as_ref()
                .is_some_and(|s| fe.task_sessions.lock().contains(s)),
            _ => false,
        };
    let mut inbound = Inbound {
        value,
        raw,
        kind,
        headers,
        session,
        client: tollgate_shared::intern(&client),
        sse,
        modern,
        ticket: None,
        recovered: false,
    };
    if kind == Kind::Request && jsonrpc::method(&inbound.value) == Some("tools/call") {
        let trace = continue_trace(&mut inbound, matches!(upstream, Upstream::Stdio(_)));
        let ctx = CallContext {
            client: tollgate_shared::intern(&client),
            server: tollgate_shared::intern(server),
            session: inbound.session.as_deref().map(Name::from),
            protocol_version,
            polls_task: task.is_some(),
            trace,
        };
        match fe
            .gateway
            .intercept(&ctx, &mut inbound.value, received_ms)
            .await
        {
            Intercept::Forward(t) => {
                if t.rewritten {
                    inbound.raw = bytes::Bytes::from(inbound.value.to_string());
                }
                // A task-augmented call that policy allows still gets its task (2025-11-25
                // clients were told every tool may run as one); the broker runs it at once.
                if task == Some(tasks::Flavor::Legacy) {
                    if let Some((record, scrub)) = t.disarm() {
                        return start_task(
                            fe,
                            Waiting::approved(record),
                            inbound,
                            upstream,
                            (tasks::Flavor::Legacy, scrub),
                        );
                    }
                } else {
                    inbound.ticket = Some(t)
                }
            }
            Intercept::Respond(answer) => return Reply::message(StatusCode::OK, &answer),
            Intercept::Held(held) => {
                if held.rewritten {
                    inbound.raw = bytes::Bytes::from(inbound.value.to_string());
                }
                let held = *held;
                if let Some(flavor) = task {
                    return start_task(fe, held.waiting, inbound, upstream, (flavor, held.scrub));
                }
                let feed = waiting::start(waiting::Drive {
                    queue: fe.gateway.queue.clone(),
                    feeds: fe.feeds.clone(),
                    waiting: held.waiting,
                    inbound,
                    upstream,
                    keepalive: fe.keepalive,
                    grace: None,
                    task: None,
                    scrub: held.scrub,
                });
                return waiting::respond(feed, sse, fe.keepalive);
            }
        }
    }
    let span = inbound
        .ticket
        .as_ref()
        .map_or_else(tracing::Span::none, |t| t.span());
    let answer = answered(
        tracing::Instrument::instrument(upstream.post(inbound), span).await,
        id,
    );
    let started = (method == "initialize").then(|| answer.session()).flatten();
    if let Some(session) = started {
        fe.sessions
            .created(session, tollgate_shared::intern(&client));
    }
    if !wants_tasks {
        return answer;
    }
    if let Some(session) = started {
        fe.task_sessions.lock().insert(session.to_string());
    }
    patch::result(answer, |r| match method.as_str() {
        "initialize" => tasks::advertise_legacy(r),
        "tools/list" => tasks::advertise_tools(r),
        _ => tasks::advertise_extensions(r),
    })
    .await
}

/// The call's W3C trace context: `params._meta.traceparent` (2026-07-28), else the
/// `traceparent` header, when valid. An HTTP upstream gets the header as the client sent it; a
/// stdio server sees no headers, so a header's trace context is put into `params._meta` for
/// it. Invalid values are ignored (and not recorded).
fn continue_trace(inbound: &mut Inbound, stdio: bool) -> Option<String> {
    let valid = |t: &&str| crate::gateway::trace_id(t).is_some();
    let in_meta = inbound
        .value
        .pointer("/params/_meta/traceparent")
        .and_then(Value::as_str)
        .filter(valid)
        .map(str::to_string);
    if in_meta.is_some() {
        return in_meta;
    }
    let header = inbound
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(valid)
        .map(str::to_string)?;
    if stdio
        && let Some(params) = inbound
            .value
            .get_mut("params")
            .and_then(Value::as_object_mut)
    {
        let meta = params
            .entry("_meta")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(m) = meta.as_object_mut() {
            m.insert("traceparent".into(), Value::String(header.clone()));
            inbound.raw = bytes::Bytes::from(inbound.value.to_string());
        }
    }
    Some(header)
}
