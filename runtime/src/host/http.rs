//! The `http` capability: connectors speak HTTP through the standard
//! `wasi:http/outgoing-handler`, so any language's HTTP client works, and reach only the origins
//! their connection grants.
//!
//! Every request passes [`Hooks::send_request`], the one place requests leave the sandbox (as in
//! Spin's outbound HTTP factor). In order:
//! 1. **Grant.** The request's origin (scheme, host, port) and path must match a granted origin;
//!    `http://` only where a grant names it. Checked before any DNS lookup or connection. A
//!    refusal is the standard `HTTP-request-denied` error and a log line naming the connection
//!    and the origin.
//! 2. **Address.** The host name is resolved here, once. An address that is loopback, private,
//!    link-local or otherwise not on the public internet is refused unless the grant names that
//!    address itself, so a grant of a public name cannot be turned against the machine's own
//!    network. The connection goes to the address checked: a second lookup cannot move it.
//! 3. **Budget.** The connection's rate budgets ([`budget`]) are waited on, never refused; a
//!    429 or 503 with `Retry-After` pauses them.
//! 4. **Credentials.** Headers from the connection's secrets are added by the host; the plugin
//!    never holds them ([`secrets`]).
//! 5. **Limits.** Connect and total timeouts, a response body cap. Redirects reach the plugin as
//!    responses; they are never followed for it.
//!
//! Rules link the same interfaces (JavaScript and Python runtimes import them) and are granted
//! nothing, so every request they make is refused at step 1.

pub mod budget;
pub mod oauth;
pub mod secrets;
pub mod sign;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::host::{Caller, Capability, Grants};

pub use budget::{Budget, Budgets};
pub use oauth::{Flow as OAuthFlow, OAuth};
pub use secrets::{HeaderRule, Secret, Secrets, Source as SecretSource, Template};
pub use sign::Signature;

pub const CAPABILITY: Capability = Capability {
    name: "http",
    interfaces: &["wasi:http/outgoing-handler", "wasi:http/types"],
    offered_to_rules: true,
    refused_ungranted: false,
    gives:
        "http: requests only to the origins in grants.http (none granted: every request is refused)",
    granted: |g| !g.http.origins.is_empty(),
};

/// Longest a connection may take to open (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request may take from sending to the last byte of its response.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body handed to a plugin.
const MAX_RESPONSE_BODY: u64 = 32 << 20;

/// What a connection allows its plugin over HTTP: origins, credentials, rate budgets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// Where requests may go. Empty: nowhere.
    pub origins: Vec<Origin>,
    /// Headers the host adds to requests for matching origins, from `secrets`.
    pub headers: Vec<HeaderRule>,
    /// The secrets' values, read by the host from the environment or files.
    pub secrets: Secrets,
    /// Request budgets, shared by every sync using the connection.
    pub budgets: Vec<Budget>,
    /// An OAuth 2.0 flow the host runs for requests to one origin.
    pub oauth: Option<OAuth>,
    /// HMAC signatures the host adds to requests, keyed by secrets.
    pub signatures: Vec<Signature>,
}

/// A granted origin, optionally narrowed to a path prefix: `https://api.hubapi.com/crm/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl Origin {
    /// Parses `scheme://host[:port][/path-prefix]`. Only `http` and `https`; no user info, query
    /// or fragment.
    pub fn parse(text: &str) -> Result<Origin, String> {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("{text:?} is not a URL ({e})"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(format!(
                    "{text:?} must start with https:// (or http://, for a server without TLS)"
                ))
            }
        };
        let Some(authority) = uri.authority() else {
            return Err(format!("{text:?} names no host"));
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "{text:?} carries credentials; name them in the connection's secrets instead"
            ));
        }
        if uri.query().is_some() {
            return Err(format!(
                "{text:?} has a query; grant an origin and a path only"
            ));
        }
        let path = match uri.path() {
            "/" => String::new(),
            p => p.to_owned(),
        };
        Ok(Origin {
            https,
            host: authority
                .host()
                .trim_matches(['[', ']'])
                .to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            path,
        })
    }

    /// Whether a request to `scheme://host:port/path` falls under this origin. A path prefix
    /// matches whole segments: `/crm` admits `/crm` and `/crm/x`, not `/crmx`.
    fn admits(&self, https: bool, host: &str, port: u16, path: &str) -> bool {
        self.https == https
            && self.host.eq_ignore_ascii_case(host)
            && self.port == port
            && (self.path.is_empty()
                || path == self.path
                || path.strip_prefix(self.path.as_str()).is_some_and(|rest| {
                    self.path.ends_with('/') || rest.starts_with('/') || rest.starts_with('?')
                }))
    }

    /// The address the grant names, when its host is an address rather than a name.
    fn literal_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Whether a request to `url` falls under this origin.
    pub fn admits_url(&self, url: &str) -> bool {
        url.parse::<http::Uri>()
            .ok()
            .and_then(|u| Destination::of(&u))
            .is_some_and(|d| self.admits(d.https, &d.host, d.port, &d.path))
    }

    /// `host[:port]`, as a Host header names it.
    pub fn authority(&self) -> String {
        let host = bracketed(&self.host);
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let host = bracketed(&self.host);
        let default = if self.https { 443 } else { 80 };
        write!(f, "{scheme}://{host}")?;
        if self.port != default {
            write!(f, ":{}", self.port)?;
        }
        f.write_str(&self.path)
    }
}

