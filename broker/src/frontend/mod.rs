//! The MCP frontend: Streamable HTTP endpoints at `/mcp/<server>`.
//!
//! Every request goes through the same steps: the `Origin` check (DNS-rebinding defence), client
//! authentication, the upstream lookup, the body limit, JSON-RPC validation and, for stateless
//! revisions, the mirrored-header check. Then a `tools/call` request passes through the
//! [`Gateway`] and anything else straight to the upstream.

pub mod headers;
pub mod patch;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use axum::routing::{any, get};
use serde_json::Value;

use crate::auth::{self, AuthError};
use crate::config::{Auth, Config};
use crate::gateway::{CallContext, Gateway, Intercept};
use crate::hold::{self, Feeds};
use crate::jsonrpc::{self, Kind};
use crate::queue::Waiting;
use crate::tasks;
use crate::upstream::Inbound;
use crate::upstream::http::HttpUpstream;
use crate::upstream::stdio::StdioUpstream;
use tollgate_shared::clock::now_ms;
use tollgate_shared::{Name, Outcome};
use tollgate_store::tokens::Registry;

/// Where a server's traffic goes.
#[derive(Clone)]
pub enum Upstream {
    /// A child process per session.
    Stdio(Arc<StdioUpstream>),
    /// A remote Streamable HTTP server.
    Http(Arc<HttpUpstream>),
}

impl Upstream {
    /// Send a client message on to the upstream; the answer to relay.
    pub async fn post(&self, inbound: Inbound) -> Response<Body> {
        match self {
            Upstream::Stdio(u) => u.post(inbound).await,
            Upstream::Http(u) => u.post(inbound).await,
        }
    }

    /// Whether a client request header is passed on to this upstream (what a held call
    /// keeps of its headers while it waits).
    pub fn forwards_header(&self, name: &axum::http::HeaderName) -> bool {
        match self {
            // A child process sees no headers; the revision serves to restore its session.
            Upstream::Stdio(_) => name == "mcp-protocol-version",
            Upstream::Http(_) => crate::upstream::http::forwards(name),
        }
    }
}

/// Shared state of the frontend.
pub struct Frontend {
    /// Policy and recording.
    pub gateway: Gateway,
    /// Upstreams by server name.
    pub upstreams: HashMap<String, Upstream>,
    /// Who may call.
    pub auth: Auth,
    /// Largest body accepted.
    pub max_body: usize,
    /// Browser origins allowed besides loopback.
    pub allowed_origins: Vec<String>,
    /// Identities from the token file (they may make calls too).
    pub registry: Arc<Registry>,
    /// Event feeds of held calls, for clients that resume.
    pub feeds: Arc<Feeds>,
    /// Keep-alive interval on held calls.
    pub keepalive: std::time::Duration,
    /// Sessions whose client declared task support at `initialize` (2025-11-25).
    pub task_sessions: tollgate_shared::sync::Mutex<std::collections::HashSet<String>>,
}

impl Frontend {
    /// Build the frontend for a config.
    pub fn new(
        config: &Config,
        gateway: Gateway,
        upstreams: HashMap<String, Upstream>,
        registry: Arc<Registry>,
        feeds: Arc<Feeds>,
    ) -> Frontend {
        Frontend {
            gateway,
            upstreams,
            auth: config.auth.clone(),
            max_body: config.broker.max_body,
            allowed_origins: config.broker.allowed_origins.clone(),
            registry,
            feeds,
            keepalive: config.broker.keepalive,
            task_sessions: Default::default(),
        }
    }

    fn known_servers(&self) -> String {
        let mut names: Vec<_> = self.upstreams.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }
}

/// The HTTP routes.
pub fn router(state: Arc<Frontend>) -> Router {
    Router::new()
        .route("/mcp/{server}", any(handle))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(fallback)
        .with_state(state)
}

/// A JSON body with a status (and a session header when given).
pub fn json_response(status: StatusCode, body: &Value, session: Option<&str>) -> Response<Body> {
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(s) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        b = b.header("mcp-session-id", s);
    }
    b.body(Body::from(body.to_string())).unwrap_or_default()
}

