//! Database dumps against real servers (MariaDB 10.11 and PostgreSQL 15 in the image docker/test-db
//! builds): a million rows with unicode, binary columns, a view, a trigger and a routine, a writer
//! inserting all through the backup; drop, restore, compare (tests/db holds the SQL, checked on its own
//! by tests/db/roundtrip.sh). Then the ways a dump fails: wrong password, dump killed midway, a tool
//! that exits 0 after a truncated stream, server stopped: each fails the run, names what failed,
//! writes no snapshot, and shows the password nowhere. Also: command dumps, hooks, and containers
//! stopped during the backup, started again even after the sidecar is killed with SIGKILL.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::db::Server;
use common::*;



/// Every process's command line, in the container and on the host, sampled until stopped.
struct PsSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl PsSampler {
    fn start(container: &str) -> PsSampler {
        let (stop, samples) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (flag, sink, container) = (stop.clone(), samples.clone(), container.to_string());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let inside = Command::new("docker").args(["exec", &container, "ps", "-eo", "args"]).output().unwrap();
                let host = Command::new("ps").args(["-eo", "args"]).output().unwrap();
                sink.lock().unwrap().extend([text(&inside.stdout), text(&host.stdout)]);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        PsSampler { stop, samples, thread }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        Arc::try_unwrap(self.samples).unwrap().into_inner().unwrap()
    }
}

/// The dump source of database `calls` in the latest snapshot.
fn calls_dump(server: &Server) -> serde_json::Value {
    let latest = server.snapshots().last().unwrap()["snapshot"].clone();
    let sources = latest["sources"].as_array().unwrap();
    assert!(!sources.iter().any(|s| s["kind"] == "volume"), "the live data volume was copied: {sources:?}");
    sources.iter().find(|s| s["kind"] == "dump" && s["dump"]["database"] == "calls").cloned().unwrap_or_else(|| panic!("no dump of calls: {sources:?}"))
}

