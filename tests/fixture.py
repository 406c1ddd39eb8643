#!/usr/bin/env python3
"""Build (and mutate) a file tree that exercises everything a faithful backup must keep.

Independent test oracle for stackvault: standard-library Python only, sharing no code
with the Rust implementation, so a bug in stackvault cannot hide itself here.
Must run as root on a filesystem with user xattrs (ext4).

  fixture.py make DIR [--big-mib 200] [--small 10000]   populate existing DIR
  fixture.py mutate DIR     rewrite one small file, append 1 MiB to big.bin

Covered: big random file, many small text files carrying MARKER (grep the repository
for it to prove encryption), empty files/dirs, relative/absolute/dangling/dir symlinks,
hardlinks (3 links across dirs, pair in one dir), unicode / NFC-vs-NFD / non-UTF-8 /
255-byte names, paths > 100 and > 300 bytes, spaces / newline / leading dash in names,
modes incl. setuid/setgid/sticky, non-root owners (also on a symlink), nanosecond mtimes
(1990, pre-1970, post-2038) on files, dirs and symlinks, user xattrs (text, binary with
NULs, empty) on files and a dir, and a FIFO.
"""
import argparse
import os
import random

MARKER = "STACKVAULT-KNOWN-PLAINTEXT-7f3a9c"
MIB = 1 << 20
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()


def small_text(i, tag):
    lines = [f"stackvault fixture file {i} ({tag})", MARKER]
    for _ in range(random.randint(3, 6)):
        lines.append(" ".join(random.choice(WORDS) for _ in range(8)) + " " + os.urandom(4).hex())
    return "\n".join(lines) + "\n"


def small_path(root, i):
    return os.path.join(root, "small", f"d{i % 100:03d}", f"f{i:05d}.txt")


