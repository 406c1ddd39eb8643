//! A whole-stack restore: reads the snapshot's stack definition, asks the target engine what it
//! holds, plans (`--dry-run` stops there, having changed nothing), and carries the plan out with the
//! snapshot's data: volumes and bind mounts before the containers that mount them, images before the
//! containers that run them, each database's dumps once its server runs and before what depends on it
//! starts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptions, ListVolumesOptions};
use bollard::Docker;
use tokio::runtime::Handle;

use super::definition::{StackDefinition, MAX_DEFINITION};
use super::plan::{self, ImageSource, Plan, PlanOptions, TargetState};
use super::apply;
use crate::config::Config;
use crate::docker::engine::Engine;
use crate::docker::DockerError;
use crate::repo::crypt::Identities;
use crate::repo::format::{SourceKind, SourceRecord};
use crate::repo::pack::BlobReader;
use crate::repo::tree::check_snapshot;
use crate::repo::{Id, RepoError, Repository, Snapshot};
use crate::restore::{restore_dump, restore_local, restore_mount, Only, RestoreOptions, RestoreOutcome, RestoredSource, TreeReplay};
use crate::Error;

pub async fn restore(
    config: &Config,
    repo: Repository,
    snapshot_id: Id,
    snapshot: Snapshot,
    identities: Option<Identities>,
    options: RestoreOptions,
) -> Result<RestoreOutcome, Error> {
    let clock = Instant::now();
    let mut config = config.clone();
    if let Some(host) = &options.docker_host {
        config.docker.host = Some(host.clone());
    }
    // Read-only until the plan holds: a dry run must change nothing, not even import the agent.
    let docker = crate::docker::connect(config.docker.host.as_deref()).await?;
    let target = target_state(&docker).await?;
    let handle = Handle::current();
    let (repo, index, definition) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let index = repo.load_index()?;
        check_snapshot(&snapshot, &index, &repo.config).map_err(|e| RepoError::invalid(&snapshot_id, e))?;
        let mut reader = BlobReader::new(&repo, &index, identities.as_ref())?;
        let source = snapshot.sources.iter().find(|s| s.kind == SourceKind::Stack).expect("a stack source");
        let definition = read_definition(&mut reader, snapshot_id, source)?;
        drop(reader);
        Ok(((repo, snapshot, identities), index, definition))
    })
    .await
    .expect("restore thread panicked")?;
    let (repo, snapshot, identities) = repo;

    let wanted: Vec<String> = options.only.iter().filter_map(|o| if let Only::Container(c) = o { Some(c.clone()) } else { None }).collect();
    let mut definition = narrow(definition, &wanted)?;
    if let Some(labels) = &options.isolate {
        definition.isolate(labels, crate::drill::ORIGINAL_LABEL);
    }
    let images_in_snapshot = snapshot.sources.iter().filter_map(|s| s.image.as_ref().map(|i| i.id.clone())).collect();
    let project = options.project.clone().or(definition.project.clone()).unwrap_or_else(|| snapshot.stack.clone());
    let bind_root = config.state_dir().join("restored").join(&project);
    let volumes_with_data = snapshot.sources.iter().filter(|s| s.kind == SourceKind::Volume).map(|s| s.name.clone()).collect();
    let plan_options = PlanOptions { project: options.project.as_deref(), replace: options.replace, bind_root: &bind_root, images_in_snapshot, volumes_with_data };
    let plan = plan::plan(&definition, &target, &plan_options);
    let described = plan.describe();
    let existing = plan.existing();
    if options.isolate.is_some() && !existing.is_empty() {
        return Err(Error::Usage(format!(
            "a drill creates the whole stack anew under project {project}, and snapshot {snapshot_id}'s would reuse what exists here: {} (its containers are not named after one compose project, or it mounts anonymous volumes); restore it onto another engine with --docker-host instead",
            existing.join(", ")
        )));
    }
    if options.dry_run {
        return Ok(RestoreOutcome { snapshot: snapshot_id, restored: Vec::new(), plan: described, containers: BTreeMap::new(), recovery: None });
    }

    let engine = Engine::start(&config).await?;
    let replace = options.replace;
    let outcome = tokio::task::spawn_blocking(move || -> Result<RestoreOutcome, Error> {
        let reporter = options.report.clone();
        let note = |what: String| crate::restore::step(&reporter, what, None);
        let docker = &engine.docker;
        apply::prepare(&handle, docker, &plan, &note)?;
        let mut reader = BlobReader::new(&repo, &index, identities.as_ref())?;
        let mut restored = Vec::new();
        let force = options.force || replace;
        let narrowed = !wanted.is_empty();
        // Each volume's and bind mount's data, restored just before the first container that mounts it
        // starts, or while a database server starts up (its dumps wait for it anyway).
        let mut pending: Vec<(SourceRecord, String, &SourceRecord)> = Vec::new();
        for source in &snapshot.sources {
            let (record, destination) = match source.kind {
                SourceKind::Volume if plan.volume_names.contains_key(&source.name) => {
                    let mut record = source.clone();
                    record.name = plan.volume_names[&source.name].clone();
                    if let Some(project) = record.volume_labels.get_mut(plan::PROJECT_LABEL) {
                        *project = plan.project.clone().unwrap_or_default();
                    }
                    let shown = format!("volume {}", record.name);
                    (record, shown)
                }
                SourceKind::Bind if !narrowed || plan.containers.iter().any(|c| mounts_bind(c, plan.bind_paths.get(&source.name).unwrap_or(&source.name))) => {
                    let mut record = source.clone();
                    record.name = plan.bind_paths.get(&source.name).cloned().unwrap_or_else(|| source.name.clone());
                    let shown = format!("bind mount {}", record.name);
                    (record, shown)
                }
                // Host paths the sidecar read itself belong to no container: restored in place, as before.
                SourceKind::Path if !narrowed && options.project.is_none() => {
                    let warnings = restore_local(&mut reader, snapshot_id, source, std::path::Path::new(&source.name), force)?;
                    restored.push(RestoredSource { source: source.label(), destination: source.name.clone(), warnings });
                    continue;
                }
                _ => continue,
            };
            pending.push((record, destination, source));
        }
        let started: BTreeSet<&str> = plan.containers.iter().filter(|c| c.running).map(|c| c.name.as_str()).collect();
        let users = |source: &SourceRecord| -> BTreeSet<String> { source.mounted_by.iter().filter_map(|m| m.split(':').next()).map(|c| plan.rename(c)).collect() };
        let mut restore_data = |reader: &mut BlobReader, restored: &mut Vec<RestoredSource>, now: &dyn Fn(&SourceRecord) -> bool| -> Result<(), Error> {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut pending).into_iter().partition(|(_, _, source)| now(source));
            pending = later;
            for (record, destination, source) in due {
                crate::restore::step(&reporter, format!("restoring {} into {destination}", source.label()), Some(source.bytes));
                let warnings = restore_mount(&handle, &engine, reader, snapshot_id, &record, force)?;
                restored.push(RestoredSource { source: source.label(), destination, warnings });
            }
            Ok(())
        };
        // What no container started here mounts goes first.
        restore_data(&mut reader, &mut restored, &|source| users(source).iter().all(|u| !started.contains(u.as_str())))?;
        load_images(&handle, docker, &mut reader, snapshot_id, &snapshot, &plan, &reporter)?;
        apply::pull(&handle, docker, &plan, &note)?;
        let by_reference = references_that_hold(&handle, docker, &plan);
        let load_dumps = |server: &str, reader: &mut BlobReader, restored: &mut Vec<RestoredSource>| -> Result<(), Error> {
            for dump in snapshot.sources.iter().filter(|s| s.dump.as_ref().is_some_and(|d| plan.rename(&d.container) == server)) {
                crate::restore::step(&reporter, format!("loading {} into container {server}", dump.label()), Some(dump.bytes));
                let (destination, warnings) = restore_dump(&handle, Some(&engine), &[], reader, snapshot_id, dump, force, Some(server))?;
                restored.push(RestoredSource { source: dump.label(), destination, warnings });
            }
            Ok(())
        };
        // Servers that were kept run already; those created here, once started.
        for server in &plan.kept {
            load_dumps(server, &mut reader, &mut restored)?;
        }
        // Each container is created once its volumes hold their data: the engine copies an image's
        // files into a volume that is empty when a container first mounts it.
        for container in plan.containers.iter().filter(|c| c.running) {
            restore_data(&mut reader, &mut restored, &|source| users(source).contains(&container.name))?;
            apply::create(&handle, docker, container, &by_reference, &note)?;
            for wait in plan.waits.get(&container.name).into_iter().flatten() {
                apply::wait_for(&handle, docker, wait)?;
            }
            note(format!("starting container {}", container.name));
            apply::start(&handle, docker, &container.name)?;
            if snapshot.sources.iter().any(|s| s.dump.as_ref().is_some_and(|d| plan.rename(&d.container) == container.name)) {
                restore_data(&mut reader, &mut restored, &|_| true)?;
            }
            load_dumps(&container.name, &mut reader, &mut restored)?;
        }
        restore_data(&mut reader, &mut restored, &|_| true)?;
        for container in plan.containers.iter().filter(|c| !c.running) {
            apply::create(&handle, docker, container, &by_reference, &note)?;
        }
        let containers = apply::settle(&handle, docker, &plan)?;
        Ok(RestoreOutcome { snapshot: snapshot_id, restored, plan: described, containers, recovery: Some(clock.elapsed()) })
    })
    .await
    .expect("restore thread panicked")?;
    Ok(outcome)
}

