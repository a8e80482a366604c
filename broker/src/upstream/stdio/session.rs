//! One MCP session: the requests in flight between a client and its child process.
//!
//! A request gets a response stream (see [`super::request`]); what the child writes is routed
//! back by id: a response ends its request's stream, progress goes to the stream whose token it
//! names, anything else to the session's GET stream (or an open request stream, or a backlog
//! for the next GET stream). Stateless requests share one session whose ids and progress
//! tokens are renumbered, so two clients' ids never meet in the child.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tollgate_shared::Name;
use tollgate_shared::sync::Mutex;

use super::streams::StreamLog;
use crate::gateway::{Annotations, Ticket};
use crate::jsonrpc::{self, Kind};
use crate::upstream::{Inbound, one_line};

/// Messages kept for a GET stream that is not connected.
const BACKLOG_CAP: usize = 1024;

/// A request in flight, by the id the child sees.
pub(super) struct Pending {
    pub(super) stream: u64,
    pub(super) client_id: Value,
    pub(super) client_token: Option<Value>,
    pub(super) token_key: Option<String>,
    pub(super) method: String,
    pub(super) ticket: Option<Ticket>,
}

/// What a session knows about its requests and streams.
#[derive(Default)]
pub(super) struct State {
    pub(super) pending: HashMap<String, Pending>,
    pub(super) progress: HashMap<String, String>,
    pub(super) streams: HashMap<u64, StreamLog>,
    pub(super) next_stream: u64,
    pub(super) get_stream: Option<u64>,
    pub(super) backlog: VecDeque<Bytes>,
    pub(super) next_mapped: u64,
    pub(super) init: Option<Value>,
    pub(super) initialized: Option<Bytes>,
    pub(super) internal: HashSet<String>,
}

impl State {
    /// Forget a request in flight, with its progress-token route.
    pub(super) fn take_pending(&mut self, key: &str) -> Option<Pending> {
        let p = self.pending.remove(key)?;
        if let Some(k) = &p.token_key {
            self.progress.remove(k);
        }
        Some(p)
    }
}

/// One MCP session and its child process.
pub(super) struct Session {
    /// The `Mcp-Session-Id` (none for the shared session of stateless requests).
    pub(super) id: Option<String>,
    /// Stateless requests share this session: their ids and progress tokens are renumbered.
    pub(super) mapped: bool,
    /// The client identity whose `initialize` started it (none for the shared session).
    pub(super) owner: Option<Name>,
    pub(super) server: String,
    stdin: mpsc::Sender<Bytes>,
    pub(super) state: Mutex<State>,
    pub(super) cancel: CancellationToken,
    closed: AtomicBool,
    last_active: Mutex<Instant>,
    annotations: Arc<Annotations>,
}

impl Session {
    /// A session whose child reads `stdin`.
    pub(super) fn new(
        id: Option<String>,
        mapped: bool,
        owner: Option<Name>,
        server: &str,
        stdin: mpsc::Sender<Bytes>,
        annotations: Arc<Annotations>,
    ) -> Arc<Session> {
        Arc::new(Session {
            id,
            mapped,
            owner,
            server: server.to_string(),
            stdin,
            state: Mutex::new(State::default()),
            cancel: CancellationToken::new(),
            closed: AtomicBool::new(false),
            last_active: Mutex::new(Instant::now()),
            annotations,
        })
    }

    pub(super) fn touch(&self) {
        *self.last_active.lock() = Instant::now();
    }

    /// Whether the session has requests in flight or a client reading its GET stream.
    pub(super) fn busy(&self) -> bool {
        let st = self.state.lock();
        !st.pending.is_empty()
            || st
                .get_stream
                .and_then(|id| st.streams.get(&id))
                .is_some_and(|s| s.is_read())
    }

    /// How long since the client last used the session.
    pub(super) fn idle_for(&self) -> std::time::Duration {
        self.last_active.lock().elapsed()
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The child could not be restarted: nothing more will be answered.
    pub(super) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// A session brought back after a restart: the handshake `init` (with the internal id
    /// `init_id`, whose answer nobody waits for) and `initialized` are what a restarted child
    /// is given again.
    pub(super) fn restored(&self, init_id: &Value, init: Value, initialized: Bytes) {
        let mut st = self.state.lock();
        st.internal.insert(jsonrpc::id_key(init_id));
        st.init = Some(init);
        st.initialized = Some(initialized);
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.cancel.cancel();
        self.fail_all("the MCP session was closed");
    }

    pub(super) async fn send(&self, line: Bytes) -> bool {
        let sent = self.stdin.send(line).await.is_ok();
        if !sent {
            tracing::warn!(server = %self.server, "upstream process is not running; message dropped");
        }
        sent
    }

    pub(super) fn event_id(&self, stream: u64, seq: u64) -> Option<String> {
        (!self.mapped).then(|| format!("{stream}-{seq}"))
    }

    pub(super) async fn notify(&self, inbound: &Inbound) {
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
                        s.end();
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
    pub(super) fn push(&self, st: &mut State, stream: u64, data: Bytes, last: bool) {
        if let Some(s) = st.streams.get_mut(&stream) {
            s.push(data, last, !self.mapped);
        }
    }

    /// Forget finished streams past their retention.
    pub(super) fn gc(&self) {
        self.state.lock().streams.retain(|_, s| !s.expired());
    }

    /// Tell the child to stop working on a request nobody waits for any more.
    pub(super) fn cancel_upstream(&self, upstream_id: &Value, reason: &str) {
        let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": upstream_id, "reason": reason}});
        let _ = self.stdin.try_send(Bytes::from(cancel.to_string()));
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
        let live = |st: &State, id: u64| st.streams.get(&id).is_some_and(|s| s.is_read());
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
    pub(super) fn dispatch(&self, line: &[u8]) {
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
    pub(super) fn fail_all(&self, reason: &str) {
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
}
