//! The images docker/build makes from this build's binary, offline: stackvault (FROM scratch, the
//! sidecar) and stackvault-k8s (Debian, database clients, non-root). Each is checked from the
//! outside, as a user's engine sees it: what runs, as whom, how big, what its config declares; and
//! the scratch image as a real sidecar: the daemon as PID 1 takes a scheduled backup through a
//! helper whose agent image it builds of itself, turns healthy, and stops cleanly on SIGTERM.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const IMAGE: &str = "stackvault:latest";
const K8S_IMAGE: &str = "stackvault-k8s:latest";
/// The scratch image's budget: the binary fully stripped, and the CA bundle.
const MAX_BYTES: u64 = 25_000_000;

fn inspect(image: &str, format: &str) -> String {
    docker(&["image", "inspect", image, "-f", format])
}

/// Removes what a test created, also when it fails.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
    dirs: Vec<std::path::PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", "-v", c]).output();
        }
        for v in &self.volumes {
            let _ = Command::new("docker").args(["volume", "rm", "-f", v]).output();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn both_images_build_offline_and_a_second_build_is_skipped() {
    let (first, took) = build_images();
    println!("docker/build: {took:.1?}\n{first}");
    // Both tags of each image are the same image.
    for image in ["stackvault", "stackvault-k8s"] {
        assert_eq!(inspect(&format!("{image}:latest"), "{{.Id}}"), inspect(&format!("{image}:{VERSION}"), "{{.Id}}"), "{image}");
    }
    let started = Instant::now();
    let again = ok(Command::new("bash").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/build")).arg(env!("CARGO_BIN_EXE_stackvault")));
    let took = started.elapsed();
    println!("docker/build again: {took:.1?}\n{again}");
    assert!(again.contains(&format!("stackvault:{VERSION} is up to date")) && again.contains(&format!("stackvault-k8s:{VERSION} is up to date")), "{again}");
    assert!(took < Duration::from_secs(10), "an up-to-date build took {took:?}");
}

#[test]
fn the_scratch_image_prints_its_version_is_small_and_holds_only_binary_certificates_and_tmp() {
    build_images();
    let version = docker(&["run", "--rm", "--network", "none", IMAGE, "--version"]);
    assert_eq!(version, format!("stackvault {VERSION}"));

    let size: u64 = inspect(IMAGE, "{{.Size}}").parse().unwrap();
    println!("{IMAGE}: {size} bytes ({:.1} MB)", size as f64 / 1e6);
    assert!(size < MAX_BYTES, "{IMAGE} is {size} bytes, over {MAX_BYTES}");

    // The file system as an engine unpacks it (less what Docker adds to every container).
    let mut cleanup = Cleanup::default();
    let container = docker(&["create", IMAGE]);
    cleanup.containers.push(container.clone());
    let listing = ok(Command::new("sh").arg("-c").arg(format!("docker export {container} | tar -tv")));
    let ours: Vec<&str> = listing
        .lines()
        .filter(|l| !["dev/", "proc/", "sys/", "etc/hostname", "etc/hosts", "etc/mtab", "etc/resolv.conf", ".dockerenv"].iter().any(|d| l.contains(&format!(" {d}"))))
        .filter(|l| !l.ends_with(" etc/") && !l.ends_with(" etc/ssl/") && !l.ends_with(" etc/ssl/certs/"))
        .collect();
    assert_eq!(ours.len(), 3, "{ours:#?}");
    assert!(ours.iter().any(|l| l.starts_with("drwxrwxrwt") && l.ends_with(" tmp/")), "{ours:#?}");
    assert!(ours.iter().any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" stackvault")), "{ours:#?}");
    let work = scratch("img");
    cleanup.dirs.push(work.clone());
    docker(&["cp", &format!("{container}:/etc/ssl/certs/ca-certificates.crt"), work.to_str().unwrap()]);
    assert_eq!(std::fs::read(work.join("ca-certificates.crt")).unwrap(), std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap(), "the host's CA bundle");
    // Fully stripped: no symbol table left.
    docker(&["cp", &format!("{container}:/stackvault"), work.to_str().unwrap()]);
    let sections = ok(Command::new("readelf").arg("-S").arg(work.join("stackvault")));
    assert!(!sections.contains(".symtab") && !sections.contains(".debug_"), "{sections}");
}

#[test]
fn the_k8s_image_runs_as_65532_with_the_database_clients() {
    build_images();
    assert_eq!(docker(&["run", "--rm", "--network", "none", K8S_IMAGE, "--version"]), format!("stackvault {VERSION}"));
    let script = "id -u; id -g; for t in mariadb-dump mysqldump pg_dump pg_dumpall; do command -v $t; done; \
                  touch /var/cache/stackvault/w /var/lib/stackvault/w && echo writable; mariadb-dump --version; pg_dump --version";
    let out = docker(&["run", "--rm", "--network", "none", "--entrypoint", "sh", K8S_IMAGE, "-c", script]);
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..7], ["65532", "65532", "/usr/bin/mariadb-dump", "/usr/bin/mysqldump", "/usr/bin/pg_dump", "/usr/bin/pg_dumpall", "writable"], "{out}");
    assert!(out.contains("MariaDB") && out.contains("pg_dump (PostgreSQL) 15"), "{out}");
    assert_eq!(inspect(K8S_IMAGE, "{{.Config.User}}"), "65532:65532");
    let size: u64 = inspect(K8S_IMAGE, "{{.Size}}").parse().unwrap();
    println!("{K8S_IMAGE}: {size} bytes ({:.1} MB)", size as f64 / 1e6);
}

