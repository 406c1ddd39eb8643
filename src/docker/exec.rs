//! Commands run inside the stack's own containers through the engine's exec API (never the docker
//! CLI): database dumps and restores, their checks, and hooks; or, for databases reached over the
//! network (Kubernetes, no engine), the same scripts run here, beside the sidecar, with the client
//! tools its image carries. Every command is a `sh -c` script that first reports its process id (so
//! that it can be stopped: the exec API has no kill) and then, mostly, `exec`s the tool. Secrets never
//! appear in a script: scripts name environment variables or files, which the process inherits or reads.

use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;
use tokio::sync::watch;

use super::stdio::{self, ChannelReader, ChannelWriter, StderrTail};
use super::DockerError;

/// The first line every script writes to stderr, with its process id inside the container.
const PID_MARKER: &str = "stackvault-exec-pid ";

type Pid = std::sync::Arc<std::sync::Mutex<Option<u32>>>;

/// Execs this process started that have not ended, for the signal handler: the engine does not stop
/// an exec whose client went away, and a local one runs in a process group of its own.
static LIVE_EXECS: std::sync::Mutex<Vec<(String, Shell, Pid)>> = std::sync::Mutex::new(Vec::new());

/// Stops every exec this process still has running; for the signal handler.
pub async fn stop_live_execs() {
    let live = std::mem::take(&mut *LIVE_EXECS.lock().expect("exec registry"));
    for (_, shell, pid) in live {
        let pid = *pid.lock().expect("exec pid");
        if let Some(pid) = pid {
            kill(&shell, pid).await;
        }
    }
}

/// Where a script runs.
#[derive(Clone)]
pub enum Shell {
    /// Inside this container, through the engine's exec API.
    Container { docker: Docker, name: String },
    /// Here, in stackvault's own container, whose tools reach a database server over the network;
    /// `server` names it in messages ("database server cc at mariadb.cc.svc:3306").
    Local { server: String },
}

impl Shell {
    pub fn container(docker: &Docker, name: &str) -> Shell {
        Shell::Container { docker: docker.clone(), name: name.to_string() }
    }

    /// For messages: "container calls-db", "database server cc at mariadb.cc.svc:3306".
    pub fn place(&self) -> String {
        match self {
            Shell::Container { name, .. } => format!("container {name}"),
            Shell::Local { server } => server.clone(),
        }
    }
}

pub struct ExecSpec {
    pub shell: Shell,
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
    shell: Shell,
    /// The engine's exec id; for a local process, `local-<pid>`.
    id: String,
    /// A local process's exit code, once it has ended.
    local_exit: Option<watch::Receiver<Option<i64>>>,
    pub purpose: String,
    stderr: StderrTail,
    pid: Pid,
    /// Set once the engine reported its exit: its pid may then be another process's.
    ended: std::sync::atomic::AtomicBool,
}

/// Tells from anywhere whether an exec still runs.
#[derive(Clone)]
pub enum ExecProbe {
    Engine { docker: Docker, id: String },
    Local(watch::Receiver<Option<i64>>),
}

impl ExecProbe {
    pub async fn running(&self) -> bool {
        match self {
            ExecProbe::Engine { docker, id } => docker.inspect_exec(id).await.is_ok_and(|i| i.running == Some(true)),
            ExecProbe::Local(exit) => exit.borrow().is_none(),
        }
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
    pub async fn start(spec: ExecSpec) -> Result<(Exec, ExecIo), DockerError> {
        let (docker, container) = match &spec.shell {
            Shell::Container { docker, name } => (docker.clone(), name.clone()),
            Shell::Local { .. } => return Exec::start_local(spec),
        };
        let script = format!("echo \"{PID_MARKER}$$\" >&2; {}", spec.script);
        let options = CreateExecOptions {
            cmd: Some(vec!["sh".to_string(), "-c".into(), script]),
            env: Some(spec.env.clone()),
            attach_stdin: Some(spec.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = docker.create_exec(&container, options).await.map_err(|e| exec_error(&spec.shell, &spec.purpose, e.to_string()))?;
        let started = docker
            .start_exec(&created.id, Some(StartExecOptions { detach: false, tty: false, output_capacity: Some(1 << 20) }))
            .await
            .map_err(|e| exec_error(&spec.shell, &spec.purpose, e.to_string()))?;
        let StartExecResults::Attached { output, input } = started else { unreachable!("started attached") };
        let exec = Exec::registered(spec.shell, created.id, None, spec.purpose);
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

    /// The script as a child process here, in a process group of its own (so that stopping it stops
    /// its pipeline). It inherits stackvault's environment: that is where a password variable is.
    fn start_local(spec: ExecSpec) -> Result<(Exec, ExecIo), DockerError> {
        let mut command = tokio::process::Command::new("sh");
        command.arg("-c").arg(&spec.script).process_group(0);
        command.envs(spec.env.iter().filter_map(|pair| pair.split_once('=')));
        command.stdin(if spec.stdin { std::process::Stdio::piped() } else { std::process::Stdio::null() });
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = command.spawn().map_err(|e| exec_error(&spec.shell, &spec.purpose, format!("cannot start sh: {e}")))?;
        let pid = child.id().expect("a child that was just spawned has a pid");
        let (exited, exit) = watch::channel(None);
        let exec = Exec::registered(spec.shell, format!("local-{pid}"), Some(exit), spec.purpose);
        *exec.pid.lock().expect("exec pid") = Some(pid);
        let stdout = stdio::read_async(child.stdout.take().expect("piped stdout"));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let tail = exec.stderr.clone();
        let stdin = child.stdin.take().map(|input| stdio::feed(Box::pin(input)));
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut piece = vec![0u8; 8192];
            while let Ok(n @ 1..) = stderr.read(&mut piece).await {
                stdio::append_tail(&tail, &piece[..n]);
            }
            // A signal's death reads as the shell's convention, 128 + the signal.
            use std::os::unix::process::ExitStatusExt;
            let code = match child.wait().await {
                Ok(status) => status.code().or(status.signal().map(|s| 128 + s)).unwrap_or(-1),
                Err(_) => -1,
            };
            let _ = exited.send(Some(i64::from(code)));
        });
        Ok((exec, ExecIo { stdout, stdin }))
    }

    fn registered(shell: Shell, id: String, local_exit: Option<watch::Receiver<Option<i64>>>, purpose: String) -> Exec {
        let exec = Exec { shell, id, local_exit, purpose, stderr: StderrTail::default(), pid: Default::default(), ended: Default::default() };
        LIVE_EXECS.lock().expect("exec registry").push((exec.id.clone(), exec.shell.clone(), exec.pid.clone()));
        exec
    }

    /// Runs a script to its end, without input; fails after `timeout`, stopping it.
    pub async fn run(spec: ExecSpec, timeout: Duration) -> Result<Output, DockerError> {
        let (exec, io) = Exec::start(ExecSpec { stdin: false, ..spec }).await?;
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
                let stdout = stdout.expect("exec reader panicked").map_err(|e| exec_error(&exec.shell, &exec.purpose, e.to_string()))?;
                let code = exec.exit_code().await?;
                Ok(Output { code, stdout, stderr: exec.stderr() })
            }
            Err(_) => {
                exec.stop().await;
                Err(exec_error(&exec.shell, &exec.purpose, format!("did not finish within {}; it was stopped", humantime::format_duration(timeout))))
            }
        }
    }

