//! Immutability on Azure, against tests/azure_double.py: a test double written from Azure's REST
//! reference (Put Block, Put Block List, Set Blob Immutability Policy, Set Blob Legal Hold, List Blobs,
//! Shared Key), because Azurite ignores immutability headers and answers 501 to the policy calls.
//! The double checks Shared Key signatures itself, keeps versions, refuses to shorten a locked policy
//! and to delete a locked blob, and records every request so that the headers we send can be checked.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::azure::*;
use common::*;

fn sv(config: &Path) -> Command {
    let mut cmd = stackvault(config);
    for v in ["AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT"] {
        cmd.env_remove(v);
    }
    cmd.env("AZURE_STORAGE_KEY", KEY);
    cmd
}

fn header<'a>(request: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    request["headers"][name].as_str()
}

fn query<'a>(request: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    request["query"][name].as_str()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_rfc3339(text: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The end of the UTC day `days` after now, as the target promises.
fn end_of_day_in(days: u64) -> SystemTime {
    let seconds = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + days * 86_400;
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.div_ceil(86_400) * 86_400)
}

fn config(work: &Path, data: &Path, double: &Double, immutability: &str) -> std::path::PathBuf {
    write_config(
        work,
        &format!(
            "stack: worm\npaths: [{}]\nrepository:\n  azure:\n    account: {ACCOUNT}\n    container: worm\n    endpoint: {}\n    immutability:\n{immutability}cache_dir: {}\n",
            data.display(),
            double.endpoint(),
            work.join("cache").display()
        ),
    )
}

fn blob_named<'a>(blobs: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    blobs.iter().find(|b| b["name"] == name).unwrap_or_else(|| panic!("no blob {name}"))
}

#[test]
fn every_object_is_committed_locked_held_and_exclusive_and_nothing_is_ever_deleted() {
    let work = scratch("worm-commit");
    let double = Double::start(true);
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    make_fixture(&data, 9, 40); // a 9 MiB file: blocks staged from the spool file, several per pack
    let config = config(&work, &data, &double, "      days: 180\n      mode: locked\n      legal_hold: true\n");
    // The double has no container until one is made; a WORM container is made by its owner, not us.
    let out = run(sv(&config).arg("init"));
    assert!(!out.status.success() && text(&out.stderr).contains("does not exist"), "{}", text(&out.stderr));
    double.create_container("worm");
    ok(sv(&config).arg("init"));
    let earliest = end_of_day_in(180);
    ok(sv(&config).arg("backup"));
    let latest = end_of_day_in(180);

    // One date for the whole run, even one that crosses midnight (UTC).
    let mut expected = None;
    let requests = double.requests();
    let commits: Vec<_> = requests.iter().filter(|r| r["method"] == "PUT" && query(r, "comp") == Some("blocklist")).collect();
    assert!(commits.len() >= 4, "config, a pack, its index object and a manifest are committed: {}", commits.len());
    for commit in &commits {
        let path = commit["path"].as_str().unwrap();
        assert_eq!(commit["status"], 201, "{path}");
        assert_eq!(header(commit, "if-none-match"), Some("*"), "{path} is committed without If-None-Match: *");
        let until = header(commit, "x-ms-immutability-policy-until-date").unwrap_or_else(|| panic!("{path}: no until-date"));
        let until = httpdate(until);
        assert!((earliest..=latest).contains(&until), "{path}: locked until {until:?}, not the end of the day 180 days ahead");
        assert_eq!(*expected.get_or_insert(until), until, "{path}: the run's objects are locked until different days");
        // The REST reference spells the mode "Locked"; the official SDK sends "locked", the spelling
        // of the service's own responses (recorded ones); the double reads either.
        assert!(header(commit, "x-ms-immutability-policy-mode").is_some_and(|m| m.eq_ignore_ascii_case("locked")), "{path}");
        assert_eq!(header(commit, "x-ms-legal-hold"), Some("true"), "{path}");
        assert!(header(commit, "x-ms-version").unwrap() >= "2020-06-12", "{path}");
    }
    for block in requests.iter().filter(|r| query(r, "comp") == Some("block")) {
        assert!(header(block, "content-md5").is_some(), "a block without its MD5: {}", block["path"]);
        assert_eq!(block["status"], 201);
    }
    assert!(requests.iter().all(|r| r["method"] != "DELETE"), "a backup sent a DELETE");
    for blob in double.blobs() {
        assert_eq!(blob["mode"], "locked", "{blob}");
        assert_eq!(blob["legal_hold"], true, "{blob}");
        assert_eq!(Some(parse_rfc3339(blob["until"].as_str().unwrap())), expected, "{blob}");
    }
    // A second init neither overwrites nor adds a version of the config.
    let out = run(sv(&config).arg("init"));
    assert!(!out.status.success() && text(&out.stderr).contains("already holds"), "{}", text(&out.stderr));
    assert_eq!(blob_named(&double.blobs(), "config")["versions"], 1);
    let verified = ok(sv(&config).arg("verify"));
    assert!(verified.contains(": ok (locked until"), "{verified}");
    let _ = std::fs::remove_dir_all(&work);
}

