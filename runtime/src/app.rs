//! Wires a config file to running syncs: loads the plugins it names, checks every connection,
//! discovers the streams, checks every mapping against them, and runs the syncs on their
//! schedules. Loading changes nothing anywhere: every check runs before the first read (which
//! installs change capture) or write.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{common_name, split_stream, ConfigError, Loaded};
use crate::driver::schedule::Schedule;
use crate::driver::{
    Announced, CycleError, CycleReport, Joins, PluginSide, Relay, Rules, SchemaWatch, SyncRunner,
    Turns,
};
use crate::engine::{
    convert, DeletePolicy, FieldSpec, FieldType, MatchKey, Policy, SyncSpec, Value,
};
use crate::ops::{
    lock, Applied, Command, Controls, Hooked, OpsError, Registry, Request, Running, SyncControl,
};
use crate::plugin::{
    CallError, CompileCache, ConnectorPlugin, HostOptions, LoadError, PluginHost, Stream,
    WebhookAnswer,
};
use crate::schema::SyncSchema;
use crate::state::{PluginVersion, Slot, State, StateError};

mod install;
pub use install::{Install, Installed, Prepared};

/// The SQL connector, built from `plugins/connectors/sql` and shipped inside the binary, so the
/// demo and SQLite syncs need nothing installed (`plugin = "builtin:sql"`).
pub static BUILTIN_SQL: &[u8] = include_bytes!(concat!(
    env!("DUPLEX_PLUGIN_DIR"),
    "/duplex_connector_sql.wasm"
));

