//! A stateful local replica of the HubSpot CRM API (v3) for contacts and companies, for Duplex's
//! tests and demos. It is written by hand from HubSpot's public developer documentation; each
//! behaviour names the page it follows. README.md lists what it does not model.
//!
//! Besides answering like HubSpot, it checks every request body against the shapes the
//! documentation gives (a request the real API would refuse is refused here and recorded as a
//! violation), counts what it was asked, and injects faults on demand.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

/// Pages the behaviours follow.
pub mod docs {
    pub const RATE_LIMITS: &str =
        "https://developers.hubspot.com/docs/guides/apps/api-usage/usage-details";
    pub const ERRORS: &str =
        "https://developers.hubspot.com/docs/guides/apps/api-usage/error-handling";
    pub const SEARCH: &str = "https://developers.hubspot.com/docs/guides/api/crm/search";
    pub const CONTACTS: &str =
        "https://developers.hubspot.com/docs/guides/api/crm/objects/contacts";
    pub const COMPANIES: &str =
        "https://developers.hubspot.com/docs/guides/api/crm/objects/companies";
    pub const PROPERTIES: &str = "https://developers.hubspot.com/docs/guides/api/crm/properties";
    pub const PRIVATE_APPS: &str =
        "https://developers.hubspot.com/docs/guides/apps/private-apps/overview";
    pub const SCOPES: &str =
        "https://developers.hubspot.com/docs/guides/apps/authentication/scopes";
    pub const OAUTH: &str =
        "https://developers.hubspot.com/docs/guides/apps/authentication/working-with-oauth";
}

/// How the replica behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The private app's access token ([`docs::PRIVATE_APPS`]): `Authorization: Bearer TOKEN`.
    pub token: String,
    /// The scopes the token carries ([`docs::SCOPES`]), such as `crm.objects.contacts.read`.
    pub scopes: Vec<String>,
    /// The rolling limit of every request: 100 per 10 s for a private app on the free and
    /// starter tiers ([`docs::RATE_LIMITS`]).
    pub rate: (u32, Duration),
    /// The search endpoints' own limit: 5 requests per second ([`docs::SEARCH`], "Limitations").
    pub search_rate: (u32, Duration),
    /// How long a change takes to reach the search index; search shows the version before.
    pub search_lag: Duration,
    /// A public app's OAuth credentials ([`docs::OAUTH`]): when set, `POST /oauth/v1/token`
    /// trades them for access tokens, which then authenticate like the private app's token.
    pub oauth: Option<OAuthApp>,
}

/// A public app's OAuth client and one installation's refresh token.
#[derive(Debug, Clone)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    /// How long an access token lives (HubSpot's are 30 minutes).
    pub expires_in: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token: "replica-token".into(),
            scopes: [
                "crm.objects.contacts.read",
                "crm.objects.contacts.write",
                "crm.objects.companies.read",
                "crm.objects.companies.write",
                "crm.schemas.contacts.read",
                "crm.schemas.companies.read",
            ]
            .map(String::from)
            .to_vec(),
            rate: (100, Duration::from_secs(10)),
            search_rate: (5, Duration::from_secs(1)),
            search_lag: Duration::ZERO,
            oauth: None,
        }
    }
}

/// Faults to inject, each counted by requests (0: off).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Every Nth request is answered 502 or 503 (alternately) before it does anything.
    pub fail_every: u32,
    /// Every Nth batch write is applied, then its connection is dropped without an answer.
    pub reset_after_apply_every: u32,
    /// Every Nth request is answered 429 (an account-wide limit the client cannot see).
    pub rate_limit_every: u32,
    /// Every answer is delayed by this much.
    pub slow: Duration,
}

/// What the replica was asked.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Requests by `METHOD /path` with ids replaced by `{id}`.
    pub requests: BTreeMap<String, u64>,
    /// 429s sent because the client went over a documented limit.
    pub over_budget: u64,
    /// 429s injected as faults.
    pub injected_429: u64,
    /// Requests whose body or query the documentation does not allow.
    pub violations: Vec<String>,
}

impl Stats {
    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }

    /// Requests that change something.
    pub fn writes(&self) -> u64 {
        self.requests
            .iter()
            .filter(|(k, _)| k.contains("/batch/") && !k.ends_with("/batch/read"))
            .map(|(_, n)| n)
            .sum()
    }
}

#[derive(Debug, Clone)]
struct Property {
    name: &'static str,
    kind: &'static str,
    field_type: &'static str,
    calculated: bool,
    read_only: bool,
    unique: bool,
    options: &'static [&'static str],
}

const fn prop(name: &'static str, kind: &'static str, field_type: &'static str) -> Property {
    Property {
        name,
        kind,
        field_type,
        calculated: false,
        read_only: false,
        unique: false,
        options: &[],
    }
}

const fn read_only(mut p: Property) -> Property {
    p.read_only = true;
    p.calculated = true;
    p
}

