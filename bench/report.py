"""What the bench's extra rows (bench/database.py, azure.py, stack.py) share: timing a command with
its peak RSS, and ending with the targets met or missed and the results written as JSON."""

import json
import subprocess
import time


def timed(argv, env=None):
    """Wall time, peak RSS (KiB, GNU time) and stdout of a command that must succeed."""
    t = time.monotonic()
    out = subprocess.run(["/usr/bin/time", "-f", "RSS=%M"] + argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.monotonic() - t
    if out.returncode != 0:
        raise SystemExit("failed: %s\n%s" % (" ".join(argv), out.stderr.decode()[-3000:]))
    rss = [l for l in out.stderr.decode().splitlines() if l.startswith("RSS=")]
    return wall, int(rss[-1][4:]) if rss else 0, out.stdout.decode()


def finish(results, path):
    """Prints each target as met or MISSED and writes the results; the exit status of the run."""
    for target, met in results["targets"].items():
        print("  target %s: %s" % (target, "met" if met else "MISSED"))
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print("results: %s" % path)
    return 0
