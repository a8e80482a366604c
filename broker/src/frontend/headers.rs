//! Mirrored-header checks for the stateless (2026-07-28+) revision.
//!
//! That revision copies `method`, `params.name`/`params.uri` and the protocol version into HTTP
//! headers so intermediaries can route without parsing bodies. The broker decides on the body,
//! but anything downstream might trust the headers, so a request whose headers disagree with
//! its body is refused (`400`, `HeaderMismatch`) rather than forwarded.

use axum::http::HeaderMap;
use base64::Engine;
use serde_json::Value;

use crate::jsonrpc;

/// Decode a header value that may use the `=?base64?...?=` sentinel encoding.
pub fn decode_sentinel(v: &str) -> Option<String> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(v.to_string()),
    }
}

/// How a request's mirrored headers disagree with its body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// A header value that is not visible ASCII.
    #[error("{0} header contains invalid characters")]
    Invalid(&'static str),
    /// A header the revision requires.
    #[error("{0} header is missing")]
    Missing(&'static str),
    /// A header that says something else than the body.
    #[error("{header} header value '{value}' does not match body value '{body}'")]
    Differs {
        /// The header, as the specification spells it.
        header: &'static str,
        /// Its value.
        value: String,
        /// What the body says.
        body: String,
    },
    /// An `Mcp-Name` in the base64 sentinel form that does not decode.
    #[error("Mcp-Name header has invalid base64")]
    BadBase64,
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, Mismatch> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| Mismatch::Invalid(name)),
    }
}

/// Check a stateless-revision request's mirrored headers against its body.
pub fn check_mirrored(headers: &HeaderMap, msg: &Value) -> Result<(), Mismatch> {
    let differs = |header, value: &str, body: &str| Mismatch::Differs {
        header,
        value: value.to_string(),
        body: body.to_string(),
    };
    let method = jsonrpc::method(msg).unwrap_or_default();
    let body_version = jsonrpc::meta_protocol_version(msg);
    match (header(headers, "mcp-protocol-version")?, body_version) {
        (None, _) => return Err(Mismatch::Missing("MCP-Protocol-Version")),
        (Some(h), Some(b)) if h != b => return Err(differs("MCP-Protocol-Version", h, b)),
        _ => {}
    }
    match header(headers, "mcp-method")? {
        None => return Err(Mismatch::Missing("Mcp-Method")),
        Some(h) if h != method => return Err(differs("Mcp-Method", h, method)),
        _ => {}
    }
    let name_field = match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    };
    if let Some(field) = name_field {
        let body = msg
            .pointer(&format!("/params/{field}"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let h = header(headers, "mcp-name")?.ok_or(Mismatch::Missing("Mcp-Name"))?;
        let decoded = decode_sentinel(h).ok_or(Mismatch::BadBase64)?;
        if decoded != body {
            return Err(differs("Mcp-Name", &decoded, body));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    fn call(name: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": name, "_meta": {jsonrpc::META_PROTOCOL_VERSION: "2026-07-28"}}})
    }

    #[test]
    fn matching_headers_pass() {
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        assert_eq!(check_mirrored(&h, &call("echo")), Ok(()));
    }

    #[test]
    fn a_name_that_disagrees_with_the_body_is_refused() {
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        let err = check_mirrored(&h, &call("delete_everything"))
            .expect_err("mismatch")
            .to_string();
        assert!(
            err.contains("'echo' does not match body value 'delete_everything'"),
            "{err}"
        );
    }

    #[test]
    fn missing_or_mismatched_method_and_version_are_refused() {
        let h = headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-name", "echo")]);
        assert!(
            check_mirrored(&h, &call("echo"))
                .expect_err("missing")
                .to_string()
                .contains("Mcp-Method")
        );
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
            ("mcp-name", "echo"),
        ]);
        assert!(check_mirrored(&h, &call("echo")).is_err());
        let h = headers(&[
            ("mcp-protocol-version", "2027-01-01"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        assert!(
            check_mirrored(&h, &call("echo"))
                .expect_err("version")
                .to_string()
                .contains("MCP-Protocol-Version")
        );
    }

    #[test]
    fn base64_sentinel_names_are_decoded_before_comparing() {
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?SGVsbG8sIOS4lueVjA==?="),
        ]);
        assert_eq!(check_mirrored(&h, &call("Hello, 世界")), Ok(()));
        assert_eq!(decode_sentinel("=?base64?!!?="), None);
    }
}
