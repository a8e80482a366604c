//! The interception point: what happens to one `tools/call` before it may reach an upstream.
//!
//! The frontend hands every `tools/call` request here. [`Gateway::intercept`] reads the tool
//! name and arguments, builds the call's record, and puts it through the guards and the policy
//! in a fixed order ([`Gateway::screen`]):
//!
//! 1. a temporary rule blocking the pattern refuses it at once;
//! 2. an exhausted rate limit refuses it;
//! 3. a runaway loop is flagged, held for a person, or refused (`[loops] action`);
//! 4. secrets in the arguments refuse it, hold it, or are redacted (the `dlp` action);
//! 5. the policy's verdict: allow (within the client's budgets), deny, or hold for approval,
//!    where an approved retry or a temporary allow rule may still let it through at once.
//!
//! The answer is a [`Ticket`] (forward, and complete the ticket once the upstream's answer is
//! relayed), a JSON-RPC response to send instead (a [`Refusal`], worded in [`refusal`]), or a
//! [`Held`] call committed to the approval queue for the frontend to wait on. How the client
//! waits (its request, a task, a retry) is the frontend's business; the gateway only records
//! it.

mod annotations;
mod refusal;
mod scan;
#[cfg(test)]
mod tests;
mod throttle;
mod ticket;

use std::sync::Arc;
use std::time::Duration;

use scan::Prepared;
use serde_json::{Value, json};
use tollgate_policy::guards::dlp::TooManySecrets;
use tollgate_policy::guards::loops::{LoopAction, Seen};
use tollgate_policy::guards::{Dlp, DlpAction, Scrub};
use tollgate_policy::{Action, CallView, Policy, Verdict, fingerprint};
use tollgate_shared::clock::now_ms;
use tollgate_shared::{
    CallRecord, Hold, HoldMode, JsonText, Name, Outcome, Signals, Timings, intern,
};
use tollgate_store::{Backend, RETRY_MAX, Writes};
use tracing::Instrument;

use crate::jsonrpc;
use crate::queue::{HoldError, Queue, Taken, Waiting};
pub use annotations::Annotations;
pub use refusal::Refusal;
pub use throttle::Throttle;
pub use ticket::Ticket;

/// Who is calling, through which server, on which protocol revision.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Authenticated client identity.
    pub client: Name,
    /// Configured upstream server name.
    pub server: Name,
    /// MCP session id, when the revision has sessions.
    pub session: Option<Name>,
    /// Declared protocol revision, when known.
    pub protocol_version: Option<Name>,
    /// The client asked to wait for this call by polling an MCP task.
    pub polls_task: bool,
    /// The W3C `traceparent` the client sent, when valid.
    pub trace: Option<String>,
}

impl CallContext {
    /// True for 2026-07-28 and later, whose results must carry `resultType`.
    pub fn modern(&self) -> bool {
        self.protocol_version
            .as_deref()
            .is_some_and(jsonrpc::is_modern)
    }
}

/// What to do with an intercepted call.
pub enum Intercept {
    /// Forward it; complete the ticket once the upstream's answer is relayed.
    Forward(Ticket),
    /// Answer the client with this JSON-RPC message instead of forwarding.
    Respond(Value),
    /// The call is held (durably) for approval; wait on it.
    Held(Box<Held>),
}

/// A call waiting in the approval queue.
pub struct Held {
    /// The queue's handle (with the record as stored).
    pub waiting: Waiting,
    /// DLP rewrote the request's arguments: re-serialise it before forwarding.
    pub rewritten: bool,
    /// Keeps the call's secrets out of what is recorded of its forwarding (its error).
    pub scrub: Option<Scrub>,
}

/// The policy and the guards' settings: what a configuration reload replaces. A call is judged
/// entirely by the one it loaded when it arrived.
pub struct Guards {
    /// The rules.
    pub policy: Policy,
    /// The DLP guard, unless `[dlp] enabled = false`.
    pub dlp: Option<Arc<Dlp>>,
    /// Rate limits (kept across a reload that does not change them, with their buckets).
    pub limiter: Arc<tollgate_policy::guards::limits::Limiter>,
    /// Loop detection (kept across a reload that does not change it).
    pub loops: Arc<tollgate_policy::guards::loops::Loops>,
}

