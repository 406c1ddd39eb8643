//! The rules a snapshot and its trees must follow (docs/FORMAT.md, "Limits" and "A reader's
//! obligations"), in one place: restore and verify both walk a snapshot through [`SnapshotWalk`], so a
//! snapshot that verifies is one that restores. Any byte of a repository may have been written by an
//! attacker: each tree is checked before it is used, and a walk stops as soon as a source holds more
//! than its manifest declares, however its trees are shared.

use super::format::{is_lower_hex, DumpRecord, Node, RepoConfig, Snapshot, SourceKind, SourceRecord, Tree};
use super::index::Index;
use super::pack::BlobReader;
use super::{BlobKind, Id, RepoError};
use crate::source::apply::is_safe_name;
use crate::source::EntryKind;

/// The largest tree blob (its JSON) a reader accepts and a writer produces: a directory of roughly
/// 300,000 entries. A reader holds the listing of every open directory in memory.
pub const MAX_TREE_SIZE: u64 = 64 << 20;
/// The deepest directory below a source's root (the root is level 0): restore holds a descriptor per
/// open level, and Linux paths (PATH_MAX 4096) rarely nest half as deep.
pub const MAX_DEPTH: usize = 1024;
/// Linux NAME_MAX: a longer name cannot be created.
pub const MAX_NAME: usize = 255;
/// Linux PATH_MAX without its NUL: the longest symlink target, and the longest hardlink target path.
pub const MAX_TARGET: usize = 4095;
/// Linux XATTR_SIZE_MAX.
pub const MAX_XATTR_VALUE: usize = 65536;

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check_name(name: &[u8]) -> Result<(), String> {
    if !is_safe_name(name) {
        return Err(format!("unsafe name {:?}: a name must not be empty, '.' or '..', nor contain '/' or NUL", lossy(name)));
    }
    if name.len() > MAX_NAME {
        return Err(format!("a name of {} bytes (at most {MAX_NAME})", name.len()));
    }
    Ok(())
}

/// Checks one directory listing: names safe, unique and sorted by their bytes, and each node's fields
/// consistent with its type. `max_chunk` is the config's chunker `max_size`.
pub fn check_tree(tree: &Tree, index: &Index, max_chunk: u64) -> Result<(), String> {
    for (i, node) in tree.nodes.iter().enumerate() {
        check_name(&node.name)?;
        if i > 0 && tree.nodes[i - 1].name >= node.name {
            return Err(format!("entry {:?} is repeated or out of order (names are unique and sorted by their bytes)", lossy(&node.name)));
        }
        check_node(node, index, max_chunk).map_err(|e| format!("entry {:?}: {e}", lossy(&node.name)))?;
    }
    Ok(())
}

/// The rules of one node apart from its name. A file's content blobs must be indexed data blobs whose
/// lengths add up to its size: the index is enough to tell, without reading any data.
fn check_node(node: &Node, index: &Index, max_chunk: u64) -> Result<(), String> {
    use EntryKind::*;
    let kind = node.kind;
    if node.mode > 0o7777 {
        return Err(format!("mode {:#o} has bits beyond 0o7777", node.mode));
    }
    if node.subtree.is_some() != (kind == Dir) {
        return Err("a directory must have a subtree, and nothing else may".into());
    }
    if kind != File && (node.size != 0 || !node.content.is_empty()) {
        return Err("only a file has a size or content".into());
    }
    if !matches!(kind, Char | Block) && node.rdev != 0 {
        return Err("only a device has rdev".into());
    }
    let linked = matches!(kind, Symlink | Hardlink);
    if linked == node.target.is_empty() {
        return Err("a symlink or hardlink must have a target, and nothing else may".into());
    }
    if node.target.len() > MAX_TARGET || node.target.contains(&0) {
        return Err(format!("its target must be at most {MAX_TARGET} bytes, without NUL"));
    }
    if kind == Hardlink {
        for part in node.target.split(|b| *b == b'/') {
            check_name(part).map_err(|e| format!("hardlink target {:?}: {e}", lossy(&node.target)))?;
        }
    }
    for (i, xattr) in node.xattrs.iter().enumerate() {
        let name_ok = !xattr.name.is_empty() && xattr.name.len() <= MAX_NAME && !xattr.name.contains(&0);
        if !name_ok || (i > 0 && node.xattrs[i - 1].name >= xattr.name) {
            return Err(format!("xattr {:?}: names are 1 to {MAX_NAME} bytes without NUL, unique and sorted", lossy(&xattr.name)));
        }
        if !is_lower_hex(&xattr.value) || xattr.value.len() % 2 != 0 || xattr.value.len() > 2 * MAX_XATTR_VALUE {
            return Err(format!("xattr {:?}: the value is not lower-case hex of at most {MAX_XATTR_VALUE} bytes", lossy(&xattr.name)));
        }
    }
    if let Some(subtree) = node.subtree {
        if indexed(index, &subtree)?.0 != BlobKind::Tree {
            return Err(format!("its tree {subtree} is indexed as a data blob"));
        }
    }
    let mut held: u64 = 0;
    for blob in &node.content {
        let (kind, length) = indexed(index, blob)?;
        if kind != BlobKind::Data || length == 0 || length > max_chunk {
            return Err(format!("content blob {blob} is not a data blob of 1 to {max_chunk} bytes"));
        }
        held = held.saturating_add(length);
    }
    if held != node.size {
        return Err(format!("its size says {} bytes but its content blobs hold {held}", node.size));
    }
    Ok(())
}