/// A host as a URL writes it: an IPv6 address in brackets.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Host-wide state: the TLS settings and every connection's rate budgets.
#[derive(Debug, Default)]
pub struct Shared {
    budgets: Mutex<std::collections::HashMap<Arc<str>, Arc<Budgets>>>,
    tokens: oauth::Tokens,
    tls: OnceLock<Arc<rustls::ClientConfig>>,
}

impl Shared {
    /// The budgets of `connection`, made from `budgets` the first time any store asks.
    pub fn budgets(&self, connection: &Arc<str>, budgets: &[Budget]) -> Arc<Budgets> {
        let mut all = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(connection.clone())
            .or_insert_with(|| Arc::new(Budgets::new(budgets)))
            .clone()
    }

    /// Backs off every request of `connection` for `wait`: its plugin said the remote system
    /// limits its rate. Other connections are not touched.
    pub fn back_off(&self, connection: &str, wait: Duration) {
        let all = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = all.get(connection) {
            b.pause(wait);
        }
    }

    fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls
            .get_or_init(|| {
                let roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.into(),
                };
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default TLS versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Arc::new(config)
            })
            .clone()
    }
}

/// Per-store state: the WASI HTTP context and the hooks every request goes through.
pub struct HttpState {
    pub(crate) ctx: wasmtime_wasi_http::WasiHttpCtx,
    pub(crate) hooks: Hooks,
}

impl HttpState {
    pub fn new(caller: Caller, grants: Arc<Grants>, shared: Arc<super::Shared>) -> HttpState {
        HttpState {
            ctx: wasmtime_wasi_http::WasiHttpCtx::new(),
            hooks: Hooks {
                caller,
                grants,
                shared,
                asked: 0,
            },
        }
    }
}

impl HttpState {
    /// How many requests the plugin asked this store to send so far.
    pub fn asked(&self) -> u64 {
        self.hooks.asked
    }

    /// Holds back every request of this store's connection for `wait` (at most an hour).
    pub fn back_off(&self, wait: Duration) {
        let wait = wait.min(Duration::from_secs(3600));
        let h = &self.hooks;
        h.shared.http.back_off(&h.caller.connection, wait);
    }
}

/// Where every outgoing request of one store is checked, budgeted, credentialed and sent.
pub struct Hooks {
    caller: Caller,
    grants: Arc<Grants>,
    shared: Arc<super::Shared>,
    /// Requests the plugin asked to send (granted or not), for [`HttpState::asked`].
    asked: u64,
}

/// A store's data that `wasi:http` can be linked against.
pub use wasmtime_wasi_http::WasiHttpView as HttpData;

