//! Leaving out what need not survive, as a user sets it up: patterns in the configuration, a
//! container's `stackvault.exclude-patterns` label written as that container sees its files, and a
//! CACHEDIR.TAG-tagged directory. The independent checker compares the restored volume with the
//! original's listing minus exactly the excluded entries.

mod common;

use std::path::Path;

use common::*;

fn write(root: &Path, rel: &str, bytes: usize) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, vec![b'x'; bytes]).unwrap();
}

fn last_snapshot(config: &Path) -> serde_json::Value {
    let list: serde_json::Value = serde_json::from_str(&ok(stackvault(config).args(["snapshots", "--json"]))).unwrap();
    list.as_array().unwrap().last().unwrap()["snapshot"].clone()
}

/// The counts a snapshot recorded for one rule: (entries, bytes).
fn excluded_by(source: &serde_json::Value, rule: &str) -> (u64, u64) {
    let found = source["excluded"].as_array().unwrap().iter().find(|e| e["rule"] == rule).unwrap_or_else(|| panic!("no counts for {rule}: {source}"));
    (found["entries"].as_u64().unwrap(), found["bytes"].as_u64().unwrap())
}

#[test]
fn patterns_labels_and_cache_tags_leave_out_exactly_what_they_name() {
    let project = unique("excl");
    let volume = format!("{project}_config");
    let work = scratch("excl");
    compose_volume(&project, &volume);
    let root = volume_dir(&volume);
    write(&root, "Library/Application Support/Plex Media Server/Cache/a.bin", 1000);
    write(&root, "Library/Application Support/Plex Media Server/Cache/sub/b.bin", 2000);
    write(&root, "Library/Application Support/Plex Media Server/Preferences.xml", 300);
    write(&root, "thumbs/x.jpg", 4000);
    write(&root, "thumbs/y/z.jpg", 5000);
    std::fs::write(root.join("thumbs/CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55\n# thumbnails\n").unwrap();
    write(&root, "a.tmp", 10);
    write(&root, "dir one/b.tmp", 20);
    write(&root, "dir one/deep/ü c.tmp", 30);
    write(&root, "dir one/keep.tmp", 40);
    write(&root, "dir one/notes ü 日本.txt", 50);
    let label = "stackvault.exclude-patterns=/config/Library/Application Support/Plex Media Server/Cache/";
    let container = docker(&[
        "create", "--network", "none", "--label", &format!("com.docker.compose.project={project}"), "--label", label, "-v", &format!("{volume}:/config"), TEST_IMAGE, "sh",
    ]);
    let repo = work.join("repo");
    let base = format!("{}cache_dir: {}\n", stack_yaml(&project, &repo), work.join("cache").display());
    let config = write_config(&work, &format!("{base}exclude: [\"*.tmp\", \"!keep.tmp\"]\n"));
    ok(stackvault(&config).arg("init"));
    manifest(&root, &work.join("original.json"));

    let out = ok(stackvault(&config).arg("backup"));
    assert!(out.contains("excluded by *.tmp (configuration): 3 entries, 60 B"), "{out}");
    let snapshot = last_snapshot(&config);
    let source = &snapshot["sources"][0];
    assert_eq!(excluded_by(source, "/config/Library/Application Support/Plex Media Server/Cache/"), (4, 3000));
    assert_eq!(excluded_by(source, "CACHEDIR.TAG"), (3, 9000));
    assert_eq!(excluded_by(source, "*.tmp"), (3, 60));
    let rules = source["exclude_rules"].to_string();
    assert!(rules.contains("configuration: !keep.tmp") && rules.contains(&format!("container {}", container_name(&container))), "{rules}");

    // Expected: the original listing without the excluded entries (the tag and its directory stay).
    let mut expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(work.join("original.json")).unwrap()).unwrap();
    let gone = |p: &str| {
        p.starts_with("Library/Application Support/Plex Media Server/Cache")
            || (p.starts_with("thumbs/") && p != "thumbs/CACHEDIR.TAG")
            || (p.ends_with(".tmp") && !p.ends_with("keep.tmp"))
    };
    expected["entries"].as_object_mut().unwrap().retain(|p, _| !gone(p));
    std::fs::write(work.join("expected.json"), serde_json::to_string(&expected).unwrap()).unwrap();
    // The volume is lost and restored in place.
    docker(&["rm", "-f", &container]);
    docker(&["volume", "rm", &volume]);
    ok(stackvault(&config).args(["restore", "latest"]));
    manifest(&volume_dir(&volume), &work.join("restored.json"));
    assert_same(&work.join("expected.json"), &work.join("restored.json"));
    docker(&[
        "create", "--network", "none", "--label", &format!("com.docker.compose.project={project}"), "--label", label, "-v", &format!("{volume}:/config"), TEST_IMAGE, "sh",
    ]);

    // A quiet night with the same rules reads no content (the restore gave every file a new inode:
    // the first backup after it reads them once more).
    ok(stackvault(&config).arg("backup"));
    ok(stackvault(&config).arg("backup"));
    let quiet = last_snapshot(&config);
    assert_eq!(quiet["summary"]["new_bytes"], 0);
    assert_eq!(quiet["summary"]["unchanged_files"], 4, "{}", quiet["summary"]);

    // Other rules, other snapshot: without the configuration's patterns the .tmp files are stored
    // (the restore could not bring back what was left out: they are written anew).
    let root = volume_dir(&volume);
    write(&root, "a.tmp", 10);
    write(&root, "dir one/deep/ü c.tmp", 30);
    let config = write_config(&work, &base);
    ok(stackvault(&config).arg("backup"));
    ok(stackvault(&config).args(["restore", "latest", "--to"]).arg(work.join("out2")));
    let restored = work.join("out2/volume").join(&volume);
    assert_eq!(std::fs::read(restored.join("dir one/deep/ü c.tmp")).unwrap().len(), 30);
    assert!(!restored.join("thumbs/x.jpg").exists());
    ok(stackvault(&config).args(["verify", "--read-data"]));

    remove_project_containers(&project);
    docker(&["volume", "rm", &volume]);
    let _ = std::fs::remove_dir_all(&work);
}

