//! Text helpers shared by the CLI and the TUI: ages, times and one-line argument summaries.

use serde_json::Value;

/// A compact age or countdown: `42s`, `3m05s`, `2h04m`, `3d`.
pub fn short_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d", s / 86400),
    }
}

/// `key=value` pairs of an arguments object on one line, strings unquoted when plain, cut to
/// `width` characters with an ellipsis.
pub fn args_summary(args: &Value, width: usize) -> String {
    let text = match args {
        Value::Object(map) if map.is_empty() => String::from("(no arguments)"),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    cut(&text.replace(['\n', '\r', '\t'], " "), width)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Cut to `width` characters, ending in `…` when cut.
pub fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Pretty JSON with object keys sorted at every depth.
pub fn pretty_sorted(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<_> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sort(&m[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string_pretty(&sort(v)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_are_compact() {
        assert_eq!(short_duration(42_000), "42s");
        assert_eq!(short_duration(185_000), "3m05s");
        assert_eq!(short_duration(7_440_000), "2h04m");
        assert_eq!(short_duration(3 * 86_400_000), "3d");
    }

    #[test]
    fn summaries_fit_one_line() {
        let a = json!({"query": "DROP TABLE x;\nDROP TABLE y", "limit": 5});
        assert_eq!(
            args_summary(&a, 100),
            "query=DROP TABLE x; DROP TABLE y limit=5"
        );
        assert_eq!(args_summary(&a, 10), "query=DRO…");
        assert_eq!(args_summary(&json!({}), 20), "(no arguments)");
    }

    #[test]
    fn pretty_json_sorts_keys() {
        assert_eq!(
            pretty_sorted(&json!({"b": 1, "a": {"d": 2, "c": 3}})),
            "{\n  \"a\": {\n    \"c\": 3,\n    \"d\": 2\n  },\n  \"b\": 1\n}"
        );
    }
}
