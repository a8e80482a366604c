//! The queue view: one row per call or group, with its age, expiry, flags and arguments.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Block, Cell, Paragraph, Row as TableRow, Table};

use tollgate_shared::CallRecord;

use crate::app::{App, Grouping};
use crate::fmt::{args_summary, short_duration};

use super::{Look, style};

pub(super) fn queue(app: &App, f: &mut Frame, area: Rect) {
    let n_rows = app.row_count();
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
            " Queue · {} in {n_rows} {}{of} ",
            plural(shown, "call", "calls"),
            app.grouping.unit(n_rows),
        )
    } else {
        format!(" Queue · {}{of} ", plural(shown, "call", "calls"))
    };
    let block = Block::bordered().title(Span::styled(title, style(app, Look::Title)));
    if n_rows == 0 {
        let text = if app.calls.is_empty() {
            "No calls are waiting for approval.".to_string()
        } else {
            format!(
                "No pending call matches the filter \"{}\".",
                app.filter_text
            )
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
    let by_field = matches!(
        app.grouping,
        Grouping::Tool | Grouping::Client | Grouping::Server
    );
    let body: Vec<TableRow> = app
        .rows_from(first)
        .take(inner_h)
        .enumerate()
        .map(|(i, r)| {
            let i = i + first;
            let c = &r.call;
            // Whichever set is smaller is walked: a 100 000-call row with a few selected.
            let sel = !app.selected.is_empty()
                && if r.ids.len() <= app.selected.len() {
                    r.ids.iter().any(|id| app.selected.contains(id))
                } else {
                    app.selected.iter().any(|id| r.ids.contains(id))
                };
            // Visible without colour too: › is the cursor, ● a selected row.
            let mark = match (i == app.cursor, sel) {
                (true, true) => "◉",
                (true, false) => "›",
                (false, true) => "●",
                (false, false) => " ",
            };
            let age = short_duration(app.now_ms.saturating_sub(r.first_ms));
            let exp = match r.expires_ms() {
                None => "-".into(),
                Some(u64::MAX) => "never".into(),
                Some(at) if at <= app.now_ms => "now".into(),
                Some(at) => short_duration(at - app.now_ms),
            };
            // A row by tool, client or server counts its calls; any other row, the pending
            // calls of its pattern (a repeated call), shown or not.
            let pattern = if by_field { 1 } else { app.pattern_size(r) };
            let count = if by_field && r.count() > 1 {
                r.count().to_string()
            } else if pattern > 1 {
                pattern.to_string()
            } else {
                String::new()
            };
            // A row of several tools or clients says how many, not the newest one's name.
            // Looked up in the row's first 200 calls, so a frame stays cheap ("3+ tools"
            // when there may be more).
            const LOOK: usize = 200;
            let distinct = |f: &dyn Fn(&CallRecord) -> &str| -> Option<String> {
                let mut seen: Vec<&str> = Vec::new();
                for id in r.ids.iter().take(LOOK) {
                    if let Some(c) = app.calls.get(id)
                        && !seen.contains(&f(c))
                    {
                        seen.push(f(c));
                    }
                }
                let more = if r.ids.len() > LOOK { "+" } else { "" };
                (seen.len() > 1).then(|| format!("{}{more}", seen.len()))
            };
            let tool = match app.grouping {
                Grouping::Client | Grouping::Server => match distinct(&|c| &c.tool) {
                    Some(k) => format!("{}/{k} tools", c.server),
                    None => format!("{}/{}", c.server, c.tool),
                },
                _ => format!("{}/{}", c.server, c.tool),
            };
            let client = match app.grouping {
                Grouping::Tool | Grouping::Server => match distinct(&|c| &c.client) {
                    Some(k) => format!("{k} clients"),
                    None => c.client.to_string(),
                },
                _ => c.client.to_string(),
            };
            let args = args_summary(&c.arguments.value(), args_w);
            // A group row leads with its rate, so a runaway loop reads as one.
            let args = if r.count() > 1 {
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
            let row_flags = r.flags();
            if row_flags.secret {
                flags.push_str("[secret] ");
            }
            if row_flags.looping {
                flags.push_str("[loop] ");
            }
            if row_flags.throttled {
                flags.push_str("[throttled] ");
            }
            let args = format!("{flags}{args}");
            let cells: Vec<Cell> = vec![
                mark.into(),
                age.into(),
                exp.into(),
                tool.into(),
                client.into(),
                count.into(),
                args.into(),
            ];
            let mut row = TableRow::new(cells);
            if pattern > 1 {
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
