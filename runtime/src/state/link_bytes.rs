//! Links as the `links` table stores them: a compact binary form, its header first. Intents,
//! which carry a link each, store it the same way.
//!
//! perf over the 10,000-row UPDATE benchmark found links written and read as JSON taking about
//! a sixth of the process's CPU: each link decoded when the cycle loads it, decoded again when
//! the commit replaces it (for the ids and status it had), and encoded. The binary form is about
//! a third of the size (104 bytes for the benchmark's link of four fields, 284 as JSON) and
//! skips parsing text; its header (status and each side's record id) comes
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
//!
//! A row of intents: `INTENTS`, their number, then per intent its link (length, then the link
//! as above), its side's number, and `0` for a create of exactly the link's base or `1` and the
//! op as JSON (small beside the link). Rows stored as JSON before (`[` or `{`) still read.

use super::{dec, enc, same_text, Intent, IntentRef, StateError};
use crate::engine::{Fields, Link, LinkStatus, OpKind, Side, SideState, Value};

/// The first byte of a link in this form (a JSON link begins with `{`).
const FORMAT: u8 = 1;
/// The first byte of a row of intents in this form (JSON ones begin with `[` or `{`).
const INTENTS: u8 = 2;

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

pub(super) fn encode_intents<'a>(
    intents: impl ExactSizeIterator<Item = IntentRef<'a>>,
) -> Result<Vec<u8>, StateError> {
    let mut out = vec![INTENTS];
    put_u64(&mut out, intents.len() as u64);
    for i in intents {
        put_bytes(&mut out, &encode(i.link));
        put_u64(&mut out, i.side.index() as u64);
        match i.op {
            OpKind::Create { fields } if same_text(fields, &i.link.base) => out.push(0),
            op => {
                out.push(1);
                put_bytes(&mut out, &enc(op)?);
            }
        }
    }
    Ok(out)
}

/// The intents of one row: one `record_intents` call's, or those a commit kept. Rows written
/// before intents were grouped hold one intent each, as JSON.
pub(super) fn decode_intents(b: &[u8]) -> Result<Vec<Intent>, StateError> {
    match b.first() {
        Some(&INTENTS) => {}
        Some(b'[') => return dec(b),
        _ => return Ok(vec![dec(b)?]),
    }
    let mut r = Reader { b, at: 1 };
    let n = r.count()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.count()?;
        let link = decode(r.take(len)?)?;
        let side = r.u64()?;
        if side >= link.sides() as u64 {
            return Err(r.damaged("an intent for a side its link does not have"));
        }
        let op = match r.byte()? {
            0 => OpKind::Create {
                fields: link.base.clone(),
            },
            1 => {
                let len = r.count()?;
                dec(r.take(len)?)?
            }
            _ => return Err(r.damaged("an unknown op marker")),
        };
        out.push(Intent {
            link,
            side: Side::nth(side as usize),
            op,
        });
    }
    if r.at != b.len() {
        return Err(r.damaged("bytes after its end"));
    }
    Ok(out)
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
            "damaged: {what} at byte {} of {}",
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

    fn intents() -> Vec<Intent> {
        let mut link = Link::with_sides(4, 3);
        link.base = every_value();
        link.left = side("1", Some(every_value()));
        let update = OpKind::Update {
            id: "r1".into(),
            fields: every_value(),
            if_version: Some("v2".into()),
        };
        let delete = OpKind::Delete {
            id: "m".into(),
            if_version: None,
        };
        let mut other = every_value();
        other.remove("a");
        [
            (
                Side::RIGHT,
                OpKind::Create {
                    fields: link.base.clone(),
                },
            ),
            (Side::nth(2), OpKind::Create { fields: other }),
            (Side::RIGHT, update),
            (Side::nth(2), delete),
        ]
        .into_iter()
        .map(|(side, op)| Intent {
            link: link.clone(),
            side,
            op,
        })
        .collect()
    }

    #[test]
    fn intents_read_back_as_they_were_written() {
        let intents = intents();
        let row = encode_intents(intents.iter().map(Intent::borrowed)).unwrap();
        let back = decode_intents(&row).unwrap();
        assert_eq!(format!("{back:?}"), format!("{intents:?}"));
        // Grouped and one by one as JSON, as earlier versions stored them.
        let json = super::super::enc(&intents).unwrap();
        assert_eq!(
            format!("{:?}", decode_intents(&json).unwrap()),
            format!("{intents:?}")
        );
        let one = super::super::enc(&intents[2]).unwrap();
        assert_eq!(decode_intents(&one).unwrap(), vec![intents[2].clone()]);
        assert!(
            row.len() < json.len(),
            "{} against {}",
            row.len(),
            json.len()
        );
    }

    #[test]
    fn a_damaged_row_of_intents_is_an_error_not_a_panic() {
        let row = encode_intents(intents().iter().map(Intent::borrowed)).unwrap();
        for n in 1..row.len() {
            assert!(decode_intents(&row[..n]).is_err(), "cut at {n}");
        }
        // An intent for a fourth side of a link of three.
        let mut link = Link::new(1);
        link.more = vec![SideState::default()];
        let i = Intent {
            link,
            side: Side::nth(2),
            op: OpKind::Create {
                fields: Fields::new(),
            },
        };
        let mut row = encode_intents([i.borrowed()].into_iter()).unwrap();
        let at = row.len() - 2;
        assert_eq!(row[at], 2);
        row[at] = 3;
        let e = decode_intents(&row).unwrap_err().to_string();
        assert!(e.contains("a side its link does not have"), "{e}");
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
