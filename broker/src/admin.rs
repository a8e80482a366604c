//! The admin listener (`[broker] admin_listen`): `/metrics` for Prometheus, `/livez` and
//! `/readyz` for orchestrators and `tollgate-broker status`, and `/v1/audit` for following the
//! audit trail while the broker runs (`tollgate-broker audit --follow`; a token of any role).
//!
//! `/readyz` answers 200 only when the store commits and every configured upstream could be
//! used (a `command` server's program is found, a `url` server accepts a connection), and says
//! in its body what passed and what failed, one line each. The same `Origin` and `Host` checks
//! as the other listeners keep browser pages out.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::browser::Browsers;
use crate::metrics;
use crate::queue::Queue;
use crate::upstream::ServerSpec;

/// What the admin listener reads.
pub struct Admin {
    /// Pending calls.
    pub queue: Arc<Queue>,
    /// The configured servers, for readiness.
    pub servers: Vec<ServerSpec>,
    /// Bytes in the store's journal now.
    pub journal_bytes: Box<dyn Fn() -> u64 + Send + Sync>,
    /// The `Origin` and `Host` browsers may use.
    pub browsers: Browsers,
    /// Who may read the audit trail (any role) and reload the configuration (admins).
    pub registry: Arc<tollgate_store::tokens::Registry>,
    /// Re-read the configuration: what changed, or why it was refused.
    pub reload: Reload,
}

/// The broker's reload, as the admin listener calls it.
pub type Reload =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// The admin routes.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/livez", get(|| async { "ok: the broker serves\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/audit", get(audit))
        .route("/v1/reload", axum::routing::post(reload))
        .layer(middleware::from_fn_with_state(admin.clone(), guard))
        .with_state(admin)
}

async fn guard(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    if let Err(refused) = admin.browsers.check(req.headers()) {
        return (StatusCode::FORBIDDEN, format!("{refused}\n")).into_response();
    }
    next.run(req).await
}

async fn scrape(State(admin): State<Arc<Admin>>) -> Response {
    let m = metrics::global();
    m.pending.clear();
    m.oldest.clear();
    let now = tollgate_shared::clock::now_ms();
    for call in admin.queue.snapshot() {
        let server = [("server", call.server.to_string())];
        m.pending.get_or_create(&server).inc();
        let waited = now.saturating_sub(call.timings.received_ms) as f64 / 1000.0;
        let oldest = m.oldest.get_or_create(&server);
        if waited > oldest.get() {
            oldest.set(waited);
        }
    }
    m.journal_bytes
        .set(i64::try_from((admin.journal_bytes)()).unwrap_or(i64::MAX));
    m.store_failing
        .set(i64::from(admin.queue.store().health().borrow().is_some()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// Each readiness check: what was checked, and what is wrong with it.
pub async fn checks(queue: &Queue, servers: &[ServerSpec]) -> Vec<(String, Result<(), String>)> {
    let mut out = Vec::new();
    let store = match queue.store().health().borrow().as_ref() {
        None => Ok(()),
        Some(f) => Err(f.to_string()),
    };
    out.push(("store".to_string(), store));
    let results = futures_util::future::join_all(servers.iter().map(|s| s.ready())).await;
    for (s, r) in servers.iter().zip(results) {
        out.push((format!("server {}", s.name), r));
    }
    out
}

/// `GET /v1/audit?after=SEQ&limit=N&wait=SECONDS`: the entries after `after`, oldest first,
/// one JSON object per line; with none yet, waits up to `wait` seconds (at most 60) for one.
/// `?tail=N`: the newest N entries.
async fn audit(
    State(admin): State<Arc<Admin>>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<AuditQuery>,
) -> Response {
    if who(&admin, &headers).is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            "a token from `tollgate-broker token add` is needed to read the audit trail\n",
        )
            .into_response();
    }
    if let Some(tail) = q.tail {
        // The newest entries, to start following from.
        let filter = tollgate_shared::audit::AuditFilter {
            limit: Some(tail.clamp(1, 10_000)),
            ..Default::default()
        };
        return match admin.queue.store().audit_query(filter).await {
            Ok(entries) => ndjson(&entries),
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the audit trail: {e}\n"),
            )
                .into_response(),
        };
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_secs(q.wait.unwrap_or(0).min(60));
    loop {
        match admin
            .queue
            .store()
            .audit_after(q.after.unwrap_or(0), limit)
            .await
        {
            Err(e) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read the audit trail: {e}\n"),
                )
                    .into_response();
            }
            Ok(entries) if !entries.is_empty() || tokio::time::Instant::now() >= deadline => {
                return ndjson(&entries);
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

fn ndjson(entries: &[tollgate_shared::audit::AuditEntry]) -> Response {
    let mut body = String::new();
    for e in entries {
        if let Ok(line) = serde_json::to_string(e) {
            body.push_str(&line);
            body.push('\n');
        }
    }
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// The identity a request's bearer token names, as the other listeners read it.
fn who(
    admin: &Admin,
    headers: &axum::http::HeaderMap,
) -> Option<tollgate_policy::identity::Identity> {
    crate::auth::bearer(headers)
        .ok()
        .and_then(|t| admin.registry.lookup(t))
}

/// `POST /v1/reload` (an admin's token): re-read the configuration; 200 with what changed, or
/// 422 with every problem of a refused one.
async fn reload(State(admin): State<Arc<Admin>>, headers: axum::http::HeaderMap) -> Response {
    match who(&admin, &headers) {
        None => (
            StatusCode::UNAUTHORIZED,
            "an admin's token from `tollgate-broker token add --role admin` is needed\n",
        )
            .into_response(),
        Some(w) if w.role != tollgate_shared::console::Role::Admin => (
            StatusCode::FORBIDDEN,
            format!(
                "{} is {}; reloading needs an admin\n",
                w.name,
                w.role.as_str()
            ),
        )
            .into_response(),
        Some(w) => {
            tracing::info!(by = %w.name, "reload asked for on the admin listener");
            match (admin.reload)().await {
                Ok(what) => (StatusCode::OK, format!("reloaded: {what}\n")).into_response(),
                Err(why) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, format!("refused: {why}")).into_response()
                }
            }
        }
    }
}

/// The query of `/v1/audit`.
#[derive(serde::Deserialize)]
struct AuditQuery {
    tail: Option<usize>,
    after: Option<u64>,
    limit: Option<usize>,
    wait: Option<u64>,
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let checks = checks(&admin.queue, &admin.servers).await;
    let ok = checks.iter().all(|(_, r)| r.is_ok());
    let mut body = String::new();
    for (what, r) in &checks {
        match r {
            Ok(()) => body.push_str(&format!("ok   {what}\n")),
            Err(e) => body.push_str(&format!("FAIL {what}: {e}\n")),
        }
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}