/// The one place `http` links into wasmtime: `wasi:http/types` and `outgoing-handler`, for
/// every plugin. What a store may reach is its grant's business ([`Hooks`]).
///
/// `outgoing-handler.handle` is wasmtime-wasi-http's, but gives the request's `request-options`
/// back. The guest hands them over (an owned argument); wasmtime-wasi-http 48 reads them and
/// never deletes them, so every request that passes options (Rust's `wasip2` crate and most
/// language runtimes do) would leave one handle in the store's table, until the table (capped at
/// `sandbox::MAX_HANDLES`) had no room and the plugin trapped in the middle of a cycle.
pub fn link<T: HttpData + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi_http::p2::bindings::http::outgoing_handler::Host as _;
    use wasmtime_wasi_http::p2::bindings::http::types::{self, ErrorCode, Host as _};
    use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
    type Sent = Result<Resource<HostFutureIncomingResponse>, ErrorCode>;

    types::add_to_linker::<_, wasmtime_wasi_http::WasiHttp>(linker, &Default::default(), T::http)?;
    linker.instance(OUTGOING_HANDLER)?.func_wrap(
        "handle",
        |mut store: wasmtime::StoreContextMut<'_, T>,
         (request, options): (
            Resource<HostOutgoingRequest>,
            Option<Resource<RequestOptions>>,
        )|
         -> wasmtime::Result<(Sent,)> {
            let mut view = store.data_mut().http();
            let handed_over = options.as_ref().map(|o| o.rep());
            let sent = view.handle(request, options);
            // Only while the slot still holds those options: had `handle` freed them itself
            // (a later wasmtime-wasi-http), the slot may now hold the response it made.
            if let Some(rep) = handed_over {
                let options = Resource::<RequestOptions>::new_own(rep);
                if view.table.get(&options).is_ok() {
                    view.table.delete(options)?;
                }
            }
            let sent: Sent = match sent {
                Ok(future) => Ok(future),
                // A trap stays a trap; an error code reaches the guest.
                Err(e) => Err(view.convert_error_code(e)?),
            };
            Ok((sent,))
        },
    )?;
    Ok(())
}

/// The `outgoing-handler` wasmtime-wasi-http 48 implements; a plugin importing any 0.2.x
/// version is linked to it.
const OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@0.2.12";

/// What a request's URI says about where it goes.
struct Destination {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl Destination {
    fn of(uri: &http::Uri) -> Option<Destination> {
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        Some(Destination {
            https,
            host: authority
                .host()
                .trim_matches(['[', ']'])
                .to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            path: uri.path().to_owned(),
        })
    }

    /// The origin, for logs: never the path or query, which may carry identifiers.
    fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let host = bracketed(&self.host);
        format!("{scheme}://{host}:{}", self.port)
    }
}

type SendResult = Result<(http::Response<WasiBody>, IoFuture), HttpError>;
type IoFuture = Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>;
type SendFuture = Box<dyn std::future::Future<Output = SendResult> + Send>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        self.asked += 1;
        let (plugin, connection) = (self.caller.plugin.clone(), self.caller.connection.clone());
        let grant = &self.grants.http;
        // 1. The grant, before anything else happens.
        let Some(dest) = Destination::of(request.uri()) else {
            return Box::new(std::future::ready(Err(HttpError::HttpRequestUriInvalid)));
        };
        let Some(origin) = grant
            .origins
            .iter()
            .find(|o| o.admits(dest.https, &dest.host, dest.port, &dest.path))
            .cloned()
        else {
            tracing::warn!(%plugin, %connection, origin = %dest.origin(),
                "refused an HTTP request to an origin the connection does not grant; add it to the connection's grants.http to allow it");
            return Box::new(std::future::ready(Err(HttpError::HttpRequestDenied)));
        };
        // 4. Credentials, added here so that they never pass through the plugin.
        for rule in &grant.headers {
            if rule
                .origin
                .admits(dest.https, &dest.host, dest.port, &dest.path)
            {
                let value = match rule.render(&grant.secrets) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(%plugin, %connection, "{e}");
                        return Box::new(std::future::ready(Err(HttpError::ConfigurationError)));
                    }
                };
                request.headers_mut().insert(rule.name.clone(), value);
            }
        }
        let budgets = self.shared.http.budgets(&connection, &grant.budgets);
        let tls = self.shared.http.tls();
        let (grants, shared) = (self.grants.clone(), self.shared.clone());
        Box::new(async move {
            // 2. The address, resolved once and checked.
            let addr = resolve_checked(&dest, &origin, &connection).await?;
            // 4b. An OAuth access token, fetched by the host when it has none that is fresh.
            let grant = &grants.http;
            let oauth = grant.oauth.as_ref().filter(|o| {
                o.origin
                    .admits(dest.https, &dest.host, dest.port, &dest.path)
            });
            if let Some(oauth) = oauth {
                let token = shared
                    .http
                    .tokens
                    .access_token(&connection, oauth, &grant.secrets, async |r| {
                        fetch_token(r, oauth, &connection, tls.clone()).await
                    })
                    .await?;
                let bearer = secrets::sensitive(&format!("Bearer {}", token.expose()))
                    .map_err(|_| HttpError::ConfigurationError)?;
                request
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, bearer);
            }
            // 4c. Signatures over the request's parts, keyed by secrets.
            let signing: Vec<&Signature> = grant
                .signatures
                .iter()
                .filter(|s| {
                    s.origin
                        .admits(dest.https, &dest.host, dest.port, &dest.path)
                })
                .collect();
            if !signing.is_empty() {
                request = sign_request(request, &signing, &grant.secrets, &connection).await?;
            }
            // 3. The budget: wait, never refuse.
            let waiting = std::time::Instant::now();
            let slot = budgets.acquire(&dest.path).await;
            let waited = waiting.elapsed();
            let sent = send(request, &dest, addr, dest.https.then_some(tls)).await;
            budgets.finish(slot);
            let status = sent.as_ref().ok().map(|(r, _)| r.status().as_u16());
            crate::telemetry::http_request(&connection, status, waited);
            let (response, io) = sent?;
            let status = response.status().as_u16();
            if status == 401 && oauth.is_some() {
                shared.http.tokens.forget(&connection).await;
            }
            if status == 429 || status == 503 {
                let wait = retry_after(response.headers())
                    .or_else(|| (status == 429).then(|| budgets.window_for(&dest.path)));
                if let Some(wait) = wait {
                    tracing::info!(%plugin, %connection, origin = %dest.origin(), status,
                        "the remote system asked to slow down; pausing this connection's requests for {wait:?}");
                    budgets.pause(wait);
                }
            }
            Ok((response, io))
        })
    }
}

