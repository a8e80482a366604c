//! The console API: a WebSocket at `/v1/console` on `console_listen`.
//!
//! A console authenticates with a bearer token from the token file on the upgrade request (a
//! bad token is refused with 401 before any WebSocket exists). The broker then sends `hello`
//! and a `snapshot`, and forwards queue events as they happen. Each connection is one task that
//! reads requests and writes answers and events; events reach it through the queue's bounded
//! broadcast channel, so a console that cannot keep up only delays itself: when it falls more
//! than the buffer behind, it gets a fresh snapshot instead of the events it missed.
//! The message types are in `tollgate_shared::console`; `docs/protocol.md` describes them.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use axum::routing::get;
use tokio::sync::broadcast::error::RecvError;
use tollgate_shared::PROTOCOL_VERSION;
use tollgate_shared::console::{ClientMsg, Refusal, SNAPSHOT_PART_BYTES, ServerMsg, Target};

use crate::auth;
use crate::browser::Browsers;
use crate::queue::temp_rules::TempRuleError;
use crate::queue::{BadDecision, Follow, Queue};
use crate::reply;
use tollgate_policy::identity::{self, Identity, TokenDigest};
use tollgate_store::tokens::Registry;

/// What the console API needs.
pub struct ConsoleApi {
    /// The approval queue.
    pub queue: Arc<Queue>,
    /// Who may connect.
    pub registry: Arc<Registry>,
    /// The `Origin` and `Host` browsers may use (a page must not reach the console API).
    pub browsers: Browsers,
    /// How notifications are doing (dropped ones, failing sinks).
    pub notify: tokio::sync::watch::Receiver<tollgate_shared::console::NotifyHealth>,
}

/// The console API's routes.
pub fn router(api: Arc<ConsoleApi>) -> Router {
    Router::new()
        .route("/v1/console", get(upgrade))
        .route(
            "/healthz",
            get(|State(api): State<Arc<ConsoleApi>>| async move {
                reply::health(api.queue.store().health().borrow().as_ref())
            }),
        )
        .fallback(|| async {
            reply::status_error(
                StatusCode::NOT_FOUND,
                "no such endpoint: consoles connect with a WebSocket to /v1/console",
            )
            .into_response()
        })
        .with_state(api)
}

async fn upgrade(
    State(api): State<Arc<ConsoleApi>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response<Body> {
    if let Err(refused) = api.browsers.check(&headers) {
        tracing::warn!("refused a console connection a browser page may have made: {refused}");
        return reply::status_error(refused.status(), &refused.to_string()).into_response();
    }
    let digest = match auth::bearer(&headers) {
        Ok(token) => identity::digest(token),
        Err(e) => {
            return unauthorized(&e.to_string());
        }
    };
    let who = api.registry.lookup_digest(&digest);
    let Some(who) = who else {
        return unauthorized(
            "invalid bearer token: create one with `tollgate-broker token add --name NAME --role approver`",
        );
    };
    let Ok(ws) = ws else {
        return reply::status_error(
            StatusCode::BAD_REQUEST,
            "this endpoint speaks WebSocket only: send an Upgrade: websocket request",
        )
        .into_response();
    };
    ws.max_message_size(1 << 20)
        .on_upgrade(move |socket| connection(api, who, digest, socket))
}

fn unauthorized(message: &str) -> Response<Body> {
    let mut r = reply::status_error(StatusCode::UNAUTHORIZED, message).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

async fn send(socket: &mut WebSocket, msg: &ServerMsg) -> bool {
    // Consoles are never sent session ids (they would let a console act on a client's session).
    let text = match tollgate_shared::without_sessions(|| serde_json::to_string(msg)) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a console message");
            return true;
        }
    };
    socket
        .send(Message::Text(Utf8Bytes::from(text)))
        .await
        .is_ok()
}

/// Send the queue as a snapshot, in parts of about [`SNAPSHOT_PART_BYTES`] when it is large
/// (100 000 pending calls are tens of MB of JSON, beyond any sane WebSocket message limit).
async fn send_snapshot(socket: &mut WebSocket, queue: &Queue, req: Option<u64>) -> bool {
    let mut rules = Some(queue.temp.list(tollgate_shared::clock::now_ms()));
    let mut parts = snapshot_parts(queue.snapshot()).into_iter().peekable();
    while let Some(part) = parts.next() {
        let more = parts.peek().is_some();
        let msg = match rules.take() {
            Some(rules) => ServerMsg::Snapshot {
                req,
                pending: part,
                rules,
                more,
            },
            None => ServerMsg::SnapshotPart {
                req,
                pending: part,
                more,
            },
        };
        if !send(socket, &msg).await {
            return false;
        }
    }
    true
}

/// How many bytes `value` takes as JSON, counted without keeping the text (it is serialised
/// again when its part is sent).
fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let _ = tollgate_shared::without_sessions(|| serde_json::to_writer(&mut n, value));
    n.0
}

