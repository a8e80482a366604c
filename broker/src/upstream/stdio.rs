//! Stdio upstreams: one child process per MCP session, exposed to clients as Streamable HTTP.
//!
//! For the handshake revisions (up to 2025-11-25) a client's `initialize` creates a session with
//! a broker-minted `Mcp-Session-Id` and its own child process. Request ids pass through
//! unchanged, since the child serves only that session. Every response stream is logged with
//! event ids (`<stream>-<seq>`), so a client whose connection drops can resume it with
//! `Last-Event-ID`; a dropped stream is not a cancel on these revisions. Messages the child sends
//! that belong to no request (server-to-client requests, logging, list changes) go to the
//! session's GET stream, or to an open request stream, or wait for the next GET stream.
//!
//! Stateless (2026-07-28+) requests carry no session. They share one child per upstream, so
//! the broker renumbers their request ids and progress tokens and maps them back on the way out;
//! closing the response stream cancels the request, as that revision specifies.
//!
//! If a child dies it is restarted with exponential backoff, and for a handshake session the
//! client's `initialize` and `notifications/initialized` are replayed to the new child, so the
//! session carries on. Requests in flight when it died get a JSON-RPC error.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::{Duration, Instant};
use tollgate_shared::sync::Mutex;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use bytes::Bytes;
use futures_util::stream;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Inbound, one_line};
use crate::config::{ServerConfig, UpstreamSpec};
use crate::gateway::{Annotations, Ticket};
use crate::jsonrpc::{self, Kind};
use crate::{frontend, sse};

/// Events kept per stream for resumption.
const LOG_CAP: usize = 1024;
/// Messages kept for a GET stream that is not connected.
const BACKLOG_CAP: usize = 1024;
/// Finished streams stay resumable this long.
const DONE_RETENTION: Duration = Duration::from_secs(300);
/// Buffer between a stream and its HTTP response; a client slower than this is detached and
/// must resume (handshake revisions) or loses the stream (stateless).
const LIVE_CAP: usize = 256;
/// Longest line accepted from a child's stdout.
const MAX_LINE: usize = 64 << 20;

/// A stdio upstream and its sessions.
pub struct StdioUpstream {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<std::path::PathBuf>,
    timeout: Duration,
    annotations: Arc<Annotations>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    shared: tokio::sync::Mutex<Option<Arc<Session>>>,
}

/// One message for a response stream.
struct Ev {
    seq: u64,
    data: Bytes,
    last: bool,
}

struct Pending {
    stream: u64,
    client_id: Value,
    client_token: Option<Value>,
    token_key: Option<String>,
    method: String,
    ticket: Option<Ticket>,
}

#[derive(Default)]
struct StreamLog {
    events: VecDeque<(u64, Bytes)>,
    next_seq: u64,
    live: Option<mpsc::Sender<Ev>>,
    done_at: Option<Instant>,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Pending>,
    progress: HashMap<String, String>,
    streams: HashMap<u64, StreamLog>,
    next_stream: u64,
    get_stream: Option<u64>,
    backlog: VecDeque<Bytes>,
    next_mapped: u64,
    init: Option<Value>,
    initialized: Option<Bytes>,
    internal: HashSet<String>,
}

impl State {
    /// Forget a request in flight, with its progress-token route.
    fn take_pending(&mut self, key: &str) -> Option<Pending> {
        let p = self.pending.remove(key)?;
        if let Some(k) = &p.token_key {
            self.progress.remove(k);
        }
        Some(p)
    }
}

struct Session {
    id: Option<String>,
    mapped: bool,
    server: String,
    stdin: mpsc::Sender<Bytes>,
    state: Mutex<State>,
    cancel: CancellationToken,
    closed: AtomicBool,
    last_active: Mutex<Instant>,
    annotations: Arc<Annotations>,
}

impl StdioUpstream {
    /// Prepare an upstream; children start when sessions do.
    pub fn new(cfg: &ServerConfig, annotations: Arc<Annotations>) -> Arc<StdioUpstream> {
        let UpstreamSpec::Command { argv, env, cwd } = &cfg.transport else {
            unreachable!("StdioUpstream::new called for a url upstream")
        };
        Arc::new(StdioUpstream {
            name: cfg.name.clone(),
            argv: argv.clone(),
            env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cwd: cwd.clone(),
            timeout: cfg.timeout,
            annotations,
            sessions: Mutex::new(HashMap::new()),
            shared: tokio::sync::Mutex::new(None),
        })
    }

