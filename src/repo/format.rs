//! The repository's JSON objects: config, trees and snapshot manifests, exactly as docs/FORMAT.md
//! specifies them (index objects: `packindex`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::crypt::{self, Recipient};
use super::{Id, RepoError, FORMAT_VERSION};
use crate::source::exclude::Excluded;
use crate::source::EntryKind;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// Always "age-x25519".
    pub scheme: String,
    pub recipients: Vec<String>,
    /// 32 random bytes encrypted to the recipients, hex; decrypting it tells a wrong identity (no
    /// matching key) from damaged data before anything else is read.
    pub key_check: String,
    /// BLAKE3 of those 32 bytes.
    pub key_check_blake3: Id,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Always "stackvault".
    pub format: String,
    pub version: u32,
    pub id: String,
    pub created: String,
    pub chunker: ChunkerParams,
    /// A pack is closed once its stored size reaches this many bytes.
    pub pack_size: u64,
    pub zstd_level: i32,
    pub encryption: Option<Encryption>,
}

impl RepoConfig {
    pub fn new(recipients: &[Recipient]) -> Result<Self, RepoError> {
        let encryption = if recipients.is_empty() {
            None
        } else {
            let secret = crate::random_bytes::<32>();
            Some(Encryption {
                scheme: "age-x25519".into(),
                recipients: recipients.iter().map(|r| r.to_string()).collect(),
                key_check: hex::encode(crypt::encrypt_small(recipients, &secret)?),
                key_check_blake3: Id::of(&secret),
            })
        };
        Ok(RepoConfig {
            format: "stackvault".into(),
            version: FORMAT_VERSION,
            id: hex::encode(crate::random_bytes::<16>()),
            created: crate::now_rfc3339(),
            // Small enough that appending to a large file re-stores little of its old tail (at most max_size).
            chunker: ChunkerParams { min_size: 64 << 10, avg_size: 256 << 10, max_size: 1 << 20 },
            pack_size: 32 << 20,
            zstd_level: 3,
            encryption,
        })
    }

    /// The config object is the one object no name authenticates: whoever can write to the storage may
    /// replace it. Values out of range are refused here, before any of them sizes a buffer or a chunker.
    pub fn check(&self) -> Result<(), String> {
        use fastcdc::v2020 as cdc;
        if self.format != "stackvault" {
            return Err(format!("format is {:?}, not \"stackvault\"", self.format));
        }
        if self.id.len() != 32 || !is_lower_hex(&self.id) {
            return Err(format!("id {:?} is not 32 lower-case hex digits", self.id));
        }
        let ChunkerParams { min_size, avg_size, max_size } = self.chunker;
        let in_range = (cdc::MINIMUM_MIN..=cdc::MINIMUM_MAX).contains(&min_size)
            && (cdc::AVERAGE_MIN..=cdc::AVERAGE_MAX).contains(&avg_size)
            && (cdc::MAXIMUM_MIN..=cdc::MAXIMUM_MAX).contains(&max_size);
        if !in_range || min_size > avg_size || avg_size > max_size {
            return Err(format!(
                "chunker sizes {min_size}/{avg_size}/{max_size} are out of range (min {}..={}, avg {}..={}, max {}..={}, min <= avg <= max)",
                cdc::MINIMUM_MIN, cdc::MINIMUM_MAX, cdc::AVERAGE_MIN, cdc::AVERAGE_MAX, cdc::MAXIMUM_MIN, cdc::MAXIMUM_MAX
            ));
        }
        if !(MIN_PACK_SIZE..=MAX_PACK_SIZE).contains(&self.pack_size) {
            return Err(format!("pack_size {} is outside {MIN_PACK_SIZE}..={MAX_PACK_SIZE}", self.pack_size));
        }
        if !zstd::compression_level_range().contains(&self.zstd_level) {
            return Err(format!("zstd_level {} is not a zstd level ({:?})", self.zstd_level, zstd::compression_level_range()));
        }
        if let Some(encryption) = &self.encryption {
            if encryption.scheme != "age-x25519" {
                return Err(format!("encryption scheme {:?} is not \"age-x25519\"", encryption.scheme));
            }
            if encryption.recipients.is_empty() {
                return Err("encryption lists no recipients".into());
            }
            for recipient in &encryption.recipients {
                crypt::parse_recipient(recipient)?;
            }
            if !is_lower_hex(&encryption.key_check) || encryption.key_check.len() % 2 != 0 {
                return Err("key_check is not lower-case hex".into());
            }
        }
        Ok(())
    }