#[test]
fn both_images_declare_their_labels_healthcheck_entrypoint_and_command() {
    build_images();
    let revision = ok(Command::new("git").args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])).trim().to_string();
    for (image, title, binary) in [(IMAGE, "stackvault", "/stackvault"), (K8S_IMAGE, "stackvault-k8s", "/usr/local/bin/stackvault")] {
        let config: serde_json::Value = serde_json::from_str(&inspect(image, "{{json .Config}}")).unwrap();
        let labels = &config["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], title, "{config}");
        assert_eq!(labels["org.opencontainers.image.version"], VERSION, "{config}");
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0", "{config}");
        // The commit the binary was built at (marked -dirty when the tree had changes).
        assert!(labels["org.opencontainers.image.revision"].as_str().unwrap().starts_with(&revision), "{config}");
        for key in ["source", "description"] {
            assert!(!labels[format!("org.opencontainers.image.{key}")].as_str().unwrap_or_default().is_empty(), "{key}: {config}");
        }
        assert_eq!(config["Healthcheck"]["Test"], serde_json::json!(["CMD", binary, "healthcheck"]), "{config}");
        assert_eq!(config["Entrypoint"], serde_json::json!([binary]), "{config}");
        assert_eq!(config["Cmd"], serde_json::json!(["daemon"]), "{config}");
    }
}

/// The scratch image as the sidecar: the daemon is PID 1 (no init, no shell), configured by the
/// environment alone, backs up a stack's volume through a helper whose agent image it imports from
/// its own (stripped) executable, is healthy by the image's HEALTHCHECK, and exits 0 on `docker stop`.
#[test]
fn the_scratch_image_runs_the_daemon_as_pid_1_builds_its_agent_and_is_healthy() {
    build_images();
    let project = unique("imgd");
    let work = scratch("imgd");
    let (volume, cache) = (format!("{project}_data"), format!("{project}_cache"));
    let mut cleanup = Cleanup::default();
    cleanup.volumes.extend([volume.clone(), cache.clone()]);
    cleanup.dirs.push(work.clone());
    compose_volume(&project, &volume);
    std::fs::write(volume_dir(&volume).join("call.wav"), "a recording ".repeat(1000)).unwrap();
    cleanup.containers.push(stack_container(&project, &volume));
    let repo = work.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let sidecar = |detach: bool, args: &[&str]| -> String {
        let (repo_mount, cache_mount) = (format!("{}:/backup", repo.display()), format!("{cache}:/var/cache/stackvault"));
        let (stack, select) = (format!("STACKVAULT_STACK={project}"), format!("STACKVAULT_DOCKER_SELECT_PROJECT={project}"));
        let mut all = vec!["run", "--network", "none", "--label", "stackvault.skip=true", "--health-interval", "1s"];
        all.push(if detach { "-d" } else { "--rm" });
        all.extend(["-v", "/var/run/docker.sock:/var/run/docker.sock:ro", "-v", &repo_mount, "-v", &cache_mount]);
        all.extend(["-e", &stack, "-e", &select, "-e", "STACKVAULT_REPOSITORY_FILESYSTEM_PATH=/backup"]);
        all.extend(["-e", "STACKVAULT_LISTEN=127.0.0.1:9102", "-e", "STACKVAULT_SCHEDULE_CRON=*/2 * * * * *", IMAGE]);
        all.extend(args);
        docker(&all)
    };
    sidecar(false, &["init"]);
    let daemon = sidecar(true, &[]);
    cleanup.containers.push(daemon.clone());

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status: serde_json::Value = serde_json::from_str(&docker(&["exec", &daemon, "/stackvault", "status", "--json"])).unwrap();
        let health = docker(&["inspect", "-f", "{{.State.Health.Status}}", &daemon]);
        if !status["last_success"].is_null() && health == "healthy" {
            break status;
        }
        assert!(Instant::now() < deadline, "no successful run and healthy state in 60 s: {health} {status}\n{}", ok(Command::new("docker").args(["logs", &daemon])));
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(status["last_failure"].is_null(), "{status}");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Pid}} {{.Path}}", &daemon]).split(' ').nth(1), Some("/stackvault"));
    let logs = text(&run(Command::new("docker").args(["logs", &daemon])).stderr);
    assert!(logs.contains("\"event\":\"run.success\""), "{logs}");

    // The agent image holds the image's own binary, named after its hash.
    docker(&["cp", &format!("{daemon}:/stackvault"), work.to_str().unwrap()]);
    let hash = blake3::hash(&std::fs::read(work.join("stackvault")).unwrap()).to_hex()[..16].to_string();
    docker(&["image", "inspect", &format!("stackvault-agent:{hash}")]);

    let started = Instant::now();
    docker(&["stop", "-t", "20", &daemon]);
    let stopped = started.elapsed();
    assert_eq!(docker(&["inspect", "-f", "{{.State.ExitCode}}", &daemon]), "0");
    assert!(stopped < Duration::from_secs(10), "SIGTERM to PID 1 took {stopped:?} (the engine kills after 20 s)");
    assert!(helpers_remaining(&project).is_empty());
    // The snapshot in the repository restores the volume's file.
    let config = write_config(&work, &stack_yaml(&project, &repo));
    ok(stackvault(&config).args(["restore", "latest", "--to"]).arg(work.join("out")));
    assert_eq!(std::fs::read_to_string(work.join("out/volume").join(&volume).join("call.wav")).unwrap(), "a recording ".repeat(1000));
}