/// Why the app could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Plugin(#[from] LoadError),
    /// The plugin's error is shown in this one's text, so it is not also its source (which
    /// the CLI would print a second time).
    #[error("connection {connection}: {error}")]
    Connection {
        connection: String,
        error: CallError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cycle(#[from] CycleError),
    #[error("{0}")]
    Host(String),
}

/// A connection, loaded and checked.
#[derive(Clone)]
pub struct Connection {
    pub plugin: Arc<ConnectorPlugin>,
    pub config: String,
    pub streams: Vec<Stream>,
}

/// A sync, checked against both streams.
#[derive(Clone)]
pub struct Sync {
    pub spec: SyncSpec,
    /// The schema record the sync runs against, as loaded (see `crate::schema`), and whether
    /// it was kept already (a first run keeps what it found).
    pub schema: SyncSchema,
    pub schema_kept: bool,
    pub schedule: Schedule,
    pub batch: u32,
    /// Most changes of one source transaction applied to the other sides at once.
    pub max_transaction: u32,
    /// Each side's connection and stream, in config order: the left, the right, then `also`.
    pub sides: Vec<(String, String)>,
}

impl Sync {
    /// One line saying what the sync joins, as `check` prints it.
    pub fn describe(&self) -> String {
        format!(
            "sync {}: {}, {} fields mapped",
            self.spec.name,
            self.streams().join(" <-> "),
            self.spec.fields.len()
        )
    }

    /// What `check` says of the rules the sync asks that cannot see all its sides: a rule
    /// built for a contract before 0.4.0, in a sync of more than two, is not asked about its
    /// conflicts, which wait for a person (see `plugin/since.rs`).
    pub fn rule_warnings(&self, rules: &Rules) -> Vec<String> {
        if self.sides.len() <= 2 {
            return Vec::new();
        }
        rules
            .iter()
            .filter(|(name, _)| install::uses_rule(self, name))
            .filter(|(_, rule)| !rule.origin().contract.rules_see_every_side())
            .map(|(name, rule)| {
                format!(
                    "rule {name} was built for duplex:plugin@{}, which shows a rule two sides: \
                     this sync has {}, so its conflicts wait for a person instead; rebuild the \
                     rule against duplex:plugin@{}",
                    rule.origin().contract.version(),
                    self.sides.len(),
                    crate::plugin::world::VERSION
                )
            })
            .collect()
    }

    /// Each side's `connection.stream`, in config order.
    pub fn streams(&self) -> Vec<String> {
        self.sides.iter().map(|(c, s)| format!("{c}.{s}")).collect()
    }

    /// Whether one of the sync's sides is on `connection`.
    pub fn uses(&self, connection: &str) -> bool {
        self.sides.iter().any(|(c, _)| c == connection)
    }
}

/// A loaded config, ready to run.
pub struct App {
    pub loaded: Loaded,
    pub host: PluginHost,
    pub connections: BTreeMap<String, Connection>,
    pub rules: Rules,
    pub syncs: Vec<Sync>,
    /// Uploaded plugins in use instead of the config's files (see [`App::use_uploads`]).
    pub uploaded: BTreeMap<Slot, (PluginVersion, Arc<Vec<u8>>)>,
}

impl App {
    /// Loads and checks everything a config names. Writes nothing anywhere.
    pub async fn load(path: &Path) -> Result<App, AppError> {
        let loaded = Loaded::read(path)?;
        let host = PluginHost::new(HostOptions {
            limits: loaded.limits()?,
            cache_dir: CompileCache::default_dir(),
        })
        .map_err(|e| AppError::Host(format!("cannot start the plugin host: {e:#}")))?;
        let mut connections = BTreeMap::new();
        for (name, c) in &loaded.config.connections {
            let grants = loaded.grants(name, c)?;
            let plugin_ref = c.plugin.get_ref();
            let plugin = if plugin_ref == "builtin:sql" {
                host.load_connector("builtin:sql", name, BUILTIN_SQL, &grants)
                    .await?
            } else if let Some(other) = plugin_ref.strip_prefix("builtin:") {
                return Err(loaded
                    .invalid(
                        &c.plugin,
                        format!("connections.{name}.plugin"),
                        format!("no built-in plugin {other} (built in: sql)"),
                    )
                    .into());
            } else {
                let file = loaded.resolve(plugin_ref);
                if !file.exists() {
                    return Err(loaded
                        .invalid(
                            &c.plugin,
                            format!("connections.{name}.plugin"),
                            format!("plugin file {} does not exist", file.display()),
                        )
                        .into());
                }
                host.load_connector_file(&file, name, &grants).await?
            };
            let config = loaded.connector_config(c);
            connections.insert(name.clone(), connect(name, plugin, config).await?);
        }
        let mut rules = Rules::new();
        for (name, r) in &loaded.config.rules {
            let file = loaded.resolve(r.plugin.get_ref());
            if !file.exists() {
                return Err(loaded
                    .invalid(
                        &r.plugin,
                        format!("rules.{name}.plugin"),
                        format!("plugin file {} does not exist", file.display()),
                    )
                    .into());
            }
            let rule = host.load_resolver_file(&file, name).await?;
            rules.insert(name.clone(), Arc::new(rule));
        }
        let mut syncs = Vec::new();
        for name in loaded.config.syncs.keys() {
            syncs.push(build_sync(&loaded, name, &connections)?);
        }
        refuse_cycles(&loaded, &syncs)?;
        Ok(App {
            loaded,
            host,
            connections,
            rules,
            syncs,
            uploaded: BTreeMap::new(),
        })
    }

    /// Opens the state file.
    pub fn open_state(&self) -> Result<State, AppError> {
        Ok(State::open(&self.loaded.state_path())?)
    }

    /// A runner for each sync, with fresh sessions.
    pub fn runner(&self, sync: &Sync) -> SyncRunner<PluginSide> {
        SyncSetup::new(self, sync, None).runner()
    }

    /// A runner for a dry run of `sync`, whose sides change nothing.
    pub fn dry_runner(&self, sync: &Sync) -> SyncRunner<PluginSide> {
        SyncSetup::new(self, sync, None).dry_runner()
    }

    /// Runs every sync until both sides of each are caught up. Returns each sync's reports.
    pub async fn run_once(
        &self,
        state: &State,
        mut progress: impl FnMut(&str, &CycleReport),
    ) -> Result<BTreeMap<String, Vec<CycleReport>>, AppError> {
        let mut out = BTreeMap::new();
        let paused: BTreeMap<String, crate::state::Paused> = state.paused()?.into_iter().collect();
        for sync in &self.syncs {
            // A paused sync stays paused, here too.
            if let Some(p) = paused.get(&sync.spec.name) {
                tracing::warn!(sync = %sync.spec.name, by = %p.by, "paused; not run (`duplex sync resume` resumes it)");
                continue;
            }
            let mut runner = self.runner(sync);
            let mut reports = Vec::new();
            // Caught up: a cycle that read and wrote nothing. Bounded, so a record that keeps
            // failing cannot keep --once running; it stays in `status` with its reason.
            let mut stalled = 0u32;
            for _ in 0..100_000 {
                let report = runner.cycle(state, now_micros()).await?;
                progress(&sync.spec.name, &report);
                let idle = report.idle();
                // Changes announced but not yet readable (held behind a transaction still
                // running): wait a little rather than spin, and give up after a minute.
                let waiting =
                    report.more && report.read.iter().all(|n| *n == 0) && report.writes == 0;
                reports.push(report);
                if idle {
                    break;
                }
                if waiting {
                    stalled += 1;
                    if stalled > 2_400 {
                        tracing::warn!(sync = %sync.spec.name, "changes have been waiting behind a running transaction for a minute; stopping without them");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                } else {
                    stalled = 0;
                }
            }
            out.insert(sync.spec.name.clone(), reports);
        }
        Ok(out)
    }

    /// Runs every sync on its schedule until `stop` resolves; cycles in progress then finish
    /// first. A failing cycle is logged and retried with backoff; it does not stop the other
    /// syncs.
    ///
    /// Each sync runs on a task of its own: on a multi-threaded runtime a sync planning or
    /// committing a large cycle holds up no other, and an idle realtime sync waiting for an
    /// announcement (up to [`Schedule::REALTIME_MAX`]) or a sync between scheduled runs costs
    /// no thread. `progress` is called on the caller's task, as each cycle ends.
    pub async fn run(
        &self,
        state: &Arc<State>,
        stop: impl std::future::Future<Output = ()>,
        progress: impl FnMut(&str, &CycleReport),
    ) -> Result<(), AppError> {
        let (_running, controls) = Running::new(&self.loaded, state, now_micros())?;
        self.run_controlled(state, stop, progress, controls).await
    }

    /// [`App::run`], with each sync's loop taking commands from the operations layer
    /// ([`crate::ops`]) between its cycles and reporting what it does, and the process taking
    /// plugins to install and configs to apply.
    pub async fn run_controlled(
        &self,
        state: &Arc<State>,
        stop: impl std::future::Future<Output = ()>,
        progress: impl FnMut(&str, &CycleReport),
        controls: Controls,
    ) -> Result<(), AppError> {
        let Controls {
            syncs: mut controls,
            requests,
            registry,
        } = controls;
        let mut progress = progress;
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        // Each sync's reports come back here, for `progress`.
        let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
        let mut loops = tokio::task::JoinSet::new();
        let turns = Turns::for_threads();
        for sync in &self.syncs {
            let control = controls.remove(&sync.spec.name).ok_or_else(|| {
                AppError::Host(format!("no controls for sync {}", sync.spec.name))
            })?;
            let setup = SyncSetup::new(self, sync, None);
            let state = state.clone();
            loops.spawn(run_sync(
                setup,
                state,
                report.clone(),
                stopped.clone(),
                control,
                turns.clone(),
            ));
        }
        // Syncs a config applied later adds, handed over by the supervisor.
        let (spawn, mut spawned) = tokio::sync::mpsc::unbounded_channel();
        let supervisor = self.supervise(state, requests, registry, spawn);
        let syncs = async {
            tokio::pin!(supervisor);
            let mut done = stopped.clone();
            loop {
                tokio::select! {
                    Some(ended) = loops.join_next(), if !loops.is_empty() => {
                        // A sync's panic is the process's, as it was when the syncs shared
                        // this task.
                        if let Err(e) = ended {
                            if e.is_panic() {
                                std::panic::resume_unwind(e.into_panic());
                            }
                        }
                    }
                    Some((sync, cycle)) = reports.recv() => progress(&sync, &cycle),
                    Some((setup, control)) = spawned.recv() => {
                        let state = state.clone();
                        let turns = turns.clone();
                        loops.spawn(run_sync(setup, state, report.clone(), stopped.clone(), control, turns));
                    }
                    _ = &mut supervisor => {}
                    _ = done.wait_for(|s| *s), if !*done.borrow() => {}
                }
                if *stopped.borrow() && loops.is_empty() {
                    // What the last cycles reported.
                    while let Ok((sync, cycle)) = reports.try_recv() {
                        progress(&sync, &cycle);
                    }
                    break;
                }
            }
        };
        tokio::pin!(syncs);
        tokio::select! {
            _ = stop => {
                let _ = stopping.send(true);
                syncs.await;
            }
            _ = &mut syncs => {}
        }
        Ok(())
    }

    /// Takes the operations layer's requests one at a time: plugins to install (handed to the
    /// loops of the syncs that use them) and configs to apply. Never ends.
    async fn supervise<'a>(
        &'a self,
        state: &'a State,
        mut requests: tokio::sync::mpsc::UnboundedReceiver<Request>,
        registry: Arc<std::sync::Mutex<Registry>>,
        spawn: tokio::sync::mpsc::UnboundedSender<(SyncSetup, SyncControl)>,
    ) {
        // What runs now: the config applied last (none: this one), its connections as the
        // syncs run them (uploads included: a connector is checked with these), and what each
        // sync runs with, to tell which syncs a new config changes.
        let mut latest: Option<Arc<App>> = None;
        let mut connections = self.connections.clone();
        let mut rules = self.rules.clone();
        let mut prints: BTreeMap<String, String> = self
            .syncs
            .iter()
            .map(|s| {
                let print = self.fingerprint(s, &connections, &rules);
                (s.spec.name.clone(), print)
            })
            .collect();
        while let Some(request) = requests.recv().await {
            let app: &App = latest.as_deref().unwrap_or(self);
            match request {
                Request::Install(r) => {
                    let installed = app
                        .install(state, &r.slot, r.what, &r.by, &mut connections)
                        .await;
                    if let Ok(i) = &installed {
                        if let Prepared::Rule { name, plugin } = &*i.swap {
                            rules.insert(name.clone(), plugin.clone());
                        }
                        let registry = crate::ops::registry(&registry);
                        for sync in &i.syncs {
                            let _ = registry.send(sync, Command::Swap(i.swap.clone()));
                            // What the sync runs with now, so that a config applied later
                            // that runs it the same way leaves it alone.
                            let rebuilt = match &*i.swap {
                                Prepared::Connector { syncs, .. } => {
                                    syncs.iter().find(|s| s.spec.name == *sync)
                                }
                                Prepared::Rule { .. } => None,
                            };
                            let current =
                                rebuilt.or_else(|| app.syncs.iter().find(|s| s.spec.name == *sync));
                            if let Some(s) = current {
                                prints
                                    .insert(sync.clone(), app.fingerprint(s, &connections, &rules));
                            }
                        }
                    }
                    let _ = r.reply.send(installed);
                }
                Request::Webhook(w) => {
                    let hooked = hook(&connections, &registry, w.connection, w.request).await;
                    let _ = w.reply.send(hooked);
                }
                Request::Apply(r) => {
                    let applied = app
                        .apply_config(state, *r.app, &r.text, &registry, &spawn, &mut prints)
                        .await;
                    let answer = match applied {
                        Ok((applied, new)) => {
                            connections = new.connections.clone();
                            rules = new.rules.clone();
                            let plugins = crate::ops::PluginView::of(&new).await;
                            latest = Some(new);
                            tracing::info!(by = %r.by, ?applied, "config applied");
                            Ok((applied, plugins))
                        }
                        Err(e) => Err(e),
                    };
                    let _ = r.reply.send(answer);
                }
            }
        }
        std::future::pending::<()>().await
    }

    /// What a sync runs with, as text: two syncs (or one before and after a config change)
    /// with the same fingerprint run the same way. `connections` and `rules` as they run now
    /// (uploads included).
    fn fingerprint(
        &self,
        s: &Sync,
        connections: &BTreeMap<String, Connection>,
        rules: &Rules,
    ) -> String {
        let mut out = format!(
            "{:?}|{:?}|{}|{}|{:?}",
            s.spec, s.schedule, s.batch, s.max_transaction, s.sides
        );
        for (conn, _) in &s.sides {
            if let Some(c) = connections.get(conn) {
                let grants = self
                    .loaded
                    .config
                    .connections
                    .get(conn)
                    .map(|cc| format!("{:?}", self.loaded.grants(conn, cc).ok()));
                out.push_str(&format!(
                    "|{conn}:{}:{}:{grants:?}",
                    c.plugin.origin().sha256,
                    c.config
                ));
            }
        }
        for (name, rule) in rules {
            if install::uses_rule(s, name) {
                out.push_str(&format!("|rule {name}:{}", rule.origin().sha256));
            }
        }
        out
    }

    /// Runs `new` from now on: writes its text over the config file, then hands each changed
    /// sync its new setup (taken at its next cycle boundary), starts the added ones and stops
    /// the removed ones. Syncs that run the same as before are not touched.
    async fn apply_config(
        &self,
        state: &State,
        mut new: App,
        text: &str,
        registry: &std::sync::Mutex<Registry>,
        spawn: &tokio::sync::mpsc::UnboundedSender<(SyncSetup, SyncControl)>,
        prints: &mut BTreeMap<String, String>,
    ) -> Result<(Applied, Arc<App>), OpsError> {
        new.use_uploads(state)
            .await
            .map_err(|e| OpsError::Invalid(e.to_string()))?;
        let mut applied = Applied::default();
        let (old_serve, new_serve) = (&self.loaded.config.serve, &new.loaded.config.serve);
        if old_serve.listen.as_ref().map(|l| l.get_ref())
            != new_serve.listen.as_ref().map(|l| l.get_ref())
            || old_serve.tls_cert != new_serve.tls_cert
            || old_serve.tls_key != new_serve.tls_key
            || old_serve.insecure_http != new_serve.insecure_http
        {
            applied.at_restart.push("serve".into());
        }
        if self.host.limits() != new.host.limits() {
            applied.at_restart.push(
                "limits (for the plugins loaded now; new and changed syncs have them)".into(),
            );
        }
        // The file first: if it cannot be written, nothing changes.
        let path = &self.loaded.path;
        let tmp = path.with_extension("toml.applying");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                OpsError::Conflict(format!("cannot write {}: {e}", path.display()))
            })?;
        let new = Arc::new(new);
        let paused: BTreeMap<String, crate::state::Paused> = state.paused()?.into_iter().collect();
        let mut reg = crate::ops::registry(registry);
        let mut next = BTreeMap::new();
        for s in &new.syncs {
            let name = &s.spec.name;
            let print = new.fingerprint(s, &new.connections, &new.rules);
            match prints.get(name) {
                None => {
                    let control = reg.add(name, paused.contains_key(name), now_micros());
                    let _ = spawn.send((SyncSetup::new(&new, s, Some(new.clone())), control));
                    applied.added.push(name.clone());
                }
                Some(old) if *old != print => {
                    let setup = SyncSetup::new(&new, s, Some(new.clone()));
                    let _ = reg.send(name, Command::Replace(Box::new(setup)));
                    applied.changed.push(name.clone());
                }
                Some(_) => applied.unchanged.push(name.clone()),
            }
            next.insert(name.clone(), print);
        }
        for name in prints.keys().filter(|n| !next.contains_key(*n)) {
            let _ = reg.send(name, Command::Stop);
            reg.remove(name);
            applied.removed.push(name.clone());
        }
        reg.describe(&new.loaded);
        *prints = next;
        Ok((applied, new))
    }
}

