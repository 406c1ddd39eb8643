//! Repositories written by an attacker who had write access to the storage, every hash valid: restore
//! and verify bound their work by what the snapshot declares, keep memory bounded whatever an object
//! holds, and refuse the same snapshots, so that "verify clean" means "restores".

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::craft::{dir_node, file_node, link_node, node, Craft};
use common::*;
use stackvault::repo::format::{Node, Xattr};
use stackvault::repo::packindex::{PackIndex, PackedBlob};
use stackvault::repo::{BlobKind, Id};
use stackvault::source::EntryKind;

fn config_for(work: &Path, repo: &Path) -> PathBuf {
    write_config(work, &format!("stack: crafted\nrepository:\n  filesystem:\n    path: {}\n", repo.display()))
}

fn assert_refused(out: &Output, what: &str, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded:\n{}", text(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "{what}: exit status {:?} (a panic or abort?):\n{stderr}", out.status);
    for needle in needles {
        assert!(stderr.contains(needle), "{what}: expected {needle:?} in:\n{stderr}");
    }
}

fn assert_broken(out: &Output, what: &str, needles: &[&str]) {
    let stdout = text(&out.stdout);
    assert!(!out.status.success() && stdout.contains("BROKEN"), "{what}: verify passed:\n{stdout}");
    for needle in needles {
        assert!(stdout.contains(needle), "{what}: expected {needle:?} in:\n{stdout}");
    }
}

