//! The interception point: what happens to one `tools/call` before it may reach an upstream.
//!
//! The frontend hands every `tools/call` request here. [`Gateway::intercept`] decodes the tool
//! name and arguments, asks the policy, records the call, and returns either a [`Ticket`] (go
//! ahead and forward; complete the ticket when the answer has been relayed), a ready JSON-RPC
//! response to send back instead, or a [`Held`] call: committed to the approval queue, for the
//! frontend to wait on (see `hold`). Retry-mode holds answer at once and let the identical call
//! through once after approval.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_shared::clock::now_ms;
use tollgate_shared::sync::{Mutex, RwLock};
use tollgate_shared::{
    CallRecord, Hold, HoldMode, JsonText, Name, Outcome, Signals, Timings, intern,
};
use tracing::Instrument;

use crate::jsonrpc;
use crate::queue::{Queue, Waiting};
use tollgate_policy::fingerprint;
use tollgate_policy::guards::DlpAction;
use tollgate_policy::guards::loops::LoopAction;
use tollgate_policy::{Action, CallView, Policy, Verdict};
use tollgate_store::{Backend, Writes};

/// Tool annotations learned from upstreams' `tools/list` answers, per server and tool.
#[derive(Default)]
pub struct Annotations {
    map: RwLock<HashMap<String, HashMap<String, Value>>>,
}

impl Annotations {
    /// Learn from a `tools/list` result object (`{"tools": [...]}`).
    pub fn learn(&self, server: &str, result: &Value) {
        let Some(tools) = result.get("tools").and_then(Value::as_array) else {
            return;
        };
        let mut learned = Vec::with_capacity(tools.len());
        for t in tools {
            if let Some(name) = t.get("name").and_then(Value::as_str) {
                learned.push((
                    name.to_string(),
                    t.get("annotations").cloned().unwrap_or_else(|| json!({})),
                ));
            }
        }
        let mut map = self.map.write();
        let entry = map.entry(server.to_string()).or_default();
        let n = learned.len();
        entry.extend(learned);
        tracing::debug!(server, tools = n, "learned tool annotations");
    }

    /// Learn from any JSON-RPC response if it answers a `tools/list`.
    pub fn learn_from_response(&self, server: &str, response: &Value) {
        if let Some(result) = response.get("result") {
            self.learn(server, result);
        }
    }

    /// The annotations of a tool, if its server has listed it.
    pub fn get(&self, server: &str, tool: &str) -> Option<Value> {
        let map = self.map.read();
        map.get(server)?.get(tool).cloned()
    }
}

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
    Hold(Box<Held>),
}

/// A call waiting in the approval queue.
pub struct Held {
    /// The queue's handle (with the record as stored).
    pub waiting: Waiting,
    /// DLP rewrote the request's arguments: re-serialise it before forwarding.
    pub rewritten: bool,
}

/// A forwarded call whose completion is still to be recorded.
pub struct Ticket {
    record: Option<Box<CallRecord>>,
    store: Arc<dyn Backend>,
    /// DLP rewrote the request's arguments: re-serialise it before forwarding.
    pub rewritten: bool,
}

impl Ticket {
    /// Take the record out without recording a completion (someone else will).
    pub fn disarm(mut self) -> Option<CallRecord> {
        self.record.take().map(|r| *r)
    }

    /// Record that the upstream answered (`error` is `Some` when forwarding failed).
    pub fn complete(mut self, error: Option<String>) {
        self.finish(error);
    }

