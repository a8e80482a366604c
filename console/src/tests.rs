//! State and rendering tests: `update` without a terminal, and every view drawn into ratatui's
//! `TestBackend` at 80×24 and 160×48, compared with `insta` snapshots.

use std::sync::Arc;
use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde_json::json;
use tollgate_shared::audit::AuditEntry;
use tollgate_shared::console::{ClientMsg, DecideResult, Refusal, Role, ServerMsg, Target};
use tollgate_shared::{
    CallRecord, Decision, Hold, HoldMode, Name, Outcome, RuleRef, Timings, Verdict,
};

use crate::app::{Action, App, Grouping, Link, Prompt, View, update};
use crate::client::{Event, Me};
use crate::keys::KeyMap;
use crate::ui;

pub(crate) const NOW: u64 = 1_764_000_000_000;

pub(crate) fn call(n: u64, tool: &str, args: serde_json::Value, fingerprint: &str) -> CallRecord {
    CallRecord {
        id: format!("01a20000-0000-7000-8000-{n:012}").into(),
        outcome: Outcome::Pending,
        rule: RuleRef {
            index: 2,
            name: "needs-a-human".into(),
        },
        reason: None,
        client: "agent-7".into(),
        server: "db".into(),
        tool: tool.into(),
        request_id: json!(n),
        session: None,
        protocol_version: Some("2025-11-25".into()),
        arguments: args.into(),
        timings: Timings {
            received_ms: NOW - 60_000 + n * 1000,
            decided_ms: NOW - 60_000 + n * 1000,
            completed_ms: None,
        },
        error: None,
        args_hash: Default::default(),
        fingerprint: fingerprint.into(),
        policy_version: "abc".into(),
        hold: Some(Hold {
            mode: HoldMode::Stream,
            expires_ms: NOW + 540_000 + n * 1000,
            quorum: 1,
            approvers: vec![],
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

pub(crate) fn key(c: char) -> Action {
    Action::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

pub(crate) fn code(k: KeyCode) -> Action {
    Action::Key(KeyEvent::new(k, KeyModifiers::NONE))
}

pub(crate) fn typed(app: &mut App, text: &str) {
    for c in text.chars() {
        update(app, key(c));
    }
}

/// A connected console with a mixed queue: two deploys, a 500-call loop and a wire transfer.
fn sample() -> App {
    let mut app = App::new(
        "ws://127.0.0.1:8081/v1/console".into(),
        KeyMap::default(),
        true,
        NOW,
    );
    let mut pending = vec![
        call(
            1,
            "execute_sql",
            json!({"query": "DROP TABLE orders", "database": "prod"}),
            "fp-drop",
        ),
        call(
            2,
            "execute_sql",
            json!({"query": "DROP TABLE orders_archive", "database": "prod"}),
            "fp-drop2",
        ),
        call(
            3,
            "transfer",
            json!({"to": "acct-991", "amount": 50000, "memo": "Q3 vendor payment", "api_key": "[REDACTED:secret_field]"}),
            "fp-wire",
        ),
    ];
    // The DLP guard found a secret in the transfer; the console only ever sees it masked.
    pending[2].findings.push(tollgate_shared::Finding {
        detector: "secret_field".into(),
        path: "/api_key".into(),
        masked: "sk_l…9dc2 (32 chars)".into(),
    });
    pending[2].signals.throttled =
        Some("rate limit \"transfers\" refused 3 calls from agent-7 in the last minute".into());
    let looping = tollgate_shared::Signals {
        repeats: 500,
        window_ms: 60_000,
        looping: true,
        throttled: None,
    };
    for i in 0..500 {
        let mut c = call(
            10 + i,
            "delete_row",
            json!({"table": "sessions", "id": 7}),
            "fp-loop",
        );
        c.shape = "sh-delete".into();
        c.signals = looping.clone();
        pending.push(c);
    }
    // Two more rows of the same shape with other ids: one pattern when grouped by shape.
    for (n, id) in [(600, 8), (601, 9)] {
        let mut c = call(
            n,
            "delete_row",
            json!({"table": "sessions", "id": id}),
            &format!("fp-del{id}"),
        );
        c.shape = "sh-delete".into();
        pending.push(c);
    }
    update(
        &mut app,
        Action::Broker(Event::Connected(
            Me {
                identity: "alice".into(),
                role: Role::Approver,
                servers: None,
            },
            pending.into_iter().map(Arc::new).collect(),
        )),
    );
    app
}

pub(crate) fn screen(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    t.draw(|f| ui::render(app, f)).expect("draw");
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        let mut line = String::new();
        for x in 0..w {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn snap(name: &str, app: &App) {
    insta::assert_snapshot!(format!("{name}_80x24"), screen(app, 80, 24));
    insta::assert_snapshot!(format!("{name}_160x48"), screen(app, 160, 48));
}

#[test]
fn view_queue_ungrouped() {
    let mut app = sample();
    update(&mut app, key('G'));
    assert_eq!(app.grouping, Grouping::Flat);
    snap("queue", &app);
}

#[test]
fn view_groups_by_default() {
    snap("groups", &sample());
}

#[test]
fn view_detail() {
    let mut app = sample();
    update(&mut app, key('j'));
    update(&mut app, key('j'));
    update(&mut app, code(KeyCode::Enter));
    assert_eq!(app.view, View::Detail);
    snap("detail", &app);
}

#[test]
fn view_diff_against_the_most_similar_earlier_call() {
    let mut app = sample();
    update(&mut app, key('j'));
    update(&mut app, key('d'));
    assert_eq!(app.view, View::Diff);
    assert_eq!(
        app.diff_base().map(|c| c.tool.clone()),
        Some("execute_sql".into())
    );
    snap("diff", &app);
}

#[test]
fn view_bulk_confirm() {
    let mut app = sample();
    // The loop group is the biggest; put the cursor on it.
    let at = app
        .rows()
        .iter()
        .position(|r| r.count() == 500)
        .expect("group");
    for _ in 0..at {
        update(&mut app, key('j'));
    }
    assert!(update(&mut app, key('r')).is_none(), "a group asks first");
    snap("bulk_confirm", &app);
}

#[test]
fn view_audit() {
    let mut app = sample();
    let sent = update(&mut app, key('u'));
    assert!(matches!(sent, Some(ClientMsg::AuditQuery { .. })));
    let entries = (0..3)
        .map(|i| AuditEntry {
            seq: i + 1,
            at_ms: NOW - 30_000 + i * 1000,
            call_id: format!("c{i}"),
            outcome: [Outcome::Pending, Outcome::Rejected, Outcome::Approved][i as usize],
            client: "agent-7".into(),
            server: "db".into(),
            tool: "execute_sql".into(),
            request_id: json!(i),
            rule: RuleRef {
                index: 2,
                name: "needs-a-human".into(),
            },
            reason: (i == 1).then(|| "use the staging database".to_string()),
            args_hash: String::new(),
            approvers: if i == 0 { vec![] } else { vec!["bob".into()] },
            error: None,
            signatures: Vec::new(),
            prev_hash: String::new(),
            hash: String::new(),
        })
        .collect();
    update(
        &mut app,
        Action::Broker(Event::Message(Box::new(ServerMsg::AuditResult {
            req: Some(1),
            entries,
        }))),
    );
    snap("audit", &app);
}

#[test]
fn view_help() {
    let mut app = sample();
    update(&mut app, key('?'));
    snap("help", &app);
}

#[test]
fn view_disconnected() {
    let mut app = sample();
    update(
        &mut app,
        Action::Broker(Event::Disconnected(
            "cannot reach the broker at ws://127.0.0.1:8081/v1/console: Connection refused".into(),
            Duration::from_secs(4),
        )),
    );
    snap("disconnected", &app);
}

#[test]
fn view_empty_queue() {
    let mut app = App::new("ws://x".into(), KeyMap::default(), true, NOW);
    update(
        &mut app,
        Action::Broker(Event::Connected(
            Me {
                identity: "vic".into(),
                role: Role::Viewer,
                servers: None,
            },
            vec![],
        )),
    );
    insta::assert_snapshot!("empty_80x24", screen(&app, 80, 24));
}

#[test]
fn approving_one_call_sends_its_id_and_rejecting_asks_for_a_reason() {
    let mut app = sample();
    let first = app.current().expect("row").call.id.clone();
    let sent = update(&mut app, key('a'));
    assert_eq!(
        sent,
        Some(ClientMsg::Decide {
            req: Some(1),
            target: Target::Ids {
                ids: vec![first.to_string()]
            },
            verdict: Verdict::Approve,
            reason: None,
            block_for_ms: None,
            allow_next: None,
            signed: None,
        })
    );
    assert!(update(&mut app, key('r')).is_none());
    assert!(matches!(app.prompt, Some(Prompt::Reason { .. })));
    typed(&mut app, "use staging");
    let sent = update(&mut app, code(KeyCode::Enter));
    assert!(matches!(
        sent,
        Some(ClientMsg::Decide { verdict: Verdict::Reject, reason: Some(ref r), .. }) if r == "use staging"
    ));
    // Esc in the reason prompt cancels without sending.
    update(&mut app, key('r'));
    assert!(update(&mut app, code(KeyCode::Esc)).is_none());
    assert!(app.prompt.is_none());
    assert!(
        app.notes
            .back()
            .is_some_and(|n| n.contains("nothing was decided"))
    );
}

#[test]
fn a_500_call_group_is_rejected_with_one_decision_by_fingerprint() {
    let mut app = sample();
    assert_eq!(app.rows().len(), 6);
    let at = app
        .rows()
        .iter()
        .position(|r| r.count() == 500)
        .expect("group");
    for _ in 0..at {
        update(&mut app, key('j'));
    }
    update(&mut app, key('r'));
    assert!(
        matches!(app.prompt, Some(Prompt::Confirm { count: 500, ref summary, .. }) if summary == "db/delete_row ×500")
    );
    update(&mut app, key('y'));
    typed(&mut app, "loop");
    let sent = update(&mut app, code(KeyCode::Enter));
    assert_eq!(
        sent,
        Some(ClientMsg::Decide {
            req: Some(1),
            target: Target::Fingerprint {
                fingerprint: "fp-loop".into()
            },
            verdict: Verdict::Reject,
            reason: Some("loop".into()),
            block_for_ms: None,
            allow_next: None,
            signed: None,
        })
    );
}

#[test]
fn bulk_selection_by_filter_decides_after_confirmation() {
    let mut app = sample();
    update(&mut app, key('/'));
    typed(&mut app, "tool:execute");
    update(&mut app, code(KeyCode::Enter));
    assert_eq!(app.rows().len(), 2);
    update(&mut app, key('*'));
    assert_eq!(app.selected.len(), 2);
    assert!(update(&mut app, key('A')).is_none());
    assert!(matches!(app.prompt, Some(Prompt::Confirm { count: 2, .. })));
    let sent = update(&mut app, key('y'));
    match sent {
        Some(ClientMsg::Decide {
            target: Target::Ids { ids },
            verdict: Verdict::Approve,
            ..
        }) => assert_eq!(ids.len(), 2),
        other => panic!("unexpected {other:?}"),
    }
    assert!(app.selected.is_empty());
    // n cancels a confirmation.
    update(&mut app, key(' '));
    update(&mut app, key('R'));
    assert!(update(&mut app, key('n')).is_none());
    assert!(app.prompt.is_none());
}

#[test]
fn space_toggles_and_moves_and_nothing_selected_says_so() {
    let mut app = sample();
    update(&mut app, key('G'));
    update(&mut app, key('G'));
    update(&mut app, key('R'));
    assert!(
        app.notes
            .back()
            .is_some_and(|n| n.starts_with("nothing selected"))
    );
    update(&mut app, key(' '));
    assert_eq!(app.selected.len(), 1);
    assert_eq!(app.cursor, 1);
    update(&mut app, key('k'));
    update(&mut app, key(' '));
    assert!(app.selected.is_empty());
}

#[test]
fn new_arrivals_do_not_steal_the_cursor() {
    let mut app = sample();
    update(&mut app, key('G'));
    update(&mut app, key('G'));
    update(&mut app, key('s'));
    update(&mut app, key('s')); // sort by tool
    update(&mut app, key('j'));
    let before = app.current().expect("row").call.id.clone();
    // An earlier-sorting tool arrives above the cursor.
    let mut new = call(900, "alter_table", json!({}), "fp-new");
    new.timings.received_ms = NOW;
    update(
        &mut app,
        Action::Broker(Event::Message(Box::new(ServerMsg::CallPending {
            call: Arc::new(new),
        }))),
    );
    assert_eq!(app.current().expect("row").call.id, before);
}

#[test]
fn a_call_decided_elsewhere_leaves_with_a_note_saying_by_whom() {
    let mut app = sample();
    let mut c = app.current().expect("row").call.as_ref().clone();
    c.outcome = Outcome::Rejected;
    c.reason = Some("not today".into());
    c.decisions.push(Decision {
        by: "bob".into(),
        verdict: Verdict::Reject,
        reason: Some("not today".into()),
        at_ms: NOW,
        signed: None,
    });
    update(
        &mut app,
        Action::Broker(Event::Message(Box::new(ServerMsg::CallDecided {
            call: Arc::new(c.clone()),
        }))),
    );
    assert!(!app.calls.contains_key(&c.id));
    assert_eq!(
        app.notes.back().map(String::as_str),
        Some("db/execute_sql rejected by bob: not today")
    );
}

#[test]
fn refusals_from_the_broker_are_shown() {
    let mut app = sample();
    update(&mut app, key('a'));
    assert_eq!(app.waiting, 1);
    update(
        &mut app,
        Action::Broker(Event::Message(Box::new(ServerMsg::Decided {
            req: Some(1),
            results: vec![DecideResult {
                id: "x".into(),
                ok: false,
                refusal: Some(Refusal::AlreadyClosed),
                outcome: Some(Outcome::Approved),
                message: "already approved by bob at 2026-11-24T18:50:56Z".into(),
            }],
            rule: None,
            rule_refused: None,
        }))),
    );
    assert_eq!(app.waiting, 0);
    assert!(
        app.notes
            .back()
            .is_some_and(|n| n == "refused: already approved by bob at 2026-11-24T18:50:56Z")
    );
}

#[test]
fn reconnecting_resyncs_the_queue_from_the_new_snapshot() {
    let mut app = sample();
    update(&mut app, key(' '));
    update(
        &mut app,
        Action::Broker(Event::Disconnected("gone".into(), Duration::from_secs(1))),
    );
    assert!(matches!(app.link, Link::Down(..)));
    let keep = call(
        1,
        "execute_sql",
        json!({"query": "DROP TABLE orders", "database": "prod"}),
        "fp-drop",
    );
    update(
        &mut app,
        Action::Broker(Event::Connected(
            Me {
                identity: "alice".into(),
                role: Role::Approver,
                servers: None,
            },
            vec![Arc::new(keep.clone())],
        )),
    );
    assert_eq!(app.link, Link::Up);
    assert_eq!(app.calls.len(), 1);
    assert_eq!(app.current().map(|r| r.call.id.clone()), Some(keep.id));
    // A snapshot after falling behind prunes selections of calls that are gone.
    update(
        &mut app,
        Action::Broker(Event::Message(Box::new(ServerMsg::Snapshot {
            req: None,
            pending: vec![],
            rules: vec![],
            more: false,
        }))),
    );
    assert!(app.selected.is_empty() && app.rows().is_empty());
}

#[test]
fn a_snapshot_in_parts_keeps_every_part_and_the_selection_in_later_parts() {
    let mut app = sample();
    let calls: Vec<_> = (0..5)
        .map(|i| {
            Arc::new(call(
                100 + i,
                "execute_sql",
                json!({"n": i}),
                &format!("fp-{i}"),
            ))
        })
        .collect();
    update(&mut app, key(' '));
    let selected: Vec<Name> = app.selected.iter().cloned().collect();
    let mut all = calls.clone();
    // The selected call is in the last part.
    if let Some(sel) = app.calls.values().find(|c| selected.contains(&c.id)) {
        all.push(sel.clone());
    }
    let msg = |m: ServerMsg| Action::Broker(Event::Message(Box::new(m)));
    update(
        &mut app,
        msg(ServerMsg::Snapshot {
            req: None,
            pending: all[..2].to_vec(),
            rules: vec![],
            more: true,
        }),
    );
    update(
        &mut app,
        msg(ServerMsg::SnapshotPart {
            req: None,
            pending: all[2..4].to_vec(),
            more: true,
        }),
    );
    update(
        &mut app,
        msg(ServerMsg::SnapshotPart {
            req: None,
            pending: all[4..].to_vec(),
            more: false,
        }),
    );
    assert_eq!(app.calls.len(), all.len());
    assert!(!selected.is_empty());
    assert_eq!(app.selected.iter().cloned().collect::<Vec<_>>(), selected);
}

#[test]
fn quitting_from_a_subview_goes_back_first() {
    let mut app = sample();
    update(&mut app, code(KeyCode::Enter));
    update(&mut app, key('q'));
    assert_eq!(app.view, View::Queue);
    assert!(!app.quit);
    update(&mut app, key('q'));
    assert!(app.quit);
}

#[test]
fn no_color_draws_without_colours_and_colour_mode_uses_them() {
    use ratatui::style::Color;
    let colours = |no_color: bool| {
        let mut app = sample();
        app.no_color = no_color;
        let mut t = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
        t.draw(|f| ui::render(&app, f)).expect("draw");
        let buf = t.backend().buffer().clone();
        buf.content()
            .iter()
            .filter(|c| c.fg != Color::Reset || c.bg != Color::Reset)
            .count()
    };
    assert_eq!(colours(true), 0);
    assert!(colours(false) > 0);
}

/// Put the cursor on the delete_row loop's row.
fn loop_row(app: &mut App) {
    let at = app
        .rows()
        .iter()
        .position(|r| &*r.call.tool == "delete_row" && r.count() > 1)
        .expect("the loop's row");
    for _ in 0..at {
        update(app, key('j'));
    }
}

#[test]
fn blocking_a_pattern_rejects_it_by_fingerprint_with_a_block_time() {
    let mut app = sample();
    loop_row(&mut app);
    assert!(update(&mut app, key('x')).is_none());
    assert!(matches!(
        app.prompt,
        Some(Prompt::Confirm {
            count: 500,
            block_for_ms: Some(900_000),
            ..
        })
    ));
    snap("block_confirm", &app);
    update(&mut app, key('y'));
    typed(&mut app, "runaway loop");
    let sent = update(&mut app, code(KeyCode::Enter));
    assert_eq!(
        sent,
        Some(ClientMsg::Decide {
            req: Some(1),
            target: Target::Fingerprint {
                fingerprint: "fp-loop".into()
            },
            verdict: Verdict::Reject,
            reason: Some("runaway loop".into()),
            block_for_ms: Some(900_000),
            allow_next: None,
            signed: None,
        })
    );
    // A single call is blocked by its fingerprint too (the rule needs one).
    let mut app = sample();
    update(&mut app, key('x'));
    assert!(matches!(
        app.prompt,
        Some(Prompt::Reason {
            target: Target::Fingerprint { .. },
            block_for_ms: Some(_),
            ..
        })
    ));
}

#[test]
fn grouping_by_shape_merges_calls_that_differ_in_volatile_values() {
    let mut app = sample();
    assert_eq!(app.rows().len(), 6, "3 singles, the loop and two other ids");
    // G cycles back: none, then shape.
    update(&mut app, key('G'));
    update(&mut app, key('G'));
    assert_eq!(app.grouping, Grouping::Shape);
    // Calls without a shape fall back to their exact fingerprint.
    assert_eq!(app.rows().len(), 4);
    loop_row(&mut app);
    let row = app.current().expect("row").clone();
    assert_eq!(row.count(), 502);
    snap("queue_by_shape", &app);
    // Approving a shape approves exactly the calls the row holds now, by id, after a
    // confirmation that says they differ (a new call of the shape is not included).
    assert!(update(&mut app, key('a')).is_none());
    match &app.prompt {
        Some(Prompt::Confirm {
            count: 502,
            summary,
            target: Target::Ids { ids },
            ..
        }) => {
            assert_eq!(ids.len(), 502);
            assert!(summary.contains("\n3 different calls"), "{summary}");
        }
        other => panic!("expected a confirmation by ids, got {other:?}"),
    }
    update(&mut app, code(KeyCode::Esc));
    update(&mut app, key('x'));
    update(&mut app, key('y'));
    typed(&mut app, "loop");
    let sent = update(&mut app, code(KeyCode::Enter));
    assert!(matches!(
        sent,
        Some(ClientMsg::Decide { target: Target::Fingerprint { ref fingerprint }, .. }) if fingerprint == "sh-delete"
    ));
}

#[test]
fn the_rules_view_lists_and_revokes_temporary_rules() {
    let mut app = sample();
    let rule = |id: &str, kind| tollgate_shared::console::TempRule {
        id: id.into(),
        kind,
        fingerprint: "fp-loop".into(),
        server: "db".into(),
        tool: "delete_row".into(),
        by: "alice".into(),
        created_ms: NOW - 60_000,
        until_ms: NOW + 840_000,
        reason: Some("runaway loop".into()),
        remaining: (kind == tollgate_shared::console::RuleKind::Allow).then_some(4),
        hits: 12,
    };
    let sent = update(&mut app, key('t'));
    assert_eq!(sent, Some(ClientMsg::ListRules { req: Some(1) }));
    assert_eq!(app.view, View::Rules);
    snap("rules_empty", &app);
    update(
        &mut app,
        Action::Broker(Event::Message(Box::new(ServerMsg::Rules {
            req: Some(1),
            rules: vec![
                rule("t-0000aaaa", tollgate_shared::console::RuleKind::Block),
                rule("t-0000bbbb", tollgate_shared::console::RuleKind::Allow),
            ],
        }))),
    );
    assert_eq!(app.waiting, 0);
    update(&mut app, key('j'));
    snap("rules", &app);
    // Expired rules are not shown (the broker does not announce expiry).
    let mut later = app.clone();
    update(&mut later, Action::Tick(NOW + 840_001));
    assert_eq!(later.active_rules().count(), 0);
    assert!(screen(&later, 80, 24).contains("No temporary rules."));
    let sent = update(&mut app, key('D'));
    assert_eq!(
        sent,
        Some(ClientMsg::RevokeRule {
            req: Some(2),
            id: "t-0000bbbb".into()
        })
    );
    // Rules pushed by the broker (another console revoked one) replace the list.
    update(
        &mut app,
        Action::Broker(Event::Message(Box::new(ServerMsg::Rules {
            req: None,
            rules: vec![],
        }))),
    );
    assert!(app.rules.is_empty());
    assert_eq!(app.rule_cursor, 0);
    // Outside the rules view, d explains itself instead of revoking.
    update(&mut app, code(KeyCode::Esc));
    assert!(update(&mut app, key('D')).is_none());
}

#[test]
fn a_decision_that_installed_a_rule_says_so() {
    let mut app = sample();
    update(
        &mut app,
        Action::Broker(Event::Message(Box::new(ServerMsg::Decided {
            req: Some(1),
            results: vec![],
            rule: Some(tollgate_shared::console::TempRule {
                id: "t-0000cccc".into(),
                kind: tollgate_shared::console::RuleKind::Block,
                fingerprint: "fp-loop".into(),
                server: "db".into(),
                tool: "delete_row".into(),
                by: "alice".into(),
                created_ms: NOW,
                until_ms: NOW + 900_000,
                reason: None,
                remaining: None,
                hits: 0,
            }),
            rule_refused: None,
        }))),
    );
    let note = app.notes.back().expect("note");
    assert!(
        note.starts_with("t-0000cccc blocks db/delete_row until"),
        "{note}"
    );
}

#[test]
fn a_store_that_cannot_write_shows_in_the_status_bar_until_it_recovers() {
    let mut app = sample();
    let failing = tollgate_shared::console::StoreFailing {
        since_ms: app.now_ms - 90_000,
        error: "cannot append to the journal: No space left on device".into(),
        waiting: 3,
    };
    let store = |failing| Action::Broker(Event::Message(Box::new(ServerMsg::Store { failing })));
    update(&mut app, store(Some(failing)));
    let top = screen(&app, 160, 30);
    let first = top.lines().next().unwrap_or_default().to_string();
    assert!(first.contains("STORE CANNOT WRITE for 1m"), "{first}");
    assert!(
        app.notes
            .iter()
            .any(|n| n.contains("No space left on device"))
    );
    update(&mut app, store(None));
    assert!(!screen(&app, 160, 30).contains("STORE CANNOT WRITE"));
    assert!(app.notes.iter().any(|n| n.contains("can write again")));
}
