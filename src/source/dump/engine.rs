//! What each database engine needs: how to tell it from its image, where its credentials are, and the
//! scripts that list, dump, check and load its databases inside its container. Every script gets
//! names (user, database, a password file's path) through its environment, never spliced into shell
//! text, and a password only by the name of the container's own variable or file that holds it.

use std::time::Duration;

use super::{DumpJob, DumpTarget};
use crate::docker::exec::{Exec, ExecSpec, Shell};
use crate::docker::DockerError;
use crate::source::SourceError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpEngine {
    MariaDb,
    MySql,
    Postgres,
    Command,
}

impl DumpEngine {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "mariadb" => Ok(DumpEngine::MariaDb),
            "mysql" => Ok(DumpEngine::MySql),
            "postgres" | "postgresql" => Ok(DumpEngine::Postgres),
            "command" => Ok(DumpEngine::Command),
            other => Err(format!("{other:?} is not one of mariadb, mysql, postgres, auto, command")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DumpEngine::MariaDb => "mariadb",
            DumpEngine::MySql => "mysql",
            DumpEngine::Postgres => "postgres",
            DumpEngine::Command => "command",
        }
    }

    /// `stackvault.dump=auto`: the image's name decides (its last path part, without tag or digest),
    /// else the environment's variables do; anything else, or two engines at once, is an error.
    pub fn detect(image: &str, env: ContainerEnv) -> Result<Self, String> {
        let repository = image.split('@').next().unwrap_or(image);
        let name = repository.rsplit('/').next().unwrap_or(repository);
        let name = name.split(':').next().unwrap_or(name).to_ascii_lowercase();
        let by_image: Vec<DumpEngine> = [
            (DumpEngine::MariaDb, &["mariadb"][..]),
            (DumpEngine::MySql, &["mysql", "percona"][..]),
            (DumpEngine::Postgres, &["postgres", "postgis", "timescaledb"][..]),
        ]
        .into_iter()
        .filter(|(_, words)| words.iter().any(|w| name.contains(w)))
        .map(|(engine, _)| engine)
        .collect();
        let has_prefix = |prefix: &str| env.0.iter().any(|e| e.starts_with(prefix));
        let by_env: Vec<DumpEngine> = [(DumpEngine::MariaDb, has_prefix("MARIADB_")), (DumpEngine::MySql, has_prefix("MYSQL_")), (DumpEngine::Postgres, has_prefix("POSTGRES_"))]
            .into_iter()
            .filter(|(_, found)| *found)
            .map(|(engine, _)| engine)
            .collect();
        match (by_image.as_slice(), by_env.as_slice()) {
            ([one], _) => Ok(*one),
            ([], [one]) => Ok(*one),
            // The MariaDB images accept the MYSQL_ names too.
            ([], [DumpEngine::MariaDb, DumpEngine::MySql]) => Ok(DumpEngine::MariaDb),
            _ => Err(format!(
                "cannot tell the engine from image {image:?} and its environment; set stackvault.dump to mariadb, mysql or postgres"
            )),
        }
    }

    /// Where the server keeps its live files: a mount there is dumped, not copied.
    pub fn data_dirs(self, pgdata: Option<&str>) -> Vec<String> {
        match self {
            DumpEngine::MariaDb | DumpEngine::MySql => vec!["/var/lib/mysql".into()],
            DumpEngine::Postgres => {
                let mut dirs = vec!["/var/lib/postgresql".to_string()];
                dirs.extend(pgdata.map(str::to_string));
                dirs
            }
            DumpEngine::Command => Vec::new(),
        }
    }

    pub fn database_format(self) -> DumpFormat {
        match self {
            DumpEngine::Postgres => DumpFormat::PgCustom,
            DumpEngine::Command => DumpFormat::Command,
            _ => DumpFormat::Sql,
        }
    }

    /// Users, grants and roles: dumped when the login may read them (an administrator's); mysqldump
    /// (MySQL) has no way to dump them.
    pub fn globals_format(self, login: &Login) -> Option<DumpFormat> {
        match self {
            DumpEngine::MariaDb if login.admin => Some(DumpFormat::SqlGlobals),
            DumpEngine::Postgres if login.admin => Some(DumpFormat::SqlGlobals),
            _ => None,
        }
    }

    /// The variable the engine's client tools read a password from.
    fn password_variable(self) -> &'static str {
        match self {
            DumpEngine::Postgres => "PGPASSWORD",
            _ => "MYSQL_PWD",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    Sql,
    SqlGlobals,
    PgCustom,
    Command,
}

