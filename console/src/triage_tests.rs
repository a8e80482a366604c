//! Triage: grouping by tool, client and server, the filter syntax, selections the filter
//! hides, the summary after a bulk decision, and the incremental rows agreeing with a rebuild.

use std::sync::Arc;

use ratatui::crossterm::event::KeyCode;
use serde_json::json;
use tollgate_shared::console::{ClientMsg, DecideResult, Role, ServerMsg, Target};
use tollgate_shared::{CallRecord, Outcome, Verdict};

use crate::app::{Action, App, Grouping, Prompt, update};
use crate::client::{Event, Me};
use crate::keys::KeyMap;
use crate::tests::{NOW, call, code, key, snap, typed};

/// A normal morning: 5 agents, 50 distinct held calls on server `fs`, 40 reads (`read_file`,
/// `list_dir`) and 10 writes (`write_file`, `delete_file`), every one with its own path.
fn morning() -> App {
    let mut app = App::new("ws://t".into(), KeyMap::default(), true, NOW);
    let pending = (0..50u64)
        .map(|i| {
            let tool = match i % 10 {
                0..=3 => "read_file",
                4..=7 => "list_dir",
                8 => "write_file",
                _ => "delete_file",
            };
            let path = if tool == "read_file" && i % 20 < 10 {
                format!("/etc/app/{i}.conf")
            } else {
                format!("/srv/data/{tool}/{i}")
            };
            let mut c = call(i, tool, json!({"path": path}), &format!("fp-{i:03}"));
            c.server = "fs".into();
            c.client = format!("agent-{}", i % 5 + 1).into();
            Arc::new(c)
        })
        .collect();
    connect(&mut app, "alice", pending);
    app
}

fn connect(app: &mut App, who: &str, pending: Vec<Arc<CallRecord>>) {
    update(
        app,
        Action::Broker(Event::Connected(
            Me {
                identity: who.into(),
                role: Role::Approver,
                servers: None,
            },
            pending,
        )),
    );
}

fn filter(app: &mut App, text: &str) {
    update(app, key('/'));
    update(
        app,
        Action::Key(ratatui::crossterm::event::KeyEvent::new(
            KeyCode::Char('u'),
            ratatui::crossterm::event::KeyModifiers::CONTROL,
        )),
    );
    typed(app, text);
    update(app, code(KeyCode::Enter));
}

fn tools_shown(app: &App) -> Vec<String> {
    let mut t: Vec<String> = app
        .calls
        .values()
        .filter(|c| app.rows().iter().any(|r| r.ids.contains(&c.id)))
        .map(|c| c.tool.to_string())
        .collect();
    t.sort();
    t.dedup();
    t
}

/// The broker's answer to request `req` deciding `ids`, then each call leaving the queue.
fn answer(app: &mut App, req: u64, ids: &[String], verdict: Verdict, reason: Option<&str>) {
    let outcome = match verdict {
        Verdict::Approve => Outcome::Approved,
        Verdict::Reject => Outcome::Rejected,
    };
    let results = ids
        .iter()
        .map(|id| DecideResult {
            id: id.clone(),
            ok: true,
            refusal: None,
            outcome: Some(outcome),
            message: outcome.to_string(),
        })
        .collect();
    update(
        app,
        Action::Broker(Event::Message(Box::new(ServerMsg::Decided {
            req: Some(req),
            results,
            rule: None,
            rule_refused: None,
        }))),
    );
    for id in ids {
        let mut c = (**app.calls.get(id.as_str()).expect("pending")).clone();
        c.outcome = outcome;
        c.reason = reason.map(str::to_string);
        c.decisions.push(tollgate_shared::Decision {
            by: "alice".into(),
            verdict,
            reason: c.reason.clone(),
            at_ms: NOW,
            signed: None,
        });
        update(
            app,
            Action::Broker(Event::Message(Box::new(ServerMsg::CallDecided {
                call: Arc::new(c),
            }))),
        );
    }
}

fn sent_ids(m: Option<ClientMsg>) -> (u64, Verdict, Vec<String>) {
    match m {
        Some(ClientMsg::Decide {
            req: Some(req),
            target: Target::Ids { ids },
            verdict,
            ..
        }) => (req, verdict, ids),
        other => panic!("expected a decision by ids, got {other:?}"),
    }
}

