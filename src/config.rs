//! The YAML configuration (the public contract, documented key by key in README.md) and its
//! environment overrides `STACKVAULT_<SECTION>_<KEY>`. Errors name the file, line and key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::repo::crypt::{self, Recipient};

pub const DEFAULT_PATH: &str = "/etc/stackvault/stackvault.yaml";
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/stackvault";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/stackvault";

/// Environment variables read by the command line itself rather than the config file.
const CLI_VARIABLES: &[&str] = &["STACKVAULT_CONFIG", "STACKVAULT_IDENTITY"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
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
    /// Where the file came from, for messages.
    #[serde(skip)]
    pub origin: String,
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
        let mut config = Self::parse(&text, &file)?;
        config.origin = file;
        Ok(config)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| {
            let message = e.to_string();
            // The location is reported in our file:line:column prefix; drop serde's own copy.
            let message = message.split(" at line ").next().unwrap_or(&message).to_string();
            match e.location() {
                Some(loc) => ConfigError::Invalid { file: file.to_string(), line: loc.line(), column: loc.column(), message },
                None => ConfigError::InvalidNoLocation { file: file.to_string(), message },
            }
        })
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
    fn a_bad_exclude_pattern_names_its_line() {
        let err = Config::parse("stack: a\nexclude:\n  - \"*.tmp\"\n  - \"[z-a]\"\n", "s.yaml").unwrap_err().to_string();
        assert!(err.starts_with("s.yaml:3:") && err.contains("exclude") && err.contains("[z-a]") && err.contains("invalid range"), "{err}");
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
