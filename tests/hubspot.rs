//! HubSpot contacts <-> PostgreSQL, end to end: the real HubSpot connector component, the real
//! runtime and the real `duplex` binary against the local HubSpot replica
//! (`tests/hubspot-replica`) and the PostgreSQL server on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use duplex::app::App;
use duplex_hubspot_replica::{Faults, OAuthApp, Options, Replica};
use sqlx::Connection;

const HUBSPOT: &str = "duplex_connector_hubspot";
const CANARY: &str = "pat-na1-canary-5d1f0c7e-never-print-me";
const PG: &str = "postgres://postgres@127.0.0.1:5432";

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A fresh PostgreSQL database, or None when there is no server (a failure under CI).
async fn pg_database() -> Option<String> {
    let name = format!(
        "duplex_hs_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let created = async {
        let mut c = sqlx::PgConnection::connect(&format!("{PG}/test")).await?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await?;
        Ok::<_, sqlx::Error>(())
    }
    .await;
    if let Err(e) = created {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI needs the PostgreSQL server on loopback: {e}");
        }
        eprintln!("skipped: no PostgreSQL server on loopback ({e})");
        return None;
    }
    Some(format!("{PG}/{name}"))
}

async fn pg(url: &str, sql: &str) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
}

/// The people in PostgreSQL by lower-case email: (first, last, phone).
async fn pg_people(url: &str) -> (BTreeMap<String, String>, usize) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    type Row = (String, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as("SELECT email, first_name, last_name, phone FROM people")
        .fetch_all(&mut c)
        .await
        .unwrap();
    let n = rows.len();
    let map = rows
        .into_iter()
        .map(|(e, f, l, p)| {
            let v = |x: Option<String>| x.unwrap_or_default();
            (e.to_lowercase(), format!("{}|{}|{}", v(f), v(l), v(p)))
        })
        .collect();
    (map, n)
}

fn hubspot_people(replica: &Replica) -> (BTreeMap<String, String>, usize) {
    let records = replica.records("contacts");
    let n = records.len();
    let map = records
        .into_iter()
        .map(|(_, p)| {
            let v = |k: &str| p.get(k).cloned().unwrap_or_default();
            (
                v("email").to_lowercase(),
                format!("{}|{}|{}", v("firstname"), v("lastname"), v("phone")),
            )
        })
        .collect();
    (map, n)
}

/// A folder with the token file and a config syncing the replica's contacts with `people`.
fn setup(replica_url: &str, pg_url: &str, token: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hubspot-token"), format!("{token}\n")).unwrap();
    let plugin = common::plugin(HUBSPOT);
    let config = format!(
        r#"
[connections.crm]
plugin = "{plugin}"
config = {{ base_url = "{replica_url}", objects = ["contacts"], overlap_ms = 5000 }}
grants = {{ http = ["{replica_url}"] }}
secrets = {{ token = {{ file = "hubspot-token" }} }}

[connections.crm.http]
headers = [{{ origin = "{replica_url}", name = "Authorization", value = "Bearer {{token}}" }}]
rate = "90 per 10s"
rates = [{{ path = "/crm/v3/objects/*/search", rate = "4 per 1s" }}]

[connections.db]
plugin = "builtin:sql"
config = {{ url = "{pg_url}", tables = ["people"] }}
grants = {{ sql = ["{pg_url}"] }}

[syncs.people]
left = "crm.contacts"
right = "db.people"
match = {{ field = "email", ignore_case = true }}
schedule = "1s"
fields = [
    {{ left = "email", right = "email" }},
    {{ left = "firstname", right = "first_name" }},
    {{ left = "lastname", right = "last_name" }},
    {{ left = "phone", right = "phone" }},
]
"#,
        plugin = plugin.display()
    );
    std::fs::write(dir.path().join("duplex.toml"), config).unwrap();
    dir
}

/// One process's worth of Duplex: loaded once, as `duplex run` is, so the connection's rate
/// budget carries over from one run to the next (a fresh process starts with an empty one).
struct Running {
    app: App,
    state: duplex::state::State,
}