/// Hands a webhook to the connection's connector (as it runs now, uploads included) and, when
/// it says changes are waiting, starts a cycle of every sync reading the connection.
async fn hook(
    connections: &BTreeMap<String, Connection>,
    registry: &std::sync::Mutex<Registry>,
    connection: String,
    request: crate::plugin::WebhookRequest,
) -> Result<Hooked, OpsError> {
    let c = connections
        .get(&connection)
        .ok_or_else(|| OpsError::NotFound(format!("no connection {connection}")))?;
    let failed = |e: CallError| {
        tracing::warn!(%connection, error = %e, "a webhook could not be checked");
        OpsError::Conflict(format!(
            "connection {connection} could not check the request; the log says why"
        ))
    };
    let mut session = c.plugin.session().await.map_err(failed)?;
    let answer = session.webhook(&c.config, request).await.map_err(failed)?;
    Ok(match answer {
        WebhookAnswer::ChangesWaiting => {
            let registry = crate::ops::registry(registry);
            let prefix = format!("{connection}.");
            let syncs: Vec<String> = registry
                .infos
                .iter()
                .filter(|s| s.streams().any(|st| st.starts_with(&prefix)))
                .map(|s| s.name.clone())
                .collect();
            for sync in &syncs {
                let _ = registry.send(sync, Command::RunNow);
            }
            Hooked::Woke(syncs)
        }
        WebhookAnswer::Nothing => Hooked::Nothing,
        WebhookAnswer::Refused(why) => {
            tracing::warn!(%connection, %why, "a webhook was refused");
            Hooked::Refused(why)
        }
        WebhookAnswer::Unsupported => Hooked::Unsupported,
    })
}

