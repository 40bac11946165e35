//! A loaded connector and its sessions.

use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

use super::bindings::{ConnectorWorld, ConnectorWorldPre};
use super::sandbox::{new_store, Sandbox};
use super::{
    CallError, ChangeBatch, ConnectorInfo, Current, Limits, LoadError, LookupKey, Purity,
    StoreState, Stream, WitError, WriteOp, Written,
};
use crate::host::sql::SqlState;
use crate::host::Caller;

/// A connector, checked and linked for one connection. Cheap to keep; each unit of work opens a
/// [`ConnectorSession`].
pub struct ConnectorPlugin {
    caller: Caller,
    engine: Engine,
    pre: ConnectorWorldPre<StoreState>,
    limits: Limits,
    granted_sql: std::sync::Arc<[String]>,
    pools: std::sync::Arc<crate::host::sql::Pools>,
    info: ConnectorInfo,
}

impl ConnectorPlugin {
    pub(crate) async fn new(
        engine: &Engine,
        linker: &Linker<StoreState>,
        component: &Component,
        caller: Caller,
        limits: Limits,
        granted_sql: std::sync::Arc<[String]>,
        pools: std::sync::Arc<crate::host::sql::Pools>,
    ) -> Result<ConnectorPlugin, LoadError> {
        let link = |e: wasmtime::Error| LoadError::Link {
            plugin: caller.plugin.to_string(),
            message: format!("{e:#}"),
        };
        let pre = linker.instantiate_pre(component).map_err(link)?;
        let pre = ConnectorWorldPre::new(pre).map_err(link)?;
        let mut plugin = ConnectorPlugin {
            caller: caller.clone(),
            engine: engine.clone(),
            pre,
            limits,
            granted_sql,
            pools,
            info: ConnectorInfo {
                name: String::new(),
                version: String::new(),
                config_schema: String::new(),
                capabilities: super::Capabilities::empty(),
            },
        };
        let start = |e: CallError| LoadError::Start {
            plugin: caller.plugin.to_string(),
            source: Box::new(e),
        };
        let info = plugin
            .session()
            .await
            .map_err(start)?
            .info()
            .await
            .map_err(start)?;
        plugin.info = info;
        Ok(plugin)
    }

    /// Who the connector says it is (asked once, at load).
    pub fn info(&self) -> &ConnectorInfo {
        &self.info
    }

    /// The plugin and connection this connector serves.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// A fresh store and instance for one unit of work.
    pub async fn session(&self) -> Result<ConnectorSession, CallError> {
        let store = new_store(
            &self.engine,
            self.caller.clone(),
            &self.limits,
            Purity::Connector,
            SqlState::new(
                self.caller.clone(),
                self.granted_sql.clone(),
                self.pools.clone(),
            ),
        );
        let mut sandbox = Sandbox::new(store, self.limits);
        let pre = self.pre.clone();
        sandbox
            .instantiate(move |store| Box::pin(async move { pre.instantiate_async(store).await }))
            .await?;
        Ok(ConnectorSession { sandbox })
    }
}

/// One store with one connector instance. Dropped at the end of the unit of work; after any
/// trap or timeout every further call fails with [`CallError::Poisoned`].
pub struct ConnectorSession {
    sandbox: Sandbox<ConnectorWorld>,
}

impl ConnectorSession {
    /// Turns the plugin's own typed error into a [`CallError::Plugin`].
    fn typed<T>(
        &self,
        func: &'static str,
        r: Result<Result<T, WitError>, CallError>,
    ) -> Result<T, CallError> {
        r?.map_err(|error| CallError::Plugin {
            caller: self.sandbox.caller().clone(),
            func,
            error,
        })
    }

    pub async fn info(&mut self) -> Result<ConnectorInfo, CallError> {
        self.sandbox
            .call("info", |b, s| {
                Box::pin(async move { b.duplex_plugin_connector().call_info(s).await })
            })
            .await
    }

    pub async fn check(&mut self, config: &str) -> Result<(), CallError> {
        let config = config.to_owned();
        let r = self
            .sandbox
            .call("check", move |b, s| {
                Box::pin(async move { b.duplex_plugin_connector().call_check(s, &config).await })
            })
            .await;
        self.typed("check", r)
    }

    pub async fn discover(&mut self, config: &str) -> Result<Vec<Stream>, CallError> {
        let config = config.to_owned();
        let r = self
            .sandbox
            .call("discover", move |b, s| {
                Box::pin(async move { b.duplex_plugin_connector().call_discover(s, &config).await })
            })
            .await;
        self.typed("discover", r)
    }

    /// Reads up to `max` changes of `stream` after `cursor`.
    pub async fn read(
        &mut self,
        config: &str,
        stream: &str,
        origin: &str,
        cursor: Option<&str>,
        max: u32,
    ) -> Result<ChangeBatch, CallError> {
        let (config, stream, origin, cursor) = (
            config.to_owned(),
            stream.to_owned(),
            origin.to_owned(),
            cursor.map(str::to_owned),
        );
        let r = self
            .sandbox
            .call("read", move |b, s| {
                Box::pin(async move {
                    b.duplex_plugin_connector()
                        .call_read(s, &config, &stream, &origin, cursor.as_deref(), max)
                        .await
                })
            })
            .await;
        self.typed("read", r)
    }

    /// Applies `ops`; exactly one result per op, in order.
    pub async fn write(
        &mut self,
        config: &str,
        stream: &str,
        origin: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Written, WitError>>, CallError> {
        let expected = ops.len();
        let (config, stream, origin) = (config.to_owned(), stream.to_owned(), origin.to_owned());
        let r = self
            .sandbox
            .call("write", move |b, s| {
                Box::pin(async move {
                    b.duplex_plugin_connector()
                        .call_write(s, &config, &stream, &origin, &ops)
                        .await
                })
            })
            .await;
        let results = self.typed("write", r)?;
        // The host pairs results with records by position; a miscount would pair them wrongly.
        if results.len() != expected {
            return Err(CallError::Contract {
                caller: self.sandbox.caller().clone(),
                func: "write",
                message: format!("{} results for {expected} operations", results.len()),
            });
        }
        Ok(results)
    }

    pub async fn find(
        &mut self,
        config: &str,
        stream: &str,
        key: LookupKey,
    ) -> Result<Vec<Current>, CallError> {
        let (config, stream) = (config.to_owned(), stream.to_owned());
        let r = self
            .sandbox
            .call("find", move |b, s| {
                Box::pin(async move {
                    b.duplex_plugin_connector()
                        .call_find(s, &config, &stream, &key)
                        .await
                })
            })
            .await;
        self.typed("find", r)
    }

    /// Waits up to `timeout_ms` for the system to announce changes.
    pub async fn watch(
        &mut self,
        config: &str,
        timeout_ms: u32,
    ) -> Result<super::Watched, CallError> {
        let config = config.to_owned();
        let r = self
            .sandbox
            .call("watch", move |b, s| {
                Box::pin(async move {
                    b.duplex_plugin_connector()
                        .call_watch(s, &config, timeout_ms)
                        .await
                })
            })
            .await;
        self.typed("watch", r)
    }

    pub async fn remove_capture(
        &mut self,
        config: &str,
        stream: Option<&str>,
    ) -> Result<(), CallError> {
        let (config, stream) = (config.to_owned(), stream.map(str::to_owned));
        let r = self
            .sandbox
            .call("remove-capture", move |b, s| {
                Box::pin(async move {
                    b.duplex_plugin_connector()
                        .call_remove_capture(s, &config, stream.as_deref())
                        .await
                })
            })
            .await;
        self.typed("remove-capture", r)
    }
}
