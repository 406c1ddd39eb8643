//! From a stack's definition and what the target engine already holds to what a restore will do:
//! which networks, volumes, images and containers to create, reuse or remove, in which order the
//! containers start and what each waits for, what had to change for this host (names under another
//! project, bind mounts moved aside, host ports already taken), and what exists already. Pure:
//! the same plan is printed by `--dry-run` and carried out by `stack::apply`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bollard::models::{MountType, PortBinding};

use super::definition::{ContainerDefinition, ImageDefinition, NetworkDefinition, StackDefinition, VolumeDefinition};

pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
pub const DEPENDS_LABEL: &str = "com.docker.compose.depends_on";

/// What the target engine holds, as far as a plan needs to know.
#[derive(Debug, Default)]
pub struct TargetState {
    /// Containers by name, and whether each runs.
    pub containers: BTreeMap<String, bool>,
    pub networks: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    /// Image ids present.
    pub images: BTreeSet<String>,
    /// Host ports published by containers that run there (`8080/tcp`), with the container.
    pub ports: BTreeMap<String, String>,
}

pub struct PlanOptions<'a> {
    /// Restore under this compose project name instead of the snapshot's.
    pub project: Option<&'a str>,
    /// Stop and remove containers of the same names first (and overwrite volumes).
    pub replace: bool,
    /// Under `project`, bind-mounted host paths move below this directory (so as not to share the
    /// original's files).
    pub bind_root: &'a Path,
    /// Image ids the snapshot holds (`images: include`).
    pub images_in_snapshot: BTreeSet<String>,
    /// Volumes whose data the snapshot holds (a database's data volume is left to its dump).
    pub volumes_with_data: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Present,
    Snapshot,
    Pull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    Healthy(String),
    Started(String),
    Completed(String),
}

#[derive(Debug)]
pub struct Plan {
    /// The project restored into, and the snapshot's.
    pub project: Option<String>,
    pub original_project: Option<String>,
    pub remove: Vec<String>,
    /// Containers that exist on the engine and are left as they are (no `--replace`): their data is
    /// restored into their volumes as a data restore does, their dumps into them.
    pub kept: Vec<String>,
    /// Networks to create, and (true) those that exist and are reused.
    pub networks: Vec<(NetworkDefinition, bool)>,
    pub volumes: Vec<(VolumeDefinition, bool)>,
    /// Volumes (by their new names) that are created empty: the snapshot holds no data for them.
    pub empty_volumes: BTreeSet<String>,
    pub images: Vec<(ImageDefinition, ImageSource)>,
    /// Renamed and adjusted for this host, in the order they start.
    pub containers: Vec<ContainerDefinition>,
    /// Per container to start, what it waits for first.
    pub waits: BTreeMap<String, Vec<Wait>>,
    /// Old name to new, for volumes and bind-mount host paths.
    pub volume_names: BTreeMap<String, String>,
    pub bind_paths: BTreeMap<String, String>,
    pub notes: Vec<String>,
}

impl Plan {
    /// A name of the snapshot's (a container's) as this restore names it.
    pub fn rename(&self, name: &str) -> String {
        let project = if self.project == self.original_project { None } else { self.project.as_deref() };
        Rename { old: self.original_project.as_deref(), new: project }.name(name)
    }

    /// What the plan would keep, replace or reuse that exists on the engine already.
    pub fn existing(&self) -> Vec<String> {
        let mut found: Vec<String> = self.kept.iter().chain(&self.remove).map(|c| format!("container {c}")).collect();
        found.extend(self.networks.iter().filter(|(_, exists)| *exists).map(|(n, _)| format!("network {}", n.name)));
        found.extend(self.volumes.iter().filter(|(_, exists)| *exists).map(|(v, _)| format!("volume {}", v.name)));
        found
    }

