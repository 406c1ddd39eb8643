//! Finds what to back up: the selected containers (by compose project and/or label) and the volumes and
//! bind mounts they use, minus what their `stackvault.*` labels opt out; the databases they ask to have
//! dumped, the containers to stop while their mounts are read, and their hooks.

use std::collections::{BTreeMap, HashMap};

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;

use super::helper::HELPER_LABEL;
use super::quiesce::{Hook, LABEL_STOP};
use super::DockerError;
use crate::source::dump::{ContainerEnv, DumpEngine, DumpSpec, DumpTarget, RelayMount, LABEL_VOLUMES};
use crate::config::SelectConfig;
use crate::repo::format::SourceKind;
use crate::source::exclude::{check_pattern, RuleSet};

/// A container carrying `stackvault.skip=true` contributes no mounts (the sidecar itself, say).
pub const LABEL_SKIP: &str = "stackvault.skip";
/// Comma-separated volume names, host paths or mount destinations of this container to leave out.
pub const LABEL_EXCLUDE: &str = "stackvault.exclude";
/// Comma-separated gitignore-style patterns, matched against paths as this container sees them.
pub const LABEL_EXCLUDE_PATTERNS: &str = "stackvault.exclude-patterns";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSource {
    pub kind: SourceKind,
    /// Volume name, or host path of a bind mount.
    pub name: String,
    /// `container:/destination` for every container that mounts it.
    pub mounted_by: Vec<String>,
    pub volume_driver: Option<String>,
    pub volume_labels: BTreeMap<String, String>,
    /// The `stackvault.exclude-patterns` of each container mounting it, anchored at its destination.
    pub rules: Vec<RuleSet>,
}

#[derive(Debug, Default)]
pub struct Discovery {
    pub containers: Vec<String>,
    pub sources: Vec<MountSource>,
    /// Mounts left out, with why, for the run's report.
    pub skipped: Vec<String>,
    /// Containers whose databases are dumped.
    pub dumps: Vec<DumpTarget>,
    /// Running containers to stop while the mounts are read (`stackvault.stop-during-backup=true`).
    pub stop: Vec<String>,
    /// Containers with `stackvault.pre` / `stackvault.post` commands, by name.
    pub hooks: Vec<Hook>,
}

/// A writable volume or bind mount of a database container, where a dump's FIFO can meet a helper:
/// one beside the data directory where there is one, else the data directory's.
fn relay_mount(mounts: &[bollard::models::MountPoint], data_dirs: &[String]) -> Option<RelayMount> {
    let usable = mounts.iter().filter(|m| m.rw == Some(true) && matches!(m.typ.as_deref(), Some("volume" | "bind")));
    let in_data = |m: &&bollard::models::MountPoint| data_dirs.iter().any(|d| m.destination.as_deref().is_some_and(|dest| dest.starts_with(d.as_str())));
    let mut candidates: Vec<&bollard::models::MountPoint> = usable.collect();
    candidates.sort_by_key(|m| in_data(m));
    candidates.first().and_then(|m| {
        let volume = m.typ.as_deref() == Some("volume");
        let source = if volume { m.name.clone()? } else { m.source.clone()? };
        Some(RelayMount { volume, source, destination: m.destination.clone()? })
    })
}

