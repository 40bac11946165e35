//! The config file (TOML). Strict: an unknown key is an error naming it and its line, and so is
//! a mapped field the connector's discovered schema lacks. Every field is documented here; the
//! README's reference is this file in prose.
//!
//! ```toml
//! state = "duplex.redb"                  # optional; relative to this file
//!
//! [limits]                               # optional; per plugin call
//! memory_mb = 256
//! cpu_per_call = "10s"
//! call_timeout = "60s"
//!
//! [connections.crm]
//! plugin = "builtin:sql"                 # or a path to a connector .wasm
//! config = { url = "sqlite://crm.db" }   # handed to the connector as JSON
//! grants = { sql = ["sqlite://crm.db"] } # what the plugin may open; nothing else
//!
//! [connections.erp]
//! plugin = "builtin:sql"
//! config = { url = "sqlite://erp.db" }
//! grants = { sql = ["sqlite://erp.db"] }
//!
//! [rules.larger-wins]
//! plugin = "rules/larger_wins.wasm"
//!
//! [syncs.customers]
//! left = "crm.customers"                 # connection.stream
//! right = "erp.clients"
//! match = { field = "email", ignore_case = true }
//! conflict = "last-writer-wins"          # prefer-left | prefer-right | manual | rule:NAME
//! deletes = "propagate"                  # ignore | hold
//! schedule = "realtime"                  # "30s", "5m", "cron: 0 */5 * * * *"
//! # Only active customers sync; one that stops being active keeps its copy (or "delete", "hold").
//! filter = { left = "status = 'active'", right = "status_code in (1, 2)", leaving = "keep" }
//!
//! [[syncs.customers.fields]]
//! left = "email"
//! right = "mail"
//!
//! [[syncs.customers.fields]]
//! left = "status"
//! right = "status_code"
//! values = { active = 1, lead = 2 }      # left value = right value
//! conflict = "manual"
//! direction = "both"                     # left-to-right | right-to-left
//!
//! [[syncs.customers.fields]]
//! left = "credit"
//! right = "credit_balance"
//! counter = true                         # both sides' changes add up, none is picked
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::driver::schedule::Schedule;
use crate::engine::{DeletePolicy, Direction, Policy, Side, MOST_SIDES};
use crate::host::{http, Grants};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where Duplex keeps links, bases, cursors and conflicts: one redb file. Relative to the
    /// config file. Default: `duplex.redb` beside it.
    #[serde(default)]
    pub state: Option<String>,
    /// Limits for every plugin call.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The systems Duplex talks to, by name.
    pub connections: BTreeMap<String, ConnectionConfig>,
    /// Custom conflict rules, by name; a sync uses one with `conflict = "rule:NAME"`.
    #[serde(default)]
    pub rules: BTreeMap<String, RuleConfig>,
    /// The syncs, by name.
    #[serde(default)]
    pub syncs: BTreeMap<String, SyncConfig>,
    /// How `duplex serve` listens.
    #[serde(default)]
    pub serve: ServeConfig,
}

/// Where `duplex serve` answers HTTP. Plain HTTP is only for a loopback address: any other
/// needs a certificate and key, or `insecure_http = true` said out loud.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// `host:port`; default `127.0.0.1:7300`.
    pub listen: Option<toml::Spanned<String>>,
    /// PEM certificate chain, relative to the config file.
    pub tls_cert: Option<String>,
    /// PEM private key, relative to the config file.
    pub tls_key: Option<String>,
    /// Serve plain HTTP on an address other than loopback (behind a proxy that terminates
    /// TLS, say).
    #[serde(default)]
    pub insecure_http: bool,
}

/// Limits applied to each call into a plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest memory an instance may use, in MiB. Default 256.
    #[serde(default = "default_memory")]
    pub memory_mb: usize,
    /// Guest CPU time per call (`10s`). Default 10 s.
    #[serde(default = "default_cpu")]
    pub cpu_per_call: String,
    /// Wall-clock time per call, including time the host spends on the plugin's behalf
    /// (`60s`). Default 60 s.
    #[serde(default = "default_timeout")]
    pub call_timeout: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            memory_mb: default_memory(),
            cpu_per_call: default_cpu(),
            call_timeout: default_timeout(),
        }
    }
}

fn default_memory() -> usize {
    256
}
fn default_cpu() -> String {
    "10s".into()
}
fn default_timeout() -> String {
    "60s".into()
}

/// One connection: a connector plugin, its config and what it is granted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// `builtin:sql` (the SQL connector shipped inside Duplex) or a path to a connector
    /// component, relative to this file.
    pub plugin: Spanned<String>,
    /// The connector's own config, handed to it as JSON (see `duplex plugin inspect` for its
    /// schema). `sqlite://` URLs with relative paths are relative to this file.
    #[serde(default)]
    pub config: toml::Table,
    /// What the plugin may use. Nothing is granted unless named here.
    #[serde(default)]
    pub grants: GrantsConfig,
    /// Secrets by name, and where the host reads each: `{ env = "VAR" }` or `{ file = "path" }`
    /// (relative to this file). Never the value itself: the plugin never sees it either.
    #[serde(default)]
    pub secrets: BTreeMap<String, Spanned<SecretConfig>>,
    /// How the host uses the secrets and paces the plugin's HTTP requests.
    #[serde(default)]
    pub http: HttpConfig,
}

