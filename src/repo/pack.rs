//! Packs: a plain tar of blobs, compressed as a sequence of zstd frames that each hold whole tar
//! entries (header, content, padding): a large blob has a frame of its own, small ones share frames of
//! up to `SHARED_FRAME` bytes so that compression sees across them, and one blob is read by
//! decompressing its one bounded frame. The whole is optionally age-encrypted. Writing
//! runs as a small pipeline: compressor threads turn blobs into frames, one writer thread appends them
//! to the open pack and seals it when full, and a committer thread stores each sealed pack (fsync, its
//! final name), then the pack's index object, while the writer fills the next one.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::crypt::{self, Identities, Recipient};
use super::index::{Index, Location};
use super::packindex::{entry_length, PackIndex, PackedBlob};
use super::{BlobKind, Id, RepoError, Repository};
use crate::storage::{Key, ObjectKind, ObjectReader, ObjectWriter, Storage, StorageError};

pub const TAR_BLOCK: usize = 512;

/// The ustar header naming a blob `<kind>/<id>` (docs/FORMAT.md, "Packs").
pub fn tar_header(id: &Id, kind: BlobKind, len: u64) -> [u8; TAR_BLOCK] {
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

/// A writer closes a pack at this many blobs, whatever their size: its index object stays far below
/// `MAX_INDEX_OBJECT` (60 bytes per blob in version 2, about 190 of JSON in version 1), and a backup's
/// blobs on their way into packs, which it must remember, stay few.
pub const MAX_PACK_BLOBS: usize = 25_000;

/// Small blobs' entries are gathered into frames of up to this many bytes: enough for zstd to find what
/// they share (names, headers, similar content), little to decompress for reading one of them.
const SHARED_FRAME: usize = 256 << 10;
/// The largest decompressed frame a reader accepts, unless it holds a single larger entry.
pub const MAX_SHARED_FRAME: u64 = 1 << 20;

fn padding(len: u64) -> usize {
    (TAR_BLOCK - (len as usize % TAR_BLOCK)) % TAR_BLOCK
}

/// One compressed frame and the blobs whose tar entries it holds.
struct Frame {
    compressed: Vec<u8>,
    plain_length: u32,
    members: Vec<Member>,
}

struct Member {
    id: Id,
    kind: BlobKind,
    entry_offset: u32,
    plain_length: u32,
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
    /// The packs stored, in order.
    pub packs: Vec<Id>,
    pub stored_bytes: u64,
}

/// Room a blob's entry buffer keeps in front of the blob's bytes, for its tar header.
pub const ENTRY_HEADER: usize = TAR_BLOCK;

/// Idle buffers, kept for reuse: the pipeline moves the same few multi-MiB buffers round instead of
/// allocating (and faulting in) fresh ones for every blob.
struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
    /// The capacity a new buffer gets.
    capacity: usize,
    /// At most this many idle buffers are kept.
    keep: usize,
}

impl Pool {
    fn new(capacity: usize, keep: usize) -> Self {
        Pool { free: Mutex::new(Vec::new()), capacity, keep }
    }

