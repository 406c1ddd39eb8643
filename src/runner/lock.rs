//! One run at a time per state directory: a lock file naming its holder (host, pid, the pid's start
//! time, when it started) with a heartbeat. A lock whose holder is dead (its pid gone or reused on
//! this host, or its heartbeat older than the lease, wherever it runs) is taken over without a human,
//! and the takeover is reported: a killed sidecar must not stop every later night.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a holder's heartbeat vouches for it; a holder renews it every third of that.
pub const LEASE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// The pid's start time in clock ticks since boot: with the pid, it names one process for good.
    pub pid_start: Option<u64>,
    /// RFC 3339.
    pub since: String,
    /// Unix seconds of the last heartbeat.
    pub heartbeat: i64,
    pub command: String,
}

impl Holder {
    fn me(command: &str) -> Holder {
        let pid = std::process::id();
        Holder {
            host: crate::hostname(),
            pid,
            pid_start: crate::process_start(pid),
            since: crate::now_rfc3339(),
            heartbeat: crate::unix_now(),
            command: command.to_string(),
        }
    }

    /// Dead: its process is gone (or the pid now names another one) on this host, or it has not
    /// renewed its lease.
    fn is_dead(&self, now: i64) -> bool {
        let gone_here = self.host == crate::hostname() && crate::process_start(self.pid) != self.pid_start;
        gone_here || now - self.heartbeat > LEASE.as_secs() as i64
    }

    fn same_process(&self, other: &Holder) -> bool {
        (&self.host, self.pid, self.pid_start) == (&other.host, other.pid, other.pid_start)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} since {} ({})", self.host, self.pid, self.since, self.command)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("locked by {0}: another run holds this state directory; wait for it (backup --wait DURATION) or stop it")]
    Busy(Holder),
    #[error("the lock {path}: {source}; the state directory must be writable")]
    Io { path: String, source: io::Error },
}

/// A held lock; released when dropped.
pub struct RunLock {
    path: PathBuf,
    holder: Holder,
    /// Dropped to stop the heartbeat at once (a sleeping heartbeat would hold up every exit).
    stop_beating: Option<std::sync::mpsc::Sender<()>>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("lock")
}

/// The current holder, if any (for `status`).
pub fn holder(state_dir: &Path) -> Option<Holder> {
    read(&lock_path(state_dir)).ok().flatten()
}

fn read(path: &Path) -> io::Result<Option<Holder>> {
    match fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `holder` to a private temporary file beside `path`, durably.
fn write_temporary(path: &Path, holder: &Holder) -> io::Result<PathBuf> {
    let tmp = path.with_extension(format!("{}.tmp", holder.pid));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(holder).expect("a holder serializes"))?;
    file.sync_all()?;
    Ok(tmp)
}

