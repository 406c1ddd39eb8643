//! A byte stream as a source: one file (the root, nameless) whose content is whatever a reader
//! yields, in pieces of at most 1 MiB. The stack's definition and exported images travel this way.

use std::io::Read;

use super::{EntryKind, Event, EventSource, Meta, SourceError};

const PIECE: usize = 1 << 20;

pub struct ByteStream<R> {
    reader: R,
    what: String,
    stage: Stage,
}

#[derive(PartialEq)]
enum Stage {
    Start,
    Content,
    Ended,
    Done,
}

/// The root of a stream source: a file without a name (docs/FORMAT.md, "Sources and counts"), mode
/// 0600, owned by root, written now; the source's record says what it is.
pub fn stream_root() -> Meta {
    let mtime_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    Meta { name: Vec::new(), kind: EntryKind::File, mode: 0o600, uid: 0, gid: 0, mtime_ns, size: 0, rdev: 0, target: Vec::new(), xattrs: Vec::new(), ctime_ns: 0, ino: 0 }
}

impl<R: Read> ByteStream<R> {
    /// `what` names the stream in errors ("image mariadb:11").
    pub fn new(reader: R, what: impl Into<String>) -> Self {
        ByteStream { reader, what: what.into(), stage: Stage::Start }
    }
}

impl<R: Read + Send> EventSource for ByteStream<R> {
    fn next_event(&mut self) -> Result<Event, SourceError> {
        match self.stage {
            Stage::Start => {
                self.stage = Stage::Content;
                Ok(Event::File(stream_root()))
            }
            Stage::Content => {
                let mut piece = Vec::with_capacity(PIECE);
                (&mut self.reader).take(PIECE as u64).read_to_end(&mut piece).map_err(|e| SourceError::io(&self.what, e))?;
                if piece.is_empty() {
                    self.stage = Stage::Ended;
                    return Ok(Event::FileEnd);
                }
                Ok(Event::Data(piece))
            }
            Stage::Ended => {
                self.stage = Stage::Done;
                Ok(Event::End)
            }
            Stage::Done => Err(SourceError::Malformed(format!("read past the end of {}", self.what))),
        }
    }
}
