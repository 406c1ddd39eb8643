//! Checks a PostgreSQL custom-format archive (`pg_dump -Fc -Z0`) as it streams past: that it is whole
//! (every data block its table of contents promises is there, and ends), and how many rows each table's
//! COPY data holds. The layout is pg_dump's own (pg_backup_archiver.c `ReadHead`/`ReadToc`,
//! pg_backup_custom.c); only a header field or a kept TOC string is ever buffered, so memory stays small
//! whatever the size of the data.
//!
//! An archive is the header, the TOC, then one data block per TOC entry that has data, in TOC order,
//! and nothing after the last block: there is no end marker, so only the TOC tells that all came.
//! (Written to a seekable file, the TOC is rewritten in place with the blocks' offsets; that reads the
//! same.) A block is a type byte, the entry's dump id, then chunks (a length, that many bytes) ended by
//! a zero length; a large-object block holds instead a series of `oid, chunks…, 0`, ended by oid 0.

use std::collections::{BTreeMap, HashMap};

/// A string longer than this is taken for corruption rather than buffered or skipped.
const MAX_STRING: i64 = 64 << 20;
/// The archive versions read here: 1.12 (pg_dump 9.0) to 1.16 (pg_dump 17).
const MINORS: std::ops::RangeInclusive<u8> = 12..=16;
/// The format byte of a custom-format archive (`archCustom`).
const FORMAT_CUSTOM: u8 = 1;
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
/// The data offset flag of a TOC entry that has no data (`K_OFFSET_NO_DATA`).
const OFFSET_NO_DATA: u8 = 3;

/// What a complete archive says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// "1.14" etc.
    pub archive_version: String,
    /// The server's version string, e.g. "15.18 (Debian 15.18-0+deb12u1)".
    pub server_version: String,
    /// pg_dump's version string.
    pub dump_version: String,
    pub database: String,
    pub toc_entries: u64,
    /// Rows per table ("schema.table") from the TABLE DATA entries' COPY data: one line per row.
    /// Tables dumped as INSERT statements (`--inserts`) are not counted, so not listed.
    pub tables: BTreeMap<String, u64>,
}

/// A TOC entry's fields, in `ReadToc`'s order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    DumpId,
    HadDumper,
    TableOid,
    Oid,
    Tag,
    Desc,
    Section,
    Defn,
    DropStmt,
    CopyStmt,
    Namespace,
    Tablespace,
    TableAm,
    RelKind,
    Owner,
    WithOids,
    Deps,
    DataOffset,
}

use Field::*;

const FIELDS_1_12: &[Field] =
    &[DumpId, HadDumper, TableOid, Oid, Tag, Desc, Section, Defn, DropStmt, CopyStmt, Namespace, Tablespace, Owner, WithOids, Deps, DataOffset];
/// 1.14 (pg_dump 12) added the table access method.
const FIELDS_1_14: &[Field] =
    &[DumpId, HadDumper, TableOid, Oid, Tag, Desc, Section, Defn, DropStmt, CopyStmt, Namespace, Tablespace, TableAm, Owner, WithOids, Deps, DataOffset];
/// 1.16 (pg_dump 17) added the relation kind.
const FIELDS_1_16: &[Field] = &[
    DumpId, HadDumper, TableOid, Oid, Tag, Desc, Section, Defn, DropStmt, CopyStmt, Namespace, Tablespace, TableAm, RelKind, Owner, WithOids, Deps, DataOffset,
];

/// Where the reader is in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Magic,
    Version,
    /// Revision, int size, offset size, format.
    Sizes,
    Compression,
    Date(u8),
    Database,
    ServerVersion,
    DumpVersion,
    TocCount,
    Toc(usize),
    BlockType,
    BlockId {
        blobs: bool,
    },
    ChunkLength,
    ChunkData,
    BlobOid,
}

/// What the current step reads.
enum Need {
    Bytes(usize),
    /// `ReadInt`: a sign byte, then int-size bytes, least significant first.
    Int,
    /// `ReadStr`: an int length (-1 for null), then the bytes; `keep` buffers them, else they are skipped.
    Str {
        keep: bool,
    },
}

