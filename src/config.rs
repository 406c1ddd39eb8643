//! The YAML configuration (the public contract, documented key by key in README.md) and its
//! environment overrides `STACKVAULT_<SECTION>_<KEY>`. Errors name the file, line and key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::repo::crypt::{self, Recipient};
use crate::runner::alerts::WebhookConfig;
use crate::runner::log::LogFormat;
use crate::runner::schedule::Schedule;
use crate::source::dump::DumpEngine;

pub const DEFAULT_PATH: &str = "/etc/stackvault/stackvault.yaml";
/// A commented configuration to start from: what `init` writes where there is none.
pub const EXAMPLE: &str = include_str!("config.example.yaml");
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/stackvault";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/stackvault";

/// Environment variables read by the command line itself rather than the config file.
const CLI_VARIABLES: &[&str] = &["STACKVAULT_CONFIG", "STACKVAULT_IDENTITY"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // `cause`, not `source`: the message already holds it, and a source would be printed twice.
    #[error("{file}: cannot read: {cause}")]
    Read { file: String, cause: std::io::Error },
    #[error("{file}: cannot write the example configuration: {cause}")]
    Write { file: String, cause: std::io::Error },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid { file: String, line: usize, column: usize, message: String },
    #[error("{file}: {message}")]
    InvalidNoLocation { file: String, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("{key} is not set: {hint}")]
    Missing { key: &'static str, hint: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub stack: Option<String>,
    #[serde(default)]
    pub docker: DockerConfig,
    /// Host directories read by the sidecar itself (mounted into its container).
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Database servers dumped over the network by the client tools in stackvault's own image
    /// (Kubernetes, where there is no engine to exec in).
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
    #[serde(default)]
    pub repository: RepositoryConfig,
    #[serde(default)]
    pub encryption: EncryptionConfig,
    /// Where the files cache lives (the sidecar's own disk; losing it costs one full read).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// What must outlive the process: the containers a run stopped (README, "Consistency"). Unlike the
    /// cache, keep it on a volume: a sidecar killed while containers are stopped starts them from it.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Gitignore-style patterns left out of every source, matched against paths below its root.
    #[serde(default, deserialize_with = "patterns")]
    pub exclude: Vec<String>,
    /// Leave out directories tagged with a CACHEDIR.TAG (all but the tag); on unless set to false.
    #[serde(default)]
    pub exclude_caches: Option<bool>,
    /// `include`: each snapshot also holds the containers' images (a host without registry access
    /// can be restored); `reference` (default): only their references and ids, and restore pulls.
    #[serde(default)]
    pub images: ImagesMode,
    /// When the daemon runs backups (README, "The nightly runner").
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Address for `/healthz` and `/metrics`; off unless set.
    #[serde(default, deserialize_with = "socket_address")]
    pub listen: Option<std::net::SocketAddr>,
    /// `text` or `json`; default: text on a terminal, JSON otherwise.
    #[serde(default)]
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub staging: StagingConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub health: HealthConfig,
    /// When the daemon verifies the repository, and how much data it reads back.
    #[serde(default)]
    pub verify: VerifyConfig,
    /// What `prune` keeps, per stack (README, "Retention").
    #[serde(default)]
    pub prune: PruneConfig,
    /// Where the file came from, for messages.
    #[serde(skip)]
    pub origin: String,
}

pub const DEFAULT_CRON: &str = "0 2 * * *";

/// One `databases:` entry: a server the engine's own tools reach from stackvault's container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "DatabaseEntry")]
pub struct DatabaseConfig {
    /// Names the dumps in the snapshot (`NAME/DATABASE`) and `restore --only db:NAME`.
    pub name: String,
    pub engine: DumpEngine,
    /// A host name or address, or a unix socket's path (for PostgreSQL also its directory).
    pub host: String,
    /// Default: 3306 (MariaDB, MySQL), 5432 (PostgreSQL).
    pub port: Option<u16>,
    /// Default: root (MariaDB, MySQL), postgres.
    pub user: Option<String>,
    /// A file holding the password (a mounted Secret), or the variable of stackvault's own
    /// environment that holds it; neither: no password.
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// Default: every user database.
    pub databases: Option<Vec<String>>,
}

/// A `databases:` entry as written, checked as a whole (so that errors point at it) into a [`DatabaseConfig`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseEntry {
    name: String,
    engine: String,
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    databases: Option<Vec<String>>,
}

