//! The seam between the connector's logic and one SQL dialect.
//!
//! Everything that differs between databases (quoting, placeholders, the catalogue, the DDL of
//! change capture and how a session marks its writes as Duplex's) is here; `lib.rs` speaks only
//! through this trait. PostgreSQL and MariaDB add an implementation each.

use std::collections::HashMap;

use duplex_sdk::sql::{Db, Row};
use duplex_sdk::{Error, FieldType, Value};

/// The first column of a query's first row as an integer (a `count(*)`); 0 without one.
pub fn count(db: &Db, sql: &str, params: &[Value]) -> Result<i64, Error> {
    let rows = db.query(sql, params)?;
    Ok(rows
        .first()
        .and_then(|r| r.at(0)?.as_integer())
        .unwrap_or(0))
}

/// One column, as the catalogue describes it.
pub struct Column {
    pub name: String,
    /// The database's name for its type, for casts (`int4`, `numeric`, `jsonb`); may be empty.
    pub sql_type: String,
    pub field_type: FieldType,
    pub nullable: bool,
    /// Position in the primary key, from 1; 0 when not part of it.
    pub pk_position: u32,
    /// Generated columns cannot be written.
    pub generated: bool,
    /// How it is carried, where not as it is stored (see [`Carry`]).
    pub carry: Carry,
}

/// What one look at the catalogue found of a table: its columns and, where the dialect reads
/// it in the same query, how far its change capture is installed.
pub struct Look {
    /// In table order; empty when the table does not exist.
    pub columns: Vec<Column>,
    /// None where the dialect asks about capture separately (`install_log`, `has_triggers`).
    pub capture: Option<Installed>,
}

/// How far a table's change capture was installed when the catalogue was looked at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Installed {
    /// The change log exists (all a read-only connection needs to read versions).
    pub log: bool,
    /// The log and every companion table `install_log` creates exist.
    pub companions: bool,
    /// The table's three capture triggers exist.
    pub triggers: bool,
    /// The triggers are an older connector's, to be installed again.
    pub outdated: bool,
}

impl Installed {
    /// As a look's first row counted it, in its columns `log`, `companions` (of which the
    /// dialect has `companions` in all), `triggers` and, where the dialect has older
    /// triggers to replace, `outdated`.
    pub fn counted(row: Row<'_>, companions: i64) -> Installed {
        let count = |k: &str| row.get(k).and_then(Value::as_integer).unwrap_or(0);
        Installed {
            log: count("log") == 1,
            companions: count("companions") == companions,
            triggers: count("triggers") == 3,
            outdated: count("outdated") > 0,
        }
    }

    /// Nothing left to install.
    pub fn complete(&self) -> bool {
        self.companions && self.triggers && !self.outdated
    }
}

/// How a column whose type the sql capability does not read or write as it is stored is
/// carried anyway (an enum as text, an array as JSON), or why it cannot be: every column of a
/// table is carried or refused up front, so an unmapped column of any type never stops a sync,
/// and a mapped one that cannot be carried is refused by `duplex check`.
#[derive(Debug, Clone, Default)]
pub struct Carry {
    /// How to read it: an SQL expression with `{}` for the quoted column (`{}::text`).
    pub read: Option<String>,
    /// How to write it: an SQL expression with `{}` for the parameter (`{}::mood`).
    pub write: Option<String>,
    /// An enum's values, in order.
    pub allowed: Vec<String>,
    /// Why it cannot be carried: it is never read or written.
    pub unsupported: Option<String>,
}

impl Carry {
    /// Read through `read`, written as a parameter is.
    pub fn read(read: &str) -> Carry {
        Carry {
            read: Some(read.to_owned()),
            ..Carry::default()
        }
    }

    pub fn refused(why: String) -> Carry {
        Carry {
            unsupported: Some(why),
            ..Carry::default()
        }
    }
}

/// One entry of the change log.
pub struct LogEntry {
    pub seq: i64,
    /// The version the row has when this entry is its latest change.
    pub version: String,
    pub pk: String,
    pub op: String,
    pub origin: Option<String>,
    pub changed_at: Option<i64>,
}