/// A blob's type and length by the index. Every copy must agree: a reader may read any of them, so a
/// tree checked against one copy must hold whichever is read.
fn indexed(index: &Index, blob: &Id) -> Result<(BlobKind, u64), String> {
    let locations = index.locations(blob).map_err(|e| e.to_string())?;
    let mut copies = locations.iter().map(|l| (l.blob.kind, u64::from(l.blob.plain_length)));
    let first = copies.next().ok_or_else(|| format!("blob {blob} is in no index"))?;
    match copies.find(|copy| *copy != first) {
        Some(_) => Err(format!("blob {blob} is indexed twice with different types or lengths")),
        None => Ok(first),
    }
}

/// The fixed form writers use, `2026-11-25T07:51:03.329Z`: one spelling per instant, so that
/// snapshots sort by the string.
fn is_snapshot_time(time: &str) -> bool {
    time.len() == 24 && time.as_bytes()[19] == b'.' && time.ends_with('Z') && humantime::parse_rfc3339(time).is_ok()
}

/// The manifest's own rules: a supported version, a well-formed time, sources with a valid root each
/// named once, counts that add up, and packs listed once each in order.
pub fn check_snapshot(snapshot: &Snapshot, index: &Index, config: &RepoConfig) -> Result<(), String> {
    // A manifest is never newer than its repository (docs/FORMAT.md, "Versions").
    if !(1..=config.version).contains(&snapshot.version) {
        return Err(format!("manifest version {} in a repository of version {}", snapshot.version, config.version));
    }
    if !is_snapshot_time(&snapshot.time) {
        return Err(format!("time {:?} is not of the form 2026-11-25T07:51:03.329Z", snapshot.time));
    }
    for (i, source) in snapshot.sources.iter().enumerate() {
        let root = &source.root;
        if !matches!(root.kind, EntryKind::Dir | EntryKind::File) || !root.name.is_empty() {
            return Err(format!("{}: its root must be a directory or a file, with an empty name", source.label()));
        }
        check_node(root, index, config.chunker.max_size as u64).map_err(|e| format!("{}: root: {e}", source.label()))?;
        // Dump sources came with version 3; a dump record belongs to them alone.
        if (source.kind == SourceKind::Dump) != source.dump.is_some() {
            return Err(format!("{}: a dump source has a dump record, and only a dump source", source.label()));
        }
        if source.kind == SourceKind::Dump && (snapshot.version < 3 || root.kind != EntryKind::File) {
            return Err(format!("{}: dump sources are single files, in manifests of version 3 or later", source.label()));
        }
        if let Some(dump) = &source.dump {
            dump_record_ok(dump).map_err(|e| format!("{}: {e}", source.label()))?;
        }
        // Stack and image sources came with version 4, single files; an image record is an image's.
        if (source.kind == SourceKind::Image) != source.image.is_some() {
            return Err(format!("{}: an image source has an image record, and only an image source", source.label()));
        }
        if matches!(source.kind, SourceKind::Stack | SourceKind::Image) && (snapshot.version < 4 || root.kind != EntryKind::File) {
            return Err(format!("{}: stack and image sources are single files, in manifests of version 4 or later", source.label()));
        }
        if let Some(image) = &source.image {
            let hex = image.id.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !crate::repo::format::is_lower_hex(hex) || image.reference.is_empty() {
                return Err(format!("{}: the image id must be sha256:<64 hex digits>, with a reference", source.label()));
            }
        }
        if snapshot.sources[..i].iter().any(|s| s.kind == source.kind && s.name == source.name) {
            return Err(format!("{} is listed twice", source.label()));
        }
    }
    let entries = snapshot.sources.iter().try_fold(0u64, |sum, s| sum.checked_add(s.entries));
    let bytes = snapshot.sources.iter().try_fold(0u64, |sum, s| sum.checked_add(s.bytes));
    if entries != Some(snapshot.summary.entries) || bytes != Some(snapshot.summary.bytes) {
        return Err("the summary's entries and bytes are not the sums of its sources'".into());
    }
    if snapshot.packs.windows(2).any(|w| w[0] >= w[1]) {
        return Err("its packs are not listed once each, sorted".into());
    }
    Ok(())
}

