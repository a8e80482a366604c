//! Deciding held calls from a console: one id, many, or every call of a fingerprint, and the
//! temporary rule that may follow a decision by fingerprint.
//!
//! The store decides each call (the first valid decision wins, see `tollgate_store::Backend`);
//! the queue then wakes the call's waiting client and tells consoles.

use tollgate_shared::console::Signature;
use tollgate_shared::signing::Signed;

use std::sync::Arc;

use tollgate_policy::approval::{Change, Refused};
use tollgate_policy::identity::Identity;
use tollgate_shared::clock::now_ms;
use tollgate_shared::console::{AllowNext, DecideResult, Role, RuleKind, Target, TempRule};
use tollgate_shared::{CallRecord, Fingerprint, Name, Outcome, Verdict};
use tollgate_store::DecideError;

use super::Queue;
use super::temp_rules::{self, TempRuleError};

/// How many calls are decided (and answered) together: 100 000 decisions in flight at once
/// would cost a few KiB each.
const DECIDE_CHUNK: usize = 4096;

/// A decision resolving this many calls at once asks for free memory to be returned to the
/// system soon after (see [`crate::trim`]).
const TRIM_AFTER: usize = 1024;

/// What a bulk decision decided, as much as a temporary rule following it needs: not the
/// records themselves, which a large decision would keep alive until its last call is decided.
#[derive(Debug)]
struct Decided {
    /// Calls decided (an approval counted toward a quorum included).
    calls: usize,
    /// The server and tool of the first.
    first: Option<(Name, Name)>,
    /// Every one of them is now approved (none waits for more approvals).
    all_approved: bool,
}

impl Default for Decided {
    fn default() -> Decided {
        Decided {
            calls: 0,
            first: None,
            all_approved: true,
        }
    }
}

impl Decided {
    fn count(&mut self, record: &CallRecord) {
        self.calls += 1;
        if self.first.is_none() {
            self.first = Some((record.server.clone(), record.tool.clone()));
        }
        self.all_approved &= record.outcome == Outcome::Approved;
    }
}

/// A temporary rule asked for with a decision.
#[derive(Debug, Clone, Copy)]
pub enum Follow {
    /// Refuse the pattern's new calls for this long.
    BlockFor(u64),
    /// Let the next identical calls through.
    AllowNext(AllowNext),
}

/// A decision request refused before anything was decided.
#[derive(Debug, thiserror::Error)]
pub enum BadDecision {
    /// Approving by shape would approve arguments nobody looked at.
    #[error(
        "{0} is a shape fingerprint: its calls differ in numbers, ids or timestamps, so they are approved by exact fingerprint or by id, not together (rejecting by shape is fine)"
    )]
    ApproveByShape(String),
    /// A temporary rule is about a pattern, so it follows a decision by fingerprint.
    #[error(
        "a temporary rule follows a decision by fingerprint: use target {{\"by\": \"fingerprint\"}}"
    )]
    RuleWithoutFingerprint,
    /// Viewers neither decide nor install rules.
    #[error(
        "{0} is a viewer; deciding calls and installing rules needs the approver or admin role"
    )]
    Viewer(String),
    /// A block rule goes with a rejection.
    #[error("block_for_ms goes with a rejection")]
    BlockWithApproval,
    /// An allow rule goes with an approval.
    #[error("allow_next goes with an approval")]
    AllowWithRejection,
    /// An allow rule's count out of bounds.
    #[error(
        "allow_next.count must be between 1 and {}",
        temp_rules::MAX_ALLOW_COUNT
    )]
    AllowCount,
    /// A rule's lifetime out of bounds.
    #[error("a temporary rule lasts between 1 ms and 24 h")]
    Lifetime,
    /// The decision must be signed and is not.
    #[error(
        "{0}: sign it with your SSH key (the console signs through SSH_AUTH_SOCK, or --sign-key FILE)"
    )]
    SignatureRequired(String),
    /// The signature does not hold.
    #[error("signed decision refused: {0}")]
    Signature(String),
}

