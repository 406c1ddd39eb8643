#!/usr/bin/env python3
"""Restore a stackvault snapshot by docs/FORMAT.md alone, section 14 "Reading without stackvault".

Independent of stackvault: standard-library Python plus the zstd and tar commands (age too, for an
encrypted repository), sharing no code with the Rust implementation, so the specification is what
is tested. Python's standard library has no BLAKE3, so ids are not checked here (b3sum would).

  reader.py REPO DEST [--identity FILE]   restore the latest snapshot's sources below DEST/<n>
"""
import json
import os
import subprocess
import sys
import tempfile


def name_bytes(name):
    """Section 2: a name is a string, or {"hex": ...} for bytes that are not UTF-8."""
    return name.encode() if isinstance(name, str) else bytes.fromhex(name["hex"])


def unpack(repo, packs, blobs, identity):
    for pack_id in packs:
        path = os.path.join(repo, "packs", pack_id[:2], pack_id)
        plain = f"age -d -i '{identity}' '{path}'" if identity else f"cat '{path}'"
        subprocess.run(f"{plain} | zstd -dc | tar -x -C '{blobs}'", shell=True, check=True)


def metadata(path, node, is_link=False):
    """Section 12, step 5: owner, then mode, then xattrs, then mtime."""
    os.chown(path, node["uid"], node["gid"], follow_symlinks=False)
    if not is_link:
        os.chmod(path, node["mode"])
    for xattr in node.get("xattrs", []):
        os.setxattr(path, name_bytes(xattr["name"]), bytes.fromhex(xattr["value"]), follow_symlinks=False)
    mtime = node["mtime_ns"]
    os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


class Walk:
    def __init__(self, blobs, root):
        self.blobs, self.root = blobs, root
        self.entries = self.bytes = 0

    def tree(self, tree_id):
        with open(os.path.join(self.blobs, "tree", tree_id), "rb") as f:
            return json.load(f)["nodes"]

    def directory(self, path, node):
        for child in self.tree(node["subtree"]):
            self.entries += 1
            self.entry(os.path.join(path, name_bytes(child["name"])), child)
        metadata(path, node)

    def entry(self, path, node):
        kind = node["type"]
        if kind == "dir":
            os.mkdir(path, 0o700)
            self.directory(path, node)
        elif kind == "file":
            with open(path, "xb") as out:
                for blob in node.get("content", []):
                    with open(os.path.join(self.blobs, "data", blob), "rb") as piece:
                        out.write(piece.read())
                assert out.tell() == node.get("size", 0), f"{path}: content does not add up to size"
            self.bytes += node.get("size", 0)
            metadata(path, node)
        elif kind == "symlink":
            os.symlink(name_bytes(node["target"]), path)
            metadata(path, node, is_link=True)
        elif kind == "hardlink":
            os.link(os.path.join(self.root, name_bytes(node["target"])), path, follow_symlinks=False)
        elif kind == "fifo":
            os.mkfifo(path, 0o600)
            metadata(path, node)
        elif kind in ("char", "block"):
            os.mknod(path, 0o600 | (0o020000 if kind == "char" else 0o060000), node.get("rdev", 0))
            metadata(path, node)
        # a socket: nothing to restore


def main():
    repo, dest = sys.argv[1], sys.argv[2]
    identity = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--identity" else None
    with open(os.path.join(repo, "config")) as f:
        config = json.load(f)
    assert config["format"] == "stackvault" and config["version"] in (1, 2, 3, 4, 5), config
    snapshots = []
    for snapshot_id in os.listdir(os.path.join(repo, "snapshots")):
        with open(os.path.join(repo, "snapshots", snapshot_id)) as f:
            snapshots.append((json.load(f), snapshot_id))
    snapshot = max(snapshots, key=lambda s: (s[0]["time"], s[1]))[0]
    with tempfile.TemporaryDirectory() as blobs:
        unpack(repo, snapshot["packs"], blobs, identity)
        for n, source in enumerate(snapshot["sources"]):
            root = os.path.join(dest.encode(), str(n).encode())
            walk = Walk(blobs, root)
            walk.entry(root, source["root"])  # a directory, or a single file
            assert (walk.entries, walk.bytes) == (source["entries"], source["bytes"]), "counts differ from the manifest"


if __name__ == "__main__":
    main()
