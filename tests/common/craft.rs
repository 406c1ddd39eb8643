//! Repositories written as an attacker with write access to the storage could write them: through the
//! library's own writer, with trees, manifests and index entries no backup would produce.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stackvault::repo::format::{Node, SourceRecord, Summary, Tree};
use stackvault::repo::packindex::{entry_length, PackIndex, PackedBlob};
use stackvault::repo::pack::{tar_header, Packer, TAR_BLOCK};
use stackvault::repo::{BlobKind, Id, Repository, Snapshot};
use stackvault::source::EntryKind;
use stackvault::storage::filesystem::FilesystemStorage;
use stackvault::storage::{Key, ObjectKind};

pub fn node(name: &[u8], kind: EntryKind) -> Node {
    Node { name: name.to_vec(), kind, mode: 0o755, uid: 0, gid: 0, mtime_ns: 0, size: 0, content: vec![], subtree: None, target: vec![], rdev: 0, xattrs: vec![] }
}

pub fn dir_node(name: &[u8], subtree: Id) -> Node {
    Node { subtree: Some(subtree), ..node(name, EntryKind::Dir) }
}

pub fn file_node(name: &[u8], content: Vec<Id>, size: u64) -> Node {
    Node { content, size, mode: 0o644, ..node(name, EntryKind::File) }
}

pub fn link_node(name: &[u8], kind: EntryKind, target: &[u8]) -> Node {
    Node { target: target.to_vec(), ..node(name, kind) }
}

/// A repository being crafted; `finish` writes its one snapshot.
pub struct Craft {
    pub dir: PathBuf,
    pub repo: Repository,
    packer: Packer,
    added: HashSet<Id>,
    /// Packs written by hand, beside the packer's.
    extra_packs: Vec<Id>,
}

impl Craft {
    /// An empty plaintext repository at `work/repo`.
    pub fn new(work: &Path) -> Craft {
        let dir = work.join("repo");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = Repository::init(Arc::new(FilesystemStorage::open(&dir).unwrap()), &[]).unwrap();
        // Nothing here reads the index back while crafting: the packs' indexes go nowhere.
        let packer = Packer::start(&repo, vec![], std::sync::mpsc::channel().0);
        Craft { dir, repo, packer, added: HashSet::new(), extra_packs: Vec::new() }
    }

    fn add(&mut self, kind: BlobKind, bytes: Vec<u8>) -> Id {
        let id = Id::of(&bytes);
        if self.added.insert(id) {
            self.packer.add(id, kind, bytes).unwrap();
        }
        id
    }

    pub fn data(&mut self, bytes: &[u8]) -> Id {
        self.add(BlobKind::Data, bytes.to_vec())
    }

    pub fn tree(&mut self, nodes: Vec<Node>) -> Id {
        self.raw_tree(serde_json::to_vec(&Tree { nodes }).unwrap())
    }

    /// A tree blob of exactly these bytes, whatever they hold.
    pub fn raw_tree(&mut self, json: Vec<u8>) -> Id {
        self.add(BlobKind::Tree, json)
    }

    /// A tree blob of `len` bytes (`{"nodes":[` spaces `]}`), streamed into a pack of its own so that
    /// not even the crafting holds it; its index entry says it holds `indexed_len` bytes.
    pub fn padded_tree(&mut self, len: u64, indexed_len: u64) -> Id {
        let (head, tail) = (&b"{\"nodes\":["[..], &b"]}"[..]);
        let spaces = len - (head.len() + tail.len()) as u64;
        let json = || head.chain(std::io::repeat(b' ').take(spaces)).chain(tail);
        let mut hasher = blake3::Hasher::new();
        std::io::copy(&mut json(), &mut hasher).unwrap();
        let id = Id(*hasher.finalize().as_bytes());
        let padding = (TAR_BLOCK as u64 - len % TAR_BLOCK as u64) % TAR_BLOCK as u64;
        let header = tar_header(&id, BlobKind::Tree, len);
        let mut entry = (&header[..]).chain(json()).chain(std::io::repeat(0).take(padding));
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        encoder.set_pledged_src_size(Some(TAR_BLOCK as u64 + len + padding)).unwrap();
        encoder.include_contentsize(true).unwrap();
        std::io::copy(&mut entry, &mut encoder).unwrap();
        let mut pack = encoder.finish().unwrap();
        let frame_len = pack.len() as u64;
        pack.write_all(&zstd::bulk::compress(&[0u8; 2 * TAR_BLOCK], 3).unwrap()).unwrap();
        let pack_id = Id::of(&pack);
        let storage = &self.repo.storage;
        storage.put(&Key::new(ObjectKind::Pack, pack_id.hex()), &pack).unwrap();
        let blob = PackedBlob {
            id,
            kind: BlobKind::Tree,
            frame_offset: 0,
            frame_length: frame_len as u32,
            frame_plain_length: entry_length(len) as u32,
            entry_offset: 0,
            plain_length: indexed_len as u32,
        };
        let index = PackIndex { pack: pack_id, size: pack.len() as u64, blobs: vec![blob] };
        storage.put(&Key::new(ObjectKind::Index, pack_id.hex()), &index.encode(self.repo.config.version)).unwrap();
        self.extra_packs.push(pack_id);
        id
    }

