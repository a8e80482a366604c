//! The queue view: one row per call or group, with its age, expiry, flags and arguments.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Block, Cell, Paragraph, Row as TableRow, Table};

use crate::app::{App, Grouping};
use crate::fmt::{args_summary, short_duration};

use super::{Look, style};

pub(super) fn queue(app: &App, f: &mut Frame, area: Rect) {
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
                Some(u64::MAX) => "never".into(),
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
