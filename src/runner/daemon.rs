//! `stackvault daemon`: backups on the schedule, pending snapshots retried every `retry.interval`,
//! verification on `verify.schedule`, health and metrics on `listen`. SIGTERM or SIGINT abandons a run cleanly (helpers removed, stopped
//! containers started, no manifest written, the staging leftovers removed by the next run) and
//! exits 0.

use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

use super::lock::{LockError, RunLock};
use super::log::Level;
use super::{run_id, Runner};
use crate::config::Config;
use crate::Error;

/// The longest sleep between looks at the wall clock: a clock that jumps (NTP, a suspended host)
/// delays a run by at most this much.
const CLOCK_CHECK: Duration = Duration::from_secs(30);

pub async fn run(config: Config) -> Result<(), Error> {
    let schedule = config.schedule.schedule().map_err(|e| Error::Usage(format!("schedule in {}: {e}", config.origin)))?;
    let runner = Runner::new(config.clone(), schedule.period(SystemTime::now()))?;
    let server = match config.listen {
        Some(address) => Some(super::listen(address, runner.metrics.clone()).await?),
        None => None,
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| Error::Usage(format!("cannot watch for SIGTERM: {e}")))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| Error::Usage(format!("cannot watch for SIGINT: {e}")))?;
    let jitter = config.schedule.jitter.unwrap_or_default();
    let next_run = |after: SystemTime| schedule.next_after(after).map(|t| t + random_below(jitter));
    let mut next = next_run(SystemTime::now());
    let mut next_retry = SystemTime::now() + config.retry.interval();
    let verify_schedule = config.verify.schedule().transpose().map_err(|e| Error::Usage(format!("verify.schedule in {}: {e}", config.origin)))?;
    let next_verify_after = |after: SystemTime| verify_schedule.as_ref().and_then(|s| s.next_after(after));
    let mut next_verify = next_verify_after(SystemTime::now());
    let drill_schedule = config.verify.drill_schedule().transpose().map_err(|e| Error::Usage(format!("verify.drill in {}: {e}", config.origin)))?;
    if drill_schedule.is_some() && !config.encryption.recipients.is_empty() {
        return Err(Error::Usage(format!(
            "verify.drill in {}: a drill restores, and the repository is encrypted to recipients whose identity the sidecar never holds; run drills where the identity is (stackvault verify --drill --identity FILE), or remove verify.drill",
            config.origin
        )));
    }
    let next_drill_after = |after: SystemTime| drill_schedule.as_ref().and_then(|s| s.next_after(after));
    let mut next_drill = next_drill_after(SystemTime::now());
    let figures = serde_json::json!({
        "schedule": schedule.describe(),
        "next_run": next.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        "listen": config.listen.map(|a| a.to_string()),
    });
    runner.log.event(Level::Info, "", "daemon.start", "waiting for the next scheduled run", figures);
    loop {
        let now = SystemTime::now();
        let wake = [next, next_verify, next_drill].into_iter().flatten().fold(next_retry, SystemTime::min);
        let nap = wake.duration_since(now).unwrap_or_default().min(CLOCK_CHECK);
        let signalled = tokio::select! {
            _ = tokio::time::sleep(nap) => None,
            _ = terminate.recv() => Some("SIGTERM"),
            _ = interrupt.recv() => Some("SIGINT"),
        };
        if let Some(name) = signalled {
            runner.log.event(Level::Info, "", "daemon.stop", &format!("{name}: stopping"), serde_json::json!({}));
            break;
        }
        let now = SystemTime::now();
        let scheduled = next.is_some_and(|n| n <= now);
        // A backup due at the same time goes first; the verification then sees its snapshot.
        let verifying = !scheduled && next_verify.is_some_and(|n| n <= now);
        let drilling = !scheduled && !verifying && next_drill.is_some_and(|n| n <= now);
        if !scheduled && !verifying && !drilling && next_retry > now {
            continue;
        }
        let id = run_id();
        let work = async {
            let lock = match locked(&runner, &config, &id) {
                Some(lock) => lock,
                None => return,
            };
            if scheduled {
                let _ = runner.run(&id).await;
            } else if verifying {
                let _ = runner.verify(&id).await;
            } else if drilling {
                let _ = runner.drill(&id).await;
            } else {
                runner.retry_pending(&id).await;
            }
            drop(lock);
        };
        let signalled = tokio::select! {
            () = work => None,
            _ = terminate.recv() => Some("SIGTERM"),
            _ = interrupt.recv() => Some("SIGINT"),
        };
        if let Some(name) = signalled {
            abandon(&runner, &config, &id, name).await;
            break;
        }
        if scheduled {
            next = next_run(SystemTime::now());
            let next_shown = next.map(|t| humantime::format_rfc3339_seconds(t).to_string());
            runner.log.event(Level::Info, &id, "daemon.next", "next scheduled run", serde_json::json!({"next_run": next_shown}));
        }
        if verifying {
            next_verify = next_verify_after(SystemTime::now());
        }
        if drilling {
            next_drill = next_drill_after(SystemTime::now());
        }
        if !verifying && !drilling {
            next_retry = SystemTime::now() + config.retry.interval();
        }
    }
    if let Some(server) = server {
        server.abort();
    }
    runner.flush_alerts(Duration::from_secs(10)).await;
    Ok(())
}

/// The state directory's lock for one run; `None` (logged) when another process holds it.
fn locked(runner: &Runner, config: &Config, id: &str) -> Option<RunLock> {
    match RunLock::acquire(config.state_dir(), "daemon") {
        Ok((lock, taken_over)) => {
            if let Some(dead) = taken_over {
                runner.log.event(Level::Warn, id, "lock.takeover", &format!("took over the lock of {dead}, which is no longer running"), serde_json::json!({}));
            }
            Some(lock)
        }
        Err(e @ LockError::Busy(_)) => {
            runner.log.event(Level::Warn, id, "run.skipped", &e.to_string(), serde_json::json!({}));
            None
        }
        Err(e) => {
            runner.log.event(Level::Error, id, "run.failure", &e.to_string(), serde_json::json!({}));
            None
        }
    }
}

/// A run cut short by a signal: what it left on the engine is undone, its lock released. Its work
/// (a blocking thread) ends with the process; no manifest was written, so it left no snapshot.
async fn abandon(runner: &Runner, config: &Config, id: &str, signal_name: &str) {
    let cleanup = async {
        let mut problems = crate::docker::abandon_run(config.docker.host.as_deref(), config.state_dir()).await;
        problems.extend(crate::drill::abandon(config).await);
        problems
    };
    let problems = tokio::time::timeout(Duration::from_secs(60), cleanup).await.unwrap_or_else(|_| vec!["cleaning up took longer than 60 s".into()]);
    super::lock::release_held();
    let message = format!("{signal_name}: the run was abandoned; no snapshot was written, the next run reuses what was stored");
    runner.log.event(Level::Warn, id, "run.abandoned", &message, serde_json::json!({"problems": problems}));
}

/// A uniformly random duration below `limit` (zero for zero).
fn random_below(limit: Duration) -> Duration {
    let millis = limit.as_millis() as u64;
    if millis == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(u64::from_le_bytes(crate::random_bytes::<8>()) % millis)
}
