//! Budgets: caps per client so a review queue cannot become an open-ended spend path.
//!
//! Each `[[budget]]` applies to calls whose `server/tool` matches its patterns and keeps one
//! account per client:
//! - `max_pending`: held calls waiting at once; beyond it new calls that need a person are
//!   refused, not queued;
//! - `max_approved` per `window`: calls a person approved in the sliding window, counting the
//!   ones still pending (so approving every pending call cannot overshoot);
//! - `daily`: cost units per UTC day, each call weighing its first matching `costs` entry (1
//!   otherwise). Allowed calls are charged when they are forwarded; held calls reserve their
//!   cost while pending and are charged when approved (a rejection gives it back).
//!
//! Checks and reservations happen together under one lock, so concurrent clients cannot
//! overshoot a cap. Accounts live in memory; pending calls recovered at start-up are counted
//! again, the approval window and the day's spending start afresh.

use std::collections::{HashMap, VecDeque};

use tollgate_shared::CallRecord;
use tollgate_shared::sync::Mutex;

use crate::glob::ToolPattern;

/// A cost weight for some tools.
#[derive(Debug, Clone)]
pub struct Cost {
    /// Calls it applies to.
    pub tools: Vec<ToolPattern>,
    /// Cost units per call.
    pub weight: f64,
}

/// One configured budget.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Name for messages and the audit trail.
    pub name: String,
    /// Calls it applies to.
    pub tools: Vec<ToolPattern>,
    /// Most held calls per client at once.
    pub max_pending: Option<u32>,
    /// Most approved calls per client within `window_ms`.
    pub max_approved: Option<u32>,
    /// The approval window.
    pub window_ms: u64,
    /// Cost units per client per UTC day.
    pub daily: Option<f64>,
    /// Weights, first match wins; 1 otherwise.
    pub costs: Vec<Cost>,
}

impl Budget {
    fn applies(&self, server: &str, tool: &str) -> bool {
        self.tools.iter().any(|p| p.matches(server, tool))
    }

    fn weight(&self, server: &str, tool: &str) -> f64 {
        self.costs
            .iter()
            .find(|c| c.tools.iter().any(|p| p.matches(server, tool)))
            .map_or(1.0, |c| c.weight)
    }
}

/// A refusal: which budget and which cap.
#[derive(Debug, Clone, PartialEq)]
pub struct OverBudget {
    /// The budget's name.
    pub budget: String,
    /// The cap and the state, e.g. "20 pending calls per client; 20 are pending".
    pub why: String,
    /// What would make room, for the client.
    pub retry: String,
}

#[derive(Debug, Default)]
struct Account {
    pending: u32,
    reserved: f64,
    approved: VecDeque<u64>,
    day: u64,
    spent: f64,
}

impl Account {
    fn roll(&mut self, now_ms: u64, window_ms: u64) {
        let day = now_ms / 86_400_000;
        if day != self.day {
            self.day = day;
            self.spent = 0.0;
        }
        while self
            .approved
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= window_ms)
        {
            self.approved.pop_front();
        }
    }
}

/// All budgets and their accounts.
pub struct Budgets {
    budgets: Vec<Budget>,
    accounts: Mutex<HashMap<(usize, tollgate_shared::Name), Account>>,
}

