//! compose/docker-compose.yml as a user runs it (compose/README.md), with docker-compose and the
//! stackvault image: the repository created with `docker-compose run --rm stackvault init`, the stack
//! brought up, recordings written into its volume and rows into MariaDB, a first backup by hand with
//! `docker-compose exec`, then a scheduled one taken by the sidecar (every 20 s here), the whole stack destroyed with `down -v`, brought back with
//! `docker-compose run --rm stackvault restore latest`, and compared: the files with
//! tests/treecheck.py (content hashes and all metadata), the table with `CHECKSUM TABLE`; then
//! `up -d` adopts the restored containers. Offline: the test images stand in for MariaDB and the app.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// The example stack in a folder of its own, as a user would have it: the compose file and .env
/// copied from compose/, db.env made from its example, the share a temporary directory.
struct Compose {
    project: String,
    dir: PathBuf,
}

impl Compose {
    fn new() -> Compose {
        let project = unique("compose");
        let dir = scratch("compose");
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("compose");
        for (from, to) in [("docker-compose.yml", "docker-compose.yml"), (".env", ".env"), ("db.env.example", "db.env")] {
            std::fs::copy(example.join(from), dir.join(to)).unwrap();
        }
        std::fs::create_dir_all(dir.join("backup")).unwrap();
        Compose { project, dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(&self.dir).args(["--ansi", "never"]).args(args);
        // The user's .env, with what this machine needs instead: offline images, a share of the
        // test's own, a schedule of seconds.
        cmd.env("COMPOSE_PROJECT_NAME", &self.project)
            .env("BACKUP_DIR", self.dir.join("backup"))
            .env("STACKVAULT_IMAGE", "stackvault:latest")
            .env("MARIADB_IMAGE", "stackvault-test/db:1")
            .env("MARIADB_COMMAND", "mariadb")
            .env("APP_IMAGE", TEST_IMAGE)
            .env("STACKVAULT_SCHEDULE_CRON", "*/20 * * * * *");
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        ok(&mut self.command(args))
    }

    /// Runs SQL in the database container as root, the password taken from its environment.
    fn sql(&self, statements: &str) -> String {
        let out = run_with_input(&mut self.command(&["exec", "-T", "db", "sh", "-c", "MYSQL_PWD=\"$MARIADB_ROOT_PASSWORD\" exec mariadb -uroot -N calls"]), statements);
        assert!(out.status.success(), "SQL: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["exec", "-T", "stackvault", "/stackvault", "status", "--json"])).unwrap()
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    /// Containers, volumes and networks that carry the project's label.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut found = Vec::new();
        for (kind, list) in [("container", vec!["ps", "-a", "-q"]), ("volume", vec!["volume", "ls", "-q"]), ("network", vec!["network", "ls", "-q"])] {
            let out = docker(&[list.as_slice(), &["--filter", &label]].concat());
            found.extend(out.split_whitespace().map(|id| format!("{kind} {id}")));
        }
        found
    }
}

/// Everything goes, pass or fail: compose's own teardown, then whatever still carries the label
/// (restored containers, a one-off run cut short) and any helper a failed run left.
impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.command(&["down", "-v", "--remove-orphans", "-t", "1"]).output();
        let label = format!("label=com.docker.compose.project={}", self.project);
        let ids = |args: &[&str]| text(&run(Command::new("docker").args(args).args(["--filter", &label])).stdout);
        for id in ids(&["ps", "-aq"]).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        for id in ids(&["volume", "ls", "-q"]).split_whitespace() {
            let _ = Command::new("docker").args(["volume", "rm", "-f", id]).output();
        }
        for id in ids(&["network", "ls", "-q"]).split_whitespace() {
            let _ = Command::new("docker").args(["network", "rm", id]).output();
        }
        let helpers = text(&run(Command::new("docker").args(["ps", "-a", "--filter", "label=stackvault.helper", "--format", "{{.ID}} {{.Label \"stackvault.helper\"}}"])).stdout);
        for line in helpers.lines().filter(|l| l.contains(&self.project)) {
            let _ = Command::new("docker").args(["rm", "-f", line.split(' ').next().unwrap()]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unix_seconds() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn state(container: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", container])
}

/// The original tree's manifest less what the app's label leaves out (`*.part`): what a restore
/// must bring back.
fn manifest_without_parts(dir: &Path, out: &Path) {
    manifest(dir, out);
    // In Python: the fixture's undecodable names are surrogate escapes, which serde_json refuses.
    let script = "import json, sys\n\
                  m = json.load(open(sys.argv[1]))\n\
                  parts = [k for k in m['entries'] if k.endswith('.part')]\n\
                  assert len(parts) == 1, parts\n\
                  for k in parts: del m['entries'][k]\n\
                  json.dump(m, open(sys.argv[1], 'w'))\n";
    ok(Command::new("python3").args(["-c", script]).arg(out));
}

#[test]
fn the_example_stack_is_backed_up_on_schedule_destroyed_and_restored_by_its_sidecar() {
    let (_, took) = build_images();
    println!("images: {took:.1?}");
    let stack = Compose::new();
    let p = stack.project.clone();

    let started = Instant::now();
    let init = stack.ok(&["run", "--rm", "stackvault", "init"]);
    assert!(init.contains("created repository"), "{init}");
    // `up` returns once the database is healthy: the app depends on it.
    stack.ok(&["up", "-d"]);
    println!("init and up (MariaDB healthy): {:.1?}", started.elapsed());
    assert_eq!(state(&stack.container("db")), "running healthy");

    // The day's data: recordings of every kind of file and metadata, one still being written (left
    // out by the app's label), and rows in MariaDB.
    let recordings = volume_dir(&format!("{p}_recordings"));
    make_fixture(&recordings, 4, 200);
    std::fs::create_dir_all(recordings.join("2026-12")).unwrap();
    std::fs::write(recordings.join("2026-12/call-0042.wav.part"), "half a call").unwrap();
    stack.sql(
        "CREATE TABLE calls (id INT PRIMARY KEY, agent VARCHAR(20), note TEXT, digest VARBINARY(16));
         INSERT INTO calls SELECT seq, CONCAT('agent-', seq % 17), REPEAT('ünïcode ', seq % 50), UNHEX(MD5(seq)) FROM seq_1_to_5000;",
    );
    let checksum = stack.sql("CHECKSUM TABLE calls");
    let before = stack.dir.join("before.json");
    manifest_without_parts(&recordings, &before);
    let written = unix_seconds();

    // A first backup by hand, as the README's walk-through takes it (a scheduled run may hold the
    // lock for a moment); the volume mounted into the sidecar is read in-process, with no helper.
    let first = stack.ok(&["exec", "-T", "stackvault", "/stackvault", "backup", "--wait", "1m"]);
    assert!(first.contains(&format!("Volume {p}_recordings")) && first.contains("(read in-process at /sources/recordings)"), "{first}");
    assert!(first.contains("excluded by /srv/recordings/**/*.part (container"), "{first}");

    // A scheduled run that began after that one (which `status` reports as well).
    let by_hand = unix_seconds();
    let waited = Instant::now();
    let success = loop {
        let status = stack.status();
        let last = &status["last_success"];
        if last.is_object() && last["unix"].as_f64().unwrap() - last["duration_seconds"].as_f64().unwrap() >= by_hand {
            break last.clone();
        }
        // (A run in the first seconds may find MariaDB still starting: the sidecar waits for nothing.)
        let failed = &status["last_failure"];
        assert!(!failed.is_object() || failed["unix"].as_f64().unwrap() < written, "{status}");
        assert!(waited.elapsed() < Duration::from_secs(90), "no scheduled backup within 90 s: {status}\n{}", stack.ok(&["logs", "stackvault"]));
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("scheduled backup: waited {:.1?}, took {} s", waited.elapsed(), success["duration_seconds"]);
    // The command the image's HEALTHCHECK runs.
    let health = stack.ok(&["exec", "-T", "stackvault", "/stackvault", "healthcheck"]);
    assert!(health.starts_with("ok"), "{health}");

    // A backup from a one-off container beside the daemon (`compose run`): neither the daemon nor
    // this container is the stack's, so the restore below re-creates neither.
    stack.ok(&["run", "--rm", "stackvault", "backup", "--wait", "1m"]);

    // The disaster: containers, volumes (data, database, the sidecar's cache and state) and network gone.
    stack.ok(&["down", "-v"]);
    assert_eq!(stack.leftovers(), Vec::<String>::new());

    let restoring = Instant::now();
    let restored = stack.ok(&["run", "--rm", "stackvault", "restore", "latest"]);
    println!("restore: {:.1?}\n{restored}", restoring.elapsed());
    assert!(restored.contains(&format!("container {}: healthy", stack.container("db"))), "{restored}");
    assert!(restored.contains(&format!("container {}: running", stack.container("app"))), "{restored}");
    assert_eq!(state(&stack.container("db")), "running healthy");
    assert_eq!(state(&stack.container("app")), "running");
    let sidecars = docker(&["ps", "-aq", "--filter", &format!("label=com.docker.compose.project={p}"), "--filter", "label=com.docker.compose.service=stackvault"]);
    assert!(sidecars.is_empty(), "the restore re-created the sidecar's own service: {sidecars}");
    assert_eq!(stack.sql("CHECKSUM TABLE calls"), checksum);
    let after = stack.dir.join("after.json");
    manifest(&volume_dir(&format!("{p}_recordings")), &after);
    assert_same(&before, &after);

    // The sidecar comes back beside the restored containers, which compose takes as its own.
    let ids = |service: &str| docker(&["inspect", "-f", "{{.Id}}", &stack.container(service)]);
    let (app, db) = (ids("app"), ids("db"));
    stack.ok(&["up", "-d"]);
    assert_eq!((ids("app"), ids("db")), (app, db), "compose re-created a restored container");
    assert!(state(&stack.container("stackvault")).starts_with("running"));
    assert_eq!(stack.ok(&["ps", "-q"]).lines().count(), 3);
    assert!(stack.status()["lock"].is_null());
    println!("whole test: {:.1?}", started.elapsed());
}
