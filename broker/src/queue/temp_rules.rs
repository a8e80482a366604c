//! Temporary rules installed by decisions: "reject this pattern and refuse it for 15 minutes",
//! "approve this call and the next 5 identical ones within 10 minutes".
//!
//! Block rules match a call's exact or shape fingerprint and refuse it before any other guard
//! runs. Allow rules match an exact fingerprint only, and only stand in for a person when the
//! call would otherwise be held under terms their author could satisfy alone (quorum 1, no
//! named approvers other than them, not their own call, no withheld secrets); each use
//! counts down. Rules expire, can be revoked, and are kept in `<data_dir>/temp_rules.json`
//! (replaced atomically and synced on every change), so a restart keeps them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tollgate_shared::Fingerprint;
use tollgate_shared::console::{RuleKind, TempRule};
use tollgate_shared::sync::RwLock;

/// Longest a temporary rule may last.
pub const MAX_RULE_MS: u64 = 24 * 3_600_000;
/// Most calls an allow rule may let through.
pub const MAX_ALLOW_COUNT: u32 = 1_000;

/// Why temporary rules could not be read, saved or changed.
#[derive(Debug, thiserror::Error)]
pub enum TempRuleError {
    /// The rules file is there but cannot be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The rules file does not parse.
    #[error(
        "{} is not a temporary rules file; move it away to start without temporary rules: {cause}",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        cause: serde_json::Error,
    },
    /// A change could not be saved, so it was not made.
    #[error("cannot save temporary rules to {}: {cause}", path.display())]
    Save {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// No active rule has that id.
    #[error("no active temporary rule {0:?} (it may have expired)")]
    NotFound(String),
    /// An approver revoking a rule outside their servers that someone else made.
    #[error(
        "{who} may not revoke rule {id} (made by {by} for server {server}, outside their servers)"
    )]
    OutOfScope {
        /// Who tried.
        who: String,
        /// The rule.
        id: String,
        /// Who made it.
        by: String,
        /// Its server.
        server: String,
    },
    /// Viewers do not change rules.
    #[error("{who} is a viewer; revoking rules needs the approver or admin role")]
    Viewer {
        /// Who tried.
        who: String,
    },
}

#[derive(Serialize, Deserialize, Default)]
struct File {
    rules: Vec<TempRule>,
}

/// The temporary rules.
pub struct TempRules {
    path: Option<PathBuf>,
    rules: RwLock<Vec<TempRule>>,
}

impl TempRules {
    /// Rules kept only in memory (tests, `check-disk`).
    pub fn in_memory() -> TempRules {
        TempRules {
            path: None,
            rules: RwLock::new(Vec::new()),
        }
    }

    /// Load the rules saved in `path` (none if it does not exist), dropping expired ones.
    pub fn load(path: PathBuf, now_ms: u64) -> Result<TempRules, TempRuleError> {
        let mut rules = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(f) => f.rules,
                Err(cause) => return Err(TempRuleError::Corrupt { path, cause }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(cause) => return Err(TempRuleError::Read { path, cause }),
        };
        rules.retain(|r| r.until_ms > now_ms);
        Ok(TempRules {
            path: Some(path),
            rules: RwLock::new(rules),
        })
    }

    fn save(&self, rules: &[TempRule]) -> Result<(), TempRuleError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        // Plain strings and numbers always serialise.
        let text = serde_json::to_vec_pretty(&File {
            rules: rules.to_vec(),
        })
        .unwrap_or_default();
        tollgate_shared::fs::write_atomic(path, &text).map_err(|cause| TempRuleError::Save {
            path: path.clone(),
            cause,
        })
    }

    /// Save `next` without the rules expired by `now_ms`, then make it the rules. Nothing
    /// changes when saving fails.
    fn replace(
        &self,
        rules: &mut Vec<TempRule>,
        mut next: Vec<TempRule>,
        now_ms: u64,
    ) -> Result<(), TempRuleError> {
        next.retain(|r| r.until_ms > now_ms);
        self.save(&next)?;
        *rules = next;
        Ok(())
    }

    /// Active rules, oldest first.
    pub fn list(&self, now_ms: u64) -> Vec<TempRule> {
        let rules = self.rules.read();
        rules
            .iter()
            .filter(|r| r.until_ms > now_ms)
            .cloned()
            .collect()
    }

    /// Install a rule (saved before it takes effect).
    pub fn add(&self, rule: TempRule, now_ms: u64) -> Result<(), TempRuleError> {
        let mut rules = self.rules.write();
        let mut next = rules.clone();
        next.push(rule);
        self.replace(&mut rules, next, now_ms)
    }

    /// Remove a rule; `may` says whether the caller may remove this one (or why not).
    pub fn revoke(
        &self,
        id: &str,
        now_ms: u64,
        may: impl FnOnce(&TempRule) -> Result<(), TempRuleError>,
    ) -> Result<TempRule, TempRuleError> {
        let mut rules = self.rules.write();
        let Some(pos) = rules.iter().position(|r| r.id == id && r.until_ms > now_ms) else {
            return Err(TempRuleError::NotFound(id.to_string()));
        };
        may(&rules[pos])?;
        let mut next = rules.clone();
        let gone = next.remove(pos);
        self.replace(&mut rules, next, now_ms)?;
        Ok(gone)
    }

    /// The block rule refusing a call with these fingerprints, if any (counted as a hit).
    pub fn blocking(
        &self,
        fingerprint: &Fingerprint,
        shape: &Fingerprint,
        now_ms: u64,
    ) -> Option<TempRule> {
        let blocks = |r: &TempRule| {
            r.kind == RuleKind::Block
                && r.until_ms > now_ms
                && (fingerprint.is(&r.fingerprint) || shape.is(&r.fingerprint))
        };
        // Every call looks here: take the write lock only when a rule matches.
        if !self.rules.read().iter().any(blocks) {
            return None;
        }
        let mut rules = self.rules.write();
        let rule = rules.iter_mut().find(|r| blocks(r))?;
        rule.hits += 1;
        Some(rule.clone())
    }

    /// Use one allowance of an allow rule for this exact fingerprint, if `usable` accepts its
    /// author. The count is saved before the call is let through; the rule goes when used up.
    pub fn take_allowance(
        &self,
        fingerprint: &Fingerprint,
        now_ms: u64,
        usable: impl Fn(&TempRule) -> bool,
    ) -> Option<TempRule> {
        {
            let rules = self.rules.read();
            if !rules.iter().any(|r| r.kind == RuleKind::Allow) {
                return None;
            }
        }
        let mut rules = self.rules.write();
        let pos = rules.iter().position(|r| {
            r.kind == RuleKind::Allow
                && r.until_ms > now_ms
                && fingerprint.is(&r.fingerprint)
                && r.remaining.unwrap_or(0) > 0
                && usable(r)
        })?;
        let mut next = rules.clone();
        let rule = &mut next[pos];
        rule.remaining = Some(rule.remaining.unwrap_or(1) - 1);
        rule.hits += 1;
        let used = rule.clone();
        if used.remaining == Some(0) {
            next.remove(pos);
        }
        if let Err(e) = self.replace(&mut rules, next, now_ms) {
            tracing::error!(error = %e, "cannot save an allow rule's count: the call is held instead");
            return None;
        }
        Some(used)
    }
}

