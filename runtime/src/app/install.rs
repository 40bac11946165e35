//! Uploaded plugins put in use. An upload is checked as `plugin inspect` checks a file (a
//! component, of the slot's world, importing only what Duplex offers) and then against the
//! config as a load is: a connector against its connection's grants (refused, never granted
//! silently), its connection's `check`, and every mapping of the syncs that use it. Accepted,
//! it is stored by content hash as the slot's next version, and handed to the syncs that use
//! the slot, which take it at their next cycle boundary; no other sync is touched. A rollback
//! does the same with an earlier version, or the config's own file.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{build_sync, App, AppError, Connection, Sync, BUILTIN_SQL};
use crate::engine::Policy;
use crate::ops::{OpsError, PluginView};
use crate::plugin::ResolverPlugin;
use crate::state::{PluginVersion, Slot, SlotVersions, State};

/// A plugin checked for a slot, ready to take its place.
pub enum Prepared {
    Rule {
        name: String,
        plugin: Arc<ResolverPlugin>,
    },
    /// The connection with the new connector, and each sync that uses it, checked again.
    Connector {
        name: String,
        connection: Connection,
        syncs: Vec<Sync>,
    },
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prepared::Rule { name, plugin } => write!(f, "rule {name}: {}", plugin.label()),
            Prepared::Connector { name, .. } => write!(f, "connector of {name}"),
        }
    }
}

/// What to put in use.
pub enum Install {
    /// A new component: the slot's next version.
    Upload(Vec<u8>),
    /// An uploaded version, or (none) the config's own file.
    Version(Option<u32>),
}

