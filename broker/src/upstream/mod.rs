//! Upstreams: where forwarded messages go.
//!
//! [`stdio`] runs a child process per MCP session and is itself a Streamable HTTP server toward
//! clients (sessions, streams, resumption). [`http`] relays to a remote Streamable HTTP server,
//! which keeps all of that state itself. Both take an [`Inbound`] message that the frontend has
//! already authenticated, validated and, for `tools/call`, passed through policy, and answer
//! with a [`Reply`] or an [`UpstreamError`], which the edge renders.

pub mod http;
pub mod stdio;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tollgate_shared::Name;

use self::http::HttpUpstream;
use self::stdio::StdioUpstream;
use crate::gateway::Ticket;
use crate::jsonrpc::{self, Kind};
use crate::reply::Reply;

/// One configured upstream server (`[[server]]`).
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The name in `/mcp/<name>` and in rules.
    pub name: String,
    /// How to reach it.
    pub transport: Transport,
    /// How long it may stay silent on a request before the client gets an error.
    pub timeout: Duration,
    /// How many sessions (one child process each) a `command` server may have.
    pub sessions: SessionLimits,
}

impl ServerSpec {
    /// Whether the server could be used now: a `command` server's program can be found and
    /// run, a `url` server accepts a TCP connection within 2 s. `Err` says what is wrong.
    pub async fn ready(&self) -> Result<(), String> {
        match &self.transport {
            Transport::Command(c) => {
                let program = c.argv.first().ok_or("empty command")?;
                let path = std::path::Path::new(program);
                let found = if program.contains('/') {
                    let p = match (&c.cwd, path.is_relative()) {
                        (Some(dir), true) => dir.join(path),
                        _ => path.to_path_buf(),
                    };
                    executable(&p).then_some(p)
                } else {
                    let search = c
                        .env
                        .get("PATH")
                        .cloned()
                        .or_else(|| std::env::var("PATH").ok())
                        .unwrap_or_default();
                    std::env::split_paths(&search)
                        .map(|d| d.join(program))
                        .find(|p| executable(p))
                };
                match found {
                    Some(_) => Ok(()),
                    None => Err(format!("cannot find an executable {program:?} to start")),
                }
            }
            Transport::Url(r) => {
                let url = reqwest::Url::parse(&r.url).map_err(|e| format!("bad url: {e}"))?;
                let host = url.host_str().ok_or("the url has no host")?.to_string();
                let port = url.port_or_known_default().ok_or("the url has no port")?;
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::TcpStream::connect((host.as_str(), port)),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
                    Err(_) => Err(format!("no connection to {host}:{port} within 2s")),
                }
            }
        }
    }
}

fn executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How many MCP sessions, each with its own child process, a stdio server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Open sessions of one client identity.
    pub per_client: usize,
    /// Open sessions in all.
    pub total: usize,
}

/// How to reach an upstream.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Launch a child process per client session and speak newline-delimited JSON-RPC on stdio.
    Command(Command),
    /// A remote Streamable HTTP endpoint.
    Url(Remote),
}

/// A stdio server's command line.
#[derive(Debug, Clone)]
pub struct Command {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
}

/// A remote Streamable HTTP server.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The MCP endpoint URL.
    pub url: String,
    /// Extra headers sent upstream (e.g. its own credentials), with `${VAR}` expanded.
    pub headers: BTreeMap<String, String>,
}

/// Why an upstream could not take or answer a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The child process could not be started.
    #[error("upstream \"{server}\" failed: {why}")]
    Start {
        /// The server.
        server: String,
        /// What the operating system said.
        why: String,
    },
    /// No answer within the server's timeout.
    #[error("upstream \"{server}\" did not answer within {}", humantime::format_duration(*.timeout))]
    Timeout {
        /// The server.
        server: String,
        /// Its timeout.
        timeout: Duration,
    },
    /// The remote server cannot be reached.
    #[error("upstream \"{server}\" is unreachable ({why})")]
    Unreachable {
        /// The server.
        server: String,
        /// What failed, with its causes.
        why: String,
    },
    /// The child went away before it answered.
    #[error("the upstream went away before answering")]
    WentAway,
    /// A DELETE got no answer in time.
    #[error("upstream did not answer the DELETE in time")]
    DeleteTimeout,
    /// The session the client names is not (or no longer) there.
    #[error("MCP session not found: it ended or the broker restarted; send initialize again")]
    SessionNotFound,
    /// A GET without a session.
    #[error(
        "GET needs an Mcp-Session-Id: the stream for server-initiated messages belongs to a session (2026-07-28 clients use subscriptions/listen instead)"
    )]
    GetWithoutSession,
    /// A DELETE without a session.
    #[error("DELETE needs an Mcp-Session-Id")]
    DeleteWithoutSession,
    /// A handshake-revision message other than `initialize` without a session.
    #[error(
        "this message needs an Mcp-Session-Id: send initialize first and use the session id it returns (or send MCP-Protocol-Version: 2026-07-28 for stateless requests)"
    )]
    SessionRequired,
    /// Request ids are unique among a session's requests in flight.
    #[error("a request with this id is already in flight in this session")]
    DuplicateId,
    /// A `Last-Event-ID` this broker did not issue.
    #[error("Last-Event-ID is not an event id this broker issued")]
    BadEventId,
    /// A stream past its retention.
    #[error("that stream is no longer available for resumption")]
    StreamGone,
    /// The client has as many sessions open on this server as it may.
    #[error(
        "{client:?} has {limit} MCP sessions open on {server:?}, the most one client may ([broker] max_sessions_per_client); end one (DELETE) or reuse it"
    )]
    ClientSessions {
        /// The client identity.
        client: String,
        /// The server.
        server: String,
        /// The limit.
        limit: usize,
    },
    /// The server has as many sessions (child processes) as it may.
    #[error(
        "{server:?} has {limit} MCP sessions open, each with its own process, the most it may ([broker] max_sessions_per_server); try again when one ends"
    )]
    ServerSessions {
        /// The server.
        server: String,
        /// The limit.
        limit: usize,
    },
}