/// Applies a command from the operations layer, between two cycles of the sync. True when
/// the sync now runs with other plugins or config (its runner must be made again).
async fn apply(
    setup: &mut SyncSetup,
    command: Command,
    state: &State,
    live: &std::sync::Mutex<crate::ops::Live>,
) -> Applies {
    match command {
        Command::RunNow => {}
        Command::Pause => lock(live).paused = true,
        Command::Resume => lock(live).paused = false,
        Command::Resolve {
            id,
            choice,
            by,
            reply,
        } => {
            let _ = reply.send(state.resolve_conflict(id, choice, &by, now_micros()));
        }
        Command::DryRun { reply } => {
            // A runner of its own: the sync's runner keeps what it read ahead for its next
            // cycle, which a dry run must not take.
            let planned = setup.dry_runner().dry_run(state, now_micros()).await;
            let _ = reply.send(planned.map_err(|e| e.to_string()));
        }
        Command::Swap(p) => {
            setup.swap(&p);
            tracing::info!(sync = %setup.sync.spec.name, plugin = ?p, "running with a new plugin from this cycle on");
            return Applies::Remake;
        }
        Command::Replace(new) => {
            tracing::info!(sync = %new.sync.spec.name, "running with the applied config from this cycle on");
            *setup = *new;
            return Applies::Remake;
        }
        Command::Stop => return Applies::Stop,
    }
    Applies::Same
}

/// When the next of `sync`'s failed records is due for a retry, if one is.
fn retry_due(state: &State, sync: &str) -> Option<tokio::time::Instant> {
    let due = state.next_dirty_due(sync).ok()??;
    let ahead = u64::try_from(due - now_micros()).unwrap_or(0);
    Some(tokio::time::Instant::now() + Duration::from_micros(ahead))
}

/// What a command leaves the loop to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applies {
    Same,
    /// Make the runner again, from the setup now.
    Remake,
    /// End the loop: the sync was removed.
    Stop,
}

