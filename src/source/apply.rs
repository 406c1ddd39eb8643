//! Writes a tree of events into a directory, safely: every entry is created relative to an open
//! descriptor of its parent, directories are entered with O_NOFOLLOW and files created with O_EXCL, so a
//! crafted tree (names with `..` or `/`, a symlink followed by a file of the same name) cannot write
//! outside the root or through a link. Metadata is applied after content: owner before mode (chown
//! clears setuid/setgid), directories after their children.

use std::ffi::CString;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{EntryKind, Event, EventSource, Meta, SourceError};

/// A `Data` piece of zeros at least this long becomes a hole (a seek) rather than a write.
const HOLE_MIN: usize = 4096;

#[derive(Debug, Default)]
pub struct ApplyReport {
    pub entries: u64,
    pub bytes: u64,
    /// Metadata that could not be applied (e.g. an xattr namespace the filesystem refuses); the content
    /// is restored regardless.
    pub warnings: Vec<String>,
}

/// Restores the tree read from `source` at `root`. A directory tree goes into the directory `root`,
/// which must exist; an existing, non-empty one is refused unless `replace` is set, in which case its
/// contents are removed first. A single-file tree (a bind-mounted file) becomes the file `root`, whose
/// parent must exist; an existing one is refused unless `replace`.
pub fn apply(root: &Path, source: &mut dyn EventSource, replace: bool) -> Result<ApplyReport, SourceError> {
    match source.next_event()? {
        Event::Dir(meta) => apply_tree(root, meta, source, replace),
        Event::File(meta) => apply_file(root, meta, source, replace),
        other => Err(SourceError::Malformed(format!("a tree must start with its root directory or file, not {other:?}"))),
    }
}

fn apply_tree(root: &Path, meta: Meta, source: &mut dyn EventSource, replace: bool) -> Result<ApplyReport, SourceError> {
    let root_dir = open_dir_path(root)?;
    if !is_empty(&root_dir, root)? {
        if !replace {
            return Err(SourceError::Refused(format!(
                "{} is not empty: restoring would mix two states; use --force to replace its contents",
                root.display()
            )));
        }
        clear_dir(&root_dir, root)?;
    }
    let top = root_dir.try_clone().map_err(|e| SourceError::io(root.display(), e))?;
    let mut applier = Applier { root: root_dir, dirs: vec![(top, meta)], file: None, report: ApplyReport::default() };
    loop {
        match source.next_event()? {
            Event::End if applier.dirs.is_empty() => return Ok(applier.report),
            Event::End => return Err(SourceError::Malformed("the tree ended inside a directory".into())),
            event => applier.apply(event)?,
        }
    }
}

fn apply_file(path: &Path, mut meta: Meta, source: &mut dyn EventSource, replace: bool) -> Result<ApplyReport, SourceError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(SourceError::Refused(format!("{} cannot hold a file", path.display())));
    };
    let parent_dir = open_dir_path(if parent.as_os_str().is_empty() { Path::new(".") } else { parent })?;
    let cname = safe_name(name.as_bytes(), "a file's destination")?;
    let mut existing: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(parent_dir.as_raw_fd(), cname.as_ptr(), &mut existing, libc::AT_SYMLINK_NOFOLLOW) } == 0 {
        if !replace || existing.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(SourceError::Refused(format!("{} exists: use --force to replace it (a directory is never replaced by a file)", path.display())));
        }
        cvt(unsafe { libc::unlinkat(parent_dir.as_raw_fd(), cname.as_ptr(), 0) }, name.as_bytes())?;
    }
    meta.name = name.as_bytes().to_vec();
    let top = parent_dir.try_clone().map_err(|e| SourceError::io(parent.display(), e))?;
    // The parent is the destination's, not the snapshot's: its metadata is never applied.
    let mut applier = Applier { root: parent_dir, dirs: vec![(top, meta.clone())], file: None, report: ApplyReport::default() };
    applier.apply(Event::File(meta))?;
    loop {
        match source.next_event()? {
            Event::End if applier.file.is_none() => return Ok(applier.report),
            event @ (Event::Data(_) | Event::FileEnd) => applier.apply(event)?,
            other => return Err(SourceError::Malformed(format!("unexpected {other:?} in a single-file tree"))),
        }
    }
}

struct Applier {
    root: File,
    dirs: Vec<(File, Meta)>,
    file: Option<(File, Meta)>,
    report: ApplyReport,
}

impl Applier {
    fn parent(&self) -> Result<&File, SourceError> {
        self.dirs.last().map(|(f, _)| f).ok_or_else(|| SourceError::Malformed("an entry outside the root".into()))
    }