/// Policy, guards, annotations, the store and the queue: everything interception needs.
pub struct Gateway {
    /// The policy and guards in force.
    pub guards: tollgate_shared::sync::Live<Guards>,
    /// Annotations learned from upstreams.
    pub annotations: Arc<Annotations>,
    /// Where records go.
    pub store: Arc<dyn Backend>,
    /// Where held calls wait.
    pub queue: Arc<Queue>,
    /// Expiry of held calls whose rule sets none.
    pub default_expiry: Duration,
    /// How long an approved retry-mode call may be repeated to run.
    pub retry_ttl: Duration,
    /// Forward allowed calls even while the store cannot write them down (`[broker]
    /// on_store_error = "forward"`); by default they are refused.
    pub forward_when_store_fails: bool,
    /// Each forwarded call's audit entry is durable before the call is forwarded (`[broker]
    /// sync_before_forward`); by default it is written behind the call.
    pub sync_before_forward: bool,
    /// Recent refusals by rate limits and budgets, per client, for approvers' flags.
    pub throttle: Throttle,
}

/// A call that passed the guards, with the verdict they left.
struct Screened {
    verdict: Verdict,
    /// Its arguments held secrets the store never keeps (a person must see it).
    withheld: bool,
    /// DLP replaced secrets in the request's arguments.
    rewritten: bool,
}

/// What the DLP guard found in a call's arguments.
#[derive(Clone, Copy)]
enum Secrets {
    /// Secrets (in the record's findings), and what to do about them.
    Found(DlpAction),
    /// More than the scan allows: the call is refused.
    TooMany,
}

/// What DLP made of a call, carried through the guards to where the call is held or forwarded.
struct Scanned {
    secrets: Option<Secrets>,
    /// The request's `_meta` as kept (redacted when it held secrets).
    meta: Option<Value>,
    /// Keeps the call's secrets out of texts recorded later.
    scrub: Option<Scrub>,
}

/// The tool name and arguments of a `tools/call`, or why the request is malformed.
fn call_parts(request: &Value) -> Result<(&str, Option<&Value>), &'static str> {
    let params = request.get("params");
    let tool = params
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str)
        .ok_or("tools/call needs params.name, a string")?;
    match params.and_then(|p| p.get("arguments")) {
        None | Some(Value::Null) => Ok((tool, None)),
        Some(a @ Value::Object(_)) => Ok((tool, Some(a))),
        Some(_) => Err("tools/call params.arguments must be an object"),
    }
}

