//! The terminal loop: raw mode and the alternate screen, a thread reading keys, a ticker, and
//! the broker backend, all feeding [`Action`]s to [`update`] and redrawing after each.
//! The loop never waits on the network: the backend runs in its own task behind channels.

use std::io::Stdout;
use std::time::Duration;

use anyhow::{Context, Result};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{
    self, DisableFocusChange, EnableFocusChange, Event as TermEvent, KeyEvent, KeyEventKind,
};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use tokio::sync::mpsc;

use crate::alert::Alerter;
use crate::app::{Action, App, update_batch};
use crate::client::{self, Event, Settings};
use crate::keys::KeyMap;
use crate::ui;
use tollgate_shared::clock::now_ms;

/// Restores the terminal however the loop ends (including a panic).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(std::io::stdout(), DisableFocusChange, LeaveAlternateScreen);
    }
}

/// What the terminal reader thread reports.
enum Input {
    Key(KeyEvent),
    Resize,
    Focus(bool),
}

/// Run the TUI until the user quits.
pub async fn run(
    settings: Settings,
    keys: KeyMap,
    block_for_ms: u64,
    mut alerter: Alerter,
) -> Result<()> {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let mut app = App::new(settings.url.clone(), keys, no_color, now_ms());
    app.block_for_ms = block_for_ms;
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let (req_tx, req_rx) = mpsc::channel(64);
    let sign = settings.sign.clone();
    client::spawn_backend(settings, ev_tx, req_rx);

    let (key_tx, mut key_rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(200)) {
                Ok(true) => match event::read() {
                    Ok(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => {
                        if key_tx.blocking_send(Input::Key(k)).is_err() {
                            return;
                        }
                    }
                    Ok(TermEvent::Resize(..)) => {
                        if key_tx.blocking_send(Input::Resize).is_err() {
                            return;
                        }
                    }
                    Ok(e @ (TermEvent::FocusGained | TermEvent::FocusLost)) => {
                        let focused = matches!(e, TermEvent::FocusGained);
                        if key_tx.blocking_send(Input::Focus(focused)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                Ok(false) => {
                    if key_tx.is_closed() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });

    enable_raw_mode().context("cannot put the terminal in raw mode (is this a terminal?)")?;
    let _restore = Restore;
    execute!(std::io::stdout(), EnterAlternateScreen, EnableFocusChange)?;
    let mut term: Terminal<CrosstermBackend<Stdout>> =
        Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    term.clear()?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        term.draw(|f| ui::render(&app, f))?;
        let action = tokio::select! {
            k = key_rx.recv() => match k {
                Some(Input::Key(k)) => {
                    alerter.key(now_ms());
                    Action::Key(k)
                }
                Some(Input::Resize) => continue,
                Some(Input::Focus(focused)) => {
                    alerter.focus(focused, now_ms());
                    continue;
                }
                None => break,
            },
            e = ev_rx.recv() => match e {
                Some(e) => Action::Broker(e),
                None => break,
            },
            _ = tick.tick() => Action::Tick(now_ms()),
        };
        // Whatever else has arrived meanwhile is applied with it, so a burst of broker
        // events costs one rebuild and one frame.
        let mut actions = vec![action];
        while actions.len() < 4096 {
            match ev_rx.try_recv() {
                Ok(e) => actions.push(Action::Broker(e)),
                Err(_) => break,
            }
        }
        let arrived: Vec<&tollgate_shared::CallRecord> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Broker(Event::Message(m)) => match &**m {
                    tollgate_shared::console::ServerMsg::CallPending { call }
                        if !app.calls.contains_key(&call.id) =>
                    {
                        Some(&**call)
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect();
        if let Some(first) = arrived.first() {
            let summary = format!("{}/{} from {}", first.server, first.tool, first.client);
            if let Some(alert) = alerter.arrived(arrived.len(), &summary, now_ms()) {
                let json = serde_json::to_string(&arrived).unwrap_or_default();
                alert.give(&mut std::io::stdout(), &json);
            }
        }
        for mut msg in update_batch(&mut app, actions) {
            // Signed where the decision is made: over the calls as this screen shows them.
            let me = app
                .me
                .as_ref()
                .map(|m| m.identity.clone())
                .unwrap_or_default();
            let calls = &app.calls;
            if let Err(e) = crate::signing::sign_if(
                sign.as_ref(),
                &me,
                &mut msg,
                &|id| calls.get(id).cloned(),
                &|| calls.values().cloned().collect(),
            ) {
                app.waiting = app.waiting.saturating_sub(1);
                app.notes.push_back(format!("not sent: {e:#}"));
                continue;
            }
            if req_tx.try_send(msg).is_err() {
                app.waiting = app.waiting.saturating_sub(1);
                app.notes
                    .push_back("not sent: the broker connection is busy or down; try again".into());
            }
        }
        if app.quit {
            break;
        }
    }
    Ok(())
}