/// A connection's grants.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// Database URLs the plugin may open (`sqlite://crm.db`, relative to this file).
    #[serde(default)]
    pub sql: Vec<String>,
    /// Origins the plugin may send HTTP requests to, each optionally narrowed to a path prefix
    /// (`https://api.hubapi.com`, `https://example.com/api/`). `http://` only where named so.
    #[serde(default)]
    pub http: Vec<Spanned<String>>,
}

/// Where the host reads one secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    /// An environment variable of the Duplex process.
    #[serde(default)]
    pub env: Option<String>,
    /// A file holding the value (a trailing newline is dropped), relative to this file.
    #[serde(default)]
    pub file: Option<String>,
}

/// A connection's HTTP settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Headers the host adds to requests for an origin:
    /// `{ origin = "https://api.hubapi.com", name = "Authorization", value = "Bearer {token}" }`,
    /// where `{token}` is one of the connection's secrets.
    #[serde(default)]
    pub headers: Vec<Spanned<HeaderConfig>>,
    /// Most requests the connection sends, over every sync using it: `100 per 10s`.
    #[serde(default)]
    pub rate: Option<Spanned<String>>,
    /// Further budgets for paths that have their own limit:
    /// `{ path = "/crm/v3/objects/*/search", rate = "5 per 1s" }` (`*` is one path segment).
    #[serde(default)]
    pub rates: Vec<Spanned<RateConfig>>,
    /// An OAuth 2.0 flow the host runs, adding `Authorization: Bearer <access token>` to
    /// requests for `origin`.
    #[serde(default)]
    pub oauth: Option<Spanned<OAuthConfig>>,
    /// HMAC-SHA256 signatures the host adds: `{ origin, header = "X-Signature", secret =
    /// "signing_key", message = "{method}\n{path}\n{timestamp}\n{body}", encoding = "hex" |
    /// "base64", prefix = "sha256=", timestamp_header = "X-Timestamp" }`.
    #[serde(default)]
    pub signatures: Vec<Spanned<SignatureConfig>>,
}

/// One signing rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureConfig {
    pub origin: String,
    pub header: String,
    pub secret: String,
    pub message: String,
    #[serde(default = "default_encoding")]
    pub encoding: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub timestamp_header: Option<String>,
}

fn default_encoding() -> String {
    "hex".into()
}

/// An OAuth 2.0 flow: `client_id`, `client_secret` and `refresh_token` are templates over the
/// connection's secrets (`"{client_secret}"`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    pub origin: String,
    pub token_url: String,
    /// `refresh_token` or `client_credentials`.
    pub grant: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// One credential header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderConfig {
    pub origin: String,
    pub name: String,
    pub value: String,
}

/// One path's budget.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub path: String,
    pub rate: String,
}

/// A custom conflict rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Path to the rule component, relative to this file.
    pub plugin: Spanned<String>,
}

/// One sync: two streams kept consistent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// `connection.stream` of the left side.
    pub left: Spanned<String>,
    /// `connection.stream` of the right side.
    pub right: Spanned<String>,
    /// `connection.stream` of each further side: one record kept the same in three systems
    /// or more (a CRM, an ERP and a helpdesk), one link per record. Each field then names its
    /// field on these sides in its own `also`.
    #[serde(default)]
    pub also: Vec<Spanned<String>>,
    /// How records are matched on first sight (else every unlinked record is new to the other
    /// side). Ambiguous matches are reported, never guessed.
    #[serde(default, rename = "match")]
    pub match_key: Option<MatchConfig>,
    /// The default conflict policy: `last-writer-wins` (default), `prefer-left`,
    /// `prefer-right`, `manual`, or `rule:NAME`.
    #[serde(default)]
    pub conflict: Option<Spanned<String>>,
    /// What a delete on one side does to the other: `propagate` (default), `ignore`, `hold`.
    #[serde(default)]
    pub deletes: DeletesConfig,
    /// When the sync runs: `realtime` (default), an interval (`5m`), or `cron: <expression>`.
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    /// Most changes read from each side per cycle. Default 1,000: an initial load of 60,000
    /// rows between PostgreSQL databases ran about a sixth slower at 500, and no faster at
    /// 2,000 or 4,000 (see README, Performance), while a larger batch holds more records in a
    /// plugin's memory at once (its limit is 256 MiB).
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Most changes of one source transaction applied to the other sides at once, in one
    /// transaction there, where the source's connector tells where its transactions end
    /// (PostgreSQL's does): a cycle reads on past its batch to a transaction's end. A bigger
    /// transaction is applied in parts, and that is logged. Default 20,000.
    #[serde(default = "default_max_transaction")]
    pub max_transaction: u32,
    /// Which records of each side sync (see `FilterConfig`); by default all.
    #[serde(default)]
    pub filter: Option<FilterConfig>,
    /// The mapped fields. Fields not listed are left alone.
    pub fields: Vec<FieldConfig>,
}

/// Record filters: an expression per side over the sync's mapped fields (by common name, or
/// by the side's own field name), such as `status = 'active' and country in ('DE', 'FR')`.
/// See `engine::filter` for the language.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    #[serde(default)]
    pub left: Option<Spanned<String>>,
    #[serde(default)]
    pub right: Option<Spanned<String>>,
    /// The filters of the sync's `also` sides, in their order; `""` for a side without one.
    #[serde(default)]
    pub also: Vec<Spanned<String>>,
    /// What a record leaving its filter does to its copy on the other side: `keep`
    /// (default), `delete`, or `hold` for a person.
    #[serde(default)]
    pub leaving: LeavingConfig,
}

