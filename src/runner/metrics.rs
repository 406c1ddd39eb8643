//! What the runner knows about its runs, for `/metrics` (Prometheus text exposition format 0.0.4)
//! and `/healthz` (the health rule). A monitoring system needs no state of its own: every series
//! is a timestamp, a counter or a current value, all labelled `stack="…"` so one Prometheus can
//! scrape many sidecars.
//!
//! Series (the names are a contract; dashboards and alert rules use them):
//! - `stackvault_last_success_timestamp_seconds`, `stackvault_last_failure_timestamp_seconds`
//!   (gauges, Unix seconds; 0 when there was none)
//! - `stackvault_last_run_duration_seconds` (gauge; no sample before the first run of this process)
//! - `stackvault_backup_bytes_total{kind="read|new|uploaded"}` (counter, this process)
//! - `stackvault_runs_total{result="success|failure"}` (counter, this process; both always present)
//! - `stackvault_pending_snapshots`, `stackvault_pending_oldest_age_seconds`,
//!   `stackvault_staging_bytes`, `stackvault_lost_snapshots` (gauges)
//! - `stackvault_healthy` (gauge, 1 or 0: the health rule at scrape time)
//! - `stackvault_verify_last_timestamp_seconds`, `stackvault_verify_broken_snapshots` (gauges: the
//!   daemon's last verification run and the snapshots it found broken; no sample before the first)
//! - `stackvault_drill_last_timestamp_seconds`, `stackvault_drill_passed`,
//!   `stackvault_drill_duration_seconds` (gauges: the daemon's last restore drill, 1 when every
//!   check passed, else 0; no sample before the first)

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// When the runner counts as unhealthy: no success for longer than `period + grace`.
pub struct HealthRule {
    /// The longest gap between scheduled runs.
    pub period: Duration,
    /// How late a success may be before it counts as missed (a long run, a retried upload).
    pub grace: Duration,
}

/// One finished run, as `record_run` counts it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Stored on the target; a staged or failed night is not a success.
    pub success: bool,
    pub finished: SystemTime,
    pub duration: Duration,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_uploaded: u64,
}

/// The staging directory's state, for the pending gauges.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    /// Snapshots still waiting for the target.
    pub snapshots: u64,
    /// How long the oldest of them has waited, when there is one.
    pub oldest_age: Option<Duration>,
    /// Bytes in staging, lost snapshots included.
    pub bytes: u64,
    /// Snapshots given up on (past the retry window, or broken).
    pub lost: u64,
}

/// Run metrics shared by the runner (which writes) and the HTTP server (which reads).
pub struct Metrics {
    stack: String,
    health: HealthRule,
    started: SystemTime,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last_success: Option<SystemTime>,
    last_failure: Option<SystemTime>,
    last_duration: Option<Duration>,
    bytes_read: u64,
    bytes_new: u64,
    bytes_uploaded: u64,
    successes: u64,
    failures: u64,
    pending_snapshots: u64,
    // The oldest pending snapshot's staging time, not its age: the age is measured at each scrape.
    pending_oldest_since: Option<SystemTime>,
    staging_bytes: u64,
    lost: u64,
    /// The last verification: when it ended, and how many snapshots (and unreadable objects) it found broken.
    verified: Option<(SystemTime, u64)>,
    /// The last drill: when it ended, whether it passed, how long it took.
    drilled: Option<(SystemTime, bool, Duration)>,
}