    /// Close sessions idle for longer than `idle` and forget finished streams; runs forever.
    pub async fn reap(self: Arc<Self>, idle: Duration) {
        let mut tick = tokio::time::interval(Duration::from_secs(15).min(idle));
        loop {
            tick.tick().await;
            let mut dead = Vec::new();
            self.sessions.lock().retain(|id, s| {
                let keep =
                    !s.closed.load(Ordering::Relaxed) && s.last_active.lock().elapsed() < idle;
                if !keep {
                    dead.push((id.clone(), s.clone()));
                }
                keep
            });
            for (id, s) in dead {
                tracing::info!(server = %self.name, session = %id, "closing idle MCP session");
                s.close();
            }
            let sessions: Vec<_> = self.sessions.lock().values().cloned().collect();
            for s in sessions {
                s.gc();
            }
        }
    }

    /// Stop every child (on shutdown).
    pub async fn shutdown(&self) {
        let sessions: Vec<_> = self.sessions.lock().drain().map(|(_, s)| s).collect();
        for s in sessions {
            s.close();
        }
        if let Some(s) = self.shared.lock().await.take() {
            s.close();
        }
    }

    /// Start a session with its child. Fails at once, with the reason, if the command cannot
    /// be started, so the client's first request gets a clear error instead of a dead stream.
    fn start_session(&self, id: Option<String>, mapped: bool) -> Result<Arc<Session>, String> {
        let spec = ChildSpec {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
        };
        let child = spec.spawn().map_err(|e| {
            tracing::error!(server = %self.name, error = %e, command = ?self.argv, "cannot start upstream");
            format!("cannot start {:?}: {e}", self.argv[0])
        })?;
        let (stdin, rx) = mpsc::channel(1024);
        let session = Arc::new(Session {
            id,
            mapped,
            server: self.name.clone(),
            stdin,
            state: Mutex::new(State::default()),
            cancel: CancellationToken::new(),
            closed: AtomicBool::new(false),
            last_active: Mutex::new(Instant::now()),
            annotations: self.annotations.clone(),
        });
        tokio::spawn(supervise(session.clone(), spec, child, rx));
        Ok(session)
    }

