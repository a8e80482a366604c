//! Prometheus metrics: one registry for the process, with the counters and histograms the
//! layers update as things happen, and gauges the admin listener fills in at each scrape.
//!
//! Calls are counted where their audit entries are committed (the store's [`Observer`]), so
//! `tollgate_calls_total` agrees with the audit trail by construction. Label values come from
//! the configuration (servers, rules, outcomes) except tool names, which agents choose: the
//! first [`MAX_TOOLS`] distinct `server/tool` pairs get their own label, later ones are counted
//! as `other`, so an agent inventing tool names cannot grow the scrape without bound.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tollgate_shared::sync::Mutex;
use tollgate_shared::{CallRecord, Name, Outcome, Verdict};
use tollgate_store::Observer;

/// Distinct `server/tool` pairs with a label of their own.
pub const MAX_TOOLS: usize = 500;

type Labels3 = [(&'static str, String); 3];
/// One label with a fixed value set (outcome, kind, result).
type Fixed1 = [(&'static str, &'static str); 1];
/// One label with a configured value (server).
type Named1 = [(&'static str, String); 1];
/// Histograms with the seconds buckets, by label.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the broker.
pub struct Metrics {
    registry: Mutex<Registry>,
    calls: Family<Labels3, Counter>,
    refusals: Family<Fixed1, Counter>,
    hold: Histograms<Fixed1>,
    decision: Histogram,
    upstream: Histograms<Named1>,
    commit: Histogram,
    group: Histogram,
    /// Filled in at each scrape.
    pub pending: Family<Named1, Gauge>,
    /// Filled in at each scrape: how long the oldest pending call has waited, by server.
    pub oldest: Family<Named1, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Filled in at each scrape.
    pub journal_bytes: Gauge,
    consoles: Gauge,
    notifications: Family<Fixed1, Counter>,
    /// Filled in at each scrape: 1 while the store cannot write.
    pub store_failing: Gauge,
    reloads: Family<Fixed1, Counter>,
    tools: Mutex<HashSet<(String, String)>>,
    /// `tollgate_calls_total`'s counters by outcome, server and tool as the call names them,
    /// so counting a call allocates nothing once its kind has been seen (bounded like the
    /// tool labels: past the limit, lookups go through the family).
    counters: Mutex<HashMap<(Outcome, Name, Name), Counter>>,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 0.5 ms to about 9 hours.
    exponential_buckets(0.0005, 4.0, 13)
}

fn seconds_histogram() -> Histogram {
    Histogram::new(seconds_buckets())
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("tollgate");
        let calls = Family::<Labels3, Counter>::default();
        r.register(
            "calls",
            "tools/call requests by outcome, server and tool (one per audit entry)",
            calls.clone(),
        );
        let refusals = Family::default();
        r.register(
            "guard_refusals",
            "calls refused before any upstream, by kind: dlp, rate, budget, loop, blocked (a temporary rule), policy, store, still_pending",
            refusals.clone(),
        );
        let hold = Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        r.register_with_unit(
            "hold_duration",
            "how long held calls waited until they ended, by outcome",
            Unit::Seconds,
            hold.clone(),
        );
        let decision = Histogram::new(seconds_buckets());
        r.register_with_unit(
            "decision_latency",
            "from an approval until its client had the upstream's result",
            Unit::Seconds,
            decision.clone(),
        );
        let upstream = Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        r.register_with_unit(
            "upstream_duration",
            "forwarded calls: from forwarding until the answer was relayed, by server",
            Unit::Seconds,
            upstream.clone(),
        );
        let commit = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        r.register_with_unit(
            "store_commit_duration",
            "one group commit of the store (journal append and fdatasync)",
            Unit::Seconds,
            commit.clone(),
        );
        let group = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        r.register(
            "store_commit_group_size",
            "mutations per group commit",
            group.clone(),
        );
        let pending = Family::default();
        r.register(
            "pending_calls",
            "calls held for a decision now, by server",
            pending.clone(),
        );
        let oldest = Family::default();
        r.register_with_unit(
            "pending_oldest",
            "how long the oldest call held for a decision has waited, by server",
            Unit::Seconds,
            oldest.clone(),
        );
        let journal_bytes = Gauge::default();
        r.register_with_unit(
            "journal",
            "bytes in the store's journal (emptied at each checkpoint)",
            Unit::Bytes,
            journal_bytes.clone(),
        );
        let consoles = Gauge::default();
        r.register(
            "consoles_connected",
            "open console connections",
            consoles.clone(),
        );
        let notifications = Family::default();
        r.register(
            "notifications",
            "notifications by result since start: sent, failed (attempts), dropped",
            notifications.clone(),
        );
        let store_failing = Gauge::default();
        r.register(
            "store_failing",
            "1 while the store cannot write (calls it could not record are refused)",
            store_failing.clone(),
        );
        let reloads = Family::default();
        r.register(
            "config_reloads",
            "configuration reloads by result: applied, refused",
            reloads.clone(),
        );
        r.register(
            "build",
            "the broker's version and console protocol",
            prometheus_client::metrics::info::Info::new([
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("protocol", tollgate_shared::PROTOCOL_VERSION.to_string()),
            ]),
        );
        Metrics {
            registry: Mutex::new(r),
            calls,
            refusals,
            hold,
            decision,
            upstream,
            commit,
            group,
            pending,
            oldest,
            journal_bytes,
            consoles,
            notifications,
            store_failing,
            reloads,
            tools: Mutex::new(HashSet::new()),
            counters: Mutex::new(HashMap::new()),
        }
    }

    /// The tool label for `server/tool`: itself, or `other` once [`MAX_TOOLS`] are taken.
    fn tool(&self, server: &str, tool: &str) -> String {
        let mut tools = self.tools.lock();
        let key = (server.to_string(), tool.to_string());
        if tools.contains(&key) {
            return key.1;
        }
        if tools.len() >= MAX_TOOLS {
            return "other".into();
        }
        tools.insert(key);
        tool.to_string()
    }

    /// A call refused before any upstream, by the kind of guard.
    pub fn refused(&self, kind: &'static str) {
        self.refusals.get_or_create(&[("kind", kind)]).inc();
    }

    /// A notification was sent, an attempt failed, or one was dropped.
    pub fn notification(&self, result: &'static str, n: u64) {
        self.notifications
            .get_or_create(&[("result", result)])
            .inc_by(n);
    }

    /// A configuration reload was applied or refused.
    pub fn reloaded(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads.get_or_create(&[("result", result)]).inc();
    }

    /// A console connected; the gauge goes down when the returned guard drops.
    pub fn console(&'static self) -> ConsoleGuard {
        self.consoles.inc();
        ConsoleGuard(&self.consoles)
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock());
        out
    }
}

/// Counts one open console connection while it lives.
pub struct ConsoleGuard(&'static Gauge);

impl Drop for ConsoleGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// The store's observer, counting calls as their audit entries are committed.
pub fn observer() -> Arc<dyn Observer> {
    Arc::new(StoreObserver(global()))
}

struct StoreObserver(&'static Metrics);

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl Observer for StoreObserver {
    fn committed(&self, writes: usize, took: Duration) {
        self.0.commit.observe(took.as_secs_f64());
        self.0.group.observe(writes as f64);
    }

    fn written(&self, r: &CallRecord, audited: Option<Outcome>, at_ms: u64) {
        let m = self.0;
        if let Some(outcome) = audited {
            let key = (outcome, r.server.clone(), r.tool.clone());
            let cached = m.counters.lock().get(&key).cloned();
            let counter = match cached {
                Some(c) => c,
                None => {
                    let tool = m.tool(&r.server, &r.tool);
                    let c = m
                        .calls
                        .get_or_create(&[
                            ("outcome", outcome.as_str().to_string()),
                            ("server", r.server.to_string()),
                            ("tool", tool),
                        ])
                        .clone();
                    let mut counters = m.counters.lock();
                    if counters.len() < MAX_TOOLS * 12 {
                        counters.insert(key, c.clone());
                    }
                    c
                }
            };
            counter.inc();
            let ended = matches!(
                outcome,
                Outcome::Approved
                    | Outcome::Rejected
                    | Outcome::Expired
                    | Outcome::Cancelled
                    | Outcome::Abandoned
            );
            if ended && r.hold.is_some() {
                m.hold
                    .get_or_create(&[("outcome", outcome.as_str())])
                    .observe(secs(at_ms.saturating_sub(r.timings.received_ms)));
            }
        }
        // The write of a forwarded call's answer: how long forwarding took.
        if audited.is_none()
            && let Some(done) = r.timings.completed_ms
        {
            let approved = r
                .decisions
                .iter()
                .rev()
                .find(|d| d.verdict == Verdict::Approve)
                .map(|d| d.at_ms);
            let started = match (r.outcome, approved) {
                (Outcome::Approved, Some(at)) => {
                    let s = r.hold.as_ref().and_then(|h| h.retried_ms).unwrap_or(at);
                    if r.hold.as_ref().and_then(|h| h.retried_ms).is_none() {
                        m.decision.observe(secs(done.saturating_sub(at)));
                    }
                    s
                }
                (Outcome::Allowed, _) => r.timings.decided_ms,
                _ => return,
            };
            m.upstream
                .get_or_create(&[("server", r.server.to_string())])
                .observe(secs(done.saturating_sub(started)));
        }
    }
}

/// The number of consoles connected now (for tests).
#[cfg(test)]
fn consoles_now() -> i64 {
    global().consoles.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_beyond_the_limit_are_other_and_the_scrape_parses_as_openmetrics() {
        let m = Metrics::new();
        for i in 0..MAX_TOOLS {
            assert_eq!(m.tool("s", &format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(m.tool("s", "t0"), "t0");
        assert_eq!(m.tool("s", "invented-by-an-agent"), "other");
        m.refused("dlp");
        let text = m.encode();
        assert!(
            text.contains("tollgate_guard_refusals_total{kind=\"dlp\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE tollgate_decision_latency_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let g = global().console();
        assert!(consoles_now() >= 1);
        drop(g);
    }
}
