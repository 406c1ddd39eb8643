//! What the repository promises on its own: encryption that hides content and names and tells a wrong
//! identity apart, damage that `verify --read-data` finds and attributes, a crafted repository that
//! cannot make restore write outside its destination, and a format that a reader written from
//! docs/FORMAT.md alone (tests/reader.py) restores exactly.

mod common;

use std::path::{Path, PathBuf};

use common::craft::{self, dir_node, link_node, Craft};
use common::*;
use stackvault::repo::format::Node;
use stackvault::repo::Id;
use stackvault::source::EntryKind;

fn keygen(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(name);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stackvault"));
    let recipient = ok(cmd.args(["keygen", "--output"]).arg(&path)).trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    (path, recipient)
}

#[test]
fn an_encrypted_repository_holds_no_plaintext_and_needs_the_right_identity() {
    let keys = scratch("keys");
    let (identity, recipient) = keygen(&keys, "identity.txt");
    let (stranger, _) = keygen(&keys, "stranger.txt");
    let scene = Scene::new("enc", 4, 300, &format!("encryption:\n  recipients: [\"{recipient}\"]\n"));
    let (work, repo, config) = (&scene.work, &scene.repo, &scene.config);
    manifest(&scene.mountpoint(), &work.join("before.json"));
    ok(stackvault(config).arg("backup"));

    for file in files(repo) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in [KNOWN_PLAINTEXT.as_bytes(), "résumé".as_bytes(), b"big.bin"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{} contains {:?}", file.display(), text(needle));
        }
    }

    let wrong = run(stackvault(config).args(["restore", "latest", "--to"]).arg(work.join("w")).arg("--identity").arg(&stranger));
    assert!(!wrong.status.success());
    assert!(text(&wrong.stderr).contains("identity does not match any recipient"), "{}", text(&wrong.stderr));
    let missing = run(stackvault(config).args(["restore", "latest", "--to"]).arg(work.join("w")));
    assert!(text(&missing.stderr).contains("--identity"), "{}", text(&missing.stderr));
    let wrong = run(stackvault(config).args(["verify", "--read-data", "--identity"]).arg(&stranger));
    assert!(!wrong.status.success() && text(&wrong.stderr).contains("identity does not match any recipient"), "verify with a wrong identity: {}", text(&wrong.stderr));

    scene.destroy();
    ok(stackvault(config).args(["restore", "latest", "--identity"]).arg(&identity));
    manifest(&scene.mountpoint(), &work.join("after.json"));
    assert_same(&work.join("before.json"), &work.join("after.json"));
    ok(stackvault(config).args(["verify", "--read-data", "--identity"]).arg(&identity));
    scene.cleanup();
    std::fs::remove_dir_all(&keys).unwrap();
}

#[test]
fn a_reader_written_from_the_specification_alone_restores_a_backup_exactly() {
    let work = scratch("spec");
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    make_fixture(&data, 3, 300);
    manifest(&data, &work.join("before.json"));
    let repo = work.join("repo");
    let config = write_config(&work, &format!("stack: spec\npaths: [{}]\nrepository:\n  filesystem:\n    path: {}\n", data.display(), repo.display()));
    ok(stackvault(&config).arg("init"));
    ok(stackvault(&config).arg("backup"));
    let dest = work.join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let read = python("reader.py", &[&repo, &dest]);
    assert!(read.status.success(), "reader.py: {}", text(&read.stderr));
    manifest(&dest.join("0"), &work.join("after.json"));
    assert_same(&work.join("before.json"), &work.join("after.json"));
    std::fs::remove_dir_all(&work).unwrap();
}

/// A repository of `data` (a fixture of `big_mib` and `small_files`) with two nights in it, the
/// second after `change_mib` of new data: (work dir, data, repository, configuration).
fn two_nights(prefix: &str, big_mib: u32, small_files: u32, change_mib: usize) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let work = scratch(prefix);
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    make_fixture(&data, big_mib, small_files);
    let repo = work.join("repo");
    let config = write_config(&work, &format!("stack: {prefix}\npaths: [{}]\nrepository:\n  filesystem:\n    path: {}\n", data.display(), repo.display()));
    ok(stackvault(&config).arg("init"));
    ok(stackvault(&config).arg("backup"));
    std::fs::write(data.join("new-call.wav"), vec![7u8; change_mib << 20]).unwrap();
    ok(stackvault(&config).arg("backup"));
    (work, data, repo, config)
}

