//! The restore command: replays a snapshot's trees as events into each source's place: a Docker
//! volume or bind mount through a helper running the agent (which writes safely, see
//! `source::apply`), a host path in-process, a database dump into its running server by exec
//! (`source::dump`), or everything under one directory with `--to`; `--only` picks sources.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bollard::models::{Mount, MountType, VolumeCreateRequest};
use tokio::runtime::Handle;

use crate::config::{Config, DatabaseConfig};
use crate::docker::engine::Engine;
use crate::docker::exec::Shell;
use crate::docker::helper::{Helper, HelperSpec};
use crate::repo::crypt::Identities;
use crate::repo::format::{DumpRecord, Node, SourceKind, SourceRecord};
use crate::repo::pack::BlobReader;
use crate::repo::tree::{check_snapshot, SnapshotWalk, Step};
use crate::repo::{Id, RepoError};
use crate::source::apply::{apply, ApplyReport};
use crate::source::dump;
use crate::source::wire::EventWriter;
use crate::source::{Event, EventSource, Meta, SourceError};
use crate::Error;

/// What a restore tells as it goes, for the command line to show: a step begins, writing `bytes`
/// where that is known (a volume, an image, a dump); `bytes_restored` counts what has been written.
pub enum Progress {
    Step { what: String, bytes: Option<u64> },
}

pub type Reporter = Arc<dyn Fn(Progress) + Send + Sync>;

static BYTES_RESTORED: AtomicU64 = AtomicU64::new(0);

/// Content bytes this process has replayed from snapshots so far.
pub fn bytes_restored() -> u64 {
    BYTES_RESTORED.load(Ordering::Relaxed)
}

/// A step of a restore, told to the reporter if there is one.
pub(crate) fn step(report: &Option<Reporter>, what: String, bytes: Option<u64>) {
    if let Some(report) = report {
        report(Progress::Step { what, bytes });
    }
}

#[derive(Default)]
pub struct RestoreOptions {
    pub snapshot: String,
    pub identity: Option<PathBuf>,
    /// Replace the contents of non-empty destinations.
    pub force: bool,
    /// Restore every source as a directory below this one instead of to its origin.
    pub to: Option<PathBuf>,
    /// Restore only these sources (all when empty).
    pub only: Vec<Only>,
    /// The engine to restore the stack onto, instead of docker.host.
    pub docker_host: Option<String>,
    /// Print the plan and change nothing.
    pub dry_run: bool,
    /// Restore the stack under this compose project name, beside the original.
    pub project: Option<String>,
    /// Stop and remove containers of the same names first, and overwrite their volumes.
    pub replace: bool,
    /// Told of each step as it begins.
    pub report: Option<Reporter>,
    /// A drill's restore: the stack cut off from everything (`StackDefinition::isolate`), every object
    /// it creates carrying these labels, and nothing that exists touched.
    pub isolate: Option<std::collections::BTreeMap<String, String>>,
}

/// `--only db:NAME`, `--only volume:NAME` or `--only container:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Only {
    /// A database name, or a compose service or container whose dumps are all restored.
    Db(String),
    Volume(String),
    /// A container of the stack's definition, re-created (with what it mounts and loads).
    Container(String),
}

impl std::str::FromStr for Only {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("db", name)) if !name.is_empty() => Ok(Only::Db(name.to_string())),
            Some(("volume", name)) if !name.is_empty() => Ok(Only::Volume(name.to_string())),
            Some(("container", name)) if !name.is_empty() => Ok(Only::Container(name.to_string())),
            _ => Err(format!("--only {text:?}: write db:NAME (a database, compose service or container), volume:NAME or container:NAME")),
        }
    }
}

impl Only {
    fn matches(&self, source: &SourceRecord) -> bool {
        match (self, &source.dump) {
            (Only::Volume(name), _) => source.kind == SourceKind::Volume && &source.name == name,
            (Only::Db(name), Some(dump)) => {
                [dump.database.as_ref(), dump.service.as_ref(), Some(&dump.container), Some(&source.name)].into_iter().flatten().any(|n| n == name)
            }
            (Only::Db(_), None) | (Only::Container(_), _) => false,
        }
    }
}

