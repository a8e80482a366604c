//! What the broker tells the console: the connection's state, snapshots, calls arriving and
//! leaving the queue, and the answers to our requests.

use std::sync::Arc;

use tollgate_shared::console::{ClientMsg, ServerMsg};
use tollgate_shared::{CallRecord, Outcome, Verdict};

use super::{App, HISTORY, Link};
use crate::client::Event;

fn leave(app: &mut App, c: Arc<CallRecord>, how: String) {
    let was_mine = app.calls.remove(&c.id).is_some();
    app.selected.remove(&c.id);
    app.history.push_back(c);
    while app.history.len() > HISTORY {
        app.history.pop_front();
    }
    if was_mine {
        app.note(how);
    }
    app.settle_cursor();
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
            app.settle_cursor();
        }
        Event::Disconnected(why, wait) => {
            app.link = Link::Down(why, wait);
            app.waiting = 0;
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
                app.settle_cursor();
            }
            ServerMsg::SnapshotPart { pending, more, .. } => {
                app.calls
                    .extend(pending.into_iter().map(|c| (c.id.clone(), c)));
                if !more {
                    app.selected.retain(|id| app.calls.contains_key(id));
                }
                app.settle_cursor();
            }
            ServerMsg::CallPending { call } | ServerMsg::CallApproval { call } => {
                app.calls.insert(call.id.clone(), call);
                app.settle_cursor();
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
                results,
                rule,
                rule_refused,
                ..
            } => {
                app.waiting = app.waiting.saturating_sub(1);
                if let Some(r) = rule {
                    app.note(format!(
                        "{} blocks {}/{} until {} (t shows rules)",
                        r.id,
                        r.server,
                        r.tool,
                        tollgate_shared::clock::rfc3339_seconds(r.until_ms)
                    ));
                    return None;
                }
                if let Some(why) = rule_refused {
                    app.note(why);
                    return None;
                }
                let ok = results.iter().filter(|r| r.ok).count();
                let refused: Vec<_> = results.iter().filter(|r| !r.ok).collect();
                if refused.is_empty() {
                    if ok > 1 {
                        app.note(format!("{ok} calls decided"));
                    } else if let Some(r) = results.first()
                        && r.message.contains("still pending")
                    {
                        app.note(r.message.clone());
                    }
                } else {
                    let first = &refused[0].message;
                    let more = if refused.len() > 1 {
                        format!(" (and {} more refused)", refused.len() - 1)
                    } else {
                        String::new()
                    };
                    app.note(format!("refused: {first}{more}"));
                }
            }
            ServerMsg::AuditResult { entries, .. } => {
                app.waiting = app.waiting.saturating_sub(1);
                app.audit = entries;
            }
            ServerMsg::Error { message, .. } => {
                app.waiting = app.waiting.saturating_sub(1);
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