/// A TOC entry that has data: its block must come.
struct DataEntry {
    dump_id: i64,
    label: String,
    blobs: bool,
    /// "schema.table" when the data is COPY text whose rows are counted.
    table: Option<String>,
    done: bool,
}

/// The TOC entry being read.
#[derive(Default)]
struct Draft {
    dump_id: i64,
    had_dumper: bool,
    tag: Option<String>,
    desc: Option<String>,
    namespace: Option<String>,
    copy: bool,
}

/// Counts the lines of COPY text. pg_dump ends it with a `\.` line and blank lines (which are not
/// rows); a data row never reads `\.`, since COPY writes a backslash as `\\`.
#[derive(Default)]
struct Rows {
    rows: u64,
    /// How the current line began: 0 nothing yet, 1 `\`, 2 `\.`, 3 anything else.
    line: u8,
    ended: bool,
}

impl Rows {
    fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let line = &data[..newline.unwrap_or(data.len())];
            for &b in line.iter().take(3) {
                self.line = match (self.line, b) {
                    (0, b'\\') => 1,
                    (1, b'.') => 2,
                    _ => 3,
                };
            }
            match newline {
                Some(at) => {
                    self.end_line();
                    data = &data[at + 1..];
                }
                None => data = &[],
            }
        }
    }

    fn end_line(&mut self) {
        if self.line == 2 {
            self.ended = true;
        } else if !self.ended {
            self.rows += 1;
        }
        self.line = 0;
    }

    fn total(mut self) -> u64 {
        if self.line != 0 {
            self.end_line();
        }
        self.rows
    }
}

/// Feed it the archive's bytes in order, then [`finish`](Self::finish).
pub struct CustomArchiveCheck {
    /// Bytes taken so far.
    offset: u64,
    step: Step,
    /// The bytes of the item being read (a header field, an int, a kept string's body).
    item: Vec<u8>,
    item_at: u64,
    /// The length of the kept string whose body is being read.
    body: Option<usize>,
    /// Bytes still to pass over: chunk data, or a string not kept.
    skip: u64,
    minor: u8,
    int_size: usize,
    off_size: usize,
    server_version: String,
    dump_version: String,
    database: String,
    toc_count: u64,
    toc_read: u64,
    draft: Draft,
    data: Vec<DataEntry>,
    by_id: HashMap<i64, usize>,
    /// Data blocks still to come.
    pending: usize,
    /// The data entry whose block is being read, and whether inside one of its large objects.
    open: usize,
    in_blob: bool,
    rows: Option<Rows>,
    tables: BTreeMap<String, u64>,
    failed: Option<String>,
}

impl Default for CustomArchiveCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl CustomArchiveCheck {
    pub fn new() -> Self {
        CustomArchiveCheck {
            offset: 0,
            step: Step::Magic,
            item: Vec::new(),
            item_at: 0,
            body: None,
            skip: 0,
            minor: 0,
            int_size: 4,
            off_size: 8,
            server_version: String::new(),
            dump_version: String::new(),
            database: String::new(),
            toc_count: 0,
            toc_read: 0,
            draft: Draft::default(),
            data: Vec::new(),
            by_id: HashMap::new(),
            pending: 0,
            open: 0,
            in_blob: false,
            rows: None,
            tables: BTreeMap::new(),
            failed: None,
        }
    }

