//! The policy's rules: which `tools/call` runs, which is refused, which waits for a person.
//!
//! A policy is an ordered list of rules and a default action. The first rule whose tool patterns
//! and conditions all hold decides; when none does, the default decides. Evaluation is a pure
//! function of the policy and a [`CallView`], so it is tested without sockets or processes.
//!
//! Conditions look at the call's arguments by JSON pointer (`/query`, `/options/force`) or at the
//! tool's annotations as the upstream advertised them in `tools/list` (`readOnlyHint`,
//! `destructiveHint`, ...). An argument or annotation that is absent makes every test on it fail
//! except `exists = false`, so a rule never matches on data it could not see.

use regex::Regex;
use serde_json::Value;
use tollgate_shared::RuleRef;

use crate::glob::ToolPattern;
use crate::guards::DlpAction;

/// What to do with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward it upstream now.
    Allow,
    /// Refuse it now with a tool error naming the rule.
    Deny,
    /// Hold it for a human decision.
    Approve,
}

impl Action {
    /// Parse the config spelling.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            "approve" => Some(Action::Approve),
            _ => None,
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Approve => "approve",
        }
    }
}

/// A numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

/// One test on a value found in the call.
#[derive(Debug, Clone)]
pub enum Test {
    /// JSON equality; numbers compare by value (`1` equals `1.0`).
    Equals(Value),
    /// The value, a string (or the JSON text of a number or boolean), matches the regex.
    Matches(Regex),
    /// The value is present (`true`) or absent (`false`).
    Exists(bool),
    /// The value is a number and compares as stated with the bound.
    Compare(Cmp, f64),
}

/// Where a condition looks.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A JSON pointer into the call's `arguments`.
    Arg(String),
    /// A key of the tool's `annotations` object from `tools/list`.
    Annotation(String),
}

/// One condition of a rule: a subject and a test on it.
#[derive(Debug, Clone)]
pub struct Condition {
    /// What the condition looks at.
    pub subject: Subject,
    /// What must hold of it.
    pub test: Test,
}

/// One `[[rule]]`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Which rule this is, for messages and the audit trail.
    pub id: RuleRef,
    /// The rule applies to calls matching any of these patterns.
    pub tools: Vec<ToolPattern>,
    /// And only when all of these hold.
    pub when: Vec<Condition>,
    /// What happens then.
    pub action: Action,
    /// Text shown to the client (and the model) when the rule refuses a call.
    pub reason: Option<String>,
    /// For `approve`: how the call waits and who decides.
    pub hold: HoldTerms,
    /// What happens when the DLP guard finds secrets in a call this rule matches (overrides
    /// `[dlp] action`).
    pub dlp: Option<DlpAction>,
}

/// `expiry = "never"`: the call waits until someone decides it.
pub const NEVER: std::time::Duration = std::time::Duration::MAX;

/// How a call held by a rule waits, and who may decide it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldTerms {
    /// Expiry; `None` means the broker's `default_expiry`, [`NEVER`] that the call waits until
    /// someone decides.
    pub expiry: Option<std::time::Duration>,
    /// After how long undecided the call is escalated (`escalate_after`).
    pub escalate_after: Option<std::time::Duration>,
    /// The notification sinks told of an escalation (`escalate_to`).
    pub escalate_to: Vec<String>,
    /// `hold = "retry"`: answer at once, let the identical call through once after approval.
    pub retry: bool,
    /// Distinct approvals needed (at least 1).
    pub quorum: u32,
    /// Who may decide: identity names or `role:<role>`; empty means any approver in scope.
    pub approvers: Vec<String>,
    /// Decisions on the calls it holds must be signed with the approver's SSH key.
    pub require_signature: bool,
}

/// An ordered rule list with a default action.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Rules in config order; the first match wins.
    pub rules: Vec<Rule>,
    /// What happens when no rule matches.
    pub default: Action,
    /// Short hash of the config text the rules came from, recorded with every call.
    pub version: tollgate_shared::Name,
}

/// The parts of a call that policy may look at.
#[derive(Debug, Clone, Copy)]
pub struct CallView<'a> {
    /// Configured upstream server name.
    pub server: &'a str,
    /// Tool name from the request.
    pub tool: &'a str,
    /// The call's `arguments` (an empty object when the client sent none).
    pub arguments: &'a Value,
    /// The tool's `annotations` as last seen in `tools/list`, if ever seen.
    pub annotations: Option<&'a Value>,
}

