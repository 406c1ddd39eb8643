//! The blob index: which pack holds each blob. It lives on local disk, in the cache directory, as a
//! table of sorted runs (`runs`) with a Bloom filter (`filter`) and the pack table in memory, so that
//! a repository of 40 million blobs needs little more memory than one of four thousand. It is a cache
//! of the repository's index objects (docs/FORMAT.md, "Index objects"): each load reads only the
//! objects it has not seen yet, and a directory that is lost, damaged or busy is rebuilt from them.
//!
//! The directory holds:
//! - `runs/`: the table, blob id → location (see [`encode`]);
//! - `packs`: the pack table, append-only records of 40 bytes (pack id, stored size u64 LE); a
//!   location names its pack by position here, so a pack is written here before any of its blobs
//!   enter the table;
//! - `state`: how many packs of `packs` have all their blobs in the table for sure (u64 LE), and the
//!   tag of the filter saved with them (u64 LE); the packs after them are read again at load;
//! - `filter`: the Bloom filter, valid when its tag is the state's;
//! - `gone`: the positions (u32 LE each) of packs whose index object was not on the target at the
//!   last persist: a staged snapshot's packs arrive later, and are read then.
//!
//! An index object that cannot be used is left out and reported: its pack's blobs are then missing,
//! which a backup repairs by storing them again and verify reports.

mod filter;
pub mod runs;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use filter::Filter;
use runs::RunTable;

use super::packindex::{PackIndex, PackedBlob};
use super::{BlobKind, Id, RepoError};
use crate::storage::{Key, ObjectKind, Storage};

/// One copy of a blob: the pack at this position of the pack table ([`Index::pack_of`]), and where in
/// it the blob lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub blob: PackedBlob,
}

/// A blob's place as a table value (its id is the key): the pack position first, big-endian, so that
/// a blob's copies come in the order their packs entered the table.
fn encode(pack: u32, blob: &PackedBlob) -> runs::Value {
    let mut value = [0u8; runs::VALUE];
    value[..4].copy_from_slice(&pack.to_be_bytes());
    value[4] = matches!(blob.kind, BlobKind::Tree) as u8;
    value[8..16].copy_from_slice(&blob.frame_offset.to_le_bytes());
    for (at, field) in [(16, blob.frame_length), (20, blob.frame_plain_length), (24, blob.entry_offset), (28, blob.plain_length)] {
        value[at..at + 4].copy_from_slice(&field.to_le_bytes());
    }
    value
}

fn decode(id: &Id, value: &runs::Value) -> Location {
    let u32_at = |at: usize| u32::from_le_bytes(value[at..at + 4].try_into().unwrap());
    let blob = PackedBlob {
        id: *id,
        kind: if value[4] == 1 { BlobKind::Tree } else { BlobKind::Data },
        frame_offset: u64::from_le_bytes(value[8..16].try_into().unwrap()),
        frame_length: u32_at(16),
        frame_plain_length: u32_at(20),
        entry_offset: u32_at(24),
        plain_length: u32_at(28),
    };
    Location { pack: u32::from_be_bytes(value[..4].try_into().unwrap()), blob }
}

const PACK_RECORD: usize = 40;
/// Blobs whose index objects are read (and held) before their packs' records are made durable and
/// they enter the table: one fsync per batch, a few MiB of memory.
const LOAD_BATCH_BLOBS: usize = 100_000;

/// The packs the index knew when it was loaded, by id: what a files cache entry may name. Shared with
/// the threads that read sources while the index itself grows.
pub type KnownPacks = Arc<HashMap<Id, u32>>;

pub struct Index {
    /// Index objects that were left out, with why: anyone who can write to the storage can add one,
    /// and it must not make the others unusable.
    pub unreadable: Vec<RepoError>,
    /// What went wrong with the local copy, if anything: the index works, but this or the next load
    /// reads more of the repository.
    pub warning: Option<String>,
    dir: PathBuf,
    /// Removed when the index is dropped: a private directory, not the cache.
    temporary: bool,
    table: RunTable,
    filter: Filter,
    /// Pack id and stored size, by position.
    packs: Vec<(Id, u64)>,
    /// Packs from this position on were being added when an earlier process stopped: their blobs
    /// may be missing from the table until their index objects are read again.
    covered: usize,
    /// Every present pack by id, as loaded.
    known: KnownPacks,
    /// Packs added since the load.
    added: HashMap<Id, u32>,
    /// Packs whose index object is gone from the target: their locations are not used.
    gone: HashSet<u32>,
    /// Packs a prune is about to delete (see [`Index::set_aside`]): present, but not used.
    set_aside: HashSet<u32>,
    /// Persist what was added when dropped (see [`Index::keep_on_drop`]).
    keep_on_drop: bool,
    /// Packs that were gone when the index was last persisted (the `gone` file): a staged snapshot's
    /// packs reach the target later, and are read again once they are listed.
    were_gone: Vec<u32>,
    packs_file: File,
}

