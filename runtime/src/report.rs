//! How the CLI shows state to a person: conflicts, status, values.

use crate::engine::{Decided, Side, Value};
use crate::state::{Activity, Choice, Conflict, ConflictStatus};
use crate::time::format_sqlite;

fn value(v: &Option<Value>) -> String {
    v.as_ref().map_or("(none)".into(), Value::display)
}

/// One conflict on one line.
pub fn conflict_line(c: &Conflict) -> String {
    let ids: Vec<String> = Side::all(c.sides())
        .map(|s| format!("{s} {}", c.record(s).unwrap_or("-")))
        .collect();
    let ids = ids.join(" / ");
    let what = if c.field == crate::engine::WHOLE_RECORD {
        format!("record: {}", c.reason)
    } else {
        // Why it waits, unless it is the field's policy (manual): a rule's answer or failure,
        // a field both sides rewrite.
        let why = if c.reason.is_empty() || c.reason == crate::engine::HELD_FOR_A_PERSON {
            String::new()
        } else {
            format!(" ({})", c.reason)
        };
        let values: Vec<String> = Side::all(c.sides())
            .map(|s| format!("{s} {}", value(&c.value(s).cloned())))
            .collect();
        format!(
            "{}: base {}, {}{why}",
            c.field,
            value(&c.base),
            values.join(", ")
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
                Some(Choice::Take(s)) => format!("took {s}"),
                Some(Choice::Value(v)) => format!("set {}", v.display()),
                None => "?".to_owned(),
            }
        ),
    };
    format!("#{} [{}] ({ids}) {what} [{status}]", c.id, c.sync)
}

/// One activity entry on one line: a write, or a decision (last writer wins with both values,
/// both times and the winner; a rule's with the rule, its plugin and what it took).
pub fn activity_line(a: &Activity) -> String {
    let at = format_sqlite(a.at);
    match &a.decided {
        Some(d) => format!("{at} [{}] link {}: {}", a.sync, a.link, decision(d)),
        None => format!(
            "{at} [{}] {} {} {} (link {}){}",
            a.sync,
            a.op,
            a.side,
            a.record,
            a.link,
            if a.fields.is_empty() {
                String::new()
            } else {
                format!(": {}", a.fields.join(", "))
            }
        ),
    }
}

/// A decision in words: `name: last writer wins, right "R" (changed ...) over left "L" (...)`.
fn decision(d: &Decided) -> String {
    let side = |s: Side| {
        let (v, at, read) = d.side(s);
        let v = v.map_or_else(|| "-".to_owned(), Value::display);
        let when = match at {
            None => "no change time known: counts as earliest".to_owned(),
            Some(t) if read => format!("changed by {} UTC, when Duplex read it", format_sqlite(t)),
            Some(t) => format!("changed {} UTC by its clock", format_sqlite(t)),
        };
        format!("{s} {v} ({when})")
    };
    if let Some(rule) = &d.rule {
        let by = d
            .plugin
            .as_ref()
            .map_or(String::new(), |p| format!(" ({p})"));
        let took = match &d.value {
            Some(v) => format!("set {}", v.display()),
            None => format!("took {}", side(d.winner)),
        };
        return format!(
            "{}: rule {rule}{by} {took}; left was {}, right {}",
            d.field,
            d.left.display(),
            d.right.display()
        );
    }
    // The others that changed the field too (in a sync of two, the other side).
    let losers: Vec<Side> = if d.among.is_empty() {
        vec![d.winner.other()]
    } else {
        d.among.iter().copied().filter(|s| *s != d.winner).collect()
    };
    let tie = if losers.iter().any(|s| d.side(*s).1 == d.side(d.winner).1) {
        if d.more.is_empty() {
            "; a tie goes to the left"
        } else {
            "; a tie goes to the side named first"
        }
    } else {
        ""
    };
    let over: Vec<String> = losers.into_iter().map(side).collect();
    format!(
        "{}: last writer wins, {} over {}{tie}",
        d.field,
        side(d.winner),
        over.join(", ")
    )
}

