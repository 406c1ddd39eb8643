//! A disk-backed multimap from 32-byte keys to 32-byte values with memory bounded by design: the local
//! table behind the blob index, which at tens of millions of blobs no longer fits in memory. It is a
//! cache of the repository's index objects, not part of the repository format: a table that cannot be
//! opened is wiped ([`RunTable::wipe`]) and rebuilt from the repository.
//!
//! Inserts go to a memory table; at `memory_limit` entries it is written out as a sorted run file.
//! The insert that spills also merges runs (size-tiered: a run is merged with the newer ones once it
//! is not much larger than they are together), so that a lookup reads one 4 KiB block from each of a
//! handful of runs. Memory: the memory table, 8 bytes per 64 entries on disk, and a 64 KiB buffer per
//! run while merging or iterating.
//!
//! # Run files
//!
//! A directory holds the runs, named `<first>-<last>.run` with two 16-digit lower-case hex numbers: the
//! span of spill generations the run holds (a spilled run is `g-g`, a merged run spans its inputs').
//! Generations order the runs, oldest first. A run whose span lies inside another's is the input of a
//! merge that was interrupted after the merged run was complete: it is removed at open. Files being
//! written are `<first>-<last>.tmp` and are renamed to `.run` only once complete and synced; `lock`
//! is held (`flock`) by the one process that has the table open.
//!
//! A run file, all integers unsigned:
//!
//! | offset               | size      | content                                                          |
//! |----------------------|-----------|------------------------------------------------------------------|
//! | 0                    | 8         | magic `svruns01` (the last two digits are the format version)    |
//! | 8                    | 8         | record count `n`, little-endian                                  |
//! | 16                   | 16        | reserved, zero                                                   |
//! | 32                   | 64 × n    | records: key (32 bytes) then value (32 bytes), sorted by key then value, unique |
//! | 32 + 64 × n          | 8 × ⌈n/64⌉ | fences: the first 8 bytes of the key of record 0, 64, 128…, one per 4 KiB block of records |
//!
//! The fences are stored so that opening a run reads 1/512 of it rather than one page of every block.
//! A file whose size is not exactly what its count says, or whose magic differs, is refused.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const KEY: usize = 32;
pub const VALUE: usize = 32;
pub type Key = [u8; KEY];
pub type Value = [u8; VALUE];
type Record = (Key, Value);

const MAGIC: &[u8; 8] = b"svruns01";
const HEADER: u64 = 32;
const RECORD: usize = KEY + VALUE;
const BLOCK_RECORDS: u64 = 64;
const BLOCK_BYTES: usize = RECORD * BLOCK_RECORDS as usize;
/// Sequential reads and writes (merges, iteration) go through buffers of this size, one per run.
const STREAM_BUFFER: usize = 64 << 10;

/// 8 MiB of records (about 12 MiB in the tree that holds them) before a spill: few runs, well within
/// the RSS budget beside a 40 million-id filter.
pub const DEFAULT_MEMORY_LIMIT: usize = 131_072;
/// A run is merged with all newer runs once it holds at most this many times their entries together:
/// runs then grow geometrically: a few runs for any size, each entry rewritten O(log(entries/limit))
/// times (about 7 times on the way to 40 M entries at the default limit, by simulation).
const SIZE_RATIO: u64 = 2;
/// And whatever the sizes, never more runs than this (each costs a read per absent lookup).
const MAX_RUNS: usize = 6;
/// A flush folds all runs into one up to this many entries (256 MiB of runs, a repository of about
/// 1 TB): a rewrite of that size per backup is cheap beside the reads it saves.
const FOLD_BELOW: u64 = 4 << 20;

const LOCK: &str = "lock";

pub struct RunTable {
    dir: PathBuf,
    /// Oldest first.
    runs: Vec<Run>,
    memory: BTreeSet<Record>,
    memory_limit: usize,
    fold_below: u64,
    next_generation: u64,
    /// Held for the table's life: two processes spilling the same generation would overwrite each other.
    _lock: File,
}

