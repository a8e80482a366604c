//! Taking back a held call after a restart: the request it came in, rebuilt from its record, so
//! it can be forwarded when approved.

use axum::http::{HeaderMap, HeaderValue, header};
use bytes::Bytes;
use serde_json::json;
use tollgate_shared::CallRecord;

use crate::jsonrpc::{self, Kind};
use crate::upstream::Inbound;

/// Rebuild the request of a recovered call so it can be forwarded after a restart.
pub fn rebuild(record: &CallRecord) -> Inbound {
    let mut params = json!({"name": record.tool, "arguments": record.arguments});
    let modern = record
        .protocol_version
        .as_deref()
        .is_some_and(jsonrpc::is_modern);
    match record.hold.as_ref().and_then(|h| h.meta.clone()) {
        // The envelope as the client sent it (revision, capabilities, progress token).
        Some(meta) => params["_meta"] = meta.value(),
        // Stored before envelopes were kept: the parts the record has.
        None => {
            if let Some(tok) = record.hold.as_ref().and_then(|h| h.progress_token.clone()) {
                params["_meta"] = json!({"progressToken": tok});
            }
            if modern && let Some(v) = &record.protocol_version {
                params["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!(v);
            }
        }
    }
    let value = json!({"jsonrpc": "2.0", "id": record.request_id, "method": "tools/call", "params": params});
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    for (name, v) in [
        ("mcp-session-id", record.session.as_deref()),
        ("mcp-protocol-version", record.protocol_version.as_deref()),
    ] {
        if let Some(v) = v.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
        }
    }
    if modern {
        headers.insert("mcp-method", HeaderValue::from_static("tools/call"));
        if let Ok(v) = HeaderValue::from_str(&record.tool) {
            headers.insert("mcp-name", v);
        }
    }
    Inbound {
        raw: Bytes::from(value.to_string()),
        value,
        kind: Kind::Request,
        headers,
        session: record.session.as_deref().map(str::to_string),
        client: record.client.clone(),
        sse: true,
        modern,
        ticket: None,
        recovered: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_recovered_call_is_rebuilt_with_the_envelope_its_client_sent() {
        let meta = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"extensions": {}},
            "progressToken": 4
        });
        let rec: CallRecord = serde_json::from_value(json!({
            "id": "x", "outcome": "pending", "rule": {"index": 1, "name": "r"}, "client": "c",
            "server": "db", "tool": "drop", "request_id": 9, "arguments": {"t": 1},
            "protocol_version": "2026-07-28",
            "hold": {"mode": "task", "expires_ms": 1, "quorum": 1, "progress_token": 4, "meta": meta},
            "timings": {"received_ms": 0, "decided_ms": 0}
        }))
        .expect("record");
        let inbound = rebuild(&rec);
        assert_eq!(inbound.value["params"]["_meta"], meta);
        assert_eq!(inbound.value["params"]["arguments"], json!({"t": 1}));
        assert_eq!(inbound.value["id"], json!(9));
        assert!(inbound.modern);
    }
}
