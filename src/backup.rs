//! The backup command: find the sources, archive each tree, store what is new, and write the snapshot
//! manifest last, so that a failed or killed run never leaves a snapshot that looks complete; the packs
//! it did store are reused by the next run, which is how an interrupted backup resumes.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use bollard::models::{Mount, MountType};
use tokio::runtime::Handle;

use crate::archiver::{ArchiveError, Archived, Archiver};
use crate::cache::FilesCache;
use crate::config::Config;
use crate::docker::discover::{discover, MountSource};
use crate::docker::engine::Engine;
use crate::docker::helper::{Helper, HelperSpec};
use crate::repo::format::{SourceKind, SourceRecord, Summary};
use crate::repo::pack::Packer;
use crate::repo::{Id, RepoError, Repository, Snapshot, FORMAT_VERSION};
use crate::source::wire::{EventReader, EventWriter};
use crate::source::{walk, ChannelSource, SourceError};
use crate::Error;

pub struct BackupOutcome {
    pub id: Id,
    pub snapshot: Snapshot,
    /// Mounts the selection found but left out, with why.
    pub skipped: Vec<String>,
    /// Problems that cost speed next time, not this snapshot.
    pub warnings: Vec<String>,
    /// How each source (in the snapshot's order) was read: in-process, or through a helper.
    pub routes: Vec<String>,
}

enum Planned {
    Mount(MountSource),
    Path(PathBuf),
}

impl Planned {
    /// Names the source's files cache: the same source in the same repository, run after run.
    fn key(&self) -> String {
        match self {
            Planned::Mount(m) => format!("{:?}:{}", m.kind, m.name),
            Planned::Path(p) => format!("Path:{}", p.display()),
        }
    }
}

pub async fn backup(config: &Config) -> Result<BackupOutcome, Error> {
    let clock = Instant::now();
    let time = crate::now_rfc3339();
    let stack = config.stack()?.to_string();
    let repo = Arc::new(crate::open_repository(config)?);
    check_recipients(config, &repo)?;

    let mut planned = Vec::new();
    let mut skipped = Vec::new();
    let mut engine = None;
    if config.docker.select.is_set() {
        let started = Engine::start(config).await?;
        let found = discover(&started.docker, &config.docker.select).await?;
        if found.containers.is_empty() {
            return Err(Error::Usage(format!(
                "no container matches docker.select ({}); check the compose project name or label",
                describe_selection(config)
            )));
        }
        skipped = found.skipped;
        planned.extend(found.sources.into_iter().map(Planned::Mount));
        engine = Some(started);
    }
    planned.extend(config.paths.iter().cloned().map(Planned::Path));
    if planned.is_empty() {
        return Err(Error::Usage("nothing to back up: set docker.select (project or label) or paths in the configuration".into()));
    }

    let handle = Handle::current();
    let recipients = config.encryption.recipients.clone();
    let hostname = crate::hostname();
    let cache_root = config.cache_dir().to_path_buf();
    let archived = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let index = repo.load_index()?;
        let packer = Packer::start(&repo, recipients);
        let mut archiver = Archiver::new(&index, packer, repo.config.chunker.clone());
        let mut records = Vec::new();
        let mut caches = Vec::new();
        let mut unchanged_files = 0;
        let mut routes = Vec::new();
        for source in planned {
            let cache = FilesCache::load(FilesCache::path(&cache_root, &repo.config.id, &source.key()), &index);
            let (archived, kind, name, mount) = match source {
                Planned::Path(path) => {
                    let archived = archive_local(&mut archiver, &path, &cache).map_err(|e| Error::source(path.display(), e))?;
                    routes.push("in-process".to_string());
                    (archived, SourceKind::Path, path.display().to_string(), None)
                }
                Planned::Mount(mount) => {
                    let engine = engine.as_ref().expect("mounts come from Docker");
                    // Mounted into this very container: read in-process, no helper needed.
                    let archived = match engine.own_path(mount.kind, &mount.name, false) {
                        Some(path) => {
                            routes.push(format!("in-process at {}", path.display()));
                            archive_local(&mut archiver, &path, &cache).map_err(|e| Error::source(shown(&mount), e))?
                        }
                        None => {
                            routes.push(format!("through a helper, {}", engine.route()));
                            archive_mount(&handle, engine, &mut archiver, &mount, &cache)?
                        }
                    };
                    (archived, mount.kind, mount.name.clone(), Some(mount))
                }
            };
            unchanged_files += archived.stats.unchanged_files;
            records.push(SourceRecord {
                kind,
                name,
                root: archived.root,
                mounted_by: mount.as_ref().map(|m| m.mounted_by.clone()).unwrap_or_default(),
                volume_driver: mount.as_ref().and_then(|m| m.volume_driver.clone()),
                volume_labels: mount.map(|m| m.volume_labels).unwrap_or_default(),
                entries: archived.stats.entries,
                bytes: archived.stats.bytes,
            });
            caches.push((cache, archived.files));
        }
        let new_bytes = archiver.new_bytes;
        let (report, packs) = archiver.finish()?;
        Ok((repo, records, caches, unchanged_files, new_bytes, report, packs, routes))
    })
    .await
    .expect("backup thread panicked");
    let (repo, sources, caches, unchanged_files, new_bytes, report, packs, routes) = archived?;

    let summary = Summary {
        entries: sources.iter().map(|s| s.entries).sum(),
        bytes: sources.iter().map(|s| s.bytes).sum(),
        new_bytes,
        stored_bytes: report.stored_bytes,
        unchanged_files,
        new_packs: report.packs.len() as u64,
        duration_ms: clock.elapsed().as_millis() as u64,
    };
    let snapshot = Snapshot { version: FORMAT_VERSION, time, stack, hostname, program: crate::program(), sources, packs, summary };
    let id = repo.save_snapshot(&snapshot)?;
    // Only now: the cache describes what a snapshot holds.
    let warnings = caches
        .into_iter()
        .filter_map(|(cache, files)| cache.save(files).err().map(|e| format!("files cache in {}: {e} (the next backup reads everything)", config.cache_dir().display())))
        .collect();
    Ok(BackupOutcome { id, snapshot, skipped, warnings, routes })
}

