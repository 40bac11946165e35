//! Uploaded plugins: each component's bytes once, by content hash, and for each place a config
//! names a plugin (a slot: `rules.NAME` or `connections.NAME`) its uploaded versions and which
//! one is in use. No version in use means the file the config names.
//!
//! Kept in the state file so that a restart runs what was running, and a backup of the state
//! holds everything needed to run it again.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{dec, enc, State, StateError};

/// Component bytes by the hex SHA-256 of their content.
pub(super) const PLUGIN_BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_blobs");
/// A slot's [`SlotVersions`], by slot.
pub(super) const PLUGIN_SLOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_slots");

/// Where a config names a plugin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// The conflict rule `[rules.NAME]`.
    Rule(String),
    /// The connector of `[connections.NAME]`.
    Connector(String),
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slot::Rule(n) => write!(f, "rules.{n}"),
            Slot::Connector(n) => write!(f, "connections.{n}"),
        }
    }
}

impl std::str::FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Slot, String> {
        match s.split_once('.') {
            Some(("rules", n)) if !n.is_empty() => Ok(Slot::Rule(n.to_owned())),
            Some(("connections", n)) if !n.is_empty() => Ok(Slot::Connector(n.to_owned())),
            _ => Err(format!(
                "{s:?} names no plugin: say rules.NAME for a conflict rule or connections.NAME for a connector"
            )),
        }
    }
}

/// One uploaded version of a slot's plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginVersion {
    /// 1 for the first upload to the slot, then counting up.
    pub version: u32,
    pub sha256: String,
    pub size: usize,
    /// The world and contract version it was checked against.
    pub world: String,
    pub uploaded_at: i64,
    pub by: String,
}

/// A slot's uploads, oldest first, and the one in use (none: the config's file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotVersions {
    pub slot: String,
    pub active: Option<u32>,
    pub versions: Vec<PluginVersion>,
    /// When and by whom the version in use was chosen last.
    #[serde(default)]
    pub changed_at: Option<i64>,
    #[serde(default)]
    pub changed_by: Option<String>,
}

impl SlotVersions {
    pub fn get(&self, version: u32) -> Option<&PluginVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The version a rollback goes back to: the upload before the one in use, or the config's
    /// file (`Ok(None)`) from the first. Nothing to go back to when the config's file is in use.
    pub fn previous(&self) -> Result<Option<u32>, String> {
        let Some(active) = self.active else {
            return Err(format!(
                "{} runs the file the config names; there is no earlier version to go back to",
                self.slot
            ));
        };
        Ok(self
            .versions
            .iter()
            .map(|v| v.version)
            .filter(|v| *v < active)
            .max())
    }
}

/// The hex SHA-256 of a component's bytes, as blobs are keyed.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

impl State {
    pub(super) fn create_plugin_tables(w: &redb::WriteTransaction) -> Result<(), StateError> {
        w.open_table(PLUGIN_BLOBS)?;
        w.open_table(PLUGIN_SLOTS)?;
        Ok(())
    }

    /// A slot's uploads (empty when nothing was ever uploaded to it).
    pub fn plugin_versions(&self, slot: &Slot) -> Result<SlotVersions, StateError> {
        let key = slot.to_string();
        let r = self.db.begin_read()?;
        let t = r.open_table(PLUGIN_SLOTS)?;
        Ok(match t.get(key.as_str())? {
            Some(v) => dec(v.value())?,
            None => SlotVersions {
                slot: key,
                ..SlotVersions::default()
            },
        })
    }

