//! The backup command: find the sources, archive each tree, store what is new, and write the snapshot
//! manifest last, so that a failed or killed run never leaves a snapshot that looks complete; the packs
//! it did store are reused by the next run, which is how an interrupted backup resumes.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use bollard::models::{Mount, MountType};
use tokio::runtime::Handle;

use crate::archiver::{ArchiveError, Archiver, CacheLink, Finished};
use crate::cache::{CacheCursor, FilesCache};
use crate::config::{Config, ImagesMode};
use crate::docker::discover::{discover, MountSource};
use crate::docker::engine::Engine;
use crate::docker::helper::{Helper, HelperSpec};
use crate::docker::quiesce::{run_hooks, Hook, Phase, Stopped};
use crate::repo::format::{ImageRecord, SourceKind, SourceRecord, Summary};
use crate::repo::index::KnownPacks;
use crate::repo::{Id, Index, RepoError, Repository, Snapshot};
use crate::source::exclude::{Excluded, RuleSet, Rules, CACHE_TAG_ORIGIN, CACHE_TAG_RULE};
use crate::source::walk::WalkOptions;
use crate::source::dump::{self, DumpStream, DumpTarget};
use crate::source::stream::ByteStream;
use crate::source::wire::{EventReader, EventWriter};
use crate::source::{walk, ChannelSink, ChannelSource, Event, EventSource};
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

    fn kind(&self) -> SourceKind {
        match self {
            Planned::Mount(m) => m.kind,
            Planned::Path(_) => SourceKind::Path,
        }
    }

    fn name(&self) -> String {
        match self {
            Planned::Mount(m) => m.name.clone(),
            Planned::Path(p) => p.display().to_string(),
        }
    }

    /// As its record will be labelled (`SourceRecord::label`).
    fn shown(&self) -> String {
        format!("{} {}", self.kind().as_str(), self.name())
    }

    fn files_cache(&self, config: &Config, repo: &Repository) -> FilesCache {
        FilesCache::new(FilesCache::path(config.cache_dir(), &repo.config.id, &self.key()))
    }

    /// The exclusion rules for this source: the configuration's, then those of each container that
    /// mounts it, matched as that container sees the mount.
    fn rules(&self, config: &Config) -> Vec<RuleSet> {
        let mut sets = Vec::new();
        if !config.exclude.is_empty() {
            sets.push(RuleSet { prefix: "/".into(), patterns: config.exclude.clone(), origin: "configuration".into() });
        }
        if let Planned::Mount(m) = self {
            sets.extend(m.rules.iter().cloned());
        }
        sets
    }
}

/// What a run will read: the engine (when Docker sources are selected), the databases to dump, the
/// sources, and how the stack is kept consistent while they are read.
struct Plan {
    engine: Option<Engine>,
    dumps: Vec<DumpTarget>,
    sources: Vec<Planned>,
    skipped: Vec<String>,
    stop: Vec<String>,
    hooks: Vec<Hook>,
    /// The selected containers, by name, whose definition a snapshot keeps.
    containers: Vec<String>,
}

async fn plan(config: &Config) -> Result<Plan, Error> {
    let mut sources = Vec::new();
    let mut skipped = Vec::new();
    let mut engine = None;
    let (mut dumps, mut stop, mut hooks, mut containers) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
        sources.extend(found.sources.into_iter().map(Planned::Mount));
        (dumps, stop, hooks, containers) = (found.dumps, found.stop, found.hooks, found.containers);
        engine = Some(started);
    }
    sources.extend(config.paths.iter().cloned().map(Planned::Path));
    for server in &config.databases {
        // A source's name starts with its container's or entry's: one name, one server.
        if dumps.iter().any(|d: &DumpTarget| d.container == server.name) {
            return Err(Error::Usage(format!("databases: {:?} is also the name of a selected container; name the entry otherwise", server.name)));
        }
        dumps.push(DumpTarget::over_network(server));
    }
    if sources.is_empty() && dumps.is_empty() {
        return Err(Error::Usage("nothing to back up: set docker.select (project or label), paths or databases in the configuration".into()));
    }
    Ok(Plan { engine, dumps, sources, skipped, stop, hooks, containers })
}

/// Where a backup stores its snapshot.
pub enum Destination {
    /// The configured target.
    Target,
    /// A staging area standing in for a target that cannot be written (`runner::staging`): a
    /// repository directory holding a copy of the target's config. Blobs the local index knows on
    /// the target are not stored again, except those in `absent` (staged for other pending snapshots).
    Staging { dir: PathBuf, absent: HashSet<Id> },
}

