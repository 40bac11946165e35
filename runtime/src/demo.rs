//! `duplex demo`: two SQLite databases holding the same customers in different shapes, a config
//! linking them, and a narrated run through what Duplex does. Needs nothing installed: the SQL
//! connector is built into the binary. The files stay in the folder afterwards, so a person can
//! edit either database with `sqlite3` and watch `duplex run` carry the change across.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::Connection;

use crate::app::App;
use crate::state::Choice;

const CRM_SCHEMA: &str = "
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    full_name TEXT NOT NULL,
    phone TEXT,
    status TEXT NOT NULL DEFAULT 'lead'   -- lead, active, churned, or internal (a test account)
);
INSERT INTO customers (id, email, full_name, phone, status) VALUES
    (1, 'ada@example.com', 'Ada Lovelace', '+44 20 7946 0001', 'active'),
    (2, 'bob@example.com', 'Bob Stone', '+1 555 0102', 'lead'),
    (3, 'cy@example.com', 'Cy Twombly', NULL, 'active'),
    (4, 'qa@example.com', 'QA Test Account', NULL, 'internal');
";

const ERP_SCHEMA: &str = "
CREATE TABLE clients (
    client_no INTEGER PRIMARY KEY,
    mail TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    tel TEXT,
    status_code INTEGER NOT NULL DEFAULT 2,  -- 1 active, 2 prospect, 3 closed
    credit_limit DECIMAL(10, 2)              -- the ERP's own: not synced
);
INSERT INTO clients (client_no, mail, name, tel, status_code, credit_limit) VALUES
    (1001, 'ADA@EXAMPLE.COM', 'Ada Lovelace', '+44 20 7946 0001', 1, 5000),
    (1002, 'bob@example.com', 'Bob Stone', '+1 555 0102', 2, NULL),
    (1003, 'dee@example.com', 'Dee Rivers', '+33 1 4000 0004', 1, 2500);
";

/// The demo's config, written to `duplex.toml`.
pub const CONFIG: &str = r#"# The Duplex demo: customers in a CRM and clients in an ERP, kept in step.
# Edit either database (sqlite3 crm.db / sqlite3 erp.db) and run `duplex run duplex.toml`.
state = "duplex.redb"

[connections.crm]
plugin = "builtin:sql"
config = { url = "sqlite://crm.db", tables = ["customers"] }
grants = { sql = ["sqlite://crm.db"] }

[connections.erp]
plugin = "builtin:sql"
config = { url = "sqlite://erp.db", tables = ["clients"] }
grants = { sql = ["sqlite://erp.db"] }

[syncs.customers]
left = "crm.customers"
right = "erp.clients"
match = { field = "email", ignore_case = true }
conflict = "last-writer-wins"
deletes = "propagate"
schedule = "realtime"
# The CRM's internal test accounts stay in the CRM (the ERP has no status code for them).
filter = { left = "status != 'internal'" }

[[syncs.customers.fields]]
left = "email"
right = "mail"

[[syncs.customers.fields]]
left = "full_name"
right = "name"

[[syncs.customers.fields]]
left = "phone"
right = "tel"
conflict = "manual"

[[syncs.customers.fields]]
left = "status"
right = "status_code"
values = { active = 1, lead = 2, churned = 3 }
"#;

