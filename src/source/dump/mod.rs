//! Database dumps: the second kind of source, a byte stream. A container labelled `stackvault.dump`
//! has its databases dumped by the server's own tools, run inside it through the exec API; each dump's
//! stdout flows straight into the chunker as a single file's content, and counts only once the tool
//! exited 0, wrote something, and the stream passed its engine's completion check ([`sqldump`],
//! [`pgcustom`], a trailer, or the label's check command). Restore streams it back the same way.

pub mod engine;
pub mod pgcustom;
pub mod sqldump;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bollard::models::{Mount, MountType};
use tokio::runtime::Handle;

use super::{Event, EventSource, SourceError};
use crate::docker::exec::{Exec, ExecIo, ExecSpec, Shell};
use crate::docker::engine::Engine;
use crate::docker::helper::{Helper, HelperSpec};
use crate::docker::stdio::ChannelWriter;
use crate::docker::DockerError;
use crate::repo::format::DumpRecord;
pub use engine::{ContainerEnv, DumpEngine, Login, Password, ServerAddress};

pub const LABEL_DUMP: &str = "stackvault.dump";
pub const LABEL_DATABASES: &str = "stackvault.dump.databases";
pub const LABEL_COMMAND: &str = "stackvault.dump.command";
pub const LABEL_RESTORE_COMMAND: &str = "stackvault.dump.restore-command";
pub const LABEL_CHECK_COMMAND: &str = "stackvault.dump.check-command";
pub const LABEL_VOLUMES: &str = "stackvault.dump.volumes";
pub const LABEL_USER: &str = "stackvault.dump.user";
pub const LABEL_PASSWORD_ENV: &str = "stackvault.dump.password-env";
pub const LABEL_PASSWORD_FILE: &str = "stackvault.dump.password-file";

/// What a container's labels ask to be dumped, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpSpec {
    pub engine: DumpEngine,
    /// The databases to dump; every user database when `None`.
    pub databases: Option<Vec<String>>,
    /// For `command` dumps: the dump, restore and optional check commands.
    pub command: Option<String>,
    pub restore_command: Option<String>,
    pub check_command: Option<String>,
    /// Back up the server's data directory too (`stackvault.dump.volumes=include`).
    pub include_volumes: bool,
    pub login: Login,
}

/// A container to dump, as discovery found it, or a server reached over the network (a `databases:`
/// entry: its login has the server's address, and `container` is the entry's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpTarget {
    pub container: String,
    pub service: Option<String>,
    pub project: Option<String>,
    pub spec: DumpSpec,
    /// Where its dumps can leave it without the engine's exec stream (see [`DumpStream`]).
    pub relay: Option<RelayMount>,
}

/// A writable mount of the database container that a helper can mount too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayMount {
    /// A volume (else a bind mount).
    pub volume: bool,
    /// The volume's name, or the bind mount's host path.
    pub source: String,
    /// Where the database container has it.
    pub destination: String,
}

impl DumpTarget {
    /// For messages: "container calls-db", "database server cc at mariadb.cc.svc:3306".
    pub fn place(&self) -> String {
        match &self.spec.login.server {
            Some(address) => format!("database server {} at {address}", self.container),
            None => format!("container {}", self.container),
        }
    }

    /// A `databases:` entry: its tools run here and reach the server at its address.
    pub fn over_network(server: &crate::config::DatabaseConfig) -> DumpTarget {
        let engine = server.engine;
        let (admin_user, default_port) = if engine == DumpEngine::Postgres { ("postgres", 5432) } else { ("root", 3306) };
        let user = server.user.clone().unwrap_or_else(|| admin_user.to_string());
        let password = match (&server.password_file, &server.password_env) {
            (Some(path), _) => Password::File(path.display().to_string()),
            (None, Some(name)) => Password::Env(name.clone()),
            (None, None) => Password::None,
        };
        let address = match (server.host.starts_with('/'), server.port) {
            // PostgreSQL names its socket after its port: a directory and a port name the socket.
            (true, Some(port)) if engine == DumpEngine::Postgres && !server.host.contains(".s.PGSQL.") => {
                ServerAddress::Socket(format!("{}/.s.PGSQL.{port}", server.host.trim_end_matches('/')))
            }
            (true, _) => ServerAddress::Socket(server.host.clone()),
            (false, port) => ServerAddress::Tcp { host: server.host.clone(), port: port.unwrap_or(default_port) },
        };
        let login = Login { admin: user == admin_user, user: Some(user), password, server: Some(address) };
        let spec = DumpSpec { engine, databases: server.databases.clone(), command: None, restore_command: None, check_command: None, include_volumes: false, login };
        DumpTarget { container: server.name.clone(), service: None, project: None, spec, relay: None }
    }

