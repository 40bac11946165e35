//! Components built against `duplex:plugin@0.1.0` (`wit/v0.1.0/`), kept loading.
//!
//! A thin adapter to the latest contract, as Zed keeps its `since_v0_x_y.rs`: the 0.1.0 imports
//! (`log`, `sql`) forward to the same host capabilities, and the 0.1.0 exports are called and
//! their values converted to the latest types, so nothing past `plugin` knows the difference.
//! The contract's shared types (`value`, `error`, ...) did not change and are the latest ones.
//!
//! What 0.1.0 lacks: `current.changed-at` (a 0.1.0 connector's `find` answers carry no time,
//! and the driver counts such a record as changed when it read it), `field.allowed` and
//! `field.unsupported` (none), and `written.stored` (its writes count as stored as written).
//!
//! Must not: grow behaviour of its own. A new contract version adds `since_v0_2_0.rs` and this
//! one keeps forwarding to the latest.

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
pub const VERSION: &str = "0.1.0";

older_worlds!("../wit/v0.1.0");

// ---- Imports: what 0.1.0 components call, forwarded to the host's capabilities.

forward_log_and_sql!();

// ---- Exports: a 0.1.0 connector called as the latest one.

type CallResult<T> = wasmtime::Result<Result<T, Error>>;

/// Calls a 0.1.0 connector's exports with the latest types.
pub(crate) struct Connector<'a>(pub &'a ConnectorWorld);

impl Connector<'_> {
    fn guest(&self) -> &old::Guest {
        self.0.duplex_plugin_connector()
    }

    pub async fn info<S: AsContextMut<Data = StoreState>>(
        &self,
        s: S,
    ) -> wasmtime::Result<latest::ConnectorInfo> {
        let i = self.guest().call_info(s).await?;
        let mut capabilities = latest::Capabilities::empty();
        for (old_flag, flag) in [
            (
                old::Capabilities::CHANGE_FEED,
                latest::Capabilities::CHANGE_FEED,
            ),
            (
                old::Capabilities::DELETES_IN_FEED,
                latest::Capabilities::DELETES_IN_FEED,
            ),
            (
                old::Capabilities::CONDITIONAL_WRITES,
                latest::Capabilities::CONDITIONAL_WRITES,
            ),
            (old::Capabilities::REALTIME, latest::Capabilities::REALTIME),
        ] {
            if i.capabilities.contains(old_flag) {
                capabilities |= flag;
            }
        }
        Ok(latest::ConnectorInfo {
            name: i.name,
            version: i.version,
            config_schema: i.config_schema,
            capabilities,
        })
    }

    pub async fn check<S: AsContextMut<Data = StoreState>>(
        &self,
        s: S,
        config: &str,
    ) -> CallResult<()> {
        self.guest().call_check(s, config).await
    }

    pub async fn discover<S: AsContextMut<Data = StoreState>>(
        &self,
        s: S,
        config: &str,
    ) -> CallResult<Vec<latest::Stream>> {
        let streams = self.guest().call_discover(s, config).await?;
        Ok(streams.map(|streams| streams.into_iter().map(stream).collect()))
    }

    pub async fn read<S: AsContextMut<Data = StoreState>>(
        &self,
        s: S,
        config: &str,
        stream: &str,
        origin: &str,
        cursor: Option<&str>,
        max: u32,
    ) -> CallResult<latest::ChangeBatch> {
        let batch = self
            .guest()
            .call_read(s, config, stream, origin, cursor, max)
            .await?;
        Ok(batch.map(|b| latest::ChangeBatch {
            changes: b.changes.into_iter().map(change).collect(),
            next_cursor: b.next_cursor,
            has_more: b.has_more,
            mid_transaction: false,
            remaining: None,
        }))
    }

    pub async fn write<S: AsContextMut<Data = StoreState>>(
        &self,
        s: S,
        config: &str,
        stream: &str,
        origin: &str,
        ops: &[latest::WriteOp],
    ) -> CallResult<Vec<Result<latest::Written, Error>>> {
        let ops: Vec<old::WriteOp> = ops.iter().map(write_op).collect();
        let results = self
            .guest()
            .call_write(s, config, stream, origin, &ops)
            .await?;
        Ok(results.map(|rs| {
            rs.into_iter()
                .map(|r| {
                    r.map(|w| latest::Written {
                        id: w.id,
                        version: w.version,
                        stored: Vec::new(),
                    })
                })
                .collect()
        }))
    }

    /// 0.1.0 answers carry no change time (see the module's comment).
    pub async fn find<S: AsContextMut<Data = StoreState>>(
        &self,
        s: S,
        config: &str,
        stream: &str,
        key: &latest::LookupKey,
    ) -> CallResult<Vec<latest::Current>> {
        let key = match key {
            latest::LookupKey::Ids(ids) => old::LookupKey::Ids(ids.clone()),
            latest::LookupKey::ByField(m) => old::LookupKey::ByField(old::FieldMatch {
                field: m.field.clone(),
                values: m.values.clone(),
                ignore_case: m.ignore_case,
            }),
        };
        let found = self.guest().call_find(s, config, stream, &key).await?;
        Ok(found.map(|found| {
            found
                .into_iter()
                .map(|c| latest::Current {
                    id: c.id,
                    fields: c.fields,
                    version: c.version,
                    changed_at: None,
                })
                .collect()
        }))
    }

    pub async fn watch<S: AsContextMut<Data = StoreState>>(
        &self,
        s: S,
        config: &str,
        timeout_ms: u32,
    ) -> CallResult<latest::Watched> {
        let watched = self.guest().call_watch(s, config, timeout_ms).await?;
        Ok(watched.map(|w| match w {
            old::Watched::Changed => latest::Watched::Changed,
            old::Watched::Timeout => latest::Watched::Timeout,
            old::Watched::Unsupported => latest::Watched::Unsupported,
        }))
    }

    /// Components of this version take no webhooks.
    pub async fn webhook<S: AsContextMut<Data = StoreState>>(
        &self,
        _: S,
        _: &str,
        _: &latest::WebhookRequest,
    ) -> CallResult<latest::WebhookAnswer> {
        Ok(Ok(latest::WebhookAnswer::Unsupported))
    }

    pub async fn remove_capture<S: AsContextMut<Data = StoreState>>(
        &self,
        s: S,
        config: &str,
        stream: Option<&str>,
    ) -> CallResult<()> {
        self.guest().call_remove_capture(s, config, stream).await
    }
}

