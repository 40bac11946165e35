//! Record filters (issue 16): which records of a side a sync keeps in step, as a small
//! expression over the sync's mapped fields as that side holds them: the side's own field
//! names (or the common names), types and values (`status_code = 1` on a side that maps
//! `active` to 1).
//!
//! ```text
//! status = 'active' and (country in ('DE', 'FR') or vip) and not deleted_at is not null
//! ```
//!
//! Comparisons `= != <> < <= > >=` of a field with a literal (`'text'`, a number, `true`,
//! `false`), `in (...)`, `is null`, `is not null`, `and`, `or`, `not`, parentheses, and a bare
//! boolean field. A comparison with an empty value (null, or a field the record lacks) is
//! false, as in SQL; only `is null` is true of it. Literals are converted to the field's type
//! when the sync is built, so a filter that cannot hold for its field is refused then, never
//! found false at run time. Evaluation is pure and deterministic.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::counter::compare_numbers;
use super::mapping::SyncSpec;
use super::value::{convert, FieldType, Fields, Value};

/// A parsed filter, with its text for messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    pub text: String,
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare(String, Op, Value),
    In(String, Vec<Value>),
    IsNull(String),
    /// A boolean field on its own.
    True(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Number(String),
    Sym(&'static str),
}

fn tokens(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '\'' => {
                let mut text = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\'')) if chars.peek().map(|(_, c)| *c) == Some('\'') => {
                            chars.next();
                            text.push('\'');
                        }
                        Some((_, '\'')) => break,
                        Some((_, c)) => text.push(c),
                        None => {
                            return Err(format!(
                                "the text starting at {} is not closed with '",
                                at + 1
                            ))
                        }
                    }
                }
                out.push(Token::Text(text));
            }
            '(' => out.push(Token::Sym("(")),
            ')' => out.push(Token::Sym(")")),
            ',' => out.push(Token::Sym(",")),
            '=' => out.push(Token::Sym("=")),
            '!' | '<' | '>' => {
                let next = chars.peek().map(|(_, c)| *c);
                let sym = match (c, next) {
                    ('!', Some('=')) | ('<', Some('>')) => "!=",
                    ('<', Some('=')) => "<=",
                    ('>', Some('=')) => ">=",
                    ('<', _) => "<",
                    ('>', _) => ">",
                    _ => return Err(format!("unexpected ! at {}: use != or not", at + 1)),
                };
                if sym.len() == 2 {
                    chars.next();
                }
                out.push(Token::Sym(sym));
            }
            c if c.is_ascii_digit() || c == '-' || c == '.' => {
                let mut n = String::from(c);
                while let Some((_, d)) = chars
                    .peek()
                    .copied()
                    .filter(|(_, d)| d.is_ascii_digit() || *d == '.')
                {
                    n.push(d);
                    chars.next();
                }
                out.push(Token::Number(n));
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut w = String::from(c);
                while let Some((_, d)) = chars
                    .peek()
                    .copied()
                    .filter(|(_, d)| d.is_alphanumeric() || *d == '_' || *d == '.')
                {
                    w.push(d);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
            other => return Err(format!("unexpected {other:?} at {}", at + 1)),
        }
    }
    Ok(out)
}

/// What a name in a filter stands for: the name its value is looked up by and its type, or
/// why it stands for nothing.
pub type FieldLookup<'a> = &'a dyn Fn(&str) -> Result<(String, FieldType), String>;

struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    /// The field a name stands for: its common name and type, or why it is none.
    field: FieldLookup<'a>,
}

