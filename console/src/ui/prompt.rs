//! The prompts drawn over the views: the filter, a reason, a confirmation.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use tollgate_shared::Verdict;
use tollgate_shared::console::Target;

use crate::app::{App, Prompt};
use crate::fmt::{cut, short_duration};

use super::{Look, style};

pub(super) fn prompt(app: &App, f: &mut Frame, area: Rect, p: &Prompt) {
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
            hidden,
            summary,
            block_for_ms,
            ..
        } => {
            let mut lines = vec![Line::styled(
                format!("{} {count} calls:", verb(*verdict)),
                style(app, Look::Title),
            )];
            lines.extend(summary.lines().map(|l| Line::raw(cut(l, 60))));
            if *hidden > 0 {
                lines.push(Line::styled(
                    format!(
                        "{hidden} of them {} not shown: the filter hides {}",
                        if *hidden == 1 { "is" } else { "are" },
                        if *hidden == 1 { "it" } else { "them" }
                    ),
                    style(app, Look::Warn),
                ));
            }
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

fn verb(v: Verdict) -> &'static str {
    match v {
        Verdict::Approve => "Approve",
        Verdict::Reject => "Reject",
    }
}