#[test]
fn a_missing_or_truncated_pack_fails_verify_and_names_the_snapshot_it_breaks() {
    let (work, _, repo, config) = two_nights("gone", 8, 100, 3);
    let snapshots: serde_json::Value = serde_json::from_str(&ok(stackvault(&config).args(["snapshots", "--json"]))).unwrap();
    let uses = |s: &serde_json::Value, pack: &str| s["snapshot"]["packs"].as_array().unwrap().iter().any(|p| p == pack);
    let (first, second) = (&snapshots[0], &snapshots[1]);
    let pack = files(&repo.join("packs")).into_iter().find(|p| {
        let id = p.file_name().unwrap().to_str().unwrap();
        uses(second, id) && !uses(first, id)
    });
    let pack = pack.expect("the second night stored a pack of its own");
    let pack_id = pack.file_name().unwrap().to_str().unwrap().to_string();
    let original = std::fs::read(&pack).unwrap();
    let expect_broken = |fault: &str| {
        // Structure alone finds it: no data is read back.
        let out = run(stackvault(&config).arg("verify"));
        let said = text(&out.stdout);
        assert!(!out.status.success(), "verify passed with a {fault} pack");
        assert!(said.contains(&format!("snapshot {}: BROKEN", second["id"].as_str().unwrap())) && said.contains(&pack_id[..12]), "{fault}: {said}");
        assert!(said.contains(&format!("snapshot {}: ok", first["id"].as_str().unwrap())), "{fault}: {said}");
        said
    };
    std::fs::remove_file(&pack).unwrap();
    expect_broken("missing");
    std::fs::write(&pack, &original).unwrap();
    std::fs::write(&pack, &original[..original.len() - 1]).unwrap();
    expect_broken("truncated");
    std::fs::write(&pack, &original).unwrap();
    ok(stackvault(&config).args(["verify", "--read-data"]));
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn one_flipped_byte_in_any_pack_fails_verify_and_names_the_snapshots_it_breaks() {
    let (work, _, repo, config) = two_nights("flip", 40, 200, 3);
    ok(stackvault(&config).args(["verify", "--read-data"]));

    let snapshots: serde_json::Value = serde_json::from_str(&ok(stackvault(&config).args(["snapshots", "--json"]))).unwrap();
    let packs: Vec<_> = files(&repo.join("packs"));
    assert!(packs.len() >= 3, "the data spans several packs: {}", packs.len());
    for pack in packs {
        let original = std::fs::read(&pack).unwrap();
        for at in [0, original.len() as u64 / 2, original.len() as u64 - 1] {
            flip_byte(&pack, at);
            let out = run(stackvault(&config).args(["verify", "--read-data"]));
            assert!(!out.status.success(), "verify passed with a flipped byte at {at} in {}", pack.display());
            let pack_id = pack.file_name().unwrap().to_str().unwrap();
            for s in snapshots.as_array().unwrap() {
                let id = s["id"].as_str().unwrap();
                let uses = s["snapshot"]["packs"].as_array().unwrap().iter().any(|p| p == pack_id);
                let line = if uses { format!("snapshot {id}: BROKEN") } else { format!("snapshot {id}: ok") };
                assert!(text(&out.stdout).contains(&line), "expected {line:?}:\n{}", text(&out.stdout));
            }
            std::fs::write(&pack, &original).unwrap();
        }
    }
    ok(stackvault(&config).args(["verify", "--read-data"]));

    // A third of the data per run, rotating: three runs read every pack once, and the one that
    // reads the damaged pack names the snapshots it breaks.
    let packs = files(&repo.join("packs"));
    flip_byte(&packs[0], 100);
    let (mut read, mut failed) = (0, Vec::new());
    for run_number in 0..3 {
        let out = run(stackvault(&config).args(["verify", "--read-data=34%", "--json"]));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["ok"].as_bool().unwrap(), out.status.success());
        read += report["packs_read"].as_u64().unwrap();
        for s in report["snapshots"].as_array().unwrap() {
            assert!(s["objects"].as_u64().unwrap() > 0 && s["bytes"].as_u64().unwrap() > 0, "{s}");
            if s["status"] == "broken" {
                failed.push((run_number, s["id"].as_str().unwrap().to_string()));
            }
        }
    }
    assert_eq!(read, packs.len() as u64, "three runs of 34% read every pack once");
    let pack_id = packs[0].file_name().unwrap().to_str().unwrap();
    let users: Vec<String> = snapshots.as_array().unwrap().iter().filter(|s| s["snapshot"]["packs"].as_array().unwrap().iter().any(|p| p == pack_id)).map(|s| s["id"].as_str().unwrap().to_string()).collect();
    assert!(failed.iter().all(|(n, _)| *n == failed[0].0) && failed.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>() == users, "one run names the snapshots using the damaged pack: {failed:?} vs {users:?}");

    // The audit report an auditor opens: self-contained, naming each snapshot and its evidence.
    let page = work.join("audit.html");
    let out = run(stackvault(&config).args(["verify", "--read-data", "--report"]).arg(&page));
    assert!(!out.status.success());
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("broken snapshots") && !html.contains("<script") && !html.contains("http"), "{html}");
    for s in snapshots.as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let status = if users.iter().any(|u| u == id) { "BROKEN" } else { "ok" };
        assert!(html.contains(&format!("<code>{id}</code></td><td>flip</td>")) && html.split(id).nth(1).unwrap().split("</tr>").next().unwrap().contains(&format!(">{status}</td>")), "{id} {status}: {html}");
    }
    std::fs::remove_dir_all(&work).unwrap();
}

