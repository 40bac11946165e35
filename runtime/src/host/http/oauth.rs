//! OAuth 2.0 run by the host, so a plugin never holds a client secret, a refresh token or an
//! access token: the refresh-token grant (RFC 6749 section 6) and the client-credentials grant
//! (section 4.4). The access token lives in the host's memory only, one per connection, shared by
//! every store of it, and is fetched again a minute before it expires, or at once after the API
//! refused it (401).
//!
//! The token request goes through the same checks as a plugin's: its origin must be granted, its
//! address public unless granted as such.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

use super::secrets::{Secret, Secrets, Template};
use super::Origin;

/// How early an access token is replaced before it expires: a minute, or a quarter of its life
/// when that is shorter.
const EARLY: Duration = Duration::from_secs(60);
/// The longest a token answer may be.
const MAX_ANSWER: usize = 64 << 10;

/// Which grant the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    RefreshToken,
    ClientCredentials,
}

/// A connection's OAuth settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth {
    /// Requests to this origin get `Authorization: Bearer <access token>`.
    pub origin: Origin,
    /// Where tokens come from (its origin must be granted too).
    pub token_url: String,
    pub token_origin: Origin,
    pub flow: Flow,
    pub client_id: Template,
    pub client_secret: Template,
    /// For the refresh-token grant.
    pub refresh_token: Option<Template>,
    pub scope: Option<String>,
}

impl OAuth {
    /// The form the token endpoint is sent, secrets filled in. Never log it.
    fn form(&self, secrets: &Secrets) -> Result<String, String> {
        let mut fields = vec![
            (
                "grant_type",
                match self.flow {
                    Flow::RefreshToken => "refresh_token".to_owned(),
                    Flow::ClientCredentials => "client_credentials".to_owned(),
                },
            ),
            ("client_id", self.client_id.render(secrets)?),
            ("client_secret", self.client_secret.render(secrets)?),
        ];
        if let Some(t) = &self.refresh_token {
            fields.push(("refresh_token", t.render(secrets)?));
        }
        if let Some(s) = &self.scope {
            fields.push(("scope", s.clone()));
        }
        Ok(fields
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&"))
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The access tokens of every connection, in memory only.
#[derive(Debug, Default)]
pub struct Tokens {
    tokens: tokio::sync::Mutex<HashMap<Arc<str>, (Secret, Instant, Duration)>>,
}

impl Tokens {
    /// A valid access token for `connection`, fetched when there is none or it is about to
    /// expire. Holding the lock while fetching makes concurrent requests wait for one fetch.
    pub(super) async fn access_token(
        &self,
        connection: &Arc<str>,
        oauth: &OAuth,
        secrets: &Secrets,
        send: impl AsyncFnOnce(http::Request<WasiBody>) -> Result<(u16, Bytes), HttpError>,
    ) -> Result<Secret, HttpError> {
        let mut tokens = self.tokens.lock().await;
        if let Some((token, until, life)) = tokens.get(connection) {
            if Instant::now() + EARLY.min(*life / 4) < *until {
                return Ok(token.clone());
            }
        }
        let form = oauth.form(secrets).map_err(|e| {
            tracing::error!(%connection, "cannot run OAuth: {e}");
            HttpError::ConfigurationError
        })?;
        let request = http::Request::post(oauth.token_url.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::HOST, oauth.token_origin.authority())
            .body(
                Full::new(Bytes::from(form))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let (status, body) = send(request).await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            access_token: Option<String>,
            expires_in: Option<u64>,
            error: Option<String>,
        }
        let answer: Option<Answer> =
            serde_json::from_slice(&body[..body.len().min(MAX_ANSWER)]).ok();
        match answer {
            Some(Answer {
                access_token: Some(token),
                expires_in,
                ..
            }) if (200..300).contains(&status) => {
                let life = Duration::from_secs(expires_in.unwrap_or(3600));
                let token = Secret::new(token);
                tokens.insert(
                    connection.clone(),
                    (token.clone(), Instant::now() + life, life),
                );
                tracing::debug!(%connection, "fetched an OAuth access token, valid for {}s", expires_in.unwrap_or(3600));
                Ok(token)
            }
            other => {
                // The error code only: the body may echo what was sent.
                let code = other
                    .and_then(|a| a.error)
                    .unwrap_or_else(|| "no error code".into());
                tracing::error!(%connection, status, error = %code,
                    "the OAuth token endpoint refused the connection's credentials; check its client and refresh token secrets");
                if status >= 500 {
                    Err(HttpError::DestinationUnavailable)
                } else {
                    Err(HttpError::ConfigurationError)
                }
            }
        }
    }

    /// Forgets `connection`'s token: the API refused it.
    pub(super) async fn forget(&self, connection: &str) {
        self.tokens.lock().await.remove(connection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_forms() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
        assert_eq!(form_encode("abc-._~"), "abc-._~");
    }
}