    /// Where its scripts run: in its container, or here for a server over the network.
    pub fn shell(&self, docker: Option<&bollard::Docker>) -> Result<Shell, SourceError> {
        match (&self.spec.login.server, docker) {
            (Some(_), _) => Ok(Shell::Local { server: self.place() }),
            (None, Some(docker)) => Ok(Shell::container(docker, &self.container)),
            (None, None) => Err(SourceError::Dump(format!("dump of {}: no Docker engine to exec in", self.place()))),
        }
    }
}

impl DumpSpec {
    /// Reads a container's `stackvault.dump*` labels; `None` when it has no `stackvault.dump`.
    /// `image` and `env` (its environment, `NAME=value`) tell `auto` the engine and where the
    /// credentials are; values are read only for user names and PGDATA, never for passwords.
    pub fn from_labels(labels: &std::collections::HashMap<String, String>, image: &str, env: &[String]) -> Result<Option<DumpSpec>, (&'static str, String)> {
        let Some(kind) = labels.get(LABEL_DUMP).map(|k| k.trim()) else {
            for label in [LABEL_DATABASES, LABEL_COMMAND, LABEL_RESTORE_COMMAND, LABEL_CHECK_COMMAND, LABEL_VOLUMES, LABEL_USER, LABEL_PASSWORD_ENV, LABEL_PASSWORD_FILE] {
                if labels.contains_key(label) {
                    return Err((label, format!("set {LABEL_DUMP} too (mariadb, mysql, postgres, auto or command), or remove it")));
                }
            }
            return Ok(None);
        };
        let env = ContainerEnv(env);
        let engine = match kind {
            "auto" => DumpEngine::detect(image, env).map_err(|e| (LABEL_DUMP, e))?,
            other => DumpEngine::parse(other).map_err(|e| (LABEL_DUMP, e))?,
        };
        let text = |label: &'static str| labels.get(label).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let databases = text(LABEL_DATABASES).map(|list| {
            let mut names: Vec<String> = Vec::new();
            for name in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
            names
        });
        let include_volumes = match text(LABEL_VOLUMES).as_deref() {
            None | Some("exclude") => false,
            Some("include") => true,
            Some(other) => return Err((LABEL_VOLUMES, format!("{other:?} is not include or exclude"))),
        };
        let (command, restore_command, check_command) = (text(LABEL_COMMAND), text(LABEL_RESTORE_COMMAND), text(LABEL_CHECK_COMMAND));
        if engine == DumpEngine::Command {
            if command.is_none() {
                return Err((LABEL_COMMAND, format!("{LABEL_DUMP}=command needs the command whose stdout is the dump")));
            }
            if restore_command.is_none() {
                return Err((LABEL_RESTORE_COMMAND, "a command dump needs the command that loads it back from stdin: a backup that cannot be restored is not one".into()));
            }
        } else {
            for (label, value) in [(LABEL_COMMAND, &command), (LABEL_RESTORE_COMMAND, &restore_command), (LABEL_CHECK_COMMAND, &check_command)] {
                if value.is_some() {
                    return Err((label, format!("only for {LABEL_DUMP}=command; {} dumps are checked by stackvault", engine.as_str())));
                }
            }
        }
        let login = Login::resolve(engine, text(LABEL_USER), text(LABEL_PASSWORD_ENV), text(LABEL_PASSWORD_FILE), env)?;
        Ok(Some(DumpSpec { engine, databases, command, restore_command, check_command, include_volumes, login }))
    }
}

