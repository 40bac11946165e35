//! The merge of a link with more than two sides: one record kept the same in a CRM, an ERP and
//! a helpdesk (issue 16).
//!
//! The same state-based merge as [`super::merge`], over every side at once: each field's sides
//! that differ from the base are its changes; one change (or several equal ones) is the value,
//! written to every side that differs; changes that differ are a conflict, settled over all of
//! them by the field's policy: last writer wins (latest change time; ties go to the side named
//! first), `order` (the first side in the order that changed), or `manual` (held, with every
//! side's value). A delete reaches every side, unless another side changed the record since
//! (then a person decides) or the policy says otherwise.
//!
//! Counters add every side's change (`counter::count`) and filters apply to every side
//! (`filter::scope`), as in a sync of two; a one-way field is written from its owner to every
//! other side. A rule is asked with every side's value (`RuleQuery::more`) and may take any
//! side. Value translations hold a value per side (`FieldSpec::values`) and are applied by the
//! mapping, as in a sync of two.

use std::collections::{BTreeMap, BTreeSet};

use super::mapping::{DeletePolicy, Policy, SyncSpec};
use super::merge::{
    changed_since_base, get, writes_to_ops, ConflictNote, Decided, DecidedSide, LinkStatus, Merged,
    HELD_FOR_A_PERSON, WHOLE_RECORD,
};
use super::plan::{OpKind, RuleAnswer, RuleQuery};
use super::value::{Fields, Value};
use super::{Link, Side, SideState};

/// Merges one link of a sync of more than two sides. `held` are the fields (or
/// [`WHOLE_RECORD`]) with open conflicts; `answers` are rules' answers to the queries of an
/// earlier pass over the same input.
pub(crate) fn merge_many(
    link: &Link,
    spec: &SyncSpec,
    held: &BTreeSet<String>,
    answers: &BTreeMap<(u64, String), RuleAnswer>,
) -> Merged {
    let mut m = Merged::default();
    if link.status != LinkStatus::Active {
        return m;
    }
    let sides: Vec<(Side, &SideState)> = link.each_side().collect();
    let gone: Vec<Side> = sides
        .iter()
        .filter(|(_, st)| st.deleted)
        .map(|(s, _)| *s)
        .collect();
    if !gone.is_empty() {
        merge_delete(link, spec, held, &gone, &mut m);
        return m;
    }

    let mut writes: BTreeMap<Side, Fields> = BTreeMap::new();
    for fs in &spec.fields {
        let f = fs.name.as_str();
        if spec.is_stopped(f) {
            continue;
        }
        let b = link.base.get(f);
        if held.contains(f) {
            let values: Vec<Option<&Value>> = sides.iter().map(|(_, st)| get(st, f)).collect();
            let shown: Vec<&Value> = values.iter().flatten().copied().collect();
            if shown.len() == values.len() && shown.windows(2).all(|w| w[0] == w[1]) {
                // Every side showing one count says nothing of the sales it misses: a held
                // counter waits for a person's total.
                if !fs.counter {
                    m.agreed.push(f.to_owned());
                } else {
                    m.conflicts
                        .push(ConflictNote::of_link(link, f, HELD_FOR_A_PERSON.into()));
                }
            } else {
                m.conflicts
                    .push(ConflictNote::of_link(link, f, HELD_FOR_A_PERSON.into()));
            }
            continue;
        }
        let desired = if let Some(pin) = link.pins.get(f) {
            Some(pin.clone())
        } else if let Some(owner) = fs.direction.owner() {
            get(link.side(owner), f).or(b).cloned()
        } else if fs.counter && b.is_some() && sides.iter().all(|(_, st)| get(st, f).is_some()) {
            // The total, every side's change added in (`counter::count`).
            b.cloned()
        } else {
            match settle_field(link, spec, f, &sides, answers, &mut m) {
                Field::Value(v) => v,
                Field::Held => continue,
            }
        };
        let Some(d) = desired else { continue };
        for (side, st) in &sides {
            if !fs.direction.writes_to(*side) {
                continue;
            }
            if st.id.is_none() || get(st, f) != Some(&d) {
                writes
                    .entry(*side)
                    .or_default()
                    .insert(f.to_owned(), d.clone());
            }
        }
    }
    m.ops.extend(writes_to_ops(link, writes));
    m
}

