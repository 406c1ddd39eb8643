//! The verify command: checks that everything each snapshot references is stored, with the right size,
//! and (where trees can be read) that each snapshot follows every rule a restore enforces, so that a
//! snapshot that verifies is one that restores; with `read_data`, that every referenced pack still
//! hashes to its name and, where it can be decrypted, that every blob in it decompresses to its id and
//! length. Problems are attributed to every snapshot they break. A sample of the data (`N %`) is a
//! deterministic share of the packs that rotates from run to run, so that every pack is read within
//! `100 / N` runs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use crate::repo::crypt::Identities;
use crate::repo::pack::{check_pack, BlobReader};
use crate::repo::tree::{check_snapshot, SnapshotWalk, Step};
use crate::repo::{Id, Index, RepoError, Repository, Snapshots};
use crate::storage::{Key, ObjectInfo, ObjectKind};

/// How much of the stored data a verify reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadData {
    None,
    All,
    /// `percent` of the packs: those of share `turn` (mod the number of shares, `ceil(100 / percent)`).
    Sample { percent: u32, turn: u64 },
}

impl ReadData {
    /// For a sample: which share this run reads (from 0) and of how many.
    pub fn rotation(self) -> Option<(u64, u64)> {
        let ReadData::Sample { percent, turn } = self else { return None };
        let shares = u64::from(100u32.div_ceil(percent.clamp(1, 100)));
        Some((turn % shares, shares))
    }

    /// Whether this run reads `pack`: packs are named by their content's hash, so the shares are even.
    fn reads(self, pack: &Id) -> bool {
        match (self, self.rotation()) {
            (ReadData::None, _) => false,
            (_, Some((share, shares))) => u64::from_le_bytes(pack.0[..8].try_into().expect("8 bytes")) % shares == share,
            (_, None) => true,
        }
    }
}

/// Which share of the packs the next sampled verify reads, kept beside the files cache; a lost
/// count starts again at the first share (a pack is then read at most one rotation late).
pub struct SampleTurn {
    file: std::path::PathBuf,
}

impl SampleTurn {
    pub fn at(dir: &std::path::Path) -> SampleTurn {
        SampleTurn { file: dir.join("verify-turn") }
    }

    fn current(&self) -> u64 {
        std::fs::read_to_string(&self.file).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
    }

    /// What a run reading `percent` of the data reads: all of it at 100, else this turn's share.
    pub fn read_data(&self, percent: u32) -> ReadData {
        match percent {
            100.. => ReadData::All,
            percent => ReadData::Sample { percent, turn: self.current() },
        }
    }

    /// After a verify that read `read`: a sample moves on to the next share.
    pub fn done(&self, read: ReadData) -> std::io::Result<()> {
        let ReadData::Sample { turn, .. } = read else { return Ok(()) };
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.file, format!("{}\n", turn + 1))
    }
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Every snapshot checked, oldest first.
    pub snapshots: Vec<Id>,
    /// Problems per snapshot; a snapshot absent here is intact.
    pub broken: BTreeMap<Id, Vec<String>>,
    /// Objects under `snapshots/` or `index/` that cannot be used, with why.
    pub unreadable: Vec<String>,
    pub packs_read: usize,
    /// Packs and their bytes each snapshot references.
    pub objects: BTreeMap<Id, (usize, u64)>,
    /// Each snapshot's stack and time.
    pub described: BTreeMap<Id, (String, String)>,
    /// Whether trees were walked down to every data blob (needs the identity on an encrypted repository).
    pub walked_trees: bool,
    /// Per snapshot, where the target locks objects: the earliest date until which the manifest and
    /// every object it references stay locked.
    pub locked_until: BTreeMap<Id, SystemTime>,
    pub notes: Vec<String>,
    /// A restore drill's result, where one ran (`verify --drill`).
    pub drill: Option<crate::drill::DrillReport>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.broken.is_empty() && self.unreadable.is_empty() && self.drill.as_ref().is_none_or(|d| d.passed())
    }
}

