//! What the broker tells the console: the connection's state, snapshots, calls arriving and
//! leaving the queue, and the answers to our requests.

use std::sync::Arc;

use tollgate_shared::console::{ClientMsg, DecideResult, ServerMsg};
use tollgate_shared::{CallRecord, Outcome, Verdict};

use super::{App, HISTORY, Link};
use crate::client::Event;

fn leave(app: &mut App, c: Arc<CallRecord>, how: String) {
    let was_here = app.depart(&c.id).is_some();
    // Our own decisions are summed up by their answer ("40 calls approved"), not call by call.
    let by_me = app
        .me
        .as_ref()
        .is_some_and(|me| c.decisions.iter().any(|d| d.by == me.identity));
    app.history.push_back(c);
    while app.history.len() > HISTORY {
        app.history.pop_front();
    }
    if was_here && !by_me {
        app.note(how);
    }
}

/// "40 calls approved", "db/echo rejected: use staging", "2 approvals counted, 1 refused: …".
fn decided_summary(
    app: &mut App,
    asked: Option<(Verdict, Option<String>)>,
    results: &[DecideResult],
) -> String {
    let (verdict, reason) = asked.unzip();
    let reason = reason.flatten();
    let n = |o: Outcome| {
        results
            .iter()
            .filter(|r| r.ok && r.outcome == Some(o))
            .count()
    };
    let (approved, rejected) = (n(Outcome::Approved), n(Outcome::Rejected));
    let counted = results.iter().filter(|r| r.ok).count() - approved - rejected;
    app.tally.0 += approved;
    app.tally.1 += rejected;
    let mut parts = Vec::new();
    let calls = |k: usize| if k == 1 { "call" } else { "calls" };
    if approved + rejected == 1 && counted == 0 && results.len() == 1 {
        // One call: name it, as the other consoles' notes do.
        let id = results[0].id.as_str();
        let c = app
            .calls
            .get(id)
            .or_else(|| app.history.iter().rev().find(|c| &*c.id == id));
        let what = c.map_or_else(|| id.to_string(), |c| format!("{}/{}", c.server, c.tool));
        let by = app.me.as_ref().map_or("you", |m| m.identity.as_str());
        return if approved == 1 {
            format!("{what} approved by {by}")
        } else {
            let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
            format!("{what} rejected by {by}{why}")
        };
    }
    if approved > 0 {
        parts.push(format!("{approved} {} approved", calls(approved)));
    }
    if rejected > 0 {
        parts.push(format!("{rejected} {} rejected", calls(rejected)));
    }
    if counted > 0 {
        parts.push(format!(
            "{counted} {} counted towards a quorum (still pending)",
            if counted == 1 {
                "approval"
            } else {
                "approvals"
            }
        ));
    }
    let refused: Vec<&DecideResult> = results.iter().filter(|r| !r.ok).collect();
    match refused.as_slice() {
        [] => {}
        [one] => parts.push(format!("refused: {}", one.message)),
        [first, ..] => parts.push(format!(
            "{} refused, the first: {}",
            refused.len(),
            first.message
        )),
    }
    if parts.is_empty() {
        let what = match verdict {
            Some(Verdict::Approve) => "approved",
            Some(Verdict::Reject) => "rejected",
            None => "decided",
        };
        return format!("nothing {what}: no pending call matched");
    }
    let mut note = parts.join(", ");
    let (a, r) = app.tally;
    if (a, r) != (approved, rejected) && a + r > 0 {
        note.push_str(&format!(
            " · from this console so far: {a} approved, {r} rejected"
        ));
    }
    note
}

