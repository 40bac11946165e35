//! The Duplex plugin SDK: write a connector or a conflict rule as a WebAssembly component.
//!
//! Implement [`Connector`] (feature `connector`) or [`Resolver`] (feature `resolver`) and
//! register the type with [`register_connector!`] or [`register_resolver!`]; build with
//! `cargo build --target wasm32-wasip2 --release`; the `.wasm` file is the plugin. The bindings
//! generated from `wit/` stay private: only the types re-exported here are the SDK's API, so a
//! new hook added to the contract (with a default) breaks no one.
//!
//! A crate builds one world: depend on the SDK with `default-features = false` and exactly one of
//! the `connector` or `resolver` features.

#[cfg(all(target_arch = "wasm32", feature = "connector", feature = "resolver"))]
compile_error!(
    "duplex-sdk: a component implements one world; depend on duplex-sdk with \
     `default-features = false` and one of the features `connector` or `resolver`"
);

#[cfg(not(any(feature = "connector", feature = "resolver")))]
compile_error!("duplex-sdk: enable one of the features `connector` or `resolver`");

#[cfg(feature = "connector")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "connector-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_connector_world",
        default_bindings_module: "duplex_sdk::__private::bindings",
        additional_derives: [PartialEq, Clone],
    });
}

#[cfg(feature = "resolver")]
#[doc(hidden)]
pub mod resolver_bindings {
    #[cfg(feature = "connector")]
    wit_bindgen::generate!({
        world: "resolver-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_resolver_world",
        default_bindings_module: "duplex_sdk::__private::resolver_bindings",
        additional_derives: [PartialEq, Clone],
        with: { "duplex:plugin/types@0.6.0": crate::bindings::duplex::plugin::types },
        type_section_suffix: "resolver",
    });
    #[cfg(not(feature = "connector"))]
    wit_bindgen::generate!({
        world: "resolver-plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_resolver_world",
        default_bindings_module: "duplex_sdk::__private::resolver_bindings",
        additional_derives: [PartialEq, Clone],
    });
}

#[cfg(feature = "connector")]
use bindings::duplex::plugin::types as wit_types;
#[cfg(all(feature = "resolver", not(feature = "connector")))]
use resolver_bindings::duplex::plugin::types as wit_types;

mod value;
pub use value::{Error, FieldValue, Invalid, RateLimit, Timestamp, Value};

#[cfg(feature = "connector")]
mod connector;
#[cfg(feature = "connector")]
pub use connector::{
    Capabilities, Change, ChangeBatch, ChangeKind, Connector, CreateOp, Current, DeleteOp, Field,
    FieldMatch, FieldType, Info, LookupKey, Stream, UpdateOp, Watched, WebhookAnswer,
    WebhookRequest, WriteOp, Written,
};
#[cfg(feature = "connector")]
pub mod feed;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "connector")]
pub mod log;
#[cfg(feature = "connector")]
pub mod signing;
#[cfg(feature = "connector")]
pub mod sql;

#[cfg(feature = "resolver")]
mod resolver;
#[cfg(feature = "resolver")]
pub use resolver::{Conflict, Resolution, Resolver, Side};

/// Used by the registration macros; not part of the API.
#[doc(hidden)]
pub mod __private {
    #[cfg(feature = "connector")]
    pub use crate::bindings;
    #[cfg(feature = "connector")]
    pub use crate::connector::adapter as connector;
    #[cfg(feature = "resolver")]
    pub use crate::resolver::adapter as resolver;
    #[cfg(feature = "resolver")]
    pub use crate::resolver_bindings;
}
