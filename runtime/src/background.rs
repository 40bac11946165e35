//! Background work: the cycles that work through a full batch (a first load, a backlog) run on
//! a runtime of their own whose threads run at a lower OS priority, so that a sync with a change
//! or two finds a core as soon as it wakes.
//!
//! Turns (see [`crate::driver::Turns`]) keep the loads' steps to one fewer runtime thread than
//! there are cores, but tokio has no priorities: a realtime sync woken by a change still queued
//! behind whatever load steps were ready on its thread (a plugin call runs 10 ms before it
//! yields), and a load's SQLite statements (on the blocking pool) and state commits (on a
//! thread of their own) took the other cores. On the background runtime all of that runs on
//! threads [`NICE`] steps nicer (a thread started by a lowered one inherits its value): the
//! kernel gives a core to a normal thread first, and the loads keep the whole machine when
//! nothing else wants it.
//!
//! A cycle is moved there whole, the sync's runner with it, and comes back when it ends (see
//! [`run`]); the pooled connections and long-lived tasks it opens are opened on the runtime it
//! came from (see [`at_home`]). Only threads made for it are lowered: an unprivileged thread
//! cannot raise its priority back. Lowering one thread is Linux's (elsewhere `setpriority`
//! lowers the whole process), so elsewhere, and on a current-thread runtime (the tests'), the
//! work runs where it is.
//!
//! The state has one writer at a time, whatever the priority of the thread asking: a realtime
//! sync's intents and commit queued behind a load's commit of a thousand links (about 9 ms)
//! in the loads' busiest seconds. So a background thread's state write first gives way to the
//! foreground cycles in flight (see [`give_way`]), for at most [`GIVE_WAY_MOST`].

use std::future::Future;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// How much background threads are lowered (added to the nice value of the thread that makes
/// the background runtime, at most 19): the kernel weighs a thread at nice 10 about a tenth
/// of one at 0.
pub const NICE: i32 = 10;

tokio::task_local! {
    /// The runtime background work came from (see [`at_home`]).
    static HOME: tokio::runtime::Handle;
}

/// Runs `work` on the background runtime and gives back what it returns; a panic in it is
/// resumed here, and dropping this future cancels it. Where there is no background runtime,
/// or the caller's runtime is a current-thread one, `work` runs in place.
pub async fn run<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> T {
    let Some(runtime) = runtime().filter(|_| on_threaded_runtime()) else {
        return work.await;
    };
    let home = tokio::runtime::Handle::current();
    joined(Cancelled(runtime.spawn(HOME.scope(home, work)))).await
}

/// Whether the caller runs on a multi-thread tokio runtime (the tests' current-thread runtimes
/// run background work, and a cycle's commit, in place).
pub fn on_threaded_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Runs `work` on the runtime the current background work came from (in place for any other
/// work): for what outlives the cycle or serves other syncs. A socket belongs to the runtime
/// it was opened on, whose threads wake its readers; a pooled database connection opened by a
/// load would otherwise answer a realtime sync's statements through the background's lowered,
/// busy threads.
pub async fn at_home<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> T {
    match HOME.try_with(Clone::clone) {
        Ok(home) => joined(Cancelled(home.spawn(work))).await,
        Err(_) => work.await,
    }
}

/// Spawns `task` as `tokio::spawn` does, on the runtime the current background work came from
/// (see [`at_home`]).
pub fn spawn_at_home<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match HOME.try_with(Clone::clone) {
        Ok(home) => home.spawn(task),
        Err(_) => tokio::spawn(task),
    }
}

/// The longest a background thread's state write waits for foreground cycles to end: about a
/// realtime cycle's length beside busy loads, so a load meeting one waits it out, and loads
/// beside syncs that are never all idle still commit at a bounded pace.
pub const GIVE_WAY_MOST: Duration = Duration::from_millis(20);

/// How many foreground cycles are in flight, and a signal when the last one ends.
static IN_FLIGHT: Mutex<usize> = Mutex::new(0);
static ENDED: Condvar = Condvar::new();

/// A foreground cycle in flight, until dropped: background state writes wait for it (see
/// [`give_way`]).
#[must_use = "the cycle counts as in flight only while this lives"]
pub struct Foreground(());

/// Counts a foreground cycle as in flight until the returned guard is dropped.
pub fn foreground() -> Foreground {
    *IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    Foreground(())
}

impl Drop for Foreground {
    fn drop(&mut self) {
        let mut n = IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner);
        *n -= 1;
        if *n == 0 {
            ENDED.notify_all();
        }
    }
}

/// On a background thread, waits until no foreground cycle is in flight, or
/// [`GIVE_WAY_MOST`] has passed; elsewhere returns at once. Called before taking the state's
/// one writer: a foreground cycle then finds it free for its intents and its commit instead of
/// held by a load's commit, which took the writer for milliseconds on a lowered thread.
pub fn give_way() {
    give_way_for(GIVE_WAY_MOST);
}

fn give_way_for(most: Duration) {
    if !on_background_thread() {
        return;
    }
    let n = IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner);
    if *n == 0 {
        return;
    }
    let _ = ENDED
        .wait_timeout_while(n, most, |n| *n > 0)
        .unwrap_or_else(PoisonError::into_inner);
}

