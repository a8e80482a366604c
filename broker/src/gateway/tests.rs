//! The gateway's decision, guard by guard and rule by rule, in the order they apply: real
//! guards and a real queue over the in-memory store, no sockets.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_policy::guards::budget::{Budget, Budgets};
use tollgate_policy::guards::dlp::{Entropy, MAX_FINDINGS, Scanner};
use tollgate_policy::guards::limits::{Limit, Limiter, Scope};
use tollgate_policy::guards::loops::{LoopAction, LoopConfig, Loops};
use tollgate_policy::guards::{Dlp, DlpAction};
use tollgate_policy::identity::Identity;
use tollgate_policy::{Action, HoldTerms, Policy, Rule, ToolPattern};
use tollgate_shared::audit::{AuditEntry, AuditFilter};
use tollgate_shared::console::{Role, RuleKind, Target, TempRule};
use tollgate_shared::{HoldMode, Outcome, RuleRef, Verdict};
use tollgate_store::memory::MemoryEngine;
use tollgate_store::{Engine, Store};

use super::scan::{OFFLOAD_BYTES, at_least};
use super::*;
use crate::queue::temp_rules::TempRules;

const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";

fn rule(index: usize, name: &str, tools: &str, action: Action) -> Rule {
    Rule {
        id: RuleRef {
            index,
            name: name.into(),
        },
        tools: vec![ToolPattern::new(tools).expect("pattern")],
        when: Vec::new(),
        action,
        reason: None,
        hold: HoldTerms {
            quorum: 1,
            ..HoldTerms::default()
        },
        dlp: None,
    }
}

/// What a test changes from the defaults (no rules, default approve, DLP on with action
/// approve, no limits or budgets, loops flagged at 20).
#[derive(Default)]
struct Setup {
    rules: Vec<Rule>,
    default: Option<Action>,
    dlp: Option<DlpAction>,
    limits: Vec<Limit>,
    loops: Option<LoopConfig>,
    budgets: Vec<Budget>,
    sync_before_forward: bool,
}

struct Harness {
    gateway: Gateway,
    engine: Arc<MemoryEngine>,
}

impl Setup {
    async fn build(self) -> Harness {
        let engine = Arc::new(MemoryEngine::new());
        let store: Arc<dyn Backend> = Store::open(engine.clone()).await.expect("store");
        let retry_ttl = Duration::from_secs(600);
        let queue = Queue::with_guards(
            store.clone(),
            retry_ttl,
            Budgets::new(self.budgets),
            TempRules::in_memory(),
        );
        let gateway = Gateway {
            guards: tollgate_shared::sync::Live::new(Guards {
                policy: Policy {
                    rules: self.rules,
                    default: self.default.unwrap_or(Action::Approve),
                    version: "test".into(),
                },
                dlp: Some(Arc::new(Dlp {
                    scanner: Scanner::new(Some(Entropy::default()), &[]),
                    action: self.dlp.unwrap_or(DlpAction::Approve),
                })),
                limiter: Arc::new(Limiter::new(self.limits)),
                loops: Arc::new(Loops::new(self.loops.unwrap_or_default())),
            }),
            annotations: Arc::default(),
            store,
            queue,
            default_expiry: Duration::from_secs(600),
            retry_ttl,
            throttle: Throttle::default(),
            forward_when_store_fails: false,
            sync_before_forward: self.sync_before_forward,
        };
        Harness { gateway, engine }
    }
}

fn ctx() -> CallContext {
    CallContext {
        client: "agent".into(),
        server: "db".into(),
        session: None,
        protocol_version: None,
        polls_task: false,
        trace: None,
    }
}

/// What came of one call, as the client and the audit trail see it.
struct Seen {
    kind: &'static str,
    text: String,
    request: Value,
    audit: AuditEntry,
    rewritten: bool,
    held: Option<Waiting>,
}

