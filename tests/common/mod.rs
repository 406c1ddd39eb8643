//! Shared test plumbing: the stackvault binary, the Docker CLI for setting up scenes, and the
//! independent Python checker (tests/treecheck.py), which shares no code with stackvault.
#![allow(dead_code)]

pub mod azure;
pub mod craft;
pub mod db;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub const KNOWN_PLAINTEXT: &str = "STACKVAULT-KNOWN-PLAINTEXT-7f3a9c";

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("sv-{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn scratch(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}", out.status, text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn stackvault(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stackvault"));
    cmd.arg("-c").arg(config);
    cmd
}

/// Runs stackvault under GNU time; returns its output and its peak RSS in KiB.
pub fn with_peak_rss(config: &Path, args: &[&dyn AsRef<std::ffi::OsStr>]) -> (Output, u64) {
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-v").arg(env!("CARGO_BIN_EXE_stackvault")).arg("-c").arg(config);
    for a in args {
        cmd.arg(a);
    }
    let out = run(&mut cmd);
    let stderr = text(&out.stderr);
    let line = stderr.lines().find(|l| l.contains("Maximum resident set size")).unwrap_or_else(|| panic!("no RSS from GNU time:\n{stderr}"));
    let kib = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    (out, kib)
}

pub fn docker(args: &[&str]) -> String {
    ok(Command::new("docker").args(args)).trim().to_string()
}

pub fn python(script: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(script));
    for a in args {
        cmd.arg(a);
    }
    run(&mut cmd)
}

/// Fills `dir` with the fixture tree (tests/fixture.py): a `big_mib` MiB random file, `small_files`
/// small ones, and every kind of entry and metadata.
pub fn make_fixture(dir: &Path, big_mib: u32, small_files: u32) {
    let made = python("fixture.py", &[&"make", &dir, &"--big-mib", &big_mib.to_string(), &"--small", &small_files.to_string()]);
    assert!(made.status.success(), "fixture: {}", text(&made.stderr));
}

/// Records a tree with the independent checker.
pub fn manifest(dir: &Path, out: &Path) {
    let o = python("treecheck.py", &[&"manifest", &dir, &out]);
    assert!(o.status.success(), "treecheck manifest: {}", text(&o.stderr));
}

/// Asserts two recorded trees are identical in every property the checker records.
pub fn assert_same(a: &Path, b: &Path) {
    let o = python("treecheck.py", &[&"compare", &a, &b]);
    assert!(o.status.success(), "trees differ:\n{}", text(&o.stdout));
}

pub fn volume_dir(volume: &str) -> PathBuf {
    PathBuf::from(docker(&["volume", "inspect", volume, "-f", "{{.Mountpoint}}"]))
}

/// The image for stand-in stack containers, built offline by .ci/setup (busybox-static).
pub const TEST_IMAGE: &str = "stackvault-test/busybox:1";

/// A compose-labelled container (created, not started) mounting `volume` at /data.
pub fn stack_container(project: &str, volume: &str) -> String {
    docker(&[
        "create", "--network", "none", "--label", &format!("com.docker.compose.project={project}"), "-v", &format!("{volume}:/data"), TEST_IMAGE, "sh",
    ])
}

/// Removes every container of compose project `project`: a whole-stack restore re-creates the
/// stack's containers (under new ids), which then hold its volumes.
pub fn remove_project_containers(project: &str) {
    let ids = docker(&["ps", "-aq", "--filter", &format!("label=com.docker.compose.project={project}")]);
    for id in ids.split_whitespace() {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
}

/// A volume labelled as compose project `project`'s.
pub fn compose_volume(project: &str, volume: &str) {
    docker(&["volume", "create", "--label", &format!("com.docker.compose.project={project}"), volume]);
}

/// The configuration that selects compose project `project` and backs it up into `repo`.
pub fn stack_yaml(project: &str, repo: &Path) -> String {
    format!("stack: {project}\ndocker:\n  select:\n    project: {project}\nrepository:\n  filesystem:\n    path: {}\n", repo.display())
}

/// Writes `body` as `dir`'s configuration; without a `state_dir:` of its own it gets `dir/state`: one
/// run at a time holds a state directory, and the tests run side by side.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("stackvault.yaml");
    let has_state_dir = body.lines().any(|l| l.starts_with("state_dir:"));
    let body = if has_state_dir { body.to_string() } else { format!("{body}{}state_dir: {}\n", if body.ends_with('\n') || body.is_empty() { "" } else { "\n" }, dir.join("state").display()) };
    std::fs::write(&path, body).unwrap();
    path
}