enum Field {
    /// The value every side should hold (none: no side has one).
    Value(Option<Value>),
    /// Held for a person, or waiting for a rule's answer.
    Held,
}

/// The value of one field over all sides, or a conflict held.
fn settle_field(
    link: &Link,
    spec: &SyncSpec,
    f: &str,
    sides: &[(Side, &SideState)],
    answers: &BTreeMap<(u64, String), RuleAnswer>,
    m: &mut Merged,
) -> Field {
    let b = link.base.get(f);
    // The sides whose value differs from the base: this field's changes.
    let changed: Vec<(Side, &SideState, &Value)> = sides
        .iter()
        .filter_map(|(s, st)| get(st, f).filter(|v| Some(*v) != b).map(|v| (*s, *st, v)))
        .collect();
    // A side's rewrite of what Duplex wrote yields to a person's edit elsewhere: it reacted to
    // an older value (see `SideState::rewritten`).
    let edits: Vec<(Side, &SideState, &Value)> =
        if changed.iter().any(|(_, st, _)| !st.rewritten.contains(f)) {
            changed
                .iter()
                .filter(|(_, st, _)| !st.rewritten.contains(f))
                .copied()
                .collect()
        } else {
            changed.clone()
        };
    let Some((_, _, first)) = edits.first() else {
        // No change: the base, or what the sides show (a field new to the base).
        return Field::Value(
            b.or_else(|| sides.iter().find_map(|(_, st)| get(st, f)))
                .cloned(),
        );
    };
    if edits.iter().all(|(_, _, v)| v == first) {
        return Field::Value(Some((*first).clone()));
    }
    let contenders: Vec<Side> = edits.iter().map(|(s, _, _)| *s).collect();
    let winner = match spec.policy_for(f) {
        Policy::LastWriterWins => {
            // Option orders None first: a side only Duplex changed counts as earliest; `max_by`
            // keeps the last of equals, so the times are compared with the side reversed: a
            // tie goes to the side named first.
            let (side, _, _) = edits
                .iter()
                .max_by_key(|(s, st, _)| (st.changed_at, std::cmp::Reverse(*s)))
                .expect("several edits");
            m.decided.push(decided(link, f, *side, &contenders, None));
            *side
        }
        Policy::Order(order) => *order
            .iter()
            .find(|s| contenders.contains(s))
            .unwrap_or(&contenders[0]),
        Policy::Prefer(first) if contenders.contains(first) => *first,
        Policy::Prefer(_) => contenders[0],
        Policy::Manual => {
            m.conflicts.push(ConflictNote::of_link(
                link,
                f,
                format!("{} all changed {f}", spec.list_sides(contenders)),
            ));
            return Field::Held;
        }
        Policy::Rule(name) => {
            let taken = match answers.get(&(link.id, f.to_owned())) {
                None => {
                    m.queries.push(query(link, f));
                    return Field::Held;
                }
                Some(RuleAnswer::TakeLeft) => Side::LEFT,
                Some(RuleAnswer::TakeRight) => Side::RIGHT,
                Some(RuleAnswer::Take(side)) if side.index() < spec.sides() => *side,
                Some(RuleAnswer::Take(side)) => {
                    m.conflicts.push(ConflictNote::of_link(
                        link,
                        f,
                        format!("rule {name} took side {side}, which this sync does not have"),
                    ));
                    return Field::Held;
                }
                Some(RuleAnswer::Value(v)) => {
                    let mut d = decided(link, f, Side::LEFT, &contenders, Some(name));
                    d.value = Some(v.clone());
                    m.decided.push(d);
                    return Field::Value(Some(v.clone()));
                }
                Some(RuleAnswer::Manual(why)) => {
                    m.conflicts.push(ConflictNote::of_link(
                        link,
                        f,
                        format!("the rule left it to a person: {why}"),
                    ));
                    return Field::Held;
                }
            };
            m.decided
                .push(decided(link, f, taken, &contenders, Some(name)));
            taken
        }
    };
    Field::Value(get(link.side(winner), f).cloned())
}

