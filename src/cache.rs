//! The files cache: for each source, the metadata stamp, content ids and the packs holding them of
//! every regular file in the last snapshot, kept on the sidecar's own disk. With it the next run reads
//! only files whose stamp changed, and looks up none of the unchanged files' blobs: their packs are
//! named here. It cannot live in the repository: trees are encrypted and the sidecar holds no
//! identity. Losing it costs one full read, never correctness: an entry is used only if every pack it
//! names is in the index.
//!
//! It is a stream, never held whole: records in walk order (depth first, names sorted by their
//! bytes: [`walk_order`]), written while a source is archived and read back, next time, alongside
//! the walk by merging (a [`CacheCursor`] per reader). Memory stays the same for 100 files or 10
//! million. Record: path (u32 LE length, bytes), size u64, mtime_ns i64, ctime_ns i64, inode u64,
//! blob count u32, then per blob its 32-byte id and the 32-byte id of its pack (zeros: not known),
//! xattr count u32, then per xattr its name and value (u32 LE length, bytes); the whole
//! zstd-compressed, after a magic line. The xattrs are kept because an unchanged file's are not read
//! again (its stamp's ctime changes with them).
//!
//! A blob stored by the run that writes the cache gets its pack only once the pack is stored, after
//! the file was recorded: [`CacheWriter::commit`] fills those in from what the run stored.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::repo::index::KnownPacks;
use crate::repo::Id;
use crate::source::walk::WalkMerge;
use crate::source::Stamp;

/// The first bytes of a cache file of this layout; any other file is taken for an empty cache.
const MAGIC: &[u8; 16] = b"stackvault-fc-4\n";
/// A path longer than this is no path a walk produced: the file is damaged.
const MAX_PATH: usize = 1 << 16;
/// Likewise for a file's blob count (a 16 TiB file at 64 KiB chunks has 2^28).
const MAX_BLOBS: usize = 1 << 28;
/// And its xattrs (Linux lists at most 64 KiB of names).
const MAX_XATTRS: usize = 1 << 16;

/// One regular file of the last snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    /// Path below the source's root, `/`-separated, raw bytes (empty for a single-file source).
    pub path: Vec<u8>,
    pub stamp: Stamp,
    pub content: Vec<Id>,
    /// The pack holding each blob of `content`, where known.
    pub packs: Vec<Option<Id>>,
    /// (name, value), sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The cache of one source of one repository.
pub struct FilesCache {
    path: PathBuf,
}

impl FilesCache {
    /// Where the cache of `source` (e.g. `volume:demo_db`) of repository `repo_id` lives below `dir`.
    pub fn path(dir: &Path, repo_id: &str, source: &str) -> PathBuf {
        dir.join(repo_id).join(format!("{}.files.zst", &blake3::hash(source.as_bytes()).to_hex()[..32]))
    }

    pub fn new(path: PathBuf) -> Self {
        FilesCache { path }
    }

    /// A reader over the cache, from its start. Entries that name a pack not in `packs`, or none, are
    /// skipped; a missing or unreadable cache reads as empty.
    pub fn cursor<'i>(&self, packs: &'i KnownPacks) -> CacheCursor<'i> {
        WalkMerge::new(CacheRecords { input: records_at(&self.path).ok(), packs }, |file| &file.path)
    }

    /// A writer for the next run's cache, at a temporary name until [`CacheWriter::commit`].
    pub fn writer(&self) -> io::Result<CacheWriter> {
        let dir = self.path.parent().expect("cache paths have a parent");
        std::fs::create_dir_all(dir)?;
        self.remove_abandoned();
        let tmp = self.path.with_extension(format!("tmp-{}", std::process::id()));
        Ok(CacheWriter { encoder: Some(encoder_at(&tmp)?), tmp, path: self.path.clone(), unresolved: false })
    }
}

