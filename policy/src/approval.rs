//! Who may decide a held call, and what a decision does: pure functions over values.
//!
//! [`decide`] takes the call as it stands, the deciding identity and the verdict, and returns
//! either the updated record (with [`Change::Final`] when the call is now approved or rejected,
//! [`Change::Counted`] when an approval still waits for its quorum) or a [`Refused`] that says
//! why. The store applies it to the call as stored, one decision at a time, so of two consoles
//! deciding at once exactly one wins and the other is told who did.

use tollgate_shared::clock::rfc3339_seconds;
use tollgate_shared::console::{Barrier, barrier};
use tollgate_shared::{CallRecord, Decision, Name, Outcome, Verdict};

use crate::identity::Identity;

/// What a valid decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The call is now approved or rejected.
    Final,
    /// An approval was counted; the quorum is not reached yet.
    Counted,
}

/// What is remembered of a call that is no longer pending: enough to tell a late decision who
/// decided and when, and what the call was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedCall {
    /// How it ended.
    pub outcome: Outcome,
    /// Its server.
    pub server: Name,
    /// Its tool.
    pub tool: Name,
    /// The last decision on it: who, and when (ms since the epoch).
    pub last: Option<(String, u64)>,
    /// When it ended (ms since the epoch).
    pub at_ms: u64,
}

impl ClosedCall {
    /// The summary of a record.
    pub fn of(rec: &CallRecord) -> ClosedCall {
        ClosedCall {
            outcome: rec.outcome,
            server: rec.server.clone(),
            tool: rec.tool.clone(),
            last: rec.decisions.last().map(|d| (d.by.clone(), d.at_ms)),
            at_ms: rec.timings.completed_ms.unwrap_or(rec.timings.decided_ms),
        }
    }

    /// Why it cannot be decided any more.
    pub fn message(&self) -> String {
        match (self.outcome, &self.last) {
            (Outcome::Approved | Outcome::Rejected, Some((by, at))) => {
                format!(
                    "already {} by {by} at {}",
                    self.outcome,
                    rfc3339_seconds(*at)
                )
            }
            (o, _) => format!("already {o} at {}", rfc3339_seconds(self.at_ms)),
        }
    }
}

/// Why a decision was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The call is no longer pending: someone decided it, or it ended on its own.
    #[error("{}", .0.message())]
    Closed(ClosedCall),
    /// Viewers see the queue; they do not decide.
    #[error("{who} is a viewer; deciding needs the approver or admin role")]
    Viewer {
        /// Who tried.
        who: String,
    },
    /// An approver scoped to other servers.
    #[error("{who} may decide only for server(s) {}; this call is for {server}", .servers.join(", "))]
    OutOfScope {
        /// Who tried.
        who: String,
        /// The servers they may decide for.
        servers: Vec<String>,
        /// The call's server.
        server: Name,
    },
    /// The call's rule names who may decide it, and this identity is not among them.
    #[error("rule \"{rule}\" names who may decide: {}; {who} is not among them", .named.join(", "))]
    NotNamed {
        /// Who tried.
        who: String,
        /// The rule that held the call.
        rule: Name,
        /// The identities and `role:<role>`s it names.
        named: Vec<String>,
    },
    /// Nobody approves their own call (they may still reject it).
    #[error("{who} made this call; nobody may approve their own call")]
    OwnCall {
        /// Who tried.
        who: String,
    },
    /// A quorum counts distinct approvers.
    #[error(
        "{who} already approved this call; it needs {quorum} distinct approvers ({so_far} so far)"
    )]
    ApprovedTwice {
        /// Who tried.
        who: String,
        /// Approvals the call needs.
        quorum: usize,
        /// Approvals it has.
        so_far: usize,
    },
}

fn may_decide(rec: &CallRecord, who: &Identity, verdict: Verdict) -> Result<(), Refused> {
    let Some(b) = barrier(rec, &who.name, who.role, who.servers.as_deref(), verdict) else {
        return Ok(());
    };
    let who_name = who.name.clone();
    Err(match b {
        Barrier::Viewer => Refused::Viewer { who: who_name },
        Barrier::OutOfScope => Refused::OutOfScope {
            who: who_name,
            servers: who.servers.clone().unwrap_or_default(),
            server: rec.server.clone(),
        },
        Barrier::NotNamed => Refused::NotNamed {
            who: who_name,
            rule: rec.rule.name.clone(),
            named: rec
                .hold
                .as_ref()
                .map(|h| h.approvers.clone())
                .unwrap_or_default(),
        },
        Barrier::OwnCall => Refused::OwnCall { who: who_name },
        Barrier::ApprovedTwice => Refused::ApprovedTwice {
            who: who_name,
            quorum: rec.hold.as_ref().map_or(1, |h| h.quorum.max(1)) as usize,
            so_far: rec
                .decisions
                .iter()
                .filter(|d| d.verdict == Verdict::Approve)
                .count(),
        },
    })
}

