//! Duplex's own state, in one redb file. The only module that opens transactions; every table is
//! defined here.
//!
//! Invariants:
//! 1. A sync's cursors move only in the transaction that records the effects of the changes
//!    before them (links, bases, conflicts, rejections): [`State::commit_cycle`] writes them all
//!    at once, so a crash leaves either the old cursors with the old links or both new.
//! 2. Every write is recorded as an intent, in its own transaction, before it is sent; intents
//!    are cleared by the commit that records the results (writes whose outcome is unknown are
//!    kept). An intent found at the start of a cycle marks a write whose result may be lost: the
//!    driver checks whether it was made before planning anything again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

mod link_bytes;
mod plugins;
mod service;
pub use plugins::{content_hash, PluginVersion, Slot, SlotVersions};
pub use service::{
    token_hash, ActivityQuery, AuditEntry, ConflictQuery, Page, Paused, Role, Token, PAGE, PAGE_MAX,
};

use crate::engine::{
    ConflictNote, Decided, Fields, Link, LinkStatus, Observed, OpKind, Side, SideState, Value,
};

// The tables a cycle reads and writes per record key their text (the sync's name, a record's
// id) as bytes: redb checks a `&str` key's UTF-8 at every comparison, which made a quarter of
// the cost of storing a link (5.9-6.2 us a link against 4.4-4.6, redb 3.1.3 alone, 100,000
// links and their index entries in commits of 1,000). Bytes sort as the text did. A state
// from before is moved over when it is opened (`migrate_text_keys`).
const LINKS: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("links");
const INDEX: TableDefinition<(&[u8], u8, &[u8]), u64> = TableDefinition::new("link_index");
const CURSORS: TableDefinition<(&str, u8), &str> = TableDefinition::new("cursors");
const INTENTS: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("intents");
const CONFLICTS: TableDefinition<u64, &[u8]> = TableDefinition::new("conflicts");
const OPEN_CONFLICTS: TableDefinition<(&str, u64, &str), u64> =
    TableDefinition::new("open_conflicts");
const REJECTED: TableDefinition<(&str, u8, &str), &[u8]> = TableDefinition::new("rejected");
const DIRTY: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("dirty");
const ACTIVITY: TableDefinition<u64, &[u8]> = TableDefinition::new("activity");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const SYNCS: TableDefinition<&str, &[u8]> = TableDefinition::new("syncs");

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path} is damaged and cannot be opened ({message}); move it aside to start over (links are then matched again by the match key)")]
    Corrupt { path: PathBuf, message: String },
    #[error("state file {path} cannot be opened: {message}")]
    Open { path: PathBuf, message: String },
    #[error("state file: {0}")]
    Storage(String),
    #[error("no conflict {0}; `duplex conflicts list` shows the open ones")]
    NoSuchConflict(u64),
    #[error("conflict {0} is already {1}")]
    NotOpen(u64, String),
    /// A query that cannot be answered as asked (a cursor this listing never gave, say).
    #[error("{0}")]
    Query(String),
}

macro_rules! storage {
    ($($t:ty),*) => {$(
        impl From<$t> for StateError {
            fn from(e: $t) -> Self {
                StateError::Storage(e.to_string())
            }
        }
    )*};
}
storage!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