pub struct RestoredSource {
    pub source: String,
    pub destination: String,
    pub warnings: Vec<String>,
}

pub struct RestoreOutcome {
    pub snapshot: Id,
    pub restored: Vec<RestoredSource>,
    /// A whole-stack restore's plan, as carried out (or, with `--dry-run`, not).
    pub plan: Vec<String>,
    /// Each container started, and how it ended up ("healthy", "running").
    pub containers: std::collections::BTreeMap<String, String>,
    /// A whole-stack restore's time from start to every container running (healthy).
    pub recovery: Option<std::time::Duration>,
}

pub async fn restore(config: &Config, options: RestoreOptions) -> Result<RestoreOutcome, Error> {
    let repo = crate::open_repository(config)?;
    let (snapshot_id, snapshot) = repo.find_snapshot(&options.snapshot)?;
    let identities = options.identity.as_deref().map(Identities::load).transpose()?;
    let containers_only: Vec<&str> = options.only.iter().filter_map(|o| if let Only::Container(c) = o { Some(c.as_str()) } else { None }).collect();
    let whole_stack = options.to.is_none() && (options.only.is_empty() || !containers_only.is_empty()) && snapshot.sources.iter().any(|s| s.kind == SourceKind::Stack);
    if whole_stack {
        return crate::stack::restore::restore(config, repo, snapshot_id, snapshot, identities, options).await;
    }
    if options.dry_run || options.project.is_some() || options.replace || !containers_only.is_empty() {
        return Err(Error::Usage(format!(
            "--dry-run, --project, --replace and --only container: restore a whole stack, and snapshot {snapshot_id} keeps no stack definition (taken from paths only, or in a repository older than format version 4)"
        )));
    }
    if let Some(unmatched) = options.only.iter().find(|only| !snapshot.sources.iter().any(|s| only.matches(s))) {
        let has: Vec<String> = snapshot.sources.iter().map(|s| s.label()).collect();
        return Err(Error::Usage(format!("--only {unmatched:?} matches nothing in snapshot {snapshot_id}; it holds: {}", has.join(", "))));
    }
    // Without a stack to re-create, its definition and images have no place to go.
    let mut selected: Vec<SourceRecord> = snapshot
        .sources
        .iter()
        .filter(|s| !matches!(s.kind, SourceKind::Stack | SourceKind::Image))
        .filter(|s| options.only.is_empty() || options.only.iter().any(|only| only.matches(s)))
        .cloned()
        .collect();
    // Files and volumes first, databases after: a server whose data volume was restored can be running by then.
    selected.sort_by_key(|s| s.kind == SourceKind::Dump);
    let networked = config.databases.clone();
    let needs_docker = options.to.is_none() && selected.iter().any(|s| s.kind != SourceKind::Path && !s.dump.as_ref().is_some_and(|d| networked_server(&networked, d).is_some()));
    let engine = if needs_docker { Some(Engine::start(config).await?) } else { None };
    let handle = Handle::current();
    let restored = tokio::task::spawn_blocking(move || -> Result<RestoreOutcome, Error> {
        let index = repo.load_index()?;
        // Checked whole, like the identity, before any destination is touched.
        check_snapshot(&snapshot, &index, &repo.config).map_err(|e| RepoError::invalid(&snapshot_id, e))?;
        let mut reader = BlobReader::new(&repo, &index, identities.as_ref())?;
        let mut restored = Vec::new();
        for source in &selected {
            let shown = source.label();
            step(&options.report, format!("restoring {shown}"), Some(source.bytes));
            let local = match (&options.to, source.kind) {
                (Some(dir), _) => Some(dir.join(source.kind.as_str()).join(flatten_name(&source.name))),
                (None, SourceKind::Path) => Some(PathBuf::from(&source.name)),
                // Mounted writable into this very container: write in-process, no helper needed.
                (None, _) => engine.as_ref().and_then(|e| e.own_path(source.kind, &source.name, true)).filter(|_| !is_single_file(source)),
            };
            let (destination, report) = match local {
                Some(dest) => (dest.display().to_string(), restore_local(&mut reader, snapshot_id, source, &dest, options.force)?),
                None if source.kind == SourceKind::Dump => restore_dump(&handle, engine.as_ref(), &networked, &mut reader, snapshot_id, source, options.force, None)?,
                None => {
                    let engine = engine.as_ref().expect("connected for mount sources");
                    (shown.clone(), restore_mount(&handle, engine, &mut reader, snapshot_id, source, options.force)?)
                }
            };
            restored.push(RestoredSource { source: shown, destination, warnings: report });
        }
        Ok(RestoreOutcome { snapshot: snapshot_id, restored, plan: Vec::new(), containers: Default::default(), recovery: None })
    })
    .await
    .expect("restore thread panicked");
    // Restore helpers whose agents reported success are not waited for, but left to the engine's
    // auto-remove: their teardown syncs the host's filesystem (0.5-0.9 s for 500 MB here), the same
    // writeback a `tar -x` leaves to the kernel; the volumes are whole and usable already.
    restored
}

