//! Host capabilities: what a plugin may ask of the host, one module per capability.
//!
//! Every capability has the same shape, in its own module: its grant (what a connection's config
//! allows), its per-store state built from that grant, its host-wide state (pools, budgets) and
//! `link`, the one place it links into wasmtime. Nothing is ambient: a store's state holds only
//! what its connection grants, so a granted-nothing state refuses every request, and every
//! request is checked against the grant before any I/O. One linker serves every plugin: what a
//! component may import is decided by `plugin::world` (by world) and at load (by grant), what a
//! call may do by the state.
//!
//! Adding a capability: a module here, a line in [`CAPABILITIES`], its field in [`Grants`],
//! [`States`] and [`Shared`], and its `link` call in [`link_all`].

pub mod http;
pub mod log;
pub mod signing;
pub mod sql;

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, ResourceTable};

/// What one connection grants its plugin, from the config file's `grants` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Database URLs the plugin may open through `sql`.
    pub sql: Vec<String>,
    /// Origins (with optional path prefixes) the plugin may send HTTP requests to.
    pub http: http::Grant,
}

/// A capability as the loader and `plugin inspect` see it.
#[derive(Debug)]
pub struct Capability {
    /// Its name, as in `grants.NAME`.
    pub name: &'static str,
    /// The interfaces (unversioned) it implements.
    pub interfaces: &'static [&'static str],
    /// Whether rules may import it. Rules get no I/O; a capability offered to them must refuse
    /// everything when granted nothing.
    pub offered_to_rules: bool,
    /// Whether a component importing it is refused at load when its connection grants none of
    /// it. Capabilities standard toolchains import whether used or not (`http`) are linked
    /// granting nothing instead, and refuse at run time.
    pub refused_ungranted: bool,
    /// What it gives, for `plugin inspect`.
    pub gives: &'static str,
    /// Whether a connection's grants grant any of it.
    pub granted: fn(&Grants) -> bool,
}

/// Every capability, in one place.
pub const CAPABILITIES: &[&Capability] = &[
    &log::CAPABILITY,
    &sql::CAPABILITY,
    &http::CAPABILITY,
    &signing::CAPABILITY,
];

/// The capability an import belongs to, by its versioned name (`wasi:http/types@0.2.6`).
pub fn capability_of(import: &str) -> Option<&'static Capability> {
    let interface = import.split_once('@').map_or(import, |(i, _)| i);
    CAPABILITIES
        .iter()
        .copied()
        .find(|c| c.interfaces.contains(&interface))
}

/// Host-wide state shared by every store: connection pools, rate budgets, credentials.
#[derive(Debug, Default)]
pub struct Shared {
    pub sql: sql::Pools,
    pub http: http::Shared,
}

/// The per-store state of every capability.
pub struct States {
    pub log: log::LogState,
    pub sql: sql::SqlState,
    pub http: http::HttpState,
    pub signing: signing::SigningState,
}

impl States {
    /// The states for one store of a plugin serving `caller` with `grants`.
    pub fn new(caller: &Caller, grants: &Arc<Grants>, shared: &Arc<Shared>) -> States {
        States {
            log: log::LogState::new(caller.clone()),
            sql: sql::SqlState::new(caller.clone(), grants.sql.clone().into(), shared.clone()),
            http: http::HttpState::new(caller.clone(), grants.clone(), shared.clone()),
            signing: signing::SigningState::new(caller.clone(), grants.clone()),
        }
    }

    /// States that grant nothing, for rules.
    pub fn nothing(caller: &Caller) -> States {
        States::new(caller, &Arc::default(), &Arc::default())
    }
}

/// What a capability's host functions see of a store: every capability's state and the resource
/// table its handles live in.
pub struct HostView<'a> {
    pub states: &'a mut States,
    pub table: &'a mut ResourceTable,
}

/// A store's data that the capabilities can be linked against.
pub trait HostData: Send + 'static {
    fn host(&mut self) -> HostView<'_>;
}

/// The [`HasData`] marker that links host functions against a [`HostView`].
pub struct HasHost;

impl HasData for HasHost {
    type Data<'a> = HostView<'a>;
}

/// Links every capability into `linker`.
pub fn link_all<T: HostData + http::HttpData>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    log::link(linker)?;
    sql::link(linker)?;
    http::link(linker)?;
    signing::link(linker)?;
    Ok(())
}

/// Who is asking: carried into every capability's state so that logs and errors name the plugin
/// and the connection.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The plugin's name (its file name without extension, or the name the config gives it).
    pub plugin: std::sync::Arc<str>,
    /// The connection the plugin serves; for rules, the sync that uses them.
    pub connection: std::sync::Arc<str>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin {} (connection {})", self.plugin, self.connection)
    }
}
