//! `tollgate-broker guard-cost`: what the guards cost per call on this machine, with this
//! configuration's detectors, measured in process (no network), so an operator sees what a
//! custom detector or a large argument adds before deploying it.
//!
//! Inputs: a small call (one short string), and about `--size` bytes of arguments as a log
//! excerpt in one string (timestamps, UUIDs, paths, words), the same with an AWS key at its end,
//! and an object of many small fields. Each
//! step runs for about a quarter of a second and reports the median time per call.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use tollgate_policy::fingerprint;
use tollgate_policy::guards::dlp::Scanner;
use tollgate_policy::guards::loops::{LoopConfig, Loops};

/// A log-like text of about `size` bytes: what agents pass around in tool arguments.
fn log_text(size: usize) -> String {
    let words = [
        "GET",
        "POST",
        "orders",
        "checkout",
        "retry",
        "timeout",
        "user",
        "alice",
        "cache",
        "miss",
        "db",
        "pool",
        "ok",
        "slow",
        "query",
        "shard",
        "eu-west-1",
        "deploy",
        "v2.3.1",
    ];
    let mut out = String::with_capacity(size + 200);
    let mut n: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < size {
        n = n
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let id = uuid::Uuid::from_u64_pair(n, n.rotate_left(17));
        out.push_str(&format!(
            "2026-11-24T21:{:02}:{:02}Z INFO request_id={id} path=/api/v1/{}/{} took {}ms {} {}\n",
            n % 60,
            (n >> 8) % 60,
            words[(n >> 16) as usize % words.len()],
            (n >> 24) % 100_000,
            (n >> 40) % 900,
            words[(n >> 32) as usize % words.len()],
            words[(n >> 48) as usize % words.len()],
        ));
    }
    out.truncate(size);
    out
}

/// An object of small fields adding up to about `size` bytes.
fn many_fields(size: usize) -> Value {
    let mut map = serde_json::Map::new();
    let mut i = 0;
    let mut len = 0;
    while len < size {
        let v = format!("value {i} for the field, with an id {}", 1000 + i * 7);
        len += v.len() + 12;
        map.insert(format!("field_{i:04}"), Value::String(v));
        i += 1;
    }
    Value::Object(map)
}

/// Median time per call of `f`, run for about `budget`.
fn median(budget: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 20 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// One measured step.
struct Step {
    step: &'static str,
    input: &'static str,
    time: Duration,
}

/// Measure and print.
pub fn run(config: Option<&Path>, size: usize, json_out: bool) -> anyhow::Result<()> {
    let scanner = match config {
        Some(path) => {
            let c = crate::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            Scanner::new(c.dlp.entropy, &c.dlp.detectors)
        }
        None => Scanner::new(Some(tollgate_policy::guards::dlp::Entropy::default()), &[]),
    };
    let text = json!({ "log": log_text(size) });
    let mut secret_text = text.clone();
    if let Some(s) = secret_text["log"].as_str() {
        secret_text["log"] = Value::String(format!("{s} key=AKIAIOSFODNN7EXAMPLE"));
    }
    let fields = many_fields(size);
    let small = json!({"message": "deploy v2.3.1 to staging"});
    if !scanner.scan(&text).is_empty() || !scanner.scan(&fields).is_empty() {
        anyhow::bail!("the clean inputs have findings: the measurement would be wrong");
    }
    if scanner.scan(&secret_text).is_empty() {
        anyhow::bail!("the input with a secret has no finding: the measurement would be wrong");
    }
    let budget = Duration::from_millis(250);
    let loops = Loops::new(LoopConfig::default());
    let mut clock = 0u64;
    let mut steps = Vec::new();
    for (input, args) in [
        ("small", &small),
        ("one string", &text),
        ("one string + secret", &secret_text),
        ("many fields", &fields),
    ] {
        steps.push(Step {
            step: "DLP scan",
            input,
            time: median(budget, || {
                std::hint::black_box(scanner.scan(args));
            }),
        });
        if input == "one string + secret" {
            steps.push(Step {
                step: "DLP redact (copy + replace)",
                input,
                time: median(budget, || {
                    let mut copy = args.clone();
                    std::hint::black_box(scanner.redact(&mut copy));
                }),
            });
            continue;
        }
        steps.push(Step {
            step: "args hash (canonical JSON + SHA-256)",
            input,
            time: median(budget, || {
                std::hint::black_box(fingerprint::args_hash(args));
            }),
        });
        let hash = fingerprint::args_hash(args);
        steps.push(Step {
            step: "exact fingerprint",
            input,
            time: median(budget, || {
                std::hint::black_box(fingerprint::exact("db", "query", &hash));
            }),
        });
        steps.push(Step {
            step: "shape fingerprint",
            input,
            time: median(budget, || {
                std::hint::black_box(fingerprint::shape_fingerprint("db", "query", args));
            }),
        });
        let shape = fingerprint::shape_fingerprint("db", "query", args);
        steps.push(Step {
            step: "loop count",
            input,
            time: median(budget, || {
                clock += 1;
                std::hint::black_box(loops.observe(&shape, clock));
            }),
        });
        steps.push(Step {
            step: "all guards on a clean call",
            input,
            time: median(budget, || {
                clock += 1;
                let findings = scanner.scan(args);
                let hash = fingerprint::args_hash(args);
                let exact = fingerprint::exact("db", "query", &hash);
                let shape = fingerprint::shape_fingerprint("db", "query", args);
                std::hint::black_box((findings, exact, loops.observe(&shape, clock)));
            }),
        });
    }
    let bytes = |input: &str| match input {
        "many fields" => fields.to_string().len(),
        "one string + secret" => secret_text.to_string().len(),
        "small" => small.to_string().len(),
        _ => text.to_string().len(),
    };
    if json_out {
        let rows: Vec<Value> = steps
            .iter()
            .map(|s| {
                json!({
                    "step": s.step,
                    "input": s.input,
                    "bytes": bytes(s.input),
                    "us": s.time.as_secs_f64() * 1e6,
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        println!("| step | input | bytes | µs per call (median) |");
        println!("|---|---|---|---|");
        for s in &steps {
            println!(
                "| {} | {} | {} | {:.1} |",
                s.step,
                s.input,
                bytes(s.input),
                s.time.as_secs_f64() * 1e6
            );
        }
    }
    Ok(())
}