    /// An empty buffer with at least the pool's capacity.
    fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().expect("buffer pool").pop();
        reused.unwrap_or_else(|| Vec::with_capacity(self.capacity))
    }

    fn give(&self, mut buf: Vec<u8>) {
        // Oversized ones (a huge tree) are not kept: they would pin their memory for the whole run.
        if buf.capacity() < self.capacity || buf.capacity() > 2 * self.capacity {
            return;
        }
        buf.clear();
        let mut free = self.free.lock().expect("buffer pool");
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

/// A blob on its way to a compressor: `entry` is `ENTRY_HEADER` bytes of room, then the blob's bytes.
struct Job {
    id: Id,
    kind: BlobKind,
    entry: Vec<u8>,
}

/// Blobs up to this size travel between the threads in batches: for many small files a hand-over per
/// blob costs more in thread switches than compressing it (measured: two thirds of the CPU time of a
/// backup of 500,000 files of 100 bytes went to switching).
const SMALL_ENTRY: usize = 64 << 10;
/// A batch is sent once it holds this many bytes, or this many blobs.
const BATCH_BYTES: usize = 512 << 10;
const BATCH_BLOBS: usize = 1024;

/// Accepts blobs (already known to be new) and stores them in packs. Dropping it without `finish`
/// stores nothing further: an open pack is discarded, never half-visible.
pub struct Packer {
    jobs: Option<SyncSender<Vec<Job>>>,
    /// Small blobs waiting to be sent as one batch, and their bytes.
    batch: Vec<Job>,
    batch_bytes: usize,
    entries: Arc<Pool>,
    compressors: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<Result<PackReport, RepoError>>>,
}

impl Packer {
    /// Starts the pipeline; each pack's index is sent to `committed` once the pack and its index object
    /// are stored (the receiver may be gone: nothing waits for it).
    pub fn start(repo: &Repository, recipients: Vec<Recipient>, committed: Sender<PackIndex>) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 8);
        let (job_tx, job_rx) = sync_channel::<Vec<Job>>(threads * 2);
        let (frame_tx, frame_rx) = sync_channel::<Vec<Frame>>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        // An entry holds the largest chunk with its header and padding; small trees fit too.
        let entry_capacity = ENTRY_HEADER + repo.config.chunker.max_size as usize + TAR_BLOCK;
        let keep = 4 * threads + 4;
        let entries = Arc::new(Pool::new(entry_capacity, keep));
        let outputs = Arc::new(Pool::new(zstd::zstd_safe::compress_bound(entry_capacity), keep));
        let level = repo.config.zstd_level;
        // Version 1 repositories keep one frame per blob until they are migrated.
        let version = repo.config.version;
        let shared_frames = version >= 2;
        let compressors = (0..threads)
            .map(|_| {
                let (jobs, frames, entries, outputs) = (job_rx.clone(), frame_tx.clone(), entries.clone(), outputs.clone());
                std::thread::spawn(move || compress_blobs(&jobs, &frames, &entries, &outputs, level, shared_frames))
            })
            .collect();
        let storage = repo.storage.clone();
        let pack_size = repo.config.pack_size;
        let writer = std::thread::spawn(move || write_packs(frame_rx, storage.as_ref(), &recipients, pack_size, version, &outputs, committed));
        Packer { jobs: Some(job_tx), batch: Vec::new(), batch_bytes: 0, entries, compressors, writer: Some(writer) }
    }

    /// An empty entry buffer: `ENTRY_HEADER` bytes of room for the header, and capacity for the largest
    /// chunk after them. Fill it, then hand it to `add_entry`, or give it back with `recycle`.
    pub fn entry_buffer(&self) -> Vec<u8> {
        let mut entry = self.entries.take();
        entry.resize(ENTRY_HEADER, 0);
        entry
    }

    /// Gives back an entry buffer that is not needed after all (its blob was a duplicate).
    pub fn recycle(&self, entry: Vec<u8>) {
        self.entries.give(entry);
    }

    pub fn add(&mut self, id: Id, kind: BlobKind, data: Vec<u8>) -> Result<(), RepoError> {
        let mut entry = self.entry_buffer();
        entry.extend_from_slice(&data);
        self.add_entry(id, kind, entry)
    }

    /// Stores the blob `entry[ENTRY_HEADER..]` (an `entry_buffer` with the blob's bytes appended).
    pub fn add_entry(&mut self, id: Id, kind: BlobKind, entry: Vec<u8>) -> Result<(), RepoError> {
        debug_assert!(entry.len() >= ENTRY_HEADER);
        if entry.len() > SMALL_ENTRY {
            return self.send(vec![Job { id, kind, entry }]);
        }
        // A batch must not hold on to the pool's chunk-sized buffers: a small blob moves to its own.
        let small = entry.clone();
        self.entries.give(entry);
        self.batch_bytes += small.len();
        self.batch.push(Job { id, kind, entry: small });
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_BLOBS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), RepoError> {
        self.batch_bytes = 0;
        match std::mem::take(&mut self.batch) {
            batch if batch.is_empty() => Ok(()),
            batch => self.send(batch),
        }
    }

    fn send(&mut self, jobs: Vec<Job>) -> Result<(), RepoError> {
        if self.jobs.as_ref().expect("not finished").send(jobs).is_err() {
            // The writer stopped early; its error is the one to report.
            return Err(self.join().err().unwrap_or(RepoError::Stopped("pack writer")));
        }
        Ok(())
    }

    pub fn finish(&mut self) -> Result<PackReport, RepoError> {
        self.flush_batch()?;
        self.join()
    }

    fn join(&mut self) -> Result<PackReport, RepoError> {
        self.jobs.take();
        for c in self.compressors.drain(..) {
            c.join().expect("compressor thread panicked");
        }
        match self.writer.take() {
            Some(w) => w.join().expect("pack writer thread panicked"),
            None => Err(RepoError::Stopped("pack writer")),
        }
    }
}