/// One sync's loop for [`App::run`], until `stopped` turns true. Only its waits are cut
/// short; a cycle, once begun, finishes. Commands are applied between cycles only.
async fn run_sync(
    mut setup: SyncSetup,
    state: Arc<State>,
    progress: tokio::sync::mpsc::UnboundedSender<(String, CycleReport)>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    mut control: SyncControl,
    turns: Turns,
) {
    let mut runner = setup.runner().taking_turns(turns.clone());
    // A plugin swapped in or a config applied takes effect here, at the next cycle boundary:
    // the runner (and what it read ahead, which is read again from the committed cursors) is
    // made anew.
    let mut remake = false;
    let mut idle_streak = 0u32;
    // Whether the last wait found that every side can announce changes (see below).
    let mut quiet_sides = false;
    // Closed once the operations layer is gone: then only the stop is awaited.
    let mut open = true;
    macro_rules! take {
        ($c:expr) => {
            match apply(&mut setup, $c, &state, &control.live).await {
                Applies::Same => {}
                Applies::Remake => remake = true,
                Applies::Stop => return,
            }
        };
    }
    while !*stopped.borrow() {
        while let Ok(c) = control.commands.try_recv() {
            take!(c);
        }
        if std::mem::take(&mut remake) {
            runner = setup.runner().taking_turns(turns.clone());
        }
        if lock(&control.live).paused {
            tokio::select! {
                c = control.commands.recv(), if open => match c {
                    Some(c) => take!(c),
                    None => open = false,
                },
                () = stopping(&mut stopped) => return,
            }
            continue;
        }
        let name = setup.sync.spec.name.clone();
        lock(&control.live).status.cycling = true;
        let started = std::time::Instant::now();
        // A cycle with a full batch to work through is background work: the runner goes
        // with it to the background runtime and comes back when it ends.
        let report = if runner.next_in_background() {
            let state = state.clone();
            let (back, report) = crate::background::run(async move {
                let report = runner.cycle(&state, now_micros()).await;
                (runner, report)
            })
            .await;
            runner = back;
            report
        } else {
            let _in_flight = crate::background::foreground();
            runner.cycle(&state, now_micros()).await
        };
        let seconds = started.elapsed().as_secs_f64();
        // What the operations layer sees of the cycle; the lock is not held past here.
        let retry = {
            let mut live = lock(&control.live);
            live.status.cycling = false;
            match &report {
                Ok(report) => {
                    live.cycle_ended(now_micros(), seconds, Ok(report));
                    None
                }
                Err(e) => {
                    let kind = match e {
                        CycleError::Read { .. } => "read",
                        CycleError::Recover { .. } => "recover",
                        CycleError::State { .. } => "state",
                    };
                    live.cycle_ended(now_micros(), seconds, Err((kind, e.to_string())));
                    let failures = live.status.failures;
                    let wait = Duration::from_millis(500u64 << failures.min(7));
                    live.status.retry_at = Some(now_micros() + wait.as_micros() as i64);
                    Some((failures, wait))
                }
            }
        };
        let wait = match (report, retry) {
            (Ok(report), _) => {
                let idle = report.idle();
                let _ = progress.send((name.clone(), report));
                idle_streak = if idle {
                    idle_streak.saturating_add(1)
                } else {
                    0
                };
                let schedule = setup.sync.schedule.clone();
                let wait = schedule.wait(chrono::Utc::now(), idle, idle_streak);
                // Realtime and idle: wait for an announcement where the sides can make one
                // (PostgreSQL NOTIFY, SQLite's files), else poll with the adaptive backoff.
                // While every side can announce, a quiet wait runs no cycle: an idle sync
                // then reads nothing and runs no plugin but its waits, until a change is
                // announced, a failed record's retry is due, or `Schedule::REALTIME_QUIET`
                // passed (a cycle then, in case an announcement was missed).
                if idle && matches!(schedule, Schedule::Realtime) {
                    let quiet_until = tokio::time::Instant::now() + Schedule::REALTIME_QUIET;
                    loop {
                        let until = retry_due(&state, &name)
                            .map_or(quiet_until, |due| due.min(quiet_until));
                        let left = until.saturating_duration_since(tokio::time::Instant::now());
                        let timeout = if quiet_sides {
                            left.min(Schedule::REALTIME_QUIET_WAIT)
                        } else {
                            Schedule::REALTIME_MAX
                        };
                        let announced = tokio::select! {
                            w = runner.watch(timeout) => w,
                            c = control.commands.recv(), if open => {
                                match c {
                                    Some(c) => take!(c),
                                    None => open = false,
                                }
                                Announced::Changes
                            }
                            () = stopping(&mut stopped) => return,
                        };
                        quiet_sides = announced == Announced::Quiet;
                        match announced {
                            Announced::Quiet if tokio::time::Instant::now() < until => continue,
                            Announced::CannotTell { waited: false } => break wait,
                            _ => break Duration::ZERO,
                        }
                    }
                } else {
                    wait
                }
            }
            (Err(e), retry) => {
                let (failures, wait) = retry.unwrap_or((1, Duration::from_secs(1)));
                tracing::warn!(sync = %name, error = %e, attempt = failures, "cycle failed; retrying with backoff");
                wait
            }
        };
        if wait.is_zero() {
            // A sync catching up never waits: let the others have their turn.
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // Any command ends the wait: a resolution or a retry wants a cycle now.
                c = control.commands.recv(), if open => match c {
                    Some(c) => take!(c),
                    None => open = false,
                },
                () = stopping(&mut stopped) => return,
            }
        }
    }
}

/// Resolves once `stopped` turns true. Its output holds no borrow of the channel, which a
/// `select!` would keep across the other branches' awaits (and the loop's future would not be
/// `Send`).
async fn stopping(stopped: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// What one sync's loop runs with: its config and the app's plugins, until a swap replaces
/// one or an applied config replaces it all.
pub struct SyncSetup {
    sync: Sync,
    /// The state file, beside which the sync's schema record is kept.
    state_path: std::path::PathBuf,
    rules: Rules,
    connections: BTreeMap<String, (Arc<ConnectorPlugin>, String)>,
    /// The other syncs writing the records of one of this sync's sides.
    relays: Vec<Relay>,
    /// The app of an applied config, kept while its plugins run: its plugin host's epoch
    /// ticker is what stops a plugin that runs past its CPU budget.
    _app: Option<Arc<App>>,
}

impl std::fmt::Debug for SyncSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "setup of sync {}", self.sync.spec.name)
    }
}

impl SyncSetup {
    fn new(app: &App, sync: &Sync, keep: Option<Arc<App>>) -> SyncSetup {
        let connections = sync
            .sides
            .iter()
            .map(|(c, _)| {
                let conn = &app.connections[c];
                (c.clone(), (conn.plugin.clone(), conn.config.clone()))
            })
            .collect();
        let streams: Vec<Vec<String>> = app.syncs.iter().map(Sync::streams).collect();
        let joins: Vec<Joins<'_>> = app
            .syncs
            .iter()
            .zip(&streams)
            .map(|(s, sides)| Joins {
                sync: &s.spec.name,
                origin: &s.spec.origin,
                sides: sides.iter().map(String::as_str).collect(),
            })
            .collect();
        SyncSetup {
            sync: sync.clone(),
            state_path: app.loaded.state_path(),
            rules: app.rules.clone(),
            connections,
            relays: Relay::among(&sync.spec.name, &joins),
            _app: keep,
        }
    }

