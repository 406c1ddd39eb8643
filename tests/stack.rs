//! Whole-stack restore, as on the day a host is gone: a compose-labelled stack (an app with env,
//! working dir, healthcheck, restart policy and depends_on; a real MariaDB with a dump label; a files
//! volume; a network) is backed up on this engine with `images: include` and restored by one command
//! onto a second engine (its own data root and socket, no images, no registry); a dry run changes
//! nothing there; the same snapshot runs beside the original under `--project`; `--replace` brings a
//! running stack back to the night before. Configurations are compared with tests/inspectdiff.py,
//! volume contents with tests/treecheck.py and tables by their rows: none of them shares code with
//! stackvault.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const DB_IMAGE: &str = "stackvault-test/db:1";
const PASSWORD: &str = "stack-test-pw";

/// A second Docker engine on this machine, as a fresh host would have one: its own data root, exec
/// root and socket, no default bridge, no iptables (DEVELOPERS.md).
struct SecondEngine {
    dir: PathBuf,
    host: String,
    daemon: Child,
}

impl SecondEngine {
    fn start() -> SecondEngine {
        let dir = scratch("engine-b");
        let socket = dir.join("docker.sock");
        let daemon = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge=none", "--iptables=false"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log")).unwrap())
            .spawn()
            .expect("dockerd (run .ci/setup)");
        let engine = SecondEngine { host: format!("unix://{}", socket.display()), dir, daemon };
        for _ in 0..120 {
            if engine.docker(&["info"]).status.success() {
                return engine;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("the second dockerd did not start: {}", std::fs::read_to_string(engine.dir.join("dockerd.log")).unwrap_or_default());
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        run(Command::new("docker").arg("-H").arg(&self.host).args(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(out.status.success(), "docker -H {} {args:?}: {}", self.host, text(&out.stderr));
        text(&out.stdout).trim().to_string()
    }

    /// Everything the engine holds, to see that a dry run changed nothing.
    fn inventory(&self) -> String {
        ["ps -a --format {{.Names}}", "volume ls -q", "network ls --format {{.Name}}", "images -a -q"]
            .iter()
            .map(|cmd| self.ok(&cmd.split(' ').collect::<Vec<_>>()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        let all = self.docker(&["ps", "-aq"]);
        for id in text(&all.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        unsafe { libc::kill(self.daemon.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.daemon.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The stack on this engine: project `project`, containers `<project>-db-1` and `<project>-app-1`.
struct Stack {
    project: String,
    work: PathBuf,
    config: PathBuf,
}

impl Stack {
    fn create(prefix: &str) -> Stack {
        Stack::create_with(prefix, &[])
    }

    /// With extra `docker run` arguments for the app container (labels).
    fn create_with(prefix: &str, app_args: &[&str]) -> Stack {
        let project = unique(prefix);
        let work = scratch(prefix);
        let p = &project.clone();
        let compose = format!("com.docker.compose.project={p}");
        docker(&["network", "create", "--label", &compose, "--label", "com.docker.compose.network=default", &format!("{p}_default")]);
        for volume in ["db", "files"] {
            docker(&["volume", "create", "--label", &compose, "--label", &format!("com.docker.compose.volume={volume}"), &format!("{p}_{volume}")]);
        }
        docker(&[
            "run", "-d", "--name", &format!("{p}-db-1"), "--network", &format!("{p}_default"), "--network-alias", "db",
            "--label", &compose, "--label", "com.docker.compose.service=db", "--label", "stackvault.dump=auto",
            "-e", &format!("MARIADB_ROOT_PASSWORD={PASSWORD}"), "-e", "MARIADB_DATABASE=calls", "-v", &format!("{p}_db:/var/lib/mysql"),
            "--health-cmd", &format!("mariadb -uroot -p{PASSWORD} -e 'SELECT 1'"), "--health-interval", "1s", "--restart", "unless-stopped",
            DB_IMAGE, "mariadb",
        ]);
        let files = volume_dir(&format!("{p}_files"));
        make_fixture(&files, 8, 200);
        let (app_name, app_network, app_files) = (format!("{p}-app-1"), format!("{p}_default"), format!("{p}_files:/srv/files"));
        let mut app: Vec<&str> = vec![
            "run", "-d", "--name", &app_name, "--network", &app_network, "--network-alias", "app",
            "--label", &compose, "--label", "com.docker.compose.service=app", "--label", "com.docker.compose.depends_on=db:service_healthy:false",
            "-e", "APP_MODE=production", "-e", "APP_SECRET=s3cr3t", "-w", "/srv", "--restart", "unless-stopped", "--memory", "64m",
            "--health-cmd", "test -d /srv/files", "--health-interval", "1s", "-v", &app_files,
        ];
        app.extend_from_slice(app_args);
        app.extend([TEST_IMAGE, "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]);
        docker(&app);
        let stack = Stack { config: work.join("stackvault.yaml"), work, project };
        std::fs::write(
            &stack.config,
            format!(
                "stack: {p}\ndocker:\n  select:\n    project: {p}\nrepository:\n  filesystem:\n    path: {}\nimages: include\ncache_dir: {}\nstate_dir: {}\n",
                stack.work.join("repo").display(),
                stack.work.join("cache").display(),
                stack.work.join("state").display()
            ),
        )
        .unwrap();
        wait_healthy("", &format!("{p}-db-1"));
        stack.sql("", &format!("{p}-db-1"), "CREATE TABLE calls (id INT PRIMARY KEY, agent VARCHAR(20), note TEXT); INSERT INTO calls VALUES (1,'ana','first call'),(2,'bo','ünïcode'),(3,'cy',NULL);");
        ok(stackvault(&stack.config).arg("init"));
        stack
    }

    fn sql(&self, host: &str, container: &str, statements: &str) -> String {
        let mut cmd = Command::new("docker");
        if !host.is_empty() {
            cmd.args(["-H", host]);
        }
        let out = run(cmd.args(["exec", container, "mariadb", "-uroot", &format!("-p{PASSWORD}"), "-N", "calls", "-e", statements]));
        assert!(out.status.success(), "SQL in {container}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// The table's rows, in order: what a restore must bring back exactly.
    fn rows(&self, host: &str, container: &str) -> String {
        self.sql(host, container, "SELECT id, agent, IFNULL(note, 'NULL') FROM calls ORDER BY id")
    }

    fn cleanup(self) {
        remove_stack(&self.project);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Removes a stack of this test's shape under project `project`: containers, volumes, network.
fn remove_stack(project: &str) {
    remove_project_containers(project);
    for volume in ["_db", "_files"] {
        let _ = Command::new("docker").args(["volume", "rm", &format!("{project}{volume}")]).output();
    }
    let _ = Command::new("docker").args(["network", "rm", &format!("{project}_default")]).output();
}

fn health(host: &str, container: &str) -> String {
    let mut cmd = Command::new("docker");
    if !host.is_empty() {
        cmd.args(["-H", host]);
    }
    text(&run(cmd.args(["inspect", "-f", "{{.State.Running}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", container])).stdout).trim().to_string()
}

fn wait_healthy(host: &str, container: &str) {
    for _ in 0..240 {
        if health(host, container) == "true healthy" {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{container} did not become healthy: {}", health(host, container));
}

fn mountpoint(host: &str, volume: &str) -> PathBuf {
    let out = run(Command::new("docker").args(["-H", host, "volume", "inspect", volume, "-f", "{{.Mountpoint}}"]));
    PathBuf::from(text(&out.stdout).trim())
}

fn same_configuration(host_a: &str, host_b: &str, name_a: &str, name_b: &str) {
    let out = python("inspectdiff.py", &[&host_a, &host_b, &name_a, &name_b]);
    assert!(out.status.success(), "{name_a} and {name_b} differ beyond ids, timestamps and host paths:\n{}", text(&out.stdout));
}

#[test]
fn a_stack_is_restored_onto_a_fresh_engine_by_one_command_and_a_dry_run_changes_nothing() {
    let stack = Stack::create("stk");
    let p = stack.project.clone();
    let before = stack.work.join("files.json");
    manifest(&volume_dir(&format!("{p}_files")), &before);
    let rows = stack.rows("", &format!("{p}-db-1"));
    ok(stackvault(&stack.config).arg("backup"));

    let b = SecondEngine::start();
    let empty = b.inventory();
    let plan = ok(stackvault(&stack.config).args(["restore", "latest", "--dry-run", "--docker-host", &b.host]));
    for expected in ["create network", "load image stackvault-test/db:1", &format!("create and start container {p}-app-1 after {p}-db-1 healthy")] {
        assert!(plan.contains(expected), "the plan lacks {expected:?}:\n{plan}");
    }
    assert_eq!(b.inventory(), empty, "the dry run changed the engine");

    let restored = ok(stackvault(&stack.config).args(["restore", "latest", "--docker-host", &b.host]));
    assert!(restored.contains("time to recovery:"), "{restored}");
    for container in [format!("{p}-db-1"), format!("{p}-app-1")] {
        assert_eq!(health(&b.host, &container), "true healthy", "{restored}");
        same_configuration("", &b.host, &container, &container);
    }
    let after = stack.work.join("files-b.json");
    manifest(&mountpoint(&b.host, &format!("{p}_files")), &after);
    assert_same(&before, &after);
    assert_eq!(stack.rows(&b.host, &format!("{p}-db-1")), rows);
    assert!(helpers_remaining(&p).is_empty());
    drop(b);
    stack.cleanup();
}

#[test]
fn beside_the_original_under_another_project_and_back_to_last_night_with_replace() {
    let stack = Stack::create("stkp");
    let p = stack.project.clone();
    let before = stack.work.join("files.json");
    manifest(&volume_dir(&format!("{p}_files")), &before);
    let rows = stack.rows("", &format!("{p}-db-1"));
    ok(stackvault(&stack.config).arg("backup"));

    // The same snapshot as a second stack beside the running original.
    let copy = format!("{p}x");
    let restored = ok(stackvault(&stack.config).args(["restore", "latest", "--project", &copy]));
    for container in [format!("{copy}-db-1"), format!("{copy}-app-1")] {
        assert_eq!(health("", &container), "true healthy", "{restored}");
    }
    assert_eq!(health("", &format!("{p}-app-1")), "true healthy", "the original stopped");
    let labels = docker(&["inspect", "-f", "{{index .Config.Labels \"com.docker.compose.project\"}}", &format!("{copy}-app-1")]);
    assert_eq!(labels, copy);
    let copied = stack.work.join("files-copy.json");
    manifest(&volume_dir(&format!("{copy}_files")), &copied);
    assert_same(&before, &copied);
    assert_eq!(stack.rows("", &format!("{copy}-db-1")), rows);

    // The day after: rows and files change; --replace brings the running stack back to the snapshot.
    stack.sql("", &format!("{p}-db-1"), "DELETE FROM calls WHERE id = 1; INSERT INTO calls VALUES (9, 'zed', 'later');");
    std::fs::write(volume_dir(&format!("{p}_files")).join("written-later.txt"), b"not in the snapshot").unwrap();
    let replaced = ok(stackvault(&stack.config).args(["restore", "latest", "--replace"]));
    assert!(replaced.contains(&format!("stop and remove container {p}-app-1")) || replaced.contains("stopping and removing"), "{replaced}");
    wait_healthy("", &format!("{p}-app-1"));
    let back = stack.work.join("files-back.json");
    manifest(&volume_dir(&format!("{p}_files")), &back);
    assert_same(&before, &back);
    assert_eq!(stack.rows("", &format!("{p}-db-1")), rows);

    remove_stack(&copy);
    stack.cleanup();
}

/// Waits until a drill's container runs.
fn wait_for_drill_containers() {
    for _ in 0..600 {
        if !docker(&["ps", "-q", "--filter", "label=stackvault.drill", "--filter", "status=running"]).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no drill container ran within a minute");
}

fn drill(config: &std::path::Path, snapshot: &str) -> std::process::Output {
    run(stackvault(config).args(["verify", &format!("--drill={snapshot}")]))
}

#[test]
fn a_drill_restores_the_stack_in_isolation_checks_it_and_leaves_nothing_behind_even_when_killed() {
    let stack = Stack::create_with("stkd", &["--label", "stackvault.drill-check=grep -q proof /srv/files/drill-proof.txt"]);
    let p = stack.project.clone();
    let proof = volume_dir(&format!("{p}_files")).join("drill-proof.txt");
    std::fs::write(&proof, "proof\n").unwrap();
    ok(stackvault(&stack.config).arg("backup"));
    let good = snapshot_ids(&stack.work.join("repo")).pop().unwrap();

    // The database loads with the rows counted at backup, the app's check passes; nothing is left,
    // and the original runs on.
    let page = stack.work.join("audit.html");
    let out = run(stackvault(&stack.config).args(["verify", &format!("--drill={good}"), "--json", "--report"]).arg(&page));
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<h2>Restore drill</h2>") && html.contains(&format!("Snapshot <code>{good}</code>")) && html.contains(": passed."), "{html}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = report["drill"]["checks"].as_array().unwrap();
    let check = |name: &str| checks.iter().find(|c| c["what"].as_str().unwrap().starts_with(name)).unwrap_or_else(|| panic!("no check {name}: {checks:?}")).clone();
    assert_eq!(check("rows of dump")["detail"], "3 rows in 1 tables, as at backup", "{checks:?}");
    assert_eq!(check(&format!("drill-check of {p}-app-1"))["passed"], true);
    assert_eq!(report["drill"]["snapshot"], good.as_str());
    assert!(report["drill"]["project"].as_str().unwrap().starts_with("svdrill-"));
    assert_eq!(drill_leftovers(), "", "the drill left objects behind");
    assert_eq!(health("", &format!("{p}-app-1")), "true healthy");
    assert_eq!(health("", &format!("{p}-db-1")), "true healthy");

    // A snapshot whose app fails its drill-check fails the drill, named.
    std::fs::remove_file(&proof).unwrap();
    ok(stackvault(&stack.config).arg("backup"));
    let without = snapshot_ids(&stack.work.join("repo")).into_iter().find(|id| *id != good).unwrap();
    let out = drill(&stack.config, &without);
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(said.contains(&format!("the drill of snapshot {without}")) && said.contains(&format!("drill-check of {p}-app-1")), "{said}");
    assert_eq!(drill_leftovers(), "");

    // A dump altered so that it no longer loads: every object is present and every hash right, so
    // only the drill finds it, and names the snapshot.
    let altered = craft::alter_dump(&stack.work.join("repo"), &good, |dump| {
        let text = String::from_utf8(dump).unwrap();
        let at = text.find("INSERT INTO").expect("the dump inserts rows");
        format!("{}THIS IS NOT SQL;\n{}", &text[..at], &text[at..]).into_bytes()
    });
    ok(stackvault(&stack.config).args(["verify", "--read-data"]));
    let out = drill(&stack.config, &altered);
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(said.contains(&format!("the drill of snapshot {altered}")) && said.contains("restore: ") && said.contains("ERROR"), "{said}");
    assert_eq!(drill_leftovers(), "");

    // Killed (SIGKILL) while its containers run: the next drill removes them first, then passes.
    let mut killed = stackvault(&stack.config).args(["verify", &format!("--drill={good}")]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_drill_containers();
    // Cut off while it runs: its networks internal, no host port, no restart policy.
    let networks = docker(&["network", "ls", "-q", "--filter", "label=stackvault.drill"]);
    for network in networks.lines() {
        assert_eq!(docker(&["network", "inspect", "-f", "{{.Internal}}", network]), "true");
    }
    for container in docker(&["ps", "-a", "-q", "--filter", "label=stackvault.drill"]).lines() {
        let host = docker(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}} {{len .HostConfig.PortBindings}} {{.HostConfig.Privileged}}", container]);
        assert!(host == "no 0 false" || host == "0 false", "{container}: {host}");
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert_ne!(drill_leftovers(), "", "the killed drill had started containers");
    let out = run(stackvault(&stack.config).args(["verify", &format!("--drill={good}")]));
    let said = text(&out.stdout);
    assert!(out.status.success() && said.contains("removed what an earlier, interrupted drill left"), "{said}\n{}", text(&out.stderr));
    assert_eq!(drill_leftovers(), "");

    // Stopped (SIGTERM) while its containers run: it removes them itself, and exits 143.
    let stopped = stackvault(&stack.config).args(["verify", &format!("--drill={good}")]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_drill_containers();
    ok(Command::new("kill").args(["-TERM", &stopped.id().to_string()]));
    let out = stopped.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("everything it had created was removed"), "{}", text(&out.stderr));
    assert_eq!(drill_leftovers(), "");
    stack.cleanup();
}

fn snapshot_ids(repo: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(repo.join("snapshots")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}