impl Harness {
    async fn call_as(&self, ctx: &CallContext, tool: &str, arguments: Value) -> Seen {
        let mut request = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}});
        let got = self.gateway.intercept(ctx, &mut request, now_ms()).await;
        let (kind, text, rewritten, held) = match got {
            Intercept::Forward(t) => {
                let rewritten = t.rewritten;
                t.complete(None);
                ("forward", String::new(), rewritten, None)
            }
            Intercept::Respond(v) => {
                let text = v
                    .pointer("/result/content/0/text")
                    .or_else(|| v.pointer("/error/message"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                ("respond", text, false, None)
            }
            Intercept::Held(h) => ("hold", String::new(), h.rewritten, Some(h.waiting)),
        };
        self.gateway.store.flush().await;
        let audit = self
            .engine
            .audit_query(&AuditFilter {
                limit: Some(1),
                ..AuditFilter::default()
            })
            .expect("audit")
            .pop()
            .unwrap_or_else(|| panic!("no audit entry for {tool}"));
        if kind == "forward" {
            // A forwarded call's finished record is written by a task its ticket spawns, which a
            // flush right after may overtake: wait for it, so reads see the call.
            for _ in 0..1000 {
                let done = self
                    .engine
                    .call(&audit.call_id)
                    .expect("read")
                    .is_some_and(|r| r.timings.completed_ms.is_some());
                if done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                self.gateway.store.flush().await;
            }
        }
        Seen {
            kind,
            text,
            request,
            audit,
            rewritten,
            held,
        }
    }

    async fn call(&self, tool: &str, arguments: Value) -> Seen {
        self.call_as(&ctx(), tool, arguments).await
    }
}

#[tokio::test]
async fn each_guard_and_rule_decides_in_its_turn() {
    struct Row {
        case: &'static str,
        setup: fn() -> Setup,
        arguments: Value,
        kind: &'static str,
        outcome: Outcome,
        text: &'static str,
    }
    let rows = [
        Row {
            case: "a rule allows",
            setup: || Setup {
                rules: vec![rule(1, "reads", "db/read_*", Action::Allow)],
                ..Setup::default()
            },
            arguments: json!({"path": "/tmp"}),
            kind: "forward",
            outcome: Outcome::Allowed,
            text: "",
        },
        Row {
            case: "a rule denies, with its reason",
            setup: || {
                let mut deny = rule(1, "no-reads", "db/*", Action::Deny);
                deny.reason = Some("use the replica".into());
                Setup {
                    rules: vec![deny],
                    ..Setup::default()
                }
            },
            arguments: json!({}),
            kind: "respond",
            outcome: Outcome::Blocked,
            text: "under rule \"no-reads\" (rule 1 of the broker's policy): use the replica. The call was not run.",
        },
        Row {
            case: "the first matching rule wins",
            setup: || Setup {
                rules: vec![
                    rule(1, "reads", "db/read_*", Action::Approve),
                    rule(2, "all", "db/*", Action::Allow),
                ],
                ..Setup::default()
            },
            arguments: json!({}),
            kind: "hold",
            outcome: Outcome::Pending,
            text: "",
        },
        Row {
            case: "no rule matches: the default decides",
            setup: || Setup {
                rules: vec![rule(1, "writes", "db/write_*", Action::Allow)],
                default: Some(Action::Deny),
                ..Setup::default()
            },
            arguments: json!({}),
            kind: "respond",
            outcome: Outcome::Blocked,
            text: "under rule \"default\" (rule 0",
        },
        Row {
            case: "secrets, DLP deny: refused, naming the finding masked",
            setup: || Setup {
                default: Some(Action::Allow),
                dlp: Some(DlpAction::Deny),
                ..Setup::default()
            },
            arguments: json!({"key": AWS_KEY}),
            kind: "respond",
            outcome: Outcome::Blocked,
            text: "its arguments contain secrets (aws_access_key at /key (AKIA…MPLE (20 chars)))",
        },
        Row {
            case: "secrets, DLP redact: forwarded with the secret replaced",
            setup: || Setup {
                default: Some(Action::Allow),
                dlp: Some(DlpAction::Redact),
                ..Setup::default()
            },
            arguments: json!({"key": AWS_KEY}),
            kind: "forward",
            outcome: Outcome::Allowed,
            text: "",
        },
        Row {
            case: "secrets, DLP approve: an allowed call is held for a person",
            setup: || Setup {
                default: Some(Action::Allow),
                ..Setup::default()
            },
            arguments: json!({"key": AWS_KEY}),
            kind: "hold",
            outcome: Outcome::Pending,
            text: "",
        },
        Row {
            case: "more secrets than a call may carry: refused whatever the DLP action",
            setup: || Setup {
                default: Some(Action::Allow),
                dlp: Some(DlpAction::Redact),
                ..Setup::default()
            },
            arguments: json!({"key": format!("{AWS_KEY} ").repeat(MAX_FINDINGS + 1)}),
            kind: "respond",
            outcome: Outcome::Blocked,
            text: "contain more than 256 secrets",
        },
        Row {
            case: "large arguments (scanned off the async workers), DLP redact: forwarded redacted",
            setup: || Setup {
                default: Some(Action::Allow),
                dlp: Some(DlpAction::Redact),
                ..Setup::default()
            },
            arguments: json!({"key": AWS_KEY, "pad": "x".repeat(OFFLOAD_BYTES)}),
            kind: "forward",
            outcome: Outcome::Allowed,
            text: "",
        },
        Row {
            case: "a rule that denies beats the DLP action",
            setup: || Setup {
                rules: vec![rule(1, "nothing", "db/*", Action::Deny)],
                dlp: Some(DlpAction::Redact),
                ..Setup::default()
            },
            arguments: json!({"key": AWS_KEY}),
            kind: "respond",
            outcome: Outcome::Blocked,
            text: "under rule \"nothing\"",
        },
    ];
    for row in rows {
        let h = (row.setup)().build().await;
        let seen = h.call("read_file", row.arguments).await;
        assert_eq!(seen.kind, row.kind, "{}: {}", row.case, seen.text);
        assert_eq!(seen.audit.outcome, row.outcome, "{}", row.case);
        assert!(seen.text.contains(row.text), "{}: {}", row.case, seen.text);
        let stored = h
            .engine
            .call(&seen.audit.call_id)
            .expect("read")
            .map(|r| r.arguments.to_string())
            .unwrap_or_default();
        assert!(
            !stored.contains(AWS_KEY) && !seen.audit.reason.unwrap_or_default().contains(AWS_KEY),
            "{}: the store never keeps a secret",
            row.case
        );
        if row.case.contains("redact") {
            assert!(seen.rewritten);
            let sent = seen.request["params"]["arguments"]["key"].as_str();
            assert_eq!(sent, Some("[REDACTED:aws_access_key]"), "{}", row.case);
        }
    }
}

