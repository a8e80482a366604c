#![no_main]
//! Policy conditions, tool patterns and fingerprints on arbitrary calls: a rule built from the
//! input (a `server/tool` glob, a JSON pointer, a regex, a JSON value and a bound) is evaluated
//! against arbitrary arguments. Nothing may panic; the verdict is the rule's exactly when its
//! pattern and every condition hold; and a call's argument hash does not change when its
//! arguments are written out and read back.

use arbitrary::Arbitrary;
use serde_json::Value;
use tollgate_policy::rules::{Cmp, Condition, Subject, Test};
use tollgate_policy::{Action, CallView, HoldTerms, Policy, Rule, ToolPattern, fingerprint};
use tollgate_shared::RuleRef;

#[derive(Arbitrary, Debug)]
struct Input {
    pattern: String,
    server: String,
    tool: String,
    pointer: String,
    regex: String,
    equals: String,
    bound: f64,
    exists: bool,
    arguments: String,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let Ok(pattern) = ToolPattern::new(&input.pattern) else {
        return;
    };
    let arguments: Value = serde_json::from_str(&input.arguments)
        .unwrap_or_else(|_| Value::String(input.arguments.clone()));
    let arg = |test| Condition {
        subject: Subject::Arg(input.pointer.clone()),
        test,
    };
    let mut when = vec![
        arg(Test::Exists(input.exists)),
        arg(Test::Compare(Cmp::Ge, input.bound)),
        arg(Test::Equals(
            serde_json::from_str(&input.equals).unwrap_or(Value::String(input.equals.clone())),
        )),
    ];
    if let Ok(re) = regex::Regex::new(&input.regex) {
        when.push(arg(Test::Matches(re)));
    }
    // Each condition alone, then all together.
    for n in (0..when.len()).map(|i| i..i + 1).chain([0..when.len()]) {
        let rule = Rule {
            id: RuleRef {
                index: 1,
                name: "fuzz".into(),
            },
            tools: vec![pattern.clone()],
            when: when[n].to_vec(),
            action: Action::Deny,
            reason: None,
            hold: HoldTerms::default(),
            dlp: None,
        };
        let call = CallView {
            server: &input.server,
            tool: &input.tool,
            arguments: &arguments,
            annotations: None,
        };
        let matched = rule.matches(&call);
        let policy = Policy {
            rules: vec![rule],
            default: Action::Allow,
            version: "fuzz".into(),
        };
        let verdict = policy.evaluate(&call);
        assert_eq!(verdict.action == Action::Deny, matched);
    }
    let hash = fingerprint::args_hash(&arguments);
    let again: Value = serde_json::from_str(&arguments.to_string()).expect("reparse");
    assert_eq!(fingerprint::args_hash(&again), hash);
    let _ = fingerprint::shape_fingerprint(&input.server, &input.tool, &arguments);
});