pub async fn backup(config: &Config, destination: &Destination) -> Result<BackupOutcome, Error> {
    let clock = Instant::now();
    let time = crate::now_rfc3339();
    let stack = config.stack()?.to_string();
    let (repo, offline) = match destination {
        Destination::Target => (crate::open_repository(config)?, None),
        Destination::Staging { dir, absent } => (crate::open_staging_repository(config, dir)?, Some(absent.clone())),
    };
    let repo = Arc::new(repo);
    check_recipients(config, &repo)?;
    let mut target_notes = match offline {
        None => repo.storage.check_writable(false)?,
        Some(_) => Vec::new(),
    };
    let Plan { engine, dumps, sources: planned, skipped, stop, hooks, containers } = plan(config).await?;
    let needs_version = |wanted: bool, version: u32, what: &str| match wanted && repo.config.version < version {
        true => Err(Error::Usage(format!(
            "the repository is in format version {}; {what} need version {version}: run `stackvault migrate` first (it replaces only the config, every snapshot stays readable)",
            repo.config.version
        ))),
        false => Ok(()),
    };
    needs_version(!dumps.is_empty(), 3, "database dumps")?;
    needs_version(config.images == ImagesMode::Include, 4, "images (images: include)")?;
    // The stack's definition, taken before anything is stopped (a stopped container's state would say so).
    let definition = match &engine {
        Some(engine) if repo.config.version >= 4 => Some(crate::stack::definition::capture(&engine.docker, &containers, engine.own_id()).await?),
        Some(_) => {
            target_notes.push(format!("the repository is in format version {}: snapshots keep no stack definition (whole-stack restore needs version 4): run `stackvault migrate`", repo.config.version));
            None
        }
        None => None,
    };
    // Reported with the run: an earlier run was killed while they were stopped.
    let restarted: Vec<String> = engine.iter().flat_map(|e| e.restarted.iter())
        .map(|c| format!("started again container {c}, which a killed run had left stopped for its backup")).collect();
    let engine = engine.map(Arc::new);
    if let Some(engine) = &engine {
        if let Err(e) = run_hooks(&engine.docker, &hooks, Phase::Pre).await {
            let _ = run_hooks(&engine.docker, &hooks, Phase::Post).await;
            engine.finish().await;
            return Err(e.into());
        }
    }

    let handle = Handle::current();
    let recipients = config.encryption.recipients.clone();
    let (stack_name, images) = (stack.clone(), config.images);
    let hostname = crate::hostname();
    let config = config.clone();
    let work_engine = engine.clone();
    // Whatever the archiving thread stops, this side starts again, however that thread ends.
    let stopped: Arc<std::sync::Mutex<Option<Stopped>>> = Arc::default();
    let stopped_slot = stopped.clone();
    let archived = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let engine = work_engine;
        let mut index = match (&offline, &repo.index_cache) {
            (Some(absent), Some(cache)) => Index::load_offline(repo.storage.as_ref(), cache, absent)?,
            _ => {
                let mut index = repo.load_index()?;
                index.keep_on_drop();
                index.set_aside(&crate::repo::marks::PruneMarks::read(repo.storage.as_ref())?.set_aside());
                index
            }
        };
        let known = index.known_packs();
        let mut archiver = Archiver::new(&mut index, &repo, recipients);
        let mut records = Vec::new();
        let mut caches = Vec::new();
        let mut unchanged_files = 0;
        let mut routes = Vec::new();
        let mut last_sizes = crate::progress::LastSizes::load(&config.cache_dir().join(&repo.config.id));
        let begin = |label: String| {
            let expected = last_sizes.sizes.get(&label).copied();
            crate::progress::begin(label, expected);
        };
        // Databases first, while every server runs.
        for target in &dumps {
            let engine = engine.as_deref();
            let jobs = handle.block_on(dump::plan_jobs(engine.map(|e| &e.docker), target)).map_err(|e| Error::source(format!("dump {}", target.container), e))?;
            for job in jobs {
                let shown = format!("dump {}", job.name());
                begin(shown.clone());
                let mut stream = DumpStream::start(&handle, engine, job.clone()).map_err(|e| Error::source(&shown, e))?;
                let archived = archiver.archive(&mut stream, &mut CacheLink::default()).map_err(|e| Error::archive(&shown, e))?;
                let mut record = SourceRecord::new(SourceKind::Dump, job.name(), archived.root);
                record.bytes = archived.stats.bytes;
                record.dump = stream.record.take();
                records.push(record);
                routes.push(stream.route().to_string());
            }
        }
        // The stack's definition and images before anything is stopped; listed after the data.
        let mut stack_records = Vec::new();
        let mut stack_routes = Vec::new();
        if let (Some(definition), Some(engine)) = (&definition, engine.as_deref()) {
            // Through a Value, whose maps are sorted: the Engine API's maps are HashMaps, and a quiet
            // night's definition must be the same bytes as the last one's.
            let canonical = serde_json::to_value(definition).expect("a stack definition serializes");
            let json = serde_json::to_vec_pretty(&canonical).expect("a JSON value serializes");
            let mut stream = ByteStream::new(std::io::Cursor::new(json), "the stack's definition");
            let archived = archiver.archive(&mut stream, &mut CacheLink::default()).map_err(|e| Error::archive("stack definition", e))?;
            let mut record = SourceRecord::new(SourceKind::Stack, stack_name.clone(), archived.root);
            record.bytes = archived.stats.bytes;
            stack_records.push(record);
            stack_routes.push(format!("from the Engine API: {} containers inspected", definition.containers.len()));
            if images == ImagesMode::Include {
                for image in &definition.images {
                    let shown = format!("image {}", image.reference);
                    // By reference where it still names this image, so that loading it restores the tag.
                    let by_reference = handle.block_on(engine.docker.inspect_image(&image.reference)).ok().and_then(|i| i.id) == Some(image.id.clone());
                    let name = if by_reference { &image.reference } else { &image.id };
                    let mut stream = ByteStream::new(crate::source::image::export(&handle, &engine.docker, name), &shown);
                    let archived = archiver.archive(&mut stream, &mut CacheLink::default()).map_err(|e| Error::archive(&shown, e))?;
                    let mut record = SourceRecord::new(SourceKind::Image, image.reference.clone(), archived.root);
                    record.bytes = archived.stats.bytes;
                    record.image = Some(ImageRecord { id: image.id.clone(), reference: image.reference.clone() });
                    stack_records.push(record);
                    stack_routes.push("from the engine's image export".into());
                }
            }
        }
        if !stop.is_empty() {
            let docker = &engine.as_ref().expect("containers to stop come from Docker").docker;
            let (done, result) = handle.block_on(Stopped::stop(docker, config.state_dir(), &stop));
            *stopped_slot.lock().expect("stopped containers") = Some(done);
            result?;
        }
        for source in planned {
            begin(format!("{} {}", source.kind().as_str(), source.name()));
            let cache = source.files_cache(&config, &repo);
            let rules = source.rules(&config);
            let reading = Reading { rules: &rules, cache_tags: config.exclude_caches(), read_content: true };
            let mut previous = cache.cursor(&known);
            let (mut next, mut cache_failed) = match cache.writer() {
                Ok(writer) => (Some(writer), None),
                Err(e) => (None, Some(e)),
            };
            let consume = |events: &mut dyn EventSource| {
                let mut link = CacheLink { previous: Some(&mut previous), next: next.as_mut(), failed: None };
                archiver.archive(events, &mut link).map(|archived| (archived, link.failed))
            };
            let ((archived, failed), route) = read_source(&handle, engine.as_deref(), &source, &cache, &known, &reading, consume)?;
            cache_failed = cache_failed.or(failed);
            routes.push(route);
            unchanged_files += archived.stats.unchanged_files;
            let mut in_force: Vec<String> = rules.iter().flat_map(|set| set.patterns.iter().map(move |p| format!("{}: {p}", set.origin))).collect();
            if config.exclude_caches() {
                in_force.push(format!("{CACHE_TAG_ORIGIN}: {CACHE_TAG_RULE}"));
            }
            let mount = match &source {
                Planned::Mount(m) => Some(m),
                Planned::Path(_) => None,
            };
            records.push(SourceRecord {
                kind: source.kind(),
                name: source.name(),
                root: archived.root,
                mounted_by: mount.map(|m| m.mounted_by.clone()).unwrap_or_default(),
                volume_driver: mount.and_then(|m| m.volume_driver.clone()),
                volume_labels: mount.map(|m| m.volume_labels.clone()).unwrap_or_default(),
                entries: archived.stats.entries,
                bytes: archived.stats.bytes,
                exclude_rules: in_force,
                excluded: archived.excluded,
                dump: None,
                image: None,
            });
            caches.push((next.filter(|_| cache_failed.is_none()), cache_failed));
        }
        crate::progress::end();
        last_sizes.sizes = records.iter().map(|r| (r.label(), r.bytes)).collect();
        last_sizes.save();
        records.append(&mut stack_records);
        routes.append(&mut stack_routes);
        let new_bytes = archiver.new_bytes;
        let finished = archiver.finish()?;
        Ok((repo, records, caches, unchanged_files, new_bytes, finished, index, routes, config, offline))
    })
    .await;
    let mut consistency = Vec::new();
    if let Some(engine) = &engine {
        let stopped = stopped.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(stopped) = stopped {
            consistency.extend(stopped.start_again(&engine.docker).await.err());
        }
        consistency.extend(run_hooks(&engine.docker, &hooks, Phase::Post).await.err());
        engine.finish().await;
    }
    // Even a panic of the archiving thread ends the run only once what it stopped runs again.
    let archived = archived.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    // A hook or a restart that failed fails the run; with a failed read, both are told.
    let consistency: Vec<String> = consistency.iter().map(|e| e.to_string()).collect();
    let archived = match (archived, consistency.is_empty()) {
        (Ok(archived), true) => archived,
        (Ok(_), false) => return Err(Error::Usage(consistency.join("; "))),
        (Err(e), true) => return Err(e),
        (Err(e), false) => return Err(Error::Usage(format!("{e}; and then: {}", consistency.join("; ")))),
    };
    let (repo, sources, caches, unchanged_files, new_bytes, Finished { report, packs, stored }, mut index, routes, config, offline) = archived;

    let summary = Summary {
        entries: sources.iter().map(|s| s.entries).sum(),
        bytes: sources.iter().map(|s| s.bytes).sum(),
        new_bytes,
        stored_bytes: report.stored_bytes,
        unchanged_files,
        new_packs: report.packs.len() as u64,
        duration_ms: clock.elapsed().as_millis() as u64,
    };
    let snapshot = Snapshot { version: repo.config.version, time, stack, hostname, program: crate::program(), sources, packs, summary };
    let id = repo.save_snapshot(&snapshot)?;
    let mut warnings: Vec<String> = restarted;
    warnings.extend(target_notes);
    if offline.is_some() {
        // The local caches keep describing the target: a staged snapshot's packs are not on it yet.
        return Ok(BackupOutcome { id, snapshot, skipped, warnings, routes });
    }
    // Only now: the cache describes what a snapshot holds.
    warnings.extend(caches
        .into_iter()
        .filter_map(|(writer, failed)| {
            let pack_of = |id: &Id| stored.position(id).map(|position| index.pack_at(position).0);
            failed.map_or_else(|| writer.and_then(|w| w.commit(&pack_of).err()), Some)
        })
        .map(|e| format!("files cache in {}: {e} (the next backup reads everything)", config.cache_dir().display()))
        );
    // Local caches only: what fails here costs the next run time, never this snapshot.
    warnings.extend(index.warning.clone());
    if let Err(e) = index.persist() {
        warnings.push(format!("{e} (the next backup reads this run's index objects again)"));
    }
    Ok(BackupOutcome { id, snapshot, skipped, warnings, routes })
}

