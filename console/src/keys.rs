//! Keys: every command of the TUI by name, its default key, and remapping from the config file.
//!
//! A key is written as in the config file: a character (`a`, `A`, `/`, `?`), or a name
//! (`enter`, `esc`, `space`, `tab`, `up`, `down`, `pgup`, `pgdn`, `home`, `end`), optionally
//! with `ctrl-`.

use std::collections::BTreeMap;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Everything a key can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Command {
    /// Move the cursor down.
    Down,
    /// Move the cursor up.
    Up,
    /// Page down.
    PageDown,
    /// Page up.
    PageUp,
    /// Open the detail of the call under the cursor.
    Open,
    /// Back to the queue (or close the overlay); in the queue, clear the filter, then the
    /// selection.
    Back,
    /// Approve the call (or group) under the cursor.
    Approve,
    /// Reject the call (or group) under the cursor, asking for a reason.
    Reject,
    /// Toggle selection of the row under the cursor.
    Select,
    /// Select every row that matches the filter.
    SelectAll,
    /// Approve the selection, after confirmation.
    ApproveSelected,
    /// Reject the selection, after confirmation.
    RejectSelected,
    /// Reject the call or group under the cursor and block its pattern for a while.
    BlockPattern,
    /// Show the temporary rules.
    Rules,
    /// Revoke the temporary rule under the cursor (rules view).
    Revoke,
    /// Cycle grouping: identical call, tool, client, server, shape, none.
    Group,
    /// Cycle grouping the other way.
    GroupBack,
    /// Edit the filter.
    Filter,
    /// Mark the call under the cursor as the diff reference.
    Mark,
    /// Diff the call under the cursor against the marked or most similar call.
    Diff,
    /// Show the audit trail.
    Audit,
    /// Change the sort order.
    Sort,
    /// Show every key.
    Help,
    /// Quit.
    Quit,
}

impl Command {
    /// Every command with its config name, default key and help text.
    pub const ALL: [(Command, &'static str, &'static str, &'static str); 24] = [
        (Command::Down, "down", "j", "move down (also ↓)"),
        (Command::Up, "up", "k", "move up (also ↑)"),
        (Command::PageDown, "page_down", "pgdn", "page down"),
        (Command::PageUp, "page_up", "pgup", "page up"),
        (Command::Open, "open", "enter", "open the call's detail"),
        (
            Command::Back,
            "back",
            "esc",
            "back to the queue; in it, clear the filter, then the selection",
        ),
        (
            Command::Approve,
            "approve",
            "a",
            "approve this call (a group row: all its calls)",
        ),
        (
            Command::Reject,
            "reject",
            "r",
            "reject this call, with a reason (a group row: all)",
        ),
        (
            Command::Select,
            "select",
            "space",
            "select / unselect this row",
        ),
        (
            Command::SelectAll,
            "select_all",
            "*",
            "select every row matching the filter",
        ),
        (
            Command::ApproveSelected,
            "approve_selected",
            "A",
            "approve the selection (asks first)",
        ),
        (
            Command::RejectSelected,
            "reject_selected",
            "R",
            "reject the selection (asks first)",
        ),
        (
            Command::BlockPattern,
            "block_pattern",
            "x",
            "reject this pattern and refuse its new calls for a while",
        ),
        (
            Command::Rules,
            "rules",
            "t",
            "temporary rules (blocked and pre-approved patterns)",
        ),
        (
            Command::Revoke,
            "revoke",
            "D",
            "revoke the rule under the cursor (rules view)",
        ),
        (
            Command::Group,
            "group",
            "g",
            "group rows: identical call → tool → client → server → shape → none",
        ),
        (
            Command::GroupBack,
            "group_back",
            "G",
            "group rows, cycling the other way (none, shape, server, ...)",
        ),
        (
            Command::Filter,
            "filter",
            "/",
            "filter: text, tool:a|b, -client:x, arg.path:/etc/*",
        ),
        (
            Command::Mark,
            "mark",
            "m",
            "mark this call as the diff reference",
        ),
        (
            Command::Diff,
            "diff",
            "d",
            "diff against the marked or most similar earlier call",
        ),
        (
            Command::Audit,
            "audit",
            "u",
            "audit trail (filtered by the current filter)",
        ),
        (
            Command::Sort,
            "sort",
            "s",
            "sort by age, expiry, tool or client",
        ),
        (Command::Help, "help", "?", "this help"),
        (Command::Quit, "quit", "q", "quit"),
    ];
}

/// A key as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    code: KeyCodeOrd,
    ctrl: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum KeyCodeOrd {
    Char(char),
    Named(&'static str),
}

const NAMED: [(&str, KeyCode); 10] = [
    ("enter", KeyCode::Enter),
    ("esc", KeyCode::Esc),
    ("space", KeyCode::Char(' ')),
    ("tab", KeyCode::Tab),
    ("up", KeyCode::Up),
    ("down", KeyCode::Down),
    ("pgup", KeyCode::PageUp),
    ("pgdn", KeyCode::PageDown),
    ("home", KeyCode::Home),
    ("end", KeyCode::End),
];

/// A `[keys]` table the console cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a key name.
    #[error(
        "unknown key {0:?}: use one character or one of {names}, optionally with ctrl-",
        names = NAMED.map(|(n, _)| n).join(", ")
    )]
    UnknownKey(String),
    /// Not a command name.
    #[error(
        "unknown command {0:?} in [keys] (commands: {names})",
        names = Command::ALL.map(|(_, n, ..)| n).join(", ")
    )]
    UnknownCommand(String),
    /// The key is another command's default, which is not remapped.
    #[error("[keys] {command} = {key:?} clashes with the default key of {other}; remap that too")]
    Clash {
        /// The command remapped.
        command: String,
        /// The key asked for.
        key: String,
        /// The command whose default it is.
        other: &'static str,
    },
}

