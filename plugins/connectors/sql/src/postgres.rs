//! PostgreSQL: catalogue through `information_schema`, capture through a row trigger per table.
//!
//! Why the log is read in transaction-id order and not by sequence: a sequence number is taken
//! when a row changes, not when its transaction commits, so a transaction holding position 10
//! can commit after one holding 11, and a reader that moved its cursor to 11 would skip 10 for
//! ever (the gap problem of trigger-based capture). Each entry records its transaction id
//! (`xid8`), and a reader takes only entries of transactions older than the oldest one still
//! running (`pg_snapshot_xmin`): those have all committed or aborted, so every entry they will
//! ever have is visible. The cursor is (transaction id, sequence) and moves only across that
//! finished range, so a late commit is read late, never skipped. A long-running transaction
//! delays the entries of younger ones until it ends.
//!
//! Own writes are tagged with a transaction-local setting (`set_config('duplex.origin', ..,
//! true)`) that the trigger reads.

use duplex_sdk::sql::Db;
use duplex_sdk::{params, Error, FieldType, Value};

use crate::dialect::{entries, literal, Column, Dialect, LogEntry};

pub struct Postgres;

fn field_type(udt: &str) -> FieldType {
    match udt {
        "bool" => FieldType::Boolean,
        "int2" | "int4" | "int8" => FieldType::Integer,
        "float4" | "float8" => FieldType::Float,
        "numeric" => FieldType::Decimal,
        "timestamp" | "timestamptz" => FieldType::Timestamp,
        "json" | "jsonb" => FieldType::Json,
        "bytea" => FieldType::Bytes,
        _ => FieldType::Text,
    }
}

/// The name of a table's capture function.
fn capture_function(table: &str) -> String {
    format!("_duplex_capture_{table}")
}

fn count(db: &Db, sql: &str, params: &[Value]) -> Result<i64, Error> {
    let rows = db.query(sql, params)?;
    Ok(rows
        .first()
        .and_then(|r| r.at(0)?.as_integer())
        .unwrap_or(0))
}

impl Dialect for Postgres {
    fn ident(&self, name: &str) -> String {
        format!("\"{}\"", name.replace('"', "\"\""))
    }

    fn param(&self, n: usize) -> String {
        format!("${n}")
    }

    fn param_for(&self, n: usize, column: &Column) -> String {
        let t = &column.sql_type;
        if t.is_empty() || t.starts_with('_') {
            format!("${n}")
        } else {
            format!("${n}::{t}")
        }
    }

