//! Host capabilities: what a plugin may ask of the host, one module per capability.
//!
//! Every capability has the same shape: its grant (what a connection's config allows), the one
//! place it links into wasmtime (`add_to_linker`), and the per-store state built from the grant.
//! Nothing is ambient: a capability a connection does not grant is not linked at all, and a
//! granted one still checks every request against the grant before any I/O.

pub mod log;
pub mod sql;

/// What one connection grants its plugin, from the config file's `grants` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Database URLs the plugin may open through `sql`. Empty: `sql` is not linked.
    pub sql: Vec<String>,
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
