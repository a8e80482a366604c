//! Checking the approvers' signatures in the audit trail (`audit verify`): every signed decision
//! against the keys its approver had at that time, without trusting the broker that wrote it.
//!
//! For each entry of a decision (`approved`, `rejected`) the check finds the statement each
//! signature signs (in the entry, or, for a decision covering several calls, in the entry that
//! carries it), checks the SSH signature with the approver's keys valid at the entry's time, and
//! that the statement names this call with these arguments (hash), this verdict and this
//! approver, signed within minutes of the entry. An entry that claims an approver whose decisions
//! must be signed (`require_signature`) without a valid signature from them is a problem too:
//! that is what a forged entry written straight into the store looks like.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use tollgate_shared::audit::AuditEntry;
use tollgate_shared::signing::{FRESHNESS_MS, NAMESPACE, Signed, Signing, Statement};
use tollgate_shared::sshsig::{self, PublicKey};
use tollgate_shared::{Outcome, Verdict};

/// What the signature check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureReport {
    /// Decisions (entry and approver) with a valid signature.
    pub signed: u64,
    /// Decisions by approvers who sign but did not, where nothing required it.
    pub unsigned: u64,
    /// Entries that fail, one line each.
    pub problems: Vec<String>,
}

/// A statement seen in the trail.
struct Known {
    statement: Result<Statement, String>,
    text: String,
    signature: String,
    /// The fingerprint of the approver's key that made the signature, or why none did.
    signer: std::cell::OnceCell<Result<String, String>>,
}

/// A signature whose statement is in another entry, checked once that entry is seen.
struct Deferred {
    seq: u64,
    entry: Checked,
    signed: Signed,
}

/// What of an entry a signature must match.
#[derive(Clone)]
struct Checked {
    call_id: String,
    args_hash: String,
    outcome: Outcome,
    approvers: Vec<String>,
    at_ms: u64,
}

/// Checks the signatures of entries fed in chain order.
pub struct Signatures {
    signers: HashMap<String, Signing>,
    /// Statements seen, by SHA-256 (a bulk decision's is shared by all its entries, so it is
    /// parsed and its signature checked once).
    statements: HashMap<String, std::rc::Rc<Known>>,
    deferred: Vec<Deferred>,
    report: SignatureReport,
}

impl Signatures {
    /// A check against these identities' keys (revoked ones included, with their times).
    pub fn new(signers: HashMap<String, Signing>) -> Signatures {
        Signatures {
            signers,
            statements: HashMap::new(),
            deferred: Vec::new(),
            report: SignatureReport::default(),
        }
    }

    /// Check one entry.
    pub fn push(&mut self, e: &AuditEntry) {
        if !matches!(e.outcome, Outcome::Approved | Outcome::Rejected) {
            if !e.signatures.is_empty() {
                self.problem(e.seq, "carries signatures but is not a decision".into());
            }
            return;
        }
        let entry = Checked {
            call_id: e.call_id.clone(),
            args_hash: e.args_hash.clone(),
            outcome: e.outcome,
            approvers: e.approvers.clone(),
            at_ms: e.at_ms,
        };
        let mut valid_by = Vec::new();
        let problems_before = self.report.problems.len();
        for s in &e.signatures {
            if let (Some(text), Some(sig)) = (&s.statement, &s.signature) {
                let sha = tollgate_shared::hex(&Sha256::digest(text.as_bytes()));
                if sha != s.statement_sha256 {
                    self.problem(
                        e.seq,
                        "a signature's statement does not match its hash".into(),
                    );
                    continue;
                }
                self.statements.entry(sha).or_insert_with(|| {
                    std::rc::Rc::new(Known {
                        statement: Statement::parse(text),
                        text: text.clone(),
                        signature: sig.clone(),
                        signer: std::cell::OnceCell::new(),
                    })
                });
            }
            match self.statements.get(&s.statement_sha256).cloned() {
                Some(known) => match self.check(&entry, s, &known) {
                    Ok(by) => {
                        self.report.signed += 1;
                        valid_by.push(by);
                    }
                    Err(why) => self.problem(e.seq, why),
                },
                None => self.deferred.push(Deferred {
                    seq: e.seq,
                    entry: entry.clone(),
                    signed: s.clone(),
                }),
            }
        }
        // A signature that failed is reported once, as itself.
        let settled = self.deferred.iter().any(|d| d.seq == e.seq)
            || self.report.problems.len() > problems_before;
        for who in &e.approvers {
            if valid_by.contains(who) || settled {
                continue;
            }
            let Some(signing) = self.signers.get(who) else {
                continue;
            };
            if signing.require_signature {
                self.problem(
                    e.seq,
                    format!(
                        "call {} is {} by {who} without a valid signature, but {who}'s decisions must be signed",
                        e.call_id,
                        e.outcome.as_str()
                    ),
                );
            } else if !signing.keys.is_empty() {
                self.report.unsigned += 1;
            }
        }
    }