/// An HTTP error carrying a JSON-RPC error with no id.
pub fn status_error(status: StatusCode, message: &str) -> Response<Body> {
    let code = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => jsonrpc::UNAUTHORIZED,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => jsonrpc::INVALID_REQUEST,
        s if s.is_server_error() => jsonrpc::UPSTREAM_ERROR,
        _ => jsonrpc::INVALID_REQUEST,
    };
    json_response(status, &jsonrpc::error(Value::Null, code, message), None)
}

async fn fallback(State(fe): State<Arc<Frontend>>) -> Response<Body> {
    status_error(
        StatusCode::NOT_FOUND,
        &format!(
            "no MCP endpoint here: use /mcp/<server> (configured servers: {})",
            fe.known_servers()
        ),
    )
}

/// Loopback origins are always allowed; others only when listed in `allowed_origins`.
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']')
            .next()
            .map(|h| format!("[{h}]"))
            .unwrap_or_default()
    } else {
        rest.split(':').next().unwrap_or_default().to_string()
    };
    matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]")
}

async fn handle(
    State(fe): State<Arc<Frontend>>,
    Path(server): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .is_ok_and(|o| origin_allowed(o, &fe.allowed_origins));
        if !ok {
            tracing::warn!(origin = ?origin, "refused a request from a disallowed Origin");
            return status_error(
                StatusCode::FORBIDDEN,
                "Origin not allowed: add it to allowed_origins in [broker] if this browser app should reach the broker",
            );
        }
    }
    let client = match auth::authenticate(&fe.auth, Some(&fe.registry), &headers) {
        Ok(c) => c,
        Err(e) => {
            let mut r = status_error(StatusCode::UNAUTHORIZED, &e.to_string());
            let challenge = if e == AuthError::Invalid {
                "Bearer error=\"invalid_token\""
            } else {
                "Bearer"
            };
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            return r;
        }
    };
    let Some(upstream) = fe.upstreams.get(&server).cloned() else {
        return status_error(
            StatusCode::NOT_FOUND,
            &format!(
                "unknown server \"{server}\" (configured servers: {})",
                fe.known_servers()
            ),
        );
    };
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match method {
        Method::POST => post(&fe, &server, client, upstream, headers, session, body).await,
        Method::GET => {
            let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
            if let Some(r) = last.and_then(|l| hold::resume(&fe.feeds, &client, l, fe.keepalive)) {
                return r;
            }
            match upstream {
                Upstream::Stdio(u) => u.get(session.as_deref(), last),
                Upstream::Http(u) => u.get(&headers).await,
            }
        }
        Method::DELETE => match upstream {
            Upstream::Stdio(u) => u.delete(session.as_deref()),
            Upstream::Http(u) => u.delete(&headers).await,
        },
        _ => {
            let mut r = status_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "the MCP endpoint accepts POST, GET and DELETE",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            r
        }
    }
}

/// Answer a `tools/call` with a task and see the call through in the background.
fn start_task(
    fe: &Frontend,
    waiting: Waiting,
    inbound: Inbound,
    upstream: Upstream,
    flavor: tasks::Flavor,
) -> Response<Body> {
    let id = jsonrpc::id(&inbound.value);
    let feed = hold::start(hold::Drive {
        queue: fe.gateway.queue.clone(),
        feeds: fe.feeds.clone(),
        waiting,
        inbound,
        upstream,
        keepalive: fe.keepalive,
        grace: None,
        task: Some(flavor),
    });
    json_response(
        StatusCode::OK,
        &tasks::created(&feed, &fe.gateway.queue, id),
        None,
    )
}

