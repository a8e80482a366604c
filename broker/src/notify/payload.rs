//! What each sink is sent: the webhook's event JSON (also the command's stdin), a Slack
//! message, a PagerDuty event, and the `Tollgate-Signature` header.
//!
//! Arguments are only ever shown as a summary: compact JSON, cut to [`SUMMARY_CHARS`], after the
//! DLP guard's masking (the stored arguments are already redacted when DLP found secrets; the
//! summary is scrubbed again so a detector added since, or a secret DLP let through, does not
//! leave the broker in a notification).

use serde_json::{Value, json};
use tollgate_shared::CallRecord;
use tollgate_shared::clock::rfc3339_seconds;

use super::{Kind, Note, SUMMARY_CHARS, SinkSpec};

/// The header carrying a webhook's signature: `t=<unix seconds>,v1=<hex HMAC-SHA256>` over
/// `"<t>.<body>"`.
pub const SIGNATURE_HEADER: &str = "tollgate-signature";

/// A call's arguments as a short, masked, one-line summary.
pub fn summary(call: &CallRecord, scrub: Option<&tollgate_policy::guards::Scrub>) -> String {
    let text = call.arguments.get().to_string();
    let text = match scrub {
        Some(s) => s.text(text),
        None => text,
    };
    cut(&text, SUMMARY_CHARS)
}

fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// One line saying what happened, e.g. `500 calls of everything/echo held for approval`.
pub fn headline(n: &Note) -> String {
    let c = &n.call;
    let what = if n.count == 1 {
        format!("{}/{} from {}", c.server, c.tool, c.client)
    } else {
        format!(
            "{} calls of {}/{} from {}",
            n.count, c.server, c.tool, c.client
        )
    };
    let verb = match n.kind {
        Kind::Held => "held for approval".to_string(),
        Kind::Escalated => format!(
            "still undecided after {}: escalated",
            n.escalated_after
                .map(|d| humantime::format_duration(d).to_string())
                .unwrap_or_default()
        ),
        Kind::Expiring => format!(
            "expiring at {} unless decided",
            c.hold
                .as_ref()
                .map(|h| rfc3339_seconds(h.expires_ms))
                .unwrap_or_default()
        ),
        Kind::Decided => match c.decisions.last() {
            Some(d) if c.outcome != tollgate_shared::Outcome::Cancelled => {
                format!("{} by {}", c.outcome.as_str(), d.by)
            }
            _ => c.outcome.as_str().to_string(),
        },
        Kind::Expired => "expired undecided (refused)".into(),
    };
    format!("{what} {verb} (rule {})", c.rule.name)
}

/// The sink's link to the call, from its `link_template`.
pub fn link(spec: &SinkSpec, call: &CallRecord) -> Option<String> {
    spec.link_template.as_ref().map(|t| {
        t.replace("{id}", &call.id)
            .replace("{server}", &call.server)
            .replace("{tool}", &call.tool)
            .replace("{fingerprint}", &call.fingerprint.to_string())
    })
}

/// The event as JSON: the webhook's body and the command's stdin.
pub fn event(spec: &SinkSpec, n: &Note, at_ms: u64) -> Value {
    let c = &n.call;
    let expires = c
        .hold
        .as_ref()
        .map(|h| h.expires_ms)
        .filter(|e| *e != u64::MAX)
        .map(rfc3339_seconds);
    let decisions: Vec<Value> = c
        .decisions
        .iter()
        .map(|d| json!({"by": d.by, "verdict": d.verdict, "reason": d.reason}))
        .collect();
    json!({
        "event": n.kind.as_str(),
        "at": tollgate_shared::clock::rfc3339_millis(at_ms),
        "summary": headline(n),
        "call": {
            "id": c.id,
            "server": c.server,
            "tool": c.tool,
            "client": c.client,
            "rule": c.rule.name,
            "reason": c.reason,
            "outcome": c.outcome,
            "received_at": rfc3339_seconds(c.timings.received_ms),
            "expires_at": expires,
            "arguments": n.summary,
            "secrets_found": c.findings.len(),
            "fingerprint": c.fingerprint.to_string(),
            "decisions": decisions,
        },
        "pattern": {
            "shape": c.shape.to_string(),
            "calls": n.count,
            "ids": n.ids,
            "pending": n.pending,
        },
        "escalated_after_s": n.escalated_after.map(|d| d.as_secs()),
        "link": link(spec, c),
        "commands": {
            "show": format!("tollgate show {}", c.id),
            "approve": format!("tollgate approve {}", c.id),
            "reject": format!("tollgate reject {} --reason \"...\"", c.id),
        },
    })
}

