//! The sql connector, built from `plugins/connectors/sql` and loaded by the real host, against
//! real SQLite files.

// Test helpers unwrap too: a panic there is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::Db;
use duplex::plugin::{
    CallError, Change, ChangeKind, CreateOp, DeleteOp, FieldMatch, FieldType, FieldValue,
    LookupKey, UpdateOp, Value, WitError, WriteOp,
};

const SCHEMA: &str = "
    CREATE TABLE customers (
        id INTEGER PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        name TEXT,
        balance DECIMAL(10, 2),
        vip BOOLEAN NOT NULL DEFAULT 0,
        born TIMESTAMP,
        prefs JSON
    );
    CREATE TABLE notes (body TEXT);
    INSERT INTO customers (id, email, name, balance, vip) VALUES
        (1, 'ada@example.com', 'Ada', '10.50', 1),
        (2, 'bob@example.com', 'Bob', NULL, 0);
";

fn field<'a>(c: &'a Change, name: &str) -> &'a Value {
    &c.fields
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("change {} has no field {name}", c.id))
        .value
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn create(fields: &[(&str, Value)]) -> WriteOp {
    WriteOp::Create(CreateOp {
        fields: fields
            .iter()
            .map(|(n, v)| FieldValue {
                name: (*n).into(),
                value: v.clone(),
            })
            .collect(),
    })
}

fn update(id: &str, fields: &[(&str, Value)], if_version: Option<&str>) -> WriteOp {
    WriteOp::Update(UpdateOp {
        id: id.into(),
        fields: fields
            .iter()
            .map(|(n, v)| FieldValue {
                name: (*n).into(),
                value: v.clone(),
            })
            .collect(),
        if_version: if_version.map(str::to_owned),
    })
}

/// Reads everything waiting after `cursor`, returning the changes and the new cursor, as a
/// reader that never writes.
async fn read_all(
    db: &Db,
    plugin: &duplex::plugin::ConnectorPlugin,
    cursor: Option<String>,
) -> (Vec<Change>, String) {
    read_all_as(db, plugin, "test:reader", cursor).await
}

/// [`read_all`] as the reader that writes with `origin`.
async fn read_all_as(
    db: &Db,
    plugin: &duplex::plugin::ConnectorPlugin,
    origin: &str,
    cursor: Option<String>,
) -> (Vec<Change>, String) {
    let mut session = plugin.session().await.expect("session");
    let mut cursor = cursor;
    let mut changes = Vec::new();
    loop {
        let batch = session
            .read(&db.config(), "customers", origin, cursor.as_deref(), 100)
            .await
            .expect("read");
        changes.extend(batch.changes);
        cursor = Some(batch.next_cursor);
        if !batch.has_more {
            break;
        }
    }
    (changes, cursor.unwrap_or_default())
}

#[tokio::test]
async fn discovers_tables_with_types_keys_and_skips_unkeyed_ones() {
    let db = Db::new(SCHEMA);
    let host = common::host();
    let plugin = db.connector(&host).await;
    assert_eq!(plugin.info().name, "sql");
    let streams = common::streams(&plugin, &db.config()).await;
    let names: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["customers"],
        "notes has no primary key and is skipped"
    );
    let customers = &streams[0];
    assert_eq!(customers.primary_key, ["id"]);
    let ty = |n: &str| customers.fields.iter().find(|f| f.name == n).unwrap().type_;
    assert_eq!(ty("id"), FieldType::Integer);
    assert_eq!(ty("email"), FieldType::Text);
    assert_eq!(ty("balance"), FieldType::Decimal);
    assert_eq!(ty("vip"), FieldType::Boolean);
    assert_eq!(ty("born"), FieldType::Timestamp);
    assert_eq!(ty("prefs"), FieldType::Json);
    let email = customers.fields.iter().find(|f| f.name == "email").unwrap();
    assert!(!email.nullable && email.writable && email.matchable);
}

