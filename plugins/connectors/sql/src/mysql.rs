//! MariaDB and MySQL: catalogue through `information_schema`, capture through three row
//! triggers per table. Needs `INSERT ... RETURNING` (MariaDB 10.5 and later).
//!
//! Why the log is read with gap checks: an AUTO_INCREMENT position is taken when a row changes,
//! not when its transaction commits, so position 10 can commit after 11 (the gap problem of
//! trigger-based capture). The reader walks positions in order and stops at a missing one
//! unless it can prove the missing one will never appear: no transaction that started before
//! the entry after the gap is still running (`information_schema.INNODB_TRX`, judged only once
//! the gap is a second old, since that table is a cache refreshed every 100 ms), and the missing
//! entry is still not there when looked at again after that check (it may have committed in
//! between). A rolled-back transaction leaves a permanent gap, which that proof lets the reader
//! pass. Reads run at READ COMMITTED so that each statement sees the latest commits. Without the
//! PROCESS privilege to read INNODB_TRX, a gap is passed once the entry after it is a minute old.
//!
//! Own writes are tagged with the session variable `@duplex_origin`, set for the write
//! transaction and cleared before it commits.
//!
//! Why a write logs the rows it writes itself: the triggers run two statements per row (the log
//! entry and the row's version), which made a 1,000-row INSERT take 22 ms of the server's time
//! against 6.4 without capture, and ten 1,000-row UPDATEs 190 ms more than without. For a write
//! call's batch `@duplex_own_log` names the table, its triggers stand aside, and the writer logs
//! the rows it wrote in two statements of its own per run (`log_written`) inside the same
//! transaction, so the entries commit with the rows as the triggers' would (95 ms for those ten
//! UPDATEs). Every write sets both variables when it begins, so one left behind by a write that
//! failed half-way is gone before the connection writes again; and the variable names one
//! table, so a person's trigger on it that writes another captured table is still logged there.

use std::collections::HashMap;

use duplex_sdk::sql::Db;
use duplex_sdk::{params, Error, FieldType, Value};

use crate::dialect::{
    count, entries, literal, prune_bound, Carry, Column, Dialect, Installed, LogRead, Look,
};

pub struct MySql;

fn field_type(data_type: &str, column_type: &str) -> FieldType {
    match data_type {
        "tinyint" if column_type.starts_with("tinyint(1)") => FieldType::Boolean,
        "bool" | "boolean" => FieldType::Boolean,
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => {
            FieldType::Integer
        }
        "decimal" | "numeric" => FieldType::Decimal,
        "float" | "double" | "real" => FieldType::Float,
        "datetime" | "timestamp" => FieldType::Timestamp,
        "json" => FieldType::Json,
        "blob" | "tinyblob" | "mediumblob" | "longblob" | "binary" | "varbinary" | "bit" => {
            FieldType::Bytes
        }
        _ => FieldType::Text,
    }
}

/// The types the sql capability reads and writes as they are.
const NATIVE: &[&str] = &[
    "tinyint",
    "smallint",
    "mediumint",
    "int",
    "integer",
    "bigint",
    "bool",
    "boolean",
    "decimal",
    "numeric",
    "float",
    "double",
    "real",
    "datetime",
    "timestamp",
    "date",
    "time",
    "char",
    "varchar",
    "tinytext",
    "text",
    "mediumtext",
    "longtext",
    "json",
    "binary",
    "varbinary",
    "tinyblob",
    "blob",
    "mediumblob",
    "longblob",
    "enum",
    "set",
];

const SPATIAL: &[&str] = &[
    "geometry",
    "point",
    "linestring",
    "polygon",
    "multipoint",
    "multilinestring",
    "multipolygon",
    "geometrycollection",
];

