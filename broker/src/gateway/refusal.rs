//! Why the gateway refused a call, and what each party is told: the client (as a tool error the
//! model can act on), the audit trail (outcome and reason) and the log.
//!
//! The gateway decides *that* a call is refused; this module is the one place that words it.

use std::time::Duration;

use tollgate_policy::guards::budget::OverBudget;
use tollgate_policy::guards::dlp::MAX_FINDINGS;
use tollgate_policy::guards::limits::Limited;
use tollgate_shared::clock::rfc3339_seconds;
use tollgate_shared::console::TempRule;
use tollgate_shared::{CallRecord, Decision, Name, Outcome, RuleRef, Verdict};

/// A call refused before it reached an upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// A pattern someone rejected and blocked for a while (a temporary rule).
    Blocked(Box<TempRule>),
    /// A rate limit is exhausted.
    RateLimited(Limited),
    /// The call's shape repeats like a runaway loop and `[loops] action = "deny"`.
    Loop {
        /// "N calls of this shape within T".
        what: String,
    },
    /// The arguments hold secrets and the DLP action is `deny`.
    Secrets {
        /// The findings, masked.
        what: String,
    },
    /// The arguments hold more secrets than a call may (`dlp::MAX_FINDINGS`), whatever the
    /// DLP action.
    TooManySecrets,
    /// The request id holds a secret (the record keeps it redacted).
    SecretInId,
    /// The store cannot write, so the call could not be recorded (`[broker] on_store_error`).
    StoreFailing {
        /// Since when (ms since the epoch).
        since_ms: u64,
        /// The store's last error, e.g. `PostgreSQL: cannot connect: …` or `cannot append to
        /// the journal: No space left on device`.
        error: String,
    },
    /// A policy rule denies it.
    Denied {
        /// The rule.
        rule: RuleRef,
        /// Its reason text.
        reason: Option<String>,
    },
    /// A budget is exhausted.
    OverBudget(OverBudget),
    /// The same retry-mode call is already waiting for approval.
    StillPending {
        /// The call it repeats.
        waiting: Name,
    },
    /// The retry-mode call this one repeats was rejected.
    RetryRejected {
        /// The call it repeats.
        original: Name,
        /// Who rejected it.
        by: String,
        /// Why.
        reason: Option<String>,
    },
}

/// `rate limit "x" (3/min per client): retry in N s` wants whole seconds, at least one.
fn retry_seconds(l: &Limited) -> u64 {
    l.retry_after_ms.div_ceil(1000).max(1)
}

fn because(reason: Option<&str>) -> String {
    reason.map(|r| format!(": {r}")).unwrap_or_default()
}

impl Refusal {
    /// The outcome the audit trail records.
    pub fn outcome(&self) -> Outcome {
        match self {
            Refusal::RateLimited(_) | Refusal::OverBudget(_) => Outcome::RateLimited,
            _ => Outcome::Blocked,
        }
    }