/// What a rule is asked about one field: every side's value (null where it has none) and
/// change time.
fn query(link: &Link, f: &str) -> RuleQuery {
    let mut sides = link
        .each_side()
        .map(|(_, st)| (get(st, f).cloned().unwrap_or(Value::Null), st.changed_at));
    let (left, left_changed_at) = sides.next().expect("a left side");
    let (right, right_changed_at) = sides.next().expect("a right side");
    RuleQuery {
        link: link.id,
        field: f.to_owned(),
        base: link.base.get(f).cloned(),
        left,
        right,
        left_changed_at,
        right_changed_at,
        more: sides.collect(),
    }
}

/// A decision over several sides (by last writer wins, or by `rule`), with every side's value
/// and time.
fn decided(link: &Link, f: &str, winner: Side, among: &[Side], rule: Option<&String>) -> Decided {
    let value = |s: Side| get(link.side(s), f).cloned().unwrap_or(Value::Null);
    let (l, r) = (&link.left, &link.right);
    Decided {
        link: link.id,
        field: f.to_owned(),
        left: value(Side::LEFT),
        right: value(Side::RIGHT),
        left_at: l.changed_at,
        right_at: r.changed_at,
        left_read_time: l.read_time,
        right_read_time: r.read_time,
        winner,
        rule: rule.cloned(),
        value: None,
        plugin: None,
        more: link
            .more
            .iter()
            .map(|st| DecidedSide {
                value: get(st, f).cloned(),
                at: st.changed_at,
                read_time: st.read_time,
            })
            .collect(),
        among: among.to_vec(),
    }
}

