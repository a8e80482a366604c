//! The audit chain: every entry carries the hash of the one before it, so an edited, removed or
//! reordered entry shows.

use sha2::{Digest, Sha256};
use tollgate_shared::audit::AuditEntry;
use tollgate_shared::{CallRecord, Outcome, Verdict};

use std::collections::HashMap;

use tollgate_shared::signing::Signing;

use crate::signatures::{SignatureReport, Signatures};
use crate::{Engine, StoreError};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the audit chain looks like when verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub entries: u64,
    /// Hash of the last entry.
    pub head: String,
    /// The approvers' signatures, when they were checked.
    pub signatures: Option<SignatureReport>,
}

/// Why a chain does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A sequence number is missing or out of place.
    #[error(
        "audit chain broken: entry {seq} follows entry {after}: an entry was removed or reordered"
    )]
    Gap {
        /// The entry found.
        seq: u64,
        /// The entry before it.
        after: u64,
    },
    /// An entry's `prev_hash` is not the hash of the entry before it.
    #[error(
        "audit chain broken: entry {seq} does not chain to the entry before it: an entry was removed, reordered or edited"
    )]
    Unchained {
        /// The entry.
        seq: u64,
    },
    /// An entry's content does not match its hash.
    #[error(
        "audit chain broken: entry {seq} (call {call}) was edited after it was written: its hash does not match its content"
    )]
    Edited {
        /// The entry.
        seq: u64,
        /// Its call id.
        call: String,
    },
    /// The anchored entry is there with another hash.
    #[error("audit chain broken: entry {seq} no longer has the anchored hash")]
    AnchorChanged {
        /// The anchored entry.
        seq: u64,
    },
    /// The anchored entry is gone: the chain was cut.
    #[error(
        "audit chain broken: the anchored entry {seq} is gone; the chain ends at entry {end}: entries were removed from the end"
    )]
    AnchorGone {
        /// The anchored entry.
        seq: u64,
        /// The last entry left.
        end: u64,
    },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The hash of an entry: SHA-256 over the previous hash, a newline and the entry's JSON with
/// `hash` empty.
pub fn chain_hash(entry: &AuditEntry) -> String {
    // The writer hashes entries before their hash is set; only a verifier reading stored
    // entries needs a copy with it blanked.
    let json = if entry.hash.is_empty() {
        serde_json::to_vec(entry)
    } else {
        let mut e = entry.clone();
        e.hash = String::new();
        serde_json::to_vec(&e)
    }
    .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(entry.prev_hash.as_bytes());
    h.update(b"\n");
    h.update(&json);
    tollgate_shared::hex(&h.finalize())
}

/// Check the whole chain: sequence without gaps, each `prev_hash` the hash before it, each
/// `hash` recomputed. The error names the first entry that fails and why.
///
/// A chain cut short at its end is still a valid chain; to catch that, pass an `anchor` (a
/// sequence number and hash printed by an earlier verify, kept somewhere else) and the chain
/// must still contain that entry with that hash.
pub fn verify(
    backend: &dyn Engine,
    anchor: Option<(u64, &str)>,
    signers: Option<HashMap<String, Signing>>,
) -> Result<Verified, ChainError> {
    let mut verifier = Verifier::new(anchor).with_signers(signers);
    let mut problem = None;
    backend.audit_scan(&mut |e| match verifier.push(e) {
        Ok(()) => true,
        Err(broken) => {
            problem = Some(broken);
            false
        }
    })?;
    if let Some(broken) = problem {
        return Err(broken);
    }
    verifier.finish()
}

/// Checks a chain fed to it entry by entry, in chain order, from the first (what [`verify`]
/// does over an engine; a store that reads its entries asynchronously feeds one itself).
pub struct Verifier {
    expected_seq: u64,
    prev: String,
    anchor: Option<(u64, String)>,
    /// The anchored entry's hash, once seen.
    anchored: Option<String>,
    signatures: Option<Signatures>,
}

impl Verifier {
    /// A verifier of a chain that must contain `anchor` (sequence number and hash), if given.
    pub fn new(anchor: Option<(u64, &str)>) -> Verifier {
        Verifier {
            expected_seq: 1,
            prev: GENESIS.to_string(),
            anchor: anchor.map(|(seq, hash)| (seq, hash.to_string())),
            anchored: None,
            signatures: None,
        }
    }

    /// Also check the approvers' signatures against these identities' keys, when given.
    pub fn with_signers(mut self, signers: Option<HashMap<String, Signing>>) -> Verifier {
        self.signatures = signers.map(Signatures::new);
        self
    }

    /// Check the next entry.
    pub fn push(&mut self, e: AuditEntry) -> Result<(), ChainError> {
        if e.seq != self.expected_seq {
            return Err(ChainError::Gap {
                seq: e.seq,
                after: self.expected_seq - 1,
            });
        }
        if e.prev_hash != self.prev {
            return Err(ChainError::Unchained { seq: e.seq });
        }
        if chain_hash(&e) != e.hash {
            return Err(ChainError::Edited {
                seq: e.seq,
                call: e.call_id,
            });
        }
        if self.anchor.as_ref().is_some_and(|(seq, _)| *seq == e.seq) {
            self.anchored = Some(e.hash.clone());
        }
        if let Some(s) = &mut self.signatures {
            s.push(&e);
        }
        self.prev = e.hash;
        self.expected_seq += 1;
        Ok(())
    }

    /// The chain ended: check the anchor was in it, unchanged.
    pub fn finish(self) -> Result<Verified, ChainError> {
        if let Some((seq, hash)) = &self.anchor {
            match &self.anchored {
                Some(h) if h == hash => {}
                Some(_) => return Err(ChainError::AnchorChanged { seq: *seq }),
                None => {
                    return Err(ChainError::AnchorGone {
                        seq: *seq,
                        end: self.expected_seq - 1,
                    });
                }
            }
        }
        Ok(Verified {
            entries: self.expected_seq - 1,
            head: self.prev,
            signatures: self.signatures.map(Signatures::finish),
        })
    }
}

/// Build the audit entry for a record's current outcome (hashes filled in by the writer).
pub fn audit_entry(record: &CallRecord, at_ms: u64) -> AuditEntry {
    // Allowed and blocked calls carry a decision when a temporary rule someone installed
    // answered them.
    let deciding = match record.outcome {
        Outcome::Approved | Outcome::Allowed => Some(Verdict::Approve),
        Outcome::Rejected | Outcome::Blocked => Some(Verdict::Reject),
        _ => None,
    };
    let deciders = || {
        record
            .decisions
            .iter()
            .filter(move |d| Some(d.verdict) == deciding)
    };
    let approvers = deciders().map(|d| d.by.clone()).collect();
    let signatures = deciders().filter_map(|d| d.signed.clone()).collect();
    AuditEntry {
        seq: 0,
        at_ms,
        call_id: record.id.to_string(),
        outcome: record.outcome,
        client: record.client.to_string(),
        server: record.server.to_string(),
        tool: record.tool.to_string(),
        request_id: record.request_id.clone(),
        rule: record.rule.clone(),
        reason: record.reason.clone(),
        args_hash: record.args_hash.to_string(),
        approvers,
        error: record.error.clone(),
        signatures,
        prev_hash: String::new(),
        hash: String::new(),
    }
}