/// How a column is carried: natively; an enum as text with its values (a set as text, its
/// members comma-separated); an unsigned BIGINT (beyond 2^63) as a decimal; YEAR and BIT(n) as
/// integers (BIT(64) as a decimal); any other type with a text form (INET6, UUID, ...) as text.
/// Spatial types are refused.
fn carry(name: &str, data_type: &str, column_type: &str) -> (FieldType, Carry) {
    let original = column_type;
    let lower = column_type.to_ascii_lowercase();
    let column_type = lower.as_str();
    if SPATIAL.contains(&data_type) {
        return (
            FieldType::Text,
            Carry::refused(format!(
                "column {name} has the spatial type {data_type}, which Duplex does not carry; map \
                 a generated column such as ST_AsText({name}) one way instead"
            )),
        );
    }
    match data_type {
        "bigint" if column_type.contains("unsigned") => {
            (FieldType::Decimal, Carry::read("CAST({} AS DECIMAL(20,0))"))
        }
        "year" => (FieldType::Integer, Carry::read("CAST({} AS SIGNED)")),
        "bit" if column_type.trim() == "bit(64)" => {
            (FieldType::Decimal, Carry::read("CAST({} AS DECIMAL(20,0))"))
        }
        "bit" => (FieldType::Integer, Carry::read("CAST({} AS UNSIGNED)")),
        "enum" => (
            FieldType::Text,
            Carry {
                allowed: enum_values(original),
                ..Carry::default()
            },
        ),
        _ if NATIVE.contains(&data_type) => (field_type(data_type, column_type), Carry::default()),
        _ => (FieldType::Text, Carry::read("CAST({} AS CHAR)")),
    }
}

/// The values of `enum('a','b''c')`, unquoted.
fn enum_values(column_type: &str) -> Vec<String> {
    let Some(inner) = column_type
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("enum("))
        .and_then(|_| column_type[5..].strip_suffix(')'))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    value.push('\'');
                }
                '\'' => break,
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                }
                c => value.push(c),
            }
        }
        out.push(value);
    }
    out
}

fn trigger_name(table: &str, suffix: &str) -> String {
    format!("_duplex_{table}_{suffix}")
}

/// How long a gap may stand before it is passed when INNODB_TRX cannot be read.
const BLIND_GAP_WAIT_SECONDS: i64 = 60;

impl MySql {
    /// Whether the missing positions between `after` and `next` will never appear.
    fn gap_closed(&self, db: &Db, after: i64, next: i64) -> Result<bool, Error> {
        // INNODB_TRX is a cache refreshed at most every 100 ms: a transaction that began just now
        // may not be in it yet. Give a gap a second before judging it.
        let settled = count(
            db,
            "SELECT count(*) FROM _duplex_changes WHERE seq = ? AND changed_at <= NOW(6) - INTERVAL 1 SECOND",
            params![next],
        )?;
        if settled == 0 {
            return Ok(false);
        }
        let running = db.query(
            "SELECT count(*) FROM information_schema.INNODB_TRX \
             WHERE trx_mysql_thread_id <> CONNECTION_ID() \
               AND trx_started <= (SELECT changed_at FROM _duplex_changes WHERE seq = ?)",
            params![next],
        );
        match running {
            Ok(rows) => {
                if rows.first().and_then(|r| r.at(0)?.as_integer()).unwrap_or(1) > 0 {
                    return Ok(false);
                }
                // Nothing that could own the gap is running. If it committed meanwhile, read it
                // next time, in order; if it is still missing, it was rolled back.
                Ok(count(db, "SELECT count(*) FROM _duplex_changes WHERE seq > ? AND seq < ?", params![after, next])? == 0)
            }
            Err(_) => Ok(count(
                db,
                "SELECT count(*) FROM _duplex_changes WHERE seq = ? AND changed_at < NOW(6) - INTERVAL ? SECOND",
                params![next, BLIND_GAP_WAIT_SECONDS],
            )? > 0),
        }
    }
}

/// The change log and its companions, as an SQL list.
const LOG_TABLES: &str = "('_duplex_changes', '_duplex_rows', '_duplex_readers')";
/// Counts a table's triggers installed by an earlier connector (parameters: the table, its
/// three triggers' names): those that do not stand aside for a writer that logs its own rows,
/// among them delete triggers from before the key was cast to text (see `triggers_outdated`).
const OUTDATED_TRIGGERS: &str =
    "SELECT count(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE() \
     AND event_object_table = ? AND trigger_name IN (?, ?, ?) \
     AND action_statement NOT LIKE '%@duplex\\_own\\_log%'";

