//! The approval queue under load: how fast calls are held durably, how fast a bulk decision
//! answers every waiting client, and how long a decision takes to reach its client.
//!
//! One release broker holds `e/echo` calls whose message starts with "hold" (the upstream is
//! server-everything over stdio); one console on the real WebSocket API decides them. Figures
//! come with baselines from the same run: the disk's rate of single-record `fdatasync`s (what
//! holding would cost without group commit) and the latency of the same call when policy
//! allows it (what forwarding costs without a decision).
//!
//! Run: `cargo bench -p tollgate-bench --bench queue`. `TOLLGATE_BENCH_SMOKE=1` runs a small
//! load only, so CI proves the benchmark still works without asserting on time.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tollgate_bench::{build_broker, everything, percentile, rss_mib, start_broker, us};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Single-record appends with `fdatasync` for about a second: the disk's sync rate.
fn sync_rate(dir: &Path) -> Result<f64> {
    let path = dir.join("sync-probe");
    let mut f = std::fs::File::create(&path)?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        f.write_all(b"0123456789abcdef {\"probe\":true}\n")?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    Ok(rate)
}

struct Console {
    ws: Ws,
}

impl Console {
    async fn connect(url: &str, token: &str) -> Result<Console> {
        let mut req = url.into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Console { ws })
    }

    async fn next(&mut self) -> Result<Value> {
        loop {
            match self.ws.next().await.context("console closed")?? {
                Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
                Message::Close(_) => bail!("console closed"),
                _ => {}
            }
        }
    }

    /// The next message of a type.
    async fn expect(&mut self, kind: &str) -> Result<Value> {
        loop {
            let m = self.next().await?;
            if m["type"] == kind {
                return Ok(m);
            }
        }
    }

    async fn send(&mut self, v: Value) -> Result<()> {
        self.ws.send(Message::text(v.to_string())).await?;
        Ok(())
    }

    /// Reject every pending call with `fingerprint` in one decision; the time until the broker
    /// answered (the decision saved), after checking it decided `expected` calls.
    async fn reject_all(&mut self, fingerprint: &str, expected: usize) -> Result<Duration> {
        let start = Instant::now();
        self.send(json!({"type":"decide","target":{"by":"fingerprint","fingerprint":fingerprint},"verdict":"reject","reason":"runaway loop"}))
            .await?;
        let answered = self.expect("decided").await?;
        let took = start.elapsed();
        let n = answered["results"].as_array().map_or(0, Vec::len);
        if n != expected {
            bail!("the bulk reject decided {n} calls, expected {expected}");
        }
        Ok(took)
    }
}

/// The many-pending-tasks phase.
struct Many {
    time: Duration,
    before_rss: f64,
    rss: f64,
    snapshot: Duration,
    reject: Duration,
    after_rss: f64,
}

#[derive(Clone)]
struct Agent {
    http: reqwest::Client,
    url: String,
    session: String,
    token: String,
}

impl Agent {
    async fn open(url: &str, token: &str) -> Result<Agent> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        let session = tollgate_bench::open_session(&http, url, token).await?;
        Ok(Agent {
            http,
            url: url.into(),
            session,
            token: token.into(),
        })
    }

    async fn post(&self, msg: &Value) -> Result<String> {
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-11-25")
            .header("mcp-session-id", &self.session)
            .body(msg.to_string())
            .send()
            .await?;
        Ok(resp.text().await?)
    }

    async fn echo(&self, id: u64, message: &str) -> Result<String> {
        let call = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"message":message}}});
        self.post(&call).await
    }

    /// The same call as a task (revision 2025-11-25): answered at once with a task handle, so
    /// no connection stays open while it waits.
    async fn echo_task(&self, id: u64, message: &str) -> Result<String> {
        let call = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"message":message},"task":{"ttl":3_600_000}}});
        self.post(&call).await
    }
}

/// What one run of the phases measured.
struct Figures {
    hold_time: Duration,
    saved_time: Duration,
    reject_time: Duration,
    decided: Vec<Duration>,
    allowed: Vec<Duration>,
    idle_rss: f64,
    held_rss: f64,
    many: Many,
}

