//! Helper containers: stackvault's own static binary, imported as a one-file image, runs as the agent
//! beside a volume (read-only for backup, read-write for restore) and speaks the tree event protocol
//! over the container's stdout or stdin. Every helper carries [`HELPER_LABEL`]; it is removed when its
//! work ends, and a run that was killed leaves one that the next run removes.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::DockerError;

pub const HELPER_LABEL: &str = "stackvault.helper";
const AGENT_REPOSITORY: &str = "stackvault-agent";
/// Where the binary lives inside the agent image.
const AGENT_PATH: &str = "/stackvault";
/// Helpers this process started and has not removed yet, for removal when it is interrupted.
static LIVE_HELPERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Removes every helper this process still has; for the signal handler.
pub async fn remove_live_helpers(docker: &Docker) {
    let ids = std::mem::take(&mut *LIVE_HELPERS.lock().expect("helper registry"));
    for id in ids {
        let force = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = docker.remove_container(&id, Some(force)).await;
    }
}

/// Keep the tail of a helper's stderr for error messages, not all of it.
const STDERR_TAIL: usize = 16 << 10;

/// Makes sure an image holding exactly this binary exists; returns its reference. The tag is the
/// binary's hash, so a new build gets a new image and a helper never runs a stale agent. The binary is
/// streamed to the engine as a one-file tar, never held in memory whole.
pub async fn ensure_agent_image(docker: &Docker) -> Result<String, DockerError> {
    const EXE: &str = "/proc/self/exe";
    let agent_err = |e: io::Error| DockerError::Agent(format!("reading own executable {EXE}: {e}"));
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(EXE).map_err(agent_err)?).map_err(agent_err)?;
    let tag = hasher.finalize().to_hex()[..16].to_string();
    let reference = format!("{AGENT_REPOSITORY}:{tag}");
    if docker.inspect_image(&reference).await.is_ok() {
        return Ok(reference);
    }
    let binary = tokio::fs::File::open(EXE).await.map_err(agent_err)?;
    let len = binary.metadata().await.map_err(agent_err)?.len();
    let mut header = tar::Header::new_gnu();
    header.set_path(AGENT_PATH.trim_start_matches('/')).map_err(agent_err)?;
    header.set_size(len);
    header.set_mode(0o755);
    header.set_cksum();
    // The file's padding to a 512-byte block, then the two zero blocks that end a tar.
    let trailer = vec![0u8; (512 - (len % 512) as usize) % 512 + 1024];
    let archive = AsyncReadExt::chain(AsyncReadExt::chain(io::Cursor::new(header.as_bytes().to_vec()), binary), io::Cursor::new(trailer));
    let body = bollard::body_try_stream(tokio_util::io::ReaderStream::with_capacity(archive, 1 << 20));
    let options = CreateImageOptionsBuilder::default().from_src("-").repo(AGENT_REPOSITORY).tag(&tag).build();
    let mut progress = docker.create_image(Some(options), Some(body), None);
    while let Some(step) = progress.next().await {
        step.map_err(DockerError::api("importing the agent image"))?;
    }
    Ok(reference)
}

/// A live run removes its exited helper within moments; one exited longer ago than this was left
/// by a run that died. The grace keeps concurrent runs (a backup and a restore) off each other's helpers.
const EXITED_GRACE_SECS: i64 = 10;
/// A run creates and starts a helper back to back; one never started for this long was orphaned.
const CREATED_GRACE_SECS: i64 = 600;
/// A helper still running after a day is stuck (a read-only walk does not take that long).
const RUNNING_LIMIT_SECS: i64 = 24 * 3600;

