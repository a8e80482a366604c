//! The TUI's state and its one way of changing: [`update`] takes an [`Action`] (a key, a tick,
//! something from the broker) and returns what to send to the broker, if anything. No I/O
//! happens here, so every behaviour is tested without a terminal or a network.
//!
//! The state of each view lives beside it: [`rows`] (the queue: grouping, sorting, the cursor,
//! kept up call by call), [`filter`] (the filter's syntax), [`decide`] (decisions from the
//! queue), [`prompts`] (the filter, reason and confirmation prompts), [`diff`] (which call to
//! compare with), [`audit`] (the audit view's query) and [`events`] (what the broker tells us).

mod audit;
mod decide;
mod diff;
mod events;
mod filter;
mod prompts;
mod rows;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ratatui::crossterm::event::{KeyEvent, KeyModifiers};
use tollgate_shared::audit::AuditEntry;
use tollgate_shared::console::{ClientMsg, TempRule};
use tollgate_shared::{CallRecord, Name, Verdict};

use crate::client::{Event, Me};
use crate::keys::{Command, KeyMap};
pub use filter::Filter;
pub use prompts::Prompt;
pub use rows::{Grouping, Row, RowFlags, RowKey, Sort};

/// The state of the connection, as shown in the status bar.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// Trying (attempt number).
    Connecting(u32),
    /// Connected.
    Up,
    /// Lost; retrying after the delay.
    Down(String, Duration),
}

/// What fills the main area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The pending calls.
    Queue,
    /// One call in full.
    Detail,
    /// One call's arguments against another's.
    Diff,
    /// The audit trail.
    Audit,
    /// The temporary rules.
    Rules,
    /// Every key.
    Help,
}

/// Everything the TUI knows.
#[derive(Debug, Clone)]
pub struct App {
    /// The broker URL (for the status bar).
    pub url: String,
    /// Who we are, once connected.
    pub me: Option<Me>,
    /// Connection state.
    pub link: Link,
    /// Pending calls by id, so in arrival order (ids are UUID v7). Changed only through
    /// `arrive`, `depart` and snapshots, which keep the rows up to date.
    pub calls: BTreeMap<Name, Arc<CallRecord>>,
    /// The rows, updated call by call.
    rows: rows::Rows,
    /// Set when the rows must be rebuilt (new filter, grouping, sort or snapshot).
    dirty: bool,
    /// Calls that left the queue, newest last (for diffs and "decided by" notes).
    pub history: VecDeque<Arc<CallRecord>>,
    /// Cursor position in the visible rows.
    pub cursor: usize,
    /// The row under the cursor, so arrivals do not move it.
    pub cursor_key: Option<RowKey>,
    /// The row we just decided: the cursor does not follow it while it drains.
    leaving: Option<RowKey>,
    /// Selected call ids (changed through `select`/`unselect`, which keep the hidden count).
    pub selected: BTreeSet<Name>,
    /// Selected calls the filter hides (shown in the status line and the confirmation).
    pub hidden_selected: usize,
    /// Set when `hidden_selected` must be counted again.
    hidden_dirty: bool,
    /// Set by a decision taken under a filter: the filter clears itself once it matches
    /// nothing pending.
    clear_filter_when_done: bool,
    /// Decisions sent and not answered yet, by request number (for the summary note).
    asked: HashMap<u64, (Verdict, Option<String>)>,
    /// Calls decided from this console: approved, rejected.
    pub tally: (usize, usize),
    /// The main view.
    pub view: View,
    /// How rows group calls (by default identical calls: a runaway loop is one line).
    pub grouping: Grouping,
    /// The filter as typed (see [`filter`] for the syntax).
    pub filter_text: String,
    /// The filter, compiled.
    filter: Filter,
    /// Sort order.
    pub sort: Sort,
    /// A modal question, if one is open.
    pub prompt: Option<Prompt>,
    /// The call marked as diff reference.
    pub marked: Option<Arc<CallRecord>>,
    /// Status messages, newest last.
    pub notes: VecDeque<String>,
    /// The last audit query's entries.
    pub audit: Vec<AuditEntry>,
    /// Active temporary rules.
    pub rules: Vec<TempRule>,
    /// Cursor in the rules view.
    pub rule_cursor: usize,
    /// How long `x` blocks a pattern (ms).
    pub block_for_ms: u64,
    /// Detail/diff scroll offset.
    pub scroll: u16,
    /// Requests sent and not answered yet (shows a spinner).
    pub waiting: usize,
    /// Set while the broker's store cannot write (shown in the status bar).
    pub store: Option<tollgate_shared::console::StoreFailing>,
    /// Dropped notifications and failing sinks, as the broker last said (shown in the status
    /// bar while anything is wrong).
    pub notify: tollgate_shared::console::NotifyHealth,
    /// Next request number.
    pub next_req: u64,
    /// Key bindings.
    pub keys: KeyMap,
    /// The time (ms since the epoch) as of the last tick; rendering uses it.
    pub now_ms: u64,
    /// Spinner frame.
    pub frame: usize,
    /// Colours off (`NO_COLOR`).
    pub no_color: bool,
    /// Set when the user asked to quit.
    pub quit: bool,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A key was pressed.
    Key(KeyEvent),
    /// Time passed (ms since the epoch).
    Tick(u64),
    /// The broker connection reported something.
    Broker(Event),
}