impl Key {
    /// Parse `a`, `ctrl-c`, `enter`, ...
    pub fn parse(s: &str) -> Result<Key, KeyError> {
        let (ctrl, rest) = match s.strip_prefix("ctrl-") {
            Some(r) => (true, r),
            None => (false, s),
        };
        if let Some((name, _)) = NAMED.iter().find(|(n, _)| *n == rest) {
            let code = if *name == "space" {
                KeyCodeOrd::Char(' ')
            } else {
                KeyCodeOrd::Named(name)
            };
            return Ok(Key { code, ctrl });
        }
        let mut chars = rest.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(Key {
                code: KeyCodeOrd::Char(c),
                ctrl,
            }),
            _ => Err(KeyError::UnknownKey(s.to_string())),
        }
    }

    /// The key of a terminal event.
    pub fn from_event(e: &KeyEvent) -> Option<Key> {
        let ctrl = e.modifiers.contains(KeyModifiers::CONTROL);
        let code = match e.code {
            KeyCode::Char(c) => KeyCodeOrd::Char(c),
            other => KeyCodeOrd::Named(NAMED.iter().find(|(_, k)| *k == other)?.0),
        };
        Some(Key { code, ctrl })
    }

    /// As written in the config and the help.
    pub fn label(&self) -> String {
        let base = match self.code {
            KeyCodeOrd::Char(' ') => "space".to_string(),
            KeyCodeOrd::Char(c) => c.to_string(),
            KeyCodeOrd::Named(n) => n.to_string(),
        };
        if self.ctrl {
            format!("ctrl-{base}")
        } else {
            base
        }
    }
}

/// Which key does what.
#[derive(Debug, Clone)]
pub struct KeyMap {
    by_key: BTreeMap<Key, Command>,
    by_command: BTreeMap<Command, Key>,
}