/// Whether a container of the plan bind-mounts `path` (as renamed).
fn mounts_bind(container: &super::definition::ContainerDefinition, path: &str) -> bool {
    let host = &container.host_config;
    let in_binds = host.binds.iter().flatten().any(|b| b.split(':').next() == Some(path) || b.starts_with(&format!("{path}:")));
    let in_mounts = host.mounts.iter().flatten().any(|m| m.source.as_deref() == Some(path));
    in_binds || in_mounts
}

/// Only the named containers (by their name in the snapshot), with what they use.
fn narrow(mut definition: StackDefinition, wanted: &[String]) -> Result<StackDefinition, Error> {
    if wanted.is_empty() {
        return Ok(definition);
    }
    let names: Vec<String> = definition.containers.iter().map(|c| c.name.clone()).collect();
    if let Some(missing) = wanted.iter().find(|w| !names.contains(w)) {
        return Err(Error::Usage(format!("--only container:{missing} matches no container of the snapshot; it holds: {}", names.join(", "))));
    }
    definition.containers.retain(|c| wanted.contains(&c.name));
    let networks: BTreeSet<String> = definition.containers.iter().flat_map(|c| c.networks.keys().cloned()).collect();
    definition.networks.retain(|n| networks.contains(&n.name));
    let images: BTreeSet<String> = definition.containers.iter().map(|c| c.image_id.clone()).collect();
    definition.images.retain(|i| images.contains(&i.id));
    let volumes: BTreeSet<String> = definition
        .containers
        .iter()
        .flat_map(|c| c.host_config.mounts.iter().flatten().filter_map(|m| m.source.clone()).chain(c.host_config.binds.iter().flatten().filter_map(|b| b.split(':').next().map(str::to_string))))
        .collect();
    definition.volumes.retain(|v| volumes.contains(&v.name));
    Ok(definition)
}

