//! A realistic held call, for the disk checks (`tollgate-broker check-disk`, `check-audit`) and
//! tests.

use tollgate_policy::fingerprint;
use tollgate_shared::clock::now_ms;
use tollgate_shared::{CallRecord, HoldMode, Name, Outcome};

/// A pending call for measurements (`tollgate-broker check-disk`) and tests.
pub fn sample_call(n: usize) -> CallRecord {
    let arguments = serde_json::json!({"query": "DELETE FROM orders WHERE id = 1", "n": n});
    let args_hash = fingerprint::args_hash(&arguments);
    CallRecord {
        id: uuid::Uuid::now_v7().to_string().into(),
        outcome: Outcome::Pending,
        rule: tollgate_shared::RuleRef {
            index: 1,
            name: "sample".into(),
        },
        reason: None,
        client: "agent".into(),
        server: "db".into(),
        tool: "execute_sql".into(),
        request_id: serde_json::json!(n),
        session: None,
        protocol_version: Some("2025-11-25".into()),
        fingerprint: fingerprint::exact("db", "execute_sql", &args_hash).into(),
        args_hash: args_hash.into(),
        arguments: arguments.into(),
        timings: tollgate_shared::Timings {
            received_ms: now_ms(),
            decided_ms: now_ms(),
            completed_ms: None,
        },
        error: None,
        policy_version: Name::default(),
        hold: Some(tollgate_shared::Hold {
            mode: HoldMode::Stream,
            expires_ms: now_ms() + 3_600_000,
            quorum: 1,
            require_signature: false,
            approvers: Vec::new(),
            progress_token: None,
            meta: None,
            retried_ms: None,
            secrets_withheld: false,
        }),
        decisions: Vec::new(),
        findings: Vec::new(),
        shape: Default::default(),
        signals: Default::default(),
        trace: None,
    }
}
