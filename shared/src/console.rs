//! The console protocol: JSON text frames on the WebSocket at `/v1/console`.
//!
//! Every frame is an object tagged by `type`. The broker speaks first with [`ServerMsg::Hello`]
//! (protocol version, who you are, what you may do) and a [`ServerMsg::Snapshot`] of the queue,
//! then streams events as calls are held and decided. The console sends [`ClientMsg`] requests,
//! each with an optional `req` number that the broker echoes in its answer so a client can match
//! answers to requests. Unknown fields are ignored; an unknown `type` gets an
//! [`ServerMsg::Error`] and the connection stays open. `docs/protocol.md` has examples.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditEntry, AuditFilter};
use crate::{CallRecord, Verdict};

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees the queue and the audit trail.
    Viewer,
    /// Also decides held calls (possibly only for some servers).
    Approver,
    /// Also manages temporary rules; decides on every server.
    Admin,
}

impl Role {
    /// The name used in config, on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

/// What keeps an identity from taking a decision on a pending call: the one rule the broker
/// enforces and consoles check before offering a bulk approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Barrier {
    /// Viewers see; they do not decide.
    Viewer,
    /// An approver scoped to other servers.
    OutOfScope,
    /// The call's rule names who may decide it, and this identity is not among them.
    NotNamed,
    /// Nobody approves their own call (they may reject it).
    OwnCall,
    /// A quorum counts distinct approvers: this one already approved.
    ApprovedTwice,
}

impl Barrier {
    /// A few words for a count ("2 your own calls").
    pub fn label(self) -> &'static str {
        match self {
            Barrier::Viewer => "you are a viewer",
            Barrier::OutOfScope => "server outside your scope",
            Barrier::NotNamed => "rule names other approvers",
            Barrier::OwnCall => "your own call",
            Barrier::ApprovedTwice => "you already approved",
        }
    }
}

/// Whether `name` with `role` (scoped to `servers`, for an approver) may take `verdict` on
/// `rec`; the first barrier found otherwise.
pub fn barrier(
    rec: &CallRecord,
    name: &str,
    role: Role,
    servers: Option<&[String]>,
    verdict: Verdict,
) -> Option<Barrier> {
    if role == Role::Viewer {
        return Some(Barrier::Viewer);
    }
    if role == Role::Approver
        && let Some(servers) = servers
        && !servers.iter().any(|s| **s == *rec.server)
    {
        return Some(Barrier::OutOfScope);
    }
    let named = rec
        .hold
        .as_ref()
        .map_or(&[][..], |h| h.approvers.as_slice());
    if !named.is_empty() {
        let as_role = format!("role:{}", role.as_str());
        if !named.iter().any(|a| a == name || *a == as_role) {
            return Some(Barrier::NotNamed);
        }
    }
    if verdict == Verdict::Approve {
        if *rec.client == *name {
            return Some(Barrier::OwnCall);
        }
        if rec
            .decisions
            .iter()
            .any(|d| d.verdict == Verdict::Approve && d.by == name)
        {
            return Some(Barrier::ApprovedTwice);
        }
    }
    None
}

/// A name that is not a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRole(pub String);

impl std::fmt::Display for UnknownRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown role \"{}\" (roles: viewer, approver, admin)",
            self.0
        )
    }
}

impl std::error::Error for UnknownRole {}

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "approver" => Ok(Role::Approver),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

/// About how much JSON one snapshot message carries; larger queues are sent in parts.
pub const SNAPSHOT_PART_BYTES: usize = 1 << 20;

/// Which held calls a decision covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Target {
    /// These call ids.
    Ids {
        /// Call ids.
        ids: Vec<String>,
    },
    /// Every pending call with this exact fingerprint (a repeated call, decided once).
    Fingerprint {
        /// The fingerprint from the call records.
        fingerprint: String,
    },
}

/// What a temporary rule does to new calls that match it (defined with the call record, so the
/// signed statement of a decision can name it too).
pub use crate::RuleKind;

