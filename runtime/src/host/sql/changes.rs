//! Change announcements behind `wait-for-change`, fanned out to every sync that watches a
//! database.
//!
//! A source per watched database: PostgreSQL's `LISTEN` on a channel (one connection per URL
//! and channel, the capture trigger's `NOTIFY`), and SQLite's files (the database and its WAL,
//! looked at every [`SQLITE_LOOK`] by one task for all of them: a stat each, no connection, no
//! plugin). A source bumps a generation number when it sees a change. Each waiter (one side of
//! one sync, named by the host, see `SqlState::waiter`) remembers the generation it last saw, so
//! that:
//! - an announcement reaches every sync watching the database, not only the first to wait;
//! - one made while a sync was busy is not lost: its next wait answers at once;
//! - a waiter's first wait answers at once, since it cannot know what came before it.
//!
//! A source nobody waited on for [`FORGET_AFTER`] is stopped and forgotten.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::watch;

use crate::background::spawn_at_home;
use crate::bindings::duplex::plugin::types::Error;

/// How often SQLite's files are looked at.
pub const SQLITE_LOOK: Duration = Duration::from_millis(250);
/// How long a source nobody waits on is kept.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// What is watched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Postgres { url: String, channel: String },
    Sqlite(PathBuf),
}

/// One source's generation and what each waiter saw of it.
struct Marks {
    generation: watch::Sender<u64>,
    seen: Mutex<Seen>,
    waited_at: Mutex<Instant>,
}

/// What each waiter saw of a source's generation, and when it last waited.
#[derive(Default)]
struct Seen {
    by: HashMap<String, (u64, tokio::time::Instant)>,
    pruned: Option<tokio::time::Instant>,
}

impl Seen {
    /// Notes that `waiter` saw generation `g` now, and says what it saw before, if that is
    /// known. A waiter that has not waited for [`FORGET_AFTER`] is forgotten: the runners a
    /// plugin swap or an applied config replaced leave theirs behind. One that comes back
    /// after all is answered at once, as at its first wait: a cycle too many, nothing missed.
    fn saw(&mut self, waiter: &str, g: u64) -> Option<u64> {
        let now = tokio::time::Instant::now();
        if self
            .pruned
            .is_none_or(|t| now.saturating_duration_since(t) > FORGET_AFTER)
        {
            self.by
                .retain(|_, (_, at)| now.saturating_duration_since(*at) <= FORGET_AFTER);
            self.pruned = Some(now);
        }
        self.by.insert(waiter.to_owned(), (g, now)).map(|(g, _)| g)
    }
}

impl Marks {
    fn new() -> Arc<Marks> {
        Arc::new(Marks {
            generation: watch::channel(0).0,
            seen: Mutex::default(),
            waited_at: Mutex::new(Instant::now()),
        })
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn forgotten(&self) -> bool {
        self.generation.receiver_count() == 0
            && self
                .waited_at
                .lock()
                .map_or(true, |t| t.elapsed() > FORGET_AFTER)
    }
}

type Sources = Arc<Mutex<HashMap<Source, Arc<Marks>>>>;

/// The host's change sources.
#[derive(Default)]
pub struct Changes {
    sources: Sources,
}

impl Changes {
    /// Waits up to `timeout` for a change of `source` that `waiter` has not seen: true at once
    /// if one came since its last wait (or this is its first), false when the time ran out.
    /// `pool` is the PostgreSQL pool of a PostgreSQL source.
    pub async fn wait(
        &self,
        source: Source,
        waiter: &str,
        timeout: Duration,
        pool: Option<PgPool>,
    ) -> Result<bool, Error> {
        let marks = self.marks(source, pool);
        if let Ok(mut t) = marks.waited_at.lock() {
            *t = Instant::now();
        }
        let mut rx = marks.generation.subscribe();
        let now = *rx.borrow_and_update();
        let seen = |g: u64| marks.seen.lock().map(|mut s| s.saw(waiter, g));
        match seen(now) {
            Ok(Some(before)) if before == now => {}
            _ => return Ok(true),
        }
        match tokio::time::timeout(timeout, rx.changed()).await {
            Ok(Ok(())) => {
                let _ = seen(*rx.borrow());
                Ok(true)
            }
            Ok(Err(_)) => Err(Error::Transient(
                "the database's change announcements stopped".into(),
            )),
            Err(_) => Ok(false),
        }
    }

    /// The marks of `source`, started if new.
    fn marks(&self, source: Source, pool: Option<PgPool>) -> Arc<Marks> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = sources.get(&source) {
            return m.clone();
        }
        let marks = Marks::new();
        let first_file = !sources.keys().any(|s| matches!(s, Source::Sqlite(_)));
        sources.insert(source.clone(), marks.clone());
        match (source, pool) {
            (Source::Postgres { channel, .. }, Some(pool)) => {
                spawn_at_home(listen(pool, channel, marks.clone(), self.sources.clone()));
            }
            (Source::Sqlite(_), _) if first_file => {
                spawn_at_home(look_at_files(self.sources.clone()));
            }
            _ => {}
        }
        marks
    }
}