impl Metrics {
    /// `started`: when this process started; a daemon that never had a success counts from it.
    pub fn new(stack: String, health: HealthRule, started: SystemTime) -> Arc<Metrics> {
        Arc::new(Metrics { stack, health, started, state: Mutex::new(State::default()) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain counters stay meaningful after a panic elsewhere: keep serving them.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn record_run(&self, run: &RunRecord) {
        let mut state = self.state();
        if run.success {
            state.successes += 1;
            state.last_success = later(state.last_success, run.finished);
        } else {
            state.failures += 1;
            state.last_failure = later(state.last_failure, run.finished);
        }
        state.last_duration = Some(run.duration);
        // A failed or staged run still read and sent bytes.
        state.bytes_read += run.bytes_read;
        state.bytes_new += run.bytes_new;
        state.bytes_uploaded += run.bytes_uploaded;
    }

    /// At start, from the state file: the last success of an earlier process. Also after a pending
    /// snapshot reaches the target. An earlier time than the one known is ignored.
    pub fn set_last_success(&self, at: SystemTime) {
        let mut state = self.state();
        state.last_success = later(state.last_success, at);
    }

    pub fn record_verify(&self, finished: SystemTime, broken: u64) {
        self.state().verified = Some((finished, broken));
    }

    pub fn record_drill(&self, finished: SystemTime, passed: bool, took: Duration) {
        self.state().drilled = Some((finished, passed, took));
    }

    pub fn set_pending(&self, pending: Pending) {
        let mut state = self.state();
        state.pending_snapshots = pending.snapshots;
        state.pending_oldest_since = pending.oldest_age.map(|age| SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH));
        state.staging_bytes = pending.bytes;
        state.lost = pending.lost;
    }

    /// Prometheus text exposition format 0.0.4, with `# HELP` and `# TYPE` lines, every series
    /// labelled `stack="…"`.
    pub fn render(&self, now: SystemTime) -> String {
        let healthy = self.health(now).is_ok();
        let state = self.state();
        let stack = format!("stack=\"{}\"", escape_label(&self.stack));
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{{{stack}{labels}}} {value}");
            }
        };
        family(
            "stackvault_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last snapshot stored on the target (0: none yet).",
            &[("", timestamp(state.last_success))],
        );
        family(
            "stackvault_last_failure_timestamp_seconds",
            "gauge",
            "Unix time of the last failed or staged run (0: none yet).",
            &[("", timestamp(state.last_failure))],
        );
        let duration: Vec<(&str, String)> = state.last_duration.iter().map(|d| ("", seconds(*d))).collect();
        family("stackvault_last_run_duration_seconds", "gauge", "How long the last run of this process took.", &duration);
        family(
            "stackvault_backup_bytes_total",
            "counter",
            "Bytes backed up by this process: read from the volumes, new after deduplication, uploaded to the target.",
            &[
                (",kind=\"read\"", state.bytes_read.to_string()),
                (",kind=\"new\"", state.bytes_new.to_string()),
                (",kind=\"uploaded\"", state.bytes_uploaded.to_string()),
            ],
        );
        family(
            "stackvault_runs_total",
            "counter",
            "Runs of this process by result (a staged run is a failure).",
            &[(",result=\"success\"", state.successes.to_string()), (",result=\"failure\"", state.failures.to_string())],
        );
        family(
            "stackvault_pending_snapshots",
            "gauge",
            "Staged snapshots waiting to be uploaded to the target.",
            &[("", state.pending_snapshots.to_string())],
        );
        let oldest_age = state.pending_oldest_since.map_or(Duration::ZERO, |since| now.duration_since(since).unwrap_or_default());
        family(
            "stackvault_pending_oldest_age_seconds",
            "gauge",
            "How long the oldest pending snapshot has waited (0: none pending).",
            &[("", seconds(oldest_age))],
        );
        family(
            "stackvault_staging_bytes",
            "gauge",
            "Bytes held in the staging directory.",
            &[("", state.staging_bytes.to_string())],
        );
        family(
            "stackvault_lost_snapshots",
            "gauge",
            "Staged snapshots given up on: they never reached the target.",
            &[("", state.lost.to_string())],
        );
        family(
            "stackvault_healthy",
            "gauge",
            "1 while the last success is no older than the schedule's period plus health.grace, else 0.",
            &[("", u8::from(healthy).to_string())],
        );
        let verified: Vec<(&str, String)> = state.verified.iter().map(|(at, _)| ("", timestamp(Some(*at)))).collect();
        family("stackvault_verify_last_timestamp_seconds", "gauge", "Unix time the daemon's last verification run ended.", &verified);
        let broken: Vec<(&str, String)> = state.verified.iter().map(|(_, n)| ("", n.to_string())).collect();
        family("stackvault_verify_broken_snapshots", "gauge", "Snapshots (and unreadable objects) the last verification run found broken.", &broken);
        let drilled = |value: &dyn Fn(&(SystemTime, bool, Duration)) -> String| -> Vec<(&str, String)> { state.drilled.iter().map(|d| ("", value(d))).collect() };
        family("stackvault_drill_last_timestamp_seconds", "gauge", "Unix time the daemon's last restore drill ended.", &drilled(&|(at, _, _)| timestamp(Some(*at))));
        family("stackvault_drill_passed", "gauge", "1 when every check of the last restore drill passed, else 0.", &drilled(&|(_, passed, _)| u8::from(*passed).to_string()));
        family("stackvault_drill_duration_seconds", "gauge", "How long the last restore drill took, removal included.", &drilled(&|(_, _, took)| format!("{:.3}", took.as_secs_f64())));
        out
    }