    fn finish(&mut self, error: Option<String>) {
        if let Some(mut record) = self.record.take() {
            record.timings.completed_ms = Some(now_ms());
            record.error = error;
            let store = self.store.clone();
            tokio::spawn(async move { store.write(Arc::new(*record), Writes::Record).await });
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.record.is_some() {
            self.finish(Some(
                "the response was not relayed in full: the client or upstream went away".into(),
            ));
        }
    }
}

/// Policy, annotations, the store and the queue: everything interception needs.
pub struct Gateway {
    /// The rules.
    pub policy: Policy,
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
    /// The DLP guard, unless `[dlp] enabled = false`.
    pub dlp: Option<tollgate_policy::guards::Dlp>,
    /// Rate limits.
    pub limiter: tollgate_policy::guards::limits::Limiter,
    /// Loop detection.
    pub loops: tollgate_policy::guards::loops::Loops,
    /// Recent refusals by rate limits and budgets, per client, for approvers' flags.
    pub throttle: Throttle,
}

/// Recent rate-limit and budget refusals per client, so approvers see that a client whose call
/// they judge is also being throttled.
#[derive(Default)]
pub struct Throttle {
    recent: Mutex<HashMap<String, (String, u32, u64)>>,
}

/// How long a refusal keeps a client flagged.
const THROTTLE_WINDOW_MS: u64 = 60_000;

impl Throttle {
    fn refused(&self, client: &str, what: &str, now: u64) {
        let mut recent = self.recent.lock();
        if recent.len() > 10_000 {
            recent.retain(|_, (_, _, at)| *at + THROTTLE_WINDOW_MS > now);
        }
        let e = recent
            .entry(client.to_string())
            .or_insert_with(|| (String::new(), 0, 0));
        if e.2 + THROTTLE_WINDOW_MS <= now {
            e.1 = 0;
        }
        *e = (what.to_string(), e.1 + 1, now);
    }

