//! `duplex plugin inspect`: what a component is, what it exports and imports, and what it needs
//! a connection to grant, without running any of its operations but `info`.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::host::Caller;
use crate::plugin::world::{self, Contract, ImportKind, World};
use crate::plugin::{ConnectorInfo, ConnectorPlugin, LoadError, PluginHost, Surface};

/// What `inspect` found.
#[derive(Debug)]
pub struct Inspection {
    pub path: PathBuf,
    pub size: usize,
    pub sha256: String,
    pub surface: Surface,
    /// The world it implements, and the contract version it was built for.
    pub world: Option<(World, Contract)>,
    /// Why it would not load as its world, if it would not.
    pub problem: Option<String>,
    /// A connector's own description.
    pub info: Option<ConnectorInfo>,
}

/// Inspects a component file. Fails only for a file that is not a component at all.
pub async fn inspect(host: &PluginHost, path: &Path) -> Result<Inspection, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    inspect_bytes(host, path, &bytes).await
}

/// Inspects a component's bytes; `path` names it (a file, or `builtin:NAME`).
pub async fn inspect_bytes(
    host: &PluginHost,
    path: &Path,
    bytes: &[u8],
) -> Result<Inspection, LoadError> {
    let name = crate::plugin::plugin_name(path);
    let component = host.compile(&name, bytes)?;
    let surface = host.surface(&component);
    let world = surface.world();
    let mut problem = None;
    let mut info = None;
    match world {
        None => {
            problem = Some(format!(
                "it exports neither {} nor {}, so it is not a Duplex plugin",
                World::Connector.export_name(Contract::Latest),
                World::Resolver.export_name(Contract::Latest)
            ))
        }
        Some((w, _)) => match world::check(w, &surface) {
            Err(m) => problem = Some(m.to_string()),
            Ok(contract) if w == World::Connector => {
                // Linked with sql but granted nothing: `info` must not do I/O, and any attempt
                // is refused.
                let caller = Caller {
                    plugin: name.as_str().into(),
                    connection: "inspect".into(),
                };
                match ConnectorPlugin::new(
                    host.engine(),
                    host.linker(),
                    &component,
                    bytes,
                    contract,
                    caller,
                    host.limits(),
                    Default::default(),
                    host.shared(),
                )
                .await
                {
                    Ok(p) => info = Some(p.info().clone()),
                    Err(e) => problem = Some(e.to_string()),
                }
            }
            Ok(_) => {}
        },
    }
    Ok(Inspection {
        path: path.to_owned(),
        size: bytes.len(),
        sha256: hex::encode(Sha256::digest(bytes)),
        surface,
        world,
        problem,
        info,
    })
}

fn describe_import(world: Option<World>, name: &str) -> &'static str {
    let kind = world::classify_import(name);
    let offered = world.is_none_or(|w| world::offered_to(w, kind));
    match kind {
        ImportKind::Types => "the contract's types",
        // Rules are granted nothing: linked only because language runtimes import it.
        ImportKind::Capability(_) if world == Some(World::Resolver) && offered => {
            "linked, granting nothing: rules get no I/O, every request is refused"
        }
        ImportKind::Capability(c) if offered => c.gives,
        ImportKind::StdLib => world::std_lib_gives(name),
        ImportKind::WrongVersion => "NOT OFFERED: another version of the contract",
        _ => "NOT OFFERED by this host",
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file      {}", self.path.display())?;
        writeln!(f, "size      {} bytes", self.size)?;
        writeln!(f, "sha256    {}", self.sha256)?;
        match self.world {
            Some((w, contract)) => {
                writeln!(
                    f,
                    "world     {}@{} ({} plugin{})",
                    w.wit_world(),
                    contract.version(),
                    w,
                    if contract == Contract::Latest {
                        String::new()
                    } else {
                        format!(", an older contract, loaded through an adapter; {VERSION} is the latest",
                        VERSION = world::VERSION)
                    }
                )?
            }
            None => writeln!(f, "world     none recognised")?,
        }
        if let Some(info) = &self.info {
            let caps: Vec<&str> = [
                (crate::plugin::Capabilities::CHANGE_FEED, "change-feed"),
                (
                    crate::plugin::Capabilities::DELETES_IN_FEED,
                    "deletes-in-feed",
                ),
                (
                    crate::plugin::Capabilities::CONDITIONAL_WRITES,
                    "conditional-writes",
                ),
                (crate::plugin::Capabilities::REALTIME, "realtime"),
            ]
            .into_iter()
            .filter(|(c, _)| info.capabilities.contains(*c))
            .map(|(_, n)| n)
            .collect();
            writeln!(f, "connector {} {}", info.name, info.version)?;
            writeln!(
                f,
                "features  {}",
                if caps.is_empty() {
                    "none".into()
                } else {
                    caps.join(", ")
                }
            )?;
        }
        writeln!(f, "exports")?;
        for e in &self.surface.exports {
            writeln!(f, "  {}: {}", e.name, e.functions.join(", "))?;
        }
        writeln!(f, "imports")?;
        let width = self
            .surface
            .imports
            .iter()
            .map(|i| i.name.len())
            .max()
            .unwrap_or(0);
        for i in &self.surface.imports {
            writeln!(
                f,
                "  {:width$}  {}",
                i.name,
                describe_import(self.world.map(|(w, _)| w), &i.name)
            )?;
        }
        let mut needs: Vec<String> = Vec::new();
        for i in &self.surface.imports {
            if let ImportKind::Capability(c) = world::classify_import(&i.name) {
                let need = format!("{} (grants.{})", c.name, c.name);
                let is_connector = self.world.is_some_and(|(w, _)| w == World::Connector);
                if c.name != "log" && is_connector && !needs.contains(&need) {
                    needs.push(need);
                }
            }
        }
        writeln!(
            f,
            "grants    {}",
            if needs.is_empty() {
                "none needed".to_owned()
            } else {
                needs.join(", ")
            }
        )?;
        match &self.problem {
            None => write!(
                f,
                "verdict   loads as a {}",
                self.world.map_or("plugin", |(w, _)| w.label())
            ),
            Some(p) => write!(f, "verdict   does not load: {p}"),
        }
    }
}
