//! The seam between the connector's logic and one SQL dialect.
//!
//! Everything that differs between databases (quoting, placeholders, the catalogue, the DDL of
//! change capture and how a session marks its writes as Duplex's) is here; `lib.rs` speaks only
//! through this trait. PostgreSQL and MariaDB add an implementation each.

use duplex_sdk::sql::Db;
use duplex_sdk::{Error, FieldType};

/// One column, as the catalogue describes it.
pub struct Column {
    pub name: String,
    pub field_type: FieldType,
    pub nullable: bool,
    /// Position in the primary key, from 1; 0 when not part of it.
    pub pk_position: u32,
    /// Generated columns cannot be written.
    pub generated: bool,
}

pub trait Dialect {
    /// Quotes an identifier.
    fn ident(&self, name: &str) -> String;
    /// The placeholder for the `n`th parameter, from 1.
    fn param(&self, n: usize) -> String;
    /// User tables, sorted, without the connector's own.
    fn tables(&self, db: &Db) -> Result<Vec<String>, Error>;
    /// The columns of `table`, in table order; an empty list when it does not exist.
    fn columns(&self, db: &Db, table: &str) -> Result<Vec<Column>, Error>;
    /// Creates the change log and its companions if missing. Idempotent.
    fn install_log(&self, db: &Db) -> Result<(), Error>;
    /// Whether `table`'s triggers are installed.
    fn has_triggers(&self, db: &Db, table: &str) -> Result<bool, Error>;
    /// Installs the triggers that record `table`'s changes in the log. Idempotent.
    fn install_triggers(&self, db: &Db, table: &str, pk: &str) -> Result<(), Error>;
    /// Drops `table`'s triggers and forgets its log entries.
    fn remove_triggers(&self, db: &Db, table: &str) -> Result<(), Error>;
    /// Drops the change log and its companions.
    fn remove_log(&self, db: &Db) -> Result<(), Error>;
    /// Marks the rest of the current transaction's writes as made by `origin`; the triggers copy
    /// it into the log.
    fn mark_origin(&self, db: &Db, origin: &str) -> Result<(), Error>;
    /// Ends the mark, before the transaction commits.
    fn clear_origin(&self, db: &Db) -> Result<(), Error>;
    /// An INSERT that returns the new row's primary key.
    fn insert_returning(&self, table: &str, columns: &[String], pk: &str) -> String;
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

/// Quotes `s` as an SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
