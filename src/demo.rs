//! `stackvault demo`: the whole story on a throw-away stack. Creates a small compose-labelled stack (a
//! container and two volumes holding recordings and a database dump), backs it up into a local folder,
//! deletes the volumes, restores them, verifies the repository, and proves the restored state identical
//! by backing it up again: equal trees have equal ids.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder};
use bollard::Docker;

use crate::config::Config;
use crate::docker::engine::Engine;
use crate::docker::helper::{Helper, HelperSpec};
use crate::docker::DockerError;
use crate::source::wire::EventWriter;
use crate::source::{EntryKind, Event, Meta};
use crate::Error;

const PROJECT: &str = "stackvault-demo";
const VOLUMES: [&str; 2] = ["stackvault-demo_recordings", "stackvault-demo_db"];

pub async fn run(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Usage(format!("creating {}: {e}", dir.display())))?;
    let dir = dir.canonicalize().map_err(|e| Error::Usage(format!("{}: {e}", dir.display())))?;
    let config_path = dir.join("stackvault.yaml");
    let yaml = format!(
        "# Written by `stackvault demo`; a working example of the configuration.\nstack: {PROJECT}\ndocker:\n  select:\n    project: {PROJECT}\nrepository:\n  filesystem:\n    path: {}\ncache_dir: {}\n",
        dir.join("repository").display(),
        dir.join("cache").display()
    );
    std::fs::write(&config_path, yaml).map_err(|e| Error::Usage(format!("writing {}: {e}", config_path.display())))?;
    let config = Config::load(Some(&config_path))?;
    let repo_path = dir.join("repository");
    let engine = Engine::start(&config).await?;
    let docker = &engine.docker;
    remove_stack(docker).await?;
    println!("1. creating the demo stack '{PROJECT}': container {PROJECT}-app-1 with volumes {}", VOLUMES.join(", "));
    create_stack(&engine).await?;

    if !repo_path.join("config").exists() {
        crate::init_repository(&config)?;
    }

    println!("2. backing up into {} (configuration: {})", repo_path.display(), config_path.display());
    let first = crate::backup::backup(&config, &crate::backup::Destination::Target).await?;
    println!("   snapshot {}: {} entries, {} bytes", first.id, first.snapshot.summary.entries, first.snapshot.summary.bytes);

    println!("3. disaster: removing the container and its volumes");
    remove_stack(docker).await?;

    println!("4. restoring the latest snapshot: the container from its definition, the volumes with their data");
    let options = crate::restore::RestoreOptions { snapshot: "latest".into(), ..Default::default() };
    let restored = crate::restore::restore(&config, options).await?;
    for r in &restored.restored {
        println!("   restored {}", r.source);
    }

    println!("5. verifying every pack of the repository");
    let repo = crate::open_repository(&config)?;
    let report = tokio::task::spawn_blocking(move || crate::verify::verify(&repo, None, crate::verify::ReadData::All)).await.expect("verify thread")?;
    if !report.ok() {
        return Err(Error::Usage(format!("verify found damage: {:?}", report.broken)));
    }
    println!("   {} snapshots ok, {} packs read", report.snapshots.len(), report.packs_read);

    println!("6. checking the restored volumes: backing them up again must give identical trees");
    let second = crate::backup::backup(&config, &crate::backup::Destination::Target).await?;
    let trees = |o: &crate::backup::BackupOutcome| {
        o.snapshot.sources.iter().filter(|s| s.kind == crate::repo::format::SourceKind::Volume).map(|s| (s.name.clone(), s.root.clone())).collect::<Vec<_>>()
    };
    if trees(&first) != trees(&second) {
        return Err(Error::Usage("the restored volumes differ from the backed-up ones".into()));
    }
    println!("   identical: every file, directory, owner, mode, mtime and xattr; the second backup stored {} new bytes", second.snapshot.summary.new_bytes);
    remove_stack(docker).await?;
    println!("demo done: the repository stays in {} (try `stackvault -c {} snapshots`)", repo_path.display(), config_path.display());
    Ok(())
}

fn compose_labels(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut labels = HashMap::from([("com.docker.compose.project".to_string(), PROJECT.to_string())]);
    labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    labels
}

async fn create_stack(engine: &Engine) -> Result<(), Error> {
    let docker = &engine.docker;
    for volume in VOLUMES {
        let short = volume.trim_start_matches("stackvault-demo_");
        let request = VolumeCreateRequest {
            name: Some(volume.into()),
            labels: Some(compose_labels(&[("com.docker.compose.volume", short)])),
            ..Default::default()
        };
        docker.create_volume(request).await.map_err(DockerError::api(format!("creating volume {volume}")))?;
        fill_volume(engine, volume).await?;
    }
    create_container(docker, engine.agent_image()).await
}

