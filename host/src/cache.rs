//! The on-disk cache of compiled components, keyed by the component's
//! content hash and by the engine's compilation settings, so a restart or a
//! re-drop of a known module loads in milliseconds instead of recompiling.
//!
//! Layout: `{dir}/{key}/{sha256 of the component}.cwasm`, where the key
//! hashes the engine's compatibility hash, the host's version and the entry
//! format. Entries are written to a temporary file, synced and renamed into place, so a reader
//! never sees a partial entry. The directory must be writable only by the
//! host's user: its files are loaded as native code.
//!
//! Wasmtime trusts the bytes of a compiled artifact (it checks only their
//! format and engine settings), so each entry carries its own length and
//! SHA-256 in a header: a truncated entry, or one with a flipped bit
//! anywhere, is removed and compiled afresh, never loaded.
//!
//! The cache only ever saves time. When it cannot be written (a read-only
//! or full disk), the host serves on and says so once per cause.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::anyhow;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every entry; a new layout gets a new tag.
const MAGIC: &[u8; 8] = b"NPCWASM1";
/// Magic, payload length (u64, little-endian), SHA-256 of the payload.
const HEADER_LEN: usize = MAGIC.len() + 8 + 32;

/// A cache directory bound to one engine configuration.
#[derive(Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    /// The kind of the last write failure reported at warn level, so that
    /// a full or read-only disk is reported once, not once per plugin.
    reported_write_failure: Mutex<Option<std::io::ErrorKind>>,
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

/// Why an entry on disk cannot be used.
#[derive(Debug, PartialEq, Eq)]
enum Defect {
    /// Shorter than its header says.
    Truncated { expected: u64, found: u64 },
    /// Longer than its header says.
    TrailingBytes { expected: u64, found: u64 },
    /// Not in this cache's format (another program, or an older layout).
    UnknownFormat,
    /// The bytes do not hash to the recorded SHA-256.
    ChecksumMismatch,
}

impl std::fmt::Display for Defect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Defect::Truncated { expected, found } => {
                write!(f, "truncated: it holds {found} of its {expected} bytes")
            }
            Defect::TrailingBytes { expected, found } => write!(
                f,
                "it holds {found} bytes, {} more than the {expected} it was written with",
                found - expected
            ),
            Defect::UnknownFormat => write!(f, "it is not in this host's cache format"),
            Defect::ChecksumMismatch => write!(
                f,
                "checksum mismatch: its bytes changed after it was written"
            ),
        }
    }
}

/// The header and payload of an entry for `payload`.
fn encode_entry(payload: &[u8]) -> Vec<u8> {
    let mut entry = Vec::with_capacity(HEADER_LEN + payload.len());
    entry.extend_from_slice(MAGIC);
    entry.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    entry.extend_from_slice(&Sha256::digest(payload));
    entry.extend_from_slice(payload);
    entry
}

/// The payload of `entry`, if its header vouches for it.
fn decode_entry(entry: &[u8]) -> Result<&[u8], Defect> {
    let found = entry.len() as u64;
    let tag = &entry[..entry.len().min(MAGIC.len())];
    if !MAGIC.starts_with(tag) {
        return Err(Defect::UnknownFormat);
    }
    if entry.len() < HEADER_LEN {
        return Err(Defect::Truncated {
            expected: HEADER_LEN as u64,
            found,
        });
    }
    let (header, payload) = entry.split_at(HEADER_LEN);
    let mut length = [0u8; 8];
    length.copy_from_slice(&header[MAGIC.len()..MAGIC.len() + 8]);
    let expected = (HEADER_LEN as u64).saturating_add(u64::from_le_bytes(length));
    if found < expected {
        return Err(Defect::Truncated { expected, found });
    }
    if found > expected {
        return Err(Defect::TrailingBytes { expected, found });
    }
    if Sha256::digest(payload).as_slice() != &header[MAGIC.len() + 8..] {
        return Err(Defect::ChecksumMismatch);
    }
    Ok(payload)
}

