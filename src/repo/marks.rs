//! Prune's records as writers see them (docs/FORMAT.md, "Prune records"): the packs pending markers
//! name are not deduplicated against, and a manifest that would reference one due for deletion soon
//! is refused, so that a snapshot never references a pack prune deletes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use super::format::PruneRecord;
use super::{read_content_named, Id, RepoError};
use crate::storage::{Key, ObjectKind, Storage};

/// The longest a writer's check of the markers may precede its manifest becoming visible, clocks'
/// skew included: phase 2 of a prune lists the manifests only that long after the marker's date.
const MAX_SAFETY: Duration = Duration::from_secs(3600);

/// A marker no done record names.
#[derive(Debug, Clone)]
pub struct Marker {
    pub id: Id,
    pub time: SystemTime,
    pub delete_after: SystemTime,
    pub packs: Vec<Id>,
}

impl Marker {
    /// From when a writer must no longer commit a manifest referencing one of its packs: half the
    /// grace before `delete_after`, at most an hour.
    pub fn commit_deadline(&self) -> SystemTime {
        let grace = self.delete_after.duration_since(self.time).unwrap_or_default();
        self.delete_after - (grace / 2).min(MAX_SAFETY)
    }
}

#[derive(Debug, Default)]
pub struct PruneMarks {
    pub pending: Vec<Marker>,
    /// Done records, by the marker they close, with their own ids.
    pub done: HashMap<Id, Vec<Id>>,
    /// Objects under `prune/` that are not a record; they decide nothing.
    pub unreadable: Vec<RepoError>,
}

impl PruneMarks {
    pub fn read(storage: &dyn Storage) -> Result<PruneMarks, RepoError> {
        let mut marks = PruneMarks::default();
        let mut markers = Vec::new();
        for info in storage.list(ObjectKind::Prune)? {
            match read_content_named::<PruneRecord>(storage, &info.key) {
                Ok((id, PruneRecord::Done { marker, .. })) => marks.done.entry(marker).or_default().push(id),
                Ok((id, PruneRecord::Marker { time, delete_after, packs, .. })) => markers.push((id, time, delete_after, packs)),
                Err(e) => marks.unreadable.push(e),
            }
        }
        for (id, time, delete_after, packs) in markers {
            if marks.done.contains_key(&id) {
                continue;
            }
            let parse = |text: &str| humantime::parse_rfc3339(text).map_err(|e| RepoError::corrupt(Key::new(ObjectKind::Prune, id.hex()).path(), format!("{text:?}: {e}")));
            match (parse(&time), parse(&delete_after)) {
                (Ok(time), Ok(delete_after)) => marks.pending.push(Marker { id, time, delete_after, packs }),
                (Err(e), _) | (_, Err(e)) => marks.unreadable.push(e),
            }
        }
        marks.pending.sort_by_key(|m| m.time);
        Ok(marks)
    }

    /// Every pack a pending marker names.
    pub fn set_aside(&self) -> HashSet<Id> {
        self.pending.iter().flat_map(|m| m.packs.iter().copied()).collect()
    }

    /// Refuses a manifest referencing a pack that a pending marker may have deleted by the time the
    /// manifest is visible.
    pub fn check_commit(&self, packs: &[Id], now: SystemTime) -> Result<(), RepoError> {
        for marker in self.pending.iter().filter(|m| now >= m.commit_deadline()) {
            let marked: HashSet<&Id> = marker.packs.iter().collect();
            if let Some(pack) = packs.iter().find(|p| marked.contains(p)) {
                return Err(RepoError::MarkedForDeletion { pack: pack.hex(), marker: marker.id.hex(), at: humantime::format_rfc3339_seconds(marker.delete_after).to_string() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_strictly_and_a_marker_closed_by_a_done_record_is_not_pending() {
        let marker = r#"{"kind":"marker","version":5,"time":"2026-01-01T00:00:00Z","delete_after":"2026-01-02T00:00:00Z","hostname":"h","program":"p","packs":[]}"#;
        assert!(matches!(serde_json::from_str::<PruneRecord>(marker).unwrap(), PruneRecord::Marker { .. }));
        let extra = marker.replace(r#""packs":[]"#, r#""packs":[],"also":1"#);
        assert!(serde_json::from_str::<PruneRecord>(&extra).is_err(), "an unknown field is an error");
        let done = format!(r#"{{"kind":"done","version":5,"time":"2026-01-01T00:00:00Z","marker":"{}"}}"#, "ab".repeat(32));
        assert!(matches!(serde_json::from_str::<PruneRecord>(&done).unwrap(), PruneRecord::Done { .. }));

        let dir = std::env::temp_dir().join(format!("sv-marks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let storage = crate::storage::filesystem::FilesystemStorage::open(&dir).unwrap();
        let put = |bytes: &[u8]| {
            let id = Id::of(bytes);
            storage.put(&Key::new(ObjectKind::Prune, id.hex()), bytes).unwrap();
            id
        };
        let marker_id = put(marker.as_bytes());
        let pending = PruneMarks::read(&storage).unwrap();
        assert_eq!(pending.pending.len(), 1);
        // Deadline: half the day's grace is more than the hour's cap.
        assert_eq!(pending.pending[0].commit_deadline(), humantime::parse_rfc3339("2026-01-01T23:00:00Z").unwrap());
        put(format!(r#"{{"kind":"done","version":5,"time":"2026-01-02T00:00:00Z","marker":"{}"}}"#, marker_id.hex()).as_bytes());
        assert!(PruneMarks::read(&storage).unwrap().pending.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
