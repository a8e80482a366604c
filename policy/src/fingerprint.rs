//! Canonical JSON, argument hashes and call fingerprints.
//!
//! Two calls are "the same call" when they go to the same server and tool with the same
//! arguments, whatever the key order or whitespace the client used. Canonical JSON sorts object
//! keys at every depth and drops insignificant whitespace; the argument hash is its SHA-256, and
//! the exact fingerprint hashes server, tool and canonical arguments together.
//!
//! The shape fingerprint groups calls that are the same request with different volatile values
//! (a loop paging through ids, a retry with a fresh timestamp): it hashes server, tool and the
//! arguments' [`shape`], which keeps keys, structure and text but masks numbers, digit runs,
//! UUIDs, long hex strings and long mixed letter-and-digit tokens, and treats arrays as the set
//! of their element shapes.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// JSON text with object keys sorted at every depth and no whitespace.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// An object with its keys sorted, each value written by `value`.
fn write_object(
    map: &serde_json::Map<String, Value>,
    out: &mut String,
    value: fn(&Value, &mut String),
) {
    let mut keys: Vec<_> = map.keys().collect();
    keys.sort_unstable();
    out.push('{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(k, out);
        out.push(':');
        value(&map[k], out);
    }
    out.push('}');
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => write_object(map, out, write),
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
        Value::String(s) => write_json_str(s, out),
        other => out.push_str(&other.to_string()),
    }
}

/// Lowercase hex of a SHA-256 digest.
pub fn sha256_hex(bytes: &[u8]) -> String {
    tollgate_shared::hex(&Sha256::digest(bytes))
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
    tollgate_shared::hex(&h.finalize()[..8])
}

/// The shape of arguments as text: keys sorted, numbers as `N`, strings with volatile parts
/// masked (`<uuid>`, `<hex>`, `<id>`, digit runs as `#`), arrays as their distinct element
/// shapes in sorted order.
pub fn shape(value: &Value) -> String {
    let mut out = String::new();
    write_shape(value, &mut out);
    out
}

fn write_shape(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => write_object(map, out, write_shape),
        Value::Array(items) => {
            let mut shapes: Vec<String> = items.iter().map(shape).collect();
            shapes.sort_unstable();
            shapes.dedup();
            out.push('[');
            out.push_str(&shapes.join(","));
            out.push(']');
        }
        Value::Number(_) => out.push('N'),
        Value::String(s) => write_json_str(&mask(s), out),
        other => out.push_str(&other.to_string()),
    }
}

/// `s` as a JSON string, escaped as serde_json escapes it, appended to `out`.
fn write_json_str(s: &str, out: &mut String) {
    let mut buf = Vec::with_capacity(s.len() + 2);
    // Writing into a Vec cannot fail, and serde_json writes valid UTF-8.
    let _ = serde_json::to_writer(&mut buf, s);
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

/// Mask the volatile parts of a string (see [`shape`]).
pub fn mask(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        // A run of ASCII letters, digits and inner hyphens (a UUID, or words): its ends are
        // ASCII, so they are character boundaries.
        out.push_str(&s[copied..i]);
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-') {
            i += 1;
        }
        let run = &s[start..i];
        if is_uuid(run.as_bytes()) {
            out.push_str("<uuid>");
        } else {
            for (n, word) in run.split('-').enumerate() {
                if n > 0 {
                    out.push('-');
                }
                mask_word(word, &mut out);
            }
        }
        copied = i;
    }
    out.push_str(&s[copied..]);
    out
}

