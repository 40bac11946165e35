//! The per-link three-way merge against the base, and settling a link after a write.
//!
//! The merge is state-based: a link holds what each side last showed (`seen`) and what both
//! agreed (`base`); the merge computes the value each field should have and writes it where a
//! side differs. A change that equals what a side already holds (the echo of Duplex's own
//! write) therefore changes nothing, and a write that failed is simply computed again next time.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::mapping::{DeletePolicy, Policy, SyncSpec};
use super::plan::{OpKind, RuleAnswer, RuleQuery};
use super::value::{Fields, Value};
use super::{Link, Side, SideState};

/// The conflict "field" that stands for the whole record (a delete that waits for a person).
pub const WHOLE_RECORD: &str = "*";

/// Whether a link still syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkStatus {
    Active,
    /// One side deleted its record and the sync ignores deletes: the pair is no longer synced.
    Detached,
    /// Both records are gone.
    Deleted,
    /// A record left its side's filter: the pair is not synced until it passes again.
    Filtered,
}

/// The reason of a conflict held by its field's `manual` policy, and nothing else.
pub const HELD_FOR_A_PERSON: &str = "held for a person";

/// A conflict to hold for a person, new or with fresh values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictNote {
    pub link: u64,
    /// A common field name, or [`WHOLE_RECORD`].
    pub field: String,
    pub base: Option<Value>,
    pub left: Option<Value>,
    pub right: Option<Value>,
    /// The third side's value and on, in a sync of more than two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Option<Value>>,
    pub reason: String,
}

impl ConflictNote {
    /// A conflict on `field` of `link`, with each side's value as last seen.
    pub fn of_link(link: &Link, field: &str, reason: String) -> ConflictNote {
        let mut values = link
            .each_side()
            .map(|(_, st)| st.seen.as_ref().and_then(|f| f.get(field)).cloned());
        ConflictNote {
            link: link.id,
            field: field.to_owned(),
            base: link.base.get(field).cloned(),
            left: values.next().flatten(),
            right: values.next().flatten(),
            more: values.collect(),
            reason,
        }
    }

    /// `side`'s value.
    pub fn value(&self, side: Side) -> Option<&Value> {
        match side.index() {
            0 => self.left.as_ref(),
            1 => self.right.as_ref(),
            n => self.more.get(n - 2).and_then(Option::as_ref),
        }
    }

    /// Every side's value, in config order.
    pub fn values(&self) -> impl Iterator<Item = (Side, Option<&Value>)> {
        [self.left.as_ref(), self.right.as_ref()]
            .into_iter()
            .chain(self.more.iter().map(Option::as_ref))
            .enumerate()
            .map(|(i, v)| (Side::nth(i), v))
    }
}

/// A field both sides changed to different values since the base, settled by last-writer-wins
/// or by a conflict rule: both values, both change times (see [`super::change_time`]), the
/// winner and, for a rule, which rule, so that a person can audit the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decided {
    pub link: u64,
    pub field: String,
    pub left: Value,
    pub right: Value,
    /// When each side changed the record; none: no time is known (only Duplex changed it, or
    /// it was found by match key with no time), which counts as earliest.
    pub left_at: Option<i64>,
    pub right_at: Option<i64>,
    /// Each time is when Duplex read the change, not the source's clock.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left_read_time: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub right_read_time: bool,
    /// The side whose value was taken; for a rule's own value, the left.
    pub winner: Side,
    /// The conflict rule that decided (none: last writer wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The rule's own value, when it took neither side's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The plugin that answered for the rule (its name and content hash), as the driver knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The third side and on, in a sync of more than two: its value when it changed the field
    /// too, and its change time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<DecidedSide>,
    /// The sides whose changes competed, in a sync of more than two; empty: the left and the
    /// right.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub among: Vec<Side>,
}

/// A side's part in a decision, beyond the left and the right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecidedSide {
    /// Its value, when it changed the field; none when it did not.
    pub value: Option<Value>,
    pub at: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_time: bool,
}

