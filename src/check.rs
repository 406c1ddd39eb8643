//! `stackvault check`: everything a backup needs, reached without taking one. The target is opened
//! (read), written to (a temporary object that is never committed) and asked how it locks objects;
//! the Docker engine, each selected container and each database server are reached (the servers
//! list their databases with the configured logins); and every source's metadata is walked to tell
//! what a backup would read. Nothing is stored; a failing part does not hide the others.

use std::io::Write;

use crate::backup::{self, DryRun};
use crate::config::Config;
use crate::Error;

/// One part of the check and what it found.
#[derive(Debug, serde::Serialize)]
pub struct Finding {
    pub part: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, serde::Serialize)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    /// What a backup would take, where the target and the sources could both be reached.
    pub would_take: Option<DryRun>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.ok)
    }
}

pub async fn check(config: &Config) -> CheckReport {
    let mut findings = Vec::new();
    let mut found = |part, result: Result<String, Error>| {
        let ok = result.is_ok();
        findings.push(Finding { part, ok, detail: result.unwrap_or_else(|e| e.to_string()) });
        ok
    };
    let repo = match target(config) {
        Ok((repo, reached, locks)) => {
            found("target", Ok(reached));
            found("immutability", Ok(locks));
            Some(repo)
        }
        Err(e) => {
            found("target", Err(e));
            None
        }
    };
    let mut would_take = None;
    match backup::reach(config).await {
        Ok(reached) => {
            let (containers, servers) = reached.counts();
            let mut parts = Vec::new();
            if config.docker.select.is_set() {
                let at = config.docker.host.as_ref().map(|h| format!(" at {h}")).unwrap_or_default();
                parts.push(format!("the Docker engine{at} and {containers} selected containers"));
            }
            if servers > 0 {
                parts.push(format!("{servers} database servers, each listing its databases"));
            }
            if !config.paths.is_empty() {
                parts.push(format!("{} paths", config.paths.len()));
            }
            found("sources", Ok(format!("reached {}", parts.join(", "))));
            match repo {
                Some(repo) => match backup::scan(config, repo, reached).await {
                    Ok(dry) => would_take = Some(dry),
                    Err(e) => {
                        found("scan", Err(e));
                    }
                },
                None => reached.finish().await,
            }
        }
        Err(e) => {
            found("sources", Err(e));
        }
    }
    CheckReport { findings, would_take }
}

/// Opens the repository, writes a temporary object there (dropped uncommitted: it never gets a
/// name, and a WORM target keeps nothing of it), and says how new objects would be locked.
fn target(config: &Config) -> Result<(crate::repo::Repository, String, String), Error> {
    let repo = crate::open_repository(config)?;
    let storage = repo.storage.as_ref();
    let mut notes = storage.check_writable(false)?;
    let mut probe = storage.create()?;
    probe.write_all(b"stackvault check: never committed").and_then(|()| probe.flush()).map_err(|e| crate::storage::StorageError::from_io(storage.location(), e))?;
    drop(probe);
    let encryption = if repo.config.encryption.is_some() { "encrypted" } else { "not encrypted" };
    let reached = format!("repository {} (format version {}, {encryption}) at {}: readable and writable", repo.config.id, repo.config.version, storage.location());
    let locks = match storage.lock_until()? {
        Some(until) => {
            let until = jiff::Timestamp::try_from(until).map(|t| t.strftime("%Y-%m-%d").to_string()).unwrap_or_default();
            let hold = if storage.holds_legally() { ", and put under legal hold" } else { "" };
            format!("objects written now are locked until {until}{hold}")
        }
        None => {
            notes.push("the target locks nothing: objects are protected by its own permissions and snapshots only".into());
            String::new()
        }
    };
    let locks = [locks].into_iter().chain(notes).filter(|n| !n.is_empty()).collect::<Vec<_>>().join("; ");
    Ok((repo, reached, locks))
}
