//! `stackvault prune`: forgets the snapshots a keep policy no longer wants, per stack, and deletes the
//! packs no snapshot references, in two phases (docs/FORMAT.md, "Prune records"): a marker names the
//! packs first, and only after a grace period, once the manifests are read again, is any of them
//! deleted. A snapshot written meanwhile that references a marked pack keeps it; nothing locked or
//! held is deleted; a run killed at any point leaves a repository that verifies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::config::PruneConfig;
use crate::repo::format::PruneRecord;
use crate::repo::marks::{Marker, PruneMarks};
use crate::repo::{Id, RepoError, Repository};
use crate::storage::{Key, ObjectInfo, ObjectKind, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("no keep rule is set: give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within (or prune: in the config); prune never forgets every snapshot")]
    NoPolicy,
    #[error("the repository is in format version {0}, whose writers know nothing of prune's markers: run `stackvault migrate` first (every host backing up to it needs a stackvault that reads version 5)")]
    TooOld(u32),
    #[error("snapshot time {time:?} of {snapshot}: {detail}")]
    BadTime { snapshot: String, time: String, detail: String },
}

/// Why a snapshot is kept, or that it is not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub id: String,
    pub stack: String,
    pub time: String,
    /// The rules that keep it (`last`, `daily`, …); empty: the policy forgets it.
    pub kept_by: Vec<&'static str>,
}

/// The snapshots a policy keeps, of one stack's snapshots given oldest first as (id, time): the
/// union of each rule's (as restic's `forget`). A bucket rule keeps the newest snapshot of each of
/// its last N buckets that hold one; `within` is measured back from the stack's newest snapshot.
pub fn apply_policy(policy: &PruneConfig, zone: &jiff::tz::TimeZone, snapshots: &[(Id, jiff::Timestamp)]) -> BTreeMap<Id, Vec<&'static str>> {
    type Bucket = fn(&jiff::Zoned) -> (i16, i8, i8, i8);
    let rules: [(&'static str, Option<u32>, Bucket); 6] = [
        ("last", policy.keep_last, |_| (0, 0, 0, 0)),
        ("hourly", policy.keep_hourly, |t| (t.year(), t.month(), t.day(), t.hour())),
        ("daily", policy.keep_daily, |t| (t.year(), t.month(), t.day(), 0)),
        ("weekly", policy.keep_weekly, |t| {
            let week = t.date().iso_week_date();
            (week.year(), week.week(), 0, 0)
        }),
        ("monthly", policy.keep_monthly, |t| (t.year(), t.month(), 0, 0)),
        ("yearly", policy.keep_yearly, |t| (t.year(), 0, 0, 0)),
    ];
    let mut kept: BTreeMap<Id, Vec<&'static str>> = BTreeMap::new();
    let newest = snapshots.last().map(|(_, t)| *t);
    let mut state: Vec<(u32, Option<(i16, i8, i8, i8)>)> = rules.iter().map(|(_, n, _)| (n.unwrap_or(0), None)).collect();
    for (number, (id, time)) in snapshots.iter().rev().enumerate() {
        let zoned = time.to_zoned(zone.clone());
        let mut reasons = Vec::new();
        for ((name, _, bucket), (left, last)) in rules.iter().zip(state.iter_mut()) {
            // `last` puts every snapshot in a bucket of its own.
            let key = if *name == "last" { (number as i16, 0, 0, 0) } else { bucket(&zoned) };
            if *left > 0 && *last != Some(key) {
                *left -= 1;
                *last = Some(key);
                reasons.push(*name);
            }
        }
        if let (Some(within), Some(newest)) = (policy.keep_within, newest) {
            if newest.as_second() - time.as_second() <= within.as_secs() as i64 {
                reasons.push("within");
            }
        }
        if !reasons.is_empty() {
            kept.insert(*id, reasons);
        }
    }
    kept
}

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub policy: PruneConfig,
    /// Buckets (days, weeks…) are those of this zone.
    pub zone: jiff::tz::TimeZone,
    /// Only this stack's snapshots are forgotten (unreferenced packs are the repository's).
    pub stack: Option<String>,
    /// Print the plan; change nothing.
    pub dry_run: bool,
    /// Only forget: leave unreferenced packs where they are.
    pub forget_only: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct PruneReport {
    /// Every snapshot considered, newest last, with why it is kept.
    pub decisions: Vec<Decision>,
    /// Forgotten (or, in a dry run or without delete permission, to be forgotten).
    pub forgotten: Vec<String>,
    /// Snapshots the policy forgets that stay, with their lock.
    pub kept_locked: Vec<(String, String)>,
    /// The marker this run wrote (or would write): its id, packs, bytes and from when they may go.
    pub marked: Option<(String, usize, u64, String)>,
    /// Unreferenced packs still locked or held: they are marked by a run after their lock expires.
    pub waiting: usize,
    pub waiting_bytes: u64,
    pub waiting_until: Option<String>,
    /// Packs deleted (or, in a dry run, to be deleted) and their bytes.
    pub deleted_packs: usize,
    pub deleted_bytes: u64,
    /// Packs of a due marker that a snapshot written meanwhile references: kept.
    pub revived: usize,
    pub warnings: Vec<String>,
    /// Set when the target refused a deletion for want of permission: everything after it is what
    /// would have been deleted.
    pub denied: Option<String>,
    pub dry_run: bool,
}

