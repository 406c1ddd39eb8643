//! The ways a volume's bytes reach the sidecar, against a real Docker engine: a socket in a shared
//! volume (the default), dockerd's attach stream (the fallback for remote engines), in-process through
//! the sidecar's own mounts when it runs in a container, and bind-mounted single files; and runs of
//! different stacks at the same time.

mod common;

use std::path::Path;

use common::*;

fn backup_output(config: &Path, env: &[(&str, &str)]) -> String {
    let mut cmd = stackvault(config);
    cmd.arg("backup").envs(env.iter().copied());
    ok(&mut cmd)
}

/// The socket and the attach stream carry the same tree: both snapshots restore exactly.
#[test]
fn the_attach_stream_fallback_and_the_socket_give_the_same_snapshot() {
    let scene = Scene::new("route", 20, 500, "");
    let work = &scene.work;
    manifest(&scene.mountpoint(), &work.join("state.json"));
    let by_socket = backup_output(&scene.config, &[]);
    assert!(by_socket.contains("through a helper, socket in"), "{by_socket}");
    let by_attach = backup_output(&scene.config, &[("STACKVAULT_DOCKER_STREAM", "attach"), ("STACKVAULT_CACHE_DIR", &work.join("other-cache").display().to_string())]);
    assert!(by_attach.contains("through a helper, attach stream"), "{by_attach}");
    let ids: serde_json::Value = serde_json::from_str(&ok(stackvault(&scene.config).args(["snapshots", "--json"]))).unwrap();
    let volume_root = |s: &serde_json::Value| s["snapshot"]["sources"].as_array().unwrap().iter().find(|s| s["kind"] == "volume").unwrap()["root"].clone();
    let roots: Vec<serde_json::Value> = ids.as_array().unwrap().iter().map(volume_root).collect();
    assert_eq!(roots[0], roots[1], "both routes must give the same tree");
    ok(stackvault(&scene.config).args(["restore", "latest", "--to"]).arg(work.join("out")).env("STACKVAULT_DOCKER_STREAM", "attach"));
    manifest(&work.join("out/volume").join(&scene.volume), &work.join("out.json"));
    assert_same(&work.join("state.json"), &work.join("out.json"));
    let wrong = run(stackvault(&scene.config).arg("backup").env("STACKVAULT_DOCKER_STREAM", "pipe"));
    assert!(text(&wrong.stderr).contains("STACKVAULT_DOCKER_STREAM") && text(&wrong.stderr).contains("auto, socket, attach"), "{}", text(&wrong.stderr));
    scene.cleanup();
}

