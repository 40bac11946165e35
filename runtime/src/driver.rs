//! Runs syncs: read a bounded batch from each side, plan (engine), write (batched, one result
//! per record), commit (state). The engine decides; this module does the I/O around it.
//!
//! Invariants kept here:
//! 1. Nothing is committed before the writes it depends on have returned, and the cursors are
//!    committed with the links, conflicts and rejections that record the changes before them
//!    (see `state`). A crash at any instant replays at most one cycle.
//! 2. Writes are recorded as intents before they are sent; an intent found at the start of a
//!    cycle means a write whose result may be lost, and the system is checked before anything is
//!    planned again ([`SyncRunner::recover`]): a create is never made twice, and Duplex's own
//!    write is never mistaken for a person's edit.
//! 3. A record whose write fails is kept (the link is dirty, retried with backoff, the reason
//!    shown in `status`); it never fails the cycle or blocks other records.
//! 4. Every change handed to the engine carries when it was read: the runner's clock read as
//!    the read or find that returned it came back, never a time taken before (see
//!    [`engine::change_time`]). A batch read ahead keeps the time it was read.

pub mod io;
pub mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::engine::{
    self, settle, Candidate, Fields, Input, Link, Observed, Op, OpKind, Outcome, Plan, RuleAnswer,
    Side, SyncSpec,
};
use crate::plugin::{
    self, ChangeBatch, ChangeKind, CreateOp, DeleteOp, FieldMatch, LookupKey, ResolverPlugin,
    UpdateOp, WitError, WriteOp,
};
use crate::schema::SyncSchema;
use crate::state::{
    Activity, CycleCommit, Intent, IntentRef, State, StateError, StoredChange, SyncStats, DECIDED,
    RULED,
};

pub use io::{IoError, PluginSide, SideIo};

/// Most writes sent to a connector in one call: one call per side per cycle at the default
/// batch size (each call is a transaction with its own set-up; 200 per call cost a third of an
/// initial sync's time).
const WRITE_BATCH: usize = 2_000;
/// Most changes of one source transaction a cycle applies at once, unless the sync says
/// otherwise (`max_transaction`; see [`SyncRunner::whole_transactions_up_to`]).
pub const MAX_TRANSACTION: u32 = 20_000;
/// Most match values looked up in one `find`: a batch's new records in one call at the
/// default batch size. Each call is a transaction with its own set-up (the table's shape, the
/// capture's check); in calls of 200, an initial load with a match key spent a quarter of its
/// cycles looking up.
const MATCH_LOOKUP: usize = 1_000;
/// Most dirty links retried in one cycle.
const RETRY_BATCH: usize = 500;
/// Most intents recovery checks at once (see [`SyncRunner::recover`]).
const RECOVER_BATCH: usize = 100;

/// What recovery's lookups found for a lot of intents.
#[derive(Default)]
struct Found {
    /// Records found by id; an id asked for and not here is gone.
    by_id: BTreeMap<(Side, String), plugin::Current>,
    /// Unlinked records found by the match key, by its normalised value.
    by_key: BTreeMap<(Side, String), Vec<plugin::Current>>,
    /// Ids and normalised match values the side refused to look up (a lasting error).
    refused_ids: BTreeMap<(Side, String), IoError>,
    refused_keys: BTreeMap<(Side, String), IoError>,
}

/// Why a cycle stopped. Nothing of it was committed; the next cycle starts where this one did.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("sync {sync}: reading {side} failed: {error}")]
    Read {
        sync: String,
        side: Side,
        error: IoError,
    },
    #[error("sync {sync}: checking on the {side} side whether a write cut short by a crash was made failed (nothing is written until it can be checked): {error}")]
    Recover {
        sync: String,
        side: Side,
        error: IoError,
    },
    #[error("sync {sync}: {source}")]
    State {
        sync: String,
        #[source]
        source: StateError,
    },
}

/// What a wait for announcements saw ([`SyncRunner::watch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// A side announced changes: read now.
    Changes,
    /// Every side can announce changes, and none did in the time given: nothing to read.
    Quiet,
    /// A side cannot announce changes (or its wait failed): only reading it tells. `waited`:
    /// another side could, and was waited on for the time given.
    CannotTell { waited: bool },
}

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
    /// Changes read, by side in config order.
    pub read: Vec<usize>,
    pub writes: usize,
    pub failed: usize,
    pub echoes: usize,
    pub conflicts: usize,
    pub rejected: usize,
    /// Fields changed on both sides that last-writer-wins or a rule settled.
    pub decided: usize,
    /// Writes by kind (`create`, `update`, `delete`): [succeeded, failed].
    pub by_kind: BTreeMap<&'static str, [usize; 2]>,
    /// A side has more changes waiting than one batch holds.
    pub more: bool,
    /// About how many changes wait on the sides with more to read, where each of their
    /// connectors said (contract 0.6.0's `remaining`; the sql connector says it while it
    /// reads a table's existing rows); none where one could not tell. An estimate, for
    /// progress: the sync decides nothing by it.
    pub remaining: Option<u64>,
    /// A batch ended inside a source transaction and the cycle read on to its end, to write it
    /// to the other sides whole.
    pub whole_transaction: bool,
    /// Dirty links were retried.
    pub retried: usize,
    /// Sides left unread: the wait before the cycle heard nothing from them (see
    /// [`SyncRunner::watch`]).
    pub unread: usize,
}

impl CycleReport {
    /// Nothing was read and nothing was written: both sides are caught up.
    pub fn idle(&self) -> bool {
        self.read.iter().all(|n| *n == 0) && self.writes == 0 && self.failed == 0 && !self.more
    }

    pub fn summary(&self) -> String {
        format!(
            "read {}; wrote {}; {} failed; {} echoes ignored; {} conflicts held; {} rejected; {} last-writer-wins decisions",
            read_by_side(&self.read), self.writes, self.failed, self.echoes, self.conflicts, self.rejected, self.decided
        )
    }
}

/// `2 left, 0 right` (and `, 1 third` on): changes read by side.
fn read_by_side(read: &[usize]) -> String {
    let sides: Vec<String> = read
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n} {}", Side::nth(i)))
        .collect();
    sides.join(", ")
}

/// What a sync would do with the changes waiting (a pilot run): all of them read (up to
/// [`DRY_RUN_MOST`] per side, or a pilot's `limit`) and planned as one cycle, but nothing is
/// sent to either side and nothing is committed, so the same changes are read again by the
/// next real cycle.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DryRun {
    /// The sides' connections, in config order (empty in a plan written before they were
    /// kept).
    #[serde(default)]
    pub sides: Vec<String>,
    /// Changes read, by side in config order.
    pub read: Vec<usize>,
    /// More changes wait than were read (past the limit): a real run would plan further.
    pub more: bool,
    pub writes: Vec<PlannedWrite>,
    /// Conflicts that would be held for a person, new or with fresh values.
    pub conflicts: Vec<engine::ConflictNote>,
    /// Changes that would be rejected, with why.
    pub rejected: Vec<PlannedRejection>,
    /// Fields changed on both sides that last-writer-wins would settle.
    pub decided: Vec<engine::Decided>,
    /// Records that would be paired by match key with the other side's.
    #[serde(default)]
    pub matched: usize,
    /// Records outside their side's filter, left alone, and linked records that would leave
    /// their filter.
    #[serde(default)]
    pub filtered: usize,
    #[serde(default)]
    pub leaving: usize,
}

impl DryRun {
    /// How a person knows `side`: by its connection, or where two sides share one (two tables
    /// of a database), by its place and connection (`left (db)`).
    pub fn side_label(&self, side: Side) -> String {
        match self.sides.get(side.index()) {
            Some(name) if self.sides.iter().filter(|n| *n == name).count() == 1 => name.clone(),
            Some(name) => format!("{side} ({name})"),
            None => side.to_string(),
        }
    }

    /// What the plan would do, counted, as lines for a person: pairs matched, records created,
    /// updated (and which fields), deleted on each side, rejections by reason, conflicts.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let read: Vec<String> = self
            .read
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} from {}", self.side_label(Side::nth(i))))
            .collect();
        lines.push(format!(
            "read {}{}",
            read.join(", "),
            if self.more {
                " (more waiting: a real run continues past these)"
            } else {
                ""
            }
        ));
        lines.push(format!("matched by key: {}", self.matched));
        for op in ["create", "update", "delete"] {
            for side in Side::all(self.read.len().max(2)) {
                let writes: Vec<&PlannedWrite> = self
                    .writes
                    .iter()
                    .filter(|w| w.op == op && w.side == side)
                    .collect();
                if writes.is_empty() {
                    continue;
                }
                let mut line = format!("{op} on {}: {}", self.side_label(side), writes.len());
                if op == "update" {
                    let mut by_field: BTreeMap<&str, usize> = BTreeMap::new();
                    for w in &writes {
                        for f in w.fields.keys() {
                            *by_field.entry(f).or_default() += 1;
                        }
                    }
                    let fields: Vec<String> =
                        by_field.iter().map(|(f, n)| format!("{f} {n}")).collect();
                    line.push_str(&format!(" ({})", fields.join(", ")));
                }
                lines.push(line);
            }
        }
        if !self.rejected.is_empty() {
            let mut why: BTreeMap<String, usize> = BTreeMap::new();
            for r in &self.rejected {
                // The kind of reason, without the record's own values.
                let kind = r.reason.split(':').next().unwrap_or(&r.reason).to_owned();
                *why.entry(kind).or_default() += 1;
            }
            let why: Vec<String> = why.iter().map(|(w, n)| format!("{n} {w}")).collect();
            lines.push(format!(
                "rejected: {} ({})",
                self.rejected.len(),
                why.join("; ")
            ));
        }
        let ambiguous = self
            .rejected
            .iter()
            .filter(|r| r.reason.starts_with("ambiguous match"))
            .count();
        lines.push(format!("ambiguous matches: {ambiguous}"));
        lines.push(format!(
            "conflicts held for a person: {}; fields last-writer-wins or a rule would settle: {}",
            self.conflicts.len(),
            self.decided.len()
        ));
        if self.filtered + self.leaving > 0 {
            lines.push(format!(
                "outside the filters: {} records left alone, {} linked records leaving",
                self.filtered, self.leaving
            ));
        }
        lines
    }
}

/// One write a dry run planned.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlannedWrite {
    pub side: Side,
    /// `create`, `update` or `delete`.
    pub op: String,
    pub link: u64,
    /// The record written (none for a create).
    pub record: Option<String>,
    /// By the sync's common field names.
    pub fields: Fields,
}

/// A change a dry run would reject.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlannedRejection {
    pub side: Side,
    pub record: String,
    pub reason: String,
}

/// The conflict rules a sync may call, by name.
pub type Rules = BTreeMap<String, Arc<ResolverPlugin>>;

/// The runner's clock: microseconds since the Unix epoch. The system's, or a simulation's.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system's clock.
pub fn system_clock() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// A batch of changes and when it was read.
type Read = (plugin::ChangeBatch, i64);

/// A field a side stored otherwise than written: (link, side, field).
type Rewritten = (u64, Side, String);

/// What [`SyncRunner::merge_again`] leaves to its caller.
struct MergedAgain {
    /// Writes refused on a stale version: (side, link).
    refused: Vec<(Side, u64)>,
    rewritten: Vec<Rewritten>,
    decided: Vec<engine::Decided>,
}

/// Most rounds of merging again what sides stored otherwise than written, in one cycle.
const REWRITE_ROUNDS: usize = 3;

/// One sync, ready to run cycles.
pub struct SyncRunner<S> {
    pub spec: SyncSpec,
    /// The sides' I/O, in config order: the left, the right, then any more.
    pub sides: Vec<S>,
    pub rules: Rules,
    /// Most changes read from each side per cycle, unless the side's last batch ended inside
    /// a transaction: the sync's batch, or a pilot's limit.
    batch: u32,
    /// Most changes of one source transaction applied at once: a cycle whose batch ends inside
    /// a transaction reads on to its end, up to this many changes from the side.
    max_transaction: u32,
    /// Most changes read from each side per call: up to the larger of `batch` and
    /// `max_transaction`, less while a read of that many runs the side's plugin out of memory
    /// or CPU (see [`read_fitting`]).
    read_max: Vec<CallSize>,
    /// Most ops written to each side per call: [`WRITE_BATCH`] or `max_transaction`, whichever
    /// is more (a transaction read whole is written in one call: one transaction on the other
    /// side), or less while a write of that many runs the side's plugin out of memory or CPU.
    write_max: Vec<CallSize>,
    /// Batches read ahead, by side, with the cursor they start at and when they were read:
    /// while the last cycle wrote the other side or committed (see
    /// [`SyncRunner::commit_reading_ahead`]).
    ahead: Vec<Option<(String, Read)>>,
    /// When changes were read (see invariant 4).
    clock: Clock,
    /// A pilot's size: each cycle (or dry run) takes at most this many changes from each side.
    limit: Option<u32>,
    /// The sides' schemas, compared with the sync's record (see [`SyncRunner::check_schema`]).
    schema: Option<SchemaWatch>,
    /// Other syncs that write the records of one of this sync's sides (see [`Relay`]).
    relays: Vec<Relay>,
    /// The process's turns for cycles with a full batch to work through (see [`Turns`]).
    turns: Option<Turns>,
    /// Whether a cycle has read yet: until then, a cycle waits for one of the turns' starts.
    started: bool,
    /// Whether the last cycle read a full batch: the next one reads within a turn.
    loading: bool,
    /// The sides the next cycle leaves unread, by side: set by a [`SyncRunner::watch`] that
    /// heard from some sides only (see there), used by the next cycle.
    unannounced: Option<Vec<bool>>,
}

