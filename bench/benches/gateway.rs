//! Added latency of an auto-allowed `tools/call` through the broker, against the same upstream
//! reached directly, measured in one run with the calls interleaved (direct, broker, direct, ...)
//! so machine noise hits both sides alike.
//!
//! Upstream: `@modelcontextprotocol/server-everything` from `tests/e2e/node_modules` (install
//! with `cd tests/e2e && npm ci`), over Streamable HTTP and over stdio.
//!
//! Run: `cargo bench -p tollgate-bench` (prints a table). `TOLLGATE_BENCH_SMOKE=1` runs a few
//! calls only, so CI proves the benchmark still works without asserting on time.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tollgate_bench::{HttpSession, Killed, build_broker, delta_us, everything, percentile, us};

fn start_broker(bin: &Path, dir: &Path, servers: &str) -> Result<(Killed, String)> {
    let (child, base, _) = tollgate_bench::start_broker(
        bin,
        dir,
        &format!("auth = \"none\"\n[policy]\ndefault = \"allow\"\n{servers}"),
    )?;
    Ok((child, base))
}

/// A stdio MCP session with a child process: the direct baseline for stdio upstreams.
struct StdioSession {
    _child: Killed,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next: u64,
}

impl StdioSession {
    fn open(argv: &[String]) -> Result<StdioSession> {
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut s = StdioSession {
            _child: Killed(child),
            stdin,
            stdout,
            next: 0,
        };
        s.send(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}))?;
        s.read_response()?;
        s.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}))?;
        Ok(s)
    }

    fn send(&mut self, v: &Value) -> Result<()> {
        writeln!(self.stdin, "{v}")?;
        self.stdin.flush()?;
        Ok(())
    }

    fn read_response(&mut self) -> Result<String> {
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("stdio server exited");
            }
            if line.contains("\"id\"") && !line.contains("\"method\"") {
                return Ok(line);
            }
        }
    }

    fn echo(&mut self) -> Result<Duration> {
        self.next += 1;
        let call = json!({"jsonrpc":"2.0","id":self.next,"method":"tools/call","params":{"name":"echo","arguments":{"message":"bench"}}});
        let t = Instant::now();
        self.send(&call)?;
        let line = self.read_response()?;
        let d = t.elapsed();
        if !line.contains("Echo: bench") {
            bail!("unexpected echo answer: {line}");
        }
        Ok(d)
    }
}

struct Row {
    path: &'static str,
    direct: Vec<Duration>,
    broker: Vec<Duration>,
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; other harness flags are ignored.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let smoke = std::env::var_os("TOLLGATE_BENCH_SMOKE").is_some();
    let (warmup, n) = if smoke { (5, 20) } else { (200, 2000) };
    let script = everything()?;
    let broker_bin = build_broker()?;
    let dir = std::env::temp_dir().join(format!("tollgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (_http_upstream, port) = tollgate_bench::start_everything_http()?;
    let stdio_argv = vec![
        "node".to_string(),
        script.display().to_string(),
        "stdio".to_string(),
    ];
    let servers = format!(
        "[[server]]\nname = \"http\"\nurl = \"http://127.0.0.1:{port}/mcp\"\n[[server]]\nname = \"stdio\"\ncommand = {}\n",
        serde_json::to_string(&stdio_argv)?
    );
    let (_broker, base) = start_broker(&broker_bin, &dir, &servers)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = rt.block_on(async {
        let mut direct_http = HttpSession::open(&format!("http://127.0.0.1:{port}/mcp")).await?;
        let mut via_http = HttpSession::open(&format!("{base}/mcp/http")).await?;
        let mut direct_stdio = StdioSession::open(&stdio_argv)?;
        let mut via_stdio = HttpSession::open(&format!("{base}/mcp/stdio")).await?;
        let mut http = Row {
            path: "Streamable HTTP upstream",
            direct: vec![],
            broker: vec![],
        };
        let mut stdio = Row {
            path: "stdio upstream",
            direct: vec![],
            broker: vec![],
        };
        for i in 0..warmup + n {
            let (a, b, c, d) = (
                direct_http.echo("bench").await?,
                via_http.echo("bench").await?,
                direct_stdio.echo()?,
                via_stdio.echo("bench").await?,
            );
            if i >= warmup {
                http.direct.push(a);
                http.broker.push(b);
                stdio.direct.push(c);
                stdio.broker.push(d);
            }
        }
        anyhow::Ok(vec![http, stdio])
    })?;
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!(
        "tools/call echo, auto-allowed, {n} calls per path, interleaved (µs){}",
        if smoke { " [smoke run]" } else { "" }
    );
    println!(
        "| upstream | direct p50 | direct p99 | broker p50 | broker p99 | added p50 | added p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for mut r in rows {
        let (d50, d99) = (
            percentile(&mut r.direct, 50.0),
            percentile(&mut r.direct, 99.0),
        );
        let (b50, b99) = (
            percentile(&mut r.broker, 50.0),
            percentile(&mut r.broker, 99.0),
        );
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.path,
            us(d50),
            us(d99),
            us(b50),
            us(b99),
            delta_us(b50, d50),
            delta_us(b99, d99)
        );
    }
    println!(
        "direct stdio is a pipe to the child; through the broker the client speaks HTTP, so that row includes the HTTP hop."
    );
    Ok(())
}
