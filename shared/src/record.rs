//! The call record: one intercepted `tools/call` and what became of it, as the broker stores
//! it and consoles read it.

use serde::{Deserialize, Serialize};

use crate::names::{interned, interned_opt};
use crate::{ArgsHash, Digest, Fingerprint, JsonText, Name};

/// How one intercepted `tools/call` ended, as far as the gateway is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Policy allowed the call and it was forwarded upstream.
    Allowed,
    /// Policy (or a guard) refused the call; the client got `isError: true` naming the rule.
    Blocked,
    /// Policy asked for a human approval; the call is held until someone decides.
    Pending,
    /// An approver let the call through.
    Approved,
    /// An approver refused the call.
    Rejected,
    /// Nobody decided before the call's expiry.
    Expired,
    /// The client withdrew the call while it was held.
    Cancelled,
    /// The broker restarted and the client could no longer receive the answer.
    Abandoned,
    /// A rate limit or budget refused the call.
    RateLimited,
    /// A held call waited past its rule's `escalate_after` and its `escalate_to` sinks were
    /// told; it is still pending. Only ever an audit entry, never a call's outcome.
    Escalated,
}

impl Outcome {
    /// The snake_case name used on the wire, in the store and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Blocked => "blocked",
            Outcome::Pending => "pending",
            Outcome::Approved => "approved",
            Outcome::Rejected => "rejected",
            Outcome::Expired => "expired",
            Outcome::Cancelled => "cancelled",
            Outcome::Abandoned => "abandoned",
            Outcome::RateLimited => "rate_limited",
            Outcome::Escalated => "escalated",
        }
    }
}

/// A name that is not an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOutcome(pub String);

impl std::fmt::Display for UnknownOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown status {:?} (statuses: allowed, blocked, pending, approved, rejected, expired, cancelled, abandoned, rate_limited)",
            self.0
        )
    }
}

impl std::error::Error for UnknownOutcome {}

impl std::str::FromStr for Outcome {
    type Err = UnknownOutcome;
    fn from_str(s: &str) -> Result<Outcome, UnknownOutcome> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| UnknownOutcome(s.to_string()))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule that decided a call: its 1-based position in the config and its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// 1-based index of the `[[rule]]` table in the config; 0 for the policy default.
    pub index: usize,
    /// The rule's `name`, or `rule N` when it has none, or `default`.
    #[serde(deserialize_with = "interned")]
    pub name: Name,
}

/// Timestamps of one call, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// When the broker finished reading the request.
    pub received_ms: u64,
    /// When the verdict was reached (policy evaluated).
    pub decided_ms: u64,
    /// When the upstream's answer had been fully relayed, if the call was forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ms: Option<u64>,
}

/// One intercepted `tools/call` and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Time-ordered unique id (UUID v7, hyphenated).
    pub id: Name,
    /// The outcome so far.
    pub outcome: Outcome,
    /// The rule that decided, if any rule matched; `None` means the policy default.
    pub rule: RuleRef,
    /// Why: the rule's reason, or the error text the client saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The authenticated client identity that made the call.
    #[serde(deserialize_with = "interned")]
    pub client: Name,
    /// The configured upstream server name.
    #[serde(deserialize_with = "interned")]
    pub server: Name,
    /// The tool name as sent by the client.
    #[serde(deserialize_with = "interned")]
    pub tool: Name,
    /// The JSON-RPC request id, exactly as the client sent it.
    pub request_id: serde_json::Value,
    /// The MCP session the call belongs to, when the protocol revision has sessions. The store
    /// keeps it (a held call is answered on its session after a restart); consoles are never
    /// sent it (see [`without_sessions`]).
    #[serde(default, skip_serializing_if = "session_hidden")]
    pub session: Option<Name>,
    /// The MCP protocol revision the client declared, when known.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "interned_opt"
    )]
    pub protocol_version: Option<Name>,
    /// The tool arguments as received (redacted when DLP found secrets).
    pub arguments: JsonText,
    /// When things happened.
    pub timings: Timings,
    /// Set when forwarding failed (dead upstream, timeout); the client got a JSON-RPC error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// SHA-256 (hex) of the canonical JSON of the arguments: keys sorted, no whitespace.
    #[serde(default, skip_serializing_if = "Digest::is_empty")]
    pub args_hash: ArgsHash,
    /// Exact fingerprint: SHA-256 (hex, 16 chars) of server, tool and canonical arguments. Calls
    /// with the same fingerprint are the same call repeated, and can be decided together.
    #[serde(default, skip_serializing_if = "Digest::is_empty")]
    pub fingerprint: Fingerprint,
    /// Hash of the policy the verdict came from, so an audit reader knows which rules applied.
    #[serde(
        default,
        skip_serializing_if = "is_empty_name",
        deserialize_with = "interned"
    )]
    pub policy_version: Name,
    /// For a held call: how it waits and who may decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// Decisions made on a held call so far, in order (approvals towards a quorum, or the one
    /// rejection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Decision>,
    /// Secrets the DLP guard found (masked); when present, `arguments` are stored redacted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Shape fingerprint: server, tool and the arguments' structure with volatile values
    /// (numbers, digit runs, ids, timestamps) masked, so a loop that varies a counter is one
    /// pattern. 16 hex characters.
    #[serde(default, skip_serializing_if = "Digest::is_empty")]
    pub shape: Fingerprint,
    /// What the guards noticed around the call (repeats of its shape, rate limits its client
    /// hit), shown to approvers as flags.
    #[serde(default, skip_serializing_if = "Signals::is_empty")]
    pub signals: Signals,
    /// The W3C `traceparent` the client sent (HTTP header, or `params._meta` on 2026-07-28),
    /// continued to the upstream, so one trace spans agent, broker, decision and upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl CallRecord {
    /// Whether the call is still open: held, or approved to be forwarded by a waiting client
    /// or task but not yet finished. The store keeps open calls indexed, so that after a crash
    /// a held call is held again and an approved call that may or may not have run is reported
    /// (`outcome unknown`), never silently dropped and never forwarded twice. A retry-mode
    /// approval is not open: its client repeats the call, and the grant is restored from the
    /// audit.
    pub fn is_open(&self) -> bool {
        match self.outcome {
            Outcome::Pending => true,
            Outcome::Approved => {
                self.timings.completed_ms.is_none()
                    && self
                        .hold
                        .as_ref()
                        .is_some_and(|h| h.mode != HoldMode::Retry)
            }
            _ => false,
        }
    }
}