impl RunTable {
    /// Opens the table in `dir`, creating it if missing. Reads each run's header and fences, never its
    /// records. A damaged run is refused with an error of kind `InvalidData`: wipe and rebuild. A table
    /// another process has open is refused with `WouldBlock`.
    pub fn open(dir: &Path) -> io::Result<RunTable> {
        fs::create_dir_all(dir).map_err(context(dir, "cannot create the directory"))?;
        let lock = lock(dir)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(context(dir, "cannot list"))? {
            let path = entry.map_err(context(dir, "cannot list"))?.path();
            match parse_name(&path) {
                Some((first, last, "run")) => found.push((first, last, path)),
                // A writer killed before its rename.
                Some((_, _, "tmp")) => fs::remove_file(&path).map_err(context(&path, "cannot remove"))?,
                _ => {}
            }
        }
        // Containing spans first, so that a merge's leftover inputs follow the merged run.
        found.sort_by_key(|&(first, last, _)| (first, std::cmp::Reverse(last)));
        let (mut runs, mut leftovers) = (Vec::<Run>::new(), Vec::new());
        for (first, last, path) in found {
            match runs.last() {
                Some(previous) if last <= previous.last => leftovers.push(path),
                Some(previous) if first <= previous.last => {
                    return Err(invalid(&path, format!("its generations overlap those of {} without lying inside them", previous.path.display())));
                }
                _ => runs.push(Run::open(path, first, last)?),
            }
        }
        for path in leftovers {
            fs::remove_file(&path).map_err(context(&path, "cannot remove the input of a finished merge"))?;
        }
        let next_generation = runs.last().map_or(0, |run| run.last + 1);
        Ok(RunTable { dir: dir.to_path_buf(), runs, memory: BTreeSet::new(), memory_limit: DEFAULT_MEMORY_LIMIT, fold_below: FOLD_BELOW, next_generation, _lock: lock })
    }

