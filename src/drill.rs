//! `verify --drill`: restores a snapshot's whole stack into throwaway containers, volumes and internal
//! networks on the local engine (a project name of its own, no route out, no host ports), checks that
//! every database loaded its dumps with the rows recorded at backup time and that each container's
//! `stackvault.drill-check` command succeeds, and removes all of it, whatever happened. A drill that
//! was killed is cleaned up by the next one: every object carries the drill's label and its owner.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder};
use bollard::Docker;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::docker::engine::Engine;
use crate::docker::exec::{Exec, ExecSpec, Shell};
use crate::docker::helper::{Liveness, Owner, OWNER_LABEL};
use crate::docker::DockerError;
use crate::repo::crypt::Identities;
use crate::repo::format::SourceKind;
use crate::repo::{Id, Repository, Snapshot};
use crate::restore::RestoreOptions;
use crate::Error;

/// Every object a drill creates carries it, with the drill's project name as its value.
pub const DRILL_LABEL: &str = "stackvault.drill";
/// The container's name in the snapshot, on its drill copy.
pub const ORIGINAL_LABEL: &str = "stackvault.drill.original";
/// A command run by `sh -c` in the restored container; exit status 0 passes.
pub const CHECK_LABEL: &str = "stackvault.drill-check";
/// How long a drill-check may run.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Clone, Serialize)]
pub struct DrillCheck {
    pub what: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct DrillReport {
    pub snapshot: String,
    pub stack: String,
    pub time: String,
    pub project: String,
    pub checks: Vec<DrillCheck>,
    pub seconds: f64,
    /// Objects of earlier drills (killed before they could clean up) removed first.
    pub leftovers_removed: Vec<String>,
    /// What could not be removed afterwards (the next drill tries again).
    pub left_behind: Vec<String>,
    /// The signal that cut the drill short (its checks are then those done, and it did not pass).
    pub interrupted: Option<&'static str>,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.interrupted.is_none() && !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// "the drill of snapshot ID (STACK TIME) failed: CHECK: DETAIL; …", for errors and alerts.
    pub fn failure(&self) -> String {
        let failed: Vec<String> = self.checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.what, c.detail)).collect();
        format!("the drill of snapshot {} ({} {}) failed: {}", self.snapshot, self.stack, self.time, failed.join("; "))
    }
}

/// A list filter for objects carrying `label` (`KEY` or `KEY=VALUE`).
fn labelled(label: String) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![label])])
}

/// The drill of one snapshot. Fails (an error) only when it cannot start; what goes wrong once the
/// restore has begun is a failed check of the report, after everything created is removed. SIGTERM
/// or SIGINT cuts it short: what it created is removed, and the report says so.
pub async fn drill(config: &Config, repo: Repository, snapshot_id: Id, snapshot: Snapshot, identities: Option<Identities>) -> Result<DrillReport, Error> {
    if !snapshot.sources.iter().any(|s| s.kind == SourceKind::Stack) {
        return Err(Error::Usage(format!(
            "snapshot {snapshot_id} keeps no stack definition (taken from paths only): a drill re-creates a stack; check its data with verify --read-data"
        )));
    }
    if repo.config.encryption.is_some() && identities.is_none() {
        return Err(Error::Usage(format!("the repository is encrypted: a drill of snapshot {snapshot_id} restores it, and needs the identity (--identity, or STACKVAULT_IDENTITY)")));
    }
    let clock = Instant::now();
    let engine = Engine::start(config).await?;
    let docker = engine.docker.clone();
    let owner = engine.owner().clone();
    let leftovers_removed = remove_stale(&docker, &owner, config).await?;
    let project = project_name(&snapshot_id);
    let labels = BTreeMap::from([(DRILL_LABEL.to_string(), project.clone()), (OWNER_LABEL.to_string(), owner.label())]);
    let mut report = DrillReport {
        snapshot: snapshot_id.hex(),
        stack: snapshot.stack.clone(),
        time: snapshot.time.clone(),
        project: project.clone(),
        checks: Vec::new(),
        seconds: 0.0,
        leftovers_removed,
        left_behind: Vec::new(),
        interrupted: None,
    };
    let dumps: Vec<_> = snapshot.sources.iter().filter_map(|s| s.dump.clone().map(|d| (s.label(), d))).collect();
    let options = RestoreOptions { snapshot: snapshot_id.hex(), project: Some(project.clone()), isolate: Some(labels), ..RestoreOptions::default() };
    let work = async {
        let outcome = match crate::stack::restore::restore(config, repo, snapshot_id, snapshot, identities, options).await {
            Err(e) => return vec![DrillCheck { what: "restore".into(), passed: false, detail: e.to_string() }],
            Ok(outcome) => outcome,
        };
        let mut checks = vec![DrillCheck { what: "restore".into(), passed: true, detail: format!("{} sources, {} containers running", outcome.restored.len(), outcome.containers.len()) }];
        let copies = match drill_containers(&docker, &project).await {
            Ok(copies) => copies,
            Err(e) => {
                checks.push(DrillCheck { what: "listing the drill's containers".into(), passed: false, detail: e.to_string() });
                return checks;
            }
        };
        let handle = tokio::runtime::Handle::current();
        let docker = docker.clone();
        checks.extend(tokio::task::spawn_blocking(move || check_copies(&handle, &docker, &copies, &dumps)).await.expect("drill check thread panicked"));
        checks
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| Error::Usage(format!("cannot watch for SIGTERM: {e}")))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| Error::Usage(format!("cannot watch for SIGINT: {e}")))?;
    let stopped_by = tokio::select! {
        checks = work => {
            report.checks = checks;
            None
        }
        _ = terminate.recv() => Some("SIGTERM"),
        _ = interrupt.recv() => Some("SIGINT"),
    };
    report.interrupted = stopped_by;
    report.left_behind = remove_drill(&docker, &project, config).await;
    report.seconds = clock.elapsed().as_secs_f64();
    Ok(report)
}

