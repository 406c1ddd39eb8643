//! A real database server for tests (MariaDB 10.11 or PostgreSQL 15 in the image docker/test-db
//! builds), loaded from the fixtures in tests/db: in a compose-labelled stack that stackvault dumps by
//! exec, or on a network the test made, which stackvault reaches by address (`databases:`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::*;

pub const DB_IMAGE: &str = "stackvault-test/db:1";

/// One database server, with its repository and configuration.
pub struct Server {
    pub engine: &'static str,
    pub container: String,
    pub volume: String,
    /// Unique, so that finding it anywhere means it leaked; also the `backup` login's, over the network.
    pub password: String,
    pub work: PathBuf,
    pub config: PathBuf,
    /// Where stackvault reaches it by address (`databases:`); `None`: by exec, selected by its labels.
    pub address: Option<String>,
}

impl Server {
    /// A server in a compose-labelled stack (`stackvault.dump=auto` and `labels`), dumped by exec.
    pub fn start(engine: &'static str, labels: &[&str]) -> Server {
        let server = Server::launch(engine, labels, None);
        let config = format!("{}state_dir: {}\ncache_dir: {}\n", stack_yaml(&server.project(), &server.work.join("repo")), server.work.join("state").display(), server.work.join("cache").display());
        server.initialised(config)
    }