    /// Bring back a handshake session that ended with a previous broker process, so a held call
    /// recovered from the store can be forwarded on it: a new child, given an `initialize`
    /// (the call's protocol revision, no client capabilities) and `notifications/initialized`
    /// before anything else, registered under the old session id so the resuming client's
    /// later requests find it too.
    async fn restore_session(&self, id: &str, inbound: &Inbound) -> Result<Arc<Session>, String> {
        let version = inbound
            .headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("2025-11-25");
        let session = self.start_session(Some(id.to_string()), false)?;
        let init_id = json!("tollgate-restore");
        let init = json!({
            "jsonrpc": "2.0",
            "id": init_id,
            "method": "initialize",
            "params": {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "tollgate-broker", "version": env!("CARGO_PKG_VERSION")},
            }
        });
        let initialized =
            Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}");
        {
            let mut st = session.state.lock();
            st.internal.insert(jsonrpc::id_key(&init_id));
            st.init = Some(init.clone());
            st.initialized = Some(initialized.clone());
        }
        if !session.send(Bytes::from(init.to_string())).await || !session.send(initialized).await {
            return Err("the restored upstream session did not accept its handshake".into());
        }
        self.sessions.lock().insert(id.to_string(), session.clone());
        tracing::info!(server = %self.name, session = %id, "restored an MCP session for a recovered held call");
        Ok(session)
    }

    async fn shared_session(&self) -> Result<Arc<Session>, String> {
        let mut shared = self.shared.lock().await;
        match &*shared {
            Some(s) if !s.closed.load(Ordering::Relaxed) => Ok(s.clone()),
            _ => {
                let s = self.start_session(None, true)?;
                *shared = Some(s.clone());
                Ok(s)
            }
        }
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .get(id)
            .filter(|s| !s.closed.load(Ordering::Relaxed))
            .cloned()
    }

    /// Handle a POSTed message.
    pub async fn post(&self, inbound: Inbound) -> Response<Body> {
        let is_init = jsonrpc::method(&inbound.value) == Some("initialize");
        let session = match (&inbound.session, is_init) {
            (Some(id), _) if !inbound.modern => match self.session(id) {
                Some(s) => s,
                None if inbound.recovered => match self.restore_session(id, &inbound).await {
                    Ok(s) => s,
                    Err(why) => return self.start_failed(&inbound.value, &why),
                },
                None => return session_not_found(&inbound.value),
            },
            (_, true) if !inbound.modern => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                match self.start_session(Some(id.clone()), false) {
                    Ok(s) => {
                        self.sessions.lock().insert(id.clone(), s.clone());
                        tracing::info!(server = %self.name, session = %id, "new MCP session");
                        s
                    }
                    Err(why) => return self.start_failed(&inbound.value, &why),
                }
            }
            _ => match self.shared_session().await {
                Ok(s) => s,
                Err(why) => return self.start_failed(&inbound.value, &why),
            },
        };
        session.touch();
        match inbound.kind {
            Kind::Request => session.request(inbound, self.timeout).await,
            Kind::Notification => {
                session.notify(&inbound).await;
                accepted()
            }
            Kind::Response => {
                session.send(one_line(&inbound.raw)).await;
                accepted()
            }
        }
    }

    fn start_failed(&self, msg: &Value, why: &str) -> Response<Body> {
        frontend::json_response(
            StatusCode::BAD_GATEWAY,
            &jsonrpc::error(
                jsonrpc::id(msg),
                jsonrpc::UPSTREAM_ERROR,
                format!("upstream \"{}\" failed: {why}", self.name),
            ),
            None,
        )
    }

    /// Handle a GET: open the session's stream for server-initiated messages, or resume a
    /// stream after `Last-Event-ID`.
    pub fn get(&self, session: Option<&str>, last_event_id: Option<&str>) -> Response<Body> {
        let Some(id) = session else {
            return frontend::status_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET needs an Mcp-Session-Id: the stream for server-initiated messages belongs to a session (2026-07-28 clients use subscriptions/listen instead)",
            );
        };
        let Some(s) = self.session(id) else {
            return session_not_found(&Value::Null);
        };
        s.touch();
        match last_event_id {
            Some(lei) => s.resume(lei),
            None => s.open_get_stream(),
        }
    }

    /// Handle a DELETE: end the session and its child.
    pub fn delete(&self, session: Option<&str>) -> Response<Body> {
        let Some(id) = session else {
            return frontend::status_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "DELETE needs an Mcp-Session-Id",
            );
        };
        match self.sessions.lock().remove(id) {
            Some(s) => {
                tracing::info!(server = %self.name, session = %id, "MCP session ended by client");
                s.close();
                Response::builder()
                    .status(StatusCode::OK)
                    .body(Body::empty())
                    .unwrap_or_default()
            }
            None => session_not_found(&Value::Null),
        }
    }
}

fn accepted() -> Response<Body> {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .body(Body::empty())
        .unwrap_or_default()
}

fn session_not_found(msg: &Value) -> Response<Body> {
    frontend::json_response(
        StatusCode::NOT_FOUND,
        &jsonrpc::error(
            jsonrpc::id(msg),
            jsonrpc::INVALID_REQUEST,
            "MCP session not found: it ended or the broker restarted; send initialize again",
        ),
        None,
    )
}

fn sse_headers(
    builder: axum::http::response::Builder,
    session: Option<&str>,
) -> axum::http::response::Builder {
    let mut b = builder
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no");
    if let Some(id) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        b = b.header("mcp-session-id", id);
    }
    b
}

impl Session {
    fn touch(&self) {
        *self.last_active.lock() = Instant::now();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.cancel.cancel();
        self.fail_all("the MCP session was closed");
    }

    async fn send(&self, line: Bytes) -> bool {
        let sent = self.stdin.send(line).await.is_ok();
        if !sent {
            tracing::warn!(server = %self.server, "upstream process is not running; message dropped");
        }
        sent
    }

