//! `connect`: a stdio ⇄ Streamable HTTP bridge, so clients that only launch stdio servers
//! (Claude Desktop's `mcpServers`) can use a running broker.
//!
//! Each line on stdin is one JSON-RPC message, POSTed as-is with the headers the HTTP transport
//! requires: the session id the broker assigned at `initialize`, `MCP-Protocol-Version`, and for
//! the stateless revision the mirrored `Mcp-Method` / `Mcp-Name`. Whatever comes back, a JSON
//! body or an SSE stream, is written to stdout one message per line. After a handshake the
//! bridge also opens the session's GET stream for server-initiated requests. On the stateless
//! revision a `notifications/cancelled` from the client aborts the request's HTTP exchange,
//! which is how that revision cancels.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tollgate_shared::sync::Mutex;

use crate::jsonrpc::{self, Kind};
use crate::sse;

/// Run the bridge until stdin closes.
pub fn run(url: &str, token: Option<String>, tls: tollgate_shared::tls::ClientTls) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-broker connect: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(bridge(url, token, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-broker connect: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[derive(Default)]
struct Shared {
    session: Option<String>,
    version: Option<String>,
    in_flight: HashMap<String, tokio::task::AbortHandle>,
}

#[derive(Clone)]
struct Bridge {
    url: reqwest::Url,
    token: Option<String>,
    http: reqwest::Client,
    shared: Arc<Mutex<Shared>>,
    out: mpsc::Sender<Bytes>,
}

/// Header-safe value, or the `=?base64?...?=` sentinel form.
fn header_value(v: &str) -> String {
    let printable = v.bytes().all(|b| (0x20..0x7f).contains(&b));
    let padded = v.starts_with(' ') || v.ends_with(' ');
    let looks_encoded = v.starts_with("=?base64?") && v.ends_with("?=");
    let safe = printable && !padded && !looks_encoded;
    if safe {
        v.to_string()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(v)
        )
    }
}

async fn bridge(
    url: &str,
    token: Option<String>,
    tls: tollgate_shared::tls::ClientTls,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("{url:?} is not a URL: {e}"))?;
    let mut http = reqwest::Client::builder();
    if url.scheme() == "https" {
        http = http.tls_backend_preconfigured(tls.config().map_err(|e| anyhow::anyhow!(e))?);
    } else if tls != Default::default() {
        anyhow::bail!("--ca, --cert and --key are for https:// URLs; {url} is plain HTTP");
    }
    let (out, mut out_rx) = mpsc::channel::<Bytes>(1024);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = out_rx.recv().await {
            if stdout.write_all(&line).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
            }
        }
    });
    let b = Bridge {
        url,
        token,
        http: http.build()?,
        shared: Arc::default(),
        out,
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let msg: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                b.emit(jsonrpc::error(
                    Value::Null,
                    jsonrpc::PARSE_ERROR,
                    format!("not valid JSON: {e}"),
                ))
                .await;
                continue;
            }
        };
        let kind = match jsonrpc::classify(&msg) {
            Ok(k) => k,
            Err(why) => {
                b.emit(jsonrpc::error(
                    jsonrpc::id(&msg),
                    jsonrpc::INVALID_REQUEST,
                    why,
                ))
                .await;
                continue;
            }
        };
        let modern = jsonrpc::meta_protocol_version(&msg).is_some_and(jsonrpc::is_modern);
        if kind == Kind::Notification
            && modern
            && jsonrpc::method(&msg) == Some("notifications/cancelled")
        {
            if let Some(rid) = msg.pointer("/params/requestId")
                && let Some(h) = b.shared.lock().in_flight.remove(&jsonrpc::id_key(rid))
            {
                h.abort();
            }
            continue;
        }
        let key = jsonrpc::id_key(&jsonrpc::id(&msg));
        let task = tokio::spawn({
            let b = b.clone();
            let key = key.clone();
            async move {
                b.post(msg, kind).await;
                b.shared.lock().in_flight.remove(&key);
            }
        });
        if kind == Kind::Request {
            b.shared.lock().in_flight.insert(key, task.abort_handle());
        }
    }
    // stdin closed: the client is done. Let answers in flight finish, then end the session.
    let pending: Vec<_> = b.shared.lock().in_flight.drain().map(|(_, h)| h).collect();
    for h in pending {
        h.abort();
    }
    let session = b.shared.lock().session.clone();
    if let Some(s) = session {
        let _ = b
            .request(reqwest::Method::DELETE)
            .header("mcp-session-id", s)
            .send()
            .await;
    }
    drop(b);
    let _ = writer.await;
    Ok(())
}

