//! Schema drift: the columns each sync was set up against, what has changed in them since,
//! and which mapped fields that stops.
//!
//! Each sync keeps a record of the schema a person accepted (its first run accepts what it
//! finds; `duplex check --accept` accepts what is there now): every column of both streams with
//! its type. The runner compares the sides' schemas with it (see `SyncRunner::check_schema`);
//! a mapped column that is gone, or whose type changed, stops that field only: its values are
//! not read from that side and nothing is written to it on either side, while the rest of the
//! record syncs. A stop lasts until a person accepts the schema again, for only a person can say
//! whether a column that came back holds the values it had (restored) or nothing (re-added):
//! taking the second for edits would blank the other side. Columns that appear unmapped are
//! reported, never synced.
//!
//! The records live in files next to the state, one per sync (`duplex.redb.schema/<sync>.json`),
//! not in redb: `duplex check` and `status` read them while a running Duplex holds the state.
//! A record is written whole to a temporary file and renamed into place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{FieldSpec, FieldType, Side, Stopped};

/// A stream's columns and their types.
pub type Shape = BTreeMap<String, FieldType>;

/// A sync's schema record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncSchema {
    /// The columns accepted on each side.
    pub left: Shape,
    pub right: Shape,
    /// The third side's and on, in a sync of more than two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Shape>,
    /// Mapped fields stopped by a change of their column, with what changed on which side.
    #[serde(default)]
    pub stopped: BTreeMap<String, Stopped>,
    /// Columns that appeared on a side since, mapped by no field: reported, not synced.
    #[serde(default)]
    pub added: Vec<NewColumn>,
}

/// A column a side gained that the sync does not map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NewColumn {
    pub side: Side,
    pub column: String,
    #[serde(rename = "type")]
    pub type_: FieldType,
}

impl std::fmt::Display for NewColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "new column {} ({}) on the {}, not synced: map it in the config to sync it",
            self.column,
            type_name(self.type_),
            self.side
        )
    }
}

impl SyncSchema {
    /// A record accepting `shapes` as they are.
    pub fn accepting(shapes: Vec<Shape>) -> SyncSchema {
        let mut shapes = shapes.into_iter();
        SyncSchema {
            left: shapes.next().unwrap_or_default(),
            right: shapes.next().unwrap_or_default(),
            more: shapes.collect(),
            ..SyncSchema::default()
        }
    }

    /// The columns accepted on `side`; none for a side the record has not seen.
    pub fn shape(&self, side: Side) -> &Shape {
        static NONE: Shape = Shape::new();
        match side.index() {
            0 => &self.left,
            1 => &self.right,
            n => self.more.get(n - 2).unwrap_or(&NONE),
        }
    }

    /// Compares the sides' schemas now with the accepted one. Stops are kept: a field stopped
    /// earlier stays stopped though its column is back, until a person accepts. Returns whether
    /// the record changed (a field stopped anew, or a new column appeared).
    pub fn compare(&mut self, fields: &[FieldSpec], labels: &[&str], now: &[&Shape]) -> bool {
        let before = (self.stopped.clone(), self.added.clone());
        // A field the config no longer maps is no longer stopped: it is gone.
        self.stopped
            .retain(|name, _| fields.iter().any(|f| &f.name == name));
        for (i, (label, current)) in labels.iter().zip(now).enumerate() {
            let side = Side::nth(i);
            let accepted = self.shape(side).clone();
            let mapped: BTreeSet<&str> = fields.iter().map(|f| f.side_name(side)).collect();
            // Unmapped columns the accepted schema lacks: new. One of a gone column's type may
            // be that column renamed.
            let new: Vec<(&String, FieldType)> = current
                .iter()
                .filter(|(c, _)| !accepted.contains_key(*c) && !mapped.contains(c.as_str()))
                .map(|(c, t)| (c, *t))
                .collect();
            for f in fields {
                let column = f.side_name(side);
                let expected = accepted
                    .get(column)
                    .copied()
                    .unwrap_or_else(|| f.side_type(side));
                let change = match current.get(column) {
                    None => {
                        let renamed: Vec<&str> = new
                            .iter()
                            .filter(|(_, t)| *t == expected)
                            .map(|(c, _)| c.as_str())
                            .collect();
                        let hint = match renamed.as_slice() {
                            [] => String::new(),
                            some => format!(
                                " (new column{} of its type: {}; renamed? map the field to it)",
                                if some.len() == 1 { "" } else { "s" },
                                some.join(", ")
                            ),
                        };
                        format!("column {column} is gone from {label}{hint}")
                    }
                    Some(t) if *t != expected => format!(
                        "column {column} of {label} changed from {} to {}",
                        type_name(expected),
                        type_name(*t)
                    ),
                    Some(_) => continue,
                };
                let stop = self.stopped.entry(f.name.clone()).or_default();
                if stop.on(side).is_none() {
                    *stop.on_mut(side) = Some(change);
                }
            }
            // A new column the config maps now is no longer news.
            self.added
                .retain(|n| n.side != side || !mapped.contains(n.column.as_str()));
            for (column, t) in new {
                let n = NewColumn {
                    side,
                    column: column.clone(),
                    type_: t,
                };
                if !self.added.contains(&n) {
                    self.added.push(n);
                }
            }
        }
        self.added.sort();
        (self.stopped.clone(), self.added.clone()) != before
    }