/// One stream a target's dump is made of: a database, the server's users and roles, or the command's output.
#[derive(Debug, Clone)]
pub struct DumpJob {
    pub target: DumpTarget,
    pub database: Option<String>,
    pub format: engine::DumpFormat,
    /// What the server said before the dump: its version, its log position, whether it writes a binlog.
    pub server: engine::ServerInfo,
}

impl DumpJob {
    /// The source's name in the snapshot: `container/database`, or `container` for the users and
    /// roles (or a command's output): no database's name can take the latter's.
    pub fn name(&self) -> String {
        match &self.database {
            Some(db) => format!("{}/{db}", self.target.container),
            None => self.target.container.clone(),
        }
    }

    pub fn describe(&self) -> String {
        let place = self.target.place();
        match &self.database {
            Some(db) => format!("dump of database {db} in {place}"),
            None if self.format == engine::DumpFormat::Command => format!("dump command in {place}"),
            None => format!("dump of users and roles in {place}"),
        }
    }
}

/// Asks the server what to dump: its databases (all user databases, or those the label names, which
/// must exist) and what it says of itself. One job per database, plus the server's users and roles.
pub async fn plan_jobs(docker: Option<&bollard::Docker>, target: &DumpTarget) -> Result<Vec<DumpJob>, SourceError> {
    let spec = &target.spec;
    if spec.engine == DumpEngine::Command {
        let server = engine::ServerInfo::default();
        return Ok(vec![DumpJob { target: target.clone(), database: None, format: engine::DumpFormat::Command, server }]);
    }
    let shell = target.shell(docker)?;
    let (server, existing) = engine::inspect_server(&shell, target).await.map_err(|e| {
        let what = match &spec.databases {
            Some(names) => format!("dump of database {} in {}", names.join(", "), target.place()),
            None => format!("dump of the databases in {}", target.place()),
        };
        SourceError::Dump(format!("{what} failed: {e}"))
    })?;
    let databases = match &spec.databases {
        None => existing,
        Some(wanted) => {
            if let Some(missing) = wanted.iter().find(|w| !existing.contains(w)) {
                let asked_by = if target.spec.login.server.is_some() { "databases" } else { LABEL_DATABASES };
                return Err(SourceError::Dump(format!("{}: database {missing:?} ({asked_by}) does not exist; it has {}", target.place(), existing.join(", "))));
            }
            wanted.clone()
        }
    };
    let mut jobs = Vec::new();
    if let Some(format) = spec.engine.globals_format(&spec.login) {
        jobs.push(DumpJob { target: target.clone(), database: None, format, server: server.clone() });
    }
    for database in databases {
        jobs.push(DumpJob { target: target.clone(), database: Some(database), format: spec.engine.database_format(), server: server.clone() });
    }
    Ok(jobs)
}

/// How a dump's stream is checked as it passes.
enum Check {
    Sql(sqldump::SqlDumpCheck),
    PgCustom(pgcustom::CustomArchiveCheck),
    Trailer(engine::TrailerCheck),
    /// The label's check command, fed the same bytes on its stdin; its output is drained beside.
    Command { checker: Exec, input: ChannelWriter, drained: std::thread::JoinHandle<()> },
    None,
}

#[derive(PartialEq, Eq)]
enum Stage {
    Start,
    Content,
    Ended,
    Done,
}

/// One running dump as a single file's events: its stdout is the content; the end comes only after
/// the exit code and the checks said the dump is whole (otherwise the stream fails, and so the run).
///
/// The engine's exec stream costs most of a core at a few hundred MB/s (docs/ARCHITECTURE.md). When
/// the engine has an exchange socket and the database container a writable mount, the dump goes
/// around it: the tool writes into a FIFO made in that mount, and a helper that mounts it too relays
/// the bytes to the sidecar over the exchange socket, as volumes travel.
pub struct DumpStream<'h> {
    handle: &'h Handle,
    job: DumpJob,
    exec: Exec,
    stdout: Box<dyn Read + Send>,
    relay: Option<Relay>,
    route: String,
    check: Check,
    stage: Stage,
    /// Read so far; shared with the relay's watch.
    bytes: Arc<AtomicU64>,
    /// What the dump said of itself, once it ended well.
    pub record: Option<DumpRecord>,
}

