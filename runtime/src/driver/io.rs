//! The driver's view of one side of a sync: read, write, find. The real one calls a connector
//! plugin; tests and the simulation use in-memory systems behind the same trait.

use crate::engine::{self, FieldType};
use crate::plugin::{
    self, CallError, ChangeBatch, ConnectorPlugin, ConnectorSession, Current, LookupKey, Watched,
    WitError, WriteOp, Written,
};

/// Why a side could not be reached this cycle. The cycle stops and nothing is committed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct IoError {
    pub message: String,
    /// The plugin ran out of its memory or CPU budget: the same call with less work in it (a
    /// smaller batch) may succeed.
    pub over_limit: bool,
    /// The plugin answered that this call cannot succeed as asked (not supported, bad config,
    /// refused): asking again will not help, unlike a call that broke off or a passing failure.
    pub lasting: bool,
}

impl IoError {
    pub fn new(message: impl Into<String>) -> IoError {
        IoError {
            message: message.into(),
            over_limit: false,
            lasting: false,
        }
    }
}

impl From<CallError> for IoError {
    fn from(e: CallError) -> Self {
        IoError {
            message: e.to_string(),
            over_limit: matches!(e, CallError::Memory { .. } | CallError::CpuBudget { .. }),
            lasting: e
                .plugin_error()
                .is_some_and(|w| !matches!(w, WitError::Transient(_) | WitError::RateLimited(_))),
        }
    }
}

/// One side of a sync.
#[allow(async_fn_in_trait)]
pub trait SideIo {
    /// Whether `if-version` on updates and deletes is honoured.
    fn conditional_writes(&self) -> bool;
    /// Reads up to `max` changes after `cursor`; records changed only by writes tagged `origin`
    /// may be left out (see the WIT's `read`).
    async fn read(
        &mut self,
        origin: &str,
        cursor: Option<&str>,
        max: u32,
    ) -> Result<ChangeBatch, IoError>;
    async fn write(
        &mut self,
        origin: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Written, WitError>>, IoError>;
    async fn find(&mut self, key: LookupKey) -> Result<Vec<Current>, IoError>;
    /// The stream's columns and their types as the system has them now, for schema drift
    /// (see `crate::schema`); none when the side cannot say.
    async fn shape(&mut self) -> Result<Option<crate::schema::Shape>, IoError> {
        Ok(None)
    }
    /// Waits up to `timeout_ms` for the system to announce changes.
    async fn watch(&mut self, timeout_ms: u32) -> Result<Watched, IoError> {
        let _ = timeout_ms;
        Ok(Watched::Unsupported)
    }
    /// Whether a [`SideIo::watch`] dropped before it answered keeps what it would have
    /// announced for the next wait, which then answers at once. The host's waits for a
    /// database do (see `host::sql::changes`); a connector's own `watch` promises nothing.
    fn keeps_announcements(&self) -> bool {
        false
    }
    /// Ends a unit of work: the next call starts a fresh store.
    fn finish(&mut self) {}
}

/// A side served by a connector plugin: one stream of one connection.
pub struct PluginSide {
    plugin: std::sync::Arc<ConnectorPlugin>,
    config: String,
    stream: String,
    session: Option<ConnectorSession>,
    /// Who this side is when it waits for changes: unique in the process, so that each side of
    /// each sync hears of every change its database announces (see `host::sql::changes`).
    waiter: String,
    /// The wait the connector's `watch` came down to, made again by the host while it holds:
    /// an idle side then keeps no instance and no connection between changes.
    again: Option<crate::host::sql::Wait>,
}

impl PluginSide {
    pub fn new(plugin: std::sync::Arc<ConnectorPlugin>, config: String, stream: String) -> Self {
        static SIDES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SIDES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PluginSide {
            waiter: format!("side {n} ({stream})"),
            plugin,
            config,
            stream,
            session: None,
            again: None,
        }
    }

    /// The same side for a dry run: a connector whose config schema offers `read_only` (the
    /// SQL connector) is told to change nothing, not even to install its capture, so that a
    /// dry run leaves the system exactly as it was. The driver sends a dry run no writes.
    pub fn read_only(mut self) -> Self {
        let offers = serde_json::from_str::<serde_json::Value>(&self.plugin.info().config_schema)
            .ok()
            .is_some_and(|s| s.pointer("/properties/read_only").is_some());
        if let (true, Ok(serde_json::Value::Object(mut config))) =
            (offers, serde_json::from_str(&self.config))
        {
            config.insert("read_only".into(), serde_json::Value::Bool(true));
            self.config = serde_json::Value::Object(config).to_string();
        }
        self
    }

    /// The current session, or a fresh one (after a failure, or at the start of a cycle).
    async fn session(&mut self) -> Result<&mut ConnectorSession, IoError> {
        if self.session.is_none() {
            self.session = Some(self.plugin.session_waiting_as(&self.waiter).await?);
        }
        Ok(self.session.as_mut().expect("just set"))
    }

    /// A failed call may have poisoned the store: never reuse it.
    fn check<T>(&mut self, r: Result<T, CallError>) -> Result<T, IoError> {
        if let Err(e) = &r {
            if !matches!(e, CallError::Plugin { .. }) {
                self.session = None;
            }
        }
        r.map_err(IoError::from)
    }
}

impl SideIo for PluginSide {
    fn conditional_writes(&self) -> bool {
        self.plugin
            .info()
            .capabilities
            .contains(plugin::Capabilities::CONDITIONAL_WRITES)
    }

