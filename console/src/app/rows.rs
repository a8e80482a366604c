//! The queue view's rows: pending calls filtered, grouped (by identical call, tool, client,
//! server, shape, or none) and sorted, with the cursor kept on its row when calls arrive or
//! leave.
//!
//! The rows are kept up to date one call at a time: an arrival, a decision or an expiry finds
//! its row by key, updates its counts, and moves the row only if its place in the order
//! changed (a binary search in a vector of slot numbers). So one call arriving into a queue of
//! 100 000 costs microseconds, not a rebuild. Changing the filter, the grouping or the sort, or
//! a new snapshot, rebuilds everything once.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tollgate_shared::{CallRecord, Fingerprint, Name};

use super::App;
use super::filter::Filter;

/// How the queue groups calls into rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Identical calls (exact fingerprint) share a row: the default.
    Exact,
    /// Calls to the same server and tool share a row.
    Tool,
    /// Calls of the same client (agent) share a row.
    Client,
    /// Calls to the same server share a row.
    Server,
    /// Calls of the same shape share a row (a loop that varies ids or counters).
    Shape,
    /// One row per call.
    Flat,
}

impl Grouping {
    /// Every level, in the order `g` cycles through them.
    pub const ALL: [Grouping; 6] = [
        Grouping::Exact,
        Grouping::Tool,
        Grouping::Client,
        Grouping::Server,
        Grouping::Shape,
        Grouping::Flat,
    ];

    pub(super) fn next(self, forward: bool) -> Grouping {
        let n = Grouping::ALL.len();
        let i = Grouping::ALL.iter().position(|g| *g == self).unwrap_or(0);
        Grouping::ALL[(if forward { i + 1 } else { i + n - 1 }) % n]
    }

    /// The key of the row a call belongs to.
    pub fn key(self, c: &CallRecord) -> RowKey {
        match self {
            Grouping::Exact => RowKey::Pattern(c.fingerprint.clone()),
            Grouping::Shape => RowKey::Pattern(self.pattern(c).clone()),
            Grouping::Tool => RowKey::Tool(c.server.clone(), c.tool.clone()),
            Grouping::Client => RowKey::Client(c.client.clone()),
            Grouping::Server => RowKey::Server(c.server.clone()),
            Grouping::Flat => RowKey::Call(c.id.clone()),
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

    /// Whether a row is one pattern (decided and blocked by fingerprint).
    pub fn by_pattern(self) -> bool {
        matches!(self, Grouping::Exact | Grouping::Shape)
    }

    /// Name for the status line.
    pub fn label(self) -> &'static str {
        match self {
            Grouping::Exact => "by identical call",
            Grouping::Tool => "by tool",
            Grouping::Client => "by client",
            Grouping::Server => "by server",
            Grouping::Shape => "by shape",
            Grouping::Flat => "one row per call",
        }
    }

    /// What a row is, for the title ("3 tools").
    pub fn unit(self, n: usize) -> &'static str {
        let one = n == 1;
        match self {
            Grouping::Exact => ["groups", "group"][one as usize],
            Grouping::Tool => ["tools", "tool"][one as usize],
            Grouping::Client => ["clients", "client"][one as usize],
            Grouping::Server => ["servers", "server"][one as usize],
            Grouping::Shape => ["patterns", "pattern"][one as usize],
            Grouping::Flat => ["rows", "row"][one as usize],
        }
    }
}

/// What identifies a row: the call (flat), the pattern, or the tool, client or server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RowKey {
    /// One call.
    Call(Name),
    /// An exact or shape fingerprint.
    Pattern(Fingerprint),
    /// Server and tool.
    Tool(Name, Name),
    /// A client.
    Client(Name),
    /// A server.
    Server(Name),
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

/// One row of the queue: a call, or a group of calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What the row groups by.
    pub key: RowKey,
    /// The newest call of the row (shown).
    pub call: Arc<CallRecord>,
    /// The oldest call of the row (the row sorts by it, so arrivals do not move it).
    pub first: Arc<CallRecord>,
    /// Ids of the calls in the row, oldest first (ids are UUID v7).
    pub ids: BTreeSet<Name>,
    /// First received (ms).
    pub first_ms: u64,
    /// Newest received (ms).
    pub last_ms: u64,
    /// Expiry times of the calls (a multiset), so the soonest is known after any leaves.
    expiries: BTreeMap<u64, u32>,
    /// Calls with a secret found, a loop suspected, a client throttled.
    flag_counts: [u32; 3],
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