#[tokio::test]
async fn large_clean_arguments_are_scanned_aside_and_forwarded_as_they_came() {
    let h = Setup {
        default: Some(Action::Allow),
        ..Setup::default()
    }
    .build()
    .await;
    let arguments = json!({"pad": "x".repeat(OFFLOAD_BYTES), "n": [1, 2, 3]});
    assert!(at_least(&arguments, OFFLOAD_BYTES));
    assert!(!at_least(&json!({"n": [1, 2, 3]}), OFFLOAD_BYTES));
    let seen = h.call("read_file", arguments.clone()).await;
    assert_eq!(seen.kind, "forward");
    assert!(!seen.rewritten);
    assert_eq!(seen.request["params"]["arguments"], arguments);
    assert_eq!(seen.audit.args_hash, fingerprint::args_hash(&arguments));
}

#[tokio::test]
async fn a_temporary_block_refuses_before_the_rate_limit_and_names_who_installed_it() {
    let h = Setup {
        default: Some(Action::Allow),
        limits: vec![Limit {
            name: "tight".into(),
            tools: vec![ToolPattern::new("*").expect("pattern")],
            scope: Scope::Client,
            count: 1,
            per_ms: 60_000,
            burst: 1,
            text: "1/min".into(),
        }],
        ..Setup::default()
    }
    .build()
    .await;
    let first = h.call("query", json!({"q": 1})).await;
    assert_eq!(first.audit.outcome, Outcome::Allowed);
    let limited = h.call("query", json!({"q": 2})).await;
    assert_eq!(limited.audit.outcome, Outcome::RateLimited);
    assert!(
        limited
            .text
            .contains("rate limit \"tight\" (1/min per client) is exhausted. Retry in"),
        "{}",
        limited.text
    );
    let fingerprint = h
        .engine
        .call(&first.audit.call_id)
        .expect("read")
        .expect("stored")
        .fingerprint
        .to_string();
    h.gateway
        .queue
        .temp
        .add(
            TempRule {
                id: "t-2".into(),
                kind: RuleKind::Block,
                fingerprint,
                server: "db".into(),
                tool: "query".into(),
                by: "alice".into(),
                created_ms: 0,
                until_ms: now_ms() + 60_000,
                reason: Some("loop".into()),
                remaining: None,
                hits: 0,
            },
            now_ms(),
        )
        .await
        .expect("add");
    let blocked = h.call("query", json!({"q": 1})).await;
    assert_eq!(blocked.audit.outcome, Outcome::Blocked);
    assert_eq!(blocked.audit.approvers, vec!["alice".to_string()]);
    assert!(
        blocked
            .text
            .contains("alice rejected this repeated call and blocked it until"),
        "{}",
        blocked.text
    );
    // A refused rate-limited client is flagged on its next call, for approvers.
    let other = h.call("other", json!({})).await;
    let flagged = h
        .engine
        .call(&other.audit.call_id)
        .expect("read")
        .expect("stored");
    assert!(
        flagged
            .signals
            .throttled
            .as_deref()
            .is_some_and(|t| t.contains("rate limit \"tight\" refused")),
        "{:?}",
        flagged.signals
    );
}

