//! Counters merged as deltas (issue 16): a field such as stock on hand is not a value to pick a
//! winner for. When both sides change it, the result is the total plus both changes, so two
//! sales of one item in two systems at once both count; in a sync of more sides, the total plus
//! every side's change.
//!
//! The bookkeeping lives in the link: `base` holds the total Duplex has accounted for, and each
//! side's `counted` holds the value of that side already added into it. A side's change is its
//! value now less its `counted`; it is added to the total once, when it is planned, and the
//! link carrying the new total is what the intents and the commit store. A write that then
//! fails, or is refused because the counter moved again, leaves `counted` at the value that
//! was added, so the next read adds only what came since: a change is never counted twice nor
//! overwritten. A write that lands sets the side's `counted` to the total it wrote.

use std::collections::BTreeSet;

use super::mapping::SyncSpec;
use super::merge::ConflictNote;
use super::value::{canonical_decimal, is_plain_decimal, Value};
use super::{Link, Side};

/// An exact number: `mantissa` / 10^`scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exact {
    mantissa: i128,
    scale: u32,
}

/// Most digits after the point a counter keeps; more cannot be added exactly here.
const MOST_SCALE: u32 = 30;

impl Exact {
    fn of(v: &Value) -> Result<Exact, String> {
        match v {
            Value::Int(i) => Ok(Exact {
                mantissa: i128::from(*i),
                scale: 0,
            }),
            Value::Decimal(d) if is_plain_decimal(d) => {
                let t = canonical_decimal(d);
                let (neg, digits) = match t.strip_prefix('-') {
                    Some(rest) => (true, rest),
                    None => (false, t.as_str()),
                };
                let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
                let scale = frac.len() as u32;
                if scale > MOST_SCALE {
                    return Err(format!("{d} has more than {MOST_SCALE} decimal places"));
                }
                let mantissa: i128 = format!("{int}{frac}")
                    .parse()
                    .map_err(|_| format!("{d} is too large to count with"))?;
                Ok(Exact {
                    mantissa: if neg { -mantissa } else { mantissa },
                    scale,
                })
            }
            Value::Null => Err("it is empty (null): a counter adds changes to a number".into()),
            other => Err(format!("{} is not a number", other.display())),
        }
    }

    fn rescale(self, scale: u32) -> Option<i128> {
        self.mantissa
            .checked_mul(10i128.checked_pow(scale - self.scale)?)
    }

    /// `self + sign * other`, exactly, or none on overflow.
    fn add(self, other: Exact, sign: i128) -> Option<Exact> {
        let scale = self.scale.max(other.scale);
        let sum = self
            .rescale(scale)?
            .checked_add(other.rescale(scale)?.checked_mul(sign)?)?;
        Some(Exact {
            mantissa: sum,
            scale,
        })
    }

    /// Back to a value of the same kind as `like`.
    fn value(self, like: &Value) -> Option<Value> {
        match like {
            Value::Int(_) if self.scale == 0 => i64::try_from(self.mantissa).ok().map(Value::Int),
            Value::Int(_) => None,
            _ => {
                let digits = self.mantissa.unsigned_abs().to_string();
                let scale = self.scale as usize;
                let padded = format!("{digits:0>width$}", width = scale + 1);
                let (int, frac) = padded.split_at(padded.len() - scale);
                let sign = if self.mantissa < 0 { "-" } else { "" };
                let text = if frac.is_empty() {
                    format!("{sign}{int}")
                } else {
                    format!("{sign}{int}.{frac}")
                };
                Some(Value::Decimal(canonical_decimal(&text)))
            }
        }
    }
}