impl Decided {
    /// `side`'s value (none: it did not change the field), change time, and whether that time
    /// is Duplex's reading.
    pub fn side(&self, side: Side) -> (Option<&Value>, Option<i64>, bool) {
        match side.index() {
            0 => (Some(&self.left), self.left_at, self.left_read_time),
            1 => (Some(&self.right), self.right_at, self.right_read_time),
            n => self.more.get(n - 2).map_or((None, None, false), |d| {
                (d.value.as_ref(), d.at, d.read_time)
            }),
        }
    }
}

/// What a merge decided for one link.
#[derive(Debug, Default)]
pub(crate) struct Merged {
    pub ops: Vec<(Side, OpKind)>,
    pub conflicts: Vec<ConflictNote>,
    pub queries: Vec<RuleQuery>,
    pub decided: Vec<Decided>,
    /// Held fields on which both sides now agree: their conflicts close by themselves.
    pub agreed: Vec<String>,
    pub status: Option<LinkStatus>,
}

/// Whether a side's record differs from the base on any field it shows.
pub(crate) fn changed_since_base(side: &SideState, base: &Fields) -> bool {
    side.seen
        .as_ref()
        .is_some_and(|seen| seen.iter().any(|(f, v)| base.get(f) != Some(v)))
}

pub(crate) fn get<'a>(side: &'a SideState, field: &str) -> Option<&'a Value> {
    side.seen.as_ref().and_then(|s| s.get(field))
}

/// How one conflicting field is settled.
enum Settled {
    Value(Value),
    /// Last writer wins: this side's value.
    Latest(Side),
    /// The named rule's answer: a side's value, or (none) a value of its own.
    Ruled(String, Option<Side>, Value),
    Hold(String),
    Ask,
}

fn settle_conflict(
    link: &Link,
    spec: &SyncSpec,
    field: &str,
    left: &Value,
    right: &Value,
    answers: &BTreeMap<(u64, String), RuleAnswer>,
) -> Settled {
    match spec.policy_for(field) {
        Policy::Prefer(Side::LEFT) => Settled::Value(left.clone()),
        Policy::Prefer(_) => Settled::Value(right.clone()),
        Policy::Order(order) => match order.iter().find(|s| s.index() < 2) {
            Some(&Side::RIGHT) => Settled::Value(right.clone()),
            _ => Settled::Value(left.clone()),
        },
        // Option orders None first: a side that only Duplex changed counts as earliest. Ties
        // go to the left, a rule that does not depend on arrival order.
        Policy::LastWriterWins => {
            if link.right.changed_at > link.left.changed_at {
                Settled::Latest(Side::RIGHT)
            } else {
                Settled::Latest(Side::LEFT)
            }
        }
        Policy::Rule(name) => match answers.get(&(link.id, field.to_owned())) {
            Some(RuleAnswer::TakeLeft) => {
                Settled::Ruled(name.clone(), Some(Side::LEFT), left.clone())
            }
            Some(RuleAnswer::TakeRight) => {
                Settled::Ruled(name.clone(), Some(Side::RIGHT), right.clone())
            }
            Some(RuleAnswer::Value(v)) => Settled::Ruled(name.clone(), None, v.clone()),
            // The driver answers `Take` for a third side only, which a sync of two lacks.
            Some(RuleAnswer::Take(side)) => Settled::Hold(format!(
                "rule {name} took side {side}, which this sync of two does not have"
            )),
            Some(RuleAnswer::Manual(why)) => {
                Settled::Hold(format!("the rule left it to a person: {why}"))
            }
            None => Settled::Ask,
        },
        Policy::Manual => Settled::Hold(format!(
            "{} and {} both changed {field}",
            spec.left_name, spec.right_name
        )),
    }
}