fn round_trip_under_load_then_failures(engine: &'static str, labels: &[&str]) {
    let server = Server::start(engine, labels);
    let clock = Instant::now();
    server.run_fixture("schema.sql");
    server.run_fixture("load.sql");
    eprintln!("{engine}: 1,000,000 rows loaded in {:.1} s", clock.elapsed().as_secs_f64());
    let objects = server.run_fixture("objects.sql");

    server.start_writer();
    std::thread::sleep(Duration::from_secs(2));
    let watermark = server.run_fixture("watermark.sql");
    let before = server.checksums(&watermark);
    let dry = ok(stackvault(&server.config).args(["backup", "--dry-run"]));
    assert!(dry.contains(&format!("would dump {}/calls ({engine}", server.container)), "{dry}");
    let sampler = PsSampler::start(&server.container);
    let out = ok(stackvault(&server.config).arg("backup"));
    let samples = sampler.finish();
    server.stop_writer();
    let tool = if engine == "mariadb" { "mariadb-dump" } else { "pg_dump" };
    assert!(samples.iter().any(|s| s.contains(tool)), "the sampler never saw {tool} running");
    assert!(!samples.iter().any(|s| s.contains(&server.password)), "the password was in a process listing");
    assert!(!out.contains(&server.password), "{out}");
    assert!(out.contains("the database's live files"), "the data volume is skipped with why: {out}");
    assert!(out.contains(&format!("Dump {}/calls", server.container)) && out.contains("through a FIFO in volume"), "{out}");
    assert!(server.run_fixture("watermark.sql").parse::<u64>().unwrap() > watermark.parse::<u64>().unwrap(), "the writer wrote during the backup");
    assert_eq!(server.run_fixture("audit-check.sql").split_whitespace().collect::<Vec<_>>(), ["0", "0"]);

    let dump = calls_dump(&server);
    assert!(dump["dump"]["server_version"].as_str().is_some_and(|v| !v.is_empty()), "{dump}");
    let recorded: BTreeMap<String, u64> =
        dump["dump"]["tables"].as_object().unwrap().iter().map(|(t, n)| (t.rsplit('.').next().unwrap().to_string(), n.as_u64().unwrap())).collect();

    server.drop_calls();
    let restored = ok(stackvault(&server.config).args(["restore", "latest", "--only", "db:calls"]));
    assert!(restored.contains("database calls in container"), "{restored}");
    assert_eq!(server.checksums(&watermark), before, "rows that existed before the backup differ after the restore");
    assert_eq!(server.run_fixture("audit-check.sql").split_whitespace().collect::<Vec<_>>(), ["0", "0"], "trigger-written rows do not match their parents");
    assert_eq!(server.run_fixture("objects.sql"), objects, "views, triggers or routines differ");
    assert_eq!(server.counts(), recorded, "restored row counts differ from those the snapshot recorded");

    // A database that holds tables is not overwritten unless asked.
    let refused = run(stackvault(&server.config).args(["restore", "latest", "--only", "db:calls"]));
    assert!(!refused.status.success() && text(&refused.stderr).contains("--force"), "{}", text(&refused.stderr));
    ok(stackvault(&server.config).args(["restore", "latest", "--only", "db:db", "--force"]));
    assert_eq!(server.checksums(&watermark), before);

    // The ways a dump fails. A dump killed midway inside the container:
    let mut backup = stackvault(&server.config).arg("backup").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pattern = if engine == "mariadb" { "single-transaction" } else { "pg_dump --format" };
    let mut killed = false;
    for _ in 0..600 {
        if backup.try_wait().unwrap().is_some() {
            break;
        }
        let found = Command::new("docker").args(["exec", &server.container, "pgrep", "-f", "--", pattern]).output().unwrap();
        if found.status.success() {
            // A moment for bytes to flow; not long: a 1M-row dump can take well under a second.
            std::thread::sleep(Duration::from_millis(50));
            killed = Command::new("docker").args(["exec", &server.container, "pkill", "-KILL", "-f", "--", pattern]).output().unwrap().status.success();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = backup.wait_with_output().unwrap();
    assert!(killed, "the dump finished before it could be killed");
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && stderr.contains("database calls") && stderr.contains("137"), "killed dump: {stderr}");

    // A tool that exits 0 after writing a cut stream.
    let wrapper = format!("#!/bin/sh\n/usr/bin/{tool} \"$@\" | head -c 300000\nexit 0\n");
    docker(&["exec", &server.container, "sh", "-c", &format!("printf '%s' '{wrapper}' > /usr/local/bin/{tool} && chmod +x /usr/local/bin/{tool}")]);
    let stderr = server.failing_backup("truncated dump");
    assert!(stderr.contains("database calls") && stderr.contains("cut short"), "truncated dump: {stderr}");
    docker(&["exec", &server.container, "rm", &format!("/usr/local/bin/{tool}")]);

    // The password was changed (rotated) and the container's variable is stale.
    match engine {
        "mariadb" => server.sql("mysql", "ALTER USER 'root'@'localhost' IDENTIFIED BY 'rotated';", &[]),
        _ => server.sql("postgres", "ALTER USER postgres PASSWORD 'rotated';", &[]),
    };
    let stderr = server.failing_backup("wrong password");
    assert!(stderr.contains(&server.container) && stderr.to_lowercase().contains("password") || stderr.contains("denied"), "wrong password: {stderr}");
    if labels.iter().any(|l| l.starts_with("stackvault.dump.databases=")) {
        assert!(stderr.contains("calls"), "the message names the database: {stderr}");
    }

    // The server is down.
    docker(&["stop", &server.container]);
    let stderr = server.failing_backup("server stopped");
    assert!(stderr.contains(&server.container) && stderr.contains("not running"), "server stopped: {stderr}");

    ok(stackvault(&server.config).args(["verify", "--read-data"]));
    assert!(helpers_remaining(&server.container).is_empty(), "relay helpers left: {:?}", helpers_left(&server.container));
    server.cleanup();
}

#[test]
fn mariadb_dump_under_load_restores_exactly_and_every_failure_fails_the_run() {
    round_trip_under_load_then_failures("mariadb", &[]);
}

#[test]
fn postgres_dump_under_load_restores_exactly_and_every_failure_fails_the_run() {
    round_trip_under_load_then_failures("postgres", &["stackvault.dump.databases=calls"]);
}

/// A stand-in stack container (busybox) whose main process stops on SIGTERM, with a volume at /data.
fn busybox_container(project: &str, name: &str, volume: &str, labels: &[&str]) -> String {
    let mut args = vec!["run", "-d", "--network", "none", "--name", name, "--label"];
    let project_label = format!("com.docker.compose.project={project}");
    args.push(&project_label);
    for label in labels {
        args.extend(["--label", label]);
    }
    let mount = format!("{volume}:/data");
    args.extend(["-v", &mount, TEST_IMAGE, "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]);
    docker(&args)
}

fn running(container: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", container]) == "true"
}

/// A one-container stack with a volume at /data, and an initialised repository whose configuration
/// selects it: (volume, container, work dir, configuration, state dir).
fn stand_in_stack(prefix: &str, labels: &[&str]) -> (String, String, PathBuf, PathBuf, PathBuf) {
    let project = unique(prefix);
    let (volume, name, work) = (format!("{project}_data"), format!("{project}-app-1"), scratch(prefix));
    compose_volume(&project, &volume);
    busybox_container(&project, &name, &volume, labels);
    let state = work.join("state");
    let config = write_config(&work, &format!("{}state_dir: {}\n", stack_yaml(&project, &work.join("repo")), state.display()));
    ok(stackvault(&config).arg("init"));
    (volume, name, work, config, state)
}

/// Starts a backup and, once it has stopped `container`, sends it `signal`; returns its output.
fn interrupt_while_stopped(config: &Path, container: &str, signal: &str) -> Output {
    let mut backup = stackvault(config).arg("backup").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    for _ in 0..1200 {
        if !running(container) {
            ok(Command::new("kill").args([signal, &backup.id().to_string()]));
            return backup.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = backup.kill().and_then(|_| backup.wait());
    panic!("the backup never stopped {container}");
}

fn remove_stand_in(volume: &str, name: &str, work: &Path) {
    let _ = Command::new("docker").args(["rm", "-f", name]).output();
    let _ = Command::new("docker").args(["volume", "rm", volume]).output();
    let _ = std::fs::remove_dir_all(work);
}

#[test]
fn a_command_dump_round_trips_and_its_check_command_decides() {
    let (volume, name, work, config, _) = stand_in_stack("cmd", &[
        "stackvault.dump=command",
        "stackvault.dump.command=cat /data/export.txt",
        "stackvault.dump.restore-command=cat > /data/imported.txt",
        "stackvault.dump.check-command=while read -r line; do last=$line; done; [ \"$last\" = END ]",
    ]);
    docker(&["exec", &name, "sh", "-c", "printf 'line one\\nline two\\nEND\\n' > /data/export.txt"]);
    // Through a FIFO in the container's volume and a helper, around the exec stream; and, with no
    // exchange socket to meet a helper at (attach mode), through the exec stream itself.
    let out = ok(stackvault(&config).arg("backup"));
    assert!(out.contains(&format!("Dump {name}:")) && out.contains(&format!("through a FIFO in volume {volume}")), "{out}");
    let out = ok(stackvault(&config).arg("backup").env("STACKVAULT_DOCKER_STREAM", "attach"));
    assert!(out.contains(&format!("(read by exec in container {name})")), "{out}");
    assert_eq!(docker(&["exec", &name, "ls", "-a", "/data"]), ".\n..\nexport.txt", "no FIFO is left behind");
    ok(stackvault(&config).args(["restore", "latest", "--only", &format!("db:{name}")]));
    assert_eq!(docker(&["exec", &name, "cat", "/data/imported.txt"]), "line one\nline two\nEND");
    // With --to, a dump is written as a file, for loading by hand.
    ok(stackvault(&config).args(["restore", "latest", "--to"]).arg(work.join("out")));
    assert_eq!(std::fs::read_to_string(work.join("out/dump").join(&name)).unwrap(), "line one\nline two\nEND\n");

    // The check command refuses a stream without its END line: the run fails, no snapshot.
    docker(&["exec", &name, "sh", "-c", "printf 'line one\\n' > /data/export.txt"]);
    let out = run(stackvault(&config).arg("backup"));
    assert!(!out.status.success() && text(&out.stderr).contains("check command"), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_str(&ok(stackvault(&config).args(["snapshots", "--json"]))).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    remove_stand_in(&volume, &name, &work);
}

#[test]
fn containers_stopped_for_the_backup_run_again_even_after_the_sidecar_is_killed_and_hooks_run_in_order() {
    let (volume, name, work, config, state) = stand_in_stack("stop", &[
        "stackvault.stop-during-backup=true",
        "stackvault.pre=echo pre >> /hooks.log",
        "stackvault.post=echo post >> /hooks.log",
    ]);
    // Enough data that the read takes a while: the sidecar is interrupted during it.
    make_fixture(&volume_dir(&volume), 300, 2000);

    let out = ok(stackvault(&config).arg("backup"));
    assert!(out.contains(&format!("Volume {volume}")), "{out}");
    assert!(running(&name), "started again after the backup");
    assert_eq!(docker(&["exec", &name, "cat", "/hooks.log"]), "pre\npost");
    // The records of stopped containers, beside the runner's own files in the state directory.
    let records = || std::fs::read_dir(&state).map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("stopped-")).count()).unwrap_or(0);
    assert_eq!(records(), 0);

    // Killed while the container is stopped: the record stays, and the next start starts it.
    interrupt_while_stopped(&config, &name, "-KILL");
    assert!(!running(&name), "nothing but stackvault starts it");
    assert_eq!(records(), 1, "the killed run's record stays");
    let out = run(stackvault(&config).arg("backup"));
    assert!(out.status.success() && running(&name), "the next run started it: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("started again container {name}")), "the restart is reported: {}", text(&out.stderr));
    assert_eq!(records(), 0);

    // Interrupted by SIGTERM while the container is stopped: the run starts it before it exits.
    let out = interrupt_while_stopped(&config, &name, "-TERM");
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    assert!(running(&name), "started again by the interrupted run: {}", text(&out.stderr));
    assert_eq!(records(), 0);
    remove_stand_in(&volume, &name, &work);
}

#[test]
fn a_hook_past_its_timeout_fails_the_run_and_is_stopped_with_its_pipeline() {
    let (volume, name, work, config, _) = stand_in_stack("hook", &["stackvault.pre=sleep 300 | cat", "stackvault.hook-timeout=2s"]);
    let out = run(stackvault(&config).arg("backup"));
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && stderr.contains("stackvault.pre hook") && stderr.contains("did not finish within 2s"), "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&ok(stackvault(&config).args(["snapshots", "--json"]))).unwrap();
    assert!(listed.as_array().unwrap().is_empty());
    // Both ends of the pipeline are gone (the image has no ps: /proc, read by the shell).
    let left = || docker(&["exec", &name, "sh", "-c", "for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null; echo; done"]);
    let mut processes = left();
    for _ in 0..50 {
        if !processes.contains("sleep\x00300") && !processes.lines().any(|l| l == "cat\x00") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        processes = left();
    }
    assert!(!processes.contains("sleep\x00300") && !processes.lines().any(|l| l == "cat\x00"), "the hook's pipeline survived: {processes:?}");
    remove_stand_in(&volume, &name, &work);
}
