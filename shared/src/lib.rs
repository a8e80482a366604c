//! Types that both halves of Tollgate agree on.
//!
//! The broker writes [`CallRecord`]s into its store and the console (and the broker's own `audit`
//! command) reads them back, so the record's shape lives here, in one place, with serde
//! round-trip tests. Everything is plain data: no I/O, no async.
//!
//! [`console`] holds the console WebSocket protocol and [`audit`] the hash-chained audit entry.

pub mod audit;
pub mod clock;
pub mod console;
pub mod fs;
pub mod report;
pub mod sync;

use serde::{Deserialize, Serialize};

/// Version of the record format and wire protocol in this crate. Bumped on any change that an
/// older reader could misread.
pub const PROTOCOL_VERSION: u32 = 2;

/// How one intercepted `tools/call` ended, as far as the gateway is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Policy allowed the call and it was forwarded upstream.
    Allowed,
    /// Policy (or a guard) refused the call; the client got `isError: true` naming the rule.
    Blocked,
    /// Policy asked for a human approval; the call is held until someone decides.
    Pending,
    /// An approver let the call through.
    Approved,
    /// An approver refused the call.
    Rejected,
    /// Nobody decided before the call's expiry.
    Expired,
    /// The client withdrew the call while it was held.
    Cancelled,
    /// The broker restarted and the client could no longer receive the answer.
    Abandoned,
    /// A rate limit or budget refused the call.
    RateLimited,
}

impl Outcome {
    /// The snake_case name used on the wire, in the store and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Blocked => "blocked",
            Outcome::Pending => "pending",
            Outcome::Approved => "approved",
            Outcome::Rejected => "rejected",
            Outcome::Expired => "expired",
            Outcome::Cancelled => "cancelled",
            Outcome::Abandoned => "abandoned",
            Outcome::RateLimited => "rate_limited",
        }
    }
}

/// A name that is not an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOutcome(pub String);

impl std::fmt::Display for UnknownOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown status {:?} (statuses: allowed, blocked, pending, approved, rejected, expired, cancelled, abandoned, rate_limited)",
            self.0
        )
    }
}

impl std::error::Error for UnknownOutcome {}

impl std::str::FromStr for Outcome {
    type Err = UnknownOutcome;
    fn from_str(s: &str) -> Result<Outcome, UnknownOutcome> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| UnknownOutcome(s.to_string()))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An immutable string shared by reference count: a call's id and names, which the broker
/// keeps in several places (the record, the queue's indexes, the call's event feed) while the
/// call waits. Serialised as a plain string.
pub type Name = std::sync::Arc<str>;

/// How many distinct names [`intern`] keeps. Names come from a small set (servers, tools,
/// clients, rules); past this many, a name is allocated on its own, so a peer sending
/// endless distinct tool names cannot grow the set without bound.
const INTERNED_MAX: usize = 4096;

/// The shared copy of `s`: records of the same server, tool and client point at one string
/// instead of each holding its own.
pub fn intern(s: &str) -> Name {
    // Read-locked on every call through the broker; written only for a name not seen before.
    static NAMES: std::sync::LazyLock<sync::RwLock<std::collections::HashSet<Name>>> =
        std::sync::LazyLock::new(Default::default);
    if let Some(n) = NAMES.read().get(s) {
        return n.clone();
    }
    let mut names = NAMES.write();
    if let Some(n) = names.get(s) {
        return n.clone();
    }
    let n = Name::from(s);
    if names.len() < INTERNED_MAX {
        names.insert(n.clone());
    }
    n
}

/// Read a name as its shared copy (see [`intern`]): a console holding 100 000 calls of a few
/// servers and tools, or the broker reading back its pending calls, keeps one copy of each.
fn interned<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Name;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name, E> {
            Ok(intern(v))
        }
    }
    d.deserialize_str(V)
}

/// [`interned`], for an optional name.
fn interned_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Name>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Name>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Option<Name>, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<Name>, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<Name>, D::Error> {
            interned(d).map(Some)
        }
    }
    d.deserialize_option(V)
}

/// The rule that decided a call: its 1-based position in the config and its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// 1-based index of the `[[rule]]` table in the config; 0 for the policy default.
    pub index: usize,
    /// The rule's `name`, or `rule N` when it has none, or `default`.
    #[serde(deserialize_with = "interned")]
    pub name: Name,
}