    fn apply(&mut self, event: Event) -> Result<(), SourceError> {
        if self.file.is_some() && !matches!(event, Event::Data(_) | Event::FileEnd) {
            return Err(SourceError::Malformed("a file's content was not closed".into()));
        }
        match event {
            Event::Dir(meta) => {
                let name = safe_name(&meta.name, "a directory")?;
                let parent = self.parent()?.as_raw_fd();
                cvt(unsafe { libc::mkdirat(parent, name.as_ptr(), 0o700) }, &meta.name)?;
                let dir = open_at(parent, &name, libc::O_DIRECTORY | libc::O_RDONLY, 0, &meta.name)?;
                self.dirs.push((dir, meta));
            }
            Event::DirEnd => {
                let (dir, meta) = self.dirs.pop().ok_or_else(|| SourceError::Malformed("unbalanced directory end".into()))?;
                self.set_fd_meta(&dir, &meta)?;
                self.report.entries += 1;
            }
            Event::File(meta) => {
                let name = safe_name(&meta.name, "a file")?;
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
                let file = open_at(self.parent()?.as_raw_fd(), &name, flags, 0o600, &meta.name)?;
                self.file = Some((file, meta));
            }
            Event::Data(piece) => {
                let (file, meta) = self.file.as_mut().ok_or_else(|| SourceError::Malformed("content outside a file".into()))?;
                let result = if piece.len() >= HOLE_MIN && piece.iter().all(|b| *b == 0) {
                    file.seek(SeekFrom::Current(piece.len() as i64)).map(drop)
                } else {
                    file.write_all(&piece)
                };
                result.map_err(|e| SourceError::io(lossy(&meta.name), e))?;
                self.report.bytes += piece.len() as u64;
            }
            Event::FileEnd => {
                let (mut file, meta) = self.file.take().ok_or_else(|| SourceError::Malformed("a file end outside a file".into()))?;
                // Trailing holes exist only once the length is set.
                let len = file.stream_position().map_err(|e| SourceError::io(lossy(&meta.name), e))?;
                file.set_len(len).map_err(|e| SourceError::io(lossy(&meta.name), e))?;
                self.set_fd_meta(&file, &meta)?;
                self.report.entries += 1;
            }
            Event::Leaf(meta) => {
                self.leaf(&meta)?;
                self.report.entries += 1;
            }
            Event::Reused(meta) => {
                return Err(SourceError::Malformed(format!("{}: a restore stream must carry content, not a reuse", lossy(&meta.name))))
            }
            Event::Excluded(_) => return Err(SourceError::Malformed("exclusion counts in a restore stream".into())),
            Event::End => unreachable!("handled by the caller"),
        }
        Ok(())
    }

    fn leaf(&mut self, meta: &Meta) -> Result<(), SourceError> {
        let name = safe_name(&meta.name, "an entry")?;
        let parent = self.parent()?.as_raw_fd();
        match meta.kind {
            EntryKind::Symlink => {
                let target = CString::new(meta.target.clone())
                    .map_err(|_| SourceError::Malformed(format!("symlink {} has a NUL in its target", lossy(&meta.name))))?;
                cvt(unsafe { libc::symlinkat(target.as_ptr(), parent, name.as_ptr()) }, &meta.name)?;
            }
            EntryKind::Hardlink => {
                let (dir, last) = self.resolve_first_name(&meta.target)?;
                // Flags 0: linkat never follows a symlink at the source name.
                cvt(unsafe { libc::linkat(dir.as_raw_fd(), last.as_ptr(), parent, name.as_ptr(), 0) }, &meta.name)?;
                return Ok(()); // the first name already carries the shared metadata
            }
            EntryKind::Fifo | EntryKind::Char | EntryKind::Block => {
                let type_bits = match meta.kind {
                    EntryKind::Fifo => libc::S_IFIFO,
                    EntryKind::Char => libc::S_IFCHR,
                    _ => libc::S_IFBLK,
                };
                cvt(unsafe { libc::mknodat(parent, name.as_ptr(), type_bits | 0o600, meta.rdev as libc::dev_t) }, &meta.name)?;
            }
            EntryKind::Socket => {
                self.report.warnings.push(format!("{}: sockets are not restored (a program recreates them)", lossy(&meta.name)));
                return Ok(());
            }
            EntryKind::Dir | EntryKind::File => unreachable!("directories and files carry content events"),
        }
        let nofollow = libc::AT_SYMLINK_NOFOLLOW;
        cvt(unsafe { libc::fchownat(parent, name.as_ptr(), meta.uid, meta.gid, nofollow) }, &meta.name)?;
        if meta.kind != EntryKind::Symlink {
            // The node was just created by us in a directory only we write to; fchmodat cannot take
            // AT_SYMLINK_NOFOLLOW on Linux, but the name cannot have become a symlink in between.
            cvt(unsafe { libc::fchmodat(parent, name.as_ptr(), meta.mode, 0) }, &meta.name)?;
        }
        for (key, value) in &meta.xattrs {
            let path = Path::new("/proc/self/fd").join(parent.to_string()).join(std::ffi::OsStr::from_bytes(&meta.name));
            if let Err(e) = xattr::set(&path, std::ffi::OsStr::from_bytes(key), value) {
                self.report.warnings.push(format!("{}: xattr {}: {e}", lossy(&meta.name), lossy(key)));
            }
        }
        let times = timespecs(meta.mtime_ns);
        cvt(unsafe { libc::utimensat(parent, name.as_ptr(), times.as_ptr(), nofollow) }, &meta.name)
    }

