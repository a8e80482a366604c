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
//!
//! [`session`] routes one session's messages between the client and its child, [`request`]
//! serves the client's requests and streams (timeouts, resumption, closed streams),
//! [`streams`] keeps what each stream carried, and [`child`] runs and restarts the process.

mod child;
mod request;
mod session;
mod streams;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use tollgate_shared::sync::Mutex;

use super::{Command, Inbound, SessionLimits, UpstreamError, one_line};
use crate::gateway::Annotations;
use crate::jsonrpc::{self, Kind};
use crate::reply::Reply;
use session::Session;
use tollgate_shared::Name;

/// A stdio upstream and its sessions.
pub struct StdioUpstream {
    name: String,
    command: Command,
    timeout: Duration,
    limits: SessionLimits,
    annotations: Arc<Annotations>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    shared: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl StdioUpstream {
    /// Prepare an upstream; children start when sessions do.
    pub fn new(
        name: &str,
        command: &Command,
        timeout: Duration,
        limits: SessionLimits,
        annotations: Arc<Annotations>,
    ) -> Arc<StdioUpstream> {
        Arc::new(StdioUpstream {
            name: name.to_string(),
            command: command.clone(),
            timeout,
            limits,
            annotations,
            sessions: Mutex::new(HashMap::new()),
            shared: tokio::sync::Mutex::new(None),
        })
    }

    /// Close sessions idle for longer than `idle` and forget finished streams; runs forever. A
    /// session is idle when its client has sent nothing for that long, has no request in
    /// flight and is not reading its GET stream.
    pub async fn reap(self: Arc<Self>, idle: Duration) {
        let mut tick = tokio::time::interval(Duration::from_secs(15).min(idle));
        loop {
            tick.tick().await;
            let mut dead = Vec::new();
            self.sessions.lock().retain(|id, s| {
                let keep = !s.is_closed() && (s.idle_for() < idle || s.busy());
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
    fn start_session(
        &self,
        id: Option<String>,
        mapped: bool,
        owner: Option<Name>,
    ) -> Result<Arc<Session>, UpstreamError> {
        let child = child::spawn(&self.command).map_err(|e| {
            tracing::error!(server = %self.name, error = %e, command = ?self.command.argv, "cannot start upstream");
            UpstreamError::Start {
                server: self.name.clone(),
                why: format!(
                    "cannot start {:?}: {e}",
                    self.command.argv.first().map_or("", String::as_str)
                ),
            }
        })?;
        let (stdin, rx) = mpsc::channel(1024);
        let session = Session::new(
            id,
            mapped,
            owner,
            &self.name,
            stdin,
            self.annotations.clone(),
        );
        tokio::spawn(child::supervise(
            session.clone(),
            self.command.clone(),
            child,
            rx,
        ));
        Ok(session)
    }

    /// Bring back a handshake session that ended with a previous broker process, so a held call
    /// recovered from the store can be forwarded on it: a new child, given an `initialize`
    /// (the call's protocol revision, no client capabilities) and `notifications/initialized`
    /// before anything else, registered under the old session id so the resuming client's
    /// later requests find it too.
    async fn restore_session(
        &self,
        id: &str,
        inbound: &Inbound,
    ) -> Result<Arc<Session>, UpstreamError> {
        let version = inbound
            .headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("2025-11-25");
        // Not counted against the limits: the call it carries was admitted before.
        let session =
            self.start_session(Some(id.to_string()), false, Some(inbound.client.clone()))?;
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
        session.restored(&init_id, init.clone(), initialized.clone());
        if !session.send(Bytes::from(init.to_string())).await || !session.send(initialized).await {
            return Err(UpstreamError::Start {
                server: self.name.clone(),
                why: "the restored upstream session did not accept its handshake".into(),
            });
        }
        self.sessions.lock().insert(id.to_string(), session.clone());
        tracing::info!(server = %self.name, session = %id, "restored an MCP session for a recovered held call");
        Ok(session)
    }

    async fn shared_session(&self) -> Result<Arc<Session>, UpstreamError> {
        let mut shared = self.shared.lock().await;
        match &*shared {
            Some(s) if !s.is_closed() => Ok(s.clone()),
            _ => {
                let s = self.start_session(None, true, None)?;
                *shared = Some(s.clone());
                Ok(s)
            }
        }
    }

    /// May `client` start one more session (and child process)? Checked before the child is
    /// started; two racing `initialize`s may both pass, overshooting by one.
    fn admit(&self, client: &Name) -> Result<(), UpstreamError> {
        let sessions = self.sessions.lock();
        let open = sessions.values().filter(|s| !s.is_closed());
        let (mut total, mut mine) = (0, 0);
        for s in open {
            total += 1;
            mine += usize::from(s.owner.as_ref() == Some(client));
        }
        if mine >= self.limits.per_client {
            tracing::warn!(server = %self.name, %client, limit = self.limits.per_client, "session refused: client at its limit");
            return Err(UpstreamError::ClientSessions {
                client: client.to_string(),
                server: self.name.clone(),
                limit: self.limits.per_client,
            });
        }
        if total >= self.limits.total {
            tracing::warn!(server = %self.name, %client, limit = self.limits.total, "session refused: server at its limit");
            return Err(UpstreamError::ServerSessions {
                server: self.name.clone(),
                limit: self.limits.total,
            });
        }
        Ok(())
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .get(id)
            .filter(|s| !s.is_closed())
            .cloned()
    }

    /// Handle a POSTed message.
    pub async fn post(&self, inbound: Inbound) -> Result<Reply, UpstreamError> {
        let is_init = jsonrpc::method(&inbound.value) == Some("initialize");
        let session = match (&inbound.session, is_init) {
            (Some(id), _) if !inbound.modern => match self.session(id) {
                Some(s) => s,
                None if inbound.recovered => self.restore_session(id, &inbound).await?,
                None => return Err(UpstreamError::SessionNotFound),
            },
            // A handshake-revision message outside a session: only `initialize` starts one (the
            // shared child is for stateless requests, which carry their revision).
            (None, false) if !inbound.modern => return Err(UpstreamError::SessionRequired),
            (_, true) if !inbound.modern => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                self.admit(&inbound.client)?;
                let s =
                    self.start_session(Some(id.clone()), false, Some(inbound.client.clone()))?;
                self.sessions.lock().insert(id.clone(), s.clone());
                tracing::info!(server = %self.name, session = %id, client = %inbound.client, "new MCP session");
                s
            }
            _ => self.shared_session().await?,
        };
        session.touch();
        match inbound.kind {
            Kind::Request => session.request(inbound, self.timeout).await,
            Kind::Notification => {
                session.notify(&inbound).await;
                Ok(Reply::Empty(StatusCode::ACCEPTED))
            }
            Kind::Response => {
                session.send(one_line(&inbound.raw)).await;
                Ok(Reply::Empty(StatusCode::ACCEPTED))
            }
        }
    }

    /// Handle a GET: open the session's stream for server-initiated messages, or resume a
    /// stream after `Last-Event-ID`.
    pub fn get(
        &self,
        session: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Result<Reply, UpstreamError> {
        let id = session.ok_or(UpstreamError::GetWithoutSession)?;
        let s = self.session(id).ok_or(UpstreamError::SessionNotFound)?;
        s.touch();
        match last_event_id {
            Some(lei) => s.resume(lei),
            None => Ok(s.open_get_stream()),
        }
    }

    /// Handle a DELETE: end the session and its child.
    pub fn delete(&self, session: Option<&str>) -> Result<Reply, UpstreamError> {
        let id = session.ok_or(UpstreamError::DeleteWithoutSession)?;
        let s = self
            .sessions
            .lock()
            .remove(id)
            .ok_or(UpstreamError::SessionNotFound)?;
        tracing::info!(server = %self.name, session = %id, "MCP session ended by client");
        s.close();
        Ok(Reply::Empty(StatusCode::OK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use futures_util::StreamExt;
    use serde_json::Value;

    /// A stdio MCP server in a few lines of sh: it logs every line it reads to
    /// `$TOLLGATE_FAKE_LOG`, answers `initialize`, echoes calls, exits on the tool `crash`,
    /// never answers the tool `silent`, and sends progress before answering `progress`.
    const FAKE: &str = r#"
while IFS= read -r line; do
  printf '%s\n' "$line" >> "$TOLLGATE_FAKE_LOG"
  id=$(printf '%s\n' "$line" | sed -n 's/.*"id":\([^,}]*\).*/\1/p')
  case "$line" in
    *'"method":"initialize"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"fake","version":"1"}}}\n' "$id" ;;
    *'"method":"notifications/'*) ;;
    *'"name":"crash"'*) exit 3 ;;
    *'"name":"silent"'*) ;;
    *'"name":"progress"'*) printf '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p1","progress":1}}\n'; printf '{"jsonrpc":"2.0","id":%s,"result":{"content":[]}}\n' "$id" ;;
    *) printf '{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"ok"}]}}\n' "$id" ;;
  esac
done
"#;

    struct Fake {
        upstream: Arc<StdioUpstream>,
        log: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    const ROOMY: SessionLimits = SessionLimits {
        per_client: 16,
        total: 64,
    };

    impl Fake {
        fn new(timeout: Duration) -> Fake {
            Fake::with_limits(timeout, ROOMY)
        }

        fn with_limits(timeout: Duration, limits: SessionLimits) -> Fake {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = dir.path().join("lines");
            let command = Command {
                argv: vec!["sh".into(), "-c".into(), FAKE.into()],
                env: [("TOLLGATE_FAKE_LOG".to_string(), log.display().to_string())].into(),
                cwd: None,
            };
            let upstream = StdioUpstream::new(
                "fake",
                &command,
                timeout,
                limits,
                Arc::new(Annotations::default()),
            );
            Fake {
                upstream,
                log,
                _dir: dir,
            }
        }

        /// The lines the child (every child of the session) has read.
        fn lines(&self) -> Vec<String> {
            std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    fn inbound(value: Value, session: Option<&str>, sse: bool, modern: bool) -> Inbound {
        inbound_as("agent", value, session, sse, modern)
    }

    fn inbound_as(
        client: &str,
        value: Value,
        session: Option<&str>,
        sse: bool,
        modern: bool,
    ) -> Inbound {
        Inbound {
            client: client.into(),
            raw: Bytes::from(value.to_string()),
            kind: jsonrpc::classify(&value).expect("a JSON-RPC message"),
            value,
            headers: HeaderMap::new(),
            session: session.map(str::to_string),
            sse,
            modern,
            ticket: None,
            recovered: false,
        }
    }

    fn call(id: u64, tool: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool}})
    }

    async fn body(reply: Reply) -> String {
        let mut frames = reply.into_frames();
        let mut out = Vec::new();
        while let Some(chunk) = frames.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        String::from_utf8(out).expect("utf-8")
    }

    async fn handshake(fake: &Fake) -> String {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
        let reply = fake
            .upstream
            .post(inbound(init, None, false, false))
            .await
            .expect("initialize");
        let session = reply.session().expect("a session id").to_string();
        assert!(body(reply).await.contains("\"serverInfo\""));
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let ack = fake
            .upstream
            .post(inbound(initialized, Some(&session), false, false))
            .await
            .expect("notification");
        assert_eq!(ack.status(), StatusCode::ACCEPTED);
        session
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crashed_child_fails_its_request_and_restarts_with_the_session_handshake() {
        let fake = Fake::new(Duration::from_secs(10));
        let session = handshake(&fake).await;
        let ok = fake
            .upstream
            .post(inbound(call(1, "echo"), Some(&session), false, false))
            .await
            .expect("echo");
        assert!(body(ok).await.contains(r#""id":1,"result""#));
        let crashed = fake
            .upstream
            .post(inbound(call(2, "crash"), Some(&session), false, false))
            .await
            .expect("an answer");
        let text = body(crashed).await;
        assert!(
            text.contains(r#""id":2"#) && text.contains("the upstream process exited"),
            "{text}"
        );
        // The new child is given the client's handshake again before anything else.
        let replayed = |lines: &[String]| {
            let at = lines.iter().position(|l| l.contains("tollgate-reinit-"))?;
            lines.get(at + 1).cloned()
        };
        wait_for("the handshake replayed", || {
            replayed(&fake.lines()).is_some()
        })
        .await;
        let lines = fake.lines();
        let after = replayed(&lines).unwrap_or_default();
        assert!(after.contains("notifications/initialized"), "{lines:?}");
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains(r#""method":"initialize""#))
                .count(),
            2,
            "{lines:?}"
        );
        let again = fake
            .upstream
            .post(inbound(call(3, "echo"), Some(&session), false, false))
            .await
            .expect("the session carries on");
        assert!(body(again).await.contains(r#""id":3,"result""#));
        fake.upstream.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_child_times_out_and_is_told_to_cancel() {
        let fake = Fake::new(Duration::from_millis(300));
        let session = handshake(&fake).await;
        let reply = fake
            .upstream
            .post(inbound(call(7, "silent"), Some(&session), false, false))
            .await
            .expect("a timeout answer");
        let text = body(reply).await;
        assert!(
            text.contains(r#""id":7"#) && text.contains("did not answer within 300ms"),
            "{text}"
        );
        wait_for("the cancellation", || {
            fake.lines()
                .iter()
                .any(|l| l.contains("notifications/cancelled") && l.contains(r#""requestId":7"#))
        })
        .await;
        fake.upstream.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_carry_event_ids_that_resume_after_the_last_one_seen() {
        let fake = Fake::new(Duration::from_secs(10));
        let session = handshake(&fake).await;
        let mut progress = call(4, "progress");
        progress["params"]["_meta"] = json!({"progressToken": "p1"});
        let reply = fake
            .upstream
            .post(inbound(progress, Some(&session), true, false))
            .await
            .expect("a stream");
        assert!(reply.is_event_stream());
        let text = body(reply).await;
        let events = crate::sse::Parser::default().feed(text.as_bytes());
        assert_eq!(events.len(), 2, "{text}");
        assert!(events[0].data.contains("notifications/progress"));
        assert!(events[1].data.contains(r#""id":4"#));
        let first = events[0].id.clone().expect("an event id");
        // Resuming after the first event replays the second.
        let resumed = fake
            .upstream
            .get(Some(&session), Some(&first))
            .expect("resumable");
        let replayed = crate::sse::Parser::default().feed(body(resumed).await.as_bytes());
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed[0].id, events[1].id);
        fake.upstream.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stateless_requests_share_a_child_and_keep_their_own_ids() {
        let fake = Fake::new(Duration::from_secs(10));
        let (a, b) = tokio::join!(
            fake.upstream
                .post(inbound(call(1, "echo"), None, false, true)),
            fake.upstream
                .post(inbound(call(1, "echo"), None, false, true)),
        );
        for reply in [a, b] {
            let text = body(reply.expect("answered")).await;
            assert!(text.contains(r#""id":1,"result""#), "{text}");
        }
        let ids: Vec<String> = fake
            .lines()
            .into_iter()
            .filter(|l| l.contains("tools/call"))
            .collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1], "the child saw two different ids");
        fake.upstream.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_cannot_be_served_is_a_typed_error() {
        let fake = Fake::new(Duration::from_secs(10));
        let lost = fake
            .upstream
            .post(inbound(call(1, "echo"), Some("gone"), false, false))
            .await;
        assert!(matches!(lost, Err(UpstreamError::SessionNotFound)));
        assert!(matches!(
            fake.upstream.get(None, None),
            Err(UpstreamError::GetWithoutSession)
        ));
        assert!(matches!(
            fake.upstream.delete(None),
            Err(UpstreamError::DeleteWithoutSession)
        ));
        let session = handshake(&fake).await;
        assert!(matches!(
            fake.upstream.get(Some(&session), Some("not-an-id")),
            Err(UpstreamError::BadEventId)
        ));
        assert!(matches!(
            fake.upstream.get(Some(&session), Some("999-0")),
            Err(UpstreamError::StreamGone)
        ));
        let deleted = fake.upstream.delete(Some(&session)).expect("deleted");
        assert_eq!(deleted.status(), StatusCode::OK);
        assert!(matches!(
            fake.upstream.delete(Some(&session)),
            Err(UpstreamError::SessionNotFound)
        ));
        let missing = StdioUpstream::new(
            "missing",
            &Command {
                argv: vec!["/nonexistent/tollgate-test-server".into()],
                env: Default::default(),
                cwd: None,
            },
            Duration::from_secs(1),
            ROOMY,
            Arc::new(Annotations::default()),
        );
        let failed = missing
            .post(inbound(call(1, "echo"), None, false, true))
            .await
            .err()
            .expect("cannot start");
        assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
        assert!(
            failed.to_string().starts_with(
                "upstream \"missing\" failed: cannot start \"/nonexistent/tollgate-test-server\""
            ),
            "{failed}"
        );
    }

    #[tokio::test]
    async fn sessions_are_limited_per_client_and_per_server() {
        let fake = Fake::with_limits(
            Duration::from_secs(5),
            SessionLimits {
                per_client: 2,
                total: 3,
            },
        );
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
        let start = |client: &'static str| {
            let up = fake.upstream.clone();
            let init = init.clone();
            async move { up.post(inbound_as(client, init, None, false, false)).await }
        };
        let a1 = start("a").await.expect("a's first");
        start("a").await.expect("a's second");
        let third = start("a").await.err().expect("a's third is one too many");
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            third.to_string().contains("max_sessions_per_client"),
            "{third}"
        );
        start("b").await.expect("another client");
        let full = start("c").await.err().expect("the server is full");
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            full.to_string().contains("max_sessions_per_server"),
            "{full}"
        );
        let a1 = a1.session().expect("session id").to_string();
        fake.upstream.delete(Some(&a1)).expect("ended");
        start("c").await.expect("an ended session frees its place");
        fake.upstream.shutdown().await;
    }
}
