//! Loading and running plugins: compile (with an on-disk cache), check against the claimed world,
//! link only what the connection's grants allow, and call under limits.
//!
//! `plugin` owns wasmtime. Nothing outside it sees a `Store` or an `Instance`: callers get a
//! [`ConnectorPlugin`] or a [`ResolverPlugin`], open a session per unit of work, and get typed
//! results or a [`CallError`] that names the plugin and the cause.

use crate::bindings;
mod cache;
mod connector;
mod resolver;
mod sandbox;
#[macro_use]
mod since;
mod since_v0_1_0;
mod since_v0_2_0;
mod since_v0_3_0;
mod since_v0_4_0;
mod since_v0_5_0;
pub mod world;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

use crate::host::{self, Caller, Grants};

pub use bindings::connector::{
    Capabilities, Change, ChangeBatch, ChangeKind, ConnectorInfo, CreateOp, Current, DeleteOp,
    Field, FieldMatch, FieldType, LookupKey, Stream, UpdateOp, Watched, WebhookAnswer,
    WebhookRequest, WriteOp, Written,
};
pub use bindings::duplex::plugin::types::{
    Error as WitError, FieldValue, Invalid, RateLimit, Timestamp, Value,
};
pub use bindings::resolver::{Conflict, Resolution, Side};
pub use cache::{CacheStats, CompileCache};
pub use connector::{ConnectorPlugin, ConnectorSession};
pub use resolver::ResolverPlugin;
pub use sandbox::{CallError, Limits, Purity, StoreState, TICK};
pub use world::{Surface, World};

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read plugin file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin {plugin} is not a Duplex plugin: {why}")]
    NotAComponent { plugin: String, why: String },
    #[error("plugin {plugin} does not compile: {message}")]
    Compile { plugin: String, message: String },
    #[error("plugin {plugin} cannot be loaded as a {world}: {mismatch}")]
    Mismatch {
        plugin: String,
        world: World,
        mismatch: world::Mismatch,
    },
    #[error("plugin {plugin} imports {import}, but connection {connection} grants it no {capability}; add grants.{capability} to the connection")]
    NotGranted {
        plugin: String,
        connection: String,
        import: String,
        capability: &'static str,
    },
    #[error("plugin {plugin} does not link: {message}")]
    Link { plugin: String, message: String },
    #[error("plugin {plugin} failed while starting: {source}")]
    Start {
        plugin: String,
        #[source]
        source: Box<CallError>,
    },
}

/// Which build of a plugin is loaded: its content hash and the contract it was built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Hex SHA-256 of the component's bytes.
    pub sha256: String,
    pub contract: world::Contract,
}

impl Origin {
    fn of(bytes: &[u8], contract: world::Contract) -> Origin {
        use sha2::Digest;
        Origin {
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
            contract,
        }
    }

    /// The first 12 hex digits of the hash: enough to tell builds apart in a log line.
    pub fn short(&self) -> &str {
        &self.sha256[..12]
    }
}

/// Host-wide settings for plugins.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Limits applied to every call.
    pub limits: Limits,
    /// Where compiled components are cached; none disables the cache.
    pub cache_dir: Option<PathBuf>,
}

/// The plugin host: one wasmtime engine, its epoch ticker, the compile cache, the linker and
/// the capabilities' host-wide state.
pub struct PluginHost {
    engine: Engine,
    shared: Arc<host::Shared>,
    cache: CompileCache,
    limits: Limits,
    linker: Arc<Linker<StoreState>>,
    _ticker: EpochTicker,
}

