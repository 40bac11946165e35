//! PostgreSQL and MariaDB/MySQL behind the `sql` capability, through pooled sqlx connections.
//!
//! One pool per database URL lives as long as the plugin host, so short-lived stores do not pay
//! for a connection each; a plugin's `connection` resource holds one pooled connection. A
//! connection dropped in the middle of a statement or a transaction (a trap, a timeout) is
//! closed rather than returned to the pool, so the server rolls the transaction back and no
//! half-done session is ever reused.
//!
//! Sessions run in UTC, so timestamps without a zone read and write as UTC. Values are typed
//! from the server's column types: integers, numeric/decimal exactly (as decimal text), floats,
//! booleans, text, timestamps with and without zone, json/jsonb, uuid (as text), dates and
//! times (as ISO text), bytea/blob.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use bigdecimal::BigDecimal;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::{Column, ConnectOptions, Row, TypeInfo, ValueRef};
use tokio::sync::Mutex;

use super::redact;
use crate::bindings::duplex::plugin::sql::Rows;
use crate::bindings::duplex::plugin::types::{Error, Invalid, Value};

/// A boxed future, Send: sqlx's executor lifetimes are too general for the compiler to prove
/// an `async fn`'s future Send where wasmtime's host traits need it; boxing at the source does.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Most connections one pool opens.
const POOL_SIZE: u32 = 8;
/// How long to wait for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The host's pools, by URL, and its change sources (see `changes`). They live as long as the
/// host, across the short-lived stores of plugins.
#[derive(Default)]
pub struct Pools {
    pg: Mutex<HashMap<String, PgPool>>,
    my: Mutex<HashMap<String, MySqlPool>>,
    pub changes: super::changes::Changes,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pools")
    }
}

impl Pools {
    pub async fn postgres(&self, url: &str) -> Result<PgPool, Error> {
        let mut pools = self.pg.lock().await;
        if let Some(p) = pools.get(url) {
            return Ok(p.clone());
        }
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("{}: {}", redact(url), clean(&e.to_string(), url))))?
            // Custom plans always: a plugin's statements take long IN lists against tables
            // that grow fast, and a cached generic plan chosen while a table was small turns
            // into a sequential scan per lookup (seen: 1 s for 500 keys in 80,000 rows).
            .options([
                ("timezone", "UTC"),
                ("plan_cache_mode", "force_custom_plan"),
            ]);
        // One plain connection first: a wrong address or password fails at once with its own
        // error, where a pool would retry until its timeout.
        let probe = opts.connect().await.map_err(|e| connect_error(url, e))?;
        let _ = sqlx::Connection::close(probe).await;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(opts);
        pools.insert(url.to_owned(), pool.clone());
        Ok(pool)
    }

    pub async fn mysql(&self, url: &str) -> Result<MySqlPool, Error> {
        let mut pools = self.my.lock().await;
        if let Some(p) = pools.get(url) {
            return Ok(p.clone());
        }
        let url_fixed = url.replacen("mariadb://", "mysql://", 1);
        let opts = MySqlConnectOptions::from_str(&url_fixed)
            .map_err(|e| Error::Config(format!("{}: {}", redact(url), clean(&e.to_string(), url))))?
            .timezone(Some("+00:00".into()));
        let probe = opts.connect().await.map_err(|e| connect_error(url, e))?;
        let _ = sqlx::Connection::close(probe).await;
        let pool = MySqlPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(opts);
        pools.insert(url.to_owned(), pool.clone());
        Ok(pool)
    }
}

/// Removes a URL (with its password) from a driver's message.
fn clean(message: &str, url: &str) -> String {
    message.replace(url, &redact(url))
}

fn connect_error(url: &str, e: sqlx::Error) -> Error {
    let message = format!(
        "cannot connect to {}: {}",
        redact(url),
        clean(&e.to_string(), url)
    );
    match e {
        sqlx::Error::Database(d)
            if d.code().as_deref() == Some("28P01") || d.code().as_deref() == Some("28000") =>
        {
            Error::Auth(message)
        }
        sqlx::Error::Configuration(_) => Error::Config(message),
        _ => Error::Transient(message),
    }
}

