//! The Duplex connector for SQL tables.
//!
//! Streams are tables, discovered from the database's own catalogue. Change capture is
//! trigger-based: on first use the connector installs a change log (`_duplex_changes`), where the
//! database has no row version of its own a table of row versions (`_duplex_rows`), and three
//! triggers per table that append to the log, so reading changes never scans a whole table. A cursor is a change-log position. The connector's own
//! writes are tagged with the host's `origin` (see `sqlite.rs` for how), so the host can tell them
//! from people's. `remove-capture` takes it all out again.
//!
//! Everything dialect-specific sits behind [`dialect::Dialect`].

mod cursor;
mod dialect;
mod mysql;
mod postgres;
mod readers;
mod sqlite;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use duplex_sdk::sql::{Db, Dialect as SqlDialect, Row};
use duplex_sdk::{
    register_connector, Capabilities, Change, ChangeBatch, ChangeKind, Connector, CreateOp,
    Current, DeleteOp, Error, Field, FieldType, FieldValue, Info, LookupKey, Stream, UpdateOp,
    Value, Watched, WriteOp, Written,
};

use cursor::Cursor;
use dialect::{count, Column, Dialect, Installed, LogRead, Look};

/// The most ids one `IN (...)` list carries; SQLite allows 32766 parameters, other databases
/// fewer, and long lists plan badly.
const IN_CHUNK: usize = 500;
/// Keys from which a read that runs without a transaction looks rows up in one of its own, for
/// the dialect's lookup setting: fewer are found quickly either way, and the transaction would
/// cost more round trips than the lookup saves.
const MANY_KEYS: usize = 50;
/// About how many bytes of written values are read back after a write in one query (see
/// `SqlConnector::fill_stored`): 500 small records at a time, a few large ones.
const READ_BACK_BYTES: usize = 1 << 20;
/// The alias under which a bulk update joins its table again, for the rows as they were.
const OLD_ROW: &str = "_duplex_old";
/// Attempts at a write call whose transaction the server undid (deadlock, serialization):
/// under concurrent writers on MariaDB, three sometimes were not enough, and the records
/// waited for the host's retry.
const WRITE_ATTEMPTS: u32 = 5;

/// The name under which a row's own version is selected (see [`Dialect::row_version`]).
const VERSION_COLUMN: &str = "_duplex_version";

/// A row as read: its id, its fields and, where the dialect keeps it in the row, its version.
type Record = (String, Vec<FieldValue>, Option<String>);

/// The ids of the records whose rows do not carry their version.
fn unversioned(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter(|(_, _, v)| v.is_none())
        .map(|(id, _, _)| id.clone())
        .collect()
}

/// The connection's config.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The database URL, which the connection's grants must name (`sqlite:///path/to/file.db`).
    url: String,
    /// The tables to offer as streams; all user tables when absent.
    #[serde(default)]
    tables: Option<Vec<String>>,
    /// Change nothing in the database: install no capture, keep no reader position, refuse
    /// writes. Duplex sets it for a dry run, which must leave both databases as they were.
    #[serde(default)]
    read_only: bool,
}

const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "required": ["url"],
  "properties": {
    "url": {"type": "string", "description": "Database URL, granted to the connection: sqlite:///path/file.db"},
    "tables": {"type": "array", "items": {"type": "string"}, "description": "Tables to offer as streams; all user tables when absent"},
    "read_only": {"type": "boolean", "description": "Change nothing in the database (set by Duplex for a dry run): no capture installed, writes refused"}
  }
}"#;

thread_local! {
    /// What this instance has learned about its databases: the shapes of tables, and the tables
    /// whose capture it has seen installed. The host starts a fresh instance for every unit of
    /// work (a cycle), so a schema change is seen by the next one at the latest; meanwhile each
    /// call saves the catalogue's round trip.
    static SEEN: RefCell<Seen> = RefCell::default();
}

/// Keyed by (database URL, table).
#[derive(Default)]
struct Seen {
    tables: HashMap<(String, String), Rc<Table>>,
    captured: HashSet<(String, String)>,
}

pub struct SqlConnector {
    db: Db,
    dialect: Box<dyn Dialect>,
    config: Config,
    /// Whether `_duplex_rows` can be read for versions: false only for a read-only connection
    /// to a database whose capture was never installed (every version is then "0").
    versioned: std::cell::Cell<bool>,
    /// Whether the write under way logs the rows it writes itself (see
    /// [`Dialect::mark_origin_of_batch`]).
    logs_own: std::cell::Cell<bool>,
}

/// A table as the connector works with it.
struct Table {
    name: String,
    columns: Vec<Column>,
    pk: String,
    pk_type: FieldType,
    /// How far capture was installed when the table was looked at, where the same look told.
    capture: Option<Installed>,
}

impl Table {
    fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

impl Connector for SqlConnector {
    type Config = Config;

    fn info() -> Info {
        Info {
            name: "sql".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_schema: CONFIG_SCHEMA.into(),
            capabilities: Capabilities::CHANGE_FEED
                | Capabilities::DELETES_IN_FEED
                | Capabilities::CONDITIONAL_WRITES
                | Capabilities::REALTIME,
        }
    }

    fn open(config: Config) -> Result<Self, Error> {
        let db = Db::open(&config.url)?;
        let dialect: Box<dyn Dialect> = match db.dialect() {
            SqlDialect::Sqlite => Box::new(sqlite::Sqlite),
            SqlDialect::Postgres => Box::new(postgres::Postgres),
            SqlDialect::Mysql => Box::new(mysql::MySql),
        };
        Ok(SqlConnector {
            db,
            dialect,
            config,
            versioned: std::cell::Cell::new(true),
            logs_own: std::cell::Cell::new(false),
        })
    }

    fn check(&mut self) -> Result<(), Error> {
        self.db.query("SELECT 1", &[])?;
        if let Some(tables) = &self.config.tables {
            for t in tables {
                self.table(t)?;
            }
        }
        Ok(())
    }

    fn discover(&mut self) -> Result<Vec<Stream>, Error> {
        let names = match &self.config.tables {
            Some(t) => t.clone(),
            None => self.dialect.tables(&self.db)?,
        };
        let mut streams = Vec::new();
        for name in names {
            let table = match self.table(&name) {
                Ok(t) => t,
                // A table without a usable key cannot be synced, but should not hide the others.
                Err(Error::Permanent(why)) if self.config.tables.is_none() => {
                    duplex_sdk::log::warn(&why);
                    continue;
                }
                Err(e) => return Err(e),
            };
            streams.push(Stream {
                fields: table
                    .columns
                    .iter()
                    .map(|c| Field {
                        name: c.name.clone(),
                        type_: c.field_type,
                        nullable: c.nullable,
                        writable: !c.generated && c.carry.unsupported.is_none(),
                        matchable: !matches!(c.field_type, FieldType::Bytes | FieldType::Json)
                            && c.carry.unsupported.is_none(),
                        allowed: c.carry.allowed.clone(),
                        unsupported: c.carry.unsupported.clone(),
                    })
                    .collect(),
                primary_key: vec![table.pk.clone()],
                name: table.name.clone(),
            });
        }
        Ok(streams)
    }

    fn read(
        &mut self,
        stream: &str,
        origin: &str,
        cursor: Option<&str>,
        max: u32,
    ) -> Result<ChangeBatch, Error> {
        let table = self.table(stream)?;
        let max = max.clamp(1, 10_000);
        let cursor = cursor.map(Cursor::decode).transpose()?;
        let dialect = self.dialect.as_ref();
        let continued = cursor.is_some();
        // Reading on in the log of a server's table whose capture is in place needs no
        // transaction: each statement reads committed rows as the statement starts (READ
        // COMMITTED, as the read's transaction ran), the rows read with the version they carry
        // (PostgreSQL) or apart from it as before (MariaDB, where the transaction made no
        // difference). So a read that finds nothing new is the log's query (with, on
        // PostgreSQL, a count of entries held behind running transactions) and the readers',
        // where it was five statements or six, and one that moved adds the upsert of where it
        // reads, not a transaction around it (a prune still gets one). SQLite reads in a
        // transaction: its versions are read apart from the rows, and the transaction keeps
        // the two together.
        let apart = matches!(cursor, Some(Cursor::Log { .. }))
            && self.db.dialect() != SqlDialect::Sqlite
            && (self.config.read_only || self.capture_in_place(&table));
        let body = |db: &Db| {
            let captured = self.capture(db, &table)?;
            // The log position this read starts from, for the log's readers (see readers.rs).
            let from = match &cursor {
                None if !captured => "0".to_owned(),
                None => self.dialect.log_start(db)?,
                Some(Cursor::Snapshot { log_from, .. }) => log_from.clone(),
                Some(Cursor::Log { pos }) => pos.clone(),
            };
            let batch = match cursor {
                None => self.read_snapshot(db, &table, from.clone(), None, None, max),
                Some(Cursor::Snapshot {
                    log_from,
                    after,
                    left,
                }) => self.read_snapshot(db, &table, log_from, after, left, max),
                Some(Cursor::Log { pos }) if !captured => Ok(ChangeBatch {
                    changes: Vec::new(),
                    next_cursor: Cursor::Log { pos }.encode(),
                    has_more: false,
                    mid_transaction: false,
                    remaining: Some(0),
                }),
                Some(Cursor::Log { pos }) => self.read_log(db, &table, (origin, apart), &pos, max),
            }?;
            let keep = if self.config.read_only {
                None
            } else {
                Some(readers::keep_for(
                    dialect,
                    db,
                    &table.name,
                    origin,
                    &from,
                    continued,
                )?)
            };
            Ok((batch, keep))
        };
        if apart {
            let (batch, keep) = body(&self.db)?;
            match keep.filter(|k| !k.is_empty()) {
                Some(keep) if keep.needs_transaction() => {
                    self.dialect.before_write(&self.db)?;
                    self.db.transaction(|db| keep.apply(dialect, db))?;
                }
                // The reader's row alone: one statement, atomic by itself.
                Some(keep) => keep.apply(dialect, &self.db)?,
                None => {}
            }
            return Ok(batch);
        }
        self.dialect.before_read(&self.db)?;
        self.db.transaction(|db| {
            let (batch, keep) = body(db)?;
            if let Some(keep) = keep {
                keep.apply(dialect, db)?;
            }
            Ok(batch)
        })
    }

