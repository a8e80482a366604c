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
use tollgate_bench::{
    Broker, HttpSession, Killed, build_broker, delta_us, everything, percentile, us,
};

fn start_broker(bin: &Path, dir: &Path, servers: &str) -> Result<(Broker, String)> {
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

/// One way of reaching server-everything.
enum Session {
    Http(HttpSession),
    Stdio(StdioSession),
}

impl Session {
    async fn echo(&mut self) -> Result<Duration> {
        match self {
            Session::Http(h) => h.echo("bench").await,
            Session::Stdio(s) => s.echo(),
        }
    }
}

/// A measured path and the path it is compared with (its direct baseline).
struct Measured {
    name: &'static str,
    baseline: Option<usize>,
    samples: Vec<Duration>,
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; other harness flags are ignored.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let smoke = std::env::var_os("TOLLGATE_BENCH_SMOKE").is_some();
    let (warmup, n) = if smoke { (5, 20) } else { (100, 1000) };
    let script = everything()?;
    let peers = tollgate_bench::peers()?;
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
    // The peers, each in front of its own stdio child, as Tollgate is.
    let (_mcp_proxy, mp_port) = tollgate_bench::start_mcp_proxy(&peers, &stdio_argv)?;
    let (_supergateway, sg_port) = tollgate_bench::start_supergateway(&peers, &stdio_argv)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut paths = [
        Measured {
            name: "bare HTTP responder (the floor of any HTTP hop)",
            baseline: None,
            samples: vec![],
        },
        Measured {
            name: "direct, Streamable HTTP",
            baseline: None,
            samples: vec![],
        },
        Measured {
            name: "Tollgate → Streamable HTTP",
            baseline: Some(1),
            samples: vec![],
        },
        Measured {
            name: "direct, stdio pipe",
            baseline: None,
            samples: vec![],
        },
        Measured {
            name: "Tollgate → stdio",
            baseline: Some(3),
            samples: vec![],
        },
        Measured {
            name: "mcp-proxy 0.13.0 → stdio",
            baseline: Some(3),
            samples: vec![],
        },
        Measured {
            name: "supergateway 4.0.0 (stateful) → stdio",
            baseline: Some(3),
            samples: vec![],
        },
    ];
    rt.block_on(async {
        let floor = tollgate_bench::start_http_floor().await?;
        let mut sessions = [
            Session::Http(HttpSession::open(&format!("http://127.0.0.1:{floor}/mcp")).await?),
            Session::Http(HttpSession::open(&format!("http://127.0.0.1:{port}/mcp")).await?),
            Session::Http(HttpSession::open(&format!("{base}/mcp/http")).await?),
            Session::Stdio(StdioSession::open(&stdio_argv)?),
            Session::Http(HttpSession::open(&format!("{base}/mcp/stdio")).await?),
            Session::Http(HttpSession::open(&format!("http://127.0.0.1:{mp_port}/mcp")).await?),
            Session::Http(HttpSession::open(&format!("http://127.0.0.1:{sg_port}/mcp")).await?),
        ];
        let k = sessions.len();
        for i in 0..warmup + n {
            // Rotate the order so no path always follows the same one.
            for j in 0..k {
                let p = (i + j) % k;
                let d = sessions[p].echo().await?;
                if i >= warmup {
                    paths[p].samples.push(d);
                }
            }
        }
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&dir);

    let stats: Vec<(Duration, Duration)> = paths
        .iter_mut()
        .map(|p| {
            (
                percentile(&mut p.samples, 50.0),
                percentile(&mut p.samples, 99.0),
            )
        })
        .collect();
    let added = |i: usize| -> Option<(f64, f64)> {
        let b = paths[i].baseline?;
        Some((
            stats[i].0.as_secs_f64() - stats[b].0.as_secs_f64(),
            stats[i].1.as_secs_f64() - stats[b].1.as_secs_f64(),
        ))
    };
    println!();
    println!(
        "tools/call echo, auto-allowed, {n} calls per path, interleaved in rotating order (µs){}",
        if smoke { " [smoke run]" } else { "" }
    );
    println!(
        "| path | p50 | p99 | added p50 | added p99 | added p50 beyond the HTTP floor | Tollgate's added p50 / this path's |"
    );
    println!("|---|---|---|---|---|---|---|");
    let floor = stats[0].0.as_secs_f64();
    let tollgate_stdio = added(4).map_or(f64::NAN, |a| a.0);
    for (i, p) in paths.iter().enumerate() {
        let (a50, a99) = match (added(i), p.baseline) {
            (Some(_), Some(b)) => (
                delta_us(stats[i].0, stats[b].0),
                delta_us(stats[i].1, stats[b].1),
            ),
            _ => ("-".into(), "-".into()),
        };
        let share = if i >= 5 {
            added(i).map_or("-".into(), |a| format!("{:.2}", tollgate_stdio / a.0))
        } else {
            "-".into()
        };
        let beyond = added(i).map_or("-".into(), |a| format!("{:+.1}", (a.0 - floor) * 1e6));
        println!(
            "| {} | {} | {} | {a50} | {a99} | {beyond} | {share} |",
            p.name,
            us(stats[i].0),
            us(stats[i].1),
        );
    }
    println!(
        "direct stdio is a pipe to the child; through a proxy the client speaks Streamable HTTP, so those rows include the HTTP hop, whose floor (same client, a responder that does nothing) is the first row. The last column is Tollgate's added p50 (stdio) over the peer's: the target is at most 0.10."
    );
    Ok(())
}