fn compress_blobs(jobs: &Mutex<Receiver<Vec<Job>>>, frames: &SyncSender<Vec<Frame>>, entries: &Pool, outputs: &Pool, level: i32, shared_frames: bool) {
    let mut compressor = zstd::bulk::Compressor::new(level).expect("valid zstd level");
    let compress = |compressor: &mut zstd::bulk::Compressor, plain: &[u8], members: Vec<Member>| {
        let bound = zstd::zstd_safe::compress_bound(plain.len());
        // Small frames get buffers of their own size; the pool's are chunk-sized.
        let mut compressed = if plain.len() > SMALL_ENTRY { outputs.take() } else { Vec::with_capacity(bound) };
        compressed.reserve(bound);
        compressor.compress_to_buffer(plain, &mut compressed).expect("zstd compression into a large enough buffer");
        Frame { compressed, plain_length: plain.len() as u32, members }
    };
    // The small blobs' entries gathered for the next shared frame.
    let mut shared = Vec::with_capacity(SHARED_FRAME);
    let mut members = Vec::new();
    loop {
        let batch = jobs.lock().expect("job queue").recv();
        let Ok(batch) = batch else { return };
        let mut done = Vec::with_capacity(batch.len());
        for Job { id, kind, mut entry } in batch {
            // The tar entry is built in place: header in the room at the front, padding appended.
            let plain_length = (entry.len() - ENTRY_HEADER) as u64;
            entry[..ENTRY_HEADER].copy_from_slice(&tar_header(&id, kind, plain_length));
            entry.resize(entry.len() + padding(plain_length), 0);
            let member = Member { id, kind, entry_offset: 0, plain_length: plain_length as u32 };
            if shared_frames && entry.len() <= SMALL_ENTRY {
                if shared.len() + entry.len() > SHARED_FRAME {
                    done.push(compress(&mut compressor, &shared, std::mem::take(&mut members)));
                    shared.clear();
                }
                members.push(Member { entry_offset: shared.len() as u32, ..member });
                shared.extend_from_slice(&entry);
            } else {
                done.push(compress(&mut compressor, &entry, vec![member]));
            }
            entries.give(entry);
        }
        // A batch's frames close with it: the batch is the unit the writer orders.
        if !shared.is_empty() {
            done.push(compress(&mut compressor, &shared, std::mem::take(&mut members)));
            shared.clear();
        }
        if frames.send(done).is_err() {
            return;
        }
    }
}

