//! Conflict rules written in JavaScript and Python, built from source with componentize-js and
//! componentize-py in their default settings (whose runtimes import WASI files, sockets and
//! HTTP), load as they are and decide conflicts in a real sync; a rule that throws decides
//! nothing and leaves its conflict to a person with the thrown message.
//!
//! The tools are pinned in `tools/componentize/` and installed by `.ci/run`. Without them these
//! tests say so and pass on a developer's machine; under CI a missing tool is a failure.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use duplex::app::App;
use duplex::state::ConflictStatus;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool from `tools/componentize`, or None (and why) when it is not installed.
fn tool(relative: &str) -> Option<PathBuf> {
    let path = root().join("tools/componentize").join(relative);
    if path.exists() {
        return Some(path);
    }
    let hint = "install it with `npm ci --prefix tools/componentize` and \
                `python3 -m venv tools/componentize/.venv && tools/componentize/.venv/bin/pip install -r tools/componentize/requirements.txt` (as .ci/run does)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{} is missing: {hint}", path.display());
    }
    eprintln!("skipped: {} is missing; {hint}", path.display());
    None
}

/// Builds a rule with `command` into `out`, unless `out` is newer than `source`.
fn build(source: &Path, out: &Path, command: &mut Command) {
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    // A rule is rebuilt when its source or the contract it is built against changed.
    let written = fresh(source).max(fresh(&root().join("wit/resolver.wit")));
    if let (Some(built), Some(written)) = (fresh(out), written) {
        if built > written {
            return;
        }
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success() && out.exists(),
        "building {} failed:\n{}\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn js_rule() -> Option<PathBuf> {
    let componentize = tool("node_modules/.bin/componentize-js")?;
    let source = root().join("plugins/rules-js/longer-wins/rule.js");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("longer-wins-js.wasm");
    build(
        &source,
        &out,
        Command::new(componentize)
            .arg("--wit")
            .arg(root().join("wit"))
            .args(["--world-name", "resolver-plugin", "-o"])
            .arg(&out)
            .arg(&source),
    );
    Some(out)
}

fn python_rule() -> Option<PathBuf> {
    let componentize = tool(".venv/bin/componentize-py")?;
    let dir = root().join("plugins/rules-py/shorter-wins");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shorter-wins-py.wasm");
    build(
        &dir.join("app.py"),
        &out,
        Command::new(componentize)
            .arg("-d")
            .arg(root().join("wit"))
            .args(["-w", "resolver-plugin", "componentize", "app", "-o"])
            .arg(&out)
            .current_dir(&dir),
    );
    Some(out)
}

const SCHEMA: &str = "CREATE TABLE notes (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, \
                      note TEXT NOT NULL, boom TEXT NOT NULL);
                      INSERT INTO notes VALUES (1, 'ada@example.com', 'first', 'x');";

/// SQLite databases (`a.db`, `b.db`, and `c.db` in a sync of three) with the same note, synced
/// with `rule` deciding every conflict.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(rule: &Path) -> Setup {
        Setup::with_sides(rule, &["a", "b"])
    }

    fn with_sides(rule: &Path, sides: &[&str]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::new();
        for db in sides {
            rusqlite::Connection::open(dir.path().join(format!("{db}.db")))
                .unwrap()
                .execute_batch(SCHEMA)
                .unwrap();
            config.push_str(&format!(
                "[connections.{db}]\nplugin = \"builtin:sql\"\nconfig = {{ url = \"sqlite://{db}.db\" }}\ngrants = {{ sql = [\"sqlite://{db}.db\"] }}\n\n"
            ));
        }
        let also = |column: &str| {
            let more: Vec<String> = sides[2..].iter().map(|_| format!("\"{column}\"")).collect();
            format!("also = [{}]", more.join(", "))
        };
        let more: Vec<String> = sides[2..]
            .iter()
            .map(|s| format!("\"{s}.notes\""))
            .collect();
        config.push_str(&format!(
            r#"[rules.polyglot]
plugin = "{rule}"

[syncs.notes]
left = "a.notes"
right = "b.notes"
also = [{more}]
match = {{ field = "email" }}
conflict = "rule:polyglot"
fields = [
    {{ left = "email", right = "email", {email} }},
    {{ left = "note", right = "note", {note} }},
    {{ left = "boom", right = "boom", {boom} }},
]
"#,
            rule = rule.display(),
            more = more.join(", "),
            email = also("email"),
            note = also("note"),
            boom = also("boom"),
        ));
        std::fs::write(dir.path().join("duplex.toml"), config).unwrap();
        Setup { dir }
    }

    fn edit(&self, db: &str, column: &str, value: &str) {
        rusqlite::Connection::open(self.dir.path().join(db))
            .unwrap()
            .execute(
                &format!("UPDATE notes SET {column} = ?1 WHERE id = 1"),
                [value],
            )
            .unwrap();
    }

    fn value(&self, db: &str, column: &str) -> String {
        rusqlite::Connection::open(self.dir.path().join(db))
            .unwrap()
            .query_row(
                &format!("SELECT {column} FROM notes WHERE id = 1"),
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    async fn sync(&self) -> Vec<duplex::state::Conflict> {
        let app = App::load(&self.dir.path().join("duplex.toml"))
            .await
            .expect("the config and its rule load");
        let state = app.open_state().unwrap();
        app.run_once(&state, |_, _| {}).await.expect("sync runs");
        state.conflicts(false).unwrap()
    }
}

/// Runs the same story with either rule: a conflict decided, then one the rule throws on.
async fn decides_and_a_throw_waits_for_a_person(rule: &Path, long: bool, thrown: &str) {
    let s = Setup::new(rule);
    assert!(s.sync().await.is_empty());
    s.edit("a.db", "note", "a much longer note");
    s.edit("b.db", "note", "short");
    assert!(s.sync().await.is_empty(), "the rule decided");
    let winner = if long { "a much longer note" } else { "short" };
    assert_eq!(s.value("a.db", "note"), winner);
    assert_eq!(s.value("b.db", "note"), winner);

    s.edit("a.db", "boom", "left");
    s.edit("b.db", "boom", "right");
    let open = s.sync().await;
    let [held] = &open[..] else {
        panic!("expected the boom conflict held for a person, got {open:?}")
    };
    assert_eq!(held.field, "boom");
    assert_eq!(held.status, ConflictStatus::Open);
    assert!(held.reason.contains(thrown), "{}", held.reason);
    // A person sees why it waits.
    let out = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(["conflicts", "list", "duplex.toml"])
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("boom") && listed.contains(thrown),
        "{listed}"
    );
    // Neither side was overwritten by a broken rule.
    assert_eq!(s.value("a.db", "boom"), "left");
    assert_eq!(s.value("b.db", "boom"), "right");
}