/// Loads a dump back into its database server: one of `networked` (the configured `databases:`)
/// when the dump came from that entry, else `server` where given, else the container of the same
/// compose service and project when one runs, else the container of the same name. Returns where it
/// went, and notes.
pub(crate) fn restore_dump(
    handle: &Handle,
    engine: Option<&Engine>,
    networked: &[DatabaseConfig],
    reader: &mut BlobReader,
    snapshot: Id,
    source: &SourceRecord,
    force: bool,
    server: Option<&str>,
) -> Result<(String, Vec<String>), Error> {
    let shown = source.label();
    let record = source.dump.as_ref().expect("a dump source has its record");
    let (shell, loader) = match networked_server(networked, record) {
        Some(entry) => {
            let target = dump::DumpTarget::over_network(entry);
            if target.spec.engine.as_str() != record.engine {
                return Err(Error::source(&shown, format!("the dump is {}'s, and databases entry {} is {}", record.engine, entry.name, target.spec.engine.as_str())));
            }
            (target.shell(None).map_err(|e| Error::source(&shown, e))?, dump::Loader { login: target.spec.login, restore_command: None })
        }
        None => {
            let engine = engine.ok_or_else(|| Error::source(&shown, format!("its server, container {}, runs on a Docker engine: set docker.host, or name it in databases: to restore over the network", record.container)))?;
            container_loader(handle, &engine.docker, record, server, &shown)?
        }
    };
    let mut replay = TreeReplay::new(reader, snapshot, source);
    let mut send = |input: &mut dyn std::io::Write| -> Result<(), Error> {
        while let Some(piece) = replay.next_piece(&shown)? {
            input.write_all(&piece).map_err(|e| Error::source(&shown, SourceError::Stream(e)))?;
        }
        Ok(())
    };
    let warnings = dump::restore(handle, &shell, record, &loader, force, &mut send)?;
    let destination = match &record.database {
        Some(db) => format!("database {db} in {}", shell.place()),
        None => shell.place(),
    };
    Ok((destination, warnings))
}

/// The `databases:` entry a dump was taken from over the network: of its name, and not a compose service's.
pub(crate) fn networked_server<'c>(networked: &'c [DatabaseConfig], record: &DumpRecord) -> Option<&'c DatabaseConfig> {
    networked.iter().find(|entry| entry.name == record.container && record.service.is_none())
}

