//! The repository: content-addressed blobs (file chunks and directory trees) in packs, one index object
//! per pack, one manifest per snapshot, and a config object. docs/FORMAT.md is the specification.

pub mod crypt;
pub mod format;
pub mod index;
pub mod marks;
pub mod pack;
pub mod packindex;
pub mod tree;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::storage::{Key, ObjectInfo, ObjectKind, Storage, StorageError};
pub use format::{Node, RepoConfig, Snapshot, SourceRecord, Tree};
pub use index::Index;

/// The repository format version this build creates (docs/FORMAT.md); it reads every version from 1
/// up to it, and writes into a repository in that repository's version (`migrate` moves it up).
pub const FORMAT_VERSION: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("no stackvault repository at {0} (no config object): run `stackvault init` to create one, or check that the share is mounted")]
    NotARepository(String),
    #[error("{0}: already holds a stackvault repository")]
    AlreadyExists(String),
    #[error("repository format version {found} is not supported by this build (it reads versions 1 to {FORMAT_VERSION}); use a newer stackvault")]
    UnsupportedVersion { found: u32 },
    #[error("{what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("{0} is missing from the repository")]
    Missing(String),
    #[error("the repository is encrypted: pass --identity FILE with an age identity of one of its recipients")]
    IdentityRequired,
    #[error("the identity does not match any recipient of this repository (recipients: {recipients})")]
    WrongIdentity { recipients: String },
    #[error("encryption settings differ: {0}")]
    RecipientsMismatch(String),
    #[error("{0}")]
    Crypto(String),
    #[error("the local index in {dir}: {detail}; remove that directory to have it rebuilt from the repository")]
    LocalIndex { dir: String, detail: String },
    #[error("the {0} stopped before the backup finished")]
    Stopped(&'static str),
    #[error("pack {pack} is marked for deletion by prune (marker {marker}, deletable from {at}) and this run references it: run `stackvault prune` to carry the marker out, then the backup again (it stores that data anew)")]
    MarkedForDeletion { pack: String, marker: String, at: String },
    #[error("snapshot {snapshot}: {detail}; the snapshot is damaged or was crafted: restore another one, and run `stackvault verify`")]
    Invalid { snapshot: String, detail: String },
}

impl RepoError {
    pub fn corrupt(what: impl fmt::Display, detail: impl fmt::Display) -> Self {
        RepoError::Corrupt { what: what.to_string(), detail: detail.to_string() }
    }

    /// A snapshot breaking a rule of docs/FORMAT.md; named by the short id `snapshots` shows.
    pub fn invalid(snapshot: &Id, detail: impl fmt::Display) -> Self {
        RepoError::Invalid { snapshot: snapshot.hex()[..12].to_string(), detail: detail.to_string() }
    }
}

/// The largest config object, snapshot manifest and index object a reader loads (docs/FORMAT.md,
/// "Limits"); an object is read whole, so anything larger is refused before it is read.
pub const MAX_CONFIG_OBJECT: u64 = 1 << 20;
pub const MAX_SNAPSHOT_OBJECT: u64 = 64 << 20;
pub const MAX_INDEX_OBJECT: u64 = 32 << 20;
/// The largest decompressed table of a version 2 index object (about 280,000 entries).
pub const MAX_INDEX_TABLE: u64 = 16 << 20;

/// A JSON object named by the hash of its bytes (a manifest, a prune record), read whole.
fn read_content_named<T: serde::de::DeserializeOwned>(storage: &dyn Storage, key: &Key) -> Result<(Id, T), RepoError> {
    let id: Id = key.name.parse().map_err(|e| RepoError::corrupt(key.path(), e))?;
    let bytes = read_bounded(storage, key, MAX_SNAPSHOT_OBJECT)?;
    if Id::of(&bytes) != id {
        return Err(RepoError::corrupt(key.path(), "its content does not match its name"));
    }
    let object = serde_json::from_slice(&bytes).map_err(|e| RepoError::corrupt(key.path(), e))?;
    Ok((id, object))
}

/// Reads a whole object of at most `limit` bytes: an object's size is whatever whoever wrote it chose.
fn read_bounded(storage: &dyn Storage, key: &Key, limit: u64) -> Result<Vec<u8>, RepoError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    storage.open(key)?.take(limit + 1).read_to_end(&mut bytes).map_err(|e| StorageError::from_io(key.path(), e))?;
    if bytes.len() as u64 > limit {
        return Err(RepoError::corrupt(key.path(), format!("it is larger than {} MiB, the limit for its kind (docs/FORMAT.md, \"Limits\")", limit >> 20)));
    }
    Ok(bytes)
}

