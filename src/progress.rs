//! What a backup is doing now, for a terminal's progress bar: the source being read, its size at
//! the last run (so that time left can be estimated), and the content bytes passed so far. Process-
//! wide, like the byte counters the metrics read: the library publishes, the command line draws.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

static BYTES: AtomicU64 = AtomicU64::new(0);
static STEP: Mutex<Option<Step>> = Mutex::new(None);

#[derive(Debug, Clone)]
pub struct Step {
    pub what: String,
    /// Its size at the last run, where known.
    pub expected: Option<u64>,
    /// [`BYTES`] when it began.
    base: u64,
}

/// A step begins (and the one before it ends).
pub fn begin(what: String, expected: Option<u64>) {
    *STEP.lock().expect("progress") = Some(Step { what, expected, base: BYTES.load(Ordering::Relaxed) });
}

pub fn end() {
    *STEP.lock().expect("progress") = None;
}

/// Content bytes handled: read and chunked, or found unchanged by the files cache.
pub fn advance(bytes: u64) {
    BYTES.fetch_add(bytes, Ordering::Relaxed);
}

/// The step under way, and its bytes so far.
pub fn current() -> Option<(Step, u64)> {
    let step = STEP.lock().expect("progress").clone()?;
    let done = BYTES.load(Ordering::Relaxed).saturating_sub(step.base);
    Some((step, done))
}

/// Each source's size at the last run (by its label), kept beside the files cache: reading every
/// manifest for it would cost a request per snapshot on a cloud target.
pub struct LastSizes {
    file: std::path::PathBuf,
    pub sizes: BTreeMap<String, u64>,
}

impl LastSizes {
    pub fn load(dir: &Path) -> LastSizes {
        let file = dir.join("sizes.json");
        let sizes = std::fs::read(&file).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
        LastSizes { file, sizes }
    }

    /// Best effort: a missing estimate only costs the next run its time left.
    pub fn save(&self) {
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&self.file, serde_json::to_vec(&self.sizes).expect("sizes serialize"));
    }
}
