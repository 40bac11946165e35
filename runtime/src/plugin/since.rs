//! What every adapter of an older contract version (`since_v0_*.rs`) does the same way: its
//! `log` and `sql` imports forward to the latest host capabilities, its rules are called with
//! the latest types (0.4.0 added the sides of a sync of more, which a rule older than that is
//! not asked about), and, from 0.2.0 on, its connector's exports are called with the latest
//! types. The
//! shapes are the same in every version, but each version's bindings are Rust types of their
//! own, so the code is written once here and stamped out in each adapter, where `old`,
//! `old_log`, `old_sql`, `old_resolver`, `latest`, `latest_log`, `latest_sql`,
//! `latest_resolver`, `ConnectorWorld` and `ResolverWorld` name that version's and the latest
//! bindings.

/// An older version's bindings, generated from its copy of the contract (`wit/v0.X.0`):
/// `connector_world` and `resolver_world`, their types linked to the latest (the shapes are
/// the same), `ConnectorWorld`, `ResolverWorld` and their `Pre`s; the names the other macros
/// use for that version (`old`, `old_resolver`, `old_log`, `old_sql` and, from 0.3.0 on, with
/// `signing`, `old_signing`); and `add_to_linker`, which links the version's names of the
/// contract's types (no functions) and its imports, forwarded to the latest capabilities and
/// so checking the same grants.
macro_rules! older_worlds {
    ($path:tt) => {
        older_worlds!(@worlds $path);
        use connector_world::duplex::plugin::{log as old_log, sql as old_sql};

        pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
            linker.instance(&format!("duplex:plugin/types@{VERSION}"))?;
            old_log::add_to_linker::<StoreState, HasHost>(linker, StoreState::host)?;
            old_sql::add_to_linker::<StoreState, HasHost>(linker, StoreState::host)?;
            Ok(())
        }
    };
    ($path:tt, signing) => {
        older_worlds!(@worlds $path);
        use connector_world::duplex::plugin::{
            log as old_log, signing as old_signing, sql as old_sql,
        };

        pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
            linker.instance(&format!("duplex:plugin/types@{VERSION}"))?;
            old_log::add_to_linker::<StoreState, HasHost>(linker, StoreState::host)?;
            old_sql::add_to_linker::<StoreState, HasHost>(linker, StoreState::host)?;
            old_signing::add_to_linker::<StoreState, HasHost>(linker, StoreState::host)?;
            Ok(())
        }
    };
    (@worlds $path:tt) => {
        mod connector_world {
            wasmtime::component::bindgen!({
                path: $path,
                world: "connector-plugin",
                imports: { default: async | trappable },
                exports: { default: async },
                with: {
                    "duplex:plugin/types": crate::bindings::duplex::plugin::types,
                    "duplex:plugin/sql.connection": crate::host::sql::Connection,
                },
            });
        }

        mod resolver_world {
            wasmtime::component::bindgen!({
                path: $path,
                world: "resolver-plugin",
                imports: { default: async | trappable },
                exports: { default: async },
                with: {
                    "duplex:plugin/types": crate::bindings::duplex::plugin::types,
                },
            });
        }

        pub(crate) use connector_world::{
            ConnectorPlugin as ConnectorWorld, ConnectorPluginPre as ConnectorWorldPre,
        };
        pub(crate) use resolver_world::{
            ResolverPlugin as ResolverWorld, ResolverPluginPre as ResolverWorldPre,
        };

        use connector_world::exports::duplex::plugin::connector as old;
        use resolver_world::exports::duplex::plugin::resolver as old_resolver;
    };
}