impl UpstreamError {
    /// The HTTP status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Start { .. }
            | UpstreamError::Unreachable { .. }
            | UpstreamError::WentAway => StatusCode::BAD_GATEWAY,
            UpstreamError::Timeout { .. } | UpstreamError::DeleteTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            UpstreamError::SessionNotFound | UpstreamError::StreamGone => StatusCode::NOT_FOUND,
            UpstreamError::GetWithoutSession | UpstreamError::DeleteWithoutSession => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            UpstreamError::DuplicateId
            | UpstreamError::BadEventId
            | UpstreamError::SessionRequired => StatusCode::BAD_REQUEST,
            UpstreamError::ClientSessions { .. } => StatusCode::TOO_MANY_REQUESTS,
            UpstreamError::ServerSessions { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON-RPC error code the client gets.
    pub fn code(&self) -> i64 {
        if self.status().is_server_error() {
            jsonrpc::UPSTREAM_ERROR
        } else {
            jsonrpc::INVALID_REQUEST
        }
    }

    /// The JSON-RPC error message for request `id`.
    pub fn message(&self, id: Value) -> Value {
        jsonrpc::error(id, self.code(), self.to_string())
    }
}

/// Where a server's traffic goes.
#[derive(Clone)]
pub enum Upstream {
    /// A child process per session.
    Stdio(Arc<StdioUpstream>),
    /// A remote Streamable HTTP server.
    Http(Arc<HttpUpstream>),
}

impl Upstream {
    /// Prepare the upstream a server spec describes (a stdio server's children start with its
    /// sessions).
    pub fn start(
        spec: &ServerSpec,
        annotations: Arc<crate::gateway::Annotations>,
    ) -> Result<Upstream, http::SetupError> {
        Ok(match &spec.transport {
            Transport::Command(c) => Upstream::Stdio(StdioUpstream::new(
                &spec.name,
                c,
                spec.timeout,
                spec.sessions,
                annotations,
            )),
            Transport::Url(r) => {
                Upstream::Http(HttpUpstream::new(&spec.name, r, spec.timeout, annotations)?)
            }
        })
    }

    /// Send a client message on to the upstream; the answer to relay.
    pub async fn post(&self, inbound: Inbound) -> Result<Reply, UpstreamError> {
        match self {
            Upstream::Stdio(u) => u.post(inbound).await,
            Upstream::Http(u) => u.post(inbound).await,
        }
    }