/// A backup of one stack and a restore of another on the same engine at the same time: neither run
/// takes the other's helpers for a dead run's.
#[test]
fn a_backup_and_a_restore_of_different_stacks_run_at_the_same_time() {
    let a = Scene::new("conc-a", 150, 2000, "");
    let b = Scene::new("conc-b", 150, 2000, "");
    manifest(&b.mountpoint(), &b.work.join("state.json"));
    ok(stackvault(&b.config).arg("backup"));
    b.destroy();
    for _ in 0..3 {
        let backup = stackvault(&a.config).arg("backup").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let restore = stackvault(&b.config).args(["restore", "latest", "--force"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        for (what, child) in [("backup", backup), ("restore", restore)] {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "concurrent {what} failed: {}{}", text(&out.stdout), text(&out.stderr));
        }
    }
    manifest(&b.mountpoint(), &b.work.join("restored.json"));
    assert_same(&b.work.join("state.json"), &b.work.join("restored.json"));
    assert!(helpers_remaining(&a.volume).is_empty() && helpers_remaining(&b.volume).is_empty());
    docker(&["rm", "-f", &b.container]);
    a.cleanup();
    b.cleanup();
}

/// A compose stack's configuration file, bind-mounted on its own, is backed up and restored like any
/// other mount: in place after it was lost, and as a file below `--to`.
#[test]
fn a_bind_mounted_single_file_is_backed_up_and_restored() {
    let scene = Scene::new("file", 1, 10, "");
    let conf_dir = scene.work.join("etc app");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conf = conf_dir.join("nginx.conf");
    std::fs::write(&conf, "worker_processes 2;\n").unwrap();
    ok(std::process::Command::new("chmod").arg("0640").arg(&conf));
    ok(std::process::Command::new("touch").args(["-d", "2001-02-03 04:05:06.123456789"]).arg(&conf));
    let mount = format!("{}:/etc/nginx/nginx.conf:ro", conf.display());
    let app = docker(&["create", "--network", "none", "--label", &format!("com.docker.compose.project={}", scene.project), "-v", &mount, TEST_IMAGE, "sh"]);
    let out = ok(stackvault(&scene.config).arg("backup"));
    assert!(out.contains(&format!("Bind {}", conf.display())), "{out}");

    let before = std::fs::metadata(&conf).unwrap();
    std::fs::remove_dir_all(&conf_dir).unwrap();
    let restored = ok(stackvault(&scene.config).args(["restore", "latest", "--force"]));
    assert!(restored.contains(&conf.display().to_string()), "{restored}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "worker_processes 2;\n");
    let after = std::fs::metadata(&conf).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((after.mode(), after.mtime(), after.mtime_nsec()), (before.mode(), before.mtime(), before.mtime_nsec()));
    let refused = run(stackvault(&scene.config).args(["restore", "latest"]));
    assert!(text(&refused.stderr).contains("exists"), "an existing file is not replaced without --force: {}", text(&refused.stderr));

    ok(stackvault(&scene.config).args(["restore", "latest", "--to"]).arg(scene.work.join("out")));
    let flat = conf.display().to_string().trim_matches('/').replace('/', "_");
    assert_eq!(std::fs::read_to_string(scene.work.join("out/bind").join(flat)).unwrap(), "worker_processes 2;\n");
    ok(stackvault(&scene.config).args(["verify", "--read-data"]));
    docker(&["rm", "-f", &app]);
    scene.cleanup();
}

/// stackvault as a sidecar container (offen's way of embedding): a volume it mounts itself is read
/// in-process; one it does not mount goes through a helper whose socket lies in the sidecar's cache
/// volume. Its configuration comes from the environment alone.
#[test]
fn a_sidecar_container_reads_its_own_mounts_in_process_and_the_rest_through_a_socket() {
    let scene = Scene::new("side", 5, 300, "");
    let other = format!("{}_other", scene.project);
    docker(&["volume", "create", &other]);
    make_fixture(&volume_dir(&other), 2, 50);
    let other_app = docker(&["create", "--network", "none", "--label", &format!("com.docker.compose.project={}", scene.project), "-v", &format!("{other}:/data"), TEST_IMAGE, "sh"]);
    let cache = format!("{}_cache", scene.project);
    docker(&["volume", "create", &cache]);
    manifest(&scene.mountpoint(), &scene.work.join("state.json"));

    // The agent image is this very binary: a backup on the host imports it.
    ok(stackvault(&scene.config).arg("backup"));
    let mut hasher = blake3::Hasher::new();
    hasher.update(&std::fs::read(env!("CARGO_BIN_EXE_stackvault")).unwrap());
    let image = format!("stackvault-agent:{}", &hasher.finalize().to_hex()[..16]);
    let out = docker(&[
        "run", "--rm", "--network", "none", "--label", "stackvault.skip=true",
        "-v", "/var/run/docker.sock:/var/run/docker.sock",
        "-v", &format!("{}:/backup/data:ro", scene.volume),
        "-v", &format!("{cache}:/var/cache/stackvault"),
        "-v", &format!("{}:/repo", scene.repo.display()),
        "-e", &format!("STACKVAULT_STACK={}", scene.project),
        "-e", &format!("STACKVAULT_DOCKER_SELECT_PROJECT={}", scene.project),
        "-e", "STACKVAULT_REPOSITORY_FILESYSTEM_PATH=/repo",
        &image, "/stackvault", "backup",
    ]);
    assert!(out.contains("read in-process at /backup/data"), "{out}");
    assert!(out.contains("read through a helper, socket in /var/cache/stackvault/.stackvault-exchange"), "{out}");

    ok(stackvault(&scene.config).args(["restore", "latest", "--to"]).arg(scene.work.join("out")));
    manifest(&scene.work.join("out/volume").join(&scene.volume), &scene.work.join("out.json"));
    assert_same(&scene.work.join("state.json"), &scene.work.join("out.json"));
    docker(&["rm", "-f", &other_app]);
    docker(&["volume", "rm", &other, &cache]);
    scene.cleanup();
}

/// An empty volume: its agent has nothing to send and may be gone before the sidecar accepts its
/// connection; the backup still succeeds and restores an empty volume.
#[test]
fn an_empty_volume_is_backed_up_and_restored() {
    let project = unique("empty");
    let volume = format!("{project}_data");
    let work = scratch("empty");
    compose_volume(&project, &volume);
    let container = stack_container(&project, &volume);
    let config = write_config(&work, &format!("{}cache_dir: {}\n", stack_yaml(&project, &work.join("repo")), work.join("cache").display()));
    ok(stackvault(&config).arg("init"));
    for _ in 0..3 {
        let out = ok(stackvault(&config).arg("backup"));
        assert!(out.contains(&format!("Volume {volume}: 0 entries")), "{out}");
    }
    docker(&["rm", "-f", &container]);
    docker(&["volume", "rm", &volume]);
    ok(stackvault(&config).args(["restore", "latest"]));
    assert_eq!(std::fs::read_dir(volume_dir(&volume)).unwrap().count(), 0);
    // A restore does not wait for its helper's teardown (README): it goes a moment later.
    assert!(helpers_remaining(&volume).is_empty());
    remove_project_containers(&project);
    docker(&["volume", "rm", &volume]);
    let _ = std::fs::remove_dir_all(&work);
}