    /// Removes the table's files from `dir` (the directory and any other file in it stay).
    pub fn wipe(dir: &Path) -> io::Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        let _lock = lock(dir)?;
        for entry in fs::read_dir(dir).map_err(context(dir, "cannot list"))? {
            let path = entry.map_err(context(dir, "cannot list"))?.path();
            if parse_name(&path).is_some() {
                fs::remove_file(&path).map_err(context(&path, "cannot remove"))?;
            }
        }
        Ok(())
    }

    /// Spill the memory table at this many entries instead of [`DEFAULT_MEMORY_LIMIT`] (at least 1).
    pub fn with_memory_limit(mut self, limit: usize) -> Self {
        self.memory_limit = limit.max(1);
        self
    }

    /// Adds a pair; the memory table is spilled to a run, and runs merged, when it is full, whose
    /// errors are returned here. A pair already in a run is not looked for: it is stored again and
    /// collapses when read.
    pub fn insert(&mut self, key: Key, value: Value) -> io::Result<()> {
        self.memory.insert((key, value));
        if self.memory.len() >= self.memory_limit {
            self.spill()?;
        }
        Ok(())
    }

    /// Every value stored under `key`, each once: runs oldest first, then the memory table; within one
    /// run by value bytes. A merge sorts its inputs' values together, so only the set is stable: a
    /// caller that needs an order puts it in the value's leading bytes.
    pub fn get(&self, key: &Key) -> io::Result<Vec<Value>> {
        let mut found = Vec::new();
        for run in &self.runs {
            run.find(key, &mut found, false)?;
        }
        found.extend(self.memory.range((*key, [0; VALUE])..=(*key, [0xff; VALUE])).map(|(_, value)| *value));
        let mut unique = Vec::with_capacity(found.len());
        for value in found {
            if !unique.contains(&value) {
                unique.push(value);
            }
        }
        Ok(unique)
    }

    /// Stops at the first value found, newest runs (smallest, likeliest cached) first.
    pub fn contains(&self, key: &Key) -> io::Result<bool> {
        if self.memory.range((*key, [0; VALUE])..=(*key, [0xff; VALUE])).next().is_some() {
            return Ok(true);
        }
        let mut found = Vec::new();
        for run in self.runs.iter().rev() {
            run.find(key, &mut found, true)?;
            if !found.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Makes every insert so far durable: the next `open` sees it. Entries not flushed are lost when
    /// the table is dropped.
    /// Up to [`FOLD_BELOW`] entries, the runs are then folded into one, so that a lookup of a blob that
    /// is there (what restore and verify ask, for every file) reads one block, not one per run.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.memory.is_empty() {
            self.spill()?;
        }
        if self.runs.len() > 1 && self.len() <= self.fold_below {
            self.merge_from(0)?;
        }
        Ok(())
    }

    /// Entries in the runs and the memory table; a pair stored in several runs counts once per run.
    pub fn len(&self) -> u64 {
        self.memory.len() as u64 + self.runs.iter().map(|run| run.count).sum::<u64>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every pair once, by key then value, read run by run sequentially through a small buffer each.
    /// Stops after the first error.
    pub fn iter(&self) -> impl Iterator<Item = io::Result<(Key, Value)>> + '_ {
        let mut sources: Vec<Source> = self.runs.iter().map(|run| Source::Run(RunReader::new(run))).collect();
        sources.push(Source::Memory(self.memory.iter()));
        Merge::new(sources)
    }

    fn spill(&mut self) -> io::Result<()> {
        let generation = self.next_generation;
        let mut writer = RunWriter::create(&self.dir, generation, generation)?;
        for (key, value) in &self.memory {
            writer.push(key, value)?;
        }
        self.runs.push(writer.finish()?);
        self.next_generation += 1;
        self.memory.clear();
        self.compact()
    }

    /// Size-tiered: finds the oldest run holding at most [`SIZE_RATIO`] times as many entries as all
    /// newer runs together and merges it with them, until there is none; and the newest two while there
    /// are more than [`MAX_RUNS`]. Only neighbours merge, so the runs keep their age order. The merged run is
    /// complete under its final name before its inputs go; `open` removes inputs a crash left behind.
    fn compact(&mut self) -> io::Result<()> {
        while let Some(start) = self.merge_start() {
            self.merge_from(start)?;
        }
        Ok(())
    }

    /// Merges the runs from `start` on into one.
    fn merge_from(&mut self, start: usize) -> io::Result<()> {
        let inputs = &self.runs[start..];
        let mut writer = RunWriter::create(&self.dir, inputs[0].first, inputs[inputs.len() - 1].last)?;
        for record in Merge::new(inputs.iter().map(|run| Source::Run(RunReader::new(run))).collect()) {
            let (key, value) = record?;
            writer.push(&key, &value)?;
        }
        let merged = writer.finish()?;
        let inputs = self.runs.split_off(start);
        self.runs.push(merged);
        for run in inputs {
            fs::remove_file(&run.path).map_err(context(&run.path, "cannot remove a merged run"))?;
        }
        Ok(())
    }

    fn merge_start(&self) -> Option<usize> {
        let mut newer: u64 = self.runs.iter().map(|run| run.count).sum();
        for (i, run) in self.runs.iter().enumerate().take(self.runs.len().saturating_sub(1)) {
            newer -= run.count;
            if run.count <= SIZE_RATIO * newer {
                return Some(i);
            }
        }
        (self.runs.len() > MAX_RUNS).then(|| self.runs.len() - 2)
    }
}

/// One run file: its records stay on disk, read with `pread` (the page cache does not count in the
/// process's RSS, unlike an mmap's pages).
struct Run {
    path: PathBuf,
    file: File,
    first: u64,
    last: u64,
    count: u64,
    /// The first 8 bytes of the first key of each block, big-endian: numeric order is key order.
    fences: Vec<u64>,
}

