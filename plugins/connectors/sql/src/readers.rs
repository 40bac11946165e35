//! Keeping the change log short: who still needs which entries, and removing the rest.
//!
//! Every read registers its reader (the host's `origin`, one per sync) in `_duplex_readers`
//! with the position it reads from. An entry is removed once every reader of its table is past
//! it, so the log holds what some reader has yet to read, not every change ever made.
//!
//! Why a reader's *previous* position is the one that counts, not the one it reads from: the
//! host may read ahead from a cursor it is still committing, and if that commit fails it reads
//! again from the cursor before. Every cursor it hands over was either committed before the
//! call or comes straight after one that was, so a reader never goes back past the position of
//! its previous read: entries up to the lower of the two positions are done with (`confirmed`).
//! A snapshot registers the position its log part will start from, so the entries it will need
//! are kept while its pages are read.
//!
//! Nothing is pruned in the first [`FIRST_PRUNE_AFTER_SECONDS`] after a table is first seen with
//! readers: capture installed before readers were kept has readers with positions but no rows
//! yet, and each must read once, and so register, before entries it needs can go.
//!
//! A reader not seen for [`EXPIRY_DAYS`] (a sync removed or renamed) stops holding the log
//! back. Should it come back, or read for the first time after others removed entries it
//! needed, the read fails with an error that says so, instead of quietly missing changes: the
//! row with an empty reader name holds the position up to which the log was pruned.
//!
//! What it costs a read: one query and, when the reader moved, one upsert. Pruning is
//! housekeeping, so it runs at most every [`PRUNE_EVERY_SECONDS`] per table (per database where
//! positions are shared) and deletes at most [`PRUNE_AT_MOST`] entries at a time, keeping any
//! one read short; a prune that stopped at that limit lets the next read go on at once.

use duplex_sdk::sql::Db;
use duplex_sdk::{params, Error, Value};

use crate::dialect::Dialect;

/// Days after which a reader that stopped reading no longer holds the log back.
const EXPIRY_DAYS: u32 = 30;
/// Least time between two prunes of the same log.
const PRUNE_EVERY_SECONDS: u32 = 5;
/// Time from the first read of a table's log that registers a reader to its first prune.
const FIRST_PRUNE_AFTER_SECONDS: u32 = 600;
/// Most entries one prune deletes.
const PRUNE_AT_MOST: u32 = 20_000;
/// How often an idle reader, polling at the same position, refreshes the time it was seen.
const SEEN_EVERY_SECONDS: u32 = 24 * 60 * 60;

/// The reader name of the row that records how far the log was pruned.
const PRUNED: &str = "";
/// That row's position before anything was pruned.
const NOTHING: &str = "-";

/// One row of `_duplex_readers`, with how long ago it was written.
struct Reader {
    tbl: String,
    reader: String,
    pos: String,
    confirmed: String,
    /// Written within the last [`SEEN_EVERY_SECONDS`].
    fresh: bool,
    /// Written within the last [`PRUNE_EVERY_SECONDS`].
    recent: bool,
    /// Written more than [`FIRST_PRUNE_AFTER_SECONDS`] ago.
    settled: bool,
    /// Written within the last [`EXPIRY_DAYS`].
    live: bool,
}

/// Where a stream's pruning is recorded: its table, or every table where positions are shared.
fn scope<'a>(dialect: &dyn Dialect, table: &'a str) -> &'a str {
    if dialect.shared_positions() {
        "*"
    } else {
        table
    }
}

fn order(dialect: &dyn Dialect, pos: &str) -> Result<(i128, i64), Error> {
    dialect
        .log_order(pos)
        .ok_or_else(|| Error::permanent(format!("log position {pos:?} is not this database's")))
}

/// `statement` with each `?` replaced by the dialect's placeholder, numbered in order.
fn sql(dialect: &dyn Dialect, statement: &str) -> String {
    let mut out = String::with_capacity(statement.len() + 8);
    for (n, part) in statement.split('?').enumerate() {
        if n > 0 {
            out.push_str(&dialect.param(n));
        }
        out.push_str(part);
    }
    out
}

