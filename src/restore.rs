//! The restore command: replays a snapshot's trees as events into each source's place: a Docker
//! volume or bind mount through a helper running the agent (which writes safely, see
//! `source::apply`), a host path in-process, or everything under one directory with `--to`.

use std::path::{Path, PathBuf};

use bollard::models::{Mount, MountType, VolumeCreateRequest};
use tokio::runtime::Handle;

use crate::config::Config;
use crate::docker::engine::Engine;
use crate::docker::helper::{Helper, HelperSpec};
use crate::repo::crypt::Identities;
use crate::repo::format::{Node, SourceKind, SourceRecord, Tree};
use crate::repo::pack::BlobReader;
use crate::repo::{Id, RepoError};
use crate::source::apply::{apply, ApplyReport};
use crate::source::wire::EventWriter;
use crate::source::{Event, EventSource, Meta, SourceError};
use crate::Error;

pub struct RestoreOptions {
    pub snapshot: String,
    pub identity: Option<PathBuf>,
    /// Replace the contents of non-empty destinations.
    pub force: bool,
    /// Restore every source as a directory below this one instead of to its origin.
    pub to: Option<PathBuf>,
}

pub struct RestoredSource {
    pub source: String,
    pub destination: String,
    pub warnings: Vec<String>,
}

pub struct RestoreOutcome {
    pub snapshot: Id,
    pub restored: Vec<RestoredSource>,
}

pub async fn restore(config: &Config, options: RestoreOptions) -> Result<RestoreOutcome, Error> {
    let repo = crate::open_repository(config)?;
    let (snapshot_id, snapshot) = repo.find_snapshot(&options.snapshot)?;
    let identities = options.identity.as_deref().map(Identities::load).transpose()?;
    let needs_docker = options.to.is_none() && snapshot.sources.iter().any(|s| s.kind != SourceKind::Path);
    let engine = if needs_docker { Some(Engine::start(config).await?) } else { None };
    let handle = Handle::current();
    tokio::task::spawn_blocking(move || -> Result<RestoreOutcome, Error> {
        let index = repo.load_index()?;
        // Checks the identity before any destination is touched.
        let mut reader = BlobReader::new(&repo, &index, identities.as_ref())?;
        let mut restored = Vec::new();
        for source in &snapshot.sources {
            let shown = format!("{} {}", kind_name(source.kind), source.name);
            let local = match (&options.to, source.kind) {
                (Some(dir), _) => Some(dir.join(kind_name(source.kind)).join(flatten_name(&source.name))),
                (None, SourceKind::Path) => Some(PathBuf::from(&source.name)),
                // Mounted writable into this very container: write in-process, no helper needed.
                (None, _) => engine.as_ref().and_then(|e| e.own_path(source.kind, &source.name, true)).filter(|_| !is_single_file(source)),
            };
            let (destination, report) = match local {
                Some(dest) => (dest.display().to_string(), restore_local(&mut reader, source, &dest, options.force, &shown)?),
                None => {
                    let engine = engine.as_ref().expect("connected for mount sources");
                    (shown.clone(), restore_mount(&handle, engine, &mut reader, source, options.force, &shown)?)
                }
            };
            restored.push(RestoredSource { source: shown, destination, warnings: report });
        }
        Ok(RestoreOutcome { snapshot: snapshot_id, restored })
    })
    .await
    .expect("restore thread panicked")
}

fn kind_name(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Volume => "volume",
        SourceKind::Bind => "bind",
        SourceKind::Path => "path",
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

fn restore_local(reader: &mut BlobReader, source: &SourceRecord, dest: &Path, force: bool, shown: &str) -> Result<Vec<String>, Error> {
    let folder = if is_single_file(source) { dest.parent().unwrap_or(Path::new("/")) } else { dest };
    std::fs::create_dir_all(folder).map_err(|e| Error::source(shown, SourceError::io(folder.display(), e)))?;
    let mut replay = TreeReplay::new(reader, &source.root);
    let report: ApplyReport = apply(dest, &mut replay, force).map_err(|e| replay.blame(e, shown))?;
    Ok(report.warnings)
}

fn restore_mount(handle: &Handle, engine: &Engine, reader: &mut BlobReader, source: &SourceRecord, force: bool, shown: &str) -> Result<Vec<String>, Error> {
    let docker = &engine.docker;
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
    let mut replay = TreeReplay::new(reader, &source.root);
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
        // The agent refusing (a non-empty volume, an unsafe name) explains a broken pipe; say that.
        (_, Err(agent)) => Err(agent.into()),
        (Err(e), Ok(_)) => Err(e),
        (Ok(()), Ok(stderr)) => Err(Error::source(shown, format!("the agent ended without its report ({stderr})"))),
    }
}

/// A snapshot's tree as the event stream it was archived from, reading blobs on demand.
struct TreeReplay<'r, 'a> {
    reader: &'r mut BlobReader<'a>,
    root: Option<Node>,
    /// The open directories' remaining entries.
    open: Vec<std::vec::IntoIter<Node>>,
    content: Option<std::vec::IntoIter<Id>>,
    /// Set when a blob could not be read, so the caller reports the repository's error, not the
    /// consumer's reaction to it.
    failure: Option<RepoError>,
}

impl<'r, 'a> TreeReplay<'r, 'a> {
    fn new(reader: &'r mut BlobReader<'a>, root: &Node) -> Self {
        TreeReplay { reader, root: Some(root.clone()), open: Vec::new(), content: None, failure: None }
    }

    fn blame(&mut self, error: SourceError, shown: &str) -> Error {
        match self.failure.take() {
            Some(repo) => Error::Repo(repo),
            None => Error::source(shown, error),
        }
    }

    fn load_tree(&mut self, node: &Node) -> Result<std::vec::IntoIter<Node>, SourceError> {
        let id = node.subtree.ok_or_else(|| SourceError::Malformed(format!("directory {} has no subtree", String::from_utf8_lossy(&node.name))))?;
        let bytes = self.read(&id)?;
        let tree: Tree = serde_json::from_slice(&bytes).map_err(|e| SourceError::Malformed(format!("tree {id}: {e}")))?;
        Ok(tree.nodes.into_iter())
    }

    fn read(&mut self, id: &Id) -> Result<Vec<u8>, SourceError> {
        self.reader.read(id).map_err(|e| {
            let message = e.to_string();
            self.failure = Some(e);
            SourceError::Malformed(message)
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
        if let Some(root) = self.root.take() {
            if root.kind == crate::source::EntryKind::File {
                // A single-file source: the root is the file.
                self.content = Some(root.content.clone().into_iter());
                return Ok(Event::File(meta_of(&root)));
            }
            let entries = self.load_tree(&root)?;
            self.open.push(entries);
            return Ok(Event::Dir(meta_of(&root)));
        }
        if let Some(content) = self.content.as_mut() {
            return match content.next() {
                Some(id) => Ok(Event::Data(self.read(&id)?)),
                None => {
                    self.content = None;
                    Ok(Event::FileEnd)
                }
            };
        }
        let Some(entries) = self.open.last_mut() else { return Ok(Event::End) };
        let Some(node) = entries.next() else {
            self.open.pop();
            return Ok(Event::DirEnd);
        };
        Ok(match node.kind {
            crate::source::EntryKind::Dir => {
                let entries = self.load_tree(&node)?;
                self.open.push(entries);
                Event::Dir(meta_of(&node))
            }
            crate::source::EntryKind::File => {
                self.content = Some(node.content.clone().into_iter());
                Event::File(meta_of(&node))
            }
            _ => Event::Leaf(meta_of(&node)),
        })
    }
}
