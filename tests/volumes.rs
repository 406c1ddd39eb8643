//! The user's story against a real Docker engine: a compose stack's volume is backed up, lost,
//! restored, changed, backed up again and restored again; an independent checker (tests/treecheck.py)
//! compares every property. Needs root on the Docker host: the scene is written into the volume's
//! mountpoint directly, and read back from there.

mod common;

use common::*;

#[test]
fn a_volume_survives_backup_loss_and_restore_exactly_and_a_second_backup_stores_only_the_change() {
    let scene = Scene::new("vol", 200, 10000, "");
    let (project, volume, work, repo, config) = (&scene.project, &scene.volume, &scene.work, &scene.repo, &scene.config);
    let mountpoint = scene.mountpoint();
    manifest(&mountpoint, &work.join("state1.json"));
    let out = ok(stackvault(config).arg("backup"));
    assert!(out.contains(&format!("Volume {volume}")), "{out}");
    let first_size = du(repo);

    scene.destroy();
    ok(stackvault(config).args(["restore", "latest"]));
    let labels = docker(&["volume", "inspect", volume, "-f", "{{index .Labels \"com.docker.compose.project\"}}"]);
    assert_eq!(&labels, project, "the volume is recreated with its compose labels");
    manifest(&volume_dir(volume), &work.join("restored1.json"));
    assert_same(&work.join("state1.json"), &work.join("restored1.json"));

    // One small file changes and 1 MiB is appended to the big one.
    stack_container(project, volume);
    let mutated = python("fixture.py", &[&"mutate", &volume_dir(volume)]);
    assert!(mutated.status.success(), "mutate: {}", text(&mutated.stderr));
    manifest(&volume_dir(volume), &work.join("state2.json"));
    ok(stackvault(config).arg("backup"));
    let growth = du(repo) - first_size;
    assert!(growth * 100 < first_size, "the second backup grew the repository by {growth} bytes, over 1% of {first_size}");

    // Restore the second state over the first: refused without --force, exact with it.
    let refused = run(stackvault(config).args(["restore", "latest"]));
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("not empty"), "{}", text(&refused.stderr));
    remove_project_containers(project);
    docker(&["volume", "rm", volume]);
    ok(stackvault(config).args(["restore", "latest"]));
    manifest(&volume_dir(volume), &work.join("restored2.json"));
    assert_same(&work.join("state2.json"), &work.join("restored2.json"));

    // The first snapshot is still whole, restorable by id next to the second.
    let snapshots: serde_json::Value = serde_json::from_str(&ok(stackvault(config).args(["snapshots", "--json"]))).unwrap();
    let first_id = snapshots[0]["id"].as_str().unwrap().to_string();
    ok(stackvault(config).args(["restore", &first_id[..12], "--to"]).arg(work.join("first")));
    manifest(&work.join("first/volume").join(volume), &work.join("first.json"));
    assert_same(&work.join("state1.json"), &work.join("first.json"));
    ok(stackvault(config).args(["verify", "--read-data"]));

    assert!(helpers_remaining(volume).is_empty(), "helpers left behind: {:?}", helpers_left(volume));
    scene.cleanup();
}

