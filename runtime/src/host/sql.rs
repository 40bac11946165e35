//! The `sql` capability: a plugin opens databases by URL, and only the URLs its connection's
//! grants name. The check runs before any I/O, so an ungranted URL never touches the network or
//! the file system, and the refusal names the URL (without credentials) and the connection.
//!
//! Each backend (SQLite now; PostgreSQL and MariaDB later) sits behind [`Backend`], which turns
//! the database's own column types into typed [`Value`]s and its errors into typed [`Error`]s.

mod changes;
mod server;
mod sqlite;

use std::sync::Arc;

pub use server::Pools;

use wasmtime::component::Resource;

use crate::background::at_home;
use crate::bindings::duplex::plugin::sql::{self as wit, Dialect, Rows};
use crate::bindings::duplex::plugin::types::{Error, Value};
use crate::host::{Caller, Capability, HasHost, HostData, HostView, Shared};

pub const CAPABILITY: Capability = Capability {
    name: "sql",
    interfaces: &["duplex:plugin/sql"],
    offered_to_rules: false,
    refused_ungranted: true,
    gives: "sql: needs grants.sql (the database URLs it may open)",
    granted: |g| !g.sql.is_empty(),
};

/// Most connections one store may hold open at once.
const MAX_OPEN_PER_STORE: usize = 16;

/// Per-store state of the capability: who asks, what they may open, and the host's pools.
#[derive(Debug)]
pub struct SqlState {
    caller: Caller,
    granted: Arc<[String]>,
    shared: Arc<Shared>,
    open: usize,
    /// Who waits for changes through this store: one side of one sync (see `changes`). None:
    /// the connection.
    waiter: Option<String>,
    /// What the store did since [`SqlState::trace_from_here`]: whether a call came down to
    /// one wait the host can make again without the plugin ([`Wait`]).
    trace: Trace,
    /// The database's share of the plugin's calls: see [`SqlState::take_spent`].
    spent: Spent,
}

/// Time a store spent in the host's SQL capability (opening a connection or taking one from
/// the pool, round trips, the database's work, values bound and decoded), and how many calls
/// made it. A wait for changes is not counted: it is waiting, not work.
#[derive(Debug, Default, Clone, Copy)]
pub struct Spent {
    pub time: std::time::Duration,
    pub calls: u32,
}

impl Spent {
    fn add(&mut self, started: std::time::Instant) {
        self.time += started.elapsed();
        self.calls += 1;
    }
}

/// What a store did with its databases since a point: nothing, one wait for changes and then
/// nothing, or anything else.
#[derive(Debug)]
enum Trace {
    Nothing,
    Waited { wait: Wait, changed: bool },
    Other,
}

/// A wait for a database's change announcements that a plugin made, which the host can make
/// again on its behalf, as the same waiter, without an instance or a connection: what an idle
/// realtime sync does between changes (see `PluginSide::watch`).
#[derive(Clone)]
pub struct Wait {
    source: changes::Source,
    waiter: String,
    pool: Option<sqlx::PgPool>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wait of {} for {:?}", self.waiter, self.source)
    }
}

impl Wait {
    /// Waits up to `timeout` as `wait-for-change` would have: true when a change this waiter
    /// has not seen was announced.
    pub async fn again(&self, timeout: std::time::Duration) -> Result<bool, Error> {
        let changes = &self.shared.sql.changes;
        changes
            .wait(
                self.source.clone(),
                &self.waiter,
                timeout,
                self.pool.clone(),
            )
            .await
    }
}

impl SqlState {
    pub fn new(caller: Caller, granted: Arc<[String]>, shared: Arc<Shared>) -> Self {
        SqlState {
            caller,
            granted,
            shared,
            open: 0,
            waiter: None,
            trace: Trace::Nothing,
            spent: Spent::default(),
        }
    }

    /// Names who waits for changes through this store (see `changes`).
    pub fn waiting_as(&mut self, waiter: &str) {
        self.waiter = Some(waiter.to_owned());
    }

