//! Checking a component against the world it claims, before it runs, and describing it for
//! `duplex plugin inspect`.
//!
//! The checks name what is wrong: an export that is missing (and what the component exports
//! instead), an import the host does not offer (and to which kind of plugin), a capability the
//! connection does not grant. wasmtime's own link check runs afterwards and catches type
//! mismatches inside an interface.

use wasmtime::component::types::ComponentItem;
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::host::{self, Capability};

/// The contract's package and version, as components name its interfaces.
pub const PACKAGE: &str = "duplex:plugin";
/// The latest version of the contract, which this host speaks and the SDK builds.
pub const VERSION: &str = "0.6.0";

/// A version of the contract this host loads components of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// [`VERSION`].
    Latest,
    /// Through the adapter in `since_v0_5_0.rs`.
    V0_5_0,
    /// Through the adapter in `since_v0_4_0.rs`.
    V0_4_0,
    /// Through the adapter in `since_v0_3_0.rs`.
    V0_3_0,
    /// Through the adapter in `since_v0_2_0.rs`.
    V0_2_0,
    /// Through the adapter in `since_v0_1_0.rs`.
    V0_1_0,
}

impl Contract {
    /// Every version loaded, latest first.
    pub const ALL: [Contract; 6] = [
        Contract::Latest,
        Contract::V0_5_0,
        Contract::V0_4_0,
        Contract::V0_3_0,
        Contract::V0_2_0,
        Contract::V0_1_0,
    ];

    /// Whether its rules see every side of a sync of more than two (0.4.0 on); older ones are
    /// shown two, and the conflicts of such a sync wait for a person instead.
    pub fn rules_see_every_side(self) -> bool {
        !matches!(self, Contract::V0_3_0 | Contract::V0_2_0 | Contract::V0_1_0)
    }

    pub fn version(self) -> &'static str {
        match self {
            Contract::Latest => VERSION,
            Contract::V0_5_0 => super::since_v0_5_0::VERSION,
            Contract::V0_4_0 => super::since_v0_4_0::VERSION,
            Contract::V0_3_0 => super::since_v0_3_0::VERSION,
            Contract::V0_2_0 => super::since_v0_2_0::VERSION,
            Contract::V0_1_0 => super::since_v0_1_0::VERSION,
        }
    }

    fn of(version: &str) -> Option<Contract> {
        Contract::ALL.into_iter().find(|c| c.version() == version)
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PACKAGE}@{}", self.version())
    }
}

/// The worlds a Duplex plugin can implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    Connector,
    Resolver,
}

impl World {
    /// The interface the world exports, unversioned (`duplex:plugin/connector`).
    pub fn export_interface(self) -> &'static str {
        match self {
            World::Connector => "duplex:plugin/connector",
            World::Resolver => "duplex:plugin/resolver",
        }
    }

    /// The versioned export name a component built for `contract` has.
    pub fn export_name(self, contract: Contract) -> String {
        format!("{}@{}", self.export_interface(), contract.version())
    }

    pub fn label(self) -> &'static str {
        match self {
            World::Connector => "connector",
            World::Resolver => "resolver",
        }
    }

    pub fn wit_world(self) -> &'static str {
        match self {
            World::Connector => "duplex:plugin/connector-plugin",
            World::Resolver => "duplex:plugin/resolver-plugin",
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// What a component imports, as the host sees it.
#[derive(Debug, Clone, Copy)]
pub enum ImportKind {
    /// The contract's shared types (no functions).
    Types,
    /// A host capability (`log`, `sql`, `http`): offered by world, used as granted.
    Capability(&'static Capability),
    /// A WASI interface a standard library or language runtime imports; linked with an empty
    /// context (no environment, no preopened directory, no sockets; rules also get a fixed clock
    /// and seeded randomness).
    StdLib,
    /// The contract at a version this host does not speak.
    WrongVersion,
    /// Anything else: the host does not offer it.
    NotOffered,
}

impl PartialEq for ImportKind {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ImportKind::Capability(a), ImportKind::Capability(b)) => a.name == b.name,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}
impl Eq for ImportKind {}

/// The WASI 0.2 interfaces linked for every plugin against an empty context. A Rust (or C)
/// standard library pulls in the first group even when the plugin does no I/O; JavaScript and
/// Python runtimes also import files and sockets, which get nothing: no directory is preopened,
/// every socket address and name lookup is refused.
const STD_LIB: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// What an import of the WASI standard library gets, for `plugin inspect`.
pub fn std_lib_gives(import: &str) -> &'static str {
    let interface = import.split_once('@').map_or(import, |(i, _)| i);
    match interface.split_once('/').map_or(interface, |(p, _)| p) {
        "wasi:filesystem" => "no directory is opened to plugins: every file access fails",
        "wasi:sockets" => "no network: every socket and name lookup is refused",
        "wasi:cli" if interface.ends_with("stderr") => {
            "kept (16 KiB) and shown in the call's error when it fails"
        }
        "wasi:cli" => "empty: no arguments or environment; stdin closed, stdout discarded",
        "wasi:clocks" => "real time for connectors; a clock stopped at 1970 for rules",
        "wasi:random" => "real randomness for connectors; a fixed seed for rules",
        _ => "standard streams and polling",
    }
}

