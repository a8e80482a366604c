//! Editing an upstream's answer on its way to the client, for the few answers the broker adds
//! to (its task support in `initialize`, `tools/list` and `server/discover`).
//!
//! The answer is read whole (these are small, single-message answers), the JSON-RPC response in
//! it is edited, and it is sent on in the framing it came in: a JSON body, or an SSE stream
//! whose event ids and other events are kept.

use axum::body::Body;
use axum::http::{Response, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::Value;

use crate::sse;

/// The most an answer to edit may be; larger ones pass through unedited.
const LIMIT: usize = 8 << 20;

/// Apply `edit` to the `result` of the JSON-RPC response in `response`.
pub async fn result(response: Response<Body>, edit: impl Fn(&mut Value)) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let mut data = BytesMut::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) if data.len() + c.len() <= LIMIT => data.extend_from_slice(&c),
            _ => return Response::from_parts(parts, Body::from(data.freeze())),
        }
    }
    let edit_message = |text: &[u8]| -> Option<Bytes> {
        let mut v: Value = serde_json::from_slice(text).ok()?;
        let r = v.get_mut("result")?;
        edit(r);
        Some(Bytes::from(v.to_string()))
    };
    let out = if is_sse {
        let mut parser = sse::Parser::default();
        let mut out = BytesMut::new();
        let mut events = parser.feed(&data);
        events.extend(parser.feed(b"\n\n"));
        for ev in events {
            let data =
                edit_message(ev.data.as_bytes()).unwrap_or_else(|| Bytes::from(ev.data.clone()));
            out.extend_from_slice(&sse::encode(ev.id.as_deref(), &data));
        }
        out.freeze()
    } else {
        edit_message(&data).unwrap_or_else(|| data.freeze())
    };
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}