/// The default properties of each object ([`docs::PROPERTIES`]): a subset, with their types.
fn schema(object: &str) -> Vec<Property> {
    let common = [
        read_only(prop("hs_object_id", "number", "number")),
        read_only(prop("createdate", "datetime", "date")),
        read_only(prop("lastmodifieddate", "datetime", "date")),
    ];
    let mut props: Vec<Property> = common.to_vec();
    match object {
        "contacts" => {
            let mut email = prop("email", "string", "text");
            email.unique = true;
            props.extend([
                email,
                prop("firstname", "string", "text"),
                prop("lastname", "string", "text"),
                prop("phone", "string", "phonenumber"),
                prop("company", "string", "text"),
                Property {
                    options: &[
                        "subscriber",
                        "lead",
                        "marketingqualifiedlead",
                        "salesqualifiedlead",
                        "opportunity",
                        "customer",
                        "evangelist",
                        "other",
                    ],
                    ..prop("lifecyclestage", "enumeration", "radio")
                },
                read_only(prop("num_notes", "number", "number")),
            ]);
        }
        "companies" => props.extend([
            prop("name", "string", "text"),
            prop("domain", "string", "text"),
            prop("city", "string", "text"),
            prop("numberofemployees", "number", "number"),
        ]),
        _ => {}
    }
    props
}

#[derive(Debug, Clone)]
struct Object {
    id: u64,
    properties: BTreeMap<String, String>,
    created: i64,
    updated: i64,
    archived: Option<i64>,
    /// What search shows: versions with the time they became visible to it.
    indexed: Vec<(Instant, BTreeMap<String, String>, i64)>,
}

struct Inner {
    options: Options,
    faults: Faults,
    stats: Stats,
    next_id: u64,
    objects: HashMap<String, BTreeMap<u64, Object>>,
    sent: VecDeque<Instant>,
    searched: VecDeque<Instant>,
    counter: u64,
    batch_writes: u64,
    last_ms: i64,
    /// Access tokens issued through OAuth, with when they expire.
    issued: HashMap<String, Instant>,
}