async fn post(
    fe: &Frontend,
    server: &str,
    client: String,
    upstream: Upstream,
    headers: HeaderMap,
    session: Option<String>,
    body: Body,
) -> Response<Body> {
    let received_ms = now_ms();
    if let Some(ct) = headers.get(header::CONTENT_TYPE)
        && !ct.as_bytes().starts_with(b"application/json")
    {
        return status_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send JSON-RPC messages with Content-Type: application/json",
        );
    }
    let raw = match axum::body::to_bytes(body, fe.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return status_error(
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
            return json_response(
                StatusCode::BAD_REQUEST,
                &jsonrpc::error(
                    Value::Null,
                    jsonrpc::PARSE_ERROR,
                    format!("request body is not valid JSON: {e}"),
                ),
                None,
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
            return json_response(
                StatusCode::BAD_REQUEST,
                &jsonrpc::error(id, jsonrpc::INVALID_REQUEST, why),
                None,
            );
        }
    };
    let header_version = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok());
    let meta_version = jsonrpc::meta_protocol_version(&value);
    let modern = meta_version
        .or(header_version)
        .is_some_and(jsonrpc::is_modern);
    if modern
        && kind == Kind::Request
        && let Err(why) = headers::check_mirrored(&headers, &value)
    {
        return json_response(
            StatusCode::BAD_REQUEST,
            &jsonrpc::error(
                jsonrpc::id(&value),
                jsonrpc::HEADER_MISMATCH,
                format!("Header mismatch: {why}"),
            ),
            None,
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
        return Response::builder()
            .status(StatusCode::ACCEPTED)
            .body(Body::empty())
            .unwrap_or_default();
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
        return json_response(StatusCode::OK, &reply, None);
    }
    let method = jsonrpc::method(&value).unwrap_or_default().to_string();
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
        sse,
        modern,
        ticket: None,
        recovered: false,
    };
    if kind == Kind::Request && jsonrpc::method(&inbound.value) == Some("tools/call") {
        let ctx = CallContext {
            client: tollgate_shared::intern(&client),
            server: tollgate_shared::intern(server),
            session: inbound.session.as_deref().map(Name::from),
            protocol_version,
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
                if !modern && tasks::requested(&inbound.value, false).is_some() {
                    if let Some(record) = t.disarm() {
                        return start_task(
                            fe,
                            Waiting::approved(record),
                            inbound,
                            upstream,
                            tasks::Flavor::Legacy,
                        );
                    }
                } else {
                    inbound.ticket = Some(t)
                }
            }
            Intercept::Respond(answer) => return json_response(StatusCode::OK, &answer, None),
            Intercept::Hold(held) => {
                if held.rewritten {
                    inbound.raw = bytes::Bytes::from(inbound.value.to_string());
                }
                if let Some(flavor) = held.task {
                    return start_task(fe, held.waiting, inbound, upstream, flavor);
                }
                let feed = hold::start(hold::Drive {
                    queue: fe.gateway.queue.clone(),
                    feeds: fe.feeds.clone(),
                    waiting: held.waiting,
                    inbound,
                    upstream,
                    keepalive: fe.keepalive,
                    grace: None,
                    task: None,
                });
                return hold::respond(feed, sse, fe.keepalive);
            }
        }
    }
    if wants_tasks {
        let response = upstream.post(inbound).await;
        if method == "initialize"
            && let Some(id) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
        {
            fe.task_sessions.lock().insert(id.to_string());
        }
        return patch::result(response, |r| match method.as_str() {
            "initialize" => tasks::advertise_legacy(r),
            "tools/list" => tasks::advertise_tools(r),
            _ => tasks::advertise_extensions(r),
        })
        .await;
    }
    upstream.post(inbound).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_origins_pass_and_others_need_listing() {
        assert!(origin_allowed("http://localhost:6274", &[]));
        assert!(origin_allowed("http://127.0.0.1", &[]));
        assert!(origin_allowed("http://[::1]:80", &[]));
        assert!(!origin_allowed("https://evil.example", &[]));
        assert!(!origin_allowed("http://localhost.evil.example", &[]));
        assert!(origin_allowed(
            "https://app.example",
            &["https://app.example".into()]
        ));
        assert!(!origin_allowed("null", &[]));
    }
}