pub fn verify(repo: &Repository, identities: Option<&Identities>, read_data: ReadData) -> Result<VerifyReport, RepoError> {
    let index = repo.load_index()?;
    let Snapshots { valid: snapshots, unreadable } = repo.snapshots()?;
    let packs_stored = repo.storage.list(ObjectKind::Pack)?;
    let stored: HashMap<&str, u64> = packs_stored.iter().map(|o| (o.key.name.as_str(), o.size)).collect();
    let locks = Locks::read(repo, &packs_stored)?;
    let known_sizes: HashMap<Id, u64> = index.packs().collect();
    let unreadable = unreadable.iter().chain(&index.unreadable).map(|e| e.to_string()).collect();
    let mut report = VerifyReport { unreadable, ..VerifyReport::default() };

    // Presence and size of every pack each snapshot lists. Manifests are read one at a time (each can
    // list hundreds of thousands of packs), here and below.
    let mut pack_problems: HashMap<Id, String> = HashMap::new();
    let mut referenced: BTreeSet<Id> = BTreeSet::new();
    for (id, listed) in &snapshots {
        report.described.insert(*id, (listed.stack.clone(), listed.time.clone()));
        let snapshot = match repo.snapshot(id) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                report.broken.insert(*id, vec![e.to_string()]);
                continue;
            }
        };
        referenced.extend(&snapshot.packs);
        let bytes = snapshot.packs.iter().filter_map(|p| known_sizes.get(p)).sum();
        report.objects.insert(*id, (snapshot.packs.len(), bytes));
        if let Some(locks) = &locks {
            let (earliest, problems) = locks.check(id, &snapshot.packs, repo.storage.holds_legally());
            report.locked_until.extend(earliest.map(|t| (*id, t)));
            if !problems.is_empty() {
                report.broken.entry(*id).or_default().extend(problems);
            }
        }
        for pack in &snapshot.packs {
            if pack_problems.contains_key(pack) {
                continue;
            }
            let problem = match (known_sizes.get(pack), stored.get(pack.hex().as_str())) {
                (None, _) => Some(format!("pack {pack}: no index object describes it")),
                (Some(_), None) => Some(format!("pack {pack}: missing from the target")),
                (Some(want), Some(have)) if want != have => Some(format!("pack {pack}: {have} bytes stored, {want} expected")),
                _ => None,
            };
            if let Some(problem) = problem {
                pack_problems.insert(*pack, problem);
            }
        }
    }

    if read_data != ReadData::None {
        for pack in referenced {
            if pack_problems.contains_key(&pack) || !read_data.reads(&pack) {
                continue;
            }
            // One index object at a time, not the whole index: memory stays that of one pack's.
            let problems = match Index::read_object(repo.storage.as_ref(), &Key::new(ObjectKind::Index, pack.hex())) {
                Ok(pack_index) => check_pack(repo, identities, &pack_index)?,
                Err(e) => vec![e.to_string()],
            };
            report.packs_read += 1;
            if !problems.is_empty() {
                pack_problems.insert(pack, problems.join("; "));
            }
        }
        if repo.config.encryption.is_some() && identities.is_none() {
            report.notes.push("packs were checked against their names; pass --identity to also decrypt and check every blob".into());
        }
    }

    // Every rule a restore enforces, walked as a restore walks: every tree and data blob below each
    // source root is indexed and lies in a listed pack, and the counts match the manifest.
    let mut reader = match (&repo.config.encryption, identities) {
        (Some(_), None) => None,
        _ => Some(BlobReader::new(repo, &index, identities)?),
    };
    report.walked_trees = reader.is_some();
    if reader.is_none() {
        report.notes.push("trees are encrypted: checked root trees only; pass --identity to walk every tree".into());
    }
    // Walks that found nothing wrong, by what decides their outcome: a source's root and declared
    // counts, and the packs its snapshot lists. Nightly snapshots of unchanged sources repeat them.
    let mut clean_walks: HashSet<Id> = HashSet::new();
    for (id, _) in &snapshots {
        let Ok(snapshot) = repo.snapshot(id) else { continue }; // reported above
        let mut problems: Vec<String> = snapshot.packs.iter().filter_map(|p| pack_problems.get(p).cloned()).collect();
        let listed: HashSet<Id> = snapshot.packs.iter().copied().collect();
        let mut packs_hash = blake3::Hasher::new();
        snapshot.packs.iter().for_each(|pack| {
            packs_hash.update(&pack.0);
        });
        let packs_hash = packs_hash.finalize();
        // A blob stored more than once needs one copy in a listed pack (FORMAT.md, "Snapshot manifests").
        let unlisted = |what: &str, blob: &Id| {
            let locations = match index.locations(blob) {
                Ok(locations) => locations,
                Err(e) => return Some(e.to_string()),
            };
            let unlisted = !locations.is_empty() && !locations.iter().any(|l| listed.contains(&index.pack_of(l).0));
            unlisted.then(|| format!("{what} {blob}: no pack the snapshot lists holds it"))
        };
        match check_snapshot(&snapshot, &index, &repo.config) {
            Err(detail) => problems.push(RepoError::invalid(id, detail).to_string()),
            Ok(()) => {
                for source in &snapshot.sources {
                    let Some(reader) = reader.as_mut() else {
                        problems.extend(source.root.subtree.and_then(|tree| unlisted("tree", &tree)));
                        continue;
                    };
                    let mut walk_key = blake3::Hasher::new();
                    walk_key.update(&serde_json::to_vec(&(&source.root, source.entries, source.bytes)).expect("nodes serialize"));
                    walk_key.update(packs_hash.as_bytes());
                    let walk_key = Id(*walk_key.finalize().as_bytes());
                    if clean_walks.contains(&walk_key) {
                        continue;
                    }
                    let problems_before = problems.len();
                    let mut walk = SnapshotWalk::new(reader, *id, source).once_per_tree();
                    loop {
                        match walk.step() {
                            Ok(Step::Enter(dir) | Step::Shared(dir)) => problems.extend(dir.subtree.and_then(|tree| unlisted("tree", &tree))),
                            Ok(Step::File(file)) => problems.extend(file.content.iter().filter_map(|blob| unlisted("data blob", blob))),
                            Ok(Step::Leave | Step::Leaf(_)) => {}
                            Ok(Step::End) => break,
                            Err(e) => {
                                problems.push(e.to_string());
                                break;
                            }
                        }
                    }
                    if problems.len() == problems_before {
                        clean_walks.insert(walk_key);
                    }
                }
            }
        }
        problems.sort();
        problems.dedup();
        if !problems.is_empty() {
            report.broken.insert(*id, problems);
        }
    }
    report.snapshots = snapshots.into_iter().map(|(id, _)| id).collect();
    if locks.is_none() {
        report.notes.push(format!("immutability: objects at {} carry no retention lock (this target does not lock objects)", repo.storage.location()));
    }
    Ok(report)
}