/// A Slack incoming-webhook message (Block Kit, with a text fallback).
pub fn slack(spec: &SinkSpec, n: &Note) -> Value {
    let c = &n.call;
    let expires = c
        .hold
        .as_ref()
        .map(|h| h.expires_ms)
        .map(|e| {
            if e == u64::MAX {
                "never".to_string()
            } else {
                rfc3339_seconds(e)
            }
        })
        .unwrap_or_else(|| "-".into());
    let field = |k: &str, v: &str| json!({"type": "mrkdwn", "text": format!("*{k}*\n{v}")});
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": cut(&format!("Tollgate: {}", headline(n)), 150)}}),
        json!({"type": "section", "fields": [
            field("Tool", &format!("`{}/{}`", c.server, c.tool)),
            field("Client", &c.client),
            field("Rule", &c.rule.name),
            field("Expires", &expires),
        ]}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Arguments*\n```{}```", n.summary.replace("```", "'''"))}}),
    ];
    if n.count > 1 {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("{} calls of this pattern (shape `{}`), {} still pending", n.count, c.shape, n.pending)}]}));
    }
    if matches!(n.kind, Kind::Held | Kind::Escalated | Kind::Expiring) {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("`tollgate show {}`\n`tollgate approve {}`", c.id, c.id)}}));
    }
    if let Some(url) = link(spec, c) {
        blocks.push(json!({"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Open in Tollgate"}, "url": url}]}));
    }
    json!({"text": headline(n), "blocks": blocks})
}

/// The dedup key of a call's pattern: a page per pattern, resolved when none of it waits.
pub fn dedup_key(c: &CallRecord) -> String {
    format!("tollgate/{}/{}/{}", c.server, c.tool, c.shape)
}

/// A PagerDuty Events API v2 event: `trigger` for a held, escalated or expiring call, `resolve`
/// once no call of its pattern is pending; `None` when there is nothing to send (a decision
/// while others of the pattern still wait).
pub fn pagerduty(spec: &SinkSpec, n: &Note, routing_key: &str) -> Option<Value> {
    let c = &n.call;
    match n.kind {
        Kind::Decided | Kind::Expired => (n.pending == 0).then(|| {
            json!({
                "routing_key": routing_key,
                "event_action": "resolve",
                "dedup_key": dedup_key(c),
            })
        }),
        Kind::Held | Kind::Escalated | Kind::Expiring => {
            let severity = match n.kind {
                Kind::Escalated => "critical",
                Kind::Expiring => "error",
                _ => "warning",
            };
            let mut event = json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": dedup_key(c),
                "payload": {
                    "summary": cut(&format!("Tollgate: {}", headline(n)), 1000),
                    "source": format!("tollgate-broker@{}", host()),
                    "severity": severity,
                    "component": c.server,
                    "group": c.tool,
                    "class": c.rule.name,
                    "custom_details": {
                        "call_id": c.id,
                        "client": c.client,
                        "arguments": n.summary,
                        "calls": n.count,
                        "pending": n.pending,
                        "approve": format!("tollgate approve {}", c.id),
                    },
                },
            });
            if let Some(url) = link(spec, c) {
                event["links"] = json!([{"href": url, "text": "Open in Tollgate"}]);
            }
            Some(event)
        }
    }
}

/// This machine's name, for PagerDuty's `source`.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The signature header's value for `body`, signed at `t` (unix seconds).
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={t},v1={}", tollgate_shared::hex(ctx.sign().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_time_dot_body() {
        // RFC 4231 test case 2's key and HMAC, with "t." folded into the message.
        let t = 1_700_000_000;
        let body = b"what do ya want for nothing?";
        let sig = signature("Jefe", t, body);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let want = ring::hmac::sign(&key, format!("{t}.what do ya want for nothing?").as_bytes());
        assert_eq!(
            sig,
            format!("t={t},v1={}", tollgate_shared::hex(want.as_ref()))
        );
        assert_eq!(sig.len(), "t=1700000000,v1=".len() + 64);
    }

    #[test]
    fn summaries_are_cut_on_a_character() {
        assert_eq!(cut("héllo", 2), "hé…");
        assert_eq!(cut("abc", 3), "abc");
    }
}
