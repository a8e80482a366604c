//! The wall clock every part of Tollgate stamps records with.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` since the epoch as RFC 3339 in UTC, to the second: `2026-11-30T09:27:23Z`.
pub fn rfc3339_seconds(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// `ms` since the epoch as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc_rfc3339() {
        assert_eq!(rfc3339_seconds(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339_millis(1_234), "1970-01-01T00:00:01.234Z");
        assert!(now_ms() > 1_700_000_000_000);
    }
}