fn side_key(side: Side) -> u8 {
    side.index() as u8
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StateError> {
    Ok(serde_json::to_vec(v)?)
}

fn dec<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StateError> {
    Ok(serde_json::from_slice(b)?)
}

/// Moves a state written before the per-record tables keyed their text as bytes (see `LINKS`)
/// over to them, in the transaction that opens it. redb keeps one type per table name, so each
/// such table is copied row by row into a temporary table of the new type, dropped, and copied
/// again under its own name: twice the writes, once, and never a whole table in memory. An
/// earlier Duplex then refuses the state (its tables are of another type) instead of starting
/// over with no links and making every record again.
fn migrate_text_keys(w: &redb::WriteTransaction) -> Result<(), StateError> {
    /// Copies every row of `$from` into `$to`, each key (matched by `$old`) as `$new`.
    macro_rules! copy_rows {
        ($from:expr, $to:expr, $old:pat => $new:expr) => {{
            let from = w.open_table($from)?;
            let mut to = w.open_table($to)?;
            for row in from.iter()? {
                let (k, v) = row?;
                let $old = k.value();
                to.insert($new, v.value())?;
            }
        }};
    }
    /// Moves the table `$now` defines, if stored with the key `$old_key`, over to its key,
    /// each key (matched by `$old`) as `$new`.
    macro_rules! move_over {
        ($now:expr, $name:expr, $old_key:ty => $new_key:ty, $value:ty, $old:pat => $new:expr) => {{
            if typed_as_before(w, $now)? {
                let before = TableDefinition::<$old_key, $value>::new($name);
                let moving_name = format!("{}.moving", $name);
                let moving = TableDefinition::<$new_key, $value>::new(&moving_name);
                copy_rows!(before, moving, $old => $new);
                w.delete_table(before)?;
                copy_rows!(moving, $now, k => k);
                w.delete_table(moving)?;
            }
        }};
    }
    for (name, now) in [("links", LINKS), ("intents", INTENTS), ("dirty", DIRTY)] {
        move_over!(now, name, (&str, u64) => (&[u8], u64), &[u8],
            (sync, n) => (sync.as_bytes(), n));
    }
    move_over!(INDEX, "link_index", (&str, u8, &str) => (&[u8], u8, &[u8]), u64,
        (sync, side, id) => (sync.as_bytes(), side, id.as_bytes()));
    Ok(())
}

/// Whether the table `now` defines is stored with another type (by an earlier Duplex). One
/// that does not exist yet is made, empty.
fn typed_as_before<K: redb::Key + 'static, V: redb::Value + 'static>(
    w: &redb::WriteTransaction,
    now: TableDefinition<K, V>,
) -> Result<bool, StateError> {
    match w.open_table(now) {
        Ok(_) => Ok(false),
        Err(redb::TableError::TableTypeMismatch { .. }) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// The rows of `sync` in a table keyed by (sync, number).
fn of_sync(sync: &str) -> std::ops::RangeInclusive<(&[u8], u64)> {
    (sync.as_bytes(), 0)..=(sync.as_bytes(), u64::MAX)
}

/// Removes every row of `sync` from a table keyed by (sync, number).
fn clear_sync(table: &mut redb::Table<(&[u8], u64), &[u8]>, sync: &str) -> Result<(), StateError> {
    let keys: Vec<u64> = table
        .range(of_sync(sync))?
        .map(|i| i.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    for k in keys {
        table.remove((sync.as_bytes(), k))?;
    }
    Ok(())
}

/// Appends one row of intents for `sync` (a row holds a cycle's lot: see `record_intents`).
fn push_intents(
    intents: &mut redb::Table<(&[u8], u64), &[u8]>,
    counters: &mut redb::Table<&str, u64>,
    sync: &str,
    row: &[u8],
) -> Result<(), StateError> {
    let next = counters.get("intent")?.map_or(1, |v| v.value());
    intents.insert((sync.as_bytes(), next), row)?;
    counters.insert("intent", next + 1)?;
    Ok(())
}

/// Whether `sync` has any row in a table keyed by (sync, side, id): most cycles have nothing
/// to clear there, and asking once is cheaper than a removal per record.
fn has_rows(table: &redb::Table<(&str, u8, &str), &[u8]>, sync: &str) -> Result<bool, StateError> {
    Ok(match table.range((sync, 0u8, "")..)?.next() {
        Some(item) => item?.0.value().0 == sync,
        None => false,
    })
}

/// Names the row a stored value that did not read came from ("sync items, link 7"), worded
/// only when it did not.
fn stored_in(place: impl FnOnce() -> String) -> impl FnOnce(StateError) -> StateError {
    move |e| match e {
        StateError::Storage(m) => StateError::Storage(format!("{}: {m}", place())),
        e => e,
    }
}

/// [`stored_in`] for link `id` of `sync`.
fn in_link(sync: &str, id: u64) -> impl FnOnce(StateError) -> StateError + '_ {
    stored_in(move || format!("sync {sync}, link {id}"))
}

/// Reads every row of `sync` from a table keyed by (sync, number), in key order; a row holds
/// one item or several. A row that does not read is named by `what` and its number.
fn read_sync<T, I: IntoIterator<Item = T>>(
    db: &Database,
    table: TableDefinition<(&[u8], u64), &[u8]>,
    sync: &str,
    what: &str,
    decode: impl Fn(&[u8]) -> Result<I, StateError>,
) -> Result<Vec<T>, StateError> {
    let r = db.begin_read()?;
    let t = r.open_table(table)?;
    let mut out = Vec::new();
    for item in t.range(of_sync(sync))? {
        let (k, v) = item?;
        let place = || format!("sync {sync}, {what} {}", k.value().1);
        out.extend(decode(v.value()).map_err(stored_in(place))?);
    }
    Ok(out)
}

/// Appends a cycle's activity, numbered on from the last entry.
fn put_activity(
    table: &mut redb::Table<u64, &[u8]>,
    counters: &mut redb::Table<&str, u64>,
    activity: &[Activity],
) -> Result<(), StateError> {
    let mut next = counters.get("activity")?.map_or(1, |v| v.value());
    for row in ActivityRow::group(activity) {
        table.insert(next, enc(&row)?.as_slice())?;
        next += 1;
    }
    counters.insert("activity", next)?;
    Ok(())
}

/// Stores links and keeps the index of their records' ids in step: ids a link no longer has
/// are dropped from the index (where they still point at it), ids it gained point at it. Links
/// from `new_from` on are new: they have nothing stored to replace.
///
/// The index is written in key order, not link order: record ids rarely sort the way links
/// were made ("10" before "9"), and inserting them in order touches each page of the index
/// once instead of jumping about it.
fn put_links(
    links: &mut redb::Table<(&[u8], u64), &[u8]>,
    index: &mut redb::Table<(&[u8], u8, &[u8]), u64>,
    counters: &mut redb::Table<&str, u64>,
    sync: &str,
    batch: &[Link],
    new_from: Option<u64>,
) -> Result<(), StateError> {
    let mut counts = LinkCounts::load(counters, links, sync)?;
    let mut entries: Vec<(u8, &str, u64)> = Vec::with_capacity(batch.len() * 2);
    for link in batch {
        let is_new = new_from.is_some_and(|from| link.id >= from);
        let old = if is_new {
            None
        } else {
            links
                .get((sync.as_bytes(), link.id))?
                .map(|v| link_bytes::head(v.value()).map_err(in_link(sync, link.id)))
                .transpose()?
        };
        counts.replace(old.as_ref().map(|o| o.status), link.status);
        let old_ids = old.map(|o| o.ids).unwrap_or_default();
        for (side, id) in Side::all(old_ids.len()).zip(&old_ids) {
            let Some(id) = id else { continue };
            let key = (sync.as_bytes(), side_key(side), id.as_bytes());
            // Only its own entry: another link may hold the id now.
            if link.side(side).id.as_ref() != Some(id)
                && index.get(key)?.is_some_and(|to| to.value() == link.id)
            {
                index.remove(key)?;
            }
        }
        for (side, st) in link.each_side() {
            let Some(id) = &st.id else { continue };
            // An id the stored link had already points at it: writing it again would copy
            // the index's page for nothing (most links a cycle updates keep their ids).
            if old_ids.get(side.index()) != Some(&st.id) {
                entries.push((side_key(side), id.as_str(), link.id));
            }
        }
        links.insert(
            (sync.as_bytes(), link.id),
            link_bytes::encode(link).as_slice(),
        )?;
    }
    entries.sort_unstable();
    for (side, id, link) in entries {
        index.insert((sync.as_bytes(), side, id.as_bytes()), link)?;
    }
    counts.save(counters, sync)
}

/// How many links a sync has, how many of them are active and how many wait for their record
/// to pass its filter again, kept as counters beside the links so that `status` reads three
/// numbers instead of decoding every link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounts {
    pub total: u64,
    pub active: u64,
    /// Links whose record left its side's filter: not synced until it passes again.
    pub filtered: u64,
}

impl LinkCounts {
    fn keys(sync: &str) -> [String; 3] {
        [
            format!("links:{sync}"),
            format!("active:{sync}"),
            format!("filtered:{sync}"),
        ]
    }

    /// The stored counts; a state written before they were all kept is counted once, here.
    fn load(
        counters: &impl ReadableTable<&'static str, u64>,
        links: &impl ReadableTable<(&'static [u8], u64), &'static [u8]>,
        sync: &str,
    ) -> Result<LinkCounts, StateError> {
        let [total, active, filtered] = Self::keys(sync);
        if let (Some(t), Some(a), Some(f)) = (
            counters.get(total.as_str())?,
            counters.get(active.as_str())?,
            counters.get(filtered.as_str())?,
        ) {
            return Ok(LinkCounts {
                total: t.value(),
                active: a.value(),
                filtered: f.value(),
            });
        }
        let mut counts = LinkCounts::default();
        for item in links.range(of_sync(sync))? {
            let (k, v) = item?;
            let head = link_bytes::head(v.value()).map_err(in_link(sync, k.value().1))?;
            counts.replace(None, head.status);
        }
        Ok(counts)
    }

    /// A link's status goes from `old` (none: the link is new) to `new`.
    fn replace(&mut self, old: Option<LinkStatus>, new: LinkStatus) {
        match old {
            None => self.total += 1,
            Some(LinkStatus::Active) => self.active = self.active.saturating_sub(1),
            Some(LinkStatus::Filtered) => self.filtered = self.filtered.saturating_sub(1),
            Some(_) => {}
        }
        match new {
            LinkStatus::Active => self.active += 1,
            LinkStatus::Filtered => self.filtered += 1,
            _ => {}
        }
    }

    fn save(self, counters: &mut redb::Table<&str, u64>, sync: &str) -> Result<(), StateError> {
        let [total, active, filtered] = Self::keys(sync);
        counters.insert(total.as_str(), self.total)?;
        counters.insert(active.as_str(), self.active)?;
        counters.insert(filtered.as_str(), self.filtered)?;
        Ok(())
    }
}

/// Opens a conflict for each note, or brings an open one's values up to date.
fn put_conflicts(
    conflicts: &mut redb::Table<u64, &[u8]>,
    open: &mut redb::Table<(&str, u64, &str), u64>,
    next_conflict: &mut u64,
    (sync, now): (&str, i64),
    notes: &[ConflictNote],
    links: &[Link],
) -> Result<(), StateError> {
    let link_of = |id: u64| links.iter().find(|l| l.id == id);
    for note in notes {
        let existing = open
            .get((sync, note.link, note.field.as_str()))?
            .map(|v| v.value());
        let mut record = match existing {
            Some(id) => match conflicts.get(id)? {
                Some(v) => dec::<Conflict>(v.value())?,
                None => continue,
            },
            None => {
                let id = *next_conflict;
                *next_conflict += 1;
                open.insert((sync, note.link, note.field.as_str()), id)?;
                Conflict {
                    id,
                    sync: sync.to_owned(),
                    link: note.link,
                    field: note.field.clone(),
                    left_id: None,
                    right_id: None,
                    base: note.base.clone(),
                    left: None,
                    right: None,
                    more_ids: Vec::new(),
                    more: Vec::new(),
                    reason: note.reason.clone(),
                    status: ConflictStatus::Open,
                    opened_at: now,
                    updated_at: now,
                    resolved_by: None,
                    choice: None,
                }
            }
        };
        if existing.is_some()
            && record.left == note.left
            && record.right == note.right
            && record.more == note.more
        {
            continue;
        }
        record.left = note.left.clone();
        record.right = note.right.clone();
        record.more = note.more.clone();
        record.updated_at = now;
        if let Some(l) = link_of(note.link) {
            record.left_id = l.left.id.clone();
            record.right_id = l.right.id.clone();
            record.more_ids = l.more.iter().map(|s| s.id.clone()).collect();
        }
        conflicts.insert(record.id, enc(&record)?.as_slice())?;
    }
    Ok(())
}

/// A link in the JSON form earlier versions stored (links are now stored in binary, see
/// [`link_bytes`]); only the tests write it, to check that such a state still reads. Once both
/// sides agree, each side's `seen` equals the base; such a side is written as `seen_is_base`
/// instead of a second and third copy of the fields. What is empty, false or unknown is left
/// out. Links stored before that carry `seen` in full and every key, and read the same.
#[cfg(test)]
#[derive(Serialize)]
struct LinkOut<'a> {
    id: u64,
    left: SideOut<'a>,
    right: SideOut<'a>,
    /// The third side and on, in a sync of more than two.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    more: Vec<SideOut<'a>>,
    base: &'a Fields,
    #[serde(skip_serializing_if = "Fields::is_empty")]
    pins: &'a Fields,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    delete_approved: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    copy_kept: bool,
    status: LinkStatus,
}

#[cfg(test)]
#[derive(Serialize)]
struct SideOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seen: Option<&'a Fields>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    seen_is_base: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed_at: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    read_time: bool,
    #[serde(skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    rewritten: &'a std::collections::BTreeSet<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(skip_serializing_if = "Fields::is_empty")]
    counted: &'a Fields,
}

#[derive(Deserialize)]
struct LinkIn {
    id: u64,
    left: SideIn,
    right: SideIn,
    #[serde(default)]
    more: Vec<SideIn>,
    base: Fields,
    #[serde(default)]
    pins: Fields,
    #[serde(default)]
    delete_approved: bool,
    #[serde(default)]
    copy_kept: bool,
    status: LinkStatus,
}

#[derive(Deserialize)]
struct SideIn {
    id: Option<String>,
    #[serde(default)]
    seen: Option<Fields>,
    #[serde(default)]
    seen_is_base: bool,
    version: Option<String>,
    changed_at: Option<i64>,
    #[serde(default)]
    read_time: bool,
    #[serde(default)]
    rewritten: std::collections::BTreeSet<String>,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    counted: Fields,
}

#[cfg(test)]
impl<'a> SideOut<'a> {
    fn of(side: &'a SideState, base: &Fields) -> SideOut<'a> {
        let is_base = side.seen.as_ref().is_some_and(|seen| same_text(seen, base));
        SideOut {
            id: &side.id,
            seen: if is_base { None } else { side.seen.as_ref() },
            seen_is_base: is_base,
            version: &side.version,
            changed_at: side.changed_at,
            read_time: side.read_time,
            rewritten: &side.rewritten,
            deleted: side.deleted,
            counted: &side.counted,
        }
    }
}

impl SideIn {
    fn into_side(self, base: &Fields) -> SideState {
        SideState {
            seen: if self.seen_is_base {
                Some(base.clone())
            } else {
                self.seen
            },
            id: self.id,
            version: self.version,
            changed_at: self.changed_at,
            read_time: self.read_time,
            rewritten: self.rewritten,
            deleted: self.deleted,
            counted: self.counted,
        }
    }
}

#[cfg(test)]
impl Serialize for Link {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        LinkOut {
            id: self.id,
            left: SideOut::of(&self.left, &self.base),
            right: SideOut::of(&self.right, &self.base),
            more: self
                .more
                .iter()
                .map(|s| SideOut::of(s, &self.base))
                .collect(),
            base: &self.base,
            pins: &self.pins,
            delete_approved: self.delete_approved,
            copy_kept: self.copy_kept,
            status: self.status,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Link {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Link, D::Error> {
        let l = LinkIn::deserialize(d)?;
        Ok(Link {
            id: l.id,
            left: l.left.into_side(&l.base),
            right: l.right.into_side(&l.base),
            more: l.more.into_iter().map(|s| s.into_side(&l.base)).collect(),
            base: l.base,
            pins: l.pins,
            delete_approved: l.delete_approved,
            copy_kept: l.copy_kept,
            status: l.status,
        })
    }
}

/// A value as stored: the common types as plain JSON (text a string, an integer a number, a
/// boolean), the others as a one-key object (`{"d":"12.5"}` for a decimal, `f` float, `ts`
/// time, `x` bytes in hex, `j` JSON text, `n` null). Values make up most of every link and intent,
/// and the earlier form (`{"type":"text","value":"c1"}`) more than doubled a link's size and
/// the time to store it. Values stored in that form still read.
impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // Not a bare null: an `Option<Value>` (a conflict's side) would read it back as None.
            Value::Null => one_key(s, "n", &()),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Text(t) => s.serialize_str(t),
            // JSON has no NaN or infinity (serde_json writes null, which did not read back):
            // those are written as text.
            Value::Float(f) if !f.is_finite() => one_key(s, "f", &f.to_string()),
            Value::Float(f) => one_key(s, "f", f),
            Value::Decimal(d) => one_key(s, "d", d),
            Value::Time(t) => one_key(s, "ts", t),
            Value::Bytes(b) => one_key(s, "x", &hex::encode(b)),
            Value::Json(j) => one_key(s, "j", j),
        }
    }
}

fn one_key<S: serde::Serializer, T: Serialize + ?Sized>(
    s: S,
    key: &str,
    value: &T,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(1))?;
    m.serialize_entry(key, value)?;
    m.end()
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a stored field value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }
    fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<Value, E> {
        i64::try_from(u)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {u} is out of range")))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }
    fn visit_str<E>(self, t: &str) -> Result<Value, E> {
        Ok(Value::Text(t.to_owned()))
    }
    fn visit_string<E>(self, t: String) -> Result<Value, E> {
        Ok(Value::Text(t))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Value, A::Error> {
        use serde::de::Error;
        let tag: String = m
            .next_key()?
            .ok_or_else(|| A::Error::custom("an empty object is not a value"))?;
        let value = match tag.as_str() {
            "n" => {
                m.next_value::<serde::de::IgnoredAny>()?;
                Value::Null
            }
            "f" => Value::Float(m.next_value::<StoredFloat>()?.0),
            "d" => Value::Decimal(m.next_value()?),
            "ts" => Value::Time(m.next_value()?),
            "j" => Value::Json(m.next_value()?),
            "x" => {
                let h: String = m.next_value()?;
                Value::Bytes(hex::decode(&h).map_err(A::Error::custom)?)
            }
            // The earlier form, written by serde as {"type": .., "value": ..} in that order.
            "type" => {
                let kind: String = m.next_value()?;
                if kind == "null" {
                    return Ok(Value::Null);
                }
                match m.next_key::<String>()?.as_deref() {
                    Some("value") => {}
                    _ => {
                        return Err(A::Error::custom(format!(
                            "a {kind} value without its value"
                        )))
                    }
                }
                match kind.as_str() {
                    "bool" => Value::Bool(m.next_value()?),
                    "int" => Value::Int(m.next_value()?),
                    "float" => Value::Float(m.next_value()?),
                    "decimal" => Value::Decimal(m.next_value()?),
                    "text" => Value::Text(m.next_value()?),
                    "bytes" => Value::Bytes(m.next_value()?),
                    "time" => Value::Time(m.next_value()?),
                    "json" => Value::Json(m.next_value()?),
                    other => return Err(A::Error::custom(format!("unknown value type {other:?}"))),
                }
            }
            other => return Err(A::Error::custom(format!("unknown value tag {other:?}"))),
        };
        Ok(value)
    }
}

/// A stored float: a JSON number, or the text of a NaN or an infinity.
struct StoredFloat(f64);

impl<'de> Deserialize<'de> for StoredFloat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StoredFloat, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(f64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Number(f) => Ok(StoredFloat(f)),
            Either::Text(t) => match t.parse::<f64>() {
                Ok(f) if !f.is_finite() => Ok(StoredFloat(f)),
                _ => Err(serde::de::Error::custom(format!(
                    "{t:?} is not a stored float"
                ))),
            },
        }
    }
}

