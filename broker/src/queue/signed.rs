//! Signed decisions: a console's SSH signature over a decision is checked against the request,
//! the approver's keys and every call as stored before anything is decided (see
//! `tollgate_shared::signing`).

use tollgate_policy::identity::Identity;
use tollgate_shared::console::{RuleKind, Signature, Target};
use tollgate_shared::signing::{FRESHNESS_MS, NAMESPACE, RuleRequest, Signed, Statement};
use tollgate_shared::sshsig::{self, PublicKey};
use tollgate_shared::{Name, Verdict};

use super::Queue;
use super::decide::{BadDecision, Follow};

/// A decision as requested, to be checked against what was signed.
struct Request<'a> {
    /// Who decides.
    pub who: &'a Identity,
    /// Which calls.
    pub target: &'a Target,
    /// Approve or reject.
    pub verdict: Verdict,
    /// The reason.
    pub reason: Option<&'a str>,
    /// The temporary rule asked for.
    pub follow: Option<Follow>,
}

/// What a checked decision decides: the calls, and the signature kept with each.
pub struct Checked {
    /// The calls decided: as asked, or for a signed decision exactly those it names.
    pub ids: Vec<Name>,
    /// The signature, when there is one.
    pub signed: Option<Signed>,
}

fn verb(v: Verdict) -> &'static str {
    match v {
        Verdict::Approve => "approve",
        Verdict::Reject => "reject",
    }
}

fn bad(why: impl Into<String>) -> BadDecision {
    BadDecision::Signature(why.into())
}

impl Queue {
    /// Check a decision's signature (or that it needs none) before anything is decided.
    #[allow(clippy::too_many_arguments)]
    pub fn check_signature(
        &self,
        who: &Identity,
        target: &Target,
        verdict: Verdict,
        reason: Option<&str>,
        follow: Option<Follow>,
        signature: Option<&Signature>,
        now_ms: u64,
    ) -> Result<Checked, BadDecision> {
        let req = &Request {
            who,
            target,
            verdict,
            reason,
            follow,
        };
        let ids = self.ids(req.target);
        let Some(signature) = signature else {
            if req.who.signing.require_signature {
                return Err(BadDecision::SignatureRequired(format!(
                    "{}'s decisions must be signed (require_signature on the identity)",
                    req.who.name
                )));
            }
            let entries = self.entries.lock();
            if let Some(e) = ids
                .iter()
                .filter_map(|id| entries.get(id))
                .find(|e| e.record.hold.as_ref().is_some_and(|h| h.require_signature))
            {
                return Err(BadDecision::SignatureRequired(format!(
                    "call {} was held by rule \"{}\", whose decisions must be signed (require_signature)",
                    e.record.id, e.record.rule.name
                )));
            }
            return Ok(Checked { ids, signed: None });
        };
        let statement = Statement::parse(&signature.statement).map_err(bad)?;
        self.matches(req, &statement, now_ms)?;
        let keys: Vec<PublicKey> = req
            .who
            .signing
            .valid_at(now_ms)
            .filter_map(|k| PublicKey::parse(&k.key).ok())
            .collect();
        if keys.is_empty() {
            return Err(bad(format!(
                "{} has no SSH key registered (tollgate-broker token key add --name {} --ssh-key-file KEY.pub)",
                req.who.name, req.who.name
            )));
        }
        let key = sshsig::verify_armored(
            &signature.signature,
            NAMESPACE,
            signature.statement.as_bytes(),
            &keys,
        )
        .map_err(|e| bad(e.to_string()))?;
        // The calls decided are the ones signed for, each as stored now.
        let signed_ids: Vec<Name> = statement
            .calls
            .iter()
            .map(|c| Name::from(c.id.as_str()))
            .collect();
        match req.target {
            Target::Ids { .. } => {
                let mut asked = ids.clone();
                asked.sort();
                asked.dedup();
                if asked != signed_ids {
                    return Err(bad(
                        "the signed statement names other calls than the decision (a signature decides only the calls it names)",
                    ));
                }
            }
            Target::Fingerprint { fingerprint } => {
                let matching: std::collections::HashSet<&Name> = ids.iter().collect();
                if let Some(stray) = signed_ids.iter().find(|id| !matching.contains(id)) {
                    return Err(bad(format!(
                        "the signed statement names call {stray}, which is not a pending call with fingerprint {fingerprint}"
                    )));
                }
            }
        }
        {
            let entries = self.entries.lock();
            for id in &signed_ids {
                if let Some(e) = entries.get(id) {
                    statement.covers(&e.record).map_err(bad)?;
                }
            }
        }
        let sha = tollgate_shared::hex(
            ring::digest::digest(&ring::digest::SHA256, signature.statement.as_bytes()).as_ref(),
        );
        Ok(Checked {
            ids: signed_ids,
            signed: Some(Signed {
                statement: Some(signature.statement.clone()),
                statement_sha256: sha,
                signature: Some(signature.signature.clone()),
                key: key.fingerprint(),
            }),
        })
    }

    /// Whether the statement says what the request asks: approver, verdict, reason, target,
    /// rule, and a time near now.
    fn matches(
        &self,
        req: &Request<'_>,
        statement: &Statement,
        now_ms: u64,
    ) -> Result<(), BadDecision> {
        if statement.approver != req.who.name {
            return Err(bad(format!(
                "the statement is signed as {:?}, but this connection is {}",
                statement.approver, req.who.name
            )));
        }
        if statement.decision != req.verdict {
            return Err(bad(format!(
                "the statement signs a decision to {}, not to {}",
                verb(statement.decision),
                verb(req.verdict)
            )));
        }
        let reason = req
            .reason
            .map(str::to_string)
            .filter(|r| !r.trim().is_empty());
        if statement.reason != reason {
            return Err(bad("the statement signs another reason"));
        }
        let fingerprint = match req.target {
            Target::Fingerprint { fingerprint } => Some(fingerprint.as_str()),
            Target::Ids { .. } => None,
        };
        if statement.fingerprint.as_deref() != fingerprint {
            return Err(bad("the statement signs another target (fingerprint)"));
        }
        let rule = req.follow.map(|f| match f {
            Follow::BlockFor(ms) => RuleRequest {
                kind: RuleKind::Block,
                for_ms: ms,
                count: None,
            },
            Follow::AllowNext(a) => RuleRequest {
                kind: RuleKind::Allow,
                for_ms: a.for_ms,
                count: Some(a.count),
            },
        });
        if statement.temp_rule != rule {
            return Err(bad("the statement signs another temporary rule"));
        }
        if statement.at_ms.abs_diff(now_ms) > FRESHNESS_MS {
            return Err(bad(format!(
                "the statement was signed at {}, more than {} min from the broker's clock (signatures are not kept to be replayed)",
                tollgate_shared::clock::rfc3339_seconds(statement.at_ms),
                FRESHNESS_MS / 60_000
            )));
        }
        Ok(())
    }
}
