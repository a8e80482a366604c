//! Serving a client's requests on a session: each request gets a response stream, read as SSE
//! or collected into one JSON answer; the session's GET stream and resumptions after
//! `Last-Event-ID`; and what happens when a client goes away or the child is too slow.
//!
//! A [`StreamGuard`] lives as long as the HTTP body and settles the stream when the body is
//! dropped: on the handshake revisions the client may come back; on the stateless revision
//! closing the stream cancels the request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::session::{Pending, Session};
use super::streams::{Ev, LIVE_CAP, StreamLog};
use crate::reply::Reply;
use crate::upstream::{Inbound, UpstreamError, one_line};
use crate::{jsonrpc, sse};

impl Session {
    /// Forward a client request and stream its answer back.
    pub(super) async fn request(
        self: &Arc<Self>,
        mut inbound: Inbound,
        timeout: Duration,
    ) -> Result<Reply, UpstreamError> {
        let client_id = jsonrpc::id(&inbound.value);
        let method = jsonrpc::method(&inbound.value)
            .unwrap_or_default()
            .to_string();
        let (tx, rx) = mpsc::channel(LIVE_CAP);
        let (stream_id, upstream_id, line) = {
            let mut st = self.state.lock();
            let upstream_id = if self.mapped {
                st.next_mapped += 1;
                Value::from(st.next_mapped)
            } else {
                client_id.clone()
            };
            let key = jsonrpc::id_key(&upstream_id);
            if st.pending.contains_key(&key) {
                return Err(UpstreamError::DuplicateId);
            }
            let mut client_token = None;
            let mut token_key = None;
            if let Some(tok) = inbound
                .value
                .pointer("/params/_meta/progressToken")
                .cloned()
            {
                let upstream_token = if self.mapped {
                    st.next_mapped += 1;
                    let t = json!(format!("tollgate-{}", st.next_mapped));
                    if let Some(slot) = inbound.value.pointer_mut("/params/_meta/progressToken") {
                        *slot = t.clone();
                    }
                    t
                } else {
                    tok.clone()
                };
                let tk = jsonrpc::id_key(&upstream_token);
                st.progress.insert(tk.clone(), key.clone());
                client_token = Some(tok);
                token_key = Some(tk);
            }
            let line = if self.mapped {
                inbound.value["id"] = upstream_id.clone();
                Bytes::from(serde_json::to_vec(&inbound.value).unwrap_or_default())
            } else {
                one_line(&inbound.raw)
            };
            if method == "initialize" && !self.mapped {
                st.init = Some(inbound.value.clone());
            }
            st.next_stream += 1;
            let stream_id = st.next_stream;
            st.streams.insert(stream_id, StreamLog::read_by(tx));
            st.pending.insert(
                key,
                Pending {
                    stream: stream_id,
                    client_id: client_id.clone(),
                    client_token,
                    token_key,
                    method: method.clone(),
                    ticket: inbound.ticket.take(),
                },
            );
            (stream_id, upstream_id, line)
        };
        if !self.send(line).await {
            self.fail_all("the upstream process is not running");
        }

        let guard = StreamGuard {
            session: self.clone(),
            stream: stream_id,
            upstream_id,
            finished: false,
        };
        let answer = Answer {
            client_id,
            timeout,
            waits_forever: method == "subscriptions/listen",
            // The answer to `initialize` carries the session id it starts.
            session: self.id.clone().filter(|_| method == "initialize"),
        };
        if inbound.sse {
            Ok(answer.events_or_json(guard, rx).await)
        } else {
            answer.json(guard, rx).await
        }
    }

    /// Open the session's GET stream (replacing an older one), with the messages that
    /// waited for it.
    pub(super) fn open_get_stream(&self) -> Reply {
        let (tx, rx) = mpsc::channel(LIVE_CAP);
        let stream_id = {
            let mut st = self.state.lock();
            if let Some(old) = st.get_stream.take()
                && let Some(s) = st.streams.get_mut(&old)
            {
                s.end();
            }
            st.next_stream += 1;
            let id = st.next_stream;
            st.streams.insert(id, StreamLog::read_by(tx));
            st.get_stream = Some(id);
            let backlog: Vec<_> = st.backlog.drain(..).collect();
            for data in backlog {
                self.push(&mut st, id, data, false);
            }
            id
        };
        self.stream_reply(stream_id, Vec::new(), Some(rx))
    }