impl Dialect for MySql {
    fn log_installed(&self, db: &Db) -> Result<bool, Error> {
        Ok(count(
            db,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '_duplex_changes'",
            &[],
        )? > 0)
    }

    fn ident(&self, name: &str) -> String {
        format!("`{}`", name.replace('`', "``"))
    }

    fn param(&self, _n: usize) -> String {
        "?".into()
    }

    fn text_type(&self) -> &'static str {
        "CHAR"
    }

    /// InnoDB's plain SELECT reads the transaction's snapshot: a person's edit committed after
    /// it passed the version check unseen, and the UPDATE then overwrote it (issue 12).
    fn for_update(&self) -> &'static str {
        " FOR UPDATE"
    }

    fn before_read(&self, db: &Db) -> Result<(), Error> {
        db.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", &[])
            .map(drop)
    }

    /// Under REPEATABLE READ, the locking read of a write's version check takes gap locks
    /// where a key is missing, and those deadlock with people's inserts: writes run READ
    /// COMMITTED too, which locks only the rows read.
    fn before_write(&self, db: &Db) -> Result<(), Error> {
        self.before_read(db)
    }

    fn tables(&self, db: &Db) -> Result<Vec<String>, Error> {
        let rows = db.query(
            "SELECT CAST(table_name AS CHAR) AS name FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED') \
             AND table_name NOT LIKE '\\_duplex\\_%' ORDER BY 1",
            &[],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| r.at(0)?.as_text().map(str::to_owned))
            .collect())
    }

    fn look(&self, db: &Db, table: &str) -> Result<Look, Error> {
        // The capture's tables and triggers are counted by subqueries, in the same round trip
        // as the columns: on MariaDB 10.11 about 1.0 ms of the server's time, where the four
        // questions apart took 1.3 ms and four round trips.
        let rows = db.query(
            &format!("SELECT (SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() \
                            AND table_name = '_duplex_changes') AS log, \
                    (SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() \
                            AND table_name IN {LOG_TABLES}) AS companions, \
                    (SELECT count(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE() \
                            AND event_object_table = ? AND trigger_name IN (?, ?, ?)) AS triggers, \
                    ({OUTDATED_TRIGGERS}) AS outdated, \
                    CAST(column_name AS CHAR) AS name, CAST(data_type AS CHAR) AS data_type, \
                    CAST(column_type AS CHAR) AS column_type, CAST(is_nullable AS CHAR) AS nullable, \
                    CAST(column_key AS CHAR) AS ckey, CAST(extra AS CHAR) AS extra, \
                    CAST(generation_expression AS CHAR) AS generation \
             FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position"),
            params![
                table,
                trigger_name(table, "ins"),
                trigger_name(table, "upd"),
                trigger_name(table, "del"),
                table,
                trigger_name(table, "ins"),
                trigger_name(table, "upd"),
                trigger_name(table, "del"),
                table
            ],
        )?;
        let capture = rows.first().map(|r| Installed::counted(r, 3));
        let mut pk = 0;
        let columns = rows
            .iter()
            .map(|r| {
                let text = |k: &str| {
                    r.get(k)
                        .and_then(Value::as_text)
                        .unwrap_or_default()
                        .to_owned()
                };
                let data_type = text("data_type").to_ascii_lowercase();
                let column_type = text("column_type").to_ascii_lowercase();
                // A system-versioned table's key holds its ROW END column too, which tells a
                // row's history apart; the row's id is the rest.
                let is_pk = text("ckey") == "PRI" && text("generation") != "ROW END";
                if is_pk {
                    pk += 1;
                }
                let name = text("name");
                // An enum's values keep their case.
                let (field_type, carry) = carry(&name, &data_type, &text("column_type"));
                Column {
                    name,
                    field_type,
                    sql_type: column_type,
                    nullable: text("nullable") == "YES" && !is_pk,
                    pk_position: if is_pk { pk } else { 0 },
                    generated: text("extra").to_ascii_uppercase().contains("GENERATED"),
                    carry,
                }
            })
            .collect();
        Ok(Look { columns, capture })
    }

    fn install_log(&self, db: &Db) -> Result<(), Error> {
        if count(
            db,
            &format!("SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name IN {LOG_TABLES}"),
            &[],
        )? == 3
        {
            return Ok(());
        }
        for statement in [
            "CREATE TABLE IF NOT EXISTS _duplex_changes (
                 seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                 tbl VARCHAR(191) NOT NULL,
                 pk VARCHAR(191) NOT NULL,
                 op CHAR(1) NOT NULL,
                 origin VARCHAR(191) NULL,
                 changed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                 KEY _duplex_changes_tbl (tbl, seq)
             ) ENGINE = InnoDB",
            "CREATE TABLE IF NOT EXISTS _duplex_rows (
                 tbl VARCHAR(191) NOT NULL,
                 pk VARCHAR(191) NOT NULL,
                 version BIGINT NOT NULL,
                 PRIMARY KEY (tbl, pk)
             ) ENGINE = InnoDB",
            "CREATE TABLE IF NOT EXISTS _duplex_readers (
                 tbl VARCHAR(191) NOT NULL,
                 reader VARCHAR(191) NOT NULL,
                 pos VARCHAR(64) NOT NULL,
                 confirmed VARCHAR(64) NOT NULL,
                 seen_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                 PRIMARY KEY (tbl, reader)
             ) ENGINE = InnoDB",
        ] {
            db.execute(statement, &[])?;
        }
        Ok(())
    }

    fn has_triggers(&self, db: &Db, table: &str) -> Result<bool, Error> {
        Ok(count(
            db,
            "SELECT count(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE() \
             AND event_object_table = ? AND trigger_name IN (?, ?, ?)",
            params![
                table,
                trigger_name(table, "ins"),
                trigger_name(table, "upd"),
                trigger_name(table, "del")
            ],
        )? == 3)
    }

    /// Triggers installed before they stood aside for a writer logging its own rows (which
    /// would log them twice), and before that, delete triggers from before the key was cast to
    /// text for `_duplex_rows` (MariaDB compared the text column with the table's integer key
    /// value by value, scanning every version row for every row deleted: 2.8 s for 500 deletes
    /// beside 20,000 rows; 5 ms cast).
    fn triggers_outdated(&self, db: &Db, table: &str) -> Result<bool, Error> {
        Ok(count(
            db,
            OUTDATED_TRIGGERS,
            params![
                table,
                trigger_name(table, "ins"),
                trigger_name(table, "upd"),
                trigger_name(table, "del")
            ],
        )? > 0)
    }

    fn install_triggers(&self, db: &Db, table: &str, pk: &str) -> Result<(), Error> {
        let t = self.ident(table);
        let tl = literal(table);
        let p = self.ident(pk);
        // The old key as `_duplex_rows.pk` holds it: text in that column's character set and
        // collation, so that the lookup uses its index (an integer compared with it does not,
        // and a text in the trigger's own collation cannot be compared with it at all).
        let rows_pk = db.query(
            "SELECT CAST(character_set_name AS CHAR) AS cs, CAST(collation_name AS CHAR) AS co \
             FROM information_schema.columns WHERE table_schema = DATABASE() \
             AND table_name = '_duplex_rows' AND column_name = 'pk'",
            &[],
        )?;
        let name = |k: &str| -> Result<String, Error> {
            let v = rows_pk
                .first()
                .and_then(|r| r.get(k)?.as_text().map(str::to_owned))
                .unwrap_or_default();
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(Error::permanent(format!(
                    "cannot tell the {k} of _duplex_rows.pk (found {v:?})"
                )));
            }
            Ok(v)
        };
        let old_key = format!(
            "CAST(OLD.{p} AS CHAR CHARACTER SET {}) COLLATE {}",
            name("cs")?,
            name("co")?
        );
        // Inside a trigger LAST_INSERT_ID() is the position the trigger just took; it is
        // restored when the trigger ends.
        let rows = |key: &str| {
            format!("INSERT INTO _duplex_rows (tbl, pk, version) VALUES ({tl}, {key}, LAST_INSERT_ID()) ON DUPLICATE KEY UPDATE version = VALUES(version);")
        };
        for (suffix, body) in [
            ("ins", format!(
                "AFTER INSERT ON {t} FOR EACH ROW BEGIN
                     IF NOT (@duplex_own_log <=> {tl}) THEN
                         INSERT INTO _duplex_changes (tbl, pk, op, origin) VALUES ({tl}, NEW.{p}, 'I', @duplex_origin);
                         {}
                     END IF;
                 END",
                rows(&format!("NEW.{p}"))
            )),
            ("upd", format!(
                "AFTER UPDATE ON {t} FOR EACH ROW BEGIN
                     IF NOT (OLD.{p} <=> NEW.{p}) THEN
                         INSERT INTO _duplex_changes (tbl, pk, op, origin) VALUES ({tl}, OLD.{p}, 'D', @duplex_origin);
                         DELETE FROM _duplex_rows WHERE tbl = {tl} AND pk = {old_key};
                     END IF;
                     IF NOT (OLD.{p} <=> NEW.{p}) OR NOT (@duplex_own_log <=> {tl}) THEN
                         INSERT INTO _duplex_changes (tbl, pk, op, origin)
                             VALUES ({tl}, NEW.{p}, IF(OLD.{p} <=> NEW.{p}, 'U', 'I'), @duplex_origin);
                         {}
                     END IF;
                 END",
                rows(&format!("NEW.{p}"))
            )),
            ("del", format!(
                "AFTER DELETE ON {t} FOR EACH ROW BEGIN
                     IF NOT (@duplex_own_log <=> {tl}) THEN
                         INSERT INTO _duplex_changes (tbl, pk, op, origin) VALUES ({tl}, OLD.{p}, 'D', @duplex_origin);
                         DELETE FROM _duplex_rows WHERE tbl = {tl} AND pk = {old_key};
                     END IF;
                 END"
            )),
        ] {
            let name = self.ident(&trigger_name(table, suffix));
            db.execute(&format!("DROP TRIGGER IF EXISTS {name}"), &[])?;
            db.execute(&format!("CREATE TRIGGER {name} {body}"), &[])?;
        }
        Ok(())
    }

    fn shared_positions(&self) -> bool {
        true
    }

    fn ago(&self, seconds: u32) -> String {
        format!("NOW(6) - INTERVAL {seconds} SECOND")
    }

    fn upsert(&self, _keys: &[&str], columns: &[&str]) -> String {
        let set: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} = VALUES({c})"))
            .collect();
        format!("ON DUPLICATE KEY UPDATE {}", set.join(", "))
    }

    /// MariaDB's DELETE takes an ORDER BY and a LIMIT, and refuses a subquery on its own table.
    fn prune_log(
        &self,
        db: &Db,
        table: Option<&str>,
        upto: &str,
        limit: u32,
    ) -> Result<u64, Error> {
        let upto = prune_bound(db, upto)?;
        match table {
            Some(t) => db.execute(
                &format!("DELETE FROM _duplex_changes WHERE tbl = ? AND seq <= ? ORDER BY seq LIMIT {limit}"),
                params![t, upto],
            ),
            None => db.execute(
                &format!("DELETE FROM _duplex_changes WHERE seq <= ? ORDER BY seq LIMIT {limit}"),
                params![upto],
            ),
        }
    }

    fn remove_triggers(&self, db: &Db, table: &str) -> Result<(), Error> {
        for suffix in ["ins", "upd", "del"] {
            db.execute(
                &format!(
                    "DROP TRIGGER IF EXISTS {}",
                    self.ident(&trigger_name(table, suffix))
                ),
                &[],
            )?;
        }
        if count(db, "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '_duplex_changes'", &[])? > 0 {
            db.execute("DELETE FROM _duplex_changes WHERE tbl = ?", params![table])?;
            db.execute("DELETE FROM _duplex_rows WHERE tbl = ?", params![table])?;
        }
        // Capture installed before readers were kept has no such table.
        if count(db, "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '_duplex_readers'", &[])? > 0 {
            db.execute("DELETE FROM _duplex_readers WHERE tbl = ?", params![table])?;
        }
        Ok(())
    }

    fn remove_log(&self, db: &Db) -> Result<(), Error> {
        db.execute("DROP TABLE IF EXISTS _duplex_changes", &[])?;
        db.execute("DROP TABLE IF EXISTS _duplex_rows", &[])?;
        db.execute("DROP TABLE IF EXISTS _duplex_readers", &[])?;
        Ok(())
    }

    fn mark_origin(&self, db: &Db, origin: &str) -> Result<(), Error> {
        db.execute(
            "SET @duplex_origin = ?, @duplex_own_log = NULL",
            params![origin],
        )
        .map(drop)
    }

    /// The rows' keys are logged as the triggers write them (`NEW.key` as text), which the
    /// writer knows exactly for integer and text keys; a table keyed otherwise keeps its
    /// triggers.
    fn mark_origin_of_batch(
        &self,
        db: &Db,
        origin: &str,
        table: &str,
        pk: &Column,
        _only_inserts: bool,
    ) -> Result<bool, Error> {
        let own = matches!(pk.field_type, FieldType::Integer | FieldType::Text);
        db.execute(
            "SET @duplex_origin = ?, @duplex_own_log = ?",
            &[
                Value::Text(origin.to_owned()),
                if own {
                    Value::Text(table.to_owned())
                } else {
                    Value::Null
                },
            ],
        )?;
        Ok(own)
    }

    fn log_written(
        &self,
        db: &Db,
        table: &str,
        op: char,
        ids: &[String],
    ) -> Result<HashMap<String, String>, Error> {
        if !matches!(op, 'I' | 'U' | 'D') {
            return Err(Error::permanent(format!("no such change in the log: {op}")));
        }
        let tl = literal(table);
        let mut versions = HashMap::with_capacity(ids.len());
        // MariaDB plans an IN list of 1,000 values or more as a join (see `delete_run`).
        let size = if op == 'D' { 500 } else { 1_000 };
        for chunk in ids.chunks(size) {
            let keys: Vec<Value> = chunk.iter().map(|id| Value::Text(id.clone())).collect();
            let entries = vec![format!("({tl}, ?, '{op}', @duplex_origin)"); chunk.len()];
            let logged = db.query(
                &format!(
                    "INSERT INTO _duplex_changes (tbl, pk, op, origin) VALUES {} RETURNING seq, pk",
                    entries.join(", ")
                ),
                &keys,
            )?;
            if logged.rows.len() != chunk.len() {
                return Err(Error::permanent(format!(
                    "the change log of {table} returned {} entries for {} rows written",
                    logged.rows.len(),
                    chunk.len()
                )));
            }
            if op == 'D' {
                db.execute(
                    &format!(
                        "DELETE FROM _duplex_rows WHERE tbl = {tl} AND pk IN ({})",
                        vec!["?"; chunk.len()].join(", ")
                    ),
                    &keys,
                )?;
                continue;
            }
            let mut rows = Vec::with_capacity(chunk.len() * 2);
            for r in logged.iter() {
                let (Some(seq), Some(pk)) = (r.at(0), r.at(1)) else {
                    return Err(Error::permanent(format!(
                        "the change log of {table} returned an entry without its position"
                    )));
                };
                rows.push(Value::Text(pk.to_plain_string()));
                rows.push(seq.clone());
                versions.insert(pk.to_plain_string(), seq.to_plain_string());
            }
            let marks = vec![format!("({tl}, ?, ?)"); chunk.len()];
            db.execute(
                &format!(
                    "INSERT INTO _duplex_rows (tbl, pk, version) VALUES {} \
                     ON DUPLICATE KEY UPDATE version = VALUES(version)",
                    marks.join(", ")
                ),
                &rows,
            )?;
        }
        Ok(versions)
    }

    fn clear_origin(&self, db: &Db) -> Result<(), Error> {
        db.execute("SET @duplex_origin = NULL, @duplex_own_log = NULL", &[])
            .map(drop)
    }

    fn log_start(&self, db: &Db) -> Result<String, Error> {
        // A transaction still running may hold positions below the newest: start below every
        // position a running transaction could hold (re-reading a few entries is harmless).
        let max = count(db, "SELECT COALESCE(MAX(seq), 0) FROM _duplex_changes", &[])?;
        let running = db.query(
            "SELECT MIN(c.seq) FROM _duplex_changes c WHERE c.changed_at >= \
             (SELECT MIN(trx_started) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id <> CONNECTION_ID())",
            &[],
        );
        let start = match running {
            Ok(rows) => match rows.first().and_then(|r| r.at(0)?.as_integer()) {
                Some(first) => first - 1,
                None => max,
            },
            Err(_) => (max - 10_000).max(0),
        };
        Ok(start.min(max).to_string())
    }

    fn log_read(
        &self,
        db: &Db,
        table: &str,
        _own: Option<&str>,
        pos: &str,
        max: u32,
    ) -> Result<LogRead, Error> {
        let after: i64 = pos
            .parse()
            .map_err(|_| Error::permanent(format!("log position {pos:?} is not MariaDB's")))?;
        // All tables' entries: positions are shared, so a gap can only be seen across them.
        // The step between positions comes with them: an empty read is one statement.
        let rows = db.query(
            &format!("SELECT seq, tbl, pk, op, origin, changed_at, @@auto_increment_increment AS step FROM _duplex_changes WHERE seq > ? ORDER BY seq LIMIT {max}"),
            params![after],
        )?;
        let step = rows
            .first()
            .and_then(|r| r.get("step")?.as_integer())
            .unwrap_or(1)
            .max(1);
        let all = entries(&rows);
        let tables: Vec<String> = rows
            .iter()
            .map(|r| r.get("tbl").map(Value::to_plain_string).unwrap_or_default())
            .collect();
        let mut upto = after;
        let mut out = Vec::new();
        let mut stopped = false;
        for (e, tbl) in all.into_iter().zip(tables) {
            if e.seq != upto + step && !self.gap_closed(db, upto, e.seq)? {
                stopped = true;
                break;
            }
            upto = e.seq;
            if tbl == table {
                out.push(e);
            }
        }
        let more = stopped || rows.rows.len() as u32 >= max;
        // The log does not record the transaction an entry belongs to (MariaDB gives a
        // transaction no id a trigger could read cheaply), so a read cannot say where one ends.
        Ok(LogRead {
            entries: out,
            next: upto.to_string(),
            more,
            mid_transaction: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_values_keep_their_case_and_quotes() {
        assert_eq!(
            enum_values("enum('G','PG-13','it''s','a,b')"),
            vec!["G", "PG-13", "it's", "a,b"]
        );
        assert!(enum_values("set('a','b')").is_empty());
    }

    #[test]
    fn spatial_columns_are_refused_and_wide_unsigned_ones_carried_as_decimals() {
        let (_, c) = carry("shape", "point", "point");
        assert!(c
            .unsupported
            .unwrap()
            .contains("column shape has the spatial type point"));
        let (t, c) = carry("big", "bigint", "bigint(20) unsigned");
        assert_eq!(t, FieldType::Decimal);
        assert_eq!(c.read.as_deref(), Some("CAST({} AS DECIMAL(20,0))"));
        let (t, c) = carry("addr", "inet6", "inet6");
        assert_eq!(
            (t, c.read.as_deref()),
            (FieldType::Text, Some("CAST({} AS CHAR)"))
        );
    }
}