fn is_uuid(run: &[u8]) -> bool {
    run.len() == 36
        && run.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Mask one ASCII word.
fn mask_word(word: &str, out: &mut String) {
    let (text, word) = (word, word.as_bytes());
    let digits = word.iter().any(u8::is_ascii_digit);
    if !digits {
        out.push_str(text);
    } else if word.len() >= 8 && word.iter().all(u8::is_ascii_hexdigit) {
        out.push_str("<hex>");
    } else if word.len() >= 16 && word.iter().any(u8::is_ascii_alphabetic) {
        out.push_str("<id>");
    } else {
        let mut in_digits = false;
        for c in word {
            if c.is_ascii_digit() {
                if !in_digits {
                    out.push('#');
                }
                in_digits = true;
            } else {
                out.push(char::from(*c));
                in_digits = false;
            }
        }
    }
}

/// The shape fingerprint of a call: 16 hex digits over server, tool and the arguments' shape.
pub fn shape_fingerprint(server: &str, tool: &str, arguments: &Value) -> String {
    let mut h = Sha256::new();
    for part in [server, "\0", tool, "\0", "shape", "\0", &shape(arguments)] {
        h.update(part.as_bytes());
    }
    tollgate_shared::hex(&h.finalize()[..8])
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

    #[test]
    fn shapes_mask_volatile_values_and_keep_the_rest() {
        let a = json!({
            "sql": "SELECT * FROM t WHERE id = 17 LIMIT 50",
            "request": "0190c1a2-beef-7000-8000-00000000abcd",
            "at": "2026-11-24T21:24:29Z",
            "commit": "9f86d081884c7d65",
            "token": "req_AbC9xYz0QwErTy12",
            "page": 3,
            "ids": [1, 2, 3],
            "dry_run": true,
        });
        assert_eq!(
            shape(&a),
            r##"{"at":"#-#-#T#:#:#Z","commit":"<hex>","dry_run":true,"ids":[N],"page":N,"request":"<uuid>","sql":"SELECT * FROM t WHERE id = # LIMIT #","token":"req_<id>"}"##
        );
        let b = json!({
            "sql": "SELECT * FROM t WHERE id = 18 LIMIT 50",
            "request": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
            "at": "2026-11-25T01:00:00Z",
            "commit": "e3b0c44298fc1c14",
            "token": "req_ZZZ9xYz0QwErTy99",
            "page": 4,
            "ids": [9],
            "dry_run": true,
        });
        assert_eq!(
            shape_fingerprint("db", "q", &a),
            shape_fingerprint("db", "q", &b)
        );
        // Text, booleans, keys, server and tool still tell calls apart.
        let mut c = b.clone();
        c["dry_run"] = json!(false);
        assert_ne!(
            shape_fingerprint("db", "q", &a),
            shape_fingerprint("db", "q", &c)
        );
        let mut d = b.clone();
        d["sql"] = json!("DELETE FROM t WHERE id = 18");
        assert_ne!(
            shape_fingerprint("db", "q", &a),
            shape_fingerprint("db", "q", &d)
        );
        assert_ne!(
            shape_fingerprint("db", "q", &a),
            shape_fingerprint("db", "r", &a)
        );
        assert_ne!(
            shape_fingerprint("db", "q", &a),
            shape_fingerprint("db2", "q", &a)
        );
        // Short hex-looking words without digits are words ("beef", "cafe").
        assert_eq!(mask("add beef to cafe 42"), "add beef to cafe #");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                (-1e9f64..1e9).prop_map(Value::from),
                "[a-z ]{0,12}".prop_map(Value::from),
                "[ -~]{0,20}".prop_map(Value::from),
            ]
        }

        fn json() -> impl Strategy<Value = Value> {
            leaf().prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// The same value with every object's keys inserted in reverse order.
        fn reversed(v: &Value) -> Value {
            match v {
                Value::Object(m) => {
                    let mut out = Map::new();
                    for (k, x) in m.iter().rev() {
                        out.insert(k.clone(), reversed(x));
                    }
                    Value::Object(out)
                }
                Value::Array(a) => Value::Array(a.iter().map(reversed).collect()),
                other => other.clone(),
            }
        }

        /// The same value with every number replaced, every digit changed and every UUID
        /// regenerated: what a loop changes between iterations.
        fn churned(v: &Value, salt: u8) -> Value {
            match v {
                Value::Object(m) => Value::Object(
                    m.iter()
                        .map(|(k, x)| (k.clone(), churned(x, salt)))
                        .collect(),
                ),
                Value::Array(a) => Value::Array(a.iter().map(|x| churned(x, salt)).collect()),
                Value::Number(n) => Value::from(n.as_f64().unwrap_or(0.0) + f64::from(salt) + 1.0),
                Value::String(s) => Value::String(
                    s.chars()
                        .map(|c| match c.to_digit(10) {
                            Some(d) => char::from_digit((d + u32::from(salt) % 9 + 1) % 10, 10)
                                .unwrap_or('0'),
                            None => c,
                        })
                        .collect(),
                ),
                other => other.clone(),
            }
        }

        proptest! {
            #[test]
            fn key_order_and_whitespace_never_change_a_fingerprint(v in json()) {
                let pretty: Value = serde_json::from_str(
                    &serde_json::to_string_pretty(&reversed(&v)).expect("serialize"),
                ).expect("reparse");
                prop_assert_eq!(canonical(&v), canonical(&pretty));
                prop_assert_eq!(args_hash(&v), args_hash(&pretty));
                prop_assert_eq!(
                    shape_fingerprint("s", "t", &v),
                    shape_fingerprint("s", "t", &pretty)
                );
                // Canonical JSON is JSON and means the same value.
                let back: Value = serde_json::from_str(&canonical(&v)).expect("canonical parses");
                prop_assert_eq!(back, v);
            }

            #[test]
            fn volatile_values_never_change_a_shape(v in json(), salt in 0u8..9) {
                let moved = churned(&v, salt);
                prop_assert_eq!(shape(&v), shape(&moved));
            }

            #[test]
            fn a_new_key_always_changes_the_shape(v in json(), key in "[A-Z]{1,4}") {
                let mut obj = match v {
                    Value::Object(m) => m,
                    other => Map::from_iter([("x".to_string(), other)]),
                };
                let before = shape_fingerprint("s", "t", &Value::Object(obj.clone()));
                obj.insert(key, Value::Null);
                prop_assert_ne!(before, shape_fingerprint("s", "t", &Value::Object(obj)));
            }
        }
    }
}
