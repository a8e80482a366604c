//! DLP: finding secrets in tool arguments before anyone else sees them.
//!
//! [`Scanner::scan`] walks every string of the arguments at any depth (object values, array
//! items, and object keys' values by name) and reports each [`Finding`] with the JSON pointer
//! where it was found and a masked excerpt; the secret itself never leaves this module except
//! through [`redact`], which replaces it in place. Detectors: cloud keys (AWS, GCP, Azure),
//! GitHub/GitLab/Slack/Stripe tokens, private key blocks, JWTs, passwords in URLs, credit card
//! numbers (Luhn-checked), fields named like secrets, high-entropy strings, and custom regexes
//! from the config. A secret split over several values of one object is found by also scanning
//! the object's string values joined together.

use regex::Regex;
use serde_json::Value;
use tollgate_shared::Finding;

/// A detector: a name and how to find its secrets in a string.
struct Detector {
    name: String,
    regex: Regex,
    /// Capture group holding the secret (0: the whole match).
    group: usize,
    /// Digits must pass the Luhn check (card numbers).
    luhn: bool,
}

/// The high-entropy detector's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entropy {
    /// Shortest run of token characters considered.
    pub min_length: usize,
    /// Shannon entropy (bits per character) at or above which a run is reported.
    pub bits: f64,
}

impl Default for Entropy {
    fn default() -> Entropy {
        // Hex digests and UUIDs stay below 4 bits per character; random base64 of 40+
        // characters is above 5.
        Entropy {
            min_length: 40,
            bits: 4.5,
        }
    }
}

/// All detectors, compiled once.
pub struct Scanner {
    detectors: Vec<Detector>,
    /// The literals one of which every match of a built-in detector contains ([`NEEDLES`]),
    /// found in one pass: a built-in detector runs
    /// on a string only when one of its literals is in it. Most strings hold none, and one pass
    /// of this automaton is several times cheaper than the detectors' regexes, which have no
    /// common literal to skip ahead by.
    needles: Option<aho_corasick::AhoCorasick>,
    /// For each needle, the detector it stands for.
    needle_of: Vec<usize>,
    /// The custom detectors' patterns in one set: one pass over a string says which of them can
    /// match it, so only those run.
    custom: Option<regex::RegexSet>,
    entropy: Option<Entropy>,
    secret_field: Regex,
}

/// For each built-in detector (in [`BUILT_IN`]'s order), literals one of which every match
/// contains. Empty for the card numbers, which need 13 digits instead.
const NEEDLES: [&[&str]; 13] = [
    &["AKIA", "ASIA"],
    // The detector ignores case here (and only here).
    &["aws", "awS", "aWs", "aWS", "Aws", "AwS", "AWs", "AWS"],
    &["AIza"],
    &["AccountKey="],
    &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
    &["glpat-"],
    &["xox"],
    &["hooks.slack.com"],
    &["_live_"],
    &["-----BEGIN "],
    &["eyJ"],
    &["://"],
    &[],
];

/// Index of the card-number detector in [`BUILT_IN`].
const CREDIT_CARD: usize = 12;

/// Fewest digits in a card number the detector reports.
const CARD_DIGITS: usize = 13;

/// Whether `s` has what every match of the card-number detector has: a run of
/// [`CARD_DIGITS`] digits or more, each after the first preceded by at most one space or
/// hyphen, whose first digit is at a word boundary (not right after a letter, digit or `_`).
fn card_like(s: &str) -> bool {
    let b = s.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    // Digits of the current run (0: none, or one that did not start at a word boundary).
    let (mut digits, mut after_separator) = (0, false);
    for (i, &c) in b.iter().enumerate() {
        if c.is_ascii_digit() {
            if digits > 0 {
                digits += 1;
            } else if i == 0 || !word(b[i - 1]) {
                digits = 1;
            }
            if digits >= CARD_DIGITS {
                return true;
            }
            after_separator = false;
        } else if (c == b' ' || c == b'-') && digits > 0 && !after_separator {
            after_separator = true;
        } else {
            digits = 0;
            after_separator = false;
        }
    }
    false
}

/// How far on each side of the boundary between two neighbouring values a split secret is
/// looked for (longer values are cut to this much around the join).
const SPLIT_WINDOW: usize = 1024;

/// Characters of the tokens the entropy detector measures.
fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-')
}

