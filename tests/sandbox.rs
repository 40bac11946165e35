//! Hostile components are fixtures: each fails its call (or its load) with an error naming the
//! plugin and the cause, within the configured limits, and the host goes on serving others.

// Test helpers unwrap too: a panic there is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{plugin, Db, HOSTILE, IMPORTS_UNKNOWN, LARGER_WINS, READS_FILES, SQL};
use duplex::host::Grants;
use duplex::plugin::{CallError, Conflict, LoadError, Resolution, Side, Value, WitError};

fn hostile(behave: &str, url: Option<&str>) -> String {
    serde_json::json!({ "behave": behave, "url": url }).to_string()
}

/// Grants naming a database that is never opened: the fixture imports sql, so it needs some.
fn unused_grant() -> Grants {
    Grants {
        sql: vec!["sqlite:///nonexistent/unused.db".into()],
        ..Grants::default()
    }
}

async fn load_hostile(
    host: &duplex::plugin::PluginHost,
    grants: &Grants,
) -> duplex::plugin::ConnectorPlugin {
    host.load_connector_file(&plugin(HOSTILE), "evil", grants)
        .await
        .expect("the hostile fixture loads: it misbehaves only when called")
}

/// The sql connector still answers on the same host.
async fn well_behaved_still_served(host: &duplex::plugin::PluginHost) {
    let db = Db::new("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);");
    let p = db.connector(host).await;
    let streams = common::streams(&p, &db.config()).await;
    assert_eq!(streams.len(), 1);
}

/// How many calls of the hostile fixture's `func` ended with `outcome`, as `/metrics` counts
/// them (process-wide: at least this test's).
fn counted(func: &str, outcome: &str) -> u64 {
    duplex::telemetry::plugin_calls()
        .get(&(HOSTILE.to_owned(), "evil".to_owned()))
        .and_then(|c| c.calls.get(&(func, outcome)).copied())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_trapping_plugin_fails_its_call_with_its_panic_message() {
    let host = common::host();
    let p = load_hostile(&host, &unused_grant()).await;
    let mut s = p.session().await.unwrap();
    let err = s.check(&hostile("trap", None)).await.unwrap_err();
    let CallError::Trap {
        caller, message, ..
    } = &err
    else {
        panic!("expected a trap, got {err}");
    };
    assert_eq!(&*caller.plugin, HOSTILE);
    assert!(message.contains("deliberate panic"), "{message}");
    assert!(
        err.to_string()
            .contains("plugin duplex_fixture_hostile (connection evil)"),
        "{err}"
    );
    // The trapped store is never entered again.
    let again = s.check(&hostile("ok", None)).await.unwrap_err();
    assert!(matches!(again, CallError::Poisoned { .. }), "{again}");
    assert!(counted("check", "trap") >= 1 && counted("check", "poisoned") >= 1);
    // A new session of the same plugin is fine.
    p.session()
        .await
        .unwrap()
        .check(&hostile("ok", None))
        .await
        .unwrap();
    well_behaved_still_served(&host).await;
}

#[tokio::test]
async fn an_endless_loop_is_stopped_by_the_cpu_budget() {
    let host = common::host();
    let p = load_hostile(&host, &unused_grant()).await;
    let started = Instant::now();
    let err = p
        .session()
        .await
        .unwrap()
        .check(&hostile("spin", None))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, CallError::CpuBudget { .. }), "{err}");
    assert!(err.to_string().contains(HOSTILE));
    assert!(
        counted("check", "cpu_budget") >= 1,
        "the limit hit is counted"
    );
    assert!(
        elapsed < common::test_limits().call_timeout,
        "stopped by the budget, not the timeout: {elapsed:?}"
    );
    well_behaved_still_served(&host).await;
}

#[tokio::test]
async fn a_memory_bomb_is_stopped_at_the_memory_cap() {
    let host = common::host();
    let p = load_hostile(&host, &unused_grant()).await;
    let err = p
        .session()
        .await
        .unwrap()
        .check(&hostile("alloc", None))
        .await
        .unwrap_err();
    let CallError::Memory { wanted, limit, .. } = &err else {
        panic!("expected a memory error, got {err}");
    };
    assert_eq!(*limit, common::test_limits().memory_bytes);
    assert!(wanted > limit);
    assert!(counted("check", "memory") >= 1, "the limit hit is counted");
    well_behaved_still_served(&host).await;
}

