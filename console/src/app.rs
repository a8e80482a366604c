//! The TUI's state and its one way of changing: [`update`] takes an [`Action`] (a key, a tick,
//! something from the broker) and returns what to send to the broker, if anything. No I/O
//! happens here, so every behaviour is tested without a terminal or a network.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use tollgate_shared::audit::{AuditEntry, AuditFilter};
use tollgate_shared::console::{ClientMsg, ServerMsg, Target, TempRule};
use tollgate_shared::{CallRecord, Fingerprint, Name, Outcome, Verdict};

use crate::client::{Event, Me};
use crate::keys::{Command, KeyMap};

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

/// How the queue groups calls into rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Identical calls (exact fingerprint) share a row: the default.
    Exact,
    /// Calls of the same shape share a row (a loop that varies ids or counters).
    Shape,
    /// One row per call.
    Flat,
}

impl Grouping {
    fn next(self) -> Grouping {
        match self {
            Grouping::Exact => Grouping::Shape,
            Grouping::Shape => Grouping::Flat,
            Grouping::Flat => Grouping::Exact,
        }
    }

    /// The key calls share within a group (`None` when flat).
    pub fn key(self, c: &CallRecord) -> Option<&Fingerprint> {
        match self {
            Grouping::Exact => Some(&c.fingerprint),
            Grouping::Shape => Some(self.pattern(c)),
            Grouping::Flat => None,
        }
    }

    /// The pattern a call belongs to: its shape when grouping by shape, else its exact
    /// fingerprint (what a pattern decision on its row targets).
    pub fn pattern(self, c: &CallRecord) -> &Fingerprint {
        match self {
            Grouping::Shape if !c.shape.is_empty() => &c.shape,
            _ => &c.fingerprint,
        }
    }

    /// Name for the footer.
    pub fn label(self) -> &'static str {
        match self {
            Grouping::Exact => "grouped",
            Grouping::Shape => "grouped by shape",
            Grouping::Flat => "flat",
        }
    }
}

/// Sort order of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Oldest first.
    Age,
    /// Soonest expiry first.
    Expiry,
    /// By server/tool.
    Tool,
    /// By client.
    Client,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Age => Sort::Expiry,
            Sort::Expiry => Sort::Tool,
            Sort::Tool => Sort::Client,
            Sort::Client => Sort::Age,
        }
    }

    /// Name for the status bar.
    pub fn label(self) -> &'static str {
        match self {
            Sort::Age => "age",
            Sort::Expiry => "expiry",
            Sort::Tool => "tool",
            Sort::Client => "client",
        }
    }
}

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
        /// Also block the pattern for this long (ms).
        block_for_ms: Option<u64>,
        /// "db/execute_sql ×498, fs/write ×2".
        summary: String,
    },
}

/// One row of the queue: a call, or a group of identical calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The newest call of the row.
    pub call: Arc<CallRecord>,
    /// Calls in the row (1 when not grouped).
    pub count: usize,
    /// Ids of the calls in the row.
    pub ids: Vec<Name>,
    /// First and last received (ms).
    pub first_ms: u64,
    /// Newest received (ms).
    pub last_ms: u64,
    /// The soonest expiry in the row.
    pub expires_ms: Option<u64>,
    /// Pending calls with the same fingerprint (a repeated call), grouped or not; with shape
    /// grouping, the same shape.
    pub pattern: usize,
    /// Guard flags of any call in the row: a secret found, a loop suspected, a client
    /// throttled.
    pub flags: RowFlags,
}

/// What the guards noticed about any call in a row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowFlags {
    /// DLP findings.
    pub secret: bool,
    /// Loop suspected.
    pub looping: bool,
    /// The client was refused by a rate limit or budget recently.
    pub throttled: bool,
}

impl RowFlags {
    fn of(c: &CallRecord) -> RowFlags {
        RowFlags {
            secret: !c.findings.is_empty(),
            looping: c.signals.looping,
            throttled: c.signals.throttled.is_some(),
        }
    }