#[tokio::test]
async fn first_read_lists_existing_rows_then_user_changes_follow_in_commit_order() {
    let db = Db::new(SCHEMA);
    let host = common::host();
    let plugin = db.connector(&host).await;

    let (snapshot, cursor) = read_all(&db, &plugin, None).await;
    assert_eq!(snapshot.len(), 2);
    assert!(snapshot
        .iter()
        .all(|c| c.kind == ChangeKind::Create && c.origin.is_none()));
    assert_eq!(field(&snapshot[0], "email"), &text("ada@example.com"));
    assert_eq!(
        field(&snapshot[0], "balance"),
        &Value::Decimal("10.5".into())
    );
    assert_eq!(field(&snapshot[0], "vip"), &Value::Boolean(true));

    // A person edits through their own application: insert, update, delete, in that order.
    let user = db.user();
    user.execute(
        "INSERT INTO customers (id, email, name) VALUES (3, 'cy@example.com', 'Cy')",
        [],
    )
    .unwrap();
    user.execute("UPDATE customers SET name = 'Robert' WHERE id = 2", [])
        .unwrap();
    user.execute("DELETE FROM customers WHERE id = 1", [])
        .unwrap();

    let (changes, cursor2) = read_all(&db, &plugin, Some(cursor.clone())).await;
    let summary: Vec<(&str, ChangeKind)> =
        changes.iter().map(|c| (c.id.as_str(), c.kind)).collect();
    assert_eq!(
        summary,
        [
            ("3", ChangeKind::Create),
            ("2", ChangeKind::Update),
            ("1", ChangeKind::Delete)
        ]
    );
    assert_eq!(field(&changes[1], "name"), &text("Robert"));
    assert!(changes[2].fields.is_empty());
    assert!(changes
        .iter()
        .all(|c| c.origin.is_none() && c.changed_at.is_some()));
    let v3: i64 = changes[0].version.as_deref().unwrap().parse().unwrap();
    let v2: i64 = changes[1].version.as_deref().unwrap().parse().unwrap();
    assert!(v2 > v3, "versions follow commit order");

    // Nothing new: an empty batch, and the cursor stays put.
    let (none, cursor3) = read_all(&db, &plugin, Some(cursor2.clone())).await;
    assert!(none.is_empty());
    assert_eq!(cursor3, cursor2);
}

#[tokio::test]
async fn several_edits_of_one_row_fold_into_one_change_with_the_latest_values() {
    let db = Db::new(SCHEMA);
    let host = common::host();
    let plugin = db.connector(&host).await;
    let (_, cursor) = read_all(&db, &plugin, None).await;
    let user = db.user();
    for name in ["A", "B", "C"] {
        user.execute("UPDATE customers SET name = ?1 WHERE id = 1", [name])
            .unwrap();
    }
    let (changes, _) = read_all(&db, &plugin, Some(cursor)).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(field(&changes[0], "name"), &text("C"));
}

#[tokio::test]
async fn own_writes_are_tagged_with_their_origin_and_peoples_are_not() {
    let db = Db::new(SCHEMA);
    let host = common::host();
    let plugin = db.connector(&host).await;
    let (_, cursor) = read_all(&db, &plugin, None).await;

    let mut s = plugin.session().await.unwrap();
    let results = s
        .write(
            &db.config(),
            "customers",
            "sync:crm-erp",
            vec![
                create(&[("email", text("dee@example.com")), ("name", text("Dee"))]),
                update("2", &[("name", text("Bobby"))], None),
            ],
        )
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let (changes, cursor) = read_all(&db, &plugin, Some(cursor)).await;
    assert_eq!(changes.len(), 2);
    assert!(changes
        .iter()
        .all(|c| c.origin.as_deref() == Some("sync:crm-erp")));

    // A person edits the row Duplex just wrote: that change is theirs.
    db.user()
        .execute("UPDATE customers SET name = 'Bob' WHERE id = 2", [])
        .unwrap();
    let (changes, _) = read_all(&db, &plugin, Some(cursor)).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].origin, None);

    // The writer itself does not read its own writes back, unless someone else changed the
    // record in the same batch.
    let (_, before) = read_all(&db, &plugin, None).await;
    let results = s
        .write(
            &db.config(),
            "customers",
            "sync:crm-erp",
            vec![
                update("1", &[("name", text("Ann"))], None),
                update("2", &[("name", text("Bo"))], None),
            ],
        )
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    db.user()
        .execute("UPDATE customers SET name = 'Bob' WHERE id = 2", [])
        .unwrap();
    let (changes, _) = read_all_as(&db, &plugin, "sync:crm-erp", Some(before.clone())).await;
    let ids: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["2"], "only the record a person changed too");
    assert_eq!(changes[0].origin, None);
    let (changes, _) = read_all(&db, &plugin, Some(before)).await;
    assert_eq!(changes.len(), 2, "other readers see both writes");

    // The marker never outlives the write transaction.
    let marks: i64 = db
        .user()
        .query_row("SELECT count(*) FROM _duplex_origin", [], |r| r.get(0))
        .unwrap();
    assert_eq!(marks, 0);
}