impl TryFrom<DatabaseEntry> for DatabaseConfig {
    type Error = String;

    fn try_from(entry: DatabaseEntry) -> Result<Self, String> {
        let name = &entry.name;
        let engine = match DumpEngine::parse(&entry.engine) {
            Ok(DumpEngine::Command) | Err(_) => return Err(format!("databases {name:?}: engine {:?} is not one of mariadb, mysql, postgres", entry.engine)),
            Ok(engine) => engine,
        };
        let problem = if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            Some("the name: use letters, digits, '.', '_' and '-'")
        } else if entry.host.trim().is_empty() {
            Some("host is empty")
        } else if entry.password_file.is_some() && entry.password_env.is_some() {
            Some("set password_file or password_env, not both")
        } else if entry.password_env.as_deref().is_some_and(|v| v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
            Some("password_env is not an environment variable name (letters, digits, _): name the variable that holds the password")
        } else if entry.databases.as_ref().is_some_and(|list| list.is_empty() || list.iter().any(String::is_empty)) {
            Some("databases: list database names, or leave it out for every user database")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(format!("databases {name:?}: {problem}"));
        }
        let DatabaseEntry { name, host, port, user, password_file, password_env, databases, .. } = entry;
        Ok(DatabaseConfig { name, engine, host, port, user, password_file, password_env, databases })
    }
}

/// The daemon's own verification runs (README, "The nightly runner"); off unless `schedule.cron` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
    /// The share of the packs each run reads back (`10%`, rotating: every pack within 10 runs); default 10%.
    #[serde(default, deserialize_with = "percent")]
    pub read_data: Option<u32>,
    /// When the daemon drills the stack's newest snapshot (`verify --drill`, e.g. weekly); off
    /// unless `drill.cron` is set.
    #[serde(default)]
    pub drill: Option<ScheduleConfig>,
}

impl VerifyConfig {
    /// The schedule, where one is set.
    pub fn schedule(&self) -> Option<Result<Schedule, String>> {
        set_schedule(&self.schedule)
    }

    /// The drills' schedule, where one is set.
    pub fn drill_schedule(&self) -> Option<Result<Schedule, String>> {
        set_schedule(&self.drill)
    }

    pub fn read_data(&self) -> u32 {
        self.read_data.unwrap_or(10)
    }
}

/// Which snapshots `prune` keeps of each stack: the union of what each rule keeps (as restic's
/// `forget`); the command line's rules replace these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    /// The newest N.
    pub keep_last: Option<u32>,
    /// The newest of each of the last N hours, days, ISO weeks, months, years that have snapshots
    /// (in `schedule.timezone`).
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// Every snapshot taken within this long before the stack's newest.
    #[serde(default, deserialize_with = "duration")]
    pub keep_within: Option<std::time::Duration>,
    /// How long packs marked for deletion wait before they are deleted, so that a backup running
    /// meanwhile can still use them; default 24h, longer than a night's run.
    #[serde(default, deserialize_with = "duration")]
    pub grace: Option<std::time::Duration>,
}

impl PruneConfig {
    pub fn keeps_nothing_stated(&self) -> bool {
        let PruneConfig { keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within, grace: _ } = self;
        [keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly].iter().all(|n| n.unwrap_or(0) == 0) && keep_within.is_none()
    }

    pub fn grace(&self) -> std::time::Duration {
        self.grace.unwrap_or(std::time::Duration::from_secs(24 * 3600))
    }
}

/// A whole percentage, 1 to 100, written `10%` or `10`.
pub fn parse_percent(text: &str) -> Result<u32, String> {
    match text.trim().trim_end_matches('%').parse::<u32>() {
        Ok(n @ 1..=100) => Ok(n),
        _ => Err(format!("{text:?} is not a percentage from 1% to 100%")),
    }
}

fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Number(u32),
        Text(String),
    }
    let text = match Written::deserialize(d)? {
        Written::Number(n) => n.to_string(),
        Written::Text(t) => t,
    };
    parse_percent(&text).map(Some).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// 5 fields, or 6 with seconds first; default 02:00 every night.
    #[serde(default, deserialize_with = "cron")]
    pub cron: Option<String>,
    /// An IANA zone name; default UTC.
    #[serde(default, deserialize_with = "timezone")]
    pub timezone: Option<String>,
    /// A random delay up to this long before each run.
    #[serde(default, deserialize_with = "duration")]
    pub jitter: Option<std::time::Duration>,
}

