//! Remote Streamable HTTP upstreams: a streaming reverse proxy.
//!
//! The remote server owns sessions, streams and resumption, so the broker relays POST, GET and
//! DELETE with their MCP headers (`Mcp-Session-Id`, `MCP-Protocol-Version`, `Mcp-Method`,
//! `Mcp-Name`, `Mcp-Param-*`, `Last-Event-ID`) and streams the answer back chunk by chunk, never
//! buffering an SSE stream. The client's own `Authorization` (its broker token) is never sent
//! upstream; the upstream's credentials come from the server's `headers` in the config.
//!
//! Answers to `tools/list` are also read on the way through (a bounded copy, parsed when the
//! stream ends) so policy learns tool annotations. Closing the client's connection drops the
//! upstream request, which on 2026-07-28 is how a request is cancelled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde_json::Value;

use super::{Inbound, Remote, UpstreamError};
use crate::gateway::{Annotations, Ticket};
use crate::reply::Reply;
use crate::{jsonrpc, sse};

/// Largest `tools/list` answer read for annotations; larger ones pass through unread.
const TAP_LIMIT: usize = 32 << 20;

/// A remote Streamable HTTP upstream.
pub struct HttpUpstream {
    name: String,
    url: reqwest::Url,
    headers: HeaderMap,
    client: reqwest::Client,
    timeout: Duration,
    annotations: Arc<Annotations>,
}

/// Request headers that describe the client's connection to the broker, not the message.
const DROP_REQUEST: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "authorization",
    "origin",
    "accept-encoding",
];

/// Whether a client's request header is passed on upstream (hop-by-hop headers and the
/// client's credentials for the broker are not).
pub fn forwards(name: &HeaderName) -> bool {
    !DROP_REQUEST.contains(&name.as_str())
}

/// Response headers that describe the upstream connection, not the message.
const DROP_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "trailer",
    "upgrade",
];

