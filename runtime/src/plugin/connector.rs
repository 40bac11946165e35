//! A loaded connector and its sessions.

use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

use super::sandbox::{new_store, Sandbox};
use super::since_v0_1_0::{self as v0_1_0, Connector as V0_1_0};
use super::since_v0_2_0::{self as v0_2_0, Connector as V0_2_0};
use super::since_v0_3_0::{self as v0_3_0, Connector as V0_3_0};
use super::since_v0_4_0::{self as v0_4_0, Connector as V0_4_0};
use super::since_v0_5_0::{self as v0_5_0, Connector as V0_5_0};
use super::world::Contract;
use super::{
    CallError, ChangeBatch, ConnectorInfo, Current, Limits, LoadError, LookupKey, Purity,
    StoreState, Stream, WitError, WriteOp, Written,
};
use crate::bindings::{ConnectorWorld, ConnectorWorldPre};
use crate::host::{Caller, Grants, Shared, States};

/// A connector, checked and linked for one connection. Cheap to keep; each unit of work opens a
/// [`ConnectorSession`].
pub struct ConnectorPlugin {
    caller: Caller,
    origin: super::Origin,
    engine: Engine,
    pre: Pre,
    limits: Limits,
    grants: std::sync::Arc<Grants>,
    shared: std::sync::Arc<Shared>,
    info: ConnectorInfo,
}

/// A linked component, by the contract version it was built for.
#[derive(Clone)]
enum Pre {
    Latest(ConnectorWorldPre<StoreState>),
    V0_5_0(v0_5_0::ConnectorWorldPre<StoreState>),
    V0_4_0(v0_4_0::ConnectorWorldPre<StoreState>),
    V0_3_0(v0_3_0::ConnectorWorldPre<StoreState>),
    V0_2_0(v0_2_0::ConnectorWorldPre<StoreState>),
    V0_1_0(v0_1_0::ConnectorWorldPre<StoreState>),
}

/// An instance's exports, by the contract version it was built for.
enum Exports {
    Latest(ConnectorWorld),
    V0_5_0(v0_5_0::ConnectorWorld),
    V0_4_0(v0_4_0::ConnectorWorld),
    V0_3_0(v0_3_0::ConnectorWorld),
    V0_2_0(v0_2_0::ConnectorWorld),
    V0_1_0(v0_1_0::ConnectorWorld),
}

/// Calls one export (`call_find` on the latest bindings, `find` on the adapter), of whichever
/// contract version the instance has, with the latest types.
macro_rules! export {
    ($b:expr, $s:expr, $latest:ident / $old:ident($($arg:expr),*)) => {
        match $b {
            Exports::Latest(b) => b.duplex_plugin_connector().$latest($s, $($arg),*).await,
            Exports::V0_5_0(b) => V0_5_0(b).$old($s, $($arg),*).await,
            Exports::V0_4_0(b) => V0_4_0(b).$old($s, $($arg),*).await,
            Exports::V0_3_0(b) => V0_3_0(b).$old($s, $($arg),*).await,
            Exports::V0_2_0(b) => V0_2_0(b).$old($s, $($arg),*).await,
            Exports::V0_1_0(b) => V0_1_0(b).$old($s, $($arg),*).await,
        }
    };
}

