//! Pending snapshots: when the target cannot be written (a share unmounted, full or read-only; a cloud
//! account unreachable or refusing the credential), the night's backup is still taken, into a staging
//! area below `state_dir/staging`, and uploaded once the target answers again, manifest last.
//!
//! Each pending snapshot is one directory laid out as a directory repository (docs/FORMAT.md, section
//! 3), holding a copy of the target's config, the packs and index objects the snapshot needs that the
//! target did not hold when it was taken, its manifest, and `pending.json`. Its blobs are encrypted
//! exactly as they would have been on the target, so staging holds no plaintext an upload would not.
//! A pending snapshot depends on no other: any one can be dropped (when staging is full, oldest first)
//! or given up (past the target's retry window) without breaking the rest.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::repo::{Id, Repository};
use crate::storage::{Commit, Key, ObjectKind, Storage, StorageError};
use crate::Error;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRecord {
    /// The snapshot's id (its manifest's hash, the same once uploaded).
    pub snapshot: String,
    pub stack: String,
    /// The snapshot's own time (RFC 3339).
    pub time: String,
    /// When it was staged, Unix seconds: the retry window counts from here.
    pub staged_at: i64,
    /// The target it is for, as `location()` names it.
    pub target: String,
    /// Why the target could not take it.
    pub reason: String,
    pub bytes: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Set once the retry window has passed: no longer uploaded by itself (`stackvault push <ID>`).
    pub lost: Option<String>,
}

pub struct Pending {
    pub dir: PathBuf,
    pub record: PendingRecord,
}

impl Pending {
    pub fn id(&self) -> &str {
        &self.record.snapshot
    }

    pub fn save(&self) -> io::Result<()> {
        write_atomically(&self.dir.join("pending.json"), &serde_json::to_vec_pretty(&self.record).expect("a record serializes"))
    }
}

pub struct Staging {
    root: PathBuf,
    targets: PathBuf,
}

/// A staging repository being written by a run; removed unless `finish`ed.
pub struct StagedRun {
    pub dir: PathBuf,
    finished: bool,
}