    async fn read(
        &mut self,
        origin: &str,
        cursor: Option<&str>,
        max: u32,
    ) -> Result<ChangeBatch, IoError> {
        let (config, stream) = (self.config.clone(), self.stream.clone());
        let r = self
            .session()
            .await?
            .read(&config, &stream, origin, cursor, max)
            .await;
        self.check(r)
    }

    async fn write(
        &mut self,
        origin: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Written, WitError>>, IoError> {
        let (config, stream) = (self.config.clone(), self.stream.clone());
        let r = self
            .session()
            .await?
            .write(&config, &stream, origin, ops)
            .await;
        self.check(r)
    }

    async fn find(&mut self, key: LookupKey) -> Result<Vec<Current>, IoError> {
        let (config, stream) = (self.config.clone(), self.stream.clone());
        let r = self.session().await?.find(&config, &stream, key).await;
        self.check(r)
    }

    async fn shape(&mut self) -> Result<Option<crate::schema::Shape>, IoError> {
        let config = self.config.clone();
        let r = self.session().await?.discover(&config).await;
        let streams = self.check(r)?;
        let stream = streams.iter().find(|s| s.name == self.stream);
        // A stream that is gone altogether shows every mapped column gone.
        Ok(Some(
            stream.map(crate::schema::shape_of).unwrap_or_default(),
        ))
    }

    async fn watch(&mut self, timeout_ms: u32) -> Result<Watched, IoError> {
        if !self
            .plugin
            .info()
            .capabilities
            .contains(plugin::Capabilities::REALTIME)
        {
            return Ok(Watched::Unsupported);
        }
        let timeout = std::time::Duration::from_millis(timeout_ms.into());
        if let Some(wait) = &self.again {
            match wait.again(timeout).await {
                Ok(true) => return Ok(Watched::Changed),
                Ok(false) => return Ok(Watched::Timeout),
                // The connector, asked again, says what it makes of it.
                Err(e) => {
                    tracing::debug!(side = %self.waiter, error = ?e, "a repeated wait failed; asking the connector");
                    self.again = None;
                }
            }
        }
        let config = self.config.clone();
        let r = self.session().await?.watch(&config, timeout_ms).await;
        let (watched, again) = self.check(r)?;
        self.again = again;
        Ok(watched)
    }

    /// The next wait is the host's own, made again in the connector's place.
    fn keeps_announcements(&self) -> bool {
        self.again.is_some()
    }

    fn finish(&mut self) {
        self.session = None;
    }
}

impl From<plugin::Value> for engine::Value {
    fn from(v: plugin::Value) -> Self {
        use plugin::Value as P;
        match v {
            P::Null => engine::Value::Null,
            P::Boolean(b) => engine::Value::Bool(b),
            P::Integer(i) => engine::Value::Int(i),
            P::Float(f) => engine::Value::Float(f),
            P::Decimal(d) => engine::Value::Decimal(d),
            P::Text(t) => engine::Value::Text(t),
            P::Bytes(b) => engine::Value::Bytes(b),
            P::Timestamp(t) => engine::Value::Time(t),
            P::Json(j) => engine::Value::Json(j),
        }
    }
}

impl From<&plugin::Value> for engine::Value {
    fn from(v: &plugin::Value) -> Self {
        v.clone().into()
    }
}

impl From<engine::Value> for plugin::Value {
    fn from(v: engine::Value) -> Self {
        use engine::Value as E;
        match v {
            E::Null => plugin::Value::Null,
            E::Bool(b) => plugin::Value::Boolean(b),
            E::Int(i) => plugin::Value::Integer(i),
            E::Float(f) => plugin::Value::Float(f),
            E::Decimal(d) => plugin::Value::Decimal(d),
            E::Text(t) => plugin::Value::Text(t),
            E::Bytes(b) => plugin::Value::Bytes(b),
            E::Time(t) => plugin::Value::Timestamp(t),
            E::Json(j) => plugin::Value::Json(j),
        }
    }
}

impl From<FieldType> for plugin::FieldType {
    fn from(t: FieldType) -> Self {
        use plugin::FieldType as P;
        match t {
            FieldType::Boolean => P::Boolean,
            FieldType::Integer => P::Integer,
            FieldType::Float => P::Float,
            FieldType::Decimal => P::Decimal,
            FieldType::Text => P::Text,
            FieldType::Bytes => P::Bytes,
            FieldType::Timestamp => P::Timestamp,
            FieldType::Json => P::Json,
        }
    }
}

impl From<plugin::FieldType> for FieldType {
    fn from(t: plugin::FieldType) -> Self {
        use plugin::FieldType as P;
        match t {
            P::Boolean => FieldType::Boolean,
            P::Integer => FieldType::Integer,
            P::Float => FieldType::Float,
            P::Decimal => FieldType::Decimal,
            P::Text => FieldType::Text,
            P::Bytes => FieldType::Bytes,
            P::Timestamp => FieldType::Timestamp,
            P::Json => FieldType::Json,
        }
    }
}
