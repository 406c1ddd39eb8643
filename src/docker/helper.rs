//! Helper containers: stackvault's own static binary, imported as a one-file image, runs as the agent
//! beside a volume (read-only for backup, read-write for restore) and speaks the tree event protocol
//! with the sidecar, over a socket in a shared volume ([`super::exchange`]) or, failing that, over the
//! container's attach stream. Every helper carries [`HELPER_LABEL`] and [`OWNER_LABEL`]; it is removed
//! when its work ends, and one whose owning run died is removed by the next run at once.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;

use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;


use super::engine::Engine;
use super::{stdio, DockerError};

pub const HELPER_LABEL: &str = "stackvault.helper";
/// The run that started a helper, as [`Owner::label`] writes it.
pub const OWNER_LABEL: &str = "stackvault.owner";
const AGENT_REPOSITORY: &str = "stackvault-agent";
/// Where the binary lives inside the agent image.
const AGENT_PATH: &str = "/stackvault";
/// Helpers this process started and has not removed yet, for removal when it is interrupted.
static LIVE_HELPERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Removes every helper this process still has; for the signal handler.
pub async fn remove_live_helpers(docker: &Docker) {
    let ids = std::mem::take(&mut *LIVE_HELPERS.lock().expect("helper registry"));
    for id in ids {
        let _ = force_remove(docker, &id).await;
    }
}

/// Removes a helper whatever its state (a running one is killed first).
async fn force_remove(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let force = RemoveContainerOptionsBuilder::default().force(true).build();
    docker.remove_container(id, Some(force)).await
}

/// Waits until every helper this process started is gone: those released to the engine's
/// auto-remove, mostly. One still there after a minute is removed by force.
pub async fn wait_until_gone(docker: &Docker) {
    let ids = std::mem::take(&mut *LIVE_HELPERS.lock().expect("helper registry"));
    for id in ids {
        let options = WaitContainerOptionsBuilder::default().condition("removed").build();
        let mut removed = docker.wait_container(&id, Some(options));
        // An error here is mostly "no such container": it is gone already.
        if tokio::time::timeout(Duration::from_secs(60), removed.next()).await.is_err() {
            let _ = force_remove(docker, &id).await;
        }
    }
}



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