    /// Feeds the next bytes of the stream, in order, in pieces of any size. Fails, for good, at the
    /// first byte that cannot belong to a pg_dump archive.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        self.take(bytes).inspect_err(|e| self.failed = Some(e.clone()))
    }

    fn take(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64) as usize;
                if let Some(rows) = self.rows.as_mut().filter(|_| self.step == Step::ChunkData) {
                    rows.scan(&bytes[..n]);
                }
                self.skip -= n as u64;
                self.offset += n as u64;
                bytes = &bytes[n..];
                if self.skip == 0 {
                    if self.step == Step::ChunkData {
                        self.step = Step::ChunkLength;
                    } else {
                        self.string(Some(Vec::new()))?;
                    }
                }
                continue;
            }
            if self.step == Step::BlockType && self.pending == 0 {
                return Err(format!("unexpected data at byte {} after the last data block: the archive is corrupt", self.offset));
            }
            let want = match (self.body, self.need()) {
                (Some(len), _) => len,
                (None, Need::Bytes(n)) => n,
                (None, Need::Int | Need::Str { .. }) => 1 + self.int_size,
            };
            if self.item.is_empty() {
                self.item_at = self.offset;
            }
            let n = (want - self.item.len()).min(bytes.len());
            self.item.extend_from_slice(&bytes[..n]);
            self.offset += n as u64;
            bytes = &bytes[n..];
            if self.item.len() == want {
                let item = std::mem::take(&mut self.item);
                self.complete(item)?;
            }
        }
        Ok(())
    }

    fn fields(&self) -> &'static [Field] {
        match self.minor {
            ..=13 => FIELDS_1_12,
            14 | 15 => FIELDS_1_14,
            _ => FIELDS_1_16,
        }
    }

    fn need(&self) -> Need {
        match self.step {
            Step::Magic => Need::Bytes(5),
            Step::Version => Need::Bytes(2),
            Step::Sizes => Need::Bytes(4),
            // 1.15 (pg_dump 16) names the algorithm in a byte; before, an int gave the gzip level.
            Step::Compression if self.minor >= 15 => Need::Bytes(1),
            Step::Compression | Step::Date(_) | Step::TocCount | Step::BlockId { .. } | Step::ChunkLength | Step::BlobOid => Need::Int,
            Step::Database | Step::ServerVersion | Step::DumpVersion => Need::Str { keep: true },
            Step::Toc(i) => match self.fields()[i] {
                DumpId | HadDumper | Section | RelKind => Need::Int,
                Tag | Desc | Namespace | CopyStmt => Need::Str { keep: true },
                DataOffset => Need::Bytes(1 + self.off_size),
                TableOid | Oid | Defn | DropStmt | Tablespace | TableAm | Owner | WithOids | Deps => Need::Str { keep: false },
            },
            Step::BlockType => Need::Bytes(1),
            Step::ChunkData => unreachable!("chunk data is skipped, not read"),
        }
    }

    fn complete(&mut self, item: Vec<u8>) -> Result<(), String> {
        if self.body.take().is_some() {
            return self.string(Some(item));
        }
        match self.need() {
            Need::Bytes(_) => self.bytes(&item),
            Need::Int => self.int(read_int(&item)),
            Need::Str { keep } => match read_int(&item) {
                len if len < 0 => self.string(None),
                0 => self.string(Some(Vec::new())),
                len if len > MAX_STRING => Err(format!("a string of {len} bytes at byte {}, over 64 MiB: the archive is corrupt", self.item_at)),
                len if keep => {
                    self.body = Some(len as usize);
                    Ok(())
                }
                len => {
                    self.skip = len as u64;
                    Ok(())
                }
            },
        }
    }

    fn bytes(&mut self, item: &[u8]) -> Result<(), String> {
        let at = self.item_at;
        match self.step {
            Step::Magic if item == b"PGDMP" => self.step = Step::Version,
            Step::Magic => return Err(format!("not a pg_dump custom-format archive: it begins with {:?}, not PGDMP", String::from_utf8_lossy(item))),
            Step::Version => {
                let (major, minor) = (item[0], item[1]);
                if major != 1 || !MINORS.contains(&minor) {
                    return Err(format!(
                        "archive version {major}.{minor} at byte {at} is not one this check reads (1.{} to 1.{}: pg_dump 9.0 to 17)",
                        MINORS.start(),
                        MINORS.end()
                    ));
                }
                self.minor = minor;
                self.step = Step::Sizes;
            }
            Step::Sizes => {
                let (int_size, off_size, format) = (item[1], item[2], item[3]);
                if !(1..=8).contains(&int_size) || !(1..=16).contains(&off_size) {
                    return Err(format!("integer size {int_size} or offset size {off_size} at byte {} is not plausible: the archive is corrupt", at + 1));
                }
                if format != FORMAT_CUSTOM {
                    return Err(format!("the archive's format byte is {format}, not custom ({FORMAT_CUSTOM}): only pg_dump -Fc archives are read as a stream"));
                }
                (self.int_size, self.off_size) = (int_size as usize, off_size as usize);
                self.step = Step::Compression;
            }
            Step::Compression => match item[0] {
                0 => self.step = Step::Date(0),
                algorithm => {
                    let name = match algorithm {
                        1 => "gzip".to_string(),
                        2 => "lz4".to_string(),
                        3 => "zstd".to_string(),
                        other => format!("unknown algorithm {other}"),
                    };
                    return Err(compressed(&name));
                }
            },
            Step::Toc(_) => {
                if !(1..=3).contains(&item[0]) {
                    return Err(format!("data offset flag {} at byte {at} is not one pg_dump writes: the archive is corrupt", item[0]));
                }
                self.end_entry(item[0] != OFFSET_NO_DATA)?;
            }
            Step::BlockType => {
                let blobs = match item[0] {
                    BLK_DATA => false,
                    BLK_BLOBS => true,
                    other => return Err(format!("unknown data block type {other} at byte {at}: the archive is corrupt")),
                };
                self.step = Step::BlockId { blobs };
            }
            _ => unreachable!("{:?} reads no bytes", self.step),
        }
        Ok(())
    }

    fn int(&mut self, value: i64) -> Result<(), String> {
        let at = self.item_at;
        match self.step {
            Step::Compression if value == 0 => self.step = Step::Date(0),
            Step::Compression if value < 0 => return Err(compressed("gzip at its default level")),
            Step::Compression => return Err(compressed(&format!("gzip at level {value}"))),
            Step::Date(6) => self.step = Step::Database,
            Step::Date(n) => self.step = Step::Date(n + 1),
            Step::TocCount if value < 0 => return Err(format!("TOC entry count {value} at byte {at}: the archive is corrupt")),
            Step::TocCount => {
                self.toc_count = value as u64;
                self.step = if value == 0 { Step::BlockType } else { Step::Toc(0) };
            }
            Step::Toc(i) => {
                match self.fields()[i] {
                    DumpId if value <= 0 => return Err(format!("TOC entry {} has dump id {value} (byte {at}): the archive is corrupt", self.toc_read + 1)),
                    DumpId => self.draft.dump_id = value,
                    HadDumper => self.draft.had_dumper = value != 0,
                    _ => {}
                }
                self.step = Step::Toc(i + 1);
            }
            Step::BlockId { blobs } => {
                let Some(&index) = self.by_id.get(&value) else {
                    return Err(format!("the data block at byte {at} is for dump id {value}, which the TOC lists without data: the archive is corrupt"));
                };
                let entry = &self.data[index];
                if entry.done {
                    return Err(format!("a second data block for {} (dump id {value}) at byte {at}: the archive is corrupt", entry.label));
                }
                if entry.blobs != blobs {
                    return Err(format!("the data block of {} (dump id {value}) at byte {at} is of the wrong type: the archive is corrupt", entry.label));
                }
                self.open = index;
                self.rows = entry.table.as_ref().map(|_| Rows::default());
                self.step = if blobs { Step::BlobOid } else { Step::ChunkLength };
            }
            Step::ChunkLength if value < 0 => return Err(format!("negative chunk length {value} at byte {at}: the archive is corrupt")),
            Step::ChunkLength if value > 0 => {
                self.skip = value as u64;
                self.step = Step::ChunkData;
            }
            Step::ChunkLength if self.in_blob => {
                self.in_blob = false;
                self.step = Step::BlobOid;
            }
            Step::ChunkLength => self.end_block(),
            // Oids above 2^31 come as negative ints (WriteInt takes an int); only 0 ends the series.
            Step::BlobOid if value == 0 => self.end_block(),
            Step::BlobOid => {
                self.in_blob = true;
                self.step = Step::ChunkLength;
            }
            _ => unreachable!("{:?} reads no int", self.step),
        }
        Ok(())
    }

    fn string(&mut self, value: Option<Vec<u8>>) -> Result<(), String> {
        let text = value.as_deref().map(|v| String::from_utf8_lossy(v).into_owned());
        match self.step {
            Step::Database => {
                self.database = text.unwrap_or_default();
                self.step = Step::ServerVersion;
            }
            Step::ServerVersion => {
                self.server_version = text.unwrap_or_default();
                self.step = Step::DumpVersion;
            }
            Step::DumpVersion => {
                self.dump_version = text.unwrap_or_default();
                self.step = Step::TocCount;
            }
            Step::Toc(i) => {
                match self.fields()[i] {
                    Tag => self.draft.tag = text,
                    Desc => self.draft.desc = text,
                    Namespace => self.draft.namespace = text,
                    CopyStmt => self.draft.copy = text.is_some_and(|t| t.starts_with("COPY ")),
                    // The dependency list runs until a null string.
                    Deps if value.is_some() => return Ok(()),
                    _ => {}
                }
                self.step = Step::Toc(i + 1);
            }
            _ => unreachable!("{:?} reads no string", self.step),
        }
        Ok(())
    }

    fn end_entry(&mut self, has_data: bool) -> Result<(), String> {
        let draft = std::mem::take(&mut self.draft);
        self.toc_read += 1;
        if draft.had_dumper && has_data {
            let desc = draft.desc.unwrap_or_default();
            let tag = draft.tag.unwrap_or_default();
            let name = match draft.namespace.filter(|n| !n.is_empty()) {
                Some(namespace) => format!("{namespace}.{tag}"),
                None => tag,
            };
            let label = if name == desc { desc.clone() } else { format!("{desc} {name}") };
            if self.by_id.insert(draft.dump_id, self.data.len()).is_some() {
                return Err(format!("TOC entry {} repeats dump id {}: the archive is corrupt", self.toc_read, draft.dump_id));
            }
            let table = (desc == "TABLE DATA" && draft.copy).then_some(name);
            self.data.push(DataEntry { dump_id: draft.dump_id, label, blobs: desc == "BLOBS", table, done: false });
            self.pending += 1;
        }
        self.step = if self.toc_read == self.toc_count { Step::BlockType } else { Step::Toc(0) };
        Ok(())
    }

    fn end_block(&mut self) {
        let entry = &mut self.data[self.open];
        entry.done = true;
        self.pending -= 1;
        if let (Some(table), Some(rows)) = (&entry.table, self.rows.take()) {
            *self.tables.entry(table.clone()).or_default() += rows.total();
        }
        self.step = Step::BlockType;
    }

    /// At the end of the stream: the summary if the archive is complete, else why not.
    pub fn finish(self) -> Result<ArchiveSummary, String> {
        if let Some(failed) = self.failed {
            return Err(failed);
        }
        let at = self.offset;
        let cut = "the dump was cut short";
        match self.step {
            Step::Magic if at == 0 => Err(format!("the archive is empty: {cut}")),
            Step::Magic
            | Step::Version
            | Step::Sizes
            | Step::Compression
            | Step::Date(_)
            | Step::Database
            | Step::ServerVersion
            | Step::DumpVersion
            | Step::TocCount => Err(format!("the archive ends inside its header at byte {at}: {cut}")),
            Step::Toc(_) => {
                Err(format!("the archive ends inside its table of contents (entry {} of {}) at byte {at}: {cut}", self.toc_read + 1, self.toc_count))
            }
            Step::BlockType => {
                let missing: Vec<&DataEntry> = self.data.iter().filter(|d| !d.done).collect();
                match missing.first() {
                    None => Ok(ArchiveSummary {
                        archive_version: format!("1.{}", self.minor),
                        server_version: self.server_version,
                        dump_version: self.dump_version,
                        database: self.database,
                        toc_entries: self.toc_count,
                        tables: self.tables,
                    }),
                    Some(first) => {
                        let more = match missing.len() - 1 {
                            0 => String::new(),
                            n => format!(" and {n} more"),
                        };
                        Err(format!("the archive ends at byte {at} without the data of {}{more}: {cut}", first.label))
                    }
                }
            }
            Step::BlockId { .. } => Err(format!("the archive ends inside a data block's header at byte {at}: {cut}")),
            Step::ChunkLength | Step::ChunkData | Step::BlobOid => {
                let entry = &self.data[self.open];
                Err(format!("the archive ends inside the data of {} (dump id {}) at byte {at}: {cut}", entry.label, entry.dump_id))
            }
        }
    }
}

