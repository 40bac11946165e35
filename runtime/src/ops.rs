//! The operations layer: what a person or a program can ask of Duplex (status, history,
//! activity, conflicts, rejected records, pause and resume, run now, tokens, the audit log),
//! answered the same way for the CLI and the HTTP API. Neither reaches into the state or the
//! syncs' loops on its own.
//!
//! Two ways to stand: [`Ops::offline`] over a state file no process holds (every change goes
//! straight to the state), or [`Ops::running`] inside the process that runs the syncs, where a
//! change to a sync (a resolution, a pause) is handed to that sync's loop and applied between
//! two cycles: a cycle in flight never has its links changed under it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::app::{App, Install, Installed, Prepared};
use crate::config::Loaded;
use crate::driver::{CycleReport, DryRun};
use crate::engine::{Side, Value};
use crate::state::{
    ActivityQuery, AuditEntry, Choice, Conflict, ConflictQuery, Page, Paused, Rejected, Role, Slot,
    SlotVersions, State, StateError, SyncStats, Token,
};

/// Why an operation failed. The API maps each kind to a status.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("no sync {0}")]
    NoSuchSync(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// The call needs the syncs running (`run now`), or the syncs stopped.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    State(#[from] StateError),
}

impl OpsError {
    fn from_state(e: StateError) -> OpsError {
        match e {
            StateError::NoSuchConflict(_) => OpsError::NotFound(e.to_string()),
            StateError::NotOpen(..) => OpsError::Conflict(e.to_string()),
            StateError::Query(m) => OpsError::Invalid(m),
            other => OpsError::State(other),
        }
    }
}

type Result<T> = std::result::Result<T, OpsError>;

/// A sync as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncInfo {
    pub name: String,
    /// `connection.stream`.
    pub left: String,
    pub right: String,
    /// The further sides of a sync of more than two, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
    /// `realtime`, an interval or a cron expression.
    pub schedule: String,
}

impl SyncInfo {
    /// Every side's `connection.stream`, in config order.
    pub fn streams(&self) -> impl Iterator<Item = &str> {
        [self.left.as_str(), self.right.as_str()]
            .into_iter()
            .chain(self.also.iter().map(String::as_str))
    }
}

/// A plugin the config uses, as `duplex plugin inspect` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginView {
    /// Where the config names it: `rules.NAME` or `connections.NAME` (what upload, versions
    /// and rollback take).
    pub slot: String,
    /// The config key that names it (`connections.crm.plugin`, `rules.larger.plugin`).
    pub used_by: String,
    /// Its file, `builtin:NAME`, or `uploaded vN`.
    pub source: String,
    /// The uploaded version in use; none: the config's file.
    pub version: Option<u32>,
    pub sha256: String,
    pub size: usize,
    /// `duplex:plugin/connector-plugin@0.2.0`, say; none when not recognised.
    pub world: Option<String>,
    /// Why it would not load, if it would not.
    pub problem: Option<String>,
    /// What `plugin inspect` prints.
    pub inspection: String,
}

impl PluginView {
    /// Inspects every plugin an app loaded (an upload in use instead of its config's file).
    pub async fn of(app: &crate::app::App) -> Vec<PluginView> {
        let mut slots: Vec<(Slot, String)> = Vec::new();
        for (name, c) in &app.loaded.config.connections {
            slots.push((Slot::Connector(name.clone()), c.plugin.get_ref().clone()));
        }
        for (name, r) in &app.loaded.config.rules {
            slots.push((Slot::Rule(name.clone()), r.plugin.get_ref().clone()));
        }
        let mut out = Vec::new();
        for (slot, source) in slots {
            let view = if let Some((v, bytes)) = app.uploaded.get(&slot) {
                let shown = format!("uploaded v{}", v.version);
                Self::inspect(&app.host, &slot, shown, Some(v.version), bytes).await
            } else if source == "builtin:sql" {
                let bytes = crate::app::BUILTIN_SQL;
                Self::inspect(&app.host, &slot, source, None, bytes).await
            } else {
                match std::fs::read(app.loaded.resolve(&source)) {
                    Ok(bytes) => Self::inspect(&app.host, &slot, source, None, &bytes).await,
                    Err(e) => PluginView {
                        slot: slot.to_string(),
                        used_by: format!("{slot}.plugin"),
                        problem: Some(format!("cannot read it: {e}")),
                        source,
                        version: None,
                        sha256: String::new(),
                        size: 0,
                        world: None,
                        inspection: String::new(),
                    },
                }
            };
            out.push(view);
        }
        out
    }

    /// Inspects one plugin's bytes.
    pub async fn inspect(
        host: &crate::plugin::PluginHost,
        slot: &Slot,
        source: String,
        version: Option<u32>,
        bytes: &[u8],
    ) -> PluginView {
        let name = std::path::Path::new(&source).to_owned();
        let mut view = PluginView {
            slot: slot.to_string(),
            used_by: format!("{slot}.plugin"),
            source,
            version,
            sha256: crate::state::content_hash(bytes),
            size: bytes.len(),
            world: None,
            problem: None,
            inspection: String::new(),
        };
        match crate::inspect::inspect_bytes(host, &name, bytes).await {
            Ok(i) => {
                view.world = i
                    .world
                    .map(|(w, c)| format!("{}@{}", w.wit_world(), c.version()));
                view.problem = i.problem.clone();
                view.inspection = i.to_string();
            }
            Err(e) => view.problem = Some(e.to_string()),
        }
        view
    }
}

