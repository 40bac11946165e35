//! HubSpot CRM contacts and companies, over HubSpot's REST API v3, through the host's `wasi:http`
//! (the connection grants the origin and holds the private app's token; this plugin never sees
//! it).
//!
//! - `discover`: the properties API; calculated and read-only properties are not writable;
//!   enumerations carry their options; `email` is matchable for contacts.
//! - `read`: the CRM search API sorted by `lastmodifieddate`, with the SDK's overlap cursor, so
//!   equal times across pages and the search index's lag (up to `overlap_ms`) neither lose nor
//!   repeat a change. A read that stops with more to read (its `max`, or the search's
//!   10,000-result cap) leaves the next one to start at the newest time it emitted; once caught
//!   up, reads look back `overlap_ms` again. Archived records become deletes once the modified
//!   feed is caught up: a delete reaches the feed at the first read after it that finds no more
//!   modified records.
//! - `write`: batch endpoints, 100 inputs a call, one result per op from HubSpot's multi-status
//!   answers. Contacts are created through upsert by email, so a create whose answer was lost
//!   and is sent again updates the contact it made instead of making a second one.
//! - `find`: by id, or by email (batch read by `idProperty`, which does not wait for the index).
//! - `changed-at`: HubSpot's own `updatedAt`. No conditional writes: HubSpot has none.

use std::collections::BTreeMap;

use duplex_sdk::feed::SinceCursor;
use duplex_sdk::http::{self, Client, Method};
use duplex_sdk::{
    register_connector, Capabilities, Change, ChangeBatch, ChangeKind, Connector, Current, Error,
    Field, FieldType, FieldValue, Info, LookupKey, Stream, Value, WebhookAnswer, WebhookRequest,
    WriteOp, Written,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

const CONFIG_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "base_url": { "type": "string", "description": "the API's root; default https://api.hubapi.com" },
    "objects": { "type": "array", "items": { "enum": ["contacts", "companies"] } },
    "overlap_ms": { "type": "integer", "description": "how far back each read looks again, above the search index's lag; default 30000" },
    "webhook_url": { "type": "string", "description": "the URL the HubSpot app's webhooks are sent to (Duplex's /hooks/CONNECTION as the world reaches it); the v3 signature covers it" },
    "webhook_secret": { "type": "string", "description": "the name of the connection's secret holding the app's client secret, which keys the signature; default client_secret" }
  }
}"#;

/// How old a webhook's `X-HubSpot-Request-Timestamp` may be: HubSpot's docs say to reject a
/// request whose timestamp is older than 5 minutes.
const WEBHOOK_WINDOW_MS: i64 = 5 * 60 * 1000;

/// The search API's largest page and its cap on one query's results.
const SEARCH_PAGE: usize = 200;
const SEARCH_CAP: usize = 10_000;
/// The batch endpoints' largest call.
const BATCH: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_base")]
    base_url: String,
    #[serde(default = "default_objects")]
    objects: Vec<String>,
    #[serde(default = "default_overlap")]
    overlap_ms: i64,
    #[serde(default)]
    webhook_url: Option<String>,
    #[serde(default = "default_webhook_secret")]
    webhook_secret: String,
}

fn default_webhook_secret() -> String {
    "client_secret".into()
}

fn default_base() -> String {
    "https://api.hubapi.com".into()
}
fn default_objects() -> Vec<String> {
    vec!["contacts".into(), "companies".into()]
}
fn default_overlap() -> i64 {
    30_000
}

pub struct HubSpot {
    api: Client,
    config: Config,
}

/// A property as the properties API describes it.
#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Property {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    calculated: bool,
    #[serde(default)]
    modification_metadata: Option<Modification>,
    #[serde(default)]
    options: Vec<PropertyOption>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Modification {
    #[serde(default)]
    read_only_value: bool,
}

#[derive(Deserialize, Clone)]
struct PropertyOption {
    value: String,
}

/// A record as the objects and search APIs return it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    id: String,
    #[serde(default)]
    properties: BTreeMap<String, Option<String>>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    archived_at: Option<String>,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    results: Vec<Record>,
    /// How many records match a search, over all its pages (search answers only).
    #[serde(default)]
    total: Option<u64>,
    #[serde(default)]
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct Paging {
    next: Option<Next>,
}

