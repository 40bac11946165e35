//! The `signing` capability: keyed hashes with the connection's secrets, by name, so that a
//! connector verifies what a system signed (a webhook) without ever holding the secret. The
//! secrets are the connection's `secrets` table, read by the host; a name the connection does
//! not have is a config error naming it.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::bindings::duplex::plugin::signing as wit;
use crate::bindings::duplex::plugin::types::Error;
use crate::host::{Caller, Capability, Grants, HasHost, HostData, HostView};

pub const CAPABILITY: Capability = Capability {
    name: "signing",
    interfaces: &["duplex:plugin/signing"],
    offered_to_rules: false,
    refused_ungranted: false,
    gives: "signing: HMAC-SHA256 keyed by the connection's secrets, by name (the plugin never holds them)",
    granted: |g| g.http.secrets.values().next().is_some(),
};

/// Per-store state of the capability: the connection's grants, whose secrets key the hashes.
pub struct SigningState {
    caller: Caller,
    grants: Arc<Grants>,
}

impl SigningState {
    pub fn new(caller: Caller, grants: Arc<Grants>) -> Self {
        SigningState { caller, grants }
    }
}

/// HMAC-SHA256 of `message` keyed with `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    // An HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// The one place `signing` links into wasmtime.
pub fn link<T: HostData>(linker: &mut wasmtime::component::Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasHost>(linker, T::host)
}

impl wit::Host for HostView<'_> {
    async fn hmac_sha256(
        &mut self,
        name: String,
        message: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        let state = &self.states.signing;
        let Some(secret) = state.grants.http.secrets.get(&name) else {
            tracing::warn!(plugin = %state.caller.plugin, connection = %state.caller.connection,
                secret = %name, "the plugin asked for a hash keyed by a secret the connection does not name");
            return Ok(Err(Error::Config(format!(
                "connection {} names no secret {name}; add secrets.{name} to it",
                state.caller.connection
            ))));
        };
        Ok(Ok(hmac_sha256(secret.expose().as_bytes(), &message)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test cases 1 and 2.
    #[test]
    fn hmac_sha256_gives_the_rfc_4231_answers() {
        let case1 = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(
            hex::encode(case1),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let case2 = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(case2),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