/// Removes helpers that a killed run left behind; returns how many.
pub async fn remove_stale_helpers(docker: &Docker) -> Result<usize, DockerError> {
    let filters = std::collections::HashMap::from([("label".to_string(), vec![HELPER_LABEL.to_string()])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let helpers = docker.list_containers(Some(options)).await.map_err(DockerError::api("listing helper containers"))?;
    let now = crate::unix_now();
    let mut removed = 0;
    for helper in helpers {
        let Some(id) = helper.id else { continue };
        let age = now - helper.created.unwrap_or(now);
        let stale = match helper.state.map(|s| s.to_string()).as_deref() {
            Some("running") | Some("restarting") | Some("paused") => age > RUNNING_LIMIT_SECS,
            Some("created") => age > CREATED_GRACE_SECS,
            _ => {
                let finished = docker.inspect_container(&id, None).await.ok().and_then(|c| c.state).and_then(|s| s.finished_at);
                let finished = finished.and_then(|t| humantime::parse_rfc3339_weak(&t).ok());
                let since = finished.and_then(|t| std::time::SystemTime::now().duration_since(t).ok()).map(|d| d.as_secs() as i64);
                since.map(|s| s > EXITED_GRACE_SECS).unwrap_or(true)
            }
        };
        if stale {
            let force = RemoveContainerOptionsBuilder::default().force(true).build();
            if docker.remove_container(&id, Some(force)).await.is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

pub struct HelperSpec {
    pub image: String,
    /// `SOURCE:DEST[:ro]` as in `docker run -v`.
    pub binds: Vec<String>,
    pub args: Vec<String>,
    pub purpose: String,
    pub stdin: bool,
}

/// A running helper. `finish` waits for its exit status and removes it; dropping it unfinished
/// removes it by force.
pub struct Helper {
    docker: Docker,
    id: String,
    purpose: String,
    stderr: Arc<Mutex<String>>,
    finished: bool,
}

impl Helper {
    /// Creates, attaches to and starts a helper. Its stdout arrives through the returned receiver; when
    /// `spec.stdin`, bytes sent to the returned sender reach its stdin, which closes when the sender drops.
    pub async fn start(docker: &Docker, spec: HelperSpec) -> Result<(Helper, mpsc::Receiver<Bytes>, Option<mpsc::Sender<Bytes>>), DockerError> {
        let mut cmd = vec![AGENT_PATH.to_string()];
        cmd.extend(spec.args.iter().cloned());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(cmd),
            labels: Some(std::collections::HashMap::from([(HELPER_LABEL.to_string(), spec.purpose.clone())])),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(spec.stdin),
            open_stdin: Some(spec.stdin),
            stdin_once: Some(spec.stdin),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                binds: Some(spec.binds.clone()),
                network_mode: Some("none".into()),
                // The default json-file driver would also log every byte of the tree stream, as JSON:
                // that costs 5x the transfer and fills the host's disk.
                log_config: Some(HostConfigLogConfig { typ: Some("none".into()), config: None }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().build();
        let created = docker.create_container(Some(options), body).await.map_err(DockerError::api(format!("creating helper for {}", spec.purpose)))?;
        LIVE_HELPERS.lock().expect("helper registry").push(created.id.clone());
        let helper = Helper { docker: docker.clone(), id: created.id, purpose: spec.purpose, stderr: Arc::default(), finished: false };

        let attach = AttachContainerOptionsBuilder::default().stream(true).stdout(true).stderr(true).stdin(spec.stdin).build();
        let attached = docker.attach_container(&helper.id, Some(attach)).await.map_err(DockerError::api(format!("attaching to helper {}", helper.id)))?;
        docker.start_container(&helper.id, None).await.map_err(DockerError::api(format!("starting helper {}", helper.id)))?;

        let (out_tx, out_rx) = mpsc::channel::<Bytes>(16);
        let stderr = helper.stderr.clone();
        let mut output = attached.output;
        tokio::spawn(async move {
            while let Some(Ok(item)) = output.next().await {
                match item {
                    bollard::container::LogOutput::StdErr { message } => {
                        let mut tail = stderr.lock().expect("stderr buffer");
                        tail.push_str(&String::from_utf8_lossy(&message));
                        if tail.len() > STDERR_TAIL {
                            let cut = tail.len() - STDERR_TAIL;
                            let cut = (cut..tail.len()).find(|i| tail.is_char_boundary(*i)).unwrap_or(tail.len());
                            tail.drain(..cut);
                        }
                    }
                    other => {
                        if out_tx.send(other.into_bytes()).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let input = spec.stdin.then(|| {
            let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(16);
            let mut input = attached.input;
            tokio::spawn(async move {
                while let Some(bytes) = in_rx.recv().await {
                    if input.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                let _ = input.flush().await;
                let _ = input.shutdown().await;
            });
            in_tx
        });
        Ok((helper, out_rx, input))
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer").trim().to_string()
    }

    /// Waits for the helper to exit; a non-zero status is an error carrying its stderr. Returns stderr.
    pub async fn finish(mut self) -> Result<String, DockerError> {
        let options = WaitContainerOptionsBuilder::default().condition("not-running").build();
        let mut wait = self.docker.wait_container(&self.id, Some(options));
        let code = match wait.next().await {
            Some(Ok(response)) => response.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(DockerError::Api { action: format!("waiting for helper {}", self.id), source: e }),
            None => -1,
        };
        // Output may trail the exit by a moment.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let stderr = self.stderr();
        self.remove().await;
        if code != 0 {
            return Err(DockerError::HelperFailed { container: self.id.clone(), purpose: self.purpose.clone(), code, stderr });
        }
        Ok(stderr)
    }

    pub async fn abort(mut self) {
        self.remove().await;
    }

    async fn remove(&mut self) {
        let force = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = self.docker.remove_container(&self.id, Some(force)).await;
        LIVE_HELPERS.lock().expect("helper registry").retain(|id| *id != self.id);
        self.finished = true;
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (docker, id) = (self.docker.clone(), self.id.clone());
        if let Ok(handle) = Handle::try_current() {
            handle.spawn(async move {
                let force = RemoveContainerOptionsBuilder::default().force(true).build();
                let _ = docker.remove_container(&id, Some(force)).await;
            });
        }
    }
}

/// Blocking `Read` over a helper's stdout, for the data path's threads.
pub struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ChannelReader { rx, current: Bytes::new() }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(bytes) => self.current = bytes,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Blocking `Write` into a helper's stdin, batching small writes.
pub struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

const WRITE_BATCH: usize = 256 << 10;

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<Bytes>) -> Self {
        ChannelWriter { tx, buf: Vec::with_capacity(WRITE_BATCH) }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_BATCH)));
        self.tx.blocking_send(batch).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the helper stopped reading"))
    }
}