fn stream(s: old::Stream) -> latest::Stream {
    latest::Stream {
        name: s.name,
        fields: s
            .fields
            .into_iter()
            .map(|f| latest::Field {
                name: f.name,
                type_: match f.type_ {
                    old::FieldType::Boolean => latest::FieldType::Boolean,
                    old::FieldType::Integer => latest::FieldType::Integer,
                    old::FieldType::Float => latest::FieldType::Float,
                    old::FieldType::Decimal => latest::FieldType::Decimal,
                    old::FieldType::Text => latest::FieldType::Text,
                    old::FieldType::Bytes => latest::FieldType::Bytes,
                    old::FieldType::Timestamp => latest::FieldType::Timestamp,
                    old::FieldType::Json => latest::FieldType::Json,
                },
                nullable: f.nullable,
                writable: f.writable,
                matchable: f.matchable,
                allowed: Vec::new(),
                unsupported: None,
            })
            .collect(),
        primary_key: s.primary_key,
    }
}

fn change(c: old::Change) -> latest::Change {
    latest::Change {
        id: c.id,
        kind: match c.kind {
            old::ChangeKind::Create => latest::ChangeKind::Create,
            old::ChangeKind::Update => latest::ChangeKind::Update,
            old::ChangeKind::Delete => latest::ChangeKind::Delete,
        },
        fields: c.fields,
        version: c.version,
        changed_at: c.changed_at,
        origin: c.origin,
    }
}

fn write_op(op: &latest::WriteOp) -> old::WriteOp {
    match op {
        latest::WriteOp::Create(c) => old::WriteOp::Create(old::CreateOp {
            fields: c.fields.clone(),
        }),
        latest::WriteOp::Update(u) => old::WriteOp::Update(old::UpdateOp {
            id: u.id.clone(),
            fields: u.fields.clone(),
            if_version: u.if_version.clone(),
        }),
        latest::WriteOp::Delete(d) => old::WriteOp::Delete(old::DeleteOp {
            id: d.id.clone(),
            if_version: d.if_version.clone(),
        }),
    }
}

// ---- A 0.1.0 rule called as the latest one: the resolver interface did not change.

resolve_as_latest!();