impl ArtifactCache {
    /// Open (creating it if needed) the cache under `root` for `engine`.
    pub fn open(root: &Path, engine: &Engine) -> anyhow::Result<ArtifactCache> {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        // Entries of another layout live elsewhere and are never read.
        MAGIC.hash(&mut hasher);
        let key = hex::encode(hasher.0.finalize());
        let dir = root.join(&key[..16]);
        std::fs::create_dir_all(&dir).map_err(|error| {
            anyhow!(
                "cannot create the compiled-artifact cache directory {}: {error}. {}",
                dir.display(),
                advice(error.kind(), &dir)
            )
        })?;
        Ok(ArtifactCache {
            dir,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            reported_write_failure: Mutex::new(None),
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

    /// The file of the entry for `content_hash` (which may not exist).
    pub fn entry_path(&self, content_hash: &str) -> PathBuf {
        self.dir.join(format!("{content_hash}.cwasm"))
    }

    /// Whether a compiled entry exists for `content_hash`.
    pub fn contains(&self, content_hash: &str) -> bool {
        self.entry_path(content_hash).is_file()
    }

    /// The cached compilation of `content_hash`, if present and sound.
    /// A truncated, altered or incompatible entry is removed, logged and
    /// counted as rejected and as a miss.
    pub fn get(&self, engine: &Engine, content_hash: &str) -> Option<Component> {
        let path = self.entry_path(content_hash);
        let entry = match std::fs::read(&path) {
            Ok(entry) => entry,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(
                        "cannot read the compiled-artifact cache entry {}: {error}; compiling the plugin afresh. Check the permissions of {}",
                        path.display(),
                        self.dir.display()
                    );
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let payload = match decode_entry(&entry) {
            Ok(payload) => payload,
            Err(defect) => {
                self.reject(&path, &defect.to_string());
                return None;
            }
        };
        // SAFETY: the payload is, byte for byte (its SHA-256 is checked
        // above), what `put` of this cache wrote from `Component::serialize`
        // of an engine with the same compatibility hash (part of the
        // directory name).
        match unsafe { Component::deserialize(engine, payload) } {
            Ok(component) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(component)
            }
            Err(error) => {
                self.reject(&path, &format!("the engine refused it: {error:#}"));
                None
            }
        }
    }

    fn reject(&self, path: &Path, cause: &str) {
        let removed = match std::fs::remove_file(path) {
            Ok(()) => "removed it".to_string(),
            Err(error) => format!("could not remove it ({error})"),
        };
        tracing::warn!(
            "compiled-artifact cache entry {} is unusable ({cause}); {removed} and compiling the plugin afresh. If this recurs, check the disk under {}",
            path.display(),
            self.dir.display()
        );
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Store the compilation of `content_hash`. Failures are logged, not
    /// returned: the cache only ever saves time. Each cause of failure is
    /// logged once at warn level (again only after a write succeeded),
    /// repeats at debug level; nothing partial is left behind.
    pub fn put(&self, content_hash: &str, component: &Component) {
        let payload = match component.serialize() {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(
                    "could not serialize a compiled component for the cache in {}: {error:#}; it is compiled afresh at the next start",
                    self.dir.display()
                );
                return;
            }
        };
        let path = self.entry_path(content_hash);
        match self.write_entry(content_hash, &path, &encode_entry(&payload)) {
            Ok(()) => {
                *self
                    .reported_write_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(error) => {
                let kind = error.kind();
                let first = {
                    let mut reported = self
                        .reported_write_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    reported.replace(kind) != Some(kind)
                };
                if first {
                    tracing::warn!(
                        "cannot write the compiled-artifact cache entry {}: {error}; serving on, but a plugin missing from the cache is compiled afresh at every start. {} (repeats of this failure are logged at debug level)",
                        path.display(),
                        advice(kind, &self.dir)
                    );
                } else {
                    tracing::debug!(
                        "cannot write the compiled-artifact cache entry {}: {error}",
                        path.display()
                    );
                }
            }
        }
    }

    /// Write `entry` to `path` through a temporary file of the same
    /// directory, removed again when any step fails.
    fn write_entry(&self, content_hash: &str, path: &Path, entry: &[u8]) -> std::io::Result<()> {
        let temporary = self.dir.join(format!(
            ".{content_hash}.{}.{:?}.tmp",
            std::process::id(),
            std::thread::current().id()
        ));
        let result = std::fs::File::create(&temporary)
            .and_then(|mut file| {
                file.write_all(entry)?;
                // On disk before it has its name: a crash leaves no short entry.
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temporary, path));
        if result.is_err() {
            // A partial file would hold on to the space that ran out.
            let _ = std::fs::remove_file(&temporary);
        }
        result
    }

    /// Loads served from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Loads that had to compile so far (rejected entries included).
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Entries found unusable (truncated, altered, incompatible) and removed.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// What to do about a cache directory that failed with `kind`.
fn advice(kind: std::io::ErrorKind, dir: &Path) -> String {
    use std::io::ErrorKind;
    let elsewhere = "point cache.dir (--cache-dir) at another directory, or turn the cache off (cache.enabled = false, --no-cache)";
    match kind {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => format!(
            "Free space on the file system of {}, or {elsewhere}",
            dir.display()
        ),
        ErrorKind::ReadOnlyFilesystem => format!(
            "The file system of {} is mounted read-only: {elsewhere}",
            dir.display()
        ),
        ErrorKind::PermissionDenied => format!(
            "Make {} writable by this user, or {elsewhere}",
            dir.display()
        ),
        _ => format!("Check {}, or {elsewhere}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_with_entry() -> (tempfile::TempDir, Engine, ArtifactCache, PathBuf) {
        let engine = Engine::default();
        let root = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(root.path(), &engine).unwrap();
        let component = Component::new(&engine, "(component)").unwrap();
        cache.put("abc", &component);
        let path = cache.entry_path("abc");
        (root, engine, cache, path)
    }

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
        assert_eq!((cache.hits(), cache.misses(), cache.rejected()), (1, 1, 0));

        std::fs::write(cache.entry_path("abc"), b"garbage").unwrap();
        assert!(cache.get(&engine, "abc").is_none());
        assert!(!cache.contains("abc"), "a corrupt entry is removed");
        assert_eq!((cache.hits(), cache.misses(), cache.rejected()), (1, 2, 1));
    }

    #[test]
    fn a_flipped_bit_anywhere_in_an_entry_is_caught() {
        let (_root, engine, cache, path) = cache_with_entry();
        let good = std::fs::read(&path).unwrap();
        // Every bit of the header, and bits spread over the payload.
        let step = (good.len() / 509).max(1);
        let positions: Vec<usize> = (0..HEADER_LEN)
            .chain((HEADER_LEN..good.len()).step_by(step))
            .chain([good.len() - 1])
            .collect();
        for &byte in &positions {
            for bit in 0..8 {
                let mut flipped = good.clone();
                flipped[byte] ^= 1 << bit;
                assert!(
                    decode_entry(&flipped).is_err(),
                    "bit {bit} of byte {byte} of {} flipped went unnoticed",
                    good.len()
                );
            }
        }
        let mut flipped = good.clone();
        flipped[HEADER_LEN + (good.len() - HEADER_LEN) / 2] ^= 0x10;
        assert_eq!(decode_entry(&flipped), Err(Defect::ChecksumMismatch));
        std::fs::write(&path, &flipped).unwrap();
        assert!(cache.get(&engine, "abc").is_none());
        assert!(!path.exists(), "the altered entry is removed");
        assert_eq!((cache.hits(), cache.misses(), cache.rejected()), (0, 1, 1));
    }

    #[test]
    fn a_truncated_entry_is_caught_at_any_length() {
        let (_root, engine, cache, path) = cache_with_entry();
        let good = std::fs::read(&path).unwrap();
        let expected = good.len() as u64;
        for length in [
            0,
            1,
            MAGIC.len(),
            HEADER_LEN - 1,
            HEADER_LEN,
            good.len() - 1,
        ] {
            let defect = decode_entry(&good[..length]).unwrap_err();
            let header = HEADER_LEN as u64;
            let found = length as u64;
            let wanted = if length < HEADER_LEN {
                header
            } else {
                expected
            };
            assert_eq!(
                defect,
                Defect::Truncated {
                    expected: wanted,
                    found
                },
                "cut at {length}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(
            decode_entry(&longer),
            Err(Defect::TrailingBytes {
                expected,
                found: expected + 1
            })
        );
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert!(cache.get(&engine, "abc").is_none());
        assert!(!path.exists());
        assert_eq!((cache.hits(), cache.misses(), cache.rejected()), (0, 1, 1));
        assert_eq!(
            decode_entry(b"\0asm\x01\0\0\0 other bytes that are long enough"),
            Err(Defect::UnknownFormat)
        );
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
