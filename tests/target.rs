//! The filesystem target's failure modes, on real mounts: a full share (a small tmpfs) and a read-only
//! one (a read-only bind mount). Needs root for mount(8).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount(args: &[&str], target: &Path) -> Mount {
    ok(Command::new("mount").args(args).arg(target));
    Mount(target.to_path_buf())
}

#[test]
fn a_full_share_fails_the_backup_clearly_and_leaves_no_snapshot_or_partial_object() {
    let work = scratch("full");
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    make_fixture(&data, 24, 50);
    let share = work.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let _mounted = mount(&["-t", "tmpfs", "-o", "size=8m", "tmpfs"], &share);
    let repo = share.join("repo");
    let config = write_config(&work, &format!("stack: full\npaths: [{}]\nrepository:\n  filesystem:\n    path: {}\n", data.display(), repo.display()));
    ok(stackvault(&config).arg("init"));
    let out = run(stackvault(&config).arg("backup"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no space left on the target"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_dir(repo.join("snapshots")).map(|d| d.count()).unwrap_or(0), 0);
    assert_eq!(std::fs::read_dir(repo.join("tmp")).map(|d| d.count()).unwrap_or(0), 0, "a partial object was left behind");
    ok(stackvault(&config).arg("verify"));
    drop(_mounted);
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn a_read_only_or_missing_share_is_named_in_the_error() {
    let work = scratch("ro");
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), b"x").unwrap();
    let share = work.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let config = write_config(&work, &format!("stack: ro\npaths: [{}]\nrepository:\n  filesystem:\n    path: {}\n", data.display(), share.display()));
    // A share that went read-only under us: a tmpfs holding the repository, remounted read-only.
    let _mounted = mount(&["-t", "tmpfs", "-o", "size=8m", "tmpfs"], &share);
    ok(stackvault(&config).arg("init"));
    ok(Command::new("mount").args(["-o", "remount,ro"]).arg(&share));
    let out = run(stackvault(&config).arg("backup"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("read-only"), "{}", text(&out.stderr));

    let missing = write_config(&work, &format!("stack: ro\npaths: [{}]\nrepository:\n  filesystem:\n    path: {}\n", data.display(), work.join("not-mounted").display()));
    let out = run(stackvault(&missing).arg("backup"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not-mounted") && text(&out.stderr).contains("stackvault init"), "{}", text(&out.stderr));
    assert!(!work.join("not-mounted").exists(), "backup created the missing share directory");
    drop(_mounted);
    std::fs::remove_dir_all(&work).unwrap();
}