impl DumpFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DumpFormat::Sql => "sql",
            DumpFormat::SqlGlobals => "sql-globals",
            DumpFormat::PgCustom => "pg-custom",
            DumpFormat::Command => "command",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        [DumpFormat::Sql, DumpFormat::SqlGlobals, DumpFormat::PgCustom, DumpFormat::Command]
            .into_iter()
            .find(|f| f.as_str() == text)
            .ok_or_else(|| format!("unknown dump format {text:?}"))
    }

    /// The tool that writes it, for messages.
    pub fn tool(self, engine: DumpEngine) -> &'static str {
        match (self, engine) {
            (DumpFormat::PgCustom, _) => "pg_dump",
            (DumpFormat::SqlGlobals, DumpEngine::Postgres) => "pg_dumpall",
            (DumpFormat::Command, _) => "the dump command",
            (_, DumpEngine::MySql) => "mysqldump",
            _ => "mariadb-dump",
        }
    }

    /// The tool that loads it back, for messages.
    pub fn loader(self, engine: DumpEngine) -> &'static str {
        match (self, engine) {
            (DumpFormat::PgCustom, _) => "pg_restore",
            (DumpFormat::SqlGlobals, DumpEngine::Postgres) => "psql",
            (DumpFormat::Command, _) => "the restore command",
            (_, DumpEngine::MySql) => "mysql",
            _ => "mariadb",
        }
    }
}

/// Who the tools log in as, where the password comes from (never the password itself), and for a
/// server reached over the network, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: Option<String>,
    pub password: Password,
    /// An administrator (root, the postgres superuser): may dump users and roles.
    pub admin: bool,
    /// `None`: the tools run inside the server's container and reach it by its default socket.
    pub server: Option<ServerAddress>,
}

/// A database server the tools reach from stackvault's own container (a `databases:` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddress {
    Tcp { host: String, port: u16 },
    /// A unix socket's path; for PostgreSQL also the directory holding it (libpq's convention).
    Socket(String),
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddress::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            ServerAddress::Tcp { host, port } => write!(f, "{host}:{port}"),
            ServerAddress::Socket(path) => write!(f, "{path}"),
        }
    }
}

impl ServerAddress {
    /// Shell text and variables that point the engine's tools at the server: libpq's variables for
    /// PostgreSQL; for MariaDB/MySQL, options set as the script's arguments, which every client
    /// command line passes on as `"$@"` (one word each, whatever the value holds).
    fn connect(&self, engine: DumpEngine, env: &mut Vec<String>) -> &'static str {
        match (engine, self) {
            (DumpEngine::Postgres, ServerAddress::Tcp { host, port }) => {
                env.extend([format!("PGHOST={host}"), format!("PGPORT={port}")]);
                ""
            }
            (DumpEngine::Postgres, ServerAddress::Socket(path)) => {
                // libpq takes the socket's directory; a path to the socket itself names its port too.
                let (dir, file) = path.rsplit_once('/').unwrap_or((".", path));
                match file.strip_prefix(".s.PGSQL.") {
                    Some(port) => env.extend([format!("PGHOST={}", if dir.is_empty() { "/" } else { dir }), format!("PGPORT={port}")]),
                    None => env.push(format!("PGHOST={path}")),
                }
                ""
            }
            (_, ServerAddress::Tcp { host, port }) => {
                env.extend([format!("SV_HOST={host}"), format!("SV_PORT={port}")]);
                "set -- --protocol=TCP --host=\"$SV_HOST\" --port=\"$SV_PORT\"; "
            }
            (_, ServerAddress::Socket(path)) => {
                env.push(format!("SV_SOCKET={path}"));
                "set -- --protocol=SOCKET --socket=\"$SV_SOCKET\"; "
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    None,
    /// The container's environment variable that holds it.
    Env(String),
    /// The container's environment variable that names a file holding it (`*_FILE`).
    FileInEnv(String),
    /// A file inside the container.
    File(String),
}

/// A container's environment as the engine lists it, `NAME=value`. Passwords in it are only ever
/// named, never read; values are read for user names, flags and PGDATA.
#[derive(Clone, Copy)]
pub struct ContainerEnv<'a>(pub &'a [String]);

impl<'a> ContainerEnv<'a> {
    pub fn value(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find_map(|e| e.strip_prefix(name)?.strip_prefix('='))
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|e| e == name || e.strip_prefix(name).is_some_and(|rest| rest.starts_with('=')))
    }
}