/// A BLAKE3 content id: of a blob's plaintext, or of a stored object's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl Id {
    pub fn of(bytes: &[u8]) -> Self {
        Id(*blake3::hash(bytes).as_bytes())
    }
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", &self.hex()[..12])
    }
}

impl FromStr for Id {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; 32];
        let valid = format::is_lower_hex(s) && hex::decode_to_slice(s, &mut id).is_ok();
        if !valid {
            return Err(format!("{s:?} is not a 64-digit lower-case hex id"));
        }
        Ok(Id(id))
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What a blob holds; the tar entry name of a blob in a pack is `<kind>/<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    Data,
    Tree,
}

impl BlobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BlobKind::Data => "data",
            BlobKind::Tree => "tree",
        }
    }
}

/// A repository's snapshots, oldest first, and apart the objects under `snapshots/` that are none.
pub struct Snapshots {
    /// Without their `packs` lists, which can hold hundreds of thousands of ids each: read one whole
    /// with [`Repository::snapshot`].
    pub valid: Vec<(Id, Snapshot)>,
    pub unreadable: Vec<RepoError>,
}

pub struct Repository {
    pub storage: Arc<dyn Storage>,
    pub config: RepoConfig,
    /// Where this host keeps the repository's index (a directory of its own); none: a temporary one.
    pub index_cache: Option<std::path::PathBuf>,
    /// A staging area standing in for the repository (`runner::staging`): its snapshots reference
    /// packs only the target holds, and are checked against it when they are uploaded.
    pub staging: bool,
}

impl Repository {
    pub fn init(storage: Arc<dyn Storage>, recipients: &[crypt::Recipient]) -> Result<Self, RepoError> {
        if storage.stat(&Key::config())?.is_some() {
            return Err(RepoError::AlreadyExists(storage.location()));
        }
        let config = RepoConfig::new(recipients)?;
        storage.put(&Key::config(), &serde_json::to_vec_pretty(&config).expect("config serializes"))?;
        Ok(Repository { storage, config, index_cache: None, staging: false })
    }

    pub fn open(storage: Arc<dyn Storage>) -> Result<Self, RepoError> {
        let bytes = match read_bounded(storage.as_ref(), &Key::config(), MAX_CONFIG_OBJECT) {
            Ok(bytes) => bytes,
            Err(RepoError::Storage(StorageError::NotFound { .. })) => return Err(RepoError::NotARepository(storage.location())),
            Err(e) => return Err(e),
        };
        let config: RepoConfig = serde_json::from_slice(&bytes).map_err(|e| RepoError::corrupt("the config object", e))?;
        if !(1..=FORMAT_VERSION).contains(&config.version) {
            return Err(RepoError::UnsupportedVersion { found: config.version });
        }
        config.check().map_err(|e| RepoError::corrupt("the config object", e))?;
        Ok(Repository { storage, config, index_cache: None, staging: false })
    }

    /// Moves the repository to the newest format version, returning the version it had, or `None`
    /// when it is current. Only the config changes: objects already stored stay as they are and are
    /// read as before; later backups write the new version's objects.
    pub fn migrate(&mut self) -> Result<Option<u32>, RepoError> {
        let from = self.config.version;
        if from == FORMAT_VERSION {
            return Ok(None);
        }
        let config = RepoConfig { version: FORMAT_VERSION, ..self.config.clone() };
        self.storage.replace_config(&serde_json::to_vec_pretty(&config).expect("config serializes"))?;
        self.config = config;
        Ok(Some(from))
    }

    pub fn load_index(&self) -> Result<Index, RepoError> {
        Index::load(self.storage.as_ref(), self.index_cache.as_deref())
    }

    /// Every snapshot, oldest first, without its `packs` (see [`Snapshots`]), and apart the objects
    /// under `snapshots/` that are not one (a name that is not an id, bytes that do not hash to it,
    /// JSON that does not parse), each with why: an object anyone could add must not make the others
    /// unreadable.
    pub fn snapshots(&self) -> Result<Snapshots, RepoError> {
        let (mut all, mut unreadable) = (Vec::new(), Vec::new());
        for info in self.storage.list(ObjectKind::Snapshot)? {
            match self.load_snapshot(&info.key) {
                Ok((id, snapshot)) => all.push((id, Snapshot { packs: Vec::new(), ..snapshot })),
                Err(e) => unreadable.push(e),
            }
        }
        all.sort_by(|a, b| (a.1.time.as_str(), a.0).cmp(&(b.1.time.as_str(), b.0)));
        Ok(Snapshots { valid: all, unreadable })
    }

    fn load_snapshot(&self, key: &Key) -> Result<(Id, Snapshot), RepoError> {
        read_content_named(self.storage.as_ref(), key)
    }

    /// One whole snapshot manifest.
    pub fn snapshot(&self, id: &Id) -> Result<Snapshot, RepoError> {
        self.load_snapshot(&Key::new(ObjectKind::Snapshot, id.hex())).map(|(_, snapshot)| snapshot)
    }

    /// Finds a snapshot by `latest` or by a unique prefix of its id; the whole manifest.
    pub fn find_snapshot(&self, wanted: &str) -> Result<(Id, Snapshot), RepoError> {
        let mut all = self.snapshots()?.valid;
        if wanted == "latest" {
            let (id, _) = all.pop().ok_or_else(|| RepoError::Missing("a snapshot (the repository has none yet)".into()))?;
            return Ok((id, self.snapshot(&id)?));
        }
        let mut matching: Vec<_> = all.into_iter().filter(|(id, _)| id.hex().starts_with(wanted)).collect();
        match matching.len() {
            1 => {
                let (id, _) = matching.pop().unwrap();
                Ok((id, self.snapshot(&id)?))
            }
            // Why a snapshot asked for by its id cannot be read says more than its absence.
            0 => match self.storage.list(ObjectKind::Snapshot)?.into_iter().find(|o| o.key.name.starts_with(wanted)) {
                Some(object) => Err(self.load_snapshot(&object.key).err().unwrap_or_else(|| RepoError::Missing(format!("snapshot {wanted}")))),
                None => Err(RepoError::Missing(format!("snapshot {wanted}"))),
            },
            n => Err(RepoError::Missing(format!("a unique snapshot for {wanted:?} ({n} match; give more digits)"))),
        }
    }

    /// Stores a snapshot manifest. Called last, after everything it references is stored; on a target
    /// that locks objects, only once every pack and index object it references is locked at least as
    /// long as the manifest will be (older ones, deduplicated into it, are extended).
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<Id, RepoError> {
        self.store_manifest(&serde_json::to_vec_pretty(snapshot).expect("snapshot serializes"), &snapshot.packs)
    }

    /// Stores a manifest's bytes as they are (a staged snapshot keeps its id), `packs` being the packs
    /// it lists: each must be stored, not due for deletion by a prune, and is locked first where the
    /// target locks objects. The prune records are read before the packs are listed: a pack a prune
    /// deleted is missing, and one it may delete soon is still marked.
    pub fn store_manifest(&self, bytes: &[u8], packs: &[Id]) -> Result<Id, RepoError> {
        if !self.staging {
            marks::PruneMarks::read(self.storage.as_ref())?.check_commit(packs, std::time::SystemTime::now())?;
            let referenced = self.referenced_objects(packs)?;
            if let Some(until) = self.storage.lock_until()? {
                self.storage.protect(&referenced, until)?;
            }
        }
        let id = Id::of(bytes);
        self.storage.put(&Key::new(ObjectKind::Snapshot, id.hex()), bytes)?;
        Ok(id)
    }

    /// Each listed pack and its index object, as stored; an absent one is an error.
    fn referenced_objects(&self, packs: &[Id]) -> Result<Vec<ObjectInfo>, RepoError> {
        let wanted: std::collections::HashSet<String> = packs.iter().map(Id::hex).collect();
        let mut objects = Vec::with_capacity(2 * packs.len());
        for kind in [ObjectKind::Pack, ObjectKind::Index] {
            let listed: Vec<_> = self.storage.list(kind)?.into_iter().filter(|o| wanted.contains(&o.key.name)).collect();
            if listed.len() < wanted.len() {
                let have: std::collections::HashSet<&str> = listed.iter().map(|o| o.key.name.as_str()).collect();
                let absent = wanted.iter().find(|name| !have.contains(name.as_str())).expect("fewer listed than wanted");
                return Err(RepoError::Missing(format!("{} (referenced by the new snapshot)", Key::new(kind, absent.as_str()).path())));
            }
            objects.extend(listed);
        }
        Ok(objects)
    }
}