#[tokio::test]
async fn loops_are_flagged_held_or_refused_as_configured() {
    for (action, kind, outcome) in [
        (LoopAction::Flag, "forward", Outcome::Allowed),
        (LoopAction::Approve, "hold", Outcome::Pending),
        (LoopAction::Deny, "respond", Outcome::Blocked),
    ] {
        let h = Setup {
            default: Some(Action::Allow),
            loops: Some(LoopConfig {
                threshold: 2,
                window_ms: 60_000,
                action,
            }),
            ..Setup::default()
        }
        .build()
        .await;
        let first = h.call("page", json!({"n": 1})).await;
        assert_eq!(first.kind, "forward", "{action:?}: below the threshold");
        let second = h.call("page", json!({"n": 2})).await;
        assert_eq!(
            (second.kind, second.audit.outcome),
            (kind, outcome),
            "{action:?}"
        );
        let record = h
            .engine
            .call(&second.audit.call_id)
            .expect("read")
            .expect("stored");
        assert!(record.signals.looping, "{action:?}");
        match action {
            LoopAction::Approve => assert!(
                record
                    .reason
                    .is_some_and(|r| r.starts_with("possible runaway loop: 2 calls")),
                "{action:?}"
            ),
            LoopAction::Deny => assert!(second.text.contains("looks like a runaway loop")),
            LoopAction::Flag => {}
        }
    }
}

#[tokio::test]
async fn budgets_refuse_allowed_and_held_calls_over_their_cap() {
    let h = Setup {
        rules: vec![rule(1, "risky", "db/drop*", Action::Approve)],
        default: Some(Action::Allow),
        budgets: vec![Budget {
            name: "agents".into(),
            tools: vec![ToolPattern::new("*/*").expect("pattern")],
            max_pending: Some(1),
            max_approved: None,
            window_ms: 3_600_000,
            daily: Some(2.0),
            costs: Vec::new(),
        }],
        ..Setup::default()
    }
    .build()
    .await;
    assert_eq!(h.call("read", json!({})).await.kind, "forward");
    assert_eq!(h.call("drop_a", json!({})).await.kind, "hold");
    let pending_cap = h.call("drop_b", json!({})).await;
    assert_eq!(pending_cap.audit.outcome, Outcome::RateLimited);
    assert!(
        pending_cap
            .text
            .contains("budget \"agents\" is exhausted (at most 1 pending calls per client"),
        "{}",
        pending_cap.text
    );
    let daily = h.call("read", json!({})).await;
    assert_eq!(daily.audit.outcome, Outcome::RateLimited);
    assert!(daily.text.contains("The budget resets at 00:00 UTC."));
}

/// The approver alice decides one call; the decision must be taken.
async fn alice_decides(h: &Harness, id: &str, verdict: Verdict, reason: Option<&str>) {
    let alice = Identity {
        name: "alice".into(),
        role: Role::Approver,
        servers: None,
        signing: Default::default(),
    };
    let target = Target::Ids {
        ids: vec![id.to_string()],
    };
    let out = h
        .gateway
        .queue
        .decide(&alice, &target, verdict, reason)
        .await;
    assert!(out[0].ok, "{out:?}");
}