    /// One signature of one entry: the approver it proves, or why not.
    fn check(&self, e: &Checked, s: &Signed, known: &Known) -> Result<String, String> {
        let statement = known.statement.as_ref().map_err(Clone::clone)?;
        let who = &statement.approver;
        if !e.approvers.contains(who) {
            return Err(format!(
                "call {}: a signature by {who}, who is not among its approvers ({})",
                e.call_id,
                e.approvers.join(", ")
            ));
        }
        let want = match e.outcome {
            Outcome::Approved => Verdict::Approve,
            _ => Verdict::Reject,
        };
        if statement.decision != want {
            return Err(format!(
                "call {} is {}, but {who} signed the other verdict",
                e.call_id,
                e.outcome.as_str()
            ));
        }
        let Some(call) = statement
            .calls
            .binary_search_by(|c| c.id.as_str().cmp(&e.call_id))
            .ok()
            .map(|i| &statement.calls[i])
        else {
            return Err(format!(
                "call {}: {who}'s signed statement does not name this call",
                e.call_id
            ));
        };
        if call.args_hash != e.args_hash {
            return Err(format!(
                "call {}: {who} signed arguments with hash {}, the entry has {}",
                e.call_id, call.args_hash, e.args_hash
            ));
        }
        if statement.at_ms.abs_diff(e.at_ms) > FRESHNESS_MS {
            return Err(format!(
                "call {}: {who} signed at {}, but the decision is dated {}",
                e.call_id,
                tollgate_shared::clock::rfc3339_seconds(statement.at_ms),
                tollgate_shared::clock::rfc3339_seconds(e.at_ms)
            ));
        }
        // Which of the approver's keys (at any time) made the signature: checked once per
        // statement; whether that key was theirs at this entry's time, per entry.
        let signing = self.signers.get(who);
        let signer = known.signer.get_or_init(|| {
            let keys: Vec<PublicKey> = signing
                .into_iter()
                .flat_map(|s| &s.keys)
                .filter_map(|k| PublicKey::parse(&k.key).ok())
                .collect();
            sshsig::verify_armored(&known.signature, NAMESPACE, known.text.as_bytes(), &keys)
                .map(PublicKey::fingerprint)
                .map_err(|why| why.to_string())
        });
        let fp = signer
            .as_ref()
            .map_err(|why| format!("call {}: {who}'s signature: {why}", e.call_id))?;
        if !signing
            .into_iter()
            .flat_map(|s| s.valid_at(e.at_ms))
            .any(|k| k.fingerprint == *fp)
        {
            return Err(format!(
                "call {}: {who}'s signature: the signing key {fp} was not {who}'s at {} (revoked, or not yet added)",
                e.call_id,
                tollgate_shared::clock::rfc3339_seconds(e.at_ms)
            ));
        }
        if *fp != s.key {
            return Err(format!(
                "call {}: the entry names key {}, the signature was made by {fp}",
                e.call_id, s.key
            ));
        }
        Ok(who.clone())
    }

    fn problem(&mut self, seq: u64, why: String) {
        self.report.problems.push(format!("entry {seq}: {why}"));
    }