impl Run {
    fn open(path: PathBuf, first: u64, last: u64) -> io::Result<Run> {
        let file = File::open(&path).map_err(context(&path, "cannot open"))?;
        let size = file.metadata().map_err(context(&path, "cannot stat"))?.len();
        if size < HEADER {
            return Err(invalid(&path, format!("it is {size} bytes, shorter than the {HEADER}-byte header: the run is truncated")));
        }
        let mut header = [0u8; HEADER as usize];
        file.read_exact_at(&mut header, 0).map_err(context(&path, "cannot read the header"))?;
        if &header[..8] != MAGIC {
            return Err(invalid(&path, format!("it starts with {:?}, not {:?}: not a run of this version", String::from_utf8_lossy(&header[..8]), String::from_utf8_lossy(MAGIC))));
        }
        if header[16..].iter().any(|&b| b != 0) {
            return Err(invalid(&path, "the reserved bytes of its header are not zero"));
        }
        let count = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let blocks = count.div_ceil(BLOCK_RECORDS);
        let expected = count.checked_mul(RECORD as u64).and_then(|records| records.checked_add(HEADER + 8 * blocks));
        if expected != Some(size) {
            let expected = expected.map_or("more than 2⁶⁴".to_string(), |n| n.to_string());
            return Err(invalid(&path, format!("it is {size} bytes but its header says {count} records, which take {expected} bytes: the run is truncated or damaged")));
        }
        let mut fences = Vec::with_capacity(blocks as usize);
        let (mut offset, mut left) = (HEADER + count * RECORD as u64, blocks as usize * 8);
        let mut chunk = vec![0u8; left.min(STREAM_BUFFER)];
        while left > 0 {
            let bytes = &mut chunk[..left.min(STREAM_BUFFER)];
            file.read_exact_at(bytes, offset).map_err(context(&path, "cannot read the fences"))?;
            fences.extend(bytes.chunks_exact(8).map(|fence| u64::from_be_bytes(fence.try_into().expect("8 bytes"))));
            offset += bytes.len() as u64;
            left -= bytes.len();
        }
        if fences.windows(2).any(|pair| pair[0] > pair[1]) {
            return Err(invalid(&path, "its fences are out of order: the run is damaged"));
        }
        Ok(Run { path, file, first, last, count, fences })
    }

    /// Appends the values stored under `key` to `found` (only the first if `first_only`).
    fn find(&self, key: &Key, found: &mut Vec<Value>, first_only: bool) -> io::Result<()> {
        let prefix = prefix(key);
        // Blocks from the last one starting below the prefix to the last one starting at it: a run of
        // equal prefixes, even of one key, can span several blocks.
        let end = self.fences.partition_point(|&fence| fence <= prefix);
        if end == 0 {
            return Ok(());
        }
        let mut block = self.fences.partition_point(|&fence| fence < prefix).saturating_sub(1);
        // Among those, by full key: the last block starting below the key (or the first candidate).
        let mut upper = end;
        while upper - block > 1 {
            let middle = block + (upper - block) / 2;
            let mut first = [0u8; KEY];
            self.read_at(&mut first, block_offset(middle))?;
            if first < *key {
                block = middle;
            } else {
                upper = middle;
            }
        }
        let mut buffer = [0u8; BLOCK_BYTES];
        while block < end {
            let records = (self.count - block as u64 * BLOCK_RECORDS).min(BLOCK_RECORDS) as usize;
            let bytes = &mut buffer[..records * RECORD];
            self.read_at(bytes, block_offset(block))?;
            let key_at = |i: usize| &bytes[i * RECORD..i * RECORD + KEY];
            let (mut low, mut high) = (0, records);
            while low < high {
                let middle = (low + high) / 2;
                if key_at(middle) < &key[..] {
                    low = middle + 1;
                } else {
                    high = middle;
                }
            }
            for i in low..records {
                if key_at(i) != &key[..] {
                    return Ok(());
                }
                found.push(bytes[i * RECORD + KEY..(i + 1) * RECORD].try_into().expect("32 bytes"));
                if first_only {
                    return Ok(());
                }
            }
            block += 1;
        }
        Ok(())
    }

    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        // The message is built only on failure: this runs once per lookup.
        let len = buffer.len();
        self.file.read_exact_at(buffer, offset).map_err(|e| context(&self.path, &format!("cannot read {len} bytes at offset {offset}"))(e))
    }
}

fn block_offset(block: usize) -> u64 {
    HEADER + (block * BLOCK_BYTES) as u64
}

fn prefix(key: &Key) -> u64 {
    u64::from_be_bytes(key[..8].try_into().expect("8 bytes"))
}

/// Writes a run as `<span>.tmp`, then syncs and renames it: a run under its final name is complete.
struct RunWriter {
    dir: PathBuf,
    tmp: PathBuf,
    first: u64,
    last: u64,
    out: BufWriter<File>,
    count: u64,
    fences: Vec<u64>,
    previous: Option<Record>,
    renamed: bool,
}

