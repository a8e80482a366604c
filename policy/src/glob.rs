//! Tool patterns: `server/tool` globs.
//!
//! A pattern names a server and a tool, separated by the first `/`: `fs/read_*`, `*/list_*`.
//! A pattern with no `/` matches that tool on every server (`echo` is `*/echo`). Inside each half
//! `*` matches any run of characters and `?` exactly one; everything else is literal. Matching
//! is whole-string and case-sensitive, because MCP tool names are.

use regex::Regex;

/// A compiled `server/tool` pattern.
#[derive(Debug, Clone)]
pub struct ToolPattern {
    server: Glob,
    tool: Glob,
}

/// One half of a pattern.
#[derive(Debug, Clone)]
pub struct Glob {
    source: String,
    regex: Regex,
}

/// Why a pattern could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// The pattern or one of its halves is empty.
    #[error("empty {0} part in pattern {1:?}")]
    Empty(&'static str, String),
    /// A tool part contains `/` (only the first `/` separates server and tool).
    #[error("pattern {0:?} has more than one '/': write it as \"server/tool\"")]
    TooManySlashes(String),
    /// A character that would confuse readers of the config.
    #[error("pattern {0:?} contains {1:?}, which globs here do not support (use * and ?)")]
    Unsupported(String, char),
}

impl Glob {
    /// Compile one half of a pattern.
    pub fn new(source: &str, part: &'static str, whole: &str) -> Result<Self, GlobError> {
        if source.is_empty() {
            return Err(GlobError::Empty(part, whole.to_string()));
        }
        let mut re = String::with_capacity(source.len() + 8);
        re.push('^');
        for c in source.chars() {
            match c {
                '*' => re.push_str(".*"),
                '?' => re.push('.'),
                '[' | ']' | '{' | '}' => {
                    return Err(GlobError::Unsupported(whole.to_string(), c));
                }
                c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
            }
        }
        re.push('$');
        let regex = Regex::new(&re).map_err(|_| GlobError::Unsupported(whole.to_string(), '\\'))?;
        Ok(Glob {
            source: source.to_string(),
            regex,
        })
    }

    /// Does the glob match the whole of `text`?
    pub fn matches(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }

    /// True when the glob has no wildcard, i.e. names exactly one thing.
    pub fn is_literal(&self) -> bool {
        !self.source.contains(['*', '?'])
    }

    /// The text the glob was written as.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl ToolPattern {
    /// Compile a `server/tool` (or bare `tool`) pattern.
    pub fn new(source: &str) -> Result<Self, GlobError> {
        if source.is_empty() {
            return Err(GlobError::Empty("pattern", source.to_string()));
        }
        let (server, tool) = match source.split_once('/') {
            Some((s, t)) => (s, t),
            None => ("*", source),
        };
        if tool.contains('/') {
            return Err(GlobError::TooManySlashes(source.to_string()));
        }
        Ok(ToolPattern {
            server: Glob::new(server, "server", source)?,
            tool: Glob::new(tool, "tool", source)?,
        })
    }

    /// Does this pattern cover `tool` on `server`?
    pub fn matches(&self, server: &str, tool: &str) -> bool {
        self.server.matches(server) && self.tool.matches(tool)
    }

    /// The server half, so config checking can flag unknown server names.
    pub fn server_glob(&self) -> &Glob {
        &self.server
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> ToolPattern {
        ToolPattern::new(s).expect("valid pattern")
    }

    #[test]
    fn star_matches_any_run_and_question_mark_one_char() {
        assert!(pat("fs/read_*").matches("fs", "read_file"));
        assert!(pat("fs/read_*").matches("fs", "read_"));
        assert!(!pat("fs/read_*").matches("fs", "write_file"));
        assert!(!pat("fs/read_*").matches("db", "read_file"));
        assert!(pat("*/list_?").matches("db", "list_a"));
        assert!(!pat("*/list_?").matches("db", "list_ab"));
    }

    #[test]
    fn bare_tool_name_matches_on_every_server() {
        assert!(pat("echo").matches("a", "echo"));
        assert!(pat("echo").matches("b", "echo"));
        assert!(!pat("echo").matches("b", "echo2"));
    }

    #[test]
    fn regex_metacharacters_are_literal() {
        assert!(pat("s/a.b").matches("s", "a.b"));
        assert!(!pat("s/a.b").matches("s", "axb"));
        assert!(pat("s/a+(b)").matches("s", "a+(b)"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        assert!(matches!(ToolPattern::new(""), Err(GlobError::Empty(..))));
        assert!(matches!(
            ToolPattern::new("/x"),
            Err(GlobError::Empty("server", _))
        ));
        assert!(matches!(
            ToolPattern::new("x/"),
            Err(GlobError::Empty("tool", _))
        ));
        assert!(matches!(
            ToolPattern::new("a/b/c"),
            Err(GlobError::TooManySlashes(_))
        ));
        assert!(matches!(
            ToolPattern::new("a/[bc]"),
            Err(GlobError::Unsupported(_, '['))
        ));
    }

    #[test]
    fn literal_detection() {
        assert!(pat("fs/x").server_glob().is_literal());
        assert!(!pat("f*/x").server_glob().is_literal());
    }
}
