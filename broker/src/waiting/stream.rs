//! How a client reads a held call's feed: the POST that made the call, or a GET that resumes
//! it with `Last-Event-ID: tg-<call id>-<run>.<n>`.
//!
//! On the handshake revisions a client whose stream dropped comes back with that GET and gets
//! every event after `n`; a dropped stream is not a cancel there. Idle listeners get an SSE
//! comment every keep-alive interval so proxies keep the stream open.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bytes::Bytes;
use futures_util::StreamExt;

use super::feed::{Feed, Feeds, event_id};
use crate::reply::Reply;
use crate::sse;

/// A resumption of a stream that belongs to another client's call.
#[derive(Debug, thiserror::Error)]
#[error("this stream belongs to a call made by another client")]
pub struct NotYours;

/// The events of `feed` after position `after`, as an SSE body with keep-alive comments.
fn listen(feed: Arc<Feed>, after: usize, keepalive: Duration) -> Reply {
    let listener = feed.attach();
    let stream = futures_util::stream::unfold(
        (listener, after, false),
        move |(listener, mut next, ended)| async move {
            if ended {
                return None;
            }
            let feed = listener.feed.clone();
            loop {
                let notified = feed.changed.notified();
                {
                    let st = feed.st.lock();
                    if next < st.events.len() {
                        let data = st.events[next].clone();
                        next += 1;
                        let last = st.done && next == st.events.len();
                        let frame = sse::encode(Some(&event_id(&feed.id, next)), &data);
                        return Some((Ok(frame), (listener, next, last)));
                    }
                    if st.done {
                        return None;
                    }
                }
                if tokio::time::timeout(keepalive, notified).await.is_err() {
                    return Some((
                        Ok(Bytes::from_static(b": keep-alive\n\n")),
                        (listener, next, false),
                    ));
                }
            }
        },
    );
    Reply::Events {
        session: None,
        body: stream.boxed(),
    }
}

/// Answer the POST that made a held call: an SSE stream, or (for a client that only accepts
/// JSON) the final response once there is one.
pub fn respond(feed: Arc<Feed>, sse_ok: bool, keepalive: Duration) -> Reply {
    if sse_ok {
        return listen(feed, 0, keepalive);
    }
    let body = async move {
        let _listener = feed.attach();
        Ok(feed.last().await)
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Reply::Streamed {
        status: StatusCode::OK,
        headers,
        body: futures_util::stream::once(body).boxed(),
    }
}

/// Handle a GET whose `Last-Event-ID` points into a held call's feed; `None` when it does not.
pub fn resume(
    feeds: &Feeds,
    client: &str,
    last_event_id: &str,
    keepalive: Duration,
) -> Option<Result<Reply, NotYours>> {
    let (feed, after) = feeds.for_event_id(last_event_id)?;
    if *feed.client != *client {
        return Some(Err(NotYours));
    }
    Some(Ok(listen(feed, after, keepalive)))
}
