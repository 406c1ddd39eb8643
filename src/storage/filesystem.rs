//! A mounted directory as the target: the on-prem SMB/NFS share. Objects are written under `tmp/`,
//! fsynced, made read-only and then linked to their final name (link fails rather than overwrite), and
//! the directory is fsynced, so a crash leaves either the whole object or nothing under its name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::{Commit, Key, ObjectInfo, ObjectKind, ObjectReader, ObjectWriter, Storage, StorageError};

pub struct FilesystemStorage {
    root: PathBuf,
}

static TMP_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl FilesystemStorage {
    /// The directory must exist; whether it holds a repository is the repository layer's question.
    pub fn open(root: &Path) -> Result<Self, StorageError> {
        let md = fs::metadata(root).map_err(|e| StorageError::from_io(root.display(), e))?;
        if !md.is_dir() {
            return Err(StorageError::Io {
                location: root.display().to_string(),
                source: io::Error::other("not a directory"),
            });
        }
        let storage = FilesystemStorage { root: root.to_path_buf() };
        storage.remove_abandoned_uploads();
        Ok(storage)
    }

    /// Temporary files of a run that was killed. A live writer touches its file every few seconds
    /// (a pack is at most tens of MiB), so one untouched for an hour is abandoned.
    fn remove_abandoned_uploads(&self) {
        let Ok(listing) = fs::read_dir(self.root.join("tmp")) else { return };
        let hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        for entry in listing.flatten() {
            let stale = entry.metadata().and_then(|m| m.modified()).map(|t| t < hour_ago).unwrap_or(false);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.path())
    }

    fn info(&self, key: Key, md: &fs::Metadata) -> ObjectInfo {
        ObjectInfo { key, size: md.len(), retain_until: None, legal_hold: false }
    }
}

struct FsWriter {
    file: File,
    tmp: PathBuf,
    root: PathBuf,
}

impl Write for FsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        super::count_sent(written as u64);
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        // Uncommitted bytes never reach a final name; committed ones are linked already.
        let _ = fs::remove_file(&self.tmp);
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StorageError::from_io(dir.display(), e))
}

impl ObjectWriter for FsWriter {
    fn commit(self: Box<Self>, key: &Key) -> Result<Commit, StorageError> {
        let io_err = |e| StorageError::from_io(self.tmp.display(), e);
        self.file.sync_all().map_err(io_err)?;
        fs::set_permissions(&self.tmp, fs::Permissions::from_mode(0o444)).map_err(io_err)?;
        let target = self.root.join(key.path());
        let dir = target.parent().expect("object paths have a parent");
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| StorageError::from_io(dir.display(), e))?;
            sync_dir(dir.parent().expect("inside the root"))?;
        }
        let outcome = match fs::hard_link(&self.tmp, &target) {
            Ok(()) => Commit::Created,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Commit::AlreadyPresent,
            // Shares without hardlinks: rename, after checking, since rename would replace.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EOPNOTSUPP)) => {
                if target.exists() {
                    Commit::AlreadyPresent
                } else {
                    fs::rename(&self.tmp, &target).map_err(|e| StorageError::from_io(target.display(), e))?;
                    Commit::Created
                }
            }
            Err(e) => return Err(StorageError::from_io(target.display(), e)),
        };
        sync_dir(dir)?;
        Ok(outcome) // Drop removes the temporary name
    }
}

impl Storage for FilesystemStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let tmp_dir = self.root.join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(|e| StorageError::from_io(tmp_dir.display(), e))?;
        let name = format!("{}-{}.tmp", std::process::id(), TMP_SEQUENCE.fetch_add(1, Ordering::Relaxed));
        let tmp = tmp_dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| StorageError::from_io(tmp.display(), e))?;
        Ok(Box::new(FsWriter { file, tmp, root: self.root.clone() }))
    }

    fn replace_config(&self, bytes: &[u8]) -> Result<(), StorageError> {
        let tmp_dir = self.root.join("tmp");
        let tmp = tmp_dir.join(format!("{}-{}.tmp", std::process::id(), TMP_SEQUENCE.fetch_add(1, Ordering::Relaxed)));
        let io_err = |e| StorageError::from_io(tmp.display(), e);
        fs::create_dir_all(&tmp_dir).map_err(io_err)?;
        let written = File::create_new(&tmp).and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444))
        });
        let target = self.path(&Key::config());
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &target)) {
            let _ = fs::remove_file(&tmp);
            return Err(StorageError::from_io(target.display(), e));
        }
        sync_dir(&self.root)
    }

    fn open(&self, key: &Key) -> Result<Box<dyn ObjectReader>, StorageError> {
        let path = self.path(key);
        let file = File::open(&path).map_err(|e| StorageError::from_io(path.display(), e))?;
        Ok(Box::new(io::BufReader::with_capacity(256 << 10, file)))
    }

    fn stat(&self, key: &Key) -> Result<Option<ObjectInfo>, StorageError> {
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(md) => Ok(Some(self.info(key.clone(), &md))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::from_io(path.display(), e)),
        }
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        let dirs: Vec<PathBuf> = match kind {
            ObjectKind::Config => return Ok(self.stat(&Key::config())?.into_iter().collect()),
            ObjectKind::Index => vec![self.root.join("index")],
            ObjectKind::Snapshot => vec![self.root.join("snapshots")],
            ObjectKind::Prune => vec![self.root.join("prune")],
            ObjectKind::Pack => match fs::read_dir(self.root.join("packs")) {
                Ok(fanout) => fanout.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(StorageError::from_io(self.root.join("packs").display(), e)),
            },
        };
        let mut found = Vec::new();
        for dir in dirs {
            let listing = match fs::read_dir(&dir) {
                Ok(listing) => listing,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::from_io(dir.display(), e)),
            };
            for entry in listing {
                let entry = entry.map_err(|e| StorageError::from_io(dir.display(), e))?;
                let md = entry.metadata().map_err(|e| StorageError::from_io(entry.path().display(), e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                found.push(self.info(Key::new(kind, name), &md));
            }
        }
        found.sort_by(|a, b| a.key.name.cmp(&b.key.name));
        Ok(found)
    }

    /// A share locks nothing (its own snapshots or permissions may): the file is unlinked and the
    /// removal made durable.
    fn delete(&self, key: &Key) -> Result<(), StorageError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().expect("an object lies in a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::from_io(path.display(), e)),
        }
    }

    fn retain(&self, key: &Key, _until: SystemTime) -> Result<(), StorageError> {
        Err(StorageError::Unsupported { location: self.path(key).display().to_string(), what: "a retention lock" })
    }

    fn set_legal_hold(&self, key: &Key, _hold: bool) -> Result<(), StorageError> {
        Err(StorageError::Unsupported { location: self.path(key).display().to_string(), what: "a legal hold" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uncommitted_object_is_invisible_and_a_committed_one_is_never_replaced() {
        let dir = std::env::temp_dir().join(format!("sv-fs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let storage = FilesystemStorage::open(&dir).unwrap();
        let key = Key::new(ObjectKind::Snapshot, "ab12");
        {
            let mut w = storage.create().unwrap();
            w.write_all(b"half").unwrap();
        }
        assert_eq!(storage.stat(&key).unwrap(), None);
        assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        assert_eq!(storage.put(&key, b"first").unwrap(), Commit::Created);
        assert_eq!(storage.put(&key, b"second").unwrap(), Commit::AlreadyPresent);
        assert_eq!(storage.get(&key).unwrap(), b"first");
        fs::remove_dir_all(&dir).unwrap();
    }
}
