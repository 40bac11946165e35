//! Pairwise syncs through a shared side: three systems A, B and C, and two syncs, `ab` and
//! `bc`, in one Duplex (one state). A change made in A reaches C through B: `bc` reads it as
//! `ab`'s write to B. It must take that write for what it is, a relay of a change made in A
//! and as old as it (see `driver::Relay`): taken as made when it was written, it would look
//! newer than an edit made in C meanwhile, and win over it.
//!
//! Seeded schedules of people creating, editing and deleting records on all three systems,
//! with the syncs' cycles in random order and crashes injected, then checked: every record is
//! on every system once (no duplicate, none lost), all three hold the same values, the value
//! is one a person typed, and once caught up more cycles write nothing (no echo).
//!
//! A cycle of syncs (`ab`, `bc` and `ca`) is refused by the config (see `config`): a change
//! would reach a system by two ways and could go round for ever.
//!
//! The same schedules run against one sync naming all three systems (`abc`, one link per
//! record over three sides, see `engine::many`) check it the same way.

#![allow(clippy::unwrap_used)]

mod memory;
mod sim;

use std::collections::BTreeMap;

use duplex::driver::{Joins, Relay, Rules, SyncRunner};
use duplex::engine::{DeletePolicy, FieldSpec, FieldType, MatchKey, Policy, Side, SyncSpec};
use duplex::plugin::Value;
use duplex::state::State;
use memory::{Shared, World};
use sim::Rng;

/// The chain: two syncs, each over two of the systems.
const CHAIN: [(&str, &[usize]); 2] = [("ab", &[0, 1]), ("bc", &[1, 2])];
/// One sync over all three.
const STAR: [(&str, &[usize]); 1] = [("abc", &[0, 1, 2])];
const SYSTEMS: [&str; 3] = ["a", "b", "c"];