/// What `backup --dry-run` found for one source: what a backup would read, take unchanged from the
/// files cache, and leave out. Nothing is read but metadata, nothing is written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceScan {
    pub kind: SourceKind,
    pub name: String,
    pub route: String,
    /// Entries below the source's root, as a snapshot counts them.
    pub entries: u64,
    pub files_to_read: u64,
    pub bytes_to_read: u64,
    pub unchanged_files: u64,
    pub unchanged_bytes: u64,
    pub excluded: Vec<Excluded>,
}

/// What `backup --dry-run` found: each source's scan, the mounts left out, and what a backup would
/// do besides reading (dump databases, run hooks, stop containers).
#[derive(Debug, serde::Serialize)]
pub struct DryRun {
    pub sources: Vec<SourceScan>,
    pub skipped: Vec<String>,
    pub actions: Vec<String>,
}

/// What a backup would reach, found by reaching it (the engine, each selected container, each
/// database server, which lists its databases) and changing nothing.
pub struct Reached {
    plan: Plan,
    /// What a backup would do besides reading, in order.
    pub actions: Vec<String>,
}

impl Reached {
    /// The selected containers and the database servers (by exec or over the network).
    pub fn counts(&self) -> (usize, usize) {
        (self.plan.containers.len(), self.plan.dumps.len())
    }