    fn event_id(&self, stream: u64, seq: u64) -> Option<String> {
        (!self.mapped).then(|| format!("{stream}-{seq}"))
    }

    /// Forward a client request and stream its answer back.
    async fn request(self: &Arc<Self>, mut inbound: Inbound, timeout: Duration) -> Response<Body> {
        let client_id = jsonrpc::id(&inbound.value);
        let method = jsonrpc::method(&inbound.value)
            .unwrap_or_default()
            .to_string();
        let (tx, rx) = mpsc::channel(LIVE_CAP);
        let (stream_id, upstream_id, line) = {
            let mut st = self.state.lock();
            let upstream_id = if self.mapped {
                st.next_mapped += 1;
                Value::from(st.next_mapped)
            } else {
                client_id.clone()
            };
            let key = jsonrpc::id_key(&upstream_id);
            if st.pending.contains_key(&key) {
                drop(st);
                return frontend::json_response(
                    StatusCode::BAD_REQUEST,
                    &jsonrpc::error(
                        client_id,
                        jsonrpc::INVALID_REQUEST,
                        "a request with this id is already in flight in this session",
                    ),
                    None,
                );
            }
            let mut client_token = None;
            let mut token_key = None;
            if let Some(tok) = inbound
                .value
                .pointer("/params/_meta/progressToken")
                .cloned()
            {
                let upstream_token = if self.mapped {
                    st.next_mapped += 1;
                    let t = json!(format!("tollgate-{}", st.next_mapped));
                    if let Some(slot) = inbound.value.pointer_mut("/params/_meta/progressToken") {
                        *slot = t.clone();
                    }
                    t
                } else {
                    tok.clone()
                };
                let tk = jsonrpc::id_key(&upstream_token);
                st.progress.insert(tk.clone(), key.clone());
                client_token = Some(tok);
                token_key = Some(tk);
            }
            let line = if self.mapped {
                inbound.value["id"] = upstream_id.clone();
                Bytes::from(serde_json::to_vec(&inbound.value).unwrap_or_default())
            } else {
                one_line(&inbound.raw)
            };
            if method == "initialize" && !self.mapped {
                st.init = Some(inbound.value.clone());
            }
            st.next_stream += 1;
            let stream_id = st.next_stream;
            st.streams.insert(
                stream_id,
                StreamLog {
                    live: Some(tx),
                    ..Default::default()
                },
            );
            st.pending.insert(
                key,
                Pending {
                    stream: stream_id,
                    client_id: client_id.clone(),
                    client_token,
                    token_key,
                    method: method.clone(),
                    ticket: inbound.ticket.take(),
                },
            );
            (stream_id, upstream_id, line)
        };
        if !self.send(line).await {
            self.fail_all("the upstream process is not running");
        }

        let waits_forever = method == "subscriptions/listen";
        let guard = StreamGuard {
            session: self.clone(),
            stream: stream_id,
            upstream_id,
            finished: false,
        };
        if !inbound.sse {
            return json_answer(
                guard,
                rx,
                client_id,
                timeout,
                waits_forever,
                self.id.as_deref(),
                &method,
            )
            .await;
        }
        let session_header = if method == "initialize" {
            self.id.as_deref()
        } else {
            None
        };
        let body = stream::unfold(
            (guard, rx, Some(client_id), Instant::now() + timeout),
            move |(mut guard, mut rx, client_id, mut deadline)| async move {
                let client_id = client_id?;
                let next = if waits_forever {
                    Ok(rx.recv().await)
                } else {
                    tokio::time::timeout_at(deadline.into(), rx.recv()).await
                };
                match next {
                    Ok(Some(ev)) => {
                        deadline = Instant::now() + timeout;
                        let id = guard.session.event_id(guard.stream, ev.seq);
                        let chunk = sse::encode(id.as_deref(), &ev.data);
                        if ev.last {
                            guard.finished = true;
                        }
                        let keep = (!ev.last).then_some(client_id);
                        Some((Ok::<_, Infallible>(chunk), (guard, rx, keep, deadline)))
                    }
                    Ok(None) => None,
                    Err(_) => {
                        let msg = guard.time_out(&client_id, timeout);
                        guard.finished = true;
                        Some((Ok(sse::encode(None, &msg)), (guard, rx, None, deadline)))
                    }
                }
            },
        );
        sse_headers(Response::builder(), session_header)
            .body(Body::from_stream(body))
            .unwrap_or_default()
    }

