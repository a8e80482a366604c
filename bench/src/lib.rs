//! Helpers for Tollgate's benchmarks: real processes (the release broker, the reference MCP
//! server), percentiles and table printing.
//!
//! The benchmarks themselves live in `benches/`; they report every figure next to a baseline
//! measured in the same run, because absolute numbers on shared machines are noise.

pub mod floor;
pub mod guard_cost;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
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

/// A broker process, killed when dropped. Under a profiler (`TOLLGATE_BENCH_WRAP`, e.g.
/// `heaptrack -o /tmp/ht` or `perf record -g -o /tmp/perf.data`) the wrapper is a process group
/// of its own, stopped with SIGTERM instead, so the broker shuts down cleanly and the profiler
/// writes its data.
pub struct Broker {
    child: Child,
    wrapped: bool,
}

impl Broker {
    /// The broker's pid, for reading its memory (the wrapper's pid when wrapped: RSS figures
    /// from a profiled run are not the broker's).
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.wrapped {
            let group = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
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

/// Run a setup command, failing with what it printed.
fn setup(cmd: &mut Command, what: &str) -> Result<()> {
    eprintln!("bench setup: {what}");
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Install pinned npm packages in `dir` (`npm ci` from its lockfile) unless `probe` exists.
fn npm_ci(dir: &Path, probe: &Path) -> Result<()> {
    if probe.exists() {
        return Ok(());
    }
    setup(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir),
        &format!("npm ci in {}", dir.display()),
    )
}

/// The reference server's entry point from `tests/e2e` (pinned there; installed if missing).
pub fn everything() -> Result<PathBuf> {
    let dir = root().join("tests/e2e");
    let p = dir.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    npm_ci(&dir, &p)?;
    Ok(p)
}

/// Peer proxies, installed pinned from `bench/peers` into `target/bench-peers`.
pub struct Peers {
    /// supergateway's entry point (run with node).
    pub supergateway: PathBuf,
    /// The `mcp-proxy` executable in its own venv (it pins the 1.x Python SDK).
    pub mcp_proxy: PathBuf,
}

/// Install the peers if they are missing or their pins changed.
pub fn peers() -> Result<Peers> {
    let spec = root().join("bench/peers");
    let base = root().join("target/bench-peers");
    let npm = base.join("npm");
    std::fs::create_dir_all(&npm)?;
    let lock = std::fs::read(spec.join("package-lock.json"))?;
    let supergateway = npm.join("node_modules/supergateway/dist/index.js");
    if std::fs::read(npm.join("package-lock.json")).ok().as_deref() != Some(&lock[..]) {
        std::fs::copy(spec.join("package.json"), npm.join("package.json"))?;
        std::fs::copy(
            spec.join("package-lock.json"),
            npm.join("package-lock.json"),
        )?;
        let _ = std::fs::remove_dir_all(npm.join("node_modules"));
    }
    npm_ci(&npm, &supergateway)?;

    let venv = base.join("mcp-proxy");
    let mcp_proxy = venv.join("bin/mcp-proxy");
    let reqs = std::fs::read(spec.join("requirements.txt"))?;
    let stamp = venv.join("installed-requirements.txt");
    if !mcp_proxy.exists() || std::fs::read(&stamp).ok().as_deref() != Some(&reqs[..]) {
        let _ = std::fs::remove_dir_all(&venv);
        setup(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "creating the mcp-proxy venv",
        )?;
        setup(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--no-deps", "-r"])
                .arg(spec.join("requirements.txt")),
            "installing mcp-proxy (pinned)",
        )?;
        std::fs::write(&stamp, &reqs)?;
    }
    Ok(Peers {
        supergateway,
        mcp_proxy,
    })
}

/// Start mcp-proxy on a free loopback port in front of the stdio server `argv` (one child,
/// shared by its sessions); the process and its port, once it listens.
pub fn start_mcp_proxy(peers: &Peers, argv: &[String]) -> Result<(Killed, u16)> {
    let port = free_port()?;
    let child = Killed(
        Command::new(&peers.mcp_proxy)
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .args(["--log-level", "WARNING", "--"])
            .args(argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_port(port)?;
    Ok((child, port))
}

/// Start supergateway (Streamable HTTP, `--stateful`: one child per session, as Tollgate) on a
/// free port in front of the stdio server `argv`; the process and its port, once it listens.
pub fn start_supergateway(peers: &Peers, argv: &[String]) -> Result<(Killed, u16)> {
    let port = free_port()?;
    let child = Killed(
        Command::new("node")
            .arg(&peers.supergateway)
            .args(["--stdio", &argv.join(" ")])
            .args(["--outputTransport", "streamableHttp", "--stateful"])
            .args(["--port", &port.to_string(), "--logLevel", "none"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_port(port)?;
    Ok((child, port))
}

/// Build the release broker and return its path; `TOLLGATE_BENCH_BIN` names a broker binary to
/// use instead (an older build, to compare two in alternating runs).
pub fn build_broker() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TOLLGATE_BENCH_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("TOLLGATE_BENCH_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    // CI's smoke run uses the dev build it already has (`TOLLGATE_BENCH_PROFILE=dev`), which
    // saves a second compile of the workspace; figures only mean something from release.
    let profile = std::env::var("TOLLGATE_BENCH_PROFILE").unwrap_or_else(|_| "release".into());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--profile",
            &profile,
            "-p",
            "tollgate-broker",
        ])
        .current_dir(root())
        .status()?;
    if !status.success() {
        bail!("building tollgate-broker failed");
    }
    let dir = if profile == "dev" { "debug" } else { &profile };
    Ok(root().join("target").join(dir).join("tollgate-broker"))
}

/// Start a broker on loopback with `data_dir` in `dir`; `rest` is the config after the
/// listeners (more `[broker]` keys first, then other tables). Returns the process, the HTTP
/// base URL and the console WebSocket URL.
pub fn start_broker(bin: &Path, dir: &Path, rest: &str) -> Result<(Broker, String, String)> {
    let cfg = dir.join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "[broker]\nlisten = \"127.0.0.1:0\"\nconsole_listen = \"127.0.0.1:0\"\n{}data_dir = \"{}\"\n{}\n{rest}",
            // The admin listener on a free port, unless the bench sets it.
            if rest.contains("admin_listen") {
                ""
            } else {
                "admin_listen = \"127.0.0.1:0\"\n"
            },
            dir.join("data").display(),
            // Extra [broker] settings for experiments, e.g. `store_cache = "8MiB"`.
            std::env::var("TOLLGATE_BENCH_BROKER").unwrap_or_default()
        ),
    )?;
    let wrap = std::env::var("TOLLGATE_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(profiler) => {
            let mut c = Command::new(profiler);
            c.args(words).arg(bin).process_group(0);
            c
        }
        None => Command::new(bin),
    };
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child.stdout.take().context("broker stdout")?;
    let mut out = BufReader::new(out);
    // The broker announces its address, then its console's; a profiler may print first.
    let (mut base, mut console) = (None, None);
    let mut line = String::new();
    while console.is_none() {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            bail!("broker exited before announcing its addresses");
        }
        if base.is_none() {
            // "listening on http://..." (or https:// with [broker.tls]).
            base = line
                .split("listening on ")
                .nth(1)
                .map(|s| s.trim().to_string());
        } else {
            console = line.split("-> ").nth(1).map(|s| s.trim().to_string());
        }
    }
    // Keep draining the broker's stdout so it never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let (base, console) = (base.unwrap_or_default(), console.unwrap_or_default());
    let broker = Broker {
        child,
        wrapped: !wrap.trim().is_empty(),
    };
    Ok((broker, base, console))
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
        let (session, body) = s.post(&init).await?;
        // A session-less responder (the bare HTTP floor) answers with a result; a server that
        // refuses a session answers with an error.
        if session.is_none() && body.contains("\"error\"") {
            bail!("initialize at {url} opened no session: {body}");
        }
        s.session = session;
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

    /// End the session (`DELETE`), so the server can let its resources go.
    pub async fn close(&self) -> Result<()> {
        if let Some(s) = &self.session {
            self.client
                .delete(&self.url)
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-11-25")
                .send()
                .await?;
        }
        Ok(())
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

/// A bare HTTP/1.1 responder on a free port that answers every POST with a fixed `echo`
/// result: no MCP, no JSON parsing. A round trip to it is the floor of any HTTP hop with this
/// client on this machine, the part of a proxy's added latency no proxy can avoid.
pub async fn start_http_floor() -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let body = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"Echo: bench"}]}}"#;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut buf = Vec::with_capacity(4096);
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: headers, then content-length bytes of body.
                    let (head_end, len) = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (at + 4, len);
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < head_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    if sock.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Open an MCP session (revision 2025-11-25) as `token`; its id.
pub async fn open_session(http: &reqwest::Client, url: &str, token: &str) -> Result<String> {
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}});
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(init.to_string())
        .send()
        .await?;
    let id = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .context("no session id")?
        .to_string();
    resp.text().await?;
    http.post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-session-id", &id)
        .body(json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string())
        .send()
        .await?;
    Ok(id)
}

