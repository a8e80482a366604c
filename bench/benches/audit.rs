//! Audit searches over a large trail: `tollgate-broker check-audit` fills a scratch store on
//! this disk with one million entries through the real recorder (journal, group commit, sled,
//! indexes) and times searches with one and two filters, like `tollgate audit --status rejected
//! --tool drop_table`. The baseline in the same run is the newest-100 search with no filter
//! (a plain tail of the trail).
//!
//! Run: `cargo bench -p tollgate-bench --bench audit`. `TOLLGATE_BENCH_SMOKE=1` writes 20000
//! entries only, without asserting on time.

use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tollgate_bench::build_broker;

fn main() -> Result<()> {
    let smoke = std::env::var_os("TOLLGATE_BENCH_SMOKE").is_some();
    let records = if smoke { 20_000 } else { 1_000_000 };
    let broker = build_broker()?;
    let dir = std::env::temp_dir();
    let out = Command::new(&broker)
        .args([
            "check-audit",
            "--json",
            "--records",
            &records.to_string(),
            "--dir",
        ])
        .arg(&dir)
        .output()
        .context("running tollgate-broker check-audit")?;
    if !out.status.success() {
        bail!(
            "check-audit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let queries = v["queries"].as_array().context("queries")?;
    let base = queries
        .iter()
        .find(|q| q["query"] == "no filter, newest 100")
        .and_then(|q| q["ms"].as_f64())
        .unwrap_or(f64::NAN);
    println!();
    println!(
        "audit search over {records} entries (written in {:.1} s, {:.0}/s){}",
        v["fill_s"].as_f64().unwrap_or(f64::NAN),
        records as f64 / v["fill_s"].as_f64().unwrap_or(f64::NAN),
        if smoke { " [smoke run]" } else { "" }
    );
    println!("| query | entries returned | median ms | vs an unfiltered tail |");
    println!("|---|---|---|---|");
    for q in queries {
        let ms = q["ms"].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {:.2} | {:.0}x |",
            q["query"].as_str().unwrap_or("?"),
            q["found"],
            ms,
            ms / base
        );
    }
    Ok(())
}