/// The turns of the cycles with a full batch to work through (a first load, a backlog), shared
/// by the syncs of one process: one fewer than the runtime has threads (at least one). A cycle
/// takes one once its reads show a full batch, and holds it to its end; a cycle with a change
/// or two takes none, and so finds the thread left over free, instead of queued behind the
/// loading syncs' steps. That thread costs concurrent loads some of their pace (measured on 2
/// cores: 49 first loads at 21,500 rows/s in all against 27,000 with a turn per thread) and
/// brings a realtime sync's p99 beside them to 1.7-4.2x its p99 alone, from 4.3x with a turn
/// per thread (README, *Many syncs in one process*). One sync loading alone is not held up.
/// A cycle after a full batch takes its turn before it reads: a backlog's next batch is
/// likely full too, and 49 loads reading their next batches at once, beside the turns, kept
/// the small sync's reads waiting for a core.
///
/// A sync's first cycle (hundreds of syncs start at once) also waits for one of a few starts,
/// until it has read: started together, 500 syncs had 1,000 plugin instances alive at once,
/// queued for the state's commits, and the process kept the memory (about 400 MB) once idle.
/// A first cycle that goes on to wait for a turn gives its start back and its instances up
/// first, so a small sync's first cycle is never queued behind the loads' turns.
///
/// Turns bound how many loads run at once; which thread gets a core is the kernel's. The
/// cycles that take turns and starts run on the background runtime, at a lower OS priority
/// (see [`SyncRunner::next_in_background`] and [`crate::background`]).
#[derive(Clone)]
pub struct Turns {
    turns: Arc<tokio::sync::Semaphore>,
    starts: Arc<tokio::sync::Semaphore>,
}

/// First cycles reading at once, per turn.
const STARTS_PER_TURN: usize = 8;

impl Turns {
    /// One turn fewer than the runtime has threads, and at least one.
    pub fn for_threads() -> Turns {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Turns::new(threads.saturating_sub(1).max(1))
    }

    /// `n` turns.
    pub fn new(n: usize) -> Turns {
        Turns {
            turns: Arc::new(tokio::sync::Semaphore::new(n)),
            starts: Arc::new(tokio::sync::Semaphore::new(n * STARTS_PER_TURN)),
        }
    }

    /// Takes a turn, waiting for one; it is given back when the permit is dropped.
    pub async fn take(&self) -> tokio::sync::OwnedSemaphorePermit {
        Self::acquire(&self.turns).await
    }

    async fn start(&self) -> tokio::sync::OwnedSemaphorePermit {
        Self::acquire(&self.starts).await
    }

    async fn acquire(s: &Arc<tokio::sync::Semaphore>) -> tokio::sync::OwnedSemaphorePermit {
        s.clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

/// Another sync of the same Duplex whose side holds the same records as one of this sync's:
/// pairwise syncs through a shared side (a CRM synced with an ERP, the ERP with a helpdesk).
/// What it writes there relays a change made elsewhere, and counts as made when that change
/// was, as the other sync's link knows it. Taken as made when it was written, a relay would
/// look newer than the edits it raced: of an edit in the CRM and a later one in the helpdesk,
/// the CRM's, reaching the ERP last, would win. (A cycle of syncs is refused: see
/// `app::refuse_cycles`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// This sync's side whose records the other sync writes too.
    pub side: Side,
    /// The other sync's name and origin tag, and its side over the same records.
    pub sync: String,
    pub origin: String,
    pub their_side: Side,
}

/// One sync as [`Relay::among`] sees it: its name, origin tag, and what records each side
/// holds (a connection's stream, say `crm.people`).
pub struct Joins<'a> {
    pub sync: &'a str,
    pub origin: &'a str,
    pub sides: Vec<&'a str>,
}

impl Relay {
    /// The relays of sync `this` among `syncs`: every other sync with a side on the records
    /// of one of its sides.
    pub fn among(this: &str, syncs: &[Joins<'_>]) -> Vec<Relay> {
        let Some(me) = syncs.iter().find(|s| s.sync == this) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (side, records) in me.sides.iter().enumerate() {
            let side = Side::nth(side);
            for other in syncs.iter().filter(|s| s.sync != this) {
                for (their_side, theirs) in other.sides.iter().enumerate() {
                    let their_side = Side::nth(their_side);
                    if theirs == records {
                        out.push(Relay {
                            side,
                            sync: other.sync.to_owned(),
                            origin: other.origin.to_owned(),
                            their_side,
                        });
                    }
                }
            }
        }
        out
    }
}

/// How often, at most, a sync that reads changes compares its sides' schemas with its record
/// (microseconds): a change that cannot be mapped, a failed cycle or write, compares at once.
const SCHEMA_EVERY: i64 = 1_000_000;

/// A runner's watch over its sides' schemas.
pub struct SchemaWatch {
    /// Where the sync's schema record is kept (see [`crate::schema::dir`]).
    dir: std::path::PathBuf,
    record: SyncSchema,
    /// `connection.stream` of each side, for messages.
    labels: Vec<String>,
    /// The record is still to be written: a first run, or a write that failed.
    unsaved: bool,
    /// Compare at the next cycle: a cycle or a write failed, maybe on a changed column.
    due: bool,
    checked_at: Option<i64>,
}

impl SchemaWatch {
    /// `record` as kept in `dir`; `unsaved` when it is not there yet (a first run).
    pub fn new(
        dir: std::path::PathBuf,
        record: SyncSchema,
        labels: Vec<String>,
        unsaved: bool,
    ) -> SchemaWatch {
        SchemaWatch {
            dir,
            record,
            labels,
            unsaved,
            due: false,
            checked_at: None,
        }
    }
}

/// Most changes a dry run reads from each side to plan at once: the pending changes of a
/// pilot, bounded so that a dry run of a huge backlog cannot exhaust memory (`--limit` reads
/// fewer).
const DRY_RUN_MOST: usize = 1_000_000;

/// Calls in a row that must go through at a reduced size before it doubles again.
const GROW_AFTER: u32 = 50;

/// How many records a side's plugin is given in one call: at most `most`, halved each time a
/// call runs the plugin out of memory or CPU (records too big to hold so many at once), and
/// doubled again after [`GROW_AFTER`] calls in a row go through, so that a few large records
/// slow a sync down for a while instead of for the rest of the process's life.
#[derive(Debug, Clone, Copy)]
struct CallSize {
    now: u32,
    most: u32,
    fitted: u32,
}

impl CallSize {
    fn new(most: u32) -> CallSize {
        CallSize {
            now: most.max(1),
            most: most.max(1),
            fitted: 0,
        }
    }

    /// A call of `tried` records was too much: the next is half as big. False when `tried`
    /// was one already, and nothing smaller can be tried.
    fn too_big(&mut self, tried: u32) -> bool {
        self.fitted = 0;
        if tried <= 1 {
            return false;
        }
        self.now = (tried / 2).min(self.now);
        true
    }

    /// A call went through.
    fn fitted(&mut self) {
        if self.now < self.most {
            self.fitted += 1;
            if self.fitted >= GROW_AFTER {
                self.fitted = 0;
                self.now = self.now.saturating_mul(2).min(self.most);
            }
        }
    }
}

impl<S> SyncRunner<S> {
    /// A sync of two sides.
    pub fn new(spec: SyncSpec, left: S, right: S, batch: u32, rules: Rules) -> Self {
        SyncRunner::of(spec, vec![left, right], batch, rules)
    }

    /// A sync of `sides`, one per side of `spec`, in its order.
    pub fn of(spec: SyncSpec, sides: Vec<S>, batch: u32, rules: Rules) -> Self {
        assert_eq!(
            sides.len(),
            spec.sides(),
            "one I/O per side of sync {}",
            spec.name
        );
        let n = sides.len();
        SyncRunner {
            spec,
            sides,
            rules,
            batch: batch.max(1),
            max_transaction: MAX_TRANSACTION,
            read_max: vec![CallSize::new(batch.max(MAX_TRANSACTION)); n],
            write_max: vec![CallSize::new((WRITE_BATCH as u32).max(MAX_TRANSACTION)); n],
            ahead: (0..n).map(|_| None).collect(),
            clock: Arc::new(system_clock),
            limit: None,
            schema: None,
            relays: Vec::new(),
            turns: None,
            started: false,
            loading: false,
            unannounced: None,
        }
    }

    /// Dates the writes of other syncs to this sync's sides by the changes they relay.
    pub fn relaying(mut self, relays: Vec<Relay>) -> Self {
        self.relays = relays;
        self
    }

    /// Compares the sides' schemas with the sync's record as cycles read changes, and stops the
    /// fields whose columns are gone or retyped (see `crate::schema`).
    pub fn watching_schema(mut self, watch: SchemaWatch) -> Self {
        self.spec.stopped = watch.record.stopped.clone();
        self.schema = Some(watch);
        self
    }

    /// A pilot: each cycle, and a dry run, takes at most `n` changes from each side, and
    /// does not read on to the end of a transaction.
    pub fn limited(mut self, n: u32) -> Self {
        self.batch = n.max(1);
        self.limit = Some(n);
        self
    }

    /// Applies a source transaction of up to `max` changes to the other side at once: a cycle
    /// whose batch ends inside one of a side's transactions (the connector says so, see
    /// `change-batch.mid-transaction`) reads on to its end and writes it in one call to each
    /// other side, one transaction there. A bigger one is applied in parts, logged.
    pub fn whole_transactions_up_to(mut self, max: u32) -> Self {
        self.max_transaction = max.max(1);
        let reads = self.batch.max(self.max_transaction);
        let writes = (WRITE_BATCH as u32).max(self.max_transaction);
        self.read_max = vec![CallSize::new(reads); self.sides.len()];
        self.write_max = vec![CallSize::new(writes); self.sides.len()];
        self
    }

    /// Takes one of `turns` for each cycle with a full batch to work through (see [`Turns`]).
    pub fn taking_turns(mut self, turns: Turns) -> Self {
        self.turns = Some(turns);
        self
    }

    /// Reads `clock` instead of the system's: a simulation's, which its systems share.
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }
}