    fn write(
        &mut self,
        stream: &str,
        origin: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Written, Error>>, Error> {
        if self.config.read_only {
            return Err(Error::permanent(
                "this connection is read-only (read_only = true): it writes nothing",
            ));
        }
        let table = self.table(stream)?;
        // A deadlock or a serialization failure undoes the whole transaction: nothing of this
        // call was applied, so it starts over, a few times, before it fails as transient (and
        // the host tries again later).
        let mut attempt = 1;
        loop {
            match self.write_once(&table, origin, &ops) {
                Err(Error::Transient(e)) if attempt < WRITE_ATTEMPTS => {
                    duplex_sdk::log::debug(&format!(
                        "write attempt {attempt} of {WRITE_ATTEMPTS} undone ({e}); starting over"
                    ));
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    fn find(&mut self, stream: &str, key: LookupKey) -> Result<Vec<Current>, Error> {
        let table = self.table(stream)?;
        // Versions live in the capture's bookkeeping, so a find may be the first use. The rows
        // and their versions are read in one transaction: read apart, a write committed between
        // the two paired a row's old values with its new version (SQLite keeps versions beside
        // the rows), and a conditional write made on them passed and overwrote that write.
        let (found, mut times) = self.db.transaction(|db| {
            self.capture(db, &table)?;
            if let Some(setting) = self.dialect.lookup_setting() {
                db.execute(setting, &[])?;
            }
            let rows = match &key {
                LookupKey::Ids(ids) => {
                    let ids: Vec<Value> = ids
                        .iter()
                        .map(|id| id_value(&table, id))
                        .collect::<Result<_, _>>()?;
                    self.select_where(db, &table, &table.pk, &ids, false)?
                }
                LookupKey::ByField(m) => {
                    let column = table.column(&m.field).ok_or_else(|| {
                        Error::validation(
                            Some(&m.field),
                            format!("table {} has no column {}", table.name, m.field),
                        )
                    })?;
                    let name = column.name.clone();
                    self.select_where(db, &table, &name, &m.values, m.ignore_case)?
                }
            };
            let found = self.with_versions(db, &table, rows.into_values().collect())?;
            let versions: Vec<(String, String)> = found
                .iter()
                .map(|(id, _, version)| (id.clone(), version.clone()))
                .collect();
            let times = if self.versioned.get() {
                self.dialect.version_times(db, &table.name, &versions)?
            } else {
                HashMap::new()
            };
            Ok((found, times))
        })?;
        Ok(found
            .into_iter()
            .map(|(id, fields, version)| Current {
                version: Some(version),
                changed_at: times.remove(&id),
                id,
                fields,
            })
            .collect())
    }

    /// PostgreSQL: the capture trigger notifies `duplex_changes`; the host listens. SQLite:
    /// the host watches the database's files. MariaDB cannot announce changes, and the host
    /// polls.
    fn watch(&mut self, timeout_ms: u32) -> Result<Watched, Error> {
        if self.db.dialect() == SqlDialect::Mysql {
            return Ok(Watched::Unsupported);
        }
        Ok(if self.db.wait_for_change("duplex_changes", timeout_ms)? {
            Watched::Changed
        } else {
            Watched::Timeout
        })
    }

    fn remove_capture(&mut self, stream: Option<&str>) -> Result<(), Error> {
        let tables = match stream {
            Some(s) => vec![s.to_owned()],
            None => self.all_tables_with_triggers()?,
        };
        // Forgets the tables too: their looks found the capture that is now removed.
        SEEN.with_borrow_mut(|s| {
            s.captured.clear();
            s.tables.clear();
        });
        self.db.transaction(|db| {
            for t in &tables {
                self.dialect.remove_triggers(db, t)?;
            }
            if stream.is_none() {
                self.dialect.remove_log(db)?;
            }
            Ok(())
        })
    }
}

impl SqlConnector {
    /// The table behind a stream, with its single-column primary key.
    fn table(&self, name: &str) -> Result<Rc<Table>, Error> {
        if let Some(allowed) = &self.config.tables {
            if !allowed.iter().any(|t| t == name) {
                return Err(Error::not_found(format!(
                    "stream {name} is not among the tables this connection offers ({})",
                    allowed.join(", ")
                )));
            }
        }
        if name.starts_with("_duplex_") {
            return Err(Error::not_found(format!(
                "{name} is the connector's own bookkeeping, not a stream"
            )));
        }
        let key = (self.config.url.clone(), name.to_owned());
        if let Some(table) = SEEN.with_borrow(|s| s.tables.get(&key).cloned()) {
            return Ok(table);
        }
        let Look { columns, capture } = self.dialect.look(&self.db, name)?;
        if columns.is_empty() {
            return Err(Error::not_found(format!("table {name} does not exist")));
        }
        let pks: Vec<&Column> = columns.iter().filter(|c| c.pk_position > 0).collect();
        let [pk] = pks.as_slice() else {
            return Err(Error::permanent(format!(
                "table {name} needs a single-column primary key to be synced (it has {})",
                pks.len()
            )));
        };
        let (pk, pk_type) = (pk.name.clone(), pk.field_type);
        let table = Rc::new(Table {
            name: name.to_owned(),
            columns,
            pk,
            pk_type,
            capture,
        });
        SEEN.with_borrow_mut(|s| s.tables.insert(key, table.clone()));
        Ok(table)
    }

    fn pk_column<'t>(&self, table: &'t Table) -> &'t Column {
        table
            .column(&table.pk)
            .expect("a table's key is one of its columns")
    }

    /// Makes sure `table`'s changes are captured, and says whether they are: a read-only
    /// connection installs nothing, and reads versions only where capture was installed.
    fn capture(&self, db: &Db, table: &Table) -> Result<bool, Error> {
        if !self.config.read_only {
            self.versioned.set(true);
            self.ensure_capture(db, table)?;
            return Ok(true);
        }
        let installed = match table.capture {
            Some(c) => c.log && c.triggers,
            None => {
                self.dialect.log_installed(db)? && self.dialect.has_triggers(db, &table.name)?
            }
        };
        self.versioned.set(installed);
        Ok(installed)
    }

    /// Whether `table`'s capture is known to be installed and committed, so that
    /// [`Self::ensure_capture`] has nothing to do.
    fn capture_in_place(&self, table: &Table) -> bool {
        let key = (self.config.url.clone(), table.name.clone());
        table.capture.is_some_and(|c| c.complete())
            || SEEN.with_borrow(|s| s.captured.contains(&key))
    }

    fn ensure_capture(&self, db: &Db, table: &Table) -> Result<(), Error> {
        let key = (self.config.url.clone(), table.name.clone());
        if SEEN.with_borrow(|s| s.captured.contains(&key)) {
            return Ok(());
        }
        // The look that found the table ran before any transaction of this instance, so what
        // it found installed was committed.
        if table.capture.is_some_and(|c| c.complete()) {
            SEEN.with_borrow_mut(|s| s.captured.insert(key));
            return Ok(());
        }
        self.dialect.install_log(db)?;
        if self.dialect.has_triggers(db, &table.name)?
            && !self.dialect.triggers_outdated(db, &table.name)?
        {
            // Found installed, so committed by an earlier transaction: safe to remember. Capture
            // installed just now is not remembered, as this transaction may yet roll back.
            SEEN.with_borrow_mut(|s| s.captured.insert(key));
        } else {
            self.dialect.install_triggers(db, &table.name, &table.pk)?;
            duplex_sdk::log::info(&format!("installed change capture on table {}", table.name));
        }
        Ok(())
    }

    fn all_tables_with_triggers(&self) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for t in self.dialect.tables(&self.db)? {
            if self.dialect.has_triggers(&self.db, &t)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// The table's columns and, where the dialect keeps one in the row, its version.
    /// The columns a row is read with: each as it is carried (see `dialect::Carry`); a column
    /// that cannot be carried is never read, so it never stops a sync it is not mapped in.
    fn select_list(&self, table: &Table) -> String {
        self.select_list_of(table, None)
    }

    /// [`Self::select_list`] with each column taken from `alias` (the row a statement
    /// returns, where it names the table twice).
    fn select_list_of(&self, table: &Table, alias: Option<&str>) -> String {
        let mut list = self.columns_of(table, alias);
        let version = match alias {
            Some(a) => self.dialect.row_version().map(|v| format!("{a}.{v}")),
            None => self.dialect.row_version().map(str::to_owned),
        };
        // The version is read by the same statement as the row where the dialect can, so the
        // two always belong together (see `with_versions` for the others).
        let version = version.or_else(|| {
            self.versioned
                .get()
                .then(|| self.dialect.version_subquery(&table.name, &table.pk))
                .flatten()
        });
        list.extend(version.map(|v| format!("{v} AS {VERSION_COLUMN}")));
        list.join(", ")
    }

    /// The carried columns of [`Self::select_list_of`], without the version.
    fn columns_of(&self, table: &Table, alias: Option<&str>) -> Vec<String> {
        table
            .columns
            .iter()
            .filter(|c| c.carry.unsupported.is_none())
            .map(|c| {
                let ident = self.dialect.ident(&c.name);
                let from = match alias {
                    Some(a) => format!("{a}.{ident}"),
                    None => ident.clone(),
                };
                match &c.carry.read {
                    Some(read) => format!("{} AS {ident}", read.replace("{}", &from)),
                    None if alias.is_some() => format!("{from} AS {ident}"),
                    None => ident,
                }
            })
            .collect()
    }

    /// The versions `_duplex_rows` keeps for `ids`; none without capture or without ids.
    fn kept_versions(
        &self,
        db: &Db,
        table: &Table,
        ids: &[String],
    ) -> Result<HashMap<String, String>, Error> {
        if ids.is_empty() || !self.versioned.get() {
            return Ok(HashMap::new());
        }
        self.versions(db, table, ids)
    }

    /// Rows this write's transaction just made, with their versions: it holds them until it
    /// ends, so what its statement returned is what they store, and only the versions kept
    /// apart (`_duplex_rows`, written by the capture's triggers in the same transaction) are
    /// looked up. [`Self::with_versions`] reads such rows again, which a read needs and a
    /// write does not (MariaDB: 1,000 rows read back a cycle in a first load). Where the
    /// write logs its own rows, it logs them here and has their versions from that.
    fn versions_of_made(
        &self,
        db: &Db,
        table: &Table,
        records: Vec<Record>,
    ) -> Result<Vec<(String, Vec<FieldValue>, String)>, Error> {
        // Where the triggers logged the rows, only those whose row does not carry its version
        // are looked up; where the write logs its own, every row is logged.
        let mut versions = if self.logs_own.get() {
            let ids: Vec<String> = records.iter().map(|(id, _, _)| id.clone()).collect();
            self.log_own(db, table, 'I', &ids)?.unwrap_or_default()
        } else {
            self.kept_versions(db, table, &unversioned(&records))?
        };
        Ok(records
            .into_iter()
            .map(|(id, fields, v)| {
                let v = v
                    .or_else(|| versions.remove(&id))
                    .unwrap_or_else(|| "0".into());
                (id, fields, v)
            })
            .collect())
    }

    /// Where the write under way logs the rows it writes itself (see
    /// [`Dialect::mark_origin_of_batch`]), logs those with keys `ids`, which it just created
    /// (`op` 'I'), updated ('U') or deleted ('D'), and returns the versions of those it did not
    /// delete; `None` where the triggers logged them.
    fn log_own(
        &self,
        db: &Db,
        table: &Table,
        op: char,
        ids: &[String],
    ) -> Result<Option<HashMap<String, String>>, Error> {
        if !self.logs_own.get() || ids.is_empty() {
            return Ok(None);
        }
        let versions = self.dialect.log_written(db, &table.name, op, ids)?;
        if let Some(id) = ids
            .iter()
            .find(|id| op != 'D' && !versions.contains_key(*id))
        {
            return Err(Error::permanent(format!(
                "record {id}: written to {}, but the change log has no entry for it",
                table.name
            )));
        }
        Ok(Some(versions))
    }

    /// Records with their versions, looked up in `_duplex_rows` where the rows do not carry
    /// them. A row the capture has no version for yet (written before it was installed) is at
    /// version 0.
    /// Rows with their versions: those read with the row (see `select_list`) as they are, the
    /// others looked up in `_duplex_rows` first and their rows read again after. Read the other
    /// way round, a write committed between the two reads paired a row's old values with its
    /// new version (MariaDB's READ COMMITTED gives each statement its own snapshot), and a
    /// conditional write made on them passed and overwrote that write. A version older than
    /// the values only makes such a write be refused and read again.
    fn with_versions(
        &self,
        db: &Db,
        table: &Table,
        records: Vec<Record>,
    ) -> Result<Vec<(String, Vec<FieldValue>, String)>, Error> {
        let missing = unversioned(&records);
        if missing.is_empty() {
            return Ok(records
                .into_iter()
                .map(|(id, fields, v)| (id, fields, v.unwrap_or_default()))
                .collect());
        }
        let mut versions = self.kept_versions(db, table, &missing)?;
        let ids: Vec<Value> = missing
            .iter()
            .map(|id| id_value(table, id))
            .collect::<Result<_, _>>()?;
        let mut again = self.select_where(db, table, &table.pk, &ids, false)?;
        Ok(records
            .into_iter()
            .filter_map(|(id, fields, v)| match v {
                Some(v) => Some((id, fields, v)),
                // Gone since: it is read as the row is now, which is no row.
                None => {
                    let (_, fields, _) = again.remove(&id)?;
                    let v = versions.remove(&id).unwrap_or_else(|| "0".into());
                    Some((id, fields, v))
                }
            })
            .collect())
    }

    /// A page of the table's rows in key order, after `after`. `left` is how many rows were
    /// left before this page: counted once, when the first page is full (a table that fits
    /// in one page is not counted), so that a long first load can show what remains; rows
    /// made meanwhile are read too, so it is an estimate.
    fn read_snapshot(
        &self,
        db: &Db,
        table: &Table,
        log_from: String,
        after: Option<Value>,
        left: Option<u64>,
        max: u32,
    ) -> Result<ChangeBatch, Error> {
        let pk = self.dialect.ident(&table.pk);
        let t = self.dialect.ident(&table.name);
        let cols = self.select_list(table);
        let rows = match &after {
            None => db.query(
                &format!("SELECT {cols} FROM {t} ORDER BY {pk} LIMIT {max}"),
                &[],
            )?,
            Some(after) => db.query(
                &format!(
                    "SELECT {cols} FROM {t} WHERE {pk} > {} ORDER BY {pk} LIMIT {max}",
                    self.dialect.param_for(1, self.pk_column(table))
                ),
                std::slice::from_ref(after),
            )?,
        };
        let last_key = rows.iter().last().and_then(|r| r.get(&table.pk).cloned());
        let records = ResultColumns::of(table, &rows.columns).records(rows.rows);
        let full = records.len() as u32 >= max;
        let read = records.len() as u64;
        let left = match (left, &after) {
            // The first page's transaction is the snapshot's first: the count sees the rows
            // this page was read from.
            (None, None) if full => {
                let rows = count(db, &format!("SELECT count(*) FROM {t}"), &[])?;
                Some(u64::try_from(rows).unwrap_or(0))
            }
            _ => left,
        }
        .map(|n| n.saturating_sub(read));
        let changes = self
            .with_versions(db, table, records)?
            .into_iter()
            .map(|(id, fields, version)| {
                let mut c = Change::new(id, ChangeKind::Create, fields);
                c.version = Some(version);
                c
            })
            .collect();
        let (next, has_more) = if full {
            (
                Cursor::Snapshot {
                    log_from,
                    after: last_key,
                    left,
                },
                true,
            )
        } else if !self.versioned.get() {
            // Read-only, with no capture installed: there is no log to carry on with.
            (Cursor::Log { pos: log_from }, false)
        } else {
            let waiting = self.dialect.log_read(db, &table.name, None, &log_from, 1)?;
            let more = !waiting.entries.is_empty();
            (Cursor::Log { pos: log_from }, more)
        };
        Ok(ChangeBatch {
            changes,
            next_cursor: next.encode(),
            has_more,
            // A snapshot is read in key order, not by transaction.
            mid_transaction: false,
            // Once the rows are read, what the log holds is not counted.
            remaining: if full { left } else { (!has_more).then_some(0) },
        })
    }

    /// The changes logged after `pos`. A record whose entries in this batch all carry `own`
    /// (the reader's origin) is left out: those are the reader's own writes coming back, and
    /// the host knows what it wrote. One changed by anyone else in between is read in full.
    fn read_log(
        &self,
        db: &Db,
        table: &Table,
        (own, apart): (&str, bool),
        pos: &str,
        max: u32,
    ) -> Result<ChangeBatch, Error> {
        let LogRead {
            entries,
            next,
            more: has_more,
            mid_transaction,
        } = self
            .dialect
            .log_read(db, &table.name, Some(own), pos, max)?;
        // Fold the entries of one record into one change, ordered by its last entry.
        struct Entry {
            last_seq: i64,
            version: String,
            only_own: bool,
            created: bool,
            origin: Option<String>,
            changed_at: Option<i64>,
            /// The batch's last entry of the record is its delete.
            deleted: bool,
        }
        let mut by_id: HashMap<String, Entry> = HashMap::new();
        for e in entries {
            let entry = by_id.entry(e.pk).or_insert(Entry {
                last_seq: e.seq,
                version: String::new(),
                only_own: true,
                created: false,
                origin: None,
                changed_at: None,
                deleted: false,
            });
            entry.last_seq = e.seq;
            entry.version = e.version;
            entry.only_own &= e.origin.as_deref() == Some(own);
            entry.created |= e.op == "I";
            entry.origin = e.origin;
            entry.changed_at = e.changed_at;
            entry.deleted = e.op == "D";
        }
        by_id.retain(|_, e| !e.only_own);
        let ids: Vec<String> = by_id.keys().cloned().collect();
        let id_values: Vec<Value> = ids
            .iter()
            .map(|id| id_value(table, id))
            .collect::<Result<_, _>>()?;
        // The rows are looked up the way the dialect wants lookups of many keys (PostgreSQL:
        // through the index, see `Dialect::lookup_setting`): in the read's transaction, or,
        // for a read without one, in a transaction of their own when there are many.
        let lookup = |db: &Db, setting: Option<&str>| {
            if let Some(setting) = setting {
                db.execute(setting, &[])?;
            }
            let found = self.select_where(db, table, &table.pk, &id_values, false)?;
            self.with_versions(db, table, found.into_values().collect())
        };
        let setting = self.dialect.lookup_setting();
        let rows = match setting {
            Some(_) if !apart => lookup(db, setting)?,
            Some(_) if id_values.len() >= MANY_KEYS => db.transaction(|db| lookup(db, setting))?,
            _ => lookup(db, None)?,
        };
        let mut current: HashMap<String, (Vec<FieldValue>, String)> = rows
            .into_iter()
            .map(|(id, fields, version)| (id, (fields, version)))
            .collect();
        // Rows changed again after this batch's entries are handed over as they are now: their
        // time is their current version's, not the batch's (see `Dialect::version_times`).
        let newer: Vec<(String, String)> = by_id
            .iter()
            .filter_map(|(id, e)| {
                let (_, version) = current.get(id)?;
                (*version != e.version).then(|| (id.clone(), version.clone()))
            })
            .collect();
        let mut newer_times = if newer.is_empty() {
            HashMap::new()
        } else {
            self.dialect.version_times(db, &table.name, &newer)?
        };
        let mut changes: Vec<(i64, Change)> = by_id
            .into_iter()
            .map(|(id, e)| {
                let (fields, version) = match current.remove(&id) {
                    Some((f, v)) => (Some(f), Some(v)),
                    None => (None, None),
                };
                // The fields are the row as it is now, which may be later than this batch; the
                // origin belongs to the batch's last entry, so it only holds when that entry is
                // also the row's latest. A person's later edit must never pass for Duplex's.
                let origin = if version.as_deref() == Some(e.version.as_str()) {
                    e.origin
                } else {
                    None
                };
                let mut c = match fields {
                    Some(fields) => {
                        let kind = if e.created {
                            ChangeKind::Create
                        } else {
                            ChangeKind::Update
                        };
                        Change::new(id, kind, fields)
                    }
                    None => Change::new(id, ChangeKind::Delete, Vec::new()),
                };
                // A newer version whose entry is gone, or a delete after this batch, has no
                // known time: the host counts it as made when it read it, never as the batch's
                // older time.
                c.changed_at = match &version {
                    None if e.deleted => e.changed_at,
                    None => None,
                    Some(v) if *v == e.version => e.changed_at,
                    Some(_) => newer_times.remove(&c.id),
                };
                c.version = version;
                c.origin = origin;
                (e.last_seq, c)
            })
            .collect();
        changes.sort_by_key(|(seq, _)| *seq);
        // What waits behind the batch is counted up to a batch more (a sync's own writes
        // after a bulk write, a few changes made meanwhile); a longer backlog is not (counting
        // it would read it).
        let remaining = if has_more {
            let waiting = self.dialect.log_waiting(db, &table.name, &next, max)?;
            (waiting < u64::from(max)).then_some(waiting)
        } else {
            Some(0)
        };
        Ok(ChangeBatch {
            changes: changes.into_iter().map(|(_, c)| c).collect(),
            next_cursor: Cursor::Log { pos: next }.encode(),
            has_more,
            mid_transaction,
            remaining,
        })
    }

    /// Rows whose `column` is one of `values`, by id.
    fn select_where(
        &self,
        db: &Db,
        table: &Table,
        column: &str,
        values: &[Value],
        ignore_case: bool,
    ) -> Result<BTreeMap<String, Record>, Error> {
        let mut out = BTreeMap::new();
        let t = self.dialect.ident(&table.name);
        let c = self.dialect.ident(column);
        let col = table.column(column).ok_or_else(|| {
            Error::not_found(format!("table {} has no column {column}", table.name))
        })?;
        let cols = self.select_list(table);
        for chunk in values.chunks(IN_CHUNK) {
            let params: Vec<String> = (1..=chunk.len())
                .map(|i| {
                    if ignore_case {
                        format!("lower({})", self.dialect.param(i))
                    } else {
                        self.dialect.param_for(i, col)
                    }
                })
                .collect();
            let lhs = if ignore_case {
                format!("lower(CAST({c} AS {}))", self.dialect.text_type())
            } else {
                c.clone()
            };
            let rows = db.query(
                &format!(
                    "SELECT {cols} FROM {t} WHERE {lhs} IN ({})",
                    params.join(", ")
                ),
                chunk,
            )?;
            let plan = ResultColumns::of(table, &rows.columns);
            for record in plan.records(rows.rows) {
                out.insert(record.0.clone(), record);
            }
        }
        Ok(out)
    }

    fn versions(
        &self,
        db: &Db,
        table: &Table,
        ids: &[String],
    ) -> Result<HashMap<String, String>, Error> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let mut params = vec![Value::Text(table.name.clone())];
            params.extend(chunk.iter().map(|id| Value::Text(id.clone())));
            let marks: Vec<String> = (2..=chunk.len() + 1)
                .map(|i| self.dialect.param(i))
                .collect();
            let rows = db.query(
                &format!(
                    "SELECT pk, version FROM _duplex_rows WHERE tbl = {} AND pk IN ({})",
                    self.dialect.param(1),
                    marks.join(", ")
                ),
                &params,
            )?;
            for r in rows.iter() {
                if let (Some(pk), Some(v)) = (r.get("pk"), r.get("version")) {
                    out.insert(pk.to_plain_string(), v.to_plain_string());
                }
            }
        }
        Ok(out)
    }

    /// The version of one row, `None` when it does not exist (or, where versions live in
    /// `_duplex_rows`, has none yet: version 0).
    fn version_of(&self, db: &Db, table: &Table, id: &str) -> Result<Option<String>, Error> {
        if let Some(expr) = self.dialect.row_version() {
            let rows = db.query(
                &format!(
                    "SELECT {expr} FROM {} WHERE {} = {}",
                    self.dialect.ident(&table.name),
                    self.dialect.ident(&table.pk),
                    self.dialect.param_for(1, self.pk_column(table))
                ),
                &[id_value(table, id)?],
            )?;
            return Ok(rows
                .first()
                .and_then(|r| r.at(0).map(Value::to_plain_string)));
        }
        let v = self.versions(db, table, &[id.to_owned()])?;
        Ok(Some(v.get(id).cloned().unwrap_or_else(|| "0".into())))
    }

    /// The version of a row about to be written under a version check, where versions live in
    /// `_duplex_rows`: the row is locked first (`Dialect::for_update`), so that no edit can
    /// commit between the check and the write. A person's UPDATE takes the row's lock before
    /// its trigger changes the version, and writes run READ COMMITTED (`before_write`), so the
    /// plain read of the version after the lock sees every edit committed before it.
    fn version_to_write(&self, db: &Db, table: &Table, id: &str) -> Result<String, Error> {
        let lock = self.dialect.for_update();
        if !lock.is_empty() {
            db.query(
                &format!(
                    "SELECT 1 FROM {} WHERE {} = {}{lock}",
                    self.dialect.ident(&table.name),
                    self.dialect.ident(&table.pk),
                    self.dialect.param_for(1, self.pk_column(table))
                ),
                &[id_value(table, id)?],
            )?;
        }
        Ok(self.version_of(db, table, id)?.unwrap_or_default())
    }

    /// The rows the updates among `ops` are about to change, as they are: to tell what a
    /// trigger changed with a write (see [`Self::fill_stored`]). One query per `IN_CHUNK`.
    fn before_updates(
        &self,
        db: &Db,
        table: &Table,
        ops: &[WriteOp],
        answered: &BTreeSet<&str>,
    ) -> Result<BTreeMap<String, Vec<FieldValue>>, Error> {
        let ids: Vec<Value> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Update(u) if !answered.contains(u.id.as_str()) => {
                    Some(id_value(table, &u.id))
                }
                _ => None,
            })
            .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        Ok(self
            .select_where(db, table, &table.pk, &ids, false)?
            .into_iter()
            .map(|(id, (_, fields, _))| (id, fields))
            .collect())
    }

