//! Signing decisions with the approver's SSH key (`--sign`): the console builds the statement
//! from the calls it shows (recomputing each one's argument hash from the arguments on screen),
//! signs it through an ssh-agent or a key file, and sends it with the decision.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use tollgate_shared::CallRecord;
use tollgate_shared::console::{AllowNext, ClientMsg, RuleKind, Signature, Target};
use tollgate_shared::signing::{NAMESPACE, RuleRequest, Statement, StatementCall};
use tollgate_shared::sshsig::{PublicKey, Signer};

/// Where signatures come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignWith {
    /// The ssh-agent at `SSH_AUTH_SOCK`, with the key of this public key file (or its first
    /// ed25519 or ECDSA P-256 key).
    Agent {
        /// A `.pub` file naming the agent's key to use.
        key: Option<PathBuf>,
    },
    /// An unencrypted ed25519 private key file.
    File(PathBuf),
}

impl SignWith {
    /// `agent`, `agent:KEY.pub`, or a private key file's path.
    pub fn parse(s: &str) -> Result<SignWith> {
        Ok(match s {
            "agent" => SignWith::Agent { key: None },
            s if s.starts_with("agent:") => SignWith::Agent {
                key: Some(PathBuf::from(&s["agent:".len()..])),
            },
            "" => bail!("--sign needs agent, agent:KEY.pub or a private key file"),
            path => SignWith::File(PathBuf::from(path)),
        })
    }

    fn signer(&self) -> Result<Signer> {
        match self {
            SignWith::File(path) => Ok(Signer::from_key_file(path)?),
            SignWith::Agent { key } => {
                let socket = std::env::var_os("SSH_AUTH_SOCK").context(
                    "--sign agent: SSH_AUTH_SOCK is not set (start ssh-agent and ssh-add your key)",
                )?;
                let key = match key {
                    None => None,
                    Some(path) => {
                        let text = std::fs::read_to_string(path)
                            .with_context(|| format!("cannot read {}", path.display()))?;
                        Some(PublicKey::parse(text.trim()).with_context(|| {
                            format!("{} is not an SSH public key", path.display())
                        })?)
                    }
                };
                Ok(Signer::Agent {
                    socket: socket.into(),
                    key,
                })
            }
        }
    }
}

/// The hash the broker computes of a call's arguments (canonical JSON: keys sorted at every
/// depth, no whitespace), recomputed here from the arguments the approver sees, with the
/// broker's own function.
fn args_hash(call: &CallRecord) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(call.arguments.get())
        .with_context(|| format!("call {}: its arguments are not JSON", call.id))?;
    Ok(tollgate_policy::fingerprint::args_hash(&value))
}

/// Sign a `decide` message in place, as `me`, over the calls it decides as `pending` shows them.
pub fn sign(
    with: &SignWith,
    me: &str,
    msg: &mut ClientMsg,
    pending: &dyn Fn(&str) -> Option<std::sync::Arc<CallRecord>>,
    all: &dyn Fn() -> Vec<std::sync::Arc<CallRecord>>,
) -> Result<()> {
    let ClientMsg::Decide {
        target,
        verdict,
        reason,
        block_for_ms,
        allow_next,
        signed,
        ..
    } = msg
    else {
        return Ok(());
    };
    let calls: Vec<std::sync::Arc<CallRecord>> = match &*target {
        Target::Ids { ids } => ids
            .iter()
            .map(|id| {
                pending(id).with_context(|| {
                    format!("call {id} is not pending here, so there is nothing to sign for it")
                })
            })
            .collect::<Result<_>>()?,
        Target::Fingerprint { fingerprint } => all()
            .into_iter()
            .filter(|c| c.fingerprint.is(fingerprint) || c.shape.is(fingerprint))
            .collect(),
    };
    if calls.is_empty() {
        bail!("no pending call matches, so there is nothing to sign");
    }
    let mut named = Vec::with_capacity(calls.len());
    for c in &calls {
        let shown = args_hash(c)?;
        if c.args_hash.to_string() != shown {
            bail!(
                "call {}: the broker's argument hash {} is not that of the arguments shown ({shown}); not signing",
                c.id,
                c.args_hash
            );
        }
        named.push(StatementCall::of(c));
    }
    let temp_rule = match (block_for_ms, allow_next) {
        (Some(ms), _) => Some(RuleRequest {
            kind: RuleKind::Block,
            for_ms: *ms,
            count: None,
        }),
        (None, Some(AllowNext { count, for_ms })) => Some(RuleRequest {
            kind: RuleKind::Allow,
            for_ms: *for_ms,
            count: Some(*count),
        }),
        (None, None) => None,
    };
    let fingerprint = match &*target {
        Target::Fingerprint { fingerprint } => Some(fingerprint.as_str()),
        Target::Ids { .. } => None,
    };
    let statement = Statement::new(
        me,
        *verdict,
        reason.as_deref(),
        fingerprint,
        temp_rule,
        tollgate_shared::clock::now_ms(),
        named,
    );
    let text = statement.text();
    let signature = with.signer()?.sign(NAMESPACE, text.as_bytes())?;
    *signed = Some(Signature {
        statement: text,
        signature,
    });
    Ok(())
}

/// Sign when asked to; words for the person when signing fails.
pub fn sign_if(
    with: Option<&SignWith>,
    me: &str,
    msg: &mut ClientMsg,
    pending: &dyn Fn(&str) -> Option<std::sync::Arc<CallRecord>>,
    all: &dyn Fn() -> Vec<std::sync::Arc<CallRecord>>,
) -> Result<()> {
    match with {
        Some(w) => sign(w, me, msg, pending, all).context("cannot sign the decision"),
        None => Ok(()),
    }
}