    pub fn recipients(&self) -> Vec<String> {
        self.encryption.as_ref().map(|e| e.recipients.clone()).unwrap_or_default()
    }
}

/// Packs smaller or larger than this are refused in a config: a pack is read whole by `verify`, and
/// the writer holds none in memory, but one of a few bytes or many GiB says the config was tampered with.
pub const MIN_PACK_SIZE: u64 = 1 << 20;
pub const MAX_PACK_SIZE: u64 = 1 << 30;

/// Lower-case hex: the one spelling the format allows, so that every value has exactly one form.
pub fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One directory's entries, sorted by name bytes. Its id is the BLAKE3 of its JSON serialization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    #[serde(with = "os_bytes")]
    pub name: Vec<u8>,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Data blobs whose plaintexts, concatenated, are the file's content.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "os_bytes")]
    pub target: Vec<u8>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Xattr {
    #[serde(with = "os_bytes")]
    pub name: Vec<u8>,
    /// Hex, since values are binary.
    pub value: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Names are bytes on Linux: a valid UTF-8 name is a JSON string, any other an object `{"hex": "…"}`.
mod os_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Raw { hex: String },
    }

    pub fn serialize<S: Serializer>(bytes: &Vec<u8>, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Repr::Text(text.to_owned()),
            Err(_) => Repr::Raw { hex: hex::encode(bytes) },
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(text) => Ok(text.into_bytes()),
            Repr::Raw { hex } => {
                if !super::is_lower_hex(&hex) {
                    return Err(serde::de::Error::custom(format!("{hex:?} is not lower-case hex")));
                }
                let bytes = hex::decode(hex).map_err(serde::de::Error::custom)?;
                // One spelling per name: valid UTF-8 is always written as a string.
                if std::str::from_utf8(&bytes).is_ok() {
                    return Err(serde::de::Error::custom("a {\"hex\"} name must not be valid UTF-8 (write it as a string)"));
                }
                Ok(bytes)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A Docker named (or anonymous) volume.
    Volume,
    /// A host directory bind-mounted into a container.
    Bind,
    /// A directory the sidecar reads itself.
    Path,
    /// A database dump (or another program's output) read as a byte stream: its root is one file.
    Dump,
    /// The stack's definition (containers, networks, volumes, images: `stack::definition`), JSON in
    /// one file; named after the stack (version 4).
    Stack,
    /// A container image as the engine exports it (`docker save`'s tar), in one file; named by its
    /// reference (version 4).
    Image,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Volume => "volume",
            SourceKind::Bind => "bind",
            SourceKind::Path => "path",
            SourceKind::Dump => "dump",
            SourceKind::Stack => "stack",
            SourceKind::Image => "image",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRecord {
    pub kind: SourceKind,
    /// The volume name, or the host path.
    pub name: String,
    /// The source's root directory (name empty); its subtree holds everything below.
    pub root: Node,
    /// Containers that mounted it, with the mount destination: `container:/dest`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounted_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_labels: BTreeMap<String, String>,
    pub entries: u64,
    pub bytes: u64,
    /// The exclusion rules in force, `origin: pattern` (README, "Leaving things out").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_rules: Vec<String>,
    /// What those rules left out, per rule that matched anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<Excluded>,
    /// For a `dump` source (and only for one): what was dumped and what the dump said of itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpRecord>,
    /// For an `image` source (and only for one): the image's id and reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRecord>,
}

/// Which image an image source holds (docs/FORMAT.md, "Stack and image sources").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// `sha256:<hex>`, the engine's image id.
    pub id: String,
    pub reference: String,
}

/// What a dump source holds and how to load it back (docs/FORMAT.md, "Dump sources").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpRecord {
    /// `mariadb`, `mysql`, `postgres` or `command`.
    pub engine: String,
    /// What the stream is: `sql` (mariadb-dump/mysqldump output of one database), `sql-globals`
    /// (users and grants, or pg_dumpall --globals-only), `pg-custom` (pg_dump -Fc -Z0) or `command`.
    pub format: String,
    /// The container the dump ran in, its compose service and project when it has them.
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The database; absent for globals and command dumps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The server's version as the dump recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Where the server's log stood: a binlog/GTID position, or the WAL position before the dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// Rows per table (`schema.table`) in the dump, counted from the stream itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, u64>,
    /// For `command` dumps: the command that loads the stream back, from its stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_command: Option<String>,
}

