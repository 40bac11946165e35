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
    settle, ConflictNote, Decided, LinkStatus, Outcome, HELD_FOR_A_PERSON, WHOLE_RECORD,
};
pub use plan::{
    plan, Candidate, Input, Observed, Op, OpKind, Plan, Rejection, RuleAnswer, RuleQuery, Unsynced,
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

/// One of the two sides of a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
    Right,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
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
        Link {
            id,
            left: SideState::default(),
            right: SideState::default(),
            base: Fields::new(),
            pins: Fields::new(),
            delete_approved: false,
            copy_kept: false,
            status: LinkStatus::Active,
        }
    }

    pub fn side(&self, side: Side) -> &SideState {
        match side {
            Side::Left => &self.left,
            Side::Right => &self.right,
        }
    }

    pub fn side_mut(&mut self, side: Side) -> &mut SideState {
        match side {
            Side::Left => &mut self.left,
            Side::Right => &mut self.right,
        }
    }
}
