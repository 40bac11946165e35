//! The [`Connector`] trait: what a connector author implements.

use crate::{Error, Timestamp};

pub use crate::bindings::exports::duplex::plugin::connector::{
    Capabilities, Change, ChangeBatch, ChangeKind, ConnectorInfo as Info, CreateOp, Current,
    DeleteOp, Field, FieldMatch, FieldType, LookupKey, Stream, UpdateOp, Watched, WebhookAnswer,
    WebhookRequest, WriteOp, Written,
};

/// A connector: reads and writes one kind of system.
///
/// The host makes a fresh instance for each unit of work and throws it away afterwards, so
/// [`Connector::open`] is called once per call from the host; keep nothing between calls that is
/// not in the cursor.
///
/// ```no_run
/// use duplex_sdk::{register_connector, Capabilities, ChangeBatch, Connector, Error, Info,
///     Stream, WriteOp, Written};
///
/// #[derive(serde::Deserialize)]
/// struct Config { url: String }
///
/// struct Notes { config: Config }
///
/// impl Connector for Notes {
///     type Config = Config;
///     fn info() -> Info {
///         Info {
///             name: "notes".into(),
///             version: "0.1.0".into(),
///             config_schema: r#"{"type":"object","required":["url"]}"#.into(),
///             capabilities: Capabilities::CHANGE_FEED,
///         }
///     }
///     fn open(config: Config) -> Result<Self, Error> { Ok(Notes { config }) }
///     fn discover(&mut self) -> Result<Vec<Stream>, Error> { Ok(vec![]) }
///     fn read(&mut self, stream: &str, origin: &str, cursor: Option<&str>, max: u32)
///         -> Result<ChangeBatch, Error> {
///         Err(Error::not_found(format!("no stream {stream}")))
///     }
///     fn write(&mut self, stream: &str, origin: &str, ops: Vec<WriteOp>)
///         -> Result<Vec<Result<Written, Error>>, Error> {
///         Ok(ops.iter().map(|_| Err(Error::permanent("read-only"))).collect())
///     }
/// }
///
/// register_connector!(Notes);
/// ```
pub trait Connector: Sized {
    /// The connection's config, parsed from the JSON the operator wrote. A config that does not
    /// parse is refused with `Error::Config` naming the problem before `open` is called.
    type Config: serde::de::DeserializeOwned;

    /// Describes the connector. Must not fail or do I/O.
    fn info() -> Info;

    /// Opens the system with the given config (for example a database connection).
    fn open(config: Self::Config) -> Result<Self, Error>;

