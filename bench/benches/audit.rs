//! Audit searches over a large trail: the broker's `check-audit` (linked in, the same code as
//! `tollgate-broker check-audit`) fills a scratch store on this disk with one million entries
//! through the real store (journal, group commit, sled, indexes) and times searches with one and two filters, like `tollgate audit --status rejected
//! --tool drop_table`. The baseline in the same run is the newest-100 search with no filter
//! (a plain tail of the trail).
//!
//! Run: `cargo bench -p tollgate-bench --bench audit`. `TOLLGATE_BENCH_SMOKE=1` writes 20000
//! entries only, without asserting on time.

use anyhow::Result;
use tollgate_broker::diagnostics;

fn main() -> Result<()> {
    let smoke = std::env::var_os("TOLLGATE_BENCH_SMOKE").is_some();
    let records = if smoke { 20_000 } else { 1_000_000 };
    let c = diagnostics::check_audit(&std::env::temp_dir(), records)?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let base = c
        .searches
        .iter()
        .find(|s| s.query == "no filter, newest 100")
        .map_or(f64::NAN, |s| ms(s.median));
    println!();
    println!(
        "audit search over {records} entries (written in {:.1} s, {:.0}/s){}",
        c.fill.as_secs_f64(),
        records as f64 / c.fill.as_secs_f64(),
        if smoke { " [smoke run]" } else { "" }
    );
    println!("| query | entries returned | median ms | vs an unfiltered tail |");
    println!("|---|---|---|---|");
    for s in &c.searches {
        println!(
            "| {} | {} | {:.2} | {:.0}x |",
            s.query,
            s.found,
            ms(s.median),
            ms(s.median) / base
        );
    }
    Ok(())
}
