//! What the seeded simulations share (`convergence.rs`, `counters.rs`, `filters.rs`): a small
//! generator, crashes injected into a cycle, and running a sync until it is caught up.

// Each simulation uses what it needs of this module.
#![allow(dead_code)]

use duplex::driver::SyncRunner;
use duplex::engine::{Direction, FieldSpec, FieldType, Side};
use duplex::state::State;

use crate::memory::{Shared, World};

/// A text field called `name` on the left and `right` on the right, flowing both ways with
/// the sync's policy: what the simulations map.
pub fn text_field(name: &str, right: &str) -> FieldSpec {
    FieldSpec {
        more: Vec::new(),
        name: name.into(),
        left: name.into(),
        right: right.into(),
        left_type: FieldType::Text,
        right_type: FieldType::Text,
        direction: Direction::Both,
        values: vec![],
        policy: None,
        counter: false,
    }
}

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn side(&mut self) -> Side {
        if self.chance(50) {
            Side::LEFT
        } else {
            Side::RIGHT
        }
    }

    /// One of `n` sides; of two, as [`Rng::side`] picks.
    pub fn side_of(&mut self, n: usize) -> Side {
        if n == 2 {
            self.side()
        } else {
            Side::nth(self.below(n as u64) as usize)
        }
    }
}

/// Sometimes (30%) arranges for the next cycle to crash: the state's commit fails after a few
/// write transactions, or one side's call fails, a write having applied some of its ops first.
/// Returns whether it did; [`clear_crashes`] undoes it once the cycle ran.
pub fn maybe_crash(rng: &mut Rng, state: &State, systems: &[&Shared]) -> bool {
    if !rng.chance(30) {
        return false;
    }
    match rng.below(1 + systems.len() as u64) as usize {
        0 => state.crash_after_writes(rng.below(3) as i64),
        n => {
            let mut s = systems[n - 1].0.borrow_mut();
            s.fail_in = Some(rng.below(4) as u32);
            s.apply_before_failing = rng.below(4) as usize;
        }
    }
    true
}

pub fn clear_crashes(state: &State, systems: &[&Shared]) {
    state.crash_after_writes(-1);
    for s in systems {
        s.0.borrow_mut().fail_in = None;
    }
}

/// Runs cycles, time jumping past every retry's backoff, until two in a row find nothing to
/// do; then three more. Returns the writes those three made: none, unless a write bounces.
pub async fn settle(
    runner: &mut SyncRunner<Shared>,
    state: &State,
    world: &World,
    systems: &[&Shared],
) -> usize {
    let writes = || systems.iter().map(|s| s.0.borrow().writes).sum::<usize>();
    let mut idle = 0;
    for _ in 0..400 {
        world.advance(700_000_000);
        let report = runner.cycle(state, world.tick()).await.unwrap();
        if report.idle() && report.retried == 0 {
            idle += 1;
            if idle == 2 {
                let before = writes();
                for _ in 0..3 {
                    world.advance(1_000_000);
                    runner.cycle(state, world.tick()).await.unwrap();
                }
                return writes() - before;
            }
        } else {
            idle = 0;
        }
    }
    panic!("did not settle within 400 cycles");
}
