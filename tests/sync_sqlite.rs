//! End-to-end: SQLite to SQLite through the real sql connector, the real runtime, and the real
//! `duplex` binary where a person would use it.

// Test helpers unwrap too: a panic there is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use duplex::app::App;
use duplex::state::{Choice, State};

const CRM: &str = "
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    full_name TEXT NOT NULL,
    visits INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'lead'
);
INSERT INTO customers (id, email, full_name, visits, status) VALUES
    (1, 'ada@example.com', 'Ada', 1, 'active'),
    (2, 'bob@example.com', 'Bob', 1, 'lead');
";

const ERP: &str = "
CREATE TABLE clients (
    no INTEGER PRIMARY KEY,
    mail TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    visits INTEGER NOT NULL DEFAULT 0,
    code INTEGER NOT NULL DEFAULT 2
);
INSERT INTO clients (no, mail, name, visits, code) VALUES
    (101, 'ADA@example.com', 'Ada', 1, 1);
";

/// A folder with two databases and a config whose policies the test chooses.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(conflict: &str, deletes: &str, extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        rusqlite::Connection::open(dir.path().join("crm.db"))
            .unwrap()
            .execute_batch(CRM)
            .unwrap();
        rusqlite::Connection::open(dir.path().join("erp.db"))
            .unwrap()
            .execute_batch(ERP)
            .unwrap();
        let rule = common::plugin(common::LARGER_WINS);
        let config = format!(
            r#"
[connections.crm]
plugin = "builtin:sql"
config = {{ url = "sqlite://crm.db" }}
grants = {{ sql = ["sqlite://crm.db"] }}

[connections.erp]
plugin = "builtin:sql"
config = {{ url = "sqlite://erp.db" }}
grants = {{ sql = ["sqlite://erp.db"] }}

[rules.larger]
plugin = "{rule}"

[syncs.people]
left = "crm.customers"
right = "erp.clients"
match = {{ field = "email", ignore_case = true }}
conflict = "{conflict}"
deletes = "{deletes}"

[[syncs.people.fields]]
left = "email"
right = "mail"

[[syncs.people.fields]]
left = "full_name"
right = "name"

[[syncs.people.fields]]
left = "visits"
right = "visits"

[[syncs.people.fields]]
left = "status"
right = "code"
values = {{ active = 1, lead = 2 }}
{extra}
"#,
            rule = rule.display()
        );
        std::fs::write(dir.path().join("duplex.toml"), config).unwrap();
        Setup { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("duplex.toml")
    }
    fn crm(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("crm.db")).unwrap()
    }
    fn erp(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("erp.db")).unwrap()
    }

    /// Loads the config afresh (as a restart would) and runs until caught up.
    async fn sync(&self) -> (App, State, usize) {
        let app = App::load(&self.config()).await.expect("config loads");
        let state = app.open_state().expect("state opens");
        let reports = app.run_once(&state, |_, _| {}).await.expect("sync runs");
        let writes = reports.values().flatten().map(|r| r.writes).sum();
        (app, state, writes)
    }

    fn crm_value(&self, email: &str, column: &str) -> String {
        self.crm()
            .query_row(
                &format!("SELECT CAST({column} AS TEXT) FROM customers WHERE email = ?1"),
                [email],
                |r| r.get(0),
            )
            .unwrap_or_else(|_| "<missing>".into())
    }
    fn erp_value(&self, email: &str, column: &str) -> String {
        self.erp()
            .query_row(
                &format!("SELECT CAST({column} AS TEXT) FROM clients WHERE lower(mail) = ?1"),
                [email],
                |r| r.get(0),
            )
            .unwrap_or_else(|_| "<missing>".into())
    }

    /// Both people edit Bob's name, the CRM first.
    fn conflicting_names(&self) {
        self.crm()
            .execute(
                "UPDATE customers SET full_name = 'Bob (crm)' WHERE id = 2",
                [],
            )
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        self.erp().execute("UPDATE clients SET name = 'Bob (erp, later)' WHERE lower(mail) = 'bob@example.com'", []).unwrap();
    }
}