/// How long each phase of a cycle took, for the debug log (`DUPLEX_LOG=duplex=debug`).
struct Laps {
    last: std::time::Instant,
    laps: Vec<(&'static str, std::time::Duration)>,
}

impl Laps {
    fn start() -> Laps {
        Laps {
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    fn end(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((phase, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: std::time::Duration = self.laps.iter().map(|(_, d)| *d).sum();
        write!(f, "{:.1} ms:", total.as_secs_f64() * 1e3)?;
        for (phase, d) in &self.laps {
            write!(f, " {phase} {:.1}", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

fn state_err(sync: &str) -> impl Fn(StateError) -> CycleError + '_ {
    move |source| CycleError::State {
        sync: sync.to_owned(),
        source,
    }
}

/// Records a plan's writes as intents, each with its link as planned, before any is sent.
fn record_intents(state: &State, sync: &str, plan: &Plan) -> Result<(), CycleError> {
    let intents: Vec<IntentRef<'_>> = plan
        .ops
        .iter()
        .map(|op| IntentRef {
            link: &plan.links[&op.link],
            side: op.side,
            op: &op.kind,
        })
        .collect();
    state
        .record_intents(sync, &intents)
        .map_err(state_err(sync))
}

impl<S: SideIo> SyncRunner<S> {
    fn io(&mut self, side: Side) -> &mut S {
        &mut self.sides[side.index()]
    }

    /// Ends the unit of work of every side.
    fn finish_all(&mut self) {
        for io in &mut self.sides {
            io.finish();
        }
    }

    /// Deals with writes a crash (or a call that broke off) may have cut short (invariant 2).
    ///
    /// Each intent is checked against its side: an update is confirmed when the record now holds
    /// the written values, a delete when the record is gone, a create when a record with the
    /// match key and exactly the written values exists unlinked. A confirmed write is settled
    /// into the link as the lost commit would have done, so the changes read again (the cursors
    /// did not move) are merged against the right base: Duplex's own write is not mistaken for
    /// a person's edit, and a create is not made twice. An unconfirmed write is simply planned
    /// again.
    ///
    /// Intents are checked in lots of [`RECOVER_BATCH`], each lot's records looked up in one
    /// `find` per side and kind, and what a lot settled is saved before a failing side stops the
    /// recovery: after a crash in a cycle of thousands of writes to an API that fails now and
    /// then, recovery still gets through, where starting over at every failure never would.
    ///
    /// A counter is the exception: a write of its total that the record no longer holds, while
    /// the record's version moved, may have landed before a person's sale or been refused after
    /// it, and the two give different totals. Which one happened cannot be told from the record,
    /// so the counter waits for a person (see [`Self::unsure_counters`]); it is never guessed.
    pub async fn recover(&mut self, state: &State, now: i64) -> Result<usize, CycleError> {
        let sync = self.spec.name.clone();
        let mut intents = state.intents(&sync).map_err(state_err(&sync))?;
        if intents.is_empty() {
            return Ok(0);
        }
        let mut links: BTreeMap<u64, Link> = BTreeMap::new();
        // A link written again in the cut-short cycle (a refused write merged once more with
        // the record read again, a value stored otherwise flowing back) has an intent per
        // write. The last carries what the cycle knew last of it, which the lost commit would
        // have stored: the confirmed writes are settled onto that copy. Settled onto the
        // first, the record read again was forgotten, and its edit, merged and written to the
        // other side, came back as that side's own, to win over a later edit of the record.
        let last: std::collections::HashMap<u64, usize> = intents
            .iter()
            .enumerate()
            .map(|(i, intent)| (intent.link.id, i))
            .collect();
        // Records a create was confirmed by: one record confirms one create only.
        let mut claimed: BTreeSet<(Side, String)> = BTreeSet::new();
        let mut confirmed = 0;
        let mut unsure = Vec::new();
        // The writes found made, for the activity log: the lost commit would have listed them.
        let mut made: Vec<Activity> = Vec::new();
        let mut done = 0;
        while done < intents.len() {
            let lot = &intents[done..intents.len().min(done + RECOVER_BATCH)];
            let found = match self.look_up(state, lot).await {
                Ok(found) => found,
                // Planned again unchecked, a write that was made would come back in the record
                // as if a person had made it (the feed leaves Duplex's own writes out), and
                // could win over the other side's later edit. The intents not yet checked
                // stay; the next cycle checks them again.
                Err((side, error)) => {
                    tracing::warn!(sync = %sync, side = %side, error = %error, checked = done, left = intents.len() - done,
                        "could not check whether writes cut short by a crash were made; trying again next cycle");
                    let rest: Vec<Intent> = intents
                        .drain(done..)
                        .map(|mut intent| {
                            if let Some(settled) = links.get(&intent.link.id) {
                                intent.link = settled.clone();
                            }
                            intent
                        })
                        .collect();
                    let links: Vec<Link> = links.into_values().collect();
                    state
                        .commit_recovered(&sync, now, &links, &unsure, &made, &rest)
                        .map_err(state_err(&sync))?;
                    return Err(CycleError::Recover { sync, side, error });
                }
            };
            for intent in lot {
                let notes = self.unsure_counters(intent, &found);
                if !notes.is_empty() {
                    tracing::warn!(sync = %sync, link = intent.link.id, side = %intent.side,
                        "a counter's write was cut short by a crash and its record changed since; it waits for a person");
                    // The link as planned: the changes the total added stay counted once. The
                    // side's counter is taken as it is now, for the total a person gives is
                    // the total of what both sides show.
                    let link = links
                        .entry(intent.link.id)
                        .or_insert_with(|| intents[last[&intent.link.id]].link.clone());
                    let st = link.side_mut(intent.side);
                    for note in &notes {
                        if let Some(v) = note.value(intent.side) {
                            st.seen
                                .get_or_insert_with(Fields::new)
                                .insert(note.field.clone(), v.clone());
                            st.counted.insert(note.field.clone(), v.clone());
                        }
                    }
                    unsure.extend(notes);
                }
                let (op, outcome) = match self.confirm(intent, &found, &mut claimed) {
                    Ok(Some(write)) => write,
                    Ok(None) => continue,
                    // The connector cannot look the record up (or refuses to): the write can
                    // never be checked, and is planned again as before.
                    Err(error) => {
                        tracing::warn!(sync = %sync, link = intent.link.id, error = %error,
                            "cannot check whether a write cut short by a crash was made; planning it again");
                        continue;
                    }
                };
                let link = links
                    .entry(intent.link.id)
                    .or_insert_with(|| intents[last[&intent.link.id]].link.clone());
                settle(&self.spec, link, intent.side, &op, &outcome);
                if let Outcome::Written { id, .. } = &outcome {
                    made.push(Activity {
                        at: now,
                        sync: sync.clone(),
                        link: intent.link.id,
                        side: intent.side,
                        op: op_name(&op).into(),
                        record: id.clone(),
                        fields: op_fields(&op),
                        decided: None,
                    });
                }
                confirmed += 1;
                tracing::info!(sync = %sync, link = intent.link.id, side = %intent.side, op = op_name(&op),
                    "a write cut short by a crash had been made; recorded it");
            }
            done += lot.len();
        }
        let links: Vec<Link> = links.into_values().collect();
        state
            .commit_recovered(&sync, now, &links, &unsure, &made, &[])
            .map_err(state_err(&sync))?;
        Ok(confirmed)
    }

    /// The counters an update intent wrote whose landing cannot be told: the record's version
    /// moved since the write was planned. Its value proves nothing either way: a record at
    /// 10 that sold one while the other side sold one too is written 8, and sells one more
    /// whether or not the write landed. Each becomes a conflict with both stories in its reason.
    fn unsure_counters(&self, intent: &Intent, found: &Found) -> Vec<engine::ConflictNote> {
        let OpKind::Update {
            id,
            fields,
            if_version,
        } = &intent.op
        else {
            return Vec::new();
        };
        let Some(c) = found.by_id.get(&(intent.side, id.clone())) else {
            return Vec::new();
        };
        if c.version == *if_version {
            return Vec::new();
        }
        let now = self.map_current(intent.side, c);
        let before = intent.link.side(intent.side).seen.as_ref();
        let side_name = self.spec.side_name(intent.side);
        fields
            .iter()
            .filter(|(f, _)| self.spec.is_counter(f))
            .filter_map(|(f, written)| {
                let value = now.get(f)?;
                let was = before.and_then(|b| b.get(f))?;
                // What each side shows: this side's counter now, the others' as last seen.
                let mut values = intent.link.each_side().map(|(side, st)| {
                    if side == intent.side {
                        Some(value.clone())
                    } else {
                        st.seen.as_ref().and_then(|s| s.get(f)).cloned()
                    }
                });
                let (left, right) = (values.next().flatten(), values.next().flatten());
                Some(engine::ConflictNote {
                    more: values.collect(),
                    link: intent.link.id,
                    field: f.clone(),
                    base: Some(written.clone()),
                    left,
                    right,
                    reason: format!(
                        "counter {f}: a write of the total {} to {side_name} record {id} was cut short by a crash, and the record changed since (from {} to {}): if the write landed, {side_name} changed it by {} since; if not, by {}. Which one cannot be told: give the total",
                        written.display(),
                        was.display(),
                        value.display(),
                        engine::counter_change(value, written),
                        engine::counter_change(value, was),
                    ),
                })
            })
            .collect()
    }

    /// Looks up, on each side, the records a lot of intents wrote: by id for updates and
    /// deletes, by the match key for creates (unlinked records only, found the way matching on
    /// first sight finds them). A passing failure is returned with its side.
    async fn look_up(&mut self, state: &State, lot: &[Intent]) -> Result<Found, (Side, IoError)> {
        let sync = self.spec.name.clone();
        let mut found = Found::default();
        for side in self.spec.all_sides() {
            let ids: BTreeSet<String> = lot
                .iter()
                .filter(|i| i.side == side)
                .filter_map(|i| match &i.op {
                    OpKind::Update { id, .. } | OpKind::Delete { id, .. } => Some(id.clone()),
                    OpKind::Create { .. } => None,
                })
                .collect();
            if !ids.is_empty() {
                let ids: Vec<String> = ids.into_iter().collect();
                let (records, refused) = self
                    .find_lot(side, ids.clone(), LookupKey::Ids)
                    .await
                    .map_err(|e| (side, e))?;
                for c in records {
                    found.by_id.insert((side, c.id.clone()), c);
                }
                for (i, error) in refused {
                    found.refused_ids.insert((side, ids[i].clone()), error);
                }
            }

            let Some(key) = self.spec.match_key.clone() else {
                continue;
            };
            let mut field = None;
            let mut values = Vec::new();
            let mut norms = Vec::new();
            for intent in lot.iter().filter(|i| i.side == side) {
                let OpKind::Create { fields } = &intent.op else {
                    continue;
                };
                let Some(value) = fields.get(&key.field) else {
                    continue;
                };
                let Some(norm) = key.normalise(value) else {
                    continue;
                };
                let Ok(out) = self
                    .spec
                    .map_out(side, &Fields::from([(key.field.clone(), value.clone())]))
                else {
                    continue;
                };
                if let Some((name, v)) = out.into_iter().next() {
                    field = Some(name);
                    values.push(plugin::Value::from(v));
                    norms.push(norm);
                }
            }
            let Some(field) = field else {
                continue;
            };
            let (records, refused) = self
                .find_lot(side, values, |values| {
                    LookupKey::ByField(FieldMatch {
                        field: field.clone(),
                        values,
                        ignore_case: key.ignore_case,
                    })
                })
                .await
                .map_err(|e| (side, e))?;
            for (i, error) in refused {
                found.refused_keys.insert((side, norms[i].clone()), error);
            }
            for c in records {
                let linked = state
                    .link_for(&sync, side, &c.id)
                    .map_err(|e| (side, IoError::new(e.to_string())))?;
                let norm = self
                    .map_fields(side, &c.fields)
                    .ok()
                    .and_then(|f| f.get(&key.field).and_then(|v| key.normalise(v)));
                let (None, Some(norm)) = (linked, norm) else {
                    continue;
                };
                let list = found.by_key.entry((side, norm)).or_default();
                if !list.iter().any(|x| x.id == c.id) {
                    list.push(c);
                }
            }
        }
        Ok(found)
    }

    /// Looks a lot of keys (ids, or values of one field) up in one `find`. Where the side
    /// refuses the lot outright (a lasting error), each key is asked alone, so one key it
    /// cannot look up leaves the others checked; the keys refused come back by index with why.
    /// A passing failure stops the lot.
    async fn find_lot<K: Clone>(
        &mut self,
        side: Side,
        keys: Vec<K>,
        ask: impl Fn(Vec<K>) -> LookupKey,
    ) -> Result<(Vec<plugin::Current>, Vec<(usize, IoError)>), IoError> {
        match self.io(side).find(ask(keys.clone())).await {
            Ok(found) => return Ok((found, Vec::new())),
            Err(error) if !error.lasting => return Err(error),
            Err(error) if keys.len() == 1 => return Ok((Vec::new(), vec![(0, error)])),
            Err(_) => {}
        }
        let mut found = Vec::new();
        let mut refused = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            match self.io(side).find(ask(vec![key])).await {
                Ok(records) => found.extend(records),
                Err(error) if error.lasting => refused.push((i, error)),
                Err(error) => return Err(error),
            }
        }
        Ok((found, refused))
    }

    /// Whether an intent's write was made, from what its lot's lookups found: the part of it
    /// that was (for an update, the fields that still hold what was written; a person may have
    /// edited the others since) and its outcome. An error: the side refused to look it up.
    fn confirm(
        &self,
        intent: &Intent,
        found: &Found,
        claimed: &mut BTreeSet<(Side, String)>,
    ) -> Result<Option<(OpKind, Outcome)>, IoError> {
        let side = intent.side;
        match &intent.op {
            OpKind::Update {
                id,
                fields,
                if_version,
            } => {
                let key = (side, id.clone());
                if let Some(error) = found.refused_ids.get(&key) {
                    return Err(error.clone());
                }
                let Some(c) = found.by_id.get(&key) else {
                    return Ok(Some((intent.op.clone(), Outcome::Gone)));
                };
                let now = self.map_current(side, c);
                // A counter holding the total written proves nothing: sales can bring it there
                // too (see `unsure_counters`).
                let held: Fields = fields
                    .iter()
                    .filter(|(k, v)| now.get(*k) == Some(*v) && !self.spec.is_counter(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if held.is_empty() || c.version == *if_version {
                    return Ok(None);
                }
                let op = OpKind::Update {
                    id: id.clone(),
                    fields: held,
                    if_version: if_version.clone(),
                };
                Ok(Some((
                    op,
                    // Confirmed only where the record holds what was written: nothing to learn.
                    Outcome::Written {
                        id: c.id.clone(),
                        version: c.version.clone(),
                        stored: None,
                    },
                )))
            }
            OpKind::Delete { id, .. } => {
                let key = (side, id.clone());
                if let Some(error) = found.refused_ids.get(&key) {
                    return Err(error.clone());
                }
                Ok((!found.by_id.contains_key(&key)).then(|| {
                    (
                        intent.op.clone(),
                        Outcome::Written {
                            id: id.clone(),
                            version: None,
                            stored: None,
                        },
                    )
                }))
            }
            OpKind::Create { fields } => {
                let Some(key) = &self.spec.match_key else {
                    tracing::warn!(sync = %self.spec.name, link = intent.link.id,
                        "a create may have been cut short and the sync has no match key to find it by; if it was made, the record may now exist twice");
                    return Ok(None);
                };
                let Some(norm) = fields.get(&key.field).and_then(|v| key.normalise(v)) else {
                    return Ok(None);
                };
                let norm = (side, norm);
                if let Some(error) = found.refused_keys.get(&norm) {
                    return Err(error.clone());
                }
                let unlinked: Vec<&plugin::Current> = found
                    .by_key
                    .get(&norm)
                    .into_iter()
                    .flatten()
                    .filter(|c| !claimed.contains(&(side, c.id.clone())))
                    .collect();
                // What the record holds of the written fields is what the side stored of them
                // (a person's later edits of other fields come through the feed, with times).
                let [c] = unlinked.as_slice() else {
                    return Ok(None);
                };
                claimed.insert((side, c.id.clone()));
                let mut stored = self.map_current(side, c);
                stored.retain(|k, _| fields.contains_key(k));
                Ok(Some((
                    intent.op.clone(),
                    Outcome::Written {
                        id: c.id.clone(),
                        version: c.version.clone(),
                        stored: Some(stored),
                    },
                )))
            }
        }
    }

    fn map_current(&self, side: Side, c: &plugin::Current) -> Fields {
        self.map_fields(side, &c.fields).unwrap_or_default()
    }

    /// A connector's field values as the sync's common fields.
    fn map_fields(
        &self,
        side: Side,
        fields: &[plugin::FieldValue],
    ) -> Result<Fields, engine::MapError> {
        self.spec
            .map_in(side, fields.iter().map(|f| (f.name.as_str(), &f.value)))
    }

    /// Waits up to `timeout` for a side to announce changes (see [`Announced`]).
    ///
    /// The next cycle then reads the sides that announced or cannot tell, and leaves unread a
    /// side that could have announced and did not: a realtime change reads the side it was
    /// made on, not every side (a read is a few round trips; the change's write wakes the
    /// other side, whose own cycle reads that one alone). Only a side that loses nothing by
    /// not being read now is left: its wait keeps an announcement it was cut short before
    /// making ([`SideIo::keeps_announcements`]: its next wait answers at once), and it honours
    /// conditional writes, so a change made on it and not yet read refuses the write planned
    /// without it and is merged (step 7 of a cycle) instead of overwritten.
    pub async fn watch(&mut self, timeout: std::time::Duration) -> Announced {
        use futures_util::FutureExt;
        use plugin::Watched;
        self.unannounced = None;
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        // The sides that may be left unread when they announce nothing (see above).
        let may_skip: Vec<bool> = self
            .sides
            .iter()
            .map(|io| io.keeps_announcements() && io.conditional_writes())
            .collect();
        // The sides to read: those that announced changes or cannot tell.
        let mut heard = vec![false; self.sides.len()];
        let outcome = {
            use futures_util::StreamExt;
            let mut waits: futures_util::stream::FuturesUnordered<_> = self
                .sides
                .iter_mut()
                .enumerate()
                .map(|(i, io)| io.watch(ms).map(move |w| (i, w)))
                .collect();
            let (mut waited, mut cannot) = (false, false);
            // The first announcement wins; a side that cannot announce answers at once.
            let outcome = loop {
                match waits.next().await {
                    Some((i, Ok(Watched::Changed))) => {
                        heard[i] = true;
                        break Announced::Changes;
                    }
                    Some((_, Ok(Watched::Timeout))) => waited = true,
                    Some((i, _)) => {
                        heard[i] = true;
                        cannot = true;
                    }
                    None if cannot => break Announced::CannotTell { waited },
                    None => break Announced::Quiet,
                }
            };
            // Answers ready with the first (two sides of one database hear one announcement)
            // are heard too; the waits still running end here, their announcements kept.
            while let Some(Some((i, w))) = waits.next().now_or_never() {
                heard[i] |= !matches!(w, Ok(Watched::Timeout));
            }
            outcome
        };
        self.finish_all();
        if outcome != Announced::Quiet {
            let unread: Vec<bool> = heard
                .iter()
                .zip(&may_skip)
                .map(|(heard, may)| !heard && *may)
                .collect();
            self.unannounced = unread.contains(&true).then_some(unread);
        }
        outcome
    }

    /// Whether the next cycle is likely to work through a full batch: a sync's first (it
    /// cannot tell before reading, and hundreds may start at once) or one after a full batch.
    /// The caller runs such a cycle as background work (see [`crate::background`]). A cycle
    /// that finds a full batch where the last found none runs where it is: one cycle a backlog.
    pub fn next_in_background(&self) -> bool {
        self.turns.is_some() && (self.loading || !self.started)
    }

    /// Runs one cycle at time `now` (microseconds since the epoch).
    pub async fn cycle(&mut self, state: &State, now: i64) -> Result<CycleReport, CycleError> {
        let result = self.cycle_inner(state, now).await;
        self.finish_all();
        // A statement may have failed on a column that changed: compare before the next one.
        if let Some(w) = &mut self.schema {
            w.due |= result.as_ref().map_or(true, |r| r.failed > 0);
        }
        result
    }

    /// Compares both sides' schemas with the sync's record; a mapped column gone or retyped
    /// stops its field from this cycle on (`SyncSpec::stopped`); the drift is logged when it
    /// changes and kept in the record for `status` and `check`. A side that cannot say is left as it was.
    async fn check_schema(&mut self, now: i64) {
        if self.schema.is_none() {
            return;
        }
        // Each side asked at once: on the path of a cycle that read changes, where one after
        // the other they added both round trips (and an instance's start) to its latency.
        let shapes =
            futures_util::future::join_all(self.sides.iter_mut().map(|io| io.shape())).await;
        let sync = self.spec.name.clone();
        let w = self.schema.as_mut().expect("checked above");
        w.due = false;
        w.checked_at = Some(now);
        let mut now_shapes = Vec::with_capacity(shapes.len());
        for shape in shapes {
            match shape {
                Ok(Some(s)) => now_shapes.push(s),
                Err(e) => {
                    tracing::warn!(sync = %sync, "cannot compare the schemas: {e}");
                    return;
                }
                Ok(None) => return,
            }
        }
        let labels: Vec<&str> = w.labels.iter().map(String::as_str).collect();
        let shapes: Vec<&crate::schema::Shape> = now_shapes.iter().collect();
        if w.record.compare(&self.spec.fields, &labels, &shapes) {
            for line in w.record.report() {
                tracing::warn!(sync = %sync, "schema drift: {line}");
            }
            self.spec.stopped = w.record.stopped.clone();
            w.unsaved = true;
        }
        if w.unsaved {
            match w.record.save(&w.dir, &sync) {
                Ok(()) => w.unsaved = false,
                Err(e) => tracing::warn!(sync = %sync, "cannot keep the schema record: {e}"),
            }
        }
    }

    /// Whether this cycle compares the schemas: the first does, then one that read changes at
    /// most every [`SCHEMA_EVERY`], or at once after a failure.
    fn schema_due(&self, now: i64, read_any: bool) -> bool {
        self.schema.as_ref().is_some_and(|w| match w.checked_at {
            None => true,
            Some(at) => w.due || (read_any && now - at >= SCHEMA_EVERY),
        })
    }

    /// A batch's changes as the engine sees them, or why one cannot be mapped.
    fn map_batches(
        &self,
        batches: &[(Side, ChangeBatch, i64)],
    ) -> Vec<(Side, String, Result<Observed, String>)> {
        batches
            .iter()
            .flat_map(|(side, batch, read_at)| {
                batch
                    .changes
                    .iter()
                    .map(move |ch| (*side, ch.id.clone(), self.observe(*side, ch, *read_at)))
            })
            .collect()
    }

    /// Gives each change another sync wrote (see [`Relay`]) the time of the change it relayed:
    /// the latest change its link knows of either side, when its link still holds the version
    /// read (the write is the record's latest change: the feed names its origin only then).
    fn date_relays(
        &self,
        state: &State,
        batches: &[(Side, ChangeBatch, i64)],
        mapped: &mut [(Side, String, Result<Observed, String>)],
    ) -> Result<(), StateError> {
        if self.relays.is_empty() {
            return Ok(());
        }
        // The changes each relaying sync wrote, looked up in one read per sync.
        let mut wrote: BTreeMap<usize, Vec<(Side, &plugin::Change)>> = BTreeMap::new();
        for (side, batch, _) in batches {
            for ch in &batch.changes {
                let relay = self.relays.iter().position(|r| {
                    r.side == *side && ch.origin.as_deref() == Some(r.origin.as_str())
                });
                if let Some(r) = relay {
                    wrote.entry(r).or_default().push((*side, ch));
                }
            }
        }
        let mut carried: BTreeMap<(Side, &str), i64> = BTreeMap::new();
        for (r, changes) in wrote {
            let relay = &self.relays[r];
            let records: Vec<(Side, String)> = changes
                .iter()
                .map(|(_, ch)| (relay.their_side, ch.id.clone()))
                .collect();
            let links = state.links(&relay.sync, &records, &[])?;
            for (side, ch) in changes {
                let theirs = links.iter().find(|l| {
                    let st = l.side(relay.their_side);
                    st.id.as_deref() == Some(ch.id.as_str()) && st.version == ch.version
                });
                let latest =
                    theirs.and_then(|l| l.each_side().filter_map(|(_, s)| s.changed_at).max());
                if let Some(at) = latest {
                    carried.insert((side, ch.id.as_str()), at);
                }
            }
        }
        for (side, id, observed) in mapped.iter_mut() {
            if let (Some(at), Ok(o)) = (carried.get(&(*side, id.as_str())), observed) {
                o.changed_at = Some(*at);
            }
        }
        Ok(())
    }

    /// Plans every change waiting at time `now` without writing anything anywhere (see
    /// [`DryRun`]; the sides should be read-only, see `PluginSide::read_only`). A write cut
    /// short by a crash must be checked by a real cycle first: the dry run refuses.
    pub async fn dry_run(&mut self, state: &State, now: i64) -> Result<DryRun, CycleError> {
        let sides = Side::all(self.sides.len())
            .map(|side| self.spec.side_name(side).to_owned())
            .collect();
        let mut dry = Some(DryRun {
            sides,
            ..DryRun::default()
        });
        let result = self.cycle_inner_with(state, now, &mut dry).await;
        self.finish_all();
        result?;
        Ok(dry.unwrap_or_default())
    }

    async fn cycle_inner(&mut self, state: &State, now: i64) -> Result<CycleReport, CycleError> {
        self.cycle_inner_with(state, now, &mut None).await
    }

    /// A cycle; with `dry` given, it stops once planned and fills `dry` in instead of writing.
    async fn cycle_inner_with(
        &mut self,
        state: &State,
        now: i64,
        dry: &mut Option<DryRun>,
    ) -> Result<CycleReport, CycleError> {
        let sync = self.spec.name.clone();
        let se = state_err(&sync);
        let mut report = CycleReport::default();
        let mut lap = Laps::start();
        let unannounced = std::mem::take(&mut self.unannounced).filter(|_| dry.is_none());
        let mut start = match &self.turns {
            Some(turns) if !self.started && dry.is_none() => Some(turns.start().await),
            _ => None,
        };
        let turn = match &self.turns {
            Some(turns) if self.loading && dry.is_none() => Some(turns.take().await),
            _ => None,
        };
        lap.end("start");
        if dry.is_some() {
            if !state.intents(&sync).map_err(&se)?.is_empty() {
                return Err(se(StateError::Query(
                    "a write cut short by a crash is still to be checked: run a cycle before a dry run"
                        .into(),
                )));
            }
        } else {
            self.recover(state, now).await?;
        }
        lap.end("recover");
        let cursors = state.cursors(&sync, self.sides.len()).map_err(&se)?;

        // 1. Read.
        let mut batches = Vec::with_capacity(self.sides.len());
        let origin = self.spec.origin.clone();
        let ahead = std::mem::replace(
            &mut self.ahead,
            (0..self.sides.len()).map(|_| None).collect(),
        );
        report.read = vec![0; self.sides.len()];
        // What the sides still waiting said remains, none once one could not say.
        let mut remaining = Some(0u64);
        // Every side at once: a realtime change waited for both reads one after the other, each
        // a few round trips (about 2 ms alone, up to 8 beside busy loads). A side's own reads
        // stay in order: a transaction is read on to its end. A runner's first read goes one
        // side after the other: it may install capture on both, and two sessions creating the
        // log's tables at once in one PostgreSQL database collide (one fails on the
        // catalogue's unique index).
        let together = self.started;
        let how = SideRead {
            sync: &sync,
            origin: &origin,
            batch: self.batch,
            max_transaction: self.max_transaction,
            whole: self.limit.is_none(),
            dry: dry.is_some(),
            clock: &self.clock,
        };
        // A side the last wait heard nothing from is left for its own announcement (see
        // [`SyncRunner::watch`]), unless a batch read ahead of it waits.
        let unread: Vec<bool> = ahead
            .iter()
            .enumerate()
            .map(|(i, ahead)| ahead.is_none() && unannounced.as_ref().is_some_and(|u| u[i]))
            .collect();
        report.unread = unread.iter().filter(|u| **u).count();
        let reads = self
            .sides
            .iter_mut()
            .zip(self.read_max.iter_mut())
            .zip(Side::all(self.spec.sides()).zip(cursors).zip(ahead))
            .zip(unread)
            .filter(|(_, unread)| !unread)
            .map(|(((io, max), ((side, cursor), ahead)), _)| {
                how.read(io, max, side, cursor, ahead)
            });
        let reads: Vec<SideBatches> = if together {
            let done = futures_util::future::join_all(reads).await;
            done.into_iter().collect::<Result<_, _>>()?
        } else {
            let mut done = Vec::with_capacity(self.spec.sides());
            for read in reads {
                done.push(read.await?);
            }
            done
        };
        for read in reads {
            let side = read.side;
            report.read[side.index()] = read.batches.iter().map(|(b, _)| b.changes.len()).sum();
            report.whole_transaction |= read.whole_transaction;
            if let Some((last, _)) = read.batches.last().filter(|(b, _)| b.has_more) {
                report.more = true;
                remaining = remaining
                    .zip(last.remaining)
                    .map(|(sum, n)| sum.saturating_add(n));
            }
            batches.extend(read.batches.into_iter().map(|(b, at)| (side, b, at)));
        }
        report.remaining = remaining.filter(|_| report.more);
        lap.end("read");
        self.started = true;
        // A full batch to work through (or a transaction read whole): the rest of the cycle
        // waits for one of the process's turns. Changes held behind a running transaction
        // (`more` with nothing read) are no backlog. A first cycle waiting for a turn gives
        // its start back, and its instances up. A cycle after a full batch took its turn
        // before reading (see [`Turns`]).
        let read: usize = report.read.iter().sum();
        let full = read > 0 && (report.more || read >= self.batch as usize);
        if dry.is_none() {
            self.loading = full;
        }
        let _turn = match (turn, self.turns.clone()) {
            (Some(turn), _) => Some(turn),
            (None, Some(turns)) if full && dry.is_none() => {
                if start.take().is_some() {
                    self.finish_all();
                }
                Some(turns.take().await)
            }
            _ => None,
        };
        lap.end("turn");
        // 2. Map to common names, with the fields a schema change stopped left out.
        let read_any = batches.iter().any(|(_, b, _)| !b.changes.is_empty());
        if dry.is_none() && self.schema_due(now, read_any) {
            self.check_schema(now).await;
        }
        // Mapping the batches is the next lap's: with a large batch it outweighs the check.
        lap.end("schema");
        let mut mapped = self.map_batches(&batches);
        // A value that cannot be mapped may come from a column retyped since the last look.
        let unmappable = mapped.iter().any(|(_, _, o)| o.is_err());
        let looked = self
            .schema
            .as_ref()
            .is_some_and(|w| w.checked_at == Some(now));
        if dry.is_none() && unmappable && self.schema.is_some() && !looked {
            self.check_schema(now).await;
            mapped = self.map_batches(&batches);
        }
        self.date_relays(state, &batches, &mut mapped)
            .map_err(&se)?;
        let mut changes = Vec::new();
        let mut commit = CycleCommit::default();
        let mut fresh: BTreeSet<(Side, String)> = BTreeSet::new();
        // A side's value in a column gone or retyped is not read: reported, as the other side's
        // changes of a stopped field are by the plan.
        let mut unsynced: BTreeMap<(Side, String), Vec<String>> = BTreeMap::new();
        for (side, batch, _) in &batches {
            for ch in batch.changes.iter().filter(|c| {
                c.kind != ChangeKind::Delete && c.origin.as_deref() != Some(origin.as_str())
            }) {
                for f in &self.spec.fields {
                    let Some(why) = self.spec.stopped.get(&f.name).and_then(|s| s.on(*side)) else {
                        continue;
                    };
                    let column = f.side_name(*side);
                    let held = ch
                        .fields
                        .iter()
                        .any(|v| v.name == column && !matches!(v.value, plugin::Value::Null));
                    if held {
                        unsynced
                            .entry((*side, ch.id.clone()))
                            .or_default()
                            .push(format!("field {} was not read: {why}", f.name));
                    }
                }
            }
        }
        // A record changed again further on in a transaction read in several batches is in
        // each: its last read is the one that counts.
        let mut read_later = BTreeSet::new();
        let mut mapped: Vec<_> = (mapped.into_iter().rev())
            .filter(|(side, id, _)| read_later.insert((*side, id.clone())))
            .collect();
        mapped.reverse();
        for (side, id, observed) in mapped {
            fresh.insert((side, id.clone()));
            commit.cleared.push((side, id.clone()));
            match observed {
                Ok(o) => changes.push(o),
                Err(reason) => commit.rejected.push((side, id, reason, None)),
            }
        }
        // Changes rejected earlier (an ambiguous match) are tried again, unless superseded.
        for r in state.rejected(&sync).map_err(&se)? {
            if let Some(o) = r.observed() {
                if !fresh.contains(&(r.side, r.id.clone())) {
                    changes.push(o);
                }
            }
        }
        changes.sort_by_key(|c| c.side);

        lap.end("map");
        // 3. Load links: of these records, and dirty ones due for a retry.
        let records: Vec<(Side, String)> = changes.iter().map(|c| (c.side, c.id.clone())).collect();
        let due = state.due_dirty(&sync, now, RETRY_BATCH).map_err(&se)?;
        report.retried = due.len();
        let due_ids: Vec<u64> = due.iter().map(|(id, _)| *id).collect();
        let mut links = state.links(&sync, &records, &due_ids).map_err(&se)?;
        lap.end("links");
        // 4. Match keys: records on the other side for each unlinked new record.
        let candidates = self.candidates(&changes, &links).await?;
        lap.end("match");
        let cand_records: Vec<(Side, String)> = candidates
            .iter()
            .flat_map(|((side, _), cs)| cs.iter().map(|c| (*side, c.id.clone())))
            .collect();
        let known: BTreeSet<u64> = links.iter().map(|l| l.id).collect();
        for l in state.links(&sync, &cand_records, &[]).map_err(&se)? {
            if !known.contains(&l.id) {
                links.push(l);
            }
        }
        let link_ids: Vec<u64> = links.iter().map(|l| l.id).collect();
        // The engine borrows the spec for the whole cycle while the sides are written.
        let spec = self.spec.clone();
        let mut input = Input {
            spec: &spec,
            links,
            held: state.held(&sync, &link_ids).map_err(&se)?,
            changes,
            candidates,
            answers: BTreeMap::new(),
            next_link_id: state.next_link_id(&sync).map_err(&se)?,
        };

        // 5. Plan; conflicts left to rules are asked, and the plan made again with the answers.
        let mut plan = if self.spec.asks_rules() {
            engine::plan(&input)
        } else {
            engine::plan_once(&mut input)
        };
        if !plan.queries.is_empty() {
            debug_assert!(self.spec.asks_rules(), "only a rule policy asks");
            input.answers = ask_rules(&self.spec, &self.rules, &plan).await;
            plan = engine::plan(&input);
        }
        report.echoes = plan.echoes;
        // Changes of stopped fields: the rest of the record syncs; these are reported
        // (before the plan's rejections: a record rejected outright keeps that reason).
        for u in &plan.unsynced {
            unsynced
                .entry((u.side, u.id.clone()))
                .or_default()
                .push(format!("field {} did not sync: {}", u.field, u.reason));
        }
        for ((side, id), why) in unsynced {
            commit.rejected.push((side, id, why.join("; "), None));
        }
        for r in &plan.rejected {
            let c = &r.change;
            commit.rejected.push((
                c.side,
                c.id.clone(),
                r.reason.clone(),
                Some(StoredChange {
                    deleted: c.deleted,
                    fields: c.fields.clone(),
                    version: c.version.clone(),
                    changed_at: c.changed_at,
                    read_at: Some(c.read_at),
                }),
            ));
            commit.cleared.retain(|k| k != &(c.side, c.id.clone()));
        }
        lap.end("plan");
        if let Some(dry) = dry {
            fill_dry_run(dry, &plan, &commit, &report);
            return Ok(report);
        }
        // 6. Record the writes as intents, then write.
        record_intents(state, &sync, &plan)?;
        lap.end("intents");
        let mut failed: BTreeMap<u64, String> = BTreeMap::new();
        // A side with more waiting and no op in this cycle, while the other side has some, is
        // read ahead during that write (an initial load, a one-way backlog): its database
        // serves the read while the other one inserts, instead of during the commit.
        let writes_to = |side: Side| plan.ops.iter().any(|o| o.side == side);
        let early = last_batches(&batches)
            .find(|(side, b, _)| {
                b.has_more
                    && !writes_to(*side)
                    && self.spec.all_sides().any(|o| o != *side && writes_to(o))
            })
            .map(|(side, b, _)| (*side, b.next_cursor.clone()));
        let (conflicted, mut rewritten) = self
            .write(&mut plan, now, &mut commit, &mut failed, &mut report, early)
            .await;

        lap.end("write");
        // 7. Writes refused on a stale version: read those records again and merge once more.
        if !conflicted.is_empty() {
            rewritten.extend(
                self.retry_conflicts(
                    state,
                    &mut plan,
                    conflicted,
                    now,
                    &input,
                    &mut commit,
                    &mut failed,
                    &mut report,
                )
                .await?,
            );
        }
        // 8. Values a side stored otherwise than written flow back, in this cycle.
        if !rewritten.is_empty() {
            self.merge_rewritten(
                state,
                &mut plan,
                rewritten,
                now,
                &input,
                &mut commit,
                &mut failed,
                &mut report,
            )
            .await?;
        }
        // 9. Commit everything, cursors last in the same transaction.
        for (link, reason) in &failed {
            commit.dirty.push((*link, reason.clone()));
        }
        commit.clean = plan
            .links
            .keys()
            .filter(|id| !failed.contains_key(id))
            .copied()
            .collect();
        // A link retried after a failed write that is now in step without a write of its own
        // (the sides came together otherwise) has no failed write left: without this, its
        // rejection stayed listed for ever, since only a successful write cleared it.
        for id in due_ids.iter().filter(|id| !failed.contains_key(id)) {
            for side in self.spec.all_sides() {
                commit.cleared.push((side, format!("link {id}")));
            }
        }
        report.conflicts = plan.conflicts.len();
        report.rejected = commit.rejected.len();
        // Decisions whose writes went through; a link that failed is planned (and decided)
        // again once it is retried.
        let decided: Vec<Activity> = plan
            .decided
            .iter()
            .filter(|d| !failed.contains_key(&d.link))
            .filter_map(|d| {
                let record = plan.links.get(&d.link)?.side(d.winner).id.clone()?;
                let mut d = d.clone();
                // Which build of the rule decided: rules are swapped between cycles only, so
                // the one loaded now is the one that answered.
                d.plugin = d
                    .rule
                    .as_ref()
                    .and_then(|r| self.rules.get(r))
                    .map(|r| r.label());
                Some(Activity {
                    at: now,
                    sync: sync.clone(),
                    link: d.link,
                    side: d.winner,
                    op: if d.rule.is_some() { RULED } else { DECIDED }.into(),
                    record,
                    fields: vec![d.field.clone()],
                    decided: Some(d),
                })
            })
            .collect();
        report.decided = decided.len();
        commit.activity.extend(decided);
        commit.conflicts = plan.conflicts.clone();
        commit.agreed = plan.agreed.clone();
        // A kept intent carries its link as committed now, not as it was when the write was
        // sent: the other side may have been written since, and recovery settles onto this copy.
        for intent in &mut commit.keep_intents {
            if let Some(link) = plan.links.get(&intent.link.id) {
                intent.link = link.clone();
            }
        }
        commit.next_link_id = plan.next_link_id;
        commit.new_links_from = Some(input.next_link_id);
        commit.links = plan.links.into_values().collect();
        // The cursor each side reached: its last batch's.
        let mut cursors = vec![None; self.sides.len()];
        for (side, batch, _) in last_batches(&batches) {
            cursors[side.index()] = Some(batch.next_cursor.clone());
        }
        commit.cursors = cursors;
        let read_ahead: Vec<(Side, String)> = last_batches(&batches)
            .filter(|(side, b, _)| b.has_more && self.ahead[side.index()].is_none())
            .map(|(side, b, _)| (*side, b.next_cursor.clone()))
            .collect();
        let mut stats: SyncStats = state.stats(&sync).map_err(&se)?;
        stats.cycles += 1;
        stats.changes_read += report.read.iter().sum::<usize>() as u64;
        stats.writes += report.writes as u64;
        stats.write_failures += report.failed as u64;
        stats.echoes += report.echoes as u64;
        stats.decided += report.decided as u64;
        stats.last_cycle_at = Some(now);
        stats.last_cycle = Some(report.summary());
        stats.last_error = None;
        commit.stats = stats;
        self.commit_reading_ahead(state, now, commit, read_ahead)
            .await
            .map_err(&se)?;
        lap.end("commit");
        tracing::debug!(sync = %sync, read = report.read.iter().sum::<usize>(), writes = report.writes,
            "cycle took {}", lap);
        Ok(report)
    }

    /// Commits a cycle and, meanwhile, reads the next batch of each side that has more waiting
    /// (a catch-up: an initial load, a backlog), so that the database and the runtime work at
    /// once instead of taking turns.
    ///
    /// Why a batch read here is as good as one read at the start of the next cycle: every write
    /// of this cycle has been made (or has failed) before it is read, and nothing writes to a
    /// side between here and the next cycle's plan (recovery only reads), so it holds what a
    /// later read would, minus changes made in between, which the cursor keeps for the read
    /// after. A side this cycle did not write at all may already have been read while the other
    /// side was written (see [`Self::write`]); it is not read again here. A batch read ahead is
    /// used only if the next cycle starts at the cursor it was read from, which is this
    /// commit's: a commit that fails leaves the old cursor, and the batch is dropped.
    /// It is read as the cycle's own read is ([`Self::read_fitting`]: a batch too big for the
    /// plugin shrinks here as well); a read that fails is dropped too, and the next cycle reads
    /// again and reports the error.
    ///
    /// On a multi-threaded runtime the commit runs on a thread of its own while this one
    /// reads; otherwise (the tests' runtime) one after the other, through the same path.
    async fn commit_reading_ahead(
        &mut self,
        state: &State,
        now: i64,
        commit: CycleCommit,
        sides: Vec<(Side, String)>,
    ) -> Result<(), StateError> {
        let sync = self.spec.name.clone();
        let origin = self.spec.origin.clone();
        let reads = async {
            let mut read = Vec::new();
            for (side, from) in sides {
                let batch = self.read_fitting(side, &origin, Some(&from), self.batch);
                if let Ok(batch) = batch.await {
                    read.push((side, from, batch));
                }
            }
            read
        };
        let (committed, read) = if crate::background::on_threaded_runtime() {
            tokio::task::block_in_place(|| {
                // For background work, the commit's thread inherits the background's lower
                // priority from the thread that starts it (see `crate::background`).
                std::thread::scope(|scope| {
                    let committed = scope.spawn(|| state.commit_cycle(&sync, now, commit));
                    let read = tokio::runtime::Handle::current().block_on(reads);
                    let committed = committed
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    (committed, read)
                })
            })
        } else {
            let committed = state.commit_cycle(&sync, now, commit);
            (committed, reads.await)
        };
        committed?;
        for (side, from, read) in read {
            self.ahead[side.index()] = Some((from, read));
        }
        Ok(())
    }

    /// Reads up to `want` changes from a side through [`read_fitting`].
    async fn read_fitting(
        &mut self,
        side: Side,
        origin: &str,
        cursor: Option<&str>,
        want: u32,
    ) -> Result<Read, IoError> {
        let io = &mut self.sides[side.index()];
        let max = &mut self.read_max[side.index()];
        let sync = &self.spec.name;
        read_fitting(io, max, want, sync, side, origin, cursor, &self.clock).await
    }

    /// A connector's change as the engine sees it, read at `read_at`.
    fn observe(&self, side: Side, ch: &plugin::Change, read_at: i64) -> Result<Observed, String> {
        let deleted = ch.kind == ChangeKind::Delete;
        let fields = if deleted {
            Fields::new()
        } else {
            self.map_fields(side, &ch.fields)
                .map_err(|e| format!("record {} on the {side} side: {e}", ch.id))?
        };
        Ok(Observed {
            side,
            id: ch.id.clone(),
            deleted,
            fields,
            version: ch.version.clone(),
            changed_at: ch.changed_at,
            read_at,
            own: ch.origin.as_deref() == Some(self.spec.origin.as_str()),
        })
    }

    /// Looks up, on every other side, the records whose match key equals that of a new record.
    async fn candidates(
        &mut self,
        changes: &[Observed],
        links: &[Link],
    ) -> Result<BTreeMap<(Side, String), Vec<Candidate>>, CycleError> {
        let mut out: BTreeMap<(Side, String), Vec<Candidate>> = BTreeMap::new();
        let Some(key) = self.spec.match_key.clone() else {
            return Ok(out);
        };
        let sync = self.spec.name.clone();
        let linked: BTreeSet<(Side, &str)> = links
            .iter()
            .flat_map(|l| {
                l.each_side()
                    .filter_map(|(s, st)| st.id.as_deref().map(|id| (s, id)))
            })
            .collect();
        let pairs: Vec<(Side, Side)> = self
            .spec
            .all_sides()
            .flat_map(|side| {
                self.spec
                    .all_sides()
                    .filter(move |o| *o != side)
                    .map(move |o| (side, o))
            })
            .collect();
        for (side, other) in pairs {
            let mut values = Vec::new();
            let mut field = None;
            for c in changes.iter().filter(|c| c.side == side && !c.deleted) {
                if linked.contains(&(side, c.id.as_str())) {
                    continue;
                }
                let Some(v) = c.fields.get(&key.field) else {
                    continue;
                };
                if key.normalise(v).is_none() {
                    continue;
                }
                if let Ok(out) = self
                    .spec
                    .map_out(other, &Fields::from([(key.field.clone(), v.clone())]))
                {
                    if let Some((name, value)) = out.into_iter().next() {
                        field = Some(name);
                        values.push(plugin::Value::from(value));
                    }
                }
            }
            let Some(field) = field else { continue };
            for chunk in values.chunks(MATCH_LOOKUP) {
                let found = self
                    .io(other)
                    .find(LookupKey::ByField(FieldMatch {
                        field: field.clone(),
                        values: chunk.to_vec(),
                        ignore_case: key.ignore_case,
                    }))
                    .await
                    .map_err(|error| CycleError::Read {
                        sync: sync.clone(),
                        side: other,
                        error,
                    })?;
                let read_at = (self.clock)();
                for c in found {
                    let Ok(fields) = self.map_fields(other, &c.fields) else {
                        continue;
                    };
                    let Some(norm) = fields.get(&key.field).and_then(|v| key.normalise(v)) else {
                        continue;
                    };
                    let list = out.entry((other, norm)).or_default();
                    if !list.iter().any(|x| x.id == c.id) {
                        list.push(Candidate {
                            id: c.id,
                            fields,
                            version: c.version,
                            changed_at: c.changed_at,
                            read_at,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Sends the plan's ops, settles each link with its outcome, and returns the links whose
    /// conditional writes were refused as conflicts, and the fields a side stored otherwise
    /// than written (see [`Self::merge_rewritten`]).
    ///
    /// `early` is a side to read ahead from a cursor while the other side is written (see
    /// [`Self::cycle_inner`]); it must have no op in this plan. What it reads becomes that side's
    /// batch read ahead. Writing to a side drops any batch read ahead from it: that batch was
    /// read before the write, and may hold a record as it was before Duplex changed it.
    async fn write(
        &mut self,
        plan: &mut Plan,
        now: i64,
        commit: &mut CycleCommit,
        failed: &mut BTreeMap<u64, String>,
        report: &mut CycleReport,
        mut early: Option<(Side, String)>,
    ) -> (Vec<(Side, u64)>, Vec<Rewritten>) {
        let mut conflicted = Vec::new();
        let mut rewritten = Vec::new();
        let origin = self.spec.origin.clone();
        let sync = self.spec.name.clone();
        // Taken out while the links are settled; the plan gets them back untouched.
        let all_ops = std::mem::take(&mut plan.ops);
        debug_assert!(early
            .as_ref()
            .is_none_or(|(e, _)| all_ops.iter().all(|o| o.side != *e)));
        for side in self.spec.all_sides() {
            if all_ops.iter().any(|o| o.side == side) {
                self.ahead[side.index()] = None;
            }
            let conditional = self.io(side).conditional_writes();
            // Map every op first: a value that cannot be written fails its record alone.
            let mut sendable = Vec::new();
            for op in all_ops.iter().filter(|o| o.side == side) {
                match self.to_write_op(side, &op.kind, conditional) {
                    Ok(w) => sendable.push((op, w)),
                    Err(reason) => {
                        report.failed += 1;
                        report.by_kind.entry(op_name(&op.kind)).or_default()[1] += 1;
                        commit.rejected.push((
                            side,
                            format!("link {}", op.link),
                            reason.clone(),
                            None,
                        ));
                        failed.insert(op.link, reason);
                    }
                }
            }
            let most = self.write_max[side.index()].now as usize;
            if report.whole_transaction && sendable.len() > most {
                tracing::warn!(sync = %sync, side = %side,
                    "a source transaction read whole takes {} writes on the {side} side, more than its plugin holds at once ({most}): it is written in parts",
                    sendable.len());
            }
            let mut sendable = sendable.into_iter().peekable();
            while sendable.peek().is_some() {
                let (chunk, writes): (Vec<&Op>, Vec<WriteOp>) = sendable
                    .by_ref()
                    .take(self.write_max[side.index()].now as usize)
                    .unzip();
                let written = match early.take_if(|(other, _)| *other != side) {
                    None => self.io(side).write(&origin, writes).await,
                    Some((other, from)) => {
                        let (to, from_io) = two_sides(&mut self.sides, side, other);
                        let max = &mut self.read_max[other.index()];
                        let read = read_fitting(
                            from_io,
                            max,
                            self.batch,
                            &sync,
                            other,
                            &origin,
                            Some(&from),
                            &self.clock,
                        );
                        let (written, read) = tokio::join!(to.write(&origin, writes), read);
                        // A read that fails is dropped; the next cycle reads again and reports.
                        if let Ok(read) = read {
                            self.ahead[other.index()] = Some((from, read));
                        }
                        written
                    }
                };
                let size = &mut self.write_max[side.index()];
                let results = match written {
                    Ok(rs) => {
                        size.fitted();
                        rs
                    }
                    Err(e) => {
                        // Too many for the plugin at once: later writes to this side go in
                        // halves. These ops are not sent again now, as the failed call may have
                        // applied them; like any write whose outcome is unknown, they are kept
                        // as intents, checked by the next cycle's recovery and retried as
                        // dirty links, in the smaller chunks: due at once, as the next try
                        // differs from this one.
                        let tried = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
                        if e.over_limit && size.too_big(tried) {
                            tracing::warn!(sync = %sync, side = %side, error = %e,
                                "writing {tried} ops at once was more than the plugin could hold; writing {} at a time for now", size.now);
                            commit.dirty_now.extend(chunk.iter().map(|op| op.link));
                        }
                        vec![Err(WitError::Transient(e.message)); chunk.len()]
                    }
                };
                // The SDK holds connectors to one result per op; a short list still fails safe.
                let mut results = results.into_iter();
                for op in chunk {
                    let result = results
                        .next()
                        .unwrap_or_else(|| Err(WitError::Permanent("no result".into())));
                    let outcome = match &result {
                        Ok(w) => Outcome::Written {
                            id: w.id.clone(),
                            version: w.version.clone(),
                            stored: self.stored(side, &w.stored),
                        },
                        Err(WitError::NotFound(_)) => Outcome::Gone,
                        Err(_) => Outcome::Failed,
                    };
                    let Some(link) = plan.links.get_mut(&op.link) else {
                        continue;
                    };
                    for field in settle(&self.spec, link, side, &op.kind, &outcome) {
                        rewritten.push((op.link, side, field));
                    }
                    match (&result, &outcome) {
                        (Ok(w), _) => {
                            report.writes += 1;
                            report.by_kind.entry(op_name(&op.kind)).or_default()[0] += 1;
                            commit.cleared.push((side, format!("link {}", op.link)));
                            commit.activity.push(Activity {
                                at: now,
                                sync: sync.clone(),
                                link: op.link,
                                side,
                                op: op_name(&op.kind).into(),
                                record: w.id.clone(),
                                fields: op_fields(&op.kind),
                                decided: None,
                            });
                        }
                        (Err(_), Outcome::Gone) => {}
                        (Err(WitError::Conflict(_)), _) => conflicted.push((side, op.link)),
                        (Err(e), _) => {
                            if outcome_unknown(e) {
                                commit.keep_intents.push(Intent {
                                    link: link.clone(),
                                    side,
                                    op: op.kind.clone(),
                                });
                            }
                            report.failed += 1;
                            report.by_kind.entry(op_name(&op.kind)).or_default()[1] += 1;
                            let reason = format!(
                                "{} on the {side} side failed: {}",
                                op_name(&op.kind),
                                describe(e)
                            );
                            commit.rejected.push((
                                side,
                                format!("link {}", op.link),
                                reason.clone(),
                                None,
                            ));
                            failed.insert(op.link, reason);
                        }
                    }
                }
            }
        }
        plan.ops = all_ops;
        (conflicted, rewritten)
    }

    /// A side's stored values, mapped to the sync's names; none where it cannot tell.
    fn stored(&self, side: Side, stored: &[plugin::FieldValue]) -> Option<Fields> {
        if stored.is_empty() {
            return None;
        }
        self.map_fields(side, stored).ok()
    }

    #[allow(clippy::too_many_arguments)]
    async fn retry_conflicts(
        &mut self,
        state: &State,
        plan: &mut Plan,
        conflicted: Vec<(Side, u64)>,
        now: i64,
        input: &Input<'_>,
        commit: &mut CycleCommit,
        failed: &mut BTreeMap<u64, String>,
        report: &mut CycleReport,
    ) -> Result<Vec<Rewritten>, CycleError> {
        let mut fresh = Vec::new();
        for (side, link_id) in &conflicted {
            let Some(id) = plan
                .links
                .get(link_id)
                .and_then(|l| l.side(*side).id.clone())
            else {
                continue;
            };
            let found = self.io(*side).find(LookupKey::Ids(vec![id.clone()])).await;
            // The record changed after this cycle's read: its time is the source's, else now,
            // as it is read, never the cycle's start (invariant 4).
            let read_at = (self.clock)();
            match found {
                Ok(found) => match found.into_iter().next() {
                    Some(c) => {
                        let change = plugin::Change {
                            id: c.id,
                            kind: ChangeKind::Update,
                            fields: c.fields,
                            version: c.version,
                            changed_at: c.changed_at,
                            origin: None,
                        };
                        if let Ok(o) = self.observe(*side, &change, read_at) {
                            fresh.push(o);
                        }
                    }
                    None => fresh.push(Observed {
                        side: *side,
                        id,
                        deleted: true,
                        fields: Fields::new(),
                        version: None,
                        changed_at: None,
                        read_at,
                        own: false,
                    }),
                },
                Err(e) => {
                    failed.insert(
                        *link_id,
                        format!("re-reading after a write conflict failed: {e}"),
                    );
                }
            }
        }
        let ids: BTreeSet<u64> = conflicted.iter().map(|(_, l)| *l).collect();
        let before = report.writes;
        let again = self
            .merge_again(
                state,
                plan,
                &ids,
                &input.held,
                fresh,
                now,
                input,
                commit,
                failed,
                report,
            )
            .await?;
        tracing::debug!(sync = %self.spec.name, rewritten = report.writes - before, "merged again after write conflicts");
        for (_, link) in again.refused {
            failed.insert(
                link,
                "the record kept changing while Duplex wrote it; will merge again".into(),
            );
        }
        // The first decision on these links was made on stale data and its write refused.
        plan.decided.retain(|d| !ids.contains(&d.link));
        plan.decided.extend(again.decided);
        Ok(again.rewritten)
    }

    /// Plans the links `ids` again with `changes` (read since), records the writes as intents
    /// and makes them, and folds the outcome into `plan`: the second pass of a cycle, after
    /// writes were refused or stored otherwise. Decisions and refusals go back to the caller,
    /// whose earlier pass they may replace or retry.
    #[allow(clippy::too_many_arguments)]
    async fn merge_again(
        &mut self,
        state: &State,
        plan: &mut Plan,
        ids: &BTreeSet<u64>,
        held: &BTreeMap<u64, BTreeSet<String>>,
        changes: Vec<Observed>,
        now: i64,
        input: &Input<'_>,
        commit: &mut CycleCommit,
        failed: &mut BTreeMap<u64, String>,
        report: &mut CycleReport,
    ) -> Result<MergedAgain, CycleError> {
        let again = Input {
            spec: input.spec,
            links: ids
                .iter()
                .filter_map(|id| plan.links.get(id).cloned())
                .collect(),
            held: held.clone(),
            changes,
            candidates: BTreeMap::new(),
            answers: input.answers.clone(),
            next_link_id: plan.next_link_id,
        };
        let mut next = engine::plan(&again);
        record_intents(state, &input.spec.name, &next)?;
        let (refused, rewritten) = self
            .write(&mut next, now, commit, failed, report, None)
            .await;
        plan.conflicts.extend(next.conflicts);
        plan.agreed.extend(next.agreed);
        plan.links.extend(next.links);
        Ok(MergedAgain {
            refused,
            rewritten,
            decided: next.decided,
        })
    }

    /// Merges again the links a side stored otherwise than written, so that its values flow
    /// back within the cycle (the feed leaves Duplex's writes out and would never show them).
    ///
    /// A field stored otherwise again by the write that carried its last rewrite would go
    /// back and forth for ever (a trigger stamping a modified time on each side, a column on
    /// each side rounding differently, one side rewriting a field the other owns): it is held
    /// with the reason and the fix, and the rest of the record keeps flowing. At most
    /// [`REWRITE_ROUNDS`] rounds a cycle; what is left merges when the link is next touched.
    #[allow(clippy::too_many_arguments)]
    async fn merge_rewritten(
        &mut self,
        state: &State,
        plan: &mut Plan,
        mut rewritten: Vec<Rewritten>,
        now: i64,
        input: &Input<'_>,
        commit: &mut CycleCommit,
        failed: &mut BTreeMap<u64, String>,
        report: &mut CycleReport,
    ) -> Result<(), CycleError> {
        let mut held = input.held.clone();
        let mut last: BTreeMap<(u64, String), Side> = BTreeMap::new();
        for _ in 0..REWRITE_ROUNDS {
            rewritten.retain(|(link, _, _)| !failed.contains_key(link));
            if rewritten.is_empty() {
                break;
            }
            let mut this: BTreeMap<(u64, String), Side> = BTreeMap::new();
            for (link, side, field) in rewritten.drain(..) {
                let key = (link, field);
                if let Some(before) = last.get(&key) {
                    let Some(l) = plan.links.get(&link) else {
                        continue;
                    };
                    let field = key.1.clone();
                    let name = self.spec.side_name(side);
                    let other = self
                        .spec
                        .list_sides(self.spec.all_sides().filter(|s| *s != side));
                    let reason = if *before == side {
                        format!("{name} changes {field} whenever Duplex writes it, and {other}'s value owns it; give the field a direction from {name}, or make {name} keep what it is given, then resolve this conflict")
                    } else {
                        format!("{} and {} both change {field} whenever Duplex writes it (a trigger, default or rounding on each side), so it would go back and forth for ever; give the field a direction so that one side owns it, then resolve this conflict", self.spec.side_name((*before).min(side)), self.spec.side_name((*before).max(side)))
                    };
                    tracing::warn!(sync = %self.spec.name, link, field = %field, "{reason}");
                    plan.conflicts
                        .push(engine::ConflictNote::of_link(l, &field, reason));
                    held.entry(link).or_default().insert(field);
                    continue;
                }
                this.insert(key, side);
            }
            let ids: BTreeSet<u64> = this.keys().map(|(l, _)| *l).collect();
            last = this;
            if ids.is_empty() {
                break;
            }
            let again = self
                .merge_again(
                    state,
                    plan,
                    &ids,
                    &held,
                    Vec::new(),
                    now,
                    input,
                    commit,
                    failed,
                    report,
                )
                .await?;
            // The earlier writes went through: their decisions stand beside these.
            plan.decided.extend(again.decided);
            rewritten = again.rewritten;
            // Refused because a person changed the record meanwhile: read it again and merge,
            // as any refused write is.
            if !again.refused.is_empty() {
                rewritten.extend(
                    self.retry_conflicts(
                        state,
                        plan,
                        again.refused,
                        now,
                        input,
                        commit,
                        failed,
                        report,
                    )
                    .await?,
                );
            }
        }
        Ok(())
    }

    fn to_write_op(&self, side: Side, kind: &OpKind, conditional: bool) -> Result<WriteOp, String> {
        let fields = |f: &Fields| -> Result<Vec<plugin::FieldValue>, String> {
            Ok(self
                .spec
                .map_out(side, f)
                .map_err(|e| format!("cannot write to the {side} side: {e}"))?
                .into_iter()
                .map(|(name, v)| plugin::FieldValue {
                    name,
                    value: v.into(),
                })
                .collect())
        };
        let version = |v: &Option<String>| if conditional { v.clone() } else { None };
        Ok(match kind {
            OpKind::Create { fields: f } => WriteOp::Create(CreateOp { fields: fields(f)? }),
            OpKind::Update {
                id,
                fields: f,
                if_version,
            } => WriteOp::Update(UpdateOp {
                id: id.clone(),
                fields: fields(f)?,
                if_version: version(if_version),
            }),
            OpKind::Delete { id, if_version } => WriteOp::Delete(DeleteOp {
                id: id.clone(),
                if_version: version(if_version),
            }),
        })
    }
}

/// Each side's last batch of a cycle's `batches` (which hold a side's batches together, in the
/// order read): where the side's cursor now stands.
fn last_batches(
    batches: &[(Side, ChangeBatch, i64)],
) -> impl Iterator<Item = &(Side, ChangeBatch, i64)> {
    batches
        .iter()
        .enumerate()
        .filter(|(i, (side, _, _))| batches.get(i + 1).is_none_or(|(next, _, _)| next != side))
        .map(|(_, b)| b)
}

/// How a cycle reads each side (see [`SideRead::read`]).
struct SideRead<'a> {
    sync: &'a str,
    origin: &'a str,
    batch: u32,
    max_transaction: u32,
    /// Not a pilot's cycle, which takes its first `limit` changes only.
    whole: bool,
    dry: bool,
    clock: &'a Clock,
}

/// What a cycle read of one side: its batches in order (the last says whether more wait).
struct SideBatches {
    side: Side,
    batches: Vec<Read>,
    /// A transaction was read on past the batch size to its end.
    whole_transaction: bool,
}

impl SideRead<'_> {
    /// Reads a side's next batch (or takes the one read ahead from the same cursor), then
    /// reads on while it ends inside a transaction, so the transaction is written whole (up to
    /// the sync's `max_transaction`, except in a pilot); a dry run plans everything waiting at
    /// once, unless it is a pilot's.
    async fn read<S: SideIo>(
        &self,
        io: &mut S,
        max: &mut CallSize,
        side: Side,
        cursor: Option<String>,
        ahead: Option<(String, Read)>,
    ) -> Result<SideBatches, CycleError> {
        let first = match ahead {
            Some((from, read)) if cursor.as_deref() == Some(from.as_str()) => read,
            _ => {
                self.fetch(io, max, side, cursor.as_deref(), self.batch)
                    .await?
            }
        };
        let mut read = first.0.changes.len();
        let mut batches = vec![first];
        let mut whole_transaction = false;
        while let Some((last, _)) = batches.last().filter(|(b, _)| b.has_more) {
            let torn = last.mid_transaction;
            let want = if torn && self.whole && (read as u64) < u64::from(self.max_transaction) {
                self.max_transaction - read as u32
            } else if self.dry && self.whole && read < DRY_RUN_MOST {
                self.batch
            } else {
                if torn && self.whole {
                    tracing::warn!(sync = %self.sync, side = %side, max_transaction = self.max_transaction,
                        "a transaction on the {side} side changed more than {} records (the sync's max_transaction): it is applied in parts, and the other sides see it partly applied until its rest arrives",
                        self.max_transaction);
                }
                break;
            };
            let from = last.next_cursor.clone();
            let next = self.fetch(io, max, side, Some(&from), want).await?;
            read += next.0.changes.len();
            whole_transaction |= torn;
            batches.push(next);
        }
        Ok(SideBatches {
            side,
            batches,
            whole_transaction,
        })
    }

    /// One read of up to `want` changes through [`read_fitting`].
    async fn fetch<S: SideIo>(
        &self,
        io: &mut S,
        max: &mut CallSize,
        side: Side,
        cursor: Option<&str>,
        want: u32,
    ) -> Result<Read, CycleError> {
        read_fitting(
            io,
            max,
            want,
            self.sync,
            side,
            self.origin,
            cursor,
            self.clock,
        )
        .await
        .map_err(|error| CycleError::Read {
            sync: self.sync.to_owned(),
            side,
            error,
        })
    }
}

/// Reads a batch of up to `want` changes from a side. A read that runs the side's plugin out of
/// memory or CPU (records too big to hold so many at once) is tried again with half as many
/// changes, down to one, and the side is asked for at most that many for a while
/// ([`CallSize`], the side's own): a sync whose records are large slows down instead of failing
/// every cycle.
#[allow(clippy::too_many_arguments)]
async fn read_fitting<S: SideIo>(
    io: &mut S,
    size: &mut CallSize,
    want: u32,
    sync: &str,
    side: Side,
    origin: &str,
    cursor: Option<&str>,
    clock: &Clock,
) -> Result<Read, IoError> {
    loop {
        let tried = size.now.min(want.max(1));
        match io.read(origin, cursor, tried).await {
            Err(e) if e.over_limit && size.too_big(tried) => {
                tracing::warn!(sync = %sync, side = %side, error = %e,
                    "reading {tried} changes at once was more than the plugin could hold; reading {} at a time for now", size.now);
            }
            Ok(batch) => {
                size.fitted();
                return Ok((batch, clock()));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Asks each rule about its conflicts, in one batch per rule. A rule that is missing or fails
/// leaves its conflicts to a person, with the reason.
async fn ask_rules(
    spec: &SyncSpec,
    rules: &Rules,
    plan: &Plan,
) -> BTreeMap<(u64, String), RuleAnswer> {
    let mut by_rule: BTreeMap<String, Vec<&engine::RuleQuery>> = BTreeMap::new();
    for q in &plan.queries {
        if let engine::Policy::Rule(name) = spec.policy_for(&q.field) {
            by_rule.entry(name.clone()).or_default().push(q);
        }
    }
    let mut answers = BTreeMap::new();
    for (name, queries) in by_rule {
        let Some(rule) = rules.get(&name) else {
            for q in queries {
                answers.insert(
                    (q.link, q.field.clone()),
                    RuleAnswer::Manual(format!("rule {name} is not loaded")),
                );
            }
            continue;
        };
        let conflicts: Vec<plugin::Conflict> = queries
            .iter()
            .map(|q| plugin::Conflict {
                sync: spec.name.clone(),
                field: q.field.clone(),
                base: q.base.clone().map(Into::into),
                left: plugin::Side {
                    name: spec.left_name.clone(),
                    value: q.left.clone().into(),
                    changed_at: q.left_changed_at,
                },
                right: plugin::Side {
                    name: spec.right_name.clone(),
                    value: q.right.clone().into(),
                    changed_at: q.right_changed_at,
                },
                others: spec
                    .more_names
                    .iter()
                    .zip(&q.more)
                    .map(|(name, (value, changed_at))| plugin::Side {
                        name: name.clone(),
                        value: value.clone().into(),
                        changed_at: *changed_at,
                    })
                    .collect(),
            })
            .collect();
        match rule.resolve(conflicts).await {
            Ok(resolutions) => {
                for (q, r) in queries.iter().zip(resolutions) {
                    let a = match r {
                        plugin::Resolution::TakeLeft => RuleAnswer::TakeLeft,
                        plugin::Resolution::TakeRight => RuleAnswer::TakeRight,
                        plugin::Resolution::TakeOther(n) if (n as usize) < q.more.len() => {
                            RuleAnswer::Take(engine::Side::nth(n as usize + 2))
                        }
                        plugin::Resolution::TakeOther(n) => RuleAnswer::Manual(format!(
                            "rule {name} answered take-other({n}), but sync {} has {} other \
                             sides (take-other counts from 0, the third side)",
                            spec.name,
                            q.more.len()
                        )),
                        plugin::Resolution::Value(v) => {
                            let v = engine::Value::from(v).canonical();
                            match unfit(spec, &q.field, &v) {
                                None => RuleAnswer::Value(v),
                                // A wrong answer decides nothing: the conflict waits, saying why.
                                Some(why) => RuleAnswer::Manual(format!(
                                    "rule {name} answered {}, which field {} cannot hold: {why}",
                                    v.display(),
                                    q.field
                                )),
                            }
                        }
                        plugin::Resolution::Manual(why) => RuleAnswer::Manual(why),
                    };
                    answers.insert((q.link, q.field.clone()), a);
                }
            }
            Err(e) => {
                tracing::error!(sync = %spec.name, rule = %name, error = %e, "a conflict rule failed; its conflicts wait for a person");
                for q in queries {
                    answers.insert(
                        (q.link, q.field.clone()),
                        RuleAnswer::Manual(format!("rule {name} failed: {e}")),
                    );
                }
            }
        }
    }
    answers
}

/// Why a rule's own value does not fit its field (none: it fits every side's type). Fields
/// with a table of values are checked by the write, which rejects a value outside it.
fn unfit(spec: &SyncSpec, field: &str, v: &engine::Value) -> Option<String> {
    let f = spec.field(field)?;
    if !f.values.is_empty() {
        return None;
    }
    spec.all_sides()
        .find_map(|side| engine::convert(v.clone(), f.side_type(side)).err())
}

/// Whether a failed write may still have reached the system (the call broke off, or the system
/// said the failure was passing): for a create, the record may exist.
fn outcome_unknown(e: &WitError) -> bool {
    matches!(e, WitError::Transient(_) | WitError::RateLimited(_))
}

/// Two different sides' I/O at once: one written while the other is read.
fn two_sides<S: SideIo>(sides: &mut [S], a: Side, b: Side) -> (&mut S, &mut S) {
    let (i, j) = (a.index(), b.index());
    assert_ne!(i, j, "two different sides");
    if i < j {
        let (low, high) = sides.split_at_mut(j);
        (&mut low[i], &mut high[0])
    } else {
        let (low, high) = sides.split_at_mut(i);
        (&mut high[0], &mut low[j])
    }
}

fn op_name(kind: &OpKind) -> &'static str {
    match kind {
        OpKind::Create { .. } => "create",
        OpKind::Update { .. } => "update",
        OpKind::Delete { .. } => "delete",
    }
}

fn op_fields(kind: &OpKind) -> Vec<String> {
    match kind {
        OpKind::Create { fields } | OpKind::Update { fields, .. } => {
            fields.keys().cloned().collect()
        }
        OpKind::Delete { .. } => Vec::new(),
    }
}

fn describe(e: &WitError) -> String {
    match e {
        WitError::Config(m) => format!("config: {m}"),
        WitError::Auth(m) => format!("refused: {m}"),
        WitError::NotFound(m) => format!("not found: {m}"),
        WitError::Conflict(m) => format!("conflict: {m}"),
        WitError::Validation(v) => match &v.field {
            Some(f) => format!("invalid {f}: {}", v.message),
            None => format!("invalid: {}", v.message),
        },
        WitError::RateLimited(r) => format!(
            "rate limited, retry after {} ms: {}",
            r.retry_after_ms, r.message
        ),
        WitError::Transient(m) => format!("temporary failure: {m}"),
        WitError::Permanent(m) => m.clone(),
    }
}

/// What a dry run shows of a plan.
fn fill_dry_run(dry: &mut DryRun, plan: &Plan, commit: &CycleCommit, report: &CycleReport) {
    dry.read = report.read.clone();
    dry.more = report.more;
    dry.writes = plan
        .ops
        .iter()
        .map(|op| {
            let (kind, record, fields) = match &op.kind {
                OpKind::Create { fields } => ("create", None, fields.clone()),
                OpKind::Update { id, fields, .. } => ("update", Some(id.clone()), fields.clone()),
                OpKind::Delete { id, .. } => ("delete", Some(id.clone()), Fields::new()),
            };
            PlannedWrite {
                side: op.side,
                op: kind.to_owned(),
                link: op.link,
                record,
                fields,
            }
        })
        .collect();
    dry.conflicts = plan.conflicts.clone();
    dry.rejected = commit
        .rejected
        .iter()
        .map(|(side, record, reason, _)| PlannedRejection {
            side: *side,
            record: record.clone(),
            reason: reason.clone(),
        })
        .collect();
    dry.decided = plan.decided.clone();
    dry.matched = plan.matched;
    dry.filtered = plan.filtered;
    dry.leaving = plan.left_filter;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pilot run's summary names each side by its connection, and by its place too where
    /// two sides share one (two tables of one database); a plan kept before the names were
    /// keeps the places.
    #[test]
    fn a_dry_run_names_its_sides_by_connection() {
        let write = |side: Side| PlannedWrite {
            side,
            op: "create".into(),
            link: 1,
            record: None,
            fields: Fields::new(),
        };
        let mut plan = DryRun {
            sides: vec!["crm".into(), "erp".into(), "crm".into()],
            read: vec![4, 3, 1],
            writes: vec![write(Side::nth(1)), write(Side::nth(2))],
            ..DryRun::default()
        };
        let summary = plan.summary();
        assert_eq!(
            summary[0],
            "read 4 from left (crm), 3 from erp, 1 from third (crm)"
        );
        assert!(
            summary.contains(&"create on erp: 1".to_owned()),
            "{summary:?}"
        );
        assert!(
            summary.contains(&"create on third (crm): 1".to_owned()),
            "{summary:?}"
        );
        plan.sides.clear();
        assert_eq!(
            plan.summary()[0],
            "read 4 from left, 3 from right, 1 from third"
        );
    }

    /// A side that notes when each of its reads begins and ends, and lets other work run in
    /// between, as a read waiting on its database does.
    struct Noted {
        side: Side,
        notes: Arc<std::sync::Mutex<Vec<String>>>,
        /// What its wait answers at once; none: it waits out its timeout.
        watched: Option<plugin::Watched>,
        keeps: bool,
        conditional: bool,
    }

    impl Noted {
        fn new(side: Side, notes: &Arc<std::sync::Mutex<Vec<String>>>) -> Noted {
            Noted {
                side,
                notes: notes.clone(),
                watched: None,
                keeps: true,
                conditional: true,
            }
        }
    }

    impl SideIo for Noted {
        fn conditional_writes(&self) -> bool {
            self.conditional
        }

        fn keeps_announcements(&self) -> bool {
            self.keeps
        }

        async fn watch(&mut self, timeout_ms: u32) -> Result<plugin::Watched, IoError> {
            match self.watched {
                Some(w) => Ok(w),
                None => {
                    let wait = std::time::Duration::from_millis(timeout_ms.into());
                    tokio::time::sleep(wait).await;
                    Ok(plugin::Watched::Timeout)
                }
            }
        }

        async fn read(
            &mut self,
            _origin: &str,
            cursor: Option<&str>,
            _max: u32,
        ) -> Result<ChangeBatch, IoError> {
            let note = |what: &str| {
                self.notes
                    .lock()
                    .unwrap()
                    .push(format!("{what} {}", self.side))
            };
            note("begin");
            tokio::task::yield_now().await;
            note("end");
            Ok(ChangeBatch {
                changes: Vec::new(),
                next_cursor: cursor.unwrap_or("0").to_owned(),
                has_more: false,
                mid_transaction: false,
                remaining: Some(0),
            })
        }

        async fn write(
            &mut self,
            _origin: &str,
            ops: Vec<WriteOp>,
        ) -> Result<Vec<Result<plugin::Written, WitError>>, IoError> {
            assert!(ops.is_empty(), "nothing was read, so nothing is written");
            Ok(Vec::new())
        }

        async fn find(&mut self, _key: LookupKey) -> Result<Vec<plugin::Current>, IoError> {
            Ok(Vec::new())
        }
    }

    /// A runner's first read may install capture on both sides, and two sessions creating the
    /// log's tables at once in one PostgreSQL database collide: it reads one side after the
    /// other. Its later reads, on the path of every realtime change, go at once.
    #[tokio::test]
    async fn a_runners_first_read_goes_side_after_side_and_later_ones_at_once() {
        let notes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (left, right) = (Side::nth(0), Side::nth(1));
        let mut runner = noted_runner(Noted::new(left, &notes), Noted::new(right, &notes));
        let state = State::in_memory().unwrap();
        let taken = || std::mem::take(&mut *notes.lock().unwrap());
        runner.cycle(&state, 1).await.unwrap();
        let first = taken();
        runner.cycle(&state, 2).await.unwrap();
        let second = taken();
        let (b, e) = (|s| format!("begin {s}"), |s| format!("end {s}"));
        assert_eq!(first, [b(left), e(left), b(right), e(right)]);
        assert_eq!(second, [b(left), b(right), e(left), e(right)]);
    }

    fn noted_runner(left: Noted, right: Noted) -> SyncRunner<Noted> {
        let spec = SyncSpec {
            name: "people".into(),
            origin: "duplex:people".into(),
            left_name: "crm".into(),
            right_name: "erp".into(),
            more_names: Vec::new(),
            fields: Vec::new(),
            match_key: None,
            policy: crate::engine::Policy::LastWriterWins,
            deletes: crate::engine::DeletePolicy::Propagate,
            scope: Default::default(),
            stopped: Default::default(),
        };
        SyncRunner::new(spec, left, right, 10, Rules::new())
    }

    /// Which sides the cycle after a wait reads: the ones that announced a change or cannot
    /// tell, not one that could have announced and did not, unless it loses what it would have
    /// announced when its wait is dropped, or has no conditional writes to refuse a write
    /// planned without its unread change. A cycle not after such a wait reads every side.
    #[tokio::test]
    async fn a_cycle_after_a_wait_reads_the_sides_that_announced_or_cannot_tell() {
        use plugin::Watched::{Changed, Unsupported};
        let (left, right) = (Side::nth(0), Side::nth(1));
        let read_after_wait = |left_says, make_right: fn(Noted) -> Noted| async move {
            let notes = Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut l = Noted::new(left, &notes);
            l.watched = left_says;
            let mut runner = noted_runner(l, make_right(Noted::new(right, &notes)));
            let state = State::in_memory().unwrap();
            runner.cycle(&state, 1).await.unwrap();
            let announced = runner.watch(std::time::Duration::from_millis(20)).await;
            notes.lock().unwrap().clear();
            runner.cycle(&state, 2).await.unwrap();
            let after_wait = std::mem::take(&mut *notes.lock().unwrap());
            runner.cycle(&state, 3).await.unwrap();
            let next = std::mem::take(&mut *notes.lock().unwrap());
            assert_eq!(
                next.len(),
                4,
                "a cycle not after a wait reads both: {next:?}"
            );
            let read: BTreeSet<String> = after_wait
                .iter()
                .filter_map(|n| n.strip_prefix("begin ").map(str::to_owned))
                .collect();
            (announced, read.into_iter().collect::<Vec<_>>())
        };
        let (l, r) = (left.to_string(), right.to_string());
        let same = |n: Noted| n;
        assert_eq!(
            read_after_wait(Some(Changed), same).await,
            (Announced::Changes, vec![l.clone()]),
            "the side that announced alone"
        );
        let answers = |n: Noted| Noted {
            watched: Some(Changed),
            ..n
        };
        assert_eq!(
            read_after_wait(Some(Changed), answers).await,
            (Announced::Changes, vec![l.clone(), r.clone()]),
            "both announced at once"
        );
        let forgets = |n: Noted| Noted { keeps: false, ..n };
        assert_eq!(
            read_after_wait(Some(Changed), forgets).await,
            (Announced::Changes, vec![l.clone(), r.clone()]),
            "a side whose dropped wait loses its announcement is read"
        );
        let blind = |n: Noted| Noted {
            conditional: false,
            ..n
        };
        assert_eq!(
            read_after_wait(Some(Changed), blind).await,
            (Announced::Changes, vec![l.clone(), r.clone()]),
            "a side without conditional writes is read"
        );
        assert_eq!(
            read_after_wait(Some(Unsupported), same).await,
            (Announced::CannotTell { waited: true }, vec![l.clone()]),
            "the side that cannot tell, not the one that waited and heard nothing"
        );
        let cannot = |n: Noted| Noted {
            watched: Some(Unsupported),
            ..n
        };
        assert_eq!(
            read_after_wait(Some(Changed), cannot).await,
            (Announced::Changes, vec![l.clone(), r.clone()]),
            "one announced, the other cannot tell"
        );
        assert_eq!(
            read_after_wait(None, same).await,
            (Announced::Quiet, vec![l.clone(), r.clone()]),
            "after a quiet wait (a retry due, the safety cycle) every side"
        );
    }

    #[test]
    fn a_call_size_halves_when_too_big_and_grows_back_once_calls_go_through() {
        let mut size = CallSize::new(1_000);
        assert!(size.too_big(1_000));
        assert_eq!(size.now, 500);
        // A smaller call that failed halves from what it tried.
        assert!(size.too_big(120));
        assert_eq!(size.now, 60);
        for _ in 1..GROW_AFTER {
            size.fitted();
        }
        assert_eq!(size.now, 60, "not before {GROW_AFTER} calls in a row");
        size.fitted();
        assert_eq!(size.now, 120);
        // A failure starts the count over.
        for _ in 1..GROW_AFTER {
            size.fitted();
        }
        assert!(size.too_big(120));
        assert_eq!(size.now, 60);
        for _ in 0..GROW_AFTER * 10 {
            size.fitted();
        }
        assert_eq!(size.now, 1_000, "never past the sync's own number");
        let mut one = CallSize::new(1);
        assert!(!one.too_big(1), "nothing below one to try");
    }
}
