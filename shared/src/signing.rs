//! Decisions signed by the approver's own SSH key: the statement a console signs, and what the
//! broker keeps of the signature with the decision and its audit entry.
//!
//! A statement names exactly what is decided: every call (id, server, tool, the hash of the
//! arguments that will be forwarded, the policy version and the rule that held it), the verdict,
//! the reason, the temporary rule requested with it, the approver and the time, and for a
//! decision by fingerprint the fingerprint. Its text is the compact JSON of [`Statement`] (fields
//! in the order declared here, calls sorted by id), signed as SSHSIG under [`NAMESPACE`], so
//! `ssh-keygen -Y verify -n tollgate-decision@v1` checks it too. The broker checks a signed
//! decision against the calls as stored before applying it, and keeps the statement's text and
//! the signature, so the audit trail proves who decided what without trusting the broker.

use serde::{Deserialize, Serialize};

use crate::{CallRecord, RuleKind, Verdict};

/// The SSHSIG namespace of decisions: a signature made for anything else does not count.
pub const NAMESPACE: &str = "tollgate-decision@v1";

/// How far a statement's time may be from the time its decision is applied (and audited): a
/// signature is not a standing order to be replayed later.
pub const FRESHNESS_MS: u64 = 5 * 60_000;

/// The statement format's version.
pub const VERSION: u32 = 1;

/// What an approver signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// Format version ([`VERSION`]).
    pub v: u32,
    /// The deciding identity.
    pub approver: String,
    /// Approve or reject.
    pub decision: Verdict,
    /// The reason given (shown to the agent on a rejection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A decision by fingerprint: the fingerprint (the calls are still listed one by one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The temporary rule requested with the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_rule: Option<RuleRequest>,
    /// When it was signed (ms since the epoch).
    pub at_ms: u64,
    /// Every call decided, sorted by id.
    pub calls: Vec<StatementCall>,
}

/// A temporary rule requested with a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRequest {
    /// Block or allow.
    pub kind: RuleKind,
    /// For how long (ms).
    pub for_ms: u64,
    /// Allow rules: how many calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// One call a statement decides, as the approver saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementCall {
    /// The call's id.
    pub id: String,
    /// The upstream server.
    pub server: String,
    /// The tool.
    pub tool: String,
    /// SHA-256 of the canonical arguments: exactly what is forwarded.
    pub args_hash: String,
    /// The policy version that held it.
    pub policy_version: String,
    /// The rule that held it.
    pub rule: String,
}

impl StatementCall {
    /// The call as a statement names it.
    pub fn of(record: &CallRecord) -> StatementCall {
        StatementCall {
            id: record.id.to_string(),
            server: record.server.to_string(),
            tool: record.tool.to_string(),
            args_hash: record.args_hash.to_string(),
            policy_version: record.policy_version.to_string(),
            rule: record.rule.name.to_string(),
        }
    }
}

impl Statement {
    /// The statement deciding `calls` (sorted by id here).
    pub fn new(
        approver: &str,
        decision: Verdict,
        reason: Option<&str>,
        fingerprint: Option<&str>,
        temp_rule: Option<RuleRequest>,
        at_ms: u64,
        calls: impl IntoIterator<Item = StatementCall>,
    ) -> Statement {
        let mut calls: Vec<StatementCall> = calls.into_iter().collect();
        calls.sort_by(|a, b| a.id.cmp(&b.id));
        calls.dedup_by(|a, b| a.id == b.id);
        Statement {
            v: VERSION,
            approver: approver.to_string(),
            decision,
            reason: reason.map(str::to_string).filter(|r| !r.trim().is_empty()),
            fingerprint: fingerprint.map(str::to_string),
            temp_rule,
            at_ms,
            calls,
        }
    }

    /// The text that is signed.
    pub fn text(&self) -> String {
        // Strings, numbers and enums always serialise.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse a statement's text.
    pub fn parse(text: &str) -> Result<Statement, String> {
        let s: Statement =
            serde_json::from_str(text).map_err(|e| format!("not a decision statement: {e}"))?;
        if s.v != VERSION {
            return Err(format!(
                "statement version {} (this broker reads {VERSION})",
                s.v
            ));
        }
        if !s.calls.windows(2).all(|w| w[0].id < w[1].id) {
            return Err("a statement lists its calls sorted by id, each once".into());
        }
        Ok(s)
    }

    /// Whether the statement covers `record` as it is: the reason it does not, if not.
    pub fn covers(&self, record: &CallRecord) -> Result<(), String> {
        match self
            .calls
            .binary_search_by(|c| c.id.as_str().cmp(&record.id))
        {
            Ok(i) => self.calls[i].matches(record),
            Err(_) => Err(format!(
                "the signed statement does not name call {}",
                record.id
            )),
        }
    }
}

impl StatementCall {
    /// Whether this is `record` as it is now: the reason it is not, if not.
    pub fn matches(&self, record: &CallRecord) -> Result<(), String> {
        let signed = self;
        let now = StatementCall::of(record);
        let differs = |what: &str, signed: &str, now: &str| {
            Err(format!(
                "call {}: the signature covers {what} {signed:?}, but the call has {now:?}",
                record.id
            ))
        };
        if signed.args_hash != now.args_hash {
            return differs("arguments with hash", &signed.args_hash, &now.args_hash);
        }
        if signed.server != now.server || signed.tool != now.tool {
            return differs(
                "tool",
                &format!("{}/{}", signed.server, signed.tool),
                &format!("{}/{}", now.server, now.tool),
            );
        }
        if signed.policy_version != now.policy_version {
            return differs(
                "policy version",
                &signed.policy_version,
                &now.policy_version,
            );
        }
        if signed.rule != now.rule {
            return differs("rule", &signed.rule, &now.rule);
        }
        Ok(())
    }
}

/// A decision's signature as kept with the decision and in its audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The statement's exact text. A decision covering several calls keeps it (and the
    /// signature) with the first call by id only; the others name it by `statement_sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    /// SHA-256 (hex) of the statement's text.
    pub statement_sha256: String,
    /// The armored SSH signature (with the statement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The signing key's fingerprint (`SHA256:…`).
    pub key: String,
}

impl Signed {
    /// The same signature, by reference to its statement (for the other calls it covers).
    pub fn reference(&self) -> Signed {
        Signed {
            statement: None,
            statement_sha256: self.statement_sha256.clone(),
            signature: None,
            key: self.key.clone(),
        }
    }
}

/// An SSH public key whose signatures count as an identity's decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    /// The OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub key: String,
    /// Its fingerprint (`SHA256:…`).
    pub fingerprint: String,
    /// When it was added (ms since the epoch).
    pub added_ms: u64,
    /// When it was revoked: signatures it made before still verify, later ones do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

impl SigningKey {
    /// Whether a signature made at `ms` counts.
    pub fn valid_at(&self, ms: u64) -> bool {
        self.added_ms <= ms && self.revoked_ms.is_none_or(|r| ms < r)
    }
}

/// An identity's signing keys, and whether its decisions must be signed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signing {
    /// Its keys, revoked ones included (old signatures are checked against them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<SigningKey>,
    /// Every decision of this identity must be signed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_signature: bool,
}

impl Signing {
    /// The keys whose signatures count at `ms`.
    pub fn valid_at(&self, ms: u64) -> impl Iterator<Item = &SigningKey> {
        self.keys.iter().filter(move |k| k.valid_at(ms))
    }
}