impl RunWriter {
    fn create(dir: &Path, first: u64, last: u64) -> io::Result<RunWriter> {
        let tmp = dir.join(format!("{first:016x}-{last:016x}.tmp"));
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(context(&tmp, "cannot create"))?;
        let mut out = BufWriter::with_capacity(STREAM_BUFFER, file);
        // The count is known at the end; the header is rewritten then.
        out.write_all(&[0; HEADER as usize]).map_err(context(&tmp, "cannot write"))?;
        Ok(RunWriter { dir: dir.to_path_buf(), tmp, first, last, out, count: 0, fences: Vec::new(), previous: None, renamed: false })
    }

    fn push(&mut self, key: &Key, value: &Value) -> io::Result<()> {
        // Every writer's input is sorted and unique; a merge of a damaged run would not be.
        if self.previous.is_some_and(|previous| previous >= (*key, *value)) {
            return Err(invalid(&self.tmp, format!("record {} is not above the one before: an input run is damaged", self.count)));
        }
        self.previous = Some((*key, *value));
        if self.count.is_multiple_of(BLOCK_RECORDS) {
            self.fences.push(prefix(key));
        }
        self.out.write_all(key).and_then(|()| self.out.write_all(value)).map_err(context(&self.tmp, "cannot write"))?;
        self.count += 1;
        Ok(())
    }

    fn finish(mut self) -> io::Result<Run> {
        for fence in &self.fences {
            self.out.write_all(&fence.to_be_bytes()).map_err(context(&self.tmp, "cannot write"))?;
        }
        self.out.flush().map_err(context(&self.tmp, "cannot write"))?;
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&self.count.to_le_bytes());
        let file = self.out.get_ref();
        file.write_all_at(&header, 0).map_err(context(&self.tmp, "cannot write the header"))?;
        file.sync_all().map_err(context(&self.tmp, "cannot sync"))?;
        let path = self.dir.join(format!("{:016x}-{:016x}.run", self.first, self.last));
        fs::rename(&self.tmp, &path).map_err(context(&self.tmp, &format!("cannot rename to {}", path.display())))?;
        self.renamed = true;
        File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(context(&self.dir, "cannot sync the directory"))?;
        let file = self.out.get_ref().try_clone().map_err(context(&path, "cannot reopen"))?;
        Ok(Run { path, file, first: self.first, last: self.last, count: self.count, fences: std::mem::take(&mut self.fences) })
    }
}

impl Drop for RunWriter {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a run's records in order through one buffer, with `pread` so that readers share the file.
struct RunReader<'a> {
    run: &'a Run,
    next: u64,
    buffer: Vec<u8>,
    position: usize,
}

impl<'a> RunReader<'a> {
    fn new(run: &'a Run) -> Self {
        RunReader { run, next: 0, buffer: Vec::new(), position: 0 }
    }

    fn read(&mut self) -> io::Result<Option<Record>> {
        if self.position == self.buffer.len() {
            let left = self.run.count - self.next;
            if left == 0 {
                return Ok(None);
            }
            let records = left.min((STREAM_BUFFER / RECORD) as u64);
            self.buffer.resize(records as usize * RECORD, 0);
            self.run.read_at(&mut self.buffer, HEADER + self.next * RECORD as u64)?;
            self.next += records;
            self.position = 0;
        }
        let record = &self.buffer[self.position..self.position + RECORD];
        self.position += RECORD;
        Ok(Some((record[..KEY].try_into().expect("32 bytes"), record[KEY..].try_into().expect("32 bytes"))))
    }
}

enum Source<'a> {
    Run(RunReader<'a>),
    Memory(std::collections::btree_set::Iter<'a, Record>),
}

impl Source<'_> {
    fn read(&mut self) -> io::Result<Option<Record>> {
        match self {
            Source::Run(reader) => reader.read(),
            Source::Memory(records) => Ok(records.next().copied()),
        }
    }
}

/// A k-way merge of sorted sources that yields each pair once. There are few sources (at most
/// [`MAX_RUNS`] runs and the memory table), so the smallest head is found by a scan.
struct Merge<'a> {
    sources: Vec<Source<'a>>,
    /// The next record of each source; filled at the first call.
    heads: Vec<Option<Record>>,
    last: Option<Record>,
    failed: bool,
}

