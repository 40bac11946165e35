//! Field values as the engine compares them.
//!
//! Values are canonical when they enter the engine (decimals without redundant zeros), so that
//! equality means "the same value" and an echo compares equal to what was written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A record's mapped fields, by the sync's common names. Ordered, for deterministic output.
pub type Fields = BTreeMap<String, Value>;

/// One value. How it is stored is the state's business (`state.rs`).
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Exact decimal text, canonical (see [`canonical_decimal`]).
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    /// Microseconds since the Unix epoch, UTC.
    Time(i64),
    Json(String),
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            // By bits: a NaN equals itself, so it is not a change forever.
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            // Canonical on the way in, so equal text is the common case and needs no parsing.
            // Two canonical texts that differ are different numbers: nothing to build.
            (Decimal(a), Decimal(b)) => {
                a == b
                    || (!(is_canonical_decimal(a) && is_canonical_decimal(b))
                        && canonical_decimal(a) == canonical_decimal(b))
            }
            (Text(a), Text(b)) | (Json(a), Json(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Time(a), Time(b)) => a == b,
            _ => false,
        }
    }
}

impl Value {
    /// The same as written, not only equal: `==` takes "12.50" for "12.5", and what is
    /// stored or copied must keep the text it was given.
    pub fn same_text(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Decimal(a), Value::Decimal(b)) => a == b,
            _ => self == other,
        }
    }

    /// Text for messages: short, and says the type where it matters.
    pub fn display(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Decimal(d) => d.clone(),
            Value::Text(t) => format!("{t:?}"),
            Value::Bytes(b) => format!("<{} bytes>", b.len()),
            Value::Time(t) => crate::time::format_sqlite(*t),
            Value::Json(j) => j.clone(),
        }
    }

    /// Makes the value canonical in place; a decimal already canonical (most are, as the host
    /// reads them) keeps its text.
    pub fn canonical(self) -> Value {
        match self {
            Value::Decimal(d) if !is_canonical_decimal(&d) => Value::Decimal(canonical_decimal(&d)),
            v => v,
        }
    }
}

/// The type of a field, as a connector declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Boolean,
    Integer,
    Float,
    Decimal,
    Text,
    Bytes,
    Timestamp,
    Json,
}

/// `"0012.500"` is `"12.5"`, `"-0.0"` is `"0"`, `".5"` is `"0.5"`. Text that is not a plain
/// decimal number is returned unchanged.
pub fn canonical_decimal(s: &str) -> String {
    if !is_plain_decimal(s) {
        return s.to_owned();
    }
    let t = s.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let body = if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    };
    if neg && body != "0" {
        format!("-{body}")
    } else {
        body
    }
}

/// Whether [`canonical_decimal`] returns `s` as it is, told without building the canonical text.
pub fn is_canonical_decimal(s: &str) -> bool {
    if !is_plain_decimal(s) {
        return true;
    }
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (digits, None),
    };
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let int_ok = int == "0" || (!int.is_empty() && !int.starts_with('0') && all_digits(int));
    let frac_ok = frac.is_none_or(|f| !f.is_empty() && !f.ends_with('0') && all_digits(f));
    int_ok && frac_ok && !(neg && int == "0" && frac.is_none())
}

/// An optional sign, digits, an optional point and more digits: what SQL calls a decimal literal.
pub fn is_plain_decimal(s: &str) -> bool {
    let t = s.trim();
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let plain = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    !(int.is_empty() && frac.is_empty()) && plain(int) && plain(frac)
}