/// Content is handed on in pieces of up to this many bytes.
const PIECE: usize = 1 << 20;

impl<'h> DumpStream<'h> {
    /// `engine`: the Docker engine the target's container runs on; `None` for a server over the network.
    pub fn start(handle: &'h Handle, engine: Option<&Engine>, job: DumpJob) -> Result<Self, SourceError> {
        let shell = job.target.shell(engine.map(|e| &e.docker))?;
        let check = match job.format {
            engine::DumpFormat::PgCustom => Check::PgCustom(pgcustom::CustomArchiveCheck::new()),
            engine::DumpFormat::SqlGlobals if job.target.spec.engine == DumpEngine::Postgres => Check::Trailer(engine::TrailerCheck::pg_globals()),
            engine::DumpFormat::Sql | engine::DumpFormat::SqlGlobals => Check::Sql(sqldump::SqlDumpCheck::new()),
            // Started before the dump, so that a checker that cannot start leaves no dump running.
            engine::DumpFormat::Command => match &job.target.spec.check_command {
                Some(command) => {
                    let spec = ExecSpec { shell: shell.clone(), script: command.clone(), env: Vec::new(), stdin: true, purpose: format!("check command of the dump in {}", job.target.place()) };
                    let (checker, io) = handle.block_on(Exec::start(spec))?;
                    Check::Command { checker, input: io.stdin.expect("attached stdin"), drained: io.stdout.drain_beside() }
                }
                None => Check::None,
            },
        };
        let mut script = engine::dump_script(&shell, &job);
        // Without a way around the exec stream (no exchange, no mount, no mkfifo), the stream it is.
        let relay = match (&job.target.relay, engine) {
            (Some(mount), Some(engine)) if engine.exchange().is_some() => handle.block_on(Relay::start(engine, &job, mount)),
            _ => None,
        };
        if let Some((relay, ..)) = &relay {
            // The shell's first act: open the FIFO (it waits for the helper's reader).
            script.script = format!("exec > \"$SV_FIFO\" || exit 3; {}", script.script);
            script.env.push(format!("SV_FIFO={}", relay.fifo));
        }
        let started = handle.block_on(Exec::start(script));
        let (exec, ExecIo { stdout, .. }) = match started {
            Ok(started) => started,
            Err(e) => {
                if let Check::Command { checker, .. } = &check {
                    handle.block_on(checker.stop());
                }
                if let Some((relay, ..)) = relay {
                    handle.block_on(relay.abort());
                }
                return Err(e.into());
            }
        };
        let route = match (&relay, &job.target.spec.login.server) {
            (Some((relay, ..)), _) => format!("by exec in container {}, through a FIFO in {}", job.target.container, relay.shown),
            (None, Some(address)) => format!("over the network from {address}, by {}", job.format.tool(job.target.spec.engine)),
            (None, None) => format!("by exec in container {}", job.target.container),
        };
        let bytes = Arc::new(AtomicU64::new(0));
        let (stdout, relay): (Box<dyn Read + Send>, _) = match relay {
            Some((relay, reader, socket)) => {
                if let Some(socket) = socket {
                    watch_relay(handle.clone(), exec.probe(), socket, bytes.clone());
                }
                (reader, Some(relay))
            }
            None => (Box::new(stdout), None),
        };
        Ok(DumpStream { handle, job, exec, stdout, relay, route, check, stage: Stage::Start, bytes, record: None })
    }

    /// How the dump's bytes travel, for the run's report.
    pub fn route(&self) -> &str {
        &self.route
    }

    fn failed(&self, message: impl std::fmt::Display) -> SourceError {
        SourceError::Dump(format!("{} failed: {message}; no snapshot was written", self.job.describe()))
    }