    fn tables(&self, db: &Db) -> Result<Vec<String>, Error> {
        let rows = db.query(
            "SELECT table_name::text AS name FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
             AND table_name NOT LIKE '\\_duplex\\_%' ORDER BY 1",
            &[],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| r.at(0)?.as_text().map(str::to_owned))
            .collect())
    }

    fn columns(&self, db: &Db, table: &str) -> Result<Vec<Column>, Error> {
        let rows = db.query(
            "SELECT c.column_name::text AS name, c.udt_name::text AS udt, c.is_nullable::text AS nullable, \
                    (c.is_generated = 'ALWAYS' OR c.identity_generation = 'ALWAYS') AS generated, \
                    COALESCE((SELECT k.ordinal_position::int8 FROM information_schema.table_constraints t \
                        JOIN information_schema.key_column_usage k ON k.constraint_name = t.constraint_name \
                         AND k.table_schema = t.table_schema AND k.table_name = t.table_name \
                        WHERE t.table_schema = c.table_schema AND t.table_name = c.table_name \
                          AND t.constraint_type = 'PRIMARY KEY' AND k.column_name = c.column_name), 0) AS pk \
             FROM information_schema.columns c \
             WHERE c.table_schema = current_schema() AND c.table_name = $1 ORDER BY c.ordinal_position",
            params![table],
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                let udt = r
                    .get("udt")
                    .and_then(Value::as_text)
                    .unwrap_or_default()
                    .to_owned();
                let pk = r.get("pk").and_then(Value::as_integer).unwrap_or(0);
                Column {
                    name: r
                        .get("name")
                        .and_then(Value::as_text)
                        .unwrap_or_default()
                        .to_owned(),
                    field_type: field_type(&udt),
                    sql_type: udt,
                    nullable: r.get("nullable").and_then(Value::as_text) == Some("YES") && pk == 0,
                    pk_position: u32::try_from(pk).unwrap_or(0),
                    generated: r.get("generated") == Some(&Value::Boolean(true)),
                }
            })
            .collect())
    }

    fn install_log(&self, db: &Db) -> Result<(), Error> {
        if count(db, "SELECT count(*) FROM pg_class WHERE relname = '_duplex_rows' AND relnamespace = current_schema()::regnamespace", &[])? > 0 {
            return Ok(());
        }
        for statement in [
            "CREATE TABLE IF NOT EXISTS _duplex_changes (
                 seq BIGSERIAL PRIMARY KEY,
                 tbl TEXT NOT NULL,
                 pk TEXT NOT NULL,
                 op CHAR(1) NOT NULL CHECK (op IN ('I', 'U', 'D')),
                 origin TEXT,
                 changed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                 xid XID8 NOT NULL DEFAULT pg_current_xact_id()
             )",
            "CREATE INDEX IF NOT EXISTS _duplex_changes_order ON _duplex_changes (tbl, xid, seq)",
            "CREATE TABLE IF NOT EXISTS _duplex_rows (
                 tbl TEXT NOT NULL,
                 pk TEXT NOT NULL,
                 version BIGINT NOT NULL,
                 PRIMARY KEY (tbl, pk)
             )",
        ] {
            db.execute(statement, &[])?;
        }
        Ok(())
    }

    fn has_triggers(&self, db: &Db, table: &str) -> Result<bool, Error> {
        Ok(count(
            db,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(quote_ident($1)) AND tgname = '_duplex_capture'",
            params![table],
        )? == 1)
    }

    fn install_triggers(&self, db: &Db, table: &str, pk: &str) -> Result<(), Error> {
        // A function of its own per table, with the key column written in: no dynamic SQL per
        // row. It also notifies `duplex_changes`, so a realtime reader wakes at once.
        let function = self.ident(&capture_function(table));
        let p = self.ident(pk);
        let tl = literal(table);
        db.execute(
            &format!(
                "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
                 DECLARE
                     o TEXT := NULLIF(current_setting('duplex.origin', true), '');
                     s BIGINT;
                 BEGIN
                     IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.{p} IS DISTINCT FROM NEW.{p}) THEN
                         INSERT INTO _duplex_changes (tbl, pk, op, origin) VALUES ({tl}, OLD.{p}::text, 'D', o);
                         DELETE FROM _duplex_rows WHERE tbl = {tl} AND pk = OLD.{p}::text;
                     END IF;
                     IF TG_OP <> 'DELETE' THEN
                         INSERT INTO _duplex_changes (tbl, pk, op, origin)
                             VALUES ({tl}, NEW.{p}::text,
                                     CASE WHEN TG_OP = 'INSERT' OR OLD.{p} IS DISTINCT FROM NEW.{p} THEN 'I' ELSE 'U' END, o)
                             RETURNING seq INTO s;
                         INSERT INTO _duplex_rows (tbl, pk, version) VALUES ({tl}, NEW.{p}::text, s)
                             ON CONFLICT (tbl, pk) DO UPDATE SET version = EXCLUDED.version;
                     END IF;
                     PERFORM pg_notify('duplex_changes', {tl});
                     RETURN NULL;
                 END $$"
            ),
            &[],
        )?;
        db.execute(
            &format!(
                "CREATE TRIGGER _duplex_capture AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {function}()",
                self.ident(table)
            ),
            &[],
        )
        .map(drop)
    }

    fn remove_triggers(&self, db: &Db, table: &str) -> Result<(), Error> {
        db.execute(
            &format!(
                "DROP TRIGGER IF EXISTS _duplex_capture ON {}",
                self.ident(table)
            ),
            &[],
        )?;
        db.execute(
            &format!(
                "DROP FUNCTION IF EXISTS {}()",
                self.ident(&capture_function(table))
            ),
            &[],
        )?;
        if count(
            db,
            "SELECT count(*) FROM pg_class WHERE relname = '_duplex_changes'",
            &[],
        )? > 0
        {
            db.execute("DELETE FROM _duplex_changes WHERE tbl = $1", params![table])?;
            db.execute("DELETE FROM _duplex_rows WHERE tbl = $1", params![table])?;
        }
        Ok(())
    }

    fn remove_log(&self, db: &Db) -> Result<(), Error> {
        for statement in [
            "DROP TABLE IF EXISTS _duplex_changes",
            "DROP TABLE IF EXISTS _duplex_rows",
        ] {
            db.execute(statement, &[])?;
        }
        Ok(())
    }

    fn mark_origin(&self, db: &Db, origin: &str) -> Result<(), Error> {
        db.query(
            "SELECT set_config('duplex.origin', $1, true)",
            params![origin],
        )
        .map(drop)
    }

    fn clear_origin(&self, db: &Db) -> Result<(), Error> {
        db.query("SELECT set_config('duplex.origin', '', true)", &[])
            .map(drop)
    }

    fn log_start(&self, db: &Db) -> Result<String, Error> {
        let rows = db.query("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])?;
        let xmin = rows
            .first()
            .and_then(|r| r.at(0)?.as_text().map(str::to_owned))
            .unwrap_or_else(|| "0".into());
        // Every transaction at or after xmin may be missing from this snapshot: read them all.
        Ok(format!("{xmin}:-1"))
    }

    fn log_read(
        &self,
        db: &Db,
        table: &str,
        pos: &str,
        max: u32,
    ) -> Result<(Vec<LogEntry>, String, bool), Error> {
        let bad = || {
            Error::permanent(format!(
                "log position {pos:?} is not PostgreSQL's (xid:seq)"
            ))
        };
        let (xid, seq) = pos.split_once(':').ok_or_else(bad)?;
        let seq: i64 = seq.parse().map_err(|_| bad())?;
        let rows = db.query(
            &format!(
                "SELECT seq, pk, op, origin, changed_at, xid::text AS xid FROM _duplex_changes \
                 WHERE tbl = $1 AND (xid, seq) > ($2::xid8, $3) \
                   AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY xid, seq LIMIT {max}"
            ),
            &[
                Value::Text(table.to_owned()),
                Value::Text(xid.to_owned()),
                Value::Integer(seq),
            ],
        )?;
        let next = match rows.iter().last() {
            Some(r) => format!(
                "{}:{}",
                r.get("xid").and_then(Value::as_text).unwrap_or(xid),
                r.get("seq").and_then(Value::as_integer).unwrap_or(seq)
            ),
            None => pos.to_owned(),
        };
        // Entries of transactions still held back behind an older running one are waiting too:
        // say so, so that a caller running until caught up does not stop before them.
        let more = rows.rows.len() as u32 >= max
            || {
                let (x, s) = next.split_once(':').unwrap_or((xid, "0"));
                count(
                db,
                "SELECT count(*) FROM (SELECT 1 FROM _duplex_changes WHERE tbl = $1 AND (xid, seq) > ($2::xid8, $3) LIMIT 1) waiting",
                &[Value::Text(table.to_owned()), Value::Text(x.to_owned()), Value::Integer(s.parse().unwrap_or(seq))],
            )? > 0
            };
        Ok((entries(&rows), next, more))
    }
}