/// The container to load a dump into, and its login as its own labels and environment say now.
pub(crate) fn container_loader(handle: &Handle, docker: &bollard::Docker, record: &DumpRecord, server: Option<&str>, shown: &str) -> Result<(Shell, dump::Loader), Error> {
    let container = match server {
        Some(server) => server.to_string(),
        None => handle.block_on(find_server(docker, record)).map_err(|e| Error::source(shown, e))?,
    };
    let inspected = handle.block_on(docker.inspect_container(&container, None)).map_err(crate::docker::DockerError::api(format!("inspecting container {container}")))?;
    let config = inspected.config.unwrap_or_default();
    let (labels, env) = (config.labels.unwrap_or_default(), config.env.unwrap_or_default());
    let engine_kind = dump::DumpEngine::parse(&record.engine).map_err(|e| Error::source(shown, e))?;
    // The login as this container's own labels and environment say now (passwords may have changed),
    // and for a command dump the restore command its label names: never one from the snapshot, which
    // whoever can write to the storage could have crafted.
    let live = dump::DumpSpec::from_labels(&labels, config.image.as_deref().unwrap_or_default(), &env);
    let loader = match live {
        Ok(Some(spec)) if spec.engine == engine_kind => dump::Loader { login: spec.login, restore_command: spec.restore_command },
        _ if engine_kind == dump::DumpEngine::Command => {
            return Err(Error::source(
                shown,
                format!("container {container} has no {}=command label with a {}: a command dump is loaded only by the command its container names", dump::LABEL_DUMP, dump::LABEL_RESTORE_COMMAND),
            ))
        }
        _ => {
            let login = dump::Login::resolve(engine_kind, None, None, None, dump::ContainerEnv(&env))
                .map_err(|(label, message)| Error::source(shown, format!("container {container}: {message} ({label})")))?;
            dump::Loader { login, restore_command: None }
        }
    };
    Ok((Shell::container(docker, &container), loader))
}

/// The running container to load a dump into.
async fn find_server(docker: &bollard::Docker, record: &DumpRecord) -> Result<String, String> {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    if let (Some(project), Some(service)) = (&record.project, &record.service) {
        let labels = vec![format!("com.docker.compose.project={project}"), format!("com.docker.compose.service={service}")];
        let filters = std::collections::HashMap::from([("label".to_string(), labels), ("status".to_string(), vec!["running".to_string()])]);
        let options = ListContainersOptionsBuilder::default().filters(&filters).build();
        let found = docker.list_containers(Some(options)).await.map_err(|e| format!("listing containers: {e}"))?;
        if let Some(name) = found.iter().filter_map(|c| c.names.as_ref()?.first()).map(|n| n.trim_start_matches('/').to_string()).min() {
            return Ok(name);
        }
    }
    match docker.inspect_container(&record.container, None).await {
        Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => Ok(record.container.clone()),
        _ => {
            let service = record.service.as_ref().map(|s| format!(" (compose service {s})")).unwrap_or_default();
            Err(format!(
                "its database server, container {}{service}, is not running here: start it first (e.g. `docker compose up -d {}`), then restore again",
                record.container,
                record.service.as_deref().unwrap_or(&record.container)
            ))
        }
    }
}

/// A host path as one directory name: `/srv/app data` becomes `srv_app data`.
fn flatten_name(name: &str) -> String {
    let flat = name.trim_matches('/').replace('/', "_");
    if flat.is_empty() || flat == "." || flat == ".." { "root".into() } else { flat }
}

/// A bind-mounted single file (an `nginx.conf`): its root node is the file itself.
fn is_single_file(source: &SourceRecord) -> bool {
    source.root.kind == crate::source::EntryKind::File
}

pub(crate) fn restore_local(reader: &mut BlobReader, snapshot: Id, source: &SourceRecord, dest: &Path, force: bool) -> Result<Vec<String>, Error> {
    let shown = &source.label();
    let folder = if is_single_file(source) { dest.parent().unwrap_or(Path::new("/")) } else { dest };
    std::fs::create_dir_all(folder).map_err(|e| Error::source(shown, SourceError::io(folder.display(), e)))?;
    let mut replay = TreeReplay::new(reader, snapshot, source);
    let report: ApplyReport = apply(dest, &mut replay, force).map_err(|e| replay.blame(e, shown))?;
    Ok(report.warnings)
}

