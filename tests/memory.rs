//! An in-memory system with a change feed, behind the driver's `SideIo`: what the sql connector
//! does (current-state reads folded per record, origin tags, versions, conditional writes, one
//! result per op), without a database, so simulations run thousands of schedules in seconds.
//! Faults can be injected: a call fails, and a write may have been applied before it failed.
//!
//! Systems that share a [`World`] share its clock, as two databases on one host would: every
//! change is stamped with it, and every call the driver makes to either system ticks it and may
//! let a person act first ([`World::set_before_call`]), so edits land between any two steps of
//! a cycle.

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use duplex::driver::{IoError, SideIo};
use duplex::plugin::{
    Change, ChangeBatch, ChangeKind, Current, FieldValue, LookupKey, Value, Watched, WitError,
    WriteOp, Written,
};

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    id: String,
    deleted: bool,
    origin: Option<String>,
    /// The world's clock when the change was made.
    at: i64,
    /// The transaction that made it.
    txn: u64,
}

/// What the systems of one simulation share: a clock (microseconds, ticked by every change
/// and every call), and what a person does just before a call.
#[derive(Default)]
pub struct World {
    clock: Arc<AtomicI64>,
    calls: Cell<u64>,
    before_call: RefCell<Option<BeforeCall>>,
}

/// What a person does before the driver's call number `n`.
type BeforeCall = Box<dyn FnMut(u64)>;

impl World {
    pub fn new(start: i64) -> Rc<World> {
        let w = World::default();
        w.clock.store(start, Ordering::SeqCst);
        Rc::new(w)
    }

    /// The clock, read and ticked, as a database's clock is read for a change.
    pub fn tick(&self) -> i64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The clock without ticking it.
    pub fn now(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// Moves the clock on (past retry backoffs, say).
    pub fn advance(&self, micros: i64) {
        self.clock.fetch_add(micros, Ordering::SeqCst);
    }

    /// The clock as the driver's: each reading ticks it.
    pub fn driver_clock(&self) -> impl Fn() -> i64 + Send + Sync + 'static {
        let clock = self.clock.clone();
        move || clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Calls `f` with the call's number before every read, write and find of any system of
    /// this world: a person acting while a cycle runs. `f` may edit any of the systems.
    pub fn set_before_call(&self, f: impl FnMut(u64) + 'static) {
        *self.before_call.borrow_mut() = Some(Box::new(f));
    }

    fn call(&self) {
        self.tick();
        let n = self.calls.get() + 1;
        self.calls.set(n);
        // Taken out while it runs: it edits systems, which never call back into here.
        let f = self.before_call.borrow_mut().take();
        if let Some(mut f) = f {
            f(n);
            let mut slot = self.before_call.borrow_mut();
            if slot.is_none() {
                *slot = Some(f);
            }
        }
    }
}

/// One system: records by id, and a change log.
pub struct MemorySystem {
    pub prefix: String,
    pub world: Rc<World>,
    pub records: BTreeMap<String, BTreeMap<String, Value>>,
    versions: BTreeMap<String, u64>,
    log: Vec<Entry>,
    seq: u64,
    next_id: u64,
    /// The transaction changes are made in now: a person's ([`MemorySystem::begin`]) or a
    /// write call's; none: each change is a transaction of its own.
    txn: Option<u64>,
    txns: u64,
    /// Calls to allow before one fails; none: never.
    pub fail_in: Option<u32>,
    /// When a failing call is a write, apply this many of its ops first.
    pub apply_before_failing: usize,
    /// Every this many finds, one fails (as an API that is busy now and then); none: never.
    pub finds_fail_every: Option<u32>,
    finds: u32,
    /// Writes the system received (ops), for counting.
    pub writes: usize,
    /// Most ops one write call can take; more fail the call, applying none, as a plugin that
    /// runs out of memory does.
    pub write_limit: Option<usize>,
    /// Fields this system rewrites on every write, anyone's: text to upper or lower case, as
    /// a trigger or a normalising column would. Writes return the record as stored.
    pub rewrites: Vec<(String, Case)>,
    /// The last change a wait for announcements answered for (see `SideIo::watch` below).
    announced: u64,
    /// The next waits hear nothing of changes since the last announced, as a wait does before
    /// the database's announcement arrives (a SQLite file is looked at every 250 ms).
    pub announce_late: bool,
}

/// How a field is rewritten on write.
#[derive(Debug, Clone, Copy)]
pub enum Case {
    Upper,
    Lower,
}

impl MemorySystem {
    pub fn new(prefix: &str, world: Rc<World>) -> MemorySystem {
        MemorySystem {
            prefix: prefix.into(),
            world,
            records: BTreeMap::new(),
            versions: BTreeMap::new(),
            log: Vec::new(),
            seq: 0,
            next_id: 0,
            txn: None,
            txns: 0,
            fail_in: None,
            apply_before_failing: 0,
            finds_fail_every: None,
            finds: 0,
            writes: 0,
            write_limit: None,
            rewrites: Vec::new(),
            announced: 0,
            announce_late: false,
        }
    }