    /// What `status` and `check` print: one line per stopped field and new column.
    pub fn report(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .stopped
            .iter()
            .map(|(f, s)| format!("field {f} stopped: {}", s.reason()))
            .collect();
        lines.extend(self.added.iter().map(ToString::to_string));
        lines
    }

    /// The record of `sync` in `dir`, if there is one.
    pub fn load(dir: &Path, sync: &str) -> Result<Option<SyncSchema>, String> {
        let path = file(dir, sync);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the record of `sync` in `dir`, whole or not at all.
    pub fn save(&self, dir: &Path, sync: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let path = file(dir, sync);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).expect("a schema record serialises");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    }
}

/// A discovered stream's columns and their types.
pub fn shape_of(stream: &crate::plugin::Stream) -> Shape {
    stream
        .fields
        .iter()
        .map(|f| (f.name.clone(), f.type_.into()))
        .collect()
}

/// Where the schema records of the syncs whose state is `state` live.
pub fn dir(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_owned();
    name.push(".schema");
    state.with_file_name(name)
}

fn file(dir: &Path, sync: &str) -> PathBuf {
    dir.join(format!("{}.json", crate::api::percent_encode(sync)))
}

/// A type as the config and the connectors' schemas name it.
pub fn type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::Boolean => "boolean",
        FieldType::Integer => "integer",
        FieldType::Float => "float",
        FieldType::Decimal => "decimal",
        FieldType::Text => "text",
        FieldType::Bytes => "bytes",
        FieldType::Timestamp => "timestamp",
        FieldType::Json => "json",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Direction;

    fn field(name: &str, left: &str, right: &str, t: FieldType) -> FieldSpec {
        FieldSpec {
            more: Vec::new(),
            name: name.into(),
            left: left.into(),
            right: right.into(),
            left_type: t,
            right_type: t,
            direction: Direction::Both,
            values: vec![],
            policy: None,
            counter: false,
        }
    }

    fn shape(cols: &[(&str, FieldType)]) -> Shape {
        cols.iter().map(|(c, t)| ((*c).to_owned(), *t)).collect()
    }

    #[test]
    fn a_gone_or_retyped_column_stops_its_field_only_and_a_new_one_is_reported() {
        use FieldType::*;
        let fields = [
            field("email", "email", "mail", Text),
            field("phone", "phone", "tel", Text),
            field("qty", "qty", "stock", Integer),
        ];
        let left = shape(&[
            ("id", Integer),
            ("email", Text),
            ("phone", Text),
            ("qty", Integer),
        ]);
        let right = shape(&[
            ("id", Integer),
            ("mail", Text),
            ("tel", Text),
            ("stock", Integer),
        ]);
        let mut record = SyncSchema::accepting(vec![left.clone(), right.clone()]);
        assert!(!record.compare(&fields, &["crm.people", "erp.people"], &[&left, &right]));

        // The left's phone is renamed mobile, the right's stock becomes text, a note appears.
        let left2 = shape(&[
            ("id", Integer),
            ("email", Text),
            ("mobile", Text),
            ("qty", Integer),
        ]);
        let right2 = shape(&[
            ("id", Integer),
            ("mail", Text),
            ("tel", Text),
            ("stock", Text),
            ("note", Text),
        ]);
        assert!(record.compare(&fields, &["crm.people", "erp.people"], &[&left2, &right2]));
        assert_eq!(
            record.stopped["phone"].left.as_deref(),
            Some("column phone is gone from crm.people (new column of its type: mobile; renamed? map the field to it)")
        );
        assert_eq!(record.stopped["phone"].right, None);
        assert_eq!(
            record.stopped["qty"].right.as_deref(),
            Some("column stock of erp.people changed from integer to text")
        );
        assert!(!record.stopped.contains_key("email"));
        let added: Vec<&str> = record.added.iter().map(|n| n.column.as_str()).collect();
        assert_eq!(added, ["mobile", "note"]);
        // The same again changes nothing; the columns coming back do not resume the fields.
        assert!(!record.compare(&fields, &["crm.people", "erp.people"], &[&left2, &right2]));
        assert!(!record.compare(&fields, &["crm.people", "erp.people"], &[&left, &right]));
        assert_eq!(record.stopped.len(), 2);
        // A field taken out of the config is no longer reported.
        assert!(record.compare(
            &fields[..2],
            &["crm.people", "erp.people"],
            &[&left, &right]
        ));
        assert_eq!(record.stopped.keys().collect::<Vec<_>>(), ["phone"]);
    }

    #[test]
    fn a_record_survives_a_round_trip_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let at = self::dir(&dir.path().join("duplex.redb"));
        assert_eq!(SyncSchema::load(&at, "a/b").unwrap(), None);
        let record =
            SyncSchema::accepting(vec![shape(&[("id", FieldType::Integer)]), Shape::new()]);
        record.save(&at, "a/b").unwrap();
        assert_eq!(SyncSchema::load(&at, "a/b").unwrap(), Some(record));
    }
}