#[tokio::test]
async fn time_spent_waiting_in_a_host_call_is_bounded_by_the_wall_clock_timeout() {
    // The guest itself is idle while SQLite works, so epochs never see it: only the outer
    // timeout can stop this call.
    let db = Db::new("CREATE TABLE t (id INTEGER PRIMARY KEY);");
    let mut limits = common::test_limits();
    limits.call_timeout = Duration::from_secs(1);
    limits.cpu_per_call = Duration::from_secs(60);
    let host = common::host_with(limits);
    let p = load_hostile(&host, &db.grants()).await;
    let started = Instant::now();
    let err = p
        .session()
        .await
        .unwrap()
        .check(&hostile("sleep-in-host", Some(&db.url())))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    well_behaved_still_served(&host).await;
}

#[tokio::test]
async fn a_sql_url_not_granted_is_refused_with_a_typed_auth_error() {
    let granted = Db::new("CREATE TABLE t (id INTEGER PRIMARY KEY);");
    let secret = Db::new("CREATE TABLE secrets (id INTEGER PRIMARY KEY);");
    let host = common::host();
    let p = load_hostile(&host, &granted.grants()).await;
    let err = p
        .session()
        .await
        .unwrap()
        .check(&hostile("sql", Some(&secret.url())))
        .await
        .unwrap_err();
    let Some(WitError::Auth(msg)) = err.plugin_error() else {
        panic!("expected an auth error, got {err}");
    };
    assert!(
        msg.contains(&secret.url()) && msg.contains("connection evil"),
        "{msg}"
    );
    assert!(err.to_string().contains(HOSTILE));
}

#[tokio::test]
async fn a_connector_importing_sql_without_a_grant_does_not_load() {
    let host = common::host();
    let err = host
        .load_connector_file(&plugin(SQL), "crm", &Grants::default())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            LoadError::NotGranted {
                capability: "sql",
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("duplex:plugin/sql@0.6.0") && msg.contains("connection crm"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_component_for_another_world_is_refused_naming_the_missing_export() {
    let host = common::host();
    let err = host
        .load_connector_file(&plugin(LARGER_WINS), "crm", &Grants::default())
        .await
        .err()
        .expect("a rule is not a connector");
    let msg = err.to_string();
    assert!(msg.contains("duplex_rule_larger_wins"), "{msg}");
    assert!(
        msg.contains("does not export duplex:plugin/connector@0.6.0"),
        "{msg}"
    );
    assert!(
        msg.contains("duplex:plugin/resolver@0.6.0"),
        "says what it exports instead: {msg}"
    );

    let db = Db::new("CREATE TABLE t (id INTEGER PRIMARY KEY);");
    let err = host
        .load_resolver_file(&plugin(SQL), "crm-erp")
        .await
        .err()
        .expect("a connector is not a rule");
    assert!(
        err.to_string()
            .contains("does not export duplex:plugin/resolver@0.6.0"),
        "{err}"
    );
    drop(db);
}

#[tokio::test]
async fn a_component_importing_what_the_host_does_not_offer_is_refused_at_load() {
    let host = common::host();
    let err = host
        .load_resolver_file(&plugin(IMPORTS_UNKNOWN), "customers")
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("duplex_fixture_imports_unknown"), "{msg}");
    assert!(msg.contains("imports fixture:elsewhere/store"), "{msg}");
    assert!(msg.contains("does not offer"), "{msg}");
    well_behaved_still_served(&host).await;
}

/// WASI's files are linked granting nothing (no directory is preopened), so a component whose
/// runtime imports them loads, and an attempt to read a file fails at run time, saying so.
#[tokio::test]
async fn a_connector_that_reads_files_loads_and_is_refused_every_file() {
    let host = common::host();
    let p = host
        .load_connector_file(&plugin(READS_FILES), "crm", &Grants::default())
        .await
        .expect("loads: wasi:filesystem is linked, granting nothing");
    let err = p.session().await.unwrap().discover("{}").await.unwrap_err();
    let Some(WitError::Permanent(msg)) = err.plugin_error() else {
        panic!("expected the plugin's own error, got {err}");
    };
    assert!(msg.contains("No such file or directory"), "{msg}");
    assert!(!msg.contains("root:"), "the file's content leaked: {msg}");
    well_behaved_still_served(&host).await;
}

#[tokio::test]
async fn files_that_are_not_components_are_refused_saying_why() {
    let host = common::host();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "hello").unwrap();
    let err = host
        .load_connector_file(&text, "crm", &Grants::default())
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("notes is not a Duplex plugin: it is not WebAssembly"),
        "{err}"
    );

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let err = host
        .load_connector_file(&core, "crm", &Grants::default())
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("core WebAssembly module, not a component"),
        "{err}"
    );

    let missing = dir.path().join("missing.wasm");
    let err = host
        .load_connector_file(&missing, "crm", &Grants::default())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("missing.wasm"), "{err}");
}

