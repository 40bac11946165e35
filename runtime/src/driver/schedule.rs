//! When a sync runs: continuously (realtime), every interval, or on a cron expression.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// A sync's schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Run again at once while there is work; when idle, wait for the sides to announce a
    /// change where they can (PostgreSQL, SQLite), else poll with a backoff from
    /// [`Schedule::REALTIME_MIN`] up to [`Schedule::REALTIME_MAX`], so an idle sync costs
    /// almost nothing (see `app::run_sync`).
    Realtime,
    Every(Duration),
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    pub const REALTIME_MIN: Duration = Duration::from_millis(50);
    pub const REALTIME_MAX: Duration = Duration::from_secs(2);
    /// Longest a realtime sync whose sides all announce changes goes without a cycle when
    /// none is announced: a bound on what a missed announcement can delay.
    pub const REALTIME_QUIET: Duration = Duration::from_secs(300);
    /// Longest one wait for announcements of such a sync (each wait runs the sides' plugins).
    pub const REALTIME_QUIET_WAIT: Duration = Duration::from_secs(60);

    /// Parses `realtime`, an interval (`30s`, `5m`, `1h`, `1d`) or `cron: <expression>` (with
    /// seconds: `cron: 0 */5 * * * *`).
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        if s == "realtime" {
            return Ok(Schedule::Realtime);
        }
        if let Some(expr) = s.strip_prefix("cron:") {
            return cron::Schedule::from_str(expr.trim())
                .map(|c| Schedule::Cron(Box::new(c)))
                .map_err(|e| format!("{:?} is not a cron expression: {e}", expr.trim()));
        }
        parse_duration(s)
            .map(Schedule::Every)
            .ok_or_else(|| format!("{s:?} is not a schedule: use \"realtime\", an interval such as \"5m\", or \"cron: 0 */5 * * * *\""))
    }

    /// How long to wait after a cycle ending at `now`. `idle_streak` counts idle cycles in a row.
    pub fn wait(&self, now: DateTime<Utc>, idle: bool, idle_streak: u32) -> Duration {
        match self {
            Schedule::Realtime if !idle => Duration::ZERO,
            Schedule::Realtime => {
                let ms = Self::REALTIME_MIN.as_millis() as u64 * (1u64 << idle_streak.min(6));
                Duration::from_millis(ms).min(Self::REALTIME_MAX)
            }
            Schedule::Every(_) | Schedule::Cron(_) if !idle => Duration::ZERO,
            Schedule::Every(d) => *d,
            Schedule::Cron(c) => c
                .after(&now)
                .next()
                .and_then(|t| (t - now).to_std().ok())
                .unwrap_or(Duration::from_secs(60)),
        }
    }
}

/// `250ms`, `30s`, `5m`, `1h`, `1d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schedules() {
        assert!(matches!(
            Schedule::parse("realtime"),
            Ok(Schedule::Realtime)
        ));
        assert!(
            matches!(Schedule::parse("5m"), Ok(Schedule::Every(d)) if d == Duration::from_secs(300))
        );
        assert!(matches!(
            Schedule::parse("cron: 0 */5 * * * *"),
            Ok(Schedule::Cron(_))
        ));
        assert!(Schedule::parse("often").is_err());
        assert!(Schedule::parse("cron: nonsense").is_err());
    }

    #[test]
    fn realtime_backs_off_when_idle_but_never_past_its_cap() {
        let now = Utc::now();
        let r = Schedule::Realtime;
        assert_eq!(r.wait(now, false, 0), Duration::ZERO);
        assert!(r.wait(now, true, 1) < r.wait(now, true, 3));
        assert_eq!(r.wait(now, true, 30), Schedule::REALTIME_MAX);
    }
}