#[test]
fn a_tree_shared_exponentially_stops_restore_and_verify_within_seconds() {
    let work = scratch("dag");
    let mut craft = Craft::new(&work);
    let piece = vec![b'x'; 4096];
    let blob = craft.data(&piece);
    // 64 levels, each listing the next twice: 2^64 paths from 65 small trees.
    let mut tree = craft.tree(vec![file_node(b"f", vec![blob], piece.len() as u64)]);
    for _ in 0..64 {
        tree = craft.tree(vec![dir_node(b"a", tree), dir_node(b"b", tree)]);
    }
    let repo = craft.dir.clone();
    let (entries, bytes) = (1000, 1000 * piece.len() as u64);
    let snapshot = craft.finish(tree, entries, bytes);
    let config = config_for(&work, &repo);
    let dest = work.join("dest");

    let clock = Instant::now();
    let out = run(stackvault(&config).args(["restore", "latest", "--to"]).arg(&dest));
    let took = clock.elapsed();
    assert_refused(&out, "restore", &[&snapshot[..12], "path /crafted", "more than the 1000 entries"]);
    let written = du(&dest);
    eprintln!("DAG of 2^64 paths: restore refused after {took:?}, {written} bytes written (declared {bytes}): {}", text(&out.stderr).trim());
    assert!(took < Duration::from_secs(10), "restore took {took:?}");
    assert!(written <= bytes, "restore wrote {written} bytes, more than the {bytes} declared");

    let clock = Instant::now();
    let verified = run(stackvault(&config).arg("verify"));
    eprintln!("DAG of 2^64 paths: verify failed it after {:?}", clock.elapsed());
    assert_broken(&verified, "verify", &["more than the 1000 entries"]);
    assert!(clock.elapsed() < Duration::from_secs(10));
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn identical_directories_stored_once_and_hardlinks_restore_when_the_counts_say_so() {
    let work = scratch("shared");
    let mut craft = Craft::new(&work);
    let blob = craft.data(b"hello");
    let leaf = craft.tree(vec![file_node(b"f", vec![blob], 5)]);
    let pair = craft.tree(vec![dir_node(b"a", leaf), dir_node(b"b", leaf)]);
    // a, b; a/a, a/b, b/a, b/b; four files f; h, a second name of a/a/f.
    let root = craft.tree(vec![dir_node(b"a", pair), dir_node(b"b", pair), link_node(b"h", EntryKind::Hardlink, b"a/a/f")]);
    let repo = craft.dir.clone();
    craft.finish(root, 11, 20);
    let config = config_for(&work, &repo);
    ok(stackvault(&config).args(["verify", "--read-data"]));
    let dest = work.join("dest");
    ok(stackvault(&config).args(["restore", "latest", "--to"]).arg(&dest));
    let restored = dest.join("path").join("crafted");
    assert_eq!(std::fs::read(restored.join("b/b/f")).unwrap(), b"hello");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(restored.join("h")).unwrap().ino(), std::fs::metadata(restored.join("a/a/f")).unwrap().ino());
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn a_one_gib_tree_is_refused_without_raising_rss_past_256_mib() {
    const GIB: u64 = 1 << 30;
    for (what, indexed) in [("an honest index", GIB), ("an index that says 1 MiB", 1 << 20)] {
        let work = scratch("bigtree");
        let mut craft = Craft::new(&work);
        let tree = craft.padded_tree(GIB, indexed);
        let repo = craft.dir.clone();
        let snapshot = craft.finish(tree, 0, 0);
        let config = config_for(&work, &repo);
        let dest = work.join("dest");
        let (out, rss) = with_peak_rss(&config, &[&"restore", &"latest", &"--to", &dest]);
        eprintln!("1 GiB tree, {what}: restore peak RSS {} MiB: {}", rss >> 10, text(&out.stderr).lines().next().unwrap_or(""));
        assert_refused(&out, what, &[&snapshot[..12], "path /crafted"]);
        assert!(rss < 256 << 10, "{what}: restore peaked at {} MiB", rss >> 10);
        let (out, rss) = with_peak_rss(&config, &[&"verify", &"--read-data"]);
        eprintln!("1 GiB tree, {what}: verify --read-data peak RSS {} MiB:\n{}", rss >> 10, text(&out.stdout));
        assert_broken(&out, what, &[]);
        assert!(rss < 256 << 10, "{what}: verify peaked at {} MiB", rss >> 10);
        std::fs::remove_dir_all(&work).unwrap();
    }
}

#[test]
fn a_file_whose_size_lies_fails_restore_and_verify_read_data() {
    for (declared, held) in [(1u64 << 40, 10usize), (5, 20)] {
        let work = scratch("size");
        let mut craft = Craft::new(&work);
        let blob = craft.data(&vec![b'z'; held]);
        let root = craft.tree(vec![file_node(b"f", vec![blob], declared)]);
        let repo = craft.dir.clone();
        let snapshot = craft.finish(root, 1, declared);
        let config = config_for(&work, &repo);
        let what = format!("size {declared}, blobs of {held} bytes");
        let dest = work.join("dest");
        let out = run(stackvault(&config).args(["restore", "latest", "--to"]).arg(&dest));
        assert_refused(&out, &what, &[&snapshot[..12], "path /crafted", &format!("its size says {declared} bytes but its content blobs hold {held}")]);
        assert!(!dest.join("path/crafted/f").exists(), "{what}: the file was restored");
        assert_broken(&run(stackvault(&config).args(["verify", "--read-data"])), &what, &["its size says"]);
        std::fs::remove_dir_all(&work).unwrap();
    }
}

/// Every rule a restore enforces, broken once: verify must fail each snapshot that restore refuses.
#[test]
fn every_rule_restore_enforces_fails_verify_too() {
    let file = |name: &[u8]| file_node(name, vec![Id::of(b"content")], 7);
    let with = |n: Node, f: &dyn Fn(&mut Node)| {
        let mut n = n;
        f(&mut n);
        n
    };
    type Case = Box<dyn Fn(&mut Craft) -> (Vec<u8>, u64)>;
    let tree = |nodes: Vec<Node>| -> Case {
        let count = nodes.len() as u64;
        Box::new(move |_: &mut Craft| (serde_json::to_vec(&stackvault::repo::format::Tree { nodes: nodes.clone() }).unwrap(), count))
    };
    let cases: Vec<(&str, Case)> = vec![
        ("an empty name", tree(vec![file(b"")])),
        ("a name .", tree(vec![file(b".")])),
        ("a name ..", tree(vec![file(b"..")])),
        ("a name with a slash", tree(vec![file(b"a/b")])),
        ("a name with NUL", tree(vec![file(b"a\0b")])),
        ("a name of 256 bytes", tree(vec![file(&[b'n'; 256])])),
        ("two entries of one name", tree(vec![file(b"a"), file(b"a")])),
        ("entries out of order", tree(vec![file(b"b"), file(b"a")])),
        ("a directory without a tree", tree(vec![node(b"d", EntryKind::Dir)])),
        ("a file with a tree", tree(vec![with(file(b"f"), &|n| n.subtree = Some(Id::of(b"content")))])),
        ("a directory whose tree is a data blob", tree(vec![dir_node(b"d", Id::of(b"content"))])),
        ("a content blob in no index", tree(vec![file_node(b"f", vec![Id::of(b"nowhere")], 7)])),
        ("a symlink without a target", tree(vec![node(b"l", EntryKind::Symlink)])),
        ("a fifo with a target", tree(vec![link_node(b"p", EntryKind::Fifo, b"x")])),
        ("rdev on a file", tree(vec![with(file(b"f"), &|n| n.rdev = 5)])),
        ("mode beyond 0o7777", tree(vec![with(file(b"f"), &|n| n.mode = 0o10644)])),
        ("an xattr value not hex", tree(vec![with(file(b"f"), &|n| n.xattrs = vec![Xattr { name: b"user.a".to_vec(), value: "zz".into() }])])),
        ("xattrs out of order", tree(vec![with(file(b"f"), &|n| {
            n.xattrs = vec![Xattr { name: b"user.b".to_vec(), value: "00".into() }, Xattr { name: b"user.a".to_vec(), value: "00".into() }]
        })])),
        ("a hardlink to nothing", tree(vec![file(b"a"), link_node(b"h", EntryKind::Hardlink, b"nothing")])),
        ("a hardlink to a later file", tree(vec![link_node(b"a", EntryKind::Hardlink, b"b"), file(b"b")])),
        ("a hardlink to itself", tree(vec![link_node(b"h", EntryKind::Hardlink, b"h")])),
        ("a hardlink to a symlink", tree(vec![link_node(b"a", EntryKind::Symlink, b"x"), link_node(b"h", EntryKind::Hardlink, b"a")])),
        ("a hardlink to an absolute path", tree(vec![file(b"a"), link_node(b"h", EntryKind::Hardlink, b"/a")])),
        ("a hardlink through ..", tree(vec![file(b"a"), link_node(b"h", EntryKind::Hardlink, b"x/../a")])),
        ("a hardlink to a directory", Box::new(|c: &mut Craft| {
            let empty = c.tree(vec![]);
            (serde_json::to_vec(&stackvault::repo::format::Tree { nodes: vec![dir_node(b"d", empty), link_node(b"h", EntryKind::Hardlink, b"d")] }).unwrap(), 2)
        })),
        ("a {\"hex\"} name that is UTF-8", Box::new(|_: &mut Craft| (br#"{"nodes":[{"name":{"hex":"61"},"type":"fifo","mode":420,"uid":0,"gid":0,"mtime_ns":0}]}"#.to_vec(), 1))),
        ("an upper-case hex name", Box::new(|_: &mut Craft| (br#"{"nodes":[{"name":{"hex":"FF"},"type":"fifo","mode":420,"uid":0,"gid":0,"mtime_ns":0}]}"#.to_vec(), 1))),
        ("a duplicate key", Box::new(|_: &mut Craft| (br#"{"nodes":[{"name":"a","name":"b","type":"fifo","mode":420,"uid":0,"gid":0,"mtime_ns":0}]}"#.to_vec(), 1))),
        ("an unknown field", Box::new(|_: &mut Craft| (br#"{"nodes":[{"name":"a","type":"fifo","mode":420,"uid":0,"gid":0,"mtime_ns":0,"nlink":2}]}"#.to_vec(), 1))),
        ("a negative uid", Box::new(|_: &mut Craft| (br#"{"nodes":[{"name":"a","type":"fifo","mode":420,"uid":-1,"gid":0,"mtime_ns":0}]}"#.to_vec(), 1))),
        ("more entries declared than held", Box::new(|_: &mut Craft| (br#"{"nodes":[]}"#.to_vec(), 1))),
    ];
    let mut checked = 0;
    for (what, case) in cases.iter().map(|(w, c)| (*w, Some(c))).chain([("a valid tree (the control)", None)]) {
        let work = scratch("rule");
        let mut craft = Craft::new(&work);
        craft.data(b"content");
        let (json, entries) = match case {
            Some(case) => case(&mut craft),
            None => (serde_json::to_vec(&stackvault::repo::format::Tree { nodes: vec![file(b"a"), link_node(b"h", EntryKind::Hardlink, b"a")] }).unwrap(), 2),
        };
        let bytes = declared_bytes(&json);
        let root = craft.raw_tree(json);
        let repo = craft.dir.clone();
        let snapshot = craft.finish(root, entries, bytes);
        let config = config_for(&work, &repo);
        let restored = run(stackvault(&config).args(["restore", "latest", "--to"]).arg(work.join("dest")));
        let verified = run(stackvault(&config).arg("verify"));
        if case.is_none() {
            assert!(restored.status.success(), "the control did not restore: {}", text(&restored.stderr));
            assert!(verified.status.success(), "the control did not verify: {}", text(&verified.stdout));
        } else {
            assert_refused(&restored, what, &[&snapshot[..12]]);
            assert_broken(&verified, what, &[&snapshot[..12]]);
            checked += 1;
        }
        std::fs::remove_dir_all(&work).unwrap();
    }
    assert_eq!(checked, cases.len());
}

/// The content bytes a crafted root tree's files declare, so that the counts are not what fails.
fn declared_bytes(json: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v["nodes"].as_array().map(|nodes| nodes.iter().filter_map(|n| n["size"].as_u64()).sum()))
        .unwrap_or(0)
}

#[test]
fn hostile_config_values_and_index_lengths_are_errors_not_crashes() {
    let work = scratch("config");
    let mut craft = Craft::new(&work);
    let blob = craft.data(b"content");
    let root = craft.tree(vec![file_node(b"f", vec![blob], 7)]);
    let repo = craft.dir.clone();
    craft.finish(root, 1, 7);
    let config = config_for(&work, &repo);
    let rewrite = |path: &Path, from: &str, to: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let original = std::fs::read_to_string(path).unwrap();
        assert!(original.contains(from), "{from:?} not in {original}");
        std::fs::write(path, original.replacen(from, to, 1)).unwrap();
        original
    };
    let dest = work.join("dest");

    let original = rewrite(&repo.join("config"), "\"max_size\": 1048576", "\"max_size\": 0");
    assert_refused(&run(stackvault(&config).args(["restore", "latest", "--to"]).arg(&dest)), "a chunker max_size of 0", &["config object is corrupt", "chunker"]);
    std::fs::write(repo.join("config"), original).unwrap();

    // An index entry whose frame length would size a 4 GiB buffer.
    let index = files(&repo.join("index")).into_iter().next().unwrap();
    let mut forged = PackIndex::decode(&std::fs::read(&index).unwrap(), 1 << 20).unwrap();
    forged.blobs.iter_mut().for_each(|blob| blob.frame_length = u32::MAX);
    std::fs::set_permissions(&index, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&index, forged.encode(2)).unwrap();
    assert_refused(&run(stackvault(&config).args(["restore", "latest", "--to"]).arg(&dest)), "a frame length of 4 GiB", &["the index says its frame is 4294967295 bytes"]);
    assert_broken(&run(stackvault(&config).args(["verify", "--read-data"])), "a frame length of 4 GiB", &["4294967295"]);
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn objects_added_under_snapshots_and_index_do_not_hide_the_genuine_snapshot() {
    let work = scratch("junk");
    let mut craft = Craft::new(&work);
    let blob = craft.data(b"genuine");
    let root = craft.tree(vec![file_node(b"f", vec![blob], 7)]);
    let repo = craft.dir.clone();
    let genuine = craft.finish(root, 1, 7);
    let junk = [("not-an-id", &b"{}"[..]), (&"0".repeat(64)[..], b"{\"version\": 1}"), (&Id::of(b"[1,2").hex()[..], b"[1,2")];
    for (name, bytes) in junk {
        std::fs::write(repo.join("snapshots").join(name), bytes).unwrap();
    }
    std::fs::write(repo.join("index").join("not-a-pack"), b"{}").unwrap();
    std::fs::write(repo.join("index").join("0".repeat(64)), b"\xff\xfe").unwrap();
    let config = config_for(&work, &repo);
    let listed = run(stackvault(&config).arg("snapshots"));
    assert!(listed.status.success() && text(&listed.stdout).contains(&genuine[..12]), "{}", text(&listed.stderr));
    assert_eq!(text(&listed.stderr).matches("warning:").count(), 3, "{}", text(&listed.stderr));
    let dest = work.join("dest");
    ok(stackvault(&config).args(["restore", "latest", "--to"]).arg(&dest));
    assert_eq!(std::fs::read(dest.join("path/crafted/f")).unwrap(), b"genuine");
    let verified = run(stackvault(&config).arg("verify"));
    let stdout = text(&verified.stdout);
    assert!(!verified.status.success() && stdout.contains(&format!("snapshot {genuine}: ok")), "{stdout}");
    assert_eq!(stdout.matches("unreadable: ").count(), 5, "{stdout}");
    std::fs::remove_dir_all(&work).unwrap();
}

/// What a reader refuses, a backup must not write: it fails naming the directory instead.
#[test]
fn a_backup_refuses_a_directory_no_reader_would_accept_and_names_it() {
    let work = scratch("limits");
    let wide = work.join("wide");
    let listing = wide.join("listing");
    std::fs::create_dir_all(&listing).unwrap();
    // 8,400 files with a 4,000-byte xattr each (all an ext4 inode holds): 67 MB of tree JSON.
    let value = vec![0xa5u8; 4000];
    for i in 0..8400 {
        let path = listing.join(format!("f{i:05}"));
        std::fs::File::create(&path).unwrap();
        xattr::set(&path, "user.pad", &value).unwrap();
    }
    let deep = work.join("deep");
    let mut path = deep.clone();
    for _ in 0..1025 {
        path.push("d");
    }
    std::fs::create_dir_all(&path).unwrap();
    for (data, needle) in [(&wide, "directory listing: its 8400 entries need a tree of"), (&deep, "nested deeper than 1024 levels")] {
        let repo = work.join("repo");
        let config = write_config(&work, &format!("stack: limits\npaths: [{}]\nrepository:\n  filesystem:\n    path: {}\n", data.display(), repo.display()));
        ok(stackvault(&config).arg("init"));
        let out = run(stackvault(&config).arg("backup"));
        assert_refused(&out, needle, &[&data.display().to_string(), needle]);
        let snapshots = repo.join("snapshots");
        assert!(!snapshots.exists() || files(&snapshots).is_empty(), "{needle}: a snapshot was written");
        std::fs::remove_dir_all(&repo).unwrap();
    }
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn an_index_object_pointing_blobs_at_a_bogus_pack_does_not_stop_restore() {
    let work = scratch("bogus");
    let mut craft = Craft::new(&work);
    let blob = craft.data(b"genuine");
    let root = craft.tree(vec![file_node(b"f", vec![blob], 7)]);
    let repo = craft.dir.clone();
    craft.finish(root, 1, 7);
    // The same blobs, said to lie in a pack that sorts first and does not exist.
    forge_index(&repo, |blob| blob.frame_offset = 12345);
    let config = config_for(&work, &repo);
    let dest = work.join("dest");
    ok(stackvault(&config).args(["restore", "latest", "--to"]).arg(&dest));
    assert_eq!(std::fs::read(dest.join("path/crafted/f")).unwrap(), b"genuine");
    ok(stackvault(&config).args(["verify", "--read-data"]));
    std::fs::remove_dir_all(&work).unwrap();
}

/// A bind-mounted single file is a source whose root is a file node: the same rules hold for it.
#[test]
fn a_single_file_source_verifies_and_its_size_is_checked() {
    for (size, clean) in [(7, true), (8, false)] {
        let work = scratch("single");
        let mut craft = Craft::new(&work);
        let blob = craft.data(b"genuine");
        let repo = craft.dir.clone();
        craft.finish_with_root(file_node(b"", vec![blob], size), 0, size);
        let verified = run(stackvault(&config_for(&work, &repo)).args(["verify", "--read-data"]));
        assert_eq!(verified.status.success(), clean, "size {size}:\n{}", text(&verified.stdout));
        std::fs::remove_dir_all(&work).unwrap();
    }
}

/// A reader may read any copy of a blob, so copies that disagree on its length fail the tree that
/// uses it, in verify as in restore (a tree checked against one copy could be restored from another).
#[test]
fn copies_of_a_blob_that_disagree_on_its_length_fail_restore_and_verify() {
    let work = scratch("conflict");
    let mut craft = Craft::new(&work);
    let blob = craft.data(&[b'z'; 20]);
    let root = craft.tree(vec![file_node(b"f", vec![blob], 5)]);
    let repo = craft.dir.clone();
    let snapshot = craft.finish(root, 1, 5);
    forge_index(&repo, |blob| {
        if blob.kind == BlobKind::Data {
            blob.plain_length = 5;
        }
    });
    let config = config_for(&work, &repo);
    let needle = "indexed twice with different types or lengths";
    assert_refused(&run(stackvault(&config).args(["restore", "latest", "--to"]).arg(work.join("dest"))), "restore", &[&snapshot[..12], needle]);
    assert_broken(&run(stackvault(&config).args(["verify", "--read-data"])), "verify", &[needle]);
    std::fs::remove_dir_all(&work).unwrap();
}

/// Verify walks a shared tree once, so what depends on where it is used must be carried along: here
/// a chain of 600 directories is used at level 1 (fine) and again below 500 more (too deep).
#[test]
fn a_shared_tree_used_too_deep_fails_verify_as_it_fails_restore() {
    let work = scratch("deep");
    let mut craft = Craft::new(&work);
    let mut chains = vec![craft.tree(vec![])];
    for _ in 0..1100 {
        let below = *chains.last().unwrap();
        chains.push(craft.tree(vec![dir_node(b"d", below)]));
    }
    let root = craft.tree(vec![dir_node(b"a", chains[600]), dir_node(b"b", chains[1100])]);
    let repo = craft.dir.clone();
    let snapshot = craft.finish(root, 2 + 600 + 1100, 0);
    let config = config_for(&work, &repo);
    let needle = "nested deeper than 1024 levels";
    assert_refused(&run(stackvault(&config).args(["restore", "latest", "--to"]).arg(work.join("dest"))), "restore", &[&snapshot[..12], needle]);
    assert_broken(&run(stackvault(&config).arg("verify")), "verify", &[needle]);
    std::fs::remove_dir_all(&work).unwrap();
}

/// Adds an index object for a pack that sorts first and does not exist, listing the repository's one
/// pack's blobs as `change` alters them.
fn forge_index(repo: &Path, change: impl Fn(&mut PackedBlob)) {
    let genuine = std::fs::read(files(&repo.join("index")).pop().unwrap()).unwrap();
    let mut forged = PackIndex::decode(&genuine, 1 << 20).unwrap();
    forged.pack = Id([0; 32]);
    forged.blobs.iter_mut().for_each(change);
    std::fs::write(repo.join("index").join(forged.pack.hex()), forged.encode(2)).unwrap();
}
