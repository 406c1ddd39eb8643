//! Reads a directory tree from the local filesystem as events: used in-process for host paths and by
//! the agent inside a helper container for volumes and bind mounts.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::exclude::{measure, Rules, Tally, CACHEDIR_TAG, CACHE_TAG_ORIGIN, CACHE_TAG_RULE};
use super::{EntryKind, Event, Meta, SourceError, Stamp};

/// Size of the `Data` pieces a file is read in.
pub const DATA_PIECE: usize = 1 << 20;

/// How a walk reads: what it leaves out, and whether it reads content at all.
pub struct WalkOptions<'r> {
    pub rules: &'r Rules,
    /// Off for a dry run: a file that would be read is announced (`File` then `FileEnd`), not opened.
    pub read_content: bool,
}

/// Walks `root` depth-first in byte order of names and hands every event to `emit`, ending with
/// `Excluded` (when the rules left anything out) and `End`. The root is a directory, or a regular file
/// (a bind-mounted `nginx.conf`), which is then the whole tree. Symlinks are recorded, never followed.
/// A regular file whose path (relative to the root; empty for a file root) has, by `known`, the same
/// stamp as now is not read: it becomes `Reused`. An excluded entry is never opened, nor sent.
pub fn walk(
    root: &Path,
    known: &mut dyn FnMut(&[u8]) -> Option<Stamp>,
    options: &WalkOptions,
    emit: &mut dyn FnMut(Event) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    let md = fs::symlink_metadata(root).map_err(|e| SourceError::io(root.display(), e))?;
    let mut walker = Walker { root: root.to_path_buf(), known, options, tally: Tally::default(), first_names: HashMap::new() };
    if md.is_file() {
        let meta = walker.meta(root, Vec::new(), &md)?;
        walker.regular_file(root, b"", meta, emit)?;
        return emit(Event::End);
    }
    if !md.is_dir() {
        return Err(SourceError::Refused(format!("{} is neither a directory nor a regular file", root.display())));
    }
    let meta = walker.meta(root, Vec::new(), &md)?;
    emit(Event::Dir(meta))?;
    walker.children(root, emit)?;
    emit(Event::DirEnd)?;
    let excluded = std::mem::take(&mut walker.tally).into_list();
    if !excluded.is_empty() {
        emit(Event::Excluded(excluded))?;
    }
    emit(Event::End)
}

/// The order in which a walk meets paths (relative, `/`-separated): component by component, by
/// bytes, a directory's entries right after it (`a/b` before `a.txt`, though `.` sorts before `/`).
pub fn walk_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/'))
}

/// Entries in walk order, looked up by paths that are asked for in walk order: a merge with the walk,
/// so that neither side is held whole. Entries before an asked path are passed for good.
pub struct WalkMerge<T, I> {
    entries: I,
    /// The next entry, read but not yet passed.
    ahead: Option<T>,
    path_of: fn(&T) -> &[u8],
}

impl<T, I: Iterator<Item = T>> WalkMerge<T, I> {
    pub fn new(entries: I, path_of: fn(&T) -> &[u8]) -> Self {
        WalkMerge { entries, ahead: None, path_of }
    }

    /// The entry for `path`, if there is one.
    pub fn lookup(&mut self, path: &[u8]) -> Option<&T> {
        loop {
            let entry = self.next()?;
            let order = walk_order((self.path_of)(&entry), path);
            if order != std::cmp::Ordering::Less {
                let entry = self.ahead.insert(entry);
                return (order == std::cmp::Ordering::Equal).then_some(&*entry);
            }
        }
    }
}

/// The entries not passed yet, in order.
impl<T, I: Iterator<Item = T>> Iterator for WalkMerge<T, I> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.ahead.take().or_else(|| self.entries.next())
    }
}

struct Walker<'k> {
    root: PathBuf,
    /// Asked for each regular file's path, in walk order ([`walk_order`]).
    known: &'k mut dyn FnMut(&[u8]) -> Option<Stamp>,
    options: &'k WalkOptions<'k>,
    tally: Tally,
    /// (device, inode) of multiply-linked files already emitted, with the path of their first name.
    first_names: HashMap<(u64, u64), Vec<u8>>,
}

