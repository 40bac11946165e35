//! The on-disk cache of compiled components, so a restart does not recompile.
//!
//! Keyed by the SHA-256 of the component's bytes and by the engine's compatibility hash (the
//! wasmtime version and every setting that changes generated code): an artifact is only loaded
//! into an engine that could have produced it. Writes are atomic (temp file, then rename), and an
//! artifact that fails to load is recompiled and replaced, so a torn or stale file costs one
//! compile, never a failure.
//!
//! A component loaded once is kept in memory and shared: every connection using the sql
//! connector runs the same compiled code. Loaded per connection, 50 syncs of SQLite held 100
//! copies of it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Compiled-component cache, or a pass-through when no directory is usable.
#[derive(Debug)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    /// Components loaded by this process, by [`key`]. A `Component` is a handle: clones share
    /// the compiled code.
    loaded: Mutex<HashMap<String, Component>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// How often the cache answered, for tests and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

impl CompileCache {
    /// A cache in `dir` (created if missing, readable by this user only), or none.
    pub fn new(dir: Option<PathBuf>) -> CompileCache {
        let dir = dir.and_then(|d| match create_private_dir(&d) {
            Ok(()) => Some(d),
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e,
                    "cannot use the compile cache directory; components will be compiled on every start");
                None
            }
        });
        CompileCache {
            dir,
            loaded: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The default place: `$XDG_CACHE_HOME/duplex/compiled`, else `~/.cache/duplex/compiled`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("duplex").join("compiled"))
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The compiled form of `bytes`: the one this process loaded already, else from the cache
    /// directory or freshly compiled (and then cached).
    pub fn component(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
        let key = key(engine, bytes);
        let loaded = self.loaded.lock().map(|l| l.get(&key).cloned());
        if let Ok(Some(c)) = loaded {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(c);
        }
        let component = self.compiled(engine, bytes, &key)?;
        if let Ok(mut l) = self.loaded.lock() {
            l.insert(key, component.clone());
        }
        Ok(component)
    }

    fn compiled(&self, engine: &Engine, bytes: &[u8], key: &str) -> wasmtime::Result<Component> {
        let Some(dir) = &self.dir else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Component::new(engine, bytes);
        };
        let path = dir.join(format!("{key}.cwasm"));
        if path.exists() {
            match load(engine, &path) {
                Ok(c) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(c);
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "cached compiled component did not load; compiling again"),
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let component = Component::new(engine, bytes)?;
        if let Err(e) = store(&path, &component.serialize()?) {
            tracing::warn!(path = %path.display(), error = %e, "could not write the compile cache");
        }
        Ok(component)
    }
}

/// Loads an artifact from the cache directory, into memory: a component is kept for the
/// process's life (see [`CompileCache::loaded`]), and a file mapping that long would crash the
/// process (SIGBUS) should anything truncate the file under it.
#[allow(unsafe_code)]
fn load(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    let artifact = std::fs::read(path)?;
    // SAFETY: `deserialize` trusts the bytes to be wasmtime's own output. Only this host
    // writes into the cache directory (created 0700, filled with `Component::serialize` output
    // under a name that includes the engine's compatibility hash); plugins have no file access.
    unsafe { Component::deserialize(engine, &artifact) }
}

fn store(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    // Unique per process and per write: two loads of one component may race to fill the cache.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    std::fs::write(&tmp, artifact)?;
    std::fs::rename(&tmp, path)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `<sha256 of the component>-<first 16 hex of the engine compatibility hash>`.
fn key(engine: &Engine, bytes: &[u8]) -> String {
    let mut h = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    let engine_hash = hex::encode(h.0.finalize());
    format!(
        "{}-{}",
        hex::encode(Sha256::digest(bytes)),
        &engine_hash[..16]
    )
}

/// Feeds `Hash` output into SHA-256, which, unlike `DefaultHasher`, is stable across Rust
/// versions and processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
