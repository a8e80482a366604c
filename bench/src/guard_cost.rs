//! What the guards cost per call, measured in process: DLP scan, redaction, the canonical
//! arguments hash, both fingerprints and loop counting, on a small call and on arguments of
//! about a given size (a log excerpt in one string, the same with an AWS key at its end, an
//! object of many small fields). Each step runs for about a quarter of a second and reports the
//! median time per call. Used by the `guards` benchmark.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
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
pub struct Step {
    /// What was timed.
    pub step: &'static str,
    /// On which input.
    pub input: &'static str,
    /// The input's size as JSON.
    pub bytes: usize,
    /// Median time per call.
    pub time: Duration,
}

/// Time every guard step with `scanner`'s detectors on arguments of about `size` bytes.
pub fn measure(scanner: &Scanner, size: usize) -> Result<Vec<Step>> {
    let text = json!({ "log": log_text(size) });
    let mut secret_text = text.clone();
    if let Some(s) = secret_text["log"].as_str() {
        secret_text["log"] = Value::String(format!("{s} key=AKIAIOSFODNN7EXAMPLE"));
    }
    let fields = many_fields(size);
    let small = json!({"message": "deploy v2.3.1 to staging"});
    let found = |args: &Value| scanner.scan(args).map_or(usize::MAX, |f| f.len());
    if found(&text) != 0 || found(&fields) != 0 {
        bail!("the clean inputs have findings: the measurement would be wrong");
    }
    if found(&secret_text) == 0 {
        bail!("the input with a secret has no finding: the measurement would be wrong");
    }
    // A hostile call: one key repeated through megabytes of arguments (issue 17: this once
    // cost seconds of CPU per call). The scan stops at the finding limit; redaction is what a
    // call that stays under it would cost at this size.
    let flood = json!({ "log": "AKIAIOSFODNN7EXAMPLE ".repeat((4 << 20) / 21) });
    if scanner.scan(&flood).is_ok() {
        bail!("the secret flood stays under the finding limit: the measurement would be wrong");
    }
    let bytes = |input: &str| match input {
        "many fields" => fields.to_string().len(),
        "one string + secret" => secret_text.to_string().len(),
        "small" => small.to_string().len(),
        "4 MiB secret flood" => flood.to_string().len(),
        _ => text.to_string().len(),
    };
    let budget = Duration::from_millis(250);
    let loops = Loops::new(LoopConfig::default());
    let mut clock = 0u64;
    let mut steps = Vec::new();
    for (input, args) in [
        ("small", &small),
        ("one string", &text),
        ("one string + secret", &secret_text),
        ("many fields", &fields),
        ("4 MiB secret flood", &flood),
    ] {
        steps.push(Step {
            bytes: bytes(input),
            step: "DLP scan",
            input,
            time: median(budget, || {
                let _ = std::hint::black_box(scanner.scan(args));
            }),
        });
        if input == "4 MiB secret flood" {
            steps.push(Step {
                bytes: bytes(input),
                step: "DLP redact (copy + replace)",
                input,
                time: median(budget, || {
                    let mut copy = args.clone();
                    std::hint::black_box(scanner.redact(&mut copy));
                }),
            });
            continue;
        }
        if input == "one string + secret" {
            steps.push(Step {
                bytes: bytes(input),
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
            bytes: bytes(input),
            step: "args hash (canonical JSON + SHA-256)",
            input,
            time: median(budget, || {
                std::hint::black_box(fingerprint::args_hash(args));
            }),
        });
        let hash = fingerprint::args_hash(args);
        steps.push(Step {
            bytes: bytes(input),
            step: "exact fingerprint",
            input,
            time: median(budget, || {
                std::hint::black_box(fingerprint::exact("db", "query", &hash));
            }),
        });
        steps.push(Step {
            bytes: bytes(input),
            step: "shape fingerprint",
            input,
            time: median(budget, || {
                std::hint::black_box(fingerprint::shape_fingerprint("db", "query", args));
            }),
        });
        let shape = fingerprint::shape_fingerprint("db", "query", args);
        steps.push(Step {
            bytes: bytes(input),
            step: "loop count",
            input,
            time: median(budget, || {
                clock += 1;
                std::hint::black_box(loops.observe(&shape, clock));
            }),
        });
        steps.push(Step {
            bytes: bytes(input),
            step: "all guards on a clean call",
            input,
            time: median(budget, || {
                clock += 1;
                let findings = scanner.scan(args);
                let hash = fingerprint::args_hash(args);
                let exact = fingerprint::exact("db", "query", &hash);
                let shape = fingerprint::shape_fingerprint("db", "query", args);
                let _ = std::hint::black_box((findings, exact, loops.observe(&shape, clock)));
            }),
        });
    }
    Ok(steps)
}