fn decided_note(c: &CallRecord) -> String {
    let by = c
        .decisions
        .iter()
        .filter(|d| {
            d.verdict
                == if c.outcome == Outcome::Approved {
                    Verdict::Approve
                } else {
                    Verdict::Reject
                }
        })
        .map(|d| d.by.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let why = c
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    format!("{}/{} {} by {by}{why}", c.server, c.tool, c.outcome)
}

pub(super) fn broker(app: &mut App, e: Event) -> Option<ClientMsg> {
    match e {
        Event::Connecting(n) => {
            if !matches!(app.link, Link::Down(..)) || n == 1 {
                app.link = Link::Connecting(n);
            }
        }
        Event::Connected(me, pending) => {
            app.me = Some(me);
            // A broker whose store fails says so after the snapshot.
            app.store = None;
            app.notify = Default::default();
            app.link = Link::Up;
            app.waiting = 0;
            app.calls = pending.into_iter().map(|c| (c.id.clone(), c)).collect();
            app.selection_changed();
            app.settle_cursor();
        }
        Event::Disconnected(why, wait) => {
            app.link = Link::Down(why, wait);
            app.waiting = 0;
            app.asked.clear();
        }
        Event::Message(m) => match *m {
            ServerMsg::Snapshot {
                pending,
                rules,
                more,
                ..
            } => {
                app.rules = rules;
                app.calls = pending.into_iter().map(|c| (c.id.clone(), c)).collect();
                if !more {
                    app.selected.retain(|id| app.calls.contains_key(id));
                }
                app.selection_changed();
                app.settle_cursor();
            }
            ServerMsg::SnapshotPart { pending, more, .. } => {
                app.calls
                    .extend(pending.into_iter().map(|c| (c.id.clone(), c)));
                if !more {
                    app.selected.retain(|id| app.calls.contains_key(id));
                }
                app.selection_changed();
                app.settle_cursor();
            }
            ServerMsg::CallPending { call } | ServerMsg::CallApproval { call } => {
                app.arrive(call);
            }
            ServerMsg::CallDecided { call } => {
                let note = decided_note(&call);
                leave(app, call, note);
            }
            ServerMsg::CallExpired { call } => leave(
                app,
                call.clone(),
                format!("{}/{} expired undecided", call.server, call.tool),
            ),
            ServerMsg::CallCancelled { call } => leave(
                app,
                call.clone(),
                format!("{}/{} cancelled by its client", call.server, call.tool),
            ),
            ServerMsg::CallAbandoned { call } => leave(
                app,
                call.clone(),
                format!("{}/{} abandoned after a restart", call.server, call.tool),
            ),
            ServerMsg::Decided {
                req,
                results,
                rule,
                rule_refused,
            } => {
                app.waiting = app.waiting.saturating_sub(1);
                let asked = req.and_then(|r| app.asked.remove(&r));
                let summary = decided_summary(app, asked, &results);
                let summary = if results.is_empty() {
                    String::new()
                } else {
                    format!("{summary}; ")
                };
                if let Some(r) = rule {
                    app.note(format!(
                        "{summary}{} blocks {}/{} until {} (t shows rules)",
                        r.id,
                        r.server,
                        r.tool,
                        tollgate_shared::clock::rfc3339_seconds(r.until_ms)
                    ));
                    return None;
                }
                if let Some(why) = rule_refused {
                    app.note(format!("{summary}{why}"));
                    return None;
                }
                app.note(summary.trim_end_matches("; ").to_string());
            }
            ServerMsg::AuditResult { entries, .. } => {
                app.waiting = app.waiting.saturating_sub(1);
                app.audit = entries;
            }
            ServerMsg::Error { message, req, .. } => {
                app.waiting = app.waiting.saturating_sub(1);
                if let Some(r) = req {
                    app.asked.remove(&r);
                }
                app.note(format!("broker: {message}"));
            }
            ServerMsg::Rules { req, rules } => {
                if req.is_some() {
                    app.waiting = app.waiting.saturating_sub(1);
                }
                app.rules = rules;
                app.rule_cursor = app.rule_cursor.min(app.rules.len().saturating_sub(1));
            }
            ServerMsg::Store { failing } => {
                match (&app.store, &failing) {
                    (None, Some(f)) => app.note(format!("broker: {f}")),
                    (Some(_), None) => app.note("broker: the store can write again".into()),
                    _ => {}
                }
                app.store = failing;
            }
            ServerMsg::Notify { health } => {
                if health.dropped > app.notify.dropped || health.failing != app.notify.failing {
                    app.note(format!("broker: {health}"));
                }
                app.notify = health;
            }
            ServerMsg::Config {
                policy, refused, ..
            } => match refused {
                None => app.note(format!(
                    "broker: configuration reloaded (policy {policy}); held calls keep their place"
                )),
                Some(why) => app.note(format!(
                    "broker: a new configuration was refused, policy {policy} stays: {}",
                    why.lines().next().unwrap_or_default()
                )),
            },
            ServerMsg::Hello { .. } => {}
        },
    }
    None
}
