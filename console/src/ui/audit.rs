//! The audit view: the trail's newest entries matching the filter.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Block, Cell, Paragraph, Row as TableRow, Table};
use tollgate_shared::clock::rfc3339_seconds;

use crate::app::App;
use crate::fmt::cut;

use super::{Look, style};

pub(super) fn audit(app: &App, f: &mut Frame, area: Rect) {
    let title = format!(
        " Audit trail · {} entries{} ",
        app.audit.len(),
        if app.filter_text.is_empty() {
            String::new()
        } else {
            format!(" · {}", app.filter_text)
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