/// Start a broker on sled, or on `pg`, and run every phase.
fn measure(
    bin: &Path,
    script: &Path,
    pg: Option<&tollgate_bench::PgCluster>,
    (holds, rounds, tasks): (usize, usize, usize),
) -> Result<Figures> {
    let dir = std::env::temp_dir().join(format!(
        "tollgate-bench-queue-{}-{}",
        std::process::id(),
        if pg.is_none() { "sled" } else { "pg" }
    ));
    std::fs::create_dir_all(dir.join("data"))?;
    let token = |name: &str, role: &str| match pg {
        Some(pg) => pg.add_token(bin, name, role),
        None => tollgate_bench::add_token(bin, &dir.join("data"), name, role),
    };
    let agent_token = token("agent", "viewer")?;
    let alice_token = token("alice", "approver")?;
    let store = pg.map(|p| p.store_section()).unwrap_or_default();
    let argv = serde_json::to_string(&["node", &script.display().to_string(), "stdio"])?;
    let rest = format!(
        "keepalive = \"60s\"\nmax_connections = 12000\nmax_connections_per_peer = 12000\n{store}[policy]\ndefault = \"allow\"\n[[server]]\nname = \"e\"\ncommand = {argv}\n[[rule]]\nname = \"hold\"\ntools = [\"e/echo\"]\nwhen = {{ arg = \"/message\", matches = \"^hold\" }}\naction = \"approve\"\n"
    );
    let (broker, base, console_url) = start_broker(bin, &dir, &rest)?;
    let pid = broker.id();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let figures = rt.block_on(async {
        let mut console = Console::connect(&console_url, &alice_token).await?;
        console.expect("snapshot").await?;
        let agent = Agent::open(&format!("{base}/mcp/e"), &agent_token).await?;
        agent.echo(1, "warm up").await?;
        let idle_rss = rss_mib(pid).unwrap_or(0.0);

        // Holds: every call in flight at once; done when the console has heard of all of them.
        let start = Instant::now();
        let mut clients = Vec::with_capacity(holds);
        for i in 0..holds {
            let a = agent.clone();
            clients.push(tokio::spawn(async move {
                a.echo(10 + i as u64, "hold loop").await
            }));
        }
        let mut fingerprint = String::new();
        for _ in 0..holds {
            let m = console.expect("call_pending").await?;
            fingerprint = m["call"]["fingerprint"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        let hold_time = start.elapsed();
        let held_rss = rss_mib(pid).unwrap_or(0.0);

        // Bulk reject by fingerprint; done when every client has its answer.
        let start = Instant::now();
        let saved_time = console.reject_all(&fingerprint, holds).await?;
        for c in clients {
            let body = c.await??;
            if !body.contains("Rejected by alice") {
                bail!("unexpected answer to a rejected call: {body}");
            }
        }
        let reject_time = start.elapsed();

        // Decision to response, against the same call allowed by policy.
        let (mut decided, mut allowed) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let t = Instant::now();
            let body = agent.echo(1_000_000 + r as u64, "fast").await?;
            allowed.push(t.elapsed());
            if !body.contains("Echo: fast") {
                bail!("unexpected allowed answer: {body}");
            }
            let a = agent.clone();
            let call =
                tokio::spawn(
                    async move { a.echo(2_000_000 + r as u64, &format!("hold {r}")).await },
                );
            let id = console.expect("call_pending").await?["call"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let t = Instant::now();
            console
                .send(json!({"type":"decide","target":{"by":"ids","ids":[id]},"verdict":"approve"}))
                .await?;
            let body = call.await??;
            decided.push(t.elapsed());
            if !body.contains(&format!("Echo: hold {r}")) {
                bail!("unexpected approved answer: {body}");
            }
        }
        // Many pending calls without open connections: the client holds task handles.
        drop(console);
        let before_tasks_rss = rss_mib(pid).unwrap_or(0.0);
        let start = Instant::now();
        let answers: Vec<Result<String>> = futures_util::stream::iter(0..tasks)
            .map(|i| {
                let a = agent.clone();
                async move { a.echo_task(5_000_000 + i as u64, "hold as a task").await }
            })
            .buffer_unordered(128)
            .collect()
            .await;
        for body in answers {
            let body = body?;
            if !body.contains("taskId") {
                bail!("unexpected answer to a task-augmented held call: {body}");
            }
        }
        let task_time = start.elapsed();
        let tasks_rss = rss_mib(pid).unwrap_or(0.0);
        if std::env::var_os("TOLLGATE_BENCH_STOP_WITH_TASKS").is_some() {
            // Profiling what the pending tasks hold: stop the broker while they are pending.
            bail!("stopped with {tasks} pending tasks ({tasks_rss:.1} MiB), as asked");
        }
        // A console connecting now gets all of them in its snapshot.
        let start = Instant::now();
        let mut console = Console::connect(&console_url, &alice_token).await?;
        let snapshot = console.expect("snapshot").await?;
        let mut listed = snapshot["pending"].as_array().map_or(0, Vec::len);
        let mut more = snapshot["more"] == true;
        while more {
            let part = console.expect("snapshot_part").await?;
            listed += part["pending"].as_array().map_or(0, Vec::len);
            more = part["more"] == true;
        }
        let snapshot_time = start.elapsed();
        if listed != tasks {
            bail!("the snapshot lists {listed} pending calls, expected {tasks}");
        }
        let fingerprint = snapshot["pending"][0]["fingerprint"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let task_reject_time = console.reject_all(&fingerprint, tasks).await?;
        let after_rss = rss_mib(pid).unwrap_or(0.0);
        let many = Many {
            time: task_time,
            before_rss: before_tasks_rss,
            rss: tasks_rss,
            snapshot: snapshot_time,
            reject: task_reject_time,
            after_rss,
        };
        anyhow::Ok(Figures {
            hold_time,
            saved_time,
            reject_time,
            decided,
            allowed,
            idle_rss,
            held_rss,
            many,
        })
    })?;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let smoke = std::env::var_os("TOLLGATE_BENCH_SMOKE").is_some();
    let (mut holds, mut rounds, mut tasks) = if smoke {
        (200, 20, 500)
    } else {
        (10_000, 300, 100_000)
    };
    // Smaller loads for profiling runs (`TOLLGATE_BENCH_WRAP`), more decision rounds for a
    // steadier p99.
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    holds = env("TOLLGATE_BENCH_HOLDS").unwrap_or(holds);
    tasks = env("TOLLGATE_BENCH_TASKS").unwrap_or(tasks);
    rounds = env("TOLLGATE_BENCH_ROUNDS").unwrap_or(rounds);
    let script = everything()?;
    let bin = build_broker()?;
    let scratch = std::env::temp_dir().join(format!("tollgate-bench-queue-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let syncs = sync_rate(&scratch)?;
    // The queue and store alone (no HTTP), measured by the broker's own disk check.
    let disk = tollgate_broker::diagnostics::check_disk(&scratch, holds)?;
    let _ = std::fs::remove_dir_all(&scratch);
    let queue_holds = disk.holds_per_s;
    let queue_reject_ms = disk.reject_all.as_secs_f64() * 1e3;
    let load = (holds, rounds, tasks);
    let sled = measure(&bin, &script, None, load)?;
    // The same phases on the shared store, unless asked not to (`TOLLGATE_BENCH_PG=0`).
    let pg = if std::env::var("TOLLGATE_BENCH_PG").as_deref() == Ok("0") {
        None
    } else {
        let cluster = tollgate_bench::PgCluster::start(&bin)?;
        Some(measure(&bin, &script, Some(&cluster), load)?)
    };
    let Figures {
        hold_time,
        saved_time,
        reject_time,
        mut decided,
        mut allowed,
        idle_rss,
        held_rss,
        ref many,
    } = sled;
    let holds_per_s = holds as f64 / hold_time.as_secs_f64();
    println!();
    println!(
        "approval queue: {holds} concurrent held calls, {rounds} decision rounds{}",
        if smoke { " [smoke run]" } else { "" }
    );
    println!("| measure | value | baseline in this run | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| durable holds per second, queue + store only ({holds} at once, `check-disk`) | {queue_holds:.0}/s | {syncs:.0} single-record fdatasyncs/s | {:.1}x |",
        queue_holds / syncs
    );
    println!(
        "| durable holds per second end to end ({holds} HTTP clients in flight) | {holds_per_s:.0}/s | {syncs:.0} single-record fdatasyncs/s | {:.1}x |",
        holds_per_s / syncs
    );
    println!(
        "| bulk reject of {holds} held calls, queue + store only (`check-disk`) | {queue_reject_ms:.1} ms | | |"
    );
    println!(
        "| bulk reject of {holds} held calls until every client has its answer | {:.1} ms | decision saved and answered to the console: {:.1} ms | |",
        reject_time.as_secs_f64() * 1e3,
        saved_time.as_secs_f64() * 1e3
    );
    let (d50, d99) = (
        percentile(&mut decided, 50.0),
        percentile(&mut decided, 99.0),
    );
    let (a50, a99) = (
        percentile(&mut allowed, 50.0),
        percentile(&mut allowed, 99.0),
    );
    println!(
        "| decision → client has the upstream's result, p50 / p99 | {} / {} µs | allowed call {} / {} µs | {:.2}x / {:.2}x |",
        us(d50),
        us(d99),
        us(a50),
        us(a99),
        d50.as_secs_f64() / a50.as_secs_f64(),
        d99.as_secs_f64() / a99.as_secs_f64()
    );
    println!(
        "| broker RSS idle / with {holds} held streams | {idle_rss:.1} / {held_rss:.1} MiB | | |"
    );
    println!(
        "| durable holds per second, {tasks} calls as tasks (128 requests in flight) | {:.0}/s | {syncs:.0} single-record fdatasyncs/s | {:.1}x |",
        tasks as f64 / many.time.as_secs_f64(),
        tasks as f64 / many.time.as_secs_f64() / syncs
    );
    println!(
        "| broker RSS with {tasks} pending tasks (before / with them / after rejecting them) | {:.1} / {:.1} / {:.1} MiB | | |",
        many.before_rss, many.rss, many.after_rss
    );
    println!(
        "| a console connecting to {tasks} pending calls: snapshot received | {:.1} ms | | |",
        many.snapshot.as_secs_f64() * 1e3
    );
    println!(
        "| bulk reject of {tasks} pending tasks (decision saved and answered) | {:.1} ms | | |",
        many.reject.as_secs_f64() * 1e3
    );
    if let Some(mut pg) = pg {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
        let (p50, p99) = (
            percentile(&mut pg.decided, 50.0),
            percentile(&mut pg.decided, 99.0),
        );
        println!();
        println!(
            "the same phases on PostgreSQL (a throwaway cluster on this machine, [store] pool_size = 16) vs sled:"
        );
        println!("| measure | sled | PostgreSQL | PostgreSQL / sled |");
        println!("|---|---|---|---|");
        let row = |what: &str, a: f64, b: f64, unit: &str| {
            println!("| {what} | {a:.1}{unit} | {b:.1}{unit} | {:.2}x |", b / a);
        };
        row(
            &format!("durable holds per second ({holds} HTTP clients in flight)"),
            holds_per_s,
            rate(holds, pg.hold_time),
            "/s",
        );
        row(
            &format!("durable holds per second, {tasks} calls as tasks"),
            rate(tasks, many.time),
            rate(tasks, pg.many.time),
            "/s",
        );
        row(
            "decision → client has the result, p50",
            ms(d50),
            ms(p50),
            " ms",
        );
        row(
            "decision → client has the result, p99",
            ms(d99),
            ms(p99),
            " ms",
        );
        row(
            &format!("bulk reject of {holds} held calls until every client has its answer"),
            ms(reject_time),
            ms(pg.reject_time),
            " ms",
        );
        row(
            &format!("a console's snapshot of {tasks} pending calls"),
            ms(many.snapshot),
            ms(pg.many.snapshot),
            " ms",
        );
        row(
            &format!("bulk reject of {tasks} pending tasks"),
            ms(many.reject),
            ms(pg.many.reject),
            " ms",
        );
        row(
            &format!("broker RSS with {tasks} pending tasks"),
            many.rss,
            pg.many.rss,
            " MiB",
        );
    }
    Ok(())
}