fn file_node(name: &[u8]) -> Node {
    craft::file_node(name, vec![Id::of(b"escaped")], 7)
}

#[test]
fn a_crafted_repository_restores_nothing_outside_its_destination_and_fails_verify() {
    let outside_name = "outside";
    let dir_with = |craft: &mut Craft, name: &[u8], children: Vec<Node>| dir_node(name, craft.tree(children));
    let symlink = |name: &[u8], target: &Path| link_node(name, EntryKind::Symlink, target.as_os_str().as_encoded_bytes());
    let hardlink = |name: &[u8], target: &[u8]| link_node(name, EntryKind::Hardlink, target);
    type Case<'a> = Box<dyn Fn(&mut Craft, &Path) -> Vec<Node> + 'a>;
    let cases: Vec<(&str, Case<'_>)> = vec![
        ("a directory named ..", Box::new(move |c, _| vec![dir_with(c, b"..", vec![file_node(b"escaped-dotdot")])])),
        ("an absolute name", Box::new(|_, outside| vec![file_node(outside.join("escaped-abs").as_os_str().as_encoded_bytes())])),
        ("a name with slashes", Box::new(|_, _| vec![file_node(format!("../../{outside_name}/escaped-slash").as_bytes())])),
        ("a file through a symlink", Box::new(move |c, outside| vec![symlink(b"link", outside), dir_with(c, b"link", vec![file_node(b"escaped-through-link")])])),
        ("a file over a symlink", Box::new(|_, outside| vec![symlink(b"link", &outside.join("escaped-over-link")), file_node(b"link")])),
        ("a hardlink through a symlink", Box::new(|_, outside| vec![symlink(b"link", outside), hardlink(b"h", b"link/victim")])),
        ("a hardlink up and out", Box::new(|_, _| vec![hardlink(b"h", format!("../{outside_name}/victim").as_bytes())])),
    ];
    for (what, case) in cases {
        let work = scratch("craft");
        let outside = work.join(outside_name);
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"precious").unwrap();
        let mut craft = Craft::new(&work);
        craft.data(b"escaped");
        let entries = case(&mut craft, &outside);
        let root = craft.tree(entries);
        let repo = craft.dir.clone();
        craft.finish(root, 1, 0);
        let config = write_config(&work, &format!("stack: crafted\nrepository:\n  filesystem:\n    path: {}\n", repo.display()));
        let dest = work.join("dest");
        let out = run(stackvault(&config).args(["restore", "latest", "--to"]).arg(&dest));
        assert!(!out.status.success(), "{what}: restore succeeded");
        let verified = run(stackvault(&config).arg("verify"));
        assert!(!verified.status.success() && text(&verified.stdout).contains("BROKEN"), "{what}: verify passed:\n{}", text(&verified.stdout));
        let mut outside_now: Vec<_> = files(&outside).into_iter().map(|p| p.file_name().unwrap().to_owned()).collect();
        outside_now.sort();
        assert_eq!(outside_now, vec![std::ffi::OsString::from("victim")], "{what}: something was written outside");
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious", "{what}: the victim changed");
        for escaped in ["escaped", "escaped-dotdot", "escaped-slash"] {
            assert!(!work.join(escaped).exists() && !work.join("dest").join(escaped).exists(), "{what}: {escaped} escaped");
        }
        std::fs::remove_dir_all(&work).unwrap();
    }
}