/// The policy's answer for one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// What to do.
    pub action: Action,
    /// Which rule decided (index 0 and name `default` for the default).
    pub rule: RuleRef,
    /// The rule's reason text, if it has one.
    pub reason: Option<String>,
    /// How a held call waits (meaningful for `approve`).
    pub hold: HoldTerms,
    /// The rule's DLP action, if it sets one.
    pub dlp: Option<DlpAction>,
}

impl Verdict {
    /// A guard wants a person to see this call: an allowed call is held instead (quorum 1, any
    /// approver in scope). Returns whether the verdict changed.
    pub fn hold_for_a_person(&mut self) -> bool {
        if self.action != Action::Allow {
            return false;
        }
        self.action = Action::Approve;
        self.hold = HoldTerms {
            quorum: 1,
            ..Default::default()
        };
        true
    }
}

impl Policy {
    /// Decide one call: the first rule that matches, else the default.
    pub fn evaluate(&self, call: &CallView<'_>) -> Verdict {
        for rule in &self.rules {
            if rule.matches(call) {
                return Verdict {
                    action: rule.action,
                    rule: rule.id.clone(),
                    reason: rule.reason.clone(),
                    hold: rule.hold.clone(),
                    dlp: rule.dlp,
                };
            }
        }
        Verdict {
            action: self.default,
            rule: RuleRef {
                index: 0,
                name: "default".into(),
            },
            reason: None,
            hold: HoldTerms {
                quorum: 1,
                ..HoldTerms::default()
            },
            dlp: None,
        }
    }
}

impl Rule {
    /// Does this rule apply to the call?
    pub fn matches(&self, call: &CallView<'_>) -> bool {
        self.tools.iter().any(|p| p.matches(call.server, call.tool))
            && self.when.iter().all(|c| c.holds(call))
    }
}

impl Condition {
    /// Does the condition hold for the call?
    pub fn holds(&self, call: &CallView<'_>) -> bool {
        let value = match &self.subject {
            Subject::Arg(pointer) => call.arguments.pointer(pointer),
            Subject::Annotation(key) => call.annotations.and_then(|a| a.get(key)),
        };
        self.test.holds(value)
    }
}