pub async fn discover(docker: &Docker, select: &SelectConfig) -> Result<Discovery, DockerError> {
    let mut labels = Vec::new();
    if let Some(project) = &select.project {
        labels.push(format!("com.docker.compose.project={project}"));
    }
    if let Some(label) = &select.label {
        labels.push(label.clone());
    }
    let filters = HashMap::from([("label".to_string(), labels)]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let mut containers = docker.list_containers(Some(options)).await.map_err(DockerError::api("listing containers"))?;
    containers.sort_by(|a, b| a.names.cmp(&b.names));

    let mut found = Discovery::default();
    let mut by_key: BTreeMap<(String, String), MountSource> = BTreeMap::new();
    for container in containers {
        let labels = container.labels.unwrap_or_default();
        let name = container
            .names
            .and_then(|n| n.first().cloned())
            .map(|n| n.trim_start_matches('/').to_string())
            .or(container.id)
            .unwrap_or_default();
        if labels.contains_key(HELPER_LABEL) {
            continue;
        }
        found.containers.push(name.clone());
        let label_error = |label: &'static str, message: String| DockerError::Label { container: name.clone(), label, message };
        let running = container.state.as_ref().is_some_and(|s| *s == bollard::models::ContainerSummaryStateEnum::RUNNING);
        if let Some(hook) = Hook::from_labels(&name, &labels).map_err(|(label, message)| label_error(label, message))? {
            found.hooks.push(hook);
        }
        match labels.get(LABEL_STOP).map(|v| v.trim()) {
            None | Some("false") => {}
            Some("true") => {
                if running {
                    found.stop.push(name.clone());
                }
            }
            Some(other) => return Err(label_error(LABEL_STOP, format!("{other:?} is not true or false"))),
        }
        // The server's live files are left to its dump, which is consistent where they are not.
        let mut data_dirs = Vec::new();
        if labels.keys().any(|k| k.starts_with("stackvault.dump")) {
            let inspected = docker.inspect_container(&name, None).await.map_err(DockerError::api(format!("inspecting container {name}")))?;
            let env = inspected.config.as_ref().and_then(|c| c.env.clone()).unwrap_or_default();
            let image = inspected.config.as_ref().and_then(|c| c.image.clone()).or(container.image.clone()).unwrap_or_default();
            if let Some(spec) = DumpSpec::from_labels(&labels, &image, &env).map_err(|(label, message)| label_error(label, message))? {
                if spec.engine == DumpEngine::Command && spec.include_volumes {
                    return Err(label_error(LABEL_VOLUMES, "a command dump has no data directory to leave out; leave mounts out with stackvault.exclude".into()));
                }
                let server_dirs = spec.engine.data_dirs(ContainerEnv(&env).value("PGDATA"));
                let relay = relay_mount(inspected.mounts.as_deref().unwrap_or_default(), &server_dirs);
                if !spec.include_volumes {
                    data_dirs = server_dirs;
                }
                found.dumps.push(DumpTarget {
                    container: name.clone(),
                    service: labels.get("com.docker.compose.service").cloned(),
                    project: labels.get("com.docker.compose.project").cloned(),
                    spec,
                    relay,
                });
            }
        }
        if labels.get(LABEL_SKIP).map(String::as_str) == Some("true") {
            found.skipped.push(format!("{name}: all mounts ({LABEL_SKIP}=true)"));
            continue;
        }
        let excluded: Vec<&str> = labels.get(LABEL_EXCLUDE).map(|l| l.split(',').map(str::trim).collect()).unwrap_or_default();
        let patterns: Vec<String> =
            labels.get(LABEL_EXCLUDE_PATTERNS).map(|l| l.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()).unwrap_or_default();
        for pattern in &patterns {
            check_pattern(pattern).map_err(|e| label_error(LABEL_EXCLUDE_PATTERNS, e))?;
        }
        for mount in container.mounts.unwrap_or_default() {
            let destination = mount.destination.clone().unwrap_or_default();
            let (kind, source_name) = match mount.typ.as_deref() {
                Some("volume") => (SourceKind::Volume, mount.name.clone().unwrap_or_default()),
                Some("bind") => (SourceKind::Bind, mount.source.clone().unwrap_or_default()),
                other => {
                    found.skipped.push(format!("{name}:{destination}: {} mount, nothing persistent", other.unwrap_or("unknown")));
                    continue;
                }
            };
            let below = |outer: &str, inner: &str| inner == outer || inner.starts_with(&format!("{}/", outer.trim_end_matches('/')));
            if data_dirs.iter().any(|dir| below(dir, &destination) || below(&destination, dir)) {
                found.skipped.push(format!("{name}:{destination}: the database's live files (dumped instead; {LABEL_VOLUMES}=include keeps them)"));
                continue;
            }
            if excluded.iter().any(|e| *e == source_name || *e == destination) {
                found.skipped.push(format!("{name}:{destination}: {LABEL_EXCLUDE}"));
                continue;
            }
            if kind == SourceKind::Bind && source_name.ends_with(".sock") {
                found.skipped.push(format!("{name}:{destination}: a socket, not data"));
                continue;
            }
            let entry = by_key.entry((format!("{kind:?}"), source_name.clone())).or_insert_with(|| MountSource {
                kind,
                name: source_name.clone(),
                mounted_by: Vec::new(),
                volume_driver: mount.driver.clone().filter(|d| !d.is_empty()),
                volume_labels: BTreeMap::new(),
                rules: Vec::new(),
            });
            entry.mounted_by.push(format!("{name}:{destination}"));
            if !patterns.is_empty() {
                entry.rules.push(RuleSet { prefix: destination.clone(), patterns: patterns.clone(), origin: format!("container {name}") });
            }
        }
    }
    for mut source in by_key.into_values() {
        if source.kind == SourceKind::Volume {
            let volume = docker.inspect_volume(&source.name).await.map_err(DockerError::api(format!("inspecting volume {}", source.name)))?;
            source.volume_driver = Some(volume.driver);
            source.volume_labels = volume.labels.into_iter().collect();
        }
        found.sources.push(source);
    }
    Ok(found)
}