    /// What the written rows hold now that they were not told to, read inside the write's
    /// transaction so that defaults, triggers, rounding and truncation are in it: written
    /// fields stored otherwise, and other fields the write changed (against `before`, for
    /// updates) or set (for creates). What the host believes of this side is then what it
    /// stores (issue 13). Only those, so that a write's answer stays small. Rows are read back
    /// about [`READ_BACK_BYTES`] of them at a time (by the size of what was written) and dropped
    /// once compared, so that a batch of large records, which the plugin's memory held once for
    /// the write, is not held twice. A deleted row reads nothing.
    fn fill_stored<'w>(
        &self,
        db: &Db,
        table: &Table,
        written: impl Iterator<Item = (&'w WriteOp, &'w mut Written)>,
        before: &BTreeMap<String, Vec<FieldValue>>,
    ) -> Result<(), Error> {
        let mut written: Vec<(&WriteOp, &mut Written)> = written.collect();
        let bytes: usize = written.iter().map(|(op, _)| op_size(op)).sum();
        let rows = (READ_BACK_BYTES * written.len() / bytes.max(1)).clamp(1, IN_CHUNK);
        for chunk in written.chunks_mut(rows) {
            self.fill_stored_chunk(db, table, chunk, before)?;
        }
        Ok(())
    }