    fn flag(&self, client: &str, now: u64) -> Option<String> {
        let recent = self.recent.lock();
        let (what, n, at) = recent.get(client)?;
        (at + THROTTLE_WINDOW_MS > now).then(|| {
            format!(
                "{what} refused {n} call{} from {client} in the last minute",
                if *n == 1 { "" } else { "s" }
            )
        })
    }
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
        let params = request.get("params");
        let Some(tool) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
            return Intercept::Respond(jsonrpc::error(
                id,
                jsonrpc::INVALID_PARAMS,
                "tools/call needs params.name, a string",
            ));
        };
        let empty = json!({});
        let arguments = match params.and_then(|p| p.get("arguments")) {
            None | Some(Value::Null) => &empty,
            Some(a @ Value::Object(_)) => a,
            Some(_) => {
                return Intercept::Respond(jsonrpc::error(
                    id,
                    jsonrpc::INVALID_PARAMS,
                    "tools/call params.arguments must be an object",
                ));
            }
        };
        let now = now_ms();
        let annotations = self.annotations.get(&ctx.server, tool);
        let view = CallView {
            server: &ctx.server,
            tool,
            arguments,
            annotations: annotations.as_ref(),
        };
        let mut verdict = self.policy.evaluate(&view);
        // DLP: the stored, audited and displayed arguments never hold the secrets found.
        let mut findings = Vec::new();
        let mut stored_args = arguments.clone();
        let mut dlp_action = None;
        if let Some(dlp) = &self.dlp {
            findings = dlp.scanner.scan(arguments);
            if !findings.is_empty() {
                dlp.scanner.redact(&mut stored_args);
                dlp_action = Some(verdict.dlp.unwrap_or(dlp.action));
            }
        }
        let tool_name = intern(tool);
        let tool = &*tool_name;
        let args_hash = fingerprint::args_hash(&stored_args);
        let shape = fingerprint::shape_fingerprint(&ctx.server, tool, &stored_args);
        let seen = self.loops.observe(&shape, now);
        let span = tracing::info_span!("call", client = %ctx.client, server = %ctx.server, tool, rule = %verdict.rule.name);
        // The span is attached to the future, not entered across its awaits: an entered span
        // left current while the task is parked leaks into other tasks on the thread, and
        // tracing-subscriber panicked ("tried to clone a span that already closed") under 500
        // concurrent calls.
        async {
            let mut record = CallRecord {
                id: uuid::Uuid::now_v7().to_string().into(),
                outcome: Outcome::Allowed,
                rule: verdict.rule.clone(),
                reason: verdict.reason.clone(),
                client: ctx.client.clone(),
                server: ctx.server.clone(),
                tool: tool_name.clone(),
                request_id: id.clone(),
                session: ctx.session.clone(),
                protocol_version: ctx.protocol_version.clone(),
                arguments: stored_args.into(),
                timings: Timings {
                    received_ms,
                    decided_ms: now,
                    completed_ms: None,
                },
                error: None,
                fingerprint: fingerprint::exact(&ctx.server, tool, &args_hash).into(),
                args_hash: args_hash.into(),
                policy_version: self.policy.version.clone(),
                hold: None,
                decisions: Vec::new(),
                findings,
                shape: shape.into(),
                signals: Signals {
                    repeats: if seen.repeats > 1 { seen.repeats } else { 0 },
                    window_ms: if seen.repeats > 1 {
                        self.loops.config.window_ms
                    } else {
                        0
                    },
                    looping: seen.looping,
                    throttled: self.throttle.flag(&ctx.client, now),
                },
            };
            // A pattern someone rejected and blocked: refused before anything else.
            if let Some(rule) = self
                .queue
                .temp
                .blocking(&record.fingerprint, &record.shape, now)
            {
                tracing::info!(temp_rule = %rule.id, by = %rule.by, "blocked by a temporary rule");
                let until = tollgate_shared::clock::rfc3339_seconds(rule.until_ms);
                let because = rule
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                record.rule = tollgate_shared::RuleRef {
                    index: 0,
                    name: rule.id.as_str().into(),
                };
                record
                    .decisions
                    .push(rule_decision(&rule, tollgate_shared::Verdict::Reject));
                let text = format!(
                    "Tollgate refused this call to {}/{tool} at once: {} rejected this repeated call and blocked it until {until} (temporary rule {}){because}. The call was not run.",
                    ctx.server, rule.by, rule.id
                );
                let reason = format!(
                    "temporary rule {} by {} until {until}{because}",
                    rule.id, rule.by
                );
                return self
                    .refuse(ctx, record, Outcome::Blocked, Some(reason), &text)
                    .await;
            }
            if !self.limiter.is_empty()
                && let Err(l) = self.limiter.check(&ctx.server, tool, &ctx.client, now)
            {
                let wait = l.retry_after_ms.div_ceil(1000).max(1);
                tracing::info!(limit = %l.limit, retry_after_s = wait, "rate limited");
                self.throttle
                    .refused(&ctx.client, &format!("rate limit \"{}\"", l.limit), now);
                let reason = format!("rate limit \"{}\" ({}): retry in {wait} s", l.limit, l.rule);
                let text = format!(
                    "Tollgate refused this call to {}/{tool}: rate limit \"{}\" ({}) is exhausted. Retry in {wait} s.",
                    ctx.server, l.limit, l.rule
                );
                return self
                    .refuse(ctx, record, Outcome::RateLimited, Some(reason), &text)
                    .await;
            }
            if seen.looping && verdict.action != Action::Deny {
                let what = format!(
                    "{} calls of this shape within {}",
                    seen.repeats,
                    humantime::format_duration(Duration::from_millis(self.loops.config.window_ms))
                );
                match self.loops.config.action {
                    LoopAction::Flag => {}
                    LoopAction::Deny => {
                        tracing::info!(repeats = seen.repeats, "blocked: runaway loop");
                        let text = format!(
                            "Tollgate blocked this call to {}/{tool}: it looks like a runaway loop ({what}). The call was not run. Stop repeating it.",
                            ctx.server
                        );
                        let reason = format!("runaway loop: {what}");
                        return self
                            .refuse(ctx, record, Outcome::Blocked, Some(reason), &text)
                            .await;
                    }
                    LoopAction::Approve => {
                        if verdict.hold_for_a_person() {
                            verdict.reason = Some(format!("possible runaway loop: {what}"));
                            record.reason = verdict.reason.clone();
                        }
                    }
                }
            }
            let mut withheld = false;
            let mut rewritten = false;
            if let Some(action) = dlp_action
                && verdict.action != Action::Deny
            {
                let what: Vec<String> = record
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
                    .collect();
                let what = what.join(", ");
                match action {
                    DlpAction::Deny => {
                        tracing::info!(
                            findings = record.findings.len(),
                            "blocked: secrets in arguments"
                        );
                        let text = format!(
                            "Tollgate blocked this call to {}/{tool}: its arguments contain secrets ({what}). The call was not run. Remove the secrets and try again.",
                            ctx.server
                        );
                        let reason = format!("secrets in arguments: {what}");
                        return self
                            .refuse(ctx, record, Outcome::Blocked, Some(reason), &text)
                            .await;
                    }
                    DlpAction::Redact => {
                        if let Some(params) = request.get_mut("params").and_then(Value::as_object_mut) {
                            params.insert("arguments".into(), record.arguments.value());
                            rewritten = true;
                        }
                        record.reason = Some(format!("secrets redacted before forwarding: {what}"));
                    }
                    DlpAction::Approve => {
                        withheld = true;
                        verdict.hold_for_a_person();
                        record.reason = Some(format!("secrets in arguments: {what}"));
                    }
                }
            }
            match verdict.action {
                Action::Allow => {
                    if let Err(over) =
                        self.queue
                            .budgets()
                            .charge_run(&ctx.server, tool, &ctx.client, now_ms())
                    {
                        return self.over_budget(ctx, record, &over).await;
                    }
                    tracing::info!("allowed");
                    self.forward(record, rewritten).await
                }
                Action::Deny => {
                    let because = verdict
                        .reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    let text = format!(
                        "Tollgate blocked this call to {}/{tool} under rule \"{}\" (rule {} of the broker's policy){because}. The call was not run.",
                        ctx.server, verdict.rule.name, verdict.rule.index,
                    );
                    tracing::info!("blocked");
                    self.refuse(ctx, record, Outcome::Blocked, None, &text)
                        .await
                }
                Action::Approve => {
                    // Held, or let through at once (an approved retry, an allow rule): either way
                    // the frontend must forward the redacted request, not the bytes it received.
                    self.hold(ctx, request, record, &verdict, withheld, rewritten)
                        .await
                }
            }
        }
        .instrument(span)
        .await
    }
}