impl FilesCache {
    /// Temporary caches of runs that were killed (SIGKILL, or SIGTERM, which exits without unwinding):
    /// named after their process, which no longer runs.
    fn remove_abandoned(&self) {
        let Some(prefix) = self.path.with_extension("tmp-").file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
        let Ok(listing) = std::fs::read_dir(self.path.parent().expect("cache paths have a parent")) else { return };
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `<stem>.tmp-<pid>`, or its copy being resolved, `<stem>.tmp-<pid>-resolved`.
            let pid = name.strip_prefix(&prefix).and_then(|p| p.trim_end_matches("-resolved").parse::<u32>().ok());
            if pid.is_some_and(|pid| crate::process_start(pid).is_none()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A cache read forward, in walk order: iterated for the stamps, or looked up along a walk.
pub type CacheCursor<'i> = WalkMerge<CachedFile, CacheRecords<'i>>;

/// The usable records of a cache file, in order.
pub struct CacheRecords<'i> {
    input: Option<Records>,
    packs: &'i KnownPacks,
}

impl Iterator for CacheRecords<'_> {
    type Item = CachedFile;

    fn next(&mut self) -> Option<CachedFile> {
        loop {
            let input = self.input.as_mut()?;
            match read_record(input) {
                Ok(Some(entry)) if entry.packs.iter().all(|pack| pack.is_some_and(|p| self.packs.contains_key(&p))) => return Some(entry),
                Ok(Some(_)) => continue,
                // The end, or a damaged tail: what came before stays usable.
                Ok(None) | Err(_) => {
                    self.input = None;
                    return None;
                }
            }
        }
    }
}

fn read_record(input: &mut impl Read) -> io::Result<Option<CachedFile>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("files cache: {what}"));
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_PATH {
        return Err(bad("a path longer than any walk makes"));
    }
    let mut path = vec![0u8; len];
    input.read_exact(&mut path)?;
    let mut fixed = [0u8; 36];
    input.read_exact(&mut fixed)?;
    let field = |i: usize| u64::from_le_bytes(fixed[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let stamp = Stamp { size: field(0), mtime_ns: field(1) as i64, ctime_ns: field(2) as i64, ino: field(3) };
    let count = u32::from_le_bytes(fixed[32..36].try_into().expect("4 bytes")) as usize;
    if count > MAX_BLOBS {
        return Err(bad("more blobs than any file has"));
    }
    let mut content = Vec::with_capacity(count.min(1024));
    let mut packs = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let mut ids = [0u8; 64];
        input.read_exact(&mut ids)?;
        content.push(Id(ids[..32].try_into().unwrap()));
        packs.push(Some(Id(ids[32..].try_into().unwrap())).filter(|pack| pack.0 != [0; 32]));
    }
    let mut count = [0u8; 4];
    input.read_exact(&mut count)?;
    let count = u32::from_le_bytes(count) as usize;
    if count > MAX_XATTRS {
        return Err(bad("more xattrs than a file can have"));
    }
    let mut bytes = |limit: usize| -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        input.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > limit {
            return Err(bad("an xattr larger than Linux allows"));
        }
        let mut value = vec![0u8; len];
        input.read_exact(&mut value)?;
        Ok(value)
    };
    let mut xattrs = Vec::with_capacity(count);
    for _ in 0..count {
        xattrs.push((bytes(255)?, bytes(1 << 16)?));
    }
    Ok(Some(CachedFile { path, stamp, content, packs, xattrs }))
}

/// The records of a cache file, after its magic line.
type Records = BufReader<zstd::stream::read::Decoder<'static, BufReader<File>>>;

fn records_at(path: &Path) -> io::Result<Records> {
    let mut decoder = zstd::stream::read::Decoder::new(File::open(path)?)?;
    let mut magic = [0u8; MAGIC.len()];
    decoder.read_exact(&mut magic)?;
    if magic != *MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "files cache: not a cache of this layout"));
    }
    Ok(BufReader::with_capacity(256 << 10, decoder))
}

fn encoder_at(path: &Path) -> io::Result<zstd::stream::write::Encoder<'static, BufWriter<File>>> {
    // Level 1: the cache is rewritten every run, and its size matters little.
    let mut encoder = zstd::stream::write::Encoder::new(BufWriter::new(File::create(path)?), 1)?;
    encoder.write_all(MAGIC)?;
    Ok(encoder)
}

fn write_record(out: &mut impl Write, file: &CachedFile) -> io::Result<()> {
    out.write_all(&(file.path.len() as u32).to_le_bytes())?;
    out.write_all(&file.path)?;
    let Stamp { size, mtime_ns, ctime_ns, ino } = file.stamp;
    for v in [size, mtime_ns as u64, ctime_ns as u64, ino] {
        out.write_all(&v.to_le_bytes())?;
    }
    out.write_all(&(file.content.len() as u32).to_le_bytes())?;
    for (id, pack) in file.content.iter().zip(&file.packs) {
        out.write_all(&id.0)?;
        out.write_all(&pack.map_or([0; 32], |p| p.0))?;
    }
    out.write_all(&(file.xattrs.len() as u32).to_le_bytes())?;
    for (name, value) in &file.xattrs {
        for bytes in [name, value] {
            out.write_all(&(bytes.len() as u32).to_le_bytes())?;
            out.write_all(bytes)?;
        }
    }
    Ok(())
}

/// Writes the next run's cache as a source is archived. Dropped without `commit`, it leaves nothing.
pub struct CacheWriter {
    encoder: Option<zstd::stream::write::Encoder<'static, BufWriter<File>>>,
    tmp: PathBuf,
    path: PathBuf,
    /// Whether a record names a blob without its pack (then `commit` fills them in).
    unresolved: bool,
}

