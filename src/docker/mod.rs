//! Everything that talks to the Docker Engine API: finding the stack's containers and mounts
//! ([`discover`]), one run's hold on the engine ([`engine`]), and running stackvault's agent in
//! short-lived helper containers ([`helper`]) that stream through a shared socket ([`exchange`]);
//! commands inside the stack's containers ([`exec`]) and keeping them consistent while read ([`quiesce`]).

pub mod discover;
pub mod engine;
pub mod exchange;
pub mod exec;
pub mod helper;
pub mod quiesce;
pub mod stdio;

use bollard::Docker;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine at {host}: {source}; check docker.host and that the socket is mounted")]
    Connect { host: String, source: bollard::errors::Error },
    #[error("Docker API, {action}: {source}")]
    Api { action: String, source: bollard::errors::Error },
    #[error("{purpose} failed: {stderr} (helper container {container} exited with status {code})")]
    HelperFailed { container: String, purpose: String, code: i64, stderr: String },
    #[error("{0}")]
    Agent(String),
    #[error("{purpose} ({place}): {message}")]
    Exec { place: String, purpose: String, message: String },
    #[error("container {container}, label {label}: {message}")]
    Label { container: String, label: &'static str, message: String },
}

impl DockerError {
    pub fn api(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Self {
        let action = action.into();
        move |source| DockerError::Api { action, source }
    }
}

/// Connects to `host` (unix:// or tcp://), else to DOCKER_HOST, else to the local socket, and settles
/// on an API version the engine speaks.
pub async fn connect(host: Option<&str>) -> Result<Docker, DockerError> {
    let shown = host.map(str::to_string).or_else(|| std::env::var("DOCKER_HOST").ok()).unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let connect_err = |source| DockerError::Connect { host: shown.clone(), source };
    let docker = match host {
        Some(host) => Docker::connect_with_host(host),
        None => Docker::connect_with_defaults(),
    }
    .map_err(connect_err)?;
    // Long enough for a helper's whole stream; per-request progress is watched elsewhere.
    let docker = docker.with_timeout(std::time::Duration::from_secs(24 * 3600));
    docker.negotiate_version().await.map_err(connect_err)
}

/// Undoes what an abandoned run left on the engine (it was interrupted, or its work dropped): its
/// helpers are removed, its execs stopped, and containers it stopped for the backup started again.
/// Returns what could not be undone.
pub async fn abandon_run(host: Option<&str>, state_dir: &std::path::Path) -> Vec<String> {
    exec::stop_live_execs().await;
    let Ok(docker) = connect(host).await else { return Vec::new() };
    helper::remove_live_helpers(&docker).await;
    quiesce::start_left_stopped(&docker, state_dir, true).await.err().map(|e| e.to_string()).into_iter().collect()
}