    /// The exit code, once the process has ended: its stdout ended (the engine may take a moment
    /// more to report the exit).
    pub async fn exit_code(&self) -> Result<i64, DockerError> {
        if let Some(exit) = &self.local_exit {
            let mut exit = exit.clone();
            let waited = tokio::time::timeout(Duration::from_secs(30), exit.wait_for(Option::is_some)).await;
            let Ok(code) = waited.map(|code| code.map(|c| c.unwrap_or(-1)).unwrap_or(-1)) else {
                return Err(exec_error(&self.shell, &self.purpose, "still running 30 s after its output ended".into()));
            };
            self.ended.store(true, std::sync::atomic::Ordering::Relaxed);
            self.forget();
            return Ok(code);
        }
        let Shell::Container { docker, .. } = &self.shell else { unreachable!("a local exec has its exit") };
        for _ in 0..600 {
            let inspected = docker.inspect_exec(&self.id).await.map_err(|e| exec_error(&self.shell, &self.purpose, e.to_string()))?;
            if inspected.running != Some(true) {
                self.ended.store(true, std::sync::atomic::Ordering::Relaxed);
                self.forget();
                return Ok(inspected.exit_code.unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(exec_error(&self.shell, &self.purpose, "still running 30 s after its output ended".into()))
    }

    /// Stops the process (what it `exec`ed into, and its children) with SIGTERM, then SIGKILL.
    pub async fn stop(&self) {
        if self.ended.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let pid = *self.pid.lock().expect("exec pid");
        if let Some(pid) = pid {
            kill(&self.shell, pid).await;
        }
        self.forget();
    }

    fn forget(&self) {
        LIVE_EXECS.lock().expect("exec registry").retain(|(id, _, _)| *id != self.id);
    }

    pub fn probe(&self) -> ExecProbe {
        match (&self.local_exit, &self.shell) {
            (Some(exit), _) => ExecProbe::Local(exit.clone()),
            (None, Shell::Container { docker, .. }) => ExecProbe::Engine { docker: docker.clone(), id: self.id.clone() },
            (None, Shell::Local { .. }) => unreachable!("a local exec has its exit"),
        }
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

/// Sends SIGTERM, then SIGKILL after 2 s, to a process and everything it started. In a container, by
/// a detached exec: the engine makes each exec's process a process group leader (checked here with
/// 20.10: pgid = sid = its pid), so a hook's or command dump's pipeline goes with it. Here, a local
/// process leads its own group too (`start_local`).
async fn kill(shell: &Shell, pid: u32) {
    let Shell::Container { docker, name } = shell else {
        let group = -(pid as i32);
        // SAFETY: kill(2) with a process group id this process created; no memory is involved.
        unsafe { libc::kill(group, libc::SIGTERM) };
        tokio::time::sleep(Duration::from_secs(2)).await;
        // SAFETY: as above; a group that has ended already makes it fail harmlessly (ESRCH).
        unsafe { libc::kill(group, libc::SIGKILL) };
        return;
    };
    let script = format!(
        "kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null; sleep 2; kill -KILL -- -{pid} 2>/dev/null || kill -KILL {pid} 2>/dev/null; true"
    );
    let options = CreateExecOptions { cmd: Some(vec!["sh".to_string(), "-c".into(), script]), ..Default::default() };
    if let Ok(created) = docker.create_exec(name, options).await {
        let _ = docker.start_exec(&created.id, Some(StartExecOptions { detach: true, ..Default::default() })).await;
    }
}

const OUTPUT_LIMIT: usize = 1 << 20;

fn exec_error(shell: &Shell, purpose: &str, message: String) -> DockerError {
    DockerError::Exec { place: shell.place(), purpose: purpose.to_string(), message }
}

/// A value as one shell word: single-quoted, with embedded quotes closed and escaped.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}