/// `svdrill-<snapshot>-<nonce>`: unique, and a valid compose project name.
fn project_name(snapshot: &Id) -> String {
    let nonce = blake3::hash(format!("{}:{:?}", std::process::id(), std::time::SystemTime::now()).as_bytes()).to_hex();
    format!("svdrill-{}-{}", &snapshot.hex()[..8], &nonce[..6])
}

/// The drill's containers, by their name in the snapshot: (name here, labels).
async fn drill_containers(docker: &Docker, project: &str) -> Result<BTreeMap<String, (String, HashMap<String, String>)>, DockerError> {
    let filters = labelled(format!("{DRILL_LABEL}={project}"));
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let mut found = BTreeMap::new();
    for c in docker.list_containers(Some(options)).await.map_err(DockerError::api("listing the drill's containers"))? {
        let name = c.names.unwrap_or_default().first().map(|n| n.trim_start_matches('/').to_string()).unwrap_or_default();
        let labels = c.labels.unwrap_or_default();
        let original = labels.get(ORIGINAL_LABEL).cloned().unwrap_or_else(|| name.clone());
        found.insert(original, (name, labels));
    }
    Ok(found)
}

/// Row counts of every dump against its record, then each container's drill-check.
fn check_copies(
    handle: &tokio::runtime::Handle,
    docker: &Docker,
    copies: &BTreeMap<String, (String, HashMap<String, String>)>,
    dumps: &[(String, crate::repo::format::DumpRecord)],
) -> Vec<DrillCheck> {
    let mut checks = Vec::new();
    for (label, record) in dumps.iter().filter(|(_, d)| !d.tables.is_empty()) {
        let what = format!("rows of {label}");
        let Some((copy, _)) = copies.get(&record.container) else {
            checks.push(DrillCheck { what, passed: false, detail: format!("no container of the drill stands for {}", record.container) });
            continue;
        };
        let counted = crate::restore::container_loader(handle, docker, record, Some(copy), label)
            .and_then(|(shell, loader)| crate::source::dump::count_rows(handle, &shell, record, &loader));
        checks.push(match counted {
            Err(e) => DrillCheck { what, passed: false, detail: e.to_string() },
            Ok(tables) => {
                let differ: Vec<String> = tables.iter().filter(|(_, then, now)| then != now).map(|(t, then, now)| format!("{t}: {now} rows, {then} at backup")).collect();
                let rows: u64 = tables.iter().map(|(_, then, _)| then).sum();
                match differ.is_empty() {
                    true => DrillCheck { what, passed: true, detail: format!("{rows} rows in {} tables, as at backup", tables.len()) },
                    false => DrillCheck { what, passed: false, detail: differ.join("; ") },
                }
            }
        });
    }
    for (original, (copy, labels)) in copies {
        let Some(command) = labels.get(CHECK_LABEL) else { continue };
        let what = format!("drill-check of {original}");
        let spec = ExecSpec { shell: Shell::container(docker, copy), script: command.clone(), env: Vec::new(), stdin: false, purpose: what.clone() };
        checks.push(match handle.block_on(Exec::run(spec, CHECK_TIMEOUT)) {
            Err(e) => DrillCheck { what, passed: false, detail: e.to_string() },
            Ok(out) if out.code == 0 => DrillCheck { what, passed: true, detail: format!("{command:?} exited 0") },
            Ok(out) => DrillCheck { what, passed: false, detail: format!("{command:?} exited with status {}: {}", out.code, out.last_stderr_line()) },
        });
    }
    checks
}

