//! Accepting connections and answering requests.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use wasmtime_wasi_http::io::TokioIo;

use super::{find_route, percent_decode, RouteMiss, OPENAPI};
use crate::engine::Side;
use crate::ops::{Hooked, Ops, OpsError};
use crate::state::{ActivityQuery, Choice, ConflictQuery, Role};

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Peer {
    /// The local socket: only its owner can open it, so the caller is that user (an admin).
    Local {
        user: String,
    },
    Remote {
        ip: IpAddr,
    },
}

/// The sockets `serve` and `run` answer on, bound before any sync starts so that a taken
/// port or a second instance is an error at once.
pub struct Listeners {
    local: UnixListener,
    local_path: PathBuf,
    tcp: Option<(TcpListener, Option<tokio_rustls::TlsAcceptor>)>,
}

/// Where `serve` listens on TCP.
pub struct TcpSpec {
    pub addr: SocketAddr,
    /// Certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Plain HTTP on an address other than loopback, asked for explicitly.
    pub insecure_http: bool,
}

impl Listeners {
    /// The local socket of a state file: beside it, `.sock` after its name.
    pub fn local_path(state: &Path) -> PathBuf {
        let mut name = state.file_name().unwrap_or_default().to_os_string();
        name.push(".sock");
        state.with_file_name(name)
    }

    pub async fn bind(state: &Path, tcp: Option<TcpSpec>) -> anyhow::Result<Listeners> {
        use anyhow::Context;
        let tcp = match tcp {
            Some(spec) => {
                let tls = match (&spec.tls, spec.addr.ip().is_loopback(), spec.insecure_http) {
                    (Some((cert, key)), _, _) => Some(tls_acceptor(cert, key)?),
                    (None, true, _) | (None, false, true) => None,
                    (None, false, false) => anyhow::bail!(
                        "serve.listen = {}: plain HTTP is only served on a loopback address; name \
                         serve.tls_cert and serve.tls_key, or set serve.insecure_http = true \
                         (or pass --insecure-http) if a proxy in front terminates TLS",
                        spec.addr
                    ),
                };
                let listener = TcpListener::bind(spec.addr)
                    .await
                    .with_context(|| format!("cannot listen on {}", spec.addr))?;
                Some((listener, tls))
            }
            None => None,
        };
        let local_path = Self::local_path(state);
        let local = bind_private(&local_path).await?;
        Ok(Listeners {
            local,
            local_path,
            tcp,
        })
    }

    /// The TCP address, once bound (port 0 asks for any).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn tls(&self) -> bool {
        self.tcp.as_ref().is_some_and(|(_, t)| t.is_some())
    }
}

