//! Host-side bindings generated from `wit/`, below both `host` (which implements the imports)
//! and `plugin` (which calls the exports). The rest of the runtime sees the types `plugin`
//! re-exports.

#![allow(missing_docs, clippy::all)]

mod connector_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "connector-plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        additional_derives: [PartialEq],
        with: {
            "duplex:plugin/sql.connection": crate::host::sql::Connection,
        },
    });
}

mod resolver_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "resolver-plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        additional_derives: [PartialEq],
        with: {
            "duplex:plugin/types": super::connector_world::duplex::plugin::types,
        },
    });
}

pub use connector_world::duplex;
pub use connector_world::exports::duplex::plugin::connector;
pub use connector_world::{
    ConnectorPlugin as ConnectorWorld, ConnectorPluginPre as ConnectorWorldPre,
};
pub use resolver_world::exports::duplex::plugin::resolver;
pub use resolver_world::{ResolverPlugin as ResolverWorld, ResolverPluginPre as ResolverWorldPre};