/// The `log` and `sql` imports of an older version, forwarded to the latest.
macro_rules! forward_log_and_sql {
    () => {
        impl old_log::Host for HostView<'_> {
            async fn log(
                &mut self,
                level: old_log::Level,
                message: String,
            ) -> wasmtime::Result<()> {
                use latest_log::Level as L;
                use old_log::Level as O;
                let level = match level {
                    O::Trace => L::Trace,
                    O::Debug => L::Debug,
                    O::Info => L::Info,
                    O::Warn => L::Warn,
                    O::Error => L::Error,
                };
                latest_log::Host::log(self, level, message).await
            }
        }

        impl old_sql::Host for HostView<'_> {
            async fn open(
                &mut self,
                url: String,
            ) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
                latest_sql::Host::open(self, url).await
            }
        }

        impl old_sql::HostConnection for HostView<'_> {
            async fn dialect(
                &mut self,
                conn: Resource<Connection>,
            ) -> wasmtime::Result<old_sql::Dialect> {
                use latest_sql::Dialect as L;
                use old_sql::Dialect as O;
                Ok(
                    match latest_sql::HostConnection::dialect(self, conn).await? {
                        L::Sqlite => O::Sqlite,
                        L::Postgres => O::Postgres,
                        L::Mysql => O::Mysql,
                    },
                )
            }

            async fn query(
                &mut self,
                conn: Resource<Connection>,
                statement: String,
                params: Vec<Value>,
                max_rows: u32,
            ) -> wasmtime::Result<Result<old_sql::Rows, Error>> {
                let rows =
                    latest_sql::HostConnection::query(self, conn, statement, params, max_rows);
                Ok(rows.await?.map(|r| old_sql::Rows {
                    columns: r.columns,
                    rows: r.rows,
                }))
            }

            async fn execute(
                &mut self,
                conn: Resource<Connection>,
                statement: String,
                params: Vec<Value>,
            ) -> wasmtime::Result<Result<u64, Error>> {
                latest_sql::HostConnection::execute(self, conn, statement, params).await
            }

            async fn execute_script(
                &mut self,
                conn: Resource<Connection>,
                script: String,
            ) -> wasmtime::Result<Result<(), Error>> {
                latest_sql::HostConnection::execute_script(self, conn, script).await
            }

            async fn begin(
                &mut self,
                conn: Resource<Connection>,
            ) -> wasmtime::Result<Result<(), Error>> {
                latest_sql::HostConnection::begin(self, conn).await
            }

            async fn commit(
                &mut self,
                conn: Resource<Connection>,
            ) -> wasmtime::Result<Result<(), Error>> {
                latest_sql::HostConnection::commit(self, conn).await
            }

            async fn rollback(
                &mut self,
                conn: Resource<Connection>,
            ) -> wasmtime::Result<Result<(), Error>> {
                latest_sql::HostConnection::rollback(self, conn).await
            }

            async fn wait_for_change(
                &mut self,
                conn: Resource<Connection>,
                channel: String,
                timeout_ms: u32,
            ) -> wasmtime::Result<Result<bool, Error>> {
                latest_sql::HostConnection::wait_for_change(self, conn, channel, timeout_ms).await
            }

            async fn drop(&mut self, conn: Resource<Connection>) -> wasmtime::Result<()> {
                latest_sql::HostConnection::drop(self, conn).await
            }
        }
    };
}

/// The `signing` import of 0.3.0 or 0.4.0, forwarded to the latest.
macro_rules! forward_signing {
    () => {
        impl old_signing::Host for HostView<'_> {
            async fn hmac_sha256(
                &mut self,
                name: String,
                message: Vec<u8>,
            ) -> wasmtime::Result<Result<Vec<u8>, Error>> {
                latest_signing::Host::hmac_sha256(self, name, message).await
            }
        }
    };
}

