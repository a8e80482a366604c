//! What the broker answers an HTTP request with, as a value, and the one place that turns it
//! into an HTTP response.
//!
//! Transports (a stdio child behind Streamable HTTP, a remote server) and the waiting code
//! return a [`Reply`]; errors travel as typed values up to an edge, which renders them here with
//! [`error`]. So the JSON-RPC error body, the content types, the session header and the SSE
//! headers are written in this file only.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value;

use crate::jsonrpc;

/// A body sent as it is produced: SSE frames, or a remote server's bytes.
pub type Frames = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// An answer to an MCP request.
pub enum Reply {
    /// One JSON value (a JSON-RPC message), with the `Mcp-Session-Id` it starts, if any.
    Json {
        /// HTTP status.
        status: StatusCode,
        /// The serialised message.
        body: Bytes,
        /// A session this answer starts.
        session: Option<String>,
    },
    /// A stream of server-sent events, already framed.
    Events {
        /// A session this answer starts.
        session: Option<String>,
        /// The frames.
        body: Frames,
    },
    /// A body sent as it is produced, with its own status and headers: a remote server's
    /// answer as it came, or a JSON answer that is not there yet.
    Streamed {
        /// Its status.
        status: StatusCode,
        /// Its headers (hop-by-hop ones already dropped).
        headers: HeaderMap,
        /// Its body.
        body: Frames,
    },
    /// No body: `202 Accepted` for a notification or response, `200` for a DELETE.
    Empty(StatusCode),
}

impl Reply {
    /// A JSON-RPC message with a status.
    pub fn message(status: StatusCode, message: &Value) -> Reply {
        Reply::Json {
            status,
            body: Bytes::from(message.to_string()),
            session: None,
        }
    }

    /// The `Mcp-Session-Id` this answer carries, if any.
    pub fn session(&self) -> Option<&str> {
        match self {
            Reply::Json { session, .. } | Reply::Events { session, .. } => session.as_deref(),
            Reply::Streamed { headers, .. } => {
                headers.get("mcp-session-id").and_then(|v| v.to_str().ok())
            }
            Reply::Empty(_) => None,
        }
    }

    /// Whether the body is an event stream.
    pub fn is_event_stream(&self) -> bool {
        match self {
            Reply::Events { .. } => true,
            Reply::Streamed { headers, .. } => is_event_stream(headers),
            Reply::Json { .. } | Reply::Empty(_) => false,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Reply::Json { status, .. } | Reply::Streamed { status, .. } => *status,
            Reply::Events { .. } => StatusCode::OK,
            Reply::Empty(status) => *status,
        }
    }

    /// The body as a stream, whatever its kind.
    pub fn into_frames(self) -> Frames {
        match self {
            Reply::Json { body, .. } => futures_util::stream::once(async { Ok(body) }).boxed(),
            Reply::Events { body, .. } | Reply::Streamed { body, .. } => body,
            Reply::Empty(_) => futures_util::stream::empty().boxed(),
        }
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<Body> {
        let with_session = |b: axum::http::response::Builder, s: Option<String>| match s
            .and_then(|s| HeaderValue::from_str(&s).ok())
        {
            Some(v) => b.header("mcp-session-id", v),
            None => b,
        };
        let built = match self {
            Reply::Json {
                status,
                body,
                session,
            } => with_session(
                Response::builder()
                    .status(status)
                    .header(header::CONTENT_TYPE, "application/json"),
                session,
            )
            .body(Body::from(body)),
            Reply::Events { session, body } => with_session(
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .header(header::CACHE_CONTROL, "no-cache")
                    .header("x-accel-buffering", "no"),
                session,
            )
            .body(Body::from_stream(body)),
            Reply::Streamed {
                status,
                headers,
                body,
            } => {
                let mut r = Response::new(Body::from_stream(body));
                *r.status_mut() = status;
                *r.headers_mut() = headers;
                Ok(r)
            }
            Reply::Empty(status) => Response::builder().status(status).body(Body::empty()),
        };
        built.unwrap_or_default()
    }
}

/// Whether headers say the body is an event stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// The answer to `GET /healthz`: `200 ok`, or `503` saying why the broker is not well (its
/// store cannot write), so load balancers and monitors take it out of rotation or page.
pub fn health(failing: Option<&tollgate_shared::console::StoreFailing>) -> Response<Body> {
    let (status, text) = match failing {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(f) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {f}\n")),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(text))
        .unwrap_or_default()
}

/// A JSON-RPC error for request `id` with an HTTP status.
pub fn error(status: StatusCode, code: i64, id: Value, message: &str) -> Reply {
    Reply::message(status, &jsonrpc::error(id, code, message))
}

/// An HTTP error carrying a JSON-RPC error with no id; the code follows the status.
pub fn status_error(status: StatusCode, message: &str) -> Reply {
    let code = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => jsonrpc::UNAUTHORIZED,
        s if s.is_server_error() => jsonrpc::UPSTREAM_ERROR,
        _ => jsonrpc::INVALID_REQUEST,
    };
    error(status, code, Value::Null, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(r: Response<Body>) -> String {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn errors_carry_a_json_rpc_error_whose_code_follows_the_status() {
        let r = status_error(StatusCode::NOT_FOUND, "no such thing").into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v: Value = serde_json::from_str(&body(r).await).expect("json");
        assert_eq!(v["error"]["code"], jsonrpc::INVALID_REQUEST);
        assert_eq!(v["id"], Value::Null);
        let r = status_error(StatusCode::BAD_GATEWAY, "down").into_response();
        let v: Value = serde_json::from_str(&body(r).await).expect("json");
        assert_eq!(v["error"]["code"], jsonrpc::UPSTREAM_ERROR);
        let r = status_error(StatusCode::FORBIDDEN, "no").into_response();
        let v: Value = serde_json::from_str(&body(r).await).expect("json");
        assert_eq!(v["error"]["code"], jsonrpc::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_session_answer_carries_its_header_and_events_their_headers() {
        let r = Reply::Json {
            status: StatusCode::OK,
            body: Bytes::from_static(b"{}"),
            session: Some("s1".into()),
        };
        assert_eq!(r.session(), Some("s1"));
        let r = r.into_response();
        assert_eq!(r.headers()["mcp-session-id"], "s1");
        let events = Reply::Events {
            session: None,
            body: futures_util::stream::iter([Ok(Bytes::from_static(b"data: x\n\n"))]).boxed(),
        };
        assert!(events.is_event_stream());
        let r = events.into_response();
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(body(r).await, "data: x\n\n");
        assert_eq!(
            Reply::Empty(StatusCode::ACCEPTED).into_response().status(),
            StatusCode::ACCEPTED
        );
    }
}