/// One sync's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    #[serde(flatten)]
    pub info: SyncInfo,
    pub paused: Option<Paused>,
    pub links: u64,
    pub active_links: u64,
    /// Links whose record left its side's filter: not synced until it passes again.
    #[serde(default)]
    pub filtered_links: u64,
    pub open_conflicts: u64,
    pub rejected: u64,
    pub waiting_to_retry: u64,
    pub stats: SyncStats,
    /// What the running process knows (absent when nothing runs the sync).
    pub live: Option<LiveStatus>,
    /// Schema drift: fields stopped by a column gone or retyped, new columns not synced.
    #[serde(default)]
    pub schema_drift: Vec<String>,
}

/// What the process running a sync knows of it beyond the state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveStatus {
    /// A cycle is running now.
    pub cycling: bool,
    /// Cycles that failed in a row (0: the last one succeeded).
    pub failures: u32,
    pub last_error: Option<String>,
    /// When the next attempt after a failure is due (microseconds since the epoch).
    pub retry_at: Option<i64>,
    /// The last cycle read and wrote nothing: both sides are caught up.
    pub caught_up: bool,
    /// When both sides were last caught up.
    pub caught_up_at: Option<i64>,
    pub started_at: i64,
    /// About how many changes the last cycle left waiting, where the connectors said (the
    /// sql connector does while it reads a table's existing rows); none when caught up or
    /// when a side could not tell. A failed cycle moves no cursor, so the count stands.
    #[serde(default)]
    pub remaining: Option<u64>,
}

/// One cycle that did something, or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleEntry {
    pub at: i64,
    pub duration_ms: f64,
    pub read_left: usize,
    pub read_right: usize,
    /// Changes read from the third side and on, in a sync of more than two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_more: Vec<usize>,
    pub writes: usize,
    pub failed: usize,
    pub conflicts: usize,
    pub rejected: usize,
    pub error: Option<String>,
}

/// How long a call waits for a sync's loop to take its command (a cycle in flight finishes
/// first; an initial sync's can take minutes).
pub const COMMAND_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Failed cycles in a row after which a sync makes the process not ready.
pub const READY_FAILURES: u32 = 4;

/// How many cycles each sync's history keeps (idle ones are not kept).
pub const HISTORY: usize = 500;

/// The upper bounds (seconds) of the cycle duration histogram.
pub const DURATION_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// Counters of one sync since the process started, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct SyncCounters {
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    /// Changes read, by side in config order.
    pub read: Vec<u64>,
    pub writes_ok: u64,
    pub writes_failed: u64,
    /// Writes by kind (`create`, `update`, `delete`): [succeeded, failed].
    pub writes_by_kind: BTreeMap<&'static str, [u64; 2]>,
    pub echoes: u64,
    pub conflicts_held: u64,
    pub rejected: u64,
    pub decided: u64,
    /// Failed cycles by the kind of error.
    pub failures: BTreeMap<String, u64>,
    /// Cumulative counts per bucket of [`DURATION_BUCKETS`], then +Inf.
    pub duration_buckets: [u64; DURATION_BUCKETS.len() + 1],
    pub duration_sum: f64,
}

/// A running sync, as its loop reports it.
#[derive(Debug, Default)]
pub struct Live {
    pub status: LiveStatus,
    pub paused: bool,
    pub history: VecDeque<CycleEntry>,
    pub counters: SyncCounters,
}

impl Live {
    /// Records a cycle that ended (`report`) or failed (`error`, with its kind).
    pub fn cycle_ended(
        &mut self,
        at: i64,
        seconds: f64,
        report: std::result::Result<&CycleReport, (&str, String)>,
    ) {
        let c = &mut self.counters;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                c.duration_buckets[i] += 1;
            }
        }
        c.duration_buckets[DURATION_BUCKETS.len()] += 1;
        c.duration_sum += seconds;
        let entry = match report {
            Ok(r) => {
                c.cycles_ok += 1;
                if c.read.len() < r.read.len() {
                    c.read.resize(r.read.len(), 0);
                }
                for (total, n) in c.read.iter_mut().zip(&r.read) {
                    *total += *n as u64;
                }
                c.writes_ok += r.writes as u64;
                c.writes_failed += r.failed as u64;
                for (kind, [ok, failed]) in &r.by_kind {
                    let n = c.writes_by_kind.entry(kind).or_default();
                    n[0] += *ok as u64;
                    n[1] += *failed as u64;
                }
                c.echoes += r.echoes as u64;
                c.conflicts_held += r.conflicts as u64;
                c.rejected += r.rejected as u64;
                c.decided += r.decided as u64;
                self.status.failures = 0;
                self.status.last_error = None;
                self.status.retry_at = None;
                self.status.caught_up = r.idle();
                self.status.remaining = r.remaining;
                if r.idle() {
                    self.status.caught_up_at = Some(at);
                    return;
                }
                CycleEntry {
                    at,
                    duration_ms: seconds * 1e3,
                    read_left: r.read.first().copied().unwrap_or(0),
                    read_right: r.read.get(1).copied().unwrap_or(0),
                    read_more: r.read.iter().skip(2).copied().collect(),
                    writes: r.writes,
                    failed: r.failed,
                    conflicts: r.conflicts,
                    rejected: r.rejected,
                    error: None,
                }
            }
            Err((kind, message)) => {
                c.cycles_failed += 1;
                self.status.caught_up = false;
                *c.failures.entry(kind.to_owned()).or_default() += 1;
                self.status.failures = self.status.failures.saturating_add(1);
                self.status.last_error = Some(message.clone());
                CycleEntry {
                    at,
                    duration_ms: seconds * 1e3,
                    read_left: 0,
                    read_right: 0,
                    read_more: Vec::new(),
                    writes: 0,
                    failed: 0,
                    conflicts: 0,
                    rejected: 0,
                    error: Some(message),
                }
            }
        };
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(entry);
    }
}

