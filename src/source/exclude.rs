//! What a walk leaves out: gitignore-style patterns (the `ignore` crate's matcher: `*`, `**`, a leading
//! `/` anchors, a trailing `/` matches directories only, `!` re-includes) and directories tagged with a
//! `CACHEDIR.TAG` (the Cache Directory Tagging specification). Rules are applied where the tree is
//! read, so an excluded file is never opened or sent; what they left out is counted by pattern.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use serde::{Deserialize, Serialize};

/// The file that marks a cache directory, and the signature it must start with.
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";
/// The name (and origin) under which directories left out for their tag are counted.
pub const CACHE_TAG_RULE: &str = "CACHEDIR.TAG";
pub const CACHE_TAG_ORIGIN: &str = "cache directory tag";

/// Patterns from one origin, matched against `prefix` joined with the path below the source's root:
/// `/` for the configuration's `exclude:` (paths relative to the source), a mount's destination for a
/// container's `stackvault.exclude-patterns` label (paths as that container sees them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSet {
    pub prefix: String,
    pub patterns: Vec<String>,
    /// Where the patterns come from, for reports: `configuration` or `container NAME`.
    pub origin: String,
}

/// How many entries (everything below an excluded directory included) and content bytes one rule
/// left out of a source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Excluded {
    pub rule: String,
    pub origin: String,
    pub entries: u64,
    pub bytes: u64,
}

pub struct Rules {
    sets: Vec<(PathBuf, Gitignore, String)>,
    cache_tags: bool,
}

/// Checks one pattern as the matcher will read it; the error says what is wrong with it.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    GitignoreBuilder::new("/").add_line(None, pattern).map(drop).map_err(|e| format!("pattern {pattern:?}: {e}"))
}

impl Rules {
    pub fn new(sets: &[RuleSet], cache_tags: bool) -> Result<Rules, String> {
        let mut built = Vec::new();
        for set in sets {
            let mut builder = GitignoreBuilder::new("/");
            for pattern in &set.patterns {
                builder.add_line(None, pattern).map_err(|e| format!("{}: pattern {pattern:?}: {e}", set.origin))?;
            }
            let matcher = builder.build().map_err(|e| format!("{}: {e}", set.origin))?;
            built.push((PathBuf::from(&set.prefix), matcher, set.origin.clone()));
        }
        Ok(Rules { sets: built, cache_tags })
    }

    /// The rule (pattern and origin) that leaves out `rel`, the path below the source's root, if any.
    /// The last matching pattern of a set decides, as in a .gitignore; any set can exclude.
    pub fn excluded(&self, rel: &[u8], is_dir: bool) -> Option<(&str, &str)> {
        self.sets.iter().find_map(|(prefix, matcher, origin)| {
            let path = prefix.join(std::ffi::OsStr::from_bytes(rel));
            let matched = matcher.matched(&path, is_dir);
            matched.is_ignore().then(|| (matched.inner().map(|g| g.original()).unwrap_or_default(), origin.as_str()))
        })
    }

    /// Whether `dir` is a cache directory to leave out but for its tag.
    pub fn is_tagged_cache(&self, dir: &Path) -> bool {
        if !self.cache_tags {
            return false;
        }
        let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
        // A tag is a regular file; a symlink named like one is not followed.
        let tag = dir.join(CACHEDIR_TAG);
        let regular = std::fs::symlink_metadata(&tag).map(|m| m.is_file()).unwrap_or(false);
        regular && std::fs::File::open(&tag).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == CACHEDIR_SIGNATURE
    }
}

/// Counts of what each rule left out, in the order the rules first matched.
#[derive(Debug, Default)]
pub struct Tally {
    counts: BTreeMap<(String, String), (u64, u64)>,
    order: Vec<(String, String)>,
}

impl Tally {
    pub fn add(&mut self, rule: &str, origin: &str, entries: u64, bytes: u64) {
        let key = (rule.to_string(), origin.to_string());
        let count = self.counts.entry(key.clone()).or_insert_with(|| {
            self.order.push(key);
            (0, 0)
        });
        count.0 += entries;
        count.1 += bytes;
    }

    pub fn into_list(self) -> Vec<Excluded> {
        self.order
            .into_iter()
            .map(|key| {
                let (entries, bytes) = self.counts[&key];
                Excluded { rule: key.0, origin: key.1, entries, bytes }
            })
            .collect()
    }
}

/// Entries and content bytes below `dir` (itself not counted), by metadata alone: what an excluded
/// directory held. Unreadable parts count as nothing.
pub fn measure(dir: &Path) -> (u64, u64) {
    let (mut entries, mut bytes) = (0, 0);
    let Ok(listing) = std::fs::read_dir(dir) else { return (0, 0) };
    for entry in listing.flatten() {
        let Ok(md) = entry.metadata() else { continue };
        entries += 1;
        if md.is_dir() {
            let (e, b) = measure(&entry.path());
            entries += e;
            bytes += b;
        } else if md.is_file() {
            bytes += md.len();
        }
    }
    (entries, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(prefix: &str, patterns: &[&str]) -> Rules {
        let set = RuleSet { prefix: prefix.into(), patterns: patterns.iter().map(|p| p.to_string()).collect(), origin: "test".into() };
        Rules::new(&[set], true).unwrap()
    }

    #[test]
    fn gitignore_semantics_hold_below_a_prefix() {
        let r = rules("/", &["*.tmp", "!keep.tmp", "/cache/", "logs/**/old", "media/"]);
        assert_eq!(r.excluded(b"a/b/x.tmp", false).map(|m| m.0), Some("*.tmp"));
        assert_eq!(r.excluded(b"a/keep.tmp", false), None);
        assert_eq!(r.excluded(b"cache", true).map(|m| m.0), Some("/cache/"));
        assert_eq!(r.excluded(b"cache", false), None, "a trailing / matches directories only");
        assert_eq!(r.excluded(b"sub/cache", true), None, "a leading / anchors");
        assert_eq!(r.excluded(b"logs/2026/11/old", true).map(|m| m.0), Some("logs/**/old"));
        assert_eq!(r.excluded(b"x/media", true).map(|m| m.0), Some("media/"));
        assert_eq!(r.excluded("spaces and ü.txt".as_bytes(), false), None);

        let label = rules("/config", &["/config/Library/Application Support/Plex Media Server/Cache/"]);
        assert!(label.excluded(b"Library/Application Support/Plex Media Server/Cache", true).is_some());
        assert!(label.excluded(b"Library/Application Support/Plex Media Server/Media", true).is_none());
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let err = check_pattern("logs/{a,b").unwrap_err();
        assert!(err.contains("logs/{a,b") && err.contains("unclosed"), "{err}");
    }
}
