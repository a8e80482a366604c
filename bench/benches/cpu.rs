//! CPU per auto-allowed `tools/call`: how much of the machine a proxy burns per call, against a
//! floor (the least a Rust proxy can do: `tollgate_bench::floor`) and the peer proxies, in one
//! run.
//!
//! Each proxy fronts `@modelcontextprotocol/server-everything` over stdio; the benchmark's
//! client (Streamable HTTP, one `reqwest` client per session) calls `echo` with a 24 B and a
//! 10 KB message, from one session in sequence and from 50 sessions at once. A proxy's CPU is
//! the on-CPU time of all its threads (`/proc/PID/task/*/schedstat`, nanoseconds) over the
//! measured calls; the stdio children's CPU is not counted, nor the client's. Sequential blocks
//! rotate between the proxies so the machine's noise falls on all alike. Tollgate runs as in
//! production: allow-all policy, guards on, its store on disk (the system's temp directory).
//! Context switches per call come from `/proc/PID/task/*/status`; system calls per call from a
//! separate pass under `perf stat -e raw_syscalls:sys_enter`.
//!
//! Run: `cargo bench -p tollgate-bench --bench cpu`. `TOLLGATE_BENCH_SMOKE=1` runs a few calls.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use tollgate_bench::{Broker, HttpSession, Killed, build_broker, everything};

/// What one thread of a process has used so far.
#[derive(Clone)]
struct Thread {
    name: String,
    cpu_ns: u64,
    switches: u64,
}

/// The live threads of a process, by thread id.
fn threads(pid: u32) -> HashMap<u32, Thread> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let path = t.path();
        let cpu_ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let switches = std::fs::read_to_string(path.join("status"))
            .map(|s| {
                s.lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        let name = std::fs::read_to_string(path.join("comm"))
            .unwrap_or_default()
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_')
            .to_string();
        out.insert(
            tid,
            Thread {
                name,
                cpu_ns,
                switches,
            },
        );
    }
    out
}

/// What a process used between two snapshots, in total and by thread name.
#[derive(Default, Clone)]
struct Used {
    cpu_ns: u64,
    switches: u64,
    calls: u64,
    /// A thread seen before was gone after: the last part of its CPU is not counted.
    lost_thread: bool,
    by_name: HashMap<String, (u64, u64)>,
}

impl Used {
    fn add(&mut self, before: &HashMap<u32, Thread>, after: &HashMap<u32, Thread>, calls: u64) {
        self.calls += calls;
        for (tid, a) in after {
            let (cpu, sw) = match before.get(tid) {
                Some(b) => (a.cpu_ns - b.cpu_ns, a.switches - b.switches),
                None => (a.cpu_ns, a.switches),
            };
            self.cpu_ns += cpu;
            self.switches += sw;
            let e = self.by_name.entry(a.name.clone()).or_default();
            e.0 += cpu;
            e.1 += sw;
        }
        self.lost_thread |= before.keys().any(|t| !after.contains_key(t));
    }

    fn us_per_call(&self) -> f64 {
        self.cpu_ns as f64 / 1e3 / self.calls.max(1) as f64
    }

    fn switches_per_call(&self) -> f64 {
        self.switches as f64 / self.calls.max(1) as f64
    }
}

/// A proxy under measurement.
struct Proxy {
    name: String,
    pid: u32,
    url: String,
}

async fn calls(s: &mut HttpSession, message: &str, n: usize) -> Result<()> {
    for _ in 0..n {
        s.echo(message).await?;
    }
    Ok(())
}

async fn open_many(url: &str, n: usize) -> Result<Vec<HttpSession>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(HttpSession::open(url).await?);
    }
    Ok(out)
}

/// `n` calls from each of `sessions` at once.
async fn concurrent(sessions: &mut [HttpSession], message: &str, n: usize) -> Result<()> {
    futures_util::future::try_join_all(sessions.iter_mut().map(|s| calls(s, message, n))).await?;
    Ok(())
}

/// System calls of `pid` while `run` makes `n` calls, from `perf stat` (None if perf cannot
/// count them here).
async fn syscalls(
    pid: u32,
    run: impl std::future::Future<Output = Result<()>>,
) -> Result<Option<u64>> {
    let perf = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p"])
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut perf) = perf else {
        return Ok(None);
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    run.await?;
    Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status()?;
    let mut count = None;
    for line in BufReader::new(perf.stderr.take().context("perf stderr")?)
        .lines()
        .map_while(Result::ok)
    {
        if line.contains("raw_syscalls:sys_enter") {
            count = line.split(',').next().and_then(|c| c.trim().parse().ok());
        }
    }
    perf.wait()?;
    Ok(count)
}