fn flag_bits(c: &CallRecord) -> [bool; 3] {
    [
        !c.findings.is_empty(),
        c.signals.looping,
        c.signals.throttled.is_some(),
    ]
}

impl Row {
    fn of(key: RowKey, c: &Arc<CallRecord>) -> Row {
        let mut r = Row {
            key,
            call: Arc::clone(c),
            first: Arc::clone(c),
            ids: BTreeSet::new(),
            first_ms: c.timings.received_ms,
            last_ms: c.timings.received_ms,
            expiries: BTreeMap::new(),
            flag_counts: [0; 3],
        };
        r.count_in(c, 1);
        r.ids.insert(c.id.clone());
        r
    }

    fn count_in(&mut self, c: &CallRecord, sign: i32) {
        for (n, on) in self.flag_counts.iter_mut().zip(flag_bits(c)) {
            if on {
                *n = n.saturating_add_signed(sign);
            }
        }
        if let Some(h) = &c.hold {
            let n = self.expiries.entry(h.expires_ms).or_default();
            *n = n.saturating_add_signed(sign);
            if *n == 0 {
                self.expiries.remove(&h.expires_ms);
            }
        }
    }

    /// Add a call to the row: it becomes the row's newest or oldest call if it is.
    fn join(&mut self, c: &Arc<CallRecord>) {
        self.ids.insert(c.id.clone());
        self.count_in(c, 1);
        if c.id > self.call.id {
            self.call = Arc::clone(c);
            self.last_ms = c.timings.received_ms;
        }
        if c.id < self.first.id {
            self.first = Arc::clone(c);
            self.first_ms = c.timings.received_ms;
        }
    }

    /// Calls in the row.
    pub fn count(&self) -> usize {
        self.ids.len()
    }

    /// The soonest expiry in the row.
    pub fn expires_ms(&self) -> Option<u64> {
        self.expiries.keys().next().copied()
    }

    /// Guard flags of any call in the row.
    pub fn flags(&self) -> RowFlags {
        RowFlags {
            secret: self.flag_counts[0] > 0,
            looping: self.flag_counts[1] > 0,
            throttled: self.flag_counts[2] > 0,
        }
    }

    /// Calls per minute over the row's lifetime (for groups).
    pub fn rate_per_min(&self) -> f64 {
        let span = self.last_ms.saturating_sub(self.first_ms).max(1000) as f64 / 60_000.0;
        self.count() as f64 / span
    }

    fn cmp(&self, o: &Row, sort: Sort) -> Ordering {
        let (a, b) = (&self.first, &o.first);
        let by = match sort {
            Sort::Age => self.first_ms.cmp(&o.first_ms),
            Sort::Expiry => self
                .expires_ms()
                .unwrap_or(u64::MAX)
                .cmp(&o.expires_ms().unwrap_or(u64::MAX)),
            Sort::Tool => (&a.server, &a.tool).cmp(&(&b.server, &b.tool)),
            Sort::Client => a.client.cmp(&b.client),
        };
        // The oldest call's id breaks ties, and no two rows share a call: a total order.
        by.then_with(|| a.id.cmp(&b.id))
    }
}

/// The rows, grouped and in order, with the pattern sizes of every pending call.
#[derive(Debug, Clone, Default)]
pub(super) struct Rows {
    slots: Vec<Option<Row>>,
    free: Vec<u32>,
    by_key: HashMap<RowKey, u32>,
    /// Slot numbers in display order.
    order: Vec<u32>,
    /// Calls in the rows.
    shown: usize,
    /// Pending calls per exact fingerprint and per shape (filtered or not).
    exact: HashMap<Fingerprint, usize>,
    shapes: HashMap<Fingerprint, usize>,
}

impl Rows {
    fn slot(&self, s: u32) -> &Row {
        self.slots[s as usize]
            .as_ref()
            .expect("ordered slots hold rows")
    }

    fn position(&self, slot: u32, sort: Sort) -> usize {
        let row = self.slot(slot);
        self.order
            .binary_search_by(|s| self.slot(*s).cmp(row, sort))
            .unwrap_or_else(|i| i)
    }