/// A schedule given by its cron line; `None` without one.
fn set_schedule(schedule: &Option<ScheduleConfig>) -> Option<Result<Schedule, String>> {
    let schedule = schedule.as_ref()?;
    schedule.cron.as_ref()?;
    Some(schedule.schedule())
}

impl ScheduleConfig {
    pub fn schedule(&self) -> Result<Schedule, String> {
        Schedule::parse(self.cron.as_deref().unwrap_or(DEFAULT_CRON), self.timezone.as_deref().unwrap_or("UTC"))
    }
}

fn cron<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let cron = String::deserialize(d)?;
    Schedule::parse(&cron, "UTC").map_err(|e| serde::de::Error::custom(format!("schedule.cron {cron:?}: {e}")))?;
    Ok(Some(cron))
}

fn timezone<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let zone = String::deserialize(d)?;
    Schedule::parse(DEFAULT_CRON, &zone).map_err(|e| serde::de::Error::custom(format!("schedule.timezone: {e}")))?;
    Ok(Some(zone))
}

fn socket_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    parse_socket_address(&text).map(Some).map_err(serde::de::Error::custom)
}

fn parse_socket_address(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse().map_err(|_| format!("listen {text:?} is not an address with a port, such as 127.0.0.1:9102 or [::]:9102"))
}

/// Where pending snapshots wait when the target cannot take them (`state_dir/staging`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagingConfig {
    /// At most this much; the oldest pending snapshots are dropped first. `0` turns staging off.
    /// Default 10GiB.
    #[serde(default, deserialize_with = "byte_size")]
    pub max_bytes: Option<u64>,
}

impl StagingConfig {
    /// The cap, or `None` when staging is off.
    pub fn max_bytes(&self) -> Option<u64> {
        Some(self.max_bytes.unwrap_or(10 << 30)).filter(|&max| max > 0)
    }
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Number(n) => Ok(Some(n)),
        Size::Text(text) => parse_byte_size(&text).map(Some).map_err(serde::de::Error::custom),
    }
}

/// `50GiB`, `500MB`, `1048576`: binary and decimal units.
fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = (&text[..split], text[split..].trim());
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return Err(format!("{text:?} is not a size such as 50GiB, 500MB or 1048576")),
    };
    digits.parse::<u64>().ok().and_then(|n| n.checked_mul(factor)).ok_or_else(|| format!("{text:?} is not a size such as 50GiB, 500MB or 1048576"))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// How often the daemon tries to upload pending snapshots; default 15m.
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<std::time::Duration>,
    /// How long a pending snapshot is retried before it is reported lost; default by target: a share
    /// 15 days, Azure 10 days.
    #[serde(default, deserialize_with = "duration")]
    pub window: Option<std::time::Duration>,
}

impl RetryConfig {
    pub fn interval(&self) -> std::time::Duration {
        self.interval.unwrap_or(std::time::Duration::from_secs(15 * 60))
    }