    /// Starts tracing what the store does with its databases, for [`SqlState::only_wait`].
    pub fn trace_from_here(&mut self) {
        self.trace = Trace::Nothing;
    }

    /// The wait the store made since [`SqlState::trace_from_here`] and whether it found a
    /// change, when that wait was the last thing it did with a database and the only wait:
    /// statements before it (opening, setting up) are allowed, anything after it is not.
    pub fn only_wait(&self) -> Option<(Wait, bool)> {
        match &self.trace {
            Trace::Waited { wait, changed } => Some((wait.clone(), *changed)),
            Trace::Nothing | Trace::Other => None,
        }
    }

    /// What the store spent in SQL calls since the last time this was asked, which is the
    /// start of the plugin call that asks it: a call's time less this is the plugin's own
    /// work and its values crossing the sandbox's boundary.
    pub fn take_spent(&mut self) -> Spent {
        std::mem::take(&mut self.spent)
    }

    /// Something other than a wait happened: an earlier wait was not the last thing done.
    fn did(&mut self) {
        if matches!(self.trace, Trace::Waited { .. }) {
            self.trace = Trace::Other;
        }
    }

    fn waited(&mut self, wait: Wait, changed: bool) {
        self.trace = match self.trace {
            Trace::Nothing => Trace::Waited { wait, changed },
            Trace::Waited { .. } | Trace::Other => Trace::Other,
        };
    }

    /// Refuses a URL the grants do not name. Runs before anything is opened.
    fn check_granted(&self, url: &str) -> Result<(), Error> {
        if self.granted.iter().any(|g| g == url) {
            return Ok(());
        }
        let granted = if self.granted.is_empty() {
            "none".to_owned()
        } else {
            self.granted
                .iter()
                .map(|g| redact(g))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(Error::Auth(format!(
            "connection {} is not granted sql access to {} (granted: {granted}); add it to the \
             connection's grants.sql to allow it",
            self.caller.connection,
            redact(url)
        )))
    }
}

/// The one place `sql` links into wasmtime. A store whose connection grants no database refuses
/// every `open`.
pub fn link<T: HostData>(linker: &mut wasmtime::component::Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasHost>(linker, T::host)
}

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A SQLite database file. It must exist: a mistyped path must not quietly create an empty
    /// database and sync it.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL server (`postgres://user:pass@host:port/db`).
    Postgres(String),
    /// A MariaDB or MySQL server (`mysql://` or `mariadb://user:pass@host:port/db`).
    MySql(String),
}

/// Parses a database URL.
pub fn parse_url(url: &str) -> Result<Target, Error> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(Error::Config(format!(
                "{url}: the sqlite URL names no file"
            )));
        }
        return Ok(Target::Sqlite(path.into()));
    }
    let scheme = url.split("://").next().unwrap_or_default();
    match scheme {
        "postgres" | "postgresql" => Ok(Target::Postgres(url.to_owned())),
        "mysql" | "mariadb" => Ok(Target::MySql(url.to_owned())),
        _ => Err(Error::Config(format!(
            "{}: not a database URL this host knows (sqlite:///file.db, postgres://..., mysql://..., mariadb://...)",
            redact(url)
        ))),
    }
}

/// A URL with any password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

/// An open database connection: the resource a plugin holds.
pub struct Connection {
    backend: Backend,
}

/// The databases the capability speaks.
enum Backend {
    Sqlite(sqlite::SqliteConnection),
    Postgres(server::PgConnection),
    MySql(server::MyConnection),
}

impl Backend {
    async fn open(target: Target, pools: &Pools) -> Result<Backend, Error> {
        let acquire =
            |e: sqlx::Error| Error::Transient(format!("no database connection available: {e}"));
        match target {
            Target::Sqlite(path) => {
                Ok(Backend::Sqlite(sqlite::SqliteConnection::open(path).await?))
            }
            // A connection the pool opens belongs to the runtime that opened it: not to the
            // background's (see `crate::background::at_home`).
            Target::Postgres(url) => {
                let pool = pools.postgres(&url).await?;
                let conn = at_home(async move { pool.acquire().await })
                    .await
                    .map_err(acquire)?;
                Ok(Backend::Postgres(server::ServerConnection::new(conn, url)))
            }
            Target::MySql(url) => {
                let pool = pools.mysql(&url).await?;
                let conn = at_home(async move { pool.acquire().await })
                    .await
                    .map_err(acquire)?;
                Ok(Backend::MySql(server::ServerConnection::new(conn, url)))
            }
        }
    }
}

