//! Telling the approver that calls arrived while they were not looking: the terminal bell, a
//! desktop notification through the terminal (OSC 9 and OSC 777), or a command.
//!
//! The console alerts only when it is idle (no key for `idle_after`) or its terminal says it
//! lost focus, at most once per [`QUIET`]: a loop firing 500 calls is one alert. `notify =
//! "off"` in console.toml, `--notify off`, or a non-empty `TOLLGATE_NO_NOTIFY` turns it off.

use std::io::Write;
use std::time::Duration;

/// How the console alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The terminal bell (BEL).
    Bell,
    /// A desktop notification through the terminal: OSC 9 (iTerm2, Windows Terminal, kitty,
    /// WezTerm, ghostty) and OSC 777 (foot, urxvt, VTE terminals, ghostty), plus the bell.
    Osc,
    /// Run a program with the summary as its last argument and the calls as JSON on stdin.
    Command(Vec<String>),
    /// Nothing.
    Off,
}

impl Mode {
    /// Parse `bell`, `osc`, `command` (with `command` taken from the config) or `off`.
    pub fn parse(text: &str, command: Option<Vec<String>>) -> Result<Mode, String> {
        match text {
            "bell" => Ok(Mode::Bell),
            "osc" => Ok(Mode::Osc),
            "off" => Ok(Mode::Off),
            "command" => match command {
                Some(c) if !c.is_empty() => Ok(Mode::Command(c)),
                _ => Err("notify = \"command\" needs notify_command = [\"program\", ...] in console.toml".into()),
            },
            other => Err(format!(
                "notify {other:?} is not \"bell\", \"osc\", \"command\" or \"off\""
            )),
        }
    }
}

/// At most one alert per this long.
pub const QUIET: Duration = Duration::from_secs(3);
/// Idle after this long without a key, unless the config says otherwise.
pub const IDLE_AFTER: Duration = Duration::from_secs(30);

/// When to alert, and how.
#[derive(Debug)]
pub struct Alerter {
    mode: Mode,
    idle_after_ms: u64,
    last_key_ms: u64,
    focused: bool,
    last_alert_ms: Option<u64>,
}

impl Alerter {
    /// An alerter in `mode`, counting the console idle after `idle_after` without a key.
    pub fn new(mode: Mode, idle_after: Duration, now_ms: u64) -> Alerter {
        Alerter {
            mode,
            idle_after_ms: idle_after.as_millis() as u64,
            last_key_ms: now_ms,
            focused: true,
            last_alert_ms: None,
        }
    }

    /// A key was pressed.
    pub fn key(&mut self, now_ms: u64) {
        self.last_key_ms = now_ms;
    }

    /// The terminal reported focus gained (`true`) or lost.
    pub fn focus(&mut self, focused: bool, now_ms: u64) {
        self.focused = focused;
        if focused {
            self.last_key_ms = now_ms;
        }
    }

    /// `new` calls arrived now: the alert to give, if any (the caller writes it).
    pub fn arrived(&mut self, new: usize, summary: &str, now_ms: u64) -> Option<Alert> {
        if new == 0 || self.mode == Mode::Off {
            return None;
        }
        let away = !self.focused || now_ms.saturating_sub(self.last_key_ms) >= self.idle_after_ms;
        let quiet = self
            .last_alert_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= QUIET.as_millis() as u64);
        if !away || !quiet {
            return None;
        }
        self.last_alert_ms = Some(now_ms);
        let text = if new == 1 {
            format!("Tollgate: a call is waiting: {summary}")
        } else {
            format!("Tollgate: {new} calls are waiting: {summary} …")
        };
        Some(Alert {
            mode: self.mode.clone(),
            text,
        })
    }
}

/// One alert to give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// How.
    pub mode: Mode,
    /// What it says.
    pub text: String,
}

impl Alert {
    /// The bytes to write to the terminal (empty for a command).
    pub fn bytes(&self) -> Vec<u8> {
        // Nothing that could end the escape sequence early, or start another.
        let clean: String = self
            .text
            .chars()
            .filter(|c| !c.is_control())
            .map(|c| if c == ';' { ',' } else { c })
            .collect();
        match &self.mode {
            Mode::Bell => b"\x07".to_vec(),
            Mode::Osc => format!("\x1b]9;{clean}\x1b\\\x1b]777;notify;Tollgate;{clean}\x1b\\\x07")
                .into_bytes(),
            Mode::Command(_) | Mode::Off => Vec::new(),
        }
    }

    /// Give the alert: write to `out`, or start the command (not waited for).
    pub fn give(&self, out: &mut impl Write, calls_json: &str) {
        match &self.mode {
            Mode::Command(argv) => {
                let Some((program, args)) = argv.split_first() else {
                    return;
                };
                let child = std::process::Command::new(program)
                    .args(args)
                    .arg(&self.text)
                    .env("TOLLGATE_SUMMARY", &self.text)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn();
                if let Ok(mut child) = child {
                    let json = calls_json.to_string();
                    std::thread::spawn(move || {
                        if let Some(mut stdin) = child.stdin.take() {
                            let _ = stdin.write_all(json.as_bytes());
                        }
                        let _ = child.wait();
                    });
                }
            }
            _ => {
                let _ = out.write_all(&self.bytes());
                let _ = out.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_only_when_away_and_not_more_than_once_per_quiet_period() {
        let mut a = Alerter::new(Mode::Bell, Duration::from_secs(30), 0);
        // Someone is typing: no alert.
        assert_eq!(a.arrived(1, "x", 1_000), None);
        // Idle for 30 s: one alert, then quiet for 3 s however many arrive.
        let alert = a.arrived(500, "db/execute_sql", 31_000).expect("idle");
        assert!(alert.text.starts_with("Tollgate: 500 calls are waiting"));
        assert_eq!(alert.bytes(), b"\x07");
        assert_eq!(a.arrived(1, "x", 32_000), None);
        assert!(a.arrived(1, "x", 34_500).is_some());
        // Unfocused: alerts even right after a key.
        a.key(40_000);
        a.focus(false, 40_000);
        assert!(a.arrived(1, "x", 41_000).is_some());
        a.focus(true, 45_000);
        assert_eq!(a.arrived(1, "x", 46_000), None);
        // Off is off.
        let mut off = Alerter::new(Mode::Off, Duration::ZERO, 0);
        assert_eq!(off.arrived(3, "x", 99_000), None);
    }

    #[test]
    fn osc_alerts_cannot_break_out_of_their_escape_sequence() {
        let alert = Alert {
            mode: Mode::Osc,
            text: "a;b\x1b]0;pwned\x07c".into(),
        };
        let bytes = String::from_utf8(alert.bytes()).expect("utf-8");
        assert_eq!(
            bytes,
            "\x1b]9;a,b]0,pwnedc\x1b\\\x1b]777;notify;Tollgate;a,b]0,pwnedc\x1b\\\x07"
        );
        assert!(Mode::parse("command", None).is_err());
        assert_eq!(Mode::parse("osc", None), Ok(Mode::Osc));
        assert!(Mode::parse("loud", None).is_err());
    }
}