/// A write about to be sent: the link as planned (before the write) and the op.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    pub link: Link,
    pub side: Side,
    pub op: OpKind,
}

/// An intent in the JSON form earlier versions stored (now binary, see [`link_bytes`]); only
/// the tests write it. A create usually writes exactly the link's base (a record seen for the
/// first time); it is stored as `create_base` instead of a second copy of the fields. Intents
/// stored before that carry the op in full and read the same.
#[cfg(test)]
#[derive(Serialize)]
struct IntentOut<'a> {
    link: &'a Link,
    side: Side,
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<&'a OpKind>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    create_base: bool,
}

#[derive(Deserialize)]
struct IntentIn {
    link: Link,
    side: Side,
    #[serde(default)]
    op: Option<OpKind>,
    #[serde(default)]
    create_base: bool,
}

/// An intent whose link and op are borrowed (from a cycle's plan), so that recording a
/// cycle's intents copies nothing before it serialises them. Stored as [`Intent`] is.
#[derive(Debug, Clone, Copy)]
pub struct IntentRef<'a> {
    pub link: &'a Link,
    pub side: Side,
    pub op: &'a OpKind,
}

#[cfg(test)]
impl Serialize for IntentRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let create_base =
            matches!(self.op, OpKind::Create { fields } if same_text(fields, &self.link.base));
        IntentOut {
            link: self.link,
            side: self.side,
            op: (!create_base).then_some(self.op),
            create_base,
        }
        .serialize(s)
    }
}

impl Intent {
    fn borrowed(&self) -> IntentRef<'_> {
        IntentRef {
            link: &self.link,
            side: self.side,
            op: &self.op,
        }
    }
}

#[cfg(test)]
impl Serialize for Intent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.borrowed().serialize(s)
    }
}

/// Equal as stored (see [`Value::same_text`]).
fn same_text(a: &Fields, b: &Fields) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && va.same_text(vb))
}

impl<'de> Deserialize<'de> for Intent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Intent, D::Error> {
        let i = IntentIn::deserialize(d)?;
        let op = match (i.op, i.create_base) {
            (Some(op), false) => op,
            (None, true) => OpKind::Create {
                fields: i.link.base.clone(),
            },
            _ => {
                return Err(serde::de::Error::custom(
                    "an intent needs either its op or create_base",
                ))
            }
        };
        Ok(Intent {
            link: i.link,
            side: i.side,
            op,
        })
    }
}

/// Where a conflict stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictStatus {
    Open,
    Resolved,
    /// Both sides came to the same value by themselves.
    Agreed,
}

/// How a person settled a conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Choice {
    TakeLeft,
    TakeRight,
    /// Take the value of a further side, in a sync of more than two.
    Take(Side),
    Value(Value),
}

impl Choice {
    /// Taking `side`'s value.
    pub fn taking(side: Side) -> Choice {
        match side.index() {
            0 => Choice::TakeLeft,
            1 => Choice::TakeRight,
            _ => Choice::Take(side),
        }
    }

    /// The side whose value is taken, if any.
    pub fn taken(&self) -> Option<Side> {
        match self {
            Choice::TakeLeft => Some(Side::LEFT),
            Choice::TakeRight => Some(Side::RIGHT),
            Choice::Take(s) => Some(*s),
            Choice::Value(_) => None,
        }
    }
}

