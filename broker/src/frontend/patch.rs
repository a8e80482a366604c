//! Editing an upstream's answer on its way to the client, for the few answers the broker adds
//! to (its task support in `initialize`, `tools/list` and `server/discover`).
//!
//! The answer is read whole (these are small, single-message answers), the JSON-RPC response in
//! it is edited, and it is sent on in the framing it came in: a JSON body, or an SSE stream
//! whose event ids and other events are kept.

use axum::http::header;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::Value;

use crate::reply::Reply;
use crate::sse;

/// The most an answer to edit may be; larger ones pass through unedited.
const LIMIT: usize = 8 << 20;

/// Apply `edit` to the `result` of the JSON-RPC response in `reply`.
pub async fn result(reply: Reply, edit: impl Fn(&mut Value)) -> Reply {
    let is_sse = reply.is_event_stream();
    let edit_message = |text: &[u8]| -> Option<Bytes> {
        let mut v: Value = serde_json::from_slice(text).ok()?;
        let r = v.get_mut("result")?;
        edit(r);
        Some(Bytes::from(v.to_string()))
    };
    let edit_body = |data: Bytes| -> Bytes {
        if !is_sse {
            return edit_message(&data).unwrap_or(data);
        }
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
    };
    let one = |b: Bytes| futures_util::stream::once(async { Ok(b) }).boxed();
    match reply {
        Reply::Json {
            status,
            body,
            session,
        } => Reply::Json {
            status,
            body: edit_body(body),
            session,
        },
        Reply::Events { session, body } => match read(body).await {
            Ok(data) => Reply::Events {
                session,
                body: one(edit_body(data)),
            },
            Err(data) => Reply::Events {
                session,
                body: one(data),
            },
        },
        Reply::Streamed {
            status,
            mut headers,
            body,
        } => {
            let body = match read(body).await {
                Ok(data) => {
                    headers.remove(header::CONTENT_LENGTH);
                    edit_body(data)
                }
                Err(data) => data,
            };
            Reply::Streamed {
                status,
                headers,
                body: one(body),
            }
        }
        empty @ Reply::Empty(_) => empty,
    }
}

/// The whole body, or (when it is too large or breaks off) what was read of it, unedited.
async fn read(mut body: crate::reply::Frames) -> Result<Bytes, Bytes> {
    let mut data = BytesMut::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) if data.len() + c.len() <= LIMIT => data.extend_from_slice(&c),
            _ => return Err(data.freeze()),
        }
    }
    Ok(data.freeze())
}