    /// A runner for the sync's cycles, watching its sides' schemas. Made anew after a swap:
    /// the record as last kept then holds what the previous runner stopped.
    fn runner(&self) -> SyncRunner<PluginSide> {
        let name = &self.sync.spec.name;
        let dir = crate::schema::dir(&self.state_path);
        let mut record = self.sync.schema.clone();
        let mut unsaved = !self.sync.schema_kept;
        if let Ok(Some(latest)) = SyncSchema::load(&dir, name) {
            // A drift found as the config loaded (a column dropped while Duplex was stopped)
            // is in `record` only: kept too, or `status` and `check` would not show it.
            unsaved = record.stopped != latest.stopped;
            for (field, stop) in latest.stopped {
                let mine = record.stopped.entry(field).or_default();
                for side in self.sync.spec.all_sides() {
                    let theirs = stop.on(side).map(str::to_owned);
                    let mine = mine.on_mut(side);
                    *mine = mine.take().or(theirs);
                }
            }
        }
        let labels = self.sync.streams();
        self.runner_with(|side| side)
            .watching_schema(SchemaWatch::new(dir, record, labels, unsaved))
    }

    /// A runner for a dry run: its sides change nothing (see [`PluginSide::read_only`]).
    fn dry_runner(&self) -> SyncRunner<PluginSide> {
        self.runner_with(PluginSide::read_only)
    }

    fn runner_with(&self, wrap: impl Fn(PluginSide) -> PluginSide) -> SyncRunner<PluginSide> {
        let side = |(conn, stream): &(String, String)| {
            let (plugin, config) = &self.connections[conn];
            wrap(PluginSide::new(
                plugin.clone(),
                config.clone(),
                stream.clone(),
            ))
        };
        SyncRunner::of(
            self.sync.spec.clone(),
            self.sync.sides.iter().map(side).collect(),
            self.sync.batch,
            self.rules.clone(),
        )
        .whole_transactions_up_to(self.sync.max_transaction)
        .relaying(self.relays.clone())
    }

    fn swap(&mut self, p: &Prepared) {
        match p {
            Prepared::Rule { name, plugin } => {
                self.rules.insert(name.clone(), plugin.clone());
            }
            Prepared::Connector {
                name,
                connection,
                syncs,
            } => {
                if let Some(entry) = self.connections.get_mut(name) {
                    *entry = (connection.plugin.clone(), connection.config.clone());
                }
                if let Some(s) = syncs.iter().find(|s| s.spec.name == self.sync.spec.name) {
                    self.sync = s.clone();
                }
            }
        }
    }
}

/// Asks a loaded connector to check its config and say what streams it has.
async fn connect(
    name: &str,
    plugin: ConnectorPlugin,
    config: String,
) -> Result<Connection, AppError> {
    let failed = |error| AppError::Connection {
        connection: name.to_owned(),
        error,
    };
    let mut session = plugin.session().await.map_err(failed)?;
    session.check(&config).await.map_err(failed)?;
    let streams = session.discover(&config).await.map_err(failed)?;
    Ok(Connection {
        plugin: Arc::new(plugin),
        config,
        streams,
    })
}

/// Refuses syncs that join streams in a cycle: `a` with `b`, `b` with `c` and `c` with `a`
/// (or two syncs of the same two streams). A change would reach a record by two ways and come
/// back by a third, and two changes racing could go round for ever, each sync handing on the
/// value the last one gave it. A chain or a star of syncs reaches every stream once.
fn refuse_cycles(loaded: &Loaded, syncs: &[Sync]) -> Result<(), AppError> {
    // Which streams each stream is joined to so far, and by which syncs: a sync whose streams
    // are joined already closes a cycle, found by a search along the joins.
    let mut joins: BTreeMap<String, Vec<(String, &str)>> = BTreeMap::new();
    for sync in syncs {
        // A sync of more sides joins its first to each of the others: a star, no cycle.
        let streams = sync.streams();
        let cfg = &loaded.config.syncs[&sync.spec.name];
        let from = &streams[0];
        for ((key, at), to) in cfg.streams().into_iter().zip(&streams).skip(1) {
            if let Some(path) = path_between(&joins, from, to) {
                let mut names: Vec<&str> = path;
                names.push(&sync.spec.name);
                return Err(loaded
                    .invalid(
                        at,
                        format!("syncs.{}.{key}", sync.spec.name),
                        format!(
                            "syncs {} join {from} and {to} in a cycle: a change would reach a record by two ways and could go round for ever; drop one of them (a chain or a star of syncs reaches every stream, and one sync can name them all with also)",
                            names.join(", ")
                        ),
                    )
                    .into());
            }
            joins
                .entry(from.clone())
                .or_default()
                .push((to.clone(), &sync.spec.name));
            joins
                .entry(to.clone())
                .or_default()
                .push((from.clone(), &sync.spec.name));
        }
    }
    Ok(())
}

/// The syncs joining `from` to `to`, if any path of joins does.
fn path_between<'a>(
    joins: &BTreeMap<String, Vec<(String, &'a str)>>,
    from: &str,
    to: &str,
) -> Option<Vec<&'a str>> {
    let mut seen = std::collections::BTreeSet::from([from.to_owned()]);
    let mut queue = std::collections::VecDeque::from([(from.to_owned(), Vec::new())]);
    while let Some((at, path)) = queue.pop_front() {
        if at == to {
            return Some(path);
        }
        for (next, sync) in joins.get(&at).into_iter().flatten() {
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(*sync);
                queue.push_back((next.clone(), p));
            }
        }
    }
    None
}