/// What the operations layer asks of a sync's loop.
#[derive(Debug)]
pub enum Command {
    /// Start a cycle now instead of waiting.
    RunNow,
    Pause,
    Resume,
    Resolve {
        id: u64,
        choice: Choice,
        by: String,
        reply: oneshot::Sender<std::result::Result<Conflict, StateError>>,
    },
    /// Plan the next cycle without writing (between two real ones).
    DryRun {
        reply: oneshot::Sender<std::result::Result<DryRun, String>>,
    },
    /// Run with this plugin from the next cycle on.
    Swap(Arc<Prepared>),
    /// Run with this config from the next cycle on (a config applied).
    Replace(Box<crate::app::SyncSetup>),
    /// End the loop after the cycle in flight (the sync is gone from the config).
    Stop,
}

/// What a plugin put in use changed, as the API answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginChange {
    /// The slot's versions now; `active` is the one in use.
    pub versions: SlotVersions,
    pub plugin: PluginView,
    /// The syncs that take it at their next cycle.
    pub syncs: Vec<String>,
}

impl Installed {
    pub fn change(&self) -> PluginChange {
        PluginChange {
            versions: self.versions.clone(),
            plugin: self.view.clone(),
            syncs: self.syncs.clone(),
        }
    }
}

/// A plugin to check, store and put in use, for the process running the syncs (which holds
/// the plugin host and the connections a connector is checked with).
pub struct InstallRequest {
    pub slot: Slot,
    pub what: Install,
    pub by: String,
    pub reply: oneshot::Sender<Result<Installed>>,
}

/// A config checked as `duplex check` checks it, to run from now on.
pub struct ApplyRequest {
    /// The config loaded from `text` (boxed: an app is large).
    pub app: Box<App>,
    pub text: String,
    pub by: String,
    /// What it did, and the plugins that run now.
    pub reply: oneshot::Sender<Result<(Applied, Vec<PluginView>)>>,
}

/// A request a system pushed to `POST /hooks/{connection}`, for the connection's connector.
pub struct WebhookCall {
    pub connection: String,
    pub request: crate::plugin::WebhookRequest,
    pub reply: oneshot::Sender<Result<Hooked>>,
}

/// What came of a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hooked {
    /// Genuine, with changes waiting: these syncs read now.
    Woke(Vec<String>),
    /// Genuine, nothing to read.
    Nothing,
    /// Not genuine: nothing woken. Why, for the log only.
    Refused(String),
    /// The connection's connector takes no webhooks.
    Unsupported,
}

/// What the running process is asked to do.
pub enum Request {
    Install(InstallRequest),
    Apply(ApplyRequest),
    Webhook(WebhookCall),
}

/// What applying a config did to the syncs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Running with their new config from their next cycle.
    pub changed: Vec<String>,
    pub added: Vec<String>,
    /// Stopped after their cycle in flight, if any; their state is kept.
    pub removed: Vec<String>,
    /// Not touched.
    pub unchanged: Vec<String>,
    /// What takes effect only at the next start (the `[serve]` table, the plugin limits).
    pub at_restart: Vec<String>,
}

/// The syncs a running process runs, shared by the operations layer and the process (which
/// adds, changes and removes them when a config is applied).
#[derive(Default)]
pub struct Registry {
    pub infos: Vec<SyncInfo>,
    /// Where the config names a plugin.
    pub slots: Vec<Slot>,
    senders: BTreeMap<String, mpsc::UnboundedSender<Command>>,
    live: BTreeMap<String, Arc<Mutex<Live>>>,
}

impl Registry {
    /// Registers a sync whose loop starts now; the loop's end of its controls.
    pub fn add(&mut self, name: &str, paused: bool, now: i64) -> SyncControl {
        let (tx, rx) = mpsc::unbounded_channel();
        let live = Arc::new(Mutex::new(Live {
            status: LiveStatus {
                started_at: now,
                ..LiveStatus::default()
            },
            paused,
            ..Live::default()
        }));
        self.senders.insert(name.to_owned(), tx);
        self.live.insert(name.to_owned(), live.clone());
        SyncControl { commands: rx, live }
    }