/// See [`FilterConfig::leaving`].
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeavingConfig {
    #[default]
    Keep,
    Delete,
    Hold,
}

impl From<LeavingConfig> for crate::engine::Leaving {
    fn from(l: LeavingConfig) -> Self {
        match l {
            LeavingConfig::Keep => crate::engine::Leaving::Keep,
            LeavingConfig::Delete => crate::engine::Leaving::Delete,
            LeavingConfig::Hold => crate::engine::Leaving::Hold,
        }
    }
}

fn default_batch() -> u32 {
    1_000
}

fn default_max_transaction() -> u32 {
    crate::driver::MAX_TRANSACTION
}

/// A sync's delete policy.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeletesConfig {
    #[default]
    Propagate,
    Ignore,
    Hold,
}

/// How records are matched on first sight.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// A mapped field, by its common name.
    pub field: Spanned<String>,
    /// Compare text ignoring case and surrounding spaces.
    #[serde(default)]
    pub ignore_case: bool,
}

/// One mapped field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// The left stream's field.
    pub left: Spanned<String>,
    /// The right stream's field.
    pub right: Spanned<String>,
    /// The field on each of the sync's `also` sides, in their order.
    #[serde(default)]
    pub also: Vec<Spanned<String>>,
    /// The common name, used in conflicts and `match`. Default: the left field's name.
    #[serde(default)]
    pub name: Option<String>,
    /// `both` (default), `left-to-right` (the left owns it), `right-to-left`.
    #[serde(default)]
    pub direction: DirectionConfig,
    /// The side that owns the field, by connection (or `connection.stream`): its value is
    /// written to every other side, and a change made elsewhere is put back. In a sync of two,
    /// the same as a `direction`; in a sync of more, the way to make a field one-way.
    #[serde(default)]
    pub owner: Option<Spanned<String>>,
    /// This field's conflict policy, overriding the sync's.
    #[serde(default)]
    pub conflict: Option<Spanned<String>>,
    /// Value translation: `{ left value = right value }`, applied both ways; in a sync of more
    /// sides, `{ left value = [right value, third value, ...] }`.
    #[serde(default)]
    pub values: Option<toml::Table>,
    /// A counter (stock on hand, seats used): when both sides change it, the result is the
    /// last total plus both changes, written to both sides. Integer or decimal on both sides,
    /// flowing both ways, with no `values` or `conflict`.
    #[serde(default)]
    pub counter: Option<Spanned<bool>>,
}

/// A field's direction.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionConfig {
    #[default]
    Both,
    LeftToRight,
    RightToLeft,
}

impl From<DirectionConfig> for Direction {
    fn from(d: DirectionConfig) -> Self {
        match d {
            DirectionConfig::Both => Direction::Both,
            DirectionConfig::LeftToRight => Direction::LeftToRight,
            DirectionConfig::RightToLeft => Direction::RightToLeft,
        }
    }
}

impl From<DeletesConfig> for DeletePolicy {
    fn from(d: DeletesConfig) -> Self {
        match d {
            DeletesConfig::Propagate => DeletePolicy::Propagate,
            DeletesConfig::Ignore => DeletePolicy::Ignore,
            DeletesConfig::Hold => DeletePolicy::Hold,
        }
    }
}

/// A config error, with the file and line it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} line {line}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// A parsed config and where it came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    pub dir: PathBuf,
    source: String,
}