/// What the target says of each object's lock, where it locks objects: a snapshot is only as
/// immutable as the least locked object it needs.
struct Locks {
    objects: HashMap<(ObjectKind, String), (Option<SystemTime>, bool)>,
}

impl Locks {
    fn read(repo: &Repository, packs: &[ObjectInfo]) -> Result<Option<Locks>, RepoError> {
        if repo.storage.lock_until()?.is_none() {
            return Ok(None);
        }
        let mut objects = HashMap::new();
        let listed = packs.iter().cloned().chain(repo.storage.list(ObjectKind::Index)?).chain(repo.storage.list(ObjectKind::Snapshot)?);
        for o in listed {
            objects.insert((o.key.kind, o.key.name), (o.retain_until, o.legal_hold));
        }
        Ok(Some(Locks { objects }))
    }

    /// The earliest lock among the snapshot's manifest, packs and index objects, and what falls short:
    /// an object locked for less time than the manifest, or lacking a legal hold that is configured.
    fn check(&self, snapshot: &Id, packs: &[Id], holds: bool) -> (Option<SystemTime>, Vec<String>) {
        let short = &snapshot.hex()[..12];
        let Some(&(own, own_hold)) = self.objects.get(&(ObjectKind::Snapshot, snapshot.hex())) else { return (None, Vec::new()) };
        let mut problems = Vec::new();
        let Some(own) = own else {
            problems.push(format!("immutability: the manifest of snapshot {short} carries no retention lock"));
            return (None, problems);
        };
        if holds && !own_hold {
            problems.push(format!("immutability: the manifest of snapshot {short} has no legal hold, which repository.azure.immutability.legal_hold asks for"));
        }
        let mut earliest = own;
        for pack in packs {
            for kind in [ObjectKind::Pack, ObjectKind::Index] {
                let Some(&(until, hold)) = self.objects.get(&(kind, pack.hex())) else { continue }; // missing: reported below
                let path = Key::new(kind, pack.hex()).path();
                match until {
                    Some(until) if until >= own => earliest = earliest.min(until),
                    Some(until) => {
                        earliest = earliest.min(until);
                        problems.push(format!(
                            "immutability: {path} is locked until {}, before the snapshot's manifest ({}): it could be deleted while the snapshot needs it; a backup extends the locks of what it references",
                            humantime::format_rfc3339_seconds(until),
                            humantime::format_rfc3339_seconds(own)
                        ));
                    }
                    None => problems.push(format!("immutability: {path} carries no retention lock")),
                }
                if holds && !hold {
                    problems.push(format!("immutability: {path} has no legal hold, which repository.azure.immutability.legal_hold asks for"));
                }
            }
        }
        (Some(earliest), problems)
    }
}

