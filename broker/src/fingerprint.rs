//! Canonical JSON, argument hashes and call fingerprints.
//!
//! Two calls are "the same call" when they go to the same server and tool with the same
//! arguments, whatever the key order or whitespace the client used. Canonical JSON sorts object
//! keys at every depth and drops insignificant whitespace; the argument hash is its SHA-256, and
//! the exact fingerprint hashes server, tool and canonical arguments together.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// JSON text with object keys sorted at every depth and no whitespace.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Lowercase hex of a SHA-256 digest.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 (hex) of the canonical arguments.
pub fn args_hash(arguments: &Value) -> String {
    sha256_hex(canonical(arguments).as_bytes())
}

/// The exact fingerprint of a call: 16 hex digits over server, tool and arguments.
pub fn exact(server: &str, tool: &str, args_hash: &str) -> String {
    let mut h = Sha256::new();
    for part in [server, "\0", tool, "\0", args_hash] {
        h.update(part.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_change_the_hash() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "s"}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"a":"s","b":[1,{"x":1,"y":2}]}"#).expect("json");
        assert_eq!(canonical(&a), r#"{"a":"s","b":[1,{"x":1,"y":2}]}"#);
        assert_eq!(args_hash(&a), args_hash(&b));
        assert_ne!(args_hash(&a), args_hash(&json!({"a": "t"})));
    }

    #[test]
    fn fingerprints_separate_server_tool_and_args() {
        let h = args_hash(&json!({}));
        assert_ne!(exact("s", "t", &h), exact("s", "u", &h));
        assert_ne!(exact("st", "", &h), exact("s", "t", &h));
        assert_eq!(exact("s", "t", &h).len(), 16);
    }
}
