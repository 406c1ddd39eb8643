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
}

/// A tree is `Dir(root)`, then the root's children in name order (a `Dir` opens a subtree closed by
/// `DirEnd`; a `File` is followed by its `Data` pieces and `FileEnd`), then `DirEnd` and `End`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Dir(Meta),
    DirEnd,
    File(Meta),
    Data(Vec<u8>),
    FileEnd,
    /// Anything without content or children: symlinks, hardlinks, FIFOs, devices, sockets.
    Leaf(Meta),
    End,
}
