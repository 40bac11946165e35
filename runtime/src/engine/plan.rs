//! One cycle's decisions: identify each change's link, apply it, merge, and say what to write.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::counter::count;
use super::filter::{after_merge, in_scope, scope};
use super::many::merge_many;
use super::mapping::SyncSpec;
use super::merge::{merge_link, refresh, ConflictNote, Decided, LinkStatus, WHOLE_RECORD};
use super::value::{Fields, Value};
use super::{change_time, Link, Side};

/// A change read from one side, mapped to common names.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub side: Side,
    pub id: String,
    pub deleted: bool,
    pub fields: Fields,
    pub version: Option<String>,
    /// The source's change time, when the connector knows it.
    pub changed_at: Option<i64>,
    /// When Duplex read it: the host's clock as the read (or find) that returned it came back.
    pub read_at: i64,
    /// The change was made by this sync's own write (the connector reported our origin).
    pub own: bool,
}

/// A record found on a side by match key.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub fields: Fields,
    pub version: Option<String>,
    /// When the record last changed, when the connector knows it.
    pub changed_at: Option<i64>,
    /// When Duplex found it.
    pub read_at: i64,
}

/// A conflict a rule must decide.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleQuery {
    pub link: u64,
    pub field: String,
    pub base: Option<Value>,
    pub left: Value,
    pub right: Value,
    pub left_changed_at: Option<i64>,
    pub right_changed_at: Option<i64>,
    /// The third side and on, in order: each one's value (null where it has none) and change
    /// time. Empty in a sync of two.
    pub more: Vec<(Value, Option<i64>)>,
}

/// A rule's (or a person's) answer to a conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RuleAnswer {
    TakeLeft,
    TakeRight,
    /// The value of this side, the third or later (a sync of more than two).
    Take(Side),
    Value(Value),
    Manual(String),
}

/// Everything the engine needs for one cycle. The driver loads it; nothing here is I/O.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub spec: &'a SyncSpec,
    /// The links the changes and candidates refer to, and links left dirty by failed writes.
    pub links: Vec<Link>,
    /// Open conflicts: held fields per link.
    pub held: BTreeMap<u64, BTreeSet<String>>,
    /// Changes read this cycle: the left's in feed order, then the right's.
    pub changes: Vec<Observed>,
    /// Records found by match key: on `Side`, with normalised key `String`.
    pub candidates: BTreeMap<(Side, String), Vec<Candidate>>,
    /// Answers to rule queries of an earlier pass over the same input.
    pub answers: BTreeMap<(u64, String), RuleAnswer>,
    /// The id the next new link gets.
    pub next_link_id: u64,
}

/// A write to make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OpKind {
    Create {
        fields: Fields,
    },
    Update {
        id: String,
        fields: Fields,
        if_version: Option<String>,
    },
    Delete {
        id: String,
        if_version: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub link: u64,
    pub side: Side,
    pub kind: OpKind,
}

/// A change that could not be applied, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub change: Observed,
    pub reason: String,
}

/// The cycle's decisions.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Every link the cycle touched, as it stands after the changes (before the writes).
    pub links: BTreeMap<u64, Link>,
    pub ops: Vec<Op>,
    /// Conflicts to hold, new or with fresh values.
    pub conflicts: Vec<ConflictNote>,
    /// Held fields both sides now agree on: their conflicts close.
    pub agreed: Vec<(u64, String)>,
    /// Conflicts waiting on a rule: when any, plan again with their answers.
    pub queries: Vec<RuleQuery>,
    /// Fields changed on both sides that last-writer-wins settled, for the activity log.
    pub decided: Vec<Decided>,
    pub rejected: Vec<Rejection>,
    pub next_link_id: u64,
    /// Changes that repeated what Duplex already knew (echoes of its own writes included).
    pub echoes: usize,
    /// Changes that were Duplex's own writes coming back.
    pub own: usize,
    /// Records paired with the other side's record by match key.
    pub matched: usize,
    /// Changes of unlinked records outside their side's filter, left alone.
    pub filtered: usize,
    /// Links whose record left its filter in this plan.
    pub left_filter: usize,
    /// Changed values of stopped fields (schema drift) that did not sync.
    pub unsynced: Vec<Unsynced>,
}

/// A record's change of a field stopped by schema drift: it did not reach the other side.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsynced {
    pub side: Side,
    pub id: String,
    pub field: String,
    /// What changed in the schema.
    pub reason: String,
}