    /// Ok(reason) when healthy; Err(reason) when the last success is older than period + grace
    /// (measured from process start when there never was one: a fresh daemon is healthy until
    /// period + grace after it started).
    pub fn health(&self, now: SystemTime) -> Result<String, String> {
        let last_success = self.state().last_success;
        let limit = self.health.period + self.health.grace;
        let since = last_success.unwrap_or(self.started);
        // A clock set back makes the reference look future: count that as no time passed.
        let age = now.duration_since(since).unwrap_or_default();
        let age_text = humantime::format_duration(Duration::from_secs(age.as_secs()));
        let limit_text = humantime::format_duration(limit);
        let at = humantime::format_rfc3339_seconds(since);
        match (last_success, age > limit) {
            (Some(_), false) => Ok(format!("last success {age_text} ago ({at}); unhealthy after {limit_text}")),
            (None, false) => Ok(format!("no success yet, started {age_text} ago; unhealthy after {limit_text} without one")),
            (Some(_), true) => Err(format!(
                "last success {age_text} ago ({at}), more than the {limit_text} allowed; see `stackvault status` and the log for the failures"
            )),
            (None, true) => Err(format!(
                "no success since the start {age_text} ago ({at}), more than the {limit_text} allowed; see `stackvault status` and the log for the failures"
            )),
        }
    }
}

fn later(known: Option<SystemTime>, at: SystemTime) -> Option<SystemTime> {
    Some(known.map_or(at, |known| known.max(at)))
}

fn timestamp(at: Option<SystemTime>) -> String {
    seconds(at.and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok()).unwrap_or_default())
}