/// An HTTP date (RFC 1123), as Azure's headers carry it.
fn httpdate(text: &str) -> SystemTime {
    // "Wed, 02 Jun 2027 00:00:00 GMT"
    let parts: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(parts.len(), 6, "{text} is not an RFC 1123 date");
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].iter().position(|m| *m == parts[2]).unwrap() + 1;
    assert_eq!(parts[5], "GMT", "{text}");
    parse_rfc3339(&format!("{}-{month:02}-{:0>2}T{}", parts[3], parts[1], parts[4]))
}

#[test]
fn older_objects_a_new_snapshot_references_are_locked_as_long_as_it_and_verify_names_what_falls_short() {
    let work = scratch("worm-extend");
    let double = Double::start(true);
    double.create_container("worm");
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    make_fixture(&data, 6, 40);
    let config = config(&work, &data, &double, "      days: 180\n      mode: locked\n      legal_hold: true\n      extend_ahead_days: 30\n");
    ok(sv(&config).arg("init"));
    ok(sv(&config).arg("backup"));
    // As if the first night had been months ago: its objects' locks now end in ten days.
    let soon = rfc3339(SystemTime::now() + Duration::from_secs(10 * 86_400));
    let old: Vec<String> = double.blobs().iter().map(|b| b["name"].as_str().unwrap().to_string()).filter(|n| n.starts_with("packs/") || n.starts_with("index/")).collect();
    for name in &old {
        double.set_policy(name, &soon, "locked");
    }
    double.reset_log();
    std::fs::write(data.join("tonight.txt"), b"one more call\n").unwrap();
    ok(sv(&config).arg("backup"));

    let extended: Vec<_> = double.requests().into_iter().filter(|r| query(r, "comp") == Some("immutabilityPolicies")).collect();
    assert_eq!(extended.len(), old.len(), "each deduplicated object is extended once");
    let blobs = double.blobs();
    let newest = blobs.iter().filter(|b| b["name"].as_str().unwrap().starts_with("snapshots/")).map(|b| parse_rfc3339(b["until"].as_str().unwrap())).max().unwrap();
    for name in &old {
        let until = parse_rfc3339(blob_named(&blobs, name)["until"].as_str().unwrap());
        assert!(until >= newest, "{name} is locked until {until:?}, before the snapshot referencing it ({newest:?})");
        assert!(until >= newest + Duration::from_secs(29 * 86_400), "{name} was extended without the 30 days ahead");
    }
    let verified = ok(sv(&config).arg("verify"));
    assert!(!verified.contains("BROKEN") && verified.contains("locked until"), "{verified}");
    // stats tells until when the latest snapshot's data stays locked (its earliest pack lock), and
    // check how objects written now would be locked.
    let stats: serde_json::Value = serde_json::from_str(&ok(sv(&config).args(["stats", "--json"]))).unwrap();
    let earliest = blobs.iter().filter(|b| b["name"].as_str().unwrap().starts_with("packs/")).map(|b| parse_rfc3339(b["until"].as_str().unwrap())).min().unwrap();
    let locked = parse_rfc3339(stats["stacks"]["worm"]["locked_until"].as_str().unwrap_or_else(|| panic!("{stats}")));
    assert!(locked.duration_since(earliest).unwrap_or_else(|e| e.duration()) < Duration::from_secs(2), "{stats}: {earliest:?}");
    let checked = ok(sv(&config).arg("check"));
    assert!(checked.contains("ok    immutability  objects written now are locked until") && checked.contains("legal hold") && checked.contains("check passed"), "{checked}");

    // One pack's lock cut short behind our back (the double's hook bypasses Azure's rule), and one
    // index object's legal hold gone: both snapshots need them, and verify says so for each.
    let pack = old.iter().find(|n| n.starts_with("packs/")).unwrap();
    double.set_policy(pack, &soon, "locked");
    let index = old.iter().find(|n| n.starts_with("index/")).unwrap();
    double.set_legal_hold(index, false);
    let out = run(sv(&config).arg("verify"));
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert_eq!(stdout.matches(": BROKEN").count(), 2, "{stdout}");
    assert!(stdout.contains(&format!("immutability: {pack} is locked until")) && stdout.contains("before the snapshot's manifest"), "{stdout}");
    assert!(stdout.contains(&format!("immutability: {index} has no legal hold")), "{stdout}");
    let _ = std::fs::remove_dir_all(&work);
}

