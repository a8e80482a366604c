//! Drawing: a pure function of the [`App`] state onto a ratatui frame. Nothing here changes
//! state or touches the network, so every view is snapshot-tested with `TestBackend`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row as TableRow, Table, Wrap};
use tollgate_shared::console::{RuleKind, Target};
use tollgate_shared::{CallRecord, Verdict};

use crate::app::{App, Grouping, Link, Prompt, View};
use crate::fmt::{args_summary, cut, pretty_sorted, short_duration};
use crate::keys::Command;
use tollgate_shared::clock::rfc3339_seconds;

#[derive(Clone, Copy)]
enum Look {
    Title,
    Good,
    Bad,
    Warn,
    Dim,
    Key,
    Str,
    Num,
    Cursor,
    Selected,
}

fn style(app: &App, look: Look) -> Style {
    let s = Style::new();
    if app.no_color {
        return match look {
            Look::Title | Look::Key | Look::Bad => s.add_modifier(Modifier::BOLD),
            Look::Cursor => s.add_modifier(Modifier::REVERSED),
            Look::Selected => s.add_modifier(Modifier::UNDERLINED),
            Look::Dim => s.add_modifier(Modifier::DIM),
            _ => s,
        };
    }
    match look {
        Look::Title => s.add_modifier(Modifier::BOLD),
        Look::Good => s.fg(Color::Green),
        Look::Bad => s.fg(Color::Red).add_modifier(Modifier::BOLD),
        Look::Warn => s.fg(Color::Yellow),
        Look::Dim => s.add_modifier(Modifier::DIM),
        Look::Key => s.fg(Color::Cyan),
        Look::Str => s.fg(Color::Green),
        Look::Num => s.fg(Color::Magenta),
        Look::Cursor => s.add_modifier(Modifier::REVERSED),
        Look::Selected => s.fg(Color::Yellow).add_modifier(Modifier::BOLD),
    }
}

const SPINNER: [&str; 4] = ["|", "/", "-", "\\"];

/// Draw the whole screen.
pub fn render(app: &App, f: &mut Frame) {
    let [top, main, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(2),
    ])
    .areas(f.area());
    status_bar(app, f, top);
    match app.view {
        View::Queue => queue(app, f, main),
        View::Detail => detail(app, f, main),
        View::Diff => diff(app, f, main),
        View::Audit => audit(app, f, main),
        View::Rules => rules(app, f, main),
        View::Help => help(app, f, main),
    }
    footer(app, f, bottom);
    if let Some(p) = &app.prompt {
        prompt(app, f, main, p);
    }
}

fn status_bar(app: &App, f: &mut Frame, area: Rect) {
    let who = app.me.as_ref().map_or("?".to_string(), |m| {
        format!("{} ({})", m.identity, m.role.as_str())
    });
    let link = match &app.link {
        Link::Up => Span::styled("● connected", style(app, Look::Good)),
        Link::Connecting(n) => Span::styled(
            format!("{} connecting (attempt {n})", SPINNER[app.frame % 4]),
            style(app, Look::Warn),
        ),
        Link::Down(why, wait) => Span::styled(
            format!(
                "✗ disconnected, retrying in {}: {}",
                short_duration(wait.as_millis() as u64),
                why
            ),
            style(app, Look::Bad),
        ),
    };
    let busy = if app.waiting > 0 {
        format!(" {}", SPINNER[app.frame % 4])
    } else {
        String::new()
    };
    let line = Line::from(vec![
        Span::styled("tollgate ", style(app, Look::Title)),
        Span::raw(format!("{who} · {} pending · ", app.calls.len())),
        link,
        Span::raw(busy),
    ]);
    f.render_widget(Paragraph::new(line), area);
}