fn describe_selection(config: &Config) -> String {
    let select = &config.docker.select;
    [select.project.as_ref().map(|p| format!("project={p}")), select.label.as_ref().map(|l| format!("label={l}"))]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
}

/// A repository and a configuration that disagree on encryption must not mix: that would silently
/// store plaintext in an encrypted repository, or encrypt to keys nobody expects.
fn check_recipients(config: &Config, repo: &Repository) -> Result<(), RepoError> {
    let mut configured: Vec<String> = config.encryption.recipients.iter().map(|r| r.to_string()).collect();
    let mut stored = repo.config.recipients();
    configured.sort();
    stored.sort();
    if configured != stored {
        return Err(RepoError::RecipientsMismatch(format!(
            "the configuration (encryption.recipients in {}) lists [{}] but the repository was created for [{}]; fix the configuration or use another repository",
            config.origin,
            configured.join(", "),
            stored.join(", ")
        )));
    }
    Ok(())
}

fn shown(mount: &MountSource) -> String {
    format!("{} {}", if mount.kind == SourceKind::Volume { "volume" } else { "bind mount" }, mount.name)
}

/// Reads a tree this process sees itself: a configured path, or a mount of its own container.
fn archive_local(archiver: &mut Archiver, path: &Path, cache: &FilesCache) -> Result<Archived, ArchiveError> {
    let (tx, rx) = sync_channel(16);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let known = |p: &[u8]| cache.stamp(p);
            let result = walk::walk(path, &known, &mut |event| tx.send(Ok(event)).map_err(|_| SourceError::Refused("the archiver stopped".into())));
            if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
        });
        archiver.archive(&mut ChannelSource(rx), Some(cache))
    })
}

/// Reads a volume or bind mount through a helper that runs the agent with the source mounted read-only:
/// first the stamps of the files cache go to the agent, then the tree comes back. Runs on a blocking
/// thread: the helper's streams are used with blocking calls, Docker is driven through `handle`.
fn archive_mount(handle: &Handle, engine: &Engine, archiver: &mut Archiver<'_>, mount: &MountSource, cache: &FilesCache) -> Result<Archived, Error> {
    let shown = shown(mount);
    let typ = if mount.kind == SourceKind::Volume { MountType::VOLUME } else { MountType::BIND };
    let source = Mount { typ: Some(typ), source: Some(mount.name.clone()), target: Some("/source".into()), read_only: Some(true), ..Default::default() };
    let spec = HelperSpec { auto_remove: false, mounts: vec![source], binds: vec![], args: vec!["agent".into(), "read".into(), "/source".into()], purpose: format!("backup of {shown}") };
    let (helper, io) = handle.block_on(Helper::start(engine, spec))?;
    let (reader, writer) = (io.reader, io.writer);
    let result = std::thread::scope(|scope| {
        // A separate thread, so that a large stamp list can never wait on a tree nobody reads.
        scope.spawn(move || EventWriter::new(std::io::BufWriter::with_capacity(1 << 20, writer)).write_stamps(cache.stamps()));
        archiver.archive(&mut EventReader::new(std::io::BufReader::with_capacity(1 << 20, reader)), Some(cache))
    });
    match result {
        Ok(archived) => {
            handle.block_on(helper.finish())?;
            Ok(archived)
        }
        Err(e) => {
            // The agent's own words, when it has any, say more than a broken stream does.
            let stderr = helper.stderr();
            handle.block_on(helper.abort());
            let detail = if stderr.is_empty() { e.to_string() } else { format!("{e} (agent: {stderr})") };
            Err(Error::Source { source_name: shown, message: detail })
        }
    }
}