/// An unchanged file's xattrs come from the files cache, not from the file: a changed xattr changes
/// the file's ctime, so the file is read again and the new value is what the next snapshot holds.
#[test]
fn an_xattr_set_on_an_otherwise_unchanged_file_reaches_the_next_snapshot() {
    let work = scratch("xattr");
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("recording.wav");
    std::fs::write(&file, b"RIFF....WAVE").unwrap();
    xattr::set(&file, "user.tag", b"first").unwrap();
    let repo = work.join("repo");
    let body = format!("stack: xattr\npaths: [{}]\nrepository:\n  filesystem:\n    path: {}\ncache_dir: {}\n", data.display(), repo.display(), work.join("cache").display());
    let config = write_config(&work, &body);
    ok(stackvault(&config).arg("init"));
    ok(stackvault(&config).arg("backup"));
    assert!(ok(stackvault(&config).arg("backup")).contains("(1 unchanged files not read)"));
    xattr::set(&file, "user.tag", b"second").unwrap();
    assert!(ok(stackvault(&config).arg("backup")).contains("(0 unchanged files not read)"));
    assert!(ok(stackvault(&config).arg("backup")).contains("(1 unchanged files not read)"));
    let dest = work.join("dest");
    ok(stackvault(&config).args(["restore", "latest", "--to"]).arg(&dest));
    let restored = std::fs::read_dir(dest.join("path")).unwrap().next().unwrap().unwrap().path().join("recording.wav");
    assert_eq!(xattr::get(&restored, "user.tag").unwrap(), Some(b"second".to_vec()), "the unchanged run kept the cached xattr");
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn stats_tell_what_is_stored_what_each_night_added_and_what_deduplication_saves() {
    let (work, data, repo, config) = two_nights("calls", 20, 100, 1);
    let stats: serde_json::Value = serde_json::from_str(&ok(stackvault(&config).args(["stats", "--json"]))).unwrap();
    let on_disk: u64 = files(&repo.join("packs")).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(stats["stored_bytes"].as_u64().unwrap(), on_disk, "{stats}");
    let stack = &stats["stacks"]["calls"];
    assert_eq!(stack["snapshots"], 2);
    let nights: Vec<u64> = stack["nights"].as_array().unwrap().iter().map(|n| n[1].as_u64().unwrap()).collect();
    assert_eq!(nights.iter().sum::<u64>(), on_disk, "each pack counted on the night it first appeared: {stats}");
    assert!(nights[1] > 0 && nights[1] < nights[0] / 4, "the second night added only what changed: {nights:?}");
    assert!(stats["dedup_ratio"].as_f64().unwrap() > 1.5, "two near-identical snapshots deduplicate: {stats}");
    let source = format!("path {}", data.display());
    assert!(stack["sources"][&source].as_u64().unwrap() > 20 << 20, "{stats}");
    assert!(stack["locked_until"].is_null(), "a share locks nothing: {stats}");
    let shown = ok(stackvault(&config).arg("stats"));
    assert!(shown.contains("stack calls: 2 snapshots") && shown.contains("deduplication"), "{shown}");
    std::fs::remove_dir_all(&work).unwrap();
}