    fn fill_stored_chunk(
        &self,
        db: &Db,
        table: &Table,
        written: &mut [(&WriteOp, &mut Written)],
        before: &BTreeMap<String, Vec<FieldValue>>,
    ) -> Result<(), Error> {
        let ids: Vec<Value> = written
            .iter()
            .map(|(_, w)| id_value(table, &w.id))
            .collect::<Result<_, _>>()?;
        let mut rows = self.select_where(db, table, &table.pk, &ids, false)?;
        for (op, w) in written.iter_mut() {
            let Some((_, now, _)) = rows.remove(&w.id) else {
                continue;
            };
            w.stored = match op {
                WriteOp::Create(c) => stored_otherwise(now, &c.fields, None),
                WriteOp::Update(u) => stored_otherwise(now, &u.fields, before.get(&u.id)),
                WriteOp::Delete(_) => continue,
            };
        }
        Ok(())
    }

    /// One attempt at a write call. Fast path: the whole batch in one transaction without
    /// savepoints, runs of creates as multi-row INSERTs. If an op is refused, all of it is
    /// rolled back and the batch is done again one op at a time, each under a savepoint, so
    /// that the refused op fails alone and the rest succeed.
    fn write_once(
        &self,
        table: &Table,
        origin: &str,
        ops: &[WriteOp],
    ) -> Result<Vec<Result<Written, Error>>, Error> {
        // Capture is in place before the write's transaction begins, not installed inside it:
        // MariaDB commits a transaction at any DDL, which would split the rows written before
        // from those after, and a write that logs its own rows from its log entries.
        self.ensure_capture(&self.db, table)?;
        self.dialect.before_write(&self.db)?;
        let fast = self.db.transaction(|db| {
            let own = self.dialect.mark_origin_of_batch(
                db,
                origin,
                &table.name,
                self.pk_column(table),
                ops.iter().all(|op| matches!(op, WriteOp::Create(_))),
            )?;
            self.logs_own.set(own);
            let before = self.before_updates(db, table, ops, &self.answered_whole(ops))?;
            let (mut results, checked): (Vec<Written>, Vec<bool>) =
                self.apply_all(db, table, ops)?.into_iter().unzip();
            let unchecked = ops
                .iter()
                .zip(results.iter_mut())
                .zip(checked)
                .filter_map(|(written, checked)| (!checked).then_some(written));
            self.fill_stored(db, table, unchecked, &before)?;
            self.dialect.clear_origin(db)?;
            Ok(results)
        });
        self.logs_own.set(false);
        match fast {
            Ok(results) => return Ok(results.into_iter().map(Ok).collect()),
            // Not a refused op: the transaction failed as a whole. Op by op would not help.
            Err(e @ Error::Transient(_)) => return Err(e),
            Err(e) => {
                duplex_sdk::log::debug(&format!("batch refused ({e:?}); writing it op by op"))
            }
        }
        self.dialect.before_write(&self.db)?;
        self.db.transaction(|db| {
            self.dialect.mark_origin(db, origin)?;
            let before = self.before_updates(db, table, ops, &BTreeSet::new())?;
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                self.dialect.savepoint(db, "duplex_op")?;
                let result = self.apply(db, table, op.clone());
                if let Err(e) = &result {
                    if let Err(gone) = self.dialect.rollback_to(db, "duplex_op") {
                        // The server ended the transaction itself (MariaDB does on a deadlock),
                        // undoing the ops before this one too: none of them stands.
                        return Err(Error::Transient(format!(
                            "the transaction was ended by the server ({e:?}; then {gone:?})"
                        )));
                    }
                }
                self.dialect.release(db, "duplex_op")?;
                results.push(result);
            }
            let written = ops
                .iter()
                .zip(results.iter_mut())
                .filter_map(|(op, r)| Some((op, r.as_mut().ok()?)));
            self.fill_stored(db, table, written, &before)?;
            self.dialect.clear_origin(db)?;
            Ok(results)
        })
    }

    /// Applies every op or fails at the first refusal (the fast path of `write`).
    /// Each op's outcome, and whether it already says what was stored (an INSERT that
    /// returned its rows): the others are read back by `fill_stored`.
    fn apply_all(
        &self,
        db: &Db,
        table: &Table,
        ops: &[WriteOp],
    ) -> Result<Vec<(Written, bool)>, Error> {
        let mut out = Vec::with_capacity(ops.len());
        let runs = self.update_runs(ops);
        let mut i = 0;
        while i < ops.len() {
            if let Some(&j) = runs.get(&i) {
                out.extend(self.update_many(db, table, &updates_in(&ops[i..j]))?);
                i = j;
                continue;
            }
            if let WriteOp::Delete(first) = &ops[i] {
                let j = delete_run(ops, i, first);
                if j - i > 1 {
                    let deletes: Vec<&DeleteOp> = ops[i..j]
                        .iter()
                        .filter_map(|o| match o {
                            WriteOp::Delete(d) => Some(d),
                            _ => None,
                        })
                        .collect();
                    out.extend(self.delete_many(db, table, &deletes)?);
                    i = j;
                    continue;
                }
            }
            let WriteOp::Create(first) = &ops[i] else {
                out.push((self.apply(db, table, ops[i].clone())?, false));
                i += 1;
                continue;
            };
            // A run of creates of the same columns goes in one multi-row INSERT, kept under
            // the parameter limits of every dialect.
            let names: Vec<&str> = first.fields.iter().map(|f| f.name.as_str()).collect();
            let per_statement = (30_000 / names.len().max(1)).clamp(1, 1_000);
            let mut j = i;
            while j < ops.len() && j - i < per_statement {
                match &ops[j] {
                    WriteOp::Create(c)
                        if c.fields
                            .iter()
                            .map(|f| f.name.as_str())
                            .eq(names.iter().copied()) =>
                    {
                        j += 1
                    }
                    _ => break,
                }
            }
            // A single create too: the INSERT that returns the row saves reading it back.
            if names.is_empty() {
                out.push((self.apply(db, table, ops[i].clone())?, false));
                i += 1;
                continue;
            }
            let creates: Vec<&CreateOp> = ops[i..j]
                .iter()
                .filter_map(|o| match o {
                    WriteOp::Create(c) => Some(c),
                    _ => None,
                })
                .collect();
            out.extend(self.create_many(db, table, &creates)?);
            i = j;
        }
        Ok(out)
    }

    /// Where the run of updates starting at `i` that one statement can make ends: updates of
    /// the same columns, all conditional or none, of different records, under the parameter
    /// limits of every dialect.
    fn update_run(&self, ops: &[WriteOp], i: usize, first: &UpdateOp) -> usize {
        if first.fields.is_empty() {
            return i + 1;
        }
        let per_statement = (30_000 / (2 * first.fields.len() + 2)).clamp(1, 1_000);
        let mut ids = BTreeSet::new();
        let mut j = i;
        while j < ops.len() && j - i < per_statement {
            match &ops[j] {
                WriteOp::Update(u)
                    if u.if_version.is_some() == first.if_version.is_some()
                        && u.fields.len() == first.fields.len()
                        && u.fields
                            .iter()
                            .zip(&first.fields)
                            .all(|(a, b)| a.name == b.name)
                        && ids.insert(u.id.as_str()) =>
                {
                    j += 1
                }
                _ => break,
            }
        }
        j
    }

    /// Updates records with the same columns in one statement, each row's version checked by
    /// the statement as a single update checks it: `UPDATE .. FROM (VALUES ..)` joined on the
    /// key and the version, returning the rows it changed with their new versions. A record
    /// it did not change (moved or gone) fails the call, and the caller writes op by op, which
    /// tells each refusal apart, exactly as before.
    fn update_many(
        &self,
        db: &Db,
        table: &Table,
        updates: &[&UpdateOp],
    ) -> Result<Vec<(Written, bool)>, Error> {
        for u in updates {
            check_fields(table, &u.fields)?;
            if let Some(f) = u.fields.iter().find(|f| f.name == table.pk) {
                return Err(Error::validation(
                    Some(&f.name),
                    format!("record {}: the primary key cannot be changed", u.id),
                ));
            }
        }
        let Some(version) = self.dialect.row_version() else {
            return self.update_many_checked(db, table, updates);
        };
        let conditional = updates[0].if_version.is_some();
        let columns: Vec<&Column> = updates[0]
            .fields
            .iter()
            .filter_map(|f| table.column(&f.name))
            .collect();
        let pk = self.pk_column(table);
        let mut params = Vec::with_capacity(updates.len() * (columns.len() + 2));
        let mut rows = Vec::with_capacity(updates.len());
        for u in updates {
            let mut marks = Vec::with_capacity(columns.len() + 2);
            params.push(id_value(table, &u.id)?);
            marks.push(self.dialect.param_for(params.len(), pk));
            if let Some(v) = &u.if_version {
                params.push(Value::Text(v.clone()));
                marks.push(format!("{}::text", self.dialect.param(params.len())));
            }
            for (f, col) in u.fields.iter().zip(&columns) {
                params.push(f.value.clone());
                marks.push(self.dialect.param_for(params.len(), col));
            }
            rows.push(format!("({})", marks.join(", ")));
        }
        // The VALUES columns: the key, the expected version, then the written columns.
        let names: Vec<String> = (0..columns.len()).map(|k| format!("c{k}")).collect();
        let mut list = vec!["k".to_owned()];
        if conditional {
            list.push("v".to_owned());
        }
        list.extend(names.iter().cloned());
        let sets: Vec<String> = columns
            .iter()
            .zip(&names)
            .map(|(c, n)| format!("{} = u.{n}", self.dialect.ident(&c.name)))
            .collect();
        let t = self.dialect.ident(&table.name);
        let key = self.dialect.ident(&table.pk);
        let mut filter = format!("{t}.{key} = u.k");
        if conditional {
            filter.push_str(&format!(" AND {t}.{version} = u.v"));
        }
        // A run small enough comes back whole, each row as the write left it and as it was
        // before (the table joined again as `_duplex_old` is read with the statement's
        // snapshot: the row the version check passed on), so that neither `before_updates` nor
        // `fill_stored` reads it (see `answered_whole`).
        let whole = answers_whole(updates.iter().map(|u| op_size_of(&u.fields)));
        let (also, returning) = if whole {
            (
                format!(", {t} AS {OLD_ROW}"),
                format!(
                    "{}, {}",
                    self.select_list_of(table, Some(&t)),
                    self.columns_of(table, Some(OLD_ROW)).join(", ")
                ),
            )
        } else {
            (String::new(), format!("{t}.{key}, {t}.{version}"))
        };
        if whole {
            filter.push_str(&format!(" AND {OLD_ROW}.{key} = {t}.{key}"));
        }
        let sql = format!(
            "UPDATE {t} SET {} FROM (VALUES {}) AS u({}){also} WHERE {filter} RETURNING {returning}",
            sets.join(", "),
            rows.join(", "),
            list.join(", "),
        );
        let returned = db
            .query(&sql, &params)
            .map_err(|e| in_record(e, "an update of many records"))?;
        // The new row's columns and its version (this dialect keeps it in the row), then the
        // old row's columns.
        let new_width = self.columns_of(table, None).len() + 1;
        let told: BTreeMap<&str, &[FieldValue]> = updates
            .iter()
            .map(|u| (u.id.as_str(), u.fields.as_slice()))
            .collect();
        let mut answered: BTreeMap<String, (Option<String>, Vec<FieldValue>)> = if whole {
            let width = new_width.min(returned.columns.len());
            let new_row = ResultColumns::of(table, &returned.columns[..width]);
            let old_row = ResultColumns::of(table, &returned.columns[width..]);
            returned
                .rows
                .into_iter()
                .map(|mut row| {
                    let old = row.split_off(width.min(row.len()));
                    let (id, now, version) = new_row.record(row);
                    let (before, _) = old_row.fields(old);
                    let told = told.get(id.as_str()).copied().unwrap_or_default();
                    (id, (version, stored_otherwise(now, told, Some(&before))))
                })
                .collect()
        } else {
            returned
                .iter()
                .map(|r| {
                    let (id, _, version) = self.returned(r);
                    (id, (version, Vec::new()))
                })
                .collect()
        };
        updates
            .iter()
            .map(|u| match answered.remove(&u.id) {
                Some((version, stored)) => Ok((
                    Written {
                        id: u.id.clone(),
                        version,
                        stored,
                    },
                    whole,
                )),
                None => Err(self.refused(db, table, &u.id, u.if_version.as_deref())),
            })
            .collect()
    }

    /// The ids of the updates among `ops` that `apply_all` will write in runs answered whole
    /// (see [`Self::update_many`]): `before_updates` need not read them. A record updated more
    /// than once in the call is read before all the same, for its other updates.
    fn answered_whole<'o>(&self, ops: &'o [WriteOp]) -> BTreeSet<&'o str> {
        let mut out = BTreeSet::new();
        if self.dialect.row_version().is_none() {
            return out;
        }
        let mut updates: BTreeMap<&str, usize> = BTreeMap::new();
        for u in updates_in(ops) {
            *updates.entry(u.id.as_str()).or_default() += 1;
        }
        for (i, j) in self.update_runs(ops) {
            let run = updates_in(&ops[i..j]);
            if answers_whole(run.iter().map(|u| op_size_of(&u.fields))) {
                out.extend(
                    run.iter()
                        .map(|u| u.id.as_str())
                        .filter(|id| updates.get(id) == Some(&1)),
                );
            }
        }
        out
    }

    /// Where `apply_all` writes runs of updates as one statement each: the start and end of
    /// every run of more than one (see [`Self::update_run`]). Runs of creates and deletes hold
    /// no update, so stepping over them one op at a time finds the same runs.
    fn update_runs(&self, ops: &[WriteOp]) -> BTreeMap<usize, usize> {
        let mut runs = BTreeMap::new();
        let mut i = 0;
        while i < ops.len() {
            if let WriteOp::Update(first) = &ops[i] {
                let j = self.update_run(ops, i, first);
                if j - i > 1 {
                    runs.insert(i, j);
                    i = j;
                    continue;
                }
            }
            i += 1;
        }
        runs
    }

    /// [`Self::update_many`] where versions live in `_duplex_rows` (MariaDB, SQLite): the rows
    /// are locked (`Dialect::for_update`) and their versions checked in one query each, as
    /// [`Self::version_to_write`] does for one, then changed by one `UPDATE .. SET c = CASE
    /// key WHEN .. END WHERE key IN (..)`, whose count of matched rows tells that every one
    /// still exists, and their new versions read in one query.
    fn update_many_checked(
        &self,
        db: &Db,
        table: &Table,
        updates: &[&UpdateOp],
    ) -> Result<Vec<(Written, bool)>, Error> {
        let t = self.dialect.ident(&table.name);
        let key = self.dialect.ident(&table.pk);
        let pk = self.pk_column(table);
        let ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
        if updates[0].if_version.is_some() {
            let expected = updates.iter().map(|u| u.if_version.as_deref());
            self.lock_unmoved(db, table, &ids, expected)?;
        }
        let mut params = Vec::new();
        let mut sets = Vec::with_capacity(updates[0].fields.len());
        for (k, f) in updates[0].fields.iter().enumerate() {
            let column = table.column(&f.name).expect("checked by check_fields");
            let mut whens = Vec::with_capacity(updates.len());
            for u in updates {
                params.push(id_value(table, &u.id)?);
                let when = self.dialect.param_for(params.len(), pk);
                params.push(u.fields[k].value.clone());
                let then = self.dialect.param_for(params.len(), column);
                whens.push(format!("WHEN {when} THEN {then}"));
            }
            sets.push(format!(
                "{} = CASE {key} {} END",
                self.dialect.ident(&f.name),
                whens.join(" ")
            ));
        }
        let filter = self.key_in(table, &ids, &mut params)?;
        let sql = format!("UPDATE {t} SET {} WHERE {filter}", sets.join(", "));
        let changed = db
            .execute(&sql, &params)
            .map_err(|e| in_record(e, "an update of many records"))?;
        if usize::try_from(changed).unwrap_or(usize::MAX) != updates.len() {
            // One is gone: which, the op-by-op retry tells.
            return Err(Error::not_found(format!(
                "{changed} of {} records of {} were there to update",
                updates.len(),
                table.name
            )));
        }
        let mut versions = match self.log_own(db, table, 'U', &ids)? {
            Some(versions) => versions,
            None => self.versions(db, table, &ids)?,
        };
        Ok(updates
            .iter()
            .map(|u| {
                let written = Written {
                    id: u.id.clone(),
                    version: Some(versions.remove(&u.id).unwrap_or_else(|| "0".into())),
                    stored: Vec::new(),
                };
                (written, false)
            })
            .collect())
    }

    /// `key IN (..)` over `ids`, their values added to `params`.
    fn key_in(
        &self,
        table: &Table,
        ids: &[String],
        params: &mut Vec<Value>,
    ) -> Result<String, Error> {
        let pk = self.pk_column(table);
        let mut marks = Vec::with_capacity(ids.len());
        for id in ids {
            params.push(id_value(table, id)?);
            marks.push(self.dialect.param_for(params.len(), pk));
        }
        Ok(format!(
            "{} IN ({})",
            self.dialect.ident(&table.pk),
            marks.join(", ")
        ))
    }

    /// Where versions live in `_duplex_rows`: locks the rows of `ids` (`Dialect::for_update`)
    /// and checks each one's version against the one `expected` of it, in one query, as
    /// [`Self::version_to_write`] does for one. The first that moved refuses them all.
    fn lock_unmoved<'a>(
        &self,
        db: &Db,
        table: &Table,
        ids: &[String],
        expected: impl Iterator<Item = Option<&'a str>>,
    ) -> Result<(), Error> {
        let lock = self.dialect.for_update();
        if !lock.is_empty() {
            let mut params = Vec::with_capacity(ids.len());
            let filter = self.key_in(table, ids, &mut params)?;
            let t = self.dialect.ident(&table.name);
            db.query(&format!("SELECT 1 FROM {t} WHERE {filter}{lock}"), &params)?;
        }
        let now = self.versions(db, table, ids)?;
        for (id, expected) in ids.iter().zip(expected) {
            let now = now.get(id).map_or("0", String::as_str);
            let expected = expected.unwrap_or_default();
            if now != expected {
                return Err(moved(table, id, now, expected));
            }
        }
        Ok(())
    }

    /// Deletes records in one statement, each row's version checked as a single delete checks
    /// it: by the statement where the row carries its version (PostgreSQL: `DELETE .. USING
    /// (VALUES ..)` joined on the key and the version), else for all of them in one query
    /// after locking them (as [`Self::update_many_checked`]). A record the statement did not
    /// delete (moved or gone) fails the call, and the caller writes op by op, which tells each
    /// refusal apart, exactly as before.
    fn delete_many(
        &self,
        db: &Db,
        table: &Table,
        deletes: &[&DeleteOp],
    ) -> Result<Vec<(Written, bool)>, Error> {
        let t = self.dialect.ident(&table.name);
        let key = self.dialect.ident(&table.pk);
        let pk = self.pk_column(table);
        let ids: Vec<String> = deletes.iter().map(|d| d.id.clone()).collect();
        let conditional = deletes[0].if_version.is_some();
        let mut params = Vec::with_capacity(deletes.len() * 2);
        let sql = match self.dialect.row_version() {
            Some(version) if conditional => {
                let mut rows = Vec::with_capacity(deletes.len());
                for d in deletes {
                    params.push(id_value(table, &d.id)?);
                    let k = self.dialect.param_for(params.len(), pk);
                    params.push(Value::Text(d.if_version.clone().unwrap_or_default()));
                    let v = format!("{}::text", self.dialect.param(params.len()));
                    rows.push(format!("({k}, {v})"));
                }
                format!(
                    "DELETE FROM {t} USING (VALUES {}) AS d(k, v) WHERE {t}.{key} = d.k AND {t}.{version} = d.v",
                    rows.join(", ")
                )
            }
            _ => {
                if conditional {
                    let expected = deletes.iter().map(|d| d.if_version.as_deref());
                    self.lock_unmoved(db, table, &ids, expected)?;
                }
                format!(
                    "DELETE FROM {t} WHERE {}",
                    self.key_in(table, &ids, &mut params)?
                )
            }
        };
        let deleted = db
            .execute(&sql, &params)
            .map_err(|e| in_record(e, "a delete of many records"))?;
        if usize::try_from(deleted).unwrap_or(usize::MAX) != deletes.len() {
            // One moved or is gone: which, the op-by-op retry tells.
            return Err(Error::not_found(format!(
                "{deleted} of {} records of {} were there to delete",
                deletes.len(),
                table.name
            )));
        }
        self.log_own(db, table, 'D', &ids)?;
        Ok(deletes
            .iter()
            .map(|d| {
                let written = Written {
                    id: d.id.clone(),
                    version: None,
                    stored: Vec::new(),
                };
                (written, true)
            })
            .collect())
    }

    /// Creates rows of the same columns in one statement; ids come back in VALUES order. Each
    /// with whether its `stored` is already known (the INSERT returned the rows whole).
    fn create_many(
        &self,
        db: &Db,
        table: &Table,
        creates: &[&CreateOp],
    ) -> Result<Vec<(Written, bool)>, Error> {
        for c in creates {
            check_fields(table, &c.fields)?;
        }
        let columns: Vec<&Column> = creates[0]
            .fields
            .iter()
            .filter_map(|f| table.column(&f.name))
            .collect();
        let mut params = Vec::with_capacity(creates.len() * columns.len());
        let mut rows = Vec::with_capacity(creates.len());
        for c in creates {
            let marks: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(k, col)| self.dialect.param_for(params.len() + k + 1, col))
                .collect();
            params.extend(c.fields.iter().map(|f| f.value.clone()));
            rows.push(format!("({})", marks.join(", ")));
        }
        let cols: Vec<String> = columns
            .iter()
            .map(|c| self.dialect.ident(&c.name))
            .collect();
        // Small rows come back whole from the INSERT, which is what they store (defaults,
        // BEFORE triggers, rounding): no read-back query. Large ones are read back in pieces
        // by `fill_stored`, not held twice.
        let whole = answers_whole(creates.iter().map(|c| op_size_of(&c.fields)));
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {} RETURNING {}",
            self.dialect.ident(&table.name),
            cols.join(", "),
            rows.join(", "),
            if whole {
                self.select_list(table)
            } else {
                self.returning(table)
            }
        );
        let returned = db.query(&sql, &params)?;
        let records: Vec<Record> = if whole {
            ResultColumns::of(table, &returned.columns).records(returned.rows)
        } else {
            returned.iter().map(|r| self.returned(r)).collect()
        };
        if records.len() != creates.len() {
            return Err(Error::permanent(
                "the insert returned a key per row it did not make",
            ));
        }
        Ok(self
            .versions_of_made(db, table, records)?
            .into_iter()
            .zip(creates)
            .map(|((id, now, version), c)| {
                let stored = if whole {
                    stored_otherwise(now, &c.fields, None)
                } else {
                    Vec::new()
                };
                let written = Written {
                    version: Some(version),
                    id,
                    stored,
                };
                (written, whole)
            })
            .collect())
    }

    /// What a write returns: the key and, where the row carries it, the new version.
    fn returning(&self, table: &Table) -> String {
        let pk = self.dialect.ident(&table.pk);
        match self.dialect.row_version() {
            Some(v) => format!("{pk}, {v}"),
            None => pk,
        }
    }

    /// The key and version of a row returned by [`Self::returning`].
    fn returned(&self, row: Row<'_>) -> Record {
        let id = row.at(0).map(Value::to_plain_string).unwrap_or_default();
        let version = self
            .dialect
            .row_version()
            .and_then(|_| row.at(1).map(Value::to_plain_string));
        (id, Vec::new(), version)
    }

    fn apply(&self, db: &Db, table: &Table, op: WriteOp) -> Result<Written, Error> {
        match op {
            WriteOp::Create(c) => self.create(db, table, c),
            WriteOp::Update(u) => self.update(db, table, u),
            WriteOp::Delete(d) => self.delete(db, table, d),
        }
    }

    fn create(&self, db: &Db, table: &Table, op: CreateOp) -> Result<Written, Error> {
        check_fields(table, &op.fields)?;
        // check_fields made sure every field is a column.
        let columns: Vec<&Column> = op
            .fields
            .iter()
            .filter_map(|f| table.column(&f.name))
            .collect();
        let sql = self
            .dialect
            .insert_returning(&table.name, &columns, &self.returning(table));
        let values: Vec<Value> = op.fields.into_iter().map(|f| f.value).collect();
        let rows = db
            .query(&sql, &values)
            .map_err(|e| in_record(e, "new record"))?;
        let record = rows
            .first()
            .map(|r| self.returned(r))
            .ok_or_else(|| Error::permanent("the insert returned no primary key"))?;
        let [(id, _, version)] =
            <[_; 1]>::try_from(self.versions_of_made(db, table, vec![record])?)
                .map_err(|_| Error::permanent("the insert returned no primary key"))?;
        Ok(Written {
            stored: Vec::new(),
            id,
            version: Some(version),
        })
    }

    /// The condition that makes a write to record `id` conditional, with `params` (already
    /// holding the write's values) extended by what it needs. Where the row carries its version
    /// the statement checks it itself, atomically; otherwise the version in `_duplex_rows` is
    /// checked first, inside the write's transaction.
    fn guard(
        &self,
        db: &Db,
        table: &Table,
        id: &str,
        expected: Option<&str>,
        params: &mut Vec<Value>,
    ) -> Result<String, Error> {
        params.push(id_value(table, id)?);
        let mut filter = format!(
            "{} = {}",
            self.dialect.ident(&table.pk),
            self.dialect.param_for(params.len(), self.pk_column(table))
        );
        let Some(expected) = expected else {
            return Ok(filter);
        };
        match self.dialect.row_version() {
            Some(expr) => {
                params.push(Value::Text(expected.to_owned()));
                filter.push_str(&format!(
                    " AND {expr} = {}",
                    self.dialect.param(params.len())
                ));
            }
            None => {
                let now = self.version_to_write(db, table, id)?;
                if now != expected {
                    return Err(moved(table, id, &now, expected));
                }
            }
        }
        Ok(filter)
    }

    /// Why a guarded write to record `id` touched no row: it is gone, or (where the statement
    /// checked the version) it changed since it was read.
    fn refused(&self, db: &Db, table: &Table, id: &str, expected: Option<&str>) -> Error {
        if let (Some(expected), Some(_)) = (expected, self.dialect.row_version()) {
            match self.version_of(db, table, id) {
                Ok(Some(now)) => return moved(table, id, &now, expected),
                Ok(None) => {}
                Err(e) => return e,
            }
        }
        Error::not_found(format!("record {id} of {} does not exist", table.name))
    }

    fn update(&self, db: &Db, table: &Table, op: UpdateOp) -> Result<Written, Error> {
        check_fields(table, &op.fields)?;
        if let Some(f) = op.fields.iter().find(|f| f.name == table.pk) {
            return Err(Error::validation(
                Some(&f.name),
                format!("record {}: the primary key cannot be changed", op.id),
            ));
        }
        let t = self.dialect.ident(&table.name);
        let sets: Vec<String> = op
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let column = table.column(&f.name).expect("checked by check_fields");
                format!(
                    "{} = {}",
                    self.dialect.ident(&f.name),
                    self.dialect.param_for(i + 1, column)
                )
            })
            .collect();
        let mut params: Vec<Value> = op.fields.into_iter().map(|f| f.value).collect();
        let expected = op.if_version.as_deref();
        let filter = self.guard(db, table, &op.id, expected, &mut params)?;
        let in_this = |e| in_record(e, &format!("record {}", op.id));
        // Where the row carries its version, the statement returns the new one.
        let (changed, version) = if sets.is_empty() {
            let rows = db.query(
                &format!("SELECT {} FROM {t} WHERE {filter}", self.returning(table)),
                &params,
            )?;
            (
                rows.rows.len(),
                rows.first().and_then(|r| self.returned(r).2),
            )
        } else if self.dialect.row_version().is_some() {
            let rows = db
                .query(
                    &format!(
                        "UPDATE {t} SET {} WHERE {filter} RETURNING {}",
                        sets.join(", "),
                        self.returning(table)
                    ),
                    &params,
                )
                .map_err(in_this)?;
            (
                rows.rows.len(),
                rows.first().and_then(|r| self.returned(r).2),
            )
        } else {
            let sql = format!("UPDATE {t} SET {} WHERE {filter}", sets.join(", "));
            let n = db.execute(&sql, &params).map_err(in_this)?;
            let version = match n {
                0 => None,
                _ => self
                    .log_own(db, table, 'U', std::slice::from_ref(&op.id))?
                    .and_then(|mut v| v.remove(&op.id)),
            };
            (usize::try_from(n).unwrap_or(usize::MAX), version)
        };
        if changed == 0 {
            return Err(self.refused(db, table, &op.id, expected));
        }
        let version = match version {
            Some(v) => v,
            None => self.version_of(db, table, &op.id)?.unwrap_or_default(),
        };
        Ok(Written {
            stored: Vec::new(),
            id: op.id,
            version: Some(version),
        })
    }

    fn delete(&self, db: &Db, table: &Table, op: DeleteOp) -> Result<Written, Error> {
        let mut params = Vec::new();
        let expected = op.if_version.as_deref();
        let filter = self.guard(db, table, &op.id, expected, &mut params)?;
        let changed = db
            .execute(
                &format!(
                    "DELETE FROM {} WHERE {filter}",
                    self.dialect.ident(&table.name)
                ),
                &params,
            )
            .map_err(|e| in_record(e, &format!("record {}", op.id)))?;
        if changed == 0 {
            return Err(self.refused(db, table, &op.id, expected));
        }
        self.log_own(db, table, 'D', std::slice::from_ref(&op.id))?;
        Ok(Written {
            stored: Vec::new(),
            id: op.id,
            version: None,
        })
    }
}

