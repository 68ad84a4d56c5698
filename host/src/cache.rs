//! The on-disk cache of compiled components, keyed by the component's
//! content hash and by the engine's compilation settings, so a restart or a
//! re-drop of a known module loads in milliseconds instead of recompiling.
//!
//! Layout: `{dir}/{engine key}/{sha256 of the component}.cwasm`. Entries are
//! written to a temporary file and renamed into place, so a reader never
//! sees a partial entry. The directory must be writable only by the host's
//! user: its files are loaded as native code.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A cache directory bound to one engine configuration.
#[derive(Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Feeds `Hash` output into SHA-256 for a key that is stable across runs.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl ArtifactCache {
    /// Open (creating it if needed) the cache under `root` for `engine`.
    pub fn open(root: &Path, engine: &Engine) -> anyhow::Result<ArtifactCache> {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        let key = hex::encode(hasher.0.finalize());
        let dir = root.join(&key[..16]);
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "creating the compiled-artifact cache {} (set cache.dir to a writable directory, or disable the cache)",
                dir.display()
            )
        })?;
        Ok(ArtifactCache {
            dir,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The default cache location: `$XDG_CACHE_HOME/natsplug` or `~/.cache/natsplug`.
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("natsplug");
        }
        match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(home) => PathBuf::from(home).join(".cache").join("natsplug"),
            None => std::env::temp_dir().join("natsplug-cache"),
        }
    }

    /// The directory entries of this engine live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, content_hash: &str) -> PathBuf {
        self.dir.join(format!("{content_hash}.cwasm"))
    }

    /// Whether a compiled entry exists for `content_hash`.
    pub fn contains(&self, content_hash: &str) -> bool {
        self.entry(content_hash).is_file()
    }

    /// The cached compilation of `content_hash`, if present and loadable.
    /// A corrupt or incompatible entry is removed and reported as a miss.
    pub fn get(&self, engine: &Engine, content_hash: &str) -> Option<Component> {
        let path = self.entry(content_hash);
        if !path.is_file() {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // SAFETY: entries are written only by `put` of this cache, from
        // `Component::serialize` of an engine with the same compatibility
        // hash (part of the directory name), and renamed into place whole.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(component)
            }
            Err(error) => {
                tracing::warn!(entry = %path.display(), %error, "dropping an unusable compiled-cache entry");
                let _ = std::fs::remove_file(&path);
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Store the compilation of `content_hash`. Failures are logged, not
    /// returned: the cache only ever saves time.
    pub fn put(&self, content_hash: &str, component: &Component) {
        let result = (|| -> anyhow::Result<()> {
            let bytes = component.serialize().map_err(anyhow::Error::from)?;
            let path = self.entry(content_hash);
            let temporary = self.dir.join(format!(
                ".{content_hash}.{}.{:?}.tmp",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::write(&temporary, bytes)?;
            std::fs::rename(&temporary, &path)?;
            Ok(())
        })();
        if let Err(error) = result {
            tracing::warn!(dir = %self.dir.display(), "could not write a compiled-cache entry: {error:#}");
        }
    }

    /// Loads served from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Loads that had to compile so far.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_corrupt_ones_are_dropped() {
        let engine = Engine::default();
        let root = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(root.path(), &engine).unwrap();
        let component = Component::new(&engine, "(component)").unwrap();
        assert!(cache.get(&engine, "abc").is_none());
        cache.put("abc", &component);
        assert!(cache.contains("abc"));
        assert!(cache.get(&engine, "abc").is_some());
        assert_eq!((cache.hits(), cache.misses()), (1, 1));

        std::fs::write(cache.entry("abc"), b"garbage").unwrap();
        assert!(cache.get(&engine, "abc").is_none());
        assert!(!cache.contains("abc"), "a corrupt entry is removed");
    }

    #[test]
    fn different_engine_settings_use_different_directories() {
        let root = tempfile::tempdir().unwrap();
        let plain = Engine::default();
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let epoch = Engine::new(&config).unwrap();
        let a = ArtifactCache::open(root.path(), &plain).unwrap();
        let b = ArtifactCache::open(root.path(), &epoch).unwrap();
        assert_ne!(a.dir(), b.dir());
    }
}
