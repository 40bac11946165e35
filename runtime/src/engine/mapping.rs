//! A sync's shape: which field of each side is which common field, in which direction it flows,
//! how values translate, and which policy settles a conflict.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::value::{canonical_decimal, convert, FieldType, Fields, Value};
use super::Side;

/// How a conflict on a field is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    /// The side that changed the record later wins. The time is the source's change time when
    /// the connector reports it, else when Duplex observed the change; a side whose change time
    /// is unknown counts as earliest. Ties go to the left side.
    LastWriterWins,
    /// This side always wins.
    Prefer(Side),
    /// Of the sides that changed the field, the first in this order wins: a priority order
    /// of systems (every side of the sync is listed).
    Order(Vec<Side>),
    /// A custom rule component decides (by its name in the config).
    Rule(String),
    /// A person decides; the field is held, the rest of the record flows.
    Manual,
}

/// Which way a field flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Both,
    /// The left side owns the field: its value is written to the right, and a change made on the
    /// right is put back.
    LeftToRight,
    /// The right side owns the field.
    RightToLeft,
    /// This side owns the field: its value is written to every other side.
    From(Side),
}

impl Direction {
    /// Whether the engine may write this field to `side`.
    pub fn writes_to(self, side: Side) -> bool {
        match self {
            Direction::Both => true,
            Direction::LeftToRight => side == Side::RIGHT,
            Direction::RightToLeft => side == Side::LEFT,
            Direction::From(owner) => side != owner,
        }
    }

    /// The owning side of a one-way field.
    pub fn owner(self) -> Option<Side> {
        match self {
            Direction::Both => None,
            Direction::LeftToRight => Some(Side::LEFT),
            Direction::RightToLeft => Some(Side::RIGHT),
            Direction::From(owner) => Some(owner),
        }
    }
}

/// What happens to the other side's record when one side deletes its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeletePolicy {
    /// Delete it too.
    Propagate,
    /// Keep it, and stop syncing the pair.
    Ignore,
    /// Keep it until a person approves the delete.
    Hold,
}

/// What happens to the copy on the other side when a record leaves its side's filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Leaving {
    /// Keep it as it is; the pair stops syncing until the record passes again.
    #[default]
    Keep,
    /// Delete it (conditionally, as any delete); a record that passes again is created anew.
    Delete,
    /// Keep it until a person approves deleting it, or keeps it.
    Hold,
}

/// Which records of each side the sync keeps in step (see `engine::filter`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    pub left: Option<super::Filter>,
    pub right: Option<super::Filter>,
    /// The third side's filter and on, in a sync of more than two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Option<super::Filter>>,
    pub leaving: Leaving,
}

impl Scope {
    /// Whether any side has a filter.
    pub fn any(&self) -> bool {
        self.left.is_some() || self.right.is_some() || self.more.iter().any(Option::is_some)
    }
}

/// How records are matched on first sight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchKey {
    /// A common field name.
    pub field: String,
    /// Compare text ignoring case (and surrounding spaces).
    pub ignore_case: bool,
}

impl MatchKey {
    /// The key's value in normalised form, or none when the record has no usable key.
    pub fn normalise(&self, v: &Value) -> Option<String> {
        match v {
            Value::Null => None,
            Value::Text(t) if t.trim().is_empty() => None,
            Value::Text(t) if self.ignore_case => Some(t.trim().to_lowercase()),
            Value::Text(t) => Some(t.trim().to_owned()),
            Value::Int(i) => Some(i.to_string()),
            Value::Decimal(d) => Some(canonical_decimal(d)),
            other => Some(other.display()),
        }
    }
}

