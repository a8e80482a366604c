//! The floor of a Streamable HTTP → stdio MCP proxy, for the `cpu` benchmark: the least a Rust
//! proxy must do to relay a client's POSTs to a stdio child and its answers back, and nothing
//! else (no policy, no guards, no store, no event log, no SSE).
//!
//! It runs as a process of its own (the `cpu` benchmark starts itself with `floor -- CMD...`),
//! so its CPU is measured exactly as the broker's is, on the same runtime settings as the
//! broker (tokio's multi-thread runtime, the broker's default `worker_threads`), with hyper's HTTP/1 server
//! and `TCP_NODELAY` like the broker's listener. One child per session (`initialize` without a
//! session id starts one), as Tollgate does. A POST carrying a request is answered with the
//! child's response as `application/json`; notifications and responses get `202 Accepted`.
//! Answers are matched to requests by the raw text of their `id`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::oneshot;

/// Just enough of a JSON-RPC message to route it.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
}

/// One stdio child: its stdin and the requests waiting for its answers.
struct Upstream {
    stdin: tokio::sync::Mutex<ChildStdin>,
    waiting: Mutex<HashMap<Box<str>, oneshot::Sender<Bytes>>>,
}

struct Floor {
    argv: Vec<String>,
    sessions: Mutex<HashMap<String, Arc<Upstream>>>,
    next: AtomicU64,
}

impl Floor {
    /// Start a child for a new session; its reader task answers the waiting requests.
    fn spawn(&self) -> Result<(String, Arc<Upstream>)> {
        let mut child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the stdio child")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let up = Arc::new(Upstream {
            stdin: tokio::sync::Mutex::new(stdin),
            waiting: Mutex::new(HashMap::new()),
        });
        let reader = up.clone();
        tokio::spawn(async move {
            let _child = child;
            let mut lines = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match lines.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let Ok(p) = serde_json::from_slice::<Probe>(&line) else {
                    continue;
                };
                if let (Some(id), None) = (p.id, p.method) {
                    let tx = reader
                        .waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(id.get());
                    if let Some(tx) = tx {
                        let _ = tx.send(Bytes::from(line));
                    }
                }
            }
        });
        let id = format!("floor-{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), up.clone());
        Ok((id, up))
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let session = req
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let delete = req.method() == hyper::Method::DELETE;
        let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let (session, up, new) = match session {
            Some(s) => {
                let found = {
                    let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                    if delete {
                        sessions.remove(&s)
                    } else {
                        sessions.get(&s).cloned()
                    }
                };
                match found {
                    Some(up) if !delete => (s, up, false),
                    Some(_) => return status(StatusCode::OK),
                    None => return status(StatusCode::NOT_FOUND),
                }
            }
            None => match self.spawn() {
                Ok((s, up)) => (s, up, true),
                Err(_) => return status(StatusCode::BAD_GATEWAY),
            },
        };
        let Ok(probe) = serde_json::from_slice::<Probe>(&body) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let answer = match (probe.id, probe.method) {
            (Some(id), Some(_)) => {
                let (tx, rx) = oneshot::channel();
                up.waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.get().into(), tx);
                Some(rx)
            }
            _ => None,
        };
        {
            let mut stdin = up.stdin.lock().await;
            if stdin.write_all(&body).await.is_err() || stdin.write_all(b"\n").await.is_err() {
                return status(StatusCode::BAD_GATEWAY);
            }
        }
        let Some(rx) = answer else {
            return status(StatusCode::ACCEPTED);
        };
        let Ok(line) = rx.await else {
            return status(StatusCode::BAD_GATEWAY);
        };
        let mut resp = Response::new(Full::new(line));
        resp.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/json"),
        );
        if new && let Ok(v) = hyper::header::HeaderValue::from_str(&session) {
            resp.headers_mut().insert("mcp-session-id", v);
        }
        resp
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

/// Serve on a free loopback port, printed as `port N` on stdout, relaying to `argv`.
pub fn main(argv: Vec<String>) -> Result<()> {
    anyhow::ensure!(!argv.is_empty(), "floor: no command to run");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(tollgate_broker::config::defaults::worker_threads())
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("port {}", listener.local_addr()?.port());
        let floor = Arc::new(Floor {
            argv,
            sessions: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        });
        loop {
            let (sock, _) = listener.accept().await?;
            let _ = sock.set_nodelay(true);
            let floor = floor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let floor = floor.clone();
                    async move { Ok::<_, Infallible>(floor.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), service)
                    .await;
            });
        }
    })
}
