//! Retention: 400 nights pruned by a keep policy keep exactly the expected set, and a prune killed
//! at ten points leaves a repository that verifies each time; a backup running while a prune marks
//! the packs it reuses keeps them.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;

fn host_config(work: &Path, name: &str, data: &Path) -> PathBuf {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let body = format!(
        "stack: nightly\npaths: [{}]\nrepository:\n  filesystem:\n    path: {}\ncache_dir: {}\n",
        data.display(),
        work.join("repo").display(),
        dir.join("cache").display()
    );
    write_config(&dir, &body)
}

fn snapshot_files(repo: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(repo.join("snapshots")).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
}

/// Gives the one snapshot `file` holds the time `time`: a new manifest (named by its hash, as the
/// format says) replaces it. Simulated nights, without waiting for them.
fn redate(file: &Path, time: &str) {
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    manifest["time"] = time.into();
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    std::fs::write(file.with_file_name(blake3::hash(&bytes).to_hex().as_str()), bytes).unwrap();
    std::fs::remove_file(file).unwrap();
}

fn signal(child: &std::process::Child, name: &str) {
    ok(std::process::Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()));
}

fn times(repo: &Path) -> Vec<String> {
    let mut times: Vec<String> = snapshot_files(repo)
        .iter()
        .map(|f| serde_json::from_slice::<serde_json::Value>(&std::fs::read(f).unwrap()).unwrap()["time"].as_str().unwrap()[..10].to_string())
        .collect();
    times.sort();
    times
}

fn verifies(config: &Path) {
    ok(stackvault(config).args(["verify", "--read-data"]));
}

/// Worked out by hand from the calendar (and by tests/prune.py's way of counting, restic's): the
/// newest of each of the last 7 days, 5 ISO weeks, 12 months and 3 years that have a snapshot.
const EXPECTED: [&str; 21] = [
    "2025-12-31", "2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31", "2026-06-30", "2026-07-31", "2026-08-31", "2026-09-30",
    "2026-10-31", "2026-11-08", "2026-11-15", "2026-11-22", "2026-11-26", "2026-11-27", "2026-11-28", "2026-11-29", "2026-11-30", "2026-12-01",
    "2026-12-02",
];