impl Default for KeyMap {
    fn default() -> KeyMap {
        let mut m = KeyMap {
            by_key: BTreeMap::new(),
            by_command: BTreeMap::new(),
        };
        for (c, _, k, _) in Command::ALL {
            if let Ok(key) = Key::parse(k) {
                m.bind(c, key);
            }
        }
        // Arrow keys and ctrl-c always work, whatever is remapped.
        for (k, c) in [
            ("down", Command::Down),
            ("up", Command::Up),
            ("ctrl-c", Command::Quit),
        ] {
            if let Ok(key) = Key::parse(k) {
                m.by_key.insert(key, c);
            }
        }
        m
    }
}

impl KeyMap {
    fn bind(&mut self, c: Command, key: Key) {
        if let Some(old) = self.by_command.insert(c, key)
            && self.by_key.get(&old) == Some(&c)
        {
            self.by_key.remove(&old);
        }
        self.by_key.insert(key, c);
    }

    /// The defaults with `overrides` (command name → key) applied.
    pub fn with(overrides: &BTreeMap<String, String>) -> Result<KeyMap, KeyError> {
        let mut m = KeyMap::default();
        for (name, key) in overrides {
            let Some((c, ..)) = Command::ALL.iter().find(|(_, n, ..)| n == name) else {
                return Err(KeyError::UnknownCommand(name.clone()));
            };
            let key = Key::parse(key)?;
            let other = m.by_key.get(&key).copied();
            if let Some(other) = other
                && other != *c
            {
                let other_name = Command::ALL
                    .iter()
                    .find(|(x, ..)| *x == other)
                    .map_or("?", |(_, n, ..)| *n);
                if !overrides.contains_key(other_name) {
                    return Err(KeyError::Clash {
                        command: name.clone(),
                        key: key.label(),
                        other: other_name,
                    });
                }
            }
            m.bind(*c, key);
        }
        Ok(m)
    }

    /// What a key does.
    pub fn command(&self, e: &KeyEvent) -> Option<Command> {
        self.by_key.get(&Key::from_event(e)?).copied()
    }

    /// The key of a command, for hints and help.
    pub fn key_of(&self, c: Command) -> String {
        self.by_command.get(&c).map_or("?".into(), Key::label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn docs_list_every_key() {
        let doc = include_str!("../../docs/console.md");
        for (_, name, key, text) in Command::ALL {
            // A `|` in a table cell is written `\|`.
            let line = format!("| `{key}` | {} (`{name}`) |", text.replace('|', "\\|"));
            assert!(doc.contains(&line), "docs/console.md lacks: {line}");
        }
    }

    #[test]
    fn default_keys_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for (c, _, k, _) in Command::ALL {
            assert!(seen.insert(k), "{c:?}: default key {k} is taken twice");
        }
    }

    #[test]
    fn defaults_and_remaps() {
        let m = KeyMap::default();
        assert_eq!(m.command(&ev(KeyCode::Char('a'))), Some(Command::Approve));
        assert_eq!(m.command(&ev(KeyCode::Char(' '))), Some(Command::Select));
        assert_eq!(m.command(&ev(KeyCode::Down)), Some(Command::Down));
        let mut o = BTreeMap::new();
        o.insert("approve".to_string(), "y".to_string());
        let m = KeyMap::with(&o).expect("remap");
        assert_eq!(m.command(&ev(KeyCode::Char('y'))), Some(Command::Approve));
        assert_eq!(m.command(&ev(KeyCode::Char('a'))), None);
        assert_eq!(m.key_of(Command::Approve), "y");
        o.insert("approve".to_string(), "r".to_string());
        assert!(
            KeyMap::with(&o)
                .expect_err("clash")
                .to_string()
                .contains("clashes")
        );
        o.insert("reject".to_string(), "z".to_string());
        let swapped = KeyMap::with(&o).expect("remapping the other key resolves the clash");
        assert_eq!(
            swapped.command(&ev(KeyCode::Char('r'))),
            Some(Command::Approve)
        );
        assert_eq!(
            swapped.command(&ev(KeyCode::Char('z'))),
            Some(Command::Reject)
        );
        o.insert("launch".to_string(), "q".to_string());
        assert!(
            KeyMap::with(&o)
                .expect_err("unknown")
                .to_string()
                .contains("unknown command")
        );
    }
}
