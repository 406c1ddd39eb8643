//! The storage boundary: a flat namespace of immutable objects. Every target (a mounted directory here,
//! Azure block blobs later) is one module behind [`Storage`]. The contract is WORM-shaped: an object
//! appears whole under its final name or not at all, is never overwritten, and can carry a retention
//! lock and a legal hold. The boundary is synchronous: the data path runs on blocking threads, and
//! network targets drive their async clients from inside.

pub mod azure;
pub mod filesystem;

use std::io::{Read, Seek, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Bytes this process has sent to its target (written to the share, uploaded to the cloud), for
/// progress and rates; each target adds what it sends.
static BYTES_SENT: AtomicU64 = AtomicU64::new(0);

pub fn bytes_sent() -> u64 {
    BYTES_SENT.load(Ordering::Relaxed)
}

fn count_sent(bytes: u64) {
    BYTES_SENT.fetch_add(bytes, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{location}: no such object or directory")]
    NotFound { location: String },
    #[error("{location}: no space left on the target; free space or grow the share, then run again (nothing stored so far is lost)")]
    Full { location: String },
    #[error("{location}: the target is read-only; mount the share read-write")]
    ReadOnly { location: String },
    #[error("{location}: permission denied; the sidecar's user must be able to write there")]
    PermissionDenied { location: String },
    #[error("{location}: {source}")]
    Io { location: String, source: std::io::Error },
    #[error("{location}: {what} is not supported by this target")]
    Unsupported { location: String, what: &'static str },
    /// Authentication or authorization failed; the message names the credential and what to fix,
    /// never the secret.
    #[error("{location}: {message}")]
    Denied { location: String, message: String },
    /// The target could not be reached, or kept failing after retries; trying later may work.
    #[error("{location}: {message}")]
    Unavailable { location: String, message: String },
    /// The target answered, but not as it should: not fit for this repository as configured (a
    /// container without WORM support), or an error no retry can fix.
    #[error("{location}: {message}")]
    Refused { location: String, message: String },
    /// The target refuses to delete the object: its retention lock has not expired, or it is held.
    #[error("{location}: locked ({why}); it can be deleted once the lock expires and no legal hold is set")]
    Locked { location: String, why: String },
}

impl StorageError {
    pub fn from_io(location: impl std::fmt::Display, source: std::io::Error) -> Self {
        let location = location.to_string();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::Full { location },
            Some(libc::EROFS) => StorageError::ReadOnly { location },
            Some(libc::EACCES) | Some(libc::EPERM) => StorageError::PermissionDenied { location },
            Some(libc::ENOENT) => StorageError::NotFound { location },
            _ => StorageError::Io { location, source },
        }
    }
}

/// What an object is; each kind lives under its own prefix (docs/FORMAT.md, "Layout").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Config,
    Pack,
    Index,
    Snapshot,
    /// Prune's records: a marker naming packs it will delete, and the note that one was carried out.
    Prune,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub kind: ObjectKind,
    /// Lower-case hex content id; empty for the single config object.
    pub name: String,
}

impl Key {
    pub fn config() -> Self {
        Key { kind: ObjectKind::Config, name: String::new() }
    }

    pub fn new(kind: ObjectKind, name: impl Into<String>) -> Self {
        Key { kind, name: name.into() }
    }

    /// The object's path in the repository, the same on every target.
    pub fn path(&self) -> String {
        match self.kind {
            ObjectKind::Config => "config".into(),
            ObjectKind::Pack => format!("packs/{}/{}", &self.name[..2.min(self.name.len())], self.name),
            ObjectKind::Index => format!("index/{}", self.name),
            ObjectKind::Snapshot => format!("snapshots/{}", self.name),
            ObjectKind::Prune => format!("prune/{}", self.name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: Key,
    pub size: u64,
    /// Until when the target refuses to delete or change the object, where it can say.
    pub retain_until: Option<SystemTime>,
    pub legal_hold: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Created,
    /// An object of that name was already there and was left untouched; names derive from content,
    /// so it holds the same bytes.
    AlreadyPresent,
}

/// An object being written. Its bytes are invisible under any final name until `commit`; dropping it
/// without commit discards them.
pub trait ObjectWriter: Write + Send {
    fn commit(self: Box<Self>, key: &Key) -> Result<Commit, StorageError>;
}

pub trait ObjectReader: Read + Seek + Send {}
impl<T: Read + Seek + Send> ObjectReader for T {}

pub trait Storage: Send + Sync {
    /// Where this is, for messages: a path or a URL.
    fn location(&self) -> String;
    fn create(&self) -> Result<Box<dyn ObjectWriter>, StorageError>;
    fn open(&self, key: &Key) -> Result<Box<dyn ObjectReader>, StorageError>;
    fn stat(&self, key: &Key) -> Result<Option<ObjectInfo>, StorageError>;
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError>;
    /// Extends (never shortens) the retention lock of an object.
    fn retain(&self, key: &Key, until: SystemTime) -> Result<(), StorageError>;
    fn set_legal_hold(&self, key: &Key, hold: bool) -> Result<(), StorageError>;
    /// Removes an object, refused ([`StorageError::Locked`]) while it is locked or held; one that is
    /// already gone is no error. Only prune deletes, and only what no snapshot references.
    fn delete(&self, key: &Key) -> Result<(), StorageError>;

    /// Checks, before anything is written, that the target takes objects as configured (a cloud
    /// container exists, is WORM-capable where that is required, the credential may write); with
    /// `init`, it may create what is missing. Returns what the user should know (e.g. objects will not
    /// be locked).
    fn check_writable(&self, _init: bool) -> Result<Vec<String>, StorageError> {
        Ok(Vec::new())
    }

    /// The retention date every object this instance commits gets (one per run, fixed when first
    /// needed, so a manifest is never locked longer than what it references); `None` where the
    /// target locks nothing.
    fn lock_until(&self) -> Result<Option<SystemTime>, StorageError> {
        Ok(None)
    }

    /// Whether new objects get a legal hold.
    fn holds_legally(&self) -> bool {
        false
    }

    /// Makes each listed object locked until at least `until` (extended further ahead where the
    /// target's policy says so) and, where legal holds are configured, held; returns how many objects
    /// were changed. Objects already covered are left alone.
    fn protect(&self, objects: &[ObjectInfo], until: SystemTime) -> Result<usize, StorageError> {
        let mut changed = 0;
        for object in objects {
            let mut touched = false;
            if object.retain_until.is_none_or(|t| t < until) {
                self.retain(&object.key, until)?;
                touched = true;
            }
            if self.holds_legally() && !object.legal_hold {
                self.set_legal_hold(&object.key, true)?;
                touched = true;
            }
            changed += touched as usize;
        }
        Ok(changed)
    }
    /// Replaces the one object that is not named by its content, the config, as a whole (readers see
    /// the old bytes or the new ones): `migrate` alone does this, once per format version.
    fn replace_config(&self, bytes: &[u8]) -> Result<(), StorageError>;

    fn put(&self, key: &Key, bytes: &[u8]) -> Result<Commit, StorageError> {
        let mut writer = self.create()?;
        writer.write_all(bytes).map_err(|e| StorageError::from_io(self.location(), e))?;
        writer.commit(key)
    }

    fn get(&self, key: &Key) -> Result<Vec<u8>, StorageError> {
        let mut bytes = Vec::new();
        self.open(key)?.read_to_end(&mut bytes).map_err(|e| StorageError::from_io(key.path(), e))?;
        Ok(bytes)
    }
}