/// Binds a Unix socket that only this user can open: bound inside a fresh directory only the
/// user can enter, made private, then moved into place, so it is never open to others even for
/// a moment. A socket left by a process that died is replaced; a live one is an error.
async fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another duplex is running on this state (its socket {} answers)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    // Short: a socket's whole path must fit in about 100 bytes, this one's too.
    let dir = path.with_file_name(format!(".dpx{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot make {}", dir.display()))?;
    let bound = (|| -> anyhow::Result<UnixListener> {
        let inner = dir.join("s");
        let listener = UnixListener::bind(&inner)
            .with_context(|| format!("cannot make the local socket {}", path.display()))?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)
            .with_context(|| format!("cannot move the local socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    bound
}

fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect())
        .map_err(|e| anyhow::anyhow!("serve.tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("serve.tls_cert {}: no certificate in it", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("serve.tls_key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("serve.tls_cert and serve.tls_key do not make a certificate and its key")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Failed logins per client address: after [`FAILS`] in a [`WINDOW`], the address gets 429
/// until the window ends, whatever it sends.
struct Limiter {
    fails: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const FAILS: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);

impl Limiter {
    /// Seconds to wait, when the address is shut out.
    fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let fails = self.fails.lock().unwrap_or_else(|e| e.into_inner());
        fails.get(&ip).and_then(|(n, since)| {
            let left = WINDOW.checked_sub(since.elapsed())?;
            (*n >= FAILS).then(|| left.as_secs().max(1))
        })
    }

    fn failed(&self, ip: IpAddr) {
        let mut fails = self.fails.lock().unwrap_or_else(|e| e.into_inner());
        if fails.len() > 10_000 {
            fails.retain(|_, (_, since)| since.elapsed() < WINDOW);
        }
        let entry = fails.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

/// Answers on the listeners until `stopped` turns true; then stops accepting, lets the
/// requests in flight finish (up to ten seconds) and removes the local socket.
pub async fn serve(ops: Arc<Ops>, listeners: Listeners, stopped: watch::Receiver<bool>) {
    let mut stopping = stopped.clone();
    let limiter = Arc::new(Limiter {
        fails: Mutex::new(HashMap::new()),
    });
    let user = std::env::var("USER").unwrap_or_else(|_| "local".into());
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&listeners.local_path)
            .map(|m| m.uid())
            .ok()
    };
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let tcp = async {
            match &listeners.tcp {
                Some((l, tls)) => (l.accept().await, tls.clone()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listeners.local.accept() => {
                let Ok((stream, _)) = accepted else {
                    accept_failed().await;
                    continue;
                };
                // The socket's mode keeps others out; its owner is checked too.
                let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
                if owner.is_none() || peer_uid != owner {
                    tracing::warn!(?peer_uid, "a process of another user reached the local socket; refused");
                    continue;
                }
                let peer = Peer::Local { user: user.clone() };
                tasks.spawn(connection(stream, peer, ops.clone(), limiter.clone(), stopped.clone()));
            }
            (accepted, tls) = tcp => {
                let Ok((stream, addr)) = accepted else {
                    accept_failed().await;
                    continue;
                };
                let peer = Peer::Remote { ip: addr.ip() };
                let (ops, limiter, stopped) = (ops.clone(), limiter.clone(), stopped.clone());
                tasks.spawn(async move {
                    match tls {
                        Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => connection(stream, peer, ops, limiter, stopped).await,
                            _ => tracing::debug!(%addr, "TLS handshake failed"),
                        },
                        None => connection(stream, peer, ops, limiter, stopped).await,
                    }
                });
            }
            _ = stopping.wait_for(|s| *s) => break,
        }
        while tasks.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let _ = std::fs::remove_file(&listeners.local_path);
}

/// An accept that failed (out of file descriptors, say) fails again at once: pause a little
/// rather than spin.
async fn accept_failed() {
    tracing::warn!("accepting a connection failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn connection<S>(
    stream: S,
    peer: Peer,
    ops: Arc<Ops>,
    limiter: Arc<Limiter>,
    mut stopped: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (ops, peer, limiter) = (ops.clone(), peer.clone(), limiter.clone());
        async move { Ok::<_, Infallible>(handle(&ops, &peer, &limiter, req).await) }
    });
    // No header timeout: hyper needs a timer for one, and a slow client holds only its own
    // task. The whole connection is dropped at shutdown after the grace period.
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        // The guard `wait_for` gives is dropped inside: it must not live across an await.
        _ = async { let _ = stopped.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: &Json) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Answer {
    answer(status, &json!({ "error": message.to_string() }))
}

/// The caller, once authenticated.
struct Caller {
    who: String,
    role: Role,
}

async fn handle(ops: &Ops, peer: &Peer, limiter: &Limiter, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (route, params) = match find_route(method.as_str(), &path) {
        Ok(r) => r,
        Err(RouteMiss::Path) => return error(StatusCode::NOT_FOUND, format!("no route {path}")),
        Err(RouteMiss::Method) => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} does not take {method}"),
            )
        }
    };
    // A webhook authenticates itself: its connector checks the signature.
    if route.path == "/hooks/{connection}" {
        let connection = params.first().cloned().unwrap_or_default();
        return webhook(ops, peer, limiter, &connection, req).await;
    }
    // 1. Who is calling, and may they: before anything else is looked at.
    let caller = match route.role {
        None => Caller {
            who: "anyone".into(),
            role: Role::Viewer,
        },
        Some(need) => match authenticate(ops, peer, limiter, &req) {
            Err(a) => return *a,
            Ok(c) if c.role < need => {
                return error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{method} {} needs the {} role; this token is {}",
                        route.path,
                        need.as_str(),
                        c.role.as_str()
                    ),
                )
            }
            Ok(c) => c,
        },
    };
    let query = parse_query(req.uri().query().unwrap_or(""));
    // A component is uploaded as it is; everything else is a small JSON document.
    let limit = if route.path == "/api/v1/plugins/{slot}" {
        PLUGIN_MAX
    } else {
        BODY_MAX
    };
    let body = match read_body(req, limit).await {
        Ok(b) => b,
        Err(a) => return a,
    };
    // 2. The call; 3. for a change, the audit log.
    let result = dispatch(ops, &caller, route, &params, &query, body).await;
    let response = match result {
        Ok(a) => a,
        Err(e) => ops_error(e),
    };
    if method != Method::GET {
        let outcome = if response.status().is_success() {
            "ok".to_owned()
        } else {
            format!("{}", response.status().as_u16())
        };
        ops.record(&caller.who, &format!("{method} {path}"), &outcome);
    }
    response
}

