//! Commands run inside the stack's own containers through the engine's exec API (never the docker
//! CLI): database dumps and restores, their checks, and hooks. Every command is a `sh -c` script that
//! first reports its process id (so that it can be stopped: the exec API has no kill) and then, mostly,
//! `exec`s the tool. Secrets never appear in a script: scripts name the container's own environment
//! variables or files, which the exec inherits or reads inside the container.

use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;

use super::stdio::{self, ChannelReader, ChannelWriter, StderrTail};
use super::DockerError;

/// The first line every script writes to stderr, with its process id inside the container.
const PID_MARKER: &str = "stackvault-exec-pid ";

type Pid = std::sync::Arc<std::sync::Mutex<Option<u32>>>;

/// Execs this process started that have not ended, for the signal handler: the engine does not stop
/// an exec whose client went away.
static LIVE_EXECS: std::sync::Mutex<Vec<(String, String, Pid)>> = std::sync::Mutex::new(Vec::new());

/// Stops every exec this process still has running; for the signal handler.
pub async fn stop_live_execs(docker: &Docker) {
    let live = std::mem::take(&mut *LIVE_EXECS.lock().expect("exec registry"));
    for (_, container, pid) in live {
        let pid = *pid.lock().expect("exec pid");
        if let Some(pid) = pid {
            kill(docker, &container, pid).await;
        }
    }
}

pub struct ExecSpec {
    pub container: String,
    /// Shell text run by `sh -c`.
    pub script: String,
    /// Extra `NAME=value` variables; never secrets (those stay in the container).
    pub env: Vec<String>,
    pub stdin: bool,
    /// How messages name the command: "dump of database calls in calls-db".
    pub purpose: String,
}

/// A running exec. Its stdout ends when the process does; [`Exec::exit_code`] then says how.
pub struct Exec {
    docker: Docker,
    id: String,
    container: String,
    pub purpose: String,
    stderr: StderrTail,
    pid: Pid,
    /// Set once the engine reported its exit: its pid may then be another process's.
    ended: std::sync::atomic::AtomicBool,
}

/// Tells from anywhere whether an exec still runs.
#[derive(Clone)]
pub struct ExecProbe {
    docker: Docker,
    id: String,
}

impl ExecProbe {
    pub async fn running(&self) -> bool {
        self.docker.inspect_exec(&self.id).await.is_ok_and(|i| i.running == Some(true))
    }
}

pub struct ExecIo {
    pub stdout: ChannelReader,
    pub stdin: Option<ChannelWriter>,
}

/// A short command's whole result.
pub struct Output {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The last line it wrote to stderr, as [`Exec::last_stderr_line`].
    pub fn last_stderr_line(&self) -> String {
        last_line(&self.stderr)
    }
}