/// What an audit report says it checked, besides the report itself.
pub struct AuditContext {
    pub repository: String,
    pub location: String,
    pub format_version: u32,
    pub encrypted: bool,
    pub read_data: ReadData,
    pub checked_at: String,
    pub program: String,
}

/// A self-contained HTML page (no scripts, no outside resources) an auditor can open: what was
/// checked, when, by what, and per snapshot the evidence.
pub fn html_report(report: &VerifyReport, context: &AuditContext) -> String {
    let e = html_escape;
    let read = match context.read_data {
        ReadData::None => "not read back (presence and sizes only)".to_string(),
        ReadData::All => format!("every referenced pack read back and hashed ({} packs)", report.packs_read),
        ReadData::Sample { percent, .. } => {
            let (share, shares) = context.read_data.rotation().expect("a sample rotates");
            format!("a rotating {percent}% sample read back and hashed (share {} of {shares}: {} packs; every pack within {shares} runs)", share + 1, report.packs_read)
        }
    };
    let trees = if report.walked_trees { "every tree walked to every data blob, with every rule a restore applies" } else { "root trees only (encrypted: no identity given)" };
    let verdict = if report.ok() { "<p class=ok>All snapshots verified.</p>".to_string() } else { format!("<p class=bad>{} broken snapshots, {} unreadable objects{}.</p>", report.broken.len(), report.unreadable.len(), if report.drill.as_ref().is_some_and(|d| !d.passed()) { ", the restore drill failed" } else { "" }) };
    let mut rows = String::new();
    for id in &report.snapshots {
        let (stack, time) = report.described.get(id).cloned().unwrap_or_default();
        let (objects, bytes) = report.objects.get(id).copied().unwrap_or_default();
        let locked = report.locked_until.get(id).map(|t| humantime::format_rfc3339_seconds(*t).to_string()).unwrap_or_else(|| "not locked".into());
        let problems = report.broken.get(id).map(|p| p.iter().map(|p| format!("<li>{}</li>", e(p))).collect::<String>()).unwrap_or_default();
        let status = if problems.is_empty() { "<td class=ok>ok</td>" } else { "<td class=bad>BROKEN</td>" };
        rows.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td>{status}<td>{objects}</td><td>{bytes}</td><td>{}</td><td><ul>{problems}</ul></td></tr>\n",
            id.hex(),
            e(&stack),
            e(&time),
            e(&locked)
        ));
    }
    let list = |items: &[String]| items.iter().map(|i| format!("<li>{}</li>", e(i))).collect::<String>();
    let drill = match &report.drill {
        None => "<p>No restore drill in this run (<code>verify --drill</code>).</p>".to_string(),
        Some(d) => {
            let (class, verdict) = if d.passed() { ("ok", "passed") } else { ("bad", "FAILED") };
            let checks: String = d
                .checks
                .iter()
                .map(|c| format!("<tr><td>{}</td><td class={}>{}</td><td>{}</td></tr>\n", e(&c.what), if c.passed { "ok" } else { "bad" }, if c.passed { "ok" } else { "FAILED" }, e(&c.detail)))
                .collect();
            format!(
                "<p class={class}>Snapshot <code>{}</code> ({} {}) restored into throwaway containers, volumes and internal networks (project {}), checked and removed in {:.0} s: {verdict}.</p>\n<table>\n<tr><th>check</th><th>result</th><th>detail</th></tr>\n{checks}</table>\n",
                e(&d.snapshot),
                e(&d.stack),
                e(&d.time),
                e(&d.project),
                d.seconds
            )
        }
    };
    format!(
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>stackvault verification {checked}</title>\n\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.3em .6em;vertical-align:top}}\
.ok{{color:#060}}.bad{{color:#b00;font-weight:bold}}code{{font-size:.85em}}</style></head><body>\n\
<h1>Backup verification report</h1>\n{verdict}\n<table>\n\
<tr><th>repository</th><td><code>{repo}</code> at {location}</td></tr>\n<tr><th>format version</th><td>{version}</td></tr>\n\
<tr><th>encryption</th><td>{encryption}</td></tr>\n<tr><th>checked</th><td>{checked} by {program}</td></tr>\n\
<tr><th>structure</th><td>every referenced pack present with the size its index records; {trees}</td></tr>\n\
<tr><th>data</th><td>{read}</td></tr>\n<tr><th>immutability</th><td>each snapshot's manifest, packs and index objects locked at least as long as the manifest, legal holds where configured</td></tr>\n\
</table>\n<h2>Snapshots ({count})</h2>\n<table>\n<tr><th>id</th><th>stack</th><th>time</th><th>status</th><th>objects</th><th>bytes</th><th>locked until</th><th>problems</th></tr>\n{rows}</table>\n\
<h2>Restore drill</h2>\n{drill}<h2>Unreadable objects</h2><ul>{unreadable}</ul>\n<h2>Notes</h2><ul>{notes}</ul>\n</body></html>\n",
        checked = e(&context.checked_at),
        repo = e(&context.repository),
        location = e(&context.location),
        version = context.format_version,
        encryption = if context.encrypted { "age, to the configured recipients" } else { "none" },
        program = e(&context.program),
        count = report.snapshots.len(),
        unreadable = list(&report.unreadable),
        notes = list(&report.notes),
    )
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reads_every_pack_once_per_rotation_in_even_shares() {
        let packs: Vec<Id> = (0..2000u32).map(|i| Id(*blake3::hash(&i.to_le_bytes()).as_bytes())).collect();
        for percent in [10, 25, 30, 100] {
            let shares = 100u32.div_ceil(percent) as u64;
            let mut reads = vec![0; packs.len()];
            for turn in 7..7 + shares {
                let sample = ReadData::Sample { percent, turn };
                let read = packs.iter().enumerate().filter(|(_, p)| sample.reads(p)).inspect(|(i, _)| reads[*i] += 1).count();
                let even = packs.len() as f64 / shares as f64;
                assert!((read as f64 - even).abs() < even * 0.2 + 5.0, "{percent}%: turn {turn} read {read} of {}", packs.len());
            }
            assert!(reads.iter().all(|&n| n == 1), "{percent}%: a pack read other than once per rotation");
        }
    }
}
