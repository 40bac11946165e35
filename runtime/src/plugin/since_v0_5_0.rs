//! Components built against `duplex:plugin@0.5.0` (`wit/v0.5.0/`), kept loading.
//!
//! The same thin adapter as `since_v0_4_0.rs`: the 0.5.0 imports (`log`, `sql`, `signing`)
//! forward to the same host capabilities, and the 0.5.0 exports are called and their values
//! converted to the latest types. 0.6.0 changed only the connector: a change batch may say about
//! how many changes remain after it (`remaining`), which a 0.5.0 connector cannot say, so its
//! batches say nothing of it; what it says of its transactions is kept
//! (`connector_as_latest!(said_mid_transaction)`). A 0.5.0 rule is called as it is.
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
pub const VERSION: &str = "0.5.0";

older_worlds!("../wit/v0.5.0", signing);

// ---- Imports: what 0.5.0 components call, forwarded to the host's capabilities.

forward_log_and_sql!();

forward_signing!();

// ---- Exports: a 0.5.0 connector called as the latest one.

/// Calls a 0.5.0 connector's exports with the latest types.
pub(crate) struct Connector<'a>(pub &'a ConnectorWorld);

connector_as_latest!(said_mid_transaction);

webhook_as_latest!();

// ---- A 0.5.0 rule called as the latest one: the same shapes.

resolve_every_side!();