/// Converts a value to a field type, or says why it cannot be converted without losing
/// information. Never truncates or rounds.
pub fn convert(v: Value, to: FieldType) -> Result<Value, String> {
    use FieldType as T;
    let v = v.canonical();
    let fail = |v: &Value| Err(format!("{} cannot be stored as {to:?}", v.display()));
    match (v, to) {
        (Value::Null, _) => Ok(Value::Null),
        (v @ Value::Bool(_), T::Boolean)
        | (v @ Value::Int(_), T::Integer)
        | (v @ Value::Float(_), T::Float)
        | (v @ Value::Decimal(_), T::Decimal)
        | (v @ Value::Text(_), T::Text)
        | (v @ Value::Bytes(_), T::Bytes)
        | (v @ Value::Time(_), T::Timestamp)
        | (v @ Value::Json(_), T::Json) => Ok(v),
        (Value::Bool(b), T::Integer) => Ok(Value::Int(b.into())),
        (Value::Bool(b), T::Text) => Ok(Value::Text(b.to_string())),
        (Value::Int(i), T::Boolean) if i == 0 || i == 1 => Ok(Value::Bool(i == 1)),
        (Value::Int(i), T::Decimal) => Ok(Value::Decimal(i.to_string())),
        (Value::Int(i), T::Float) if i.unsigned_abs() <= 1 << 53 => Ok(Value::Float(i as f64)),
        (Value::Int(i), T::Text) => Ok(Value::Text(i.to_string())),
        (Value::Float(f), T::Decimal) if f.is_finite() => {
            Ok(Value::Decimal(canonical_decimal(&f.to_string())))
        }
        (Value::Float(f), T::Integer) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Ok(Value::Int(f as i64))
        }
        (Value::Float(f), T::Text) => Ok(Value::Text(f.to_string())),
        (Value::Decimal(d), T::Integer) if !d.contains('.') => d
            .parse()
            .map(Value::Int)
            .map_err(|_| format!("{d} does not fit a 64-bit integer")),
        (Value::Decimal(d), T::Float) => match d.parse::<f64>() {
            Ok(f) if canonical_decimal(&f.to_string()) == d => Ok(Value::Float(f)),
            _ => Err(format!("{d} cannot be stored as Float without rounding")),
        },
        (Value::Decimal(d), T::Text) => Ok(Value::Text(d)),
        (Value::Text(t), T::Integer) => t
            .trim()
            .parse()
            .map(Value::Int)
            .map_err(|_| format!("{t:?} is not an integer")),
        (Value::Text(t), T::Decimal) if is_plain_decimal(&t) => {
            Ok(Value::Decimal(canonical_decimal(&t)))
        }
        (Value::Text(t), T::Float) => t
            .trim()
            .parse()
            .map(Value::Float)
            .map_err(|_| format!("{t:?} is not a number")),
        (Value::Text(t), T::Boolean) => match t.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("{t:?} is not a boolean")),
        },
        (Value::Text(t), T::Timestamp) => crate::time::parse_sqlite(&t)
            .map(Value::Time)
            .ok_or_else(|| format!("{t:?} is not a timestamp")),
        (Value::Text(t), T::Json) => Ok(Value::Json(t)),
        (Value::Json(j), T::Text) => Ok(Value::Text(j)),
        (Value::Time(t), T::Text) => Ok(Value::Text(crate::time::format_sqlite(t))),
        (v, _) => fail(&v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_compare_by_value_not_by_spelling() {
        assert_eq!(canonical_decimal("0012.500"), "12.5");
        assert_eq!(canonical_decimal("-0.00"), "0");
        assert_eq!(canonical_decimal(".5"), "0.5");
        assert_eq!(canonical_decimal("1e3"), "1e3");
        assert_eq!(
            Value::Decimal("10.50".into()),
            Value::Decimal("10.5".into())
        );
    }

    /// Every string of up to six characters from digits, signs, a point and a space: the quick
    /// test says canonical exactly where building the canonical text gives the same text.
    #[test]
    fn a_canonical_decimal_is_told_without_building_it() {
        const ALPHABET: [char; 7] = ['0', '1', '9', '-', '+', '.', ' '];
        let mut checked = 0;
        let mut canonical = 0;
        for len in 0..=6u32 {
            for mut n in 0..7usize.pow(len) {
                let mut s = String::new();
                for _ in 0..len {
                    s.push(ALPHABET[n % 7]);
                    n /= 7;
                }
                let same = canonical_decimal(&s) == s;
                assert_eq!(is_canonical_decimal(&s), same, "{s:?}");
                checked += 1;
                canonical += usize::from(same && is_plain_decimal(&s));
            }
        }
        assert_eq!(checked, 137_257);
        assert!(
            canonical > 1_000,
            "{canonical} canonical decimals among them"
        );
    }

    #[test]
    fn conversions_refuse_to_lose_information() {
        assert_eq!(
            convert(Value::Text("42".into()), FieldType::Integer),
            Ok(Value::Int(42))
        );
        assert!(convert(Value::Text("4x".into()), FieldType::Integer).is_err());
        assert!(convert(Value::Float(1.5), FieldType::Integer).is_err());
        assert_eq!(
            convert(Value::Int(1), FieldType::Boolean),
            Ok(Value::Bool(true))
        );
        assert!(convert(Value::Int(2), FieldType::Boolean).is_err());
        assert_eq!(
            convert(Value::Float(0.1), FieldType::Decimal),
            Ok(Value::Decimal("0.1".into()))
        );
        assert!(convert(
            Value::Decimal("0.10000000000000000001".into()),
            FieldType::Float
        )
        .is_err());
        assert_eq!(
            convert(Value::Text("x".into()), FieldType::Text),
            Ok(Value::Text("x".into()))
        );
    }
}
