//! Finds what to back up: the selected containers (by compose project and/or label) and the volumes and
//! bind mounts they use, minus what their `stackvault.*` labels opt out.

use std::collections::{BTreeMap, HashMap};

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;

use super::helper::HELPER_LABEL;
use super::DockerError;
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
        if labels.get(LABEL_SKIP).map(String::as_str) == Some("true") {
            found.skipped.push(format!("{name}: all mounts ({LABEL_SKIP}=true)"));
            continue;
        }
        let excluded: Vec<&str> = labels.get(LABEL_EXCLUDE).map(|l| l.split(',').map(str::trim).collect()).unwrap_or_default();
        let patterns: Vec<String> =
            labels.get(LABEL_EXCLUDE_PATTERNS).map(|l| l.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()).unwrap_or_default();
        for pattern in &patterns {
            check_pattern(pattern).map_err(|e| DockerError::Label { container: name.clone(), label: LABEL_EXCLUDE_PATTERNS, message: e })?;
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