fn footer(app: &App, f: &mut Frame, area: Rect) {
    let items: &[(Command, &str)] = match app.view {
        View::Queue => &[
            (Command::Approve, "approve"),
            (Command::Reject, "reject"),
            (Command::Select, "select"),
            (Command::RejectSelected, "bulk reject"),
            (Command::BlockPattern, "block pattern"),
            (Command::Group, "group"),
            (Command::Filter, "filter"),
            (Command::Open, "detail"),
            (Command::Diff, "diff"),
            (Command::Audit, "audit"),
            (Command::Quit, "quit"),
        ],
        View::Help => &[],
        View::Rules => &[
            (Command::Back, "back"),
            (Command::Down, "down"),
            (Command::Up, "up"),
            (Command::Revoke, "revoke"),
            (Command::Quit, "back"),
        ],
        _ => &[
            (Command::Back, "back"),
            (Command::Down, "scroll"),
            (Command::Approve, "approve"),
            (Command::Reject, "reject"),
            (Command::Quit, "back"),
        ],
    };
    // As many hints as fit, always ending with the help key.
    let help = format!("{} help", app.keys.key_of(Command::Help));
    let mut hints = String::new();
    for (c, label) in items {
        let item = format!("{} {label}  ", app.keys.key_of(*c));
        if hints.chars().count() + item.chars().count() + help.len() > area.width as usize {
            break;
        }
        hints.push_str(&item);
    }
    hints.push_str(if app.view == View::Help {
        "any key closes the help"
    } else {
        &help
    });
    let mut state = format!("sort {}", app.sort.label());
    if app.grouping != Grouping::Flat {
        state.push_str(&format!(" · {}", app.grouping.label()));
    }
    let rules = app.active_rules().count();
    if rules > 0 {
        state.push_str(&format!(
            " · {rules} rule{}",
            if rules == 1 { "" } else { "s" }
        ));
    }
    if !app.filter.is_empty() {
        state.push_str(&format!(" · filter \"{}\"", app.filter));
    }
    if !app.selected.is_empty() {
        state.push_str(&format!(" · {} selected", app.selected.len()));
    }
    let note = app.notes.back().cloned().unwrap_or_default();
    let lines = vec![
        Line::from(vec![
            Span::styled(format!("[{state}] "), style(app, Look::Dim)),
            Span::raw(note),
        ]),
        Line::styled(hints, style(app, Look::Dim)),
    ];
    f.render_widget(Paragraph::new(lines), area);
}