impl Parser<'_> {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let yes = self.peek_word(word);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn eat(&mut self, sym: &str) -> bool {
        let yes = matches!(self.tokens.get(self.at), Some(Token::Sym(s)) if *s == sym);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.eat_word("or") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.not()?;
        while self.eat_word("and") {
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.eat_word("not") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        if self.eat("(") {
            let e = self.or()?;
            if !self.eat(")") {
                return Err("a ( is not closed".into());
            }
            return Ok(e);
        }
        let name = match self.next() {
            Some(Token::Word(w)) => w,
            Some(other) => return Err(format!("expected a field name, found {}", show(&other))),
            None => return Err("the filter ends where a field name is expected".into()),
        };
        let (field, ty) = (self.field)(&name)?;
        if self.eat_word("is") {
            let negated = self.eat_word("not");
            if !self.eat_word("null") {
                return Err(format!("{name} is ...: expected null or not null"));
            }
            let e = Expr::IsNull(field);
            return Ok(if negated { Expr::Not(Box::new(e)) } else { e });
        }
        let negated_in = self.peek_word("not")
            && matches!(self.tokens.get(self.at + 1), Some(Token::Word(w)) if w.eq_ignore_ascii_case("in"));
        if negated_in {
            self.at += 1;
        }
        if self.eat_word("in") {
            if !self.eat("(") {
                return Err(format!("{name} in: expected ( and a list of values"));
            }
            let mut values = Vec::new();
            loop {
                values.push(self.literal(&name, ty)?);
                if self.eat(")") {
                    break;
                }
                if !self.eat(",") {
                    return Err(format!("{name} in (...): expected , or )"));
                }
            }
            let e = Expr::In(field, values);
            return Ok(if negated_in {
                Expr::Not(Box::new(e))
            } else {
                e
            });
        }
        let op = match self.tokens.get(self.at) {
            Some(Token::Sym("=")) => Op::Eq,
            Some(Token::Sym("!=")) => Op::Ne,
            Some(Token::Sym("<")) => Op::Lt,
            Some(Token::Sym("<=")) => Op::Le,
            Some(Token::Sym(">")) => Op::Gt,
            Some(Token::Sym(">=")) => Op::Ge,
            _ if ty == FieldType::Boolean => return Ok(Expr::True(field)),
            Some(other) => {
                return Err(format!(
                    "after {name}: expected a comparison, in or is, found {}",
                    show(other)
                ))
            }
            None => {
                return Err(format!(
                    "the filter ends after {name}: compare it with something"
                ))
            }
        };
        self.at += 1;
        let value = self.literal(&name, ty)?;
        if matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge)
            && matches!(ty, FieldType::Boolean | FieldType::Bytes | FieldType::Json)
        {
            return Err(format!(
                "{name} is {ty:?}: it has no order to compare with <, >"
            ));
        }
        Ok(Expr::Compare(field, op, value))
    }

    fn literal(&mut self, name: &str, ty: FieldType) -> Result<Value, String> {
        let v = match self.next() {
            Some(Token::Text(t)) => Value::Text(t),
            Some(Token::Number(n)) if n.contains('.') => Value::Decimal(n),
            Some(Token::Number(n)) => n
                .parse()
                .map(Value::Int)
                .map_err(|_| format!("{n} is not a number"))?,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("null") => {
                return Err(format!("compare {name} with null by {name} is null"))
            }
            Some(other) => {
                return Err(format!(
                    "expected a value for {name}, found {}",
                    show(&other)
                ))
            }
            None => {
                return Err(format!(
                    "the filter ends where a value for {name} is expected"
                ))
            }
        };
        let shown = v.display();
        convert(v, ty).map_err(|why| format!("{name} is {ty:?}, and {shown} cannot be one: {why}"))
    }
}

fn show(t: &Token) -> String {
    match t {
        Token::Word(w) => w.clone(),
        Token::Text(t) => format!("'{t}'"),
        Token::Number(n) => n.clone(),
        Token::Sym(s) => (*s).to_owned(),
    }
}

impl Filter {
    /// Parses a filter; `field` gives the field a name stands for (the name the record's
    /// values are looked up by) and its type, or why there is none.
    pub fn parse(text: &str, field: FieldLookup<'_>) -> Result<Filter, String> {
        let mut p = Parser {
            tokens: tokens(text)?,
            at: 0,
            field,
        };
        if p.tokens.is_empty() {
            return Err("the filter is empty".into());
        }
        let expr = p.or()?;
        if let Some(t) = p.tokens.get(p.at) {
            return Err(format!(
                "unexpected {} after a complete condition (join conditions with and / or)",
                show(t)
            ));
        }
        Ok(Filter {
            text: text.to_owned(),
            expr,
        })
    }

    /// Whether a record's fields (by common name) pass.
    pub fn passes(&self, fields: &Fields) -> bool {
        eval(&self.expr, fields)
    }
}

fn eval(e: &Expr, f: &Fields) -> bool {
    let value = |name: &str| f.get(name).filter(|v| !matches!(v, Value::Null));
    match e {
        Expr::And(a, b) => eval(a, f) && eval(b, f),
        Expr::Or(a, b) => eval(a, f) || eval(b, f),
        Expr::Not(a) => !eval(a, f),
        Expr::IsNull(name) => value(name).is_none(),
        Expr::True(name) => matches!(value(name), Some(Value::Bool(true))),
        Expr::In(name, values) => value(name).is_some_and(|v| values.contains(v)),
        Expr::Compare(name, op, lit) => {
            let Some(v) = value(name) else { return false };
            let Some(ord) = order(v, lit) else {
                return *op == Op::Ne;
            };
            match op {
                Op::Eq => ord == Ordering::Equal,
                Op::Ne => ord != Ordering::Equal,
                Op::Lt => ord == Ordering::Less,
                Op::Le => ord != Ordering::Greater,
                Op::Gt => ord == Ordering::Greater,
                Op::Ge => ord != Ordering::Less,
            }
        }
    }
}