/// One mapped field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// The common name (the left's name unless the config gives one).
    pub name: String,
    pub left: String,
    pub right: String,
    /// The common type is the left field's type.
    pub left_type: FieldType,
    pub right_type: FieldType,
    pub direction: Direction,
    /// Value translations, one row per value: the value on every side, in config order (the
    /// left's first, which is the common value): `open` on the left is `To Do` on the right.
    pub values: Vec<Vec<Value>>,
    /// Overrides the sync's default policy for this field.
    pub policy: Option<Policy>,
    /// A counter (stock on hand, seats used): both sides' changes are added, never one picked
    /// (see `engine::counter`). Integer or decimal, flowing both ways.
    #[serde(default)]
    pub counter: bool,
    /// The field on the third side and on, in a sync of more than two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<(String, FieldType)>,
}

impl FieldSpec {
    /// The field's name on `side`.
    pub fn side_name(&self, side: Side) -> &str {
        match side.index() {
            0 => &self.left,
            1 => &self.right,
            n => &self.more[n - 2].0,
        }
    }

    /// The field's type on `side`.
    pub fn side_type(&self, side: Side) -> FieldType {
        match side.index() {
            0 => self.left_type,
            1 => self.right_type,
            n => self.more[n - 2].1,
        }
    }

    /// A value as `side` holds it, translated to the common (left) value; a value outside the
    /// translations is itself.
    fn translate_in(&self, side: Side, v: Value) -> Value {
        let i = side.index();
        match self
            .values
            .iter()
            .find(|row| i > 0 && row.get(i) == Some(&v))
        {
            Some(row) => row[0].clone(),
            None => v,
        }
    }

    /// A common value as `side` holds it.
    fn translate_out(&self, side: Side, v: &Value) -> Value {
        self.values
            .iter()
            .find(|row| row.first() == Some(v))
            .and_then(|row| row.get(side.index()))
            .unwrap_or(v)
            .clone()
    }
}

/// A sync, as the engine needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncSpec {
    pub name: String,
    /// The tag Duplex's writes for this sync carry, so their echoes are known as such.
    pub origin: String,
    /// The sides' names, for conflicts and messages.
    pub left_name: String,
    pub right_name: String,
    /// The third side's name and on, in a sync of more than two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_names: Vec<String>,
    pub fields: Vec<FieldSpec>,
    pub match_key: Option<MatchKey>,
    pub policy: Policy,
    pub deletes: DeletePolicy,
    /// Record filters; by default every record syncs.
    #[serde(default)]
    pub scope: Scope,
    /// Fields stopped by schema drift, by common name: not read from a side whose column is
    /// gone or retyped, and written to neither (see `crate::schema`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stopped: BTreeMap<String, Stopped>,
}

/// Why a mapped field stopped syncing: what changed in each side's schema.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    /// What changed on the left, when its column did; its values there are not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub right: Option<String>,
    /// The third side and on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Option<String>>,
}

impl Stopped {
    /// What changed on `side`, if its column did.
    pub fn on(&self, side: Side) -> Option<&str> {
        match side.index() {
            0 => self.left.as_deref(),
            1 => self.right.as_deref(),
            n => self.more.get(n - 2).and_then(Option::as_deref),
        }
    }

    pub fn on_mut(&mut self, side: Side) -> &mut Option<String> {
        match side.index() {
            0 => &mut self.left,
            1 => &mut self.right,
            n => {
                if self.more.len() < n - 1 {
                    self.more.resize(n - 1, None);
                }
                &mut self.more[n - 2]
            }
        }
    }

    /// Both sides' changes, for a message.
    pub fn reason(&self) -> String {
        [&self.left, &self.right]
            .into_iter()
            .chain(&self.more)
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A value that could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field}: {message}")]
pub struct MapError {
    /// The side's field name.
    pub field: String,
    pub message: String,
}

impl SyncSpec {
    /// A side's connection name, as messages name it.
    pub fn side_name(&self, side: Side) -> &str {
        match side.index() {
            0 => &self.left_name,
            1 => &self.right_name,
            n => &self.more_names[n - 2],
        }
    }

