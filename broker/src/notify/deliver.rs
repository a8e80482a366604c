//! Delivering notifications: one worker per sink, spacing deliveries to the sink's rate limit
//! and retrying failures with exponential backoff and full jitter; and the delivery itself for
//! each kind of sink.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tollgate_shared::clock::now_ms;

use super::{Health, Note, SinkSpec, Target, payload};

/// What a sink answered to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Whether it counts as delivered.
    pub ok: bool,
    /// What it said: `HTTP 202: {...}`, `exit 0`, or why nothing was sent.
    pub said: String,
}

/// The HTTP client every sink shares.
pub(super) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tollgate-broker/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// First retry after about this long; each next one waits twice as long, up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The wait before retry `n` (from 1): exponential, with full jitter over its upper half, so
/// many brokers retrying one receiver do not hit it in step.
fn backoff(n: u32, random: u64) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let half = cap / 2;
    half + Duration::from_millis(random % (half.as_millis() as u64).max(1))
}

/// A small xorshift for jitter (no need for a cryptographic generator here).
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        Jitter(now_ms() ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Deliver a sink's notifications until the dispatcher goes away.
pub(super) async fn worker(
    spec: Arc<SinkSpec>,
    mut notes: mpsc::Receiver<Note>,
    http: reqwest::Client,
    health: Arc<Health>,
) {
    let spacing = Duration::from_secs(60) / spec.per_minute.max(1);
    // Up to a minute's worth may go at once, then one per `spacing`.
    let burst = u64::from(spec.per_minute.max(1));
    let mut tokens = burst;
    let mut refilled = tokio::time::Instant::now();
    let mut jitter = Jitter::new();
    while let Some(note) = notes.recv().await {
        let now = tokio::time::Instant::now();
        let earned = (now - refilled).as_millis() / spacing.as_millis().max(1);
        if earned > 0 {
            tokens = (tokens + earned as u64).min(burst);
            refilled += spacing * earned as u32;
        }
        if tokens == 0 {
            tokio::time::sleep_until(refilled + spacing).await;
            refilled += spacing;
        } else {
            tokens -= 1;
        }
        let mut attempt = 0;
        loop {
            let answer = send_once(&spec, &note, &http).await;
            if answer.ok {
                health.delivered(&spec.name);
                tracing::debug!(sink = %spec.name, event = note.kind.as_str(), calls = note.count, said = %answer.said, "notification delivered");
                break;
            }
            health.failing(&spec.name, &answer.said);
            attempt += 1;
            if attempt > spec.retries {
                tracing::error!(
                    sink = %spec.name,
                    event = note.kind.as_str(),
                    call = %note.call.id,
                    calls = note.count,
                    attempts = attempt,
                    error = %answer.said,
                    "notification dropped after every retry failed"
                );
                health.dropped(1);
                break;
            }
            let wait = backoff(attempt, jitter.next());
            tracing::warn!(sink = %spec.name, attempt, retry_in = ?wait, error = %answer.said, "notification failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

/// Deliver one notification to a sink, once: what `notify test` prints.
pub async fn send_once(spec: &SinkSpec, note: &Note, http: &reqwest::Client) -> Answer {
    let fail = |said: String| Answer { ok: false, said };
    match &spec.target {
        Target::Webhook { url, secret } => {
            let body = payload::event(spec, note, now_ms()).to_string();
            let mut req = http
                .post(url.clone())
                .header("content-type", "application/json")
                .header("tollgate-event", note.kind.as_str());
            if let Some(secret) = secret {
                req = req.header(
                    payload::SIGNATURE_HEADER,
                    payload::signature(secret, now_ms() / 1000, body.as_bytes()),
                );
            }
            post(req.body(body), spec.timeout).await
        }
        Target::Slack { url } => {
            let body = payload::slack(spec, note).to_string();
            post(
                http.post(url.clone())
                    .header("content-type", "application/json")
                    .body(body),
                spec.timeout,
            )
            .await
        }
        Target::PagerDuty { url, routing_key } => {
            match payload::pagerduty(spec, note, routing_key) {
                None => Answer {
                    ok: true,
                    said: format!(
                        "nothing to send: {} call(s) of the pattern still pending",
                        note.pending
                    ),
                },
                Some(event) => {
                    post(
                        http.post(url.clone())
                            .header("content-type", "application/json")
                            .body(event.to_string()),
                        spec.timeout,
                    )
                    .await
                }
            }
        }
        Target::Command { argv } => match run(spec, note, argv).await {
            Ok(said) => Answer { ok: true, said },
            Err(said) => fail(said),
        },
    }
}

async fn post(req: reqwest::RequestBuilder, timeout: Duration) -> Answer {
    let sent = tokio::time::timeout(timeout, async {
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Ok::<_, reqwest::Error>((status, body))
    })
    .await;
    match sent {
        Err(_) => Answer {
            ok: false,
            said: format!("no answer within {}", humantime::format_duration(timeout)),
        },
        // Without the URL: a Slack webhook's URL is its secret, and this text reaches logs and
        // every console.
        Ok(Err(e)) => Answer {
            ok: false,
            said: tollgate_shared::report::chain(&e.without_url()),
        },
        Ok(Ok((status, body))) => {
            let body: String = body.chars().take(300).collect();
            Answer {
                ok: status.is_success(),
                said: format!("HTTP {}: {}", status.as_u16(), body.trim()),
            }
        }
    }
}

/// Run a command sink: the event JSON on stdin, `TOLLGATE_*` variables, killed at the timeout.
async fn run(spec: &SinkSpec, note: &Note, argv: &[String]) -> Result<String, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let event = payload::event(spec, note, now_ms()).to_string();
    let c = &note.call;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("TOLLGATE_EVENT", note.kind.as_str())
        .env("TOLLGATE_CALL_ID", c.id.as_ref())
        .env("TOLLGATE_SERVER", c.server.as_ref())
        .env("TOLLGATE_TOOL", c.tool.as_ref())
        .env("TOLLGATE_CLIENT", c.client.as_ref())
        .env("TOLLGATE_RULE", c.rule.name.as_ref())
        .env("TOLLGATE_CALLS", note.count.to_string())
        .env("TOLLGATE_SUMMARY", payload::headline(note))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program:?}: {e}"))?;
    let mut stdin = child.stdin.take();
    let done = tokio::time::timeout(spec.timeout, async {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its stdin is fine.
            let _ = stdin.write_all(event.as_bytes()).await;
        }
        drop(stdin);
        child.wait_with_output().await
    })
    .await;
    match done {
        Err(_) => Err(format!(
            "{program:?} did not finish within {}; killed",
            humantime::format_duration(spec.timeout)
        )),
        Ok(Err(e)) => Err(format!("{program:?}: {e}")),
        Ok(Ok(out)) => {
            let text = |b: &[u8]| -> String {
                String::from_utf8_lossy(b)
                    .trim()
                    .chars()
                    .take(300)
                    .collect()
            };
            if out.status.success() {
                Ok(format!("{}: {}", out.status, text(&out.stdout)))
            } else {
                Err(format!("{program:?} {}: {}", out.status, text(&out.stderr)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute_with_jitter_in_its_upper_half() {
        for (n, cap) in [(1, 500), (2, 1000), (3, 2000), (8, 60_000), (30, 60_000)] {
            for r in [0, 1, 7, 123_456_789, u64::MAX] {
                let d = backoff(n, r).as_millis() as u64;
                assert!(
                    d >= cap / 2 && d < cap.max(1),
                    "retry {n}: {d} ms (cap {cap})"
                );
            }
        }
        let mut j = Jitter::new();
        let a = j.next();
        assert_ne!(a, j.next());
    }
}
