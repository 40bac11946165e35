//! A conflict rule: of two numbers the larger wins, of two texts the longer (ties go to the
//! left side, so the answer never depends on order of arrival). Anything else is left to a
//! person. Useful for fields that only grow, such as a counter or a note that gets appended to.

use duplex_sdk::{register_resolver, Conflict, Resolution, Resolver, Value};

pub struct LargerWins;

impl Resolver for LargerWins {
    fn resolve(c: &Conflict) -> Resolution {
        let left_wins = match (&c.left.value, &c.right.value) {
            (Value::Integer(l), Value::Integer(r)) => l >= r,
            (Value::Float(l), Value::Float(r)) => l >= r,
            (Value::Text(l), Value::Text(r)) => l.chars().count() >= r.chars().count(),
            (_, Value::Null) => true,
            (Value::Null, _) => false,
            (l, r) => {
                return Resolution::Manual(format!("{}: cannot compare {l:?} with {r:?}", c.field))
            }
        };
        if left_wins {
            Resolution::TakeLeft
        } else {
            Resolution::TakeRight
        }
    }
}

register_resolver!(LargerWins);
