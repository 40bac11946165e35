//! Seeded simulations of two systems edited at random while a sync runs between them, with
//! crashes injected between any two steps of a cycle. The real driver, engine and state (redb,
//! in memory) run against in-memory systems; after the edits stop, the invariants of DESIGN.md
//! are checked: no lost update, no echo, no duplicate, field-level merge, crash safety,
//! convergence, determinism. Each test prints how many schedules it checked.
//!
//! Both systems and the driver read one clock (`memory::World`), and a person may edit a
//! record just before any call the driver makes, so edits land between a cycle's clock
//! reading, its reads, its conditional writes and the re-reads after a refused write. Under
//! last-writer-wins the decision itself is checked, not only convergence: see
//! [`Sim::check_last_writer`].

// Test helpers unwrap too: a panic there is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod memory;
mod sim;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use duplex::driver::{Rules, SyncRunner, Turns};
use duplex::engine::{
    DeletePolicy, FieldSpec, FieldType, MatchKey, Policy, Side, SyncSpec, WHOLE_RECORD,
};
use duplex::plugin::Value;
use duplex::state::State;
use memory::{Case, Shared, World};
use sim::Rng;

fn spec(policy: Policy) -> SyncSpec {
    let field = |name: &str, right: &str, rt: FieldType| FieldSpec {
        more: Vec::new(),
        right_type: rt,
        ..sim::text_field(name, right)
    };
    SyncSpec {
        more_names: Vec::new(),
        name: "people".into(),
        origin: "duplex:people".into(),
        left_name: "crm".into(),
        right_name: "erp".into(),
        fields: vec![
            field("email", "mail", FieldType::Text),
            field("name", "full_name", FieldType::Text),
            FieldSpec {
                more: Vec::new(),
                values: vec![
                    vec![
                        Value::Text("active".into()).into(),
                        Value::Integer(1).into(),
                    ],
                    vec![Value::Text("lead".into()).into(), Value::Integer(2).into()],
                    vec![Value::Text("gone".into()).into(), Value::Integer(3).into()],
                ],
                ..field("status", "state", FieldType::Integer)
            },
            field("note", "memo", FieldType::Text),
            field("tag", "label", FieldType::Text),
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

const STATUSES: [(&str, i64); 3] = [("active", 1), ("lead", 2), ("gone", 3)];

/// What the simulation knows a person did to one entity.
#[derive(Debug, Clone, Default)]
struct Entity {
    email: String,
    names: Vec<String>,
    notes: Vec<String>,
    statuses: Vec<String>,
    deleted: bool,
    /// The cycle count when it was created: a person deletes only records Duplex has seen (a
    /// record deleted before any sync saw it was never linked to its twin).
    born: u32,
    /// Typed into both systems before a sync: the first sync merges two records with no base,
    /// so every field is a possible conflict.
    twin: bool,
    /// Every tag a person gave it (creation included): (when, where, what). Tags are edited
    /// on both sides, each edit with a value never used before.
    tag_edits: Vec<(i64, Side, String)>,
    /// When a person changed its record on each side (any field, creation included).
    edited_at: [Vec<i64>; 2],
}

impl Entity {
    fn edited(&mut self, side: Side, at: i64) {
        self.edited_at[side_index(side)].push(at);
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::LEFT => 0,
        _ => 1,
    }
}

/// An edit a person makes while a cycle runs, just before the driver's call number `call`.
#[derive(Debug, Clone)]
struct Planned {
    call: u64,
    entity: usize,
    side: Side,
    /// name, note, status or tag.
    field: &'static str,
    value: String,
}

/// An edit made while a cycle ran, for the sim to record once it ends.
#[derive(Debug, Clone)]
struct Applied {
    planned: Planned,
    at: i64,
}

/// The edits planned for the cycle that runs, and those made.
#[derive(Default)]
struct MidCycle {
    planned: Vec<Planned>,
    applied: Vec<Applied>,
}

/// Makes one planned edit in `sys`, if the record is still there: returns its time.
fn apply_planned(left: &Shared, right: &Shared, p: &Planned) -> Option<i64> {
    let (sys, email_field) = match p.side {
        Side::LEFT => (left, "email"),
        _ => (right, "mail"),
    };
    let email = format!("p{}@example.com", p.entity);
    let mut s = sys.0.borrow_mut();
    let id = s
        .records
        .iter()
        .find(|(_, r)| match r.get(email_field) {
            Some(Value::Text(t)) => t.eq_ignore_ascii_case(&email),
            _ => false,
        })
        .map(|(id, _)| id.clone())?;
    let (field, value) = match (p.side, p.field) {
        (Side::LEFT, "name") => ("name", Value::Text(p.value.clone())),
        (Side::RIGHT, "note") => ("memo", Value::Text(p.value.clone())),
        (Side::LEFT, "tag") => ("tag", Value::Text(p.value.clone())),
        (Side::RIGHT, "tag") => ("label", Value::Text(p.value.clone())),
        (Side::LEFT, _) => ("status", Value::Text(p.value.clone())),
        _ => (
            "state",
            Value::Integer(
                STATUSES
                    .iter()
                    .find(|(st, _)| *st == p.value)
                    .map_or(1, |(_, c)| *c),
            ),
        ),
    };
    s.user_update(&id, field, value);
    Some(s.last_change_at())
}

struct Sim {
    rng: Rng,
    world: Rc<World>,
    left: Shared,
    right: Shared,
    runner: SyncRunner<Shared>,
    state: State,
    entities: Vec<Entity>,
    mid_cycle: Rc<RefCell<MidCycle>>,
    crashes: u32,
    cycles: u32,
    /// Edits made while a cycle ran.
    edits_in_cycles: u32,
    /// Whether a cycle follows a wait for announcements, and which are late: a generator of
    /// its own keeps every seed's edits, cycles and crashes as they were before waits.
    waits: Rng,
    /// Sides cycles left unread after a wait heard nothing from them.
    unread: usize,
}

impl Sim {
    fn new(seed: u64, policy: Policy) -> Sim {
        let world = World::new(1_000_000);
        let left = Shared::in_world("", world.clone());
        let right = Shared::in_world("r", world.clone());
        let mid_cycle = Rc::new(RefCell::new(MidCycle::default()));
        {
            let (left, right, mid) = (left.clone(), right.clone(), mid_cycle.clone());
            world.set_before_call(move |call| {
                let due: Vec<Planned> = {
                    let mut m = mid.borrow_mut();
                    let (due, later) = m.planned.drain(..).partition(|p| p.call == call);
                    m.planned = later;
                    due
                };
                for p in due {
                    if let Some(at) = apply_planned(&left, &right, &p) {
                        mid.borrow_mut().applied.push(Applied { planned: p, at });
                    }
                }
            });
        }
        let runner = SyncRunner::new(spec(policy), left.clone(), right.clone(), 7, Rules::new())
            .with_clock(world.driver_clock());
        // As a normalising database or a trigger would, the right system stores names in upper
        // case, whoever writes them: what Duplex writes comes back changed (issue 13).
        right.0.borrow_mut().rewrites = vec![("full_name".into(), Case::Upper)];
        Sim {
            rng: Rng::new(seed),
            world,
            runner,
            left,
            right,
            state: State::in_memory().expect("in-memory state"),
            entities: Vec::new(),
            mid_cycle,
            crashes: 0,
            cycles: 0,
            edits_in_cycles: 0,
            waits: Rng::new(seed ^ 0x3c6e_f372),
            unread: 0,
        }
    }

    fn record_of(&self, side: Side, email: &str) -> Vec<String> {
        let (sys, field) = match side {
            Side::LEFT => (&self.left, "email"),
            _ => (&self.right, "mail"),
        };
        sys.0
            .borrow()
            .records
            .iter()
            .filter(|(_, r)| match r.get(field) {
                Some(Value::Text(t)) => t.eq_ignore_ascii_case(email),
                _ => false,
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn create(&mut self, side: Side, e: usize) {
        let ent = self.entities[e].clone();
        let name = ent.names.last().cloned().unwrap_or_default();
        let note = ent.notes.last().cloned().unwrap_or_default();
        let status = ent.statuses.last().cloned().unwrap_or_default();
        let tag = format!("tag {e} {side}");
        let code = STATUSES
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(1, |(_, c)| *c);
        let at = match side {
            Side::LEFT => {
                let mut l = self.left.0.borrow_mut();
                l.user_create(&[
                    ("email", Value::Text(ent.email.clone())),
                    ("name", Value::Text(name)),
                    ("status", Value::Text(status.clone())),
                    ("note", Value::Text(note)),
                    ("tag", Value::Text(tag.clone())),
                ]);
                l.last_change_at()
            }
            _ => {
                // The other system keeps emails in upper case: matching ignores case.
                let mut r = self.right.0.borrow_mut();
                r.user_create(&[
                    ("mail", Value::Text(ent.email.to_uppercase())),
                    ("full_name", Value::Text(name)),
                    ("state", Value::Integer(code)),
                    ("memo", Value::Text(note)),
                    ("label", Value::Text(tag.clone())),
                ]);
                r.last_change_at()
            }
        };
        let ent = &mut self.entities[e];
        ent.tag_edits.push((at, side, tag));
        ent.edited(side, at);
    }

    /// One random edit by a person.
    fn edit(&mut self, step: usize) {
        let live: Vec<usize> = (0..self.entities.len())
            .filter(|i| !self.entities[*i].deleted)
            .collect();
        let roll = self.rng.below(100);
        if live.is_empty() || roll < 15 {
            let e = self.entities.len();
            self.entities.push(Entity {
                email: format!("p{e}@example.com"),
                names: vec![format!("Name {e}")],
                notes: vec![format!("note {e}")],
                statuses: vec!["lead".into()],
                deleted: false,
                born: self.cycles,
                twin: false,
                tag_edits: Vec::new(),
                edited_at: [Vec::new(), Vec::new()],
            });
            let side = if self.rng.chance(50) {
                Side::LEFT
            } else {
                Side::RIGHT
            };
            self.create(side, e);
            // Sometimes a person types the same customer into the other system too.
            if self.rng.chance(20) {
                self.create(side.other(), e);
                self.entities[e].twin = true;
            }
            return;
        }
        let e = live[self.rng.below(live.len() as u64) as usize];
        let email = self.entities[e].email.clone();
        if roll < 45 {
            // Names are edited in the CRM only.
            if let Some(id) = self.record_of(Side::LEFT, &email).first() {
                let v = format!("Name {e}.{step}");
                let mut l = self.left.0.borrow_mut();
                l.user_update(id, "name", Value::Text(v.clone()));
                self.entities[e].edited(Side::LEFT, l.last_change_at());
                self.entities[e].names.push(v);
            }
        } else if roll < 70 {
            // Notes are edited in the ERP only.
            if let Some(id) = self.record_of(Side::RIGHT, &email).first() {
                let v = format!("note {e}.{step}");
                let mut r = self.right.0.borrow_mut();
                r.user_update(id, "memo", Value::Text(v.clone()));
                self.entities[e].edited(Side::RIGHT, r.last_change_at());
                self.entities[e].notes.push(v);
            }
        } else if roll < 80 {
            // Tags are edited on both sides, each time to a new value: last-writer-wins is
            // judged on them.
            let side = if self.rng.chance(50) {
                Side::LEFT
            } else {
                Side::RIGHT
            };
            if let Some(id) = self.record_of(side, &email).first() {
                let v = format!("tag {e}.{step}");
                let (sys, field) = match side {
                    Side::LEFT => (&self.left, "tag"),
                    _ => (&self.right, "label"),
                };
                let mut s = sys.0.borrow_mut();
                s.user_update(id, field, Value::Text(v.clone()));
                let at = s.last_change_at();
                self.entities[e].tag_edits.push((at, side, v));
                self.entities[e].edited(side, at);
            }
        } else if roll < 96 {
            // Statuses are edited on both sides too: conflicts among three values.
            let (status, code) = STATUSES[self.rng.below(3) as usize];
            let side = if self.rng.chance(50) {
                Side::LEFT
            } else {
                Side::RIGHT
            };
            if let Some(id) = self.record_of(side, &email).first() {
                let at = match side {
                    Side::LEFT => {
                        let mut l = self.left.0.borrow_mut();
                        l.user_update(id, "status", Value::Text(status.into()));
                        l.last_change_at()
                    }
                    _ => {
                        let mut r = self.right.0.borrow_mut();
                        r.user_update(id, "state", Value::Integer(code));
                        r.last_change_at()
                    }
                };
                let ent = &mut self.entities[e];
                ent.statuses.push(status.into());
                ent.edited(side, at);
            }
        } else if self.entities[e].born + 2 <= self.cycles {
            let side = if self.rng.chance(50) {
                Side::LEFT
            } else {
                Side::RIGHT
            };
            // A record Duplex has not linked yet (its create's result was lost and not yet
            // confirmed) is not deleted: the delete of an unknown record carries nothing to
            // recognise it by. Known limitation, see the notes on create idempotency keys.
            let linked = |id: &str| {
                self.state
                    .link_for("people", side, id)
                    .ok()
                    .flatten()
                    .is_some()
            };
            if let Some(id) = self.record_of(side, &email).first().filter(|id| linked(id)) {
                match side {
                    Side::LEFT => self.left.0.borrow_mut().user_delete(id),
                    _ => self.right.0.borrow_mut().user_delete(id),
                }
                self.entities[e].deleted = true;
            }
        }
    }

    /// Plans edits a person makes while the next cycle runs, just before some of its calls:
    /// edits of records that exist (no creates or deletes), of the fields each side edits.
    fn plan_mid_cycle(&mut self, step: usize) {
        let live: Vec<usize> = (0..self.entities.len())
            .filter(|i| !self.entities[*i].deleted)
            .collect();
        if live.is_empty() || !self.rng.chance(60) {
            return;
        }
        let mut planned = Vec::new();
        for k in 0..=self.rng.below(3) {
            let entity = live[self.rng.below(live.len() as u64) as usize];
            let call = 1 + self.rng.below(8);
            let roll = self.rng.below(100);
            let either = |rng: &mut Rng| {
                if rng.chance(50) {
                    Side::LEFT
                } else {
                    Side::RIGHT
                }
            };
            let (side, field, value) = if roll < 15 {
                (Side::LEFT, "name", format!("Name {entity}.{step}.{k}"))
            } else if roll < 30 {
                (Side::RIGHT, "note", format!("note {entity}.{step}.{k}"))
            } else if roll < 70 {
                let side = either(&mut self.rng);
                (side, "tag", format!("tag {entity}.{step}.{k}"))
            } else {
                let side = if self.rng.chance(50) {
                    Side::LEFT
                } else {
                    Side::RIGHT
                };
                let status = STATUSES[self.rng.below(3) as usize].0;
                (side, "status", status.to_owned())
            };
            planned.push(Planned {
                call,
                entity,
                side,
                field,
                value,
            });
        }
        let mut m = self.mid_cycle.borrow_mut();
        m.planned = planned;
        m.applied.clear();
    }

    /// Records what a person did while the cycle ran; drops edits planned for calls it never
    /// made.
    fn record_mid_cycle(&mut self) {
        let applied = {
            let mut m = self.mid_cycle.borrow_mut();
            m.planned.clear();
            std::mem::take(&mut m.applied)
        };
        for a in applied {
            self.edits_in_cycles += 1;
            let p = a.planned;
            let ent = &mut self.entities[p.entity];
            ent.edited(p.side, a.at);
            match p.field {
                "name" => ent.names.push(p.value),
                "note" => ent.notes.push(p.value),
                "tag" => ent.tag_edits.push((a.at, p.side, p.value)),
                _ => ent.statuses.push(p.value),
            }
        }
    }

    /// One cycle, perhaps with a crash injected at a random step, and perhaps with a person
    /// editing records while it runs. Half the cycles follow a wait for announcements, as a
    /// realtime sync's do (the cycle then leaves a side that announced nothing unread), some
    /// of the announcements late.
    async fn cycle(&mut self, crashes: bool, step: usize) {
        self.world.advance(1_000);
        self.cycles += 1;
        if self.waits.chance(50) {
            for side in [&self.left, &self.right] {
                side.0.borrow_mut().announce_late = self.waits.chance(25);
            }
            let heard = self.runner.watch(std::time::Duration::ZERO).await;
            if std::env::var("SIM_TRACE").is_ok() {
                println!("   wait: {heard:?}");
            }
            for side in [&self.left, &self.right] {
                side.0.borrow_mut().announce_late = false;
            }
        }
        self.plan_mid_cycle(step);
        if crashes && sim::maybe_crash(&mut self.rng, &self.state, &[&self.left, &self.right]) {
            self.crashes += 1;
            if std::env::var("SIM_TRACE").is_ok() {
                println!("   (crash injected)");
            }
        }
        let r = self.runner.cycle(&self.state, self.world.tick()).await;
        self.unread += r.as_ref().map_or(0, |r| r.unread);
        self.record_mid_cycle();
        if std::env::var("SIM_TRACE").is_ok() {
            println!("   cycle: {r:?}");
        }
        sim::clear_crashes(&self.state, &[&self.left, &self.right]);
    }

    /// Runs cycles until both sides are caught up.
    async fn settle(&mut self) {
        let mut idle = 0;
        for _ in 0..400 {
            // Time jumps past every retry backoff.
            self.world.advance(700_000_000);
            let report = self
                .runner
                .cycle(&self.state, self.world.tick())
                .await
                .expect("cycle without faults");
            if report.idle() && report.retried == 0 {
                idle += 1;
                if idle == 2 {
                    return;
                }
            } else {
                idle = 0;
            }
        }
        panic!("did not settle within 400 cycles");
    }

    fn open_conflicts(&self) -> Vec<duplex::state::Conflict> {
        self.state.conflicts(false).expect("conflicts")
    }

    /// Invariants 1-4 and 6, checked against what people did.
    fn check(&self, policy: &Policy, seed: u64) {
        let conflicts = self.open_conflicts();
        let links = self.state.all_links("people").expect("links");
        let held = |email: &str, field: &str| {
            conflicts.iter().any(|c| {
                (c.field == field || c.field == WHOLE_RECORD)
                    && links.iter().any(|l| {
                        l.id == c.link
                            && [&l.left, &l.right].iter().any(|s| {
                                s.seen.as_ref().and_then(|f| f.get("email")).is_some_and(
                                    |v| match v {
                                        duplex::engine::Value::Text(t) => {
                                            t.eq_ignore_ascii_case(email)
                                        }
                                        _ => false,
                                    },
                                )
                            })
                    })
            })
        };
        let decisions: Vec<duplex::engine::Decided> = self
            .state
            .activity(Some("people"))
            .expect("activity")
            .into_iter()
            .filter_map(|a| a.decided)
            .collect();
        let decided = |email: &str, field: &str| {
            decisions.iter().any(|d| {
                d.field == field
                    && links.iter().any(|l| {
                        l.id == d.link
                            && l.left.seen.as_ref().and_then(|f| f.get("email")).is_some_and(
                                |v| matches!(v, duplex::engine::Value::Text(t) if t.eq_ignore_ascii_case(email)),
                            )
                    })
            })
        };
        for ent in &self.entities {
            let l = self.record_of(Side::LEFT, &ent.email);
            let r = self.record_of(Side::RIGHT, &ent.email);
            // Invariant 3: one real-world entity is one record on each side.
            assert!(
                l.len() <= 1 && r.len() <= 1,
                "seed {seed}: {} duplicated: left {l:?} right {r:?}",
                ent.email
            );
            if ent.deleted {
                if !(l.is_empty() && r.is_empty()) {
                    assert!(held(&ent.email, WHOLE_RECORD), "seed {seed}: {} deleted on one side but still on the other, with no conflict held", ent.email);
                }
                continue;
            }
            if l.is_empty() || r.is_empty() {
                // The entity was deleted and restored by nobody: only a held delete explains it.
                assert!(
                    held(&ent.email, WHOLE_RECORD),
                    "seed {seed}: {} is on one side only ({l:?}, {r:?})",
                    ent.email
                );
                continue;
            }
            let lsys = self.left.0.borrow();
            let rsys = self.right.0.borrow();
            let lr = &lsys.records[&l[0]];
            let rr = &rsys.records[&r[0]];
            let text = |v: Option<&Value>| match v {
                Some(Value::Text(t)) => t.clone(),
                other => format!("{other:?}"),
            };
            // Invariants 1 and 4: a field edited on one side only ends as its last edit on both
            // sides. (A twin's first sync merges two records: its fields may conflict.)
            for (written, lf, rf, field) in [
                (&ent.names, "name", "full_name", "name"),
                (&ent.notes, "note", "memo", "note"),
            ] {
                // The right system stores names in upper case (see `Sim::new`): what it stores
                // flows back, so both sides end with the name as the right stores it.
                let stored = |v: &String| {
                    if field == "name" {
                        v.to_uppercase()
                    } else {
                        v.clone()
                    }
                };
                let written: Vec<String> = written.iter().map(stored).collect();
                let written = &written;
                let (lv, rv) = (text(lr.get(lf)), text(rr.get(rf)));
                if ent.twin {
                    if lv != rv {
                        assert!(
                            held(&ent.email, field),
                            "seed {seed}: {} {field} differs ({lv} vs {rv}) with no conflict held",
                            ent.email
                        );
                    } else {
                        assert!(
                            written.contains(&lv),
                            "seed {seed}: {} {field} {lv} was never written",
                            ent.email
                        );
                    }
                } else if field == "name"
                    && lv != stored(written.last().expect("a name"))
                    && (held(&ent.email, field) || decided(&ent.email, field))
                {
                    // The right's rewrite of a name Duplex wrote is its change, and can race a
                    // person's edit on the left: held under a policy that holds conflicts, or
                    // decided in the open (a crash lost the write's result, so the rewrite
                    // could not be told from a person's edit, and the right's record changed
                    // later by another field; see the README's conflict section).
                } else {
                    let last = written.last().expect("an entity starts with a value");
                    assert_eq!(
                        lv, *last,
                        "seed {seed}: {} {field} lost on the left",
                        ent.email
                    );
                    assert_eq!(
                        rv, *last,
                        "seed {seed}: {} {field} lost on the right",
                        ent.email
                    );
                }
            }
            // Invariant 6: the field edited on both sides converges, to a value a person wrote,
            // unless it waits on a person.
            let ls = text(lr.get("status"));
            let rs = match rr.get("state") {
                Some(Value::Integer(c)) => STATUSES
                    .iter()
                    .find(|(_, k)| k == c)
                    .map(|(s, _)| s.to_string())
                    .unwrap_or_default(),
                other => format!("{other:?}"),
            };
            if *policy == Policy::Manual && ls != rs {
                assert!(
                    held(&ent.email, "status"),
                    "seed {seed}: {} status differs ({ls} vs {rs}) with no conflict held",
                    ent.email
                );
            } else {
                assert_eq!(ls, rs, "seed {seed}: {} status did not converge", ent.email);
                assert!(
                    ent.statuses.contains(&ls),
                    "seed {seed}: {} status {ls} was never written",
                    ent.email
                );
            }
        }
    }

    /// Last writer wins, checked as a person would: for each entity whose tag both sides
    /// edited, the tag both sides end with is that of the latest tag edit by the systems' clock
    /// (equal times: the left's). Returns how many entities it judged.
    ///
    /// Tags are judged rather than statuses because every tag edit writes a new value: a sync
    /// sees states, so an edit that writes the value a field already has, or two edits that
    /// go A-B-A between two reads, are invisible to it (and to any state-based sync).
    ///
    /// Sources report when a *record* changed, not a field, so an edit of another field of the
    /// losing side's record at or after the winning edit makes that record the later one; such
    /// entities are not judged (the README's conflict section says so). Nor are deleted ones,
    /// or those with a conflict held for a person.
    fn check_last_writer(&self, seed: u64) -> usize {
        let conflicts = self.open_conflicts();
        let links = self.state.all_links("people").expect("links");
        let mut judged = 0;
        for ent in &self.entities {
            let sides: Vec<Side> = ent.tag_edits.iter().map(|(_, s, _)| *s).collect();
            if ent.deleted || !(sides.contains(&Side::LEFT) && sides.contains(&Side::RIGHT)) {
                continue;
            }
            // The latest edit; at equal times the left's (Right < Left in this key).
            let rank = |s: Side| u8::from(s == Side::LEFT);
            let (at, side, value) = ent
                .tag_edits
                .iter()
                .max_by_key(|(at, s, _)| (*at, rank(*s)))
                .expect("edited on both sides");
            if ent.edited_at[side_index(side.other())]
                .iter()
                .any(|t| t >= at)
            {
                continue;
            }
            let (l, r) = (
                self.record_of(Side::LEFT, &ent.email),
                self.record_of(Side::RIGHT, &ent.email),
            );
            let (Some(l), Some(r)) = (l.first(), r.first()) else {
                continue;
            };
            let held = conflicts.iter().any(|c| {
                links
                    .iter()
                    .any(|k| k.id == c.link && k.left.id.as_deref() == Some(l.as_str()))
            });
            if held {
                continue;
            }
            let text = |v: Option<&Value>| match v {
                Some(Value::Text(t)) => t.clone(),
                other => format!("{other:?}"),
            };
            let lt = text(self.left.0.borrow().records[l].get("tag"));
            let rt = text(self.right.0.borrow().records[r].get("label"));
            assert!(
                lt == *value && rt == *value,
                "seed {seed}: {} tag: the latest edit was {value:?} on the {side} side at {at}, \
                 but the sides hold {lt:?} and {rt:?} (tag edits: {:?}; record edits: {:?})",
                ent.email,
                ent.tag_edits,
                ent.edited_at
            );
            judged += 1;
        }
        judged
    }

    fn fingerprint(&self) -> String {
        format!(
            "{:?}|{:?}",
            self.left.0.borrow().records,
            self.right.0.borrow().records
        )
    }

    fn writes(&self) -> usize {
        self.left.0.borrow().writes + self.right.0.borrow().writes
    }
}

async fn run(seed: u64, policy: Policy, steps: usize, crashes: bool) -> Sim {
    let mut sim = Sim::new(seed, policy);
    let trace = std::env::var("SIM_TRACE").is_ok();
    // Some runs of edits between two cycles are one transaction on each system, which a batch
    // (7 changes) may end inside. A generator of its own keeps every seed's edits and cycles
    // as they were before transactions were simulated.
    let mut grouping = Rng::new(seed ^ 0x7a5c_0f1e);
    let mut in_transaction = false;
    let end_transaction = |sim: &Sim, open: &mut bool| {
        if std::mem::take(open) {
            sim.left.0.borrow_mut().commit();
            sim.right.0.borrow_mut().commit();
        }
    };
    for step in 0..steps {
        if sim.rng.chance(35) {
            end_transaction(&sim, &mut in_transaction);
            sim.cycle(crashes, step).await;
            if trace {
                println!("step {step}: cycle");
            }
        } else {
            if !in_transaction && grouping.chance(30) {
                in_transaction = true;
                sim.left.0.borrow_mut().begin();
                sim.right.0.borrow_mut().begin();
            }
            sim.edit(step);
            if trace {
                println!("step {step}: edit");
            }
        }
    }
    end_transaction(&sim, &mut in_transaction);
    sim.settle().await;
    sim
}

async fn check_schedules(policy: Policy, crashes: bool, schedules: u64) {
    let (mut crashed, mut judged, mut mid, mut decided, mut unread) = (0, 0, 0, 0, 0);
    for seed in 0..schedules {
        let sim = run(seed, policy.clone(), 60, crashes).await;
        sim.check(&policy, seed);
        unread += sim.unread;
        if policy == Policy::LastWriterWins {
            judged += sim.check_last_writer(seed);
        }
        crashed += sim.crashes;
        mid += sim.edits_in_cycles;
        decided += sim.state.stats("people").expect("stats").decided;
        // Invariant 2: once caught up, more cycles write nothing.
        let before = sim.writes();
        let mut sim = sim;
        for _ in 0..3 {
            sim.world.advance(1_000_000);
            let now = sim.world.tick();
            sim.runner.cycle(&sim.state, now).await.expect("cycle");
        }
        assert_eq!(
            sim.writes(),
            before,
            "seed {seed}: writes after convergence (an echo bounced)"
        );
    }
    println!(
        "checked {schedules} schedules ({policy:?}, {crashed} crashes injected, {mid} edits made \
         while a cycle ran, {decided} last-writer-wins decisions, {judged} outcomes judged, \
         {unread} sides left unread after a wait)"
    );
    assert!(unread > 0, "no cycle left a side unread after a wait");
}

#[tokio::test]
async fn random_edits_converge_with_prefer_left() {
    check_schedules(Policy::Prefer(Side::LEFT), false, 300).await;
}

#[tokio::test]
async fn random_edits_converge_with_last_writer_wins() {
    check_schedules(Policy::LastWriterWins, false, 1_500).await;
}

#[tokio::test]
async fn random_edits_converge_or_wait_on_a_person_with_manual() {
    check_schedules(Policy::Manual, false, 300).await;
}

#[tokio::test]
async fn crashes_between_any_two_steps_keep_every_invariant() {
    check_schedules(Policy::LastWriterWins, true, 1_500).await;
}

#[tokio::test]
async fn the_same_inputs_give_the_same_outcome() {
    for seed in [3, 17, 42] {
        let a = run(seed, Policy::LastWriterWins, 80, true).await;
        let b = run(seed, Policy::LastWriterWins, 80, true).await;
        assert_eq!(a.fingerprint(), b.fingerprint(), "seed {seed}");
        assert_eq!(a.writes(), b.writes(), "seed {seed}");
    }
    println!("checked 3 schedules twice each");
}

#[test]
fn value_maps_cover_every_status() {
    let s = spec(Policy::Manual);
    let f = s.field("status").unwrap();
    let map: BTreeMap<String, String> = f
        .values
        .iter()
        .map(|row| (row[0].display(), row[1].display()))
        .collect();
    assert_eq!(map.len(), STATUSES.len());
}

/// Replays one schedule and prints everything: `SIM_SEED=14 cargo test --test convergence replay -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn replay() {
    let seed: u64 = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let policy = match std::env::var("SIM_POLICY").as_deref() {
        Ok("manual") => Policy::Manual,
        Ok("lww") => Policy::LastWriterWins,
        _ => Policy::Prefer(Side::LEFT),
    };
    let crashes = std::env::var("SIM_CRASH").is_ok();
    let sim = run(seed, policy.clone(), 60, crashes).await;
    println!("entities: {:#?}", sim.entities);
    println!("left: {:#?}", sim.left.0.borrow().records);
    println!("right: {:#?}", sim.right.0.borrow().records);
    for l in sim.state.all_links("people").unwrap() {
        println!("link {l:?}");
    }
    println!("conflicts: {:#?}", sim.state.conflicts(true).unwrap());
    println!("rejected: {:#?}", sim.state.rejected("people").unwrap());
    sim.check(&policy, seed);
    if policy == Policy::LastWriterWins {
        sim.check_last_writer(seed);
    }
}

/// A last-writer-wins runner between `left` and `right`, reading `batch` changes a call.
fn lww_runner(left: &Shared, right: &Shared, batch: u32) -> SyncRunner<Shared> {
    SyncRunner::new(
        spec(Policy::LastWriterWins),
        left.clone(),
        right.clone(),
        batch,
        Rules::new(),
    )
}

/// `n` people made on `side`: `p{i}@example.com`, named `P{i}`.
fn create_people(side: &Shared, n: usize) {
    for i in 0..n {
        side.0.borrow_mut().user_create(&[
            ("email", Value::Text(format!("p{i}@example.com"))),
            ("name", Value::Text(format!("P{i}"))),
        ]);
    }
}

/// Runs cycles of `runner` until two in a row find nothing to do.
async fn run_until_idle(runner: &mut SyncRunner<Shared>, state: &State, now: &mut i64) {
    let mut idle = 0;
    while idle < 2 {
        *now += 1_000_000;
        let report = runner.cycle(state, *now).await.expect("cycle");
        idle = if report.idle() { idle + 1 } else { 0 };
    }
}

/// A cycle with a full batch to work through (a first load, a backlog) waits for one of the
/// process's turns before it plans and writes; a cycle with a change or two takes none, so a
/// realtime sync is never queued behind the loading ones. A cycle given up while it waits has
/// written nothing and moved no cursor: the next one reads the same changes again.
#[tokio::test]
async fn only_a_cycle_with_a_full_batch_waits_for_a_turn() {
    let (left, right) = (Shared::new(""), Shared::new("r"));
    let turns = Turns::new(1);
    let mut runner = lww_runner(&left, &right, 5).taking_turns(turns.clone());
    let state = State::in_memory().unwrap();
    let now = 1_000_000;
    let held = turns.take().await;
    let waits = std::time::Duration::from_millis(300);

    create_people(&left, 2);
    let report = tokio::time::timeout(waits, runner.cycle(&state, now))
        .await
        .expect("a cycle of two changes waited for a turn")
        .expect("cycle");
    assert_eq!(report.read, [2, 0]);
    assert_eq!(right.0.borrow().records.len(), 2);

    for i in 10..22 {
        left.0.borrow_mut().user_create(&[
            ("email", Value::Text(format!("p{i}@example.com"))),
            ("name", Value::Text(format!("P{i}"))),
        ]);
    }
    let cut = tokio::time::timeout(waits, runner.cycle(&state, now + 1_000_000)).await;
    assert!(cut.is_err(), "a full batch went on without a turn");
    assert_eq!(right.0.borrow().records.len(), 2, "written without a turn");

    drop(held);
    let report = runner.cycle(&state, now + 2_000_000).await.expect("cycle");
    assert_eq!(report.read[0], 5, "the full batch, read again");
    assert!(report.more);
    assert_eq!(right.0.borrow().records.len(), 7);
}

/// A sync working through a backlog reads its next batch within a turn, not beside the
/// turns: 49 loads each reading their next batch from SQLite at once kept a realtime sync's
/// reads waiting for a core. A cycle after a full batch does not call its systems until it has
/// a turn; once a batch is not full, the sync is back to reading first.
#[tokio::test]
async fn a_cycle_after_a_full_batch_reads_within_a_turn() {
    let (left, right) = (Shared::new(""), Shared::new("r"));
    let turns = Turns::new(1);
    let mut runner = lww_runner(&left, &right, 5).taking_turns(turns.clone());
    let state = State::in_memory().unwrap();
    let now = 1_000_000;
    let waits = std::time::Duration::from_millis(300);

    create_people(&left, 7);
    let report = runner.cycle(&state, now).await.expect("cycle");
    assert_eq!(report.read[0], 5);
    assert!(report.more);

    // The next cycle waits for the turn before reading: a read now would fail at once.
    let held = turns.take().await;
    left.0.borrow_mut().fail_in = Some(0);
    let cut = tokio::time::timeout(waits, runner.cycle(&state, now + 1_000_000)).await;
    assert!(
        cut.is_err(),
        "the backlog's next batch was read without a turn"
    );
    assert_eq!(left.0.borrow().fail_in, Some(0), "the left side was called");
    left.0.borrow_mut().fail_in = None;
    drop(held);

    let report = runner.cycle(&state, now + 2_000_000).await.expect("cycle");
    assert_eq!(report.read[0], 2, "the rest of the backlog");
    assert_eq!(right.0.borrow().records.len(), 7);

    // The backlog worked through, a cycle of one change reads first and takes no turn.
    let held = turns.take().await;
    left.0.borrow_mut().user_create(&[
        ("email", Value::Text("late@example.com".into())),
        ("name", Value::Text("Late".into())),
    ]);
    let report = tokio::time::timeout(waits, runner.cycle(&state, now + 3_000_000))
        .await
        .expect("a cycle of one change waited for a turn")
        .expect("cycle");
    assert_eq!(report.read[0], 1);
    drop(held);
}

/// Syncs starting together read their first batches a few at a time (the turns' starts), and a
/// first cycle that goes on to wait for a turn gives its start back: nine loads waiting for
/// their turns, more than one turn's starts, do not keep a small sync's first cycle waiting.
#[tokio::test]
async fn first_cycles_waiting_for_a_turn_give_their_start_back() {
    let turns = Turns::new(1);
    let held = turns.take().await;
    let now = 1_000_000;
    let mut loads = Vec::new();
    for _ in 0..9 {
        let (left, right) = (Shared::new(""), Shared::new("r"));
        create_people(&left, 6);
        let runner = lww_runner(&left, &right, 5).taking_turns(turns.clone());
        loads.push((runner, State::in_memory().unwrap()));
    }
    let (left, right) = (Shared::new(""), Shared::new("r"));
    create_people(&left, 1);
    let mut small = lww_runner(&left, &right, 5).taking_turns(turns.clone());
    let state = State::in_memory().unwrap();

    let loading = futures_util::future::join_all(
        loads
            .iter_mut()
            .map(|(runner, state)| runner.cycle(state, now)),
    );
    tokio::select! {
        biased;
        _ = loading => panic!("a load went on without a turn"),
        report = small.cycle(&state, now) => assert_eq!(report.expect("cycle").read, [1, 0]),
        () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {
            panic!("the small sync's first cycle waited behind the loads")
        }
    }
    assert_eq!(right.0.borrow().records.len(), 1);
    drop(held);
}

/// A side read ahead while the other side is written must be read again if the cycle ends up
/// writing to it after all: a write refused on a stale version is merged again on fresh data,
/// and that merge can flow back. A batch read before Duplex's write holds the record as it was,
/// and would pass for a person undoing what the other side's person did.
#[tokio::test]
async fn a_batch_read_ahead_is_read_again_when_the_cycle_writes_its_side_after_all() {
    let (left, right) = (Shared::new(""), Shared::new("r"));
    let mut runner = lww_runner(&left, &right, 2);
    let state = State::in_memory().unwrap();
    let mut now = 1_000_000;
    let text = |s: &str| Value::Text(s.into());
    let y = left.0.borrow_mut().user_create(&[
        ("email", text("y@example.com")),
        ("name", text("Y")),
        ("status", text("active")),
        ("note", text("n0")),
    ]);
    run_until_idle(&mut runner, &state, &mut now).await;
    let ry = right.0.borrow().records.keys().next().cloned().unwrap();
    let z = right
        .0
        .borrow_mut()
        .user_create(&[("mail", text("z@example.com")), ("full_name", text("Z"))]);
    run_until_idle(&mut runner, &state, &mut now).await;

    // Left, two changes per batch: [Y renamed, f1 created] then [Y renamed again, f2 created].
    // The first cycle writes only to the right, so the second window is read ahead meanwhile.
    {
        let mut l = left.0.borrow_mut();
        l.user_update(&y, "name", text("Y1"));
        l.user_create(&[("email", text("f1@example.com")), ("name", text("F1"))]);
        l.user_update(&y, "name", text("Y2"));
        l.user_create(&[("email", text("f2@example.com")), ("name", text("F2"))]);
    }
    // Right: two edits of a field the sync does not map, on another record, fill its first
    // window, so the cycle has nothing to write to the left and has not seen Y's note change on
    // the right; the update of Y there is refused on its stale version, merged again, and Y's
    // new note flows to the left within the same cycle.
    {
        let mut r = right.0.borrow_mut();
        r.user_update(&z, "unmapped", text("a"));
        r.user_update(&z, "unmapped", text("b"));
        r.user_update(&ry, "memo", text("n1"));
    }
    run_until_idle(&mut runner, &state, &mut now).await;

    let l = left.0.borrow();
    let r = right.0.borrow();
    assert_eq!(
        l.records[&y]["note"],
        text("n1"),
        "the right's edit reached the left"
    );
    assert_eq!(
        r.records[&ry]["memo"],
        text("n1"),
        "the right's edit was undone by a batch read before Duplex wrote the left"
    );
    assert_eq!(r.records[&ry]["full_name"], text("Y2"));
}

/// A write too big for the side's plugin does not fail the same way for ever: the side is
/// written in halves from then on, and the ops of the failed call are checked and retried,
/// within the run: they are due again at once (after the next cycle's recovery has checked
/// them), not after the backoff of a failed record. Before, each halving waited 1 s, then 2 s,
/// and `run --once` stopped with the records not written.
#[tokio::test]
async fn a_write_too_big_for_the_plugin_goes_on_in_halves_without_waiting() {
    let (left, right) = (Shared::new(""), Shared::new("r"));
    right.0.borrow_mut().write_limit = Some(3);
    let mut runner = lww_runner(&left, &right, 20);
    let state = State::in_memory().unwrap();
    create_people(&left, 10);
    let mut now = 1_000_000;
    let mut cycles = 0;
    loop {
        // A millisecond a cycle: far below the first backoff (1 s).
        now += 1_000;
        cycles += 1;
        let report = runner.cycle(&state, now).await.expect("cycle");
        if report.idle() || cycles == 10 {
            break;
        }
    }
    {
        let r = right.0.borrow();
        let mut mails: Vec<&Value> = r.records.values().map(|f| &f["mail"]).collect();
        mails.sort_by_key(|v| format!("{v:?}"));
        mails.dedup();
        assert_eq!(r.records.len(), 10, "every record once, in {cycles} cycles");
        assert_eq!(mails.len(), 10);
    }
    assert_eq!(
        state.all_links("people").unwrap().len(),
        10,
        "one link each"
    );
    assert!(
        state.dirty("people").unwrap().is_empty(),
        "nothing left waiting for a retry"
    );
    // Each call too big halves the size (10, then 5, then 2) and leaves its records due
    // again at once.
    assert!(cycles <= 4, "{cycles} cycles");
    // A record that fails alone is not due at once: one op cannot be halved, and a record that
    // keeps failing must not hammer the system.
    right.0.borrow_mut().write_limit = Some(0);
    left.0.borrow_mut().user_create(&[
        ("email", Value::Text("solo@example.com".into())),
        ("name", Value::Text("Solo".into())),
    ]);
    for _ in 0..3 {
        now += 1_000;
        runner.cycle(&state, now).await.expect("cycle");
    }
    let waiting = state.dirty("people").unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert!(waiting[0].1.due_at >= now, "backed off: {waiting:?}");
}

/// A crash after a cycle of many creates leaves many intents to check. Against a side whose
/// lookups fail now and then (an API answering 429 or 503 every so often), a recovery that
/// starts over at each failure never gets through; one that keeps what it checked does, and
/// makes no record twice.
#[tokio::test]
async fn a_recovery_against_a_side_that_fails_now_and_then_gets_through() {
    let (left, right) = (Shared::new(""), Shared::new("r"));
    let mut runner = lww_runner(&left, &right, 1_000);
    let state = State::in_memory().unwrap();
    create_people(&left, 250);
    let mut now = 1_000_000;
    // The intents are recorded, the creates made, and the cycle's commit is lost.
    state.crash_after_writes(1);
    runner.cycle(&state, now).await.expect_err("crashed");
    assert_eq!(right.0.borrow().records.len(), 250);
    assert_eq!(state.intents("people").unwrap().len(), 250);

    // Every second lookup fails from now on.
    right.0.borrow_mut().finds_fail_every = Some(2);
    let mut failed = 0;
    for _ in 0..10 {
        now += 700_000_000;
        if runner.cycle(&state, now).await.is_err() {
            failed += 1;
        }
    }
    assert!(failed > 0, "the lookups failed some cycles");
    assert!(
        state.intents("people").unwrap().is_empty(),
        "every intent checked"
    );
    let r = right.0.borrow();
    assert_eq!(r.records.len(), 250, "no record made twice");
    let people = |records: &BTreeMap<String, BTreeMap<String, Value>>, mail: &str, name: &str| {
        records
            .values()
            .map(|f| format!("{:?} {:?}", f[mail], f[name]))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        people(&r.records, "mail", "full_name"),
        people(&left.0.borrow().records, "email", "name"),
        "the right holds every person of the left, as the left has them"
    );
    let links = state.all_links("people").unwrap();
    assert_eq!(links.len(), 250, "one link each");
    assert!(links
        .iter()
        .all(|l| l.left.id.is_some() && l.right.id.is_some()));
}

/// Issue 13: a field each side rewrites whenever it is written (here one lowercases names, the
/// other uppercases them, as triggers or collations would) would go back and forth for ever. It
/// is held after one round trip, with a reason that names both sides and the fix, and the rest of
/// the record keeps flowing; once caught up, nothing more is written.
#[tokio::test]
async fn a_field_both_sides_rewrite_is_held_not_looped() {
    let (left, right) = (Shared::new(""), Shared::new("r"));
    left.0.borrow_mut().rewrites = vec![("name".into(), Case::Lower)];
    right.0.borrow_mut().rewrites = vec![("full_name".into(), Case::Upper)];
    let mut runner = lww_runner(&left, &right, 10);
    let state = State::in_memory().unwrap();
    let mut now = 1_000_000;
    let text = |s: &str| Value::Text(s.into());
    let y = left.0.borrow_mut().user_create(&[
        ("email", text("y@example.com")),
        ("name", text("Mixed Case")),
        ("note", text("n0")),
    ]);
    run_until_idle(&mut runner, &state, &mut now).await;

    let conflicts = state.conflicts(false).unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:#?}");
    assert_eq!(conflicts[0].field, "name");
    assert!(
        conflicts[0]
            .reason
            .contains("crm and erp both change name whenever Duplex writes it")
            && conflicts[0].reason.contains("give the field a direction"),
        "{}",
        conflicts[0].reason
    );
    let ry = right.0.borrow().records.keys().next().cloned().unwrap();
    assert_eq!(right.0.borrow().records[&ry]["memo"], text("n0"));

    // Held, not looped: more cycles write nothing, and the rest of the record still flows.
    let writes = |s: &Shared| s.0.borrow().writes;
    let before = writes(&left) + writes(&right);
    run_until_idle(&mut runner, &state, &mut now).await;
    assert_eq!(writes(&left) + writes(&right), before);
    left.0.borrow_mut().user_update(&y, "note", text("n1"));
    run_until_idle(&mut runner, &state, &mut now).await;
    assert_eq!(right.0.borrow().records[&ry]["memo"], text("n1"));
    assert_eq!(writes(&left) + writes(&right), before + 1);
}

/// Issue 13: a side that stores something else than it was given (a trigger, rounding, a
/// default) has changed the record; its value flows back within the same cycle, so both sides
/// end equal, and it is not written again.
#[tokio::test]
async fn what_a_side_stores_otherwise_flows_back_in_the_same_cycle() {
    let (left, right) = (Shared::new(""), Shared::new("r"));
    right.0.borrow_mut().rewrites = vec![("full_name".into(), Case::Upper)];
    let mut runner = lww_runner(&left, &right, 10);
    let state = State::in_memory().unwrap();
    let text = |s: &str| Value::Text(s.into());
    let y = left
        .0
        .borrow_mut()
        .user_create(&[("email", text("y@example.com")), ("name", text("Ada"))]);
    let report = runner.cycle(&state, 1_000_000).await.unwrap();
    assert_eq!(
        report.writes, 2,
        "the create, and the stored name back: {report:?}"
    );
    assert_eq!(left.0.borrow().records[&y]["name"], text("ADA"));
    let ry = right.0.borrow().records.keys().next().cloned().unwrap();
    assert_eq!(right.0.borrow().records[&ry]["full_name"], text("ADA"));
    let mut now = 2_000_000;
    let before = left.0.borrow().writes + right.0.borrow().writes;
    run_until_idle(&mut runner, &state, &mut now).await;
    assert_eq!(left.0.borrow().writes + right.0.borrow().writes, before);
    assert!(state.conflicts(false).unwrap().is_empty());
}

/// A failed write was listed as rejected until a later write of its link went through; when
/// the sides came together otherwise (a person made the same edit), it stayed listed for ever,
/// and `status` showed a rejected record that was in step.
#[tokio::test]
async fn a_rejected_write_is_cleared_once_its_link_is_in_step() {
    let (left, right) = (Shared::new(""), Shared::new("r"));
    let mut runner = lww_runner(&left, &right, 10);
    let state = State::in_memory().unwrap();
    let mut now = 1_000_000;
    let text = |s: &str| Value::Text(s.into());
    let y = left
        .0
        .borrow_mut()
        .user_create(&[("email", text("y@example.com")), ("name", text("A"))]);
    run_until_idle(&mut runner, &state, &mut now).await;
    let ry = right.0.borrow().records.keys().next().cloned().unwrap();

    left.0.borrow_mut().user_update(&y, "name", text("A2"));
    // The right's read goes through, its write fails.
    right.0.borrow_mut().fail_in = Some(1);
    now += 1_000_000;
    runner.cycle(&state, now).await.unwrap();
    assert_eq!(state.rejected("people").unwrap().len(), 1);

    right
        .0
        .borrow_mut()
        .user_update(&ry, "full_name", text("A2"));
    now += 700_000_000;
    run_until_idle(&mut runner, &state, &mut now).await;
    assert_eq!(right.0.borrow().records[&ry]["full_name"], text("A2"));
    assert_eq!(left.0.borrow().records[&y]["name"], text("A2"));
    assert!(
        state.rejected("people").unwrap().is_empty(),
        "{:?}",
        state.rejected("people").unwrap()
    );
}

/// Renames everyone on the left in one transaction, then runs `runner` until idle, and returns
/// how many of the driver's calls found the right with some but not all of the new names.
async fn rename_all_in_one_transaction(
    world: &Rc<World>,
    left: &Shared,
    right: &Shared,
    runner: &mut SyncRunner<Shared>,
    state: &State,
    now: &mut i64,
) -> usize {
    let renamed = |r: &Shared| {
        (r.0.borrow().records.values())
            .filter(|f| matches!(&f["full_name"], Value::Text(t) if t.starts_with('Q')))
            .count()
    };
    let everyone = left.0.borrow().records.len();
    {
        let mut l = left.0.borrow_mut();
        let ids: Vec<String> = l.records.keys().cloned().collect();
        l.begin();
        for (i, id) in ids.iter().enumerate() {
            l.user_update(id, "name", Value::Text(format!("Q{i}")));
        }
        l.commit();
    }
    let partly = Rc::new(RefCell::new(0));
    let (seen, watched) = (partly.clone(), right.clone());
    world.set_before_call(move |_| {
        let n = renamed(&watched);
        if n > 0 && n < everyone {
            *seen.borrow_mut() += 1;
        }
    });
    run_until_idle(runner, state, now).await;
    assert_eq!(renamed(right), everyone, "every rename arrived");
    let partly = *partly.borrow();
    partly
}

/// A person's transaction that changes more records than a batch holds reaches the other side
/// in one write (one transaction there): no call the driver makes, to either side, finds part
/// of it applied. The source's reads say where its transactions end (`mid_transaction`), and
/// the cycle reads on to the end before it writes.
#[tokio::test]
async fn a_source_transaction_bigger_than_a_batch_is_applied_whole() {
    let world = World::new(0);
    let (left, right) = (
        Shared::in_world("", world.clone()),
        Shared::in_world("r", world.clone()),
    );
    let mut runner = lww_runner(&left, &right, 4);
    let state = State::in_memory().unwrap();
    create_people(&left, 25);
    let mut now = 1_000_000;
    run_until_idle(&mut runner, &state, &mut now).await;
    let writes = right.0.borrow().writes;
    let partly =
        rename_all_in_one_transaction(&world, &left, &right, &mut runner, &state, &mut now).await;
    assert_eq!(partly, 0, "calls that saw the transaction partly applied");
    assert_eq!(
        right.0.borrow().writes - writes,
        25,
        "one update per record"
    );
}

/// A cycle that leaves changes waiting reports about how many, from what the connectors said
/// (contract 0.6.0's `remaining`), summed over the sides still reading; a cycle that read to
/// the end reports none. The progress line's time left is made of it.
#[tokio::test]
async fn a_cycle_with_more_to_read_reports_what_remains() {
    let (left, right) = (Shared::new(""), Shared::new("r"));
    create_people(&left, 10);
    create_people(&right, 7);
    let mut runner = lww_runner(&left, &right, 4);
    let state = State::in_memory().unwrap();
    let mut remaining = Vec::new();
    let mut now = 1_000_000;
    loop {
        now += 1_000_000;
        let report = runner.cycle(&state, now).await.expect("cycle");
        remaining.push(report.remaining);
        if !report.more {
            break;
        }
    }
    // 10 and 7 made, 4 a batch: 6 and 3 left after the first cycle. Later counts include
    // the sync's own writes, which wait in each side's log too (left out when read).
    assert_eq!(remaining.first(), Some(&Some(6 + 3)), "{remaining:?}");
    assert!(remaining.len() > 2, "{remaining:?}");
    assert!(
        remaining[..remaining.len() - 1].iter().all(Option::is_some),
        "{remaining:?}"
    );
    assert_eq!(remaining.last(), Some(&None), "{remaining:?}");
}

/// A transaction bigger than the sync's `max_transaction` is applied in parts (and logged), and
/// still arrives whole in the end: the bound holds, and the test above can tell a split.
#[tokio::test]
async fn a_source_transaction_bigger_than_max_transaction_is_applied_in_parts() {
    let world = World::new(0);
    let (left, right) = (
        Shared::in_world("", world.clone()),
        Shared::in_world("r", world.clone()),
    );
    let mut runner = lww_runner(&left, &right, 4).whole_transactions_up_to(10);
    let state = State::in_memory().unwrap();
    create_people(&left, 25);
    let mut now = 1_000_000;
    run_until_idle(&mut runner, &state, &mut now).await;
    let partly =
        rename_all_in_one_transaction(&world, &left, &right, &mut runner, &state, &mut now).await;
    assert!(
        partly > 0,
        "a transaction of 25 with at most 10 at once was split"
    );
}

/// A write refused on a stale version is merged again with the record read anew and written
/// once more (step 7 of a cycle): the link is written twice in the cycle, with an intent each.
/// When the cycle's commit is lost, recovery settles the confirmed writes onto the copy of the
/// link the last intent carries, which knows the record read anew. Settled onto the first, the
/// right's edit the merge had written to the left came back as the left's own edit, and won
/// over the right's next edit of the field, as the left's record had changed later. The write
/// recovery finds made is listed in the activity, as the lost commit would have listed it.
#[tokio::test]
async fn an_edit_merged_after_a_refused_write_is_kept_when_the_commit_is_lost() {
    let world = World::new(0);
    let (left, right) = (
        Shared::in_world("", world.clone()),
        Shared::in_world("r", world.clone()),
    );
    let mut runner = lww_runner(&left, &right, 10);
    let state = State::in_memory().unwrap();
    let id = left.0.borrow_mut().user_create(&[
        ("email", Value::Text("p@example.com".into())),
        ("name", Value::Text("P".into())),
        ("note", Value::Text("a".into())),
    ]);
    let mut now = 1_000_000;
    run_until_idle(&mut runner, &state, &mut now).await;
    let rid = right.0.borrow().records.keys().next().unwrap().clone();

    // The left renames; the right's note is edited after the cycle read it and before it
    // writes the name there (its third call), so that write is refused and merged again.
    left.0
        .borrow_mut()
        .user_update(&id, "name", Value::Text("Q".into()));
    let (edited, counted, record) = (right.clone(), Rc::new(RefCell::new(0)), rid.clone());
    world.set_before_call(move |_| {
        *counted.borrow_mut() += 1;
        if *counted.borrow() == 3 {
            let mut r = edited.0.borrow_mut();
            r.user_update(&record, "memo", Value::Text("b".into()));
        }
    });
    // Intents, intents again for the merge, then the commit: lost.
    state.crash_after_writes(2);
    now += 1_000_000;
    let cut = runner.cycle(&state, now).await;
    world.set_before_call(|_| {});
    assert!(cut.is_err(), "the commit was lost: {cut:?}");
    assert_eq!(
        left.0.borrow().records[&id]["note"],
        Value::Text("b".into()),
        "the merge wrote the right's note to the left before the commit was lost"
    );

    // The right edits the note again, then the left edits another field of the record.
    right
        .0
        .borrow_mut()
        .user_update(&rid, "memo", Value::Text("c".into()));
    left.0
        .borrow_mut()
        .user_update(&id, "tag", Value::Text("t".into()));
    run_until_idle(&mut runner, &state, &mut now).await;
    assert_eq!(
        left.0.borrow().records[&id]["note"],
        Value::Text("c".into()),
        "the right's last edit reached the left"
    );
    assert_eq!(
        right.0.borrow().records[&rid]["memo"],
        Value::Text("c".into())
    );
    assert!(
        state.conflicts(false).unwrap().is_empty(),
        "no conflict: one side edited the note"
    );
    // The write of the note recovery found made is in the activity, as the lost commit would
    // have listed it, before the one that brought the right's last edit.
    let notes_written = state
        .activity(Some("people"))
        .unwrap()
        .into_iter()
        .filter(|a| a.side == Side::LEFT && a.record == id && a.op == "update")
        .filter(|a| a.fields.iter().any(|f| f == "note"))
        .count();
    assert_eq!(notes_written, 2, "the recovered write and the last");
}