/// A message of exactly `len` bytes that no DLP rule takes for a secret.
fn message(len: usize) -> String {
    "lorem ipsum dolor sit amet, "
        .chars()
        .cycle()
        .take(len)
        .collect()
}

/// Start a broker (`bin`) in front of `argv` with its store in `dir`; the process and its MCP URL.
fn broker(
    bin: &std::path::Path,
    dir: &std::path::Path,
    argv: &[String],
) -> Result<(Broker, String)> {
    std::fs::create_dir_all(dir)?;
    let (broker, base, _) = tollgate_bench::start_broker(
        bin,
        dir,
        &format!(
            "auth = \"none\"\nmax_sessions_per_client = 1000\n[policy]\ndefault = \"allow\"\n[[server]]\nname = \"stdio\"\ncommand = {}\n",
            serde_json::to_string(argv)?
        ),
    )?;
    Ok((broker, format!("{base}/mcp/stdio")))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("floor") {
        return tollgate_bench::floor::main(args.skip_while(|a| a == "--").collect());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let smoke = std::env::var_os("TOLLGATE_BENCH_SMOKE").is_some();
    // Only the floor and Tollgate, one session: for trying a change.
    let quick = std::env::var_os("TOLLGATE_BENCH_QUICK").is_some();
    // Another broker build measured alongside, alternating with this one.
    let other = std::env::var_os("TOLLGATE_BENCH_VS").map(std::path::PathBuf::from);
    // Sequential: rounds × calls per block per proxy; concurrent: sessions × calls each.
    let (rounds, block, sessions, each, perf_calls) = if smoke {
        (1, 5, 2, 2, 10)
    } else {
        (4, 500, 50, 40, 300)
    };
    let script = everything()?;
    let broker_bin = build_broker()?;
    let dir = std::env::temp_dir().join(format!("tollgate-bench-cpu-{}", std::process::id()));
    let argv = vec![
        "node".to_string(),
        script.display().to_string(),
        "stdio".to_string(),
    ];

    // Kept alive until the end: the processes measured.
    let mut keep: Vec<Box<dyn std::any::Any>> = vec![];
    let mut proxies = vec![];
    let mut floor = Command::new(std::env::current_exe()?)
        .args(["floor", "--"])
        .args(&argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut port = String::new();
    BufReader::new(floor.stdout.take().context("floor stdout")?).read_line(&mut port)?;
    let floor = Killed(floor);
    let floor_port: u16 = port
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("the floor did not say its port: {port:?}"))?;
    proxies.push(Proxy {
        name: "floor".into(),
        pid: floor.0.id(),
        url: format!("http://127.0.0.1:{floor_port}/mcp"),
    });
    keep.push(Box::new(floor));
    let (tollgate, url) = broker(&broker_bin, &dir.join("this"), &argv)?;
    proxies.push(Proxy {
        name: "Tollgate".into(),
        pid: tollgate.id(),
        url,
    });
    keep.push(Box::new(tollgate));
    if !quick {
        let peers = tollgate_bench::peers()?;
        let (mcp_proxy, mp_port) = tollgate_bench::start_mcp_proxy(&peers, &argv)?;
        proxies.push(Proxy {
            name: "mcp-proxy".into(),
            pid: mcp_proxy.0.id(),
            url: format!("http://127.0.0.1:{mp_port}/mcp"),
        });
        keep.push(Box::new(mcp_proxy));
        let (supergateway, sg_port) = tollgate_bench::start_supergateway(&peers, &argv)?;
        proxies.push(Proxy {
            name: "supergateway".into(),
            pid: supergateway.0.id(),
            url: format!("http://127.0.0.1:{sg_port}/mcp"),
        });
        keep.push(Box::new(supergateway));
    }
    if let Some(bin) = &other {
        let (b, url) = broker(bin, &dir.join("other"), &argv)?;
        proxies.push(Proxy {
            name: format!("Tollgate ({})", bin.display()),
            pid: b.id(),
            url,
        });
        keep.push(Box::new(b));
    }
    let k = proxies.len();
    let sizes = [("24 B", message(24)), ("10 KB", message(10 * 1024))];
    // (load, size) → per proxy.
    let mut results: Vec<(String, &str, Vec<Used>)> = vec![];
    let mut syscall_counts = vec![None; k];

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut one = vec![];
        for p in &proxies {
            let mut s = HttpSession::open(&p.url).await?;
            calls(&mut s, &sizes[0].1, if smoke { 5 } else { 100 }).await?;
            one.push(s);
        }
        for (size, msg) in &sizes {
            let mut used = vec![Used::default(); k];
            for r in 0..rounds {
                for j in 0..k {
                    let i = (r + j) % k;
                    let before = threads(proxies[i].pid);
                    calls(&mut one[i], msg, block).await?;
                    used[i].add(&before, &threads(proxies[i].pid), block as u64);
                }
            }
            results.push(("1 session, sequential".into(), size, used));
        }
        if quick {
            return anyhow::Ok(());
        }
        for (i, p) in proxies.iter().enumerate() {
            syscall_counts[i] = syscalls(p.pid, calls(&mut one[i], &sizes[0].1, perf_calls))
                .await?
                .map(|n| n as f64 / perf_calls as f64);
        }
        for s in &one {
            s.close().await?;
        }
        for (size, msg) in &sizes {
            let mut used = vec![Used::default(); k];
            for (i, p) in proxies.iter().enumerate() {
                let mut many = open_many(&p.url, sessions).await?;
                concurrent(&mut many, msg, 2).await?;
                let before = threads(p.pid);
                concurrent(&mut many, msg, each).await?;
                used[i].add(&before, &threads(p.pid), (sessions * each) as u64);
                for s in &many {
                    s.close().await?;
                }
            }
            results.push((format!("{sessions} sessions at once"), size, used));
        }
        anyhow::Ok(())
    })?;
    drop(keep);
    let _ = std::fs::remove_dir_all(&dir);
    if results.is_empty() {
        bail!("nothing measured");
    }

    let names: Vec<&str> = proxies.iter().map(|p| p.name.as_str()).collect();
    let find = |name: &str| names.iter().position(|n| *n == name);
    let (tollgate, mcp_proxy) = (1, find("mcp-proxy"));
    println!();
    println!(
        "CPU per auto-allowed `echo` call: µs of the proxy process's CPU, all its threads; the stdio child's and the client's CPU not counted{}",
        if smoke { " [smoke run]" } else { "" }
    );
    println!(
        "| load | message | {} | Tollgate / floor | Tollgate / mcp-proxy |",
        names.join(" | ")
    );
    println!("|---|---|{}---|---|", "---|".repeat(k));
    let mut lost = false;
    for (load, size, used) in &results {
        let c: Vec<f64> = used.iter().map(Used::us_per_call).collect();
        lost |= used.iter().any(|u| u.lost_thread);
        let cells: Vec<String> = c.iter().map(|c| format!("{c:.1}")).collect();
        println!(
            "| {load} | {size} | {} | {:.2} | {} |",
            cells.join(" | "),
            c[tollgate] / c[0],
            mcp_proxy.map_or("-".into(), |m| format!("{:.3}", c[tollgate] / c[m]))
        );
    }
    if lost {
        println!("(a thread of one proxy ended during a measurement: its last CPU is missing)");
    }
    println!();
    println!(
        "context switches per call (all threads) and system calls per call (perf stat, 1 session, 24 B)"
    );
    println!("| | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(k));
    for (load, size, used) in &results {
        let c: Vec<String> = used
            .iter()
            .map(|u| format!("{:.1}", u.switches_per_call()))
            .collect();
        println!("| switches, {load}, {size} | {} |", c.join(" | "));
    }
    if !quick {
        let s: Vec<String> = syscall_counts
            .iter()
            .map(|c| c.map_or("- (perf stat failed)".into(), |c| format!("{c:.1}")))
            .collect();
        println!("| system calls, 1 session, 24 B | {} |", s.join(" | "));
    }
    for (i, name) in names
        .iter()
        .enumerate()
        .filter(|(_, n)| n.starts_with("Tollgate"))
    {
        println!();
        println!(
            "{name}'s CPU by thread, 1 session, sequential, 24 B (µs per call, switches per call)"
        );
        println!("| thread | CPU | switches |");
        println!("|---|---|---|");
        let t = &results[0].2[i];
        let mut threads: Vec<_> = t.by_name.iter().collect();
        threads.sort_by_key(|t| std::cmp::Reverse(t.1.0));
        for (thread, (cpu, sw)) in threads {
            println!(
                "| {thread} | {:.1} | {:.1} |",
                *cpu as f64 / 1e3 / t.calls as f64,
                *sw as f64 / t.calls as f64
            );
        }
    }
    Ok(())
}
