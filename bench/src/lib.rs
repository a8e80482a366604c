//! Helpers for Tollgate's benchmarks: real processes (the release broker, the reference MCP
//! server), percentiles and table printing.
//!
//! The benchmarks themselves live in `benches/`; they report every figure next to a baseline
//! measured in the same run, because absolute numbers on shared machines are noise.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Wait until something listens on a loopback port.
pub fn wait_port(port: u16) -> Result<()> {
    for _ in 0..400 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on port {port}")
}

/// The reference server's entry point, installed by `npm ci` in `tests/e2e`.
pub fn everything() -> Result<PathBuf> {
    let p =
        root().join("tests/e2e/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if !p.exists() {
        bail!(
            "server-everything is not installed: run `cd tests/e2e && npm ci` (./dev test does this)"
        );
    }
    Ok(p)
}

/// Build the release broker and return its path.
pub fn build_broker() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "tollgate-broker"])
        .current_dir(root())
        .status()?;
    if !status.success() {
        bail!("building tollgate-broker failed");
    }
    Ok(root().join("target/release/tollgate-broker"))
}

/// Start a broker on loopback with `data_dir` in `dir`; `rest` is the config after the
/// listeners (more `[broker]` keys first, then other tables). Returns the process, the HTTP
/// base URL and the console WebSocket URL.
pub fn start_broker(bin: &Path, dir: &Path, rest: &str) -> Result<(Killed, String, String)> {
    let cfg = dir.join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "[broker]\nlisten = \"127.0.0.1:0\"\nconsole_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{rest}",
            dir.join("data").display()
        ),
    )?;
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child.stdout.take().context("broker stdout")?;
    let mut out = BufReader::new(out);
    let (mut first, mut second) = (String::new(), String::new());
    out.read_line(&mut first)?;
    out.read_line(&mut second)?;
    // Keep draining the broker's stdout so it never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let base = first
        .split("http://")
        .nth(1)
        .context("broker did not announce its address")?
        .trim()
        .to_string();
    let console = second
        .split("-> ")
        .nth(1)
        .context("broker did not announce its console address")?
        .trim()
        .to_string();
    Ok((Killed(child), format!("http://{base}"), console))
}

/// Resident memory of a process in MiB, from /proc (Linux).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The `p`-th percentile (0..=100) of a set of samples, by nearest rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// Microseconds with one decimal, for tables.
pub fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// Signed difference in microseconds.
pub fn delta_us(a: Duration, b: Duration) -> String {
    format!("{:+.1}", (a.as_secs_f64() - b.as_secs_f64()) * 1e6)
}

/// A Streamable HTTP MCP session (revision 2025-11-25): initialize, then echo calls.
pub struct HttpSession {
    client: reqwest::Client,
    url: String,
    session: Option<String>,
    next: u64,
}

impl HttpSession {
    /// Initialize a session at `url`.
    pub async fn open(url: &str) -> Result<HttpSession> {
        let mut s = HttpSession {
            client: reqwest::Client::new(),
            url: url.into(),
            session: None,
            next: 0,
        };
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}});
        let resp = s.post(&init).await?;
        s.session = resp.0;
        s.post(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await?;
        Ok(s)
    }

    /// POST one JSON-RPC message; the session id header, if any, and the body.
    pub async fn post(&self, msg: &Value) -> Result<(Option<String>, String)> {
        let mut req = self
            .client
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        let resp = req.body(msg.to_string()).send().await?;
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.text().await?;
        Ok((session, body))
    }

    /// Call `echo` with `message`; the round-trip time.
    pub async fn echo(&mut self, message: &str) -> Result<Duration> {
        self.next += 1;
        let call = json!({"jsonrpc":"2.0","id":self.next,"method":"tools/call","params":{"name":"echo","arguments":{"message":message}}});
        let t = Instant::now();
        let (_, body) = self.post(&call).await?;
        let d = t.elapsed();
        if !body.contains("Echo: ") || body.contains("\"isError\":true") {
            bail!("unexpected echo answer: {body}");
        }
        Ok(d)
    }
}

/// Start `@modelcontextprotocol/server-everything` over Streamable HTTP on a free port (with the
/// loopback preload the end-to-end tests use); the process and its port.
pub fn start_everything_http() -> Result<(Killed, u16)> {
    let script = everything()?;
    let port = free_port()?;
    let child = Killed(
        Command::new("node")
            .arg("--require")
            .arg(root().join("tests/e2e/servers/loopback.cjs"))
            .arg(&script)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_port(port)?;
    Ok((child, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&mut s, 50.0), Duration::from_micros(50));
        assert_eq!(percentile(&mut s, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&mut s, 100.0), Duration::from_micros(100));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }
}