/// Reads the request's body (the plugin has written it whole by now) and adds each signature.
async fn sign_request(
    request: http::Request<WasiBody>,
    signing: &[&Signature],
    secrets: &Secrets,
    connection: &str,
) -> Result<http::Request<WasiBody>, HttpError> {
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    for s in signing {
        let (value, stamp) = s
            .sign(secrets, parts.method.as_str(), &path, &body, timestamp)
            .map_err(|e| {
                tracing::error!(%connection, "cannot sign a request: {e}");
                HttpError::ConfigurationError
            })?;
        parts.headers.insert(s.header.clone(), value);
        if let (Some(h), Some(t)) = (&s.timestamp_header, stamp) {
            parts.headers.insert(h.clone(), t);
        }
    }
    let body = http_body_util::Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    Ok(http::Request::from_parts(parts, body))
}

/// Sends a token request for `oauth` through the same address checks, and reads its answer.
async fn fetch_token(
    request: http::Request<WasiBody>,
    oauth: &OAuth,
    connection: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(u16, Bytes), HttpError> {
    let dest = Destination::of(request.uri()).ok_or(HttpError::HttpRequestUriInvalid)?;
    let addr = resolve_checked(&dest, &oauth.token_origin, connection).await?;
    let (response, _io) = send(request, &dest, addr, dest.https.then_some(tls)).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Resolves the destination's host once and refuses addresses off the public internet unless
/// the grant names the address itself.
async fn resolve_checked(
    dest: &Destination,
    origin: &Origin,
    connection: &str,
) -> Result<SocketAddr, HttpError> {
    if let Ok(ip) = dest.host.parse::<IpAddr>() {
        if origin.literal_ip() == Some(ip) || is_public(ip) {
            return Ok(SocketAddr::new(ip, dest.port));
        }
        tracing::warn!(%connection, origin = %dest.origin(),
            "refused an HTTP request to a non-public address the grant does not name itself");
        return Err(HttpError::DestinationIpProhibited);
    }
    let lookup = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::lookup_host((dest.host.as_str(), dest.port)),
    )
    .await
    .map_err(|_| HttpError::DnsTimeout)?
    .map_err(|e| HttpError::DnsError {
        rcode: Some(e.to_string()),
        info_code: None,
    })?;
    let addrs: Vec<SocketAddr> = lookup.collect();
    if addrs.is_empty() {
        return Err(HttpError::DestinationNotFound);
    }
    if let Some(private) = addrs.iter().find(|a| !is_public(a.ip())) {
        tracing::warn!(%connection, origin = %dest.origin(), address = %private.ip(),
            "refused an HTTP request: the granted name resolves to a loopback, private or link-local address; grant that address itself if this is intended");
        return Err(HttpError::DestinationIpProhibited);
    }
    Ok(addrs[0])
}

/// Whether an address is on the public internet: not loopback, private, link-local, shared,
/// documentation, multicast or unspecified (and the same for IPv4 inside IPv6).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || first == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
                || first == 0x0064 && v6.segments()[1] == 0xff9b) // NAT64 to any IPv4
        }
    }
}