    /// A value as this system stores it in `field`.
    fn stored(&self, field: &str, value: Value) -> Value {
        match (self.rewrites.iter().find(|(f, _)| f == field), value) {
            (Some((_, Case::Upper)), Value::Text(t)) => Value::Text(t.to_uppercase()),
            (Some((_, Case::Lower)), Value::Text(t)) => Value::Text(t.to_lowercase()),
            (_, v) => v,
        }
    }

    /// Appends a change stamped with the world's clock, and returns that time.
    fn append(&mut self, id: &str, deleted: bool, origin: Option<&str>) -> i64 {
        self.seq += 1;
        let at = self.world.tick();
        self.versions.insert(id.to_owned(), self.seq);
        let txn = self.txn.unwrap_or_else(|| {
            self.txns += 1;
            self.txns
        });
        self.log.push(Entry {
            seq: self.seq,
            id: id.to_owned(),
            deleted,
            origin: origin.map(str::to_owned),
            at,
            txn,
        });
        at
    }

    /// A person starts a transaction: the changes up to [`MemorySystem::commit`] are one, and
    /// reads say when a batch ends inside it (`mid_transaction`), as PostgreSQL's do.
    pub fn begin(&mut self) {
        self.txns += 1;
        self.txn = Some(self.txns);
    }

    /// Ends the transaction [`MemorySystem::begin`] started.
    pub fn commit(&mut self) {
        self.txn = None;
    }

    /// When the record's latest change was made (its current version's entry).
    fn changed_at(&self, id: &str) -> Option<i64> {
        let version = self.versions.get(id)?;
        self.log
            .iter()
            .rev()
            .find(|e| e.seq == *version)
            .map(|e| e.at)
    }

    /// The time of the latest change of a record: the one `user_*` just made.
    pub fn last_change_at(&self) -> i64 {
        self.log.last().map_or(0, |e| e.at)
    }

    /// A person creates a record.
    pub fn user_create(&mut self, fields: &[(&str, Value)]) -> String {
        self.create(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            None,
        )
    }

    fn create(&mut self, fields: BTreeMap<String, Value>, origin: Option<&str>) -> String {
        self.next_id += 1;
        let id = format!("{}{}", self.prefix, self.next_id);
        let fields = fields
            .into_iter()
            .map(|(k, v)| {
                let v = self.stored(&k, v);
                (k, v)
            })
            .collect();
        self.records.insert(id.clone(), fields);
        self.append(&id, false, origin);
        id
    }

    /// A person edits a field.
    pub fn user_update(&mut self, id: &str, field: &str, value: Value) {
        let value = self.stored(field, value);
        if let Some(r) = self.records.get_mut(id) {
            r.insert(field.to_owned(), value);
            self.append(id, false, None);
        }
    }

    /// A person deletes a record.
    pub fn user_delete(&mut self, id: &str) {
        if self.records.remove(id).is_some() {
            self.append(id, true, None);
        }
    }

    fn fault(&mut self) -> bool {
        match self.fail_in {
            Some(0) => {
                self.fail_in = None;
                true
            }
            Some(n) => {
                self.fail_in = Some(n - 1);
                false
            }
            None => false,
        }
    }