    pub fn window(&self, config: &Config) -> std::time::Duration {
        let days = match config.target() {
            Ok(Target::Azure(_)) => 10,
            _ => 15,
        };
        self.window.unwrap_or(std::time::Duration::from_secs(days * 86_400))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `/healthz` fails once the last success is older than the schedule's period plus this; default 6h.
    #[serde(default, deserialize_with = "duration")]
    pub grace: Option<std::time::Duration>,
}

impl HealthConfig {
    pub fn grace(&self) -> std::time::Duration {
        self.grace.unwrap_or(std::time::Duration::from_secs(6 * 3600))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImagesMode {
    #[default]
    Reference,
    Include,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub select: SelectConfig,
    /// How the agent's tree stream reaches the sidecar (see README, "How it reads and writes volumes").
    #[serde(default)]
    pub stream: StreamMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamMode {
    /// A socket in a shared volume where one can be found, else the attach stream.
    #[default]
    Auto,
    /// Always a socket in a shared volume; an error when none can be found.
    Socket,
    /// Always the container's attach stream (through dockerd): works with a remote engine.
    Attach,
}

impl std::str::FromStr for StreamMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(StreamMode::Auto),
            "socket" => Ok(StreamMode::Socket),
            "attach" => Ok(StreamMode::Attach),
            other => Err(format!("{other:?} is not one of auto, socket, attach")),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectConfig {
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default, deserialize_with = "label_filter")]
    pub label: Option<String>,
}

impl SelectConfig {
    pub fn is_set(&self) -> bool {
        self.project.is_some() || self.label.is_some()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    #[serde(default)]
    pub filesystem: Option<FilesystemConfig>,
    #[serde(default)]
    pub azure: Option<AzureConfig>,
}

/// Which target the repository lives in: exactly one of `repository.filesystem` and `repository.azure`.
pub enum Target<'a> {
    Filesystem(&'a Path),
    Azure(&'a AzureConfig),
}

/// An Azure Blob Storage container (README, "Azure Blob Storage"). Secrets are never keys of this
/// file: they come from the standard variables or from the files named here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// Default: AZURE_STORAGE_ACCOUNT, or the connection string's AccountName.
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub container: Option<String>,
    /// A folder inside the container, so that several stacks can share one.
    #[serde(default)]
    pub prefix: String,
    /// Default: https://<account>.blob.core.windows.net (or the connection string's BlobEndpoint).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Default: the first kind whose secret is present (connection string, key, SAS), else an error.
    #[serde(default)]
    pub credential: Option<AzureCredential>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub sas_file: Option<PathBuf>,
    #[serde(default)]
    pub connection_string_file: Option<PathBuf>,
    #[serde(default)]
    pub immutability: Immutability,
    /// How long a failing request is retried (timeouts, 5xx, 429, connection errors) before the run
    /// fails; the next run resumes. Default 2 minutes.
    #[serde(default, deserialize_with = "duration")]
    pub retry_for: Option<std::time::Duration>,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::time::Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map(Some).map_err(serde::de::Error::custom)
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration such as 90s, 2m or 1h: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AzureCredential {
    SharedKey,
    Sas,
    ConnectionString,
    ManagedIdentity,
    WorkloadIdentity,
    AzureCli,
}

impl std::str::FromStr for AzureCredential {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_yaml_ng::from_str(s).map_err(|_| {
            format!("{s:?} is not one of shared_key, sas, connection_string, managed_identity, workload_identity, azure_cli")
        })
    }
}

/// The WORM settings every object gets when it is stored (README, "Immutability").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Immutability {
    /// An object stays locked until the end of the day (UTC) this many days after it is stored.
    pub days: u32,
    pub mode: LockMode,
    pub legal_hold: bool,
    /// Refuse a container without version-level immutability support.
    pub required: bool,
    /// An older object that a new snapshot references is locked this many days past the snapshot's own
    /// lock, so that each object's lock is extended about once a month, not every night.
    pub extend_ahead_days: u32,
}

impl Default for Immutability {
    fn default() -> Self {
        Immutability { days: 180, mode: LockMode::Locked, legal_hold: false, required: true, extend_ahead_days: 30 }
    }
}

/// Azure's per-blob policy modes: `locked` can only be extended, by anyone; `unlocked` can be
/// shortened or removed by an administrator (for trials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Locked,
    Unlocked,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    #[serde(default, deserialize_with = "recipients")]
    pub recipients: Vec<Recipient>,
}

fn label_filter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let label = String::deserialize(d)?;
    check_label(&label).map_err(serde::de::Error::custom)?;
    Ok(Some(label))
}

fn check_label(label: &str) -> Result<(), String> {
    let key = label.split('=').next().unwrap_or_default();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(format!("docker.select.label {label:?} must be KEY or KEY=VALUE, e.g. stackvault.enable=true"));
    }
    Ok(())
}

fn patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    /// One pattern, checked where it is read, so that an error points at its own line.
    struct Pattern(String);
    impl<'de> Deserialize<'de> for Pattern {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let pattern = String::deserialize(d)?;
            crate::source::exclude::check_pattern(&pattern).map_err(serde::de::Error::custom)?;
            Ok(Pattern(pattern))
        }
    }
    Ok(Vec::<Pattern>::deserialize(d)?.into_iter().map(|p| p.0).collect())
}

fn recipients<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Recipient>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| crypt::parse_recipient(t).map_err(|e| serde::de::Error::custom(format!("encryption.recipients[{i}]: {e}"))))
        .collect()
}