impl Gateway {
    /// Refuse a call at once: record it with `outcome` (and `reason`, when given) in the audit
    /// trail, and answer the client with `text` as a tool error.
    async fn refuse(
        &self,
        ctx: &CallContext,
        mut record: CallRecord,
        outcome: Outcome,
        reason: Option<String>,
        text: &str,
    ) -> Intercept {
        record.outcome = outcome;
        if reason.is_some() {
            record.reason = reason;
        }
        let id = record.request_id.clone();
        self.store.write(Arc::new(record), Writes::Both).await;
        Intercept::Respond(jsonrpc::tool_error(id, text, ctx.modern()))
    }

    async fn over_budget(
        &self,
        ctx: &CallContext,
        record: CallRecord,
        over: &tollgate_policy::guards::budget::OverBudget,
    ) -> Intercept {
        tracing::info!(budget = %over.budget, "over budget");
        self.throttle.refused(
            &ctx.client,
            &format!("budget \"{}\"", over.budget),
            now_ms(),
        );
        let text = format!(
            "Tollgate refused this call to {}/{}: budget \"{}\" is exhausted ({}). {}",
            record.server, record.tool, over.budget, over.why, over.retry
        );
        let reason = format!("budget \"{}\": {}", over.budget, over.why);
        self.refuse(ctx, record, Outcome::RateLimited, Some(reason), &text)
            .await
    }

