//! SQL databases through the host's `sql` capability.
//!
//! Only URLs granted to the connection open; any other is refused by the host with
//! `Error::Auth` before it touches anything.
//!
//! ```no_run
//! use duplex_sdk::{params, sql::Db, Error};
//!
//! fn names(url: &str) -> Result<Vec<String>, Error> {
//!     let db = Db::open(url)?;
//!     let rows = db.query("SELECT name FROM customers WHERE id > ?1", params![10])?;
//!     Ok(rows.iter().filter_map(|r| r.get("name")?.as_text().map(str::to_owned)).collect())
//! }
//! ```

use crate::bindings::duplex::plugin::sql;
use crate::{Error, Value};

pub use sql::{Dialect, Rows};

/// The most rows [`Db::query`] returns; more are an error, never a silent truncation. Page with
/// `LIMIT` for more.
pub const DEFAULT_MAX_ROWS: u32 = 100_000;

/// Builds a parameter list: `params![1, "a", None::<i64>]`.
#[macro_export]
macro_rules! params {
    ($($p:expr),* $(,)?) => { &[$($crate::Value::from($p)),*][..] };
}

/// An open database connection. Dropping it rolls back a transaction left open.
pub struct Db {
    conn: sql::Connection,
}

impl Db {
    /// Opens the database at `url`.
    pub fn open(url: &str) -> Result<Db, Error> {
        Ok(Db {
            conn: sql::open(url)?,
        })
    }

    /// The SQL dialect it speaks.
    pub fn dialect(&self) -> Dialect {
        self.conn.dialect()
    }

    /// Runs a query and returns its rows (at most [`DEFAULT_MAX_ROWS`]).
    pub fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, Error> {
        self.conn.query(statement, params, DEFAULT_MAX_ROWS)
    }

    /// Runs a statement and returns how many rows it changed.
    pub fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, Error> {
        self.conn.execute(statement, params)
    }

    /// Runs statements separated by `;`, without parameters.
    pub fn execute_script(&self, script: &str) -> Result<(), Error> {
        self.conn.execute_script(script)
    }

    /// Waits for a notification on `channel` (PostgreSQL), up to `timeout_ms`.
    pub fn wait_for_change(&self, channel: &str, timeout_ms: u32) -> Result<bool, Error> {
        self.conn.wait_for_change(channel, timeout_ms)
    }

    /// Runs `body` in a transaction: committed if it returns `Ok`, rolled back otherwise.
    pub fn transaction<T>(&self, body: impl FnOnce(&Db) -> Result<T, Error>) -> Result<T, Error> {
        self.conn.begin()?;
        match body(self) {
            Ok(v) => {
                self.conn.commit()?;
                Ok(v)
            }
            Err(e) => {
                // The body's error is the one worth reporting; a failed rollback also ends the
                // transaction, and the host rolls back on drop regardless.
                let _ = self.conn.rollback();
                Err(e)
            }
        }
    }
}

/// One row of [`Rows`].
#[derive(Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl<'a> Row<'a> {
    /// The value of the named column.
    pub fn get(&self, column: &str) -> Option<&'a Value> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.values.get(i)
    }
    /// The value at a column position.
    pub fn at(&self, index: usize) -> Option<&'a Value> {
        self.values.get(index)
    }
    /// Column names and values, in select order.
    pub fn fields(&self) -> impl Iterator<Item = (&'a str, &'a Value)> {
        self.columns
            .iter()
            .map(String::as_str)
            .zip(self.values.iter())
    }
}

impl Rows {
    /// The rows, each with named access.
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(|values| Row {
            columns: &self.columns,
            values,
        })
    }
    /// The first row, if any.
    pub fn first(&self) -> Option<Row<'_>> {
        self.iter().next()
    }
}