const HISTORY: usize = 2000;
/// How long `x` blocks a pattern unless the config says otherwise: 15 minutes.
pub const DEFAULT_BLOCK_MS: u64 = 15 * 60_000;
const NOTES: usize = 50;

impl App {
    /// A fresh state.
    pub fn new(url: String, keys: KeyMap, no_color: bool, now_ms: u64) -> App {
        App {
            url,
            me: None,
            link: Link::Connecting(1),
            store: None,
            notify: Default::default(),
            calls: BTreeMap::new(),
            rows: Default::default(),
            dirty: false,
            history: VecDeque::new(),
            cursor: 0,
            cursor_key: None,
            leaving: None,
            selected: BTreeSet::new(),
            hidden_selected: 0,
            hidden_dirty: false,
            clear_filter_when_done: false,
            asked: HashMap::new(),
            tally: (0, 0),
            view: View::Queue,
            grouping: Grouping::Exact,
            filter_text: String::new(),
            filter: Filter::default(),
            sort: Sort::Age,
            prompt: None,
            marked: None,
            notes: VecDeque::new(),
            audit: Vec::new(),
            rules: Vec::new(),
            rule_cursor: 0,
            block_for_ms: DEFAULT_BLOCK_MS,
            scroll: 0,
            waiting: 0,
            next_req: 0,
            keys,
            now_ms,
            frame: 0,
            no_color,
            quit: false,
        }
    }

    fn note(&mut self, s: String) {
        self.notes.push_back(s);
        while self.notes.len() > NOTES {
            self.notes.pop_front();
        }
    }

    /// Temporary rules that have not expired yet (the broker does not announce expiry).
    pub fn active_rules(&self) -> impl Iterator<Item = &TempRule> {
        self.rules.iter().filter(|r| r.until_ms > self.now_ms)
    }

    /// Set the filter; the rows are rebuilt, the cursor goes to the top.
    pub(super) fn set_filter(&mut self, text: String) {
        self.filter = Filter::new(&text);
        self.filter_text = text;
        self.clear_filter_when_done = false;
        self.cursor = 0;
        self.cursor_key = None;
        self.hidden_dirty = true;
        self.settle_cursor();
        if !self.filter.unknown.is_empty() {
            self.note(format!(
                "not a field: {}; searched as text (fields: server, tool, client, arg, arg.NAME)",
                self.filter.unknown.join(", ")
            ));
        }
    }

    fn select(&mut self, id: Name) {
        self.selected.insert(id);
        self.hidden_dirty = true;
    }

    fn unselect(&mut self, id: &str) {
        if self.selected.remove(id) {
            self.hidden_dirty = true;
        }
    }

    fn selection_changed(&mut self) {
        self.hidden_dirty = true;
    }

    fn request(&mut self, make: impl FnOnce(Option<u64>) -> ClientMsg) -> Option<ClientMsg> {
        self.next_req += 1;
        self.waiting += 1;
        Some(make(Some(self.next_req)))
    }
}

/// Apply one action; returns a message for the broker, if the action calls for one.
pub fn update(app: &mut App, action: Action) -> Option<ClientMsg> {
    let out = apply(app, action);
    app.refresh();
    out
}

/// Apply several actions and rebuild the rows once: a burst of arrivals costs one rebuild.
pub fn update_batch(app: &mut App, actions: Vec<Action>) -> Vec<ClientMsg> {
    let out = actions.into_iter().filter_map(|a| apply(app, a)).collect();
    app.refresh();
    out
}

