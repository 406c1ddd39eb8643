//! Index objects: where each blob of one pack lies (docs/FORMAT.md, "Index objects"). Version 2 is a
//! compact binary table in one zstd frame, ending in the BLAKE3 of what precedes it; version 1 was
//! JSON, and is still read (and written into repositories not yet migrated).

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::pack::TAR_BLOCK;
use super::{BlobKind, Id};

/// Where one blob lies: the zstd frame that holds its tar entry, and the entry's place in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedBlob {
    pub id: Id,
    pub kind: BlobKind,
    /// Offset of the frame in the pack's plaintext (after decryption).
    pub frame_offset: u64,
    /// The frame's compressed length.
    pub frame_length: u32,
    /// The frame's decompressed length: whole tar entries, so a multiple of 512.
    pub frame_plain_length: u32,
    /// Offset of the blob's tar header in the decompressed frame.
    pub entry_offset: u32,
    /// Length of the blob's plaintext.
    pub plain_length: u32,
}

/// The length of a blob's tar entry: header, content, padding to the block size.
pub fn entry_length(plain_length: u64) -> u64 {
    TAR_BLOCK as u64 + plain_length.div_ceil(TAR_BLOCK as u64) * TAR_BLOCK as u64
}

/// The index object of one pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackIndex {
    pub pack: Id,
    /// The pack object's stored size in bytes.
    pub size: u64,
    /// In pack order.
    pub blobs: Vec<PackedBlob>,
}

