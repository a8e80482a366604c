#![no_main]
//! DLP scan and redaction under a time budget. The first two bytes of the input say how many
//! times the rest is repeated (up to 2 MiB in all), so a small input can make the large,
//! repetitive arguments that once took seconds (issue 17); the work must stay linear in their
//! size. The repeated text is scanned as a string, and the input as JSON when it is JSON.
//! Redaction must leave nothing a second pass would redact. The budget counts this thread's CPU
//! time, so a busy machine does not fail it.

use std::sync::LazyLock;
use std::time::Duration;

use serde_json::Value;
use tollgate_policy::guards::dlp::{Entropy, Scanner};

static SCANNER: LazyLock<Scanner> = LazyLock::new(|| {
    let custom = regex::Regex::new(r"tok_[a-z0-9]{8,}").expect("regex");
    Scanner::new(Some(Entropy::default()), &[("custom".into(), custom)])
});

/// CPU time this thread has used: the budget is about work, not about how busy the machine is
/// (a wall clock flagged a loaded machine, not the code).
#[allow(unsafe_code)]
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer to a local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The most a scan and a redaction of `bytes` may take, far above linear (the fuzzer's
/// instrumented build is several times slower than a release one).
fn budget(bytes: usize) -> Duration {
    Duration::from_millis(200) + Duration::from_nanos(2_000 * bytes as u64)
}

fn check(value: Value, bytes: usize) {
    let started = thread_cpu();
    let found = SCANNER.scan(&value);
    let mut redacted = value;
    let n = SCANNER.redact(&mut redacted);
    let took = thread_cpu().saturating_sub(started);
    assert!(
        took < budget(bytes),
        "DLP took {took:?} on {bytes} bytes (budget {:?})",
        budget(bytes)
    );
    if found.as_ref().is_ok_and(Vec::is_empty) {
        return;
    }
    let again = SCANNER.redact(&mut redacted.clone());
    assert_eq!(
        again, 0,
        "redaction left something to redact (first pass: {n})"
    );
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&[hi, lo], unit)) = data.split_first_chunk::<2>() else {
        return;
    };
    if let Ok(v) = serde_json::from_slice::<Value>(unit) {
        check(v, unit.len());
    }
    if unit.is_empty() {
        return;
    }
    let times = (usize::from(hi) << 8 | usize::from(lo)).min((2 << 20) / unit.len());
    let text = String::from_utf8_lossy(unit).repeat(times.max(1));
    let bytes = text.len();
    check(Value::String(text), bytes);
});