/// `resolve` for an older version's rules, called with the latest types. Such a rule sees two
/// sides: a conflict of a sync of more (`others` not empty) is not asked but left to a person,
/// saying why, rather than decided between two of its sides.
macro_rules! resolve_as_latest {
    () => {
        pub(crate) async fn resolve<S: AsContextMut<Data = StoreState>>(
            world: &ResolverWorld,
            s: S,
            conflicts: &[latest_resolver::Conflict],
        ) -> wasmtime::Result<Vec<latest_resolver::Resolution>> {
            let side = |s: &latest_resolver::Side| old_resolver::Side {
                name: s.name.clone(),
                value: s.value.clone(),
                changed_at: s.changed_at,
            };
            let asked: Vec<old_resolver::Conflict> = conflicts
                .iter()
                .filter(|c| c.others.is_empty())
                .map(|c| old_resolver::Conflict {
                    sync: c.sync.clone(),
                    field: c.field.clone(),
                    base: c.base.clone(),
                    left: side(&c.left),
                    right: side(&c.right),
                })
                .collect();
            let answers = if asked.is_empty() {
                Vec::new()
            } else {
                world
                    .duplex_plugin_resolver()
                    .call_resolve(s, &asked)
                    .await?
            };
            let asked = asked.len();
            let mut answers = answers.into_iter().map(|r| match r {
                old_resolver::Resolution::TakeLeft => latest_resolver::Resolution::TakeLeft,
                old_resolver::Resolution::TakeRight => latest_resolver::Resolution::TakeRight,
                old_resolver::Resolution::Value(v) => latest_resolver::Resolution::Value(v),
                old_resolver::Resolution::Manual(why) => latest_resolver::Resolution::Manual(why),
            });
            let unasked = |c: &latest_resolver::Conflict| {
                latest_resolver::Resolution::Manual(format!(
                    "the rule was built for duplex:plugin@{VERSION}, which shows it two sides; \
                     sync {} has {}: rebuild the rule against duplex:plugin@{}",
                    c.sync,
                    c.others.len() + 2,
                    super::world::VERSION
                ))
            };
            if answers.len() != asked {
                // A wrong count stays wrong, for the caller's contract check to name.
                let unasked = conflicts.iter().filter(|c| !c.others.is_empty()).map(unasked);
                return Ok(answers.chain(unasked).collect());
            }
            Ok(conflicts
                .iter()
                .map(|c| {
                    if c.others.is_empty() {
                        answers.next().expect("one answer per conflict asked")
                    } else {
                        unasked(c)
                    }
                })
                .collect())
        }
    };
}

/// A rule of a version that sees every side of a sync of more (0.4.0 on), called with the
/// latest types: the same shapes.
macro_rules! resolve_every_side {
    () => {
        pub(crate) async fn resolve<S: AsContextMut<Data = StoreState>>(
            world: &ResolverWorld,
            s: S,
            conflicts: &[latest_resolver::Conflict],
        ) -> wasmtime::Result<Vec<latest_resolver::Resolution>> {
            let side = |s: &latest_resolver::Side| old_resolver::Side {
                name: s.name.clone(),
                value: s.value.clone(),
                changed_at: s.changed_at,
            };
            let asked: Vec<old_resolver::Conflict> = conflicts
                .iter()
                .map(|c| old_resolver::Conflict {
                    sync: c.sync.clone(),
                    field: c.field.clone(),
                    base: c.base.clone(),
                    left: side(&c.left),
                    right: side(&c.right),
                    others: c.others.iter().map(side).collect(),
                })
                .collect();
            let answers = world
                .duplex_plugin_resolver()
                .call_resolve(s, &asked)
                .await?;
            Ok(answers
                .into_iter()
                .map(|r| match r {
                    old_resolver::Resolution::TakeLeft => latest_resolver::Resolution::TakeLeft,
                    old_resolver::Resolution::TakeRight => latest_resolver::Resolution::TakeRight,
                    old_resolver::Resolution::TakeOther(n) => {
                        latest_resolver::Resolution::TakeOther(n)
                    }
                    old_resolver::Resolution::Value(v) => latest_resolver::Resolution::Value(v),
                    old_resolver::Resolution::Manual(why) => {
                        latest_resolver::Resolution::Manual(why)
                    }
                })
                .collect())
        }
    };
}