impl Login {
    /// The login from the labels, else from the variables the official images read: MariaDB/MySQL
    /// root's password, else the application user's; PostgreSQL's POSTGRES_USER (default postgres).
    pub fn resolve(
        engine: DumpEngine,
        user: Option<String>,
        password_env: Option<String>,
        password_file: Option<String>,
        env: ContainerEnv,
    ) -> Result<Login, (&'static str, String)> {
        let env_value = |name: &str| env.value(name).map(str::to_string);
        if let Some(name) = &password_env {
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                // Not echoed: a password put there by mistake must not reach a message.
                return Err((super::LABEL_PASSWORD_ENV, "is not an environment variable name (letters, digits, _): name the variable that holds the password".into()));
            }
        }
        if password_env.is_some() && password_file.is_some() {
            return Err((super::LABEL_PASSWORD_FILE, format!("set {} or {}, not both", super::LABEL_PASSWORD_ENV, super::LABEL_PASSWORD_FILE)));
        }
        let labelled = match (password_env, password_file) {
            (Some(name), _) => Some(Password::Env(name)),
            (_, Some(path)) => Some(Password::File(path)),
            _ => None,
        };
        let from_env = |names: &[&str]| -> Option<Password> {
            names.iter().find_map(|name| {
                let file = format!("{name}_FILE");
                if env.has(name) {
                    Some(Password::Env(name.to_string()))
                } else {
                    env.has(&file).then_some(Password::FileInEnv(file))
                }
            })
        };
        match engine {
            DumpEngine::Command => Ok(Login { user, password: labelled.unwrap_or(Password::None), admin: false, server: None }),
            DumpEngine::Postgres => {
                let user = user.or_else(|| env_value("POSTGRES_USER")).unwrap_or_else(|| "postgres".into());
                let password = labelled.or_else(|| from_env(&["POSTGRES_PASSWORD"])).unwrap_or(Password::None);
                // POSTGRES_USER is the cluster's superuser in the official images.
                let admin = env_value("POSTGRES_USER").map_or(user == "postgres", |u| u == user);
                Ok(Login { user: Some(user), password, admin, server: None })
            }
            DumpEngine::MariaDb | DumpEngine::MySql => {
                if let Some(password) = labelled {
                    let user = user.unwrap_or_else(|| "root".into());
                    return Ok(Login { admin: user == "root", user: Some(user), password, server: None });
                }
                if user.as_deref().is_none_or(|u| u == "root") {
                    if let Some(password) = from_env(&["MARIADB_ROOT_PASSWORD", "MYSQL_ROOT_PASSWORD"]) {
                        return Ok(Login { user: Some("root".into()), password, admin: true, server: None });
                    }
                    let empty_allowed = ["MARIADB_ALLOW_EMPTY_ROOT_PASSWORD", "MYSQL_ALLOW_EMPTY_PASSWORD"].iter().any(|n| env_value(n).is_some_and(|v| !v.is_empty() && v != "0" && v != "no"));
                    if empty_allowed {
                        return Ok(Login { user: Some("root".into()), password: Password::None, admin: true, server: None });
                    }
                }
                let app_user = user.clone().or_else(|| env_value("MARIADB_USER")).or_else(|| env_value("MYSQL_USER"));
                match (app_user, from_env(&["MARIADB_PASSWORD", "MYSQL_PASSWORD"])) {
                    (Some(user), Some(password)) => Ok(Login { user: Some(user), password, admin: false, server: None }),
                    _ => Err((
                        super::LABEL_DUMP,
                        format!(
                            "no credentials found: the container sets none of MARIADB_ROOT_PASSWORD, MYSQL_ROOT_PASSWORD (or *_FILE), MARIADB_USER/MARIADB_PASSWORD; name where the password is with {} or {}",
                            super::LABEL_PASSWORD_ENV,
                            super::LABEL_PASSWORD_FILE
                        ),
                    )),
                }
            }
        }
    }

    /// Shell text that exports the engine's password variable from where the container (or, over the
    /// network, stackvault's) keeps it, plus the variables it needs and where the server is; the
    /// password's value never passes through stackvault.
    fn prelude(&self, engine: DumpEngine, env: &mut Vec<String>) -> String {
        let connect = self.server.as_ref().map_or("", |server| server.connect(engine, env));
        format!("{connect}{}", self.password_prelude(engine, env))
    }

    fn password_prelude(&self, engine: DumpEngine, env: &mut Vec<String>) -> String {
        let variable = engine.password_variable();
        if let Some(user) = &self.user {
            env.push(format!("SV_USER={user}"));
            if engine == DumpEngine::Postgres {
                env.push(format!("PGUSER={user}"));
            }
        }
        match &self.password {
            Password::None => String::new(),
            Password::Env(name) => format!("{variable}=\"${{{name}}}\"; export {variable}; "),
            Password::FileInEnv(name) => format!("{variable}=\"$(cat \"${{{name}}}\")\" || exit 3; export {variable}; "),
            Password::File(path) => {
                env.push(format!("SV_PASSWORD_FILE={path}"));
                format!("{variable}=\"$(cat \"$SV_PASSWORD_FILE\")\" || exit 3; export {variable}; ")
            }
        }
    }
}

