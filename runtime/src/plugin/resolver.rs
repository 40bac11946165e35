//! A loaded conflict rule.

use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

use super::sandbox::{new_store, Sandbox};
use super::since_v0_1_0 as v0_1_0;
use super::since_v0_2_0 as v0_2_0;
use super::since_v0_3_0 as v0_3_0;
use super::since_v0_4_0 as v0_4_0;
use super::since_v0_5_0 as v0_5_0;
use super::world::Contract;
use super::{CallError, Conflict, Limits, LoadError, Origin, Purity, Resolution, StoreState};
use crate::bindings::{ResolverWorld, ResolverWorldPre};
use crate::host::{Caller, States};

/// A conflict rule, checked and linked. Every `resolve` runs in a fresh, deterministic store.
pub struct ResolverPlugin {
    caller: Caller,
    origin: Origin,
    engine: Engine,
    pre: Pre,
    limits: Limits,
}

/// A linked rule, by the contract version it was built for.
#[derive(Clone)]
enum Pre {
    Latest(ResolverWorldPre<StoreState>),
    V0_5_0(v0_5_0::ResolverWorldPre<StoreState>),
    V0_4_0(v0_4_0::ResolverWorldPre<StoreState>),
    V0_3_0(v0_3_0::ResolverWorldPre<StoreState>),
    V0_2_0(v0_2_0::ResolverWorldPre<StoreState>),
    V0_1_0(v0_1_0::ResolverWorldPre<StoreState>),
}

enum Exports {
    Latest(ResolverWorld),
    V0_5_0(v0_5_0::ResolverWorld),
    V0_4_0(v0_4_0::ResolverWorld),
    V0_3_0(v0_3_0::ResolverWorld),
    V0_2_0(v0_2_0::ResolverWorld),
    V0_1_0(v0_1_0::ResolverWorld),
}

impl ResolverPlugin {
    pub(crate) fn new(
        engine: &Engine,
        linker: &Linker<StoreState>,
        component: &Component,
        component_bytes: &[u8],
        contract: Contract,
        caller: Caller,
        limits: Limits,
    ) -> Result<ResolverPlugin, LoadError> {
        let link = |e: wasmtime::Error| LoadError::Link {
            plugin: caller.plugin.to_string(),
            message: format!("{e:#}"),
        };
        let pre = linker.instantiate_pre(component).map_err(link)?;
        let pre = match contract {
            Contract::Latest => Pre::Latest(ResolverWorldPre::new(pre).map_err(link)?),
            Contract::V0_5_0 => Pre::V0_5_0(v0_5_0::ResolverWorldPre::new(pre).map_err(link)?),
            Contract::V0_4_0 => Pre::V0_4_0(v0_4_0::ResolverWorldPre::new(pre).map_err(link)?),
            Contract::V0_3_0 => Pre::V0_3_0(v0_3_0::ResolverWorldPre::new(pre).map_err(link)?),
            Contract::V0_2_0 => Pre::V0_2_0(v0_2_0::ResolverWorldPre::new(pre).map_err(link)?),
            Contract::V0_1_0 => Pre::V0_1_0(v0_1_0::ResolverWorldPre::new(pre).map_err(link)?),
        };
        Ok(ResolverPlugin {
            origin: Origin::of(component_bytes, contract),
            caller,
            engine: engine.clone(),
            pre,
            limits,
        })
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Which build of the rule this is.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The rule's plugin and the start of its content hash, as decisions record it.
    pub fn label(&self) -> String {
        format!("{} sha256:{}", self.caller.plugin, self.origin.short())
    }

    /// Decides a batch of conflicts: exactly one resolution each, in order.
    pub async fn resolve(&self, conflicts: Vec<Conflict>) -> Result<Vec<Resolution>, CallError> {
        let store = new_store(
            &self.engine,
            self.caller.clone(),
            &self.limits,
            Purity::Deterministic,
            States::nothing(&self.caller),
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
        let expected = conflicts.len();
        let resolutions = sandbox
            .call("resolve", move |b, s| {
                Box::pin(async move {
                    match b {
                        Exports::Latest(b) => {
                            b.duplex_plugin_resolver().call_resolve(s, &conflicts).await
                        }
                        Exports::V0_5_0(b) => v0_5_0::resolve(b, s, &conflicts).await,
                        Exports::V0_4_0(b) => v0_4_0::resolve(b, s, &conflicts).await,
                        Exports::V0_3_0(b) => v0_3_0::resolve(b, s, &conflicts).await,
                        Exports::V0_2_0(b) => v0_2_0::resolve(b, s, &conflicts).await,
                        Exports::V0_1_0(b) => v0_1_0::resolve(b, s, &conflicts).await,
                    }
                })
            })
            .await?;
        if resolutions.len() != expected {
            return Err(CallError::Contract {
                caller: self.caller.clone(),
                func: "resolve",
                message: format!("{} resolutions for {expected} conflicts", resolutions.len()),
            });
        }
        Ok(resolutions)
    }
}