fn compressed(how: &str) -> String {
    format!("the archive's data is compressed ({how}), which cannot be checked as it streams: dump with -Z0 (--compress=0)")
}

/// `ReadInt`: a sign byte (non-zero for negative), then the magnitude, least significant byte first.
fn read_int(item: &[u8]) -> i64 {
    let magnitude = item[1..].iter().rev().fold(0u64, |acc, &b| acc << 8 | u64::from(b)) as i64;
    if item[0] != 0 {
        magnitude.wrapping_neg()
    } else {
        magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dumps/pg15-shop.pgdump"));
    const TINY: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dumps/pg15-tiny.pgdump"));
    /// The same database dumped to a seekable file: the TOC was rewritten with the blocks' offsets.
    const TINY_FILE: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dumps/pg15-tiny-file.pgdump"));
    /// `pg_dump -Fc` at its default compression.
    const TINY_GZIP: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dumps/pg15-tiny-gzip.pgdump"));

    fn check(pieces: &mut dyn Iterator<Item = &[u8]>) -> Result<ArchiveSummary, String> {
        let mut check = CustomArchiveCheck::new();
        for piece in pieces {
            if let Err(e) = check.feed(piece) {
                // Failed for good: later bytes and the finish say the same.
                assert_eq!(check.feed(b"x"), Err(e.clone()));
                assert_eq!(check.finish(), Err(e.clone()));
                return Err(e);
            }
        }
        check.finish()
    }

    fn whole(archive: &[u8]) -> Result<ArchiveSummary, String> {
        check(&mut std::iter::once(archive))
    }

    fn shop_tables() -> BTreeMap<String, u64> {
        [
            ("odd schema.Weird \"Name\".t", 6),
            ("public.calls", 605),
            ("public.docs", 10),
            ("public.empty", 0),
            ("public.parted_high", 51),
            ("public.parted_low", 99),
        ]
        .into_iter()
        .map(|(t, n)| (t.to_string(), n))
        .collect()
    }

    #[test]
    fn a_complete_archive_gives_its_header_and_exact_row_counts() {
        let summary = whole(SHOP).unwrap();
        assert_eq!(summary.archive_version, "1.14");
        assert_eq!(summary.server_version, "15.18 (Debian 15.18-0+deb12u1)");
        assert_eq!(summary.dump_version, "15.18 (Debian 15.18-0+deb12u1)");
        assert_eq!(summary.database, "shop");
        // As pg_restore -l counts them ("TOC Entries: 32").
        assert_eq!(summary.toc_entries, 32);
        assert_eq!(summary.tables, shop_tables());

        let tiny = whole(TINY).unwrap();
        assert_eq!(tiny.database, "tiny");
        assert_eq!(tiny.tables, [("public.t".to_string(), 3)].into());
        assert_eq!(whole(TINY_FILE), Ok(tiny));
    }

    #[test]
    fn piece_sizes_do_not_change_the_result() {
        let expected = whole(SHOP);
        assert_eq!(check(&mut SHOP.chunks(1)), expected);
        for size in [2, 3, 5, 7, 64, 4093, 65536] {
            assert_eq!(check(&mut SHOP.chunks(size)), expected, "pieces of {size}");
        }
        // Irregular pieces, so that boundaries fall everywhere.
        let mut rest = SHOP;
        let mut pieces = Vec::new();
        let mut seed = 7u64;
        while !rest.is_empty() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = ((seed >> 33) % 300 + 1).min(rest.len() as u64) as usize;
            pieces.push(&rest[..n]);
            rest = &rest[n..];
        }
        assert_eq!(check(&mut pieces.into_iter()), expected);
    }

    /// Offset of the first data block: the end of the TOC.
    fn data_start(archive: &[u8]) -> usize {
        let mut check = CustomArchiveCheck::new();
        for (i, b) in archive.iter().enumerate() {
            if check.step == Step::BlockType {
                return i;
            }
            check.feed(std::slice::from_ref(b)).unwrap();
        }
        panic!("no data blocks");
    }

    #[test]
    fn every_cut_of_a_small_archive_fails() {
        for archive in [TINY, TINY_FILE] {
            for cut in 0..archive.len() {
                let result = whole(&archive[..cut]);
                assert!(result.as_ref().is_err_and(|e| e.ends_with("the dump was cut short")), "cut at {cut}: {result:?}");
            }
        }
    }

    #[test]
    fn every_cut_in_the_header_and_toc_fails_and_cuts_in_the_data_too() {
        let toc_end = data_start(SHOP);
        assert!(toc_end > 7_000, "{toc_end}");
        let cuts = (0..=toc_end).chain((toc_end..SHOP.len()).step_by(61)).chain(SHOP.len() - 64..SHOP.len());
        for cut in cuts {
            let result = whole(&SHOP[..cut]);
            assert!(result.as_ref().is_err_and(|e| e.ends_with("the dump was cut short")), "cut at {cut}: {result:?}");
        }
    }

    #[test]
    fn messages_say_where_the_archive_ends() {
        assert_eq!(whole(b""), Err("the archive is empty: the dump was cut short".into()));
        assert_eq!(whole(&SHOP[..30]), Err("the archive ends inside its header at byte 30: the dump was cut short".into()));
        let toc_end = data_start(SHOP);
        let err = whole(&SHOP[..toc_end - 3]).unwrap_err();
        assert!(err.starts_with("the archive ends inside its table of contents (entry 32 of 32) at byte"), "{err}");
        assert_eq!(
            whole(&SHOP[..toc_end]),
            Err(format!("the archive ends at byte {toc_end} without the data of TABLE DATA odd schema.Weird \"Name\".t and 6 more: the dump was cut short"))
        );
        let calls = SHOP.windows(8).position(|w| w == b"user300\t").unwrap();
        assert_eq!(
            whole(&SHOP[..calls]),
            Err(format!("the archive ends inside the data of TABLE DATA public.calls (dump id 3377) at byte {calls}: the dump was cut short"))
        );
        let lo = SHOP.windows(8).position(|w| w == b"\xde\xad\xbe\xef\xde\xad\xbe\xef").unwrap() + 100;
        assert_eq!(whole(&SHOP[..lo]), Err(format!("the archive ends inside the data of BLOBS (dump id 3387) at byte {lo}: the dump was cut short")));
        // The last block is the large objects; its final 0 oid is the archive's last int.
        let err = whole(&SHOP[..SHOP.len() - 1]).unwrap_err();
        assert!(err.starts_with("the archive ends inside the data of BLOBS (dump id 3387)"), "{err}");
    }

    #[test]
    fn anything_after_the_last_block_is_refused() {
        let mut longer = TINY.to_vec();
        longer.push(0);
        assert_eq!(whole(&longer), Err(format!("unexpected data at byte {} after the last data block: the archive is corrupt", TINY.len())));
    }

    #[test]
    fn compressed_archives_are_refused() {
        let err = whole(TINY_GZIP).unwrap_err();
        assert!(err.contains("compressed (gzip at its default level)") && err.contains("dump with -Z0"), "{err}");
        let zstd = relayout(TINY, 15);
        let mut zstd = zstd.clone();
        zstd[11] = 3;
        let err = whole(&zstd).unwrap_err();
        assert!(err.contains("compressed (zstd)") && err.contains("dump with -Z0"), "{err}");
    }

    #[test]
    fn other_formats_and_versions_are_refused() {
        assert!(whole(b"-- PostgreSQL database dump\n").unwrap_err().starts_with("not a pg_dump custom-format archive"));
        for minor in [11, 17] {
            let mut other = TINY.to_vec();
            other[6] = minor;
            let err = whole(&other).unwrap_err();
            assert_eq!(err, format!("archive version 1.{minor} at byte 5 is not one this check reads (1.12 to 1.16: pg_dump 9.0 to 17)"));
        }
        let mut tar = TINY.to_vec();
        tar[10] = 3;
        assert!(whole(&tar).unwrap_err().starts_with("the archive's format byte is 3, not custom (1)"));
    }

    #[test]
    fn huge_strings_are_refused_before_they_are_read() {
        // The database name's length is the int after the 16-byte fixed header and the 7 date ints.
        let mut huge = TINY[..51].to_vec();
        huge.extend([0, 0, 0, 0, 5]);
        assert_eq!(whole(&huge), Err("a string of 83886080 bytes at byte 51, over 64 MiB: the archive is corrupt".into()));
    }

    /// Re-lays a 1.14 archive out as pg_dump would write archive version 1.`minor`, following
    /// `ReadHead`/`ReadToc`'s version branches: a compression byte instead of the level int from 1.15,
    /// no table access method before 1.14, a relkind int from 1.16.
    fn relayout(archive: &[u8], minor: u8) -> Vec<u8> {
        struct Cursor<'a>(&'a [u8], usize);
        impl<'a> Cursor<'a> {
            fn bytes(&mut self, n: usize) -> &'a [u8] {
                self.1 += n;
                &self.0[self.1 - n..self.1]
            }
            fn string(&mut self) -> &'a [u8] {
                let start = self.1;
                let len = read_int(self.bytes(5));
                self.bytes(len.max(0) as usize);
                &self.0[start..self.1]
            }
        }
        let mut r = Cursor(archive, 0);
        assert_eq!(r.bytes(7), b"PGDMP\x01\x0e");
        let mut out = b"PGDMP\x01".to_vec();
        out.push(minor);
        out.extend(r.bytes(4));
        assert_eq!(r.bytes(5), [0; 5], "an uncompressed archive");
        if minor >= 15 {
            out.push(0);
        } else {
            out.extend([0; 5]);
        }
        out.extend(r.bytes(7 * 5));
        for _ in 0..3 {
            out.extend(r.string());
        }
        let count = r.bytes(5);
        out.extend(count);
        for _ in 0..read_int(count) {
            for field in FIELDS_1_14 {
                match field {
                    DumpId | HadDumper | Section => out.extend(r.bytes(5)),
                    TableAm => {
                        let am = r.string();
                        if minor >= 14 {
                            out.extend(am);
                        }
                        if minor >= 16 {
                            out.extend([0, b'r', 0, 0, 0]);
                        }
                    }
                    Deps => loop {
                        let dep = r.string();
                        out.extend(dep);
                        if read_int(&dep[..5]) < 0 {
                            break;
                        }
                    },
                    DataOffset => out.extend(r.bytes(9)),
                    _ => out.extend(r.string()),
                }
            }
        }
        out.extend(&archive[r.1..]);
        out
    }

    #[test]
    fn archive_versions_1_12_to_1_16_read_alike() {
        let expected = whole(SHOP).unwrap();
        assert_eq!(relayout(SHOP, 14), SHOP);
        for minor in [12, 13, 15, 16] {
            let archive = relayout(SHOP, minor);
            assert_ne!(archive.len(), SHOP.len());
            let summary = whole(&archive).unwrap();
            assert_eq!(summary, ArchiveSummary { archive_version: format!("1.{minor}"), ..expected.clone() });
            assert_eq!(check(&mut archive.chunks(1)), Ok(summary));
            let tiny = relayout(TINY, minor);
            assert!(whole(&tiny).is_ok());
            for cut in 0..tiny.len() {
                assert!(whole(&tiny[..cut]).is_err(), "1.{minor} cut at {cut}");
            }
        }
    }

    #[test]
    fn corrupt_bytes_give_errors_not_panics() {
        let mut seed = 1u64;
        for _ in 0..3000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let at = (seed >> 33) as usize % TINY.len();
            let mut corrupt = TINY.to_vec();
            corrupt[at] ^= 1 << ((seed >> 20) % 8);
            // Some flips land in text and pass; none may panic, and every failure says why.
            if let Err(e) = whole(&corrupt) {
                assert!(!e.is_empty());
            }
        }
    }

    #[test]
    fn copy_rows_are_lines_up_to_the_terminator() {
        let count = |pieces: &[&[u8]]| {
            let mut rows = Rows::default();
            pieces.iter().for_each(|p| rows.scan(p));
            rows.total()
        };
        assert_eq!(count(&[b"1\ta\n2\tb\n\\.\n\n\n"]), 2);
        assert_eq!(count(&[b"1\ta\n", b"2\tb\n\\", b".\n\n", b"\n"]), 2);
        // An empty line is a row of one empty text; `\\.` is a row holding a backslash and a dot.
        assert_eq!(count(&[b"\n\n\\\\.\n\\.x\n\\.\n"]), 4);
        // Without a terminator (as if a later pg_dump left it out) every line is a row.
        assert_eq!(count(&[b"1\n2\n3"]), 3);
        assert_eq!(count(&[b""]), 0);
        assert_eq!(count(&[b"\\.\n\n\n"]), 0);
    }
}
