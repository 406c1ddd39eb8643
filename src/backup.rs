//! The backup command: find the sources, archive each tree, store what is new, and write the snapshot
//! manifest last, so that a failed or killed run never leaves a snapshot that looks complete; the packs
//! it did store are reused by the next run, which is how an interrupted backup resumes.

use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use bollard::Docker;
use tokio::runtime::Handle;

use crate::archiver::Archiver;
use crate::cache::{CachedFile, FilesCache};
use crate::config::Config;
use crate::docker::discover::{discover, MountSource};
use crate::docker::helper::{self, ChannelReader, ChannelWriter, Helper, HelperSpec};
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
    let mut docker_ctx = None;
    if config.docker.select.is_set() {
        let docker = crate::docker::connect(config.docker.host.as_deref()).await?;
        helper::remove_stale_helpers(&docker).await?;
        let found = discover(&docker, &config.docker.select).await?;
        if found.containers.is_empty() {
            return Err(Error::Usage(format!(
                "no container matches docker.select ({}); check the compose project name or label",
                describe_selection(config)
            )));
        }
        skipped = found.skipped;
        planned.extend(found.sources.into_iter().map(Planned::Mount));
        let image = helper::ensure_agent_image(&docker).await?;
        docker_ctx = Some((docker, image));
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
        for source in planned {
            let cache = FilesCache::load(FilesCache::path(&cache_root, &repo.config.id, &source.key()), &index);
            let (record, files, unchanged) = match source {
                Planned::Path(path) => archive_path(&mut archiver, path, &cache)?,
                Planned::Mount(mount) => {
                    let (docker, image) = docker_ctx.as_ref().expect("mounts come from Docker");
                    archive_mount(&handle, docker, image, &mut archiver, mount, &cache)?
                }
            };
            unchanged_files += unchanged;
            records.push(record);
            caches.push((cache, files));
        }
        let new_bytes = archiver.new_bytes;
        let (report, packs) = archiver.finish()?;
        Ok((repo, records, caches, unchanged_files, new_bytes, report, packs))
    })
    .await
    .expect("backup thread panicked");
    let (repo, sources, caches, unchanged_files, new_bytes, report, packs) = archived?;

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
    Ok(BackupOutcome { id, snapshot, skipped, warnings })
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

fn archive_path(archiver: &mut Archiver, path: PathBuf, cache: &FilesCache) -> Result<(SourceRecord, Vec<CachedFile>, u64), Error> {
    let (tx, rx) = sync_channel(16);
    let archived = std::thread::scope(|scope| {
        scope.spawn(|| {
            let known = |p: &[u8]| cache.stamp(p);
            let result = walk::walk(&path, &known, &mut |event| tx.send(Ok(event)).map_err(|_| SourceError::Refused("the archiver stopped".into())));
            if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
        });
        archiver.archive(&mut ChannelSource(rx), Some(cache))
    });
    let archived = archived.map_err(|e| Error::source(path.display(), e))?;
    let record = SourceRecord {
        kind: SourceKind::Path,
        name: path.display().to_string(),
        root: archived.root,
        mounted_by: Vec::new(),
        volume_driver: None,
        volume_labels: Default::default(),
        entries: archived.stats.entries,
        bytes: archived.stats.bytes,
    };
    Ok((record, archived.files, archived.stats.unchanged_files))
}

/// Reads a volume or bind mount through a helper that runs the agent with the source mounted read-only:
/// first the stamps of the files cache go to its stdin, then the tree comes back on its stdout.
/// Runs on a blocking thread: the helper's streams are used with blocking calls, Docker is driven
/// through `handle`.
fn archive_mount(
    handle: &Handle,
    docker: &Docker,
    image: &str,
    archiver: &mut Archiver<'_>,
    mount: MountSource,
    cache: &FilesCache,
) -> Result<(SourceRecord, Vec<CachedFile>, u64), Error> {
    let shown = format!("{} {}", if mount.kind == SourceKind::Volume { "volume" } else { "bind mount" }, mount.name);
    let spec = HelperSpec {
        image: image.to_string(),
        binds: vec![format!("{}:/source:ro", mount.name)],
        args: vec!["agent".into(), "read".into(), "/source".into()],
        purpose: format!("backup of {shown}"),
        stdin: true,
    };
    let (helper, stdout, stdin) = handle.block_on(Helper::start(docker, spec))?;
    let stdin = stdin.expect("requested stdin");
    let result = std::thread::scope(|scope| {
        // A separate thread, so that a large stamp list can never wait on a stdout nobody reads.
        scope.spawn(|| EventWriter::new(ChannelWriter::new(stdin)).write_stamps(cache.stamps()));
        archiver.archive(&mut EventReader::new(std::io::BufReader::with_capacity(1 << 20, ChannelReader::new(stdout))), Some(cache))
    });
    let archived = match result {
        Ok(archived) => archived,
        Err(e) => {
            // The agent's own words, when it has any, say more than a broken stream does.
            let stderr = helper.stderr();
            handle.block_on(helper.abort());
            let detail = if stderr.is_empty() { e.to_string() } else { format!("{e} (agent: {stderr})") };
            return Err(Error::Source { source_name: shown, message: detail });
        }
    };
    handle.block_on(helper.finish())?;
    let record = SourceRecord {
        kind: mount.kind,
        name: mount.name,
        root: archived.root,
        mounted_by: mount.mounted_by,
        volume_driver: mount.volume_driver,
        volume_labels: mount.volume_labels,
        entries: archived.stats.entries,
        bytes: archived.stats.bytes,
    };
    Ok((record, archived.files, archived.stats.unchanged_files))
}
