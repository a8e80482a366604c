//! Upstreams: where forwarded messages go.
//!
//! [`stdio`] runs a child process per MCP session and is itself a Streamable HTTP server toward
//! clients (sessions, streams, resumption). [`http`] relays to a remote Streamable HTTP server,
//! which keeps all of that state itself. Both take an [`Inbound`] message that the frontend has
//! already authenticated, validated and, for `tools/call`, passed through policy.

pub mod http;
pub mod stdio;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::{Bytes, BytesMut};
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

impl Inbound {
    /// Make a request that is about to wait for a person small. The body and header values
    /// are slices of the connection's read buffer, which they would keep alive whole (about
    /// 8 KiB per held call, more than everything else a pending call needs), so they are
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
            modern: self.modern,
            recovered: self.recovered,
        }
    }
}

/// A held request while it waits: what forwarding it needs, and nothing else (a queue of
/// 100 000 pending calls keeps 100 000 of these).
pub struct Parked {
    raw: Bytes,
    headers: Box<[(HeaderName, HeaderValue)]>,
    session: Option<String>,
    /// The message uses a stateless (2026-07-28+) revision.
    pub modern: bool,
    recovered: bool,
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
            sse: true,
            modern: self.modern,
            ticket: None,
            recovered: self.recovered,
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
