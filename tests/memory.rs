//! An in-memory system with a change feed, behind the driver's `SideIo`: what the sql connector
//! does (current-state reads folded per record, origin tags, versions, conditional writes, one
//! result per op), without a database, so simulations run thousands of schedules in seconds.
//! Faults can be injected: a call fails, and a write may have been applied before it failed.

#![allow(dead_code)]

use std::collections::BTreeMap;

use duplex::driver::{IoError, SideIo};
use duplex::plugin::{
    Change, ChangeBatch, ChangeKind, Current, FieldValue, LookupKey, Value, WitError, WriteOp,
    Written,
};

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    id: String,
    deleted: bool,
    origin: Option<String>,
}

/// One system: records by id, and a change log.
#[derive(Debug, Clone, Default)]
pub struct MemorySystem {
    pub prefix: String,
    pub records: BTreeMap<String, BTreeMap<String, Value>>,
    versions: BTreeMap<String, u64>,
    log: Vec<Entry>,
    seq: u64,
    next_id: u64,
    /// Calls to allow before one fails; none: never.
    pub fail_in: Option<u32>,
    /// When a failing call is a write, apply this many of its ops first.
    pub apply_before_failing: usize,
    /// Writes the system received (ops), for counting.
    pub writes: usize,
    /// Most ops one write call can take; more fail the call, applying none, as a plugin that
    /// runs out of memory does.
    pub write_limit: Option<usize>,
}

impl MemorySystem {
    pub fn new(prefix: &str) -> MemorySystem {
        MemorySystem {
            prefix: prefix.into(),
            ..Default::default()
        }
    }

    fn append(&mut self, id: &str, deleted: bool, origin: Option<&str>) {
        self.seq += 1;
        self.versions.insert(id.to_owned(), self.seq);
        self.log.push(Entry {
            seq: self.seq,
            id: id.to_owned(),
            deleted,
            origin: origin.map(str::to_owned),
        });
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
        self.records.insert(id.clone(), fields);
        self.append(&id, false, origin);
        id
    }

    /// A person edits a field.
    pub fn user_update(&mut self, id: &str, field: &str, value: Value) {
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

    fn apply(&mut self, origin: &str, op: WriteOp) -> Result<Written, WitError> {
        self.writes += 1;
        if std::env::var("SIM_TRACE").is_ok() {
            println!("   {} write {op:?}", self.prefix);
        }
        match op {
            WriteOp::Create(c) => {
                let fields = c.fields.into_iter().map(|f| (f.name, f.value)).collect();
                let id = self.create(fields, Some(origin));
                Ok(Written {
                    version: self.versions.get(&id).map(u64::to_string),
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
                let r = self.records.get_mut(&u.id).expect("checked");
                for f in u.fields {
                    r.insert(f.name, f.value);
                }
                self.append(&u.id, false, Some(origin));
                Ok(Written {
                    version: self.versions.get(&u.id).map(u64::to_string),
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
                })
            }
        }
    }
}

/// A handle the runner owns; the test keeps another to the same system.
#[derive(Clone)]
pub struct Shared(pub std::rc::Rc<std::cell::RefCell<MemorySystem>>);

impl Shared {
    pub fn new(prefix: &str) -> Shared {
        Shared(std::rc::Rc::new(std::cell::RefCell::new(
            MemorySystem::new(prefix),
        )))
    }
}

impl SideIo for Shared {
    fn conditional_writes(&self) -> bool {
        true
    }

    async fn read(
        &mut self,
        own: &str,
        cursor: Option<&str>,
        max: u32,
    ) -> Result<ChangeBatch, IoError> {
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
                    changed_at: Some(e.seq as i64),
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
        Ok(ChangeBatch {
            changes,
            next_cursor: next.to_string(),
            has_more: s.log.iter().any(|e| e.seq > next),
        })
    }

    async fn write(
        &mut self,
        origin: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Written, WitError>>, IoError> {
        let mut s = self.0.borrow_mut();
        if s.write_limit.is_some_and(|most| ops.len() > most) {
            return Err(IoError {
                message: format!("{} ops were more than the plugin could hold", ops.len()),
                over_limit: true,
            });
        }
        if s.fault() {
            let n = s.apply_before_failing.min(ops.len());
            for op in ops.into_iter().take(n) {
                let _ = s.apply(origin, op);
            }
            return Err(IoError::new("injected failure while writing"));
        }
        Ok(ops.into_iter().map(|op| s.apply(origin, op)).collect())
    }

    async fn find(&mut self, key: LookupKey) -> Result<Vec<Current>, IoError> {
        let mut s = self.0.borrow_mut();
        if s.fault() {
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
                version: s.versions.get(&id).map(u64::to_string),
                id,
            })
            .collect())
    }
}