/// A dump record's values are among those docs/FORMAT.md lists, and only command dumps name a restore command.
fn dump_record_ok(dump: &DumpRecord) -> Result<(), String> {
    let formats: &[&str] = match dump.engine.as_str() {
        "mariadb" | "mysql" => &["sql", "sql-globals"],
        "postgres" => &["pg-custom", "sql-globals"],
        "command" => &["command"],
        other => return Err(format!("unknown dump engine {other:?}")),
    };
    if !formats.contains(&dump.format.as_str()) {
        return Err(format!("dump format {:?} is not one of {} dumps", dump.format, dump.engine));
    }
    if dump.restore_command.is_some() != (dump.engine == "command") {
        return Err("only a command dump records a restore command".into());
    }
    if dump.database.is_some() != matches!(dump.format.as_str(), "sql" | "pg-custom") {
        return Err("a database dump names its database, and only a database dump does".into());
    }
    Ok(())
}

/// Reads and parses a tree blob; the reader refuses one larger than [`MAX_TREE_SIZE`] before reading it.
pub fn read_tree(reader: &mut BlobReader, id: &Id) -> Result<Tree, RepoError> {
    if reader.index().get(id)?.is_some_and(|l| l.blob.kind != BlobKind::Tree) {
        return Err(RepoError::corrupt(format!("tree {id}"), "it is indexed as a data blob"));
    }
    let bytes = reader.read(id)?;
    serde_json::from_slice(&bytes).map_err(|e| RepoError::corrupt(format!("tree {id}"), e))
}

/// What a walk meets, in the order restore creates it: a directory (`Enter`) before its entries and
/// `Leave` after them, the whole ending with `End`.
#[derive(Debug)]
pub enum Step {
    /// A directory whose tree was read and checked; the root comes first.
    Enter(Node),
    Leave,
    /// A regular file: its content blobs are indexed and add up to its size.
    File(Node),
    /// Anything else; a hardlink's target names a file met earlier in this source.
    Leaf(Node),
    /// A directory whose tree this walk met before (a walk made [`once_per_tree`](SnapshotWalk::once_per_tree)
    /// only): counted and checked for depth again, not walked again.
    Shared(Node),
    End,
}

/// An open directory: its name and entries, the position of the next entry, and what its walk needs
/// to remember the tree by.
struct Frame {
    name: Vec<u8>,
    nodes: Vec<Node>,
    next: usize,
    tree: Id,
    /// The walk's counts before this tree was read.
    before: (u64, u64),
    /// Levels of directories below this one, so far.
    height: usize,
}

/// What a tree expands to: entries and bytes below it, and the levels of directories below it.
#[derive(Clone, Copy)]
struct Expanded {
    counts: (u64, u64),
    height: usize,
}

/// Walks one source of a snapshot depth-first, checking every rule on the way and counting entries
/// and content bytes against what the manifest declares. Memory holds the open directories' listings,
/// which together never exceed the declared entries.
pub struct SnapshotWalk<'r, 'a> {
    reader: &'r mut BlobReader<'a>,
    snapshot: Id,
    source: String,
    declared: (u64, u64),
    /// Entries and content bytes of the directories read so far (walked, or open to be walked).
    counted: (u64, u64),
    max_chunk: u64,
    root: Option<Node>,
    open: Vec<Frame>,
    ended: bool,
    /// The tree last read to resolve a hardlink: a run of hardlinks mostly points into one directory.
    resolved: Option<(Id, Tree)>,
    /// For a walk once per tree, the trees walked so far.
    walked: Option<std::collections::HashMap<Id, Expanded>>,
}

