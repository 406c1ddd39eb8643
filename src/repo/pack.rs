//! Packs: a plain tar of blobs, each tar entry (header, content, padding) compressed as its own zstd
//! frame so that one blob can be read from its frame alone, the whole optionally age-encrypted. Writing
//! runs as a small pipeline: compressor threads turn blobs into frames, one writer thread appends them
//! to the open pack and stores it when full, then stores the pack's index object.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::crypt::{self, Identities, Recipient};
use super::format::{PackIndex, PackedBlob};
use super::index::{Index, Location};
use super::{BlobKind, Id, RepoError, Repository, FORMAT_VERSION};
use crate::storage::{Key, ObjectKind, ObjectReader, ObjectWriter, Storage, StorageError};

const TAR_BLOCK: usize = 512;

/// The ustar header naming a blob `<kind>/<id>` (docs/FORMAT.md, "Packs").
fn tar_header(id: &Id, kind: BlobKind, len: u64) -> [u8; TAR_BLOCK] {
    let mut header = tar::Header::new_ustar();
    header.set_path(format!("{}/{}", kind.as_str(), id)).expect("a 69-byte ASCII name fits ustar");
    header.set_size(len);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    *header.as_bytes()
}

fn padding(len: u64) -> usize {
    (TAR_BLOCK - (len as usize % TAR_BLOCK)) % TAR_BLOCK
}

struct Frame {
    id: Id,
    kind: BlobKind,
    plain_length: u64,
    compressed: Vec<u8>,
}

/// Counts and hashes the bytes that reach the target: a pack's name is the BLAKE3 of its stored bytes.
struct Tally {
    inner: Box<dyn ObjectWriter>,
    hasher: blake3::Hasher,
    count: u64,
}

impl Write for Tally {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Sink {
    Plain(Tally),
    Sealed(age::stream::StreamWriter<Tally>),
}

impl Sink {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(t) => t.write_all(bytes),
            Sink::Sealed(s) => s.write_all(bytes),
        }
    }
    fn finish(self) -> io::Result<Tally> {
        match self {
            Sink::Plain(t) => Ok(t),
            Sink::Sealed(s) => s.finish(),
        }
    }
}

struct OpenPack {
    sink: Sink,
    plain_offset: u64,
    blobs: Vec<PackedBlob>,
}

/// What the writer stored during one run.
#[derive(Debug, Default)]
pub struct PackReport {
    pub packs: Vec<PackIndex>,
    pub stored_bytes: u64,
}

/// Accepts blobs (already known to be new) and stores them in packs. Dropping it without `finish`
/// stores nothing further: an open pack is discarded, never half-visible.
pub struct Packer {
    jobs: Option<SyncSender<(Id, BlobKind, Vec<u8>)>>,
    compressors: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<Result<PackReport, RepoError>>>,
}

