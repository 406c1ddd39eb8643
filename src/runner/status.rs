//! What the runner remembers between processes (`state_dir/status.json`): the last success and the last
//! failure with its reason, and whether the target is failing (so that the first success after it is
//! alerted as a recovery, even by another process).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub last_success: Option<RunSummary>,
    pub last_failure: Option<RunSummary>,
    /// A run failed or staged its snapshot, and no success has followed yet.
    #[serde(default)]
    pub failing: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    /// RFC 3339, and Unix seconds for arithmetic.
    pub time: String,
    pub unix: i64,
    pub result: String,
    pub snapshot: Option<String>,
    pub duration_seconds: f64,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_uploaded: u64,
    pub reason: Option<String>,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

impl Status {
    /// An unreadable file is an empty status: it only feeds reports and alerts.
    pub fn load(state_dir: &Path) -> Status {
        std::fs::read(path(state_dir)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    }

    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        super::staging::write_atomically(&path(state_dir), &serde_json::to_vec_pretty(self).expect("a status serializes"))
    }
}