impl SourceRecord {
    /// How messages name the source: `volume demo_db-data`, `path /srv/app`.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind.as_str(), self.name)
    }

    /// A source of this kind and name with no dump, mount or exclusion details yet.
    pub fn new(kind: SourceKind, name: String, root: Node) -> Self {
        SourceRecord {
            kind,
            name,
            root,
            mounted_by: Vec::new(),
            volume_driver: None,
            volume_labels: BTreeMap::new(),
            entries: 0,
            bytes: 0,
            exclude_rules: Vec::new(),
            excluded: Vec::new(),
            dump: None,
            image: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub entries: u64,
    /// Bytes of file content read from the sources.
    pub bytes: u64,
    /// Content bytes in blobs the repository did not have before this snapshot.
    pub new_bytes: u64,
    /// Bytes of packs this snapshot added to the target.
    pub stored_bytes: u64,
    /// Regular files not read because the files cache showed them unchanged.
    #[serde(default)]
    pub unchanged_files: u64,
    pub new_packs: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub version: u32,
    /// When the backup started, RFC 3339 UTC.
    pub time: String,
    pub stack: String,
    pub hostname: String,
    /// The program that wrote it, e.g. "stackvault 0.1.0".
    pub program: String,
    pub sources: Vec<SourceRecord>,
    /// Every pack holding a blob this snapshot references, sorted; lets a reader without the identity
    /// check presence and integrity, and prune compute what is still needed.
    pub packs: Vec<Id>,
    pub summary: Summary,
}

/// One of prune's records (docs/FORMAT.md, "Prune records"), an object under `prune/` named by the
/// BLAKE3 of its bytes like every other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum PruneRecord {
    /// Packs no snapshot referenced when it was written, to be deleted from `delete_after` on if
    /// still none does; writers do not deduplicate against them while the marker is pending.
    Marker {
        version: u32,
        /// RFC 3339 UTC, when it was written.
        time: String,
        /// RFC 3339 UTC: not before this may its packs be deleted.
        delete_after: String,
        hostname: String,
        program: String,
        /// Sorted.
        packs: Vec<Id>,
    },
    /// The marker with this id was carried out: it is no longer pending.
    Done { version: u32, time: String, marker: Id },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_names_round_trip() {
        let node = Node {
            name: b"caf\xe9".to_vec(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime_ns: -5,
            size: 0,
            content: vec![],
            subtree: None,
            target: "ünï".as_bytes().to_vec(),
            rdev: 0,
            xattrs: vec![],
        };
        let json = serde_json::to_string(&node).unwrap();
        assert!(json.contains(r#""name":{"hex":"636166e9"}"#), "{json}");
        assert!(json.contains(r#""target":"ünï""#), "{json}");
        assert_eq!(serde_json::from_str::<Node>(&json).unwrap(), node);
    }
}