#[test]
fn each_grouping_level_draws_its_rows() {
    let mut app = morning();
    assert_eq!(
        app.rows().len(),
        50,
        "50 distinct calls are 50 identical-call groups"
    );
    for (grouping, rows) in [
        (Grouping::Tool, 4),
        (Grouping::Client, 5),
        (Grouping::Server, 1),
        (Grouping::Shape, 50),
        (Grouping::Flat, 50),
        (Grouping::Exact, 50),
    ] {
        update(&mut app, key('g'));
        assert_eq!(app.grouping, grouping);
        assert_eq!(app.rows().len(), rows, "{grouping:?}");
        assert!(
            app.notes
                .back()
                .is_some_and(|n| n.contains(grouping.label())),
            "the status line names the level"
        );
        if matches!(
            grouping,
            Grouping::Tool | Grouping::Client | Grouping::Server
        ) {
            snap(
                &format!("group_{}", grouping.label().replace(' ', "_")),
                &app,
            );
        }
    }
}

#[test]
fn the_mornings_triage_takes_nine_keys_besides_the_reason() {
    let mut app = morning();
    let mut keys = 0;
    let mut press = |app: &mut App, a: Action| {
        keys += 1;
        update(app, a)
    };
    // g: one row per tool, oldest first: read_file, list_dir, write_file, delete_file.
    press(&mut app, key('g'));
    assert_eq!(tools_shown(&app).len(), 4);
    for tool in ["read_file", "list_dir"] {
        assert_eq!(&*app.current().expect("row").call.tool, tool);
        assert!(press(&mut app, key('a')).is_none(), "a group asks first");
        match &app.prompt {
            Some(Prompt::Confirm {
                count: 20, summary, ..
            }) => {
                assert!(summary.starts_with(&format!("fs/{tool} ×20")), "{summary}");
                assert!(summary.ends_with("\n20 different calls (g groups identical ones)"));
            }
            other => panic!("{other:?}"),
        }
        if tool == "read_file" {
            snap("confirm_tool_row", &app);
        }
        let (req, verdict, ids) = sent_ids(press(&mut app, key('y')));
        assert_eq!((verdict, ids.len()), (Verdict::Approve, 20));
        answer(&mut app, req, &ids, verdict, None);
    }
    assert_eq!(
        app.notes.back().map(String::as_str),
        Some("20 calls approved · from this console so far: 40 approved, 0 rejected")
    );
    // The two write tools are what is left: * selects them, R rejects them with one reason.
    press(&mut app, key('*'));
    assert_eq!(app.selected.len(), 10);
    press(&mut app, key('R'));
    press(&mut app, key('y'));
    typed(&mut app, "no writes today");
    let (req, verdict, ids) = sent_ids(press(&mut app, code(KeyCode::Enter)));
    assert_eq!((verdict, ids.len()), (Verdict::Reject, 10));
    answer(&mut app, req, &ids, verdict, Some("no writes today"));
    assert_eq!(keys, 9);
    assert!(app.calls.is_empty() && app.selected.is_empty());
    assert_eq!(
        app.notes.back().map(String::as_str),
        Some("10 calls rejected · from this console so far: 40 approved, 10 rejected")
    );
}

