//! `/metrics`: the Prometheus text format (version 0.0.4), written by hand: a few families
//! with labels need no library.

use std::fmt::Write;

use crate::ops::{lock, Ops, OpsError, DURATION_BUCKETS};

/// A label value, escaped as the format asks.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
    }
}

/// Every sync's counters since the process started, and gauges read from the state.
pub fn render(ops: &Ops) -> Result<String, OpsError> {
    let mut out = Out(String::new());
    let now = chrono::Utc::now().timestamp_micros();
    let syncs = ops.syncs()?;

    out.family("duplex_up", "gauge", "1 while the process answers.");
    let _ = writeln!(out.0, "duplex_up 1");

    type Gauge = fn(&crate::ops::SyncStatus) -> u64;
    let gauges: [(&str, &str, Gauge); 6] = [
        (
            "duplex_open_conflicts",
            "Conflicts waiting for a person.",
            |s| s.open_conflicts,
        ),
        (
            "duplex_rejected_records",
            "Records that could not be applied, kept with why.",
            |s| s.rejected,
        ),
        (
            "duplex_waiting_to_retry",
            "Links whose writes failed, waiting for their retry.",
            |s| s.waiting_to_retry,
        ),
        (
            "duplex_links",
            "Records the sync keeps together (one link each, over all its sides).",
            |s| s.links,
        ),
        (
            "duplex_filtered_links",
            "Links whose record left its side's filter: not synced until it passes again.",
            |s| s.filtered_links,
        ),
        ("duplex_paused", "1 when a person paused the sync.", |s| {
            u64::from(s.paused.is_some())
        }),
    ];
    for (name, help, get) in gauges {
        out.family(name, "gauge", help);
        for s in &syncs {
            out.sample(name, &[("sync", &s.info.name)], get(s));
        }
    }

    let Some(running) = ops.live() else {
        return Ok(out.0);
    };
    let all = running.live();
    let live: Vec<(&String, crate::ops::Live)> = all
        .iter()
        .map(|(name, l)| {
            let l = lock(l);
            (
                name,
                crate::ops::Live {
                    status: l.status.clone(),
                    paused: l.paused,
                    history: Default::default(),
                    counters: l.counters.clone(),
                },
            )
        })
        .collect();

    out.family("duplex_cycles_total", "counter", "Cycles run, by outcome.");
    for (name, l) in &live {
        out.sample(
            "duplex_cycles_total",
            &[("sync", name), ("outcome", "ok")],
            l.counters.cycles_ok,
        );
        out.sample(
            "duplex_cycles_total",
            &[("sync", name), ("outcome", "failed")],
            l.counters.cycles_failed,
        );
    }
    out.family(
        "duplex_cycle_failures_total",
        "counter",
        "Failed cycles, by what failed.",
    );
    for (name, l) in &live {
        for kind in ["read", "recover", "state"] {
            let n = l.counters.failures.get(kind).copied().unwrap_or(0);
            out.sample(
                "duplex_cycle_failures_total",
                &[("sync", name), ("error", kind)],
                n,
            );
        }
    }
    out.family(
        "duplex_changes_read_total",
        "counter",
        "Changes read, by side.",
    );
    for (name, l) in &live {
        for (i, n) in l.counters.read.iter().enumerate() {
            out.sample(
                "duplex_changes_read_total",
                &[
                    ("sync", name),
                    ("side", crate::engine::Side::nth(i).as_str()),
                ],
                n,
            );
        }
    }
    out.family(
        "duplex_writes_total",
        "counter",
        "Writes to either side, by kind (create, update, delete) and outcome.",
    );
    for (name, l) in &live {
        for kind in ["create", "update", "delete"] {
            let [ok, failed] = l
                .counters
                .writes_by_kind
                .get(kind)
                .copied()
                .unwrap_or_default();
            for (outcome, n) in [("ok", ok), ("failed", failed)] {
                out.sample(
                    "duplex_writes_total",
                    &[("sync", name), ("kind", kind), ("outcome", outcome)],
                    n,
                );
            }
        }
    }
    type Counter = fn(&crate::ops::SyncCounters) -> u64;
    let counters: [(&str, &str, Counter); 4] = [
        (
            "duplex_echoes_ignored_total",
            "Changes recognised as Duplex's own writes coming back.",
            |c| c.echoes,
        ),
        (
            "duplex_conflicts_held_total",
            "Conflicts held for a person, counted each cycle they are seen.",
            |c| c.conflicts_held,
        ),
        (
            "duplex_rejected_total",
            "Changes rejected, counted each cycle they are tried.",
            |c| c.rejected,
        ),
        (
            "duplex_decisions_total",
            "Fields changed on both sides that last-writer-wins or a rule settled.",
            |c| c.decided,
        ),
    ];
    for (metric, help, get) in counters {
        out.family(metric, "counter", help);
        for (name, l) in &live {
            out.sample(metric, &[("sync", name)], get(&l.counters));
        }
    }
    out.family(
        "duplex_lag_seconds",
        "gauge",
        "0 when both sides are caught up; else how long since they last were (an upper bound on the age of the oldest change not yet applied).",
    );
    for (name, l) in &live {
        let since = l.status.caught_up_at.unwrap_or(l.status.started_at);
        let lag = if l.status.caught_up {
            0.0
        } else {
            (now - since).max(0) as f64 / 1e6
        };
        out.sample("duplex_lag_seconds", &[("sync", name)], lag);
    }
    out.family(
        "duplex_remaining_changes",
        "gauge",
        "About how many changes the last cycle left waiting to be read, where the connectors said (a first load of a database table); absent where they could not tell.",
    );
    for (name, l) in &live {
        if let Some(n) = l.status.remaining {
            out.sample("duplex_remaining_changes", &[("sync", name)], n);
        }
    }
    out.family(
        "duplex_cycle_duration_seconds",
        "histogram",
        "How long cycles took.",
    );
    for (name, l) in &live {
        let c = &l.counters;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            out.sample(
                "duplex_cycle_duration_seconds_bucket",
                &[("sync", name), ("le", &bound.to_string())],
                c.duration_buckets[i],
            );
        }
        let count = c.duration_buckets[DURATION_BUCKETS.len()];
        out.sample(
            "duplex_cycle_duration_seconds_bucket",
            &[("sync", name), ("le", "+Inf")],
            count,
        );
        out.sample(
            "duplex_cycle_duration_seconds_sum",
            &[("sync", name)],
            c.duration_sum,
        );
        out.sample(
            "duplex_cycle_duration_seconds_count",
            &[("sync", name)],
            count,
        );
    }
    plugins(&mut out);
    Ok(out.0)
}

