//! A change feed for APIs that offer only "modified since" (feature `connector`).
//!
//! Reading `modified >= last time seen` loses and repeats changes in three ways: several records
//! share a timestamp across a page boundary, a search index shows a record some seconds after
//! its modification time, and clocks have a granularity. [`SinceCursor`] keeps the newest time
//! seen and every (id, version time) emitted within an overlap window before it; each read asks
//! from `newest - overlap`, skips what it already emitted, and emits anything new. So:
//! - records sharing a timestamp with the page boundary are read again and skipped, never lost;
//! - a record that appears late, with a time inside the window, is still emitted;
//! - a record is emitted again only when its time changes, never endlessly.
//!
//! A read pages on from the same lower bound while a whole page was emitted before (more
//! records share the window than a page holds), and stops at the first page with anything new.
//!
//! What it cannot catch: a record that becomes visible more than `overlap` after its
//! modification time. Choose the overlap above the API's documented index lag.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Where a "modified since" feed stands. Serialised as the connector's cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinceCursor {
    /// The newest modification time emitted (milliseconds, or any unit the API uses).
    pub newest: i64,
    /// What was emitted at times within the overlap window: id to the time emitted.
    pub seen: BTreeMap<String, i64>,
}

impl SinceCursor {
    /// The cursor from the host's text (none: the start of the feed).
    pub fn parse(cursor: Option<&str>) -> Result<SinceCursor, Error> {
        match cursor {
            None => Ok(SinceCursor::default()),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                Error::permanent(format!("the feed's cursor {text:?} does not parse: {e}"))
            }),
        }
    }

    /// The cursor as text for the host.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The lower bound of the next query: `overlap` before the newest time emitted.
    pub fn from(&self, overlap: i64) -> i64 {
        if self.newest == 0 && self.seen.is_empty() {
            return 0;
        }
        self.newest.saturating_sub(overlap)
    }

    /// Whether a record read at version time `modified` is new to the feed, and if so counts it
    /// as emitted. A record whose time went backwards (a restored backup) counts as new too.
    pub fn admit(&mut self, id: &str, modified: i64) -> bool {
        if self.seen.get(id) == Some(&modified) {
            return false;
        }
        self.seen.insert(id.to_owned(), modified);
        self.newest = self.newest.max(modified);
        true
    }

    /// Drops what fell out of the overlap window: it can no longer be read again.
    pub fn prune(&mut self, overlap: i64) {
        let floor = self.newest.saturating_sub(overlap);
        self.seen.retain(|_, t| *t >= floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing sorted by (time, id) from a lower bound, a page at an offset: what a search
    /// API does.
    fn query(
        records: &[(&str, i64)],
        from: i64,
        offset: usize,
        limit: usize,
    ) -> Vec<(String, i64)> {
        let mut r: Vec<(String, i64)> = records
            .iter()
            .filter(|(_, t)| *t >= from)
            .map(|(i, t)| (i.to_string(), *t))
            .collect();
        r.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        r.into_iter().skip(offset).take(limit).collect()
    }

    fn read(c: &mut SinceCursor, records: &[(&str, i64)], limit: usize) -> Vec<String> {
        let overlap = 10;
        let from = c.from(overlap);
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let page = query(records, from, offset, limit);
            for (id, t) in &page {
                if c.admit(id, *t) {
                    out.push(id.clone());
                }
            }
            if !out.is_empty() || page.len() < limit {
                break;
            }
            offset += limit;
        }
        c.prune(overlap);
        out
    }

    #[test]
    fn equal_times_across_pages_are_neither_lost_nor_repeated() {
        let records = [("a", 100), ("b", 100), ("c", 100), ("d", 101)];
        let mut c = SinceCursor::default();
        let mut all = Vec::new();
        for _ in 0..4 {
            all.extend(read(&mut c, &records, 2));
        }
        // Two a page: a, b; then a and b again (skipped), so the next page: c, d.
        assert_eq!(all, ["a", "b", "c", "d"]);
        assert!(
            read(&mut c, &records, 2).is_empty(),
            "an idle feed emits nothing"
        );
    }

    #[test]
    fn a_late_record_inside_the_window_is_emitted_and_an_edit_is_emitted_again() {
        let mut records = vec![("a", 100), ("b", 105)];
        let mut c = SinceCursor::default();
        assert_eq!(read(&mut c, &records, 10), ["a", "b"]);
        // The index shows "x" late, with a time before the newest emitted.
        records.push(("x", 98));
        assert_eq!(read(&mut c, &records, 10), ["x"]);
        // "a" edited again.
        records[0] = ("a", 120);
        assert_eq!(read(&mut c, &records, 10), ["a"]);
        assert!(read(&mut c, &records, 10).is_empty());
        assert!(c.seen.len() <= 3, "the window is pruned: {:?}", c.seen);
    }
}