fn to_error(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::Database(d) => {
            let message = d.message().to_owned();
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            match d.kind() {
                sqlx::error::ErrorKind::UniqueViolation
                | sqlx::error::ErrorKind::ForeignKeyViolation
                | sqlx::error::ErrorKind::NotNullViolation
                | sqlx::error::ErrorKind::CheckViolation => Error::Validation(Invalid {
                    field: None,
                    message,
                }),
                _ => match code.as_str() {
                    // Serialization failure, deadlock, lock timeout (PostgreSQL; MySQL 1213/1205).
                    "40001" | "40P01" | "55P03" | "1213" | "1205" => Error::Transient(message),
                    // Bad input for a column's type: the record's data is at fault.
                    c if c.starts_with("22") => Error::Validation(Invalid {
                        field: None,
                        message,
                    }),
                    "1264" | "1265" | "1366" | "1292" | "1406" | "1048" | "1062" => {
                        Error::Validation(Invalid {
                            field: None,
                            message,
                        })
                    }
                    c if c.starts_with("28") => Error::Auth(message),
                    _ => Error::Permanent(format!("{message} ({code})")),
                },
            }
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Error::Transient(e.to_string()),
        other => Error::Permanent(other.to_string()),
    }
}

/// One pooled connection held by a plugin.
pub struct ServerConnection<DB: sqlx::Database> {
    conn: PoolConnection<DB>,
    /// The URL it came from (for listening on PostgreSQL).
    pub url: String,
    /// A statement or transaction is under way: if dropped now, close rather than reuse.
    dirty: bool,
}

impl<DB: sqlx::Database> Drop for ServerConnection<DB> {
    fn drop(&mut self) {
        if self.dirty {
            self.conn.close_on_drop();
        }
    }
}

pub type PgConnection = ServerConnection<Postgres>;
pub type MyConnection = ServerConnection<MySql>;

impl<DB: sqlx::Database> ServerConnection<DB> {
    pub fn new(conn: PoolConnection<DB>, url: String) -> Self {
        ServerConnection {
            conn,
            url,
            dirty: false,
        }
    }
}

/// Transaction control and scripts, the same on both.
macro_rules! common {
    ($db:ty) => {
        impl ServerConnection<$db> {
            pub fn execute_script(&mut self, script: String) -> BoxFuture<'_, Result<(), Error>> {
                Box::pin(async move {
                    let was = self.dirty;
                    self.dirty = true;
                    sqlx::Executor::execute(&mut *self.conn, script.as_str())
                        .await
                        .map_err(to_error)?;
                    self.dirty = was;
                    Ok(())
                })
            }

            pub fn begin(&mut self) -> BoxFuture<'_, Result<(), Error>> {
                Box::pin(async move {
                    self.dirty = true;
                    sqlx::Executor::execute(&mut *self.conn, "BEGIN")
                        .await
                        .map_err(to_error)?;
                    Ok(())
                })
            }

            pub fn commit(&mut self) -> BoxFuture<'_, Result<(), Error>> {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *self.conn, "COMMIT")
                        .await
                        .map_err(to_error)?;
                    self.dirty = false;
                    Ok(())
                })
            }

            pub fn rollback(&mut self) -> BoxFuture<'_, Result<(), Error>> {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *self.conn, "ROLLBACK")
                        .await
                        .map_err(to_error)?;
                    self.dirty = false;
                    Ok(())
                })
            }
        }
    };
}
common!(Postgres);
common!(MySql);