/// What the plugins did in this process ([`crate::telemetry`]).
fn plugins(out: &mut Out) {
    use crate::telemetry::CALL_BUCKETS;
    let calls = crate::telemetry::plugin_calls();
    out.family(
        "duplex_plugin_calls_total",
        "counter",
        "Calls into plugins, by export and outcome: returned (a value or the plugin's own error), trap, cpu_budget, memory, timeout (a limit hit), poisoned (refused after an earlier failure).",
    );
    for ((plugin, connection), c) in &calls {
        for ((func, outcome), n) in &c.calls {
            out.sample(
                "duplex_plugin_calls_total",
                &[
                    ("plugin", plugin),
                    ("connection", connection),
                    ("func", func),
                    ("outcome", outcome),
                ],
                n,
            );
        }
    }
    out.family(
        "duplex_plugin_call_duration_seconds",
        "histogram",
        "How long calls into plugins took.",
    );
    for ((plugin, connection), c) in &calls {
        for (i, bound) in CALL_BUCKETS.iter().enumerate() {
            let le = bound.to_string();
            out.sample(
                "duplex_plugin_call_duration_seconds_bucket",
                &[("plugin", plugin), ("connection", connection), ("le", &le)],
                c.buckets[i],
            );
        }
        let count = c.buckets[CALL_BUCKETS.len()];
        out.sample(
            "duplex_plugin_call_duration_seconds_bucket",
            &[
                ("plugin", plugin),
                ("connection", connection),
                ("le", "+Inf"),
            ],
            count,
        );
        let labels = [("plugin", plugin.as_str()), ("connection", connection)];
        out.sample(
            "duplex_plugin_call_duration_seconds_sum",
            &labels,
            c.seconds,
        );
        out.sample("duplex_plugin_call_duration_seconds_count", &labels, count);
    }
    // Counters per plugin and connection beside the calls': their share in SQL, in time and
    // in calls.
    type Counter = (
        &'static str,
        &'static str,
        fn(&crate::telemetry::CallStats) -> String,
    );
    let sql: [Counter; 2] = [
        (
            "duplex_plugin_sql_seconds_total",
            "Of the plugins' call time, the time spent in the host's SQL capability: connections opened or taken from the pool, round trips and the database's work (not waits for changes). The rest is the plugin's own work and its values crossing the sandbox.",
            |c| c.sql_seconds.to_string(),
        ),
        (
            "duplex_plugin_sql_calls_total",
            "The plugins' calls into the host's SQL capability: statements, transactions begun and ended, connections opened.",
            |c| c.sql_calls.to_string(),
        ),
    ];
    for (name, help, value) in sql {
        out.family(name, "counter", help);
        for ((plugin, connection), c) in &calls {
            out.sample(
                name,
                &[("plugin", plugin), ("connection", connection)],
                value(c),
            );
        }
    }
    out.family(
        "duplex_plugin_instances",
        "gauge",
        "Plugin instances alive now, each in a store of its own. An idle realtime sync whose sides announce changes keeps none.",
    );
    for ((plugin, connection), n) in &crate::telemetry::live_instances() {
        out.sample(
            "duplex_plugin_instances",
            &[("plugin", plugin), ("connection", connection)],
            n,
        );
    }
    let http = crate::telemetry::http_requests();
    out.family(
        "duplex_http_requests_total",
        "counter",
        "HTTP requests plugins sent, by connection and response status (0: no response).",
    );
    for (connection, h) in &http {
        for (status, n) in &h.by_status {
            out.sample(
                "duplex_http_requests_total",
                &[("connection", connection), ("status", &status.to_string())],
                n,
            );
        }
    }
    out.family(
        "duplex_http_rate_budget_wait_seconds_total",
        "counter",
        "Time HTTP requests waited for their connection's rate budget before being sent.",
    );
    for (connection, h) in &http {
        out.sample(
            "duplex_http_rate_budget_wait_seconds_total",
            &[("connection", connection)],
            h.budget_wait,
        );
    }
}
