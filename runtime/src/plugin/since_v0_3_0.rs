//! Components built against `duplex:plugin@0.3.0` (`wit/v0.3.0/`), kept loading.
//!
//! The same thin adapter as `since_v0_2_0.rs`: the 0.3.0 imports (`log`, `sql`, `signing`)
//! forward to the same host capabilities, and the 0.3.0 exports are called and their values
//! converted to the latest types. 0.4.0 changed only the resolver: a conflict carries the
//! sync's third side and on (`others`) and a rule may take one of them. A 0.3.0 rule sees two
//! sides; in a sync of more, `resolve_as_latest!` leaves its conflicts to a person. 0.5.0's
//! `change-batch.mid-transaction` is false for its connectors (see `connector_as_latest!`).
//!
//! Must not: grow behaviour of its own.

#![allow(missing_docs, clippy::all)]

use wasmtime::component::{Linker, Resource};
use wasmtime::AsContextMut;

use super::StoreState;
use crate::bindings::connector as latest;
use crate::bindings::duplex::plugin::types::{Error, Value};
use crate::bindings::duplex::plugin::{
    log as latest_log, signing as latest_signing, sql as latest_sql,
};
use crate::bindings::resolver as latest_resolver;
use crate::host::sql::Connection;
use crate::host::{HasHost, HostData, HostView};

/// The version this module adapts.
pub const VERSION: &str = "0.3.0";

older_worlds!("../wit/v0.3.0", signing);

// ---- Imports: what 0.3.0 components call, forwarded to the host's capabilities.

forward_log_and_sql!();

forward_signing!();

// ---- Exports: a 0.3.0 connector called as the latest one.

/// Calls a 0.3.0 connector's exports with the latest types.
pub(crate) struct Connector<'a>(pub &'a ConnectorWorld);

connector_as_latest!();

webhook_as_latest!();

// ---- A 0.3.0 rule called as the latest one: it sees the left and right sides only.

resolve_as_latest!();