/// A gateway whose one rule holds every `db/*` call in retry mode.
async fn retry_harness() -> Harness {
    let mut retry = rule(1, "retry", "db/*", Action::Approve);
    retry.hold.retry = true;
    Setup {
        rules: vec![retry],
        ..Setup::default()
    }
    .build()
    .await
}

#[tokio::test]
async fn a_retry_mode_call_is_answered_at_once_and_its_repeat_runs_once_after_approval() {
    let h = retry_harness().await;
    let queued = h.call("drop", json!({"t": 1})).await;
    assert_eq!(queued.kind, "respond");
    assert!(queued.text.contains("is queued as call"), "{}", queued.text);
    let again = h.call("drop", json!({"t": 1})).await;
    assert!(
        again.text.contains("is still awaiting human approval"),
        "{}",
        again.text
    );
    alice_decides(&h, &queued.audit.call_id, Verdict::Approve, None).await;
    let repeat = h.call("drop", json!({"t": 1})).await;
    assert_eq!(
        (repeat.kind, repeat.audit.outcome),
        ("forward", Outcome::Allowed)
    );
    let once_more = h.call("drop", json!({"t": 1})).await;
    assert!(once_more.text.contains("is queued as call"), "only once");
}

#[tokio::test]
async fn a_rejected_retry_mode_call_tells_its_repeat_who_rejected_it_once() {
    let h = retry_harness().await;
    let queued = h.call("drop", json!({"t": 1})).await;
    assert!(queued.text.contains("is queued as call"), "{}", queued.text);
    alice_decides(
        &h,
        &queued.audit.call_id,
        Verdict::Reject,
        Some("use staging"),
    )
    .await;
    // Before, the repeat was queued again and the client never learnt the rejection.
    let repeat = h.call("drop", json!({"t": 1})).await;
    assert_eq!(
        (repeat.kind, repeat.audit.outcome),
        ("respond", Outcome::Blocked)
    );
    assert!(
        repeat
            .text
            .starts_with("Rejected by alice: use staging. The call to db/drop was not run"),
        "{}",
        repeat.text
    );
    let once_more = h.call("drop", json!({"t": 1})).await;
    assert!(once_more.text.contains("is queued as call"), "only once");
}

#[tokio::test]
async fn an_allow_rule_stands_in_for_its_author_but_never_for_the_callers_own_calls() {
    let h = Setup::default().build().await;
    let held = h.call("drop", json!({"t": 1})).await;
    assert_eq!(held.kind, "hold");
    let fingerprint = h
        .engine
        .call(&held.audit.call_id)
        .expect("read")
        .expect("stored")
        .fingerprint
        .to_string();
    let allow = |by: &str| TempRule {
        id: format!("t-{by}"),
        kind: RuleKind::Allow,
        fingerprint: fingerprint.clone(),
        server: "db".into(),
        tool: "drop".into(),
        by: by.into(),
        created_ms: 0,
        until_ms: now_ms() + 60_000,
        reason: None,
        remaining: Some(1),
        hits: 0,
    };
    h.gateway
        .queue
        .temp
        .add(allow("agent"), now_ms())
        .await
        .expect("add");
    assert_eq!(
        h.call("drop", json!({"t": 1})).await.kind,
        "hold",
        "the caller's own rule does not approve its call"
    );
    h.gateway
        .queue
        .temp
        .add(allow("alice"), now_ms())
        .await
        .expect("add");
    let through = h.call("drop", json!({"t": 1})).await;
    assert_eq!(through.kind, "forward");
    assert_eq!(through.audit.approvers, vec!["alice".to_string()]);
    assert_eq!(
        h.call("drop", json!({"t": 1})).await.kind,
        "hold",
        "used up"
    );
}

#[tokio::test]
async fn a_client_that_polls_a_task_is_held_in_task_mode() {
    let h = Setup::default().build().await;
    let ctx = CallContext {
        polls_task: true,
        ..ctx()
    };
    let seen = h.call_as(&ctx, "drop", json!({})).await;
    let waiting = seen.held.expect("held");
    assert_eq!(
        waiting.record.hold.as_ref().map(|h| h.mode),
        Some(HoldMode::Task)
    );
}

