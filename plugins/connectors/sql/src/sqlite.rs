//! SQLite: catalogue through `pragma_table_xinfo`, capture through row triggers.
//!
//! Why the log's order is commit order here: SQLite has one writer at a time, and a change-log
//! position (`seq`, AUTOINCREMENT) is taken inside the writing transaction, so positions commit
//! in the order they were taken and a reader never sees position 11 before 10. (Databases with
//! concurrent writers need more; see the PostgreSQL and MariaDB dialects.)
//!
//! Why writes are tagged through a row in `_duplex_origin` and not a TEMP table: triggers on
//! main-schema tables cannot read the temp schema ("trigger cannot reference objects in database
//! temp"). The connector inserts the row at the start of its write transaction and deletes it
//! before commit, so it is never visible to another connection, and since SQLite serialises
//! writers no other writer can run while it exists.

use duplex_sdk::sql::Db;
use duplex_sdk::{params, Error, FieldType, Value};

use crate::dialect::{literal, Column, Dialect, Look};

pub struct Sqlite;

/// The field type of a SQLite declared column type. The host's sql capability types values by
/// the same rules, so what discovery says is what reads return.
pub fn field_type(decl: &str) -> FieldType {
    let d = decl.to_ascii_uppercase();
    let has = |s: &str| d.contains(s);
    if has("BOOL") {
        FieldType::Boolean
    } else if has("TIMESTAMP") || has("DATETIME") {
        FieldType::Timestamp
    } else if has("JSON") {
        FieldType::Json
    } else if has("INT") {
        FieldType::Integer
    } else if has("CHAR") || has("CLOB") || has("TEXT") {
        FieldType::Text
    } else if has("BLOB") {
        FieldType::Bytes
    } else if has("REAL") || has("FLOA") || has("DOUB") {
        FieldType::Float
    } else if has("DEC") || has("NUMERIC") {
        FieldType::Decimal
    } else {
        FieldType::Text
    }
}

fn trigger_name(table: &str, suffix: &str) -> String {
    format!("_duplex_{table}_{suffix}")
}

impl Dialect for Sqlite {
    fn log_installed(&self, db: &Db) -> Result<bool, Error> {
        Ok(count_tables(db, "_duplex_changes")? > 0)
    }

    fn version_subquery(&self, table: &str, pk: &str) -> Option<String> {
        Some(format!(
            "(SELECT version FROM _duplex_rows WHERE tbl = {} AND pk = CAST({}.{} AS TEXT))",
            literal(table),
            self.ident(table),
            self.ident(pk)
        ))
    }

    fn ident(&self, name: &str) -> String {
        format!("\"{}\"", name.replace('"', "\"\""))
    }

    fn param(&self, n: usize) -> String {
        format!("?{n}")
    }

