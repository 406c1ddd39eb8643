//! Turns a tree's event stream into repository objects: file content is cut by FastCDC into data blobs,
//! each directory becomes a tree blob, and only blobs the repository lacks go to the packer.

use std::collections::HashSet;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;

use crate::cache::{CacheCursor, CacheWriter, CachedFile};
use crate::repo::crypt::Recipient;
use crate::repo::format::{ChunkerParams, Node, Tree, Xattr};
use crate::repo::pack::{PackReport, Packer, ENTRY_HEADER};
use crate::repo::packindex::PackIndex;
use crate::repo::tree::{MAX_DEPTH, MAX_TREE_SIZE};
use crate::repo::{BlobKind, Id, Index, RepoError, Repository};
use crate::source::exclude::Excluded;
use crate::source::{EntryKind, Event, EventSource, Meta, SourceError, Stamp};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct TreeStats {
    pub entries: u64,
    pub bytes: u64,
    /// Files not read because their stamp matched the files cache.
    pub unchanged_files: u64,
}

/// One archived tree.
pub struct Archived {
    /// The root directory, as a node whose subtree holds the rest.
    pub root: Node,
    pub stats: TreeStats,
    /// What the walk's rules left out.
    pub excluded: Vec<Excluded>,
}

/// The files cache on both sides of a run: the last snapshot's, read along (in walk order) for the
/// files the agent reused, and the next one's, written along.
#[derive(Default)]
pub struct CacheLink<'c, 'i> {
    pub previous: Option<&'c mut CacheCursor<'i>>,
    pub next: Option<&'c mut CacheWriter>,
    /// Why the next cache could not be written: it then is not kept (speed lost, nothing else).
    pub failed: Option<std::io::Error>,
}

impl CacheLink<'_, '_> {
    fn record(&mut self, file: CachedFile) {
        if let Some(next) = self.next.as_mut() {
            if let Err(e) = next.add(&file) {
                self.failed = Some(e);
                self.next = None;
            }
        }
    }
}

/// Where a blob stands for this run.
enum Place {
    /// In the repository, in the pack at this position of the index.
    Stored(u32),
    /// Handed to the packer in this run, not yet in a stored pack.
    Queued,
    /// Neither: it must be stored.
    New,
}

/// The blobs of this run's stored packs that the files cache will name, with their packs' positions:
/// the cache records a file before its new blobs are packed. Kept up to [`MAX_STORED`] blobs by the
/// first 16 bytes of their ids (unique among any number of blobs a run could store), sorted at the end.
#[derive(Default)]
pub struct StoredBlobs {
    blobs: Vec<([u8; 16], u32)>,
}

/// 20 bytes each: 10 MiB for a run storing 500,000 small files. A file whose blobs are beyond it is
/// read again by the next run (the cache cannot name its packs), which then records them.
const MAX_STORED: usize = 1 << 20;

impl StoredBlobs {
    fn add(&mut self, pack_index: &PackIndex, position: u32) {
        let data = pack_index.blobs.iter().filter(|b| b.kind == BlobKind::Data);
        let room = MAX_STORED.saturating_sub(self.blobs.len());
        self.blobs.extend(data.take(room).map(|b| (b.id.0[..16].try_into().unwrap(), position)));
    }

    fn sort(&mut self) {
        self.blobs.sort_unstable();
    }

    /// The position of the pack this run stored `id` in, if it did and kept it.
    pub fn position(&self, id: &Id) -> Option<u32> {
        let key: [u8; 16] = id.0[..16].try_into().unwrap();
        self.blobs.binary_search_by_key(&key, |(prefix, _)| *prefix).ok().map(|at| self.blobs[at].1)
    }
}

/// What a run stored, once its last pack is.
pub struct Finished {
    pub report: PackReport,
    /// Every pack the archived trees reference, sorted.
    pub packs: Vec<Id>,
    pub stored: StoredBlobs,
}

pub struct Archiver<'a> {
    index: &'a mut Index,
    packer: Packer,
    /// Packs stored so far, to enter the index.
    committed: Receiver<PackIndex>,
    /// Shared so that a file's loop can hold it while the rest of `self` is borrowed mutably.
    cutter: Arc<Cutter>,
    /// New blobs handed to the packer whose pack is not stored yet: a few packs' worth.
    queued: HashSet<Id>,
    stored: StoredBlobs,
    /// Packs (positions in the index) holding blobs this run referenced.
    referenced_packs: HashSet<u32>,
    pub new_bytes: u64,
}

