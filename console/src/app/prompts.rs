//! The modal prompts: the filter, a rejection's reason, and the confirmation of a decision on
//! many calls. Keys go to an open prompt before anything else.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use tollgate_shared::Verdict;
use tollgate_shared::console::{ClientMsg, Target};

use super::{App, View};

/// A modal question.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Typing the filter.
    Filter(String),
    /// Typing the reason of a decision on `target` covering `count` calls.
    Reason {
        /// Approve or reject.
        verdict: Verdict,
        /// Which calls.
        target: Target,
        /// How many calls.
        count: usize,
        /// Also block the pattern for this long (ms).
        block_for_ms: Option<u64>,
        /// Text so far.
        text: String,
    },
    /// Confirming a decision on many calls.
    Confirm {
        /// Approve or reject.
        verdict: Verdict,
        /// Which calls.
        target: Target,
        /// How many calls.
        count: usize,
        /// How many of them the filter hides (a selection made under another filter).
        hidden: usize,
        /// Also block the pattern for this long (ms).
        block_for_ms: Option<u64>,
        /// "db/execute_sql ×498, fs/write ×2".
        summary: String,
    },
}

fn text_input(text: &mut String, key: &KeyEvent) -> Option<bool> {
    match key.code {
        KeyCode::Enter => Some(true),
        KeyCode::Esc => Some(false),
        KeyCode::Backspace => {
            text.pop();
            None
        }
        KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => {
            text.clear();
            None
        }
        KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
            text.push(c);
            None
        }
        _ => None,
    }
}

pub(super) fn prompt_key(app: &mut App, key: &KeyEvent) -> Option<ClientMsg> {
    let prompt = app.prompt.take()?;
    match prompt {
        Prompt::Filter(mut text) => {
            match text_input(&mut text, key) {
                Some(true) => {
                    app.set_filter(text.trim().to_string());
                    if app.view == View::Audit {
                        return app.audit_query();
                    }
                }
                Some(false) => {}
                None => app.prompt = Some(Prompt::Filter(text)),
            }
            None
        }
        Prompt::Reason {
            verdict,
            target,
            count,
            block_for_ms,
            mut text,
        } => match text_input(&mut text, key) {
            Some(true) => {
                let reason = Some(text.trim().to_string()).filter(|t| !t.is_empty());
                app.send_decision(verdict, target, reason, block_for_ms)
            }
            Some(false) => {
                app.note("cancelled: nothing was decided".into());
                None
            }
            None => {
                app.prompt = Some(Prompt::Reason {
                    verdict,
                    target,
                    count,
                    block_for_ms,
                    text,
                });
                None
            }
        },
        Prompt::Confirm {
            verdict,
            target,
            count,
            hidden,
            block_for_ms,
            summary,
        } => match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') => {
                if let Target::Ids { ids } = &target {
                    for id in ids {
                        app.unselect(id);
                    }
                }
                app.ask_or_send(verdict, target, count, block_for_ms)
            }
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => {
                app.note("cancelled: nothing was decided".into());
                None
            }
            _ => {
                app.prompt = Some(Prompt::Confirm {
                    verdict,
                    target,
                    count,
                    hidden,
                    block_for_ms,
                    summary,
                });
                None
            }
        },
    }
}
