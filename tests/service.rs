//! Duplex as a service: the CLI beside a running `run` or `serve`, the HTTP API over real
//! loopback HTTP with its roles, the audit log, the failed-login limit, and `/metrics` read by
//! a Prometheus text-format parser.

// Test helpers unwrap too: a panic there is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CRM: &str = "
CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, full_name TEXT NOT NULL);
INSERT INTO customers (id, email, full_name) VALUES (1, 'ada@example.com', 'Ada'), (2, 'bob@example.com', 'Bob');
";
const ERP: &str = "
CREATE TABLE clients (no INTEGER PRIMARY KEY, mail TEXT NOT NULL UNIQUE, name TEXT NOT NULL);
";

/// Two SQLite databases and a realtime sync between them whose names wait for a person.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup::with("manual", "")
    }

    /// With the sync's conflict policy, and more config after it.
    fn with(conflict: &str, more: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        for (file, sql) in [("crm.db", CRM), ("erp.db", ERP)] {
            rusqlite::Connection::open(dir.path().join(file))
                .unwrap()
                .execute_batch(sql)
                .unwrap();
        }
        let config = r#"
[connections.crm]
plugin = "builtin:sql"
config = { url = "sqlite://crm.db" }
grants = { sql = ["sqlite://crm.db"] }

[connections.erp]
plugin = "builtin:sql"
config = { url = "sqlite://erp.db" }
grants = { sql = ["sqlite://erp.db"] }

[syncs.people]
left = "crm.customers"
right = "erp.clients"
match = { field = "email" }
conflict = "{conflict}"

[[syncs.people.fields]]
left = "email"
right = "mail"

[[syncs.people.fields]]
left = "full_name"
right = "name"
{more}"#
            .replace("{conflict}", conflict)
            .replace("{more}", more);
        std::fs::write(dir.path().join("duplex.toml"), config).unwrap();
        Setup { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn db(&self, name: &str) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.path().join(name)).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    fn crm_name(&self, id: i64) -> String {
        self.db("crm.db")
            .query_row("SELECT full_name FROM customers WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap_or_else(|_| "<missing>".into())
    }

    fn erp_name(&self, mail: &str) -> String {
        self.db("erp.db")
            .query_row("SELECT name FROM clients WHERE mail = ?1", [mail], |r| {
                r.get(0)
            })
            .unwrap_or_else(|_| "<missing>".into())
    }

    fn duplex(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_duplex"))
            .args(args)
            .current_dir(self.path())
            .env("XDG_CACHE_HOME", common::cache_dir())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a CLI command that must succeed; its output.
    fn cli(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.duplex(args);
        assert!(ok, "duplex {args:?} failed:\n{out}{err}");
        out
    }

    fn token(&self, role: &str) -> String {
        let out = self.cli(&[
            "token",
            "create",
            "duplex.toml",
            "--role",
            role,
            "--name",
            role,
        ]);
        out.trim().to_owned()
    }
}

/// A `duplex run` or `duplex serve` in the background; stopped with SIGTERM when dropped.
struct Instance {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    addr: Option<SocketAddr>,
}

impl Instance {
    fn start(s: &Setup, args: &[&str]) -> Instance {
        let mut child = Command::new(env!("CARGO_BIN_EXE_duplex"))
            .args(args)
            .current_dir(s.path())
            .env("XDG_CACHE_HOME", common::cache_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut instance = Instance {
            child: Some(child),
            stderr,
            addr: None,
        };
        let text = instance.wait_for_log("sync(s) from");
        instance.addr = text
            .lines()
            .find_map(|l| l.split("://").nth(1).filter(|_| l.contains("API on")))
            .and_then(|rest| rest.split('/').next())
            .map(|a| a.parse().unwrap());
        assert!(s.path().join("duplex.redb.sock").exists(), "{text}");
        instance
    }

    fn wait_for_log(&mut self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = self.stderr.lock().unwrap().clone();
            if text.contains(what) {
                return text;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("duplex exited ({status}) before saying {what:?}:\n{text}");
            }
            assert!(Instant::now() < deadline, "no {what:?} in:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit: it must be clean.
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let text = self.stderr.lock().unwrap().clone();
        assert!(status.success(), "{text}");
        assert!(text.contains("stopped cleanly"), "{text}");
        text
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.1 request over a fresh connection: status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let body = body.map(|b| ("application/json", b.as_bytes()));
    http_with(addr, method, path, token, body)
}

/// [`http`], with a body of any type.
fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let (content_type, body) = body.unwrap_or(("application/json", b""));
    request.push_str(&format!(
        "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {answer}"));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    // Bodies are whole (Content-Length) or chunked; the test reads only whole ones.
    assert!(
        !head.to_ascii_lowercase().contains("chunked"),
        "chunked answer: {head}"
    );
    (status, body.to_owned())
}

/// Pauses or resumes the sync through the API, as an operator.
fn operate(addr: SocketAddr, verb: &str, token: &str) {
    let (status, body) = http(
        addr,
        "POST",
        &format!("/api/v1/syncs/people/{verb}"),
        Some(token),
        None,
    );
    assert_eq!(status, 200, "{verb}: {body}");
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Both people edit Bob's name while the sync is paused, so that one cycle sees both.
fn conflicting_names(s: &Setup) {
    s.cli(&["sync", "pause", "duplex.toml", "people"]);
    s.db("crm.db")
        .execute(
            "UPDATE customers SET full_name = 'Bob (crm)' WHERE id = 2",
            [],
        )
        .unwrap();
    s.db("erp.db")
        .execute(
            "UPDATE clients SET name = 'Bob (erp)' WHERE mail = 'bob@example.com'",
            [],
        )
        .unwrap();
    s.cli(&["sync", "resume", "duplex.toml", "people"]);
}

/// `status`, `conflicts list` and `conflicts resolve` beside a running instance: they go
/// through it (never fighting it for the state file), and the resolution reaches both sides.
fn cli_beside(command: &str) {
    let s = Setup::new();
    let mut args = vec![command, "duplex.toml"];
    if command == "serve" {
        args.extend(["--listen", "127.0.0.1:0"]);
    }
    let instance = Instance::start(&s, &args);
    eventually("the first sync", || s.erp_name("bob@example.com") == "Bob");

    let status = s.cli(&["status", "duplex.toml"]);
    assert!(status.contains("links: 2 active, 2 in all"), "{status}");

    conflicting_names(&s);
    let mut id = String::new();
    eventually("the conflict to be listed", || {
        let list = s.cli(&["conflicts", "list", "duplex.toml"]);
        match list.lines().find(|l| l.contains("full_name")) {
            Some(line) => {
                assert!(
                    line.contains("Bob (crm)") && line.contains("Bob (erp)"),
                    "{line}"
                );
                id = line
                    .trim_start_matches('#')
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_owned();
                true
            }
            None => false,
        }
    });
    let status = s.cli(&["status", "duplex.toml"]);
    assert!(status.contains("open conflicts: 1"), "{status}");

    let out = s.cli(&[
        "conflicts",
        "resolve",
        "duplex.toml",
        &id,
        "--value",
        "Robert",
    ]);
    assert!(out.contains("the running duplex applies it now"), "{out}");
    eventually("the resolution on both sides", || {
        s.crm_name(2) == "Robert" && s.erp_name("bob@example.com") == "Robert"
    });
    let list = s.cli(&["conflicts", "list", "duplex.toml", "--all"]);
    assert!(list.contains("resolved by local:"), "{list}");
    let audit = s.cli(&["audit", "duplex.toml"]);
    assert!(
        audit.contains(&format!("POST /api/v1/conflicts/{id}/resolve: ok")),
        "{audit}"
    );
    instance.stop();

    // Stopped: the same commands work on the state file itself.
    let status = s.cli(&["status", "duplex.toml"]);
    assert!(status.contains("open conflicts: 0"), "{status}");

    // A dry run shows the write and makes none; the real run after it still makes it.
    s.db("crm.db")
        .execute(
            "UPDATE customers SET full_name = 'Ada (dry)' WHERE id = 1",
            [],
        )
        .unwrap();
    let plan = s.cli(&["run", "duplex.toml", "--dry-run"]);
    assert!(
        plan.contains("update on erp: 1 (full_name 1)")
            && plan.contains("update erp")
            && plan.contains("\"Ada (dry)\""),
        "{plan}"
    );
    assert_eq!(s.erp_name("ada@example.com"), "Ada");
    // Paused with nothing running: `run --once` leaves it paused, across the restart.
    s.cli(&["sync", "pause", "duplex.toml", "people"]);
    s.cli(&["run", "duplex.toml", "--once"]);
    assert_eq!(s.erp_name("ada@example.com"), "Ada");
    let status = s.cli(&["status", "duplex.toml"]);
    assert!(status.contains("paused by local:"), "{status}");
    s.cli(&["sync", "resume", "duplex.toml", "people"]);
    s.cli(&["run", "duplex.toml", "--once"]);
    assert_eq!(s.erp_name("ada@example.com"), "Ada (dry)");
}

#[test]
fn the_cli_works_beside_a_running_run() {
    cli_beside("run");
}

#[test]
fn the_cli_works_beside_a_running_serve() {
    cli_beside("serve");
}

/// A concrete path for a route's pattern.
fn concrete(path: &str) -> String {
    path.replace("{sync}", "people")
        .replace("{id}", "999999")
        .replace("{slot}", "connections.crm")
        .replace("{connection}", "crm")
}

#[test]
fn every_route_answers_its_role_and_refuses_the_others_before_doing_anything() {
    let s = Setup::new();
    let viewer = s.token("viewer");
    let operator = s.token("operator");
    let admin = s.token("admin");
    let revoked = s.token("viewer");
    let listed = s.cli(&["token", "list", "duplex.toml"]);
    let revoked_id = listed
        .lines()
        .last()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    s.cli(&["token", "revoke", "duplex.toml", &revoked_id]);
    assert!(
        !listed.contains(&viewer),
        "secrets are never listed: {listed}"
    );

    let instance = Instance::start(&s, &["serve", "duplex.toml", "--listen", "127.0.0.1:0"]);
    let addr = instance.addr.expect("serve prints its address");
    eventually("the first sync", || s.erp_name("bob@example.com") == "Bob");

    // The served document is the one the routes are checked against.
    let (status, doc) = http(addr, "GET", "/api/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    let doc = json(&doc);
    let tokens = [
        ("viewer", &viewer),
        ("operator", &operator),
        ("admin", &admin),
    ];
    let rank = |r: &str| {
        ["viewer", "operator", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            let url = concrete(path);
            // Calls that would change something are sent with a body that cannot be applied,
            // so that the check itself changes nothing the later checks rely on.
            let body = match path.as_str() {
                "/api/v1/tokens" if method == "POST" => Some(r#"{"role":"nobody","name":"x"}"#),
                "/api/v1/rejected/retry" => Some(r#"{"sync":"people","side":"left","id":"none"}"#),
                "/api/v1/conflicts/{id}/resolve" => Some(r#"{"take":"left"}"#),
                _ => None,
            };
            let url = if url.ends_with("/pause") {
                url.replace("pause", "resume")
            } else {
                url
            };
            let Some(role) = op.get("x-duplex-role").and_then(|r| r.as_str()) else {
                let (status, body) = http(addr, &method, &url, None, body);
                // A webhook needs no token; the SQL connector takes none.
                let expected: &[u16] = if url.starts_with("/hooks/") {
                    &[404]
                } else {
                    &[200, 503]
                };
                assert!(
                    expected.contains(&status),
                    "{method} {url}: {status} {body}"
                );
                checked += 1;
                continue;
            };
            let (status, answer) = http(addr, &method, &url, None, body);
            assert_eq!(status, 401, "{method} {url} without a token: {answer}");
            for (name, token) in tokens {
                let (status, answer) = http(addr, &method, &url, Some(token), body);
                if rank(name) < rank(role) {
                    assert_eq!(status, 403, "{method} {url} as {name}: {answer}");
                    assert!(answer.contains(role), "{answer}");
                } else {
                    assert!(
                        ![401, 403, 404, 405].contains(&status)
                            || (status == 404 && (url.contains("999999") || body.is_some())),
                        "{method} {url} as {name}: {status} {answer}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, duplex::api::ROUTES.len());
    let (status, _) = http(addr, "GET", "/api/v1/nothing", Some(&admin), None);
    assert_eq!(status, 404);
    // A refused call did nothing: the viewer's pause left the sync running.
    let (status, _) = http(
        addr,
        "POST",
        "/api/v1/syncs/people/pause",
        Some(&viewer),
        None,
    );
    assert_eq!(status, 403);
    let (_, sync) = http(addr, "GET", "/api/v1/syncs/people", Some(&viewer), None);
    assert!(json(&sync)["paused"].is_null(), "{sync}");
    // A revoked token is refused like an unknown one (and counts as a failed login).
    let (status, answer) = http(addr, "GET", "/api/v1/syncs", Some(&revoked), None);
    assert_eq!(status, 401, "a revoked token: {answer}");

    // A refused call changed nothing: only the admin's token-create attempt and the others'
    // allowed calls are in the audit log, none of the 401s or 403s.
    let (_, audit) = http(addr, "GET", "/api/v1/audit?limit=1000", Some(&admin), None);
    let audit = json(&audit);
    for e in audit["items"].as_array().unwrap() {
        let who = e["who"].as_str().unwrap();
        assert!(
            !who.contains("viewer"),
            "a viewer changed nothing, so is not in the audit log: {e}"
        );
    }

    // Operators pause and resume; the audit log says who, what and how it went.
    let (status, body) = http(
        addr,
        "POST",
        "/api/v1/syncs/people/pause",
        Some(&operator),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["paused"]["by"]
        .as_str()
        .unwrap()
        .contains("operator"));
    s.db("crm.db")
        .execute(
            "UPDATE customers SET full_name = 'Ada (paused)' WHERE id = 1",
            [],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        s.erp_name("ada@example.com"),
        "Ada",
        "a paused sync writes nothing"
    );
    operate(addr, "resume", &operator);
    eventually("the change after resuming", || {
        s.erp_name("ada@example.com") == "Ada (paused)"
    });
    let (_, audit) = http(addr, "GET", "/api/v1/audit?limit=5", Some(&admin), None);
    let audit = json(&audit);
    let last = &audit["items"][0];
    assert_eq!(
        last["action"], "POST /api/v1/syncs/people/resume",
        "{audit}"
    );
    assert_eq!(last["outcome"], "ok");
    assert!(
        last["who"].as_str().unwrap().starts_with("token:"),
        "{last}"
    );

    // A dry run through the API, while paused: it shows the write, makes none, and the change
    // still arrives once resumed.
    operate(addr, "pause", &operator);
    s.db("crm.db")
        .execute(
            "UPDATE customers SET full_name = 'Ada (dry)' WHERE id = 1",
            [],
        )
        .unwrap();
    let (status, plan) = http(
        addr,
        "POST",
        "/api/v1/syncs/people/dry-run",
        Some(&operator),
        None,
    );
    assert_eq!(status, 200, "{plan}");
    let plan = json(&plan);
    let writes = plan["writes"].as_array().unwrap();
    assert_eq!(writes.len(), 1, "{plan}");
    assert_eq!(writes[0]["side"], "right");
    assert_eq!(writes[0]["op"], "update");
    assert_eq!(writes[0]["fields"]["full_name"], "Ada (dry)");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.erp_name("ada@example.com"), "Ada (paused)");
    operate(addr, "resume", &operator);
    eventually("the change after the dry run", || {
        s.erp_name("ada@example.com") == "Ada (dry)"
    });

    // A conflict settled through the API reaches both sides.
    conflicting_names(&s);
    let mut id = 0;
    eventually("the conflict in the API", || {
        let (_, page) = http(
            addr,
            "GET",
            "/api/v1/conflicts?sync=people",
            Some(&viewer),
            None,
        );
        let page = json(&page);
        match page["items"].as_array().unwrap().first() {
            Some(c) => {
                assert_eq!(c["left"], "Bob (crm)");
                assert_eq!(c["right"], "Bob (erp)");
                assert_eq!(c["base"], "Bob");
                id = c["id"].as_u64().unwrap();
                true
            }
            None => false,
        }
    });
    let resolve = |token: &str, body: &str| {
        let path = format!("/api/v1/conflicts/{id}/resolve");
        http(addr, "POST", &path, Some(token), Some(body))
    };
    let (status, _) = resolve(&viewer, r#"{"take":"right"}"#);
    assert_eq!(status, 403);
    let (status, body) = resolve(&operator, r#"{"take":"right"}"#);
    assert_eq!(status, 200, "{body}");
    eventually("the right side's name on both", || {
        s.crm_name(2) == "Bob (erp)"
    });
    let (status, body) = resolve(&operator, r#"{"take":"left"}"#);
    assert_eq!(status, 409, "a conflict is settled once: {body}");

    // Paged: a page of one, then the next.
    let (_, first) = http(addr, "GET", "/api/v1/activity?limit=1", Some(&viewer), None);
    let first = json(&first);
    assert_eq!(first["items"].as_array().unwrap().len(), 1);
    let next = first["next"].as_str().expect("more than one entry");
    let (_, second) = http(
        addr,
        "GET",
        &format!("/api/v1/activity?limit=1&before={next}"),
        Some(&viewer),
        None,
    );
    assert_ne!(json(&second)["items"][0], first["items"][0]);

    // A config checked through the API: refused with `duplex check`'s own error, the running
    // sync untouched; a good one passes. The config shown hides nothing it need not.
    let good = std::fs::read_to_string(s.path().join("duplex.toml")).unwrap();
    let bad = good.replace("right = \"name\"", "right = \"nom\"");
    std::fs::write(s.path().join("bad.toml"), &bad).unwrap();
    let (ok, _, check) = s.duplex(&["check", "bad.toml"]);
    assert!(!ok);
    let body = serde_json::json!({ "toml": bad }).to_string();
    let validate = |token: &str, body: &str| {
        http(
            addr,
            "POST",
            "/api/v1/config/validate",
            Some(token),
            Some(body),
        )
    };
    let (status, answer) = validate(&operator, &body);
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = validate(&admin, &body);
    assert_eq!(status, 400, "{answer}");
    let error = json(&answer)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("syncs.people.fields[1].right") && error.contains("has no field nom"),
        "{error}"
    );
    let check_says = check.split("bad.toml").last().unwrap().trim();
    assert!(
        error.contains(check_says.lines().next().unwrap()),
        "API: {error}\ncheck: {check}"
    );
    let body = serde_json::json!({ "toml": good }).to_string();
    let (status, answer) = validate(&admin, &body);
    assert_eq!(status, 200, "{answer}");
    s.db("crm.db")
        .execute(
            "UPDATE customers SET full_name = 'Ada (after validate)' WHERE id = 1",
            [],
        )
        .unwrap();
    eventually("the sync still running", || {
        s.erp_name("ada@example.com") == "Ada (after validate)"
    });
    let (status, plugins) = http(addr, "GET", "/api/v1/plugins", Some(&viewer), None);
    assert_eq!(status, 200);
    let plugins = json(&plugins);
    let crm = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["used_by"] == "connections.crm.plugin")
        .expect("the crm connector is listed");
    assert_eq!(crm["source"], "builtin:sql");
    assert!(
        crm["world"]
            .as_str()
            .unwrap()
            .starts_with("duplex:plugin/connector-plugin@"),
        "{crm}"
    );
    assert!(
        crm["inspection"].as_str().unwrap().contains("sha256"),
        "{crm}"
    );
    let (status, shown) = http(addr, "GET", "/api/v1/config", Some(&operator), None);
    assert_eq!(status, 200);
    assert_eq!(json(&shown)["syncs"]["people"]["conflict"], "manual");

    // Failed logins from one address are cut off, even with a good token after: the revoked
    // token above was the first of ten.
    for _ in 0..9 {
        let (status, _) = http(addr, "GET", "/api/v1/syncs", Some("dpx_wrong"), None);
        assert_eq!(status, 401);
    }
    let (status, body) = http(addr, "GET", "/api/v1/syncs", Some(&viewer), None);
    assert_eq!(status, 429, "{body}");
    instance.stop();
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_as_the_sync_runs() {
    let s = Setup::new();
    let viewer = s.token("viewer");
    let instance = Instance::start(&s, &["serve", "duplex.toml", "--listen", "127.0.0.1:0"]);
    let addr = instance.addr.unwrap();
    eventually("the first sync", || s.erp_name("bob@example.com") == "Bob");
    let scrape = || {
        let (status, text) = http(addr, "GET", "/metrics", Some(&viewer), None);
        assert_eq!(status, 200, "{text}");
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        prometheus_parse::Scrape::parse(lines).unwrap()
    };
    let value = |scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]| -> f64 {
        let found = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)));
        match found.map(|s| &s.value) {
            Some(
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v),
            ) => *v,
            other => panic!("{name} {labels:?}: {other:?}"),
        }
    };
    let before = scrape();
    let read = value(
        &before,
        "duplex_changes_read_total",
        &[("sync", "people"), ("side", "left")],
    );
    let writes = value(
        &before,
        "duplex_writes_total",
        &[("sync", "people"), ("kind", "create"), ("outcome", "ok")],
    );
    assert!(
        read >= 2.0 && writes >= 2.0,
        "the first sync read and wrote: {read} {writes}"
    );
    assert_eq!(value(&before, "duplex_links", &[("sync", "people")]), 2.0);
    assert_eq!(
        value(&before, "duplex_filtered_links", &[("sync", "people")]),
        0.0
    );
    assert_eq!(
        value(&before, "duplex_open_conflicts", &[("sync", "people")]),
        0.0
    );
    assert!(
        before.docs.contains_key("duplex_cycle_duration_seconds"),
        "{:?}",
        before.docs
    );

    s.db("crm.db")
        .execute(
            "INSERT INTO customers (email, full_name) VALUES ('cy@example.com', 'Cy')",
            [],
        )
        .unwrap();
    eventually("the new record", || s.erp_name("cy@example.com") == "Cy");
    conflicting_names(&s);
    eventually("the conflict in the metrics", || {
        value(&scrape(), "duplex_open_conflicts", &[("sync", "people")]) == 1.0
    });
    let after = scrape();
    assert!(
        value(
            &after,
            "duplex_changes_read_total",
            &[("sync", "people"), ("side", "left")]
        ) > read
    );
    assert!(
        value(
            &after,
            "duplex_writes_total",
            &[("sync", "people"), ("kind", "create"), ("outcome", "ok")]
        ) > writes
    );
    // The SQL connector's calls are counted per connection, with their durations.
    let calls = |scrape: &prometheus_parse::Scrape| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == "duplex_plugin_calls_total")
            .filter(|s| s.labels.get("connection") == Some("crm"))
            .filter(|s| s.labels.get("outcome") == Some("returned"))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert!(calls(&after) > calls(&before), "no calls counted");
    // Part of the SQL connector's time is its SQL calls', counted apart, and so are the calls.
    let crm = |metric: &str| {
        after
            .samples
            .iter()
            .find(|s| s.metric == metric && s.labels.get("connection") == Some("crm"))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
    };
    let sql = crm("duplex_plugin_sql_seconds_total");
    assert!(sql.is_some_and(|s| s > 0.0), "{sql:?}");
    let sql_calls = crm("duplex_plugin_sql_calls_total");
    assert!(sql_calls.is_some_and(|n| n >= 1.0), "{sql_calls:?}");
    assert!(
        after
            .docs
            .contains_key("duplex_plugin_call_duration_seconds"),
        "{:?}",
        after.docs
    );
    assert_eq!(value(&after, "duplex_links", &[("sync", "people")]), 3.0);
    // What a load has left is a gauge, sampled only while a sync's connectors say: a sync of a
    // few records never has more than a batch waiting.
    assert!(after.docs.contains_key("duplex_remaining_changes"));
    assert!(
        !after
            .samples
            .iter()
            .any(|s| s.metric == "duplex_remaining_changes"),
        "nothing is left: {:?}",
        after.samples
    );

    let (status, body) = http(addr, "GET", "/readyz", None, None);
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(addr, "GET", "/metrics", None, None);
    assert_eq!(status, 401);
    instance.stop();
}

#[test]
fn plain_http_beyond_loopback_is_refused_unless_asked_for() {
    let s = Setup::new();
    let (ok, _, err) = s.duplex(&["serve", "duplex.toml", "--listen", "0.0.0.0:0"]);
    assert!(!ok);
    assert!(
        err.contains("serve.tls_cert") && err.contains("insecure"),
        "{err}"
    );
    assert!(!s.path().join("duplex.redb.sock").exists());
}

#[test]
fn serve_speaks_tls_with_the_certificate_the_config_names() {
    let s = Setup::new();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            // An end-entity certificate, trusted as its own anchor by the client below.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .current_dir(s.path())
        .output();
    let made = match made {
        Ok(m) => m,
        // Without openssl there is no certificate to test with; CI has it.
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped: openssl cannot run ({e})");
            return;
        }
        Err(e) => panic!("openssl makes the test's certificate: {e}"),
    };
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut config = std::fs::read_to_string(s.path().join("duplex.toml")).unwrap();
    config.push_str("\n[serve]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n");
    std::fs::write(s.path().join("duplex.toml"), config).unwrap();
    let instance = Instance::start(&s, &["serve", "duplex.toml", "--listen", "127.0.0.1:0"]);
    assert!(instance.stderr.lock().unwrap().contains("https://"));
    let addr = instance.addr.unwrap();

    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_file(s.path().join("cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let answer = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
                .connect(name, tcp)
                .await
                .expect("the TLS handshake with the configured certificate");
            tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        });
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"up\""), "{answer}");

    // Plain HTTP to the TLS port gets no answer.
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut back = Vec::new();
    let _ = plain.read_to_end(&mut back);
    assert!(!String::from_utf8_lossy(&back).contains("200 OK"));
    instance.stop();
}

/// The rule's config: `pick` is the larger-wins rule, from its file.
fn rule_setup() -> Setup {
    let larger = common::plugin(common::LARGER_WINS);
    Setup::with(
        "rule:pick",
        &format!(
            "\n[rules.pick]\nplugin = \"{}\"\n",
            larger.display().to_string().replace('\\', "\\\\")
        ),
    )
}

fn upload(addr: SocketAddr, token: &str, slot: &str, bytes: &[u8]) -> (u16, String) {
    http_with(
        addr,
        "POST",
        &format!("/api/v1/plugins/{slot}"),
        Some(token),
        Some(("application/wasm", bytes)),
    )
}

/// The rule decisions in the activity log, oldest first: (plugin, winner, left, right, link).
fn rule_decisions(addr: SocketAddr, token: &str) -> Vec<(String, String, String, String, u64)> {
    let (status, body) = http(
        addr,
        "GET",
        "/api/v1/activity?decisions=true&limit=1000",
        Some(token),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    let mut out: Vec<_> = json(&body)["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["op"] == "rule")
        .map(|a| {
            let d = &a["decided"];
            (
                d["plugin"].as_str().unwrap().to_owned(),
                d["winner"].as_str().unwrap().to_owned(),
                text(&d["left"]),
                text(&d["right"]),
                d["link"].as_u64().unwrap(),
            )
        })
        .collect();
    out.reverse();
    out
}

/// Both sides edit Bob's name at once while the sync runs in realtime, the CRM's longer (so
/// larger-wins takes the left, take-right the right), until `enough` says so.
fn write_conflicts(s: &Setup, round: &mut usize, mut enough: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let (crm, erp) = (s.db("crm.db"), s.db("erp.db"));
    while !enough() {
        assert!(
            Instant::now() < deadline,
            "no conflicts after {round} rounds"
        );
        *round += 1;
        let r = *round;
        crm.execute(
            "UPDATE customers SET full_name = ?1 WHERE id = 2",
            [format!("Bob from the crm, round {r:04}")],
        )
        .unwrap();
        erp.execute(
            "UPDATE clients SET name = ?1 WHERE mail = 'bob@example.com'",
            [format!("Bob erp {r:04}")],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(120));
    }
}

#[test]
fn a_rule_swapped_while_its_sync_runs_decides_from_the_next_cycle_and_nothing_is_lost() {
    let s = rule_setup();
    let admin = s.token("admin");
    let instance = Instance::start(&s, &["serve", "duplex.toml", "--listen", "127.0.0.1:0"]);
    let addr = instance.addr.unwrap();
    eventually("the first sync", || s.erp_name("bob@example.com") == "Bob");

    // Writers on both sides; the config's rule decides the first conflicts.
    let mut round = 0;
    write_conflicts(&s, &mut round, || rule_decisions(addr, &admin).len() >= 3);
    let before = rule_decisions(addr, &admin);
    let old = before[0].0.clone();
    assert!(
        old.starts_with("duplex_rule_larger_wins sha256:"),
        "{before:?}"
    );

    // The swap, through the CLI beside the running instance: a rule built for 0.1.0 that
    // takes the right.
    let right = common::plugin(common::V0_1_0_TAKE_RIGHT);
    let out = s.cli(&[
        "plugin",
        "upload",
        "duplex.toml",
        "rules.pick",
        right.to_str().unwrap(),
    ]);
    assert!(out.contains("in use: uploaded v1"), "{out}");
    assert!(
        out.contains("taken at their next cycle by: people"),
        "{out}"
    );
    let (_, plugins) = http(addr, "GET", "/api/v1/plugins", Some(&admin), None);
    let plugins = json(&plugins);
    let pick = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["slot"] == "rules.pick")
        .unwrap();
    assert_eq!(pick["version"], 1, "{pick}");
    assert_eq!(pick["source"], "uploaded v1");
    assert!(
        pick["world"].as_str().unwrap().ends_with("@0.1.0"),
        "{pick}"
    );
    // The config applied again runs the sync as it runs now (the upload included): untouched.
    let config = std::fs::read_to_string(s.path().join("duplex.toml")).unwrap();
    let body = serde_json::json!({ "toml": config }).to_string();
    let (status, applied) = http(
        addr,
        "POST",
        "/api/v1/config/apply",
        Some(&admin),
        Some(&body),
    );
    assert_eq!(status, 200, "{applied}");
    assert_eq!(
        json(&applied)["unchanged"],
        serde_json::json!(["people"]),
        "{applied}"
    );

    write_conflicts(&s, &mut round, || {
        rule_decisions(addr, &admin)
            .iter()
            .filter(|d| d.0 != old)
            .count()
            >= 3
    });
    // Writers stop; both sides settle on one name.
    eventually("both sides to agree", || {
        s.crm_name(2) == s.erp_name("bob@example.com")
    });

    let decisions = rule_decisions(addr, &admin);
    let new = decisions.last().unwrap().0.clone();
    assert!(new.starts_with("rules.pick v1 sha256:"), "{decisions:?}");
    // Each decided by the rule its cycle ran with: the old ones all before the new ones, the
    // old taking the longer (left), the new the right. None decided twice.
    let first_new = decisions.iter().position(|d| d.0 == new).unwrap();
    for (i, d) in decisions.iter().enumerate() {
        if i < first_new {
            assert_eq!(
                (d.0.as_str(), d.1.as_str()),
                (old.as_str(), "left"),
                "{d:?}"
            );
        } else {
            assert_eq!(
                (d.0.as_str(), d.1.as_str()),
                (new.as_str(), "right"),
                "{d:?}"
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for d in &decisions {
        assert!(
            seen.insert((d.2.clone(), d.3.clone(), d.4)),
            "decided twice: {d:?}"
        );
    }
    // None lost: nothing waits for a person, and the last round's right value won.
    let (_, conflicts) = http(addr, "GET", "/api/v1/conflicts", Some(&admin), None);
    assert_eq!(
        json(&conflicts)["items"],
        serde_json::json!([]),
        "{conflicts}"
    );

    // A rollback goes back to the config's file, at the next cycle again.
    let (status, body) = http(
        addr,
        "POST",
        "/api/v1/plugins/rules.pick/rollback",
        Some(&admin),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let body = json(&body);
    assert!(body["versions"]["active"].is_null(), "{body}");
    assert_eq!(body["syncs"], serde_json::json!(["people"]));
    let (_, versions) = http(
        addr,
        "GET",
        "/api/v1/plugins/rules.pick/versions",
        Some(&admin),
        None,
    );
    let versions = json(&versions);
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        1,
        "{versions}"
    );
    assert!(versions["changed_by"]
        .as_str()
        .unwrap()
        .starts_with("token:"));
    write_conflicts(&s, &mut round, || {
        rule_decisions(addr, &admin).last().unwrap().0 == old
    });
    instance.stop();

    // Stopped: the versions are read from the state; v1 put back in use is what the next
    // start runs.
    let out = s.cli(&["plugin", "versions", "duplex.toml", "rules.pick"]);
    assert!(out.contains("in use: the config's own file"), "{out}");
    let out = s.cli(&[
        "plugin",
        "rollback",
        "duplex.toml",
        "rules.pick",
        "--to",
        "1",
    ]);
    assert!(out.contains("in use: uploaded v1"), "{out}");
    let instance = Instance::start(&s, &["serve", "duplex.toml", "--listen", "127.0.0.1:0"]);
    let addr = instance.addr.unwrap();
    let (_, plugins) = http(addr, "GET", "/api/v1/plugins", Some(&admin), None);
    assert!(plugins.contains("uploaded v1"), "{plugins}");
    instance.stop();
}

#[test]
fn uploads_that_do_not_fit_are_refused_with_the_reason_and_change_nothing() {
    let s = rule_setup();
    let admin = s.token("admin");
    let operator = s.token("operator");
    let instance = Instance::start(&s, &["serve", "duplex.toml", "--listen", "127.0.0.1:0"]);
    let addr = instance.addr.unwrap();
    eventually("the first sync", || s.erp_name("bob@example.com") == "Bob");
    let (_, plugins_before) = http(addr, "GET", "/api/v1/plugins", Some(&admin), None);
    let read = |name: &str| std::fs::read(common::plugin(name)).unwrap();

    // A grant the connection lacks: tests/hubspot.rs.
    let refusals: [(&str, Vec<u8>, &[&str]); 4] = [
        (
            "rules.pick",
            b"this is not a component".to_vec(),
            &["not WebAssembly at all"],
        ),
        (
            "rules.pick",
            read(common::SQL),
            &["rules.pick v1", "cannot be loaded as a"],
        ),
        (
            "rules.pick",
            read(common::IMPORTS_UNKNOWN),
            &["imports fixture:elsewhere/store", "does not offer"],
        ),
        (
            "connections.crm",
            read(common::LARGER_WINS),
            &["cannot be loaded as a"],
        ),
    ];
    for (slot, bytes, reasons) in &refusals {
        let (status, body) = upload(addr, &admin, slot, bytes);
        assert_eq!(status, 400, "{slot}: {body}");
        for r in *reasons {
            assert!(body.contains(r), "{slot}: no {r:?} in {body}");
        }
    }
    // Only an admin uploads; a slot the config does not name is not found.
    let (status, _) = upload(addr, &operator, "rules.pick", &read(common::LARGER_WINS));
    assert_eq!(status, 403);
    let (status, body) = upload(addr, &admin, "rules.nope", &read(common::LARGER_WINS));
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("rules.pick"),
        "says what the config names: {body}"
    );

    // Nothing changed: no versions, the same plugins, and the sync still syncs.
    for slot in ["rules.pick", "connections.crm"] {
        let (_, v) = http(
            addr,
            "GET",
            &format!("/api/v1/plugins/{slot}/versions"),
            Some(&admin),
            None,
        );
        assert_eq!(json(&v)["versions"], serde_json::json!([]), "{v}");
    }
    let (_, plugins_after) = http(addr, "GET", "/api/v1/plugins", Some(&admin), None);
    assert_eq!(plugins_before, plugins_after);
    s.db("crm.db")
        .execute("UPDATE customers SET full_name = 'Ada L.' WHERE id = 1", [])
        .unwrap();
    eventually("the edit to sync", || {
        s.erp_name("ada@example.com") == "Ada L."
    });
    // Every refusal is in the audit log with its outcome.
    let (_, audit) = http(addr, "GET", "/api/v1/audit?limit=100", Some(&admin), None);
    let refused = json(&audit)["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .unwrap()
                .starts_with("POST /api/v1/plugins/")
        })
        .filter(|e| e["outcome"] == "400")
        .count();
    assert_eq!(refused, refusals.len());

    // A well-formed connector that fits is accepted: the same SQL connector, uploaded.
    let (status, body) = upload(addr, &admin, "connections.crm", &read(common::SQL));
    assert_eq!(status, 201, "{body}");
    assert_eq!(json(&body)["syncs"], serde_json::json!(["people"]));
    s.db("crm.db")
        .execute(
            "UPDATE customers SET full_name = 'Ada Lovelace' WHERE id = 1",
            [],
        )
        .unwrap();
    eventually("the edit to sync through the uploaded connector", || {
        s.erp_name("ada@example.com") == "Ada Lovelace"
    });
    instance.stop();
}

#[test]
fn a_config_applied_while_syncs_run_changes_only_the_syncs_it_changes() {
    let s = Setup::new();
    let admin = s.token("admin");
    for db in ["crm.db", "erp.db"] {
        s.db(db)
            .execute_batch(
                "CREATE TABLE tags (id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE);",
            )
            .unwrap();
    }
    let instance = Instance::start(&s, &["serve", "duplex.toml", "--listen", "127.0.0.1:0"]);
    let addr = instance.addr.unwrap();
    eventually("the first sync", || s.erp_name("bob@example.com") == "Bob");
    let apply = |toml: &str| {
        let body = serde_json::json!({ "toml": toml }).to_string();
        http(
            addr,
            "POST",
            "/api/v1/config/apply",
            Some(&admin),
            Some(&body),
        )
    };
    let original = std::fs::read_to_string(s.path().join("duplex.toml")).unwrap();

    // Invalid: refused with `duplex check`'s error, the file and the running sync untouched.
    let bad = original.replace("right = \"name\"", "right = \"nom\"");
    std::fs::write(s.path().join("bad.toml"), &bad).unwrap();
    let (ok, _, check) = s.duplex(&["check", "bad.toml"]);
    assert!(!ok);
    let (status, answer) = apply(&bad);
    assert_eq!(status, 400, "{answer}");
    let check_says = check.split("bad.toml").last().unwrap().trim();
    assert!(
        answer.contains(check_says.lines().next().unwrap()),
        "API: {answer}\ncheck: {check}"
    );
    assert_eq!(
        std::fs::read_to_string(s.path().join("duplex.toml")).unwrap(),
        original
    );
    s.db("crm.db")
        .execute("UPDATE customers SET full_name = 'Ada 1' WHERE id = 1", [])
        .unwrap();
    eventually("the sync still running", || {
        s.erp_name("ada@example.com") == "Ada 1"
    });

    // The same config again: nothing to change.
    let (status, answer) = apply(&original);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(json(&answer)["unchanged"], serde_json::json!(["people"]));
    assert_eq!(json(&answer)["changed"], serde_json::json!([]));

    // People's conflicts now go to the last writer, and a new sync joins the tags.
    let changed = original.replace("conflict = \"manual\"", "conflict = \"last-writer-wins\"")
        + r#"
[syncs.tags]
left = "crm.tags"
right = "erp.tags"
match = { field = "label" }
fields = [{ left = "label", right = "label" }]
"#;
    let (status, answer) = apply(&changed);
    assert_eq!(status, 200, "{answer}");
    let answer = json(&answer);
    assert_eq!(answer["changed"], serde_json::json!(["people"]), "{answer}");
    assert_eq!(answer["added"], serde_json::json!(["tags"]), "{answer}");
    assert_eq!(
        std::fs::read_to_string(s.path().join("duplex.toml")).unwrap(),
        changed,
        "the file is the config that runs"
    );
    s.db("crm.db")
        .execute("INSERT INTO tags (label) VALUES ('vip')", [])
        .unwrap();
    let erp_tags = || -> i64 {
        s.db("erp.db")
            .query_row("SELECT count(*) FROM tags", [], |r| r.get(0))
            .unwrap()
    };
    eventually("the added sync to run", || erp_tags() == 1);
    conflicting_names(&s);
    // Which write is the last depends on the capture's clock (a tie goes to the left); that
    // one side won, and no person is asked, is the point.
    eventually("the last writer to win, not a person", || {
        let name = s.crm_name(2);
        name.starts_with("Bob (") && s.erp_name("bob@example.com") == name
    });
    let (_, conflicts) = http(addr, "GET", "/api/v1/conflicts", Some(&admin), None);
    assert_eq!(
        json(&conflicts)["items"],
        serde_json::json!([]),
        "{conflicts}"
    );
    let (_, syncs) = http(addr, "GET", "/api/v1/syncs", Some(&admin), None);
    assert_eq!(json(&syncs).as_array().unwrap().len(), 2, "{syncs}");

    // Back to the original: the tags sync stops, people holds conflicts for a person again.
    let (status, answer) = apply(&original);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        json(&answer)["removed"],
        serde_json::json!(["tags"]),
        "{answer}"
    );
    s.db("crm.db")
        .execute("INSERT INTO tags (label) VALUES ('new')", [])
        .unwrap();
    s.db("crm.db")
        .execute("UPDATE customers SET full_name = 'Ada 2' WHERE id = 1", [])
        .unwrap();
    eventually("people still running", || {
        s.erp_name("ada@example.com") == "Ada 2"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(erp_tags(), 1, "a removed sync does not run");
    let (status, _) = http(addr, "GET", "/api/v1/syncs/tags", Some(&admin), None);
    assert_eq!(status, 404);
    instance.stop();
}
