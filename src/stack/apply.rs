//! Carrying out a restore plan on an engine, in order: containers of the same names removed
//! (`--replace`), networks, volumes with their data, bind mounts, images (loaded from the snapshot or
//! pulled), containers created and started in dependency order, each database's dumps loaded as soon
//! as its server runs and before what depends on it starts, and at the end every started container
//! running and, where it has a healthcheck, healthy.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig, NetworkCreateRequest, NetworkingConfig, VolumeCreateRequest};
use bollard::query_parameters::{CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::runtime::Handle;

use super::definition::ContainerDefinition;
use super::plan::{ImageSource, Plan, Wait};
use crate::docker::DockerError;
use crate::Error;

/// How long a container may take to become healthy (or a dependency to complete) before the restore fails.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(300);

/// Removes what `--replace` replaces, then creates networks and volumes.
pub fn prepare(handle: &Handle, docker: &Docker, plan: &Plan, report: &dyn Fn(String)) -> Result<(), Error> {
    for name in &plan.remove {
        report(format!("stopping and removing container {name}"));
        let stop = StopContainerOptionsBuilder::default().build();
        let _ = handle.block_on(docker.stop_container(name, Some(stop)));
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        handle.block_on(docker.remove_container(name, Some(remove))).map_err(DockerError::api(format!("removing container {name}")))?;
    }
    for (network, exists) in &plan.networks {
        if *exists {
            continue;
        }
        report(format!("creating network {}", network.name));
        let ipam = (!network.subnets.is_empty()).then(|| Ipam {
            config: Some(network.subnets.iter().map(|s| IpamConfig { subnet: Some(s.subnet.clone()), gateway: s.gateway.clone(), ..Default::default() }).collect()),
            ..Default::default()
        });
        let request = NetworkCreateRequest {
            name: network.name.clone(),
            driver: Some(network.driver.clone()),
            internal: Some(network.internal),
            attachable: Some(network.attachable),
            enable_ipv6: Some(network.enable_ipv6),
            options: Some(network.options.clone().into_iter().collect()),
            labels: Some(network.labels.clone().into_iter().collect()),
            ipam,
            ..Default::default()
        };
        handle.block_on(docker.create_network(request)).map_err(DockerError::api(format!("creating network {}", network.name)))?;
    }
    for (volume, exists) in &plan.volumes {
        if *exists {
            continue;
        }
        let request = VolumeCreateRequest {
            name: Some(volume.name.clone()),
            driver: Some(volume.driver.clone()),
            driver_opts: Some(volume.options.clone().into_iter().collect()),
            labels: Some(volume.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        handle.block_on(docker.create_volume(request)).map_err(DockerError::api(format!("creating volume {}", volume.name)))?;
    }
    Ok(())
}

/// Pulls the images the plan pulls; those from the snapshot are the caller's (they need its blobs).
pub fn pull(handle: &Handle, docker: &Docker, plan: &Plan, report: &dyn Fn(String)) -> Result<(), Error> {
    for (image, _) in plan.images.iter().filter(|(_, source)| *source == ImageSource::Pull) {
        report(format!("pulling image {}", image.reference));
        let options = CreateImageOptionsBuilder::default().from_image(&image.reference).build();
        let pulled = handle.block_on(async {
            let mut stream = Box::pin(docker.create_image(Some(options), None, None));
            while let Some(step) = stream.next().await {
                step?;
            }
            Ok::<_, bollard::errors::Error>(())
        });
        if let Err(e) = pulled {
            return Err(Error::Usage(format!(
                "image {} is not in the snapshot (it was taken with images: reference) and cannot be pulled here ({e}): load it by hand (`docker load`), or restore a snapshot taken with images: include",
                image.reference
            )));
        }
    }
    Ok(())
}

/// Creates a container of the plan (stopped); by its image reference where `by_reference` holds the
/// image's id (the reference names that image here), else by the image's id.
pub fn create(handle: &Handle, docker: &Docker, container: &ContainerDefinition, by_reference: &std::collections::BTreeSet<String>, report: &dyn Fn(String)) -> Result<(), Error> {
    report(format!("creating container {}", container.name));
    let (primary, others) = networks_of(container);
    let body = body_of(container, primary.as_ref(), by_reference.contains(&container.image_id));
    let options = CreateContainerOptionsBuilder::default().name(&container.name).build();
    handle.block_on(docker.create_container(Some(options), body)).map_err(DockerError::api(format!("creating container {}", container.name)))?;
    for (network, endpoint) in others {
        let request = bollard::models::NetworkConnectRequest { container: container.name.clone(), endpoint_config: Some(endpoint) };
        handle.block_on(docker.connect_network(&network, request)).map_err(DockerError::api(format!("connecting container {} to network {network}", container.name)))?;
    }
    Ok(())
}

/// The network a container is created on (its network mode's, when that is one of the stack's) and
/// those it is connected to after: an engine of API 1.41 takes one endpoint at creation.
fn networks_of(container: &ContainerDefinition) -> (Option<(String, EndpointSettings)>, Vec<(String, EndpointSettings)>) {
    let settings = |e: &super::definition::Endpoint| EndpointSettings {
        aliases: (!e.aliases.is_empty()).then(|| e.aliases.clone()),
        ipam_config: (e.ipv4_address.is_some() || e.ipv6_address.is_some())
            .then(|| EndpointIpamConfig { ipv4_address: e.ipv4_address.clone(), ipv6_address: e.ipv6_address.clone(), ..Default::default() }),
        ..Default::default()
    };
    let mode = container.host_config.network_mode.clone().unwrap_or_default();
    let mut primary = None;
    let mut others = Vec::new();
    for (name, endpoint) in &container.networks {
        if *name == mode && primary.is_none() {
            primary = Some((name.clone(), settings(endpoint)));
        } else {
            others.push((name.clone(), settings(endpoint)));
        }
    }
    (primary, others)
}

fn body_of(c: &ContainerDefinition, primary: Option<&(String, EndpointSettings)>, by_reference: bool) -> ContainerCreateBody {
    let config = c.config.clone();
    let image = if by_reference { config.image } else { Some(c.image_id.clone()) };
    ContainerCreateBody {
        hostname: config.hostname,
        domainname: config.domainname,
        user: config.user,
        attach_stdin: config.attach_stdin,
        attach_stdout: config.attach_stdout,
        attach_stderr: config.attach_stderr,
        exposed_ports: config.exposed_ports,
        tty: config.tty,
        open_stdin: config.open_stdin,
        stdin_once: config.stdin_once,
        env: config.env,
        cmd: config.cmd,
        healthcheck: config.healthcheck,
        args_escaped: config.args_escaped,
        image,
        volumes: config.volumes,
        working_dir: config.working_dir,
        entrypoint: config.entrypoint,
        network_disabled: config.network_disabled,
        on_build: config.on_build,
        labels: config.labels,
        stop_signal: config.stop_signal,
        stop_timeout: config.stop_timeout,
        shell: config.shell,
        host_config: Some(c.host_config.clone()),
        networking_config: primary.map(|(name, endpoint)| NetworkingConfig { endpoints_config: Some(HashMap::from([(name.clone(), endpoint.clone())])) }),
    }
}

/// Waits until `wait` holds.
pub fn wait_for(handle: &Handle, docker: &Docker, wait: &Wait) -> Result<(), Error> {
    let (name, what) = match wait {
        Wait::Healthy(n) => (n, "healthy"),
        Wait::Started(n) => (n, "running"),
        Wait::Completed(n) => (n, "completed"),
    };
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    loop {
        let inspected = handle.block_on(docker.inspect_container(name, None)).map_err(DockerError::api(format!("inspecting container {name}")))?;
        let state = inspected.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let health = state.health.and_then(|h| h.status).map(|s| s.to_string());
        let done = match wait {
            Wait::Started(_) => running,
            // A container without a healthcheck counts as healthy once it runs, as compose has it.
            Wait::Healthy(_) => match health.as_deref() {
                Some("healthy") => true,
                Some("unhealthy") => return Err(Error::Usage(format!("container {name} became unhealthy: see `docker inspect {name}` (State.Health.Log)"))),
                Some("none") | Some("") | None => running,
                _ => false,
            },
            Wait::Completed(_) => !running && state.exit_code == Some(0) && state.finished_at.is_some_and(|f| !f.starts_with("0001")),
        };
        if done {
            return Ok(());
        }
        if !running && !matches!(wait, Wait::Completed(_)) && state.status.is_some_and(|s| s.to_string() == "exited") {
            return Err(Error::Usage(format!("container {name} exited (code {}) instead of becoming {what}: see `docker logs {name}`", state.exit_code.unwrap_or(-1))));
        }
        if Instant::now() > deadline {
            return Err(Error::Usage(format!("container {name} did not become {what} within {} s", HEALTH_TIMEOUT.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn start(handle: &Handle, docker: &Docker, name: &str) -> Result<(), Error> {
    handle.block_on(docker.start_container(name, None)).map_err(DockerError::api(format!("starting container {name}")))?;
    Ok(())
}

/// Each started container's health at the end: healthy, or running where it has no healthcheck.
pub fn settle(handle: &Handle, docker: &Docker, plan: &Plan) -> Result<BTreeMap<String, String>, Error> {
    let mut states = BTreeMap::new();
    for container in plan.containers.iter().filter(|c| c.running) {
        wait_for(handle, docker, &Wait::Healthy(container.name.clone()))?;
        let health = container.config.healthcheck.as_ref().filter(|h| h.test.as_ref().is_some_and(|t| t.first().map(String::as_str) != Some("NONE")));
        states.insert(container.name.clone(), if health.is_some() { "healthy".into() } else { "running".into() });
    }
    Ok(states)
}