    /// Forward a call: its audit entry now, its call record when the ticket completes.
    /// `rewritten` when DLP replaced the arguments the frontend must send.
    async fn forward(&self, record: CallRecord, rewritten: bool) -> Intercept {
        self.store
            .write(Arc::new(record.clone()), Writes::Audit)
            .await;
        Intercept::Forward(Ticket {
            record: Some(Box::new(record)),
            store: self.store.clone(),
            rewritten,
        })
    }

    async fn hold(
        &self,
        ctx: &CallContext,
        request: &Value,
        mut record: CallRecord,
        verdict: &Verdict,
        secrets_withheld: bool,
        rewritten: bool,
    ) -> Intercept {
        let id = record.request_id.clone();
        let call = format!("{}/{}", record.server, record.tool);
        let expiry = verdict.hold.expiry.unwrap_or(self.default_expiry);
        let mode = if ctx.polls_task {
            HoldMode::Task
        } else if verdict.hold.retry {
            HoldMode::Retry
        } else {
            HoldMode::Stream
        };
        if mode == HoldMode::Retry {
            if let Some(approved) = self.queue.take_grant(&record).await {
                tracing::info!(approved = %approved, "retry of an approved call: forwarded once");
                record.reason = Some(format!("repeat of call {approved}, approved for one retry"));
                return self.forward(record, rewritten).await;
            }
            if let Some(waiting) = self.queue.pending_retry(&record) {
                let text = format!(
                    "Tollgate: this call to {call} is still awaiting human approval (call {waiting}). It was not run. Repeat the identical call after it is approved."
                );
                let reason = format!("still awaiting approval as call {waiting}");
                return self
                    .refuse(ctx, record, Outcome::Blocked, Some(reason), &text)
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
        {
            if let Err(over) = self.queue.budgets().charge_run(
                &record.server,
                &record.tool,
                &record.client,
                now_ms(),
            ) {
                return self.over_budget(ctx, record, &over).await;
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
            record
                .decisions
                .push(rule_decision(&rule, tollgate_shared::Verdict::Approve));
            return self.forward(record, rewritten).await;
        }
        record.outcome = Outcome::Pending;
        record.hold = Some(Hold {
            mode,
            expires_ms: now_ms() + expiry.as_millis() as u64,
            quorum: verdict.hold.quorum.max(1),
            approvers: verdict.hold.approvers.clone(),
            progress_token: request
                .pointer("/params/_meta/progressToken")
                .map(JsonText::new),
            meta: request.pointer("/params/_meta").map(JsonText::new),
            retried_ms: None,
            secrets_withheld,
        });
        let waiting = match self.queue.hold(record.clone()).await {
            Ok(w) => w,
            Err(crate::queue::HoldError::OverBudget(over)) => {
                record.hold = None;
                return self.over_budget(ctx, record, &over).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot hold a call: the store failed");
                let text = format!(
                    "Tollgate: this call to {call} needs human approval, but the broker could not queue it ({e}). It was not run; try again later."
                );
                return Intercept::Respond(jsonrpc::tool_error(id, &text, ctx.modern()));
            }
        };
        if mode == HoldMode::Retry {
            let text = format!(
                "Tollgate: this call to {call} needs human approval under rule \"{}\" and is queued as call {}. It was not run yet. Once an approver approves it, repeat the identical call within {} and it will run once.",
                record.rule.name,
                record.id,
                humantime::format_duration(self.retry_ttl),
            );
            return Intercept::Respond(jsonrpc::tool_error(id, &text, ctx.modern()));
        }
        Intercept::Hold(Box::new(Held { waiting, rewritten }))
    }
}

/// The decision a temporary rule stands for, recorded on the calls it answers (so the audit
/// trail names the person who installed it).
fn rule_decision(
    rule: &tollgate_shared::console::TempRule,
    verdict: tollgate_shared::Verdict,
) -> tollgate_shared::Decision {
    tollgate_shared::Decision {
        by: rule.by.clone(),
        verdict,
        reason: rule.reason.clone(),
        at_ms: rule.created_ms,
    }
}
