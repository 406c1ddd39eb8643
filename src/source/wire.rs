//! The agent's wire format: tree events as length-prefixed frames over a byte pipe (the helper
//! container's stdin or stdout). Specified in docs/ARCHITECTURE.md, "Agent protocol".
//!
//! Frame: tag (1 byte), payload length (u32 LE), payload. Integers are little-endian; byte strings are
//! a u32 LE length then the bytes.

use std::io::{self, Read, Write};


use super::exclude::Excluded;
use super::{EntryKind, Event, EventSource, Meta, SourceError, Stamp};

const TAG_DIR: u8 = b'D';
const TAG_DIR_END: u8 = b'U';
const TAG_FILE: u8 = b'F';
const TAG_DATA: u8 = b'B';
const TAG_FILE_END: u8 = b'E';
const TAG_LEAF: u8 = b'L';
const TAG_REUSED: u8 = b'R';
/// Before a backup stream, from the engine to the agent: one known file's path and stamp.
const TAG_STAMP: u8 = b'S';
const TAG_END: u8 = b'Z';
/// After the root's end: what the walk left out, by rule.
const TAG_EXCLUDED: u8 = b'P';
/// The producer failed; the payload is its message. Nothing after it is read.
const TAG_ERROR: u8 = b'X';

/// Larger than any data piece (1 MiB) or any sane metadata record; guards against a corrupt stream
/// making us allocate without bound.
const MAX_FRAME: u32 = 16 << 20;

/// Lets a socket carrying a tree stream hold several data frames in flight: with the default (about
/// 200 KiB) each 1 MiB frame costs a handful of wake-ups on both sides. Best effort: the kernel caps
/// it at net.core.wmem_max.
pub fn widen_send_buffer(stream: &std::os::unix::net::UnixStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    unsafe { libc::setsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, &size as *const _ as *const libc::c_void, len) };
}

pub struct EventWriter<W: Write> {
    out: W,
    scratch: Vec<u8>,
}

impl<W: Write> EventWriter<W> {
    pub fn new(out: W) -> Self {
        EventWriter { out, scratch: Vec::new() }
    }

    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::Dir(meta) => self.meta_frame(TAG_DIR, meta),
            Event::File(meta) => self.meta_frame(TAG_FILE, meta),
            Event::Leaf(meta) => self.meta_frame(TAG_LEAF, meta),
            Event::Reused(meta) => self.meta_frame(TAG_REUSED, meta),
            Event::Data(bytes) => self.frame(TAG_DATA, bytes),
            Event::DirEnd => self.frame(TAG_DIR_END, &[]),
            Event::FileEnd => self.frame(TAG_FILE_END, &[]),
            Event::End => self.frame(TAG_END, &[]),
            Event::Excluded(list) => {
                let mut buf = Vec::new();
                buf.extend_from_slice(&(list.len() as u32).to_le_bytes());
                for e in list {
                    put_bytes(&mut buf, e.rule.as_bytes());
                    put_bytes(&mut buf, e.origin.as_bytes());
                    buf.extend_from_slice(&e.entries.to_le_bytes());
                    buf.extend_from_slice(&e.bytes.to_le_bytes());
                }
                self.frame(TAG_EXCLUDED, &buf)
            }
        }
    }

    /// The stamps of the files the engine knows, in walk order, then an end marker (see
    /// [`EventReader::next_stamp`]).
    pub fn write_stamps(&mut self, stamps: impl Iterator<Item = (Vec<u8>, Stamp)>) -> io::Result<()> {
        let mut buf = Vec::new();
        for (path, stamp) in stamps {
            buf.clear();
            buf.extend_from_slice(&stamp.size.to_le_bytes());
            buf.extend_from_slice(&stamp.mtime_ns.to_le_bytes());
            buf.extend_from_slice(&stamp.ctime_ns.to_le_bytes());
            buf.extend_from_slice(&stamp.ino.to_le_bytes());
            buf.extend_from_slice(&path);
            self.frame(TAG_STAMP, &buf)?;
        }
        self.frame(TAG_END, &[])?;
        self.flush()
    }

    pub fn write_error(&mut self, message: &str) -> io::Result<()> {
        self.frame(TAG_ERROR, message.as_bytes())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn meta_frame(&mut self, tag: u8, meta: &Meta) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        encode_meta(meta, &mut buf);
        let result = self.frame(tag, &buf);
        self.scratch = buf;
        result
    }

    fn frame(&mut self, tag: u8, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len()).ok().filter(|l| *l <= MAX_FRAME);
        let len = len.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
        self.out.write_all(&[tag])?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(payload)
    }
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