#[test]
fn a_selection_that_matches_nothing_and_a_path_without_repository_fail_clearly() {
    let work = scratch("sel");
    let repo = work.join("not-a-repo");
    std::fs::create_dir_all(&repo).unwrap();
    let config = write_config(
        &work,
        &format!("stack: x\ndocker:\n  select:\n    project: {}\nrepository:\n  filesystem:\n    path: {}\n", unique("nothing"), repo.display()),
    );
    let out = run(stackvault(&config).arg("backup"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no stackvault repository"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_dir(&repo).unwrap().count(), 0, "nothing is written into a path that holds no repository");

    ok(stackvault(&config).arg("init"));
    let out = run(stackvault(&config).arg("backup"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no container matches"), "{}", text(&out.stderr));
    assert!(std::fs::read_dir(repo.join("snapshots")).map(|d| d.count()).unwrap_or(0) == 0);
    std::fs::remove_dir_all(&work).unwrap();
}

fn snapshot_count(repo: &std::path::Path) -> usize {
    std::fs::read_dir(repo.join("snapshots")).map(|d| d.count()).unwrap_or(0)
}

/// A run that is stopped midway reports failure, leaves no snapshot and no helper for good; the next
/// run completes and reuses what the stopped one stored.
#[test]
fn a_killed_backup_leaves_no_snapshot_and_no_helper_for_good() {
    let scene = Scene::new("kill", 600, 100, "");
    let (volume, repo, config) = (&scene.volume, &scene.repo, &scene.config);
    let wait_for_helper = || {
        for _ in 0..200 {
            if !helpers_left(volume).is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("no helper appeared");
    };

    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let child = stackvault(config).arg("backup").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        wait_for_helper();
        std::thread::sleep(std::time::Duration::from_millis(300));
        ok(std::process::Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]));
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "SIG{signal}: stdout: {} stderr: {}", text(&out.stdout), text(&out.stderr));
        assert!(text(&out.stderr).contains("no snapshot was written"), "{}", text(&out.stderr));
        assert_eq!(snapshot_count(repo), 0, "SIG{signal} left a snapshot");
        assert!(helpers_left(volume).is_empty(), "SIG{signal} left helpers: {:?}", helpers_left(volume));
    }

    // SIGKILL gives no chance to clean up. Five in quick succession: each run removes the helpers of
    // the dead ones at once (their owner process is gone), and the run after them leaves none at all.
    for _ in 0..5 {
        let mut child = stackvault(config).arg("backup").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        wait_for_owned_helper(child.id());
        child.kill().unwrap();
        assert!(!child.wait().unwrap().success());
    }
    assert_eq!(snapshot_count(repo), 0, "SIGKILL left a snapshot");
    ok(stackvault(config).arg("backup"));
    assert_eq!(snapshot_count(repo), 1);
    assert!(helpers_remaining(volume).is_empty(), "helpers left after the next run: {:?}", helpers_left(volume));
    ok(stackvault(config).args(["verify", "--read-data"]));
    scene.cleanup();
}

/// Waits until a helper labelled as started by process `pid` exists.
fn wait_for_owned_helper(pid: u32) {
    for _ in 0..400 {
        let owners = docker(&["ps", "-a", "--filter", "label=stackvault.owner", "--format", "{{.Label \"stackvault.owner\"}}"]);
        if owners.lines().any(|o| o.contains(&format!("/{pid}/"))) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("process {pid} started no helper");
}

fn last_summary(config: &std::path::Path) -> serde_json::Value {
    let list: serde_json::Value = serde_json::from_str(&ok(stackvault(config).args(["snapshots", "--json"]))).unwrap();
    list.as_array().unwrap().last().unwrap()["snapshot"]["summary"].clone()
}

/// A quiet night reads metadata only, yet a file whose content changed is read however its mtime
/// was set back, and a lost files cache costs a full read, nothing else.
#[test]
fn an_unchanged_volume_is_not_read_again_but_every_changed_file_is() {
    let scene = Scene::new("quiet", 8, 300, "");
    let (work, config, mountpoint) = (&scene.work, &scene.config, scene.mountpoint());
    // Its own files cache, to start without one and to lose it on purpose.
    std::fs::write(config, format!("{}cache_dir: {}\n", std::fs::read_to_string(config).unwrap(), work.join("cache").display())).unwrap();
    ok(stackvault(config).arg("backup"));
    assert_eq!(last_summary(config)["unchanged_files"], 0);
    ok(stackvault(config).arg("backup"));
    let quiet = last_summary(config);
    assert!(quiet["unchanged_files"].as_u64().unwrap() >= 300, "{quiet}");
    assert_eq!(quiet["new_bytes"], 0, "{quiet}");

    // Same size, same mtime, other bytes: only the ctime tells.
    let victim = mountpoint.join("big.bin");
    let before = std::fs::symlink_metadata(&victim).unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[12345] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let mtime = filetime_ns(&before);
    ok(std::process::Command::new("python3").args(["-c", &format!("import os; os.utime({:?}, ns=({mtime}, {mtime}))", victim.display().to_string())]));
    assert_eq!(std::fs::symlink_metadata(&victim).unwrap().len(), before.len());
    manifest(&mountpoint, &work.join("changed.json"));
    ok(stackvault(config).arg("backup"));
    assert!(last_summary(config)["new_bytes"].as_u64().unwrap() > 0, "the changed file was not read");
    ok(stackvault(config).args(["restore", "latest", "--to"]).arg(work.join("out")));
    manifest(&work.join("out/volume").join(&scene.volume), &work.join("restored.json"));
    assert_same(&work.join("changed.json"), &work.join("restored.json"));

    std::fs::remove_dir_all(work.join("cache")).unwrap();
    ok(stackvault(config).arg("backup"));
    let cold = last_summary(config);
    assert_eq!(cold["unchanged_files"], 0, "{cold}");
    assert_eq!(cold["new_bytes"], 0, "{cold}");
    scene.cleanup();
}

fn filetime_ns(md: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128
}