    /// Lines for the user: what will be created, loaded, started, in which order, and what exists already.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for name in &self.remove {
            lines.push(format!("stop and remove container {name} (--replace)"));
        }
        for name in &self.kept {
            lines.push(format!("keep container {name}, which exists (--replace re-creates it from the snapshot)"));
        }
        for (network, exists) in &self.networks {
            lines.push(match exists {
                true => format!("reuse network {}", network.name),
                false => format!("create network {} ({})", network.name, network.driver),
            });
        }
        for (volume, exists) in &self.volumes {
            let empty = self.empty_volumes.contains(&volume.name);
            lines.push(match (exists, empty) {
                (_, true) => format!("{} volume {} (the snapshot holds no data for it: a database's, loaded from its dump)", if *exists { "keep" } else { "create empty" }, volume.name),
                (true, false) => format!("restore volume {} (it exists: refused if not empty, unless --force or --replace)", volume.name),
                (false, false) => format!("create volume {} ({}) and restore its data", volume.name, volume.driver),
            });
        }
        for (old, new) in &self.bind_paths {
            lines.push(format!("restore bind mount {old} into {new}"));
        }
        for (image, source) in &self.images {
            lines.push(match source {
                ImageSource::Present => format!("use image {} ({}), present", image.reference, short(&image.id)),
                ImageSource::Snapshot => format!("load image {} ({}) from the snapshot", image.reference, short(&image.id)),
                ImageSource::Pull => format!("pull image {} (not in the snapshot: images: reference)", image.reference),
            });
        }
        for (i, container) in self.containers.iter().enumerate() {
            let waits = self.waits.get(&container.name).map(|w| {
                w.iter()
                    .map(|w| match w {
                        Wait::Healthy(c) => format!("{c} healthy"),
                        Wait::Started(c) => format!("{c} started"),
                        Wait::Completed(c) => format!("{c} completed"),
                    })
                    .collect::<Vec<_>>()
            });
            lines.push(match (container.running, waits) {
                (false, _) => format!("{}. create container {} (not started: it was stopped)", i + 1, container.name),
                (true, Some(w)) if !w.is_empty() => format!("{}. create and start container {} after {}", i + 1, container.name, w.join(", ")),
                (true, _) => format!("{}. create and start container {}", i + 1, container.name),
            });
        }
        lines.extend(self.notes.iter().map(|n| format!("note: {n}")));
        lines
    }
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// Renames `<old>-x` / `<old>_x` to `<new>-x` / `<new>_x`; anything else stays.
struct Rename<'a> {
    old: Option<&'a str>,
    new: Option<&'a str>,
}

impl Rename<'_> {
    fn name(&self, name: &str) -> String {
        match (self.old, self.new) {
            (Some(old), Some(new)) => match name.strip_prefix(old) {
                Some(rest) if rest.starts_with('-') || rest.starts_with('_') => format!("{new}{rest}"),
                Some("") => new.to_string(),
                _ => name.to_string(),
            },
            _ => name.to_string(),
        }
    }

    fn labels(&self, labels: &mut BTreeMap<String, String>) {
        if let (Some(new), Some(project)) = (self.new, labels.get_mut(PROJECT_LABEL)) {
            *project = new.to_string();
        }
    }
}

