//! Rate limits: token buckets per client, per server, per tool or for everyone, configured with
//! `[[limit]]` tables.
//!
//! A limit applies to calls whose `server/tool` matches its patterns. Each limit keeps one
//! bucket per key (the client, the server, the tool, or one for all), holding up to `burst`
//! tokens and refilling at the limit's rate. A call takes one token from every bucket it
//! falls in, or from none: when any bucket is empty the call is refused and told when a token
//! will be there. [`Limiter::check`] is pure over its state and the time given to it.

use std::collections::HashMap;

use tollgate_shared::sync::Mutex;

use crate::glob::ToolPattern;

/// Whose calls share a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Each client identity.
    Client,
    /// Each upstream server.
    Server,
    /// Each `server/tool`.
    Tool,
    /// Everyone together.
    Global,
}

impl Scope {
    /// As in the config and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Client => "per client",
            Scope::Server => "per server",
            Scope::Tool => "per tool",
            Scope::Global => "for everyone",
        }
    }
}

/// One configured limit.
#[derive(Debug, Clone)]
pub struct Limit {
    /// Name for messages and the audit trail.
    pub name: String,
    /// Calls it applies to.
    pub tools: Vec<ToolPattern>,
    /// Whose calls share a bucket.
    pub scope: Scope,
    /// Tokens per `per_ms`.
    pub count: u32,
    /// The rate's period in ms.
    pub per_ms: u64,
    /// Bucket size (default `count`).
    pub burst: u32,
    /// The rate as written, for messages ("60/min").
    pub text: String,
}

/// Parse `"60/min"`, `"10/s"`, `"1000/h"`, `"5/d"` into (count, period ms).
pub fn parse_rate(s: &str) -> Option<(u32, u64)> {
    let (n, unit) = s.split_once('/')?;
    let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => 1_000,
        "m" | "min" | "minute" => 60_000,
        "h" | "hour" => 3_600_000,
        "d" | "day" => 86_400_000,
        _ => return None,
    };
    Some((n, per))
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// A refusal: which limit, and how long until a token is back.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// The limit's name.
    pub limit: String,
    /// Its rate and scope, e.g. "3/min per client".
    pub rule: String,
    /// Milliseconds until the call would be let through.
    pub retry_after_ms: u64,
}

/// All limits and their buckets.
pub struct Limiter {
    limits: Vec<Limit>,
    buckets: Mutex<HashMap<(usize, String), Bucket>>,
}

impl Limiter {
    /// The limits it enforces.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// A limiter for these limits.
    pub fn new(limits: Vec<Limit>) -> Limiter {
        Limiter {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// True when no limit is configured.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Take a token for this call from every bucket it falls in, or refuse it.
    pub fn check(
        &self,
        server: &str,
        tool: &str,
        client: &str,
        now_ms: u64,
    ) -> Result<(), Limited> {
        let mut buckets = self.buckets.lock();
        let mut taking = Vec::new();
        for (i, l) in self.limits.iter().enumerate() {
            if !l.tools.iter().any(|p| p.matches(server, tool)) {
                continue;
            }
            let key = match l.scope {
                Scope::Client => client.to_string(),
                Scope::Server => server.to_string(),
                Scope::Tool => format!("{server}/{tool}"),
                Scope::Global => String::new(),
            };
            let rate = l.count as f64 / l.per_ms as f64;
            let b = buckets.entry((i, key.clone())).or_insert(Bucket {
                tokens: l.burst as f64,
                at_ms: now_ms,
            });
            let tokens =
                (b.tokens + rate * now_ms.saturating_sub(b.at_ms) as f64).min(l.burst as f64);
            if tokens < 1.0 {
                return Err(Limited {
                    limit: l.name.clone(),
                    rule: format!("{} {}", l.text, l.scope.as_str()),
                    retry_after_ms: ((1.0 - tokens) / rate).ceil() as u64,
                });
            }
            taking.push(((i, key), tokens));
        }
        for (k, tokens) in taking {
            buckets.insert(
                k,
                Bucket {
                    tokens: tokens - 1.0,
                    at_ms: now_ms,
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(scope: Scope, rate: &str, pattern: &str) -> Limit {
        let (count, per_ms) = parse_rate(rate).expect("rate");
        Limit {
            name: "l".into(),
            tools: vec![ToolPattern::new(pattern).expect("pattern")],
            scope,
            count,
            per_ms,
            burst: count,
            text: rate.into(),
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("60/min"), Some((60, 60_000)));
        assert_eq!(parse_rate("10/s"), Some((10, 1_000)));
        assert_eq!(parse_rate("0/s"), None);
        assert_eq!(parse_rate("5 per minute"), None);
    }

    #[test]
    fn a_bucket_empties_refills_and_says_when_to_retry() {
        let l = Limiter::new(vec![limit(Scope::Client, "3/min", "db/*")]);
        for _ in 0..3 {
            assert!(l.check("db", "q", "a", 0).is_ok());
        }
        let e = l.check("db", "q", "a", 0).expect_err("fourth");
        assert_eq!(e.retry_after_ms, 20_000);
        assert_eq!(e.rule, "3/min per client");
        assert!(
            l.check("db", "q", "b", 0).is_ok(),
            "another client has its own bucket"
        );
        assert!(
            l.check("fs", "q", "a", 0).is_ok(),
            "another server is not limited"
        );
        assert!(l.check("db", "q", "a", 19_999).is_err());
        assert!(
            l.check("db", "q", "a", 20_000).is_ok(),
            "one token back after 20 s"
        );
    }

    #[test]
    fn a_refused_call_takes_no_token_from_other_buckets() {
        let l = Limiter::new(vec![
            limit(Scope::Global, "10/min", "*"),
            limit(Scope::Tool, "1/min", "db/drop"),
        ]);
        assert!(l.check("db", "drop", "a", 0).is_ok());
        assert!(l.check("db", "drop", "a", 0).is_err());
        // The refused call did not spend a global token: 9 remain.
        for _ in 0..9 {
            assert!(l.check("db", "select", "a", 0).is_ok());
        }
        assert!(l.check("db", "select", "a", 0).is_err());
    }
}
