//! Links as the `links` table stores them: a compact binary form, its header first.
//!
//! perf over the 10,000-row UPDATE benchmark found links written and read as JSON taking about
//! a sixth of the process's CPU: each link decoded when the cycle loads it, decoded again when
//! the commit replaces it (for the ids and status it had), and encoded. The binary form is a
//! third smaller and skips parsing text; its header (status and each side's record id) comes
//! first, so the commit reads only that of the link it replaces ([`head`]).
//!
//! Links stored as JSON before (they begin with `{`) still read; a link is written in this form
//! the next time it changes.
//!
//! Layout: `FORMAT`, link id, status, flags (delete approved, copy kept), number of sides, each
//! side's record id; then the base, the pins, and per side its flags, seen fields (unless they
//! are the base), version, change time, rewritten fields and counted values. Numbers are
//! LEB128 varints (signed ones zigzagged), text is its length then UTF-8, fields are their
//! count then name and value each.

use super::{dec, same_text, StateError};
use crate::engine::{Fields, Link, LinkStatus, SideState, Value};

/// The first byte of a link in this form (a JSON link begins with `{`).
const FORMAT: u8 = 1;

const SEEN: u8 = 1;
const SEEN_IS_BASE: u8 = 2;
const READ_TIME: u8 = 4;
const DELETED: u8 = 8;
const VERSION: u8 = 16;
const CHANGED_AT: u8 = 32;

const DELETE_APPROVED: u8 = 1;
const COPY_KEPT: u8 = 2;

/// What a commit needs of the link it replaces.
pub(super) struct Head {
    pub status: LinkStatus,
    /// Each side's record id: left, right, then further sides.
    pub ids: Vec<Option<String>>,
}

pub(super) fn encode(link: &Link) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.push(FORMAT);
    put_u64(&mut out, link.id);
    out.push(status_byte(link.status));
    out.push(
        u8::from(link.delete_approved) * DELETE_APPROVED + u8::from(link.copy_kept) * COPY_KEPT,
    );
    put_u64(&mut out, 2 + link.more.len() as u64);
    for (_, st) in link.each_side() {
        put_opt_str(&mut out, st.id.as_deref());
    }
    put_fields(&mut out, &link.base);
    put_fields(&mut out, &link.pins);
    for (_, st) in link.each_side() {
        let is_base = st.seen.as_ref().is_some_and(|s| same_text(s, &link.base));
        let flags = [
            (st.seen.is_some() && !is_base, SEEN),
            (is_base, SEEN_IS_BASE),
            (st.read_time, READ_TIME),
            (st.deleted, DELETED),
            (st.version.is_some(), VERSION),
            (st.changed_at.is_some(), CHANGED_AT),
        ];
        out.push(flags.iter().filter(|(on, _)| *on).map(|(_, f)| f).sum());
        if let (Some(seen), false) = (&st.seen, is_base) {
            put_fields(&mut out, seen);
        }
        if let Some(v) = &st.version {
            put_str(&mut out, v);
        }
        if let Some(t) = st.changed_at {
            put_i64(&mut out, t);
        }
        put_u64(&mut out, st.rewritten.len() as u64);
        for f in &st.rewritten {
            put_str(&mut out, f);
        }
        put_fields(&mut out, &st.counted);
    }
    out
}

pub(super) fn decode(b: &[u8]) -> Result<Link, StateError> {
    if b.first() != Some(&FORMAT) {
        return dec(b);
    }
    let mut r = Reader { b, at: 1 };
    let id = r.u64()?;
    let status = r.status()?;
    let flags = r.byte()?;
    let ids = r.ids()?;
    let base = r.fields()?;
    let pins = r.fields()?;
    let mut sides = Vec::with_capacity(ids.len());
    for id in ids {
        let flags = r.byte()?;
        let on = |f: u8| flags & f != 0;
        let seen = if on(SEEN) {
            Some(r.fields()?)
        } else if on(SEEN_IS_BASE) {
            Some(base.clone())
        } else {
            None
        };
        let version = if on(VERSION) { Some(r.string()?) } else { None };
        let changed_at = if on(CHANGED_AT) { Some(r.i64()?) } else { None };
        let rewritten = (0..r.count()?)
            .map(|_| r.string())
            .collect::<Result<_, _>>()?;
        sides.push(SideState {
            id,
            seen,
            version,
            changed_at,
            read_time: on(READ_TIME),
            rewritten,
            deleted: on(DELETED),
            counted: r.fields()?,
        });
    }
    if r.at != b.len() {
        return Err(r.damaged("bytes after its end"));
    }
    let mut sides = sides.into_iter();
    let (Some(left), Some(right)) = (sides.next(), sides.next()) else {
        return Err(r.damaged("fewer than two sides"));
    };
    Ok(Link {
        id,
        left,
        right,
        more: sides.collect(),
        base,
        pins,
        delete_approved: flags & DELETE_APPROVED != 0,
        copy_kept: flags & COPY_KEPT != 0,
        status,
    })
}

