//! Record filters (issue 16), simulated: customers created, renamed and switched between
//! active and inactive on both systems at random while a sync with a filter on the left
//! (`status = 'active'`) runs, with crashes injected between any two steps of a cycle. Once
//! the edits stop and the sync catches up, the right holds exactly the left's active
//! customers, with their values, and (by the policy for leaving) either no copy or the last
//! copy of the others; no record twice, nothing left for a person, no write bouncing.

// Test helpers unwrap too: a panic there is a failed test with its message.
#![allow(clippy::unwrap_used)]

mod memory;
mod sim;

use std::collections::BTreeMap;
use std::rc::Rc;

use duplex::driver::{Rules, SyncRunner};
use duplex::engine::{
    DeletePolicy, FieldType, Filter, Leaving, MatchKey, Policy, Scope, Side, SyncSpec,
};
use duplex::plugin::Value;
use duplex::state::State;
use memory::{Shared, World};
use sim::Rng;

fn spec(leaving: Leaving) -> SyncSpec {
    let field = sim::text_field;
    let status = |n: &str| {
        (n == "status")
            .then(|| ("status".to_owned(), FieldType::Text))
            .ok_or_else(|| format!("no field {n}"))
    };
    SyncSpec {
        more_names: Vec::new(),
        name: "people".into(),
        origin: "duplex:people".into(),
        left_name: "crm".into(),
        right_name: "erp".into(),
        fields: vec![
            field("email", "mail"),
            field("name", "full_name"),
            field("status", "state"),
        ],
        match_key: Some(MatchKey {
            field: "email".into(),
            ignore_case: true,
        }),
        policy: Policy::LastWriterWins,
        deletes: DeletePolicy::Propagate,
        scope: Scope {
            left: Some(Filter::parse("status = 'active'", &status).unwrap()),
            right: None,
            more: Vec::new(),
            leaving,
        },
        stopped: Default::default(),
    }
}

const LEFT: [&str; 3] = ["email", "name", "status"];
const RIGHT: [&str; 3] = ["mail", "full_name", "state"];

struct Sim {
    rng: Rng,
    world: Rc<World>,
    left: Shared,
    right: Shared,
    runner: SyncRunner<Shared>,
    state: State,
    people: usize,
    crashes: u32,
    left_filter: u32,
    /// Records whose copy a person kept when asked.
    kept: std::collections::BTreeSet<String>,
}

impl Sim {
    fn new(seed: u64, leaving: Leaving) -> Sim {
        let world = World::new(1_000_000);
        let left = Shared::in_world("", world.clone());
        let right = Shared::in_world("r", world.clone());
        let runner = SyncRunner::new(spec(leaving), left.clone(), right.clone(), 4, Rules::new())
            .with_clock(world.driver_clock());
        Sim {
            rng: Rng::new(seed),
            world,
            left,
            right,
            runner,
            state: State::in_memory().unwrap(),
            people: 0,
            crashes: 0,
            left_filter: 0,
            kept: Default::default(),
        }
    }