pub fn plan(definition: &StackDefinition, target: &TargetState, options: &PlanOptions) -> Plan {
    let rename = Rename { old: definition.project.as_deref(), new: options.project };
    let project = options.project.map(str::to_string).or(definition.project.clone());
    let mut notes = Vec::new();
    if options.project.is_some() && definition.project.is_none() {
        notes.push("the snapshot's containers belong to no single compose project: --project renames nothing, it only relabels".into());
    }

    let networks = definition
        .networks
        .iter()
        .map(|n| {
            let mut network = n.clone();
            network.name = rename.name(&n.name);
            rename.labels(&mut network.labels);
            let exists = target.networks.contains(&network.name);
            (network, exists)
        })
        .collect();

    let volume_names: BTreeMap<String, String> = definition.volumes.iter().map(|v| (v.name.clone(), rename.name(&v.name))).collect();
    let empty_volumes = volume_names.iter().filter(|(old, _)| !options.volumes_with_data.contains(*old)).map(|(_, new)| new.clone()).collect();
    let volumes = definition
        .volumes
        .iter()
        .map(|v| {
            let mut volume = v.clone();
            volume.name = volume_names[&v.name].clone();
            rename.labels(&mut volume.labels);
            let exists = target.volumes.contains(&volume.name);
            (volume, exists)
        })
        .collect();

    let images: Vec<(ImageDefinition, ImageSource)> = definition
        .images
        .iter()
        .map(|image| {
            let source = if target.images.contains(&image.id) {
                ImageSource::Present
            } else if options.images_in_snapshot.contains(&image.id) {
                ImageSource::Snapshot
            } else {
                ImageSource::Pull
            };
            (image.clone(), source)
        })
        .collect();

    let mut bind_paths = BTreeMap::new();
    let mut taken_ports: BTreeMap<String, String> = target.ports.clone();
    let mut remove = Vec::new();
    let mut kept = Vec::new();
    let mut containers = Vec::new();
    for original in &definition.containers {
        let mut c = original.clone();
        c.name = rename.name(&original.name);
        let mut labels: BTreeMap<String, String> = c.config.labels.take().unwrap_or_default().into_iter().collect();
        rename.labels(&mut labels);
        c.config.labels = Some(labels.into_iter().collect());
        if target.containers.contains_key(&c.name) {
            if !options.replace {
                kept.push(c.name.clone());
                continue;
            }
            remove.push(c.name.clone());
        }
        notes.extend(host_access(&c));
        let host = &mut c.host_config;
        // Volumes by their new names; bind mounts moved aside under another project.
        let mut moved = |path: &str| -> String {
            if options.project.is_none() || options.project == definition.project.as_deref() {
                return path.to_string();
            }
            let new = options.bind_root.join(path.trim_matches('/').replace('/', "_")).display().to_string();
            bind_paths.insert(path.to_string(), new.clone());
            new
        };
        for mount in host.mounts.iter_mut().flatten() {
            match mount.typ {
                Some(MountType::VOLUME) => mount.source = mount.source.as_ref().map(|s| volume_names.get(s).cloned().unwrap_or_else(|| rename.name(s))),
                Some(MountType::BIND) => mount.source = mount.source.as_deref().map(&mut moved),
                _ => {}
            }
        }
        for bind in host.binds.iter_mut().flatten() {
            let mut parts: Vec<String> = bind.splitn(3, ':').map(str::to_string).collect();
            parts[0] = match parts[0].starts_with('/') {
                true => moved(&parts[0]),
                false => volume_names.get(&parts[0]).cloned().unwrap_or_else(|| rename.name(&parts[0])),
            };
            *bind = parts.join(":");
        }
        if let Some(mode) = host.network_mode.as_mut() {
            if let Some(other) = mode.strip_prefix("container:") {
                *mode = format!("container:{}", rename.name(other));
            } else if !super::definition::ENGINE_NETWORKS.contains(&mode.as_str()) && mode != "default" {
                *mode = rename.name(mode);
            }
        }
        // Other containers by name (`NAME[:ro]`, `NAME:ALIAS`): the copies, not the originals.
        for reference in host.volumes_from.iter_mut().flatten().chain(host.links.iter_mut().flatten()) {
            let (name, rest) = reference.split_once(':').map_or((reference.as_str(), None), |(n, r)| (n, Some(r)));
            let renamed = rename.name(name.trim_start_matches('/'));
            *reference = match rest {
                Some(rest) => format!("{renamed}:{rest}"),
                None => renamed,
            };
        }
        // Host ports another container publishes here go to a port the engine picks.
        for (port, bindings) in host.port_bindings.iter_mut().flatten() {
            for binding in bindings.iter_mut().flatten() {
                let Some(host_port) = binding.host_port.clone().filter(|p| !p.is_empty()) else { continue };
                let key = format!("{host_port}/{}", port.rsplit('/').next().unwrap_or("tcp"));
                if let Some(holder) = taken_ports.get(&key).filter(|h| !remove.contains(h)) {
                    notes.push(format!("container {}: host port {key} is taken by {holder}: published on a port the engine picks instead", c.name));
                    *binding = PortBinding { host_ip: binding.host_ip.clone(), host_port: Some(String::new()) };
                } else {
                    taken_ports.insert(key, c.name.clone());
                }
            }
        }
        c.networks = original.networks.iter().map(|(name, endpoint)| {
            let mut endpoint = endpoint.clone();
            endpoint.aliases = endpoint.aliases.iter().map(|a| rename.name(a)).collect();
            (rename.name(name), endpoint)
        }).collect();
        containers.push(c);
    }
    for (old, new) in &bind_paths {
        notes.push(format!("bind mount {old} is restored into {new} (--project keeps the original's files apart)"));
    }

    let (containers, waits) = start_order(containers, &mut notes);
    let original_project = definition.project.clone();
    // Images only the kept containers run are not needed.
    let needed: BTreeSet<&String> = containers.iter().map(|c| &c.image_id).collect();
    let images = images.into_iter().filter(|(image, _): &(ImageDefinition, ImageSource)| needed.contains(&image.id)).collect();
    Plan { project, original_project, remove, kept, networks, volumes, empty_volumes, images, containers, waits, volume_names, bind_paths, notes }
}

