//! Notifications and TLS: what they cost the approval path.
//!
//! - Held-call latency (an agent's request until a console hears `call_pending`) on a broker
//!   without sinks and on one with three (a webhook that answers, a Slack sink that never
//!   answers, a PagerDuty sink on a dead port), every call its own notification (`coalesce =
//!   "1ms"`), measured alternately in one run: a sink must never delay a hold.
//! - How many notifications a 500-call loop becomes with the default coalescing.
//! - What TLS adds to a console connecting (TCP, handshake, upgrade, hello and snapshot), `wss://`
//!   against `ws://` in the same run. The test certificate comes from the `openssl` command.
//!
//! Run: `cargo bench -p tollgate-bench --bench notify`; `TOLLGATE_BENCH_SMOKE=1` for a small
//! load without timing claims.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tollgate_bench::{Broker, build_broker, everything, free_port, percentile, start_broker, us};
use tollgate_console::client::{Conn, Settings};

/// A webhook receiver: `/good` answers 200 and keeps the body, `/hang` never answers.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start(&self) -> Result<u16> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let Ok(n) = tcp.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        if text.starts_with("POST /hang") {
                            // Never answer; hold the connection until the broker gives up.
                            let _ = tcp.read(&mut chunk).await;
                            return;
                        }
                        let body = &buf[end + 4..end + 4 + len];
                        if let Ok(v) = serde_json::from_slice(body) {
                            me.got.lock().map(|mut g| g.push(v)).ok();
                        }
                        let _ = tcp
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                });
            }
        });
        Ok(port)
    }

    fn events(&self) -> Vec<Value> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// A test CA and a certificate for `localhost` signed by it, made with `openssl`.
fn certificates(dir: &Path) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("the TLS benchmark needs the openssl command (apt-get install openssl)")?;
        if !out.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=bench-ca",
        "-days",
        "2",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
    ])?;
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "req.pem",
    ])?;
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n")?;
    run(&[
        "x509",
        "-req",
        "-in",
        "req.pem",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ])?;
    Ok(())
}

struct Setup {
    _broker: Broker,
    dir: std::path::PathBuf,
    base: String,
    console: String,
    agent: String,
    alice: String,
}

fn broker(bin: &Path, name: &str, server: &str, extra: &str) -> Result<Setup> {
    let dir = std::env::temp_dir().join(format!(
        "tollgate-bench-notify-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data"))?;
    let agent = tollgate_bench::add_token(bin, &dir.join("data"), "agent", "viewer")?;
    let alice = tollgate_bench::add_token(bin, &dir.join("data"), "alice", "approver")?;
    let rest = format!(
        "keepalive = \"60s\"\n{extra}[policy]\ndefault = \"allow\"\n[[server]]\nname = \"e\"\ncommand = {server}\n[[rule]]\nname = \"hold\"\ntools = [\"e/echo\"]\naction = \"approve\"\n"
    );
    // `extra` may end [broker] with tables of its own, so the rule tables come after it.
    let (b, base, console) = start_broker(bin, &dir, &rest)?;
    Ok(Setup {
        _broker: b,
        dir,
        base,
        console,
        agent,
        alice,
    })
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(url: &str, token: &str) -> Result<Ws> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

async fn next_of(ws: &mut Ws, kind: &str) -> Result<Value> {
    loop {
        match ws.next().await.context("console closed")?? {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["type"] == kind {
                    return Ok(v);
                }
            }
            Message::Close(_) => bail!("console closed"),
            _ => {}
        }
    }
}

