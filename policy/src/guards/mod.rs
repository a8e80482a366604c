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