/// Split pending calls into parts of about [`SNAPSHOT_PART_BYTES`] of JSON (at least one call
/// each, and always at least one part).
fn snapshot_parts<T: serde::Serialize>(pending: Vec<T>) -> Vec<Vec<T>> {
    let mut parts = vec![Vec::new()];
    let mut bytes = 0;
    for call in pending {
        let size = json_len(&call);
        let part = parts.last_mut().expect("one part");
        if !part.is_empty() && bytes + size > SNAPSHOT_PART_BYTES {
            parts.push(vec![call]);
            bytes = size;
        } else {
            part.push(call);
            bytes += size;
        }
    }
    parts
}

/// Whether the identity a connection authenticated as is still the one its token names: a
/// revoked token or a changed role or scope ends the connection (the console reconnects and
/// is told its new role, or that its token is no longer valid). A change of its SSH keys
/// does not: the identity as it is now (with its keys now) is what a request acts as.
fn still(api: &ConsoleApi, who: &Identity, digest: &TokenDigest) -> Result<Identity, &'static str> {
    match api.registry.lookup_digest(digest) {
        None => Err("token revoked: this identity no longer exists"),
        Some(now) if (&now.name, now.role, &now.servers) != (&who.name, who.role, &who.servers) => {
            Err("identity changed (role or servers): reconnect")
        }
        Some(now) => Ok(now),
    }
}

async fn close(socket: &mut WebSocket, who: &Identity, reason: &'static str) {
    tracing::info!(identity = %who.name, reason, "closing a console connection");
    let frame = CloseFrame {
        code: close_code::POLICY,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

async fn connection(
    api: Arc<ConsoleApi>,
    who: Identity,
    digest: TokenDigest,
    mut socket: WebSocket,
) {
    tracing::info!(identity = %who.name, role = who.role.as_str(), "console connected");
    let _counted = crate::metrics::global().console();
    let mut identities = api.registry.changes();
    // Subscribe before the snapshot so nothing falls between them (an event may then appear in
    // both, which consoles handle by call id).
    let mut events = api.queue.subscribe();
    let hello = ServerMsg::Hello {
        protocol: PROTOCOL_VERSION,
        broker: env!("CARGO_PKG_VERSION").into(),
        identity: who.name.clone(),
        role: who.role,
        servers: who.servers.clone(),
    };
    if !send(&mut socket, &hello).await || !send_snapshot(&mut socket, &api.queue, None).await {
        return;
    }
    let mut store = api.queue.store().health();
    let failing = store.borrow_and_update().clone();
    if failing.is_some() && !send(&mut socket, &ServerMsg::Store { failing }).await {
        return;
    }
    let mut notify = api.notify.clone();
    let health = notify.borrow_and_update().clone();
    if !health.is_ok() && !send(&mut socket, &ServerMsg::Notify { health }).await {
        return;
    }
    loop {
        tokio::select! {
            changed = notify.changed() => {
                if changed.is_err() {
                    // No notifier: nothing more to say about it.
                    notify = tokio::sync::watch::channel(Default::default()).1;
                    continue;
                }
                let health = notify.borrow_and_update().clone();
                if !send(&mut socket, &ServerMsg::Notify { health }).await {
                    break;
                }
            }
            changed = store.changed() => {
                if changed.is_err() {
                    break;
                }
                let failing = store.borrow_and_update().clone();
                if !send(&mut socket, &ServerMsg::Store { failing }).await {
                    break;
                }
            }
            incoming = socket.recv() => {
                let reply = match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(text))) => match parse(text.as_str()) {
                        Ok(ClientMsg::Snapshot { req }) => {
                            if !send_snapshot(&mut socket, &api.queue, req).await {
                                break;
                            }
                            continue;
                        }
                        Ok(msg) => {
                            // Every request acts as the identity the token names now.
                            let now = match still(&api, &who, &digest) {
                                Ok(now) => now,
                                Err(why) => {
                                    let refused = ServerMsg::Error {
                                        req: msg.req(),
                                        message: format!("{}: {why}; nothing was done", who.name),
                                        refusal: None,
                                    };
                                    let _ = send(&mut socket, &refused).await;
                                    close(&mut socket, &who, why).await;
                                    break;
                                }
                            };
                            handle(&api, &now, msg).await
                        }
                        Err(refusal) => *refusal,
                    },
                    Some(Ok(Message::Binary(_))) => ServerMsg::Error {
                        req: None,
                        message: "binary frames are not part of the protocol: send JSON text frames".into(),
                        refusal: None,
                    },
                    Some(Ok(_)) => continue,
                };
                if !send(&mut socket, &reply).await {
                    break;
                }
            }
            changed = identities.changed() => {
                if changed.is_err() {
                    break;
                }
                if let Err(why) = still(&api, &who, &digest) {
                    close(&mut socket, &who, why).await;
                    break;
                }
            }
            ev = events.recv() => {
                let ok = match ev {
                    Ok(msg) => send(&mut socket, &msg).await,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(identity = %who.name, missed = n, "console fell behind; sending a fresh snapshot");
                        send_snapshot(&mut socket, &api.queue, None).await
                    }
                    Err(RecvError::Closed) => false,
                };
                if !ok {
                    break;
                }
            }
        }
    }
    tracing::info!(identity = %who.name, "console disconnected");
}

