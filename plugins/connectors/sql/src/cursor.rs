//! The connector's cursor: where a stream's reader stands. Opaque to the host.
//!
//! A first read (no cursor) starts a snapshot of the rows that exist, paged by primary key, and
//! remembers the change-log position taken when capture was already installed; changes made
//! while the snapshot pages are read are in the log after that position, so nothing falls between
//! the snapshot and the log. Log positions are the dialect's own (a sequence number, or a
//! transaction id and a sequence number on PostgreSQL).
//!
//! A snapshot also carries how many rows were left to read, counted when its first page was
//! full: the batches' `remaining`, for the host's progress line. Cursors written before it was
//! kept (`snap|..`) still read, counting nothing.

use duplex_sdk::{Error, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Cursor {
    /// Reading existing rows: the log position to continue from afterwards, the last primary
    /// key read (none before the first page) and about how many rows are left after it (none
    /// where the table was not counted).
    Snapshot {
        log_from: String,
        after: Option<Value>,
        left: Option<u64>,
    },
    /// Reading the change log after this position.
    Log { pos: String },
}

impl Cursor {
    pub fn encode(&self) -> String {
        match self {
            Cursor::Log { pos } => format!("log|{pos}"),
            Cursor::Snapshot {
                log_from,
                after,
                left,
            } => {
                let head = match left {
                    None => "snap".to_owned(),
                    Some(n) => format!("snap+{n}"),
                };
                match after {
                    None => format!("{head}|{log_from}|-"),
                    Some(Value::Integer(i)) => format!("{head}|{log_from}|i|{i}"),
                    Some(v) => format!("{head}|{log_from}|t|{}", v.to_plain_string()),
                }
            }
        }
    }

    pub fn decode(s: &str) -> Result<Cursor, Error> {
        let bad = || Error::permanent(format!("cursor {s:?} was not made by this connector"));
        if let Some(pos) = s.strip_prefix("log|") {
            return Ok(Cursor::Log {
                pos: pos.to_owned(),
            });
        }
        let (left, rest) = match s.strip_prefix("snap+") {
            Some(counted) => {
                let (n, rest) = counted.split_once('|').ok_or_else(bad)?;
                (Some(n.parse().map_err(|_| bad())?), rest)
            }
            None => (None, s.strip_prefix("snap|").ok_or_else(bad)?),
        };
        let mut parts = rest.splitn(3, '|');
        let log_from = parts.next().ok_or_else(bad)?.to_owned();
        let after = match (parts.next(), parts.next()) {
            (Some("-"), None) => None,
            (Some("i"), Some(i)) => Some(Value::Integer(i.parse().map_err(|_| bad())?)),
            (Some("t"), Some(t)) => Some(Value::Text(t.to_owned())),
            _ => return Err(bad()),
        };
        Ok(Cursor::Snapshot {
            log_from,
            after,
            left,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        for c in [
            Cursor::Log { pos: "42".into() },
            Cursor::Log {
                pos: "7301:12".into(),
            },
            Cursor::Snapshot {
                log_from: "7".into(),
                after: None,
                left: None,
            },
            Cursor::Snapshot {
                log_from: "7:-1".into(),
                after: Some(Value::Integer(-3)),
                left: Some(12),
            },
            Cursor::Snapshot {
                log_from: "0".into(),
                after: Some(Value::Text("a|b:c".into())),
                left: Some(0),
            },
        ] {
            assert_eq!(Cursor::decode(&c.encode()).ok(), Some(c));
        }
        assert!(Cursor::decode("elsewhere:1").is_err());
        assert!(Cursor::decode("snap+x|7|-").is_err());
        // A snapshot's cursor from before the count was kept reads as one not counted.
        assert_eq!(
            Cursor::decode("snap|7|i|5").ok(),
            Some(Cursor::Snapshot {
                log_from: "7".into(),
                after: Some(Value::Integer(5)),
                left: None,
            })
        );
    }
}