impl<'a> Archiver<'a> {
    pub fn new(index: &'a mut Index, repo: &Repository, recipients: Vec<Recipient>) -> Self {
        let (sender, committed) = channel();
        Archiver {
            index,
            packer: Packer::start(repo, recipients, sender),
            committed,
            cutter: Arc::new(Cutter::new(&repo.config.chunker)),
            queued: HashSet::new(),
            stored: StoredBlobs::default(),
            referenced_packs: HashSet::new(),
            new_bytes: 0,
        }
    }

    /// Consumes one whole tree: a directory with everything below it, or a single regular file (a
    /// bind-mounted file), which is then the root node itself. A `Reused` file takes its content from
    /// the last snapshot's files cache; every file goes into the next one's.
    pub fn archive(&mut self, source: &mut dyn EventSource, cache: &mut CacheLink) -> Result<Archived, ArchiveError> {
        let mut stats = TreeStats::default();
        let root = match source.next_event()? {
            Event::Dir(meta) => self.directory(source, meta, cache, &mut stats)?,
            Event::File(meta) => self.file(source, &[], meta, &mut stats, cache)?,
            Event::Reused(meta) => self.reused(cache, &[], meta, &mut stats)?,
            other => return Err(SourceError::Malformed(format!("a tree must start with its root directory or file, not {other:?}")).into()),
        };
        let mut next = source.next_event()?;
        let mut excluded = Vec::new();
        if let Event::Excluded(list) = next {
            excluded = list;
            next = source.next_event()?;
        }
        match next {
            Event::End => Ok(Archived { root, stats, excluded }),
            other => Err(SourceError::Malformed(format!("expected the end of the tree, got {other:?}")).into()),
        }
    }

    /// Consumes the events below the root directory `root_meta`, up to its `DirEnd`.
    fn directory(
        &mut self,
        source: &mut dyn EventSource,
        root_meta: Meta,
        cache: &mut CacheLink,
        stats: &mut TreeStats,
    ) -> Result<Node, ArchiveError> {
        let mut open: Vec<(Meta, Vec<Node>)> = vec![(root_meta, Vec::new())];
        // The open directory's path below the root, and where each open level's name starts in it.
        let mut dir_path: Vec<u8> = Vec::new();
        let mut dir_starts: Vec<usize> = Vec::new();
        loop {
            let node = match source.next_event()? {
                Event::Dir(meta) => {
                    dir_starts.push(dir_path.len());
                    dir_path = join(&dir_path, &meta.name);
                    open.push((meta, Vec::new()));
                    // A snapshot no reader accepts is worse than a backup that fails now.
                    if open.len() > MAX_DEPTH + 1 {
                        return Err(SourceError::Refused(format!(
                            "directory {}: nested deeper than {MAX_DEPTH} levels, the limit of a snapshot (docs/FORMAT.md, \"Limits\"); exclude it",
                            String::from_utf8_lossy(&dir_path)
                        ))
                        .into());
                    }
                    continue;
                }
                Event::DirEnd => {
                    let (meta, nodes) = open.pop().expect("a directory is open");
                    let entries = nodes.len();
                    let tree = serde_json::to_vec(&Tree { nodes }).expect("trees serialize");
                    if tree.len() as u64 > MAX_TREE_SIZE {
                        let shown = if open.is_empty() { "the root".into() } else { format!("directory {}", String::from_utf8_lossy(&dir_path)) };
                        return Err(SourceError::Refused(format!(
                            "{shown}: its {entries} entries need a tree of {} bytes, more than the {MAX_TREE_SIZE} a tree may hold (docs/FORMAT.md, \"Limits\"); split it into subdirectories or exclude it",
                            tree.len()
                        ))
                        .into());
                    }
                    let id = Id::of(&tree);
                    self.store(id, BlobKind::Tree, tree)?;
                    let node = node_from(meta, Vec::new(), Some(id));
                    if open.is_empty() {
                        return Ok(node);
                    }
                    dir_path.truncate(dir_starts.pop().expect("a directory below the root is open"));
                    node
                }
                Event::File(meta) => self.file(source, &dir_path, meta, stats, cache)?,
                Event::Reused(meta) => self.reused(cache, &dir_path, meta, stats)?,
                Event::Leaf(meta) => node_from(meta, Vec::new(), None),
                other => return Err(SourceError::Malformed(format!("unexpected {other:?} in a directory")).into()),
            };
            stats.entries += 1;
            open.last_mut().expect("a directory is open").1.push(node);
        }
    }