    fn fields(&self, id: &str) -> Vec<FieldValue> {
        self.records
            .get(id)
            .map(|r| {
                r.iter()
                    .map(|(k, v)| FieldValue {
                        name: k.clone(),
                        value: v.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What a write stored otherwise than it was told (as the sql connector reports it): told
    /// fields stored otherwise, and others it changed (against `before`) or set on a create.
    fn stored_otherwise(
        &self,
        id: &str,
        told: &BTreeMap<String, Value>,
        before: Option<&BTreeMap<String, Value>>,
    ) -> Vec<FieldValue> {
        let Some(now) = self.records.get(id) else {
            return Vec::new();
        };
        now.iter()
            .filter(|(k, v)| match told.get(*k) {
                Some(t) => t != *v,
                None => before.is_none_or(|b| b.get(*k) != Some(*v)),
            })
            .map(|(k, v)| FieldValue {
                name: k.clone(),
                value: v.clone(),
            })
            .collect()
    }

    fn apply(&mut self, origin: &str, op: WriteOp) -> Result<Written, WitError> {
        self.writes += 1;
        if std::env::var("SIM_TRACE").is_ok() {
            println!("   {} write {op:?}", self.prefix);
        }
        match op {
            WriteOp::Create(c) => {
                let told: BTreeMap<String, Value> =
                    c.fields.into_iter().map(|f| (f.name, f.value)).collect();
                let id = self.create(told.clone(), Some(origin));
                Ok(Written {
                    version: self.versions.get(&id).map(u64::to_string),
                    stored: self.stored_otherwise(&id, &told, None),
                    id,
                })
            }
            WriteOp::Update(u) => {
                if !self.records.contains_key(&u.id) {
                    return Err(WitError::NotFound(u.id));
                }
                let now = self.versions.get(&u.id).copied().unwrap_or(0).to_string();
                if u.if_version.as_ref().is_some_and(|v| *v != now) {
                    return Err(WitError::Conflict(format!("{} is at {now}", u.id)));
                }
                let before = self.records[&u.id].clone();
                let told: BTreeMap<String, Value> =
                    u.fields.into_iter().map(|f| (f.name, f.value)).collect();
                let stored: Vec<(String, Value)> = told
                    .iter()
                    .map(|(k, v)| (k.clone(), self.stored(k, v.clone())))
                    .collect();
                let r = self.records.get_mut(&u.id).expect("checked");
                r.extend(stored);
                self.append(&u.id, false, Some(origin));
                Ok(Written {
                    version: self.versions.get(&u.id).map(u64::to_string),
                    stored: self.stored_otherwise(&u.id, &told, Some(&before)),
                    id: u.id,
                })
            }
            WriteOp::Delete(d) => {
                if !self.records.contains_key(&d.id) {
                    return Err(WitError::NotFound(d.id));
                }
                let now = self.versions.get(&d.id).copied().unwrap_or(0).to_string();
                if d.if_version.as_ref().is_some_and(|v| *v != now) {
                    return Err(WitError::Conflict(format!("{} is at {now}", d.id)));
                }
                self.records.remove(&d.id);
                self.append(&d.id, true, Some(origin));
                Ok(Written {
                    id: d.id,
                    version: None,
                    stored: Vec::new(),
                })
            }
        }
    }
}

/// A handle the runner owns; the test keeps another to the same system.
#[derive(Clone)]
pub struct Shared(pub Rc<RefCell<MemorySystem>>);

impl Shared {
    /// A system with a world of its own.
    pub fn new(prefix: &str) -> Shared {
        Shared::in_world(prefix, World::new(0))
    }

    /// A system sharing `world`'s clock and person with others.
    pub fn in_world(prefix: &str, world: Rc<World>) -> Shared {
        Shared(Rc::new(RefCell::new(MemorySystem::new(prefix, world))))
    }

    /// A call from the driver: the clock ticks and a person may act first.
    fn call(&self) {
        let world = self.0.borrow().world.clone();
        world.call();
    }
}

impl SideIo for Shared {
    fn conditional_writes(&self) -> bool {
        true
    }

    /// As the host's waits for a database: an announcement a wait did not answer for is kept
    /// for the next.
    fn keeps_announcements(&self) -> bool {
        true
    }

    /// Answers at once (simulated time does not pass while waiting): changed when a change
    /// (anyone's) came since the last wait that said so. A late announcement is not there yet:
    /// the wait yields once (a wait dropped then, when another side answered first, ends
    /// there), then times out, and the change is announced to a later wait.
    async fn watch(&mut self, _timeout_ms: u32) -> Result<Watched, IoError> {
        if self.0.borrow().announce_late {
            tokio::task::yield_now().await;
            return Ok(Watched::Timeout);
        }
        let mut s = self.0.borrow_mut();
        if s.seq > s.announced {
            s.announced = s.seq;
            Ok(Watched::Changed)
        } else {
            Ok(Watched::Timeout)
        }
    }

    async fn read(
        &mut self,
        own: &str,
        cursor: Option<&str>,
        max: u32,
    ) -> Result<ChangeBatch, IoError> {
        self.call();
        let mut s = self.0.borrow_mut();
        if s.fault() {
            return Err(IoError::new("injected failure while reading"));
        }
        let after: u64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
        let entries: Vec<Entry> = s
            .log
            .iter()
            .filter(|e| e.seq > after)
            .take(max as usize)
            .cloned()
            .collect();
        let mut last: BTreeMap<String, Entry> = BTreeMap::new();
        let mut created: BTreeMap<String, bool> = BTreeMap::new();
        // Like the sql connector: records changed in this batch only by the reader's own
        // writes are left out.
        let mut only_own: BTreeMap<String, bool> = BTreeMap::new();
        for e in &entries {
            last.insert(e.id.clone(), e.clone());
            created.entry(e.id.clone()).or_insert(false);
            *only_own.entry(e.id.clone()).or_insert(true) &= e.origin.as_deref() == Some(own);
        }
        let mut folded: Vec<&Entry> = last.values().filter(|e| !only_own[&e.id]).collect();
        folded.sort_by_key(|e| e.seq);
        let changes = folded
            .into_iter()
            .map(|e| {
                let exists = s.records.contains_key(&e.id);
                let version = s.versions.get(&e.id).copied();
                Change {
                    id: e.id.clone(),
                    kind: if exists {
                        ChangeKind::Update
                    } else {
                        ChangeKind::Delete
                    },
                    fields: if exists { s.fields(&e.id) } else { vec![] },
                    version: version.map(|v| v.to_string()),
                    // The fields are the record as it is now, which may be newer than this
                    // batch: its time must be the current version's, or a later edit would
                    // pass for an earlier one.
                    changed_at: if exists {
                        s.changed_at(&e.id)
                    } else {
                        Some(e.at)
                    },
                    // Like the sql connector: the origin only holds if no later change followed.
                    origin: if version == Some(e.seq) {
                        e.origin.clone()
                    } else {
                        None
                    },
                }
            })
            .collect();
        let next = entries.last().map_or(after, |e| e.seq);
        if std::env::var("SIM_TRACE").is_ok() {
            println!("   {} read after {after}: {changes:?}", s.prefix);
        }
        let following = s.log.iter().find(|e| e.seq > next);
        Ok(ChangeBatch {
            changes,
            next_cursor: next.to_string(),
            has_more: following.is_some(),
            mid_transaction: following
                .zip(entries.last())
                .is_some_and(|(f, l)| f.txn == l.txn),
            // Log entries, not records: an estimate, as a connector's is.
            remaining: Some(s.log.iter().filter(|e| e.seq > next).count() as u64),
        })
    }

    async fn write(
        &mut self,
        origin: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Written, WitError>>, IoError> {
        self.call();
        let mut s = self.0.borrow_mut();
        if s.write_limit.is_some_and(|most| ops.len() > most) {
            return Err(IoError {
                over_limit: true,
                ..IoError::new(format!(
                    "{} ops were more than the plugin could hold",
                    ops.len()
                ))
            });
        }
        if s.fault() {
            let n = s.apply_before_failing.min(ops.len());
            for op in ops.into_iter().take(n) {
                let _ = s.apply(origin, op);
            }
            return Err(IoError::new("injected failure while writing"));
        }
        // One call, one transaction.
        s.begin();
        let written = ops.into_iter().map(|op| s.apply(origin, op)).collect();
        s.commit();
        Ok(written)
    }

    async fn find(&mut self, key: LookupKey) -> Result<Vec<Current>, IoError> {
        self.call();
        let mut s = self.0.borrow_mut();
        s.finds += 1;
        let busy = s
            .finds_fail_every
            .is_some_and(|n| s.finds.is_multiple_of(n));
        if s.fault() || busy {
            return Err(IoError::new("injected failure while finding"));
        }
        let ids: Vec<String> = match key {
            LookupKey::Ids(ids) => ids
                .into_iter()
                .filter(|id| s.records.contains_key(id))
                .collect(),
            LookupKey::ByField(m) => s
                .records
                .iter()
                .filter(|(_, r)| {
                    r.get(&m.field).is_some_and(|v| {
                        m.values.iter().any(|w| match (v, w) {
                            (Value::Text(a), Value::Text(b)) if m.ignore_case => {
                                a.to_lowercase() == b.to_lowercase()
                            }
                            _ => v == w,
                        })
                    })
                })
                .map(|(id, _)| id.clone())
                .collect(),
        };
        Ok(ids
            .into_iter()
            .map(|id| Current {
                fields: s.fields(&id),
                changed_at: s.changed_at(&id),
                version: s.versions.get(&id).map(u64::to_string),
                id,
            })
            .collect())
    }
}