    /// Sides' names as a list for a message: `crm, erp and desk`.
    pub fn list_sides(&self, sides: impl IntoIterator<Item = Side>) -> String {
        let names: Vec<&str> = sides.into_iter().map(|s| self.side_name(s)).collect();
        match names.as_slice() {
            [] => String::new(),
            [one] => (*one).to_owned(),
            [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        }
    }

    /// How many sides the sync has: two, or more.
    pub fn sides(&self) -> usize {
        2 + self.more_names.len()
    }

    /// The sync's sides, in config order.
    pub fn all_sides(&self) -> impl Iterator<Item = Side> {
        Side::all(self.sides())
    }

    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// A side's record filter, if it has one.
    pub fn filter(&self, side: Side) -> Option<&super::Filter> {
        match side.index() {
            0 => self.scope.left.as_ref(),
            1 => self.scope.right.as_ref(),
            n => self.scope.more.get(n - 2).and_then(Option::as_ref),
        }
    }

    /// Whether `field` stopped syncing (schema drift): it is neither merged nor written.
    pub fn is_stopped(&self, field: &str) -> bool {
        self.stopped.contains_key(field)
    }

    /// Whether `side`'s values of `field` must not be read: its column is gone or retyped.
    pub fn stopped_on(&self, field: &str, side: Side) -> bool {
        self.stopped
            .get(field)
            .is_some_and(|s| s.on(side).is_some())
    }

    /// Whether `field` is a counter, merged as deltas.
    pub fn is_counter(&self, field: &str) -> bool {
        self.field(field).is_some_and(|f| f.counter)
    }

    /// Whether a conflict may be left to a rule: then a plan may be made twice.
    pub fn asks_rules(&self) -> bool {
        let rule = |p: &Policy| matches!(p, Policy::Rule(_));
        rule(&self.policy)
            || self
                .fields
                .iter()
                .any(|f| f.policy.as_ref().is_some_and(rule))
    }

    pub fn policy_for(&self, field: &str) -> &Policy {
        self.field(field)
            .and_then(|f| f.policy.as_ref())
            .unwrap_or(&self.policy)
    }

    /// A side's record in common names and types. Fields the sync does not map are left out;
    /// fields the record lacks are absent (not null).
    pub fn map_in<'a, V: Into<Value>>(
        &self,
        side: Side,
        fields: impl IntoIterator<Item = (&'a str, V)>,
    ) -> Result<Fields, MapError> {
        // Values are taken (a side's value converted, a copy made) only for fields mapped
        // here: a table's other columns cost nothing.
        let mut by_name: BTreeMap<&str, V> = fields.into_iter().collect();
        let mut out = Fields::new();
        for f in &self.fields {
            let name = f.side_name(side);
            let Some(v) = by_name.remove(name) else {
                continue;
            };
            // A column gone or retyped: whatever it holds now would be misread.
            if self.stopped_on(&f.name, side) {
                continue;
            }
            let v = convert(f.translate_in(side, v.into()), f.left_type).map_err(|message| {
                MapError {
                    field: name.to_owned(),
                    message,
                }
            })?;
            out.insert(f.name.clone(), v);
        }
        Ok(out)
    }

    /// Common fields as a side's field names and types, for writing.
    pub fn map_out(&self, side: Side, fields: &Fields) -> Result<Vec<(String, Value)>, MapError> {
        let mut out = Vec::with_capacity(fields.len());
        for (name, v) in fields {
            let Some(f) = self.field(name) else { continue };
            if self.is_stopped(name) {
                continue;
            }
            let side_name = f.side_name(side);
            let v = convert(f.translate_out(side, v), f.side_type(side)).map_err(|message| {
                MapError {
                    field: side_name.to_owned(),
                    message,
                }
            })?;
            out.push((side_name.to_owned(), v));
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn spec() -> SyncSpec {
        let text = |n: &str, l: &str, r: &str| FieldSpec {
            more: Vec::new(),
            name: n.into(),
            left: l.into(),
            right: r.into(),
            left_type: FieldType::Text,
            right_type: FieldType::Text,
            direction: Direction::Both,
            values: vec![],
            policy: None,
            counter: false,
        };
        SyncSpec {
            more_names: Vec::new(),
            name: "crm-erp".into(),
            origin: "duplex:crm-erp".into(),
            left_name: "crm".into(),
            right_name: "erp".into(),
            fields: vec![
                text("email", "email", "mail"),
                text("name", "name", "full_name"),
                FieldSpec {
                    right_type: FieldType::Integer,
                    values: vec![
                        vec![Value::Text("active".into()), Value::Int(1)],
                        vec![Value::Text("lead".into()), Value::Int(2)],
                    ],
                    ..text("status", "status", "status_code")
                },
            ],
            match_key: Some(MatchKey {
                field: "email".into(),
                ignore_case: true,
            }),
            policy: Policy::LastWriterWins,
            deletes: DeletePolicy::Propagate,
            scope: Scope::default(),
            stopped: BTreeMap::new(),
        }
    }

    #[test]
    fn maps_renames_and_value_maps_both_ways() {
        let s = spec();
        let right = [
            ("mail", Value::Text("a@x".into())),
            ("status_code", Value::Int(2)),
            ("unmapped", Value::Int(7)),
        ];
        let common = s.map_in(Side::RIGHT, right).unwrap();
        assert_eq!(common.get("status"), Some(&Value::Text("lead".into())));
        assert_eq!(common.get("email"), Some(&Value::Text("a@x".into())));
        assert!(!common.contains_key("unmapped"));
        let out = s.map_out(Side::RIGHT, &common).unwrap();
        assert!(out.contains(&("status_code".into(), Value::Int(2))));
        assert!(out.contains(&("mail".into(), Value::Text("a@x".into()))));
    }

    #[test]
    fn values_translate_between_every_side_of_a_sync_of_more() {
        let mut s = spec();
        s.more_names = vec!["desk".into()];
        for f in &mut s.fields {
            f.more = vec![(format!("desk_{}", f.name), FieldType::Text)];
        }
        let status = s.fields.iter_mut().find(|f| f.name == "status").unwrap();
        status.values[0].push(Value::Text("A".into()));
        status.values[1].push(Value::Text("L".into()));
        let desk = Side::nth(2);
        let common = s
            .map_in(desk, [("desk_status", Value::Text("L".into()))])
            .unwrap();
        assert_eq!(common.get("status"), Some(&Value::Text("lead".into())));
        assert!(s
            .map_out(Side::RIGHT, &common)
            .unwrap()
            .contains(&("status_code".into(), Value::Int(2))));
        let active = [("status".to_owned(), Value::Text("active".into()))].into();
        assert!(s
            .map_out(desk, &active)
            .unwrap()
            .contains(&("desk_status".into(), Value::Text("A".into()))));
        // A value outside the table is itself, and a left value is never looked up as another
        // side's: "A" on the left stays "A".
        let left = s
            .map_in(Side::LEFT, [("status", Value::Text("A".into()))])
            .unwrap();
        assert_eq!(left.get("status"), Some(&Value::Text("A".into())));
    }

    #[test]
    fn a_value_that_does_not_convert_is_an_error_naming_the_field() {
        let s = spec();
        let mut common = Fields::new();
        common.insert("status".into(), Value::Text("churned".into()));
        let err = s.map_out(Side::RIGHT, &common).unwrap_err();
        assert_eq!(err.field, "status_code");
    }

    #[test]
    fn match_keys_ignore_case_and_spaces_when_asked() {
        let k = MatchKey {
            field: "email".into(),
            ignore_case: true,
        };
        assert_eq!(
            k.normalise(&Value::Text(" Ada@X.com ".into())),
            Some("ada@x.com".into())
        );
        assert_eq!(k.normalise(&Value::Text("".into())), None);
    }
}
