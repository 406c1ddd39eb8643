//! The runner: what turns one backup into a nightly job that never loses a night. `schedule` says when,
//! `lock` keeps one run per state directory, `staging` keeps a night's snapshot when the target cannot
//! take it and uploads it later, `status` remembers results between processes, `metrics` and `http`
//! show them, `alerts` tells someone, `log` writes it down; `daemon` is the loop around them. The
//! one-shot `backup` command runs the same [`Runner::run`] once.

pub mod alerts;
pub mod daemon;
pub mod http;
pub mod lock;
pub mod log;
pub mod metrics;
pub mod schedule;
pub mod staging;
pub mod status;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::backup::{BackupOutcome, Destination};
use crate::config::{Config, Target};
use crate::repo::RepoError;
use crate::Error;
use alerts::{Alert, AlertKind, Alerter};
use log::{Level, Log};
use metrics::{HealthRule, Metrics, RunRecord};
use staging::{Pending, PendingRecord, Staging};
use status::{RunSummary, Status};

/// How a run ended well: its snapshot is on the target, or staged for it.
pub enum Outcome {
    Stored(BackupOutcome),
    Staged { outcome: BackupOutcome, reason: String, dir: std::path::PathBuf },
}

pub struct Runner {
    pub config: Config,
    pub log: Log,
    pub metrics: Arc<Metrics>,
    alerter: Alerter,
    staging: Staging,
    status: Mutex<Status>,
    stack: String,
}

/// Serves `/healthz` and `/metrics` on `address` until the returned task is aborted.
pub async fn listen(address: std::net::SocketAddr, metrics: Arc<Metrics>) -> Result<tokio::task::JoinHandle<()>, Error> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| Error::Usage(format!("listen {address}: {e}; choose another address or port")))?;
    Ok(tokio::spawn(http::serve(listener, metrics)))
}

/// A new run's id: short, unique enough to find a run's lines in a log.
pub fn run_id() -> String {
    hex::encode(crate::random_bytes::<6>())
}