impl Running {
    /// Loads the config; loading asks the connector to check and discover, which faults can
    /// fail too, so it is tried again after a pause.
    async fn load(config: &Path) -> Running {
        for _ in 0..20 {
            match App::load(config).await {
                Ok(app) => {
                    let state = app.open_state().unwrap();
                    return Running { app, state };
                }
                Err(e) => {
                    eprintln!("loading failed (faults are injected): {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        panic!("the config never loaded");
    }

    /// Runs until caught up, as `duplex run --once`; a failed run (a fault) is tried again.
    async fn sync(&self) -> usize {
        let mut failures = 0;
        for _ in 0..40 {
            match self.app.run_once(&self.state, |_, _| {}).await {
                Ok(_) => return failures,
                Err(e) => {
                    failures += 1;
                    eprintln!("a run failed (faults are injected): {e}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        panic!("the sync never caught up");
    }
}

/// Runs the `duplex` binary; off the runtime's threads, which serve the replica meanwhile.
async fn duplex(args: &[&str], dir: &Path) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_duplex"));
    command
        .args(args)
        .current_dir(dir)
        .env("DUPLEX_LOG", "duplex=debug,info")
        .env("XDG_CACHE_HOME", common::cache_dir());
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const PEOPLE: &str = "CREATE TABLE people (
    id SERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    first_name TEXT,
    last_name TEXT,
    phone TEXT
);
INSERT INTO people (email, first_name, last_name, phone) VALUES
    ('Ada@Example.com', 'Ada', 'Lovelace', '+44 1'),
    ('dave@example.com', 'Dave', 'Davies', NULL),
    ('erin@example.com', 'Erin', 'Ernst', '+1 5');";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_contacts_and_postgres_converge_under_faults_without_loss_duplicates_or_echo() {
    let Some(pg_url) = pg_database().await else {
        return;
    };
    pg(&pg_url, PEOPLE).await;
    let replica = Replica::start(Options {
        token: CANARY.into(),
        ..Default::default()
    })
    .await;
    replica.create(
        "contacts",
        &[
            ("email", "ada@example.com"),
            ("firstname", "Ada"),
            ("lastname", "Lovelace"),
        ],
    );
    let bob = replica.create(
        "contacts",
        &[
            ("email", "bob@example.com"),
            ("firstname", "Bob"),
            ("lastname", "Brown"),
        ],
    );
    let carol = replica.create(
        "contacts",
        &[
            ("email", "carol@example.com"),
            ("firstname", "Carol"),
            ("lastname", "Clark"),
        ],
    );
    let dir = setup(&replica.url, &pg_url, CANARY);
    let config = dir.path().join("duplex.toml");

    // First sync: Ada exists on both sides (her email in another letter case): matched, once.
    let duplex_process = Running::load(&config).await;
    duplex_process.sync().await;
    let (hs, hs_n) = hubspot_people(&replica);
    let (db, db_n) = pg_people(&pg_url).await;
    assert_eq!(hs_n, 5, "{hs:?}");
    assert_eq!(db_n, 5, "{db:?}");
    assert_eq!(hs, db);

    // Writers on both sides while the replica fails requests, rate-limits, lags its index and
    // drops connections after applying a batch.
    replica.set_faults(Faults {
        fail_every: 23,
        reset_after_apply_every: 3,
        rate_limit_every: 37,
        slow: Duration::ZERO,
    });
    replica.set_search_lag(Duration::from_millis(800));
    let ada = replica
        .records("contacts")
        .into_iter()
        .find(|(_, p)| p.get("email").is_some_and(|e| e == "ada@example.com"))
        .unwrap()
        .0;
    replica.update("contacts", &bob, &[("firstname", "Robert")]);
    replica.update(
        "contacts",
        &ada,
        &[("firstname", "Ada (crm)"), ("phone", "+44 2")],
    );
    replica.archive("contacts", &carol);
    replica.create(
        "contacts",
        &[("email", "frank@example.com"), ("firstname", "Frank")],
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    pg(
        &pg_url,
        "UPDATE people SET first_name = 'Ada (db, later)', last_name = 'King' WHERE lower(email) = 'ada@example.com';
         UPDATE people SET phone = '+1 7' WHERE email = 'dave@example.com';
         INSERT INTO people (email, first_name) VALUES ('grace@example.com', 'Grace');
         DELETE FROM people WHERE email = 'erin@example.com';
         INSERT INTO people (email, first_name, last_name)
             SELECT 'bulk' || n || '@example.com', 'Bulk', 'No ' || n FROM generate_series(1, 150) AS n;",
    )
    .await;
    let mut failures = duplex_process.sync().await;
    // What the index showed late is read within the overlap window.
    tokio::time::sleep(Duration::from_millis(900)).await;
    failures += duplex_process.sync().await;
    replica.set_faults(Faults::default());
    duplex_process.sync().await;
    // Once more after the index has surely caught up with the last writes.
    tokio::time::sleep(Duration::from_millis(900)).await;
    duplex_process.sync().await;
    // The binary below is another process: it needs the state file, and starts with a fresh
    // rate budget, so the replica's window is let drain first.
    drop(duplex_process);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let (hs, hs_n) = hubspot_people(&replica);
    let (db, db_n) = pg_people(&pg_url).await;
    assert_eq!(hs_n, hs.len(), "a duplicate in HubSpot: {hs:?}");
    assert_eq!(db_n, db.len(), "a duplicate in PostgreSQL: {db:?}");
    assert_eq!(hs, db, "the sides diverged");
    let expect = |email: &str| db.get(email).cloned().unwrap_or_else(|| "<missing>".into());
    // Different fields of one record: both kept; the same field: the later edit (PostgreSQL's).
    assert_eq!(expect("ada@example.com"), "Ada (db, later)|King|+44 2");
    assert_eq!(expect("bob@example.com"), "Robert|Brown|");
    assert_eq!(expect("dave@example.com"), "Dave|Davies|+1 7");
    assert_eq!(expect("frank@example.com"), "Frank||");
    assert_eq!(expect("grace@example.com"), "Grace||");
    // A bulk insert in PostgreSQL arrives whole, created once each, through batches that faults
    // interrupt.
    for n in [1, 75, 150] {
        assert_eq!(
            expect(&format!("bulk{n}@example.com")),
            format!("Bulk|No {n}|")
        );
    }
    // Ada, Bob, Dave, Frank and Grace, and the bulk.
    assert_eq!(db.len(), 5 + 150, "{db:?}");
    assert!(
        !db.contains_key("carol@example.com"),
        "archived in HubSpot: {db:?}"
    );
    assert!(
        !hs.contains_key("erin@example.com"),
        "deleted in PostgreSQL: {hs:?}"
    );
    eprintln!("runs that failed on injected faults: {failures}");
    // What `/metrics` shows of the connection: its requests by status (the injected faults
    // among them) and the time they waited for the rate budget.
    let http = duplex::telemetry::http_requests();
    let crm = http
        .get("crm")
        .expect("the crm connection's requests are counted");
    assert!(crm.by_status.get(&200).copied().unwrap_or(0) > 0, "{crm:?}");
    assert!(
        crm.by_status.keys().any(|s| *s == 0 || *s >= 400),
        "the injected faults are counted: {crm:?}"
    );
    let calls = duplex::telemetry::plugin_calls();
    assert!(
        calls.keys().any(|(p, c)| p == HUBSPOT && c == "crm"),
        "{:?}",
        calls.keys()
    );

    // Idle: a cycle sends only reads (no echo of what Duplex wrote).
    replica.reset_stats();
    let (ok, out) = duplex(&["run", "duplex.toml", "--once"], dir.path()).await;
    assert!(ok, "{out}");
    let stats = replica.stats();
    assert_eq!(
        stats.writes(),
        0,
        "an idle cycle wrote: {:?}",
        stats.requests
    );

    // The budget held: the replica never had to refuse a request for going over its limits,
    // and every request had the shape the documentation gives.
    let (ok, status) = duplex(&["status", "duplex.toml"], dir.path()).await;
    assert!(ok, "{status}");
    assert_eq!(replica.stats().over_budget, 0);
    assert!(
        replica.stats().violations.is_empty(),
        "{:?}",
        replica.stats().violations
    );

    // The token is in no log line, status output or state file.
    assert!(!out.contains(CANARY), "the token reached the log");
    assert!(!status.contains(CANARY), "the token reached status");
    in_no_file_but(dir.path(), &["hubspot-token"], &[CANARY]);
}

/// None of `secrets` is in any file of `dir` (the state, the config, anything Duplex wrote)
/// but the files named in `holders`, which hold them on purpose.
fn in_no_file_but(dir: &Path, holders: &[&str], secrets: &[&str]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if holders.contains(&name.as_str()) || !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} is in {name}"
            );
        }
    }
}

async fn check_error(dir: &Path) -> String {
    let (ok, out) = duplex(&["check", "duplex.toml"], dir).await;
    assert!(!ok, "check passed: {out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_what_to_fix_for_a_bad_token_a_missing_scope_or_an_unreachable_origin() {
    let Some(pg_url) = pg_database().await else {
        return;
    };
    pg(&pg_url, PEOPLE).await;
    let replica = Replica::start(Options {
        token: CANARY.into(),
        ..Default::default()
    })
    .await;

    let dir = setup(&replica.url, &pg_url, "not-the-token");
    let out = check_error(dir.path()).await;
    assert!(out.contains("refused the access token"), "{out}");
    assert!(!out.contains(CANARY));

    let narrow = Replica::start(Options {
        token: CANARY.into(),
        scopes: vec!["crm.objects.companies.read".into()],
        ..Default::default()
    })
    .await;
    let dir = setup(&narrow.url, &pg_url, CANARY);
    let out = check_error(dir.path()).await;
    assert!(
        out.contains("lacks the scope crm.objects.contacts.read"),
        "{out}"
    );

    // A counter on HubSpot, which cannot write conditionally: a total written over a change
    // made there meanwhile would drop it.
    let dir = setup(&replica.url, &pg_url, CANARY);
    let config = std::fs::read_to_string(dir.path().join("duplex.toml")).unwrap();
    let phone = r#"{ left = "phone", right = "phone" }"#;
    assert!(config.contains(phone));
    std::fs::write(
        dir.path().join("duplex.toml"),
        config.replace(
            phone,
            r#"{ left = "phone", right = "phone", counter = true }"#,
        ),
    )
    .unwrap();
    let out = check_error(dir.path()).await;
    assert!(
        out.contains("syncs.people.fields[3].counter: connection crm cannot write conditionally"),
        "{out}"
    );

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = setup(&format!("http://127.0.0.1:{closed}"), &pg_url, CANARY);
    let out = check_error(dir.path()).await;
    assert!(out.contains("cannot reach HubSpot"), "{out}");
    assert!(!out.contains(CANARY), "{out}");
}

/// An upload is checked against its connection's grants: the SQL connector for the HubSpot
/// connection, which grants http only, is refused saying what to grant, and nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_connector_needing_a_grant_its_connection_lacks_is_refused() {
    let Some(pg_url) = pg_database().await else {
        return;
    };
    pg(&pg_url, PEOPLE).await;
    let replica = Replica::start(Options {
        token: CANARY.into(),
        ..Default::default()
    })
    .await;
    let dir = setup(&replica.url, &pg_url, CANARY);
    let running = Running::load(&dir.path().join("duplex.toml")).await;
    let slot: duplex::state::Slot = "connections.crm".parse().unwrap();
    let mut connections = running.app.connections.clone();
    let refused = running
        .app
        .install(
            &running.state,
            &slot,
            duplex::app::Install::Upload(duplex::app::BUILTIN_SQL.to_vec()),
            "test",
            &mut connections,
        )
        .await
        .err()
        .expect("refused");
    let why = refused.to_string();
    assert!(why.contains("connection crm grants it no sql"), "{why}");
    assert!(why.contains("grants.sql"), "says what to add: {why}");
    assert!(running
        .state
        .plugin_versions(&slot)
        .unwrap()
        .versions
        .is_empty());
    assert!(
        Arc::ptr_eq(
            &connections["crm"].plugin,
            &running.app.connections["crm"].plugin
        ),
        "the running connector is kept"
    );
    // The HubSpot connector itself fits, and is stored as version 1.
    let hubspot = std::fs::read(common::plugin(HUBSPOT)).unwrap();
    let installed = running
        .app
        .install(
            &running.state,
            &slot,
            duplex::app::Install::Upload(hubspot),
            "test",
            &mut connections,
        )
        .await
        .unwrap();
    assert_eq!(installed.versions.active, Some(1));
    assert_eq!(installed.syncs, ["people"]);
}

const CLIENT_SECRET: &str = "client-secret-canary-93b0e1";
const REFRESH_TOKEN: &str = "refresh-token-canary-4f7a22";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_runs_oauth_and_refreshes_the_access_token_the_plugin_never_sees() {
    let Some(pg_url) = pg_database().await else {
        return;
    };
    pg(&pg_url, PEOPLE).await;
    let replica = Replica::start(Options {
        token: "no-private-app-token-is-used".into(),
        oauth: Some(OAuthApp {
            client_id: "duplex-client".into(),
            client_secret: CLIENT_SECRET.into(),
            refresh_token: REFRESH_TOKEN.into(),
            expires_in: Duration::from_secs(2),
        }),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), CLIENT_SECRET).unwrap();
    std::fs::write(dir.path().join("refresh-token"), REFRESH_TOKEN).unwrap();
    let url = &replica.url;
    std::fs::write(
        dir.path().join("duplex.toml"),
        format!(
            r#"
[connections.crm]
plugin = "{plugin}"
config = {{ base_url = "{url}", objects = ["contacts"] }}
grants = {{ http = ["{url}"] }}
secrets = {{ client_secret = {{ file = "client-secret" }}, refresh_token = {{ file = "refresh-token" }} }}

[connections.crm.http.oauth]
origin = "{url}"
token_url = "{url}/oauth/v1/token"
grant = "refresh_token"
client_id = "duplex-client"
client_secret = "{{client_secret}}"
refresh_token = "{{refresh_token}}"

[connections.db]
plugin = "builtin:sql"
config = {{ url = "{pg_url}", tables = ["people"] }}
grants = {{ sql = ["{pg_url}"] }}

[syncs.people]
left = "crm.contacts"
right = "db.people"
match = {{ field = "email", ignore_case = true }}
fields = [
    {{ left = "email", right = "email" }},
    {{ left = "firstname", right = "first_name" }},
]
"#,
            plugin = common::plugin(HUBSPOT).display()
        ),
    )
    .unwrap();
    let tokens = |r: &Replica| {
        r.stats()
            .requests
            .get("POST /oauth/v1/token")
            .copied()
            .unwrap_or(0)
    };
    let (ok, first) = duplex(&["run", "duplex.toml", "--once"], dir.path()).await;
    assert!(ok, "{first}");
    assert_eq!(
        replica.records("contacts").len(),
        3,
        "the sync reached HubSpot"
    );
    // Check, discover, reads and writes: many requests, one token.
    assert_eq!(tokens(&replica), 1);
    assert!(replica.stats().total() > 5);

    // The token lives 2 s: the next run fetches a new one before using it.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    pg(
        &pg_url,
        "UPDATE people SET first_name = 'Dave (db)' WHERE email = 'dave@example.com'",
    )
    .await;
    let (ok, second) = duplex(&["run", "duplex.toml", "--once"], dir.path()).await;
    assert!(ok, "{second}");
    assert_eq!(tokens(&replica), 2);
    assert!(replica
        .records("contacts")
        .iter()
        .any(|(_, p)| p.get("firstname").is_some_and(|f| f == "Dave (db)")));

    // Neither the client secret, the refresh token nor an access token is printed or stored.
    let (_, status) = duplex(&["status", "duplex.toml"], dir.path()).await;
    for text in [&first, &second, &status] {
        for secret in [CLIENT_SECRET, REFRESH_TOKEN, "access-"] {
            assert!(!text.contains(secret), "{secret} was printed");
        }
    }
    in_no_file_but(
        dir.path(),
        &["client-secret", "refresh-token"],
        &[CLIENT_SECRET, REFRESH_TOKEN, "access-"],
    );
}

const CLIENT_SECRET_V3: &str = "app-client-secret-canary-7c19e2";
const HOOK_URL: &str = "https://duplex.example/hooks/crm";

/// HubSpot's v3 signature of a request, as its docs give the steps: base64 of HMAC-SHA256,
/// keyed with the app's client secret, over method + URI + body + timestamp.
fn v3_signature(body: &str, timestamp: i64) -> String {
    use base64::Engine;
    let message = format!("POST{HOOK_URL}{body}{timestamp}");
    let mac = duplex::host::signing::hmac_sha256(CLIENT_SECRET_V3.as_bytes(), message.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac)
}

/// POSTs a webhook to a running `duplex serve`: status and body.
async fn post_hook(addr: &str, body: &str, signature: &str, timestamp: i64) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /hooks/crm HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nX-HubSpot-Signature-v3: {signature}\r\n\
         X-HubSpot-Request-Timestamp: {timestamp}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// A webhook signed as HubSpot signs (v3) wakes a sync that would otherwise wait an hour; a
/// bad signature, or a good one outside the 5-minute window, is a 401 that wakes nothing; the
/// same webhook replayed wakes a read that finds nothing new: nothing is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_wakes_the_sync_and_a_bad_or_replayed_one_changes_nothing() {
    let Some(pg_url) = pg_database().await else {
        return;
    };
    pg(&pg_url, PEOPLE).await;
    let replica = Replica::start(Options {
        token: CANARY.into(),
        ..Default::default()
    })
    .await;
    let dir = setup(&replica.url, &pg_url, CANARY);
    std::fs::write(dir.path().join("client-secret"), CLIENT_SECRET_V3).unwrap();
    let config = std::fs::read_to_string(dir.path().join("duplex.toml"))
        .unwrap()
        .replace(
            "overlap_ms = 5000 }",
            &format!("overlap_ms = 5000, webhook_url = \"{HOOK_URL}\" }}"),
        )
        .replace(
            "secrets = { token = { file = \"hubspot-token\" } }",
            "secrets = { token = { file = \"hubspot-token\" }, client_secret = { file = \"client-secret\" } }",
        )
        .replace("schedule = \"1s\"", "schedule = \"1h\"");
    assert!(config.contains("webhook_url") && config.contains("client-secret"));
    std::fs::write(dir.path().join("duplex.toml"), config).unwrap();

    replica.create(
        "contacts",
        &[("email", "ada@example.com"), ("firstname", "Ada")],
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["serve", "duplex.toml", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", common::cache_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    {
        let pipe = child.stderr.take().unwrap();
        let log = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
    }
    let mut addr = None;
    for _ in 0..600 {
        let text = log.lock().unwrap().clone();
        addr = text
            .lines()
            .find_map(|l| l.split("http://").nth(1).filter(|_| l.contains("API on")))
            .and_then(|rest| rest.split('/').next())
            .map(str::to_owned);
        if addr.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let addr = addr.unwrap_or_else(|| panic!("serve did not start:\n{}", log.lock().unwrap()));
    let has = |email: &'static str| {
        let pg_url = pg_url.clone();
        async move { pg_people(&pg_url).await.0.contains_key(email) }
    };
    // The first cycle runs at the start; then the sync waits an hour.
    for _ in 0..300 {
        if has("dave@example.com").await && replica.records("contacts").len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    replica.create(
        "contacts",
        &[("email", "bob@example.com"), ("firstname", "Bob")],
    );
    let body = r#"[{"eventId":1,"subscriptionType":"contact.creation","objectId":2,"portalId":62515,"occurredAt":1764871200000}]"#;
    let now_ms = chrono::Utc::now().timestamp_millis();

    // Bad: a signature over another body, then a good one too old. Nothing wakes.
    let (status, answer) = post_hook(&addr, body, &v3_signature("[]", now_ms), now_ms).await;
    assert_eq!(status, 401, "{answer}");
    let old_ms = now_ms - 10 * 60 * 1000;
    let (status, answer) = post_hook(&addr, body, &v3_signature(body, old_ms), old_ms).await;
    assert_eq!(status, 401, "{answer}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !has("bob@example.com").await,
        "a refused webhook woke the sync"
    );

    // Good: the sync reads now.
    let signature = v3_signature(body, now_ms);
    let (status, answer) = post_hook(&addr, body, &signature, now_ms).await;
    assert_eq!(status, 202, "{answer}");
    assert!(answer.contains(r#""woke":["people"]"#), "{answer}");
    let mut arrived = false;
    for _ in 0..300 {
        if has("bob@example.com").await {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        arrived,
        "the webhook did not wake the sync:\n{}",
        log.lock().unwrap()
    );
    let (_, before) = pg_people(&pg_url).await;

    // Replayed: a read that finds nothing new.
    let (status, answer) = post_hook(&addr, body, &signature, now_ms).await;
    assert_eq!(status, 202, "{answer}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, after) = pg_people(&pg_url).await;
    assert_eq!(before, after, "a replayed webhook duplicated something");
    assert_eq!(
        hubspot_people(&replica).1,
        after,
        "both sides hold the same people"
    );

    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{}", log.lock().unwrap());
    assert!(
        !log.lock().unwrap().contains(CLIENT_SECRET_V3),
        "the secret reached the log"
    );
}
