//! The help view: every key and what it does.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};

use crate::app::App;
use crate::keys::Command;

use super::{Look, style};

pub(super) fn help(app: &App, f: &mut Frame, area: Rect) {
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
    for example in [
        "Filter: words are ANDed; FIELD:VALUE with server, tool, client, arg (any argument), arg.PATH:",
        "  tool:write_file|delete_file   one tool or the other (| within a field)",
        "  -tool:read_*                  not these (- negates; * and ? are globs over the whole value)",
        "  arg.path:/etc/*  client:bot   an argument's value, and a client (a value without * matches anywhere)",
        "  The audit view (u) also takes approver:NAME and status:STATUS.",
    ] {
        lines.push(Line::styled(example, style(app, Look::Dim)));
    }
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