    /// A file whose content follows as `Data` events.
    fn file(&mut self, source: &mut dyn EventSource, dir: &[u8], meta: Meta, stats: &mut TreeStats, cache: &mut CacheLink) -> Result<Node, ArchiveError> {
        let (content, packs, size) = self.file_content(source)?;
        stats.bytes += size;
        let mut node = node_from(meta.clone(), content, None);
        // What was read is what the snapshot holds, even if the file changed meanwhile.
        node.size = size;
        cache.record(cached(dir, &meta, &node, packs));
        Ok(node)
    }

    /// A file the agent did not read because the files cache has it unchanged.
    fn reused(&mut self, cache: &mut CacheLink, dir: &[u8], meta: Meta, stats: &mut TreeStats) -> Result<Node, ArchiveError> {
        let path = join(dir, &meta.name);
        let found = cache.previous.as_mut().and_then(|p| p.lookup(&path)).map(|f| (f.content.clone(), f.packs.clone(), f.xattrs.clone()));
        let (content, packs, xattrs) = found.ok_or_else(|| {
            SourceError::Malformed(format!("{}: reused, but not in the files cache", String::from_utf8_lossy(&path)))
        })?;
        // The cursor passed only entries whose packs the index holds: no blob needs looking up.
        for pack in &packs {
            let position = pack.and_then(|p| self.index.position(&p));
            let position = position.ok_or_else(|| RepoError::Missing(format!("a pack of reused file {}", String::from_utf8_lossy(&path))))?;
            self.referenced_packs.insert(position);
        }
        stats.bytes += meta.size;
        stats.unchanged_files += 1;
        crate::progress::advance(meta.size);
        // The walk did not read them: they are the cache's, unchanged with the stamp.
        let meta = Meta { xattrs, ..meta };
        let node = node_from(meta.clone(), content, None);
        cache.record(cached(dir, &meta, &node, packs));
        Ok(node)
    }

    /// Cuts one file's content (its `Data` events up to `FileEnd`) into chunks and stores the new ones.
    /// Each chunk is assembled directly in an entry buffer of the packer, behind the room for its tar
    /// header, so its bytes are copied once on their way from the source to the compressor.
    fn file_content(&mut self, source: &mut dyn EventSource) -> Result<(Vec<Id>, Vec<Option<Id>>, u64), ArchiveError> {
        let cutter = self.cutter.clone();
        let cutter = &*cutter;
        let mut content = Vec::new();
        let mut packs = Vec::new();
        let mut size = 0;
        let mut entry = self.packer.entry_buffer();
        let mut scan = cutter.start();
        loop {
            match source.next_event() {
                Ok(Event::Data(piece)) => {
                    crate::progress::advance(piece.len() as u64);
                    let mut rest = &piece[..];
                    while !rest.is_empty() {
                        // A cut can come anywhere past `min_size`: taking little at a time from there on
                        // keeps what is copied twice (the bytes behind a cut) small.
                        let have = entry.len() - ENTRY_HEADER;
                        let want = cutter.min_size.saturating_sub(have) + CUT_STEP;
                        let take = want.min(cutter.max_size - have).min(rest.len());
                        entry.extend_from_slice(&rest[..take]);
                        rest = &rest[take..];
                        while let Some(cut) = cutter.scan(&mut scan, &entry[ENTRY_HEADER..], false) {
                            entry = self.chunk(entry, cut, (&mut content, &mut packs), &mut size)?;
                            scan = cutter.start();
                        }
                    }
                }
                Ok(Event::FileEnd) => break,
                Ok(other) => {
                    self.packer.recycle(entry);
                    return Err(SourceError::Malformed(format!("unexpected {other:?} inside a file")).into());
                }
                Err(e) => {
                    self.packer.recycle(entry);
                    return Err(e.into());
                }
            }
        }
        while entry.len() > ENTRY_HEADER {
            let cut = cutter.scan(&mut scan, &entry[ENTRY_HEADER..], true).expect("at the end of a file there is always a cut");
            entry = self.chunk(entry, cut, (&mut content, &mut packs), &mut size)?;
            scan = cutter.start();
        }
        self.packer.recycle(entry);
        Ok((content, packs, size))
    }

