//! The rules view: the temporary rules decisions installed, and how long each lasts.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Block, Cell, Paragraph, Row as TableRow, Table, Wrap};
use tollgate_shared::console::RuleKind;

use crate::app::App;
use crate::fmt::{cut, short_duration};
use crate::keys::Command;

use super::{Look, style};

pub(super) fn rules(app: &App, f: &mut Frame, area: Rect) {
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
