//! Keeping a stack consistent while it is read: hooks (`stackvault.pre` before anything is read,
//! `stackvault.post` after) run by exec in their containers, and containers labelled
//! `stackvault.stop-during-backup=true` stopped while the mounts are read. Which containers stackvault
//! stopped is written to the state directory before the first stop, so that whatever ends the run (a
//! failure, a signal, SIGKILL, a lost host) the containers are started again: at the run's end, by the
//! signal handler, or by the next start of stackvault.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::query_parameters::StartContainerOptions;
use bollard::Docker;
use serde::{Deserialize, Serialize};

use super::exec::{Exec, ExecSpec, Shell};
use super::DockerError;

pub const LABEL_STOP: &str = "stackvault.stop-during-backup";
pub const LABEL_PRE: &str = "stackvault.pre";
pub const LABEL_POST: &str = "stackvault.post";
pub const LABEL_HOOK_TIMEOUT: &str = "stackvault.hook-timeout";
const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// The container a stop request is out for: a signal handler must let that stop finish before it
/// starts the container again, or the engine would stop it after the start.
static STOPPING: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Each run's record is `stopped-containers-<hostname>-<pid>.json`: runs side by side keep their own.
const STATE_PREFIX: &str = "stopped-containers-";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub container: String,
    pub pre: Option<String>,
    pub post: Option<String>,
    pub timeout: Duration,
}

impl Hook {
    pub fn from_labels(container: &str, labels: &std::collections::HashMap<String, String>) -> Result<Option<Hook>, (&'static str, String)> {
        let text = |label: &str| labels.get(label).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let (pre, post) = (text(LABEL_PRE), text(LABEL_POST));
        let timeout = match text(LABEL_HOOK_TIMEOUT) {
            None => DEFAULT_HOOK_TIMEOUT,
            Some(t) => humantime::parse_duration(&t).map_err(|e| (LABEL_HOOK_TIMEOUT, format!("{t:?}: {e} (write e.g. 30s or 5m)")))?,
        };
        if pre.is_none() && post.is_none() {
            return Ok(None);
        }
        Ok(Some(Hook { container: container.to_string(), pre, post, timeout }))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pre,
    Post,
}

/// Runs one phase's hooks in container-name order. Pre hooks stop at the first failure (the run then
/// fails); post hooks all run (whenever the pre phase began, whatever happened since), and every
/// failure is reported.
pub async fn run_hooks(docker: &Docker, hooks: &[Hook], phase: Phase) -> Result<(), DockerError> {
    let mut failures = Vec::new();
    for hook in hooks {
        let (command, name) = match phase {
            Phase::Pre => (&hook.pre, LABEL_PRE),
            Phase::Post => (&hook.post, LABEL_POST),
        };
        let Some(command) = command else { continue };
        let purpose = format!("{name} hook");
        let shell = Shell::container(docker, &hook.container);
        let spec = ExecSpec { shell: shell.clone(), script: command.clone(), env: Vec::new(), stdin: false, purpose: purpose.clone() };
        let failure = match Exec::run(spec, hook.timeout).await {
            Ok(output) if output.code == 0 => continue,
            Ok(output) => DockerError::Exec {
                place: shell.place(),
                purpose,
                message: format!("exited with status {}: {}", output.code, output.last_stderr_line()),
            },
            Err(e) => e,
        };
        if phase == Phase::Pre {
            return Err(failure);
        }
        failures.push(failure.to_string());
    }
    match failures.len() {
        0 => Ok(()),
        1 => Err(DockerError::Agent(failures.remove(0))),
        _ => Err(DockerError::Agent(failures.join("; "))),
    }
}

/// The record of containers a run stopped, as written to the state directory.
#[derive(Serialize, Deserialize)]
struct Record {
    /// The run: hostname (the sidecar's container id, in a container), pid and the pid's start time.
    hostname: String,
    pid: u32,
    start: Option<u64>,
    containers: Vec<String>,
}

impl Record {
    /// Whether the run that wrote it is this very process or still alive on this host.
    fn owner_alive(&self) -> bool {
        self.hostname == crate::hostname() && crate::process_start(self.pid).is_some() && crate::process_start(self.pid) == self.start
    }
}

/// Containers this run stopped; [`Stopped::start_again`] must follow, whatever happens in between.
pub struct Stopped {
    state_file: PathBuf,
    containers: Vec<String>,
}

impl Stopped {
    /// Records, then stops, the containers. A container that fails to stop fails the run (after the
    /// ones already stopped are started again by the caller's `start_again`).
    pub async fn stop(docker: &Docker, state_dir: &Path, containers: &[String]) -> (Stopped, Result<(), DockerError>) {
        let pid = std::process::id();
        let state_file = state_dir.join(format!("{STATE_PREFIX}{}-{pid}.json", crate::hostname()));
        let mut stopped = Stopped { state_file, containers: Vec::new() };
        if containers.is_empty() {
            return (stopped, Ok(()));
        }
        let record = Record { hostname: crate::hostname(), pid, start: crate::process_start(pid), containers: containers.to_vec() };
        if let Err(e) = write_record(&stopped.state_file, &record) {
            let message = format!("cannot record the containers to stop in {}: {e}; set state_dir to a writable directory (nothing was stopped)", stopped.state_file.display());
            return (stopped, Err(DockerError::Agent(message)));
        }
        for container in containers {
            stopped.containers.push(container.clone());
            *STOPPING.lock().expect("stopping") = Some(container.clone());
            // The container's own stop timeout (compose's stop_grace_period) applies.
            let result = docker.stop_container(container, None::<bollard::query_parameters::StopContainerOptions>).await;
            *STOPPING.lock().expect("stopping") = None;
            if let Err(e) = result {
                return (stopped, Err(DockerError::api(format!("stopping container {container} ({LABEL_STOP})"))(e)));
            }
        }
        (stopped, Ok(()))
    }