/// Merges one link. `held` are the fields (or [`WHOLE_RECORD`]) with open conflicts.
pub(crate) fn merge_link(
    link: &Link,
    spec: &SyncSpec,
    held: &BTreeSet<String>,
    answers: &BTreeMap<(u64, String), RuleAnswer>,
) -> Merged {
    let mut m = Merged::default();
    if link.status != LinkStatus::Active {
        return m;
    }
    let (l, r) = (&link.left, &link.right);
    if l.deleted && r.deleted {
        m.status = Some(LinkStatus::Deleted);
        return m;
    }
    if l.deleted || r.deleted {
        let (gone, kept) = if l.deleted {
            (Side::LEFT, Side::RIGHT)
        } else {
            (Side::RIGHT, Side::LEFT)
        };
        let kept_state = link.side(kept);
        let Some(id) = kept_state.id.clone() else {
            m.status = Some(LinkStatus::Deleted);
            return m;
        };
        let note = |reason: String| ConflictNote {
            more: Vec::new(),
            link: link.id,
            field: WHOLE_RECORD.into(),
            base: None,
            left: None,
            right: None,
            reason,
        };
        let gone_name = spec.side_name(gone);
        let kept_name = spec.side_name(kept);
        if spec.deletes == DeletePolicy::Ignore {
            m.status = Some(LinkStatus::Detached);
        } else if !link.delete_approved && changed_since_base(kept_state, &link.base) {
            // Deleting now would lose the other side's edit (invariant 1): a person decides.
            m.conflicts.push(note(format!(
                "deleted in {gone_name} while changed in {kept_name}"
            )));
        } else if link.delete_approved || spec.deletes == DeletePolicy::Propagate {
            m.ops.push((
                kept,
                OpKind::Delete {
                    id,
                    if_version: kept_state.version.clone(),
                },
            ));
        } else if !held.contains(WHOLE_RECORD) {
            m.conflicts.push(note(format!(
                "deleted in {gone_name}: the delete waits for approval"
            )));
        }
        return m;
    }

    let mut writes: BTreeMap<Side, Fields> = BTreeMap::new();
    for fs in &spec.fields {
        let f = fs.name.as_str();
        // Stopped by schema drift: what a side holds is unknown or cannot be written.
        if spec.is_stopped(f) {
            continue;
        }
        let b = link.base.get(f);
        let (lv, rv) = (get(l, f), get(r, f));
        if held.contains(f) {
            match (lv, rv) {
                // Both sides showing one count says nothing of the sales it misses: a held
                // counter waits for a person's total.
                (Some(a), Some(c)) if a == c && !fs.counter => m.agreed.push(f.to_owned()),
                _ => m.conflicts.push(ConflictNote {
                    more: Vec::new(),
                    link: link.id,
                    field: f.to_owned(),
                    base: b.cloned(),
                    left: lv.cloned(),
                    right: rv.cloned(),
                    reason: HELD_FOR_A_PERSON.into(),
                }),
            }
            continue;
        }
        let desired: Option<Value> = if let Some(pin) = link.pins.get(f) {
            Some(pin.clone())
        } else if let Some(owner) = fs.direction.owner() {
            get(link.side(owner), f).or(b).cloned()
        } else if fs.counter && b.is_some() && lv.is_some() && rv.is_some() {
            // The total, both sides' changes added in (`counter::count`).
            b.cloned()
        } else {
            let lc = lv.is_some() && lv != b;
            let rc = rv.is_some() && rv != b;
            match (lc, rc, lv, rv) {
                (false, false, ..) => b.or(lv).or(rv).cloned(),
                (true, false, ..) => lv.cloned(),
                (false, true, ..) => rv.cloned(),
                (true, true, Some(a), Some(c)) if a == c => Some(a.clone()),
                // A side's rewrite of what Duplex wrote yields to a person's edit on the other
                // side: it reacted to an older value (see `SideState::rewritten`).
                (true, true, Some(a), Some(c))
                    if l.rewritten.contains(f) != r.rewritten.contains(f) =>
                {
                    Some(if l.rewritten.contains(f) { c } else { a }.clone())
                }
                (true, true, Some(a), Some(c)) => {
                    // Both values and both times, for a person to audit the decision.
                    let decided = |winner, rule, value| Decided {
                        more: Vec::new(),
                        among: Vec::new(),
                        link: link.id,
                        field: f.to_owned(),
                        left: a.clone(),
                        right: c.clone(),
                        left_at: l.changed_at,
                        right_at: r.changed_at,
                        left_read_time: l.read_time,
                        right_read_time: r.read_time,
                        winner,
                        rule,
                        value,
                        plugin: None,
                    };
                    match settle_conflict(link, spec, f, a, c, answers) {
                        Settled::Value(v) => Some(v),
                        Settled::Latest(winner) => {
                            m.decided.push(decided(winner, None, None));
                            Some(if winner == Side::LEFT { a } else { c }.clone())
                        }
                        Settled::Ruled(rule, winner, v) => {
                            let own = winner.is_none().then(|| v.clone());
                            m.decided
                                .push(decided(winner.unwrap_or(Side::LEFT), Some(rule), own));
                            Some(v)
                        }
                        Settled::Hold(reason) => {
                            m.conflicts.push(ConflictNote {
                                more: Vec::new(),
                                link: link.id,
                                field: f.to_owned(),
                                base: b.cloned(),
                                left: Some(a.clone()),
                                right: Some(c.clone()),
                                reason,
                            });
                            continue;
                        }
                        Settled::Ask => {
                            m.queries.push(RuleQuery {
                                link: link.id,
                                field: f.to_owned(),
                                base: b.cloned(),
                                left: a.clone(),
                                right: c.clone(),
                                left_changed_at: l.changed_at,
                                right_changed_at: r.changed_at,
                                more: Vec::new(),
                            });
                            continue;
                        }
                    }
                }
                _ => None,
            }
        };
        let Some(d) = desired else { continue };
        for side in [Side::LEFT, Side::RIGHT] {
            if !fs.direction.writes_to(side) {
                continue;
            }
            let st = link.side(side);
            if st.id.is_none() || get(st, f) != Some(&d) {
                writes
                    .entry(side)
                    .or_default()
                    .insert(f.to_owned(), d.clone());
            }
        }
    }
    m.ops.extend(writes_to_ops(link, writes));
    m
}