/// A conflict as stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub id: u64,
    pub sync: String,
    pub link: u64,
    pub field: String,
    pub left_id: Option<String>,
    pub right_id: Option<String>,
    pub base: Option<Value>,
    pub left: Option<Value>,
    pub right: Option<Value>,
    /// The third side and on, in a sync of more than two: each record's id and value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_ids: Vec<Option<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Option<Value>>,
    pub reason: String,
    pub status: ConflictStatus,
    pub opened_at: i64,
    pub updated_at: i64,
    pub resolved_by: Option<String>,
    pub choice: Option<Choice>,
}

impl Conflict {
    /// `side`'s value.
    pub fn value(&self, side: Side) -> Option<&Value> {
        match side.index() {
            0 => self.left.as_ref(),
            1 => self.right.as_ref(),
            n => self.more.get(n - 2).and_then(Option::as_ref),
        }
    }

    /// `side`'s record id.
    pub fn record(&self, side: Side) -> Option<&str> {
        match side.index() {
            0 => self.left_id.as_deref(),
            1 => self.right_id.as_deref(),
            n => self.more_ids.get(n - 2).and_then(Option::as_deref),
        }
    }

    /// How many sides the conflict's sync has.
    pub fn sides(&self) -> usize {
        2 + self.more.len().max(self.more_ids.len())
    }
}

/// A change that could not be applied, kept to be retried, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub side: Side,
    pub id: String,
    pub reason: String,
    pub attempts: u32,
    pub first_at: i64,
    pub last_at: i64,
    /// The change itself, when it was never applied (an ambiguous match), to feed again.
    pub change: Option<StoredChange>,
}

/// An [`Observed`] change, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredChange {
    pub deleted: bool,
    pub fields: Fields,
    pub version: Option<String>,
    pub changed_at: Option<i64>,
    /// When Duplex read it; changes stored before this was kept count as read when first
    /// rejected.
    #[serde(default)]
    pub read_at: Option<i64>,
}

impl Rejected {
    pub fn observed(&self) -> Option<Observed> {
        self.change.as_ref().map(|c| Observed {
            side: self.side,
            id: self.id.clone(),
            deleted: c.deleted,
            fields: c.fields.clone(),
            version: c.version.clone(),
            changed_at: c.changed_at,
            read_at: c.read_at.unwrap_or(self.first_at),
            own: false,
        })
    }
}

/// A link whose writes failed, and when to try again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dirty {
    pub due_at: i64,
    pub attempts: u32,
    pub reason: String,
}

/// One thing Duplex wrote, where and why, or one decision it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    pub at: i64,
    pub sync: String,
    pub link: u64,
    /// The side written; for a decision, the side whose value won.
    pub side: Side,
    /// `create`, `update`, `delete`, or [`DECIDED`].
    pub op: String,
    /// The record written; for a decision, the winning side's record.
    pub record: String,
    pub fields: Vec<String>,
    /// For a decision: both values, both times, the winner.
    pub decided: Option<Decided>,
}

/// The `op` of an activity entry that records a last-writer-wins decision.
pub const DECIDED: &str = "last-writer-wins";

/// The `op` of an activity entry that records a conflict rule's decision.
pub const RULED: &str = "rule";

/// Activity as stored: a run of writes of one cycle that differ only in their record (a bulk
/// create, say) is one row listing the records, instead of a row each, which cost an initial
/// sync about a tenth of its commit. Rows stored before, one write each, read the same.
#[derive(Serialize, Deserialize)]
struct ActivityRow {
    at: i64,
    sync: String,
    side: Side,
    op: String,
    fields: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<String>,
    /// (link, record) of each write in the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    records: Vec<(u64, String)>,
    /// A decision: never part of a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decided: Option<Decided>,
}

impl ActivityRow {
    /// The rows for a cycle's activity, in order.
    fn group(activity: &[Activity]) -> Vec<ActivityRow> {
        let mut rows: Vec<ActivityRow> = Vec::new();
        for a in activity {
            let same = |r: &ActivityRow| {
                r.decided.is_none()
                    && a.decided.is_none()
                    && (r.at, r.side, &r.sync, &r.op, &r.fields)
                        == (a.at, a.side, &a.sync, &a.op, &a.fields)
            };
            match rows.last_mut() {
                Some(r) if same(r) => r.records.push((a.link, a.record.clone())),
                _ => rows.push(ActivityRow {
                    at: a.at,
                    sync: a.sync.clone(),
                    side: a.side,
                    op: a.op.clone(),
                    fields: a.fields.clone(),
                    link: None,
                    record: None,
                    records: vec![(a.link, a.record.clone())],
                    decided: a.decided.clone(),
                }),
            }
        }
        rows
    }

    fn expand(self, out: &mut Vec<Activity>) -> Result<(), StateError> {
        let records = match (self.link, self.record) {
            (Some(link), Some(record)) if self.records.is_empty() => vec![(link, record)],
            (None, None) if !self.records.is_empty() => self.records,
            _ => {
                return Err(StateError::Storage(
                    "an activity row names no record, or two ways".into(),
                ))
            }
        };
        out.extend(records.into_iter().map(|(link, record)| Activity {
            at: self.at,
            sync: self.sync.clone(),
            link,
            side: self.side,
            op: self.op.clone(),
            record,
            fields: self.fields.clone(),
            decided: self.decided.clone(),
        }));
        Ok(())
    }
}

/// A sync's counters and its last cycle, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStats {
    pub cycles: u64,
    pub changes_read: u64,
    pub writes: u64,
    pub write_failures: u64,
    pub echoes: u64,
    /// Fields changed on both sides that last-writer-wins settled (each is in the activity
    /// log with both values and times).
    #[serde(default)]
    pub decided: u64,
    pub last_cycle_at: Option<i64>,
    pub last_cycle: Option<String>,
    pub last_error: Option<String>,
}

/// What one cycle commits.
#[derive(Debug, Default)]
pub struct CycleCommit {
    pub links: Vec<Link>,
    /// Where each side reads from next, in config order; none: where it was.
    pub cursors: Vec<Option<String>>,
    pub next_link_id: u64,
    /// Links from this id on were made in this cycle: none of them is stored yet. `None`: look.
    pub new_links_from: Option<u64>,
    pub conflicts: Vec<ConflictNote>,
    pub agreed: Vec<(u64, String)>,
    pub rejected: Vec<(Side, String, String, Option<StoredChange>)>,
    pub cleared: Vec<(Side, String)>,
    pub dirty: Vec<(u64, String)>,
    /// Of `dirty`, links due again at once rather than backed off: their write was more than
    /// the plugin could hold at once, and later writes are smaller. Their attempts do not
    /// count up, so a record that then fails on its own backs off from the first step.
    pub dirty_now: BTreeSet<u64>,
    pub clean: Vec<u64>,
    pub activity: Vec<Activity>,
    pub stats: SyncStats,
    /// Creates whose outcome is unknown (the call failed after it may have reached the
    /// system): kept, so the next cycle looks for the record before creating it again.
    pub keep_intents: Vec<Intent>,
}

/// The state file.
pub struct State {
    db: Database,
    path: PathBuf,
    /// Test hook: the number of write transactions to allow before one "crashes".
    crash_after: std::sync::atomic::AtomicI64,
}