/// The last `n` bytes of `s` (or fewer, at a character boundary).
fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// The first `n` bytes of `s` (or fewer, at a character boundary).
fn head(s: &str, n: usize) -> &str {
    let mut at = n.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[..at]
}

fn re(s: &str) -> Regex {
    // The built-in patterns are constants checked by the tests below.
    Regex::new(s).unwrap_or_else(|_| Regex::new("$^").unwrap_or_else(|_| unreachable!()))
}

// Word boundaries are ASCII ones (`(?-u:\b)`): Unicode boundaries would keep the regex engine
// off its fast path (the lazy DFA), several times slower on every string scanned.
const BUILT_IN: [(&str, &str, usize, bool); 13] = [
    (
        "aws_access_key",
        r"(?-u:\b)(?:AKIA|ASIA)[0-9A-Z]{16}(?-u:\b)",
        0,
        false,
    ),
    (
        "aws_secret_key",
        r"(?i)aws.{0,20}?(?:secret|sk).{0,20}?([A-Za-z0-9/+=]{40})(?-u:\b)",
        1,
        false,
    ),
    (
        "gcp_api_key",
        r"(?-u:\b)AIza[0-9A-Za-z\-_]{35}(?-u:\b)",
        0,
        false,
    ),
    (
        "azure_storage_key",
        r"AccountKey=([A-Za-z0-9+/=]{86,88})",
        1,
        false,
    ),
    (
        "github_token",
        r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?-u:\b)",
        0,
        false,
    ),
    (
        "gitlab_token",
        r"(?-u:\b)glpat-[A-Za-z0-9\-_]{20,}(?-u:\b)",
        0,
        false,
    ),
    (
        "slack_token",
        r"(?-u:\b)xox[baprs]-[A-Za-z0-9-]{10,}(?-u:\b)",
        0,
        false,
    ),
    (
        "slack_webhook",
        r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+",
        0,
        false,
    ),
    (
        "stripe_key",
        r"(?-u:\b)(?:sk|rk)_live_[0-9a-zA-Z]{24,}(?-u:\b)",
        0,
        false,
    ),
    (
        "private_key",
        r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----(?:(?s:.)*?-----END (?:[A-Z]+ )*PRIVATE KEY-----)?",
        0,
        false,
    ),
    (
        "jwt",
        r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        0,
        false,
    ),
    (
        "url_password",
        r"[A-Za-z][A-Za-z0-9+.-]*://[^/ \t\r\n:@]+:([^/ \t\r\n@]+)@",
        1,
        false,
    ),
    (
        "credit_card",
        r"(?-u:\b)(?:[0-9][ -]?){12,18}[0-9](?-u:\b)",
        0,
        true,
    ),
];

fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn shannon(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// What the masked form of a secret shows: its first and last 4 characters when it is long
/// enough that this gives nothing useful away, else only stars.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() >= 16 {
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}…{tail} ({} chars)", chars.len())
    } else {
        format!("{} ({} chars)", "*".repeat(chars.len().min(8)), chars.len())
    }
}

/// A secret's place in one string.
struct Hit<'s> {
    detector: &'s str,
    start: usize,
    end: usize,
}

/// The most findings one call's arguments may have. Past this the scan stops and the call is
/// refused, whatever its rule says: findings are kept in the call's record and shown to
/// approvers, and no honest call carries hundreds of credentials. (A 4 MB argument repeating
/// one key 190 000 times once cost seconds of CPU; with this bound, and scanning and
/// redaction linear in the size, it costs the one regex pass.)
pub const MAX_FINDINGS: usize = 256;

/// The arguments held more than [`MAX_FINDINGS`] secrets; scanning stopped there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the arguments hold more than {MAX_FINDINGS} secrets")]
pub struct TooManySecrets;