def write(path, data=b""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def make(root, big_mib, n_small):
    os.umask(0o022)
    p = lambda *parts: os.path.join(root, *parts)

    with open(p("big.bin"), "wb") as f:
        for _ in range(big_mib):
            f.write(os.urandom(MIB))
    for i in range(n_small):
        write(small_path(root, i), small_text(i, "original"))

    write(p("plain", "hello.txt"), "hello world\n")
    # empty files and dirs
    write(p("empty", "empty-file"))
    write(p("empty", "another empty file"))
    os.makedirs(p("empty", "empty-dir"))
    os.makedirs(p("empty", "nested-empty", "inner", "innermost"))

    # symlinks
    os.makedirs(p("links"))
    os.symlink("../plain/hello.txt", p("links", "relative"))
    os.symlink("/etc/hostname", p("links", "absolute"))
    os.symlink("does/not/exist", p("links", "dangling"))
    os.symlink("../plain", p("links", "to-dir"))
    os.symlink("cible-ünïcødé-日本語", p("links", "dangling-unicode-target"))

    # hardlinks: three links in three directories, and a pair in one directory
    write(p("hard", "tri.txt"), "three links\n")
    os.makedirs(p("hard", "sub"))
    os.link(p("hard", "tri.txt"), p("hard", "sub", "tri-link.txt"))
    os.link(p("hard", "tri.txt"), p("plain", "tri-elsewhere.txt"))
    write(p("hard", "pair-1.txt"), "two links\n")
    os.link(p("hard", "pair-1.txt"), p("hard", "pair-2.txt"))

    # awkward names and long paths
    names = ["résumé-ünïcødé-日本語-🎧.txt", "caf\u00e9.txt", "cafe\u0301.txt",  # NFC vs NFD
             os.fsdecode(b"latin1-\xe9-not-utf8.txt"), "x" * 251 + ".txt", "é" * 125 + "-.txt",
             "name with  spaces .txt", "new\nline.txt", "-leading-dash.txt", "--", " "]
    for name in names:
        assert len(os.fsencode(name)) <= 255, name
        write(p("names", name), f"name test: {name!r}\n")
    long100 = p("long", "a" * 40, "b" * 40, "c" * 40 + ".txt")
    long300 = p("deep", *[f"{i}" * 60 for i in range(6)], "leaf-" + "z" * 40 + ".txt")
    write(long100, "path longer than 100 bytes\n")
    write(long300, "path longer than 300 bytes\n")
    assert len(os.path.relpath(long100, root)) > 100 and len(os.path.relpath(long300, root)) > 300

    # modes (chown clears setuid/setgid, so every chmod comes after its chown)
    files = {"mode-0600.txt": 0o600, "mode-0755.sh": 0o755, "mode-0644.txt": 0o644,
             "mode-0000.txt": 0o000, "setgid-file": 0o2755, "setuid-file": 0o4755}
    for name, mode in files.items():
        write(p("perms", name), f"#!/bin/sh\necho {name}\n")
        os.chmod(p("perms", name), mode)
    os.makedirs(p("perms", "sticky-dir"))
    os.chmod(p("perms", "sticky-dir"), 0o1777)
    write(p("perms", "sticky-dir", "inside.txt"), "in sticky dir\n")
    sg = p("perms", "setgid-dir")
    os.makedirs(sg)
    os.chown(sg, 1000, 1000)
    os.chmod(sg, 0o2775)
    write(os.path.join(sg, "inherits-gid.txt"), "gid inherited from setgid dir\n")
    write(os.path.join(sg, "root-gid.txt"), "gid set back to 0\n")
    os.chown(os.path.join(sg, "root-gid.txt"), 0, 0)
    os.makedirs(os.path.join(sg, "sub-inherits-setgid"))
    os.makedirs(os.path.join(sg, "sub-setgid-cleared"))
    os.chmod(os.path.join(sg, "sub-setgid-cleared"), 0o755)
    os.makedirs(p("perms", "readonly-dir"))
    write(p("perms", "readonly-dir", "child.txt"), "child of a 0555 dir\n")
    os.chmod(p("perms", "readonly-dir"), 0o555)

    # ownership
    for name, ids in {"u1000.txt": (1000, 1000), "www-data.txt": (33, 33),
                      "nobody.txt": (65534, 65534), "odd-ids.txt": (1234, 5678)}.items():
        write(p("owners", name), f"owned by {ids}\n")
        os.chown(p("owners", name), *ids)
    os.makedirs(p("owners", "dir-33"))
    os.chown(p("owners", "dir-33"), 33, 33)
    os.symlink("u1000.txt", p("owners", "link-1000"))
    os.lchown(p("owners", "link-1000"), 1000, 1000)

    # user xattrs (not on symlinks: Linux forbids user.* there)
    write(p("xattr", "file.txt"), "has xattrs\n")
    os.makedirs(p("xattr", "dir"))
    for target in (p("xattr", "file.txt"), p("xattr", "dir")):
        os.setxattr(target, "user.comment", "héllo, xattr wörld".encode())
        os.setxattr(target, "user.binary", b"\x00\x01bin\x00\xff\x00")
        os.setxattr(target, "user.empty", b"")
    os.setxattr(p("hard", "tri.txt"), "user.on-hardlink", b"shared by 3 links")

    os.makedirs(p("special"))
    os.mkfifo(p("special", "fifo"), 0o640)

    # special mtimes (applied in the final pass)
    write(p("times", "old-1990.txt"), "1990\n")
    write(p("times", "pre-1970.txt"), "before the epoch\n")
    write(p("times", "after-2038.txt"), "past the 32-bit limit\n")
    os.makedirs(p("times", "old-dir"))
    os.symlink("old-1990.txt", p("times", "old-link"))
    special = {"times/old-1990.txt": 631_152_000_123_456_789,       # 1990-01-01
               "times/pre-1970.txt": -123_456_789_987_654_321,      # 1966
               "times/after-2038.txt": 4_102_444_800_000_000_001,   # 2100-01-01
               "times/old-dir": 315_532_800_999_999_999,            # 1980
               "times/old-link": 946_684_800_000_000_007}           # 2000

    # last: mtimes, children before their directory so nothing disturbs a dir afterwards
    def stamp(path):
        rel = os.path.relpath(path, root)
        ns = special.get(rel, random.randint(1_500_000_000, 1_700_000_000) * 10**9
                         + random.randint(1, 999_999_999))
        os.utime(path, ns=(ns, ns), follow_symlinks=False)

    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            stamp(os.path.join(dirpath, name))
        stamp(dirpath)
    print(f"fixture made in {root}: big.bin {big_mib} MiB, {n_small} small files")


def mutate(root):
    count = sum(len(fs) for _, _, fs in os.walk(os.path.join(root, "small")))
    i = random.randrange(count)
    path = small_path(root, i)
    with open(path, "r+") as f:  # same inode, so the directory is untouched
        old = f.read()
        new = small_text(i, "mutated")
        assert new != old
        f.seek(0)
        f.truncate()
        f.write(new)
    with open(os.path.join(root, "big.bin"), "ab") as f:
        f.write(os.urandom(MIB))
    print(f"mutated {os.path.relpath(path, root)} and appended 1 MiB to big.bin")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--big-mib", type=int, default=200)
    m.add_argument("--small", type=int, default=10000)
    sub.add_parser("mutate").add_argument("dir")
    a = ap.parse_args()
    if not os.path.isdir(a.dir):
        ap.error(f"{a.dir} is not an existing directory")
    make(a.dir, a.big_mib, a.small) if a.cmd == "make" else mutate(a.dir)


if __name__ == "__main__":
    main()
