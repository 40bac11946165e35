//! The sql capability and the sql connector on the PostgreSQL and MariaDB servers this machine
//! runs on loopback. Without a server the tests skip, except under CI (`CI=true`), where a
//! missing server is a failure.

// Test helpers unwrap too: a panic there is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use duplex::host::Grants;
use duplex::plugin::{
    ChangeKind, ConnectorPlugin, CreateOp, FieldMatch, FieldValue, LookupKey, PluginHost, UpdateOp,
    Value, WriteOp,
};
use sqlx::{Connection, Executor};

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const MY: &str = "mysql://root@127.0.0.1:3306";

/// A fresh database on a server, dropped afterwards.
struct ServerDb {
    kind: &'static str,
    name: String,
    url: String,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl ServerDb {
    async fn new(kind: &'static str) -> Option<ServerDb> {
        let name = format!(
            "duplex_t_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let admin = match kind {
            "postgres" => format!("{PG}/test"),
            _ => format!("{MY}/test"),
        };
        let created = async {
            match kind {
                "postgres" => {
                    let mut c = sqlx::PgConnection::connect(&admin).await?;
                    c.execute(format!("CREATE DATABASE {name}").as_str())
                        .await?;
                }
                _ => {
                    let mut c = sqlx::MySqlConnection::connect(&admin).await?;
                    c.execute(format!("CREATE DATABASE {name}").as_str())
                        .await?;
                }
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        if let Err(e) = created {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI needs the {kind} server on loopback, but it could not be used: {e}");
            }
            eprintln!("skipped: no {kind} server on loopback ({e})");
            return None;
        }
        let url = match kind {
            "postgres" => format!("{PG}/{name}"),
            _ => format!("{MY}/{name}"),
        };
        Some(ServerDb { kind, name, url })
    }

    async fn exec(&self, sql: &str) {
        match self.kind {
            "postgres" => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            }
            _ => {
                let mut c = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            }
        }
    }

    fn config(&self) -> String {
        serde_json::json!({ "url": self.url }).to_string()
    }

    async fn connector(&self, host: &PluginHost) -> ConnectorPlugin {
        host.load_connector_file(
            &common::plugin(common::SQL),
            self.kind,
            &Grants {
                sql: vec![self.url.clone()],
                ..Grants::default()
            },
        )
        .await
        .unwrap()
    }
}

impl Drop for ServerDb {
    fn drop(&mut self) {
        let (kind, name) = (self.kind, self.name.clone());
        // Best effort, on a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if kind == "postgres" {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{PG}/test")).await {
                        let _ = c
                            .execute(
                                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                            )
                            .await;
                    }
                } else if let Ok(mut c) =
                    sqlx::MySqlConnection::connect(&format!("{MY}/test")).await
                {
                    let _ = c
                        .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
                        .await;
                }
            })
        })
        .join();
    }
}

const PG_TYPES: &str = "
CREATE TABLE typed (
    id SERIAL PRIMARY KEY,
    i2 SMALLINT, i4 INTEGER, i8 BIGINT,
    n NUMERIC(20, 6), f4 REAL, f8 DOUBLE PRECISION,
    b BOOLEAN, t TEXT, vc VARCHAR(40), ch CHAR(3),
    ts TIMESTAMP, tstz TIMESTAMPTZ, d DATE,
    j JSON, jb JSONB, u UUID, by BYTEA
);
INSERT INTO typed (i2, i4, i8, n, f4, f8, b, t, vc, ch, ts, tstz, d, j, jb, u, by) VALUES
    (-12, 123456, 9007199254740993, 12345678901234.123456, 1.5, 2.25, true, 'héllo', 'v', 'abc',
     '2024-02-29 12:34:56.789', '2024-02-29 12:34:56.789+02', '2024-02-29',
     '{\"a\": 1}', '{\"b\": [1, 2]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10');
";

const MY_TYPES: &str = "
CREATE TABLE typed (
    id INT AUTO_INCREMENT PRIMARY KEY,
    i2 SMALLINT, i4 INT, i8 BIGINT,
    n DECIMAL(20, 6), f4 FLOAT, f8 DOUBLE,
    b TINYINT(1), t TEXT, vc VARCHAR(40), ch CHAR(3),
    ts DATETIME(6), tstz TIMESTAMP(6) NULL, d DATE,
    j JSON, jb LONGTEXT, u UUID, by_ BLOB
);
INSERT INTO typed (i2, i4, i8, n, f4, f8, b, t, vc, ch, ts, tstz, d, j, jb, u, by_) VALUES
    (-12, 123456, 9007199254740993, 12345678901234.123456, 1.5, 2.25, 1, 'héllo', 'v', 'abc',
     '2024-02-29 12:34:56.789', '2024-02-29 10:34:56.789', '2024-02-29',
     '{\"a\": 1}', '{\"b\": [1, 2]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', X'00ff10');
";

fn field<'a>(fields: &'a [FieldValue], name: &str) -> &'a Value {
    &fields
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no field {name}"))
        .value
}