impl HttpUpstream {
    /// Prepare a client for the upstream.
    pub fn new(
        name: &str,
        remote: &Remote,
        timeout: Duration,
        annotations: Arc<Annotations>,
    ) -> Result<Arc<HttpUpstream>, SetupError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SetupError::Client(tollgate_shared::report::chain(&e)))?;
        Ok(Arc::new(HttpUpstream {
            name: name.to_string(),
            url: reqwest::Url::parse(&remote.url).map_err(|e| SetupError::Url(e.to_string()))?,
            headers: header_map(&remote.headers)?,
            client,
            timeout,
            annotations,
        }))
    }

    fn request(&self, method: Method, client_headers: &HeaderMap) -> reqwest::RequestBuilder {
        let mut headers = HeaderMap::with_capacity(client_headers.len() + self.headers.len());
        for (k, v) in client_headers {
            if forwards(k) {
                headers.append(k.clone(), v.clone());
            }
        }
        for (k, v) in &self.headers {
            headers.insert(k.clone(), v.clone());
        }
        self.client
            .request(method, self.url.clone())
            .headers(headers)
    }

    fn unreachable(&self, e: &reqwest::Error) -> UpstreamError {
        let e = if e.is_timeout() {
            self.timed_out()
        } else {
            UpstreamError::Unreachable {
                server: self.name.clone(),
                why: tollgate_shared::report::chain(e),
            }
        };
        tracing::warn!(server = %self.name, "{e}");
        e
    }

    fn timed_out(&self) -> UpstreamError {
        UpstreamError::Timeout {
            server: self.name.clone(),
            timeout: self.timeout,
        }
    }

    /// Relay a POSTed message.
    pub async fn post(&self, inbound: Inbound) -> Result<Reply, UpstreamError> {
        let method = jsonrpc::method(&inbound.value)
            .unwrap_or_default()
            .to_string();
        let req = self
            .request(Method::POST, &inbound.headers)
            .body(inbound.raw);
        let resp = match tokio::time::timeout(self.timeout, req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                if let Some(t) = inbound.ticket {
                    t.complete(Some(format!(
                        "upstream unreachable: {}",
                        tollgate_shared::report::chain(&e)
                    )));
                }
                return Err(self.unreachable(&e));
            }
            Err(_) => {
                if let Some(t) = inbound.ticket {
                    t.complete(Some("upstream timed out before answering".into()));
                }
                tracing::warn!(server = %self.name, "upstream did not answer in time");
                return Err(self.timed_out());
            }
        };
        let tap = method == "tools/list";
        let idle = (method != "subscriptions/listen").then_some(self.timeout);
        Ok(self.relay(resp, inbound.ticket, tap, idle))
    }

    /// Relay a GET (the session's server-initiated stream, or a resumption).
    pub async fn get(&self, headers: &HeaderMap) -> Result<Reply, UpstreamError> {
        match self.request(Method::GET, headers).send().await {
            Ok(r) => Ok(self.relay(r, None, false, None)),
            Err(e) => Err(self.unreachable(&e)),
        }
    }

    /// Relay a DELETE (session termination).
    pub async fn delete(&self, headers: &HeaderMap) -> Result<Reply, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.request(Method::DELETE, headers).send()).await
        {
            Ok(Ok(r)) => Ok(self.relay(r, None, false, None)),
            Ok(Err(e)) => Err(self.unreachable(&e)),
            Err(_) => Err(UpstreamError::DeleteTimeout),
        }
    }

    fn relay(
        &self,
        resp: reqwest::Response,
        ticket: Option<Ticket>,
        tap: bool,
        idle: Option<Duration>,
    ) -> Reply {
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut headers = HeaderMap::with_capacity(resp.headers().len() + 1);
        for (k, v) in resp.headers() {
            if !DROP_RESPONSE.contains(&k.as_str()) {
                headers.append(k.clone(), v.clone());
            }
        }
        let is_sse = crate::reply::is_event_stream(&headers);
        if is_sse {
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        }
        let failed = (!status.is_success()).then(|| format!("upstream answered HTTP {status}"));
        let state = Relay {
            body: resp
                .bytes_stream()
                .map(|r| r.map_err(BodyError::Broke))
                .boxed(),
            ticket,
            failed,
            tap: tap.then(Vec::new),
            is_sse,
            idle,
            server: self.name.clone(),
            annotations: self.annotations.clone(),
        };
        let body = stream::unfold(Some(state), |state| async move {
            let mut st = state?;
            let next = match st.idle {
                Some(d) => tokio::time::timeout(d, st.body.next())
                    .await
                    .unwrap_or(Some(Err(BodyError::Silent(d)))),
                None => st.body.next().await,
            };
            match next {
                Some(Ok(chunk)) => {
                    if let Some(buf) = &mut st.tap {
                        if buf.len() + chunk.len() <= TAP_LIMIT {
                            buf.extend_from_slice(&chunk);
                        } else {
                            st.tap = None;
                        }
                    }
                    Some((Ok::<_, std::io::Error>(chunk), Some(st)))
                }
                Some(Err(e)) => {
                    let why = format!("upstream stream failed: {e}");
                    tracing::warn!(server = %st.server, "{why}");
                    if let Some(t) = st.ticket.take() {
                        t.complete(Some(why.clone()));
                    }
                    Some((Err(std::io::Error::other(why)), None))
                }
                None => {
                    st.finish();
                    None
                }
            }
        });
        Reply::Streamed {
            status,
            headers,
            body: body.boxed(),
        }
    }
}

/// Why a relayed body ended before it was complete.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// The connection to the upstream failed.
    #[error("{}", tollgate_shared::report::chain(.0))]
    Broke(reqwest::Error),
    /// Nothing arrived for longer than the server's timeout.
    #[error("the upstream went silent for longer than {}", humantime::format_duration(*.0))]
    Silent(Duration),
}

/// State of one relayed response body.
struct Relay {
    body: futures_util::stream::BoxStream<'static, Result<Bytes, BodyError>>,
    ticket: Option<Ticket>,
    failed: Option<String>,
    tap: Option<Vec<u8>>,
    is_sse: bool,
    idle: Option<Duration>,
    server: String,
    annotations: Arc<Annotations>,
}

impl Relay {
    fn finish(&mut self) {
        if let Some(t) = self.ticket.take() {
            t.complete(self.failed.take());
        }
        if let Some(buf) = self.tap.take() {
            if self.is_sse {
                for ev in sse::Parser::default().feed(&buf) {
                    if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                        self.annotations.learn_from_response(&self.server, &v);
                    }
                }
            } else if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                self.annotations.learn_from_response(&self.server, &v);
            }
        }
    }
}

/// Why an HTTP upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The URL does not parse.
    #[error("bad url: {0}")]
    Url(String),
    /// A configured header is not a valid HTTP header.
    #[error("header {0:?} is not a valid HTTP header")]
    Header(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

fn header_map(headers: &BTreeMap<String, String>) -> Result<HeaderMap, SetupError> {
    let mut out = HeaderMap::new();
    for (k, v) in headers {
        let bad = || SetupError::Header(k.clone());
        out.insert(
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad())?,
            HeaderValue::from_str(v).map_err(|_| bad())?,
        );
    }
    Ok(out)
}
