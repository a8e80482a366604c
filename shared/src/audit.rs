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
    /// The approvers' SSH signatures of the decisions that led here (see `signing`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<crate::signing::Signed>,
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

fn by(e: &AuditEntry, sep: &str) -> String {
    e.approvers.join(sep)
}

/// Entries as a table for people (the `audit` commands of both binaries).
pub fn table(entries: &[AuditEntry]) -> String {
    let mut out = format!(
        "{:>6}  {:<20}  {:<12}  {:<12}  {:<28}  {:<12}  {:<14}  REASON\n",
        "SEQ", "TIME (UTC)", "STATUS", "CLIENT", "SERVER/TOOL", "BY", "RULE"
    );
    if entries.is_empty() {
        out.push_str("(no matching audit entries)\n");
    }
    for e in entries {
        let who = if e.approvers.is_empty() {
            "-".to_string()
        } else {
            by(e, ",")
        };
        out.push_str(&format!(
            "{:>6}  {:<20}  {:<12}  {:<12}  {:<28}  {:<12}  {:<14}  {}\n",
            e.seq,
            crate::clock::rfc3339_seconds(e.at_ms),
            e.outcome.as_str(),
            e.client,
            format!("{}/{}", e.server, e.tool),
            who,
            e.rule.name,
            e.reason.as_deref().or(e.error.as_deref()).unwrap_or("")
        ));
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Entries as CSV with a header row.
pub fn csv(entries: &[AuditEntry]) -> String {
    let mut out = String::from(
        "seq,time,status,client,server,tool,request_id,approvers,rule,reason,args_hash,call_id,hash\n",
    );
    for e in entries {
        let fields = [
            e.seq.to_string(),
            crate::clock::rfc3339_seconds(e.at_ms),
            e.outcome.to_string(),
            e.client.clone(),
            e.server.clone(),
            e.tool.clone(),
            e.request_id.to_string(),
            by(e, " "),
            e.rule.name.to_string(),
            e.reason.clone().or(e.error.clone()).unwrap_or_default(),
            e.args_hash.clone(),
            e.call_id.clone(),
            e.hash.clone(),
        ];
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting_and_table_says_when_empty() {
        let e = AuditEntry {
            seq: 1,
            at_ms: 0,
            call_id: "c".into(),
            outcome: Outcome::Rejected,
            client: "a".into(),
            server: "s".into(),
            tool: "t".into(),
            request_id: serde_json::json!(1),
            rule: RuleRef {
                index: 1,
                name: "r".into(),
            },
            reason: Some("no, \"never\"".into()),
            args_hash: "h".into(),
            approvers: vec!["bob".into()],
            error: None,
            signatures: Vec::new(),
            prev_hash: "p".into(),
            hash: "x".into(),
        };
        let text = csv(std::slice::from_ref(&e));
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.contains("\"no, \"\"never\"\"\"")),
            "{text}"
        );
        assert!(table(&[]).contains("(no matching audit entries)"));
        assert!(table(&[e]).contains("1970-01-01T00:00:00Z  rejected"));
        assert_eq!("approved".parse::<Outcome>(), Ok(Outcome::Approved));
        assert!("maybe".parse::<Outcome>().is_err());
    }
}