/// The rows that count for `table`: its own, or every table's where positions are shared.
fn readers(dialect: &dyn Dialect, db: &Db, table: &str) -> Result<Vec<Reader>, Error> {
    let within = |seconds: u32| {
        format!(
            "CASE WHEN seen_at > {} THEN 1 ELSE 0 END",
            dialect.ago(seconds)
        )
    };
    let select = format!(
        "SELECT tbl, reader, pos, confirmed, {} AS fresh, {} AS recent, {} AS young, {} AS live \
         FROM _duplex_readers",
        within(SEEN_EVERY_SECONDS),
        within(PRUNE_EVERY_SECONDS),
        within(FIRST_PRUNE_AFTER_SECONDS),
        within(EXPIRY_DAYS * 24 * 60 * 60),
    );
    let rows = if dialect.shared_positions() {
        db.query(&select, &[])?
    } else {
        db.query(
            &sql(dialect, &format!("{select} WHERE tbl = ?")),
            params![table],
        )?
    };
    Ok(rows
        .iter()
        .map(|r| {
            let text = |i: usize| r.at(i).map(Value::to_plain_string).unwrap_or_default();
            let yes = |i: usize| r.at(i).and_then(Value::as_integer) == Some(1);
            Reader {
                tbl: text(0),
                reader: text(1),
                pos: text(2),
                confirmed: text(3),
                fresh: yes(4),
                recent: yes(5),
                settled: !yes(6),
                live: yes(7),
            }
        })
        .collect())
}

/// Writes a row of `_duplex_readers`, seen at `seen_at` (an SQL expression).
fn put(
    dialect: &dyn Dialect,
    db: &Db,
    (table, reader): (&str, &str),
    (pos, confirmed): (&str, &str),
    seen_at: &str,
) -> Result<(), Error> {
    let statement = format!(
        "INSERT INTO _duplex_readers (tbl, reader, pos, confirmed, seen_at) VALUES (?, ?, ?, ?, {seen_at}) {}",
        dialect.upsert(&["tbl", "reader"], &["pos", "confirmed", "seen_at"])
    );
    db.execute(
        &sql(dialect, &statement),
        params![table, reader, pos, confirmed],
    )
    .map(drop)
}

/// What a read changes in `_duplex_readers` and the log: decided by [`keep_for`], made by
/// [`Keep::apply`]. Empty for an idle reader polling where it was.
pub struct Keep {
    table: String,
    reader: String,
    scope: String,
    /// The reader's row, when it changed: its position and the position it confirmed.
    row: Option<(String, String)>,
    marker: Marker,
}

/// What becomes of the row recording how far the log was pruned.
enum Marker {
    Unchanged,
    /// The first read of this log with readers kept: nothing pruned yet.
    Create,
    /// Prune up to `upto` (when `delete`; otherwise it was already) and record it.
    Prune {
        upto: String,
        delete: bool,
    },
}

impl Keep {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.row.is_none() && matches!(self.marker, Marker::Unchanged)
    }

    /// Whether [`Keep::apply`] makes more than one statement (a prune, or the first record of
    /// one), which must then land together, in a transaction.
    pub fn needs_transaction(&self) -> bool {
        !matches!(self.marker, Marker::Unchanged)
    }

    /// Writes what [`keep_for`] decided: in a transaction when [`Keep::needs_transaction`].
    pub fn apply(self, dialect: &dyn Dialect, db: &Db) -> Result<(), Error> {
        let now = dialect.ago(0);
        if let Some((pos, confirmed)) = &self.row {
            put(
                dialect,
                db,
                (&self.table, &self.reader),
                (pos, confirmed),
                &now,
            )?;
        }
        let (upto, delete) = match self.marker {
            Marker::Unchanged => return Ok(()),
            Marker::Create => {
                return put(dialect, db, (&self.scope, PRUNED), (NOTHING, NOTHING), &now);
            }
            Marker::Prune { upto, delete } => (upto, delete),
        };
        let deleted = if delete {
            let only = (self.scope != "*").then_some(self.table.as_str());
            dialect.prune_log(db, only, &upto, PRUNE_AT_MOST)?
        } else {
            0
        };
        // A prune that stopped at its limit is marked as long ago, so that the next read goes on.
        let seen = if deleted >= u64::from(PRUNE_AT_MOST) {
            dialect.ago(PRUNE_EVERY_SECONDS * 2)
        } else {
            now
        };
        put(dialect, db, (&self.scope, PRUNED), (&upto, &upto), &seen)
    }
}