/// Plans one cycle. Pure and deterministic: the same input gives the same plan.
pub fn plan(input: &Input<'_>) -> Plan {
    plan_links(input, input.links.clone())
}

/// [`plan`], moving the input's links into the plan instead of copying them: copying 10,000
/// links and dropping the copies took a tenth of a 10,000-row cycle's CPU. The input is left
/// without links, so a second pass over it (answers to rule queries) needs [`plan`].
pub fn plan_once(input: &mut Input<'_>) -> Plan {
    let links = std::mem::take(&mut input.links);
    plan_links(input, links)
}

fn plan_links(input: &Input<'_>, links: Vec<Link>) -> Plan {
    let spec = input.spec;
    let mut out = Plan {
        next_link_id: input.next_link_id,
        ..Plan::default()
    };
    let mut links: BTreeMap<u64, Link> = links.into_iter().map(|l| (l.id, l)).collect();
    let mut index: BTreeMap<(Side, String), u64> = BTreeMap::new();
    for l in links.values() {
        for (side, st) in l.each_side() {
            if let Some(id) = &st.id {
                index.insert((side, id.clone()), l.id);
            }
        }
    }

    for change in &input.changes {
        let key = (change.side, change.id.clone());
        let link_id = match index.get(&key) {
            Some(id) => *id,
            None if change.deleted => continue, // a record Duplex never linked is gone: nothing to do
            // Outside its side's filter and never synced: not the sync's business.
            None if !in_scope(spec, change.side, Some(&change.fields)) => {
                out.filtered += 1;
                continue;
            }
            None => match identify(input, &links, &index, change) {
                Ok(Identified::Existing(link_id, with)) => {
                    out.matched += 1;
                    let link = links
                        .get_mut(&link_id)
                        .expect("index points at loaded links");
                    attach(link, change.side, &change.id);
                    index.insert(key, link_id);
                    // A sync of more sides: records of further sides matched too.
                    for (side, c) in with {
                        if link.side(side).id.is_none() {
                            attach_candidate(link, side, c);
                            index.insert((side, c.id.clone()), link_id);
                        }
                    }
                    link_id
                }
                Ok(Identified::New(with)) => {
                    let mut link = Link::with_sides(out.next_link_id, spec.sides());
                    out.next_link_id += 1;
                    attach(&mut link, change.side, &change.id);
                    out.matched += usize::from(!with.is_empty());
                    for (side, c) in with {
                        attach_candidate(&mut link, side, c);
                        index.insert((side, c.id.clone()), link.id);
                    }
                    index.insert(key, link.id);
                    let id = link.id;
                    links.insert(id, link);
                    id
                }
                Err(reason) => {
                    out.rejected.push(Rejection {
                        change: change.clone(),
                        reason,
                    });
                    continue;
                }
            },
        };
        let link = links.get_mut(&link_id).expect("link exists");
        observe(link, spec, change, &mut out);
    }

    let empty = BTreeSet::new();
    for link in links.values_mut() {
        refresh(link, spec);
        let mut held = std::borrow::Cow::Borrowed(input.held.get(&link.id).unwrap_or(&empty));
        let scoped = scope(link, spec, &held);
        let mut ops = scoped.ops;
        out.conflicts.extend(scoped.conflicts);
        if scoped.agreed {
            held.to_mut().remove(WHOLE_RECORD);
        }
        out.left_filter += usize::from(scoped.left);
        if scoped.merge {
            // Counters that cannot be added wait for a person, like a held field.
            for note in count(link, spec, &held) {
                held.to_mut().insert(note.field.clone());
                out.conflicts.push(note);
            }
            let mut merged = if spec.sides() > 2 {
                merge_many(link, spec, &held, &input.answers)
            } else {
                merge_link(link, spec, &held, &input.answers)
            };
            if let Some(status) = merged.status {
                link.status = status;
            }
            let leaving = after_merge(link, spec, &held, &mut merged.ops);
            // A held leaving the record came back from closes, unless it leaves again at
            // once: then the same question stands, and stays open.
            if scoped.agreed && leaving.conflicts.is_empty() {
                out.agreed.push((link.id, WHOLE_RECORD.to_owned()));
            }
            out.conflicts.extend(leaving.conflicts);
            out.left_filter += usize::from(leaving.left);
            ops.extend(merged.ops);
            out.conflicts.extend(merged.conflicts);
            out.queries.extend(merged.queries);
            out.decided.extend(merged.decided);
            out.agreed
                .extend(merged.agreed.into_iter().map(|f| (link.id, f)));
        }
        out.ops.extend(ops.into_iter().map(|(side, kind)| Op {
            link: link.id,
            side,
            kind,
        }));
    }
    out.links = links;
    out
}