fn conflict(field: &str, base: Option<Value>, left: Value, right: Value) -> Conflict {
    Conflict {
        sync: "crm-erp".into(),
        field: field.into(),
        base,
        left: Side {
            name: "crm".into(),
            value: left,
            changed_at: Some(1),
        },
        right: Side {
            name: "erp".into(),
            value: right,
            changed_at: Some(2),
        },
        others: Vec::new(),
    }
}

/// `conflict` in a sync of more sides: `others` are the third side and on.
fn conflict_of_more(field: &str, values: [Value; 4]) -> Conflict {
    let [left, right, third, fourth] = values;
    let mut c = conflict(field, None, left, right);
    c.others = [("desk", third), ("shop", fourth)]
        .into_iter()
        .map(|(name, value)| Side {
            name: name.into(),
            value,
            changed_at: Some(3),
        })
        .collect();
    c
}

/// Contract 0.4.0: a rule sees every side of a sync of more than two and may take any.
#[tokio::test]
async fn a_rule_sees_every_side_of_a_sync_of_more_and_takes_any() {
    let host = common::host();
    let rule = host
        .load_resolver_file(&plugin(LARGER_WINS), "people")
        .await
        .expect("rule loads");
    let int = Value::Integer;
    let answers = rule
        .resolve(vec![
            conflict_of_more("visits", [int(5), int(7), int(9), int(3)]),
            conflict_of_more("seats", [int(5), int(7), int(3), int(8)]),
            // Ties go to the side named first.
            conflict_of_more("level", [int(2), int(2), int(2), int(2)]),
            conflict_of_more("flag", [int(1), int(2), Value::Boolean(true), int(3)]),
        ])
        .await
        .unwrap();
    assert_eq!(answers[0], Resolution::TakeOther(0));
    assert_eq!(answers[1], Resolution::TakeOther(1));
    assert_eq!(answers[2], Resolution::TakeLeft);
    assert!(
        matches!(&answers[3], Resolution::Manual(why) if why.contains("flag")),
        "{answers:?}"
    );
}

/// A rule built for 0.3.0 sees two sides: asked about a sync of two it answers as before; a
/// conflict of a sync of more is not put to it but left to a person, saying to rebuild it.
#[tokio::test]
async fn a_rule_built_for_0_3_0_is_asked_about_syncs_of_two_only() {
    let host = common::host();
    let rule = host
        .load_resolver_file(&plugin(common::V0_3_0_TAKE_RIGHT), "people")
        .await
        .expect("a 0.3.0 rule loads");
    assert_eq!(rule.origin().contract.version(), "0.3.0");
    let int = Value::Integer;
    let answers = rule
        .resolve(vec![
            conflict("a", None, int(1), int(2)),
            conflict_of_more("b", [int(1), int(2), int(3), int(4)]),
            conflict("c", None, int(1), Value::Null),
        ])
        .await
        .unwrap();
    assert_eq!(answers[0], Resolution::TakeRight);
    let Resolution::Manual(why) = &answers[1] else {
        panic!("a conflict of four sides was put to a rule that sees two: {answers:?}")
    };
    assert!(
        why.contains("duplex:plugin@0.3.0")
            && why.contains("has 4")
            && why.contains("rebuild the rule against duplex:plugin@0.6.0"),
        "{why}"
    );
    assert!(matches!(&answers[2], Resolution::Manual(why) if why.contains("no value")));
}