#[tokio::test]
async fn creates_updates_and_deletes_reach_the_table() {
    let db = Db::new(SCHEMA);
    let host = common::host();
    let plugin = db.connector(&host).await;
    let mut s = plugin.session().await.unwrap();
    let results = s
        .write(
            &db.config(),
            "customers",
            "t",
            vec![
                create(&[
                    ("email", text("eve@example.com")),
                    ("balance", Value::Decimal("99.95".into())),
                    ("vip", Value::Boolean(true)),
                    ("born", Value::Timestamp(946_684_800_000_000)),
                    ("prefs", Value::Json(r#"{"lang":"fr"}"#.into())),
                ]),
                update("1", &[("name", text("Ada L."))], None),
                WriteOp::Delete(DeleteOp {
                    id: "2".into(),
                    if_version: None,
                }),
            ],
        )
        .await
        .unwrap();
    let written: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("write succeeds"))
        .collect();
    let new_id = &written[0].id;
    assert!(written[0].version.is_some());

    let user = db.user();
    let (email, born, vip): (String, String, bool) = user
        .query_row(
            "SELECT email, born, vip FROM customers WHERE id = ?1",
            [new_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (email.as_str(), born.as_str(), vip),
        ("eve@example.com", "2000-01-01 00:00:00", true)
    );
    let name: String = user
        .query_row("SELECT name FROM customers WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "Ada L.");
    let gone: i64 = user
        .query_row("SELECT count(*) FROM customers WHERE id = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(gone, 0);

    // Writing to a record that is not there is a not-found for that record alone.
    let results = s
        .write(
            &db.config(),
            "customers",
            "t",
            vec![update("404", &[("name", text("x"))], None)],
        )
        .await
        .unwrap();
    assert!(matches!(&results[0], Err(WitError::NotFound(m)) if m.contains("404")));
}

#[tokio::test]
async fn conditional_update_on_a_stale_version_is_refused_as_a_conflict() {
    let db = Db::new(SCHEMA);
    let host = common::host();
    let plugin = db.connector(&host).await;
    let (snapshot, _) = read_all(&db, &plugin, None).await;
    let read_version = snapshot[0].version.clone().unwrap();

    // The row changes after Duplex read it.
    db.user()
        .execute(
            "UPDATE customers SET name = 'Ada (edited)' WHERE id = 1",
            [],
        )
        .unwrap();

    let mut s = plugin.session().await.unwrap();
    let results = s
        .write(
            &db.config(),
            "customers",
            "t",
            vec![update(
                "1",
                &[("name", text("Ada (stale)"))],
                Some(&read_version),
            )],
        )
        .await
        .unwrap();
    assert!(
        matches!(&results[0], Err(WitError::Conflict(_))),
        "{results:?}"
    );
    let name: String = db
        .user()
        .query_row("SELECT name FROM customers WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "Ada (edited)", "the person's edit survives");

    // With the current version the same update goes through.
    let current = s
        .find(&db.config(), "customers", LookupKey::Ids(vec!["1".into()]))
        .await
        .unwrap();
    let results = s
        .write(
            &db.config(),
            "customers",
            "t",
            vec![update(
                "1",
                &[("name", text("Ada (merged)"))],
                current[0].version.as_deref(),
            )],
        )
        .await
        .unwrap();
    assert!(results[0].is_ok(), "{results:?}");
}

#[tokio::test]
async fn one_invalid_row_in_a_batch_is_rejected_alone() {
    let db = Db::new(SCHEMA);
    let host = common::host();
    let plugin = db.connector(&host).await;
    let mut s = plugin.session().await.unwrap();
    let results = s
        .write(
            &db.config(),
            "customers",
            "t",
            vec![
                create(&[("email", text("fay@example.com"))]),
                // Duplicate email: the UNIQUE constraint refuses it.
                create(&[("email", text("ada@example.com"))]),
                // Text into a number column: refused before it reaches SQLite.
                create(&[
                    ("email", text("gus@example.com")),
                    ("balance", text("lots")),
                ]),
                // A column that does not exist.
                update("2", &[("nickname", text("B"))], None),
                create(&[("email", text("hal@example.com"))]),
            ],
        )
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert!(
        matches!(&results[1], Err(WitError::Validation(v)) if v.message.contains("UNIQUE")),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[2], Err(WitError::Validation(v)) if v.field.as_deref() == Some("balance")),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(&results[3], Err(WitError::Validation(v)) if v.field.as_deref() == Some("nickname")),
        "{:?}",
        results[3]
    );
    assert!(results[4].is_ok());
    let emails: Vec<String> = db
        .user()
        .prepare("SELECT email FROM customers ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        emails,
        [
            "ada@example.com",
            "bob@example.com",
            "fay@example.com",
            "hal@example.com"
        ]
    );
}

#[tokio::test]
async fn looks_records_up_by_id_and_by_matchable_field_ignoring_case() {
    let db = Db::new(SCHEMA);
    let host = common::host();
    let plugin = db.connector(&host).await;
    let mut s = plugin.session().await.unwrap();
    let by_email = s
        .find(
            &db.config(),
            "customers",
            LookupKey::ByField(FieldMatch {
                field: "email".into(),
                values: vec![text("BOB@Example.com"), text("nobody@example.com")],
                ignore_case: true,
            }),
        )
        .await
        .unwrap();
    assert_eq!(by_email.len(), 1);
    assert_eq!(by_email[0].id, "2");
    let by_id = s
        .find(
            &db.config(),
            "customers",
            LookupKey::Ids(vec!["1".into(), "9".into()]),
        )
        .await
        .unwrap();
    assert_eq!(
        by_id.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["1"]
    );
}

#[tokio::test]
async fn remove_capture_takes_out_everything_it_installed() {
    let db = Db::new(SCHEMA);
    let host = common::host();
    let plugin = db.connector(&host).await;
    read_all(&db, &plugin, None).await;
    let count = |sql: &str| -> i64 { db.user().query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"),
        3
    );

    let mut s = plugin.session().await.unwrap();
    s.remove_capture(&db.config(), None).await.unwrap();
    assert_eq!(
        count("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"),
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_duplex%' ESCAPE '\\'"),
        0
    );
    // The user's data is untouched.
    assert_eq!(count("SELECT count(*) FROM customers"), 2);
}

#[tokio::test]
async fn a_url_outside_the_grants_is_refused_naming_url_and_connection() {
    let db = Db::new(SCHEMA);
    let other = Db::new(SCHEMA);
    let host = common::host();
    let plugin = db.connector(&host).await;
    let mut s = plugin.session().await.unwrap();
    let err = s.discover(&other.config()).await.unwrap_err();
    let CallError::Plugin {
        error: WitError::Auth(msg),
        ..
    } = &err
    else {
        panic!("expected an auth error, got {err}");
    };
    assert!(
        msg.contains(&other.url()) && msg.contains("connection crm"),
        "{msg}"
    );
    // Refused before any I/O: the other database was not opened, let alone changed.
    let tables: i64 = other
        .user()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_duplex%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
}

#[tokio::test]
async fn a_bad_config_is_a_config_error_naming_the_problem() {
    let db = Db::new(SCHEMA);
    let host = common::host();
    let plugin = db.connector(&host).await;
    let mut s = plugin.session().await.unwrap();
    let err = s.check(r#"{"url": "x", "tabels": []}"#).await.unwrap_err();
    let Some(WitError::Config(msg)) = err.plugin_error() else {
        panic!("expected a config error, got {err}");
    };
    assert!(msg.contains("tabels"), "{msg}");
}

#[tokio::test]
async fn the_change_log_keeps_only_what_its_readers_still_need() {
    let db = Db::new("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);");
    let host = common::host();
    let plugin = db.connector(&host).await;
    common::the_log_keeps_only_what_readers_need(
        &db,
        &plugin,
        |who, secs| format!("UPDATE _duplex_readers SET seen_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '-{secs} seconds') WHERE reader = '{who}'"),
    )
    .await;
}

#[tokio::test]
async fn pruning_beside_writers_loses_nothing() {
    let db = Db::new("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);");
    let host = common::host();
    let plugin = db.connector(&host).await;
    common::pruning_beside_writers_loses_nothing(&db, &plugin, |who, secs| {
        format!("UPDATE _duplex_readers SET seen_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '-{secs} seconds') WHERE reader = '{who}'")
    })
    .await;
}

/// Many conditional updates in one call (issue 17: one statement where the versions check out)
/// on SQLite: the one a person changed since is refused alone, the others change, and the
/// versions they return pass the next conditional write.
#[tokio::test]
async fn many_conditional_updates_and_deletes_in_one_call_refuse_only_the_stale_one() {
    let db = Db::new(SCHEMA);
    db.user()
        .execute_batch(
            "INSERT INTO customers (id, email, name) VALUES
                 (3, 'cy@example.com', 'Cy'), (4, 'di@example.com', 'Di');",
        )
        .unwrap();
    let host = common::host();
    let plugin = db.connector(&host).await;
    let (snapshot, _) = read_all(&db, &plugin, None).await;
    let read: Vec<(String, String)> = snapshot
        .iter()
        .map(|c| (c.id.clone(), c.version.clone().unwrap()))
        .collect();
    assert_eq!(read.len(), 4);
    db.user()
        .execute("UPDATE customers SET name = 'person' WHERE id = 2", [])
        .unwrap();
    let updates = |rows: &[(String, String)], to: &str| -> Vec<WriteOp> {
        rows.iter()
            .map(|(id, v)| update(id, &[("name", text(&format!("{to} {id}")))], Some(v)))
            .collect()
    };
    let mut s = plugin.session().await.unwrap();
    let results = s
        .write(&db.config(), "customers", "t", updates(&read, "duplex"))
        .await
        .unwrap();
    let stale = read.iter().position(|(id, _)| id == "2").unwrap();
    assert!(
        matches!(&results[stale], Err(WitError::Conflict(_))),
        "{results:?}"
    );
    let fresh: Vec<(String, String)> = results
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != stale)
        .map(|(_, r)| {
            let w = r.as_ref().unwrap();
            (w.id.clone(), w.version.clone().unwrap())
        })
        .collect();
    let again = s
        .write(&db.config(), "customers", "t", updates(&fresh, "again"))
        .await
        .unwrap();
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    let names = || -> Vec<String> {
        let c = db.user();
        let mut q = c.prepare("SELECT name FROM customers ORDER BY id").unwrap();
        q.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(names(), ["again 1", "person", "again 3", "again 4"]);

    // Conditional deletes of many records are one statement too, with the same refusals: a
    // person changes record 3, whose delete alone is refused.
    db.user()
        .execute("UPDATE customers SET name = 'kept' WHERE id = 3", [])
        .unwrap();
    let deletes: Vec<WriteOp> = again
        .iter()
        .map(|r| {
            let w = r.as_ref().unwrap();
            WriteOp::Delete(duplex::plugin::DeleteOp {
                id: w.id.clone(),
                if_version: w.version.clone(),
            })
        })
        .collect();
    let ids: Vec<String> = again
        .iter()
        .map(|r| r.as_ref().unwrap().id.clone())
        .collect();
    let deleted = s
        .write(&db.config(), "customers", "t", deletes)
        .await
        .unwrap();
    for (id, result) in ids.iter().zip(&deleted) {
        if id == "3" {
            assert!(matches!(result, Err(WitError::Conflict(_))), "{deleted:?}");
        } else {
            assert!(result.is_ok(), "{deleted:?}");
        }
    }
    assert_eq!(names(), ["person", "kept"]);
}
