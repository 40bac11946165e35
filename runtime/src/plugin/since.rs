//! What every adapter of an older contract version (`since_v0_*.rs`) does the same way: its
//! `log` and `sql` imports forward to the latest host capabilities, and its rules are called
//! with the latest types (the resolver interface has not changed). The shapes are the same in
//! every version, but each version's bindings are Rust types of their own, so the code is
//! written once here and stamped out in each adapter, where `old_log`, `old_sql`,
//! `old_resolver`, `latest_log`, `latest_sql`, `latest_resolver` and `ResolverWorld` name that
//! version's and the latest bindings.

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

/// `resolve` for an older version's rules, called with the latest types.
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
            let conflicts: Vec<old_resolver::Conflict> = conflicts
                .iter()
                .map(|c| old_resolver::Conflict {
                    sync: c.sync.clone(),
                    field: c.field.clone(),
                    base: c.base.clone(),
                    left: side(&c.left),
                    right: side(&c.right),
                })
                .collect();
            let resolutions = world
                .duplex_plugin_resolver()
                .call_resolve(s, &conflicts)
                .await?;
            Ok(resolutions
                .into_iter()
                .map(|r| match r {
                    old_resolver::Resolution::TakeLeft => latest_resolver::Resolution::TakeLeft,
                    old_resolver::Resolution::TakeRight => latest_resolver::Resolution::TakeRight,
                    old_resolver::Resolution::Value(v) => latest_resolver::Resolution::Value(v),
                    old_resolver::Resolution::Manual(why) => {
                        latest_resolver::Resolution::Manual(why)
                    }
                })
                .collect())
        }
    };
}