/// A new rule id.
pub fn new_id() -> String {
    format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RuleKind, fingerprint: &str, until_ms: u64, remaining: Option<u32>) -> TempRule {
        TempRule {
            id: new_id(),
            kind,
            fingerprint: fingerprint.into(),
            server: "db".into(),
            tool: "query".into(),
            by: "alice".into(),
            created_ms: 0,
            until_ms,
            reason: Some("loop".into()),
            remaining,
            hits: 0,
        }
    }

    #[test]
    fn block_rules_match_either_fingerprint_until_they_expire() {
        let rules = TempRules::in_memory();
        rules
            .add(rule(RuleKind::Block, "shape1", 1_000, None), 0)
            .expect("add");
        assert!(
            rules
                .blocking(&"exact1".into(), &"shape1".into(), 10)
                .is_some()
        );
        assert!(
            rules
                .blocking(&"shape1".into(), &"other".into(), 10)
                .is_some()
        );
        assert!(
            rules
                .blocking(&"exact1".into(), &"shape2".into(), 10)
                .is_none()
        );
        assert_eq!(rules.list(10)[0].hits, 2);
        assert!(
            rules
                .blocking(&"exact1".into(), &"shape1".into(), 1_000)
                .is_none(),
            "expired"
        );
        assert!(rules.list(1_000).is_empty());
    }

    #[test]
    fn allow_rules_count_down_and_respect_their_guard() {
        let rules = TempRules::in_memory();
        rules
            .add(rule(RuleKind::Allow, "exact1", 1_000, Some(2)), 0)
            .expect("add");
        assert!(
            rules
                .take_allowance(&"exact1".into(), 1, |_| false)
                .is_none()
        );
        assert_eq!(
            rules
                .take_allowance(&"exact1".into(), 1, |_| true)
                .and_then(|r| r.remaining),
            Some(1)
        );
        assert!(
            rules
                .take_allowance(&"exact1".into(), 2, |_| true)
                .is_some()
        );
        assert!(
            rules
                .take_allowance(&"exact1".into(), 3, |_| true)
                .is_none(),
            "used up"
        );
        assert!(rules.list(3).is_empty(), "a used-up rule is gone");
    }

    #[test]
    fn rules_survive_a_reload_and_revocation_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("temp_rules.json");
        let rules = TempRules::load(path.clone(), 0).expect("load");
        let r = rule(RuleKind::Block, "f", 10_000, None);
        let id = r.id.clone();
        rules.add(r, 0).expect("add");
        rules
            .add(rule(RuleKind::Block, "old", 5, None), 0)
            .expect("add");
        let again = TempRules::load(path.clone(), 100).expect("reload");
        assert_eq!(again.list(100).len(), 1, "the expired rule is dropped");
        let refused = again.revoke(&id, 100, |_| {
            Err(TempRuleError::Viewer { who: "vic".into() })
        });
        assert!(
            matches!(refused, Err(TempRuleError::Viewer { .. })),
            "{refused:?}"
        );
        assert!(again.revoke(&id, 100, |_| Ok(())).is_ok());
        assert!(again.revoke(&id, 100, |_| Ok(())).is_err());
        assert!(
            TempRules::load(path, 100)
                .expect("reload")
                .list(100)
                .is_empty()
        );
    }
}