/// Where the run of deletes starting at `i` that one statement can make ends: deletes of
/// different records, all conditional or none, at most [`IN_CHUNK`]. MariaDB turns an IN list
/// of 1,000 values or more into a join with a table of them, and a DELETE planned that way
/// took 630 ms for 1,000 rows where two of 500 take 30.
fn delete_run(ops: &[WriteOp], i: usize, first: &DeleteOp) -> usize {
    let mut ids = BTreeSet::new();
    let mut j = i;
    while j < ops.len() && j - i < IN_CHUNK {
        match &ops[j] {
            WriteOp::Delete(d)
                if d.if_version.is_some() == first.if_version.is_some()
                    && ids.insert(d.id.as_str()) =>
            {
                j += 1
            }
            _ => break,
        }
    }
    j
}

/// The refusal of a conditional write to a record that changed since it was read.
fn moved(table: &Table, id: &str, now: &str, expected: &str) -> Error {
    Error::conflict(format!(
        "record {id} of {} is at version {now}, not {expected}: it changed since it was read",
        table.name
    ))
}

/// A value as its column declares it, where the driver could not tell: MariaDB reports text
/// with a binary collation (its JSON columns, for one) as bytes.
/// What each column of a result selected with [`SqlConnector::select_list`] is to a record,
/// worked out once per result: the columns are not looked up by name for every value, and the
/// values are moved into the records, not cloned one by one.
struct ResultColumns {
    /// Each column's field name and type; none for the version column.
    fields: Vec<Option<(String, Option<FieldType>)>>,
    /// The primary key's column, whose value is the record's id.
    pk: Option<usize>,
}