    async fn notify(&self, inbound: &Inbound) {
        let method = jsonrpc::method(&inbound.value).unwrap_or_default();
        if method == "notifications/initialized" && !self.mapped {
            self.state.lock().initialized = Some(one_line(&inbound.raw));
        }
        if method == "notifications/cancelled" {
            if self.mapped {
                tracing::debug!(
                    "ignoring notifications/cancelled without a session: close the response stream to cancel"
                );
                return;
            }
            if let Some(rid) = inbound.value.pointer("/params/requestId") {
                // The client gave up on this request: end its stream now, since the server will
                // not answer a cancelled request.
                let mut st = self.state.lock();
                if let Some(p) = st.take_pending(&jsonrpc::id_key(rid)) {
                    if let Some(s) = st.streams.get_mut(&p.stream) {
                        s.live = None;
                        s.done_at = Some(Instant::now());
                    }
                    if let Some(t) = p.ticket {
                        t.complete(Some("cancelled by the client".into()));
                    }
                }
            }
        }
        self.send(one_line(&inbound.raw)).await;
    }

    /// Append a message to a stream's log and pass it to its live reader, if any.
    fn push(&self, st: &mut State, stream: u64, data: Bytes, last: bool) {
        let mapped = self.mapped;
        let Some(s) = st.streams.get_mut(&stream) else {
            return;
        };
        let seq = s.next_seq;
        s.next_seq += 1;
        if !mapped {
            s.events.push_back((seq, data.clone()));
            if s.events.len() > LOG_CAP {
                s.events.pop_front();
            }
        }
        if let Some(live) = &s.live
            && live.try_send(Ev { seq, data, last }).is_err()
        {
            tracing::debug!(
                stream,
                "response stream reader is gone or too slow; detaching it"
            );
            s.live = None;
        }
        if last {
            s.live = None;
            s.done_at = Some(Instant::now());
        }
    }

    /// A message that belongs to no request: the GET stream, else an open request stream, else
    /// the backlog for the next GET stream.
    fn route_general(&self, st: &mut State, data: Bytes) {
        if self.mapped {
            // Stateless revisions deliver change notifications on subscriptions/listen streams.
            let listens: Vec<u64> = st
                .pending
                .values()
                .filter(|p| p.method == "subscriptions/listen")
                .map(|p| p.stream)
                .collect();
            for s in listens {
                self.push(st, s, data.clone(), false);
            }
            return;
        }
        let live = |st: &State, id: u64| st.streams.get(&id).is_some_and(|s| s.live.is_some());
        if let Some(g) = st.get_stream.filter(|g| live(st, *g)) {
            self.push(st, g, data, false);
            return;
        }
        let newest = st
            .pending
            .values()
            .map(|p| p.stream)
            .filter(|s| live(st, *s))
            .max();
        if let Some(s) = newest {
            self.push(st, s, data, false);
            return;
        }
        st.backlog.push_back(data);
        if st.backlog.len() > BACKLOG_CAP {
            st.backlog.pop_front();
        }
    }