fn apply(app: &mut App, action: Action) -> Option<ClientMsg> {
    if matches!(action, Action::Key(_)) {
        // Keys act on what is on screen.
        app.refresh();
    }
    match action {
        Action::Tick(now) => {
            app.now_ms = now;
            app.frame = app.frame.wrapping_add(1);
            None
        }
        Action::Broker(e) => events::broker(app, e),
        Action::Key(key) => {
            if app.prompt.is_some() {
                return prompts::prompt_key(app, &key);
            }
            let cmd = app.keys.command(&key)?;
            if app.view == View::Help && cmd != Command::Quit {
                app.view = View::Queue;
                return None;
            }
            match cmd {
                Command::Quit => {
                    if app.view == View::Queue || key.modifiers.contains(KeyModifiers::CONTROL) {
                        app.quit = true;
                    } else {
                        app.view = View::Queue;
                    }
                    None
                }
                Command::Down if app.view == View::Rules => {
                    let n = app.active_rules().count();
                    app.rule_cursor = (app.rule_cursor + 1).min(n.saturating_sub(1));
                    None
                }
                Command::Up if app.view == View::Rules => {
                    app.rule_cursor = app.rule_cursor.saturating_sub(1);
                    None
                }
                Command::Down => {
                    if matches!(app.view, View::Detail | View::Diff) {
                        app.scroll = app.scroll.saturating_add(1);
                    } else {
                        app.move_cursor(1);
                    }
                    None
                }
                Command::Up => {
                    if matches!(app.view, View::Detail | View::Diff) {
                        app.scroll = app.scroll.saturating_sub(1);
                    } else {
                        app.move_cursor(-1);
                    }
                    None
                }
                Command::PageDown => {
                    app.move_cursor(10);
                    None
                }
                Command::PageUp => {
                    app.move_cursor(-10);
                    None
                }
                Command::Open => {
                    if app.current().is_some() {
                        app.view = View::Detail;
                        app.scroll = 0;
                    }
                    None
                }
                Command::Back => {
                    // In the queue, esc undoes what narrows it: the filter first, then the
                    // selection.
                    if app.view == View::Queue {
                        if !app.filter_text.is_empty() {
                            app.note(format!("filter \"{}\" cleared", app.filter_text));
                            app.set_filter(String::new());
                        } else if !app.selected.is_empty() {
                            app.note(format!("{} calls unselected", app.selected.len()));
                            app.selected.clear();
                            app.selection_changed();
                        }
                    }
                    app.view = View::Queue;
                    None
                }
                Command::Approve => app.decide_current(Verdict::Approve, false),
                Command::Reject => app.decide_current(Verdict::Reject, false),
                Command::BlockPattern => app.decide_current(Verdict::Reject, true),
                Command::Rules => {
                    app.view = View::Rules;
                    app.request(|req| ClientMsg::ListRules { req })
                }
                Command::Revoke => {
                    if app.view != View::Rules {
                        app.note(format!(
                            "{} revokes a rule in the rules view ({})",
                            app.keys.key_of(Command::Revoke),
                            app.keys.key_of(Command::Rules)
                        ));
                        return None;
                    }
                    let id = app.active_rules().nth(app.rule_cursor)?.id.clone();
                    app.request(|req| ClientMsg::RevokeRule { req, id })
                }
                Command::Select => {
                    if let Some(row) = app.current() {
                        let ids = row.ids.clone();
                        let all_in = ids.iter().all(|id| app.selected.contains(id));
                        for id in ids {
                            if all_in {
                                app.unselect(&id);
                            } else {
                                app.select(id);
                            }
                        }
                        app.move_cursor(1);
                    }
                    None
                }
                Command::SelectAll => {
                    let ids: Vec<Name> = app
                        .rows_from(0)
                        .flat_map(|r| r.ids.iter().cloned())
                        .collect();
                    let n = ids.len();
                    for id in ids {
                        app.select(id);
                    }
                    app.note(format!("{n} calls selected"));
                    None
                }
                Command::ApproveSelected => app.decide_selected(Verdict::Approve),
                Command::RejectSelected => app.decide_selected(Verdict::Reject),
                Command::Group | Command::GroupBack => {
                    app.grouping = app.grouping.next(cmd == Command::Group);
                    app.cursor_key = app.current().map(|r| app.grouping.key(&r.call));
                    app.note(format!("rows {}", app.grouping.label()));
                    app.settle_cursor();
                    None
                }
                Command::Filter => {
                    app.prompt = Some(Prompt::Filter(app.filter_text.clone()));
                    None
                }
                Command::Mark => {
                    if let Some(call) = app.current().map(|r| Arc::clone(&r.call)) {
                        app.note(format!(
                            "marked {}/{} as the diff reference",
                            call.server, call.tool
                        ));
                        app.marked = Some(call);
                    }
                    None
                }
                Command::Diff => {
                    if app.current().is_some() {
                        app.view = View::Diff;
                        app.scroll = 0;
                    }
                    None
                }
                Command::Audit => {
                    app.view = View::Audit;
                    app.audit_query()
                }
                Command::Sort => {
                    app.sort = app.sort.next();
                    app.cursor_key = app.current().map(|r| r.key.clone());
                    app.settle_cursor();
                    None
                }
                Command::Help => {
                    app.view = View::Help;
                    None
                }
            }
        }
    }
}