fn duplex(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(args)
        .current_dir(dir)
        .env("XDG_CACHE_HOME", common::cache_dir())
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_first_sync_matches_by_email_and_creates_what_is_missing() {
    let s = Setup::new("last-writer-wins", "propagate", "");
    let (_, state, writes) = s.sync().await;
    // Bob is created in the ERP; Ada is matched (case ignored), not duplicated.
    assert_eq!(s.erp_value("bob@example.com", "name"), "Bob");
    assert_eq!(s.erp_value("bob@example.com", "code"), "2");
    let n: i64 = s
        .erp()
        .query_row("SELECT count(*) FROM clients", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(state.all_links("people").unwrap().len(), 2);
    assert!(writes >= 1);
}

#[tokio::test]
async fn no_write_is_issued_for_an_echo() {
    let s = Setup::new("last-writer-wins", "propagate", "");
    s.sync().await;
    s.crm()
        .execute("UPDATE customers SET full_name = 'Ada L.' WHERE id = 1", [])
        .unwrap();
    let (_, state, writes) = s.sync().await;
    assert_eq!(writes, 1, "one change, one write");
    drop(state);
    // Reading the echo of that write again, and again, writes nothing.
    for _ in 0..3 {
        let (_, _, writes) = s.sync().await;
        assert_eq!(writes, 0);
    }
    let (_, state, _) = s.sync().await;
    // Counted at the source too: the ERP saw exactly one write by Duplex for this change.
    let duplex_writes: i64 = s
        .erp()
        .query_row(
            "SELECT count(*) FROM _duplex_changes WHERE origin = 'duplex:people' AND pk = '101'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        duplex_writes, 2,
        "the initial email alignment and the rename, nothing more"
    );
    assert!(state.stats("people").unwrap().echoes > 0);
}

#[tokio::test]
async fn last_writer_wins_takes_the_later_edit() {
    let s = Setup::new("last-writer-wins", "propagate", "");
    s.sync().await;
    s.conflicting_names();
    s.sync().await;
    assert_eq!(
        s.crm_value("bob@example.com", "full_name"),
        "Bob (erp, later)"
    );
    assert_eq!(s.erp_value("bob@example.com", "name"), "Bob (erp, later)");
}

#[tokio::test]
async fn a_preferred_side_always_wins() {
    for (policy, winner) in [
        ("prefer-left", "Bob (crm)"),
        ("prefer-right", "Bob (erp, later)"),
    ] {
        let s = Setup::new(policy, "propagate", "");
        s.sync().await;
        s.conflicting_names();
        s.sync().await;
        assert_eq!(
            s.crm_value("bob@example.com", "full_name"),
            winner,
            "{policy}"
        );
        assert_eq!(s.erp_value("bob@example.com", "name"), winner, "{policy}");
    }
}

#[tokio::test]
async fn a_custom_rule_component_decides() {
    let s = Setup::new("rule:larger", "propagate", "");
    s.sync().await;
    s.crm()
        .execute("UPDATE customers SET visits = 7 WHERE id = 1", [])
        .unwrap();
    s.erp()
        .execute("UPDATE clients SET visits = 5 WHERE no = 101", [])
        .unwrap();
    s.sync().await;
    assert_eq!(s.crm_value("ada@example.com", "visits"), "7");
    assert_eq!(s.erp_value("ada@example.com", "visits"), "7");
}

/// A rule that answers with a value its field cannot hold decides nothing: the conflict waits
/// for a person with the rule's answer and why it was refused, and both sides keep their value.
#[tokio::test]
async fn a_rule_answering_wrongly_leaves_its_conflict_to_a_person() {
    let wrong = common::plugin(common::WRONG_ANSWER);
    let s = Setup::new(
        "last-writer-wins",
        "propagate",
        &format!("\n[rules.wrong]\nplugin = \"{}\"\n", wrong.display()),
    );
    // The rule decides the visit count only.
    let config = std::fs::read_to_string(s.config()).unwrap().replace(
        "left = \"visits\"\nright = \"visits\"",
        "left = \"visits\"\nright = \"visits\"\nconflict = \"rule:wrong\"",
    );
    std::fs::write(s.config(), config).unwrap();
    s.sync().await;
    s.crm()
        .execute("UPDATE customers SET visits = 7 WHERE id = 1", [])
        .unwrap();
    s.erp()
        .execute("UPDATE clients SET visits = 5 WHERE no = 101", [])
        .unwrap();
    s.sync().await;
    assert_eq!(s.crm_value("ada@example.com", "visits"), "7");
    assert_eq!(s.erp_value("ada@example.com", "visits"), "5");
    let out = duplex(&["conflicts", "list", "duplex.toml"], s.dir.path());
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{list}");
    assert!(
        list.contains("rule wrong answered \"not a number\", which field visits cannot hold"),
        "{list}"
    );
}

#[tokio::test]
async fn a_manual_conflict_holds_only_its_field_until_resolved_through_the_cli() {
    let s = Setup::new("manual", "propagate", "");
    s.sync().await;
    s.conflicting_names();
    s.crm()
        .execute("UPDATE customers SET visits = 9 WHERE id = 2", [])
        .unwrap();
    drop(s.sync().await);
    // The name waits; the visit count flows.
    assert_eq!(s.crm_value("bob@example.com", "full_name"), "Bob (crm)");
    assert_eq!(s.erp_value("bob@example.com", "name"), "Bob (erp, later)");
    assert_eq!(s.erp_value("bob@example.com", "visits"), "9");

    let out = duplex(&["conflicts", "list", "duplex.toml"], s.dir.path());
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{list}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = list
        .lines()
        .find(|l| l.contains("full_name"))
        .expect("the name conflict is listed");
    assert!(
        line.contains("Bob (crm)") && line.contains("Bob (erp, later)"),
        "{line}"
    );
    let id = line
        .trim_start_matches('#')
        .split(' ')
        .next()
        .unwrap()
        .to_owned();

    // A sync of two has no third side to take: refused, and the conflict stays open.
    let out = duplex(
        &[
            "conflicts",
            "resolve",
            "duplex.toml",
            &id,
            "--take",
            "third",
        ],
        s.dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("sync people has no third side"),
        "{err}"
    );
    let out = duplex(
        &[
            "conflicts",
            "resolve",
            "duplex.toml",
            &id,
            "--value",
            "\"Robert\"",
        ],
        s.dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = duplex(&["run", "duplex.toml", "--once"], s.dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.crm_value("bob@example.com", "full_name"), "Robert");
    assert_eq!(s.erp_value("bob@example.com", "name"), "Robert");
    let out = duplex(&["conflicts", "list", "duplex.toml"], s.dir.path());
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        !list.contains("full_name"),
        "the name conflict is closed: {list}"
    );
    let out = duplex(&["conflicts", "list", "duplex.toml", "--all"], s.dir.path());
    let all = String::from_utf8_lossy(&out.stdout);
    assert!(
        all.contains("full_name") && all.contains("resolved by"),
        "{all}"
    );
}

#[tokio::test]
async fn deletes_propagate_when_asked() {
    let s = Setup::new("last-writer-wins", "propagate", "");
    s.sync().await;
    s.erp()
        .execute(
            "DELETE FROM clients WHERE lower(mail) = 'bob@example.com'",
            [],
        )
        .unwrap();
    s.sync().await;
    assert_eq!(s.crm_value("bob@example.com", "full_name"), "<missing>");
}

#[tokio::test]
async fn ignored_deletes_keep_the_other_record_and_stop_syncing_it() {
    let s = Setup::new("last-writer-wins", "ignore", "");
    s.sync().await;
    s.erp()
        .execute(
            "DELETE FROM clients WHERE lower(mail) = 'bob@example.com'",
            [],
        )
        .unwrap();
    s.sync().await;
    assert_eq!(s.crm_value("bob@example.com", "full_name"), "Bob");
    // Later edits of the kept record do not bring the deleted one back.
    s.crm()
        .execute(
            "UPDATE customers SET full_name = 'Bob again' WHERE id = 2",
            [],
        )
        .unwrap();
    s.sync().await;
    assert_eq!(s.erp_value("bob@example.com", "name"), "<missing>");
}

#[tokio::test]
async fn held_deletes_wait_for_approval_and_can_be_approved_or_refused() {
    let s = Setup::new("last-writer-wins", "hold", "");
    s.sync().await;
    s.erp()
        .execute(
            "DELETE FROM clients WHERE lower(mail) = 'bob@example.com'",
            [],
        )
        .unwrap();
    s.erp()
        .execute(
            "DELETE FROM clients WHERE lower(mail) = 'ada@example.com'",
            [],
        )
        .unwrap();
    let (_, state, _) = s.sync().await;
    assert_eq!(
        s.crm_value("bob@example.com", "full_name"),
        "Bob",
        "held, not deleted"
    );
    let open = state.conflicts(false).unwrap();
    assert_eq!(open.len(), 2, "{open:?}");
    let now = chrono::Utc::now().timestamp_micros();
    let bob = open
        .iter()
        .find(|c| c.left_id.as_deref() == Some("2"))
        .unwrap();
    let ada = open
        .iter()
        .find(|c| c.left_id.as_deref() == Some("1"))
        .unwrap();
    // Bob's delete is approved (the deleting side, the ERP, wins); Ada's is refused.
    state
        .resolve_conflict(bob.id, Choice::TakeRight, "test", now)
        .unwrap();
    state
        .resolve_conflict(ada.id, Choice::TakeLeft, "test", now)
        .unwrap();
    drop(state);
    s.sync().await;
    assert_eq!(s.crm_value("bob@example.com", "full_name"), "<missing>");
    assert_eq!(
        s.erp_value("ada@example.com", "name"),
        "Ada",
        "restored in the ERP"
    );
}

#[tokio::test]
async fn a_restart_continues_where_it_stopped() {
    let s = Setup::new("last-writer-wins", "propagate", "");
    let (_, state, _) = s.sync().await;
    let links = state.all_links("people").unwrap();
    drop(state);
    s.crm()
        .execute(
            "INSERT INTO customers (email, full_name) VALUES ('cy@example.com', 'Cy')",
            [],
        )
        .unwrap();
    s.erp()
        .execute("UPDATE clients SET name = 'Ada (erp)' WHERE no = 101", [])
        .unwrap();
    // A new process: config, plugins and state loaded again from the files.
    let (_, state, writes) = s.sync().await;
    assert_eq!(
        writes, 2,
        "only the two new changes are carried, nothing is redone"
    );
    assert_eq!(s.erp_value("cy@example.com", "name"), "Cy");
    assert_eq!(s.crm_value("ada@example.com", "full_name"), "Ada (erp)");
    let after = state.all_links("people").unwrap();
    assert_eq!(after.len(), links.len() + 1);
}

/// Bad input: each is a clear error naming the problem, and neither database changes.
#[tokio::test]
async fn bad_configs_are_refused_before_anything_changes() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "conflict = \"last-writer-wins\"",
            "conflict = \"last-writer-wins\"\ncolour = \"blue\"",
            "colour",
        ),
        (
            "plugin = \"builtin:sql\"\nconfig = { url = \"sqlite://erp.db\" }",
            "plugin = \"missing/erp.wasm\"\nconfig = { url = \"sqlite://erp.db\" }",
            "missing/erp.wasm does not exist",
        ),
        ("right = \"name\"", "right = \"nmae\"", "has no field nmae"),
        (
            "right = \"erp.clients\"",
            "right = \"erp.clinets\"",
            "has no stream clinets",
        ),
        (
            "deletes = \"propagate\"",
            "deletes = \"propagate\"\nfilter = { left = \"visits > 'many'\" }",
            "syncs.people.filter.left: visits is Integer, and \"many\" cannot be one",
        ),
        (
            "deletes = \"propagate\"",
            "deletes = \"propagate\"\nfilter = { right = \"region = 'EU'\" }",
            "region is not one of the sync's mapped fields",
        ),
        (
            "right = \"name\"",
            "right = \"name\"\ncounter = true",
            "syncs.people.fields[1].counter: field full_name of connection crm is Text",
        ),
    ];
    for (from, to, expect) in cases {
        let s = Setup::new("last-writer-wins", "propagate", "");
        let config = std::fs::read_to_string(s.config()).unwrap();
        assert!(config.contains(from), "{from}");
        std::fs::write(s.config(), config.replacen(from, to, 1)).unwrap();
        let out = duplex(&["run", "duplex.toml", "--once"], s.dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(expect), "expected {expect:?} in: {err}");
        assert!(
            err.contains("line ") || expect.contains("does not exist"),
            "names the line: {err}"
        );
        for db in [s.crm(), s.erp()] {
            let installed: i64 = db
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_duplex%' ESCAPE '\\'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(installed, 0, "{expect}: nothing installed");
        }
        assert_eq!(
            s.erp_value("bob@example.com", "name"),
            "<missing>",
            "{expect}: nothing synced"
        );
    }
}