    /// Stores what was added and a snapshot whose one source, `path /crafted`, has `root_tree` as its
    /// root's tree and declares `entries` and `bytes`. Returns the snapshot's id.
    pub fn finish(self, root_tree: Id, entries: u64, bytes: u64) -> String {
        self.finish_with_root(dir_node(b"", root_tree), entries, bytes)
    }

    /// As `finish`, with any root node.
    pub fn finish_with_root(mut self, root: Node, entries: u64, bytes: u64) -> String {
        let report = self.packer.finish().unwrap();
        // Built from JSON, as a reader meets it: optional fields a newer build adds need no mention.
        let source: SourceRecord =
            serde_json::from_value(serde_json::json!({ "kind": "path", "name": "/crafted", "root": root, "entries": entries, "bytes": bytes })).unwrap();
        let mut packs: Vec<Id> = report.packs.into_iter().chain(self.extra_packs).collect();
        packs.sort();
        let snapshot = Snapshot {
            version: self.repo.config.version,
            time: "2026-01-01T00:00:00.000Z".into(),
            stack: "crafted".into(),
            hostname: "attacker".into(),
            program: "crafted".into(),
            sources: vec![source],
            packs,
            summary: Summary { entries, bytes, ..Summary::default() },
        };
        self.repo.save_snapshot(&snapshot).unwrap().hex()
    }
}

/// Stores beside `snapshot` (in the plaintext repository at `repo_dir`) a copy whose first database
/// dump is `edit`ed, its new blob packed as a backup would pack it: the copy verifies (every object
/// present, every hash right), yet its dump is not the one taken. Returns the copy's id.
pub fn alter_dump(repo_dir: &Path, snapshot: &str, edit: impl Fn(Vec<u8>) -> Vec<u8>) -> String {
    let repo = Repository::open(Arc::new(FilesystemStorage::open(repo_dir).unwrap())).unwrap();
    let (_, mut manifest) = repo.find_snapshot(snapshot).unwrap();
    let index = repo.load_index().unwrap();
    let mut reader = stackvault::repo::pack::BlobReader::new(&repo, &index, None).unwrap();
    let source = manifest.sources.iter_mut().find(|s| s.dump.as_ref().is_some_and(|d| d.database.is_some())).expect("a database dump");
    let mut dump = Vec::new();
    for chunk in &source.root.content {
        dump.extend(reader.read(chunk).unwrap());
    }
    let altered = edit(dump);
    let id = Id::of(&altered);
    let mut packer = Packer::start(&repo, vec![], std::sync::mpsc::channel().0);
    packer.add(id, BlobKind::Data, altered.clone()).unwrap();
    let report = packer.finish().unwrap();
    manifest.summary.bytes = manifest.summary.bytes - source.bytes + altered.len() as u64;
    source.bytes = altered.len() as u64;
    source.root.content = vec![id];
    source.root.size = altered.len() as u64;
    manifest.packs.extend(report.packs);
    manifest.packs.sort();
    manifest.packs.dedup();
    repo.save_snapshot(&manifest).unwrap().hex()
}
