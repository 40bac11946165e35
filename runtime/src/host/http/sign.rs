//! Request signing by the host: for APIs that authenticate a request by an HMAC of its parts, the
//! host computes HMAC-SHA256 with a secret the plugin never sees and adds it as a header, as the
//! request leaves the sandbox.
//!
//! What is signed is a template over the request: `{method}`, `{path}` (with the query),
//! `{timestamp}` (Unix seconds, also sent in `timestamp_header` when one is named) and `{body}`;
//! the signature is sent hex or base64 encoded, after an optional prefix (`sha256=`).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{HeaderName, HeaderValue};
use sha2::Sha256;

use super::secrets::{sensitive, Secrets};
use super::Origin;

/// How the signature is written into its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

/// One signing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub origin: Origin,
    pub header: HeaderName,
    /// The name of the secret that keys the HMAC.
    pub secret: String,
    message: String,
    encoding: Encoding,
    prefix: String,
    pub timestamp_header: Option<HeaderName>,
}

const PARTS: [&str; 4] = ["method", "path", "timestamp", "body"];

impl Signature {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        origin: Origin,
        header: &str,
        secret: &str,
        message: &str,
        encoding: &str,
        prefix: &str,
        timestamp_header: Option<&str>,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Signature, String> {
        let name =
            |h: &str| HeaderName::try_from(h).map_err(|_| format!("{h:?} is not a header name"));
        if !known(secret) {
            return Err(format!(
                "secret {secret} is not one of the connection's secrets"
            ));
        }
        let mut rest = message;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("{message:?} opens a {{ it does not close"))?;
            let part = &after[..close];
            if !PARTS.contains(&part) {
                return Err(format!(
                    "{{{part}}} is not a part of a request that can be signed ({})",
                    PARTS.map(|p| format!("{{{p}}}")).join(", ")
                ));
            }
            rest = &after[close + 1..];
        }
        let encoding = match encoding {
            "hex" => Encoding::Hex,
            "base64" => Encoding::Base64,
            other => return Err(format!("encoding {other:?} is not hex or base64")),
        };
        Ok(Signature {
            origin,
            header: name(header)?,
            secret: secret.to_owned(),
            message: message.to_owned(),
            encoding,
            prefix: prefix.to_owned(),
            timestamp_header: timestamp_header.map(name).transpose()?,
        })
    }

    /// The signature header's value (and the timestamp's) for one request.
    pub fn sign(
        &self,
        secrets: &Secrets,
        method: &str,
        path: &str,
        body: &[u8],
        timestamp: u64,
    ) -> Result<(HeaderValue, Option<HeaderValue>), String> {
        let key = secrets
            .get(&self.secret)
            .ok_or_else(|| format!("secret {} was not loaded", self.secret))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
            .map_err(|e| format!("secret {} cannot key an HMAC: {e}", self.secret))?;
        let mut rest = self.message.as_str();
        while let Some(open) = rest.find('{') {
            mac.update(&rest.as_bytes()[..open]);
            let after = &rest[open + 1..];
            let close = after.find('}').unwrap_or(after.len());
            match &after[..close] {
                "method" => mac.update(method.as_bytes()),
                "path" => mac.update(path.as_bytes()),
                "timestamp" => mac.update(timestamp.to_string().as_bytes()),
                "body" => mac.update(body),
                _ => {}
            }
            rest = after.get(close + 1..).unwrap_or_default();
        }
        mac.update(rest.as_bytes());
        let digest = mac.finalize().into_bytes();
        let encoded = match self.encoding {
            Encoding::Hex => hex::encode(digest),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(digest),
        };
        let value = sensitive(&format!("{}{encoded}", self.prefix))
            .map_err(|_| format!("the prefix of header {} is not a header value", self.header))?;
        let stamp = self
            .timestamp_header
            .as_ref()
            .map(|_| HeaderValue::from(timestamp));
        Ok((value, stamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::http::Secret;

    #[test]
    fn signs_the_parts_named_with_the_secret() {
        let mut secrets = Secrets::default();
        secrets.insert("key", Secret::new("key"));
        let origin = Origin::parse("https://api.example.com").unwrap();
        let s = Signature::new(
            origin.clone(),
            "X-Signature",
            "key",
            "{body}",
            "hex",
            "sha256=",
            None,
            &|n| n == "key",
        )
        .unwrap();
        // RFC 4231-style check against a known HMAC-SHA256: key "key", message
        // "The quick brown fox jumps over the lazy dog".
        let (v, _) = s
            .sign(
                &secrets,
                "POST",
                "/",
                b"The quick brown fox jumps over the lazy dog",
                0,
            )
            .unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        assert!(v.is_sensitive());
        let bad = Signature::new(
            origin.clone(),
            "X-Sig",
            "key",
            "{nonce}",
            "hex",
            "",
            None,
            &|_| true,
        );
        assert!(bad.unwrap_err().contains("{nonce}"));
        assert!(
            Signature::new(origin, "X-Sig", "nokey", "{body}", "hex", "", None, &|n| n
                == "key")
            .is_err()
        );
    }
}
