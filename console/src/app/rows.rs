//! The queue view's rows: pending calls filtered, grouped (identical calls, calls of one shape,
//! or none) and sorted, with the cursor kept on its row when calls arrive or leave.

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_shared::{CallRecord, Fingerprint, Name};

use super::App;

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
    pub(super) fn next(self) -> Grouping {
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
    pub(super) fn next(self) -> Sort {
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
    /// The row of one call (its pattern counted later).
    fn of(c: &Arc<CallRecord>) -> Row {
        Row {
            call: Arc::clone(c),
            count: 1,
            ids: vec![c.id.clone()],
            first_ms: c.timings.received_ms,
            last_ms: c.timings.received_ms,
            expires_ms: min_expiry(None, c),
            pattern: 0,
            flags: RowFlags::of(c),
        }
    }

    /// Calls per minute over the row's lifetime (for groups).
    pub fn rate_per_min(&self) -> f64 {
        let span = self.last_ms.saturating_sub(self.first_ms).max(1000) as f64 / 60_000.0;
        self.count as f64 / span
    }
}

impl App {
    pub(super) fn matches(&self, c: &CallRecord) -> bool {
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
                        groups.push(Row::of(c));
                    }
                }
            }
            groups
        } else {
            calls.into_iter().map(Row::of).collect()
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

    pub(super) fn row_key(&self, r: &Row) -> String {
        self.grouping
            .key(&r.call)
            .map_or_else(|| r.call.id.to_string(), Fingerprint::to_string)
    }

    /// The fingerprint a pattern decision on this row targets: its group's key (the shape when
    /// grouped by shape), else the call's exact fingerprint.
    pub(super) fn pattern_of(&self, r: &Row) -> String {
        self.grouping.pattern(&r.call).to_string()
    }

    /// The row under the cursor.
    pub fn current(&self) -> Option<&Row> {
        self.rows.get(self.cursor)
    }

    /// Mark the rows for rebuilding (at the end of this update).
    pub(super) fn settle_cursor(&mut self) {
        self.dirty = true;
    }

    pub(super) fn move_cursor(&mut self, delta: isize) {
        let n = self.rows.len();
        if n == 0 {
            return;
        }
        self.cursor = (self.cursor as isize + delta).clamp(0, n as isize - 1) as usize;
        self.cursor_key = self.current().map(|r| self.row_key(r));
        self.scroll = 0;
    }
}

fn min_expiry(so_far: Option<u64>, c: &CallRecord) -> Option<u64> {
    let this = c.hold.as_ref().map(|h| h.expires_ms);
    match (so_far, this) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
