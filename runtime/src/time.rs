//! Timestamps as the host passes them: microseconds since the Unix epoch, UTC.

use chrono::{DateTime, NaiveDateTime};

/// Parses the text forms SQLite's date functions write (`YYYY-MM-DD HH:MM:SS[.f]`, also with
/// `T` and a trailing `Z`), read as UTC.
pub fn parse_sqlite(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches('Z');
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .map(|t| t.and_utc().timestamp_micros())
}

/// Formats a timestamp the way SQLite's date functions write it, so stored values sort and
/// compare with `datetime()`'s: `YYYY-MM-DD HH:MM:SS`, with `.ffffff` only when not whole.
pub fn format_sqlite(micros: i64) -> String {
    match DateTime::from_timestamp_micros(micros) {
        Some(t) if micros % 1_000_000 == 0 => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        None => micros.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_times_round_trip() {
        for micros in [0, 1_500_000, 1_709_210_096_789_000, -86_400_000_000] {
            assert_eq!(parse_sqlite(&format_sqlite(micros)), Some(micros));
        }
        assert_eq!(
            parse_sqlite("2024-02-29T12:34:56Z"),
            Some(1_709_210_096_000_000)
        );
        assert_eq!(parse_sqlite("tomorrow"), None);
    }
}