    fn tables(&self, db: &Db) -> Result<Vec<String>, Error> {
        let rows = db.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_duplex\\_%' ESCAPE '\\' \
             ORDER BY name",
            &[],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| r.at(0)?.as_text().map(str::to_owned))
            .collect())
    }

    /// Capture is asked about apart: `install_log` runs every cycle here anyway, to clear a
    /// mark a writer left behind, and each question is a local call, not a round trip.
    fn look(&self, db: &Db, table: &str) -> Result<Look, Error> {
        let rows = db.query(
            "SELECT name, type, \"notnull\", pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid",
            params![table],
        )?;
        let mut out = Vec::new();
        for r in rows.iter() {
            let name = r.get("name").and_then(Value::as_text).unwrap_or_default();
            let decl = r.get("type").and_then(Value::as_text).unwrap_or_default();
            let pk = r.get("pk").and_then(Value::as_integer).unwrap_or(0);
            let hidden = r.get("hidden").and_then(Value::as_integer).unwrap_or(0);
            // hidden 1 is a virtual table's hidden column: not part of the record.
            if hidden == 1 {
                continue;
            }
            out.push(Column {
                name: name.to_owned(),
                sql_type: decl.to_owned(),
                field_type: field_type(decl),
                // SQLite lets an INTEGER PRIMARY KEY be omitted on insert; it is still never null.
                nullable: r.get("notnull").and_then(Value::as_integer) == Some(0) && pk == 0,
                pk_position: u32::try_from(pk).unwrap_or(0),
                generated: hidden == 2 || hidden == 3,
                // SQLite stores any value in any column: every column reads as it is stored.
                carry: Default::default(),
            });
        }
        Ok(Look {
            columns: out,
            capture: None,
        })
    }

    fn install_log(&self, db: &Db) -> Result<(), Error> {
        db.execute_script(
            "CREATE TABLE IF NOT EXISTS _duplex_changes (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 tbl TEXT NOT NULL,
                 pk TEXT NOT NULL,
                 op TEXT NOT NULL CHECK (op IN ('I', 'U', 'D')),
                 origin TEXT,
                 changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
             );
             CREATE INDEX IF NOT EXISTS _duplex_changes_tbl ON _duplex_changes (tbl, seq);
             CREATE TABLE IF NOT EXISTS _duplex_rows (
                 tbl TEXT NOT NULL,
                 pk TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 PRIMARY KEY (tbl, pk)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS _duplex_origin (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 origin TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS _duplex_readers (
                 tbl TEXT NOT NULL,
                 reader TEXT NOT NULL,
                 pos TEXT NOT NULL,
                 confirmed TEXT NOT NULL,
                 seen_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
                 PRIMARY KEY (tbl, reader)
             ) WITHOUT ROWID;",
        )?;
        // A mark is only ever visible inside the transaction that made it; one seen here was
        // left by a writer that broke its contract, and would tag people's writes as Duplex's.
        // With a WHERE clause: SQLite empties a table by rewriting it, so a bare DELETE changed
        // the database on every read, and woke every sync watching the file.
        db.execute("DELETE FROM _duplex_origin WHERE id = 1", &[])
            .map(drop)
    }

    fn has_triggers(&self, db: &Db, table: &str) -> Result<bool, Error> {
        let rows = db.query(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1 \
             AND name IN (?2, ?3, ?4)",
            params![
                table,
                trigger_name(table, "ins"),
                trigger_name(table, "upd"),
                trigger_name(table, "del")
            ],
        )?;
        Ok(rows.first().and_then(|r| r.at(0)?.as_integer()) == Some(3))
    }

    fn install_triggers(&self, db: &Db, table: &str, pk: &str) -> Result<(), Error> {
        let t = self.ident(table);
        let tl = literal(table);
        let p = self.ident(pk);
        let origin = "(SELECT origin FROM _duplex_origin WHERE id = 1)";
        let ins = self.ident(&trigger_name(table, "ins"));
        let upd = self.ident(&trigger_name(table, "upd"));
        let del = self.ident(&trigger_name(table, "del"));
        // Inside a trigger, last_insert_rowid() is the seq of the log row the trigger just wrote.
        db.execute_script(&format!(
            "CREATE TRIGGER IF NOT EXISTS {ins} AFTER INSERT ON {t} BEGIN
                 INSERT INTO _duplex_changes (tbl, pk, op, origin) VALUES ({tl}, NEW.{p}, 'I', {origin});
                 INSERT OR REPLACE INTO _duplex_rows (tbl, pk, version) VALUES ({tl}, NEW.{p}, last_insert_rowid());
             END;
             CREATE TRIGGER IF NOT EXISTS {upd} AFTER UPDATE ON {t} BEGIN
                 INSERT INTO _duplex_changes (tbl, pk, op, origin)
                     SELECT {tl}, OLD.{p}, 'D', {origin} WHERE OLD.{p} IS NOT NEW.{p};
                 DELETE FROM _duplex_rows WHERE tbl = {tl} AND pk = OLD.{p} AND OLD.{p} IS NOT NEW.{p};
                 INSERT INTO _duplex_changes (tbl, pk, op, origin)
                     VALUES ({tl}, NEW.{p}, CASE WHEN OLD.{p} IS NOT NEW.{p} THEN 'I' ELSE 'U' END, {origin});
                 INSERT OR REPLACE INTO _duplex_rows (tbl, pk, version) VALUES ({tl}, NEW.{p}, last_insert_rowid());
             END;
             CREATE TRIGGER IF NOT EXISTS {del} AFTER DELETE ON {t} BEGIN
                 INSERT INTO _duplex_changes (tbl, pk, op, origin) VALUES ({tl}, OLD.{p}, 'D', {origin});
                 DELETE FROM _duplex_rows WHERE tbl = {tl} AND pk = OLD.{p};
             END;"
        ))
    }

    fn ago(&self, seconds: u32) -> String {
        format!("strftime('%Y-%m-%d %H:%M:%f', 'now', '-{seconds} seconds')")
    }

    fn remove_triggers(&self, db: &Db, table: &str) -> Result<(), Error> {
        for suffix in ["ins", "upd", "del"] {
            let name = self.ident(&trigger_name(table, suffix));
            db.execute(&format!("DROP TRIGGER IF EXISTS {name}"), &[])?;
        }
        if self.log_exists(db)? {
            db.execute("DELETE FROM _duplex_changes WHERE tbl = ?1", params![table])?;
            db.execute("DELETE FROM _duplex_rows WHERE tbl = ?1", params![table])?;
            // Capture installed before readers were kept has no such table.
            if count_tables(db, "_duplex_readers")? == 1 {
                db.execute("DELETE FROM _duplex_readers WHERE tbl = ?1", params![table])?;
            }
        }
        Ok(())
    }

    fn remove_log(&self, db: &Db) -> Result<(), Error> {
        db.execute_script(
            "DROP TABLE IF EXISTS _duplex_changes;
             DROP TABLE IF EXISTS _duplex_rows;
             DROP TABLE IF EXISTS _duplex_origin;
             DROP TABLE IF EXISTS _duplex_readers;",
        )
    }

    fn mark_origin(&self, db: &Db, origin: &str) -> Result<(), Error> {
        db.execute(
            "INSERT OR REPLACE INTO _duplex_origin (id, origin) VALUES (1, ?1)",
            params![origin],
        )
        .map(drop)
    }

    fn clear_origin(&self, db: &Db) -> Result<(), Error> {
        db.execute("DELETE FROM _duplex_origin", &[]).map(drop)
    }
}

impl Sqlite {
    fn log_exists(&self, db: &Db) -> Result<bool, Error> {
        Ok(count_tables(db, "_duplex_changes")? == 1)
    }
}

/// How many tables are called `name` (0 or 1).
fn count_tables(db: &Db, name: &str) -> Result<i64, Error> {
    let rows = db.query(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![name],
    )?;
    Ok(rows
        .first()
        .and_then(|r| r.at(0)?.as_integer())
        .unwrap_or(0))
}

/// Parses SQLite's `YYYY-MM-DD HH:MM:SS[.fff]` (UTC) into microseconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let mut t = time.trim_end_matches('Z').split(':');
    let hh: i64 = t.next()?.parse().ok()?;
    let mm: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next().unwrap_or("0").parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let whole = sec.trunc() as i64;
    let micros = ((sec - sec.trunc()) * 1e6).round() as i64;
    Some((((days * 24 + hh) * 60 + mm) * 60 + whole) * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sqlite_times_as_utc_micros() {
        assert_eq!(parse_time("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_time("2024-02-29 12:34:56.789"),
            Some(1_709_210_096_789_000)
        );
        assert_eq!(parse_time("nonsense"), None);
    }
}