impl Test {
    /// Apply the test to a value that may be absent.
    pub fn holds(&self, value: Option<&Value>) -> bool {
        match (self, value) {
            (Test::Exists(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Test::Equals(want), Some(v)) => json_equal(want, v),
            (Test::Matches(re), Some(v)) => match v {
                Value::String(s) => re.is_match(s),
                Value::Number(_) | Value::Bool(_) => re.is_match(&v.to_string()),
                _ => false,
            },
            (Test::Compare(op, bound), Some(v)) => match v.as_f64() {
                Some(x) => match op {
                    Cmp::Gt => x > *bound,
                    Cmp::Ge => x >= *bound,
                    Cmp::Lt => x < *bound,
                    Cmp::Le => x <= *bound,
                },
                None => false,
            },
        }
    }
}

/// JSON equality where numbers compare by value, recursively.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(index: usize, tools: &[&str], when: Vec<Condition>, action: Action) -> Rule {
        Rule {
            hold: HoldTerms::default(),
            dlp: None,
            id: RuleRef {
                index,
                name: format!("rule {index}").into(),
            },
            tools: tools
                .iter()
                .map(|t| ToolPattern::new(t).expect("pattern"))
                .collect(),
            when,
            action,
            reason: None,
        }
    }

    fn arg(pointer: &str, test: Test) -> Condition {
        Condition {
            subject: Subject::Arg(pointer.into()),
            test,
        }
    }

    fn view<'a>(tool: &'a str, args: &'a Value, ann: Option<&'a Value>) -> CallView<'a> {
        CallView {
            server: "db",
            tool,
            arguments: args,
            annotations: ann,
        }
    }

    #[test]
    fn first_matching_rule_wins_and_default_applies_otherwise() {
        let policy = Policy {
            rules: vec![
                rule(1, &["db/read_*"], vec![], Action::Allow),
                rule(2, &["db/*"], vec![], Action::Deny),
                rule(3, &["db/read_x"], vec![], Action::Approve),
            ],
            default: Action::Approve,
            version: Default::default(),
        };
        let args = json!({});
        let v = policy.evaluate(&view("read_x", &args, None));
        assert_eq!((v.action, v.rule.index), (Action::Allow, 1));
        let v = policy.evaluate(&view("drop", &args, None));
        assert_eq!((v.action, v.rule.index), (Action::Deny, 2));
        let other = CallView {
            server: "fs",
            tool: "x",
            arguments: &args,
            annotations: None,
        };
        let v = policy.evaluate(&other);
        assert_eq!(
            (v.action, v.rule.index, &*v.rule.name),
            (Action::Approve, 0, "default")
        );
    }

    #[test]
    fn regex_condition_on_nested_argument() {
        let re = Regex::new("(?i)^\\s*(drop|delete)").expect("regex");
        let policy = Policy {
            rules: vec![rule(
                1,
                &["db/sql"],
                vec![arg("/q/text", Test::Matches(re))],
                Action::Deny,
            )],
            default: Action::Allow,
            version: Default::default(),
        };
        let bad = json!({"q": {"text": "  DROP TABLE x"}});
        let ok = json!({"q": {"text": "select 1"}});
        let missing = json!({"q": {}});
        assert_eq!(
            policy.evaluate(&view("sql", &bad, None)).action,
            Action::Deny
        );
        assert_eq!(
            policy.evaluate(&view("sql", &ok, None)).action,
            Action::Allow
        );
        assert_eq!(
            policy.evaluate(&view("sql", &missing, None)).action,
            Action::Allow
        );
    }

    #[test]
    fn numeric_comparisons_and_equality() {
        let args = json!({"n": 5, "f": 2.0, "s": "5", "flag": true});
        assert!(Test::Compare(Cmp::Gt, 4.0).holds(args.pointer("/n")));
        assert!(!Test::Compare(Cmp::Gt, 5.0).holds(args.pointer("/n")));
        assert!(Test::Compare(Cmp::Ge, 5.0).holds(args.pointer("/n")));
        assert!(Test::Compare(Cmp::Lt, 6.0).holds(args.pointer("/n")));
        assert!(Test::Compare(Cmp::Le, 5.0).holds(args.pointer("/n")));
        assert!(
            !Test::Compare(Cmp::Lt, 9.0).holds(args.pointer("/s")),
            "strings are not numbers"
        );
        assert!(
            Test::Equals(json!(2)).holds(args.pointer("/f")),
            "2 equals 2.0"
        );
        assert!(!Test::Equals(json!(5)).holds(args.pointer("/s")));
        assert!(Test::Equals(json!(true)).holds(args.pointer("/flag")));
        assert!(Test::Exists(true).holds(args.pointer("/n")));
        assert!(Test::Exists(false).holds(args.pointer("/nope")));
        assert!(!Test::Equals(json!(null)).holds(args.pointer("/nope")));
    }

    #[test]
    fn annotation_conditions_fail_closed_when_unknown() {
        let policy = Policy {
            rules: vec![rule(
                1,
                &["*"],
                vec![Condition {
                    subject: Subject::Annotation("readOnlyHint".into()),
                    test: Test::Equals(json!(true)),
                }],
                Action::Allow,
            )],
            default: Action::Approve,
            version: Default::default(),
        };
        let args = json!({});
        let ro = json!({"readOnlyHint": true});
        let rw = json!({"readOnlyHint": false});
        assert_eq!(
            policy.evaluate(&view("t", &args, Some(&ro))).action,
            Action::Allow
        );
        assert_eq!(
            policy.evaluate(&view("t", &args, Some(&rw))).action,
            Action::Approve
        );
        assert_eq!(
            policy.evaluate(&view("t", &args, None)).action,
            Action::Approve
        );
    }

    #[test]
    fn all_conditions_must_hold() {
        let policy = Policy {
            rules: vec![rule(
                1,
                &["*"],
                vec![
                    arg("/a", Test::Exists(true)),
                    arg("/b", Test::Equals(json!("x"))),
                ],
                Action::Deny,
            )],
            default: Action::Allow,
            version: Default::default(),
        };
        let both = json!({"a": 1, "b": "x"});
        let one = json!({"a": 1, "b": "y"});
        assert_eq!(
            policy.evaluate(&view("t", &both, None)).action,
            Action::Deny
        );
        assert_eq!(
            policy.evaluate(&view("t", &one, None)).action,
            Action::Allow
        );
    }
}