/// Apply one decision to a pending call.
pub fn decide(
    rec: &CallRecord,
    who: &Identity,
    verdict: Verdict,
    reason: Option<&str>,
    signed: Option<tollgate_shared::signing::Signed>,
    now_ms: u64,
) -> Result<(CallRecord, Change), Refused> {
    if rec.outcome != Outcome::Pending {
        return Err(Refused::Closed(ClosedCall::of(rec)));
    }
    may_decide(rec, who, verdict)?;
    let mut next = rec.clone();
    let decision = Decision {
        by: who.name.clone(),
        verdict,
        reason: reason.map(str::to_string).filter(|r| !r.trim().is_empty()),
        at_ms: now_ms,
        signed,
    };
    match verdict {
        Verdict::Reject => {
            next.outcome = Outcome::Rejected;
            next.reason = decision.reason.clone();
            next.decisions.push(decision);
            next.timings.completed_ms = Some(now_ms);
            Ok((next, Change::Final))
        }
        Verdict::Approve => {
            let quorum = rec.hold.as_ref().map_or(1, |h| h.quorum.max(1)) as usize;
            let approvals = || {
                rec.decisions
                    .iter()
                    .filter(|d| d.verdict == Verdict::Approve)
            };
            let count = approvals().count() + 1;
            if decision.reason.is_some() {
                next.reason = decision.reason.clone();
            }
            next.decisions.push(decision);
            if count >= quorum {
                next.outcome = Outcome::Approved;
                Ok((next, Change::Final))
            } else {
                Ok((next, Change::Counted))
            }
        }
    }
}