/// Registers that `reader` reads `table` from `pos`, and now and then prunes the entries every
/// reader is done with: reads the readers' rows and says what to write ([`Keep::apply`]). A
/// read applies it in its transaction, so a read that fails registers nothing, or, where it
/// reads without one, after the read: the reader's row alone as one statement, a prune and its
/// record in a transaction of their own. A read that
/// continues from a cursor (`continued`) fails when entries after `pos` may have been pruned:
/// the reader was away longer than [`EXPIRY_DAYS`], or had never registered while others read
/// and pruned.
pub fn keep_for(
    dialect: &dyn Dialect,
    db: &Db,
    table: &str,
    reader: &str,
    pos: &str,
    continued: bool,
) -> Result<Keep, Error> {
    if reader.is_empty() {
        return Err(Error::permanent(
            "a read needs the reader's origin: the change log is kept for readers by name",
        ));
    }
    let scope = scope(dialect, table);
    let mut rows = readers(dialect, db, table)?;
    let marker = rows
        .iter()
        .position(|r| r.tbl == scope && r.reader == PRUNED)
        .map(|i| rows.swap_remove(i));
    if let (true, Some(pruned)) = (continued, &marker) {
        if pruned.pos != NOTHING && order(dialect, pos)? < order(dialect, &pruned.pos)? {
            return Err(Error::permanent(format!(
                "the change log of table {table} was pruned up to position {}, past this \
                 reader's position {pos}: changes made in between are no longer in it (a reader \
                 that has not read for {EXPIRY_DAYS} days stops holding the log back). Remove the \
                 capture (`duplex uninstall`) and sync again to start this stream over",
                pruned.pos
            )));
        }
    }
    let mine = rows
        .iter_mut()
        .find(|r| r.tbl == table && r.reader == reader);
    let confirmed = match &mine {
        Some(r) if order(dialect, &r.pos)? < order(dialect, pos)? => r.pos.clone(),
        _ => pos.to_owned(),
    };
    // An idle reader polling at the same position changes nothing but the time it was seen,
    // and that only daily.
    let unchanged = mine
        .as_ref()
        .is_some_and(|r| r.fresh && r.pos == pos && r.confirmed == confirmed);
    match mine {
        Some(r) => r.confirmed.clone_from(&confirmed),
        None => rows.push(Reader {
            tbl: table.to_owned(),
            reader: reader.to_owned(),
            pos: pos.to_owned(),
            confirmed: confirmed.clone(),
            fresh: true,
            recent: true,
            settled: false,
            live: true,
        }),
    }
    let mut keep = Keep {
        table: table.to_owned(),
        reader: reader.to_owned(),
        scope: scope.to_owned(),
        row: (!unchanged).then(|| (pos.to_owned(), confirmed)),
        marker: Marker::Unchanged,
    };
    match &marker {
        None => {
            keep.marker = Marker::Create;
            return Ok(keep);
        }
        Some(m) if m.recent || (m.pos == NOTHING && !m.settled) => return Ok(keep),
        Some(_) => {}
    }

    // Prune below the lowest position any reader still counted is done with.
    let mut horizon: Option<((i128, i64), &str)> = None;
    for r in rows.iter().filter(|r| r.live && r.reader != PRUNED) {
        let key = order(dialect, &r.confirmed)?;
        if horizon.is_none_or(|(h, _)| key < h) {
            horizon = Some((key, &r.confirmed));
        }
    }
    let Some((key, upto)) = horizon else {
        return Ok(keep);
    };
    keep.marker = match &marker {
        Some(m) if m.pos != NOTHING && key <= order(dialect, &m.pos)? => Marker::Prune {
            upto: m.pos.clone(),
            delete: false,
        },
        _ => Marker::Prune {
            upto: upto.to_owned(),
            delete: true,
        },
    };
    Ok(keep)
}