    /// One line from the child's stdout.
    fn dispatch(&self, line: &[u8]) {
        let mut msg: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(server = %self.server, error = %e, "upstream wrote a line that is not JSON; ignored");
                return;
            }
        };
        let mut st = self.state.lock();
        match jsonrpc::classify(&msg) {
            Ok(Kind::Response) => {
                let key = jsonrpc::id_key(&jsonrpc::id(&msg));
                if st.internal.remove(&key) {
                    return;
                }
                let Some(p) = st.take_pending(&key) else {
                    tracing::debug!(server = %self.server, id = %key, "response to no pending request (cancelled or timed out)");
                    return;
                };
                if p.method == "tools/list" {
                    self.annotations.learn_from_response(&self.server, &msg);
                }
                if let Some(t) = p.ticket {
                    let err = msg.get("error").map(|e| format!("upstream error: {e}"));
                    t.complete(err);
                }
                let data = if self.mapped {
                    msg["id"] = p.client_id;
                    Bytes::from(serde_json::to_vec(&msg).unwrap_or_default())
                } else {
                    Bytes::copy_from_slice(line)
                };
                self.push(&mut st, p.stream, data, true);
            }
            Ok(Kind::Notification) if jsonrpc::method(&msg) == Some("notifications/progress") => {
                let tk = msg.pointer("/params/progressToken").map(jsonrpc::id_key);
                let target = tk
                    .and_then(|k| st.progress.get(&k).cloned())
                    .and_then(|pk| st.pending.get(&pk));
                match target {
                    Some(p) => {
                        let stream = p.stream;
                        let data = match (&p.client_token, self.mapped) {
                            (Some(tok), true) => {
                                msg["params"]["progressToken"] = tok.clone();
                                Bytes::from(serde_json::to_vec(&msg).unwrap_or_default())
                            }
                            _ => Bytes::copy_from_slice(line),
                        };
                        self.push(&mut st, stream, data, false);
                    }
                    None => self.route_general(&mut st, Bytes::copy_from_slice(line)),
                }
            }
            Ok(_) => self.route_general(&mut st, Bytes::copy_from_slice(line)),
            Err(why) => {
                tracing::warn!(server = %self.server, why, "upstream wrote an invalid JSON-RPC message; ignored")
            }
        }
    }

    /// Answer every request in flight with an error (the child died or the session closed).
    fn fail_all(&self, reason: &str) {
        let mut st = self.state.lock();
        let pending: Vec<_> = st.pending.drain().collect();
        st.progress.clear();
        for (_, p) in pending {
            let text = format!("upstream \"{}\" failed: {reason}", self.server);
            if let Some(t) = p.ticket {
                t.complete(Some(text.clone()));
            }
            let err = jsonrpc::error(p.client_id, jsonrpc::UPSTREAM_ERROR, text);
            self.push(&mut st, p.stream, Bytes::from(err.to_string()), true);
        }
    }

    fn open_get_stream(&self) -> Response<Body> {
        let (tx, rx) = mpsc::channel(LIVE_CAP);
        let stream_id = {
            let mut st = self.state.lock();
            if let Some(old) = st.get_stream.take()
                && let Some(s) = st.streams.get_mut(&old)
            {
                s.live = None;
                s.done_at = Some(Instant::now());
            }
            st.next_stream += 1;
            let id = st.next_stream;
            st.streams.insert(
                id,
                StreamLog {
                    live: Some(tx),
                    ..Default::default()
                },
            );
            st.get_stream = Some(id);
            let backlog: Vec<_> = st.backlog.drain(..).collect();
            for data in backlog {
                self.push(&mut st, id, data, false);
            }
            id
        };
        self.stream_response(stream_id, Vec::new(), Some(rx))
    }

    fn resume(&self, last_event_id: &str) -> Response<Body> {
        let parsed = last_event_id
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
        let Some((stream_id, seq)) = parsed else {
            return frontend::status_error(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID is not an event id this broker issued",
            );
        };
        let mut st = self.state.lock();
        let Some(s) = st.streams.get_mut(&stream_id) else {
            return frontend::status_error(
                StatusCode::NOT_FOUND,
                "that stream is no longer available for resumption",
            );
        };
        let replay: Vec<Ev> = s
            .events
            .iter()
            .filter(|(n, _)| *n > seq)
            .map(|(n, d)| Ev {
                seq: *n,
                data: d.clone(),
                last: false,
            })
            .collect();
        let rx = if s.done_at.is_none() {
            let (tx, rx) = mpsc::channel(LIVE_CAP);
            s.live = Some(tx);
            Some(rx)
        } else {
            None
        };
        drop(st);
        tracing::debug!(session = ?self.id, stream_id, replayed = replay.len(), "stream resumed");
        self.stream_response(stream_id, replay, rx)
    }

    fn stream_response(
        &self,
        stream_id: u64,
        replay: Vec<Ev>,
        rx: Option<mpsc::Receiver<Ev>>,
    ) -> Response<Body> {
        let mapped = self.mapped;
        let encode = move |ev: Ev| {
            let id = (!mapped).then(|| format!("{stream_id}-{}", ev.seq));
            Ok::<_, Infallible>(sse::encode(id.as_deref(), &ev.data))
        };
        let replayed = stream::iter(replay.into_iter().map(encode));
        let live = stream::unfold(rx, move |rx| async move {
            let mut rx = rx?;
            let ev = rx.recv().await?;
            let last = ev.last;
            Some((encode(ev), (!last).then_some(rx)))
        });
        sse_headers(Response::builder(), None)
            .body(Body::from_stream(futures_util::StreamExt::chain(
                replayed, live,
            )))
            .unwrap_or_default()
    }

    /// Forget finished streams past their retention.
    fn gc(&self) {
        let mut st = self.state.lock();
        st.streams
            .retain(|_, s| s.done_at.is_none_or(|t| t.elapsed() < DONE_RETENTION));
    }
}