    /// A server listening on `network` (which the test made), and a configuration whose only source
    /// is its `databases:` entry `cc`, logging in as `backup` with the password in a file.
    pub fn on_network(engine: &'static str, network: &str) -> Server {
        let mut server = Server::launch(engine, &[], Some(network));
        let ip = docker(&["inspect", "-f", &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"), &server.container]);
        // The fixture's root logins are local only; a backup login reaches it from elsewhere.
        match engine {
            "mariadb" => server.sql("mysql", &format!("CREATE USER 'backup'@'%' IDENTIFIED BY '{}'; GRANT ALL ON *.* TO 'backup'@'%';", server.password), &[]),
            _ => {
                docker(&["exec", &server.container, "sh", "-c", "echo 'host all all 0.0.0.0/0 scram-sha-256' >> /var/lib/postgresql/data/pg_hba.conf"]);
                server.sql("postgres", &format!("CREATE ROLE backup LOGIN SUPERUSER PASSWORD '{}'; SELECT pg_reload_conf();", server.password), &[])
            }
        };
        let password_file = server.work.join("db-password");
        std::fs::write(&password_file, &server.password).unwrap();
        let config = format!(
            "stack: {}\nrepository:\n  filesystem:\n    path: {}\nstate_dir: {}\ncache_dir: {}\ndatabases:\n  - name: cc\n    engine: {engine}\n    host: {ip}\n    user: backup\n    password_file: {}\n    databases: [calls]\n",
            server.project(),
            server.work.join("repo").display(),
            server.work.join("state").display(),
            server.work.join("cache").display(),
            password_file.display()
        );
        server.address = Some(ip);
        server.initialised(config)
    }

    fn launch(engine: &'static str, labels: &[&str], network: Option<&str>) -> Server {
        let project = unique(&format!("db{engine}"));
        let (container, volume, work) = (format!("{project}-db-1"), format!("{project}_data"), scratch(engine));
        let password = format!("Pw-{engine}-{}-x9Q", std::process::id());
        let (data_dir, mut env) = match engine {
            "mariadb" => ("/var/lib/mysql", vec![format!("MARIADB_ROOT_PASSWORD={password}"), "MARIADB_DATABASE=calls".into()]),
            _ => ("/var/lib/postgresql/data", vec![format!("POSTGRES_PASSWORD={password}"), "POSTGRES_DB=calls".into()]),
        };
        if network.is_some() {
            // The entry point's servers listen on their sockets only; these options come after its own.
            env.push(match engine {
                "mariadb" => "MARIADB_ARGS=--skip-networking=0 --bind-address=0.0.0.0 --port=3306".into(),
                _ => "POSTGRES_ARGS=-c listen_addresses=0.0.0.0".into(),
            });
        }
        compose_volume(&project, &volume);
        let mut args: Vec<String> = ["run", "-d", "--network", network.unwrap_or("none"), "--name", &container].iter().map(|s| s.to_string()).collect();
        let labels: Vec<String> = match network {
            Some(_) => Vec::new(),
            None => [format!("com.docker.compose.project={project}"), "com.docker.compose.service=db".into(), "stackvault.dump=auto".into()].into_iter().chain(labels.iter().map(|l| l.to_string())).collect(),
        };
        for label in labels {
            args.extend(["--label".to_string(), label]);
        }
        for e in &env {
            args.extend(["-e".to_string(), e.clone()]);
        }
        args.extend(["-v".to_string(), format!("{volume}:{data_dir}"), DB_IMAGE.into(), engine.into()]);
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let server = Server { engine, container, volume, password, work, config: PathBuf::new(), address: None };
        server.wait_ready();
        server
    }

    /// The compose project its container's name starts with.
    pub fn project(&self) -> String {
        self.container.trim_end_matches("-db-1").to_string()
    }

    fn initialised(mut self, config: String) -> Server {
        self.config = write_config(&self.work, &config);
        ok(stackvault(&self.config).arg("init"));
        self
    }

    /// The engine's client in the container, reading SQL from `input`.
    pub fn client(&self, database: &str, vars: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(["exec", "-i"]);
        match self.engine {
            "mariadb" => {
                cmd.args(["-e", &format!("MYSQL_PWD={}", self.password), &self.container, "mariadb", "-uroot", "-N", "-B", database]);
            }
            _ => {
                cmd.args(["-e", &format!("PGPASSWORD={}", self.password), &self.container, "psql", "-X", "-q", "-A", "-t", "-U", "postgres"]);
                cmd.args(["-h", "/var/run/postgresql", "-d", database, "-v", "ON_ERROR_STOP=1"]);
                for (name, value) in vars {
                    cmd.args(["-v", &format!("{name}={value}")]);
                }
            }
        }
        cmd
    }

    pub fn try_sql(&self, database: &str, input: &str, vars: &[(&str, &str)]) -> Output {
        run_with_input(&mut self.client(database, vars), input)
    }

    pub fn sql(&self, database: &str, input: &str, vars: &[(&str, &str)]) -> String {
        let out = self.try_sql(database, input, vars);
        assert!(out.status.success(), "{} SQL failed: {}\n{input:.300}", self.engine, text(&out.stderr));
        text(&out.stdout).trim().to_string()
    }

    /// A file of tests/db for this engine.
    pub fn fixture(&self, file: &str) -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/db").join(self.engine).join(file)).unwrap()
    }

    pub fn run_fixture(&self, file: &str) -> String {
        self.sql("calls", &self.fixture(file), &[])
    }

    pub fn wait_ready(&self) {
        let admin_db = if self.engine == "mariadb" { "mysql" } else { "postgres" };
        for _ in 0..240 {
            if self.try_sql(admin_db, "SELECT 1;", &[]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("{} did not come up: {}", self.container, docker(&["logs", &self.container]));
    }

    pub fn checksums(&self, watermark: &str) -> String {
        match self.engine {
            "mariadb" => self.sql("calls", &format!("SET @w := {watermark};\n{}", self.fixture("checksums.sql")), &[]),
            _ => self.sql("calls", &self.fixture("checksums.sql"), &[("w", watermark)]),
        }
    }

    /// Rows per table as counts.sql reports them.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.run_fixture("counts.sql").lines().map(|l| l.split_once('\t').unwrap()).map(|(t, n)| (t.to_string(), n.trim().parse().unwrap())).collect()
    }

    pub fn start_writer(&self) {
        let variable = if self.engine == "mariadb" { "MYSQL_PWD" } else { "PGPASSWORD" };
        let script = self.fixture("writer.sh");
        docker(&["exec", "-d", "-e", &format!("{variable}={}", self.password), &self.container, "sh", "-c", &script, "writer", "/tmp/writer.stop"]);
    }

    pub fn stop_writer(&self) {
        docker(&["exec", &self.container, "touch", "/tmp/writer.stop"]);
        for _ in 0..600 {
            if let Ok(done) = Command::new("docker").args(["exec", &self.container, "cat", "/tmp/writer.stop.done"]).output() {
                if done.status.success() {
                    assert_eq!(text(&done.stdout).trim(), "0", "the writer's client failed");
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the writer did not stop");
    }

    pub fn drop_calls(&self) {
        match self.engine {
            "mariadb" => self.sql("mysql", "DROP DATABASE calls;", &[]),
            _ => self.sql("postgres", "DROP DATABASE calls WITH (FORCE);", &[]),
        };
    }

    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        let listed: serde_json::Value = serde_json::from_str(&ok(stackvault(&self.config).args(["snapshots", "--json"]))).unwrap();
        listed.as_array().unwrap().clone()
    }

    /// Runs a backup that must fail; returns its stderr after checking the rules every failure keeps.
    pub fn failing_backup(&self, why: &str) -> String {
        let before = self.snapshots().len();
        let out = run(stackvault(&self.config).arg("backup"));
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{why}: the backup succeeded:\n{stdout}");
        assert_eq!(self.snapshots().len(), before, "{why}: a snapshot was written");
        assert!(!stdout.contains(&self.password) && !stderr.contains(&self.password), "{why}: the password was printed:\n{stdout}\n{stderr}");
        stderr
    }

    pub fn cleanup(self) {
        drop(self);
    }
}

/// A test that fails (panics) leaves no server, volume or scratch directory behind either.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", "-v", &self.container]).output();
        let _ = Command::new("docker").args(["volume", "rm", &self.volume]).output();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