    /// Stores the first `cut` bytes of `entry` as a chunk, noting its id and, where known, its pack;
    /// returns a new entry buffer holding the rest.
    fn chunk(&mut self, mut entry: Vec<u8>, cut: usize, (content, packs): (&mut Vec<Id>, &mut Vec<Option<Id>>), size: &mut u64) -> Result<Vec<u8>, RepoError> {
        let mut next = self.packer.entry_buffer();
        next.extend_from_slice(&entry[ENTRY_HEADER + cut..]);
        entry.truncate(ENTRY_HEADER + cut);
        let id = Id::of(&entry[ENTRY_HEADER..]);
        *size += cut as u64;
        content.push(id);
        match self.place(id)? {
            Place::Stored(position) => {
                packs.push(Some(self.index.pack_at(position).0));
                self.packer.recycle(entry);
            }
            Place::Queued => {
                packs.push(None);
                self.packer.recycle(entry);
            }
            Place::New => {
                packs.push(None);
                self.new_bytes += cut as u64;
                self.queued.insert(id);
                self.packer.add_entry(id, BlobKind::Data, entry)?;
            }
        }
        Ok(next)
    }

    /// Where `id` stands; a pack holding it counts as referenced.
    fn place(&mut self, id: Id) -> Result<Place, RepoError> {
        self.take_committed()?;
        if self.queued.contains(&id) {
            return Ok(Place::Queued);
        }
        Ok(match self.index.get(&id)? {
            Some(location) => {
                self.referenced_packs.insert(location.pack);
                Place::Stored(location.pack)
            }
            None => Place::New,
        })
    }

    /// Enters the packs stored since the last call into the index: their blobs are no longer queued.
    fn take_committed(&mut self) -> Result<(), RepoError> {
        while let Ok(pack_index) = self.committed.try_recv() {
            self.enter(&pack_index)?;
        }
        Ok(())
    }

    fn enter(&mut self, pack_index: &PackIndex) -> Result<(), RepoError> {
        let position = self.index.add(pack_index)?;
        self.referenced_packs.insert(position);
        for blob in &pack_index.blobs {
            self.queued.remove(&blob.id);
        }
        self.stored.add(pack_index, position);
        Ok(())
    }

    fn store(&mut self, id: Id, kind: BlobKind, data: Vec<u8>) -> Result<(), RepoError> {
        if let Place::New = self.place(id)? {
            if kind == BlobKind::Data {
                self.new_bytes += data.len() as u64;
            }
            self.queued.insert(id);
            self.packer.add(id, kind, data)?;
        }
        Ok(())
    }

    /// Stores what is still queued and enters the last packs into the index.
    pub fn finish(mut self) -> Result<Finished, RepoError> {
        let report = self.packer.finish()?;
        // The packer is done: every pack it stored is in the channel now.
        self.take_committed()?;
        let mut packs: Vec<Id> = self.referenced_packs.iter().map(|p| self.index.pack_at(*p).0).collect();
        packs.sort();
        packs.dedup();
        self.stored.sort();
        Ok(Finished { report, packs, stored: self.stored })
    }
}

/// `dir/name`, or `name` at the root: paths relative to the source's root, as the walker keys them.
fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        path.extend_from_slice(dir);
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

fn cached(dir: &[u8], meta: &Meta, node: &Node, packs: Vec<Option<Id>>) -> CachedFile {
    let stamp = Stamp { size: node.size, ..meta.stamp() };
    CachedFile { path: join(dir, &meta.name), stamp, content: node.content.clone(), packs, xattrs: meta.xattrs.clone() }
}