impl Walker<'_> {
    fn children(&mut self, dir: &Path, emit: &mut dyn FnMut(Event) -> Result<(), SourceError>) -> Result<(), SourceError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| SourceError::io(dir.display(), e))? {
            names.push(entry.map_err(|e| SourceError::io(dir.display(), e))?.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        // A tagged cache directory keeps its tag, so that a restore recreates it (empty but for that).
        let tagged = self.options.rules.is_tagged_cache(dir);
        for name in names {
            let path = dir.join(&name);
            let md = match fs::symlink_metadata(&path) {
                Ok(md) => md,
                // Removed between listing and stat: a live volume changes under us; it is simply not in
                // this snapshot.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SourceError::io(path.display(), e)),
            };
            let rel = path.strip_prefix(&self.root).expect("walked paths lie under the root").as_os_str().as_bytes();
            let rule = if tagged && name != CACHEDIR_TAG {
                Some((CACHE_TAG_RULE, CACHE_TAG_ORIGIN))
            } else {
                self.options.rules.excluded(rel, md.is_dir())
            };
            if let Some((rule, origin)) = rule {
                let (entries, bytes) = if md.is_dir() { measure(&path) } else { (0, if md.is_file() { md.len() } else { 0 }) };
                self.tally.add(rule, origin, entries + 1, bytes);
                continue;
            }
            let mut meta = self.meta(&path, name.as_bytes().to_vec(), &md)?;
            match meta.kind {
                EntryKind::Dir => {
                    emit(Event::Dir(meta))?;
                    self.children(&path, emit)?;
                    emit(Event::DirEnd)?;
                }
                EntryKind::File => {
                    if md.nlink() > 1 {
                        if let Some(first) = self.first_names.get(&(md.dev(), md.ino())) {
                            meta.kind = EntryKind::Hardlink;
                            meta.size = 0;
                            meta.target = first.clone();
                            emit(Event::Leaf(meta))?;
                            continue;
                        }
                        self.first_names.insert((md.dev(), md.ino()), rel.to_vec());
                    }
                    self.regular_file(&path, rel, meta, emit)?;
                }
                _ => emit(Event::Leaf(meta))?,
            }
        }
        Ok(())
    }

    /// A regular file (or hardlink's first name) at `rel`: `Reused` when the files cache has it with the
    /// same stamp, which covers its xattrs too (setting one changes the ctime): the cache keeps them,
    /// and they are not read here (a syscall per unchanged file saved). Else read whole.
    fn regular_file(&mut self, path: &Path, rel: &[u8], mut meta: Meta, emit: &mut dyn FnMut(Event) -> Result<(), SourceError>) -> Result<(), SourceError> {
        if (self.known)(rel) == Some(meta.stamp()) {
            return emit(Event::Reused(meta));
        }
        meta.xattrs = read_xattrs(path)?;
        self.file(path, meta, emit)
    }

    fn file(&mut self, path: &Path, meta: Meta, emit: &mut dyn FnMut(Event) -> Result<(), SourceError>) -> Result<(), SourceError> {
        if !self.options.read_content {
            emit(Event::File(meta))?;
            return emit(Event::FileEnd);
        }
        let mut file = File::open(path).map_err(|e| SourceError::io(path.display(), e))?;
        let mut expected = meta.size as usize;
        emit(Event::File(meta))?;
        loop {
            // Read straight into the piece that travels on, rather than into a buffer to copy from; sized
            // by what the file holds, since a megabyte for every small file costs the allocator dearly
            // (a file that grew meanwhile still reads whole: read_to_end grows the piece).
            let mut piece = Vec::with_capacity(expected.clamp(1, DATA_PIECE));
            expected = expected.saturating_sub(DATA_PIECE);
            let n = (&mut file).take(DATA_PIECE as u64).read_to_end(&mut piece).map_err(|e| SourceError::io(path.display(), e))?;
            if n > 0 {
                emit(Event::Data(piece))?;
            }
            // read_to_end stops short of the limit only at the end of the file.
            if n < DATA_PIECE {
                break;
            }
        }
        emit(Event::FileEnd)
    }

    fn meta(&self, path: &Path, name: Vec<u8>, md: &fs::Metadata) -> Result<Meta, SourceError> {
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_char_device() {
            EntryKind::Char
        } else if ft.is_block_device() {
            EntryKind::Block
        } else {
            EntryKind::Socket
        };
        let target = if kind == EntryKind::Symlink {
            fs::read_link(path).map_err(|e| SourceError::io(path.display(), e))?.into_os_string().as_bytes().to_vec()
        } else {
            Vec::new()
        };
        Ok(Meta {
            name,
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            size: if kind == EntryKind::File { md.len() } else { 0 },
            rdev: md.rdev(),
            target,
            // A regular file's only when it is read (`regular_file`).
            xattrs: if kind == EntryKind::File { Vec::new() } else { read_xattrs(path)? },
            ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
            ino: md.ino(),
        })
    }
}

/// Extended attributes as (name, value) pairs, sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn read_xattrs(path: &Path) -> Result<Xattrs, SourceError> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        // Filesystems without xattr support have none to keep.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(SourceError::io(path.display(), e)),
    };
    let mut xattrs = Vec::new();
    for name in names {
        if let Some(value) = xattr::get(path, &name).map_err(|e| SourceError::io(path.display(), e))? {
            xattrs.push((name.as_bytes().to_vec(), value));
        }
    }
    xattrs.sort();
    Ok(xattrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_order_is_the_walkers_order() {
        let mut paths: Vec<&[u8]> = vec![b"a.txt", b"a/b", b"a", b"a/b/c", b"a-b", b"b", b"a/a"];
        paths.sort_by(|x, y| walk_order(x, y));
        assert_eq!(paths, vec![&b"a"[..], b"a/a", b"a/b", b"a/b/c", b"a-b", b"a.txt", b"b"]);
    }

    #[test]
    fn a_merge_finds_what_is_asked_in_walk_order_and_passes_the_rest() {
        let entries: Vec<&[u8]> = vec![b"a", b"a/b", b"a.txt", b"c"];
        let mut merge = WalkMerge::new(entries.into_iter(), |p: &&[u8]| *p);
        assert_eq!(merge.lookup(b"a/b"), Some(&&b"a/b"[..]));
        assert_eq!(merge.lookup(b"a-x"), None);
        assert_eq!(merge.collect::<Vec<_>>(), vec![&b"a.txt"[..], b"c"]);
    }
}