/// Runs when a response stream's HTTP body is dropped (finished, or the client went away).
struct StreamGuard {
    session: Arc<Session>,
    stream: u64,
    upstream_id: Value,
    finished: bool,
}

impl StreamGuard {
    /// The request took longer than the timeout: give up on it upstream and tell the client.
    fn time_out(&mut self, client_id: &Value, timeout: Duration) -> Vec<u8> {
        let s = &self.session;
        let key = jsonrpc::id_key(&self.upstream_id);
        let removed = {
            let mut st = s.state.lock();
            let p = st.take_pending(&key);
            if let Some(log) = st.streams.get_mut(&self.stream) {
                log.live = None;
                log.done_at = Some(Instant::now());
            }
            p
        };
        let text = format!(
            "upstream \"{}\" did not answer within {} (the broker's upstream_timeout); the request was cancelled",
            s.server,
            humantime::format_duration(timeout)
        );
        if let Some(p) = removed {
            if let Some(t) = p.ticket {
                t.complete(Some(text.clone()));
            }
            let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": self.upstream_id, "reason": "timed out in the Tollgate broker"}});
            let _ = s.stdin.try_send(Bytes::from(cancel.to_string()));
        }
        jsonrpc::error(client_id.clone(), jsonrpc::UPSTREAM_ERROR, text)
            .to_string()
            .into_bytes()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let s = &self.session;
        let mut st = s.state.lock();
        if let Some(log) = st.streams.get_mut(&self.stream) {
            log.live = None;
        }
        if !s.mapped {
            // Handshake revisions: a dropped stream is not a cancel; the client may resume.
            return;
        }
        // Stateless revisions: closing the response stream cancels the request.
        let key = jsonrpc::id_key(&self.upstream_id);
        if let Some(p) = st.take_pending(&key) {
            st.streams.remove(&self.stream);
            drop(st);
            if let Some(t) = p.ticket {
                t.complete(Some(
                    "cancelled: the client closed the response stream".into(),
                ));
            }
            let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": self.upstream_id, "reason": "client closed the response stream"}});
            let _ = s.stdin.try_send(Bytes::from(cancel.to_string()));
        } else {
            st.streams.remove(&self.stream);
        }
    }
}

/// Answer with a single JSON body (for clients that do not accept SSE).
async fn json_answer(
    mut guard: StreamGuard,
    mut rx: mpsc::Receiver<Ev>,
    client_id: Value,
    timeout: Duration,
    waits_forever: bool,
    session: Option<&str>,
    method: &str,
) -> Response<Body> {
    let session = if method == "initialize" {
        session
    } else {
        None
    };
    loop {
        let next = if waits_forever {
            Ok(rx.recv().await)
        } else {
            tokio::time::timeout(timeout, rx.recv()).await
        };
        match next {
            Ok(Some(ev)) if ev.last => {
                guard.finished = true;
                let mut b = Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/json");
                if let Some(id) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
                    b = b.header("mcp-session-id", id);
                }
                return b.body(Body::from(ev.data)).unwrap_or_default();
            }
            Ok(Some(_)) => continue,
            Ok(None) => {
                return frontend::json_response(
                    StatusCode::BAD_GATEWAY,
                    &jsonrpc::error(
                        client_id,
                        jsonrpc::UPSTREAM_ERROR,
                        "the upstream went away before answering",
                    ),
                    None,
                );
            }
            Err(_) => {
                let msg = guard.time_out(&client_id, timeout);
                guard.finished = true;
                return Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(msg))
                    .unwrap_or_default();
            }
        }
    }
}