fn last_line(text: &str) -> String {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

impl Exec {
    pub async fn start(docker: &Docker, spec: ExecSpec) -> Result<(Exec, ExecIo), DockerError> {
        let script = format!("echo \"{PID_MARKER}$$\" >&2; {}", spec.script);
        let options = CreateExecOptions {
            cmd: Some(vec!["sh".to_string(), "-c".into(), script]),
            env: Some(spec.env),
            attach_stdin: Some(spec.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = docker.create_exec(&spec.container, options).await.map_err(|e| exec_error(&spec.container, &spec.purpose, e))?;
        let started = docker
            .start_exec(&created.id, Some(StartExecOptions { detach: false, tty: false, output_capacity: Some(1 << 20) }))
            .await
            .map_err(|e| exec_error(&spec.container, &spec.purpose, e))?;
        let StartExecResults::Attached { output, input } = started else { unreachable!("started attached") };
        let exec = Exec { docker: docker.clone(), id: created.id, container: spec.container, purpose: spec.purpose, stderr: StderrTail::default(), pid: Default::default(), ended: Default::default() };
        LIVE_EXECS.lock().expect("exec registry").push((exec.id.clone(), exec.container.clone(), exec.pid.clone()));
        let (tail, pid) = (exec.stderr.clone(), exec.pid.clone());
        let mut first = true;
        let stdout = stdio::demux(output, move |message| {
            let mut message = message;
            if std::mem::take(&mut first) {
                if let Some(rest) = std::str::from_utf8(message).ok().and_then(|m| m.strip_prefix(PID_MARKER)) {
                    let (number, rest) = rest.split_once('\n').unwrap_or((rest, ""));
                    *pid.lock().expect("exec pid") = number.trim().parse().ok();
                    message = rest.as_bytes();
                    return stdio::append_tail(&tail, message);
                }
            }
            stdio::append_tail(&tail, message)
        });
        let stdin = spec.stdin.then(|| stdio::feed(input));
        Ok((exec, ExecIo { stdout, stdin }))
    }

    /// Runs a script to its end, without input; fails after `timeout`, stopping it.
    pub async fn run(docker: &Docker, spec: ExecSpec, timeout: Duration) -> Result<Output, DockerError> {
        let (exec, io) = Exec::start(docker, ExecSpec { stdin: false, ..spec }).await?;
        let mut stdout = io.stdout;
        let collect = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            // Bounded: queries answer in lines, hooks may talk; keep the head, drain the rest.
            let mut text = Vec::new();
            let kept = (&mut stdout).take(OUTPUT_LIMIT as u64).read_to_end(&mut text);
            let drained = std::io::copy(&mut stdout, &mut std::io::sink());
            kept.and(drained).map(|_| String::from_utf8_lossy(&text).into_owned())
        });
        match tokio::time::timeout(timeout, collect).await {
            Ok(stdout) => {
                let stdout = stdout.expect("exec reader panicked").map_err(|e| exec_error_text(&exec, e.to_string()))?;
                let code = exec.exit_code().await?;
                Ok(Output { code, stdout, stderr: exec.stderr() })
            }
            Err(_) => {
                exec.stop().await;
                Err(exec_error_text(&exec, format!("did not finish within {}; it was stopped", humantime::format_duration(timeout))))
            }
        }
    }

    /// The exit code, once the process has ended: its stdout ended (the engine may take a moment
    /// more to report the exit).
    pub async fn exit_code(&self) -> Result<i64, DockerError> {
        for _ in 0..600 {
            let inspected = self.docker.inspect_exec(&self.id).await.map_err(|e| exec_error(&self.container, &self.purpose, e))?;
            if inspected.running != Some(true) {
                self.ended.store(true, std::sync::atomic::Ordering::Relaxed);
                self.forget();
                return Ok(inspected.exit_code.unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(exec_error_text(self, "still running 30 s after its output ended".into()))
    }

    /// Stops the process (what it `exec`ed into, and its children) with SIGTERM, then SIGKILL.
    pub async fn stop(&self) {
        if self.ended.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let pid = *self.pid.lock().expect("exec pid");
        if let Some(pid) = pid {
            kill(&self.docker, &self.container, pid).await;
        }
        self.forget();
    }

    fn forget(&self) {
        LIVE_EXECS.lock().expect("exec registry").retain(|(id, _, _)| *id != self.id);
    }

    pub fn probe(&self) -> ExecProbe {
        ExecProbe { docker: self.docker.clone(), id: self.id.clone() }
    }

    /// What it wrote to stderr (its tail), trimmed.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer").trim().to_string()
    }

    /// The last line it wrote to stderr: mostly the tool's own reason for failing.
    pub fn last_stderr_line(&self) -> String {
        last_line(&self.stderr())
    }

}

/// Sends SIGTERM, then SIGKILL after 2 s, to a process in a container and everything it started, by a
/// detached exec. The engine makes each exec's process a process group leader (checked here with
/// 20.10: pgid = sid = its pid), so a hook's or command dump's pipeline goes with it.
async fn kill(docker: &Docker, container: &str, pid: u32) {
    let script = format!(
        "kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null; sleep 2; kill -KILL -- -{pid} 2>/dev/null || kill -KILL {pid} 2>/dev/null; true"
    );
    let options = CreateExecOptions { cmd: Some(vec!["sh".to_string(), "-c".into(), script]), ..Default::default() };
    if let Ok(created) = docker.create_exec(container, options).await {
        let _ = docker.start_exec(&created.id, Some(StartExecOptions { detach: true, ..Default::default() })).await;
    }
}

const OUTPUT_LIMIT: usize = 1 << 20;

fn exec_error(container: &str, purpose: &str, e: bollard::errors::Error) -> DockerError {
    DockerError::Exec { container: container.to_string(), purpose: purpose.to_string(), message: e.to_string() }
}

fn exec_error_text(exec: &Exec, message: String) -> DockerError {
    DockerError::Exec { container: exec.container.clone(), purpose: exec.purpose.clone(), message }
}

/// A value as one shell word: single-quoted, with embedded quotes closed and escaped.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}