    fn content(&mut self) -> Result<Event, SourceError> {
        let mut piece = Vec::with_capacity(PIECE);
        // Up to a piece, or the end: the engine delivers the stream in batches of various sizes.
        if let Err(e) = (&mut self.stdout).take(PIECE as u64).read_to_end(&mut piece) {
            return Err(self.failed(format!("reading its output: {e}")));
        }
        let filled = piece.len();
        if filled == 0 {
            return self.end();
        }
        self.bytes.fetch_add(filled as u64, Ordering::Relaxed);
        match &mut self.check {
            Check::Sql(check) => check.feed(&piece),
            Check::PgCustom(check) => check.feed(&piece).map_err(|e| self.failed(format!("its output is not a complete pg_dump archive: {e}")))?,
            Check::Trailer(check) => check.feed(&piece),
            // A check command that stopped reading is judged by its exit code at the end.
            Check::Command { input, .. } => {
                let _ = input.write_all(&piece);
            }
            Check::None => {}
        }
        Ok(Event::Data(piece))
    }

    /// The output ended: the dump counts only if the tool exited 0, wrote something, and the check passed.
    fn end(&mut self) -> Result<Event, SourceError> {
        self.stage = Stage::Ended;
        let code = self.handle.block_on(self.exec.exit_code()).map_err(|e| self.failed(e))?;
        if let Some(relay) = self.relay.take() {
            self.handle.block_on(relay.finish());
        }
        let tool = self.job.format.tool(self.job.target.spec.engine);
        if code != 0 {
            let last = self.exec.last_stderr_line();
            let said = if last.is_empty() { String::new() } else { format!(": {last}") };
            return Err(self.failed(format!("{tool} exited with status {code}{said}")));
        }
        if self.bytes.load(Ordering::Relaxed) == 0 {
            return Err(self.failed(format!("{tool} exited 0 but wrote nothing")));
        }
        let mut record = DumpRecord {
            engine: self.job.target.spec.engine.as_str().into(),
            format: self.job.format.as_str().into(),
            container: self.job.target.container.clone(),
            service: self.job.target.service.clone(),
            project: self.job.target.project.clone(),
            database: self.job.database.clone(),
            server_version: self.job.server.version.clone(),
            position: self.job.server.position.clone(),
            tables: BTreeMap::new(),
            restore_command: self.job.target.spec.restore_command.clone(),
        };
        match std::mem::replace(&mut self.check, Check::None) {
            Check::Sql(check) => {
                let summary = check.finish().map_err(|e| self.failed(e))?;
                record.server_version = summary.server_version.or(record.server_version);
                record.position = summary.position.or(record.position);
                record.tables = summary.tables;
            }
            Check::PgCustom(check) => {
                let summary = check.finish().map_err(|e| self.failed(format!("its output is not a complete pg_dump archive: {e}")))?;
                record.server_version = Some(summary.server_version);
                record.tables = summary.tables;
            }
            Check::Trailer(check) => check.finish().map_err(|e| self.failed(e))?,
            Check::Command { checker, mut input, drained } => {
                // Its last bytes, then the end of its input; it has ended when its output has.
                let _ = input.flush();
                drop(input);
                let _ = drained.join();
                let checked = self.handle.block_on(checker.exit_code()).map_err(|e| self.failed(e))?;
                if checked != 0 {
                    return Err(self.failed(format!("its check command exited with status {checked}: {}", checker.last_stderr_line())));
                }
            }
            Check::None => {}
        }
        self.record = Some(record);
        Ok(Event::FileEnd)
    }
}

impl EventSource for DumpStream<'_> {
    fn next_event(&mut self) -> Result<Event, SourceError> {
        match self.stage {
            Stage::Start => {
                self.stage = Stage::Content;
                Ok(Event::File(crate::source::stream::stream_root()))
            }
            Stage::Content => self.content(),
            Stage::Ended => {
                self.stage = Stage::Done;
                Ok(Event::End)
            }
            Stage::Done => Err(SourceError::Malformed("read past the end of a dump".into())),
        }
    }
}