    fn sys(&self, side: Side) -> (&Shared, [&'static str; 3]) {
        match side {
            Side::LEFT => (&self.left, LEFT),
            _ => (&self.right, RIGHT),
        }
    }

    fn find(&self, side: Side, p: usize) -> Option<String> {
        let (sys, names) = self.sys(side);
        let email = format!("p{p}@example.com");
        sys.0
            .borrow()
            .records
            .iter()
            .find(|(_, r)| r.get(names[0]) == Some(&Value::Text(email.clone())))
            .map(|(id, _)| id.clone())
    }

    fn edit(&mut self, step: usize) {
        let side = if self.rng.chance(60) {
            Side::LEFT
        } else {
            Side::RIGHT
        };
        let (sys, names) = self.sys(side);
        let sys = sys.clone();
        let roll = self.rng.below(100);
        if self.people == 0 || roll < 20 {
            // Created active or not on the left; on the right, with any status.
            let p = self.people;
            self.people += 1;
            let status = if self.rng.chance(60) {
                "active"
            } else {
                "inactive"
            };
            if std::env::var("SIM_TRACE").is_ok() {
                println!("create p{p} on the {side}, {status}");
            }
            sys.0.borrow_mut().user_create(&[
                (names[0], Value::Text(format!("p{p}@example.com"))),
                (names[1], Value::Text(format!("P{p}"))),
                (names[2], Value::Text(status.into())),
            ]);
            return;
        }
        let p = self.rng.below(self.people as u64) as usize;
        let Some(id) = self.find(side, p) else { return };
        let (field, value) = if roll < 60 {
            (names[1], format!("P{p}.{step}"))
        } else {
            let status = if self.rng.chance(50) {
                "active"
            } else {
                "inactive"
            };
            (names[2], status.to_owned())
        };
        if std::env::var("SIM_TRACE").is_ok() {
            println!("edit p{p} on the {side}: {field} = {value}");
        }
        sys.0
            .borrow_mut()
            .user_update(&id, field, Value::Text(value));
    }

    async fn cycle(&mut self, crashes: bool) {
        self.world.advance(1_000);
        if crashes && sim::maybe_crash(&mut self.rng, &self.state, &[&self.left, &self.right]) {
            self.crashes += 1;
        }
        let r = self.runner.cycle(&self.state, self.world.tick()).await;
        if std::env::var("SIM_TRACE").is_ok() {
            println!("   cycle: {r:?}");
        }
        sim::clear_crashes(&self.state, &[&self.left, &self.right]);
    }

    async fn settle(&mut self) -> usize {
        sim::settle(
            &mut self.runner,
            &self.state,
            &self.world,
            &[&self.left, &self.right],
        )
        .await
    }

    fn records(&self, side: Side) -> BTreeMap<String, Vec<[String; 2]>> {
        let (sys, names) = self.sys(side);
        let mut out: BTreeMap<String, Vec<[String; 2]>> = BTreeMap::new();
        for r in sys.0.borrow().records.values() {
            let text = |f: &str| match r.get(f) {
                Some(Value::Text(t)) => t.clone(),
                other => format!("{other:?}"),
            };
            out.entry(text(names[0]).to_lowercase())
                .or_default()
                .push([text(names[1]), text(names[2])]);
        }
        out
    }

    fn check(&self, seed: u64, leaving: Leaving) {
        let conflicts = self.state.conflicts(false).unwrap();
        assert!(
            conflicts.is_empty(),
            "seed {seed}: conflicts left: {conflicts:?}"
        );
        let (left, right) = (self.records(Side::LEFT), self.records(Side::RIGHT));
        for (side, records) in [("left", &left), ("right", &right)] {
            for (email, rs) in records {
                assert_eq!(
                    rs.len(),
                    1,
                    "seed {seed}: {email} twice on the {side}: {rs:?}"
                );
            }
        }
        for (email, rs) in &left {
            let l = &rs[0];
            match (l[1] == "active", right.get(email)) {
                (true, Some(r)) => assert_eq!(&r[0], l, "seed {seed}: {email} differs"),
                (true, None) => panic!("seed {seed}: active {email} has no copy on the right"),
                (false, Some(r)) if leaving == Leaving::Hold => assert!(
                    self.kept.contains(email),
                    "seed {seed}: {email} left the filter, its copy stayed unasked: {r:?}"
                ),
                (false, Some(r)) => {
                    assert_eq!(
                        leaving,
                        Leaving::Keep,
                        "seed {seed}: {email} left the filter, its copy stayed: {r:?}"
                    )
                }
                (false, None) => {}
            }
        }
        // A record only on the right was never in the left's filter: it is not created there.
        for (email, r) in &right {
            assert!(
                left.contains_key(email) || r[0][1] == "inactive",
                "seed {seed}: active {email} only on the right"
            );
        }
    }
}

async fn check_schedules(leaving: Leaving, crashes: bool, schedules: u64) {
    let (mut crashed, mut left) = (0, 0);
    let seeds = match std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => seed..seed + 1,
        None => 0..schedules,
    };
    for seed in seeds {
        let mut sim = Sim::new(seed, leaving);
        for step in 0..60 {
            if sim.rng.chance(35) {
                sim.cycle(crashes).await;
            } else {
                sim.edit(step);
            }
        }
        let mut after = sim.settle().await;
        if leaving == Leaving::Hold {
            // A person keeps every other copy held and deletes the rest.
            let held = sim.state.conflicts(false).unwrap();
            for c in &held {
                if std::env::var("SIM_TRACE").is_ok() {
                    println!("resolving {c:?}");
                    for l in sim.state.all_links("people").unwrap() {
                        println!("  {l:?}");
                    }
                }
                assert!(c.reason.contains("left the filter"), "seed {seed}: {c:?}");
                // Every other copy is kept, the rest deleted.
                let answer = if c.id % 2 == 0 {
                    let id = c.left_id.clone().unwrap();
                    let email = match sim.left.0.borrow().records[&id].get("email") {
                        Some(Value::Text(e)) => e.to_lowercase(),
                        other => panic!("{other:?}"),
                    };
                    sim.kept.insert(email);
                    "keep"
                } else {
                    "delete"
                };
                let choice =
                    duplex::state::Choice::Value(duplex::engine::Value::Text(answer.into()));
                sim.state
                    .resolve_conflict(c.id, choice, "sim", sim.world.tick())
                    .unwrap();
            }
            if !held.is_empty() {
                after = sim.settle().await;
            }
        }
        assert_eq!(
            after, 0,
            "seed {seed}: writes after convergence (an echo bounced)"
        );
        sim.check(seed, leaving);
        crashed += sim.crashes;
        sim.left_filter = sim
            .state
            .all_links("people")
            .unwrap()
            .iter()
            .filter(|l| l.status == duplex::engine::LinkStatus::Filtered)
            .count() as u32;
        left += sim.left_filter;
    }
    println!("checked {schedules} schedules ({leaving:?}): {crashed} crashes injected, {left} links out of their filter at the end");
}

#[tokio::test]
async fn records_leaving_and_entering_a_filter_keep_their_copies() {
    check_schedules(Leaving::Keep, true, 1_000).await;
}

#[tokio::test]
async fn records_leaving_a_filter_that_holds_wait_for_a_person_who_keeps_or_deletes_their_copies() {
    check_schedules(Leaving::Hold, true, 500).await;
}

#[tokio::test]
async fn records_leaving_a_filter_that_deletes_lose_their_copies_and_come_back_once() {
    check_schedules(Leaving::Delete, true, 1_000).await;
}