    fn merge(self, o: RowFlags) -> RowFlags {
        RowFlags {
            secret: self.secret || o.secret,
            looping: self.looping || o.looping,
            throttled: self.throttled || o.throttled,
        }
    }
}

impl Row {
    /// Calls per minute over the row's lifetime (for groups).
    pub fn rate_per_min(&self) -> f64 {
        let span = self.last_ms.saturating_sub(self.first_ms).max(1000) as f64 / 60_000.0;
        self.count as f64 / span
    }
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
    /// Pending calls by id, so in arrival order (ids are UUID v7): rows are built from them
    /// without sorting.
    pub calls: BTreeMap<Name, Arc<CallRecord>>,
    /// The rows on screen, rebuilt only when something they depend on changed.
    rows: Vec<Row>,
    /// Calls in `rows` (a row may group many), counted when they are rebuilt.
    shown: usize,
    /// Set when `rows` must be rebuilt.
    dirty: bool,
    /// Calls that left the queue, newest last (for diffs and "decided by" notes).
    pub history: VecDeque<Arc<CallRecord>>,
    /// Cursor position in the visible rows.
    pub cursor: usize,
    /// Id (or fingerprint, when grouped) under the cursor, so arrivals do not move it.
    pub cursor_key: Option<String>,
    /// Selected call ids.
    pub selected: BTreeSet<Name>,
    /// The main view.
    pub view: View,
    /// How rows group calls (by default identical calls: a runaway loop is one line).
    pub grouping: Grouping,
    /// Filter text (case-insensitive substring of server/tool, client, arguments).
    pub filter: String,
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
            calls: BTreeMap::new(),
            rows: Vec::new(),
            shown: 0,
            dirty: false,
            history: VecDeque::new(),
            cursor: 0,
            cursor_key: None,
            selected: BTreeSet::new(),
            view: View::Queue,
            grouping: Grouping::Exact,
            filter: String::new(),
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