const MAGIC: &[u8; 8] = b"svindex2";
const HEAD: usize = 8 + 32 + 8 + 4;
const ENTRY: usize = 60;
const CHECKSUM: usize = 32;
/// The first bytes of every zstd frame (RFC 8878): a version 2 object; version 1 starts with `{`.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl PackIndex {
    /// The object's bytes in the given format version.
    pub fn encode(&self, version: u32) -> Vec<u8> {
        if version == 1 {
            return serde_json::to_vec(&V1PackIndex::from(self)).expect("index serializes");
        }
        let mut table = Vec::with_capacity(HEAD + ENTRY * self.blobs.len() + CHECKSUM);
        table.extend_from_slice(MAGIC);
        table.extend_from_slice(&self.pack.0);
        table.extend_from_slice(&self.size.to_le_bytes());
        table.extend_from_slice(&(self.blobs.len() as u32).to_le_bytes());
        for blob in &self.blobs {
            table.extend_from_slice(&blob.id.0);
            table.extend_from_slice(&[kind_code(blob.kind), 0, 0, 0]);
            table.extend_from_slice(&blob.frame_offset.to_le_bytes());
            for field in [blob.frame_length, blob.frame_plain_length, blob.entry_offset, blob.plain_length] {
                table.extend_from_slice(&field.to_le_bytes());
            }
        }
        let checksum = blake3::hash(&table);
        table.extend_from_slice(checksum.as_bytes());
        zstd::bulk::compress(&table, 3).expect("zstd compresses into a growing buffer")
    }

    /// Parses an index object of either version; `limit` bounds the decompressed table.
    pub fn decode(bytes: &[u8], limit: u64) -> Result<PackIndex, String> {
        if !bytes.starts_with(&ZSTD_MAGIC) {
            let v1: V1PackIndex = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            return v1.try_into();
        }
        let mut table = Vec::new();
        zstd::stream::read::Decoder::new(bytes)
            .and_then(|decoder| decoder.take(limit + 1).read_to_end(&mut table))
            .map_err(|e| format!("it does not decompress: {e}"))?;
        if table.len() as u64 > limit {
            return Err(format!("it decompresses to more than {} MiB, the limit (docs/FORMAT.md, \"Limits\")", limit >> 20));
        }
        if table.len() < HEAD + CHECKSUM || &table[..8] != MAGIC {
            return Err("it is not a version 2 index object (no \"svindex2\" table)".into());
        }
        let (body, checksum) = table.split_at(table.len() - CHECKSUM);
        if blake3::hash(body).as_bytes() != checksum {
            return Err("its checksum does not match its content (damaged)".into());
        }
        let count = u32::from_le_bytes(body[48..52].try_into().unwrap()) as usize;
        if body.len() != HEAD + ENTRY * count {
            return Err(format!("it declares {count} entries but holds {} bytes of them", body.len() - HEAD));
        }
        let u32_at = |e: &[u8], at: usize| u32::from_le_bytes(e[at..at + 4].try_into().unwrap());
        let blobs = body[HEAD..]
            .chunks_exact(ENTRY)
            .enumerate()
            .map(|(i, e)| {
                let kind = match (e[32], &e[33..36]) {
                    (0, [0, 0, 0]) => BlobKind::Data,
                    (1, [0, 0, 0]) => BlobKind::Tree,
                    _ => return Err(format!("entry {i}: bytes 32 to 35 are not a kind (0 or 1) followed by three zeros")),
                };
                Ok(PackedBlob {
                    id: Id(e[..32].try_into().unwrap()),
                    kind,
                    frame_offset: u64::from_le_bytes(e[36..44].try_into().unwrap()),
                    frame_length: u32_at(e, 44),
                    frame_plain_length: u32_at(e, 48),
                    entry_offset: u32_at(e, 52),
                    plain_length: u32_at(e, 56),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(PackIndex { pack: Id(body[8..40].try_into().unwrap()), size: u64::from_le_bytes(body[40..48].try_into().unwrap()), blobs })
    }
}

fn kind_code(kind: BlobKind) -> u8 {
    match kind {
        BlobKind::Data => 0,
        BlobKind::Tree => 1,
    }
}

/// Version 1's JSON form: one frame per blob.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1PackIndex {
    version: u32,
    pack: Id,
    size: u64,
    blobs: Vec<V1PackedBlob>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1PackedBlob {
    id: Id,
    #[serde(rename = "type")]
    kind: BlobKind,
    offset: u64,
    length: u64,
    plain_length: u64,
}

impl From<&PackIndex> for V1PackIndex {
    /// Only for packs written with one frame per blob, as version 1 repositories are.
    fn from(index: &PackIndex) -> Self {
        let blobs = index
            .blobs
            .iter()
            .map(|b| {
                debug_assert_eq!(b.entry_offset, 0, "a version 1 pack has one blob per frame");
                V1PackedBlob { id: b.id, kind: b.kind, offset: b.frame_offset, length: b.frame_length.into(), plain_length: b.plain_length.into() }
            })
            .collect();
        V1PackIndex { version: 1, pack: index.pack, size: index.size, blobs }
    }
}

impl TryFrom<V1PackIndex> for PackIndex {
    type Error = String;
    fn try_from(v1: V1PackIndex) -> Result<Self, String> {
        if v1.version != 1 {
            return Err(format!("a JSON index object must have version 1, not {}", v1.version));
        }
        let too_large = |what: &str, id: &Id| format!("blob {id}: its {what} does not fit the format's limits");
        let blobs = v1
            .blobs
            .into_iter()
            .map(|b| {
                let plain_length = u32::try_from(b.plain_length).map_err(|_| too_large("plain_length", &b.id))?;
                let frame_plain_length = u32::try_from(entry_length(b.plain_length)).map_err(|_| too_large("plain_length", &b.id))?;
                let frame_length = u32::try_from(b.length).map_err(|_| too_large("length", &b.id))?;
                Ok(PackedBlob { id: b.id, kind: b.kind, frame_offset: b.offset, frame_length, frame_plain_length, entry_offset: 0, plain_length })
            })
            .collect::<Result<_, String>>()?;
        Ok(PackIndex { pack: v1.pack, size: v1.size, blobs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PackIndex {
        let blob = |n: u8, entry_offset| PackedBlob {
            id: Id([n; 32]),
            kind: if n % 2 == 0 { BlobKind::Data } else { BlobKind::Tree },
            frame_offset: 1 << 33,
            frame_length: 300,
            frame_plain_length: 2048,
            entry_offset,
            plain_length: 100,
        };
        PackIndex { pack: Id([9; 32]), size: 12345, blobs: vec![blob(1, 0), blob(2, 1024)] }
    }

    #[test]
    fn both_versions_round_trip() {
        let index = sample();
        assert_eq!(PackIndex::decode(&index.encode(2), 1 << 20).unwrap(), index);
        let single = PackIndex { blobs: vec![PackedBlob { entry_offset: 0, frame_plain_length: 1024, ..index.blobs[0] }], ..index };
        assert_eq!(PackIndex::decode(&single.encode(1), 1 << 20).unwrap(), single);
    }

    #[test]
    fn damage_is_refused() {
        let index = sample();
        let mut table = zstd::bulk::decompress(&index.encode(2), 1 << 20).unwrap();
        table[HEAD + 40] ^= 1;
        let damaged = zstd::bulk::compress(&table, 3).unwrap();
        assert!(PackIndex::decode(&damaged, 1 << 20).unwrap_err().contains("checksum"));
        assert!(PackIndex::decode(&index.encode(2), 100).unwrap_err().contains("limit"));
    }
}