fn queue(app: &App, f: &mut Frame, area: Rect) {
    let rows = app.rows();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let shown = app.shown();
    let of = if shown < app.calls.len() {
        format!(" (of {})", app.calls.len())
    } else {
        String::new()
    };
    let title = if app.grouping != Grouping::Flat {
        format!(
            " Queue · {} in {}{of} ",
            plural(shown, "call", "calls"),
            plural(
                rows.len(),
                if app.grouping == Grouping::Shape {
                    "pattern"
                } else {
                    "group"
                },
                if app.grouping == Grouping::Shape {
                    "patterns"
                } else {
                    "groups"
                }
            )
        )
    } else {
        format!(" Queue · {}{of} ", plural(shown, "call", "calls"))
    };
    let block = Block::bordered().title(Span::styled(title, style(app, Look::Title)));
    if rows.is_empty() {
        let text = if app.calls.is_empty() {
            "No calls are waiting for approval.".to_string()
        } else {
            format!("No pending call matches the filter \"{}\".", app.filter)
        };
        f.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let inner_h = area.height.saturating_sub(3) as usize;
    let first = app.cursor.saturating_sub(inner_h.saturating_sub(1));
    let wide = area.width >= 120;
    let args_w = area
        .width
        .saturating_sub(if wide { 69 } else { 54 })
        .max(10) as usize;
    let header = if wide {
        vec![
            "",
            "AGE",
            "EXPIRES",
            "SERVER/TOOL",
            "CLIENT",
            "×",
            "ARGUMENTS",
        ]
    } else {
        vec!["", "AGE", "EXP", "SERVER/TOOL", "CLIENT", "×", "ARGUMENTS"]
    };
    let body: Vec<TableRow> = rows
        .iter()
        .enumerate()
        .skip(first)
        .take(inner_h)
        .map(|(i, r)| {
            let c = &r.call;
            let sel = r.ids.iter().any(|id| app.selected.contains(id));
            // Visible without colour too: › is the cursor, ● a selected row.
            let mark = match (i == app.cursor, sel) {
                (true, true) => "◉",
                (true, false) => "›",
                (false, true) => "●",
                (false, false) => " ",
            };
            let age = short_duration(app.now_ms.saturating_sub(r.first_ms));
            let exp = match r.expires_ms {
                None => "-".into(),
                Some(at) if at <= app.now_ms => "now".into(),
                Some(at) => short_duration(at - app.now_ms),
            };
            let count = if r.pattern > 1 {
                format!("{}", r.pattern)
            } else {
                String::new()
            };
            let tool = format!("{}/{}", c.server, c.tool);
            let args = args_summary(&c.arguments.value(), args_w);
            // A group row leads with its rate, so a runaway loop reads as one.
            let args = if r.count > 1 {
                let rate = format!("[{:.0}/min] ", r.rate_per_min());
                format!(
                    "{rate}{}",
                    args_summary(&c.arguments.value(), args_w.saturating_sub(rate.len()))
                )
            } else {
                args
            };
            // Guard flags lead the line, so the approver sees them before opening the call:
            // a secret in the arguments, a probable loop, a client being throttled.
            let mut flags = String::new();
            if r.flags.secret {
                flags.push_str("[secret] ");
            }
            if r.flags.looping {
                flags.push_str("[loop] ");
            }
            if r.flags.throttled {
                flags.push_str("[throttled] ");
            }
            let args = format!("{flags}{args}");
            let cells: Vec<Cell> = vec![
                mark.into(),
                age.into(),
                exp.into(),
                tool.into(),
                c.client.to_string().into(),
                count.into(),
                args.into(),
            ];
            let mut row = TableRow::new(cells);
            if r.pattern > 1 {
                row = row.style(style(app, Look::Warn));
            }
            if sel {
                row = row.style(style(app, Look::Selected));
            }
            if i == app.cursor {
                row = row.style(style(app, Look::Cursor));
            }
            row
        })
        .collect();
    let widths: Vec<Constraint> = if wide {
        vec![
            Constraint::Length(1),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(28),
            Constraint::Length(12),
            Constraint::Length(5),
            Constraint::Min(10),
        ]
    } else {
        vec![
            Constraint::Length(1),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Length(20),
            Constraint::Length(9),
            Constraint::Length(3),
            Constraint::Min(10),
        ]
    };
    let table = Table::new(body, widths)
        .header(TableRow::new(header).style(style(app, Look::Dim)))
        .block(block);
    f.render_widget(table, area);
}

/// JSON as coloured lines (keys, strings, numbers).
fn json_lines(app: &App, text: &str) -> Vec<Line<'static>> {
    text.lines()
        .map(|l| {
            let indent = l.len() - l.trim_start().len();
            let t = l.trim_start();
            let mut spans = vec![Span::raw(" ".repeat(indent))];
            if let Some(rest) = t.strip_prefix('"')
                && let Some(end) = rest.find("\": ")
            {
                spans.push(Span::styled(
                    format!("\"{}\"", &rest[..end]),
                    style(app, Look::Key),
                ));
                spans.push(Span::raw(": "));
                spans.push(value_span(app, &rest[end + 3..]));
            } else {
                spans.push(value_span(app, t));
            }
            Line::from(spans)
        })
        .collect()
}

