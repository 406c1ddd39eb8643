//! One run's hold on the Docker engine: the connection, the agent image, where helpers and the sidecar
//! meet ([`super::exchange`]), and the sidecar's own container when it runs in one, whose mounts let
//! it read a selected volume in-process, with no helper at all.

use std::path::PathBuf;

use bollard::models::MountPoint;
use bollard::Docker;

use super::exchange::Exchange;
use super::helper::{self, Owner};
use super::DockerError;
use crate::config::{Config, StreamMode};
use crate::repo::format::SourceKind;

/// The container this process runs in, as the engine describes it.
pub struct OwnContainer {
    pub id: String,
    pub mounts: Vec<MountPoint>,
}

pub struct Engine {
    pub docker: Docker,
    agent_image: String,
    owner: Owner,
    exchange: Option<Exchange>,
    own: Option<OwnContainer>,
    /// Containers an earlier, killed run had stopped, started again by this one.
    pub restarted: Vec<String>,
}

impl Engine {
    /// Connects, removes what dead runs left behind, and gets helpers ready.
    pub async fn start(config: &Config) -> Result<Engine, DockerError> {
        let docker = super::connect(config.docker.host.as_deref()).await?;
        let own = own_container(&docker).await;
        let owner = Owner::current(own.as_ref().map(|o| o.id.as_str()));
        // Independent round trips to the engine; importing the agent image is the long one (fresh engine).
        let (swept, exchange, agent_image) = tokio::join!(
            helper::remove_stale_helpers(&docker, &owner),
            async {
                match config.docker.stream {
                    StreamMode::Attach => Ok(None),
                    mode => match Exchange::find(&docker, own.as_ref(), config.cache_dir(), is_local(config.docker.host.as_deref())).await {
                        Ok(exchange) => Ok(Some(exchange)),
                        Err(why) if mode == StreamMode::Socket => {
                            Err(DockerError::Agent(format!("docker.stream is socket, but {why}; or set docker.stream: attach")))
                        }
                        Err(_) => Ok(None),
                    },
                }
            },
            helper::ensure_agent_image(&docker),
        );
        swept?;
        let (exchange, agent_image) = (exchange?, agent_image?);
        // A run killed while it had containers stopped: start them before anything else.
        let restarted = super::quiesce::start_left_stopped(&docker, config.state_dir(), false).await?;
        Ok(Engine { docker, agent_image, owner, exchange, own, restarted })
    }

    /// Ends the run's use of the engine: returns once every helper it started is gone.
    pub async fn finish(&self) {
        helper::wait_until_gone(&self.docker).await;
    }

    pub fn agent_image(&self) -> &str {
        &self.agent_image
    }

    /// The id of the container this process runs in, if it runs in one.
    pub fn own_id(&self) -> Option<&str> {
        self.own.as_ref().map(|o| o.id.as_str())
    }

    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    pub fn exchange(&self) -> Option<&Exchange> {
        self.exchange.as_ref()
    }

    /// How helpers' streams travel, for reports.
    pub fn route(&self) -> String {
        match &self.exchange {
            Some(exchange) => format!("socket in {}", exchange.describe()),
            None => "attach stream".into(),
        }
    }

    /// Where this process sees a volume or bind mount directory through its own container's mounts
    /// (offen's way of embedding a sidecar: `data:/backup/data:ro`), writable when `write` is asked.
    pub fn own_path(&self, kind: SourceKind, name: &str, write: bool) -> Option<PathBuf> {
        let own = self.own.as_ref()?;
        own.mounts.iter().find_map(|m| {
            let same = match (kind, m.typ.as_deref()) {
                (SourceKind::Volume, Some("volume")) => m.name.as_deref() == Some(name),
                (SourceKind::Bind, Some("bind")) => m.source.as_deref() == Some(name),
                _ => false,
            };
            let path = PathBuf::from(m.destination.as_deref()?);
            (same && (!write || m.rw == Some(true)) && path.is_dir()).then_some(path)
        })
    }
}

/// Whether the engine runs on this machine: a unix socket (given, from DOCKER_HOST, or the default).
fn is_local(host: Option<&str>) -> bool {
    let host = host.map(str::to_string).or_else(|| std::env::var("DOCKER_HOST").ok());
    host.map(|h| h.starts_with("unix://")).unwrap_or(true)
}

/// The engine's container this process runs in, if any: Docker bind-mounts `/etc/hostname` into every
/// container from `…/containers/<id>/hostname`, and the engine must know that id.
async fn own_container(docker: &Docker) -> Option<OwnContainer> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let id = mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
        let id = root.strip_suffix("/hostname")?.rsplit('/').next()?;
        (*mount_point == "/etc/hostname" && id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })?;
    let inspected = docker.inspect_container(&id, None).await.ok()?;
    Some(OwnContainer { id: inspected.id.unwrap_or(id), mounts: inspected.mounts.unwrap_or_default() })
}
