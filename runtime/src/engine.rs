//! The sync logic, pure: values in, decisions out.
//!
//! `engine` performs no I/O, reads no clock and touches neither redb nor wasmtime: the driver
//! hands it the links it loaded, the changes it read (already mapped to the sync's common field
//! names), the records it found by match key, and the current time as a number; the engine
//! returns what to write to each side, which conflicts to record, and the links as they stand.
//! That is what lets the tests run thousands of interleavings of edits, crashes and retries.
//!
//! Decisions never depend on hash-map order or arrival timing (invariant 7): every collection
//! the engine iterates is ordered, and ties are broken by documented rules.

mod counter;
mod filter;
mod many;
mod mapping;
mod merge;
mod plan;
mod value;

pub use counter::counter_change;
pub use filter::Filter;
pub use mapping::{
    DeletePolicy, Direction, FieldSpec, Leaving, MapError, MatchKey, Policy, Scope, Stopped,
    SyncSpec,
};
pub use merge::{
    settle, ConflictNote, Decided, DecidedSide, LinkStatus, Outcome, HELD_FOR_A_PERSON,
    WHOLE_RECORD,
};
pub use plan::{
    plan, plan_once, Candidate, Input, Observed, Op, OpKind, Plan, Rejection, RuleAnswer,
    RuleQuery, Unsynced,
};
pub use value::{canonical_decimal, convert, FieldType, Fields, Value};

use serde::{Deserialize, Serialize};

/// When a change counts as made, for last-writer-wins, and whether that is Duplex's reading
/// rather than the source's clock.
///
/// The source's time when it reports one, but never later than `read_at`, the host's clock
/// when the read (or find) that returned the change came back: a change cannot have been made
/// after Duplex read it, so a source clock running ahead gains no more than the read's delay.
/// A change whose source gives no time counts as made when it was read: never earlier, since
/// it may have been made just before. Stamping it with a time taken before the read (the
/// cycle's start, as before) let an edit that came after the other side's look older than it
/// (issue 12).
pub fn change_time(source: Option<i64>, read_at: i64) -> (i64, bool) {
    match source {
        Some(t) => (t.min(read_at), false),
        None => (read_at, true),
    }
}

/// Most sides one sync may name.
pub const MOST_SIDES: usize = 8;

/// One side of a sync, by its place in the config: the first (left), the second (right), and,
/// in a sync of more than two systems, the third and on. Stored and shown by name (`left`,
/// `right`, `third`, ...), so links, intents and logs written before a sync could have more
/// than two sides read the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Side(u8);

const SIDE_NAMES: [&str; MOST_SIDES] = [
    "left", "right", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
];

impl Side {
    pub const LEFT: Side = Side(0);
    pub const RIGHT: Side = Side(1);

    /// The side at `index` in the config; panics past [`MOST_SIDES`], which config refuses.
    pub fn nth(index: usize) -> Side {
        assert!(index < MOST_SIDES, "a sync has at most {MOST_SIDES} sides");
        Side(index as u8)
    }

    /// The sides of a sync of `n` sides, in config order.
    pub fn all(n: usize) -> impl Iterator<Item = Side> {
        (0..n).map(Side::nth)
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The other side of a two-sided sync. A sync of more sides has no one other side: the
    /// code that asks is the two-sided path, which such a sync never takes.
    pub fn other(self) -> Side {
        debug_assert!(self.0 < 2, "the other side of side {}", self.0);
        if self == Side::LEFT {
            Side::RIGHT
        } else {
            Side::LEFT
        }
    }

    pub fn as_str(self) -> &'static str {
        SIDE_NAMES[self.index()]
    }

    /// The side a stored or typed name stands for.
    pub fn named(name: &str) -> Option<Side> {
        SIDE_NAMES.iter().position(|n| *n == name).map(Side::nth)
    }
}

impl Serialize for Side {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Side {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Side, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(d)?;
        Side::named(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown side {name:?}")))
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What one side holds of a linked record, as Duplex last saw or wrote it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SideState {
    /// The record's id on this side; none until it has been created there.
    pub id: Option<String>,
    /// Its mapped field values as last read or written; none when never seen.
    pub seen: Option<Fields>,
    /// Its version as last read or written, for conditional writes.
    pub version: Option<String>,
    /// When this side last changed the record, as [`change_time`] settles it; none when no
    /// one but Duplex has changed it since it was linked, or it was found by match key with no
    /// time (counts as earliest).
    pub changed_at: Option<i64>,
    /// `changed_at` is when Duplex read the change: the source gave no time.
    pub read_time: bool,
    /// Fields whose value here is the side's rewrite of what Duplex wrote (a trigger, a
    /// default, rounding), not a person's edit: a person's change of the field on the other
    /// side wins over it, whatever the policy, for it reacted to an older value.
    pub rewritten: std::collections::BTreeSet<String>,
    /// The record was deleted on this side.
    pub deleted: bool,
    /// Counter fields: the value of this side already added into the total (the base); see
    /// `engine::counter`.
    pub counted: Fields,
}

impl SideState {
    /// Whether the record exists on this side as far as Duplex knows.
    pub fn exists(&self) -> bool {
        self.id.is_some() && !self.deleted
    }
}

/// Duplex's identity for one real-world entity, mapped to its record on each side.
///
/// Stored by `state`, which writes a side's `seen` that equals the base once, not three times.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub id: u64,
    pub left: SideState,
    pub right: SideState,
    /// The third side and on, in a sync of more than two; empty in a sync of two.
    pub more: Vec<SideState>,
    /// The values both sides agreed on last: the base of the three-way merge.
    pub base: Fields,
    /// Values a person (or a rule) decided, written until both sides hold them.
    pub pins: Fields,
    /// A person approved propagating a held delete.
    pub delete_approved: bool,
    /// A person kept the copy of a record that left its filter (`leaving = "hold"`): not asked
    /// again until the record comes back and leaves once more.
    pub copy_kept: bool,
    pub status: LinkStatus,
}

impl Link {
    pub fn new(id: u64) -> Link {
        Link::with_sides(id, 2)
    }

    /// A new link of a sync of `sides` sides.
    pub fn with_sides(id: u64, sides: usize) -> Link {
        Link {
            id,
            left: SideState::default(),
            right: SideState::default(),
            more: vec![SideState::default(); sides.saturating_sub(2)],
            base: Fields::new(),
            pins: Fields::new(),
            delete_approved: false,
            copy_kept: false,
            status: LinkStatus::Active,
        }
    }

    /// How many sides the link has.
    pub fn sides(&self) -> usize {
        2 + self.more.len()
    }

    pub fn side(&self, side: Side) -> &SideState {
        match side.index() {
            0 => &self.left,
            1 => &self.right,
            n => &self.more[n - 2],
        }
    }

    pub fn side_mut(&mut self, side: Side) -> &mut SideState {
        match side.index() {
            0 => &mut self.left,
            1 => &mut self.right,
            n => &mut self.more[n - 2],
        }
    }

    /// Every side's state, in config order.
    pub fn each_side(&self) -> impl Iterator<Item = (Side, &SideState)> {
        [&self.left, &self.right]
            .into_iter()
            .chain(&self.more)
            .enumerate()
            .map(|(i, s)| (Side::nth(i), s))
    }
}