/// A sync's progress through a run of full batches (a first load, a backlog), on one line:
/// what it read and wrote, its rate once known, and, where its connectors said what remains,
/// how much and about how long.
pub fn progress_line(
    sync: &str,
    read: usize,
    written: usize,
    rate: Option<f64>,
    remaining: Option<u64>,
) -> String {
    let mut line = format!("{sync}: {read} changes read, {written} written");
    if let Some(rate) = rate {
        line.push_str(&format!(", {rate:.0} changes/s"));
    }
    if let Some(left) = remaining {
        line.push_str(&format!(", {left} left"));
        if let Some(rate) = rate.filter(|r| *r >= 1.0 && left > 0) {
            line.push_str(&format!(" (about {})", duration(left as f64 / rate)));
        }
    }
    line
}

/// `45 s`, `3 min 20 s`, `2 h 5 min`: a time left, as precise as it is worth.
fn duration(seconds: f64) -> String {
    let s = seconds.ceil() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..600 => format!("{} min {} s", s / 60, s % 60),
        600..3600 => format!("{} min", s.div_ceil(60)),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_says_what_is_left_and_about_how_long() {
        assert_eq!(
            progress_line("people", 1000, 0, None, None),
            "people: 1000 changes read, 0 written"
        );
        assert_eq!(
            progress_line("people", 45000, 44000, Some(21000.4), None),
            "people: 45000 changes read, 44000 written, 21000 changes/s"
        );
        // Left, but no rate yet: no time.
        assert_eq!(
            progress_line("people", 1000, 0, None, Some(99000)),
            "people: 1000 changes read, 0 written, 99000 left"
        );
        assert_eq!(
            progress_line("people", 45000, 44000, Some(20000.0), Some(55000)),
            "people: 45000 changes read, 44000 written, 20000 changes/s, 55000 left (about 3 s)"
        );
        let left = |seconds: u64| progress_line("s", 0, 0, Some(1.0), Some(seconds));
        assert!(left(59).ends_with("(about 59 s)"), "{}", left(59));
        assert!(left(200).ends_with("(about 3 min 20 s)"), "{}", left(200));
        assert!(left(1790).ends_with("(about 30 min)"), "{}", left(1790));
        assert!(left(7500).ends_with("(about 2 h 5 min)"), "{}", left(7500));
        // Nothing left tells no time; a rate below one change a second tells none worth showing.
        assert_eq!(
            progress_line("s", 1, 0, Some(5.0), Some(0)),
            "s: 1 changes read, 0 written, 5 changes/s, 0 left"
        );
        assert_eq!(
            progress_line("s", 1, 0, Some(0.5), Some(10)),
            "s: 1 changes read, 0 written, 0 changes/s, 10 left"
        );
    }

    #[test]
    fn a_decision_reads_with_both_values_both_times_and_the_winner() {
        let d = Decided {
            more: Vec::new(),
            among: Vec::new(),
            link: 7,
            field: "name".into(),
            left: Value::Text("Ada".into()),
            right: Value::Text("Ada L.".into()),
            left_at: Some(1_000_000),
            right_at: Some(2_500_000),
            left_read_time: false,
            right_read_time: true,
            winner: Side::RIGHT,
            rule: None,
            value: None,
            plugin: None,
        };
        let a = Activity {
            at: 3_000_000,
            sync: "people".into(),
            link: 7,
            side: Side::RIGHT,
            op: crate::state::DECIDED.into(),
            record: "r1".into(),
            fields: vec!["name".into()],
            decided: Some(d),
        };
        assert_eq!(
            activity_line(&a),
            "1970-01-01 00:00:03 [people] link 7: name: last writer wins, \
             right \"Ada L.\" (changed by 1970-01-01 00:00:02.500000 UTC, when Duplex read it) \
             over left \"Ada\" (changed 1970-01-01 00:00:01 UTC by its clock)"
        );
    }
}
