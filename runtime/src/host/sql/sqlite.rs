//! SQLite behind the `sql` capability.
//!
//! rusqlite is blocking, so every statement runs on tokio's blocking pool; the store's future
//! stays cancellable by the call's wall-clock timeout. When the store is thrown away (a trap, a
//! timeout) the connection's statement is interrupted and the connection closed, which rolls back
//! a transaction left open.
//!
//! Values are typed from the column's declared type, by the same rules the sql connector uses to
//! describe fields (see `plugins/connectors/sql/src/sqlite.rs`): `BOOLEAN` gives booleans,
//! `TIMESTAMP`/`DATETIME` timestamps, `DECIMAL`/`NUMERIC` exact decimals, `JSON` json. Without a
//! declared type a value keeps its storage class.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{ErrorCode, OpenFlags};

use crate::bindings::duplex::plugin::sql::Rows;
use crate::bindings::duplex::plugin::types::{Error, Invalid, Value};
use crate::time;

/// How long a statement waits for another writer's lock before failing as transient.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteConnection {
    conn: Arc<Mutex<rusqlite::Connection>>,
    interrupt: rusqlite::InterruptHandle,
    /// The database file, for change announcements (see `changes`).
    pub path: PathBuf,
}

impl Drop for SqliteConnection {
    fn drop(&mut self) {
        // A statement may still run on the blocking pool after its store was dropped.
        self.interrupt.interrupt();
    }
}

impl SqliteConnection {
    pub async fn open(path: PathBuf) -> Result<SqliteConnection, Error> {
        let file = path.clone();
        let conn = blocking(move || {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = rusqlite::Connection::open_with_flags(&path, flags).map_err(|e| {
                Error::Config(format!(
                    "cannot open SQLite database {}: {e}",
                    path.display()
                ))
            })?;
            conn.busy_timeout(BUSY_TIMEOUT).map_err(to_error)?;
            Ok(conn)
        })
        .await?;
        let interrupt = conn.get_interrupt_handle();
        Ok(SqliteConnection {
            conn: Arc::new(Mutex::new(conn)),
            interrupt,
            path: file,
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let conn = self.conn.clone();
        blocking(move || {
            let guard = conn
                .lock()
                .map_err(|_| Error::Permanent("the connection was poisoned by a panic".into()))?;
            f(&guard)
        })
        .await
    }

    pub async fn query(
        &self,
        statement: String,
        params: Vec<Value>,
        max_rows: u32,
    ) -> Result<Rows, Error> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&statement).map_err(to_error)?;
            let columns: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
            let kinds: Vec<Kind> = stmt
                .columns()
                .iter()
                .map(|c| Kind::of(c.decl_type()))
                .collect();
            let params = to_params(params);
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params.iter()))
                .map_err(to_error)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(to_error)? {
                if out.len() >= max_rows as usize {
                    return Err(Error::Permanent(format!(
                        "the query returned more than {max_rows} rows; page it with LIMIT"
                    )));
                }
                let mut values = Vec::with_capacity(kinds.len());
                for (i, kind) in kinds.iter().enumerate() {
                    values.push(kind.value(row.get_ref(i).map_err(to_error)?));
                }
                out.push(values);
            }
            Ok(Rows { columns, rows: out })
        })
        .await
    }

    pub async fn execute(&self, statement: String, params: Vec<Value>) -> Result<u64, Error> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&statement).map_err(to_error)?;
            let params = to_params(params);
            let n = stmt
                .execute(rusqlite::params_from_iter(params.iter()))
                .map_err(to_error)?;
            Ok(n as u64)
        })
        .await
    }

    pub async fn execute_script(&self, script: String) -> Result<(), Error> {
        self.with(move |conn| conn.execute_batch(&script).map_err(to_error))
            .await
    }

    /// BEGIN IMMEDIATE: takes the write lock at once, so a batch never fails halfway on
    /// SQLITE_BUSY after doing work.
    pub async fn begin(&self) -> Result<(), Error> {
        self.execute_script("BEGIN IMMEDIATE".into()).await
    }

    pub async fn commit(&self) -> Result<(), Error> {
        self.execute_script("COMMIT".into()).await
    }

    pub async fn rollback(&self) -> Result<(), Error> {
        self.execute_script("ROLLBACK".into()).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Permanent(format!("the SQLite worker failed: {e}")))?
}

/// How to type a column's values, from its declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Untyped,
    Boolean,
    Timestamp,
    Json,
    Integer,
    Text,
    Bytes,
    Float,
    Decimal,
}

impl Kind {
    fn of(decl: Option<&str>) -> Kind {
        let Some(decl) = decl else {
            return Kind::Untyped;
        };
        let d = decl.to_ascii_uppercase();
        let has = |s: &str| d.contains(s);
        if has("BOOL") {
            Kind::Boolean
        } else if has("TIMESTAMP") || has("DATETIME") {
            Kind::Timestamp
        } else if has("JSON") {
            Kind::Json
        } else if has("INT") {
            Kind::Integer
        } else if has("CHAR") || has("CLOB") || has("TEXT") {
            Kind::Text
        } else if has("BLOB") {
            Kind::Bytes
        } else if has("REAL") || has("FLOA") || has("DOUB") {
            Kind::Float
        } else if has("DEC") || has("NUMERIC") {
            Kind::Decimal
        } else {
            Kind::Text
        }
    }