    /// Lets go of the engine (its exchange helper), as a run does at its end.
    pub async fn finish(self) {
        if let Some(engine) = self.plan.engine {
            engine.finish().await;
        }
    }
}

pub async fn reach(config: &Config) -> Result<Reached, Error> {
    let plan = plan(config).await?;
    let mut actions = Vec::new();
    for hook in plan.hooks.iter().filter(|h| h.pre.is_some()) {
        actions.push(format!("run the pre hook of container {}", hook.container));
    }
    // Asks each server for its databases: read-only, like the rest of a dry run.
    for target in &plan.dumps {
        let jobs = dump::plan_jobs(plan.engine.as_ref().map(|e| &e.docker), target).await.map_err(|e| Error::source(format!("dump {}", target.container), e))?;
        actions.extend(jobs.iter().map(|job| format!("dump {} ({}, {})", job.name(), target.spec.engine.as_str(), job.format.as_str())));
    }
    actions.extend(plan.stop.iter().map(|c| format!("stop container {c} while the mounts are read, then start it again")));
    for hook in plan.hooks.iter().filter(|h| h.post.is_some()) {
        actions.push(format!("run the post hook of container {}", hook.container));
    }
    Ok(Reached { plan, actions })
}

pub async fn dry_run(config: &Config) -> Result<DryRun, Error> {
    let repo = crate::open_repository(config)?;
    let reached = reach(config).await?;
    scan(config, repo, reached).await
}