/// A throwaway PostgreSQL cluster on a loopback port, stopped and removed when dropped: for
/// comparing the shared store with sled in one run. Run as the `postgres` user when the bench
/// runs as root (PostgreSQL refuses root); `./dev test` installs Debian's package.
pub struct PgCluster {
    dir: PathBuf,
    as_user: Vec<&'static str>,
    /// `postgres://` URL of the database made for the bench.
    pub url: String,
}

fn pg_bin(name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.exists())
    {
        return Ok(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("{name} not found: install PostgreSQL (./dev test does)"))
}

impl PgCluster {
    /// initdb, start, create database `bench` and migrate it with `bin`.
    pub fn start(bin: &Path) -> Result<PgCluster> {
        let dir = std::env::temp_dir().join(format!("tollgate-bench-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // PostgreSQL refuses to run as root: then it runs as `postgres`.
        let root = Command::new("id").arg("-u").output()?.stdout == b"0\n";
        let as_user = if root {
            vec!["runuser", "-u", "postgres", "--"]
        } else {
            vec![]
        };
        if root {
            Command::new("chown").arg("postgres").arg(&dir).status()?;
        }
        let run = |argv: Vec<std::ffi::OsString>| -> Result<()> {
            let mut all: Vec<std::ffi::OsString> = as_user.iter().map(Into::into).collect();
            all.extend(argv);
            let out = Command::new(&all[0]).args(&all[1..]).output()?;
            if !out.status.success() {
                bail!(
                    "{:?} failed: {}{}",
                    all,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        let data = dir.join("data");
        run(vec![
            pg_bin("initdb")?.into(),
            "-D".into(),
            data.clone().into(),
            "-U".into(),
            "tollgate".into(),
            "--auth=trust".into(),
            "--no-sync".into(),
        ])?;
        let port = free_port()?;
        let cluster = PgCluster {
            dir: dir.clone(),
            as_user: as_user.clone(),
            url: format!("postgres://tollgate@127.0.0.1:{port}/bench"),
        };
        run(vec![
            pg_bin("pg_ctl")?.into(),
            "-D".into(),
            data.into(),
            "-o".into(),
            format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
                dir.display()
            )
            .into(),
            "-l".into(),
            dir.join("log").into(),
            "-w".into(),
            "start".into(),
        ])?;
        let out = Command::new(pg_bin("createdb")?)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "tollgate",
                "bench",
            ])
            .output()?;
        if !out.status.success() {
            bail!("createdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let cfg = dir.join("migrate.toml");
        std::fs::write(
            &cfg,
            format!(
                "[store]\nkind = \"postgres\"\nurl = \"{}\"\n[[server]]\nname = \"unused\"\ncommand = [\"true\"]\n",
                cluster.url
            ),
        )?;
        let out = Command::new(bin)
            .args(["migrate", "--config"])
            .arg(&cfg)
            .output()?;
        if !out.status.success() {
            bail!("migrate failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(cluster)
    }

    /// Create an identity in the database (where brokers using it read identities); its token.
    pub fn add_token(&self, bin: &Path, name: &str, role: &str) -> Result<String> {
        let out = Command::new(bin)
            .args(["token", "add", "--config"])
            .arg(self.dir.join("migrate.toml"))
            .args(["--name", name, "--role", role])
            .output()?;
        if !out.status.success() {
            bail!("token add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// The `[store]` section of a broker using it.
    pub fn store_section(&self) -> String {
        format!(
            "[store]\nkind = \"postgres\"\nurl = \"{}\"\npool_size = 16\n",
            self.url
        )
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Ok(pg_ctl) = pg_bin("pg_ctl") {
            let mut argv: Vec<std::ffi::OsString> = self.as_user.iter().map(Into::into).collect();
            argv.extend([
                pg_ctl.into(),
                "-D".into(),
                self.dir.join("data").into(),
                "-m".into(),
                "immediate".into(),
                "stop".into(),
            ]);
            let _ = Command::new(&argv[0]).args(&argv[1..]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Create an identity with `tollgate-broker token add` in `data`; its token.
pub fn add_token(bin: &Path, data: &Path, name: &str, role: &str) -> Result<String> {
    let out = Command::new(bin)
        .args(["token", "add", "--data-dir"])
        .arg(data)
        .args(["--name", name, "--role", role])
        .output()?;
    if !out.status.success() {
        bail!("token add failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
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
