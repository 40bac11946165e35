//! How the CLI shows state to a person: conflicts, status, values.

use crate::engine::Value;
use crate::state::{Choice, Conflict, ConflictStatus};

fn value(v: &Option<Value>) -> String {
    v.as_ref().map_or("(none)".into(), Value::display)
}

/// One conflict on one line.
pub fn conflict_line(c: &Conflict) -> String {
    let ids = format!(
        "left {} / right {}",
        c.left_id.as_deref().unwrap_or("-"),
        c.right_id.as_deref().unwrap_or("-")
    );
    let what = if c.field == crate::engine::WHOLE_RECORD {
        format!("record: {}", c.reason)
    } else {
        format!(
            "{}: base {}, left {}, right {}",
            c.field,
            value(&c.base),
            value(&c.left),
            value(&c.right)
        )
    };
    let status = match c.status {
        ConflictStatus::Open => "open".to_owned(),
        ConflictStatus::Agreed => "closed: both sides agreed".to_owned(),
        ConflictStatus::Resolved => format!(
            "resolved by {} ({})",
            c.resolved_by.as_deref().unwrap_or("?"),
            match &c.choice {
                Some(Choice::TakeLeft) => "took left".to_owned(),
                Some(Choice::TakeRight) => "took right".to_owned(),
                Some(Choice::Value(v)) => format!("set {}", v.display()),
                None => "?".to_owned(),
            }
        ),
    };
    format!("#{} [{}] ({ids}) {what} [{status}]", c.id, c.sync)
}
