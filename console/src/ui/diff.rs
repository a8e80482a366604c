//! The diff view: a call's arguments beside the most similar earlier call's (or the marked one).

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use tollgate_shared::CallRecord;

use crate::app::App;
use crate::fmt::pretty_sorted;
use crate::keys::Command;

use super::{Look, style};

pub(super) fn diff(app: &App, f: &mut Frame, area: Rect) {
    let Some(row) = app.current() else {
        f.render_widget(
            Paragraph::new("No call selected.").block(Block::bordered()),
            area,
        );
        return;
    };
    let Some(base) = app.diff_base() else {
        let text = format!(
            "No earlier call of {}/{} to compare with. Mark one with {}.",
            row.call.server,
            row.call.tool,
            app.keys.key_of(Command::Mark)
        );
        f.render_widget(
            Paragraph::new(text).block(Block::bordered().title(" Diff ")),
            area,
        );
        return;
    };
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let (old, new) = (
        pretty_sorted(&base.arguments.value()),
        pretty_sorted(&row.call.arguments.value()),
    );
    let (l, r) = side_by_side(app, &old, &new);
    let lt = format!(
        " {} {} ",
        if app.marked.as_ref().is_some_and(|m| m.id == base.id) {
            "marked"
        } else {
            "most similar"
        },
        short_id(&base)
    );
    let rt = format!(" this call {} ", short_id(&row.call));
    f.render_widget(
        Paragraph::new(l)
            .block(Block::bordered().title(lt))
            .scroll((app.scroll, 0)),
        left,
    );
    f.render_widget(
        Paragraph::new(r)
            .block(Block::bordered().title(rt))
            .scroll((app.scroll, 0)),
        right,
    );
}

/// Two aligned columns of lines; changed lines marked, changed words emphasised.
fn side_by_side(app: &App, old: &str, new: &str) -> (Vec<Line<'static>>, Vec<Line<'static>>) {
    use similar::{ChangeTag, DiffOp, TextDiff};
    let diff = TextDiff::from_lines(old, new);
    let (mut l, mut r) = (Vec::new(), Vec::new());
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    for op in diff.ops() {
        match *op {
            DiffOp::Equal { old_index, len, .. } => {
                for line in &old_lines[old_index..old_index + len] {
                    l.push(Line::raw(format!("  {line}")));
                    r.push(Line::raw(format!("  {line}")));
                }
            }
            DiffOp::Delete {
                old_index, old_len, ..
            } => {
                for line in &old_lines[old_index..old_index + old_len] {
                    l.push(Line::styled(format!("- {line}"), style(app, Look::Bad)));
                    r.push(Line::raw(""));
                }
            }
            DiffOp::Insert {
                new_index, new_len, ..
            } => {
                for line in &new_lines[new_index..new_index + new_len] {
                    l.push(Line::raw(""));
                    r.push(Line::styled(format!("+ {line}"), style(app, Look::Good)));
                }
            }
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                for i in 0..old_len.max(new_len) {
                    let a = (i < old_len).then(|| old_lines[old_index + i]);
                    let b = (i < new_len).then(|| new_lines[new_index + i]);
                    match (a, b) {
                        (Some(a), Some(b)) => {
                            let words = TextDiff::from_words(a, b);
                            let mut ls = vec![Span::styled("~ ", style(app, Look::Bad))];
                            let mut rs = vec![Span::styled("~ ", style(app, Look::Good))];
                            for ch in words.iter_all_changes() {
                                let text = ch.value().to_string();
                                match ch.tag() {
                                    ChangeTag::Equal => {
                                        ls.push(Span::raw(text.clone()));
                                        rs.push(Span::raw(text));
                                    }
                                    ChangeTag::Delete => ls.push(Span::styled(
                                        text,
                                        style(app, Look::Bad).add_modifier(Modifier::REVERSED),
                                    )),
                                    ChangeTag::Insert => rs.push(Span::styled(
                                        text,
                                        style(app, Look::Good).add_modifier(Modifier::REVERSED),
                                    )),
                                }
                            }
                            l.push(Line::from(ls));
                            r.push(Line::from(rs));
                        }
                        (Some(a), None) => {
                            l.push(Line::styled(format!("- {a}"), style(app, Look::Bad)));
                            r.push(Line::raw(""));
                        }
                        (None, Some(b)) => {
                            l.push(Line::raw(""));
                            r.push(Line::styled(format!("+ {b}"), style(app, Look::Good)));
                        }
                        (None, None) => {}
                    }
                }
            }
        }
    }
    (l, r)
}

fn short_id(c: &CallRecord) -> String {
    let n = c.id.chars().count();
    c.id.chars().skip(n.saturating_sub(8)).collect()
}