/// Whether the calling thread is one of the background's (or started by one): its nice value
/// is the background's and that is lower than the threads it came from.
fn on_background_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        TARGET.get().copied().flatten().is_some_and(|t| nice() >= t)
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// What a task handed elsewhere returned; its panic is resumed here.
async fn joined<T>(mut task: Cancelled<T>) -> T {
    match (&mut task.0).await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Not by `Cancelled`, which is dropped with this future: by its runtime's shutdown.
        // The background runtime lasts the process; the home runtime's end drops the caller
        // of this background work too, and this with it. Until then, nothing comes back.
        Err(_) => std::future::pending().await,
    }
}

/// Aborts the task when dropped: work handed to the background stops with its caller.
struct Cancelled<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Cancelled<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lowers the calling thread for the rest of its life, where the platform lowers one thread.
/// For threads made for background work only (see the module's comment).
fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    lower_linux_thread();
}

/// The nice value of background threads: [`NICE`] above the thread that made the background
/// runtime (at most 19); none where that thread already runs at 19, so nothing is lower. Set
/// before the runtime's first thread starts.
#[cfg(target_os = "linux")]
static TARGET: OnceLock<Option<i32>> = OnceLock::new();

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_linux_thread() {
    let Some(target) = TARGET.get().copied().flatten() else {
        return;
    };
    // SAFETY: getpriority and setpriority take no pointers; with PRIO_PROCESS and 0 Linux
    // reads and changes the calling thread's nice value only (getpriority cannot fail for it).
    // A thread inherits its maker's value: one started by a background thread is already
    // there. Raising the value needs no privilege; a failure leaves the thread as it was,
    // which is only slower for others.
    let done = unsafe {
        match libc::getpriority(libc::PRIO_PROCESS, 0) {
            now if now >= target => 0,
            _ => libc::setpriority(libc::PRIO_PROCESS, 0, target),
        }
    };
    if done != 0 {
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, "a background thread kept its priority");
    }
}

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn nice() -> i32 {
    // SAFETY: no pointers; PRIO_PROCESS with 0 (the calling thread) cannot fail.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// The background runtime: as many threads as cores, and its own blocking pool, each thread
/// lowered when it starts. None where one thread cannot be lowered, or where the runtime could
/// not be built (then the work runs at the normal priority).
fn runtime() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    if !cfg!(target_os = "linux") {
        return None;
    }
    RUNTIME
        .get_or_init(|| {
            #[cfg(target_os = "linux")]
            TARGET.get_or_init(|| {
                let from = nice();
                Some((from + NICE).min(19)).filter(|&to| to > from)
            });
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("duplex-background")
                .on_thread_start(lower_this_thread)
                .enable_all()
                .build()
                .inspect_err(|error| {
                    tracing::warn!(%error, "no background runtime: loads run at the normal priority");
                })
                .ok()
        })
        .as_ref()
        .map(tokio::runtime::Runtime::handle)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_work_runs_on_lowered_threads_and_comes_back() {
        let normal = nice();
        let lower = (normal + NICE).min(19);
        let (worker, blocking, started) = run(async move {
            let blocking = tokio::task::spawn_blocking(nice).await.unwrap();
            // A thread the work starts for itself (a commit's) inherits the value.
            let started = std::thread::spawn(nice).join().unwrap();
            (nice(), blocking, started)
        })
        .await;
        assert_eq!((worker, blocking, started), (lower, lower, lower));
        // What it hands home runs at the caller's priority, there.
        let (home, spawned) = run(async {
            let home = at_home(async { nice() }).await;
            let spawned = spawn_at_home(async { nice() }).await.unwrap();
            (home, spawned)
        })
        .await;
        assert_eq!((home, spawned), (normal, normal));
        assert_eq!(at_home(async { nice() }).await, normal);
        // The caller's threads, and its runtime's blocking pool, are as they were.
        assert_eq!(nice(), normal);
        assert_eq!(tokio::task::spawn_blocking(nice).await.unwrap(), normal);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_background_work_is_the_callers() {
        let panicked = tokio::spawn(run(async { panic!("in the background") }))
            .await
            .unwrap_err();
        let message = panicked.into_panic();
        assert_eq!(message.downcast_ref::<&str>(), Some(&"in the background"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_work_stops_with_its_caller() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let caller = tokio::spawn(run(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        }));
        caller.abort();
        // The work's end drops its sender: the channel closes.
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_state_writes_give_way_to_a_foreground_cycle_in_flight() {
        run(async {}).await; // the background runtime is made
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let cycle = foreground();
        // The foreground's own writes do not wait for it (were they to, this would take 60 s).
        let started = std::time::Instant::now();
        give_way_for(Duration::from_secs(60));
        assert!(started.elapsed() < Duration::from_secs(30));
        let write = {
            let order = order.clone();
            run(async move {
                give_way_for(Duration::from_secs(60));
                order.lock().unwrap().push("background write");
            })
        };
        let write = tokio::spawn(write);
        tokio::time::sleep(Duration::from_millis(20)).await;
        order.lock().unwrap().push("foreground cycle ended");
        drop(cycle);
        write.await.unwrap();
        assert_eq!(
            *order.lock().unwrap(),
            ["foreground cycle ended", "background write"]
        );
        // A cycle that does not end holds background writes for the most only.
        let _endless = foreground();
        run(async { give_way_for(Duration::from_millis(10)) }).await;
    }

    #[tokio::test]
    async fn on_a_current_thread_runtime_the_work_runs_in_place() {
        let (here, normal) = (std::thread::current().id(), nice());
        let there = run(async { (std::thread::current().id(), nice()) }).await;
        assert_eq!((here, normal), there);
    }
}
