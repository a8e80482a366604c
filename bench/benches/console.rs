//! The console with a huge queue: frame render time and memory with 100 000 pending calls,
//! against the same measures with 100 calls in the same run; the cost of one call arriving
//! (grouped by identical call, and one row per call); and the frame time while a runaway loop
//! adds 5 000 calls a second (each 16 ms frame applies the 80 calls that came since the last
//! one, as the TUI's event loop does, then draws).
//!
//! The state is built through the console's own `update` (a `Connected` event carrying the
//! queue, as after connecting to a broker) and drawn by its own `render` into ratatui's
//! `TestBackend`, so this measures the console's work per frame without a terminal's I/O.
//!
//! Run: `cargo bench -p tollgate-bench --bench console`; `TOLLGATE_BENCH_SMOKE=1` for a small run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde_json::json;
use tollgate_bench::{percentile, rss_mib, us};
use tollgate_console::app::{Action, App, Grouping, update, update_batch};
use tollgate_console::client::{Event, Me};
use tollgate_console::keys::KeyMap;
use tollgate_console::ui;
use tollgate_shared::console::{Role, ServerMsg};
use tollgate_shared::{CallRecord, Hold, HoldMode, Outcome, RuleRef, Timings};

const NOW: u64 = 1_764_000_000_000;

/// Pending call `n` as the console gets it: written by the broker and read back from JSON,
/// so it holds what a real console holds (its own copy of every string the reader makes).
fn call(n: usize) -> Result<CallRecord> {
    // A realistic mix: most calls are a few runaway loops, the rest all different.
    let (tool, args, fp) = if n % 10 < 7 {
        (
            "delete_row",
            json!({"table": "sessions", "id": n % 5}),
            format!("{:016x}", 0x5eed_0000 + n % 5),
        )
    } else {
        (
            "execute_sql",
            json!({"database": "prod", "query": format!("UPDATE accounts SET tier = 'gold' WHERE id = {n}"), "dry_run": false}),
            format!("{:016x}", 0xf00d_0000_0000 + n),
        )
    };
    let record = CallRecord {
        id: format!("01a20000-0000-7000-8000-{n:012}").into(),
        outcome: Outcome::Pending,
        rule: RuleRef {
            index: 2,
            name: "writes-need-a-human".into(),
        },
        reason: None,
        client: format!("agent-{}", n % 7).into(),
        server: "db".into(),
        tool: tool.into(),
        request_id: json!(n),
        session: Some("5f0c2d1e".into()),
        protocol_version: Some("2025-11-25".into()),
        arguments: args.into(),
        timings: Timings {
            received_ms: NOW - 600_000 + n as u64,
            decided_ms: NOW,
            completed_ms: None,
        },
        error: None,
        args_hash: "3b4c".repeat(16).into(),
        fingerprint: fp.into(),
        policy_version: "a1b2c3d4e5f6".into(),
        hold: Some(Hold {
            mode: HoldMode::Stream,
            expires_ms: NOW + 600_000,
            quorum: 1,
            approvers: vec![],
            progress_token: None,
            meta: None,
            retried_ms: None,
            secrets_withheld: false,
            require_signature: false,
        }),
        decisions: vec![],
        findings: Vec::new(),
        shape: Default::default(),
        signals: Default::default(),
        trace: None,
    };
    Ok(serde_json::from_slice(&serde_json::to_vec(&record)?)?)
}

struct Measure {
    calls: usize,
    grouped: Vec<Duration>,
    flat: Vec<Duration>,
    arrival_grouped: Vec<Duration>,
    arrival: Vec<Duration>,
    loop_frames: Vec<Duration>,
    rss: f64,
    process_rss: f64,
}