impl Loaded {
    /// Reads and parses a config file.
    pub fn read(path: &Path) -> Result<Loaded, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, source)
    }

    pub fn parse(path: &Path, source: String) -> Result<Loaded, ConfigError> {
        let config: Config = toml::from_str(&source).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        let loaded = Loaded {
            config,
            path: path.to_owned(),
            dir,
            source,
        };
        loaded.validate()?;
        Ok(loaded)
    }

    /// The line of a span in the file, from 1.
    pub fn line<T>(&self, s: &Spanned<T>) -> usize {
        let start = s.span().start.min(self.source.len());
        self.source[..start].matches('\n').count() + 1
    }

    /// An error about `key`, at the line of `at`.
    pub fn invalid<T>(
        &self,
        at: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            line: self.line(at),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Checks what can be checked without plugins: references between sections, policies,
    /// schedules, limits.
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, sync) in &self.config.syncs {
            let sides = sync.streams();
            if sides.len() > MOST_SIDES {
                return Err(self.invalid(
                    &sync.also[MOST_SIDES - 2],
                    format!("syncs.{name}.also"),
                    format!(
                        "a sync has at most {MOST_SIDES} sides; this one names {}",
                        sides.len()
                    ),
                ));
            }
            for (key, at) in &sides {
                let (conn, _) = split_stream(at.get_ref()).ok_or_else(|| {
                    self.invalid(
                        at,
                        format!("syncs.{name}.{key}"),
                        format!("{:?} is not connection.stream", at.get_ref()),
                    )
                })?;
                if !self.config.connections.contains_key(conn) {
                    return Err(self.invalid(
                        at,
                        format!("syncs.{name}.{key}"),
                        format!(
                            "no connection named {conn} (connections: {})",
                            self.config
                                .connections
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            let streams: Vec<&str> = sides.iter().map(|(_, s)| s.get_ref().as_str()).collect();
            if let Some(p) = &sync.conflict {
                self.policy(p, &format!("syncs.{name}.conflict"), &streams)?;
            }
            if !sync.also.is_empty() {
                self.validate_more_sides(name, sync, &streams)?;
            } else if let Some(at) = sync.filter.as_ref().and_then(|f| f.also.first()) {
                return Err(self.invalid(
                    at,
                    format!("syncs.{name}.filter.also"),
                    "filters further sides, but the sync has none: list them in the sync's also",
                ));
            } else if let Some((i, f)) = sync
                .fields
                .iter()
                .enumerate()
                .find(|(_, f)| !f.also.is_empty())
            {
                return Err(self.invalid(
                    &f.also[0],
                    format!("syncs.{name}.fields[{i}].also"),
                    "names a field on further sides, but the sync has none: list them in the sync's also",
                ));
            }
            for (i, f) in sync.fields.iter().enumerate() {
                if let Some(p) = &f.conflict {
                    self.policy(p, &format!("syncs.{name}.fields[{i}].conflict"), &streams)?;
                }
                if let Some(o) = &f.owner {
                    let key = format!("syncs.{name}.fields[{i}].owner");
                    if !matches!(f.direction, DirectionConfig::Both) {
                        return Err(self.invalid(o, key, "give a direction or an owner, not both"));
                    }
                    side_named(o.get_ref().trim(), &streams)
                        .map_err(|why| self.invalid(o, key, format!("names {why}")))?;
                }
                if let Some(c) = f.counter.as_ref().filter(|c| *c.get_ref()) {
                    let key = format!("syncs.{name}.fields[{i}].counter");
                    let clash = if f.values.is_some() {
                        Some("values: a counter's changes are added, not translated")
                    } else if f.conflict.is_some() {
                        Some("conflict: a counter adds both sides' changes, no policy picks one")
                    } else if !matches!(f.direction, DirectionConfig::Both) || f.owner.is_some() {
                        Some("direction: a counter flows both ways; a one-way field has no changes to add")
                    } else {
                        None
                    };
                    if let Some(why) = clash {
                        return Err(self.invalid(c, key, format!("a counter takes no {why}")));
                    }
                    if sync
                        .match_key
                        .as_ref()
                        .is_some_and(|m| m.field.get_ref() == common_name(f))
                    {
                        return Err(self.invalid(c, key, "a counter cannot be the match key"));
                    }
                }
            }
            if let Some(s) = &sync.schedule {
                Schedule::parse(s.get_ref())
                    .map_err(|m| self.invalid(s, format!("syncs.{name}.schedule"), m))?;
            }
            if let Some(m) = &sync.match_key {
                if !sync
                    .fields
                    .iter()
                    .any(|f| common_name(f) == m.field.get_ref())
                {
                    return Err(self.invalid(
                        &m.field,
                        format!("syncs.{name}.match.field"),
                        format!(
                            "{} is not one of the sync's mapped fields",
                            m.field.get_ref()
                        ),
                    ));
                }
            }
            if sync.fields.is_empty() {
                return Err(self.invalid(
                    &sync.left,
                    format!("syncs.{name}.fields"),
                    "a sync needs at least one mapped field",
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, f) in sync.fields.iter().enumerate() {
                if !seen.insert(common_name(f).to_owned()) {
                    return Err(self.invalid(
                        &f.left,
                        format!("syncs.{name}.fields[{i}]"),
                        format!("field {} is mapped twice", common_name(f)),
                    ));
                }
            }
        }
        Ok(())
    }

    /// What a sync of more than two sides can do yet: each field names its field on every
    /// side; `direction` and `prefer-left` / `prefer-right` are defined between two sides and
    /// refused here, each with what to use.
    fn validate_more_sides(
        &self,
        name: &str,
        sync: &SyncConfig,
        streams: &[&str],
    ) -> Result<(), ConfigError> {
        let n = sync.also.len();
        if let Some(at) = sync.filter.as_ref().and_then(|f| f.also.get(n)) {
            return Err(self.invalid(
                at,
                format!("syncs.{name}.filter.also"),
                format!("names more filters than the sync has further sides ({n})"),
            ));
        }
        // A policy that decides between a left and a right only.
        let two_sided = |p: &Spanned<String>, key: String| {
            match self.policy(p, &key, streams)? {
            Policy::Prefer(_) => Err(self.invalid(
                p,
                key,
                format!("{} decides between two sides; a sync of more takes last-writer-wins, manual, order: SIDE, SIDE, ... (its sides by connection, first wins) or rule:NAME", p.get_ref().trim()),
            )),
            _ => Ok(()),
        }
        };
        if let Some(p) = &sync.conflict {
            two_sided(p, format!("syncs.{name}.conflict"))?;
        }
        for (i, f) in sync.fields.iter().enumerate() {
            let key = |k: &str| format!("syncs.{name}.fields[{i}].{k}");
            if f.also.len() != n {
                return Err(self.invalid(
                    f.also.first().unwrap_or(&f.right),
                    key("also"),
                    format!(
                        "names {} field{} for the sync's {n} further side{} ({}): give one for each, in that order",
                        f.also.len(),
                        if f.also.len() == 1 { "" } else { "s" },
                        if n == 1 { "" } else { "s" },
                        sync.also.iter().map(|s| s.get_ref().as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            let refuse = |at: &Spanned<String>, k: &str, why: &str| {
                Err(self.invalid(
                    at,
                    key(k),
                    format!("a sync of more than two sides takes no {k} yet: {why}"),
                ))
            };
            if !matches!(f.direction, DirectionConfig::Both) {
                return refuse(
                    &f.left,
                    "direction",
                    "name the side that owns the field with owner = \"CONNECTION\"",
                );
            }
            if let Some(p) = &f.conflict {
                two_sided(p, key("conflict"))?;
            }
        }
        Ok(())
    }

    /// What connection `name` grants its plugin, with its secrets read. Errors name the key
    /// and line, and the variable or file a secret was looked for in; never a secret's value.
    pub fn grants(&self, name: &str, c: &ConnectionConfig) -> Result<Grants, ConfigError> {
        let key = |k: &str| format!("connections.{name}.{k}");
        let mut http = http::Grant::default();
        for (i, o) in c.grants.http.iter().enumerate() {
            let origin = http::Origin::parse(o.get_ref())
                .map_err(|m| self.invalid(o, key(&format!("grants.http[{i}]")), m))?;
            http.origins.push(origin);
        }
        for (secret, at) in &c.secrets {
            let source = match (&at.get_ref().env, &at.get_ref().file) {
                (Some(var), None) => http::SecretSource::Env(var.clone()),
                (None, Some(file)) => http::SecretSource::File(self.resolve(file)),
                _ => {
                    return Err(self.invalid(
                        at,
                        key(&format!("secrets.{secret}")),
                        "name exactly one of env = \"VARIABLE\" or file = \"path\"; a secret's value never goes in the config",
                    ))
                }
            };
            let value = source
                .read()
                .map_err(|m| self.invalid(at, key(&format!("secrets.{secret}")), m))?;
            http.secrets.insert(secret.clone(), value);
        }
        for (i, h) in c.http.headers.iter().enumerate() {
            let at = key(&format!("http.headers[{i}]"));
            let header = h.get_ref();
            let origin =
                http::Origin::parse(&header.origin).map_err(|m| self.invalid(h, &at, m))?;
            if !http.origins.contains(&origin) {
                return Err(self.invalid(
                    h,
                    &at,
                    format!("{origin} is not one of the connection's grants.http; credentials go only where requests may"),
                ));
            }
            let rule = http::HeaderRule::new(origin, &header.name, &header.value, &|n| {
                c.secrets.contains_key(n)
            })
            .map_err(|m| self.invalid(h, &at, m))?;
            http.headers.push(rule);
        }
        for (i, sc) in c.http.signatures.iter().enumerate() {
            let at = key(&format!("http.signatures[{i}]"));
            let g = sc.get_ref();
            let origin = http::Origin::parse(&g.origin).map_err(|m| self.invalid(sc, &at, m))?;
            if !http.origins.contains(&origin) {
                return Err(self.invalid(
                    sc,
                    &at,
                    format!("{origin} is not one of the connection's grants.http"),
                ));
            }
            let signature = http::Signature::new(
                origin,
                &g.header,
                &g.secret,
                &g.message,
                &g.encoding,
                &g.prefix,
                g.timestamp_header.as_deref(),
                &|n| c.secrets.contains_key(n),
            )
            .map_err(|m| self.invalid(sc, &at, m))?;
            http.signatures.push(signature);
        }
        if let Some(o) = &c.http.oauth {
            http.oauth = Some(self.oauth(o, &key("http.oauth"), &http.origins, c)?);
        }
        if let Some(rate) = &c.http.rate {
            let budget = http::Budget::parse(rate.get_ref(), None)
                .map_err(|m| self.invalid(rate, key("http.rate"), m))?;
            http.budgets.push(budget);
        }
        for (i, r) in c.http.rates.iter().enumerate() {
            let budget = http::Budget::parse(&r.get_ref().rate, Some(&r.get_ref().path))
                .map_err(|m| self.invalid(r, key(&format!("http.rates[{i}]")), m))?;
            http.budgets.push(budget);
        }
        if http.origins.is_empty()
            && (!c.http.headers.is_empty()
                || c.http.rate.is_some()
                || !c.http.rates.is_empty()
                || c.http.oauth.is_some()
                || !c.http.signatures.is_empty())
        {
            return Err(self.invalid(
                &c.plugin,
                key("http"),
                "sets HTTP headers or rates, but grants.http names no origin",
            ));
        }
        Ok(Grants {
            sql: c.grants.sql.iter().map(|u| self.resolve_url(u)).collect(),
            http,
        })
    }

    fn oauth(
        &self,
        at: &Spanned<OAuthConfig>,
        key: &str,
        granted: &[http::Origin],
        c: &ConnectionConfig,
    ) -> Result<http::OAuth, ConfigError> {
        let o = at.get_ref();
        let bad = |m: String| self.invalid(at, key, m);
        let known = |n: &str| c.secrets.contains_key(n);
        let template = |name: &str, text: &str| {
            http::Template::new(text, &known).map_err(|e| bad(format!("{name}: {e}")))
        };
        let origin = http::Origin::parse(&o.origin).map_err(&bad)?;
        let token_origin = granted
            .iter()
            .find(|g| g.admits_url(&o.token_url))
            .cloned()
            .ok_or_else(|| {
                bad(format!(
                    "token_url {} is not under any of the connection's grants.http",
                    o.token_url
                ))
            })?;
        if !granted.contains(&origin) {
            return Err(bad(format!(
                "{origin} is not one of the connection's grants.http; tokens go only where requests may"
            )));
        }
        let flow = match o.grant.as_str() {
            "refresh_token" => http::OAuthFlow::RefreshToken,
            "client_credentials" => http::OAuthFlow::ClientCredentials,
            other => {
                return Err(bad(format!(
                    "grant {other:?} is not one the host runs (refresh_token, client_credentials)"
                )))
            }
        };
        let refresh_token = match (&o.refresh_token, flow) {
            (Some(t), _) => Some(template("refresh_token", t)?),
            (None, http::OAuthFlow::RefreshToken) => {
                return Err(bad(
                    "the refresh_token grant needs refresh_token = \"{secret}\"".into(),
                ))
            }
            (None, _) => None,
        };
        Ok(http::OAuth {
            origin,
            token_url: o.token_url.clone(),
            token_origin,
            flow,
            client_id: template("client_id", &o.client_id)?,
            client_secret: template("client_secret", &o.client_secret)?,
            refresh_token,
            scope: o.scope.clone(),
        })
    }

    /// Parses a conflict policy.
    /// A conflict policy; `sides` are the sync's `connection.stream`s, in order, for `order:`.
    pub fn policy(
        &self,
        p: &Spanned<String>,
        key: &str,
        sides: &[&str],
    ) -> Result<Policy, ConfigError> {
        let s = p.get_ref().trim();
        if let Some(list) = s.strip_prefix("order:") {
            return side_order(list, sides)
                .map(Policy::Order)
                .map_err(|why| self.invalid(p, key, why));
        }
        Ok(match s {
            "last-writer-wins" => Policy::LastWriterWins,
            "prefer-left" => Policy::Prefer(Side::LEFT),
            "prefer-right" => Policy::Prefer(Side::RIGHT),
            "manual" => Policy::Manual,
            _ => match s.strip_prefix("rule:") {
                Some(rule) if self.config.rules.contains_key(rule.trim()) => Policy::Rule(rule.trim().to_owned()),
                Some(rule) => return Err(self.invalid(p, key, format!("no rule named {} in [rules]", rule.trim()))),
                None => {
                    return Err(self.invalid(
                        p,
                        key,
                        format!("{s:?} is not a conflict policy: use last-writer-wins, prefer-left, prefer-right, order: SIDE, SIDE, ..., manual or rule:NAME"),
                    ))
                }
            },
        })
    }

    /// The state file's path.
    pub fn state_path(&self) -> PathBuf {
        self.resolve(self.config.state.as_deref().unwrap_or("duplex.redb"))
    }

    /// A path relative to the config file.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }

    /// `sqlite://relative.db` made absolute against the config file's folder; other URLs as
    /// they are.
    pub fn resolve_url(&self, url: &str) -> String {
        match url.strip_prefix("sqlite://") {
            Some(path) if !path.starts_with('/') && !path.is_empty() => {
                format!("sqlite://{}", self.dir.join(path).display())
            }
            _ => url.to_owned(),
        }
    }

    /// A connection's config as JSON, with relative sqlite URLs resolved.
    pub fn connector_config(&self, conn: &ConnectionConfig) -> String {
        let mut json = serde_json::to_value(&conn.config).unwrap_or_default();
        self.resolve_urls(&mut json);
        json.to_string()
    }

    fn resolve_urls(&self, v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s.starts_with("sqlite://") => *s = self.resolve_url(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| self.resolve_urls(v)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|v| self.resolve_urls(v)),
            _ => {}
        }
    }

    pub fn limits(&self) -> Result<crate::plugin::Limits, ConfigError> {
        let l = &self.config.limits;
        let dur = |s: &str, key: &str| {
            crate::driver::schedule::parse_duration(s).ok_or_else(|| ConfigError::Parse {
                path: self.path.clone(),
                message: format!("limits.{key}: {s:?} is not a duration (such as \"10s\")"),
            })
        };
        Ok(crate::plugin::Limits {
            memory_bytes: l.memory_mb << 20,
            cpu_per_call: dur(&l.cpu_per_call, "cpu_per_call")?,
            call_timeout: dur(&l.call_timeout, "call_timeout")?,
        })
    }
}

/// `crm.customers` is connection `crm`, stream `customers`.
pub fn split_stream(s: &str) -> Option<(&str, &str)> {
    let (c, st) = s.split_once('.')?;
    (!c.is_empty() && !st.is_empty()).then_some((c, st))
}

/// The sides named by `order: crm, erp, desk`, first wins: each by its connection, or by its
/// `connection.stream` where two sides share a connection. Sides left out rank after, in the
/// sync's order.
fn side_order(list: &str, sides: &[&str]) -> Result<Vec<Side>, String> {
    let mut order: Vec<Side> = Vec::new();
    for item in list.split(',').map(str::trim) {
        let side = side_named(item, sides).map_err(|why| format!("order names {why}"))?;
        if order.contains(&side) {
            return Err(format!("order names {item} twice"));
        }
        order.push(side);
    }
    for side in Side::all(sides.len()) {
        if !order.contains(&side) {
            order.push(side);
        }
    }
    Ok(order)
}

/// The side `item` names among the sync's `sides` (their `connection.stream`s): by its
/// connection, or by its `connection.stream` where two sides share a connection.
pub fn side_named(item: &str, sides: &[&str]) -> Result<Side, String> {
    let hits: Vec<usize> = (0..sides.len())
        .filter(|&i| sides[i] == item || split_stream(sides[i]).is_some_and(|(c, _)| c == item))
        .collect();
    match hits.as_slice() {
        [one] => Ok(Side::nth(*one)),
        [] => Err(format!(
            "{item:?}, which is none of the sync's sides ({})",
            sides.join(", ")
        )),
        _ => Err(format!(
            "{item:?}, which is more than one of the sync's sides: name it as connection.stream"
        )),
    }
}

/// The config key naming `side` in a sync or a field: `left`, `right`, `also[0]`, ...
pub fn side_key(side: Side) -> String {
    match side.index() {
        0 => "left".to_owned(),
        1 => "right".to_owned(),
        n => format!("also[{}]", n - 2),
    }
}

/// Each side's config key (see [`side_key`]) with what it names, in the order of sides.
fn by_side<'a>(
    left: &'a Spanned<String>,
    right: &'a Spanned<String>,
    also: &'a [Spanned<String>],
) -> Vec<(String, &'a Spanned<String>)> {
    [left, right]
        .into_iter()
        .chain(also)
        .enumerate()
        .map(|(i, s)| (side_key(Side::nth(i)), s))
        .collect()
}

impl SyncConfig {
    /// Each side's key and `connection.stream`, in order: `left`, `right`, then `also[i]`.
    pub fn streams(&self) -> Vec<(String, &Spanned<String>)> {
        by_side(&self.left, &self.right, &self.also)
    }
}

impl FieldConfig {
    /// Each side's key and field name, in the sync's order of sides.
    pub fn names(&self) -> Vec<(String, &Spanned<String>)> {
        by_side(&self.left, &self.right, &self.also)
    }
}

/// A field's common name: its `name`, else the left field's.
pub fn common_name(f: &FieldConfig) -> &str {
    f.name.as_deref().unwrap_or(f.left.get_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in this module's documentation parses and validates.
    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n");
        let loaded = Loaded::parse(Path::new("duplex.toml"), example).unwrap();
        let sync = &loaded.config.syncs["customers"];
        assert_eq!(sync.fields.len(), 3);
        assert_eq!(
            loaded
                .policy(sync.conflict.as_ref().unwrap(), "x", &["a.s", "b.s"])
                .unwrap(),
            Policy::LastWriterWins
        );
    }

    /// A sync of three sides: each field names its column on every side, `order:` names sides
    /// by connection, and what is defined between two sides only is refused with its key.
    #[test]
    fn a_sync_of_three_sides_checks_its_fields_and_its_order() {
        let config = |sync: &str, field: &str| {
            format!(
                r#"
[connections.crm]
plugin = "builtin:sql"
[connections.erp]
plugin = "builtin:sql"
[connections.desk]
plugin = "builtin:sql"

[syncs.people]
left = "crm.people"
right = "erp.people"
{sync}
fields = [{{ left = "email", right = "mail", {field} }}]
"#
            )
        };
        let good = Loaded::parse(
            Path::new("duplex.toml"),
            config(r#"also = ["desk.users"]"#, r#"also = ["email_address"]"#),
        )
        .unwrap();
        let order = Spanned::new(0..0, "order: desk, crm".to_owned());
        let sides = ["crm.people", "erp.people", "desk.users"];
        assert_eq!(
            good.policy(&order, "x", &sides).unwrap(),
            Policy::Order(vec![Side::nth(2), Side::LEFT, Side::RIGHT])
        );
        let twice = Spanned::new(0..0, "order: desk, desk.users".to_owned());
        assert!(good
            .policy(&twice, "x", &sides)
            .unwrap_err()
            .to_string()
            .contains("order names desk.users twice"));
        let shared = ["crm.people", "crm.leads"];
        let by_conn = Spanned::new(0..0, "order: crm".to_owned());
        assert!(good
            .policy(&by_conn, "x", &shared)
            .unwrap_err()
            .to_string()
            .contains("more than one of the sync's sides: name it as connection.stream"));

        for (sync, field, says) in [
            (r#"also = ["desk.users"]"#, "", "syncs.people.fields[0].also: names 0 fields for the sync's 1 further side (desk.users)"),
            ("", r#"also = ["email_address"]"#, "syncs.people.fields[0].also: names a field on further sides, but the sync has none"),
            (r#"also = ["desk.users"]"#, r#"also = ["e"], direction = "left-to-right""#, "fields[0].direction: a sync of more than two sides takes no direction yet: name the side that owns the field with owner"),
            (r#"also = ["desk.users"]"#, r#"also = ["e"], owner = "shop""#, "syncs.people.fields[0].owner: names \"shop\", which is none of the sync's sides (crm.people, erp.people, desk.users)"),
            ("", r#"owner = "crm", direction = "right-to-left""#, "syncs.people.fields[0].owner: give a direction or an owner, not both"),
            ("also = [\"desk.users\"]\nconflict = \"prefer-right\"", r#"also = ["e"]"#, "syncs.people.conflict: prefer-right decides between two sides"),
            ("also = [\"desk.users\"]\nfilter = { also = [\"\", \"email = 'x'\"] }", r#"also = ["e"]"#, "syncs.people.filter.also: names more filters than the sync has further sides (1)"),
            ("filter = { also = [\"email = 'x'\"] }", "", "syncs.people.filter.also: filters further sides, but the sync has none"),
            (r#"also = ["shop.items"]"#, r#"also = ["e"]"#, "syncs.people.also[0]: no connection named shop"),
        ] {
            let err = Loaded::parse(Path::new("duplex.toml"), config(sync, field))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{sync} / {field}: {err}");
        }
    }

    /// An HTTP connection's grants, secrets, headers, rates, OAuth and signatures parse into one
    /// grant; a mistake names its key and line, never a secret's value.
    #[test]
    fn http_grants_parse_and_their_mistakes_name_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "s3cret-value\n").unwrap();
        let config = |extra: &str| {
            format!(
                r#"
[connections.crm]
plugin = "crm.wasm"
grants = {{ http = ["https://api.example.com", "https://auth.example.com/oauth"] }}
secrets = {{ token = {{ file = "token" }} }}

[connections.crm.http]
rate = "100 per 10s"
rates = [{{ path = "/v3/*/search", rate = "5 per 1s" }}]
{extra}
"#
            )
        };
        let path = dir.path().join("duplex.toml");
        let good = config(
            r#"headers = [{ origin = "https://api.example.com", name = "Authorization", value = "Bearer {token}" }]
signatures = [{ origin = "https://api.example.com", header = "X-Sig", secret = "token", message = "{body}" }]
oauth = { origin = "https://api.example.com", token_url = "https://auth.example.com/oauth/token", grant = "client_credentials", client_id = "duplex", client_secret = "{token}" }"#,
        );
        let loaded = Loaded::parse(&path, good).unwrap();
        let c = &loaded.config.connections["crm"];
        let grants = loaded.grants("crm", c).unwrap();
        assert_eq!(grants.http.origins.len(), 2);
        assert_eq!(grants.http.headers.len(), 1);
        assert_eq!(grants.http.budgets.len(), 2);
        assert_eq!(grants.http.signatures.len(), 1);
        assert!(grants.http.oauth.is_some());
        assert!(
            !format!("{grants:?}").contains("s3cret"),
            "a secret printed"
        );

        for (extra, key, says) in [
            (
                r#"headers = [{ origin = "https://api.example.com", name = "Authorization", value = "Bearer {tokn}" }]"#,
                "connections.crm.http.headers[0]",
                "{tokn}",
            ),
            (
                r#"headers = [{ origin = "https://other.example.com", name = "Authorization", value = "x" }]"#,
                "connections.crm.http.headers[0]",
                "not one of the connection's grants.http",
            ),
            (
                r#"oauth = { origin = "https://api.example.com", token_url = "https://evil.example.com/token", grant = "client_credentials", client_id = "x", client_secret = "{token}" }"#,
                "connections.crm.http.oauth",
                "token_url",
            ),
        ] {
            let loaded = Loaded::parse(&path, config(extra)).unwrap();
            let err = loaded
                .grants("crm", &loaded.config.connections["crm"])
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(says), "{err}");
            assert!(err.contains("line "), "{err}");
        }
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_key_and_line() {
        let src = "[connections.crm]\nplugin = \"builtin:sql\"\ncolour = \"blue\"\n";
        let err = Loaded::parse(Path::new("d.toml"), src.into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("colour"), "{err}");
    }

    #[test]
    fn a_sync_naming_a_missing_connection_is_an_error_at_its_line() {
        let src = "[connections.crm]\nplugin = \"builtin:sql\"\n\n[syncs.s]\nleft = \"crm.a\"\nright = \"erp.b\"\nfields = [{ left = \"x\", right = \"y\" }]\n";
        let err = Loaded::parse(Path::new("d.toml"), src.into())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 6")
                && err.contains("syncs.s.right")
                && err.contains("no connection named erp"),
            "{err}"
        );
    }

    #[test]
    fn bad_policies_and_schedules_are_named() {
        let src = "[connections.a]\nplugin = \"builtin:sql\"\n[syncs.s]\nleft = \"a.x\"\nright = \"a.y\"\nconflict = \"coin-toss\"\nfields = [{ left = \"x\", right = \"y\" }]\n";
        let err = Loaded::parse(Path::new("d.toml"), src.into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 6") && err.contains("coin-toss"), "{err}");
        let src = src.replace("conflict = \"coin-toss\"", "schedule = \"sometimes\"");
        let err = Loaded::parse(Path::new("d.toml"), src)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sometimes"), "{err}");
    }

    #[test]
    fn a_counter_that_cannot_add_is_refused_at_its_line() {
        let field = |extra: &str| {
            format!("[connections.a]\nplugin = \"builtin:sql\"\n[syncs.s]\nleft = \"a.x\"\nright = \"a.y\"\n[[syncs.s.fields]]\nleft = \"n\"\nright = \"m\"\ncounter = true\n{extra}\n")
        };
        assert!(Loaded::parse(Path::new("d.toml"), field("")).is_ok());
        for (extra, says) in [
            ("direction = \"left-to-right\"", "direction"),
            ("conflict = \"manual\"", "conflict"),
            ("values = { 1 = 2 }", "values"),
        ] {
            let err = Loaded::parse(Path::new("d.toml"), field(extra))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("line 9")
                    && err.contains("syncs.s.fields[0].counter")
                    && err.contains(says),
                "{extra}: {err}"
            );
        }
    }
}