/// Every supported type reads typed, and what Duplex writes reads back the same.
async fn type_round_trip(kind: &'static str, schema: &str, bytes_col: &str) {
    let Some(db) = ServerDb::new(kind).await else {
        return;
    };
    db.exec(schema).await;
    let host = common::host();
    let plugin = db.connector(&host).await;
    let mut s = plugin.session().await.unwrap();
    let batch = s
        .read(&db.config(), "typed", "test:reader", None, 10)
        .await
        .unwrap();
    assert_eq!(batch.changes.len(), 1);
    let f = batch.changes[0].fields.clone();
    let ts = 1_709_210_096_789_000;
    assert_eq!(field(&f, "i2"), &Value::Integer(-12), "{kind}");
    assert_eq!(field(&f, "i4"), &Value::Integer(123_456));
    assert_eq!(
        field(&f, "i8"),
        &Value::Integer(9_007_199_254_740_993),
        "no float rounding"
    );
    assert_eq!(
        field(&f, "n"),
        &Value::Decimal("12345678901234.123456".into()),
        "exact"
    );
    assert_eq!(field(&f, "f4"), &Value::Float(1.5));
    assert_eq!(field(&f, "f8"), &Value::Float(2.25));
    assert_eq!(field(&f, "b"), &Value::Boolean(true));
    assert_eq!(field(&f, "t"), &Value::Text("héllo".into()));
    assert_eq!(field(&f, "vc"), &Value::Text("v".into()));
    assert_eq!(
        field(&f, "ts"),
        &Value::Timestamp(ts),
        "without zone, read as UTC"
    );
    assert_eq!(
        field(&f, "tstz"),
        &Value::Timestamp(ts - 2 * 3_600_000_000),
        "with zone"
    );
    assert_eq!(field(&f, "d"), &Value::Text("2024-02-29".into()));
    assert!(
        matches!(field(&f, "j"), Value::Json(j) | Value::Text(j) if j.replace(' ', "") == r#"{"a":1}"#)
    );
    assert_eq!(
        field(&f, "u"),
        &Value::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
    );
    assert_eq!(field(&f, bytes_col), &Value::Bytes(vec![0, 255, 16]));

    // The other direction: write the same values as a new row, read both back.
    let values: Vec<FieldValue> = f.iter().filter(|x| x.name != "id").cloned().collect();
    let results = s
        .write(
            &db.config(),
            "typed",
            "t",
            vec![WriteOp::Create(CreateOp { fields: values })],
        )
        .await
        .unwrap();
    let new_id = results[0].as_ref().expect("the write succeeds").id.clone();
    let (changes, _) = common::read_until(
        &mut s,
        &db,
        ("typed", "test:reader", 100),
        batch.next_cursor,
        |c| c.iter().any(|c| c.id == new_id),
    )
    .await;
    let again = changes.iter().find(|c| c.id == new_id).unwrap();
    for original in &f {
        if original.name == "id" {
            continue;
        }
        assert_eq!(
            field(&again.fields, &original.name),
            &original.value,
            "{kind}: {} round trip",
            original.name
        );
    }
}

#[tokio::test]
async fn every_postgres_type_round_trips() {
    type_round_trip("postgres", PG_TYPES, "by").await;
}

#[tokio::test]
async fn every_mariadb_type_round_trips() {
    type_round_trip("mysql", MY_TYPES, "by_").await;
}

/// The connector lists PostgreSQL's tables from the catalogue (cheaper to plan than
/// information_schema, and asked by every schema check): the same tables information_schema
/// calls base tables, plain and partitioned, and no view, materialized view, sequence, table of
/// another schema or table of the capture's own.
#[tokio::test]
async fn postgres_tables_are_those_information_schema_calls_base_tables() {
    let Some(db) = ServerDb::new("postgres").await else {
        return;
    };
    db.exec(
        "CREATE TABLE plain (id INT PRIMARY KEY, v TEXT);
         CREATE TABLE parts (id INT PRIMARY KEY, v TEXT) PARTITION BY RANGE (id);
         CREATE TABLE parts_low PARTITION OF parts FOR VALUES FROM (0) TO (100);
         CREATE TABLE \"Mixed Case\" (id INT PRIMARY KEY);
         CREATE VIEW a_view AS SELECT * FROM plain;
         CREATE MATERIALIZED VIEW a_matview AS SELECT * FROM plain;
         CREATE SEQUENCE a_sequence;
         CREATE SCHEMA elsewhere;
         CREATE TABLE elsewhere.hidden (id INT PRIMARY KEY);
         CREATE TABLE _duplex_own (id INT PRIMARY KEY);",
    )
    .await;
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let base: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
         AND table_name NOT LIKE '\\_duplex\\_%' ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let host = common::host();
    let plugin = db.connector(&host).await;
    let streams = common::streams(&plugin, &db.config()).await;
    let mut found: Vec<String> = streams.into_iter().map(|s| s.name).collect();
    found.sort();
    assert_eq!(found, base);
    assert_eq!(found, ["Mixed Case", "parts", "parts_low", "plain"]);
}

/// A transaction that took an earlier log position but commits later is read, not skipped.
async fn late_commit_is_not_skipped(kind: &'static str, schema: &str) {
    let Some(db) = ServerDb::new(kind).await else {
        return;
    };
    db.exec(schema).await;
    let host = common::host();
    let plugin = db.connector(&host).await;
    let mut s = plugin.session().await.unwrap();
    let first = s
        .read(&db.config(), "items", "test:reader", None, 100)
        .await
        .unwrap();
    let mut cursor = first.next_cursor;

    // A: takes its position first, commits last.
    let early = match kind {
        "postgres" => {
            let mut a = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql("BEGIN").execute(&mut a).await.unwrap();
            sqlx::raw_sql("INSERT INTO items (name) VALUES ('late')")
                .execute(&mut a)
                .await
                .unwrap();
            let mut b = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql("INSERT INTO items (name) VALUES ('early')")
                .execute(&mut b)
                .await
                .unwrap();
            let seen = s
                .read(&db.config(), "items", "test:reader", Some(&cursor), 100)
                .await
                .unwrap();
            cursor = seen.next_cursor.clone();
            sqlx::raw_sql("COMMIT").execute(&mut a).await.unwrap();
            seen.changes
        }
        _ => {
            let mut a = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql("BEGIN").execute(&mut a).await.unwrap();
            sqlx::raw_sql("INSERT INTO items (name) VALUES ('late')")
                .execute(&mut a)
                .await
                .unwrap();
            let mut b = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql("INSERT INTO items (name) VALUES ('early')")
                .execute(&mut b)
                .await
                .unwrap();
            let seen = s
                .read(&db.config(), "items", "test:reader", Some(&cursor), 100)
                .await
                .unwrap();
            cursor = seen.next_cursor.clone();
            sqlx::raw_sql("COMMIT").execute(&mut a).await.unwrap();
            seen.changes
        }
    };
    let name_of = |c: &duplex::plugin::Change| field(&c.fields, "name").clone();
    let mut names: Vec<Value> = early.iter().map(name_of).collect();
    let (after, _) = common::read_until(&mut s, &db, ("items", "test:reader", 100), cursor, |c| {
        c.iter().any(|c| name_of(c) == Value::Text("late".into()))
    })
    .await;
    names.extend(after.iter().map(name_of));
    assert!(
        names.contains(&Value::Text("late".into())),
        "{kind}: the late commit was skipped: {names:?}"
    );
    assert!(
        names.contains(&Value::Text("early".into())),
        "{kind}: {names:?}"
    );
    assert!(after.iter().all(|c| c.kind == ChangeKind::Create));
}

impl common::TestDb for ServerDb {
    fn config(&self) -> String {
        ServerDb::config(self)
    }

    async fn exec(&self, sql: &str) {
        ServerDb::exec(self, sql).await
    }

    async fn count(&self, sql: &str) -> i64 {
        match self.kind {
            "postgres" => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
            _ => {
                let mut c = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
        }
    }
}

/// A fresh database of `kind` with `items (id, name)`, for the change log's scenarios.
async fn items_db(kind: &'static str) -> Option<ServerDb> {
    let db = ServerDb::new(kind).await?;
    db.exec(match kind {
        "postgres" => "CREATE TABLE items (id SERIAL PRIMARY KEY, name TEXT)",
        _ => "CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name TEXT)",
    })
    .await;
    Some(db)
}

/// An UPDATE, in `kind`'s SQL, that makes reader `who`'s row `secs` seconds old.
fn aged(kind: &'static str) -> impl Fn(&str, u32) -> String {
    move |who, secs| {
        let ago = match kind {
            "postgres" => format!("now() - interval '{secs} seconds'"),
            _ => format!("NOW(6) - INTERVAL {secs} SECOND"),
        };
        format!("UPDATE _duplex_readers SET seen_at = {ago} WHERE reader = '{who}'")
    }
}

#[tokio::test]
async fn the_change_log_keeps_only_what_its_readers_still_need_on_servers() {
    for kind in ["postgres", "mariadb"] {
        let Some(db) = items_db(kind).await else {
            continue;
        };
        let host = common::host();
        let plugin = db.connector(&host).await;
        common::the_log_keeps_only_what_readers_need(&db, &plugin, aged(kind)).await;
    }
}

/// The SQL capability's calls a connection's plugin calls made so far (`/metrics`'
/// `duplex_plugin_sql_calls_total`).
fn sql_calls(connection: &str) -> u64 {
    duplex::telemetry::plugin_calls()
        .iter()
        .filter(|((_, c), _)| c == connection)
        .map(|(_, s)| s.sql_calls)
        .sum()
}

/// A read of a server's log with nothing new is the connection (each call opens it, from the
/// pool), the log's query, on PostgreSQL a count of the entries held behind running
/// transactions (folded into the log's query it made every other read's planning twice as
/// long), and its readers' query: no transaction around them. It was six SQL calls on
/// PostgreSQL and seven on MariaDB (a transaction begun and committed, and on MariaDB the step
/// between positions asked apart). A cycle's fresh instance asks for the table's shape too. A
/// read that finds something still finds it, and a reader that moved is still registered.
#[tokio::test]
async fn an_empty_read_of_a_servers_log_needs_no_transaction() {
    for kind in ["postgres", "mariadb"] {
        let Some(db) = items_db(kind).await else {
            continue;
        };
        let host = common::host();
        let connection = format!("empty-read-{kind}");
        let grants = Grants {
            sql: vec![db.url.clone()],
            ..Grants::default()
        };
        let plugin = host
            .load_connector_file(&common::plugin(common::SQL), &connection, &grants)
            .await
            .unwrap();
        let mut s = plugin.session().await.unwrap();
        let first = s
            .read(&db.config(), "items", "sync-a", None, 100)
            .await
            .unwrap();
        assert!(
            first.changes.is_empty() && !first.has_more,
            "{kind}: an empty table"
        );
        let at = one_inserted_and_read(&mut s, &db, first.next_cursor).await;
        // The first read after the reader moved registers where it reads now, the next one
        // confirms it (see readers.rs): both write.
        let mut settled = at;
        for _ in 0..2 {
            let b = s
                .read(&db.config(), "items", "sync-a", Some(&settled), 100)
                .await
                .unwrap();
            assert!(b.changes.is_empty() && !b.has_more);
            settled = b.next_cursor;
        }
        let before = sql_calls(&connection);
        let idle = s
            .read(&db.config(), "items", "sync-a", Some(&settled), 100)
            .await
            .unwrap();
        let calls = sql_calls(&connection) - before;
        assert!(idle.changes.is_empty() && !idle.has_more);
        assert_eq!(idle.next_cursor, settled, "{kind}: nothing moved");
        let want = if kind == "postgres" { 4 } else { 3 };
        assert_eq!(calls, want, "{kind}: an empty read made {calls} SQL calls");
        // The reader's row says where it reads, as a read in a transaction left it.
        let confirmed = common::TestDb::count(
            &db,
            "SELECT count(*) FROM _duplex_readers WHERE reader = 'sync-a' AND pos = confirmed",
        )
        .await;
        assert_eq!(confirmed, 1, "{kind}: the reader's position is confirmed");
        one_inserted_and_read(&mut s, &db, idle.next_cursor).await;
    }
}

/// A first read of a table holding more than a page says how many rows are left, counted once
/// when its first page is full and handed down with each page after; the last page, and a log
/// read with nothing behind it, say none are left; a log read with a little behind it counts
/// it.
#[tokio::test]
async fn a_first_read_says_how_many_rows_are_left_on_servers() {
    for kind in ["postgres", "mariadb"] {
        let Some(db) = items_db(kind).await else {
            continue;
        };
        let rows: Vec<String> = (1..=25).map(|i| format!("('n{i}')")).collect();
        db.exec(&format!(
            "INSERT INTO items (name) VALUES {}",
            rows.join(", ")
        ))
        .await;
        let host = common::host();
        let plugin = db.connector(&host).await;
        let mut s = plugin.session().await.unwrap();
        let mut cursor = None;
        let mut said = Vec::new();
        loop {
            let b = s
                .read(&db.config(), "items", "sync-a", cursor.as_deref(), 10)
                .await
                .unwrap();
            said.push((b.changes.len(), b.has_more, b.remaining));
            cursor = Some(b.next_cursor);
            if !b.has_more {
                break;
            }
        }
        assert_eq!(
            said,
            [
                (10, true, Some(15)),
                (10, true, Some(5)),
                (5, false, Some(0))
            ],
            "{kind}"
        );
        // In the log, what waits behind a batch is counted up to a batch more: 15 rows made
        // in one transaction, read 10 at a time, leave 5. (PostgreSQL may hold them back
        // behind another test's running transaction for a moment: read until they come.)
        let rows: Vec<String> = (1..=15).map(|i| format!("('m{i}')")).collect();
        db.exec(&format!(
            "INSERT INTO items (name) VALUES {}",
            rows.join(", ")
        ))
        .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let b = loop {
            let b = s
                .read(&db.config(), "items", "sync-a", cursor.as_deref(), 10)
                .await
                .unwrap();
            if !b.changes.is_empty() || std::time::Instant::now() > deadline {
                break b;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            (b.changes.len(), b.has_more, b.remaining),
            (10, true, Some(5)),
            "{kind}"
        );
    }
}

/// Inserts a row into `items` and reads as `sync-a` from `cursor` until it comes; returns the
/// cursor after it.
async fn one_inserted_and_read(
    s: &mut duplex::plugin::ConnectorSession,
    db: &ServerDb,
    cursor: String,
) -> String {
    db.exec("INSERT INTO items (name) VALUES ('one more')")
        .await;
    let (seen, at) =
        common::read_until(s, db, ("items", "sync-a", 100), cursor, |c| !c.is_empty()).await;
    assert_eq!(seen.len(), 1, "{}: the insert is read", db.kind);
    at
}

#[tokio::test]
async fn pruning_beside_writers_loses_nothing_on_servers() {
    for kind in ["postgres", "mariadb"] {
        let Some(db) = items_db(kind).await else {
            continue;
        };
        let host = common::host();
        let plugin = db.connector(&host).await;
        common::pruning_beside_writers_loses_nothing(&db, &plugin, aged(kind)).await;
    }
}

/// PostgreSQL's log is read in transaction id order, and a batch's position is its last
/// entry's: ids compared as numbers, not as text, where "10000" sorts before "9999" and the
/// batch's last entry came back in the middle, so that the next read started over from there.
/// Two entries made as if by transactions 9999 and 10000, or, on a cluster younger than that
/// (a fresh machine's), the power of ten below its current transaction and the one before.
#[tokio::test]
async fn a_batch_crossing_a_power_of_ten_in_transaction_ids_ends_at_its_last_entry() {
    let Some(db) = items_db("postgres").await else {
        return;
    };
    let host = common::host();
    let plugin = db.connector(&host).await;
    let mut s = plugin.session().await.unwrap();
    s.read(&db.config(), "items", "sync-a", None, 100)
        .await
        .unwrap();
    db.exec("INSERT INTO items (name) VALUES ('one'), ('two')")
        .await;
    // Both must be older than every running transaction, or the log holds them back.
    let now = common::TestDb::count(&db, "SELECT txid_current()").await;
    let ten = 10i64.pow((now - 1).max(10).ilog10()).min(10_000);
    db.exec(&format!(
        "INSERT INTO _duplex_changes (tbl, pk, op, xid) VALUES ('items', '1', 'U', '{}'); \
         INSERT INTO _duplex_changes (tbl, pk, op, xid) VALUES ('items', '2', 'U', '{ten}')",
        ten - 1
    ))
    .await;
    let last_seq = common::TestDb::count(
        &db,
        &format!("SELECT seq FROM _duplex_changes WHERE xid = '{ten}'::xid8"),
    )
    .await;
    let from = format!("log|{}:0", ten - 2);
    let batch = s
        .read(&db.config(), "items", "sync-a", Some(&from), 2)
        .await
        .unwrap();
    assert_eq!(batch.next_cursor, format!("log|{ten}:{last_seq}"));
    let ids: Vec<&str> = batch.changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["1", "2"], "in the order of their transactions");
}

/// The table's sequential and index scans so far, once every session has reported its own:
/// PostgreSQL counts a session's scans when a transaction ends, unless it counted less than a
/// second before; then when the session has been idle for ten seconds.
async fn scans_reported(db: &ServerDb) -> (i64, i64) {
    tokio::time::sleep(Duration::from_millis(11_500)).await;
    let seq = common::TestDb::count(
        db,
        "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'items'",
    )
    .await;
    let idx = common::TestDb::count(
        db,
        "SELECT coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'items'",
    )
    .await;
    (seq, idx)
}

/// Rows looked up by many keys are found through the index on PostgreSQL: a batch's match
/// candidates (`find`), the rows of a read of many changes, a write's run of updates (joined
/// on key and version). Its planner costs an index probe as a read from disk and chose to
/// read the whole table instead until the table was some hundred thousand rows long: in a
/// first load with a match key every batch's lookup scanned the growing destination (the match
/// step took 1.3-1.5 s of a 100,000-row load; 0.4-0.5 s through the index), and 1,000 changes
/// took twice as long on a table of 100,000 rows as on one of 10,000. The table is not
/// analysed, as a table filled moments ago is not; its own counters say which way each lookup
/// went (the previous connector scanned it three times: twice reading the changes, once
/// writing them).
#[tokio::test]
async fn lookups_of_many_keys_use_the_index_on_postgres() {
    let Some(db) = ServerDb::new("postgres").await else {
        return;
    };
    db.exec(
        "CREATE TABLE items (id SERIAL PRIMARY KEY, code TEXT UNIQUE NOT NULL, \
                             qty INT NOT NULL DEFAULT 0); \
         INSERT INTO items (code) SELECT 'c' || n FROM generate_series(1, 100000) n",
    )
    .await;
    let host = common::host();
    let plugin = db.connector(&host).await;
    let config = db.config();
    let mut s = plugin.session().await.unwrap();
    // Read through the table to its log; then a person changes 1,000 rows.
    let mut cursor = None;
    loop {
        let b = s
            .read(&config, "items", "sync-a", cursor.as_deref(), 10_000)
            .await
            .unwrap();
        cursor = Some(b.next_cursor);
        if !b.has_more {
            break;
        }
    }
    db.exec("UPDATE items SET qty = 1 WHERE id % 100 = 0").await;
    let (seq_before, idx_before) = scans_reported(&db).await;

    let values: Vec<Value> = (1..=500)
        .map(|n| Value::Text(format!("c{}", n * 37)))
        .collect();
    let found = s
        .find(
            &config,
            "items",
            LookupKey::ByField(FieldMatch {
                field: "code".into(),
                values,
                ignore_case: false,
            }),
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 500);
    let (changes, _) = common::read_until(
        &mut s,
        &db,
        ("items", "sync-a", 1_000),
        cursor.unwrap(),
        |c| c.len() >= 1_000,
    )
    .await;
    assert_eq!(changes.len(), 1_000);
    let ops = changes
        .iter()
        .map(|c| {
            WriteOp::Update(UpdateOp {
                id: c.id.clone(),
                fields: vec![FieldValue {
                    name: "qty".into(),
                    value: Value::Integer(2),
                }],
                if_version: c.version.clone(),
            })
        })
        .collect();
    let written = s.write(&config, "items", "sync-b", ops).await.unwrap();
    assert!(written.iter().all(Result::is_ok), "{written:?}");

    let (seq, idx) = scans_reported(&db).await;
    assert_eq!(seq, seq_before, "a lookup read the whole table");
    assert!(idx > idx_before, "the lookups show in no counter");
    let updated = common::TestDb::count(&db, "SELECT count(*) FROM items WHERE qty = 2").await;
    assert_eq!(updated, 1_000);
}

#[tokio::test]
async fn a_late_commit_is_not_skipped_on_postgres() {
    late_commit_is_not_skipped(
        "postgres",
        "CREATE TABLE items (id SERIAL PRIMARY KEY, name TEXT)",
    )
    .await;
}

/// PostgreSQL leaves the reader's own writes out in the log query itself: batches made only of
/// them still move the cursor, a record someone else touched too is delivered, and other
/// readers see everything.
#[tokio::test]
async fn own_writes_are_left_out_for_their_writer_on_postgres() {
    let Some(db) = ServerDb::new("postgres").await else {
        return;
    };
    db.exec("CREATE TABLE items (id SERIAL PRIMARY KEY, name TEXT)")
        .await;
    let host = common::host();
    let plugin = db.connector(&host).await;
    let mut s = plugin.session().await.unwrap();
    let start = s
        .read(&db.config(), "items", "sync:a", None, 100)
        .await
        .unwrap()
        .next_cursor;
    let name = |n: &str| FieldValue {
        name: "name".into(),
        value: Value::Text(n.into()),
    };
    let creates = (0..5)
        .map(|i| {
            WriteOp::Create(CreateOp {
                fields: vec![name(&format!("own {i}"))],
            })
        })
        .collect();
    let written = s
        .write(&db.config(), "items", "sync:a", creates)
        .await
        .unwrap();
    assert!(written.iter().all(Result::is_ok), "{written:?}");
    let names = |c: &[duplex::plugin::Change]| -> Vec<String> {
        c.iter()
            .map(|c| match field(&c.fields, "name") {
                Value::Text(t) => t.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    };

    // Another reader sees all five; the writer, reading two entries at a time, none, and its
    // cursor still moves past them: a person's change after them is its next change.
    let (others, others_end) = common::read_until(
        &mut s,
        &db,
        ("items", "test:reader", 2),
        start.clone(),
        |c| c.len() >= 5,
    )
    .await;
    assert_eq!(others.len(), 5, "{:?}", names(&others));
    let (mine, after_own) =
        common::read_until(&mut s, &db, ("items", "sync:a", 2), start.clone(), |_| true).await;
    assert!(mine.is_empty(), "own writes came back: {:?}", names(&mine));
    assert_eq!(
        after_own, others_end,
        "the writer's cursor stopped before its own writes"
    );
    db.exec("INSERT INTO items (name) VALUES ('person')").await;
    let (mine, after_person) =
        common::read_until(&mut s, &db, ("items", "sync:a", 2), after_own, |c| {
            !c.is_empty()
        })
        .await;
    assert_eq!(names(&mine), ["person"]);
    assert_eq!(mine[0].origin, None);

    // Duplex writes a record and a person edits it before the writer reads: delivered, as the
    // person's, with the person's value.
    let id = written[0].as_ref().unwrap().id.clone();
    let update = WriteOp::Update(duplex::plugin::UpdateOp {
        id: id.clone(),
        fields: vec![name("own again")],
        if_version: None,
    });
    let again = s
        .write(&db.config(), "items", "sync:a", vec![update])
        .await
        .unwrap();
    assert!(again[0].is_ok(), "{again:?}");
    db.exec(&format!("UPDATE items SET name = 'edited' WHERE id = {id}"))
        .await;
    let (mine, _) = common::read_until(&mut s, &db, ("items", "sync:a", 100), after_person, |c| {
        !c.is_empty()
    })
    .await;
    assert_eq!(names(&mine), ["edited"]);
    assert_eq!(
        (mine[0].id.as_str(), mine[0].origin.as_deref()),
        (id.as_str(), None)
    );
}

#[tokio::test]
async fn a_late_commit_is_not_skipped_on_mariadb() {
    late_commit_is_not_skipped(
        "mysql",
        "CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name TEXT)",
    )
    .await;
}

#[tokio::test]
async fn credentials_never_appear_in_errors() {
    let host = common::host();
    let url = "postgres://postgres:hunter2@127.0.0.1:1/nowhere";
    let plugin = host
        .load_connector_file(
            &common::plugin(common::SQL),
            "pg",
            &Grants {
                sql: vec![url.into()],
                ..Grants::default()
            },
        )
        .await
        .unwrap();
    let err = plugin
        .session()
        .await
        .unwrap()
        .check(&serde_json::json!({ "url": url }).to_string())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(msg.contains("***"), "{msg}");
}

const PG_CUSTOMERS: &str = "
CREATE TABLE customers (
    id SERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    full_name TEXT NOT NULL,
    balance NUMERIC(12, 2),
    active BOOLEAN NOT NULL DEFAULT true,
    seen TIMESTAMPTZ
);
INSERT INTO customers (email, full_name, balance, active, seen) VALUES
    ('ada@example.com', 'Ada', 10.50, true, '2024-01-01 10:00:00+00'),
    ('bob@example.com', 'Bob', NULL, false, NULL);
";

const MY_CLIENTS: &str = "
CREATE TABLE clients (
    no INT AUTO_INCREMENT PRIMARY KEY,
    mail VARCHAR(120) NOT NULL UNIQUE,
    name VARCHAR(120) NOT NULL,
    credit DECIMAL(12, 2),
    status TINYINT(1) NOT NULL DEFAULT 1,
    last_seen DATETIME(6)
);
INSERT INTO clients (mail, name, credit, status, last_seen) VALUES
    ('ADA@example.com', 'Ada', 10.5, 1, '2024-01-01 10:00:00'),
    ('cy@example.com', 'Cy', 99.99, 1, NULL);
";

const SQLITE_CLIENTS: &str = "
CREATE TABLE clients (
    no INTEGER PRIMARY KEY,
    mail TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    credit DECIMAL(12, 2),
    status BOOLEAN NOT NULL DEFAULT 1,
    last_seen TIMESTAMP
);
INSERT INTO clients (mail, name, credit, status, last_seen) VALUES
    ('ADA@example.com', 'Ada', '10.5', 1, '2024-01-01 10:00:00'),
    ('cy@example.com', 'Cy', '99.99', 1, NULL);
";

/// A config syncing PostgreSQL customers with `right_url`'s clients.
fn cross_config(
    dir: &std::path::Path,
    left_url: &str,
    right_url: &str,
    schedule: &str,
) -> std::path::PathBuf {
    let config = format!(
        r#"
[connections.pg]
plugin = "builtin:sql"
config = {{ url = "{left_url}" }}
grants = {{ sql = ["{left_url}"] }}

[connections.other]
plugin = "builtin:sql"
config = {{ url = "{right_url}" }}
grants = {{ sql = ["{right_url}"] }}

[syncs.people]
left = "pg.customers"
right = "other.clients"
match = {{ field = "email", ignore_case = true }}
schedule = "{schedule}"
fields = [
    {{ left = "email", right = "mail" }},
    {{ left = "full_name", right = "name" }},
    {{ left = "balance", right = "credit" }},
    {{ left = "active", right = "status" }},
    {{ left = "seen", right = "last_seen" }},
]
"#
    );
    let path = dir.join("duplex.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// email, name, balance, active, seen.
type PersonRow = (String, String, Option<String>, bool, Option<String>);

/// Rows as comparable text: email (lower case) -> the other mapped fields.
async fn pg_people(db: &ServerDb) -> std::collections::BTreeMap<String, String> {
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let rows: Vec<PersonRow> = sqlx::query_as(
        "SELECT lower(email), full_name, balance::text, active, to_char(seen AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM customers",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(e, n, b, a, s)| {
            (
                e,
                format!(
                    "{n}|{}|{a}|{}",
                    b.map(|b| b.trim_end_matches('0').trim_end_matches('.').to_owned())
                        .unwrap_or_default(),
                    s.unwrap_or_default()
                ),
            )
        })
        .collect()
}

async fn my_people(db: &ServerDb) -> std::collections::BTreeMap<String, String> {
    let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    let rows: Vec<PersonRow> = sqlx::query_as(
        "SELECT CAST(lower(mail) AS CHAR), CAST(name AS CHAR), CAST(credit AS CHAR), status <> 0, CAST(DATE_FORMAT(last_seen, '%Y-%m-%d %H:%i:%s') AS CHAR) FROM clients",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(e, n, b, a, s)| {
            (
                e,
                format!(
                    "{n}|{}|{a}|{}",
                    b.map(|b| b.trim_end_matches('0').trim_end_matches('.').to_owned())
                        .unwrap_or_default(),
                    s.unwrap_or_default()
                ),
            )
        })
        .collect()
}

fn sqlite_people(path: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut q = c
        .prepare("SELECT lower(mail), name, CAST(credit AS TEXT), status, substr(last_seen, 1, 19) FROM clients")
        .unwrap();
    let rows = q
        .query_map([], |r| {
            let credit: Option<String> = r.get(2)?;
            let active: bool = r.get(3)?;
            Ok((
                r.get::<_, String>(0)?,
                format!(
                    "{}|{}|{active}|{}",
                    r.get::<_, String>(1)?,
                    credit
                        .map(|b| if b.contains('.') {
                            b.trim_end_matches('0').trim_end_matches('.').to_owned()
                        } else {
                            b
                        })
                        .unwrap_or_default(),
                    r.get::<_, Option<String>>(4)?.unwrap_or_default()
                ),
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// PostgreSQL's customers and MariaDB's clients made afresh, and a realtime sync between them
/// in a new folder; none when a server is missing (a failure under CI, see `ServerDb::new`).
async fn cross_servers() -> Option<(ServerDb, ServerDb, tempfile::TempDir, std::path::PathBuf)> {
    let pg = ServerDb::new("postgres").await?;
    let my = ServerDb::new("mysql").await?;
    pg.exec(PG_CUSTOMERS).await;
    my.exec(MY_CLIENTS).await;
    let dir = tempfile::tempdir().unwrap();
    let config = cross_config(dir.path(), &pg.url, &my.url, "realtime");
    Some((pg, my, dir, config))
}

#[tokio::test]
async fn postgres_and_mariadb_sync_both_ways_in_different_shapes() {
    let Some((pg, my, _dir, config)) = cross_servers().await else {
        return;
    };
    let sync = || async {
        let app = duplex::app::App::load(&config).await.unwrap();
        let state = app.open_state().unwrap();
        app.run_once(&state, |_, _| {}).await.unwrap();
    };
    sync().await;
    assert_eq!(pg_people(&pg).await, my_people(&my).await);
    assert_eq!(
        pg_people(&pg).await.len(),
        3,
        "Ada matched, Bob and Cy created"
    );

    pg.exec("UPDATE customers SET balance = 12.75, full_name = 'Ada L.' WHERE email = 'ada@example.com'").await;
    my.exec("UPDATE clients SET status = 0, last_seen = '2024-06-01 08:30:00' WHERE mail = 'cy@example.com'").await;
    my.exec("DELETE FROM clients WHERE mail = 'bob@example.com'")
        .await;
    sync().await;
    let people = pg_people(&pg).await;
    assert_eq!(people, my_people(&my).await);
    assert_eq!(
        people["ada@example.com"],
        "Ada L.|12.75|true|2024-01-01 10:00:00"
    );
    assert_eq!(
        people["cy@example.com"],
        "Cy|99.99|false|2024-06-01 08:30:00"
    );
    assert!(!people.contains_key("bob@example.com"));
}

#[tokio::test]
async fn postgres_and_sqlite_sync_both_ways_in_different_shapes() {
    let Some(pg) = ServerDb::new("postgres").await else {
        return;
    };
    pg.exec(PG_CUSTOMERS).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients.db");
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch(SQLITE_CLIENTS)
        .unwrap();
    let config = cross_config(dir.path(), &pg.url, "sqlite://clients.db", "realtime");
    let sync = || async {
        let app = duplex::app::App::load(&config).await.unwrap();
        let state = app.open_state().unwrap();
        app.run_once(&state, |_, _| {}).await.unwrap();
    };
    sync().await;
    assert_eq!(pg_people(&pg).await, sqlite_people(&file));
    pg.exec("UPDATE customers SET active = false WHERE email = 'bob@example.com'")
        .await;
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute(
            "UPDATE clients SET name = 'Cyrus', credit = '100.01' WHERE mail = 'cy@example.com'",
            [],
        )
        .unwrap();
    sync().await;
    let people = pg_people(&pg).await;
    assert_eq!(people, sqlite_people(&file));
    assert_eq!(people["cy@example.com"], "Cyrus|100.01|true|");
    assert!(people["bob@example.com"].contains("|false|"));
}

/// One writer's work: creates, updates and deletes of its own records, and edits of records
/// every writer shares. Returns the last name it gave each of its own live records.
async fn write_load(
    kind: &'static str,
    url: String,
    writer: usize,
    ops: usize,
    shared: Vec<String>,
) -> std::collections::BTreeMap<String, String> {
    let mut own: Vec<String> = Vec::new();
    let mut last = std::collections::BTreeMap::new();
    let mut rng = (writer as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let pg = if kind == "postgres" {
        Some(sqlx::PgPool::connect(&url).await.unwrap())
    } else {
        None
    };
    let my = if kind == "mysql" {
        Some(sqlx::MySqlPool::connect(&url).await.unwrap())
    } else {
        None
    };
    // As applications do, a statement chosen as a deadlock victim is run again.
    let exec = |sql: String| {
        let (pg, my) = (pg.clone(), my.clone());
        async move {
            let mut attempt = 0;
            loop {
                let r = match (&pg, &my) {
                    (Some(p), _) => sqlx::raw_sql(&sql).execute(p).await.map(drop),
                    (_, Some(m)) => sqlx::raw_sql(&sql).execute(m).await.map(drop),
                    _ => unreachable!(),
                };
                match r {
                    Err(sqlx::Error::Database(d))
                        if attempt < 10
                            && matches!(d.code().as_deref(), Some("40001" | "40P01")) =>
                    {
                        attempt += 1
                    }
                    other => return other,
                }
            }
        }
    };
    let (table, email, name) = if kind == "postgres" {
        ("customers", "email", "full_name")
    } else {
        ("clients", "mail", "name")
    };
    for i in 0..ops {
        let roll = next() % 100;
        if roll < 35 || own.is_empty() {
            let e = format!("{kind}-{writer}-{i}@example.com");
            exec(format!(
                "INSERT INTO {table} ({email}, {name}) VALUES ('{e}', 'new {i}')"
            ))
            .await
            .unwrap();
            last.insert(e.clone(), format!("new {i}"));
            own.push(e);
        } else if roll < 75 {
            let e = own[(next() as usize) % own.len()].clone();
            exec(format!(
                "UPDATE {table} SET {name} = 'w{writer} {i}' WHERE {email} = '{e}'"
            ))
            .await
            .unwrap();
            last.insert(e, format!("w{writer} {i}"));
        } else if roll < 85 {
            let e = own.swap_remove((next() as usize) % own.len());
            exec(format!("DELETE FROM {table} WHERE {email} = '{e}'"))
                .await
                .unwrap();
            last.remove(&e);
        } else {
            // Everybody edits the shared records: concurrent edits of the same rows.
            let e = &shared[(next() as usize) % shared.len()];
            exec(format!("UPDATE {table} SET {name} = 'shared {kind} {writer} {i}' WHERE lower({email}) = '{e}'")).await.unwrap();
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_sync_under_concurrent_writers_converges_without_duplicates_or_echoes() {
    // Failed cycles and retries are logged: a failure of this test shows them.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DUPLEX_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let Some(pg) = ServerDb::new("postgres").await else {
        return;
    };
    let Some(my) = ServerDb::new("mysql").await else {
        return;
    };
    pg.exec(PG_CUSTOMERS).await;
    my.exec(MY_CLIENTS).await;
    let shared: Vec<String> = (0..10).map(|i| format!("shared{i}@example.com")).collect();
    for e in &shared {
        pg.exec(&format!(
            "INSERT INTO customers (email, full_name) VALUES ('{e}', 'shared')"
        ))
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = cross_config(dir.path(), &pg.url, &my.url, "realtime");
    let app = duplex::app::App::load(&config).await.unwrap();
    let state = std::sync::Arc::new(app.open_state().unwrap());
    app.run_once(&state, |_, _| {}).await.unwrap();

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ops: usize = std::env::var("LOAD_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let work = async {
        let writers: Vec<_> = (0..2)
            .flat_map(|w| {
                [
                    tokio::spawn(write_load(
                        "postgres",
                        pg.url.clone(),
                        w,
                        ops,
                        shared.clone(),
                    )),
                    tokio::spawn(write_load("mysql", my.url.clone(), w, ops, shared.clone())),
                ]
            })
            .collect();
        let mut expected = std::collections::BTreeMap::new();
        for w in writers {
            expected.extend(w.await.unwrap());
        }
        if std::env::var("LOAD_TRACE").is_ok() {
            eprintln!("writers done");
        }
        // Converged: both sides hold the same records with the same values.
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let (a, b) = (pg_people(&pg).await, my_people(&my).await);
            if a == b {
                break;
            }
            if std::env::var("LOAD_TRACE").is_ok() {
                eprintln!("waiting: {} vs {} records", a.len(), b.len());
            }
            if std::time::Instant::now() >= deadline {
                let only =
                    |x: &std::collections::BTreeMap<String, String>,
                     y: &std::collections::BTreeMap<String, String>| {
                        x.iter()
                            .filter(|(k, v)| y.get(*k) != Some(*v))
                            .take(5)
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                    };
                panic!(
                    "did not converge: {} vs {} records; only on postgres: {:?}; only on mariadb: {:?}; rejected: {:?}; stats: {:?}",
                    a.len(),
                    b.len(),
                    only(&a, &b),
                    only(&b, &a),
                    state.rejected("people").unwrap().iter().take(5).collect::<Vec<_>>(),
                    state.stats("people").unwrap(),
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A write that lost a deadlock more often than the connector starts over is listed as
        // rejected and retried after a second: give the retries a moment.
        let retried = std::time::Instant::now() + Duration::from_secs(5);
        while !state.rejected("people").unwrap().is_empty() && std::time::Instant::now() < retried {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = stop_tx.send(());
        expected
    };
    let run = app.run(
        &state,
        async {
            let _ = stop_rx.await;
        },
        |_, _| {},
    );
    let (expected, ran) = tokio::join!(work, run);
    ran.unwrap();

    let people = pg_people(&pg).await;
    assert_eq!(people, my_people(&my).await);
    // No lost update: every record only one writer touched ends with its last write.
    for (email, name) in &expected {
        let got = people.get(email).unwrap_or_else(|| panic!("{email} lost"));
        assert!(
            got.starts_with(&format!("{name}|")),
            "{email}: {got} instead of {name}"
        );
    }
    // No duplicate: one record per email on each side, counted in the databases.
    let pg_rows: i64 = {
        let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM customers")
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    let my_rows: i64 = {
        let mut c = sqlx::MySqlConnection::connect(&my.url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM clients")
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    assert_eq!(pg_rows as usize, people.len());
    assert_eq!(my_rows as usize, people.len());
    // Nothing left unapplied (an ambiguous match is rejected with its change). A write that
    // lost deadlocks waits for its retry; the data above shows nothing of it was lost.
    let unapplied: Vec<_> = state
        .rejected("people")
        .unwrap()
        .into_iter()
        .filter(|r| r.change.is_some())
        .collect();
    assert!(unapplied.is_empty(), "{unapplied:?}");
    // No echo: once caught up, more cycles write nothing.
    let writes = state.stats("people").unwrap().writes;
    let reports = app.run_once(&state, |_, _| {}).await.unwrap();
    let more: usize = reports.values().flatten().map(|r| r.writes).sum();
    assert_eq!(more, 0, "writes after convergence: echoes bounced");
    println!(
        "{} writer operations, {writes} sync writes, {} records",
        4 * ops,
        people.len()
    );
}

/// Two syncs in one `run`: one idle and realtime on PostgreSQL, so it waits for a NOTIFY for
/// up to two seconds at a time, and one catching up on a backlog. The backlog must not wait
/// behind the idle sync's waits (it did when syncs took turns in one loop: a gap of two seconds
/// between its cycles each time the idle one waited).
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_realtime_sync_holds_up_no_other() {
    let (Some(a), Some(b)) = (
        ServerDb::new("postgres").await,
        ServerDb::new("postgres").await,
    ) else {
        return;
    };
    for db in [&a, &b] {
        db.exec("CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let rows = 400;
    for (file, fill) in [("src.db", true), ("dst.db", false)] {
        let c = rusqlite::Connection::open(dir.path().join(file)).unwrap();
        c.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            .unwrap();
        if fill {
            for i in 0..rows {
                c.execute(
                    "INSERT INTO notes (body) VALUES (?1)",
                    [format!("note {i}")],
                )
                .unwrap();
            }
        }
    }
    let config = dir.path().join("duplex.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[connections.a]
plugin = "builtin:sql"
config = {{ url = "{a}" }}
grants = {{ sql = ["{a}"] }}

[connections.b]
plugin = "builtin:sql"
config = {{ url = "{b}" }}
grants = {{ sql = ["{b}"] }}

[connections.src]
plugin = "builtin:sql"
config = {{ url = "sqlite://src.db" }}
grants = {{ sql = ["sqlite://src.db"] }}

[connections.dst]
plugin = "builtin:sql"
config = {{ url = "sqlite://dst.db" }}
grants = {{ sql = ["sqlite://dst.db"] }}

[syncs.idle]
left = "a.notes"
right = "b.notes"
schedule = "realtime"
fields = [{{ left = "body", right = "body" }}]

[syncs.backlog]
left = "src.notes"
right = "dst.notes"
schedule = "realtime"
batch = 10
fields = [{{ left = "body", right = "body" }}]
"#,
            a = a.url,
            b = b.url
        ),
    )
    .unwrap();
    let app = duplex::app::App::load(&config).await.unwrap();
    let state = std::sync::Arc::new(app.open_state().unwrap());

    let cycles = std::cell::RefCell::new(Vec::<(String, std::time::Instant)>::new());
    let copied = || {
        rusqlite::Connection::open(dir.path().join("dst.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM notes", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    let done = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while copied() < rows && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    app.run(&state, done, |sync, _| {
        cycles
            .borrow_mut()
            .push((sync.to_owned(), std::time::Instant::now()))
    })
    .await
    .unwrap();
    assert_eq!(copied(), rows, "the backlog was not copied");

    let cycles = cycles.into_inner();
    let of = |name: &str| -> Vec<std::time::Instant> {
        cycles
            .iter()
            .filter(|(s, _)| s == name)
            .map(|(_, t)| *t)
            .collect()
    };
    let (idle, backlog) = (of("idle"), of("backlog"));
    assert!(!idle.is_empty(), "the idle sync never ran");
    // 40 batches of 10; the run may stop before the last cycle reports.
    assert!(backlog.len() >= 20, "{} backlog cycles", backlog.len());
    // The idle sync's waits are two seconds each; a backlog cycle takes milliseconds. One
    // second leaves room for a slow machine and none for a wait behind the idle sync.
    let longest = backlog.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest < Duration::from_secs(1),
        "the backlog waited {longest:?} between two cycles"
    );
}

/// An idle realtime PostgreSQL sync keeps no plugin instance, and so no pooled connection,
/// through its waits: the host listens for the capture's NOTIFY itself and makes the
/// connector's wait again in its place. A change still arrives at once, which, with no cycle
/// run while idle, only the announcement can bring.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_postgres_sync_keeps_no_instance_and_still_wakes_at_once() {
    let (Some(a), Some(b)) = (
        ServerDb::new("postgres").await,
        ServerDb::new("postgres").await,
    ) else {
        return;
    };
    for db in [&a, &b] {
        db.exec("CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL UNIQUE)")
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("duplex.toml");
    // Connection names no other test in this binary uses: the instance counts are the
    // process's.
    std::fs::write(
        &config,
        format!(
            r#"
[connections.quiet_pg_a]
plugin = "builtin:sql"
config = {{ url = "{a}" }}
grants = {{ sql = ["{a}"] }}

[connections.quiet_pg_b]
plugin = "builtin:sql"
config = {{ url = "{b}" }}
grants = {{ sql = ["{b}"] }}

[syncs.notes]
left = "quiet_pg_a.notes"
right = "quiet_pg_b.notes"
schedule = "realtime"
match = {{ field = "body" }}
fields = [{{ left = "body", right = "body" }}]
"#,
            a = a.url,
            b = b.url
        ),
    )
    .unwrap();
    let app = duplex::app::App::load(&config).await.unwrap();
    let state = std::sync::Arc::new(app.open_state().unwrap());
    let cycles = std::sync::atomic::AtomicUsize::new(0);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let edit = async {
        // Past the first cycles and waits (the capture installed, the first wait answered).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = cycles.load(std::sync::atomic::Ordering::SeqCst);
        let mut most_alive = 0;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            most_alive = most_alive.max(common::instances_alive("quiet_pg_"));
        }
        let idle_cycles = cycles.load(std::sync::atomic::Ordering::SeqCst) - before;
        a.exec("INSERT INTO notes (body) VALUES ('hello')").await;
        let t = std::time::Instant::now();
        let arrived = loop {
            let rows = rows_as_text(&b, "SELECT body FROM notes").await;
            if rows == ["hello"] || t.elapsed() > Duration::from_secs(30) {
                break t.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let _ = stop_tx.send(());
        (idle_cycles, most_alive, arrived)
    };
    let run = app.run(
        &state,
        async {
            let _ = stop_rx.await;
        },
        |_, _| {
            cycles.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        },
    );
    let ((idle_cycles, most_alive, arrived), ran) = tokio::join!(edit, run);
    ran.unwrap();
    assert_eq!(
        rows_as_text(&b, "SELECT body FROM notes").await,
        ["hello"],
        "the change never arrived"
    );
    assert_eq!(idle_cycles, 0, "the idle sync ran cycles without a change");
    assert_eq!(
        most_alive, 0,
        "the idle sync kept plugin instances alive through its waits"
    );
    // Announced, the change crosses in milliseconds; a poll would take a quiet period (five
    // minutes). Ten seconds leaves room for a slow machine.
    assert!(
        arrived < Duration::from_secs(10),
        "the change took {arrived:?}"
    );
}

/// MariaDB ends a whole transaction when it picks it as a deadlock's victim, savepoints and
/// all. A write taken op by op (because one op was refused) that is such a victim must start
/// over, not fail every op with "SAVEPOINT does not exist" (which the realtime test used to hit
/// now and then, leaving records to a retry seconds later).
#[tokio::test]
async fn a_write_that_loses_a_deadlock_on_mariadb_starts_over() {
    let Some(db) = ServerDb::new("mysql").await else {
        return;
    };
    db.exec(
        "CREATE TABLE items (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50) NOT NULL);
         CREATE TABLE ballast (n INT);
         INSERT INTO items (name) VALUES ('one'), ('two'), ('three');",
    )
    .await;
    let host = common::host();
    let plugin = db.connector(&host).await;
    let mut s = plugin.session().await.unwrap();
    s.read(&db.config(), "items", "sync:a", None, 100)
        .await
        .unwrap();
    let update = |id: &str, to: &str, if_version: Option<&str>| {
        WriteOp::Update(duplex::plugin::UpdateOp {
            id: id.into(),
            fields: vec![FieldValue {
                name: "name".into(),
                value: Value::Text(to.into()),
            }],
            if_version: if_version.map(str::to_owned),
        })
    };
    // A stale version refuses the first op, so the batch goes op by op under savepoints.
    let ops = vec![
        update("3", "stale", Some("no such version")),
        update("1", "duplex 1", None),
        update("2", "duplex 2", None),
    ];

    // A person's transaction holds record 2, then wants record 1, which the write holds while
    // it waits for 2. The person's transaction has done more work, so the write is the victim.
    let mut person = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    let before = deadlocks(&mut person).await;
    sqlx::raw_sql(
        "BEGIN; INSERT INTO ballast SELECT seq FROM seq_1_to_2000; UPDATE items SET name = 'person 2' WHERE id = 2",
    )
    .execute(&mut person)
    .await
    .unwrap();
    let config = db.config();
    let write = s.write(&config, "items", "sync:a", ops);
    let person_side = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        sqlx::raw_sql("UPDATE items SET name = 'person 1' WHERE id = 1")
            .execute(&mut person)
            .await
            .unwrap();
        sqlx::raw_sql("COMMIT").execute(&mut person).await.unwrap();
    };
    let (results, ()) = tokio::join!(write, person_side);
    let results = results.unwrap();
    assert!(
        matches!(results[0], Err(duplex::plugin::WitError::Conflict(_))),
        "{results:?}"
    );
    assert!(results[1].is_ok() && results[2].is_ok(), "{results:?}");

    // The write started over after the person's commit: its values are the last.
    let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM items ORDER BY id")
        .fetch_all(&mut c)
        .await
        .unwrap();
    assert_eq!(names, ["duplex 1", "duplex 2", "three"]);
    // Counted server-wide: another test's deadlock could make this pass for nothing, never
    // fail for nothing.
    assert!(
        deadlocks(&mut c).await > before,
        "no deadlock happened, so this test tested nothing"
    );
}

/// The server's deadlock count.
async fn deadlocks(c: &mut sqlx::MySqlConnection) -> i64 {
    let (_, n): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")
        .fetch_one(c)
        .await
        .unwrap();
    n.parse().unwrap()
}

/// Issue 12: under last-writer-wins, the same field edited on both sides a few milliseconds
/// apart ended with the *earlier* value in about half of the rounds, silently: a record read
/// again after a refused conditional write was stamped with the cycle's start. Here, with the
/// sync running in realtime, each round edits the same field of every row on both sides, each
/// edit its own transaction and its time read from the database's clock; the later edit must
/// win in every round, and every decision in the activity log must have picked the later one.
async fn last_writer_wins_takes_the_later_edit_in_every_round(kind: &'static str) {
    let (Some(a), Some(b)) = (ServerDb::new(kind).await, ServerDb::new(kind).await) else {
        return;
    };
    const ROWS: usize = 10;
    let schema = if kind == "postgres" {
        "CREATE TABLE items (id SERIAL PRIMARY KEY, code TEXT NOT NULL UNIQUE, name TEXT NOT NULL);"
    } else {
        "CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, code VARCHAR(40) NOT NULL UNIQUE, name VARCHAR(100) NOT NULL);"
    };
    a.exec(schema).await;
    b.exec(schema).await;
    for i in 0..ROWS {
        a.exec(&format!(
            "INSERT INTO items (code, name) VALUES ('item{i}', 'start')"
        ))
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = pair_config(
        dir.path(),
        &a.url,
        &b.url,
        "items",
        &["code", "name"],
        "conflict = \"last-writer-wins\"\nschedule = \"realtime\"",
    );
    let app = duplex::app::App::load(&config).await.unwrap();
    let state = std::sync::Arc::new(app.open_state().unwrap());
    app.run_once(&state, |_, _| {}).await.unwrap();

    let rounds: usize = std::env::var("LWW_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let (pa, pb) = (
        Editor::new(kind, &a.url).await,
        Editor::new(kind, &b.url).await,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let work = async {
        // Every value written, with the database's time of its edit.
        let mut edited_at: std::collections::BTreeMap<String, i64> = Default::default();
        let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..rounds {
            // Which side edits first alternates; the gap is 0-8 ms per row.
            let (first, second, fl, sl) = if round % 2 == 0 {
                (&pa, &pb, "a", "b")
            } else {
                (&pb, &pa, "b", "a")
            };
            let mut later = Vec::new();
            for i in 0..ROWS {
                let code = format!("item{i}");
                let v1 = format!("{fl} round {round} row {i}");
                let v2 = format!("{sl} round {round} row {i}");
                let t1 = first.edit(&code, &v1).await;
                tokio::time::sleep(Duration::from_micros(next() % 8_000)).await;
                let t2 = second.edit(&code, &v2).await;
                assert!(t2 > t1, "the second edit is later by the database's clock");
                edited_at.insert(v1, t1);
                edited_at.insert(v2.clone(), t2);
                later.push(v2);
            }
            // The round is over once both sides hold its later edits; never the earlier ones.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let (na, nb) = (pa.names().await, pb.names().await);
                if na == later && nb == later {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    for a in state.activity(Some("t")).unwrap() {
                        eprintln!("{}", duplex::report::activity_line(&a));
                    }
                    eprintln!("edits: {edited_at:?}");
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: did not end with the later edits\n  want {later:?}\n  a    {na:?}\n  b    {nb:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = stop_tx.send(());
        edited_at
    };
    let run = app.run(
        &state,
        async {
            let _ = stop_rx.await;
        },
        |_, _| {},
    );
    let (edited_at, ran) = tokio::join!(work, run);
    ran.unwrap();

    // Every decision the sync made picked the edit that was later by the database's clock, and
    // the log holds as many as `status` counts.
    let decisions: Vec<_> = state
        .activity(Some("t"))
        .unwrap()
        .into_iter()
        .filter_map(|a| a.decided)
        .collect();
    for d in &decisions {
        let text = |v: &duplex::engine::Value| v.display();
        let (won, lost) = match d.winner {
            duplex::engine::Side::LEFT => (text(&d.left), text(&d.right)),
            _ => (text(&d.right), text(&d.left)),
        };
        if let (Some(w), Some(l)) = (edited_at.get(&won), edited_at.get(&lost)) {
            assert!(
                w > l,
                "a decision took {won:?} (edited at {w}) over the later {lost:?} (edited at {l}): {d:?}"
            );
        }
    }
    assert_eq!(decisions.len() as u64, state.stats("t").unwrap().decided);
    assert!(
        !decisions.is_empty(),
        "no round raced: the test did not exercise a decision"
    );
    println!(
        "{kind}: {rounds} rounds of {ROWS} rows edited on both sides; the later edit won every \
         round; {} last-writer-wins decisions, each for the later edit",
        decisions.len()
    );
}

/// Edits rows of one database's `items` as a person's application would, and reads the
/// database's clock in the same transaction.
struct Editor {
    pg: Option<sqlx::PgPool>,
    my: Option<sqlx::MySqlPool>,
}

impl Editor {
    async fn new(kind: &str, url: &str) -> Editor {
        if kind == "postgres" {
            Editor {
                pg: Some(sqlx::PgPool::connect(url).await.unwrap()),
                my: None,
            }
        } else {
            Editor {
                pg: None,
                my: Some(sqlx::MySqlPool::connect(url).await.unwrap()),
            }
        }
    }

    /// Sets `name` of the row `code`, in a transaction of its own; the database's time of it.
    async fn edit(&self, code: &str, name: &str) -> i64 {
        if let Some(pg) = &self.pg {
            return sqlx::query_scalar(
                "UPDATE items SET name = $1 WHERE code = $2 \
                 RETURNING (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
            )
            .bind(name)
            .bind(code)
            .fetch_one(pg)
            .await
            .unwrap();
        }
        let my = self.my.as_ref().unwrap();
        let mut tx = my.begin().await.unwrap();
        sqlx::query("UPDATE items SET name = ? WHERE code = ?")
            .bind(name)
            .bind(code)
            .execute(&mut *tx)
            .await
            .unwrap();
        let at: i64 = sqlx::query_scalar("SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        at
    }

    /// The names, by code.
    async fn names(&self) -> Vec<String> {
        let q = "SELECT CAST(name AS CHAR) FROM items ORDER BY code";
        let q = if self.pg.is_some() {
            "SELECT name FROM items ORDER BY code"
        } else {
            q
        };
        match (&self.pg, &self.my) {
            (Some(pg), _) => sqlx::query_scalar(q).fetch_all(pg).await.unwrap(),
            (_, Some(my)) => sqlx::query_scalar(q).fetch_all(my).await.unwrap(),
            _ => unreachable!(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_writer_wins_takes_the_later_edit_in_every_round_on_postgres() {
    last_writer_wins_takes_the_later_edit_in_every_round("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_writer_wins_takes_the_later_edit_in_every_round_on_mariadb() {
    last_writer_wins_takes_the_later_edit_in_every_round("mysql").await;
}

/// A config syncing `table` of two databases as sync `t`, matched by `code`: each of `fields`
/// is a column mapped both ways, or an inline table (`{ left = ..., values = ... }`) taken as
/// it is; `settings` are more lines of the sync (its policy, schedule).
fn pair_config(
    dir: &std::path::Path,
    a: &str,
    b: &str,
    table: &str,
    fields: &[&str],
    settings: &str,
) -> std::path::PathBuf {
    let fields: Vec<String> = fields
        .iter()
        .map(|f| {
            if f.starts_with('{') {
                (*f).to_owned()
            } else {
                format!("{{ left = \"{f}\", right = \"{f}\" }}")
            }
        })
        .collect();
    let config = format!(
        r#"
[connections.a]
plugin = "builtin:sql"
config = {{ url = "{a}" }}
grants = {{ sql = ["{a}"] }}

[connections.b]
plugin = "builtin:sql"
config = {{ url = "{b}" }}
grants = {{ sql = ["{b}"] }}

[syncs.t]
left = "a.{table}"
right = "b.{table}"
match = {{ field = "code" }}
fields = [{}]
{settings}
"#,
        fields.join(", ")
    );
    let path = dir.join("duplex.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Every row of a query as one line of text, for comparing two databases directly.
async fn rows_as_text(db: &ServerDb, sql: &str) -> Vec<String> {
    match db.kind {
        "postgres" => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar::<_, String>(sql)
                .fetch_all(&mut c)
                .await
                .unwrap()
        }
        _ => {
            let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar::<_, String>(sql)
                .fetch_all(&mut c)
                .await
                .unwrap()
        }
    }
}

/// Runs the sync of `config` until caught up.
async fn sync_once(config: &std::path::Path) {
    let app = duplex::app::App::load(config).await.unwrap();
    let state = app.open_state().unwrap();
    app.run_once(&state, |_, _| {}).await.unwrap();
    let rejected = state.rejected("t").unwrap();
    assert!(rejected.is_empty(), "rejected: {rejected:#?}");
}

/// Why loading `config` fails.
async fn load_error(config: &std::path::Path) -> String {
    match duplex::app::App::load(config).await {
        Ok(_) => panic!("the config loaded"),
        Err(e) => format!("{e:#}"),
    }
}

const PG_FILMS: &str = "
CREATE TYPE mpaa_rating AS ENUM ('G', 'PG', 'PG-13', 'R', 'NC-17');
CREATE DOMAIN release_year AS integer CHECK (VALUE >= 1901 AND VALUE <= 2155);
CREATE TYPE pair AS (a integer, b integer);
CREATE TABLE films (
    id SERIAL PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    rating mpaa_rating DEFAULT 'G',
    tags TEXT[],
    scores INTEGER[],
    made release_year,
    fts TSVECTOR,
    length INTERVAL,
    host INET,
    net CIDR,
    price MONEY,
    flags BIT(3),
    bits VARBIT,
    span INT4RANGE,
    doc XML,
    title_len INTEGER GENERATED ALWAYS AS (length(title)) STORED,
    coords pair
);";

/// Issue 13: a PostgreSQL table with an enum, arrays, a domain, a tsvector and the other common
/// types syncs both ways, and a mapped column of a type that cannot be carried (a composite) is
/// refused by the check, naming it, before anything runs. Unmapped, it never stops the sync.
#[tokio::test]
async fn every_common_postgres_type_is_carried_or_refused_up_front() {
    let (Some(a), Some(b)) = (
        ServerDb::new("postgres").await,
        ServerDb::new("postgres").await,
    ) else {
        return;
    };
    a.exec(PG_FILMS).await;
    b.exec(PG_FILMS).await;
    a.exec(
        "INSERT INTO films (code, title, rating, tags, scores, made, fts, length, host, net, price, flags, bits, span, doc, coords) VALUES
         ('f1', 'Academy Dinosaur', 'PG', ARRAY['epic', 'it''s \"quoted\"', NULL], '{1,2,3}', 2006,
          to_tsvector('english', 'A epic drama of a feminist'), '1 hour 26 mins', '192.168.1.10', '10.0.0.0/8',
          20.99, B'101', B'1100', '[1,10)', '<film><id>1</id></film>', ROW(1, 2)),
         ('f2', 'Ace Goldfinger', DEFAULT, '{}', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'empty', NULL, NULL);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mapped = [
        "code", "title", "rating", "tags", "scores", "made", "fts", "length", "host", "net",
        "price", "flags", "bits", "span", "doc",
    ];
    let compare = "SELECT concat_ws('|', code, title, rating, tags::text, scores::text, made, fts, length, \
                   host, net, price, flags, bits, span, doc::text, title_len) FROM films ORDER BY code";

    // The composite, mapped: refused by name before anything runs.
    let with_coords: Vec<&str> = mapped.iter().copied().chain(["coords"]).collect();
    let config = pair_config(dir.path(), &a.url, &b.url, "films", &with_coords, "");
    let err = load_error(&config).await;
    assert!(
        err.contains("field coords of stream films") && err.contains("composite type pair"),
        "{err}"
    );
    // A value map must name the enum's values.
    let config = pair_config(
        dir.path(),
        &a.url,
        &b.url,
        "films",
        &[
            "code",
            r#"{ left = "rating", right = "rating", values = { "PG-14" = "PG" } }"#,
        ],
        "",
    );
    let err = load_error(&config).await;
    assert!(
        err.contains("PG-14 is not a value of field rating (it takes: G, PG, PG-13, R, NC-17)"),
        "{err}"
    );
    assert_eq!(
        rows_as_text(&b, "SELECT code FROM films").await.len(),
        0,
        "nothing ran"
    );

    // Everything else, with the composite unmapped: carried both ways.
    let config = pair_config(dir.path(), &a.url, &b.url, "films", &mapped, "");
    sync_once(&config).await;
    assert_eq!(
        rows_as_text(&a, compare).await,
        rows_as_text(&b, compare).await
    );
    a.exec(
        "UPDATE films SET rating = 'NC-17', tags = ARRAY['b', 'a'], scores = '{}', length = '2 days', \
         span = '[3,4]', fts = to_tsvector('simple', 'changed on a') WHERE code = 'f1'",
    )
    .await;
    b.exec(
        "UPDATE films SET rating = 'R', made = 1999, host = '::1', price = 5, flags = B'011', \
         bits = B'1', doc = '<x/>', tags = ARRAY['on b'] WHERE code = 'f2'",
    )
    .await;
    sync_once(&config).await;
    let (left, right) = (
        rows_as_text(&a, compare).await,
        rows_as_text(&b, compare).await,
    );
    assert_eq!(left, right);
    assert!(left[0].contains("|NC-17|{b,a}|{}|"), "{left:?}");
    assert!(left[1].contains("|R|{\"on b\"}|"), "{left:?}");
}

const MY_GEAR: &str = "
CREATE TABLE gear (
    id INT AUTO_INCREMENT PRIMARY KEY,
    code VARCHAR(20) NOT NULL UNIQUE,
    size ENUM('S', 'M', 'L') NOT NULL DEFAULT 'M',
    colours SET('red', 'green', 'blue'),
    made YEAR,
    flags BIT(8),
    serial BIGINT UNSIGNED,
    addr INET6,
    spot POINT
);";

/// Issue 13 on MariaDB: enum, set, year, bit, unsigned integers beyond 2^63 and INET6 sync
/// both ways; a mapped spatial column is refused by the check by name, and unmapped it never
/// stops the sync.
#[tokio::test]
async fn every_common_mariadb_type_is_carried_or_refused_up_front() {
    let (Some(a), Some(b)) = (ServerDb::new("mysql").await, ServerDb::new("mysql").await) else {
        return;
    };
    a.exec(MY_GEAR).await;
    b.exec(MY_GEAR).await;
    a.exec(
        "INSERT INTO gear (code, size, colours, made, flags, serial, addr, spot) VALUES
         ('g1', 'L', 'red,blue', 2024, b'00000101', 18446744073709551615, '::1', POINT(1, 2)),
         ('g2', DEFAULT, '', NULL, NULL, NULL, NULL, NULL);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mapped = ["code", "size", "colours", "made", "flags", "serial", "addr"];
    let compare =
        "SELECT CAST(concat_ws('|', code, size, colours, made, flags + 0, serial, addr) AS CHAR) \
                   FROM gear ORDER BY code";

    let with_spot: Vec<&str> = mapped.iter().copied().chain(["spot"]).collect();
    let config = pair_config(dir.path(), &a.url, &b.url, "gear", &with_spot, "");
    let err = load_error(&config).await;
    assert!(
        err.contains("field spot of stream gear") && err.contains("spatial type point"),
        "{err}"
    );
    let config = pair_config(
        dir.path(),
        &a.url,
        &b.url,
        "gear",
        &[
            "code",
            r#"{ left = "size", right = "size", values = { "XL" = "L" } }"#,
        ],
        "",
    );
    let err = load_error(&config).await;
    assert!(
        err.contains("XL is not a value of field size (it takes: S, M, L)"),
        "{err}"
    );

    let config = pair_config(dir.path(), &a.url, &b.url, "gear", &mapped, "");
    sync_once(&config).await;
    let left = rows_as_text(&a, compare).await;
    assert_eq!(left, rows_as_text(&b, compare).await);
    assert!(left[0].contains("|18446744073709551615|::1"), "{left:?}");
    a.exec("UPDATE gear SET size = 'S', colours = 'green', serial = 9223372036854775808 WHERE code = 'g1'")
        .await;
    b.exec("UPDATE gear SET made = 1999, flags = b'11111111', addr = 'fe80::1' WHERE code = 'g2'")
        .await;
    sync_once(&config).await;
    let left = rows_as_text(&a, compare).await;
    assert_eq!(left, rows_as_text(&b, compare).await);
    assert!(
        left[0].starts_with("g1|S|green|2024|5|9223372036854775808"),
        "{left:?}"
    );
    assert!(left[1].contains("|1999|255|"), "{left:?}");
}

/// Issue 13: what a destination stores is what Duplex believes. PostgreSQL rounds `rate` to two
/// decimals (MariaDB keeps three), and each side has a trigger stamping `last_update` on every
/// write. With people editing both sides, every mapped field ends equal on both sides, compared
/// in the databases; the stamp, which each side rewrites whenever Duplex writes it, is held and
/// reported for each record instead of going back and forth; and nothing more is written.
#[tokio::test]
async fn values_a_destination_changes_on_write_flow_back_and_a_field_both_rewrite_is_held() {
    let (Some(pg), Some(my)) = (
        ServerDb::new("postgres").await,
        ServerDb::new("mysql").await,
    ) else {
        return;
    };
    pg.exec(
        "CREATE TABLE accounts (id SERIAL PRIMARY KEY, code TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
             rate NUMERIC(4,2), last_update TIMESTAMPTZ NOT NULL DEFAULT now());
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN NEW.last_update := clock_timestamp(); RETURN NEW; END $$;
         CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION touch();
         INSERT INTO accounts (code, name, rate) VALUES ('a1', 'Ada', 1.5), ('a2', 'Bob', 2.25);",
    )
    .await;
    my.exec(
        "CREATE TABLE accounts (id INT AUTO_INCREMENT PRIMARY KEY, code VARCHAR(20) NOT NULL UNIQUE,
             name VARCHAR(100) NOT NULL, rate DECIMAL(6,3), last_update DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6));
         CREATE TRIGGER touch_ins BEFORE INSERT ON accounts FOR EACH ROW SET NEW.last_update = NOW(6);
         CREATE TRIGGER touch_upd BEFORE UPDATE ON accounts FOR EACH ROW SET NEW.last_update = NOW(6);
         INSERT INTO accounts (code, name, rate) VALUES ('a3', 'Cy', 3.125);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = pair_config(
        dir.path(),
        &pg.url,
        &my.url,
        "accounts",
        &["code", "name", "rate", "last_update"],
        "",
    );
    let pg_rows = "SELECT concat_ws('|', code, name, rate::text) FROM accounts ORDER BY code";
    let my_rows =
        "SELECT CAST(concat_ws('|', code, name, rate) AS CHAR) FROM accounts ORDER BY code";
    let normal = |rows: Vec<String>| -> Vec<String> {
        rows.into_iter()
            .map(|r| {
                // Decimal text keeps its scale ("1.50", "2.350"); compare the numbers.
                let mut parts: Vec<String> = r.split('|').map(str::to_owned).collect();
                if let Some(rate) = parts.get_mut(2) {
                    if rate.contains('.') {
                        *rate = rate.trim_end_matches('0').trim_end_matches('.').to_owned();
                    }
                }
                parts.join("|")
            })
            .collect()
    };

    sync_once(&config).await;
    pg.exec("UPDATE accounts SET rate = 1.75, name = 'Ada L.' WHERE code = 'a1'")
        .await;
    my.exec("UPDATE accounts SET rate = 2.345 WHERE code = 'a2'")
        .await;
    my.exec("UPDATE accounts SET name = 'Cyrus' WHERE code = 'a3'")
        .await;
    sync_once(&config).await;

    let (left, right) = (
        normal(rows_as_text(&pg, pg_rows).await),
        normal(rows_as_text(&my, my_rows).await),
    );
    assert_eq!(
        left, right,
        "every mapped field but the held stamp is equal"
    );
    // MariaDB's 2.345 was rounded by PostgreSQL, and the rounded value flowed back.
    assert!(left.contains(&"a2|Bob|2.35".to_owned()), "{left:?}");
    assert!(left.contains(&"a3|Cyrus|3.13".to_owned()), "{left:?}");

    let app = duplex::app::App::load(&config).await.unwrap();
    let state = app.open_state().unwrap();
    let held: Vec<_> = state
        .conflicts(false)
        .unwrap()
        .into_iter()
        .filter(|c| c.field == "last_update")
        .collect();
    assert_eq!(held.len(), 3, "one per record: {held:#?}");
    assert!(
        held[0]
            .reason
            .contains("a and b both change last_update whenever Duplex writes it"),
        "{}",
        held[0].reason
    );
    // Not looped: once caught up, more cycles write nothing.
    let reports = app.run_once(&state, |_, _| {}).await.unwrap();
    let more: usize = reports.values().flatten().map(|r| r.writes).sum();
    assert_eq!(more, 0);
}

/// Counters (issue 16): the same five items sold at once in a PostgreSQL shop and a SQLite
/// warehouse, a thousand small sales on each side while a realtime sync runs, each sale one
/// transaction adding to the row as the database holds it. Stock and takings are counters, so
/// every sale counts once, on both sides, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_sold_at_once_on_sqlite_and_postgres_ends_exact() {
    let Some(pg) = ServerDb::new("postgres").await else {
        return;
    };
    const ITEMS: i64 = 5;
    const FIRST: i64 = 5_000;
    let sales: i64 = std::env::var("SALES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    pg.exec("CREATE TABLE items (sku TEXT PRIMARY KEY, stock INTEGER NOT NULL, takings NUMERIC(14, 2) NOT NULL)")
        .await;
    for i in 0..ITEMS {
        pg.exec(&format!("INSERT INTO items VALUES ('sku-{i}', {FIRST}, 0)"))
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warehouse.db");
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch("CREATE TABLE stock (code TEXT PRIMARY KEY, on_hand INTEGER NOT NULL, takings DECIMAL(14, 2) NOT NULL);")
        .unwrap();
    let url = &pg.url;
    let config = dir.path().join("duplex.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[connections.shop]
plugin = "builtin:sql"
config = {{ url = "{url}" }}
grants = {{ sql = ["{url}"] }}

[connections.warehouse]
plugin = "builtin:sql"
config = {{ url = "sqlite://warehouse.db" }}
grants = {{ sql = ["sqlite://warehouse.db"] }}

[syncs.stock]
left = "shop.items"
right = "warehouse.stock"
match = {{ field = "sku" }}
fields = [
    {{ left = "sku", right = "code" }},
    {{ left = "stock", right = "on_hand", counter = true }},
    {{ left = "takings", right = "takings", counter = true }},
]
"#
        ),
    )
    .unwrap();
    let app = duplex::app::App::load(&config).await.unwrap();
    let state = std::sync::Arc::new(app.open_state().unwrap());
    app.run_once(&state, |_, _| {}).await.unwrap();

    // Sale n sells (n % 3) + 1 units of item n % 5 for a quarter per unit: both sides sell the
    // same items at once, and the totals are known without counting the sales made.
    let units = |n: i64| n % 3 + 1;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let work = async {
        let shop = {
            let url = pg.url.clone();
            tokio::spawn(async move {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                for n in 0..sales {
                    sqlx::query("UPDATE items SET stock = stock - $1, takings = takings + $1 * 0.25 WHERE sku = $2")
                        .bind(units(n) as i32)
                        .bind(format!("sku-{}", n % ITEMS))
                        .execute(&mut c)
                        .await
                        .unwrap();
                    // Spread over many cycles, so that writes meet sales.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let warehouse = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || {
                let c = rusqlite::Connection::open(&file).unwrap();
                c.busy_timeout(Duration::from_secs(30)).unwrap();
                for n in 0..sales {
                    c.execute(
                        "UPDATE stock SET on_hand = on_hand - ?1, takings = takings + ?1 * 0.25 WHERE code = ?2",
                        rusqlite::params![units(n), format!("sku-{}", n % ITEMS)],
                    )
                    .unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        shop.await.unwrap();
        warehouse.await.unwrap();
        // Caught up: both sides show the totals every sale made.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let expected = expected_stock(sales, ITEMS, FIRST, units);
        loop {
            let (a, b) = (pg_stock(&pg).await, sqlite_stock(&file));
            if a == expected && b == expected {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not exact after the sales: shop {a:?}, warehouse {b:?}, books {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = stop_tx.send(());
    };
    let run = app.run(
        &state,
        async {
            let _ = stop_rx.await;
        },
        |_, _| {},
    );
    let ((), ran) = tokio::join!(work, run);
    ran.unwrap();
    assert!(state.conflicts(false).unwrap().is_empty());
    let writes = state.stats("stock").unwrap().writes;
    let reports = app.run_once(&state, |_, _| {}).await.unwrap();
    let more: usize = reports.values().flatten().map(|r| r.writes).sum();
    assert_eq!(more, 0, "writes after convergence: echoes bounced");
    assert_eq!(
        pg_stock(&pg).await,
        expected_stock(sales, ITEMS, FIRST, units)
    );
    println!(
        "{} sales on two databases at once, {writes} sync writes, totals exact",
        2 * sales
    );
}

/// Each item's stock and takings (in cents) once `sales` sales were made on each of two sides.
fn expected_stock(
    sales: i64,
    items: i64,
    first: i64,
    units: impl Fn(i64) -> i64,
) -> std::collections::BTreeMap<String, (i64, i64)> {
    let mut out: std::collections::BTreeMap<String, (i64, i64)> = (0..items)
        .map(|i| (format!("sku-{i}"), (first, 0)))
        .collect();
    for n in 0..sales {
        let e = out.get_mut(&format!("sku-{}", n % items)).unwrap();
        e.0 -= 2 * units(n);
        e.1 += 2 * units(n) * 25;
    }
    out
}

async fn pg_stock(db: &ServerDb) -> std::collections::BTreeMap<String, (i64, i64)> {
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let rows: Vec<(String, i32, i64)> =
        sqlx::query_as("SELECT sku, stock, (takings * 100)::bigint FROM items")
            .fetch_all(&mut c)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(s, n, t)| (s, (i64::from(n), t)))
        .collect()
}

fn sqlite_stock(file: &std::path::Path) -> std::collections::BTreeMap<String, (i64, i64)> {
    let c = rusqlite::Connection::open(file).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut q = c
        .prepare("SELECT code, on_hand, CAST(round(takings * 100) AS INTEGER) FROM stock")
        .unwrap();
    q.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Filters (issue 16) between PostgreSQL and MariaDB: only active customers of PostgreSQL,
/// and only clients of MariaDB with a credit under 1,000, sync; a record that leaves its
/// filter has its copy deleted (leaving = "delete"), and one that comes back is created anew.
#[tokio::test]
async fn records_move_in_and_out_of_filters_between_postgres_and_mariadb() {
    let Some((pg, my, _dir, config)) = cross_servers().await else {
        return;
    };
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "schedule = \"realtime\"\n",
        "schedule = \"realtime\"\nfilter = { left = \"active\", right = \"credit is null or credit < 1000\", leaving = \"delete\" }\n",
    );
    std::fs::write(&config, text).unwrap();
    let sync = || async {
        let app = duplex::app::App::load(&config).await.unwrap();
        let state = app.open_state().unwrap();
        app.run_once(&state, |_, _| {}).await.unwrap();
        state
    };
    let emails =
        |m: std::collections::BTreeMap<String, String>| -> Vec<String> { m.into_keys().collect() };
    sync().await;
    // Bob is not active: not created in MariaDB. Cy passes MariaDB's filter: created.
    assert_eq!(
        emails(pg_people(&pg).await),
        ["ada@example.com", "bob@example.com", "cy@example.com"]
    );
    assert_eq!(
        emails(my_people(&my).await),
        ["ada@example.com", "cy@example.com"]
    );

    pg.exec("UPDATE customers SET active = false WHERE email = 'ada@example.com'")
        .await;
    pg.exec(
        "UPDATE customers SET active = true, full_name = 'Bob B.' WHERE email = 'bob@example.com'",
    )
    .await;
    my.exec("UPDATE clients SET credit = 5000 WHERE mail = 'cy@example.com'")
        .await;
    let state = sync().await;
    // Ada and Cy left their filters: their copies are gone, their links wait for them to pass
    // again (and `status` counts them). Bob entered: created.
    let counts = state.link_counts("people").unwrap();
    assert_eq!((counts.active, counts.filtered), (1, 2), "{counts:?}");
    drop(state);
    assert_eq!(
        emails(pg_people(&pg).await),
        ["ada@example.com", "bob@example.com"]
    );
    assert_eq!(
        emails(my_people(&my).await),
        ["bob@example.com", "cy@example.com"]
    );
    assert!(my_people(&my).await["bob@example.com"].starts_with("Bob B.|"));

    pg.exec(
        "UPDATE customers SET active = true, full_name = 'Ada L.' WHERE email = 'ada@example.com'",
    )
    .await;
    my.exec("UPDATE clients SET credit = 50 WHERE mail = 'cy@example.com'")
        .await;
    let state = sync().await;
    // Both came back, and were created anew with their values; everything is in step.
    let people = pg_people(&pg).await;
    assert_eq!(people, my_people(&my).await);
    assert_eq!(
        emails(people.clone()),
        ["ada@example.com", "bob@example.com", "cy@example.com"]
    );
    assert!(people["ada@example.com"].starts_with("Ada L.|"));
    assert!(people["cy@example.com"].starts_with("Cy|50|"));
    assert!(state.conflicts(false).unwrap().is_empty());
    assert_eq!(state.link_counts("people").unwrap().filtered, 0);
}

impl ServerDb {
    /// One text value, selected by `sql` (cast to text there).
    async fn text(&self, sql: &str) -> Option<String> {
        match self.kind {
            "postgres" => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
            _ => {
                let mut c = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
            }
        }
    }
}

/// Schema drift on both servers while the sync runs: a column dropped on each side (the same
/// field) and one retyped on each (two fields). Those three fields stop; names and emails keep
/// syncing both ways, a new record is created without the stopped fields, no value read from a
/// retyped column is written anywhere, and a restart carries on the same way.
#[tokio::test]
async fn columns_dropped_and_retyped_on_postgres_and_mariadb_stop_only_their_fields() {
    let Some((pg, my, dir, config)) = cross_servers().await else {
        return;
    };
    let app = duplex::app::App::load(&config).await.unwrap();
    let state = app.open_state().unwrap();
    app.run_once(&state, |_, _| {}).await.unwrap();
    assert_eq!(pg_people(&pg).await, my_people(&my).await);

    // The same process runs on: `seen`/`last_seen` dropped on both sides, PostgreSQL's
    // balance and MariaDB's status turned into text.
    pg.exec("ALTER TABLE customers DROP COLUMN seen; ALTER TABLE customers ALTER COLUMN balance TYPE text")
        .await;
    my.exec("ALTER TABLE clients DROP COLUMN last_seen; ALTER TABLE clients MODIFY status VARCHAR(10) NOT NULL DEFAULT 'yes'")
        .await;
    pg.exec("UPDATE customers SET full_name = 'Ada L.', balance = 'twelve' WHERE email = 'ada@example.com'")
        .await;
    my.exec("UPDATE clients SET name = 'Cy C.', status = 'no' WHERE mail = 'cy@example.com'")
        .await;
    pg.exec("INSERT INTO customers (email, full_name, balance) VALUES ('dee@example.com', 'Dee', 'n/a')")
        .await;
    app.run_once(&state, |_, _| {}).await.unwrap();

    let my_name = |email: &str| {
        format!("SELECT CAST(name AS CHAR) FROM clients WHERE lower(mail) = '{email}'")
    };
    let pg_name = |email: &str| format!("SELECT full_name FROM customers WHERE email = '{email}'");
    // Names flow both ways; the new record is created without the stopped fields.
    assert_eq!(
        my.text(&my_name("ada@example.com")).await.as_deref(),
        Some("Ada L.")
    );
    assert_eq!(
        pg.text(&pg_name("cy@example.com")).await.as_deref(),
        Some("Cy C.")
    );
    assert_eq!(
        my.text(&my_name("dee@example.com")).await.as_deref(),
        Some("Dee")
    );
    // Nothing read from a retyped column went anywhere, nor was written into one.
    assert_eq!(
        my.text("SELECT CAST(credit AS CHAR) FROM clients WHERE mail = 'ADA@example.com'")
            .await
            .as_deref(),
        Some("10.50")
    );
    assert_eq!(
        my.text("SELECT CAST(credit AS CHAR) FROM clients WHERE mail = 'dee@example.com'")
            .await,
        None
    );
    assert_eq!(
        pg.text("SELECT active::text FROM customers WHERE email = 'cy@example.com'")
            .await
            .as_deref(),
        Some("true")
    );
    assert_eq!(
        my.text("SELECT CAST(status AS CHAR) FROM clients WHERE mail = 'dee@example.com'")
            .await
            .as_deref(),
        Some("yes"),
        "the new record took the column's default; no value was converted into it"
    );
    let record = duplex::schema::SyncSchema::load(
        &duplex::schema::dir(&dir.path().join("duplex.redb")),
        "people",
    )
    .unwrap()
    .unwrap();
    let report = record.report().join("\n");
    for expected in [
        "field balance stopped: column balance of pg.customers changed from decimal to text",
        "field active stopped: column status of other.clients changed from boolean to text",
        "field seen stopped: column seen is gone from pg.customers; column last_seen is gone from other.clients",
    ] {
        assert!(report.contains(expected), "{report}");
    }
    let reasons: Vec<String> = state
        .rejected("people")
        .unwrap()
        .into_iter()
        .map(|r| format!("{}: {}", r.id, r.reason))
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains(
            "field balance was not read: column balance of pg.customers changed from decimal to text"
        )),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("field active did not sync")),
        "{reasons:?}"
    );
    assert!(state.conflicts(false).unwrap().is_empty());
    drop(state);
    drop(app);

    // A restart: the config still maps the dropped columns; the fields stay stopped.
    pg.exec("UPDATE customers SET full_name = 'Bob B.' WHERE email = 'bob@example.com'")
        .await;
    let app = duplex::app::App::load(&config).await.unwrap();
    assert_eq!(app.syncs[0].spec.stopped.len(), 3);
    let state = app.open_state().unwrap();
    app.run_once(&state, |_, _| {}).await.unwrap();
    assert_eq!(
        my.text(&my_name("bob@example.com")).await.as_deref(),
        Some("Bob B.")
    );
}

/// Issue 17: a call of many conditional updates (one statement on PostgreSQL, where the row
/// carries its version) changes exactly the records whose versions still match, refuses the
/// one a person changed since as a conflict, alone, and returns each changed record's new
/// version, which the next conditional write then passes with.
async fn many_conditional_writes_in_one_call(kind: &'static str, table: &str) {
    let Some(db) = ServerDb::new(kind).await else {
        return;
    };
    db.exec(table).await;
    let host = common::host();
    let plugin = db.connector(&host).await;
    let mut s = plugin.session().await.unwrap();
    let config = db.config();
    s.read(&config, "items", "sync:a", None, 100).await.unwrap();
    let name = |to: &str| FieldValue {
        name: "name".into(),
        value: Value::Text(to.into()),
    };
    let created = s
        .write(
            &config,
            "items",
            "sync:a",
            (1..=4)
                .map(|i| {
                    WriteOp::Create(CreateOp {
                        fields: vec![name(&format!("row {i}"))],
                    })
                })
                .collect(),
        )
        .await
        .unwrap();
    let rows: Vec<(String, String)> = created
        .into_iter()
        .map(|w| {
            let w = w.unwrap();
            (w.id, w.version.unwrap())
        })
        .collect();
    db.exec(&format!(
        "UPDATE items SET name = 'person' WHERE id = {}",
        rows[1].0
    ))
    .await;
    let updates = |rows: &[(String, String)], to: &str| {
        rows.iter()
            .map(|(id, version)| {
                WriteOp::Update(duplex::plugin::UpdateOp {
                    id: id.clone(),
                    fields: vec![name(&format!("{to} {id}"))],
                    if_version: Some(version.clone()),
                })
            })
            .collect::<Vec<_>>()
    };
    let results = s
        .write(&config, "items", "sync:a", updates(&rows, "duplex"))
        .await
        .unwrap();
    assert!(
        matches!(results[1], Err(duplex::plugin::WitError::Conflict(_))),
        "{results:?}"
    );
    let fresh: Vec<(String, String)> = [0, 2, 3]
        .into_iter()
        .map(|i| {
            let w = results[i].as_ref().unwrap();
            assert_eq!(w.id, rows[i].0);
            (w.id.clone(), w.version.clone().unwrap())
        })
        .collect();
    // The versions returned are the records' own: writing with them passes, every one.
    let again = s
        .write(&config, "items", "sync:a", updates(&fresh, "again"))
        .await
        .unwrap();
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    let mut names = Vec::new();
    for (id, _) in &rows {
        let sql = format!("SELECT name FROM items WHERE id = {id}");
        names.push(db.text(&sql).await.unwrap_or_default());
    }
    let want: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            if i == 1 {
                "person".to_owned()
            } else {
                format!("again {id}")
            }
        })
        .collect();
    assert_eq!(names, want);

    // Conditional deletes of many records are one statement too, with the same refusals: a
    // person changes one of the three, whose delete alone is refused.
    let versions: Vec<(String, String)> = again
        .iter()
        .map(|w| {
            let w = w.as_ref().unwrap();
            (w.id.clone(), w.version.clone().unwrap())
        })
        .collect();
    db.exec(&format!(
        "UPDATE items SET name = 'kept' WHERE id = {}",
        versions[1].0
    ))
    .await;
    let deletes = versions
        .iter()
        .map(|(id, version)| {
            WriteOp::Delete(duplex::plugin::DeleteOp {
                id: id.clone(),
                if_version: Some(version.clone()),
            })
        })
        .collect();
    let deleted = s.write(&config, "items", "sync:a", deletes).await.unwrap();
    assert!(deleted[0].is_ok() && deleted[2].is_ok(), "{deleted:?}");
    assert!(
        matches!(deleted[1], Err(duplex::plugin::WitError::Conflict(_))),
        "{deleted:?}"
    );
    let left = rows_as_text(&db, "SELECT name FROM items ORDER BY id").await;
    assert_eq!(left, ["person", "kept"]);
}

#[tokio::test]
async fn many_conditional_writes_in_one_call_on_postgres() {
    many_conditional_writes_in_one_call(
        "postgres",
        "CREATE TABLE items (id SERIAL PRIMARY KEY, name TEXT)",
    )
    .await;
}

#[tokio::test]
async fn many_conditional_writes_in_one_call_on_mariadb() {
    many_conditional_writes_in_one_call(
        "mysql",
        "CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name TEXT)",
    )
    .await;
}

/// A PostgreSQL transaction that changes more rows than a batch holds reaches `to` in one
/// transaction there: the rows it wrote carry one transaction id (PostgreSQL's `xmin`,
/// MariaDB's transaction-precise system versioning), checked in the destination itself. Rows
/// inserted in one transaction likewise. With `max_transaction` below its size, the same check
/// counts several: the split is logged, and the check can tell.
async fn a_postgres_transaction_arrives_whole(to: &'static str) {
    let Some(src) = ServerDb::new("postgres").await else {
        return;
    };
    let Some(dst) = ServerDb::new(to).await else {
        return;
    };
    src.exec(
        "CREATE TABLE stock (id SERIAL PRIMARY KEY, code TEXT NOT NULL UNIQUE, qty INTEGER NOT NULL);
         INSERT INTO stock (code, qty) SELECT 'c' || i, 0 FROM generate_series(1, 60) AS i",
    )
    .await;
    dst.exec(match to {
        "postgres" => {
            "CREATE TABLE stock (id SERIAL PRIMARY KEY, code TEXT NOT NULL UNIQUE, qty INTEGER NOT NULL)"
        }
        _ => {
            "CREATE TABLE stock (id INT AUTO_INCREMENT PRIMARY KEY, code VARCHAR(32) NOT NULL UNIQUE, qty INT NOT NULL,
                 trx_start BIGINT UNSIGNED GENERATED ALWAYS AS ROW START INVISIBLE,
                 trx_end BIGINT UNSIGNED GENERATED ALWAYS AS ROW END INVISIBLE,
                 PERIOD FOR SYSTEM_TIME(trx_start, trx_end)) WITH SYSTEM VERSIONING"
        }
    })
    .await;
    let transactions = |qty: i64| {
        let sql = match to {
            "postgres" => {
                format!("SELECT count(DISTINCT xmin::text)::text FROM stock WHERE qty = {qty}")
            }
            _ => format!(
                "SELECT CAST(count(DISTINCT trx_start) AS CHAR) FROM stock WHERE qty = {qty}"
            ),
        };
        let dst = &dst;
        async move { dst.text(&sql).await.unwrap().parse::<i64>().unwrap() }
    };
    let rows = |qty: i64| {
        let sql = match to {
            "postgres" => format!("SELECT count(*)::text FROM stock WHERE qty = {qty}"),
            _ => format!("SELECT CAST(count(*) AS CHAR) FROM stock WHERE qty = {qty}"),
        };
        let dst = &dst;
        async move { dst.text(&sql).await.unwrap().parse::<i64>().unwrap() }
    };
    let dir = tempfile::tempdir().unwrap();
    let config = |settings: &str| {
        pair_config(
            dir.path(),
            &src.url,
            &dst.url,
            "stock",
            &["code", "qty"],
            settings,
        )
    };
    sync_once(&config("batch = 10")).await;
    assert_eq!(rows(0).await, 60, "the first load");

    src.exec("UPDATE stock SET qty = 7").await;
    sync_once(&config("batch = 10")).await;
    assert_eq!(rows(7).await, 60);
    assert_eq!(
        transactions(7).await,
        1,
        "60 updates in one transaction, batches of 10"
    );

    src.exec("INSERT INTO stock (code, qty) SELECT 'n' || i, 8 FROM generate_series(1, 45) AS i")
        .await;
    sync_once(&config("batch = 10")).await;
    assert_eq!(rows(8).await, 45);
    assert_eq!(transactions(8).await, 1, "45 inserts in one transaction");

    src.exec("UPDATE stock SET qty = 9 WHERE code LIKE 'c%'")
        .await;
    sync_once(&config("batch = 10\nmax_transaction = 20")).await;
    assert_eq!(rows(9).await, 60);
    assert!(
        transactions(9).await >= 3,
        "60 updates with at most 20 at once: {} transactions",
        transactions(9).await
    );
}

#[tokio::test]
async fn a_postgres_transaction_arrives_whole_on_postgres() {
    a_postgres_transaction_arrives_whole("postgres").await;
}

#[tokio::test]
async fn a_postgres_transaction_arrives_whole_on_mariadb() {
    a_postgres_transaction_arrives_whole("mysql").await;
}

/// MariaDB triggers installed by an earlier connector compared `_duplex_rows.pk` (text) with the
/// table's integer key, which scanned every version row for each row deleted (59 s for a
/// 10,000-row DELETE in the bulk benchmark). The next read installs them again, with the key
/// cast to the column's character set and collation, and deletes then work, in bulk too.
#[tokio::test]
async fn old_mariadb_triggers_are_installed_again_and_deletes_use_the_index() {
    let Some(db) = ServerDb::new("mysql").await else {
        return;
    };
    db.exec("CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name TEXT); INSERT INTO items (name) VALUES ('a'), ('b'), ('c')")
        .await;
    let host = common::host();
    let plugin = db.connector(&host).await;
    let config = db.config();
    plugin
        .session()
        .await
        .unwrap()
        .read(&config, "items", "sync:a", None, 100)
        .await
        .unwrap();
    // Every row gets a version row.
    db.exec("UPDATE items SET name = concat(name, '!')").await;
    // What an earlier connector installed.
    db.exec(
        "DROP TRIGGER `_duplex_items_del`;
         CREATE TRIGGER `_duplex_items_del` AFTER DELETE ON `items` FOR EACH ROW BEGIN
             INSERT INTO _duplex_changes (tbl, pk, op, origin) VALUES ('items', OLD.`id`, 'D', @duplex_origin);
             DELETE FROM _duplex_rows WHERE tbl = 'items' AND pk = OLD.`id`;
         END",
    )
    .await;
    let body = || {
        db.text("SELECT CAST(action_statement AS CHAR) FROM information_schema.triggers WHERE trigger_schema = DATABASE() AND trigger_name = '_duplex_items_del'")
    };
    assert!(!body().await.unwrap().contains("CAST("));
    let mut s = plugin.session().await.unwrap();
    s.read(&config, "items", "sync:b", None, 100).await.unwrap();
    let now = body().await.unwrap();
    assert!(now.contains("CAST(OLD.`id` AS CHAR CHARACTER SET"), "{now}");
    let deletes = ["1", "2"]
        .iter()
        .map(|id| {
            WriteOp::Delete(duplex::plugin::DeleteOp {
                id: (*id).into(),
                if_version: None,
            })
        })
        .collect();
    let deleted = s.write(&config, "items", "sync:a", deletes).await.unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    assert_eq!(rows_as_text(&db, "SELECT name FROM items").await, ["c!"]);
    let versions = db
        .text("SELECT CAST(count(*) AS CHAR) FROM _duplex_rows WHERE tbl = 'items'")
        .await;
    assert_eq!(
        versions.as_deref(),
        Some("1"),
        "the deleted rows' versions went with them"
    );
}

/// The connector learns whether a table's capture is installed from the same catalogue query
/// that reads its columns, once per session. Capture taken out behind its back (a trigger
/// dropped, a companion table gone) is installed again by the next session, and by the same
/// session after its own `remove_capture`; no change made after that is missed.
#[tokio::test]
async fn capture_taken_out_is_installed_again_by_the_next_look_on_servers() {
    use common::TestDb;
    for kind in ["postgres", "mariadb"] {
        let Some(db) = items_db(kind).await else {
            continue;
        };
        let (drop_trigger, triggers) = match kind {
            "postgres" => (
                "DROP TRIGGER _duplex_capture_upd ON items; DROP TABLE _duplex_readers",
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'items'::regclass AND tgname LIKE '\\_duplex%'",
            ),
            _ => (
                "DROP TRIGGER `_duplex_items_upd`; DROP TABLE _duplex_readers",
                "SELECT count(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE() AND event_object_table = 'items'",
            ),
        };
        let host = common::host();
        let plugin = db.connector(&host).await;
        let config = db.config();
        let read = |cursor: Option<String>| {
            let (plugin, config) = (&plugin, &config);
            async move {
                plugin
                    .session()
                    .await
                    .unwrap()
                    .read(config, "items", "test:reader", cursor.as_deref(), 100)
                    .await
                    .unwrap()
            }
        };
        let first = read(None).await;
        assert_eq!(db.count(triggers).await, 3, "{kind}");
        db.exec("INSERT INTO items (name) VALUES ('a')").await;
        let seen = read(Some(first.next_cursor)).await;
        assert_eq!(seen.changes.len(), 1, "{kind}");

        db.exec(drop_trigger).await;
        let again = read(Some(seen.next_cursor)).await;
        assert_eq!(db.count(triggers).await, 3, "{kind}: installed again");
        db.exec("UPDATE items SET name = 'a2' WHERE name = 'a'")
            .await;
        let after = read(Some(again.next_cursor)).await;
        assert_eq!(
            after.changes.iter().map(|c| c.kind).collect::<Vec<_>>(),
            [ChangeKind::Update],
            "{kind}: the update after the repair arrives"
        );

        // One session: capture removed, then read again.
        let mut s = plugin.session().await.unwrap();
        s.read(&config, "items", "test:reader", None, 100)
            .await
            .unwrap();
        s.remove_capture(&config, None).await.unwrap();
        assert_eq!(db.count(triggers).await, 0, "{kind}");
        s.read(&config, "items", "test:reader", None, 100)
            .await
            .unwrap();
        assert_eq!(
            db.count(triggers).await,
            3,
            "{kind}: the same session installs it again"
        );
    }
}

/// Rows a write creates on MariaDB answer with what the INSERT returned and the versions its
/// triggers gave them, without reading the rows back (the write's transaction holds them): a
/// value the column rounded, a default and the key come back as stored, and each version is the one
/// `_duplex_rows` keeps, which a conditional update then passes.
#[tokio::test]
async fn created_rows_on_mariadb_answer_with_what_they_store_and_their_versions() {
    let Some(db) = ServerDb::new("mariadb").await else {
        return;
    };
    db.exec(
        "CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name TEXT, rate DECIMAL(4,2), kind VARCHAR(10) NOT NULL DEFAULT 'plain')",
    )
    .await;
    let host = common::host();
    let plugin = db.connector(&host).await;
    let config = db.config();
    let mut s = plugin.session().await.unwrap();
    s.read(&config, "items", "sync:a", None, 100).await.unwrap();
    let create = |name: &str| {
        WriteOp::Create(CreateOp {
            fields: vec![
                FieldValue {
                    name: "name".into(),
                    value: Value::Text(name.into()),
                },
                FieldValue {
                    name: "rate".into(),
                    value: Value::Decimal("7.125".into()),
                },
            ],
        })
    };
    let made = s
        .write(
            &config,
            "items",
            "sync:a",
            vec![create("a"), create("b"), create("c")],
        )
        .await
        .unwrap();
    let versions = rows_as_text(
        &db,
        "SELECT CONCAT(pk, '=', version) FROM _duplex_rows WHERE tbl = 'items' ORDER BY CAST(pk AS INT)",
    )
    .await;
    let mut answered = Vec::new();
    for w in &made {
        let w = w.as_ref().unwrap();
        let mut stored: Vec<String> = w
            .stored
            .iter()
            .map(|f| format!("{}={:?}", f.name, f.value))
            .collect();
        stored.sort();
        assert_eq!(
            stored,
            [
                format!("id={:?}", Value::Integer(w.id.parse().unwrap())),
                format!("kind={:?}", Value::Text("plain".into())),
                format!("rate={:?}", Value::Decimal("7.13".into())),
            ],
            "record {}",
            w.id
        );
        answered.push(format!(
            "{}={}",
            w.id,
            w.version.clone().unwrap_or_default()
        ));
    }
    assert_eq!(answered, versions);
    let w = &made[1].as_ref().unwrap();
    let again = s
        .write(
            &config,
            "items",
            "sync:a",
            vec![WriteOp::Update(UpdateOp {
                id: w.id.clone(),
                fields: vec![FieldValue {
                    name: "name".into(),
                    value: Value::Text("b2".into()),
                }],
                if_version: w.version.clone(),
            })],
        )
        .await
        .unwrap();
    assert!(again[0].is_ok(), "{again:?}");
}

/// A write on MariaDB logs the rows it creates, updates and deletes itself, two statements a
/// run, while the table's triggers stand aside: each row gets one entry, tagged with the
/// writer's origin, and the version it answered with, which the next conditional write passes.
/// Its own reader does not get them back, any other reader does; what a person's trigger writes
/// to another captured table is still logged there; a person's writes after it (on the same
/// table) are logged by the triggers; a table keyed by a date keeps its triggers; an insert
/// trigger installed before (which would log the rows a second time) is installed again first;
/// and a write that is a table's first use installs capture before its own transaction.
#[tokio::test]
async fn writes_on_mariadb_log_their_rows_once_themselves() {
    use common::TestDb;
    let Some(db) = ServerDb::new("mariadb").await else {
        return;
    };
    db.exec(
        "CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name TEXT);
         CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT);
         CREATE TABLE days (day DATE PRIMARY KEY, note TEXT);
         CREATE TRIGGER items_audit AFTER INSERT ON items FOR EACH ROW
             INSERT INTO audit (note) VALUES (CONCAT('made ', NEW.name));
         CREATE TRIGGER items_audit_upd AFTER UPDATE ON items FOR EACH ROW
             INSERT INTO audit (note) VALUES (CONCAT('changed ', NEW.name));",
    )
    .await;
    let host = common::host();
    let plugin = db.connector(&host).await;
    let config = db.config();
    let mut s = plugin.session().await.unwrap();
    let mut cursors = std::collections::HashMap::new();
    for (table, reader) in [
        ("items", "sync:a"),
        ("items", "sync:b"),
        ("audit", "sync:b"),
    ] {
        let batch = s.read(&config, table, reader, None, 100).await.unwrap();
        cursors.insert((table, reader), batch.next_cursor);
    }
    // What an earlier connector installed: an insert trigger that always logs.
    db.exec(
        "DROP TRIGGER `_duplex_items_ins`;
         CREATE TRIGGER `_duplex_items_ins` AFTER INSERT ON `items` FOR EACH ROW BEGIN
             INSERT INTO _duplex_changes (tbl, pk, op, origin) VALUES ('items', NEW.`id`, 'I', @duplex_origin);
             INSERT INTO _duplex_rows (tbl, pk, version) VALUES ('items', NEW.`id`, LAST_INSERT_ID()) ON DUPLICATE KEY UPDATE version = VALUES(version);
         END",
    )
    .await;
    let mut s = plugin.session().await.unwrap();
    let create = |field: &str, value: &str| {
        WriteOp::Create(CreateOp {
            fields: vec![FieldValue {
                name: field.into(),
                value: Value::Text(value.into()),
            }],
        })
    };
    // A create of a row with key 1, which each table below already has.
    let taken = || {
        WriteOp::Create(CreateOp {
            fields: vec![FieldValue {
                name: "id".into(),
                value: Value::Integer(1),
            }],
        })
    };
    let made = s
        .write(
            &config,
            "items",
            "sync:a",
            (1..=3).map(|i| create("name", &format!("n{i}"))).collect(),
        )
        .await
        .unwrap();
    let answered: Vec<String> = made
        .iter()
        .map(|w| {
            let w = w.as_ref().unwrap();
            format!("{}={}", w.id, w.version.clone().unwrap())
        })
        .collect();
    assert_eq!(
        rows_as_text(
            &db,
            "SELECT CONCAT(c.pk, '=', c.seq, ' ', c.op, ' ', c.origin, ' ', r.version) FROM _duplex_changes c \
             JOIN _duplex_rows r ON r.tbl = c.tbl AND r.pk = c.pk WHERE c.tbl = 'items' ORDER BY c.seq"
        )
        .await,
        answered
            .iter()
            .map(|a| format!("{a} I sync:a {}", a.split('=').nth(1).unwrap()))
            .collect::<Vec<_>>(),
        "one entry per row, the writer's origin, the version it answered with"
    );
    let body = db
        .text("SELECT CAST(action_statement AS CHAR) FROM information_schema.triggers WHERE trigger_schema = DATABASE() AND trigger_name = '_duplex_items_ins'")
        .await
        .unwrap();
    assert!(body.contains("@duplex_own_log"), "installed again: {body}");
    let body = db
        .text("SELECT CAST(action_statement AS CHAR) FROM information_schema.triggers WHERE trigger_schema = DATABASE() AND trigger_name = '_duplex_items_upd'")
        .await
        .unwrap();
    assert!(body.contains("@duplex_own_log"), "{body}");

    let read = |table: &'static str, reader: &'static str| {
        let (plugin, config, cursor) = (&plugin, &config, cursors[&(table, reader)].clone());
        async move {
            let batch = plugin
                .session()
                .await
                .unwrap()
                .read(config, table, reader, Some(&cursor), 100)
                .await
                .unwrap();
            batch
                .changes
                .iter()
                .map(|c| (c.kind, c.id.clone()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(read("items", "sync:a").await, []);
    let ids: Vec<&str> = answered
        .iter()
        .map(|a| a.split('=').next().unwrap())
        .collect();
    assert_eq!(
        read("items", "sync:b").await,
        ids.iter()
            .map(|id| (ChangeKind::Create, id.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        read("audit", "sync:b").await,
        ["1", "2", "3"].map(|id| (ChangeKind::Create, id.to_owned())),
        "rows a person's trigger made in another table are logged there"
    );

    // Updates: a run of two (one statement), then one alone, each on the version its create
    // answered with; then a person's update and insert.
    let update = |i: usize| {
        let (id, version) = answered[i].split_once('=').unwrap();
        WriteOp::Update(UpdateOp {
            id: id.into(),
            fields: vec![FieldValue {
                name: "name".into(),
                value: Value::Text(format!("u{i}")),
            }],
            if_version: Some(version.into()),
        })
    };
    let mut updated = s
        .write(&config, "items", "sync:a", vec![update(0), update(1)])
        .await
        .unwrap();
    updated.extend(
        s.write(&config, "items", "sync:a", vec![update(2)])
            .await
            .unwrap(),
    );
    db.exec("UPDATE items SET name = 'by hand' WHERE id = 1; INSERT INTO items (name) VALUES ('by hand')")
        .await;
    let log = rows_as_text(
        &db,
        "SELECT CONCAT(pk, '=', seq, ' ', op, ' ', COALESCE(origin, '-')) FROM _duplex_changes WHERE tbl = 'items' ORDER BY seq",
    )
    .await;
    assert_eq!(
        log[3..6],
        updated
            .iter()
            .map(|w| {
                let w = w.as_ref().unwrap();
                format!("{}={} U sync:a", w.id, w.version.clone().unwrap())
            })
            .collect::<Vec<_>>(),
        "one entry per row updated, with the version it answered with"
    );
    assert_eq!(
        log[6..]
            .iter()
            .map(|e| e.split_once(' ').unwrap().1)
            .collect::<Vec<_>>(),
        ["U -", "I -"],
        "a person's update and insert are logged by the triggers"
    );
    // Deletes: a run of two, on the versions the updates answered with, then one alone.
    let delete = |id: &str, if_version: Option<String>| {
        WriteOp::Delete(duplex::plugin::DeleteOp {
            id: id.into(),
            if_version,
        })
    };
    let gone: Vec<(String, Option<String>)> = updated[1..]
        .iter()
        .map(|w| {
            let w = w.as_ref().unwrap();
            (w.id.clone(), w.version.clone())
        })
        .chain([("4".to_owned(), None)])
        .collect();
    let mut deleted = s
        .write(
            &config,
            "items",
            "sync:a",
            gone[..2]
                .iter()
                .map(|(id, v)| delete(id, v.clone()))
                .collect(),
        )
        .await
        .unwrap();
    deleted.extend(
        s.write(&config, "items", "sync:a", vec![delete("4", None)])
            .await
            .unwrap(),
    );
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    let log = rows_as_text(
        &db,
        "SELECT CONCAT(pk, ' ', op, ' ', COALESCE(origin, '-')) FROM _duplex_changes WHERE tbl = 'items' ORDER BY seq",
    )
    .await;
    assert_eq!(
        log[8..],
        gone.iter()
            .map(|(id, _)| format!("{id} D sync:a"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        rows_as_text(
            &db,
            "SELECT r.pk FROM _duplex_rows r WHERE r.tbl = 'items' \
             AND r.version = (SELECT MAX(seq) FROM _duplex_changes c WHERE c.tbl = r.tbl AND c.pk = r.pk) ORDER BY r.version"
        )
        .await,
        [ids[0]],
        "the deleted rows' versions went with them; the one left is at its latest entry"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM _duplex_rows WHERE tbl = 'items'")
            .await,
        1
    );
    assert_eq!(
        read("audit", "sync:b").await.len(),
        8,
        "what a person's triggers wrote to another table on each insert and update is logged there"
    );

    // A batch with a refused op is rolled back whole and written again op by op, where the
    // triggers log: each row made gets one entry still.
    let before = log.len();
    let refused = s
        .write(
            &config,
            "items",
            "sync:a",
            vec![create("name", "fine"), taken()],
        )
        .await
        .unwrap();
    assert!(refused[0].is_ok() && refused[1].is_err(), "{refused:?}");
    let made = refused[0].as_ref().unwrap();
    assert_eq!(
        rows_as_text(
            &db,
            "SELECT CONCAT(pk, '=', seq, ' ', op, ' ', COALESCE(origin, '-')) FROM _duplex_changes WHERE tbl = 'items' ORDER BY seq",
        )
        .await[before..],
        [format!(
            "{}={} I sync:a",
            made.id,
            made.version.clone().unwrap()
        )]
    );

    s.read(&config, "days", "sync:a", None, 100).await.unwrap();
    let days = s
        .write(
            &config,
            "days",
            "sync:a",
            vec![create("day", "2026-12-07"), create("day", "2026-12-08")],
        )
        .await
        .unwrap();
    assert!(days.iter().all(Result::is_ok), "{days:?}");
    assert_eq!(
        db.text("SELECT CAST(count(*) AS CHAR) FROM _duplex_changes WHERE tbl = 'days'")
            .await
            .as_deref(),
        Some("2"),
        "a table keyed by a date is logged by its trigger, once a row"
    );

    // A write as the table's first use installs capture before its transaction: MariaDB
    // commits a transaction at DDL, so installed inside it, the rows written after were each
    // committed at once, and a batch refused half-way left them made, to be made again op by
    // op.
    db.exec("CREATE TABLE firsts (id INT AUTO_INCREMENT PRIMARY KEY, name TEXT); INSERT INTO firsts (name) VALUES ('by hand')")
        .await;
    let mut s = plugin.session().await.unwrap();
    let firsts = s
        .write(
            &config,
            "firsts",
            "sync:a",
            vec![create("name", "a"), create("name", "b"), taken()],
        )
        .await
        .unwrap();
    assert!(
        firsts[0].is_ok() && firsts[1].is_ok() && firsts[2].is_err(),
        "{firsts:?}"
    );
    assert_eq!(
        rows_as_text(&db, "SELECT name FROM firsts ORDER BY id").await,
        ["by hand", "a", "b"],
        "each row made once"
    );
    assert_eq!(
        rows_as_text(
            &db,
            "SELECT CONCAT(op, ' ', origin) FROM _duplex_changes WHERE tbl = 'firsts' ORDER BY seq"
        )
        .await,
        ["I sync:a", "I sync:a"]
    );
    assert_eq!(
        db.count("SELECT count(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE() AND event_object_table = 'firsts'")
            .await,
        3
    );
}

/// A run of updates on PostgreSQL is one statement that answers with what each row stores
/// (the table joined again for the rows as they were), so nothing is read before or after it:
/// what a trigger or the column's type changed comes back exactly as op by op, conditional
/// or not, and what the write left as it was does not.
#[tokio::test]
async fn a_bulk_update_on_postgres_answers_with_what_the_rows_store() {
    let Some(db) = ServerDb::new("postgres").await else {
        return;
    };
    db.exec(
        "CREATE TABLE items (id SERIAL PRIMARY KEY, name TEXT, rate NUMERIC(4,2), k TEXT, touched INT NOT NULL DEFAULT 0);
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN NEW.touched := OLD.touched + 1; RETURN NEW; END $$;
         CREATE TRIGGER touch BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION touch();
         INSERT INTO items (name, rate, k) SELECT 'row ' || i, i, 'k' || i FROM generate_series(1, 4) i;",
    )
    .await;
    let host = common::host();
    let plugin = db.connector(&host).await;
    let config = db.config();
    let mut s = plugin.session().await.unwrap();
    let read = s.read(&config, "items", "sync:a", None, 100).await.unwrap();
    let version = |id: &str| {
        read.changes
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| c.version.clone())
    };
    let update = |id: &str, rate: &str, conditional: bool| {
        WriteOp::Update(duplex::plugin::UpdateOp {
            id: id.into(),
            fields: vec![FieldValue {
                name: "rate".into(),
                value: Value::Decimal(rate.into()),
            }],
            if_version: if conditional { version(id) } else { None },
        })
    };
    let stored = |w: &duplex::plugin::Written| {
        let mut s: Vec<String> = w
            .stored
            .iter()
            .map(|f| format!("{}={:?}", f.name, f.value))
            .collect();
        s.sort();
        s
    };
    for conditional in [true, false] {
        // A run of three, then one alone (op by op's statement), each rate rounded by its
        // column and each row touched by the trigger.
        let bulk = s
            .write(
                &config,
                "items",
                "sync:a",
                ["1", "2", "3"]
                    .iter()
                    .map(|id| update(id, "7.125", conditional))
                    .collect(),
            )
            .await
            .unwrap();
        let alone = s
            .write(
                &config,
                "items",
                "sync:a",
                vec![update("4", "7.125", conditional)],
            )
            .await
            .unwrap();
        let touched = if conditional { 1 } else { 2 };
        for w in bulk.iter().chain(&alone) {
            let w = w.as_ref().unwrap();
            assert_eq!(
                stored(w),
                [
                    format!("rate={:?}", Value::Decimal("7.13".into())),
                    format!("touched={:?}", Value::Integer(touched))
                ],
                "record {} (conditional: {conditional})",
                w.id
            );
        }
        // The version each answered with is the row's own.
        let versions: Vec<String> =
            rows_as_text(&db, "SELECT xmin::text FROM items ORDER BY id").await;
        let answered: Vec<String> = bulk
            .iter()
            .chain(&alone)
            .map(|w| w.as_ref().unwrap().version.clone().unwrap())
            .collect();
        assert_eq!(answered, versions);
    }
}