impl Config {
    /// Reads `path` (or, when none is given, the default path if it exists), then applies the
    /// environment's overrides.
    /// Where `init` should write [`EXAMPLE`]: the file (given, or the default) is absent or empty and
    /// no variable names a target either, so there is nothing to create a repository in yet.
    pub fn example_destination(&self, path: Option<&Path>) -> Option<PathBuf> {
        let path = path.unwrap_or(Path::new(DEFAULT_PATH));
        let unset = self.repository.filesystem.is_none() && self.repository.azure.is_none();
        (unset && !has_content(path)).then(|| path.to_path_buf())
    }

    /// Writes [`EXAMPLE`] to `path`, creating its folder; never over a file that has content.
    pub fn write_example(path: &Path) -> Result<(), ConfigError> {
        let file = path.display().to_string();
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            if has_content(path) {
                return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already has content; left as it is"));
            }
            std::fs::write(path, EXAMPLE)
        };
        write().map_err(|cause| ConfigError::Write { file, cause })
    }

    /// As [`Config::load`], but a named file that does not exist yet reads as empty: `init` then
    /// writes the example there.
    pub fn load_for_init(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) if !path.exists() => {
                let mut config = Config { origin: format!("{} (absent)", path.display()), ..Config::default() };
                config.apply_env(std::env::vars())?;
                Ok(config)
            }
            _ => Self::load(path),
        }
    }

    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => Self::read(path)?,
            None if Path::new(DEFAULT_PATH).exists() => Self::read(Path::new(DEFAULT_PATH))?,
            None => Config { origin: format!("{DEFAULT_PATH} (absent)"), ..Config::default() },
        };
        config.apply_env(std::env::vars())?;
        Ok(config)
    }

    fn read(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { file: file.clone(), cause })?;
        let mut config = Self::parse(&text, &file)?;
        config.origin = file;
        Ok(config)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let config: Config = serde_yaml_ng::from_str(text).map_err(|e| {
            let message = e.to_string();
            // The location is reported in our file:line:column prefix; drop serde's own copy.
            let message = message.split(" at line ").next().unwrap_or(&message).to_string();
            match e.location() {
                Some(loc) => ConfigError::Invalid { file: file.to_string(), line: loc.line(), column: loc.column(), message },
                None => ConfigError::InvalidNoLocation { file: file.to_string(), message },
            }
        })?;
        // A source's name starts with its entry's: one name, one server.
        if let Some((i, twice)) = config.databases.iter().enumerate().find(|(i, d)| config.databases[..*i].iter().any(|e| e.name == d.name)) {
            return Err(ConfigError::InvalidNoLocation { file: file.to_string(), message: format!("databases[{i}]: name {:?} is used twice", twice.name) });
        }
        Ok(config)
    }

    /// `STACKVAULT_<SECTION>_<KEY>` overrides the key; lists are comma-separated. An unknown
    /// `STACKVAULT_` variable is an error, so that a typo cannot silently leave a setting unapplied.
    pub fn apply_env(&mut self, vars: impl Iterator<Item = (String, String)>) -> Result<(), ConfigError> {
        for (name, value) in vars {
            if !name.starts_with("STACKVAULT_") || CLI_VARIABLES.contains(&name.as_str()) {
                continue;
            }
            let env_err = |message: String| ConfigError::Env { name: name.clone(), message };
            let list = || value.split(',').map(str::trim).filter(|s| !s.is_empty());
            match name.as_str() {
                "STACKVAULT_STACK" => self.stack = Some(value.clone()),
                "STACKVAULT_DOCKER_HOST" => self.docker.host = Some(value.clone()),
                "STACKVAULT_DOCKER_SELECT_PROJECT" => self.docker.select.project = Some(value.clone()),
                "STACKVAULT_DOCKER_SELECT_LABEL" => {
                    check_label(&value).map_err(env_err)?;
                    self.docker.select.label = Some(value.clone());
                }
                "STACKVAULT_DOCKER_STREAM" => self.docker.stream = value.parse().map_err(env_err)?,
                "STACKVAULT_PATHS" => self.paths = list().map(PathBuf::from).collect(),
                "STACKVAULT_IMAGES" => {
                    self.images = serde_yaml_ng::from_str(&value).map_err(|_| env_err(format!("{value:?} is not include or reference")))?
                }
                "STACKVAULT_CACHE_DIR" => self.cache_dir = Some(PathBuf::from(&value)),
                "STACKVAULT_STATE_DIR" => self.state_dir = Some(PathBuf::from(&value)),
                "STACKVAULT_EXCLUDE" => {
                    let patterns: Vec<String> = list().map(str::to_string).collect();
                    for pattern in &patterns {
                        crate::source::exclude::check_pattern(pattern).map_err(env_err)?;
                    }
                    self.exclude = patterns;
                }
                "STACKVAULT_EXCLUDE_CACHES" => {
                    self.exclude_caches = Some(value.parse().map_err(|_| env_err(format!("{value:?} is not true or false")))?)
                }
                "STACKVAULT_REPOSITORY_FILESYSTEM_PATH" => {
                    self.repository.filesystem = Some(FilesystemConfig { path: PathBuf::from(&value) })
                }
                _ if name.starts_with("STACKVAULT_REPOSITORY_AZURE_") => {
                    let azure = self.repository.azure.get_or_insert_with(AzureConfig::default);
                    azure.apply_env(&name["STACKVAULT_REPOSITORY_AZURE_".len()..], &value).map_err(env_err)?
                }
                "STACKVAULT_SCHEDULE_CRON" => {
                    Schedule::parse(&value, "UTC").map_err(env_err)?;
                    self.schedule.cron = Some(value.clone());
                }
                "STACKVAULT_SCHEDULE_TIMEZONE" => {
                    Schedule::parse(DEFAULT_CRON, &value).map_err(env_err)?;
                    self.schedule.timezone = Some(value.clone());
                }
                "STACKVAULT_SCHEDULE_JITTER" => self.schedule.jitter = Some(parse_duration(&value).map_err(env_err)?),
                "STACKVAULT_LISTEN" => self.listen = Some(parse_socket_address(&value).map_err(env_err)?),
                "STACKVAULT_LOG_FORMAT" => {
                    self.log_format = Some(serde_yaml_ng::from_str(&value).map_err(|_| env_err(format!("{value:?} is not text or json")))?)
                }
                "STACKVAULT_STAGING_MAX_BYTES" => self.staging.max_bytes = Some(parse_byte_size(&value).map_err(env_err)?),
                "STACKVAULT_RETRY_INTERVAL" => self.retry.interval = Some(parse_duration(&value).map_err(env_err)?),
                "STACKVAULT_RETRY_WINDOW" => self.retry.window = Some(parse_duration(&value).map_err(env_err)?),
                "STACKVAULT_HEALTH_GRACE" => self.health.grace = Some(parse_duration(&value).map_err(env_err)?),
                "STACKVAULT_ALERTS_WEBHOOKS" => {
                    // URLs only, each with the default format and events; the file gives more control.
                    self.alerts.webhooks = list()
                        .map(|url| serde_yaml_ng::from_str(&format!("url: {url:?}")).map_err(|e| env_err(format!("{e}"))))
                        .collect::<Result<_, _>>()?
                }
                "STACKVAULT_ENCRYPTION_RECIPIENTS" => {
                    self.encryption.recipients = list().map(crypt::parse_recipient).collect::<Result<_, _>>().map_err(env_err)?
                }
                _ => return Err(env_err("unknown setting; see README.md, \"Configuration\", for the variables".into())),
            }
        }
        Ok(())
    }

    pub fn stack(&self) -> Result<&str, ConfigError> {
        self.stack.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| ConfigError::Missing {
            key: "stack",
            hint: format!("name the stack in {} or set STACKVAULT_STACK", self.origin),
        })
    }

    pub fn exclude_caches(&self) -> bool {
        self.exclude_caches.unwrap_or(true)
    }

    pub fn cache_dir(&self) -> &Path {
        self.cache_dir.as_deref().unwrap_or(Path::new(DEFAULT_CACHE_DIR))
    }

    pub fn state_dir(&self) -> &Path {
        self.state_dir.as_deref().unwrap_or(Path::new(DEFAULT_STATE_DIR))
    }

    pub fn target(&self) -> Result<Target<'_>, ConfigError> {
        match (&self.repository.filesystem, &self.repository.azure) {
            (Some(fs), None) => Ok(Target::Filesystem(&fs.path)),
            (None, Some(azure)) => Ok(Target::Azure(azure)),
            (Some(_), Some(_)) => Err(ConfigError::InvalidNoLocation {
                file: self.origin.clone(),
                message: "repository: set either filesystem or azure, not both (check STACKVAULT_REPOSITORY_* variables too)".into(),
            }),
            (None, None) => Err(ConfigError::Missing {
                key: "repository",
                hint: format!(
                    "set repository.filesystem.path or repository.azure in {} (or STACKVAULT_REPOSITORY_FILESYSTEM_PATH)",
                    self.origin
                ),
            }),
        }
    }
}