    /// Starts the stopped containers again and clears the record once all are running.
    pub async fn start_again(self, docker: &Docker) -> Result<(), DockerError> {
        if self.containers.is_empty() && !self.state_file.exists() {
            return Ok(());
        }
        start_all(docker, &self.containers, &self.state_file).await
    }
}

/// Starts what a run that ended without doing so left stopped (killed, or its host lost power);
/// `include_own`: this process's own record too (the signal handler's case). Returns the containers
/// started.
pub async fn start_left_stopped(docker: &Docker, state_dir: &Path, include_own: bool) -> Result<Vec<String>, DockerError> {
    let Ok(entries) = std::fs::read_dir(state_dir) else { return Ok(Vec::new()) };
    let mut started = Vec::new();
    for entry in entries.flatten() {
        let state_file = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(STATE_PREFIX) || !name.ends_with(".json") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&state_file) else { continue };
        let record: Record = match serde_json::from_str(&text) {
            Ok(record) => record,
            Err(e) => return Err(DockerError::Agent(format!("{}: unreadable ({e}); start the containers it names by hand, then delete it", state_file.display()))),
        };
        let own = record.pid == std::process::id() && record.hostname == crate::hostname();
        if record.owner_alive() && !(own && include_own) {
            // Another run is in the middle of its backup: its containers are its own to start.
            continue;
        }
        if own {
            let stopping = STOPPING.lock().expect("stopping").clone();
            if let Some(container) = stopping {
                let options = bollard::query_parameters::WaitContainerOptionsBuilder::default().condition("not-running").build();
                let mut stopped = docker.wait_container(&container, Some(options));
                let _ = tokio::time::timeout(std::time::Duration::from_secs(120), futures_util::StreamExt::next(&mut stopped)).await;
            }
        }
        start_all(docker, &record.containers, &state_file).await?;
        started.extend(record.containers);
    }
    Ok(started)
}

async fn start_all(docker: &Docker, containers: &[String], state_file: &Path) -> Result<(), DockerError> {
    let mut failed = Vec::new();
    for container in containers {
        match docker.start_container(container, None::<StartContainerOptions>).await {
            // 304: it runs already (started by hand, or by its restart policy).
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => {}
            // Gone (removed meanwhile): nothing to start.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => failed.push(format!("{container}: {e}")),
        }
    }
    if !failed.is_empty() {
        // The record stays, so that the next start tries again.
        return Err(DockerError::Agent(format!("could not start again the containers stopped for the backup: {}", failed.join("; "))));
    }
    match std::fs::remove_file(state_file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DockerError::Agent(format!("{}: {e}", state_file.display()))),
    }
}

/// Written whole to a temporary file, synced, and renamed over the record: never half a record.
fn write_record(path: &Path, record: &Record) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(record).expect("record serializes"))?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