impl ResultColumns {
    fn of(table: &Table, columns: &[String]) -> ResultColumns {
        ResultColumns {
            fields: columns
                .iter()
                .map(|name| {
                    (name != VERSION_COLUMN)
                        .then(|| (name.clone(), table.column(name).map(|c| c.field_type)))
                })
                .collect(),
            pk: columns.iter().position(|c| *c == table.pk),
        }
    }

    /// The records of `rows`, in order.
    fn records(&self, rows: Vec<Vec<Value>>) -> Vec<Record> {
        rows.into_iter().map(|row| self.record(row)).collect()
    }

    fn record(&self, row: Vec<Value>) -> Record {
        let id = self
            .pk
            .and_then(|i| row.get(i))
            .map(Value::to_plain_string)
            .unwrap_or_default();
        let (fields, version) = self.fields(row);
        (id, fields, version)
    }

    /// A row's fields as a record holds them, and the version among them.
    fn fields(&self, row: Vec<Value>) -> (Vec<FieldValue>, Option<String>) {
        let mut version = None;
        let fields = self
            .fields
            .iter()
            .zip(row)
            .filter_map(|(field, value)| match field {
                Some((name, ty)) => Some(FieldValue::new(name.clone(), shape(value, *ty))),
                None => {
                    // A row with no entry in `_duplex_rows` yet has none (see `with_versions`).
                    if !matches!(value, Value::Null) {
                        version = Some(value.to_plain_string());
                    }
                    None
                }
            })
            .collect();
        (fields, version)
    }
}