#[derive(Deserialize)]
struct Next {
    after: String,
}

/// The batch endpoints' answer, whole or multi-status.
#[derive(Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    results: Vec<Record>,
    #[serde(default)]
    errors: Vec<BatchError>,
}

#[derive(Deserialize)]
struct BatchError {
    #[serde(default)]
    category: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    context: BTreeMap<String, Vec<String>>,
}

/// What a stream's cursor keeps between reads.
#[derive(Serialize, Deserialize, Default)]
struct Cursor {
    /// The modified feed.
    feed: SinceCursor,
    /// The archived records seen: the newest archive time and ids within the overlap before it.
    deleted: SinceCursor,
    /// Whether the archived list has been read once (the first read only notes where it stands).
    deletes_started: bool,
    /// The properties asked for and their types, found by the first read.
    properties: BTreeMap<String, String>,
    /// Where the next read starts when the last one stopped with more to read: the newest time
    /// it emitted, rather than `overlap` before it, so a long backlog (a first load) is read
    /// once, not again from the window's start at every read.
    #[serde(default)]
    resume_from: Option<i64>,
}

/// Milliseconds since the epoch of an RFC 3339 time in UTC (`2025-12-04T18:00:00.123Z`).
fn parse_time(s: &str) -> Option<i64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let millis: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + millis)
}

fn field_type(kind: &str) -> FieldType {
    match kind {
        "number" => FieldType::Decimal,
        "bool" => FieldType::Boolean,
        "datetime" => FieldType::Timestamp,
        _ => FieldType::Text,
    }
}