impl ConnectorPlugin {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn new(
        engine: &Engine,
        linker: &Linker<StoreState>,
        component: &Component,
        component_bytes: &[u8],
        contract: Contract,
        caller: Caller,
        limits: Limits,
        grants: std::sync::Arc<Grants>,
        shared: std::sync::Arc<Shared>,
    ) -> Result<ConnectorPlugin, LoadError> {
        let link = |e: wasmtime::Error| LoadError::Link {
            plugin: caller.plugin.to_string(),
            message: format!("{e:#}"),
        };
        let pre = linker.instantiate_pre(component).map_err(link)?;
        let pre = match contract {
            Contract::Latest => Pre::Latest(ConnectorWorldPre::new(pre).map_err(link)?),
            Contract::V0_5_0 => Pre::V0_5_0(v0_5_0::ConnectorWorldPre::new(pre).map_err(link)?),
            Contract::V0_4_0 => Pre::V0_4_0(v0_4_0::ConnectorWorldPre::new(pre).map_err(link)?),
            Contract::V0_3_0 => Pre::V0_3_0(v0_3_0::ConnectorWorldPre::new(pre).map_err(link)?),
            Contract::V0_2_0 => Pre::V0_2_0(v0_2_0::ConnectorWorldPre::new(pre).map_err(link)?),
            Contract::V0_1_0 => Pre::V0_1_0(v0_1_0::ConnectorWorldPre::new(pre).map_err(link)?),
        };
        let mut plugin = ConnectorPlugin {
            origin: super::Origin::of(component_bytes, contract),
            caller: caller.clone(),
            engine: engine.clone(),
            pre,
            limits,
            grants,
            shared,
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

    /// Which build of the connector this is.
    pub fn origin(&self) -> &super::Origin {
        &self.origin
    }

    /// The plugin and connection this connector serves.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// A fresh store and instance for one unit of work.
    pub async fn session(&self) -> Result<ConnectorSession, CallError> {
        self.session_of(None).await
    }

    /// A session whose waits for changes (`watch`) are `waiter`'s: one side of one sync. Each
    /// waiter hears of every change announced since its own last wait (see
    /// `host::sql::changes`).
    pub async fn session_waiting_as(&self, waiter: &str) -> Result<ConnectorSession, CallError> {
        self.session_of(Some(waiter)).await
    }

    async fn session_of(&self, waiter: Option<&str>) -> Result<ConnectorSession, CallError> {
        let mut states = States::new(&self.caller, &self.grants, &self.shared);
        if let Some(w) = waiter {
            states.sql.waiting_as(w);
        }
        let store = new_store(
            &self.engine,
            self.caller.clone(),
            &self.limits,
            Purity::Connector,
            states,
        );
        let mut sandbox = Sandbox::new(store, self.limits);
        let pre = self.pre.clone();
        sandbox
            .instantiate(move |store| {
                Box::pin(async move {
                    Ok(match pre {
                        Pre::Latest(p) => Exports::Latest(p.instantiate_async(store).await?),
                        Pre::V0_5_0(p) => Exports::V0_5_0(p.instantiate_async(store).await?),
                        Pre::V0_4_0(p) => Exports::V0_4_0(p.instantiate_async(store).await?),
                        Pre::V0_3_0(p) => Exports::V0_3_0(p.instantiate_async(store).await?),
                        Pre::V0_2_0(p) => Exports::V0_2_0(p.instantiate_async(store).await?),
                        Pre::V0_1_0(p) => Exports::V0_1_0(p.instantiate_async(store).await?),
                    })
                })
            })
            .await?;
        Ok(ConnectorSession { sandbox })
    }
}

/// One store with one connector instance. Dropped at the end of the unit of work; after any
/// trap or timeout every further call fails with [`CallError::Poisoned`].
pub struct ConnectorSession {
    sandbox: Sandbox<Exports>,
}

impl ConnectorSession {
    /// Turns the plugin's own typed error into a [`CallError::Plugin`]. A rate limit the plugin
    /// reports holds back its connection's HTTP requests (every sync's using it, no other
    /// connection's) for as long as the remote system asked.
    fn typed<T>(
        &self,
        func: &'static str,
        r: Result<Result<T, WitError>, CallError>,
    ) -> Result<T, CallError> {
        r?.map_err(|error| {
            if let WitError::RateLimited(limit) = &error {
                let wait = std::time::Duration::from_millis(limit.retry_after_ms);
                self.sandbox.state().host.http.back_off(wait);
            }
            CallError::Plugin {
                caller: self.sandbox.caller().clone(),
                func,
                error,
            }
        })
    }

    pub async fn info(&mut self) -> Result<ConnectorInfo, CallError> {
        self.sandbox
            .call("info", |b, s| {
                Box::pin(async move { export!(b, s, call_info / info()) })
            })
            .await
    }

    pub async fn check(&mut self, config: &str) -> Result<(), CallError> {
        let config = config.to_owned();
        let r = self
            .sandbox
            .call("check", move |b, s| {
                Box::pin(async move { export!(b, s, call_check / check(&config)) })
            })
            .await;
        self.typed("check", r)
    }

    pub async fn discover(&mut self, config: &str) -> Result<Vec<Stream>, CallError> {
        let config = config.to_owned();
        let r = self
            .sandbox
            .call("discover", move |b, s| {
                Box::pin(async move { export!(b, s, call_discover / discover(&config)) })
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
                    export!(
                        b,
                        s,
                        call_read / read(&config, &stream, &origin, cursor.as_deref(), max)
                    )
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
                    export!(b, s, call_write / write(&config, &stream, &origin, &ops))
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
                Box::pin(async move { export!(b, s, call_find / find(&config, &stream, &key)) })
            })
            .await;
        self.typed("find", r)
    }

    /// Waits up to `timeout_ms` for the system to announce changes. With the answer comes the
    /// wait the call came down to, when the host can make it again in the connector's place:
    /// the connector waited once for a database's announcements (`wait-for-change`), did
    /// nothing with a database after it nor asked for any request, and answered what the wait
    /// found. A `watch` depends on its config alone (the contract says so), so the next wait
    /// of the same side needs no instance.
    pub async fn watch(
        &mut self,
        config: &str,
        timeout_ms: u32,
    ) -> Result<(super::Watched, Option<crate::host::sql::Wait>), CallError> {
        let config = config.to_owned();
        let state = self.sandbox.state_mut();
        state.host.sql.trace_from_here();
        let asked = state.host.http.asked();
        let r = self
            .sandbox
            .call("watch", move |b, s| {
                Box::pin(async move { export!(b, s, call_watch / watch(&config, timeout_ms)) })
            })
            .await;
        let watched = self.typed("watch", r)?;
        let host = &self.sandbox.state().host;
        let again = match (host.sql.only_wait(), &watched) {
            (Some((wait, true)), super::Watched::Changed)
            | (Some((wait, false)), super::Watched::Timeout)
                if host.http.asked() == asked =>
            {
                Some(wait)
            }
            _ => None,
        };
        Ok((watched, again))
    }

    /// Hands a pushed request to the connector to verify: whether changes are waiting.
    pub async fn webhook(
        &mut self,
        config: &str,
        request: super::WebhookRequest,
    ) -> Result<super::WebhookAnswer, CallError> {
        let config = config.to_owned();
        let r = self
            .sandbox
            .call("webhook", move |b, s| {
                Box::pin(async move { export!(b, s, call_webhook / webhook(&config, &request)) })
            })
            .await;
        self.typed("webhook", r)
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
                    export!(
                        b,
                        s,
                        call_remove_capture / remove_capture(&config, stream.as_deref())
                    )
                })
            })
            .await;
        self.typed("remove-capture", r)
    }
}
