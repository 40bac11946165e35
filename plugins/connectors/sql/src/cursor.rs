//! The connector's cursor: where a stream's reader stands. Opaque to the host.
//!
//! A first read (no cursor) starts a snapshot of the rows that exist, paged by primary key, and
//! remembers the change-log position taken when capture was already installed; changes made
//! while the snapshot pages are read are in the log after that position, so nothing falls between
//! the snapshot and the log.

use duplex_sdk::{Error, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Cursor {
    /// Reading existing rows: the log position to continue from afterwards, and the last
    /// primary key read (none before the first page).
    Snapshot { log_from: i64, after: Option<Value> },
    /// Reading the change log after this position.
    Log { after: i64 },
}

impl Cursor {
    pub fn encode(&self) -> String {
        match self {
            Cursor::Log { after } => format!("log:{after}"),
            Cursor::Snapshot { log_from, after } => match after {
                None => format!("snap:{log_from}:-"),
                Some(Value::Integer(i)) => format!("snap:{log_from}:i:{i}"),
                Some(v) => format!("snap:{log_from}:t:{}", v.to_plain_string()),
            },
        }
    }

    pub fn decode(s: &str) -> Result<Cursor, Error> {
        let bad = || Error::permanent(format!("cursor {s:?} was not made by this connector"));
        if let Some(n) = s.strip_prefix("log:") {
            return Ok(Cursor::Log {
                after: n.parse().map_err(|_| bad())?,
            });
        }
        let rest = s.strip_prefix("snap:").ok_or_else(bad)?;
        let (from, after) = rest.split_once(':').ok_or_else(bad)?;
        let log_from = from.parse().map_err(|_| bad())?;
        let after = if after == "-" {
            None
        } else if let Some(i) = after.strip_prefix("i:") {
            Some(Value::Integer(i.parse().map_err(|_| bad())?))
        } else if let Some(t) = after.strip_prefix("t:") {
            Some(Value::Text(t.to_owned()))
        } else {
            return Err(bad());
        };
        Ok(Cursor::Snapshot { log_from, after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        for c in [
            Cursor::Log { after: 42 },
            Cursor::Snapshot {
                log_from: 7,
                after: None,
            },
            Cursor::Snapshot {
                log_from: 7,
                after: Some(Value::Integer(-3)),
            },
            Cursor::Snapshot {
                log_from: 0,
                after: Some(Value::Text("a:b".into())),
            },
        ] {
            assert_eq!(Cursor::decode(&c.encode()).ok(), Some(c));
        }
        assert!(Cursor::decode("elsewhere:1").is_err());
    }
}