impl HubSpot {
    fn object<'s>(&self, stream: &'s str) -> Result<&'s str, Error> {
        if self.config.objects.iter().any(|o| o == stream) {
            Ok(stream)
        } else {
            Err(Error::not_found(format!(
                "no stream {stream}: this connection syncs {}",
                self.config.objects.join(", ")
            )))
        }
    }

    fn properties(&self, object: &str) -> Result<Vec<Property>, Error> {
        #[derive(Deserialize)]
        struct Properties {
            results: Vec<Property>,
        }
        let p: Properties = self.api.get_json(&format!("/crm/v3/properties/{object}"))?;
        Ok(p.results)
    }

    /// A record's fields, typed by the schema's property types (text when unknown).
    fn fields(record: &Record, kinds: &BTreeMap<String, String>) -> Vec<FieldValue> {
        let mut fields: Vec<FieldValue> = record
            .properties
            .iter()
            .map(|(name, value)| {
                let value = match (value, kinds.get(name).map(String::as_str)) {
                    (None, _) => Value::Null,
                    (Some(v), _) if v.is_empty() => Value::Null,
                    (Some(v), Some("number")) => Value::Decimal(v.clone()),
                    (Some(v), Some("bool")) => Value::Boolean(v == "true"),
                    (Some(v), Some("datetime")) => {
                        match v.parse::<i64>().ok().or_else(|| parse_time(v)) {
                            Some(ms) => Value::Timestamp(ms * 1000),
                            None => Value::Text(v.clone()),
                        }
                    }
                    (Some(v), _) => Value::Text(v.clone()),
                };
                FieldValue::new(name.clone(), value)
            })
            .collect();
        fields.sort_by(|a, b| a.name.cmp(&b.name));
        fields
    }

    /// Each property's type, by name.
    fn kinds(properties: &[Property]) -> BTreeMap<String, String> {
        properties
            .iter()
            .map(|p| (p.name.clone(), p.kind.clone()))
            .collect()
    }

    fn change_of(record: &Record, kinds: &BTreeMap<String, String>, modified: i64) -> Change {
        let kind = if record.created_at == record.updated_at {
            ChangeKind::Create
        } else {
            ChangeKind::Update
        };
        let mut c = Change::new(record.id.clone(), kind, Self::fields(record, kinds));
        c.version = record.updated_at.clone();
        c.changed_at = Some(modified * 1000);
        c
    }

    /// One page of the modified feed from `from`, at offset `after`.
    fn search_page(
        &self,
        object: &str,
        from: i64,
        after: usize,
        limit: usize,
        properties: &[String],
    ) -> Result<Page, Error> {
        self.api.post_json(
            &format!("/crm/v3/objects/{object}/search"),
            &json!({
                "filterGroups": [{ "filters": [{
                    "propertyName": "lastmodifieddate", "operator": "GTE", "value": from.to_string()
                }]}],
                "sorts": [{ "propertyName": "lastmodifieddate", "direction": "ASCENDING" }],
                "properties": properties,
                "limit": limit,
                "after": after.to_string(),
            }),
        )
    }

    /// Deletes: archived records newer than the cursor's, once the modified feed is caught up.
    fn archived(
        &self,
        object: &str,
        cursor: &mut Cursor,
        overlap: i64,
        out: &mut Vec<Change>,
    ) -> Result<(), Error> {
        let items = self.api.all_pages(200, |api, after| {
            let mut path =
                format!("/crm/v3/objects/{object}?archived=true&limit=100&properties=hs_object_id");
            if let Some(a) = after {
                path.push_str(&format!("&after={a}"));
            }
            let page: Page = api.get_json(&path)?;
            let next = page.paging.and_then(|p| p.next).map(|n| n.after);
            Ok((page.results, next))
        })?;
        let floor = cursor.deleted.from(overlap);
        for r in items {
            let Some(at) = r.archived_at.as_deref().and_then(parse_time) else {
                continue;
            };
            if at < floor {
                continue;
            }
            if cursor.deleted.admit(&r.id, at) && cursor.deletes_started {
                let mut c = Change::new(r.id, ChangeKind::Delete, Vec::new());
                c.changed_at = Some(at * 1000);
                out.push(c);
            }
        }
        cursor.deleted.prune(overlap);
        cursor.deletes_started = true;
        Ok(())
    }

    /// Property values as HubSpot takes them: all text; an empty string clears.
    fn to_hubspot(fields: &[FieldValue]) -> serde_json::Map<String, Json> {
        fields
            .iter()
            .map(|f| {
                let v = match &f.value {
                    Value::Null => String::new(),
                    Value::Timestamp(us) => (us / 1000).to_string(),
                    other => other.to_plain_string(),
                };
                (f.name.clone(), Json::String(v))
            })
            .collect()
    }

    /// What HubSpot stored of the written fields, where it differs from what it was told.
    fn stored(
        record: &Record,
        fields: &[FieldValue],
        kinds: &BTreeMap<String, String>,
    ) -> Vec<FieldValue> {
        let got = Self::fields(record, kinds);
        fields
            .iter()
            .filter_map(|f| {
                let stored = got.iter().find(|g| g.name == f.name)?;
                let same = stored.value == f.value
                    || (stored.value.to_plain_string()
                        == Self::to_hubspot(std::slice::from_ref(f))[&f.name]);
                (!same).then(|| stored.clone())
            })
            .collect()
    }

    /// Sends one batch call; a failure of the whole call is every op's failure.
    fn batch(&self, object: &str, op: &str, inputs: Vec<Json>) -> Result<BatchAnswer, Error> {
        let request = self
            .api
            .request(
                Method::Post,
                &format!("/crm/v3/objects/{object}/batch/{op}"),
            )
            .json(&json!({ "inputs": inputs }))?;
        let response = http::send(&request)?;
        if response.status == 204 {
            return Ok(BatchAnswer {
                results: Vec::new(),
                errors: Vec::new(),
            });
        }
        let response = response.success()?;
        response.json()
    }
}

/// The error a batch gave for one input, found by the ids or emails in its context.
fn error_for(errors: &[BatchError], key: &str) -> Option<Error> {
    let e = errors.iter().find(|e| {
        e.context
            .values()
            .any(|ids| ids.iter().any(|i| i.eq_ignore_ascii_case(key)))
    })?;
    let message = format!("HubSpot: {} ({})", e.message, e.category);
    Some(match e.category.as_str() {
        "CONFLICT" => Error::conflict(message),
        "OBJECT_NOT_FOUND" => Error::not_found(message),
        _ => Error::validation(None, message),
    })
}

fn value_text(fields: &[FieldValue], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.to_plain_string())
        .filter(|s| !s.is_empty())
}

impl Connector for HubSpot {
    type Config = Config;

