//! The `duplex` command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use duplex::api::client::Client;
use duplex::api::{percent_encode, Listeners, TcpSpec};
use duplex::app::{App, Install};
use duplex::driver::{CycleReport, DryRun};
use duplex::engine::Side;
use duplex::ops::{Ops, PluginChange, PluginView, Running, SyncStatus};
use duplex::plugin::{CompileCache, HostOptions, PluginHost};
use duplex::state::{
    Activity, ActivityQuery, AuditEntry, Choice, Conflict, ConflictQuery, Page, Rejected, Role,
    SlotVersions, State, Token, PAGE_MAX,
};

#[derive(Parser)]
#[command(
    name = "duplex",
    version,
    about = "Two-way sync between systems, with WebAssembly connectors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the syncs of a config until stopped (Ctrl-C), or with --once until caught up.
    Run {
        config: PathBuf,
        /// Stop when both sides of every sync are caught up.
        #[arg(long)]
        once: bool,
        /// A pilot run: read everything waiting on both sides, and print what each sync would
        /// match, create, update, delete, reject and hold, changing nothing anywhere (no write,
        /// no cursor, no capture installed). Through the running Duplex, when one is.
        #[arg(long, conflicts_with = "once")]
        dry_run: bool,
        /// With --dry-run: write the full list of planned writes, rejections and conflicts
        /// to this file (JSON), for a person to review.
        #[arg(long, requires = "dry_run")]
        plan: Option<PathBuf>,
        /// A pilot: take at most N changes from each side of each sync, one cycle, then stop
        /// (with --dry-run: plan only those). A later run carries on from there.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Run the syncs as `run` does and answer the HTTP API (`/api/v1`), `/metrics`, `/healthz`
    /// and `/readyz`. Plain HTTP only on loopback; elsewhere TLS (serve.tls_cert, serve.tls_key).
    Serve {
        config: PathBuf,
        /// host:port; default serve.listen in the config, else 127.0.0.1:7300.
        #[arg(long)]
        listen: Option<String>,
        /// Serve plain HTTP on an address other than loopback (a proxy in front does TLS).
        #[arg(long)]
        insecure_http: bool,
    },
    /// Check a config: its syntax, plugins, connections and every mapping, and each sync's
    /// schema drift against the schema it last ran with. Changes nothing, unless --accept.
    Check {
        config: PathBuf,
        /// Accept the sides' schemas as they are now: fields stopped by schema drift sync
        /// again (a column that came back counts with the values it holds now). Refused while
        /// a mapped column is missing, and while a Duplex runs the syncs.
        #[arg(long)]
        accept: bool,
    },
    /// Show each sync: links, open conflicts, rejected records, the last cycle.
    Status { config: PathBuf },
    /// Remove what change capture installed (triggers, change log) from the connections'
    /// databases. Syncing again installs it afresh and starts each stream from the beginning.
    Uninstall {
        config: PathBuf,
        /// Only this connection.
        #[arg(long)]
        connection: Option<String>,
    },
    /// Show what Duplex wrote and what it decided, oldest first: every write, and every
    /// field changed on both sides that last-writer-wins settled (both values, both times).
    Activity {
        config: PathBuf,
        /// Only this sync.
        #[arg(long)]
        sync: Option<String>,
        /// Only last-writer-wins decisions.
        #[arg(long)]
        decisions: bool,
        /// Show the newest this many entries.
        #[arg(long, default_value_t = 50)]
        last: usize,
    },
    /// List or resolve conflicts left to a person.
    Conflicts {
        #[command(subcommand)]
        command: ConflictsCommand,
    },
    /// Pause a sync (kept across restarts), resume it, or start a cycle now.
    Sync {
        #[command(subcommand)]
        command: SyncCommand,
    },
    /// List records that could not be applied, or ask for one to be tried again.
    Rejected {
        #[command(subcommand)]
        command: RejectedCommand,
    },
    /// API tokens: create (the secret is shown once), list, revoke.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Show the audit log: every change made through the API or the CLI, newest first.
    Audit {
        config: PathBuf,
        #[arg(long, default_value_t = 50)]
        last: usize,
    },
    /// Create two demo databases and a config, and walk through a two-way sync.
    Demo {
        /// Where to leave the demo's files.
        #[arg(long, default_value = "duplex-demo")]
        dir: PathBuf,
    },
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum ConflictsCommand {
    /// List open conflicts, newest first (with --all, also settled ones).
    List {
        config: PathBuf,
        #[arg(long)]
        all: bool,
        /// Only this sync.
        #[arg(long)]
        sync: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this conflict number (the `next` a longer listing printed).
        #[arg(long)]
        before: Option<String>,
    },
    /// Settle a conflict: take one side's value, or give one.
    Resolve(ResolveArgs),
}

#[derive(Args)]
struct ResolveArgs {
    config: PathBuf,
    /// The conflict's number, from `conflicts list`.
    id: u64,
    /// Keep this side's value (`left`, `right`, or in a sync of more sides `third`, ...); for
    /// a held delete, the side whose state wins (a deleting side approves the delete).
    #[arg(long, value_parser = ["left", "right", "third", "fourth", "fifth", "sixth", "seventh", "eighth"], conflicts_with = "value")]
    take: Option<String>,
    /// Write this value to every side (JSON: "text", 12, 12.5, true, null).
    #[arg(long)]
    value: Option<String>,
}

#[derive(Subcommand)]
enum SyncCommand {
    /// No cycle starts until resumed; a cycle running finishes.
    Pause {
        config: PathBuf,
        sync: String,
    },
    Resume {
        config: PathBuf,
        sync: String,
    },
    /// Start a cycle now (the syncs must be running).
    Run {
        config: PathBuf,
        sync: String,
    },
}

#[derive(Subcommand)]
enum RejectedCommand {
    List {
        config: PathBuf,
        #[arg(long)]
        sync: Option<String>,
    },
    /// Try a rejected record again at the next cycle.
    Retry {
        config: PathBuf,
        sync: String,
        #[arg(value_parser = ["left", "right"])]
        side: String,
        id: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token; its secret is printed once and only its hash is kept.
    Create {
        config: PathBuf,
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Who or what it is for.
        #[arg(long, default_value = "")]
        name: String,
    },
    List {
        config: PathBuf,
    },
    Revoke {
        config: PathBuf,
        id: String,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Print a component's world, exports, imports and the grants it needs.
    Inspect {
        /// The component file (`.wasm`).
        file: PathBuf,
    },
    /// Check a component for a slot and put it in use as the slot's next version (a running
    /// instance swaps it in at the next cycle of each sync using it).
    Upload {
        config: PathBuf,
        /// `rules.NAME` or `connections.NAME`.
        slot: String,
        file: PathBuf,
    },
    /// A slot's uploaded versions and the one in use.
    Versions { config: PathBuf, slot: String },
    /// Put an earlier version back in use: the one before the version in use (before the
    /// first upload, the config's own file), or `--to N`.
    Rollback {
        config: PathBuf,
        slot: String,
        #[arg(long)]
        to: Option<u32>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DUPLEX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints progress: one updating line on a terminal, plain lines otherwise. Quiet cycles print
/// nothing.
struct Progress {
    terminal: bool,
    totals: std::collections::BTreeMap<String, Catching>,
}

/// A sync's run of cycles with more to read (a first load, a backlog), on a terminal.
#[derive(Default)]
struct Catching {
    /// When the run's first cycle ended, and what had been read by then.
    since: Option<(std::time::Instant, usize)>,
    read: usize,
    written: usize,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            totals: Default::default(),
        }
    }

    fn report(&mut self, sync: &str, r: &CycleReport) {
        if r.idle() && r.conflicts == 0 && r.rejected == 0 {
            return;
        }
        let t = self.totals.entry(sync.to_owned()).or_default();
        t.read += r.read.iter().sum::<usize>();
        t.written += r.writes;
        let (since, first) = *t.since.get_or_insert((std::time::Instant::now(), t.read));
        if self.terminal && r.more {
            // The rate counts what was read after the run's first cycle; what is left, what
            // the connectors said of it (a first load's count, where they can tell).
            let seconds = since.elapsed().as_secs_f64();
            let rate = (seconds >= 1.0).then(|| (t.read - first) as f64 / seconds);
            let line = duplex::report::progress_line(sync, t.read, t.written, rate, r.remaining);
            // The line is written over the last, which may have been longer: clear its rest.
            eprint!("\r{line} ...\x1b[K");
        } else {
            if self.terminal {
                eprint!("\r");
            }
            eprintln!("{sync}: {}", r.summary());
        }
        if !r.more {
            *t = Catching::default();
        }
    }
}

/// Where the CLI's operations go: through the instance running on the state, when one is
/// (never fighting it for the state file), else straight to the state.
enum Operator {
    Offline(Ops),
    Instance(Client),
}

impl Operator {
    async fn open(config: &Path) -> anyhow::Result<Operator> {
        Self::open_with(config, false).await
    }

    /// As [`Operator::open`], making the state file if there is none yet (a token can be made
    /// before the first run).
    async fn open_or_create(config: &Path) -> anyhow::Result<Operator> {
        Self::open_with(config, true).await
    }

    async fn open_with(config: &Path, create: bool) -> anyhow::Result<Operator> {
        let loaded = duplex::config::Loaded::read(config)?;
        let path = loaded.state_path();
        if let Some(client) = Client::find(&path).await {
            return Ok(Operator::Instance(client));
        }
        if !create && !path.exists() {
            bail!(
                "no state file at {} yet: run `duplex run {}` first",
                path.display(),
                config.display()
            );
        }
        Ok(Operator::Offline(Ops::offline(
            &loaded,
            Arc::new(State::open(&path)?),
        )))
    }

    /// Writes a change made straight to the state to the audit log (the instance logs its
    /// own).
    fn audit(&self, action: &str, outcome: &anyhow::Result<()>) {
        if let Operator::Offline(ops) = self {
            let outcome = match outcome {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            ops.record(&local_user(), action, &outcome);
        }
    }
}

fn local_user() -> String {
    format!(
        "local:{}",
        std::env::var("USER").unwrap_or_else(|_| "cli".into())
    )
}

/// `key=value` pairs as a query string, leaving out the absent ones.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", percent_encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Runs the syncs with the API answering: on the local socket always, on TCP for `serve`.
async fn run_serving(mut app: App, tcp: Option<TcpSpec>) -> anyhow::Result<Arc<Ops>> {
    let state = Arc::new(app.open_state()?);
    app.use_uploads(&state).await?;
    let listeners = Listeners::bind(state.path(), tcp).await?;
    let (running, controls) =
        Running::new(&app.loaded, &state, chrono::Utc::now().timestamp_micros())?;
    let plugins = PluginView::of(&app).await;
    let ops = Arc::new(Ops::running(&app.loaded, state.clone(), running, plugins));
    if let Some(addr) = listeners.tcp_addr() {
        let scheme = if listeners.tls() { "https" } else { "http" };
        eprintln!("duplex: API on {scheme}://{addr}/api/v1 (Ctrl-C to stop)");
    }
    eprintln!(
        "duplex: running {} sync(s) from {}; Ctrl-C to stop",
        app.syncs.len(),
        app.loaded.path.display()
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = {
        let mut stopped = stopped.clone();
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = shutdown() => { let _ = stop.send(true); }
                _ = stopped.wait_for(|s| *s) => {}
            }
        }
    };
    let syncs = {
        let mut stopped = stopped.clone();
        let mut progress = Progress::new();
        let app = &app;
        let state = &state;
        async move {
            let result = app
                .run_controlled(
                    state,
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    },
                    |s, r| progress.report(s, r),
                    controls,
                )
                .await;
            let _ = stop.send(true);
            result
        }
    };
    let server = duplex::api::serve(ops.clone(), listeners, stopped);
    let ((), result, ()) = tokio::join!(signal, syncs, server);
    result?;
    eprintln!("duplex: stopped cleanly");
    Ok(ops)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            dry_run: true,
            plan,
            limit,
            ..
        } => {
            let loaded = duplex::config::Loaded::read(&config)?;
            let mut plans: Vec<(String, DryRun)> = Vec::new();
            match Client::find(&loaded.state_path()).await {
                Some(_) if limit.is_some() => bail!(
                    "a dry run with --limit plans from the state itself; stop the running Duplex first, or leave --limit out"
                ),
                Some(c) => {
                    for s in Ops::sync_infos(&loaded) {
                        let path = format!("/api/v1/syncs/{}/dry-run", percent_encode(&s.name));
                        plans.push((s.name, c.call("POST", &path, None).await?));
                    }
                }
                None => {
                let mut app = App::load(&config).await?;
                let state = app.open_state()?;
                app.use_uploads(&state).await?;
                for sync in &app.syncs {
                    let now = chrono::Utc::now().timestamp_micros();
                    let mut runner = app.dry_runner(sync);
                    if let Some(n) = limit {
                        runner = runner.limited(n);
                    }
                    let plan = runner.dry_run(&state, now).await?;
                    plans.push((sync.spec.name.clone(), plan));
                }
                }
            }
            for (name, p) in &plans {
                print_dry_run(name, p, plan.is_none());
            }
            if let Some(path) = &plan {
                let full: std::collections::BTreeMap<&str, &DryRun> =
                    plans.iter().map(|(n, p)| (n.as_str(), p)).collect();
                std::fs::write(path, serde_json::to_string_pretty(&full)? + "\n")
                    .with_context(|| format!("cannot write the plan to {}", path.display()))?;
                println!("the full plan is in {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            once,
            limit: Some(n),
            ..
        } => {
            let loaded = duplex::config::Loaded::read(&config)?;
            if Client::find(&loaded.state_path()).await.is_some() {
                bail!("a pilot (--limit) runs its own cycle: stop the running Duplex first");
            }
            let mut app = App::load(&config).await?;
            let state = app.open_state()?;
            app.use_uploads(&state).await?;
            let _ = once; // a pilot is one cycle whatever --once says
            let paused = state.paused()?;
            let mut progress = Progress::new();
            for sync in &app.syncs {
                if paused.iter().any(|(name, _)| *name == sync.spec.name) {
                    eprintln!("{}: paused; not run", sync.spec.name);
                    continue;
                }
                let report = app
                    .runner(sync)
                    .limited(n)
                    .cycle(&state, chrono::Utc::now().timestamp_micros())
                    .await?;
                progress.report(&sync.spec.name, &report);
            }
            print_status(&Ops::offline(&app.loaded, Arc::new(state)).syncs()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config, once, .. } => {
            let mut app = App::load(&config).await?;
            if once {
                let state = app.open_state()?;
                app.use_uploads(&state).await?;
                let mut progress = Progress::new();
                app.run_once(&state, |s, r| progress.report(s, r)).await?;
                print_status(&Ops::offline(&app.loaded, Arc::new(state)).syncs()?);
            } else {
                let ops = run_serving(app, None).await?;
                print_status(&ops.syncs()?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            config,
            listen,
            insecure_http,
        } => {
            let app = App::load(&config).await?;
            let serve = &app.loaded.config.serve;
            let text = listen
                .or_else(|| serve.listen.as_ref().map(|l| l.get_ref().clone()))
                .unwrap_or_else(|| "127.0.0.1:7300".into());
            let addr = text.parse().map_err(|e| {
                anyhow::anyhow!("serve.listen (or --listen) {text:?}: not host:port ({e})")
            })?;
            let tls = match (&serve.tls_cert, &serve.tls_key) {
                (Some(c), Some(k)) => Some((app.loaded.resolve(c), app.loaded.resolve(k))),
                (None, None) => None,
                _ => bail!("serve.tls_cert and serve.tls_key go together: name both or neither"),
            };
            let spec = TcpSpec {
                addr,
                tls,
                insecure_http: insecure_http || serve.insecure_http,
            };
            run_serving(app, Some(spec)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, accept } => {
            let app = App::load(&config).await?;
            if accept && Client::find(&app.loaded.state_path()).await.is_some() {
                bail!("a duplex is running these syncs: stop it first, accept, and start it again (a running sync keeps the schema it started with)");
            }
            for (name, c) in &app.connections {
                let info = c.plugin.info();
                let streams: Vec<&str> = c.streams.iter().map(|s| s.name.as_str()).collect();
                println!(
                    "connection {name}: {} {} reachable; streams: {}",
                    info.name,
                    info.version,
                    streams.join(", ")
                );
            }
            for s in &app.syncs {
                println!("{}", s.describe());
                if !s.schema_kept {
                    println!("  schema: not run yet; its first run keeps the schema it finds");
                }
                for line in s.schema.report() {
                    println!("  schema: {line}");
                }
                for line in s.rule_warnings(&app.rules) {
                    println!("  warning: {line}");
                }
            }
            if accept {
                accept_schemas(&app)?;
            }
            println!("{}: ok", config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config } => {
            let syncs = match Operator::open(&config).await? {
                Operator::Offline(ops) => ops.syncs()?,
                Operator::Instance(c) => c.call("GET", "/api/v1/syncs", None).await?,
            };
            print_status(&syncs);
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall { config, connection } => {
            let app = App::load(&config).await?;
            if Client::find(&app.loaded.state_path()).await.is_some() {
                bail!("a duplex is running these syncs: stop it first (removing change capture under a running sync would lose the changes made meanwhile)");
            }
            let mut done = 0;
            for (name, c) in &app.connections {
                if connection.as_ref().is_some_and(|only| only != name) {
                    continue;
                }
                let mut session = c.plugin.session().await?;
                session.remove_capture(&c.config, None).await?;
                println!("connection {name}: change capture removed");
                done += 1;
            }
            if done == 0 {
                bail!("no connection named {}", connection.unwrap_or_default());
            }
            // The removed change logs' positions mean nothing now: the syncs reading them start
            // again from a snapshot (their links are kept, so nothing is created twice).
            if app.loaded.state_path().exists() {
                let state = app.open_state()?;
                for s in &app.syncs {
                    for (side, (conn, _)) in s.spec.all_sides().zip(&s.sides) {
                        if connection.as_ref().is_none_or(|only| only == conn) {
                            state.reset_cursor(&s.spec.name, side)?;
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Activity {
            config,
            sync,
            decisions,
            last,
        } => {
            let q = ActivityQuery {
                sync,
                decisions,
                limit: Some(last.min(duplex::state::PAGE_MAX)),
                ..ActivityQuery::default()
            };
            let page: Page<Activity> = match Operator::open(&config).await? {
                Operator::Offline(ops) => ops.activity(&q)?,
                Operator::Instance(c) => {
                    let path = format!(
                        "/api/v1/activity{}",
                        query(&[
                            ("sync", q.sync.clone()),
                            ("decisions", decisions.then(|| "true".into())),
                            ("limit", q.limit.map(|l| l.to_string())),
                        ])
                    );
                    c.call("GET", &path, None).await?
                }
            };
            if page.items.is_empty() {
                println!(
                    "no {}yet",
                    if decisions {
                        "last-writer-wins decisions "
                    } else {
                        "activity "
                    }
                );
            }
            for a in page.items.iter().rev() {
                println!("{}", duplex::report::activity_line(a));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Conflicts {
            command:
                ConflictsCommand::List {
                    config,
                    all,
                    sync,
                    limit,
                    before,
                },
        } => {
            let q = ConflictQuery {
                sync,
                all,
                before,
                limit: Some(limit),
            };
            let page: Page<Conflict> = match Operator::open(&config).await? {
                Operator::Offline(ops) => ops.conflicts(&q)?,
                Operator::Instance(c) => {
                    let path = format!(
                        "/api/v1/conflicts{}",
                        query(&[
                            ("sync", q.sync.clone()),
                            ("all", all.then(|| "true".into())),
                            ("before", q.before.clone()),
                            ("limit", Some(limit.to_string())),
                        ])
                    );
                    c.call("GET", &path, None).await?
                }
            };
            if page.items.is_empty() {
                println!("no {}conflicts", if all { "" } else { "open " });
            }
            for c in &page.items {
                println!("{}", duplex::report::conflict_line(c));
            }
            if let Some(next) = page.next {
                println!("(more: --before {next})");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Conflicts {
            command: ConflictsCommand::Resolve(args),
        } => {
            let op = Operator::open(&args.config).await?;
            let json = match (args.take.as_deref(), &args.value) {
                (Some(side), None) => serde_json::json!({ "take": side }),
                (None, Some(v)) => serde_json::json!({
                    "value": serde_json::from_str::<serde_json::Value>(v)
                        .unwrap_or(serde_json::Value::String(v.clone()))
                }),
                _ => bail!("say how to resolve it: --take left, --take right (third, ... in a sync of more sides), or --value VALUE"),
            };
            let action = format!("conflicts resolve {}", args.id);
            let resolved: anyhow::Result<Conflict> = match &op {
                Operator::Offline(ops) => {
                    let choice = match (args.take.as_deref(), json.get("value")) {
                        (Some(side), _) => Choice::taking(Side::named(side).ok_or_else(|| {
                            anyhow::anyhow!("--take {side}: name a side: left, right, third, ...")
                        })?),
                        (None, value) => {
                            let c = ops.conflict(args.id)?;
                            Choice::Value(duplex::ops::value_from_json(
                                value.cloned().unwrap_or_default(),
                                c.left.as_ref().or(c.right.as_ref()),
                            )?)
                        }
                    };
                    ops.resolve(args.id, choice, &local_user())
                        .await
                        .map_err(Into::into)
                }
                Operator::Instance(c) => {
                    let path = format!("/api/v1/conflicts/{}/resolve", args.id);
                    c.call("POST", &path, Some(json)).await
                }
            };
            op.audit(
                &action,
                &resolved
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| anyhow::anyhow!("{e:#}")),
            );
            let c = resolved?;
            println!("{}", duplex::report::conflict_line(&c));
            match op {
                Operator::Instance(_) => println!("the running duplex applies it now"),
                Operator::Offline(_) => println!(
                    "it is applied at the next cycle (`duplex run {} --once`)",
                    args.config.display()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync { command } => {
            let (config, sync, verb) = match &command {
                SyncCommand::Pause { config, sync } => (config, sync, "pause"),
                SyncCommand::Resume { config, sync } => (config, sync, "resume"),
                SyncCommand::Run { config, sync } => (config, sync, "run"),
            };
            let op = Operator::open(config).await?;
            let done: anyhow::Result<()> = match &op {
                Operator::Offline(ops) => match verb {
                    "pause" => ops.pause(sync, &local_user()),
                    "resume" => ops.resume(sync),
                    _ => ops.run_now(sync),
                }
                .map_err(Into::into),
                Operator::Instance(c) => {
                    let path = format!("/api/v1/syncs/{}/{verb}", percent_encode(sync));
                    c.call::<serde_json::Value>("POST", &path, None)
                        .await
                        .map(|_| ())
                }
            };
            op.audit(&format!("sync {verb} {sync}"), &done);
            done?;
            println!("sync {sync}: {verb} done");
            Ok(ExitCode::SUCCESS)
        }
        Command::Rejected {
            command: RejectedCommand::List { config, sync },
        } => {
            let page: Page<(String, Rejected)> = match Operator::open(&config).await? {
                Operator::Offline(ops) => ops.rejected(sync.as_deref(), None, Some(PAGE_MAX))?,
                Operator::Instance(c) => {
                    let path = format!(
                        "/api/v1/rejected{}",
                        query(&[("sync", sync), ("limit", Some(PAGE_MAX.to_string()))])
                    );
                    c.call("GET", &path, None).await?
                }
            };
            if page.items.is_empty() {
                println!("no rejected records");
            }
            for (sync, r) in &page.items {
                println!(
                    "[{sync}] {} {}: {} (attempts {})",
                    r.side, r.id, r.reason, r.attempts
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rejected {
            command:
                RejectedCommand::Retry {
                    config,
                    sync,
                    side,
                    id,
                },
        } => {
            let op = Operator::open(&config).await?;
            let side_value = if side == "left" {
                Side::LEFT
            } else {
                Side::RIGHT
            };
            let done: anyhow::Result<()> = match &op {
                Operator::Offline(ops) => ops.retry(&sync, side_value, &id).map_err(Into::into),
                Operator::Instance(c) => c
                    .call::<serde_json::Value>(
                        "POST",
                        "/api/v1/rejected/retry",
                        Some(serde_json::json!({ "sync": sync, "side": side, "id": id })),
                    )
                    .await
                    .map(|_| ()),
            };
            op.audit(&format!("rejected retry {sync} {side} {id}"), &done);
            done?;
            println!("{sync}: {side} record {id} is tried again at the next cycle");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command } => {
            match command {
                TokenCommand::Create { config, role, name } => {
                    let op = Operator::open_or_create(&config).await?;
                    let role: Role = role.parse().map_err(anyhow::Error::msg)?;
                    let made: anyhow::Result<(Token, String)> = match &op {
                        Operator::Offline(ops) => ops.create_token(role, &name).map_err(Into::into),
                        Operator::Instance(c) => c
                            .call::<serde_json::Value>(
                                "POST",
                                "/api/v1/tokens",
                                Some(serde_json::json!({ "role": role, "name": name })),
                            )
                            .await
                            .and_then(|v| {
                                Ok((
                                    serde_json::from_value(v["token"].clone())?,
                                    v["secret"].as_str().unwrap_or_default().to_owned(),
                                ))
                            }),
                    };
                    op.audit(
                        &format!("token create --role {}", role.as_str()),
                        &made
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| anyhow::anyhow!("{e:#}")),
                    );
                    let (token, secret) = made?;
                    eprintln!(
                        "token {} ({}) made; its secret is shown this once:",
                        token.id,
                        token.role.as_str()
                    );
                    println!("{secret}");
                }
                TokenCommand::List { config } => {
                    let tokens: Vec<Token> = match Operator::open(&config).await? {
                        Operator::Offline(ops) => ops.tokens()?,
                        Operator::Instance(c) => c.call("GET", "/api/v1/tokens", None).await?,
                    };
                    for t in tokens {
                        println!(
                            "{} {:<8} {} made {}{}",
                            t.id,
                            t.role.as_str(),
                            t.name,
                            duplex::time::format_sqlite(t.created_at),
                            t.revoked_at
                                .map(|at| format!(", revoked {}", duplex::time::format_sqlite(at)))
                                .unwrap_or_default()
                        );
                    }
                }
                TokenCommand::Revoke { config, id } => {
                    let op = Operator::open(&config).await?;
                    let done: anyhow::Result<()> = match &op {
                        Operator::Offline(ops) => {
                            ops.revoke_token(&id).map(|_| ()).map_err(Into::into)
                        }
                        Operator::Instance(c) => c
                            .call::<serde_json::Value>(
                                "DELETE",
                                &format!("/api/v1/tokens/{}", percent_encode(&id)),
                                None,
                            )
                            .await
                            .map(|_| ()),
                    };
                    op.audit(&format!("token revoke {id}"), &done);
                    done?;
                    println!("token {id} revoked");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { config, last } => {
            let page: Page<AuditEntry> = match Operator::open(&config).await? {
                Operator::Offline(ops) => ops.audit(None, Some(last))?,
                Operator::Instance(c) => {
                    c.call("GET", &format!("/api/v1/audit?limit={last}"), None)
                        .await?
                }
            };
            for e in page.items {
                println!(
                    "{} {} {}: {}",
                    duplex::time::format_sqlite(e.at),
                    e.who,
                    e.action,
                    e.outcome
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { dir } => {
            let mut out = std::io::stdout();
            duplex::demo::run(&dir, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: PluginCommand::Versions { config, slot },
        } => {
            let versions: SlotVersions = match Operator::open(&config).await? {
                Operator::Offline(ops) => ops.plugin_versions(&slot)?,
                Operator::Instance(c) => {
                    let path = format!("/api/v1/plugins/{}/versions", percent_encode(&slot));
                    c.call("GET", &path, None).await?
                }
            };
            print_versions(&versions);
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: command @ (PluginCommand::Upload { .. } | PluginCommand::Rollback { .. }),
        } => {
            let (config, slot) = match &command {
                PluginCommand::Upload { config, slot, .. }
                | PluginCommand::Rollback { config, slot, .. } => (config.clone(), slot.clone()),
                PluginCommand::Inspect { .. } | PluginCommand::Versions { .. } => unreachable!(),
            };
            let (what, action) = match command {
                PluginCommand::Upload { file, .. } => {
                    let bytes = std::fs::read(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    (
                        Install::Upload(bytes),
                        format!("plugin upload {slot} {}", file.display()),
                    )
                }
                PluginCommand::Rollback { to, .. } => (
                    Install::Version(to),
                    format!(
                        "plugin rollback {slot}{}",
                        to.map_or(String::new(), |v| format!(" --to {v}"))
                    ),
                ),
                PluginCommand::Inspect { .. } | PluginCommand::Versions { .. } => unreachable!(),
            };
            let op = Operator::open_or_create(&config).await?;
            let done: anyhow::Result<PluginChange> = match &op {
                Operator::Offline(ops) => install_offline(&config, ops, &slot, what).await,
                Operator::Instance(c) => match what {
                    Install::Upload(bytes) => {
                        let path = format!("/api/v1/plugins/{}", percent_encode(&slot));
                        c.send("POST", &path, Some(("application/wasm", bytes.into())))
                            .await
                    }
                    Install::Version(to) => {
                        let path = format!("/api/v1/plugins/{}/rollback", percent_encode(&slot));
                        let body = to.map(|v| serde_json::json!({ "version": v }));
                        c.call("POST", &path, body).await
                    }
                },
            };
            op.audit(
                &action,
                &done
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| anyhow::anyhow!("{e:#}")),
            );
            let change = done?;
            print_versions(&change.versions);
            if change.syncs.is_empty() {
                println!("no sync uses {slot} yet");
            } else {
                println!("taken at their next cycle by: {}", change.syncs.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: PluginCommand::Inspect { file },
        } => {
            let host = PluginHost::new(HostOptions {
                cache_dir: CompileCache::default_dir(),
                ..HostOptions::default()
            })?;
            let inspection = duplex::inspect::inspect(&host, &file).await?;
            println!("{inspection}");
            Ok(if inspection.problem.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Uploads or rolls back with no instance running: the config's app, checked and stored
/// straight into the state (the next start runs it).
async fn install_offline(
    config: &Path,
    ops: &Ops,
    slot: &str,
    what: Install,
) -> anyhow::Result<PluginChange> {
    let slot_name: duplex::state::Slot = slot.parse().map_err(anyhow::Error::msg)?;
    let what = match what {
        Install::Version(None) => Install::Version(
            ops.plugin_versions(slot)?
                .previous()
                .map_err(anyhow::Error::msg)?,
        ),
        other => other,
    };
    let mut app = App::load(config).await?;
    app.use_uploads(ops.state()).await?;
    let mut connections = app.connections.clone();
    let installed = app
        .install(
            ops.state(),
            &slot_name,
            what,
            &local_user(),
            &mut connections,
        )
        .await?;
    Ok(installed.change())
}

fn print_versions(v: &SlotVersions) {
    let active = match v.active {
        Some(n) => format!("uploaded v{n}"),
        None => "the config's own file".to_owned(),
    };
    println!("{}: in use: {active}", v.slot);
    for p in &v.versions {
        println!(
            "  {} v{} sha256:{} {} bytes {} uploaded {} UTC by {}",
            if Some(p.version) == v.active {
                "*"
            } else {
                " "
            },
            p.version,
            &p.sha256[..12],
            p.size,
            p.world,
            duplex::time::format_sqlite(p.uploaded_at),
            p.by
        );
    }
}

/// `check --accept`: each sync's record takes the sides' schemas as they are now.
fn accept_schemas(app: &App) -> anyhow::Result<()> {
    let dir = duplex::schema::dir(&app.loaded.state_path());
    for s in &app.syncs {
        let mut shapes = Vec::new();
        for (side, (conn, stream)) in s.spec.all_sides().zip(&s.sides) {
            let found = app.connections[conn]
                .streams
                .iter()
                .find(|x| &x.name == stream)
                .map(duplex::schema::shape_of)
                .unwrap_or_default();
            for (i, f) in s.spec.fields.iter().enumerate() {
                let column = f.side_name(side);
                if !found.contains_key(column) {
                    bail!(
                        "syncs.{}.fields[{i}].{}: column {column} is gone from {conn}.{stream}; remove the field from the config or map it to another column, then accept",
                        s.spec.name,
                        duplex::config::side_key(side)
                    );
                }
            }
            shapes.push(found);
        }
        duplex::schema::SyncSchema::accepting(shapes).save(&dir, &s.spec.name)?;
        println!("sync {}: schema accepted", s.spec.name);
    }
    Ok(())
}

fn print_status(syncs: &[SyncStatus]) {
    for s in syncs {
        let name = &s.info.name;
        let sides: Vec<&str> = s.info.streams().collect();
        println!("sync {name}: {}", sides.join(" <-> "));
        if let Some(p) = &s.paused {
            println!(
                "  paused by {} at {} UTC (`duplex sync resume` resumes it)",
                p.by,
                duplex::time::format_sqlite(p.at)
            );
        }
        if s.filtered_links > 0 {
            println!(
                "  links: {} active, {} out of their filter, {} in all",
                s.active_links, s.filtered_links, s.links
            );
        } else {
            println!("  links: {} active, {} in all", s.active_links, s.links);
        }
        println!(
            "  open conflicts: {} (`duplex conflicts list` lists them)",
            s.open_conflicts
        );
        println!(
            "  rejected records: {} (`duplex rejected list`)",
            s.rejected
        );
        println!("  waiting to retry: {}", s.waiting_to_retry);
        for line in &s.schema_drift {
            println!("  schema: {line}");
        }
        let st = &s.stats;
        println!(
            "  last-writer-wins decisions: {} (`duplex activity --decisions` lists them)",
            st.decided
        );
        println!(
            "  totals: {} cycles, {} changes read, {} writes, {} failed writes, {} echoes ignored",
            st.cycles, st.changes_read, st.writes, st.write_failures, st.echoes
        );
        if let Some(last) = &st.last_cycle {
            let at = st
                .last_cycle_at
                .map(duplex::time::format_sqlite)
                .unwrap_or_default();
            println!("  last cycle ({at} UTC): {last}");
        }
        if let Some(live) = &s.live {
            if let Some(left) = live.remaining {
                println!("  catching up: about {left} changes left to read");
            }
            if live.failures > 0 {
                println!(
                    "  failing: {} cycles in a row; the last: {}",
                    live.failures,
                    live.last_error.as_deref().unwrap_or("?")
                );
            }
        }
    }
}

/// Most planned writes listed one by one on the terminal; `--plan FILE` holds them all.
const DRY_RUN_LISTED: usize = 50;

fn print_dry_run(sync: &str, plan: &DryRun, list: bool) {
    let value = |v: &duplex::engine::Value| v.display();
    println!("sync {sync} (dry run: nothing written anywhere, no cursor moved)");
    for line in plan.summary() {
        println!("  {line}");
    }
    if !list {
        return;
    }
    if plan.writes.len() > DRY_RUN_LISTED {
        println!(
            "  ({} planned writes: --plan FILE writes every one, with the rejections and conflicts)",
            plan.writes.len()
        );
        return;
    }
    for w in &plan.writes {
        let fields: Vec<String> = w
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={}", value(v)))
            .collect();
        println!(
            "  {} {} {} (link {}): {}",
            w.op,
            plan.side_label(w.side),
            w.record.as_deref().unwrap_or("(new)"),
            w.link,
            fields.join(", ")
        );
    }
    for c in &plan.conflicts {
        let show = |v: &Option<duplex::engine::Value>| v.as_ref().map_or("-".into(), value);
        println!(
            "  would hold {} of link {}: base {}, left {}, right {}",
            c.field,
            c.link,
            show(&c.base),
            show(&c.left),
            show(&c.right)
        );
    }
    for r in &plan.rejected {
        println!(
            "  would reject {} {}: {}",
            plan.side_label(r.side),
            r.record,
            r.reason
        );
    }
    if !plan.decided.is_empty() {
        println!(
            "  last-writer-wins would settle {} field(s)",
            plan.decided.len()
        );
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {}
                    _ = t.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