/// A file that exists and is not empty: the user's, never replaced by the example.
fn has_content(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

impl AzureConfig {
    fn apply_env(&mut self, key: &str, value: &str) -> Result<(), String> {
        let flag = |v: &str| v.parse::<bool>().map_err(|_| format!("{v:?} is not true or false"));
        let number = |v: &str| v.parse::<u32>().map_err(|_| format!("{v:?} is not a whole number"));
        match key {
            "ACCOUNT" => self.account = Some(value.to_string()),
            "CONTAINER" => self.container = Some(value.to_string()),
            "PREFIX" => self.prefix = value.to_string(),
            "ENDPOINT" => self.endpoint = Some(value.to_string()),
            "CREDENTIAL" => self.credential = Some(value.parse()?),
            "KEY_FILE" => self.key_file = Some(PathBuf::from(value)),
            "SAS_FILE" => self.sas_file = Some(PathBuf::from(value)),
            "CONNECTION_STRING_FILE" => self.connection_string_file = Some(PathBuf::from(value)),
            "IMMUTABILITY_DAYS" => self.immutability.days = number(value)?,
            "IMMUTABILITY_MODE" => {
                self.immutability.mode = serde_yaml_ng::from_str(value).map_err(|_| format!("{value:?} is not locked or unlocked"))?
            }
            "IMMUTABILITY_LEGAL_HOLD" => self.immutability.legal_hold = flag(value)?,
            "IMMUTABILITY_REQUIRED" => self.immutability.required = flag(value)?,
            "IMMUTABILITY_EXTEND_AHEAD_DAYS" => self.immutability.extend_ahead_days = number(value)?,
            "RETRY_FOR" => self.retry_for = Some(parse_duration(value)?),
            _ => return Err("unknown setting; see README.md, \"Azure Blob Storage\", for the variables".into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_init_writes_is_a_valid_configuration_and_is_written_only_where_there_is_none() {
        let example = Config::parse(EXAMPLE, "example").unwrap();
        assert!(matches!(example.target(), Ok(Target::Filesystem(_))));
        assert_eq!(example.stack.as_deref(), Some("mystack"));

        let dir = std::env::temp_dir().join(format!("sv-example-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("etc/stackvault.yaml");
        let nothing = Config::default();
        assert_eq!(nothing.example_destination(Some(&path)), Some(path.clone()));
        Config::write_example(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), EXAMPLE);
        assert_eq!(nothing.example_destination(Some(&path)), None, "a file with content is the user's");
        assert!(Config::write_example(&path).unwrap_err().to_string().contains("already has content"));

        let by_variable = Config { repository: example.repository.clone(), ..Config::default() };
        assert_eq!(by_variable.example_destination(Some(&dir.join("absent.yaml"))), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unknown_key_names_file_line_and_key() {
        let err = Config::parse("stack: demo\ndocker:\n  select:\n    projct: demo\n", "s.yaml").unwrap_err().to_string();
        assert!(err.starts_with("s.yaml:4:"), "{err}");
        assert!(err.contains("projct"), "{err}");
    }

    #[test]
    fn a_bad_recipient_names_its_line_and_index() {
        let err = Config::parse("encryption:\n  recipients: [\"age1nope\"]\n", "s.yaml").unwrap_err().to_string();
        assert!(err.starts_with("s.yaml:2:"), "{err}");
        assert!(err.contains("recipients[0]"), "{err}");
    }

    #[test]
    fn database_servers_are_checked_where_they_are_written() {
        let entry = "  - {name: cc, engine: postgres, host: pg.cc.svc, password_file: /run/pw}\n";
        let config = Config::parse(&format!("stack: a\ndatabases:\n{entry}"), "s.yaml").unwrap();
        assert_eq!((config.databases[0].engine, config.databases[0].port), (DumpEngine::Postgres, None));
        for (body, expected) in [
            ("  - {name: cc, engine: redis, host: h}\n", "\"redis\" is not one of mariadb, mysql, postgres"),
            ("  - {name: cc, engine: command, host: h}\n", "\"command\" is not one of"),
            ("  - {name: c/c, engine: mysql, host: h}\n", "databases \"c/c\": the name"),
            ("  - {name: cc, engine: mysql, host: h, password_file: /a, password_env: B}\n", "not both"),
            ("  - {name: cc, engine: mysql, host: h, password_env: 'A;B'}\n", "not an environment variable name"),
            ("  - {name: cc, engine: mysql, host: h, databases: []}\n", "list database names"),
            ("  - {name: cc, engine: mysql, hots: h}\n", "hots"),
        ] {
            let err = Config::parse(&format!("stack: a\ndatabases:\n{body}"), "s.yaml").unwrap_err().to_string();
            assert!(err.starts_with("s.yaml:3:") && err.contains(expected), "{body}: {err}");
        }
        let err = Config::parse(&format!("stack: a\ndatabases:\n{entry}{entry}"), "s.yaml").unwrap_err().to_string();
        assert_eq!(err, "s.yaml: databases[1]: name \"cc\" is used twice");
    }

    #[test]
    fn the_verify_schedule_is_off_unless_set_and_its_share_is_a_percentage() {
        assert!(Config::parse("stack: a\n", "s.yaml").unwrap().verify.schedule().is_none());
        let config = Config::parse("stack: a\nverify:\n  schedule:\n    cron: \"0 5 * * 0\"\n  read_data: 25%\n", "s.yaml").unwrap();
        assert!(matches!(config.verify.schedule(), Some(Ok(_))));
        assert_eq!(config.verify.read_data(), 25);
        for bad in ["0%", "101", "ten"] {
            let err = Config::parse(&format!("stack: a\nverify:\n  read_data: {bad}\n"), "s.yaml").unwrap_err().to_string();
            assert!(err.starts_with("s.yaml:3:") && err.contains("is not a percentage"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_bad_exclude_pattern_names_its_line() {
        let err = Config::parse("stack: a\nexclude:\n  - \"*.tmp\"\n  - \"[z-a]\"\n", "s.yaml").unwrap_err().to_string();
        assert!(err.starts_with("s.yaml:3:") && err.contains("exclude") && err.contains("[z-a]") && err.contains("invalid range"), "{err}");
    }

    #[test]
    fn runner_settings_are_checked_where_they_are_written() {
        let err = Config::parse("stack: a\nschedule:\n  cron: \"0 25 * * *\"\n", "s.yaml").unwrap_err().to_string();
        assert!(err.starts_with("s.yaml:3:") && err.contains("hour"), "{err}");
        let err = Config::parse("stack: a\nschedule:\n  timezone: Europe/Berln\n", "s.yaml").unwrap_err().to_string();
        assert!(err.starts_with("s.yaml:3:") && err.contains("Europe/Berln"), "{err}");
        let err = Config::parse("stack: a\nstaging:\n  max_bytes: 5 parsecs\n", "s.yaml").unwrap_err().to_string();
        assert!(err.starts_with("s.yaml:3:") && err.contains("5 parsecs"), "{err}");
        let config = Config::parse("stack: a\nstaging:\n  max_bytes: 50GiB\nlisten: 127.0.0.1:9102\n", "s.yaml").unwrap();
        assert_eq!(config.staging.max_bytes(), Some(50 << 30));
        assert_eq!(config.listen, Some("127.0.0.1:9102".parse().unwrap()));
        assert_eq!(Config::parse("stack: a\nstaging:\n  max_bytes: 0\n", "s.yaml").unwrap().staging.max_bytes(), None);
    }

    #[test]
    fn environment_overrides_keys_and_rejects_unknown_ones() {
        let mut config = Config::parse("stack: a\n", "s.yaml").unwrap();
        let vars = [("STACKVAULT_STACK".to_string(), "b".to_string()), ("STACKVAULT_PATHS".into(), "/x, /y".into())];
        config.apply_env(vars.into_iter()).unwrap();
        assert_eq!(config.stack().unwrap(), "b");
        assert_eq!(config.paths, vec![PathBuf::from("/x"), PathBuf::from("/y")]);
        let err = config.apply_env([("STACKVAULT_STAK".to_string(), "c".to_string())].into_iter()).unwrap_err();
        assert!(err.to_string().contains("STACKVAULT_STAK"));
    }
}
