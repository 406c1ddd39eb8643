//! Scale (issue "Scale and small files"): memory bounded by design, not by the dataset. Not part of
//! the default run (minutes, and tens of GB of disk for the files):
//!
//! ```sh
//! cargo test --release --test scale -- --ignored --nocapture --test-threads 1
//! ```
//!
//! `bench/run --scale` runs it and records the figures it prints (`scale:` lines). The work goes to
//! `SCALE_DIR` (default: the temporary directory); `SCALE_FILES` and
//! `SCALE_BLOBS` change the counts. Each command's peak RSS must stay below 128 MiB.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use common::*;
use stackvault::repo::packindex::{PackIndex, PackedBlob};
use stackvault::repo::{BlobKind, Id, Repository};
use stackvault::storage::filesystem::FilesystemStorage;
use stackvault::storage::{Key, ObjectKind, Storage};

const LIMIT_KIB: u64 = 128 << 10;

fn count(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

fn work_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("SCALE_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs one command, prints its figures as a `scale:` line, and checks it succeeded within the limit.
fn measured(case: &str, config: &Path, args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let clock = Instant::now();
    let (out, kib) = with_peak_rss(config, args);
    let secs = clock.elapsed().as_secs_f64();
    let what: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    println!("scale: case={case} command={:?} seconds={secs:.1} peak_rss_mib={:.1}", what.join(" "), kib as f64 / 1024.0);
    assert!(out.status.success(), "{case}: {what:?} failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    assert!(kib < LIMIT_KIB, "{case}: {what:?} peaked at {:.1} MiB", kib as f64 / 1024.0);
    text(&out.stdout)
}

fn config(work: &Path, source: &Path, repo: &Path) -> PathBuf {
    let body = format!(
        "stack: scale\npaths: [{}]\nrepository:\n  filesystem:\n    path: {}\ncache_dir: {}\n",
        source.display(),
        repo.display(),
        work.join("cache").display()
    );
    write_config(work, &body)
}

/// Backup, no-change backup, restore and verify of `source` into `repo`, each measured.
fn round_trip(case: &str, work: &Path, source: &Path, repo: &Path) {
    let config = config(work, source, repo);
    if !repo.join("config").exists() {
        ok(stackvault(&config).arg("init"));
    }
    measured(case, &config, &[&"backup"]);
    let unchanged = measured(case, &config, &[&"backup"]);
    assert!(unchanged.contains(" 0 B new"), "{case}: the second backup stored something: {unchanged}");
    let dest = work.join("restored");
    measured(case, &config, &[&"restore", &"latest", &"--to", &dest]);
    measured(case, &config, &[&"verify"]);
    std::fs::remove_dir_all(&dest).unwrap();
}

/// A repository whose index holds 40 million blobs, as 10 TB at 256 KiB chunks would, written directly
/// as index objects (their packs are never read: no snapshot lists them), beside one real snapshot.
#[test]
#[ignore]
fn an_index_of_40_million_blobs() {
    const PER_OBJECT: u64 = 100_000;
    let blobs = count("SCALE_BLOBS", 40_000_000);
    let work = work_dir("scale-index");
    let repo_dir = work.join("repo");
    std::fs::create_dir_all(&repo_dir).unwrap();
    let storage = Arc::new(FilesystemStorage::open(&repo_dir).unwrap());
    Repository::init(storage.clone(), &[]).unwrap();
    let clock = Instant::now();
    let mut written = 0;
    for object in 0..blobs.div_ceil(PER_OBJECT) {
        let in_object = PER_OBJECT.min(blobs - object * PER_OBJECT);
        let blobs = (0..in_object)
            .map(|i| {
                let n = object * PER_OBJECT + i;
                PackedBlob {
                    id: Id::of(&n.to_le_bytes()),
                    kind: BlobKind::Data,
                    frame_offset: i * 200_000,
                    frame_length: 200_000,
                    frame_plain_length: 262_656,
                    entry_offset: 0,
                    plain_length: 262_144,
                }
            })
            .collect();
        let index = PackIndex { pack: Id::of(format!("synthetic pack {object}").as_bytes()), size: in_object * 200_000, blobs };
        let bytes = index.encode(2);
        written += bytes.len() as u64;
        storage.put(&Key::new(ObjectKind::Index, index.pack.hex()), &bytes).unwrap();
    }
    println!(
        "scale: case=index-40m generated blobs={blobs} index_objects={} index_mib={:.0} seconds={:.1}",
        blobs.div_ceil(PER_OBJECT),
        written as f64 / (1 << 20) as f64,
        clock.elapsed().as_secs_f64()
    );
    let source = work.join("source");
    std::fs::create_dir(&source).unwrap();
    make_fixture(&source, 4, 2000);
    round_trip("index-40m", &work, &source, &repo_dir);
    std::fs::remove_dir_all(&work).unwrap();
}

/// Five million files of up to 100 bytes, each its own blob, in 5,000 directories.
#[test]
#[ignore]
fn five_million_files() {
    let files = count("SCALE_FILES", 5_000_000);
    let work = work_dir("scale-files");
    let source = work.join("source");
    let clock = Instant::now();
    for n in 0..files {
        let dir = source.join(format!("d{:04}", n / 1000));
        if n % 1000 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{:03}", n % 1000)), format!("file {n}: {}\n", "call detail record ".repeat((n % 5) as usize))).unwrap();
    }
    println!("scale: case=files-5m generated files={files} seconds={:.1}", clock.elapsed().as_secs_f64());
    round_trip("files-5m", &work, &source, &work.join("repo"));
    std::fs::remove_dir_all(&work).unwrap();
}