/// The process that runs helpers: where it runs (`container:<id>` inside one of the engine's
/// containers, else `host:<boot id>`), its pid there and its start time in clock ticks since boot.
/// Pid and start time together name one process for good: a reused pid has another start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    pub fn current(own_container: Option<&str>) -> Owner {
        let host = match own_container {
            Some(id) => format!("container:{id}"),
            None => format!("host:{}", std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim()),
        };
        let pid = std::process::id();
        Owner { host, pid, start: crate::process_start(pid).unwrap_or(0) }
    }

    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.host, self.pid, self.start)
    }

    pub fn parse(label: &str) -> Option<Owner> {
        let mut parts = label.rsplitn(3, '/');
        let start = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        Some(Owner { host: parts.next()?.to_string(), pid, start })
    }

    /// Whether `self` still runs, as far as `me` can tell: a process in the same place is looked up
    /// by pid and start time, one in another container is gone when that container is.
    pub async fn liveness(&self, docker: &Docker, me: &Owner) -> Liveness {
        if self.host == me.host {
            return if crate::process_start(self.pid) == Some(self.start) { Liveness::Alive } else { Liveness::Dead };
        }
        let Some(container) = self.host.strip_prefix("container:") else { return Liveness::Unknown };
        match docker.inspect_container(container, None).await {
            Ok(c) if c.state.as_ref().and_then(|s| s.running).unwrap_or(false) => Liveness::Unknown,
            Ok(_) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Liveness::Dead,
            Err(_) => Liveness::Unknown,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    /// Runs elsewhere (another container that still runs, another host): the graces decide.
    Unknown,
}

/// A live run removes its exited helper within moments; one exited longer ago than this was left
/// by a run that died. The grace applies only where the owner cannot be checked (another container
/// that still runs, or a helper from a version without owner labels).
const EXITED_GRACE_SECS: i64 = 10;
/// A run creates and starts a helper back to back; one never started for this long was orphaned.
const CREATED_GRACE_SECS: i64 = 600;
/// A helper still running after a day is stuck (a read-only walk does not take that long).
const RUNNING_LIMIT_SECS: i64 = 24 * 3600;

/// Removes helpers that dead runs left behind: at once when their owner is known to be gone, after
/// the graces above when it cannot be checked; never those of a run that is alive. Returns how many.
pub async fn remove_stale_helpers(docker: &Docker, me: &Owner) -> Result<usize, DockerError> {
    let filters = std::collections::HashMap::from([("label".to_string(), vec![HELPER_LABEL.to_string()])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let helpers = docker.list_containers(Some(options)).await.map_err(DockerError::api("listing helper containers"))?;
    let now = crate::unix_now();
    let mut removed = 0;
    for helper in helpers {
        let Some(id) = helper.id else { continue };
        let owner = helper.labels.as_ref().and_then(|l| l.get(OWNER_LABEL)).and_then(|l| Owner::parse(l));
        let liveness = match &owner {
            Some(owner) => owner.liveness(docker, me).await,
            None => Liveness::Unknown,
        };
        let stale = match liveness {
            Liveness::Dead => true,
            Liveness::Alive => false,
            Liveness::Unknown => {
                let age = now - helper.created.unwrap_or(now);
                match helper.state.map(|s| s.to_string()).as_deref() {
                    Some("running") | Some("restarting") | Some("paused") => age > RUNNING_LIMIT_SECS,
                    Some("created") => age > CREATED_GRACE_SECS,
                    _ => {
                        let finished = docker.inspect_container(&id, None).await.ok().and_then(|c| c.state).and_then(|s| s.finished_at);
                        let finished = finished.and_then(|t| humantime::parse_rfc3339_weak(&t).ok());
                        let since = finished.and_then(|t| std::time::SystemTime::now().duration_since(t).ok()).map(|d| d.as_secs() as i64);
                        since.map(|s| s > EXITED_GRACE_SECS).unwrap_or(true)
                    }
                }
            }
        };
        if stale && force_remove(docker, &id).await.is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

pub struct HelperSpec {
    /// The engine removes the container once it exits, so that a run can be done with a helper as soon
    /// as the agent reports success ([`Helper::release`]).
    pub auto_remove: bool,
    /// The source or target the agent works on; the engine adds the exchange's mount.
    pub mounts: Vec<Mount>,
    /// `HOST:DEST` bind mounts whose host directory the engine creates when it is missing (a restore
    /// onto a fresh host); the mounts API (engine API 1.41) cannot.
    pub binds: Vec<String>,
    /// The agent's arguments; the engine adds where to connect.
    pub args: Vec<String>,
    pub purpose: String,
}

/// The agent's two directions: what it sends (the tree on backup, nothing on restore) and what it
/// receives (the stamps on backup, the tree on restore). Dropping the writer ends the agent's input.
pub struct HelperIo {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    /// The exchange socket itself, when that is the way: shutting it down ends a read in progress.
    pub socket: Option<UnixStream>,
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

/// How long a started helper may take to connect to the exchange socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

impl Helper {
    /// Creates and starts a helper and connects to its agent: through the engine's exchange socket
    /// when it has one, else through the container's attach stream.
    pub async fn start(engine: &Engine, spec: HelperSpec) -> Result<(Helper, HelperIo), DockerError> {
        let docker = &engine.docker;
        let mut cmd = vec![AGENT_PATH.to_string()];
        cmd.extend(spec.args.iter().cloned());
        let mut mounts = spec.mounts.clone();
        let listening = match engine.exchange() {
            Some(exchange) => {
                let listening = exchange.listen().map_err(|e| DockerError::Agent(format!("creating a socket in {}: {e}", exchange.describe())))?;
                mounts.push(exchange.mount());
                cmd.extend(["--connect".to_string(), listening.helper_path.clone(), "--token".into(), listening.token.clone()]);
                Some(listening)
            }
            None => None,
        };
        let attach_stdio = listening.is_none();
        let body = ContainerCreateBody {
            image: Some(engine.agent_image().to_string()),
            cmd: Some(cmd),
            labels: Some(std::collections::HashMap::from([
                (HELPER_LABEL.to_string(), spec.purpose.clone()),
                (OWNER_LABEL.to_string(), engine.owner().label()),
            ])),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(attach_stdio),
            open_stdin: Some(attach_stdio),
            stdin_once: Some(attach_stdio),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                binds: Some(spec.binds.clone()),
                auto_remove: Some(spec.auto_remove),
                network_mode: Some("none".into()),
                // The default json-file driver would also log every byte of an attached tree stream, as
                // JSON: that costs 5x the transfer and fills the host's disk.
                log_config: Some(HostConfigLogConfig { typ: Some("none".into()), config: None }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().build();
        let created = docker.create_container(Some(options), body).await.map_err(DockerError::api(format!("creating helper for {}", spec.purpose)))?;
        LIVE_HELPERS.lock().expect("helper registry").push(created.id.clone());
        let helper = Helper { docker: docker.clone(), id: created.id, purpose: spec.purpose, stderr: Arc::default(), finished: false };

        let attach = AttachContainerOptionsBuilder::default().stream(true).stdout(true).stderr(true).stdin(attach_stdio).build();
        let attached = docker.attach_container(&helper.id, Some(attach)).await.map_err(DockerError::api(format!("attaching to helper {}", helper.id)))?;
        docker.start_container(&helper.id, None).await.map_err(DockerError::api(format!("starting helper {}", helper.id)))?;

        let tail = helper.stderr.clone();
        let stdout = stdio::demux(attached.output, move |message| stdio::append_tail(&tail, message));
        let io = match listening {
            Some(listening) => {
                let stream = helper.accept(listening).await?;
                crate::source::wire::widen_send_buffer(&stream);
                let writer = stream.try_clone().map_err(|e| DockerError::Agent(format!("helper socket: {e}")))?;
                let socket = stream.try_clone().ok();
                HelperIo { reader: Box::new(stream), writer: Box::new(SocketWriter(writer)), socket }
            }
            None => {
                HelperIo { reader: Box::new(stdout), writer: Box::new(stdio::feed(attached.input)), socket: None }
            }
        };
        Ok((helper, io))
    }

    /// Waits for the agent to connect and prove, by the token, that it is this helper's.
    async fn accept(&self, listening: super::exchange::Listening) -> Result<UnixStream, DockerError> {
        let failed = |why: String| DockerError::Agent(format!("{} ({}): {why}", self.purpose, listening.describe()));
        let options = WaitContainerOptionsBuilder::default().condition("not-running").build();
        let mut exited = self.docker.wait_container(&self.id, Some(options));
        let (mut stream, _) = tokio::select! {
            // An agent with nothing to send (an empty volume) may connect and exit before this runs: its
            // connection waits in the backlog and must win over its exit.
            biased;
            accepted = listening.listener.accept() => accepted.map_err(|e| failed(format!("accepting the agent's connection: {e}")))?,
            _ = exited.next() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(failed(format!(
                    "the helper exited before it connected (agent: {}); if the engine cannot see this directory, set docker.stream: attach",
                    self.stderr()
                )));
            }
            _ = tokio::time::sleep(CONNECT_TIMEOUT) => return Err(failed(format!("the helper did not connect within {} s", CONNECT_TIMEOUT.as_secs()))),
        };
        let mut presented = vec![0u8; listening.token.len() + 1];
        let read = tokio::time::timeout(CONNECT_TIMEOUT, stream.read_exact(&mut presented)).await;
        if !matches!(read, Ok(Ok(_))) || presented[..listening.token.len()] != *listening.token.as_bytes() || presented[listening.token.len()] != b'\n' {
            return Err(failed("a connection without this helper's token".into()));
        }
        let stream = stream.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s));
        stream.map_err(|e| failed(format!("helper socket: {e}")))
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
            // Removed by the engine already (auto-remove): the agent's words are all there is.
            Some(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => -1,
            Some(Err(e)) => return Err(DockerError::Api { action: format!("waiting for helper {}", self.id), source: e }),
            None => -1,
        };
        // Output may trail the exit by a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stderr = self.stderr();
        self.remove().await;
        if code != 0 {
            return Err(DockerError::HelperFailed { container: self.id.clone(), purpose: self.purpose.clone(), code, stderr });
        }
        Ok(stderr)
    }

    /// Leaves an auto-removed helper whose agent reported success to exit and go by itself while the
    /// run goes on; [`wait_until_gone`] at the end of the run makes sure it went (a helper that still
    /// exists holds its volume: `docker volume rm` would fail).
    pub fn release(mut self) {
        self.finished = true;
    }

    pub async fn abort(mut self) {
        self.remove().await;
    }

    async fn remove(&mut self) {
        let _ = force_remove(&self.docker, &self.id).await;
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
                let _ = force_remove(&docker, &id).await;
            });
        }
    }
}

/// The sidecar's sending half of the agent's socket: dropping it ends the agent's input.
struct SocketWriter(UnixStream);

impl Write for SocketWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Drop for SocketWriter {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_labels_round_trip_and_name_this_process() {
        let me = Owner::current(None);
        assert!(me.host.starts_with("host:") && me.start > 0, "{me:?}");
        assert_eq!(Owner::parse(&me.label()), Some(me.clone()));
        let in_container = Owner { host: "container:abc".into(), pid: 7, start: 99 };
        assert_eq!(Owner::parse(&in_container.label()), Some(in_container));
        assert_eq!(Owner::parse("garbage"), None);
        assert_eq!(crate::process_start(me.pid), Some(me.start));
    }
}
