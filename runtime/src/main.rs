//! The `duplex` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use duplex::app::App;
use duplex::driver::CycleReport;
use duplex::plugin::{CompileCache, HostOptions, PluginHost};
use duplex::state::{Choice, State};

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
    },
    /// Check a config: its syntax, plugins, connections and every mapping. Changes nothing.
    Check { config: PathBuf },
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
    /// List open conflicts (with --all, also settled ones).
    List {
        config: PathBuf,
        #[arg(long)]
        all: bool,
    },
    /// Settle a conflict: take one side's value, or give one.
    Resolve(ResolveArgs),
}

#[derive(Args)]
struct ResolveArgs {
    config: PathBuf,
    /// The conflict's number, from `conflicts list`.
    id: u64,
    /// Keep this side's value (`left` or `right`); for a held delete, `left`/`right` is the
    /// side whose state wins (the deleting side approves the delete).
    #[arg(long, value_parser = ["left", "right"], conflicts_with = "value")]
    take: Option<String>,
    /// Write this value to both sides (JSON: "text", 12, 12.5, true, null).
    #[arg(long)]
    value: Option<String>,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Print a component's world, exports, imports and the grants it needs.
    Inspect {
        /// The component file (`.wasm`).
        file: PathBuf,
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
    totals: std::collections::BTreeMap<String, (usize, usize)>,
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
        t.0 += r.read[0] + r.read[1];
        t.1 += r.writes;
        if self.terminal && r.more {
            eprint!("\r{sync}: {} changes read, {} written ...", t.0, t.1);
        } else if self.terminal {
            eprintln!("\r{sync}: {}", r.summary());
        } else {
            eprintln!("{sync}: {}", r.summary());
        }
    }
}

fn state_only(config: &std::path::Path) -> anyhow::Result<State> {
    let loaded = duplex::config::Loaded::read(config)?;
    let path = loaded.state_path();
    if !path.exists() {
        bail!(
            "no state file at {} yet: run `duplex run {}` first",
            path.display(),
            config.display()
        );
    }
    Ok(State::open(&path)?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, once } => {
            let app = App::load(&config).await?;
            let state = app.open_state()?;
            let mut progress = Progress::new();
            if once {
                app.run_once(&state, |s, r| progress.report(s, r)).await?;
            } else {
                eprintln!(
                    "duplex: running {} sync(s) from {}; Ctrl-C to stop",
                    app.syncs.len(),
                    config.display()
                );
                app.run(&state, shutdown(), |s, r| progress.report(s, r))
                    .await?;
                eprintln!("duplex: stopped cleanly");
            }
            print_status(&app, &state)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let app = App::load(&config).await?;
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
                println!(
                    "sync {}: {}.{} <-> {}.{}, {} fields mapped",
                    s.spec.name,
                    s.left.0,
                    s.left.1,
                    s.right.0,
                    s.right.1,
                    s.spec.fields.len()
                );
            }
            println!("{}: ok", config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config } => {
            let app = App::load(&config).await?;
            let state = app.open_state()?;
            print_status(&app, &state)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall { config, connection } => {
            let app = App::load(&config).await?;
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
                    for (side, (conn, _)) in [
                        (duplex::engine::Side::Left, &s.left),
                        (duplex::engine::Side::Right, &s.right),
                    ] {
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
            let state = state_only(&config)?;
            let entries: Vec<_> = state
                .activity(sync.as_deref())?
                .into_iter()
                .filter(|a| !decisions || a.decided.is_some())
                .collect();
            if entries.is_empty() {
                println!(
                    "no {}yet",
                    if decisions {
                        "last-writer-wins decisions "
                    } else {
                        "activity "
                    }
                );
            }
            for a in &entries[entries.len().saturating_sub(last)..] {
                println!("{}", duplex::report::activity_line(a));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Conflicts {
            command: ConflictsCommand::List { config, all },
        } => {
            let state = state_only(&config)?;
            let conflicts = state.conflicts(all)?;
            if conflicts.is_empty() {
                println!("no {}conflicts", if all { "" } else { "open " });
            }
            for c in conflicts {
                println!("{}", duplex::report::conflict_line(&c));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Conflicts {
            command: ConflictsCommand::Resolve(args),
        } => {
            let state = state_only(&args.config)?;
            let conflict = state.conflict(args.id)?;
            let choice = match (args.take.as_deref(), &args.value) {
                (Some("left"), None) => Choice::TakeLeft,
                (Some("right"), None) => Choice::TakeRight,
                (None, Some(v)) => Choice::Value(parse_value(
                    v,
                    conflict.left.as_ref().or(conflict.right.as_ref()),
                )?),
                _ => bail!("say how to resolve it: --take left, --take right, or --value VALUE"),
            };
            let by = std::env::var("USER").unwrap_or_else(|_| "cli".into());
            let c = state.resolve_conflict(
                args.id,
                choice,
                &by,
                chrono::Utc::now().timestamp_micros(),
            )?;
            println!("{}", duplex::report::conflict_line(&c));
            println!(
                "it is applied at the next cycle (`duplex run {} --once`)",
                args.config.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { dir } => {
            let mut out = std::io::stdout();
            duplex::demo::run(&dir, &mut out).await?;
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

/// A value given on the command line, in the type of the conflict's values.
fn parse_value(
    text: &str,
    like: Option<&duplex::engine::Value>,
) -> anyhow::Result<duplex::engine::Value> {
    use duplex::engine::{convert, FieldType, Value};
    let json: serde_json::Value =
        serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.to_owned()));
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
    convert(v, ty)
        .map_err(anyhow::Error::msg)
        .context("the value does not fit the field")
}

fn print_status(app: &App, state: &State) -> anyhow::Result<()> {
    let conflicts = state.conflicts(false)?;
    for s in &app.syncs {
        let name = &s.spec.name;
        let links = state.all_links(name)?;
        let active = links
            .iter()
            .filter(|l| l.status == duplex::engine::LinkStatus::Active)
            .count();
        let stats = state.stats(name)?;
        let rejected = state.rejected(name)?;
        let dirty = state.dirty(name)?;
        let open: Vec<_> = conflicts.iter().filter(|c| &c.sync == name).collect();
        println!(
            "sync {name}: {}.{} <-> {}.{}",
            s.left.0, s.left.1, s.right.0, s.right.1
        );
        println!("  links: {active} active, {} in all", links.len());
        println!("  open conflicts: {}", open.len());
        for c in &open {
            println!("    {}", duplex::report::conflict_line(c));
        }
        println!("  rejected records: {}", rejected.len());
        for r in &rejected {
            println!(
                "    {} {}: {} (attempts {})",
                r.side, r.id, r.reason, r.attempts
            );
        }
        println!("  waiting to retry: {}", dirty.len());
        println!(
            "  last-writer-wins decisions: {} (`duplex activity {} --decisions` lists them)",
            stats.decided,
            app.loaded.path.display()
        );
        println!(
            "  totals: {} cycles, {} changes read, {} writes, {} failed writes, {} echoes ignored",
            stats.cycles, stats.changes_read, stats.writes, stats.write_failures, stats.echoes
        );
        if let Some(last) = &stats.last_cycle {
            let at = stats
                .last_cycle_at
                .map(duplex::time::format_sqlite)
                .unwrap_or_default();
            println!("  last cycle ({at} UTC): {last}");
        }
    }
    Ok(())
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
