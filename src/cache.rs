//! The files cache: for each source, the metadata stamp and content ids of every regular file in the
//! last snapshot, kept on the sidecar's own disk. With it the next run reads only files whose stamp
//! changed. It cannot live in the repository: trees are encrypted and the sidecar holds no identity.
//! Losing it costs one full read, never correctness: every entry is checked against the index first.
//!
//! It is a stream, never held whole: records in walk order (depth first, names sorted by their
//! bytes: [`walk_order`]), written while a source is archived and read back, next time, alongside
//! the walk by merging (a [`CacheCursor`] per reader). Memory stays the same for 100 files or 10
//! million. Record: path (u32 LE length, bytes), size u64, mtime_ns i64, ctime_ns i64, inode u64,
//! blob count u32, then the 32-byte ids; the whole zstd-compressed, after a magic line.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::repo::{Id, Index};
use crate::source::walk::WalkMerge;
use crate::source::Stamp;

/// The first bytes of a cache file of this layout; any other file is taken for an empty cache.
const MAGIC: &[u8; 16] = b"stackvault-fc-2\n";
/// A path longer than this is no path a walk produced: the file is damaged.
const MAX_PATH: usize = 1 << 16;
/// Likewise for a file's blob count (a 16 TiB file at 64 KiB chunks has 2^28).
const MAX_BLOBS: usize = 1 << 28;

/// One regular file of the last snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    /// Path below the source's root, `/`-separated, raw bytes (empty for a single-file source).
    pub path: Vec<u8>,
    pub stamp: Stamp,
    pub content: Vec<Id>,
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

    /// A reader over the cache, from its start. Entries whose blobs the index lacks are skipped; a
    /// missing or unreadable cache reads as empty.
    pub fn cursor<'i>(&self, index: &'i Index) -> CacheCursor<'i> {
        let input = File::open(&self.path).ok().and_then(|f| {
            let mut magic = [0u8; MAGIC.len()];
            let mut decoder = zstd::stream::read::Decoder::new(f).ok()?;
            decoder.read_exact(&mut magic).ok().filter(|()| magic == *MAGIC)?;
            Some(BufReader::with_capacity(256 << 10, decoder))
        });
        WalkMerge::new(CacheRecords { input, index }, |file| &file.path)
    }

    /// A writer for the next run's cache, at a temporary name until [`CacheWriter::commit`].
    pub fn writer(&self) -> io::Result<CacheWriter> {
        let dir = self.path.parent().expect("cache paths have a parent");
        std::fs::create_dir_all(dir)?;
        self.remove_abandoned();
        let tmp = self.path.with_extension(format!("tmp-{}", std::process::id()));
        let mut encoder = zstd::stream::write::Encoder::new(BufWriter::new(File::create(&tmp)?), 3)?;
        encoder.write_all(MAGIC)?;
        Ok(CacheWriter { encoder: Some(encoder), tmp, path: self.path.clone() })
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
            let pid = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok());
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
    input: Option<BufReader<zstd::stream::read::Decoder<'static, BufReader<File>>>>,
    index: &'i Index,
}

impl Iterator for CacheRecords<'_> {
    type Item = CachedFile;

    fn next(&mut self) -> Option<CachedFile> {
        loop {
            let input = self.input.as_mut()?;
            match read_record(input) {
                Ok(Some(entry)) if entry.content.iter().all(|id| self.index.contains(id)) => return Some(entry),
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
    for _ in 0..count {
        let mut id = [0u8; 32];
        input.read_exact(&mut id)?;
        content.push(Id(id));
    }
    Ok(Some(CachedFile { path, stamp, content }))
}

/// Writes the next run's cache as a source is archived. Dropped without `commit`, it leaves nothing.
pub struct CacheWriter {
    encoder: Option<zstd::stream::write::Encoder<'static, BufWriter<File>>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl CacheWriter {
    /// Adds the next file, in walk order.
    pub fn add(&mut self, file: &CachedFile) -> io::Result<()> {
        let out = self.encoder.as_mut().expect("not committed");
        out.write_all(&(file.path.len() as u32).to_le_bytes())?;
        out.write_all(&file.path)?;
        let Stamp { size, mtime_ns, ctime_ns, ino } = file.stamp;
        for v in [size, mtime_ns as u64, ctime_ns as u64, ino] {
            out.write_all(&v.to_le_bytes())?;
        }
        out.write_all(&(file.content.len() as u32).to_le_bytes())?;
        for id in &file.content {
            out.write_all(&id.0)?;
        }
        Ok(())
    }

    /// Makes this the source's cache (temporary name, then rename). Called once the snapshot that the
    /// cache describes is stored.
    pub fn commit(mut self) -> io::Result<()> {
        let encoder = self.encoder.take().expect("committed once");
        encoder.finish()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
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
    fn a_cache_streams_back_in_order_and_skips_what_the_index_lacks() {
        let dir = std::env::temp_dir().join(format!("sv-cache-{}", std::process::id()));
        let cache = FilesCache::new(dir.join("repo").join("c.files.zst"));
        let present = Id::of(b"present");
        let mut index = Index::default();
        index.add(&crate::repo::packindex::PackIndex {
            pack: Id::of(b"pack"),
            size: 1,
            blobs: vec![crate::repo::packindex::PackedBlob {
                id: present,
                kind: crate::repo::BlobKind::Data,
                frame_offset: 0,
                frame_length: 1,
                frame_plain_length: 1024,
                entry_offset: 0,
                plain_length: 1,
            }],
        });
        let stamp = |n| Stamp { size: n, mtime_ns: -(n as i64), ctime_ns: 3, ino: 4 };
        let files = [
            CachedFile { path: b"a/x".to_vec(), stamp: stamp(1), content: vec![present] },
            CachedFile { path: b"a/y".to_vec(), stamp: stamp(2), content: vec![Id::of(b"gone")] },
            CachedFile { path: b"b\xff".to_vec(), stamp: stamp(3), content: vec![] },
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
        assert!(cache.cursor(&index).next().is_none(), "an uncommitted cache is no cache");
        let mut writer = cache.writer().unwrap();
        for f in &files {
            writer.add(f).unwrap();
        }
        writer.commit().unwrap();

        let mut cursor = cache.cursor(&index);
        assert_eq!(cursor.lookup(b"a/x"), Some(&files[0]));
        assert_eq!(cursor.lookup(b"a/y"), None, "its blob is gone from the index");
        assert_eq!(cursor.lookup(b"a/z"), None);
        assert_eq!(cursor.lookup(b"b\xff"), Some(&files[2]));
        assert_eq!(cursor.lookup(b"c"), None);
        let all: Vec<_> = cache.cursor(&index).collect();
        assert_eq!(all, vec![files[0].clone(), files[2].clone()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