/// Seconds with millisecond precision; `{}` on f64 never uses an exponent, so the format's parser
/// (Go's ParseFloat) takes it.
fn seconds(d: Duration) -> String {
    let rounded = (d.as_secs_f64() * 1000.0).round() / 1000.0;
    format!("{rounded}")
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86400);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn metrics(stack: &str, started: SystemTime) -> Arc<Metrics> {
        Metrics::new(stack.into(), HealthRule { period: DAY, grace: 6 * HOUR }, started)
    }

    /// A strict reading of the text format: comments are `# HELP name text` or `# TYPE name kind`;
    /// every other line is `name{labels} value` with a TYPE line for `name` before it. Returns
    /// series (name and labels as written) → value.
    fn parse(text: &str) -> HashMap<String, f64> {
        assert!(text.ends_with('\n'), "the exposition ends with a line feed");
        let mut typed = HashSet::new();
        let mut series = HashMap::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut words = comment.splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("HELP"), Some(_), Some(help)) => assert!(!help.is_empty()),
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        assert!(["gauge", "counter"].contains(&kind), "{line}");
                        assert!(kind != "counter" || name.ends_with("_total"), "counter names end in _total: {line}");
                        assert!(typed.insert(name.to_string()), "one TYPE line per name: {line}");
                    }
                    _ => panic!("unexpected comment: {line}"),
                }
                continue;
            }
            let open = line.find('{').unwrap_or_else(|| panic!("no labels: {line}"));
            let close = line.rfind("} ").unwrap_or_else(|| panic!("no closing brace: {line}"));
            let name = &line[..open];
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
            assert!(typed.contains(name), "no TYPE line before {line}");
            let labels = &line[open + 1..close];
            assert!(labels.starts_with("stack=\""), "every series is labelled stack: {line}");
            let value: f64 = line[close + 2..].parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(series.insert(line[..=close].to_string(), value).is_none(), "duplicate series: {line}");
        }
        series
    }

    #[test]
    fn render_after_a_success_and_a_failure() {
        let m = metrics("shop", at(1_000));
        m.record_run(&RunRecord { success: true, finished: at(2_000), duration: Duration::from_millis(12_500), bytes_read: 100, bytes_new: 10, bytes_uploaded: 12 });
        m.record_run(&RunRecord { success: false, finished: at(3_000), duration: Duration::from_secs(3), bytes_read: 50, bytes_new: 5, bytes_uploaded: 0 });
        m.set_pending(Pending { snapshots: 2, oldest_age: Some(Duration::from_secs(60)), bytes: 4096, lost: 1 });
        let text = m.render(SystemTime::now() + Duration::from_secs(30));
        let series = parse(&text);
        let value = |s: &str| *series.get(s).unwrap_or_else(|| panic!("missing {s} in\n{text}"));
        assert_eq!(value(r#"stackvault_last_success_timestamp_seconds{stack="shop"}"#), 2000.0);
        assert_eq!(value(r#"stackvault_last_failure_timestamp_seconds{stack="shop"}"#), 3000.0);
        assert_eq!(value(r#"stackvault_last_run_duration_seconds{stack="shop"}"#), 3.0);
        assert_eq!(value(r#"stackvault_backup_bytes_total{stack="shop",kind="read"}"#), 150.0);
        assert_eq!(value(r#"stackvault_backup_bytes_total{stack="shop",kind="new"}"#), 15.0);
        assert_eq!(value(r#"stackvault_backup_bytes_total{stack="shop",kind="uploaded"}"#), 12.0);
        assert_eq!(value(r#"stackvault_runs_total{stack="shop",result="success"}"#), 1.0);
        assert_eq!(value(r#"stackvault_runs_total{stack="shop",result="failure"}"#), 1.0);
        assert_eq!(value(r#"stackvault_pending_snapshots{stack="shop"}"#), 2.0);
        // Stored as a time: thirty seconds later the age has grown by thirty seconds.
        let age = value(r#"stackvault_pending_oldest_age_seconds{stack="shop"}"#);
        assert!((89.0..=92.0).contains(&age), "{age}");
        assert_eq!(value(r#"stackvault_staging_bytes{stack="shop"}"#), 4096.0);
        assert_eq!(value(r#"stackvault_lost_snapshots{stack="shop"}"#), 1.0);
        // The last success at t=2000 is decades old by now.
        assert_eq!(value(r#"stackvault_healthy{stack="shop"}"#), 0.0);
        assert_eq!(series.len(), 13);
    }

    #[test]
    fn render_before_any_run() {
        let now = SystemTime::now();
        let series = parse(&metrics("shop", now).render(now));
        assert_eq!(series[r#"stackvault_last_success_timestamp_seconds{stack="shop"}"#], 0.0);
        assert_eq!(series[r#"stackvault_runs_total{stack="shop",result="success"}"#], 0.0);
        assert_eq!(series[r#"stackvault_runs_total{stack="shop",result="failure"}"#], 0.0);
        assert_eq!(series[r#"stackvault_pending_oldest_age_seconds{stack="shop"}"#], 0.0);
        assert_eq!(series[r#"stackvault_healthy{stack="shop"}"#], 1.0);
        assert!(!series.keys().any(|s| s.starts_with("stackvault_last_run_duration_seconds")));
    }

    #[test]
    fn label_values_are_escaped() {
        let now = SystemTime::now();
        let text = metrics("a\\b\"c\nd", now).render(now);
        assert!(text.contains(r#"stackvault_healthy{stack="a\\b\"c\nd"} 1"#), "{text}");
        parse(&text);
    }

    #[test]
    fn health_follows_period_and_grace() {
        let started = at(1_000_000);
        let m = metrics("shop", started);
        // Fresh: healthy until period + grace after the start.
        assert!(m.health(started).is_ok());
        assert!(m.health(started + DAY + 6 * HOUR).is_ok());
        let err = m.health(started + DAY + 6 * HOUR + Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("no success since the start 1day 6h 1s ago"), "{err}");
        // A success from an earlier process counts, and resets the clock.
        let success = started + DAY;
        m.set_last_success(success);
        let ok = m.health(success + DAY).unwrap();
        assert!(ok.contains("last success 1day ago"), "{ok}");
        assert!(m.health(success + DAY + 7 * HOUR).is_err());
        // An older time does not undo a newer one.
        m.set_last_success(started);
        assert!(m.health(success + DAY).is_ok());
        // A clock set back is not unhealthy.
        assert!(m.health(started - DAY).is_ok());
    }

    #[test]
    fn an_old_success_from_the_state_file_is_unhealthy_at_once() {
        let started = at(10 * 86_400);
        let m = metrics("shop", started);
        m.set_last_success(at(86_400));
        assert!(m.health(started).is_err());
        assert!(parse(&m.render(started))[r#"stackvault_healthy{stack="shop"}"#] == 0.0);
    }
}