/// End a pending call without a decision: it expired, its client cancelled it, or the broker
/// restarted and could not deliver its answer. `why` replaces the record's reason when given.
pub fn close(
    rec: &CallRecord,
    outcome: Outcome,
    why: Option<String>,
    now_ms: u64,
) -> Result<CallRecord, Refused> {
    if rec.outcome != Outcome::Pending {
        return Err(Refused::Closed(ClosedCall::of(rec)));
    }
    let mut next = rec.clone();
    next.outcome = outcome;
    next.timings.completed_ms = Some(now_ms);
    if why.is_some() {
        next.reason = why;
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_shared::console::Role;
    use tollgate_shared::{Hold, HoldMode, RuleRef, Timings};

    fn call(client: &str, server: &str, quorum: u32, approvers: &[&str]) -> CallRecord {
        CallRecord {
            id: "0190c1a2-0000-7000-8000-000000000000".into(),
            outcome: Outcome::Pending,
            rule: RuleRef {
                index: 1,
                name: "risky".into(),
            },
            reason: None,
            client: client.into(),
            server: server.into(),
            tool: "drop".into(),
            request_id: serde_json::json!(1),
            session: None,
            protocol_version: None,
            arguments: serde_json::json!({}).into(),
            timings: Timings::default(),
            error: None,
            args_hash: Default::default(),
            fingerprint: Default::default(),
            policy_version: Default::default(),
            hold: Some(Hold {
                mode: HoldMode::Stream,
                expires_ms: 0,
                quorum,
                approvers: approvers.iter().map(|s| s.to_string()).collect(),
                progress_token: None,
                meta: None,
                retried_ms: None,
                secrets_withheld: false,
                require_signature: false,
            }),
            decisions: vec![],
            findings: Vec::new(),
            shape: Default::default(),
            signals: Default::default(),
            trace: None,
        }
    }

    fn who(name: &str, role: Role, servers: Option<&[&str]>) -> Identity {
        Identity {
            name: name.into(),
            role,
            servers: servers.map(|s| s.iter().map(|x| x.to_string()).collect()),
            signing: Default::default(),
        }
    }

    #[test]
    fn an_approver_approves_and_a_second_decision_is_told_who_won() {
        let rec = call("agent", "db", 1, &[]);
        let alice = who("alice", Role::Approver, None);
        let (next, change) = decide(&rec, &alice, Verdict::Approve, None, None, 1000).expect("ok");
        assert_eq!((next.outcome, change), (Outcome::Approved, Change::Final));
        let bob = who("bob", Role::Admin, None);
        let late = decide(&next, &bob, Verdict::Reject, None, None, 2000).expect_err("late");
        assert!(matches!(late, Refused::Closed(_)), "{late:?}");
        let late = late.to_string();
        assert!(
            late.starts_with("already approved by alice at 1970-01-01T00:00:01Z"),
            "{late}"
        );
    }

    #[test]
    fn nobody_approves_their_own_call_but_may_withdraw_it() {
        let rec = call("alice", "db", 1, &[]);
        let alice = who("alice", Role::Admin, None);
        let e = decide(&rec, &alice, Verdict::Approve, None, None, 1)
            .expect_err("self")
            .to_string();
        assert!(e.contains("nobody may approve their own call"), "{e}");
        let (next, _) =
            decide(&rec, &alice, Verdict::Reject, Some("oops"), None, 1).expect("reject");
        assert_eq!(next.outcome, Outcome::Rejected);
        assert_eq!(next.reason.as_deref(), Some("oops"));
    }

    #[test]
    fn viewers_and_out_of_scope_approvers_are_refused_with_reasons() {
        let rec = call("agent", "db", 1, &[]);
        let v = decide(
            &rec,
            &who("vic", Role::Viewer, None),
            Verdict::Approve,
            None,
            None,
            1,
        )
        .expect_err("viewer")
        .to_string();
        assert!(v.contains("viewer"), "{v}");
        let s = decide(
            &rec,
            &who("fay", Role::Approver, Some(&["fs"])),
            Verdict::Reject,
            None,
            None,
            1,
        )
        .expect_err("scope")
        .to_string();
        assert!(
            s.contains("only for server(s) fs; this call is for db"),
            "{s}"
        );
        // Admins are not limited by a server list.
        assert!(
            decide(
                &rec,
                &who("root", Role::Admin, Some(&["fs"])),
                Verdict::Reject,
                None,
                None,
                1,
            )
            .is_ok()
        );
    }

    #[test]
    fn a_quorum_needs_distinct_approvers() {
        let rec = call("agent", "db", 2, &[]);
        let alice = who("alice", Role::Approver, None);
        let (once, change) = decide(&rec, &alice, Verdict::Approve, None, None, 1).expect("first");
        assert_eq!((once.outcome, change), (Outcome::Pending, Change::Counted));
        let again = decide(&once, &alice, Verdict::Approve, None, None, 2)
            .expect_err("twice")
            .to_string();
        assert!(
            again.contains("needs 2 distinct approvers (1 so far)"),
            "{again}"
        );
        let (twice, change) = decide(
            &once,
            &who("bob", Role::Approver, None),
            Verdict::Approve,
            None,
            None,
            3,
        )
        .expect("second");
        assert_eq!((twice.outcome, change), (Outcome::Approved, Change::Final));
        assert_eq!(twice.decisions.len(), 2);
    }

    #[test]
    fn closing_ends_only_a_pending_call_and_keeps_the_reason_unless_given() {
        let rec = call("agent", "db", 1, &[]);
        let expired = close(&rec, Outcome::Expired, None, 5).expect("pending");
        assert_eq!(
            (expired.outcome, expired.timings.completed_ms),
            (Outcome::Expired, Some(5))
        );
        let why = Some("the client cancelled".to_string());
        let cancelled = close(&rec, Outcome::Cancelled, why.clone(), 6).expect("pending");
        assert_eq!(cancelled.reason, why);
        let again = close(&expired, Outcome::Cancelled, None, 7).expect_err("closed");
        assert_eq!(again.to_string(), "already expired at 1970-01-01T00:00:00Z");
    }

    #[test]
    fn named_approvers_match_by_name_or_role() {
        let rec = call("agent", "db", 1, &["carol", "role:admin"]);
        let e = decide(
            &rec,
            &who("alice", Role::Approver, None),
            Verdict::Approve,
            None,
            None,
            1,
        )
        .expect_err("not named")
        .to_string();
        assert!(e.contains("carol, role:admin"), "{e}");
        assert!(
            decide(
                &rec,
                &who("carol", Role::Approver, None),
                Verdict::Approve,
                None,
                None,
                1,
            )
            .is_ok()
        );
        assert!(
            decide(
                &rec,
                &who("root", Role::Admin, None),
                Verdict::Approve,
                None,
                None,
                1,
            )
            .is_ok()
        );
    }
}