fn fmt_units(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

impl Budgets {
    /// Budgets as configured.
    pub fn new(budgets: Vec<Budget>) -> Budgets {
        Budgets {
            budgets,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// True when no budget is configured.
    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
    }

    /// A call is about to be forwarded without a person: charge its cost, or refuse it.
    pub fn charge_run(
        &self,
        server: &str,
        tool: &str,
        client: &str,
        now_ms: u64,
    ) -> Result<(), OverBudget> {
        if self.is_empty() {
            return Ok(());
        }
        let mut accounts = self.accounts.lock();
        let mut charges = Vec::new();
        for (i, b) in self.budgets.iter().enumerate() {
            let Some(daily) = b.daily.filter(|_| b.applies(server, tool)) else {
                continue;
            };
            let w = b.weight(server, tool);
            let acc = accounts
                .entry((i, tollgate_shared::intern(client)))
                .or_default();
            acc.roll(now_ms, b.window_ms);
            if acc.spent + acc.reserved + w > daily {
                return Err(over_daily(b, daily, acc, w));
            }
            charges.push((i, w));
        }
        for (i, w) in charges {
            if let Some(acc) = accounts.get_mut(&(i, tollgate_shared::intern(client))) {
                acc.spent += w;
            }
        }
        Ok(())
    }

    /// A call is about to be held: reserve a pending slot, an approval and its cost in every
    /// budget it falls in, or refuse it (reserving nothing).
    pub fn reserve_hold(&self, call: &CallRecord, now_ms: u64) -> Result<(), OverBudget> {
        if self.is_empty() {
            return Ok(());
        }
        let mut accounts = self.accounts.lock();
        let mut taking = Vec::new();
        for (i, b) in self.budgets.iter().enumerate() {
            if !b.applies(&call.server, &call.tool) {
                continue;
            }
            let w = b.weight(&call.server, &call.tool);
            let acc = accounts.entry((i, call.client.clone())).or_default();
            acc.roll(now_ms, b.window_ms);
            if let Some(max) = b.max_pending
                && acc.pending >= max
            {
                return Err(OverBudget {
                    budget: b.name.clone(),
                    why: format!(
                        "at most {max} pending calls per client; {} are pending",
                        acc.pending
                    ),
                    retry: "Retry once some of your pending calls are decided.".into(),
                });
            }
            if let Some(max) = b.max_approved {
                let used = acc.approved.len() as u64 + u64::from(acc.pending);
                if used >= u64::from(max) {
                    let window =
                        humantime::format_duration(std::time::Duration::from_millis(b.window_ms));
                    let retry = acc.approved.front().map_or_else(
                        || "Retry once some of your pending calls are decided.".to_string(),
                        |t| {
                            format!(
                                "Retry in {} s.",
                                (t + b.window_ms).saturating_sub(now_ms).div_ceil(1000)
                            )
                        },
                    );
                    return Err(OverBudget {
                        budget: b.name.clone(),
                        why: format!(
                            "at most {max} approved calls per client per {window}; {} approved and {} pending",
                            acc.approved.len(),
                            acc.pending
                        ),
                        retry,
                    });
                }
            }
            if let Some(daily) = b.daily
                && acc.spent + acc.reserved + w > daily
            {
                return Err(over_daily(b, daily, acc, w));
            }
            taking.push((i, w));
        }
        for (i, w) in taking {
            if let Some(acc) = accounts.get_mut(&(i, call.client.clone())) {
                acc.pending += 1;
                acc.reserved += w;
            }
        }
        Ok(())
    }

    /// Count a pending call recovered at start-up (no check: it was accepted before).
    pub fn adopt(&self, call: &CallRecord, now_ms: u64) {
        if self.is_empty() {
            return;
        }
        let mut accounts = self.accounts.lock();
        for (i, b) in self.budgets.iter().enumerate() {
            if b.applies(&call.server, &call.tool) {
                let acc = accounts.entry((i, call.client.clone())).or_default();
                acc.roll(now_ms, b.window_ms);
                acc.pending += 1;
                acc.reserved += b.weight(&call.server, &call.tool);
            }
        }
    }

    /// A held call ended: free its reservation; an approved one is charged and counted.
    pub fn release(&self, call: &CallRecord, approved: bool, now_ms: u64) {
        if self.is_empty() {
            return;
        }
        let mut accounts = self.accounts.lock();
        for (i, b) in self.budgets.iter().enumerate() {
            if !b.applies(&call.server, &call.tool) {
                continue;
            }
            let w = b.weight(&call.server, &call.tool);
            let acc = accounts.entry((i, call.client.clone())).or_default();
            acc.roll(now_ms, b.window_ms);
            acc.pending = acc.pending.saturating_sub(1);
            acc.reserved = (acc.reserved - w).max(0.0);
            if approved {
                acc.spent += w;
                acc.approved.push_back(now_ms);
            }
        }
    }
}

fn over_daily(b: &Budget, daily: f64, acc: &Account, w: f64) -> OverBudget {
    OverBudget {
        budget: b.name.clone(),
        why: format!(
            "daily budget of {} units per client: {} spent, {} reserved by pending calls, this call costs {}",
            fmt_units(daily),
            fmt_units(acc.spent),
            fmt_units(acc.reserved),
            fmt_units(w)
        ),
        retry: "The budget resets at 00:00 UTC.".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn budget() -> Budget {
        Budget {
            name: "agents".into(),
            tools: vec![ToolPattern::new("db/*").expect("pattern")],
            max_pending: Some(3),
            max_approved: None,
            window_ms: 3_600_000,
            daily: None,
            costs: Vec::new(),
        }
    }

    fn call(client: &str, tool: &str) -> CallRecord {
        serde_json::from_value(serde_json::json!({
            "id": "0190c1a2-0000-7000-8000-000000000000", "outcome": "pending",
            "rule": {"index": 1, "name": "r"}, "client": client, "server": "db", "tool": tool,
            "request_id": 1, "arguments": {}, "timings": {"received_ms": 0, "decided_ms": 0}
        }))
        .expect("record")
    }

    #[test]
    fn pending_cap_holds_under_concurrent_clients() {
        let budgets = Arc::new(Budgets::new(vec![budget()]));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let b = budgets.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .filter(|_| {
                            b.reserve_hold(&call(&format!("c{}", t % 2), "q"), 0)
                                .is_ok()
                        })
                        .count()
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().expect("join")).sum();
        assert_eq!(admitted, 6, "3 per client, two clients");
        let refused = budgets.reserve_hold(&call("c0", "q"), 0).expect_err("full");
        assert!(refused.why.contains("3 are pending"), "{}", refused.why);
        budgets.release(&call("c0", "q"), false, 1);
        assert!(budgets.reserve_hold(&call("c0", "q"), 1).is_ok());
        assert!(
            budgets.reserve_hold(&call("c0", "other"), 1).is_err(),
            "db/* covers every db tool"
        );
        assert!(budgets.reserve_hold(&call("c2", "q"), 1).is_ok());
    }

    #[test]
    fn approvals_count_within_the_window_including_pending_ones() {
        let mut b = budget();
        b.max_pending = None;
        b.max_approved = Some(2);
        b.window_ms = 1_000;
        let budgets = Budgets::new(vec![b]);
        let c = call("a", "q");
        budgets.reserve_hold(&c, 0).expect("1");
        budgets.reserve_hold(&c, 0).expect("2");
        assert!(budgets.reserve_hold(&c, 0).is_err(), "two pending fill it");
        budgets.release(&c, true, 100);
        budgets.release(&c, false, 100);
        budgets
            .reserve_hold(&c, 200)
            .expect("one approved, one slot");
        let refused = budgets.reserve_hold(&c, 300).expect_err("full again");
        assert_eq!(refused.retry, "Retry in 1 s.");
        budgets.release(&c, false, 300);
        assert!(
            budgets.reserve_hold(&c, 1_100).is_ok(),
            "the approval left the window"
        );
    }

    #[test]
    fn daily_cost_counts_allowed_and_reserved_calls_and_resets_next_day() {
        let mut b = budget();
        b.max_pending = None;
        b.daily = Some(10.0);
        b.costs = vec![Cost {
            tools: vec![ToolPattern::new("db/drop*").expect("pattern")],
            weight: 6.0,
        }];
        let budgets = Budgets::new(vec![b]);
        budgets.charge_run("db", "q", "a", 0).expect("1 of 10");
        budgets
            .reserve_hold(&call("a", "drop_table"), 0)
            .expect("7 of 10");
        let refused = budgets
            .reserve_hold(&call("a", "drop_index"), 0)
            .expect_err("13 > 10");
        assert!(
            refused.why.contains("1 spent, 6 reserved"),
            "{}",
            refused.why
        );
        budgets.charge_run("db", "q", "a", 0).expect("8 of 10");
        budgets.release(&call("a", "drop_table"), false, 0);
        budgets
            .reserve_hold(&call("a", "drop_index"), 0)
            .expect("2 + 6");
        budgets.release(&call("a", "drop_index"), true, 0);
        budgets.charge_run("db", "q", "a", 0).expect("9 of 10");
        budgets.charge_run("db", "q", "a", 0).expect("10 of 10");
        assert!(budgets.charge_run("db", "q", "a", 0).is_err());
        assert!(budgets.charge_run("db", "q", "b", 0).is_ok(), "per client");
        assert!(
            budgets.charge_run("fs", "read", "a", 0).is_ok(),
            "other tools"
        );
        assert!(
            budgets.charge_run("db", "q", "a", 86_400_000).is_ok(),
            "a new day"
        );
    }
}
