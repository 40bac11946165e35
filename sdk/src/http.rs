//! HTTP for connectors (feature `http`): requests through the standard `wasi:http`, which the
//! host checks against the connection's `grants.http` and to which it adds the connection's
//! credentials. A connector never holds a token: it sends the request, the host signs it.
//!
//! Status codes map to the contract's errors ([`status_error`]), so a connector's `?` does the
//! right thing: 401/403 stop the sync for a person, 409 is a conflict, 400/422 reject the record,
//! 429 backs the connection off for its `Retry-After`, 5xx and lost connections are retried.
//!
//! ```no_run
//! use duplex_sdk::http::Client;
//! # fn demo() -> Result<(), duplex_sdk::Error> {
//! let api = Client::new("https://api.example.com");
//! let page: serde_json::Value = api.get_json("/v1/contacts?limit=100")?;
//! let made: serde_json::Value = api.post_json("/v1/contacts", &serde_json::json!({"email": "a@b.c"}))?;
//! # Ok(()) }
//! ```

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method as WasiMethod, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};

use crate::{Error, RateLimit};

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    pub fn new(method: Method, url: impl Into<String>) -> Request {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A JSON body, with its content type.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Result<Request, Error> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| Error::permanent(format!("cannot encode the request body: {e}")))?;
        self.body = Some(bytes);
        Ok(self
            .header("content-type", "application/json")
            .header("accept", "application/json"))
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::permanent(format!(
                "the response ({} bytes, status {}) is not the JSON expected: {e}",
                self.body.len(),
                self.status
            ))
        })
    }

    /// The response if its status is 2xx, else the error its status means.
    pub fn success(self) -> Result<Response, Error> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        Err(status_error(
            self.status,
            &String::from_utf8_lossy(&self.body),
            self.header("retry-after"),
        ))
    }
}

/// The contract's error for an unsuccessful status. `body` is what the server said (cut to
/// 500 characters); `retry_after` the `Retry-After` header, in seconds.
pub fn status_error(status: u16, body: &str, retry_after: Option<&str>) -> Error {
    let said: String = body.trim().chars().take(500).collect();
    let message = if said.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {said}")
    };
    match status {
        401 | 403 => Error::Auth(message),
        404 | 410 => Error::not_found(message),
        409 | 412 => Error::conflict(message),
        400 | 422 => Error::validation(None, message),
        429 => Error::RateLimited(RateLimit {
            retry_after_ms: retry_after
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map_or(1_000, |s| s.saturating_mul(1000)),
            message,
        }),
        408 | 500..=599 => Error::transient(message),
        _ => Error::permanent(message),
    }
}

/// Sends a request and reads the whole response. Transport failures map to the contract's
/// errors: a request the connection does not grant is `auth` (a person must grant it), a
/// refused or timed-out connection is `transient`.
pub fn send(request: &Request) -> Result<Response, Error> {
    let (scheme, authority, path) = split_url(&request.url)?;
    let headers = Fields::new();
    for (name, value) in &request.headers {
        headers
            .append(name, value.as_bytes())
            .map_err(|e| Error::permanent(format!("header {name} is not allowed: {e:?}")))?;
    }
    let out = OutgoingRequest::new(headers);
    let method = match request.method {
        Method::Get => WasiMethod::Get,
        Method::Post => WasiMethod::Post,
        Method::Put => WasiMethod::Put,
        Method::Patch => WasiMethod::Patch,
        Method::Delete => WasiMethod::Delete,
    };
    let invalid = |what: &str| Error::config(format!("{}: invalid {what}", request.url));
    out.set_method(&method).map_err(|_| invalid("method"))?;
    out.set_scheme(Some(&scheme))
        .map_err(|_| invalid("scheme"))?;
    out.set_authority(Some(authority))
        .map_err(|_| invalid("host"))?;
    out.set_path_with_query(Some(path))
        .map_err(|_| invalid("path"))?;
    let body = out
        .body()
        .map_err(|_| Error::permanent("the request body was taken twice"))?;
    let stream = body
        .write()
        .map_err(|_| Error::permanent("the request body stream was taken twice"))?;
    // Send first, then write the body: the host buffers only one write before it starts
    // sending, so a body written before `handle` would wait forever for a reader.
    let options = RequestOptions::new();
    let pending = outgoing_handler::handle(out, Some(options))
        .map_err(|e| transport_error(&request.url, e))?;
    if let Some(bytes) = &request.body {
        // WASI caps one blocking write at 4,096 bytes.
        for chunk in bytes.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| Error::transient(format!("sending the request body failed: {e:?}")))?;
        }
    }
    drop(stream);
    OutgoingBody::finish(body, None).map_err(|e| transport_error(&request.url, e))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(transport_error(&request.url, e)),
        Some(Err(())) | None => {
            return Err(Error::transient(format!(
                "{}: the response was lost",
                request.url
            )))
        }
    };
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = response
        .consume()
        .map_err(|_| Error::permanent("the response body was taken twice"))?;
    let body = read_body(&incoming, &request.url)?;
    drop(incoming);
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_body(incoming: &IncomingBody, url: &str) -> Result<Vec<u8>, Error> {
    let stream = incoming
        .stream()
        .map_err(|_| Error::permanent("the response body stream was taken twice"))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(wasip2::io::streams::StreamError::LastOperationFailed(e)) => {
                return Err(Error::transient(format!(
                    "{url}: reading the response failed: {}",
                    e.to_debug_string()
                )))
            }
        }
    }
    Ok(body)
}

