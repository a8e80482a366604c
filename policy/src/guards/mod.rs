//! Guards: automated checks that run before policy, so people only judge intent.
//!
//! [`limits`] refuses calls over a rate limit at once (audited `rate_limited`, with when to
//! retry); [`budget`] caps pending calls, approvals and daily cost per client.
//! [`loops`] counts calls per shape fingerprint and flags (or holds, or refuses) runaway loops.
//! [`dlp`] finds secrets in arguments. What happens to a call with findings is decided by the
//! matching rule's `dlp` key, else `[dlp] action`: refuse it, hold it for a person (who sees the
//! findings masked), or forward it with the secrets replaced. Whatever the action, the stored
//! record, the audit trail and the console only ever see redacted arguments.

pub mod budget;
pub mod dlp;
pub mod limits;
pub mod loops;

/// What to do with a call whose arguments hold secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlpAction {
    /// Refuse it, naming the findings (masked).
    Deny,
    /// Hold it for a person, who sees the findings masked.
    Approve,
    /// Forward it with the secrets replaced by `[REDACTED:<detector>]`.
    Redact,
}

impl DlpAction {
    /// Parse the config spelling.
    pub fn parse(s: &str) -> Option<DlpAction> {
        match s {
            "deny" => Some(DlpAction::Deny),
            "approve" => Some(DlpAction::Approve),
            "redact" => Some(DlpAction::Redact),
            _ => None,
        }
    }
}

/// The DLP guard as configured: detectors and the default action.
pub struct Dlp {
    /// The detectors.
    pub scanner: dlp::Scanner,
    /// What happens unless the matching rule says otherwise.
    pub action: DlpAction,
}

/// Keeps one call's secrets out of the texts the broker stores or shows about it (an
/// upstream's error that echoes the arguments, say): replaces the secrets DLP found in the call
/// (known only in memory, while the call lasts), then whatever the detectors find.
#[derive(Clone)]
pub struct Scrub {
    dlp: std::sync::Arc<Dlp>,
    known: std::sync::Arc<[String]>,
}

impl Scrub {
    /// A scrub with the DLP guard's detectors and the secrets found in the call, if any.
    pub fn new(dlp: std::sync::Arc<Dlp>, mut known: Vec<String>) -> Scrub {
        known.retain(|k| !k.is_empty());
        // Longest first, so a secret containing another is replaced whole.
        known.sort_by_key(|k| std::cmp::Reverse(k.len()));
        known.dedup();
        Scrub {
            dlp,
            known: known.into(),
        }
    }

    /// `text` without the call's secrets.
    pub fn text(&self, text: String) -> String {
        let mut out = text;
        for k in self.known.iter() {
            if out.contains(k.as_str()) {
                out = out.replace(k.as_str(), "[REDACTED]");
            }
        }
        let mut v = serde_json::Value::String(out);
        self.dlp.scanner.redact(&mut v);
        match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }
    }
}

/// `[dlp]` as written: secret scanning of arguments.
#[derive(Debug, Clone)]
pub struct DlpSettings {
    /// Scan at all (default true).
    pub enabled: bool,
    /// Default action on findings.
    pub action: DlpAction,
    /// The high-entropy detector, `None` when turned off.
    pub entropy: Option<dlp::Entropy>,
    /// Custom detectors: name and regex.
    pub detectors: Vec<(String, regex::Regex)>,
}

impl DlpSettings {
    /// The guard these settings describe (`None` when scanning is off), its detectors compiled.
    pub fn guard(&self) -> Option<Dlp> {
        self.enabled.then(|| Dlp {
            scanner: dlp::Scanner::new(self.entropy, &self.detectors),
            action: self.action,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_scrub_keeps_the_calls_secrets_and_any_detected_one_out_of_a_text() {
        let dlp = std::sync::Arc::new(Dlp {
            scanner: dlp::Scanner::new(Some(dlp::Entropy::default()), &[]),
            action: DlpAction::Approve,
        });
        let mut args = json!({"db": {"password": "hunter2"}, "note": "key AKIAIOSFODNN7EXAMPLE"});
        let mut known = Vec::new();
        assert_eq!(dlp.scanner.redact_keeping(&mut args, &mut known), 2);
        assert_eq!(known, ["hunter2", "AKIAIOSFODNN7EXAMPLE"]);
        let scrub = Scrub::new(dlp.clone(), known);
        let echoed = r#"Input validation error: {"password":"hunter2","note":"key AKIAIOSFODNN7EXAMPLE"} also ghp_aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"#;
        let clean = scrub.text(echoed.into());
        assert!(!clean.contains("hunter2"), "{clean}");
        assert!(!clean.contains("AKIAIOSFODNN7EXAMPLE"), "{clean}");
        assert!(
            !clean.contains("ghp_aB3d"),
            "a secret the call did not carry: {clean}"
        );
        assert!(clean.starts_with("Input validation error: "), "{clean}");
    }
}
