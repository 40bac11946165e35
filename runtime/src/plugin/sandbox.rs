//! The sandbox every plugin call runs in: a short-lived store with a memory cap, a CPU budget
//! (epoch interruption) and a wall-clock timeout, and the one place a call's failure is told
//! apart (the plugin's own typed error, a trap, a budget, a timeout).
//!
//! Invariants:
//! 1. A store that trapped or timed out is never entered again: wasmtime poisons the instance
//!    after a trap, and a future dropped mid-call leaves it in an unknown state. [`Sandbox`]
//!    marks itself poisoned and refuses further calls; the caller makes a new session.
//! 2. Every call runs with a fresh CPU budget. Epochs only advance the budget while guest code
//!    runs, so time spent waiting in host calls (a slow query) is bounded by the wall-clock
//!    timeout instead. The deadline callback yields to tokio at every tick, which is what lets
//!    that timeout fire even while the guest spins.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::host::sql::Spent;
use crate::host::{Caller, HostData, HostView, States};

/// How often the epoch advances; the granularity of CPU budgets.
pub const TICK: Duration = Duration::from_millis(10);

/// Resource limits for every call into a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest linear memory an instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Guest CPU time one call may use.
    pub cpu_per_call: Duration,
    /// Wall-clock time one call may take, including time waiting in host calls.
    pub call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            cpu_per_call: Duration::from_secs(10),
            call_timeout: Duration::from_secs(60),
        }
    }
}

impl Limits {
    fn cpu_ticks(&self) -> u64 {
        (self.cpu_per_call.as_millis() / TICK.as_millis()).max(1) as u64
    }
}

/// How a store's WASI context is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purity {
    /// Connectors: real clocks and randomness; still no environment, files or sockets.
    Connector,
    /// Rules: a fixed clock and seeded randomness, so a rule's answer depends on its input alone.
    Deterministic,
}

/// Everything a plugin's store holds: the WASI context (empty), the resource table, the
/// limiter, and the per-store state of each host capability.
pub struct StoreState {
    pub(crate) caller: Caller,
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) host: States,
    stderr: MemoryOutputPipe,
    cpu_ticks: u64,
    cpu_budget: u64,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostData for StoreState {
    fn host(&mut self) -> HostView<'_> {
        HostView {
            states: &mut self.host,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for StoreState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.host.http.ctx,
            hooks: &mut self.host.http.hooks,
            table: &mut self.table,
        }
    }
}

/// Most of a plugin's stderr kept, to report why it panicked.
const STDERR_CAPACITY: usize = 16 << 10;
/// Most host handles (connections, streams) one store may hold.
const MAX_HANDLES: usize = 1024;

/// A store's limits on memory, tables and instances. Records a refused growth so that the trap
/// that follows (a Rust guest aborts when allocation fails) can be reported as what it is.
pub(crate) struct Limiter {
    memory_bytes: usize,
    denied: Option<usize>,
    /// The instance's linear memories together, as large as they have grown: a wasm memory
    /// never shrinks, so this is the most the plugin has held so far.
    held: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.denied = Some(desired);
            return Ok(false);
        }
        self.held += desired.saturating_sub(current);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        16
    }
}

/// The error a deadline callback raises when a call's CPU budget is spent.
#[derive(Debug)]
struct CpuBudgetSpent;

impl std::fmt::Display for CpuBudgetSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CPU budget spent")
    }
}
impl std::error::Error for CpuBudgetSpent {}