/// Why no temporary rule followed a decision that went through.
#[derive(Debug, thiserror::Error)]
pub enum NoRule {
    /// The fingerprint matched no call this identity could decide.
    #[error(
        "no temporary rule was installed: no pending call with fingerprint {fingerprint} was decided by {who}"
    )]
    NothingDecided {
        /// The fingerprint.
        fingerprint: String,
        /// Who decided.
        who: String,
    },
    /// An allow rule would stand in for a quorum.
    #[error(
        "no allow rule was installed: the calls need more approvals than yours (quorum), so future ones must too"
    )]
    Quorum,
    /// The rule could not be saved.
    #[error("no temporary rule was installed: {0}")]
    Save(TempRuleError),
}

impl Queue {
    /// Decide calls. Every call named (or matching the fingerprint) gets a result.
    pub async fn decide(
        &self,
        who: &Identity,
        target: &Target,
        verdict: Verdict,
        reason: Option<&str>,
    ) -> Vec<DecideResult> {
        self.decide_calls(who, self.ids(target), verdict, reason, None)
            .await
            .0
    }

    /// The ids a target names: as given, or the pending calls with that exact or shape
    /// fingerprint, oldest first.
    pub(super) fn ids(&self, target: &Target) -> Vec<Name> {
        match target {
            Target::Ids { ids } => ids.iter().map(|id| Name::from(id.as_str())).collect(),
            Target::Fingerprint { fingerprint } => {
                let want = Fingerprint::from(fingerprint.as_str());
                let mut v: Vec<_> = self
                    .entries
                    .lock()
                    .values()
                    .filter(|e| e.record.fingerprint == want || e.record.shape == want)
                    .map(|e| e.record.id.clone())
                    .collect();
                v.sort();
                v
            }
        }
    }

    /// Decide calls; also say what a temporary rule following the decision needs to know.
    async fn decide_calls(
        &self,
        who: &Identity,
        ids: Vec<Name>,
        verdict: Verdict,
        reason: Option<&str>,
        signed: Option<Signed>,
    ) -> (Vec<DecideResult>, Decided) {
        let deciding = Arc::new(who.clone());
        let mut results = Vec::with_capacity(ids.len());
        let mut decided = Decided::default();
        // Each chunk's clients are woken as soon as its decisions are durable.
        for chunk in ids.chunks(DECIDE_CHUNK) {
            let answers = self
                .store
                .decide_many(
                    chunk.to_vec(),
                    deciding.clone(),
                    verdict,
                    reason.map(str::to_string),
                    signed.clone(),
                )
                .await;
            for (id, answer) in chunk.iter().zip(answers) {
                results.push(match answer {
                    Ok(d) => {
                        let outcome = d.record.outcome;
                        let message = match d.change {
                            Change::Final => format!("{outcome} by {}", who.name),
                            Change::Counted => {
                                let quorum = d.record.hold.as_ref().map_or(1, |h| h.quorum);
                                let approvals = d
                                    .record
                                    .decisions
                                    .iter()
                                    .filter(|d| d.verdict == Verdict::Approve)
                                    .count();
                                format!("approval {approvals} of {quorum} counted; still pending")
                            }
                        };
                        decided.count(&d.record);
                        self.settle(d.record, d.change);
                        DecideResult {
                            id: id.to_string(),
                            ok: true,
                            refusal: None,
                            outcome: Some(outcome),
                            message,
                        }
                    }
                    Err(e) => DecideResult {
                        id: id.to_string(),
                        ok: false,
                        refusal: Some(e.refusal()),
                        outcome: match &e {
                            DecideError::Refused(Refused::Closed(c)) => Some(c.outcome),
                            DecideError::Store(_) => Some(Outcome::Pending),
                            _ => None,
                        },
                        message: e.to_string(),
                    },
                });
            }
        }
        if decided.calls >= TRIM_AFTER {
            crate::trim::soon();
        }
        (results, decided)
    }