#[test]
fn filters_take_alternatives_negation_globs_and_argument_paths() {
    let mut app = morning();
    update(&mut app, key('G')); // one row per call
    for (text, tools, calls) in [
        (
            "tool:write_file|delete_file",
            vec!["delete_file", "write_file"],
            10,
        ),
        (
            "-tool:read_*",
            vec!["delete_file", "list_dir", "write_file"],
            30,
        ),
        ("-tool:read_*|list_*", vec!["delete_file", "write_file"], 10),
        ("arg.path:/etc/*", vec!["read_file"], 12),
        ("arg.path:/ETC/*.conf client:agent-1", vec!["read_file"], 3),
        ("tool:fs/write*", vec!["write_file"], 5),
        ("fs/list_dir -client:agent-1|agent-2", vec!["list_dir"], 10),
        ("arg:data/delete", vec!["delete_file"], 5),
        (
            r#"arg.path:"/srv/data/write_file/*""#,
            vec!["write_file"],
            5,
        ),
    ] {
        filter(&mut app, text);
        assert_eq!(tools_shown(&app), tools, "{text}");
        assert_eq!(app.shown(), calls, "{text}");
    }
    filter(&mut app, "tol:read");
    assert_eq!(app.shown(), 0);
    assert!(
        app.notes
            .back()
            .is_some_and(|n| n.starts_with("not a field: tol")),
        "{:?}",
        app.notes.back()
    );
    filter(&mut app, "tool:write_file|delete_file -client:agent-5");
    snap("filter_syntax", &app);
    // esc clears the filter in one key.
    update(&mut app, code(KeyCode::Esc));
    assert_eq!((app.filter_text.as_str(), app.shown()), ("", 50));
}