impl Drop for DumpStream<'_> {
    /// A dump that did not end well (the run failed here or elsewhere) is stopped, not left running.
    fn drop(&mut self) {
        if self.stage != Stage::Done {
            self.handle.block_on(self.exec.stop());
            if let Check::Command { checker, .. } = &self.check {
                self.handle.block_on(checker.stop());
            }
        }
        if let Some(relay) = self.relay.take() {
            self.handle.block_on(relay.abort());
        }
    }
}

/// A dump's way around the exec stream: a FIFO in a mount of the database container, and the helper
/// that reads it.
struct Relay {
    /// The database container's shell.
    shell: Shell,
    /// The FIFO's path inside the database container.
    fifo: String,
    helper: Helper,
    shown: String,
}

/// A dump's shell opens the FIFO before anything else, but if it ends without (its container killed
/// at that moment), the helper waits for a writer forever, and the run for the helper. Once the exec
/// has ended with nothing relayed for a while, the relay's socket is shut, which ends the stream (and
/// the exit code says why). A dump that wrote anything cannot hang so: its end is the FIFO's.
fn watch_relay(handle: Handle, probe: crate::docker::exec::ExecProbe, socket: std::os::unix::net::UnixStream, bytes: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let mut ended_for = 0;
        while bytes.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(std::time::Duration::from_secs(1));
            ended_for = if handle.block_on(probe.running()) { 0 } else { ended_for + 1 };
            if ended_for >= 5 {
                let _ = socket.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    });
}

impl Relay {
    /// Makes the FIFO and starts the helper that reads it; `None` when either cannot be done. With it
    /// come the stream from the helper and, over a socket, the socket itself (for the watch).
    async fn start(engine: &Engine, job: &DumpJob, mount: &RelayMount) -> Option<(Relay, Box<dyn Read + Send>, Option<std::os::unix::net::UnixStream>)> {
        let shell = Shell::container(&engine.docker, &job.target.container);
        let name = format!(".stackvault-dump-{}", hex::encode(crate::random_bytes::<8>()));
        let fifo = format!("{}/{name}", mount.destination.trim_end_matches('/'));
        let make = ExecSpec {
            shell: shell.clone(),
            script: "mkfifo -m 600 \"$SV_FIFO\"".into(),
            env: vec![format!("SV_FIFO={fifo}")],
            stdin: false,
            purpose: format!("making a FIFO for the {}", job.describe()),
        };
        let made = Exec::run(make, std::time::Duration::from_secs(60)).await;
        if !made.is_ok_and(|m| m.code == 0) {
            remove_fifo(&shell, &fifo).await;
            return None;
        }
        let typ = if mount.volume { MountType::VOLUME } else { MountType::BIND };
        let source = Mount { typ: Some(typ), source: Some(mount.source.clone()), target: Some("/source".into()), read_only: Some(true), ..Default::default() };
        let spec = HelperSpec {
            auto_remove: true,
            mounts: vec![source],
            binds: vec![],
            args: vec!["agent".into(), "relay".into(), format!("/source/{name}")],
            purpose: format!("relay of the {}", job.describe()),
        };
        let shown = format!("{} {}", if mount.volume { "volume" } else { "bind mount" }, mount.source);
        match Helper::start(engine, spec).await {
            Ok((helper, io)) => {
                drop(io.writer);
                Some((Relay { shell, fifo, helper, shown }, io.reader, io.socket))
            }
            Err(_) => {
                remove_fifo(&shell, &fifo).await;
                None
            }
        }
    }

    /// The dump ended: the helper is done once the stream is, and the FIFO goes.
    async fn finish(self) {
        remove_fifo(&self.shell, &self.fifo).await;
        self.helper.release();
    }

    async fn abort(self) {
        remove_fifo(&self.shell, &self.fifo).await;
        self.helper.abort().await;
    }
}

async fn remove_fifo(shell: &Shell, fifo: &str) {
    let spec = ExecSpec { shell: shell.clone(), script: "rm -f \"$SV_FIFO\"".into(), env: vec![format!("SV_FIFO={fifo}")], stdin: false, purpose: "removing a dump's FIFO".into() };
    let _ = Exec::run(spec, std::time::Duration::from_secs(60)).await;
}

