//! Rate budgets: how many requests one connection may send in a rolling window, overall and per
//! path (`100 per 10s`, and `4 per 1s` for `/crm/v3/objects/*/search`).
//!
//! Budgets belong to the connection, not the store or the sync: every sync using a connection
//! draws on the same ones, so two syncs of one HubSpot account together stay under its limit.
//! A request waits for room; it is never refused. A request counts from when it is sent until
//! its response arrives, and then as sent at the arrival: the remote system saw it somewhere in
//! between, so the window never holds more than the limit as the remote system counts it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One budget: `limit` requests per `per`, for every path or for paths matching `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub limit: u32,
    pub per: Duration,
    /// A path prefix by segments; `*` matches any one segment. None: every request.
    pub path: Option<String>,
}

impl Budget {
    /// Parses `N per DURATION` (`100 per 10s`, `5 per 1s`, `1000 per 1m`).
    pub fn parse(rate: &str, path: Option<&str>) -> Result<Budget, String> {
        let bad = || format!("{rate:?} is not a rate; write it as `100 per 10s`");
        let (n, per) = rate.split_once(" per ").ok_or_else(bad)?;
        let limit: u32 = n.trim().parse().map_err(|_| bad())?;
        if limit == 0 {
            return Err(format!("{rate:?} allows no request at all"));
        }
        let per = crate::driver::schedule::parse_duration(per).ok_or_else(bad)?;
        if per.is_zero() {
            return Err(bad());
        }
        if let Some(p) = path {
            if !p.starts_with('/') {
                return Err(format!("{p:?} is not a path; it must start with /"));
            }
        }
        Ok(Budget {
            limit,
            per,
            path: path.map(str::to_owned),
        })
    }

    fn applies_to(&self, path: &str) -> bool {
        let Some(pattern) = &self.path else {
            return true;
        };
        let mut segments = path.split('?').next().unwrap_or_default().split('/');
        pattern
            .split('/')
            .all(|p| segments.next().is_some_and(|s| p == "*" || p == s))
    }
}

/// A connection's budgets and what has been sent against them.
#[derive(Debug)]
pub struct Budgets {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    windows: Vec<Window>,
    paused_until: Option<Instant>,
    next: u64,
}

#[derive(Debug)]
struct Window {
    budget: Budget,
    /// Requests in the window: an id and when it counts from.
    sent: Vec<(u64, Instant)>,
}

/// A request counted against the budgets; hand it back with [`Budgets::finish`].
#[derive(Debug)]
pub struct Slot(u64);

impl Budgets {
    pub fn new(budgets: &[Budget]) -> Budgets {
        Budgets {
            state: Mutex::new(State {
                windows: budgets
                    .iter()
                    .map(|b| Window {
                        budget: b.clone(),
                        sent: Vec::new(),
                    })
                    .collect(),
                paused_until: None,
                next: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a request to `path` fits every budget that applies to it, and counts it.
    pub async fn acquire(&self, path: &str) -> Slot {
        loop {
            let until = {
                let mut state = self.lock();
                let now = Instant::now();
                match state.room_at(path, now) {
                    None => {
                        let id = state.next;
                        state.next += 1;
                        for w in state.windows.iter_mut() {
                            if w.budget.applies_to(path) {
                                w.sent.push((id, now));
                            }
                        }
                        return Slot(id);
                    }
                    Some(until) => until,
                }
            };
            tokio::time::sleep_until(until).await;
        }
    }

    /// The response to a request arrived: it counts from now, the latest the remote system
    /// can have seen it.
    pub fn finish(&self, slot: Slot) {
        let now = Instant::now();
        let mut state = self.lock();
        for w in state.windows.iter_mut() {
            for (id, at) in w.sent.iter_mut() {
                if *id == slot.0 {
                    *at = now;
                }
            }
        }
    }

    /// Sends nothing more for `wait` (a 429's `Retry-After`, or the plugin's rate-limit error).
    pub fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut state = self.lock();
        if state.paused_until.is_none_or(|p| p < until) {
            state.paused_until = Some(until);
        }
    }

    /// The shortest window that applies to `path`: how long to pause on a 429 that does not say.
    pub fn window_for(&self, path: &str) -> Duration {
        self.lock()
            .windows
            .iter()
            .filter(|w| w.budget.applies_to(path))
            .map(|w| w.budget.per)
            .min()
            .unwrap_or(Duration::from_secs(1))
    }
}

impl State {
    /// None when a request to `path` fits now; else when to look again.
    fn room_at(&mut self, path: &str, now: Instant) -> Option<Instant> {
        if let Some(p) = self.paused_until {
            if p > now {
                return Some(p);
            }
            self.paused_until = None;
        }
        let mut until: Option<Instant> = None;
        for w in self.windows.iter_mut() {
            if !w.budget.applies_to(path) {
                continue;
            }
            let per = w.budget.per;
            w.sent.retain(|(_, at)| *at + per > now);
            if w.sent.len() >= w.budget.limit as usize {
                let oldest = w.sent.iter().map(|(_, at)| *at).min().unwrap_or(now);
                let free = oldest + per;
                until = Some(until.map_or(free, |u| u.max(free)));
            }
        }
        until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_matches_paths() {
        let b = Budget::parse("100 per 10s", None).unwrap();
        assert_eq!((b.limit, b.per), (100, Duration::from_secs(10)));
        assert!(Budget::parse("100/10s", None).is_err());
        assert!(Budget::parse("0 per 1s", None).is_err());
        let s = Budget::parse("5 per 1s", Some("/crm/v3/objects/*/search")).unwrap();
        assert!(s.applies_to("/crm/v3/objects/contacts/search"));
        assert!(s.applies_to("/crm/v3/objects/companies/search?x=1"));
        assert!(!s.applies_to("/crm/v3/objects/contacts/batch/read"));
        assert!(!s.applies_to("/crm/v3/objects/contacts"));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_wait_for_room_and_never_exceed_the_window() {
        let budgets = Budgets::new(&[Budget::parse("3 per 1s", None).unwrap()]);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..7 {
            let slot = budgets.acquire("/x").await;
            times.push(start.elapsed());
            budgets.finish(slot);
        }
        // Three at once, three a second later, one a second after that.
        let secs: Vec<u64> = times.iter().map(|t| t.as_secs()).collect();
        assert_eq!(secs, [0, 0, 0, 1, 1, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_path_budget_is_separate_and_a_pause_stops_everything() {
        let budgets = Budgets::new(&[
            Budget::parse("100 per 10s", None).unwrap(),
            Budget::parse("1 per 1s", Some("/search")).unwrap(),
        ]);
        let start = Instant::now();
        budgets.acquire("/search").await;
        budgets.acquire("/other").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        budgets.acquire("/search").await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        budgets.pause(Duration::from_secs(5));
        budgets.acquire("/other").await;
        assert_eq!(start.elapsed(), Duration::from_secs(6));
    }
}