    fn info() -> Info {
        Info {
            name: "hubspot".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_schema: CONFIG_SCHEMA.into(),
            capabilities: Capabilities::CHANGE_FEED | Capabilities::DELETES_IN_FEED,
        }
    }

    fn open(config: Config) -> Result<Self, Error> {
        for o in &config.objects {
            if o != "contacts" && o != "companies" {
                return Err(Error::config(format!(
                    "objects: {o} is not one this connector syncs (contacts, companies)"
                )));
            }
        }
        Ok(HubSpot {
            api: Client::new(config.base_url.clone()),
            config,
        })
    }

    /// Reaches the API with the token and each object's read scope, saying what to fix.
    fn check(&mut self) -> Result<(), Error> {
        for object in &self.config.objects {
            let path = format!("/crm/v3/objects/{object}?limit=1");
            let response =
                http::send(&self.api.request(Method::Get, &path)).map_err(|e| match e {
                    Error::Transient(m) => Error::Transient(format!(
                        "cannot reach HubSpot at {}: {m}",
                        self.config.base_url
                    )),
                    other => other,
                })?;
            match response.status {
                200 => {}
                401 => {
                    return Err(Error::Auth(format!(
                        "HubSpot refused the access token (401) at {}: check the private app's token in the connection's secrets, and that the connection's http.headers send it to this origin",
                        self.config.base_url
                    )))
                }
                403 => {
                    let body: Json = response.json().unwrap_or(Json::Null);
                    let scopes: Vec<String> = body["errors"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|e| e["context"]["requiredGranularScopes"].as_array().cloned().unwrap_or_default())
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect();
                    let needed = if scopes.is_empty() {
                        format!("crm.objects.{object}.read")
                    } else {
                        scopes.join(", ")
                    };
                    return Err(Error::Auth(format!(
                        "the private app's token lacks the scope {needed}: add it in HubSpot (Settings, Integrations, Private apps, Scopes)"
                    )));
                }
                _ => {
                    response.success()?;
                }
            }
        }
        Ok(())
    }

    fn discover(&mut self) -> Result<Vec<Stream>, Error> {
        let mut streams = Vec::new();
        for object in &self.config.objects {
            let fields = self
                .properties(object)?
                .into_iter()
                .map(|p| {
                    let read_only = p.calculated
                        || p.modification_metadata
                            .as_ref()
                            .is_some_and(|m| m.read_only_value);
                    Field {
                        matchable: object == "contacts" && p.name == "email"
                            || p.name == "hs_object_id",
                        writable: !read_only,
                        nullable: true,
                        allowed: p.options.iter().map(|o| o.value.clone()).collect(),
                        unsupported: None,
                        type_: field_type(&p.kind),
                        name: p.name,
                    }
                })
                .collect();
            streams.push(Stream {
                name: object.clone(),
                fields,
                primary_key: vec!["hs_object_id".into()],
            });
        }
        Ok(streams)
    }