/// The fields to write to each side as ops: an update of the side's record (conditional on
/// its version), or a create where it has none.
pub(crate) fn writes_to_ops(
    link: &Link,
    writes: BTreeMap<Side, Fields>,
) -> impl Iterator<Item = (Side, OpKind)> + '_ {
    writes.into_iter().map(|(side, fields)| {
        let st = link.side(side);
        let kind = match &st.id {
            None => OpKind::Create { fields },
            Some(id) => OpKind::Update {
                id: id.clone(),
                fields,
                if_version: st.version.clone(),
            },
        };
        (side, kind)
    })
}

/// How a write went, as far as the link is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; the record's id and version now, and its mapped values as the side stored them
    /// (none: the side cannot tell, and the written values count as stored).
    Written {
        id: String,
        version: Option<String>,
        stored: Option<Fields>,
    },
    /// The record is not there any more (an update or delete found nothing).
    Gone,
    /// Not done; the link stays as it was and the write is computed again later.
    Failed,
}

/// Applies a write's outcome to its link, then brings the base up to date. Returns the fields
/// the side stored otherwise than Duplex believed it holds (see [`take_stored`]): its own
/// change, to be merged again.
pub fn settle(
    spec: &SyncSpec,
    link: &mut Link,
    side: Side,
    op: &OpKind,
    outcome: &Outcome,
) -> Vec<String> {
    if let (OpKind::Create { fields } | OpKind::Update { fields, .. }, Outcome::Written { .. }) =
        (op, outcome)
    {
        // A counter written is the total it was given: all of it is counted on this side.
        let st = link.side_mut(side);
        for (f, v) in fields.iter().filter(|(f, _)| spec.is_counter(f)) {
            st.counted.insert(f.clone(), v.clone());
        }
    }
    let st = link.side_mut(side);
    let mut rewritten = Vec::new();
    match (op, outcome) {
        (
            OpKind::Create { fields },
            Outcome::Written {
                id,
                version,
                stored,
            },
        ) => {
            st.id = Some(id.clone());
            st.seen = Some(fields.clone());
            st.version = version.clone();
            st.deleted = false;
            rewritten = take_stored(link, side, fields, stored.as_ref());
        }
        (
            OpKind::Update { fields, .. },
            Outcome::Written {
                version, stored, ..
            },
        ) => {
            st.seen
                .get_or_insert_with(Fields::new)
                .extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
            st.version = version.clone();
            rewritten = take_stored(link, side, fields, stored.as_ref());
        }
        (OpKind::Delete { .. }, Outcome::Written { .. } | Outcome::Gone)
        | (OpKind::Update { .. }, Outcome::Gone) => {
            st.deleted = true;
        }
        (OpKind::Create { .. }, Outcome::Gone) | (_, Outcome::Failed) => {}
    }
    refresh(link, spec);
    rewritten
}