thread_local! {
    static HIDE_SESSIONS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn session_hidden(session: &Option<Name>) -> bool {
    session.is_none() || HIDE_SESSIONS.with(std::cell::Cell::get)
}

/// Run `f` (a serialisation) with every [`CallRecord`]'s `session` left out: a session id lets
/// whoever holds it read and act on the session's streams, and no console needs one, so the
/// console API serialises its messages inside this.
pub fn without_sessions<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            HIDE_SESSIONS.with(|h| h.set(self.0));
        }
    }
    let _reset = Reset(HIDE_SESSIONS.with(|h| h.replace(true)));
    f()
}

/// Patterns the guards noticed around a call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    /// Calls of this shape seen within the loop window, this one included (set from 2).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeats: u32,
    /// The loop window in ms.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub window_ms: u64,
    /// `repeats` reached the loop threshold: probably a runaway loop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub looping: bool,
    /// A rate limit or budget refused calls from this client recently: which, and how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<String>,
}

fn is_empty_name(n: &Name) -> bool {
    n.is_empty()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl Signals {
    /// Nothing noticed.
    pub fn is_empty(&self) -> bool {
        self == &Signals::default()
    }
}

/// A secret found in a call's arguments by the DLP guard. The secret itself is never kept:
/// only where it was and a masked excerpt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Which detector matched (`aws_access_key`, `jwt`, `secret_field`, a custom name, ...).
    pub detector: String,
    /// JSON pointer into the arguments (`""` for the whole object).
    pub path: String,
    /// First and last characters and the length, e.g. `AKIA…MPLE (20 chars)`.
    pub masked: String,
}

/// How a held call waits for its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldMode {
    /// The request stays open (SSE keep-alives, progress when the client asked for it).
    Stream,
    /// The client made a task-augmented call and polls the task.
    Task,
    /// The client was told to retry; the identical call is let through once after approval.
    Retry,
}

/// The waiting terms of a held call. The two JSON values are kept as text: most calls have
/// neither, and every pending call keeps its record in the broker's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// How the client waits.
    pub mode: HoldMode,
    /// When the call expires unless decided (ms since the epoch).
    pub expires_ms: u64,
    /// Distinct approvals needed.
    pub quorum: u32,
    /// Who may approve: identity names or `role:<role>`; empty means any approver in scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// The client's `progressToken`, so keep-alive progress can be sent (also after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_token: Option<JsonText>,
    /// The request's `params._meta` as the client sent it (revision, client capabilities,
    /// progress token), so a call recovered after a restart is forwarded as it was made:
    /// stateless revisions (2026-07-28) require their envelope on every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<JsonText>,
    /// Retry mode: when the approved call was repeated and let through (it runs only once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_ms: Option<u64>,
    /// The stored arguments are redacted but the call forwards the originals (DLP `approve`):
    /// only the waiting request holds them, so the call cannot be forwarded after a restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secrets_withheld: bool,
    /// Decisions on it must be signed with the approver's SSH key (`require_signature` on
    /// its rule).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_signature: bool,
}