    /// Opens, component by component and never through a symlink, the directory holding a hardlink's
    /// first name, which lies under the root.
    fn resolve_first_name(&self, path: &[u8]) -> Result<(File, CString), SourceError> {
        let parts: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
        let (last, dirs) = parts.split_last().expect("split yields at least one part");
        let mut dir = self.root.try_clone().map_err(|e| SourceError::io("restore root", e))?;
        for part in dirs {
            let name = safe_name(part, "a hardlink's target")?;
            dir = open_at(dir.as_raw_fd(), &name, libc::O_DIRECTORY | libc::O_RDONLY, 0, path)?;
        }
        Ok((dir, safe_name(last, "a hardlink's target")?))
    }

    fn set_fd_meta(&mut self, file: &File, meta: &Meta) -> Result<(), SourceError> {
        use xattr::FileExt;
        let fd = file.as_raw_fd();
        cvt(unsafe { libc::fchown(fd, meta.uid, meta.gid) }, &meta.name)?;
        cvt(unsafe { libc::fchmod(fd, meta.mode) }, &meta.name)?;
        for (key, value) in &meta.xattrs {
            if let Err(e) = file.set_xattr(std::ffi::OsStr::from_bytes(key), value) {
                self.report.warnings.push(format!("{}: xattr {}: {e}", lossy(&meta.name), lossy(key)));
            }
        }
        let times = timespecs(meta.mtime_ns);
        cvt(unsafe { libc::futimens(fd, times.as_ptr()) }, &meta.name)
    }
}

fn timespecs(mtime_ns: i64) -> [libc::timespec; 2] {
    let mtime = libc::timespec { tv_sec: mtime_ns.div_euclid(1_000_000_000), tv_nsec: mtime_ns.rem_euclid(1_000_000_000) };
    // atime is left alone: it records reads, not the backed-up state.
    [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, mtime]
}

/// Whether `name` is one entry of a directory: not empty, `.` or `..`, and without `/` or NUL. The
/// repository's tree rules (`repo::tree`) use the same test, so that what verifies also restores.
pub fn is_safe_name(name: &[u8]) -> bool {
    !(name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0))
}

fn safe_name(name: &[u8], context: &str) -> Result<CString, SourceError> {
    if !is_safe_name(name) {
        return Err(SourceError::UnsafeName { name: lossy(name), context: context.into() });
    }
    Ok(CString::new(name).expect("checked for NUL"))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn cvt(ret: libc::c_int, name: &[u8]) -> Result<(), SourceError> {
    if ret == -1 {
        return Err(SourceError::io(lossy(name), std::io::Error::last_os_error()));
    }
    Ok(())
}

fn open_at(dir: RawFd, name: &CString, flags: libc::c_int, mode: libc::c_uint, shown: &[u8]) -> Result<File, SourceError> {
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, mode) };
    if fd == -1 {
        return Err(SourceError::io(lossy(shown), std::io::Error::last_os_error()));
    }
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn open_dir_path(path: &Path) -> Result<File, SourceError> {
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| SourceError::Refused("a path with NUL".into()))?;
    open_at(libc::AT_FDCWD, &cpath, libc::O_DIRECTORY | libc::O_RDONLY, 0, path.as_os_str().as_bytes())
}

fn entries(dir: &File, shown: &Path) -> Result<Vec<std::ffi::OsString>, SourceError> {
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(|e| SourceError::io(shown.display(), e))?;
    listing.map(|e| e.map(|e| e.file_name()).map_err(|e| SourceError::io(shown.display(), e))).collect()
}

fn is_empty(dir: &File, shown: &Path) -> Result<bool, SourceError> {
    Ok(entries(dir, shown)?.is_empty())
}

/// Removes everything below `dir` without following a symlink anywhere.
fn clear_dir(dir: &File, shown: &Path) -> Result<(), SourceError> {
    for name in entries(dir, shown)? {
        let cname = CString::new(name.as_bytes()).expect("directory entries hold no NUL");
        let child_path = shown.join(&name);
        match open_at(dir.as_raw_fd(), &cname, libc::O_DIRECTORY | libc::O_RDONLY, 0, name.as_bytes()) {
            Ok(child) => {
                clear_dir(&child, &child_path)?;
                cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), cname.as_ptr(), libc::AT_REMOVEDIR) }, name.as_bytes())?;
            }
            // Not a directory, or a symlink (to one or not): remove the name itself.
            Err(_) => cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), cname.as_ptr(), 0) }, name.as_bytes())?,
        }
    }
    Ok(())
}