/// Appends frames to packs. A full pack is handed to a committer thread, which makes it durable
/// (fsync, link, then its index object): the frames for the next pack keep flowing meanwhile.
fn write_packs(
    frames: Receiver<Vec<Frame>>,
    storage: &dyn Storage,
    recipients: &[Recipient],
    pack_size: u64,
    version: u32,
    outputs: &Pool,
    committed: Sender<PackIndex>,
) -> Result<PackReport, RepoError> {
    let commit_failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // One sealed pack may wait while another is being committed.
        let (sealed_tx, sealed_rx) = sync_channel::<SealedPack>(1);
        let commit_failed = &commit_failed;
        let committer = scope.spawn(move || -> Result<PackReport, RepoError> {
            let mut report = PackReport::default();
            for sealed in sealed_rx {
                match commit_pack(sealed, storage, version, &mut report) {
                    Ok(pack_index) => {
                        let _ = committed.send(pack_index);
                    }
                    Err(e) => {
                        commit_failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok(report)
        });
        let written = fill_packs(frames, storage, recipients, pack_size, outputs, &sealed_tx, commit_failed);
        drop(sealed_tx);
        // A failed commit stops the writer too: the commit's error is the one to report.
        let report = committer.join().expect("pack committer thread panicked")?;
        written.map(|()| report)
    })
}

fn fill_packs(
    frames: Receiver<Vec<Frame>>,
    storage: &dyn Storage,
    recipients: &[Recipient],
    pack_size: u64,
    outputs: &Pool,
    sealed: &SyncSender<SealedPack>,
    commit_failed: &AtomicBool,
) -> Result<(), RepoError> {
    let stopped = || RepoError::Stopped("pack committer");
    let mut open: Option<OpenPack> = None;
    let hand_over = |pack: OpenPack| -> Result<(), RepoError> {
        let pack = seal_pack(pack, storage)?;
        sealed.send(pack).map_err(|_| stopped())
    };
    for frame in frames.into_iter().flatten() {
        if commit_failed.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let pack = match open.as_mut() {
            Some(pack) => pack,
            None => open.insert(open_pack(storage, recipients)?),
        };
        pack.sink.write_all(&frame.compressed).map_err(|e| StorageError::from_io(storage.location(), e))?;
        let frame_offset = pack.plain_offset;
        pack.blobs.extend(frame.members.iter().map(|m| PackedBlob {
            id: m.id,
            kind: m.kind,
            frame_offset,
            frame_length: frame.compressed.len() as u32,
            frame_plain_length: frame.plain_length,
            entry_offset: m.entry_offset,
            plain_length: m.plain_length,
        }));
        pack.plain_offset += frame.compressed.len() as u64;
        outputs.give(frame.compressed);
        // The plaintext length is within an age overhead of 0.03 % of the stored size: close enough.
        if pack.plain_offset >= pack_size || pack.blobs.len() >= MAX_PACK_BLOBS {
            hand_over(open.take().unwrap())?;
        }
    }
    if let Some(pack) = open {
        hand_over(pack)?;
    }
    Ok(())
}

fn open_pack(storage: &dyn Storage, recipients: &[Recipient]) -> Result<OpenPack, RepoError> {
    let tally = Tally { inner: storage.create()?, hasher: blake3::Hasher::new(), count: 0 };
    let sink = if recipients.is_empty() { Sink::Plain(tally) } else { Sink::Sealed(crypt::encrypting_writer(recipients, tally)?) };
    Ok(OpenPack { sink, plain_offset: 0, blobs: Vec::new() })
}

/// A pack with all its bytes written, not yet durable nor under its name.
struct SealedPack {
    tally: Tally,
    blobs: Vec<PackedBlob>,
}

fn seal_pack(mut pack: OpenPack, storage: &dyn Storage) -> Result<SealedPack, RepoError> {
    let io_err = |e| StorageError::from_io(storage.location(), e);
    // The tar end-of-archive marker, as one more frame, keeps the pack a complete .tar.zst.
    let end = zstd::bulk::compress(&[0u8; 2 * TAR_BLOCK], 3).map_err(io_err)?;
    pack.sink.write_all(&end).map_err(io_err)?;
    let tally = pack.sink.finish().map_err(io_err)?;
    Ok(SealedPack { tally, blobs: pack.blobs })
}

fn commit_pack(sealed: SealedPack, storage: &dyn Storage, version: u32, report: &mut PackReport) -> Result<PackIndex, RepoError> {
    let SealedPack { tally, blobs } = sealed;
    let id = Id(*tally.hasher.finalize().as_bytes());
    let size = tally.count;
    tally.inner.commit(&Key::new(ObjectKind::Pack, id.hex()))?;
    let pack_index = PackIndex { pack: id, size, blobs };
    storage.put(&Key::new(ObjectKind::Index, id.hex()), &pack_index.encode(version))?;
    report.stored_bytes += size;
    report.packs.push(id);
    Ok(pack_index)
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


/// Decompresses frames and takes blobs' entries out of them, keeping the last frame: small blobs share
/// frames, and readers mostly go through a pack in order.
struct FrameDecoder {
    decompressor: zstd::bulk::Decompressor<'static>,
    compressed: Vec<u8>,
    /// The pack and the index's description of the frame in `plain`.
    last: Option<(Id, u64, u32, u32)>,
    plain: Vec<u8>,
}

impl FrameDecoder {
    fn new() -> Self {
        FrameDecoder { decompressor: zstd::bulk::Decompressor::new().expect("zstd"), compressed: Vec::new(), last: None, plain: Vec::new() }
    }

    /// A blob's content, checked against its id and tar header. Errors say what is wrong, for the
    /// caller to attribute to the pack.
    fn blob(&mut self, stream: &mut OpenStream, pack: Id, blob: &PackedBlob) -> Result<Vec<u8>, String> {
        let id = blob.id;
        let frame = (pack, blob.frame_offset, blob.frame_length, blob.frame_plain_length);
        if self.last != Some(frame) {
            self.last = None;
            self.compressed.resize(blob.frame_length as usize, 0);
            stream.read_at(blob.frame_offset, &mut self.compressed).map_err(|e| format!("blob {id}: reading its frame: {e}"))?;
            self.plain.clear();
            // Never more than the index announces, whatever the frame declares.
            let capacity = blob.frame_plain_length as usize;
            self.plain.reserve(capacity);
            self.decompressor
                .decompress_to_buffer(&self.compressed, &mut self.plain)
                .map_err(|e| format!("blob {id}: decompressing its frame into the {capacity} bytes its index entry allows: {e}"))?;
            if self.plain.len() != capacity {
                return Err(format!("blob {id}: its frame holds {} bytes, the index says {capacity}", self.plain.len()));
            }
            self.last = Some(frame);
        }
        let start = blob.entry_offset as usize;
        let end = start + TAR_BLOCK + blob.plain_length as usize;
        let expected = tar_header(&id, blob.kind, blob.plain_length.into());
        if self.plain.get(start..start + TAR_BLOCK) != Some(&expected[..]) || end > self.plain.len() {
            return Err(format!("blob {id}: its tar entry does not match the index"));
        }
        let data = &self.plain[start + TAR_BLOCK..end];
        if Id::of(data) != id {
            return Err(format!("blob {id}: content hash mismatch"));
        }
        Ok(data.to_vec())
    }
}

/// Reads single blobs by id, keeping the few most recently used packs open: restore reads mostly in
/// pack order, and reopening an encrypted pack costs a key unwrap.
pub struct BlobReader<'a> {
    repo: &'a Repository,
    index: &'a Index,
    identities: Option<&'a Identities>,
    open: Vec<(Id, OpenStream)>,
    frames: FrameDecoder,
}

const OPEN_PACKS: usize = 4;

impl<'a> BlobReader<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index, identities: Option<&'a Identities>) -> Result<Self, RepoError> {
        if repo.config.encryption.is_some() {
            let ids = identities.ok_or(RepoError::IdentityRequired)?;
            crypt::check_identity(&repo.config, ids)?;
        }
        Ok(BlobReader { repo, index, identities, open: Vec::new(), frames: FrameDecoder::new() })
    }

    pub fn index(&self) -> &'a Index {
        self.index
    }

    pub fn config(&self) -> &'a super::RepoConfig {
        &self.repo.config
    }

    /// Reads a blob from the first of its copies that reads back whole (a copy's pack may be missing,
    /// damaged, or an attacker's); the first copy's error when none does.
    pub fn read(&mut self, id: &Id) -> Result<Vec<u8>, RepoError> {
        let index = self.index;
        let mut first_error = None;
        for location in index.locations(id)? {
            match self.read_at(&location) {
                Ok(data) => return Ok(data),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| RepoError::Missing(format!("blob {id} (in no index)"))))
    }

    fn read_at(&mut self, location: &Location) -> Result<Vec<u8>, RepoError> {
        let (pack_id, _) = self.index.pack_of(location);
        let what = format!("pack {pack_id}");
        check_bounds(&self.repo.config, &location.blob).map_err(|detail| RepoError::corrupt(&what, detail))?;
        let open = &mut self.open;
        if let Some(pos) = open.iter().position(|(id, _)| *id == pack_id) {
            let entry = open.remove(pos);
            open.push(entry);
        } else {
            let stream = OpenStream { stream: open_pack_stream(self.repo, self.identities, pack_id)?, position: 0 };
            if open.len() == OPEN_PACKS {
                open.remove(0);
            }
            open.push((pack_id, stream));
        }
        let stream = &mut open.last_mut().expect("just pushed").1;
        self.frames.blob(stream, pack_id, &location.blob).map_err(|detail| RepoError::corrupt(&what, detail))
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

/// The index is as untrusted as the rest: its lengths are checked against the format's limits before
/// they size a buffer, and decompression never produces more than the frame they announce.
fn check_bounds(config: &super::RepoConfig, blob: &PackedBlob) -> Result<(), String> {
    let id = blob.id;
    let limit = match blob.kind {
        BlobKind::Data => config.chunker.max_size as u64,
        BlobKind::Tree => super::tree::MAX_TREE_SIZE,
    };
    let plain_length = u64::from(blob.plain_length);
    if plain_length > limit {
        return Err(format!(
            "blob {id}: the index says it holds {plain_length} bytes; a {} blob holds at most {limit} (docs/FORMAT.md, \"Limits\")",
            blob.kind.as_str()
        ));
    }
    let entry_end = u64::from(blob.entry_offset) + entry_length(plain_length);
    let frame_plain = u64::from(blob.frame_plain_length);
    if blob.entry_offset as usize % TAR_BLOCK != 0 || entry_end > frame_plain {
        return Err(format!("blob {id}: the index places its tar entry outside its frame"));
    }
    if frame_plain > MAX_SHARED_FRAME.max(entry_length(plain_length)) {
        return Err(format!("blob {id}: the index says its frame holds {frame_plain} bytes; a frame holds at most {MAX_SHARED_FRAME} or one entry"));
    }
    let frame_limit = zstd::zstd_safe::compress_bound(frame_plain as usize) as u64;
    if u64::from(blob.frame_length) > frame_limit {
        return Err(format!("blob {id}: the index says its frame is {} bytes; a frame of {frame_plain} bytes is at most {frame_limit}", blob.frame_length));
    }
    Ok(())
}

/// Reads a whole pack: checks its stored bytes against its name and, when it can be decrypted, every
/// blob its index object lists. Returns what is wrong, if anything.
pub fn check_pack(repo: &Repository, identities: Option<&Identities>, pack_index: &PackIndex) -> Result<Vec<String>, RepoError> {
    let pack_id = pack_index.pack;
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
    let mut frames = FrameDecoder::new();
    let mut blobs: Vec<&PackedBlob> = pack_index.blobs.iter().collect();
    blobs.sort_by_key(|b| (b.frame_offset, b.entry_offset));
    for blob in blobs {
        let checked = check_bounds(&repo.config, blob).and_then(|()| frames.blob(&mut stream, pack_id, blob));
        if let Err(detail) = checked {
            problems.push(format!("pack {pack_id}: {detail}"));
        }
    }
    Ok(problems)
}
