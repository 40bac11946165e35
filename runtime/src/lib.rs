//! Duplex: a self-hosted two-way sync runtime whose connectors and conflict rules are sandboxed
//! WebAssembly components.
//!
//! - [`plugin`] loads and runs components (wasmtime lives only there);
//! - [`host`] holds the capabilities plugins may be granted, one module each.

pub mod host;
pub mod inspect;
pub mod plugin;
pub mod time;