/// A rule built for 0.4.0 sees every side, as the latest does: it is asked about syncs of
/// more too, and its `take-other` reaches the host.
#[tokio::test]
async fn a_rule_built_for_0_4_0_is_asked_with_every_side() {
    let host = common::host();
    let rule = host
        .load_resolver_file(&plugin(common::V0_4_0_TAKE_LAST), "people")
        .await
        .expect("a 0.4.0 rule loads");
    assert_eq!(rule.origin().contract.version(), "0.4.0");
    let int = Value::Integer;
    let answers = rule
        .resolve(vec![
            conflict("a", None, int(1), int(2)),
            conflict_of_more("b", [int(1), int(2), int(3), int(4)]),
            conflict_of_more("c", [int(1), int(2), int(3), Value::Null]),
        ])
        .await
        .unwrap();
    assert_eq!(answers[0], Resolution::TakeRight);
    assert_eq!(answers[1], Resolution::TakeOther(1));
    assert!(
        matches!(&answers[2], Resolution::Manual(why) if why.contains("no value")),
        "{answers:?}"
    );
}

/// A rule built for 0.5.0, the version before `change-batch.remaining`, is called as it is.
#[tokio::test]
async fn a_rule_built_for_0_5_0_is_asked_with_every_side() {
    let host = common::host();
    let rule = host
        .load_resolver_file(&plugin(common::V0_5_0_TAKE_LAST), "people")
        .await
        .expect("a 0.5.0 rule loads");
    assert_eq!(rule.origin().contract.version(), "0.5.0");
    let int = Value::Integer;
    let answers = rule
        .resolve(vec![
            conflict("a", None, int(1), int(2)),
            conflict_of_more("b", [int(1), int(2), int(3), int(4)]),
        ])
        .await
        .unwrap();
    assert_eq!(answers, [Resolution::TakeRight, Resolution::TakeOther(1)]);
}

/// A connector built for 0.3.0 keeps taking webhooks: its `webhook` export is called through
/// the adapter and its `signing` import reaches the host's HMAC keyed by the connection's
/// secret.
#[tokio::test]
async fn a_connector_built_for_0_3_0_verifies_webhooks_with_the_hosts_signing() {
    older_connector_verifies_webhooks(common::V0_3_0_NOTES, "0.3.0").await;
}

/// The same for a connector built for 0.4.0, through its own adapter.
#[tokio::test]
async fn a_connector_built_for_0_4_0_verifies_webhooks_with_the_hosts_signing() {
    older_connector_verifies_webhooks(common::V0_4_0_NOTES, "0.4.0").await;
}

/// And for one built for 0.5.0.
#[tokio::test]
async fn a_connector_built_for_0_5_0_verifies_webhooks_with_the_hosts_signing() {
    older_connector_verifies_webhooks(common::V0_5_0_NOTES, "0.5.0").await;
}

async fn older_connector_verifies_webhooks(fixture: &str, version: &str) {
    use duplex::host::http::{Secret, Secrets};
    use duplex::plugin::{WebhookAnswer, WebhookRequest};
    let host = common::host();
    let mut secrets = Secrets::default();
    secrets.insert("hook", Secret::new("s3cret"));
    let mut grants = Grants {
        sql: vec!["sqlite://unused.db".into()],
        ..Grants::default()
    };
    grants.http.secrets = secrets;
    let connector = host
        .load_connector_file(&plugin(fixture), "notes", &grants)
        .await
        .expect("an older connector loads");
    assert_eq!(connector.origin().contract.version(), version);
    let body = br#"[{"changed":"notes"}]"#.to_vec();
    let hex = |mac: Vec<u8>| mac.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let request = |signature: String| WebhookRequest {
        method: "POST".into(),
        path: "/hooks/notes".into(),
        headers: vec![("x-signature".into(), signature)],
        body: body.clone(),
        received_at: 0,
    };
    let mut session = connector.session().await.unwrap();
    let good = hex(duplex::host::signing::hmac_sha256(b"s3cret", &body));
    let config = r#"{"url":"sqlite://unused.db"}"#;
    assert!(matches!(
        session.webhook(config, request(good)).await.unwrap(),
        WebhookAnswer::ChangesWaiting
    ));
    let bad = hex(duplex::host::signing::hmac_sha256(b"guess", &body));
    assert!(matches!(
        session.webhook(config, request(bad)).await.unwrap(),
        WebhookAnswer::Refused(why) if why.contains("does not match")
    ));
}