/// A new store for one unit of work.
pub(crate) fn new_store(
    engine: &Engine,
    caller: Caller,
    limits: &Limits,
    purity: Purity,
    host: States,
) -> Store<StoreState> {
    let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
    let mut wasi = WasiCtxBuilder::new();
    wasi.stderr(stderr.clone());
    if purity == Purity::Deterministic {
        wasi.wall_clock(FixedClock)
            .monotonic_clock(FixedClock)
            .secure_random(wasmtime_wasi::Deterministic::new(SEED.to_vec()))
            .insecure_random(wasmtime_wasi::Deterministic::new(SEED.to_vec()))
            .insecure_random_seed(0x0d0e_d0e0_d0e0_d0e0);
    }
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_HANDLES);
    let state = StoreState {
        host,
        caller,
        wasi: wasi.build(),
        table,
        limiter: Limiter {
            memory_bytes: limits.memory_bytes,
            denied: None,
            held: 0,
        },
        stderr,
        cpu_ticks: 0,
        cpu_budget: limits.cpu_ticks(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_callback(|mut ctx| {
        let s = ctx.data_mut();
        s.cpu_ticks += 1;
        if s.cpu_ticks > s.cpu_budget {
            return Err(CpuBudgetSpent.into());
        }
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

/// The seed of a rule's "randomness". Fixed, so rules are reproducible.
const SEED: [u8; 32] = *b"duplex rules are deterministic!!";

/// A clock stopped at the Unix epoch, for rules.
struct FixedClock;

impl wasmtime_wasi::HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Why a call into a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with one of the contract's typed errors.
    #[error("{caller}: {func}: {error}")]
    Plugin {
        caller: Caller,
        func: &'static str,
        error: super::WitError,
    },
    /// The plugin trapped (a panic, an out-of-bounds access, `unreachable`).
    #[error("{caller}: {func} crashed: {message}")]
    Trap {
        caller: Caller,
        func: &'static str,
        message: String,
    },
    /// The plugin ran longer than its CPU budget.
    #[error("{caller}: {func} used more than its CPU budget of {budget:?} and was stopped (raise plugins.cpu_per_call if the work is legitimate)")]
    CpuBudget {
        caller: Caller,
        func: &'static str,
        budget: Duration,
    },
    /// The plugin tried to grow its memory past the cap.
    #[error("{caller}: {func} asked for {wanted} bytes of memory, over its limit of {limit} bytes, and was stopped")]
    Memory {
        caller: Caller,
        func: &'static str,
        wanted: usize,
        limit: usize,
    },
    /// The call took longer than its wall-clock timeout (including time in host calls).
    #[error("{caller}: {func} did not finish within {timeout:?} and was stopped")]
    Timeout {
        caller: Caller,
        func: &'static str,
        timeout: Duration,
    },
    /// The plugin broke the contract in a way the types could not prevent.
    #[error("{caller}: {func} broke the plugin contract: {message}")]
    Contract {
        caller: Caller,
        func: &'static str,
        message: String,
    },
    /// The session's store failed before and cannot be entered again.
    #[error("{caller}: cannot call {func}: this session failed earlier and was discarded; start a new session")]
    Poisoned { caller: Caller, func: &'static str },
}

impl CallError {
    /// The plugin's own typed error, if that is what this is.
    pub fn plugin_error(&self) -> Option<&super::WitError> {
        match self {
            CallError::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl<B> Drop for Sandbox<B> {
    fn drop(&mut self) {
        let c = self.caller();
        crate::telemetry::plugin_instance(&c.plugin, &c.connection, false);
    }
}

type CallFuture<'s, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 's>>;

/// One store and the typed exports of the instance in it.
pub(crate) struct Sandbox<B> {
    store: Store<StoreState>,
    bindings: Option<B>,
    limits: Limits,
    poisoned: bool,
}

impl<B> Sandbox<B> {
    pub(crate) fn new(store: Store<StoreState>, limits: Limits) -> Self {
        let c = &store.data().caller;
        crate::telemetry::plugin_instance(&c.plugin, &c.connection, true);
        Sandbox {
            store,
            bindings: None,
            limits,
            poisoned: false,
        }
    }

    pub(crate) fn caller(&self) -> &Caller {
        &self.store.data().caller
    }

    pub(crate) fn state(&self) -> &StoreState {
        self.store.data()
    }

    pub(crate) fn state_mut(&mut self) -> &mut StoreState {
        self.store.data_mut()
    }

    /// Instantiates the component in this store (instantiation runs guest code, so it runs
    /// under the same limits as a call).
    pub(crate) async fn instantiate(
        &mut self,
        instantiate: impl for<'s> FnOnce(&'s mut Store<StoreState>) -> CallFuture<'s, B>,
    ) -> Result<(), CallError> {
        let b = self
            .guarded("instantiate", |store| instantiate(store))
            .await?;
        self.bindings = Some(b);
        Ok(())
    }

    /// Runs one call into the instance under the limits.
    pub(crate) async fn call<R>(
        &mut self,
        func: &'static str,
        call: impl for<'s> FnOnce(&'s B, &'s mut Store<StoreState>) -> CallFuture<'s, R>,
    ) -> Result<R, CallError> {
        // Not instantiated (instantiation failed) or failed since: never entered again.
        let (Some(bindings), false) = (&self.bindings, self.poisoned) else {
            self.count(func, "poisoned", Duration::ZERO, Spent::default());
            return Err(CallError::Poisoned {
                caller: self.caller().clone(),
                func,
            });
        };
        let store = &mut self.store;
        Self::prepare(store);
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(self.limits.call_timeout, call(bindings, store)).await;
        self.settle(func, started, outcome)
    }

    async fn guarded<R>(
        &mut self,
        func: &'static str,
        call: impl for<'s> FnOnce(&'s mut Store<StoreState>) -> CallFuture<'s, R>,
    ) -> Result<R, CallError> {
        if self.poisoned {
            self.count(func, "poisoned", Duration::ZERO, Spent::default());
            return Err(CallError::Poisoned {
                caller: self.caller().clone(),
                func,
            });
        }
        Self::prepare(&mut self.store);
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(self.limits.call_timeout, call(&mut self.store)).await;
        self.settle(func, started, outcome)
    }

    /// Counts a call for `/metrics` ([`crate::telemetry`]).
    fn count(&self, func: &'static str, outcome: &'static str, took: Duration, sql: Spent) {
        let c = self.caller();
        let sql = (sql.time, sql.calls);
        crate::telemetry::plugin_call(&c.plugin, &c.connection, func, outcome, took, sql);
    }

    fn prepare(store: &mut Store<StoreState>) {
        store.data_mut().cpu_ticks = 0;
        store.data_mut().host.sql.take_spent();
        store.set_epoch_deadline(1);
    }

    /// Turns a call's outcome into a result, poisoning the sandbox on any failure of the
    /// instance itself (invariant 1).
    fn settle<R>(
        &mut self,
        func: &'static str,
        started: std::time::Instant,
        outcome: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
    ) -> Result<R, CallError> {
        let result = self.settled(func, outcome);
        let label = match &result {
            Ok(_) => "returned",
            Err(CallError::CpuBudget { .. }) => "cpu_budget",
            Err(CallError::Memory { .. }) => "memory",
            Err(CallError::Timeout { .. }) => "timeout",
            Err(_) => "trap",
        };
        let took = started.elapsed();
        // The call's time beside its SQL calls' (the round trips and the database's work): the
        // rest is the plugin's own work and its values crossing the sandbox's boundary.
        let sql = self.store.data_mut().host.sql.take_spent();
        self.count(func, label, took, sql);
        let held = self.store.data().limiter.held;
        let c = self.caller();
        tracing::debug!(
            plugin = %c.plugin, connection = %c.connection, func, outcome = label,
            took_ms = %format_args!("{:.1}", took.as_secs_f64() * 1e3),
            sql_ms = %format_args!("{:.1}", sql.time.as_secs_f64() * 1e3),
            sql_calls = sql.calls,
            memory_mib = %format_args!("{:.1}", held as f64 / f64::from(1 << 20)),
            "plugin call"
        );
        result
    }

    fn settled<R>(
        &mut self,
        func: &'static str,
        outcome: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
    ) -> Result<R, CallError> {
        let caller = self.caller().clone();
        let err = match outcome {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) => e,
            Err(_) => {
                self.poisoned = true;
                return Err(CallError::Timeout {
                    caller,
                    func,
                    timeout: self.limits.call_timeout,
                });
            }
        };
        self.poisoned = true;
        let state = self.store.data();
        if err.downcast_ref::<CpuBudgetSpent>().is_some() {
            return Err(CallError::CpuBudget {
                caller,
                func,
                budget: self.limits.cpu_per_call,
            });
        }
        if let Some(wanted) = state.limiter.denied {
            return Err(CallError::Memory {
                caller,
                func,
                wanted,
                limit: self.limits.memory_bytes,
            });
        }
        let mut message = format!("{err:#}");
        let stderr = state.stderr.contents();
        let stderr = String::from_utf8_lossy(&stderr);
        let stderr = stderr.trim();
        if !stderr.is_empty() {
            let tail: String = stderr
                .chars()
                .rev()
                .take(1000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            message = format!("{message}; the plugin's stderr said: {tail}");
        }
        Err(CallError::Trap {
            caller,
            func,
            message,
        })
    }
}