    /// Resume a stream after `Last-Event-ID`: what was logged after it, then whatever comes.
    pub(super) fn resume(&self, last_event_id: &str) -> Result<Reply, UpstreamError> {
        let (stream_id, seq) = last_event_id
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .ok_or(UpstreamError::BadEventId)?;
        let (replay, rx) = self
            .state
            .lock()
            .streams
            .get_mut(&stream_id)
            .ok_or(UpstreamError::StreamGone)?
            .resume_after(seq);
        tracing::debug!(session = ?self.id, stream_id, replayed = replay.len(), "stream resumed");
        Ok(self.stream_reply(stream_id, replay, rx))
    }

    fn stream_reply(
        &self,
        stream_id: u64,
        replay: Vec<Ev>,
        rx: Option<mpsc::Receiver<Ev>>,
    ) -> Reply {
        let mapped = self.mapped;
        let encode = move |ev: Ev| {
            let id = (!mapped).then(|| format!("{stream_id}-{}", ev.seq));
            Ok(sse::encode(id.as_deref(), &ev.data))
        };
        let replayed = stream::iter(replay.into_iter().map(encode));
        let live = stream::unfold(rx, move |rx| async move {
            let mut rx = rx?;
            let ev = rx.recv().await?;
            let last = ev.last;
            Some((encode(ev), (!last).then_some(rx)))
        });
        Reply::Events {
            session: None,
            body: replayed.chain(live).boxed(),
        }
    }
}

/// Runs when a response stream's HTTP body is dropped (finished, or the client went away).
pub(super) struct StreamGuard {
    pub(super) session: Arc<Session>,
    pub(super) stream: u64,
    pub(super) upstream_id: Value,
    pub(super) finished: bool,
}

impl StreamGuard {
    /// The request took longer than the timeout: give up on it upstream and tell the client.
    fn time_out(&mut self, client_id: &Value, timeout: Duration) -> Vec<u8> {
        let s = &self.session;
        let key = jsonrpc::id_key(&self.upstream_id);
        let removed = {
            let mut st = s.state.lock();
            let p = st.take_pending(&key);
            if let Some(log) = st.streams.get_mut(&self.stream) {
                log.end();
            }
            p
        };
        let text = format!(
            "upstream \"{}\" did not answer within {} (the broker's upstream_timeout); the request was cancelled",
            s.server,
            humantime::format_duration(timeout)
        );
        if let Some(p) = removed {
            if let Some(t) = p.ticket {
                t.complete(Some(text.clone()));
            }
            s.cancel_upstream(&self.upstream_id, "timed out in the Tollgate broker");
        }
        jsonrpc::error(client_id.clone(), jsonrpc::UPSTREAM_ERROR, text)
            .to_string()
            .into_bytes()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let s = &self.session;
        let mut st = s.state.lock();
        if let Some(log) = st.streams.get_mut(&self.stream) {
            log.detach();
        }
        if !s.mapped {
            // Handshake revisions: a dropped stream is not a cancel; the client may resume.
            return;
        }
        // Stateless revisions: closing the response stream cancels the request.
        let key = jsonrpc::id_key(&self.upstream_id);
        st.streams.remove(&self.stream);
        if let Some(p) = st.take_pending(&key) {
            drop(st);
            if let Some(t) = p.ticket {
                t.complete(Some(
                    "cancelled: the client closed the response stream".into(),
                ));
            }
            s.cancel_upstream(&self.upstream_id, "client closed the response stream");
        }
    }
}

/// How a request's answer is delivered to its client.
pub(super) struct Answer {
    /// The id the client used.
    pub(super) client_id: Value,
    /// Longest silence before the request is given up.
    pub(super) timeout: Duration,
    /// `subscriptions/listen` streams until the client closes them.
    pub(super) waits_forever: bool,
    /// The session an `initialize` answer starts.
    pub(super) session: Option<String>,
}