impl Drop for StagedRun {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Staging {
    pub fn new(state_dir: &Path) -> Staging {
        Staging { root: state_dir.join("staging"), targets: state_dir.join("targets") }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn config_copy(&self, location: &str) -> PathBuf {
        self.targets.join(&blake3::hash(location.as_bytes()).to_hex()[..16]).join("config")
    }

    /// Keeps a copy of the target's config: a run that cannot reach the target stages its snapshot
    /// for that repository (same id, same recipients, same format version) from it.
    pub fn remember_target(&self, repo: &Repository) -> io::Result<()> {
        let path = self.config_copy(&repo.storage.location());
        let bytes = repo.storage.get(&Key::config()).map_err(io::Error::other)?;
        if fs::read(&path).ok().as_deref() == Some(&bytes[..]) {
            return Ok(());
        }
        fs::create_dir_all(path.parent().expect("a config copy has a folder"))?;
        write_atomically(&path, &bytes)
    }

    /// Whether this target's repository was seen before (so that its absence is an outage, not a
    /// repository that was never created).
    pub fn knows_target(&self, location: &str) -> bool {
        self.config_copy(location).exists()
    }

    /// A fresh staging repository for a run of the target at `location`; leftovers of killed runs go
    /// first (the caller holds the run lock).
    pub fn begin(&self, location: &str, run_id: &str) -> Result<StagedRun, String> {
        let config = fs::read(self.config_copy(location))
            .map_err(|e| format!("no copy of the target's config in {} ({e}): a snapshot is staged only for a repository this host has reached before", self.targets.display()))?;
        if let Ok(listing) = fs::read_dir(&self.root) {
            for entry in listing.flatten() {
                if entry.file_name().to_string_lossy().starts_with("run-") {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = self.root.join(format!("run-{run_id}"));
        let staged = StagedRun { dir: dir.clone(), finished: false };
        fs::create_dir_all(&dir).and_then(|()| write_atomically(&dir.join("config"), &config)).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(staged)
    }

    /// Makes a staged run a pending snapshot.
    pub fn finish(&self, mut run: StagedRun, record: PendingRecord) -> io::Result<Pending> {
        let dir = self.root.join(&record.snapshot);
        let pending = Pending { dir: run.dir.clone(), record: PendingRecord { bytes: du(&run.dir), ..record } };
        pending.save()?;
        fs::rename(&run.dir, &dir)?;
        run.finished = true;
        Ok(Pending { dir, ..pending })
    }

    /// Every pending snapshot, oldest first (lost ones included).
    pub fn list(&self) -> Vec<Pending> {
        let mut all: Vec<Pending> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with("run-"))
            .filter_map(|e| {
                let record = serde_json::from_slice(&fs::read(e.path().join("pending.json")).ok()?).ok()?;
                Some(Pending { dir: e.path(), record })
            })
            .collect();
        all.sort_by(|a, b| (a.record.staged_at, &a.record.snapshot).cmp(&(b.record.staged_at, &b.record.snapshot)));
        all
    }

    /// The packs staged for pending snapshots: not on the target, so a new staged run stores its own copy.
    pub fn staged_packs(&self) -> HashSet<Id> {
        let mut packs = HashSet::new();
        for pending in self.list() {
            for entry in fs::read_dir(pending.dir.join("index")).into_iter().flatten().flatten() {
                packs.extend(entry.file_name().to_str().and_then(|name| name.parse::<Id>().ok()));
            }
        }
        packs
    }

    /// Bytes held by pending snapshots.
    pub fn usage(&self) -> u64 {
        self.list().iter().map(|p| p.record.bytes).sum()
    }

    /// Drops the oldest pending snapshots until staging holds at most `max_bytes`; returns them.
    /// `index_cache`, the repository's local index, is removed with them: it lists their packs, which
    /// will now never reach the target, and is rebuilt from the target at the next run that reaches it.
    pub fn enforce_cap(&self, max_bytes: u64, index_cache: Option<&Path>) -> Vec<PendingRecord> {
        let mut all = self.list();
        let mut used: u64 = all.iter().map(|p| p.record.bytes).sum();
        let mut dropped = Vec::new();
        // The newest always stays: it is tonight's, and the reason staging exists.
        while used > max_bytes && all.len() > 1 {
            let oldest = all.remove(0);
            used -= oldest.record.bytes;
            let _ = fs::remove_dir_all(&oldest.dir);
            dropped.push(oldest.record);
        }
        if let (false, Some(cache)) = (dropped.is_empty(), index_cache) {
            let _ = fs::remove_dir_all(cache);
        }
        dropped
    }

    pub fn find(&self, id_prefix: &str) -> Result<Pending, String> {
        let mut matching: Vec<Pending> = self.list().into_iter().filter(|p| p.id().starts_with(id_prefix)).collect();
        match matching.len() {
            1 => Ok(matching.pop().expect("one")),
            0 => Err(format!("no pending snapshot {id_prefix} in {} (stackvault status lists them)", self.root.display())),
            n => Err(format!("{n} pending snapshots match {id_prefix:?}: give more digits")),
        }
    }
}

/// Uploads a pending snapshot to the target repository: each staged pack, then its index object, then
/// (once every pack the manifest lists is on the target, and locked where the target locks) the
/// manifest, exactly as staged. An upload that stops half-way resumes: what arrived is found present.
/// Returns the bytes sent; the staging directory is removed once the manifest is stored.
pub fn push(target: &Repository, pending: &Pending) -> Result<u64, Error> {
    let staged = crate::storage::filesystem::FilesystemStorage::open(&pending.dir)?;
    let staged_config: crate::repo::RepoConfig = serde_json::from_slice(&staged.get(&Key::config())?)
        .map_err(|e| Error::Usage(format!("{}: the staged config is damaged: {e}", pending.dir.display())))?;
    if staged_config.id != target.config.id {
        return Err(Error::Usage(format!(
            "pending snapshot {} was taken for repository {}, but the target holds repository {}: point the configuration at the original target",
            pending.id(),
            staged_config.id,
            target.config.id
        )));
    }
    let mut sent = 0;
    for index in staged.list(ObjectKind::Index)? {
        for key in [Key::new(ObjectKind::Pack, index.key.name.clone()), index.key] {
            sent += copy(&staged, target.storage.as_ref(), &key)?;
        }
    }
    let manifest_key = Key::new(ObjectKind::Snapshot, pending.id());
    let manifest = staged.get(&manifest_key)?;
    let snapshot: crate::repo::Snapshot =
        serde_json::from_slice(&manifest).map_err(|e| Error::Usage(format!("{}: the staged manifest is damaged: {e}", pending.dir.display())))?;
    let on_target: HashSet<String> = target.storage.list(ObjectKind::Pack)?.into_iter().map(|o| o.key.name).collect();
    if let Some(absent) = snapshot.packs.iter().find(|p| !on_target.contains(&p.hex())) {
        return Err(Error::Usage(format!(
            "pending snapshot {} references pack {absent}, which the target no longer holds and staging never had: it cannot be completed; run a new backup",
            pending.id()
        )));
    }
    target.store_manifest(&manifest, &snapshot.packs)?;
    sent += manifest.len() as u64;
    let _ = fs::remove_dir_all(&pending.dir);
    Ok(sent)
}

/// Copies one object, streaming; present already on the target counts as done.
fn copy(from: &dyn Storage, to: &dyn Storage, key: &Key) -> Result<u64, StorageError> {
    // Found whole (names come from content): an earlier upload got this far, nothing is sent again.
    if to.stat(key)?.is_some() {
        return Ok(0);
    }
    let mut reader = from.open(key)?;
    let mut writer = to.create()?;
    let bytes = io::copy(&mut reader, &mut writer).map_err(|e| StorageError::from_io(to.location(), e))?;
    Ok(match writer.commit(key)? {
        Commit::Created => bytes,
        Commit::AlreadyPresent => 0,
    })
}

fn du(dir: &Path) -> u64 {
    let Ok(md) = fs::symlink_metadata(dir) else { return 0 };
    if !md.is_dir() {
        return md.len();
    }
    fs::read_dir(dir).into_iter().flatten().flatten().map(|e| du(&e.path())).sum()
}

/// Write-then-rename, so that a reader sees the old content or the new, whole.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}