/// Approve or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Let the call run.
    Approve,
    /// Refuse the call.
    Reject,
}

/// One person's decision on a held call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The deciding identity.
    pub by: String,
    /// Approve or reject.
    pub verdict: Verdict,
    /// The reason given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The approver's SSH signature of the decision, when they signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<crate::signing::Signed>,
}

/// What a temporary rule does to new calls that match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Refuse them at once (audited `blocked`, naming the rule and who installed it).
    Block,
    /// Let a bounded number of identical calls through without asking again.
    Allow,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_record_round_trips_through_json() {
        let record = CallRecord {
            id: "0190c1a2-0000-7000-8000-000000000000".into(),
            outcome: Outcome::Blocked,
            rule: RuleRef {
                index: 2,
                name: "no-echo".into(),
            },
            reason: Some("echo is off limits".into()),
            client: "alice".into(),
            server: "everything".into(),
            tool: "echo".into(),
            request_id: serde_json::json!(7),
            session: None,
            protocol_version: Some("2025-11-25".into()),
            arguments: serde_json::json!({"message": "hi"}).into(),
            timings: Timings {
                received_ms: 1,
                decided_ms: 2,
                completed_ms: None,
            },
            error: None,
            args_hash: "ab".into(),
            fingerprint: "cd".into(),
            policy_version: "ef".into(),
            hold: Some(Hold {
                mode: HoldMode::Stream,
                expires_ms: 9,
                quorum: 2,
                approvers: vec!["role:dba".into()],
                progress_token: Some(serde_json::json!("p").into()),
                meta: None,
                retried_ms: None,
                secrets_withheld: false,
                require_signature: false,
            }),
            decisions: vec![Decision {
                by: "bob".into(),
                verdict: Verdict::Approve,
                reason: None,
                at_ms: 3,
                signed: None,
            }],
            findings: vec![Finding {
                detector: "jwt".into(),
                path: "/token".into(),
                masked: "eyJh…R8U (91 chars)".into(),
            }],
            shape: "0123456789abcdef".into(),
            signals: Signals {
                repeats: 40,
                window_ms: 60_000,
                looping: true,
                throttled: Some("rate limit \"sums\" refused 3 calls".into()),
            },
            trace: None,
        };
        let text = serde_json::to_string(&record).expect("serialize");
        assert!(text.contains("\"outcome\":\"blocked\""), "{text}");
        assert!(
            text.contains("\"arguments\":{\"message\":\"hi\"}"),
            "{text}"
        );
        let back: CallRecord = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, record);
        let again: CallRecord = serde_json::from_str(&text).expect("deserialize");
        assert!(std::sync::Arc::ptr_eq(&back.server, &again.server));
        assert!(std::sync::Arc::ptr_eq(&back.rule.name, &again.rule.name));
        // Inside an internally tagged console message, which serde reads through a buffer.
        let msg = crate::console::ServerMsg::CallPending {
            call: std::sync::Arc::new(record),
        };
        let text = serde_json::to_string(&msg).expect("serialize");
        let back: crate::console::ServerMsg = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, msg);
    }

    #[test]
    fn sessions_are_kept_in_the_store_and_left_out_for_consoles() {
        let mut record: CallRecord = serde_json::from_value(serde_json::json!({
            "id": "x", "outcome": "pending", "rule": {"index": 1, "name": "r"}, "client": "c",
            "server": "db", "tool": "t", "request_id": 1, "arguments": {},
            "timings": {"received_ms": 0, "decided_ms": 0}
        }))
        .expect("record");
        record.session = Some("s-1".into());
        let stored = serde_json::to_value(&record).expect("json");
        assert_eq!(stored["session"], "s-1");
        let shown = without_sessions(|| serde_json::to_value(&record)).expect("json");
        assert!(shown.get("session").is_none(), "{shown}");
        assert_eq!(
            serde_json::to_value(&record).expect("json")["session"],
            "s-1",
            "only inside without_sessions"
        );
    }

    #[test]
    fn outcome_names_match_serde_names() {
        for o in [
            Outcome::Allowed,
            Outcome::Blocked,
            Outcome::Pending,
            Outcome::Approved,
            Outcome::Rejected,
            Outcome::Expired,
            Outcome::Cancelled,
            Outcome::Abandoned,
            Outcome::RateLimited,
            Outcome::Escalated,
        ] {
            let json = serde_json::to_value(o).expect("serialize");
            assert_eq!(json, serde_json::Value::String(o.as_str().to_string()));
        }
    }
}
