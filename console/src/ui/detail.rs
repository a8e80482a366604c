//! The detail view: one call in full, its arguments pretty-printed, its findings and decisions.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use tollgate_shared::clock::rfc3339_seconds;

use crate::app::{App, Grouping};
use crate::fmt::{pretty_sorted, short_duration};

use super::{Look, field, json_lines, style};

pub(super) fn detail(app: &App, f: &mut Frame, area: Rect) {
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
            if h.expires_ms == u64::MAX {
                "never: waits until someone decides".to_string()
            } else {
                format!(
                    "{} (in {})",
                    rfc3339_seconds(h.expires_ms),
                    short_duration(h.expires_ms.saturating_sub(app.now_ms))
                )
            },
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
    if row.count() > 1 {
        lines.push(Line::styled(
            format!(
                "pattern   {} {} calls, {:.1}/min, first seen {} ago, last {} ago (deciding this row decides all)",
                row.count(),
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