/// Classifies one import name.
pub fn classify_import(name: &str) -> ImportKind {
    let (interface, version) = name.split_once('@').unwrap_or((name, ""));
    if let Some(rest) = interface.strip_prefix("duplex:plugin/") {
        if Contract::of(version).is_none() {
            return ImportKind::WrongVersion;
        }
        if rest == "types" {
            return ImportKind::Types;
        }
    }
    if interface.starts_with("wasi:") && !version.starts_with("0.2.") {
        return ImportKind::NotOffered;
    }
    if let Some(capability) = host::capability_of(name) {
        return ImportKind::Capability(capability);
    }
    if STD_LIB.contains(&interface) {
        return ImportKind::StdLib;
    }
    ImportKind::NotOffered
}

/// Whether `world` may import something of `kind`.
pub fn offered_to(world: World, kind: ImportKind) -> bool {
    match kind {
        ImportKind::Types | ImportKind::StdLib => true,
        ImportKind::Capability(c) => world == World::Connector || c.offered_to_rules,
        ImportKind::WrongVersion | ImportKind::NotOffered => false,
    }
}

/// One import or export of a component, with the functions inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub name: String,
    pub functions: Vec<String>,
}

/// A component's outside: its imports and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Surface {
    pub imports: Vec<Item>,
    pub exports: Vec<Item>,
}

impl Surface {
    pub fn of(engine: &Engine, component: &Component) -> Surface {
        let ty = component.component_type();
        let item = |name: &str, item: ComponentItem| Item {
            name: name.to_owned(),
            functions: match item {
                ComponentItem::ComponentInstance(i) => i
                    .exports(engine)
                    .filter(|(_, e)| matches!(e.ty, ComponentItem::ComponentFunc(_)))
                    .map(|(n, _)| n.to_owned())
                    .collect(),
                _ => Vec::new(),
            },
        };
        Surface {
            imports: ty.imports(engine).map(|(n, e)| item(n, e.ty)).collect(),
            exports: ty.exports(engine).map(|(n, e)| item(n, e.ty)).collect(),
        }
    }

    /// The Duplex world this component implements and the contract version it was built
    /// for, judged by its exports.
    pub fn world(&self) -> Option<(World, Contract)> {
        [World::Connector, World::Resolver]
            .into_iter()
            .find_map(|w| Some((w, self.contract(w)?)))
    }

    /// The contract version of `world`'s export, when the component has it.
    fn contract(&self, world: World) -> Option<Contract> {
        Contract::ALL
            .into_iter()
            .find(|c| self.exports.iter().any(|e| e.name == world.export_name(*c)))
    }

