//! The files cache: for each source, the metadata stamp and content ids of every regular file in the
//! last snapshot, kept on the sidecar's own disk. With it the next run reads only files whose stamp
//! changed. It cannot live in the repository: trees are encrypted and the sidecar holds no identity.
//! Losing it costs one full read, never correctness: every entry is checked against the index first.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::repo::{Id, Index};
use crate::source::Stamp;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedFile {
    /// Path below the source's root, `/`-separated, hex (names are bytes).
    pub path: String,
    pub stamp: Stamp,
    pub content: Vec<Id>,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    files: Vec<CachedFile>,
}

const CACHE_VERSION: u32 = 1;

/// The cache of one source of one repository.
pub struct FilesCache {
    path: PathBuf,
    files: HashMap<Vec<u8>, (Stamp, Vec<Id>)>,
}

impl FilesCache {
    /// Where the cache of `source` (e.g. `volume:demo_db`) of repository `repo_id` lives below `dir`.
    pub fn path(dir: &Path, repo_id: &str, source: &str) -> PathBuf {
        dir.join(repo_id).join(format!("{}.json.zst", &blake3::hash(source.as_bytes()).to_hex()[..32]))
    }

    /// Loads the cache, keeping only entries whose every blob the index still has. A missing or
    /// unreadable cache is an empty one.
    pub fn load(path: PathBuf, index: &Index) -> Self {
        let files = std::fs::File::open(&path)
            .ok()
            .and_then(|f| zstd::stream::read::Decoder::new(f).ok())
            .and_then(|d| serde_json::from_reader::<_, CacheFile>(BufReader::new(d)).ok())
            .filter(|c| c.version == CACHE_VERSION)
            .map(|c| c.files)
            .unwrap_or_default();
        let files = files
            .into_iter()
            .filter(|f| f.content.iter().all(|id| index.contains(id)))
            .filter_map(|f| Some((hex::decode(&f.path).ok()?, (f.stamp, f.content))))
            .collect();
        FilesCache { path, files }
    }

    pub fn stamps(&self) -> impl Iterator<Item = (&[u8], &Stamp)> {
        self.files.iter().map(|(p, (s, _))| (p.as_slice(), s))
    }

    pub fn stamp(&self, path: &[u8]) -> Option<Stamp> {
        self.files.get(path).map(|(s, _)| *s)
    }

    pub fn content(&self, path: &[u8]) -> Option<&[Id]> {
        self.files.get(path).map(|(_, c)| c.as_slice())
    }

    /// Replaces the cache with the files of the snapshot just written (write to a temporary name, then
    /// rename). Failing to write a cache only costs speed next time, so the error is the caller's to
    /// report as a warning.
    pub fn save(&self, files: Vec<CachedFile>) -> std::io::Result<()> {
        let dir = self.path.parent().expect("cache paths have a parent");
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("tmp");
        let mut encoder = zstd::stream::write::Encoder::new(BufWriter::new(std::fs::File::create(&tmp)?), 3)?;
        serde_json::to_writer(&mut encoder, &CacheFile { version: CACHE_VERSION, files })?;
        encoder.finish()?.flush()?;
        std::fs::rename(&tmp, &self.path)
    }
}