/// `POST /hooks/{connection}`: the request as it came, for the connection's connector to
/// verify. A refusal is a 401 and counts as a failed login of the address; nothing else is
/// told to the caller.
async fn webhook(
    ops: &Ops,
    peer: &Peer,
    limiter: &Limiter,
    connection: &str,
    req: Request<Incoming>,
) -> Answer {
    let ip = match peer {
        Peer::Remote { ip } => Some(*ip),
        Peer::Local { .. } => None,
    };
    if let Some(wait) = ip.and_then(|ip| limiter.blocked(ip)) {
        let mut a = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many refused requests; try again in {wait} s"),
        );
        a.headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(wait));
        return a;
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let body = match read_body(req, BODY_MAX).await {
        Ok(b) => b,
        Err(a) => return a,
    };
    let request = crate::plugin::WebhookRequest {
        method,
        path,
        headers,
        body: body.to_vec(),
        received_at: chrono::Utc::now().timestamp_micros(),
    };
    match ops.webhook(connection, request).await {
        Ok(Hooked::Woke(syncs)) => answer(StatusCode::ACCEPTED, &json!({ "woke": syncs })),
        Ok(Hooked::Nothing) => answer(StatusCode::OK, &json!({ "woke": [] })),
        Ok(Hooked::Refused(_)) => {
            if let Some(ip) = ip {
                limiter.failed(ip);
            }
            error(
                StatusCode::UNAUTHORIZED,
                "the request's signature does not verify",
            )
        }
        Ok(Hooked::Unsupported) => error(
            StatusCode::NOT_FOUND,
            format!("connection {connection} takes no webhooks"),
        ),
        Err(e) => ops_error(e),
    }
}

fn authenticate(
    ops: &Ops,
    peer: &Peer,
    limiter: &Limiter,
    req: &Request<Incoming>,
) -> Result<Caller, Box<Answer>> {
    let ip = match peer {
        Peer::Local { user } => {
            return Ok(Caller {
                who: format!("local:{user}"),
                role: Role::Admin,
            })
        }
        Peer::Remote { ip } => *ip,
    };
    if let Some(wait) = limiter.blocked(ip) {
        let mut a = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed logins from {ip}; try again in {wait} s"),
        );
        a.headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(wait));
        return Err(Box::new(a));
    }
    let unauthorized = |why: &str| {
        let mut a = error(StatusCode::UNAUTHORIZED, why);
        a.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        Box::new(a)
    };
    let secret = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(secret) = secret else {
        return Err(unauthorized(
            "no token: send Authorization: Bearer TOKEN (`duplex token create` makes one)",
        ));
    };
    match ops.state().token_for(secret) {
        Ok(Some(t)) => Ok(Caller {
            who: format!("token:{} ({})", t.id, t.name),
            role: t.role,
        }),
        Ok(None) => {
            limiter.failed(ip);
            Err(unauthorized("the token is unknown or revoked"))
        }
        Err(e) => Err(Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, e))),
    }
}

