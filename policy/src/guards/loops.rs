//! Loop detection: how often each call shape was seen recently.
//!
//! Every intercepted call is counted under its shape fingerprint (see `fingerprint::shape`).
//! When a shape is seen `threshold` times within `window`, its calls are flagged as a probable
//! runaway loop; `[loops] action` says whether that only flags them for approvers, holds calls
//! the policy would have allowed, or refuses them.

use std::collections::{HashMap, VecDeque};

use tollgate_shared::sync::Mutex;

/// What happens to a call in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopAction {
    /// Mark it (approvers see the flag, the audit trail has it); nothing else changes.
    Flag,
    /// Hold it for a person even when the policy allows it.
    Approve,
    /// Refuse it at once.
    Deny,
}

impl LoopAction {
    /// Parse the config spelling.
    pub fn parse(s: &str) -> Option<LoopAction> {
        match s {
            "flag" => Some(LoopAction::Flag),
            "approve" => Some(LoopAction::Approve),
            "deny" => Some(LoopAction::Deny),
            _ => None,
        }
    }
}

/// `[loops]` as configured.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Calls of one shape within the window that count as a loop.
    pub threshold: u32,
    /// The window in ms.
    pub window_ms: u64,
    /// What to do with calls in a loop.
    pub action: LoopAction,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            threshold: 20,
            window_ms: 60_000,
            action: LoopAction::Flag,
        }
    }
}

/// What [`Loops::observe`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Calls of this shape within the window, this one included.
    pub repeats: u32,
    /// At or over the threshold.
    pub looping: bool,
}

/// Most timestamps kept per shape; counts above it are reported as this many.
const KEPT_PER_SHAPE: usize = 100_000;
/// Shapes tracked before idle ones are dropped.
const SHAPES_BEFORE_PRUNE: usize = 8_192;

/// Recent calls per shape.
pub struct Loops {
    /// The configuration.
    pub config: LoopConfig,
    seen: Mutex<HashMap<String, VecDeque<u64>>>,
}

impl Loops {
    /// A tracker with this configuration.
    pub fn new(config: LoopConfig) -> Loops {
        Loops {
            config,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Count a call of this shape at `now_ms`.
    pub fn observe(&self, shape: &str, now_ms: u64) -> Seen {
        let window = self.config.window_ms;
        let old = |t: &u64| now_ms.saturating_sub(*t) >= window;
        let mut seen = self.seen.lock();
        if seen.len() >= SHAPES_BEFORE_PRUNE && !seen.contains_key(shape) {
            seen.retain(|_, times| times.back().is_some_and(|t| !old(t)));
        }
        let times = seen.entry(shape.to_string()).or_default();
        while times.front().is_some_and(old) || times.len() >= KEPT_PER_SHAPE {
            times.pop_front();
        }
        times.push_back(now_ms);
        let repeats = u32::try_from(times.len()).unwrap_or(u32::MAX);
        Seen {
            repeats,
            looping: repeats >= self.config.threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_becomes_a_loop_at_the_threshold_within_the_window() {
        let loops = Loops::new(LoopConfig {
            threshold: 3,
            window_ms: 1_000,
            action: LoopAction::Flag,
        });
        assert_eq!(
            loops.observe("a", 0),
            Seen {
                repeats: 1,
                looping: false
            }
        );
        assert!(!loops.observe("a", 100).looping);
        assert!(!loops.observe("b", 150).looping, "shapes count apart");
        assert_eq!(
            loops.observe("a", 200),
            Seen {
                repeats: 3,
                looping: true
            }
        );
        // The window slides: at 1100 only the calls at 200 and 1100 remain.
        assert_eq!(
            loops.observe("a", 1_100),
            Seen {
                repeats: 2,
                looping: false
            }
        );
    }

    #[test]
    fn idle_shapes_are_dropped_when_many_are_tracked() {
        let loops = Loops::new(LoopConfig::default());
        for i in 0..SHAPES_BEFORE_PRUNE {
            loops.observe(&format!("s{i}"), 0);
        }
        loops.observe("late", 120_000);
        assert_eq!(loops.seen.lock().len(), 1);
    }
}
