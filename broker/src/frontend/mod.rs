//! The MCP frontend: Streamable HTTP endpoints at `/mcp/<server>`, the same at
//! `/<server>/mcp` (the form clients that append `/mcp` to a base URL expect), and `/mcp` for the
//! default server.
//!
//! Every request goes through the same steps: the `Origin` check (DNS-rebinding defence), client
//! authentication, the upstream lookup, the body limit, JSON-RPC validation and, for stateless
//! revisions, the mirrored-header check. Then a `tools/call` request passes through the
//! [`Gateway`] and anything else straight to the upstream.

mod headers;
mod patch;
mod post;
pub mod sessions;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use axum::routing::{any, get};
use serde_json::Value;
use tollgate_store::tokens::Registry;

use crate::auth::{self, Auth, AuthError};
use crate::browser::Browsers;
use crate::gateway::Gateway;
use crate::reply::{self, Reply};
use crate::upstream::{Upstream, UpstreamError};
use crate::waiting::{self, Feeds};

/// Shared state of the frontend.
pub struct Frontend {
    /// Policy and recording.
    pub gateway: Gateway,
    /// Upstreams by server name (replaced whole by a reload).
    pub upstreams: tollgate_shared::sync::Live<HashMap<String, Upstream>>,
    /// Who may call (replaced whole by a reload).
    pub auth: tollgate_shared::sync::Live<Auth>,
    /// Largest body accepted.
    pub max_body: usize,
    /// The `Origin` and `Host` browsers may use.
    pub browsers: Browsers,
    /// Identities from the token file (they may make calls too).
    pub registry: Arc<Registry>,
    /// Event feeds of held calls, for clients that resume.
    pub feeds: Arc<Feeds>,
    /// Keep-alive interval on held calls.
    pub keepalive: std::time::Duration,
    /// Sessions whose client declared task support at `initialize` (2025-11-25).
    pub task_sessions: tollgate_shared::sync::Mutex<std::collections::HashSet<String>>,
    /// Which identity each MCP session belongs to.
    pub sessions: Arc<sessions::Owners>,
    /// The server `/mcp` serves (`[broker] default_server`); without it, the only server.
    pub default_server: Option<String>,
}

impl Frontend {
    /// The server `/mcp` serves, if any: the configured default, else the only server.
    fn default_server(&self) -> Option<String> {
        if self.default_server.is_some() {
            return self.default_server.clone();
        }
        let upstreams = self.upstreams.load();
        match upstreams.len() {
            1 => upstreams.keys().next().cloned(),
            _ => None,
        }
    }

    fn known_servers(&self) -> String {
        let upstreams = self.upstreams.load();
        let mut names: Vec<_> = upstreams.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }
}

/// [`headers::check_mirrored`], for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub fn fuzz_check_mirrored(
    headers: &HeaderMap,
    msg: &Value,
) -> Result<(), impl std::fmt::Display + use<>> {
    headers::check_mirrored(headers, msg)
}

/// The HTTP routes.
pub fn router(state: Arc<Frontend>) -> Router {
    Router::new()
        .route("/mcp/{server}", any(handle))
        .route("/{server}/mcp", any(handle))
        .route("/mcp", any(handle_default))
        .route(
            "/healthz",
            get(|State(fe): State<Arc<Frontend>>| async move {
                reply::health(fe.gateway.store.health().borrow().as_ref())
            }),
        )
        .fallback(fallback)
        .with_state(state)
}

async fn fallback() -> Response<Body> {
    // Which servers exist is not told to whoever asks: an authenticated client learns it when
    // it names one that does not exist.
    reply::status_error(
        StatusCode::NOT_FOUND,
        "no MCP endpoint here: use /mcp/<server> or /<server>/mcp",
    )
    .into_response()
}

/// An upstream's answer, or its error rendered for request `id`.
fn answered(result: Result<Reply, UpstreamError>, id: Value) -> Reply {
    result.unwrap_or_else(|e| Reply::message(e.status(), &e.message(id)))
}

