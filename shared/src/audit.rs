//! The audit trail's unit: one append-only, hash-chained entry per call outcome.
//!
//! A call produces one entry per status it reaches (`pending`, then `approved`, ...; or just
//! `allowed`). Each entry carries the hash of the entry before it, so editing, removing or
//! reordering any entry breaks the chain from that point on. The broker computes the hashes
//! (SHA-256 over the previous hash and the entry's canonical JSON with `hash` empty); this crate
//! only defines the shape.

use serde::{Deserialize, Serialize};

use crate::{Outcome, RuleRef};

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// When the outcome was reached (ms since the epoch).
    pub at_ms: u64,
    /// The call this entry is about (its record id).
    pub call_id: String,
    /// The status reached.
    pub outcome: Outcome,
    /// The calling identity.
    pub client: String,
    /// The upstream server.
    pub server: String,
    /// The tool.
    pub tool: String,
    /// The JSON-RPC id the client used.
    pub request_id: serde_json::Value,
    /// The rule that decided.
    pub rule: RuleRef,
    /// Why: the rule's reason, the approver's reason, or the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// SHA-256 of the canonical arguments (the arguments themselves stay in the call record).
    #[serde(default)]
    pub args_hash: String,
    /// The identities whose decisions led here (approvers of an approval, the rejecter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// Forwarding error, if the upstream failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Hash of the previous entry (64 zeros for the first).
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// Filters for an audit search; every given filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFilter {
    /// Only entries with this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Outcome>,
    /// Only this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Only this tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Only calls by this identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Only entries decided (in part) by this identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// Only one call's entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// Only entries at or after this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// At most this many entries, newest kept (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}