/// One step done or (in a dry run, or without permission) left undone; printed as it happens, so
/// that the log of a run killed halfway says how far it got.
fn say(line: String) {
    println!("{line}");
}

pub fn prune(repo: &Repository, options: &PruneOptions) -> Result<PruneReport, PruneError> {
    if options.policy.keeps_nothing_stated() {
        return Err(PruneError::NoPolicy);
    }
    if repo.config.version < 5 {
        return Err(PruneError::TooOld(repo.config.version));
    }
    let storage = repo.storage.as_ref();
    let grace = options.policy.grace();
    let mut report = PruneReport { dry_run: options.dry_run, ..PruneReport::default() };
    let mut deleter = Deleter { repo, dry_run: options.dry_run, denied: None };
    let now = SystemTime::now();
    warn_short_policy(repo, &options.policy, &mut report)?;

    // Forget, per stack.
    let listed = repo.snapshots()?;
    let unreadable_snapshots = listed.unreadable.len();
    let manifests: HashMap<String, ObjectInfo> = storage.list(ObjectKind::Snapshot)?.into_iter().map(|o| (o.key.name.clone(), o)).collect();
    let mut stacks: BTreeMap<&str, Vec<(Id, jiff::Timestamp)>> = BTreeMap::new();
    for (id, snapshot) in &listed.valid {
        if options.stack.as_ref().is_some_and(|s| s != &snapshot.stack) {
            continue;
        }
        let time: jiff::Timestamp = snapshot.time.parse().map_err(|e: jiff::Error| PruneError::BadTime { snapshot: id.hex()[..12].into(), time: snapshot.time.clone(), detail: e.to_string() })?;
        stacks.entry(snapshot.stack.as_str()).or_default().push((*id, time));
    }
    let described: HashMap<Id, (&str, &str)> = listed.valid.iter().map(|(id, s)| (*id, (s.stack.as_str(), s.time.as_str()))).collect();
    for snapshots in stacks.values() {
        let kept = apply_policy(&options.policy, &options.zone, snapshots);
        for (id, _) in snapshots {
            let (stack, time) = described[id];
            let kept_by = kept.get(id).cloned().unwrap_or_default();
            report.decisions.push(Decision { id: id.hex(), stack: stack.into(), time: time.into(), kept_by: kept_by.clone() });
            if !kept_by.is_empty() {
                continue;
            }
            let short = &id.hex()[..12];
            if let Some(lock) = manifests.get(&id.hex()).and_then(|o| lock_of(&[o], now)) {
                say(format!("kept snapshot {short} {stack} {time}: the policy forgets it, but it is {lock}"));
                report.kept_locked.push((id.hex(), lock));
                continue;
            }
            if deleter.delete(&Key::new(ObjectKind::Snapshot, id.hex()), &format!("snapshot {short} {stack} {time}"), ("forgot", "would forget"))? {
                report.forgotten.push(id.hex());
            }
        }
    }
    if !report.kept_locked.is_empty() {
        report.warnings.push(format!(
            "{} snapshots the policy forgets stay until their locks expire: the policy keeps less than the immutability period",
            report.kept_locked.len()
        ));
    }
    if options.forget_only {
        report.denied = deleter.denied;
        return Ok(report);
    }
    if unreadable_snapshots > 0 {
        report.warnings.push(format!(
            "{unreadable_snapshots} objects under snapshots/ cannot be read (see `stackvault verify`): what they reference is unknown, so no pack is marked or deleted"
        ));
        report.denied = deleter.denied;
        return Ok(report);
    }

    // Phase 1: mark what no snapshot references, and what no lock keeps past the grace period.
    let marks = PruneMarks::read(storage)?;
    let already_marked = marks.set_aside();
    let objects = stored_packs(repo)?;
    // A plan counts the snapshots it would forget as gone.
    let forgotten: HashSet<Id> = report.forgotten.iter().filter_map(|id| id.parse().ok()).collect();
    let referenced = referenced_packs(repo, &forgotten)?;
    let deletable_from = now + grace;
    let mut to_mark: Vec<Id> = Vec::new();
    let mut marked_bytes = 0;
    let mut waiting_until: Option<SystemTime> = None;
    for (pack, held) in &objects {
        if referenced.contains(pack) || already_marked.contains(pack) {
            continue;
        }
        let bytes = held.iter().filter(|o| o.key.kind == ObjectKind::Pack).map(|o| o.size).sum::<u64>();
        let until = held.iter().filter_map(|o| o.retain_until).max();
        if held.iter().any(|o| o.legal_hold) || until.is_some_and(|t| t > deletable_from) {
            report.waiting += 1;
            report.waiting_bytes += bytes;
            waiting_until = waiting_until.max(until);
            continue;
        }
        to_mark.push(*pack);
        marked_bytes += bytes;
    }
    report.waiting_until = waiting_until.map(rfc3339);
    let mut new_marker = None;
    if !to_mark.is_empty() {
        to_mark.sort();
        let record = PruneRecord::Marker {
            version: repo.config.version,
            time: rfc3339_millis(now),
            delete_after: rfc3339_millis(deletable_from),
            hostname: crate::hostname(),
            program: crate::program(),
            packs: to_mark.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&record).expect("a record serializes");
        let id = Id::of(&bytes);
        // A plan (a dry run, or a run refused deletion) counts manifests still stored as forgotten:
        // its marker would name packs they reference.
        let planning = options.dry_run || deleter.denied.is_some();
        if !planning {
            storage.put(&Key::new(ObjectKind::Prune, id.hex()), &bytes)?;
        }
        say(format!("{} {} unreferenced packs ({marked_bytes} bytes) for deletion from {} (prune/{id})", if planning { "would mark" } else { "marked" }, to_mark.len(), rfc3339(deletable_from)));
        report.marked = Some((id.hex(), to_mark.len(), marked_bytes, rfc3339(deletable_from)));
        new_marker = Some(Marker { id, time: now, delete_after: deletable_from, packs: to_mark });
    }

    // Phase 2: carry out the markers that are due, against the manifests as they are now.
    let mut pending = marks.pending;
    pending.extend(new_marker);
    let now = SystemTime::now();
    let due: Vec<&Marker> = pending.iter().filter(|m| m.delete_after <= now).collect();
    if !due.is_empty() {
        let referenced = referenced_packs(repo, &forgotten)?;
        let objects = stored_packs(repo)?;
        for marker in &due {
            for pack in &marker.packs {
                let Some(held) = objects.get(pack) else { continue };
                if referenced.contains(pack) {
                    report.revived += 1;
                    continue;
                }
                let refs: Vec<&ObjectInfo> = held.iter().collect();
                if let Some(lock) = lock_of(&refs, now) {
                    say(format!("kept pack {pack}: {lock}"));
                    continue;
                }
                // The index object first: a pack without one is unused and marked again by the next
                // run, whereas an index object without its pack would be deduplicated against.
                let mut gone = true;
                for object in held.iter().filter(|o| o.key.kind == ObjectKind::Index).chain(held.iter().filter(|o| o.key.kind == ObjectKind::Pack)) {
                    gone &= deleter.delete(&object.key, &object.key.path(), ("deleted", "would delete"))?;
                }
                if gone {
                    report.deleted_packs += 1;
                    report.deleted_bytes += held.iter().filter(|o| o.key.kind == ObjectKind::Pack).map(|o| o.size).sum::<u64>();
                }
            }
            if !options.dry_run && deleter.denied.is_none() {
                close_marker(repo, marker)?;
            }
        }
    }
    if !options.dry_run && deleter.denied.is_none() {
        for (marker, records) in &marks.done {
            remove_pair(repo, marker, records)?;
        }
    }
    report.denied = deleter.denied;
    Ok(report)
}

