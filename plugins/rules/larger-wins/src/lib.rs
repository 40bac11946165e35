//! A conflict rule: of numbers the largest wins, of texts the longest, over every side of the
//! sync (ties go to the side named first, so the answer never depends on order of arrival).
//! Anything else is left to a person. Useful for fields that only grow, such as a counter or a
//! note that gets appended to.

use duplex_sdk::{register_resolver, Conflict, Resolution, Resolver, Value};

pub struct LargerWins;

impl Resolver for LargerWins {
    fn resolve(c: &Conflict) -> Resolution {
        let sides: Vec<&Value> = c.sides().map(|s| &s.value).collect();
        let mut best = 0;
        for (i, v) in sides.iter().enumerate().skip(1) {
            match larger(v, sides[best]) {
                Ok(true) => best = i,
                Ok(false) => {}
                Err(why) => return Resolution::Manual(format!("{}: {why}", c.field)),
            }
        }
        Resolution::take(best)
    }
}

/// Whether `a` is strictly larger than `b`: a side named later must be larger to win. A value
/// is larger than none.
fn larger(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(match (a, b) {
        (Value::Integer(a), Value::Integer(b)) => a > b,
        (Value::Float(a), Value::Float(b)) => a > b,
        (Value::Text(a), Value::Text(b)) => a.chars().count() > b.chars().count(),
        (Value::Null, _) => false,
        (_, Value::Null) => true,
        (a, b) => return Err(format!("cannot compare {a:?} with {b:?}")),
    })
}

register_resolver!(LargerWins);