/// A record deleted on one side or more: the delete reaches the others, unless one of them
/// changed the record since the sides last agreed (a person decides), or the policy keeps them.
fn merge_delete(
    link: &Link,
    spec: &SyncSpec,
    held: &BTreeSet<String>,
    gone: &[Side],
    m: &mut Merged,
) {
    let kept: Vec<(Side, &SideState)> = link.each_side().filter(|(_, st)| st.exists()).collect();
    if kept.is_empty() {
        m.status = Some(LinkStatus::Deleted);
        return;
    }
    let note = |reason: String| ConflictNote {
        link: link.id,
        field: WHOLE_RECORD.into(),
        base: None,
        left: None,
        right: None,
        more: Vec::new(),
        reason,
    };
    let gone_names = spec.list_sides(gone.iter().copied());
    let changed: Vec<Side> = kept
        .iter()
        .filter(|(_, st)| changed_since_base(st, &link.base))
        .map(|(s, _)| *s)
        .collect();
    if spec.deletes == DeletePolicy::Ignore {
        m.status = Some(LinkStatus::Detached);
    } else if !link.delete_approved && !changed.is_empty() {
        // Deleting now would lose another side's edit (invariant 1): a person decides.
        m.conflicts.push(note(format!(
            "deleted in {gone_names} while changed in {}",
            spec.list_sides(changed)
        )));
    } else if link.delete_approved || spec.deletes == DeletePolicy::Propagate {
        for (side, st) in kept {
            if let Some(id) = &st.id {
                m.ops.push((
                    side,
                    OpKind::Delete {
                        id: id.clone(),
                        if_version: st.version.clone(),
                    },
                ));
            }
        }
    } else if !held.contains(WHOLE_RECORD) {
        m.conflicts.push(note(format!(
            "deleted in {gone_names}: the delete waits for approval"
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::mapping::{FieldSpec, MatchKey};
    use crate::engine::plan::{plan, Candidate, Input, Observed, Plan};
    use crate::engine::FieldType;

    const DESK: Side = Side(2);

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs.iter().map(|(k, v)| ((*k).into(), text(v))).collect()
    }

    /// A CRM, an ERP and a helpdesk, each naming the fields its own way.
    fn spec(policy: Policy) -> SyncSpec {
        let field = |n: &str, r: &str, d: &str| FieldSpec {
            name: n.into(),
            left: n.into(),
            right: r.into(),
            left_type: FieldType::Text,
            right_type: FieldType::Text,
            direction: crate::engine::Direction::Both,
            values: vec![],
            policy: None,
            counter: false,
            more: vec![(d.into(), FieldType::Text)],
        };
        SyncSpec {
            name: "people".into(),
            origin: "duplex:people".into(),
            left_name: "crm".into(),
            right_name: "erp".into(),
            more_names: vec!["desk".into()],
            fields: vec![
                field("email", "mail", "email_address"),
                field("name", "full_name", "display"),
            ],
            match_key: Some(MatchKey {
                field: "email".into(),
                ignore_case: true,
            }),
            policy,
            deletes: DeletePolicy::Propagate,
            scope: Default::default(),
            stopped: Default::default(),
        }
    }

    /// A record all three sides agreed on: ada@x, Ada.
    fn agreed() -> Link {
        let f = fields(&[("email", "ada@x"), ("name", "Ada")]);
        let mut link = Link::with_sides(7, 3);
        for (i, id) in ["c1", "e1", "d1"].into_iter().enumerate() {
            *link.side_mut(Side::nth(i)) = SideState {
                id: Some(id.into()),
                seen: Some(f.clone()),
                version: Some("1".into()),
                changed_at: Some(1),
                ..SideState::default()
            };
        }
        link.base = f;
        link
    }

    fn edit(side: Side, id: &str, name: &str, at: i64) -> Observed {
        Observed {
            side,
            id: id.into(),
            deleted: false,
            fields: fields(&[("email", "ada@x"), ("name", name)]),
            version: Some(at.to_string()),
            changed_at: Some(at),
            read_at: 1_000,
            own: false,
        }
    }

    fn run(spec: &SyncSpec, links: Vec<Link>, changes: Vec<Observed>) -> Plan {
        plan(&Input {
            spec,
            links,
            held: BTreeMap::new(),
            changes,
            candidates: BTreeMap::new(),
            answers: BTreeMap::new(),
            next_link_id: 8,
        })
    }

    /// What each side is written, by side.
    fn written(p: &Plan) -> BTreeMap<Side, (&'static str, Fields)> {
        p.ops
            .iter()
            .map(|o| {
                let (kind, f) = match &o.kind {
                    OpKind::Create { fields } => ("create", fields.clone()),
                    OpKind::Update { fields, .. } => ("update", fields.clone()),
                    OpKind::Delete { .. } => ("delete", Fields::new()),
                };
                (o.side, (kind, f))
            })
            .collect()
    }

    #[test]
    fn a_change_on_one_side_reaches_both_others() {
        let s = spec(Policy::LastWriterWins);
        let p = run(&s, vec![agreed()], vec![edit(DESK, "d1", "Ada L.", 5)]);
        let w = written(&p);
        assert_eq!(w.len(), 2, "{w:?}");
        for side in [Side::LEFT, Side::RIGHT] {
            assert_eq!(w[&side], ("update", fields(&[("name", "Ada L.")])));
        }
    }

    #[test]
    fn the_latest_of_three_racing_edits_wins_everywhere_and_the_decision_names_all() {
        let s = spec(Policy::LastWriterWins);
        let p = run(
            &s,
            vec![agreed()],
            vec![
                edit(Side::LEFT, "c1", "Ada C", 5),
                edit(Side::RIGHT, "e1", "Ada E", 9),
                edit(DESK, "d1", "Ada D", 7),
            ],
        );
        let w = written(&p);
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), [Side::LEFT, DESK]);
        assert_eq!(w[&DESK].1, fields(&[("name", "Ada E")]));
        let d = &p.decided[0];
        assert_eq!(d.winner, Side::RIGHT);
        assert_eq!(d.among, [Side::LEFT, Side::RIGHT, DESK]);
        assert_eq!(d.side(DESK), (Some(&text("Ada D")), Some(7), false));
    }

    #[test]
    fn a_tie_goes_to_the_side_named_first_among_those_that_changed() {
        let s = spec(Policy::LastWriterWins);
        let p = run(
            &s,
            vec![agreed()],
            vec![
                edit(Side::RIGHT, "e1", "Ada E", 5),
                edit(DESK, "d1", "Ada D", 5),
            ],
        );
        assert_eq!(written(&p)[&DESK].1, fields(&[("name", "Ada E")]));
    }

    #[test]
    fn an_order_of_sides_beats_the_times() {
        let s = spec(Policy::Order(vec![DESK, Side::LEFT, Side::RIGHT]));
        let edits = || {
            vec![
                edit(Side::LEFT, "c1", "Ada C", 9),
                edit(Side::RIGHT, "e1", "Ada E", 8),
                edit(DESK, "d1", "Ada D", 1),
            ]
        };
        let p = run(&s, vec![agreed()], edits());
        assert_eq!(written(&p)[&Side::LEFT].1, fields(&[("name", "Ada D")]));
        assert!(
            p.decided.is_empty(),
            "an order is a rule of the sync, not a decision"
        );
        // Without the desk's edit, the CRM comes next.
        let p = run(&s, vec![agreed()], edits().into_iter().take(2).collect());
        assert_eq!(written(&p)[&DESK].1, fields(&[("name", "Ada C")]));
    }

    #[test]
    fn manual_holds_the_field_with_every_sides_value() {
        let s = spec(Policy::Manual);
        let p = run(
            &s,
            vec![agreed()],
            vec![
                edit(Side::LEFT, "c1", "Ada C", 5),
                edit(DESK, "d1", "Ada D", 6),
            ],
        );
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        let c = &p.conflicts[0];
        assert_eq!(c.field, "name");
        assert_eq!(c.reason, "crm and desk all changed name");
        let values: Vec<Option<&Value>> = c.values().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            [
                Some(&text("Ada C")),
                Some(&text("Ada")),
                Some(&text("Ada D"))
            ]
        );
    }

    #[test]
    fn a_rule_is_asked_with_every_sides_value_and_may_take_any() {
        let s = spec(Policy::Rule("pick".into()));
        let input = |answers: BTreeMap<(u64, String), RuleAnswer>| Input {
            spec: &s,
            links: vec![agreed()],
            held: BTreeMap::new(),
            changes: vec![
                edit(Side::LEFT, "c1", "Ada C", 5),
                edit(DESK, "d1", "Ada D", 6),
            ],
            candidates: BTreeMap::new(),
            answers,
            next_link_id: 8,
        };
        // First pass: a query with all three values, nothing written yet.
        let p = plan(&input(BTreeMap::new()));
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        let q = &p.queries[0];
        assert_eq!((q.link, q.field.as_str()), (7, "name"));
        assert_eq!((&q.left, &q.right), (&text("Ada C"), &text("Ada")));
        assert_eq!(q.more, [(text("Ada D"), Some(6))]);
        assert_eq!(q.base, Some(text("Ada")));
        // The rule takes the third side: written to the other two, decided by the rule.
        let key = (7, "name".to_owned());
        let p = plan(&input([(key.clone(), RuleAnswer::Take(DESK))].into()));
        let w = written(&p);
        assert_eq!(
            w.keys().copied().collect::<Vec<_>>(),
            [Side::LEFT, Side::RIGHT]
        );
        assert_eq!(w[&Side::RIGHT].1, fields(&[("name", "Ada D")]));
        let d = &p.decided[0];
        assert_eq!((d.winner, d.rule.as_deref()), (DESK, Some("pick")));
        assert_eq!(d.among, [Side::LEFT, DESK]);
        // Its own value goes to every side; a person's turn holds the field with all values.
        let p = plan(&input(
            [(key.clone(), RuleAnswer::Value(text("A. D.")))].into(),
        ));
        assert_eq!(written(&p).len(), 3);
        assert_eq!(p.decided[0].value, Some(text("A. D.")));
        let p = plan(&input(
            [(key.clone(), RuleAnswer::Manual("why".into()))].into(),
        ));
        assert!(p.ops.is_empty());
        assert_eq!(p.conflicts[0].reason, "the rule left it to a person: why");
        assert_eq!(p.conflicts[0].value(DESK), Some(&text("Ada D")));
        // A side the sync lacks decides nothing.
        let p = plan(&input([(key, RuleAnswer::Take(Side::nth(5)))].into()));
        assert!(p.ops.is_empty());
        assert!(p.conflicts[0].reason.contains("does not have"));
    }

    #[test]
    fn a_delete_reaches_every_other_side_unless_one_changed_the_record() {
        let s = spec(Policy::LastWriterWins);
        let mut gone = edit(Side::RIGHT, "e1", "Ada", 5);
        gone.deleted = true;
        let p = run(&s, vec![agreed()], vec![gone.clone()]);
        let w = written(&p);
        assert_eq!(w[&Side::LEFT].0, "delete");
        assert_eq!(w[&DESK].0, "delete");
        assert_eq!(w.len(), 2);

        let p = run(&s, vec![agreed()], vec![gone, edit(DESK, "d1", "Ada D", 6)]);
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        assert_eq!(p.conflicts[0].field, WHOLE_RECORD);
        assert_eq!(
            p.conflicts[0].reason,
            "deleted in erp while changed in desk"
        );
    }

    #[test]
    fn a_new_record_pairs_with_its_match_and_is_created_where_it_is_missing() {
        let s = spec(Policy::LastWriterWins);
        let mut candidates = BTreeMap::new();
        candidates.insert(
            (Side::RIGHT, "ada@x".to_owned()),
            vec![Candidate {
                id: "e9".into(),
                fields: fields(&[("email", "ADA@x"), ("name", "Ada")]),
                version: Some("3".into()),
                changed_at: None,
                read_at: 1_000,
            }],
        );
        let p = plan(&Input {
            spec: &s,
            links: Vec::new(),
            held: BTreeMap::new(),
            changes: vec![edit(Side::LEFT, "c9", "Ada", 5)],
            candidates,
            answers: BTreeMap::new(),
            next_link_id: 8,
        });
        assert_eq!(p.matched, 1);
        let link = &p.links[&8];
        assert_eq!(link.side(Side::RIGHT).id.as_deref(), Some("e9"));
        let w = written(&p);
        assert_eq!(
            w[&DESK],
            ("create", fields(&[("email", "ada@x"), ("name", "Ada")]))
        );
        // The ERP's email differs in case only from the CRM's, which changed it: it follows.
        assert_eq!(w[&Side::RIGHT].1, fields(&[("email", "ada@x")]));
    }

    #[test]
    fn a_counter_adds_the_change_of_every_side() {
        let mut s = spec(Policy::LastWriterWins);
        s.fields.push(FieldSpec {
            counter: true,
            left_type: FieldType::Integer,
            right_type: FieldType::Integer,
            more: vec![("stock".into(), FieldType::Integer)],
            ..s.fields[1].clone()
        });
        s.fields[2].name = "stock".into();
        let mut link = agreed();
        for i in 0..3 {
            let st = link.side_mut(Side::nth(i));
            st.seen
                .as_mut()
                .unwrap()
                .insert("stock".into(), Value::Int(10));
            st.counted.insert("stock".into(), Value::Int(10));
        }
        link.base.insert("stock".into(), Value::Int(10));
        // One sold on the CRM, two on the ERP, one restocked on the desk: 10 - 1 - 2 + 1.
        let sold = |side: Side, id: &str, n: i64| {
            let mut o = edit(side, id, "Ada", 5);
            o.fields.insert("stock".into(), Value::Int(n));
            o
        };
        let p = run(
            &s,
            vec![link],
            vec![
                sold(Side::LEFT, "c1", 9),
                sold(Side::RIGHT, "e1", 8),
                sold(DESK, "d1", 11),
            ],
        );
        let w = written(&p);
        // The ERP shows 8 already: nothing to write there.
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), [Side::LEFT, DESK]);
        for side in [Side::LEFT, DESK] {
            assert_eq!(w[&side].1.get("stock"), Some(&Value::Int(8)), "{side}");
        }
        assert_eq!(p.links[&7].base.get("stock"), Some(&Value::Int(8)));
        // Each side's change counted once: after the writes land, one more sale on the desk
        // alone takes four off the total, not more.
        let mut link = p.links[&7].clone();
        for side in Side::all(3) {
            let st = link.side_mut(side);
            st.seen
                .as_mut()
                .unwrap()
                .insert("stock".into(), Value::Int(8));
            st.counted.insert("stock".into(), Value::Int(8));
        }
        let p = run(&s, vec![link], vec![sold(DESK, "d1", 4)]);
        let w = written(&p);
        assert_eq!(w[&Side::LEFT].1.get("stock"), Some(&Value::Int(4)));
        assert_eq!(w[&Side::RIGHT].1.get("stock"), Some(&Value::Int(4)));
        assert!(!w.contains_key(&DESK));
    }

    #[test]
    fn a_record_leaving_the_filter_of_one_side_takes_its_copies_on_the_others_as_told() {
        let mut s = spec(Policy::LastWriterWins);
        let name = |n: &str| {
            let t = FieldType::Text;
            Ok::<_, String>((if n == "display" { "display" } else { "?" }.to_owned(), t))
        };
        s.scope.more = vec![Some(
            crate::engine::Filter::parse("display != 'Gone'", &name).unwrap(),
        )];
        s.scope.leaving = crate::engine::Leaving::Delete;
        let p = run(&s, vec![agreed()], vec![edit(DESK, "d1", "Gone", 5)]);
        let w = written(&p);
        assert_eq!(
            w.keys().copied().collect::<Vec<_>>(),
            [Side::LEFT, Side::RIGHT]
        );
        assert!(w.values().all(|(kind, _)| *kind == "delete"), "{w:?}");
        assert_eq!(p.links[&7].status, LinkStatus::Filtered);

        s.scope.leaving = crate::engine::Leaving::Hold;
        let p = run(&s, vec![agreed()], vec![edit(DESK, "d1", "Gone", 5)]);
        assert!(p.ops.is_empty(), "{:?}", p.ops);
        assert_eq!(
            p.conflicts[0].reason,
            "left the filter of desk (display != 'Gone'): delete its copies in crm and erp? Resolve with the value delete, or keep"
        );

        // Written a value that puts it outside the desk's filter, the desk's record leaves
        // too: the others keep the value, and the desk's record is written and left alone.
        s.scope.leaving = crate::engine::Leaving::Keep;
        let p = run(&s, vec![agreed()], vec![edit(Side::LEFT, "c1", "Gone", 5)]);
        let w = written(&p);
        assert_eq!(w[&DESK], ("update", fields(&[("name", "Gone")])));
        assert_eq!(p.links[&7].status, LinkStatus::Filtered);
    }

    #[test]
    fn a_field_owned_by_one_side_is_written_to_all_others_and_put_back_elsewhere() {
        let mut s = spec(Policy::LastWriterWins);
        s.fields[1].direction = crate::engine::Direction::From(Side::RIGHT);
        // The desk renames Ada: its edit is put back, from the ERP.
        let p = run(&s, vec![agreed()], vec![edit(DESK, "d1", "Ada D", 5)]);
        let w = written(&p);
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), [DESK]);
        assert_eq!(w[&DESK].1, fields(&[("name", "Ada")]));
        // The ERP's edit, though earlier than the CRM's, reaches both others.
        let p = run(
            &s,
            vec![agreed()],
            vec![
                edit(Side::LEFT, "c1", "Ada C", 9),
                edit(Side::RIGHT, "e1", "Ada E", 5),
            ],
        );
        let w = written(&p);
        assert_eq!(w[&Side::LEFT].1, fields(&[("name", "Ada E")]));
        assert_eq!(w[&DESK].1, fields(&[("name", "Ada E")]));
        assert!(!w.contains_key(&Side::RIGHT));
    }

    #[test]
    fn the_base_moves_only_once_every_side_holds_the_value() {
        let s = spec(Policy::LastWriterWins);
        let mut link = agreed();
        link.left.seen = Some(fields(&[("email", "ada@x"), ("name", "Ada L.")]));
        link.right.seen = link.left.seen.clone();
        crate::engine::merge::refresh(&mut link, &s);
        assert_eq!(link.base.get("name"), Some(&text("Ada")));
        link.more[0].seen = link.left.seen.clone();
        crate::engine::merge::refresh(&mut link, &s);
        assert_eq!(link.base.get("name"), Some(&text("Ada L.")));
    }
}