pub fn node_from(meta: Meta, content: Vec<Id>, subtree: Option<Id>) -> Node {
    Node {
        name: meta.name,
        kind: meta.kind,
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
        mtime_ns: meta.mtime_ns,
        size: if meta.kind == EntryKind::File { meta.size } else { 0 },
        content,
        subtree,
        target: meta.target,
        rdev: meta.rdev,
        xattrs: meta.xattrs.into_iter().map(|(name, value)| Xattr { name, value: hex::encode(value) }).collect(),
    }
}

/// Bytes taken into a chunk at a time once a cut may come (see `Archiver::file_content`).
const CUT_STEP: usize = 32 << 10;

/// FastCDC (the `fastcdc` crate's v2020 algorithm, normalization level 1, as its `StreamCDC` cuts)
/// run incrementally: a chunk's bytes can arrive in any number of pieces, and each byte is scanned once.
struct Cutter {
    min_size: usize,
    avg_size: usize,
    max_size: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

/// Where the scan of the current chunk stands: the next byte pair to look at, and the rolling hash.
struct Scan {
    pair: usize,
    hash: u64,
}

impl Cutter {
    fn new(params: &ChunkerParams) -> Self {
        use fastcdc::v2020 as cdc;
        let ChunkerParams { min_size, avg_size, max_size } = *params;
        // The limits StreamCDC enforces; `RepoConfig::check` refuses a repository whose parameters do not.
        assert!((cdc::MINIMUM_MIN..=cdc::MINIMUM_MAX).contains(&min_size), "chunker min_size out of range");
        assert!((cdc::AVERAGE_MIN..=cdc::AVERAGE_MAX).contains(&avg_size), "chunker avg_size out of range");
        assert!((cdc::MAXIMUM_MIN..=cdc::MAXIMUM_MAX).contains(&max_size), "chunker max_size out of range");
        let bits = cdc::logarithm2(avg_size);
        let normalization = cdc::Normalization::Level1.bits();
        let (gear, gear_ls) = cdc::get_gear_with_seed(0);
        Cutter {
            min_size: min_size as usize,
            avg_size: avg_size as usize,
            max_size: max_size as usize,
            mask_s: cdc::MASKS[(bits + normalization) as usize],
            mask_l: cdc::MASKS[(bits - normalization) as usize],
            gear,
            gear_ls,
        }
    }

    /// Rolls the gear hash over byte pairs `pair..end` of `data`, testing `mask` after each byte as
    /// `cut_gear` does; returns the cut when one comes.
    #[inline(always)]
    fn roll(&self, data: &[u8], pair: &mut usize, hash: &mut u64, end: usize, mask: u64) -> Option<usize> {
        let (gear, gear_ls, mask_ls) = (&*self.gear, &*self.gear_ls, mask << 1);
        while *pair < end {
            let a = *pair * 2;
            *hash = (*hash << 2).wrapping_add(gear_ls[data[a] as usize]);
            if *hash & mask_ls == 0 {
                return Some(a);
            }
            *hash = hash.wrapping_add(gear[data[a + 1] as usize]);
            if *hash & mask == 0 {
                return Some(a + 1);
            }
            *pair += 1;
        }
        None
    }

    fn start(&self) -> Scan {
        Scan { pair: self.min_size / 2, hash: 0 }
    }