    fn matches(&self, c: &CallRecord) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        let f = self.filter.to_lowercase();
        let hay = format!("{}/{} {} {}", c.server, c.tool, c.client, c.arguments).to_lowercase();
        f.split_whitespace().all(|word| match word.split_once(':') {
            Some(("server", v)) => c.server.to_lowercase().contains(v),
            Some(("tool", v)) => c.tool.to_lowercase().contains(v),
            Some(("client", v)) => c.client.to_lowercase().contains(v),
            _ => hay.contains(word),
        })
    }

    /// Temporary rules that have not expired yet (the broker does not announce expiry).
    pub fn active_rules(&self) -> impl Iterator<Item = &TempRule> {
        self.rules.iter().filter(|r| r.until_ms > self.now_ms)
    }

    /// The rows on screen, in order.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// How many calls the rows show (a grouped row counts all its calls).
    pub fn shown(&self) -> usize {
        self.shown
    }

    /// Rebuild the rows if anything changed, and keep the cursor on its row.
    pub fn refresh(&mut self) {
        if !self.dirty {
            return;
        }
        self.rows = self.compute_rows();
        self.shown = self.rows.iter().map(|r| r.count).sum();
        self.dirty = false;
        if let Some(key) = &self.cursor_key {
            // Compared in place: a string per row made this search most of a rebuild's time
            // with 100 000 calls.
            let pattern = Fingerprint::from(key.as_str());
            if let Some(i) = self
                .rows
                .iter()
                .position(|r| match self.grouping.key(&r.call) {
                    Some(k) => *k == pattern,
                    None => *r.call.id == **key,
                })
            {
                self.cursor = i;
            }
        }
        self.cursor = self.cursor.min(self.rows.len().saturating_sub(1));
        self.cursor_key = self.rows.get(self.cursor).map(|r| self.row_key(r));
    }

    fn compute_rows(&self) -> Vec<Row> {
        let calls: Vec<&Arc<CallRecord>> =
            self.calls.values().filter(|c| self.matches(c)).collect();
        let grouping = self.grouping;
        let mut rows: Vec<Row> = if grouping != Grouping::Flat {
            let mut groups: Vec<Row> = Vec::new();
            let mut at: HashMap<&Fingerprint, usize> = HashMap::new();
            for c in calls {
                let key = grouping.key(c).unwrap_or(&c.fingerprint);
                match at.get(key) {
                    Some(&i) => {
                        let g = &mut groups[i];
                        g.count += 1;
                        g.ids.push(c.id.clone());
                        g.last_ms = c.timings.received_ms;
                        g.expires_ms = min_expiry(g.expires_ms, c);
                        g.flags = g.flags.merge(RowFlags::of(c));
                        g.call = Arc::clone(c);
                    }
                    None => {
                        at.insert(key, groups.len());
                        groups.push(Row {
                            call: Arc::clone(c),
                            count: 1,
                            ids: vec![c.id.clone()],
                            first_ms: c.timings.received_ms,
                            last_ms: c.timings.received_ms,
                            expires_ms: min_expiry(None, c),
                            pattern: 0,
                            flags: RowFlags::of(c),
                        });
                    }
                }
            }
            groups
        } else {
            calls
                .into_iter()
                .map(|c| Row {
                    call: Arc::clone(c),
                    count: 1,
                    ids: vec![c.id.clone()],
                    first_ms: c.timings.received_ms,
                    last_ms: c.timings.received_ms,
                    expires_ms: min_expiry(None, c),
                    pattern: 0,
                    flags: RowFlags::of(c),
                })
                .collect()
        };
        let mut sizes: HashMap<&Fingerprint, usize> = HashMap::new();
        for c in self.calls.values() {
            *sizes.entry(grouping.pattern(c)).or_default() += 1;
        }
        for r in &mut rows {
            r.pattern = sizes.get(grouping.pattern(&r.call)).copied().unwrap_or(1);
        }
        let expiry = |r: &Row| r.expires_ms.unwrap_or(u64::MAX);
        match self.sort {
            Sort::Age => {
                rows.sort_by(|a, b| a.first_ms.cmp(&b.first_ms).then(a.call.id.cmp(&b.call.id)))
            }
            Sort::Expiry => rows.sort_by_key(|r| (expiry(r), r.call.id.clone())),
            Sort::Tool => rows.sort_by(|a, b| {
                (&a.call.server, &a.call.tool, &a.call.id).cmp(&(
                    &b.call.server,
                    &b.call.tool,
                    &b.call.id,
                ))
            }),
            Sort::Client => {
                rows.sort_by(|a, b| (&a.call.client, &a.call.id).cmp(&(&b.call.client, &b.call.id)))
            }
        }
        rows
    }

    fn row_key(&self, r: &Row) -> String {
        self.grouping
            .key(&r.call)
            .map_or_else(|| r.call.id.to_string(), Fingerprint::to_string)
    }

    /// The fingerprint a pattern decision on this row targets: its group's key (the shape when
    /// grouped by shape), else the call's exact fingerprint.
    fn pattern_of(&self, r: &Row) -> String {
        self.grouping.pattern(&r.call).to_string()
    }

    /// The row under the cursor.
    pub fn current(&self) -> Option<&Row> {
        self.rows.get(self.cursor)
    }

    /// Mark the rows for rebuilding (at the end of this update).
    fn settle_cursor(&mut self) {
        self.dirty = true;
    }

    fn move_cursor(&mut self, delta: isize) {
        let n = self.rows.len();
        if n == 0 {
            return;
        }
        self.cursor = (self.cursor as isize + delta).clamp(0, n as isize - 1) as usize;
        self.cursor_key = self.current().map(|r| self.row_key(r));
        self.scroll = 0;
    }

    /// The call to diff the current one against: the marked one, else the most similar earlier
    /// call of the same tool (pending or decided).
    pub fn diff_base(&self) -> Option<Arc<CallRecord>> {
        let cur = Arc::clone(&self.current()?.call);
        if let Some(m) = &self.marked
            && m.id != cur.id
        {
            return Some(Arc::clone(m));
        }
        let text = crate::fmt::pretty_sorted(&cur.arguments.value());
        // The 200 latest earlier calls of the same tool are candidates, so a huge queue does
        // not make the diff view slow.
        let mut candidates: Vec<&Arc<CallRecord>> = self
            .calls
            .values()
            .chain(self.history.iter())
            .filter(|c| c.id < cur.id && c.server == cur.server && c.tool == cur.tool)
            .collect();
        candidates.sort_unstable_by(|a, b| b.id.cmp(&a.id));
        candidates.truncate(200);
        candidates
            .into_iter()
            .map(|c| {
                let other = crate::fmt::pretty_sorted(&c.arguments.value());
                // Character similarity for ordinary arguments; lines for big ones (quadratic).
                let ratio = if other.len() + text.len() < 8192 {
                    similar::TextDiff::from_chars(&other, &text).ratio()
                } else {
                    similar::TextDiff::from_lines(&other, &text).ratio()
                };
                (c, ratio)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(a.0.id.cmp(&b.0.id)))
            .map(|(c, _)| Arc::clone(c))
    }

    fn request(&mut self, make: impl FnOnce(Option<u64>) -> ClientMsg) -> Option<ClientMsg> {
        self.next_req += 1;
        self.waiting += 1;
        Some(make(Some(self.next_req)))
    }

    fn summary(&self, ids: &[Name]) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for id in ids {
            if let Some(c) = self.calls.get(id) {
                let name = format!("{}/{}", c.server, c.tool);
                match counts.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, k)) => *k += 1,
                    None => counts.push((name, 1)),
                }
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts
            .iter()
            .map(|(n, k)| format!("{n} ×{k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Decide the row under the cursor: a single call at once (approve) or after a reason
    /// (reject); a group after confirmation.
    fn decide_current(&mut self, verdict: Verdict, block: bool) -> Option<ClientMsg> {
        let row = self.current()?.clone();
        // A pattern (a group row, or a block) is decided by fingerprint; one call by id.
        let target = if row.count > 1 || block {
            Target::Fingerprint {
                fingerprint: self.pattern_of(&row),
            }
        } else {
            Target::Ids {
                ids: row.ids.iter().map(|id| id.to_string()).collect(),
            }
        };
        let block_for_ms = block.then_some(self.block_for_ms);
        if verdict == Verdict::Approve && self.grouping == Grouping::Shape && row.count > 1 {
            self.note(format!(
                "a shape groups calls with different numbers and ids: approve them by identical group ({} cycles the grouping) or select them",
                self.keys.key_of(Command::Group)
            ));
            return None;
        }
        if row.count > 1 {
            self.prompt = Some(Prompt::Confirm {
                verdict,
                target,
                count: row.count,
                block_for_ms,
                summary: self.summary(&row.ids),
            });
            return None;
        }
        self.ask_or_send(verdict, target, 1, block_for_ms)
    }

    fn ask_or_send(
        &mut self,
        verdict: Verdict,
        target: Target,
        count: usize,
        block_for_ms: Option<u64>,
    ) -> Option<ClientMsg> {
        match verdict {
            Verdict::Reject => {
                self.prompt = Some(Prompt::Reason {
                    verdict,
                    target,
                    count,
                    block_for_ms,
                    text: String::new(),
                });
                None
            }
            Verdict::Approve => self.send_decision(verdict, target, None, None),
        }
    }

    fn send_decision(
        &mut self,
        verdict: Verdict,
        target: Target,
        reason: Option<String>,
        block_for_ms: Option<u64>,
    ) -> Option<ClientMsg> {
        if let Target::Ids { ids } = &target {
            for id in ids {
                self.selected.remove(id.as_str());
            }
        }
        self.request(|req| ClientMsg::Decide {
            req,
            target,
            verdict,
            reason,
            block_for_ms,
            allow_next: None,
        })
    }

    fn decide_selected(&mut self, verdict: Verdict) -> Option<ClientMsg> {
        let ids: Vec<Name> = self
            .selected
            .iter()
            .filter(|id| self.calls.contains_key(*id))
            .cloned()
            .collect();
        if ids.is_empty() {
            self.note(format!(
                "nothing selected: {} selects a row, {} every row matching the filter",
                self.keys.key_of(Command::Select),
                self.keys.key_of(Command::SelectAll)
            ));
            return None;
        }
        self.prompt = Some(Prompt::Confirm {
            verdict,
            count: ids.len(),
            block_for_ms: None,
            summary: self.summary(&ids),
            target: Target::Ids {
                ids: ids.iter().map(|id| id.to_string()).collect(),
            },
        });
        None
    }

    fn audit_query(&mut self) -> Option<ClientMsg> {
        let mut filter = AuditFilter {
            limit: Some(500),
            ..AuditFilter::default()
        };
        for word in self.filter.split_whitespace() {
            match word.split_once(':') {
                Some(("server", v)) => filter.server = Some(v.into()),
                Some(("tool", v)) => filter.tool = Some(v.into()),
                Some(("client", v)) => filter.client = Some(v.into()),
                Some(("approver", v)) => filter.approver = Some(v.into()),
                Some(("status", v)) => filter.status = v.parse().ok(),
                _ => {}
            }
        }
        self.request(|req| ClientMsg::AuditQuery { req, filter })
    }
}

fn min_expiry(so_far: Option<u64>, c: &CallRecord) -> Option<u64> {
    let this = c.hold.as_ref().map(|h| h.expires_ms);
    match (so_far, this) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
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

fn prompt_key(app: &mut App, key: &KeyEvent) -> Option<ClientMsg> {
    let prompt = app.prompt.take()?;
    match prompt {
        Prompt::Filter(mut text) => {
            match text_input(&mut text, key) {
                Some(true) => {
                    app.filter = text.trim().to_string();
                    app.cursor = 0;
                    app.cursor_key = None;
                    app.settle_cursor();
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
            block_for_ms,
            summary,
        } => match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') => {
                if let Target::Ids { ids } = &target {
                    for id in ids {
                        app.selected.remove(id.as_str());
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
                    block_for_ms,
                    summary,
                });
                None
            }
        },
    }
}

fn leave(app: &mut App, c: Arc<CallRecord>, how: String) {
    let was_mine = app.calls.remove(&c.id).is_some();
    app.selected.remove(&c.id);
    app.history.push_back(c);
    while app.history.len() > HISTORY {
        app.history.pop_front();
    }
    if was_mine {
        app.note(how);
    }
    app.settle_cursor();
}

fn decided_note(c: &CallRecord) -> String {
    let by = c
        .decisions
        .iter()
        .filter(|d| {
            d.verdict
                == if c.outcome == Outcome::Approved {
                    Verdict::Approve
                } else {
                    Verdict::Reject
                }
        })
        .map(|d| d.by.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let why = c
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    format!("{}/{} {} by {by}{why}", c.server, c.tool, c.outcome)
}

fn broker(app: &mut App, e: Event) -> Option<ClientMsg> {
    match e {
        Event::Connecting(n) => {
            if !matches!(app.link, Link::Down(..)) || n == 1 {
                app.link = Link::Connecting(n);
            }
        }
        Event::Connected(me, pending) => {
            app.me = Some(me);
            app.link = Link::Up;
            app.waiting = 0;
            app.calls = pending.into_iter().map(|c| (c.id.clone(), c)).collect();
            app.settle_cursor();
        }
        Event::Disconnected(why, wait) => {
            app.link = Link::Down(why, wait);
            app.waiting = 0;
        }
        Event::Message(m) => match *m {
            ServerMsg::Snapshot {
                pending,
                rules,
                more,
                ..
            } => {
                app.rules = rules;
                app.calls = pending.into_iter().map(|c| (c.id.clone(), c)).collect();
                if !more {
                    app.selected.retain(|id| app.calls.contains_key(id));
                }
                app.settle_cursor();
            }
            ServerMsg::SnapshotPart { pending, more, .. } => {
                app.calls
                    .extend(pending.into_iter().map(|c| (c.id.clone(), c)));
                if !more {
                    app.selected.retain(|id| app.calls.contains_key(id));
                }
                app.settle_cursor();
            }
            ServerMsg::CallPending { call } | ServerMsg::CallApproval { call } => {
                app.calls.insert(call.id.clone(), call);
                app.settle_cursor();
            }
            ServerMsg::CallDecided { call } => {
                let note = decided_note(&call);
                leave(app, call, note);
            }
            ServerMsg::CallExpired { call } => leave(
                app,
                call.clone(),
                format!("{}/{} expired undecided", call.server, call.tool),
            ),
            ServerMsg::CallCancelled { call } => leave(
                app,
                call.clone(),
                format!("{}/{} cancelled by its client", call.server, call.tool),
            ),
            ServerMsg::CallAbandoned { call } => leave(
                app,
                call.clone(),
                format!("{}/{} abandoned after a restart", call.server, call.tool),
            ),
            ServerMsg::Decided {
                results,
                rule,
                rule_refused,
                ..
            } => {
                app.waiting = app.waiting.saturating_sub(1);
                if let Some(r) = rule {
                    app.note(format!(
                        "{} blocks {}/{} until {} (t shows rules)",
                        r.id,
                        r.server,
                        r.tool,
                        tollgate_shared::clock::rfc3339_seconds(r.until_ms)
                    ));
                    return None;
                }
                if let Some(why) = rule_refused {
                    app.note(why);
                    return None;
                }
                let ok = results.iter().filter(|r| r.ok).count();
                let refused: Vec<_> = results.iter().filter(|r| !r.ok).collect();
                if refused.is_empty() {
                    if ok > 1 {
                        app.note(format!("{ok} calls decided"));
                    } else if let Some(r) = results.first()
                        && r.message.contains("still pending")
                    {
                        app.note(r.message.clone());
                    }
                } else {
                    let first = &refused[0].message;
                    let more = if refused.len() > 1 {
                        format!(" (and {} more refused)", refused.len() - 1)
                    } else {
                        String::new()
                    };
                    app.note(format!("refused: {first}{more}"));
                }
            }
            ServerMsg::AuditResult { entries, .. } => {
                app.waiting = app.waiting.saturating_sub(1);
                app.audit = entries;
            }
            ServerMsg::Error { message, .. } => {
                app.waiting = app.waiting.saturating_sub(1);
                app.note(format!("broker: {message}"));
            }
            ServerMsg::Rules { req, rules } => {
                if req.is_some() {
                    app.waiting = app.waiting.saturating_sub(1);
                }
                app.rules = rules;
                app.rule_cursor = app.rule_cursor.min(app.rules.len().saturating_sub(1));
            }
            ServerMsg::Hello { .. } => {}
        },
    }
    None
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
        Action::Broker(e) => broker(app, e),
        Action::Key(key) => {
            if app.prompt.is_some() {
                return prompt_key(app, &key);
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
                                app.selected.remove(&id);
                            } else {
                                app.selected.insert(id);
                            }
                        }
                        app.move_cursor(1);
                    }
                    None
                }
                Command::SelectAll => {
                    let ids: Vec<Name> = app
                        .rows
                        .iter()
                        .flat_map(|r| r.ids.iter().cloned())
                        .collect();
                    let n = ids.len();
                    app.selected.extend(ids);
                    app.note(format!("{n} calls selected"));
                    None
                }
                Command::ApproveSelected => app.decide_selected(Verdict::Approve),
                Command::RejectSelected => app.decide_selected(Verdict::Reject),
                Command::Group => {
                    app.grouping = app.grouping.next();
                    app.cursor_key = app.current().map(|r| {
                        app.grouping
                            .key(&r.call)
                            .map_or_else(|| r.call.id.to_string(), Fingerprint::to_string)
                    });
                    app.note(format!("rows: {}", app.grouping.label()));
                    app.settle_cursor();
                    None
                }
                Command::Filter => {
                    app.prompt = Some(Prompt::Filter(app.filter.clone()));
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
