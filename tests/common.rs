//! The shared harness of the end-to-end tests: real components built from `plugins/`, a real
//! plugin host, real SQLite files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use duplex::host::Grants;
use duplex::plugin::{ConnectorPlugin, HostOptions, Limits, PluginHost};

/// A component built by the runtime's build script.
pub fn plugin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

pub const SQL: &str = "duplex_connector_sql";
pub const HOSTILE: &str = "duplex_fixture_hostile";
pub const READS_FILES: &str = "duplex_fixture_reads_files";
pub const LARGER_WINS: &str = "duplex_rule_larger_wins";

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
        }
    }

    pub async fn connector(&self, host: &PluginHost) -> ConnectorPlugin {
        host.load_connector_file(&plugin(SQL), "crm", &self.grants())
            .await
            .expect("sql connector loads")
    }
}
