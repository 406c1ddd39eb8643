//! A repository the format-1 release wrote (tests/fixtures/v1-repository) stays readable: it verifies
//! and restores exactly, backups into it keep writing version 1 until `stackvault migrate`, and after
//! the migration new objects are of the newest version (4) while the old ones still restore.

mod common;

use std::path::Path;

use common::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1-repository");
const RECIPIENT: &str = "age1wlgty0v7jnplml6qp7s05mpp8juja0jjyutgvxxvtpm5dg9q738scn5q06";
/// The fixture's snapshots and the manifests of the trees they hold.
const SNAPSHOTS: [(&str, &str); 2] = [("3f892063a056", "first.manifest"), ("826b3b6b68cc", "second.manifest")];

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn config_version(repo: &Path) -> u64 {
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(repo.join("config")).unwrap()).unwrap();
    config["version"].as_u64().unwrap()
}

/// Index objects by form: (JSON ones, zstd ones).
fn index_forms(repo: &Path) -> (usize, usize) {
    let objects = files(&repo.join("index"));
    let json = objects.iter().filter(|f| std::fs::read(f).unwrap().starts_with(b"{")).count();
    (json, objects.len() - json)
}

fn restores_exactly(config: &Path, work: &Path, snapshot: &str, expected: &Path) {
    let dest = work.join(format!("restore-{snapshot}"));
    let identity = Path::new(FIXTURE).join("identity.txt");
    ok(stackvault(config).args(["restore", snapshot, "--identity"]).arg(&identity).arg("--to").arg(&dest));
    let restored = work.join(format!("restored-{snapshot}.manifest"));
    manifest(&dest.join("path/tmp_v1fix_src"), &restored);
    assert_same(expected, &restored);
    std::fs::remove_dir_all(&dest).unwrap();
}

#[test]
fn a_version_1_repository_restores_verifies_and_migrates() {
    let work = scratch("upgrade");
    let repo = work.join("repo");
    copy_tree(&Path::new(FIXTURE).join("repo"), &repo);
    let data = work.join("data");
    std::fs::create_dir(&data).unwrap();
    make_fixture(&data, 1, 50);
    let body = format!(
        "stack: upgrade\npaths: [{}]\nencryption:\n  recipients: [\"{RECIPIENT}\"]\nrepository:\n  filesystem:\n    path: {}\ncache_dir: {}\n",
        data.display(),
        repo.display(),
        work.join("cache").display()
    );
    let config = write_config(&work, &body);
    let identity = Path::new(FIXTURE).join("identity.txt");
    let verify = || ok(stackvault(&config).args(["verify", "--read-data", "--identity"]).arg(&identity));

    assert!(verify().contains("2 snapshots checked"));
    for (snapshot, expected) in SNAPSHOTS {
        restores_exactly(&config, &work, snapshot, &Path::new(FIXTURE).join(expected));
    }

    // Not migrated yet: a backup writes what the release that made the repository reads.
    ok(stackvault(&config).arg("backup"));
    assert_eq!((config_version(&repo), index_forms(&repo)), (1, (3, 0)));

    let out = ok(stackvault(&config).arg("migrate"));
    assert!(out.contains("from format version 1 to 5"), "{out}");
    assert_eq!(config_version(&repo), 5);
    assert!(python("fixture.py", &[&"mutate", &data]).status.success());
    ok(stackvault(&config).arg("backup"));
    assert_eq!(index_forms(&repo), (3, 1));
    let manifests: Vec<u64> = files(&repo.join("snapshots"))
        .iter()
        .map(|f| serde_json::from_slice::<serde_json::Value>(&std::fs::read(f).unwrap()).unwrap()["version"].as_u64().unwrap())
        .collect();
    assert_eq!(manifests.iter().filter(|v| **v == 5).count(), 1, "{manifests:?}");

    assert!(verify().contains("4 snapshots checked"));
    for (snapshot, expected) in SNAPSHOTS {
        restores_exactly(&config, &work, snapshot, &Path::new(FIXTURE).join(expected));
    }
    assert!(ok(stackvault(&config).arg("migrate")).contains("nothing to do"));
    std::fs::remove_dir_all(&work).unwrap();
}