/// A plugin put in use: the slot's versions now, how the plugin inspects, what the syncs'
/// loops take, and which syncs use it.
pub struct Installed {
    pub versions: SlotVersions,
    pub view: PluginView,
    pub swap: Arc<Prepared>,
    pub syncs: Vec<String>,
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl App {
    /// Where the config names the slot's plugin (`builtin:sql` or a path as written).
    fn slot_source(&self, slot: &Slot) -> Result<String, OpsError> {
        let config = &self.loaded.config;
        let source = match slot {
            Slot::Rule(n) => config.rules.get(n).map(|r| r.plugin.get_ref().clone()),
            Slot::Connector(n) => config
                .connections
                .get(n)
                .map(|c| c.plugin.get_ref().clone()),
        };
        source.ok_or_else(|| {
            let names: Vec<String> = config
                .rules
                .keys()
                .map(|n| format!("rules.{n}"))
                .chain(
                    config
                        .connections
                        .keys()
                        .map(|n| format!("connections.{n}")),
                )
                .collect();
            OpsError::NotFound(format!(
                "the config names no plugin {slot} (it names: {})",
                names.join(", ")
            ))
        })
    }

    /// The bytes of the config's own file for a slot.
    fn source_bytes(&self, source: &str) -> Result<Vec<u8>, OpsError> {
        if source == "builtin:sql" {
            return Ok(BUILTIN_SQL.to_vec());
        }
        let file = self.loaded.resolve(source);
        std::fs::read(&file)
            .map_err(|e| OpsError::Conflict(format!("cannot read {}: {e}", file.display())))
    }

    /// Checks `bytes` for `slot` as a load would, with `connections` as they run now. Changes
    /// nothing; the error is the reason it does not fit.
    pub async fn prepare(
        &self,
        slot: &Slot,
        bytes: &[u8],
        label: &str,
        connections: &BTreeMap<String, Connection>,
    ) -> Result<Prepared, String> {
        match slot {
            Slot::Rule(name) => {
                let plugin = self
                    .host
                    .load_resolver(label, name, bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Prepared::Rule {
                    name: name.clone(),
                    plugin: Arc::new(plugin),
                })
            }
            Slot::Connector(name) => {
                let c = self
                    .loaded
                    .config
                    .connections
                    .get(name)
                    .ok_or_else(|| format!("the config names no connection {name}"))?;
                let grants = self.loaded.grants(name, c).map_err(|e| e.to_string())?;
                let plugin = self
                    .host
                    .load_connector(label, name, bytes, &grants)
                    .await
                    .map_err(|e| e.to_string())?;
                let connection = super::connect(name, plugin, self.loaded.connector_config(c))
                    .await
                    .map_err(|e| e.to_string())?;
                let mut with = connections.clone();
                with.insert(name.clone(), connection.clone());
                let mut syncs = Vec::new();
                for s in self.syncs.iter().filter(|s| uses_connection(s, name)) {
                    let sync = build_sync(&self.loaded, &s.spec.name, &with)
                        .map_err(|e| format!("it does not fit sync {}: {e}", s.spec.name))?;
                    syncs.push(sync);
                }
                Ok(Prepared::Connector {
                    name: name.clone(),
                    connection,
                    syncs,
                })
            }
        }
    }

    /// The syncs a prepared plugin is for.
    pub fn users(&self, prepared: &Prepared) -> Vec<String> {
        match prepared {
            Prepared::Rule { name, .. } => self
                .syncs
                .iter()
                .filter(|s| uses_rule(s, name))
                .map(|s| s.spec.name.clone())
                .collect(),
            Prepared::Connector { syncs, .. } => {
                syncs.iter().map(|s| s.spec.name.clone()).collect()
            }
        }
    }

    /// Checks and stores a plugin for a slot and makes it the one in use. `connections` are
    /// the ones running now; a connector put in use replaces its entry. Nothing is stored when
    /// the plugin does not fit (an [`OpsError::Invalid`] with the reason).
    pub async fn install(
        &self,
        state: &State,
        slot: &Slot,
        what: Install,
        by: &str,
        connections: &mut BTreeMap<String, Connection>,
    ) -> Result<Installed, OpsError> {
        let source = self.slot_source(slot)?;
        let versions = state.plugin_versions(slot)?;
        let (bytes, label, version) = match what {
            Install::Upload(bytes) => {
                let next = versions.versions.last().map_or(1, |v| v.version + 1);
                (bytes, format!("{slot} v{next}"), None)
            }
            Install::Version(Some(v)) => {
                let stored = versions
                    .get(v)
                    .ok_or_else(|| OpsError::NotFound(format!("{slot} has no version {v}")))?;
                let bytes = state.plugin_blob(&stored.sha256)?.ok_or_else(|| {
                    OpsError::Conflict(format!("{slot} v{v}: its bytes are missing from the state"))
                })?;
                (bytes, format!("{slot} v{v}"), Some(Some(v)))
            }
            Install::Version(None) => {
                let label = crate::plugin::plugin_name(std::path::Path::new(&source));
                (self.source_bytes(&source)?, label, Some(None))
            }
        };
        let prepared = self
            .prepare(slot, &bytes, &label, connections)
            .await
            .map_err(|why| OpsError::Invalid(format!("{slot}: refused: {why}")))?;
        let world = match &prepared {
            Prepared::Rule { plugin, .. } => format!(
                "{}@{}",
                crate::plugin::World::Resolver.wit_world(),
                plugin.origin().contract.version()
            ),
            Prepared::Connector { connection, .. } => format!(
                "{}@{}",
                crate::plugin::World::Connector.wit_world(),
                connection.plugin.origin().contract.version()
            ),
        };
        let now = now_micros();
        let versions = match version {
            None => {
                state.add_plugin_version(slot, &bytes, &world, by, now)?;
                state.plugin_versions(slot)?
            }
            Some(v) => state.set_active_plugin(slot, v, by, now)?,
        };
        if let Prepared::Connector {
            name, connection, ..
        } = &prepared
        {
            connections.insert(name.clone(), connection.clone());
        }
        let shown = match versions.active {
            Some(v) => format!("uploaded v{v}"),
            None => source,
        };
        let view = PluginView::inspect(&self.host, slot, shown, versions.active, &bytes).await;
        let syncs = self.users(&prepared);
        tracing::info!(%slot, version = ?versions.active, by, syncs = ?syncs, "plugin put in use; its syncs take it at their next cycle");
        Ok(Installed {
            versions,
            view,
            swap: Arc::new(prepared),
            syncs,
        })
    }

    /// Puts the uploaded versions in use that the state says are, replacing the config's
    /// files: a restart runs what ran before it. One that no longer fits the config is an
    /// error, never a silent return to the config's file.
    pub async fn use_uploads(&mut self, state: &State) -> Result<(), AppError> {
        for versions in state.plugin_slots()? {
            let Some(v) = versions.active else { continue };
            let slot: Slot = versions.slot.parse().map_err(AppError::Host)?;
            if self.slot_source(&slot).is_err() {
                tracing::warn!(%slot, version = v, "an uploaded plugin is in use for a slot the config no longer names; not loaded");
                continue;
            }
            let stored: &PluginVersion = versions
                .get(v)
                .ok_or_else(|| AppError::Host(format!("{slot}: version {v} is not stored")))?;
            let bytes = state.plugin_blob(&stored.sha256)?.ok_or_else(|| {
                AppError::Host(format!("{slot} v{v}: its bytes are missing from the state"))
            })?;
            let prepared = self
                .prepare(&slot, &bytes, &format!("{slot} v{v}"), &self.connections)
                .await
                .map_err(|why| {
                    AppError::Host(format!(
                        "{slot} runs uploaded version {v}, which no longer fits: {why} \
                         (`duplex plugin rollback CONFIG {slot}` goes back to an earlier one)"
                    ))
                })?;
            self.uploaded
                .insert(slot, (stored.clone(), Arc::new(bytes)));
            match prepared {
                Prepared::Rule { name, plugin } => {
                    self.rules.insert(name, plugin);
                }
                Prepared::Connector {
                    name,
                    connection,
                    syncs,
                } => {
                    self.connections.insert(name, connection);
                    for new in syncs {
                        if let Some(s) =
                            self.syncs.iter_mut().find(|s| s.spec.name == new.spec.name)
                        {
                            *s = new;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn uses_connection(sync: &Sync, connection: &str) -> bool {
    sync.uses(connection)
}

/// Whether a sync's policies name the rule.
pub(super) fn uses_rule(sync: &Sync, rule: &str) -> bool {
    let named = |p: &Policy| matches!(p, Policy::Rule(r) if r == rule);
    named(&sync.spec.policy)
        || sync
            .spec
            .fields
            .iter()
            .any(|f| f.policy.as_ref().is_some_and(named))
}