impl RunLock {
    /// Takes the lock, taking it over from a dead holder (returned, to be reported), or fails with
    /// its live holder.
    pub fn acquire(state_dir: &Path, command: &str) -> Result<(RunLock, Option<Holder>), LockError> {
        let path = lock_path(state_dir);
        let io_err = |source| LockError::Io { path: path.display().to_string(), source };
        fs::create_dir_all(state_dir).map_err(io_err)?;
        let holder = Holder::me(command);
        let mut taken_over = None;
        // Twice at most: once more after a dead holder's lock is moved away.
        for _ in 0..2 {
            let tmp = write_temporary(&path, &holder).map_err(io_err)?;
            // link(2) fails when the name exists: only one process can create the lock.
            let linked = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => return Ok((RunLock::start(path, holder), taken_over)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(e)),
            }
            let Some(current) = read(&path).map_err(io_err)? else {
                // Unreadable (cut short by a crash) or just released: a holder writes it whole.
                let age = fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                if age.is_none_or(|age| age > LEASE) {
                    let _ = fs::remove_file(&path);
                }
                continue;
            };
            if !current.is_dead(crate::unix_now()) {
                return Err(LockError::Busy(current));
            }
            // Moved aside, then checked: if another process took it over in between, its fresh lock
            // is what moved, and goes back.
            let aside = path.with_extension(format!("dead.{}", holder.pid));
            if fs::rename(&path, &aside).is_err() {
                continue;
            }
            match read(&aside).map_err(io_err)? {
                Some(moved) if moved.same_process(&current) => {
                    let _ = fs::remove_file(&aside);
                    taken_over = Some(current);
                }
                Some(moved) => {
                    let _ = fs::hard_link(&aside, &path);
                    let _ = fs::remove_file(&aside);
                    return Err(LockError::Busy(moved));
                }
                None => {
                    let _ = fs::remove_file(&aside);
                }
            }
        }
        match read(&path).map_err(io_err)? {
            Some(current) => Err(LockError::Busy(current)),
            None => Err(io_err(io::Error::other("the lock keeps changing hands; try again"))),
        }
    }

    /// [`Self::acquire`], waiting up to `wait` for a live holder to finish.
    pub fn acquire_waiting(state_dir: &Path, command: &str, wait: Duration) -> Result<(RunLock, Option<Holder>), LockError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Self::acquire(state_dir, command) {
                Err(LockError::Busy(_)) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
                other => return other,
            }
        }
    }

    fn start(path: PathBuf, holder: Holder) -> RunLock {
        *HELD.lock().unwrap_or_else(|p| p.into_inner()) = Some((path.clone(), holder.clone()));
        let (stop_beating, stopped) = std::sync::mpsc::channel::<()>();
        let heartbeat = {
            let (path, holder) = (path.clone(), holder.clone());
            std::thread::spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(LEASE / 3) {
                    renew(&path, &holder);
                }
            })
        };
        RunLock { path, holder, stop_beating: Some(stop_beating), heartbeat: Some(heartbeat) }
    }
}

/// Rewrites the lock with a fresh heartbeat, while it is still this process's.
fn renew(path: &Path, holder: &Holder) {
    if !read(path).ok().flatten().is_some_and(|current| current.same_process(holder)) {
        return;
    }
    let fresh = Holder { heartbeat: crate::unix_now(), ..holder.clone() };
    if let Ok(tmp) = write_temporary(path, &fresh) {
        if fs::rename(&tmp, path).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

/// The lock this process holds, for a process that exits without unwinding (on a signal).
static HELD: std::sync::Mutex<Option<(PathBuf, Holder)>> = std::sync::Mutex::new(None);

/// Removes the lock file this process holds, if any: called just before exiting on a signal.
pub fn release_held() {
    if let Some((path, holder)) = HELD.lock().unwrap_or_else(|p| p.into_inner()).take() {
        remove_if_mine(&path, &holder);
    }
}

fn remove_if_mine(path: &Path, holder: &Holder) {
    if read(path).ok().flatten().is_some_and(|current| current.same_process(holder)) {
        let _ = fs::remove_file(path);
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        drop(self.stop_beating.take());
        if let Some(heartbeat) = self.heartbeat.take() {
            let _ = heartbeat.join();
        }
        HELD.lock().unwrap_or_else(|p| p.into_inner()).take();
        remove_if_mine(&self.path, &self.holder);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_and_a_dead_holder_is_taken_over() {
        let dir = std::env::temp_dir().join(format!("stackvault-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (lock, taken) = RunLock::acquire(&dir, "backup").unwrap();
        assert!(taken.is_none());
        match RunLock::acquire(&dir, "backup") {
            Err(LockError::Busy(holder)) => assert_eq!(holder.pid, std::process::id()),
            other => panic!("{:?}", other.map(|_| ())),
        }
        drop(lock);
        assert!(holder(&dir).is_none(), "released on drop");

        // A holder whose process is gone (pid start time that no process has).
        let dead = Holder { pid_start: Some(1), ..Holder::me("backup") };
        fs::write(lock_path(&dir), serde_json::to_vec(&dead).unwrap()).unwrap();
        let (_lock, taken) = RunLock::acquire(&dir, "backup").unwrap();
        assert_eq!(taken, Some(dead));
        // A holder elsewhere whose heartbeat stopped.
        drop(_lock);
        let silent = Holder { host: "elsewhere".into(), heartbeat: crate::unix_now() - 3600, ..Holder::me("daemon") };
        fs::write(lock_path(&dir), serde_json::to_vec(&silent).unwrap()).unwrap();
        assert_eq!(RunLock::acquire(&dir, "backup").unwrap().1, Some(silent));
        let _ = fs::remove_dir_all(&dir);
    }
}
