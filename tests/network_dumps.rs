//! Database dumps over the network (`databases:`, the Kubernetes mode, where there is no engine to
//! exec in): stackvault runs the engine's client tools itself (here on the test host, as in the
//! stackvault-k8s image) against real MariaDB and PostgreSQL servers on a network the test made,
//! logging in as a backup user whose password is in a file. The same checks as dumps by exec (exit
//! code, non-empty, the engine's completion check, row counts), the same dump sources, and
//! `restore --only db:NAME` loads them back over the network. A wrong password, a connection the
//! server kills mid-dump and a server that is down each fail the run and write no snapshot. And the
//! same from the stackvault-k8s image, as the Helm chart runs it.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::db::Server;
use common::*;

/// A network of the test's own (docker0 can vanish here), removed with it.
struct Network(String);

impl Network {
    fn create() -> Network {
        let name = unique("svnet");
        docker(&["network", "create", &name]);
        Network(name)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["network", "rm", &self.0]).output();
    }
}

fn round_trip_then_failures(engine: &'static str) {
    let network = Network::create();
    let server = Server::on_network(engine, &network.0);
    server.run_fixture("schema.sql");
    server.run_fixture("load.sql");
    let objects = server.run_fixture("objects.sql");
    let watermark = server.run_fixture("watermark.sql");
    let before = server.checksums(&watermark);

    // check reaches the target and the server (which lists its databases) and stores nothing.
    let checked = ok(stackvault(&server.config).arg("check"));
    assert!(checked.contains("ok    target") && checked.contains("1 database servers, each listing its databases") && checked.contains("would dump cc/calls") && checked.contains("check passed"), "{checked}");
    assert!(checked.contains("the target locks nothing"), "a share's lack of locks is said: {checked}");
    assert!(server.snapshots().is_empty(), "check stored a snapshot");
    let dry = ok(stackvault(&server.config).args(["backup", "--dry-run"]));
    assert!(dry.contains(&format!("would dump cc/calls ({engine}")), "{dry}");
    let out = ok(stackvault(&server.config).arg("backup"));
    let address = server.address.clone().unwrap();
    assert!(out.contains("Dump cc/calls") && out.contains(&format!("over the network from {address}")), "{out}");
    assert!(!out.contains(&server.password), "{out}");

    let latest = server.snapshots().last().unwrap()["snapshot"].clone();
    let sources = latest["sources"].as_array().unwrap();
    let names: Vec<&str> = sources.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cc/calls"], "only the database asked for, named after its entry (a backup login dumps no users or roles)");
    let dump = &sources[0]["dump"];
    assert_eq!((dump["engine"].as_str(), dump["container"].as_str(), dump["database"].as_str()), (Some(engine), Some("cc"), Some("calls")), "{dump}");
    assert!(dump["server_version"].as_str().is_some_and(|v| !v.is_empty()), "{dump}");
    let recorded: BTreeMap<String, u64> = dump["tables"].as_object().unwrap().iter().map(|(t, n)| (t.rsplit('.').next().unwrap().to_string(), n.as_u64().unwrap())).collect();
    assert_eq!(server.counts(), recorded, "the row counts recorded are the server's");

    server.drop_calls();
    let restored = ok(stackvault(&server.config).args(["restore", "latest", "--only", "db:calls"]));
    assert!(restored.contains(&format!("database calls in database server cc at {address}")), "{restored}");
    assert_eq!(server.checksums(&watermark), before, "rows differ after the restore");
    assert_eq!(server.run_fixture("objects.sql"), objects, "views, triggers or routines differ");
    assert_eq!(server.counts(), recorded);
    let refused = run(stackvault(&server.config).args(["restore", "latest", "--only", "db:cc"]));
    assert!(!refused.status.success() && text(&refused.stderr).contains("--force"), "{}", text(&refused.stderr));
    ok(stackvault(&server.config).args(["restore", "latest", "--only", "db:cc", "--force"]));
    assert_eq!(server.checksums(&watermark), before);

    // A connection the server ends mid-dump: a table held locked makes the dump wait on it, then the
    // server kills the dump's session.
    let (hold, waiting, holding, kill) = match engine {
        "mariadb" => (
            "LOCK TABLES recordings WRITE; SELECT SLEEP(300);",
            "SELECT id FROM information_schema.processlist WHERE user = 'backup' AND state LIKE '%metadata lock%';",
            "SELECT id FROM information_schema.processlist WHERE info LIKE 'SELECT SLEEP(300)%';",
            "KILL {};",
        ),
        _ => (
            "BEGIN; LOCK TABLE recordings IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(300);",
            "SELECT pid FROM pg_stat_activity WHERE usename = 'backup' AND wait_event_type = 'Lock';",
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(300)%';",
            "SELECT pg_terminate_backend({});",
        ),
    };
    let mut holder = server.client("calls", &[]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::io::Write::write_all(&mut holder.stdin.take().unwrap(), hold.as_bytes()).unwrap();
    let held = (0..300).any(|_| !server.sql("calls", holding, &[]).is_empty() || {
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(held, "the table was never locked");
    let mut backup = stackvault(&server.config).arg("backup").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut killed = false;
    for _ in 0..600 {
        if backup.try_wait().unwrap().is_some() {
            break;
        }
        let session = server.sql("calls", waiting, &[]);
        if let Some(id) = session.lines().next().filter(|l| !l.is_empty()) {
            server.sql("calls", &kill.replace("{}", id.trim()), &[]);
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = backup.wait_with_output().unwrap();
    // The holding session ends in the server; its client in the container then ends too.
    for id in server.sql("calls", holding, &[]).lines().filter(|l| !l.trim().is_empty()) {
        server.sql("calls", &kill.replace("{}", id.trim()), &[]);
    }
    let _ = holder.wait();
    assert!(killed, "the dump never waited on the held table: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && stderr.contains("dump of database calls in database server cc"), "killed connection: {stderr}");
    assert_eq!(server.snapshots().len(), 1, "a snapshot was written by the failed run");

    // The wrong password.
    let password_file = server.work.join("db-password");
    std::fs::write(&password_file, "not-the-password").unwrap();
    let stderr = server.failing_backup("wrong password");
    assert!(stderr.contains("database server cc") && (stderr.contains("denied") || stderr.contains("password authentication failed")), "wrong password: {stderr}");
    let checked = run(stackvault(&server.config).arg("check"));
    let said = text(&checked.stdout);
    assert!(!checked.status.success() && said.contains("ok    target") && said.contains("FAIL  sources") && said.contains("database server cc") && said.contains("check FAILED"), "{said}");
    assert!(!said.contains(&server.password), "{said}");
    std::fs::write(&password_file, &server.password).unwrap();

    // The server is down.
    docker(&["stop", &server.container]);
    let stderr = server.failing_backup("server down");
    assert!(stderr.contains("database server cc") && stderr.contains(&address), "server down: {stderr}");

    ok(stackvault(&server.config).args(["verify", "--read-data"]));
    server.cleanup();
}

#[test]
fn mariadb_over_the_network_round_trips_and_every_failure_fails_the_run() {
    round_trip_then_failures("mariadb");
}

#[test]
fn postgres_over_the_network_round_trips_and_every_failure_fails_the_run() {
    round_trip_then_failures("postgres");
}

/// The Kubernetes story as the chart runs it: the stackvault-k8s image (its own client tools, uid
/// 65532, a read-only root file system) on the server's network, configured by a file, dumps the
/// server into a repository it owns and loads the dump back.
#[test]
fn the_k8s_image_dumps_and_restores_over_the_network_as_a_non_root_user() {
    build_images();
    let network = Network::create();
    let server = Server::on_network("mariadb", &network.0);
    server.run_fixture("schema.sql");
    server.run_fixture("load.sql");
    let watermark = server.run_fixture("watermark.sql");
    let before = server.checksums(&watermark);

    let work = scratch("k8s-image");
    std::fs::write(work.join("db-password"), &server.password).unwrap();
    let config = format!(
        "stack: cc\nrepository:\n  filesystem:\n    path: /work/repo\nstate_dir: /work/state\ncache_dir: /work/cache\ndatabases:\n  - name: cc\n    engine: mariadb\n    host: {}\n    user: backup\n    password_file: /work/db-password\n    databases: [calls]\n",
        server.address.as_deref().unwrap()
    );
    std::fs::write(work.join("stackvault.yaml"), config).unwrap();
    ok(Command::new("chown").args(["-R", "65532:65532"]).arg(&work));
    ok(Command::new("chmod").args(["0400"]).arg(work.join("db-password")));
    let mount = format!("{}:/work", work.display());
    let stackvault_k8s = |args: &[&str]| {
        let mut all = vec!["run", "--rm", "--network", &network.0, "--read-only", "--tmpfs", "/tmp", "-v", &mount, "stackvault-k8s:latest", "-c", "/work/stackvault.yaml"];
        all.extend_from_slice(args);
        docker(&all)
    };
    stackvault_k8s(&["init"]);
    let backed_up = stackvault_k8s(&["backup"]);
    assert!(backed_up.contains("Dump cc/calls") && backed_up.contains("over the network from") && backed_up.contains("mariadb-dump"), "{backed_up}");
    let owners = text(&run(Command::new("find").arg(work.join("repo")).args(["!", "-uid", "65532"])).stdout);
    assert!(owners.trim().is_empty(), "the repository holds files not owned by uid 65532: {owners}");

    server.drop_calls();
    let restored = stackvault_k8s(&["restore", "latest", "--only", "db:calls"]);
    assert!(restored.contains("database calls in database server cc"), "{restored}");
    assert_eq!(server.checksums(&watermark), before, "rows differ after the restore by the k8s image");
    let _ = std::fs::remove_dir_all(&work);
    server.cleanup();
}