fn value_span(app: &App, v: &str) -> Span<'static> {
    let core = v.trim_end_matches(',');
    let look = if core.starts_with('"') {
        Look::Str
    } else if core.parse::<f64>().is_ok() || matches!(core, "true" | "false" | "null") {
        Look::Num
    } else {
        return Span::raw(v.to_string());
    };
    Span::styled(v.to_string(), style(app, look))
}

fn field(app: &App, name: &str, value: String) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{name:<10}"), style(app, Look::Dim)),
        Span::raw(value),
    ])
}

fn detail(app: &App, f: &mut Frame, area: Rect) {
    let Some(row) = app.current() else {
        f.render_widget(
            Paragraph::new("No call selected.").block(Block::bordered()),
            area,
        );
        return;
    };
    let c = &row.call;
    let mut lines = vec![
        field(app, "tool", format!("{}/{}", c.server, c.tool)),
        field(app, "client", c.client.to_string()),
        field(
            app,
            "rule",
            format!("\"{}\" (rule {} of the policy)", c.rule.name, c.rule.index),
        ),
        field(
            app,
            "received",
            format!(
                "{} ({} ago)",
                rfc3339_seconds(c.timings.received_ms),
                short_duration(app.now_ms.saturating_sub(c.timings.received_ms))
            ),
        ),
    ];
    if let Some(r) = &c.reason {
        lines.push(field(app, "why", r.clone()));
    }
    if let Some(h) = &c.hold {
        lines.push(field(
            app,
            "expires",
            format!(
                "{} (in {})",
                rfc3339_seconds(h.expires_ms),
                short_duration(h.expires_ms.saturating_sub(app.now_ms))
            ),
        ));
        let who = if h.approvers.is_empty() {
            "any approver".to_string()
        } else {
            h.approvers.join(", ")
        };
        lines.push(field(
            app,
            "needs",
            format!("{} approval(s) from {who}; waits as {:?}", h.quorum, h.mode).to_lowercase(),
        ));
    }
    for f in &c.findings {
        lines.push(Line::styled(
            format!(
                "secret    {} at {} ({}); shown redacted below",
                f.detector,
                if f.path.is_empty() { "/" } else { &f.path },
                f.masked
            ),
            style(app, Look::Bad),
        ));
    }
    if c.signals.repeats > 1 {
        lines.push(Line::styled(
            format!(
                "{:<10}{} calls of this shape in the last {}{}",
                if c.signals.looping { "loop" } else { "repeats" },
                c.signals.repeats,
                short_duration(c.signals.window_ms),
                if c.signals.looping {
                    " (over the loop threshold)"
                } else {
                    ""
                }
            ),
            style(
                app,
                if c.signals.looping {
                    Look::Bad
                } else {
                    Look::Dim
                },
            ),
        ));
    }
    if let Some(t) = &c.signals.throttled {
        lines.push(Line::styled(
            format!("throttled {t}"),
            style(app, Look::Warn),
        ));
    }
    for d in &c.decisions {
        lines.push(field(
            app,
            "decision",
            format!(
                "{:?} by {} at {}",
                d.verdict,
                d.by,
                rfc3339_seconds(d.at_ms)
            )
            .to_lowercase(),
        ));
    }
    if row.count > 1 {
        lines.push(Line::styled(
            format!(
                "pattern   {} {} calls, {:.1}/min, first seen {} ago, last {} ago (deciding this row decides all)",
                row.count,
                if app.grouping == Grouping::Shape {
                    "same-shape"
                } else {
                    "identical"
                },
                row.rate_per_min(),
                short_duration(app.now_ms.saturating_sub(row.first_ms)),
                short_duration(app.now_ms.saturating_sub(row.last_ms))
            ),
            style(app, Look::Warn),
        ));
    }
    lines.push(field(app, "call", c.id.to_string()));
    lines.push(Line::raw(""));
    lines.push(Line::styled("arguments", style(app, Look::Title)));
    lines.extend(json_lines(app, &pretty_sorted(&c.arguments.value())));
    let p = Paragraph::new(lines)
        .block(Block::bordered().title(Span::styled(" Call ", style(app, Look::Title))))
        .scroll((app.scroll, 0));
    f.render_widget(p, area);
}