    /// A GET: the session's stream of server-initiated messages, or a resumption after
    /// `Last-Event-ID`.
    pub async fn get(
        &self,
        headers: &HeaderMap,
        session: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Result<Reply, UpstreamError> {
        match self {
            Upstream::Stdio(u) => u.get(session, last_event_id),
            Upstream::Http(u) => u.get(headers).await,
        }
    }

    /// A DELETE: end the session.
    pub async fn delete(
        &self,
        headers: &HeaderMap,
        session: Option<&str>,
    ) -> Result<Reply, UpstreamError> {
        match self {
            Upstream::Stdio(u) => u.delete(session),
            Upstream::Http(u) => u.delete(headers).await,
        }
    }

    /// Whether a client request header is passed on to this upstream (what a held call
    /// keeps of its headers while it waits).
    pub fn forwards_header(&self, name: &HeaderName) -> bool {
        match self {
            // A child process sees no headers; the revision serves to restore its session.
            Upstream::Stdio(_) => name == "mcp-protocol-version",
            Upstream::Http(_) => http::forwards(name),
        }
    }
}

/// One client message on its way upstream.
pub struct Inbound {
    /// The parsed message.
    pub value: Value,
    /// The body exactly as received.
    pub raw: Bytes,
    /// Request, notification or response.
    pub kind: Kind,
    /// The client's request headers.
    pub headers: HeaderMap,
    /// The `Mcp-Session-Id` the client sent, if any.
    pub session: Option<String>,
    /// The authenticated client identity.
    pub client: Name,
    /// The client accepts `text/event-stream` answers.
    pub sse: bool,
    /// The message uses a stateless (2026-07-28+) revision.
    pub modern: bool,
    /// For an allowed `tools/call`: the record to complete when the answer is relayed.
    pub ticket: Option<Ticket>,
    /// An approved held call: a handshake session that ended while it waited (the broker
    /// restarted, or the session was closed idle) may be restored to carry it.
    pub recovered: bool,
}

impl Inbound {
    /// Make a request that is about to wait for a person small. The body and header values
    /// are slices of the connection's read buffer, which they would keep alive whole (more than
    /// everything else a pending call needs), so they are
    /// copied out: the body into its own allocation, the values of the headers the upstream
    /// will be sent (`keep`) into one more, the rest dropped. The parsed message is dropped
    /// too and read again by [`Parked::unpark`].
    pub fn park(self, keep: impl Fn(&HeaderName) -> bool) -> Parked {
        let kept: Vec<_> = self.headers.iter().filter(|(n, _)| keep(n)).collect();
        let mut values = BytesMut::with_capacity(kept.iter().map(|(_, v)| v.len()).sum());
        for (_, v) in &kept {
            values.extend_from_slice(v.as_bytes());
        }
        let mut values = values.freeze();
        let mut headers = Vec::with_capacity(kept.len());
        for (name, v) in kept {
            let bytes = values.split_to(v.len());
            if let Ok(mut copy) = HeaderValue::from_maybe_shared(bytes) {
                copy.set_sensitive(v.is_sensitive());
                headers.push((name.clone(), copy));
            }
        }
        Parked {
            raw: Bytes::copy_from_slice(&self.raw),
            headers: headers.into_boxed_slice(),
            session: self.session,
            client: self.client,
            modern: self.modern,
        }
    }
}

/// A held request while it waits: what forwarding it needs, and nothing else (a queue keeps one
/// per pending call).
pub struct Parked {
    raw: Bytes,
    headers: Box<[(HeaderName, HeaderValue)]>,
    session: Option<String>,
    client: Name,
    /// The message uses a stateless (2026-07-28+) revision.
    pub modern: bool,
}

impl Parked {
    /// The request again, ready to forward as an SSE request (so upstream progress can be
    /// relayed, whatever the client accepts).
    pub fn unpark(self) -> Result<Inbound, serde_json::Error> {
        Ok(Inbound {
            value: serde_json::from_slice(&self.raw)?,
            raw: self.raw,
            kind: Kind::Request,
            headers: self.headers.into_vec().into_iter().collect(),
            session: self.session,
            client: self.client,
            sse: true,
            modern: self.modern,
            ticket: None,
            // Approved after waiting: its session may have been closed idle meanwhile.
            recovered: true,
        })
    }
}

/// Strip the CR/LF bytes from a JSON text so it fits on one stdio line. Outside strings they
/// are insignificant whitespace, and inside strings JSON forbids them raw, so this never changes
/// the message.
pub fn one_line(raw: &[u8]) -> Bytes {
    if raw.iter().any(|b| *b == b'\n' || *b == b'\r') {
        Bytes::from(
            raw.iter()
                .map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b })
                .collect::<Vec<u8>>(),
        )
    } else {
        Bytes::copy_from_slice(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_request_owns_its_bytes_and_reads_back_the_same() {
        // What hyper hands over: the body and header values are slices of one read buffer.
        let buffer = Bytes::from(
            br#"xxxx{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"m":"hi"}}}sess-1"#
                .to_vec(),
        );
        let body = buffer.slice(4..buffer.len() - 6);
        let mut headers = HeaderMap::new();
        headers.insert(
            "mcp-session-id",
            HeaderValue::from_maybe_shared(buffer.slice(buffer.len() - 6..)).expect("value"),
        );
        headers.insert("x-dropped", HeaderValue::from_static("gone"));
        headers.insert("accept", HeaderValue::from_static("application/json"));
        let value: Value = serde_json::from_slice(&body).expect("json");
        let inbound = Inbound {
            value: value.clone(),
            raw: body.clone(),
            kind: Kind::Request,
            headers,
            session: Some("sess-1".into()),
            client: "agent".into(),
            sse: false,
            modern: false,
            ticket: None,
            recovered: false,
        };
        let parked = inbound.park(|n| n != "x-dropped");
        let inside = |p: *const u8| buffer.as_ptr_range().contains(&p);
        assert!(!inside(parked.raw.as_ptr()), "the body was copied out");
        assert_eq!(parked.raw, body);
        let (_, session) = parked
            .headers
            .iter()
            .find(|(n, _)| n == "mcp-session-id")
            .expect("kept");
        assert!(!inside(session.as_bytes().as_ptr()), "header values too");
        let inbound = parked.unpark().expect("reads back");
        assert_eq!(inbound.headers["mcp-session-id"], "sess-1");
        assert_eq!(inbound.headers["accept"], "application/json");
        assert!(!inbound.headers.contains_key("x-dropped"));
        assert_eq!(inbound.value, value);
        assert_eq!(inbound.session.as_deref(), Some("sess-1"));
        assert!(inbound.sse, "forwarded as an SSE request");
    }
}