/// Contract 0.4.0: the rule sees every side of a sync of three and takes the third's value.
async fn takes_the_third_of_three(rule: &Path, long: bool) {
    let s = Setup::with_sides(rule, &["a", "b", "c"]);
    assert!(s.sync().await.is_empty());
    s.edit("a.db", "note", "a note of middle size");
    s.edit("b.db", "note", "a note longer than the first");
    let third = if long {
        "the longest note of them all, by far"
    } else {
        "short"
    };
    s.edit("c.db", "note", third);
    assert!(s.sync().await.is_empty(), "the rule decided");
    for db in ["a.db", "b.db", "c.db"] {
        assert_eq!(s.value(db, "note"), third, "{db}");
    }
}

#[tokio::test]
async fn a_javascript_rule_built_by_componentize_js_decides_and_its_throw_waits_for_a_person() {
    let Some(rule) = js_rule() else { return };
    decides_and_a_throw_waits_for_a_person(&rule, true, "no rule for boom (thrown on purpose)")
        .await;
    takes_the_third_of_three(&rule, true).await;
}

#[tokio::test]
async fn a_python_rule_built_by_componentize_py_decides_and_its_raise_waits_for_a_person() {
    let Some(rule) = python_rule() else { return };
    decides_and_a_throw_waits_for_a_person(&rule, false, "no rule for boom (raised on purpose)")
        .await;
    takes_the_third_of_three(&rule, false).await;
}
