//! Components built against `duplex:plugin@0.2.0` (`wit/v0.2.0/`), kept loading.
//!
//! The same thin adapter as `since_v0_1_0.rs`: the 0.2.0 imports (`log`, `sql`) forward to the
//! same host capabilities, and the 0.2.0 exports are called and their values converted to the
//! latest types (the same shapes: 0.3.0 only added `webhook` and the `signing` import). A 0.2.0
//! connector takes no webhooks.
//!
//! Must not: grow behaviour of its own.

#![allow(missing_docs, clippy::all)]

use wasmtime::component::{Linker, Resource};
use wasmtime::AsContextMut;

use super::StoreState;
use crate::bindings::connector as latest;
use crate::bindings::duplex::plugin::types::{Error, Value};
use crate::bindings::duplex::plugin::{log as latest_log, sql as latest_sql};
use crate::bindings::resolver as latest_resolver;
use crate::host::sql::Connection;
use crate::host::{HasHost, HostData, HostView};

/// The version this module adapts.
pub const VERSION: &str = "0.2.0";

older_worlds!("../wit/v0.2.0");

// ---- Imports: what 0.2.0 components call, forwarded to the host's capabilities.

forward_log_and_sql!();

// ---- Exports: a 0.2.0 connector called as the latest one.

/// Calls a 0.2.0 connector's exports with the latest types.
pub(crate) struct Connector<'a>(pub &'a ConnectorWorld);

connector_as_latest!();

impl Connector<'_> {
    /// Components of this version take no webhooks.
    pub async fn webhook<S: AsContextMut<Data = StoreState>>(
        &self,
        _: S,
        _: &str,
        _: &latest::WebhookRequest,
    ) -> CallResult<latest::WebhookAnswer> {
        Ok(Ok(latest::WebhookAnswer::Unsupported))
    }
}

// ---- A 0.2.0 rule called as the latest one: the resolver interface did not change.

resolve_as_latest!();