    /// Forgets a sync whose loop was told to stop.
    pub fn remove(&mut self, name: &str) {
        self.senders.remove(name);
        self.live.remove(name);
    }

    /// Hands a command to a sync's loop.
    pub fn send(&self, sync: &str, command: Command) -> Result<()> {
        self.senders
            .get(sync)
            .ok_or_else(|| OpsError::NoSuchSync(sync.to_owned()))?
            .send(command)
            .map_err(|_| OpsError::Conflict(format!("sync {sync} is stopping")))
    }

    /// Describes the config's syncs and plugin slots.
    pub fn describe(&mut self, loaded: &Loaded) {
        self.infos = Ops::sync_infos(loaded);
        self.slots = Ops::slots(loaded);
    }
}

/// The running process's end of the controls: each sync loop's, the requests to install
/// plugins and apply configs, and the registry it keeps up to date.
pub struct Controls {
    pub syncs: BTreeMap<String, SyncControl>,
    pub requests: mpsc::UnboundedReceiver<Request>,
    pub registry: Arc<Mutex<Registry>>,
}

/// The loop's end of a sync's controls.
pub struct SyncControl {
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub live: Arc<Mutex<Live>>,
}

/// The syncs' loops, as the operations layer reaches them.
pub struct Running {
    registry: Arc<Mutex<Registry>>,
    requests: mpsc::UnboundedSender<Request>,
    pub started_at: i64,
}