/// Bumps `marks` on every notification on `channel`, and once at each (re)connection, since
/// what was sent while no one listened is unknown.
async fn listen(pool: PgPool, channel: String, marks: Arc<Marks>, sources: Sources) {
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(&channel).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut l = match listener.await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for changes; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if forget(&sources, &marks) {
                    return;
                }
                continue;
            }
        };
        marks.bump();
        loop {
            tokio::select! {
                n = l.recv() => match n {
                    Ok(_) => marks.bump(),
                    Err(e) => {
                        tracing::debug!(error = %e, "listening for changes failed; listening again");
                        break;
                    }
                },
                _ = tokio::time::sleep(FORGET_AFTER) => {
                    if forget(&sources, &marks) {
                        return;
                    }
                }
            }
        }
    }
}

/// Looks at every watched SQLite file every [`SQLITE_LOOK`], bumping a file's marks when its
/// size or modification time (or its WAL's) changed. Ends when no file is watched.
async fn look_at_files(sources: Sources) {
    let mut last: HashMap<PathBuf, Look> = HashMap::new();
    loop {
        tokio::time::sleep(SQLITE_LOOK).await;
        let files: Vec<(PathBuf, Arc<Marks>)> = {
            let mut s = sources.lock().unwrap_or_else(|p| p.into_inner());
            s.retain(|k, m| !matches!(k, Source::Sqlite(_)) || !m.forgotten());
            s.iter()
                .filter_map(|(k, m)| match k {
                    Source::Sqlite(p) => Some((p.clone(), m.clone())),
                    Source::Postgres { .. } => None,
                })
                .collect()
        };
        if files.is_empty() {
            // A later wait starts the task again (`Changes::marks`); the map lock orders the two.
            let s = sources.lock().unwrap_or_else(|p| p.into_inner());
            if !s.keys().any(|k| matches!(k, Source::Sqlite(_))) {
                return;
            }
            continue;
        }
        // A set: comparing every file with every other made the look quadratic (with 1,000
        // files, most of an idle process's CPU).
        let watched: std::collections::HashSet<&PathBuf> = files.iter().map(|(f, _)| f).collect();
        last.retain(|p, _| watched.contains(p));
        for (path, marks) in files {
            let mut wal = path.clone().into_os_string();
            wal.push("-wal");
            let mut now = Look {
                file: stamp(&path, true),
                wal: stamp(&PathBuf::from(wal), false),
                counter: None,
            };
            let before = last.get(&path);
            if before.is_some_and(|b| b.file == now.file && b.wal == now.wal) {
                continue;
            }
            // The file's time moves on transactions that change nothing too: the counter
            // tells.
            now.counter = change_counter(&path);
            let same = before.is_some_and(|b| b.counter == now.counter && b.wal == now.wal);
            match last.insert(path, now) {
                Some(_) if same => {}
                // A first look has nothing to compare with: a change made between a waiter's
                // first wait (which answered at once) and this look would otherwise be missed.
                _ => marks.bump(),
            }
        }
    }
}

/// What a look at a SQLite database's files saw.
#[derive(PartialEq)]
struct Look {
    file: Option<(u64, SystemTime)>,
    wal: Option<(u64, SystemTime)>,
    /// Read when the file's size or time moved.
    counter: Option<[u8; 4]>,
}

/// The database header's file change counter, which SQLite bumps with every transaction that
/// changes the database in rollback-journal mode (and only then: the file's own time also moves
/// when nothing changed); none when it cannot be read.
fn change_counter(path: &PathBuf) -> Option<[u8; 4]> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).ok()?;
    let mut counter = [0; 4];
    file.read_exact_at(&mut counter, 24).ok()?;
    Some(counter)
}

/// A file's size and modification time; none when it is absent, or empty unless `empty`
/// counts. A WAL (where WAL mode commits, leaving the header's counter alone) is empty or
/// absent between connections, and that is no change.
fn stamp(path: &PathBuf, empty: bool) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    (empty || m.len() > 0).then_some(())?;
    Some((m.len(), m.modified().ok()?))
}

/// Forgets `marks` if nobody waits on it any more: true when it did.
fn forget(sources: &Sources, marks: &Arc<Marks>) -> bool {
    if !marks.forgotten() {
        return false;
    }
    let mut s = sources.lock().unwrap_or_else(|p| p.into_inner());
    s.retain(|_, m| !Arc::ptr_eq(m, marks));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_stopped_waiting_is_forgotten() {
        let mut seen = Seen::default();
        assert_eq!(seen.saw("old", 1), None, "a first wait");
        assert_eq!(seen.saw("old", 1), Some(1));
        tokio::time::advance(FORGET_AFTER / 2).await;
        assert_eq!(seen.saw("new", 1), None);
        tokio::time::advance(FORGET_AFTER / 2 + Duration::from_secs(1)).await;
        assert_eq!(seen.saw("new", 2), Some(1));
        assert!(!seen.by.contains_key("old"), "the waiter gone is kept");
        assert_eq!(
            seen.saw("old", 2),
            None,
            "one back is answered as at a first wait"
        );
    }
}
