//! The queue's filter, compiled once when it is set and then matched against each call.
//!
//! Words are ANDed. A word is `[-][FIELD:]VALUE[|VALUE...]`:
//!
//! - `FIELD` is `server`, `tool`, `client`, `arg` (any argument's text) or `arg.PATH` (the
//!   argument at a dotted path, `arg.options.mode`; an array matches when any element does);
//!   without a field the value is looked for in server/tool, client and the arguments' text.
//!   A `tool` value with a `/` is matched against `server/tool`.
//! - `VALUE` matches anywhere in the field (`tool:write` matches `write_file`), unless it has a
//!   `*` or `?`: then it is a glob over the whole field (`tool:read_*`, `arg.path:/etc/*`).
//! - `|` separates alternatives (`tool:write_file|delete_file`), `-` negates the word
//!   (`-tool:read_*`), and double quotes keep spaces (`arg.query:"drop table*"`).
//!
//! Case never matters. `approver:` and `status:` words are for the audit view and match every
//! pending call.

use tollgate_shared::CallRecord;

/// A compiled filter. The empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    words: Vec<Word>,
    /// Field names that are not fields (`tol:read`), searched as text instead; the console says
    /// so when the filter is set.
    pub unknown: Vec<String>,
    /// Whether any word reads argument values (each call's arguments are parsed to match).
    by_arg: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Word {
    negate: bool,
    field: Field,
    alternatives: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Any,
    Server,
    Tool,
    Client,
    Args,
    Arg(Vec<String>),
    /// `approver:` and `status:`: audit-only, true for pending calls.
    AuditOnly,
}

#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    Contains(String),
    Glob(Vec<char>),
}

impl Pattern {
    fn new(value: &str) -> Pattern {
        let v = value.to_lowercase();
        if v.contains(['*', '?']) {
            Pattern::Glob(v.chars().collect())
        } else {
            Pattern::Contains(v)
        }
    }

    /// `text` must already be lower case.
    fn matches(&self, text: &str) -> bool {
        match self {
            Pattern::Contains(v) => text.contains(v.as_str()),
            Pattern::Glob(g) => glob(g, text),
        }
    }
}

/// Whole-string glob: `*` any run, `?` one character. Linear backtracking over the last `*`.
fn glob(pattern: &[char], text: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < t.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, i));
                p += 1;
            }
            Some(&c) if c == '?' || c == t[i] => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Split on whitespace, keeping double-quoted runs together (the quotes are dropped).
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for ch in text.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

impl Filter {
    /// Compile the filter text.
    pub fn new(text: &str) -> Filter {
        let mut f = Filter::default();
        for w in words(text) {
            let (negate, w) = match w.strip_prefix('-') {
                Some(rest) if !rest.is_empty() => (true, rest.to_string()),
                _ => (false, w),
            };
            let (field, value) = match w.split_once(':') {
                Some((name, value)) => match name.to_lowercase().as_str() {
                    "server" => (Field::Server, value),
                    "tool" => (Field::Tool, value),
                    "client" => (Field::Client, value),
                    "arg" | "args" => (Field::Args, value),
                    "approver" | "status" => (Field::AuditOnly, value),
                    n if n.starts_with("arg.") && n.len() > 4 => (
                        Field::Arg(name[4..].split('.').map(str::to_string).collect()),
                        value,
                    ),
                    // A URL or a `key: value` text: searched as it is.
                    _ => {
                        let looks_like_field = !name.is_empty()
                            && !value.starts_with("//")
                            && name.chars().all(|c| c.is_alphanumeric() || c == '.');
                        if looks_like_field {
                            f.unknown.push(name.to_string());
                        }
                        (Field::Any, w.as_str())
                    }
                },
                None => (Field::Any, w.as_str()),
            };
            f.by_arg |= matches!(field, Field::Arg(_));
            let alternatives = value.split('|').map(Pattern::new).collect();
            f.words.push(Word {
                negate,
                field,
                alternatives,
            });
        }
        f
    }

    /// Whether the filter is empty (matches every call).
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Whether the call matches every word.
    pub fn matches(&self, c: &CallRecord) -> bool {
        if self.words.is_empty() {
            return true;
        }
        let args = if self.by_arg {
            Some(c.arguments.value())
        } else {
            None
        };
        let mut any: Option<String> = None;
        self.words.iter().all(|w| {
            let hit = match &w.field {
                Field::AuditOnly => true,
                Field::Server => w.any(&c.server.to_lowercase()),
                Field::Client => w.any(&c.client.to_lowercase()),
                Field::Tool => w.alternatives.iter().any(|p| {
                    let with_server = match p {
                        Pattern::Contains(v) => v.contains('/'),
                        Pattern::Glob(g) => g.contains(&'/'),
                    };
                    if with_server {
                        p.matches(&format!("{}/{}", c.server, c.tool).to_lowercase())
                    } else {
                        p.matches(&c.tool.to_lowercase())
                    }
                }),
                Field::Args => w.any(&c.arguments.get().to_lowercase()),
                Field::Arg(path) => {
                    let mut values = Vec::new();
                    if let Some(v) = args.as_ref() {
                        leaves(v, path, &mut values);
                    }
                    values.iter().any(|v| w.any(&v.to_lowercase()))
                }
                Field::Any => {
                    let hay = any.get_or_insert_with(|| {
                        format!("{}/{} {} {}", c.server, c.tool, c.client, c.arguments.get())
                            .to_lowercase()
                    });
                    w.any(hay)
                }
            };
            hit != w.negate
        })
    }
}

impl Word {
    fn any(&self, text: &str) -> bool {
        self.alternatives.iter().any(|p| p.matches(text))
    }
}

/// The values at `path` in `v` as text (strings as they are, anything else as JSON); an array
/// on the way or at the end contributes each element.
fn leaves(v: &serde_json::Value, path: &[String], out: &mut Vec<String>) {
    use serde_json::Value;
    match (path.split_first(), v) {
        (None, Value::Array(items)) => items.iter().for_each(|i| leaves(i, path, out)),
        (None, Value::String(s)) => out.push(s.clone()),
        (None, other) => out.push(other.to_string()),
        (Some((key, rest)), Value::Object(map)) => {
            if let Some(next) = map.get(key) {
                leaves(next, rest, out);
            }
        }
        (Some((key, rest)), Value::Array(items)) => match key.parse::<usize>() {
            Ok(i) => {
                if let Some(next) = items.get(i) {
                    leaves(next, rest, out);
                }
            }
            Err(_) => items.iter().for_each(|i| leaves(i, path, out)),
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_the_whole_text_and_backtrack() {
        let g = |p: &str, t: &str| glob(&p.chars().collect::<Vec<_>>(), t);
        assert!(g("read_*", "read_file"));
        assert!(!g("read_*", "xread_file"));
        assert!(g("/etc/*", "/etc/passwd"));
        assert!(g("*a*b*c", "xxaxxbxxbc"));
        assert!(!g("*a*b*c", "xxaxxbxxb"));
        assert!(g("?at", "cat"));
        assert!(!g("?at", "at"));
        assert!(g("*", ""));
    }

    #[test]
    fn a_url_is_text_and_a_misspelt_field_is_named() {
        assert!(Filter::new("https://example.com/x").unknown.is_empty());
        assert_eq!(Filter::new("tol:read").unknown, vec!["tol"]);
    }

    #[test]
    fn words_keep_quoted_runs() {
        assert_eq!(
            words(r#"tool:x  arg.query:"drop table*" -y"#),
            vec!["tool:x", "arg.query:drop table*", "-y"]
        );
    }
}