/// What a side stored, over what Duplex believed it holds after writing `written` (issue 13:
/// a trigger setting a modified time, a column rounding a decimal, a default, a database
/// truncating text). The stored value is the side's own change: it becomes what the side is
/// seen to hold, and a written field keeps the written value as its base (what both sides were
/// to hold), so the merge takes the side as changed and the other as not, and the stored value
/// flows back. The feed leaves Duplex's own writes out, so this is the only way to learn it.
fn take_stored(
    link: &mut Link,
    side: Side,
    written: &Fields,
    stored: Option<&Fields>,
) -> Vec<String> {
    let Some(stored) = stored else {
        return Vec::new();
    };
    let mut rewritten = Vec::new();
    for (f, v) in stored {
        let believed = link.side(side).seen.as_ref().and_then(|s| s.get(f));
        if believed == Some(v) {
            continue;
        }
        if let Some(w) = written.get(f) {
            link.base.insert(f.clone(), w.clone());
        }
        let st = link.side_mut(side);
        st.seen
            .get_or_insert_with(Fields::new)
            .insert(f.clone(), v.clone());
        st.rewritten.insert(f.clone());
        rewritten.push(f.clone());
    }
    rewritten
}

/// Brings the base up to the values both sides now agree on, drops pins both sides hold, and
/// marks a link whose records are both gone.
///
/// A counter's base is its total, which moves by changes added (`counter::count`), not by the
/// sides agreeing: both sides selling one item show the same value, and the total is two
/// less. Its base is set here only the first time both sides agree, with both counted.
pub(crate) fn refresh(link: &mut Link, spec: &SyncSpec) {
    // Counters every side first agrees on: counted into their total on every side, below.
    let mut first_counts: Vec<(String, Value)> = Vec::new();
    let others: Vec<&Fields> = link.more.iter().filter_map(|s| s.seen.as_ref()).collect();
    let all_seen = others.len() == link.more.len();
    // What every side but the left shows of `f` is `v`.
    let all = |f: &str, v: &Value, r: &Fields| {
        r.get(f) == Some(v) && others.iter().all(|o| o.get(f) == Some(v))
    };
    if let (Some(l), Some(r), true) = (&link.left.seen, &link.right.seen, all_seen) {
        for (f, v) in l {
            // A stopped field's base stays as the sides last agreed it, for when it resumes.
            if spec.is_stopped(f) {
                continue;
            }
            if spec.is_counter(f) {
                if !link.base.contains_key(f) && all(f, v, r) {
                    link.base.insert(f.clone(), v.clone());
                    first_counts.push((f.clone(), v.clone()));
                }
                continue;
            }
            // Most agreed values are already the base, to the letter: copy only the others
            // ("12.50" replaces "12.5", as it did before this check).
            let unchanged = link.base.get(f).is_some_and(|b| b.same_text(v));
            if !unchanged && all(f, v, r) {
                link.base.insert(f.clone(), v.clone());
            }
        }
        // A counter's pin is a person's total, taken in by `counter::count` even when both
        // sides already show it.
        link.pins
            .retain(|f, p| spec.is_counter(f) || !(l.get(f) == Some(p) && all(f, p, r)));
    }
    for (f, v) in first_counts {
        for i in 0..link.sides() {
            link.side_mut(Side::nth(i))
                .counted
                .insert(f.clone(), v.clone());
        }
    }
    // A rewrite both sides now hold is agreed: nothing is pending of it.
    let base = &link.base;
    for st in [&mut link.left, &mut link.right]
        .into_iter()
        .chain(link.more.iter_mut())
    {
        let seen = st.seen.as_ref();
        st.rewritten
            .retain(|f| base.get(f) != seen.and_then(|s| s.get(f)));
    }
    // Gone on both sides, or gone on one and never created on the other.
    let gone = |s: &SideState| s.deleted || s.id.is_none();
    if link.each_side().any(|(_, s)| s.deleted) && link.each_side().all(|(_, s)| gone(s)) {
        link.status = LinkStatus::Deleted;
    }
}
