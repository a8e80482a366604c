//! JSON-RPC 2.0 framing: classify raw messages and build the errors and results the gateway
//! itself sends.
//!
//! The gateway keeps every message as a raw `serde_json::Value` (or the original bytes) so that
//! fields it does not know pass through untouched; this module only reads the few fields it
//! must (`id`, `method`, `params._meta`) and never rebuilds a message it merely forwards.

use serde_json::{Value, json};

/// JSON-RPC: invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC internal error: the broker failed, not the request.
pub const INTERNAL_ERROR: i64 = -32603;
/// Implementation-defined: the upstream is unreachable, exited or timed out.
pub const UPSTREAM_ERROR: i64 = -32010;
/// Implementation-defined: authentication failed.
pub const UNAUTHORIZED: i64 = -32011;
/// MCP 2026-07-28: HTTP headers do not match the body (or are missing or malformed).
pub const HEADER_MISMATCH: i64 = -32020;
/// MCP 2026-07-28: the request needs a client capability it did not declare (was `-32003` in
/// drafts).
pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
/// MCP 2026-07-28: the request's protocol version is not supported (was `-32004` in drafts).
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// The protocol revisions the broker understands, newest first. A request in any other is
/// refused (`-32022`): the broker cannot apply policy to messages whose shape it does not know.
pub const KNOWN_VERSIONS: [&str; 5] = [
    "2026-07-28",
    "2025-11-25",
    "2025-06-18",
    "2025-03-26",
    "2024-11-05",
];

/// The `_meta` key that carries the protocol version on 2026-07-28 and later.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// The first protocol revision without sessions or the `initialize` handshake.
pub const FIRST_MODERN_VERSION: &str = "2026-07-28";

/// What kind of JSON-RPC message a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`: expects a response.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id` and `result` or `error`, no `method`.
    Response,
}

/// Classify a message, or say why it is not one.
pub fn classify(v: &Value) -> Result<Kind, &'static str> {
    let Some(obj) = v.as_object() else {
        return Err(if v.is_array() {
            "batches are not supported (JSON-RPC batching was removed from MCP in 2025-06-18); send one message per request"
        } else {
            "a JSON-RPC message must be a JSON object"
        });
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("\"jsonrpc\" must be \"2.0\"");
    }
    let id_ok = |id: &Value| id.is_string() || id.is_number();
    match (obj.get("method"), obj.get("id")) {
        (Some(Value::String(_)), Some(id)) if id_ok(id) => Ok(Kind::Request),
        (Some(Value::String(_)), Some(_)) => Err("\"id\" must be a string or a number"),
        (Some(Value::String(_)), None) => Ok(Kind::Notification),
        (Some(_), _) => Err("\"method\" must be a string"),
        (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => {
            Ok(Kind::Response)
        }
        (None, _) => Err(
            "a message needs \"method\" (request or notification) or \"result\"/\"error\" (response)",
        ),
    }
}

/// The message's `method`, if any.
pub fn method(v: &Value) -> Option<&str> {
    v.get("method").and_then(Value::as_str)
}

/// The message's `id`, or `null`.
pub fn id(v: &Value) -> Value {
    v.get("id").cloned().unwrap_or(Value::Null)
}

/// The protocol version a 2026-07-28+ request declares in `params._meta`.
pub fn meta_protocol_version(v: &Value) -> Option<&str> {
    v.pointer("/params/_meta")?
        .get(META_PROTOCOL_VERSION)?
        .as_str()
}

/// Is this protocol version one of the stateless (per-request metadata) revisions?
/// Revision names are dates, so they order as strings.
pub fn is_modern(version: &str) -> bool {
    version >= FIRST_MODERN_VERSION
}

/// A JSON-RPC error response.
pub fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

/// The `UnsupportedProtocolVersionError` for request `id`, listing what the broker supports.
pub fn unsupported_version(id: Value, requested: &str) -> Value {
    let mut e = error(
        id,
        UNSUPPORTED_PROTOCOL_VERSION,
        format!(
            "Unsupported protocol version {requested:?}: the broker understands {}",
            KNOWN_VERSIONS.join(", ")
        ),
    );
    e["error"]["data"] = json!({"supported": KNOWN_VERSIONS, "requested": requested});
    e
}

/// The `MissingRequiredClientCapabilityError` for request `id`: `required` lists what the
/// request needed (e.g. `{"extensions": {"io.modelcontextprotocol/tasks": {}}}`).
pub fn missing_capability(id: Value, message: &str, required: Value) -> Value {
    let mut e = error(id, MISSING_REQUIRED_CLIENT_CAPABILITY, message);
    e["error"]["data"] = json!({ "requiredCapabilities": required });
    e
}

/// A successful `tools/call` result that reports a tool-level failure (`isError: true`), which
/// is how MCP tells the model "this did not work, here is why" without failing the request.
pub fn tool_error(id: Value, text: &str, modern: bool) -> Value {
    let mut result = json!({"content": [{"type": "text", "text": text}], "isError": true});
    if modern {
        result["resultType"] = json!("complete");
    }
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A canonical string key for a request id, so `1` and `"1"` stay distinct.
pub fn id_key(id: &Value) -> String {
    id.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_three_kinds_and_rejects_the_rest() {
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":1,"method":"x"})),
            Ok(Kind::Request)
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","method":"x"})),
            Ok(Kind::Notification)
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":"a","result":{}})),
            Ok(Kind::Response)
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":1,"error":{}})),
            Ok(Kind::Response)
        );
        assert!(classify(&json!([])).is_err());
        assert!(classify(&json!("x")).is_err());
        assert!(classify(&json!({"jsonrpc":"1.0","id":1,"method":"x"})).is_err());
        assert!(classify(&json!({"jsonrpc":"2.0","id":{},"method":"x"})).is_err());
        assert!(classify(&json!({"jsonrpc":"2.0","id":1,"method":5})).is_err());
        assert!(classify(&json!({"jsonrpc":"2.0","id":1})).is_err());
    }

    #[test]
    fn modern_versions_order_by_date() {
        assert!(is_modern("2026-07-28"));
        assert!(is_modern("2027-01-01"));
        assert!(!is_modern("2025-11-25"));
        let req = json!({"params": {"_meta": {META_PROTOCOL_VERSION: "2026-07-28"}}});
        assert_eq!(meta_protocol_version(&req), Some("2026-07-28"));
    }

    #[test]
    fn tool_error_marks_is_error_and_result_type_only_when_modern() {
        let legacy = tool_error(json!(3), "no", false);
        assert_eq!(legacy["result"]["isError"], json!(true));
        assert!(legacy["result"].get("resultType").is_none());
        let modern = tool_error(json!(3), "no", true);
        assert_eq!(modern["result"]["resultType"], json!("complete"));
        assert_eq!(modern["result"]["content"][0]["text"], json!("no"));
    }
}
