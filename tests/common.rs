//! The shared harness of the end-to-end tests: real components built from `plugins/`, a real
//! plugin host, real SQLite files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use duplex::host::Grants;
use duplex::plugin::{ConnectorPlugin, HostOptions, Limits, PluginHost};

/// Plugin instances alive now for the connections whose names start with `prefix` (the
/// counts are the process's: a test names its connections apart from the others').
pub fn instances_alive(prefix: &str) -> u64 {
    duplex::telemetry::live_instances()
        .iter()
        .filter(|((_, connection), _)| connection.starts_with(prefix))
        .map(|(_, n)| n)
        .sum()
}

/// The streams `plugin` discovers with `config`, from a session of its own.
pub async fn streams(plugin: &ConnectorPlugin, config: &str) -> Vec<duplex::plugin::Stream> {
    plugin
        .session()
        .await
        .expect("a new session")
        .discover(config)
        .await
        .expect("discover answers")
}

/// A component built by the runtime's build script.
pub fn plugin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

pub const SQL: &str = "duplex_connector_sql";
pub const HOSTILE: &str = "duplex_fixture_hostile";
pub const READS_FILES: &str = "duplex_fixture_reads_files";
pub const IMPORTS_UNKNOWN: &str = "duplex_fixture_imports_unknown";
pub const LARGER_WINS: &str = "duplex_rule_larger_wins";
pub const HTTP_PROBE: &str = "duplex_fixture_http_probe";
pub const HTTP_RULE: &str = "duplex_fixture_http_rule";
/// Built against the 0.1.0 contract (`wit/v0.1.0`), loaded through the adapter.
pub const V0_1_0_NOTES: &str = "duplex_fixture_v0_1_0_notes";
pub const V0_1_0_TAKE_RIGHT: &str = "duplex_fixture_v0_1_0_take_right";
pub const V0_2_0_NOTES: &str = "duplex_fixture_v0_2_0_notes";
pub const V0_2_0_TAKE_RIGHT: &str = "duplex_fixture_v0_2_0_take_right";
pub const V0_3_0_NOTES: &str = "duplex_fixture_v0_3_0_notes";
pub const V0_3_0_TAKE_RIGHT: &str = "duplex_fixture_v0_3_0_take_right";
pub const V0_4_0_NOTES: &str = "duplex_fixture_v0_4_0_notes";
pub const V0_4_0_TAKE_LAST: &str = "duplex_fixture_v0_4_0_take_last";
pub const V0_5_0_NOTES: &str = "duplex_fixture_v0_5_0_notes";
pub const V0_5_0_TAKE_LAST: &str = "duplex_fixture_v0_5_0_take_last";
pub const WRONG_ANSWER: &str = "duplex_fixture_wrong_answer";

/// A compile cache shared by the tests of one build, so each component compiles once.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-compile-cache")
}

/// Limits small enough that hostile fixtures are stopped quickly.
pub fn test_limits() -> Limits {
    Limits {
        memory_bytes: 64 << 20,
        cpu_per_call: Duration::from_millis(500),
        call_timeout: Duration::from_secs(3),
    }
}

pub fn host_with(limits: Limits) -> PluginHost {
    PluginHost::new(HostOptions {
        limits,
        cache_dir: Some(cache_dir()),
    })
    .expect("plugin host starts")
}

pub fn host() -> PluginHost {
    host_with(test_limits())
}

pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A SQLite file in a temp dir, set up with `schema`.
pub struct Db {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Db {
    pub fn new(schema: &str) -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        let conn = rusqlite::Connection::open(&path).expect("create sqlite file");
        conn.execute_batch(schema).expect("schema");
        Db { dir, path }
    }

    pub fn url(&self) -> String {
        sqlite_url(&self.path)
    }

    /// A connection as a person's application would have: writes through it are not Duplex's.
    pub fn user(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.path).expect("open sqlite file")
    }

    pub fn config(&self) -> String {
        serde_json::json!({ "url": self.url() }).to_string()
    }

    pub fn grants(&self) -> Grants {
        Grants {
            sql: vec![self.url()],
            ..Grants::default()
        }
    }

    pub async fn connector(&self, host: &PluginHost) -> ConnectorPlugin {
        host.load_connector_file(&plugin(SQL), "crm", &self.grants())
            .await
            .expect("sql connector loads")
    }
}