/// A running replica.
#[derive(Clone)]
pub struct Replica {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

/// Properties as a person types them, as the store keeps them.
fn owned(properties: &[(&str, &str)]) -> BTreeMap<String, String> {
    properties
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn iso(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// An answer: status and JSON body (None: 204), or a dropped connection.
enum Answer {
    Json(StatusCode, Value),
    Reset,
}

fn error(status: StatusCode, category: &str, message: &str) -> Answer {
    // The error body of [`docs::ERRORS`].
    Answer::Json(
        status,
        json!({
            "status": "error",
            "message": message,
            "correlationId": "00000000-0000-4000-8000-000000000000",
            "category": category,
        }),
    )
}

impl Replica {
    /// Starts a replica on a free loopback port.
    pub async fn start(options: Options) -> Replica {
        Replica::start_on("127.0.0.1:0", options).await
    }

    /// Starts a replica listening on `addr`.
    pub async fn start_on(addr: &str, options: Options) -> Replica {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let replica = Replica::new(options, format!("http://{addr}"));
        let r = replica.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let r = r.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let r = r.clone();
                        async move { r.serve(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        replica
    }

    fn new(options: Options, url: String) -> Replica {
        let mut objects = HashMap::new();
        objects.insert("contacts".to_owned(), BTreeMap::new());
        objects.insert("companies".to_owned(), BTreeMap::new());
        Replica {
            url,
            inner: Arc::new(Mutex::new(Inner {
                options,
                faults: Faults::default(),
                stats: Stats::default(),
                next_id: 1001,
                objects,
                sent: VecDeque::new(),
                searched: VecDeque::new(),
                counter: 0,
                batch_writes: 0,
                last_ms: 0,
                issued: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn set_search_lag(&self, lag: Duration) {
        self.lock().options.search_lag = lag;
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub fn reset_stats(&self) {
        self.lock().stats = Stats::default();
    }

    /// A person creates a record in HubSpot. Returns its id.
    pub fn create(&self, object: &str, properties: &[(&str, &str)]) -> String {
        let id = self.lock().insert(object, owned(properties));
        id.to_string()
    }

    /// A record that has existed since `modified_ms` (epoch milliseconds): for loading a
    /// replica with data made before a sync began.
    pub fn create_at(&self, object: &str, properties: &[(&str, &str)], modified_ms: i64) -> String {
        let mut inner = self.lock();
        let id = inner.insert(object, owned(properties));
        let o = inner.table(object).get_mut(&id).unwrap();
        o.created = modified_ms;
        o.updated = modified_ms;
        for version in o.indexed.iter_mut() {
            version.2 = modified_ms;
        }
        id.to_string()
    }

    /// A person edits a record in HubSpot.
    pub fn update(&self, object: &str, id: &str, properties: &[(&str, &str)]) {
        self.lock()
            .modify(object, id.parse().unwrap(), owned(properties));
    }

    /// A person archives (deletes) a record in HubSpot.
    pub fn archive(&self, object: &str, id: &str) {
        let mut inner = self.lock();
        let at = inner.tick();
        if let Some(o) = inner.table(object).get_mut(&id.parse().unwrap()) {
            o.archived = Some(at);
        }
    }

    /// The live (not archived) records of `object`: id and properties.
    pub fn records(&self, object: &str) -> Vec<(String, BTreeMap<String, String>)> {
        let mut inner = self.lock();
        inner
            .table(object)
            .values()
            .filter(|o| o.archived.is_none())
            .map(|o| (o.id.to_string(), o.properties.clone()))
            .collect()
    }

    async fn serve(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let (answer, slow) = {
            let mut inner = self.lock();
            let slow = inner.faults.slow;
            (inner.answer(&parts, &body), slow)
        };
        if !slow.is_zero() {
            tokio::time::sleep(slow).await;
        }
        Ok(match answer {
            Answer::Json(status, Value::Null) => Response::builder()
                .status(status)
                .body(Full::new(Bytes::new()))
                .unwrap(),
            Answer::Json(status, value) => {
                let mut r = Response::builder()
                    .status(status)
                    .header("content-type", "application/json;charset=utf-8");
                if status == StatusCode::TOO_MANY_REQUESTS {
                    r = r.header("retry-after", "1");
                }
                r.body(Full::new(Bytes::from(value.to_string()))).unwrap()
            }
            Answer::Reset => {
                // Drop the connection without an answer: hyper closes it when the service
                // fails.
                return Err(std::io::Error::other(
                    "injected: connection reset after applying",
                ));
            }
        })
    }
}

impl Inner {
    fn table(&mut self, object: &str) -> &mut BTreeMap<u64, Object> {
        self.objects.entry(object.to_owned()).or_default()
    }

    /// A modification time: milliseconds, as HubSpot stamps them; never before the last one.
    fn tick(&mut self) -> i64 {
        let t = now_ms().max(self.last_ms);
        self.last_ms = t;
        t
    }

    fn insert(&mut self, object: &str, mut properties: BTreeMap<String, String>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let at = self.tick();
        if let Some(e) = properties.get_mut("email") {
            *e = e.to_lowercase();
        }
        let lag = self.options.search_lag;
        let o = Object {
            id,
            created: at,
            updated: at,
            archived: None,
            indexed: vec![(Instant::now() + lag, properties.clone(), at)],
            properties,
        };
        self.table(object).insert(id, o);
        id
    }

    fn modify(&mut self, object: &str, id: u64, properties: BTreeMap<String, String>) -> bool {
        let at = self.tick();
        let lag = self.options.search_lag;
        let Some(o) = self.table(object).get_mut(&id) else {
            return false;
        };
        for (k, mut v) in properties {
            if k == "email" {
                v = v.to_lowercase();
            }
            if v.is_empty() {
                o.properties.remove(&k);
            } else {
                o.properties.insert(k, v);
            }
        }
        o.updated = at;
        o.indexed
            .push((Instant::now() + lag, o.properties.clone(), at));
        true
    }

    fn answer(&mut self, parts: &http::request::Parts, body: &[u8]) -> Answer {
        let path = parts.uri.path().to_owned();
        let query: HashMap<String, String> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.replace("%40", "@")))
            .collect();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let route = segments
            .iter()
            .map(|s| {
                if s.chars().all(|c| c.is_ascii_digit()) || s.contains('@') {
                    "{id}"
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        *self
            .stats
            .requests
            .entry(format!("{} /{route}", parts.method))
            .or_default() += 1;
        self.counter += 1;
        let n = self.counter;

        if parts.method == Method::POST && path == "/oauth/v1/token" {
            return self.token(body);
        }
        // Authentication: a private app's bearer token ([`docs::PRIVATE_APPS`]), or an access
        // token issued by OAuth and not expired ([`docs::OAUTH`]).
        let bearer = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let issued = bearer.is_some_and(|b| {
            self.issued
                .get(b)
                .is_some_and(|until| *until > Instant::now())
        });
        if bearer != Some(self.options.token.as_str()) && !issued {
            return error(
                StatusCode::UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            );
        }
        // Faults before anything happens.
        let f = self.faults;
        if f.fail_every > 0 && n.is_multiple_of(u64::from(f.fail_every)) {
            let status = if (n / u64::from(f.fail_every)).is_multiple_of(2) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            };
            return error(status, "INTERNAL_ERROR", "injected fault");
        }
        if f.rate_limit_every > 0 && n.is_multiple_of(u64::from(f.rate_limit_every)) {
            self.stats.injected_429 += 1;
            return rate_limited("TEN_SECONDLY_ROLLING");
        }
        // Rolling rate limits ([`docs::RATE_LIMITS`]): counted whether or not answered 429.
        let now = Instant::now();
        let (limit, per) = self.options.rate;
        self.sent.retain(|t| now.duration_since(*t) < per);
        if self.sent.len() >= limit as usize {
            self.stats.over_budget += 1;
            return rate_limited("TEN_SECONDLY_ROLLING");
        }
        self.sent.push_back(now);
        let is_search = segments.last() == Some(&"search");
        if is_search {
            let (limit, per) = self.options.search_rate;
            self.searched.retain(|t| now.duration_since(*t) < per);
            if self.searched.len() >= limit as usize {
                self.stats.over_budget += 1;
                return rate_limited("SECONDLY");
            }
            self.searched.push_back(now);
        }

        let json: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return self
                        .violation(format!("{} {path}: body is not JSON: {e}", parts.method))
                }
            }
        };
        let method = &parts.method;
        match (method, &segments[..]) {
            (&Method::GET, ["crm", "v3", "properties", object]) => {
                self.scoped(object, "schemas", "read", |s| s.properties(object))
            }
            (&Method::GET, ["crm", "v3", "objects", object]) => {
                let q = query.clone();
                self.scoped(object, "objects", "read", |s| s.list(object, &q))
            }
            (&Method::GET, ["crm", "v3", "objects", object, id]) => {
                let q = query.clone();
                self.scoped(object, "objects", "read", |s| s.get(object, id, &q))
            }
            (&Method::POST, ["crm", "v3", "objects", object, "search"]) => {
                self.scoped(object, "objects", "read", |s| s.search(object, &json))
            }
            (&Method::POST, ["crm", "v3", "objects", object, "batch", op]) => {
                let access = if *op == "read" { "read" } else { "write" };
                let answer = self.scoped(object, "objects", access, |s| s.batch(object, op, &json));
                if access == "write" {
                    self.batch_writes += 1;
                    let every = u64::from(f.reset_after_apply_every);
                    if every > 0 && self.batch_writes.is_multiple_of(every) {
                        return Answer::Reset;
                    }
                }
                answer
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                &format!("no route {method} {path} in this replica"),
            ),
        }
    }

    /// `POST /oauth/v1/token` ([`docs::OAUTH`], "Refreshing OAuth tokens"): a form with
    /// `grant_type=refresh_token`, `client_id`, `client_secret` and `refresh_token`; answers an
    /// access token and how long it lives. Not counted against the API's rate limits.
    fn token(&mut self, body: &[u8]) -> Answer {
        let form: HashMap<String, String> = String::from_utf8_lossy(body)
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), form_decode(v)))
            .collect();
        let Some(app) = self.options.oauth.clone() else {
            return error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "this replica has no OAuth app",
            );
        };
        let field = |k: &str| form.get(k).map(String::as_str);
        let refuse = |status: &str, message: &str| {
            Answer::Json(
                StatusCode::BAD_REQUEST,
                json!({ "status": status, "message": message }),
            )
        };
        if field("grant_type") != Some("refresh_token") {
            return refuse("BAD_GRANT_TYPE", "grant_type must be refresh_token");
        }
        if field("client_id") != Some(app.client_id.as_str())
            || field("client_secret") != Some(app.client_secret.as_str())
        {
            return refuse("BAD_CLIENT_ID", "missing or unknown client id");
        }
        if field("refresh_token") != Some(app.refresh_token.as_str()) {
            return refuse("BAD_REFRESH_TOKEN", "missing or unknown refresh token");
        }
        self.counter += 1;
        let token = format!("access-{}-{}", self.counter, now_ms());
        self.issued
            .insert(token.clone(), Instant::now() + app.expires_in);
        Answer::Json(
            StatusCode::OK,
            json!({
                "token_type": "bearer",
                "refresh_token": app.refresh_token,
                "access_token": token,
                "expires_in": app.expires_in.as_secs(),
            }),
        )
    }

    /// Refuses a request the documentation does not allow, and records it.
    fn violation(&mut self, what: String) -> Answer {
        self.stats.violations.push(what.clone());
        error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", &what)
    }

    /// Runs `f` if the token has the scope ([`docs::SCOPES`]): `crm.objects.contacts.read`,
    /// `crm.schemas.companies.read`, and so on.
    fn scoped(
        &mut self,
        object: &str,
        kind: &str,
        access: &str,
        f: impl FnOnce(&mut Self) -> Answer,
    ) -> Answer {
        if object != "contacts" && object != "companies" {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                &format!("Unable to infer object type from: {object}"),
            );
        }
        let needed = format!("crm.{kind}.{object}.{access}");
        // A write scope implies reading the schema too, as HubSpot's scope picker does.
        if !self.options.scopes.contains(&needed) {
            return Answer::Json(
                StatusCode::FORBIDDEN,
                json!({
                    "status": "error",
                    "message": "This app hasn't been granted all required scopes to make this call.",
                    "correlationId": "00000000-0000-4000-8000-000000000000",
                    "category": "MISSING_SCOPES",
                    "errors": [{
                        "message": "One or more of the following scopes are required.",
                        "context": { "requiredGranularScopes": [needed] }
                    }]
                }),
            );
        }
        f(self)
    }

    fn properties(&mut self, object: &str) -> Answer {
        let results: Vec<Value> = schema(object)
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "label": p.name,
                    "type": p.kind,
                    "fieldType": p.field_type,
                    "calculated": p.calculated,
                    "hasUniqueValue": p.unique,
                    "hidden": false,
                    "modificationMetadata": {
                        "archivable": !p.read_only,
                        "readOnlyDefinition": true,
                        "readOnlyValue": p.read_only
                    },
                    "options": p.options.iter().enumerate().map(|(i, o)| json!({
                        "label": o, "value": o, "displayOrder": i, "hidden": false
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        Answer::Json(StatusCode::OK, json!({ "results": results }))
    }

    /// A record as the API shows it, with the asked properties and the defaults.
    fn render(
        object: &str,
        o: &Object,
        props: &BTreeMap<String, String>,
        updated: i64,
        asked: &[String],
    ) -> Value {
        let mut p = Map::new();
        let defaults: &[&str] = match object {
            "contacts" => &["email", "firstname", "lastname"],
            _ => &["name", "domain"],
        };
        for name in defaults
            .iter()
            .copied()
            .chain(asked.iter().map(String::as_str))
        {
            p.insert(
                name.to_owned(),
                props
                    .get(name)
                    .map_or(Value::Null, |v| Value::String(v.clone())),
            );
        }
        p.insert("hs_object_id".into(), Value::String(o.id.to_string()));
        p.insert("createdate".into(), Value::String(iso(o.created)));
        p.insert("lastmodifieddate".into(), Value::String(iso(updated)));
        let mut v = json!({
            "id": o.id.to_string(),
            "properties": p,
            "createdAt": iso(o.created),
            "updatedAt": iso(updated),
            "archived": o.archived.is_some(),
        });
        if let Some(at) = o.archived {
            v["archivedAt"] = Value::String(iso(at));
        }
        v
    }

    fn asked(query: &HashMap<String, String>) -> Vec<String> {
        query
            .get("properties")
            .map(|p| {
                p.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `GET /crm/v3/objects/{object}`: a page of records by id, `archived=true` for the
    /// archived ones ([`docs::CONTACTS`], "Retrieve"); `limit` at most 100.
    fn list(&mut self, object: &str, query: &HashMap<String, String>) -> Answer {
        let limit: usize = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(10);
        if limit > 100 {
            return self.violation(format!("GET {object}: limit {limit} is over 100"));
        }
        let after: u64 = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
        let archived = query.get("archived").is_some_and(|a| a == "true");
        let asked = Self::asked(query);
        let page: Vec<&Object> = self
            .objects
            .get(object)
            .into_iter()
            .flat_map(|t| t.range(after..))
            .map(|(_, o)| o)
            .filter(|o| o.archived.is_some() == archived)
            .take(limit + 1)
            .collect();
        let next = (page.len() > limit).then(|| page[limit].id);
        let results: Vec<Value> = page
            .iter()
            .take(limit)
            .map(|o| Self::render(object, o, &o.properties, o.updated, &asked))
            .collect();
        let mut v = json!({ "results": results });
        if let Some(next) = next {
            v["paging"] = json!({ "next": { "after": next.to_string() } });
        }
        Answer::Json(StatusCode::OK, v)
    }

    /// `GET /crm/v3/objects/{object}/{id}`, by id or by `idProperty=email`.
    fn get(&mut self, object: &str, id: &str, query: &HashMap<String, String>) -> Answer {
        let asked = Self::asked(query);
        let found = self.find(object, id, query.get("idProperty").map(String::as_str));
        match found {
            Some(o) => {
                let v = Self::render(object, &o, &o.properties, o.updated, &asked);
                Answer::Json(StatusCode::OK, v)
            }
            None => error(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                "Object not found.",
            ),
        }
    }

    fn find(&self, object: &str, id: &str, id_property: Option<&str>) -> Option<Object> {
        let table = self.objects.get(object)?;
        match id_property {
            None | Some("hs_object_id") => table
                .get(&id.parse().ok()?)
                .filter(|o| o.archived.is_none())
                .cloned(),
            Some(p) => table
                .values()
                .find(|o| {
                    o.archived.is_none()
                        && o.properties
                            .get(p)
                            .is_some_and(|v| v.eq_ignore_ascii_case(id))
                })
                .cloned(),
        }
    }

    /// `POST .../search` ([`docs::SEARCH`]): filter groups (OR of ANDs), one sort, `limit` at
    /// most 200, `after` as an offset, and no more than 10,000 results for a query. It sees the
    /// index, which lags the records by `search_lag`.
    fn search(&mut self, object: &str, body: &Value) -> Answer {
        if let Err(v) = check_keys(
            body,
            &[
                "filterGroups",
                "sorts",
                "properties",
                "limit",
                "after",
                "query",
            ],
        ) {
            return self.violation(format!("search {object}: {v}"));
        }
        let limit = body.get("limit").and_then(Value::as_u64).unwrap_or(10) as usize;
        if limit > 200 {
            return self.violation(format!("search {object}: limit {limit} is over 200"));
        }
        let after: usize = match body.get("after") {
            None | Some(Value::Null) => 0,
            Some(Value::String(s)) => s.parse().unwrap_or(0),
            Some(other) => {
                return self.violation(format!("search {object}: after {other} is not a string"))
            }
        };
        if after + limit > 10_000 {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "The search endpoints are limited to 10,000 total results for any given query.",
            );
        }
        let groups = body
            .get("filterGroups")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if groups.len() > 5 {
            return self.violation(format!("search {object}: more than 5 filter groups"));
        }
        let sorts = body
            .get("sorts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if sorts.len() > 1 {
            return self.violation(format!("search {object}: more than one sort"));
        }
        let asked: Vec<String> = body
            .get("properties")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let now = Instant::now();
        // What the index holds: each live record's latest version visible by now.
        let mut hits: Vec<(Object, BTreeMap<String, String>, i64)> = Vec::new();
        for o in self
            .objects
            .get(object)
            .into_iter()
            .flat_map(|t| t.values())
        {
            if o.archived.is_some() {
                continue;
            }
            let Some((_, props, updated)) = o.indexed.iter().rev().find(|(at, _, _)| *at <= now)
            else {
                continue;
            };
            let mut all = props.clone();
            all.insert("hs_object_id".into(), o.id.to_string());
            all.insert("createdate".into(), o.created.to_string());
            all.insert("lastmodifieddate".into(), updated.to_string());
            let matches = groups.is_empty()
                || groups.iter().any(|g| {
                    g.get("filters")
                        .and_then(Value::as_array)
                        .is_some_and(|fs| fs.iter().all(|f| filter_matches(f, &all)))
                });
            if matches {
                hits.push((o.clone(), props.clone(), *updated));
            }
        }
        let (sort_by, descending) = sorts
            .first()
            .map(|s| {
                (
                    s.get("propertyName")
                        .and_then(Value::as_str)
                        .unwrap_or("hs_object_id")
                        .to_owned(),
                    s.get("direction").and_then(Value::as_str) == Some("DESCENDING"),
                )
            })
            .unwrap_or(("hs_object_id".to_owned(), false));
        let key = |h: &(Object, BTreeMap<String, String>, i64)| -> (i64, String, u64) {
            match sort_by.as_str() {
                "lastmodifieddate" => (h.2, String::new(), h.0.id),
                "createdate" => (h.0.created, String::new(), h.0.id),
                "hs_object_id" => (h.0.id as i64, String::new(), h.0.id),
                p => (0, h.1.get(p).cloned().unwrap_or_default(), h.0.id),
            }
        };
        hits.sort_by_key(|h| key(h));
        if descending {
            hits.reverse();
        }
        let total = hits.len();
        let page: Vec<Value> = hits
            .iter()
            .skip(after)
            .take(limit)
            .map(|(o, props, updated)| Self::render(object, o, props, *updated, &asked))
            .collect();
        let mut v = json!({ "total": total, "results": page });
        if after + limit < total {
            v["paging"] = json!({ "next": { "after": (after + limit).to_string() } });
        }
        Answer::Json(StatusCode::OK, v)
    }

    /// Checks property values against the schema ([`docs::PROPERTIES`]): unknown, read-only,
    /// an option not in the list, a number that is not one, an email without `@`.
    fn invalid(object: &str, props: &Map<String, Value>) -> Option<(String, String)> {
        let schema = schema(object);
        for (name, value) in props {
            let Some(p) = schema.iter().find(|p| p.name == name) else {
                return Some((
                    "PROPERTY_DOESNT_EXIST".into(),
                    format!("Property \"{name}\" does not exist"),
                ));
            };
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Some((
                        "INVALID_TYPE".into(),
                        format!("{name}: {other} is not a property value"),
                    ))
                }
            };
            if p.read_only {
                return Some((
                    "READ_ONLY_VALUE".into(),
                    format!("{name} is a read only property; its value cannot be set"),
                ));
            }
            if text.is_empty() {
                continue;
            }
            if !p.options.is_empty() && !p.options.contains(&text.as_str()) {
                return Some((
                    "INVALID_OPTION".into(),
                    format!(
                        "{text} was not one of the allowed options: {}",
                        p.options.join(", ")
                    ),
                ));
            }
            if p.kind == "number" && text.parse::<f64>().is_err() {
                return Some((
                    "INVALID_INTEGER".into(),
                    format!("{text} is not a valid number for {name}"),
                ));
            }
            if name == "email" && !text.contains('@') {
                return Some((
                    "INVALID_EMAIL".into(),
                    format!("Email address {text} is invalid"),
                ));
            }
        }
        None
    }

    fn strings(props: &Map<String, Value>) -> BTreeMap<String, String> {
        props
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }

    fn email_owner(&self, object: &str, email: &str, except: Option<u64>) -> Option<u64> {
        if object != "contacts" || email.is_empty() {
            return None;
        }
        self.objects.get(object)?.values().find_map(|o| {
            (o.archived.is_none()
                && Some(o.id) != except
                && o.properties
                    .get("email")
                    .is_some_and(|e| e.eq_ignore_ascii_case(email)))
            .then_some(o.id)
        })
    }

    /// `POST .../batch/{read,create,update,upsert,archive}` ([`docs::CONTACTS`]): at most 100
    /// inputs; per-input failures answered 207 with `errors` beside the `results` that worked
    /// ([`docs::ERRORS`], "Multi-status"); a create whose email exists fails the whole batch 409,
    /// naming the existing id.
    fn batch(&mut self, object: &str, op: &str, body: &Value) -> Answer {
        let allowed: &[&str] = match op {
            "read" => &[
                "inputs",
                "properties",
                "idProperty",
                "propertiesWithHistory",
            ],
            _ => &["inputs"],
        };
        if let Err(v) = check_keys(body, allowed) {
            return self.violation(format!("batch/{op} {object}: {v}"));
        }
        let Some(inputs) = body.get("inputs").and_then(Value::as_array).cloned() else {
            return self.violation(format!("batch/{op} {object}: no inputs array"));
        };
        if inputs.len() > 100 {
            return self.violation(format!(
                "batch/{op} {object}: {} inputs, over 100",
                inputs.len()
            ));
        }
        let input_keys: &[&str] = match op {
            "read" | "archive" => &["id"],
            "create" => &["properties", "associations"],
            "update" => &["id", "properties", "idProperty"],
            "upsert" => &["id", "idProperty", "properties"],
            _ => {
                return error(
                    StatusCode::NOT_FOUND,
                    "OBJECT_NOT_FOUND",
                    "no such batch operation",
                )
            }
        };
        for i in &inputs {
            if let Err(v) = check_keys(i, input_keys) {
                return self.violation(format!("batch/{op} {object} input: {v}"));
            }
        }
        let mut results = Vec::new();
        let mut errors = Vec::new();
        match op {
            "read" => {
                let asked: Vec<String> = body
                    .get("properties")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let id_property = body.get("idProperty").and_then(Value::as_str);
                for i in &inputs {
                    let id = i.get("id").and_then(Value::as_str).unwrap_or_default();
                    match self.find(object, id, id_property) {
                        Some(o) => results.push(Self::render(object, &o, &o.properties, o.updated, &asked)),
                        None => errors.push(json!({
                            "status": "error", "category": "OBJECT_NOT_FOUND",
                            "message": "Could not get some objects, they may be deleted or not exist.",
                            "context": { "ids": [id] }
                        })),
                    }
                }
            }
            "create" => {
                for i in &inputs {
                    let props = i
                        .get("properties")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default();
                    if let Some((category, message)) = Self::invalid(object, &props) {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "VALIDATION_ERROR",
                            &format!("{category}: {message}"),
                        );
                    }
                    let email = props
                        .get("email")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if let Some(existing) = self.email_owner(object, email, None) {
                        return error(
                            StatusCode::CONFLICT,
                            "CONFLICT",
                            &format!("Contact already exists. Existing ID: {existing}"),
                        );
                    }
                }
                for i in &inputs {
                    let props = i
                        .get("properties")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default();
                    let id = self.insert(object, Self::strings(&props));
                    let o = self.objects[object][&id].clone();
                    let asked: Vec<String> = props.keys().cloned().collect();
                    results.push(Self::render(object, &o, &o.properties, o.updated, &asked));
                }
            }
            "update" | "upsert" => {
                for i in &inputs {
                    let props = i
                        .get("properties")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default();
                    let key = i
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let id_property = i.get("idProperty").and_then(Value::as_str);
                    if op == "upsert" && id_property.is_none() {
                        errors.push(input_error(
                            "VALIDATION_ERROR",
                            "idProperty is required for upsert",
                            &key,
                        ));
                        continue;
                    }
                    if let Some((category, message)) = Self::invalid(object, &props) {
                        errors.push(input_error(&category, &message, &key));
                        continue;
                    }
                    let existing = self.find(object, &key, id_property).map(|o| o.id);
                    let email = props
                        .get("email")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if let Some(owner) = self.email_owner(object, email, existing) {
                        errors.push(input_error(
                            "CONFLICT",
                            &format!("Contact already exists. Existing ID: {owner}"),
                            &key,
                        ));
                        continue;
                    }
                    let id = match existing {
                        Some(id) => {
                            self.modify(object, id, Self::strings(&props));
                            id
                        }
                        None if op == "upsert" => {
                            let mut p = Self::strings(&props);
                            if let Some(ip) = id_property {
                                p.entry(ip.to_owned()).or_insert(key.clone());
                            }
                            self.insert(object, p)
                        }
                        None => {
                            errors.push(input_error("OBJECT_NOT_FOUND", "Object not found", &key));
                            continue;
                        }
                    };
                    let o = self.objects[object][&id].clone();
                    let mut asked: Vec<String> = props.keys().cloned().collect();
                    if let Some(ip) = id_property {
                        asked.push(ip.to_owned());
                    }
                    let mut v = Self::render(object, &o, &o.properties, o.updated, &asked);
                    if op == "upsert" {
                        v["new"] = Value::Bool(existing.is_none());
                    }
                    results.push(v);
                }
            }
            "archive" => {
                for i in &inputs {
                    let id = i
                        .get("id")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<u64>().ok());
                    let at = self.tick();
                    if let Some(o) = id.and_then(|id| self.table(object).get_mut(&id)) {
                        if o.archived.is_none() {
                            o.archived = Some(at);
                        }
                    }
                }
                // Archiving answers 204, also for ids that do not exist.
                return Answer::Json(StatusCode::NO_CONTENT, Value::Null);
            }
            _ => unreachable!(),
        }
        let status = if !errors.is_empty() {
            StatusCode::MULTI_STATUS
        } else if op == "create" {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let mut v = json!({
            "status": "COMPLETE",
            "results": results,
            "startedAt": iso(now_ms()),
            "completedAt": iso(now_ms()),
        });
        if !errors.is_empty() {
            v["numErrors"] = json!(errors.len());
            v["errors"] = Value::Array(errors);
        }
        Answer::Json(status, v)
    }
}

fn input_error(category: &str, message: &str, id: &str) -> Value {
    json!({
        "status": "error",
        "category": category,
        "message": message,
        "context": { "id": [id] }
    })
}

/// The 429 body of [`docs::ERRORS`] / [`docs::RATE_LIMITS`].
fn rate_limited(policy: &str) -> Answer {
    let window = if policy == "SECONDLY" {
        "secondly"
    } else {
        "ten_secondly_rolling"
    };
    Answer::Json(
        StatusCode::TOO_MANY_REQUESTS,
        json!({
            "status": "error",
            "message": format!("You have reached your {window} limit."),
            "errorType": "RATE_LIMIT",
            "correlationId": "00000000-0000-4000-8000-000000000000",
            "policyName": policy,
            "groupName": "api-calls-private-app"
        }),
    )
}

/// Decodes one `application/x-www-form-urlencoded` value.
fn form_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], decoded) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuses keys the documented body does not have.
fn check_keys(v: &Value, allowed: &[&str]) -> Result<(), String> {
    let Some(o) = v.as_object() else {
        return Err(format!("{v} is not an object"));
    };
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "unknown key {k:?} (allowed: {})",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

/// One search filter ([`docs::SEARCH`], "Filter search results"). Dates compare as epoch
/// milliseconds; text equality ignores case.
fn filter_matches(f: &Value, props: &BTreeMap<String, String>) -> bool {
    let name = f
        .get("propertyName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let op = f
        .get("operator")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let want = f.get("value").map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let have = props.get(name);
    let numeric = |s: &str| s.parse::<f64>().ok();
    let cmp = |have: &str, want: &str| match (numeric(have), numeric(want)) {
        (Some(h), Some(w)) => h.partial_cmp(&w),
        _ => Some(have.to_lowercase().cmp(&want.to_lowercase())),
    };
    use std::cmp::Ordering::*;
    match (op, have, want.as_deref()) {
        ("HAS_PROPERTY", h, _) => h.is_some(),
        ("NOT_HAS_PROPERTY", h, _) => h.is_none(),
        ("EQ", Some(h), Some(w)) => cmp(h, w) == Some(Equal),
        ("NEQ", h, Some(w)) => h.is_none_or(|h| cmp(h, w) != Some(Equal)),
        ("GT", Some(h), Some(w)) => cmp(h, w) == Some(Greater),
        ("GTE", Some(h), Some(w)) => matches!(cmp(h, w), Some(Greater | Equal)),
        ("LT", Some(h), Some(w)) => cmp(h, w) == Some(Less),
        ("LTE", Some(h), Some(w)) => matches!(cmp(h, w), Some(Less | Equal)),
        ("IN", Some(h), _) => f.get("values").and_then(Value::as_array).is_some_and(|vs| {
            vs.iter()
                .any(|v| v.as_str().is_some_and(|v| v.eq_ignore_ascii_case(h)))
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_iso_times() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_764_871_200_123), "2025-12-04T18:00:00.123Z");
    }
}