/// The client and dump tools, whichever names the image has.
const MYSQL_TOOLS: &str = "c=$(command -v mariadb || command -v mysql); d=$(command -v mariadb-dump || command -v mysqldump); ";

/// A stream's client commands that reach the filesystem or a shell (`\\!`, `source`) are refused where
/// the client can (MariaDB's --sandbox): a dump is data, never a script to trust.
const MYSQL_SANDBOX: &str = "s=; case \"$(\"$c\" --help 2>/dev/null)\" in *--sandbox*) s=--sandbox;; esac; ";

/// The variables naming a database: the name itself, and for PostgreSQL tools a connection string
/// holding only it (a name with `=` or a `postgresql://` prefix would otherwise be taken for one,
/// and could send the login elsewhere).
fn database_env(database: &str) -> [String; 2] {
    let quoted = database.replace('\\', "\\\\").replace('\'', "\\'");
    [format!("SV_DATABASE={database}"), format!("SV_CONNINFO=dbname='{quoted}'")]
}

/// What the server says of itself before its dumps.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub version: Option<String>,
    /// MariaDB/MySQL: set when the server writes a binlog (the dump then records its position);
    /// PostgreSQL: the WAL position before the dump.
    pub position: Option<String>,
    pub binlog: bool,
}

/// Lists the user databases and asks the server's version and log state.
pub async fn inspect_server(shell: &Shell, target: &DumpTarget) -> Result<(ServerInfo, Vec<String>), SourceError> {
    let engine = target.spec.engine;
    let mut env = Vec::new();
    let prelude = target.spec.login.prelude(engine, &mut env);
    let script = match engine {
        DumpEngine::Postgres => format!(
            "{prelude}exec psql -X -A -t -q -d template1 -c \"SELECT 'version ' || current_setting('server_version')\" \
             -c \"SELECT 'position ' || CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END\" \
             -c \"SELECT 'database ' || encode(convert_to(datname, 'UTF8'), 'hex') FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname\""
        ),
        _ => format!(
            "{prelude}{MYSQL_TOOLS}exec \"$c\" -u\"$SV_USER\" \"$@\" -N -B -e \"SELECT CONCAT('version ', VERSION()); SELECT CONCAT('binlog ', @@log_bin); SELECT CONCAT('database ', HEX(schema_name)) FROM information_schema.schemata WHERE schema_name NOT IN ('information_schema','performance_schema','mysql','sys') ORDER BY schema_name\""
        ),
    };
    let purpose = format!("listing the databases in {}", target.place());
    let spec = ExecSpec { shell: shell.clone(), script, env, stdin: false, purpose: purpose.clone() };
    let output = Exec::run(spec, Duration::from_secs(120)).await?;
    if output.code != 0 {
        let last = output.last_stderr_line();
        return Err(SourceError::Dump(format!("{purpose}: exit status {}: {last}; no snapshot was written", output.code)));
    }
    let mut info = ServerInfo::default();
    let mut databases = Vec::new();
    for line in output.stdout.lines() {
        if let Some(version) = line.strip_prefix("version ") {
            info.version = Some(version.to_string());
        } else if let Some(position) = line.strip_prefix("position ") {
            info.position = Some(format!("WAL {position} before the dump"));
        } else if let Some(binlog) = line.strip_prefix("binlog ") {
            info.binlog = binlog == "1" || binlog.eq_ignore_ascii_case("on");
        } else if let Some(database) = line.strip_prefix("database ") {
            // Names travel as hex: a name may hold a newline or anything else a line would not.
            let name = hex::decode(database.to_ascii_lowercase()).map_err(|_| SourceError::Dump(format!("{purpose}: unreadable database name {database:?}")))?;
            databases.push(String::from_utf8_lossy(&name).into_owned());
        }
    }
    Ok((info, databases))
}