#[tokio::test]
async fn a_rule_built_with_the_sdk_resolves_conflicts_through_the_resolver_world() {
    let host = common::host();
    let rule = host
        .load_resolver_file(&plugin(LARGER_WINS), "crm-erp")
        .await
        .expect("rule loads");
    let batch = vec![
        conflict(
            "visits",
            Some(Value::Integer(1)),
            Value::Integer(5),
            Value::Integer(7),
        ),
        conflict(
            "note",
            None,
            Value::Text("longer note".into()),
            Value::Text("short".into()),
        ),
        conflict("flag", None, Value::Boolean(true), Value::Boolean(false)),
    ];
    let first = rule.resolve(batch.clone()).await.unwrap();
    assert_eq!(first[0], Resolution::TakeRight);
    assert_eq!(first[1], Resolution::TakeLeft);
    assert!(matches!(&first[2], Resolution::Manual(why) if why.contains("flag")));
    // Deterministic: the same input gives the same answer.
    assert_eq!(rule.resolve(batch).await.unwrap(), first);
}

#[tokio::test]
async fn a_restart_loads_compiled_components_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let options = || duplex::plugin::HostOptions {
        limits: common::test_limits(),
        cache_dir: Some(dir.path().to_owned()),
    };
    let bytes = std::fs::read(plugin(LARGER_WINS)).unwrap();
    {
        let first = duplex::plugin::PluginHost::new(options()).unwrap();
        first.load_resolver("rule", "s", &bytes).await.unwrap();
        assert_eq!(first.cache_stats().misses, 1);
    }
    let second = duplex::plugin::PluginHost::new(options()).unwrap();
    second.load_resolver("rule", "s", &bytes).await.unwrap();
    assert_eq!(
        second.cache_stats(),
        duplex::plugin::CacheStats { hits: 1, misses: 0 }
    );

    // A damaged artifact costs a recompile, not a failure.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let third = duplex::plugin::PluginHost::new(options()).unwrap();
    third.load_resolver("rule", "s", &bytes).await.unwrap();
    assert_eq!(third.cache_stats().misses, 1);
}

#[test]
fn plugin_inspect_prints_world_exports_imports_and_grants() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["plugin", "inspect"])
        .arg(plugin(SQL))
        .env("XDG_CACHE_HOME", common::cache_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("duplex:plugin/connector-plugin@0.6.0 (connector plugin)"),
        "{stdout}"
    );
    assert!(stdout.contains("connector sql 0.1.0"), "{stdout}");
    assert!(stdout.contains("duplex:plugin/connector@0.6.0: info, check, discover, read, write, find, watch, remove-capture, webhook"), "{stdout}");
    assert!(stdout.contains("duplex:plugin/sql@0.6.0"), "{stdout}");
    assert!(stdout.contains("grants    sql (grants.sql)"), "{stdout}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["plugin", "inspect"])
        .arg(plugin(READS_FILES))
        .env("XDG_CACHE_HOME", common::cache_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("no directory is opened to plugins"),
        "says what wasi:filesystem gets: {stdout}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["plugin", "inspect"])
        .arg(plugin(IMPORTS_UNKNOWN))
        .env("XDG_CACHE_HOME", common::cache_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("NOT OFFERED") && stdout.contains("does not load"),
        "{stdout}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["plugin", "inspect", "Cargo.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a Duplex plugin: it is not WebAssembly"),
        "{stderr}"
    );
}