impl Bridge {
    async fn emit(&self, v: Value) {
        let _ = self.out.send(Bytes::from(v.to_string())).await;
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, self.url.clone())
            .header("accept", "application/json, text/event-stream");
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn post(&self, msg: Value, kind: Kind) {
        let method = jsonrpc::method(&msg).unwrap_or_default().to_string();
        let modern_version = jsonrpc::meta_protocol_version(&msg)
            .filter(|v| jsonrpc::is_modern(v))
            .map(str::to_string);
        let mut req = self
            .request(reqwest::Method::POST)
            .header("content-type", "application/json");
        {
            let sh = self.shared.lock();
            if let Some(s) = &sh.session
                && modern_version.is_none()
            {
                req = req.header("mcp-session-id", s);
            }
            if let Some(v) = modern_version.as_ref().or(sh.version.as_ref()) {
                req = req.header("mcp-protocol-version", v);
            }
        }
        if modern_version.is_some() && kind != Kind::Response {
            req = req.header("mcp-method", &method);
            let name = match method.as_str() {
                "tools/call" | "prompts/get" => msg.pointer("/params/name"),
                "resources/read" => msg.pointer("/params/uri"),
                _ => None,
            };
            if let Some(n) = name.and_then(Value::as_str) {
                req = req.header("mcp-name", header_value(n));
            }
        }
        let id = jsonrpc::id(&msg);
        let resp = match req.body(msg.to_string()).send().await {
            Ok(r) => r,
            Err(e) => {
                let why = format!(
                    "cannot reach the broker at {}: {}",
                    self.url,
                    tollgate_shared::tls::describe(&e)
                        .unwrap_or_else(|| tollgate_shared::report::chain(&e))
                );
                eprintln!("tollgate-broker connect: {why}");
                if kind == Kind::Request {
                    self.emit(jsonrpc::error(id, jsonrpc::UPSTREAM_ERROR, why))
                        .await;
                }
                return;
            }
        };
        if method == "initialize"
            && let Some(s) = resp
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
        {
            self.shared.lock().session = Some(s.to_string());
        }
        let status = resp.status();
        let is_sse = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if kind != Kind::Request {
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                eprintln!(
                    "tollgate-broker connect: the broker refused a {method} message: HTTP {status} {body}"
                );
            }
            return;
        }
        if is_sse {
            let mut parser = sse::Parser::default();
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                for ev in parser.feed(&chunk) {
                    if !ev.data.is_empty() {
                        self.relay(&method, ev.data).await;
                    }
                }
            }
            return;
        }
        let body = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.get("jsonrpc").is_some() => {
                let mut v = v;
                if v.get("id").is_some_and(Value::is_null) {
                    v["id"] = id;
                }
                self.relay(&method, v.to_string()).await;
            }
            _ => {
                let text = String::from_utf8_lossy(&body);
                self.emit(jsonrpc::error(
                    id,
                    jsonrpc::UPSTREAM_ERROR,
                    format!("the broker answered HTTP {status}: {}", text.trim()),
                ))
                .await;
            }
        }
    }

    /// Pass a message to the client; after a successful handshake, note the version and open
    /// the session's GET stream.
    async fn relay(&self, method: &str, data: String) {
        if method == "initialize"
            && let Ok(v) = serde_json::from_str::<Value>(&data)
            && let Some(version) = v.pointer("/result/protocolVersion").and_then(Value::as_str)
        {
            self.shared.lock().version = Some(version.to_string());
            let b = self.clone();
            tokio::spawn(async move { b.listen().await });
        }
        let _ = self.out.send(Bytes::from(data)).await;
    }

    /// The session's stream of server-initiated messages, reopened if it drops.
    async fn listen(&self) {
        let mut last_event: Option<String> = None;
        for _attempt in 0..1000 {
            let (session, version) = {
                let sh = self.shared.lock();
                (sh.session.clone(), sh.version.clone())
            };
            let Some(session) = session else { return };
            let mut req = self
                .request(reqwest::Method::GET)
                .header("mcp-session-id", session);
            if let Some(v) = version {
                req = req.header("mcp-protocol-version", v);
            }
            if let Some(id) = &last_event {
                req = req.header("last-event-id", id);
            }
            let Ok(resp) = req.send().await else { return };
            if !resp.status().is_success() {
                return;
            }
            let mut parser = sse::Parser::default();
            let mut body = resp.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                for ev in parser.feed(&chunk) {
                    if ev.id.is_some() {
                        last_event = ev.id.clone();
                    }
                    if !ev.data.is_empty() {
                        let _ = self.out.send(Bytes::from(ev.data)).await;
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_header_values_use_the_base64_sentinel() {
        assert_eq!(header_value("echo"), "echo");
        assert_eq!(
            header_value("Hello, 世界"),
            "=?base64?SGVsbG8sIOS4lueVjA==?="
        );
        assert_eq!(header_value(" padded "), "=?base64?IHBhZGRlZCA=?=");
        assert_eq!(
            header_value("=?base64?literal?="),
            "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="
        );
    }
}