    /// Checks that the system can be reached and the credentials work. By default, opening is
    /// enough.
    fn check(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// Lists the streams with their fields.
    fn discover(&mut self) -> Result<Vec<Stream>, Error>;

    /// Reads up to `max` changes after `cursor` (none: from the beginning). Records changed in
    /// the batch only by writes tagged `origin` (the reader's own) may be left out.
    fn read(
        &mut self,
        stream: &str,
        origin: &str,
        cursor: Option<&str>,
        max: u32,
    ) -> Result<ChangeBatch, Error>;

    /// Applies `ops`, returning exactly one result per op in order; tags the changes they make
    /// with `origin`.
    fn write(
        &mut self,
        stream: &str,
        origin: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Written, Error>>, Error>;

    /// Looks records up by id or by a matchable field, each with `changed_at`, the time its
    /// current version was made, when the system knows it: the host reads a record again with
    /// `find` after a conditional write was refused, and last-writer-wins orders it by that
    /// time. By default: not supported.
    fn find(&mut self, stream: &str, key: LookupKey) -> Result<Vec<Current>, Error> {
        let _ = (stream, key);
        Err(Error::permanent("this connector does not support find"))
    }

    /// Waits up to `timeout_ms` for the system to announce changes. By default the system
    /// cannot, and the host polls.
    fn watch(&mut self, timeout_ms: u32) -> Result<Watched, Error> {
        let _ = timeout_ms;
        Ok(Watched::Unsupported)
    }

    /// Removes what change capture installed. By default there is nothing to remove.
    fn remove_capture(&mut self, stream: Option<&str>) -> Result<(), Error> {
        let _ = stream;
        Ok(())
    }

    /// Verifies a request the system pushed (`POST /hooks/{connection}`) and says whether
    /// changes are waiting; verify signatures with [`crate::signing`]. Must not read or write
    /// records: the host reads the feed when told changes wait. By default the connector takes
    /// no webhooks.
    fn webhook(&mut self, request: WebhookRequest) -> Result<WebhookAnswer, Error> {
        let _ = request;
        Ok(WebhookAnswer::Unsupported)
    }
}

impl Change {
    /// A change to record `id`, with no version or time known yet.
    pub fn new(id: impl Into<String>, kind: ChangeKind, fields: Vec<crate::FieldValue>) -> Self {
        Change {
            id: id.into(),
            kind,
            fields,
            version: None,
            changed_at: None::<Timestamp>,
            origin: None,
        }
    }
}

/// Registers `T` as this component's connector. Use once, at the crate root.
#[macro_export]
macro_rules! register_connector {
    ($connector:ty) => {
        #[doc(hidden)]
        struct __DuplexConnector;

        impl $crate::__private::bindings::exports::duplex::plugin::connector::Guest
            for __DuplexConnector
        {
            fn info() -> $crate::Info {
                <$connector as $crate::Connector>::info()
            }
            fn check(config: String) -> Result<(), $crate::Error> {
                $crate::__private::connector::open::<$connector>(&config)?.check()
            }
            fn discover(config: String) -> Result<Vec<$crate::Stream>, $crate::Error> {
                $crate::__private::connector::open::<$connector>(&config)?.discover()
            }
            fn read(
                config: String,
                stream: String,
                origin: String,
                cursor: Option<String>,
                max: u32,
            ) -> Result<$crate::ChangeBatch, $crate::Error> {
                $crate::__private::connector::open::<$connector>(&config)?.read(
                    &stream,
                    &origin,
                    cursor.as_deref(),
                    max,
                )
            }
            fn write(
                config: String,
                stream: String,
                origin: String,
                ops: Vec<$crate::WriteOp>,
            ) -> Result<Vec<Result<$crate::Written, $crate::Error>>, $crate::Error> {
                $crate::__private::connector::write::<$connector>(&config, &stream, &origin, ops)
            }
            fn find(
                config: String,
                stream: String,
                key: $crate::LookupKey,
            ) -> Result<Vec<$crate::Current>, $crate::Error> {
                $crate::__private::connector::open::<$connector>(&config)?.find(&stream, key)
            }
            fn watch(config: String, timeout_ms: u32) -> Result<$crate::Watched, $crate::Error> {
                $crate::__private::connector::open::<$connector>(&config)?.watch(timeout_ms)
            }
            fn remove_capture(config: String, stream: Option<String>) -> Result<(), $crate::Error> {
                $crate::__private::connector::open::<$connector>(&config)?
                    .remove_capture(stream.as_deref())
            }
            fn webhook(
                config: String,
                request: $crate::WebhookRequest,
            ) -> Result<$crate::WebhookAnswer, $crate::Error> {
                $crate::__private::connector::open::<$connector>(&config)?.webhook(request)
            }
        }

        $crate::__private::bindings::__export_connector_world!(
            __DuplexConnector with_types_in $crate::__private::bindings
        );
    };
}

#[doc(hidden)]
pub mod adapter {
    use super::*;

    /// Parses the config and opens the connector.
    pub fn open<C: Connector>(config: &str) -> Result<C, Error> {
        let config: C::Config = serde_json::from_str(config).map_err(|e| {
            Error::config(format!(
                "the {} connector's config is invalid: {e}",
                C::info().name
            ))
        })?;
        C::open(config)
    }

    /// Calls `write` and holds the connector to its contract of one result per op, so a bug in a
    /// connector cannot make the host pair results with the wrong records.
    pub fn write<C: Connector>(
        config: &str,
        stream: &str,
        origin: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Written, Error>>, Error> {
        let expected = ops.len();
        let results = open::<C>(config)?.write(stream, origin, ops)?;
        if results.len() != expected {
            return Err(Error::permanent(format!(
                "connector bug: write returned {} results for {expected} operations",
                results.len()
            )));
        }
        Ok(results)
    }
}