/// Where an unlinked change belongs, with the records of other sides its match key found.
enum Identified<'a> {
    /// A link made from another side's record, which this change matched.
    Existing(u64, Vec<(Side, &'a Candidate)>),
    /// A new link, paired with the matching records of other sides (none: the record is new
    /// to every other side).
    New(Vec<(Side, &'a Candidate)>),
}

/// Finds where an unlinked change belongs; an ambiguous match is an error, never a guess.
fn identify<'a>(
    input: &'a Input<'_>,
    links: &BTreeMap<u64, Link>,
    index: &BTreeMap<(Side, String), u64>,
    change: &Observed,
) -> Result<Identified<'a>, String> {
    let key = input
        .spec
        .match_key
        .as_ref()
        .map_or("?", |k| k.field.as_str());
    let value = || {
        change
            .fields
            .get(key)
            .map(Value::display)
            .unwrap_or_default()
    };
    let mut found: Vec<(Side, &'a Candidate)> = Vec::new();
    for other in input.spec.all_sides().filter(|s| *s != change.side) {
        match available_candidates(input, links, index, change, other).as_slice() {
            [] => {}
            [one] => found.push((other, one)),
            many => {
                let ids: Vec<&str> = many.iter().map(|c| c.id.as_str()).collect();
                return Err(format!(
                    "ambiguous match: {key} {} matches {} records on the {other} side ({}); Duplex does not guess",
                    value(),
                    many.len(),
                    ids.join(", ")
                ));
            }
        }
    }
    // Records already linked: the change joins their link, which must be one.
    let linked: BTreeSet<u64> = found
        .iter()
        .filter_map(|(side, c)| index.get(&(*side, c.id.clone())).copied())
        .collect();
    match linked.len() {
        0 => Ok(Identified::New(found)),
        1 => {
            let link = *linked.first().expect("one");
            let unlinked = found
                .into_iter()
                .filter(|(side, c)| !index.contains_key(&(*side, c.id.clone())))
                .collect();
            Ok(Identified::Existing(link, unlinked))
        }
        _ => Err(format!(
            "ambiguous match: {key} {} matches records of {} different links ({}); Duplex does not join them",
            value(),
            linked.len(),
            linked
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Records on side `other` with the change's match key that are not yet linked to another
/// record of the change's side.
fn available_candidates<'a>(
    input: &'a Input<'_>,
    links: &BTreeMap<u64, Link>,
    index: &BTreeMap<(Side, String), u64>,
    change: &Observed,
    other: Side,
) -> Vec<&'a Candidate> {
    let Some(key) = &input.spec.match_key else {
        return Vec::new();
    };
    let Some(norm) = change.fields.get(&key.field).and_then(|v| key.normalise(v)) else {
        return Vec::new();
    };
    let Some(cands) = input.candidates.get(&(other, norm)) else {
        return Vec::new();
    };
    cands
        .iter()
        .filter(|c| match index.get(&(other, c.id.clone())) {
            None => true,
            Some(l) => links.get(l).is_some_and(|l| {
                l.status == LinkStatus::Active && l.side(change.side).id.is_none()
            }),
        })
        .collect()
}

fn attach(link: &mut Link, side: Side, id: &str) {
    let st = link.side_mut(side);
    st.id = Some(id.to_owned());
    st.deleted = false;
}

fn attach_candidate(link: &mut Link, side: Side, c: &Candidate) {
    let st = link.side_mut(side);
    st.id = Some(c.id.clone());
    st.seen = Some(c.fields.clone());
    st.version = c.version.clone();
    st.deleted = false;
    // A record found by match key is what was there, not a change read from the feed: with no
    // source time it counts as earliest, so in a first sync of two existing records the side
    // whose change was read wins (ties: the left), as it did before. With one, it is ordered
    // like any change.
    match c.changed_at {
        Some(_) => stamp(st, c.changed_at, c.read_at),
        None => {
            st.changed_at = None;
            st.read_time = false;
        }
    }
}

fn stamp(st: &mut super::SideState, source: Option<i64>, read_at: i64) {
    let (at, read_time) = change_time(source, read_at);
    st.changed_at = Some(at);
    st.read_time = read_time;
}

/// Applies a change to its side of a link.
fn observe(link: &mut Link, spec: &SyncSpec, change: &Observed, out: &mut Plan) {
    let st = link.side_mut(change.side);
    if change.own {
        out.own += 1;
    }
    if change.deleted {
        if !st.deleted && !change.own {
            stamp(st, change.changed_at, change.read_at);
        }
        st.deleted = true;
        st.version = change.version.clone();
        return;
    }
    let fields = with_stopped(spec, st.seen.as_ref(), change, out);
    let same = !st.deleted && st.seen.as_ref() == Some(&fields);
    if same {
        out.echoes += 1;
        // The same values, found earlier without a time (by match key, or after a refused
        // write): the source's time says better when they were made.
        if st.read_time && !change.own && change.changed_at.is_some() {
            stamp(st, change.changed_at, change.read_at);
        }
    } else if !change.own {
        stamp(st, change.changed_at, change.read_at);
        // A field changed again since the side rewrote it is a person's now.
        let seen = st.seen.as_ref();
        st.rewritten
            .retain(|f| fields.get(f) == seen.and_then(|s| s.get(f)));
    }
    st.deleted = false;
    st.seen = Some(fields);
    st.version = change.version.clone();
}

/// A change's fields as the link keeps them while fields are stopped by schema drift. A side
/// whose column is gone or retyped keeps the value Duplex last knew (its reading was left out
/// by `map_in`), so filters and echo checks go on seeing it; the other side's change of a stopped
/// field is kept too, for when the field resumes, and reported, for it does not sync now.
fn with_stopped(
    spec: &SyncSpec,
    seen: Option<&Fields>,
    change: &Observed,
    out: &mut Plan,
) -> Fields {
    let mut fields = change.fields.clone();
    for (name, stopped) in &spec.stopped {
        let before = seen.and_then(|s| s.get(name));
        if stopped.on(change.side).is_some() {
            match before {
                Some(v) => fields.insert(name.clone(), v.clone()),
                None => fields.remove(name),
            };
            continue;
        }
        let now = fields.get(name);
        let news = now != before && !(before.is_none() && now == Some(&Value::Null));
        if news && !change.own {
            out.unsynced.push(Unsynced {
                side: change.side,
                id: change.id.clone(),
                field: name.clone(),
                reason: stopped.reason(),
            });
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::mapping::tests::spec;
    use crate::engine::{Direction, Policy, SideState, WHOLE_RECORD};

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), text(v)))
            .collect()
    }

    /// A link both sides agreed on: email a@x, name Ada, status active.
    fn agreed() -> Link {
        let f = fields(&[("email", "a@x"), ("name", "Ada"), ("status", "active")]);
        let side = |id: &str| SideState {
            id: Some(id.into()),
            seen: Some(f.clone()),
            version: Some("1".into()),
            changed_at: Some(1),
            read_time: false,
            rewritten: Default::default(),
            deleted: false,
            counted: Default::default(),
        };
        Link {
            left: side("1"),
            right: side("r1"),
            base: f.clone(),
            ..Link::new(7)
        }
    }

    #[test]
    fn the_base_takes_the_text_both_sides_agree_on() {
        // "12.50" and "12.5" are the same number, but the base is stored as written.
        let mut link = agreed();
        link.base
            .insert("price".into(), Value::Decimal("12.5".into()));
        for side in [Side::LEFT, Side::RIGHT] {
            let seen = link.side_mut(side).seen.as_mut().unwrap();
            seen.insert("price".into(), Value::Decimal("12.50".into()));
        }
        refresh(&mut link, &spec());
        assert!(matches!(&link.base["price"], Value::Decimal(d) if d == "12.50"));
        assert_eq!(link.base["name"], text("Ada"));
    }

    fn change(side: Side, id: &str, f: Fields, at: i64) -> Observed {
        Observed {
            side,
            id: id.into(),
            deleted: false,
            fields: f,
            version: Some(at.to_string()),
            changed_at: Some(at),
            read_at: 100,
            own: false,
        }
    }

    fn input<'a>(spec: &'a SyncSpec, changes: Vec<Observed>) -> Input<'a> {
        Input {
            spec,
            links: vec![agreed()],
            held: BTreeMap::new(),
            changes,
            candidates: BTreeMap::new(),
            answers: BTreeMap::new(),
            next_link_id: 8,
        }
    }

    fn updates(p: &Plan, side: Side) -> Fields {
        p.ops
            .iter()
            .filter(|o| o.side == side)
            .filter_map(|o| match &o.kind {
                OpKind::Update { fields, .. } => Some(fields.clone()),
                _ => None,
            })
            .next()
            .unwrap_or_default()
    }

    #[test]
    fn concurrent_edits_of_different_fields_both_survive() {
        let s = spec();
        let l = change(
            Side::LEFT,
            "1",
            fields(&[("email", "a@x"), ("name", "Ada L."), ("status", "active")]),
            5,
        );
        let r = change(
            Side::RIGHT,
            "r1",
            fields(&[("email", "a@x"), ("name", "Ada"), ("status", "lead")]),
            6,
        );
        let p = plan(&input(&s, vec![l, r]));
        assert_eq!(updates(&p, Side::RIGHT), fields(&[("name", "Ada L.")]));
        assert_eq!(updates(&p, Side::LEFT), fields(&[("status", "lead")]));
        assert!(p.conflicts.is_empty());
    }

    #[test]
    fn a_stopped_field_is_neither_merged_nor_forgotten_and_its_changes_are_reported() {
        // The right's name column is gone: the left's edit of it cannot go anywhere, the
        // right's last known name stays in the link, and the status edit syncs as ever.
        let mut s = spec();
        s.stopped.insert(
            "name".into(),
            crate::engine::Stopped {
                more: Vec::new(),
                right: Some("column full_name is gone from erp.clients".into()),
                left: None,
            },
        );
        let l = change(
            Side::LEFT,
            "1",
            fields(&[("email", "a@x"), ("name", "Ada L."), ("status", "active")]),
            5,
        );
        let r = change(
            Side::RIGHT,
            "r1",
            fields(&[("email", "a@x"), ("status", "lead")]),
            6,
        );
        let p = plan(&input(&s, vec![l, r]));
        assert_eq!(updates(&p, Side::RIGHT), Fields::new());
        assert_eq!(updates(&p, Side::LEFT), fields(&[("status", "lead")]));
        let link = &p.links[&7];
        assert_eq!(link.right.seen.as_ref().unwrap()["name"], text("Ada"));
        assert_eq!(link.left.seen.as_ref().unwrap()["name"], text("Ada L."));
        assert_eq!(link.base["name"], text("Ada"));
        assert_eq!(
            p.unsynced,
            [Unsynced {
                side: Side::LEFT,
                id: "1".into(),
                field: "name".into(),
                reason: "column full_name is gone from erp.clients".into(),
            }]
        );
    }

    #[test]
    fn last_writer_wins_ties_go_to_the_left() {
        let s = spec();
        let l = change(
            Side::LEFT,
            "1",
            fields(&[("email", "a@x"), ("name", "L"), ("status", "active")]),
            5,
        );
        let r = change(
            Side::RIGHT,
            "r1",
            fields(&[("email", "a@x"), ("name", "R"), ("status", "active")]),
            5,
        );
        let p = plan(&input(&s, vec![l.clone(), r.clone()]));
        assert_eq!(updates(&p, Side::RIGHT), fields(&[("name", "L")]));
        let r_later = Observed {
            changed_at: Some(6),
            ..r
        };
        let p = plan(&input(&s, vec![l, r_later]));
        assert_eq!(updates(&p, Side::LEFT), fields(&[("name", "R")]));
    }

    #[test]
    fn a_change_without_a_source_time_counts_as_made_when_it_was_read() {
        // Issue 12: a record re-read after a refused write carried no time and was stamped
        // with the cycle's start, so an edit made after the other side's looked older.
        let s = spec();
        let name = |v: &str| fields(&[("email", "a@x"), ("name", v), ("status", "active")]);
        let right = change(Side::RIGHT, "r1", name("R"), 50);
        let left = Observed {
            changed_at: None,
            read_at: 60,
            ..change(Side::LEFT, "1", name("L"), 0)
        };
        let p = plan(&input(&s, vec![left, right]));
        assert_eq!(updates(&p, Side::RIGHT), fields(&[("name", "L")]));
        assert!(p.links[&7].left.read_time);
        assert_eq!(p.links[&7].left.changed_at, Some(60));
    }

    #[test]
    fn a_source_clock_running_ahead_counts_no_later_than_the_read() {
        let s = spec();
        let name = |v: &str| fields(&[("email", "a@x"), ("name", v), ("status", "active")]);
        // The left's clock says 90, but Duplex had the change in hand at 60: the right's
        // edit at 65 is the later one.
        let left = Observed {
            read_at: 60,
            ..change(Side::LEFT, "1", name("L"), 90)
        };
        let right = change(Side::RIGHT, "r1", name("R"), 65);
        let p = plan(&input(&s, vec![left, right]));
        assert_eq!(updates(&p, Side::LEFT), fields(&[("name", "R")]));
        assert_eq!(p.links[&7].left.changed_at, Some(60));
    }

    #[test]
    fn last_writer_wins_records_both_values_both_times_and_the_winner() {
        let s = spec();
        let l = change(
            Side::LEFT,
            "1",
            fields(&[("email", "a@x"), ("name", "L"), ("status", "lead")]),
            5,
        );
        let r = Observed {
            changed_at: None,
            read_at: 8,
            ..change(
                Side::RIGHT,
                "r1",
                fields(&[("email", "a@x"), ("name", "R"), ("status", "active")]),
                0,
            )
        };
        let p = plan(&input(&s, vec![l, r]));
        assert_eq!(
            p.decided,
            vec![Decided {
                more: Vec::new(),
                among: Vec::new(),
                link: 7,
                field: "name".into(),
                left: text("L"),
                right: text("R"),
                left_at: Some(5),
                right_at: Some(8),
                left_read_time: false,
                right_read_time: true,
                winner: Side::RIGHT,
                rule: None,
                value: None,
                plugin: None,
            }],
            "status changed on the left only: no decision"
        );
    }

    #[test]
    fn the_same_values_read_with_a_source_time_replace_a_read_time() {
        // A record first found without a time (by match key), then read from the feed with
        // its source's time: the source's time says better when its values were made.
        let s = spec();
        let mut i = input(&s, vec![]);
        let mut link = agreed();
        link.right.changed_at = Some(90);
        link.right.read_time = true;
        i.links = vec![link];
        let seen = agreed().right.seen.unwrap();
        i.changes = vec![change(Side::RIGHT, "r1", seen, 40)];
        let p = plan(&i);
        assert_eq!(p.links[&7].right.changed_at, Some(40));
        assert!(!p.links[&7].right.read_time);
    }

    #[test]
    fn a_sides_rewrite_of_a_written_value_flows_back_and_yields_to_a_persons_edit() {
        // Issue 13: the right stored "ADA L." when Duplex wrote "Ada L.". The stored value is
        // the right's change and flows back; but if a person on the left changed the name again
        // meanwhile, the person's edit wins, whatever the times: the rewrite reacted to an
        // older value.
        let s = spec();
        let mut link = agreed();
        let op = OpKind::Update {
            id: "r1".into(),
            fields: fields(&[("name", "Ada L.")]),
            if_version: Some("1".into()),
        };
        link.left
            .seen
            .as_mut()
            .unwrap()
            .insert("name".into(), text("Ada L."));
        let stored = Some(fields(&[("name", "ADA L.")]));
        let outcome = crate::engine::Outcome::Written {
            id: "r1".into(),
            version: Some("2".into()),
            stored,
        };
        let rewritten = crate::engine::settle(&s, &mut link, Side::RIGHT, &op, &outcome);
        assert_eq!(rewritten, vec!["name".to_owned()]);
        assert_eq!(
            link.base["name"],
            text("Ada L."),
            "the base is what was written"
        );
        assert!(link.right.rewritten.contains("name"));
        let mut i = input(&s, vec![]);
        i.links = vec![link.clone()];
        let p = plan(&i);
        assert_eq!(updates(&p, Side::LEFT), fields(&[("name", "ADA L.")]));

        // A person on the left renamed her meanwhile, earlier by the clocks than the right's
        // later edit of another field: the person's name wins over the rewrite.
        link.right.changed_at = Some(50);
        let renamed = change(
            Side::LEFT,
            "1",
            fields(&[
                ("email", "a@x"),
                ("name", "Ada Lovelace"),
                ("status", "active"),
            ]),
            10,
        );
        let mut i = input(&s, vec![renamed]);
        i.links = vec![link];
        let p = plan(&i);
        assert_eq!(
            updates(&p, Side::RIGHT),
            fields(&[("name", "Ada Lovelace")])
        );
        assert!(p.decided.is_empty() && p.conflicts.is_empty());
    }

    #[test]
    fn manual_conflict_holds_only_its_field() {
        let mut s = spec();
        s.policy = Policy::Manual;
        let l = change(
            Side::LEFT,
            "1",
            fields(&[("email", "a@x"), ("name", "L"), ("status", "lead")]),
            5,
        );
        let r = change(
            Side::RIGHT,
            "r1",
            fields(&[("email", "a@x"), ("name", "R"), ("status", "active")]),
            6,
        );
        let p = plan(&input(&s, vec![l, r]));
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.conflicts[0].field, "name");
        assert_eq!(p.conflicts[0].base, Some(text("Ada")));
        assert_eq!(updates(&p, Side::RIGHT), fields(&[("status", "lead")]));
        assert!(!updates(&p, Side::LEFT).contains_key("name"));
    }

    #[test]
    fn an_echo_of_a_write_is_no_change() {
        let s = spec();
        let same = change(
            Side::RIGHT,
            "r1",
            fields(&[("email", "a@x"), ("name", "Ada"), ("status", "active")]),
            9,
        );
        let p = plan(&input(&s, vec![Observed { own: true, ..same }]));
        assert!(p.ops.is_empty());
        assert_eq!((p.echoes, p.own), (1, 1));
    }

    #[test]
    fn a_field_owned_by_one_side_is_put_back_when_the_other_changes_it() {
        let mut s = spec();
        s.fields[1].direction = Direction::LeftToRight;
        let r = change(
            Side::RIGHT,
            "r1",
            fields(&[("email", "a@x"), ("name", "Hacked"), ("status", "active")]),
            9,
        );
        let p = plan(&input(&s, vec![r]));
        assert_eq!(updates(&p, Side::RIGHT), fields(&[("name", "Ada")]));
        assert!(updates(&p, Side::LEFT).is_empty());
    }

    #[test]
    fn a_delete_racing_an_edit_waits_for_a_person() {
        let s = spec();
        let del = Observed {
            deleted: true,
            fields: Fields::new(),
            ..change(Side::LEFT, "1", Fields::new(), 5)
        };
        let edit = change(
            Side::RIGHT,
            "r1",
            fields(&[("email", "a@x"), ("name", "Ada R."), ("status", "active")]),
            6,
        );
        let p = plan(&input(&s, vec![del, edit]));
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.conflicts[0].field, WHOLE_RECORD);
    }

    #[test]
    fn an_ambiguous_match_is_reported_not_guessed() {
        let s = spec();
        let mut i = input(
            &s,
            vec![change(
                Side::LEFT,
                "9",
                fields(&[("email", "B@x"), ("name", "B")]),
                5,
            )],
        );
        let cand = |id: &str| Candidate {
            id: id.into(),
            fields: fields(&[("email", "b@x")]),
            version: None,
            changed_at: None,
            read_at: 100,
        };
        i.candidates
            .insert((Side::RIGHT, "b@x".into()), vec![cand("r8"), cand("r9")]);
        let p = plan(&i);
        assert!(p.ops.is_empty());
        assert_eq!(p.rejected.len(), 1);
        assert!(
            p.rejected[0].reason.contains("ambiguous"),
            "{}",
            p.rejected[0].reason
        );
    }

    #[test]
    fn the_same_input_gives_the_same_plan() {
        let s = spec();
        let l = change(
            Side::LEFT,
            "1",
            fields(&[("email", "a@x"), ("name", "L"), ("status", "lead")]),
            5,
        );
        let n = change(
            Side::RIGHT,
            "r5",
            fields(&[("email", "n@x"), ("name", "New"), ("status", "active")]),
            6,
        );
        let a = plan(&input(&s, vec![l.clone(), n.clone()]));
        let b = plan(&input(&s, vec![l.clone(), n.clone()]));
        assert_eq!(a.ops, b.ops);
        assert_eq!(a.links, b.links);
        // Taking the links instead of copying them changes nothing but the input.
        let mut i = input(&s, vec![l, n]);
        let c = plan_once(&mut i);
        assert_eq!((a.ops, a.links), (c.ops, c.links));
        assert!(i.links.is_empty());
    }
}