/// A connector of an older version whose exports have the latest shapes (0.2.0 on: only
/// `webhook` came later, `change-batch.mid-transaction` in 0.5.0 and `change-batch.remaining`
/// in 0.6.0), called with the latest types: `Connector` wraps its bindings; an adapter from
/// 0.3.0 on adds `webhook_as_latest!`. Its batches say nothing of what remains; before 0.5.0
/// they count as whole, from 0.5.0 on they say it (`connector_as_latest!(said_mid_transaction)`).
macro_rules! connector_as_latest {
    () => {
        // Before 0.5.0 a connector could not say; its batches count as whole.
        connector_as_latest!(|_| false);
    };
    (said_mid_transaction) => {
        connector_as_latest!(|b: &old::ChangeBatch| b.mid_transaction);
    };
    ($mid_transaction:expr) => {
        type CallResult<T> = wasmtime::Result<Result<T, Error>>;

        impl Connector<'_> {
            fn guest(&self) -> &old::Guest {
                self.0.duplex_plugin_connector()
            }

            pub async fn info<S: AsContextMut<Data = StoreState>>(
                &self,
                s: S,
            ) -> wasmtime::Result<latest::ConnectorInfo> {
                let i = self.guest().call_info(s).await?;
                let mut capabilities = latest::Capabilities::empty();
                for (old_flag, flag) in [
                    (
                        old::Capabilities::CHANGE_FEED,
                        latest::Capabilities::CHANGE_FEED,
                    ),
                    (
                        old::Capabilities::DELETES_IN_FEED,
                        latest::Capabilities::DELETES_IN_FEED,
                    ),
                    (
                        old::Capabilities::CONDITIONAL_WRITES,
                        latest::Capabilities::CONDITIONAL_WRITES,
                    ),
                    (old::Capabilities::REALTIME, latest::Capabilities::REALTIME),
                ] {
                    if i.capabilities.contains(old_flag) {
                        capabilities |= flag;
                    }
                }
                Ok(latest::ConnectorInfo {
                    name: i.name,
                    version: i.version,
                    config_schema: i.config_schema,
                    capabilities,
                })
            }

            pub async fn check<S: AsContextMut<Data = StoreState>>(
                &self,
                s: S,
                config: &str,
            ) -> CallResult<()> {
                self.guest().call_check(s, config).await
            }

            pub async fn discover<S: AsContextMut<Data = StoreState>>(
                &self,
                s: S,
                config: &str,
            ) -> CallResult<Vec<latest::Stream>> {
                let streams = self.guest().call_discover(s, config).await?;
                Ok(streams.map(|streams| streams.into_iter().map(stream).collect()))
            }

            pub async fn read<S: AsContextMut<Data = StoreState>>(
                &self,
                s: S,
                config: &str,
                stream: &str,
                origin: &str,
                cursor: Option<&str>,
                max: u32,
            ) -> CallResult<latest::ChangeBatch> {
                let batch = self
                    .guest()
                    .call_read(s, config, stream, origin, cursor, max)
                    .await?;
                Ok(batch.map(|b| latest::ChangeBatch {
                    mid_transaction: ($mid_transaction)(&b),
                    changes: b.changes.into_iter().map(change).collect(),
                    next_cursor: b.next_cursor,
                    has_more: b.has_more,
                    remaining: None,
                }))
            }

            pub async fn write<S: AsContextMut<Data = StoreState>>(
                &self,
                s: S,
                config: &str,
                stream: &str,
                origin: &str,
                ops: &[latest::WriteOp],
            ) -> CallResult<Vec<Result<latest::Written, Error>>> {
                let ops: Vec<old::WriteOp> = ops.iter().map(write_op).collect();
                let results = self
                    .guest()
                    .call_write(s, config, stream, origin, &ops)
                    .await?;
                Ok(results.map(|rs| {
                    rs.into_iter()
                        .map(|r| {
                            r.map(|w| latest::Written {
                                id: w.id,
                                version: w.version,
                                stored: w.stored,
                            })
                        })
                        .collect()
                }))
            }

            pub async fn find<S: AsContextMut<Data = StoreState>>(
                &self,
                s: S,
                config: &str,
                stream: &str,
                key: &latest::LookupKey,
            ) -> CallResult<Vec<latest::Current>> {
                let key = match key {
                    latest::LookupKey::Ids(ids) => old::LookupKey::Ids(ids.clone()),
                    latest::LookupKey::ByField(m) => old::LookupKey::ByField(old::FieldMatch {
                        field: m.field.clone(),
                        values: m.values.clone(),
                        ignore_case: m.ignore_case,
                    }),
                };
                let found = self.guest().call_find(s, config, stream, &key).await?;
                Ok(found.map(|found| {
                    found
                        .into_iter()
                        .map(|c| latest::Current {
                            id: c.id,
                            fields: c.fields,
                            version: c.version,
                            changed_at: c.changed_at,
                        })
                        .collect()
                }))
            }

            pub async fn watch<S: AsContextMut<Data = StoreState>>(
                &self,
                s: S,
                config: &str,
                timeout_ms: u32,
            ) -> CallResult<latest::Watched> {
                let watched = self.guest().call_watch(s, config, timeout_ms).await?;
                Ok(watched.map(|w| match w {
                    old::Watched::Changed => latest::Watched::Changed,
                    old::Watched::Timeout => latest::Watched::Timeout,
                    old::Watched::Unsupported => latest::Watched::Unsupported,
                }))
            }

            pub async fn remove_capture<S: AsContextMut<Data = StoreState>>(
                &self,
                s: S,
                config: &str,
                stream: Option<&str>,
            ) -> CallResult<()> {
                self.guest().call_remove_capture(s, config, stream).await
            }
        }

        fn stream(s: old::Stream) -> latest::Stream {
            latest::Stream {
                name: s.name,
                fields: s
                    .fields
                    .into_iter()
                    .map(|f| latest::Field {
                        name: f.name,
                        type_: match f.type_ {
                            old::FieldType::Boolean => latest::FieldType::Boolean,
                            old::FieldType::Integer => latest::FieldType::Integer,
                            old::FieldType::Float => latest::FieldType::Float,
                            old::FieldType::Decimal => latest::FieldType::Decimal,
                            old::FieldType::Text => latest::FieldType::Text,
                            old::FieldType::Bytes => latest::FieldType::Bytes,
                            old::FieldType::Timestamp => latest::FieldType::Timestamp,
                            old::FieldType::Json => latest::FieldType::Json,
                        },
                        nullable: f.nullable,
                        writable: f.writable,
                        matchable: f.matchable,
                        allowed: f.allowed,
                        unsupported: f.unsupported,
                    })
                    .collect(),
                primary_key: s.primary_key,
            }
        }

        fn change(c: old::Change) -> latest::Change {
            latest::Change {
                id: c.id,
                kind: match c.kind {
                    old::ChangeKind::Create => latest::ChangeKind::Create,
                    old::ChangeKind::Update => latest::ChangeKind::Update,
                    old::ChangeKind::Delete => latest::ChangeKind::Delete,
                },
                fields: c.fields,
                version: c.version,
                changed_at: c.changed_at,
                origin: c.origin,
            }
        }

        fn write_op(op: &latest::WriteOp) -> old::WriteOp {
            match op {
                latest::WriteOp::Create(c) => old::WriteOp::Create(old::CreateOp {
                    fields: c.fields.clone(),
                }),
                latest::WriteOp::Update(u) => old::WriteOp::Update(old::UpdateOp {
                    id: u.id.clone(),
                    fields: u.fields.clone(),
                    if_version: u.if_version.clone(),
                }),
                latest::WriteOp::Delete(d) => old::WriteOp::Delete(old::DeleteOp {
                    id: d.id.clone(),
                    if_version: d.if_version.clone(),
                }),
            }
        }
    };
}

/// `webhook` of a connector of 0.3.0 or 0.4.0, called with the latest types.
macro_rules! webhook_as_latest {
    () => {
        impl Connector<'_> {
            pub async fn webhook<S: AsContextMut<Data = StoreState>>(
                &self,
                s: S,
                config: &str,
                request: &latest::WebhookRequest,
            ) -> CallResult<latest::WebhookAnswer> {
                let request = old::WebhookRequest {
                    method: request.method.clone(),
                    path: request.path.clone(),
                    headers: request.headers.clone(),
                    body: request.body.clone(),
                    received_at: request.received_at,
                };
                let answer = self.guest().call_webhook(s, config, &request).await?;
                Ok(answer.map(|a| match a {
                    old::WebhookAnswer::ChangesWaiting => latest::WebhookAnswer::ChangesWaiting,
                    old::WebhookAnswer::Nothing => latest::WebhookAnswer::Nothing,
                    old::WebhookAnswer::Refused(why) => latest::WebhookAnswer::Refused(why),
                    old::WebhookAnswer::Unsupported => latest::WebhookAnswer::Unsupported,
                }))
            }
        }
    };
}