/// A database a connector scenario runs against, whatever its kind.
#[allow(async_fn_in_trait)]
pub trait TestDb {
    /// The sql connector's config for it.
    fn config(&self) -> String;
    /// Runs statements as a person would, outside Duplex.
    async fn exec(&self, sql: &str);
    /// The first column of the first row of a query, as a number.
    async fn count(&self, sql: &str) -> i64;
}

impl TestDb for Db {
    fn config(&self) -> String {
        Db::config(self)
    }

    async fn exec(&self, sql: &str) {
        self.user().execute_batch(sql).expect("statements");
    }

    async fn count(&self, sql: &str) -> i64 {
        self.user()
            .query_row(sql, [], |r| r.get(0))
            .expect("a count")
    }
}

/// Reads `stream` as `origin` from `cursor`, `max` entries at a time, until nothing is waiting
/// and `done` holds for what was read, or five seconds pass. Returns what was read and the
/// cursor after it. On PostgreSQL a change becomes readable only when every older writing
/// transaction in the cluster has ended, which, with other tests running, can take a moment.
pub async fn read_until(
    s: &mut duplex::plugin::ConnectorSession,
    db: &impl TestDb,
    (stream, origin, max): (&str, &str, u32),
    mut cursor: String,
    done: impl Fn(&[duplex::plugin::Change]) -> bool,
) -> (Vec<duplex::plugin::Change>, String) {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let batch = s
            .read(&db.config(), stream, origin, Some(&cursor), max)
            .await
            .expect("read");
        seen.extend(batch.changes);
        cursor = batch.next_cursor;
        let late = std::time::Instant::now() > deadline;
        if late || (!batch.has_more && done(&seen)) {
            return (seen, cursor);
        }
        if !batch.has_more {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads as `who` until caught up with at least `want` changes, polls once more, makes the
/// last prune look old (`pruning`), and polls again: `who` is then done with all it read, and
/// that last read prunes. Returns how many changes came and the cursor.
async fn caught_up(
    s: &mut duplex::plugin::ConnectorSession,
    db: &impl TestDb,
    who: &str,
    (from, want): (String, usize),
    pruning: &str,
) -> (usize, String) {
    let (seen, at) = read_until(s, db, ("items", who, 10), from, |c| c.len() >= want).await;
    let (_, at) = read_until(s, db, ("items", who, 10), at, |_| true).await;
    db.exec(pruning).await;
    let (_, at) = read_until(s, db, ("items", who, 10), at, |_| true).await;
    (seen.len(), at)
}

/// The change log keeps what some reader still needs and loses the rest: nothing goes while a
/// table's readers may not all have registered yet (capture installed before readers were
/// kept), entries stay while one reader is behind, go once every reader is past them, and a
/// reader that stayed away past the expiry learns that entries it needed are gone instead of
/// missing them quietly. `items (id, name)` must exist. `age(who, seconds)` is an UPDATE, in
/// the database's own SQL, that makes reader `who`'s row that many seconds old; the empty name
/// stands for the last prune.
pub async fn the_log_keeps_only_what_readers_need(
    db: &impl TestDb,
    plugin: &ConnectorPlugin,
    age: impl Fn(&str, u32) -> String,
) {
    const DAYS_40: u32 = 40 * 24 * 60 * 60;
    let log = "SELECT count(*) FROM _duplex_changes WHERE tbl = 'items'";
    let mut s = plugin.session().await.expect("session");
    let mut first = Vec::new();
    for origin in ["sync:a", "sync:b"] {
        let batch = s.read(&db.config(), "items", origin, None, 10).await;
        first.push(batch.expect("first read").next_cursor);
    }
    let [a, b]: [String; 2] = first.try_into().expect("two readers");
    // As after an upgrade: both have cursors, neither is registered.
    db.exec("DELETE FROM _duplex_readers").await;
    let rows: Vec<String> = (1..=30).map(|i| format!("('p{i}')")).collect();
    db.exec(&format!(
        "INSERT INTO items (name) VALUES {}",
        rows.join(", ")
    ))
    .await;

    // a reads everything and polls again past the prune interval, but within the first
    // prune's wait: b, not registered yet, loses nothing.
    let (seen, a) = caught_up(&mut s, db, "sync:a", (a, 30), &age("", 6)).await;
    assert_eq!(seen, 30);
    assert_eq!(
        db.count(log).await,
        30,
        "b has not registered yet: all stay"
    );
    // b reads once, and so registers where it stands; a reader done with everything still
    // leaves b's entries.
    let batch = s
        .read(&db.config(), "items", "sync:b", Some(&b), 10)
        .await
        .expect("b reads from where it stood");
    assert_eq!(batch.changes.len(), 10);
    let pruning = age("", DAYS_40);
    let (_, a) = caught_up(&mut s, db, "sync:a", (a, 0), &pruning).await;
    assert_eq!(
        db.count(log).await,
        30,
        "b has not read past them: all stay"
    );
    let (seen, b) = caught_up(&mut s, db, "sync:b", (b, 30), &pruning).await;
    assert_eq!(seen, 30, "b reads every change a read");
    let left = db.count(log).await;
    assert!(
        left <= 1,
        "every reader is past them, yet {left} entries stay"
    );

    // b stays away past the expiry; a reads on and the log is pruned past b's position.
    db.exec(&age("sync:b", DAYS_40)).await;
    db.exec("INSERT INTO items (name) VALUES ('q1'), ('q2')")
        .await;
    let (seen, _) = caught_up(&mut s, db, "sync:a", (a, 2), &pruning).await;
    assert_eq!(seen, 2);
    let gone = s
        .read(&db.config(), "items", "sync:b", Some(&b), 10)
        .await
        .expect_err("b's changes were pruned");
    assert!(
        gone.to_string().contains("was pruned up to position"),
        "{gone}"
    );
}

/// Pruning while people write loses nothing: a reader reads, and the log is pruned at every
/// read, while rows are inserted one transaction at a time beside it. Every row is read.
/// (At least once: a connector may read an entry again, as MariaDB's log start does by design,
/// and the host drops what it has already seen; losing one is what pruning must never cause.)
/// `items (id, name)` must exist; `age` as for [`the_log_keeps_only_what_readers_need`].
pub async fn pruning_beside_writers_loses_nothing(
    db: &impl TestDb,
    plugin: &ConnectorPlugin,
    age: impl Fn(&str, u32) -> String,
) {
    const ROWS: usize = 150;
    let mut s = plugin.session().await.expect("session");
    let mut cursor = s
        .read(&db.config(), "items", "sync:a", None, 10)
        .await
        .expect("first read")
        .next_cursor;
    let done = std::cell::Cell::new(false);
    let writer = async {
        for i in 0..ROWS {
            db.exec(&format!("INSERT INTO items (name) VALUES ('w{i}')"))
                .await;
        }
        done.set(true);
    };
    let prune = age("", 40 * 24 * 60 * 60);
    let reader = async {
        let mut seen = std::collections::BTreeSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let finished = done.get();
            // Every read may prune: the last prune is made to look old each time.
            db.exec(&prune).await;
            let batch = s
                .read(&db.config(), "items", "sync:a", Some(&cursor), 7)
                .await
                .expect("read");
            for c in &batch.changes {
                let name = c.fields.iter().find(|f| f.name == "name");
                seen.insert(name.map(|f| format!("{:?}", f.value)));
            }
            cursor = batch.next_cursor;
            if finished && !batch.has_more && seen.len() >= ROWS {
                break;
            }
            if !batch.has_more {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        seen
    };
    let ((), seen) = tokio::join!(writer, reader);
    assert_eq!(seen.len(), ROWS, "every row read");
    let left = db
        .count("SELECT count(*) FROM _duplex_changes WHERE tbl = 'items'")
        .await;
    assert!(
        left < ROWS as i64 / 2,
        "the log was pruned as it was read: {left} left"
    );
}