    fn read(
        &mut self,
        stream: &str,
        _origin: &str,
        cursor: Option<&str>,
        max: u32,
    ) -> Result<ChangeBatch, Error> {
        let object = self.object(stream)?;
        let overlap = self.config.overlap_ms;
        let mut c: Cursor = match cursor {
            None => Cursor::default(),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                Error::permanent(format!("the {stream} cursor does not parse: {e}"))
            })?,
        };
        if c.properties.is_empty() {
            c.properties = Self::kinds(&self.properties(object)?);
        }
        let kinds = c.properties.clone();
        let names: Vec<String> = kinds.keys().cloned().collect();
        let max = (max as usize).max(1);
        let limit = max.min(SEARCH_PAGE);
        let from = c.resume_from.unwrap_or_else(|| c.feed.from(overlap));
        let mut changes = Vec::new();
        let mut after = 0;
        let mut more = false;
        // The search's total and how far into it the pages went: what remains to read.
        let mut through: Option<(u64, u64)> = None;
        loop {
            if after + limit > SEARCH_CAP {
                // The search's cap: the next read starts from the newest time admitted.
                more = true;
                break;
            }
            let page: Page = self.search_page(object, from, after, limit, &names)?;
            let full = page.results.len() == limit;
            through = page
                .total
                .map(|total| (total, (after + page.results.len()) as u64));
            for r in &page.results {
                let modified = r
                    .properties
                    .get("lastmodifieddate")
                    .and_then(|v| v.as_deref())
                    .and_then(|v| v.parse::<i64>().ok().or_else(|| parse_time(v)))
                    .or_else(|| r.updated_at.as_deref().and_then(parse_time))
                    .ok_or_else(|| {
                        Error::permanent(format!("{stream} {} has no modification time", r.id))
                    })?;
                if c.feed.admit(&r.id, modified) {
                    changes.push(Self::change_of(r, &kinds, modified));
                }
            }
            if !full {
                break;
            }
            if changes.len() >= max {
                more = true;
                break;
            }
            after += limit;
        }
        c.feed.prune(overlap);
        c.resume_from = more.then_some(c.feed.newest);
        if !more {
            self.archived(object, &mut c, overlap, &mut changes)?;
        }
        Ok(ChangeBatch {
            changes,
            next_cursor: serde_json::to_string(&c).unwrap_or_default(),
            has_more: more,
            // HubSpot has no transactions a change could be part of.
            mid_transaction: false,
            // Records modified since the search's start, less those its pages went through
            // (some of which the overlap skips): an estimate.
            remaining: through
                .filter(|_| more)
                .map(|(total, read)| total.saturating_sub(read)),
        })
    }

    fn write(
        &mut self,
        stream: &str,
        _origin: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Written, Error>>, Error> {
        let object = self.object(stream)?.to_owned();
        // What HubSpot stored is compared as text, as HubSpot keeps every value.
        let kinds = BTreeMap::new();
        let mut results: Vec<Option<Result<Written, Error>>> =
            (0..ops.len()).map(|_| None).collect();
        // Group by kind, keeping each op's place.
        let mut creates = Vec::new();
        let mut updates = Vec::new();
        let mut deletes = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                WriteOp::Create(c) => creates.push((i, &c.fields)),
                WriteOp::Update(u) => updates.push((i, u.id.as_str(), &u.fields)),
                WriteOp::Delete(d) => deletes.push((i, d.id.as_str())),
            }
        }
        // Creates: contacts by upsert on email, so a create sent twice makes one contact.
        for chunk in creates.chunks(BATCH) {
            let by_email =
                object == "contacts" && chunk.iter().all(|(_, f)| value_text(f, "email").is_some());
            let inputs: Vec<Json> = chunk
                .iter()
                .map(|(_, f)| {
                    if by_email {
                        json!({ "idProperty": "email", "id": value_text(f, "email").unwrap_or_default().to_lowercase(), "properties": Self::to_hubspot(f) })
                    } else {
                        json!({ "properties": Self::to_hubspot(f) })
                    }
                })
                .collect();
            match self.batch(&object, if by_email { "upsert" } else { "create" }, inputs) {
                Ok(answer) => {
                    for (n, (i, fields)) in chunk.iter().enumerate() {
                        let found = if by_email {
                            let email = value_text(fields, "email").unwrap_or_default();
                            answer.results.iter().find(|r| {
                                r.properties
                                    .get("email")
                                    .and_then(|e| e.as_deref())
                                    .is_some_and(|e| e.eq_ignore_ascii_case(&email))
                            })
                        } else {
                            // batch/create answers in the order of its inputs.
                            answer.results.get(n)
                        };
                        results[*i] = Some(match found {
                            Some(r) => Ok(Written {
                                id: r.id.clone(),
                                version: r.updated_at.clone(),
                                stored: Self::stored(r, fields, &kinds),
                            }),
                            None => Err(value_text(fields, "email")
                                .and_then(|e| error_for(&answer.errors, &e))
                                .or_else(|| {
                                    answer.errors.first().map(|e| {
                                        Error::validation(
                                            None,
                                            format!("HubSpot: {} ({})", e.message, e.category),
                                        )
                                    })
                                })
                                .unwrap_or_else(|| {
                                    Error::transient("HubSpot did not answer for this record")
                                })),
                        });
                    }
                }
                Err(e) => {
                    for (i, _) in chunk {
                        results[*i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        for chunk in updates.chunks(BATCH) {
            let inputs: Vec<Json> = chunk
                .iter()
                .map(|(_, id, f)| json!({ "id": id, "properties": Self::to_hubspot(f) }))
                .collect();
            match self.batch(&object, "update", inputs) {
                Ok(answer) => {
                    for (i, id, fields) in chunk {
                        results[*i] = Some(match answer.results.iter().find(|r| r.id == *id) {
                            Some(r) => Ok(Written {
                                id: r.id.clone(),
                                version: r.updated_at.clone(),
                                stored: Self::stored(r, fields, &kinds),
                            }),
                            None => Err(error_for(&answer.errors, id).unwrap_or_else(|| {
                                Error::transient(format!(
                                    "HubSpot did not answer for {object} {id}"
                                ))
                            })),
                        });
                    }
                }
                Err(e) => {
                    for (i, _, _) in chunk {
                        results[*i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        for chunk in deletes.chunks(BATCH) {
            let inputs: Vec<Json> = chunk.iter().map(|(_, id)| json!({ "id": id })).collect();
            let outcome = self.batch(&object, "archive", inputs);
            for (i, id) in chunk {
                results[*i] = Some(match &outcome {
                    Ok(_) => Ok(Written {
                        id: id.to_string(),
                        version: None,
                        stored: Vec::new(),
                    }),
                    Err(e) => Err(e.clone()),
                });
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::permanent("no result"))))
            .collect())
    }

    /// Verifies HubSpot's v3 signature and says whether changes are waiting. The steps are the
    /// ones HubSpot documents for `X-HubSpot-Signature-v3` (developers.hubspot.com, "Validating
    /// requests"): reject a timestamp older than 5 minutes; HMAC-SHA256, keyed with the app's
    /// client secret, over method + URI + body + timestamp; base64; compare. The secret stays
    /// with the host ([`duplex_sdk::signing`]).
    fn webhook(&mut self, request: WebhookRequest) -> Result<WebhookAnswer, Error> {
        let Some(url) = &self.config.webhook_url else {
            return Ok(WebhookAnswer::Unsupported);
        };
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let (Some(signature), Some(timestamp)) = (
            header("x-hubspot-signature-v3"),
            header("x-hubspot-request-timestamp"),
        ) else {
            return Ok(WebhookAnswer::Refused(
                "no X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp header".into(),
            ));
        };
        let Ok(sent_ms) = timestamp.trim().parse::<i64>() else {
            return Ok(WebhookAnswer::Refused(format!(
                "timestamp {timestamp:?} is not a number"
            )));
        };
        let age_ms = request.received_at / 1000 - sent_ms;
        if !(-WEBHOOK_WINDOW_MS..=WEBHOOK_WINDOW_MS).contains(&age_ms) {
            return Ok(WebhookAnswer::Refused(format!(
                "timestamp {sent_ms} is {} s from the time it arrived, outside the 5-minute window",
                age_ms / 1000
            )));
        }
        let expected = v3_signature(
            &self.config.webhook_secret,
            &request.method,
            &webhook_uri(url, &request.path),
            &request.body,
            timestamp.trim(),
        )?;
        if !duplex_sdk::signing::same(expected.as_bytes(), signature.trim().as_bytes()) {
            return Ok(WebhookAnswer::Refused(
                "the v3 signature does not match".into(),
            ));
        }
        // Genuine. The events say which objects changed; the feed says how.
        let events: Vec<Json> = serde_json::from_slice(&request.body).unwrap_or_default();
        let ours = events.iter().any(|e| {
            let kind = e["subscriptionType"].as_str().unwrap_or("");
            let object = kind.split('.').next().unwrap_or("");
            self.config.objects.iter().any(|o| {
                matches!(
                    (o.as_str(), object),
                    ("contacts", "contact") | ("companies", "company")
                )
            })
        });
        Ok(if ours {
            WebhookAnswer::ChangesWaiting
        } else {
            WebhookAnswer::Nothing
        })
    }

    fn find(&mut self, stream: &str, key: LookupKey) -> Result<Vec<Current>, Error> {
        let object = self.object(stream)?.to_owned();
        let schema = self.properties(&object)?;
        let kinds = Self::kinds(&schema);
        let properties: Vec<String> = kinds.keys().cloned().collect();
        let (keys, id_property): (Vec<String>, Option<&str>) = match &key {
            LookupKey::Ids(ids) => (ids.clone(), None),
            LookupKey::ByField(m) if m.field == "email" || m.field == "hs_object_id" => (
                m.values.iter().map(Value::to_plain_string).collect(),
                (m.field == "email").then_some("email"),
            ),
            LookupKey::ByField(m) => {
                return Err(Error::permanent(format!(
                    "find by {} is not supported: HubSpot looks records up by id or email",
                    m.field
                )))
            }
        };
        let mut out = Vec::new();
        for chunk in keys.chunks(BATCH) {
            let mut body = json!({
                "inputs": chunk.iter().map(|k| json!({ "id": k })).collect::<Vec<_>>(),
                "properties": properties,
            });
            if let Some(p) = id_property {
                body["idProperty"] = Json::String(p.into());
            }
            let request = self
                .api
                .request(
                    Method::Post,
                    &format!("/crm/v3/objects/{object}/batch/read"),
                )
                .json(&body)?;
            let response = http::send(&request)?;
            // 207: some were not found, which is an answer, not a failure.
            let answer: BatchAnswer = if response.status == 207 {
                response.json()?
            } else {
                response.success()?.json()?
            };
            for r in answer.results {
                let changed_at = r
                    .updated_at
                    .as_deref()
                    .and_then(parse_time)
                    .map(|ms| ms * 1000);
                out.push(Current {
                    id: r.id.clone(),
                    fields: Self::fields(&r, &kinds),
                    version: r.updated_at.clone(),
                    changed_at,
                });
            }
        }
        Ok(out)
    }
}

register_connector!(HubSpot);

/// The URI HubSpot signed: the URL its app calls, with the query the request came with, and
/// the characters HubSpot's docs list decoded (`%3A` as `:` and so on).
fn webhook_uri(url: &str, path: &str) -> String {
    let query = path.split_once('?').map(|(_, q)| q);
    let mut uri = match query {
        Some(q) => format!("{url}?{q}"),
        None => url.to_owned(),
    };
    for (encoded, plain) in [
        ("%3A", ":"),
        ("%2F", "/"),
        ("%3F", "?"),
        ("%40", "@"),
        ("%21", "!"),
        ("%24", "$"),
        ("%27", "'"),
        ("%28", "("),
        ("%29", ")"),
        ("%2A", "*"),
        ("%2C", ","),
        ("%3B", ";"),
    ] {
        uri = uri
            .replace(encoded, plain)
            .replace(&encoded.to_lowercase(), plain);
    }
    uri
}

/// base64(HMAC-SHA256(secret, method + uri + body + timestamp)), the secret named `secret`
/// in the connection's secrets.
fn v3_signature(
    secret: &str,
    method: &str,
    uri: &str,
    body: &[u8],
    timestamp: &str,
) -> Result<String, Error> {
    let mut message = Vec::with_capacity(method.len() + uri.len() + body.len() + timestamp.len());
    message.extend_from_slice(method.as_bytes());
    message.extend_from_slice(uri.as_bytes());
    message.extend_from_slice(body);
    message.extend_from_slice(timestamp.as_bytes());
    Ok(base64(&duplex_sdk::signing::hmac_sha256(secret, &message)?))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_the_standard_one() {
        // RFC 4648, section 10.
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn the_signed_uri_is_the_apps_url_with_the_query_and_listed_characters_decoded() {
        assert_eq!(
            webhook_uri("https://d.example/hooks/crm", "/hooks/crm?a=b%3Ac"),
            "https://d.example/hooks/crm?a=b:c"
        );
        assert_eq!(
            webhook_uri("https://d.example/hooks/crm", "/hooks/crm"),
            "https://d.example/hooks/crm"
        );
    }

    #[test]
    fn parses_hubspot_times() {
        assert_eq!(parse_time("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_time("2025-12-04T18:00:00.123Z"),
            Some(1_764_871_200_123)
        );
        assert_eq!(parse_time("2025-12-04T18:00:00Z"), Some(1_764_871_200_000));
        assert_eq!(parse_time("nope"), None);
    }
}