/// How two values of one type order; none when they cannot be ordered (different types).
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Int(_) | Value::Decimal(_), Value::Int(_) | Value::Decimal(_)) => {
            compare_numbers(a, b)
        }
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(y),
        (Value::Text(x), Value::Text(y)) => Some(x.cmp(y)),
        (Value::Time(x), Value::Time(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ if a == b => Some(Ordering::Equal),
        _ => None,
    }
}

/// Whether a side's record (its mapped fields by common name) passes that side's filter,
/// which reads them as the side holds them: its own field names, types and values.
pub(crate) fn in_scope(spec: &SyncSpec, side: super::Side, fields: Option<&Fields>) -> bool {
    match (spec.filter(side), fields) {
        (Some(filter), Some(fields)) => {
            let shaped: Fields = spec
                .map_out(side, fields)
                .unwrap_or_else(|_| {
                    // A value the side cannot hold cannot be a side's: each field alone.
                    fields
                        .iter()
                        .filter_map(|(k, v)| {
                            let one: Fields = [(k.clone(), v.clone())].into();
                            spec.map_out(side, &one).ok()?.pop()
                        })
                        .collect()
                })
                .into_iter()
                .collect();
            filter.passes(&shaped)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(name: &str) -> Result<(String, FieldType), String> {
        match name {
            "status" => Ok(("status".into(), FieldType::Text)),
            "credit" | "balance" => Ok(("credit".into(), FieldType::Decimal)),
            "age" => Ok(("age".into(), FieldType::Integer)),
            "vip" => Ok(("vip".into(), FieldType::Boolean)),
            other => Err(format!("no field {other}")),
        }
    }

    fn record(pairs: &[(&str, Value)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn conditions_combine_as_written() {
        let f = Filter::parse(
            "status in ('active', 'trial') and (credit >= 10.5 or vip) and not age < 18",
            &fields,
        )
        .unwrap();
        let r = |status: &str, credit: &str, vip: bool, age: i64| {
            record(&[
                ("status", Value::Text(status.into())),
                ("credit", Value::Decimal(credit.into())),
                ("vip", Value::Bool(vip)),
                ("age", Value::Int(age)),
            ])
        };
        assert!(f.passes(&r("active", "10.50", false, 30)));
        assert!(f.passes(&r("trial", "1", true, 30)));
        assert!(!f.passes(&r("lead", "99", true, 30)));
        assert!(!f.passes(&r("active", "9.99", false, 30)));
        assert!(!f.passes(&r("active", "99", false, 17)));
    }

    #[test]
    fn an_empty_value_compares_false_and_is_null() {
        let f = Filter::parse("status = 'active'", &fields).unwrap();
        assert!(!f.passes(&record(&[("status", Value::Null)])));
        assert!(!f.passes(&Fields::new()));
        let g = Filter::parse("status != 'active'", &fields).unwrap();
        assert!(!g.passes(&Fields::new()), "null != x is not true either");
        let h = Filter::parse("status is null or status = 'x'", &fields).unwrap();
        assert!(h.passes(&Fields::new()));
        let k = Filter::parse("status is not null", &fields).unwrap();
        assert!(k.passes(&record(&[("status", Value::Text(String::new()))])));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, says) in [
            ("age = 'old'", "age is Integer"),
            ("colour = 'red'", "no field colour"),
            ("status = 'a' status = 'b'", "join conditions"),
            ("(status = 'a'", "not closed"),
            ("vip > true", "no order"),
            ("status = null", "is null"),
            ("status = 'open", "not closed"),
            ("", "empty"),
        ] {
            let err = Filter::parse(text, &fields).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}

/// What the filters make of a link before it is merged.
#[derive(Debug, Default)]
pub(crate) struct Scoped {
    /// The link is in scope: merge it.
    pub merge: bool,
    pub ops: Vec<(super::Side, super::OpKind)>,
    pub conflicts: Vec<super::ConflictNote>,
    /// A held "delete the copy?" that no longer stands: the record passes again.
    pub agreed: bool,
    /// The link left its filter, or came back, in this plan.
    pub left: bool,
    pub entered: bool,
}

/// Applies the sync's filters to a link. A link syncs while every record it has passes its
/// side's filter. When one leaves, the link stops syncing and the copies on the other sides
/// are kept, deleted, or held for a person ([`super::Leaving`]); when it passes again, the
/// link syncs again from where it was, and a copy the filter deleted is created anew.
pub(crate) fn scope(
    link: &mut super::Link,
    spec: &SyncSpec,
    held: &std::collections::BTreeSet<String>,
) -> Scoped {
    use super::{ConflictNote, Leaving, LinkStatus, OpKind, Side, SideState, WHOLE_RECORD};
    let mut out = Scoped::default();
    let filtered = link.status == LinkStatus::Filtered;
    if (!spec.scope.any() && !filtered)
        || !matches!(link.status, LinkStatus::Active | LinkStatus::Filtered)
    {
        out.merge = true;
        return out;
    }
    let outside: Vec<Side> = Side::all(link.sides())
        .filter(|s| {
            let st = link.side(*s);
            st.exists() && !in_scope(spec, *s, st.seen.as_ref())
        })
        .collect();
    if outside.is_empty() {
        if filtered {
            link.status = LinkStatus::Active;
            link.delete_approved = false;
            link.copy_kept = false;
            out.entered = true;
            // A copy deleted while the record was out (by the filter, or by a person) is
            // made again: the record is new to that side.
            for side in Side::all(link.sides()) {
                if link.side(side).deleted {
                    *link.side_mut(side) = SideState::default();
                    link.base.clear();
                }
            }
        }
        // A held leaving closes once the record passes again. Also when the link came back
        // without this plan (a crash's recovery committed it as a write planned it): with both
        // records there, a whole-record question can only be a leaving's.
        out.agreed = held.contains(WHOLE_RECORD) && link.each_side().all(|(_, s)| s.exists());
        out.merge = true;
        return out;
    }
    if !filtered {
        link.status = LinkStatus::Filtered;
        out.left = true;
    }
    let [gone] = outside.as_slice() else {
        return out; // several records are out: nothing of them is synced
    };
    // The copies of the record that left, on every other side.
    let copies: Vec<(Side, String, Option<String>)> = link
        .each_side()
        .filter(|(s, st)| s != gone && st.exists())
        .filter_map(|(s, st)| Some((s, st.id.clone()?, st.version.clone())))
        .collect();
    if copies.is_empty() {
        return out;
    }
    let delete = match spec.scope.leaving {
        Leaving::Keep => false,
        Leaving::Delete => true,
        Leaving::Hold if link.delete_approved => true,
        Leaving::Hold => {
            if !held.contains(WHOLE_RECORD) && !link.copy_kept {
                let filter = spec.filter(*gone).map_or("", |f| f.text.as_str());
                let copy = if copies.len() == 1 { "copy" } else { "copies" };
                out.conflicts.push(ConflictNote {
                    more: Vec::new(),
                    link: link.id,
                    field: WHOLE_RECORD.into(),
                    base: None,
                    left: None,
                    right: None,
                    reason: format!(
                        "left the filter of {} ({filter}): delete its {copy} in {}? Resolve with the value delete, or keep",
                        spec.side_name(*gone),
                        spec.list_sides(copies.iter().map(|(s, ..)| *s))
                    ),
                });
            }
            false
        }
    };
    if delete {
        out.ops.extend(
            copies
                .into_iter()
                .map(|(side, id, if_version)| (side, OpKind::Delete { id, if_version })),
        );
    }
    out
}

/// Applies the filters to what a merge is about to write. A write that would put a record
/// outside its side's filter (the other side set a status the filter excludes) is made, and
/// the link leaves: the copy on the other side is kept with the values written, deleted, or
/// held for a person, as when the record itself left. A record that would be created outside
/// its side's filter is not created: the pair waits, out of step, until it would pass.
pub(crate) fn after_merge(
    link: &mut super::Link,
    spec: &SyncSpec,
    held: &std::collections::BTreeSet<String>,
    ops: &mut Vec<(super::Side, super::OpKind)>,
) -> Scoped {
    use super::{LinkStatus, OpKind, Side};
    let mut out = Scoped::default();
    if !spec.scope.any() || link.status != LinkStatus::Active {
        return out;
    }
    for side in Side::all(link.sides()) {
        let Some(pos) = ops.iter().position(|(s, _)| *s == side) else {
            continue;
        };
        let (creates, written) = match &ops[pos].1 {
            OpKind::Create { fields } => (true, fields),
            OpKind::Update { fields, .. } => (false, fields),
            OpKind::Delete { .. } => continue,
        };
        let mut after = link.side(side).seen.clone().unwrap_or_default();
        after.extend(written.iter().map(|(k, v)| (k.clone(), v.clone())));
        if in_scope(spec, side, Some(&after)) {
            continue;
        }
        link.status = LinkStatus::Filtered;
        out.left = true;
        if creates {
            ops.remove(pos);
            continue;
        }
        // The record leaves once written: the copies on the other sides get what leaving gives
        // them, from the link as it will stand; a copy deleted is not written first.
        let mut projected = link.clone();
        projected.side_mut(side).seen = Some(after);
        let leaving = scope(&mut projected, spec, held);
        let deleted: Vec<Side> = leaving.ops.iter().map(|(s, _)| *s).collect();
        ops.retain(|(s, _)| !deleted.contains(s));
        ops.extend(leaving.ops);
        out.conflicts.extend(leaving.conflicts);
        break;
    }
    out
}