/// A temporary rule installed by a decision ("reject pattern for 15 min", "approve the next
/// 5"): listed, expiring, revocable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TempRule {
    /// Rule id (`t-` and 8 hex digits).
    pub id: String,
    /// Block or allow.
    pub kind: RuleKind,
    /// The exact or shape fingerprint it matches (allow rules: exact only).
    pub fingerprint: String,
    /// The server of the calls it was made from.
    pub server: String,
    /// The tool of the calls it was made from.
    pub tool: String,
    /// Who installed it.
    pub by: String,
    /// When (ms since the epoch).
    pub created_ms: u64,
    /// Until when (ms since the epoch).
    pub until_ms: u64,
    /// The reason given with the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Allow rules: how many more calls it lets through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u32>,
    /// Calls it has answered so far.
    #[serde(default)]
    pub hits: u64,
}

/// "Approve the next `count` identical calls within `for_ms`", sent with an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowNext {
    /// How many future calls (1 to 1000).
    pub count: u32,
    /// For how long (ms, at most a day).
    pub for_ms: u64,
}

/// Requests a console sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Approve or reject held calls.
    Decide {
        /// Echoed in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// Which calls.
        target: Target,
        /// Approve or reject.
        verdict: Verdict,
        /// Shown to the agent on a rejection and kept in the audit trail.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// With a rejection by fingerprint: also refuse new calls of that fingerprint at once
        /// for this long (ms, at most a day), as a temporary block rule.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        block_for_ms: Option<u64>,
        /// With an approval by exact fingerprint: also let the next identical calls through,
        /// bounded in count and time, as a temporary allow rule.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allow_next: Option<AllowNext>,
        /// The approver's SSH signature of the decision (see `signing`): required when their
        /// identity or a call's rule says `require_signature`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signed: Option<Signature>,
    },
    /// Search the audit trail.
    AuditQuery {
        /// Echoed in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// Filters.
        #[serde(default)]
        filter: AuditFilter,
    },
    /// Ask for a fresh snapshot of the queue.
    Snapshot {
        /// Echoed in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
    },
    /// List temporary rules.
    ListRules {
        /// Echoed in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
    },
    /// Revoke a temporary rule (admins and approvers).
    RevokeRule {
        /// Echoed in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// The rule id.
        id: String,
    },
}

impl ClientMsg {
    /// The request number the answer echoes.
    pub fn req(&self) -> Option<u64> {
        match self {
            ClientMsg::Decide { req, .. }
            | ClientMsg::AuditQuery { req, .. }
            | ClientMsg::Snapshot { req }
            | ClientMsg::ListRules { req }
            | ClientMsg::RevokeRule { req, .. } => *req,
        }
    }
}

/// A decision's statement and the approver's SSH signature of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The statement's exact text (`signing::Statement`).
    pub statement: String,
    /// The armored SSHSIG signature of that text, namespace `tollgate-decision@v1`.
    pub signature: String,
}

/// Why a decision was not taken, for scripts (the message says it for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No call with that id.
    NotFound,
    /// The call is no longer pending (decided, expired, cancelled, abandoned).
    AlreadyClosed,
    /// This identity may not decide this call (role, server scope, named approvers, own call,
    /// approved twice towards a quorum).
    NotAllowed,
    /// The broker could not save the decision; nothing was applied.
    StoreFailed,
    /// The decision must be signed and was not, or its signature does not hold (wrong key,
    /// other calls or arguments, stale); nothing was applied.
    Signature,
}

/// What became of one call named in a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecideResult {
    /// The call.
    pub id: String,
    /// True when the decision was taken (an approval may still wait for a quorum).
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    /// The call's status after the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<crate::Outcome>,
    /// Why the decision was refused, or what it did ("approval 1 of 2").
    pub message: String,
}

/// How the broker's notifications are doing: events dropped (a sink's queue was full, or it
/// failed every retry) and the sinks failing now. Sent to consoles while anything is wrong, so
/// a lost notification is never silent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyHealth {
    /// Notifications given up since the broker started.
    pub dropped: u64,
    /// Sinks whose last delivery failed, with the error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<(String, String)>,
}