    /// Put `slot` (at `at` in the order before it changed) back where it sorts now.
    fn resettle(&mut self, slot: u32, at: usize, sort: Sort) {
        let row = self.slot(slot);
        let before_ok = at == 0 || self.slot(self.order[at - 1]).cmp(row, sort).is_lt();
        let after_ok =
            at + 1 >= self.order.len() || self.slot(self.order[at + 1]).cmp(row, sort).is_gt();
        if before_ok && after_ok {
            return;
        }
        self.order.remove(at);
        let to = self.position(slot, sort);
        self.order.insert(to, slot);
    }

    fn count_pattern(&mut self, c: &CallRecord, add: bool) {
        for (map, fp) in [
            (&mut self.exact, &c.fingerprint),
            (&mut self.shapes, Grouping::Shape.pattern(c)),
        ] {
            if add {
                *map.entry(fp.clone()).or_default() += 1;
            } else if let Some(n) = map.get_mut(fp) {
                *n -= 1;
                if *n == 0 {
                    map.remove(fp);
                }
            }
        }
    }

    /// A call joins the queue; `shown` says whether it passes the filter.
    pub(super) fn add(&mut self, c: &Arc<CallRecord>, shown: bool, grouping: Grouping, sort: Sort) {
        self.count_pattern(c, true);
        if !shown {
            return;
        }
        self.shown += 1;
        let key = grouping.key(c);
        if let Some(&slot) = self.by_key.get(&key) {
            let at = self.position(slot, sort);
            let row = self.slots[slot as usize]
                .as_mut()
                .expect("keyed slots hold rows");
            row.join(c);
            self.resettle(slot, at, sort);
        } else {
            let row = Row::of(key.clone(), c);
            let slot = match self.free.pop() {
                Some(s) => {
                    self.slots[s as usize] = Some(row);
                    s
                }
                None => {
                    self.slots.push(Some(row));
                    (self.slots.len() - 1) as u32
                }
            };
            self.by_key.insert(key, slot);
            let to = self.position(slot, sort);
            self.order.insert(to, slot);
        }
    }

    /// A call leaves the queue (`calls` no longer holds it).
    pub(super) fn remove(
        &mut self,
        c: &CallRecord,
        calls: &BTreeMap<Name, Arc<CallRecord>>,
        grouping: Grouping,
        sort: Sort,
    ) {
        self.count_pattern(c, false);
        let key = grouping.key(c);
        let Some(&slot) = self.by_key.get(&key) else {
            return;
        };
        if !self.slot(slot).ids.contains(&c.id) {
            return;
        }
        self.shown -= 1;
        let at = self.position(slot, sort);
        let row = self.slots[slot as usize]
            .as_mut()
            .expect("keyed slots hold rows");
        row.ids.remove(&c.id);
        row.count_in(c, -1);
        let (Some(first), Some(last)) = (row.ids.first(), row.ids.last()) else {
            self.order.remove(at);
            self.slots[slot as usize] = None;
            self.free.push(slot);
            self.by_key.remove(&key);
            return;
        };
        if *first != row.first.id
            && let Some(f) = calls.get(first)
        {
            row.first = Arc::clone(f);
            row.first_ms = f.timings.received_ms;
        }
        if *last != row.call.id
            && let Some(l) = calls.get(last)
        {
            row.call = Arc::clone(l);
            row.last_ms = l.timings.received_ms;
        }
        self.resettle(slot, at, sort);
    }

    /// Everything again: after a snapshot, or a new filter, grouping or sort.
    pub(super) fn rebuild(
        &mut self,
        calls: &BTreeMap<Name, Arc<CallRecord>>,
        filter: &Filter,
        grouping: Grouping,
        sort: Sort,
    ) {
        *self = Rows::default();
        for c in calls.values() {
            self.count_pattern(c, true);
            if !filter.matches(c) {
                continue;
            }
            self.shown += 1;
            let key = grouping.key(c);
            match self.by_key.get(&key) {
                Some(&slot) => self.slots[slot as usize]
                    .as_mut()
                    .expect("keyed slots hold rows")
                    .join(c),
                None => {
                    self.slots.push(Some(Row::of(key.clone(), c)));
                    self.by_key.insert(key, (self.slots.len() - 1) as u32);
                }
            }
        }
        let mut order: Vec<u32> = (0..self.slots.len() as u32).collect();
        order.sort_by(|a, b| self.slot(*a).cmp(self.slot(*b), sort));
        self.order = order;
    }

    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    pub(super) fn get(&self, i: usize) -> Option<&Row> {
        self.order.get(i).map(|s| self.slot(*s))
    }