/// Statements with parameters: the same on both servers but for how a timestamp binds and how
/// a row's values read.
macro_rules! statements {
    ($db:ty, $row:ty, $value:path, |$t:ident| $timestamp:expr) => {
        impl ServerConnection<$db> {
            fn bind(
                statement: &str,
                params: Vec<Value>,
            ) -> Result<sqlx::query::Query<'_, $db, <$db as sqlx::Database>::Arguments<'_>>, Error>
            {
                let mut q = sqlx::query::<$db>(statement);
                for p in params {
                    q = match p {
                        Value::Null => q.bind(None::<String>),
                        Value::Boolean(b) => q.bind(b),
                        Value::Integer(i) => q.bind(i),
                        Value::Float(f) => q.bind(f),
                        Value::Decimal(d) => q.bind(decimal(&d)?),
                        Value::Text(t) | Value::Json(t) => q.bind(t),
                        Value::Bytes(b) => q.bind(b),
                        Value::Timestamp($t) => q.bind($timestamp),
                    };
                }
                Ok(q)
            }

            pub fn query(
                &mut self,
                statement: String,
                params: Vec<Value>,
                max_rows: u32,
            ) -> BoxFuture<'_, Result<Rows, Error>> {
                Box::pin(async move {
                    let was = self.dirty;
                    self.dirty = true;
                    let q = Self::bind(&statement, params)?;
                    let rows: Vec<$row> = q.fetch_all(&mut *self.conn).await.map_err(to_error)?;
                    self.dirty = was;
                    to_rows(&rows, max_rows, $value)
                })
            }

            pub fn execute(
                &mut self,
                statement: String,
                params: Vec<Value>,
            ) -> BoxFuture<'_, Result<u64, Error>> {
                Box::pin(async move {
                    let was = self.dirty;
                    self.dirty = true;
                    let q = Self::bind(&statement, params)?;
                    let done = q.execute(&mut *self.conn).await.map_err(to_error)?;
                    self.dirty = was;
                    Ok(done.rows_affected())
                })
            }
        }
    };
}
statements!(Postgres, PgRow, pg_value, |t| timestamp(t)?);
statements!(MySql, MySqlRow, my_value, |t| timestamp(t)?.naive_utc());

fn decimal(d: &str) -> Result<BigDecimal, Error> {
    BigDecimal::from_str(d.trim()).map_err(|_| {
        Error::Validation(Invalid {
            field: None,
            message: format!("{d:?} is not a decimal number"),
        })
    })
}

fn timestamp(micros: i64) -> Result<DateTime<Utc>, Error> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| {
        Error::Validation(Invalid {
            field: None,
            message: format!("timestamp {micros} is out of range"),
        })
    })
}

fn to_rows<R: Row>(
    rows: &[R],
    max_rows: u32,
    value: fn(&R, usize) -> Result<Value, Error>,
) -> Result<Rows, Error> {
    if rows.len() > max_rows as usize {
        return Err(Error::Permanent(format!(
            "the query returned more than {max_rows} rows; page it with LIMIT"
        )));
    }
    let columns: Vec<String> = rows
        .first()
        .map(|r| r.columns().iter().map(|c| c.name().to_owned()).collect())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..r.columns().len() {
            values.push(value(r, i)?);
        }
        out.push(values);
    }
    Ok(Rows { columns, rows: out })
}

fn unreadable(column: &str, ty: &str) -> Error {
    Error::Permanent(format!(
        "column {column} has type {ty}, which the sql capability does not read; cast it in the query (for example {column}::text)"
    ))
}

fn decode_err(column: &str, e: sqlx::Error) -> Error {
    Error::Permanent(format!("column {column}: {e}"))
}