/// The exec that writes one dump to its stdout.
pub fn dump_script(shell: &Shell, job: &DumpJob) -> ExecSpec {
    let spec = &job.target.spec;
    let mut env = Vec::new();
    let prelude = spec.login.prelude(spec.engine, &mut env);
    if let Some(database) = &job.database {
        env.extend(database_env(database));
    }
    let script = match (spec.engine, job.format) {
        (_, DumpFormat::Command) => format!("{prelude}{}", spec.command.as_deref().unwrap_or_default()),
        (DumpEngine::Postgres, DumpFormat::SqlGlobals) => format!("{prelude}exec pg_dumpall --globals-only"),
        // Uncompressed, so that chunks deduplicate and zstd compresses; the archive's TOC is read back.
        (DumpEngine::Postgres, _) => format!("{prelude}exec pg_dump --format=custom --compress=0 --dbname=\"$SV_CONNINFO\""),
        (_, DumpFormat::SqlGlobals) => format!("{prelude}{MYSQL_TOOLS}exec \"$d\" -u\"$SV_USER\" \"$@\" --system=users --insert-ignore"),
        (_, _) => {
            // With a binlog, the dump notes its position (and GTID) as a comment, for point-in-time recovery.
            // Noting the position needs the RELOAD privilege: an administrator's login only.
            let position = match (job.server.binlog && spec.login.admin, spec.engine) {
                (false, _) => "",
                (true, DumpEngine::MariaDb) => " --master-data=2 --gtid",
                // MySQL's mysqldump has no --gtid; it writes GTID_PURGED itself.
                (true, _) => " --source-data=2",
            };
            // An INSERT statement holds rows up to the net buffer length: a row that grew or shrank
            // moves every later statement's start, and each move changes a chunk. 4 MiB statements
            // (the servers' max_allowed_packet is 16 MiB by default) make a quarter of the 1 MiB
            // default's moves; MySQL keeps its default (5.7 allows 4 MiB packets).
            let statements = if spec.engine == DumpEngine::MariaDb { " --net-buffer-length=4194304" } else { "" };
            format!(
                "{prelude}{MYSQL_TOOLS}exec \"$d\" -u\"$SV_USER\" \"$@\" --single-transaction --routines --events --triggers --hex-blob{statements}{position} --databases \"$SV_DATABASE\""
            )
        }
    };
    ExecSpec { shell: shell.clone(), script, env, stdin: false, purpose: job.describe() }
}

/// Checks that a text dump ends with its tool's completion line (pg_dumpall's; the `\unrestrict` line
/// PostgreSQL's 2025 releases write after it is allowed for). Keeps only the stream's tail.
pub struct TrailerCheck {
    expected: &'static str,
    tail: Vec<u8>,
}

const TAIL: usize = 4096;

impl TrailerCheck {
    pub fn pg_globals() -> Self {
        TrailerCheck { expected: "-- PostgreSQL database cluster dump complete", tail: Vec::new() }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(&bytes[bytes.len().saturating_sub(TAIL)..]);
        let excess = self.tail.len().saturating_sub(TAIL);
        self.tail.drain(..excess);
    }

    pub fn finish(self) -> Result<(), String> {
        let text = String::from_utf8_lossy(&self.tail);
        // The completion line sits between comment-only `--` lines, and before `\unrestrict`.
        let last = text.lines().map(str::trim).rfind(|l| !l.is_empty() && *l != "--" && !l.starts_with("\\unrestrict"));
        if last == Some(self.expected) {
            Ok(())
        } else {
            Err(format!("the dump does not end with {:?}: it was cut short", self.expected))
        }
    }
}

/// Where a stored dump goes back to.
pub struct RestoreTarget<'a> {
    pub shell: &'a Shell,
    pub engine: DumpEngine,
    pub format: DumpFormat,
    pub login: &'a Login,
    pub database: Option<&'a str>,
    pub restore_command: Option<&'a str>,
}