async fn handle(
    State(fe): State<Arc<Frontend>>,
    Path(server): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    route(&fe, Some(&server), method, headers, body)
        .await
        .into_response()
}

/// `/mcp`: the default server.
async fn handle_default(
    State(fe): State<Arc<Frontend>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let server = fe.default_server();
    route(&fe, server.as_deref(), method, headers, body)
        .await
        .into_response()
}

async fn route(
    fe: &Frontend,
    server: Option<&str>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    if let Err(refused) = fe.browsers.check(&headers) {
        tracing::warn!("refused a request a browser page may have made: {refused}");
        return reply::status_error(refused.status(), &refused.to_string());
    }
    let client = match auth::authenticate(&fe.auth.load(), Some(&fe.registry), &headers) {
        Ok(c) => c,
        Err(e) => {
            let challenge = if e == AuthError::Invalid {
                "Bearer error=\"invalid_token\""
            } else {
                "Bearer"
            };
            return with_header(
                reply::status_error(StatusCode::UNAUTHORIZED, &e.to_string()),
                header::WWW_AUTHENTICATE,
                challenge,
            );
        }
    };
    // Told only to an authenticated client, as an unknown server is.
    let Some(server) = server else {
        return reply::status_error(
            StatusCode::NOT_FOUND,
            &format!(
                "/mcp serves the default server, and this broker has several ({}) and no [broker] default_server: use /mcp/<server> or /<server>/mcp",
                fe.known_servers()
            ),
        );
    };
    let Some(upstream) = fe.upstreams.load().get(server).cloned() else {
        return reply::status_error(
            StatusCode::NOT_FOUND,
            &format!(
                "unknown server \"{server}\" (configured servers: {})",
                fe.known_servers()
            ),
        );
    };
    let session = match headers.get("mcp-session-id").map(|v| v.as_bytes()) {
        None => None,
        // Session ids are visible ASCII (MCP's transport spec); anything else is not one of
        // ours, and must not be taken for "no session".
        Some(v) if !v.is_empty() && v.iter().all(|b| (0x21..=0x7e).contains(b)) => {
            Some(String::from_utf8_lossy(v).into_owned())
        }
        Some(_) => {
            return reply::status_error(
                StatusCode::BAD_REQUEST,
                "Mcp-Session-Id must be visible ASCII characters (0x21 to 0x7E): send the id the broker returned from initialize",
            );
        }
    };
    // Someone else's session does not exist, as far as this client can tell.
    if let Some(s) = &session
        && fe.sessions.check(s, &client).is_err()
    {
        tracing::warn!(%client, "refused a request naming another identity's MCP session");
        return answered(Err(UpstreamError::SessionNotFound), Value::Null);
    }
    match method {
        Method::POST => post::post(fe, server, client, upstream, headers, session, body).await,
        Method::GET => {
            let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
            match last.and_then(|l| waiting::resume(&fe.feeds, &client, l, fe.keepalive)) {
                Some(Ok(r)) => r,
                Some(Err(e)) => reply::status_error(StatusCode::FORBIDDEN, &e.to_string()),
                None => answered(
                    upstream.get(&headers, session.as_deref(), last).await,
                    Value::Null,
                ),
            }
        }
        Method::DELETE => {
            let ended = upstream.delete(&headers, session.as_deref()).await;
            if let (Ok(r), Some(s)) = (&ended, &session)
                && r.status().is_success()
            {
                fe.sessions.ended(s);
            }
            answered(ended, Value::Null)
        }
        _ => with_header(
            reply::status_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "the MCP endpoint accepts POST, GET and DELETE",
            ),
            header::ALLOW,
            "GET, POST, DELETE",
        ),
    }
}

/// A reply with one more header (rendered now: only errors need this).
fn with_header(r: Reply, name: header::HeaderName, value: &'static str) -> Reply {
    let status = r.status();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(name, HeaderValue::from_static(value));
    Reply::Streamed {
        status,
        headers,
        body: r.into_frames(),
    }
}
