//! Logging into the host's log, tagged there with the plugin and connection.

use crate::bindings::duplex::plugin::log::{log, Level};

/// Logs a debugging detail.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}
/// Logs a routine event.
pub fn info(message: &str) {
    log(Level::Info, message);
}
/// Logs something that may need attention.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}
/// Logs something a person must act on.
pub fn error(message: &str) {
    log(Level::Error, message);
}
