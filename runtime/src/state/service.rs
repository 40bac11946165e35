//! What a running service keeps beside the syncs' own state: which syncs a person paused, API
//! tokens (as hashes), the audit log of every call that changed something, and the paged
//! queries the operations layer answers from (no query decodes more than its page needs,
//! links never).

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{dec, enc, side_key, Activity, Conflict, LinkCounts, Rejected, State, StateError};
use super::{ActivityRow, CONFLICTS, COUNTERS, DIRTY, LINKS, OPEN_CONFLICTS, REJECTED};
use crate::engine::Side;

pub(super) const PAUSED: TableDefinition<&str, &[u8]> = TableDefinition::new("paused");
/// Tokens by the hex SHA-256 of their secret.
pub(super) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Who may do what through the API. Each role may do everything the one before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Also resolves conflicts, retries rejected records, pauses, resumes and runs syncs.
    Operator,
    /// Also uploads plugins, changes the config and manages tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("no role {s:?} (roles: viewer, operator, admin)"))
    }
}

/// A token as stored: never the secret, only its hash (the key of its row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// Short and public: what `token list` shows and `token revoke` takes.
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Why a sync is paused, and since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    pub by: String,
    pub at: i64,
}

/// One call that changed something: who, what, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: u64,
    pub at: i64,
    /// A token's id and name, or `local:USER` for the CLI on the same machine.
    pub who: String,
    /// The call, as `METHOD /path`, or the CLI command.
    pub action: String,
    /// `ok`, or the error.
    pub outcome: String,
}

/// One page of a listing, newest first, and where the next page starts (none: this was the
/// last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Which conflicts to list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConflictQuery {
    pub sync: Option<String>,
    /// Settled ones too.
    #[serde(default)]
    pub all: bool,
    /// From the `next` of the page before.
    pub before: Option<String>,
    pub limit: Option<usize>,
}

/// Which activity to list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActivityQuery {
    pub sync: Option<String>,
    /// Only last-writer-wins decisions.
    #[serde(default)]
    pub decisions: bool,
    /// Only writes of this kind (`create`, `update`, `delete`).
    pub op: Option<String>,
    /// Only writes to (or decisions won by) this side.
    pub side: Option<Side>,
    /// Only this record (either side's id).
    pub record: Option<String>,
    pub before: Option<String>,
    pub limit: Option<usize>,
}

impl ActivityQuery {
    fn wants(&self, a: &Activity) -> bool {
        self.sync.as_ref().is_none_or(|s| *s == a.sync)
            && (!self.decisions || a.decided.is_some())
            && self.op.as_ref().is_none_or(|op| *op == a.op)
            && self.side.is_none_or(|s| s == a.side)
            && self.record.as_ref().is_none_or(|r| *r == a.record)
    }
}

/// The page size when none is asked for, and the most one page holds.
pub const PAGE: usize = 50;
pub const PAGE_MAX: usize = 1_000;

fn page_size(limit: Option<usize>) -> usize {
    limit.unwrap_or(PAGE).clamp(1, PAGE_MAX)
}

fn bad_cursor(what: &str) -> StateError {
    StateError::Query(format!("{what}: not a cursor this listing gave"))
}

/// A secret's stored form.
pub fn token_hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

impl State {
    pub(super) fn create_service_tables(w: &redb::WriteTransaction) -> Result<(), StateError> {
        w.open_table(PAUSED)?;
        w.open_table(TOKENS)?;
        w.open_table(AUDIT)?;
        Ok(())
    }

    /// How many links the sync has, and how many are active.
    pub fn link_counts(&self, sync: &str) -> Result<LinkCounts, StateError> {
        let r = self.db.begin_read()?;
        // A state written before the counts were kept is counted here (the next commit
        // stores them).
        LinkCounts::load(&r.open_table(COUNTERS)?, &r.open_table(LINKS)?, sync)
    }

    /// Open conflicts, rejected records and links waiting to retry, counted without decoding.
    pub fn waiting_counts(&self, sync: &str) -> Result<(u64, u64, u64), StateError> {
        let r = self.db.begin_read()?;
        let open = r
            .open_table(OPEN_CONFLICTS)?
            .range((sync, 0u64, "")..=(sync, u64::MAX, "\u{10ffff}"))?
            .count() as u64;
        let rejected = r
            .open_table(REJECTED)?
            .range((sync, 0u8, "")..=(sync, 1u8, "\u{10ffff}"))?
            .count() as u64;
        let dirty = r.open_table(DIRTY)?.range(super::of_sync(sync))?.count() as u64;
        Ok((open, rejected, dirty))
    }