/// Timestamps of one call, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// When the broker finished reading the request.
    pub received_ms: u64,
    /// When the verdict was reached (policy evaluated).
    pub decided_ms: u64,
    /// When the upstream's answer had been fully relayed, if the call was forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ms: Option<u64>,
}

/// A JSON value kept as its compact text, in one allocation.
///
/// Every pending call keeps its record in the broker's memory and in every console's, and a
/// parsed [`serde_json::Value`] object costs hundreds of bytes in small allocations (an
/// insertion-ordered map, its index table, each key and value). Arguments and request
/// envelopes are only read whole (forwarding, display, a diff), so they are kept as text and
/// parsed on demand. On the wire and in the store it is the JSON value itself, unchanged.
#[derive(Clone)]
pub struct JsonText(Box<serde_json::value::RawValue>);

impl JsonText {
    /// The text of `value`.
    pub fn new(value: &serde_json::Value) -> JsonText {
        // Writing a `Value` to a string cannot fail: its keys are strings and every number it
        // holds is finite.
        JsonText(serde_json::value::to_raw_value(value).unwrap_or_else(|_| Self::null()))
    }

    fn null() -> Box<serde_json::value::RawValue> {
        serde_json::from_str("null").unwrap_or_else(|_| unreachable!("null is JSON"))
    }

    /// The compact JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The value, parsed again from the text (which is always valid JSON).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl From<serde_json::Value> for JsonText {
    fn from(value: serde_json::Value) -> JsonText {
        JsonText::new(&value)
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &JsonText) -> bool {
        self.get() == other.get()
    }
}

impl Eq for JsonText {}

impl std::fmt::Debug for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl std::fmt::Display for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    /// Through a `Value` rather than straight into the raw text: a record also arrives inside
    /// internally tagged console messages, which serde buffers, and a raw value cannot be read
    /// from that buffer.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JsonText, D::Error> {
        serde_json::Value::deserialize(d).map(|v| JsonText::new(&v))
    }
}

