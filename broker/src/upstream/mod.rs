//! Upstreams: where forwarded messages go.
//!
//! [`stdio`] runs a child process per MCP session and is itself a Streamable HTTP server toward
//! clients (sessions, streams, resumption). [`http`] relays to a remote Streamable HTTP server,
//! which keeps all of that state itself. Both take an [`Inbound`] message that the frontend has
//! already authenticated, validated and, for `tools/call`, passed through policy.

pub mod http;
pub mod stdio;

use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

use crate::gateway::Ticket;
use crate::jsonrpc::Kind;

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
    /// The client accepts `text/event-stream` answers.
    pub sse: bool,
    /// The message uses a stateless (2026-07-28+) revision.
    pub modern: bool,
    /// For an allowed `tools/call`: the record to complete when the answer is relayed.
    pub ticket: Option<Ticket>,
    /// A held call recovered after a broker restart: a handshake session that died with the
    /// broker may be restored to carry it.
    pub recovered: bool,
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