/// Removes one drill's containers (with their anonymous volumes), volumes, networks and bind-mount
/// copies; returns what could not be removed. Passes repeat until one finds nothing: a restore cut
/// short by a signal may still be creating objects while the first pass removes.
pub async fn remove_drill(docker: &Docker, project: &str, config: &Config) -> Vec<String> {
    let mut left = Vec::new();
    for pass in 0..5 {
        if pass > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        let (found, failed) = remove_drill_once(docker, project).await;
        left = failed;
        if found == 0 {
            break;
        }
    }
    let binds = config.state_dir().join("restored").join(project);
    if let Err(e) = std::fs::remove_dir_all(&binds) {
        if e.kind() != std::io::ErrorKind::NotFound {
            left.push(format!("{}: {e}", binds.display()));
        }
    }
    left
}

/// One pass: how many objects it found, and those it could not remove.
async fn remove_drill_once(docker: &Docker, project: &str) -> (usize, Vec<String>) {
    let (mut found, mut left) = (0, Vec::new());
    let filters = labelled(format!("{DRILL_LABEL}={project}"));
    let listed = docker.list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build())).await;
    for c in listed.unwrap_or_default() {
        let Some(id) = c.id else { continue };
        found += 1;
        let remove = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        if let Err(e) = docker.remove_container(&id, Some(remove)).await {
            left.push(format!("container {id}: {e}"));
        }
    }
    let volumes = docker.list_volumes(Some(ListVolumesOptionsBuilder::default().filters(&filters).build())).await;
    for volume in volumes.ok().and_then(|v| v.volumes).unwrap_or_default() {
        found += 1;
        if let Err(e) = docker.remove_volume(&volume.name, Some(RemoveVolumeOptionsBuilder::default().force(true).build())).await {
            left.push(format!("volume {}: {e}", volume.name));
        }
    }
    let networks = docker.list_networks(Some(ListNetworksOptionsBuilder::default().filters(&filters).build())).await;
    for network in networks.unwrap_or_default() {
        let name = network.name.unwrap_or_default();
        found += 1;
        if let Err(e) = docker.remove_network(&name).await {
            left.push(format!("network {name}: {e}"));
        }
    }
    (found, left)
}

/// Removes what drills whose process is gone left behind (killed before they could clean up);
/// returns the projects removed. Those of a drill that runs, here or elsewhere, stay.
pub async fn remove_stale(docker: &Docker, me: &Owner, config: &Config) -> Result<Vec<String>, DockerError> {
    let mut removed = Vec::new();
    for (project, owner) in drills(docker).await? {
        // Without an owner it was not made by a drill of this version: left alone.
        let Some(owner) = owner else { continue };
        if owner.liveness(docker, me).await == Liveness::Dead {
            remove_drill(docker, &project, config).await;
            removed.push(project);
        }
    }
    Ok(removed)
}

/// Removes the drills of this process (a daemon abandoning its run on a signal); returns what it
/// could not remove.
pub async fn abandon(config: &Config) -> Vec<String> {
    let Ok(docker) = crate::docker::connect(config.docker.host.as_deref()).await else { return Vec::new() };
    let pid = std::process::id();
    let start = crate::process_start(pid).unwrap_or(0);
    let mut left = Vec::new();
    match drills(&docker).await {
        Err(e) => left.push(e.to_string()),
        Ok(drills) => {
            for (project, _) in drills.into_iter().filter(|(_, owner)| owner.as_ref().is_some_and(|o| o.pid == pid && o.start == start)) {
                left.extend(remove_drill(&docker, &project, config).await);
            }
        }
    }
    left
}

/// Every drill's project on the engine, with its owner where its objects name one.
async fn drills(docker: &Docker) -> Result<BTreeMap<String, Option<Owner>>, DockerError> {
    let filters = labelled(DRILL_LABEL.to_string());
    let mut owners: BTreeMap<String, Option<Owner>> = BTreeMap::new();
    let mut note = |labels: Option<&HashMap<String, String>>| {
        if let Some(project) = labels.and_then(|l| l.get(DRILL_LABEL)) {
            let owner = labels.and_then(|l| l.get(OWNER_LABEL)).and_then(|o| Owner::parse(o));
            owners.entry(project.clone()).or_insert(owner);
        }
    };
    let containers = docker.list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build())).await.map_err(DockerError::api("listing drill containers"))?;
    containers.iter().for_each(|c| note(c.labels.as_ref()));
    let volumes = docker.list_volumes(Some(ListVolumesOptionsBuilder::default().filters(&filters).build())).await.map_err(DockerError::api("listing drill volumes"))?;
    volumes.volumes.iter().flatten().for_each(|v| note(Some(&v.labels)));
    let networks = docker.list_networks(Some(ListNetworksOptionsBuilder::default().filters(&filters).build())).await.map_err(DockerError::api("listing drill networks"))?;
    networks.iter().for_each(|n| note(n.labels.as_ref()));
    Ok(owners)
}