pub fn du(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let md = std::fs::symlink_metadata(p).unwrap();
        if md.is_dir() {
            std::fs::read_dir(p).unwrap().map(|e| walk(&e.unwrap().path())).sum()
        } else {
            md.len()
        }
    }
    walk(dir)
}

/// Every file below `dir`, recursively.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// What drills left on this engine: containers, volumes and networks with the drill label.
pub fn drill_leftovers() -> String {
    ["ps -a -q --filter label=stackvault.drill", "volume ls -q --filter label=stackvault.drill", "network ls -q --filter label=stackvault.drill"]
        .iter()
        .map(|cmd| docker(&cmd.split(' ').collect::<Vec<_>>()))
        .filter(|out| !out.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Helper containers still present whose purpose mentions `name` (other tests' helpers may run now).
pub fn helpers_left(name: &str) -> Vec<String> {
    let purposes = docker(&["ps", "-a", "--filter", "label=stackvault.helper", "--format", "{{.Label \"stackvault.helper\"}}"]);
    purposes.lines().filter(|p| p.contains(name)).map(str::to_string).collect()
}

/// Helpers still present for `name` once those that are on their way out are gone: a restore helper
/// whose agent reported success is removed by the engine a moment after the run (auto-remove).
pub fn helpers_remaining(name: &str) -> Vec<String> {
    for _ in 0..100 {
        if helpers_left(name).is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    helpers_left(name)
}

/// A compose stack of one container and one volume filled by the fixture, and an initialised
/// repository whose configuration selects the stack.
pub struct Scene {
    pub project: String,
    pub volume: String,
    pub container: String,
    pub work: PathBuf,
    pub repo: PathBuf,
    pub config: PathBuf,
}

impl Scene {
    /// `extra_yaml` is appended to the configuration (e.g. an `encryption:` section).
    pub fn new(prefix: &str, big_mib: u32, small_files: u32, extra_yaml: &str) -> Scene {
        let project = unique(prefix);
        let volume = format!("{project}_data");
        let work = scratch(prefix);
        compose_volume(&project, &volume);
        make_fixture(&volume_dir(&volume), big_mib, small_files);
        let container = stack_container(&project, &volume);
        let repo = work.join("repo");
        let config = write_config(
            &work,
            &format!("{}{extra_yaml}", stack_yaml(&project, &repo)),
        );
        ok(stackvault(&config).arg("init"));
        Scene { project, volume, container, work, repo, config }
    }

    pub fn mountpoint(&self) -> PathBuf {
        volume_dir(&self.volume)
    }

    /// The disaster: the container and its volume are gone.
    pub fn destroy(&self) {
        remove_project_containers(&self.project);
        docker(&["volume", "rm", &self.volume]);
    }

    pub fn cleanup(self) {
        remove_project_containers(&self.project);
        let _ = Command::new("docker").args(["volume", "rm", &self.volume]).output();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// The version the images are tagged with (Cargo.toml's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds stackvault:latest and stackvault-k8s:latest from this build's binary with docker/build,
/// once per test binary; docker/build itself skips images that are up to date and takes a lock, so
/// test binaries running side by side take turns. Returns its output and how long it took.
pub fn build_images() -> &'static (String, std::time::Duration) {
    static BUILT: std::sync::OnceLock<(String, std::time::Duration)> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let started = std::time::Instant::now();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/build");
        let out = ok(Command::new("bash").arg(script).arg(env!("CARGO_BIN_EXE_stackvault")));
        (out, started.elapsed())
    })
}

/// Flips one bit of a stored object (made writable first: the filesystem target stores them read-only).
pub fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    let at = (at as usize) % bytes.len();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Runs `cmd` with `input` on its stdin (fed beside, so that a large output cannot stall it) and
/// its output captured.
pub fn run_with_input(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}