pub(crate) fn restore_mount(handle: &Handle, engine: &Engine, reader: &mut BlobReader, snapshot: Id, source: &SourceRecord, force: bool) -> Result<Vec<String>, Error> {
    let docker = &engine.docker;
    let shown = &source.label();
    if source.kind == SourceKind::Volume {
        // Recreated with its driver and labels, so that compose adopts it as its own again.
        let exists = handle.block_on(docker.inspect_volume(&source.name)).is_ok();
        if !exists {
            let request = VolumeCreateRequest {
                name: Some(source.name.clone()),
                driver: source.volume_driver.clone(),
                labels: Some(source.volume_labels.clone().into_iter().collect()),
                ..Default::default()
            };
            handle
                .block_on(docker.create_volume(request))
                .map_err(crate::docker::DockerError::api(format!("creating volume {}", source.name)))?;
        }
    }
    // A single file is written into its folder (which the engine creates when missing), since
    // bind-mounting a missing file would make the engine create a directory in its place.
    let (mount_source, target) = match (is_single_file(source), Path::new(&source.name)) {
        (true, path) => match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => (parent.display().to_string(), format!("/target/{}", name.to_string_lossy())),
            _ => return Err(Error::source(shown, "a single file's host path has no folder and name")),
        },
        (false, _) => (source.name.clone(), "/target".to_string()),
    };
    let (mounts, binds) = if source.kind == SourceKind::Volume {
        (vec![Mount { typ: Some(MountType::VOLUME), source: Some(mount_source), target: Some("/target".into()), ..Default::default() }], vec![])
    } else {
        (vec![], vec![format!("{mount_source}:/target")])
    };
    let mut args = vec!["agent".to_string(), "write".into(), target];
    if force {
        args.push("--replace".into());
    }
    let spec = HelperSpec { auto_remove: true, mounts, binds, args, purpose: format!("restore of {shown}") };
    let (helper, io) = handle.block_on(Helper::start(engine, spec))?;
    let mut out = EventWriter::new(std::io::BufWriter::with_capacity(1 << 20, io.writer));
    let mut replay = TreeReplay::new(reader, snapshot, source);
    let sent = (|| -> Result<(), Error> {
        loop {
            let event = replay.next_event().map_err(|e| replay.blame(e, shown))?;
            let last = event == Event::End;
            out.write(&event).and_then(|_| if last { out.flush() } else { Ok(()) }).map_err(|e| Error::source(shown, SourceError::Stream(e)))?;
            if last {
                return Ok(());
            }
        }
    })();
    drop(out); // ends the agent's input
    // The agent's report, a few lines; bounded all the same.
    let mut report = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::Read::take(io.reader, 1 << 20), &mut report);
    let done = report.lines().last().is_some_and(|l| l.starts_with(crate::agent::WRITE_DONE));
    if sent.is_ok() && done {
        helper.release();
        return Ok(report.lines().filter(|l| l.starts_with("warning:")).map(str::to_string).collect());
    }
    match (sent, handle.block_on(helper.finish())) {
        // The repository at fault (an invalid snapshot) explains why the agent saw a truncated stream.
        (Err(e @ Error::Repo(_)), _) => Err(e),
        // The agent refusing (a non-empty volume, an unsafe name) explains a broken pipe; say that.
        (_, Err(agent)) => Err(agent.into()),
        (Err(e), Ok(_)) => Err(e),
        (Ok(()), Ok(stderr)) => Err(Error::source(shown, format!("the agent ended without its report ({stderr})"))),
    }
}

/// One source of a snapshot as the event stream it was archived from, reading blobs on demand. The
/// walk checks every rule of the format; a file's content must add up to its size before its end (and
/// so its final metadata) is sent.
pub(crate) struct TreeReplay<'r, 'a> {
    walk: SnapshotWalk<'r, 'a>,
    file: Option<OpenFile>,
    /// Set when the repository is at fault, so the caller reports that, not the consumer's reaction.
    failure: Option<RepoError>,
}