/// The stack's one container is created, never started: a backup needs its mounts, not its process.
async fn create_container(docker: &Docker, image: &str) -> Result<(), Error> {
    let body = ContainerCreateBody {
        image: Some(image.into()),
        cmd: Some(vec!["/stackvault".into(), "--version".into()]),
        labels: Some(compose_labels(&[("com.docker.compose.service", "app")])),
        host_config: Some(HostConfig {
            binds: Some(vec![format!("{}:/var/spool/recordings", VOLUMES[0]), format!("{}:/var/lib/db", VOLUMES[1])]),
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&format!("{PROJECT}-app-1")).build();
    docker.create_container(Some(options), body).await.map_err(DockerError::api("creating the demo container"))?;
    Ok(())
}

async fn remove_stack(docker: &Docker) -> Result<(), Error> {
    let filters = HashMap::from([("label".to_string(), vec![format!("com.docker.compose.project={PROJECT}")])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    for container in docker.list_containers(Some(options)).await.map_err(DockerError::api("listing demo containers"))? {
        let force = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Some(id) = container.id {
            docker.remove_container(&id, Some(force)).await.map_err(DockerError::api("removing the demo container"))?;
        }
    }
    for volume in VOLUMES {
        if docker.inspect_volume(volume).await.is_ok() {
            let force = RemoveVolumeOptionsBuilder::default().force(true).build();
            docker.remove_volume(volume, Some(force)).await.map_err(DockerError::api(format!("removing volume {volume}")))?;
        }
    }
    Ok(())
}

/// Writes sample content into a volume through the restore agent: deterministic pseudo-random
/// "recordings", or a text dump, with a symlink and varied owners and modes.
async fn fill_volume(engine: &Engine, volume: &str) -> Result<(), Error> {
    let target = Mount { typ: Some(MountType::VOLUME), source: Some(volume.into()), target: Some("/target".into()), ..Default::default() };
    let spec = HelperSpec { auto_remove: false, mounts: vec![target], binds: vec![], args: vec!["agent".into(), "write".into(), "/target".into()], purpose: format!("demo data for {volume}") };
    let (helper, io) = Helper::start(engine, spec).await?;
    let events = sample_tree(volume.ends_with("recordings"));
    let writer = io.writer;
    tokio::task::spawn_blocking(move || {
        let mut out = EventWriter::new(std::io::BufWriter::new(writer));
        for event in &events {
            out.write(event)?;
        }
        out.flush()
    })
    .await
    .expect("demo writer thread")
    .map_err(|e| Error::Usage(format!("writing demo data into {volume}: {e}")))?;
    helper.finish().await?;
    Ok(())
}

fn sample_tree(recordings: bool) -> Vec<Event> {
    let meta = |name: &str, kind, mode, uid| Meta {
        name: name.as_bytes().to_vec(),
        kind,
        mode,
        uid,
        gid: uid,
        mtime_ns: 1_700_000_000_123_456_789,
        size: 0,
        rdev: 0,
        target: Vec::new(),
        xattrs: Vec::new(),
        ctime_ns: 0,
        ino: 0,
    };
    let mut events = vec![Event::Dir(meta("", EntryKind::Dir, 0o755, 0))];
    if recordings {
        events.push(Event::Dir(meta("2026-11", EntryKind::Dir, 0o750, 1000)));
        for call in 0..5u32 {
            let mut audio = vec![0u8; 2 << 20];
            blake3::Hasher::new().update(&call.to_le_bytes()).finalize_xof().fill(&mut audio);
            let mut file = meta(&format!("call-{call:04}.wav"), EntryKind::File, 0o640, 1000);
            file.xattrs = vec![(b"user.agent".to_vec(), format!("agent-{}", call % 3).into_bytes())];
            events.extend([Event::File(file), Event::Data(audio), Event::FileEnd]);
        }
        events.push(Event::DirEnd);
        let mut link = meta("latest", EntryKind::Symlink, 0o777, 0);
        link.target = b"2026-11/call-0004.wav".to_vec();
        events.push(Event::Leaf(link));
    } else {
        let dump: String = (0..20_000).map(|i| format!("INSERT INTO calls VALUES ({i}, 'agent-{}', {});\n", i % 7, i * 13 % 600)).collect();
        events.extend([Event::File(meta("dump.sql", EntryKind::File, 0o600, 999)), Event::Data(dump.into_bytes()), Event::FileEnd]);
    }
    events.extend([Event::DirEnd, Event::End]);
    events
}