/// Prune against the double's Delete Blob, which refuses a blob under an unexpired policy or a legal
/// hold as Azure's documentation says (tests/azure_double.py): nothing locked or held is deleted,
/// and once locks expire and holds are lifted, the forgotten snapshot and its data go.
#[test]
fn prune_deletes_nothing_locked_or_held_and_what_expired_once_unreferenced() {
    let work = scratch("worm-prune");
    let double = Double::start(true);
    double.create_container("worm");
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = config(&work, &data, &double, "      days: 180\n      mode: unlocked\n");
    ok(sv(&config).arg("init"));
    std::fs::write(data.join("first"), vec![1u8; 200_000]).unwrap();
    ok(sv(&config).arg("backup"));
    std::fs::remove_file(data.join("first")).unwrap();
    std::fs::write(data.join("second"), vec![2u8; 200_000]).unwrap();
    ok(sv(&config).arg("backup"));
    let prune = || run(sv(&config).args(["prune", "--keep-last", "1", "--grace", "0s"]));
    let snapshots = || double.blobs().into_iter().filter(|b| b["name"].as_str().unwrap().starts_with("snapshots/")).count();
    let deletes = || double.requests().iter().filter(|r| r["method"] == "DELETE" && r["status"] == 202).count();

    let locked = prune();
    assert!(locked.status.success(), "{}", text(&locked.stderr));
    assert!(text(&locked.stdout).contains("the policy forgets it, but it is locked until"), "{}", text(&locked.stdout));
    assert!(text(&locked.stderr).contains("keeps less than the immutability period"), "{}", text(&locked.stderr));
    assert_eq!((snapshots(), deletes()), (2, 0));

    // The locks expire; the forgotten manifest is held.
    let names: Vec<String> = double.blobs().iter().map(|b| b["name"].as_str().unwrap().to_string()).collect();
    for name in &names {
        double.set_policy(name, "2020-01-01T00:00:00Z", "unlocked");
    }
    let first = ok(sv(&config).arg("snapshots"));
    let oldest = first.lines().find_map(|l| l.split_whitespace().find(|w| w.len() >= 12 && w.chars().all(|c| c.is_ascii_hexdigit()))).unwrap().to_string();
    let held = names.iter().find(|n| n.starts_with(&format!("snapshots/{oldest}"))).unwrap_or_else(|| panic!("{oldest} in {names:?}"));
    double.set_legal_hold(held, true);
    let out = prune();
    assert!(out.status.success() && text(&out.stdout).contains("under a legal hold"), "{}", text(&out.stdout));
    assert_eq!((snapshots(), deletes()), (2, 0));

    double.set_legal_hold(held, false);
    let out = prune();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("forgot snapshot") && text(&out.stdout).contains("deleted packs/"), "{}", text(&out.stdout));
    assert_eq!(snapshots(), 1);
    ok(sv(&config).arg("verify"));
    let _ = std::fs::remove_dir_all(&work);
}