#[tokio::test]
async fn a_corrupt_state_file_is_a_clear_error_and_changes_nothing() {
    let s = Setup::new("last-writer-wins", "propagate", "");
    std::fs::write(
        s.dir.path().join("duplex.redb"),
        b"this is not a redb file, it is a note",
    )
    .unwrap();
    let out = duplex(&["run", "duplex.toml", "--once"], s.dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("duplex.redb") && err.contains("state file"),
        "{err}"
    );
    assert_eq!(s.erp_value("bob@example.com", "name"), "<missing>");
}

#[test]
fn the_demo_runs_and_leaves_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = duplex(&["demo", "--dir", "demo"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("== 6. A delete"), "{stdout}");
    // The dry run changed nothing; the filtered record was left out, then came in.
    assert!(stdout.contains("matched by key: 2"), "{stdout}");
    assert!(stdout.contains("are unchanged byte for byte"), "{stdout}");
    assert!(
        stdout.contains("outside the filters: 1 records left alone"),
        "{stdout}"
    );
    assert!(
        stdout.contains("== 7. A record entering the filter"),
        "{stdout}"
    );
    let erp = rusqlite::Connection::open(dir.path().join("demo/erp.db")).unwrap();
    let qa: i64 = erp
        .query_row(
            "SELECT status_code FROM clients WHERE mail = 'qa@example.com'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(qa, 2, "the QA account entered the filter as a lead");
    for f in ["crm.db", "erp.db", "duplex.toml", "duplex.redb"] {
        assert!(dir.path().join("demo").join(f).exists(), "{f}");
    }
    // The files work with the CLI afterwards: a person's edit is carried by `run --once`.
    let crm = rusqlite::Connection::open(dir.path().join("demo/crm.db")).unwrap();
    crm.execute("UPDATE customers SET full_name = 'Ada L.' WHERE id = 1", [])
        .unwrap();
    let out = duplex(&["run", "demo/duplex.toml", "--once"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let erp = rusqlite::Connection::open(dir.path().join("demo/erp.db")).unwrap();
    let name: String = erp
        .query_row("SELECT name FROM clients WHERE client_no = 1001", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(name, "Ada L.");
}

/// Invariant 5 with the real binary: `duplex run` is killed with SIGKILL at arbitrary moments
/// while people edit both databases, and restarted; at the end both sides hold the same records,
/// none twice, and SIGTERM stops it cleanly.
#[test]
fn sigkill_at_any_moment_is_survivable_and_sigterm_stops_cleanly() {
    let s = Setup::new("last-writer-wins", "propagate", "");
    let open = |name: &str| {
        let c = rusqlite::Connection::open(s.dir.path().join(name)).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        c
    };
    let (crm, erp) = (open("crm.db"), open("erp.db"));
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_duplex"))
            .args(["run", "duplex.toml"])
            .current_dir(s.dir.path())
            .env("XDG_CACHE_HOME", common::cache_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    for round in 0..6 {
        let mut child = spawn();
        for i in 0..20 {
            match next(3) {
                0 => {
                    crm.execute(
                        "INSERT INTO customers (email, full_name) VALUES (?1, ?2)",
                        [
                            format!("r{round}i{i}@example.com"),
                            format!("New {round}.{i}"),
                        ],
                    )
                    .unwrap();
                }
                1 => {
                    erp.execute("UPDATE clients SET visits = visits + 1 WHERE no = (SELECT min(no) FROM clients)", []).unwrap();
                }
                _ => {
                    crm.execute(
                        "UPDATE customers SET full_name = ?1 WHERE id = 2",
                        [format!("Bob {round}.{i}")],
                    )
                    .unwrap();
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(next(30)));
        }
        std::thread::sleep(std::time::Duration::from_millis(next(400)));
        child.kill().unwrap(); // SIGKILL, at whatever the process was doing
        child.wait().unwrap();
    }
    let out = duplex(&["run", "duplex.toml", "--once"], s.dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rows = |c: &rusqlite::Connection, sql: &str| -> Vec<(String, String, i64)> {
        let mut q = c.prepare(sql).unwrap();
        let r = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        r.map(Result::unwrap).collect()
    };
    let left = rows(
        &crm,
        "SELECT lower(email), full_name, visits FROM customers ORDER BY 1",
    );
    let right = rows(
        &erp,
        "SELECT lower(mail), name, visits FROM clients ORDER BY 1",
    );
    assert_eq!(left, right, "both sides converge after the kills");
    let distinct: std::collections::BTreeSet<_> = right.iter().map(|r| r.0.clone()).collect();
    assert_eq!(distinct.len(), right.len(), "no record twice");

    // SIGTERM: the cycle in progress finishes, and the process exits cleanly.
    let child = spawn();
    std::thread::sleep(std::time::Duration::from_millis(800));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stopped cleanly"), "{err}");
}

/// The two SQLite connections of the tests of `notes` on `left.db` and `right.db`.
const NOTES_LEFT_AND_RIGHT: &str = r#"
[connections.left]
plugin = "builtin:sql"
config = { url = "sqlite://left.db" }
grants = { sql = ["sqlite://left.db"] }

[connections.right]
plugin = "builtin:sql"
config = { url = "sqlite://right.db" }
grants = { sql = ["sqlite://right.db"] }
"#;

/// `notes` made by `schema` in `left.db` and `right.db` under `dir`, and `rows` rows in the
/// left one, made by `fill`, an INSERT reading `i` from 1 to `rows` in `n`.
fn notes_on_both(dir: &std::path::Path, schema: &str, fill: &str, rows: u32) {
    let left = rusqlite::Connection::open(dir.join("left.db")).unwrap();
    left.execute_batch(schema).unwrap();
    left.execute(
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) {fill}"
        ),
        [],
    )
    .unwrap();
    rusqlite::Connection::open(dir.join("right.db"))
        .unwrap()
        .execute_batch(schema)
        .unwrap();
}

/// Writes `config` as `duplex.toml` in `dir` and runs its syncs until caught up, telling
/// `progress` of each cycle; returns every cycle's report.
async fn run_once_with(
    dir: &std::path::Path,
    config: &str,
    progress: impl FnMut(&str, &duplex::driver::CycleReport),
) -> std::collections::BTreeMap<String, Vec<duplex::driver::CycleReport>> {
    std::fs::write(dir.join("duplex.toml"), config).unwrap();
    let app = App::load(&dir.join("duplex.toml"))
        .await
        .expect("config loads");
    let state = app.open_state().expect("state opens");
    app.run_once(&state, progress)
        .await
        .expect("the sync runs to the end")
}

/// A first load says what is left: the sql connector counts the table's rows when its first
/// page is full and hands the count down with each page, and each cycle's report carries it
/// (the progress line's "left" and time left). A table read in one page is not counted.
#[tokio::test]
async fn a_first_load_reports_how_many_rows_are_left() {
    let dir = tempfile::tempdir().unwrap();
    notes_on_both(
        dir.path(),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL UNIQUE);",
        "INSERT INTO notes (title) SELECT 'note ' || i FROM n",
        250,
    );
    let config = NOTES_LEFT_AND_RIGHT.to_owned()
        + r#"
[syncs.notes]
left = "left.notes"
right = "right.notes"
schedule = "5m"
batch = 100

[[syncs.notes.fields]]
left = "title"
right = "title"
"#;
    let mut seen = Vec::new();
    run_once_with(dir.path(), &config, |_, r| seen.push((r.more, r.remaining))).await;
    let left: Vec<_> = seen.iter().filter(|(more, _)| *more).map(|s| s.1).collect();
    assert_eq!(left[..2], [Some(150), Some(50)], "{seen:?}");
    // After the last page, the right's log holds the sync's last writes (a batch, which
    // SQLite's reads cannot tell from more): counted, not unknown.
    assert!(left.iter().all(Option::is_some), "{seen:?}");
    assert!(
        seen.iter().all(|(more, left)| *more || left.is_none()),
        "a cycle with nothing more to read reports nothing left: {seen:?}"
    );
    let right = rusqlite::Connection::open(dir.path().join("right.db")).unwrap();
    let n: i64 = right
        .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 250);
}

/// Records too large for a plugin to hold a whole batch of at once: the read that runs the
/// connector out of memory is tried again with fewer, and everything arrives. Before, the read
/// failed the same way every cycle and the sync never moved.
#[tokio::test]
async fn a_batch_too_big_for_the_plugin_is_read_in_smaller_pieces() {
    let dir = tempfile::tempdir().unwrap();
    // 120 notes of 100 KB: 12 MB, which the connector holds about three times over while it
    // reads them (rows, records, the answer), against a 16 MiB limit.
    notes_on_both(
        dir.path(),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL UNIQUE, body TEXT NOT NULL);",
        "INSERT INTO notes (title, body) SELECT 'note ' || i, printf('%d:', i) || hex(zeroblob(50000)) FROM n",
        120,
    );
    let config = NOTES_LEFT_AND_RIGHT.to_owned()
        + r#"
[limits]
memory_mb = 16

[syncs.notes]
left = "left.notes"
right = "right.notes"
match = { field = "title" }
schedule = "5m"

[[syncs.notes.fields]]
left = "title"
right = "title"

[[syncs.notes.fields]]
left = "body"
right = "body"
"#;
    let reports = run_once_with(dir.path(), &config, |_, _| {}).await;
    let cycles = reports.values().map(Vec::len).sum::<usize>();
    assert!(
        cycles > 2,
        "a smaller batch takes several cycles, not {cycles}"
    );
    let right = rusqlite::Connection::open(dir.path().join("right.db")).unwrap();
    right
        .execute(
            "ATTACH ?1 AS l",
            [dir.path().join("left.db").display().to_string()],
        )
        .unwrap();
    let same: i64 = right
        .query_row(
            "SELECT count(*) FROM notes r JOIN l.notes n USING (title) WHERE r.body = n.body",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(same, 120, "every note arrives whole");
}

/// Components built against the 0.1.0 contract keep loading after 0.2.0 added `current.changed-at`:
/// a 0.1.0 connector (its `sql` and `log` imports linked to the same host capabilities) syncs
/// with the built-in one, and a 0.1.0 rule settles their conflicts.
#[tokio::test]
async fn components_built_for_contract_0_1_0_keep_loading_and_syncing() {
    older_components_keep_loading_and_syncing(
        common::V0_1_0_NOTES,
        common::V0_1_0_TAKE_RIGHT,
        "0.1.0",
    )
    .await;
}

/// The same for components built against 0.2.0, after 0.3.0 added webhooks and `signing`.
#[tokio::test]
async fn components_built_for_contract_0_2_0_keep_loading_and_syncing() {
    older_components_keep_loading_and_syncing(
        common::V0_2_0_NOTES,
        common::V0_2_0_TAKE_RIGHT,
        "0.2.0",
    )
    .await;
}

/// The same for components built against 0.3.0, after 0.4.0 showed rules every side of a sync.
#[tokio::test]
async fn components_built_for_contract_0_3_0_keep_loading_and_syncing() {
    older_components_keep_loading_and_syncing(
        common::V0_3_0_NOTES,
        common::V0_3_0_TAKE_RIGHT,
        "0.3.0",
    )
    .await;
}

/// The same for components built against 0.4.0, after 0.5.0 let a connector say where a
/// source transaction ends. The 0.4.0 rule takes the last side: the right, in a sync of two.
#[tokio::test]
async fn components_built_for_contract_0_4_0_keep_loading_and_syncing() {
    older_components_keep_loading_and_syncing(
        common::V0_4_0_NOTES,
        common::V0_4_0_TAKE_LAST,
        "0.4.0",
    )
    .await;
}

/// The same for components built against 0.5.0, after 0.6.0 let a connector say how many
/// changes remain.
#[tokio::test]
async fn components_built_for_contract_0_5_0_keep_loading_and_syncing() {
    older_components_keep_loading_and_syncing(
        common::V0_5_0_NOTES,
        common::V0_5_0_TAKE_LAST,
        "0.5.0",
    )
    .await;
}

async fn older_components_keep_loading_and_syncing(notes: &str, take_right: &str, version: &str) {
    let dir = tempfile::tempdir().unwrap();
    rusqlite::Connection::open(dir.path().join("crm.db"))
        .unwrap()
        .execute_batch(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
             INSERT INTO notes (body) VALUES ('from the crm');",
        )
        .unwrap();
    let old = || rusqlite::Connection::open(dir.path().join("old.db")).unwrap();
    // The fixture's change feed is `rev`, raised by the table's own triggers.
    old().execute_batch(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, rev INTEGER NOT NULL DEFAULT 0);
         CREATE TRIGGER notes_ins AFTER INSERT ON notes BEGIN
             UPDATE notes SET rev = (SELECT max(rev) + 1 FROM notes) WHERE id = NEW.id; END;
         CREATE TRIGGER notes_upd AFTER UPDATE OF body ON notes BEGIN
             UPDATE notes SET rev = (SELECT max(rev) + 1 FROM notes) WHERE id = NEW.id; END;
         INSERT INTO notes (body) VALUES ('from the old connector');",
    )
    .unwrap();
    let config = format!(
        r#"
[connections.crm]
plugin = "builtin:sql"
config = {{ url = "sqlite://crm.db" }}
grants = {{ sql = ["sqlite://crm.db"] }}

[connections.old]
plugin = "{connector}"
config = {{ url = "sqlite://old.db" }}
grants = {{ sql = ["sqlite://old.db"] }}

[rules.right]
plugin = "{rule}"

[syncs.notes]
left = "crm.notes"
right = "old.notes"
conflict = "rule:right"

[[syncs.notes.fields]]
left = "body"
right = "body"
"#,
        connector = common::plugin(notes).display(),
        rule = common::plugin(take_right).display(),
    );
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, config).unwrap();
    let sync = || async {
        let app = App::load(&path)
            .await
            .expect("config with older plugins loads");
        let state = app.open_state().unwrap();
        app.run_once(&state, |_, _| {}).await.expect("sync runs");
    };
    let bodies = |conn: rusqlite::Connection| -> Vec<String> {
        let mut st = conn
            .prepare("SELECT body FROM notes ORDER BY body")
            .unwrap();
        let rows = st.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    let crm = || rusqlite::Connection::open(dir.path().join("crm.db")).unwrap();

    sync().await;
    let both = vec![
        "from the crm".to_owned(),
        "from the old connector".to_owned(),
    ];
    assert_eq!(bodies(crm()), both);
    assert_eq!(bodies(old()), both);

    // Both sides edit the same note: the older rule takes the right side's.
    crm()
        .execute(
            "UPDATE notes SET body = 'crm edit' WHERE body = 'from the crm'",
            [],
        )
        .unwrap();
    old()
        .execute(
            "UPDATE notes SET body = 'old edit' WHERE body = 'from the crm'",
            [],
        )
        .unwrap();
    sync().await;
    let settled = vec!["from the old connector".to_owned(), "old edit".to_owned()];
    assert_eq!(bodies(crm()), settled);
    assert_eq!(bodies(old()), settled);

    for (plugin, line) in [
        (
            notes,
            format!("world     duplex:plugin/connector-plugin@{version} (connector plugin, an older contract"),
        ),
        (
            take_right,
            format!("world     duplex:plugin/resolver-plugin@{version} (resolver plugin, an older contract"),
        ),
    ] {
        let out = duplex(
            &[
                "plugin",
                "inspect",
                &common::plugin(plugin).display().to_string(),
            ],
            dir.path(),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&line), "{stdout}");
        assert!(stdout.contains("verdict   loads as a"), "{stdout}");
    }
}

/// Issue 16, pilot runs: a dry run over two databases never synced reads everything waiting
/// and changes neither file by a single byte (no write, no capture installed, no cursor); the
/// plan it prints and writes out is what the real run then does, write for write. A pilot
/// with --limit then syncs only the first records, and a later run carries on.
#[tokio::test]
async fn a_dry_run_changes_no_byte_and_plans_what_the_real_run_does() {
    let s = Setup::new("last-writer-wins", "propagate", "");
    {
        let crm = s.crm();
        let erp = s.erp();
        for i in 0..30 {
            crm.execute(
                "INSERT INTO customers (email, full_name, visits, status) VALUES (?1, ?2, ?3, 'active')",
                rusqlite::params![format!("p{i}@example.com"), format!("P{i}"), i],
            )
            .unwrap();
        }
        // Ten of them are in the ERP already, four under another name; five only there.
        for i in 0..10 {
            let name = if i < 4 {
                format!("P{i} (erp)")
            } else {
                format!("P{i}")
            };
            erp.execute(
                "INSERT INTO clients (mail, name, visits, code) VALUES (?1, ?2, ?3, 1)",
                rusqlite::params![format!("P{i}@example.com"), name, i],
            )
            .unwrap();
        }
        for i in 0..5 {
            erp.execute(
                "INSERT INTO clients (mail, name, visits, code) VALUES (?1, 'E', 0, 2)",
                [format!("e{i}@example.com")],
            )
            .unwrap();
        }
    }
    let files = || -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(s.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("crm.db")
                    || p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("erp.db")
            })
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        out.sort();
        out
    };
    let before = files();

    let out = duplex(
        &["run", "duplex.toml", "--dry-run", "--plan", "plan.json"],
        s.dir.path(),
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(files() == before, "a dry run changed a database file");
    // Ada and the ten typed into both are matched; Bob and twenty more are created in the
    // ERP, the five only there in the CRM.
    for line in [
        "matched by key: 11",
        "create on crm: 5",
        "create on erp: 21",
        "ambiguous matches: 0",
    ] {
        assert!(printed.contains(line), "{line:?} not in:\n{printed}");
    }
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.dir.path().join("plan.json")).unwrap())
            .unwrap();
    let mut planned: Vec<(String, String, u64, Vec<String>)> = plan["people"]["writes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let mut fields: Vec<String> =
                w["fields"].as_object().unwrap().keys().cloned().collect();
            fields.sort();
            (
                w["side"].as_str().unwrap().to_owned(),
                w["op"].as_str().unwrap().to_owned(),
                w["link"].as_u64().unwrap(),
                fields,
            )
        })
        .collect();
    planned.sort();

    let (_, state, writes) = s.sync().await;
    assert_eq!(
        writes,
        planned.len(),
        "the real run wrote as many as planned"
    );
    let mut done: Vec<(String, String, u64, Vec<String>)> = state
        .activity(Some("people"))
        .unwrap()
        .into_iter()
        .filter(|a| ["create", "update", "delete"].contains(&a.op.as_str()))
        .map(|a| {
            let mut fields = a.fields.clone();
            fields.sort();
            (a.side.as_str().to_owned(), a.op.clone(), a.link, fields)
        })
        .collect();
    done.sort();
    assert_eq!(done, planned, "the real run did what the dry run planned");
    drop(state);

    // A pilot of three: only the first three new customers reach the ERP; then the rest.
    {
        let crm = s.crm();
        for i in 100..110 {
            crm.execute(
                "INSERT INTO customers (email, full_name) VALUES (?1, 'New')",
                [format!("n{i}@example.com")],
            )
            .unwrap();
        }
    }
    let out = duplex(&["run", "duplex.toml", "--limit", "3"], s.dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_in_erp = || -> i64 {
        s.erp()
            .query_row(
                "SELECT count(*) FROM clients WHERE mail LIKE 'n1%'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(new_in_erp(), 3);
    let out = duplex(&["run", "duplex.toml", "--once"], s.dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(new_in_erp(), 10);
}

/// Schema drift: a mapped column dropped on one side and another renamed on the other while
/// the sync runs stop those two fields only; the rest of each record keeps syncing, the
/// changes that could not sync are reported, `status` and `check` say what changed, a restart
/// keeps the stops, and `check --accept` takes the new schema once the config maps it.
#[tokio::test]
async fn a_column_dropped_while_duplex_was_stopped_is_shown_by_status() {
    let s = Setup::new("last-writer-wins", "propagate", "");
    let dir = s.dir.path();
    let (app, state, _) = s.sync().await;
    drop(state);
    drop(app);
    s.erp()
        .execute_batch("ALTER TABLE clients DROP COLUMN visits")
        .unwrap();
    let run = duplex(&["run", "duplex.toml", "--once"], dir);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let status = duplex(&["status", "duplex.toml"], dir);
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(
        out.contains("schema: field visits stopped: column visits is gone from erp.clients"),
        "a drift found as the config loaded was not kept: {out}"
    );
}

#[tokio::test]
async fn a_dropped_and_a_renamed_column_stop_only_their_fields() {
    let s = Setup::new("last-writer-wins", "propagate", "");
    let dir = s.dir.path();
    let (app, state, _) = s.sync().await;
    drop(state);
    assert!(
        dir.join("duplex.redb.schema/people.json").exists(),
        "the first run keeps the schema it synced against"
    );
    // The same process runs on while the ERP loses `visits` and the CRM's full_name becomes
    // display_name.
    s.erp()
        .execute_batch("ALTER TABLE clients DROP COLUMN visits")
        .unwrap();
    s.crm()
        .execute_batch("ALTER TABLE customers RENAME COLUMN full_name TO display_name")
        .unwrap();
    s.crm()
        .execute(
            "UPDATE customers SET visits = 7, status = 'lead', display_name = 'Ada L.' WHERE id = 1",
            [],
        )
        .unwrap();
    s.erp()
        .execute(
            "UPDATE clients SET name = 'Bob B.', code = 1 WHERE lower(mail) = 'bob@example.com'",
            [],
        )
        .unwrap();
    let state = app.open_state().unwrap();
    app.run_once(&state, |_, _| {})
        .await
        .expect("the sync runs on");
    // The other fields synced, both ways.
    assert_eq!(s.erp_value("ada@example.com", "code"), "2");
    assert_eq!(s.crm_value("bob@example.com", "status"), "active");
    // Neither stopped field moved: the ERP's name was not taken from the renamed column, and
    // Bob's new name did not reach the CRM's renamed column.
    assert_eq!(s.erp_value("ada@example.com", "name"), "Ada");
    assert_eq!(s.crm_value("bob@example.com", "display_name"), "Bob");
    // The changes that did not sync are reported with what changed.
    let rejected = state.rejected("people").unwrap();
    let reasons: Vec<String> = rejected.iter().map(|r| r.reason.clone()).collect();
    assert!(
        reasons.iter().any(
            |r| r.contains("field visits did not sync: column visits is gone from erp.clients")
        ),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("field full_name did not sync")
                && r.contains("renamed? map the field to it")),
        "{reasons:?}"
    );
    drop(state);
    drop(app);

    let status = duplex(&["status", "duplex.toml"], dir);
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(
        out.contains("schema: field visits stopped: column visits is gone from erp.clients"),
        "{out}"
    );
    assert!(out.contains("schema: field full_name stopped: column full_name is gone from crm.customers (new column of its type: display_name"), "{out}");

    // A restart loads a config that maps a column no longer there: the field stays stopped,
    // the rest syncs.
    s.crm()
        .execute("UPDATE customers SET status = 'active' WHERE id = 1", [])
        .unwrap();
    let (_, state, _) = s.sync().await;
    drop(state);
    assert_eq!(s.erp_value("ada@example.com", "code"), "1");
    let check = duplex(&["check", "duplex.toml"], dir);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{out}");
    assert!(out.contains("schema: field visits stopped"), "{out}");

    // Accepting is refused while the config still maps a column that is gone.
    let accept = duplex(&["check", "duplex.toml", "--accept"], dir);
    let err = String::from_utf8_lossy(&accept.stderr);
    assert!(!accept.status.success());
    assert!(
        err.contains("syncs.people.fields[1].left: column full_name is gone from crm.customers"),
        "{err}"
    );
    // The person maps the renamed column (keeping the field's common name, so that its links
    // carry on) and drops the visits field, then accepts.
    let config = std::fs::read_to_string(s.config()).unwrap();
    let config = config
        .replace(
            "left = \"full_name\"",
            "name = \"full_name\"\nleft = \"display_name\"",
        )
        .replace(
            "[[syncs.people.fields]]\nleft = \"visits\"\nright = \"visits\"\n",
            "",
        );
    std::fs::write(s.config(), config).unwrap();
    let accept = duplex(&["check", "duplex.toml", "--accept"], dir);
    let out = String::from_utf8_lossy(&accept.stdout);
    assert!(
        accept.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&accept.stderr)
    );
    assert!(out.contains("sync people: schema accepted"), "{out}");
    // The name syncs again: the next edit of it goes through, and nothing is stopped.
    s.erp()
        .execute(
            "UPDATE clients SET name = 'Ada Lovelace' WHERE no = 101",
            [],
        )
        .unwrap();
    let (_, state, _) = s.sync().await;
    drop(state);
    assert_eq!(
        s.crm_value("ada@example.com", "display_name"),
        "Ada Lovelace"
    );
    let status = duplex(&["status", "duplex.toml"], dir);
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(!out.contains("stopped"), "{out}");
}

/// Three databases joined by two syncs through the middle one (`ab` and `bc`): a change made in
/// A reaches C as `ab`'s write to B, which `bc` dates by the change it relays, not by when it
/// was written. So of two edits racing at the two ends, the later wins everywhere. A third
/// sync closing the cycle (`ca`) is refused.
#[tokio::test]
async fn a_chain_of_syncs_through_a_shared_database_keeps_the_later_edit_and_refuses_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let db = |n: &str| rusqlite::Connection::open(dir.path().join(format!("{n}.db"))).unwrap();
    let mut config = String::new();
    for n in ["a", "b", "c"] {
        db(n)
            .execute_batch(
                "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT)",
            )
            .unwrap();
        config.push_str(&format!(
            "[connections.{n}]\nplugin = \"builtin:sql\"\nconfig = {{ url = \"sqlite://{n}.db\" }}\ngrants = {{ sql = [\"sqlite://{n}.db\"] }}\n\n"
        ));
    }
    let sync = |name: &str, l: &str, r: &str| {
        format!(
            "[syncs.{name}]\nleft = \"{l}.people\"\nright = \"{r}.people\"\nmatch = {{ field = \"email\" }}\nconflict = \"last-writer-wins\"\nfields = [{{ left = \"email\", right = \"email\" }}, {{ left = \"name\", right = \"name\" }}]\n\n"
        )
    };
    config.push_str(&sync("ab", "a", "b"));
    config.push_str(&sync("bc", "b", "c"));
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, &config).unwrap();
    let run = || async {
        let app = App::load(&path).await.expect("config loads");
        let state = app.open_state().expect("state opens");
        // Twice: `ab` runs before `bc`, so what `bc` writes to B reaches A in the second.
        for _ in 0..2 {
            app.run_once(&state, |_, _| {}).await.expect("syncs run");
        }
    };
    let names = || {
        ["a", "b", "c"].map(|n| {
            db(n)
                .query_row(
                    "SELECT name FROM people WHERE email = 'ada@example.com'",
                    [],
                    |r| r.get::<_, String>(0),
                )
                .unwrap_or_else(|e| panic!("{n}: {e}"))
        })
    };
    db("a")
        .execute(
            "INSERT INTO people (email, name) VALUES ('ada@example.com', 'Ada')",
            [],
        )
        .unwrap();
    run().await;
    assert_eq!(names(), ["Ada", "Ada", "Ada"]);

    db("a")
        .execute(
            "UPDATE people SET name = 'Ada from A' WHERE email = 'ada@example.com'",
            [],
        )
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    db("c")
        .execute(
            "UPDATE people SET name = 'Ada from C' WHERE email = 'ada@example.com'",
            [],
        )
        .unwrap();
    run().await;
    assert_eq!(names(), ["Ada from C", "Ada from C", "Ada from C"]);
    let count = |n: &str| -> i64 {
        db(n)
            .query_row("SELECT count(*) FROM people", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(["a", "b", "c"].map(count), [1, 1, 1], "a record twice");

    config.push_str(&sync("ca", "c", "a"));
    std::fs::write(&path, &config).unwrap();
    let out = duplex(&["check", "duplex.toml"], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a cycle was accepted: {err}");
    assert!(
        err.contains("syncs.ca.right")
            && err.contains("syncs bc, ab, ca join c.people and a.people in a cycle"),
        "{err}"
    );
}

/// One sync over three SQLite databases, each naming the fields its own way (issue 16): one
/// link per record. Records already in two systems are matched, not copied twice; an edit in
/// any reaches both others; of racing edits the later wins, or the first side of the field's
/// order; a counter adds the changes of all three; a delete reaches all three; once caught
/// up, nothing is written again. `manual` and rules see all three values and may take any.
#[tokio::test]
async fn one_sync_keeps_a_record_the_same_in_three_databases() {
    let dir = tempfile::tempdir().unwrap();
    let db = |n: &str| rusqlite::Connection::open(dir.path().join(format!("{n}.db"))).unwrap();
    let tables = [
        ("crm", "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT, phone TEXT, seats INTEGER NOT NULL DEFAULT 0, tier TEXT)"),
        ("erp", "CREATE TABLE customers (id INTEGER PRIMARY KEY, mail TEXT NOT NULL, full_name TEXT, tel TEXT, licences INTEGER NOT NULL DEFAULT 0, level INTEGER)"),
        ("desk", "CREATE TABLE users (id INTEGER PRIMARY KEY, email_address TEXT NOT NULL, display TEXT, phone TEXT, seats INTEGER NOT NULL DEFAULT 0, plan TEXT)"),
    ];
    let mut config = String::new();
    for (n, table) in tables {
        db(n).execute_batch(table).unwrap();
        config.push_str(&format!(
            "[connections.{n}]\nplugin = \"builtin:sql\"\nconfig = {{ url = \"sqlite://{n}.db\" }}\ngrants = {{ sql = [\"sqlite://{n}.db\"] }}\n\n"
        ));
    }
    config.push_str(
        r#"[syncs.people]
left = "crm.people"
right = "erp.customers"
also = ["desk.users"]
match = { field = "email", ignore_case = true }
fields = [
  { name = "email", left = "email", right = "mail", also = ["email_address"] },
  { name = "name", left = "name", right = "full_name", also = ["display"] },
  { name = "phone", left = "phone", right = "tel", also = ["phone"], conflict = "order: erp, crm, desk" },
  { name = "seats", left = "seats", right = "licences", also = ["seats"], counter = true },
  { name = "tier", left = "tier", right = "level", also = ["plan"], values = { gold = [1, "G"], silver = [2, "S"] } },
]
"#,
    );
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, &config).unwrap();
    let app = App::load(&path).await.expect("config loads");
    let state = app.open_state().expect("state opens");
    let run = || async {
        let mut writes = 0;
        for _ in 0..2 {
            let reports = app
                .run_once(&state, |_, _| {})
                .await
                .expect("the sync runs");
            writes += reports.values().flatten().map(|r| r.writes).sum::<usize>();
        }
        writes
    };
    let rows = |n: &str| -> Vec<(String, Option<String>, Option<String>)> {
        let (table, email, name, phone) = match n {
            "crm" => ("people", "email", "name", "phone"),
            "erp" => ("customers", "mail", "full_name", "tel"),
            _ => ("users", "email_address", "display", "phone"),
        };
        let c = db(n);
        let mut q = c
            .prepare(&format!(
                "SELECT lower({email}), {name}, {phone} FROM {table} ORDER BY lower({email})"
            ))
            .unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let same_everywhere = || {
        let crm = rows("crm");
        assert_eq!(rows("erp"), crm, "erp differs from crm");
        assert_eq!(rows("desk"), crm, "desk differs from crm");
        crm
    };
    let exec = |n: &str, sql: &str| {
        db(n).execute(sql, []).unwrap();
        // Change times are the databases' clocks, to the millisecond.
        std::thread::sleep(std::time::Duration::from_millis(20));
    };

    // Ada is in the CRM and (typed otherwise) in the helpdesk; Bob only in the ERP.
    exec(
        "crm",
        "INSERT INTO people (email, name, seats) VALUES ('ada@example.com', 'Ada', 10)",
    );
    exec(
        "desk",
        "INSERT INTO users (email_address, display, seats) VALUES ('ADA@example.com', 'Ada', 10)",
    );
    exec(
        "erp",
        "INSERT INTO customers (mail, full_name, tel) VALUES ('bob@example.com', 'Bob', '555')",
    );
    run().await;
    let all = same_everywhere();
    assert_eq!(all.len(), 2, "a record twice or missing: {all:?}");

    // An edit in one reaches both others.
    exec(
        "desk",
        "UPDATE users SET display = 'Ada Lovelace' WHERE email_address LIKE 'ada@%'",
    );
    run().await;
    assert_eq!(same_everywhere()[0].1.as_deref(), Some("Ada Lovelace"));

    // Racing edits of the name: the later (the ERP's) wins everywhere.
    exec(
        "crm",
        "UPDATE people SET name = 'Ada (crm)' WHERE email LIKE 'ada@%'",
    );
    exec(
        "desk",
        "UPDATE users SET display = 'Ada (desk)' WHERE email_address LIKE 'ada@%'",
    );
    exec(
        "erp",
        "UPDATE customers SET full_name = 'Ada (erp)' WHERE mail LIKE 'ada@%'",
    );
    run().await;
    assert_eq!(same_everywhere()[0].1.as_deref(), Some("Ada (erp)"));

    // The phone's order puts the ERP first, then the CRM: the CRM's earlier edit beats the
    // helpdesk's later one, and the ERP's beats both.
    exec(
        "crm",
        "UPDATE people SET phone = '111' WHERE email LIKE 'ada@%'",
    );
    exec(
        "desk",
        "UPDATE users SET phone = '333' WHERE email_address LIKE 'ada@%'",
    );
    run().await;
    assert_eq!(same_everywhere()[0].2.as_deref(), Some("111"));
    exec(
        "desk",
        "UPDATE users SET phone = '334' WHERE email_address LIKE 'ada@%'",
    );
    exec(
        "erp",
        "UPDATE customers SET tel = '222' WHERE mail LIKE 'ada@%'",
    );
    exec(
        "crm",
        "UPDATE people SET phone = '112' WHERE email LIKE 'ada@%'",
    );
    run().await;
    assert_eq!(same_everywhere()[0].2.as_deref(), Some("222"));

    // Seats, a counter, used on all three at once: every change counts, 10 - 1 - 2 - 3.
    let seats = |n: &str| -> Vec<i64> {
        let (table, email, seats) = match n {
            "crm" => ("people", "email", "seats"),
            "erp" => ("customers", "mail", "licences"),
            _ => ("users", "email_address", "seats"),
        };
        let c = db(n);
        let mut q = c
            .prepare(&format!(
                "SELECT {seats} FROM {table} ORDER BY lower({email})"
            ))
            .unwrap();
        q.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(seats("erp")[0], 10);
    exec(
        "crm",
        "UPDATE people SET seats = seats - 1 WHERE email LIKE 'ada@%'",
    );
    exec(
        "erp",
        "UPDATE customers SET licences = licences - 2 WHERE mail LIKE 'ada@%'",
    );
    exec(
        "desk",
        "UPDATE users SET seats = seats - 3 WHERE email_address LIKE 'ada@%'",
    );
    run().await;
    for n in ["crm", "erp", "desk"] {
        assert_eq!(seats(n)[0], 4, "{n}");
    }

    // Values translate between all three: the helpdesk's "S" is the CRM's silver and the ERP's
    // 2, and the ERP's 1 is gold and "G".
    let tiers = || {
        let one = |n: &str, sql: &str| -> Option<String> {
            db(n).query_row(sql, [], |r| r.get(0)).unwrap()
        };
        (
            one("crm", "SELECT tier FROM people WHERE email LIKE 'ada@%'"),
            one(
                "erp",
                "SELECT CAST(level AS TEXT) FROM customers WHERE mail LIKE 'ada@%'",
            ),
            one(
                "desk",
                "SELECT plan FROM users WHERE email_address LIKE 'ada@%'",
            ),
        )
    };
    exec(
        "desk",
        "UPDATE users SET plan = 'S' WHERE email_address LIKE 'ada@%'",
    );
    run().await;
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(tiers(), (some("silver"), some("2"), some("S")));
    exec(
        "erp",
        "UPDATE customers SET level = 1 WHERE mail LIKE 'ada@%'",
    );
    run().await;
    assert_eq!(tiers(), (some("gold"), some("1"), some("G")));

    // A delete in one reaches both others.
    exec(
        "erp",
        "DELETE FROM customers WHERE mail = 'bob@example.com'",
    );
    run().await;
    assert_eq!(same_everywhere().len(), 1);

    // Caught up: nothing is written again (no echo).
    assert_eq!(run().await, 0, "writes after convergence");
    drop(state);
    drop(app);

    // With `manual`, racing edits wait for a person, who sees all three values and takes one.
    let manual = config.replace(
        "also = [\"display\"] }",
        "also = [\"display\"], conflict = \"manual\" }",
    );
    std::fs::write(&path, &manual).unwrap();
    exec(
        "crm",
        "UPDATE people SET name = 'Ada C' WHERE email LIKE 'ada@%'",
    );
    exec(
        "desk",
        "UPDATE users SET display = 'Ada D' WHERE email_address LIKE 'ada@%'",
    );
    let cli = |args: &[&str]| {
        let out = duplex(args, dir.path());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    cli(&["run", "duplex.toml", "--once"]);
    let list = cli(&["conflicts", "list", "duplex.toml"]);
    let line = list
        .lines()
        .find(|l| l.contains("name:"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains(r#"left "Ada C", right "Ada (erp)", third "Ada D""#)
            && line.contains("crm and desk all changed name"),
        "{line}"
    );
    assert_eq!(
        rows("erp")[0].1.as_deref(),
        Some("Ada (erp)"),
        "a held field is not written"
    );
    let id = line.trim_start_matches('#').split(' ').next().unwrap();
    cli(&["conflicts", "resolve", "duplex.toml", id, "--take", "third"]);
    cli(&["run", "duplex.toml", "--once"]);
    assert_eq!(same_everywhere()[0].1.as_deref(), Some("Ada D"));

    // A rule sees all three values and may take any side: of racing names the longest wins,
    // here the helpdesk's (the third side).
    let ruled = |rule: &str| {
        format!(
            "[rules.pick]\nplugin = \"{}\"\n\n{}",
            common::plugin(rule).display(),
            config.replace(
                "also = [\"display\"] }",
                "also = [\"display\"], conflict = \"rule:pick\" }",
            )
        )
    };
    std::fs::write(&path, ruled(common::LARGER_WINS)).unwrap();
    let checked = cli(&["check", "duplex.toml"]);
    assert!(!checked.contains("warning"), "{checked}");
    exec(
        "crm",
        "UPDATE people SET name = 'Ada K' WHERE email LIKE 'ada@%'",
    );
    exec(
        "desk",
        "UPDATE users SET display = 'Ada King, Countess' WHERE email_address LIKE 'ada@%'",
    );
    exec(
        "erp",
        "UPDATE customers SET full_name = 'A. King' WHERE mail LIKE 'ada@%'",
    );
    cli(&["run", "duplex.toml", "--once"]);
    cli(&["run", "duplex.toml", "--once"]);
    assert_eq!(
        same_everywhere()[0].1.as_deref(),
        Some("Ada King, Countess")
    );
    // A rule built for 0.3.0 sees two sides: its conflicts in a sync of three wait for a
    // person, saying so, rather than being decided between two of the sides.
    std::fs::write(&path, ruled(common::V0_3_0_TAKE_RIGHT)).unwrap();
    // `check` says so before anything runs.
    let checked = cli(&["check", "duplex.toml"]);
    assert!(
        checked.contains("warning: rule pick was built for duplex:plugin@0.3.0")
            && checked.contains("this sync has 3, so its conflicts wait for a person"),
        "{checked}"
    );
    exec(
        "crm",
        "UPDATE people SET name = 'Ada' WHERE email LIKE 'ada@%'",
    );
    exec(
        "erp",
        "UPDATE customers SET full_name = 'Ada L' WHERE mail LIKE 'ada@%'",
    );
    cli(&["run", "duplex.toml", "--once"]);
    let list = cli(&["conflicts", "list", "duplex.toml"]);
    assert!(
        list.contains("rule left it to a person")
            && list.contains("rebuild the rule against duplex:plugin@0.6.0"),
        "{list}"
    );
    assert_eq!(rows("desk")[0].1.as_deref(), Some("Ada King, Countess"));
    let id = list.trim_start_matches('#').split(' ').next().unwrap();
    cli(&["conflicts", "resolve", "duplex.toml", id, "--take", "right"]);
    cli(&["run", "duplex.toml", "--once"]);
    assert_eq!(same_everywhere()[0].1.as_deref(), Some("Ada L"));
    std::fs::write(&path, &config).unwrap();

    let out = duplex(&["check", "duplex.toml"], dir.path());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("crm.people <-> erp.customers <-> desk.users"),
        "{said}"
    );

    // Values name one per other side, in order: a sync of three takes two.
    std::fs::write(&path, config.replace("gold = [1, \"G\"]", "gold = 1")).unwrap();
    let out = duplex(&["check", "duplex.toml"], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("syncs.people.fields[4].values")
            && err.contains("gold: a sync of 3 sides maps each left value to a list of the 2 others' values, in order (erp.customers, desk.users)"),
        "{err}"
    );

    // A field that does not name its column on the third side is refused, with where.
    std::fs::write(&path, config.replace(", also = [\"phone\"]", "")).unwrap();
    let out = duplex(&["check", "duplex.toml"], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("syncs.people.fields[2].also")
            && err.contains("names 0 fields for the sync's 1 further side (desk.users)"),
        "{err}"
    );
    // What a sync of three sides cannot do yet is refused, with what to use instead.
    std::fs::write(
        &path,
        config.replace(
            "conflict = \"order: erp, crm, desk\"",
            "conflict = \"prefer-left\"",
        ),
    )
    .unwrap();
    let out = duplex(&["check", "duplex.toml"], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("syncs.people.fields[2].conflict")
            && err.contains("prefer-left decides between two sides"),
        "{err}"
    );
    std::fs::write(
        &path,
        config.replace("order: erp, crm, desk", "order: erp, shop"),
    )
    .unwrap();
    let out = duplex(&["check", "duplex.toml"], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("order names \"shop\", which is none of the sync's sides (crm.people, erp.customers, desk.users)"),
        "{err}"
    );
}

/// An idle realtime sync of SQLite runs no cycle until its database changes, and then wakes at
/// once: the host watches the database file, and every sync watching it hears of the change
/// (here two syncs read the same table, one to each of two copies). Before, idle SQLite syncs
/// polled every 2 s; now a quiet sync runs a cycle only every `Schedule::REALTIME_QUIET` (five
/// minutes), so the change can only arrive in time through the announcement.
///
/// Idle, the syncs keep no plugin instance alive: the host makes the connector's wait again
/// itself (`PluginSide::watch`). Before, each side of each idle sync held an instance and a
/// database connection through its wait, about 1 MB a sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sqlite_syncs_wake_on_a_change_to_their_file_and_every_one_hears_it() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["src.db", "one.db", "two.db"] {
        let c = rusqlite::Connection::open(dir.path().join(file)).unwrap();
        c.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE)")
            .unwrap();
    }
    // Connection names no other test in this binary uses: the instance counts are the
    // process's.
    let mut config = String::new();
    for name in ["src", "one", "two"] {
        config.push_str(&format!(
            "[connections.idle_{name}]\nplugin = \"builtin:sql\"\nconfig = {{ url = \"sqlite://{name}.db\" }}\ngrants = {{ sql = [\"sqlite://{name}.db\"] }}\n\n"
        ));
    }
    for to in ["one", "two"] {
        config.push_str(&format!(
            "[syncs.to_{to}]\nleft = \"idle_src.notes\"\nright = \"idle_{to}.notes\"\nschedule = \"realtime\"\nmatch = {{ field = \"body\" }}\nfields = [{{ left = \"body\", right = \"body\" }}]\n\n"
        ));
    }
    let path = dir.path().join("duplex.toml");
    std::fs::write(&path, config).unwrap();
    let app = App::load(&path).await.unwrap();
    let state = std::sync::Arc::new(app.open_state().unwrap());
    let count = |file: &str, body: &str| {
        rusqlite::Connection::open(dir.path().join(file))
            .unwrap()
            .query_row("SELECT count(*) FROM notes WHERE body = ?1", [body], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cycles = std::sync::atomic::AtomicUsize::new(0);
    let edit = async {
        // Idle: both syncs caught up (nothing to do) and past their first waits.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let before = cycles.load(std::sync::atomic::Ordering::SeqCst);
        let mut most_alive = 0;
        for _ in 0..30 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            most_alive = most_alive.max(common::instances_alive("idle_"));
        }
        let idle_cycles = cycles.load(std::sync::atomic::Ordering::SeqCst) - before;
        rusqlite::Connection::open(dir.path().join("src.db"))
            .unwrap()
            .execute("INSERT INTO notes (body) VALUES ('hello')", [])
            .unwrap();
        let t = std::time::Instant::now();
        while count("one.db", "hello") + count("two.db", "hello") < 2
            && t.elapsed() < std::time::Duration::from_secs(30)
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = stop_tx.send(());
        (idle_cycles, most_alive)
    };
    let run = app.run(
        &state,
        async {
            let _ = stop_rx.await;
        },
        |_, _| {
            cycles.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        },
    );
    let ((idle_cycles, most_alive), ran) = tokio::join!(edit, run);
    ran.unwrap();
    assert_eq!(count("one.db", "hello"), 1, "the first sync woke");
    assert_eq!(
        count("two.db", "hello"),
        1,
        "the second sync, watching the same file, woke too"
    );
    assert_eq!(idle_cycles, 0, "an idle sync ran cycles without a change");
    assert_eq!(
        most_alive, 0,
        "idle syncs kept plugin instances alive through their waits"
    );
}