fn encode_meta(meta: &Meta, buf: &mut Vec<u8>) {
    buf.push(meta.kind.code());
    for v in [meta.mode, meta.uid, meta.gid] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.extend_from_slice(&meta.mtime_ns.to_le_bytes());
    buf.extend_from_slice(&meta.size.to_le_bytes());
    buf.extend_from_slice(&meta.rdev.to_le_bytes());
    buf.extend_from_slice(&meta.ctime_ns.to_le_bytes());
    buf.extend_from_slice(&meta.ino.to_le_bytes());
    put_bytes(buf, &meta.name);
    put_bytes(buf, &meta.target);
    buf.extend_from_slice(&(meta.xattrs.len() as u32).to_le_bytes());
    for (name, value) in &meta.xattrs {
        put_bytes(buf, name);
        put_bytes(buf, value);
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SourceError> {
        if self.0.len() < n {
            return Err(SourceError::Malformed("truncated metadata record".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, SourceError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, SourceError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, SourceError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

fn decode_meta(payload: &[u8]) -> Result<Meta, SourceError> {
    let mut c = Cursor(payload);
    let code = c.take(1)?[0];
    let kind = EntryKind::from_code(code).ok_or_else(|| SourceError::Malformed(format!("unknown entry kind {code}")))?;
    let (mode, uid, gid) = (c.u32()?, c.u32()?, c.u32()?);
    let mtime_ns = c.u64()? as i64;
    let (size, rdev) = (c.u64()?, c.u64()?);
    let (ctime_ns, ino) = (c.u64()? as i64, c.u64()?);
    let name = c.bytes()?;
    let target = c.bytes()?;
    let count = c.u32()?;
    let mut xattrs = Vec::new();
    for _ in 0..count {
        xattrs.push((c.bytes()?, c.bytes()?));
    }
    Ok(Meta { name, kind, mode, uid, gid, mtime_ns, size, rdev, target, xattrs, ctime_ns, ino })
}

fn decode_excluded(payload: &[u8]) -> Result<Vec<Excluded>, SourceError> {
    let mut c = Cursor(payload);
    let count = c.u32()?;
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| SourceError::Malformed("a rule that is not UTF-8".into()));
    // Each entry takes at least 24 bytes: a count beyond what the payload holds is a lie.
    if count as usize > payload.len() / 24 {
        return Err(SourceError::Malformed(format!("{count} exclusion counts in a frame of {} bytes", payload.len())));
    }
    (0..count).map(|_| Ok(Excluded { rule: text(c.bytes()?)?, origin: text(c.bytes()?)?, entries: c.u64()?, bytes: c.u64()? })).collect()
}

pub struct EventReader<R: Read> {
    input: R,
}

impl<R: Read> EventReader<R> {
    pub fn new(input: R) -> Self {
        EventReader { input }
    }

    /// The next stamp [`EventWriter::write_stamps`] wrote, or None at their end marker. Read one at a
    /// time, along the walk, so that the agent never holds them all.
    pub fn next_stamp(&mut self) -> Result<Option<(Vec<u8>, Stamp)>, SourceError> {
        match self.read_frame()? {
            (TAG_END, _) => Ok(None),
            (TAG_STAMP, payload) if payload.len() >= 32 => {
                let field = |i: usize| u64::from_le_bytes(payload[i * 8..i * 8 + 8].try_into().unwrap());
                let stamp = Stamp { size: field(0), mtime_ns: field(1) as i64, ctime_ns: field(2) as i64, ino: field(3) };
                Ok(Some((payload[32..].to_vec(), stamp)))
            }
            (tag, _) => Err(SourceError::Malformed(format!("expected a stamp, got frame tag {tag:#04x}"))),
        }
    }

    fn read_frame(&mut self) -> Result<(u8, Vec<u8>), SourceError> {
        let mut head = [0u8; 5];
        self.input.read_exact(&mut head).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => SourceError::Malformed("the stream ended before its end marker".into()),
            _ => SourceError::Stream(e),
        })?;
        let len = u32::from_le_bytes(head[1..5].try_into().unwrap());
        if len > MAX_FRAME {
            return Err(SourceError::Malformed(format!("frame of {len} bytes exceeds the limit")));
        }
        let mut payload = vec![0u8; len as usize];
        self.input.read_exact(&mut payload).map_err(SourceError::Stream)?;
        Ok((head[0], payload))
    }
}

impl<R: Read + Send> EventSource for EventReader<R> {
    fn next_event(&mut self) -> Result<Event, SourceError> {
        let (tag, payload) = self.read_frame()?;
        Ok(match tag {
            TAG_DIR => Event::Dir(decode_meta(&payload)?),
            TAG_FILE => Event::File(decode_meta(&payload)?),
            TAG_LEAF => Event::Leaf(decode_meta(&payload)?),
            TAG_REUSED => Event::Reused(decode_meta(&payload)?),
            TAG_DATA => Event::Data(payload),
            TAG_DIR_END => Event::DirEnd,
            TAG_FILE_END => Event::FileEnd,
            TAG_END => Event::End,
            TAG_EXCLUDED => Event::Excluded(decode_excluded(&payload)?),
            TAG_ERROR => return Err(SourceError::Agent(String::from_utf8_lossy(&payload).into_owned())),
            other => return Err(SourceError::Malformed(format!("unknown frame tag {other:#04x}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_wire() {
        let meta = Meta {
            name: b"caf\xe9".to_vec(),
            kind: EntryKind::File,
            mode: 0o2755,
            uid: 1000,
            gid: 33,
            mtime_ns: -1_234_567_891,
            size: 3,
            rdev: 0,
            target: vec![],
            xattrs: vec![(b"user.a".to_vec(), vec![0, 1, 2]), (b"user.empty".to_vec(), vec![])],
            ctime_ns: 1_700_000_000_000_000_001,
            ino: 42,
        };
        let events = vec![
            Event::Dir(Meta { kind: EntryKind::Dir, ..meta.clone() }),
            Event::File(meta.clone()),
            Event::Data(b"abc".to_vec()),
            Event::FileEnd,
            Event::Reused(meta.clone()),
            Event::Leaf(Meta { kind: EntryKind::Symlink, target: b"../x".to_vec(), ..meta }),
            Event::DirEnd,
            Event::Excluded(vec![Excluded { rule: "*.tmp".into(), origin: "configuration".into(), entries: 3, bytes: 7 }]),
            Event::End,
        ];
        let mut w = EventWriter::new(Vec::new());
        for e in &events {
            w.write(e).unwrap();
        }
        let bytes = w.into_inner();
        let mut r = EventReader::new(&bytes[..]);
        for e in events {
            assert_eq!(r.next_event().unwrap(), e);
        }
    }

    #[test]
    fn stamps_survive_the_wire() {
        let stamp = Stamp { size: 5, mtime_ns: -7, ctime_ns: 9, ino: 11 };
        let mut w = EventWriter::new(Vec::new());
        w.write_stamps([(b"a/b\xff".to_vec(), stamp)].into_iter()).unwrap();
        let bytes = w.into_inner();
        let mut r = EventReader::new(&bytes[..]);
        assert_eq!(r.next_stamp().unwrap(), Some((b"a/b\xff".to_vec(), stamp)));
        assert_eq!(r.next_stamp().unwrap(), None);
    }

    #[test]
    fn an_agent_error_frame_surfaces_as_an_error() {
        let mut w = EventWriter::new(Vec::new());
        w.write_error("disk on fire").unwrap();
        let bytes = w.into_inner();
        let mut r = EventReader::new(&bytes[..]);
        assert!(matches!(r.next_event(), Err(SourceError::Agent(m)) if m == "disk on fire"));
    }
}