impl<'r, 'a> SnapshotWalk<'r, 'a> {
    /// The snapshot's manifest must have passed [`check_snapshot`].
    pub fn new(reader: &'r mut BlobReader<'a>, snapshot: Id, source: &SourceRecord) -> Self {
        let max_chunk = reader.config().chunker.max_size as u64;
        SnapshotWalk {
            reader,
            snapshot,
            source: source.label(),
            declared: (source.entries, source.bytes),
            counted: (0, 0),
            max_chunk,
            root: Some(source.root.clone()),
            open: Vec::new(),
            ended: false,
            resolved: None,
            walked: None,
        }
    }

    /// Walks each tree once, however often the snapshot uses it, as verify needs: every rule that
    /// depends on where a tree is used (counts, depth, hardlinks pointing backwards) holds for every
    /// use once it holds for the first, given the tree's expanded counts and height. A tree shared
    /// 2^64 times then costs what it stores, not what it describes.
    pub fn once_per_tree(mut self) -> Self {
        self.walked = Some(Default::default());
        self
    }

    pub fn reader(&mut self) -> &mut BlobReader<'a> {
        self.reader
    }

    /// The path below the source's root of `name` in the open directory, for messages.
    pub fn path(&self, name: &[u8]) -> String {
        let mut parts: Vec<String> = self.open.iter().skip(1).map(|f| lossy(&f.name)).collect();
        parts.push(lossy(name));
        parts.join("/")
    }

    /// An error naming the snapshot and the source.
    pub fn invalid(&self, detail: impl std::fmt::Display) -> RepoError {
        RepoError::invalid(&self.snapshot, format!("{}: {detail}", self.source))
    }

    pub fn step(&mut self) -> Result<Step, RepoError> {
        if let Some(root) = self.root.take() {
            if root.kind == EntryKind::File {
                // A bind-mounted single file: the root is the file, with nothing below it.
                self.counted = (0, root.size);
                return Ok(Step::File(root));
            }
            self.enter(&root, String::new())?;
            return Ok(Step::Enter(root));
        }
        let Some(frame) = self.open.last_mut() else {
            if !self.ended {
                self.ended = true;
                if self.counted != self.declared {
                    let ((e, b), (de, db)) = (self.counted, self.declared);
                    return Err(self.invalid(format!("holds {e} entries and {b} bytes, but its manifest declares {de} entries and {db} bytes")));
                }
            }
            return Ok(Step::End);
        };
        let Some(node) = frame.nodes.get(frame.next).cloned() else {
            self.leave();
            return Ok(Step::Leave);
        };
        frame.next += 1;
        match node.kind {
            EntryKind::Dir => {
                let path = self.path(&node.name);
                let seen = self.walked.as_ref().and_then(|walked| walked.get(&node.subtree?)).copied();
                let height = seen.map_or(0, |e| e.height);
                if self.open.len() + height > MAX_DEPTH {
                    return Err(self.invalid(format!("directory {path}: nested deeper than {MAX_DEPTH} levels")));
                }
                let Some(expanded) = seen else {
                    self.enter(&node, path)?;
                    return Ok(Step::Enter(node));
                };
                self.count(expanded.counts, &format!("directory {path}"))?;
                let parent = self.open.last_mut().expect("a directory is open");
                parent.height = parent.height.max(height + 1);
                Ok(Step::Shared(node))
            }
            EntryKind::File => Ok(Step::File(node)),
            EntryKind::Hardlink => {
                self.check_first_name(&node)?;
                Ok(Step::Leaf(node))
            }
            _ => Ok(Step::Leaf(node)),
        }
    }

    /// Opens directory `node` (at `path`, empty for the root): reads and checks its tree, and counts
    /// its entries.
    fn enter(&mut self, node: &Node, path: String) -> Result<(), RepoError> {
        let shown = if path.is_empty() { "the root directory".to_string() } else { format!("directory {path}") };
        let id = node.subtree.ok_or_else(|| self.invalid(format!("{shown} has no tree")))?;
        let before = self.counted;
        let tree = match read_tree(self.reader, &id) {
            Ok(tree) => tree,
            Err(e @ (RepoError::Corrupt { .. } | RepoError::Missing(_))) => return Err(self.invalid(format!("{shown}: {e}"))),
            Err(e) => return Err(e),
        };
        check_tree(&tree, self.reader.index(), self.max_chunk).map_err(|e| self.invalid(format!("{shown}: tree {id}: {e}")))?;
        // Every node of a directory read will be walked: counting them now, not when they are met,
        // bounds what the open directories hold in memory by the declared count too.
        let bytes = tree.nodes.iter().fold(0u64, |sum, node| sum.saturating_add(node.size));
        self.count((tree.nodes.len() as u64, bytes), &shown)?;
        self.open.push(Frame { name: node.name.clone(), nodes: tree.nodes, next: 0, tree: id, before, height: 0 });
        Ok(())
    }

    /// Closes the innermost directory, remembering what its tree expands to.
    fn leave(&mut self) {
        let frame = self.open.pop().expect("a directory is open");
        if let Some(parent) = self.open.last_mut() {
            parent.height = parent.height.max(frame.height + 1);
        }
        if let Some(walked) = self.walked.as_mut() {
            let counts = (self.counted.0 - frame.before.0, self.counted.1.saturating_sub(frame.before.1));
            walked.insert(frame.tree, Expanded { counts, height: frame.height });
        }
    }

    /// Adds `counts` (entries, bytes) to the walk's, which must stay within what the manifest declares.
    fn count(&mut self, counts: (u64, u64), at: &str) -> Result<(), RepoError> {
        self.counted = (self.counted.0.saturating_add(counts.0), self.counted.1.saturating_add(counts.1));
        let (entries, bytes) = self.declared;
        if self.counted.0 > entries || self.counted.1 > bytes {
            return Err(self.invalid(format!(
                "at {at}: holds more than the {entries} entries and {bytes} bytes its manifest declares (a tree shared too often, or a lying manifest); stopped"
            )));
        }
        Ok(())
    }

    /// A hardlink's target is the path of a `file` node met earlier in this walk: it differs from the
    /// hardlink's own path first in a directory that is open now, at a name before the own path's.
    fn check_first_name(&mut self, node: &Node) -> Result<(), RepoError> {
        let fail = |walk: &Self| walk.invalid(format!("hardlink {}: its target {:?} is not a file earlier in the source", walk.path(&node.name), lossy(&node.target)));
        let target: Vec<&[u8]> = node.target.split(|b| *b == b'/').collect();
        let own: Vec<&[u8]> = self.open.iter().skip(1).map(|f| &f.name[..]).chain([&node.name[..]]).collect();
        let Some(level) = target.iter().zip(&own).position(|(t, o)| t != o).filter(|&l| target[l] < own[l]) else {
            return Err(fail(self));
        };
        let mut found = find(&self.open[level].nodes, target[level]).cloned();
        for part in &target[level + 1..] {
            let Some(subtree) = found.filter(|n| n.kind == EntryKind::Dir).and_then(|n| n.subtree) else { return Err(fail(self)) };
            if self.resolved.as_ref().map(|(id, _)| *id) != Some(subtree) {
                let tree = read_tree(self.reader, &subtree).map_err(|e| self.invalid(e))?;
                self.resolved = Some((subtree, tree));
            }
            found = find(&self.resolved.as_ref().expect("just read").1.nodes, part).cloned();
        }
        match found {
            Some(first) if first.kind == EntryKind::File => Ok(()),
            _ => Err(fail(self)),
        }
    }
}