/// What one read of the change log found.
pub struct LogRead {
    /// The entries, in commit order.
    pub entries: Vec<LogEntry>,
    /// The position after them.
    pub next: String,
    /// Whether more entries are waiting after `next`.
    pub more: bool,
    /// Whether `next` lies inside one of the database's transactions: the entries after it
    /// begin with the rest of that transaction. False where the log does not record which
    /// transaction made an entry.
    pub mid_transaction: bool,
}

pub trait Dialect {
    /// Quotes an identifier.
    fn ident(&self, name: &str) -> String;
    /// The placeholder for the `n`th parameter, from 1.
    fn param(&self, n: usize) -> String;
    /// The placeholder for the `n`th parameter when it is compared with or stored in `column`
    /// (PostgreSQL casts, since its parameters are strictly typed).
    fn param_for(&self, n: usize, column: &Column) -> String {
        match &column.carry.write {
            Some(w) => w.replace("{}", &self.param(n)),
            None => self.param(n),
        }
    }
    /// An expression over a table's row that changes whenever the row does (PostgreSQL's
    /// `xmin`), or `None` when the capture keeps versions in `_duplex_rows` instead. A version in
    /// the row costs a write nothing and lets a conditional write be one statement.
    fn row_version(&self) -> Option<&'static str> {
        None
    }
    /// An expression selecting a row's version from `_duplex_rows` in the row's own SELECT,
    /// where the dialect can compare its keys there; `None`: looked up apart (see
    /// `with_versions`). MariaDB cannot: `_duplex_rows.pk` and a cast key may differ in
    /// collation, which it refuses to compare.
    fn version_subquery(&self, table: &str, pk: &str) -> Option<String> {
        let _ = (table, pk);
        None
    }
    /// Whether the change log's tables exist, read from the catalogue (a failed query would
    /// end a PostgreSQL transaction).
    fn log_installed(&self, db: &Db) -> Result<bool, Error>;
    /// What makes a SELECT a locking read of the latest committed row, for the version check
    /// of a conditional write where versions live in `_duplex_rows` (see `guard` in lib.rs).
    /// SQLite needs none: a write transaction holds the database's only write lock from its
    /// start, so nothing commits between the check and the write.
    fn for_update(&self) -> &'static str {
        ""
    }
    /// The type to cast a column to for a case-insensitive text comparison.
    fn text_type(&self) -> &'static str {
        "TEXT"
    }
    /// Runs before a read's transaction begins.
    fn before_read(&self, db: &Db) -> Result<(), Error> {
        let _ = db;
        Ok(())
    }
    /// Runs before a write's transaction begins.
    fn before_write(&self, db: &Db) -> Result<(), Error> {
        let _ = db;
        Ok(())
    }
    /// A statement that makes the rest of a transaction look rows up by their keys' index
    /// (see PostgreSQL's); `None` where lookups need nothing.
    fn lookup_setting(&self) -> Option<&'static str> {
        None
    }
    /// The log position from which every change not visible to this transaction is read.
    /// Called inside the read transaction that installs capture and takes the snapshot.
    fn log_start(&self, db: &Db) -> Result<String, Error> {
        let rows = db.query("SELECT COALESCE(MAX(seq), 0) FROM _duplex_changes", &[])?;
        Ok(rows
            .first()
            .and_then(|r| r.at(0)?.as_integer())
            .unwrap_or(0)
            .to_string())
    }
    /// Up to `max` entries of `table`'s log after `pos`, in commit order, the position after
    /// them, and whether more are waiting.
    ///
    /// This default does not know which transaction made an entry: its reads never say they
    /// end inside one.
    ///
    /// A dialect may leave out the entries of records whose entries among the `max` all carry
    /// origin `own` (the reader's own writes, which the reader drops anyway), as long as the
    /// position still moves past them; keeping them is never wrong.
    ///
    /// This default suits databases whose log positions commit in order (SQLite: one writer at
    /// a time, so a position is taken and committed before the next is taken).
    fn log_read(
        &self,
        db: &Db,
        table: &str,
        own: Option<&str>,
        pos: &str,
        max: u32,
    ) -> Result<LogRead, Error> {
        let _ = own;
        let after: i64 = pos
            .parse()
            .map_err(|_| Error::permanent(format!("log position {pos:?} is not this dialect's")))?;
        let rows = db.query(
            &format!(
                "SELECT seq, pk, op, origin, changed_at FROM _duplex_changes WHERE tbl = {} AND seq > {} ORDER BY seq LIMIT {max}",
                self.param(1),
                self.param(2)
            ),
            &[Value::Text(table.to_owned()), Value::Integer(after)],
        )?;
        let entries = entries(&rows);
        let next = entries.last().map_or(after, |e| e.seq);
        let more = entries.len() as u32 >= max;
        Ok(LogRead {
            entries,
            next: next.to_string(),
            more,
            mid_transaction: false,
        })
    }
    /// How many entries of `table`'s log lie after `pos`, counting at most `most`: what a
    /// read that left more waiting says remains, where that is little. Entries, not records,
    /// and the reader's own among them; an estimate.
    fn log_waiting(&self, db: &Db, table: &str, pos: &str, most: u32) -> Result<u64, Error> {
        let after: i64 = pos
            .parse()
            .map_err(|_| Error::permanent(format!("log position {pos:?} is not this dialect's")))?;
        let n = count(
            db,
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM _duplex_changes WHERE tbl = {} AND seq > {} LIMIT {most}) w",
                self.param(1),
                self.param(2)
            ),
            &[Value::Text(table.to_owned()), Value::Integer(after)],
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
    /// When each row's current version was made, by the database's clock, from the log:
    /// `versions` are (pk, version) pairs as reads and finds give them. A version whose entry
    /// was pruned, or a row written before capture was installed, has none.
    ///
    /// A read hands over a row as it is now, which may be newer than the batch's entries, and
    /// `find` hands over rows with no entry at all: without this, a later edit would carry an
    /// earlier time (or none), and last-writer-wins would order it wrongly.
    ///
    /// By default versions are the log's sequence numbers (`_duplex_rows` keeps them), so this
    /// is a lookup by primary key.
    fn version_times(
        &self,
        db: &Db,
        table: &str,
        versions: &[(String, String)],
    ) -> Result<HashMap<String, i64>, Error> {
        let _ = table;
        let mut out = HashMap::new();
        let by_seq: HashMap<i64, &str> = versions
            .iter()
            .filter_map(|(pk, v)| Some((v.parse::<i64>().ok().filter(|s| *s > 0)?, pk.as_str())))
            .collect();
        let seqs: Vec<i64> = by_seq.keys().copied().collect();
        for chunk in seqs.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| self.param(i)).collect();
            let params: Vec<Value> = chunk.iter().map(|s| Value::Integer(*s)).collect();
            let rows = db.query(
                &format!(
                    "SELECT seq, pk, op, origin, changed_at FROM _duplex_changes WHERE seq IN ({})",
                    marks.join(", ")
                ),
                &params,
            )?;
            for e in entries(&rows) {
                if let (Some(pk), Some(at)) = (by_seq.get(&e.seq), e.changed_at) {
                    out.insert((*pk).to_owned(), at);
                }
            }
        }
        Ok(out)
    }
    /// A log position as something that sorts in log order; `None` when it is not this
    /// dialect's. Positions are sequence numbers unless a dialect says otherwise.
    fn log_order(&self, pos: &str) -> Option<(i128, i64)> {
        pos.parse::<i64>().ok().map(|seq| (i128::from(seq), 0))
    }
    /// Whether a reader walks the positions of every table (MariaDB's gap checks), so that the
    /// log may only be pruned below every reader of any table.
    fn shared_positions(&self) -> bool {
        false
    }
    /// An SQL expression for the time `seconds` seconds ago, comparable with
    /// `_duplex_readers.seen_at`.
    fn ago(&self, seconds: u32) -> String;
    /// What makes an INSERT an upsert: on a row with the same `keys`, set `columns` to the
    /// inserted values.
    fn upsert(&self, keys: &[&str], columns: &[&str]) -> String {
        let set: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {}",
            keys.join(", "),
            set.join(", ")
        )
    }
    /// Deletes up to `limit` of the oldest log entries at or before `upto`: of `table`, or of
    /// every table when `None`; returns how many. The newest entry of the log always stays, so
    /// that no database can hand out a position twice (an auto-increment counter restarts from
    /// the highest row on some servers).
    fn prune_log(
        &self,
        db: &Db,
        table: Option<&str>,
        upto: &str,
        limit: u32,
    ) -> Result<u64, Error> {
        let upto = Value::Integer(prune_bound(db, upto)?);
        // A subquery picks the oldest `limit`: SQLite's DELETE takes no LIMIT unless built so.
        match table {
            Some(t) => db.execute(
                &format!(
                    "DELETE FROM _duplex_changes WHERE seq IN (SELECT seq FROM _duplex_changes \
                     WHERE tbl = {} AND seq <= {} ORDER BY seq LIMIT {limit})",
                    self.param(1),
                    self.param(2)
                ),
                &[Value::Text(t.to_owned()), upto],
            ),
            None => db.execute(
                &format!(
                    "DELETE FROM _duplex_changes WHERE seq IN (SELECT seq FROM _duplex_changes \
                     WHERE seq <= {} ORDER BY seq LIMIT {limit})",
                    self.param(1)
                ),
                &[upto],
            ),
        }
    }
    /// User tables, sorted, without the connector's own.
    fn tables(&self, db: &Db) -> Result<Vec<String>, Error>;
    /// The columns of `table` and, where one query can tell, its capture: the catalogue is
    /// looked at once per table per instance, that is once per cycle, so on a server this
    /// saves the round trips of `install_log`'s and `has_triggers`' own questions.
    fn look(&self, db: &Db, table: &str) -> Result<Look, Error>;
    /// Creates the change log and its companions if missing, among them `_duplex_readers`
    /// (`tbl`, `reader`, `pos`, `confirmed`, `seen_at` defaulting to now; see `readers.rs`).
    /// Idempotent.
    fn install_log(&self, db: &Db) -> Result<(), Error>;
    /// Whether `table`'s triggers are installed.
    fn has_triggers(&self, db: &Db, table: &str) -> Result<bool, Error>;
    /// Whether `table`'s installed triggers are an older connector's, to be installed again.
    fn triggers_outdated(&self, db: &Db, table: &str) -> Result<bool, Error> {
        let _ = (db, table);
        Ok(false)
    }
    /// Installs the triggers that record `table`'s changes in the log. Idempotent.
    fn install_triggers(&self, db: &Db, table: &str, pk: &str) -> Result<(), Error>;
    /// Drops `table`'s triggers and forgets its log entries.
    fn remove_triggers(&self, db: &Db, table: &str) -> Result<(), Error>;
    /// Drops the change log and its companions.
    fn remove_log(&self, db: &Db) -> Result<(), Error>;
    /// Marks the rest of the current transaction's writes as made by `origin`; the triggers copy
    /// it into the log.
    fn mark_origin(&self, db: &Db, origin: &str) -> Result<(), Error>;
    /// [`Dialect::mark_origin`] for a transaction that only inserts rows.
    fn mark_origin_of_inserts(&self, db: &Db, origin: &str) -> Result<(), Error> {
        self.mark_origin(db, origin)
    }
    /// Marks a write call's batch, written in one transaction into `table` (keyed by `pk`), as
    /// made by `origin`. Says whether the writer logs the rows it writes itself
    /// ([`Dialect::log_written`]), the table's triggers standing aside for the rest of the
    /// transaction.
    fn mark_origin_of_batch(
        &self,
        db: &Db,
        origin: &str,
        _table: &str,
        _pk: &Column,
        only_inserts: bool,
    ) -> Result<bool, Error> {
        if only_inserts {
            self.mark_origin_of_inserts(db, origin)?;
        } else {
            self.mark_origin(db, origin)?;
        }
        Ok(false)
    }
    /// Logs the rows with keys `ids` that the current transaction created (`op` 'I'), updated
    /// ('U') or deleted ('D') in `table`, after [`Dialect::mark_origin_of_batch`] said the
    /// writer would: the entries the table's triggers would have written, in the same order,
    /// and the rows' versions, which it returns by key (none for deletes, whose versions go).
    fn log_written(
        &self,
        _db: &Db,
        table: &str,
        _op: char,
        _ids: &[String],
    ) -> Result<HashMap<String, String>, Error> {
        Err(Error::permanent(format!(
            "rows written to {table} are logged by its triggers, not by the writer"
        )))
    }
    /// Ends the mark, before the transaction commits.
    fn clear_origin(&self, db: &Db) -> Result<(), Error>;
    /// An INSERT of `columns` that returns `returning` (a select list) of the new row.
    fn insert_returning(&self, table: &str, columns: &[&Column], returning: &str) -> String {
        let t = self.ident(table);
        let p = returning;
        if columns.is_empty() {
            return format!("INSERT INTO {t} DEFAULT VALUES RETURNING {p}");
        }
        let cols: Vec<String> = columns.iter().map(|c| self.ident(&c.name)).collect();
        let params: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| self.param_for(i + 1, c))
            .collect();
        format!(
            "INSERT INTO {t} ({}) VALUES ({}) RETURNING {p}",
            cols.join(", "),
            params.join(", ")
        )
    }
    /// Statement-level savepoints, so one bad row fails alone inside a batch's transaction.
    fn savepoint(&self, db: &Db, name: &str) -> Result<(), Error> {
        db.execute(&format!("SAVEPOINT {name}"), &[]).map(drop)
    }
    fn release(&self, db: &Db, name: &str) -> Result<(), Error> {
        db.execute(&format!("RELEASE SAVEPOINT {name}"), &[])
            .map(drop)
    }
    fn rollback_to(&self, db: &Db, name: &str) -> Result<(), Error> {
        db.execute(&format!("ROLLBACK TO SAVEPOINT {name}"), &[])
            .map(drop)
    }
}