/// Deletes, or says what it would delete: in a dry run, and from the first refusal for want of
/// permission on (the rest of the plan is then printed, not attempted).
struct Deleter<'r> {
    repo: &'r Repository,
    dry_run: bool,
    denied: Option<String>,
}

impl Deleter<'_> {
    /// Whether the object is gone (or, as a plan, would be).
    fn delete(&mut self, key: &Key, shown: &str, (done, planned): (&str, &str)) -> Result<bool, PruneError> {
        if self.dry_run || self.denied.is_some() {
            say(format!("{planned} {shown}"));
            return Ok(true);
        }
        match self.repo.storage.delete(key) {
            Ok(()) => {
                say(format!("{done} {shown}"));
                Ok(true)
            }
            Err(e @ (StorageError::Denied { .. } | StorageError::PermissionDenied { .. } | StorageError::ReadOnly { .. })) => {
                say(format!("{planned} {shown}"));
                self.denied = Some(e.to_string());
                Ok(true)
            }
            Err(StorageError::Locked { location, why }) => {
                say(format!("kept {shown}: {location} is locked ({why})"));
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Every pack any stored manifest references; read one manifest at a time. A manifest that cannot
/// be read fails the run: what it references is unknown.
fn referenced_packs(repo: &Repository, forgotten: &HashSet<Id>) -> Result<HashSet<Id>, PruneError> {
    let listed = repo.snapshots()?;
    if let Some(e) = listed.unreadable.into_iter().next() {
        return Err(e.into());
    }
    let mut referenced = HashSet::new();
    for (id, _) in listed.valid.into_iter().filter(|(id, _)| !forgotten.contains(id)) {
        referenced.extend(repo.snapshot(&id)?.packs);
    }
    Ok(referenced)
}

/// Each pack id with its stored objects (the pack, its index object, or either alone), listed packs
/// first: a pack written after this listing is not a candidate.
fn stored_packs(repo: &Repository) -> Result<BTreeMap<Id, Vec<ObjectInfo>>, PruneError> {
    let mut objects: BTreeMap<Id, Vec<ObjectInfo>> = BTreeMap::new();
    for kind in [ObjectKind::Pack, ObjectKind::Index] {
        for object in repo.storage.list(kind)? {
            // A name that is no id is nothing a writer made: left alone.
            if let Ok(id) = object.key.name.parse::<Id>() {
                objects.entry(id).or_default().push(object);
            }
        }
    }
    Ok(objects)
}

/// Why these objects cannot be deleted yet, if they cannot.
fn lock_of(objects: &[&ObjectInfo], now: SystemTime) -> Option<String> {
    if objects.iter().any(|o| o.legal_hold) {
        return Some("under a legal hold".into());
    }
    let until = objects.iter().filter_map(|o| o.retain_until).max()?;
    (until > now).then(|| format!("locked until {}", rfc3339(until)))
}

/// Records that a marker was carried out, then removes the marker and the record (where the target
/// lets it yet: on WORM storage both stay until their locks expire, and a later run removes them).
fn close_marker(repo: &Repository, marker: &Marker) -> Result<(), PruneError> {
    let record = PruneRecord::Done { version: repo.config.version, time: crate::now_rfc3339(), marker: marker.id };
    let bytes = serde_json::to_vec_pretty(&record).expect("a record serializes");
    let done = Key::new(ObjectKind::Prune, Id::of(&bytes).hex());
    repo.storage.put(&done, &bytes)?;
    remove_pair(repo, &marker.id, &[Id::of(&bytes)])
}

/// Marker first, its done records after: a done record without its marker means nothing, but a
/// marker without its done record would be pending again.
fn remove_pair(repo: &Repository, marker: &Id, done: &[Id]) -> Result<(), PruneError> {
    for id in std::iter::once(marker).chain(done) {
        match repo.storage.delete(&Key::new(ObjectKind::Prune, id.hex())) {
            Ok(()) => {}
            Err(StorageError::Locked { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Warns when objects stay locked longer than the policy keeps snapshots: forgotten snapshots and
/// their data then stay stored, and billed, until their locks expire.
fn warn_short_policy(repo: &Repository, policy: &PruneConfig, report: &mut PruneReport) -> Result<(), PruneError> {
    let Some(until) = repo.storage.lock_until()? else { return Ok(()) };
    let locked_days = until.duration_since(SystemTime::now()).unwrap_or_default().as_secs() / 86_400;
    let day = |n: Option<u32>, days: u64| u64::from(n.unwrap_or(0)) * days;
    let kept_days = [
        day(policy.keep_last, 1),
        day(policy.keep_hourly, 1) / 24,
        day(policy.keep_daily, 1),
        day(policy.keep_weekly, 7),
        day(policy.keep_monthly, 30),
        day(policy.keep_yearly, 365),
        policy.keep_within.map_or(0, |d: Duration| d.as_secs() / 86_400),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    if kept_days < locked_days {
        report.warnings.push(format!(
            "the policy keeps snapshots for about {kept_days} days, but new objects are locked for {locked_days}: what it forgets stays stored until the locks expire"
        ));
    }
    Ok(())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nights(from: &str, count: i64) -> Vec<(Id, jiff::Timestamp)> {
        let first: jiff::Timestamp = from.parse().unwrap();
        (0..count).map(|n| (Id::of(&n.to_le_bytes()), first + jiff::SignedDuration::from_hours(24 * n))).collect()
    }

    #[test]
    fn each_rule_keeps_the_newest_of_its_last_buckets() {
        let snapshots = nights("2026-01-01T02:00:00Z", 40);
        let policy = PruneConfig { keep_daily: Some(3), keep_weekly: Some(2), keep_last: Some(1), ..PruneConfig::default() };
        let kept = apply_policy(&policy, &jiff::tz::TimeZone::UTC, &snapshots);
        let days: Vec<String> = snapshots.iter().filter(|(id, _)| kept.contains_key(id)).map(|(_, t)| t.to_string()[..10].to_string()).collect();
        // 2026-02-09 is a Monday: the newest of its week is the 9th itself, of the week before the 8th.
        assert_eq!(days, ["2026-02-07", "2026-02-08", "2026-02-09"]);
        assert_eq!(kept[&snapshots[39].0], ["last", "daily", "weekly"]);
        assert_eq!(kept[&snapshots[38].0], ["daily", "weekly"]);
    }

    #[test]
    fn within_counts_back_from_the_newest_snapshot() {
        let snapshots = nights("2026-01-01T02:00:00Z", 10);
        let policy = PruneConfig { keep_within: Some(Duration::from_secs(2 * 86_400)), ..PruneConfig::default() };
        assert_eq!(apply_policy(&policy, &jiff::tz::TimeZone::UTC, &snapshots).len(), 3);
    }

    #[test]
    fn days_are_those_of_the_zone() {
        // 23:30 UTC on the 1st and 00:30 UTC on the 2nd are both the 1st in Bogotá (UTC-5).
        let a: jiff::Timestamp = "2026-03-01T23:30:00Z".parse().unwrap();
        let b: jiff::Timestamp = "2026-03-02T00:30:00Z".parse().unwrap();
        let snapshots = vec![(Id::of(b"a"), a), (Id::of(b"b"), b)];
        let policy = PruneConfig { keep_daily: Some(5), ..PruneConfig::default() };
        assert_eq!(apply_policy(&policy, &jiff::tz::TimeZone::UTC, &snapshots).len(), 2);
        assert_eq!(apply_policy(&policy, &jiff::tz::TimeZone::get("America/Bogota").unwrap(), &snapshots).len(), 1);
    }
}
