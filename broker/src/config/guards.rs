//! `[dlp]`, `[[limit]]`, `[[budget]]` and `[loops]`: the guards' settings, parsed into the
//! guards' own types.

use regex::Regex;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

use tollgate_policy::ToolPattern;
use tollgate_policy::guards::DlpSettings;

use super::Validator;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDlp {
    pub(super) enabled: Option<bool>,
    pub(super) action: Option<Spanned<String>>,
    pub(super) entropy: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub(super) detector: Vec<RawDetector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDetector {
    pub(super) name: String,
    pub(super) regex: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    pub(super) name: Option<String>,
    pub(super) tools: Spanned<Vec<Spanned<String>>>,
    pub(super) per_client: Option<Spanned<String>>,
    pub(super) per_server: Option<Spanned<String>>,
    pub(super) per_tool: Option<Spanned<String>>,
    pub(super) global: Option<Spanned<String>>,
    pub(super) burst: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) tools: Option<Vec<Spanned<String>>>,
    pub(super) max_pending: Option<Spanned<i64>>,
    pub(super) max_approved: Option<Spanned<i64>>,
    pub(super) window: Option<Spanned<String>>,
    pub(super) daily: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) costs: Vec<RawCost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCost {
    pub(super) tools: Vec<Spanned<String>>,
    pub(super) weight: Spanned<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLoops {
    pub(super) threshold: Option<Spanned<i64>>,
    pub(super) window: Option<Spanned<String>>,
    pub(super) action: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn dlp_action(
        &mut self,
        v: Spanned<String>,
        what: &str,
    ) -> Option<tollgate_policy::guards::DlpAction> {
        let parsed = tollgate_policy::guards::DlpAction::parse(v.get_ref());
        if parsed.is_none() {
            self.problem(
                v.span(),
                format!("{what}: unknown DLP action {:?}", v.get_ref()),
                Some("use \"deny\", \"approve\" (a person sees the findings, masked) or \"redact\" (forward with secrets replaced)"),
            );
        }
        parsed
    }

    pub(super) fn dlp(&mut self, raw: RawDlp) -> DlpSettings {
        let action = raw
            .action
            .and_then(|a| self.dlp_action(a, "[dlp] action"))
            .unwrap_or(tollgate_policy::guards::DlpAction::Approve);
        let entropy = match raw.entropy {
            None => Some(tollgate_policy::guards::dlp::Entropy::default()),
            Some(v) => match v.get_ref() {
                toml::Value::Boolean(false) => None,
                toml::Value::Boolean(true) => {
                    Some(tollgate_policy::guards::dlp::Entropy::default())
                }
                toml::Value::Table(t) => {
                    let d = tollgate_policy::guards::dlp::Entropy::default();
                    let min_length = t.get("min_length").and_then(toml::Value::as_integer);
                    let bits = t
                        .get("bits")
                        .and_then(|b| b.as_float().or(b.as_integer().map(|i| i as f64)));
                    let unknown = t.keys().any(|k| k != "min_length" && k != "bits");
                    if unknown || min_length.is_some_and(|m| m < 8) {
                        self.problem(
                            v.span(),
                            "[dlp] entropy takes min_length (8 or more) and bits".into(),
                            Some("entropy = { min_length = 40, bits = 4.5 }, or entropy = false"),
                        );
                    }
                    Some(tollgate_policy::guards::dlp::Entropy {
                        min_length: min_length.map_or(d.min_length, |m| m.max(8) as usize),
                        bits: bits.unwrap_or(d.bits),
                    })
                }
                _ => {
                    self.problem(
                        v.span(),
                        "[dlp] entropy must be a table or false".into(),
                        Some("entropy = { min_length = 40, bits = 4.5 }, or entropy = false"),
                    );
                    None
                }
            },
        };
        let mut detectors = Vec::new();
        for d in raw.detector {
            match Regex::new(d.regex.get_ref()) {
                Ok(r) => detectors.push((d.name, r)),
                Err(e) => self.problem(
                    d.regex.span(),
                    format!("[[dlp.detector]] {:?}: bad regex: {e}", d.name),
                    Some("regexes use Rust regex syntax; escape backslashes in TOML strings or use '...' literal strings"),
                ),
            }
        }
        DlpSettings {
            enabled: raw.enabled.unwrap_or(true),
            action,
            entropy,
            detectors,
        }
    }

    pub(super) fn limits(
        &mut self,
        raw: Vec<Spanned<RawLimit>>,
    ) -> Vec<tollgate_policy::guards::limits::Limit> {
        use tollgate_policy::guards::limits::{Limit, Scope, parse_rate};
        let mut out = Vec::new();
        for (i, l) in raw.into_iter().enumerate() {
            let span = l.span();
            let l = l.into_inner();
            let name = l.name.unwrap_or_else(|| format!("limit {}", i + 1));
            let tools = self.patterns(&name, l.tools.into_inner());
            let burst = self.count(&name, "burst", l.burst);
            let scopes = [
                (Scope::Client, l.per_client),
                (Scope::Server, l.per_server),
                (Scope::Tool, l.per_tool),
                (Scope::Global, l.global),
            ];
            let mut any = false;
            for (scope, rate) in scopes {
                let Some(rate) = rate else { continue };
                any = true;
                match parse_rate(rate.get_ref()) {
                    Some((count, per_ms)) => out.push(Limit {
                        name: name.clone(),
                        tools: tools.clone(),
                        scope,
                        count,
                        per_ms,
                        burst: burst.unwrap_or(count),
                        text: rate.get_ref().clone(),
                    }),
                    None => self.problem(
                        rate.span(),
                        format!("{name}: {:?} is not a rate", rate.get_ref()),
                        Some("write rates like \"60/min\", \"10/s\", \"1000/h\" or \"5/d\""),
                    ),
                }
            }
            if !any {
                self.problem(
                    span,
                    format!("{name} sets no rate"),
                    Some("add per_client, per_server, per_tool or global, e.g. per_client = \"60/min\""),
                );
            }
        }
        out
    }

    pub(super) fn budgets(
        &mut self,
        raw: Vec<Spanned<RawBudget>>,
    ) -> Vec<tollgate_policy::guards::budget::Budget> {
        use tollgate_policy::guards::budget::{Budget, Cost};
        let mut out = Vec::new();
        for (i, b) in raw.into_iter().enumerate() {
            let span = b.span();
            let b = b.into_inner();
            let name = b.name.unwrap_or_else(|| format!("budget {}", i + 1));
            let tools = match b.tools {
                Some(t) => self.patterns(&name, t),
                None => vec![ToolPattern::new("*/*").expect("the catch-all pattern")],
            };
            let max_pending = self.count(&name, "max_pending", b.max_pending);
            let max_approved = self.count(&name, "max_approved", b.max_approved);
            let window = self.duration(
                b.window,
                Duration::from_secs(3600),
                &format!("{name}: window"),
            );
            let mut positive = |v: Spanned<f64>, what: &str| {
                if *v.get_ref() > 0.0 && v.get_ref().is_finite() {
                    Some(*v.get_ref())
                } else {
                    self.problem(
                        v.span(),
                        format!("{name}: {what} must be a number above zero"),
                        None,
                    );
                    None
                }
            };
            let daily = b.daily.and_then(|d| positive(d, "daily"));
            let mut costs = Vec::new();
            for c in b.costs {
                if let Some(weight) = positive(c.weight, "a cost weight") {
                    costs.push((c.tools, weight));
                }
            }
            let costs = costs
                .into_iter()
                .map(|(t, weight)| Cost {
                    tools: self.patterns(&name, t),
                    weight,
                })
                .collect();
            if max_pending.is_none() && max_approved.is_none() && daily.is_none() {
                self.problem(
                    span,
                    format!("{name} sets no cap"),
                    Some("add max_pending, max_approved (with window) or daily"),
                );
            }
            out.push(Budget {
                name,
                tools,
                max_pending,
                max_approved,
                window_ms: window.as_millis() as u64,
                daily,
                costs,
            });
        }
        out
    }

    pub(super) fn loops(&mut self, raw: RawLoops) -> tollgate_policy::guards::loops::LoopConfig {
        use tollgate_policy::guards::loops::{LoopAction, LoopConfig};
        let d = LoopConfig::default();
        let threshold = self
            .count("[loops]", "threshold", raw.threshold)
            .unwrap_or(d.threshold);
        let window = self.duration(
            raw.window,
            Duration::from_millis(d.window_ms),
            "[loops] window",
        );
        let action = match raw.action {
            None => d.action,
            Some(a) => LoopAction::parse(a.get_ref()).unwrap_or_else(|| {
                self.problem(
                    a.span(),
                    format!("[loops] action: unknown action {:?}", a.get_ref()),
                    Some("use \"flag\" (mark the calls), \"approve\" (hold them for a person) or \"deny\""),
                );
                d.action
            }),
        };
        LoopConfig {
            threshold,
            window_ms: window.as_millis() as u64,
            action,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::check;

    #[test]
    fn limits_and_dlp_settings_are_checked() {
        let base = "[broker]\nauth = \"none\"\n[[server]]\nname = \"a\"\ncommand = [\"x\"]\n";
        let ok = check(&format!(
            "{base}[[limit]]\ntools = [\"a/*\"]\nper_client = \"60/min\"\nglobal = \"10/s\"\n[dlp]\naction = \"redact\"\nentropy = false\n"
        ))
        .expect("valid");
        assert_eq!(ok.limits.len(), 2);
        assert!(ok.dlp.entropy.is_none());
        let err = check(&format!(
            "{base}[[limit]]\ntools = [\"a/*\"]\nper_client = \"lots\"\n[[limit]]\nname = \"empty\"\ntools = [\"*\"]\n[dlp]\naction = \"shred\"\n[[dlp.detector]]\nname = \"x\"\nregex = \"(\"\n"
        ))
        .expect_err("invalid")
        .to_string();
        for want in [
            "\"lots\" is not a rate",
            "empty sets no rate",
            "unknown DLP action \"shred\"",
            "bad regex",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn budgets_and_loops_are_checked() {
        let base = "[broker]\nauth = \"none\"\n[[server]]\nname = \"a\"\ncommand = [\"x\"]\n";
        let ok = check(&format!(
            "{base}[[budget]]\nname = \"agents\"\nmax_pending = 20\nmax_approved = 100\nwindow = \"1h\"\ndaily = 500\ncosts = [{{ tools = [\"a/drop*\"], weight = 25 }}]\n[loops]\nthreshold = 50\nwindow = \"30s\"\naction = \"approve\"\n"
        ))
        .expect("valid");
        let b = &ok.budgets[0];
        assert_eq!(
            (b.max_pending, b.max_approved, b.window_ms, b.daily),
            (Some(20), Some(100), 3_600_000, Some(500.0))
        );
        assert_eq!(b.costs[0].weight, 25.0);
        assert!(b.tools[0].matches("any", "tool"), "all tools by default");
        assert_eq!(ok.loops.threshold, 50);
        assert_eq!(ok.loops.window_ms, 30_000);
        assert_eq!(
            ok.loops.action,
            tollgate_policy::guards::loops::LoopAction::Approve
        );
        let defaults = check(base).expect("valid");
        assert_eq!(defaults.loops.threshold, 20);
        assert_eq!(
            defaults.loops.action,
            tollgate_policy::guards::loops::LoopAction::Flag
        );
        let err = check(&format!(
            "{base}[[budget]]\nname = \"none\"\n[[budget]]\nmax_pending = 0\ndaily = -3\n[loops]\naction = \"panic\"\nthreshold = 0\n"
        ))
        .expect_err("invalid")
        .to_string();
        for want in [
            "none sets no cap",
            "budget 2: max_pending must be 1 or more",
            "budget 2: daily must be a number above zero",
            "[loops] action: unknown action \"panic\"",
            "[loops]: threshold must be 1 or more",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