    pub(super) fn index_of(&self, key: &RowKey, sort: Sort) -> Option<usize> {
        let slot = *self.by_key.get(key)?;
        Some(self.position(slot, sort))
    }

    pub(super) fn iter_from(&self, first: usize) -> impl Iterator<Item = &Row> + '_ {
        self.order[first.min(self.order.len())..]
            .iter()
            .map(|s| self.slot(*s))
    }
}

impl App {
    pub(super) fn matches(&self, c: &CallRecord) -> bool {
        self.filter.matches(c)
    }

    /// The rows on screen, in order, from row `first`.
    pub fn rows_from(&self, first: usize) -> impl Iterator<Item = &Row> + '_ {
        self.rows.iter_from(first)
    }

    /// Every row, in order (tests).
    #[cfg(test)]
    pub fn rows(&self) -> Vec<&Row> {
        self.rows_from(0).collect()
    }

    /// How many rows there are.
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> Option<&Row> {
        self.rows.get(i)
    }

    /// How many calls the rows show (a grouped row counts all its calls).
    pub fn shown(&self) -> usize {
        self.rows.shown
    }

    /// Pending calls (shown or not) of the row's pattern: its shape when grouped by shape,
    /// else its newest call's exact fingerprint.
    pub fn pattern_size(&self, r: &Row) -> usize {
        let (map, fp) = match self.grouping {
            Grouping::Shape => (&self.rows.shapes, Grouping::Shape.pattern(&r.call)),
            _ => (&self.rows.exact, &r.call.fingerprint),
        };
        map.get(fp).copied().unwrap_or(1)
    }

    /// A call arrived (or changed, as an approval towards a quorum changes it).
    pub(super) fn arrive(&mut self, call: Arc<CallRecord>) {
        if let Some(old) = self.calls.remove(&call.id) {
            self.rows
                .remove(&old, &self.calls, self.grouping, self.sort);
        }
        let shown = self.filter.matches(&call);
        self.rows.add(&call, shown, self.grouping, self.sort);
        self.calls.insert(call.id.clone(), call);
    }

    /// A call left the queue; returns it if it was there.
    pub(super) fn depart(&mut self, id: &str) -> Option<Arc<CallRecord>> {
        let c = self.calls.remove(id)?;
        self.rows.remove(&c, &self.calls, self.grouping, self.sort);
        if self.selected.remove(id) {
            self.selection_changed();
        }
        Some(c)
    }

    /// Rebuild the rows if the filter, grouping, sort or the whole queue changed, and keep
    /// the cursor on its row.
    pub fn refresh(&mut self) {
        if self.dirty {
            self.rows
                .rebuild(&self.calls, &self.filter, self.grouping, self.sort);
            self.dirty = false;
        }
        // The cursor follows its row, unless we just decided that row: it drains call by call
        // (and moves as its oldest call leaves), so the cursor stays put and the next row
        // comes under it.
        if self
            .leaving
            .as_ref()
            .is_some_and(|k| self.rows.index_of(k, self.sort).is_none())
        {
            self.leaving = None;
        }
        if let Some(i) = self
            .cursor_key
            .as_ref()
            .filter(|k| self.leaving.as_ref() != Some(*k))
            .and_then(|k| self.rows.index_of(k, self.sort))
        {
            self.cursor = i;
        }
        self.cursor = self.cursor.min(self.rows.len().saturating_sub(1));
        self.cursor_key = self.rows.get(self.cursor).map(|r| r.key.clone());
        if self.hidden_dirty {
            self.hidden_dirty = false;
            self.hidden_selected = if self.filter.is_empty() {
                0
            } else {
                self.selected
                    .iter()
                    .filter(|id| self.calls.get(*id).is_some_and(|c| !self.filter.matches(c)))
                    .count()
            };
        }
        if self.clear_filter_when_done && !self.filter.is_empty() && self.rows.shown == 0 {
            self.clear_filter_when_done = false;
            // Said beside the latest note, which is usually the decision that emptied it.
            let cleared = format!(
                "filter \"{}\" cleared: it matches nothing pending",
                self.filter_text
            );
            match self.notes.back_mut() {
                Some(last) => *last = format!("{last} · {cleared}"),
                None => self.note(cleared),
            }
            self.set_filter(String::new());
            self.refresh();
        }
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
        self.leaving = None;
        self.cursor_key = self.current().map(|r| r.key.clone());
        self.scroll = 0;
    }
}