impl Index {
    /// Loads the index of the repository in `storage`, kept in `cache` (a directory of its own for
    /// this repository) or, without one or when it is unusable (damaged beyond a rebuild, not
    /// writable, in use by another process), in a temporary directory.
    pub fn load(storage: &dyn Storage, cache: Option<&Path>) -> Result<Index, RepoError> {
        let mut warning = None;
        if let Some(dir) = cache {
            match Self::open(dir, false) {
                Ok(index) => return index.catch_up(storage),
                Err(e) => warning = Some(format!("the local index in {} cannot be used ({e}); a temporary one was read from the repository", dir.display())),
            }
        }
        let mut index = Self::temporary()?;
        index.warning = warning;
        index.catch_up(storage)
    }

    /// An empty index in a private temporary directory, removed when it is dropped.
    pub fn temporary() -> Result<Index, RepoError> {
        static SEQUENCE: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!("stackvault-index-{}-{}", std::process::id(), SEQUENCE.fetch_add(1, Ordering::Relaxed)));
        let _ = fs::remove_dir_all(&dir);
        Self::open(&dir, true).map_err(|e| local_error(&dir, e))
    }

    fn open(dir: &Path, temporary: bool) -> io::Result<Index> {
        fs::create_dir_all(dir)?;
        let runs = dir.join("runs");
        let table = match RunTable::open(&runs) {
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // A damaged cache: start again from the repository.
                RunTable::wipe(&runs)?;
                for name in ["packs", "state", "filter", "gone"] {
                    match fs::remove_file(dir.join(name)) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                }
                RunTable::open(&runs)?
            }
            opened => opened?,
        };
        let mut packs_file = OpenOptions::new().read(true).append(true).create(true).open(dir.join("packs"))?;
        let mut bytes = Vec::new();
        packs_file.read_to_end(&mut bytes)?;
        // A record cut short by a crash is dropped (no blob names its position yet).
        let whole = bytes.len() - bytes.len() % PACK_RECORD;
        if whole != bytes.len() {
            packs_file.set_len(whole as u64)?;
        }
        let packs: Vec<(Id, u64)> = bytes[..whole]
            .chunks_exact(PACK_RECORD)
            .map(|r| (Id(r[..32].try_into().unwrap()), u64::from_le_bytes(r[32..].try_into().unwrap())))
            .collect();
        let (covered, tag) = match fs::read(dir.join("state")) {
            Ok(state) if state.len() == 16 => (u64::from_le_bytes(state[..8].try_into().unwrap()), u64::from_le_bytes(state[8..].try_into().unwrap())),
            _ => (0, 0),
        };
        let filter = match Filter::load(&dir.join("filter"), tag)? {
            Some(filter) if tag != 0 => filter,
            _ => rebuild_filter(&table)?,
        };
        Ok(Index {
            unreadable: Vec::new(),
            warning: None,
            dir: dir.to_path_buf(),
            temporary,
            table,
            filter,
            covered: (covered as usize).min(packs.len()),
            keep_on_drop: false,
            were_gone: match fs::read(dir.join("gone")) {
                Ok(bytes) => bytes.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).filter(|&p| (p as usize) < packs.len()).collect(),
                Err(_) => Vec::new(),
            },
            packs,
            known: Arc::default(),
            added: HashMap::new(),
            gone: HashSet::new(),
            set_aside: HashSet::new(),
            packs_file,
        })
    }

    /// Loads the index for a run whose target cannot be reached (its snapshot is staged, `storage`
    /// being the staging area): the packs of the local copy are taken as present on the target, but
    /// those in `absent` (staged for other pending snapshots: a staged snapshot must not depend on
    /// another, which may be dropped) and those not on the target at the last load. Without a usable
    /// local copy, nothing is known and everything is stored again.
    pub fn load_offline(storage: &dyn Storage, cache: &Path, absent: &HashSet<Id>) -> Result<Index, RepoError> {
        let (index, warning) = match Self::open(cache, false) {
            Ok(index) => (index, None),
            Err(e) => (Self::temporary()?, Some(format!("the local index in {} cannot be used ({e}): every blob is staged again", cache.display()))),
        };
        let mut listed: HashSet<String> = storage.list(ObjectKind::Index)?.into_iter().map(|o| o.key.name).collect();
        let were_gone: HashSet<Id> = index.were_gone.iter().map(|&p| index.packs[p as usize].0).collect();
        // A pack enters the local table only once it and its index object are stored, so even those an
        // earlier process was still adding (this night's failed attempt, say) are on the target.
        let present = index.packs.iter().filter(|(id, _)| !absent.contains(id) && !were_gone.contains(id));
        listed.extend(present.map(|(id, _)| id.hex()));
        let mut index = index.catch_up_listed(storage, listed)?;
        index.warning = index.warning.take().or(warning);
        Ok(index)
    }

    /// Reads the index objects the table does not hold yet: those of packs an earlier process was
    /// adding when it stopped, and every one that is new; marks packs whose object is gone.
    fn catch_up(self, storage: &dyn Storage) -> Result<Index, RepoError> {
        let listed: HashSet<String> = storage.list(ObjectKind::Index)?.into_iter().map(|o| o.key.name).collect();
        self.catch_up_listed(storage, listed)
    }

    /// [`Self::catch_up`] with the index objects taken as present given.
    fn catch_up_listed(mut self, storage: &dyn Storage, listed: HashSet<String>) -> Result<Index, RepoError> {
        let mut positions: HashMap<Id, u32> = HashMap::with_capacity(self.packs.len());
        for (position, (id, _)) in self.packs.iter().enumerate() {
            positions.insert(*id, position as u32);
            if !listed.contains(&id.hex()) {
                self.gone.insert(position as u32);
            }
        }
        let back = self.were_gone.iter().map(|&p| self.packs[p as usize].0.hex());
        let mut to_read: Vec<String> =
            self.packs[self.covered..].iter().map(|(id, _)| id.hex()).chain(back).filter(|name| listed.contains(name)).collect();
        to_read.sort();
        to_read.dedup();
        let mut new: Vec<String> = listed.into_iter().filter(|name| name.parse().map_or(true, |id: Id| !positions.contains_key(&id))).collect();
        new.sort();
        to_read.extend(new);
        let mut names = to_read.into_iter().peekable();
        while names.peek().is_some() {
            let (mut read, mut blobs) = (Vec::new(), 0);
            while blobs < LOAD_BATCH_BLOBS {
                let Some(name) = names.next() else { break };
                match Self::read_object(storage, &Key::new(ObjectKind::Index, name)) {
                    Ok(pack_index) => {
                        blobs += pack_index.blobs.len();
                        read.push(pack_index);
                    }
                    Err(e) => self.unreadable.push(e),
                }
            }
            let mut records = Vec::new();
            for pack_index in &read {
                if !positions.contains_key(&pack_index.pack) {
                    positions.insert(pack_index.pack, self.packs.len() as u32);
                    self.packs.push((pack_index.pack, pack_index.size));
                    records.extend_from_slice(&pack_record(pack_index));
                }
            }
            self.append_packs(&records)?;
            for pack_index in &read {
                self.insert_blobs(positions[&pack_index.pack], pack_index)?;
            }
        }
        positions.retain(|_, position| !self.gone.contains(position));
        self.known = Arc::new(positions);
        if let Err(e) = self.persist() {
            self.warning = Some(format!("{e} (the next run reads these index objects again)"));
        }
        Ok(self)
    }

    /// Makes the index persist the packs added so far when it is dropped, also after a failure: for
    /// an index whose packs all go to the target (not to a staging area, whose packs may never get
    /// there).
    pub fn keep_on_drop(&mut self) {
        self.keep_on_drop = true;
    }

    /// Adds a pack this process stored; returns its position.
    pub fn add(&mut self, pack_index: &PackIndex) -> Result<u32, RepoError> {
        if let Some(position) = self.position(&pack_index.pack) {
            return Ok(position);
        }
        let position = self.packs.len() as u32;
        self.append_packs(&pack_record(pack_index))?;
        self.packs.push((pack_index.pack, pack_index.size));
        self.added.insert(pack_index.pack, position);
        self.insert_blobs(position, pack_index)?;
        Ok(position)
    }

    /// The pack records are durable before any blob names their positions.
    fn append_packs(&mut self, records: &[u8]) -> Result<(), RepoError> {
        if records.is_empty() {
            return Ok(());
        }
        let dir = self.dir.clone();
        self.packs_file.write_all(records).and_then(|()| self.packs_file.sync_data()).map_err(|e| local_error(&dir, e))
    }

    fn insert_blobs(&mut self, position: u32, pack_index: &PackIndex) -> Result<(), RepoError> {
        let dir = self.dir.clone();
        for blob in &pack_index.blobs {
            self.table.insert(blob.id.0, encode(position, blob)).map_err(|e| local_error(&dir, e))?;
            self.filter.add(&blob.id);
        }
        if self.filter.is_crowded() {
            // The old one goes first: two large filters at once would double the peak.
            self.filter = Filter::with_capacity(0);
            self.filter = rebuild_filter(&self.table).map_err(|e| local_error(&dir, e))?;
        }
        Ok(())
    }

    /// Makes everything added so far durable, so that the next load reads only newer index objects.
    pub fn persist(&mut self) -> Result<(), RepoError> {
        if self.temporary {
            return Ok(());
        }
        let dir = self.dir.clone();
        let persisted = (|| -> io::Result<()> {
            self.table.flush()?;
            let tag = u64::from_le_bytes(crate::random_bytes::<8>()) | 1;
            self.filter.save(&dir.join("filter"), tag)?;
            let gone: Vec<u8> = self.gone.iter().flat_map(|p| p.to_le_bytes()).collect();
            let tmp = dir.join("gone.tmp");
            fs::write(&tmp, &gone)?;
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, dir.join("gone"))?;
            let mut state = (self.packs.len() as u64).to_le_bytes().to_vec();
            state.extend_from_slice(&tag.to_le_bytes());
            let tmp = dir.join("state.tmp");
            let mut file = File::create(&tmp)?;
            file.write_all(&state)?;
            file.sync_all()?;
            fs::rename(&tmp, dir.join("state"))?;
            File::open(&dir)?.sync_all()
        })();
        persisted.map_err(|e| local_error(&dir, e))?;
        self.covered = self.packs.len();
        Ok(())
    }

    /// Every copy of a blob, in the order their packs entered the index.
    pub fn locations(&self, id: &Id) -> Result<Vec<Location>, RepoError> {
        if !self.filter.may_contain(id) {
            return Ok(Vec::new());
        }
        let values = self.table.get(&id.0).map_err(|e| local_error(&self.dir, e))?;
        // A value naming no pack can only come from a damaged cache: it is not a copy.
        Ok(values.iter().map(|value| decode(id, value)).filter(|l| (l.pack as usize) < self.packs.len() && !self.unused(l.pack)).collect())
    }

    fn unused(&self, position: u32) -> bool {
        self.gone.contains(&position) || self.set_aside.contains(&position)
    }

    /// Stops using these packs' blobs (a prune's pending markers name them, docs/FORMAT.md "Prune
    /// records"): a blob found only there is stored again, and a cached file whose content lies there
    /// is read again.
    pub fn set_aside(&mut self, packs: &HashSet<Id>) {
        let positions: Vec<u32> = packs.iter().filter_map(|pack| self.known.get(pack).copied()).collect();
        if positions.is_empty() {
            return;
        }
        self.set_aside.extend(positions);
        let known = self.known.iter().filter(|(_, position)| !self.set_aside.contains(position)).map(|(id, position)| (*id, *position)).collect();
        self.known = Arc::new(known);
    }

    /// The first copy of a blob.
    pub fn get(&self, id: &Id) -> Result<Option<Location>, RepoError> {
        Ok(self.locations(id)?.into_iter().next())
    }

    /// Pack id and stored size of a location's pack.
    pub fn pack_of(&self, location: &Location) -> (Id, u64) {
        self.pack_at(location.pack)
    }

    /// Pack id and stored size of the pack at a position.
    pub fn pack_at(&self, position: u32) -> (Id, u64) {
        self.packs[position as usize]
    }

    pub fn position(&self, pack: &Id) -> Option<u32> {
        self.known.get(pack).or_else(|| self.added.get(pack)).copied()
    }

    /// Every present pack with its stored size.
    pub fn packs(&self) -> impl Iterator<Item = (Id, u64)> + '_ {
        self.packs.iter().enumerate().filter(|(i, _)| !self.gone.contains(&(*i as u32))).map(|(_, pack)| *pack)
    }

    /// The packs present when the index was loaded.
    pub fn known_packs(&self) -> KnownPacks {
        self.known.clone()
    }

    /// The packs that have an index object, without loading the index (or writing its local copy).
    pub fn listed_packs(storage: &dyn Storage) -> Result<KnownPacks, RepoError> {
        let listed = storage.list(ObjectKind::Index)?.into_iter().filter_map(|o| o.key.name.parse().ok());
        Ok(Arc::new(listed.zip(0..).collect()))
    }

    /// Reads and parses one index object.
    pub fn read_object(storage: &dyn Storage, key: &Key) -> Result<PackIndex, RepoError> {
        let bytes = super::read_bounded(storage, key, super::MAX_INDEX_OBJECT)?;
        let pack_index = PackIndex::decode(&bytes, super::MAX_INDEX_TABLE).map_err(|e| RepoError::corrupt(key.path(), e))?;
        if pack_index.pack.hex() != key.name {
            return Err(RepoError::corrupt(key.path(), format!("it describes pack {}", pack_index.pack)));
        }
        Ok(pack_index)
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        if self.temporary {
            let _ = fs::remove_dir_all(&self.dir);
        } else if self.keep_on_drop && !self.added.is_empty() {
            // A run that failed: its packs are stored on the target with their index objects, and a
            // staged retry of the night (which cannot read them there) still finds their blobs.
            let _ = self.persist();
        }
    }
}