/// What a container may do to the host beyond its own files, said in the plan: a repository is
/// hostile input (whoever can write to the storage can write a definition), so such a container is
/// never created unannounced; `--dry-run` shows it before anything runs.
fn host_access(c: &ContainerDefinition) -> Vec<String> {
    let host = &c.host_config;
    let mut powers = Vec::new();
    if host.privileged == Some(true) {
        powers.push("runs privileged".to_string());
    }
    for (what, mode) in [("network", &host.network_mode), ("PID namespace", &host.pid_mode), ("IPC namespace", &host.ipc_mode)] {
        if mode.as_deref() == Some("host") {
            powers.push(format!("shares the host's {what}"));
        }
    }
    if let Some(caps) = host.cap_add.as_ref().filter(|c| !c.is_empty()) {
        powers.push(format!("adds capabilities {}", caps.join(", ")));
    }
    if let Some(devices) = host.devices.as_ref().filter(|d| !d.is_empty()) {
        powers.push(format!("gets devices {}", devices.iter().filter_map(|d| d.path_on_host.clone()).collect::<Vec<_>>().join(", ")));
    }
    let system = ["/", "/etc", "/root", "/var/run/docker.sock", "/run/docker.sock", "/proc", "/sys", "/boot", "/dev"];
    for bind in host.binds.iter().flatten().filter_map(|b| b.split(':').next()).chain(host.mounts.iter().flatten().filter(|m| m.typ == Some(MountType::BIND)).filter_map(|m| m.source.as_deref())) {
        if system.contains(&bind.trim_end_matches('/')) || bind == "/" {
            powers.push(format!("bind-mounts the host's {bind}"));
        }
    }
    powers.into_iter().map(|p| format!("container {} {p}, as in the snapshot", c.name)).collect()
}