/// `total + (left - left_counted) + (right - right_counted) + ...`, exactly, in the total's
/// kind: each side's `(now, counted)`.
pub(crate) fn merged_total(total: &Value, changes: &[(&Value, &Value)]) -> Result<Value, String> {
    let mut sum = Exact::of(total)?;
    for (now, counted) in changes {
        let (add, take) = (Exact::of(now)?, Exact::of(counted)?);
        let now = *now;
        sum = sum
            .add(add, 1)
            .and_then(|s| s.add(take, -1))
            .ok_or_else(|| format!("adding {} to it overflows", now.display()))?;
    }
    sum.value(total)
        .ok_or_else(|| "the sum does not fit the field's type".to_owned())
}

/// How two integer or decimal values order, exactly; none for other values.
pub(crate) fn compare_numbers(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    let (x, y) = (Exact::of(a).ok()?, Exact::of(b).ok()?);
    let scale = x.scale.max(y.scale);
    Some(x.rescale(scale)?.cmp(&y.rescale(scale)?))
}

/// `now - then` for a message: how much a counter moved (`?` when it cannot be told).
pub fn counter_change(now: &Value, then: &Value) -> String {
    let zero = match now {
        Value::Int(_) => Value::Int(0),
        _ => Value::Decimal("0".into()),
    };
    match merged_total(&zero, &[(now, then)]) {
        Ok(v) => {
            let text = v.display();
            if text.starts_with('-') {
                text
            } else {
                format!("+{text}")
            }
        }
        Err(_) => "?".into(),
    }
}

/// Adds each side's change of each counter field to the link's total. Returns the counters that
/// cannot be added (a side emptied one, a sum overflows): they wait for a person. `held` are
/// the link's fields with open conflicts: a held counter is left alone until a person gives
/// its total (a pin), even when both sides come to show the same value.
pub(crate) fn count(
    link: &mut Link,
    spec: &SyncSpec,
    held: &BTreeSet<String>,
) -> Vec<ConflictNote> {
    let mut notes = Vec::new();
    if !link.each_side().all(|(_, st)| st.exists()) {
        return notes;
    }
    for fs in spec
        .fields
        .iter()
        .filter(|f| f.counter && !spec.is_stopped(&f.name))
    {
        let f = fs.name.as_str();
        let Some(total) = link.base.get(f).cloned() else {
            continue;
        };
        let seen = |side: Side| {
            link.side(side)
                .seen
                .as_ref()
                .and_then(|s| s.get(f))
                .cloned()
        };
        // What each side shows now, in the order of sides.
        let Some(now): Option<Vec<Value>> = Side::all(link.sides()).map(seen).collect() else {
            continue;
        };
        // A person's (or a rule's) value replaces the total; what the sides show now counts as
        // added to it.
        if let Some(pin) = link.pins.remove(f) {
            restart(link, f, pin, &now);
            continue;
        }
        if held.contains(f) {
            continue;
        }
        let counted: Vec<Value> = Side::all(link.sides())
            .map(|side| {
                let counted = link.side(side).counted.get(f);
                counted.cloned().unwrap_or_else(|| total.clone())
            })
            .collect();
        if now == counted {
            continue;
        }
        let changes: Vec<(&Value, &Value)> = now.iter().zip(&counted).collect();
        match merged_total(&total, &changes) {
            Ok(sum) => restart(link, f, sum, &now),
            Err(why) => notes.push(ConflictNote::of_link(
                link,
                f,
                format!("counter {f} cannot be added: {why}"),
            )),
        }
    }
    notes
}

