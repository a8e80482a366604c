//! What the guards cost per call.
//!
//! In process (`tollgate_bench::guard_cost`): each guard step (DLP scan, redaction, canonical
//! hash, fingerprints, loop counting) on a small call and on 10 KB arguments, with the built-in
//! detectors or, with `TOLLGATE_BENCH_CONFIG=tollgate.toml`, the `[dlp]` detectors of a config,
//! so an operator sees what a custom detector or a large argument costs before deploying it.
//! End to end, in one run with the calls interleaved: an auto-allowed `echo` with a small and a
//! 10 KB message, straight to server-everything (Streamable HTTP), through a broker with the DLP
//! guard off, and through one with it on, so the DLP guard's share of a call is a difference
//! measured under the same noise.
//!
//! Run: `cargo bench -p tollgate-bench --bench guards`. `TOLLGATE_BENCH_SMOKE=1` runs a few
//! calls only (CI), without asserting on time.

use std::time::Duration;

use anyhow::Result;
use tollgate_bench::{HttpSession, build_broker, delta_us, guard_cost, percentile, us};
use tollgate_policy::guards::dlp::{Entropy, Scanner};

/// A log excerpt of about `size` bytes with nothing the DLP guard would flag.
fn message(size: usize) -> String {
    let mut out = String::new();
    let mut i = 0u64;
    while out.len() < size {
        out.push_str(&format!(
            "2026-11-24T21:{:02}:{:02}Z INFO GET /api/v1/orders/{} took {}ms cache miss shard {}\n",
            i % 60,
            (i * 7) % 60,
            10_000 + i * 37,
            (i * 13) % 900,
            i % 16
        ));
        i += 1;
    }
    out.truncate(size);
    out
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let smoke = std::env::var_os("TOLLGATE_BENCH_SMOKE").is_some();
    let (warmup, n) = if smoke { (3, 10) } else { (50, 500) };
    let broker_bin = build_broker()?;

    let scanner = match std::env::var_os("TOLLGATE_BENCH_CONFIG") {
        Some(path) => {
            let c = tollgate_broker::config::load(std::path::Path::new(&path))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Scanner::new(c.dlp.entropy, &c.dlp.detectors)
        }
        None => Scanner::new(Some(Entropy::default()), &[]),
    };
    let steps = guard_cost::measure(&scanner, 10_240)?;

    let dir = std::env::temp_dir().join(format!("tollgate-bench-guards-{}", std::process::id()));
    let (on_dir, off_dir, bare_dir) = (dir.join("on"), dir.join("off"), dir.join("bare"));
    std::fs::create_dir_all(&on_dir)?;
    std::fs::create_dir_all(&off_dir)?;
    std::fs::create_dir_all(&bare_dir)?;
    let (_upstream, port) = tollgate_bench::start_everything_http()?;
    let servers = format!("[[server]]\nname = \"http\"\nurl = \"http://127.0.0.1:{port}/mcp\"\n");
    let base = "auth = \"none\"\n[policy]\ndefault = \"allow\"\n";
    let (_on, on_url, _) =
        tollgate_bench::start_broker(&broker_bin, &on_dir, &format!("{base}{servers}"))?;
    let (_off, off_url, _) = tollgate_bench::start_broker(
        &broker_bin,
        &off_dir,
        &format!("{base}[dlp]\nenabled = false\n{servers}"),
    )?;
    // DLP on, metrics off: no admin listener, so the store is not observed.
    let (_bare, bare_url, _) = tollgate_bench::start_broker(
        &broker_bin,
        &bare_dir,
        &format!("admin_listen = \"off\"\n{base}{servers}"),
    )?;

    let sizes = [("small (24 B)", message(24)), ("10 KB", message(10_240))];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = rt.block_on(async {
        let mut direct = HttpSession::open(&format!("http://127.0.0.1:{port}/mcp")).await?;
        let mut off = HttpSession::open(&format!("{off_url}/mcp/http")).await?;
        let mut on = HttpSession::open(&format!("{on_url}/mcp/http")).await?;
        let mut bare = HttpSession::open(&format!("{bare_url}/mcp/http")).await?;
        let mut rows = Vec::new();
        for (label, msg) in &sizes {
            let (mut d, mut f, mut g, mut b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for i in 0..warmup + n {
                // Rotate the order so no path always goes first (or last) after the others.
                let mut t = [Duration::ZERO; 4];
                for k in 0..4 {
                    let path = (i + k) % 4;
                    t[path] = match path {
                        0 => direct.echo(msg).await?,
                        1 => off.echo(msg).await?,
                        2 => on.echo(msg).await?,
                        _ => bare.echo(msg).await?,
                    };
                }
                if i >= warmup {
                    d.push(t[0]);
                    f.push(t[1]);
                    g.push(t[2]);
                    b.push(t[3]);
                }
            }
            rows.push((*label, d, f, g, b));
        }
        anyhow::Ok(rows)
    })?;
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!(
        "guard steps in process, median µs per call{}",
        if smoke { " [smoke run]" } else { "" }
    );
    println!("| step | input | bytes | µs |");
    println!("|---|---|---|---|");
    for s in &steps {
        println!(
            "| {} | {} | {} | {:.1} |",
            s.step,
            s.input,
            s.bytes,
            s.time.as_secs_f64() * 1e6
        );
    }
    println!();
    println!("auto-allowed echo over Streamable HTTP, {n} calls per path, interleaved (µs, p50)");
    println!(
        "| message | direct | broker, DLP off | broker, DLP on | broker adds | DLP's share of a call through the broker | DLP on, metrics off | metrics' share |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (label, mut d, mut f, mut g, mut b) in rows {
        let (d50, f50, g50, b50): (Duration, Duration, Duration, Duration) = (
            percentile(&mut d, 50.0),
            percentile(&mut f, 50.0),
            percentile(&mut g, 50.0),
            percentile(&mut b, 50.0),
        );
        println!(
            "| {label} | {} | {} | {} | {} | {} ({:.1}%) | {} | {} ({:.1}%) |",
            us(d50),
            us(f50),
            us(g50),
            delta_us(g50, d50),
            delta_us(g50, f50),
            (g50.as_secs_f64() - f50.as_secs_f64()) / g50.as_secs_f64() * 100.0,
            us(b50),
            delta_us(g50, b50),
            (g50.as_secs_f64() - b50.as_secs_f64()) / g50.as_secs_f64() * 100.0
        );
    }
    Ok(())
}