/// Runs one method on whichever backend a connection has, counting its time in the store's
/// [`Spent`].
macro_rules! on_backend {
    ($self:ident, $conn:ident, $c:ident => $call:expr) => {{
        let started = std::time::Instant::now();
        let result = match &mut $self.table.get_mut(&$conn)?.backend {
            Backend::Sqlite($c) => $call,
            Backend::Postgres($c) => $call,
            Backend::MySql($c) => $call,
        };
        $self.states.sql.spent.add(started);
        Ok(result)
    }};
}

impl wit::Host for HostView<'_> {
    async fn open(&mut self, url: String) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        self.states.sql.did();
        if let Err(e) = self.states.sql.check_granted(&url) {
            tracing::warn!(plugin = %self.states.sql.caller.plugin, connection = %self.states.sql.caller.connection,
                url = %redact(&url), "refused sql access to a database the connection does not grant");
            return Ok(Err(e));
        }
        if self.states.sql.open >= MAX_OPEN_PER_STORE {
            return Ok(Err(Error::Permanent(format!(
                "a plugin may hold at most {MAX_OPEN_PER_STORE} connections at once"
            ))));
        }
        let target = match parse_url(&url) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        let started = std::time::Instant::now();
        let opened = Backend::open(target, &self.states.sql.shared.sql).await;
        self.states.sql.spent.add(started);
        let backend = match opened {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        self.states.sql.open += 1;
        Ok(Ok(self.table.push(Connection { backend })?))
    }
}