impl PluginHost {
    pub fn new(options: HostOptions) -> anyhow::Result<PluginHost> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Component-model async is not used by the 0.1 worlds; off, calls are cheaper.
        config.concurrency_support(false);
        // For profiling with `perf`: the compiled plugins' functions named in /tmp/perf-PID.map.
        if std::env::var_os("DUPLEX_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let linker = Arc::new(linker(&engine)?);
        Ok(PluginHost {
            _ticker: EpochTicker::start(engine.clone())?,
            cache: CompileCache::new(options.cache_dir),
            shared: Arc::default(),
            limits: options.limits,
            linker,
            engine,
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Compiles (or fetches from the cache) a component, refusing anything that is not one.
    pub fn compile(&self, plugin: &str, bytes: &[u8]) -> Result<Component, LoadError> {
        if !wasmparser::Parser::is_component(bytes) {
            let why = if wasmparser::Parser::is_core_wasm(bytes) {
                "it is a core WebAssembly module, not a component; build it for the \
                 wasm32-wasip2 target with the Duplex SDK"
                    .to_owned()
            } else {
                let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
                format!(
                    "it is not WebAssembly at all (it starts with bytes {}, not 00 61 73 6d)",
                    head.join(" ")
                )
            };
            return Err(LoadError::NotAComponent {
                plugin: plugin.to_owned(),
                why,
            });
        }
        self.cache
            .component(&self.engine, bytes)
            .map_err(|e| LoadError::Compile {
                plugin: plugin.to_owned(),
                message: format!("{e:#}"),
            })
    }

    /// The imports and exports of a compiled component.
    pub fn surface(&self, component: &Component) -> Surface {
        Surface::of(&self.engine, component)
    }

    /// Loads a connector for `connection` with its grants: checks it against the connector
    /// world and the grants, links it, and asks it who it is.
    pub async fn load_connector(
        &self,
        plugin: &str,
        connection: &str,
        bytes: &[u8],
        grants: &Grants,
    ) -> Result<ConnectorPlugin, LoadError> {
        let component = self.compile(plugin, bytes)?;
        let surface = self.surface(&component);
        let mismatch = |mismatch| LoadError::Mismatch {
            plugin: plugin.to_owned(),
            world: World::Connector,
            mismatch,
        };
        let contract = world::check(World::Connector, &surface).map_err(mismatch)?;
        for import in &surface.imports {
            if let world::ImportKind::Capability(c) = world::classify_import(&import.name) {
                if c.refused_ungranted && !(c.granted)(grants) {
                    return Err(LoadError::NotGranted {
                        plugin: plugin.to_owned(),
                        connection: connection.to_owned(),
                        import: import.name.clone(),
                        capability: c.name,
                    });
                }
            }
        }
        let caller = Caller {
            plugin: plugin.into(),
            connection: connection.into(),
        };
        ConnectorPlugin::new(
            &self.engine,
            &self.linker,
            &component,
            bytes,
            contract,
            caller,
            self.limits,
            Arc::new(grants.clone()),
            self.shared.clone(),
        )
        .await
    }

    /// Loads a connector from a file, naming it by the file's stem.
    pub async fn load_connector_file(
        &self,
        path: &Path,
        connection: &str,
        grants: &Grants,
    ) -> Result<ConnectorPlugin, LoadError> {
        let bytes = read(path)?;
        self.load_connector(&plugin_name(path), connection, &bytes, grants)
            .await
    }

    /// Loads a conflict rule for `sync`.
    pub async fn load_resolver(
        &self,
        plugin: &str,
        sync: &str,
        bytes: &[u8],
    ) -> Result<ResolverPlugin, LoadError> {
        let component = self.compile(plugin, bytes)?;
        let surface = self.surface(&component);
        let contract =
            world::check(World::Resolver, &surface).map_err(|mismatch| LoadError::Mismatch {
                plugin: plugin.to_owned(),
                world: World::Resolver,
                mismatch,
            })?;
        let caller = Caller {
            plugin: plugin.into(),
            connection: sync.into(),
        };
        ResolverPlugin::new(
            &self.engine,
            &self.linker,
            &component,
            bytes,
            contract,
            caller,
            self.limits,
        )
    }

    /// Loads a conflict rule from a file, naming it by the file's stem.
    pub async fn load_resolver_file(
        &self,
        path: &Path,
        sync: &str,
    ) -> Result<ResolverPlugin, LoadError> {
        let bytes = read(path)?;
        self.load_resolver(&plugin_name(path), sync, &bytes).await
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn linker(&self) -> &Linker<StoreState> {
        &self.linker
    }

    pub(crate) fn shared(&self) -> Arc<host::Shared> {
        self.shared.clone()
    }
}

/// The one linker every plugin is linked with: WASI 0.2 (an empty context, see
/// `world::STD_LIB`), the contract's types and every host capability. What a component may
/// import is `world::check`'s decision and the load's grant check; what a call may do is its
/// store's capability states'.
fn linker(engine: &Engine) -> anyhow::Result<Linker<StoreState>> {
    let mut l = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut l)?;
    bindings::duplex::plugin::types::add_to_linker::<
        StoreState,
        wasmtime::component::HasSelf<StoreState>,
    >(&mut l, |s| s)?;
    host::link_all(&mut l)?;
    // Components built for older versions import the same capabilities by their own names.
    since_v0_5_0::add_to_linker(&mut l)?;
    since_v0_4_0::add_to_linker(&mut l)?;
    since_v0_3_0::add_to_linker(&mut l)?;
    since_v0_2_0::add_to_linker(&mut l)?;
    since_v0_1_0::add_to_linker(&mut l)?;
    Ok(l)
}

impl bindings::duplex::plugin::types::Host for StoreState {}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A plugin's name from its file: `plugins/sql.wasm` is `sql`.
pub fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Advances the engine's epoch every [`TICK`] on a thread of its own, until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> std::io::Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("duplex-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