struct OpenFile {
    name: Vec<u8>,
    size: u64,
    blobs: std::vec::IntoIter<Id>,
    sent: u64,
}

impl<'r, 'a> TreeReplay<'r, 'a> {
    pub(crate) fn new(reader: &'r mut BlobReader<'a>, snapshot: Id, source: &SourceRecord) -> Self {
        TreeReplay { walk: SnapshotWalk::new(reader, snapshot, source), file: None, failure: None }
    }

    /// The next piece of a single-file source's content (a dump, an image, a stack definition), or
    /// `None` at its end.
    pub(crate) fn next_piece(&mut self, shown: &str) -> Result<Option<Vec<u8>>, Error> {
        loop {
            match self.next_event().map_err(|e| self.blame(e, shown))? {
                Event::Data(piece) => return Ok(Some(piece)),
                Event::End => return Ok(None),
                _ => {}
            }
        }
    }

    pub(crate) fn blame(&mut self, error: SourceError, shown: &str) -> Error {
        match self.failure.take() {
            Some(repo) => Error::Repo(repo),
            None => Error::source(shown, error),
        }
    }

    fn fail(&mut self, error: RepoError) -> SourceError {
        let message = error.to_string();
        self.failure = Some(error);
        SourceError::Malformed(message)
    }

    /// The open file's next piece, or its end. The size is checked before a piece that would pass it
    /// is sent, and before the end, which gives the file its final metadata.
    fn content(&mut self) -> Result<Event, RepoError> {
        let file = self.file.as_mut().expect("a file is open");
        let piece = match file.blobs.next() {
            Some(id) => Some(self.walk.reader().read(&id)?),
            None => None,
        };
        let sent = file.sent + piece.as_ref().map_or(0, |p| p.len() as u64);
        BYTES_RESTORED.fetch_add(piece.as_ref().map_or(0, |p| p.len() as u64), Ordering::Relaxed);
        if sent > file.size || (piece.is_none() && sent != file.size) {
            let held = if piece.is_some() { "at least " } else { "" };
            let path = self.walk.path(&file.name);
            return Err(self.walk.invalid(format!("file {path}: its blobs hold {held}{sent} bytes, its size says {}", file.size)));
        }
        file.sent = sent;
        Ok(match piece {
            Some(data) => Event::Data(data),
            None => {
                self.file = None;
                Event::FileEnd
            }
        })
    }

    fn step(&mut self) -> Result<Event, RepoError> {
        if self.file.is_some() {
            return self.content();
        }
        Ok(match self.walk.step()? {
            Step::Enter(node) => Event::Dir(meta_of(&node)),
            Step::Leave => Event::DirEnd,
            Step::File(node) => {
                let blobs = node.content.clone().into_iter();
                self.file = Some(OpenFile { name: node.name.clone(), size: node.size, blobs, sent: 0 });
                Event::File(meta_of(&node))
            }
            Step::Leaf(node) => Event::Leaf(meta_of(&node)),
            Step::Shared(_) => unreachable!("a restore walks every path"),
            Step::End => Event::End,
        })
    }
}

fn meta_of(node: &Node) -> Meta {
    Meta {
        name: node.name.clone(),
        kind: node.kind,
        mode: node.mode,
        uid: node.uid,
        gid: node.gid,
        mtime_ns: node.mtime_ns,
        size: node.size,
        rdev: node.rdev,
        target: node.target.clone(),
        xattrs: node.xattrs.iter().map(|x| (x.name.clone(), hex::decode(&x.value).unwrap_or_default())).collect(),
        ctime_ns: 0,
        ino: 0,
    }
}

impl EventSource for TreeReplay<'_, '_> {
    fn next_event(&mut self) -> Result<Event, SourceError> {
        self.step().map_err(|e| self.fail(e))
    }
}