fn measure(calls: usize, frames: usize) -> Result<Measure> {
    let before = rss_mib(std::process::id()).unwrap_or(0.0);
    let queue = (0..calls)
        .map(|n| call(n).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    let mut app = App::new("ws://bench".into(), KeyMap::default(), false, NOW);
    let me = Me {
        identity: "alice".into(),
        role: Role::Approver,
        servers: None,
    };
    update(&mut app, Action::Broker(Event::Connected(me, queue)));
    let process_rss = rss_mib(std::process::id()).unwrap_or(0.0);
    let rss = process_rss - before;
    let mut term = Terminal::new(TestBackend::new(160, 48))?;
    let mut frame = |app: &App| -> Result<Duration> {
        let t = Instant::now();
        term.draw(|f| ui::render(app, f))?;
        Ok(t.elapsed())
    };
    let mut grouped = Vec::with_capacity(frames);
    for _ in 0..frames {
        grouped.push(frame(&app)?);
    }
    let pending = |c: CallRecord| {
        Action::Broker(Event::Message(Box::new(ServerMsg::CallPending {
            call: Arc::new(c),
        })))
    };
    let mut next = calls;
    // `frames` calls arriving one by one, each timed.
    let arrivals = |app: &mut App, next: &mut usize| -> Result<Vec<Duration>> {
        (0..frames)
            .map(|_| {
                let c = call(*next)?;
                *next += 1;
                let t = Instant::now();
                update(app, pending(c));
                Ok(t.elapsed())
            })
            .collect()
    };
    let arrival_grouped = arrivals(&mut app, &mut next)?;
    // A runaway loop at 5 000 calls a second: 80 new calls per 16 ms frame, applied in one
    // batch and drawn. Its calls are all different (a loop paging through ids), so each is a
    // new row.
    let mut loop_frames = Vec::with_capacity(frames);
    for _ in 0..frames {
        let batch = (0..80)
            .map(|_| {
                let mut c = call(next)?;
                c.fingerprint = format!("{:016x}", 0xabc0_0000_0000_u64 + next as u64).into();
                next += 1;
                Ok(pending(c))
            })
            .collect::<Result<Vec<_>>>()?;
        let t = Instant::now();
        update_batch(&mut app, batch);
        let applied = t.elapsed();
        loop_frames.push(applied + frame(&app)?);
    }
    // g cycles the grouping levels; on to one row per call.
    while app.grouping != Grouping::Flat {
        update(
            &mut app,
            Action::Key(KeyEvent::new(KeyCode::Char('g'), KeyModifiers::NONE)),
        );
    }
    let mut flat = Vec::with_capacity(frames);
    for _ in 0..frames {
        flat.push(frame(&app)?);
    }
    let arrival = arrivals(&mut app, &mut next)?;
    Ok(Measure {
        calls,
        grouped,
        flat,
        arrival_grouped,
        arrival,
        loop_frames,
        rss,
        process_rss,
    })
}

fn main() -> Result<()> {
    let smoke = std::env::var_os("TOLLGATE_BENCH_SMOKE").is_some();
    let (big, frames) = if smoke { (2_000, 5) } else { (100_000, 50) };
    // The big run first, so its process RSS is not inflated by the small one.
    let large = measure(big, frames)?;
    let small = measure(100, frames)?;
    println!();
    println!(
        "console: frame render (160x48, TestBackend) and memory, {frames} frames each{}",
        if smoke { " [smoke run]" } else { "" }
    );
    println!(
        "| pending calls | grouped frame p50 / p99 | flat frame p50 / p99 | call arrival p50 / p99 (grouped) | call arrival p50 / p99 (flat) | frame during a 5 000/s loop p50 / p99 | state memory | process RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for mut m in [small, large] {
        let g = (
            percentile(&mut m.grouped, 50.0),
            percentile(&mut m.grouped, 99.0),
        );
        let f = (percentile(&mut m.flat, 50.0), percentile(&mut m.flat, 99.0));
        println!(
            "| {} | {} / {} µs | {} / {} µs | {} / {} µs | {} / {} µs | {} / {} µs | {:.1} MiB | {:.1} MiB |",
            m.calls,
            us(g.0),
            us(g.1),
            us(f.0),
            us(f.1),
            us(percentile(&mut m.arrival_grouped, 50.0)),
            us(percentile(&mut m.arrival_grouped, 99.0)),
            us(percentile(&mut m.arrival, 50.0)),
            us(percentile(&mut m.arrival, 99.0)),
            us(percentile(&mut m.loop_frames, 50.0)),
            us(percentile(&mut m.loop_frames, 99.0)),
            m.rss,
            m.process_rss
        );
    }
    Ok(())
}