impl Packer {
    pub fn start(repo: &Repository, recipients: Vec<Recipient>) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 8);
        let (job_tx, job_rx) = sync_channel::<(Id, BlobKind, Vec<u8>)>(threads * 2);
        let (frame_tx, frame_rx) = sync_channel::<Frame>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let level = repo.config.zstd_level;
        let compressors = (0..threads)
            .map(|_| {
                let (jobs, frames) = (job_rx.clone(), frame_tx.clone());
                std::thread::spawn(move || compress_blobs(&jobs, &frames, level))
            })
            .collect();
        let storage = repo.storage.clone();
        let pack_size = repo.config.pack_size;
        let writer = std::thread::spawn(move || write_packs(frame_rx, storage.as_ref(), &recipients, pack_size));
        Packer { jobs: Some(job_tx), compressors, writer: Some(writer) }
    }

    pub fn add(&mut self, id: Id, kind: BlobKind, data: Vec<u8>) -> Result<(), RepoError> {
        let sent = self.jobs.as_ref().expect("not finished").send((id, kind, data));
        if sent.is_err() {
            // The writer stopped early; its error is the one to report.
            return Err(self.join().err().unwrap_or_else(|| RepoError::Crypto("the pack writer stopped".into())));
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<PackReport, RepoError> {
        self.join()
    }

    fn join(&mut self) -> Result<PackReport, RepoError> {
        self.jobs.take();
        for c in self.compressors.drain(..) {
            c.join().expect("compressor thread panicked");
        }
        match self.writer.take() {
            Some(w) => w.join().expect("pack writer thread panicked"),
            None => Err(RepoError::Crypto("the pack writer already stopped".into())),
        }
    }
}

fn compress_blobs(jobs: &Mutex<Receiver<(Id, BlobKind, Vec<u8>)>>, frames: &SyncSender<Frame>, level: i32) {
    let mut compressor = zstd::bulk::Compressor::new(level).expect("valid zstd level");
    let mut entry = Vec::new();
    loop {
        let job = jobs.lock().expect("job queue").recv();
        let Ok((id, kind, data)) = job else { return };
        entry.clear();
        entry.extend_from_slice(&tar_header(&id, kind, data.len() as u64));
        entry.extend_from_slice(&data);
        entry.resize(entry.len() + padding(data.len() as u64), 0);
        let compressed = compressor.compress(&entry).expect("zstd compression of a bounded buffer");
        if frames.send(Frame { id, kind, plain_length: data.len() as u64, compressed }).is_err() {
            return;
        }
    }
}

fn write_packs(frames: Receiver<Frame>, storage: &dyn Storage, recipients: &[Recipient], pack_size: u64) -> Result<PackReport, RepoError> {
    let mut report = PackReport::default();
    let mut open: Option<OpenPack> = None;
    for frame in frames {
        let pack = match open.as_mut() {
            Some(pack) => pack,
            None => open.insert(open_pack(storage, recipients)?),
        };
        pack.sink.write_all(&frame.compressed).map_err(|e| StorageError::from_io(storage.location(), e))?;
        pack.blobs.push(PackedBlob {
            id: frame.id,
            kind: frame.kind,
            offset: pack.plain_offset,
            length: frame.compressed.len() as u64,
            plain_length: frame.plain_length,
        });
        pack.plain_offset += frame.compressed.len() as u64;
        // The plaintext length is within an age overhead of 0.03 % of the stored size: close enough.
        if pack.plain_offset >= pack_size {
            close_pack(open.take().unwrap(), storage, &mut report)?;
        }
    }
    if let Some(pack) = open {
        close_pack(pack, storage, &mut report)?;
    }
    Ok(report)
}

fn open_pack(storage: &dyn Storage, recipients: &[Recipient]) -> Result<OpenPack, RepoError> {
    let tally = Tally { inner: storage.create()?, hasher: blake3::Hasher::new(), count: 0 };
    let sink = if recipients.is_empty() { Sink::Plain(tally) } else { Sink::Sealed(crypt::encrypting_writer(recipients, tally)?) };
    Ok(OpenPack { sink, plain_offset: 0, blobs: Vec::new() })
}

fn close_pack(mut pack: OpenPack, storage: &dyn Storage, report: &mut PackReport) -> Result<(), RepoError> {
    let io_err = |e| StorageError::from_io(storage.location(), e);
    // The tar end-of-archive marker, as one more frame, keeps the pack a complete .tar.zst.
    let end = zstd::bulk::compress(&[0u8; 2 * TAR_BLOCK], 3).map_err(io_err)?;
    pack.sink.write_all(&end).map_err(io_err)?;
    let tally = pack.sink.finish().map_err(io_err)?;
    let id = Id(*tally.hasher.finalize().as_bytes());
    let size = tally.count;
    tally.inner.commit(&Key::new(ObjectKind::Pack, id.hex()))?;
    let pack_index = PackIndex { version: FORMAT_VERSION, pack: id, size, blobs: pack.blobs };
    let bytes = serde_json::to_vec(&pack_index).expect("index serializes");
    storage.put(&Key::new(ObjectKind::Index, id.hex()), &bytes)?;
    report.stored_bytes += size;
    report.packs.push(pack_index);
    Ok(())
}

/// A pack's plaintext stream, decrypted where the repository is encrypted; seekable either way.
enum PackStream {
    Plain(Box<dyn ObjectReader>),
    Sealed(age::stream::StreamReader<Box<dyn ObjectReader>>),
}

/// A pack stream that knows where it stands: blobs are mostly read in pack order, and a seek to the
/// current position would still throw away the read buffer (or re-decrypt an age segment).
struct OpenStream {
    stream: PackStream,
    position: u64,
}

impl OpenStream {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset != self.position {
            self.stream.seek(SeekFrom::Start(offset))?;
            self.position = offset;
        }
        self.stream.read_exact(buf)?;
        self.position += buf.len() as u64;
        Ok(())
    }
}

impl Read for PackStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PackStream::Plain(r) => r.read(buf),
            PackStream::Sealed(r) => r.read(buf),
        }
    }
}

impl Seek for PackStream {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            PackStream::Plain(r) => r.seek(pos),
            PackStream::Sealed(r) => r.seek(pos),
        }
    }
}

/// Reads single blobs by id, keeping the few most recently used packs open: restore reads mostly in
/// pack order, and reopening an encrypted pack costs a key unwrap.
pub struct BlobReader<'a> {
    repo: &'a Repository,
    index: &'a Index,
    identities: Option<&'a Identities>,
    open: Vec<(Id, OpenStream)>,
    decompressor: zstd::bulk::Decompressor<'static>,
    frame: Vec<u8>,
}

const OPEN_PACKS: usize = 4;

