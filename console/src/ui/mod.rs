//! Drawing: a pure function of the [`App`] state onto a ratatui frame. Nothing here changes
//! state or touches the network, so every view is snapshot-tested with `TestBackend`.//!
//! One file per view: [`queue`], [`detail`], [`diff`], [`audit`], [`rules`], [`help`], and
//! the [`prompt`]s drawn over them; the status bar, the footer and shared styles are here.

mod audit;
mod detail;
mod diff;
mod help;
mod prompt;
mod queue;
mod rules;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::app::{App, Link, View};
use crate::fmt::short_duration;
use crate::keys::Command;

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
        View::Queue => queue::queue(app, f, main),
        View::Detail => detail::detail(app, f, main),
        View::Diff => diff::diff(app, f, main),
        View::Audit => audit::audit(app, f, main),
        View::Rules => rules::rules(app, f, main),
        View::Help => help::help(app, f, main),
    }
    footer(app, f, bottom);
    if let Some(p) = &app.prompt {
        prompt::prompt(app, f, main, p);
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
    let mut spans = vec![
        Span::styled("tollgate ", style(app, Look::Title)),
        Span::raw(format!("{who} · {} pending · ", app.calls.len())),
        link,
        Span::raw(busy),
    ];
    if let Some(failing) = &app.store {
        spans.push(Span::styled(
            format!(
                " · ✗ STORE CANNOT WRITE for {}: decisions fail, see the broker's log",
                short_duration(app.now_ms.saturating_sub(failing.since_ms))
            ),
            style(app, Look::Bad),
        ));
    }
    if !app.notify.is_ok() {
        let mut text = Vec::new();
        if app.notify.dropped > 0 {
            text.push(format!("{} dropped", app.notify.dropped));
        }
        if !app.notify.failing.is_empty() {
            let sinks: Vec<&str> = app.notify.failing.iter().map(|(s, _)| s.as_str()).collect();
            text.push(format!("failing: {}", sinks.join(", ")));
        }
        spans.push(Span::styled(
            format!(" · ✗ notifications {}", text.join(", ")),
            style(app, Look::Bad),
        ));
    }
    let line = Line::from(spans);
    f.render_widget(Paragraph::new(line), area);
}

fn footer(app: &App, f: &mut Frame, area: Rect) {
    let k = |c: Command| app.keys.key_of(c);
    let mut items: Vec<(String, String)> = Vec::new();
    let mut add = |key: String, label: String| {
        if !items.iter().any(|(have, _)| *have == key) {
            items.push((key, label));
        }
    };
    match app.view {
        View::Queue => {
            // With a selection or a filter, the bulk keys come first.
            let selected = app.selected.len();
            if selected > 0 {
                add(k(Command::ApproveSelected), format!("approve {selected}"));
                add(k(Command::RejectSelected), format!("reject {selected}"));
            }
            if !app.filter_text.is_empty() {
                add(k(Command::SelectAll), format!("select all {}", app.shown()));
                add(k(Command::Back), "clear filter".into());
            } else if selected > 0 {
                add(k(Command::Back), "unselect".into());
            }
            add(k(Command::Approve), "approve".into());
            add(k(Command::Reject), "reject".into());
            add(k(Command::Select), "select".into());
            add(k(Command::SelectAll), "all".into());
            if selected == 0 {
                add(
                    format!(
                        "{}/{}",
                        k(Command::ApproveSelected),
                        k(Command::RejectSelected)
                    ),
                    "decide selected".into(),
                );
            }
            add(k(Command::Group), "group".into());
            add(k(Command::Filter), "filter".into());
            add(k(Command::BlockPattern), "block pattern".into());
            add(k(Command::Open), "detail".into());
            add(k(Command::Diff), "diff".into());
            add(k(Command::Audit), "audit".into());
            add(k(Command::Quit), "quit".into());
        }
        View::Help => {}
        View::Rules => {
            add(k(Command::Back), "back".into());
            add(k(Command::Down), "down".into());
            add(k(Command::Up), "up".into());
            add(k(Command::Revoke), "revoke".into());
            add(k(Command::Quit), "back".into());
        }
        _ => {
            add(k(Command::Back), "back".into());
            add(k(Command::Down), "scroll".into());
            add(k(Command::Approve), "approve".into());
            add(k(Command::Reject), "reject".into());
            add(k(Command::Quit), "back".into());
        }
    }
    // As many hints as fit the width, most useful first, always ending with the help key.
    let help = format!("{} help", k(Command::Help));
    let mut hints = String::new();
    for (key, label) in &items {
        let item = format!("{key} {label}  ");
        if hints.chars().count() + item.chars().count() + help.len() > area.width as usize {
            continue;
        }
        hints.push_str(&item);
    }
    hints.push_str(if app.view == View::Help {
        "any key closes the help"
    } else {
        &help
    });
    // What narrows the queue goes last but must stay visible: on a narrow terminal the sort
    // order is left out and the selection said shortly, before anything is cut.
    let state_line = |compact: bool| {
        let mut parts = Vec::new();
        if !compact {
            parts.push(format!("sort {}", app.sort.label()));
        }
        parts.push(app.grouping.label().to_string());
        let rules = app.active_rules().count();
        if rules > 0 {
            parts.push(format!("{rules} rule{}", if rules == 1 { "" } else { "s" }));
        }
        if !app.filter_text.is_empty() {
            parts.push(format!("filter \"{}\"", app.filter_text));
        }
        if !app.selected.is_empty() {
            let hidden = match (app.hidden_selected, compact) {
                (0, _) => String::new(),
                (n, false) => format!(" ({n} hidden by the filter)"),
                (n, true) => format!(" ({n} hidden)"),
            };
            parts.push(format!("{} selected{hidden}", app.selected.len()));
        }
        format!("[{}] ", parts.join(" · "))
    };
    let mut state = state_line(false);
    if state.chars().count() > area.width as usize {
        state = state_line(true);
    }
    let note = app.notes.back().cloned().unwrap_or_default();
    let lines = vec![
        Line::from(vec![
            Span::styled(state, style(app, Look::Dim)),
            Span::raw(note),
        ]),
        Line::styled(hints, style(app, Look::Dim)),
    ];
    f.render_widget(Paragraph::new(lines), area);
}

/// JSON as coloured lines (keys, strings, numbers).
pub(super) fn json_lines(app: &App, text: &str) -> Vec<Line<'static>> {
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

pub(super) fn field(app: &App, name: &str, value: String) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{name:<10}"), style(app, Look::Dim)),
        Span::raw(value),
    ])
}