/// Locks the registry; nothing is left half-done under it.
pub fn registry(r: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

impl Running {
    /// Controls for the config's syncs: the operations layer's end, and the process's.
    pub fn new(
        loaded: &Loaded,
        state: &State,
        now: i64,
    ) -> std::result::Result<(Running, Controls), StateError> {
        let paused: BTreeMap<String, Paused> = state.paused()?.into_iter().collect();
        let (requests, receiver) = mpsc::unbounded_channel();
        let mut reg = Registry::default();
        reg.describe(loaded);
        let mut loops = BTreeMap::new();
        for name in loaded.config.syncs.keys() {
            loops.insert(name.clone(), reg.add(name, paused.contains_key(name), now));
        }
        let registry = Arc::new(Mutex::new(reg));
        let controls = Controls {
            syncs: loops,
            requests: receiver,
            registry: registry.clone(),
        };
        let running = Running {
            registry,
            requests,
            started_at: now,
        };
        Ok((running, controls))
    }

    fn send(&self, sync: &str, command: Command) -> Result<()> {
        registry(&self.registry).send(sync, command)
    }

    /// Every running sync's live status.
    pub fn live(&self) -> BTreeMap<String, Arc<Mutex<Live>>> {
        registry(&self.registry).live.clone()
    }

    fn live_of(&self, sync: &str) -> Option<Arc<Mutex<Live>>> {
        registry(&self.registry).live.get(sync).cloned()
    }
}

/// The operations layer.
pub struct Ops {
    config: std::path::PathBuf,
    /// Where the config names a plugin.
    slots: Vec<Slot>,
    plugins: Mutex<Vec<PluginView>>,
    syncs: Vec<SyncInfo>,
    state: Arc<State>,
    running: Option<Running>,
    /// Where the syncs' schema records are kept (see `crate::schema`).
    schemas: std::path::PathBuf,
}

/// Locks a sync's live status; a loop that panicked while holding it left nothing half-done
/// worth refusing over.
pub fn lock(live: &Mutex<Live>) -> std::sync::MutexGuard<'_, Live> {
    live.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Ops {
    /// The syncs a config names, as configured.
    pub fn sync_infos(loaded: &Loaded) -> Vec<SyncInfo> {
        loaded
            .config
            .syncs
            .iter()
            .map(|(name, s)| SyncInfo {
                name: name.clone(),
                left: s.left.get_ref().clone(),
                right: s.right.get_ref().clone(),
                also: s.also.iter().map(|a| a.get_ref().clone()).collect(),
                schedule: s
                    .schedule
                    .as_ref()
                    .map_or("realtime".to_owned(), |s| s.get_ref().clone()),
            })
            .collect()
    }

    fn slots(loaded: &Loaded) -> Vec<Slot> {
        let c = &loaded.config;
        c.rules
            .keys()
            .map(|n| Slot::Rule(n.clone()))
            .chain(c.connections.keys().map(|n| Slot::Connector(n.clone())))
            .collect()
    }

    /// Over a state file that no process is running.
    pub fn offline(loaded: &Loaded, state: Arc<State>) -> Ops {
        Ops {
            config: loaded.path.clone(),
            slots: Self::slots(loaded),
            plugins: Mutex::default(),
            syncs: Self::sync_infos(loaded),
            state,
            running: None,
            schemas: crate::schema::dir(&loaded.state_path()),
        }
    }

    /// Inside the process that runs the syncs, with the plugins it loaded.
    pub fn running(
        loaded: &Loaded,
        state: Arc<State>,
        running: Running,
        plugins: Vec<PluginView>,
    ) -> Ops {
        Ops {
            config: loaded.path.clone(),
            slots: Self::slots(loaded),
            plugins: Mutex::new(plugins),
            syncs: Self::sync_infos(loaded),
            state,
            running: Some(running),
            schemas: crate::schema::dir(&loaded.state_path()),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn live(&self) -> Option<&Running> {
        self.running.as_ref()
    }

    /// The syncs as configured: the running process's config (applied ones included), or the
    /// config file's.
    fn infos(&self) -> Vec<SyncInfo> {
        match &self.running {
            Some(r) => registry(&r.registry).infos.clone(),
            None => self.syncs.clone(),
        }
    }

    fn info(&self, sync: &str) -> Result<SyncInfo> {
        self.infos()
            .into_iter()
            .find(|s| s.name == sync)
            .ok_or_else(|| OpsError::NoSuchSync(sync.to_owned()))
    }

    pub fn syncs(&self) -> Result<Vec<SyncStatus>> {
        let names: Vec<String> = self.infos().into_iter().map(|s| s.name).collect();
        names.iter().map(|n| self.sync(n)).collect()
    }

    pub fn sync(&self, name: &str) -> Result<SyncStatus> {
        let info = self.info(name)?;
        let counts = self.state.link_counts(name)?;
        let (open, rejected, dirty) = self.state.waiting_counts(name)?;
        let paused = self
            .state
            .paused()?
            .into_iter()
            .find(|(s, _)| s == name)
            .map(|(_, p)| p);
        let live = self
            .running
            .as_ref()
            .and_then(|r| r.live_of(name))
            .map(|l| lock(&l).status.clone());
        Ok(SyncStatus {
            info,
            paused,
            links: counts.total,
            active_links: counts.active,
            filtered_links: counts.filtered,
            open_conflicts: open,
            rejected,
            waiting_to_retry: dirty,
            stats: self.state.stats(name)?,
            live,
            schema_drift: match crate::schema::SyncSchema::load(&self.schemas, name) {
                Ok(r) => r.map(|r| r.report()).unwrap_or_default(),
                Err(why) => vec![format!("the schema record cannot be read: {why}")],
            },
        })
    }

    /// The sync's recent cycles that did something or failed, newest first (kept by the
    /// running process only, since it started).
    pub fn history(&self, name: &str, limit: Option<usize>) -> Result<Vec<CycleEntry>> {
        self.info(name)?;
        let limit = limit.unwrap_or(crate::state::PAGE).min(HISTORY);
        Ok(match self.running.as_ref().and_then(|r| r.live_of(name)) {
            Some(l) => lock(&l).history.iter().rev().take(limit).cloned().collect(),
            None => Vec::new(),
        })
    }

    pub fn activity(&self, q: &ActivityQuery) -> Result<Page<crate::state::Activity>> {
        if let Some(s) = &q.sync {
            self.info(s)?;
        }
        self.state.activity_page(q).map_err(OpsError::from_state)
    }

    pub fn conflicts(&self, q: &ConflictQuery) -> Result<Page<Conflict>> {
        if let Some(s) = &q.sync {
            self.info(s)?;
        }
        self.state.conflict_page(q).map_err(OpsError::from_state)
    }

    pub fn conflict(&self, id: u64) -> Result<Conflict> {
        self.state.conflict(id).map_err(OpsError::from_state)
    }

    /// Settles a conflict. Running: the sync's loop applies it between two cycles and runs a
    /// cycle at once, so the resolution reaches both sides without waiting for a change.
    pub async fn resolve(&self, id: u64, choice: Choice, by: &str) -> Result<Conflict> {
        let conflict = self.conflict(id)?;
        match &self.running {
            Some(r) => {
                let (reply, answer) = oneshot::channel();
                r.send(
                    &conflict.sync,
                    Command::Resolve {
                        id,
                        choice,
                        by: by.to_owned(),
                        reply,
                    },
                )?;
                let waited = tokio::time::timeout(COMMAND_WAIT, answer).await.map_err(|_| {
                    OpsError::Conflict(format!(
                        "sync {} is in a long cycle; the resolution is queued and applies when the cycle ends",
                        conflict.sync
                    ))
                })?;
                waited
                    .map_err(|_| OpsError::Conflict(format!("sync {} is stopping", conflict.sync)))?
                    .map_err(OpsError::from_state)
            }
            None => self
                .state
                .resolve_conflict(id, choice, by, now_micros())
                .map_err(OpsError::from_state),
        }
    }

    pub fn rejected(
        &self,
        sync: Option<&str>,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page<(String, Rejected)>> {
        if let Some(s) = sync {
            self.info(s)?;
        }
        self.state
            .rejected_page(sync, after, limit)
            .map_err(OpsError::from_state)
    }

    /// Tries a rejected record again at the next cycle (at once, when running).
    pub fn retry(&self, sync: &str, side: Side, id: &str) -> Result<()> {
        self.info(sync)?;
        if !self.state.retry_rejected(sync, side, id, now_micros())? {
            return Err(OpsError::NotFound(format!(
                "sync {sync} has no rejected {side} record {id}"
            )));
        }
        if let Some(r) = &self.running {
            r.send(sync, Command::RunNow)?;
        }
        Ok(())
    }

    /// Pauses a sync: no cycle starts until it is resumed, across restarts too.
    pub fn pause(&self, sync: &str, by: &str) -> Result<()> {
        self.info(sync)?;
        self.state.set_paused(
            sync,
            Some(&Paused {
                by: by.to_owned(),
                at: now_micros(),
            }),
        )?;
        if let Some(r) = &self.running {
            r.send(sync, Command::Pause)?;
        }
        Ok(())
    }

    pub fn resume(&self, sync: &str) -> Result<()> {
        self.info(sync)?;
        self.state.set_paused(sync, None)?;
        if let Some(r) = &self.running {
            r.send(sync, Command::Resume)?;
        }
        Ok(())
    }

    /// Starts a cycle of the sync now.
    pub fn run_now(&self, sync: &str) -> Result<()> {
        self.info(sync)?;
        match &self.running {
            Some(r) => r.send(sync, Command::RunNow),
            None => Err(OpsError::Conflict(format!(
                "nothing is running sync {sync}: start `duplex run` or `duplex serve`"
            ))),
        }
    }

    /// What the sync would do with every change waiting, changing nothing anywhere (a pilot
    /// run, see [`DryRun`]). Running: planned by the sync's loop between two cycles; offline,
    /// `duplex run CONFIG --dry-run` plans it.
    pub async fn dry_run(&self, sync: &str) -> Result<DryRun> {
        self.info(sync)?;
        let Some(r) = &self.running else {
            return Err(OpsError::Conflict(format!(
                "nothing is running sync {sync}: `duplex run CONFIG --dry-run` plans it without running"
            )));
        };
        let (reply, answer) = oneshot::channel();
        r.send(sync, Command::DryRun { reply })?;
        tokio::time::timeout(COMMAND_WAIT, answer)
            .await
            .map_err(|_| {
                OpsError::Conflict(format!(
                    "sync {sync} is in a long cycle; the dry run runs when it ends, ask again then"
                ))
            })?
            .map_err(|_| OpsError::Conflict(format!("sync {sync} is stopping")))?
            .map_err(OpsError::Conflict)
    }

    /// The plugins the running syncs use, as `plugin inspect` shows them.
    pub fn plugins(&self) -> Result<Vec<PluginView>> {
        if self.running.is_none() {
            return Err(OpsError::Conflict(
                "nothing is running: `duplex plugin inspect FILE` shows a plugin".into(),
            ));
        }
        Ok(self
            .plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    /// A slot's uploaded versions and the one in use.
    pub fn plugin_versions(&self, slot: &str) -> Result<SlotVersions> {
        let slot = self.slot(slot)?;
        Ok(self.state.plugin_versions(&slot)?)
    }

    fn slot(&self, slot: &str) -> Result<Slot> {
        let slot: Slot = slot.parse().map_err(OpsError::Invalid)?;
        let slots = match &self.running {
            Some(r) => registry(&r.registry).slots.clone(),
            None => self.slots.clone(),
        };
        if !slots.contains(&slot) {
            let names: Vec<String> = slots.iter().map(Slot::to_string).collect();
            return Err(OpsError::NotFound(format!(
                "the config names no plugin {slot} (it names: {})",
                names.join(", ")
            )));
        }
        Ok(slot)
    }

    /// Checks a component for a slot and, when it fits, stores it as the slot's next version
    /// and puts it in use: the syncs using the slot take it at their next cycle boundary.
    pub async fn upload(&self, slot: &str, bytes: Vec<u8>, by: &str) -> Result<Installed> {
        self.install(slot, Install::Upload(bytes), by).await
    }

    /// Puts an earlier version in use (`to`), by default the one before the version in use;
    /// before the first upload is the config's own file.
    pub async fn rollback(&self, slot: &str, to: Option<u32>, by: &str) -> Result<Installed> {
        let target = match to {
            Some(v) => Some(v),
            None => self
                .plugin_versions(slot)?
                .previous()
                .map_err(OpsError::Conflict)?,
        };
        self.install(slot, Install::Version(target), by).await
    }

    async fn install(&self, slot: &str, what: Install, by: &str) -> Result<Installed> {
        let slot = self.slot(slot)?;
        let Some(r) = &self.running else {
            return Err(OpsError::Conflict(
                "nothing is running: `duplex plugin upload|rollback CONFIG` changes the plugins of a stopped instance".into(),
            ));
        };
        let (reply, answer) = oneshot::channel();
        r.requests
            .send(Request::Install(InstallRequest {
                slot: slot.clone(),
                what,
                by: by.to_owned(),
                reply,
            }))
            .map_err(|_| OpsError::Conflict("the syncs are stopping".into()))?;
        let installed = tokio::time::timeout(COMMAND_WAIT, answer)
            .await
            .map_err(|_| {
                OpsError::Conflict(format!(
                    "{slot}: still being checked; `GET /api/v1/plugins/{slot}/versions` shows when it is in use"
                ))
            })?
            .map_err(|_| OpsError::Conflict("the syncs are stopping".into()))??;
        let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        match plugins.iter_mut().find(|p| p.slot == installed.view.slot) {
            Some(p) => *p = installed.view.clone(),
            None => plugins.push(installed.view.clone()),
        }
        Ok(installed)
    }

    /// The config file in use, as JSON, with what could be a secret hidden: values under keys
    /// that name a password, secret, token or key, and the password of any URL. (Secrets
    /// themselves are never in the file: `secrets.NAME` names where they are.)
    pub fn config(&self) -> Result<serde_json::Value> {
        let text = std::fs::read_to_string(&self.config).map_err(|e| {
            OpsError::Conflict(format!("cannot read {}: {e}", self.config.display()))
        })?;
        let value: toml::Value = toml::from_str(&text)
            .map_err(|e| OpsError::Conflict(format!("{}: {e}", self.config.display())))?;
        let mut json = serde_json::to_value(value).map_err(|e| OpsError::Invalid(e.to_string()))?;
        hide_secrets(&mut json, false);
        Ok(json)
    }

    /// Checks a config as `duplex check` does (syntax, plugins, connections, every mapping),
    /// changing nothing; the running syncs are not touched. Paths in it are relative to the
    /// config file in use. The errors are `check`'s, naming the submitted config.
    pub async fn validate_config(&self, text: &str) -> Result<Vec<String>> {
        let app = self.load_submitted(text).await?;
        Ok(app.syncs.iter().map(crate::app::Sync::describe).collect())
    }

    /// Checks a config as [`Ops::validate_config`] does and, when it is valid, writes it over
    /// the config file and runs it: each sync it changes takes its new config at its next
    /// cycle boundary, added syncs start, removed ones stop; the others are not touched. An
    /// invalid config changes nothing, and the errors are `check`'s.
    pub async fn apply_config(&self, text: &str, by: &str) -> Result<Applied> {
        let Some(r) = &self.running else {
            return Err(OpsError::Conflict(
                "nothing is running: edit the config file; the next start runs it".into(),
            ));
        };
        let mut app = self.load_submitted(text).await?;
        // It was read from a file beside the config; it runs as the config.
        app.loaded.path = self.config.clone();
        let (reply, answer) = oneshot::channel();
        r.requests
            .send(Request::Apply(ApplyRequest {
                app: Box::new(app),
                text: text.to_owned(),
                by: by.to_owned(),
                reply,
            }))
            .map_err(|_| OpsError::Conflict("the syncs are stopping".into()))?;
        let (applied, plugins) = tokio::time::timeout(COMMAND_WAIT, answer)
            .await
            .map_err(|_| {
                OpsError::Conflict(
                    "the config is still being applied; `GET /api/v1/syncs` shows when it runs"
                        .into(),
                )
            })?
            .map_err(|_| OpsError::Conflict("the syncs are stopping".into()))??;
        *self.plugins.lock().unwrap_or_else(|e| e.into_inner()) = plugins;
        Ok(applied)
    }

    /// Hands a pushed request to the connection's connector to verify; when it says changes
    /// are waiting, every sync reading the connection starts a cycle. A webhook only wakes
    /// reads: the change feed stays the source of truth, so a lost or replayed one loses or
    /// duplicates nothing.
    pub async fn webhook(
        &self,
        connection: &str,
        request: crate::plugin::WebhookRequest,
    ) -> Result<Hooked> {
        let Some(r) = &self.running else {
            return Err(OpsError::Conflict("nothing is running".into()));
        };
        let (reply, answer) = oneshot::channel();
        r.requests
            .send(Request::Webhook(WebhookCall {
                connection: connection.to_owned(),
                request,
                reply,
            }))
            .map_err(|_| OpsError::Conflict("the syncs are stopping".into()))?;
        tokio::time::timeout(COMMAND_WAIT, answer)
            .await
            .map_err(|_| OpsError::Conflict("the connector is busy; try again".into()))?
            .map_err(|_| OpsError::Conflict("the syncs are stopping".into()))?
    }

    /// Loads a submitted config from a file beside the one in use (so relative paths mean
    /// the same), as `duplex check` would.
    async fn load_submitted(&self, text: &str) -> Result<App> {
        let dir = self
            .config
            .parent()
            .unwrap_or_else(|| std::path::Path::new("."));
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = dir.join(format!(".duplex-validate-{}-{n}.toml", std::process::id()));
        std::fs::write(&file, text)
            .map_err(|e| OpsError::Conflict(format!("cannot write {}: {e}", file.display())))?;
        let loaded = App::load(&file).await;
        let _ = std::fs::remove_file(&file);
        let app = loaded.map_err(|e| {
            OpsError::Invalid(
                format!("{e}").replace(&file.display().to_string(), "the submitted config"),
            )
        })?;
        if app.loaded.state_path()
            != crate::config::Loaded::read(&self.config)
                .map(|l| l.state_path())
                .unwrap_or_default()
        {
            return Err(OpsError::Invalid(
                "state: the submitted config names another state file than the running one".into(),
            ));
        }
        Ok(app)
    }

    /// Makes a token; the secret is shown once, here, and only its hash is kept.
    pub fn create_token(&self, role: Role, name: &str) -> Result<(Token, String)> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| OpsError::Invalid(format!("no randomness for a token: {e}")))?;
        let id = hex::encode(&bytes[..4]);
        let secret = format!("dpx_{}", hex::encode(bytes));
        let token = Token {
            id,
            name: name.to_owned(),
            role,
            created_at: now_micros(),
            revoked_at: None,
        };
        self.state.add_token(&secret, &token)?;
        Ok((token, secret))
    }

    pub fn tokens(&self) -> Result<Vec<Token>> {
        Ok(self.state.tokens()?)
    }

    pub fn revoke_token(&self, id: &str) -> Result<Token> {
        self.state
            .revoke_token(id, now_micros())?
            .ok_or_else(|| OpsError::NotFound(format!("no token {id}")))
    }

    pub fn audit(&self, before: Option<&str>, limit: Option<usize>) -> Result<Page<AuditEntry>> {
        self.state
            .audit_page(before, limit)
            .map_err(OpsError::from_state)
    }

    /// Writes one call that changed something to the audit log.
    pub fn record(&self, who: &str, action: &str, outcome: &str) {
        if let Err(e) = self.state.audit(now_micros(), who, action, outcome) {
            tracing::error!(error = %e, who, action, "cannot write to the audit log");
        }
    }

    /// Ready: every sync's last cycle succeeded, or it is paused, or it is retrying after
    /// fewer than [`READY_FAILURES`] failures (its backoff is still short: a passing hiccup).
    /// The reasons when not.
    pub fn ready(&self) -> std::result::Result<(), Vec<String>> {
        let Some(r) = &self.running else {
            return Err(vec!["no sync is running".into()]);
        };
        let mut why = Vec::new();
        for (name, live) in &r.live() {
            let l = lock(live);
            if l.paused || l.status.failures < READY_FAILURES {
                continue;
            }
            why.push(format!(
                "sync {name}: {} failed cycles in a row, the last: {}",
                l.status.failures,
                l.status.last_error.as_deref().unwrap_or("?")
            ));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }
}

/// A value given as JSON (on the command line or in an API call), in the type of the
/// conflict's values (`like`).
pub fn value_from_json(json: serde_json::Value, like: Option<&Value>) -> Result<Value> {
    use crate::engine::{convert, FieldType};
    let v = match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Decimal(n.to_string()),
        },
        serde_json::Value::String(s) => Value::Text(s),
        other => Value::Json(other.to_string()),
    };
    let ty = match like {
        Some(Value::Bool(_)) => FieldType::Boolean,
        Some(Value::Int(_)) => FieldType::Integer,
        Some(Value::Float(_)) => FieldType::Float,
        Some(Value::Decimal(_)) => FieldType::Decimal,
        Some(Value::Time(_)) => FieldType::Timestamp,
        Some(Value::Json(_)) => FieldType::Json,
        Some(Value::Bytes(_)) => FieldType::Bytes,
        _ => return Ok(v),
    };
    convert(v, ty).map_err(|m| OpsError::Invalid(format!("the value does not fit the field: {m}")))
}

/// Hides what could be a secret in a config shown as JSON (see [`Ops::config`]).
fn hide_secrets(v: &mut serde_json::Value, secret_key: bool) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                // Where a secret lives (the `secrets` table, an `env` or `file` reference) is
                // not the secret itself.
                let reference = matches!(k.as_str(), "secrets" | "env" | "file");
                let secret = ["password", "secret", "token", "key", "credential"]
                    .iter()
                    .any(|s| k.contains(s));
                hide_secrets(v, !reference && (secret_key || secret));
            }
        }
        serde_json::Value::Array(items) => {
            items.iter_mut().for_each(|i| hide_secrets(i, secret_key))
        }
        serde_json::Value::String(s) if secret_key => *s = "***".into(),
        serde_json::Value::String(s) => *s = crate::host::sql::redact(s),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) if secret_key => {
            *v = serde_json::Value::String("***".into())
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_shown_hides_passwords_and_secret_values_but_not_where_secrets_live() {
        let mut v = serde_json::json!({
            "connections": {"pg": {"config": {"url": "postgres://app:hunter2@db/crm", "api_key": "k-123"}}},
            "secrets": {"hubspot": {"env": "HUBSPOT_TOKEN"}},
            "http": {"headers": {"Authorization": "Bearer {secret:hubspot}"}},
            "limits": {"memory_mb": 256}
        });
        hide_secrets(&mut v, false);
        let text = v.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("k-123"),
            "{text}"
        );
        assert!(text.contains("postgres://app:***@db/crm"), "{text}");
        assert!(
            text.contains("HUBSPOT_TOKEN"),
            "where a secret lives stays: {text}"
        );
        assert!(text.contains("256"), "{text}");
    }
}
