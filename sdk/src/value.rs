//! Values and errors, shared by connectors and rules.

use crate::wit_types;

pub use wit_types::{Error, FieldValue, Invalid, RateLimit, Value};

/// A point in time: microseconds since the Unix epoch, UTC.
pub type Timestamp = i64;

impl Value {
    /// The text, if this is `Value::Text`.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is `Value::Integer`.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// Whether this is `Value::Null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as it reads to a person, for ids and messages: text and decimals as they are,
    /// numbers in decimal, null as an empty string.
    pub fn to_plain_string(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Boolean(b) => b.to_string(),
            Value::Integer(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Decimal(s) | Value::Text(s) | Value::Json(s) => s.clone(),
            Value::Bytes(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
            Value::Timestamp(t) => t.to_string(),
        }
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Integer(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl FieldValue {
    /// A named value.
    pub fn new(name: impl Into<String>, value: impl Into<Value>) -> Self {
        FieldValue {
            name: name.into(),
            value: value.into(),
        }
    }
}

impl Error {
    /// The configuration is wrong.
    pub fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }
    /// Anything retrying will not fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Error::Permanent(message.into())
    }
    /// A passing failure; the host retries.
    pub fn transient(message: impl Into<String>) -> Self {
        Error::Transient(message.into())
    }
    /// The record or stream does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::NotFound(message.into())
    }
    /// The record changed since the version the write was based on.
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict(message.into())
    }
    /// The system refused the data, optionally naming the field at fault.
    pub fn validation(field: Option<&str>, message: impl Into<String>) -> Self {
        Error::Validation(Invalid {
            field: field.map(str::to_owned),
            message: message.into(),
        })
    }
}
