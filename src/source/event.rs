//! One entry of a file tree as it travels from a source to the engine, and back at restore.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    /// A further name of a regular file met earlier in the same tree; `target` holds that first path.
    Hardlink,
    Fifo,
    Char,
    Block,
    Socket,
}

impl EntryKind {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        use EntryKind::*;
        [Dir, File, Symlink, Hardlink, Fifo, Char, Block, Socket].get(code as usize).copied()
    }
}

/// Metadata of one entry. Names and link targets are raw bytes: Linux names need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub name: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (st_mode & 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    /// Length of a regular file's content; 0 for everything else.
    pub size: u64,
    pub rdev: u64,
    /// Symlink target, or for a hardlink the path (relative to the tree's root) of its first name.
    pub target: Vec<u8>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Status change time and inode number: not part of a snapshot, only of a file's [`Stamp`].
    pub ctime_ns: i64,
    pub ino: u64,
}

impl Meta {
    pub fn stamp(&self) -> Stamp {
        Stamp { size: self.size, mtime_ns: self.mtime_ns, ctime_ns: self.ctime_ns, ino: self.ino }
    }
}

/// What must be equal for a regular file to count as unchanged since the previous snapshot, as restic
/// and borg decide it: any write changes mtime and ctime, a replacement changes the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

/// A tree is `Dir(root)`, then the root's children in name order (a `Dir` opens a subtree closed by
/// `DirEnd`; a `File` is followed by its `Data` pieces and `FileEnd`; a `Reused` file by nothing), then
/// `DirEnd`, optionally `Excluded`, and `End`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Dir(Meta),
    DirEnd,
    File(Meta),
    Data(Vec<u8>),
    FileEnd,
    /// Anything without content or children: symlinks, hardlinks, FIFOs, devices, sockets.
    Leaf(Meta),
    /// A regular file whose stamp equals the one the consumer gave the walker: its content is not sent,
    /// the consumer already has its blob ids.
    Reused(Meta),
    /// After the root's `DirEnd`: what the walk's rules left out (source::exclude), by rule.
    Excluded(Vec<super::exclude::Excluded>),
    End,
}
