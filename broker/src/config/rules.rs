//! `[policy]` and `[[rule]]`: the policy, parsed into `tollgate_policy`'s rules.

use std::collections::HashSet;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use tollgate_policy::{
    Action, Cmp, Condition, HoldTerms, Policy, Rule, Subject, Test, ToolPattern,
};
use tollgate_shared::RuleRef;
use toml::Spanned;

use super::Validator;
use crate::upstream::ServerSpec;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) default: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Option<String>,
    pub(super) tools: Spanned<Vec<Spanned<String>>>,
    pub(super) when: Option<Spanned<toml::Value>>,
    pub(super) action: Spanned<String>,
    pub(super) reason: Option<String>,
    pub(super) expiry: Option<Spanned<String>>,
    pub(super) hold: Option<Spanned<String>>,
    pub(super) quorum: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) approvers: Vec<String>,
    pub(super) dlp: Option<Spanned<String>>,
    pub(super) escalate_after: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) escalate_to: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) require_signature: bool,
}

impl Validator<'_> {
    pub(super) fn policy(
        &mut self,
        raw: RawPolicy,
        rules: Vec<Spanned<RawRule>>,
        servers: &[ServerSpec],
        sinks: &[&str],
    ) -> Policy {
        let default = match raw.default {
            None => Action::Approve,
            Some(d) => Action::parse(d.get_ref()).unwrap_or_else(|| {
                self.problem(
                    d.span(),
                    format!("unknown default action {:?}", d.get_ref()),
                    Some("use \"allow\", \"deny\" or \"approve\""),
                );
                Action::Approve
            }),
        };
        let known: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in rules.into_iter().enumerate() {
            let index = i + 1;
            let span = r.span();
            let r = r.into_inner();
            let name = r.name.clone().unwrap_or_else(|| format!("rule {index}"));
            if r.name.is_some() && !names.insert(name.clone()) {
                self.problem(
                    span.clone(),
                    format!("duplicate rule name {name:?}"),
                    Some("rule names appear in refusals and the audit trail, so keep them unique"),
                );
            }
            let action = Action::parse(r.action.get_ref()).unwrap_or_else(|| {
                self.problem(
                    r.action.span(),
                    format!("rule {index}: unknown action {:?}", r.action.get_ref()),
                    Some("use \"allow\", \"deny\" or \"approve\""),
                );
                Action::Deny
            });
            if r.tools.get_ref().is_empty() {
                self.problem(
                    r.tools.span(),
                    format!("rule {index}: tools is empty, so the rule can never match"),
                    Some("tools = [\"server/tool\"], globs allowed: \"*/list_*\""),
                );
            }
            let mut tools = Vec::new();
            for t in r.tools.into_inner() {
                match ToolPattern::new(t.get_ref()) {
                    Ok(p) => {
                        let sg = p.server_glob();
                        if !known.iter().any(|s| sg.matches(s)) {
                            let what = if sg.is_literal() {
                                "uses unknown server"
                            } else {
                                "has a server pattern that matches no server"
                            };
                            self.problem(
                                t.span(),
                                format!("rule {index} {what} {:?} (known: {})", sg.as_str(), known.join(", ")),
                                Some("rule patterns are \"server/tool\"; the server part must name a [[server]]"),
                            );
                        }
                        tools.push(p);
                    }
                    Err(e) => self.problem(
                        t.span(),
                        format!("rule {index}: {e}"),
                        Some("patterns are \"server/tool\" with * and ? wildcards"),
                    ),
                }
            }
            let when = match r.when {
                None => Vec::new(),
                Some(w) => self.conditions(index, w),
            };
            let mut hold = self.hold_terms(index, action, r.expiry, r.hold, r.quorum, r.approvers);
            self.escalation(
                index,
                action,
                r.escalate_after,
                r.escalate_to,
                sinks,
                &mut hold,
            );
            hold.require_signature = r.require_signature;
            let dlp = r
                .dlp
                .and_then(|d| self.dlp_action(d, &format!("rule {index}")));
            out.push(Rule {
                id: RuleRef {
                    index,
                    name: name.into(),
                },
                tools,
                when,
                action,
                reason: r.reason,
                hold,
                dlp,
            });
        }
        Policy {
            rules: out,
            default,
            version: Default::default(),
        }
    }

    fn escalation(
        &mut self,
        index: usize,
        action: Action,
        after: Option<Spanned<String>>,
        to: Vec<Spanned<String>>,
        sinks: &[&str],
        hold: &mut HoldTerms,
    ) {
        if action != Action::Approve
            && let Some(span) = after
                .as_ref()
                .map(|a| a.span())
                .or(to.first().map(|t| t.span()))
        {
            self.problem(
                span,
                format!("rule {index}: escalate_after and escalate_to only apply to action = \"approve\""),
                None,
            );
            return;
        }
        match (&after, to.is_empty()) {
            (Some(a), true) => self.problem(
                a.span(),
                format!("rule {index}: escalate_after needs escalate_to, the [[notify]] sinks to tell"),
                Some("for example escalate_to = [\"oncall-pager\"]"),
            ),
            (None, false) => self.problem(
                to[0].span(),
                format!("rule {index}: escalate_to needs escalate_after, how long a call waits before it is escalated"),
                Some("for example escalate_after = \"5m\""),
            ),
            _ => {}
        }
        for t in &to {
            if !sinks.contains(&t.get_ref().as_str()) {
                self.problem(
                    t.span(),
                    format!("rule {index}: escalate_to names {:?}, which is not a [[notify]] sink (known: {})", t.get_ref(), if sinks.is_empty() { "none".to_string() } else { sinks.join(", ") }),
                    None,
                );
            }
        }
        hold.escalate_after =
            after.map(|a| self.duration(Some(a), Duration::from_secs(300), "escalate_after"));
        hold.escalate_to = to.into_iter().map(|t| t.into_inner()).collect();
    }

    fn hold_terms(
        &mut self,
        index: usize,
        action: Action,
        expiry: Option<Spanned<String>>,
        hold: Option<Spanned<String>>,
        quorum: Option<Spanned<i64>>,
        approvers: Vec<String>,
    ) -> HoldTerms {
        if action != Action::Approve {
            let stray = [
                expiry.as_ref().map(|e| (e.span(), "expiry")),
                hold.as_ref().map(|h| (h.span(), "hold")),
                quorum.as_ref().map(|q| (q.span(), "quorum")),
            ];
            for (span, key) in stray.into_iter().flatten() {
                self.problem(
                    span,
                    format!("rule {index}: {key} only applies to action = \"approve\""),
                    Some("remove it, or make the rule hold calls for approval"),
                );
            }
        }
        let never = expiry.as_ref().is_some_and(|e| e.get_ref() == "never");
        let never_span = expiry.as_ref().map(|e| e.span());
        let expiry = if never {
            Some(tollgate_policy::NEVER)
        } else {
            expiry.map(|e| self.duration(Some(e), Duration::from_secs(600), "expiry"))
        };
        let retry = match hold {
            None => false,
            Some(h) => match h.get_ref().as_str() {
                "stream" => false,
                "retry" => true,
                other => {
                    self.problem(
                        h.span(),
                        format!("rule {index}: unknown hold mode {other:?}"),
                        Some("use \"stream\" (the request waits, the default) or \"retry\" (answer at once; the identical call runs once after approval)"),
                    );
                    false
                }
            },
        };
        let quorum = match quorum {
            None => 1,
            Some(q) => match u32::try_from(*q.get_ref()) {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.problem(
                        q.span(),
                        format!("rule {index}: quorum must be 1 or more"),
                        Some("quorum is the number of distinct approvers a call needs"),
                    );
                    1
                }
            },
        };
        if never
            && !retry
            && let Some(span) = never_span
        {
            self.warning(
                span,
                format!("rule {index}: expiry = \"never\" with hold = \"stream\": a client waiting on its stream waits until someone decides, but most clients give up within minutes"),
                Some("clients that support tasks wait without a deadline; for the others use hold = \"retry\", or a finite expiry with escalate_after"),
            );
        }
        HoldTerms {
            expiry,
            retry,
            quorum,
            approvers,
            ..HoldTerms::default()
        }
    }

    fn conditions(&mut self, index: usize, when: Spanned<toml::Value>) -> Vec<Condition> {
        let span = when.span();
        let tables: Vec<toml::Table> = match when.into_inner() {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(a) if a.iter().all(|v| v.is_table()) => a
                .into_iter()
                .filter_map(|v| {
                    if let toml::Value::Table(t) = v {
                        Some(t)
                    } else {
                        None
                    }
                })
                .collect(),
            _ => {
                self.problem(
                    span,
                    format!("rule {index}: when must be a table or an array of tables"),
                    Some("when = { arg = \"/path\", equals = \"x\" }"),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for t in tables {
            match condition(t) {
                Ok(c) => out.push(c),
                Err((msg, hint)) => {
                    self.problem(span.clone(), format!("rule {index}: {msg}"), Some(hint))
                }
            }
        }
        out
    }
}

const COND_HINT: &str = "a condition is { arg = \"/json/pointer\" | annotation = \"readOnlyHint\", and one of equals, matches, exists, gt, ge, lt, le }";

fn condition(mut t: toml::Table) -> Result<Condition, (String, &'static str)> {
    let subject = match (t.remove("arg"), t.remove("annotation")) {
        (Some(toml::Value::String(p)), None) => {
            if !p.is_empty() && !p.starts_with('/') {
                return Err((
                    format!("arg {p:?} is not a JSON pointer"),
                    "JSON pointers start with '/': \"/query\", \"/options/0/name\"",
                ));
            }
            Subject::Arg(p)
        }
        (None, Some(toml::Value::String(a))) if !a.is_empty() => Subject::Annotation(a),
        _ => {
            return Err((
                "a condition needs exactly one of arg or annotation (a string)".into(),
                COND_HINT,
            ));
        }
    };
    let mut tests = Vec::new();
    for key in ["equals", "matches", "exists", "gt", "ge", "lt", "le"] {
        if let Some(v) = t.remove(key) {
            tests.push((key, v));
        }
    }
    if let Some(k) = t.keys().next() {
        return Err((format!("unknown condition key {k:?}"), COND_HINT));
    }
    if tests.len() != 1 {
        return Err(("a condition needs exactly one test".into(), COND_HINT));
    }
    let (key, v) = tests.remove(0);
    let test = match (key, v) {
        ("equals", v) => Test::Equals(toml_to_json(v)),
        ("matches", toml::Value::String(re)) => match Regex::new(&re) {
            Ok(r) => Test::Matches(r),
            Err(e) => {
                let first = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("invalid")
                    .trim()
                    .to_string();
                return Err((
                    format!("bad regex {re:?}: {first}"),
                    "regexes use Rust regex syntax; escape backslashes in TOML strings or use '...' literal strings",
                ));
            }
        },
        ("exists", toml::Value::Boolean(b)) => Test::Exists(b),
        (op, v) if ["gt", "ge", "lt", "le"].contains(&op) => {
            let n = match v {
                toml::Value::Integer(i) => i as f64,
                toml::Value::Float(f) => f,
                _ => return Err((format!("{op} needs a number"), COND_HINT)),
            };
            let cmp = match op {
                "gt" => Cmp::Gt,
                "ge" => Cmp::Ge,
                "lt" => Cmp::Lt,
                _ => Cmp::Le,
            };
            Test::Compare(cmp, n)
        }
        (k, _) => {
            return Err((
                format!("{k} has the wrong type"),
                "matches takes a string, exists a boolean",
            ));
        }
    };
    Ok(Condition { subject, test })
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}
