//! The `log` capability: a plugin's messages go into the host's log with the plugin and
//! connection as fields. Always granted; bounded so a chatty plugin cannot flood the log.

use crate::bindings::duplex::plugin::log::{self as wit, Level};
use crate::host::{Caller, Capability, HasHost, HostData, HostView};

pub const CAPABILITY: Capability = Capability {
    name: "log",
    interfaces: &["duplex:plugin/log"],
    offered_to_rules: false,
    refused_ungranted: false,
    gives: "log: always granted to connectors",
    granted: |_| true,
};

/// Longest message kept, in bytes; the rest is cut with a marker.
const MAX_MESSAGE: usize = 4096;

/// Most messages one store may write; later ones are dropped and counted.
const MAX_MESSAGES_PER_STORE: u32 = 10_000;

/// Per-store state of the capability.
#[derive(Debug)]
pub struct LogState {
    caller: Caller,
    written: u32,
}

impl LogState {
    pub fn new(caller: Caller) -> Self {
        LogState { caller, written: 0 }
    }
}

/// The one place `log` links into wasmtime.
pub fn link<T: HostData>(linker: &mut wasmtime::component::Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasHost>(linker, T::host)
}

impl wit::Host for HostView<'_> {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let state = &mut self.states.log;
        state.written = state.written.saturating_add(1);
        if state.written > MAX_MESSAGES_PER_STORE {
            if state.written == MAX_MESSAGES_PER_STORE + 1 {
                tracing::warn!(plugin = %state.caller.plugin, connection = %state.caller.connection,
                    "plugin wrote more than {MAX_MESSAGES_PER_STORE} log messages in one call; dropping the rest");
            }
            return Ok(());
        }
        let mut message = message;
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [truncated]");
        }
        let (plugin, connection) = (&*state.caller.plugin, &*state.caller.connection);
        match level {
            Level::Trace => tracing::trace!(plugin, connection, "{message}"),
            Level::Debug => tracing::debug!(plugin, connection, "{message}"),
            Level::Info => tracing::info!(plugin, connection, "{message}"),
            Level::Warn => tracing::warn!(plugin, connection, "{message}"),
            Level::Error => tracing::error!(plugin, connection, "{message}"),
        }
        Ok(())
    }
}