#[test]
fn four_hundred_nights_keep_exactly_the_policy_and_a_killed_prune_leaves_a_repository_that_verifies() {
    let work = scratch("prune400");
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(work.join("repo")).unwrap();
    let config = host_config(&work, "host", &data);
    ok(stackvault(&config).arg("init"));
    // Every night shares one file with the first (its pack stays referenced by every snapshot) and
    // holds one of its own.
    std::fs::write(data.join("shared"), vec![7u8; 100_000]).unwrap();
    let first = jiff::civil::date(2025, 10, 29);
    for night in 0..400 {
        let day = first.checked_add(jiff::Span::new().days(night)).unwrap();
        std::fs::write(data.join("tonight"), format!("night {night} {day}\n").repeat(50)).unwrap();
        let before = snapshot_files(&work.join("repo"));
        ok(stackvault(&config).arg("backup"));
        let new = snapshot_files(&work.join("repo")).into_iter().find(|f| !before.contains(f)).unwrap();
        redate(&new, &format!("{day}T02:00:00.000Z"));
    }
    let policy = ["--keep-daily", "7", "--keep-weekly", "5", "--keep-monthly", "12", "--keep-yearly", "3", "--grace", "0s"];

    let plan = ok(stackvault(&config).arg("prune").args(policy).arg("--dry-run"));
    assert!(plan.contains("400 snapshots considered: 21 kept, would forget 379"), "{plan}");
    assert_eq!(times(&work.join("repo")).len(), 400, "a dry run changes nothing");

    // Killed ten times at growing depths, through forgetting, marking and deleting: every time the
    // repository verifies, and the next run goes on.
    for (kill, after_lines) in [1, 40, 120, 200, 3, 150, 300, 80, 250, 400].into_iter().enumerate() {
        let mut child = stackvault(&config).arg("prune").args(policy).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines().take(after_lines).count();
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("kill {kill}: after {lines} lines, {} snapshots left", times(&work.join("repo")).len());
        verifies(&config);
    }
    let out = ok(stackvault(&config).arg("prune").args(policy));
    assert_eq!(times(&work.join("repo")), EXPECTED, "{out}");
    verifies(&config);

    // Nothing is left that a snapshot does not reference, and no marker is pending.
    let referenced: std::collections::HashSet<String> = snapshot_files(&work.join("repo"))
        .iter()
        .flat_map(|f| serde_json::from_slice::<serde_json::Value>(&std::fs::read(f).unwrap()).unwrap()["packs"].as_array().unwrap().clone())
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let stored: std::collections::HashSet<String> =
        std::fs::read_dir(work.join("repo/index")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(stored, referenced);
    assert_eq!(std::fs::read_dir(work.join("repo/prune")).unwrap().count(), 0);
    let again = ok(stackvault(&config).arg("prune").args(policy));
    assert!(again.contains("21 kept, forgot 0") && again.contains("deleted 0 packs"), "{again}");
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn a_backup_running_while_prune_marks_the_packs_it_reuses_keeps_them() {
    let work = scratch("prune-busy");
    let (data, other) = (work.join("data"), work.join("other"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::create_dir_all(work.join("repo")).unwrap();
    let config = host_config(&work, "host", &data);
    ok(stackvault(&config).arg("init"));
    let reused: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(data.join("a-reused"), &reused).unwrap();
    ok(stackvault(&config).arg("backup"));
    std::fs::remove_file(data.join("a-reused")).unwrap();
    std::fs::write(data.join("b-tonight"), b"second night").unwrap();
    ok(stackvault(&config).arg("backup"));

    // A second host backs up the first night's file again, and a large one after it. It is stopped
    // (SIGSTOP) once it has stored a pack of the large file, so that it has deduplicated the first
    // night's file against that night's pack and is still running when the prune below marks it.
    std::fs::write(other.join("a-reused"), &reused).unwrap();
    let big = std::fs::File::create(other.join("z-large")).unwrap();
    std::io::copy(&mut std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), 300 << 20), &mut std::io::BufWriter::new(big)).unwrap();
    let second = host_config(&work, "second", &other);
    let packs_before = files(&work.join("repo/packs")).len();
    let mut busy = stackvault(&second).arg("backup").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    while files(&work.join("repo/packs")).len() == packs_before {
        assert!(busy.try_wait().unwrap().is_none(), "the busy backup is still running when its first pack is stored");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    signal(&busy, "STOP");
    let grace = std::time::Duration::from_secs(60);
    let marked_at = std::time::Instant::now();
    let marked = ok(stackvault(&config).args(["prune", "--keep-last", "1", "--grace", "60s"]));
    signal(&busy, "CONT");
    let busy = busy.wait_with_output().unwrap();
    // It commits before the marker's commit deadline (half the grace), so it succeeds.
    assert!(busy.status.success(), "{}", text(&busy.stderr));
    // Marked: the first night's pack, and those the running backup has stored so far (no manifest
    // references them yet).
    assert!(marked.contains("2 snapshots considered: 1 kept, forgot 1") && marked.contains("unreferenced packs"), "{marked}");

    // A backup that starts after the marker does not reuse the marked pack: it stores the data anew.
    std::fs::write(data.join("a-reused"), &reused).unwrap();
    ok(stackvault(&config).arg("backup"));

    std::thread::sleep((grace + std::time::Duration::from_secs(1)).saturating_sub(marked_at.elapsed()));
    let carried_out = ok(stackvault(&config).args(["prune", "--keep-last", "3", "--grace", "60s"]));
    assert!(carried_out.contains("deleted 0 packs") && !carried_out.contains(" 0 marked packs still referenced"), "every marked pack is the busy backup's: kept\n{carried_out}");
    verifies(&config);
    let restored = work.join("restored");
    ok(stackvault(&second).args(["restore", "latest", "--to"]).arg(&restored));
    let found = ok(std::process::Command::new("find").arg(&restored).args(["-name", "a-reused"]));
    let back = std::fs::read(found.lines().next().expect("the reused file is restored")).unwrap();
    assert!(back == reused, "the reused file comes back");
    std::fs::remove_dir_all(&work).unwrap();
}