    /// The kind of guard, for `tollgate_guard_refusals_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Blocked(_) => "blocked",
            Refusal::RateLimited(_) => "rate",
            Refusal::Loop { .. } => "loop",
            Refusal::Secrets { .. } | Refusal::TooManySecrets | Refusal::SecretInId => "dlp",
            Refusal::StoreFailing { .. } => "store",
            Refusal::Denied { .. } => "policy",
            Refusal::OverBudget(_) => "budget",
            Refusal::StillPending { .. } => "still_pending",
            Refusal::RetryRejected { .. } => "retry_rejected",
        }
    }

    /// The reason the audit trail records (`None`: the rule's own reason stays).
    pub fn reason(&self) -> Option<String> {
        match self {
            Refusal::Blocked(rule) => Some(format!(
                "temporary rule {} by {} until {}{}",
                rule.id,
                rule.by,
                rfc3339_seconds(rule.until_ms),
                because(rule.reason.as_deref())
            )),
            Refusal::RateLimited(l) => Some(format!(
                "rate limit \"{}\" ({}): retry in {} s",
                l.limit,
                l.rule,
                retry_seconds(l)
            )),
            Refusal::Loop { what } => Some(format!("runaway loop: {what}")),
            Refusal::Secrets { what } => Some(format!("secrets in arguments: {what}")),
            Refusal::TooManySecrets => Some(format!(
                "more than {MAX_FINDINGS} secrets in arguments; arguments not kept"
            )),
            Refusal::SecretInId => {
                Some("a secret in the request id; the id is kept redacted".into())
            }
            Refusal::StoreFailing { since_ms, .. } => Some(format!(
                "the store could not write (since {}): calls it could not record were refused",
                rfc3339_seconds(*since_ms)
            )),
            Refusal::Denied { .. } => None,
            Refusal::OverBudget(o) => Some(format!("budget \"{}\": {}", o.budget, o.why)),
            Refusal::StillPending { waiting } => {
                Some(format!("still awaiting approval as call {waiting}"))
            }
            Refusal::RetryRejected {
                original,
                by,
                reason,
            } => Some(format!(
                "repeat of call {original}, rejected by {by}{}",
                because(reason.as_deref())
            )),
        }
    }

    /// What the throttle flag of the client's other calls says refused this one, if it is a
    /// refusal approvers should see there.
    pub fn throttles(&self) -> Option<String> {
        match self {
            Refusal::RateLimited(l) => Some(format!("rate limit \"{}\"", l.limit)),
            Refusal::OverBudget(o) => Some(format!("budget \"{}\"", o.budget)),
            _ => None,
        }
    }

    /// Record the refusal on the call.
    pub fn apply(&self, record: &mut CallRecord) {
        record.outcome = self.outcome();
        if let Some(reason) = self.reason() {
            record.reason = Some(reason);
        }
        if let Refusal::Blocked(rule) = self {
            // The audit trail names the person who installed the rule.
            record.rule = RuleRef {
                index: 0,
                name: rule.id.as_str().into(),
            };
            record.decisions.push(rule_decision(rule, Verdict::Reject));
        }
    }

    /// Note the refusal in the log.
    pub fn log(&self) {
        match self {
            Refusal::Blocked(rule) => {
                tracing::info!(temp_rule = %rule.id, by = %rule.by, "blocked by a temporary rule")
            }
            Refusal::RateLimited(l) => {
                tracing::info!(limit = %l.limit, retry_after_s = retry_seconds(l), "rate limited")
            }
            Refusal::Loop { what } => tracing::info!(%what, "blocked: runaway loop"),
            Refusal::Secrets { .. } => tracing::info!("blocked: secrets in arguments"),
            Refusal::TooManySecrets => tracing::warn!("blocked: too many secrets in arguments"),
            Refusal::SecretInId => tracing::warn!("blocked: a secret in the request id"),
            Refusal::StoreFailing { .. } => {
                tracing::warn!("refused: the store cannot write, so the call could not be recorded")
            }
            Refusal::Denied { .. } => tracing::info!("blocked"),
            Refusal::OverBudget(o) => tracing::info!(budget = %o.budget, "over budget"),
            Refusal::StillPending { waiting } => {
                tracing::info!(%waiting, "blocked: still awaiting approval")
            }
            Refusal::RetryRejected { original, by, .. } => {
                tracing::info!(%original, %by, "blocked: the call it repeats was rejected")
            }
        }
    }

    /// What the client (and the model behind it) is told, as a tool error.
    pub fn text(&self, server: &str, tool: &str) -> String {
        match self {
            Refusal::Blocked(rule) => format!(
                "Tollgate refused this call to {server}/{tool} at once: {} rejected this repeated call and blocked it until {} (temporary rule {}){}. The call was not run.",
                rule.by,
                rfc3339_seconds(rule.until_ms),
                rule.id,
                because(rule.reason.as_deref())
            ),
            Refusal::RateLimited(l) => format!(
                "Tollgate refused this call to {server}/{tool}: rate limit \"{}\" ({}) is exhausted. Retry in {} s.",
                l.limit,
                l.rule,
                retry_seconds(l)
            ),
            Refusal::Loop { what } => format!(
                "Tollgate blocked this call to {server}/{tool}: it looks like a runaway loop ({what}). The call was not run. Stop repeating it."
            ),
            Refusal::Secrets { what } => format!(
                "Tollgate blocked this call to {server}/{tool}: its arguments contain secrets ({what}). The call was not run. Remove the secrets and try again."
            ),
            Refusal::SecretInId => format!(
                "Tollgate blocked this call to {server}/{tool}: its JSON-RPC request id contains what looks like a secret, and ids are logged and shown to approvers. The call was not run. Use a plain id."
            ),
            Refusal::StoreFailing { error, .. } => format!(
                "Tollgate refused this call to {server}/{tool}: the broker cannot write its audit trail at the moment ({error}), and it runs no call it cannot record. The call was not run. Try again later."
            ),
            Refusal::TooManySecrets => format!(
                "Tollgate blocked this call to {server}/{tool}: its arguments contain more than {MAX_FINDINGS} secrets, more than any call may carry. The call was not run. Remove the secrets and try again."
            ),
            Refusal::Denied { rule, reason } => format!(
                "Tollgate blocked this call to {server}/{tool} under rule \"{}\" (rule {} of the broker's policy){}. The call was not run.",
                rule.name,
                rule.index,
                because(reason.as_deref())
            ),
            Refusal::OverBudget(o) => format!(
                "Tollgate refused this call to {server}/{tool}: budget \"{}\" is exhausted ({}). {}",
                o.budget, o.why, o.retry
            ),
            Refusal::StillPending { waiting } => format!(
                "Tollgate: this call to {server}/{tool} is still awaiting human approval (call {waiting}). It was not run. Repeat the identical call after it is approved."
            ),
            Refusal::RetryRejected {
                original,
                by,
                reason,
            } => format!(
                "Rejected by {by}{}. The call to {server}/{tool} was not run (it repeats call {original}, which was rejected).",
                because(reason.as_deref())
            ),
        }
    }
}

/// The decision a temporary rule stands for, recorded on the calls it answers (so the audit
/// trail names the person who installed it).
pub fn rule_decision(rule: &TempRule, verdict: Verdict) -> Decision {
    Decision {
        by: rule.by.clone(),
        verdict,
        reason: rule.reason.clone(),
        at_ms: rule.created_ms,
        // The decision that made the rule is signed (with the calls it decided), not each use.
        signed: None,
    }
}

/// What a call's client is told when it is queued in retry mode.
pub fn queued_for_retry(record: &CallRecord, retry_ttl: Duration) -> String {
    format!(
        "Tollgate: this call to {}/{} needs human approval under rule \"{}\" and is queued as call {}. It was not run yet. Once an approver approves it, repeat the identical call within {} and it will run once.",
        record.server,
        record.tool,
        record.rule.name,
        record.id,
        humantime::format_duration(retry_ttl),
    )
}

/// What a call's client is told when it needs approval but cannot be queued.
pub fn not_queued(record: &CallRecord, why: &dyn std::fmt::Display) -> String {
    format!(
        "Tollgate: this call to {}/{} needs human approval, but the broker could not queue it ({why}). It was not run; try again later.",
        record.server, record.tool
    )
}