/// How long a `Retry-After` header asks to wait (seconds; an HTTP date is read as a minute).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => Duration::from_secs(60),
    };
    Some(wait.min(Duration::from_secs(3600)))
}

/// Sends one checked request to `addr`: TCP, TLS (rustls, the usual web roots) for https, HTTP/1.1.
async fn send(
    mut request: http::Request<WasiBody>,
    dest: &Destination,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> SendResult {
    let deadline = tokio::time::Instant::now() + TOTAL_TIMEOUT;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(connect_error)?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match tls {
            Some(config) => {
                let name = match dest.host.parse::<IpAddr>() {
                    Ok(ip) => rustls::pki_types::ServerName::from(ip),
                    Err(_) => rustls::pki_types::ServerName::try_from(dest.host.clone())?,
                };
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(HttpError::Tls)?;
                Box::new(tls)
            }
            None => Box::new(tcp),
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        Ok::<_, HttpError>((sender, conn))
    };
    let (mut sender, conn) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;
    let conn = tokio::spawn(conn);
    // The URI on the wire is the path: scheme and authority are for proxies.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout_at(deadline, sender.send_request(request))
        .await
        .map_err(|_| HttpError::HttpResponseTimeout)??;
    let response = response.map(|incoming| {
        Limited {
            inner: incoming.map_err(HttpError::from).boxed_unsync(),
            left: MAX_RESPONSE_BODY,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
        .boxed_unsync()
    });
    let io: IoFuture = Box::new(async move {
        match conn.await {
            Ok(r) => r.map_err(HttpError::from),
            Err(_) => Err(HttpError::ConnectionTerminated),
        }
    });
    Ok((response, io))
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

fn connect_error(e: std::io::Error) -> HttpError {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
        std::io::ErrorKind::TimedOut => HttpError::ConnectionTimeout,
        _ => HttpError::Connect(e),
    }
}

/// A response body cut at the size cap and the request's deadline.
struct Limited {
    inner: WasiBody,
    left: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Limited {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if std::future::Future::poll(self.deadline.as_mut(), cx).is_ready() {
            return Poll::Ready(Some(Err(HttpError::HttpResponseTimeout)));
        }
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                let len = data.len() as u64;
                if len > self.left {
                    return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                        MAX_RESPONSE_BODY,
                    )))));
                }
                self.left -= len;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_admit_their_scheme_host_port_and_path_prefix() {
        let o = Origin::parse("https://api.hubapi.com").unwrap();
        assert!(o.admits(true, "api.hubapi.com", 443, "/crm/v3/objects/contacts"));
        assert!(o.admits(true, "API.hubapi.com", 443, "/"));
        assert!(
            !o.admits(false, "api.hubapi.com", 80, "/"),
            "http is not https"
        );
        assert!(!o.admits(true, "api.hubapi.com", 8443, "/"));
        assert!(!o.admits(true, "api.hubapi.com.evil.example", 443, "/"));
        let p = Origin::parse("https://api.example.com/crm").unwrap();
        assert!(p.admits(true, "api.example.com", 443, "/crm"));
        assert!(p.admits(true, "api.example.com", 443, "/crm/x"));
        assert!(!p.admits(true, "api.example.com", 443, "/crmx"));
        assert!(!p.admits(true, "api.example.com", 443, "/other"));
        assert_eq!(p.to_string(), "https://api.example.com/crm");
        let local = Origin::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(local.literal_ip(), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(local.to_string(), "http://127.0.0.1:8080");
    }

    #[test]
    fn origins_refuse_what_is_not_an_origin() {
        assert!(Origin::parse("ftp://x").is_err());
        assert!(Origin::parse("api.hubapi.com").is_err());
        assert!(Origin::parse("https://user:pw@x.example").is_err());
        assert!(Origin::parse("https://x.example/?token=1").is_err());
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["104.16.0.1", "8.8.8.8", "2606:4700::1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
    }
}
