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
use crate::driver::{CycleError, CycleReport, PluginSide, Rules, SyncRunner};
use crate::engine::{
    convert, DeletePolicy, FieldSpec, FieldType, MatchKey, Policy, SyncSpec, Value,
};
use crate::ops::{lock, Command, Controls, InstallRequest, Running, SyncControl};
use crate::plugin::{
    CallError, CompileCache, ConnectorPlugin, HostOptions, LoadError, PluginHost, Stream,
};
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
    pub schedule: Schedule,
    pub batch: u32,
    pub left: (String, String),
    pub right: (String, String),
}

impl Sync {
    /// One line saying what the sync joins, as `check` prints it.
    pub fn describe(&self) -> String {
        format!(
            "sync {}: {}.{} <-> {}.{}, {} fields mapped",
            self.spec.name,
            self.left.0,
            self.left.1,
            self.right.0,
            self.right.1,
            self.spec.fields.len()
        )
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
    pub fn runner(&self, sync: &Sync) -> SyncRunner<PluginSide, PluginSide> {
        Current::new(self, sync).runner()
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
                let waiting = report.more && report.read == [0, 0] && report.writes == 0;
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
    /// Each sync waits on its own: an idle realtime sync waiting for an announcement (up to
    /// [`Schedule::REALTIME_MAX`]) or a sync between scheduled runs holds up no other.
    pub async fn run(
        &self,
        state: &State,
        stop: impl std::future::Future<Output = ()>,
        progress: impl FnMut(&str, &CycleReport),
    ) -> Result<(), AppError> {
        let names: Vec<String> = self.syncs.iter().map(|s| s.spec.name.clone()).collect();
        let (_running, controls) = Running::new(&names, state, now_micros())?;
        self.run_controlled(state, stop, progress, controls).await
    }

    /// [`App::run`], with each sync's loop taking commands from the operations layer
    /// ([`crate::ops`]) between its cycles and reporting what it does.
    pub async fn run_controlled(
        &self,
        state: &State,
        stop: impl std::future::Future<Output = ()>,
        progress: impl FnMut(&str, &CycleReport),
        controls: Controls,
    ) -> Result<(), AppError> {
        let Controls {
            syncs: mut controls,
            installs,
            senders,
        } = controls;
        if self.syncs.is_empty() {
            return Ok(());
        }
        // The syncs take turns on this task (a cycle's own waits let the others run), so the
        // callback is borrowed between awaits only.
        let progress = std::cell::RefCell::new(progress);
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        let mut loops = Vec::new();
        for sync in &self.syncs {
            let control = controls.remove(&sync.spec.name).ok_or_else(|| {
                AppError::Host(format!("no controls for sync {}", sync.spec.name))
            })?;
            loops.push(self.run_sync(sync, state, &progress, stopped.clone(), control));
        }
        let loops = futures_util::future::join_all(loops);
        // Ends with the loops; the installer alone never ends.
        let syncs = async {
            tokio::select! {
                _ = loops => {}
                _ = self.installer(state, installs, senders) => {}
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

    /// Checks, stores and puts in use the plugins the operations layer is given, one at a time,
    /// and hands each to the loops of the syncs that use it. Never ends.
    async fn installer(
        &self,
        state: &State,
        mut requests: tokio::sync::mpsc::UnboundedReceiver<InstallRequest>,
        senders: BTreeMap<String, tokio::sync::mpsc::UnboundedSender<Command>>,
    ) {
        // The connections as the syncs run them, uploads included: a connector is checked
        // with these, and a sync over two uploaded connectors keeps both.
        let mut connections = self.connections.clone();
        while let Some(r) = requests.recv().await {
            let installed = self
                .install(state, &r.slot, r.what, &r.by, &mut connections)
                .await;
            if let Ok(i) = &installed {
                for sync in &i.syncs {
                    if let Some(tx) = senders.get(sync) {
                        let _ = tx.send(Command::Swap(i.swap.clone()));
                    }
                }
            }
            let _ = r.reply.send(installed);
        }
        std::future::pending::<()>().await
    }

    /// Applies a command from the operations layer, between two cycles of the sync. True when
    /// the sync now runs with another plugin (its runner must be made again).
    async fn apply(
        &self,
        current: &mut Current,
        command: Command,
        state: &State,
        live: &std::sync::Mutex<crate::ops::Live>,
    ) -> bool {
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
                let planned = current.runner().dry_run(state, now_micros()).await;
                let _ = reply.send(planned.map_err(|e| e.to_string()));
            }
            Command::Swap(p) => {
                current.swap(&p);
                tracing::info!(sync = %current.sync.spec.name, plugin = ?p, "running with a new plugin from this cycle on");
                return true;
            }
        }
        false
    }

    /// One sync's loop for [`App::run`], until `stopped` turns true. Only its waits are cut
    /// short; a cycle, once begun, finishes. Commands are applied between cycles only.
    async fn run_sync(
        &self,
        sync: &Sync,
        state: &State,
        progress: &std::cell::RefCell<impl FnMut(&str, &CycleReport)>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
        mut control: SyncControl,
    ) {
        let name = &sync.spec.name;
        let mut current = Current::new(self, sync);
        let mut runner = current.runner();
        // A plugin swapped in takes effect here, at the next cycle boundary: the runner (and
        // what it read ahead, which is read again from the committed cursors) is made anew.
        let mut swapped = false;
        let mut idle_streak = 0u32;
        // Closed once the operations layer is gone: then only the stop is awaited.
        let mut open = true;
        while !*stopped.borrow() {
            while let Ok(c) = control.commands.try_recv() {
                swapped |= self.apply(&mut current, c, state, &control.live).await;
            }
            if std::mem::take(&mut swapped) {
                runner = current.runner();
            }
            if lock(&control.live).paused {
                tokio::select! {
                    c = control.commands.recv(), if open => match c {
                        Some(c) => { swapped |= self.apply(&mut current, c, state, &control.live).await; }
                        None => open = false,
                    },
                    _ = stopped.wait_for(|s| *s) => return,
                }
                continue;
            }
            lock(&control.live).status.cycling = true;
            let started = std::time::Instant::now();
            let report = runner.cycle(state, now_micros()).await;
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
                    (progress.borrow_mut())(name, &report);
                    let idle = report.idle();
                    idle_streak = if idle {
                        idle_streak.saturating_add(1)
                    } else {
                        0
                    };
                    let wait = sync.schedule.wait(chrono::Utc::now(), idle, idle_streak);
                    // Realtime and idle: wait for an announcement where a side can make one
                    // (PostgreSQL NOTIFY), else poll with the adaptive backoff.
                    if idle && matches!(sync.schedule, Schedule::Realtime) {
                        let announced = tokio::select! {
                            w = runner.watch(Schedule::REALTIME_MAX) => w,
                            c = control.commands.recv(), if open => {
                                match c {
                                    Some(c) => swapped |= self.apply(&mut current, c, state, &control.live).await,
                                    None => open = false,
                                }
                                Some(true)
                            }
                            _ = stopped.wait_for(|s| *s) => return,
                        };
                        match announced {
                            Some(_) => Duration::ZERO,
                            None => wait,
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
                        Some(c) => { swapped |= self.apply(&mut current, c, state, &control.live).await; }
                        None => open = false,
                    },
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// What one sync's loop runs with: the app's plugins, until a swap replaces one.
struct Current {
    sync: Sync,
    rules: Rules,
    connections: BTreeMap<String, (Arc<ConnectorPlugin>, String)>,
}

impl Current {
    fn new(app: &App, sync: &Sync) -> Current {
        let connections = [&sync.left.0, &sync.right.0]
            .into_iter()
            .map(|c| {
                let conn = &app.connections[c];
                (c.clone(), (conn.plugin.clone(), conn.config.clone()))
            })
            .collect();
        Current {
            sync: sync.clone(),
            rules: app.rules.clone(),
            connections,
        }
    }

    fn runner(&self) -> SyncRunner<PluginSide, PluginSide> {
        let side = |(conn, stream): &(String, String)| {
            let (plugin, config) = &self.connections[conn];
            PluginSide::new(plugin.clone(), config.clone(), stream.clone())
        };
        SyncRunner::new(
            self.sync.spec.clone(),
            side(&self.sync.left),
            side(&self.sync.right),
            self.sync.batch,
            self.rules.clone(),
        )
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

/// Checks one sync's mapping against the discovered streams and builds its spec.
fn build_sync(
    loaded: &Loaded,
    name: &str,
    connections: &BTreeMap<String, Connection>,
) -> Result<Sync, AppError> {
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
    let (lc, ls, lstream) = stream("left", &cfg.left)?;
    let (rc, rs, rstream) = stream("right", &cfg.right)?;
    let mut fields = Vec::new();
    for (i, f) in cfg.fields.iter().enumerate() {
        let lookup = |side: &str,
                      at: &toml::Spanned<String>,
                      s: &Stream,
                      conn: &str|
         -> Result<crate::plugin::Field, ConfigError> {
            s.fields
                .iter()
                .find(|x| x.name == *at.get_ref())
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<&str> = s.fields.iter().map(|x| x.name.as_str()).collect();
                    loaded.invalid(
                        at,
                        format!("syncs.{name}.fields[{i}].{side}"),
                        format!(
                            "stream {} of connection {conn} has no field {} (it has: {})",
                            s.name,
                            at.get_ref(),
                            names.join(", ")
                        ),
                    )
                })
        };
        let lf = lookup("left", &f.left, &lstream, &lc)?;
        let rf = lookup("right", &f.right, &rstream, &rc)?;
        // A field the connector cannot carry is refused here, before anything runs: never a
        // first failure at run time.
        for (side, field, at, s, conn) in [
            ("left", &lf, &f.left, &lstream, &lc),
            ("right", &rf, &f.right, &rstream, &rc),
        ] {
            if let Some(why) = &field.unsupported {
                return Err(loaded
                    .invalid(
                        at,
                        format!("syncs.{name}.fields[{i}].{side}"),
                        format!(
                            "field {} of stream {} (connection {conn}) cannot be synced: {why}",
                            field.name, s.name
                        ),
                    )
                    .into());
            }
        }
        let direction: crate::engine::Direction = f.direction.into();
        for (side, field, at) in [
            (crate::engine::Side::Left, &lf, &f.left),
            (crate::engine::Side::Right, &rf, &f.right),
        ] {
            if direction.writes_to(side) && !field.writable {
                return Err(loaded
                    .invalid(at, format!("syncs.{name}.fields[{i}].{side}"), format!("field {} cannot be written; make the field flow away from it with direction", field.name))
                    .into());
            }
        }
        let (lt, rt): (FieldType, FieldType) = (lf.type_.into(), rf.type_.into());
        let mut values = Vec::new();
        if let Some(table) = &f.values {
            for (k, v) in table {
                let left = convert(Value::Text(k.clone()), lt).map_err(|m| {
                    loaded.invalid(
                        &f.left,
                        format!("syncs.{name}.fields[{i}].values"),
                        format!("{k}: {m}"),
                    )
                })?;
                let right = toml_value(v).and_then(|v| convert(v, rt)).map_err(|m| {
                    loaded.invalid(
                        &f.right,
                        format!("syncs.{name}.fields[{i}].values"),
                        format!("{k}: {m}"),
                    )
                })?;
                // An enum on either side: the mapped values must be among its values.
                for (value, field, at) in [(&left, &lf, &f.left), (&right, &rf, &f.right)] {
                    let text = match value {
                        Value::Text(t) => t.clone(),
                        other => other.display(),
                    };
                    if !field.allowed.is_empty() && !field.allowed.contains(&text) {
                        return Err(loaded
                            .invalid(
                                at,
                                format!("syncs.{name}.fields[{i}].values"),
                                format!(
                                    "{text} is not a value of field {} (it takes: {})",
                                    field.name,
                                    field.allowed.join(", ")
                                ),
                            )
                            .into());
                    }
                }
                values.push((left, right));
            }
        }
        fields.push(FieldSpec {
            name: common_name(f).to_owned(),
            left: lf.name,
            right: rf.name,
            left_type: lt,
            right_type: rt,
            direction,
            values,
            policy: f
                .conflict
                .as_ref()
                .map(|p| loaded.policy(p, &format!("syncs.{name}.fields[{i}].conflict")))
                .transpose()?,
        });
    }
    let policy = match &cfg.conflict {
        Some(p) => loaded.policy(p, &format!("syncs.{name}.conflict"))?,
        None => Policy::LastWriterWins,
    };
    let schedule = match &cfg.schedule {
        Some(s) => Schedule::parse(s.get_ref())
            .map_err(|m| loaded.invalid(s, format!("syncs.{name}.schedule"), m))?,
        None => Schedule::Realtime,
    };
    Ok(Sync {
        spec: SyncSpec {
            name: name.to_owned(),
            origin: format!("duplex:{name}"),
            left_name: lc.clone(),
            right_name: rc.clone(),
            fields,
            match_key: cfg.match_key.as_ref().map(|m| MatchKey {
                field: m.field.get_ref().clone(),
                ignore_case: m.ignore_case,
            }),
            policy,
            deletes: DeletePolicy::from(cfg.deletes),
        },
        schedule,
        batch: cfg.batch.max(1),
        left: (lc, ls),
        right: (rc, rs),
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