    /// The typed value of a stored one. A stored value that does not fit the declared type
    /// (SQLite stores anything anywhere) keeps its storage class rather than being coerced.
    fn value(self, v: ValueRef<'_>) -> Value {
        match (self, v) {
            (_, ValueRef::Null) => Value::Null,
            (Kind::Boolean, ValueRef::Integer(i)) => Value::Boolean(i != 0),
            (Kind::Timestamp, ValueRef::Text(t)) => {
                match std::str::from_utf8(t).ok().and_then(time::parse_sqlite) {
                    Some(ts) => Value::Timestamp(ts),
                    None => raw(v),
                }
            }
            (Kind::Timestamp, ValueRef::Integer(secs)) => {
                Value::Timestamp(secs.saturating_mul(1_000_000))
            }
            (Kind::Json, ValueRef::Text(t)) => match std::str::from_utf8(t) {
                Ok(s) => Value::Json(s.to_owned()),
                Err(_) => raw(v),
            },
            (Kind::Float, ValueRef::Integer(i)) => Value::Float(i as f64),
            (Kind::Decimal, ValueRef::Integer(i)) => Value::Decimal(i.to_string()),
            (Kind::Decimal, ValueRef::Real(f)) => Value::Decimal(format_decimal(f)),
            (Kind::Decimal, ValueRef::Text(t)) => match std::str::from_utf8(t) {
                Ok(s) if is_decimal(s) => Value::Decimal(s.to_owned()),
                _ => raw(v),
            },
            _ => raw(v),
        }
    }
}

fn raw(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::Text(s.to_owned()),
            // Never lossily "fix" text: hand over the bytes as they are.
            Err(_) => Value::Bytes(t.to_vec()),
        },
        ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
    }
}

/// The shortest decimal text that reads back as `f`.
fn format_decimal(f: f64) -> String {
    let s = format!("{f}");
    if s.contains(['e', 'E']) {
        format!("{f:.}")
    } else {
        s
    }
}

fn is_decimal(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    !(int.is_empty() && frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

fn to_params(params: Vec<Value>) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value as S;
    params
        .into_iter()
        .map(|v| match v {
            Value::Null => S::Null,
            Value::Boolean(b) => S::Integer(b.into()),
            Value::Integer(i) => S::Integer(i),
            Value::Float(f) => S::Real(f),
            Value::Decimal(d) | Value::Text(d) | Value::Json(d) => S::Text(d),
            Value::Bytes(b) => S::Blob(b),
            Value::Timestamp(t) => S::Text(time::format_sqlite(t)),
        })
        .collect()
}

fn to_error(e: rusqlite::Error) -> Error {
    let message = e.to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation)
        | Some(ErrorCode::TypeMismatch)
        | Some(ErrorCode::TooBig) => Error::Validation(Invalid {
            field: None,
            message,
        }),
        Some(ErrorCode::DatabaseBusy)
        | Some(ErrorCode::DatabaseLocked)
        | Some(ErrorCode::OperationInterrupted) => Error::Transient(message),
        Some(ErrorCode::ReadOnly)
        | Some(ErrorCode::PermissionDenied)
        | Some(ErrorCode::AuthorizationForStatementDenied) => Error::Auth(message),
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::CannotOpen) => Error::Config(message),
        _ => Error::Permanent(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_values_by_declared_type() {
        assert_eq!(
            Kind::of(Some("BOOLEAN")).value(ValueRef::Integer(1)),
            Value::Boolean(true)
        );
        assert_eq!(
            Kind::of(Some("DECIMAL(10,2)")).value(ValueRef::Text(b"12.50")),
            Value::Decimal("12.50".into())
        );
        assert_eq!(
            Kind::of(Some("TIMESTAMP")).value(ValueRef::Text(b"1970-01-01 00:00:01.5")),
            Value::Timestamp(1_500_000)
        );
        assert_eq!(
            Kind::of(Some("varchar(20)")).value(ValueRef::Text(b"x")),
            Value::Text("x".into())
        );
        assert_eq!(Kind::of(None).value(ValueRef::Real(1.5)), Value::Float(1.5));
    }

    #[test]
    fn keeps_values_that_do_not_fit_their_declared_type() {
        // SQLite happily stores text in an INTEGER column; it must come back as text, unchanged.
        assert_eq!(
            Kind::of(Some("INTEGER")).value(ValueRef::Text(b"twelve")),
            Value::Text("twelve".into())
        );
        assert_eq!(
            Kind::of(Some("TIMESTAMP")).value(ValueRef::Text(b"soon")),
            Value::Text("soon".into())
        );
    }
}