    /// Looks for the end of the chunk whose bytes so far are `data` (`ended`: the file has no more);
    /// returns its length, or `None` when the cut lies beyond `data`. The result is the one
    /// `fastcdc::v2020::cut_gear` gives for the chunk's start with up to `max_size` bytes behind it.
    fn scan(&self, scan: &mut Scan, data: &[u8], ended: bool) -> Option<usize> {
        let n = data.len();
        if ended && n <= self.min_size {
            return Some(n);
        }
        // cut_gear looks at byte pairs (2i, 2i+1) for i below half the bytes it has, up to max_size:
        // with the small mask below avg_size, the large one above.
        let pairs = n.min(self.max_size) / 2;
        let mut hash = scan.hash;
        let mut pair = scan.pair;
        let small_end = (self.avg_size / 2).min(pairs);
        if let Some(cut) = self.roll(data, &mut pair, &mut hash, small_end, self.mask_s) {
            return Some(cut);
        }
        if let Some(cut) = self.roll(data, &mut pair, &mut hash, pairs, self.mask_l) {
            return Some(cut);
        }
        scan.hash = hash;
        scan.pair = pair;
        if ended || n >= self.max_size {
            // No cut point: the chunk is all there is, or as large as allowed.
            Some(n.min(self.max_size))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::pack::BlobReader;
    use crate::repo::Repository;
    use crate::source::Meta;
    use crate::storage::filesystem::FilesystemStorage;

    struct Events(std::vec::IntoIter<Event>);

    impl EventSource for Events {
        fn next_event(&mut self) -> Result<Event, SourceError> {
            Ok(self.0.next().unwrap_or(Event::End))
        }
    }

    fn meta(name: &str, kind: EntryKind) -> Meta {
        Meta { name: name.into(), kind, mode: 0o644, uid: 0, gid: 0, mtime_ns: 0, size: 0, rdev: 0, target: Vec::new(), xattrs: Vec::new(), ctime_ns: 0, ino: 0 }
    }

    /// Pseudo-random bytes with runs of zeros (which hit `max_size`) and of a short repeated pattern.
    fn content(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 23 {
                0 => out.extend(std::iter::repeat_n(0u8, (x >> 8) as usize % 9000)),
                1 => out.extend(b"INSERT INTO t VALUES (1,'x');".iter().cycle().take((x >> 8) as usize % 3000)),
                _ => out.extend_from_slice(&x.to_le_bytes()),
            }
        }
        out.truncate(len);
        out
    }

    /// What StreamCDC, as the archiver used it before, makes of `data`.
    fn reference(data: &[u8], params: &ChunkerParams) -> Vec<Id> {
        fastcdc::v2020::StreamCDC::new(data, params.min_size, params.avg_size, params.max_size)
            .map(|c| Id::of(&c.unwrap().data))
            .collect()
    }

    #[test]
    fn chunks_match_streamcdc_for_any_piece_sizes_and_read_back() {
        let dir = std::env::temp_dir().join(format!("sv-archiver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut repo = Repository::init(Arc::new(FilesystemStorage::open(&dir).unwrap()), &[]).unwrap();
        let params = ChunkerParams { min_size: 1024, avg_size: 4096, max_size: 16384 };
        repo.config.chunker = params.clone();
        let (min, avg, max) = (1024, 4096, 16384);
        let sizes = [0, 1, 2, min - 1, min, min + 1, avg - 1, avg, avg + 1, max - 1, max, max + 1, 2 * max + 3, 300_001, 1_000_000];
        let piece_sizes = [1, 7, 1000, 4097, 65536, 1 << 20];
        let mut events = vec![Event::Dir(meta("", EntryKind::Dir))];
        let mut files = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            for (j, &piece) in piece_sizes.iter().enumerate() {
                let data = content(len, (i * 100 + j) as u64 + 1);
                let name = format!("f{i:02}-{j}");
                events.push(Event::File(meta(&name, EntryKind::File)));
                events.extend(data.chunks(piece).map(|p| Event::Data(p.to_vec())));
                events.push(Event::FileEnd);
                files.push((name, data));
            }
        }
        events.push(Event::DirEnd);
        let mut index = Index::temporary().unwrap();
        let mut archiver = Archiver::new(&mut index, &repo, Vec::new());
        let root = archiver.archive(&mut Events(events.into_iter()), &mut CacheLink::default()).unwrap().root;
        archiver.finish().unwrap();

        let index = repo.load_index().unwrap();
        let mut reader = BlobReader::new(&repo, &index, None).unwrap();
        let tree: Tree = serde_json::from_slice(&reader.read(&root.subtree.unwrap()).unwrap()).unwrap();
        assert_eq!(tree.nodes.len(), files.len());
        for (node, (name, data)) in tree.nodes.iter().zip(&files) {
            assert_eq!(node.name, name.as_bytes());
            assert_eq!(node.size, data.len() as u64);
            assert_eq!(node.content, reference(data, &params), "chunks of {name}");
            let mut restored = Vec::new();
            for id in &node.content {
                restored.extend(reader.read(id).unwrap());
            }
            assert!(restored == *data, "content of {name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
