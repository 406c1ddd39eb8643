#!/usr/bin/env python3
"""Record and compare the full metadata of a file tree: the restore-fidelity oracle.

Independent test oracle for stackvault: standard-library Python only, sharing no code
with the Rust implementation, so a bug in stackvault cannot hide itself here.

  treecheck.py manifest DIR OUT.json   record DIR (never following symlinks)
  treecheck.py compare A.json B.json   print differences; exit 1 if any, else 0
  treecheck.py diff DIR_A DIR_B        manifest both in memory and compare

Per entry (keyed by path relative to DIR; "." is DIR itself): type, mode (octal string of
st_mode & 0o7777),
uid, gid, mtime_ns (not for "."), user.* xattrs as hex; files also size, sha256, nlink
and, when nlink > 1, the sorted group of paths in DIR sharing the inode; symlinks their
target; devices their rdev. atime, ctime and inode numbers are deliberately not recorded.
Paths are str with undecodable bytes as surrogate escapes (json keeps them as \\udcXX).
"""
import hashlib
import json
import os
import stat
import sys

TYPES = [(stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
         (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"),
         (stat.S_ISSOCK, "socket")]
MAX_LINES = 200


def dec(b):
    return b.decode("utf-8", "surrogateescape")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def describe(path, st):
    kind = next(name for test, name in TYPES if test(st.st_mode))
    e = {"type": kind, "mode": format(stat.S_IMODE(st.st_mode), "04o"), "uid": st.st_uid,
         "gid": st.st_gid, "mtime_ns": st.st_mtime_ns}
    xattrs = {}
    for name in os.listxattr(path, follow_symlinks=False):
        if name.startswith("user."):
            xattrs[name] = os.getxattr(path, name, follow_symlinks=False).hex()
    e["xattrs"] = dict(sorted(xattrs.items()))
    if kind == "file":
        e.update(size=st.st_size, sha256=sha256(path), nlink=st.st_nlink)
    elif kind == "symlink":
        e["target"] = dec(os.readlink(path))
    elif kind in ("char", "block"):
        e["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
    return e


def manifest(root):
    root = os.fsencode(root)
    entries = {".": describe(root, os.lstat(root))}
    del entries["."]["mtime_ns"]  # a restore recreates the root directory
    inodes = {}
    stack = [b""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
            for de in it:
                rel = os.path.join(rel_dir, de.name) if rel_dir else de.name
                st = de.stat(follow_symlinks=False)
                entries[dec(rel)] = describe(de.path, st)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(rel)
                elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(dec(rel))
    for group in inodes.values():
        for rel in group:
            entries[rel]["hardlinks"] = sorted(group)
    return {"root": dec(root), "entries": dict(sorted(entries.items()))}


def show(p):
    return p if p.isprintable() else repr(p)


def flat(e):
    out = {k: v for k, v in e.items() if k != "xattrs"}
    out.update({f"xattr {k}": v for k, v in e.get("xattrs", {}).items()})
    return out


def compare(a, b):
    ea, eb = a["entries"], b["entries"]
    diffs = []
    for path in sorted(ea.keys() | eb.keys()):
        if path not in eb:
            diffs.append(f"{show(path)}: entry: A={ea[path]['type']} B=missing")
        elif path not in ea:
            diffs.append(f"{show(path)}: entry: A=missing B={eb[path]['type']}")
        else:
            fa, fb = flat(ea[path]), flat(eb[path])
            for field in sorted(fa.keys() | fb.keys()):
                va, vb = fa.get(field, "absent"), fb.get(field, "absent")
                if va != vb:
                    diffs.append(f"{show(path)}: {field}: A={show(str(va))} B={show(str(vb))}")
    for line in diffs[:MAX_LINES]:
        print(line)
    if len(diffs) > MAX_LINES:
        print(f"... and {len(diffs) - MAX_LINES} more differences")
    if diffs:
        print(f"{len(diffs)} differences ({a['root']!r} vs {b['root']!r})")
        return 1
    print(f"identical: {len(ea)} entries")
    return 0


def load(path):
    with open(path) as f:
        return json.load(f)


def main(argv):
    sys.stdout.reconfigure(errors="backslashreplace")
    usage = __doc__.split("\n\n")[2]
    if len(argv) != 3 or argv[0] not in ("manifest", "compare", "diff"):
        sys.exit("usage:\n" + usage)
    cmd, x, y = argv
    if cmd == "manifest":
        m = manifest(x)
        with open(y, "w") as f:
            json.dump(m, f, indent=1)
        print(f"{len(m['entries'])} entries written to {y}")
        return 0
    if cmd == "compare":
        return compare(load(x), load(y))
    return compare(manifest(x), manifest(y))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