fn container_name(id: &str) -> String {
    docker(&["inspect", "-f", "{{.Name}}", id]).trim_start_matches('/').to_string()
}

/// `backup --dry-run` reads metadata only and writes nothing, and what it announces is what the next
/// backup does.
#[test]
fn a_dry_run_writes_nothing_and_its_figures_match_the_backup_that_follows() {
    let scene = Scene::new("dry", 1, 10000, "exclude: [\"small/d00*/\", \"*5.txt\"]\n");
    let cache = scene.work.join("cache");
    let config = write_config(&scene.work, &format!("{}cache_dir: {}\n", std::fs::read_to_string(&scene.config).unwrap(), cache.display()));
    let listing = |dir: &Path| if dir.exists() { files(dir).len() } else { 0 };
    for round in 0..2 {
        let (repo_files, cache_files) = (listing(&scene.repo), listing(&cache));
        let dry: serde_json::Value = serde_json::from_str(&ok(stackvault(&config).args(["backup", "--dry-run", "--json"]))).unwrap();
        assert_eq!((listing(&scene.repo), listing(&cache)), (repo_files, cache_files), "a dry run wrote something");
        ok(stackvault(&config).arg("backup"));
        let snapshot = last_snapshot(&config);
        let (scan, source) = (&dry["sources"][0], &snapshot["sources"][0]);
        assert_eq!(scan["entries"], source["entries"], "round {round}");
        let bytes = scan["bytes_to_read"].as_u64().unwrap() + scan["unchanged_bytes"].as_u64().unwrap();
        assert_eq!(bytes, source["bytes"].as_u64().unwrap(), "round {round}");
        assert_eq!(scan["unchanged_files"], snapshot["summary"]["unchanged_files"], "round {round}");
        assert_eq!(scan["excluded"], source["excluded"], "round {round}");
        assert!(scan["excluded"].as_array().unwrap().len() == 2, "{}", scan["excluded"]);
        if round == 1 {
            assert_eq!(scan["files_to_read"], 0, "a quiet night reads nothing");
        }
    }
    scene.cleanup();
}