#[tokio::test]
async fn malformed_calls_get_invalid_params_and_nothing_is_recorded() {
    let h = Setup::default().build().await;
    for (request, why) in [
        (
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}),
            "tools/call needs params.name, a string",
        ),
        (
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x", "arguments": [1]}}),
            "tools/call params.arguments must be an object",
        ),
    ] {
        let mut request = request;
        let Intercept::Respond(v) = h.gateway.intercept(&ctx(), &mut request, 0).await else {
            panic!("{why}: answered at once");
        };
        assert_eq!(v["error"]["code"], jsonrpc::INVALID_PARAMS);
        assert_eq!(v["error"]["message"], why);
    }
    h.gateway.store.flush().await;
    assert!(
        h.engine
            .audit_query(&AuditFilter::default())
            .expect("audit")
            .is_empty()
    );
}

#[tokio::test]
async fn while_the_store_cannot_write_calls_are_refused_and_the_refusals_recorded_later() {
    let h = Setup {
        default: Some(Action::Allow),
        ..Setup::default()
    }
    .build()
    .await;
    let forwarded = h.call("read_file", json!({"n": 1})).await;
    assert_eq!(forwarded.kind, "forward");
    // The disk fills: the next write fails, and from then on the store says so.
    h.engine.fail_commits(true);
    let mut lost: CallRecord = serde_json::from_value(json!({
        "id": "0190c1a2-0000-7000-8000-0000000000aa", "outcome": "allowed",
        "rule": {"index": 0, "name": "default"}, "client": "agent", "server": "db",
        "tool": "read_file", "request_id": 9, "arguments": {},
        "timings": {"received_ms": 1, "decided_ms": 1}
    }))
    .expect("record");
    lost.timings.completed_ms = Some(2);
    h.gateway.store.write(Arc::new(lost), Writes::Audit).await;
    h.gateway.store.flush().await;
    assert!(h.gateway.store.health().borrow().is_some());
    let mut request = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "read_file", "arguments": {"n": 2}}});
    let Intercept::Respond(answer) = h.gateway.intercept(&ctx(), &mut request, now_ms()).await
    else {
        panic!("forwarded a call the store could not record");
    };
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("cannot write its audit trail"), "{text}");
    // The disk has room again: both the kept write and the refusal are in the trail.
    h.engine.fail_commits(false);
    let mut health = h.gateway.store.health();
    tokio::time::timeout(Duration::from_secs(10), async {
        while health.borrow_and_update().is_some() {
            health.changed().await.expect("writer runs");
        }
    })
    .await
    .expect("the store recovers on its own");
    let trail = h
        .engine
        .audit_query(&AuditFilter::default())
        .expect("audit");
    let outcomes: Vec<_> = trail.iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Allowed, Outcome::Allowed, Outcome::Blocked]
    );
    assert!(
        trail[2]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("the store could not write")),
        "{:?}",
        trail[2].reason
    );
}

#[tokio::test]
async fn with_sync_before_forward_a_call_runs_only_once_its_entry_is_durable() {
    let h = Setup {
        default: Some(Action::Allow),
        sync_before_forward: true,
        ..Setup::default()
    }
    .build()
    .await;
    let mut request = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "read_file", "arguments": {"n": 1}}});
    let Intercept::Forward(ticket) = h.gateway.intercept(&ctx(), &mut request, now_ms()).await
    else {
        panic!("not forwarded");
    };
    // Committed before the call is handed over: no flush, no linger.
    let trail = h
        .engine
        .audit_query(&AuditFilter::default())
        .expect("audit");
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].outcome, Outcome::Allowed);
    ticket.complete(None);
    // The disk fills before the store has noticed: the write fails, so the call is refused
    // rather than run unrecorded (without the setting it would be forwarded and its entry
    // kept for later).
    h.engine.fail_commits(true);
    assert!(h.gateway.store.health().borrow().is_none());
    let mut request = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "read_file", "arguments": {"n": 2}}});
    let Intercept::Respond(answer) = h.gateway.intercept(&ctx(), &mut request, now_ms()).await
    else {
        panic!("forwarded a call whose entry could not be made durable");
    };
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("cannot write its audit trail"), "{text}");
}

#[test]
fn only_valid_traceparents_have_a_trace_id() {
    let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        super::trace_id(ok),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ] {
        assert_eq!(super::trace_id(bad), None, "{bad}");
    }
    // A later version may add fields.
    assert!(super::trace_id("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").is_some());
}
