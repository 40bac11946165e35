//! The CLI's way into a running instance: the API over its local socket.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::de::DeserializeOwned;
use wasmtime_wasi_http::io::TokioIo;

/// A running `duplex run` or `duplex serve`, reached through its local socket.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// The instance running on this state file, if one answers.
    pub async fn find(state: &Path) -> Option<Client> {
        let socket = super::Listeners::local_path(state);
        tokio::net::UnixStream::connect(&socket)
            .await
            .ok()
            .map(|_| Client { socket })
    }

    /// Calls the API; an answer other than 2xx is an error with the API's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let body = body.map(|b| ("application/json", Bytes::from(b.to_string())));
        self.send(method, path, body).await
    }

    /// Calls the API with a body of another type (an uploaded component).
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<T> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("the running duplex ({}) went away", self.socket.display()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("the running duplex does not speak HTTP")?;
        let conn = tokio::spawn(conn);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost");
        let payload = match body {
            Some((content_type, b)) => {
                request = request.header(http::header::CONTENT_TYPE, content_type);
                b
            }
            None => Bytes::new(),
        };
        let response = sender
            .send_request(request.body(Full::new(payload))?)
            .await
            .context("the running duplex did not answer")?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        conn.abort();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{message}");
        }
        serde_json::from_slice(&bytes).with_context(|| format!("the answer to {method} {path}"))
    }
}