    /// The chain ended: check the signatures whose statements came later, and report.
    pub fn finish(mut self) -> SignatureReport {
        for d in std::mem::take(&mut self.deferred) {
            match self.statements.get(&d.signed.statement_sha256).cloned() {
                Some(known) => match self.check(&d.entry, &d.signed, &known) {
                    Ok(_) => self.report.signed += 1,
                    Err(why) => self.problem(d.seq, why),
                },
                None => self.problem(
                    d.seq,
                    format!(
                        "call {}: its signature's statement is in no entry of the trail",
                        d.entry.call_id
                    ),
                ),
            }
        }
        self.report.problems.sort();
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair as _;
    use tollgate_shared::signing::{Signed, SigningKey, StatementCall};
    use tollgate_shared::sshsig::Signer;
    use tollgate_shared::{CallRecord, Decision};

    use crate::chain::audit_entry;

    fn signer() -> (Signer, SigningKey) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse");
        let mut blob = vec![0, 0, 0, 11];
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&[0, 0, 0, 32]);
        blob.extend_from_slice(pair.public_key().as_ref());
        let line = format!(
            "{} alice@laptop",
            PublicKey::from_blob(&blob).expect("key").to_openssh()
        );
        let public = PublicKey::parse(&line).expect("key");
        let key = SigningKey {
            key: line,
            fingerprint: public.fingerprint(),
            added_ms: 0,
            revoked_ms: Some(50_000_000),
        };
        (
            Signer::File {
                pair: Box::new(pair),
                public,
            },
            key,
        )
    }

    fn call(id: &str, args_hash: &str) -> CallRecord {
        let mut r = crate::testing::record(1, Outcome::Pending);
        r.id = id.into();
        r.args_hash = args_hash.into();
        r.outcome = Outcome::Approved;
        r
    }

    /// `record` approved by alice at `at_ms`, signed by `signer` over the calls `covered`.
    fn signed(
        signer: &Signer,
        fp: &str,
        mut record: CallRecord,
        covered: &[&CallRecord],
        at_ms: u64,
    ) -> CallRecord {
        let statement = Statement::new(
            "alice",
            Verdict::Approve,
            None,
            None,
            None,
            at_ms,
            covered.iter().map(|c| StatementCall::of(c)),
        );
        let text = statement.text();
        let signature = signer.sign(NAMESPACE, text.as_bytes()).expect("sign");
        record.decisions.push(Decision {
            by: "alice".into(),
            verdict: Verdict::Approve,
            reason: None,
            at_ms,
            signed: Some(Signed {
                statement_sha256: tollgate_shared::hex(&Sha256::digest(text.as_bytes())),
                statement: Some(text),
                signature: Some(signature),
                key: fp.to_string(),
            }),
        });
        record
    }

    #[test]
    fn forged_copied_tampered_and_late_signatures_are_reported_and_good_ones_verify() {
        let (signer, key) = signer();
        let fp = key.fingerprint.clone();
        let signers = HashMap::from([(
            "alice".to_string(),
            Signing {
                keys: vec![key],
                require_signature: true,
            },
        )]);
        let mut check = Signatures::new(signers);
        let mut seq = 0;
        let mut push = |check: &mut Signatures, record: &CallRecord, at_ms: u64| {
            seq += 1;
            let mut e = audit_entry(record, at_ms);
            e.seq = seq;
            check.push(&e);
            e
        };
        // Genuine: alice signed call c1 as it is.
        let c1 = call("c1", "h1");
        push(
            &mut check,
            &signed(&signer, &fp, c1.clone(), &[&c1], 1_000),
            1_000,
        );
        // Forged: "approved by alice" written straight into the store, no signature.
        let mut forged = call("c2", "h2");
        forged.decisions.push(Decision {
            by: "alice".into(),
            verdict: Verdict::Approve,
            reason: None,
            at_ms: 2_000,
            signed: None,
        });
        push(&mut check, &forged, 2_000);
        // Copied: c1's signature attached to call c3.
        let c3 = call("c3", "h3");
        push(&mut check, &signed(&signer, &fp, c3, &[&c1], 3_000), 3_000);
        // Tampered: the entry's arguments are not the ones signed.
        let c4 = call("c4", "h4");
        let mut e = push(
            &mut check,
            &signed(&signer, &fp, c4.clone(), &[&c4], 4_000),
            4_000,
        );
        e.args_hash = "other".into();
        e.seq = 99;
        check.push(&e);
        // Late: signed after the key was revoked (50 000 s).
        let c5 = call("c5", "h5");
        push(
            &mut check,
            &signed(&signer, &fp, c5.clone(), &[&c5], 60_000_000),
            60_000_000,
        );
        let report = check.finish();
        assert_eq!(report.signed, 2, "{report:?}");
        let problems = report.problems.join("\n");
        assert_eq!(report.problems.len(), 4, "{problems}");
        assert!(
            problems.contains("entry 2: call c2 is approved by alice without a valid signature"),
            "{problems}"
        );
        assert!(
            problems.contains("entry 3: call c3: alice's signed statement does not name this call"),
            "{problems}"
        );
        assert!(
            problems.contains(
                "entry 99: call c4: alice signed arguments with hash h4, the entry has other"
            ),
            "{problems}"
        );
        assert!(
            problems.contains("entry 5: call c5: alice's signature: the signing key"),
            "{problems}"
        );
    }
}