/// Orders containers so that each starts after what its compose `depends_on` label names
/// (`service:condition[:required],…`), and says what it waits for; a cycle is broken and reported.
fn start_order(containers: Vec<ContainerDefinition>, notes: &mut Vec<String>) -> (Vec<ContainerDefinition>, BTreeMap<String, Vec<Wait>>) {
    let service_of = |c: &ContainerDefinition| c.config.labels.as_ref().and_then(|l| l.get(SERVICE_LABEL).cloned());
    let mut by_service: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &containers {
        if let Some(service) = service_of(c) {
            by_service.entry(service).or_default().push(c.name.clone());
        }
    }
    let mut waits: BTreeMap<String, Vec<Wait>> = BTreeMap::new();
    for c in &containers {
        let label = c.config.labels.as_ref().and_then(|l| l.get(DEPENDS_LABEL)).cloned().unwrap_or_default();
        for dependency in label.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let mut parts = dependency.split(':');
            let service = parts.next().unwrap_or_default();
            let condition = parts.next().unwrap_or("service_started");
            for name in by_service.get(service).into_iter().flatten() {
                waits.entry(c.name.clone()).or_default().push(match condition {
                    "service_healthy" => Wait::Healthy(name.clone()),
                    "service_completed_successfully" => Wait::Completed(name.clone()),
                    _ => Wait::Started(name.clone()),
                });
            }
        }
    }
    let mut remaining: Vec<ContainerDefinition> = containers;
    remaining.sort_by(|a, b| a.name.cmp(&b.name));
    let mut ordered: Vec<ContainerDefinition> = Vec::new();
    // What is not created here (kept containers) is there already.
    let created: BTreeSet<String> = remaining.iter().map(|c| c.name.clone()).collect();
    while !remaining.is_empty() {
        let placed: BTreeSet<String> = ordered.iter().map(|c| c.name.clone()).collect();
        let placed = |n: &String| placed.contains(n) || !created.contains(n);
        let ready = remaining.iter().position(|c| {
            waits.get(&c.name).into_iter().flatten().all(|w| match w {
                Wait::Healthy(n) | Wait::Started(n) | Wait::Completed(n) => placed(n),
            })
        });
        let next = match ready {
            Some(i) => i,
            None => {
                notes.push(format!("the depends_on labels form a cycle through {}: started in name order from there", remaining[0].name));
                0
            }
        };
        ordered.push(remaining.remove(next));
    }
    (ordered, waits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, HostConfig, Mount};

    fn container(name: &str, service: &str, depends: &str) -> ContainerDefinition {
        let mut labels = std::collections::HashMap::from([(PROJECT_LABEL.to_string(), "cc".to_string()), (SERVICE_LABEL.to_string(), service.to_string())]);
        if !depends.is_empty() {
            labels.insert(DEPENDS_LABEL.into(), depends.into());
        }
        ContainerDefinition {
            name: name.into(),
            image: "app:1".into(),
            image_id: "sha256:aa".into(),
            config: ContainerConfig { labels: Some(labels), ..Default::default() },
            host_config: HostConfig {
                mounts: Some(vec![Mount { typ: Some(MountType::VOLUME), source: Some("cc_files".into()), target: Some("/srv".into()), ..Default::default() }]),
                binds: Some(vec!["/etc/cc/app.conf:/app.conf:ro".into()]),
                network_mode: Some("cc_default".into()),
                port_bindings: Some(std::collections::HashMap::from([("80/tcp".to_string(), Some(vec![PortBinding { host_ip: None, host_port: Some("8080".into()) }]))])),
                ..Default::default()
            },
            networks: BTreeMap::from([("cc_default".to_string(), Default::default())]),
            running: true,
        }
    }

    fn definition() -> StackDefinition {
        StackDefinition {
            project: Some("cc".into()),
            containers: vec![container("cc-app-1", "app", "db:service_healthy:false"), container("cc-db-1", "db", "")],
            networks: vec![NetworkDefinition { name: "cc_default".into(), driver: "bridge".into(), options: Default::default(), labels: BTreeMap::from([(PROJECT_LABEL.into(), "cc".into())]), internal: false, attachable: false, enable_ipv6: false, subnets: vec![] }],
            volumes: vec![VolumeDefinition { name: "cc_files".into(), driver: "local".into(), options: Default::default(), labels: Default::default() }],
            images: vec![ImageDefinition { reference: "app:1".into(), id: "sha256:aa".into(), repo_digests: vec![] }],
        }
    }

    #[test]
    fn dependencies_start_first_and_their_conditions_are_waited_for() {
        let options = PlanOptions { project: None, replace: false, bind_root: Path::new("/b"), images_in_snapshot: BTreeSet::from(["sha256:aa".to_string()]), volumes_with_data: BTreeSet::new() };
        let plan = plan(&definition(), &TargetState::default(), &options);
        let order: Vec<&str> = plan.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(order, ["cc-db-1", "cc-app-1"]);
        assert_eq!(plan.waits["cc-app-1"], vec![Wait::Healthy("cc-db-1".into())]);
        assert_eq!(plan.images[0].1, ImageSource::Snapshot);
        // Both publish 8080: the second in the snapshot gets a port the engine picks, and that is said.
        assert!(plan.notes.iter().any(|n| n.contains("cc-db-1: host port 8080/tcp is taken by cc-app-1")), "{:?}", plan.notes);
    }

    #[test]
    fn another_project_renames_everything_and_moves_binds_aside_and_existing_containers_are_kept_or_replaced() {
        let target = TargetState { containers: BTreeMap::from([("cc-app-1".to_string(), true)]), volumes: BTreeSet::from(["cc_files".to_string()]), ..Default::default() };
        let options = PlanOptions { project: Some("dr"), replace: false, bind_root: Path::new("/var/lib/stackvault/restored/dr"), images_in_snapshot: BTreeSet::new(), volumes_with_data: BTreeSet::new() };
        let plan = plan(&definition(), &target, &options);
        let app = plan.containers.iter().find(|c| c.name == "dr-app-1").expect("renamed");
        assert_eq!(app.config.labels.as_ref().unwrap()[PROJECT_LABEL], "dr");
        assert_eq!(app.host_config.mounts.as_ref().unwrap()[0].source.as_deref(), Some("dr_files"));
        assert_eq!(app.host_config.binds.as_ref().unwrap()[0], "/var/lib/stackvault/restored/dr/etc_cc_app.conf:/app.conf:ro");
        assert_eq!(app.host_config.network_mode.as_deref(), Some("dr_default"));
        assert!(app.networks.contains_key("dr_default"));
        assert_eq!(plan.networks[0].0.name, "dr_default");
        assert_eq!(plan.images[0].1, ImageSource::Pull);

        // Containers named by others: the copies under the new project, never the originals.
        let mut sharing = definition();
        let host = &mut sharing.containers[0].host_config;
        host.volumes_from = Some(vec!["cc-db-1:ro".into(), "cc-db-1".into()]);
        host.links = Some(vec!["/cc-db-1:database".into()]);
        sharing.containers[1].host_config.network_mode = Some("container:cc-app-1".into());
        let plan = super::plan(&sharing, &TargetState::default(), &options);
        let app = plan.containers.iter().find(|c| c.name == "dr-app-1").unwrap();
        assert_eq!(app.host_config.volumes_from.as_deref(), Some(&["dr-db-1:ro".to_string(), "dr-db-1".to_string()][..]));
        assert_eq!(app.host_config.links.as_deref(), Some(&["dr-db-1:database".to_string()][..]));
        let db = plan.containers.iter().find(|c| c.name == "dr-db-1").unwrap();
        assert_eq!(db.host_config.network_mode.as_deref(), Some("container:dr-app-1"));

        let mut powerful = definition();
        powerful.containers[0].host_config.privileged = Some(true);
        powerful.containers[0].host_config.binds = Some(vec!["/var/run/docker.sock:/var/run/docker.sock".into()]);
        let plan = super::plan(&powerful, &target, &options);
        let said = plan.describe().join("\n");
        assert!(said.contains("note: container dr-app-1 runs privileged") && said.contains("bind-mounts the host's /var/run/docker.sock"), "{said}");

        // The same project: the existing container is kept (and what depends on nothing else starts).
        let same = PlanOptions { project: None, ..options };
        let plan = super::plan(&definition(), &target, &same);
        assert_eq!(plan.kept, ["cc-app-1"]);
        assert_eq!(plan.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["cc-db-1"]);
        let replace = PlanOptions { replace: true, ..same };
        let plan = super::plan(&definition(), &target, &replace);
        assert!(plan.kept.is_empty() && plan.remove == ["cc-app-1"] && plan.containers.len() == 2, "{:?} {:?}", plan.kept, plan.remove);
    }

    #[test]
    fn a_drill_copy_is_cut_off_and_touches_nothing_that_exists_or_refuses() {
        let mut original = definition();
        let app = &mut original.containers[0].host_config;
        app.privileged = Some(true);
        app.volumes_from = Some(vec!["cc-db-1".into()]);
        app.pid_mode = Some("host".into());
        app.restart_policy = Some(bollard::models::RestartPolicy { name: Some(bollard::models::RestartPolicyNameEnum::ALWAYS), maximum_retry_count: None });
        original.containers[1].host_config.network_mode = Some("host".into());
        original.containers[1].networks.clear();
        original.networks[0].subnets = vec![super::super::definition::Subnet { subnet: "10.9.0.0/24".into(), gateway: None }];
        original.volumes[0].driver = "local".into();
        original.volumes[0].options = BTreeMap::from([("type".to_string(), "nfs".to_string()), ("device".to_string(), ":/exports/cc".to_string())]);
        let labels = BTreeMap::from([("stackvault.drill".to_string(), "svdrill-x".to_string())]);
        let mut drill = original.clone();
        drill.isolate(&labels, "stackvault.drill.original");

        // The original runs here: the copy, under its own project, reuses none of it.
        let target = TargetState { containers: BTreeMap::from([("cc-app-1".to_string(), true), ("cc-db-1".to_string(), true)]), networks: BTreeSet::from(["cc_default".to_string()]), volumes: BTreeSet::from(["cc_files".to_string()]), ..Default::default() };
        let options = PlanOptions { project: Some("svdrill-x"), replace: false, bind_root: Path::new("/state/restored/svdrill-x"), images_in_snapshot: BTreeSet::new(), volumes_with_data: BTreeSet::new() };
        let plan = plan(&drill, &target, &options);
        assert!(plan.existing().is_empty(), "{:?}", plan.existing());
        let (network, _) = &plan.networks[0];
        assert!(network.internal && network.subnets.is_empty() && network.labels["stackvault.drill"] == "svdrill-x");
        let (volume, _) = &plan.volumes[0];
        assert!(volume.options.is_empty() && volume.labels.contains_key("stackvault.drill"));
        let app = plan.containers.iter().find(|c| c.name == "svdrill-x-app-1").unwrap();
        let host = &app.host_config;
        assert_eq!((host.privileged, host.volumes_from.as_ref(), host.pid_mode.as_ref(), host.restart_policy.as_ref(), host.port_bindings.as_ref()), (Some(false), None, None, None, None));
        assert_eq!(host.binds.as_ref().unwrap()[0], "/state/restored/svdrill-x/etc_cc_app.conf:/app.conf:ro");
        assert_eq!(app.config.labels.as_ref().unwrap()["stackvault.drill.original"], "cc-app-1");
        let db = plan.containers.iter().find(|c| c.name == "svdrill-x-db-1").unwrap();
        assert_eq!(db.host_config.network_mode.as_deref(), Some("none"));

        // A container the project does not name keeps its name: the plan would keep the original.
        let mut foreign = original;
        foreign.containers[0].name = "legacy-app".into();
        foreign.isolate(&labels, "stackvault.drill.original");
        let target = TargetState { containers: BTreeMap::from([("legacy-app".to_string(), true)]), ..Default::default() };
        assert_eq!(super::plan(&foreign, &target, &options).existing(), ["container legacy-app"]);
    }
}