/// The span every log line about a call carries: its id, client, server, tool and rule.
pub fn call_span(record: &CallRecord) -> tracing::Span {
    let span = tracing::info_span!("call", call = %record.id, client = %record.client, server = %record.server, tool = %record.tool, rule = %record.rule.name, trace_id = tracing::field::Empty);
    if let Some(t) = record.trace.as_deref().and_then(trace_id) {
        span.record("trace_id", tracing::field::display(t));
    }
    span
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`; version `ff`
/// and all-zero ids are invalid), or `None`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    valid.then_some(trace)
}

impl Gateway {
    /// Decide one `tools/call` request.
    /// DLP may rewrite `request` (`redact`): the caller forwards what it holds afterwards.
    pub async fn intercept(
        &self,
        ctx: &CallContext,
        request: &mut Value,
        received_ms: u64,
    ) -> Intercept {
        let id = jsonrpc::id(request);
        let g = self.guards.load();
        let empty = json!({});
        let (tool, verdict) = match call_parts(request) {
            Ok((tool, arguments)) => {
                let arguments = arguments.unwrap_or(&empty);
                let annotations = self.annotations.get(&ctx.server, tool);
                let verdict = g.policy.evaluate(&CallView {
                    server: &ctx.server,
                    tool,
                    arguments,
                    annotations: annotations.as_ref(),
                });
                (intern(tool), verdict)
            }
            Err(why) => {
                return Intercept::Respond(jsonrpc::error(id, jsonrpc::INVALID_PARAMS, why));
            }
        };
        // DLP: the stored, audited and displayed arguments never hold the secrets found.
        let prepared = match scan::prepare(g.dlp.clone(), &ctx.server, &tool, request).await {
            Ok(p) => p,
            Err(why) => {
                tracing::error!(error = %why, "cannot scan a call");
                return Intercept::Respond(jsonrpc::error(
                    id,
                    jsonrpc::INTERNAL_ERROR,
                    "the broker could not scan this call's arguments",
                ));
            }
        };
        let Prepared {
            stored: stored_args,
            findings,
            secrets,
            meta,
            id_secret,
            args_hash,
            shape,
            scrub,
        } = prepared;
        let secrets = secrets.map(|s| match s {
            Ok(()) => Secrets::Found(
                verdict
                    .dlp
                    .or(g.dlp.as_ref().map(|d| d.action))
                    .unwrap_or(DlpAction::Approve),
            ),
            Err(TooManySecrets) => Secrets::TooMany,
        });
        let now = now_ms();
        let seen = g.loops.observe(&shape, now);
        let record = CallRecord {
            id: uuid::Uuid::now_v7().to_string().into(),
            outcome: Outcome::Allowed,
            rule: verdict.rule.clone(),
            reason: verdict.reason.clone(),
            client: ctx.client.clone(),
            server: ctx.server.clone(),
            tool: tool.clone(),
            request_id: id_secret.clone().unwrap_or_else(|| id.clone()),
            session: ctx.session.clone(),
            protocol_version: ctx.protocol_version.clone(),
            arguments: stored_args.into(),
            timings: Timings {
                received_ms,
                decided_ms: now,
                completed_ms: None,
            },
            error: None,
            fingerprint: fingerprint::exact(&ctx.server, &tool, &args_hash).into(),
            args_hash: args_hash.into(),
            policy_version: g.policy.version.clone(),
            hold: None,
            decisions: Vec::new(),
            findings,
            shape: shape.into(),
            signals: Signals {
                repeats: if seen.repeats > 1 { seen.repeats } else { 0 },
                window_ms: if seen.repeats > 1 {
                    g.loops.config.window_ms
                } else {
                    0
                },
                looping: seen.looping,
                throttled: self.throttle.flag(&ctx.client, now),
            },
            trace: ctx.trace.clone(),
        };
        let span = call_span(&record);
        if id_secret.is_some() {
            // Answered with the id the client sent; the record keeps it redacted.
            let refused = self
                .refuse(ctx, record, Refusal::SecretInId)
                .instrument(span)
                .await;
            return match refused {
                Intercept::Respond(mut answer) => {
                    answer["id"] = id;
                    Intercept::Respond(answer)
                }
                other => other,
            };
        }
        let scanned = Scanned {
            secrets,
            meta,
            scrub,
        };
        // The span is attached to the future, not entered across its awaits: an entered span
        // left current while the task is parked leaks into other tasks on the thread, and
        // tracing-subscriber panicked ("tried to clone a span that already closed") under 500
        // concurrent calls.
        self.decide(&g, ctx, request, record, verdict, seen, scanned)
            .instrument(span)
            .await
    }

    /// The guards and the policy's verdict, in order, then what follows from them.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        g: &Guards,
        ctx: &CallContext,
        request: &mut Value,
        mut record: CallRecord,
        verdict: Verdict,
        seen: Seen,
        scanned: Scanned,
    ) -> Intercept {
        let screened = match self.screen(g, ctx, request, &mut record, verdict, seen, &scanned) {
            Ok(s) => s,
            Err(refusal) => return self.refuse(ctx, record, refusal).await,
        };
        let verdict = screened.verdict;
        match verdict.action {
            Action::Allow => {
                if let Err(over) = self.queue.budgets().charge_run(
                    &ctx.server,
                    &record.tool,
                    &ctx.client,
                    now_ms(),
                ) {
                    return self.refuse(ctx, record, Refusal::OverBudget(over)).await;
                }
                tracing::info!("allowed");
                self.forward(ctx, record, screened.rewritten, scanned.scrub)
                    .await
            }
            Action::Deny => {
                let refusal = Refusal::Denied {
                    rule: verdict.rule,
                    reason: verdict.reason,
                };
                self.refuse(ctx, record, refusal).await
            }
            // Held, or let through at once (an approved retry, an allow rule): either way
            // the frontend must forward the redacted request, not the bytes it received.
            Action::Approve => {
                let how = (screened.withheld, screened.rewritten);
                self.hold(ctx, record, &verdict, how, scanned).await
            }
        }
    }

    /// The guards, in the order they apply: a temporary block, the rate limits, loop
    /// detection, then secrets. Each may refuse the call, or change what the policy decided.
    #[allow(clippy::too_many_arguments)]
    fn screen(
        &self,
        g: &Guards,
        ctx: &CallContext,
        request: &mut Value,
        record: &mut CallRecord,
        mut verdict: Verdict,
        seen: Seen,
        scanned: &Scanned,
    ) -> Result<Screened, Refusal> {
        let now = record.timings.decided_ms;
        // A pattern someone rejected and blocked: refused before anything else.
        if let Some(rule) = self
            .queue
            .temp
            .blocking(&record.fingerprint, &record.shape, now)
        {
            return Err(Refusal::Blocked(Box::new(rule)));
        }
        if !g.limiter.is_empty() {
            g.limiter
                .check(&ctx.server, &record.tool, &ctx.client, now)
                .map_err(Refusal::RateLimited)?;
        }
        if seen.looping && verdict.action != Action::Deny {
            let what = format!(
                "{} calls of this shape within {}",
                seen.repeats,
                humantime::format_duration(Duration::from_millis(g.loops.config.window_ms))
            );
            match g.loops.config.action {
                LoopAction::Flag => {}
                LoopAction::Deny => return Err(Refusal::Loop { what }),
                LoopAction::Approve => {
                    if verdict.hold_for_a_person() {
                        verdict.reason = Some(format!("possible runaway loop: {what}"));
                        record.reason = verdict.reason.clone();
                    }
                }
            }
        }
        let mut screened = Screened {
            verdict,
            withheld: false,
            rewritten: false,
        };
        let action = match scanned
            .secrets
            .filter(|_| screened.verdict.action != Action::Deny)
        {
            None => return Ok(screened),
            Some(Secrets::TooMany) => return Err(Refusal::TooManySecrets),
            Some(Secrets::Found(action)) => action,
        };
        let what = record
            .findings
            .iter()
            .map(|f| {
                format!(
                    "{} at {} ({})",
                    f.detector,
                    if f.path.is_empty() { "/" } else { &f.path },
                    f.masked
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        match action {
            DlpAction::Deny => return Err(Refusal::Secrets { what }),
            DlpAction::Redact => {
                if let Some(params) = request.get_mut("params").and_then(Value::as_object_mut) {
                    params.insert("arguments".into(), record.arguments.value());
                    if let Some(meta) = &scanned.meta {
                        params.insert("_meta".into(), meta.clone());
                    }
                    screened.rewritten = true;
                }
                record.reason = Some(format!("secrets redacted before forwarding: {what}"));
            }
            DlpAction::Approve => {
                screened.withheld = true;
                screened.verdict.hold_for_a_person();
                record.reason = Some(format!("secrets in arguments: {what}"));
            }
        }
        Ok(screened)
    }

    /// Refuse a call at once: record it in the audit trail and answer the client with a tool
    /// error saying why.
    async fn refuse(
        &self,
        ctx: &CallContext,
        mut record: CallRecord,
        refusal: Refusal,
    ) -> Intercept {
        refusal.log();
        crate::metrics::global().refused(refusal.kind());
        if let Some(what) = refusal.throttles() {
            self.throttle.refused(&ctx.client, &what, now_ms());
        }
        refusal.apply(&mut record);
        let text = refusal.text(&record.server, &record.tool);
        let id = record.request_id.clone();
        self.store.write(Arc::new(record), Writes::Both).await;
        Intercept::Respond(jsonrpc::tool_error(id, &text, ctx.modern()))
    }

    /// Forward a call: its audit entry now (durably first with `sync_before_forward`), its call
    /// record when the ticket completes.
    /// `rewritten` when DLP replaced the arguments the frontend must send. While the store
    /// cannot write, the call is refused instead (unless `[broker] on_store_error = "forward"`
    /// and fewer than [`RETRY_MAX`] writes wait), and the refusal is recorded once it can
    /// (so the outage shows in the audit trail) while there is room to keep it.
    async fn forward(
        &self,
        ctx: &CallContext,
        record: CallRecord,
        rewritten: bool,
        scrub: Option<Scrub>,
    ) -> Intercept {
        let failing = self.store.health().borrow().clone();
        if let Some(f) = failing {
            let full = f.waiting >= RETRY_MAX;
            if !self.forward_when_store_fails || full {
                let refusal = Refusal::StoreFailing {
                    since_ms: f.since_ms,
                    error: f.error.clone(),
                };
                if !full {
                    return self.refuse(ctx, record, refusal).await;
                }
                refusal.log();
                let text = refusal.text(&record.server, &record.tool);
                return Intercept::Respond(jsonrpc::tool_error(
                    record.request_id,
                    &text,
                    ctx.modern(),
                ));
            }
        }
        if self.sync_before_forward {
            // The entry is made durably (sharing a sync with whatever else is being written)
            // before the call runs. Should that fail, it stays queued like any write the store
            // could not make, so the trail shows the policy's "allowed" followed by the refusal.
            if let Err(e) = self
                .store
                .write_durably(Arc::new(record.clone()), Writes::Audit)
                .await
            {
                let refusal = Refusal::StoreFailing {
                    since_ms: now_ms(),
                    error: e.to_string(),
                };
                return self.refuse(ctx, record, refusal).await;
            }
        } else {
            self.store
                .write(Arc::new(record.clone()), Writes::Audit)
                .await;
        }
        Intercept::Forward(Ticket {
            record: Some(Box::new(record)),
            store: self.store.clone(),
            rewritten,
            scrub,
        })
    }

    /// A call the policy (or a guard) wants a person to see: let an approved retry or an allow
    /// rule through, else hold it.
    async fn hold(
        &self,
        ctx: &CallContext,
        mut record: CallRecord,
        verdict: &Verdict,
        (secrets_withheld, rewritten): (bool, bool),
        scanned: Scanned,
    ) -> Intercept {
        let mode = if ctx.polls_task {
            HoldMode::Task
        } else if verdict.hold.retry {
            HoldMode::Retry
        } else {
            HoldMode::Stream
        };
        if mode == HoldMode::Retry {
            match self.queue.take_grant(&record).await {
                Some(Taken::Approved(approved)) => {
                    tracing::info!(approved = %approved, "retry of an approved call: forwarded once");
                    record.reason =
                        Some(format!("repeat of call {approved}, approved for one retry"));
                    return self.forward(ctx, record, rewritten, scanned.scrub).await;
                }
                Some(Taken::Rejected(original)) => {
                    let by = original.decisions.last().map(|d| d.by.clone());
                    let refusal = Refusal::RetryRejected {
                        original: original.id.clone(),
                        by: by.unwrap_or_default(),
                        reason: original.reason.clone(),
                    };
                    return self.refuse(ctx, record, refusal).await;
                }
                None => {}
            }
            if let Some(waiting) = self.queue.pending_retry(&record) {
                return self
                    .refuse(ctx, record, Refusal::StillPending { waiting })
                    .await;
            }
        }
        if !secrets_withheld
            && verdict.hold.quorum <= 1
            && let Some(rule) = self
                .queue
                .temp
                .take_allowance(&record.fingerprint, now_ms(), |r| {
                    *r.by != *record.client
                        && (verdict.hold.approvers.is_empty()
                            || verdict.hold.approvers.contains(&r.by))
                })
                .await
        {
            if let Err(over) = self.queue.budgets().charge_run(
                &record.server,
                &record.tool,
                &record.client,
                now_ms(),
            ) {
                return self.refuse(ctx, record, Refusal::OverBudget(over)).await;
            }
            tracing::info!(temp_rule = %rule.id, by = %rule.by, "pre-approved by a temporary rule");
            // Consoles see the allowance count down (and the rule go when it is used up).
            self.queue.rules_changed();
            record.reason = Some(format!(
                "pre-approved by {} with temporary rule {} ({} left)",
                rule.by,
                rule.id,
                rule.remaining.unwrap_or(0)
            ));
            record.decisions.push(refusal::rule_decision(
                &rule,
                tollgate_shared::Verdict::Approve,
            ));
            return self.forward(ctx, record, rewritten, scanned.scrub).await;
        }
        let expiry = verdict.hold.expiry.unwrap_or(self.default_expiry);
        record.outcome = Outcome::Pending;
        record.hold = Some(Hold {
            mode,
            // `expiry = "never"` (and anything past the end of time) is u64::MAX.
            expires_ms: u64::try_from(expiry.as_millis())
                .map_or(u64::MAX, |ms| now_ms().saturating_add(ms)),
            quorum: verdict.hold.quorum.max(1),
            approvers: verdict.hold.approvers.clone(),
            // As kept: redacted when the request's `_meta` held secrets.
            progress_token: scanned
                .meta
                .as_ref()
                .and_then(|m| m.get("progressToken"))
                .map(JsonText::new),
            meta: scanned.meta.as_ref().map(JsonText::new),
            retried_ms: None,
            secrets_withheld,
            require_signature: verdict.hold.require_signature,
        });
        let waiting = match self.queue.hold(record.clone()).await {
            Ok(w) => w,
            Err(HoldError::OverBudget(over)) => {
                record.hold = None;
                return self.refuse(ctx, record, Refusal::OverBudget(over)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot hold a call: the store failed");
                let text = refusal::not_queued(&record, &e);
                let id = record.request_id.clone();
                // The client is told the call was not queued, so it must never run or show as
                // held. A hold whose commit failed may still have committed (PostgreSQL lost
                // during COMMIT): the refusal is written under the same id, kept and retried
                // until the store takes it, and ends the held call wherever it is listed.
                record.outcome = Outcome::Blocked;
                record.reason = Some(format!("not queued: {e}"));
                self.store.write(Arc::new(record), Writes::Both).await;
                return Intercept::Respond(jsonrpc::tool_error(id, &text, ctx.modern()));
            }
        };
        if mode == HoldMode::Retry {
            let text = refusal::queued_for_retry(&record, self.retry_ttl);
            return Intercept::Respond(jsonrpc::tool_error(record.request_id, &text, ctx.modern()));
        }
        Intercept::Held(Box::new(Held {
            waiting,
            rewritten,
            scrub: scanned.scrub,
        }))
    }
}