#[test]
fn a_selection_the_filter_hides_is_counted_and_confirmed_as_hidden() {
    let mut app = morning();
    update(&mut app, key('g')); // by tool
    filter(&mut app, "tool:write_file");
    update(&mut app, key('*'));
    assert_eq!((app.selected.len(), app.hidden_selected), (5, 0));
    filter(&mut app, "tool:delete_file");
    assert_eq!(app.hidden_selected, 5, "the writes are selected but hidden");
    assert!(crate::tests::screen(&app, 100, 24).contains("5 selected (5 hidden by the filter)"));
    update(&mut app, key('*'));
    assert_eq!((app.selected.len(), app.hidden_selected), (10, 5));
    update(&mut app, key('R'));
    match &app.prompt {
        Some(Prompt::Confirm {
            count: 10,
            hidden: 5,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    snap("confirm_with_hidden", &app);
    update(&mut app, code(KeyCode::Esc));
    // esc clears the filter, then the selection.
    update(&mut app, code(KeyCode::Esc));
    assert!(app.filter_text.is_empty() && app.hidden_selected == 0);
    update(&mut app, code(KeyCode::Esc));
    assert!(app.selected.is_empty());
}

#[test]
fn a_filter_clears_itself_once_our_decision_leaves_it_matching_nothing() {
    let mut app = morning();
    update(&mut app, key('g'));
    filter(&mut app, "tool:write_file|delete_file");
    assert_eq!(app.rows().len(), 2);
    update(&mut app, key('*'));
    update(&mut app, key('R'));
    update(&mut app, key('y'));
    typed(&mut app, "no");
    let (req, verdict, ids) = sent_ids(update(&mut app, code(KeyCode::Enter)));
    assert_eq!(
        app.filter_text, "tool:write_file|delete_file",
        "not before they leave"
    );
    answer(&mut app, req, &ids, verdict, Some("no"));
    assert!(app.filter_text.is_empty(), "cleared once nothing matches");
    assert_eq!(app.shown(), 40);
    assert!(
        app.notes
            .iter()
            .any(|n| n.contains("cleared: it matches nothing pending"))
    );
    // A filter that matches nothing because others decided stays: someone may be watching it.
    filter(&mut app, "tool:read_file");
    let ids: Vec<String> = app.rows()[0].ids.iter().map(|i| i.to_string()).collect();
    for id in ids {
        let mut c = (**app.calls.get(id.as_str()).expect("pending")).clone();
        c.outcome = Outcome::Approved;
        c.decisions.push(tollgate_shared::Decision {
            by: "bob".into(),
            verdict: Verdict::Approve,
            reason: None,
            at_ms: NOW,
            signed: None,
        });
        update(
            &mut app,
            Action::Broker(Event::Message(Box::new(ServerMsg::CallDecided {
                call: Arc::new(c),
            }))),
        );
    }
    assert_eq!(app.filter_text, "tool:read_file");
    assert_eq!(
        app.notes.back().map(String::as_str),
        Some("fs/read_file approved by bob"),
        "others' decisions are noted call by call"
    );
}

#[test]
fn a_group_holding_our_own_calls_is_not_offered_for_approval() {
    let mut app = morning();
    // agent-3 is also an approver; its own calls are in every tool group.
    let calls = app.calls.values().cloned().collect();
    connect(&mut app, "agent-3", calls);
    update(&mut app, key('g'));
    assert!(update(&mut app, key('a')).is_none());
    assert!(app.prompt.is_none());
    let note = app.notes.back().expect("note");
    assert!(
        note.starts_with("you may not approve 5 of these 20 calls (your own call ×5)"),
        "{note}"
    );
    // Rejecting is fine.
    update(&mut app, key('r'));
    assert!(matches!(
        app.prompt,
        Some(Prompt::Confirm { count: 20, .. })
    ));
}

/// The rows kept up call by call equal the rows rebuilt from scratch, through arrivals,
/// leaves and quorum updates, for every grouping, sort and a filter.
#[test]
fn incremental_rows_agree_with_a_rebuild() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for grouping_steps in 0..6 {
        for (sort_steps, text) in [
            (0, ""),
            (1, "-tool:t1"),
            (2, "client:c1|c2"),
            (3, "arg.k:1*"),
        ] {
            let mut app = App::new("ws://t".into(), KeyMap::default(), true, NOW);
            connect(&mut app, "alice", Vec::new());
            for _ in 0..grouping_steps {
                update(&mut app, key('g'));
            }
            for _ in 0..sort_steps {
                update(&mut app, key('s'));
            }
            if !text.is_empty() {
                filter(&mut app, text);
            }
            let mut n = 0u64;
            for _ in 0..400 {
                let ids: Vec<String> = app.calls.keys().map(|k| k.to_string()).collect();
                let msg = if ids.is_empty() || rnd(3) > 0 {
                    n += 1;
                    // Arrivals out of id order sometimes, as snapshot parts and retries bring.
                    let id = if rnd(5) == 0 { rnd(n) + 1000 } else { n + 2000 };
                    let mut c = call(
                        id,
                        &format!("t{}", rnd(3)),
                        json!({"k": rnd(20)}),
                        &format!("fp{}", rnd(6)),
                    );
                    c.client = format!("c{}", rnd(4)).into();
                    c.server = format!("s{}", rnd(2)).into();
                    c.shape = format!("sh{}", rnd(3)).into();
                    c.timings.received_ms = NOW - 100_000 + id * 10;
                    if let Some(h) = c.hold.as_mut() {
                        h.expires_ms = NOW + rnd(50) * 1000;
                    }
                    ServerMsg::CallPending { call: Arc::new(c) }
                } else {
                    let id = &ids[rnd(ids.len() as u64) as usize];
                    let mut c = (**app.calls.get(id.as_str()).expect("pending")).clone();
                    if rnd(4) == 0 {
                        // A vote towards a quorum: the call stays, changed.
                        c.signals.looping = true;
                        ServerMsg::CallApproval { call: Arc::new(c) }
                    } else {
                        c.outcome = Outcome::Expired;
                        ServerMsg::CallExpired { call: Arc::new(c) }
                    }
                };
                update(&mut app, Action::Broker(Event::Message(Box::new(msg))));
            }
            let incremental: Vec<_> = app.rows().into_iter().cloned().collect();
            let shown = app.shown();
            // Rebuilt: the same filter again marks everything for a rebuild.
            let text = app.filter_text.clone();
            filter(&mut app, &text);
            let rebuilt: Vec<_> = app.rows().into_iter().cloned().collect();
            assert_eq!(shown, app.shown());
            assert_eq!(
                incremental.len(),
                rebuilt.len(),
                "{grouping_steps} {sort_steps} {text}"
            );
            for (a, b) in incremental.iter().zip(&rebuilt) {
                assert_eq!(a.key, b.key, "order, {:?} {:?}", app.grouping, app.sort);
                assert_eq!(a.ids, b.ids);
                assert_eq!(a.call.id, b.call.id);
                assert_eq!((a.first_ms, a.last_ms), (b.first_ms, b.last_ms));
                assert_eq!(a.expires_ms(), b.expires_ms());
                assert_eq!(a.flags(), b.flags());
                assert_eq!(app.pattern_size(a), app.pattern_size(b));
            }
        }
    }
}
