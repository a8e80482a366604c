//! DLP over one call before anything about it is kept: its arguments, and its request's
//! `_meta` and id, are scanned for secrets; the copies the store keeps (and consoles see) are
//! redacted; the arguments are fingerprinted; and the secrets found are remembered, in memory
//! only, in the call's [`Scrub`], which keeps them out of texts recorded later (an upstream's
//! error that echoes the arguments). Large arguments are scanned on the blocking pool.

use std::sync::Arc;

use serde_json::{Value, json};
use tollgate_policy::fingerprint;
use tollgate_policy::guards::dlp::{MAX_FINDINGS, TooManySecrets};
use tollgate_policy::guards::{Dlp, Scrub};
use tollgate_shared::{Finding, Name};

/// Arguments at least this large are scanned, redacted and hashed on the blocking pool rather
/// than on an async worker, so a few megabytes of arguments cannot stall the consoles, health
/// checks and other calls sharing the workers.
pub(super) const OFFLOAD_BYTES: usize = 64 << 10;

/// Whether the strings and keys of `v` add up to at least `limit` bytes (stops counting there).
pub(super) fn at_least(v: &Value, limit: usize) -> bool {
    fn count(v: &Value, left: &mut usize) -> bool {
        let take = |left: &mut usize, n: usize| {
            *left = left.saturating_sub(n.max(1));
            *left == 0
        };
        match v {
            Value::String(s) => take(left, s.len()),
            Value::Array(items) => items.iter().any(|i| take(left, 1) || count(i, left)),
            Value::Object(map) => map
                .iter()
                .any(|(k, i)| take(left, k.len()) || count(i, left)),
            _ => take(left, 8),
        }
    }
    let mut left = limit;
    count(v, &mut left)
}

/// One call as the store, the audit trail and consoles may see it.
pub(super) struct Prepared {
    /// The arguments with any secret found replaced.
    pub stored: Value,
    /// Every secret found, masked: in the arguments (JSON pointers), in `_meta`
    /// (`params._meta/...`) and in the id (`id`).
    pub findings: Vec<Finding>,
    /// `Some` when secrets were found: `Err` when more than a call may carry.
    pub secrets: Option<Result<(), TooManySecrets>>,
    /// The request's `_meta` as kept (redacted when it held secrets).
    pub meta: Option<Value>,
    /// The request id, redacted, when it held a secret (such a call is refused).
    pub id_secret: Option<Value>,
    pub args_hash: String,
    pub shape: String,
    /// Keeps the call's secrets out of texts recorded later (`None` with DLP off).
    pub scrub: Option<Scrub>,
}

/// Scan and fingerprint the `tools/call` in `request` (its arguments are an object or absent).
/// `Err` says why the scan could not be done.
pub(super) async fn prepare(
    dlp: Option<Arc<Dlp>>,
    server: &Name,
    tool: &Name,
    request: &mut Value,
) -> Result<Prepared, String> {
    let meta = request.pointer("/params/_meta").cloned();
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let large = request
        .pointer("/params/arguments")
        .is_some_and(|a| at_least(a, OFFLOAD_BYTES));
    if !large {
        let empty = json!({});
        let arguments = request
            .pointer("/params/arguments")
            .filter(|a| a.is_object())
            .unwrap_or(&empty);
        return Ok(scan(dlp.as_ref(), server, tool, arguments, meta, &id));
    }
    // Taken out of the request for the blocking pool (not copied), then put back.
    let arguments = request
        .pointer_mut("/params/arguments")
        .map(Value::take)
        .unwrap_or_default();
    let (server, tool) = (server.clone(), tool.clone());
    let done = tokio::task::spawn_blocking(move || {
        let p = scan(dlp.as_ref(), &server, &tool, &arguments, meta, &id);
        (arguments, p)
    })
    .await;
    let (arguments, p) = done.map_err(|e| format!("scanning the arguments failed: {e}"))?;
    if let Some(slot) = request.pointer_mut("/params/arguments") {
        *slot = arguments;
    }
    Ok(p)
}