    /// Every slot with uploads.
    pub fn plugin_slots(&self) -> Result<Vec<SlotVersions>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(PLUGIN_SLOTS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            out.push(dec(item?.1.value())?);
        }
        Ok(out)
    }

    /// A component's bytes by content hash.
    pub fn plugin_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StateError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(PLUGIN_BLOBS)?;
        Ok(t.get(sha256)?.map(|v| v.value().to_vec()))
    }

    /// Stores a checked upload as the slot's next version and puts it in use, in one
    /// transaction. The same bytes uploaded again are stored once.
    pub fn add_plugin_version(
        &self,
        slot: &Slot,
        bytes: &[u8],
        world: &str,
        by: &str,
        now: i64,
    ) -> Result<PluginVersion, StateError> {
        let key = slot.to_string();
        let sha256 = content_hash(bytes);
        let w = self.begin_write()?;
        let version = {
            let mut blobs = w.open_table(PLUGIN_BLOBS)?;
            if blobs.get(sha256.as_str())?.is_none() {
                blobs.insert(sha256.as_str(), bytes)?;
            }
            let mut slots = w.open_table(PLUGIN_SLOTS)?;
            let mut versions: SlotVersions = match slots.get(key.as_str())? {
                Some(v) => dec(v.value())?,
                None => SlotVersions {
                    slot: key.clone(),
                    ..SlotVersions::default()
                },
            };
            let version = PluginVersion {
                version: versions.versions.last().map_or(1, |v| v.version + 1),
                sha256,
                size: bytes.len(),
                world: world.to_owned(),
                uploaded_at: now,
                by: by.to_owned(),
            };
            versions.versions.push(version.clone());
            versions.active = Some(version.version);
            versions.changed_at = Some(now);
            versions.changed_by = Some(by.to_owned());
            slots.insert(key.as_str(), enc(&versions)?.as_slice())?;
            version
        };
        w.commit()?;
        Ok(version)
    }

    /// Puts an uploaded version (or, with none, the config's file) in use.
    pub fn set_active_plugin(
        &self,
        slot: &Slot,
        version: Option<u32>,
        by: &str,
        now: i64,
    ) -> Result<SlotVersions, StateError> {
        let key = slot.to_string();
        let w = self.begin_write()?;
        let versions = {
            let mut slots = w.open_table(PLUGIN_SLOTS)?;
            let mut versions: SlotVersions = match slots.get(key.as_str())? {
                Some(v) => dec(v.value())?,
                None => SlotVersions {
                    slot: key.clone(),
                    ..SlotVersions::default()
                },
            };
            if let Some(v) = version {
                if versions.get(v).is_none() {
                    return Err(StateError::Query(format!("{key} has no version {v}")));
                }
            }
            versions.active = version;
            versions.changed_at = Some(now);
            versions.changed_by = Some(by.to_owned());
            slots.insert(key.as_str(), enc(&versions)?.as_slice())?;
            versions
        };
        w.commit()?;
        Ok(versions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_count_up_share_their_bytes_and_roll_back_to_the_config_file() {
        let s = State::in_memory().expect("state");
        let slot: Slot = "rules.larger".parse().expect("slot");
        assert_eq!(s.plugin_versions(&slot).expect("read").active, None);
        let v1 = s
            .add_plugin_version(&slot, b"one", "resolver@0.2.0", "local:ann", 1)
            .expect("v1");
        let v2 = s
            .add_plugin_version(&slot, b"two", "resolver@0.2.0", "local:ann", 2)
            .expect("v2");
        let v3 = s
            .add_plugin_version(&slot, b"one", "resolver@0.2.0", "local:ann", 3)
            .expect("v3");
        assert_eq!((v1.version, v2.version, v3.version), (1, 2, 3));
        assert_eq!(v1.sha256, v3.sha256);
        assert_eq!(
            s.plugin_blob(&v2.sha256).expect("blob").as_deref(),
            Some(&b"two"[..])
        );
        let now = s.plugin_versions(&slot).expect("read");
        assert_eq!(now.active, Some(3));
        assert_eq!(now.previous(), Ok(Some(2)));
        let back = s
            .set_active_plugin(&slot, Some(1), "local:bo", 4)
            .expect("back");
        assert_eq!(
            back.previous(),
            Ok(None),
            "before the first upload: the config's file"
        );
        let file = s
            .set_active_plugin(&slot, None, "local:bo", 5)
            .expect("file");
        assert!(file.previous().is_err(), "nothing before the config's file");
        assert!(s.set_active_plugin(&slot, Some(9), "local:bo", 6).is_err());
        assert_eq!(s.plugin_slots().expect("slots").len(), 1);
        assert!("rules.".parse::<Slot>().is_err());
        assert!("syncs.x".parse::<Slot>().is_err());
        assert_eq!(
            "connections.crm".parse::<Slot>(),
            Ok(Slot::Connector("crm".into()))
        );
    }
}