fn spec(name: &str, sides: &[usize], policy: Policy) -> SyncSpec {
    let field = |n: &str| FieldSpec {
        more: sides[2..]
            .iter()
            .map(|_| (n.to_owned(), FieldType::Text))
            .collect(),
        ..sim::text_field(n, n)
    };
    SyncSpec {
        more_names: sides[2..].iter().map(|s| SYSTEMS[*s].to_owned()).collect(),
        name: name.into(),
        origin: format!("duplex:{name}"),
        left_name: SYSTEMS[sides[0]].into(),
        right_name: SYSTEMS[sides[1]].into(),
        fields: vec![field("email"), field("name"), field("note")],
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

/// A record as one system holds it: its id, name and note.
type Copy = (String, Option<Value>, Option<Value>);

struct Chain {
    /// Each sync's name and the systems it joins, in its order of sides.
    syncs: &'static [(&'static str, &'static [usize])],
    world: std::rc::Rc<World>,
    systems: [Shared; 3],
    runners: Vec<SyncRunner<Shared>>,
    state: State,
    /// Every value a person typed, by email: what a converged record may hold.
    typed: BTreeMap<String, Vec<String>>,
    rng: Rng,
    crashes: u32,
    /// People delete records too.
    deletes: bool,
}

impl Chain {
    fn new(seed: u64, relays: bool) -> Chain {
        Chain::with_policy(seed, relays, Policy::LastWriterWins)
    }

    fn with_policy(seed: u64, relays: bool, policy: Policy) -> Chain {
        Chain::of(&CHAIN, seed, relays, policy)
    }

    /// One sync over the three systems.
    fn star(seed: u64, policy: Policy) -> Chain {
        Chain::of(&STAR, seed, true, policy)
    }

    fn of(
        syncs: &'static [(&'static str, &'static [usize])],
        seed: u64,
        relays: bool,
        policy: Policy,
    ) -> Chain {
        let world = World::new(1_000_000);
        let systems = SYSTEMS.map(|p| Shared::in_world(p, world.clone()));
        let origins: Vec<String> = syncs.iter().map(|(n, _)| format!("duplex:{n}")).collect();
        let joins: Vec<Joins<'_>> = syncs
            .iter()
            .zip(&origins)
            .map(|((name, sides), origin)| Joins {
                sync: name,
                origin,
                sides: sides.iter().map(|s| SYSTEMS[*s]).collect(),
            })
            .collect();
        let runners = syncs
            .iter()
            .map(|(name, sides)| {
                let runner = SyncRunner::of(
                    spec(name, sides, policy.clone()),
                    sides.iter().map(|s| systems[*s].clone()).collect(),
                    5,
                    Rules::new(),
                )
                .with_clock(world.driver_clock());
                if relays {
                    runner.relaying(Relay::among(name, &joins))
                } else {
                    runner
                }
            })
            .collect();
        Chain {
            syncs,
            world,
            systems,
            runners,
            state: State::in_memory().unwrap(),
            typed: BTreeMap::new(),
            rng: Rng::new(seed),
            crashes: 0,
            deletes: false,
        }
    }

    /// With `SIM_TRACE` set, what a cycle did and what the systems hold after it.
    fn trace(&self, sync: &str, report: &impl std::fmt::Debug) {
        if std::env::var("SIM_TRACE").is_err() {
            return;
        }
        println!("cycle of {sync}: {report:?}");
        for (name, system) in SYSTEMS.iter().zip(&self.systems) {
            println!("  {name} {:?}", system.0.borrow().records);
        }
    }

    fn writes(&self) -> usize {
        self.systems.iter().map(|s| s.0.borrow().writes).sum()
    }

    /// The records of system `s` by email: (id, name, note).
    fn by_email(&self, s: usize) -> BTreeMap<String, Vec<Copy>> {
        let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for (id, r) in &self.systems[s].0.borrow().records {
            let Some(Value::Text(email)) = r.get("email") else {
                continue;
            };
            out.entry(email.clone()).or_default().push((
                id.clone(),
                r.get("name").cloned(),
                r.get("note").cloned(),
            ));
        }
        out
    }

    /// A person acts on one system.
    fn edit(&mut self, step: usize) {
        let s = self.rng.below(3) as usize;
        let ids: Vec<String> = self.systems[s].0.borrow().records.keys().cloned().collect();
        let text = |v: String| Value::Text(v);
        if ids.is_empty() || self.rng.chance(20) {
            // Each email is typed once, on one system: the others get it from Duplex.
            let email = format!("p{step}@example.com");
            let name = format!("{}-name-{step}", SYSTEMS[s]);
            self.typed
                .entry(email.clone())
                .or_default()
                .push(name.clone());
            self.systems[s]
                .0
                .borrow_mut()
                .user_create(&[("email", text(email)), ("name", text(name))]);
            return;
        }
        let id = ids[self.rng.below(ids.len() as u64) as usize].clone();
        if self.deletes && self.rng.chance(5) {
            self.systems[s].0.borrow_mut().user_delete(&id);
            return;
        }
        let email = match self.systems[s].0.borrow().records[&id].get("email") {
            Some(Value::Text(e)) => e.clone(),
            _ => return,
        };
        let field = if self.rng.chance(60) { "name" } else { "note" };
        let value = format!("{}-{field}-{step}", SYSTEMS[s]);
        self.typed.entry(email).or_default().push(value.clone());
        self.systems[s]
            .0
            .borrow_mut()
            .user_update(&id, field, text(value));
    }

    /// One sync's cycle, sometimes cut short by a crash: the state's commit fails, or one of
    /// its sides fails a call (a write having applied some of its ops first).
    async fn cycle(&mut self, crashes: bool) {
        let n = self.rng.below(self.syncs.len() as u64) as usize;
        let (name, sides) = self.syncs[n];
        if crashes && self.rng.chance(25) {
            self.crashes += 1;
            match self.rng.below(1 + sides.len() as u64) as usize {
                0 => self.state.crash_after_writes(self.rng.below(3) as i64),
                k => {
                    let mut s = self.systems[sides[k - 1]].0.borrow_mut();
                    s.fail_in = Some(self.rng.below(4) as u32);
                    s.apply_before_failing = self.rng.below(4) as usize;
                }
            }
        }
        self.world.advance(1_000);
        let r = self.runners[n].cycle(&self.state, self.world.tick()).await;
        self.trace(name, &r);
        self.state.crash_after_writes(-1);
        for s in &self.systems {
            s.0.borrow_mut().fail_in = None;
        }
    }

    /// Runs the three syncs in turn until a whole round finds nothing to do, twice. Returns
    /// whether they did within `rounds`.
    async fn settle(&mut self, rounds: usize) -> bool {
        let mut idle = 0;
        for _ in 0..rounds {
            let mut quiet = true;
            for runner in &mut self.runners {
                // Time jumps past every retry backoff.
                self.world.advance(700_000_000);
                let report = runner
                    .cycle(&self.state, self.world.tick())
                    .await
                    .expect("cycle without faults");
                quiet &= report.idle() && report.retried == 0;
                if std::env::var("SIM_TRACE").is_ok() {
                    println!("cycle of {} (settling): {report:?}", runner.spec.name);
                }
            }
            idle = if quiet { idle + 1 } else { 0 };
            if idle == 2 {
                return true;
            }
        }
        false
    }

    /// No duplicate, none lost, the same values everywhere, each one a person typed.
    fn check(&self, seed: u64) {
        if std::env::var("SIM_TRACE").is_ok() {
            println!("conflicts: {:#?}", self.state.conflicts(false).unwrap());
        }
        let systems: Vec<_> = (0..3).map(|s| self.by_email(s)).collect();
        for (s, records) in systems.iter().enumerate() {
            for (email, copies) in records {
                assert_eq!(
                    copies.len(),
                    1,
                    "seed {seed}: {email} is on system {} {} times: {copies:?}",
                    SYSTEMS[s],
                    copies.len()
                );
            }
        }
        // A delete that raced an edit waits for a person (invariant 1): its record stays where
        // it was edited, and is not compared.
        let mut held = std::collections::BTreeSet::new();
        for c in self.state.conflicts(false).unwrap() {
            let (_, sides) = self.syncs.iter().find(|(n, _)| *n == c.sync).unwrap();
            for (i, system) in sides.iter().enumerate() {
                held.extend(c.record(Side::nth(i)).map(|id| (*system, id.to_owned())));
            }
        }
        let mut emails: std::collections::BTreeSet<&String> = std::collections::BTreeSet::new();
        for records in &systems {
            emails.extend(records.keys());
        }
        for email in emails {
            let copies: Vec<Option<&Copy>> = (0..3)
                .map(|s| systems[s].get(email).map(|c| &c[0]))
                .collect();
            let waiting = copies
                .iter()
                .enumerate()
                .any(|(s, c)| c.is_some_and(|(id, ..)| held.contains(&(s, id.clone()))));
            if waiting {
                continue;
            }
            assert!(
                copies.iter().all(Option::is_some) || copies.iter().all(Option::is_none),
                "seed {seed}: {email} is on some systems only: {copies:?}"
            );
            let Some((_, name, note)) = copies[0] else {
                continue;
            };
            for (s, c) in copies.iter().enumerate() {
                let (_, n, o) = c.unwrap();
                assert_eq!(
                    (n, o),
                    (name, note),
                    "seed {seed}: {email} differs on A and {}: {copies:?}",
                    SYSTEMS[s]
                );
            }
            for v in [name, note].into_iter().flatten() {
                let Value::Text(t) = v else {
                    panic!("seed {seed}: {email} holds {v:?}");
                };
                assert!(
                    self.typed[email].contains(t),
                    "seed {seed}: {email} holds {t}, which no one typed ({copies:?})"
                );
            }
        }
    }
}
async fn run(seed: u64, star: bool, crashes: bool, deletes: bool) -> Chain {
    let mut t = if star {
        Chain::star(seed, Policy::LastWriterWins)
    } else {
        Chain::new(seed, std::env::var("NO_RELAYS").is_err())
    };
    t.deletes = deletes;
    for step in 0..40 {
        if t.rng.chance(50) {
            t.edit(step);
        } else {
            t.cycle(crashes).await;
        }
    }
    assert!(
        t.settle(100).await,
        "seed {seed}: the syncs did not settle "
    );
    t
}

/// Checks the schedules of seeds `SIM_SEED` (default 0) to `schedules`, with relays unless
/// `NO_RELAYS` is set (to replay a seed without them); `SIM_TRACE` prints every cycle.
async fn check_schedules(star: bool, crashes: bool, deletes: bool, schedules: u64) {
    let first: u64 = std::env::var("SIM_SEED").map_or(0, |s| s.parse().unwrap());
    for seed in first..schedules {
        let mut t = run(seed, star, crashes, deletes).await;
        t.check(seed);
        let before = t.writes();
        assert!(t.settle(3).await);
        assert_eq!(
            t.writes(),
            before,
            "seed {seed}: writes after convergence (an echo)"
        );
    }
    let what = if star {
        "one sync of three sides"
    } else {
        "a chain of syncs"
    };
    println!("checked {schedules} schedules of {what} (crashes: {crashes}, deletes: {deletes})");
}

#[tokio::test]
async fn a_chain_of_syncs_converges_without_echo_or_duplicate() {
    check_schedules(false, false, true, 1000).await;
}

#[tokio::test]
async fn a_chain_of_syncs_keeps_its_invariants_through_crashes() {
    check_schedules(false, true, false, 1000).await;
}

#[tokio::test]
async fn one_sync_of_three_sides_converges_without_echo_or_duplicate() {
    check_schedules(true, false, true, 2000).await;
}

#[tokio::test]
async fn one_sync_of_three_sides_keeps_its_invariants_through_crashes() {
    check_schedules(true, true, false, 2000).await;
}

/// Open: seed 489 ends with a record twice on C, with or without relays (`NO_RELAYS=1`). A
/// create of `ab` on B is cut short by a crash (made, not recorded); `bc` links the new record
/// to a copy it creates on C; a person deletes the record on B while C's copy is edited, so
/// `bc` holds the delete for a person. `ab`'s recovery then looks the create up by match key,
/// finds nothing (the person deleted it), takes it as never made and creates it again, and
/// `bc` creates that one on C beside the held copy. Two syncs make the gap visible; a single
/// sync in the same case brings back a record a person deleted. Telling "never made" from
/// "made and deleted since" needs the feed to keep the origin of a create that a delete
/// followed.
#[tokio::test]
#[ignore = "seed 489: a create cut short, then deleted by a person, is made again; see the comment"]
async fn a_chain_of_syncs_with_deletes_keeps_its_invariants_through_crashes() {
    check_schedules(false, true, true, 1000).await;
}

/// Two edits racing on the two ends of the chain: the later (C's) wins everywhere. Without
/// relays, `bc` takes `ab`'s write of A's edit to B as made then, after C's, and C loses it.
#[tokio::test]
async fn of_two_racing_edits_at_the_ends_the_later_wins_everywhere() {
    for relays in [true, false] {
        let mut t = Chain::new(0, relays);
        t.systems[0].0.borrow_mut().user_create(&[
            ("email", Value::Text("ada@example.com".into())),
            ("name", Value::Text("Ada".into())),
        ]);
        assert!(t.settle(10).await);
        let id = |t: &Chain, s: usize| t.systems[s].0.borrow().records.keys().next().cloned();
        let (a, c) = (id(&t, 0).unwrap(), id(&t, 2).unwrap());
        t.systems[0]
            .0
            .borrow_mut()
            .user_update(&a, "name", Value::Text("Ada A".into()));
        t.systems[2]
            .0
            .borrow_mut()
            .user_update(&c, "name", Value::Text("Ada C".into()));
        assert!(t.settle(20).await, "the chain did not settle");
        let expected = if relays { "Ada C" } else { "Ada A" };
        for (system, name) in t.systems.iter().zip(SYSTEMS) {
            let r = &system.0.borrow().records;
            assert_eq!(
                r.values().next().unwrap().get("name"),
                Some(&Value::Text(expected.into())),
                "system {name} (relays: {relays})"
            );
        }
    }
}

/// A priority order of three systems: the chain in that order, each sync preferring its left.
/// Of edits racing on all three, A's wins; of B's and C's, B's, whatever the times.
#[tokio::test]
async fn a_chain_preferring_its_left_sides_orders_the_systems_by_priority() {
    for edited in [[true, true, true], [false, true, true], [true, false, true]] {
        let mut t = Chain::with_policy(0, true, Policy::Prefer(duplex::engine::Side::LEFT));
        t.systems[2].0.borrow_mut().user_create(&[
            ("email", Value::Text("ada@example.com".into())),
            ("name", Value::Text("Ada".into())),
        ]);
        assert!(t.settle(10).await);
        // Edited last to first: the lowest priority's edit is the latest.
        for s in (0..3).rev().filter(|s| edited[*s]) {
            let id = t.systems[s]
                .0
                .borrow()
                .records
                .keys()
                .next()
                .cloned()
                .unwrap();
            t.systems[s].0.borrow_mut().user_update(
                &id,
                "name",
                Value::Text(format!("Ada {}", SYSTEMS[s])),
            );
        }
        assert!(t.settle(20).await, "the chain did not settle");
        let first = (0..3).find(|s| edited[*s]).unwrap();
        let expected = Value::Text(format!("Ada {}", SYSTEMS[first]));
        for (system, name) in t.systems.iter().zip(SYSTEMS) {
            let r = &system.0.borrow().records;
            assert_eq!(r.len(), 1, "{name}: {r:?}");
            assert_eq!(
                r.values().next().unwrap().get("name"),
                Some(&expected),
                "system {name} (edited: {edited:?})"
            );
        }
    }
}

/// Deletes and crashes together: the chain's case above stays open (its seed 489), while the
/// same 2,000 schedules against one sync of three sides hold. The gap is the same (a create
/// cut short and then deleted by a person is made again) and may still show in another seed.
#[tokio::test]
async fn one_sync_of_three_sides_with_deletes_keeps_its_invariants_through_crashes() {
    check_schedules(true, true, true, 2000).await;
}
