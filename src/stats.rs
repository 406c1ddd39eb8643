//! `stackvault stats`: what the repository holds and what it costs. Per stack: its snapshots, the
//! latest one's size per source, what each night added (the packs no earlier snapshot referenced),
//! and until when the latest snapshot's objects stay locked; for the repository: what is stored and
//! how much deduplication saves. Manifests are read one at a time: memory stays that of one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;

use crate::repo::{Id, RepoError, Repository};
use crate::storage::ObjectKind;

#[derive(Debug, Default, serde::Serialize)]
pub struct Stats {
    pub stacks: BTreeMap<String, StackStats>,
    /// Bytes of every pack stored, referenced or not.
    pub stored_bytes: u64,
    /// What all snapshots hold, counted in full for each: what the stored bytes stand for.
    pub logical_bytes: u64,
    /// `logical_bytes / stored_bytes`.
    pub dedup_ratio: f64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct StackStats {
    pub snapshots: usize,
    pub latest: String,
    /// The latest snapshot's bytes, per source (`kind name`).
    pub sources: BTreeMap<String, u64>,
    /// Per snapshot (its time), the bytes of the packs it was the first to reference.
    pub nights: Vec<(String, u64)>,
    /// The earliest lock among the latest snapshot's objects (RFC 3339), where the target locks them.
    pub locked_until: Option<String>,
}

pub fn stats(repo: &Repository) -> Result<Stats, RepoError> {
    let packs = repo.storage.list(ObjectKind::Pack)?;
    let sizes: HashMap<String, u64> = packs.iter().map(|o| (o.key.name.clone(), o.size)).collect();
    let locks: HashMap<String, Option<SystemTime>> = packs.iter().map(|o| (o.key.name.clone(), o.retain_until)).collect();
    let locking = repo.storage.lock_until()?.is_some();
    let mut stats = Stats { stored_bytes: sizes.values().sum(), ..Stats::default() };
    let mut seen: HashSet<Id> = HashSet::new();
    let mut latest_packs: HashMap<String, Vec<Id>> = HashMap::new();
    // Oldest first: a night's growth is what no earlier snapshot referenced.
    for (id, listed) in repo.snapshots()?.valid {
        let snapshot = repo.snapshot(&id)?;
        let logical: u64 = snapshot.sources.iter().map(|s| s.bytes).sum();
        stats.logical_bytes += logical;
        let added: u64 = snapshot.packs.iter().filter(|p| seen.insert(**p)).filter_map(|p| sizes.get(&p.hex())).sum();
        let stack = stats.stacks.entry(listed.stack.clone()).or_default();
        stack.snapshots += 1;
        stack.latest = listed.time.clone();
        stack.sources = snapshot.sources.iter().map(|s| (s.label(), s.bytes)).collect();
        stack.nights.push((listed.time.clone(), added));
        latest_packs.insert(listed.stack, snapshot.packs);
    }
    if locking {
        for (stack, packs) in latest_packs {
            let earliest = packs.iter().filter_map(|p| locks.get(&p.hex()).copied().flatten()).min();
            if let Some(stats) = stats.stacks.get_mut(&stack) {
                stats.locked_until = earliest.map(|t| humantime::format_rfc3339_seconds(t).to_string());
            }
        }
    }
    stats.dedup_ratio = if stats.stored_bytes == 0 { 0.0 } else { stats.logical_bytes as f64 / stats.stored_bytes as f64 };
    Ok(stats)
}