fn scan(
    dlp: Option<&Arc<Dlp>>,
    server: &str,
    tool: &str,
    arguments: &Value,
    meta: Option<Value>,
    id: &Value,
) -> Prepared {
    let mut stored = arguments.clone();
    let mut p = Prepared {
        stored: Value::Null,
        findings: Vec::new(),
        secrets: None,
        meta,
        id_secret: None,
        args_hash: String::new(),
        shape: String::new(),
        scrub: None,
    };
    if let Some(d) = dlp {
        let mut known = Vec::new();
        let add =
            |p: &mut Prepared, found: Result<Vec<Finding>, TooManySecrets>, at: &str| match found {
                Ok(f) if f.is_empty() => false,
                Ok(f) => {
                    p.findings.extend(f.into_iter().map(|mut f| {
                        f.path = format!("{at}{}", f.path);
                        f
                    }));
                    p.secrets.get_or_insert(Ok(()));
                    true
                }
                Err(TooManySecrets) => {
                    p.secrets = Some(Err(TooManySecrets));
                    true
                }
            };
        if add(&mut p, d.scanner.scan(arguments), "") && p.secrets == Some(Ok(())) {
            d.scanner.redact_keeping(&mut stored, &mut known);
        }
        let meta_found = p.meta.as_ref().map(|m| d.scanner.scan(m));
        if let Some(found) = meta_found
            && add(&mut p, found, "params._meta")
            && let Some(m) = p.meta.as_mut()
        {
            d.scanner.redact_keeping(m, &mut known);
        }
        if add(&mut p, d.scanner.scan(id), "id") {
            let mut redacted = id.clone();
            d.scanner.redact_keeping(&mut redacted, &mut known);
            p.id_secret = Some(redacted);
        }
        if p.secrets == Some(Err(TooManySecrets)) {
            // Not redacted: past the limit the scan stopped, so nothing says where every
            // secret is. The store keeps none of what was scanned.
            let placeholder = Value::String(format!(
                "[REDACTED: more than {MAX_FINDINGS} secrets; not kept]"
            ));
            stored = placeholder.clone();
            p.findings.clear();
            if p.meta.is_some() {
                p.meta = Some(placeholder.clone());
            }
            if p.id_secret.is_some() {
                p.id_secret = Some(placeholder);
            }
        }
        p.scrub = Some(Scrub::new(d.clone(), known));
    }
    p.args_hash = fingerprint::args_hash(&stored);
    p.shape = fingerprint::shape_fingerprint(server, tool, &stored);
    p.stored = stored;
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_policy::guards::DlpAction;
    use tollgate_policy::guards::dlp::{Entropy, Scanner};

    #[tokio::test]
    async fn secrets_in_meta_and_the_id_are_found_and_kept_out_of_the_stored_copies() {
        let dlp = Arc::new(Dlp {
            scanner: Scanner::new(Some(Entropy::default()), &[]),
            action: DlpAction::Approve,
        });
        let key = "AKIAIOSFODNN7EXAMPLE";
        let mut request = json!({"jsonrpc": "2.0", "id": format!("req {key}"), "method": "tools/call",
            "params": {"name": "t", "arguments": {"password": "hunter2"},
                "_meta": {"progressToken": 1, "auth": key}}});
        let before = request.clone();
        let p = prepare(Some(dlp), &"s".into(), &"t".into(), &mut request)
            .await
            .expect("scanned");
        assert_eq!(request, before, "the request itself is not changed");
        let paths: Vec<_> = p.findings.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["/password", "params._meta/auth", "id"]);
        let kept = json!([p.stored, p.meta, p.id_secret]).to_string();
        assert!(!kept.contains(key) && !kept.contains("hunter2"), "{kept}");
        assert_eq!(
            p.meta.as_ref().map(|m| m["progressToken"].clone()),
            Some(json!(1))
        );
        let scrub = p.scrub.expect("DLP on");
        assert_eq!(
            scrub.text(format!("bad password hunter2 for {key}")),
            "bad password [REDACTED] for [REDACTED]"
        );
    }
}
