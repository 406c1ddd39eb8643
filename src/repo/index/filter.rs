//! A Bloom filter over blob ids, kept beside the on-disk table: most blobs a backup asks about are new,
//! and the filter answers "certainly not stored" for nearly all of them without a disk read. Ids are
//! BLAKE3 hashes, uniformly random already, so their bytes serve as the filter's hash functions.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use super::super::Id;

/// Bits per id a filter gets when it is built; it is rebuilt once it has fewer than
/// [`MIN_BITS_PER_ID`]: between them, about 3 to 9 % false positives with 3 probes. 40 million ids
/// take 25 to 40 MB.
const BITS_PER_ID: u64 = 8;
const MIN_BITS_PER_ID: u64 = 5;
const PROBES: usize = 3;
/// The smallest filter, 1 MiB, holds a million ids: a backup of many small files need not rebuild it
/// while it runs.
const MIN_BITS: u64 = 8 << 20;
const MAGIC: &[u8; 8] = b"svfilt01";
const HEADER: usize = 32;

pub struct Filter {
    bits: Vec<u64>,
    /// Ids added (each add counts, repeats too).
    count: u64,
}

impl Filter {
    /// An empty filter for `ids` ids at the intended density.
    pub fn with_capacity(ids: u64) -> Self {
        let bits = (ids.saturating_mul(BITS_PER_ID)).max(MIN_BITS).next_multiple_of(64);
        Filter { bits: vec![0; (bits / 64) as usize], count: 0 }
    }

    fn len_bits(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    fn probes(&self, id: &Id) -> [u64; PROBES] {
        let word = |at: usize| u64::from_le_bytes(id.0[at..at + 8].try_into().unwrap());
        let (first, step) = (word(0), word(8) | 1);
        let bits = self.len_bits();
        std::array::from_fn(|i| first.wrapping_add((i as u64).wrapping_mul(step)) % bits)
    }

    pub fn add(&mut self, id: &Id) {
        for bit in self.probes(id) {
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.count += 1;
    }

    /// False: the id was never added. True: it probably was.
    pub fn may_contain(&self, id: &Id) -> bool {
        self.probes(id).into_iter().all(|bit| self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// Whether it holds so many ids that it should be rebuilt larger.
    pub fn is_crowded(&self) -> bool {
        self.count.saturating_mul(MIN_BITS_PER_ID) > self.len_bits()
    }

    /// Writes the filter to `path` (through a temporary name), tagged with `tag`: what it describes.
    pub fn save(&self, path: &Path, tag: u64) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut file = io::BufWriter::new(fs::File::create(&tmp)?);
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&tag.to_le_bytes());
        header[16..24].copy_from_slice(&self.count.to_le_bytes());
        header[24..32].copy_from_slice(&(self.bits.len() as u64).to_le_bytes());
        file.write_all(&header)?;
        for word in &self.bits {
            file.write_all(&word.to_le_bytes())?;
        }
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path)
    }

    /// The filter saved at `path` with this `tag`, or None when there is none or it describes
    /// something else (then it is rebuilt).
    pub fn load(path: &Path, tag: u64) -> io::Result<Option<Filter>> {
        let file = match fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = file.metadata()?.len();
        let mut input = io::BufReader::with_capacity(64 << 10, file);
        let mut header = [0u8; HEADER];
        if size < HEADER as u64 || input.read_exact(&mut header).is_err() {
            return Ok(None);
        }
        let field = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
        let words = field(24);
        if &header[..8] != MAGIC || field(8) != tag || words == 0 || size != HEADER as u64 + 8 * words {
            return Ok(None);
        }
        // Straight into the words: the bytes are not held a second time.
        let mut bits = Vec::with_capacity(words as usize);
        let mut word = [0u8; 8];
        for _ in 0..words {
            input.read_exact(&mut word)?;
            bits.push(u64::from_le_bytes(word));
        }
        Ok(Some(Filter { bits, count: field(16) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_ids_are_always_found_and_few_others_are() {
        let mut filter = Filter::with_capacity(10_000);
        let id = |n: u32| Id::of(&n.to_le_bytes());
        (0..10_000).for_each(|n| filter.add(&id(n)));
        assert!((0..10_000).all(|n| filter.may_contain(&id(n))));
        let false_positives = (10_000..110_000).filter(|n| filter.may_contain(&id(*n))).count();
        assert!(false_positives < 2_000, "{false_positives} false positives in 100,000");
        let path = std::env::temp_dir().join(format!("sv-filter-{}", std::process::id()));
        filter.save(&path, 7).unwrap();
        assert!(Filter::load(&path, 8).unwrap().is_none(), "another tag is another filter");
        let loaded = Filter::load(&path, 7).unwrap().unwrap();
        assert!((0..10_000).all(|n| loaded.may_contain(&id(n))) && loaded.count == 10_000);
        std::fs::remove_file(&path).unwrap();
    }
}