    /// One page of conflicts, newest first. Open ones are found through their index, so only
    /// the page's own rows are decoded.
    pub fn conflict_page(&self, q: &ConflictQuery) -> Result<Page<Conflict>, StateError> {
        let limit = page_size(q.limit);
        let before = match &q.before {
            Some(c) => c.parse::<u64>().map_err(|_| bad_cursor("before"))?,
            None => u64::MAX,
        };
        let r = self.db.begin_read()?;
        let conflicts = r.open_table(CONFLICTS)?;
        let mut items = Vec::new();
        let mut next = None;
        if q.all {
            for item in conflicts.range(..before)?.rev() {
                let (_, v) = item?;
                let c: Conflict = dec(v.value())?;
                if q.sync.as_ref().is_some_and(|s| *s != c.sync) {
                    continue;
                }
                if items.len() == limit {
                    next = Some(items.last().map_or(0, |c: &Conflict| c.id).to_string());
                    break;
                }
                items.push(c);
            }
        } else {
            let open = r.open_table(OPEN_CONFLICTS)?;
            let rows = match &q.sync {
                Some(s) => {
                    open.range((s.as_str(), 0u64, "")..=(s.as_str(), u64::MAX, "\u{10ffff}"))?
                }
                None => open.range::<(&str, u64, &str)>(..)?,
            };
            let mut ids: Vec<u64> = rows
                .map(|i| i.map(|(_, v)| v.value()))
                .collect::<Result<_, _>>()?;
            ids.retain(|id| *id < before);
            ids.sort_unstable_by(|a, b| b.cmp(a));
            for id in ids.iter().take(limit) {
                if let Some(v) = conflicts.get(*id)? {
                    items.push(dec(v.value())?);
                }
            }
            if ids.len() > limit {
                next = Some(ids[limit - 1].to_string());
            }
        }
        Ok(Page { items, next })
    }

    /// One page of the activity log, newest first. A cursor is `ROW.SKIP`: the stored row to
    /// start at and how many of its (newest-first) entries the pages before took, since one
    /// row may hold a whole bulk create.
    pub fn activity_page(&self, q: &ActivityQuery) -> Result<Page<Activity>, StateError> {
        let limit = page_size(q.limit);
        let (start, mut skip) = match &q.before {
            Some(c) => {
                let (row, skip) = c.split_once('.').ok_or_else(|| bad_cursor("before"))?;
                (
                    row.parse::<u64>().map_err(|_| bad_cursor("before"))?,
                    skip.parse::<usize>().map_err(|_| bad_cursor("before"))?,
                )
            }
            None => (u64::MAX, 0),
        };
        let r = self.db.begin_read()?;
        let t = r.open_table(super::ACTIVITY)?;
        let mut items = Vec::new();
        for item in t.range(..=start)?.rev() {
            let (k, v) = item?;
            let key = k.value();
            let row: ActivityRow = dec(v.value())?;
            if q.sync.as_ref().is_some_and(|s| *s != row.sync) {
                skip = 0;
                continue;
            }
            let mut entries = Vec::new();
            row.expand(&mut entries)?;
            let taken_before = if key == start { skip } else { 0 };
            skip = 0;
            for (i, a) in entries.into_iter().rev().enumerate().skip(taken_before) {
                if items.len() == limit {
                    return Ok(Page {
                        items,
                        next: Some(format!("{key}.{i}")),
                    });
                }
                if q.wants(&a) {
                    items.push(a);
                }
            }
        }
        Ok(Page { items, next: None })
    }