/// Checks one sync's mapping against the discovered streams and builds its spec.
fn build_sync(
    loaded: &Loaded,
    name: &str,
    connections: &BTreeMap<String, Connection>,
) -> Result<Sync, AppError> {
    use crate::engine::Side;
    let cfg = &loaded.config.syncs[name];
    let stream =
        |key: &str, at: &toml::Spanned<String>| -> Result<(String, String, Stream), ConfigError> {
            let (conn, stream) = split_stream(at.get_ref()).ok_or_else(|| {
                loaded.invalid(at, format!("syncs.{name}.{key}"), "not connection.stream")
            })?;
            let c = &connections[conn];
            let s = c.streams.iter().find(|s| s.name == stream).ok_or_else(|| {
                let names: Vec<&str> = c.streams.iter().map(|s| s.name.as_str()).collect();
                loaded.invalid(
                    at,
                    format!("syncs.{name}.{key}"),
                    format!(
                        "connection {conn} has no stream {stream} (it has: {})",
                        names.join(", ")
                    ),
                )
            })?;
            Ok((conn.to_owned(), stream.to_owned(), s.clone()))
        };
    // Each side: its connection, stream name and discovered stream, in config order.
    let sides: Vec<(String, String, Stream)> = cfg
        .streams()
        .into_iter()
        .map(|(key, at)| stream(&key, at))
        .collect::<Result<_, _>>()?;
    let conns: Vec<&String> = sides.iter().map(|(c, _, _)| c).collect();
    let dir = crate::schema::dir(&loaded.state_path());
    let kept = SyncSchema::load(&dir, name).map_err(|why| {
        loaded.invalid(
            &cfg.left,
            format!("syncs.{name}"),
            format!("its schema record cannot be read: {why}"),
        )
    })?;
    let now: Vec<crate::schema::Shape> = sides
        .iter()
        .map(|(_, _, s)| crate::schema::shape_of(s))
        .collect();
    let schema_kept = kept.is_some();
    let mut schema = kept.unwrap_or_else(|| SyncSchema::accepting(now.clone()));
    let mut fields = Vec::new();
    for (i, f) in cfg.fields.iter().enumerate() {
        let names = f.names();
        let lookup = |side: Side| -> Result<crate::plugin::Field, ConfigError> {
            let (key, at) = &names[side.index()];
            let (conn, _, s) = &sides[side.index()];
            let accepted = schema.shape(side);
            s.fields
                .iter()
                .find(|x| x.name == *at.get_ref())
                .cloned()
                // A column the sync ran with that is gone since: the field is stopped (by
                // `SyncSchema::compare` below), not the whole config refused.
                .or_else(|| {
                    accepted.get(at.get_ref()).map(|t| crate::plugin::Field {
                        name: at.get_ref().clone(),
                        type_: (*t).into(),
                        nullable: true,
                        writable: true,
                        matchable: true,
                        allowed: Vec::new(),
                        unsupported: None,
                    })
                })
                .ok_or_else(|| {
                    let names: Vec<&str> = s.fields.iter().map(|x| x.name.as_str()).collect();
                    loaded.invalid(
                        at,
                        format!("syncs.{name}.fields[{i}].{key}"),
                        format!(
                            "stream {} of connection {conn} has no field {} (it has: {})",
                            s.name,
                            at.get_ref(),
                            names.join(", ")
                        ),
                    )
                })
        };
        let found: Vec<crate::plugin::Field> = Side::all(sides.len())
            .map(lookup)
            .collect::<Result<_, _>>()?;
        let streams: Vec<String> = sides.iter().map(|(c, s, _)| format!("{c}.{s}")).collect();
        let streams: Vec<&str> = streams.iter().map(String::as_str).collect();
        let direction = match &f.owner {
            // Checked by `Loaded::validate`.
            Some(o) => crate::engine::Direction::From(
                crate::config::side_named(o.get_ref().trim(), &streams).map_err(|why| {
                    loaded.invalid(o, format!("syncs.{name}.fields[{i}].owner"), why)
                })?,
            ),
            None => f.direction.into(),
        };
        for (side, field) in Side::all(sides.len()).zip(&found) {
            let (key, at) = &names[side.index()];
            let (conn, _, s) = &sides[side.index()];
            // A field the connector cannot carry is refused here, before anything runs: never
            // a first failure at run time.
            if let Some(why) = &field.unsupported {
                return Err(loaded
                    .invalid(
                        at,
                        format!("syncs.{name}.fields[{i}].{key}"),
                        format!(
                            "field {} of stream {} (connection {conn}) cannot be synced: {why}",
                            field.name, s.name
                        ),
                    )
                    .into());
            }
            if direction.writes_to(side) && !field.writable {
                return Err(loaded
                    .invalid(at, format!("syncs.{name}.fields[{i}].{key}"), format!("field {} cannot be written; make the field flow away from it with direction", field.name))
                    .into());
            }
        }
        // A column retyped since the sync ran keeps its accepted type: the field is stopped.
        let types: Vec<FieldType> = Side::all(sides.len())
            .zip(&found)
            .map(|(side, field)| {
                schema
                    .shape(side)
                    .get(&field.name)
                    .copied()
                    .unwrap_or(field.type_.into())
            })
            .collect();
        let (lf, rf, lt, rt) = (&found[0], &found[1], types[0], types[1]);
        let counter = f.counter.as_ref().is_some_and(|c| *c.get_ref());
        if let Some(c) = f.counter.as_ref().filter(|_| counter) {
            // A total written unconditionally would overwrite a sale made since it was read:
            // the side must refuse a write to a record that changed, so the sync merges again.
            for conn in &conns {
                let info = connections[*conn].plugin.info();
                if !info
                    .capabilities
                    .contains(crate::plugin::Capabilities::CONDITIONAL_WRITES)
                {
                    return Err(loaded
                        .invalid(
                            c,
                            format!("syncs.{name}.fields[{i}].counter"),
                            format!(
                                "connection {conn} cannot write conditionally (its connector {} refuses no write to a record changed since it was read), so a change of the counter made there meanwhile would be overwritten, not added: a counter needs conditional writes on every side",
                                info.name
                            ),
                        )
                        .into());
                }
            }
            let number = |t: FieldType| matches!(t, FieldType::Integer | FieldType::Decimal);
            for ((field, ty), conn) in found.iter().zip(&types).zip(&conns) {
                if !number(*ty) {
                    return Err(loaded
                        .invalid(
                            c,
                            format!("syncs.{name}.fields[{i}].counter"),
                            format!(
                                "field {} of connection {conn} is {ty:?}: a counter must be an integer or a decimal on every side, to be added exactly",
                                field.name
                            ),
                        )
                        .into());
                }
            }
        }
        let mut values = Vec::new();
        if let Some(table) = &f.values {
            let key = format!("syncs.{name}.fields[{i}].values");
            let n = sides.len();
            let invalid =
                |at: &toml::Spanned<String>, why: String| loaded.invalid(at, key.clone(), why);
            for (k, v) in table {
                // A sync of two maps a left value to a right one; a sync of more, to a list of
                // the other sides' values in config order.
                let others: Vec<&toml::Value> = match v {
                    toml::Value::Array(a) if n > 2 => a.iter().collect(),
                    v => vec![v],
                };
                if others.len() != n - 1 {
                    let list: Vec<&str> = streams[1..].to_vec();
                    return Err(invalid(
                        &f.left,
                        format!(
                            "{k}: a sync of {n} sides maps each left value to a list of the {} others' values, in order ({}): {k} = [...]",
                            n - 1,
                            list.join(", ")
                        ),
                    )
                    .into());
                }
                let mut row = vec![convert(Value::Text(k.clone()), lt)
                    .map_err(|m| invalid(&f.left, format!("{k}: {m}")))?];
                for (side, v) in Side::all(n).skip(1).zip(others) {
                    let (_, at) = &names[side.index()];
                    row.push(
                        toml_value(v)
                            .and_then(|v| convert(v, types[side.index()]))
                            .map_err(|m| invalid(at, format!("{k}: {m}")))?,
                    );
                }
                // An enum on any side: the mapped values must be among its values.
                for (side, (value, field)) in Side::all(n).zip(row.iter().zip(&found)) {
                    let text = match value {
                        Value::Text(t) => t.clone(),
                        other => other.display(),
                    };
                    if !field.allowed.is_empty() && !field.allowed.contains(&text) {
                        let (_, at) = &names[side.index()];
                        return Err(invalid(
                            at,
                            format!(
                                "{text} is not a value of field {} (it takes: {})",
                                field.name,
                                field.allowed.join(", ")
                            ),
                        )
                        .into());
                    }
                }
                values.push(row);
            }
        }
        fields.push(FieldSpec {
            name: common_name(f).to_owned(),
            left: lf.name.clone(),
            right: rf.name.clone(),
            left_type: lt,
            right_type: rt,
            direction,
            values,
            policy: f
                .conflict
                .as_ref()
                .map(|p| loaded.policy(p, &format!("syncs.{name}.fields[{i}].conflict"), &streams))
                .transpose()?,
            counter,
            more: found[2..]
                .iter()
                .zip(&types[2..])
                .map(|(f, t)| (f.name.clone(), *t))
                .collect(),
        });
    }
    let labels: Vec<String> = sides.iter().map(|(c, s, _)| format!("{c}.{s}")).collect();
    let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    let policy = match &cfg.conflict {
        Some(p) => loaded.policy(p, &format!("syncs.{name}.conflict"), &label_refs)?,
        None => Policy::LastWriterWins,
    };
    let scope = scope(loaded, name, cfg.filter.as_ref(), &fields)?;
    let shapes: Vec<&crate::schema::Shape> = now.iter().collect();
    schema.compare(&fields, &label_refs, &shapes);
    let schedule = match &cfg.schedule {
        Some(s) => Schedule::parse(s.get_ref())
            .map_err(|m| loaded.invalid(s, format!("syncs.{name}.schedule"), m))?,
        None => Schedule::Realtime,
    };
    Ok(Sync {
        spec: SyncSpec {
            name: name.to_owned(),
            origin: format!("duplex:{name}"),
            left_name: sides[0].0.clone(),
            right_name: sides[1].0.clone(),
            more_names: sides[2..].iter().map(|(c, _, _)| c.clone()).collect(),
            fields,
            match_key: cfg.match_key.as_ref().map(|m| MatchKey {
                field: m.field.get_ref().clone(),
                ignore_case: m.ignore_case,
            }),
            policy,
            deletes: DeletePolicy::from(cfg.deletes),
            scope,
            stopped: schema.stopped.clone(),
        },
        schema,
        schema_kept,
        schedule,
        batch: cfg.batch.max(1),
        max_transaction: cfg.max_transaction.max(1),
        sides: sides.into_iter().map(|(c, s, _)| (c, s)).collect(),
    })
}