/// Walks the metadata of every source `reached` found, against `repo`'s files caches and index:
/// what a backup would read and what it would find unchanged. Lets go of the engine at the end.
pub async fn scan(config: &Config, repo: Repository, reached: Reached) -> Result<DryRun, Error> {
    let Reached { plan: Plan { engine, sources, skipped, .. }, actions } = reached;
    let engine = engine.map(Arc::new);
    let handle = Handle::current();
    let config = config.clone();
    let work_engine = engine.clone();
    let scans = tokio::task::spawn_blocking(move || -> Result<Vec<SourceScan>, Error> {
        let engine = work_engine;
        // Writes nothing, not even the local index.
        let known = Index::listed_packs(repo.storage.as_ref())?;
        let mut scans = Vec::new();
        for source in &sources {
            let cache = source.files_cache(&config, &repo);
            let rules = source.rules(&config);
            let reading = Reading { rules: &rules, cache_tags: config.exclude_caches(), read_content: false };
            let mut scan = SourceScan {
                kind: source.kind(),
                name: source.name(),
                route: String::new(),
                entries: 0,
                files_to_read: 0,
                bytes_to_read: 0,
                unchanged_files: 0,
                unchanged_bytes: 0,
                excluded: Vec::new(),
            };
            let ((), route) = read_source(&handle, engine.as_deref(), source, &cache, &known, &reading, |events| tally_scan(events, &mut scan))?;
            scan.route = route;
            scans.push(scan);
        }
        Ok(scans)
    })
    .await
    .expect("dry-run thread panicked");
    if let Some(engine) = &engine {
        engine.finish().await;
    }
    Ok(DryRun { sources: scans?, skipped, actions })
}

/// Counts a metadata-only walk the way the archiver counts a real one (the root is not an entry).
fn tally_scan(events: &mut dyn EventSource, scan: &mut SourceScan) -> Result<(), ArchiveError> {
    let mut depth = 0usize;
    loop {
        let event = events.next_event()?;
        let below_root = depth > 0;
        match event {
            Event::Dir(_) => {
                scan.entries += below_root as u64;
                depth += 1;
            }
            Event::DirEnd => depth = depth.saturating_sub(1),
            Event::File(meta) => {
                scan.entries += below_root as u64;
                scan.files_to_read += 1;
                scan.bytes_to_read += meta.size;
            }
            Event::Reused(meta) => {
                scan.entries += below_root as u64;
                scan.unchanged_files += 1;
                scan.unchanged_bytes += meta.size;
            }
            Event::Leaf(_) => scan.entries += 1,
            Event::Data(_) | Event::FileEnd => {}
            Event::Excluded(list) => scan.excluded = list,
            Event::End => return Ok(()),
        }
    }
}

/// How to read a source: its exclusion rules, and whether content is read at all.
struct Reading<'r> {
    rules: &'r [RuleSet],
    cache_tags: bool,
    read_content: bool,
}