impl<'a> BlobReader<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index, identities: Option<&'a Identities>) -> Result<Self, RepoError> {
        if repo.config.encryption.is_some() {
            let ids = identities.ok_or(RepoError::IdentityRequired)?;
            crypt::check_identity(&repo.config, ids)?;
        }
        Ok(BlobReader { repo, index, identities, open: Vec::new(), decompressor: zstd::bulk::Decompressor::new().expect("zstd"), frame: Vec::new() })
    }

    pub fn read(&mut self, id: &Id) -> Result<Vec<u8>, RepoError> {
        let location = *self.index.get(id).ok_or_else(|| RepoError::Missing(format!("blob {id} (in no index)")))?;
        let (pack_id, _) = self.index.pack_of(&location);
        let what = format!("pack {pack_id}");
        let mut frame = std::mem::take(&mut self.frame);
        frame.resize(location.length as usize, 0);
        let read = self.stream(pack_id)?.read_at(location.offset, &mut frame);
        let decoded = match read {
            Ok(()) => decode_frame(&mut self.decompressor, &frame, id, &location).map_err(|detail| RepoError::corrupt(&what, detail)),
            Err(e) => Err(RepoError::corrupt(&what, format!("reading blob {id}: {e}"))),
        };
        self.frame = frame;
        decoded
    }

    fn stream(&mut self, pack_id: Id) -> Result<&mut OpenStream, RepoError> {
        if let Some(pos) = self.open.iter().position(|(id, _)| *id == pack_id) {
            let entry = self.open.remove(pos);
            self.open.push(entry);
        } else {
            let stream = OpenStream { stream: open_pack_stream(self.repo, self.identities, pack_id)?, position: 0 };
            if self.open.len() == OPEN_PACKS {
                self.open.remove(0);
            }
            self.open.push((pack_id, stream));
        }
        Ok(&mut self.open.last_mut().expect("just pushed").1)
    }
}

fn open_pack_stream(repo: &Repository, identities: Option<&Identities>, pack_id: Id) -> Result<PackStream, RepoError> {
    let raw = repo.storage.open(&Key::new(ObjectKind::Pack, pack_id.hex()))?;
    Ok(match (&repo.config.encryption, identities) {
        (None, _) => PackStream::Plain(raw),
        (Some(_), Some(ids)) => PackStream::Sealed(crypt::decrypting_reader(ids, &repo.config, raw, &format!("pack {pack_id}"))?),
        (Some(_), None) => return Err(RepoError::IdentityRequired),
    })
}

/// Decompresses one frame and checks that it is the tar entry of blob `id` with the right content.
fn decode_frame(decompressor: &mut zstd::bulk::Decompressor, frame: &[u8], id: &Id, location: &Location) -> Result<Vec<u8>, String> {
    let capacity = TAR_BLOCK + location.plain_length as usize + TAR_BLOCK;
    let entry = decompressor.decompress(frame, capacity).map_err(|e| format!("blob {id}: zstd: {e}"))?;
    let expected = tar_header(id, location.kind, location.plain_length);
    let end = TAR_BLOCK + location.plain_length as usize;
    if entry.len() < end || entry[..TAR_BLOCK] != expected {
        return Err(format!("blob {id}: its tar entry does not match the index"));
    }
    let data = entry[TAR_BLOCK..end].to_vec();
    if Id::of(&data) != *id {
        return Err(format!("blob {id}: content hash mismatch"));
    }
    Ok(data)
}

/// Reads a whole pack: checks its stored bytes against its name and, when it can be decrypted, every
/// blob in it against the index. Returns what is wrong, if anything.
pub fn check_pack(repo: &Repository, identities: Option<&Identities>, pack_index: &[(Id, Location)], pack_id: Id) -> Result<Vec<String>, RepoError> {
    let mut problems = Vec::new();
    let mut raw = repo.storage.open(&Key::new(ObjectKind::Pack, pack_id.hex()))?;
    let mut hasher = blake3::Hasher::new();
    io::copy(&mut raw, &mut hasher).map_err(|e| StorageError::from_io(format!("pack {pack_id}"), e))?;
    if Id(*hasher.finalize().as_bytes()) != pack_id {
        problems.push(format!("pack {pack_id}: stored bytes do not match its name (damaged or altered)"));
        return Ok(problems);
    }
    if repo.config.encryption.is_some() && identities.is_none() {
        return Ok(problems);
    }
    let mut stream = OpenStream { stream: open_pack_stream(repo, identities, pack_id)?, position: 0 };
    let mut decompressor = zstd::bulk::Decompressor::new().expect("zstd");
    let mut frame = Vec::new();
    let mut blobs: Vec<&(Id, Location)> = pack_index.iter().collect();
    blobs.sort_by_key(|(_, l)| l.offset);
    for (id, location) in blobs {
        frame.resize(location.length as usize, 0);
        if let Err(e) = stream.read_at(location.offset, &mut frame) {
            problems.push(format!("pack {pack_id}: blob {id}: {e}"));
            break;
        }
        if let Err(detail) = decode_frame(&mut decompressor, &frame, id, location) {
            problems.push(format!("pack {pack_id}: {detail}"));
        }
    }
    Ok(problems)
}
