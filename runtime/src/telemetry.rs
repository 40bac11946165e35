//! Process-wide counters of what plugins and their HTTP requests do, for `/metrics`: per plugin
//! calls by outcome (a crash, a CPU budget, a memory cap or a timeout hit), their durations, and
//! per connection HTTP requests by status and the time spent waiting for the rate budget.
//!
//! Process-wide because `/metrics` describes the process: every plugin host in it (one per
//! loaded config) adds to the same counters, keyed by plugin and connection. Recording takes a
//! mutex for a few map operations; a call into a plugin costs microseconds more than that.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the plugin call duration histogram.
pub const CALL_BUCKETS: [f64; 9] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// One plugin's calls for one connection (or one sync, for a rule).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallStats {
    /// Calls by (export, outcome): `returned` (with a value or its own typed error), `trap`,
    /// `cpu_budget`, `memory`, `timeout`, `poisoned`.
    pub calls: BTreeMap<(&'static str, &'static str), u64>,
    /// Cumulative counts per bucket of [`CALL_BUCKETS`], then +Inf.
    pub buckets: [u64; CALL_BUCKETS.len() + 1],
    pub seconds: f64,
    /// Of `seconds`, the time the calls spent in the host's SQL capability.
    pub sql_seconds: f64,
    /// The calls' calls into the host's SQL capability: statements, transactions' begin and
    /// end, connections opened.
    pub sql_calls: u64,
}

/// One connection's HTTP requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpStats {
    /// Requests sent, by the status of their response; 0 for those that got none (the
    /// connection failed or was cut off). Requests the host refused before sending are not here.
    pub by_status: BTreeMap<u16, u64>,
    /// Time spent waiting for the connection's rate budget before sending.
    pub budget_wait: f64,
}

#[derive(Default)]
struct Registry {
    calls: BTreeMap<(String, String), CallStats>,
    http: BTreeMap<String, HttpStats>,
    /// Plugin instances alive now (each in a store of its own), by (plugin, connection).
    live: BTreeMap<(String, String), u64>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    calls: BTreeMap::new(),
    http: BTreeMap::new(),
    live: BTreeMap::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records one call into a plugin.
pub fn plugin_call(
    plugin: &str,
    connection: &str,
    func: &'static str,
    outcome: &'static str,
    took: Duration,
    (sql, sql_calls): (Duration, u32),
) {
    let seconds = took.as_secs_f64();
    let mut r = registry();
    let s = r
        .calls
        .entry((plugin.to_owned(), connection.to_owned()))
        .or_default();
    *s.calls.entry((func, outcome)).or_default() += 1;
    for (i, bound) in CALL_BUCKETS.iter().enumerate() {
        if seconds <= *bound {
            s.buckets[i] += 1;
        }
    }
    s.buckets[CALL_BUCKETS.len()] += 1;
    s.seconds += seconds;
    s.sql_seconds += sql.as_secs_f64();
    s.sql_calls += u64::from(sql_calls);
}

/// Records one HTTP request of a connection: its status (none: no response) and how long it
/// waited for the rate budget.
pub fn http_request(connection: &str, status: Option<u16>, budget_wait: Duration) {
    let mut r = registry();
    let s = r.http.entry(connection.to_owned()).or_default();
    *s.by_status.entry(status.unwrap_or(0)).or_default() += 1;
    s.budget_wait += budget_wait.as_secs_f64();
}

/// Counts a plugin store made (`alive`) or dropped: what an idle sync keeps in memory shows
/// in [`live_instances`].
pub fn plugin_instance(plugin: &str, connection: &str, alive: bool) {
    let mut r = registry();
    let key = (plugin.to_owned(), connection.to_owned());
    if alive {
        *r.live.entry(key).or_default() += 1;
    } else if let Some(n) = r.live.get_mut(&key) {
        *n = n.saturating_sub(1);
    }
}

/// The plugin instances alive now, by (plugin, connection); a pair that had one and has none
/// now shows 0.
pub fn live_instances() -> BTreeMap<(String, String), u64> {
    registry().live.clone()
}

/// Every plugin's calls so far, by (plugin, connection).
pub fn plugin_calls() -> BTreeMap<(String, String), CallStats> {
    registry().calls.clone()
}

/// Every connection's HTTP requests so far.
pub fn http_requests() -> BTreeMap<String, HttpStats> {
    registry().http.clone()
}