impl State {
    /// Opens (or creates) the state file.
    pub fn open(path: &Path) -> Result<State, StateError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(message)) => {
                StateError::Corrupt {
                    path: path.to_owned(),
                    message,
                }
            }
            other => {
                let message = other.to_string();
                if message.contains("corrupt")
                    || message.contains("Invalid")
                    || message.contains("invalid")
                {
                    StateError::Corrupt {
                        path: path.to_owned(),
                        message,
                    }
                } else {
                    StateError::Open {
                        path: path.to_owned(),
                        message,
                    }
                }
            }
        })?;
        let state = State {
            db,
            path: path.to_owned(),
            crash_after: std::sync::atomic::AtomicI64::new(-1),
        };
        state.create_tables()?;
        Ok(state)
    }

    /// A state that lives in memory, for simulations.
    pub fn in_memory() -> Result<State, StateError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StateError::Storage(e.to_string()))?;
        let state = State {
            db,
            path: PathBuf::from(":memory:"),
            crash_after: std::sync::atomic::AtomicI64::new(-1),
        };
        state.create_tables()?;
        Ok(state)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For crash simulations: the `n`th write transaction from now fails before committing, as
    /// if the process died there. Negative: never.
    #[doc(hidden)]
    pub fn crash_after_writes(&self, n: i64) {
        self.crash_after
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StateError> {
        use std::sync::atomic::Ordering;
        let left = self.crash_after.load(Ordering::SeqCst);
        if left == 0 {
            self.crash_after.store(-1, Ordering::SeqCst);
            return Err(StateError::Storage("simulated crash before commit".into()));
        }
        if left > 0 {
            self.crash_after.store(left - 1, Ordering::SeqCst);
        }
        // One writer at a time: background work lets a foreground cycle in flight go first.
        crate::background::give_way();
        Ok(self.db.begin_write()?)
    }

    fn create_tables(&self) -> Result<(), StateError> {
        let w = self.db.begin_write()?;
        migrate_text_keys(&w)?;
        w.open_table(LINKS)?;
        w.open_table(INDEX)?;
        w.open_table(CURSORS)?;
        w.open_table(INTENTS)?;
        w.open_table(CONFLICTS)?;
        w.open_table(OPEN_CONFLICTS)?;
        w.open_table(REJECTED)?;
        w.open_table(DIRTY)?;
        w.open_table(ACTIVITY)?;
        w.open_table(COUNTERS)?;
        w.open_table(SYNCS)?;
        State::create_service_tables(&w)?;
        State::create_plugin_tables(&w)?;
        w.commit()?;
        Ok(())
    }

    /// Where each of a sync's `sides` reads from next, in config order.
    pub fn cursors(&self, sync: &str, sides: usize) -> Result<Vec<Option<String>>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(CURSORS)?;
        let get = |s: Side| -> Result<Option<String>, StateError> {
            Ok(t.get((sync, side_key(s)))?.map(|v| v.value().to_owned()))
        };
        Side::all(sides).map(get).collect()
    }

    /// Forgets where a side's reader stands: it starts again from a snapshot of the records
    /// (after change capture was removed and its positions mean nothing any more). Links are
    /// kept, so the records read again are recognised, not created twice.
    pub fn reset_cursor(&self, sync: &str, side: Side) -> Result<(), StateError> {
        let w = self.begin_write()?;
        w.open_table(CURSORS)?.remove((sync, side_key(side)))?;
        w.commit()?;
        Ok(())
    }

    pub fn next_link_id(&self, sync: &str) -> Result<u64, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(COUNTERS)?;
        Ok(t.get(format!("link:{sync}").as_str())?
            .map_or(1, |v| v.value()))
    }

    /// The link a side's record belongs to, if any.
    pub fn link_for(&self, sync: &str, side: Side, id: &str) -> Result<Option<u64>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(INDEX)?;
        Ok(t.get((sync.as_bytes(), side_key(side), id.as_bytes()))?
            .map(|v| v.value()))
    }

    /// The links of the given records (those that have one), and the given link ids.
    pub fn links(
        &self,
        sync: &str,
        records: &[(Side, String)],
        ids: &[u64],
    ) -> Result<Vec<Link>, StateError> {
        let r = self.db.begin_read()?;
        let index = r.open_table(INDEX)?;
        let links = r.open_table(LINKS)?;
        let mut wanted: BTreeSet<u64> = ids.iter().copied().collect();
        for (side, id) in records {
            if let Some(l) = index.get((sync.as_bytes(), side_key(*side), id.as_bytes()))? {
                wanted.insert(l.value());
            }
        }
        let mut out = Vec::with_capacity(wanted.len());
        for id in wanted {
            if let Some(v) = links.get((sync.as_bytes(), id))? {
                out.push(link_bytes::decode(v.value()).map_err(in_link(sync, id))?);
            }
        }
        Ok(out)
    }

    pub fn link(&self, sync: &str, id: u64) -> Result<Option<Link>, StateError> {
        Ok(self.links(sync, &[], &[id])?.pop())
    }

    /// All links of a sync, in id order (for status and tests).
    pub fn all_links(&self, sync: &str) -> Result<Vec<Link>, StateError> {
        read_sync(&self.db, LINKS, sync, "link", |b| {
            link_bytes::decode(b).map(|l| [l])
        })
    }

    /// Dirty links due for a retry at `now`, at most `limit`.
    pub fn due_dirty(
        &self,
        sync: &str,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(u64, Dirty)>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(DIRTY)?;
        let mut out = Vec::new();
        for item in t.range(of_sync(sync))? {
            let (k, v) = item?;
            let d: Dirty = dec(v.value())?;
            if d.due_at <= now {
                out.push((k.value().1, d));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// When the next of a sync's dirty links is due for a retry; none when it has none.
    pub fn next_dirty_due(&self, sync: &str) -> Result<Option<i64>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(DIRTY)?;
        let mut next: Option<i64> = None;
        for item in t.range(of_sync(sync))? {
            let d: Dirty = dec(item?.1.value())?;
            next = Some(next.map_or(d.due_at, |n| n.min(d.due_at)));
        }
        Ok(next)
    }

    pub fn dirty(&self, sync: &str) -> Result<Vec<(u64, Dirty)>, StateError> {
        self.due_dirty(sync, i64::MAX, usize::MAX)
    }

    /// Held fields per link, from open conflicts.
    pub fn held(
        &self,
        sync: &str,
        links: &[u64],
    ) -> Result<BTreeMap<u64, BTreeSet<String>>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(OPEN_CONFLICTS)?;
        let mut out: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        for link in links {
            for item in t.range((sync, *link, "")..=(sync, *link, "\u{10ffff}"))? {
                let (k, _) = item?;
                out.entry(*link).or_default().insert(k.value().2.to_owned());
            }
        }
        Ok(out)
    }

    /// Rejected changes due for another try.
    pub fn rejected(&self, sync: &str) -> Result<Vec<Rejected>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(REJECTED)?;
        let mut out = Vec::new();
        for item in t.range((sync, 0u8, "")..=(sync, 1u8, "\u{10ffff}"))? {
            let (_, v) = item?;
            out.push(dec(v.value())?);
        }
        Ok(out)
    }

    /// Records creates about to be sent (invariant 2).
    pub fn record_intents(&self, sync: &str, intents: &[IntentRef<'_>]) -> Result<(), StateError> {
        if intents.is_empty() {
            return Ok(());
        }
        let w = self.begin_write()?;
        {
            let mut t = w.open_table(INTENTS)?;
            let mut c = w.open_table(COUNTERS)?;
            // One row for the lot: a row per intent cost a third of an initial sync's time.
            let row = link_bytes::encode_intents(intents.iter().copied())?;
            push_intents(&mut t, &mut c, sync, &row)?;
        }
        w.commit()?;
        Ok(())
    }

    pub fn intents(&self, sync: &str) -> Result<Vec<Intent>, StateError> {
        read_sync(
            &self.db,
            INTENTS,
            sync,
            "intents",
            link_bytes::decode_intents,
        )
    }

    /// Commits one cycle's effects and its cursors together (invariant 1).
    pub fn commit_cycle(&self, sync: &str, now: i64, c: CycleCommit) -> Result<(), StateError> {
        let w = self.begin_write()?;
        {
            let mut links = w.open_table(LINKS)?;
            let mut index = w.open_table(INDEX)?;
            let mut counters = w.open_table(COUNTERS)?;
            put_links(
                &mut links,
                &mut index,
                &mut counters,
                sync,
                &c.links,
                c.new_links_from,
            )?;
            let mut cursors = w.open_table(CURSORS)?;
            for (i, cur) in c.cursors.iter().enumerate() {
                if let Some(cur) = cur {
                    cursors.insert((sync, side_key(Side::nth(i))), cur.as_str())?;
                }
            }
            counters.insert(format!("link:{sync}").as_str(), c.next_link_id)?;

            let mut conflicts = w.open_table(CONFLICTS)?;
            let mut open = w.open_table(OPEN_CONFLICTS)?;
            let mut next_conflict = counters.get("conflict")?.map_or(1, |v| v.value());
            put_conflicts(
                &mut conflicts,
                &mut open,
                &mut next_conflict,
                (sync, now),
                &c.conflicts,
                &c.links,
            )?;
            for (link, field) in &c.agreed {
                if let Some(id) = open
                    .remove((sync, *link, field.as_str()))?
                    .map(|v| v.value())
                {
                    let stored = conflicts.get(id)?.map(|v| v.value().to_vec());
                    if let Some(v) = stored {
                        let mut record: Conflict = dec(&v)?;
                        record.status = ConflictStatus::Agreed;
                        record.updated_at = now;
                        conflicts.insert(id, enc(&record)?.as_slice())?;
                    }
                }
            }
            counters.insert("conflict", next_conflict)?;

            let mut rejected = w.open_table(REJECTED)?;
            if has_rows(&rejected, sync)? {
                for (side, id) in &c.cleared {
                    rejected.remove((sync, side_key(*side), id.as_str()))?;
                }
            }
            for (side, id, reason, change) in &c.rejected {
                let key = (sync, side_key(*side), id.as_str());
                let previous: Option<Rejected> =
                    rejected.get(key)?.map(|v| dec(v.value())).transpose()?;
                let record = Rejected {
                    side: *side,
                    id: id.clone(),
                    reason: reason.clone(),
                    attempts: previous.as_ref().map_or(1, |p| p.attempts + 1),
                    first_at: previous.as_ref().map_or(now, |p| p.first_at),
                    last_at: now,
                    change: change.clone().or_else(|| previous.and_then(|p| p.change)),
                };
                rejected.insert(key, enc(&record)?.as_slice())?;
            }

            let mut dirty = w.open_table(DIRTY)?;
            if dirty.range(of_sync(sync))?.next().is_some() {
                for link in &c.clean {
                    dirty.remove((sync.as_bytes(), *link))?;
                }
            }
            for (link, reason) in &c.dirty {
                let before = dirty
                    .get((sync.as_bytes(), *link))?
                    .map(|v| dec::<Dirty>(v.value()))
                    .transpose()?
                    .map_or(0, |d| d.attempts);
                // Back off 1 s, 2 s, 4 s ... up to 10 minutes: a bad record never blocks the
                // others, and never hammers the system either. A link of a call too big for the
                // plugin is tried again at once, in a smaller call, and not counted.
                let again_now = c.dirty_now.contains(link);
                let attempts = if again_now { before } else { before + 1 };
                let delay = if again_now {
                    0
                } else {
                    (1_000_000i64 << attempts.min(10).saturating_sub(1)).min(600_000_000)
                };
                let d = Dirty {
                    due_at: now + delay,
                    attempts,
                    reason: reason.clone(),
                };
                dirty.insert((sync.as_bytes(), *link), enc(&d)?.as_slice())?;
            }

            put_activity(&mut w.open_table(ACTIVITY)?, &mut counters, &c.activity)?;

            let mut intents = w.open_table(INTENTS)?;
            clear_sync(&mut intents, sync)?;
            if !c.keep_intents.is_empty() {
                let row = link_bytes::encode_intents(c.keep_intents.iter().map(Intent::borrowed))?;
                push_intents(&mut intents, &mut counters, sync, &row)?;
            }

            let mut syncs = w.open_table(SYNCS)?;
            syncs.insert(sync, enc(&c.stats)?.as_slice())?;
        }
        w.commit()?;
        Ok(())
    }

    /// Saves the links recovery settled, with the writes it found made in the activity, and
    /// keeps only the intents it has not dealt with yet (`rest`, none when it finished), in
    /// one transaction, without touching cursors. A recovery stopped part-way by a failing side
    /// keeps what it learnt, so a side that fails now and then cannot send it back to the
    /// start every time.
    pub fn commit_recovered(
        &self,
        sync: &str,
        now: i64,
        links: &[Link],
        conflicts: &[ConflictNote],
        activity: &[Activity],
        rest: &[Intent],
    ) -> Result<(), StateError> {
        let w = self.begin_write()?;
        {
            let mut t = w.open_table(LINKS)?;
            let mut index = w.open_table(INDEX)?;
            let mut counters = w.open_table(COUNTERS)?;
            put_links(&mut t, &mut index, &mut counters, sync, links, None)?;
            put_activity(&mut w.open_table(ACTIVITY)?, &mut counters, activity)?;
            if !conflicts.is_empty() {
                let mut table = w.open_table(CONFLICTS)?;
                let mut open = w.open_table(OPEN_CONFLICTS)?;
                let mut next = counters.get("conflict")?.map_or(1, |v| v.value());
                put_conflicts(
                    &mut table,
                    &mut open,
                    &mut next,
                    (sync, now),
                    conflicts,
                    links,
                )?;
                counters.insert("conflict", next)?;
            }
            if let Some(max) = links.iter().map(|l| l.id).max() {
                let key = format!("link:{sync}");
                let next = counters.get(key.as_str())?.map_or(1, |v| v.value());
                counters.insert(key.as_str(), next.max(max + 1))?;
            }
            let mut intents = w.open_table(INTENTS)?;
            clear_sync(&mut intents, sync)?;
            if !rest.is_empty() {
                let row = link_bytes::encode_intents(rest.iter().map(Intent::borrowed))?;
                push_intents(&mut intents, &mut counters, sync, &row)?;
            }
        }
        w.commit()?;
        Ok(())
    }

    pub fn stats(&self, sync: &str) -> Result<SyncStats, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(SYNCS)?;
        Ok(t.get(sync)?
            .map(|v| dec(v.value()))
            .transpose()?
            .unwrap_or_default())
    }

    /// Conflicts, newest first; only open ones unless `all`.
    pub fn conflicts(&self, all: bool) -> Result<Vec<Conflict>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(CONFLICTS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            let c: Conflict = dec(v.value())?;
            if all || c.status == ConflictStatus::Open {
                out.push(c);
            }
        }
        out.reverse();
        Ok(out)
    }

    pub fn conflict(&self, id: u64) -> Result<Conflict, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(CONFLICTS)?;
        match t.get(id)? {
            Some(v) => dec(v.value()),
            None => Err(StateError::NoSuchConflict(id)),
        }
    }

    /// A person settles a conflict: the link is pinned to the chosen value (or, for a held
    /// delete, the delete is approved or the deleted record restored) and retried at once.
    pub fn resolve_conflict(
        &self,
        id: u64,
        choice: Choice,
        by: &str,
        now: i64,
    ) -> Result<Conflict, StateError> {
        let w = self.begin_write()?;
        let record = {
            let mut conflicts = w.open_table(CONFLICTS)?;
            let mut record: Conflict = match conflicts.get(id)? {
                Some(v) => dec(v.value())?,
                None => return Err(StateError::NoSuchConflict(id)),
            };
            if record.status != ConflictStatus::Open {
                let status = format!("{:?}", record.status).to_lowercase();
                return Err(StateError::NotOpen(id, status));
            }
            let sync = record.sync.clone();
            let mut links = w.open_table(LINKS)?;
            let mut link = match links.get((sync.as_bytes(), record.link))? {
                Some(v) => link_bytes::decode(v.value()).map_err(in_link(&sync, record.link))?,
                None => {
                    return Err(StateError::Storage(format!(
                        "conflict {id} names link {} which does not exist",
                        record.link
                    )))
                }
            };
            if let Some(side) = choice.taken().filter(|s| s.index() >= link.sides()) {
                return Err(StateError::Query(format!(
                    "conflict {id}: sync {sync} has no {side} side"
                )));
            }
            if record.field == crate::engine::WHOLE_RECORD
                && link.status == LinkStatus::Filtered
                && !link.left.deleted
                && !link.right.deleted
            {
                // A record left its filter and the sync holds such leavings for a person: the
                // value "delete" deletes the copy; any other answer keeps it, and the pair stays
                // out of step until the record passes again.
                link.delete_approved = matches!(&choice, Choice::Value(Value::Text(t)) if t.eq_ignore_ascii_case("delete"));
                link.copy_kept = !link.delete_approved;
            } else if record.field == crate::engine::WHOLE_RECORD {
                // Taking a side that kept its record (or giving a value) keeps the record;
                // taking a side that deleted it approves the delete.
                let keep = choice.taken().is_none_or(|s| !link.side(s).deleted);
                if keep {
                    // Restore: the deleted sides' records are created again from the others'.
                    for i in 0..link.sides() {
                        let st = link.side_mut(Side::nth(i));
                        if st.deleted {
                            *st = crate::engine::SideState::default();
                        }
                    }
                    link.base.clear();
                } else {
                    link.delete_approved = true;
                }
            } else {
                let value = match &choice {
                    Choice::Value(v) => Some(v.clone()),
                    taken => record
                        .value(taken.taken().expect("a side is taken"))
                        .cloned(),
                };
                if let Some(v) = value {
                    link.pins.insert(record.field.clone(), v);
                }
            }
            if link.each_side().any(|(_, s)| s.id.is_none()) {
                let mut index = w.open_table(INDEX)?;
                for side in Side::all(link.sides()) {
                    if link.side(side).id.is_none() {
                        // No UTF-8 text holds the byte 0xff: every id sorts below it.
                        let of_side = (sync.as_bytes(), side_key(side), &b""[..])
                            ..=(sync.as_bytes(), side_key(side), &[0xff][..]);
                        let stale: Vec<Vec<u8>> = index
                            .range(of_side)?
                            .filter_map(|i| i.ok())
                            .filter(|(_, v)| v.value() == link.id)
                            .map(|(k, _)| k.value().2.to_owned())
                            .collect();
                        for k in stale {
                            index.remove((sync.as_bytes(), side_key(side), k.as_slice()))?;
                        }
                    }
                }
            }
            links.insert(
                (sync.as_bytes(), link.id),
                link_bytes::encode(&link).as_slice(),
            )?;
            let mut open = w.open_table(OPEN_CONFLICTS)?;
            open.remove((sync.as_str(), record.link, record.field.as_str()))?;
            let mut dirty = w.open_table(DIRTY)?;
            let d = Dirty {
                due_at: now,
                attempts: 0,
                reason: format!("conflict {id} resolved"),
            };
            dirty.insert((sync.as_bytes(), link.id), enc(&d)?.as_slice())?;
            record.status = ConflictStatus::Resolved;
            record.resolved_by = Some(by.to_owned());
            record.choice = Some(choice);
            record.updated_at = now;
            conflicts.insert(id, enc(&record)?.as_slice())?;
            record
        };
        w.commit()?;
        Ok(record)
    }

    /// The activity log, oldest first, for one sync (or all).
    pub fn activity(&self, sync: Option<&str>) -> Result<Vec<Activity>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(ACTIVITY)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            let row: ActivityRow = dec(v.value())?;
            if sync.is_none_or(|s| s == row.sync) {
                row.expand(&mut out)?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::Text(v.to_string())))
            .collect()
    }

    fn link() -> Link {
        let base = fields(&[("name", "Ada"), ("email", "ada@example.com")]);
        let mut link = Link::new(7);
        link.base = base.clone();
        link.left = SideState {
            id: Some("1".into()),
            seen: Some(base.clone()),
            version: Some("v1".into()),
            changed_at: Some(5),
            read_time: false,
            rewritten: Default::default(),
            deleted: false,
            counted: Default::default(),
        };
        link.right = SideState {
            id: Some("r1".into()),
            seen: Some(fields(&[("name", "Ada L."), ("email", "ada@example.com")])),
            version: None,
            changed_at: None,
            read_time: false,
            rewritten: Default::default(),
            deleted: false,
            counted: Default::default(),
        };
        link
    }

    /// Link `id` of records `left` and `r<id>`.
    fn with_left(id: u64, left: Option<&str>) -> Link {
        let mut l = link();
        l.id = id;
        l.left.id = left.map(str::to_owned);
        l.right.id = Some(format!("r{id}"));
        l
    }

    fn links_commit(links: Vec<Link>) -> CycleCommit {
        CycleCommit {
            next_link_id: 6,
            links,
            ..CycleCommit::default()
        }
    }

    #[test]
    fn a_record_id_that_moves_to_an_older_link_in_one_commit_points_at_it() {
        // Link 5 held left record "x"; in one commit link 3 takes "x" and link 5 lets it go.
        // Written link by link, link 3's index entry went in first and link 5's clean-up of
        // its old id then removed it.
        let state = State::in_memory().unwrap();
        let commit = links_commit;
        state
            .commit_cycle(
                "items",
                1,
                commit(vec![with_left(3, None), with_left(5, Some("x"))]),
            )
            .unwrap();
        assert_eq!(state.link_for("items", Side::LEFT, "x").unwrap(), Some(5));
        state
            .commit_cycle(
                "items",
                2,
                commit(vec![with_left(3, Some("x")), with_left(5, None)]),
            )
            .unwrap();
        assert_eq!(state.link_for("items", Side::LEFT, "x").unwrap(), Some(3));
        assert_eq!(state.link_for("items", Side::RIGHT, "r5").unwrap(), Some(5));
    }

    #[test]
    fn a_link_letting_go_of_an_id_another_link_took_leaves_that_links_entry() {
        // A record id reused (a SQLite rowid after a delete) can be held by two links; the
        // index points at the one that took it last, and keeps pointing there.
        let state = State::in_memory().unwrap();
        let with_left = |id: u64, left: &str| with_left(id, Some(left));
        let commit = links_commit;
        state
            .commit_cycle("items", 1, commit(vec![with_left(3, "x")]))
            .unwrap();
        state
            .commit_cycle("items", 2, commit(vec![with_left(5, "x")]))
            .unwrap();
        assert_eq!(state.link_for("items", Side::LEFT, "x").unwrap(), Some(5));
        state
            .commit_cycle("items", 3, commit(vec![with_left(3, "y")]))
            .unwrap();
        assert_eq!(state.link_for("items", Side::LEFT, "x").unwrap(), Some(5));
        assert_eq!(state.link_for("items", Side::LEFT, "y").unwrap(), Some(3));
        // Written again unchanged, link 3 keeps its entries.
        state
            .commit_cycle("items", 4, commit(vec![with_left(3, "y")]))
            .unwrap();
        assert_eq!(state.link_for("items", Side::LEFT, "y").unwrap(), Some(3));
        assert_eq!(state.link_for("items", Side::RIGHT, "r3").unwrap(), Some(3));
    }

    /// A state written before its per-record tables keyed their text as bytes is moved over
    /// when opened: its links, their index, intents and retries read back as they were, no
    /// temporary table is left, and a Duplex from before can no longer open those tables (it
    /// would start over with none).
    #[test]
    fn a_state_keyed_by_text_before_is_moved_over_when_opened() {
        use redb::TableHandle;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let old = link();
        let intent = Intent {
            link: old.clone(),
            side: Side::RIGHT,
            op: OpKind::Create {
                fields: old.base.clone(),
            },
        };
        let dirty = Dirty {
            due_at: 9,
            attempts: 2,
            reason: "refused".into(),
        };
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let row = |name| TableDefinition::<(&str, u64), &[u8]>::new(name);
                w.open_table(row("links"))
                    .unwrap()
                    .insert(("items", 7), link_bytes::encode(&old).as_slice())
                    .unwrap();
                let intents = link_bytes::encode_intents([intent.borrowed()].into_iter()).unwrap();
                w.open_table(row("intents"))
                    .unwrap()
                    .insert(("items", 1), intents.as_slice())
                    .unwrap();
                w.open_table(row("dirty"))
                    .unwrap()
                    .insert(("items", 7), enc(&dirty).unwrap().as_slice())
                    .unwrap();
                let mut index = w
                    .open_table(TableDefinition::<(&str, u8, &str), u64>::new("link_index"))
                    .unwrap();
                index.insert(("items", 0, "1"), 7).unwrap();
                index.insert(("items", 1, "r1"), 7).unwrap();
            }
            w.commit().unwrap();
        }
        let state = State::open(&path).unwrap();
        assert_eq!(state.all_links("items").unwrap(), vec![old.clone()]);
        assert_eq!(state.link_for("items", Side::LEFT, "1").unwrap(), Some(7));
        assert_eq!(state.link_for("items", Side::RIGHT, "r1").unwrap(), Some(7));
        assert_eq!(state.intents("items").unwrap(), vec![intent]);
        assert_eq!(state.dirty("items").unwrap(), vec![(7, dirty)]);
        drop(state);
        // Opened again, nothing is left to move, and nothing moves twice.
        let state = State::open(&path).unwrap();
        assert_eq!(state.all_links("items").unwrap(), vec![old]);
        let r = state.db.begin_read().unwrap();
        let tables: Vec<String> = r
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        assert!(!tables.iter().any(|t| t.ends_with(".moving")), "{tables:?}");
        let before = r.open_table(TableDefinition::<(&str, u64), &[u8]>::new("links"));
        assert!(
            matches!(before, Err(redb::TableError::TableTypeMismatch { .. })),
            "an earlier Duplex is refused"
        );
    }

    #[test]
    fn a_damaged_link_names_its_sync_and_id() {
        let state = State::in_memory().unwrap();
        let w = state.db.begin_write().unwrap();
        w.open_table(LINKS)
            .unwrap()
            .insert((&b"items"[..], 7), [1u8, 7].as_slice())
            .unwrap();
        w.commit().unwrap();
        let e = state.links("items", &[], &[7]).unwrap_err().to_string();
        assert_eq!(
            e,
            "state file: sync items, link 7: damaged: it ends at byte 2 of 2"
        );
    }

    #[test]
    fn a_link_stored_as_json_before_reads_and_is_replaced_in_the_binary_form() {
        let state = State::in_memory().unwrap();
        let old = link();
        let commit = |links: Vec<Link>| CycleCommit {
            next_link_id: 8,
            links,
            ..CycleCommit::default()
        };
        state
            .commit_cycle("items", 1, commit(vec![old.clone()]))
            .unwrap();
        // As an earlier Duplex stored it.
        let w = state.db.begin_write().unwrap();
        w.open_table(LINKS)
            .unwrap()
            .insert((&b"items"[..], 7), enc(&old).unwrap().as_slice())
            .unwrap();
        w.commit().unwrap();
        let found = state.links("items", &[(Side::LEFT, "1".into())], &[]);
        assert_eq!(found.unwrap(), vec![old.clone()]);
        // Its left record is now another one: the old id leaves the index.
        let mut moved = old;
        moved.left.id = Some("2".into());
        state
            .commit_cycle("items", 2, commit(vec![moved.clone()]))
            .unwrap();
        assert_eq!(state.link_for("items", Side::LEFT, "1").unwrap(), None);
        assert_eq!(state.link_for("items", Side::LEFT, "2").unwrap(), Some(7));
        assert_eq!(state.all_links("items").unwrap(), vec![moved]);
        let r = state.db.begin_read().unwrap();
        let stored = r
            .open_table(LINKS)
            .unwrap()
            .get((&b"items"[..], 7))
            .unwrap();
        assert_ne!(stored.unwrap().value()[0], b'{');
    }

    #[test]
    fn a_side_that_saw_the_base_is_stored_once_and_reads_back_whole() {
        let link = link();
        let stored = enc(&link).unwrap();
        let text = String::from_utf8(stored.clone()).unwrap();
        assert_eq!(text.matches("ada@example.com").count(), 2, "{text}");
        assert_eq!(dec::<Link>(&stored).unwrap(), link);

        let mut unseen = link.clone();
        unseen.right.seen = None;
        unseen.left.seen = Some(Fields::new());
        assert_eq!(dec::<Link>(&enc(&unseen).unwrap()).unwrap(), unseen);
    }

    #[test]
    fn a_side_whose_decimal_differs_from_the_base_only_in_text_keeps_its_text() {
        // "12.50" equals "12.5" as a number; stored as "the base" it would read back as "12.5".
        let mut link = link();
        link.base
            .insert("price".into(), Value::Decimal("12.5".into()));
        let mut seen = link.base.clone();
        seen.insert("price".into(), Value::Decimal("12.50".into()));
        link.left.seen = Some(seen);
        let back: Link = dec(&enc(&link).unwrap()).unwrap();
        let price = &back.left.seen.as_ref().unwrap()["price"];
        assert!(
            matches!(price, Value::Decimal(d) if d == "12.50"),
            "{price:?}"
        );
    }

    #[test]
    fn links_stored_before_the_compact_form_still_read() {
        let old = r#"{"id":7,
            "left":{"id":"1","seen":{"email":{"type":"text","value":"ada@example.com"},"name":{"type":"text","value":"Ada"}},"version":"v1","changed_at":5,"deleted":false},
            "right":{"id":"r1","seen":{"email":{"type":"text","value":"ada@example.com"},"name":{"type":"text","value":"Ada L."}},"version":null,"changed_at":null,"deleted":false},
            "base":{"email":{"type":"text","value":"ada@example.com"},"name":{"type":"text","value":"Ada"}},
            "status":"Active"}"#;
        assert_eq!(dec::<Link>(old.as_bytes()).unwrap(), link());
    }

    fn wrote(link: u64, op: &str, fields: &[&str]) -> Activity {
        Activity {
            at: 9,
            sync: "items".into(),
            link,
            side: Side::RIGHT,
            op: op.into(),
            record: format!("r{link}"),
            fields: fields.iter().map(|f| f.to_string()).collect(),
            decided: None,
        }
    }

    #[test]
    fn a_run_of_like_writes_is_one_activity_row_and_reads_back_write_by_write() {
        let state = State::in_memory().unwrap();
        // An entry in the form stored before: one row per write.
        let old = r#"{"at":1,"sync":"items","link":100,"side":"left","op":"delete","record":"x","fields":[]}"#;
        {
            let w = state.db.begin_write().unwrap();
            w.open_table(ACTIVITY)
                .unwrap()
                .insert(1, old.as_bytes())
                .unwrap();
            w.open_table(COUNTERS)
                .unwrap()
                .insert("activity", 2)
                .unwrap();
            w.commit().unwrap();
        }
        let activity = vec![
            wrote(1, "create", &["code", "qty"]),
            wrote(2, "create", &["code", "qty"]),
            wrote(3, "create", &["code", "qty"]),
            wrote(4, "update", &["qty"]),
            wrote(5, "create", &["code", "qty"]),
            wrote(6, "create", &["code", "qty"]),
        ];
        let commit = CycleCommit {
            activity: activity.clone(),
            ..CycleCommit::default()
        };
        state.commit_cycle("items", 9, commit).unwrap();

        let rows = state
            .db
            .begin_read()
            .unwrap()
            .open_table(ACTIVITY)
            .unwrap()
            .iter()
            .unwrap()
            .count();
        assert_eq!(
            rows,
            1 + 3,
            "the old row, then creates 1-3, update 4, creates 5-6"
        );
        let back = state.activity(Some("items")).unwrap();
        assert_eq!(back[0].record, "x");
        assert_eq!(back[0].op, "delete");
        assert_eq!(back[1..], activity[..]);
        assert!(state.activity(Some("other")).unwrap().is_empty());
    }

    #[test]
    fn decisions_are_a_row_each_and_read_back_with_both_values_and_times() {
        let state = State::in_memory().unwrap();
        let decided = |link: u64, winner: Side| Activity {
            op: DECIDED.into(),
            side: winner,
            decided: Some(Decided {
                more: Vec::new(),
                among: Vec::new(),
                link,
                field: "qty".into(),
                left: Value::Int(1),
                right: Value::Int(2),
                left_at: Some(10),
                right_at: Some(20),
                left_read_time: false,
                right_read_time: true,
                winner,
                rule: None,
                value: None,
                plugin: None,
            }),
            ..wrote(link, DECIDED, &["qty"])
        };
        let activity = vec![
            decided(1, Side::RIGHT),
            decided(2, Side::RIGHT),
            wrote(1, "update", &["qty"]),
        ];
        let commit = CycleCommit {
            activity: activity.clone(),
            ..CycleCommit::default()
        };
        state.commit_cycle("items", 9, commit).unwrap();
        assert_eq!(state.activity(Some("items")).unwrap(), activity);
    }

    #[test]
    fn a_create_of_the_base_is_stored_without_a_second_copy_and_reads_back_whole() {
        let mut link = link();
        link.right = SideState::default();
        let create = |link: &Link, fields: Fields| Intent {
            link: link.clone(),
            side: Side::RIGHT,
            op: OpKind::Create { fields },
        };
        let of_base = create(&link, link.base.clone());
        let text = String::from_utf8(enc(&of_base).unwrap()).unwrap();
        assert_eq!(text.matches("ada@example.com").count(), 1, "{text}");
        assert_eq!(dec::<Intent>(text.as_bytes()).unwrap(), of_base);

        // Anything else keeps its op, down to how a decimal is written.
        let mut other = link.base.clone();
        other.insert("price".into(), Value::Decimal("12.50".into()));
        link.base
            .insert("price".into(), Value::Decimal("12.5".into()));
        for intent in [
            create(&link, other),
            Intent {
                link: link.clone(),
                side: Side::LEFT,
                op: OpKind::Delete {
                    id: "1".into(),
                    if_version: Some("v1".into()),
                },
            },
        ] {
            let stored = enc(&intent).unwrap();
            let back: Intent = dec(&stored).unwrap();
            assert_eq!(format!("{back:?}"), format!("{intent:?}"));
        }
        assert!(dec::<Intent>(
            br#"{"link":{"id":1,"left":{},"right":{},"base":{},"status":"Active"},"side":"left"}"#
        )
        .is_err());
    }

    fn every_kind_of_value() -> Fields {
        [
            ("null", Value::Null),
            ("yes", Value::Bool(true)),
            ("int", Value::Int(i64::MIN)),
            ("big", Value::Int(i64::MAX)),
            ("float", Value::Float(-2.5)),
            ("whole float", Value::Float(3.0)),
            ("decimal", Value::Decimal("12.50".into())),
            ("text", Value::Text("c1".into())),
            ("numeric text", Value::Text("42".into())),
            ("empty text", Value::Text(String::new())),
            ("bytes", Value::Bytes(vec![0, 1, 254, 255])),
            ("time", Value::Time(1_700_000_000_123_456)),
            ("json", Value::Json(r#"{"a":[1,2]}"#.into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Equality of `Value` treats decimals by value; storage must keep them as written, and
    /// keep each type (a float 3.0 is not an integer 3, a text "42" is not a number).
    fn same(a: &Fields, b: &Fields) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn every_kind_of_value_is_stored_compactly_and_reads_back_as_it_was() {
        let values = every_kind_of_value();
        let stored = enc(&values).unwrap();
        let back: Fields = dec(&stored).unwrap();
        assert!(same(&back, &values), "{back:?}");
        let text = String::from_utf8(stored).unwrap();
        assert!(text.contains(r#""text":"c1""#), "{text}");
        assert!(text.contains(r#""int":-9223372036854775808"#), "{text}");
        assert!(text.contains(r#""decimal":{"d":"12.50"}"#), "{text}");
        assert!(!text.contains("type"), "{text}");
    }

    #[test]
    fn a_null_value_is_not_taken_for_no_value() {
        // A conflict's side may hold null (the field was cleared) or nothing (the record is gone).
        let sides: (Option<Value>, Option<Value>) = (Some(Value::Null), None);
        let back: (Option<Value>, Option<Value>) = dec(&enc(&sides).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{sides:?}"));
    }

    #[test]
    fn a_float_that_is_not_a_number_or_infinite_reads_back() {
        // JSON has neither: serde_json wrote null, and the intent or conflict then did not read.
        let f: Fields = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY]
            .into_iter()
            .enumerate()
            .map(|(i, f)| (i.to_string(), Value::Float(f)))
            .collect();
        let stored = enc(&f).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&stored),
            r#"{"0":{"f":"NaN"},"1":{"f":"inf"},"2":{"f":"-inf"}}"#
        );
        assert!(same(&dec(&stored).unwrap(), &f));
        assert!(dec::<Fields>(br#"{"0":{"f":"1.5"}}"#).is_err());
    }

    #[test]
    fn values_stored_in_the_earlier_tagged_form_still_read() {
        let old = r#"{"null":{"type":"null"},"yes":{"type":"bool","value":true},
            "int":{"type":"int","value":-9223372036854775808},"big":{"type":"int","value":9223372036854775807},
            "float":{"type":"float","value":-2.5},"whole float":{"type":"float","value":3.0},
            "decimal":{"type":"decimal","value":"12.50"},"text":{"type":"text","value":"c1"},
            "numeric text":{"type":"text","value":"42"},"empty text":{"type":"text","value":""},
            "bytes":{"type":"bytes","value":[0,1,254,255]},"time":{"type":"time","value":1700000000123456},
            "json":{"type":"json","value":"{\"a\":[1,2]}"}}"#;
        let back: Fields = dec(old.as_bytes()).unwrap();
        assert!(same(&back, &every_kind_of_value()), "{back:?}");
    }

    #[test]
    fn a_damaged_value_is_an_error_not_a_guess() {
        for bad in [
            r#"{"a":{}}"#,
            r#"{"a":{"q":1}}"#,
            r#"{"a":{"type":"text"}}"#,
            r#"{"a":18446744073709551615}"#,
            r#"{"a":{"x":"zz"}}"#,
        ] {
            assert!(dec::<Fields>(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