/// A sync's filters, parsed against its mapped fields and their types.
fn scope(
    loaded: &Loaded,
    name: &str,
    cfg: Option<&crate::config::FilterConfig>,
    fields: &[FieldSpec],
) -> Result<crate::engine::Scope, ConfigError> {
    let Some(cfg) = cfg else {
        return Ok(crate::engine::Scope::default());
    };
    let parse = |side: crate::engine::Side, text: Option<&toml::Spanned<String>>| {
        let Some(text) = text.filter(|t| !t.get_ref().trim().is_empty()) else {
            return Ok(None);
        };
        // The side's own names first, then the common names; either way the side's field,
        // for a side's filter reads its records as the side holds them.
        let own = |f: &FieldSpec| (f.side_name(side).to_owned(), f.side_type(side));
        let field = |n: &str| {
            fields
                .iter()
                .find(|f| own(f).0 == n)
                .or_else(|| fields.iter().find(|f| f.name == n))
                .map(own)
                .ok_or_else(|| {
                    let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                    format!(
                        "{n} is not one of the sync's mapped fields ({}); a filter sees only those",
                        names.join(", ")
                    )
                })
        };
        crate::engine::Filter::parse(text.get_ref(), &field)
            .map(Some)
            .map_err(|why| {
                let key = crate::config::side_key(side);
                loaded.invalid(text, format!("syncs.{name}.filter.{key}"), why)
            })
    };
    Ok(crate::engine::Scope {
        left: parse(crate::engine::Side::LEFT, cfg.left.as_ref())?,
        right: parse(crate::engine::Side::RIGHT, cfg.right.as_ref())?,
        more: cfg
            .also
            .iter()
            .enumerate()
            .map(|(i, text)| parse(crate::engine::Side::nth(i + 2), Some(text)))
            .collect::<Result<_, _>>()?,
        leaving: cfg.leaving.into(),
    })
}

fn toml_value(v: &toml::Value) -> Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) => Value::Text(s.clone()),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(f) => Value::Float(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        other => return Err(format!("{other} cannot be a field value")),
    })
}