impl wit::HostConnection for HostView<'_> {
    async fn dialect(&mut self, conn: Resource<Connection>) -> wasmtime::Result<Dialect> {
        Ok(match self.table.get(&conn)?.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
            Backend::MySql(_) => Dialect::Mysql,
        })
    }

    async fn query(
        &mut self,
        conn: Resource<Connection>,
        statement: String,
        params: Vec<Value>,
        max_rows: u32,
    ) -> wasmtime::Result<Result<Rows, Error>> {
        self.states.sql.did();
        on_backend!(self, conn, c => c.query(statement, params, max_rows).await)
    }

    async fn execute(
        &mut self,
        conn: Resource<Connection>,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        self.states.sql.did();
        on_backend!(self, conn, c => c.execute(statement, params).await)
    }

    async fn execute_script(
        &mut self,
        conn: Resource<Connection>,
        script: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        self.states.sql.did();
        on_backend!(self, conn, c => c.execute_script(script).await)
    }

    async fn begin(&mut self, conn: Resource<Connection>) -> wasmtime::Result<Result<(), Error>> {
        self.states.sql.did();
        on_backend!(self, conn, c => c.begin().await)
    }

    async fn commit(&mut self, conn: Resource<Connection>) -> wasmtime::Result<Result<(), Error>> {
        self.states.sql.did();
        on_backend!(self, conn, c => c.commit().await)
    }

    async fn rollback(
        &mut self,
        conn: Resource<Connection>,
    ) -> wasmtime::Result<Result<(), Error>> {
        self.states.sql.did();
        on_backend!(self, conn, c => c.rollback().await)
    }

    async fn wait_for_change(
        &mut self,
        conn: Resource<Connection>,
        channel: String,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let pools = &self.states.sql.shared.sql;
        let (source, pool) = match &self.table.get(&conn)?.backend {
            Backend::Postgres(c) => {
                let pool = match pools.postgres(&c.url).await {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(e)),
                };
                let url = c.url.clone();
                (changes::Source::Postgres { url, channel }, Some(pool))
            }
            Backend::Sqlite(c) => (changes::Source::Sqlite(c.path.clone()), None),
            Backend::MySql(_) => {
                return Ok(Err(Error::Permanent(
                    "MariaDB does not announce changes; poll this database instead".into(),
                )))
            }
        };
        let waiter = match &self.states.sql.waiter {
            Some(w) => w.clone(),
            None => format!("connection {}", self.states.sql.caller.connection),
        };
        let timeout = std::time::Duration::from_millis(timeout_ms.into());
        let wait = Wait {
            source,
            waiter,
            pool,
            shared: self.states.sql.shared.clone(),
        };
        let changed = wait.again(timeout).await;
        match &changed {
            Ok(c) => self.states.sql.waited(wait, *c),
            Err(_) => self.states.sql.trace = Trace::Other,
        }
        Ok(changed)
    }

    async fn drop(&mut self, conn: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        self.states.sql.open = self.states.sql.open.saturating_sub(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(granted: &[&str]) -> SqlState {
        SqlState::new(
            Caller {
                plugin: "sql".into(),
                connection: "crm".into(),
            },
            granted.iter().map(|s| s.to_string()).collect(),
            Default::default(),
        )
    }

    #[test]
    fn denies_sql_url_not_granted_naming_url_and_connection() {
        let err = state(&["sqlite:///data/crm.db"])
            .check_granted("sqlite:///data/erp.db")
            .unwrap_err();
        let Error::Auth(msg) = err else {
            panic!("expected an auth error, got {err:?}")
        };
        assert!(msg.contains("connection crm"), "{msg}");
        assert!(msg.contains("sqlite:///data/erp.db"), "{msg}");
    }

    /// Only a call that came down to one wait, with nothing done with a database after it, is
    /// one the host may make again in the plugin's place.
    #[test]
    fn a_wait_is_repeatable_only_when_it_was_the_one_and_the_last() {
        let wait = || Wait {
            source: changes::Source::Sqlite("a.db".into()),
            waiter: "side".into(),
            pool: None,
            shared: Arc::default(),
        };
        let mut s = state(&[]);
        s.trace_from_here();
        assert!(s.only_wait().is_none(), "nothing waited");
        s.did();
        s.waited(wait(), false);
        assert_eq!(
            s.only_wait().map(|(_, c)| c),
            Some(false),
            "set up, then waited"
        );
        s.did();
        assert!(s.only_wait().is_none(), "a statement after the wait");
        s.trace_from_here();
        s.waited(wait(), true);
        s.waited(wait(), false);
        assert!(s.only_wait().is_none(), "two waits");
        s.trace_from_here();
        s.waited(wait(), true);
        assert_eq!(s.only_wait().map(|(_, c)| c), Some(true), "traced afresh");
    }

    #[test]
    fn allows_exactly_the_granted_url() {
        assert!(state(&["sqlite:///data/crm.db"])
            .check_granted("sqlite:///data/crm.db")
            .is_ok());
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact("postgres://app:s3cret@db.local:5432/crm"),
            "postgres://app:***@db.local:5432/crm"
        );
        assert_eq!(redact("postgres://app@db/crm"), "postgres://app@db/crm");
        assert_eq!(redact("sqlite:///tmp/a.db"), "sqlite:///tmp/a.db");
        let err = state(&[])
            .check_granted("postgres://u:hunter2@h/db")
            .unwrap_err();
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn parses_sqlite_urls() {
        assert_eq!(
            parse_url("sqlite:///tmp/a.db").ok(),
            Some(Target::Sqlite("/tmp/a.db".into()))
        );
        assert!(parse_url("sqlite://").is_err());
        assert!(parse_url("ftp://x").is_err());
        assert!(matches!(
            parse_url("postgres://u:p@h/db"),
            Ok(Target::Postgres(_))
        ));
        assert!(matches!(
            parse_url("mariadb://root@127.0.0.1/test"),
            Ok(Target::MySql(_))
        ));
    }
}
