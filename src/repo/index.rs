//! The in-memory index: which pack holds each blob, built from every `index/` object at start.

use std::collections::HashMap;

use super::format::PackIndex;
use super::{BlobKind, Id, RepoError};
use crate::storage::{ObjectKind, Storage};

#[derive(Debug, Clone, Copy)]
pub struct Location {
    /// Position in [`Index::packs`].
    pub pack: u32,
    pub kind: BlobKind,
    pub offset: u64,
    pub length: u64,
    pub plain_length: u64,
}

#[derive(Default)]
pub struct Index {
    blobs: HashMap<Id, Location>,
    /// Pack id and stored size.
    pub packs: Vec<(Id, u64)>,
}

impl Index {
    pub fn load(storage: &dyn Storage) -> Result<Self, RepoError> {
        let mut index = Index::default();
        for info in storage.list(ObjectKind::Index)? {
            let bytes = super::read_bounded(storage, &info.key, super::MAX_INDEX_OBJECT)?;
            let pack_index: PackIndex = serde_json::from_slice(&bytes).map_err(|e| RepoError::corrupt(info.key.path(), e))?;
            if pack_index.pack.hex() != info.key.name {
                return Err(RepoError::corrupt(info.key.path(), format!("it describes pack {}", pack_index.pack)));
            }
            index.add(&pack_index);
        }
        Ok(index)
    }

    pub fn add(&mut self, pack_index: &PackIndex) {
        let pack = self.packs.len() as u32;
        self.packs.push((pack_index.pack, pack_index.size));
        for blob in &pack_index.blobs {
            let location = Location { pack, kind: blob.kind, offset: blob.offset, length: blob.length, plain_length: blob.plain_length };
            // A blob stored twice (two concurrent backups) is readable from either copy.
            self.blobs.entry(blob.id).or_insert(location);
        }
    }

    pub fn get(&self, id: &Id) -> Option<&Location> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn pack_of(&self, location: &Location) -> (Id, u64) {
        self.packs[location.pack as usize]
    }

    /// The blobs of each pack, by position in [`Index::packs`].
    pub fn blobs_by_pack(&self) -> Vec<Vec<(Id, Location)>> {
        let mut by_pack = vec![Vec::new(); self.packs.len()];
        for (id, location) in &self.blobs {
            by_pack[location.pack as usize].push((*id, *location));
        }
        by_pack
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }
}
