//! The match keys a side holds, known without searching it: a first load into an empty side
//! looked each new record's key up there, and found nothing, every cycle (issue 17).

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::engine::{Fields, MatchKey};

/// Most keys kept for one side: 2^21 hashes take about 36 MB. A side with more is searched, as
/// one read from a cursor is.
const MOST: usize = 1 << 21;

/// The match keys (normalised, hashed) of every record a side has held since the sync read it
/// from its beginning in this process: what its feed delivered from that first read on (which
/// holds the records there before), and what the sync wrote to it (a feed may leave the
/// reader's own writes out, so a side read from its beginning again, after its cursor was
/// reset, while links hold records the sync wrote there, gets no keys). Once a cycle has read
/// the side to the end of its feed, a record whose key is not here has no candidate there, and
/// the side is not searched for it.
///
/// More keys than the side holds cost a search that finds nothing (a key changed or deleted
/// since, two keys with one hash). A key missing would make a record twice; so anything that
/// may hide one (a change whose fields cannot be mapped, a change without the key field, a
/// stopped key field, too many keys) forgets the side's keys: it is searched again, until a
/// read from its beginning starts them afresh. A record made there between the cycle's read
/// and its create is missed, as one made between a search and the create always was.
#[derive(Debug, Default)]
pub struct SeenKeys {
    hashes: HashSet<u64>,
}

impl SeenKeys {
    /// Adds a normalised key; false when that makes too many to keep.
    pub fn insert(&mut self, norm: &str) -> bool {
        self.hashes.insert(hash(norm));
        self.hashes.len() <= MOST
    }

    /// Whether the side may hold a record with this normalised key.
    pub fn may_hold(&self, norm: &str) -> bool {
        self.hashes.contains(&hash(norm))
    }

    /// Adds the key among fields the sync wrote to the side or was told it stored (none: an
    /// update that left it as it was); false when that makes too many to keep.
    pub fn wrote(&mut self, key: &MatchKey, fields: &Fields) -> bool {
        match fields.get(&key.field).and_then(|v| key.normalise(v)) {
            Some(norm) => self.insert(&norm),
            None => true,
        }
    }
}

fn hash(norm: &str) -> u64 {
    let mut h = DefaultHasher::new();
    norm.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_added_may_be_held_and_another_is_not() {
        let mut seen = SeenKeys::default();
        assert!(seen.insert("a@example.com"));
        assert!(seen.may_hold("a@example.com"));
        assert!(!seen.may_hold("b@example.com"));
        assert!(!seen.may_hold("A@example.com"), "keys come normalised");
    }
}