/// Bodies are small JSON documents, but for an uploaded component.
const BODY_MAX: usize = 1 << 20;
const PLUGIN_MAX: usize = 64 << 20;

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Answer> {
    Ok(Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| error(StatusCode::PAYLOAD_TOO_LARGE, format!("body: {e}")))?
        .to_bytes())
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

fn ops_error(e: OpsError) -> Answer {
    let status = match &e {
        OpsError::NoSuchSync(_) | OpsError::NotFound(_) => StatusCode::NOT_FOUND,
        OpsError::Invalid(_) => StatusCode::BAD_REQUEST,
        OpsError::Conflict(_) => StatusCode::CONFLICT,
        OpsError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

fn bad(message: impl std::fmt::Display) -> OpsError {
    OpsError::Invalid(message.to_string())
}

fn number<T: std::str::FromStr>(
    q: &BTreeMap<String, String>,
    key: &str,
) -> Result<Option<T>, OpsError> {
    q.get(key)
        .map(|v| {
            v.parse()
                .map_err(|_| bad(format!("{key}={v}: not a number")))
        })
        .transpose()
}

fn flag(q: &BTreeMap<String, String>, key: &str) -> Result<bool, OpsError> {
    match q.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("" | "true") => Ok(true),
        Some(v) => Err(bad(format!("{key}={v}: true or false"))),
    }
}

fn from_body<T: for<'de> Deserialize<'de>>(body: Bytes) -> Result<T, OpsError> {
    let json: Json = if body.is_empty() {
        Json::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("body is not JSON: {e}")))?
    };
    serde_json::from_value(json).map_err(|e| bad(format!("body: {e}")))
}

fn to_json(body: impl serde::Serialize) -> Result<Json, OpsError> {
    serde_json::to_value(body).map_err(|e| bad(e.to_string()))
}