fn shape(v: Value, ty: Option<FieldType>) -> Value {
    match (v, ty) {
        (Value::Bytes(b), Some(FieldType::Text)) => match String::from_utf8(b) {
            Ok(s) => Value::Text(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        },
        (Value::Bytes(b), Some(FieldType::Json)) => match String::from_utf8(b) {
            Ok(s) => Value::Json(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        },
        (Value::Text(t), Some(FieldType::Json)) => Value::Json(t),
        (v, _) => v,
    }
}

/// A record id as a value of the primary key's type, so comparisons use the index.
fn id_value(table: &Table, id: &str) -> Result<Value, Error> {
    match table.pk_type {
        FieldType::Integer => id.parse().map(Value::Integer).map_err(|_| {
            Error::validation(
                Some(&table.pk),
                format!(
                    "{id:?} is not a valid id for {}: it takes integers",
                    table.name
                ),
            )
        }),
        _ => Ok(Value::Text(id.to_owned())),
    }
}

/// The updates among `ops`.
fn updates_in(ops: &[WriteOp]) -> Vec<&UpdateOp> {
    ops.iter()
        .filter_map(|o| match o {
            WriteOp::Update(u) => Some(u),
            _ => None,
        })
        .collect()
}

/// Whether a run of writes of these sizes comes back whole from its statement, rather than
/// being read back apart in pieces (see [`SqlConnector::fill_stored`]).
fn answers_whole(sizes: impl Iterator<Item = usize>) -> bool {
    sizes.sum::<usize>() <= READ_BACK_BYTES
}

/// What a row holds now (`now`) that a write did not tell it to: told fields stored otherwise,
/// and others changed since `before` (an update's row as it was) or set (a create).
fn stored_otherwise(
    now: Vec<FieldValue>,
    told: &[FieldValue],
    before: Option<&Vec<FieldValue>>,
) -> Vec<FieldValue> {
    let value_in = |fields: &[FieldValue], name: &str| {
        fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.clone())
    };
    now.into_iter()
        .filter(|f| match value_in(told, &f.name) {
            Some(t) => t != f.value,
            None => before.is_none_or(|b| value_in(b, &f.name).as_ref() != Some(&f.value)),
        })
        .collect()
}

/// About how many bytes an op's values take.
fn op_size(op: &WriteOp) -> usize {
    match op {
        WriteOp::Create(c) => op_size_of(&c.fields),
        WriteOp::Update(u) => op_size_of(&u.fields),
        WriteOp::Delete(_) => 16,
    }
}

fn op_size_of(fields: &[FieldValue]) -> usize {
    fields
        .iter()
        .map(|f| {
            16 + f.name.len()
                + match &f.value {
                    Value::Text(t) | Value::Decimal(t) | Value::Json(t) => t.len(),
                    Value::Bytes(b) => b.len(),
                    _ => 8,
                }
        })
        .sum()
}

/// Checks the fields of a write against the table before any SQL runs, so a value is never
/// stored in a column of another type (SQLite would accept it and corrupt the data quietly).
fn check_fields(table: &Table, fields: &[FieldValue]) -> Result<(), Error> {
    for f in fields {
        let column = table.column(&f.name).ok_or_else(|| {
            Error::validation(
                Some(&f.name),
                format!("table {} has no column {}", table.name, f.name),
            )
        })?;
        if column.generated {
            return Err(Error::validation(
                Some(&f.name),
                format!(
                    "column {} of {} is generated and cannot be written",
                    f.name, table.name
                ),
            ));
        }
        if let Some(why) = &column.carry.unsupported {
            return Err(Error::validation(Some(&f.name), why.clone()));
        }
        if !compatible(column.field_type, &f.value) {
            return Err(Error::validation(
                Some(&f.name),
                format!(
                    "column {} of {} holds {:?} values; {} does not fit",
                    f.name,
                    table.name,
                    column.field_type,
                    describe(&f.value)
                ),
            ));
        }
    }
    Ok(())
}

fn compatible(ty: FieldType, v: &Value) -> bool {
    use FieldType as T;
    match v {
        Value::Null => true,
        Value::Boolean(_) => matches!(ty, T::Boolean | T::Integer),
        Value::Integer(_) => matches!(ty, T::Integer | T::Float | T::Decimal | T::Boolean),
        Value::Float(_) => matches!(ty, T::Float | T::Decimal),
        Value::Decimal(s) => matches!(ty, T::Decimal | T::Float) && is_decimal(s),
        Value::Text(_) => matches!(ty, T::Text | T::Json),
        Value::Bytes(_) => matches!(ty, T::Bytes),
        Value::Timestamp(_) => matches!(ty, T::Timestamp),
        Value::Json(_) => matches!(ty, T::Json | T::Text),
    }
}

fn is_decimal(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    !(int.is_empty() && frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Decimal(d) => format!("decimal {d:?}"),
        Value::Text(t) => format!("text {:?}", t.chars().take(40).collect::<String>()),
        Value::Bytes(b) => format!("{} bytes", b.len()),
        Value::Timestamp(t) => format!("timestamp {t}"),
        Value::Json(_) => "json".into(),
    }
}

/// Adds which record an error is about.
fn in_record(e: Error, what: &str) -> Error {
    match e {
        Error::Validation(mut v) => {
            v.message = format!("{what}: {}", v.message);
            Error::Validation(v)
        }
        Error::Permanent(m) => Error::Permanent(format!("{what}: {m}")),
        Error::NotFound(m) => Error::NotFound(format!("{what}: {m}")),
        other => other,
    }
}

register_connector!(SqlConnector);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_checked_as_exact_text() {
        assert!(is_decimal("-12.50"));
        assert!(is_decimal("3"));
        assert!(is_decimal(".5"));
        assert!(!is_decimal("1e3"));
        assert!(!is_decimal("12,50"));
        assert!(!is_decimal(""));
    }

    #[test]
    fn text_never_goes_into_a_number_column() {
        assert!(!compatible(FieldType::Integer, &Value::Text("12".into())));
        assert!(compatible(FieldType::Decimal, &Value::Integer(12)));
        assert!(compatible(FieldType::Text, &Value::Null));
    }
}