impl CacheWriter {
    /// Adds the next file, in walk order.
    pub fn add(&mut self, file: &CachedFile) -> io::Result<()> {
        debug_assert_eq!(file.content.len(), file.packs.len());
        self.unresolved |= file.packs.iter().any(Option::is_none);
        write_record(self.encoder.as_mut().expect("not committed"), file)
    }

    /// Makes this the source's cache, called once the snapshot that the cache describes is stored:
    /// where a record lacks a pack, the records are copied to a second temporary file with the packs
    /// `stored` now knows filled in (a blob it does not know leaves its file to be read again next
    /// time); then renamed.
    pub fn commit(mut self, stored: &dyn Fn(&Id) -> Option<Id>) -> io::Result<()> {
        let encoder = self.encoder.take().expect("committed once");
        encoder.finish()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        if !self.unresolved {
            return self.rename(&self.tmp);
        }
        let resolved = self.tmp.with_extension(format!("{}-resolved", self.tmp.extension().and_then(|e| e.to_str()).unwrap_or("tmp")));
        let copied = (|| -> io::Result<()> {
            let mut input = records_at(&self.tmp)?;
            let mut out = encoder_at(&resolved)?;
            while let Some(mut file) = read_record(&mut input)? {
                for (id, pack) in file.content.iter().zip(file.packs.iter_mut()) {
                    *pack = pack.or_else(|| stored(id));
                }
                write_record(&mut out, &file)?;
            }
            out.finish()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            self.rename(&resolved)
        })();
        let _ = std::fs::remove_file(&self.tmp);
        if copied.is_err() {
            let _ = std::fs::remove_file(&resolved);
        }
        copied
    }

    fn rename(&self, complete: &Path) -> io::Result<()> {
        std::fs::rename(complete, &self.path)?;
        // The layout of earlier versions (`<hash>.json.zst`), which this one does not read.
        if let Some(stem) = self.path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".files.zst")) {
            let _ = std::fs::remove_file(self.path.with_file_name(format!("{stem}.json.zst")));
        }
        Ok(())
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        if self.encoder.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_streams_back_in_order_fills_in_packs_and_skips_what_the_index_lacks() {
        let dir = std::env::temp_dir().join(format!("sv-cache-{}", std::process::id()));
        let cache = FilesCache::new(dir.join("repo").join("c.files.zst"));
        let (present, stored, gone) = (Id::of(b"present"), Id::of(b"stored now"), Id::of(b"pack gone"));
        let pack = Id::of(b"pack");
        let known: KnownPacks = std::sync::Arc::new([(pack, 0)].into_iter().collect());
        let stamp = |n| Stamp { size: n, mtime_ns: -(n as i64), ctime_ns: 3, ino: 4 };
        let file = |path: &[u8], n, blobs: Vec<(Id, Option<Id>)>| CachedFile {
            path: path.to_vec(),
            stamp: stamp(n),
            content: blobs.iter().map(|b| b.0).collect(),
            packs: blobs.iter().map(|b| b.1).collect(),
            xattrs: if n == 3 { vec![(b"user.a".to_vec(), vec![0, 1]), (b"user.b".to_vec(), vec![])] } else { vec![] },
        };
        let files = [
            file(b"a/x", 1, vec![(present, Some(pack)), (stored, None)]),
            file(b"a/y", 2, vec![(present, Some(gone))]),
            file(b"a/z", 2, vec![(Id::of(b"not stored"), None)]),
            file(b"b\xff", 3, vec![]),
        ];
        // A killed run's temporary cache goes when the next run writes one.
        std::fs::create_dir_all(dir.join("repo")).unwrap();
        let abandoned = dir.join("repo").join("c.files.tmp-999999999");
        std::fs::write(&abandoned, b"partial").unwrap();
        let mut writer = cache.writer().unwrap();
        assert!(!abandoned.exists());
        for f in &files {
            writer.add(f).unwrap();
        }
        drop(writer);
        assert!(cache.cursor(&known).next().is_none(), "an uncommitted cache is no cache");
        let mut writer = cache.writer().unwrap();
        for f in &files {
            writer.add(f).unwrap();
        }
        writer.commit(&|id| (*id == stored).then_some(pack)).unwrap();
        assert_eq!(std::fs::read_dir(dir.join("repo")).unwrap().count(), 1, "no temporary file is left");

        let mut cursor = cache.cursor(&known);
        let x = file(b"a/x", 1, vec![(present, Some(pack)), (stored, Some(pack))]);
        assert_eq!(cursor.lookup(b"a/x"), Some(&x));
        assert_eq!(cursor.lookup(b"a/y"), None, "its pack is gone from the index");
        assert_eq!(cursor.lookup(b"a/z"), None, "its blob's pack is not known");
        assert_eq!(cursor.lookup(b"b\xff"), Some(&files[3]));
        assert_eq!(cursor.lookup(b"c"), None);
        let all: Vec<_> = cache.cursor(&known).collect();
        assert_eq!(all, vec![x, files[3].clone()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
