//! What the store's tests share: a call record to write.

use tollgate_shared::{CallRecord, Hold, HoldMode, Outcome, RuleRef, Timings};

/// Call `n`: held (stream mode, quorum 1) when `outcome` is pending, by one of three clients,
/// to one of two tools.
pub(crate) fn record(n: u64, outcome: Outcome) -> CallRecord {
    CallRecord {
        id: uuid::Uuid::now_v7().to_string().into(),
        outcome,
        rule: RuleRef {
            index: 0,
            name: "default".into(),
        },
        reason: None,
        client: format!("c{}", n % 3).into(),
        server: "s".into(),
        tool: format!("t{}", n % 2).into(),
        request_id: serde_json::json!(n),
        session: None,
        protocol_version: None,
        arguments: serde_json::json!({}).into(),
        timings: Timings::default(),
        error: None,
        args_hash: Default::default(),
        fingerprint: Default::default(),
        policy_version: Default::default(),
        hold: (outcome == Outcome::Pending).then(|| Hold {
            mode: HoldMode::Stream,
            expires_ms: 0,
            quorum: 1,
            approvers: vec![],
            require_signature: false,
            progress_token: None,
            meta: None,
            retried_ms: None,
            secrets_withheld: false,
        }),
        decisions: vec![],
        findings: Vec::new(),
        shape: Default::default(),
        signals: Default::default(),
        trace: None,
    }
}