/// Runs the narrated demo in `dir`.
pub async fn run(dir: &Path, out: &mut impl Write) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for f in ["crm.db", "erp.db", "duplex.redb", "duplex.toml"] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot replace {}", p.display()))?;
        }
    }
    let crm_path = dir.join("crm.db");
    let erp_path = dir.join("erp.db");
    Connection::open(&crm_path)?.execute_batch(CRM_SCHEMA)?;
    Connection::open(&erp_path)?.execute_batch(ERP_SCHEMA)?;
    let config = dir.join("duplex.toml");
    std::fs::write(&config, CONFIG)?;
    let crm = Connection::open(&crm_path)?;
    let erp = Connection::open(&erp_path)?;

    writeln!(out, "Duplex demo in {}\n", dir.display())?;
    writeln!(
        out,
        "A CRM (crm.db, table customers) and an ERP (erp.db, table clients) hold the same"
    )?;
    writeln!(
        out,
        "customers in different shapes: other column names, and a status as text in one"
    )?;
    writeln!(
        out,
        "and as a code in the other. duplex.toml links them; email matches records.\n"
    )?;
    show(out, &crm, &erp)?;

    let app = App::load(&config).await?;
    let state = app.open_state()?;

    step(out, 0, "A dry run first")?;
    let before = (std::fs::read(&crm_path)?, std::fs::read(&erp_path)?);
    writeln!(
        out,
        "`duplex run duplex.toml --dry-run` reads both sides and plans, changing nothing:"
    )?;
    for s in &app.syncs {
        let plan = app
            .dry_runner(s)
            .dry_run(&state, chrono::Utc::now().timestamp_micros())
            .await?;
        for line in plan.summary() {
            writeln!(out, "  {line}")?;
        }
    }
    let after = (std::fs::read(&crm_path)?, std::fs::read(&erp_path)?);
    writeln!(
        out,
        "Both database files are {} byte for byte: no write, no change capture installed yet.\n",
        if before == after {
            "unchanged"
        } else {
            "CHANGED (a bug)"
        }
    )?;
    let sync = || async {
        let reports = app.run_once(&state, |_, _| {}).await?;
        let writes: usize = reports.values().flatten().map(|r| r.writes).sum();
        anyhow::Ok(writes)
    };

    step(out, 1, "The first sync")?;
    let n = sync().await?;
    writeln!(
        out,
        "Ada and Bob exist on both sides and are matched by email (the ERP's ADA@EXAMPLE.COM"
    )?;
    writeln!(
        out,
        "too: matching ignores case). Cy is created in the ERP, Dee in the CRM. {n} writes."
    )?;
    writeln!(
        out,
        "The QA test account is outside the CRM's filter (status != 'internal'): not synced.\n"
    )?;
    show(out, &crm, &erp)?;

    step(out, 2, "An edit on each side")?;
    crm.execute(
        "UPDATE customers SET full_name = 'Robert Stone' WHERE email = 'bob@example.com'",
        [],
    )?;
    erp.execute(
        "UPDATE clients SET tel = '+33 1 4000 0099' WHERE mail = 'dee@example.com'",
        [],
    )?;
    writeln!(
        out,
        "CRM: Bob is now Robert Stone. ERP: Dee has a new phone number."
    )?;
    let n = sync().await?;
    writeln!(out, "Both changes crossed over ({n} writes); Duplex's own writes were not read back as changes.\n")?;
    show(out, &crm, &erp)?;

    step(
        out,
        3,
        "Concurrent edits of different fields of one customer",
    )?;
    crm.execute(
        "UPDATE customers SET full_name = 'Ada King' WHERE id = 1",
        [],
    )?;
    erp.execute(
        "UPDATE clients SET status_code = 3 WHERE client_no = 1001",
        [],
    )?;
    writeln!(
        out,
        "CRM renames Ada; at the same time the ERP closes her account (status 3)."
    )?;
    sync().await?;
    writeln!(out, "Both edits survive: the merge is per field.\n")?;
    show(out, &crm, &erp)?;

    step(
        out,
        4,
        "A conflict settled by the policy (last writer wins)",
    )?;
    crm.execute(
        "UPDATE customers SET full_name = 'Cy Twombly Jr.' WHERE email = 'cy@example.com'",
        [],
    )?;
    std::thread::sleep(std::time::Duration::from_millis(20));
    erp.execute(
        "UPDATE clients SET name = 'Cyrus Twombly' WHERE mail = 'cy@example.com'",
        [],
    )?;
    writeln!(out, "Both rename Cy; the ERP's edit is the later one.")?;
    sync().await?;
    writeln!(out, "The later edit wins on both sides.\n")?;
    show(out, &crm, &erp)?;

    step(out, 5, "A conflict left to a person")?;
    crm.execute(
        "UPDATE customers SET phone = '+1 555 0199' WHERE email = 'bob@example.com'",
        [],
    )?;
    erp.execute(
        "UPDATE clients SET tel = '+1 555 0142' WHERE mail = 'bob@example.com'",
        [],
    )?;
    writeln!(
        out,
        "Both change Robert's phone, and phones are `conflict = \"manual\"`."
    )?;
    sync().await?;
    let open = state.conflicts(false)?;
    writeln!(
        out,
        "Duplex holds that one field and keeps syncing the rest. `duplex conflicts list` shows:"
    )?;
    for c in &open {
        writeln!(out, "  {}", crate::report::conflict_line(c))?;
    }
    if let Some(c) = open.first() {
        writeln!(out, "\nA person decides for the ERP's number: `duplex conflicts resolve duplex.toml {} --take right`", c.id)?;
        state.resolve_conflict(
            c.id,
            Choice::TakeRight,
            "demo",
            chrono::Utc::now().timestamp_micros(),
        )?;
        sync().await?;
    }
    writeln!(out)?;
    show(out, &crm, &erp)?;

    step(out, 6, "A delete")?;
    erp.execute("DELETE FROM clients WHERE mail = 'dee@example.com'", [])?;
    writeln!(out, "The ERP deletes Dee; deletes propagate in this sync.")?;
    sync().await?;
    writeln!(out)?;
    show(out, &crm, &erp)?;

    step(out, 7, "A record entering the filter")?;
    crm.execute(
        "UPDATE customers SET status = 'lead' WHERE email = 'qa@example.com'",
        [],
    )?;
    writeln!(
        out,
        "The QA account turns out to be a real prospect: the CRM makes it a lead. It now passes"
    )?;
    writeln!(
        out,
        "the filter, and is matched or created like a new record."
    )?;
    sync().await?;
    writeln!(out)?;
    show(out, &crm, &erp)?;

    writeln!(
        out,
        "What Duplex wrote and decided, from its activity log (`duplex activity`):"
    )?;
    for a in state.activity(None)? {
        if a.decided.is_some() {
            // Both values, both times and the winner: `duplex activity --decisions`.
            let line = crate::report::activity_line(&a);
            let what = line.split_once(": ").map_or(line.as_str(), |(_, w)| w);
            writeln!(out, "  {} decided: {what}", a.sync)?;
            continue;
        }
        writeln!(
            out,
            "  {} {:<6} {:<6} record {:<5} {}",
            a.sync,
            a.side,
            a.op,
            a.record,
            a.fields.join(", ")
        )?;
    }
    writeln!(out, "\nThe files are in {}. Try:", dir.display())?;
    writeln!(
        out,
        "  sqlite3 {} \"UPDATE customers SET full_name = 'Ada L.' WHERE id = 1\"",
        crm_path.display()
    )?;
    writeln!(
        out,
        "  duplex run {} --once      (or without --once to keep syncing)",
        config.display()
    )?;
    writeln!(out, "  duplex status {}", config.display())?;
    Ok(())
}

fn step(out: &mut impl Write, n: u32, title: &str) -> Result<()> {
    writeln!(out, "== {n}. {title}")?;
    Ok(())
}

fn show(out: &mut impl Write, crm: &Connection, erp: &Connection) -> Result<()> {
    table(
        out,
        "CRM customers",
        crm,
        "SELECT id, email, full_name, coalesce(phone, ''), status FROM customers ORDER BY id",
    )?;
    table(out, "ERP clients", erp, "SELECT client_no, mail, name, coalesce(tel, ''), CAST(status_code AS TEXT) FROM clients ORDER BY client_no")?;
    writeln!(out)?;
    Ok(())
}

/// Prints a query's rows of (number, text, text, text, text) as an aligned table.
fn table(out: &mut impl Write, title: &str, db: &Connection, sql: &str) -> Result<()> {
    writeln!(out, "  {title}")?;
    let mut q = db.prepare(sql)?;
    let rows = q.query_map([], |r| {
        Ok(format!(
            "    {:<4} {:<18} {:<16} {:<18} {}",
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?
        ))
    })?;
    for r in rows {
        writeln!(out, "{}", r?)?;
    }
    Ok(())
}