/// The node named `name` in a checked (sorted) listing.
fn find<'n>(nodes: &'n [Node], name: &[u8]) -> Option<&'n Node> {
    nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &nodes[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(engine: &str, format: &str, database: Option<&str>, restore_command: Option<&str>) -> DumpRecord {
        DumpRecord {
            engine: engine.into(),
            format: format.into(),
            container: "db-1".into(),
            service: None,
            project: None,
            database: database.map(str::to_string),
            server_version: None,
            position: None,
            tables: Default::default(),
            restore_command: restore_command.map(str::to_string),
        }
    }

    #[test]
    fn dump_records_pair_engines_formats_and_restore_commands_as_the_format_says() {
        assert!(dump_record_ok(&record("mariadb", "sql", Some("calls"), None)).is_ok());
        assert!(dump_record_ok(&record("postgres", "sql-globals", None, None)).is_ok());
        assert!(dump_record_ok(&record("command", "command", None, Some("cat > /x"))).is_ok());
        // A crafted manifest cannot slip a command into a database dump, nor pair what does not pair.
        assert!(dump_record_ok(&record("mariadb", "sql", Some("calls"), Some("rm -rf /"))).is_err());
        assert!(dump_record_ok(&record("postgres", "sql", Some("calls"), None)).is_err());
        assert!(dump_record_ok(&record("redis", "command", None, Some("x"))).is_err());
        assert!(dump_record_ok(&record("postgres", "pg-custom", None, None)).is_err());
        assert!(dump_record_ok(&record("mariadb", "sql-globals", Some("calls"), None)).is_err());
    }
}
