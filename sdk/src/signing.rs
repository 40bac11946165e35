//! Keyed hashes by a secret's name: the host holds the connection's secrets and computes, so a
//! connector verifies what a system signed (a webhook) without ever holding the secret.

use crate::Error;

/// HMAC-SHA256 of `message` keyed with the connection's secret `name` (`secrets.NAME` in its
/// config). An unknown name is `Error::Config`.
pub fn hmac_sha256(name: &str, message: &[u8]) -> Result<Vec<u8>, Error> {
    crate::bindings::duplex::plugin::signing::hmac_sha256(name, message)
}

/// Compares two byte strings in time that does not depend on where they differ, as a
/// signature check must.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}