/// [`parse`], for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub fn fuzz_parse(text: &str) -> Result<ClientMsg, Box<ServerMsg>> {
    parse(text)
}

/// A console's message, or the error to answer it with.
fn parse(text: &str) -> Result<ClientMsg, Box<ServerMsg>> {
    serde_json::from_str(text).map_err(|e| {
        let req = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("req").and_then(serde_json::Value::as_u64));
        Box::new(ServerMsg::Error {
            req,
            message: format!(
                "not a valid console message ({e}); see docs/protocol.md for the message types"
            ),
            refusal: None,
        })
    })
}

/// The answer to a request (snapshots, which may take several messages, are sent by the
/// connection itself).
async fn handle(api: &ConsoleApi, who: &Identity, msg: ClientMsg) -> ServerMsg {
    match msg {
        ClientMsg::Decide {
            req,
            target,
            verdict,
            reason,
            block_for_ms,
            allow_next,
            signed,
        } => {
            if let Target::Ids { ids } = &target
                && ids.is_empty()
            {
                return ServerMsg::Error {
                    req,
                    message: "decide needs at least one call id".into(),
                    refusal: None,
                };
            }
            let follow = match (block_for_ms, allow_next) {
                (Some(_), Some(_)) => {
                    return ServerMsg::Error {
                        req,
                        message: "block_for_ms and allow_next exclude each other".into(),
                        refusal: None,
                    };
                }
                (Some(ms), None) => Some(Follow::BlockFor(ms)),
                (None, Some(a)) => Some(Follow::AllowNext(a)),
                (None, None) => None,
            };
            match api
                .queue
                .decide_and_follow(
                    who,
                    &target,
                    verdict,
                    reason.as_deref(),
                    follow,
                    signed.as_ref(),
                )
                .await
            {
                Ok((results, rule)) => {
                    let (rule, rule_refused) = match rule {
                        Ok(r) => (r, None),
                        Err(why) => (None, Some(why.to_string())),
                    };
                    ServerMsg::Decided {
                        req,
                        results,
                        rule,
                        rule_refused,
                    }
                }
                Err(bad) => ServerMsg::Error {
                    req,
                    refusal: match bad {
                        BadDecision::Viewer(_) => Some(Refusal::NotAllowed),
                        BadDecision::Signature(_) | BadDecision::SignatureRequired(_) => {
                            Some(Refusal::Signature)
                        }
                        _ => None,
                    },
                    message: bad.to_string(),
                },
            }
        }
        ClientMsg::AuditQuery { req, filter } => {
            match api.queue.store().audit_query(filter).await {
                Ok(entries) => ServerMsg::AuditResult { req, entries },
                Err(e) => ServerMsg::Error {
                    req,
                    message: format!("audit query failed: {e}"),
                    refusal: None,
                },
            }
        }
        ClientMsg::Snapshot { req } => ServerMsg::Error {
            req,
            message: "snapshots are sent by the connection".into(),
            refusal: None,
        },
        ClientMsg::ListRules { req } => ServerMsg::Rules {
            req,
            rules: api.queue.temp.list(tollgate_shared::clock::now_ms()),
        },
        ClientMsg::RevokeRule { req, id } => match api.queue.revoke_rule(who, &id).await {
            Ok(_) => ServerMsg::Rules {
                req,
                rules: api.queue.temp.list(tollgate_shared::clock::now_ms()),
            },
            Err(e) => ServerMsg::Error {
                req,
                refusal: match e {
                    TempRuleError::NotFound(_) => Some(Refusal::NotFound),
                    TempRuleError::Viewer { .. } | TempRuleError::OutOfScope { .. } => {
                        Some(Refusal::NotAllowed)
                    }
                    _ => None,
                },
                message: e.to_string(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_shared::CallRecord;

    #[test]
    fn large_snapshots_are_split_in_order_into_parts_of_bounded_size() {
        assert_eq!(
            snapshot_parts(Vec::<CallRecord>::new()),
            vec![Vec::<CallRecord>::new()]
        );
        let mut calls: Vec<CallRecord> = (0..4000).map(crate::queue::sample_call).collect();
        // One call larger than a part travels alone.
        calls[10].arguments =
            serde_json::json!({"blob": "x".repeat(SNAPSHOT_PART_BYTES + 10)}).into();
        let parts = snapshot_parts(calls.clone());
        assert!(parts.len() > 3, "{} parts", parts.len());
        for part in &parts {
            let bytes = serde_json::to_vec(part).expect("json").len();
            assert!(
                part.len() == 1 || bytes <= SNAPSHOT_PART_BYTES + 4000,
                "{bytes}"
            );
        }
        let ids: Vec<_> = parts.concat().into_iter().map(|c| c.id).collect();
        let want: Vec<_> = calls.into_iter().map(|c| c.id).collect();
        assert_eq!(ids, want);
    }
}