fn read_definition(reader: &mut BlobReader, snapshot: Id, source: &SourceRecord) -> Result<StackDefinition, Error> {
    let mut replay = TreeReplay::new(reader, snapshot, source);
    let mut bytes = Vec::new();
    while let Some(piece) = replay.next_piece("stack definition")? {
        bytes.extend_from_slice(&piece);
        if bytes.len() as u64 > MAX_DEFINITION {
            return Err(RepoError::invalid(&snapshot, format!("its stack definition is larger than {MAX_DEFINITION} bytes")).into());
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| RepoError::invalid(&snapshot, format!("its stack definition does not parse: {e}")).into())
}

async fn target_state(docker: &Docker) -> Result<TargetState, DockerError> {
    let mut target = TargetState::default();
    let options = ListContainersOptionsBuilder::default().all(true).build();
    for c in docker.list_containers(Some(options)).await.map_err(DockerError::api("listing containers"))? {
        let Some(name) = c.names.as_ref().and_then(|n| n.first()).map(|n| n.trim_start_matches('/').to_string()) else { continue };
        let running = c.state.as_ref().is_some_and(|s| *s == bollard::models::ContainerSummaryStateEnum::RUNNING);
        if running {
            for port in c.ports.iter().flatten() {
                if let Some(public) = port.public_port {
                    let proto = port.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into());
                    target.ports.insert(format!("{public}/{proto}"), name.clone());
                }
            }
        }
        target.containers.insert(name, running);
    }
    for n in docker.list_networks(None::<ListNetworksOptions>).await.map_err(DockerError::api("listing networks"))? {
        target.networks.extend(n.name);
    }
    let volumes = docker.list_volumes(None::<ListVolumesOptions>).await.map_err(DockerError::api("listing volumes"))?;
    target.volumes.extend(volumes.volumes.unwrap_or_default().into_iter().map(|v| v.name));
    let images = docker.list_images(Some(ListImagesOptionsBuilder::default().all(true).build())).await.map_err(DockerError::api("listing images"))?;
    target.images.extend(images.into_iter().map(|i| i.id));
    Ok(target)
}

/// Loads the images the plan takes from the snapshot, streaming each from its blobs into the engine.
fn load_images(handle: &Handle, docker: &Docker, reader: &mut BlobReader, snapshot_id: Id, snapshot: &Snapshot, plan: &Plan, reporter: &Option<crate::restore::Reporter>) -> Result<(), Error> {
    for (image, _) in plan.images.iter().filter(|(_, s)| *s == ImageSource::Snapshot) {
        let source = snapshot.sources.iter().find(|s| s.image.as_ref().is_some_and(|i| i.id == image.id)).expect("planned from the snapshot's image sources");
        crate::restore::step(reporter, format!("loading image {} from the snapshot", image.reference), Some(source.bytes));
        let shown = source.label();
        let mut replay = TreeReplay::new(reader, snapshot_id, source);
        let said = crate::source::image::load(handle, docker, &shown, || replay.next_piece(&shown))?;
        if handle.block_on(docker.inspect_image(&image.id)).is_err() {
            return Err(Error::source(&shown, format!("the engine loaded it ({said}) but has no image {}", image.id)));
        }
    }
    Ok(())
}

/// Image ids whose reference names them on the target: their containers are created by reference
/// (as they were), the others by id.
fn references_that_hold(handle: &Handle, docker: &Docker, plan: &Plan) -> BTreeSet<String> {
    plan.images
        .iter()
        .filter(|(image, _)| handle.block_on(docker.inspect_image(&image.reference)).ok().and_then(|i| i.id).as_deref() == Some(image.id.as_str()))
        .map(|(image, _)| image.id.clone())
        .collect()
}
