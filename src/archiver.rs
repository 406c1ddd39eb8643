//! Turns a tree's event stream into repository objects: file content is cut by FastCDC into data blobs,
//! each directory becomes a tree blob, and only blobs the repository lacks go to the packer.

use std::collections::HashSet;
use std::io::{self, Read};

use crate::repo::format::{ChunkerParams, Node, Tree, Xattr};
use crate::repo::pack::Packer;
use crate::repo::{BlobKind, Id, Index, RepoError};
use crate::source::{EntryKind, Event, EventSource, Meta, SourceError};

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
}

pub struct Archiver<'a> {
    index: &'a Index,
    packer: Packer,
    chunker: ChunkerParams,
    /// New blobs handed to the packer in this run.
    queued: HashSet<Id>,
    /// Packs (positions in the index) holding existing blobs this run referenced.
    reused_packs: HashSet<u32>,
    pub new_bytes: u64,
}

impl<'a> Archiver<'a> {
    pub fn new(index: &'a Index, packer: Packer, chunker: ChunkerParams) -> Self {
        Archiver { index, packer, chunker, queued: HashSet::new(), reused_packs: HashSet::new(), new_bytes: 0 }
    }

    /// Consumes one whole tree; returns the root directory as a node whose subtree holds the rest.
    pub fn archive(&mut self, source: &mut dyn EventSource) -> Result<(Node, TreeStats), ArchiveError> {
        let mut stats = TreeStats::default();
        let mut open: Vec<(Meta, Vec<Node>)> = Vec::new();
        match source.next_event()? {
            Event::Dir(meta) => open.push((meta, Vec::new())),
            other => return Err(SourceError::Malformed(format!("a tree must start with its root directory, not {other:?}")).into()),
        }
        let root = loop {
            let node = match source.next_event()? {
                Event::Dir(meta) => {
                    open.push((meta, Vec::new()));
                    continue;
                }
                Event::DirEnd => {
                    let (meta, nodes) = open.pop().expect("a directory is open");
                    let tree = serde_json::to_vec(&Tree { nodes }).expect("trees serialize");
                    let id = Id::of(&tree);
                    self.store(id, BlobKind::Tree, tree)?;
                    let node = node_from(meta, Vec::new(), Some(id));
                    if open.is_empty() {
                        break node;
                    }
                    node
                }
                Event::File(meta) => {
                    let (content, size) = self.file_content(source)?;
                    stats.bytes += size;
                    let mut node = node_from(meta, content, None);
                    // What was read is what the snapshot holds, even if the file changed meanwhile.
                    node.size = size;
                    node
                }
                Event::Leaf(meta) => node_from(meta, Vec::new(), None),
                other => return Err(SourceError::Malformed(format!("unexpected {other:?} in a directory")).into()),
            };
            stats.entries += 1;
            open.last_mut().expect("a directory is open").1.push(node);
        };
        match source.next_event()? {
            Event::End => Ok((root, stats)),
            other => Err(SourceError::Malformed(format!("expected the end of the tree, got {other:?}")).into()),
        }
    }

    fn file_content(&mut self, source: &mut dyn EventSource) -> Result<(Vec<Id>, u64), ArchiveError> {
        let ChunkerParams { min_size, avg_size, max_size } = self.chunker;
        let mut reader = FileContent { source, piece: Vec::new(), pos: 0, ended: false, failure: None };
        let mut content = Vec::new();
        let mut size = 0;
        let chunks = fastcdc::v2020::StreamCDC::new(&mut reader, min_size, avg_size, max_size);
        let mut failed = None;
        for chunk in chunks {
            match chunk {
                Ok(chunk) => {
                    let id = Id::of(&chunk.data);
                    size += chunk.length as u64;
                    content.push(id);
                    self.store(id, BlobKind::Data, chunk.data)?;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            return Err(reader.failure.take().map(ArchiveError::Source).unwrap_or_else(|| SourceError::Stream(io::Error::other(e.to_string())).into()));
        }
        Ok((content, size))
    }

    fn store(&mut self, id: Id, kind: BlobKind, data: Vec<u8>) -> Result<(), RepoError> {
        if let Some(location) = self.index.get(&id) {
            self.reused_packs.insert(location.pack);
        } else if self.queued.insert(id) {
            if kind == BlobKind::Data {
                self.new_bytes += data.len() as u64;
            }
            self.packer.add(id, kind, data)?;
        }
        Ok(())
    }

    /// Stores what is still queued; returns the packs written and the ids of every pack the
    /// archived trees reference.
    pub fn finish(self) -> Result<(crate::repo::pack::PackReport, Vec<Id>), RepoError> {
        let report = self.packer.finish()?;
        let mut packs: Vec<Id> = self.reused_packs.iter().map(|p| self.index.packs[*p as usize].0).collect();
        packs.extend(report.packs.iter().map(|p| p.pack));
        packs.sort();
        packs.dedup();
        Ok((report, packs))
    }
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

/// One file's content as a `Read`, pulling `Data` events up to the file's end.
struct FileContent<'s> {
    source: &'s mut dyn EventSource,
    piece: Vec<u8>,
    pos: usize,
    ended: bool,
    /// The source's own error, kept whole; the chunker only passes io errors through.
    failure: Option<SourceError>,
}

impl Read for FileContent<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.piece.len() {
            if self.ended {
                return Ok(0);
            }
            match self.source.next_event() {
                Ok(Event::Data(piece)) => {
                    self.piece = piece;
                    self.pos = 0;
                }
                Ok(Event::FileEnd) => self.ended = true,
                Ok(other) => {
                    self.failure = Some(SourceError::Malformed(format!("unexpected {other:?} inside a file")));
                    return Err(io::Error::other("malformed tree stream"));
                }
                Err(e) => {
                    let message = e.to_string();
                    self.failure = Some(e);
                    return Err(io::Error::other(message));
                }
            }
        }
        let n = buf.len().min(self.piece.len() - self.pos);
        buf[..n].copy_from_slice(&self.piece[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
