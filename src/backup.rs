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
use crate::config::Config;
use crate::docker::discover::{discover, MountSource};
use crate::docker::helper::{self, ChannelReader, Helper, HelperSpec};
use crate::repo::format::{SourceKind, SourceRecord, Summary};
use crate::repo::pack::Packer;
use crate::repo::{Id, RepoError, Repository, Snapshot, FORMAT_VERSION};
use crate::source::wire::EventReader;
use crate::source::{walk, ChannelSource, SourceError};
use crate::Error;

pub struct BackupOutcome {
    pub id: Id,
    pub snapshot: Snapshot,
    /// Mounts the selection found but left out, with why.
    pub skipped: Vec<String>,
}

enum Planned {
    Mount(MountSource),
    Path(PathBuf),
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
    let archived = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let index = repo.load_index()?;
        let packer = Packer::start(&repo, recipients);
        let mut archiver = Archiver::new(&index, packer, repo.config.chunker.clone());
        let mut records = Vec::new();
        for source in planned {
            records.push(match source {
                Planned::Path(path) => archive_path(&mut archiver, path)?,
                Planned::Mount(mount) => {
                    let (docker, image) = docker_ctx.as_ref().expect("mounts come from Docker");
                    archive_mount(&handle, docker, image, &mut archiver, mount)?
                }
            });
        }
        let new_bytes = archiver.new_bytes;
        let (report, packs) = archiver.finish()?;
        Ok((repo, records, new_bytes, report, packs))
    })
    .await
    .expect("backup thread panicked");
    let (repo, sources, new_bytes, report, packs) = archived?;

    let summary = Summary {
        entries: sources.iter().map(|s| s.entries).sum(),
        bytes: sources.iter().map(|s| s.bytes).sum(),
        new_bytes,
        stored_bytes: report.stored_bytes,
        new_packs: report.packs.len() as u64,
        duration_ms: clock.elapsed().as_millis() as u64,
    };
    let snapshot = Snapshot { version: FORMAT_VERSION, time, stack, hostname, program: crate::program(), sources, packs, summary };
    let id = repo.save_snapshot(&snapshot)?;
    Ok(BackupOutcome { id, snapshot, skipped })
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

fn archive_path(archiver: &mut Archiver, path: PathBuf) -> Result<SourceRecord, Error> {
    let (tx, rx) = sync_channel(16);
    let root = path.clone();
    let walker = std::thread::spawn(move || {
        let result = walk::walk(&root, &mut |event| tx.send(Ok(event)).map_err(|_| SourceError::Refused("the archiver stopped".into())));
        if let Err(e) = result {
            let _ = tx.send(Err(e));
        }
    });
    let result = archiver.archive(&mut ChannelSource(rx));
    walker.join().expect("walker thread panicked");
    let (root, stats) = result.map_err(|e| Error::source(path.display(), e))?;
    Ok(SourceRecord {
        kind: SourceKind::Path,
        name: path.display().to_string(),
        root,
        mounted_by: Vec::new(),
        volume_driver: None,
        volume_labels: Default::default(),
        entries: stats.entries,
        bytes: stats.bytes,
    })
}

/// Reads a volume or bind mount through a helper that runs the agent with the source mounted read-only.
/// Runs on a blocking thread: the helper's stdout is read with blocking calls, Docker is driven through
/// `handle`.
fn archive_mount(handle: &Handle, docker: &Docker, image: &str, archiver: &mut Archiver<'_>, mount: MountSource) -> Result<SourceRecord, Error> {
    let shown = format!("{} {}", if mount.kind == SourceKind::Volume { "volume" } else { "bind mount" }, mount.name);
    let spec = HelperSpec {
        image: image.to_string(),
        binds: vec![format!("{}:/source:ro", mount.name)],
        args: vec!["agent".into(), "read".into(), "/source".into()],
        purpose: format!("backup of {shown}"),
        stdin: false,
    };
    let (helper, stdout, _) = handle.block_on(Helper::start(docker, spec))?;
    let result = archiver.archive(&mut EventReader::new(std::io::BufReader::with_capacity(1 << 20, ChannelReader::new(stdout))));
    let (root, stats) = match result {
        Ok(done) => done,
        Err(e) => {
            // The agent's own words, when it has any, say more than a broken stream does.
            let stderr = helper.stderr();
            handle.block_on(helper.abort());
            let detail = if stderr.is_empty() { e.to_string() } else { format!("{e} (agent: {stderr})") };
            return Err(Error::Source { source_name: shown, message: detail });
        }
    };
    handle.block_on(helper.finish())?;
    Ok(SourceRecord {
        kind: mount.kind,
        name: mount.name,
        root,
        mounted_by: mount.mounted_by,
        volume_driver: mount.volume_driver,
        volume_labels: mount.volume_labels,
        entries: stats.entries,
        bytes: stats.bytes,
    })
}