impl NotifyHealth {
    /// Whether anything is wrong.
    pub fn is_ok(&self) -> bool {
        self.dropped == 0 && self.failing.is_empty()
    }
}

impl std::fmt::Display for NotifyHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.dropped > 0 {
            parts.push(format!("{} notifications dropped", self.dropped));
        }
        for (sink, error) in &self.failing {
            parts.push(format!("sink {sink} failing: {error}"));
        }
        if parts.is_empty() {
            f.write_str("notifications delivered")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// The broker's store cannot write: since when, why, and what waits to be written. While this
/// lasts the broker refuses calls it would otherwise forward (unless configured to forward
/// them anyway), holds nothing new, and keeps the writes it could not make, retrying them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreFailing {
    /// When writing started to fail (ms since the epoch).
    pub since_ms: u64,
    /// The last error, e.g. `cannot append to the journal: No space left on device`.
    pub error: String,
    /// Writes (audit entries, call records) kept in memory to be retried.
    pub waiting: usize,
}

impl std::fmt::Display for StoreFailing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the store cannot write since {} ({}); {} writes wait to be retried",
            crate::clock::rfc3339_seconds(self.since_ms),
            self.error,
            self.waiting
        )
    }
}

/// Messages the broker sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// First frame on every connection.
    Hello {
        /// [`crate::PROTOCOL_VERSION`] of the broker.
        protocol: u32,
        /// The broker's version.
        broker: String,
        /// The authenticated identity.
        identity: String,
        /// Its role.
        role: Role,
        /// Servers an approver may decide for; absent means all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        servers: Option<Vec<String>>,
    },
    /// The whole queue: sent after `hello`, on request, and to a console that fell behind.
    /// A large queue comes in parts of about [`SNAPSHOT_PART_BYTES`]: this message with `more`
    /// set, then `snapshot_part` messages until one without `more`.
    Snapshot {
        /// Echoed request number, when asked for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// Every pending call, oldest first (the first part of them when `more` is set).
        pending: Vec<Arc<CallRecord>>,
        /// Active temporary rules.
        rules: Vec<TempRule>,
        /// More pending calls follow in `snapshot_part` messages.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// The next pending calls of a snapshot sent in parts.
    SnapshotPart {
        /// Echoed request number, as on the snapshot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// The next pending calls, oldest first.
        pending: Vec<Arc<CallRecord>>,
        /// More parts follow.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// A call is now held.
    CallPending {
        /// The call.
        call: Arc<CallRecord>,
    },
    /// An approval was counted towards a quorum; the call is still pending.
    CallApproval {
        /// The call, with its decisions so far.
        call: Arc<CallRecord>,
    },
    /// A call was approved or rejected (its `decisions` say by whom).
    CallDecided {
        /// The call.
        call: Arc<CallRecord>,
    },
    /// A call expired undecided.
    CallExpired {
        /// The call.
        call: Arc<CallRecord>,
    },
    /// The client withdrew a call.
    CallCancelled {
        /// The call.
        call: Arc<CallRecord>,
    },
    /// A call's client could not get an answer after a broker restart.
    CallAbandoned {
        /// The call.
        call: Arc<CallRecord>,
    },
    /// The answer to a `decide`.
    Decided {
        /// Echoed request number.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// One entry per call named (or matched).
        results: Vec<DecideResult>,
        /// The temporary rule the decision installed, when it asked for one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<TempRule>,
        /// Why the asked-for rule was not installed although the decision was taken.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule_refused: Option<String>,
    },
    /// The answer to an `audit_query`.
    AuditResult {
        /// Echoed request number.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// Matching entries, oldest first.
        entries: Vec<AuditEntry>,
    },
    /// The answer to `list_rules` and `revoke_rule`, and sent to every console when the rules
    /// change.
    Rules {
        /// Echoed request number.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// Active temporary rules.
        rules: Vec<TempRule>,
    },
    /// Whether the store can write: sent after the snapshot while it cannot, and to every
    /// console whenever that changes (`failing` absent: it can again).
    Store {
        /// Set while the store cannot write.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failing: Option<StoreFailing>,
    },
    /// How notifications are doing: sent after the snapshot while something is wrong, and
    /// whenever that changes.
    Notify {
        /// Dropped notifications and failing sinks.
        health: NotifyHealth,
    },
    /// The broker re-read its configuration (SIGHUP or `tollgate-broker reload`): applied,
    /// with the policy version calls are judged under from now on, or refused (the previous
    /// configuration stays in force).
    Config {
        /// The policy version in force.
        policy: String,
        /// When (ms since the epoch).
        at_ms: u64,
        /// Why the new configuration was refused, with every problem; absent when applied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
    },
    /// A request could not be handled; the connection stays open.
    Error {
        /// Echoed request number, when the request had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// What went wrong and what to do.
        message: String,
        /// The kind of refusal, for scripts, when the request was refused for who sent it
        /// (`not_allowed`) or for what it names (`not_found`); absent for a malformed request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refusal: Option<Refusal>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_round_trip_with_type_tags() {
        let msgs = [
            ClientMsg::Decide {
                req: Some(1),
                target: Target::Ids {
                    ids: vec!["a".into()],
                },
                verdict: Verdict::Reject,
                reason: Some("no".into()),
                block_for_ms: None,
                allow_next: None,
                signed: None,
            },
            ClientMsg::Decide {
                req: None,
                target: Target::Fingerprint {
                    fingerprint: "f".into(),
                },
                verdict: Verdict::Approve,
                reason: None,
                block_for_ms: None,
                allow_next: Some(AllowNext {
                    count: 5,
                    for_ms: 600_000,
                }),
                signed: Some(Signature {
                    statement: "{}".into(),
                    signature: "sig".into(),
                }),
            },
            ClientMsg::AuditQuery {
                req: Some(2),
                filter: AuditFilter {
                    status: Some(crate::Outcome::Rejected),
                    ..AuditFilter::default()
                },
            },
            ClientMsg::Snapshot { req: None },
            ClientMsg::ListRules { req: Some(3) },
            ClientMsg::RevokeRule {
                req: None,
                id: "r".into(),
            },
        ];
        for m in msgs {
            let text = serde_json::to_string(&m).expect("serialize");
            let back: ClientMsg = serde_json::from_str(&text).expect("deserialize");
            assert_eq!(back, m, "{text}");
        }
        let decide: ClientMsg = serde_json::from_str(
            r#"{"type":"decide","target":{"by":"ids","ids":["x"]},"verdict":"approve"}"#,
        )
        .expect("documented form parses");
        assert!(matches!(decide, ClientMsg::Decide { .. }));
    }

    #[test]
    fn server_messages_round_trip_with_type_tags() {
        let msgs = [
            ServerMsg::Hello {
                protocol: crate::PROTOCOL_VERSION,
                broker: "0.1.0".into(),
                identity: "alice".into(),
                role: Role::Approver,
                servers: Some(vec!["db".into()]),
            },
            ServerMsg::Error {
                req: Some(4),
                message: "m".into(),
                refusal: Some(Refusal::NotAllowed),
            },
            ServerMsg::Decided {
                req: None,
                results: vec![DecideResult {
                    id: "a".into(),
                    ok: false,
                    refusal: Some(Refusal::AlreadyClosed),
                    outcome: None,
                    message: "already decided".into(),
                }],
                rule: None,
                rule_refused: None,
            },
        ];
        for m in msgs {
            let text = serde_json::to_string(&m).expect("serialize");
            assert!(text.starts_with("{\"type\":"), "{text}");
            let back: ServerMsg = serde_json::from_str(&text).expect("deserialize");
            assert_eq!(back, m);
        }
    }

    #[test]
    fn roles_parse_from_their_names() {
        for r in [Role::Viewer, Role::Approver, Role::Admin] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
