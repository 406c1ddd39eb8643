//! The verify command: checks that everything each snapshot references is stored, with the right size;
//! with `read_data`, that every referenced pack still hashes to its name and, where it can be decrypted,
//! that every blob in it decompresses to its id. Problems are attributed to every snapshot they break.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::repo::crypt::Identities;
use crate::repo::format::Tree;
use crate::repo::pack::{check_pack, BlobReader};
use crate::repo::{BlobKind, Id, RepoError, Repository, Snapshot};
use crate::storage::ObjectKind;

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub snapshots: Vec<(Id, Snapshot)>,
    /// Problems per snapshot; a snapshot absent here is intact.
    pub broken: BTreeMap<Id, Vec<String>>,
    pub packs_read: usize,
    /// Whether trees were walked down to every data blob (needs the identity on an encrypted repository).
    pub walked_trees: bool,
    pub notes: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.broken.is_empty()
    }
}

pub fn verify(repo: &Repository, identities: Option<&Identities>, read_data: bool) -> Result<VerifyReport, RepoError> {
    let index = repo.load_index()?;
    let snapshots = repo.snapshots()?;
    let stored: HashMap<String, u64> = repo.storage.list(ObjectKind::Pack)?.into_iter().map(|o| (o.key.name, o.size)).collect();
    let known_sizes: HashMap<Id, u64> = index.packs.iter().copied().collect();
    let mut report = VerifyReport::default();

    // Presence and size of every pack each snapshot lists.
    let mut pack_problems: HashMap<Id, String> = HashMap::new();
    for (_, snapshot) in &snapshots {
        for pack in &snapshot.packs {
            if pack_problems.contains_key(pack) {
                continue;
            }
            let problem = match (known_sizes.get(pack), stored.get(&pack.hex())) {
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

    if read_data {
        let referenced: BTreeSet<Id> = snapshots.iter().flat_map(|(_, s)| s.packs.iter().copied()).collect();
        let by_pack = index.blobs_by_pack();
        let position: HashMap<Id, usize> = index.packs.iter().enumerate().map(|(i, (id, _))| (*id, i)).collect();
        for pack in referenced {
            if pack_problems.contains_key(&pack) {
                continue;
            }
            let blobs = position.get(&pack).map(|p| by_pack[*p].as_slice()).unwrap_or(&[]);
            let problems = check_pack(repo, identities, blobs, pack)?;
            report.packs_read += 1;
            if !problems.is_empty() {
                pack_problems.insert(pack, problems.join("; "));
            }
        }
        if repo.config.encryption.is_some() && identities.is_none() {
            report.notes.push("packs were checked against their names; pass --identity to also decrypt and check every blob".into());
        }
    }

    // Reachability: every tree and data blob below each source root is indexed and lies in a listed pack.
    let mut reader = match (&repo.config.encryption, identities) {
        (Some(_), None) => None,
        _ => Some(BlobReader::new(repo, &index, identities)?),
    };
    report.walked_trees = reader.is_some();
    if reader.is_none() {
        report.notes.push("trees are encrypted: checked root trees only; pass --identity to walk every tree".into());
    }
    for (id, snapshot) in &snapshots {
        let mut problems: Vec<String> = snapshot.packs.iter().filter_map(|p| pack_problems.get(p).cloned()).collect();
        let listed: HashSet<Id> = snapshot.packs.iter().copied().collect();
        let mut pending: Vec<Id> = snapshot.sources.iter().filter_map(|s| s.root.subtree).collect();
        let mut seen = HashSet::new();
        while let Some(tree_id) = pending.pop() {
            if !seen.insert(tree_id) {
                continue;
            }
            let Some(location) = index.get(&tree_id) else {
                problems.push(format!("tree {tree_id}: in no index"));
                continue;
            };
            if location.kind != BlobKind::Tree || !listed.contains(&index.pack_of(location).0) {
                problems.push(format!("tree {tree_id}: its pack is not listed by the snapshot"));
            }
            let Some(reader) = reader.as_mut() else { continue };
            let tree: Tree = match reader.read(&tree_id).map(|b| serde_json::from_slice(&b)) {
                Ok(Ok(tree)) => tree,
                Ok(Err(e)) => {
                    problems.push(format!("tree {tree_id}: {e}"));
                    continue;
                }
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            for node in tree.nodes {
                pending.extend(node.subtree);
                for blob in node.content {
                    match index.get(&blob) {
                        None => problems.push(format!("data blob {blob}: in no index")),
                        Some(l) if !listed.contains(&index.pack_of(l).0) => problems.push(format!("data blob {blob}: its pack is not listed by the snapshot")),
                        Some(_) => {}
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
    report.snapshots = snapshots;
    let config_lock = repo.storage.stat(&crate::storage::Key::config())?.and_then(|o| o.retain_until);
    if config_lock.is_none() {
        report.notes.push(format!("immutability: objects at {} carry no retention lock (this target cannot set one)", repo.storage.location()));
    }
    Ok(report)
}