/// A held call's latency: the request is sent until the console hears of it; then approved.
async fn hold_once(
    s: &Setup,
    http: &reqwest::Client,
    sid: &str,
    console: &mut Ws,
    n: u64,
) -> Result<Duration> {
    let url = format!("{}/mcp/e", s.base);
    let call = json!({"jsonrpc":"2.0","id":n,"method":"tools/call","params":{"name":"echo","arguments":{"message":format!("hold {n}")}}});
    let req = http
        .post(&url)
        .bearer_auth(&s.agent)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-session-id", sid)
        .body(call.to_string());
    let start = Instant::now();
    let answer = tokio::spawn(async move { req.send().await?.text().await });
    let pending = next_of(console, "call_pending").await?;
    let took = start.elapsed();
    let id = pending["call"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    console
        .send(Message::text(
            json!({"type":"decide","target":{"by":"ids","ids":[id]},"verdict":"approve"})
                .to_string(),
        ))
        .await?;
    let body = answer.await??;
    if !body.contains(&format!("Echo: hold {n}")) {
        bail!("unexpected answer: {body}");
    }
    Ok(took)
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let smoke = std::env::var_os("TOLLGATE_BENCH_SMOKE").is_some();
    let rounds: usize = if smoke { 20 } else { 400 };
    let connects: usize = if smoke { 5 } else { 100 };
    let bin = build_broker()?;
    let script = everything()?;
    let server = serde_json::to_string(&["node", &script.display().to_string(), "stdio"])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let receiver = Receiver::default();
        let port = receiver.start().await?;
        let dead = free_port()?;
        let plain = broker(&bin, "plain", &server, "")?;
        let sinks = format!(
            "[[notify]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/good\"\ncoalesce = \"1ms\"\nper_minute = 100000\n\
             [[notify]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:{port}/hang\"\ncoalesce = \"1ms\"\ntimeout = \"10s\"\nper_minute = 100000\n\
             [[notify]]\nname = \"pager\"\nkind = \"pagerduty\"\nurl = \"http://127.0.0.1:{dead}/v2/enqueue\"\nrouting_key = \"k\"\ncoalesce = \"1ms\"\nper_minute = 100000\n"
        );
        let noisy = broker(&bin, "sinks", &server, &sinks)?;
        let http = reqwest::Client::builder().pool_max_idle_per_host(8).build()?;
        let sid_plain = tollgate_bench::open_session(&http, &format!("{}/mcp/e", plain.base), &plain.agent).await?;
        let sid_noisy = tollgate_bench::open_session(&http, &format!("{}/mcp/e", noisy.base), &noisy.agent).await?;
        let mut c_plain = ws(&plain.console, &plain.alice).await?;
        let mut c_noisy = ws(&noisy.console, &noisy.alice).await?;
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for n in 0..rounds as u64 {
            // Alternate which goes first, so drift on the machine falls on both.
            if n % 2 == 0 {
                without.push(hold_once(&plain, &http, &sid_plain, &mut c_plain, n).await?);
                with.push(hold_once(&noisy, &http, &sid_noisy, &mut c_noisy, n).await?);
            } else {
                with.push(hold_once(&noisy, &http, &sid_noisy, &mut c_noisy, n).await?);
                without.push(hold_once(&plain, &http, &sid_plain, &mut c_plain, n).await?);
            }
        }
        let sent = receiver
            .events()
            .iter()
            .filter(|e| e["event"] == "held")
            .count();

        // A 500-call loop on a broker with one webhook at the default coalescing.
        let loop_receiver = Receiver::default();
        let lport = loop_receiver.start().await?;
        let dir = std::env::temp_dir().join(format!(
            "tollgate-bench-notify-{}-certs",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        certificates(&dir)?;
        let tls = format!(
            "[broker.tls]\ncert = \"{}\"\nkey = \"{}\"\n[[notify]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{lport}/good\"\nevents = [\"held\"]\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        );
        let secure = broker(&bin, "tls", &server, &tls)?;
        let tls_client = tollgate_shared::tls::ClientTls {
            ca: Some(dir.join("ca.pem")),
            cert: None,
            key: None,
        };
        let wss = secure.console.replace("127.0.0.1", "localhost");
        let settings = Settings { url: wss.clone(), token: secure.alice.clone(), tls: tls_client.clone(), sign: None };
        // Console connections: wss:// against ws://, alternately.
        let plain_settings = Settings { url: plain.console.clone(), token: plain.alice.clone(), tls: Default::default(), sign: None };
        let (mut ws_t, mut wss_t) = (Vec::new(), Vec::new());
        for i in 0..connects {
            // Alternate which goes first: the first after a pause also wakes the machine.
            for tls in [i % 2 == 0, i % 2 == 1] {
                let t = Instant::now();
                let c = Conn::connect(if tls { &settings } else { &plain_settings }).await?;
                let took = t.elapsed();
                if !c.pending.is_empty() {
                    bail!("the console saw {} pending calls", c.pending.len());
                }
                if tls { &mut wss_t } else { &mut ws_t }.push(took);
            }
        }
        let loop_n = 500;
        let agent_http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_client.config().map_err(|e| anyhow::anyhow!(e))?)
            .pool_max_idle_per_host(600)
            .build()?;
        let mcp = secure.base.replace("127.0.0.1", "localhost") + "/mcp/e";
        let sid = tollgate_bench::open_session(&agent_http, &mcp, &secure.agent).await?;
        let mut calls = Vec::new();
        for i in 0..loop_n {
            let req = agent_http
                .post(&mcp)
                .bearer_auth(&secure.agent)
                .header("accept", "application/json, text/event-stream")
                .header("content-type", "application/json")
                .header("mcp-protocol-version", "2025-11-25")
                .header("mcp-session-id", &sid)
                .body(json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":"echo","arguments":{"message":"runaway loop"}}}).to_string());
            calls.push(tokio::spawn(async move { req.send().await?.text().await }));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let conn = Conn::connect(&settings).await?;
            if conn.pending.len() >= loop_n {
                break;
            }
            if Instant::now() > deadline {
                bail!("only {} of {loop_n} calls held", conn.pending.len());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Coalescing waits for 2 s of quiet; give it 4.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let loop_notes = loop_receiver.events();
        let loop_calls: u64 = loop_notes.iter().filter_map(|e| e["pattern"]["calls"].as_u64()).sum();

        for c in calls {
            c.abort();
        }
        let _ = std::fs::remove_dir_all(&dir);

        let (w50, w99) = (percentile(&mut without, 50.0), percentile(&mut without, 99.0));
        let (s50, s99) = (percentile(&mut with, 50.0), percentile(&mut with, 99.0));
        println!();
        println!(
            "notifications and TLS: {rounds} held calls per broker, {connects} console connections each way{}",
            if smoke { " [smoke run]" } else { "" }
        );
        println!("| measure | value | baseline in this run | ratio |");
        println!("|---|---|---|---|");
        println!(
            "| held-call latency (request → console hears it) p50 / p99, 3 sinks: one answers, one hangs, one dead | {} / {} µs | no sinks {} / {} µs | {:.2}x / {:.2}x |",
            us(s50), us(s99), us(w50), us(w99),
            s50.as_secs_f64() / w50.as_secs_f64(),
            s99.as_secs_f64() / w99.as_secs_f64()
        );
        println!("| `held` notifications the answering webhook got for {rounds} held calls (coalesce = 1ms) | {sent} | {rounds} | |");
        println!(
            "| notifications for a {loop_n}-call loop (default coalescing) | {} (covering {loop_calls} calls) | {loop_n} calls | |",
            loop_notes.len()
        );
        let (p50, t50) = (percentile(&mut ws_t, 50.0), percentile(&mut wss_t, 50.0));
        println!(
            "| console connect (TCP, TLS, upgrade, hello, empty snapshot) p50, wss:// | {} µs | ws:// {} µs | {:+.0} µs |",
            us(t50), us(p50),
            (t50.as_secs_f64() - p50.as_secs_f64()) * 1e6
        );
        anyhow::Ok(())
    })
}