fn ok(body: impl serde::Serialize) -> Result<Answer, OpsError> {
    Ok(answer(StatusCode::OK, &to_json(body)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    /// An uploaded version; absent: the one before the version in use.
    version: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resolve {
    take: Option<Side>,
    value: Option<Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Retry {
    sync: String,
    side: Side,
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Validate {
    toml: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    role: Role,
    name: String,
}

async fn dispatch(
    ops: &Ops,
    caller: &Caller,
    route: &super::Route,
    params: &[String],
    q: &BTreeMap<String, String>,
    body: Bytes,
) -> Result<Answer, OpsError> {
    let param = |i: usize| params.get(i).map(String::as_str).unwrap_or_default();
    let id = || -> Result<u64, OpsError> {
        param(0)
            .parse()
            .map_err(|_| bad(format!("{}: not a conflict number", param(0))))
    };
    match (route.method, route.path) {
        (_, "/healthz") => ok(json!({ "status": "up" })),
        (_, "/readyz") => match ops.ready() {
            Ok(()) => ok(json!({ "ready": true })),
            Err(why) => Ok(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "ready": false, "why": why }),
            )),
        },
        (_, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(super::metrics::render(ops)?)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(r)
        }
        (_, "/api/v1/openapi.json") => {
            let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        (_, "/api/v1/syncs") => ok(ops.syncs()?),
        (_, "/api/v1/syncs/{sync}") => ok(ops.sync(param(0))?),
        (_, "/api/v1/syncs/{sync}/history") => ok(ops.history(param(0), number(q, "limit")?)?),
        (_, "/api/v1/syncs/{sync}/pause") => {
            ops.pause(param(0), &caller.who)?;
            ok(ops.sync(param(0))?)
        }
        (_, "/api/v1/syncs/{sync}/resume") => {
            ops.resume(param(0))?;
            ok(ops.sync(param(0))?)
        }
        (_, "/api/v1/syncs/{sync}/run") => {
            ops.run_now(param(0))?;
            Ok(answer(
                StatusCode::ACCEPTED,
                &json!({ "started": param(0) }),
            ))
        }
        (_, "/api/v1/syncs/{sync}/dry-run") => ok(ops.dry_run(param(0)).await?),
        (_, "/api/v1/activity") => ok(ops.activity(&ActivityQuery {
            sync: q.get("sync").cloned(),
            decisions: flag(q, "decisions")?,
            op: q.get("op").cloned(),
            side: q
                .get("side")
                .map(|s| serde_json::from_value(Json::String(s.clone())))
                .transpose()
                .map_err(|_| bad("side: left or right"))?,
            record: q.get("record").cloned(),
            before: q.get("before").cloned(),
            limit: number(q, "limit")?,
        })?),
        (_, "/api/v1/conflicts") => ok(ops.conflicts(&ConflictQuery {
            sync: q.get("sync").cloned(),
            all: flag(q, "all")?,
            before: q.get("before").cloned(),
            limit: number(q, "limit")?,
        })?),
        (_, "/api/v1/conflicts/{id}") => ok(ops.conflict(id()?)?),
        (_, "/api/v1/conflicts/{id}/resolve") => {
            let id = id()?;
            let r: Resolve = from_body(body)?;
            let choice = match (r.take, r.value) {
                (Some(side), None) => Choice::taking(side),
                (None, Some(v)) => {
                    let c = ops.conflict(id)?;
                    Choice::Value(crate::ops::value_from_json(
                        v,
                        c.left.as_ref().or(c.right.as_ref()),
                    )?)
                }
                _ => {
                    return Err(bad(
                        "say how to resolve it: {\"take\": \"left\"}, {\"take\": \"right\"} or {\"value\": VALUE}",
                    ))
                }
            };
            ok(ops.resolve(id, choice, &caller.who).await?)
        }
        (_, "/api/v1/rejected") => ok(ops.rejected(
            q.get("sync").map(String::as_str),
            q.get("after").map(String::as_str),
            number(q, "limit")?,
        )?),
        (_, "/api/v1/rejected/retry") => {
            let r: Retry = from_body(body)?;
            ops.retry(&r.sync, r.side, &r.id)?;
            Ok(answer(StatusCode::ACCEPTED, &json!({ "retrying": r.id })))
        }
        (_, "/api/v1/plugins") => ok(ops.plugins()?),
        (_, "/api/v1/plugins/{slot}") => {
            if body.is_empty() {
                return Err(bad(
                    "send the component's bytes as the body (application/wasm)",
                ));
            }
            let installed = ops.upload(param(0), body.to_vec(), &caller.who).await?;
            Ok(answer(StatusCode::CREATED, &to_json(installed.change())?))
        }
        (_, "/api/v1/plugins/{slot}/versions") => ok(ops.plugin_versions(param(0))?),
        (_, "/api/v1/plugins/{slot}/rollback") => {
            let r: Option<Rollback> = from_body(body)?;
            let to = r.and_then(|r| r.version);
            ok(ops.rollback(param(0), to, &caller.who).await?.change())
        }
        (_, "/api/v1/config") => ok(ops.config()?),
        (_, "/api/v1/config/validate") => {
            let v: Validate = from_body(body)?;
            let syncs = ops.validate_config(&v.toml).await?;
            ok(json!({ "valid": true, "syncs": syncs }))
        }
        (_, "/api/v1/config/apply") => {
            let v: Validate = from_body(body)?;
            ok(ops.apply_config(&v.toml, &caller.who).await?)
        }
        (_, "/api/v1/audit") => {
            ok(ops.audit(q.get("before").map(String::as_str), number(q, "limit")?)?)
        }
        ("GET", "/api/v1/tokens") => ok(ops.tokens()?),
        ("POST", "/api/v1/tokens") => {
            let t: NewToken = from_body(body)?;
            let (token, secret) = ops.create_token(t.role, &t.name)?;
            Ok(answer(
                StatusCode::CREATED,
                &json!({ "token": token, "secret": secret }),
            ))
        }
        (_, "/api/v1/tokens/{id}") => ok(ops.revoke_token(param(0))?),
        (m, p) => Err(OpsError::NotFound(format!("no handler for {m} {p}"))),
    }
}