    /// Decide calls and, when asked, install a temporary rule for the pattern decided. Bad
    /// requests are refused before anything is decided; when the decision went through but no
    /// rule can follow from it, the second part of the answer says why.
    pub async fn decide_and_follow(
        &self,
        who: &Identity,
        target: &Target,
        verdict: Verdict,
        reason: Option<&str>,
        follow: Option<Follow>,
        signature: Option<&Signature>,
    ) -> Result<(Vec<DecideResult>, Result<Option<TempRule>, NoRule>), BadDecision> {
        // A shape groups calls whose numbers, ids and timestamps differ: rejecting them together
        // is safe, approving them together would approve arguments nobody looked at.
        if verdict == Verdict::Approve
            && let Target::Fingerprint { fingerprint } = target
            && self
                .entries
                .lock()
                .values()
                .any(|e| e.record.shape.is(fingerprint) && !e.record.fingerprint.is(fingerprint))
        {
            return Err(BadDecision::ApproveByShape(fingerprint.clone()));
        }
        let checked =
            self.check_signature(who, target, verdict, reason, follow, signature, now_ms())?;
        let Some(follow) = follow else {
            let decided = self
                .decide_calls(who, checked.ids, verdict, reason, checked.signed)
                .await;
            return Ok((decided.0, Ok(None)));
        };
        let Target::Fingerprint { fingerprint } = target else {
            return Err(BadDecision::RuleWithoutFingerprint);
        };
        if who.role == Role::Viewer {
            return Err(BadDecision::Viewer(who.name.clone()));
        }
        let (kind, for_ms, remaining) = match follow {
            Follow::BlockFor(ms) if verdict == Verdict::Reject => (RuleKind::Block, ms, None),
            Follow::BlockFor(_) => return Err(BadDecision::BlockWithApproval),
            Follow::AllowNext(a) if verdict == Verdict::Approve => {
                if a.count == 0 || a.count > temp_rules::MAX_ALLOW_COUNT {
                    return Err(BadDecision::AllowCount);
                }
                (RuleKind::Allow, a.for_ms, Some(a.count))
            }
            Follow::AllowNext(_) => return Err(BadDecision::AllowWithRejection),
        };
        if for_ms == 0 || for_ms > temp_rules::MAX_RULE_MS {
            return Err(BadDecision::Lifetime);
        }
        let (results, decided) = self
            .decide_calls(who, checked.ids, verdict, reason, checked.signed)
            .await;
        let Some((server, tool)) = decided.first else {
            return Ok((
                results,
                Err(NoRule::NothingDecided {
                    fingerprint: fingerprint.clone(),
                    who: who.name.clone(),
                }),
            ));
        };
        if kind == RuleKind::Allow && !decided.all_approved {
            return Ok((results, Err(NoRule::Quorum)));
        }
        let now = now_ms();
        let rule = TempRule {
            id: temp_rules::new_id(),
            kind,
            fingerprint: fingerprint.clone(),
            server: server.to_string(),
            tool: tool.to_string(),
            by: who.name.clone(),
            created_ms: now,
            until_ms: now + for_ms,
            reason: reason.map(str::to_string),
            remaining,
            hits: 0,
        };
        if let Err(e) = self.temp.add(rule.clone(), now).await {
            return Ok((results, Err(NoRule::Save(e))));
        }
        tracing::info!(rule = %rule.id, kind = ?rule.kind, fingerprint = %rule.fingerprint, by = %rule.by, until_ms = rule.until_ms, "temporary rule installed");
        self.rules_changed();
        Ok((results, Ok(Some(rule))))
    }

    /// Revoke a temporary rule: admins any, approvers their own or those for servers they
    /// decide for.
    pub async fn revoke_rule(&self, who: &Identity, id: &str) -> Result<TempRule, TempRuleError> {
        let gone = self
            .temp
            .revoke(id, now_ms(), |r| match who.role {
                Role::Admin => Ok(()),
                Role::Approver
                    if r.by == who.name
                        || who.servers.as_ref().is_none_or(|s| s.contains(&r.server)) =>
                {
                    Ok(())
                }
                Role::Approver => Err(TempRuleError::OutOfScope {
                    who: who.name.clone(),
                    id: r.id.clone(),
                    by: r.by.clone(),
                    server: r.server.clone(),
                }),
                Role::Viewer => Err(TempRuleError::Viewer {
                    who: who.name.clone(),
                }),
            })
            .await?;
        tracing::info!(rule = %gone.id, by = %who.name, "temporary rule revoked");
        self.rules_changed();
        Ok(gone)
    }
}