/// How the running container takes a dump back: its login, and for a command dump the restore
/// command its label names.
pub struct Loader {
    pub login: Login,
    pub restore_command: Option<String>,
}

/// Per table the dump's check counted at backup time: its name, that count, and the rows the server
/// `shell` reaches holds now (after a restore, the same).
pub fn count_rows(handle: &Handle, shell: &Shell, record: &DumpRecord, loader: &Loader) -> Result<Vec<(String, u64, u64)>, crate::Error> {
    let engine = DumpEngine::parse(&record.engine).map_err(|e| crate::Error::Usage(format!("dump of {}: {e}", record.container)))?;
    let format = engine::DumpFormat::parse(&record.format).map_err(|e| crate::Error::Usage(format!("dump of {}: {e}", record.container)))?;
    let target = engine::RestoreTarget { shell, engine, format, login: &loader.login, database: record.database.as_deref(), restore_command: None };
    let tables: Vec<&str> = record.tables.keys().map(String::as_str).collect();
    let now = handle.block_on(engine::count_rows(&target, &tables))?;
    Ok(record.tables.iter().zip(now).map(|((table, recorded), now)| (table.clone(), *recorded, now)).collect())
}

/// Loads a dump back into the server `shell` reaches: `send` writes the stored stream into the
/// restore command's stdin.
pub fn restore(
    handle: &Handle,
    shell: &Shell,
    record: &DumpRecord,
    loader: &Loader,
    force: bool,
    send: &mut dyn FnMut(&mut dyn Write) -> Result<(), crate::Error>,
) -> Result<Vec<String>, crate::Error> {
    let place = shell.place();
    let what = match &record.database {
        Some(db) => format!("restore of database {db} into {place}"),
        None => format!("restore of the {} dump into {place}", record.format),
    };
    let engine = DumpEngine::parse(&record.engine).map_err(|e| crate::Error::Usage(format!("{what}: {e}")))?;
    let format = engine::DumpFormat::parse(&record.format).map_err(|e| crate::Error::Usage(format!("{what}: {e}")))?;
    let restore_command = loader.restore_command.as_deref();
    let target = engine::RestoreTarget { shell, engine, format, login: &loader.login, database: record.database.as_deref(), restore_command };
    let mut warnings = Vec::new();
    if restore_command.is_some() && restore_command != record.restore_command.as_deref() {
        warnings.push(format!("{what}: loaded by the restore command {place} names now, not the one recorded at backup"));
    }
    handle.block_on(engine::wait_until_ready(&target)).map_err(|e| crate::Error::Source { source_name: what.clone(), message: e.to_string() })?;
    if let Some(prepare) = handle.block_on(engine::prepare_restore(&target, force)).map_err(|e| crate::Error::Source { source_name: what.clone(), message: e.to_string() })? {
        warnings.push(prepare);
    }
    let spec = engine::restore_script(&target, &what);
    let (exec, io) = handle.block_on(Exec::start(spec))?;
    let mut stdin = io.stdin.expect("attached stdin");
    let drained = io.stdout.drain_beside();
    let sent = send(&mut stdin).and_then(|_| stdin.flush().map_err(|e| crate::Error::source(&what, e)));
    drop(stdin);
    let _ = drained.join();
    let code = handle.block_on(exec.exit_code())?;
    match sent {
        Err(e @ crate::Error::Repo(_)) => Err(e),
        _ if code != 0 => Err(crate::Error::Source { source_name: what, message: format!("{} exited with status {code}: {}", format.loader(engine), exec.last_stderr_line()) }),
        Err(e) => Err(e),
        Ok(()) => {
            if format == engine::DumpFormat::SqlGlobals {
                let skipped = exec.stderr().lines().filter(|l| l.contains("ERROR")).count();
                if skipped > 0 {
                    warnings.push(format!("{what}: {skipped} statements failed (users or roles that exist already are kept as they are)"));
                }
            }
            Ok(warnings)
        }
    }
}

impl From<DockerError> for SourceError {
    fn from(e: DockerError) -> Self {
        SourceError::Dump(e.to_string())
    }
}