fn transport_error(url: &str, e: ErrorCode) -> Error {
    match e {
        ErrorCode::HttpRequestDenied => Error::Auth(format!(
            "{url}: the host refused the request: the connection does not grant this origin (add it to grants.http)"
        )),
        ErrorCode::DestinationIpProhibited => Error::Auth(format!(
            "{url}: the host refused the request: the name resolves to a private or loopback address the grant does not name"
        )),
        ErrorCode::ConfigurationError => Error::config(format!(
            "{url}: the host could not add the connection's credentials (see Duplex's log)"
        )),
        ErrorCode::HttpResponseBodySize(_) => {
            Error::permanent(format!("{url}: the response is larger than the host accepts"))
        }
        other => Error::transient(format!("{url}: {other:?}")),
    }
}

/// `https://host[:port]/path?query` into its parts.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), Error> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(Error::config(format!(
            "{url}: not an http:// or https:// URL"
        )));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return Err(Error::config(format!("{url}: names no host")));
    }
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

/// A JSON API at one base URL.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    headers: Vec<(String, String)>,
}

impl Client {
    /// `base` is the API's root (`https://api.hubapi.com`); paths are appended to it.
    pub fn new(base: impl Into<String>) -> Client {
        Client {
            base: base.into().trim_end_matches('/').to_owned(),
            headers: Vec::new(),
        }
    }

    /// A header sent with every request (not for credentials: the host adds those).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Client {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` with the client's headers.
    pub fn request(&self, method: Method, path: &str) -> Request {
        let mut r = Request::new(method, self.url(path));
        r.headers.extend(self.headers.iter().cloned());
        r
    }

    /// Sends `request`; a non-2xx status is the error it means.
    pub fn send(&self, request: &Request) -> Result<Response, Error> {
        send(request)?.success()
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.send(
            &self
                .request(Method::Get, path)
                .header("accept", "application/json"),
        )?
        .json()
    }

    pub fn post_json<B: serde::Serialize + ?Sized, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        self.send(&self.request(Method::Post, path).json(body)?)?
            .json()
    }

    pub fn patch_json<B: serde::Serialize + ?Sized, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        self.send(&self.request(Method::Patch, path).json(body)?)?
            .json()
    }

    /// Every item of a paged listing: `page` fetches one page from a paging token (none: the
    /// first) and returns its items and the next token (none: the last page). Stops after
    /// `max_pages`, so a server that never ends a listing cannot hold a call forever.
    pub fn all_pages<T>(
        &self,
        max_pages: usize,
        mut page: impl FnMut(&Client, Option<&str>) -> Result<(Vec<T>, Option<String>), Error>,
    ) -> Result<Vec<T>, Error> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..max_pages {
            let (more, next) = page(self, token.as_deref())?;
            items.extend(more);
            match next {
                Some(n) if Some(&n) != token.as_ref() => token = Some(n),
                _ => return Ok(items),
            }
        }
        Err(Error::permanent(format!(
            "{}: a listing ran past {max_pages} pages",
            self.base
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_contract() {
        assert!(matches!(status_error(401, "", None), Error::Auth(_)));
        assert!(matches!(status_error(409, "dup", None), Error::Conflict(_)));
        assert!(matches!(
            status_error(400, "bad", None),
            Error::Validation(_)
        ));
        assert!(matches!(status_error(503, "", None), Error::Transient(_)));
        let Error::RateLimited(r) = status_error(429, "slow down", Some("3")) else {
            panic!()
        };
        assert_eq!(r.retry_after_ms, 3000);
        assert!(r.message.contains("slow down"));
    }

    #[test]
    fn splits_urls() {
        let (s, a, p) = split_url("https://api.example.com/v1/x?y=1").unwrap();
        assert!(matches!(s, Scheme::Https));
        assert_eq!((a, p), ("api.example.com", "/v1/x?y=1"));
        let (_, a, p) = split_url("http://127.0.0.1:8080").unwrap();
        assert_eq!((a, p), ("127.0.0.1:8080", "/"));
        assert!(split_url("ftp://x").is_err());
    }
}