impl<'a> Merge<'a> {
    fn new(sources: Vec<Source<'a>>) -> Self {
        Merge { heads: Vec::with_capacity(sources.len()), sources, last: None, failed: false }
    }

    fn step(&mut self) -> io::Result<Option<Record>> {
        while self.heads.len() < self.sources.len() {
            let head = self.sources[self.heads.len()].read()?;
            self.heads.push(head);
        }
        loop {
            let Some((record, source)) = self.heads.iter().enumerate().filter_map(|(i, head)| head.map(|record| (record, i))).min() else {
                return Ok(None);
            };
            self.heads[source] = self.sources[source].read()?;
            if self.last != Some(record) {
                self.last = Some(record);
                return Ok(Some(record));
            }
        }
    }
}

impl Iterator for Merge<'_> {
    type Item = io::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let step = self.step();
        self.failed = step.is_err();
        step.transpose()
    }
}

/// `<16 hex>-<16 hex>.run` or `.tmp`: the generation span and the extension.
fn parse_name(path: &Path) -> Option<(u64, u64, &str)> {
    let (stem, extension) = path.file_name()?.to_str()?.split_once('.')?;
    let (first, last) = stem.split_once('-')?;
    let number = |hex: &str| (hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then(|| u64::from_str_radix(hex, 16).ok()).flatten();
    matches!(extension, "run" | "tmp").then_some(())?;
    Some((number(first)?, number(last)?, extension))
}

fn lock(dir: &Path) -> io::Result<File> {
    let path = dir.join(LOCK);
    let file = File::options().write(true).create(true).truncate(false).open(&path).map_err(context(&path, "cannot open"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(io::ErrorKind::WouldBlock, format!("{}: the table is in use by another process", dir.display()))),
        Err(fs::TryLockError::Error(e)) => Err(context(&path, "cannot lock")(e)),
    }
}

fn context<'a>(path: &'a Path, what: &'a str) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};
    use std::time::Instant;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sv-runs-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// splitmix64: reproducible without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn bytes(&mut self) -> [u8; 32] {
            let mut bytes = [0u8; 32];
            for chunk in bytes.chunks_exact_mut(8) {
                chunk.copy_from_slice(&self.next().to_le_bytes());
            }
            bytes
        }
    }

    /// Keys crowd three 8-byte prefixes (so equal prefixes span many blocks), one key takes hundreds
    /// of values (so one key spans blocks), the rest are random.
    fn key(rng: &mut Rng) -> Key {
        let mut key = [0u8; KEY];
        match rng.below(10) {
            0 => key = [7; KEY],
            1..=6 => {
                key[..8].copy_from_slice(&[[0x40; 8], [0x41; 8], [0x80; 8]][rng.below(3) as usize]);
                key[30..].copy_from_slice(&(rng.below(600) as u16).to_be_bytes());
            }
            _ => key[..2].copy_from_slice(&(rng.below(400) as u16).to_be_bytes()),
        }
        key
    }

    fn value(rng: &mut Rng, key: &Key) -> Value {
        let mut value = [rng.below(if key == &[7; KEY] { 250 } else { 5 }) as u8; VALUE];
        value[31] = rng.below(2) as u8;
        value
    }

    fn check(table: &RunTable, model: &HashMap<Key, BTreeSet<Value>>, rng: &mut Rng) {
        let mut keys: Vec<Key> = model.keys().copied().collect();
        keys.sort();
        for key in &keys {
            let got = table.get(key).unwrap();
            assert_eq!(got.len(), model[key].len(), "no value twice under {key:?}");
            assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), model[key]);
            assert!(table.contains(key).unwrap());
        }
        for _ in 0..300 {
            // Near misses: a crowded prefix with an unused suffix, keys between and around the stored ones.
            let mut absent = key(rng);
            absent[rng.below(32) as usize] ^= 1 << rng.below(8);
            let expected = model.get(&absent).cloned().unwrap_or_default();
            assert_eq!(table.get(&absent).unwrap().into_iter().collect::<BTreeSet<_>>(), expected);
            assert_eq!(table.contains(&absent).unwrap(), !expected.is_empty());
        }
        for absent in [[0; KEY], [0xff; KEY], [0x41; KEY], { let mut k = [0x80; KEY]; k[8..].fill(0); k }] {
            assert_eq!(table.contains(&absent).unwrap(), model.contains_key(&absent));
        }
        let all: Vec<Record> = table.iter().collect::<io::Result<_>>().unwrap();
        let expected: Vec<Record> = model.iter().flat_map(|(k, values)| values.iter().map(|v| (*k, *v))).collect::<BTreeSet<_>>().into_iter().collect();
        assert!(all == expected, "iter yields every pair once, in order ({} pairs, {} expected)", all.len(), expected.len());
        assert!(table.len() >= expected.len() as u64);
        assert!(table.runs.len() <= MAX_RUNS);
    }

    #[test]
    fn the_table_matches_a_model_across_spills_merges_and_reopens() {
        let dir = scratch("model");
        let mut rng = Rng(1);
        let mut model: HashMap<Key, BTreeSet<Value>> = HashMap::new();
        let mut table = RunTable::open(&dir).unwrap().with_memory_limit(100);
        assert!(table.is_empty());
        for round in 0..6 {
            for i in 0..6_000 {
                let key = key(&mut rng);
                let value = value(&mut rng, &key);
                table.insert(key, value).unwrap();
                model.entry(key).or_default().insert(value);
                if i % 1_500 == 0 {
                    check(&table, &model, &mut rng);
                }
            }
            // Half the rounds end with pairs still in memory: they must be found there, then on disk.
            check(&table, &model, &mut rng);
            if round % 2 == 0 {
                table.flush().unwrap();
                drop(table);
                table = RunTable::open(&dir).unwrap().with_memory_limit(100);
                check(&table, &model, &mut rng);
            }
        }
        assert!(table.runs.iter().any(|run| run.count > 2 * BLOCK_RECORDS * 64), "some run spans many blocks");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n != LOCK).collect();
        assert_eq!(names.len(), table.runs.len(), "merged runs are removed: {names:?}");
        drop(table);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn values_come_oldest_run_first_and_each_once() {
        let dir = scratch("order");
        // Not folded at flush: the runs' order is what is looked at.
        let mut table = RunTable { fold_below: 0, ..RunTable::open(&dir).unwrap() };
        let key = [3; KEY];
        let big: Vec<Record> = (0..1000u32).map(|i| { let mut k = [9; KEY]; k[..4].copy_from_slice(&i.to_be_bytes()); (k, [0; VALUE]) }).collect();
        for (k, v) in &big {
            table.insert(*k, *v).unwrap();
        }
        table.insert(key, [5; VALUE]).unwrap();
        table.flush().unwrap();
        table.insert(key, [1; VALUE]).unwrap();
        table.insert(key, [5; VALUE]).unwrap();
        assert_eq!(table.get(&key).unwrap(), vec![[5; VALUE], [1; VALUE]], "memory after the run");
        table.flush().unwrap();
        assert_eq!(table.runs.len(), 2, "a small run next to a large one stays apart");
        assert_eq!(table.get(&key).unwrap(), vec![[5; VALUE], [1; VALUE]]);
        assert_eq!(table.len(), 1003, "duplicates across runs count");
        assert_eq!(table.iter().count(), 1002);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_removes_what_killed_writers_left_and_refuses_damaged_runs() {
        let dir = scratch("damaged");
        let mut table = RunTable::open(&dir).unwrap();
        assert_eq!(RunTable::open(&dir).err().unwrap().kind(), io::ErrorKind::WouldBlock, "one process at a time");
        for i in 0..200u8 {
            table.insert([i; KEY], [i; VALUE]).unwrap();
        }
        table.flush().unwrap();
        drop(table);

        // A writer killed before its rename, and a merge killed after it, before removing its inputs.
        let tmp = dir.join("0000000000000007-0000000000000007.tmp");
        fs::write(&tmp, b"partial").unwrap();
        let mut merged = RunWriter::create(&dir, 0, 1).unwrap();
        let mut input = RunWriter::create(&dir, 1, 1).unwrap();
        for i in 0..=200u8 {
            merged.push(&[i; KEY], &[i; VALUE]).unwrap();
        }
        input.push(&[200; KEY], &[200; VALUE]).unwrap();
        drop((merged.finish().unwrap(), input.finish().unwrap()));
        let table = RunTable::open(&dir).unwrap();
        assert!(!tmp.exists());
        assert!(!dir.join("0000000000000000-0000000000000000.run").exists() && !dir.join("0000000000000001-0000000000000001.run").exists());
        assert_eq!(table.runs.len(), 1);
        assert_eq!(table.get(&[200; KEY]).unwrap(), vec![[200; VALUE]]);
        assert_eq!(table.next_generation, 2);
        drop(table);

        let run = dir.join("0000000000000000-0000000000000001.run");
        let bytes = fs::read(&run).unwrap();
        fs::write(&run, &bytes[..bytes.len() - 10]).unwrap();
        let error = RunTable::open(&dir).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let message = error.to_string();
        assert!(message.contains("0000000000000000-0000000000000001.run") && message.contains("header says 201 records") && message.contains("truncated"), "{message}");

        let mut other = bytes.clone();
        other[7] = b'9';
        fs::write(&run, &other).unwrap();
        let message = RunTable::open(&dir).err().unwrap().to_string();
        assert!(message.contains("not \"svruns01\""), "{message}");

        fs::write(&run, &bytes[..20]).unwrap();
        let message = RunTable::open(&dir).err().unwrap().to_string();
        assert!(message.contains("shorter than the 32-byte header"), "{message}");

        fs::write(dir.join("keep.txt"), b"not ours").unwrap();
        RunTable::wipe(&dir).unwrap();
        assert!(RunTable::open(&dir).unwrap().is_empty());
        assert!(dir.join("keep.txt").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    fn peak_rss() -> String {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        status.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: ?").split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    }

    /// Figures, not assertions: `cargo test --release --lib repo::runs::tests::five_million -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn five_million_entries() {
        const N: u64 = 5_000_000;
        let dir = scratch("five-million");
        let pair = |i: u64| {
            let mut rng = Rng(i);
            (rng.bytes(), rng.bytes())
        };
        let mut table = RunTable::open(&dir).unwrap();
        let start = Instant::now();
        for i in 0..N {
            let (key, value) = pair(i);
            table.insert(key, value).unwrap();
        }
        table.flush().unwrap();
        let inserting = start.elapsed();
        println!("insert: {N} entries in {inserting:.2?}, {:.0} entries/s; peak RSS {}", N as f64 / inserting.as_secs_f64(), peak_rss());
        drop(table);

        let start = Instant::now();
        let table = RunTable::open(&dir).unwrap();
        let disk: u64 = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        println!("open: {:.2?}, {} runs of {:?} entries, {disk} bytes on disk", start.elapsed(), table.runs.len(), table.runs.iter().map(|r| r.count).collect::<Vec<_>>());

        let mut rng = Rng(99);
        let lookups = 1_000_000;
        let start = Instant::now();
        for n in 0..lookups {
            let i = rng.below(N) + if n % 2 == 0 { 0 } else { N };
            let (key, value) = pair(i);
            let found = table.get(&key).unwrap();
            assert_eq!(found, if i < N { vec![value] } else { vec![] });
        }
        let took = start.elapsed();
        println!("get: {lookups} lookups (half absent) in {took:.2?}, {:.2} µs each", took.as_secs_f64() * 1e6 / lookups as f64);
        let start = Instant::now();
        for n in 0..lookups {
            let i = rng.below(N) + if n % 2 == 0 { 0 } else { N };
            assert_eq!(table.contains(&pair(i).0).unwrap(), i < N);
        }
        let took = start.elapsed();
        println!("contains: {:.2} µs each", took.as_secs_f64() * 1e6 / lookups as f64);
        let start = Instant::now();
        assert_eq!(table.iter().count() as u64, N);
        println!("iter: {N} entries in {:.2?}; peak RSS {}", start.elapsed(), peak_rss());
        drop(table);
        fs::remove_dir_all(&dir).unwrap();
    }
}