/// The counter's total is `total`, with what each side shows `now` counted into it.
fn restart(link: &mut Link, field: &str, total: Value, now: &[Value]) {
    link.base.insert(field.to_owned(), total);
    for (i, v) in now.iter().enumerate() {
        link.side_mut(Side::nth(i))
            .counted
            .insert(field.to_owned(), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Value {
        Value::Decimal(s.into())
    }

    #[test]
    fn integers_and_decimals_add_exactly() {
        let sum = merged_total(
            &Value::Int(10),
            &[
                (&Value::Int(9), &Value::Int(10)),
                (&Value::Int(7), &Value::Int(10)),
            ],
        );
        assert_eq!(sum, Ok(Value::Int(6)));
        let sum = merged_total(
            &dec("0.3"),
            &[(&dec("0.1"), &dec("0.3")), (&dec("0.35"), &dec("0.3"))],
        );
        assert_eq!(sum, Ok(dec("0.15")));
        let sum = merged_total(
            &dec("1"),
            &[(&dec("-2.5"), &dec("1")), (&dec("1"), &dec("1"))],
        );
        assert_eq!(sum, Ok(dec("-2.5")));
    }

    #[test]
    fn what_cannot_be_added_says_why() {
        let err = merged_total(
            &Value::Int(i64::MAX - 1),
            &[
                (&Value::Int(i64::MAX), &Value::Int(i64::MAX - 1)),
                (&Value::Int(i64::MAX), &Value::Int(i64::MAX - 1)),
            ],
        )
        .unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
        let err = merged_total(
            &Value::Int(1),
            &[
                (&Value::Null, &Value::Int(1)),
                (&Value::Int(1), &Value::Int(1)),
            ],
        )
        .unwrap_err();
        assert!(err.contains("null"), "{err}");
    }

    /// Stock 10 on both sides; each side sells one at once: 8 on both, written where it differs.
    #[test]
    fn two_sales_at_once_both_count_and_a_refused_write_counts_nothing_twice() {
        use crate::engine::{plan, FieldType, Input, Observed, OpKind};
        let mut spec = crate::engine::mapping::tests::spec();
        spec.fields.push(crate::engine::FieldSpec {
            more: Vec::new(),
            name: "stock".into(),
            left: "stock".into(),
            right: "stock".into(),
            left_type: FieldType::Integer,
            right_type: FieldType::Integer,
            direction: crate::engine::Direction::Both,
            values: vec![],
            policy: None,
            counter: true,
        });
        let seen = |n: i64| {
            let mut f = crate::engine::Fields::new();
            f.insert("email".into(), Value::Text("a@x".into()));
            f.insert("stock".into(), Value::Int(n));
            f
        };
        let mut link = Link::new(1);
        for side in [Side::LEFT, Side::RIGHT] {
            let st = link.side_mut(side);
            st.id = Some(format!("{side}1"));
            st.seen = Some(seen(10));
            st.version = Some("1".into());
        }
        super::super::merge::refresh(&mut link, &spec);
        assert_eq!(link.left.counted.get("stock"), Some(&Value::Int(10)));
        let sold = |side: Side, n: i64| Observed {
            side,
            id: format!("{side}1"),
            deleted: false,
            fields: seen(n),
            version: Some("2".into()),
            changed_at: Some(5),
            read_at: 9,
            own: false,
        };
        let input = |link: Link, changes| Input {
            spec: &spec,
            links: vec![link],
            held: Default::default(),
            changes,
            candidates: Default::default(),
            answers: Default::default(),
            next_link_id: 2,
        };
        let p = plan(&input(
            link,
            vec![sold(Side::LEFT, 9), sold(Side::RIGHT, 9)],
        ));
        let writes: Vec<(Side, Value)> = p
            .ops
            .iter()
            .map(|o| match &o.kind {
                OpKind::Update { fields, .. } => (o.side, fields["stock"].clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            writes,
            vec![(Side::LEFT, Value::Int(8)), (Side::RIGHT, Value::Int(8))]
        );
        // Both writes refused: the left sold one more meanwhile. Read again, only that sale is
        // added: 7, not 8 - 1 - 1 again.
        let link = p.links[&1].clone();
        let p = plan(&input(link, vec![sold(Side::LEFT, 8)]));
        assert!(
            p.ops.iter().all(|o| matches!(&o.kind,
            OpKind::Update { fields, .. } if fields["stock"] == Value::Int(7))),
            "{:?}",
            p.ops
        );
        assert_eq!(p.links[&1].base["stock"], Value::Int(7));
    }
}