/// How long a request's answer may take to still go back as one JSON body to a client that
/// accepts SSE too. Most answers come sooner, and one body is one write to the client's socket
/// where a stream is three (headers, the event, the end), each a trip through the kernel's TCP
/// stack: on loopback a fifth of the broker's CPU per forwarded call. An answer that takes
/// longer, or anything the child sends first (progress, a request of its own), starts the SSE
/// stream, so a slow tool's client still gets its headers at once.
const ONE_BODY_WITHIN: Duration = Duration::from_millis(100);

impl Answer {
    /// The answer as one JSON body if it is all there is and comes within
    /// [`ONE_BODY_WITHIN`]; else an SSE stream (see [`Answer::events`]).
    pub(super) async fn events_or_json(
        self,
        mut guard: StreamGuard,
        mut rx: mpsc::Receiver<Ev>,
    ) -> Reply {
        if self.waits_forever {
            return self.events(guard, rx, None);
        }
        match tokio::time::timeout(ONE_BODY_WITHIN, rx.recv()).await {
            Ok(Some(ev)) if ev.last => {
                guard.finished = true;
                Reply::Json {
                    status: StatusCode::OK,
                    body: ev.data,
                    session: self.session,
                }
            }
            Ok(first) => self.events(guard, rx, first),
            Err(_) => self.events(guard, rx, None),
        }
    }

    /// An SSE stream of everything the child sends for the request (after `first`, when the
    /// caller has taken that already), ending with its answer.
    pub(super) fn events(
        self,
        guard: StreamGuard,
        rx: mpsc::Receiver<Ev>,
        first: Option<Ev>,
    ) -> Reply {
        let Answer {
            client_id,
            timeout,
            waits_forever,
            session,
        } = self;
        let body = stream::unfold(
            (guard, rx, Some(client_id), Instant::now() + timeout, first),
            move |(mut guard, mut rx, client_id, mut deadline, first)| async move {
                let client_id = client_id?;
                let next = if let Some(ev) = first {
                    Ok(Some(ev))
                } else if waits_forever {
                    Ok(rx.recv().await)
                } else {
                    tokio::time::timeout_at(deadline.into(), rx.recv()).await
                };
                match next {
                    Ok(Some(ev)) => {
                        deadline = Instant::now() + timeout;
                        let id = guard.session.event_id(guard.stream, ev.seq);
                        let chunk = sse::encode(id.as_deref(), &ev.data);
                        if ev.last {
                            guard.finished = true;
                        }
                        let keep = (!ev.last).then_some(client_id);
                        Some((Ok(chunk), (guard, rx, keep, deadline, None)))
                    }
                    Ok(None) => None,
                    Err(_) => {
                        let msg = guard.time_out(&client_id, timeout);
                        guard.finished = true;
                        Some((
                            Ok(sse::encode(None, &msg)),
                            (guard, rx, None, deadline, None),
                        ))
                    }
                }
            },
        );
        Reply::Events {
            session,
            body: body.boxed(),
        }
    }

    /// One JSON body with the request's answer (for clients that do not accept SSE).
    pub(super) async fn json(
        self,
        mut guard: StreamGuard,
        mut rx: mpsc::Receiver<Ev>,
    ) -> Result<Reply, UpstreamError> {
        loop {
            let next = if self.waits_forever {
                Ok(rx.recv().await)
            } else {
                tokio::time::timeout(self.timeout, rx.recv()).await
            };
            match next {
                Ok(Some(ev)) if ev.last => {
                    guard.finished = true;
                    return Ok(Reply::Json {
                        status: StatusCode::OK,
                        body: ev.data,
                        session: self.session,
                    });
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Err(UpstreamError::WentAway),
                Err(_) => {
                    let msg = guard.time_out(&self.client_id, self.timeout);
                    guard.finished = true;
                    return Ok(Reply::Json {
                        status: StatusCode::OK,
                        body: Bytes::from(msg),
                        session: None,
                    });
                }
            }
        }
    }
}