/// Hands the source's event stream to `consume`: walked in-process (a configured path, or a mount of
/// this very container), or by an agent in a helper. Returns what `consume` gives and how it was read.
fn read_source<T>(
    handle: &Handle,
    engine: Option<&Engine>,
    source: &Planned,
    cache: &FilesCache,
    known: &KnownPacks,
    reading: &Reading,
    consume: impl FnOnce(&mut dyn EventSource) -> Result<T, ArchiveError>,
) -> Result<(T, String), Error> {
    let shown = source.shown();
    let local = match source {
        Planned::Path(path) => Some((path.clone(), "in-process".to_string())),
        // Mounted into this very container: read in-process, no helper needed.
        Planned::Mount(m) => {
            engine.and_then(|e| e.own_path(m.kind, &m.name, false)).map(|p| (p.clone(), format!("in-process at {}", p.display())))
        }
    };
    if let Some((path, route)) = local {
        let rules = Rules::new(reading.rules, reading.cache_tags).map_err(|e| Error::source(&shown, e))?;
        let options = WalkOptions { rules: &rules, read_content: reading.read_content };
        let (tx, rx) = sync_channel(4);
        let consumed = std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut stamps = cache.cursor(known);
                let mut sink = ChannelSink::new(tx);
                let result = walk::walk(&path, &mut |p| stamps.lookup(p).map(|f| f.stamp), &options, &mut |event| sink.send(event));
                if let Err(e) = result {
                    sink.fail(e);
                }
            });
            consume(&mut ChannelSource::new(rx))
        });
        return consumed.map(|t| (t, route)).map_err(|e| Error::archive(&shown, e));
    }
    let (Planned::Mount(mount), Some(engine)) = (source, engine) else { unreachable!("only mounts come without a local path") };
    let route = format!("through a helper, {}", engine.route());
    read_mount(handle, engine, mount, &shown, cache.cursor(known), reading, consume).map(|t| (t, route))
}

/// Reads a volume or bind mount through a helper that runs the agent with the source mounted read-only:
/// first the stamps of the files cache go to the agent, then the tree comes back. Runs on a blocking
/// thread: the helper's streams are used with blocking calls, Docker is driven through `handle`.
fn read_mount<T>(
    handle: &Handle,
    engine: &Engine,
    mount: &MountSource,
    shown: &str,
    stamps: CacheCursor,
    reading: &Reading,
    consume: impl FnOnce(&mut dyn EventSource) -> Result<T, ArchiveError>,
) -> Result<T, Error> {
    let typ = if mount.kind == SourceKind::Volume { MountType::VOLUME } else { MountType::BIND };
    let source = Mount { typ: Some(typ), source: Some(mount.name.clone()), target: Some("/source".into()), read_only: Some(true), ..Default::default() };
    let mut args = vec!["agent".to_string(), "read".into(), "/source".into()];
    if !reading.rules.is_empty() {
        args.extend(["--rules".to_string(), serde_json::to_string(reading.rules).expect("rules serialize")]);
    }
    if reading.cache_tags {
        args.push("--exclude-caches".into());
    }
    if !reading.read_content {
        args.push("--dry-run".into());
    }
    let spec = HelperSpec { auto_remove: true, mounts: vec![source], binds: vec![], args, purpose: format!("backup of {shown}") };
    let (helper, io) = handle.block_on(Helper::start(engine, spec))?;
    let (reader, writer) = (io.reader, io.writer);
    let result = std::thread::scope(|scope| {
        // A separate thread, so that the stamps (streamed in walk order, as the agent reads them along its
        // walk) and the tree flow at the same time.
        let stamps = stamps.map(|f| (f.path, f.stamp));
        scope.spawn(move || EventWriter::new(std::io::BufWriter::with_capacity(1 << 20, writer)).write_stamps(stamps));
        consume(&mut EventReader::new(std::io::BufReader::with_capacity(1 << 20, reader)))
    });
    match result {
        // The tree ended with its end marker (an agent that fails says so in the stream instead): the
        // helper is done, and the engine removes it as it exits (the run waits for that at its end).
        Ok(consumed) => {
            helper.release();
            Ok(consumed)
        }
        Err(e) => {
            // The agent's own words, when it has any, say more than a broken stream does.
            let stderr = helper.stderr();
            handle.block_on(helper.abort());
            if matches!(e, ArchiveError::Repo(RepoError::Storage(_))) {
                return Err(Error::archive(shown, e));
            }
            let detail = if stderr.is_empty() { e.to_string() } else { format!("{e} (agent: {stderr})") };
            Err(Error::Source { source_name: shown.to_string(), message: detail })
        }
    }
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