    fn export_names(&self) -> String {
        if self.exports.is_empty() {
            return "nothing".into();
        }
        self.exports
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a component does not fit the world it was loaded as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("it does not export {wanted}, so it is not a {world} plugin (it exports {found})")]
    MissingExport {
        world: World,
        wanted: String,
        found: String,
    },
    #[error("it was built against {found}, but this host speaks {PACKAGE}@{VERSION} (and loads components built for 0.2.0 and 0.1.0); rebuild it with a matching SDK")]
    WrongVersion { found: String },
    #[error("it imports {import}, which Duplex does not offer to {world} plugins{hint}")]
    NotOffered {
        world: World,
        import: String,
        hint: &'static str,
    },
}

/// Checks a component's surface against `world`, and says which contract version it was built
/// for. Grants are checked separately.
pub fn check(world: World, surface: &Surface) -> Result<Contract, Mismatch> {
    let wanted = world.export_name(Contract::Latest);
    let Some(contract) = surface.contract(world) else {
        if let Some(other) = surface.exports.iter().find(|e| {
            e.name
                .split_once('@')
                .is_some_and(|(i, _)| i == world.export_interface())
        }) {
            return Err(Mismatch::WrongVersion {
                found: other.name.clone(),
            });
        }
        return Err(Mismatch::MissingExport {
            world,
            wanted,
            found: surface.export_names(),
        });
    };
    for import in &surface.imports {
        let kind = classify_import(&import.name);
        // One component, one contract: a 0.1.0 export with 0.2.0 imports was not built by
        // either SDK.
        let other_version = import
            .name
            .strip_prefix("duplex:plugin/")
            .and_then(|rest| rest.split_once('@'))
            .is_some_and(|(_, v)| v != contract.version());
        if kind == ImportKind::WrongVersion || other_version {
            return Err(Mismatch::WrongVersion {
                found: import.name.clone(),
            });
        }
        if !offered_to(world, kind) {
            let hint = match (world, kind) {
                (World::Resolver, ImportKind::Capability(_)) => {
                    ": rules get no I/O, so that their answers depend on their input alone"
                }
                _ if import.name.starts_with("wasi:") => {
                    ": the host links WASI 0.2 (io, cli, clocks, random, filesystem, sockets, http), granting nothing"
                }
                _ => "",
            };
            return Err(Mismatch::NotOffered {
                world,
                import: import.name.clone(),
                hint,
            });
        }
    }
    Ok(contract)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQL: ImportKind = ImportKind::Capability(&host::sql::CAPABILITY);
    const LOG: ImportKind = ImportKind::Capability(&host::log::CAPABILITY);
    const HTTP: ImportKind = ImportKind::Capability(&host::http::CAPABILITY);

    #[test]
    fn classifies_imports() {
        assert_eq!(classify_import("duplex:plugin/sql@0.6.0"), SQL);
        assert_eq!(classify_import("duplex:plugin/sql@0.5.0"), SQL);
        assert_eq!(classify_import("duplex:plugin/sql@0.4.0"), SQL);
        assert_eq!(classify_import("duplex:plugin/sql@0.3.0"), SQL);
        assert_eq!(classify_import("duplex:plugin/sql@0.2.0"), SQL);
        assert_eq!(classify_import("duplex:plugin/sql@0.1.0"), SQL);
        assert_eq!(
            classify_import("duplex:plugin/sql@0.7.0"),
            ImportKind::WrongVersion
        );
        assert_eq!(classify_import("wasi:cli/stderr@0.2.6"), ImportKind::StdLib);
        assert_eq!(
            classify_import("wasi:filesystem/types@0.2.6"),
            ImportKind::StdLib
        );
        assert_eq!(classify_import("wasi:http/types@0.2.3"), HTTP);
        assert_eq!(
            classify_import("wasi:cli/stderr@0.3.0"),
            ImportKind::NotOffered
        );
        assert_eq!(
            classify_import("wasi:nn/graph@0.2.0"),
            ImportKind::NotOffered
        );
    }

    #[test]
    fn rules_are_offered_no_io() {
        assert!(!offered_to(World::Resolver, SQL));
        assert!(!offered_to(World::Resolver, LOG));
        assert!(offered_to(World::Resolver, ImportKind::StdLib));
        assert!(offered_to(World::Connector, SQL));
        // Linked for rules because language runtimes import it; a rule's store grants nothing.
        assert!(offered_to(World::Resolver, HTTP));
    }
}
