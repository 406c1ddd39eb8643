//! The in-memory index: which pack holds each blob, built from every `index/` object at start. An
//! index object that cannot be used is left out and reported: its pack's blobs are then missing,
//! which a backup repairs by storing them again and verify reports.

use std::collections::HashMap;

use super::packindex::{PackIndex, PackedBlob};
use super::{BlobKind, Id, RepoError};
use crate::storage::{Key, ObjectKind, Storage};

#[derive(Debug, Clone, Copy)]
pub struct Location {
    /// Position in [`Index::packs`].
    pub pack: u32,
    pub kind: BlobKind,
    pub frame_offset: u64,
    pub frame_length: u32,
    pub frame_plain_length: u32,
    pub entry_offset: u32,
    pub plain_length: u32,
}

impl Location {
    /// A blob's place in the pack at position `pack` of [`Index::packs`].
    pub fn in_pack(pack: u32, blob: &PackedBlob) -> Self {
        Location {
            pack,
            kind: blob.kind,
            frame_offset: blob.frame_offset,
            frame_length: blob.frame_length,
            frame_plain_length: blob.frame_plain_length,
            entry_offset: blob.entry_offset,
            plain_length: blob.plain_length,
        }
    }
}

#[derive(Default)]
pub struct Index {
    /// Index objects that were left out, with why: anyone who can write to the storage can add one,
    /// and it must not make the others unusable.
    pub unreadable: Vec<RepoError>,
    blobs: HashMap<Id, Location>,
    /// Further copies of blobs stored more than once (two runs stored them concurrently, or someone
    /// added an index object): a copy that cannot be read is not the end of the blob.
    copies: HashMap<Id, Vec<Location>>,
    /// Pack id and stored size.
    pub packs: Vec<(Id, u64)>,
}

impl Index {
    pub fn load(storage: &dyn Storage) -> Result<Self, RepoError> {
        let mut index = Index::default();
        for info in storage.list(ObjectKind::Index)? {
            match Self::read_object(storage, &info.key) {
                Ok(pack_index) => index.add(&pack_index),
                Err(e) => index.unreadable.push(e),
            }
        }
        Ok(index)
    }

    /// Reads and parses one index object.
    pub fn read_object(storage: &dyn Storage, key: &Key) -> Result<PackIndex, RepoError> {
        let bytes = super::read_bounded(storage, key, super::MAX_INDEX_OBJECT)?;
        let pack_index = PackIndex::decode(&bytes, super::MAX_INDEX_OBJECT).map_err(|e| RepoError::corrupt(key.path(), e))?;
        if pack_index.pack.hex() != key.name {
            return Err(RepoError::corrupt(key.path(), format!("it describes pack {}", pack_index.pack)));
        }
        Ok(pack_index)
    }

    pub fn add(&mut self, pack_index: &PackIndex) {
        let pack = self.packs.len() as u32;
        self.packs.push((pack_index.pack, pack_index.size));
        for blob in &pack_index.blobs {
            let location = Location::in_pack(pack, blob);
            match self.blobs.entry(blob.id) {
                std::collections::hash_map::Entry::Vacant(first) => {
                    first.insert(location);
                }
                std::collections::hash_map::Entry::Occupied(_) => self.copies.entry(blob.id).or_default().push(location),
            }
        }
    }

    /// The first copy of a blob, in the order index objects are listed (by pack id).
    pub fn get(&self, id: &Id) -> Option<&Location> {
        self.blobs.get(id)
    }

    /// Every copy of a blob, the first first.
    pub fn locations(&self, id: &Id) -> impl Iterator<Item = &Location> {
        self.blobs.get(id).into_iter().chain(self.copies.get(id).into_iter().flatten())
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn pack_of(&self, location: &Location) -> (Id, u64) {
        self.packs[location.pack as usize]
    }
}