/// Log entries from a query selecting `seq, pk, op, origin, changed_at` and optionally `version`
/// (else the sequence number is the version, as `_duplex_rows` keeps it).
pub fn entries(rows: &duplex_sdk::sql::Rows) -> Vec<LogEntry> {
    rows.iter()
        .map(|r| LogEntry {
            seq: r.get("seq").and_then(Value::as_integer).unwrap_or(0),
            version: r
                .get("version")
                .or_else(|| r.get("seq"))
                .map(Value::to_plain_string)
                .unwrap_or_default(),
            pk: r.get("pk").map(Value::to_plain_string).unwrap_or_default(),
            op: r
                .get("op")
                .and_then(Value::as_text)
                .unwrap_or("U")
                .trim()
                .to_owned(),
            origin: r
                .get("origin")
                .and_then(Value::as_text)
                .filter(|o| !o.is_empty())
                .map(str::to_owned),
            changed_at: match r.get("changed_at") {
                Some(Value::Timestamp(t)) => Some(*t),
                Some(Value::Text(s)) => crate::sqlite::parse_time(s),
                _ => None,
            },
        })
        .collect()
}

/// The sequence number up to which a log of sequence-numbered positions may be pruned for a
/// prune up to `upto`: that, but below the newest entry (see [`Dialect::prune_log`]).
pub fn prune_bound(db: &Db, upto: &str) -> Result<i64, Error> {
    let upto: i64 = upto
        .parse()
        .map_err(|_| Error::permanent(format!("log position {upto:?} is not this dialect's")))?;
    let rows = db.query("SELECT COALESCE(MAX(seq), 0) FROM _duplex_changes", &[])?;
    let newest = rows
        .first()
        .and_then(|r| r.at(0)?.as_integer())
        .unwrap_or(0);
    Ok(upto.min(newest - 1))
}

/// Quotes `s` as an SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
