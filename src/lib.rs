//! stackvault: a backup sidecar for Docker Compose stacks. The data flows discover (`docker`) → read
//! sources (`source`) → chunk and pack (`archiver`, `repo`) → encrypt (`repo::crypt`) → store
//! (`storage`) → verify / restore; the stack's definition and its restore plan live in `stack`. Each user command is one module with one entry point.

pub mod agent;
pub mod archiver;
pub mod backup;
pub mod cache;
pub mod check;
pub mod config;
pub mod demo;
pub mod drill;
pub mod progress;
pub mod prune;
pub mod docker;
pub mod repo;
pub mod restore;
pub mod runner;
pub mod source;
pub mod stack;
pub mod stats;
pub mod storage;
pub mod verify;

use std::sync::Arc;

use config::{Config, ConfigError, Target};
use docker::DockerError;
use repo::{RepoError, Repository};
use storage::azure::AzureStorage;
use storage::filesystem::FilesystemStorage;
use storage::{Storage, StorageError};

/// The commands' error: whatever layer failed, with that layer's message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("{source_name}: {message}")]
    Source { source_name: String, message: String },
    /// The target failed while a source was stored: kept typed, so that the runner can stage the
    /// night's snapshot instead of losing it.
    #[error("{during}: {source}")]
    Target { during: String, source: StorageError },
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn source(source_name: impl std::fmt::Display, error: impl std::fmt::Display) -> Self {
        Error::Source { source_name: source_name.to_string(), message: error.to_string() }
    }

    /// An archiving failure of a source: the target's own failures stay typed.
    pub fn archive(source_name: impl std::fmt::Display, error: archiver::ArchiveError) -> Self {
        match error {
            archiver::ArchiveError::Repo(RepoError::Storage(source)) => Error::Target { during: source_name.to_string(), source },
            other => Error::source(source_name, other),
        }
    }

    /// The target's failure behind this error, if it is one: the target could not be reached,
    /// written or authenticated to, which trying again later (or a staged snapshot) can overcome.
    pub fn target_failure(&self) -> Option<&StorageError> {
        let storage = match self {
            Error::Storage(e) | Error::Repo(RepoError::Storage(e)) | Error::Target { source: e, .. } => e,
            _ => return None,
        };
        (!matches!(storage, StorageError::Unsupported { .. })).then_some(storage)
    }
}

/// Opens the configured target (a directory, or an Azure container); sends nothing yet.
pub fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, Error> {
    Ok(match config.target()? {
        Target::Filesystem(path) => Arc::new(FilesystemStorage::open(path).map_err(|e| match e {
            StorageError::NotFound { location } => RepoError::NotARepository(location),
            other => RepoError::Storage(other),
        })?),
        // Objects larger than a few MiB wait in the cache directory while they upload.
        Target::Azure(azure) => Arc::new(AzureStorage::open(azure, &config.cache_dir().join("spool"))?),
    })
}

/// Opens the configured target and the repository in it.
pub fn open_repository(config: &Config) -> Result<Repository, Error> {
    let mut repo = Repository::open(open_storage(config)?)?;
    repo.index_cache = Some(config.cache_dir().join(&repo.config.id).join("index"));
    Ok(repo)
}

/// Opens a staging area (`runner::staging`) as the repository it stands in for; it shares that
/// repository's local index.
pub fn open_staging_repository(config: &Config, dir: &std::path::Path) -> Result<Repository, Error> {
    let mut repo = Repository::open(Arc::new(FilesystemStorage::open(dir)?))?;
    repo.index_cache = Some(config.cache_dir().join(&repo.config.id).join("index"));
    repo.staging = true;
    Ok(repo)
}

/// Creates a repository in the configured target (a directory is created; a container must exist,
/// unless WORM is not required, when it is created); returns it with what the target had to say.
pub fn init_repository(config: &Config) -> Result<(Repository, Vec<String>), Error> {
    if let Target::Filesystem(path) = config.target()? {
        std::fs::create_dir_all(path).map_err(|e| StorageError::from_io(path.display(), e))?;
    }
    let storage = open_storage(config)?;
    let notes = storage.check_writable(true)?;
    Ok((Repository::init(storage, &config.encryption.recipients)?, notes))
}

pub fn program() -> String {
    format!("stackvault {}", env!("CARGO_PKG_VERSION"))
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None when no such
/// process exists. With the pid it names one process for good: a reused pid has another start time.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Bytes from the kernel's random source, for repository and key-check ids.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom is readable");
    bytes
}