/// A hex digest (a fingerprint or an argument hash) kept as its bytes rather than its text:
/// `N` bytes inline instead of a string and its heap allocation, in every record the broker
/// and the consoles keep. Serialised as the lowercase hex string it was made from, so the wire
/// and store formats are unchanged; any other text is kept as it came.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Digest<const N: usize> {
    /// Lowercase hex of `len` characters (at most `2 * N`), packed two to a byte.
    Hex {
        /// Number of hex characters.
        len: u8,
        /// The nibbles, high first; unused ones are zero.
        bytes: [u8; N],
    },
    /// Anything else (written by hand, or by some other tool), unchanged.
    Text(Box<str>),
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes` (digests, checksums).
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// The bytes written as exactly `2 * N` hex digits (either case, surrounding whitespace
/// ignored), e.g. a SHA-256 from a config file or the token file.
pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim().as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = nibble(text[2 * i])? << 4 | nibble(text[2 * i + 1])?;
    }
    Some(out)
}

/// An exact or shape fingerprint: 16 hex characters.
pub type Fingerprint = Digest<8>;
/// A SHA-256 of canonical arguments: 64 hex characters.
pub type ArgsHash = Digest<32>;

impl<const N: usize> Default for Digest<N> {
    fn default() -> Self {
        Digest::Hex {
            len: 0,
            bytes: [0; N],
        }
    }
}

impl<const N: usize> Digest<N> {
    /// No digest (older records, calls that were never fingerprinted).
    pub fn is_empty(&self) -> bool {
        match self {
            Digest::Hex { len, .. } => *len == 0,
            Digest::Text(t) => t.is_empty(),
        }
    }

    /// Whether this is the digest written as `text`.
    pub fn is(&self, text: &str) -> bool {
        *self == Digest::from(text)
    }

    fn write_hex<'b>(len: u8, bytes: &[u8; N], buf: &'b mut [u8; 64]) -> &'b str {
        let len = usize::from(len);
        for (i, out) in buf.iter_mut().enumerate().take(len) {
            let b = bytes[i / 2];
            *out = HEX[usize::from(if i % 2 == 0 { b >> 4 } else { b & 15 })];
        }
        // Only ASCII hex digits were written.
        std::str::from_utf8(&buf[..len]).unwrap_or_default()
    }
}

impl<const N: usize> From<&str> for Digest<N> {
    fn from(text: &str) -> Self {
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut bytes = [0u8; N];
        if text.len() <= 2 * N.min(32) {
            let mut ok = true;
            for (i, c) in text.bytes().enumerate() {
                match nibble(c) {
                    Some(v) => bytes[i / 2] |= if i % 2 == 0 { v << 4 } else { v },
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                return Digest::Hex {
                    len: text.len() as u8,
                    bytes,
                };
            }
        }
        Digest::Text(text.into())
    }
}

impl<const N: usize> From<String> for Digest<N> {
    fn from(text: String) -> Self {
        Digest::from(text.as_str())
    }
}

impl<const N: usize> std::fmt::Display for Digest<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Digest::Hex { len, bytes } => f.write_str(Self::write_hex(*len, bytes, &mut [0; 64])),
            Digest::Text(t) => f.write_str(t),
        }
    }
}

impl<const N: usize> std::fmt::Debug for Digest<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl<const N: usize> Serialize for Digest<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Digest::Hex { len, bytes } => {
                s.serialize_str(Self::write_hex(*len, bytes, &mut [0; 64]))
            }
            Digest::Text(t) => s.serialize_str(t),
        }
    }
}

impl<'de, const N: usize> Deserialize<'de> for Digest<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<const N: usize> serde::de::Visitor<'_> for V<N> {
            type Value = Digest<N>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a hex digest string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Digest<N>, E> {
                Ok(Digest::from(v))
            }
        }
        d.deserialize_str(V::<N>)
    }
}

/// One intercepted `tools/call` and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Time-ordered unique id (UUID v7, hyphenated).
    pub id: Name,
    /// The outcome so far.
    pub outcome: Outcome,
    /// The rule that decided, if any rule matched; `None` means the policy default.
    pub rule: RuleRef,
    /// Why: the rule's reason, or the error text the client saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The authenticated client identity that made the call.
    #[serde(deserialize_with = "interned")]
    pub client: Name,
    /// The configured upstream server name.
    #[serde(deserialize_with = "interned")]
    pub server: Name,
    /// The tool name as sent by the client.
    #[serde(deserialize_with = "interned")]
    pub tool: Name,
    /// The JSON-RPC request id, exactly as the client sent it.
    pub request_id: serde_json::Value,
    /// The MCP session the call belongs to, when the protocol revision has sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Name>,
    /// The MCP protocol revision the client declared, when known.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "interned_opt"
    )]
    pub protocol_version: Option<Name>,
    /// The tool arguments as received (redacted when DLP found secrets).
    pub arguments: JsonText,
    /// When things happened.
    pub timings: Timings,
    /// Set when forwarding failed (dead upstream, timeout); the client got a JSON-RPC error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// SHA-256 (hex) of the canonical JSON of the arguments: keys sorted, no whitespace.
    #[serde(default, skip_serializing_if = "Digest::is_empty")]
    pub args_hash: ArgsHash,
    /// Exact fingerprint: SHA-256 (hex, 16 chars) of server, tool and canonical arguments. Calls
    /// with the same fingerprint are the same call repeated, and can be decided together.
    #[serde(default, skip_serializing_if = "Digest::is_empty")]
    pub fingerprint: Fingerprint,
    /// Hash of the policy the verdict came from, so an audit reader knows which rules applied.
    #[serde(
        default,
        skip_serializing_if = "is_empty_name",
        deserialize_with = "interned"
    )]
    pub policy_version: Name,
    /// For a held call: how it waits and who may decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// Decisions made on a held call so far, in order (approvals towards a quorum, or the one
    /// rejection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Decision>,
    /// Secrets the DLP guard found (masked); when present, `arguments` are stored redacted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Shape fingerprint: server, tool and the arguments' structure with volatile values
    /// (numbers, digit runs, ids, timestamps) masked, so a loop that varies a counter is one
    /// pattern. 16 hex characters.
    #[serde(default, skip_serializing_if = "Digest::is_empty")]
    pub shape: Fingerprint,
    /// What the guards noticed around the call (repeats of its shape, rate limits its client
    /// hit), shown to approvers as flags.
    #[serde(default, skip_serializing_if = "Signals::is_empty")]
    pub signals: Signals,
}

/// Patterns the guards noticed around a call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    /// Calls of this shape seen within the loop window, this one included (set from 2).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeats: u32,
    /// The loop window in ms.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub window_ms: u64,
    /// `repeats` reached the loop threshold: probably a runaway loop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub looping: bool,
    /// A rate limit or budget refused calls from this client recently: which, and how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<String>,
}

fn is_empty_name(n: &Name) -> bool {
    n.is_empty()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl Signals {
    /// Nothing noticed.
    pub fn is_empty(&self) -> bool {
        self == &Signals::default()
    }
}

/// A secret found in a call's arguments by the DLP guard. The secret itself is never kept:
/// only where it was and a masked excerpt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Which detector matched (`aws_access_key`, `jwt`, `secret_field`, a custom name, ...).
    pub detector: String,
    /// JSON pointer into the arguments (`""` for the whole object).
    pub path: String,
    /// First and last characters and the length, e.g. `AKIA…MPLE (20 chars)`.
    pub masked: String,
}

/// How a held call waits for its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldMode {
    /// The request stays open (SSE keep-alives, progress when the client asked for it).
    Stream,
    /// The client made a task-augmented call and polls the task.
    Task,
    /// The client was told to retry; the identical call is let through once after approval.
    Retry,
}

/// The waiting terms of a held call. The two JSON values are kept as text: most calls have
/// neither, and every pending call keeps its record in the broker's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// How the client waits.
    pub mode: HoldMode,
    /// When the call expires unless decided (ms since the epoch).
    pub expires_ms: u64,
    /// Distinct approvals needed.
    pub quorum: u32,
    /// Who may approve: identity names or `role:<role>`; empty means any approver in scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// The client's `progressToken`, so keep-alive progress can be sent (also after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_token: Option<JsonText>,
    /// The request's `params._meta` as the client sent it (revision, client capabilities,
    /// progress token), so a call recovered after a restart is forwarded as it was made:
    /// stateless revisions (2026-07-28) require their envelope on every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<JsonText>,
    /// Retry mode: when the approved call was repeated and let through (it runs only once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_ms: Option<u64>,
    /// The stored arguments are redacted but the call forwards the originals (DLP `approve`):
    /// only the waiting request holds them, so the call cannot be forwarded after a restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secrets_withheld: bool,
}

/// Approve or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Let the call run.
    Approve,
    /// Refuse the call.
    Reject,
}

/// One person's decision on a held call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The deciding identity.
    pub by: String,
    /// Approve or reject.
    pub verdict: Verdict,
    /// The reason given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_record_round_trips_through_json() {
        let record = CallRecord {
            id: "0190c1a2-0000-7000-8000-000000000000".into(),
            outcome: Outcome::Blocked,
            rule: RuleRef {
                index: 2,
                name: "no-echo".into(),
            },
            reason: Some("echo is off limits".into()),
            client: "alice".into(),
            server: "everything".into(),
            tool: "echo".into(),
            request_id: serde_json::json!(7),
            session: None,
            protocol_version: Some("2025-11-25".into()),
            arguments: serde_json::json!({"message": "hi"}).into(),
            timings: Timings {
                received_ms: 1,
                decided_ms: 2,
                completed_ms: None,
            },
            error: None,
            args_hash: "ab".into(),
            fingerprint: "cd".into(),
            policy_version: "ef".into(),
            hold: Some(Hold {
                mode: HoldMode::Stream,
                expires_ms: 9,
                quorum: 2,
                approvers: vec!["role:dba".into()],
                progress_token: Some(serde_json::json!("p").into()),
                meta: None,
                retried_ms: None,
                secrets_withheld: false,
            }),
            decisions: vec![Decision {
                by: "bob".into(),
                verdict: Verdict::Approve,
                reason: None,
                at_ms: 3,
            }],
            findings: vec![Finding {
                detector: "jwt".into(),
                path: "/token".into(),
                masked: "eyJh…R8U (91 chars)".into(),
            }],
            shape: "0123456789abcdef".into(),
            signals: Signals {
                repeats: 40,
                window_ms: 60_000,
                looping: true,
                throttled: Some("rate limit \"sums\" refused 3 calls".into()),
            },
        };
        let text = serde_json::to_string(&record).expect("serialize");
        assert!(text.contains("\"outcome\":\"blocked\""), "{text}");
        assert!(
            text.contains("\"arguments\":{\"message\":\"hi\"}"),
            "{text}"
        );
        let back: CallRecord = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, record);
        let again: CallRecord = serde_json::from_str(&text).expect("deserialize");
        assert!(std::sync::Arc::ptr_eq(&back.server, &again.server));
        assert!(std::sync::Arc::ptr_eq(&back.rule.name, &again.rule.name));
        // Inside an internally tagged console message, which serde reads through a buffer.
        let msg = console::ServerMsg::CallPending {
            call: std::sync::Arc::new(record),
        };
        let text = serde_json::to_string(&msg).expect("serialize");
        let back: console::ServerMsg = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, msg);
    }

    #[test]
    fn json_text_is_the_value_in_compact_form_with_its_key_order() {
        let v = serde_json::json!({"z": 1, "a": {"y": [1, 2.5, "x\n"], "b": null}, "m": -0.1});
        let t = JsonText::new(&v);
        assert_eq!(
            t.get(),
            r#"{"z":1,"a":{"y":[1,2.5,"x\n"],"b":null},"m":-0.1}"#
        );
        assert_eq!(t.value(), v);
        assert_eq!(t.to_string(), t.get());
        // Written as the value itself, not as a string holding it.
        let outer = serde_json::to_string(&serde_json::json!({"args": t})).expect("serialize");
        assert_eq!(outer, format!(r#"{{"args":{}}}"#, t.get()));
        // Read from pretty or compact JSON alike, kept compact.
        let back: JsonText = serde_json::from_str(
            "{ \"z\" : 1,\n \"a\": {\"y\": [1, 2.5, \"x\\n\"], \"b\": null}, \"m\": -0.1 }",
        )
        .expect("deserialize");
        assert_eq!(back, t);
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn unhex_reads_back_exactly_n_bytes() {
        assert_eq!(unhex::<3>(" 000FA5 "), Some([0x00, 0x0f, 0xa5]));
        assert_eq!(unhex::<2>(&hex(&[0xab, 0x01])), Some([0xab, 0x01]));
        assert_eq!(unhex::<2>("abc"), None, "too short");
        assert_eq!(unhex::<2>("abcdef"), None, "too long");
        assert_eq!(unhex::<2>("zz00"), None, "not hex");
        assert_eq!(unhex::<1>("é"), None, "not ASCII");
    }

    #[test]
    fn digests_keep_their_text() {
        for text in [
            "",
            "0",
            "ab",
            "0123456789abcdef",
            "abc",
            "ABCDEF",
            "sh-delete",
            "0123456789abcdef0",
        ] {
            let d = Fingerprint::from(text);
            assert_eq!(d.to_string(), text);
            assert!(d.is(text));
            assert_eq!(d.is_empty(), text.is_empty());
            let json = serde_json::to_string(&d).expect("serialize");
            assert_eq!(json, format!("{text:?}"));
            assert_eq!(
                serde_json::from_str::<Fingerprint>(&json).expect("deserialize"),
                d
            );
        }
        // Lowercase hex that fits is packed; anything else is kept as text.
        assert!(matches!(
            Fingerprint::from("0123456789abcdef"),
            Digest::Hex { len: 16, .. }
        ));
        assert!(matches!(Fingerprint::from("ABCDEF"), Digest::Text(_)));
        assert!(matches!(
            Fingerprint::from("0123456789abcdef0"),
            Digest::Text(_)
        ));
        let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(ArgsHash::from(sha).to_string(), sha);
        assert!(matches!(ArgsHash::from(sha), Digest::Hex { len: 64, .. }));
        assert!(!Fingerprint::from("ab").is("abc"));
    }

    #[test]
    fn interned_names_are_shared() {
        let a = intern("everything");
        let b = intern(&String::from("everything"));
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "everything");
        assert!(!std::sync::Arc::ptr_eq(&a, &intern("everything-else")));
    }

    #[test]
    fn outcome_names_match_serde_names() {
        for o in [
            Outcome::Allowed,
            Outcome::Blocked,
            Outcome::Pending,
            Outcome::Approved,
            Outcome::Rejected,
            Outcome::Expired,
            Outcome::Cancelled,
            Outcome::Abandoned,
            Outcome::RateLimited,
        ] {
            let json = serde_json::to_value(o).expect("serialize");
            assert_eq!(json, serde_json::Value::String(o.as_str().to_string()));
        }
    }
}