fn seconds(d: Duration) -> serde_json::Value {
    serde_json::json!((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

impl Runner {
    /// `period`: how often runs are due (the schedule's, or a day for one-shot runs), for health.
    /// Needs a tokio runtime (alerts are delivered in the background).
    pub fn new(config: Config, period: Duration) -> Result<Runner, Error> {
        let stack = config.stack()?.to_string();
        let status = Status::load(config.state_dir());
        let health = HealthRule { period, grace: config.health.grace() };
        let metrics = Metrics::new(stack.clone(), health, SystemTime::now());
        if let Some(success) = &status.last_success {
            metrics.set_last_success(SystemTime::UNIX_EPOCH + Duration::from_secs(success.unix.max(0) as u64));
        }
        let runner = Runner {
            log: Log::new(config.log_format, &stack),
            alerter: Alerter::new(config.alerts.webhooks.clone()),
            staging: Staging::new(config.state_dir()),
            metrics,
            status: Mutex::new(status),
            stack,
            config,
        };
        runner.update_pending_gauges();
        Ok(runner)
    }

    pub fn staging(&self) -> &Staging {
        &self.staging
    }

    /// One run, under the lock the caller holds: pending snapshots are uploaded first (oldest first),
    /// then tonight's backup is taken, staged when the target cannot take it.
    pub async fn run(&self, run_id: &str) -> Result<Outcome, Error> {
        let started = Instant::now();
        let sent_before = crate::storage::bytes_sent();
        self.log.event(Level::Info, run_id, "run.start", "backup started", serde_json::json!({}));
        self.retry_pending(run_id).await;
        let result = self.backup_or_stage(run_id).await;
        let duration = started.elapsed();
        let uploaded = crate::storage::bytes_sent() - sent_before;
        let (summary_of, snapshot) = match &result {
            Ok(Outcome::Stored(o)) | Ok(Outcome::Staged { outcome: o, .. }) => (Some(o.snapshot.summary.clone()), Some(o.id.hex())),
            Err(_) => (None, None),
        };
        let (read, new) = summary_of.as_ref().map_or((0, 0), |s| (s.bytes, s.new_bytes));
        let stored = matches!(result, Ok(Outcome::Stored(_)));
        self.metrics.record_run(&RunRecord { success: stored, finished: SystemTime::now(), duration, bytes_read: read, bytes_new: new, bytes_uploaded: uploaded });
        let (result_name, reason) = match &result {
            Ok(Outcome::Stored(_)) => ("success", None),
            Ok(Outcome::Staged { reason, .. }) => ("staged", Some(reason.clone())),
            Err(e) => ("failure", Some(e.to_string())),
        };
        let summary = RunSummary {
            run_id: run_id.to_string(),
            time: crate::now_rfc3339(),
            unix: crate::unix_now(),
            result: result_name.to_string(),
            snapshot: snapshot.clone(),
            duration_seconds: duration.as_secs_f64(),
            bytes_read: read,
            bytes_new: new,
            bytes_uploaded: uploaded,
            reason: reason.clone(),
        };
        let figures = serde_json::json!({
            "snapshot": snapshot, "duration_seconds": seconds(duration), "bytes_read": read, "bytes_new": new, "bytes_uploaded": uploaded,
        });
        match &result {
            Ok(Outcome::Stored(_)) => {
                self.log.event(Level::Info, run_id, "run.success", "snapshot stored on the target", figures.clone());
                self.alert(AlertKind::Success, run_id, snapshot.clone(), "backup stored on the target".into(), figures.clone());
                self.update_status(run_id, |status| status.last_success = Some(summary));
            }
            Ok(Outcome::Staged { reason, dir, .. }) => {
                let message = format!("the target could not be written ({reason}): the snapshot is staged in {} and uploaded when the target answers", dir.display());
                self.log.event(Level::Error, run_id, "run.staged", &message, figures.clone());
                self.alert(AlertKind::Failure, run_id, snapshot.clone(), message, figures.clone());
                self.update_status(run_id, |status| status.last_failure = Some(summary));
            }
            Err(e) => {
                let message = format!("backup failed: {e}");
                self.log.event(Level::Error, run_id, "run.failure", &message, figures.clone());
                self.alert(AlertKind::Failure, run_id, None, message, figures.clone());
                self.update_status(run_id, |status| status.last_failure = Some(summary));
            }
        }
        self.update_pending_gauges();
        result
    }

    async fn backup_or_stage(&self, run_id: &str) -> Result<Outcome, Error> {
        let direct = crate::backup::backup(&self.config, &Destination::Target).await;
        let error = match direct {
            Ok(outcome) => {
                self.remember_target().await;
                return Ok(Outcome::Stored(outcome));
            }
            Err(e) => e,
        };
        let location = self.target_location();
        let outage = match (&error, &location) {
            (_, None) => None,
            (e, _) if e.target_failure().is_some() => Some(e.to_string()),
            // A share that is not mounted looks like a directory without a repository.
            (Error::Repo(RepoError::NotARepository(_)), Some(location)) if self.staging.knows_target(location) => Some(error.to_string()),
            _ => None,
        };
        let (Some(reason), Some(location), Some(max_bytes)) = (outage, location, self.config.staging.max_bytes()) else { return Err(error) };
        self.log.event(Level::Warn, run_id, "run.staging", &format!("the target could not be written ({reason}); taking the snapshot into staging"), serde_json::json!({}));
        let run = self.staging.begin(&location, run_id).map_err(|e| Error::Usage(format!("{error}; and it cannot be staged: {e}")))?;
        let index_cache = crate::open_staging_repository(&self.config, &run.dir).ok().and_then(|repo| repo.index_cache);
        let destination = Destination::Staging { dir: run.dir.clone(), absent: self.staging.staged_packs() };
        let outcome = match crate::backup::backup(&self.config, &destination).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // The local index may list packs of this staged run, which will never reach the target.
                if let Some(cache) = &index_cache {
                    let _ = std::fs::remove_dir_all(cache);
                }
                return Err(Error::Usage(format!("{error}; and staging the snapshot failed too: {e}")));
            }
        };
        let record = PendingRecord {
            snapshot: outcome.id.hex(),
            stack: self.stack.clone(),
            time: outcome.snapshot.time.clone(),
            staged_at: crate::unix_now(),
            target: location,
            reason: reason.clone(),
            bytes: 0,
            attempts: 0,
            last_error: None,
            lost: None,
        };
        let pending = self.staging.finish(run, record).map_err(|e| Error::Usage(format!("{error}; and the staged snapshot could not be kept: {e}")))?;
        for dropped in self.staging.enforce_cap(max_bytes, index_cache.as_deref()) {
            let message = format!(
                "pending snapshot {} of {} dropped: staging holds more than staging.max_bytes ({} bytes); it is lost for the target",
                dropped.snapshot, dropped.time, max_bytes
            );
            self.log.event(Level::Error, run_id, "pending.dropped", &message, serde_json::json!({"snapshot": dropped.snapshot, "bytes": dropped.bytes}));
            self.alert(AlertKind::Lost, run_id, Some(dropped.snapshot.clone()), message, serde_json::json!({"bytes": dropped.bytes}));
        }
        Ok(Outcome::Staged { outcome, reason, dir: pending.dir })
    }

    /// Uploads pending snapshots, oldest first, until the target fails; gives up (alerted as lost)
    /// on those past the retry window, and on one that can no longer be completed. A recovery is
    /// alerted once nothing is pending after a failure.
    pub async fn retry_pending(&self, run_id: &str) {
        let window = self.config.retry.window(&self.config);
        let waiting: Vec<Pending> = self.staging.list().into_iter().filter(|p| p.record.lost.is_none()).collect();
        if waiting.is_empty() {
            return;
        }
        for mut pending in waiting {
            if crate::unix_now() - pending.record.staged_at > window.as_secs() as i64 {
                let reason = format!(
                    "not uploaded within the retry window ({}); last error: {}",
                    humantime::format_duration(window),
                    pending.record.last_error.as_deref().unwrap_or(&pending.record.reason)
                );
                self.give_up(run_id, &mut pending, reason);
                continue;
            }
            match self.push(&pending).await {
                Ok(sent) => self.pushed(run_id, &pending, sent),
                Err(e) => {
                    pending.record.attempts += 1;
                    pending.record.last_error = Some(e.to_string());
                    let _ = pending.save();
                    let figures = serde_json::json!({"snapshot": pending.id(), "attempts": pending.record.attempts});
                    self.log.event(Level::Warn, run_id, "pending.retry", &format!("pending snapshot not uploaded yet: {e}"), figures);
                    if e.target_failure().is_some() || matches!(e, Error::Repo(RepoError::NotARepository(_))) {
                        break; // still down: the others wait too
                    }
                    self.give_up(run_id, &mut pending, e.to_string());
                }
            }
        }
        self.update_status(run_id, |_| {});
        self.update_pending_gauges();
    }

    /// Uploads one pending snapshot to the configured target.
    pub async fn push(&self, pending: &Pending) -> Result<u64, Error> {
        let config = self.config.clone();
        let (dir, record) = (pending.dir.clone(), pending.record.clone());
        tokio::task::spawn_blocking(move || staging::push(&crate::open_repository(&config)?, &Pending { dir, record }))
            .await
            .unwrap_or_else(|e| Err(Error::Usage(format!("the upload stopped: {e}"))))
    }

    /// Records an uploaded pending snapshot: the target holds it now, as after a successful run.
    pub fn pushed(&self, run_id: &str, pending: &Pending, sent: u64) {
        let figures = serde_json::json!({"snapshot": pending.id(), "bytes_uploaded": sent, "staged_at": pending.record.staged_at});
        self.log.event(Level::Info, run_id, "pending.uploaded", &format!("pending snapshot of {} uploaded to the target", pending.record.time), figures);
        self.metrics.set_last_success(SystemTime::now());
        let summary = RunSummary {
            run_id: run_id.to_string(),
            time: crate::now_rfc3339(),
            unix: crate::unix_now(),
            result: "uploaded".into(),
            snapshot: Some(pending.id().to_string()),
            duration_seconds: 0.0,
            bytes_read: 0,
            bytes_new: 0,
            bytes_uploaded: sent,
            reason: None,
        };
        self.update_status(run_id, |status| status.last_success = Some(summary));
    }

    fn give_up(&self, run_id: &str, pending: &mut Pending, reason: String) {
        let message = format!("pending snapshot {} of {} is lost for the target: {reason}; upload it by hand with `stackvault push {}`", pending.id(), pending.record.time, &pending.id()[..12]);
        pending.record.lost = Some(reason);
        let _ = pending.save();
        self.log.event(Level::Error, run_id, "pending.lost", &message, serde_json::json!({"snapshot": pending.id(), "bytes": pending.record.bytes}));
        self.alert(AlertKind::Lost, run_id, Some(pending.id().to_string()), message, serde_json::json!({"bytes": pending.record.bytes}));
    }

    /// The target as `location()` names it, without contacting it; `None` when it cannot be set up.
    fn target_location(&self) -> Option<String> {
        match self.config.target().ok()? {
            Target::Filesystem(path) => Some(path.display().to_string()),
            Target::Azure(_) => crate::open_storage(&self.config).ok().map(|s| s.location()),
        }
    }

    async fn remember_target(&self) {
        let config = self.config.clone();
        let staging = Staging::new(config.state_dir());
        let remembered = tokio::task::spawn_blocking(move || {
            let repo = crate::open_repository(&config)?;
            staging.remember_target(&repo).map_err(|e| Error::Usage(e.to_string()))
        })
        .await;
        if let Ok(Err(e)) = remembered {
            self.log.event(Level::Warn, "", "target.remember", &format!("the target's config could not be copied to the state directory ({e}): a night the target is down cannot be staged"), serde_json::json!({}));
        }
    }

    fn update_status(&self, run_id: &str, change: impl FnOnce(&mut Status)) {
        let mut status = self.status.lock().expect("status");
        change(&mut status);
        let pending = self.staging.list().iter().any(|p| p.record.lost.is_none());
        let failed_last = status.last_failure.as_ref().map(|f| f.unix) > status.last_success.as_ref().map(|s| s.unix);
        let failing = failed_last || pending;
        if status.failing && !failing {
            self.log.event(Level::Info, run_id, "run.recovery", "the target takes backups again; nothing is pending", serde_json::json!({}));
            self.alert(AlertKind::Recovery, run_id, status.last_success.as_ref().and_then(|s| s.snapshot.clone()), "backups reach the target again; nothing is pending".into(), serde_json::json!({}));
        }
        status.failing = failing;
        if let Err(e) = status.save(self.config.state_dir()) {
            self.log.event(Level::Warn, run_id, "status.save", &format!("{e}"), serde_json::json!({}));
        }
    }

    fn update_pending_gauges(&self) {
        let all = self.staging.list();
        let live: Vec<&Pending> = all.iter().filter(|p| p.record.lost.is_none()).collect();
        self.metrics.set_pending(metrics::Pending {
            snapshots: live.len() as u64,
            oldest_age: live.first().map(|p| Duration::from_secs((crate::unix_now() - p.record.staged_at).max(0) as u64)),
            bytes: all.iter().map(|p| p.record.bytes).sum(),
            lost: (all.len() - live.len()) as u64,
        });
    }

    fn alert(&self, kind: AlertKind, run_id: &str, snapshot: Option<String>, summary: String, details: serde_json::Value) {
        self.alerter.send(Alert {
            kind,
            stack: self.stack.clone(),
            host: crate::hostname(),
            run_id: run_id.to_string(),
            time: crate::now_rfc3339(),
            summary,
            snapshot,
            target: self.target_location().unwrap_or_default(),
            details,
        });
    }

    /// The daemon's verification run, under the lock the caller holds: a rotating share of the data
    /// read back (`verify.read_data`), every snapshot's structure and locks; broken snapshots are
    /// alerted as a failure and counted in the metrics.
    pub async fn verify(&self, run_id: &str) -> Result<crate::verify::VerifyReport, Error> {
        let config = self.config.clone();
        let percent = config.verify.read_data();
        self.log.event(Level::Info, run_id, "verify.start", "verification started", serde_json::json!({"read_data_percent": percent}));
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || -> Result<crate::verify::VerifyReport, Error> {
            let repo = crate::open_repository(&config)?;
            let turns = crate::verify::SampleTurn::at(&config.cache_dir().join(&repo.config.id));
            let read = turns.read_data(percent);
            let report = crate::verify::verify(&repo, None, read)?;
            // A turn not noted is read again next time: no pack goes unread.
            let _ = turns.done(read);
            Ok(report)
        })
        .await
        .expect("verify thread panicked");
        let figures = |report: &crate::verify::VerifyReport| {
            serde_json::json!({"snapshots": report.snapshots.len(), "broken": report.broken.len(), "unreadable": report.unreadable.len(), "packs_read": report.packs_read, "duration_seconds": seconds(started.elapsed())})
        };
        match &result {
            Ok(report) => {
                let broken = (report.broken.len() + report.unreadable.len()) as u64;
                self.metrics.record_verify(SystemTime::now(), broken);
                if report.ok() {
                    self.log.event(Level::Info, run_id, "verify.success", "every snapshot verified", figures(report));
                } else {
                    let mut problems: Vec<String> = report.broken.iter().map(|(id, p)| format!("snapshot {id}: {}", p.join("; "))).collect();
                    problems.extend(report.unreadable.iter().cloned());
                    let summary = format!("verification found {broken} broken snapshots or unreadable objects");
                    let mut details = figures(report);
                    details["problems"] = serde_json::json!(problems);
                    self.log.event(Level::Error, run_id, "verify.failure", &summary, details.clone());
                    self.alert(AlertKind::Failure, run_id, None, summary, details);
                }
            }
            Err(e) => {
                self.log.event(Level::Error, run_id, "verify.failure", &format!("verification could not run: {e}"), serde_json::json!({}));
                self.alert(AlertKind::Failure, run_id, None, format!("verification could not run: {e}"), serde_json::json!({"error": e.to_string()}));
            }
        }
        result
    }

    /// The daemon's restore drill of the stack's newest snapshot (`verify.drill`), under the lock the
    /// caller holds; a failed drill is alerted and shows in the metrics.
    pub async fn drill(&self, run_id: &str) -> Result<crate::drill::DrillReport, Error> {
        self.log.event(Level::Info, run_id, "drill.start", "restore drill started", serde_json::json!({}));
        let started = Instant::now();
        let result = async {
            let repo = crate::open_repository(&self.config)?;
            let newest = repo.snapshots()?.valid.into_iter().rev().find(|(_, s)| s.stack == self.stack);
            let Some((id, _)) = newest else { return Err(Error::Usage(format!("the repository holds no snapshot of stack {} to drill", self.stack))) };
            let snapshot = repo.snapshot(&id)?;
            crate::drill::drill(&self.config, repo, id, snapshot, None).await
        }
        .await;
        match &result {
            Ok(report) if report.interrupted.is_some() => {
                let message = format!("{}: the drill was abandoned, what it had created removed", report.interrupted.unwrap_or_default());
                self.log.event(Level::Warn, run_id, "drill.abandoned", &message, serde_json::json!({"left_behind": report.left_behind}));
            }
            Ok(report) => {
                self.metrics.record_drill(SystemTime::now(), report.passed(), started.elapsed());
                let details = serde_json::to_value(report).expect("a drill report serializes");
                if report.passed() {
                    self.log.event(Level::Info, run_id, "drill.success", &format!("the drill of snapshot {} passed", report.snapshot), details);
                } else {
                    let summary = report.failure();
                    self.log.event(Level::Error, run_id, "drill.failure", &summary, details.clone());
                    self.alert(AlertKind::Failure, run_id, None, summary, details);
                }
            }
            Err(e) => {
                self.metrics.record_drill(SystemTime::now(), false, started.elapsed());
                let summary = format!("the restore drill could not run: {e}");
                self.log.event(Level::Error, run_id, "drill.failure", &summary, serde_json::json!({}));
                self.alert(AlertKind::Failure, run_id, None, summary, serde_json::json!({"error": e.to_string()}));
            }
        }
        result
    }

    /// Waits for alerts still being delivered, at most `timeout`.
    pub async fn flush_alerts(&self, timeout: Duration) {
        self.alerter.flush(timeout).await;
    }
}