fn pack_record(pack_index: &PackIndex) -> [u8; PACK_RECORD] {
    let mut record = [0u8; PACK_RECORD];
    record[..32].copy_from_slice(&pack_index.pack.0);
    record[32..].copy_from_slice(&pack_index.size.to_le_bytes());
    record
}

/// A filter of every id in the table, with room for a quarter more before it is crowded again.
fn rebuild_filter(table: &RunTable) -> io::Result<Filter> {
    let mut filter = Filter::with_capacity(table.len() + table.len() / 4);
    for record in table.iter() {
        filter.add(&Id(record?.0));
    }
    Ok(filter)
}

fn local_error(dir: &Path, e: io::Error) -> RepoError {
    RepoError::LocalIndex { dir: dir.display().to_string(), detail: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::filesystem::FilesystemStorage;

    fn pack(n: u8, blobs: &[u8]) -> PackIndex {
        let blob = |b: u8| PackedBlob {
            id: Id([b; 32]),
            kind: BlobKind::Data,
            frame_offset: u64::from(b) * 1000,
            frame_length: 10,
            frame_plain_length: 1024,
            entry_offset: 0,
            plain_length: u32::from(b),
        };
        PackIndex { pack: Id([n; 32]), size: 100 + u64::from(n), blobs: blobs.iter().map(|b| blob(*b)).collect() }
    }

    #[test]
    fn the_local_index_catches_up_with_the_repository_and_survives_a_stop_mid_run() {
        let root = std::env::temp_dir().join(format!("sv-index-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("repo")).unwrap();
        let storage = FilesystemStorage::open(&root.join("repo")).unwrap();
        let put = |p: &PackIndex| storage.put(&Key::new(ObjectKind::Index, p.pack.hex()), &p.encode(2)).unwrap();
        put(&pack(1, &[10, 11]));
        put(&pack(2, &[11, 12]));
        let cache = root.join("cache");
        let index = Index::load(&storage, Some(&cache)).unwrap();
        assert_eq!(index.locations(&Id([11; 32])).unwrap().len(), 2, "a blob in two packs has two copies");
        assert_eq!(index.get(&Id([12; 32])).unwrap().map(|l| index.pack_of(&l).0), Some(Id([2; 32])));
        assert!(index.get(&Id([13; 32])).unwrap().is_none());
        drop(index);

        // A run that stops without persisting: its pack is recorded, its blobs maybe not.
        let mut index = Index::load(&storage, Some(&cache)).unwrap();
        let third = pack(3, &[13]);
        put(&third);
        index.add(&third).unwrap();
        assert!(index.get(&Id([13; 32])).unwrap().is_some());
        drop(index);
        // ...and an index object that vanished from the target.
        fs::remove_file(root.join("repo/index").join(Id([1; 32]).hex())).unwrap();
        let index = Index::load(&storage, Some(&cache)).unwrap();
        assert!(index.get(&Id([13; 32])).unwrap().is_some(), "the stopped run's pack is read again");
        assert_eq!(index.locations(&Id([11; 32])).unwrap().len(), 1, "a gone pack's copies are not used");
        assert!(index.get(&Id([10; 32])).unwrap().is_none());
        assert_eq!(index.packs().count(), 2);
        assert_eq!(index.known_packs().len(), 2);
        fs::remove_dir_all(&root).unwrap();
    }
}