impl RestoreTarget<'_> {
    fn env(&self) -> (String, Vec<String>) {
        let mut env = Vec::new();
        let prelude = self.login.prelude(self.engine, &mut env);
        if let Some(database) = self.database {
            env.extend(database_env(database));
        }
        (prelude, env)
    }

    async fn query(&self, sql_script: &str, purpose: &str) -> Result<String, DockerError> {
        let (prelude, env) = self.env();
        let spec = ExecSpec { shell: self.shell.clone(), script: format!("{prelude}{sql_script}"), env, stdin: false, purpose: purpose.to_string() };
        let output = Exec::run(spec, Duration::from_secs(300)).await?;
        if output.code != 0 {
            let last = output.last_stderr_line();
            return Err(DockerError::Exec { place: self.shell.place(), purpose: purpose.into(), message: format!("exit status {}: {last}", output.code) });
        }
        Ok(output.stdout)
    }
}

/// Waits until the server accepts connections (it may be starting, on a fresh host), up to 2 minutes.
pub async fn wait_until_ready(target: &RestoreTarget<'_>) -> Result<(), DockerError> {
    let probe = match target.engine {
        DumpEngine::Postgres => "exec psql -X -A -t -q -d template1 -c 'SELECT 1'",
        DumpEngine::MariaDb | DumpEngine::MySql => "c=$(command -v mariadb || command -v mysql); exec \"$c\" -u\"$SV_USER\" \"$@\" -N -B -e 'SELECT 1'",
        DumpEngine::Command => return Ok(()),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match target.query(probe, &format!("waiting for the database server in {}", target.shell.place())).await {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Refuses to load a database over one that exists and holds tables, unless forced; when forced,
/// drops it first, so that the restore is the dump and nothing else. Returns a note of what it did.
pub async fn prepare_restore(target: &RestoreTarget<'_>, force: bool) -> Result<Option<String>, DockerError> {
    let Some(database) = target.database else { return Ok(None) };
    let purpose = format!("checking database {database} in {}", target.shell.place());
    let tables = match target.engine {
        DumpEngine::Postgres => {
            // psql interpolates variables (a safely quoted name) in its input, not in -c.
            let exists = target.query("exec psql -X -A -t -q -d template1 -v db=\"$SV_DATABASE\" <<'SQL'\nSELECT count(*) FROM pg_database WHERE datname = :'db';\nSQL", &purpose).await?;
            if exists.trim() == "0" {
                return Ok(None);
            }
            target
                .query("exec psql -X -A -t -q -d \"$SV_CONNINFO\" -c \"SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'\"", &purpose)
                .await?
        }
        DumpEngine::MariaDb | DumpEngine::MySql => {
            let sql = format!("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = {}", sql_string(database));
            target.query(&format!("{MYSQL_TOOLS}exec \"$c\" -u\"$SV_USER\" \"$@\" -N -B -e {}", crate::docker::exec::shell_quote(&sql)), &purpose).await?
        }
        DumpEngine::Command => return Ok(None),
    };
    let tables: u64 = tables.trim().parse().unwrap_or(0);
    if tables == 0 {
        return Ok(None);
    }
    if !force {
        return Err(DockerError::Exec {
            place: target.shell.place(),
            purpose: format!("restore of database {database}"),
            message: format!("the database exists and holds {tables} tables; drop it first, or pass --force to replace it"),
        });
    }
    let purpose = format!("dropping database {database} in {} (--force)", target.shell.place());
    match target.engine {
        DumpEngine::Postgres => {
            // Its sessions end first (what DROP ... WITH (FORCE) does, which needs PostgreSQL 13).
            let sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :'db' AND pid <> pg_backend_pid();\nDROP DATABASE :\"db\";";
            target.query(&format!("exec psql -X -q -o /dev/null -d template1 -v ON_ERROR_STOP=1 -v db=\"$SV_DATABASE\" <<'SQL'\n{sql}\nSQL"), &purpose).await?;
        }
        _ => {
            let sql = format!("DROP DATABASE {}", sql_identifier(database));
            target.query(&format!("{MYSQL_TOOLS}exec \"$c\" -u\"$SV_USER\" \"$@\" -e {}", crate::docker::exec::shell_quote(&sql)), &purpose).await?;
        }
    }
    Ok(Some(format!("database {database} in {}: replaced ({tables} tables dropped, --force)", target.shell.place())))
}

/// Rows per table as the server holds them now, for the tables a dump's check counted (keys
/// `database.table` for MariaDB/MySQL, `schema.table` for PostgreSQL), in their order: what a drill
/// compares with the counts recorded at backup time.
pub async fn count_rows(target: &RestoreTarget<'_>, tables: &[&str]) -> Result<Vec<u64>, DockerError> {
    let purpose = format!("counting rows in {}", target.shell.place());
    let output = match target.engine {
        DumpEngine::Postgres => {
            // A schema has no dot in the keys pgcustom writes; a table may.
            let sql: String = tables
                .iter()
                .map(|key| {
                    let (schema, table) = key.split_once('.').unwrap_or(("public", key));
                    format!("SELECT count(*) FROM {}.{};\n", pg_identifier(schema), pg_identifier(table))
                })
                .collect();
            target.query(&format!("exec psql -X -A -t -q -v ON_ERROR_STOP=1 -d \"$SV_CONNINFO\" <<'SQL'\n{sql}SQL"), &purpose).await?
        }
        DumpEngine::MariaDb | DumpEngine::MySql => {
            let database = target.database.unwrap_or_default();
            let prefix = format!("{database}.");
            let sql: Vec<String> =
                tables.iter().map(|key| format!("SELECT COUNT(*) FROM {}.{}", sql_identifier(database), sql_identifier(key.strip_prefix(&prefix).unwrap_or(key)))).collect();
            target.query(&format!("{MYSQL_TOOLS}exec \"$c\" -u\"$SV_USER\" \"$@\" -N -B -e {}", crate::docker::exec::shell_quote(&sql.join("; "))), &purpose).await?
        }
        DumpEngine::Command => return Ok(Vec::new()),
    };
    let counts: Vec<u64> = output.lines().filter(|l| !l.trim().is_empty()).map(|l| l.trim().parse().unwrap_or(u64::MAX)).collect();
    if counts.len() != tables.len() || counts.contains(&u64::MAX) {
        return Err(DockerError::Exec { place: target.shell.place(), purpose, message: format!("expected {} counts, got: {}", tables.len(), output.trim()) });
    }
    Ok(counts)
}

/// The exec that loads a dump from its stdin.
pub fn restore_script(target: &RestoreTarget<'_>, purpose: &str) -> ExecSpec {
    let (prelude, env) = target.env();
    let script = match (target.engine, target.format) {
        (_, DumpFormat::Command) => format!("{prelude}{}", target.restore_command.unwrap_or("false")),
        // Roles that exist already fail one by one; the rest still load.
        (DumpEngine::Postgres, DumpFormat::SqlGlobals) => format!("{prelude}exec psql -X -q -d template1 -f - >/dev/null"),
        // The archive creates the database (it was dropped, or never existed here).
        (DumpEngine::Postgres, _) => format!("{prelude}exec pg_restore --exit-on-error --create --dbname=template1"),
        (_, DumpFormat::SqlGlobals) => format!("{prelude}{MYSQL_TOOLS}{MYSQL_SANDBOX}exec \"$c\" -u\"$SV_USER\" \"$@\" $s --force"),
        // The dump creates the database and switches to it (--databases).
        (_, _) => format!("{prelude}{MYSQL_TOOLS}{MYSQL_SANDBOX}exec \"$c\" -u\"$SV_USER\" \"$@\" $s"),
    };
    ExecSpec { shell: target.shell.clone(), script, env, stdin: true, purpose: purpose.to_string() }
}

/// A PostgreSQL identifier, quoted.
fn pg_identifier(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// A MariaDB/MySQL string: as hex, so that no sql_mode (NO_BACKSLASH_ESCAPES) changes its meaning.
fn sql_string(value: &str) -> String {
    format!("CONVERT(X'{}' USING utf8mb4)", hex::encode(value))
}

/// A MariaDB/MySQL quoted identifier.
fn sql_identifier(value: &str) -> String {
    format!("`{}`", value.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_detects_by_image_then_environment() {
        let env = |vars: &[&str]| vars.iter().map(|v| format!("{v}=x")).collect::<Vec<_>>();
        let none = env(&[]);
        assert_eq!(DumpEngine::detect("docker.io/library/mariadb:11.4", ContainerEnv(&none)), Ok(DumpEngine::MariaDb));
        assert_eq!(DumpEngine::detect("postgres:16-alpine", ContainerEnv(&none)), Ok(DumpEngine::Postgres));
        assert_eq!(DumpEngine::detect("bitnami/mysql@sha256:abc", ContainerEnv(&none)), Ok(DumpEngine::MySql));
        let pg = env(&["POSTGRES_PASSWORD"]);
        assert_eq!(DumpEngine::detect("registry.local/app-db:1", ContainerEnv(&pg)), Ok(DumpEngine::Postgres));
        let maria = env(&["MARIADB_ROOT_PASSWORD", "MYSQL_DATABASE"]);
        assert_eq!(DumpEngine::detect("registry.local/app-db:1", ContainerEnv(&maria)), Ok(DumpEngine::MariaDb));
        let both = env(&["MYSQL_ROOT_PASSWORD", "POSTGRES_PASSWORD"]);
        assert!(DumpEngine::detect("registry.local/app-db:1", ContainerEnv(&both)).is_err());
        assert!(DumpEngine::detect("redis:7", ContainerEnv(&none)).is_err());
    }

    #[test]
    fn logins_name_where_the_password_is_never_its_value() {
        let env = ["MARIADB_ROOT_PASSWORD=s3cret".to_string(), "MYSQL_USER=app".into()];
        let login = Login::resolve(DumpEngine::MariaDb, None, None, None, ContainerEnv(&env)).unwrap();
        assert_eq!(login, Login { user: Some("root".into()), password: Password::Env("MARIADB_ROOT_PASSWORD".into()), admin: true, server: None });
        let mut vars = Vec::new();
        let prelude = login.prelude(DumpEngine::MariaDb, &mut vars);
        assert!(!prelude.contains("s3cret") && !vars.iter().any(|v| v.contains("s3cret")), "{prelude} {vars:?}");

        let env = ["POSTGRES_PASSWORD_FILE=/run/secrets/pg".to_string(), "POSTGRES_USER=calls".into()];
        let login = Login::resolve(DumpEngine::Postgres, None, None, None, ContainerEnv(&env)).unwrap();
        assert_eq!(login, Login { user: Some("calls".into()), password: Password::FileInEnv("POSTGRES_PASSWORD_FILE".into()), admin: true, server: None });

        assert!(Login::resolve(DumpEngine::MariaDb, None, None, None, ContainerEnv(&[])).is_err());
        assert!(Login::resolve(DumpEngine::MariaDb, None, Some("A;rm".into()), None, ContainerEnv(&[])).is_err());
    }

    #[test]
    fn a_server_over_the_network_is_reached_by_options_and_libpq_variables_never_by_spliced_text() {
        let mut env = Vec::new();
        let tcp = ServerAddress::Tcp { host: "db; rm -rf /".into(), port: 3307 };
        assert_eq!(tcp.connect(DumpEngine::MariaDb, &mut env), "set -- --protocol=TCP --host=\"$SV_HOST\" --port=\"$SV_PORT\"; ");
        assert_eq!(env, ["SV_HOST=db; rm -rf /", "SV_PORT=3307"]);
        let mut env = Vec::new();
        assert_eq!(ServerAddress::Socket("/run/pg/.s.PGSQL.5433".into()).connect(DumpEngine::Postgres, &mut env), "");
        assert_eq!(env, ["PGHOST=/run/pg", "PGPORT=5433"]);
        let mut env = Vec::new();
        ServerAddress::Socket("/var/run/postgresql".into()).connect(DumpEngine::Postgres, &mut env);
        assert_eq!(env, ["PGHOST=/var/run/postgresql"]);
    }

    #[test]
    fn trailer_check_allows_the_unrestrict_line_and_catches_a_cut() {
        let mut check = TrailerCheck::pg_globals();
        check.feed(b"\\restrict abc\nCREATE ROLE x;\n--\n-- PostgreSQL database cluster dump complete\n--\n\n\\unrestrict abc\n");
        assert!(check.finish().is_ok());
        let mut check = TrailerCheck::pg_globals();
        check.feed(b"CREATE ROLE x;\n\n-- PostgreSQL database cluster dump complete\n\n\\unrestrict abc\n\n");
        assert!(check.finish().is_ok());
        let mut check = TrailerCheck::pg_globals();
        check.feed(b"CREATE ROLE x;\n-- PostgreSQL database cluster dump comp");
        assert!(check.finish().is_err());
    }
}