/// The status and record ids of a stored link, without decoding its fields.
pub(super) fn head(b: &[u8]) -> Result<Head, StateError> {
    if b.first() != Some(&FORMAT) {
        let link: Link = dec(b)?;
        return Ok(Head {
            status: link.status,
            ids: link.each_side().map(|(_, st)| st.id.clone()).collect(),
        });
    }
    let mut r = Reader { b, at: 1 };
    r.u64()?;
    let status = r.status()?;
    r.byte()?;
    Ok(Head {
        status,
        ids: r.ids()?,
    })
}

fn status_byte(s: LinkStatus) -> u8 {
    match s {
        LinkStatus::Active => 0,
        LinkStatus::Detached => 1,
        LinkStatus::Deleted => 2,
        LinkStatus::Filtered => 3,
    }
}

fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_i64(out: &mut Vec<u8>, n: i64) {
    put_u64(out, ((n << 1) ^ (n >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u64(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn put_fields(out: &mut Vec<u8>, fields: &Fields) {
    put_u64(out, fields.len() as u64);
    for (name, v) in fields {
        put_str(out, name);
        match v {
            Value::Null => out.push(0),
            Value::Bool(false) => out.push(1),
            Value::Bool(true) => out.push(2),
            Value::Int(i) => {
                out.push(3);
                put_i64(out, *i);
            }
            Value::Float(f) => {
                out.push(4);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Decimal(d) => {
                out.push(5);
                put_str(out, d);
            }
            Value::Text(t) => {
                out.push(6);
                put_str(out, t);
            }
            Value::Bytes(b) => {
                out.push(7);
                put_bytes(out, b);
            }
            Value::Time(t) => {
                out.push(8);
                put_i64(out, *t);
            }
            Value::Json(j) => {
                out.push(9);
                put_str(out, j);
            }
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn damaged(&self, what: &str) -> StateError {
        StateError::Storage(format!(
            "a stored link is damaged: {what} at byte {} of {}",
            self.at,
            self.b.len()
        ))
    }

    fn byte(&mut self) -> Result<u8, StateError> {
        let b = *self.b.get(self.at).ok_or_else(|| self.damaged("it ends"))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or_else(|| self.damaged("it ends"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64, StateError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(self.damaged("a number too long"))
    }

    fn i64(&mut self) -> Result<i64, StateError> {
        let n = self.u64()?;
        Ok((n >> 1) as i64 ^ -((n & 1) as i64))
    }

    /// A count of items that follow, each at least a byte: larger than what is left is damage
    /// (and would otherwise reserve memory for it).
    fn count(&mut self) -> Result<usize, StateError> {
        let n = self.u64()?;
        if n > (self.b.len() - self.at) as u64 {
            return Err(self.damaged("a count past its end"));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, StateError> {
        let n = self.count()?;
        Ok(self.take(n)?.to_vec())
    }

    fn string(&mut self) -> Result<String, StateError> {
        let n = self.count()?;
        let at = self.at;
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| {
            self.at = at;
            self.damaged("text that is not UTF-8")
        })?;
        Ok(s.to_owned())
    }

    fn status(&mut self) -> Result<LinkStatus, StateError> {
        Ok(match self.byte()? {
            0 => LinkStatus::Active,
            1 => LinkStatus::Detached,
            2 => LinkStatus::Deleted,
            3 => LinkStatus::Filtered,
            _ => return Err(self.damaged("an unknown status")),
        })
    }

    fn ids(&mut self) -> Result<Vec<Option<String>>, StateError> {
        (0..self.count()?)
            .map(|_| match self.byte()? {
                0 => Ok(None),
                1 => self.string().map(Some),
                _ => Err(self.damaged("an unknown id marker")),
            })
            .collect()
    }

    fn fields(&mut self) -> Result<Fields, StateError> {
        let mut out = Fields::new();
        for _ in 0..self.count()? {
            let name = self.string()?;
            let v = match self.byte()? {
                0 => Value::Null,
                1 => Value::Bool(false),
                2 => Value::Bool(true),
                3 => Value::Int(self.i64()?),
                4 => {
                    let b = self.take(8)?;
                    Value::Float(f64::from_bits(u64::from_le_bytes(
                        b.try_into().expect("eight bytes"),
                    )))
                }
                5 => Value::Decimal(self.string()?),
                6 => Value::Text(self.string()?),
                7 => Value::Bytes(self.bytes()?),
                8 => Value::Time(self.i64()?),
                9 => Value::Json(self.string()?),
                _ => return Err(self.damaged("an unknown value type")),
            };
            out.insert(name, v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Link;

    fn side(id: &str, seen: Option<Fields>) -> SideState {
        SideState {
            id: Some(id.into()),
            seen,
            version: Some("v9".into()),
            changed_at: Some(-5),
            read_time: true,
            rewritten: ["price".to_owned()].into(),
            deleted: false,
            counted: [("stock".to_owned(), Value::Int(3))].into(),
        }
    }

    fn every_value() -> Fields {
        [
            ("a", Value::Null),
            ("b", Value::Bool(true)),
            ("c", Value::Bool(false)),
            ("d", Value::Int(i64::MIN)),
            ("e", Value::Float(f64::NAN)),
            ("f", Value::Decimal("12.50".into())),
            ("g", Value::Text("Zoë \u{1F600}".into())),
            ("h", Value::Bytes(vec![0, 255, 7])),
            ("i", Value::Time(1_700_000_000_000_000)),
            ("j", Value::Json("{\"k\":[1]}".into())),
            ("k", Value::Int(i64::MAX)),
            ("l", Value::Float(-0.0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn same(a: &Link, b: &Link) {
        // Debug shows a NaN's and a decimal's text as they are; `==` would not.
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn a_link_reads_back_as_it_was_written() {
        let base = every_value();
        let mut other = base.clone();
        other.insert("g".into(), Value::Text("changed".into()));
        let link = Link {
            left: side("1", Some(base.clone())),
            right: side("r1", Some(other)),
            more: vec![SideState::default(), side("m", None)],
            base,
            pins: [("f".to_owned(), Value::Decimal("1".into()))].into(),
            delete_approved: true,
            copy_kept: true,
            status: LinkStatus::Filtered,
            ..Link::with_sides(u64::MAX, 4)
        };
        let bytes = encode(&link);
        same(&decode(&bytes).unwrap(), &link);
        let h = head(&bytes).unwrap();
        assert_eq!(h.status, LinkStatus::Filtered);
        let ids = [Some("1"), Some("r1"), None, Some("m")].map(|s| s.map(str::to_owned));
        assert_eq!(h.ids, ids);
        // Smaller than the JSON it replaces.
        assert!(bytes.len() < super::super::enc(&link).unwrap().len());
    }

    #[test]
    fn a_link_stored_as_json_still_reads() {
        let mut link = Link::new(3);
        link.left = side("1", Some(every_value()));
        link.base = every_value();
        let json = super::super::enc(&link).unwrap();
        assert_eq!(json[0], b'{');
        same(&decode(&json).unwrap(), &link);
        assert_eq!(head(&json).unwrap().ids, [Some("1".to_owned()), None]);
    }

    #[test]
    fn a_damaged_link_is_an_error_not_a_panic() {
        let mut link = Link::new(3);
        link.left = side("1", Some(every_value()));
        let bytes = encode(&link);
        for n in 1..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "cut at {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let e = decode(&longer).unwrap_err().to_string();
        assert!(e.contains("bytes after its end"), "{e}");
        let mut huge = vec![FORMAT];
        put_u64(&mut huge, 1);
        huge.extend([0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode(&huge)
            .unwrap_err()
            .to_string()
            .contains("count past"));
    }
}