fn diff(app: &App, f: &mut Frame, area: Rect) {
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

fn short_id(c: &CallRecord) -> String {
    let n = c.id.chars().count();
    c.id.chars().skip(n.saturating_sub(8)).collect()
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

fn audit(app: &App, f: &mut Frame, area: Rect) {
    let title = format!(
        " Audit trail · {} entries{} ",
        app.audit.len(),
        if app.filter.is_empty() {
            String::new()
        } else {
            format!(" · {}", app.filter)
        }
    );
    let block = Block::bordered().title(Span::styled(title, style(app, Look::Title)));
    if app.audit.is_empty() {
        let text = if app.waiting > 0 {
            "Searching…"
        } else {
            "No matching audit entries. Filter with server:, tool:, client:, approver:, status:."
        };
        f.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let inner_h = area.height.saturating_sub(3) as usize;
    let reason_w = area.width.saturating_sub(70).max(8) as usize;
    let rows: Vec<TableRow> = app
        .audit
        .iter()
        .rev()
        .take(inner_h)
        .map(|e| {
            let look = match e.outcome {
                tollgate_shared::Outcome::Approved | tollgate_shared::Outcome::Allowed => {
                    Look::Good
                }
                tollgate_shared::Outcome::Rejected | tollgate_shared::Outcome::Blocked => Look::Bad,
                _ => Look::Warn,
            };
            TableRow::new(vec![
                Cell::from(rfc3339_seconds(e.at_ms)[11..19].to_string()),
                Cell::from(Span::styled(e.outcome.as_str(), style(app, look))),
                Cell::from(format!("{}/{}", e.server, e.tool)),
                Cell::from(e.client.clone()),
                Cell::from(if e.approvers.is_empty() {
                    "-".into()
                } else {
                    e.approvers.join(",")
                }),
                Cell::from(cut(
                    e.reason.as_deref().or(e.error.as_deref()).unwrap_or(""),
                    reason_w,
                )),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(22),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Min(8),
        ],
    )
    .header(
        TableRow::new(vec![
            "TIME",
            "STATUS",
            "SERVER/TOOL",
            "CLIENT",
            "BY",
            "REASON",
        ])
        .style(style(app, Look::Dim)),
    )
    .block(block);
    f.render_widget(table, area);
}

fn rules(app: &App, f: &mut Frame, area: Rect) {
    let title = format!(
        " Temporary rules · {} · {} revokes ",
        app.active_rules().count(),
        app.keys.key_of(Command::Revoke)
    );
    let block = Block::bordered().title(Span::styled(title, style(app, Look::Title)));
    if app.active_rules().next().is_none() {
        let text = format!(
            "No temporary rules. {} on a queue row rejects its pattern and refuses new calls of it for {}.",
            app.keys.key_of(Command::BlockPattern),
            short_duration(app.block_for_ms)
        );
        f.render_widget(
            Paragraph::new(text).wrap(Wrap { trim: true }).block(block),
            area,
        );
        return;
    }
    let reason_w = area.width.saturating_sub(78).max(8) as usize;
    let rows: Vec<TableRow> = app
        .active_rules()
        .enumerate()
        .map(|(i, r)| {
            let kind = match r.kind {
                RuleKind::Block => "block".to_string(),
                RuleKind::Allow => format!("allow {}", r.remaining.unwrap_or(0)),
            };
            let mut row = TableRow::new(vec![
                Cell::from(if i == app.rule_cursor { "›" } else { " " }),
                Cell::from(r.id.clone()),
                Cell::from(kind),
                Cell::from(format!("{}/{}", r.server, r.tool)),
                Cell::from(r.by.clone()),
                Cell::from(short_duration(r.until_ms.saturating_sub(app.now_ms))),
                Cell::from(r.hits.to_string()),
                Cell::from(cut(r.reason.as_deref().unwrap_or(""), reason_w)),
            ]);
            if i == app.rule_cursor {
                row = row.style(style(app, Look::Cursor));
            }
            row
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(1),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(24),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Min(8),
        ],
    )
    .header(
        TableRow::new(vec![
            "",
            "ID",
            "KIND",
            "SERVER/TOOL",
            "BY",
            "LEFT",
            "HITS",
            "REASON",
        ])
        .style(style(app, Look::Dim)),
    )
    .block(block);
    f.render_widget(table, area);
}

fn help(app: &App, f: &mut Frame, area: Rect) {
    let mut lines: Vec<Line> = Command::ALL
        .iter()
        .map(|(c, _, _, text)| {
            Line::from(vec![
                Span::styled(
                    format!("{:>8}  ", app.keys.key_of(*c)),
                    style(app, Look::Key),
                ),
                Span::raw(*text),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "Filter words: free text, or server:NAME tool:NAME client:NAME (audit also approver:, status:).",
        style(app, Look::Dim),
    ));
    lines.push(Line::styled(
        "Keys are remappable in [keys] of the config file (see docs/console.md).",
        style(app, Look::Dim),
    ));
    lines.push(Line::styled(
        format!("Broker: {}", app.url),
        style(app, Look::Dim),
    ));
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(Span::styled(" Keys ", style(app, Look::Title)))),
        area,
    );
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn prompt(app: &App, f: &mut Frame, area: Rect, p: &Prompt) {
    let (title, lines) = match p {
        Prompt::Filter(text) => (
            " Filter ".to_string(),
            vec![
                Line::raw(format!("/{text}▏")),
                Line::styled(
                    "enter applies · esc cancels · ctrl-u clears",
                    style(app, Look::Dim),
                ),
            ],
        ),
        Prompt::Reason {
            verdict,
            count,
            text,
            target,
            block_for_ms,
        } => {
            let what = match target {
                Target::Fingerprint { .. } | Target::Ids { .. } if *count > 1 => {
                    format!("{count} calls")
                }
                _ => "this call".to_string(),
            };
            let mut lines = vec![
                Line::raw("Reason (shown to the agent):"),
                Line::raw(format!("{text}▏")),
            ];
            if let Some(ms) = block_for_ms {
                lines.insert(
                    0,
                    Line::styled(
                        format!(
                            "and refuse new calls of this pattern for {}",
                            short_duration(*ms)
                        ),
                        style(app, Look::Warn),
                    ),
                );
            }
            lines.push(Line::styled(
                "enter sends · esc cancels",
                style(app, Look::Dim),
            ));
            (format!(" {} {what} ", verb(*verdict)), lines)
        }
        Prompt::Confirm {
            verdict,
            count,
            summary,
            block_for_ms,
            ..
        } => {
            let mut lines = vec![
                Line::styled(
                    format!("{} {count} calls:", verb(*verdict)),
                    style(app, Look::Title),
                ),
                Line::raw(cut(summary, 60)),
            ];
            if let Some(ms) = block_for_ms {
                lines.push(Line::styled(
                    format!(
                        "and refuse new calls of this pattern for {}",
                        short_duration(*ms)
                    ),
                    style(app, Look::Warn),
                ));
            }
            lines.push(Line::raw(""));
            lines.push(Line::styled(
                "y confirms · n or esc cancels",
                style(app, Look::Dim),
            ));
            (format!(" {} {count} calls? ", verb(*verdict)), lines)
        }
    };
    let r = centered(area, 64, lines.len() as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(Span::styled(title, style(app, Look::Title)))),
        r,
    );
}

fn verb(v: Verdict) -> &'static str {
    match v {
        Verdict::Approve => "Approve",
        Verdict::Reject => "Reject",
    }
}