fn pg_value(row: &PgRow, i: usize) -> Result<Value, Error> {
    let raw = row.try_get_raw(i).map_err(to_error)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    // Borrowed, not copied: two strings per value were a tenth of reading a row.
    let info = raw.type_info();
    let name = row.columns()[i].name();
    let e = |err| decode_err(name, err);
    Ok(match info.name() {
        "BOOL" => Value::Boolean(row.try_get(i).map_err(e)?),
        "INT2" => Value::Integer(row.try_get::<i16, _>(i).map_err(e)?.into()),
        "INT4" => Value::Integer(row.try_get::<i32, _>(i).map_err(e)?.into()),
        "INT8" => Value::Integer(row.try_get(i).map_err(e)?),
        "FLOAT4" => Value::Float(row.try_get::<f32, _>(i).map_err(e)?.into()),
        "FLOAT8" => Value::Float(row.try_get(i).map_err(e)?),
        "NUMERIC" => Value::Decimal(
            row.try_get::<BigDecimal, _>(i)
                .map_err(e)?
                .normalized()
                .to_plain_string(),
        ),
        "TEXT" | "VARCHAR" | "BPCHAR" | "CHAR" | "NAME" => Value::Text(row.try_get(i).map_err(e)?),
        "TIMESTAMPTZ" => Value::Timestamp(
            row.try_get::<DateTime<Utc>, _>(i)
                .map_err(e)?
                .timestamp_micros(),
        ),
        "TIMESTAMP" => Value::Timestamp(
            row.try_get::<NaiveDateTime, _>(i)
                .map_err(e)?
                .and_utc()
                .timestamp_micros(),
        ),
        "DATE" => Value::Text(row.try_get::<NaiveDate, _>(i).map_err(e)?.to_string()),
        "TIME" => Value::Text(row.try_get::<NaiveTime, _>(i).map_err(e)?.to_string()),
        "UUID" => Value::Text(row.try_get::<uuid::Uuid, _>(i).map_err(e)?.to_string()),
        "JSON" | "JSONB" => Value::Json(
            row.try_get::<serde_json::Value, _>(i)
                .map_err(e)?
                .to_string(),
        ),
        "BYTEA" => Value::Bytes(row.try_get(i).map_err(e)?),
        other => return Err(unreadable(name, other)),
    })
}

fn my_value(row: &MySqlRow, i: usize) -> Result<Value, Error> {
    let raw = row.try_get_raw(i).map_err(to_error)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    // Borrowed, not copied: two strings per value were a tenth of reading a row.
    let info = raw.type_info();
    let name = row.columns()[i].name();
    let e = |err| decode_err(name, err);
    Ok(match info.name() {
        "BOOLEAN" => Value::Boolean(row.try_get(i).map_err(e)?),
        "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" | "YEAR" => {
            Value::Integer(row.try_get(i).map_err(e)?)
        }
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "INT UNSIGNED" | "MEDIUMINT UNSIGNED"
        | "BIGINT UNSIGNED" => {
            let v: u64 = row.try_get(i).map_err(e)?;
            Value::Integer(i64::try_from(v).map_err(|_| {
                Error::Permanent(format!(
                    "column {name}: {v} does not fit a 64-bit signed integer"
                ))
            })?)
        }
        "FLOAT" => Value::Float(row.try_get::<f32, _>(i).map_err(e)?.into()),
        "DOUBLE" => Value::Float(row.try_get(i).map_err(e)?),
        "DECIMAL" => Value::Decimal(
            row.try_get::<BigDecimal, _>(i)
                .map_err(e)?
                .normalized()
                .to_plain_string(),
        ),
        "CHAR" | "VARCHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET" => {
            Value::Text(row.try_get(i).map_err(e)?)
        }
        "JSON" => Value::Json(row.try_get::<String, _>(i).map_err(e)?),
        "DATETIME" => Value::Timestamp(
            row.try_get::<NaiveDateTime, _>(i)
                .map_err(e)?
                .and_utc()
                .timestamp_micros(),
        ),
        "TIMESTAMP" => Value::Timestamp(
            row.try_get::<DateTime<Utc>, _>(i)
                .map_err(e)?
                .timestamp_micros(),
        ),
        "DATE" => Value::Text(row.try_get::<NaiveDate, _>(i).map_err(e)?.to_string()),
        "TIME" => Value::Text(row.try_get::<NaiveTime, _>(i).map_err(e)?.to_string()),
        "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BIT" => {
            Value::Bytes(row.try_get(i).map_err(e)?)
        }
        other => return Err(unreadable(name, other)),
    })
}