    /// One page of rejected records, in (sync, side, record) order.
    pub fn rejected_page(
        &self,
        sync: Option<&str>,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page<(String, Rejected)>, StateError> {
        let limit = page_size(limit);
        let after: Option<(String, u8, String)> = after
            .map(|c| {
                hex::decode(c)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .ok_or_else(|| bad_cursor("after"))
            })
            .transpose()?;
        let r = self.db.begin_read()?;
        let t = r.open_table(REJECTED)?;
        let rows = match (&after, sync) {
            (Some((s, side, id)), _) => t.range((s.as_str(), *side, id.as_str())..)?,
            (None, Some(s)) => t.range((s, 0u8, "")..)?,
            (None, None) => t.range::<(&str, u8, &str)>(..)?,
        };
        let mut items = Vec::new();
        for item in rows {
            let (k, v) = item?;
            let (s, side, id) = k.value();
            if after
                .as_ref()
                .is_some_and(|a| (a.0.as_str(), a.1, a.2.as_str()) == (s, side, id))
            {
                continue;
            }
            if sync.is_some_and(|want| want != s) {
                break;
            }
            if items.len() == limit {
                let cursor = enc(&(s, side, id))?;
                return Ok(Page {
                    items,
                    next: Some(hex::encode(cursor)),
                });
            }
            items.push((s.to_owned(), dec(v.value())?));
        }
        Ok(Page { items, next: None })
    }

    /// Asks for a rejected record to be tried again at the next cycle: its link, if it has
    /// one, is due for a retry now (a change kept with the rejection is fed again every cycle
    /// anyway). Returns whether there was such a record.
    pub fn retry_rejected(
        &self,
        sync: &str,
        side: Side,
        id: &str,
        now: i64,
    ) -> Result<bool, StateError> {
        let w = self.begin_write()?;
        let found = {
            let mut rejected = w.open_table(REJECTED)?;
            let Some(mut record) = rejected
                .get((sync, side_key(side), id))?
                .map(|v| dec::<Rejected>(v.value()))
                .transpose()?
            else {
                return Ok(false);
            };
            record.last_at = now;
            rejected.insert((sync, side_key(side), id), enc(&record)?.as_slice())?;
            let link = w
                .open_table(super::INDEX)?
                .get((sync.as_bytes(), side_key(side), id.as_bytes()))?
                .map(|v| v.value());
            if let Some(link) = link {
                let d = super::Dirty {
                    due_at: now,
                    attempts: 0,
                    reason: format!("retry of {side} record {id} asked for"),
                };
                w.open_table(DIRTY)?
                    .insert((sync.as_bytes(), link), enc(&d)?.as_slice())?;
            }
            true
        };
        w.commit()?;
        Ok(found)
    }

    /// The syncs a person paused.
    pub fn paused(&self) -> Result<Vec<(String, Paused)>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(PAUSED)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_owned(), dec(v.value())?));
        }
        Ok(out)
    }

    /// Pauses (`Some`) or resumes (`None`) a sync; kept across restarts.
    pub fn set_paused(&self, sync: &str, paused: Option<&Paused>) -> Result<(), StateError> {
        let w = self.begin_write()?;
        {
            let mut t = w.open_table(PAUSED)?;
            match paused {
                Some(p) => {
                    t.insert(sync, enc(p)?.as_slice())?;
                }
                None => {
                    t.remove(sync)?;
                }
            }
        }
        w.commit()?;
        Ok(())
    }

    /// Stores a new token under the hash of its secret.
    pub fn add_token(&self, secret: &str, token: &Token) -> Result<(), StateError> {
        let w = self.begin_write()?;
        w.open_table(TOKENS)?
            .insert(token_hash(secret).as_str(), enc(token)?.as_slice())?;
        w.commit()?;
        Ok(())
    }

    /// The token a secret belongs to, if it has not been revoked.
    pub fn token_for(&self, secret: &str) -> Result<Option<Token>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(TOKENS)?;
        let token: Option<Token> = t
            .get(token_hash(secret).as_str())?
            .map(|v| dec(v.value()))
            .transpose()?;
        Ok(token.filter(|t| t.revoked_at.is_none()))
    }

    pub fn tokens(&self) -> Result<Vec<Token>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(TOKENS)?;
        let mut out: Vec<Token> = Vec::new();
        for item in t.iter()? {
            out.push(dec(item?.1.value())?);
        }
        out.sort_by_key(|t| t.created_at);
        Ok(out)
    }

    /// Revokes a token by its id; returns it, or `None` when there is no such token.
    pub fn revoke_token(&self, id: &str, now: i64) -> Result<Option<Token>, StateError> {
        let w = self.begin_write()?;
        let found = {
            let mut t = w.open_table(TOKENS)?;
            let mut hit = None;
            for item in t.iter()? {
                let (k, v) = item?;
                let token: Token = dec(v.value())?;
                if token.id == id {
                    hit = Some((k.value().to_owned(), token));
                    break;
                }
            }
            match hit {
                Some((hash, mut token)) => {
                    token.revoked_at.get_or_insert(now);
                    t.insert(hash.as_str(), enc(&token)?.as_slice())?;
                    Some(token)
                }
                None => None,
            }
        };
        w.commit()?;
        Ok(found)
    }

    /// Appends to the audit log.
    pub fn audit(&self, at: i64, who: &str, action: &str, outcome: &str) -> Result<(), StateError> {
        let w = self.begin_write()?;
        {
            let mut counters = w.open_table(COUNTERS)?;
            let id = counters.get("audit")?.map_or(1, |v| v.value());
            counters.insert("audit", id + 1)?;
            let entry = AuditEntry {
                id,
                at,
                who: who.to_owned(),
                action: action.to_owned(),
                outcome: outcome.to_owned(),
            };
            w.open_table(AUDIT)?.insert(id, enc(&entry)?.as_slice())?;
        }
        w.commit()?;
        Ok(())
    }

    /// One page of the audit log, newest first.
    pub fn audit_page(
        &self,
        before: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page<AuditEntry>, StateError> {
        let limit = page_size(limit);
        let before = match before {
            Some(c) => c.parse::<u64>().map_err(|_| bad_cursor("before"))?,
            None => u64::MAX,
        };
        let r = self.db.begin_read()?;
        let t = r.open_table(AUDIT)?;
        let mut items: Vec<AuditEntry> = Vec::new();
        for item in t.range(..before)?.rev() {
            if items.len() == limit {
                let last = items.last().map_or(0, |e| e.id);
                return Ok(Page {
                    items,
                    next: Some(last.to_string()),
                });
            }
            items.push(dec(item?.1.value())?);
        }
        Ok(Page { items, next: None })
    }
}