impl Scanner {
    /// Built-in detectors, the entropy detector (`None` turns it off) and custom `(name, regex)`
    /// detectors.
    pub fn new(entropy: Option<Entropy>, custom: &[(String, Regex)]) -> Scanner {
        let mut detectors: Vec<Detector> = BUILT_IN
            .iter()
            .map(|(name, pattern, group, luhn)| Detector {
                name: (*name).into(),
                regex: re(pattern),
                group: *group,
                luhn: *luhn,
            })
            .collect();
        detectors.extend(custom.iter().map(|(name, regex)| Detector {
            name: name.clone(),
            regex: regex.clone(),
            group: 0,
            luhn: false,
        }));
        let custom = (!custom.is_empty())
            .then(|| {
                regex::RegexSet::new(detectors[BUILT_IN.len()..].iter().map(|d| d.regex.as_str()))
                    .ok()
            })
            .flatten();
        let (mut words, mut needle_of) = (Vec::new(), Vec::new());
        for (i, list) in NEEDLES.iter().enumerate() {
            for w in *list {
                words.push(*w);
                needle_of.push(i);
            }
        }
        // Leftmost-first, not overlapping: only that search skips ahead with a vectorised
        // prefilter (an overlapping one reads every byte, costing as much as the regexes).
        let needles = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostFirst)
            .build(&words)
            .ok();
        Scanner {
            detectors,
            needles,
            needle_of,
            custom,
            entropy,
            secret_field: re(
                r"(?i)^(?:password|passwd|pwd|secret|client_secret|api[_-]?key|apikey|access[_-]?token|auth[_-]?token|refresh[_-]?token|private[_-]?key|credentials?)$",
            ),
        }
    }

    /// The secrets in one string, in order, without overlaps. Linear in the string's length and
    /// its number of hits.
    fn hits(&self, s: &str) -> Vec<Hit<'_>> {
        let mut out: Vec<Hit<'_>> = Vec::new();
        let mut candidates = [false; BUILT_IN.len()];
        match &self.needles {
            Some(ac) => {
                // Resumed one byte after each match's start, so a needle overlapping another
                // is still found (no needle is a prefix of another).
                let mut at = 0;
                while let Some(m) = ac.find(aho_corasick::Input::new(s).span(at..s.len())) {
                    candidates[self.needle_of[m.pattern().as_usize()]] = true;
                    at = m.start() + 1;
                }
            }
            None => candidates = [true; BUILT_IN.len()],
        }
        candidates[CREDIT_CARD] = card_like(s);
        let mut candidates: Vec<usize> = (0..BUILT_IN.len()).filter(|i| candidates[*i]).collect();
        match &self.custom {
            Some(set) => candidates.extend(set.matches(s).into_iter().map(|i| BUILT_IN.len() + i)),
            None => candidates.extend(BUILT_IN.len()..self.detectors.len()),
        }
        for d in candidates.into_iter().map(|i| &self.detectors[i]) {
            for caps in d.regex.captures_iter(s) {
                let Some(m) = caps.get(d.group) else { continue };
                if d.luhn && !luhn(m.as_str()) {
                    continue;
                }
                out.push(Hit {
                    detector: &d.name,
                    start: m.start(),
                    end: m.end(),
                });
            }
        }
        out.sort_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
        if let Some(e) = self.entropy {
            // Whether a token overlaps a detector's hit: the hits starting before the token ends
            // are a prefix of `out`, and one of them overlaps if the furthest any of them reaches
            // is past the token's start.
            let mut reach = Vec::with_capacity(out.len());
            let mut furthest = 0;
            for h in &out {
                furthest = furthest.max(h.end);
                reach.push(furthest);
            }
            let covered = |start: usize, end: usize| {
                let before = out.partition_point(|h| h.start < end);
                before > 0 && reach[before - 1] > start
            };
            let mut found = Vec::new();
            let b = s.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if !token_byte(b[i]) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < b.len() && token_byte(b[i]) {
                    i += 1;
                }
                let token = &s[start..i];
                if token.len() >= e.min_length && !covered(start, i) && shannon(token) >= e.bits {
                    found.push(Hit {
                        detector: "high_entropy",
                        start,
                        end: i,
                    });
                }
            }
            if !found.is_empty() {
                out.extend(found);
                out.sort_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
            }
        }
        // Keep the first (longest) hit of overlapping ones.
        let mut kept: Vec<Hit<'_>> = Vec::with_capacity(out.len());
        for h in out {
            if kept.last().is_none_or(|k| h.start >= k.end) {
                kept.push(h);
            }
        }
        kept
    }

    /// Every secret in the arguments, or [`TooManySecrets`] once there are more than
    /// [`MAX_FINDINGS`].
    pub fn scan(&self, args: &Value) -> Result<Vec<Finding>, TooManySecrets> {
        let mut out = Vec::new();
        self.walk(args, &mut String::new(), &mut out)?;
        Ok(out)
    }

    fn walk(
        &self,
        v: &Value,
        path: &mut String,
        out: &mut Vec<Finding>,
    ) -> Result<(), TooManySecrets> {
        let full = |out: &Vec<Finding>| {
            if out.len() > MAX_FINDINGS {
                Err(TooManySecrets)
            } else {
                Ok(())
            }
        };
        match v {
            Value::String(s) => {
                let hits = self.hits(s);
                if out.len() + hits.len() > MAX_FINDINGS {
                    return Err(TooManySecrets);
                }
                for h in hits {
                    out.push(Finding {
                        detector: h.detector.to_string(),
                        path: path.clone(),
                        masked: mask(&s[h.start..h.end]),
                    });
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("/{i}"));
                    self.walk(item, path, out)?;
                    path.truncate(len);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    if let Value::String(s) = item
                        && !s.is_empty()
                        && !s.starts_with("[REDACTED:")
                        && self.secret_field.is_match(k)
                        && !self
                            .hits(s)
                            .iter()
                            .any(|h| h.start == 0 && h.end == s.len())
                    {
                        out.push(Finding {
                            detector: "secret_field".into(),
                            path: path.clone(),
                            masked: mask(s),
                        });
                        full(out)?;
                    }
                    self.walk(item, path, out)?;
                    path.truncate(len);
                }
                // A secret split over two neighbouring string values of this object.
                let parts: Vec<&str> = map
                    .values()
                    .filter_map(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .collect();
                for pair in parts.windows(2) {
                    let (a, b) = (tail(pair[0], SPLIT_WINDOW), head(pair[1], SPLIT_WINDOW));
                    let joined = format!("{a}{b}");
                    for h in self.hits(&joined) {
                        if h.start < a.len() && h.end > a.len() {
                            out.push(Finding {
                                detector: format!("{} (split across keys)", h.detector),
                                path: path.clone(),
                                masked: mask(&joined[h.start..h.end]),
                            });
                            full(out)?;
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Replace every secret in the arguments with `[REDACTED:<detector>]`; a secret split over
    /// several values blanks each value it touches. Returns how many were replaced.
    pub fn redact(&self, args: &mut Value) -> usize {
        self.redact_keeping(args, &mut Vec::new())
    }

    /// [`redact`](Scanner::redact), and push each text replaced onto `found`: the secrets
    /// themselves, for a [`super::Scrub`] to keep out of other texts (they are kept in memory
    /// only, for as long as the call lasts).
    pub fn redact_keeping(&self, args: &mut Value, found: &mut Vec<String>) -> usize {
        match args {
            Value::String(s) => {
                let hits = self.hits(s);
                if hits.is_empty() {
                    return 0;
                }
                // Built once: replacing in place moved the rest of the string for every hit,
                // quadratic in the number of hits.
                let mut out = String::with_capacity(s.len());
                let mut at = 0;
                for h in &hits {
                    out.push_str(&s[at..h.start]);
                    found.push(s[h.start..h.end].to_string());
                    out.push_str("[REDACTED:");
                    out.push_str(h.detector);
                    out.push(']');
                    at = h.end;
                }
                out.push_str(&s[at..]);
                let n = hits.len();
                *s = out;
                n
            }
            Value::Array(items) => items
                .iter_mut()
                .map(|i| self.redact_keeping(i, found))
                .sum(),
            Value::Object(map) => {
                let mut n = 0;
                let keys: Vec<String> = map.keys().cloned().collect();
                for k in &keys {
                    if let Some(item) = map.get_mut(k) {
                        if let Value::String(s) = item
                            && !s.is_empty()
                            && !s.starts_with("[REDACTED:")
                            && self.secret_field.is_match(k)
                        {
                            let secret = std::mem::replace(
                                item,
                                Value::String("[REDACTED:secret_field]".into()),
                            );
                            found.extend(secret.as_str().map(str::to_string));
                            n += 1;
                            continue;
                        }
                        n += self.redact_keeping(item, found);
                    }
                }
                // Each value's ends, around where it meets its neighbours (not the values:
                // copying them all doubled the memory a large call costs).
                let parts: Vec<(String, String, String)> = map
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s)))
                    .filter(|(_, s)| !s.is_empty())
                    .map(|(k, s)| {
                        let (h, t) = (head(s, SPLIT_WINDOW), tail(s, SPLIT_WINDOW));
                        (k.clone(), h.to_string(), t.to_string())
                    })
                    .collect();
                for pair in parts.windows(2) {
                    let (a, b) = (&pair[0].2, &pair[1].1);
                    let joined = format!("{a}{b}");
                    let cut = a.len();
                    if let Some(h) = self
                        .hits(&joined)
                        .into_iter()
                        .find(|h| h.start < cut && h.end > cut)
                    {
                        found.push(joined[h.start..cut].to_string());
                        found.push(joined[cut..h.end].to_string());
                        for (k, ..) in pair {
                            map.insert(
                                k.clone(),
                                Value::String(format!("[REDACTED:{}]", h.detector)),
                            );
                        }
                        n += 1;
                    }
                }
                n
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scanner() -> Scanner {
        Scanner::new(
            Some(Entropy::default()),
            &[(
                "internal_token".into(),
                Regex::new(r"itk_[a-z0-9]{16}").expect("regex"),
            )],
        )
    }

    fn detectors(v: Value) -> Vec<String> {
        scanner()
            .scan(&v)
            .expect("few secrets")
            .into_iter()
            .map(|f| f.detector)
            .collect()
    }

    #[test]
    fn built_in_patterns_compile() {
        for (name, pattern, ..) in BUILT_IN {
            assert!(Regex::new(pattern).is_ok(), "{name}");
        }
    }

    #[test]
    fn each_detector_finds_its_secret() {
        let cases = [
            ("aws_access_key", "key AKIAIOSFODNN7EXAMPLE here"),
            (
                "aws_secret_key",
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            ),
            ("gcp_api_key", "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI"),
            (
                "azure_storage_key",
                "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;",
            ),
            ("github_token", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
            ("gitlab_token", "glpat-xxxxxxxxxxxxxxxxxxxx"),
            ("slack_token", "xoxb-1234567890-abcdefghij"),
            (
                "slack_webhook",
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            ),
            ("stripe_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
            (
                "private_key",
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
            ),
            (
                "jwt",
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            ),
            (
                "url_password",
                "postgres://admin:hunter2@db.internal:5432/app",
            ),
            ("credit_card", "card 4111 1111 1111 1111 exp 12/29"),
            (
                "high_entropy",
                "token Zx8Kq2LmN9pR4sT7vW1yB3dF6gH0jK5nQ8rU2wX4zA7cE9",
            ),
            ("internal_token", "itk_0123456789abcdef"),
        ];
        for (want, text) in cases {
            let got = detectors(json!({"value": text}));
            assert!(got.iter().any(|d| d == want), "{want}: {got:?} in {text:?}");
        }
    }

    #[test]
    fn ordinary_values_are_not_secrets() {
        for text in [
            "SELECT * FROM orders WHERE id = 4111",
            "0190c1a2-0000-7000-8000-000000000000",
            "3b4c9d2a41c07be3f5e1ab23cd45ef67890a1b2c3d4e5f60718293a4b5c6d7e8",
            "https://example.com/path?q=1",
            "card 4111 1111 1111 1112",
            "the quick brown fox jumps over the lazy dog",
        ] {
            assert!(detectors(json!({"value": text})).is_empty(), "{text}");
        }
        assert!(detectors(json!({"password": ""})).is_empty());
    }

    #[test]
    fn secrets_are_found_deep_in_arrays_by_field_name_and_split_across_keys() {
        let v = json!({"a": [{"b": {"c": ["x", "AKIAIOSFODNN7EXAMPLE"]}}]});
        let f = scanner().scan(&v).expect("few secrets");
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].detector.as_str(), f[0].path.as_str()),
            ("aws_access_key", "/a/0/b/c/1")
        );
        let f = scanner()
            .scan(&json!({"db": {"password": "hunter2"}}))
            .expect("few secrets");
        assert_eq!(
            (f[0].detector.as_str(), f[0].path.as_str()),
            ("secret_field", "/db/password")
        );
        let split = scanner()
            .scan(&json!({"part1": "AKIAIOSF", "part2": "ODNN7EXAMPLE"}))
            .expect("few secrets");
        assert!(
            split
                .iter()
                .any(|f| f.detector == "aws_access_key (split across keys)"),
            "{split:?}"
        );
    }

    #[test]
    fn masks_and_redaction_never_show_the_secret() {
        let secret = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
        let mut v = json!({"note": format!("use {secret} please"), "nested": [{"password": "hunter2"}], "a": "AKIAIOSF", "b": "ODNN7EXAMPLE"});
        let f = scanner().scan(&v).expect("few secrets");
        for finding in &f {
            assert!(
                !finding.masked.contains(secret) && !finding.masked.contains("hunter2"),
                "{finding:?}"
            );
        }
        assert_eq!(mask(secret), "ghp_…8B4a (40 chars)");
        let n = scanner().redact(&mut v);
        assert!(n >= 3);
        let text = v.to_string();
        assert!(
            !text.contains(secret) && !text.contains("hunter2") && !text.contains("ODNN7EXAMPLE"),
            "{text}"
        );
        assert!(
            text.contains("use [REDACTED:github_token] please"),
            "{text}"
        );
        assert!(
            scanner().scan(&v).expect("few secrets").is_empty(),
            "redacted arguments scan clean: {text}"
        );
    }

    #[test]
    fn redaction_rebuilds_the_string_once_around_every_hit() {
        let ghp = "ghp_aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6";
        let mut v = json!({"t": format!("a AKIAIOSFODNN7EXAMPLE b {ghp} c AKIAIOSFODNN7EXAMPLX")});
        assert_eq!(scanner().redact(&mut v), 3);
        assert_eq!(
            v["t"],
            "a [REDACTED:aws_access_key] b [REDACTED:github_token] c [REDACTED:aws_access_key]"
        );
        // A token both a detector and the entropy detector see is one finding, the detector's.
        let f = scanner().scan(&json!({ "t": ghp })).expect("few secrets");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].detector, "github_token");
    }

    #[test]
    fn past_the_finding_limit_the_scan_stops() {
        let many = "AKIAIOSFODNN7EXAMPLE ".repeat(MAX_FINDINGS + 1);
        assert_eq!(scanner().scan(&json!({ "t": many })), Err(TooManySecrets));
        let spread: Vec<Value> = (0..=MAX_FINDINGS)
            .map(|_| json!({"password": "x"}))
            .collect();
        assert_eq!(scanner().scan(&json!(spread)), Err(TooManySecrets));
        let enough = "AKIAIOSFODNN7EXAMPLE ".repeat(MAX_FINDINGS);
        assert_eq!(
            scanner().scan(&json!({ "t": enough })).map(|f| f.len()),
            Ok(MAX_FINDINGS)
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Pieces of secrets and of their look-alikes, in every case, to string together.
        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("AKIAIOSFODNN7EXAMPLE".to_string()),
                Just("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string()),
                Just("AIzaSyA1234567890abcdefghijklmnopqrstu".to_string()),
                Just("AccountKey=".to_string()),
                Just("ghp_".to_string()),
                Just("github_pat_".to_string()),
                Just("glpat-".to_string()),
                Just("xoxb-".to_string()),
                Just("https://hooks.slack.com/services/T0/B0/x".to_string()),
                Just("sk_live_".to_string()),
                Just("-----BEGIN RSA PRIVATE KEY-----".to_string()),
                Just("-----END RSA PRIVATE KEY-----".to_string()),
                Just("eyJ".to_string()),
                Just("postgres://user:pw@".to_string()),
                Just("4111 1111 1111 1111".to_string()),
                Just(".".to_string()),
                "[A-Za-z0-9/+=_-]{1,48}",
                "[0-9 -]{1,20}",
                "[ -~]{0,12}",
            ]
            .prop_flat_map(|p| (Just(p), any::<bool>()))
            .prop_map(|(p, upper)| if upper { p.to_uppercase() } else { p })
        }

        proptest! {
            /// The needles only skip detectors that could not match: the findings are those of
            /// running every detector on every string.
            #[test]
            fn the_literal_prefilter_never_changes_what_is_found(
                parts in prop::collection::vec(piece(), 1..12)
            ) {
                let text = parts.concat();
                let filtered = scanner();
                let mut every = scanner();
                every.needles = None;
                let found = |s: &Scanner| {
                    s.hits(&text)
                        .iter()
                        .map(|h| (h.detector.to_string(), h.start, h.end))
                        .collect::<Vec<_>>()
                };
                prop_assert_eq!(found(&filtered), found(&every));
            }
        }
    }
}