struct ChildSpec {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<std::path::PathBuf>,
}

impl ChildSpec {
    fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        cmd.spawn()
    }
}

/// Keep a child running for the session: pump stdin/stdout, restart with backoff.
async fn supervise(
    session: Arc<Session>,
    spec: ChildSpec,
    first: tokio::process::Child,
    mut stdin_rx: mpsc::Receiver<Bytes>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut restarts = 0u32;
    let mut next = Some(first);
    let span = tracing::info_span!("upstream", server = %session.server, session = ?session.id);
    loop {
        let spawned = match next.take() {
            Some(c) => Ok(c),
            None => spec.spawn(),
        };
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot restart {:?}: {e}", spec.argv[0]);
                span.in_scope(
                    || tracing::error!(error = %e, command = ?spec.argv, "cannot restart upstream"),
                );
                session.closed.store(true, Ordering::Relaxed);
                session.fail_all(&why);
                stdin_rx.close();
                return;
            }
        };
        let started = Instant::now();
        let pid = child.id();
        span.in_scope(|| tracing::info!(pid, restarts, "upstream process started"));
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return;
        };
        let log_span = span.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log_span.in_scope(|| tracing::info!(target: "upstream_stderr", "{line}"));
            }
        });
        if restarts > 0 && !session.mapped {
            replay_handshake(&session, &mut stdin).await;
        }
        let mut stdout = BufReader::new(stdout);
        let mut buf = Vec::with_capacity(8192);
        let exit = loop {
            tokio::select! {
                _ = session.cancel.cancelled() => {
                    drop(stdin);
                    if tokio::time::timeout(Duration::from_secs(2), child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                    span.in_scope(|| tracing::info!("upstream process stopped"));
                    return;
                }
                msg = stdin_rx.recv() => match msg {
                    Some(line) => {
                        let write = async {
                            stdin.write_all(&line).await?;
                            stdin.write_all(b"\n").await?;
                            stdin.flush().await
                        };
                        if let Err(e) = write.await {
                            break format!("its stdin closed ({e})");
                        }
                    }
                    None => return,
                },
                read = read_line(&mut stdout, &mut buf) => match read {
                    Ok(0) => break "it closed its stdout".to_string(),
                    Ok(_) => {
                        session.dispatch(&buf);
                        buf.clear();
                    }
                    Err(e) => break format!("reading its stdout failed ({e})"),
                },
            }
        };
        let _ = child.start_kill();
        let status = child
            .wait()
            .await
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        let why = format!("the upstream process exited: {exit}, {status}");
        span.in_scope(|| tracing::warn!(%status, "{why}; restarting in {backoff:?}"));
        session.fail_all(&why);
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = session.cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
        restarts += 1;
    }
}

/// Read one `\n`-terminated line (without it) into `buf`; 0 at end of stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    loop {
        let n = r.read_until(b'\n', buf).await?;
        if n == 0 {
            return Ok(0);
        }
        if buf.len() > MAX_LINE {
            return Err(std::io::Error::other(format!(
                "a message longer than {MAX_LINE} bytes"
            )));
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                buf.clear();
                continue;
            }
            return Ok(n);
        }
        return Ok(n);
    }
}

/// After a restart, bring the new child into the session's negotiated state.
async fn replay_handshake(session: &Session, stdin: &mut tokio::process::ChildStdin) {
    let (init, initialized) = {
        let mut st = session.state.lock();
        let Some(mut init) = st.init.clone() else {
            return;
        };
        st.next_mapped += 1;
        let id = json!(format!("tollgate-reinit-{}", st.next_mapped));
        st.internal.insert(jsonrpc::id_key(&id));
        init["id"] = id;
        (init.to_string(), st.initialized.clone())
    };
    let mut out = init.into_bytes();
    out.push(b'\n');
    if let Some(n) = initialized {
        out.extend_from_slice(&n);
        out.push(b'\n');
    }
    if let Err(e) = stdin.write_all(&out).await {
        tracing::warn!(error = %e, "could not replay the session handshake to the restarted upstream");
    }
}
