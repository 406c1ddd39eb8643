//! What a stack is, beside its data: each selected container's configuration as the engine reports it
//! (`Config` and `HostConfig` of the Engine API, kept field for field), the networks and volumes they
//! use, and their images. Captured with every snapshot and stored like file content (encrypted where
//! the repository is: environments hold secrets), so that a restore can re-create the stack on a host
//! that has never seen it (docs/FORMAT.md, "Stack sources").

use std::collections::{BTreeMap, BTreeSet};

use bollard::models::{ContainerConfig, HostConfig};
use bollard::Docker;
use serde::{Deserialize, Serialize};

use crate::docker::DockerError;

/// The largest definition a reader accepts: a stack of hundreds of containers is far below it.
pub const MAX_DEFINITION: u64 = 16 << 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackDefinition {
    /// The compose project the containers belong to, where they all share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub containers: Vec<ContainerDefinition>,
    pub networks: Vec<NetworkDefinition>,
    pub volumes: Vec<VolumeDefinition>,
    pub images: Vec<ImageDefinition>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerDefinition {
    pub name: String,
    /// The image as the container names it (`mariadb:11`), and the id it ran.
    pub image: String,
    pub image_id: String,
    /// The Engine API's container `Config`, less the hostname the engine made up from the id.
    pub config: ContainerConfig,
    /// The Engine API's `HostConfig`, as created.
    pub host_config: HostConfig,
    /// Networks (other than the engine's own `bridge`, `host`, `none`) with this container's aliases
    /// and static addresses.
    pub networks: BTreeMap<String, Endpoint>,
    /// Whether it ran when the snapshot was taken; a restore starts only those.
    pub running: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDefinition {
    pub name: String,
    pub driver: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub enable_ipv6: bool,
    /// Subnets and gateways, kept only where a container has a static address on the network (an
    /// address the engine chose is the engine's to choose again, and may be taken on another host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<Subnet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    pub subnet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDefinition {
    pub name: String,
    pub driver: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDefinition {
    pub reference: String,
    pub id: String,
    /// Registry digests (`name@sha256:…`) the engine knows for it; where one exists, a restore can pull.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repo_digests: Vec<String>,
}

/// Networks every engine has; never created nor removed by a restore.
pub const ENGINE_NETWORKS: [&str; 3] = ["bridge", "host", "none"];

impl StackDefinition {
    /// Cuts the stack off from everything but itself, for a restore drill: networks internal (no
    /// route out) and without fixed subnets or addresses (the original holds them), the engine's own
    /// networks and another container's namespace replaced by none, no host ports, no restart
    /// policy (a killed drill's containers do not come back), volumes local (a driver's options
    /// could name the original's NFS share), no `volumes_from` or links (they name the original's
    /// containers), no privileges, devices or host namespaces (whoever can
    /// write to the storage can write a definition), and every object labelled with `labels` and
    /// with `original_label` naming the container it copies.
    pub fn isolate(&mut self, labels: &BTreeMap<String, String>, original_label: &str) {
        for network in &mut self.networks {
            network.internal = true;
            network.subnets.clear();
            network.labels.extend(labels.clone());
        }
        for volume in &mut self.volumes {
            volume.driver = "local".into();
            volume.options.clear();
            volume.labels.extend(labels.clone());
        }
        for container in &mut self.containers {
            let container_labels = container.config.labels.get_or_insert_default();
            container_labels.extend(labels.clone());
            container_labels.insert(original_label.to_string(), container.name.clone());
            for endpoint in container.networks.values_mut() {
                endpoint.ipv4_address = None;
                endpoint.ipv6_address = None;
            }
            let host = &mut container.host_config;
            host.port_bindings = None;
            host.publish_all_ports = Some(false);
            host.restart_policy = None;
            host.privileged = Some(false);
            host.cap_add = None;
            host.devices = None;
            host.device_requests = None;
            // By container name, which no restore renames: the original's volumes, and its network.
            host.volumes_from = None;
            host.links = None;
            for mode in [&mut host.pid_mode, &mut host.ipc_mode, &mut host.uts_mode, &mut host.userns_mode] {
                *mode = None;
            }
            let mode = host.network_mode.clone().unwrap_or_default();
            if !container.networks.contains_key(&mode) {
                host.network_mode = Some(container.networks.keys().next().cloned().unwrap_or_else(|| "none".into()));
            }
        }
    }
}

/// Inspects `containers` (names) and what they use; the sidecar's own container (`own_id`) is none of
/// the stack's: a restore has its own stackvault.
/// A container's compose project and service, where it has them.
fn compose_service(labels: &std::collections::HashMap<String, String>) -> Option<(String, String)> {
    Some((labels.get("com.docker.compose.project")?.clone(), labels.get("com.docker.compose.service")?.clone()))
}

pub async fn capture(docker: &Docker, containers: &[String], own_id: Option<&str>) -> Result<StackDefinition, DockerError> {
    let mut definition = StackDefinition::default();
    let mut projects = BTreeSet::new();
    let mut static_networks = BTreeSet::new();
    let mut volumes = BTreeSet::new();
    let mut images = BTreeMap::new();
    // stackvault's own service (the daemon, and a `compose run` of it beside it) is not the stack's.
    let own_service = match own_id {
        Some(id) => docker.inspect_container(id, None).await.ok().and_then(|c| c.config?.labels).and_then(|labels| compose_service(&labels)),
        None => None,
    };
    for name in containers {
        let inspected = docker.inspect_container(name, None).await.map_err(DockerError::api(format!("inspecting container {name}")))?;
        let id = inspected.id.clone().unwrap_or_default();
        let labels = inspected.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        // A one-off container (`compose run`) is a command run once, not a service to re-create.
        let one_off = labels.get("com.docker.compose.oneoff").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if own_id == Some(id.as_str()) || one_off || (own_service.is_some() && compose_service(&labels) == own_service) {
            continue;
        }
        let mut config = inspected.config.unwrap_or_default();
        // The engine names a container's host after its id unless told otherwise.
        if config.hostname.as_deref().is_some_and(|h| !h.is_empty() && id.starts_with(h)) {
            config.hostname = None;
        }
        let host_config = inspected.host_config.unwrap_or_default();
        let labels = config.labels.clone().unwrap_or_default();
        projects.insert(labels.get("com.docker.compose.project").cloned());
        let mut networks = BTreeMap::new();
        for (network, settings) in inspected.network_settings.and_then(|n| n.networks).unwrap_or_default() {
            if ENGINE_NETWORKS.contains(&network.as_str()) {
                continue;
            }
            let ipam = settings.ipam_config.unwrap_or_default();
            let endpoint = Endpoint {
                // The engine adds the short id as an alias itself.
                aliases: settings.aliases.unwrap_or_default().into_iter().filter(|a| !id.starts_with(a.as_str())).collect(),
                ipv4_address: ipam.ipv4_address.filter(|a| !a.is_empty()),
                ipv6_address: ipam.ipv6_address.filter(|a| !a.is_empty()),
            };
            if endpoint.ipv4_address.is_some() || endpoint.ipv6_address.is_some() {
                static_networks.insert(network.clone());
            }
            networks.insert(network, endpoint);
        }
        for mount in inspected.mounts.unwrap_or_default() {
            if mount.typ.as_deref() == Some("volume") {
                volumes.extend(mount.name);
            }
        }
        let image = config.image.clone().unwrap_or_default();
        let image_id = inspected.image.clone().unwrap_or_default();
        images.insert(image_id.clone(), image.clone());
        let running = inspected.state.and_then(|s| s.running).unwrap_or(false);
        definition.containers.push(ContainerDefinition { name: name.clone(), image, image_id, config, host_config, networks, running });
    }
    if projects.len() == 1 {
        definition.project = projects.into_iter().next().flatten();
    }
    let used: BTreeSet<String> = definition.containers.iter().flat_map(|c| c.networks.keys().cloned()).collect();
    for name in used {
        let network = docker.inspect_network(&name, None).await.map_err(DockerError::api(format!("inspecting network {name}")))?;
        let ipam = network.ipam.unwrap_or_default();
        let subnets = match static_networks.contains(&name) {
            true => ipam.config.unwrap_or_default().into_iter().filter_map(|c| Some(Subnet { subnet: c.subnet?, gateway: c.gateway })).collect(),
            false => Vec::new(),
        };
        definition.networks.push(NetworkDefinition {
            name,
            driver: network.driver.unwrap_or_else(|| "bridge".into()),
            options: network.options.unwrap_or_default().into_iter().collect(),
            labels: network.labels.unwrap_or_default().into_iter().collect(),
            internal: network.internal.unwrap_or(false),
            attachable: network.attachable.unwrap_or(false),
            enable_ipv6: network.enable_ipv6.unwrap_or(false),
            subnets,
        });
    }
    for name in volumes {
        let volume = docker.inspect_volume(&name).await.map_err(DockerError::api(format!("inspecting volume {name}")))?;
        definition.volumes.push(VolumeDefinition {
            name,
            driver: volume.driver,
            options: volume.options.into_iter().collect(),
            labels: volume.labels.into_iter().collect(),
        });
    }
    for (id, reference) in images {
        let inspected = docker.inspect_image(&id).await.map_err(DockerError::api(format!("inspecting image {reference}")))?;
        definition.images.push(ImageDefinition { reference, id, repo_digests: inspected.repo_digests.unwrap_or_default() });
    }
    Ok(definition)
}
