//! Duplex: a self-hosted two-way sync runtime whose connectors and conflict rules are sandboxed
//! WebAssembly components.
//!
//! - [`plugin`] loads and runs components (wasmtime lives only there);
//! - [`host`] holds the capabilities plugins may be granted, one module each.

pub mod api;
pub mod app;
pub mod background;
pub(crate) mod bindings;
pub mod config;
pub mod demo;
pub mod driver;
pub mod engine;
pub mod host;
pub mod inspect;
pub mod ops;
pub mod plugin;
pub mod report;
pub mod schema;
pub mod state;
pub mod telemetry;
pub mod time;
